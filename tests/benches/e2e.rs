//! End-to-end benchmark: simulated devices → rxgate (real binary) → mosquitto (the cloud), and
//! the same load through a mosquitto-to-mosquitto bridge in the same run, for comparison.
//!
//! `cargo bench -p rxgate-e2e --bench e2e [-- --devices 100 --messages 200 --rate 1000
//! --batch-delay-ms 500]` (500 ms is the shipped `[outbox].batch_delay`)
//!
//! Each device publishes telemetry at QoS 1 as fast as its acknowledgements allow, stamping the
//! send time into the message; with `--rate N` the devices together publish N messages a second
//! instead (each at N / devices a second, their starts spread over one period), the load the
//! outbox's bytes-per-message goal is stated for. A backend subscribed at the cloud broker measures when each one
//! arrives. Printed for each pass: messages/s (accepted: first send to the last PUBACK;
//! delivered: first send to the last arrival), latency percentiles (device publish → cloud
//! delivery), the edge process's RSS (before, peak, after), the bytes it wrote to disk per
//! message (`/proc/<pid>/io` write_bytes) and the CPU time it used per message (user + system,
//! `/proc/<pid>/stat`); then the ratios rxgate / bridge.
//!
//! The two do not promise the same thing: rxgate acknowledges a message only once the cloud
//! broker has acknowledged it (telemetry is sent on as it arrives) or it is durable in its outbox
//! (fsynced, group commit), while mosquitto acknowledges from memory and writes its persistence
//! file only at autosave or shutdown, so a power cut loses what it holds.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use rxgate_e2e::cloud::{Cloud, CloudPki};
use rxgate_e2e::{Gateway, bench_arg, cpu_seconds, proc_field};
use rxgate_sim::cabinet::{Credentials, mqtt_options};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Client options for the cloud PKI's `backend` certificate (the bridge baseline's devices use
/// it too: mosquitto cannot check a certificate's CN against the client id).
fn cloud_client_options(pki: &CloudPki, port: u16, client_id: &str) -> MqttOptions {
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
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
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

/// A point of a message as the backend sees it: a number in a device's own payload (bridge), or
/// `{"value": number, ...}` in rxgate's cloud envelope.
fn point(message: &serde_json::Value, name: &str) -> Option<f64> {
    let p = &message["points"][name];
    p.as_f64().or_else(|| p["value"].as_f64())
}

/// What one pass measured.
struct Pass {
    /// First publish until every device had all its PUBACKs.
    accepted: Duration,
    /// First publish until the backend had every message.
    delivered: Duration,
    /// Device publish → backend delivery, µs, sorted.
    latencies: Vec<u64>,
    rss_before_kib: u64,
    rss_peak_kib: u64,
    rss_after_kib: u64,
    written_bytes: u64,
    /// CPU time (user + system) the edge process used from the first publish until the
    /// backend had every message.
    cpu: Duration,
    /// The same for the cloud broker: it carries what the edge sends on, in its form.
    cloud_cpu: Duration,
}

/// Every device in `devices` publishes `per_device` QoS 1 telemetry messages on
/// `devices/<id>/telemetry` through `broker_pid`'s listener, as fast as its acknowledgements
/// allow; a backend subscribed at the cloud waits for all of them on `filter`.
/// The processes a pass measures: the edge (rxgate, or the bridge's mosquitto) and the cloud
/// broker.
#[derive(Clone, Copy)]
struct Processes {
    edge: u32,
    cloud: u32,
}

fn run_pass(
    runtime: &tokio::runtime::Runtime,
    processes: Processes,
    devices: Vec<(String, MqttOptions)>,
    backend: MqttOptions,
    filter: &'static str,
    per_device: usize,
    period: Option<Duration>,
) -> Pass {
    let total = devices.len() * per_device;
    let Processes {
        edge: broker_pid,
        cloud: cloud_pid,
    } = processes;
    let rss_before_kib = proc_field(broker_pid, "status", "VmRSS:");
    let (accepted, delivered, latencies, write_before, cpu, cloud_cpu) =
        runtime.block_on(async move {
            let (backend, mut backend_events) = AsyncClient::new(backend, 1024);
            backend
                .subscribe(filter, QoS::AtLeastOnce)
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
                    match tokio::time::timeout(Duration::from_secs(60), backend_events.poll()).await
                    {
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            let arrived = now_us();
                            let Ok(m) = serde_json::from_slice::<serde_json::Value>(&p.payload)
                            else {
                                continue;
                            };
                            let n = point(&m, "n").unwrap_or(-1.0) as i64;
                            if seen.insert((p.topic.clone(), n)) {
                                let sent = point(&m, "sent_us").unwrap_or(0.0) as u64;
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

            // Every device connects first: the store writes of a connection (status, audit) are not
            // telemetry, and are left out of the bytes written per message.
            let connected = Arc::new(tokio::sync::Barrier::new(devices.len() + 1));
            let go = Arc::new(tokio::sync::Barrier::new(devices.len() + 1));
            let mut senders = Vec::new();
            let count = devices.len() as u32;
            for (i, (device, mut options)) in devices.into_iter().enumerate() {
                // Devices at a fixed rate start a fraction of a period apart, as real ones do.
                let pace = period.map(|p| (p * i as u32 / count.max(1), p));
                let (connected, go) = (connected.clone(), go.clone());
                senders.push(tokio::spawn(async move {
                    options.set_inflight(32);
                    let (client, mut events) = AsyncClient::new(options, 64);
                    loop {
                        match events.poll().await {
                            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                            Ok(_) => {}
                            Err(e) => panic!("{device}: {e}"),
                        }
                    }
                    connected.wait().await;
                    go.wait().await;
                    let topic = format!("devices/{device}/telemetry");
                    let publisher = tokio::spawn(async move {
                        let mut ticks = pace.map(|(offset, period)| {
                            tokio::time::interval_at(tokio::time::Instant::now() + offset, period)
                        });
                        for n in 0..per_device {
                            if let Some(ticks) = ticks.as_mut() {
                                ticks.tick().await;
                            }
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
            connected.wait().await;
            // Their online statuses are committed within a batch delay; then the pass starts.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let write_before = proc_field(broker_pid, "io", "write_bytes:");
            let cpu_before = Duration::from_secs_f64(cpu_seconds(broker_pid));
            let cloud_cpu_before = Duration::from_secs_f64(cpu_seconds(cloud_pid));
            let started = Instant::now();
            go.wait().await;
            for sender in senders {
                sender.await.expect("device task");
            }
            let accepted = started.elapsed();
            let (mut latencies, last) = receiver.await.expect("backend task");
            let cpu = Duration::from_secs_f64(cpu_seconds(broker_pid)).saturating_sub(cpu_before);
            let cloud_cpu =
                Duration::from_secs_f64(cpu_seconds(cloud_pid)).saturating_sub(cloud_cpu_before);
            latencies.sort_unstable();
            (
                accepted,
                last.duration_since(started),
                latencies,
                write_before,
                cpu,
                cloud_cpu,
            )
        });
    Pass {
        accepted,
        delivered,
        latencies,
        rss_before_kib,
        rss_peak_kib: proc_field(broker_pid, "status", "VmHWM:"),
        rss_after_kib: proc_field(broker_pid, "status", "VmRSS:"),
        written_bytes: proc_field(broker_pid, "io", "write_bytes:").saturating_sub(write_before),
        cpu,
        cloud_cpu,
    }
}

/// The baseline: a local mosquitto for the devices (mutual TLS, persistence on) bridged to the
/// cloud mosquitto at QoS 1, the usual way to put a broker in a shop.
struct EdgeMosquitto {
    child: std::process::Child,
    port: u16,
}

impl EdgeMosquitto {
    fn start(dir: &std::path::Path, pki: &CloudPki, cloud_port: u16) -> EdgeMosquitto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let store = dir.join("edge-mosquitto");
        std::fs::create_dir_all(&store).expect("edge dir");
        let conf = store.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nuser root\nallow_anonymous false\nrequire_certificate true\n\
                 use_identity_as_username true\ncafile {ca}\ncertfile {broker}\nkeyfile {broker_key}\n\
                 persistence true\npersistence_location {store}/\nmax_inflight_messages 100\n\
                 max_queued_messages 100000\nlog_dest stderr\nlog_type error\nlog_type warning\n\
                 connection cloud\naddress 127.0.0.1:{cloud_port}\nbridge_protocol_version mqttv311\n\
                 bridge_cafile {ca}\nbridge_certfile {gateway}\nbridge_keyfile {gateway_key}\n\
                 remote_clientid edge-bridge\ncleansession false\n\
                 topic +/telemetry out 1 devices/ rxgate/v1/bridge/devices/\n",
                ca = pki.path("ca.pem"),
                broker = pki.path("broker.pem"),
                broker_key = pki.path("broker.key"),
                gateway = pki.path("gateway.pem"),
                gateway_key = pki.path("gateway.key"),
                store = store.display(),
            ),
        )
        .expect("edge mosquitto.conf");
        let child = std::process::Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            // Devices that end their session by closing the socket are logged as TLS errors.
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start mosquitto (Debian package mosquitto)");
        rxgate_e2e::wait_until(Duration::from_secs(10), "edge mosquitto to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        EdgeMosquitto { child, port }
    }
}

impl Drop for EdgeMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn report(name: &str, pass: &Pass, total: usize) -> serde_json::Value {
    let accepted = total as f64 / pass.accepted.as_secs_f64();
    let delivered = total as f64 / pass.delivered.as_secs_f64();
    let l = &pass.latencies;
    println!("{name}");
    println!("  accepted (all PUBACKs at devices): {accepted:>8.0} msg/s");
    println!("  delivered to the cloud:            {delivered:>8.0} msg/s");
    println!(
        "  latency device -> cloud (ms):      p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        percentile(l, 0.5),
        percentile(l, 0.9),
        percentile(l, 0.99),
        percentile(l, 1.0)
    );
    println!(
        "  RSS (KiB):                         before {}  peak {}  after {}",
        pass.rss_before_kib, pass.rss_peak_kib, pass.rss_after_kib
    );
    println!(
        "  disk writes:                       {} bytes, {:.0} bytes/message",
        pass.written_bytes,
        pass.written_bytes as f64 / total as f64
    );
    let cpu_us = pass.cpu.as_secs_f64() * 1e6 / total as f64;
    println!(
        "  CPU (user + system):               {:.2} s, {cpu_us:.1} us/message (cloud broker: {:.1} us/message)",
        pass.cpu.as_secs_f64(),
        pass.cloud_cpu.as_secs_f64() * 1e6 / total as f64
    );
    serde_json::json!({
        "accepted_per_s": accepted,
        "delivered_per_s": delivered,
        "p50_ms": percentile(l, 0.5), "p99_ms": percentile(l, 0.99),
        "rss_peak_kib": pass.rss_peak_kib,
        "disk_bytes_per_message": pass.written_bytes as f64 / total as f64,
        "cpu_us_per_message": cpu_us,
    })
}

fn main() {
    let devices = bench_arg("--devices", 100) as usize;
    let per_device = bench_arg("--messages", 200) as usize;
    let rate = bench_arg("--rate", 0);
    // Each device's period between two messages, when the devices together publish `rate`/s.
    let period = (rate > 0).then(|| Duration::from_secs(devices as u64) / rate as u32);
    let total = devices * per_device;
    let tmp = tempfile::tempdir().expect("temp dir");
    let cloud = Cloud::start(tmp.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // rxgate, with the shipped outbox settings. The benchmark measures the gateway, not a
    // policy's rate limit: every message is allowed. Enrollment and connection limits are
    // raised because every simulated device comes from 127.0.0.1.
    let policy = tmp.path().join("bench-policy.toml");
    std::fs::write(&policy, "default = \"allow\"\n").expect("bench policy");
    // Logging at `warn` as the config says: the harness's default (`debug`, a line per message
    // into a log file in the data directory) would be counted as the gateway's disk writes.
    // The test harness's config commits every 5 ms; a bench measures the shipped 500 ms.
    let mut gw = Gateway::init(&format!(
        "{}max_inflight = 256\n[gateway]\nlog = \"warn\"\npolicy_file = \"{}\"\n\
         [enroll]\nrate_per_minute = 100000\nrate_burst = 1000\n\
         [mqtt]\nmax_connections_per_source = 512\n[outbox]\nbatch_delay = \"{}ms\"\n",
        cloud.pki.gateway_config(cloud.port),
        policy.display(),
        bench_arg("--batch-delay-ms", 500)
    ));
    gw.spawn_logging("warn");
    let gateway_pid = gw.child.as_ref().expect("gateway process").id();
    // Enrollment over EST, four installers at a time: token creation (`rxgate token create`)
    // and `rxgate-sim enroll` (key generation, CSR, HTTPS, certificate check) per device.
    let enroll_started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut enrolled: Vec<(usize, std::path::PathBuf)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= devices {
                            return mine;
                        }
                        mine.push((i, gw.enroll_with_sim(&format!("bench-{i:03}"), "sensor")));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("enrollment worker"))
            .collect()
    });
    let enroll_time = enroll_started.elapsed();
    enrolled.sort();
    let gateway_devices: Vec<_> = enrolled
        .into_iter()
        .map(|(_, dir)| {
            let credentials = Credentials::load(&dir).expect("credentials");
            let options = mqtt_options(&gw.mqtt.to_string(), &credentials).expect("options");
            (credentials.device, options)
        })
        .collect();
    let cloud_pid = cloud.pid().expect("cloud broker running");
    let rxgate = run_pass(
        &runtime,
        Processes {
            edge: gateway_pid,
            cloud: cloud_pid,
        },
        gateway_devices,
        cloud_client_options(&cloud.pki, cloud.port, "bench-backend-rxgate"),
        "rxgate/v1/store-0042/devices/+/telemetry",
        per_device,
        period,
    );
    drop(gw);

    // The same load through a mosquitto-to-mosquitto bridge, in the same run.
    let edge = EdgeMosquitto::start(tmp.path(), &cloud.pki, cloud.port);
    let bridge_devices: Vec<_> = (0..devices)
        .map(|i| {
            let device = format!("bench-{i:03}");
            let options = cloud_client_options(&cloud.pki, edge.port, &device);
            (device, options)
        })
        .collect();
    let bridge = run_pass(
        &runtime,
        Processes {
            edge: edge.child.id(),
            cloud: cloud_pid,
        },
        bridge_devices,
        cloud_client_options(&cloud.pki, cloud.port, "bench-backend-bridge"),
        "rxgate/v1/bridge/devices/+/telemetry",
        per_device,
        period,
    );
    drop(edge);

    let pace = match rate {
        0 => "as fast as acknowledged".to_owned(),
        r => format!("{r} msg/s in all"),
    };
    println!(
        "end-to-end benchmark: {devices} devices x {per_device} messages = {total}, {pace} (QoS 1, mutual TLS on both hops)"
    );
    println!(
        "enrollment: {devices} devices in {:.2} s, {:.1} enrollments/s (token + EST simpleenroll, 4 at a time)",
        enroll_time.as_secs_f64(),
        devices as f64 / enroll_time.as_secs_f64()
    );
    let rx = report(
        "rxgate (each message in the cloud or durable in the outbox before its PUBACK)",
        &rxgate,
        total,
    );
    let br = report(
        "mosquitto bridge (acknowledges from memory; persistence only at autosave)",
        &bridge,
        total,
    );
    let ratio = |key: &str| rx[key].as_f64().unwrap_or(0.0) / br[key].as_f64().unwrap_or(1.0);
    println!(
        "rxgate / bridge: delivered msg/s x{:.2}, p50 x{:.2}, p99 x{:.2}, peak RSS x{:.2}, CPU/message x{:.2}",
        ratio("delivered_per_s"),
        ratio("p50_ms"),
        ratio("p99_ms"),
        ratio("rss_peak_kib"),
        ratio("cpu_us_per_message")
    );
    println!(
        "{}",
        serde_json::json!({
            "devices": devices, "messages": total, "rate": rate,
            "enrollments_per_s": devices as f64 / enroll_time.as_secs_f64(),
            "rxgate": rx, "bridge": br,
        })
    );
}
