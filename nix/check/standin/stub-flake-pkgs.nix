# Placeholder packages for the offline flake check: each a real derivation
# (so `nix flake check` sees derivations) that is never built. callPackage
# calls the real nix/package.nix with these; runNixOSTest evaluates each
# node's configuration with the project's module and checks the test script
# is there.
{ lib, system }:

let
  placeholder = name: derivation {
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" "echo placeholder > $out" ];
  };
  pkgs = self;
  self = lib.genAttrs [ "cmake" "pkg-config" "clippy" "rustfmt" "cargo" "nodejs" "chromium" "sipp"
    "nixfmt-rfc-style" "websocat" "curl" "espeak-ng" "sox" "coreutils" "findutils" "gnugrep" "gnused"
    "systemd" "shadow" "asterisk" ] placeholder // {
    inherit lib;
    stdenv = { hostPlatform = { inherit system; isx86_64 = system == "x86_64-linux"; }; };
    callPackage = fn: args:
      let f = if builtins.isFunction fn then fn else import fn;
      in f (builtins.intersectAttrs (builtins.functionArgs f) pkgs // args);
    rustPlatform.buildRustPackage = attrs:
      assert attrs ? pname && attrs ? src && attrs ? cargoLock;
      placeholder "${attrs.pname}-${attrs.version}" // {
        inherit (attrs) pname version;
        nativeBuildInputs = attrs.nativeBuildInputs or [ ];
        overrideAttrs = f: placeholder ((f attrs).pname or attrs.pname);
      };
    fetchurl = { url, hash, ... }:
      assert lib.hasPrefix "https://" url && lib.hasPrefix "sha1-" hash;
      placeholder (baseNameOf url);
    runCommand = name: _: _: placeholder name;
    writeText = name: _: placeholder name;
    writeShellScriptBin = name: _: placeholder name // { overrideAttrs = _: placeholder name; };
    mkShell = _: placeholder "dev-shell";
    python3.withPackages = _: placeholder "python3";
    formats.toml = { }: {
      type = lib.types.attrsOf lib.types.anything;
      generate = name: _: placeholder name;
    };
    testers.runNixOSTest = test:
      let
        t = if builtins.isFunction test then test { } else test;
        nodeEval = name: node: import ./eval-node.nix { inherit lib pkgs name node; };
        evaluated = lib.mapAttrs nodeEval t.nodes;
      in
      assert builtins.isString t.name && builtins.isString t.testScript;
      assert lib.all (n: n.ok) (lib.attrValues evaluated);
      placeholder "vm-test-${t.name}";
  };
  pkgsStatic = self;
in
self // { inherit pkgsStatic; }
