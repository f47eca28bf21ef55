//! `rxgate-sim cabinet` against the real gateway and a real cloud broker: enrollment with a
//! one-time token, access events end to end, and a clean stop on Ctrl-C.

use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use rxgate_e2e::cloud::Cloud;
use rxgate_e2e::{Gateway, bin, text, wait_until};
use rxgate_sim::cabinet::{EventGenerator, Scenario};
use serde_json::Value;

/// `rxgate-sim cabinet` for `device` of `gw`, with credentials in `dir`, and `extra` arguments.
fn cabinet(gw: &Gateway, dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin("rxgate-sim"));
    cmd.args(["cabinet", "--gateway", &gw.mqtt.to_string(), "--dir"])
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Waits (with a deadline, killing it after) for `child` to exit; returns its output.
fn finish(mut child: Child, timeout: Duration) -> Output {
    let status = wait_until(timeout, "rxgate-sim cabinet to exit", || {
        match child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(status),
            Err(e) => panic!("waiting for rxgate-sim: {e}"),
        }
    });
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_end(&mut stderr);
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

/// The event as the generator made it, without what differs between runs (`ts`), what the
/// cabinet adds (`event_id`), and the patient identifier, which the gateway's policy replaces
/// or removes before the cloud.
fn comparable(event: &Value) -> Value {
    let mut event = event.clone();
    if let Some(fields) = event.as_object_mut() {
        for key in ["ts", "event_id", "patient_id"] {
            fields.remove(key);
        }
    }
    event
}

#[test]
fn rxgate_sim_cabinet_enrolls_and_its_events_reach_the_cloud_with_the_generated_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path());
    let gw = Gateway::start(&cloud.pki.gateway_config(cloud.port));
    let backend = cloud.subscribe("rxgate/v1/#");
    let token = gw.token("cabinet-01", "cabinet");
    let dir = gw.path("cabinet-01");
    let ca = gw.ca_cert();
    let enroll = |token: &str| {
        vec![
            "--est".to_owned(),
            gw.est_url(),
            "--device".to_owned(),
            "cabinet-01".to_owned(),
            "--token".to_owned(),
            token.to_owned(),
            "--ca".to_owned(),
            ca.display().to_string(),
        ]
    };

    let mut cmd = cabinet(&gw, &dir, &["--count", "5", "--rate", "20", "--seed", "42"]);
    let child = cmd.args(enroll(&token)).spawn().unwrap();
    let out = finish(child, Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Enrolled cabinet-01"), "{}", text(&out));
    assert!(
        stdout.contains("Cabinet cabinet-01: 5 events acknowledged, 0 rejected, 0 unacknowledged."),
        "{}",
        text(&out)
    );

    let topic = "rxgate/v1/store-0042/devices/cabinet-01/events";
    let messages = backend.wait_for(topic, 5, Duration::from_secs(10));
    assert_eq!(messages.len(), 5, "{messages:#?}");
    let mut generator = EventGenerator::new(42, Scenario::Normal);
    let mut ids = std::collections::HashSet::new();
    for (i, m) in messages.iter().enumerate() {
        let generated = generator.next(time::OffsetDateTime::now_utc());
        assert_eq!(m["type"], "event");
        assert_eq!(m["device"], "cabinet-01");
        assert_eq!(m["seq"], i + 1);
        let event = &m["event"];
        assert_eq!(comparable(event), comparable(&generated), "event {}", i + 1);
        assert_eq!(
            event.get("patient_id").is_some(),
            generated.get("patient_id").is_some(),
            "a patient identifier where the generator made one: {event}"
        );
        let ts = event["ts"].as_str().expect("ts");
        assert!(
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok(),
            "{ts}"
        );
        assert!(m["device_ts"].is_string(), "{m}");
        assert!(
            ids.insert(event["event_id"].as_str().expect("event_id").to_owned()),
            "event ids are unique: {messages:#?}"
        );
    }

    // Run again: the folder holds credentials, so the spent token is not used; the same seed
    // gives the same events, which the cloud receives as new messages.
    let mut cmd = cabinet(&gw, &dir, &["--count", "2", "--rate", "20", "--seed", "42"]);
    let child = cmd.args(enroll(&token)).spawn().unwrap();
    let out = finish(child, Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("Enrolled"),
        "{}",
        text(&out)
    );
    let messages = backend.wait_for(topic, 7, Duration::from_secs(10));
    assert_eq!(messages[6]["seq"], 7);
    assert_eq!(
        comparable(&messages[6]["event"]),
        comparable(&messages[1]["event"])
    );
}

