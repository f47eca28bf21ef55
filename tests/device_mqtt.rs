//! The device MQTT listener against real clients (`mosquitto_pub`, `mosquitto_sub`, raw TCP):
//! identity binding, namespaces, refusals recorded, revocation, and silent connections.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rxgate_e2e::cloud::Cloud;
use rxgate_e2e::{Gateway, openssl, run, text, wait_until};

/// Waits until the audit trail holds a refusal of `kind` with reason class `class`.
fn wait_for_refusal(gw: &Gateway, kind: &str, class: &str) -> serde_json::Value {
    wait_until(
        Duration::from_secs(10),
        &format!("a {kind} entry of class {class}"),
        || {
            let entries: serde_json::Value =
                serde_json::from_str(&gw.cli_ok(&["audit", "export"])).ok()?;
            entries
                .as_array()?
                .iter()
                .find(|e| e["kind"] == kind && e["detail"]["class"] == class)
                .cloned()
        },
    )
}

/// Waits until the audit trail holds a refusal of `kind`, class `class`, whose reason mentions
/// `needle` (case-insensitively); panics with every refusal recorded if none comes.
fn wait_for_refusal_saying(
    gw: &Gateway,
    kind: &str,
    class: &str,
    needle: &str,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entries: Vec<serde_json::Value> =
            serde_json::from_str(&gw.cli_ok(&["audit", "export"])).unwrap();
        let refusals: Vec<&serde_json::Value> = entries
            .iter()
            .filter(|e| e["kind"] == kind && e["detail"]["class"] == class)
            .collect();
        if let Some(entry) = refusals.iter().find(|e| {
            e["detail"]["reason"]
                .as_str()
                .is_some_and(|r| r.to_lowercase().contains(&needle.to_lowercase()))
        }) {
            return (*entry).clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} of class {class} saying {needle:?}; recorded: {refusals:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The gateway still serves: an enrolled device's telemetry reaches the cloud.
fn assert_unaffected(
    gw: &mut Gateway,
    creds: &Path,
    backend: &rxgate_e2e::cloud::Subscription,
    n: usize,
) {
    assert!(gw.is_running(), "the daemon died:\n{}", gw.logs());
    let out = gw.mosquitto_pub(
        creds,
        "fridge-01",
        "devices/fridge-01/telemetry",
        r#"{"points":{"temperature_c":5.0}}"#,
    );
    assert!(out.status.success(), "{}", text(&out));
    backend.wait_for(
        "rxgate/v1/store-0042/devices/fridge-01/telemetry",
        n,
        Duration::from_secs(10),
    );
}

struct Setup {
    _tmp: tempfile::TempDir,
    _cloud: Cloud,
    gw: Gateway,
    creds: PathBuf,
    backend: rxgate_e2e::cloud::Subscription,
}

fn setup() -> Setup {
    setup_with_mqtt("")
}

/// Like [`setup`], with `mqtt` (TOML lines) in the gateway's `[mqtt]` section.
fn setup_with_mqtt(mqtt: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path());
    let gw = Gateway::start(&format!(
        "{}\n[mqtt]\n{mqtt}\n",
        cloud.pki.gateway_config(cloud.port)
    ));
    let backend = cloud.subscribe("rxgate/v1/#");
    let creds = gw.enroll_with_sim("fridge-01", "fridge");
    Setup {
        _tmp: tmp,
        _cloud: cloud,
        gw,
        creds,
        backend,
    }
}

fn pub_with(
    gw: &Gateway,
    ca: &Path,
    cert: Option<(&Path, &Path)>,
    client_id: &str,
    topic: &str,
) -> std::process::Output {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &gw.mqtt.port().to_string()])
        .arg("--cafile")
        .arg(ca)
        .args([
            "-i",
            client_id,
            "-t",
            topic,
            "-m",
            r#"{"points":{"t":1}}"#,
            "-q",
            "1",
        ]);
    if let Some((cert, key)) = cert {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    run(&mut cmd)
}

