# One VM-test node's configuration, evaluated like ../eval.nix does for the
# module: nixpkgs' assertions, users and systemd unit code, plus the options
# of the NixOS test driver the nodes use.
{ lib, pkgs, name, node }:

let
  eval = lib.evalModules {
    modules = [
      ./harness.nix
      ./nixos/modules/misc/assertions.nix
      ./nixos/modules/misc/ids.nix
      ./nixos/modules/config/users-groups.nix
      { options.virtualisation = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; }; }
      node
      { _module.args = { inherit pkgs utils; }; }
    ];
  };
  utils = import ./nixos/lib/utils.nix { inherit lib pkgs; config = eval.config; };
  failed = map (a: a.message) (lib.filter (a: !a.assertion) eval.config.assertions);
  units = lib.mapAttrs (n: d: (utils.systemdUtils.lib.serviceToUnit n d).text)
    (lib.filterAttrs (_: d: d.enable) eval.config.systemd.services);
in
if failed != [ ] then
  throw "VM test node ${name}: failed assertions:\n- ${lib.concatStringsSep "\n- " failed}"
else
  # A node that runs call-coach renders its relay; the NATS nodes run none.
  assert (eval.config.services ? callCoach && eval.config.services.callCoach.enable) -> units ? call-coach-relay;
  { ok = builtins.deepSeq units true; }
