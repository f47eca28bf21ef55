//! Passkeys (WebAuthn) in the console end to end: the real `rxgate run`, and headless Chromium
//! (Selenium, tests/browser/passkeys.py) with its virtual authenticator on
//! `https://localhost:PORT`: a pharmacist sets up with a password and TOTP and adds a passkey
//! on the set-up page, adds another on the Passkeys page, removes the first, and signs in with
//! password and passkey; on `https://127.0.0.1:PORT` the console says passkeys need a name. The
//! audit trail is then read with the CLI. Screenshots go to `<target>/console-screenshots/`.

use std::path::PathBuf;
use std::process::Command;

use rxgate_e2e::{Gateway, text, workspace};

/// `RXGATE_PYTHON`, else the workspace's `.venv`, else `python3` (as tests/console.rs).
fn python() -> PathBuf {
    let venv = workspace().join(".venv/bin/python");
    std::env::var_os("RXGATE_PYTHON")
        .map(PathBuf::from)
        .or_else(|| venv.exists().then_some(venv))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    target.join("console-screenshots")
}

#[test]
fn a_pharmacist_adds_passkeys_on_set_up_and_on_the_passkeys_page_and_signs_in_with_one() {
    let gw = Gateway::start("");
    let port = gw.console.port();
    let link = gw.cli_ok(&["user", "add", "anna", "--role", "pharmacist"]);
    let link = link.trim().to_owned();
    assert!(
        link.starts_with(&format!("https://localhost:{port}/setup/")),
        "{link}"
    );

    let shots = screenshots();
    let output = Command::new(python())
        .arg(workspace().join("tests/browser/passkeys.py"))
        .args(["--base", &format!("https://localhost:{port}")])
        .args(["--ip-base", &format!("https://127.0.0.1:{port}")])
        .args(["--link", &link])
        .arg("--shots")
        .arg(&shots)
        .output()
        .expect("run tests/browser/passkeys.py");
    assert!(
        output.status.success(),
        "the browser test failed (needs chromium, chromium-driver, and selenium + pyotp in .venv: scripts/test installs them): {}\n{}",
        text(&output),
        gw.logs()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let seen: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .expect("the browser test's JSON line");
    assert!(
        !seen["axe_pages"].as_array().unwrap().is_empty(),
        "axe-core ran: {seen}"
    );
    assert_eq!(
        seen["axe_violations"],
        serde_json::json!({}),
        "serious or critical accessibility violations"
    );

    assert!(
        seen["ip_signin_note"]
            .as_str()
            .unwrap()
            .contains(&format!(
                "not the IP address 127.0.0.1: browsers refuse passkeys on a bare IP address. Open it as https://localhost:{port}"
            )),
        "{seen}"
    );
    assert_eq!(seen["ip_passkey_button"], 0, "{seen}");
    assert!(
        seen["setup_passkey"]
            .as_str()
            .unwrap()
            .contains("\u{201c}setup PC\u{201d} added"),
        "{seen}"
    );
    let labels = |key: &str| -> Vec<String> {
        seen[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["label"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(labels("after_setup"), ["setup PC"], "{seen}");
    assert_eq!(labels("after_add"), ["setup PC", "office PC"], "{seen}");
    assert_eq!(labels("after_remove"), ["office PC"], "{seen}");
    assert_eq!(seen["after_remove"][0]["last_used"], "never", "{seen}");
    assert_eq!(seen["signed_in_as"], "anna");
    assert_ne!(seen["after_sign_in"][0]["last_used"], "never", "{seen}");
    assert!(
        seen["wrong_password"]
            .as_str()
            .unwrap()
            .starts_with("sign-in refused"),
        "{seen}"
    );
    for page in [
        "passkeys-01-ip-address",
        "passkeys-02-setup",
        "passkeys-03-setup-done",
        "passkeys-04-added",
        "passkeys-05-signin",
        "passkeys-06-confirm",
        "passkeys-07-signed-in",
        "passkeys-08-list",
    ] {
        assert!(
            shots.join(format!("{page}.png")).is_file(),
            "screenshot {page}"
        );
    }

    let trail: Vec<serde_json::Value> =
        serde_json::from_str(&gw.cli_ok(&["audit", "export"])).expect("audit export is JSON");
    let added: Vec<&serde_json::Value> = trail
        .iter()
        .filter(|e| e["kind"] == "user.passkey_added")
        .collect();
    assert_eq!(added.len(), 2, "two passkeys registered: {added:?}");
    for entry in &added {
        assert_eq!(entry["actor"], "anna");
        assert_eq!(entry["source"], "127.0.0.1");
        assert_eq!(entry["detail"]["user"], "anna");
        assert_eq!(entry["detail"]["rp_id"], "localhost");
    }
    assert_eq!(added[0]["detail"]["label"], "setup PC");
    assert_eq!(added[1]["detail"]["label"], "office PC");
    let removed = trail
        .iter()
        .find(|e| e["kind"] == "user.passkey_removed")
        .expect("a user.passkey_removed entry");
    assert_eq!(removed["actor"], "anna");
    assert_eq!(removed["detail"]["passkey"], added[0]["detail"]["passkey"]);
    let by_passkey = trail
        .iter()
        .find(|e| e["kind"] == "user.signed_in" && e["detail"]["factor"] == "passkey")
        .expect("a sign-in by passkey");
    assert_eq!(by_passkey["actor"], "anna");
    assert_eq!(
        by_passkey["detail"]["passkey"],
        added[1]["detail"]["passkey"]
    );
    let refused = trail
        .iter()
        .find(|e| e["kind"] == "user.sign_in_refused")
        .expect("the wrong password's refusal");
    assert_eq!(refused["detail"]["reason"], "wrong password");
    let verified = gw.cli(&["audit", "verify"]);
    assert!(
        verified.status.success(),
        "rxgate audit verify: {}",
        text(&verified)
    );
}
