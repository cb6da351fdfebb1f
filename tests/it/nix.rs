//! The Nix flake, the NixOS module and the systemd units, checked offline
//! by `nix/check/run.sh` (parse, module evaluations against a real nixpkgs
//! snapshot, `systemd-analyze verify` and `security`, `nix flake check`
//! against a stand-in nixpkgs). Needs Debian's nix-bin (scripts/test.sh
//! installs it).

use std::path::Path;
use std::process::Command;

use crate::util::BIN;

#[test]
fn nix_module_flake_and_systemd_units() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("nix/check/run.sh"))
        .arg(BIN)
        .current_dir(root)
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "nix checks failed (nix-instantiate missing? apt-get install nix-bin; scripts/test.sh does):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("nix checks: 0 failed"), "{stdout}");
}
