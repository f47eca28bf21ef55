//! Device-facing MQTT on `[mqtt].listen`: TLS with gateway-issued client certificates only.
//!
//! rxgate terminates TLS itself (rumqttd 0.20 loads no CRL, handshakes inside its accept loop
//! with no timeout, has no per-topic ACL and its auth hook never sees the certificate; see
//! DESIGN.md). Each authenticated session is relayed to an embedded rumqttd on a loopback port
//! that only rxgate can log in to (a random password made at start-up). On the way, rxgate:
//! - binds identity: the CONNECT client id must be the certificate's device id;
//! - confines the device to `devices/<id>/` for PUBLISH, SUBSCRIBE and its last will;
//! - takes telemetry and events off the relay, makes them durable through the pipeline and only
//!   then acknowledges them itself (rumqttd gets a QoS 0 copy for local subscribers);
//! - drops the session the moment the device is revoked.
//!
//! Everything else (subscriptions, retained messages, deliveries to the device) is rumqttd's.

mod config;
pub use config::MqttConfig;

mod acl;
pub mod payload;
mod session;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::audit::{Kind, Refusal, Refusals};
use crate::error::{Error, Result};
use crate::message::Ingest;
use crate::net::{self, Dropped, Limits};
use crate::pki::GatewayPki;
use crate::registry::Registry;
use crate::tls::{DeviceCertVerifier, server_config};

pub use acl::{Denied, PublishKind};

/// Largest MQTT packet accepted from a device.
const MAX_PACKET: usize = 256 * 1024;
/// User name rxgate logs in to the embedded broker with.
const RELAY_USER: &str = "rxgate-relay";

/// Settings every session shares.
pub(crate) struct Shared {
    pub registry: Registry,
    pub ingest: Ingest,
    pub refusals: Refusals,
    pub site: String,
    pub relay: SocketAddr,
    pub relay_password: String,
    pub connect_timeout: Duration,
    /// Per device, the generation of its newest session: only that session reports the device
    /// offline. Held while a session starts or ends and queues the device's status, so the
    /// statuses reach the outbox (and get their `seq`) in the order the sessions came and went.
    pub sessions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<u64>>>>,
    /// Per device, its TLS sessions still waiting for their CONNECT, oldest first.
    pub awaiting_connect: Arc<Mutex<AwaitingConnect>>,
    /// Per device, the retained messages it keeps on the local broker: topic → payload bytes.
    pub retained: Mutex<HashMap<String, HashMap<String, usize>>>,
    /// Per device, the topics and subscription filters it has used on the local broker.
    /// rumqttd keeps a log for each for as long as it runs, so their number is bounded.
    pub local_topics: Mutex<HashMap<String, HashSet<String>>>,
}

/// The largest payload of a message that stays on the local broker.
pub const MAX_LOCAL_PAYLOAD: usize = 64 * 1024;
/// Retained messages one device may keep on the local broker, and their payload bytes in all:
/// the embedded broker holds them in memory, so one device must not be able to fill it.
pub const MAX_RETAINED_PER_DEVICE: usize = 32;
pub const MAX_RETAINED_BYTES_PER_DEVICE: usize = 256 * 1024;
/// Topics and subscription filters one device may use on the local broker while the gateway
/// runs. The embedded broker keeps an in-memory log for every topic and filter it has seen and
/// never forgets one, so without this bound a device publishing to ever new topics under
/// `devices/<id>/` would exhaust the Pi's memory.
pub const MAX_LOCAL_TOPICS_PER_DEVICE: usize = 32;
/// What the embedded broker keeps of each topic's messages for local subscribers: two segments of
/// this size (plus the message that overflows one). A local subscriber that falls further behind
/// skips ahead; the cloud path does not go through these logs (the outbox is its store).
const LOCAL_SEGMENT_BYTES: usize = 16 * 1024;
const LOCAL_SEGMENTS: usize = 2;

/// Why a message for the local broker was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LocalRefusal {
    #[error(
        "a payload of {bytes} bytes is over the {MAX_LOCAL_PAYLOAD}-byte limit of local messages"
    )]
    TooLarge { bytes: usize },
    #[error(
        "the device keeps {count} retained messages ({bytes} bytes) on the gateway; at most {MAX_RETAINED_PER_DEVICE} and {MAX_RETAINED_BYTES_PER_DEVICE} bytes: clear one (publish an empty retained message on its topic) first"
    )]
    RetainedFull { count: usize, bytes: usize },
    #[error(
        "the device has used {MAX_LOCAL_TOPICS_PER_DEVICE} topics and subscription filters on the gateway since it started, the most one device may; {topic:?} would be one more"
    )]
    TooManyTopics { topic: String },
}

