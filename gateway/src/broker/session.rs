//! One device session: identity checks, then the relay between the device and the embedded broker.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use futures_util::stream::{FuturesOrdered, StreamExt};
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Login, Packet, PubAck, PubComp, PubRec, Publish, SubAck,
    SubscribeReasonCode,
};
use rumqttc::mqttbytes::{self, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::{MAX_PACKET, RELAY_USER, Shared, acl, payload};
use crate::audit::{Kind, Refusal};
use crate::message::{Intake, Reading, Refused};
use crate::registry::Change;

/// Telemetry and event messages of one session being made durable at once, at most. Beyond it
/// the session stops reading from the device until acknowledgements go out.
const MAX_PENDING: usize = 64;

/// What to do once a device's message has been dealt with.
enum Ack {
    /// Send PUBACK (QoS 1) or PUBREC (QoS 2) for `pkid`, and forward `copy` to local subscribers.
    Accepted {
        qos: QoS,
        pkid: u16,
        copy: Option<Publish>,
    },
    /// Refused for its content: acknowledge (so the device does not resend it forever) and tell
    /// local subscribers of `devices/<id>/rejected` why.
    Rejected {
        qos: QoS,
        pkid: u16,
        topic: String,
        reason: String,
    },
    /// The gateway cannot take it now: close, so the device resends after reconnecting.
    Unavailable(String),
    /// A publish for local subscribers only: relay it as it came, in its turn.
    Relay(bytes::Bytes),
}

type AckFuture = Pin<Box<dyn Future<Output = Ack> + Send>>;

/// Why a session ended.
#[derive(Debug)]
enum End {
    DeviceClosed,
    BrokerClosed,
    Revoked,
    /// The session's certificate was replaced by a renewal and its grace is over.
    Superseded,
    Shutdown,
    Error(String),
}

impl End {
    fn reason(&self) -> String {
        match self {
            End::DeviceClosed => "device disconnected".to_owned(),
            End::BrokerClosed => "session closed by the broker (keep-alive or takeover)".to_owned(),
            End::Revoked => "device revoked".to_owned(),
            End::Superseded => "certificate replaced by a renewal; its grace is over".to_owned(),
            End::Shutdown => "gateway shutting down".to_owned(),
            End::Error(e) => e.clone(),
        }
    }
}

fn write_packet(packet: &Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    // Our own packets are small and well-formed: a write error cannot happen at this size.
    let _ = packet.write(&mut buf, MAX_PACKET * 2);
    buf.to_vec()
}

fn connack(code: ConnectReturnCode) -> Vec<u8> {
    write_packet(&Packet::ConnAck(ConnAck::new(code, false)))
}

/// Reads one whole MQTT packet's bytes (fixed header included) from `stream` into `buf`.
async fn read_frame<S: AsyncReadExt + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Option<BytesMut>, String> {
    loop {
        match mqttbytes::check(buf.iter(), MAX_PACKET) {
            Ok(header) => return Ok(Some(buf.split_to(header.frame_length()))),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(format!("malformed MQTT packet: {e}")),
        }
        let n = stream.read_buf(buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(None);
        }
    }
}

fn parse(frame: &BytesMut) -> Result<Packet, String> {
    let mut copy = frame.clone();
    Packet::read(&mut copy, MAX_PACKET).map_err(|e| format!("malformed MQTT packet: {e}"))
}

pub(super) async fn serve(
    shared: Arc<Shared>,
    mut device: TlsStream<TcpStream>,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let refuse = |device_id: Option<&str>, kind: Kind, class: &'static str, reason: String| {
        shared.refusals.record(Refusal {
            kind,
            device: device_id.map(str::to_owned),
            source: Some(peer.ip()),
            class,
            reason,
            claimed_device: None,
        });
    };

    // 1. The certificate: a device of this site, known, not revoked.
    let Some(cert) = crate::tls::peer_certificate(device.get_ref().1) else {
        refuse(
            None,
            Kind::ConnectionRefused,
            "no_certificate",
            "no client certificate".to_owned(),
        );
        return;
    };
    let identity = match rxgate_certs::device_identity(&cert) {
        Ok(identity) => identity,
        Err(e) => {
            refuse(None, Kind::ConnectionRefused, "not_a_device", e.to_string());
            return;
        }
    };
    let id = identity.device_id.clone();
    let kind = identity.kind.clone();
    let serial = identity.serial.clone();
    let ticket = super::ConnectTicket::take(&shared.awaiting_connect, &id);
    let mut changes = shared.registry.subscribe();
    let check = {
        let registry = shared.registry.clone();
        let site = shared.site.clone();
        tokio::task::spawn_blocking(move || registry.check_certificate(&identity, &site)).await
    };
    match check {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(refusal))) => {
            refuse(
                Some(&id),
                Kind::ConnectionRefused,
                "certificate_refused",
                refusal.to_string(),
            );
            return;
        }
        Ok(Err(e)) => {
            tracing::error!(device = %id, error = %e, "Cannot check a device certificate.");
            return;
        }
        Err(_) => return,
    }

    // 2. CONNECT: client id = device id, MQTT 3.1.1, last will inside the namespace.
    let mut device_buf = BytesMut::with_capacity(4096);
    let read = tokio::select! {
        read = tokio::time::timeout(
            shared.connect_timeout,
            read_frame(&mut device, &mut device_buf),
        ) => read,
        _ = ticket.evicted.cancelled() => {
            refuse(
                Some(&id),
                Kind::ConnectionRefused,
                "connect_evicted",
                format!(
                    "no CONNECT yet, and a newer connection with the same certificate came: at most {} may wait for their CONNECT",
                    super::MAX_AWAITING_CONNECT
                ),
            );
            return;
        }
    };
    drop(ticket);
    let first = match read {
        Err(_) => {
            refuse(
                Some(&id),
                Kind::ConnectionRefused,
                "connect_timeout",
                "no CONNECT in time".to_owned(),
            );
            return;
        }
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            refuse(Some(&id), Kind::ConnectionRefused, "bad_connect", e);
            return;
        }
    };
    if let Some(level) = connect_protocol_level(&first)
        && level != 4
    {
        let _ = device
            .write_all(&connack(ConnectReturnCode::RefusedProtocolVersion))
            .await;
        refuse(
            Some(&id),
            Kind::ConnectionRefused,
            "bad_connect",
            format!(
                "MQTT protocol level {level} is not supported; rxgate speaks MQTT 3.1.1 (level 4)"
            ),
        );
        return;
    }
    let mut connect = match parse(&first) {
        Ok(Packet::Connect(connect)) => connect,
        Ok(other) => {
            refuse(
                Some(&id),
                Kind::ConnectionRefused,
                "bad_connect",
                format!("expected CONNECT, got {other:?}"),
            );
            return;
        }
        Err(e) => {
            // MQTT 3.1.1 has no "malformed" return code; the spec says to close the connection.
            refuse(
                Some(&id),
                Kind::ConnectionRefused,
                "bad_connect",
                format!("{e} (rxgate speaks MQTT 3.1.1)"),
            );
            return;
        }
    };
    if connect.client_id != id {
        let _ = device
            .write_all(&connack(ConnectReturnCode::BadClientId))
            .await;
        refuse(
            Some(&id),
            Kind::ConnectionRefused,
            "client_id_mismatch",
            format!(
                "client id {:?} is not the certificate's device id {id:?}",
                connect.client_id
            ),
        );
        return;
    }
    if let Some(will) = &connect.last_will
        && let Err(denied) = acl::publish(&id, &will.topic)
    {
        let _ = device
            .write_all(&connack(ConnectReturnCode::NotAuthorized))
            .await;
        refuse(
            Some(&id),
            Kind::ConnectionRefused,
            "will_denied",
            format!("last will: {denied}"),
        );
        return;
    }
    connect.login = Some(Login::new(RELAY_USER, shared.relay_password.clone()));

    // 3. The relay connection, logged in as rxgate on behalf of the device.
    let mut broker = match TcpStream::connect(shared.relay).await {
        Ok(broker) => broker,
        Err(e) => {
            tracing::error!(error = %e, "Cannot reach the embedded broker.");
            let _ = device
                .write_all(&connack(ConnectReturnCode::ServiceUnavailable))
                .await;
            return;
        }
    };
    let _ = broker.set_nodelay(true);

    // The device's statuses are queued under its lock: a session that ends at once cannot have
    // its offline status overtake its online one, nor a new session's online status overtake
    // the offline status of the session before it. The lock is taken before the CONNECT goes
    // to the embedded broker, whose takeover ends the older session: that session's end then
    // finds itself no longer the newest, and says nothing.
    let newest_session = shared.newest_session(&id);
    let (generation, online) = {
        let mut newest = newest_session.lock().await;
        if broker
            .write_all(&write_packet(&Packet::Connect(connect)))
            .await
            .is_err()
        {
            return;
        }
        *newest += 1;
        (
            *newest,
            queue_status(&shared, &id, true, "connected".to_owned()).await,
        )
    };
    crate::metrics::device_online(1.0);
    tracing::info!(device = %id, %peer, "Device connected.");
    {
        let registry = shared.registry.clone();
        let device_id = id.clone();
        tokio::task::spawn_blocking(move || registry.touch(&device_id));
    }
    if let Some(online) = online {
        let id = id.clone();
        tokio::spawn(async move { settle_status(&id, online).await });
    }

    // A certificate a renewal replaced is served until its grace ends, then the session is
    // dropped like a revoked one: a stolen key does not outlive the device's own renewal.
    let accepted_until = {
        let registry = shared.registry.clone();
        let serial = serial.clone();
        tokio::task::spawn_blocking(move || registry.superseded_until(&serial))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
    };
    let end = Relay {
        shared: &shared,
        id: &id,
        serial: &serial,
        ends_at: accepted_until.map(|until| deadline_of(&shared, until)),
        kind: &kind,
        device: &mut device,
        broker: &mut broker,
        device_buf,
        device_out: BytesMut::new(),
        changes: &mut changes,
    }
    .run(&shutdown)
    .await;

    crate::metrics::device_online(-1.0);
    tracing::info!(device = %id, reason = %end.reason(), "Device session ended.");
    let _ = device.shutdown().await;
    let offline = {
        let newest = newest_session.lock().await;
        if *newest == generation {
            queue_status(&shared, &id, false, end.reason()).await
        } else {
            None
        }
    };
    if let Some(offline) = offline {
        // Awaited, not spawned: at shutdown the pipeline is still taking submissions until every
        // session has ended, so the cloud hears the device went offline with the gateway.
        settle_status(&id, offline).await;
    }
}