/// `mosquitto_pub` as `client_id` with the credentials in `creds`, QoS 1, plus `extra`
/// arguments (`-r` to retain, `-A ADDR` to connect from another loopback address).
fn device_pub(
    gw: &Gateway,
    creds: &Path,
    client_id: &str,
    topic: &str,
    message: &str,
    extra: &[&str],
) -> std::process::Output {
    run(gw
        .device_client("mosquitto_pub", creds, client_id)
        .args(["-t", topic, "-m", message, "-q", "1"])
        .args(extra))
}

/// A `mosquitto_sub` connected as a device, collecting `topic<TAB>payload` lines.
struct DeviceSub {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl DeviceSub {
    fn start(gw: &Gateway, creds: &Path, client_id: &str, filter: &str) -> DeviceSub {
        let mut child = gw
            .device_client("mosquitto_sub", creds, client_id)
            .args(["-q", "1", "-t", filter, "-F", "%t\t%p"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        DeviceSub { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for DeviceSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn connections_without_a_certificate_or_with_another_cas_are_refused_and_recorded() {
    let mut s = setup();
    let gw = &s.gw;
    let ca = s.creds.join("ca.crt");

    let without = pub_with(gw, &ca, None, "fridge-01", "devices/fridge-01/telemetry");
    assert!(!without.status.success(), "{}", text(&without));
    wait_for_refusal_saying(gw, "connection.refused", "tls_handshake", "no certificate");

    let rogue = s.gw.path("rogue");
    std::fs::create_dir_all(&rogue).unwrap();
    openssl(
        &rogue,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=Rogue CA",
            "-days",
            "30",
        ],
    );
    openssl(
        &rogue,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "dev.key",
            "-out",
            "dev.csr",
            "-subj",
            "/CN=fridge-01",
        ],
    );
    std::fs::write(rogue.join("ext"), "subjectAltName=URI:urn:rxgate:device:store-0042:fridge:fridge-01\nextendedKeyUsage=clientAuth\n").unwrap();
    openssl(
        &rogue,
        &[
            "x509",
            "-req",
            "-in",
            "dev.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "dev.pem",
            "-days",
            "30",
            "-extfile",
            "ext",
        ],
    );
    let foreign = pub_with(
        gw,
        &ca,
        Some((&rogue.join("dev.pem"), &rogue.join("dev.key"))),
        "fridge-01",
        "devices/fridge-01/telemetry",
    );
    assert!(!foreign.status.success(), "{}", text(&foreign));
    // Its own entry, naming what was wrong with the certificate.
    let entry = wait_for_refusal_saying(gw, "connection.refused", "tls_handshake", "issuer");
    assert!(entry["source"] == "127.0.0.1", "{entry}");

    assert_unaffected(&mut s.gw, &s.creds, &s.backend, 1);
}

#[test]
fn an_expired_certificate_from_the_gateway_ca_is_refused_and_recorded() {
    let mut s = setup();
    let dir = s.gw.path("old");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("serial"), "1000\n").unwrap();
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndir = .\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n\
         default_md = sha256\npolicy = p\nunique_subject = no\n[p]\ncommonName = supplied\n\
         [ext]\nbasicConstraints = critical,CA:FALSE\nextendedKeyUsage = clientAuth\n\
         subjectAltName = URI:urn:rxgate:device:store-0042:fridge:fridge-01\n",
    )
    .unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "dev.key",
            "-out",
            "dev.csr",
            "-subj",
            "/CN=fridge-01",
        ],
    );
    let data = s.gw.data_dir();
    openssl(
        &dir,
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-cert",
            data.join("ca/ca.crt").to_str().unwrap(),
            "-keyfile",
            data.join("ca/ca.key").to_str().unwrap(),
            "-in",
            "dev.csr",
            "-out",
            "dev.pem",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200201000000Z",
            "-extensions",
            "ext",
            "-notext",
        ],
    );
    let out = pub_with(
        &s.gw,
        &s.creds.join("ca.crt"),
        Some((&dir.join("dev.pem"), &dir.join("dev.key"))),
        "fridge-01",
        "devices/fridge-01/telemetry",
    );
    assert!(!out.status.success(), "{}", text(&out));
    let entry = wait_for_refusal(&s.gw, "connection.refused", "certificate_refused");
    assert!(
        entry["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{entry}"
    );
    assert_unaffected(&mut s.gw, &s.creds, &s.backend, 1);
}

