//! A simulated automated dispensing cabinet: publishes controlled-substance access events over
//! MQTT with mutual TLS, using a certificate enrolled from the gateway (`rxgate-sim enroll`).
//!
//! Events follow the device contract (`docs/device-contract.md`): one JSON object per message on
//! `devices/<id>/events`, QoS 1. The cabinet also subscribes to `devices/<id>/rejected` and logs
//! the gateway's reasons for refusing a message.
//!
//! ## Delivery
//! An event counts as delivered once the gateway's PUBACK for it arrives: the gateway sends it
//! only when the event is durable. Until then the cabinet keeps the event. If the connection
//! drops first, the cabinet reconnects (with a growing delay) and sends every unacknowledged
//! event again, in order; the gateway may then forward one twice, so each event carries an
//! `event_id` of its own for the cloud to de-duplicate on. Sessions are clean: rumqttc forgets
//! unacknowledged messages when the broker starts a new session, so resending is the cabinet's
//! job, not the MQTT client's.
//!
//! At most [`WINDOW`] events are handed to the MQTT client at once; behind them at most
//! [`MAX_BACKLOG`] wait (a cabinet that cannot reach the gateway stores its events). When the
//! backlog is full the cabinet produces no new events until the gateway takes some.

mod events;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

pub use events::{EventGenerator, Scenario};

/// Events handed to the MQTT client and not yet acknowledged, at most. Below rumqttc's in-flight
/// limit (100) and its request channel, so handing an event over never blocks.
pub const WINDOW: usize = 32;
/// Events waiting for the gateway, at most, on top of [`WINDOW`].
pub const MAX_BACKLOG: usize = 10_000;
/// Slowest and fastest accepted `rate`, events per second.
pub const RATE_RANGE: (f64, f64) = (0.001, 1000.0);
/// First wait after a failed connection; it doubles up to [`RECONNECT_MAX`].
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// Failed connection attempts in a row after which [`run`] gives up (about 45 s of trying).
pub const MAX_FAILURES: u32 = 8;
/// Time given to a clean stop: the PUBACKs of events in flight, then the MQTT DISCONNECT.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

/// How to run a cabinet.
#[derive(Debug, Clone)]
pub struct CabinetOptions {
    /// The gateway's device MQTT address, `host:port`.
    pub gateway: String,
    /// Folder holding `device.key`, `device.crt` and `ca.crt` (what `rxgate-sim enroll` wrote).
    pub dir: PathBuf,
    /// Events per second (may be fractional: 0.1 is one every ten seconds), within
    /// [`RATE_RANGE`].
    pub rate: f64,
    /// Stop after this many events are acknowledged (`None`: until stopped).
    pub count: Option<u64>,
    /// Seed of the event generator, for reproducible runs.
    pub seed: u64,
    /// What kind of events to produce.
    pub scenario: Scenario,
}

/// Errors of the cabinet simulator.
#[derive(Debug, thiserror::Error)]
pub enum CabinetError {
    /// The folder holds no credentials at all.
    #[error(
        "no device credentials in {}: expected device.key, device.crt and ca.crt; enroll the \
         device first (`rxgate-sim enroll --out {}`)",
        dir.display(),
        dir.display()
    )]
    NotEnrolled {
        /// The folder.
        dir: PathBuf,
    },
    /// A credentials file could not be read.
    #[error("cannot read {path}: {reason}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The device certificate names no device.
    #[error("{0}")]
    Identity(String),
    /// TLS setup failed.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The gateway address is malformed.
    #[error("gateway address {0:?} must be host:port")]
    Address(String),
    /// The event rate is out of range.
    #[error("rate {0} must be between 0.001 and 1000 events per second")]
    Rate(f64),
    /// The MQTT connection failed and could not be re-established.
    #[error("MQTT: {0}")]
    Mqtt(String),
}

/// What a cabinet run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CabinetStats {
    /// Events produced.
    pub generated: u64,
    /// Events acknowledged by the gateway (refused ones included: the gateway acknowledges
    /// those too, and says why on `devices/<id>/rejected`).
    pub acknowledged: u64,
    /// Refusal notices received on `devices/<id>/rejected`.
    pub rejected: u64,
    /// Whether the cabinet holds a session with the gateway now.
    pub connected: bool,
}

