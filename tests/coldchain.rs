//! Cold-chain alerts end to end: a simulated fridge whose compressor fails, the real gateway
//! polling it, a real SMTP server (aiosmtpd), the GPIO fake seen through the metrics, and
//! mosquitto as the cloud.

use std::path::Path;
use std::time::Duration;

use rxgate_e2e::cloud::{Cloud, Subscription};
use rxgate_e2e::{
    Gateway, curl, failing_fridge, fridge_device_config, mails, smtp_sink, wait_for_mails,
    wait_until, whoami,
};

fn gateway_config(cloud: &Cloud, fridge_port: u16, smtp_port: u16, escalate_after: &str) -> String {
    format!(
        "{}\n[alerts]\nescalate_after = \"{escalate_after}\"\n\
         [alerts.email]\nsmtp_url = \"smtp://127.0.0.1:{smtp_port}\"\nfrom = \"rxgate <rxgate@pharmacy.example>\"\n\
         to = [\"duty@pharmacy.example\"]\nescalation_to = [\"area-manager@pharmacy.example\"]\ntimeout = \"5s\"\n{}",
        cloud.pki.gateway_config(cloud.port),
        fridge_device_config(fridge_port),
    )
}

fn gpio(gw: &Gateway, output: &str) -> bool {
    let metrics = curl(gw.dir.path(), &[&format!("http://{}/metrics", gw.metrics)]).body_text();
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("rxgate_gpio_output{{output=\"{output}\"}}")))
        .is_some_and(|l| l.trim_end().ends_with(" 1"))
}

fn alerts(gw: &Gateway) -> Vec<serde_json::Value> {
    serde_json::from_str::<Vec<serde_json::Value>>(
        &gw.cli_ok(&["alerts", "list", "--all", "--json"]),
    )
    .unwrap()
}

fn cloud_alerts(backend: &Subscription, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
    backend.wait_for("rxgate/v1/store-0042/alerts", n, timeout)
}

#[test]
fn a_compressor_failure_raises_one_alert_mailed_signalled_and_sent_to_the_cloud_and_acknowledgement_silences_it()
 {
    let tmp = tempfile::tempdir().unwrap();
    let mail_dir = tmp.path().join("mail");
    let (_smtp, smtp_port) = smtp_sink(0, &mail_dir);
    let (_fridge, fridge_port) = failing_fridge();
    let cloud = Cloud::start(tmp.path());
    let gw = Gateway::start(&gateway_config(&cloud, fridge_port, smtp_port, "1h"));
    let backend = cloud.subscribe("rxgate/v1/+/alerts");

    let mail = wait_for_mails(&mail_dir, 1, Duration::from_secs(60));
    let listed = alerts(&gw);
    assert_eq!(listed.len(), 1, "one alert for the excursion: {listed:#?}");
    let alert = &listed[0];
    assert_eq!(alert["kind"], "temperature_high");
    assert_eq!(alert["device"], "fridge-01");
    let value = alert["value"].as_f64().unwrap();
    assert!(value > 8.0, "{alert}");
    let started = alert["started"].as_str().unwrap();
    let subject = mail[0]["subject"].as_str().unwrap();
    let body = mail[0]["body"].as_str().unwrap();
    assert!(subject.contains("fridge-01"), "{subject}");
    assert!(body.contains(&format!("{value:.1}")), "the value: {body}");
    assert!(
        body.contains(&started[..19]),
        "the start time {started}: {body}"
    );
    assert_eq!(
        mail[0]["rcpt_tos"],
        serde_json::json!(["duty@pharmacy.example"])
    );

    assert!(
        gpio(&gw, "buzzer") && gpio(&gw, "led"),
        "the GPIO fake is set"
    );
    let sent = cloud_alerts(&backend, 1, Duration::from_secs(10));
    assert_eq!(sent[0]["type"], "alert");
    assert_eq!(sent[0]["event"], "raised");
    assert_eq!(sent[0]["alert"]["id"], alert["id"]);

    let id = alert["id"].as_str().unwrap();
    gw.cli_ok(&[
        "alerts",
        "ack",
        id,
        "--note",
        "Stock moved to backup fridge; service called",
    ]);
    wait_until(Duration::from_secs(5), "the buzzer to stop", || {
        (!gpio(&gw, "buzzer")).then_some(())
    });
    let mails = wait_for_mails(&mail_dir, 2, Duration::from_secs(20));
    // The acknowledger is the operating-system user who ran the command.
    let me = whoami();
    assert!(
        mails[1]["body"]
            .as_str()
            .unwrap()
            .contains(&format!("by {me} at ")),
        "{}",
        mails[1]["body"]
    );
    let sent = cloud_alerts(&backend, 2, Duration::from_secs(10));
    assert_eq!(sent[1]["event"], "acknowledged");
    let audit = gw.cli_ok(&["audit", "export"]);
    let audit: Vec<serde_json::Value> = serde_json::from_str(&audit).unwrap();
    let acks: Vec<_> = audit
        .iter()
        .filter(|e| e["kind"] == "alert.acknowledged")
        .collect();
    assert_eq!(acks.len(), 1, "{audit:#?}");
    assert_eq!(acks[0]["actor"], me.as_str());
    assert_eq!(alerts(&gw).len(), 1, "still one alert");
}

