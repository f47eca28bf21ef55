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

/// Seconds `rxgate-sim`-style EST `cacerts` takes from 127.0.0.1, over curl.
fn cacerts_took(gw: &Gateway) -> Duration {
    let started = Instant::now();
    let answer = curl(
        gw.dir.path(),
        &[
            "--cacert",
            gw.ca_cert().to_str().unwrap(),
            &format!("{}/.well-known/est/cacerts", gw.est_url()),
        ],
    );
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    started.elapsed()
}

/// Finding: 64 silent TCP connections from two addresses held every EST connection slot, since
/// the slot was taken before the TLS handshake and no pending handshake was ever evicted; a
/// legitimate `cacerts` waited 8 s. Now one address holds at most half of the slots, and
/// when all are taken the oldest unfinished handshake makes room.
#[test]
fn silent_tcp_connections_from_a_few_hosts_cannot_keep_a_real_client_off_est() {
    let gw = Gateway::start("[enroll]\nhandshake_timeout = \"30s\"\n");
    // The finding as reported: two hosts, 32 connections each.
    let two_hosts: Vec<TcpStream> = [[127, 0, 0, 2], [127, 0, 0, 3]]
        .iter()
        .flat_map(|source| (0..32).filter_map(|_| rxgate_e2e::tcp_from(*source, gw.enroll).ok()))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let took = cacerts_took(&gw);
    assert!(
        took < Duration::from_secs(1),
        "cacerts took {took:?} beside {} silent connections",
        two_hosts.len()
    );
    // Enough hosts to take every slot (6 × 16 > 64): the oldest silent handshakes make room.
    let many_hosts: Vec<TcpStream> = (2..8u8)
        .flat_map(|host| {
            (0..16).filter_map(move |_| rxgate_e2e::tcp_from([127, 0, 0, host], gw.enroll).ok())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let took = cacerts_took(&gw);
    assert!(
        took < Duration::from_secs(1),
        "cacerts took {took:?} with every slot taken by {} silent connections",
        many_hosts.len()
    );
    drop((two_hosts, many_hosts));
}

/// A TLS session to the device listener from `source` with `tls` (a device's credentials) that
/// completes its handshake and then sends nothing: no MQTT CONNECT.
fn tls_without_connect(
    source: [u8; 4],
    to: std::net::SocketAddr,
    tls: &std::sync::Arc<rustls::ClientConfig>,
) -> Option<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let mut tcp = rxgate_e2e::tcp_from(source, to).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let name =
        rustls_pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let mut conn = rustls::ClientConnection::new(tls.clone(), name).ok()?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).ok()?;
    }
    Some(rustls::StreamOwned::new(conn, tcp))
}

