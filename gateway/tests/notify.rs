//! The e-mail and webhook deliverers against real peers on loopback: an SMTP server nobody here
//! wrote (aiosmtpd, driven by `smtp_sink.py`: plain, STARTTLS and implicit TLS, with AUTH), and an
//! HTTPS receiver (hyper + rustls) that checks the signature the way a receiver would. The
//! worker is run against both with a real store: a notification waits in the queue while the
//! server is down and is delivered when it comes up.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use rxgate::alerts::config::{EmailConfig, WebhookConfig};
use rxgate::alerts::notify::email::EmailDeliverer;
use rxgate::alerts::notify::webhook::WebhookDeliverer;
use rxgate::alerts::notify::{Deliver, DeliveryError, OnDelivered, Worker};
use rxgate::alerts::{Alert, AlertState, Channel, Event, Notification, NotifyQueue};
use rxgate::clock::ManualClock;
use rxgate::coldchain::{AlertKind, Severity};
use rxgate::store::Store;
use time::macros::datetime;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(30);

fn notification(device: &str) -> Notification {
    let alert = Alert {
        id: Uuid::now_v7(),
        site: "store-0042".to_owned(),
        device: device.to_owned(),
        kind: AlertKind::TemperatureHigh,
        severity: Severity::Critical,
        state: AlertState::Raised,
        active: true,
        started: datetime!(2026-05-01 08:00:00 UTC),
        ended: None,
        raised_at: datetime!(2026-05-01 08:30:00 UTC),
        value: Some(12.4),
        limit: Some(8.0),
        min: None,
        max: None,
        mkt: None,
        low: Some(2.0),
        high: Some(8.0),
        escalated_at: None,
        acknowledged_at: None,
        acknowledged_by: None,
        ack_note: None,
        notified: Vec::new(),
        flag: None,
        detail: None,
        occurrences: 1,
        last_at: None,
        last_detail: None,
        digest_at: None,
        notified_occurrences: 1,
    };
    Notification {
        event: Event::Raised,
        at: alert.raised_at,
        alert,
        escalation: false,
        clock_synced: true,
    }
}

// --- a CA and a server certificate for 127.0.0.1 ------------------------------------------

struct Pki {
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let pki = Pki {
        ca_file: dir.join("ca.pem"),
        cert_file: dir.join("server.pem"),
        key_file: dir.join("server.key"),
    };
    std::fs::write(&pki.ca_file, ca.pem()).unwrap();
    std::fs::write(&pki.cert_file, cert.pem()).unwrap();
    std::fs::write(&pki.key_file, key.serialize_pem()).unwrap();
    pki
}

// --- the SMTP server ------------------------------------------------------------------------

/// A Python 3 that has aiosmtpd: `RXGATE_SMTP_PYTHON`, else Debian's, else `python3` on PATH.
/// Fails (never skips) saying what to install.
async fn python_with_aiosmtpd() -> PathBuf {
    let candidates: Vec<PathBuf> = std::env::var_os("RXGATE_SMTP_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/bin/python3", "python3"].map(PathBuf::from))
        .collect();
    for python in &candidates {
        let ok = Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if ok {
            return python.clone();
        }
    }
    panic!(
        "no Python 3 with aiosmtpd among {candidates:?}: install the Debian package \
         python3-aiosmtpd (scripts/test does), or the PyPI package aiosmtpd and point \
         RXGATE_SMTP_PYTHON at that interpreter"
    );
}

struct SmtpSink {
    port: u16,
    dir: PathBuf,
    /// Held: dropping it kills the server.
    _child: Child,
}

