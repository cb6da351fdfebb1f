//! The web UI in real headless Chromium: runs `tests/browser/ui.test.mjs`
//! (playwright-core driving Debian's chromium) against the real relay
//! binary. Screenshots of the agent and supervisor views, and the measured
//! POST-to-visible latency, land in `target/ui-artifacts/`.

use std::path::Path;
use std::process::Command;

use crate::util::BIN;

#[test]
fn the_web_ui_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser = root.join("tests/browser");
    assert!(
        browser.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: npm ci --prefix tests/browser (scripts/test.sh does)"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Chromium is missing: apt-get install chromium (scripts/test.sh does)"
    );
    let artifacts = root.join("target/ui-artifacts");
    let out = Command::new("node")
        .arg("ui.test.mjs")
        .current_dir(&browser)
        .env("UI_TEST_BIN", BIN)
        .env("UI_ARTIFACTS", &artifacts)
        .output()
        .expect("node (Node.js 20) must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser tests failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for shot in ["agent.png", "supervisor.png"] {
        assert!(artifacts.join(shot).is_file(), "no {shot}");
    }
}
