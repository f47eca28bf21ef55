//! The device MQTT listener against real clients (`mosquitto_pub`, `mosquitto_sub`, raw TCP):
//! identity binding, namespaces, refusals recorded, revocation, and silent connections.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path());
    let gw = Gateway::start(&cloud.pki.gateway_config(cloud.port));
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
    let out = s.gw.mosquitto_pub(
        &s.creds,
        "fridge-01",
        "devices/fridge-02/telemetry",
        r#"{"points":{"t":1}}"#,
    );
    assert!(
        out.status.success(),
        "acknowledged but dropped: {}",
        text(&out)
    );
    wait_for_refusal(&s.gw, "message.refused", "topic_denied");
    assert_unaffected(&mut s.gw, &s.creds, &s.backend, 1);
    assert!(
        s.backend
            .messages()
            .iter()
            .all(|(t, _)| !t.contains("fridge-02")),
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
    let logs = s.gw.logs();
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