impl SmtpSink {
    /// Starts the sink on `port` (0: any free one), writing messages to `dir`.
    async fn start(port: u16, dir: &Path, options: &[&str]) -> SmtpSink {
        std::fs::create_dir_all(dir).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_sink.py");
        let mut child = Command::new(python_with_aiosmtpd().await)
            .arg(&script)
            .args(["--port", &port.to_string(), "--dir"])
            .arg(dir)
            .args(options)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start smtp_sink.py");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        tokio::time::timeout(DEADLINE, BufReader::new(stdout).read_line(&mut line))
            .await
            .expect("smtp_sink.py says ready in time")
            .expect("read smtp_sink.py's stdout");
        let port = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("smtp_sink.py did not start: {line:?}"));
        SmtpSink {
            port,
            dir: dir.to_owned(),
            _child: child,
        }
    }

    fn messages(&self) -> Vec<serde_json::Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    }

    async fn wait_for(&self, count: usize) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let messages = self.messages();
            if messages.len() >= count {
                return messages;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{count} message(s) did not arrive within {DEADLINE:?}; got {messages:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A loopback port nothing listens on (for a while).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn email_config(toml: &str) -> EmailConfig {
    toml::from_str(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

fn text<'a>(message: &'a serde_json::Value, field: &str) -> &'a str {
    message[field].as_str().unwrap_or_default()
}

#[tokio::test]
async fn email_arrives_at_a_real_smtp_server_with_device_value_and_start_time() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(0, &dir.path().join("mail"), &[]).await;
    let deliverer = EmailDeliverer::build(
        &email_config(&format!(
            r#"
            smtp_url = "smtp://127.0.0.1:{}"
            from = "rxgate store-0042 <alerts@pharmacy.example>"
            to = ["duty@pharmacy.example"]
            "#,
            sink.port
        )),
        "store-0042",
    )
    .unwrap();
    let n = notification("fridge-01");
    deliverer.deliver(&n).await.unwrap();

    let messages = sink.wait_for(1).await;
    let mail = &messages[0];
    assert_eq!(text(mail, "mail_from"), "alerts@pharmacy.example");
    assert_eq!(
        mail["rcpt_tos"],
        serde_json::json!(["duty@pharmacy.example"])
    );
    assert_eq!(
        text(mail, "subject"),
        "[rxgate store-0042] CRITICAL fridge-01: temperature above 8.0 °C (12.4 °C) since 2026-05-01T08:00:00Z"
    );
    let body = text(mail, "body");
    for expected in [
        "Device:         fridge-01",
        "Value:          12.4 °C (limit 8.0 °C)",
        "Started:        2026-05-01T08:00:00Z",
        &format!("rxgate alerts ack {} --note", n.alert.id),
    ] {
        assert!(body.contains(expected), "missing {expected:?} in:\n{body}");
    }
    assert_eq!(mail["headers"]["X-Rxgate-Alert"], n.alert.id.to_string());
}

#[tokio::test]
async fn email_goes_over_starttls_and_implicit_tls_to_a_private_ca_with_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let password_file = dir.path().join("smtp-password");
    std::fs::write(&password_file, "s3cret-pw\n").unwrap();
    for (mode, scheme, query) in [
        ("starttls", "smtp", "?tls=required"),
        ("implicit", "smtps", ""),
    ] {
        let sink = SmtpSink::start(
            0,
            &dir.path().join(mode),
            &[
                "--tls",
                mode,
                "--cert",
                pki.cert_file.to_str().unwrap(),
                "--key",
                pki.key_file.to_str().unwrap(),
                "--auth",
                "alerts@pharmacy.example:s3cret-pw",
            ],
        )
        .await;
        let deliverer = EmailDeliverer::build(
            &email_config(&format!(
                r#"
                smtp_url = "{scheme}://alerts%40pharmacy.example@localhost:{port}{query}"
                password_file = "{password}"
                ca_file = "{ca}"
                from = "alerts@pharmacy.example"
                to = ["duty@pharmacy.example"]
                "#,
                port = sink.port,
                password = password_file.display(),
                ca = pki.ca_file.display(),
            )),
            "store-0042",
        )
        .unwrap();
        deliverer
            .deliver(&notification("fridge-02"))
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        let mail = &sink.wait_for(1).await[0];
        assert_eq!(mail["tls"], true, "{mode}");
        assert_eq!(mail["authenticated"], true, "{mode}");
        assert!(text(mail, "body").contains("fridge-02"));
    }
}

