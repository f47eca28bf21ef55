//! The uplink: drains the outbox to the cloud broker (rumqttc, QoS 1, mTLS).
//!
//! rumqttc keeps nothing across restarts and drops unacknowledged messages when a session is not
//! resumed, so the outbox is the source of truth: each connection starts a fresh rumqttc event
//! loop with a clean session, sends every message still in the outbox from the start, and
//! acknowledges a message to the outbox only when the broker's PUBACK for it arrives (the outbox
//! deletes a stored record once all its messages are acknowledged). A reconnect therefore
//! resends whatever was in flight (at-least-once; consumers de-duplicate on `id`).
//!
//! The connection's loop never waits for a write: acknowledgements go to the outbox in batches
//! from a blocking task of their own (a group commit may hold the outbox's writer while it
//! syncs), and a stored copy whose acknowledgement is on its way is not sent again meanwhile.
//!
//! While connected and caught up with the outbox, the uplink also publishes telemetry the
//! pipeline hands it before storing it ([`live`]); the pipeline stores only what the cloud has
//! not acknowledged by the time the batch is due.
//!
//! rumqttc assigns packet ids inside its event loop, in the order publishes were requested, and
//! reports each as `Outgoing::Publish(pkid)`. [`Inflight`] pairs those, in order, with what we
//! requested, and PUBACKs with it by packet id.

mod config;
pub use config::{CloudConfig, CloudEndpoint, cloud_endpoint};

mod inflight;
pub mod live;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio_util::sync::CancellationToken;

use crate::clock::{SharedClock, rfc3339};
use crate::error::{Error, Result};
use crate::message::envelope;
use crate::outbox::{Cursor, Key, LANES, Outbox};
use crate::watchdog::Progress;
pub use inflight::{Inflight, Publish};
use live::LiveReceiver;

/// Acknowledgements are handed to the outbox in batches of this size, or every [`ACK_EVERY`].
/// Only those that finish a stored record cost a (non-durable) write.
const ACK_BATCH: usize = 256;
const ACK_EVERY: Duration = Duration::from_millis(200);

/// Connection state, for `rxgate status` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// No `[cloud]` configured: messages wait in the outbox.
    Disabled = 0,
    Connecting = 1,
    Connected = 2,
    /// Waiting before the next attempt.
    Backoff = 3,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Disabled => "disabled",
            State::Connecting => "connecting",
            State::Connected => "connected",
            State::Backoff => "backoff",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Connecting,
            2 => State::Connected,
            3 => State::Backoff,
            _ => State::Disabled,
        }
    }
}

/// Shared view of the uplink's state.
#[derive(Debug, Clone, Default)]
pub struct Status(Arc<AtomicU8>);

