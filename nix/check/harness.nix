# What the offline module evaluation needs beyond the nixpkgs modules it
# loads (assertions, ids, users-groups): systemd.services with nixpkgs' own
# types and unit rendering (systemd-lib.nix, systemd-unit-options.nix), and
# the few options of other modules that services.callCoach sets.
{ lib, config, pkgs, utils, ... }:

let
  inherit (lib) mkOption types;
in
{
  options = {
    systemd.services = mkOption {
      type = utils.systemdUtils.types.services;
      default = { };
    };
    systemd.globalEnvironment = mkOption {
      type = with types; attrsOf (nullOr (oneOf [ str path package ]));
      default = { };
    };
    systemd.package = mkOption { default = pkgs.systemd; };
    networking.firewall = {
      allowedTCPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
      allowedUDPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
      allowedTCPPortRanges = mkOption { type = types.listOf (types.attrsOf types.port); default = [ ]; };
      allowedUDPPortRanges = mkOption { type = types.listOf (types.attrsOf types.port); default = [ ]; };
    };
    environment = {
      systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
      etc = mkOption { type = types.attrsOf types.anything; default = { }; };
      profiles = mkOption { type = types.listOf types.str; default = [ ]; };
    };
    system.activationScripts = mkOption { type = types.attrsOf types.anything; default = { }; };
    system.path = mkOption { type = types.anything; default = { ignoreCollisions = false; postBuild = ""; }; };
    security.googleOsLogin.enable = mkOption { type = types.bool; default = false; };
    # nixpkgs' services.nats, as the scale-out VM test's nodes set it.
    services.nats = {
      enable = mkOption { type = types.bool; default = false; };
      serverName = mkOption { type = types.str; default = "$HOSTNAME"; };
      port = mkOption { type = types.port; default = 4222; };
      jetstream = mkOption { type = types.bool; default = false; };
      settings = mkOption { type = types.attrsOf types.anything; default = { }; };
    };
    # nixpkgs' services.asterisk, as far as call-coach uses it (same types).
    services.asterisk = {
      enable = mkOption { type = types.bool; default = false; };
      confFiles = mkOption { type = types.attrsOf types.str; default = { }; };
    };
  };
}
