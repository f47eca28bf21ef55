//! The telemetry spine end to end: devices → rxgate → mosquitto (the cloud), over mutual TLS.

use std::time::Duration;

use rxgate_e2e::cloud::Cloud;
use rxgate_e2e::{Gateway, text};

const TELEMETRY: &str = "rxgate/v1/store-0042/devices/fridge-01/telemetry";

#[test]
fn mosquitto_pub_with_an_enrolled_certificate_reaches_the_cloud_in_the_documented_envelope() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path());
    let gw = Gateway::start(&cloud.pki.gateway_config(cloud.port));
    let backend = cloud.subscribe("rxgate/v1/#");
    let creds = gw.enroll_with_sim("fridge-01", "fridge");

    let out = gw.mosquitto_pub(
        &creds,
        "fridge-01",
        "devices/fridge-01/telemetry",
        r#"{"ts":"2026-05-01T08:00:00Z","points":{"temperature_c":4.5,"door_open":false}}"#,
    );
    assert!(out.status.success(), "{}", text(&out));

    let messages = backend.wait_for(TELEMETRY, 1, Duration::from_secs(10));
    let m = &messages[0];
    assert_eq!(m["type"], "telemetry");
    assert_eq!(m["site"], "store-0042");
    assert_eq!(m["device"], "fridge-01");
    assert_eq!(m["seq"], 1);
    assert_eq!(m["device_ts"], "2026-05-01T08:00:00Z");
    assert_eq!(m["clock_synced"], true);
    assert_eq!(m["points"]["temperature_c"]["value"], 4.5);
    assert_eq!(m["points"]["door_open"]["value"], false);
    assert_eq!(m["points"]["temperature_c"]["quality"], "good");
    let id = m["id"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "7", "a UUIDv7: {id}");
    assert!(m["gateway_ts"].as_str().unwrap().ends_with('Z'));

    let status = backend.wait_for(
        "rxgate/v1/store-0042/gateway/status",
        1,
        Duration::from_secs(5),
    );
    assert_eq!(status[0]["online"], true);
}

/// Sends `lines` as telemetry messages of one `mosquitto_pub -l` session (QoS 1); returns once
/// every one of them was acknowledged (mosquitto_pub exits only then).
fn publish_lines(gw: &Gateway, creds: &std::path::Path, device: &str, lines: &[String]) {
    use std::io::Write;
    let mut child = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &gw.mqtt.port().to_string()])
        .arg("--cafile")
        .arg(creds.join("ca.crt"))
        .arg("--cert")
        .arg(creds.join("device.crt"))
        .arg("--key")
        .arg(creds.join("device.key"))
        .args([
            "-i",
            device,
            "-t",
            &format!("devices/{device}/telemetry"),
            "-q",
            "1",
            "-l",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        let stdin = child.stdin.as_mut().unwrap();
        for line in lines {
            writeln!(stdin, "{line}").unwrap();
        }
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
}

fn readings(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"points":{{"temperature_c":{}.0,"n":{i}}}}}"#,
                2 + i % 6
            )
        })
        .collect()
}

fn assert_complete_and_ordered(messages: &[serde_json::Value], n: usize) {
    let mut ns: Vec<i64> = messages
        .iter()
        .map(|m| m["points"]["n"]["value"].as_f64().unwrap() as i64)
        .collect();
    let seqs: Vec<i64> = messages
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ns,
        (0..n as i64).collect::<Vec<_>>(),
        "every reading, in order"
    );
    assert_eq!(
        seqs,
        (1..=n as i64).collect::<Vec<_>>(),
        "seq 1..n without gaps"
    );
    ns.dedup();
    assert_eq!(ns.len(), n);
}

#[test]
fn readings_accepted_while_the_cloud_is_down_arrive_complete_and_in_order_when_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cloud = Cloud::start(tmp.path());
    let gw = Gateway::start(&cloud.pki.gateway_config(cloud.port));
    let backend = cloud.subscribe("rxgate/v1/+/devices/+/telemetry");
    let creds = gw.enroll_with_sim("fridge-01", "fridge");

    cloud.stop();
    publish_lines(&gw, &creds, "fridge-01", &readings(200));
    let status: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["status", "--json"])).unwrap();
    assert_eq!(status["running"], true);
    cloud.restart();

    let messages = backend.wait_for(TELEMETRY, 200, Duration::from_secs(30));
    let unique: std::collections::HashSet<_> = messages
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        unique.len(),
        200,
        "no duplicates expected in a clean outage"
    );
    assert_complete_and_ordered(&messages, 200);
}

#[test]
fn a_gateway_killed_with_readings_in_its_outbox_delivers_them_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cloud = Cloud::start(tmp.path());
    let mut gw = Gateway::start(&cloud.pki.gateway_config(cloud.port));
    let backend = cloud.subscribe("rxgate/v1/+/devices/+/telemetry");
    let creds = gw.enroll_with_sim("fridge-01", "fridge");

    cloud.stop();
    publish_lines(&gw, &creds, "fridge-01", &readings(100));
    // A power cut: no chance to flush anything.
    let mut child = gw.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    cloud.restart();
    gw.spawn();

    let messages = backend.wait_for(TELEMETRY, 100, Duration::from_secs(30));
    assert_complete_and_ordered(&messages, 100);
}
