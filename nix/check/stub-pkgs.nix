# A stand-in for `pkgs` in the offline checks: nothing here is built. Package
# options get derivation-shaped values; `formats.toml` renders real TOML so
# that the generated call-coach.toml can be read by the real binary.
{ lib, package ? "/nonexistent/call-coach" }:

let
  fake = name: {
    type = "derivation";
    inherit name;
    outPath = if name == "call-coach" then package else "/nix/store/00000000000000000000000000000000-${name}";
    drvPath = "/nix/store/00000000000000000000000000000000-${name}.drv";
    meta = { };
  };

  tomlValue = v:
    if builtins.isBool v then (if v then "true" else "false")
    else if builtins.isInt v || builtins.isFloat v then toString v
    else if builtins.isList v then "[ ${lib.concatMapStringsSep ", " tomlValue v} ]"
    else if builtins.isString v || (builtins.isAttrs v && v ? outPath) then builtins.toJSON (toString v)
    else throw "stub formats.toml: cannot render ${builtins.typeOf v}";

  isTable = v: builtins.isAttrs v && !(v ? outPath);

  renderTable = prefix: attrs:
    let
      scalars = lib.filterAttrs (_: v: !isTable v && v != null) attrs;
      tables = lib.filterAttrs (_: isTable) attrs;
      header = lib.optionalString (prefix != "") "[${prefix}]\n";
      body = lib.concatStrings (lib.mapAttrsToList (k: v: "${k} = ${tomlValue v}\n") scalars);
      sub = lib.concatStrings (lib.mapAttrsToList
        (k: v: "\n" + renderTable (if prefix == "" then k else "${prefix}.${k}") v) tables);
    in
    header + body + sub;
in
lib.genAttrs [ "call-coach" "asterisk" "systemd" "bash" "shadow" "websocat" "curl" "coreutils" "findutils" "gnugrep" "gnused" ] fake // {
  buildPackages.xorg.lndir = fake "lndir";
  formats.toml = { }: {
    type = with lib.types; let
      valueType = nullOr (oneOf [ bool int float str path (attrsOf valueType) (listOf valueType) ]) // {
        description = "TOML value";
      };
    in valueType;
    generate = name: value: builtins.toFile name (renderTable "" value);
  };
  writeText = name: text: builtins.toFile name text;
  # Unit scripts: run.sh puts an executable at each such ExecStart path.
  writeShellScriptBin = name: _text:
    let drv = fake name // { outPath = "${package}-scripts/${name}"; };
    in drv // { overrideAttrs = _: drv; };
  runCommand = name: _: _: fake name;
}