impl CabinetStats {
    /// Events produced but not acknowledged (still waiting, or abandoned when stopped).
    pub fn unacknowledged(&self) -> u64 {
        self.generated.saturating_sub(self.acknowledged)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CabinetError> {
    std::fs::read(path).map_err(|e| CabinetError::Credentials {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Loaded device credentials and the TLS configuration built from them.
pub struct Credentials {
    /// The device id (the certificate's common name).
    pub device: String,
    /// TLS towards the gateway: verify it with `ca.crt`, present `device.crt`.
    pub tls: Arc<rustls::ClientConfig>,
}

impl Credentials {
    /// The files `rxgate-sim enroll` writes into a device's folder.
    pub const FILES: [&str; 3] = [
        crate::est::KEY_FILE,
        crate::est::CERT_FILE,
        crate::est::CA_FILE,
    ];

    /// Whether `dir` holds all three credential files (it may still hold unusable ones).
    pub fn exist(dir: &Path) -> bool {
        Self::FILES.iter().all(|f| dir.join(f).is_file())
    }

    /// Loads `device.key`, `device.crt` and `ca.crt` from `dir`.
    pub fn load(dir: &Path) -> Result<Credentials, CabinetError> {
        if !Self::FILES.iter().any(|f| dir.join(f).exists()) {
            return Err(CabinetError::NotEnrolled {
                dir: dir.to_owned(),
            });
        }
        let bad = |path: &Path, e: &dyn std::fmt::Display| CabinetError::Credentials {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let (cert_path, key_path, ca_path) = (
            dir.join(crate::est::CERT_FILE),
            dir.join(crate::est::KEY_FILE),
            dir.join(crate::est::CA_FILE),
        );
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read(&cert_path)?)
                .collect::<Result<_, _>>()
                .map_err(|e| bad(&cert_path, &e))?;
        let key =
            PrivateKeyDer::from_pem_slice(&read(&key_path)?).map_err(|e| bad(&key_path, &e))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&read(&ca_path)?) {
            roots
                .add(ca.map_err(|e| bad(&ca_path, &e))?)
                .map_err(|e| bad(&ca_path, &e))?;
        }
        let leaf = chain
            .first()
            .ok_or_else(|| bad(&cert_path, &"no certificate in the file"))?;
        let device = rxgate_certs::device_identity(leaf)
            .map_err(|e| CabinetError::Identity(e.to_string()))?
            .device_id;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| CabinetError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| CabinetError::Tls(e.to_string()))?;
        Ok(Credentials {
            device,
            tls: Arc::new(tls),
        })
    }
}

/// MQTT options for a device connecting to the gateway with `credentials`: client id = device
/// id, 30 s keep-alive, clean session, TLS with the device certificate.
pub fn mqtt_options(gateway: &str, credentials: &Credentials) -> Result<MqttOptions, CabinetError> {
    let (host, port) = gateway
        .rsplit_once(':')
        .and_then(|(h, p)| {
            p.parse::<u16>()
                .ok()
                .map(|p| (h.trim_matches(['[', ']']).to_owned(), p))
        })
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| CabinetError::Address(gateway.to_owned()))?;
    let mut options = MqttOptions::new(credentials.device.clone(), host, port);
    options
        .set_keep_alive(Duration::from_secs(30))
        // rumqttc drops what was not acknowledged whenever the broker starts a new session, and
        // keeps nothing across restarts: the device resends itself (see the module docs), so a
        // persistent session would only add rumqttc's own retransmissions as duplicates.
        .set_clean_session(true)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            credentials.tls.clone(),
        )));
    Ok(options)
}

/// The time between events at `rate` events per second.
fn period(rate: f64) -> Result<Duration, CabinetError> {
    let (min, max) = RATE_RANGE;
    if !(min..=max).contains(&rate) {
        return Err(CabinetError::Rate(rate));
    }
    Ok(Duration::from_secs_f64(1.0 / rate))
}

/// Runs a cabinet until `count` events are acknowledged or `stop` turns true.
pub async fn run(
    options: CabinetOptions,
    stop: watch::Receiver<bool>,
) -> Result<CabinetStats, CabinetError> {
    run_observed(options, stop, watch::Sender::new(CabinetStats::default())).await
}