impl Status {
    pub fn get(&self) -> State {
        State::from_u8(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, state: State) {
        self.0.store(state as u8, Ordering::Relaxed);
        crate::metrics::uplink_connected(state == State::Connected);
    }
}

/// The uplink, ready to run.
pub struct Uplink {
    options: MqttOptions,
    outbox: Outbox,
    site: String,
    clock: SharedClock,
    window: usize,
    backoff_min: Duration,
    backoff_max: Duration,
    status: Status,
    /// Reading and deleting outbox records are the units of work; waiting for the cloud is not.
    progress: Progress,
    /// Telemetry the pipeline hands over before storing it, if it does.
    live: Option<LiveReceiver>,
    /// Numbers the connections, for [`live`].
    sessions: u64,
}

/// Builds the rustls client config from `[cloud]`: trust `ca_file`, present `cert_file`/`key_file`.
fn tls_config(cloud: &CloudConfig) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &cloud.ca_file {
        for cert in crate::tls::load_certs(ca)? {
            roots
                .add(cert)
                .map_err(|e| Error::Invalid(format!("cloud.ca_file {}: {e}", ca.display())))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Invalid(format!("TLS setup: {e}")))?
        .with_root_certificates(roots);
    let config = match (&cloud.cert_file, &cloud.key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(crate::tls::load_certs(cert)?, crate::tls::load_key(key)?)
            .map_err(|e| {
                Error::Invalid(format!(
                    "cloud.cert_file and cloud.key_file do not fit together: {e}"
                ))
            })?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn status_payload(online: bool, reason: &str, at: time::OffsetDateTime, synced: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "online": online,
        "reason": reason,
        "gateway_ts": rfc3339(at),
        "clock_synced": synced,
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .unwrap_or_default()
}

impl Uplink {
    /// Prepares the connection described by `[cloud]` (reads its certificate files; no network).
    pub fn build(
        site: &str,
        cloud: &CloudConfig,
        outbox: Outbox,
        clock: SharedClock,
        status: Status,
    ) -> Result<Uplink> {
        let endpoint =
            cloud_endpoint(&cloud.url).map_err(|e| Error::Invalid(format!("cloud.url: {e}")))?;
        let client_id = cloud
            .client_id
            .clone()
            .unwrap_or_else(|| format!("rxgate-{site}"));
        let mut options = MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port);
        options
            .set_keep_alive(cloud.keep_alive)
            .set_clean_session(true)
            .set_inflight(u16::try_from(cloud.max_inflight.get()).unwrap_or(u16::MAX))
            .set_request_channel_capacity(cloud.max_inflight.get() + 8)
            .set_max_packet_size(256 * 1024, 1024 * 1024);
        if endpoint.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls_config(cloud)?,
            )));
        }
        Ok(Uplink {
            options,
            outbox,
            site: site.to_owned(),
            clock,
            window: cloud.max_inflight.get(),
            backoff_min: cloud.reconnect_min,
            backoff_max: cloud.reconnect_max,
            status,
            progress: Progress::untracked(),
            live: None,
            sessions: 0,
        })
    }

    /// Publishes the telemetry the pipeline hands over on `live` while connected and caught up.
    pub fn with_live(mut self, live: LiveReceiver) -> Self {
        self.live = Some(live);
        self
    }

    /// Reports reading and deleting outbox records to the watchdog.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Connects, drains the outbox, reconnects with backoff and jitter, until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = self.backoff_min;
        let mut live = self.live.take();
        loop {
            self.status.set(State::Connecting);
            let started = tokio::time::Instant::now();
            self.sessions += 1;
            let result = self.session(&shutdown, live.as_mut()).await;
            if let Some(live) = &live {
                live.close();
            }
            match result {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "Cloud connection lost; will reconnect.");
                    crate::metrics::uplink_disconnect();
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = self.backoff_min;
            }
            self.status.set(State::Backoff);
            let wait = jitter(backoff);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(self.backoff_max);
        }
        self.status.set(State::Disabled);
    }

    /// One connection. `Ok` only when shutdown ended it.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        mut live: Option<&mut LiveReceiver>,
    ) -> Result<(), ConnectionError> {
        let session = self.sessions;
        // The last will is stamped when it is registered, at CONNECT: the closest the broker
        // lets us get to the moment the connection is lost.
        let mut options = self.options.clone();
        options.set_last_will(LastWill::new(
            envelope::gateway_status_topic(&self.site),
            status_payload(
                false,
                "connection lost",
                self.clock.now(),
                self.clock.synced(),
            ),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut events) = AsyncClient::new(options, self.window + 8);
        let mut network = events.network_options();
        network.set_connection_timeout(10);
        network.set_tcp_nodelay(true);
        events.set_network_options(network);

        // Wait for CONNACK before sending anything.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                event = events.poll() => match event? {
                    Event::Incoming(Packet::ConnAck(_)) => break,
                    _ => continue,
                },
            }
        }
        self.status.set(State::Connected);
        tracing::info!(broker = %self.options.broker_address().0, "Connected to the cloud broker.");
        let status_topic = envelope::gateway_status_topic(&self.site);
        let mut inflight = Inflight::new(self.window);
        inflight.request(Publish::Status);
        let _ = client.try_publish(
            status_topic.clone(),
            QoS::AtLeastOnce,
            true,
            status_payload(true, "connected", self.clock.now(), self.clock.synced()),
        );
        if let Some(live) = &live {
            live.open(session);
        }
        let mut cursors = Cursors::default();
        let mut acked: Vec<Key> = Vec::new();
        let mut acking: Option<Acking> = None;
        let mut flush = tokio::time::interval(ACK_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let result = loop {
            let work = self.progress.working();
            let handing = acking.as_ref().map_or(&[][..], |a| a.keys.as_slice());
            match self.fill(&client, &mut inflight, &mut cursors, &acked, handing) {
                Ok(()) => {
                    if let Some(live) = &live {
                        match cursors.exhausted_at {
                            Some(appends) => live.caught_up(appends),
                            None => live.behind(),
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "Cannot read the outbox."),
            }
            drop(work);
            let has_room = inflight.has_room();
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = self.outbox.appended(), if has_room => {}
                message = next_live(live.as_deref_mut(), session), if has_room => {
                    // The pipeline is gone (shutting down): nothing more comes.
                    let Some(mut message) = message else {
                        live = None;
                        continue;
                    };
                    // What is waiting already goes over in the same turn, up to the window.
                    loop {
                        // A request the channel cannot take is not sent: the pipeline stores
                        // the message, unacknowledged, and the outbox sends it.
                        if client
                            .try_publish(message.topic, QoS::AtLeastOnce, false, message.payload)
                            .is_ok()
                        {
                            inflight.request(Publish::Live(message.sent));
                        }
                        let next = match live.as_deref_mut() {
                            Some(live) if inflight.has_room() => live.try_recv(session),
                            _ => None,
                        };
                        match next {
                            Some(next) => message = next,
                            None => break,
                        }
                    }
                }
                _ = flush.tick() => self.ack_soon(&mut acked, &mut acking),
                event = events.poll() => {
                    let mut event = match event {
                        Ok(event) => event,
                        Err(e) => break Err(e),
                    };
                    // One read of the connection brings many PUBACKs: the events it left
                    // buffered (what `poll` would return next, without I/O) are handled in the
                    // same turn, and the pipeline is told of the acknowledgements once.
                    let mut live_acked = false;
                    loop {
                        live_acked |= self.on_event(event, &mut inflight, &mut acked, &mut acking, live.as_deref());
                        match events.state.events.pop_front() {
                            Some(next) => event = next,
                            None => break,
                        }
                    }
                    if let Some(live) = live.as_deref().filter(|_| live_acked) {
                        live.tell_acked();
                    }
                },
            }
        };
        // The hand-over in progress, then the rest, each waited for.
        settle(acking.take()).await;
        self.ack_soon(&mut acked, &mut acking);
        settle(acking.take()).await;
        if result.is_ok() {
            // Say goodbye so subscribers see `offline` now rather than after the keep-alive.
            let _ = client.try_publish(
                status_topic,
                QoS::AtLeastOnce,
                true,
                status_payload(false, "shutdown", self.clock.now(), self.clock.synced()),
            );
            // Wait for the broker to take it, then disconnect cleanly (no last will) and keep
            // polling until the DISCONNECT is on the wire and the connection is closed.
            // Publishes requested before it get their packet ids first.
            let mut before = inflight.unassigned();
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let mut status_pkid = None;
                loop {
                    match events.poll().await {
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) if status_pkid.is_none() => {
                            if before == 0 {
                                status_pkid = Some(pkid);
                            } else {
                                before -= 1;
                            }
                        }
                        Ok(Event::Incoming(Packet::PubAck(ack)))
                            if Some(ack.pkid) == status_pkid =>
                        {
                            break;
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
                let _ = client.try_disconnect();
                while events.poll().await.is_ok() {}
            })
            .await;
        }
        result
    }

    /// Keeps the books on one event of the connection; `true` when it was the PUBACK of a
    /// message sent before it was stored.
    fn on_event(
        &self,
        event: Event,
        inflight: &mut Inflight,
        acked: &mut Vec<Key>,
        acking: &mut Option<Acking>,
        live: Option<&LiveReceiver>,
    ) -> bool {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => inflight.assigned(pkid),
            Event::Incoming(Packet::PubAck(ack)) => match inflight.acked(ack.pkid) {
                Some(Publish::Stored(key)) => {
                    crate::metrics::uplink_sent();
                    acked.push(key);
                    if acked.len() >= ACK_BATCH {
                        self.ack_soon(acked, acking);
                    }
                }
                Some(Publish::Live(sent)) => {
                    crate::metrics::uplink_sent();
                    if let Some(key) = live.and_then(|live| live.acked(&sent)) {
                        acked.push(key);
                    }
                    return true;
                }
                Some(Publish::Status) | None => {}
            },
            _ => {}
        }
        false
    }

    /// Requests publishes for the next records, highest priority lane first, up to the window,
    /// from one read of the outbox. Reads nothing when less than an eighth of the window is
    /// free, or when the last read found every lane exhausted and nothing was appended since.
    fn fill(
        &self,
        client: &AsyncClient,
        inflight: &mut Inflight,
        cursors: &mut Cursors,
        acked: &[Key],
        handing: &[Key],
    ) -> Result<()> {
        let room = inflight.room();
        let appends = self.outbox.appends();
        // While publishes are in flight, a backlog is read in bites of an eighth of the window
        // at least, not once for every PUBACK (room < window/8 means some are in flight).
        if room == 0 || room < self.window / 8 || cursors.exhausted_at == Some(appends) {
            return Ok(());
        }
        let records = self.outbox.read_due(&cursors.lanes, room)?;
        let exhausted = records.len() < room;
        // Stored copies of messages whose live copy is in flight, or acknowledged and not yet
        // handed to the outbox: sending them again would only make duplicates.
        let mut covered = inflight.live_stored();
        covered.extend(acked.iter().chain(handing).copied());
        for record in records {
            let key = record.key;
            if covered.contains(&key) {
                cursors.lanes[usize::from(key.0)] = Some((key.1, key.2));
                continue;
            }
            match client.try_publish(
                record.topic,
                QoS::AtLeastOnce,
                record.retain,
                record.payload,
            ) {
                Ok(()) => {
                    cursors.lanes[usize::from(key.0)] = Some((key.1, key.2));
                    inflight.request(Publish::Stored(key));
                }
                Err(e) => {
                    // The request channel is full: the record is read again next time.
                    tracing::debug!(error = %e, "Publish request not queued.");
                    cursors.exhausted_at = None;
                    return Ok(());
                }
            }
        }
        cursors.exhausted_at = exhausted.then_some(appends);
        Ok(())
    }

    /// Hands `acked` to the outbox in the background, unless the last hand-over still runs
    /// (then they go with the next). The connection's loop never waits for the outbox's writer,
    /// which a group commit holds while it syncs.
    fn ack_soon(&self, acked: &mut Vec<Key>, acking: &mut Option<Acking>) {
        if acked.is_empty() || acking.as_ref().is_some_and(|a| !a.task.is_finished()) {
            return;
        }
        let keys = Arc::new(std::mem::take(acked));
        let work = self.progress.working();
        let outbox = self.outbox.clone();
        let handed = keys.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _work = work;
            if let Err(e) = outbox.ack(&handed) {
                tracing::error!(error = %e, "Cannot delete acknowledged records; they will be sent again.");
            }
        });
        *acking = Some(Acking { keys, task });
    }
}

