//! Modbus end to end: the real gateway binary polls devices it did not write (pymodbus) and the
//! simulator, and the scaled values reach the cloud broker.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rxgate_e2e::cloud::{Cloud, Subscription};
use rxgate_e2e::{Gateway, start_ready, wait_until, workspace};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `RXGATE_PYTHON`, else the workspace's `.venv` (scripts/test creates it), else `python3`.
fn python() -> PathBuf {
    let venv = workspace().join(".venv/bin/python");
    std::env::var_os("RXGATE_PYTHON")
        .map(PathBuf::from)
        .or_else(|| venv.exists().then_some(venv))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

fn value(message: &serde_json::Value, point: &str) -> serde_json::Value {
    message["points"][point]["value"].clone()
}

#[test]
fn the_gateway_polls_a_pymodbus_server_and_the_cloud_gets_exactly_scaled_values_in_both_word_orders()
 {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(workspace().join("tests/pymodbus_server.py"))
        .arg("0");
    let (_server, port) = start_ready(cmd, "the pymodbus server");
    let cloud = Cloud::start(tmp.path());
    let model = workspace().join("config/devices/thermolog-tl2.toml");
    let gw = Gateway::start(&format!(
        "{}\n[devices.logger-01]\nkind = \"sensor\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\nmodel = \"{}\"\npoll_interval = \"2s\"\n",
        cloud.pki.gateway_config(cloud.port),
        model.display()
    ));
    let backend = cloud.subscribe("rxgate/v1/+/devices/+/telemetry");
    let topic = "rxgate/v1/store-0042/devices/logger-01/telemetry";
    let messages = backend.wait_for(topic, 1, Duration::from_secs(20));
    let m = &messages[0];
    assert_eq!(value(m, "probe1_c"), 4.25, "f32, high word first: {m}");
    assert_eq!(value(m, "probe2_c"), -18.5, "{m}");
    assert_eq!(
        value(m, "min_since_reset_c"),
        2.75,
        "f32, low word first: {m}"
    );
    assert_eq!(value(m, "max_since_reset_c"), 7.125, "{m}");
    assert_eq!(value(m, "battery_v"), 3.312, "u16 x 0.001: {m}");
    assert_eq!(value(m, "records_stored"), 123456789.0, "u32: {m}");
    assert_eq!(m["points"]["probe1_c"]["unit"], "°C");
    assert_eq!(m["points"]["probe1_c"]["quality"], "good");
    drop(gw);
}

#[test]
fn the_gateway_polls_the_simulated_fridge_and_reports_it_offline_and_back_when_it_loses_power() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(rxgate_e2e::bin("rxgate-sim"));
    cmd.args([
        "fridge",
        "--tcp",
        "127.0.0.1:0",
        "--setpoint",
        "4.5",
        "--fault",
        "power-cut@3s+4s",
    ]);
    let (_fridge, port) = start_ready(cmd, "rxgate-sim fridge");
    let cloud = Cloud::start(tmp.path());
    let model = workspace().join("config/devices/acme-fr400.toml");
    let gw = Gateway::start(&format!(
        "{}\n[devices.fridge-01]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\nmodel = \"{}\"\npoll_interval = \"500ms\"\ntimeout = \"300ms\"\noffline_after = 2\nmax_backoff = \"1s\"\n",
        cloud.pki.gateway_config(cloud.port),
        model.display()
    ));
    let backend = cloud.subscribe("rxgate/v1/#");
    let telemetry = backend.wait_for(
        "rxgate/v1/store-0042/devices/fridge-01/telemetry",
        1,
        Duration::from_secs(10),
    );
    let t = value(&telemetry[0], "temperature_c").as_f64().unwrap();
    assert!(
        (4.0..=5.0).contains(&t),
        "around the setpoint: {}",
        telemetry[0]
    );
    let status = "rxgate/v1/store-0042/devices/fridge-01/status";
    let statuses = backend.wait_for(status, 3, Duration::from_secs(20));
    let online: Vec<bool> = statuses
        .iter()
        .map(|s| s["online"].as_bool().unwrap())
        .collect();
    assert_eq!(online[..3], [true, false, true], "{statuses:#?}");
    drop(gw);
}

/// When the gateway accepted `message` (its `gateway_ts`).
fn gateway_ts(message: &serde_json::Value) -> OffsetDateTime {
    let ts = message["gateway_ts"].as_str().unwrap_or_default();
    OffsetDateTime::parse(ts, &Rfc3339).unwrap_or_else(|e| panic!("gateway_ts {ts:?}: {e}"))
}

