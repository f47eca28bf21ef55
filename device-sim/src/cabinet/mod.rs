//! A simulated automated dispensing cabinet: publishes controlled-substance access events over
//! MQTT with mutual TLS, using a certificate enrolled from the gateway (`rxgate-sim enroll`).
//!
//! Events follow the device contract (`docs/device-contract.md`): one JSON object per message on
//! `devices/<id>/events`, QoS 1. The cabinet also subscribes to `devices/<id>/rejected` and logs
//! the gateway's reasons for refusing a message.

mod events;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

pub use events::{EventGenerator, Scenario};

/// How to run a cabinet.
#[derive(Debug, Clone)]
pub struct CabinetOptions {
    /// The gateway's device MQTT address, `host:port`.
    pub gateway: String,
    /// Folder holding `device.key`, `device.crt` and `ca.crt` (what `rxgate-sim enroll` wrote).
    pub dir: PathBuf,
    /// Events per second (may be fractional: 0.1 is one every ten seconds).
    pub rate: f64,
    /// Stop after this many events (`None`: until stopped).
    pub count: Option<u64>,
    /// Seed of the event generator, for reproducible runs.
    pub seed: u64,
    /// What kind of events to produce.
    pub scenario: Scenario,
}

/// Errors of the cabinet simulator.
#[derive(Debug, thiserror::Error)]
pub enum CabinetError {
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
    /// The MQTT connection failed and could not be re-established.
    #[error("MQTT: {0}")]
    Mqtt(String),
}

/// What a cabinet run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CabinetStats {
    /// Events acknowledged by the gateway.
    pub acknowledged: u64,
    /// Refusal notices received on `devices/<id>/rejected`.
    pub rejected: u64,
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
    /// Loads `device.key`, `device.crt` and `ca.crt` from `dir`.
    pub fn load(dir: &Path) -> Result<Credentials, CabinetError> {
        let bad = |path: &Path, e: &dyn std::fmt::Display| CabinetError::Credentials {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let (cert_path, key_path, ca_path) = (
            dir.join("device.crt"),
            dir.join("device.key"),
            dir.join("ca.crt"),
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

/// MQTT options for a device connecting to the gateway with `credentials`.
pub fn mqtt_options(gateway: &str, credentials: &Credentials) -> Result<MqttOptions, CabinetError> {
    let (host, port) = gateway
        .rsplit_once(':')
        .and_then(|(h, p)| {
            p.parse::<u16>()
                .ok()
                .map(|p| (h.trim_matches(['[', ']']).to_owned(), p))
        })
        .ok_or_else(|| CabinetError::Address(gateway.to_owned()))?;
    let mut options = MqttOptions::new(credentials.device.clone(), host, port);
    options
        .set_keep_alive(Duration::from_secs(30))
        // A persistent session: messages not yet acknowledged are sent again after a reconnect.
        .set_clean_session(false)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            credentials.tls.clone(),
        )));
    Ok(options)
}

/// Runs a cabinet until `count` events are acknowledged or `stop` turns true.
pub async fn run(
    options: CabinetOptions,
    mut stop: watch::Receiver<bool>,
) -> Result<CabinetStats, CabinetError> {
    let credentials = Credentials::load(&options.dir)?;
    let device = credentials.device.clone();
    let (client, mut events) = AsyncClient::new(mqtt_options(&options.gateway, &credentials)?, 64);
    client
        .subscribe(format!("devices/{device}/rejected"), QoS::AtMostOnce)
        .await
        .map_err(|e| CabinetError::Mqtt(e.to_string()))?;
    let mut generator = EventGenerator::new(options.seed, options.scenario);
    let period = Duration::from_secs_f64(1.0 / options.rate.max(0.001));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stats = CabinetStats::default();
    let mut sent = 0u64;
    let mut failures = 0u32;
    loop {
        if options.count.is_some_and(|n| stats.acknowledged >= n) {
            break;
        }
        tokio::select! {
            _ = stop.changed() => if *stop.borrow() { break },
            _ = tick.tick(), if options.count.is_none_or(|n| sent < n) => {
                let event = generator.next(time::OffsetDateTime::now_utc());
                let payload = serde_json::to_vec(&event).unwrap_or_default();
                if client.publish(format!("devices/{device}/events"), QoS::AtLeastOnce, false, payload).await.is_ok() {
                    sent += 1;
                }
            }
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::PubAck(_))) => stats.acknowledged += 1,
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    stats.rejected += 1;
                    tracing::warn!(device = %device, notice = %String::from_utf8_lossy(&p.payload), "The gateway refused a message.");
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    failures = 0;
                    tracing::info!(device = %device, "Connected to the gateway.");
                }
                Ok(_) => {}
                Err(e) => {
                    failures += 1;
                    tracing::warn!(device = %device, error = %e, "Connection to the gateway failed; retrying.");
                    if failures > 30 {
                        return Err(CabinetError::Mqtt(e.to_string()));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
        }
    }
    let _ = client.disconnect().await;
    Ok(stats)
}