/// Seconds from the alert being raised (its `raised_at`) to `at_us` (µs since the epoch).
fn seconds_after_raised(alert: &serde_json::Value, at_us: u64) -> f64 {
    let raised = alert["raised_at"].as_str().expect("raised_at");
    let raised =
        time::OffsetDateTime::parse(raised, &time::format_description::well_known::Rfc3339)
            .expect("raised_at is RFC 3339");
    at_us as f64 / 1e6 - raised.unix_timestamp_nanos() as f64 / 1e9
}

/// When the first mail in `dir` was written, µs since the epoch.
fn first_mail_written_us(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .min()
        .expect("a mail")
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

#[test]
fn with_the_cloud_down_the_alert_still_reaches_gpio_and_smtp_at_once_and_the_cloud_when_it_returns()
{
    let tmp = tempfile::tempdir().unwrap();
    let mail_dir = tmp.path().join("mail");
    let (_smtp, smtp_port) = smtp_sink(0, &mail_dir);
    let mut cloud = Cloud::start(tmp.path());
    let backend = cloud.subscribe("rxgate/v1/+/alerts");
    cloud.stop();
    let (_fridge, fridge_port) = failing_fridge();
    let gw = Gateway::start(&gateway_config(&cloud, fridge_port, smtp_port, "1h"));

    wait_for_mails(&mail_dir, 1, Duration::from_secs(60));
    assert!(gpio(&gw, "buzzer"));
    // At once: the uplink retrying a dead broker (every second at most here) holds nothing up.
    let alert = &alerts(&gw)[0];
    let mailed_after = seconds_after_raised(alert, first_mail_written_us(&mail_dir));
    assert!(
        mailed_after < 5.0,
        "mailed {mailed_after:.1} s after being raised, with the cloud down"
    );
    cloud.restart();
    let sent = cloud_alerts(&backend, 1, Duration::from_secs(30));
    assert_eq!(sent[0]["event"], "raised");
}

/// An SMTP server that accepts connections and never says a word, as a hung mail relay does,
/// until it is stopped.
struct SilentSmtp {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentSmtp {
    fn start() -> SilentSmtp {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((stream, _)) = listener.accept() {
                    held.push(stream);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        SilentSmtp {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// Closes every connection and the port.
    fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for SilentSmtp {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn with_the_smtp_server_hung_the_other_channels_are_not_delayed_and_the_mail_follows_later() {
    let tmp = tempfile::tempdir().unwrap();
    let mail_dir = tmp.path().join("mail");
    let mut hung = SilentSmtp::start();
    let (_fridge, fridge_port) = failing_fridge();
    let cloud = Cloud::start(tmp.path());
    // A mail relay gets 20 s to answer: anything waiting on it would be 20 s late.
    let config = gateway_config(&cloud, fridge_port, hung.port, "1h")
        .replace("timeout = \"5s\"", "timeout = \"20s\"");
    assert!(config.contains("timeout = \"20s\""));
    let gw = Gateway::start(&config);
    let backend = cloud.subscribe("rxgate/v1/+/alerts");

    let sent = cloud_alerts(&backend, 1, Duration::from_secs(60));
    assert_eq!(sent[0]["event"], "raised");
    assert!(gpio(&gw, "buzzer"));
    let (_, _, arrived_us) = backend
        .timed_messages()
        .into_iter()
        .find(|(t, _, _)| t.ends_with("/alerts"))
        .unwrap();
    let cloud_after = seconds_after_raised(&sent[0]["alert"], arrived_us);
    assert!(
        cloud_after < 5.0,
        "reached the cloud {cloud_after:.1} s after being raised, with the mail relay hung"
    );
    assert!(mails(&mail_dir).is_empty());

    // The relay recovers: the mail follows.
    let port = hung.port;
    hung.stop();
    let (_smtp, _) = smtp_sink(port, &mail_dir);
    let mail = wait_for_mails(&mail_dir, 1, Duration::from_secs(60));
    assert!(mail[0]["subject"].as_str().unwrap().contains("fridge-01"));
}

#[test]
fn an_alert_nobody_acknowledges_is_escalated_to_the_second_contact_list() {
    let tmp = tempfile::tempdir().unwrap();
    let mail_dir = tmp.path().join("mail");
    let (_smtp, smtp_port) = smtp_sink(0, &mail_dir);
    let (_fridge, fridge_port) = failing_fridge();
    let cloud = Cloud::start(tmp.path());
    let gw = Gateway::start(&gateway_config(&cloud, fridge_port, smtp_port, "4s"));

    let mails = wait_for_mails(&mail_dir, 2, Duration::from_secs(60));
    let escalated = &mails[1];
    let recipients = escalated["rcpt_tos"].as_array().unwrap();
    assert!(
        recipients
            .iter()
            .any(|r| r == "area-manager@pharmacy.example"),
        "{escalated}"
    );
    assert!(
        escalated["subject"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("escalat"),
        "{}",
        escalated["subject"]
    );
    assert_eq!(alerts(&gw)[0]["state"], "escalated");
}
