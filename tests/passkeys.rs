//! Passkeys (WebAuthn) in the console end to end: the real `rxgate run`, and headless Chromium
//! (Selenium, tests/browser/passkeys.py) with its virtual authenticator on
//! `https://localhost:PORT`: a pharmacist sets up with a password and TOTP and adds a passkey
//! on the set-up page, adds another on the Passkeys page, removes the first, and signs in with
//! password and passkey; on `https://127.0.0.1:PORT` the console says passkeys need a name. The
//! audit trail is then read with the CLI. Screenshots go to `<target>/console-screenshots/`.

use rxgate_e2e::{Gateway, browser_test, screenshots, text};

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
    let seen = browser_test(
        &gw,
        "passkeys.py",
        &[
            "--base",
            &format!("https://localhost:{port}"),
            "--ip-base",
            &format!("https://127.0.0.1:{port}"),
            "--link",
            &link,
        ],
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
