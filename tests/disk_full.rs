//! A full disk: the gateway's data_dir on a small tmpfs, the cloud down, a device publishing
//! until the file system is full. The device gets the documented refusal (the connection closed
//! without a PUBACK), the metrics say disk full, the gateway keeps answering; once space is freed
//! it accepts again without a restart, and when the cloud comes up every accepted reading is
//! delivered as stored and the audit trail verifies.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, Packet, QoS};
use rxgate_e2e::cloud::Cloud;
use rxgate_e2e::{Gateway, config_text, curl_raw, text, wait_until};
use rxgate_sim::cabinet::{Credentials, mqtt_options};

/// A tmpfs mounted on a fresh temporary folder, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and must run as root (as CI does): {}",
            text(&out)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
    }
}

/// Fills the file system holding `path` with a ballast file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("ballast");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 4096];
    while file
        .write_all(&chunk)
        .and_then(|()| file.sync_data())
        .is_ok()
    {}
    path
}

fn metric(gw: &Gateway, line_start: &str) -> Option<f64> {
    let out = curl_raw(gw.dir.path(), &[&format!("http://{}/metrics", gw.metrics)]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

fn reading(n: u64) -> String {
    format!(r#"{{"points":{{"temperature_c":4.5,"n":{n}}}}}"#)
}

/// One device connection publishing QoS 1 readings one at a time.
struct Device {
    client: Client,
    connection: rumqttc::Connection,
}

impl Device {
    fn connect(gw: &Gateway, creds: &Credentials) -> Device {
        let mut options = mqtt_options(&gw.mqtt.to_string(), creds).unwrap();
        options.set_keep_alive(Duration::from_secs(5));
        let (client, connection) = Client::new(options, 4);
        Device { client, connection }
    }

    /// Publishes reading `n`: true once its PUBACK came, false if the connection ended first
    /// (the connection is then done with: connect again).
    fn publish(&mut self, n: u64) -> bool {
        let queued = self.client.try_publish(
            "devices/fridge-01/telemetry",
            QoS::AtLeastOnce,
            false,
            reading(n),
        );
        if queued.is_err() {
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.connection.recv_timeout(Duration::from_secs(1)) {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => return true,
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(_)) => return false,
            }
        }
        false
    }
}

#[test]
fn a_full_disk_refuses_readings_without_damage_and_recovers_by_itself_when_space_is_freed() {
    let disk = Tmpfs::mount("6m");
    let data_dir = disk.path().join("data");
    let tmp = tempfile::tempdir().unwrap();
    let mut cloud = Cloud::start(tmp.path());
    let backend = cloud.subscribe("rxgate/v1/store-0042/devices/+/telemetry");
    cloud.stop();
    let config = config_text(
        "store-0042",
        &format!(
            "[gateway]\ndata_dir = \"{}\"\n{}",
            data_dir.display(),
            cloud.pki.gateway_config(cloud.port)
        ),
    );
    let mut gw = Gateway::init_with(&config, &[]);
    // The harness finds the CA and the rest under <dir>/data.
    std::os::unix::fs::symlink(&data_dir, gw.data_dir()).unwrap();
    gw.spawn();
    let creds = Credentials::load(&gw.enroll_with_sim("fridge-01", "fridge")).unwrap();

    let mut device = Device::connect(&gw, &creds);
    let mut accepted = Vec::new();
    let mut n = 0;
    for _ in 0..20 {
        n += 1;
        assert!(device.publish(n), "reading {n} before the disk fills");
        accepted.push(n);
    }

    // Fill the disk, then publish until the gateway refuses.
    let ballast = fill(disk.path());
    let started = Instant::now();
    let refused_at = loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no refusal after {n} readings on a full disk:\n{}",
            gw.logs()
        );
        n += 1;
        if device.publish(n) {
            accepted.push(n);
        } else {
            break n;
        }
    };
    eprintln!(
        "refused reading {refused_at} after {} accepted",
        accepted.len()
    );
    assert!(gw.is_running(), "the gateway keeps running");
    assert_eq!(metric(&gw, "rxgate_outbox_disk_full "), Some(1.0));
    assert!(
        metric(&gw, "rxgate_outbox_refusals_total{reason=\"disk_full\"} ").unwrap_or(0.0) >= 1.0
    );
    let health = curl_raw(gw.dir.path(), &[&format!("http://{}/health", gw.metrics)]);
    assert!(health.status.success(), "{}", text(&health));
    assert!(
        gw.logs().contains("is full"),
        "the log names the full disk:\n{}",
        gw.logs()
    );
    // Further readings are refused too, and logged once per episode, not once per reading.
    for _ in 0..3 {
        let mut again = Device::connect(&gw, &creds);
        assert!(
            !again.publish(refused_at),
            "still refused while the disk is full"
        );
    }
    let episode_lines = gw
        .logs()
        .matches("Outbox write failed; new records are refused")
        .count();
    assert_eq!(episode_lines, 1, "{}", gw.logs());

    // Space again: the device's resend is accepted, without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let mut device = wait_until(
        Duration::from_secs(60),
        "the gateway to accept readings again",
        || {
            let mut device = Device::connect(&gw, &creds);
            device.publish(refused_at).then_some(device)
        },
    );
    accepted.push(refused_at);
    for _ in 0..20 {
        n += 1;
        assert!(device.publish(n), "reading {n} after space was freed");
        accepted.push(n);
    }
    assert_eq!(metric(&gw, "rxgate_outbox_disk_full "), Some(0.0));
    assert!(gw.is_running());

    // The cloud comes up: everything accepted arrives, as it was sent, exactly once per seq.
    cloud.restart();
    let delivered = wait_until(Duration::from_secs(60), "every accepted reading", || {
        let mut by_n = BTreeMap::new();
        for m in backend.json_on("rxgate/v1/store-0042/devices/fridge-01/telemetry") {
            let n = m["points"]["n"]["value"]
                .as_f64()
                .unwrap_or_else(|| panic!("n is a number: {m}")) as u64;
            assert_eq!(m["points"]["temperature_c"]["value"], 4.5, "{m}");
            by_n.entry(n).or_insert_with(Vec::new).push(m);
        }
        accepted
            .iter()
            .all(|n| by_n.contains_key(n))
            .then_some(by_n)
    });
    let mut seqs: Vec<u64> = delivered
        .values()
        .flatten()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        delivered
            .values()
            .map(|ms| {
                let mut ids: Vec<_> = ms.iter().map(|m| m["id"].to_string()).collect();
                ids.dedup();
                ids.len()
            })
            .sum::<usize>(),
        "one seq per stored record"
    );
    let verify = gw.cli(&["audit", "verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(gw.stop(), "the gateway stops cleanly:\n{}", gw.logs());
    drop(gw);
}
