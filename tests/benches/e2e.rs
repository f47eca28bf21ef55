//! End-to-end benchmark: simulated devices → rxgate (real binary) → mosquitto (the cloud).
//!
//! `cargo bench -p rxgate-e2e --bench e2e [-- --devices 8 --messages 500]`
//!
//! Each device publishes telemetry at QoS 1 as fast as its acknowledgements allow, stamping the
//! send time into the message. A backend subscribed at the cloud broker measures when each one
//! arrives. Printed: messages/s (first send to last arrival), latency percentiles (device publish
//! → cloud delivery, through the durable outbox), the gateway's peak and final RSS, and bytes the
//! gateway wrote to disk per message (`/proc/<pid>/io` write_bytes).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use rxgate_e2e::Gateway;
use rxgate_e2e::cloud::{Cloud, CloudPki};
use rxgate_sim::cabinet::{Credentials, mqtt_options};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn proc_field(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .map(|v| v.trim().trim_end_matches(" kB").trim().to_owned())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn backend_options(pki: &CloudPki, port: u16) -> MqttOptions {
    let read = |name: &str| std::fs::read(pki.dir.join(name)).expect("cloud pki file");
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&read("ca.pem")) {
        roots.add(ca.expect("ca")).expect("ca");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read("backend.pem"))
        .collect::<Result<_, _>>()
        .expect("backend cert");
    let key = PrivateKeyDer::from_pem_slice(&read("backend.key")).expect("backend key");
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("tls");
    let mut options = MqttOptions::new("bench-backend", "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    options
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let devices = arg("--devices", 8);
    let per_device = arg("--messages", 500);
    let total = devices * per_device;
    let tmp = tempfile::tempdir().expect("temp dir");
    let cloud = Cloud::start(tmp.path());
    // The benchmark measures the gateway, not a policy's rate limit: every message is allowed.
    let policy = tmp.path().join("bench-policy.toml");
    std::fs::write(&policy, "default = \"allow\"\n").expect("bench policy");
    let gw = Gateway::start(&format!(
        "{}max_inflight = 256\n[gateway]\nlog = \"warn\"\npolicy_file = \"{}\"\n",
        cloud.pki.gateway_config(cloud.port),
        policy.display()
    ));
    let pid = gw.child.as_ref().expect("gateway process").id();
    let creds: Vec<_> = (0..devices)
        .map(|i| gw.enroll_with_sim(&format!("bench-{i:03}"), "sensor"))
        .collect();
    let gateway_addr = gw.mqtt.to_string();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (write_before, rss_before) = (
        proc_field(pid, "io", "write_bytes:"),
        proc_field(pid, "status", "VmRSS:"),
    );
    let result = runtime.block_on(async move {
        // The backend.
        let (backend, mut backend_events) =
            AsyncClient::new(backend_options(&cloud.pki, cloud.port), 1024);
        backend
            .subscribe("rxgate/v1/+/devices/+/telemetry", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = backend_events.poll().await {
                break;
            }
        }
        let receiver = tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(total);
            let mut seen = HashSet::new();
            let mut last = Instant::now();
            while seen.len() < total {
                match tokio::time::timeout(Duration::from_secs(60), backend_events.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        let arrived = now_us();
                        let Ok(m) = serde_json::from_slice::<serde_json::Value>(&p.payload) else {
                            continue;
                        };
                        let id = m["id"].as_str().unwrap_or_default().to_owned();
                        if seen.insert(id) {
                            let sent =
                                m["points"]["sent_us"]["value"].as_f64().unwrap_or(0.0) as u64;
                            latencies.push(arrived.saturating_sub(sent));
                            last = Instant::now();
                        }
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => panic!("backend connection: {e}"),
                    Err(_) => panic!("no message for 60 s; got {} of {total}", seen.len()),
                }
            }
            (latencies, last)
        });

        // The devices.
        let started = Instant::now();
        let mut senders = Vec::new();
        for dir in creds {
            let addr = gateway_addr.clone();
            senders.push(tokio::spawn(async move {
                let credentials = Credentials::load(&dir).expect("credentials");
                let device = credentials.device.clone();
                let mut options = mqtt_options(&addr, &credentials).expect("options");
                options.set_inflight(32);
                let (client, mut events) = AsyncClient::new(options, 64);
                let topic = format!("devices/{device}/telemetry");
                let publisher = tokio::spawn(async move {
                    for n in 0..per_device {
                        let payload = format!(
                            r#"{{"points":{{"temperature_c":4.5,"n":{n},"sent_us":{}}}}}"#,
                            now_us()
                        );
                        client
                            .publish(&topic, QoS::AtLeastOnce, false, payload)
                            .await
                            .expect("publish");
                    }
                    client
                });
                let mut acked = 0;
                while acked < per_device {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                        Ok(_) => {}
                        Err(e) => panic!("{device}: {e}"),
                    }
                }
                let _ = publisher.await;
            }));
        }
        for sender in senders {
            sender.await.expect("device task");
        }
        let acked_all = started.elapsed();
        let (mut latencies, last) = receiver.await.expect("backend task");
        latencies.sort_unstable();
        (acked_all, last.duration_since(started), latencies)
    });
    let (acked_all, delivered_all, latencies) = result;
    let written = proc_field(pid, "io", "write_bytes:").saturating_sub(write_before);
    let rss_peak = proc_field(pid, "status", "VmHWM:");
    let rss_now = proc_field(pid, "status", "VmRSS:");
    let rate = total as f64 / delivered_all.as_secs_f64();
    println!(
        "rxgate end-to-end benchmark: {devices} devices x {per_device} messages = {total} (QoS 1, mTLS both sides)"
    );
    println!(
        "  accepted (all PUBACKs at devices): {:>8.0} msg/s",
        total as f64 / acked_all.as_secs_f64()
    );
    println!("  delivered to the cloud:            {rate:>8.0} msg/s");
    println!(
        "  latency device -> cloud (ms):      p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    println!(
        "  gateway RSS (KiB):                 before {rss_before}  peak {rss_peak}  after {rss_now}"
    );
    println!(
        "  gateway disk writes:               {written} bytes, {:.0} bytes/message",
        written as f64 / total as f64
    );
    println!(
        "{}",
        serde_json::json!({
            "devices": devices, "messages": total,
            "accepted_per_s": total as f64 / acked_all.as_secs_f64(),
            "delivered_per_s": rate,
            "p50_ms": percentile(&latencies, 0.5), "p99_ms": percentile(&latencies, 0.99),
            "rss_peak_kib": rss_peak, "disk_bytes_per_message": written as f64 / total as f64,
        })
    );
}