#[test]
fn ctrl_c_stops_a_cabinet_cleanly_with_a_summary_and_the_device_goes_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path());
    let gw = Gateway::start(&cloud.pki.gateway_config(cloud.port));
    let backend = cloud.subscribe("rxgate/v1/#");
    let dir = gw.enroll_with_sim("cabinet-02", "cabinet");

    let child = cabinet(&gw, &dir, &["--rate", "10", "--scenario", "suspicious"])
        .spawn()
        .unwrap();
    let events = "rxgate/v1/store-0042/devices/cabinet-02/events";
    backend.wait_for(events, 3, Duration::from_secs(20));
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let out = finish(child, Duration::from_secs(10));
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let acknowledged: u64 = stdout
        .strip_prefix("Cabinet cabinet-02: ")
        .and_then(|rest| rest.split_once(" events acknowledged"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary: {}", text(&out)));
    assert!(acknowledged >= 3, "{}", text(&out));

    // A clean DISCONNECT: the gateway reports the device offline at once, not after the
    // keep-alive runs out, and that is its last status.
    let status = "rxgate/v1/store-0042/devices/cabinet-02/status";
    // (The keep-alive is 30 s, so 45 s before a broker gives up: 15 s tells the two apart even on
    // a loaded machine.)
    let statuses = wait_until(Duration::from_secs(15), "the cabinet offline", || {
        let got = backend.json_on(status);
        got.iter()
            .any(|s| s["online"] == false && s["reason"] == "device disconnected")
            .then_some(got)
    });
    let last = statuses.last().unwrap();
    assert_eq!(last["online"], false, "{statuses:#?}");
    assert_eq!(last["reason"], "device disconnected", "{statuses:#?}");
    // Statuses arrive in the order the gateway decided them, a session's online before its
    // offline (even for a connection the device drops at once): the cloud's retained status
    // is the device's state.
    let seqs: Vec<u64> = statuses
        .iter()
        .map(|s| s["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.is_sorted(), "{statuses:#?}");
    assert_eq!(statuses[0]["online"], true, "{statuses:#?}");
    // Everything acknowledged reached the cloud.
    backend.wait_for(events, acknowledged as usize, Duration::from_secs(10));
}

#[test]
fn a_cabinet_resends_what_was_not_acknowledged_when_the_gateway_is_killed_and_restarted() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path());
    // A fixed device port, so the cabinet finds the gateway again after the restart; below
    // Linux's ephemeral range (32768-60999), so no other socket of the parallel tests takes it
    // while the gateway is down.
    let port = (20000 + std::process::id() % 12000..32000)
        .map(|p| p as u16)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below the ephemeral range");
    // 300 events at 200 a second is far past the default policy's event rate limit (2 a second,
    // bursts of 120): this test is about resending across a restart, so the limit is raised.
    let policy = rxgate_e2e::policy_without_event_limit(tmp.path());
    let mut gw = Gateway::start(&format!(
        "{}[mqtt]\nlisten = \"127.0.0.1:{port}\"\n[gateway]\npolicy_file = \"{}\"\n",
        cloud.pki.gateway_config(cloud.port),
        policy.display()
    ));
    let backend = cloud.subscribe("rxgate/v1/#");
    let dir = gw.enroll_with_sim("cabinet-03", "cabinet");

    let child = cabinet(
        &gw,
        &dir,
        &["--rate", "200", "--count", "300", "--seed", "3"],
    )
    .spawn()
    .unwrap();
    let events = "rxgate/v1/store-0042/devices/cabinet-03/events";
    backend.wait_for(events, 20, Duration::from_secs(20));
    // A power cut, as far as the cabinet can tell: events in flight get no PUBACK.
    let mut daemon = gw.child.take().expect("the daemon runs");
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    gw.spawn();
    assert_eq!(gw.mqtt.port(), port);

    let out = finish(child, Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("300 events acknowledged"),
        "{}",
        text(&out)
    );
    // Every event reached the cloud: some perhaps twice (sent again after the restart), which
    // their event_id tells apart.
    let ids = wait_until(
        Duration::from_secs(15),
        "all 300 event ids at the cloud",
        || {
            let ids: std::collections::BTreeSet<String> = backend
                .json_on(events)
                .iter()
                .filter_map(|m| m["event"]["event_id"].as_str().map(str::to_owned))
                .collect();
            (ids.len() >= 300).then_some(ids)
        },
    );
    assert_eq!(ids.len(), 300, "{ids:?}");
}

#[test]
fn rxgate_sim_fleet_enrolls_the_cabinets_of_a_tokens_file_once_and_runs_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path());
    let gw = Gateway::start(&cloud.pki.gateway_config(cloud.port));
    let backend = cloud.subscribe("rxgate/v1/#");
    let tokens = gw.path("tokens.txt");
    let lines: Vec<String> = ["cab-a", "cab-b", "cab-c"]
        .iter()
        .map(|id| format!("{id} {}\n", gw.token(id, "cabinet")))
        .collect();
    std::fs::write(&tokens, lines.concat()).unwrap();
    let state = gw.path("fleet-state");
    let fleet = || {
        let mut cmd = Command::new(bin("rxgate-sim"));
        cmd.args(["fleet", "--cabinets", "2", "--cabinet-rate", "20"])
            .arg("--tokens")
            .arg(&tokens)
            .arg("--state-dir")
            .arg(&state)
            .args(["--est", &gw.est_url(), "--gateway", &gw.mqtt.to_string()])
            .arg("--ca")
            .arg(gw.ca_cert())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let events = |id: &str| format!("rxgate/v1/store-0042/devices/{id}/events");

    for run in 1..=2 {
        let mut child = fleet().spawn().unwrap();
        let exited = wait_until(Duration::from_secs(30), "events of both cabinets", || {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return Some(true);
            }
            ["cab-a", "cab-b"]
                .iter()
                .all(|id| backend.json_on(&events(id)).len() >= 3 * run)
                .then_some(false)
        });
        if exited {
            let out = finish(child, Duration::ZERO);
            panic!("rxgate-sim fleet exited early: {}", text(&out));
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
        let out = finish(child, Duration::from_secs(15));
        assert!(out.status.success(), "run {run}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("cabinet cab-a publishes to"), "{stdout}");
        assert!(stdout.contains("Fleet stopped:"), "{stdout}");
        // The second run finds the credentials (the tokens are spent) and enrolls nobody.
        let enrolled = String::from_utf8_lossy(&out.stderr).contains("Cabinet enrolled.");
        assert_eq!(enrolled, run == 1, "run {run}: {}", text(&out));
    }
    // Only the first two of the file.
    assert!(backend.json_on(&events("cab-c")).is_empty());
    assert!(!state.join("cab-c").exists());
}
