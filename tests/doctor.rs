//! `rxgate doctor` on a good setup (a running gateway on loopback with an enrolled device) and on
//! a deliberately bad one (open modes on data_dir and a key, alert e-mail without TLS, a listener
//! on every address): each check says pass, warn or fail, and a failure makes the exit non-zero.

use std::os::unix::fs::PermissionsExt;

use rxgate_e2e::{Gateway, text};

fn doctor(gw: &Gateway) -> (bool, serde_json::Value) {
    let output = gw.cli(&["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("doctor --json is JSON ({e}): {}", text(&output)));
    (output.status.success(), report)
}

fn level<'a>(report: &'a serde_json::Value, name: &str) -> &'a str {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report}"))["level"]
        .as_str()
        .unwrap()
}

fn found<'a>(report: &'a serde_json::Value, name: &str) -> &'a str {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report}"))["found"]
        .as_str()
        .unwrap()
}

#[test]
fn a_running_gateway_on_loopback_with_an_enrolled_device_has_no_failure() {
    let gw = Gateway::start("");
    gw.enroll_with_sim("fridge-01", "fridge");
    gw.cli_ok(&["user", "add", "ada", "--role", "admin"]);
    let (ok, report) = doctor(&gw);
    assert!(ok, "{report}");
    assert_ne!(report["worst"], "fail", "{report}");
    for name in [
        "listeners",
        "metrics",
        "plaintext",
        "file-modes",
        "ca-certificate",
        "server-certificate",
        "clock",
        "device-certificates",
        "disk",
        "outbox-age",
        "sd-write-rate",
    ] {
        assert_eq!(level(&report, name), "pass", "{name}: {report}");
    }
    // Just started: the write rate is measured but not yet scaled to a day.
    assert!(
        found(&report, "sd-write-rate").contains("since the gateway started"),
        "{report}"
    );
    // Honest warnings: plain keys, and an account that has not finished set-up.
    assert_eq!(level(&report, "keys-sealed"), "warn");
    assert_eq!(level(&report, "accounts"), "warn");
    assert_eq!(level(&report, "backups"), "warn", "no backups configured");
    let human = gw.cli(&["doctor"]);
    let human = String::from_utf8_lossy(&human.stdout).into_owned();
    assert!(human.contains("ada"), "{human}");
    assert!(human.contains(" passed, "), "{human}");
}

#[test]
fn open_modes_a_plain_cloud_link_and_open_listeners_fail_with_what_to_do() {
    // Never started: nothing listens, nothing is sent.
    let gw = Gateway::init(
        "[enroll]\nlisten = \"0.0.0.0:0\"\n[alerts.email]\nsmtp_url = \"smtp://mail.invalid:25\"\n\
         from = \"rxgate@pharmacy.invalid\"\nto = [\"duty@pharmacy.invalid\"]\n",
    );
    let data = gw.data_dir();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = data.join("tls/server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, report) = doctor(&gw);
    assert!(!ok, "a failure exits non-zero: {report}");
    assert_eq!(report["worst"], "fail");
    assert_eq!(level(&report, "file-modes"), "fail");
    assert_eq!(level(&report, "plaintext"), "fail");
    assert_eq!(level(&report, "listeners"), "warn");
    // No daemon: the write rate cannot be measured, and the doctor says so.
    assert_eq!(level(&report, "sd-write-rate"), "pass");
    assert!(
        found(&report, "sd-write-rate").contains("cannot be measured"),
        "{report}"
    );
    assert_eq!(level(&report, "outbox-age"), "pass");
    let checks = report["checks"].as_array().unwrap();
    let modes = checks.iter().find(|c| c["check"] == "file-modes").unwrap();
    let found = modes["found"].as_str().unwrap();
    assert!(
        found.contains("mode 755") && found.contains("mode 644"),
        "{found}"
    );
    assert!(modes["advice"].as_str().unwrap().contains("chmod 700"));
    let plain = checks.iter().find(|c| c["check"] == "plaintext").unwrap();
    assert!(plain["found"].as_str().unwrap().contains("without TLS"));
    assert!(plain["advice"].as_str().unwrap().contains("tls=required"));
}

#[test]
fn backup_freshness_passes_after_a_backup_and_fails_when_a_destination_is_missing() {
    let gw = Gateway::init(
        "[backup]\nrecipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n\
         interval = \"24h\"\ndestinations = [\"usb\", \"share\"]\n",
    );
    for dir in ["usb", "share"] {
        std::fs::create_dir(gw.path(dir)).unwrap();
    }
    let (_, report) = doctor(&gw);
    assert_eq!(level(&report, "backups"), "warn", "no backup yet: {report}");
    // No daemon runs: the command opens the store itself.
    gw.cli_ok(&["backup", "create"]);
    let (_, report) = doctor(&gw);
    assert_eq!(level(&report, "backups"), "pass", "{report}");
    std::fs::remove_dir_all(gw.path("share")).unwrap();
    let (ok, report) = doctor(&gw);
    assert!(!ok, "a missing destination fails: {report}");
    let checks = report["checks"].as_array().unwrap();
    let backups = checks.iter().find(|c| c["check"] == "backups").unwrap();
    assert_eq!(backups["level"], "fail");
    let found = backups["found"].as_str().unwrap();
    assert!(found.contains("share (not mounted?)"), "{found}");
    assert!(found.contains("the newest backup, "), "{found}");
}