/// The protocol level byte of a CONNECT frame (4 = MQTT 3.1.1, 3 = 3.1, 5 = 5.0), read before
/// the full parse so other versions get the right CONNACK code.
fn connect_protocol_level(frame: &[u8]) -> Option<u8> {
    // Fixed header: type byte and 1-4 bytes of remaining length.
    let header_len = 1 + frame.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let rest = frame.get(header_len..)?;
    let name_len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    rest.get(2 + name_len).copied()
}

/// How long a device status may wait for room in the pipeline, and then to be durable.
const STATUS_WAIT: Duration = Duration::from_secs(5);

/// Queues the device's online or offline status; `None` when it could not be (logged).
async fn queue_status(
    shared: &Shared,
    id: &str,
    online: bool,
    reason: String,
) -> Option<crate::message::Pending> {
    let intake = Intake::Status {
        device: id.to_owned(),
        online,
        reason,
    };
    match tokio::time::timeout(STATUS_WAIT, shared.ingest.enqueue(intake)).await {
        Ok(Ok(pending)) => Some(pending),
        Ok(Err(e)) => {
            tracing::warn!(device = id, error = %e, "Device status not recorded.");
            None
        }
        Err(_) => {
            tracing::warn!(device = id, "Device status not recorded in time.");
            None
        }
    }
}