/// The quality of every point of a telemetry message.
fn qualities(message: &serde_json::Value) -> Vec<String> {
    message["points"]
        .as_object()
        .unwrap_or_else(|| panic!("no points: {message}"))
        .values()
        .map(|p| p["quality"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_fridge_that_goes_silent_is_reported_offline_within_three_polls_and_online_with_good_readings_when_it_answers_again()
 {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(rxgate_e2e::bin("rxgate-sim"));
    cmd.args(["fridge", "--tcp", "127.0.0.1:0", "--setpoint", "4.5"]);
    let (_fridge, port) = start_ready(cmd, "rxgate-sim fridge");
    let cloud = Cloud::start(tmp.path());
    let model = workspace().join("config/devices/acme-fr400.toml");
    let (interval, timeout, offline_after, max_backoff) = (
        Duration::from_millis(500),
        Duration::from_millis(200),
        3,
        Duration::from_secs(1),
    );
    let gw = Gateway::start(&format!(
        "{}\n[devices.fridge-01]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\nmodel = \"{}\"\n\
         poll_interval = \"500ms\"\ntimeout = \"200ms\"\noffline_after = {offline_after}\nmax_backoff = \"1s\"\n",
        cloud.pki.gateway_config(cloud.port),
        model.display()
    ));
    let backend = cloud.subscribe("rxgate/v1/#");
    let telemetry = "rxgate/v1/store-0042/devices/fridge-01/telemetry";
    let status = "rxgate/v1/store-0042/devices/fridge-01/status";
    let statuses = backend.wait_for(status, 1, Duration::from_secs(20));
    assert_eq!(statuses[0]["online"], true, "{statuses:#?}");
    for m in backend.wait_for(telemetry, 2, Duration::from_secs(10)) {
        assert!(qualities(&m).iter().all(|q| q == "good"), "{m}");
    }

    // Comms loss for 4 s: the fridge keeps its TCP connections open and answers nothing.
    // Holding registers 100 (fault mask, 8 = comms loss) and 101 (its duration in seconds) in
    // one write; mbpoll's -r is 1-based.
    let silent_for = Duration::from_secs(4);
    // The fault begins somewhere between these two instants (mbpoll may take a while to start
    // on a loaded machine): upper bounds are measured from the later, lower bounds from the
    // earlier, so a slow mbpoll cannot fail the test.
    let write_started = OffsetDateTime::now_utc();
    let out = rxgate_e2e::run(Command::new("mbpoll").args([
        "-m",
        "tcp",
        "-p",
        &port.to_string(),
        "-a",
        "1",
        "-t",
        "4",
        "-r",
        "101",
        "127.0.0.1",
        "8",
        &silent_for.as_secs().to_string(),
    ]));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Written 2"),
        "mbpoll: {}",
        rxgate_e2e::text(&out)
    );
    let write_done = OffsetDateTime::now_utc();

    let statuses = backend.wait_for(status, 2, Duration::from_secs(10));
    let offline = &statuses[1];
    assert_eq!(offline["online"], false, "{offline}");
    let reason = offline["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("3 polls in a row failed; last: no reply to reading")
            && reason.ends_with("within 200ms"),
        "timed out, not closed: {reason}"
    );
    let detected = gateway_ts(offline) - write_done;
    let bound = (interval + timeout) * offline_after + Duration::from_millis(300);
    assert!(
        detected <= bound,
        "offline {detected} after the fridge went silent; expected at most {bound:?}"
    );

    let statuses = backend.wait_for(status, 3, Duration::from_secs(15));
    let online = &statuses[2];
    assert_eq!(online["online"], true, "{online}");
    assert_eq!(online["reason"], "the device answered a poll");
    let back = gateway_ts(online) - write_started;
    // Not before the fridge answers again; then within one backoff step and a poll. The
    // simulator times its faults on its model clock, which steps every 100 ms (its default
    // tick), so the fault may end up to one tick early.
    let model_tick = Duration::from_millis(100);
    let latest = silent_for + max_backoff + timeout + Duration::from_millis(500);
    assert!(
        back >= silent_for - model_tick && gateway_ts(online) - write_done <= latest,
        "online again {back} after the fridge went silent for {silent_for:?}"
    );

    // A poll that gets no answer at all sends no telemetry (docs/cloud-contract.md); only the
    // poll under way when the fault began may have read part of the map, and then its unread
    // points say `comm_error` with the last good value.
    let after_fault: Vec<serde_json::Value> = backend
        .json_on(telemetry)
        .into_iter()
        .filter(|m| gateway_ts(m) > write_done && gateway_ts(m) < gateway_ts(online))
        .collect();
    assert!(after_fault.len() <= 1, "{after_fault:#?}");
    for m in &after_fault {
        assert!(
            gateway_ts(m) <= gateway_ts(offline),
            "sent while offline: {m}"
        );
        for point in m["points"].as_object().unwrap().values() {
            match point["quality"].as_str() {
                Some("good") => {}
                Some("comm_error") => assert!(
                    point["value"].is_number() || point["value"].is_boolean(),
                    "{m}"
                ),
                _ => panic!("{m}"),
            }
        }
    }

    // Readings resume, every point good.
    let resumed = wait_until(Duration::from_secs(10), "a reading after the fault", || {
        backend
            .json_on(telemetry)
            .into_iter()
            .find(|m| gateway_ts(m) >= gateway_ts(online))
    });
    assert!(qualities(&resumed).iter().all(|q| q == "good"), "{resumed}");
    let t = value(&resumed, "temperature_c").as_f64().unwrap();
    assert!((4.0..=5.0).contains(&t), "around the setpoint: {resumed}");
    drop(gw);
}

#[test]
fn metrics_and_health_answer_over_http_with_the_outbox_and_uplink_state() {
    let gw = Gateway::start("");
    let metrics = rxgate_e2e::curl(gw.dir.path(), &[&format!("http://{}/metrics", gw.metrics)]);
    assert_eq!(metrics.status, 200);
    let text = metrics.body_text();
    for name in [
        "rxgate_outbox_depth",
        "rxgate_outbox_oldest_age_seconds",
        "rxgate_uplink_connected",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    let health = rxgate_e2e::curl(gw.dir.path(), &[&format!("http://{}/health", gw.metrics)]);
    let health: serde_json::Value = serde_json::from_slice(&health.body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["uplink"], "disabled", "no [cloud] configured");
    // Nothing but the gateway's own first audit checkpoint waits for a cloud.
    assert!(health["outbox_depth"].as_u64().unwrap() <= 1, "{health}");
}

/// Unix time in seconds, as the pymodbus server's request log writes it.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// When the server got each poll's first request (input registers from 0), in unix seconds.
fn polls_in(log: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let at: f64 = fields.next()?.parse().ok()?;
            (fields.next()? == "4" && fields.next()? == "0").then_some(at)
        })
        .collect()
}

/// The data_dir on a loop-mounted ext4 frozen with `fsfreeze` for 4 s while pymodbus serves
/// (its request log tells when the gateway polled). Needs root, as tests/watchdog.rs.
#[test]
fn polls_keep_their_interval_while_the_data_dir_is_frozen_and_every_reading_arrives_after_it_thaws()
{
    let fs = rxgate_e2e::loopfs::LoopFs::new(64);
    let tmp = tempfile::tempdir().unwrap();
    let requests = tmp.path().join("requests.log");
    let mut cmd = Command::new(python());
    cmd.arg(workspace().join("tests/pymodbus_server.py"))
        .arg("0")
        .arg(&requests);
    let (_server, port) = start_ready(cmd, "the pymodbus server");
    let cloud = Cloud::start(tmp.path());
    let model = workspace().join("config/devices/thermolog-tl2.toml");
    let gw = Gateway::start(&format!(
        "[gateway]\ndata_dir = \"{}\"\n{}\n[devices.logger-01]\nkind = \"sensor\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\nmodel = \"{}\"\npoll_interval = \"500ms\"\ntimeout = \"300ms\"\n",
        fs.mount.join("data").display(),
        cloud.pki.gateway_config(cloud.port),
        model.display()
    ));
    let backend = cloud.subscribe("rxgate/v1/+/devices/+/telemetry");
    let topic = "rxgate/v1/store-0042/devices/logger-01/telemetry";
    backend.wait_for(topic, 4, Duration::from_secs(20));
    // Normally a reading is durable, and at the cloud, well within 1 s of being read.
    let latencies: Vec<f64> = backend
        .timed_messages()
        .iter()
        .filter(|(t, _, _)| t == topic)
        .map(|(_, p, at)| {
            let m: serde_json::Value = serde_json::from_str(p).unwrap();
            *at as f64 / 1e6 - gateway_ts(&m).unix_timestamp_nanos() as f64 / 1e9
        })
        .collect();
    println!("read to cloud, before the freeze: {latencies:.3?} s");
    assert!(
        latencies.iter().all(|l| *l < 1.0),
        "read to cloud: {latencies:?} s"
    );

    // Four seconds in which nothing can be written to the data_dir, with the cloud up: the
    // cloud acknowledges each reading before its batch is due, so none needs the disk.
    let (frozen_at, thawed_at) = freeze(&fs, Duration::from_secs(4));
    let polls = polls_during(&requests, frozen_at, thawed_at, &gw);
    let arrived_before_thaw: Vec<f64> = read_and_arrived(&backend, topic)
        .into_iter()
        .filter(|(read, at)| (frozen_at..thawed_at).contains(read) && *at < thawed_at)
        .map(|(read, _)| read)
        .collect();
    // Each reading the cloud acknowledged in time needed no disk. One it acknowledged late (a
    // loaded machine) is stored, and that write waits for the thaw with the readings after it.
    assert!(
        arrived_before_thaw.len() >= 2,
        "read during the freeze and at the cloud before the thaw: {arrived_before_thaw:?}, polls {polls:?}"
    );

    // Four more with the cloud frozen too (SIGSTOP): now every reading must be stored, and the
    // store cannot be written. Polls keep their interval; every reading arrives once both thaw.
    cloud.pause();
    let (frozen_at, thawed_at) = freeze(&fs, Duration::from_secs(4));
    cloud.resume();
    let polls = polls_during(&requests, frozen_at, thawed_at, &gw);

    // Every reading of both freezes arrives, stamped when it was read, in order, without a gap
    // in `seq` (copies of one reading, sent and then stored, carry the same `id`).
    let messages = wait_until(
        Duration::from_secs(20),
        "the readings of the freeze at the cloud",
        || {
            let got = backend.json_on(topic);
            let last = got.iter().map(gateway_ts).max()?;
            (last.unix_timestamp_nanos() as f64 / 1e9 > thawed_at + 1.0).then_some(got)
        },
    );
    let mut by_seq = std::collections::BTreeMap::new();
    for m in &messages {
        let seq = m["seq"].as_u64().unwrap();
        let id = m["id"].as_str().unwrap().to_owned();
        let first = by_seq.entry(seq).or_insert_with(|| (id.clone(), m.clone()));
        assert_eq!(first.0, id, "seq {seq} came with two ids");
    }
    let seqs: Vec<u64> = by_seq.keys().copied().collect();
    let first = seqs[0];
    assert_eq!(
        seqs,
        (first..first + seqs.len() as u64).collect::<Vec<_>>(),
        "no gap"
    );
    let read_during: Vec<f64> = by_seq
        .values()
        .map(|(_, m)| gateway_ts(m).unix_timestamp_nanos() as f64 / 1e9)
        .filter(|at| (frozen_at..thawed_at).contains(at))
        .collect();
    for poll in &polls {
        assert!(
            read_during
                .iter()
                .any(|at| (poll - 0.01..poll + 0.3).contains(at)),
            "no reading stamped after the poll at {poll:.3}: {read_during:?}"
        );
    }
    assert!(
        read_during.len() >= polls.len(),
        "{read_during:?} for polls {polls:?}"
    );
    for pair in read_during.windows(2) {
        let gap = pair[1] - pair[0];
        assert!((0.4..=0.6).contains(&gap), "{read_during:?}");
    }
    let early = read_and_arrived(&backend, topic)
        .into_iter()
        .filter(|(read, at)| (frozen_at..thawed_at).contains(read) && *at < thawed_at)
        .count();
    assert_eq!(
        early, 0,
        "nothing read during the second freeze reached the frozen cloud before the thaw"
    );
    drop(gw);
}

/// Freezes the data_dir's filesystem for `length`; returns when it froze and thawed (unix s).
fn freeze(fs: &rxgate_e2e::loopfs::LoopFs, length: Duration) -> (f64, f64) {
    let _frozen = rxgate_e2e::loopfs::Frozen::new(&fs.mount);
    let frozen_at = unix_now();
    std::thread::sleep(length);
    (frozen_at, unix_now())
}

/// The polls the server saw between `from` and `to`, checked to be 500 ms apart (within
/// 100 ms): the pollers did not wait on the disk.
fn polls_during(requests: &std::path::Path, from: f64, to: f64, gw: &Gateway) -> Vec<f64> {
    let polls: Vec<f64> = polls_in(requests)
        .into_iter()
        .filter(|at| (from..to).contains(at))
        .collect();
    assert!(polls.len() >= 7, "polls during the 4 s freeze: {polls:?}");
    let gaps: Vec<f64> = polls.windows(2).map(|p| p[1] - p[0]).collect();
    println!("gaps between polls during the freeze: {gaps:.3?} s");
    for pair in polls.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            (0.4..=0.6).contains(&gap),
            "a gap of {gap:.3} s between polls during the freeze: {polls:?}\n{}",
            gw.logs()
        );
    }
    polls
}