/// Finding: one device's certificate, from 4 addresses, held every MQTT slot with TLS sessions
/// that never send CONNECT; another device's connection timed out. Now a certificate may have
/// at most two sessions waiting for their CONNECT (a newer one evicts the oldest).
#[test]
fn one_certificate_cannot_hold_the_device_listeners_slots_with_sessions_that_never_connect() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = rxgate_e2e::cloud::Cloud::start(tmp.path());
    let gw = Gateway::start(&format!(
        "{}[mqtt]\nmax_connections = 16\nmax_connections_per_source = 8\nconnect_timeout = \"30s\"\n",
        cloud.pki.gateway_config(cloud.port)
    ));
    let backend = cloud.subscribe("rxgate/v1/#");
    let stolen =
        rxgate_sim::cabinet::Credentials::load(&gw.enroll_with_sim("cabinet-01", "cabinet"))
            .unwrap();
    let fridge = gw.enroll_with_sim("fridge-01", "fridge");
    let mut held = Vec::new();
    for host in 2..6u8 {
        for _ in 0..8 {
            if let Some(session) = tls_without_connect([127, 0, 0, host], gw.mqtt, &stolen.tls) {
                held.push(session);
            }
        }
    }
    assert!(
        held.len() >= 16,
        "only {} TLS sessions got through",
        held.len()
    );
    let started = Instant::now();
    let out = gw.mosquitto_pub(
        &fridge,
        "fridge-01",
        "devices/fridge-01/telemetry",
        r#"{"points":{"temperature_c":5.0}}"#,
    );
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        took < Duration::from_secs(1),
        "the fridge's publish took {took:?}"
    );
    backend.wait_for(
        "rxgate/v1/store-0042/devices/fridge-01/telemetry",
        1,
        Duration::from_secs(10),
    );
    // The gateway closed all but the newest two of the stolen certificate's sessions.
    let mut open = 0;
    for session in &mut held {
        session
            .sock
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut byte = [0u8; 1];
        if let Err(e) = session.read(&mut byte)
            && matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        {
            open += 1;
        }
    }
    assert!(open <= 2, "{open} sessions without CONNECT still open");
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Finding: 1 000 retained 200 KiB messages under one device's own `devices/<id>/` took the
/// gateway from 47 MB to 358 MB resident (over the unit's MemoryMax). Now local messages are at
/// most 64 KiB and a device keeps at most 32 retained messages, 256 KiB in all.
#[test]
fn one_device_cannot_exhaust_the_gateways_memory_with_retained_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = rxgate_e2e::cloud::Cloud::start(tmp.path());
    let gw = Gateway::start(&cloud.pki.gateway_config(cloud.port));
    let backend = cloud.subscribe("rxgate/v1/#");
    let pid = gw.child.as_ref().unwrap().id();
    let attacker = gw.enroll_with_sim("cabinet-01", "cabinet");
    let fridge = gw.enroll_with_sim("fridge-01", "fridge");
    let before = rss(pid);

    // The finding's attack, from one session: 1 000 retained messages of 200 KiB on distinct
    // topics (over the payload cap), then 100 of 60 KiB (over the retained allowance), each
    // acknowledged before the next.
    let credentials = rxgate_sim::cabinet::Credentials::load(&attacker).unwrap();
    let mut options =
        rxgate_sim::cabinet::mqtt_options(&gw.mqtt.to_string(), &credentials).unwrap();
    options.set_max_packet_size(300 * 1024, 300 * 1024);
    let mut peak = rss(pid);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let acked = runtime.block_on(async {
        let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
        let mut acked = 0usize;
        let mut sent = 0usize;
        let plan: Vec<(String, usize)> = (0..1000)
            .map(|n| (format!("devices/cabinet-01/hoard/big/{n}"), 200 * 1024))
            .chain((0..100).map(|n| (format!("devices/cabinet-01/hoard/small/{n}"), 60 * 1024)))
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while acked < plan.len() && tokio::time::Instant::now() < deadline {
            while sent < plan.len() && sent < acked + 8 {
                let (topic, size) = &plan[sent];
                client
                    .publish(topic, rumqttc::QoS::AtLeastOnce, true, vec![b'y'; *size])
                    .await
                    .unwrap();
                sent += 1;
            }
            match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => {
                    acked += 1;
                    if acked.is_multiple_of(50) {
                        peak = peak.max(rss(pid));
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("the attacker's session ended: {e}"),
                Err(_) => panic!("no acknowledgement for 10 s after {acked}"),
            }
        }
        acked
    });
    peak = peak.max(rss(pid));
    assert_eq!(acked, 1100, "every message acknowledged (and refused)");
    assert!(
        peak < 96 * 1024 * 1024,
        "resident memory peaked at {} MiB ({} MiB before)",
        peak / (1024 * 1024),
        before / (1024 * 1024)
    );

    // The refusals are recorded, and the gateway serves the other device.
    let trail = wait_until(Duration::from_secs(10), "the refusals recorded", || {
        let trail = gw.cli_ok(&["audit", "export"]);
        (trail.contains("retained_limit") && trail.contains("local_too_large")).then_some(trail)
    });
    assert!(!trail.contains("yyyy"), "refusals never quote the payload");
    let out = gw.mosquitto_pub(
        &fridge,
        "fridge-01",
        "devices/fridge-01/telemetry",
        r#"{"points":{"temperature_c":5.0}}"#,
    );
    assert!(out.status.success(), "{}", text(&out));
    backend.wait_for(
        "rxgate/v1/store-0042/devices/fridge-01/telemetry",
        1,
        Duration::from_secs(10),
    );
}