impl LocalRefusal {
    pub fn class(&self) -> &'static str {
        match self {
            LocalRefusal::TooLarge { .. } => "local_too_large",
            LocalRefusal::RetainedFull { .. } => "retained_limit",
            LocalRefusal::TooManyTopics { .. } => "topic_limit",
        }
    }
}

/// TLS sessions that have not sent their CONNECT yet may hold a device's certificate at most
/// [`MAX_AWAITING_CONNECT`] times: a newer one evicts the oldest. So one certificate (stolen, or
/// a device in a reconnect loop) cannot hold the listener's slots, while a device reconnecting
/// before the gateway saw its old connection die still gets in.
pub const MAX_AWAITING_CONNECT: usize = 2;

#[derive(Default)]
pub(crate) struct AwaitingConnect {
    next: u64,
    by_device: HashMap<String, std::collections::VecDeque<(u64, CancellationToken)>>,
}

/// A session's place among its device's sessions awaiting CONNECT; gives it up when dropped.
pub(crate) struct ConnectTicket {
    all: Arc<Mutex<AwaitingConnect>>,
    device: String,
    n: u64,
    /// Cancelled when a newer session of the same device evicts this one.
    pub evicted: CancellationToken,
}

impl ConnectTicket {
    pub fn take(all: &Arc<Mutex<AwaitingConnect>>, device: &str) -> ConnectTicket {
        let mut guard = all.lock().unwrap_or_else(|e| e.into_inner());
        let n = guard.next;
        guard.next += 1;
        let waiting = guard.by_device.entry(device.to_owned()).or_default();
        while waiting.len() >= MAX_AWAITING_CONNECT {
            if let Some((_, oldest)) = waiting.pop_front() {
                oldest.cancel();
            }
        }
        let evicted = CancellationToken::new();
        waiting.push_back((n, evicted.clone()));
        ConnectTicket {
            all: all.clone(),
            device: device.to_owned(),
            n,
            evicted,
        }
    }
}

impl Drop for ConnectTicket {
    fn drop(&mut self) {
        let mut guard = self.all.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiting) = guard.by_device.get_mut(&self.device) {
            waiting.retain(|(n, _)| *n != self.n);
            if waiting.is_empty() {
                guard.by_device.remove(&self.device);
            }
        }
    }
}

impl Shared {
    /// Checks a message `device` publishes for the local broker against the payload cap and,
    /// if it is retained, the device's retained allowance, which it then updates (an empty
    /// retained payload clears the topic's retained message and gives its room back).
    pub fn local_limits(
        &self,
        device: &str,
        topic: &str,
        bytes: usize,
        retain: bool,
    ) -> std::result::Result<(), LocalRefusal> {
        if bytes > MAX_LOCAL_PAYLOAD {
            return Err(LocalRefusal::TooLarge { bytes });
        }
        self.admit_local_topics(device, &[topic])?;
        if !retain {
            return Ok(());
        }
        let mut all = self.retained.lock().unwrap_or_else(|e| e.into_inner());
        let kept = all.entry(device.to_owned()).or_default();
        if bytes == 0 {
            kept.remove(topic);
            return Ok(());
        }
        let count = kept.len() + usize::from(!kept.contains_key(topic));
        let total = kept.values().sum::<usize>() - kept.get(topic).copied().unwrap_or(0) + bytes;
        if count > MAX_RETAINED_PER_DEVICE || total > MAX_RETAINED_BYTES_PER_DEVICE {
            return Err(LocalRefusal::RetainedFull {
                count: kept.len(),
                bytes: kept.values().sum(),
            });
        }
        kept.insert(topic.to_owned(), bytes);
        Ok(())
    }

    /// Whether a copy of `device`'s message on `topic` has anyone to reach on the local broker:
    /// a device subscribes only under its own prefix, so only a filter of its own can match.
    /// A retained message is always copied, for whoever subscribes later. Without a copy the
    /// embedded broker keeps no log for the topic and does no work for the message.
    pub fn copy_wanted(&self, device: &str, topic: &str, retain: bool) -> bool {
        retain
            || self
                .local_topics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(device)
                .is_some_and(|used| {
                    used.iter()
                        .any(|filter| rumqttc::mqttbytes::matches(topic, filter))
                })
    }

    /// Admits `topics` (publish topics or subscription filters) for `device` on the local broker:
    /// all of them, or none if they would take it past [`MAX_LOCAL_TOPICS_PER_DEVICE`]. Topics it
    /// used before are always admitted again.
    pub fn admit_local_topics(
        &self,
        device: &str,
        topics: &[&str],
    ) -> std::result::Result<(), LocalRefusal> {
        let mut all = self.local_topics.lock().unwrap_or_else(|e| e.into_inner());
        let used = all.entry(device.to_owned()).or_default();
        let new: HashSet<&str> = topics
            .iter()
            .copied()
            .filter(|t| !used.contains(*t))
            .collect();
        if used.len() + new.len() > MAX_LOCAL_TOPICS_PER_DEVICE {
            let topic = new.into_iter().next().unwrap_or_default().to_owned();
            return Err(LocalRefusal::TooManyTopics { topic });
        }
        used.extend(new.into_iter().map(str::to_owned));
        Ok(())
    }

