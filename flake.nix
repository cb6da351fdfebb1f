{
  description = "call-coach: real-time coaching for contact-centre agents on Asterisk, on-prem";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).package.version;
      # The sources cargo needs, nothing else (no target/, no node_modules).
      src = lib.cleanSourceWith {
        src = ./.;
        filter = path: type:
          let rel = lib.removePrefix (toString ./. + "/") (toString path);
          in lib.any (p: rel == p || lib.hasPrefix "${p}/" rel)
            [ "Cargo.toml" "Cargo.lock" ".cargo" "src" "tests" "benches" ];
      };
      callCoach = pkgs: pkgs.callPackage ./nix/package.nix { inherit src version; };
    in
    {
      packages = forAllSystems (pkgs:
        let static = callCoach pkgs.pkgsStatic;
        in {
          default = static;
          call-coach = static;
          # The same program linked against glibc, for the dev shell and checks.
          call-coach-dynamic = callCoach pkgs;
        } // import ./nix/models.nix { inherit (pkgs) fetchurl runCommand; call-coach = static; });

      nixosModules.default = { pkgs, lib, ... }: {
        imports = [ ./nix/modules/call-coach.nix ];
        services.callCoach.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };

      checks = forAllSystems (pkgs:
        let
          package = self.packages.${pkgs.stdenv.hostPlatform.system}.call-coach-dynamic;
          vmTest = file: pkgs.testers.runNixOSTest (import file { inherit self; });
        in
        {
          vm-module = vmTest ./nix/tests/module.nix;
          vm-asterisk = vmTest ./nix/tests/asterisk.nix;
          vm-scale-out = vmTest ./nix/tests/scale-out.nix;
          tests = package;
          clippy = package.overrideAttrs (old: {
            pname = "call-coach-clippy";
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
            buildPhase = "cargo clippy --all-targets --offline -- -D warnings";
            installPhase = "touch $out";
            doCheck = false;
          });
          fmt = pkgs.runCommand "call-coach-fmt" { nativeBuildInputs = [ pkgs.cargo pkgs.rustfmt ]; } ''
            cp -r ${src} src && chmod -R u+w src && cd src
            cargo fmt --all -- --check
            touch $out
          '';
        });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.call-coach-dynamic ];
          packages = with pkgs; [ clippy rustfmt nodejs chromium sipp ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}
