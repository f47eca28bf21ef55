//! The gateway against a misbehaving peer on the pharmacy's network (127.0.0.x standing in for
//! LAN hosts): each test mounts one attack on the real binary, bounded in time and connections,
//! and asserts that legitimate work goes on and what the gateway did about it.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use rxgate_e2e::{Gateway, curl, run, text, wait_until};

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `rxgate config check` on `extra` merged into the test config: exit success and output.
fn config_check(extra: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, rxgate_e2e::config_text("store-0042", extra)).unwrap();
    let out = run(Command::new(rxgate_e2e::bin("rxgate"))
        .arg("--config")
        .arg(&path)
        .args(["config", "check"]));
    (out.status.success(), text(&out))
}

#[test]
fn a_plaintext_cloud_uplink_beyond_loopback_fails_config_check() {
    let cloud = "ca_file = \"ca.pem\"\ncert_file = \"c.pem\"\nkey_file = \"c.key\"\n";
    let (ok, out) = config_check(&format!(
        "[cloud]\nurl = \"mqtt://cloud.example.com:1883\"\n{cloud}"
    ));
    assert!(!ok, "accepted: {out}");
    assert!(
        out.contains("cloud.url") && out.contains("only for a broker on loopback"),
        "{out}"
    );
}

#[test]
fn a_metrics_endpoint_beyond_loopback_is_refused_unless_allowed_and_then_called_unauthenticated() {
    let (ok, out) = config_check("[metrics]\nlisten = \"0.0.0.0:9880\"\n");
    assert!(!ok, "accepted: {out}");
    assert!(
        out.contains("metrics.listen") && out.contains("allow_remote"),
        "{out}"
    );
    let (ok, out) = config_check("[metrics]\nlisten = \"0.0.0.0:9880\"\nallow_remote = true\n");
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: metrics.listen") && out.contains("without authentication"),
        "{out}"
    );
}

/// 600 idle connections to the metrics endpoint of a gateway limited to 256 file descriptors
/// (the unit's LimitNOFILE, scaled down): the endpoint holds at most its cap, so EST and the
/// metrics endpoint itself go on answering, and a peer that never finishes its request headers
/// is dropped.
#[test]
fn idle_connections_to_the_metrics_endpoint_cannot_exhaust_the_gateways_file_descriptors() {
    let gw = Gateway::start("");
    let pid = gw.child.as_ref().unwrap().id();
    let limit = run(Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg("--nofile=256:256"));
    assert!(limit.status.success(), "{}", text(&limit));
    let before = open_fds(pid);

    let mut idle = Vec::new();
    for _ in 0..600 {
        match TcpStream::connect_timeout(&gw.metrics, Duration::from_secs(2)) {
            Ok(stream) => idle.push(stream),
            Err(_) => break,
        }
    }
    // Let the gateway accept what the kernel queued.
    let settled = wait_until(Duration::from_secs(10), "the gateway to settle", || {
        let now = open_fds(pid);
        std::thread::sleep(Duration::from_millis(300));
        (open_fds(pid) == now).then_some(now)
    });
    assert!(
        settled <= before + 16 + 8,
        "the gateway holds {settled} descriptors ({before} before 600 idle metrics connections)"
    );

    let started = Instant::now();
    let cacerts = curl(
        gw.dir.path(),
        &[
            "--cacert",
            gw.ca_cert().to_str().unwrap(),
            &format!("{}/.well-known/est/cacerts", gw.est_url()),
        ],
    );
    assert_eq!(cacerts.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "EST answered in {:?} under the metrics flood",
        started.elapsed()
    );

    // A peer that sends half a request is closed after the header timeout (5 s).
    drop(idle);
    let mut slow = TcpStream::connect(gw.metrics).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a half-sent request held its connection for {:?}",
        started.elapsed()
    );

    let health = wait_until(Duration::from_secs(10), "/health to answer again", || {
        let out = rxgate_e2e::curl_raw(
            gw.dir.path(),
            &["-f", &format!("http://{}/health", gw.metrics)],
        );
        out.status.success().then_some(out)
    });
    assert!(
        text(&health).contains("\"status\":\"ok\""),
        "{}",
        text(&health)
    );
}
