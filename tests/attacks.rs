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

/// The embedded broker keeps an in-memory log for every topic and subscription filter it has
/// seen and never drops one, so a device publishing to ever new topics under its own
/// `devices/<id>/` grew the gateway without bound. Now one device may use 32 of them; beyond that
/// its publishes and subscriptions to new ones are refused (`topic_limit`), the ones it already
/// uses still work, and memory stays flat.
#[test]
fn one_device_cannot_exhaust_the_gateways_memory_with_ever_new_topics() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = rxgate_e2e::cloud::Cloud::start(tmp.path());
    let gw = Gateway::start(&cloud.pki.gateway_config(cloud.port));
    let backend = cloud.subscribe("rxgate/v1/#");
    let pid = gw.child.as_ref().unwrap().id();
    let attacker = gw.enroll_with_sim("cabinet-01", "cabinet");
    let fridge = gw.enroll_with_sim("fridge-01", "fridge");

    let credentials = rxgate_sim::cabinet::Credentials::load(&attacker).unwrap();
    let options = rxgate_sim::cabinet::mqtt_options(&gw.mqtt.to_string(), &credentials).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let topics = 4000usize;
    let (before, peak, suback) = runtime.block_on(async {
        // Room for every request in flight: a full request queue would block `publish` while
        // nothing polls the event loop.
        let (client, mut events) = rumqttc::AsyncClient::new(options, 64);
        // Subscribed to its own first topic, as a device listening for its commands.
        client
            .subscribe("devices/cabinet-01/hoard/0", rumqttc::QoS::AtMostOnce)
            .await
            .unwrap();
        let mut before = 0;
        let mut peak = 0;
        let mut acked = 0usize;
        let mut sent = 0usize;
        let mut suback = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while acked < topics && tokio::time::Instant::now() < deadline {
            while sent < topics && sent < acked + 16 {
                let topic = format!("devices/cabinet-01/hoard/{sent}");
                client
                    .publish(topic, rumqttc::QoS::AtLeastOnce, false, vec![b'z'; 64])
                    .await
                    .unwrap();
                sent += 1;
            }
            match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => {
                    acked += 1;
                    if acked == 100 {
                        before = rss(pid);
                    }
                    if acked.is_multiple_of(200) {
                        peak = peak.max(rss(pid));
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("the attacker's session ended: {e}"),
                Err(_) => panic!("no acknowledgement for 10 s after {acked}"),
            }
        }
        assert_eq!(
            acked, topics,
            "every message acknowledged (and, past the limit, refused)"
        );
        // A subscription to yet another filter is refused too.
        client
            .subscribe("devices/cabinet-01/more/#", rumqttc::QoS::AtMostOnce)
            .await
            .unwrap();
        while suback.is_none() {
            match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
                // The first subscription's SUBACK came long before the last PUBACK.
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack)))) => {
                    suback = Some(ack.return_codes)
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("the attacker's session ended: {e}"),
                Err(_) => panic!("no SUBACK for 10 s"),
            }
        }
        // The topics it already uses still work: its subscription to its first one delivers.
        client
            .publish(
                "devices/cabinet-01/hoard/0",
                rumqttc::QoS::AtLeastOnce,
                false,
                "still here",
            )
            .await
            .unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))))
                    if p.payload.as_ref() == b"still here" =>
                {
                    break;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("the attacker's session ended: {e}"),
                Err(_) => panic!("a topic in use was not delivered"),
            }
        }
        (before, peak.max(rss(pid)), suback.unwrap())
    });
    assert_eq!(
        suback,
        vec![rumqttc::SubscribeReasonCode::Failure],
        "a filter past the limit is refused"
    );
    assert!(
        peak < before + 16 * 1024 * 1024,
        "resident memory grew from {} MiB to {} MiB over {topics} topics",
        before / (1024 * 1024),
        peak / (1024 * 1024)
    );
    let trail = wait_until(Duration::from_secs(10), "the refusals recorded", || {
        let trail = gw.cli_ok(&["audit", "export"]);
        trail.contains("topic_limit").then_some(trail)
    });
    assert!(
        trail.contains("devices/cabinet-01/hoard/32"),
        "the first topic past the limit is named"
    );
    // And the gateway serves the other device.
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