/// [`run`], publishing the running totals on `stats` as they change (for a load generator's
/// reports).
pub async fn run_observed(
    options: CabinetOptions,
    mut stop: watch::Receiver<bool>,
    stats: watch::Sender<CabinetStats>,
) -> Result<CabinetStats, CabinetError> {
    let period = period(options.rate)?;
    let credentials = Credentials::load(&options.dir)?;
    let device = credentials.device.clone();
    let (client, mut eventloop) =
        AsyncClient::new(mqtt_options(&options.gateway, &credentials)?, 2 * WINDOW);
    let mut session = Session {
        topic: format!("devices/{device}/events"),
        rejected_topic: format!("devices/{device}/rejected"),
        device,
        queue: VecDeque::new(),
        outstanding: VecDeque::new(),
        stats: CabinetStats::default(),
        observer: stats,
    };
    let mut generator = EventGenerator::new(options.seed, options.scenario);
    // Event ids: unique across runs (the start time) and within a run (a counter).
    let run_id = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    let mut backoff = RECONNECT_MIN;
    let mut holding = false;

    let outcome = loop {
        if options
            .count
            .is_some_and(|n| session.stats.acknowledged >= n)
        {
            break Ok(());
        }
        if session.stats.connected {
            session.hand_over(&client);
        }
        let backlog = session.queue.len() + session.outstanding.len();
        if backlog >= MAX_BACKLOG + WINDOW && !holding {
            tracing::warn!(device = %session.device, backlog, "The gateway takes no events; holding them and producing no more until it does.");
        }
        holding = backlog >= MAX_BACKLOG + WINDOW;
        let produce = !holding && options.count.is_none_or(|n| session.stats.generated < n);
        tokio::select! {
            () = stop_requested(&mut stop) => break Ok(()),
            _ = tick.tick(), if produce => {
                let mut event = generator.next(time::OffsetDateTime::now_utc());
                event["event_id"] = format!("{run_id:x}-{}", session.stats.generated + 1).into();
                // Serialising a `Value` cannot fail.
                session.queue.push_back(serde_json::to_vec(&event).unwrap_or_default());
                session.stats.generated += 1;
                session.publish_stats();
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    failures = 0;
                    backoff = RECONNECT_MIN;
                    session.stats.connected = true;
                    session.publish_stats();
                    tracing::info!(device = %session.device, gateway = %options.gateway, "Connected to the gateway.");
                    if let Err(e) = client.try_subscribe(session.rejected_topic.clone(), QoS::AtMostOnce) {
                        tracing::warn!(device = %session.device, error = %e, "Cannot subscribe to refusal notices.");
                    }
                }
                Ok(event) => session.on_event(&event),
                Err(e) => {
                    session.disconnected();
                    failures += 1;
                    if failures >= MAX_FAILURES {
                        break Err(CabinetError::Mqtt(format!(
                            "cannot connect to the gateway at {} ({failures} attempts in a row): {e}",
                            options.gateway
                        )));
                    }
                    tracing::warn!(
                        device = %session.device,
                        error = %e,
                        retry_in = ?backoff,
                        waiting = session.queue.len(),
                        "Connection to the gateway failed; retrying."
                    );
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop_requested(&mut stop) => break Ok(()),
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            },
        }
    };

    if session.stats.connected {
        // Stop cleanly: wait for the PUBACKs of the events in flight (events not sent yet stay
        // unsent), then let the DISCONNECT go out, so the gateway reports the device offline at
        // once. Notices arriving meanwhile are counted.
        let _ = tokio::time::timeout(DISCONNECT_GRACE, async {
            while !session.outstanding.is_empty() {
                match eventloop.poll().await {
                    Ok(event) => session.on_event(&event),
                    Err(_) => return,
                }
            }
            if client.try_disconnect().is_err() {
                return;
            }
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(event) => session.on_event(&event),
                }
            }
        })
        .await;
    }
    session.stats.connected = false;
    session.publish_stats();
    outcome.map(|()| session.stats)
}

/// Resolves once `stop` is true; never, if its sender is gone (nobody can ask any more).
pub(crate) async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The events of one cabinet between generation and acknowledgement.
struct Session {
    device: String,
    topic: String,
    rejected_topic: String,
    /// Produced (or to be sent again), not handed to the MQTT client yet, oldest first.
    queue: VecDeque<Vec<u8>>,
    /// Handed to the MQTT client in this connection, oldest first, awaiting PUBACK.
    outstanding: VecDeque<Vec<u8>>,
    stats: CabinetStats,
    observer: watch::Sender<CabinetStats>,
}

impl Session {
    fn publish_stats(&self) {
        self.observer.send_replace(self.stats);
    }

