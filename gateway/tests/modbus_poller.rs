//! The Modbus poller, in process, against real Modbus servers on loopback: the simulated fridge
//! (TCP, RTU over a pseudo-terminal, TLS), pymodbus (an implementation nobody here wrote), and
//! a hand-written server that stops answering, to prove timeouts and recovery.
//!
//! What the poller submits is taken from an `Ingest::channel` and acknowledged here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use rxgate::clock::SystemClock;
use rxgate::config::Config;
use rxgate::message::{Accepted, Ingest, Intake, Point, Quality, Reading, Submission, Value};
use rxgate::modbus::{ModbusPoller, ModbusTlsIdentity};
use rxgate_sim::fridge::{Fault, FridgeOptions, FridgeSim, TlsOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(15);

/// A poller running in the background, and the receiving end of its submissions.
struct Running {
    rx: mpsc::Receiver<Submission>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    fn start(config: &Config) -> Running {
        Self::start_with(config, None)
    }

    fn start_with(config: &Config, tls: Option<ModbusTlsIdentity>) -> Running {
        let (ingest, rx) = Ingest::channel(8, Arc::new(SystemClock));
        let poller = ModbusPoller::build(&config.gateway.site, &config.devices, ingest, tls)
            .unwrap_or_else(|e| panic!("build: {e}"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(poller.run(shutdown.clone()));
        Running { rx, shutdown, task }
    }

    /// The next submission, acknowledged as durable.
    async fn next(&mut self) -> Intake {
        let submission = tokio::time::timeout(DEADLINE, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("nothing submitted within {DEADLINE:?}"))
            .expect("the poller dropped its ingest handle");
        let _ = submission.reply.send(Ok(Accepted {
            id: uuid::Uuid::now_v7(),
        }));
        submission.intake
    }

    /// Submissions until `pick` returns `Some`, with a deadline.
    async fn until<T>(&mut self, what: &str, mut pick: impl FnMut(&Intake) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let intake = tokio::time::timeout_at(deadline, self.next())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
            if let Some(found) = pick(&intake) {
                return found;
            }
        }
    }

    async fn reading(&mut self, device: &str) -> Reading {
        self.until(&format!("a reading of {device}"), |i| match i {
            Intake::Telemetry(r) if r.device == device => Some(r.clone()),
            _ => None,
        })
        .await
    }

    async fn status(&mut self, device: &str, online: bool) -> String {
        self.until(&format!("{device} online = {online}"), |i| match i {
            Intake::Status {
                device: d,
                online: o,
                reason,
            } if d == device && *o == online => Some(reason.clone()),
            _ => None,
        })
        .await
    }

    /// Stops the poller and checks that `run` returns promptly.
    async fn stop(self) {
        self.shutdown.cancel();
        let Running { mut rx, task, .. } = self;
        // Keep acknowledging while it drains, then expect it to end.
        let drain = tokio::spawn(async move {
            while let Some(s) = rx.recv().await {
                let _ = s.reply.send(Ok(Accepted {
                    id: uuid::Uuid::now_v7(),
                }));
            }
        });
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("run() returns after shutdown")
            .expect("the poller task does not panic");
        drain.abort();
    }
}

/// A config with `devices` (TOML) whose relative paths resolve against `config/`, so
/// `model = "devices/acme-fr400.toml"` names the example model files.
fn config(devices: &str) -> Config {
    let text = format!("[gateway]\nsite = \"store-0042\"\n{devices}");
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let config = Config::parse(&text, &base).unwrap_or_else(|e| panic!("config: {e}"));
    config
        .check()
        .unwrap_or_else(|e| panic!("config check: {e}"));
    config
}

fn number(reading: &Reading, name: &str) -> f64 {
    match reading.points.get(name) {
        Some(Point {
            value: Some(Value::Number(n)),
            quality: Quality::Good,
            ..
        }) => *n,
        other => panic!("{name}: expected a good number, got {other:?} in {reading:#?}"),
    }
}

fn boolean(reading: &Reading, name: &str) -> bool {
    match reading.points.get(name) {
        Some(Point {
            value: Some(Value::Bool(b)),
            quality: Quality::Good,
            ..
        }) => *b,
        other => panic!("{name}: expected a good bool, got {other:?} in {reading:#?}"),
    }
}

fn frozen_fridge(initial_c: f64) -> FridgeOptions {
    FridgeOptions {
        speed: 0.0,
        initial_c: Some(initial_c),
        ..FridgeOptions::default()
    }
}

#[tokio::test]
async fn poller_reads_the_simulated_fridge_over_tcp_with_exact_scaling() {
    let fridge = FridgeSim::start(frozen_fridge(4.3))
        .await
        .expect("start fridge");
    let addr = fridge.local_addr().expect("tcp address");
    let config = config(&format!(
        "[devices.fridge-01]\ntransport = \"tcp\"\naddress = \"{addr}\"\nmodel = \"devices/acme-fr400.toml\"\n\
         poll_interval = \"200ms\"\ntimeout = \"150ms\"\n"
    ));
    let mut poller = Running::start(&config);

    assert_eq!(
        poller.next().await,
        Intake::Status {
            device: "fridge-01".into(),
            online: true,
            reason: "the device answered a poll".into()
        },
        "the first successful poll reports the device online, before its reading"
    );
    let r = poller.reading("fridge-01").await;
    assert_eq!(r.device_ts, None);
    assert_eq!(r.points.len(), 15, "every point of the model file: {r:#?}");
    assert!(
        r.points.values().all(|p| p.quality == Quality::Good),
        "{r:#?}"
    );
    assert_eq!(number(&r, "temperature_c"), 4.3);
    assert_eq!(r.points["temperature_c"].unit.as_deref(), Some("°C"));
    assert_eq!(number(&r, "ambient_c"), 22.0);
    assert_eq!(number(&r, "setpoint_c"), 5.0);
    assert_eq!(number(&r, "differential_k"), 1.0);
    assert_eq!(number(&r, "high_alarm_c"), 8.0);
    assert_eq!(number(&r, "low_alarm_c"), 2.0);
    assert_eq!(number(&r, "compressor_starts"), 0.0);
    assert!(!boolean(&r, "door_open"));
    assert!(!boolean(&r, "sensor_fault"));
    assert!(!boolean(&r, "compressor_running"));

    fridge.set_fault(Fault::SensorFault, None);
    fridge.open_door(Duration::from_secs(60));
    let r = poller
        .until("the sensor fault", |i| match i {
            Intake::Telemetry(r) if r.points["sensor_fault"].value == Some(Value::Bool(true)) => {
                Some(r.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(
        number(&r, "temperature_c"),
        -3276.8,
        "0x8000 is reported as read"
    );
    assert!(boolean(&r, "door_open"));
    assert_eq!(number(&r, "door_openings"), 1.0);
    poller.stop().await;
}

#[tokio::test]
async fn poller_reports_offline_after_a_power_cut_and_online_when_power_returns() {
    let fridge = FridgeSim::start(frozen_fridge(5.0))
        .await
        .expect("start fridge");
    let addr = fridge.local_addr().expect("tcp address");
    let config = config(&format!(
        "[devices.fridge-01]\ntransport = \"tcp\"\naddress = \"{addr}\"\nmodel = \"devices/acme-fr400.toml\"\n\
         poll_interval = \"100ms\"\ntimeout = \"80ms\"\nmax_backoff = \"300ms\"\noffline_after = 2\n"
    ));
    let mut poller = Running::start(&config);
    poller.status("fridge-01", true).await;
    poller.reading("fridge-01").await;

    fridge.set_fault(Fault::PowerCut, None);
    let reason = poller.status("fridge-01", false).await;
    assert!(reason.starts_with("2 polls in a row failed"), "{reason}");
    assert!(
        reason.contains("the device closed the connection"),
        "{reason}"
    );

    fridge.clear_fault(Fault::PowerCut);
    poller.status("fridge-01", true).await;
    let r = poller.reading("fridge-01").await;
    assert!(
        boolean(&r, "power_failure_alarm"),
        "latched when power returned"
    );
    poller.stop().await;
}

/// The Python interpreter with pymodbus: `RXGATE_PYTHON`, else the workspace's `.venv`, else
/// `python3`. Fails (never skips) with what to install.
async fn python_with_pymodbus() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let python = std::env::var_os("RXGATE_PYTHON")
        .map(PathBuf::from)
        .or_else(|| venv.exists().then_some(venv))
        .unwrap_or_else(|| PathBuf::from("python3"));
    let check = tokio::process::Command::new(&python)
        .args([
            "-c",
            "import pymodbus, sys; sys.stdout.write(pymodbus.__version__)",
        ])
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; install the Debian packages python3 and python3-venv",
                python.display()
            )
        });
    assert!(
        check.status.success(),
        "{} cannot import pymodbus: run scripts/test, or create the venv by hand: \
         python3 -m venv .venv && .venv/bin/pip install 'pymodbus==3.16.1' (PyPI package pymodbus)\n{}",
        python.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    python
}

#[tokio::test]
async fn poller_reads_a_pymodbus_server_exactly_in_every_type_and_word_order() {
    let python = python_with_pymodbus().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/pymodbus_server.py");
    let mut server = tokio::process::Command::new(&python)
        .arg(&script)
        .arg("0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the pymodbus server");
    let stdout = server.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let port: u16 = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("read the server's stdout") {
            if let Some(port) = line.strip_prefix("ready ") {
                return port.trim().parse().expect("a port number");
            }
        }
        panic!("the pymodbus server exited without saying ready");
    })
    .await
    .expect("the pymodbus server says ready");

    let config = config(&format!(
        r#"
        [devices.logger-01]
        kind = "sensor"
        transport = "tcp"
        address = "127.0.0.1:{port}"
        model = "devices/thermolog-tl2.toml"
        poll_interval = "300ms"
        timeout = "250ms"
        [[devices.logger-01.registers]]
        name = "freezer_c"
        function = "holding"
        address = 10
        type = "i16"
        scale = 0.1
        unit = "°C"
        [[devices.logger-01.registers]]
        name = "energy_wh"
        function = "holding"
        address = 11
        type = "u32"
        [[devices.logger-01.registers]]
        name = "balance"
        function = "holding"
        address = 13
        type = "i32"
        word_order = "little"
        [[devices.logger-01.registers]]
        name = "not_there"
        function = "holding"
        address = 40
        [[devices.logger-01.registers]]
        name = "relay_a"
        function = "coil"
        address = 0
        [[devices.logger-01.registers]]
        name = "relay_b"
        function = "coil"
        address = 1
        [[devices.logger-01.registers]]
        name = "relay_c"
        function = "coil"
        address = 2
        [[devices.logger-01.registers]]
        name = "lid_closed"
        function = "discrete"
        address = 0
        "#
    ));
    let mut poller = Running::start(&config);
    poller.status("logger-01", true).await;
    let r = poller.reading("logger-01").await;

    assert_eq!(number(&r, "probe1_c"), 4.25);
    assert_eq!(number(&r, "probe2_c"), -18.5);
    assert_eq!(number(&r, "min_since_reset_c"), 2.75, "CDAB word order");
    assert_eq!(number(&r, "max_since_reset_c"), 7.125, "CDAB word order");
    assert_eq!(number(&r, "battery_v"), 3.312);
    assert_eq!(r.points["battery_v"].unit.as_deref(), Some("V"));
    assert_eq!(
        number(&r, "records_stored"),
        123_456_789.0,
        "read although the merged request spanning the unserved register 9 was refused"
    );
    assert_eq!(number(&r, "log_interval_s"), 300.0);
    assert_eq!(number(&r, "freezer_c"), -21.5);
    assert_eq!(number(&r, "energy_wh"), 4_000_000_000.0);
    assert_eq!(number(&r, "balance"), -123_456.0);
    assert!(boolean(&r, "relay_a"));
    assert!(!boolean(&r, "relay_b"));
    assert!(boolean(&r, "relay_c"));
    assert!(boolean(&r, "lid_closed"));
    assert_eq!(
        r.points["not_there"],
        Point {
            value: None,
            unit: None,
            quality: Quality::CommError
        },
        "an illegal data address is reported on its point, and the rest is read"
    );

    // The connection survived the exceptions: the next polls still read everything.
    let r = poller.reading("logger-01").await;
    assert_eq!(number(&r, "probe1_c"), 4.25);
    poller.stop().await;
    let _ = server.kill().await;
}

/// How the hand-written server behaves.
const ANSWER: u8 = 0;
/// Answers reads at address 0, never those at 100.
const PARTLY_SILENT: u8 = 1;
/// Reads requests and never answers.
const SILENT: u8 = 2;
/// Answers every request, but only after 300 ms (longer than the poller's timeout).
const LATE: u8 = 3;

/// A minimal Modbus/TCP server written from the spec, independent of tokio-modbus: function 4
/// only, register value = address + 7, so a reply taken for the wrong request shows.
async fn scripted_server(
    mode: Arc<AtomicU8>,
    connections: Arc<AtomicUsize>,
) -> (std::net::SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            connections.fetch_add(1, Ordering::SeqCst);
            let mode = mode.clone();
            tokio::spawn(async move {
                let (mut rd, wr) = stream.into_split();
                let wr = Arc::new(tokio::sync::Mutex::new(wr));
                loop {
                    let mut header = [0u8; 7];
                    if rd.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
                    let mut pdu = vec![0u8; len.saturating_sub(1)];
                    if rd.read_exact(&mut pdu).await.is_err() || pdu.len() != 5 || pdu[0] != 4 {
                        return;
                    }
                    let start = u16::from_be_bytes([pdu[1], pdu[2]]);
                    let count = u16::from_be_bytes([pdu[3], pdu[4]]);
                    let mut reply = Vec::new();
                    reply.extend_from_slice(&header[..4]);
                    reply.extend_from_slice(&(3 + 2 * count).to_be_bytes());
                    reply.push(header[6]);
                    reply.push(4);
                    reply.push((2 * count) as u8);
                    for i in 0..count {
                        reply.extend_from_slice(&(start + i + 7).to_be_bytes());
                    }
                    let delay = match mode.load(Ordering::SeqCst) {
                        ANSWER => Duration::ZERO,
                        PARTLY_SILENT if start == 0 => Duration::ZERO,
                        LATE => Duration::from_millis(300),
                        _ => continue,
                    };
                    let wr = wr.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = wr.lock().await.write_all(&reply).await;
                    });
                }
            });
        }
    });
    (addr, task)
}