#[tokio::test]
async fn email_to_a_server_with_an_unknown_certificate_is_retried_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let server = pki(dir.path());
    let other = pki(&{
        let d = dir.path().join("other");
        std::fs::create_dir_all(&d).unwrap();
        d
    });
    let sink = SmtpSink::start(
        0,
        &dir.path().join("mail"),
        &[
            "--tls",
            "implicit",
            "--cert",
            server.cert_file.to_str().unwrap(),
            "--key",
            server.key_file.to_str().unwrap(),
        ],
    )
    .await;
    let deliverer = EmailDeliverer::build(
        &email_config(&format!(
            r#"
            smtp_url = "smtps://127.0.0.1:{}"
            ca_file = "{}"
            from = "alerts@pharmacy.example"
            to = ["duty@pharmacy.example"]
            "#,
            sink.port,
            other.ca_file.display()
        )),
        "s1",
    )
    .unwrap();
    let Err(DeliveryError::Retry(reason)) = deliverer.deliver(&notification("fridge-01")).await
    else {
        panic!("a server with an unknown certificate got the mail");
    };
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn email_skips_refused_recipients_and_is_dropped_when_all_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(
        0,
        &dir.path().join("mail"),
        &["--reject-domain", "gone.example"],
    )
    .await;
    let config = |to: &str| {
        email_config(&format!(
            "smtp_url = \"smtp://127.0.0.1:{}\"\nfrom = \"alerts@pharmacy.example\"\nto = {to}\n",
            sink.port
        ))
    };

    let some = EmailDeliverer::build(
        &config(r#"["left@gone.example", "duty@pharmacy.example"]"#),
        "s1",
    )
    .unwrap();
    some.deliver(&notification("fridge-01")).await.unwrap();
    let mail = &sink.wait_for(1).await[0];
    assert_eq!(
        mail["rcpt_tos"],
        serde_json::json!(["duty@pharmacy.example"])
    );

    let none = EmailDeliverer::build(&config(r#"["left@gone.example"]"#), "s1").unwrap();
    let result = none.deliver(&notification("fridge-01")).await;
    let Err(DeliveryError::Drop(reason)) = result else {
        panic!("expected a drop, got {result:?}");
    };
    assert!(
        reason.contains("left@gone.example") && reason.contains("550"),
        "{reason}"
    );
    assert_eq!(sink.messages().len(), 1);
}

/// What the worker reported delivered.
type Delivered = Arc<Mutex<Vec<(Uuid, Channel)>>>;

fn on_delivered() -> (OnDelivered, Delivered) {
    let seen: Delivered = Arc::default();
    let sink = seen.clone();
    (
        Box::new(move |id, channel| sink.lock().unwrap().push((id, channel))),
        seen,
    )
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn worker_keeps_the_email_queued_while_smtp_is_down_and_delivers_when_it_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("rxgate.redb")).unwrap();
    let queue = NotifyQueue::open(store.clone(), vec![Channel::Email]).unwrap();
    let port = free_port();
    let deliverer = EmailDeliverer::build(
        &email_config(&format!(
            "smtp_url = \"smtp://127.0.0.1:{port}\"\nfrom = \"alerts@pharmacy.example\"\n\
             to = [\"duty@pharmacy.example\"]\ntimeout = \"5s\"\n"
        )),
        "store-0042",
    )
    .unwrap();
    let n = notification("fridge-03");
    store.write(|txn| queue.enqueue(txn, &n)).unwrap();
    queue.wake();

    let (callback, delivered) = on_delivered();
    let worker = Worker::new(queue.clone(), deliverer, callback);
    let counters = worker.counters();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(worker.run(shutdown.clone()));

    until("two failed attempts", || counters.retries() >= 2).await;
    assert_eq!(queue.depth(Channel::Email).unwrap(), 1);
    assert!(delivered.lock().unwrap().is_empty());

    let sink = SmtpSink::start(port, &dir.path().join("mail"), &[]).await;
    let mail = &sink.wait_for(1).await[0];
    assert!(text(mail, "body").contains("Device:         fridge-03"));
    until("the queue to empty", || {
        queue.depth(Channel::Email).unwrap() == 0
    })
    .await;
    assert_eq!(*delivered.lock().unwrap(), [(n.alert.id, Channel::Email)]);
    assert_eq!(counters.delivered(), 1);
    shutdown.cancel();
    task.await.unwrap();
}

// --- the webhook receiver -------------------------------------------------------------------

struct Received {
    headers: HeaderMap,
    body: Bytes,
}

struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

/// An HTTPS receiver with `pki`'s server certificate, answering `answers` in turn (then 204).
async fn receiver(pki: &Pki, answers: Vec<u16>) -> Receiver {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert_file)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&pki.key_file).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let answers = Arc::new(Mutex::new(std::collections::VecDeque::from(answers)));
    let state = (received.clone(), answers);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (received, answers) = state.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            received.lock().unwrap().push(Received {
                                headers: parts.headers,
                                body,
                            });
                            let status = answers.lock().unwrap().pop_front().unwrap_or(204);
                            let mut response =
                                Response::new(Full::new(Bytes::from(format!("answer {status}"))));
                            *response.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Receiver { addr, received }
}

const SECRET: &str = "9f2c1e7a5b3d8f604c1a2e9b7d5f3a18";

fn webhook(
    receiver: &Receiver,
    pki: &Pki,
    dir: &Path,
    clock: Arc<ManualClock>,
) -> WebhookDeliverer {
    let secret_file = dir.join("webhook.key");
    // As `openssl rand -hex 16 > webhook.key` would write it: with a newline.
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let config: WebhookConfig = toml::from_str(&format!(
        "url = \"https://localhost:{}/hooks/rxgate?site=store-0042\"\nsecret_file = \"{}\"\n\
         ca_file = \"{}\"\n",
        receiver.addr.port(),
        secret_file.display(),
        pki.ca_file.display()
    ))
    .unwrap();
    WebhookDeliverer::build(&config, clock).unwrap()
}

