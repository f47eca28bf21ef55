//! The cloud contract: topics and the JSON envelope of every message the gateway sends.
//! Documented for backend developers in `docs/cloud-contract.md` and `docs/asyncapi.yaml`; the
//! JSON Schemas in `docs/schemas/` are checked against what this module produces. Changing a
//! field here is a breaking change of `rxgate/v1`.
//!
//! Telemetry points come in two forms, chosen per gateway by `[cloud].points` ([`PointsForm`]):
//! the full form of v1 (`{"value": 4.6, "unit": "°C", "quality": "good"}` per point, numbers as
//! 64-bit floats), the default and unchanged; and the compact form, points version 2, marked by
//! `"points_version": 2` in the message: each point's value alone, whole numbers without a
//! fraction, and a `quality` map naming only the points that are not good.

use std::collections::BTreeMap;

use serde::ser::SerializeMap as _;
use serde::{Deserialize, Serialize, Serializer};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Point, Quality, Value};
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

/// How telemetry points are written for the cloud: `[cloud].points`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PointsForm {
    /// v1: `{"value", "unit", "quality"}` per point, numbers as floats. The default.
    #[default]
    Full,
    /// Points version 2 ([`COMPACT_POINTS_VERSION`]): values alone, qualities by exception.
    Compact,
}

/// The `points_version` of a message in the compact form. A message in the full form has none.
pub const COMPACT_POINTS_VERSION: u32 = 2;

/// The body of a telemetry message, in either form.
#[derive(Debug, Clone)]
pub struct TelemetryBody {
    pub points: BTreeMap<String, Point>,
    pub form: PointsForm,
}

impl Serialize for TelemetryBody {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.form {
            PointsForm::Full => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("points", &self.points)?;
                map.end()
            }
            PointsForm::Compact => {
                let values: BTreeMap<&str, CompactValue> = self
                    .points
                    .iter()
                    .map(|(name, p)| (name.as_str(), CompactValue(p.value)))
                    .collect();
                let qualities: BTreeMap<&str, Quality> = self
                    .points
                    .iter()
                    .filter(|(_, p)| p.quality != Quality::Good)
                    .map(|(name, p)| (name.as_str(), p.quality))
                    .collect();
                let mut map = serializer.serialize_map(None)?;
                map.serialize_entry("points_version", &COMPACT_POINTS_VERSION)?;
                map.serialize_entry("points", &values)?;
                if !qualities.is_empty() {
                    map.serialize_entry("quality", &qualities)?;
                }
                map.end()
            }
        }
    }
}

/// A point's value in the compact form: a boolean; a whole number within ±2^53 (where a 64-bit
/// float is exact) as a JSON integer, any other number as it is; `null` when the point has
/// never been read.
struct CompactValue(Option<Value>);

/// 2^53: up to here every whole number is exactly a 64-bit float, and an integer in JSON.
const EXACT_INTEGERS: f64 = 9_007_199_254_740_992.0;

impl Serialize for CompactValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            None => serializer.serialize_none(),
            Some(Value::Bool(b)) => serializer.serialize_bool(b),
            Some(Value::Number(n)) if n.fract() == 0.0 && n.abs() <= EXACT_INTEGERS => {
                serializer.serialize_i64(n as i64)
            }
            Some(Value::Number(n)) => serializer.serialize_f64(n),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn points() -> BTreeMap<String, Point> {
        let point = |value, unit: Option<&str>, quality| Point {
            value,
            unit: unit.map(str::to_owned),
            quality,
        };
        BTreeMap::from([
            (
                "temperature_c".to_owned(),
                point(Some(Value::Number(4.6)), Some("°C"), Quality::Good),
            ),
            (
                "door_openings".to_owned(),
                point(Some(Value::Number(17.0)), None, Quality::Good),
            ),
            (
                "door_open".to_owned(),
                point(Some(Value::Bool(false)), None, Quality::Good),
            ),
            (
                "setpoint_c".to_owned(),
                point(Some(Value::Number(-20.0)), Some("°C"), Quality::Stale),
            ),
            (
                "humidity_pct".to_owned(),
                point(None, Some("%"), Quality::CommError),
            ),
        ])
    }

    fn message(form: PointsForm) -> String {
        let at = time::macros::datetime!(2026-05-01 08:00:00.412 UTC);
        let stamp = Stamp {
            id: Uuid::nil(),
            device_ts: None,
            gateway_ts: at,
            clock_synced: true,
        };
        let body = TelemetryBody {
            points: points(),
            form,
        };
        String::from_utf8(encode(
            "store-0042",
            Some("fridge-01"),
            "telemetry",
            &stamp,
            7,
            &body,
        ))
        .unwrap()
    }

    const HEAD: &str = r#"{"id":"00000000-0000-0000-0000-000000000000","seq":7,"site":"store-0042","device":"fridge-01","type":"telemetry","device_ts":null,"gateway_ts":"2026-05-01T08:00:00.412Z","clock_synced":true,"#;

    #[test]
    fn the_full_form_is_v1_exactly_as_before_numbers_as_floats_and_every_quality() {
        assert_eq!(PointsForm::default(), PointsForm::Full);
        assert_eq!(
            message(PointsForm::Full),
            format!(
                "{HEAD}{}",
                r#""points":{"door_open":{"value":false,"quality":"good"},"door_openings":{"value":17.0,"quality":"good"},"humidity_pct":{"unit":"%","quality":"comm_error"},"setpoint_c":{"value":-20.0,"unit":"°C","quality":"stale"},"temperature_c":{"value":4.6,"unit":"°C","quality":"good"}}}"#
            )
        );
    }

    #[test]
    fn the_compact_form_says_its_version_keeps_whole_numbers_whole_and_names_only_points_not_good()
    {
        assert_eq!(
            message(PointsForm::Compact),
            format!(
                "{HEAD}{}",
                r#""points_version":2,"points":{"door_open":false,"door_openings":17,"humidity_pct":null,"setpoint_c":-20,"temperature_c":4.6},"quality":{"humidity_pct":"comm_error","setpoint_c":"stale"}}"#
            )
        );
    }

    #[test]
    fn a_compact_reading_whose_points_are_all_good_has_no_quality_map() {
        let body = TelemetryBody {
            points: BTreeMap::from([("t".to_owned(), Point::good(Value::Number(4.25), None))]),
            form: PointsForm::Compact,
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"points_version":2,"points":{"t":4.25}}"#
        );
    }

    #[test]
    fn compact_numbers_beyond_exact_integers_or_with_a_fraction_stay_floats() {
        let json = |n: f64| serde_json::to_string(&CompactValue(Some(Value::Number(n)))).unwrap();
        assert_eq!(json(123_456_789.0), "123456789");
        assert_eq!(json(-0.5), "-0.5");
        assert_eq!(json(9_007_199_254_740_992.0), "9007199254740992");
        assert_eq!(json(1e300), "1e+300");
    }

    #[test]
    fn points_is_read_from_config_as_full_or_compact() {
        #[derive(Deserialize)]
        struct Section {
            points: PointsForm,
        }
        let form = |t: &str| toml::from_str::<Section>(t).map(|s| s.points);
        assert_eq!(form("points = \"full\"").unwrap(), PointsForm::Full);
        assert_eq!(form("points = \"compact\"").unwrap(), PointsForm::Compact);
        assert!(form("points = \"v2\"").is_err());
    }
}