/// Acknowledgements on their way to the outbox: until they are there, their stored copies are
/// not sent again.
struct Acking {
    keys: Arc<Vec<Key>>,
    task: tokio::task::JoinHandle<()>,
}

/// Waits for a hand-over of acknowledgements to end.
async fn settle(acking: Option<Acking>) {
    let Some(acking) = acking else {
        return;
    };
    if let Err(e) = acking.task.await {
        tracing::error!(error = %e, "Outbox acknowledgement task failed.");
    }
}

/// How far a connection has sent each lane.
#[derive(Debug, Default)]
struct Cursors {
    /// Per lane, the key of the last message requested (`None`: nothing yet, start at the lane's
    /// beginning). Keys only grow, so a message appended later is always after the cursor.
    lanes: [Option<Cursor>; LANES],
    /// [`Outbox::appends`] as it was before a read that found every lane exhausted: until it
    /// changes there is nothing new to read.
    exhausted_at: Option<u64>,
}

/// The next message handed over for `session`; never, without a pipeline handing any over.
async fn next_live(live: Option<&mut LiveReceiver>, session: u64) -> Option<live::LiveMessage> {
    match live {
        Some(live) => live.recv(session).await,
        None => std::future::pending().await,
    }
}

/// `base` ± 25 %, so a site's gateways do not reconnect in lockstep after a broker restart.
fn jitter(base: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte);
    let factor = 0.75 + f64::from(byte[0]) / 255.0 * 0.5;
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_quarter_of_the_base() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(8));
            assert!(
                j >= Duration::from_secs(6) && j <= Duration::from_secs(10),
                "{j:?}"
            );
        }
    }
}