/// Waits for a queued status to be durable, logging when it is not.
async fn settle_status(id: &str, pending: crate::message::Pending) {
    match tokio::time::timeout(STATUS_WAIT, pending.outcome()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(device = id, error = %e, "Device status not recorded."),
        Err(_) => tracing::warn!(device = id, "Device status not recorded in time."),
    }
}

/// The monotonic instant of the wall-clock time `until` (the gateway's floored time): a clock
/// thrown back later does not lengthen a grace.
fn deadline_of(shared: &Shared, until: time::OffsetDateTime) -> tokio::time::Instant {
    let left = until - shared.registry.clock().now();
    tokio::time::Instant::now() + std::time::Duration::try_from(left).unwrap_or_default()
}

struct Relay<'a> {
    shared: &'a Arc<Shared>,
    id: &'a str,
    /// The serial of the session's certificate.
    serial: &'a str,
    /// When the session ends because its certificate was superseded.
    ends_at: Option<tokio::time::Instant>,
    kind: &'a str,
    device: &'a mut TlsStream<TcpStream>,
    broker: &'a mut TcpStream,
    device_buf: BytesMut,
    /// Acknowledgements for the device, written together.
    device_out: BytesMut,
    changes: &'a mut broadcast::Receiver<Change>,
}

impl Relay<'_> {
    async fn run(mut self, shutdown: &CancellationToken) -> End {
        let mut broker_buf = BytesMut::with_capacity(4096);
        let mut pending: FuturesOrdered<AckFuture> = FuturesOrdered::new();
        // QoS 2 messages rxgate took itself: their PUBREL is answered here, not relayed.
        let mut local_qos2: HashSet<u16> = HashSet::new();
        loop {
            // Whole packets already buffered from the device are handled before reading more.
            if pending.len() < MAX_PENDING {
                match mqttbytes::check(self.device_buf.iter(), MAX_PACKET) {
                    Ok(header) => {
                        let frame = self.device_buf.split_to(header.frame_length());
                        if let Err(end) = self
                            .handle_device_packet(frame, &mut pending, &mut local_qos2)
                            .await
                        {
                            return end;
                        }
                        continue;
                    }
                    Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => {
                        self.refuse(
                            Kind::MessageRefused,
                            "bad_packet",
                            format!("malformed MQTT packet: {e}"),
                        );
                        return End::Error(format!("malformed MQTT packet: {e}"));
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return End::Shutdown,
                _ = tokio::time::sleep_until(self.ends_at.unwrap_or_else(tokio::time::Instant::now)), if self.ends_at.is_some() => return End::Superseded,
                change = self.changes.recv() => match change {
                    Ok(Change::Revoked { device }) if device == self.id => return End::Revoked,
                    Ok(Change::Superseded { device, serial, until })
                        if device == self.id && serial != self.serial =>
                    {
                        let at = deadline_of(self.shared, until);
                        self.ends_at = Some(self.ends_at.map_or(at, |sooner| sooner.min(at)));
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Missed some changes: ask the registry directly.
                        if matches!(self.shared.registry.device(self.id), Ok(Some(d)) if d.status == crate::registry::DeviceStatus::Revoked) {
                            return End::Revoked;
                        }
                        if let Ok(Some(until)) = self.shared.registry.superseded_until(self.serial) {
                            let at = deadline_of(self.shared, until);
                            self.ends_at = Some(self.ends_at.map_or(at, |sooner| sooner.min(at)));
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return End::Shutdown,
                },
                read = self.device.read_buf(&mut self.device_buf), if pending.len() < MAX_PENDING => match read {
                    Ok(0) => return End::DeviceClosed,
                    Ok(_) => {}
                    Err(e) => return End::Error(format!("device connection: {e}")),
                },
                read = self.broker.read_buf(&mut broker_buf) => match read {
                    Ok(0) => return End::BrokerClosed,
                    Ok(_) => {
                        if let Err(end) = self.forward_to_device(&mut broker_buf).await {
                            return end;
                        }
                    }
                    Err(e) => return End::Error(format!("broker connection: {e}")),
                },
                Some(ack) = pending.next() => {
                    // Acknowledgements ready together go to the device in one write.
                    let mut ack = ack;
                    let acknowledged = loop {
                        if let Err(end) = self.acknowledge(ack, &mut local_qos2).await {
                            break Err(end);
                        }
                        match pending.next().now_or_never() {
                            Some(Some(next)) => ack = next,
                            _ => break Ok(()),
                        }
                    };
                    let flushed = self.flush_to_device().await;
                    if let Err(end) = acknowledged.and(flushed) {
                        return end;
                    }
                }
            }
        }
    }

    fn refuse(&self, kind: Kind, class: &'static str, reason: String) {
        self.shared.refusals.record(Refusal {
            kind,
            device: Some(self.id.to_owned()),
            source: self.device.get_ref().0.peer_addr().ok().map(|a| a.ip()),
            class,
            reason,
            claimed_device: None,
        });
    }

    /// Forwards whole frames from the broker to the device.
    async fn forward_to_device(&mut self, buf: &mut BytesMut) -> Result<(), End> {
        loop {
            match mqttbytes::check(buf.iter(), usize::MAX >> 4) {
                Ok(header) => {
                    let frame = buf.split_to(header.frame_length());
                    self.device
                        .write_all(&frame)
                        .await
                        .map_err(|e| End::Error(format!("device connection: {e}")))?;
                }
                Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(()),
                Err(e) => {
                    return Err(End::Error(format!(
                        "embedded broker sent a malformed packet: {e}"
                    )));
                }
            }
        }
    }

    async fn send_to_broker(&mut self, bytes: &[u8]) -> Result<(), End> {
        self.broker
            .write_all(bytes)
            .await
            .map_err(|e| End::Error(format!("broker connection: {e}")))
    }

    async fn send_to_device(&mut self, packet: &Packet) -> Result<(), End> {
        self.device
            .write_all(&write_packet(packet))
            .await
            .map_err(|e| End::Error(format!("device connection: {e}")))
    }

    /// Adds `packet` to what [`Relay::flush_to_device`] writes next.
    fn queue_to_device(&mut self, packet: &Packet) {
        // Our own packets are small and well-formed: a write error cannot happen at this size.
        let _ = packet.write(&mut self.device_out, MAX_PACKET * 2);
    }

    /// Writes what was queued for the device, in one TLS record when it fits.
    async fn flush_to_device(&mut self) -> Result<(), End> {
        if self.device_out.is_empty() {
            return Ok(());
        }
        let written = self.device.write_all(&self.device_out).await;
        self.device_out.clear();
        written.map_err(|e| End::Error(format!("device connection: {e}")))
    }

    /// Handles one packet from the device.
    async fn handle_device_packet(
        &mut self,
        frame: BytesMut,
        pending: &mut FuturesOrdered<AckFuture>,
        local_qos2: &mut HashSet<u16>,
    ) -> Result<(), End> {
        let packet = match parse(&frame) {
            Ok(packet) => packet,
            Err(e) => {
                self.refuse(Kind::MessageRefused, "bad_packet", e.clone());
                return Err(End::Error(e));
            }
        };
        match packet {
            Packet::Publish(publish) => self.publish(publish, frame, pending),
            Packet::Subscribe(subscribe) => {
                let denied: Vec<String> = subscribe
                    .filters
                    .iter()
                    .filter_map(|f| {
                        acl::subscribe(self.id, &f.path)
                            .err()
                            .map(|d| d.to_string())
                    })
                    .collect();
                let (class, reason) = if denied.is_empty() {
                    let filters: Vec<&str> =
                        subscribe.filters.iter().map(|f| f.path.as_str()).collect();
                    match self.shared.admit_local_topics(self.id, &filters) {
                        Ok(()) => return self.send_to_broker(&frame).await,
                        Err(limit) => (limit.class(), limit.to_string()),
                    }
                } else {
                    ("subscribe_denied", denied.join("; "))
                };
                self.refuse(Kind::SubscriptionRefused, class, reason);
                let suback = SubAck::new(
                    subscribe.pkid,
                    subscribe
                        .filters
                        .iter()
                        .map(|_| SubscribeReasonCode::Failure)
                        .collect(),
                );
                self.send_to_device(&Packet::SubAck(suback)).await
            }
            Packet::PubRel(pubrel) if local_qos2.remove(&pubrel.pkid) => {
                self.send_to_device(&Packet::PubComp(PubComp::new(pubrel.pkid)))
                    .await
            }
            Packet::Connect(_) => {
                self.refuse(
                    Kind::MessageRefused,
                    "bad_packet",
                    "a second CONNECT".to_owned(),
                );
                Err(End::Error("a second CONNECT in one session".to_owned()))
            }
            // A clean end: rumqttd hears it too (so the device's will is not published), and the
            // session ends here, whether or not the device then closes TLS properly.
            Packet::Disconnect => {
                let _ = self.send_to_broker(&frame).await;
                Err(End::DeviceClosed)
            }
            // PINGREQ, UNSUBSCRIBE and acknowledgements of deliveries: rumqttd's.
            _ => self.send_to_broker(&frame).await,
        }
    }

    fn publish(
        &mut self,
        publish: Publish,
        frame: BytesMut,
        pending: &mut FuturesOrdered<AckFuture>,
    ) -> Result<(), End> {
        let kind = match acl::publish(self.id, &publish.topic) {
            Ok(kind) => kind,
            Err(denied) => {
                self.refuse(Kind::MessageRefused, "topic_denied", denied.to_string());
                // Acknowledged but not delivered, as MQTT 3.1.1 has no negative PUBACK.
                pending.push_back(Box::pin(std::future::ready(Ack::Rejected {
                    qos: publish.qos,
                    pkid: publish.pkid,
                    topic: publish.topic,
                    reason: denied.to_string(),
                })));
                return Ok(());
            }
        };
        let parsed = match kind {
            acl::PublishKind::Local => {
                if let Err(reason) = self.shared.local_limits(
                    self.id,
                    &publish.topic,
                    publish.payload.len(),
                    publish.retain,
                ) {
                    self.refuse(Kind::MessageRefused, reason.class(), reason.to_string());
                    pending.push_back(Box::pin(std::future::ready(Ack::Rejected {
                        qos: publish.qos,
                        pkid: publish.pkid,
                        topic: publish.topic,
                        reason: reason.to_string(),
                    })));
                    return Ok(());
                }
                // rumqttd acknowledges these itself.
                let frame = frame.freeze();
                pending.push_back(Box::pin(std::future::ready(Ack::Relay(frame))));
                return Ok(());
            }
            acl::PublishKind::Telemetry => payload::telemetry(&publish.payload).map(|t| {
                crate::metrics::message_in("mqtt");
                Intake::Telemetry(Reading {
                    device: self.id.to_owned(),
                    kind: self.kind.to_owned(),
                    device_ts: t.ts,
                    points: t.points,
                })
            }),
            acl::PublishKind::Events => payload::event(&publish.payload).map(|e| {
                crate::metrics::message_in("mqtt");
                Intake::Event {
                    device: self.id.to_owned(),
                    kind: self.kind.to_owned(),
                    device_ts: e.ts,
                    body: e.body,
                }
            }),
        };
        let intake = match parsed {
            Ok(intake) => intake,
            Err(reason) => {
                self.refuse(
                    Kind::MessageRefused,
                    "bad_payload",
                    format!("{}: {reason}", publish.topic),
                );
                pending.push_back(Box::pin(std::future::ready(Ack::Rejected {
                    qos: publish.qos,
                    pkid: publish.pkid,
                    topic: publish.topic,
                    reason,
                })));
                return Ok(());
            }
        };
        let ingest = self.shared.ingest.clone();
        let copy = self
            .shared
            .copy_wanted(self.id, &publish.topic, publish.retain)
            .then(|| {
                let mut copy = publish.clone();
                copy.qos = QoS::AtMostOnce;
                copy.pkid = 0;
                copy.dup = false;
                copy
            });
        let (qos, pkid, topic) = (publish.qos, publish.pkid, publish.topic);
        pending.push_back(Box::pin(async move {
            match ingest.submit(intake).await {
                Ok(_) => Ack::Accepted { qos, pkid, copy },
                Err(Refused::Unavailable(reason)) => Ack::Unavailable(reason),
                Err(refused) => Ack::Rejected {
                    qos,
                    pkid,
                    topic,
                    reason: refused.to_string(),
                },
            }
        }));
        Ok(())
    }

    /// Sends the acknowledgement a device's message has earned, in arrival order.
    async fn acknowledge(&mut self, ack: Ack, local_qos2: &mut HashSet<u16>) -> Result<(), End> {
        let (qos, pkid) = match ack {
            Ack::Unavailable(reason) => {
                tracing::warn!(device = %self.id, reason, "Closing the session so the device resends later.");
                return Err(End::Error(format!("message not accepted now: {reason}")));
            }
            Ack::Relay(frame) => return self.send_to_broker(&frame).await,
            Ack::Accepted { qos, pkid, copy } => {
                if let Some(copy) = copy {
                    self.send_to_broker(&write_packet(&Packet::Publish(copy)))
                        .await?;
                }
                (qos, pkid)
            }
            Ack::Rejected {
                qos,
                pkid,
                topic,
                reason,
            } => {
                let notice = serde_json::json!({ "topic": topic, "reason": reason });
                let notice = Publish::new(
                    format!("devices/{}/rejected", self.id),
                    QoS::AtMostOnce,
                    serde_json::to_vec(&notice).unwrap_or_default(),
                );
                self.send_to_broker(&write_packet(&Packet::Publish(notice)))
                    .await?;
                (qos, pkid)
            }
        };
        match qos {
            QoS::AtMostOnce => Ok(()),
            QoS::AtLeastOnce => {
                self.queue_to_device(&Packet::PubAck(PubAck::new(pkid)));
                Ok(())
            }
            QoS::ExactlyOnce => {
                local_qos2.insert(pkid);
                self.queue_to_device(&Packet::PubRec(PubRec::new(pkid)));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_frame(name: &str, level: u8) -> Vec<u8> {
        let mut body = vec![0, name.len() as u8];
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&[level, 0x02, 0, 60, 0, 1, b'x']);
        let mut frame = vec![0x10, body.len() as u8];
        frame.extend(body);
        frame
    }

    #[test]
    fn the_protocol_level_is_read_from_a_connect_frame() {
        assert_eq!(connect_protocol_level(&connect_frame("MQTT", 4)), Some(4));
        assert_eq!(connect_protocol_level(&connect_frame("MQTT", 5)), Some(5));
        assert_eq!(connect_protocol_level(&connect_frame("MQIsdp", 3)), Some(3));
        assert_eq!(connect_protocol_level(&[0x10]), None);
        assert_eq!(connect_protocol_level(&[0x10, 0x02, 0x00]), None);
    }
}
