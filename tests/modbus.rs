//! Modbus end to end: the real gateway binary polls devices it did not write (pymodbus) and the
//! simulator, and the scaled values reach the cloud broker.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rxgate_e2e::cloud::Cloud;
use rxgate_e2e::{Gateway, start_ready, workspace};

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
