# A stand-in for nixpkgs in the offline flake check (`--override-input
# nixpkgs path:...`): the real lib of a nixpkgs snapshot, and packages that
# are placeholders (real derivations that nothing builds). The VM tests are
# evaluated for real: their nodes go through the module evaluation of
# ../eval.nix, with the NixOS test-driver options they use.
{
  outputs = { self }:
    let
      lib = import ./lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
    in
    {
      inherit lib;
      legacyPackages = lib.genAttrs systems (system: import ./stub-flake-pkgs.nix { inherit lib system; });
    };
}