/// `<name>.key` and `<name>.csr.b64` (base64 DER PKCS#10, P-256, subject CN `cn`) in `dir`.
fn csr_b64(dir: &std::path::Path, name: &str, cn: &str) -> std::path::PathBuf {
    let (key, der) = (format!("{name}.key"), format!("{name}.csr.der"));
    rxgate_e2e::openssl(
        dir,
        &[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-keyout",
            &key,
            "-subj",
            &format!("/CN={cn}"),
            "-outform",
            "DER",
            "-out",
            &der,
        ],
    );
    let b64 = dir.join(format!("{name}.csr.b64"));
    rxgate_e2e::openssl(dir, &["base64", "-in", &der, "-out", b64.to_str().unwrap()]);
    b64
}

/// POSTs `body` to EST `endpoint` from the loopback address `source` with extra curl `args`
/// (credentials, client certificate).
fn est_post(
    gw: &Gateway,
    source: &str,
    endpoint: &str,
    args: &[&str],
    body: &std::path::Path,
) -> rxgate_e2e::Http {
    let ca = gw.ca_cert().display().to_string();
    let data = format!("@{}", body.display());
    let url = format!("{}/.well-known/est/{endpoint}", gw.est_url());
    let mut all = vec![
        "--interface",
        source,
        "--cacert",
        &ca,
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        &data,
    ];
    all.extend_from_slice(args);
    all.push(&url);
    curl(gw.dir.path(), &all)
}

