//! `rxgate demo`, the first thing a newcomer runs, works with no config and shows the whole path.

use std::process::Command;

use rxgate_e2e::{bin, run, text};

#[test]
fn the_demo_runs_with_no_config_and_shows_telemetry_and_events_reaching_the_cloud() {
    let home = tempfile::tempdir().unwrap();
    let output = run(Command::new(bin("rxgate"))
        .args(["demo", "--duration", "12s"])
        .env("RXGATE_CONFIG", home.path().join("does-not-exist.toml"))
        .env("TMPDIR", home.path()));
    assert!(output.status.success(), "{}", text(&output));
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        out.contains("cabinet-01 enrolled with one-time token"),
        "{out}"
    );
    for expected in [
        "fridge-01   telemetry",
        "fridge-02   telemetry",
        "cabinet-01  event",
        "gateway     status",
    ] {
        assert!(out.contains(expected), "{expected:?} missing:\n{out}");
    }
    assert!(out.contains("temperature_c"), "{out}");
    // Every event of the demo's cabinet raises access flags; they fold into one alert per flag,
    // so the duty pharmacist gets one e-mail per flag, not one per event.
    let events = out
        .lines()
        .filter(|l| l.contains("cabinet-01  event"))
        .count();
    let flag_mails: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("e-mail") && l.contains("access flag"))
        .collect();
    assert!(events >= 2, "the cabinet sent {events} events:\n{out}");
    assert!(
        !flag_mails.is_empty() && flag_mails.len() <= 2,
        "{} access-flag e-mails for {events} events:\n{out}",
        flag_mails.len()
    );
    // A long subject folded by the mailer reads as it was written.
    assert!(
        flag_mails
            .iter()
            .all(|l| l.contains("access flag access after hours")
                || l.contains("access flag access without second factor")),
        "{flag_mails:#?}"
    );
    assert!(out.contains("Demo over."), "{out}");
    let leftovers: Vec<_> = std::fs::read_dir(home.path()).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "the demo cleans up its temporary folder: {leftovers:?}"
    );
}