#[test]
fn a_client_id_that_is_not_the_certificates_is_refused_with_identifier_rejected() {
    let mut s = setup();
    let out = s.gw.mosquitto_pub(
        &s.creds,
        "fridge-02",
        "devices/fridge-02/telemetry",
        r#"{"points":{"t":1}}"#,
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).to_lowercase().contains("identifier rejected"),
        "{}",
        text(&out)
    );
    wait_for_refusal(&s.gw, "connection.refused", "client_id_mismatch");
    assert_unaffected(&mut s.gw, &s.creds, &s.backend, 1);
}

#[test]
fn publishing_to_another_devices_topic_is_refused_recorded_and_never_delivered() {
    let mut s = setup();
    let other = s.gw.enroll_with_sim("fridge-02", "fridge");
    let status = "rxgate/v1/store-0042/devices/fridge-02/status";
    // fridge-02 leaves a retained message in its own namespace and disconnects (two statuses:
    // online, offline). Its subscriber below gets it right after its SUBACK: the proof that
    // the subscription is live before fridge-01 tries anything. (fridge-02 cannot publish
    // while the subscriber is connected: one client id, one session.)
    let ready = device_pub(
        &s.gw,
        &other,
        "fridge-02",
        "devices/fridge-02/ready",
        "1",
        &["-r"],
    );
    assert!(ready.status.success(), "{}", text(&ready));
    let statuses = s.backend.wait_for(status, 2, Duration::from_secs(10));
    assert_eq!(
        [&statuses[0]["online"], &statuses[1]["online"]],
        [true, false],
        "{statuses:#?}"
    );
    let mut sub = DeviceSub::start(&s.gw, &other, "fridge-02", "devices/fridge-02/#");
    wait_until(
        Duration::from_secs(10),
        "the subscriber to get the probe",
        || {
            sub.lines()
                .contains(&"devices/fridge-02/ready\t1".to_owned())
                .then_some(())
        },
    );
    let statuses = s.backend.wait_for(status, 3, Duration::from_secs(10));
    assert_eq!(statuses[2]["online"], true, "{statuses:#?}");

    // fridge-01 writes into fridge-02's namespace: telemetry (which rxgate takes itself) and a
    // local topic (which would be relayed to the embedded broker as it is).
    for topic in ["devices/fridge-02/telemetry", "devices/fridge-02/cmd"] {
        let out =
            s.gw.mosquitto_pub(&s.creds, "fridge-01", topic, r#"{"points":{"t":1}}"#);
        assert!(
            out.status.success(),
            "acknowledged but dropped: {}",
            text(&out)
        );
        wait_for_refusal_saying(&s.gw, "message.refused", "topic_denied", topic);
    }
    // Local delivery takes milliseconds; give it two seconds to show up.
    let window = Instant::now() + Duration::from_secs(2);
    while Instant::now() < window {
        let lines = sub.lines();
        assert_eq!(
            lines,
            ["devices/fridge-02/ready\t1"],
            "fridge-02's subscriber got fridge-01's message"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The subscriber's session was up all along: no status of fridge-02 since it connected.
    assert_eq!(
        s.backend.json_on(status).len(),
        3,
        "{:#?}",
        s.backend.json_on(status)
    );
    assert!(sub.is_running(), "mosquitto_sub exited");

    assert_unaffected(&mut s.gw, &s.creds, &s.backend, 1);
    assert!(
        s.backend
            .messages()
            .iter()
            .all(|(t, _)| !t.contains("fridge-02") || t == status),
        "{:?}",
        s.backend.messages()
    );
}

#[test]
fn a_malformed_payload_is_refused_and_recorded_and_the_same_session_goes_on() {
    let s = setup();
    let creds = &s.creds;
    // `mosquitto_pub -l` sends each stdin line as a message, all in one session.
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &s.gw.mqtt.port().to_string()])
        .arg("--cafile")
        .arg(creds.join("ca.crt"))
        .arg("--cert")
        .arg(creds.join("device.crt"))
        .arg("--key")
        .arg(creds.join("device.key"))
        .args([
            "-i",
            "fridge-01",
            "-t",
            "devices/fridge-01/telemetry",
            "-q",
            "1",
            "-l",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, r#"{{"points":{{"temperature_c":"warm"}}}}"#).unwrap();
        writeln!(stdin, r#"{{"points":{{"temperature_c":4.25}}}}"#).unwrap();
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let entry = wait_for_refusal(&s.gw, "message.refused", "bad_payload");
    assert!(
        entry["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("neither a number nor a boolean"),
        "{entry}"
    );
    let delivered = s.backend.wait_for(
        "rxgate/v1/store-0042/devices/fridge-01/telemetry",
        1,
        Duration::from_secs(10),
    );
    assert_eq!(delivered[0]["points"]["temperature_c"]["value"], 4.25);
    assert_eq!(
        delivered.len(),
        1,
        "the bad message never reaches the cloud"
    );
    // The session ends when the client disconnects; the gateway logs it just after.
    let logs = wait_until(
        Duration::from_secs(10),
        "the session's end in the log",
        || {
            let logs = s.gw.logs();
            logs.contains("Device session ended.").then_some(logs)
        },
    );
    assert_eq!(
        logs.matches("Device connected.").count(),
        1,
        "both messages in one session: {logs}"
    );
    assert!(
        logs.contains("reason=device disconnected"),
        "the device left on its own: {logs}"
    );
}

#[test]
fn subscribing_to_everything_is_refused_and_recorded() {
    let mut s = setup();
    let creds = &s.creds;
    let out = run(Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &s.gw.mqtt.port().to_string()])
        .arg("--cafile")
        .arg(creds.join("ca.crt"))
        .arg("--cert")
        .arg(creds.join("device.crt"))
        .arg("--key")
        .arg(creds.join("device.key"))
        .args(["-i", "fridge-01", "-t", "#", "-W", "3"]));
    // SUBACK 0x80 for the filter: mosquitto_sub says so and gives up.
    assert!(
        text(&out).contains("All subscription requests were denied"),
        "{}",
        text(&out)
    );
    wait_for_refusal(&s.gw, "subscription.refused", "subscribe_denied");
    assert_unaffected(&mut s.gw, &s.creds, &s.backend, 1);
}

#[test]
fn revoking_a_device_drops_its_live_session_within_two_seconds_and_refuses_it_after() {
    let s = setup();
    let creds = &s.creds;
    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &s.gw.mqtt.port().to_string()])
        .arg("--cafile")
        .arg(creds.join("ca.crt"))
        .arg("--cert")
        .arg(creds.join("device.crt"))
        .arg("--key")
        .arg(creds.join("device.key"))
        .args(["-i", "fridge-01", "-t", "devices/fridge-01/cmd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the device session", || {
        s.gw.logs().contains("Device connected.").then_some(())
    });
    let revoked_at = Instant::now();
    s.gw.cli_ok(&["device", "revoke", "fridge-01", "--reason", "stolen"]);
    wait_until(Duration::from_secs(2), "the session to be dropped", || {
        s.gw.logs().contains("reason=device revoked").then_some(())
    });
    assert!(revoked_at.elapsed() < Duration::from_secs(2));
    let _ = sub.kill();
    let _ = sub.wait();
    let again = s.gw.mosquitto_pub(
        creds,
        "fridge-01",
        "devices/fridge-01/telemetry",
        r#"{"points":{"t":1}}"#,
    );
    assert!(!again.status.success(), "{}", text(&again));
    wait_for_refusal_saying(
        &s.gw,
        "connection.refused",
        "certificate_refused",
        "revoked",
    );

    // Another device is not affected by the revocation.
    let other = s.gw.enroll_with_sim("fridge-02", "fridge");
    let out = s.gw.mosquitto_pub(
        &other,
        "fridge-02",
        "devices/fridge-02/telemetry",
        r#"{"points":{"t":2}}"#,
    );
    assert!(out.status.success(), "{}", text(&out));
    s.backend.wait_for(
        "rxgate/v1/store-0042/devices/fridge-02/telemetry",
        1,
        Duration::from_secs(10),
    );
    let mut gw = s.gw;
    assert!(gw.is_running(), "the daemon died:\n{}", gw.logs());
}

#[test]
fn with_a_hundred_silent_connections_open_an_enrolled_device_still_connects_and_publishes_in_under_a_second()
 {
    let mut s = setup();
    let silent: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(s.gw.mqtt).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let out = s.gw.mosquitto_pub(
        &s.creds,
        "fridge-01",
        "devices/fridge-01/telemetry",
        r#"{"points":{"temperature_c":4.0}}"#,
    );
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        took < Duration::from_secs(1),
        "connect and publish took {took:?}"
    );
    s.backend.wait_for(
        "rxgate/v1/store-0042/devices/fridge-01/telemetry",
        1,
        Duration::from_secs(5),
    );
    drop(silent);
    assert_unaffected(&mut s.gw, &s.creds, &s.backend, 2);
}

/// TCP connections to `to`, one from each loopback address in `sources` (all of 127.0.0.0/8 is
/// local), in that order, that never send a byte.
fn silent_from(sources: impl IntoIterator<Item = [u8; 4]>, to: SocketAddr) -> Vec<TcpStream> {
    sources
        .into_iter()
        .map(|source| {
            let stream = rxgate_e2e::tcp_from(source, to)
                .unwrap_or_else(|e| panic!("connect from {source:?} to {to}: {e}"));
            stream.set_nonblocking(true).unwrap();
            stream
        })
        .collect()
}

/// The positions in `silent` of the connections the gateway has closed.
fn closed(silent: &[TcpStream]) -> Vec<usize> {
    (0..silent.len())
        .filter(|&i| closed_by_gateway(&silent[i]))
        .collect()
}

/// Whether the gateway has closed `stream` (a silent peer never gets a byte from it).
fn closed_by_gateway(mut stream: &TcpStream) -> bool {
    use std::io::Read;
    match stream.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => panic!("the gateway sent bytes to a peer that never spoke"),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// `rxgate_refusals_total{reason="<reason>"}` from the metrics endpoint (0 until the first).
fn refusals_metric(gw: &Gateway, reason: &str) -> u64 {
    let metrics = rxgate_e2e::curl(gw.dir.path(), &[&format!("http://{}/metrics", gw.metrics)]);
    assert_eq!(metrics.status, 200);
    let series = format!("rxgate_refusals_total{{reason=\"{reason}\"}} ");
    metrics
        .body_text()
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{series}{v}: {e}"))
        })
}

