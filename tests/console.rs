//! The pharmacy console end to end: the real `rxgate run` polling a simulated fridge whose
//! compressor fails, and headless Chromium (Selenium, tests/browser/console.py) setting up a
//! pharmacist's account, signing in, seeing the fridge, and acknowledging the cold-chain alert
//! with an electronic signature; a technician is refused. The audit trail is then read with the
//! CLI. Screenshots of every page go to `<target>/console-screenshots/`.

use std::path::PathBuf;
use std::process::Command;

use rxgate_e2e::{Gateway, curl, failing_fridge, fridge_device_config, text, workspace};

/// `RXGATE_PYTHON`, else the workspace's `.venv` (scripts/test installs Selenium and pyotp
/// there), else `python3`.
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

fn setup_link(gw: &Gateway, name: &str, role: &str) -> String {
    let link = gw.cli_ok(&["user", "add", name, "--role", role]);
    let link = link.trim().to_owned();
    assert!(
        link.starts_with("https://localhost:")
            && link.contains(&format!(":{}/setup/", gw.console.port())),
        "the set-up link names the console's port {}: {link}",
        gw.console.port()
    );
    link
}

fn audit(gw: &Gateway) -> Vec<serde_json::Value> {
    serde_json::from_str(&gw.cli_ok(&["audit", "export"])).expect("audit export is JSON")
}

#[test]
fn a_pharmacist_sets_up_signs_in_sees_the_warm_fridge_and_signs_its_alert_while_a_technician_is_refused()
 {
    let (_fridge, fridge_port) = failing_fridge();
    let gw = Gateway::start(&fridge_device_config(fridge_port));
    let base = format!("https://{}", gw.console);
    let anna = setup_link(&gw, "anna", "pharmacist");
    let tom = setup_link(&gw, "tom", "technician");

    // A form posted without its session's CSRF token is refused before anything is checked.
    let jar = gw.dir.path().join("cookies");
    let jar = jar.to_str().unwrap();
    let page = curl(gw.dir.path(), &["-k", "-c", jar, &format!("{base}/signin")]);
    assert_eq!(page.status, 200);
    assert!(
        page.headers
            .to_lowercase()
            .contains("set-cookie: __host-rxgate_session="),
        "{}",
        page.headers
    );
    let refused = curl(
        gw.dir.path(),
        &[
            "-k",
            "-b",
            jar,
            "--data",
            "name=anna&password=x&code=123456",
            &format!("{base}/signin"),
        ],
    );
    assert_eq!(refused.status, 403, "{}", refused.body_text());

    let shots = screenshots();
    let output = Command::new(python())
        .arg(workspace().join("tests/browser/console.py"))
        .args(["--base", &base, "--anna", &anna, "--tom", &tom])
        .arg("--shots")
        .arg(&shots)
        .output()
        .expect("run tests/browser/console.py");
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
    assert_eq!(seen["recovery_codes"], 10);
    assert!(
        seen["overview_row"].as_str().unwrap().contains("°C"),
        "{seen}"
    );
    assert_eq!(seen["alert_state"], "acknowledged", "{seen}");
    assert_eq!(seen["technician_ack_heading"], "Not allowed", "{seen}");
    for page in [
        "01-setup",
        "01-recovery-codes",
        "02-signin",
        "03-overview",
        "04-alerts",
        "05-ack-form",
        "06-signed",
        "07-signed-out",
        "08-technician-refused",
    ] {
        assert!(
            shots.join(format!("{page}.png")).is_file(),
            "screenshot {page}"
        );
    }

    let alerts: Vec<serde_json::Value> =
        serde_json::from_str(&gw.cli_ok(&["alerts", "list", "--all", "--json"])).unwrap();
    let alert = alerts
        .iter()
        .find(|a| {
            seen["ack_url"]
                .as_str()
                .unwrap()
                .contains(a["id"].as_str().unwrap())
        })
        .expect("the signed alert");
    assert_eq!(alert["kind"], "temperature_high");
    assert_eq!(alert["acknowledged_by"], "anna");

    let trail = audit(&gw);
    let signature = trail
        .iter()
        .find(|e| e["kind"] == "record.signed")
        .expect("a record.signed entry");
    assert_eq!(signature["seq"], seen["audit_seq"]);
    assert_eq!(signature["actor"], "anna");
    assert_eq!(signature["source"], "127.0.0.1");
    let detail = &signature["detail"];
    assert_eq!(detail["signer"], "anna");
    assert_eq!(detail["roles"], serde_json::json!(["pharmacist"]));
    assert_eq!(detail["meaning"], "acknowledged");
    assert_eq!(detail["record"], "alert");
    assert_eq!(detail["record_id"], alert["id"]);
    assert_eq!(detail["record_sha256"], seen["record_sha256"]);
    assert_eq!(detail["record_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(detail["statement"]["disposition"], "quarantined");
    let ack = trail
        .iter()
        .find(|e| e["kind"] == "alert.acknowledged")
        .expect("an alert.acknowledged entry");
    assert_eq!(ack["actor"], "anna");
    for (kind, actor) in [
        ("user.signed_in", "anna"),
        ("user.signed_out", "anna"),
        ("user.signed_in", "tom"),
    ] {
        assert!(
            trail
                .iter()
                .any(|e| e["kind"] == kind && e["actor"] == actor),
            "{kind} by {actor} in the audit trail"
        );
    }
    let verified = gw.cli(&["audit", "verify"]);
    assert!(
        verified.status.success(),
        "rxgate audit verify: {}",
        text(&verified)
    );
}