/// For each message on `topic` so far: when it was read (its `gateway_ts`) and when it reached
/// the backend, in unix seconds.
fn read_and_arrived(backend: &Subscription, topic: &str) -> Vec<(f64, f64)> {
    backend
        .timed_messages()
        .iter()
        .filter(|(t, _, _)| t == topic)
        .filter_map(|(_, p, at)| {
            let m: serde_json::Value = serde_json::from_str(p).ok()?;
            let read = gateway_ts(&m).unix_timestamp_nanos() as f64 / 1e9;
            Some((read, *at as f64 / 1e6))
        })
        .collect()
}

/// A loopback port nothing listens on (bound, then released).
fn unused_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

#[test]
fn a_modbus_only_gateway_with_est_and_device_mqtt_off_listens_on_neither_and_still_reaches_the_cloud()
 {
    let tmp = tempfile::tempdir().unwrap();
    let (_fridge, port) = start_ready(
        {
            let mut cmd = Command::new(rxgate_e2e::bin("rxgate-sim"));
            cmd.args(["fridge", "--tcp", "127.0.0.1:0", "--setpoint", "5"]);
            cmd
        },
        "rxgate-sim fridge",
    );
    let cloud = Cloud::start(tmp.path());
    let (est_port, mqtt_port) = (unused_port(), unused_port());
    let mut gw = Gateway::init(&format!(
        "[enroll]\nenabled = false\nlisten = \"127.0.0.1:{est_port}\"\n\
         [mqtt]\nenabled = false\nlisten = \"127.0.0.1:{mqtt_port}\"\n{}\n{}",
        cloud.pki.gateway_config(cloud.port),
        rxgate_e2e::fridge_device_config(port)
    ));

    let check = gw.cli_ok(&["config", "check"]);
    println!("rxgate config check:\n{check}");
    let lines: Vec<&str> = check.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "listener enroll (device enrollment (EST)): off (enroll.enabled = false)",
            "listener mqtt (device MQTT): off (mqtt.enabled = false)",
            "listener console (the pharmacy console): 127.0.0.1:0, TLS (HTTPS; password and second factor)",
            "listener metrics (/metrics and /health): 127.0.0.1:0, plain HTTP, no TLS, no authentication",
        ],
        "{check}"
    );
    assert!(check.trim_end().ends_with(": ok"), "{check}");

    gw.spawn();
    let backend = cloud.subscribe("rxgate/v1/+/devices/+/telemetry");
    backend.wait_for(
        "rxgate/v1/store-0042/devices/fridge-01/telemetry",
        3,
        Duration::from_secs(20),
    );
    for (what, port) in [("EST", est_port), ("device MQTT", mqtt_port)] {
        let connect = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(2),
        );
        assert_eq!(
            connect.map(|_| ()).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionRefused),
            "{what} on 127.0.0.1:{port} while it is off"
        );
    }
    // What is on stays on, and the daemon lists only what it opened.
    std::net::TcpStream::connect(gw.console).expect("the console listens");
    std::net::TcpStream::connect(gw.metrics).expect("the metrics endpoint listens");
    let status: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["status", "--json"])).unwrap();
    let names: Vec<&str> = status["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| pair[0].as_str().unwrap())
        .collect();
    assert_eq!(names, ["metrics", "console"], "{status}");

    let doctor: serde_json::Value =
        serde_json::from_slice(&gw.cli(&["doctor", "--json"]).stdout).unwrap();
    let listeners = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "listeners")
        .unwrap();
    assert_eq!(listeners["level"], "pass", "{listeners}");
    assert_eq!(
        listeners["found"],
        "every open listener is on loopback; off: enroll, mqtt"
    );
}