/// Publishes `value` as fridge-01 with `mosquitto_pub` and waits for the reading at the cloud;
/// returns the time from starting the client to the reading's arrival at the cloud.
fn publish_and_time_arrival(s: &Setup, value: u32) -> Duration {
    let topic = "rxgate/v1/store-0042/devices/fridge-01/telemetry";
    let before = s.backend.json_on(topic).len();
    let started = std::time::SystemTime::now();
    let out = device_pub(
        &s.gw,
        &s.creds,
        "fridge-01",
        "devices/fridge-01/telemetry",
        &format!(r#"{{"points":{{"temperature_c":{value}}}}}"#),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    s.backend
        .wait_for(topic, before + 1, Duration::from_secs(10));
    let (_, payload, arrived) = s
        .backend
        .timed_messages()
        .into_iter()
        .filter(|(t, _, _)| t == topic)
        .nth(before)
        .unwrap();
    let reading: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        reading["points"]["temperature_c"]["value"],
        f64::from(value)
    );
    let started = started
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    Duration::from_micros(arrived.saturating_sub(started))
}

#[test]
fn beyond_max_pending_handshakes_the_oldest_silent_connections_are_dropped_and_a_device_still_gets_through_in_under_a_second()
 {
    // 8 handshakes at once (4 per source); silent peers stay pending for 30 s unless evicted.
    let s = setup_with_mqtt("max_pending_handshakes = 8\nhandshake_timeout = \"30s\"");
    // 20 silent connections from five sources in turn (4 each, within the per-source cap),
    // so the cap at work is the overall one.
    let silent = silent_from((0..20u8).map(|i| [127, 0, 0, 2 + i % 5]), s.gw.mqtt);
    wait_until(
        Duration::from_secs(5),
        "the 12 oldest silent connections to be dropped",
        || (closed(&silent) == (0..12).collect::<Vec<_>>()).then_some(()),
    );
    wait_until(Duration::from_secs(5), "12 evictions counted", || {
        (refusals_metric(&s.gw, "handshake_evicted") == 12).then_some(())
    });
    // And recorded, by source, in the audit trail.
    let entry = wait_for_refusal(&s.gw, "connection.refused", "handshake_evicted");
    assert!(
        entry["source"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.")),
        "{entry}"
    );

    // The device's handshake makes room by dropping the oldest silent one, and completes.
    let took = publish_and_time_arrival(&s, 4);
    assert!(
        took < Duration::from_secs(1),
        "connect, publish and reach the cloud took {took:?}"
    );
    wait_until(Duration::from_secs(5), "the 13th eviction", || {
        (refusals_metric(&s.gw, "handshake_evicted") == 13).then_some(())
    });
    assert_eq!(
        closed(&silent),
        (0..13).collect::<Vec<_>>(),
        "only the oldest silent connection made room for the device"
    );
    drop(silent);
}

#[test]
fn beyond_max_connections_per_source_a_source_is_refused_while_a_device_at_another_address_gets_through_in_under_a_second()
 {
    let s = setup_with_mqtt("max_connections_per_source = 8\nhandshake_timeout = \"30s\"");
    let silent = silent_from([[127, 0, 0, 2]; 20], s.gw.mqtt);
    // The first 8 hold 127.0.0.2's slots (pending handshakes count); the other 12 are closed
    // on accept.
    wait_until(
        Duration::from_secs(5),
        "the 12 connections over the cap to be closed",
        || (closed(&silent) == (8..20).collect::<Vec<_>>()).then_some(()),
    );
    assert_eq!(refusals_metric(&s.gw, "too_many_connections"), 12);
    let entry = wait_for_refusal(&s.gw, "connection.refused", "too_many_connections");
    assert_eq!(entry["source"], "127.0.0.2", "{entry}");

    // A device from 127.0.0.1 is not affected.
    let took = publish_and_time_arrival(&s, 4);
    assert!(
        took < Duration::from_secs(1),
        "connect, publish and reach the cloud took {took:?}"
    );
    // A real client from the saturated address is refused too, and counted.
    let refused = device_pub(
        &s.gw,
        &s.creds,
        "fridge-01",
        "devices/fridge-01/telemetry",
        r#"{"points":{"temperature_c":5}}"#,
        &["-A", "127.0.0.2"],
    );
    assert!(!refused.status.success(), "{}", text(&refused));
    wait_until(Duration::from_secs(5), "the 13th refusal", || {
        (refusals_metric(&s.gw, "too_many_connections") == 13).then_some(())
    });
    assert_eq!(
        closed(&silent),
        (8..20).collect::<Vec<_>>(),
        "the connections holding the slots are left alone"
    );

    // Once the silent peers go, their slots are free again.
    drop(silent);
    let before = wait_until(
        Duration::from_secs(5),
        "127.0.0.2 to be served again",
        || {
            let topic = "rxgate/v1/store-0042/devices/fridge-01/telemetry";
            let before = s.backend.json_on(topic).len();
            let out = device_pub(
                &s.gw,
                &s.creds,
                "fridge-01",
                "devices/fridge-01/telemetry",
                r#"{"points":{"temperature_c":6}}"#,
                &["-A", "127.0.0.2"],
            );
            out.status.success().then_some(before)
        },
    );
    s.backend.wait_for(
        "rxgate/v1/store-0042/devices/fridge-01/telemetry",
        before + 1,
        Duration::from_secs(10),
    );
}

/// Waits, up to `timeout`, for `events` to deliver the CONNACK of its session.
async fn connected(events: &mut rumqttc::EventLoop, timeout: Duration) {
    tokio::time::timeout(timeout, async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("the session did not connect: {e}"),
            }
        }
    })
    .await
    .expect("no CONNACK in time");
}