    /// Hands queued events to the client, up to [`WINDOW`] unacknowledged.
    fn hand_over(&mut self, client: &AsyncClient) {
        while self.outstanding.len() < WINDOW {
            let Some(payload) = self.queue.pop_front() else {
                break;
            };
            match client.try_publish(&self.topic, QoS::AtLeastOnce, false, payload.clone()) {
                Ok(()) => self.outstanding.push_back(payload),
                Err(_) => {
                    self.queue.push_front(payload);
                    break;
                }
            }
        }
    }

    fn on_event(&mut self, event: &Event) {
        match event {
            Event::Incoming(Packet::PubAck(_)) => self.acknowledged(),
            Event::Incoming(Packet::Publish(p)) if p.topic == self.rejected_topic => {
                self.stats.rejected += 1;
                self.publish_stats();
                let notice: serde_json::Value =
                    serde_json::from_slice(&p.payload).unwrap_or_default();
                tracing::warn!(
                    device = %self.device,
                    reason = %notice["reason"].as_str().map_or_else(|| String::from_utf8_lossy(&p.payload).into_owned(), str::to_owned),
                    "The gateway refused a message."
                );
            }
            _ => {}
        }
    }

    /// A broker acknowledges QoS 1 messages in the order it received them (MQTT 3.1.1 §4.6), so
    /// a PUBACK is for the oldest outstanding event.
    fn acknowledged(&mut self) {
        if self.outstanding.pop_front().is_some() {
            self.stats.acknowledged += 1;
            self.publish_stats();
        }
    }

    /// The connection is gone: rumqttc will drop what it had not got acknowledged (clean
    /// session), so everything outstanding goes back to the front of the queue, in order.
    fn disconnected(&mut self) {
        while let Some(payload) = self.outstanding.pop_back() {
            self.queue.push_front(payload);
        }
        if self.stats.connected {
            self.stats.connected = false;
            self.publish_stats();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_outside_the_range_are_refused() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e6, 0.0001] {
            assert!(matches!(period(rate), Err(CabinetError::Rate(_))), "{rate}");
        }
        assert_eq!(period(0.2).unwrap(), Duration::from_secs(5));
        assert_eq!(period(1000.0).unwrap(), Duration::from_millis(1));
    }

    #[test]
    fn a_lost_connection_puts_outstanding_events_back_first_in_order() {
        let mut session = Session {
            device: "cab-1".to_owned(),
            topic: "devices/cab-1/events".to_owned(),
            rejected_topic: "devices/cab-1/rejected".to_owned(),
            queue: VecDeque::from([b"3".to_vec()]),
            outstanding: VecDeque::from([b"1".to_vec(), b"2".to_vec()]),
            stats: CabinetStats {
                connected: true,
                ..CabinetStats::default()
            },
            observer: watch::Sender::new(CabinetStats::default()),
        };
        session.on_event(&Event::Incoming(Packet::PubAck(rumqttc::PubAck::new(1))));
        session.disconnected();
        assert_eq!(session.queue, [b"2".to_vec(), b"3".to_vec()]);
        assert!(session.outstanding.is_empty());
        assert_eq!(session.stats.acknowledged, 1);
        assert!(!session.observer.borrow().connected);
    }

    #[test]
    fn a_folder_without_credentials_is_reported_as_not_enrolled() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Credentials::load(dir.path()),
            Err(CabinetError::NotEnrolled { .. })
        ));
        assert!(!Credentials::exist(dir.path()));
    }

    #[test]
    fn gateway_addresses_need_a_host_and_a_port() {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let credentials = Credentials {
            device: "cab-1".to_owned(),
            tls: Arc::new(tls),
        };
        let options = mqtt_options("127.0.0.1:8883", &credentials).unwrap();
        assert_eq!(options.broker_address(), ("127.0.0.1".to_owned(), 8883));
        assert_eq!(options.client_id(), "cab-1");
        assert!(options.clean_session());
        let options = mqtt_options("[::1]:18883", &credentials).unwrap();
        assert_eq!(options.broker_address(), ("::1".to_owned(), 18883));
        for bad in ["127.0.0.1", ":8883", "host:port", "host:70000"] {
            assert!(
                matches!(
                    mqtt_options(bad, &credentials),
                    Err(CabinetError::Address(_))
                ),
                "{bad}"
            );
        }
    }
}