/// `Some` for a reading with both points good; panics on any good value that is wrong (a reply
/// taken for another request's answer).
fn complete_and_correct(intake: &Intake) -> Option<()> {
    let Intake::Telemetry(r) = intake else {
        return None;
    };
    for (name, expected) in [("a", 7.0), ("b", 107.0)] {
        if r.points[name].quality == Quality::Good {
            assert_eq!(
                r.points[name].value,
                Some(Value::Number(expected)),
                "{r:#?}"
            );
        }
    }
    r.points
        .values()
        .all(|p| p.quality == Quality::Good)
        .then_some(())
}

#[tokio::test]
async fn a_silent_device_goes_offline_and_comes_back_with_correct_values() {
    let mode = Arc::new(AtomicU8::new(ANSWER));
    let connections = Arc::new(AtomicUsize::new(0));
    let (addr, server) = scripted_server(mode.clone(), connections.clone()).await;
    let config = config(&format!(
        r#"
        [devices.fridge-09]
        transport = "tcp"
        address = "{addr}"
        poll_interval = "150ms"
        timeout = "100ms"
        max_backoff = "400ms"
        offline_after = 2
        registers = [
            {{ name = "a", function = "input", address = 0 }},
            {{ name = "b", function = "input", address = 100 }},
        ]
        "#
    ));
    let mut poller = Running::start(&config);
    poller.status("fridge-09", true).await;
    poller
        .until("a complete reading", complete_and_correct)
        .await;

    // The second request times out: what was read is reported, the rest is comm_error with its
    // last value, and two such polls in a row are an outage.
    mode.store(PARTLY_SILENT, Ordering::SeqCst);
    let r = poller
        .until("a partial reading", |i| match i {
            Intake::Telemetry(r) if r.points["b"].quality != Quality::Good => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(number(&r, "a"), 7.0);
    assert_eq!(
        r.points["b"],
        Point {
            value: Some(Value::Number(107.0)),
            unit: None,
            quality: Quality::CommError
        }
    );
    let reason = poller.status("fridge-09", false).await;
    assert!(
        reason.contains("no reply to reading input 100+1 within 100ms"),
        "{reason}"
    );

    // Entirely silent, then late: replies arrive after the poller gave up on them. Every
    // timeout closes the connection, so no late reply is ever read as another request's answer.
    mode.store(SILENT, Ordering::SeqCst);
    let before = connections.load(Ordering::SeqCst);
    tokio::time::timeout(DEADLINE, async {
        while connections.load(Ordering::SeqCst) < before + 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the poller reconnects after each timeout");
    mode.store(LATE, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(800)).await;
    while let Ok(submission) = poller.rx.try_recv() {
        if let Intake::Telemetry(r) = &submission.intake {
            assert_eq!(r.points["a"].value, Some(Value::Number(7.0)), "{r:#?}");
            assert_eq!(r.points["b"].value, Some(Value::Number(107.0)), "{r:#?}");
        }
        let _ = submission.reply.send(Ok(Accepted {
            id: uuid::Uuid::now_v7(),
        }));
    }

    mode.store(ANSWER, Ordering::SeqCst);
    poller.status("fridge-09", true).await;
    poller
        .until("a complete reading", complete_and_correct)
        .await;
    poller.stop().await;
    server.abort();
}

/// With the shipped `offline_after` (3), a device that stops answering is reported offline
/// within three poll intervals (each poll then also waits out its timeout), not at the first
/// missed reply, and online again at the first poll after it answers.
#[tokio::test]
async fn a_device_that_stops_answering_is_offline_within_three_intervals_and_back_at_once() {
    let mode = Arc::new(AtomicU8::new(ANSWER));
    let connections = Arc::new(AtomicUsize::new(0));
    let (addr, server) = scripted_server(mode.clone(), connections).await;
    let (interval, timeout) = (Duration::from_millis(1000), Duration::from_millis(200));
    let config = config(&format!(
        r#"
        [devices.fridge-09]
        transport = "tcp"
        address = "{addr}"
        poll_interval = "{}ms"
        timeout = "{}ms"
        registers = [{{ name = "a", function = "input", address = 0 }}]
        "#,
        interval.as_millis(),
        timeout.as_millis()
    ));
    assert_eq!(config.devices["fridge-09"].offline_after, 3);
    let mut poller = Running::start(&config);
    poller.status("fridge-09", true).await;
    poller.reading("fridge-09").await;

    mode.store(SILENT, Ordering::SeqCst);
    let silent_at = tokio::time::Instant::now();
    poller.status("fridge-09", false).await;
    let took = silent_at.elapsed();
    // Three failed polls: the first within an interval of going silent, each ending with its
    // timeout; 300 ms of slack for a busy machine.
    let bound = 3 * (interval + timeout) + Duration::from_millis(300);
    assert!(took <= bound, "offline after {took:?}, beyond {bound:?}");
    assert!(
        took >= 2 * interval,
        "offline after {took:?}: before the third failed poll"
    );

    mode.store(ANSWER, Ordering::SeqCst);
    let answering_at = tokio::time::Instant::now();
    poller.status("fridge-09", true).await;
    let back = answering_at.elapsed();
    // While offline it retries with backoff (at most max_backoff, 30 s by default, but starting
    // from the poll interval): the first retries come within a few intervals.
    assert!(back <= 4 * interval, "online again after {back:?}");
    poller.stop().await;
    server.abort();
}

#[tokio::test]
async fn poller_reads_the_fridge_over_rtu_and_a_dead_unit_on_the_bus_does_not_stop_it() {
    let fridge = FridgeSim::start(FridgeOptions {
        tcp: None,
        rtu: true,
        ..frozen_fridge(-1.5)
    })
    .await
    .expect("start fridge");
    let pty = fridge.rtu_path().expect("pty path").display().to_string();
    let config = config(&format!(
        r#"
        [devices.fridge-01]
        transport = "rtu"
        serial = "{pty}"
        baud = 19200
        parity = "even"
        unit = 1
        model = "devices/acme-fr400.toml"
        poll_interval = "200ms"
        timeout = "150ms"
        [devices.fridge-02]
        transport = "rtu"
        serial = "{pty}"
        baud = 19200
        parity = "even"
        unit = 2
        model = "devices/acme-fr400.toml"
        poll_interval = "200ms"
        timeout = "150ms"
        max_backoff = "1s"
        offline_after = 2
        "#
    ));
    let mut poller = Running::start(&config);
    let r = poller.reading("fridge-01").await;
    assert_eq!(number(&r, "temperature_c"), -1.5);
    assert!(boolean(&r, "low_temp_alarm"));
    assert!(
        r.points.values().all(|p| p.quality == Quality::Good),
        "{r:#?}"
    );

    poller.status("fridge-02", false).await;
    // Unit 1 keeps being read while unit 2 times out on the same bus.
    for _ in 0..3 {
        let r = poller.reading("fridge-01").await;
        assert_eq!(number(&r, "temperature_c"), -1.5);
    }
    fridge.set_temperature(6.2);
    poller
        .until("the new temperature over RTU", |i| match i {
            Intake::Telemetry(r) if r.device == "fridge-01" => {
                (r.points["temperature_c"].value == Some(Value::Number(6.2))).then_some(())
            }
            _ => None,
        })
        .await;
    poller.stop().await;
}

/// A CA, the gateway's identity from it (server certificate with clientAuth, as `rxgate init`
/// issues it), and a device certificate for `device_id` issued as EST would.
fn pki(device_id: &str) -> (ModbusTlsIdentity, TlsOptions) {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    let now = time::OffsetDateTime::now_utc();
    let ca = rxgate_certs::CertificateAuthority::generate("Test CA", now).expect("CA");
    let server = ca
        .issue_server(&["localhost".to_owned()], Duration::from_secs(86_400), now)
        .expect("server certificate");
    let (device_key, csr) =
        rxgate_certs::new_device_csr(device_id, rxgate_certs::KeyAlg::P256).expect("CSR");
    let device = ca
        .issue_device(
            &rxgate_certs::check_csr(&csr).expect("CSR checks"),
            &rxgate_certs::DeviceProfile {
                site: "store-0042".into(),
                kind: "fridge".into(),
                device_id: device_id.into(),
                validity: Duration::from_secs(86_400),
                backdate: Duration::from_secs(60),
                now,
            },
        )
        .expect("device certificate");
    let ca_chain = ca.chain_der();
    let identity = ModbusTlsIdentity {
        chain: [vec![server.cert.der.clone()], ca_chain.clone()].concat(),
        key: PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).expect("server key"),
        ca_chain: ca_chain.clone(),
        clock: Arc::new(SystemClock),
    };
    let fridge = TlsOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        cert_chain: [vec![device.der.clone()], ca_chain.clone()].concat(),
        key: PrivateKeyDer::from_pem_slice(device_key.as_bytes()).expect("device key"),
        client_ca: Some(ca_chain),
    };
    (identity, fridge)
}

#[tokio::test]
async fn poller_reads_the_fridge_over_mutual_tls_and_refuses_a_certificate_for_another_device() {
    let (identity, tls) = pki("fridge-07");
    let fridge = FridgeSim::start(FridgeOptions {
        tcp: None,
        tls: Some(tls),
        ..frozen_fridge(3.9)
    })
    .await
    .expect("start fridge");
    let addr = fridge.tls_addr().expect("tls address");
    let device = |id: &str| {
        format!(
            "[devices.{id}]\ntransport = \"tls\"\naddress = \"{addr}\"\nmodel = \"devices/acme-fr400.toml\"\n\
             poll_interval = \"200ms\"\ntimeout = \"150ms\"\noffline_after = 1\n"
        )
    };
    // fridge-07 is who the certificate names; fridge-08 at the same address is an impostor.
    let config = config(&format!("{}{}", device("fridge-07"), device("fridge-08")));
    let mut poller = Running::start_with(&config, Some(identity));
    // The two devices' submissions interleave in any order: watch for both.
    let (mut temperature, mut impostor) = (None, None);
    poller
        .until("a reading of fridge-07 and fridge-08 offline", |i| {
            match i {
                Intake::Telemetry(r) if r.device == "fridge-07" => {
                    temperature = Some(number(r, "temperature_c"))
                }
                Intake::Telemetry(r) => panic!("read a device with the wrong certificate: {r:#?}"),
                Intake::Status {
                    device,
                    online: false,
                    reason,
                } if device == "fridge-08" => impostor = Some(reason.clone()),
                _ => {}
            }
            (temperature.is_some() && impostor.is_some()).then_some(())
        })
        .await;
    assert_eq!(temperature, Some(3.9));
    let reason = impostor.unwrap_or_default();
    assert!(
        reason.contains("cannot connect") && reason.contains("certificate"),
        "{reason}"
    );
    poller.stop().await;
}

#[tokio::test]
async fn build_refuses_an_invalid_device_naming_its_key() {
    let mut config = config("");
    let device: rxgate::config::DeviceConfig = toml::from_str(
        "transport = \"tcp\"\nregisters = [{ name = \"t\", function = \"input\", address = 0 }]\n",
    )
    .expect("device");
    config.devices.insert("fridge-01".into(), device);
    let (ingest, _rx) = Ingest::channel(1, Arc::new(SystemClock));
    let err = ModbusPoller::build(&config.gateway.site, &config.devices, ingest, None)
        .expect_err("no address");
    assert!(
        err.to_string().contains("devices.fridge-01.address"),
        "{err}"
    );
}

#[tokio::test]
async fn build_refuses_a_tls_device_without_the_gateway_identity() {
    let config = config(
        "[devices.fridge-01]\ntransport = \"tls\"\naddress = \"127.0.0.1\"\nmodel = \"devices/acme-fr400.toml\"\n",
    );
    let (ingest, _rx) = Ingest::channel(1, Arc::new(SystemClock));
    let err = ModbusPoller::build(&config.gateway.site, &config.devices, ingest, None)
        .expect_err("no identity");
    assert!(err.to_string().contains("TLS identity"), "{err}");
}