#[test]
fn of_two_overlapping_sessions_of_one_device_the_cloud_keeps_the_newest_sessions_status() {
    let s = setup();
    let topic = "rxgate/v1/store-0042/devices/fridge-01/status";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let credentials = rxgate_sim::cabinet::Credentials::load(&s.creds).unwrap();
    let options = rxgate_sim::cabinet::mqtt_options(&s.gw.mqtt.to_string(), &credentials).unwrap();
    let newest = runtime.block_on(async {
        // The older session connects, then a newer one with the same identity, as a device
        // does when it reconnects before the gateway noticed the old connection died.
        let (older_client, mut older) = rumqttc::AsyncClient::new(options.clone(), 4);
        connected(&mut older, Duration::from_secs(10)).await;
        let (newer_client, mut newer) = rumqttc::AsyncClient::new(options, 4);
        connected(&mut newer, Duration::from_secs(10)).await;
        let newer_task = tokio::spawn(async move {
            while newer.poll().await.is_ok() {}
            drop(newer_client);
        });
        // The older session's connection now ends without a goodbye.
        drop((older_client, older));
        newer_task.abort_handle()
    });
    let statuses = s.backend.wait_for(topic, 2, Duration::from_secs(10));
    assert_eq!(
        [&statuses[0]["online"], &statuses[1]["online"]],
        [true, true],
        "{statuses:#?}"
    );
    // Give the older session's end every chance to be (wrongly) sent, then ask the cloud what
    // it retained, as a backend starting now would.
    std::thread::sleep(Duration::from_secs(2));
    let fresh = s._cloud.subscribe(topic);
    let retained = fresh.wait_for(topic, 1, Duration::from_secs(10));
    assert_eq!(
        retained[0]["online"],
        true,
        "the device is connected, yet the cloud retained: {retained:#?}; all statuses: {:#?}",
        s.backend.json_on(topic)
    );
    assert_eq!(
        retained[0]["seq"], statuses[1]["seq"],
        "the retained status is the newest session's"
    );
    assert_eq!(
        s.backend.json_on(topic).len(),
        2,
        "no offline status while the newest session is up"
    );
    newest.abort();
}