    /// `id`'s newest session generation, behind the lock ordering its status changes.
    pub fn newest_session(&self, id: &str) -> Arc<tokio::sync::Mutex<u64>> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }
}

/// The device MQTT listener and its embedded broker, ready to run.
pub struct DeviceBroker {
    local: Option<rumqttd::local::LinkTx>,
    policy_link: Option<rumqttd::local::LinkTx>,
    /// `None` when `[mqtt].enabled = false`: no device connects; the embedded broker runs.
    listener: Option<TcpListener>,
    acceptor: TlsAcceptor,
    limits: Limits,
    shared: Arc<Shared>,
}

fn random_password() -> Result<String> {
    let mut bytes = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| Error::Invalid("the system random number generator failed".to_owned()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A free loopback port for the embedded broker (rumqttd binds by address, inside its own
/// thread, and cannot report an ephemeral port back).
fn free_loopback_port() -> Result<SocketAddr> {
    let probe = StdTcpListener::bind(("127.0.0.1", 0)).map_err(|source| Error::Io {
        action: "cannot find a loopback port for",
        path: "the embedded broker".into(),
        source,
    })?;
    probe.local_addr().map_err(|source| Error::Io {
        action: "cannot read the address of",
        path: "the embedded broker probe".into(),
        source,
    })
}

/// rumqttd settings sized for a Raspberry Pi.
fn relay_config(listen: SocketAddr, password: &str, max_connections: usize) -> rumqttd::Config {
    let mut auth = HashMap::new();
    auth.insert(RELAY_USER.to_owned(), password.to_owned());
    let server = rumqttd::ServerSettings {
        name: "rxgate-relay".to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: MAX_PACKET,
            max_inflight_count: 64,
            auth: Some(auth),
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let mut v4 = HashMap::new();
    v4.insert("relay".to_owned(), server);
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: max_connections + 16,
            max_outgoing_packet_count: 200,
            max_segment_size: LOCAL_SEGMENT_BYTES,
            max_segment_count: LOCAL_SEGMENTS,
            ..Default::default()
        },
        v4: Some(v4),
        ..Default::default()
    }
}

impl DeviceBroker {
    /// Starts the embedded broker on loopback and binds `[mqtt].listen` (unless the listener
    /// is off), for the devices of `site`.
    pub async fn build(
        site: &str,
        m: &MqttConfig,
        registry: Registry,
        pki: &GatewayPki,
        ingest: Ingest,
        refusals: Refusals,
    ) -> Result<DeviceBroker> {
        let listener =
            net::bind_if(m.enabled, m.listen, "cannot listen for device MQTT on").await?;
        let verifier = DeviceCertVerifier::new(&pki.ca.chain_der(), true)?;
        let tls = server_config(
            pki.server_chain.clone(),
            pki.server_key.clone_key(),
            verifier,
            &[b"mqtt"],
        )?;

        let password = random_password()?;
        let relay = free_loopback_port()?;
        let mut broker =
            rumqttd::Broker::new(relay_config(relay, &password, m.max_connections.get()));
        // A local link for rxgate's own messages to devices (alerts for their displays).
        let mut links = Vec::new();
        for name in ["rxgate-alerts", "rxgate-policy"] {
            let (link, mut link_rx) = broker
                .link(name)
                .map_err(|e| Error::Invalid(format!("embedded broker: {e}")))?;
            tokio::spawn(async move {
                // Nothing is subscribed on these links; drain what the router sends back.
                while link_rx.next().await.is_ok() {}
            });
            links.push(link);
        }
        let policy_link = links.pop();
        let local = links.pop();
        std::thread::Builder::new()
            .name("rumqttd".to_owned())
            .spawn(move || {
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "The embedded broker stopped.");
                }
            })
            .map_err(|source| Error::Io {
                action: "cannot start a thread for",
                path: "the embedded broker".into(),
                source,
            })?;
        wait_for(relay, &password).await?;

        Ok(DeviceBroker {
            local,
            policy_link,
            listener,
            acceptor: TlsAcceptor::from(tls),
            limits: Limits {
                handshake_timeout: m.handshake_timeout,
                max_pending_handshakes: m.max_pending_handshakes.get(),
                max_pending_per_source: m.max_pending_handshakes.get().div_ceil(2),
                max_connections: m.max_connections.get(),
                max_connections_per_source: m.max_connections_per_source.get(),
            },
            shared: Arc::new(Shared {
                registry,
                ingest,
                refusals,
                site: site.to_owned(),
                relay,
                relay_password: password,
                connect_timeout: m.connect_timeout,
                sessions: Mutex::new(HashMap::new()),
                awaiting_connect: Arc::default(),
                retained: Mutex::new(HashMap::new()),
                local_topics: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The link publishing into the embedded broker as rxgate itself (taken once).
    pub fn take_local_link(&mut self) -> Option<rumqttd::local::LinkTx> {
        self.local.take()
    }

    /// A second link, for the policy's local routes (taken once).
    pub fn take_policy_link(&mut self) -> Option<rumqttd::local::LinkTx> {
        self.policy_link.take()
    }

    /// Where the device MQTT listener is bound; `None` when it is off.
    pub fn local_addr(&self) -> Result<Option<SocketAddr>> {
        self.listener
            .as_ref()
            .map(|l| {
                l.local_addr().map_err(|source| Error::Io {
                    action: "cannot read the address of",
                    path: "the device MQTT listener".into(),
                    source,
                })
            })
            .transpose()
    }

    /// Serves devices until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let Some(listener) = self.listener else {
            shutdown.cancelled().await;
            return;
        };
        let refusals = self.shared.refusals.clone();
        let shared = self.shared.clone();
        let session_shutdown = shutdown.clone();
        net::serve_tls(
            "mqtt",
            listener,
            self.acceptor,
            self.limits,
            shutdown,
            move |peer, why| match why {
                Dropped::HandshakeFailed(reason) => refusals.record(Refusal {
                    kind: Kind::ConnectionRefused,
                    device: None,
                    source: Some(peer.ip()),
                    class: "tls_handshake",
                    reason: format!("TLS handshake failed: {reason}"),
                    claimed_device: None,
                }),
                other => refusals.record(Refusal {
                    kind: Kind::ConnectionRefused,
                    device: None,
                    source: Some(peer.ip()),
                    class: other.as_str(),
                    reason: match other {
                        Dropped::HandshakeTimeout => "no TLS handshake in time".to_owned(),
                        Dropped::Evicted => "TLS handshake dropped, the oldest of too many \
                                             in progress ([mqtt].max_pending_handshakes)"
                            .to_owned(),
                        Dropped::TooManyFromSource => "too many connections from this address \
                                                       ([mqtt].max_connections_per_source)"
                            .to_owned(),
                        Dropped::HandshakeFailed(reason) => reason,
                    },
                    claimed_device: None,
                }),
            },
            move |tls, peer| session::serve(shared.clone(), tls, peer, session_shutdown.clone()),
        )
        .await;
    }
}

/// Waits until the embedded broker accepts an MQTT session (connect, CONNACK, disconnect).
async fn wait_for(addr: SocketAddr, password: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match probe(addr, password).await {
            Ok(()) => return Ok(()),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(source) => {
                return Err(Error::Io {
                    action: "the embedded broker did not start on",
                    path: addr.to_string().into(),
                    source,
                });
            }
        }
    }
}

async fn probe(addr: SocketAddr, password: &str) -> std::io::Result<()> {
    use rumqttc::mqttbytes::v4::{Connect, Login, Packet};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut connect = Connect::new("rxgate-probe");
    connect.login = Some(Login::new(RELAY_USER, password));
    let mut out = bytes::BytesMut::new();
    Packet::Connect(connect)
        .write(&mut out, 1024)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    stream.write_all(&out).await?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await?;
    if connack[0] != 0x20 || connack[3] != 0 {
        return Err(std::io::Error::other(
            "the embedded broker refused the probe",
        ));
    }
    stream.write_all(&[0xE0, 0x00]).await?;
    let _ = stream.read(&mut connack).await;
    Ok(())
}

#[cfg(test)]
mod connect_ticket_tests {
    use super::*;

    #[test]
    fn a_third_session_of_one_certificate_awaiting_connect_evicts_the_oldest_only() {
        let all = Arc::new(Mutex::new(AwaitingConnect::default()));
        let first = ConnectTicket::take(&all, "cabinet-01");
        let other = ConnectTicket::take(&all, "fridge-01");
        let second = ConnectTicket::take(&all, "cabinet-01");
        assert!(!first.evicted.is_cancelled() && !second.evicted.is_cancelled());
        let third = ConnectTicket::take(&all, "cabinet-01");
        assert!(first.evicted.is_cancelled(), "the oldest makes room");
        assert!(!second.evicted.is_cancelled() && !third.evicted.is_cancelled());
        assert!(!other.evicted.is_cancelled(), "another device is untouched");
        drop((first, second, third, other));
        assert!(
            all.lock().unwrap().by_device.is_empty(),
            "tickets give their place back"
        );
    }
}
