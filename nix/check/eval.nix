# Evaluates services.callCoach offline against a real nixpkgs snapshot (its
# lib, module system, assertions, users-groups and systemd unit code) and
# returns the rendered units, or throws the failed assertions.
#   nix eval --json --file eval.nix --arg snapshot PATH --arg configuration FILE --argstr package DIR
{ snapshot, configuration, package ? "/nonexistent/call-coach" }:

let
  lib = import (snapshot + "/lib");
  pkgs = import ./stub-pkgs.nix { inherit lib package; };
  eval = lib.evalModules {
    modules = [
      ./harness.nix
      (snapshot + "/nixos/modules/misc/assertions.nix")
      (snapshot + "/nixos/modules/misc/ids.nix")
      (snapshot + "/nixos/modules/config/users-groups.nix")
      ../modules/call-coach.nix
      configuration
      { _module.args = { inherit pkgs utils; }; }
      # What the flake's nixosModules.default adds.
      { services.callCoach.package = lib.mkDefault pkgs.call-coach; }
    ];
  };
  utils = import (snapshot + "/nixos/lib/utils.nix") { inherit lib pkgs; config = eval.config; };
  config = eval.config;
  failed = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  units = lib.mapAttrs' (name: def: lib.nameValuePair "${name}.service" (utils.systemdUtils.lib.serviceToUnit name def).text)
    (lib.filterAttrs (_: def: def.enable) config.systemd.services);
in
if failed != [ ] then
  throw "Failed assertions:\n- ${lib.concatStringsSep "\n- " failed}"
else
  {
    inherit units;
    # wantedBy is a symlink in the 2022 snapshot, [Install] in current nixpkgs.
    wantedBy = lib.mapAttrs (_: def: def.wantedBy) config.systemd.services;
    configFile = config.environment.etc."call-coach/call-coach.toml".source;
    firewall = config.networking.firewall;
    users = lib.filterAttrs (n: _: n == "call-coach") config.users.users;
    asteriskFiles = lib.attrNames config.services.asterisk.confFiles;
  }