/// The gateway copies a device's accepted message to the embedded broker only when a filter of
/// the device's own matches it (a device subscribes only under its own prefix): a device
/// subscribed to its own telemetry hears it back, and the message still reaches the cloud once.
#[test]
fn a_device_subscribed_to_its_own_telemetry_hears_it_back_on_the_local_broker() {
    let s = setup();
    let credentials = rxgate_sim::cabinet::Credentials::load(&s.creds).unwrap();
    let options = rxgate_sim::cabinet::mqtt_options(&s.gw.mqtt.to_string(), &credentials).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let heard = runtime.block_on(async {
        let (client, mut events) = rumqttc::AsyncClient::new(options, 16);
        let reading = |t: f64| {
            let client = client.clone();
            async move {
                client
                    .publish(
                        "devices/fridge-01/telemetry",
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        format!(r#"{{"points":{{"temperature_c":{t:.1}}}}}"#),
                    )
                    .await
                    .unwrap();
            }
        };
        // Before it subscribes, nothing of its own comes back.
        reading(4.0).await;
        client
            .subscribe("devices/fridge-01/#", rumqttc::QoS::AtMostOnce)
            .await
            .unwrap();
        let mut heard = Vec::new();
        let mut published = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))) if !published => {
                    reading(4.5).await;
                    published = true;
                }
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                    heard.push((p.topic, String::from_utf8_lossy(&p.payload).into_owned()));
                    break;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("device connection: {e}"),
                Err(_) => break,
            }
        }
        heard
    });
    assert_eq!(
        heard,
        [(
            "devices/fridge-01/telemetry".to_owned(),
            r#"{"points":{"temperature_c":4.5}}"#.to_owned()
        )],
        "the device hears its own reading once subscribed, and only that one"
    );
    let cloud = s.backend.wait_for(
        "rxgate/v1/store-0042/devices/fridge-01/telemetry",
        2,
        Duration::from_secs(10),
    );
    assert_eq!(
        cloud.len(),
        2,
        "each reading reached the cloud once: {cloud:?}"
    );
}
