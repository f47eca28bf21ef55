//! `rxgate demo`, the first thing a newcomer runs, works with no config and shows the whole path.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use rxgate_e2e::{bin, curl};

/// What follows `label` on the line of `out` that holds it, up to `end`.
fn after<'a>(out: &'a str, label: &str, end: &str) -> Option<&'a str> {
    let line = out.lines().find(|l| l.contains(label))?;
    let rest = &line[line.find(label)? + label.len()..];
    Some(rest[..rest.find(end).unwrap_or(rest.len())].trim())
}

#[test]
fn the_demo_runs_with_no_config_and_shows_telemetry_and_events_reaching_the_cloud() {
    let home = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("stderr");
    let mut child = Command::new(bin("rxgate"))
        .args(["demo", "--duration", "15s"])
        .env("RXGATE_CONFIG", home.path().join("does-not-exist.toml"))
        .env("TMPDIR", home.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("run rxgate demo");
    let mut out = String::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The console's address and the demo account come first; sign in while the demo runs.
    for line in lines.by_ref() {
        let line = line.unwrap();
        out.push_str(&line);
        out.push('\n');
        if line.contains("second factor:") {
            break;
        }
    }
    let console = after(&out, "console: ", " ")
        .expect("the console's address")
        .to_owned();
    assert!(console.starts_with("https://localhost:"), "{out}");
    let account = after(&out, "works only in this demo: ", "\n").expect("the demo account");
    let (name, password) = account.split_once(" / ").expect("name / password");
    let code = after(&out, "a recovery code (", ",").expect("a recovery code");
    let jar = scratch.path().join("cookies");
    let jar = jar.to_str().unwrap();
    let page = curl(
        scratch.path(),
        &["-k", "-c", jar, &format!("{console}signin")],
    );
    assert_eq!(page.status, 200, "{}", page.body_text());
    let body = page.body_text();
    let marker = "name=\"csrf\" value=\"";
    let at = body.find(marker).unwrap() + marker.len();
    let csrf = &body[at..][..body[at..].find('"').unwrap()];
    let signed_in = curl(
        scratch.path(),
        &[
            "-k",
            "-b",
            jar,
            "-c",
            jar,
            "--data",
            &format!("csrf={csrf}&name={name}&password={password}&code={code}"),
            &format!("{console}signin"),
        ],
    );
    assert_eq!(
        signed_in.status,
        303,
        "the demo account signs in: {}",
        signed_in.body_text()
    );
    let overview = curl(scratch.path(), &["-k", "-b", jar, &console]);
    assert!(
        overview.body_text().contains("fridge-01"),
        "{}",
        overview.body_text()
    );
    for line in lines {
        out.push_str(&line.unwrap());
        out.push('\n');
    }
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{out}\n{stderr}");
    let out = out.as_str();
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