/// The audit trail of a stopped gateway (the CLI reads the store itself), entries of `kind`.
fn audit_entries(gw: &Gateway, kind: &str) -> Vec<serde_json::Value> {
    let all: serde_json::Value = serde_json::from_str(&gw.cli_ok(&["audit", "export"])).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

/// Finding: each malformed `simpleenroll` wrote one audit entry of its own, with the device id
/// it merely claimed as the actor: 120 requests, 120 entries blamed on a real fridge. Now such
/// refusals go to the folding refusal log as `unauthenticated`, the claimed id in the detail:
/// one entry per second at most, and after ten an hour one summary, every refusal counted.
#[test]
fn malformed_enrollments_claiming_a_real_device_fold_into_a_few_entries_none_blamed_on_it() {
    let mut gw = Gateway::start("[enroll]\nrate_per_minute = 6000\nrate_burst = 200\n");
    gw.enroll_with_sim("fridge-01", "fridge");
    std::fs::write(gw.path("bad.b64"), "this is not base64 !!!\n").unwrap();
    // 120 requests over kept-alive connections: curl's URL glob repeats the request.
    let started = Instant::now();
    let out = run(Command::new("curl")
        .args(["-sS", "--max-time", "60", "--cacert"])
        .arg(gw.ca_cert())
        .args([
            "-u",
            "fridge-01:rxg_anything",
            "-H",
            "Content-Type: application/pkcs10",
        ])
        .args([
            "--data-binary",
            "@bad.b64",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\n",
        ])
        .arg(format!(
            "{}/.well-known/est/simpleenroll?n=[1-120]",
            gw.est_url()
        ))
        .current_dir(gw.dir.path()));
    let took = started.elapsed();
    let statuses = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        statuses.lines().filter(|s| *s == "400").count(),
        120,
        "{}",
        text(&out)
    );
    assert!(gw.stop(), "{}", gw.logs());

    let refused = audit_entries(&gw, "enroll.refused");
    let blamed: Vec<_> = refused
        .iter()
        .filter(|e| e["actor"] == "fridge-01" || e["device"] == "fridge-01")
        .collect();
    assert!(
        blamed.is_empty(),
        "{} of {} entries blamed on the fridge, the first: {:?}",
        blamed.len(),
        refused.len(),
        blamed.first()
    );
    assert!(
        refused.iter().all(|e| e["actor"] == "unauthenticated"
            && e["detail"]["claimed_device"] == "fridge-01"
            && e["detail"]["class"] == "bad_csr"
            && e["source"] == "127.0.0.1"),
        "{refused:#?}"
    );
    let counted: u64 = refused
        .iter()
        .map(|e| e["detail"]["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(counted, 120, "every refusal counted: {refused:#?}");
    // One entry per second of the flood, at most ten before the rest is held for one summary.
    let bound = (took.as_secs() as usize + 2).min(11);
    assert!(
        refused.len() <= bound,
        "{} entries for 120 refusals in {took:?}, more than {bound}",
        refused.len()
    );
}

/// Copies the credentials folder `from` (device.crt, device.key, ca.crt) to `to`.
fn copy_credentials(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in ["device.crt", "device.key", "ca.crt"] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

/// Finding: a certificate an earlier renewal had replaced renewed again (200), so a stolen key
/// outlived the device's own renewal. Now only the newest certificate is accepted once the
/// replaced one's grace (`[enroll].superseded_grace`) is over, for renewal and on the MQTT
/// listener alike; within the grace the device may still be switching.
#[test]
fn a_certificate_replaced_by_a_renewal_connects_only_within_the_grace_then_is_refused_everywhere() {
    const GRACE: Duration = Duration::from_secs(4);
    let gw = Gateway::start("[enroll]\nsuperseded_grace = \"4s\"\n");
    let current = gw.enroll_with_sim("fridge-01", "fridge");
    let old = gw.path("old-cert");
    copy_credentials(&current, &old);
    let renew = run(Command::new(rxgate_e2e::bin("rxgate-sim"))
        .args(["renew", "--est", &gw.est_url(), "--dir"])
        .arg(&current));
    let renewed_at = Instant::now();
    assert!(renew.status.success(), "{}", text(&renew));
    let telemetry = r#"{"points":{"temperature_c":5.0}}"#;
    let topic = "devices/fridge-01/telemetry";

    let within = gw.mosquitto_pub(&old, "fridge-01", topic, telemetry);
    assert!(
        renewed_at.elapsed() < GRACE,
        "the machine is too slow for this test's grace"
    );
    assert!(
        within.status.success(),
        "within the grace: {}",
        text(&within)
    );

    wait_until(GRACE * 3, "the grace to end", || {
        (renewed_at.elapsed() > GRACE + Duration::from_millis(300)).then_some(())
    });
    let after = gw.mosquitto_pub(&old, "fridge-01", topic, telemetry);
    assert!(!after.status.success(), "after the grace: {}", text(&after));
    let csr = csr_b64(gw.dir.path(), "again", "fridge-01");
    let (cert, key) = (old.join("device.crt"), old.join("device.key"));
    let refused = est_post(
        &gw,
        "127.0.0.1",
        "simplereenroll",
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        &csr,
    );
    assert_eq!(refused.status, 403, "{}", refused.body_text());
    assert!(
        refused
            .body_text()
            .contains("was replaced by a renewal and is no longer accepted"),
        "{}",
        refused.body_text()
    );
    // The newest certificate goes on working.
    let newest = gw.mosquitto_pub(&current, "fridge-01", topic, telemetry);
    assert!(newest.status.success(), "{}", text(&newest));
    let trail = wait_until(Duration::from_secs(10), "the refusals recorded", || {
        let trail = gw.cli_ok(&["audit", "export"]);
        (trail.contains("certificate_refused") && trail.contains("certificate_superseded"))
            .then_some(trail)
    });
    assert!(trail.contains("replaced by a renewal"), "{trail}");
}

/// Finding: five wrong guesses from anyone burnt a device's pending token. Now wrong tokens are
/// counted per source address: the guesser is locked out, the installer elsewhere enrolls.
#[test]
fn five_wrong_tokens_from_one_host_do_not_stop_the_installer_at_another_from_enrolling() {
    let gw = Gateway::start("");
    let token = gw.token("cab-1", "cabinet");
    let csr = csr_b64(gw.dir.path(), "cab-1", "cab-1");
    for guess in 0..6 {
        let wrong = est_post(
            &gw,
            "127.0.0.2",
            "simpleenroll",
            &["-u", &format!("cab-1:rxg_guess{guess}")],
            &csr,
        );
        assert_eq!(wrong.status, 401, "{}", wrong.body_text());
    }
    // The guesser's address is locked out: even the right token is not looked at from it.
    let locked = est_post(
        &gw,
        "127.0.0.2",
        "simpleenroll",
        &["-u", &format!("cab-1:{token}")],
        &csr,
    );
    assert_eq!(locked.status, 401, "{}", locked.body_text());
    let installer = est_post(
        &gw,
        "127.0.0.3",
        "simpleenroll",
        &["-u", &format!("cab-1:{token}")],
        &csr,
    );
    assert_eq!(installer.status, 200, "{}", installer.body_text());
    let tokens: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["token", "list", "--json"])).unwrap();
    assert_eq!(tokens[0]["state"], "used");
    // The sixth guess came while its address was locked out: refused without being checked.
    assert_eq!(tokens[0]["failed_attempts"], 5);
}

/// Finding: the 401 to `simpleenroll` said whether a token existed, was used or was burnt. Now
/// every 401 there has the same body; only the audit trail keeps the reason.
#[test]
fn every_refused_simpleenroll_gets_the_same_401_body_and_the_audit_trail_keeps_each_reason() {
    let mut gw = Gateway::start("[enroll]\nmax_failed_attempts = 1\nburn_after_failed = 2\n");
    let dir = gw.dir.path().to_owned();
    let csr = |device: &str| csr_b64(&dir, device, device);
    let basic = |device: &str, token: &str| format!("{device}:{token}");
    let mut refused: Vec<(&str, rxgate_e2e::Http)> = Vec::new();

    let pending = gw.token("fridge-02", "fridge");
    let fridge_csr = csr("fridge-02");
    refused.push((
        "no credentials",
        est_post(&gw, "127.0.0.1", "simpleenroll", &[], &fridge_csr),
    ));
    refused.push((
        "malformed credentials",
        est_post(
            &gw,
            "127.0.0.1",
            "simpleenroll",
            &["-H", "Authorization: Basic !!!"],
            &fridge_csr,
        ),
    ));
    refused.push((
        "not a device id",
        est_post(
            &gw,
            "127.0.0.1",
            "simpleenroll",
            &["-u", "../etc:rxg_x"],
            &fridge_csr,
        ),
    ));
    refused.push((
        "unknown device",
        est_post(
            &gw,
            "127.0.0.1",
            "simpleenroll",
            &["-u", &basic("ghost-01", "rxg_x")],
            &csr("ghost-01"),
        ),
    ));
    refused.push((
        "wrong token",
        est_post(
            &gw,
            "127.0.0.1",
            "simpleenroll",
            &["-u", &basic("fridge-02", "rxg_wrong")],
            &fridge_csr,
        ),
    ));
    refused.push((
        "locked-out source",
        est_post(
            &gw,
            "127.0.0.1",
            "simpleenroll",
            &["-u", &basic("fridge-02", &pending)],
            &fridge_csr,
        ),
    ));
    let burnt_csr = csr("fridge-03");
    let burnt = gw.token("fridge-03", "fridge");
    for source in ["127.0.0.4", "127.0.0.5"] {
        let guess = est_post(
            &gw,
            source,
            "simpleenroll",
            &["-u", &basic("fridge-03", "rxg_g")],
            &burnt_csr,
        );
        assert_eq!(guess.status, 401, "{}", guess.body_text());
    }
    refused.push((
        "burnt token",
        est_post(
            &gw,
            "127.0.0.6",
            "simpleenroll",
            &["-u", &basic("fridge-03", &burnt)],
            &burnt_csr,
        ),
    ));
    let used_csr = csr("fridge-04");
    let used = gw.token("fridge-04", "fridge");
    let first = est_post(
        &gw,
        "127.0.0.1",
        "simpleenroll",
        &["-u", &basic("fridge-04", &used)],
        &used_csr,
    );
    assert_eq!(first.status, 200, "{}", first.body_text());
    refused.push((
        "used token",
        est_post(
            &gw,
            "127.0.0.1",
            "simpleenroll",
            &["-u", &basic("fridge-04", &used)],
            &used_csr,
        ),
    ));
    gw.cli_ok(&["device", "revoke", "fridge-04", "--reason", "stolen"]);
    refused.push((
        "revoked device, no token",
        est_post(
            &gw,
            "127.0.0.1",
            "simpleenroll",
            &["-u", &basic("fridge-04", "rxg_x")],
            &used_csr,
        ),
    ));
    let short = gw.cli_ok(&[
        "token",
        "create",
        "--device",
        "fridge-05",
        "--kind",
        "fridge",
        "--ttl",
        "1s",
    ]);
    let expires = Instant::now() + Duration::from_millis(1100);
    let short_csr = csr("fridge-05");
    wait_until(Duration::from_secs(5), "the token to expire", || {
        (Instant::now() > expires).then_some(())
    });
    refused.push((
        "expired token",
        est_post(
            &gw,
            "127.0.0.1",
            "simpleenroll",
            &["-u", &basic("fridge-05", short.trim())],
            &short_csr,
        ),
    ));

    let (_, reference) = &refused[0];
    for (case, answer) in &refused {
        assert_eq!(answer.status, 401, "{case}: {}", answer.body_text());
        assert_eq!(
            answer.body,
            reference.body,
            "{case}: {:?} differs from {:?}",
            answer.body_text(),
            reference.body_text()
        );
        assert!(
            answer.headers.contains("www-authenticate: Basic"),
            "{case}: {}",
            answer.headers
        );
    }
    assert!(
        reference
            .body_text()
            .contains("do not match a pending enrollment"),
        "{}",
        reference.body_text()
    );

    assert!(gw.stop(), "{}", gw.logs());
    let trail = audit_entries(&gw, "enroll.refused");
    let classes: std::collections::BTreeSet<&str> = trail
        .iter()
        .filter(|e| e["actor"] == "unauthenticated")
        .filter_map(|e| e["detail"]["class"].as_str())
        .collect();
    for class in [
        "malformed_auth",
        "invalid_device_id",
        "no_token",
        "wrong_token",
        "source_locked_out",
        "token_burnt",
        "token_used",
        "token_expired",
        "device_revoked",
    ] {
        assert!(classes.contains(class), "no {class} in {classes:?}");
    }
    let reason_of = |claimed: &str, class: &str| {
        trail
            .iter()
            .find(|e| e["detail"]["claimed_device"] == claimed && e["detail"]["class"] == class)
            .and_then(|e| e["detail"]["reason"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(reason_of("fridge-04", "token_used").contains("already used"));
    assert!(reason_of("fridge-03", "token_burnt").contains("burnt after 2 failed attempts"));
    assert!(reason_of("fridge-02", "source_locked_out").contains("127.0.0.1 is locked out"));
    assert!(reason_of("ghost-01", "no_token").contains("no enrollment token exists"));
    assert_eq!(audit_entries(&gw, "token.burnt").len(), 1);
}

/// Alerts as `rxgate alerts list --all --json` gives them.
fn alerts(gw: &Gateway) -> Vec<serde_json::Value> {
    serde_json::from_str(&gw.cli_ok(&["alerts", "list", "--all", "--json"])).unwrap()
}

/// Finding: each address with 10 refused TLS connections raised its own alert (20 addresses, 20
/// alerts; with IPv6, unlimited). Now the device listener raises one flag per window for all
/// sources together, counting them, and the alert it becomes ends up with the window's count.
#[test]
fn twenty_addresses_refused_ten_times_each_raise_one_alert_that_counts_them_all() {
    let mut gw = Gateway::init("");
    gw.spawn_logging("info");
    let started = Instant::now();
    // Round-robin, so every source is counted before the first reaches the threshold.
    for _round in 0..10 {
        for host in 2..=21u8 {
            let mut tcp = rxgate_e2e::tcp_from([127, 0, 0, host], gw.mqtt).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            let mut rest = Vec::new();
            let _ = tcp.read_to_end(&mut rest);
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "200 refused connections took {:?}",
        started.elapsed()
    );
    let flagged = wait_until(
        Duration::from_secs(10),
        "the refused-connection alert",
        || {
            let flagged: Vec<serde_json::Value> = alerts(&gw)
                .into_iter()
                .filter(|a| a["flag"] == "repeated_refused_connections")
                .collect();
            (!flagged.is_empty()).then_some(flagged)
        },
    );
    assert_eq!(flagged.len(), 1, "one alert for the listener: {flagged:#?}");
    assert_eq!(flagged[0]["device"], "gateway");
    assert_eq!(flagged[0]["detail"]["listener"], "mqtt");
    assert_eq!(flagged[0]["detail"]["sources"], 20, "{:#}", flagged[0]);
    // Round-robin: the hundredth refusal (five from each source) made the window loud. The
    // window's whole count follows when it closes, five minutes on (unit-tested in
    // audit::refusals).
    assert_eq!(flagged[0]["detail"]["refused"], 100, "{:#}", flagged[0]);
    assert_eq!(flagged[0]["occurrences"], 1, "{:#}", flagged[0]);
}

/// Finding: every rate-limited message wrote an INFO line (2 400 lines in 5 s under a flood).
/// Now the log says what the audit trail says: one line per folded entry, each with its count.
#[test]
fn a_device_held_to_its_rate_limit_costs_the_log_a_few_lines_that_count_every_refusal() {
    let mut gw = Gateway::init("");
    gw.spawn_logging("info");
    let creds = gw.enroll_with_sim("sensor-flood", "sensor");
    // 3 000 telemetry messages as fast as the device's PUBACKs come (QoS 1, so none is lost on
    // the way), far over the default limit (50 a second, bursts of 500): most are refused.
    let lines: String = (0..3000)
        .map(|i| format!("{{\"points\":{{\"x\":{i}}}}}\n"))
        .collect();
    let mut publisher = gw
        .device_client("mosquitto_pub", &creds, "sensor-flood")
        .args(["-t", "devices/sensor-flood/telemetry", "-l", "-q", "1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    publisher
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = publisher.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let refused_metric = || -> u64 {
        let metrics = curl(gw.dir.path(), &[&format!("http://{}/metrics", gw.metrics)]).body_text();
        metrics
            .lines()
            .filter(|l| l.starts_with("rxgate_refusals_total{") && l.contains("rate_limited"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let refused = wait_until(Duration::from_secs(10), "the flood to be counted", || {
        let n = refused_metric();
        (n >= 1000).then_some(n)
    });
    std::thread::sleep(Duration::from_secs(2));
    let refused = refused.max(refused_metric());
    assert!(gw.stop(), "the gateway stops cleanly:\n{}", gw.logs());
    let logs = gw.logs();
    let refusal_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("Refused.") && l.contains("rate_limited"))
        .collect();
    assert!(
        !refusal_lines.is_empty() && refusal_lines.len() <= 12,
        "{} log lines for {refused} refusals:\n{}",
        refusal_lines.len(),
        refusal_lines.join("\n")
    );
    let counted: u64 = refusal_lines
        .iter()
        .filter_map(|l| {
            let at = l.find("count=")? + "count=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    eprintln!(
        "{refused} rate-limited refusals, {} log lines counting {counted}",
        refusal_lines.len()
    );
    assert_eq!(
        counted,
        refused,
        "the log lines count every refusal:\n{}",
        refusal_lines.join("\n")
    );
}

/// A session already open with a certificate that a renewal then replaces is served through the
/// grace (the device may still be switching over) and dropped when the grace ends: a stolen key
/// connected before the renewal does not keep its session.
#[test]
fn a_session_open_with_a_certificate_a_renewal_replaces_is_dropped_when_the_grace_ends() {
    const GRACE: Duration = Duration::from_secs(4);
    let mut gw = Gateway::init("[enroll]\nsuperseded_grace = \"4s\"\n");
    gw.spawn_logging("info");
    let current = gw.enroll_with_sim("fridge-01", "fridge");
    let old = gw.path("old-cert");
    copy_credentials(&current, &old);
    let mut session = gw
        .device_client("mosquitto_sub", &old, "fridge-01")
        .args(["-t", "devices/fridge-01/rejected", "-q", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the old certificate's session",
        || gw.logs().contains("Device connected.").then_some(()),
    );
    let renew = run(Command::new(rxgate_e2e::bin("rxgate-sim"))
        .args(["renew", "--est", &gw.est_url(), "--dir"])
        .arg(&current));
    let renewed_at = Instant::now();
    assert!(renew.status.success(), "{}", text(&renew));
    const DROPPED: &str = "certificate replaced by a renewal; its grace is over";
    std::thread::sleep(GRACE / 2);
    assert!(
        !gw.logs().contains(DROPPED),
        "dropped within the grace:\n{}",
        gw.logs()
    );
    wait_until(GRACE * 2, "the session to be dropped", || {
        gw.logs().contains(DROPPED).then_some(())
    });
    let dropped_after = renewed_at.elapsed();
    let _ = session.kill();
    let _ = session.wait();
    assert!(
        dropped_after >= GRACE - Duration::from_millis(500),
        "dropped {dropped_after:?} after the renewal, before the grace"
    );
    // Its reconnection, if it tried one, was refused; the newest certificate still connects.
    let topic = "devices/fridge-01/telemetry";
    let newest = gw.mosquitto_pub(
        &current,
        "fridge-01",
        topic,
        r#"{"points":{"temperature_c":5.0}}"#,
    );
    assert!(newest.status.success(), "{}", text(&newest));
}

/// Finding: one cabinet sent 1 000 valid CII overrides without a witness after hours in 3.3 s:
/// 1 000 audit entries and 2 000 unresolved alerts, each sent on every channel. Now flags fold
/// into one open alert per (device, flag) that counts its occurrences, and the pharmacist gets an
/// e-mail per flag, not per event; the audit trail still holds every accepted event once.
#[test]
fn a_cabinet_flooding_unwitnessed_overrides_raises_one_alert_and_one_e_mail_per_flag() {
    const EVENTS: usize = 1000;
    let tmp = tempfile::tempdir().unwrap();
    let mail_dir = tmp.path().join("mail");
    let (_smtp, smtp_port) = rxgate_e2e::smtp_sink(0, &mail_dir);
    // The default policy, its event rate limit raised out of the way so all 1 000 are accepted
    // (with it, the cabinet would be held to 2 a second and resend the rest later).
    let policy = rxgate_e2e::policy_without_event_limit(tmp.path());
    let mut gw = Gateway::init(&format!(
        "[gateway]\npolicy_file = \"{}\"\n\
         [alerts.email]\nsmtp_url = \"smtp://127.0.0.1:{smtp_port}\"\nfrom = \"rxgate <rxgate@pharmacy.example>\"\n\
         to = [\"duty@pharmacy.example\"]\ntimeout = \"5s\"\n",
        policy.display()
    ));
    gw.spawn_logging("info");
    let creds = gw.enroll_with_sim("cabinet-01", "cabinet");
    let events: String = (0..EVENTS)
        .map(|n| {
            format!(
                r#"{{"type":"access","action":"override","user":"nurse-7","drawer":"C1","ndc":"0409-1234-01","item":"Morphine 10mg","schedule":"CII","quantity":1,"auth":"badge","ts":"2026-05-01T08:00:00Z","event_id":"flood-{n}"}}"#
            ) + "\n"
        })
        .collect();
    let mut cabinet = gw
        .device_client("mosquitto_pub", &creds, "cabinet-01")
        .args(["-t", "devices/cabinet-01/events", "-l", "-q", "1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    cabinet
        .stdin
        .take()
        .unwrap()
        .write_all(events.as_bytes())
        .unwrap();
    let out = cabinet.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Every event acknowledged is in the audit trail, once.
    let accepted = wait_until(Duration::from_secs(30), "every event audited", || {
        let entries = audit_entries(&gw, "access.event");
        (entries.len() >= EVENTS).then_some(entries)
    });
    let ids: std::collections::BTreeSet<String> = accepted
        .iter()
        .filter_map(|e| e["detail"]["event"]["event_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(accepted.len(), EVENTS, "each accepted event audited once");
    assert_eq!(
        ids.len(),
        EVENTS,
        "every event id audited: {} distinct",
        ids.len()
    );

    // One open alert per flag, counting every event that raised it.
    let flags = wait_until(Duration::from_secs(20), "the flags to fold", || {
        let flags: Vec<serde_json::Value> = alerts(&gw)
            .into_iter()
            .filter(|a| a["kind"] == "access_flag")
            .collect();
        flags
            .iter()
            .any(|a| a["flag"] == "override_without_witness" && a["occurrences"] == EVENTS)
            .then_some(flags)
    });
    let names: std::collections::BTreeSet<&str> =
        flags.iter().filter_map(|a| a["flag"].as_str()).collect();
    assert_eq!(names.len(), flags.len(), "one alert per flag: {flags:#?}");
    assert!(flags.len() <= 3, "{flags:#?}");
    for alert in &flags {
        assert_eq!(alert["occurrences"], EVENTS, "{alert:#}");
    }
    // An e-mail per flag, sent when it was raised; the occurrences after it wait for the
    // digest (an hour by default).
    let mails = rxgate_e2e::wait_for_mails(&mail_dir, flags.len(), Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    let mails = rxgate_e2e::mails(&mail_dir).len().max(mails.len());
    assert_eq!(mails, flags.len(), "e-mails for {} flags", flags.len());
    assert!(gw.is_running(), "{}", gw.logs());
}
