//! The temperature log end to end: the real `rxgate run` polls a simulated fridge whose
//! compressor fails for two (simulated) hours and recovers, and headless Chromium (Selenium,
//! tests/browser/temperature_log.py) has a pharmacist acknowledge the excursion's alert with a
//! signature and a product disposition, read the fridge's temperature log, download its CSV and
//! open the printable excursion report; then a technician signs the daily min/max check, which
//! resets the extremes since the last check. Screenshots go to `<target>/console-screenshots/`.

use std::process::Command;

use rxgate_e2e::{
    Gateway, bin, browser_test, fridge_device_config, screenshots, start_ready, text,
};

fn setup_link(gw: &Gateway, name: &str, role: &str) -> String {
    gw.cli_ok(&["user", "add", name, "--role", role])
        .trim()
        .to_owned()
}

fn celsius(text: &serde_json::Value) -> f64 {
    text.as_str()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("a temperature: {text}"))
}

#[test]
fn a_signed_excursion_prints_with_duration_peak_mkt_signature_and_disposition_and_a_signed_check_resets_the_extremes()
 {
    // 5 °C, 600 times faster than real time; the compressor fails after 1 s (simulated) and
    // works again two simulated hours (12 s) later: one excursion above 8 °C that ends.
    let mut sim = Command::new(bin("rxgate-sim"));
    sim.args([
        "fridge",
        "--tcp",
        "127.0.0.1:0",
        "--setpoint",
        "5",
        "--speed",
        "600",
    ])
    .args(["--fault", "compressor-failure@1s+2h"]);
    let (_fridge, port) = start_ready(sim, "rxgate-sim fridge");
    let config = format!(
        "{}[devices.fridge-01.calibration]\ncertificate = \"CAL-2026-117\"\nlaboratory = \"Thermo Lab\"\n\
         calibrated_on = \"2020-01-01\"\ndue_on = \"2099-01-01\"\n",
        fridge_device_config(port)
    );
    let gw = Gateway::start(&config);
    let base = format!("https://{}", gw.console);
    let pia = setup_link(&gw, "pia", "pharmacist");
    let tom = setup_link(&gw, "tom", "technician");

    let shots = screenshots();
    let seen = browser_test(
        &gw,
        "temperature_log.py",
        &["--base", &base, "--pia", &pia, "--tom", &tom],
    );

    // The printable report: duration, peak above the range, MKT, the signature, the disposition.
    let report = &seen["report"];
    assert!(
        report["duration"].as_str().unwrap().contains(" s"),
        "{seen}"
    );
    assert!(celsius(&report["peak"]) > 8.0, "{seen}");
    let mkt = celsius(&report["mkt"]);
    assert!(mkt > 8.0 && mkt <= celsius(&report["peak"]), "{seen}");
    assert_eq!(report["in_calibration"], "yes", "{seen}");
    assert_eq!(report["signer"], "pia (pharmacist)", "{seen}");
    assert_eq!(report["meaning"], "acknowledged", "{seen}");
    assert_eq!(report["disposition"], "quarantined", "{seen}");
    assert!(!report["has_script"].as_bool().unwrap(), "{seen}");

    // The CSV downloaded with the session.
    assert!(
        seen["csv_first_line"]
            .as_str()
            .unwrap()
            .starts_with("date,min_c,max_c,mean_c"),
        "{seen}"
    );
    assert!(seen["chart_loaded"].as_bool().unwrap(), "{seen}");

    // The check saw the excursion's maximum and reset it.
    assert!(celsius(&seen["check"]["seen_max"]) > 8.0, "{seen}");
    assert!(seen["check"]["reset_max"].as_f64().unwrap() < 8.0, "{seen}");

    // Both signatures are in the audit trail under their signers' names, and it verifies.
    let trail: Vec<serde_json::Value> =
        serde_json::from_str(&gw.cli_ok(&["audit", "export"])).expect("audit export is JSON");
    let signed: Vec<&serde_json::Value> = trail
        .iter()
        .filter(|e| e["kind"] == "record.signed")
        .collect();
    let ack = signed
        .iter()
        .find(|e| e["detail"]["record"] == "alert")
        .expect("the alert's signature");
    assert_eq!(ack["actor"], "pia");
    assert_eq!(ack["detail"]["statement"]["disposition"], "quarantined");
    assert_eq!(
        ack["seq"].as_u64(),
        report["audit_seq"].as_str().and_then(|s| s.parse().ok())
    );
    let check = signed
        .iter()
        .find(|e| e["detail"]["record"] == "minmax_check")
        .expect("the check's signature");
    assert_eq!(check["actor"], "tom");
    assert_eq!(check["detail"]["meaning"], "checked");
    assert_eq!(check["detail"]["roles"], serde_json::json!(["technician"]));
    let verified = gw.cli(&["audit", "verify"]);
    assert!(
        verified.status.success(),
        "rxgate audit verify: {}",
        text(&verified)
    );
    for page in [
        "20-fridge-log",
        "21-ack-form",
        "22-fridge-log-signed",
        "23-excursion-report",
        "24-overview-before-check",
        "25-check-form",
        "26-checked",
        "27-overview-after-check",
    ] {
        assert!(
            shots.join(format!("{page}.png")).is_file(),
            "screenshot {page}"
        );
    }
}