/// What a receiver does: HMAC-SHA256 over "<timestamp>.<raw body>" with the shared key,
/// compared in constant time.
fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let timestamp = headers["x-rxgate-timestamp"].to_str().unwrap();
    let Some(hex) = headers["x-rxgate-signature"]
        .to_str()
        .unwrap()
        .strip_prefix("sha256=")
    else {
        return false;
    };
    let Some(tag) = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut signed = format!("{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    ring::hmac::verify(&key, &signed, &tag).is_ok()
}

#[tokio::test]
async fn webhook_posts_signed_json_that_verifies_with_the_shared_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let receiver = receiver(&pki, vec![]).await;
    let clock = ManualClock::new(datetime!(2026-05-01 08:30:05 UTC), true);
    let deliverer = webhook(&receiver, &pki, dir.path(), clock);
    let mut n = notification("fridge-01");
    n.event = Event::Escalated;
    n.escalation = true;
    deliverer.deliver(&n).await.unwrap();

    let received = receiver.received.lock().unwrap();
    let [request] = &received[..] else {
        panic!("expected one request, got {}", received.len());
    };
    let h = &request.headers;
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["x-rxgate-event"], "escalated");
    assert_eq!(
        h["x-rxgate-timestamp"],
        datetime!(2026-05-01 08:30:05 UTC)
            .unix_timestamp()
            .to_string()
    );
    assert!(verify(h, &request.body), "signature does not verify");
    let mut tampered = request.body.to_vec();
    tampered[0] = b' ';
    assert!(!verify(h, &tampered), "a changed body must not verify");
    let sent: Notification = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(sent, n);
}

#[tokio::test]
async fn webhook_answers_decide_between_retry_and_drop() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let receiver = receiver(&pki, vec![503, 429, 404, 401, 200]).await;
    let clock = ManualClock::new(datetime!(2026-05-01 08:30:05 UTC), true);
    let deliverer = webhook(&receiver, &pki, dir.path(), clock);
    let n = notification("fridge-01");
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        outcomes.push(match deliverer.deliver(&n).await {
            Ok(()) => "ok".to_owned(),
            Err(DeliveryError::Retry(m)) => format!("retry: {m}"),
            Err(DeliveryError::Drop(m)) => format!("drop: {m}"),
        });
    }
    let kinds: Vec<&str> = outcomes
        .iter()
        .map(|o| o.split(':').next().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["retry", "retry", "drop", "drop", "ok"],
        "{outcomes:#?}"
    );
    assert!(
        outcomes[2].contains("404") && outcomes[2].contains("answer 404"),
        "{}",
        outcomes[2]
    );
}

#[tokio::test]
async fn webhook_to_a_receiver_with_an_unknown_certificate_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = pki(dir.path());
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let impostor = pki(&other_dir);
    let receiver = receiver(&impostor, vec![]).await;
    let clock = ManualClock::new(datetime!(2026-05-01 08:30:05 UTC), true);
    let deliverer = webhook(&receiver, &trusted, dir.path(), clock);
    let result = deliverer.deliver(&notification("fridge-01")).await;
    let Err(DeliveryError::Retry(reason)) = result else {
        panic!("expected a retry, got {result:?}");
    };
    assert!(reason.contains("TLS"), "{reason}");
    assert!(receiver.received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn worker_retries_the_webhook_through_server_errors_until_it_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let receiver = receiver(&pki, vec![500, 502]).await;
    let clock = ManualClock::new(datetime!(2026-05-01 08:30:05 UTC), true);
    let deliverer = webhook(&receiver, &pki, dir.path(), clock);
    let store = Store::create(&dir.path().join("rxgate.redb")).unwrap();
    let queue = NotifyQueue::open(store.clone(), vec![Channel::Webhook]).unwrap();
    let first = notification("fridge-01");
    let second = notification("fridge-02");
    store
        .write(|txn| {
            queue.enqueue(txn, &first)?;
            queue.enqueue(txn, &second)
        })
        .unwrap();
    queue.wake();

    let (callback, delivered) = on_delivered();
    let worker = Worker::new(queue.clone(), deliverer, callback);
    let counters = worker.counters();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(worker.run(shutdown.clone()));
    until("the queue to empty", || {
        queue.depth(Channel::Webhook).unwrap() == 0
    })
    .await;

    assert_eq!(counters.retries(), 2);
    assert_eq!(
        *delivered.lock().unwrap(),
        [
            (first.alert.id, Channel::Webhook),
            (second.alert.id, Channel::Webhook)
        ]
    );
    let devices: Vec<String> = receiver
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::from_slice::<Notification>(&r.body)
                .unwrap()
                .alert
                .device
        })
        .collect();
    assert_eq!(
        devices,
        ["fridge-01", "fridge-01", "fridge-01", "fridge-02"]
    );
    shutdown.cancel();
    task.await.unwrap();
}
