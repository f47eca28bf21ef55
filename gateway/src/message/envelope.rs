//! The cloud contract: topics and the JSON envelope of every message the gateway sends.
//! Documented for backend developers in `docs/cloud-contract.md` and `docs/asyncapi.yaml`; the
//! JSON Schemas in `docs/schemas/` are checked against what this module produces. Changing a
//! field here is a breaking change of `rxgate/v1`.

use std::collections::BTreeMap;

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::Point;
use crate::clock::rfc3339;

/// Version segment of every topic.
pub const VERSION: &str = "v1";

/// `rxgate/v1/<site>/devices/<device>/<stream>`.
pub fn device_topic(site: &str, device: &str, stream: Stream) -> String {
    format!(
        "rxgate/{VERSION}/{site}/devices/{device}/{}",
        stream.as_str()
    )
}

/// `rxgate/v1/<site>/gateway/status`: retained `online`/`offline`, with a last will.
pub fn gateway_status_topic(site: &str) -> String {
    format!("rxgate/{VERSION}/{site}/gateway/status")
}

/// `rxgate/v1/<site>/alerts`.
pub fn alerts_topic(site: &str) -> String {
    format!("rxgate/{VERSION}/{site}/alerts")
}

/// The per-device streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Telemetry,
    Events,
    Status,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Telemetry => "telemetry",
            Stream::Events => "events",
            Stream::Status => "status",
        }
    }
}

/// Fields common to every message. `body` is flattened next to them.
#[derive(Debug, Serialize)]
pub struct Envelope<'a, B: Serialize> {
    /// UUIDv7: unique per message, for de-duplication; time-ordered.
    pub id: Uuid,
    /// Position in this message's stream (topic), from 1, without gaps.
    pub seq: u64,
    pub site: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<&'a str>,
    /// `telemetry`, `event`, `status` or `alert`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The device's own timestamp, when it sent one (RFC 3339).
    pub device_ts: Option<String>,
    /// When the gateway accepted the message (RFC 3339, UTC).
    pub gateway_ts: String,
    /// Whether the gateway's clock was synchronised when it stamped `gateway_ts`.
    pub clock_synced: bool,
    #[serde(flatten)]
    pub body: B,
}

#[derive(Debug, Clone, Serialize)]
pub struct TelemetryBody {
    pub points: BTreeMap<String, Point>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventBody {
    pub event: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusBody {
    pub online: bool,
    pub reason: String,
}

/// Stamps common to a message, decided when the gateway accepts it.
#[derive(Debug, Clone)]
pub struct Stamp {
    pub id: Uuid,
    pub device_ts: Option<OffsetDateTime>,
    pub gateway_ts: OffsetDateTime,
    pub clock_synced: bool,
}

impl Stamp {
    pub fn new(
        device_ts: Option<OffsetDateTime>,
        gateway_ts: OffsetDateTime,
        clock_synced: bool,
    ) -> Stamp {
        Stamp {
            id: new_id(gateway_ts),
            device_ts,
            gateway_ts,
            clock_synced,
        }
    }
}

/// A UUIDv7 for a message accepted at `at`.
pub fn new_id(at: OffsetDateTime) -> Uuid {
    let nanos = at.unix_timestamp_nanos().max(0);
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(0);
    let subsec = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, subsec))
}

/// Serialises a message of `kind` with `body`, once its stream `seq` is known.
pub fn encode<B: Serialize>(
    site: &str,
    device: Option<&str>,
    kind: &'static str,
    stamp: &Stamp,
    seq: u64,
    body: &B,
) -> Vec<u8> {
    let envelope = Envelope {
        id: stamp.id,
        seq,
        site,
        device,
        kind,
        device_ts: stamp.device_ts.map(rfc3339),
        gateway_ts: rfc3339(stamp.gateway_ts),
        clock_synced: stamp.clock_synced,
        body,
    };
    serde_json::to_vec(&envelope).unwrap_or_default()
}
