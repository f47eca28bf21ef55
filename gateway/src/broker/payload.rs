//! The device payload contract (`docs/device-contract.md`), parsed strictly: a malformed message
//! is refused with a reason the device's developer can act on.
//!
//! - `devices/<id>/telemetry`: `{"ts": RFC 3339 (optional), "points": {"name": number | bool}}`
//! - `devices/<id>/events`: a JSON object with a string `type` and an optional RFC 3339 `ts`;
//!   its fields are checked by the policy engine.
//!
//! A refusal's reason is logged and kept in the audit trail for years, so it never quotes what
//! the device sent: a device that puts a patient identifier where a number belongs must not get
//! it written to disk in the clear. Values are named by their JSON type, fields and points by
//! their name only when it is a well-formed point name, timestamps not at all.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::message::{Point, Quality, Value};

/// Largest payload accepted on `telemetry` or `events`.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Most points in one telemetry message.
pub const MAX_POINTS: usize = 256;

/// A parsed telemetry message.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    pub ts: Option<OffsetDateTime>,
    pub points: BTreeMap<String, Point>,
}

/// A parsed event message.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub ts: Option<OffsetDateTime>,
    pub body: serde_json::Map<String, serde_json::Value>,
}

fn is_point_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// "a string", "an array", ...: what a refusal says about a value instead of quoting it.
fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn parse_ts(ts: &str) -> Result<OffsetDateTime, String> {
    let parsed = OffsetDateTime::parse(ts, &Rfc3339)
        .map_err(|e| format!("\"ts\" is not an RFC 3339 timestamp: {e}"))?;
    // Everything downstream works in UTC: "9999-12-31T23:59:59-01:00" is valid RFC 3339 but
    // falls in the year 10000 there, which no RFC 3339 timestamp can name.
    parsed
        .checked_to_offset(time::UtcOffset::UTC)
        .ok_or_else(|| "\"ts\" is after 9999-12-31T23:59:59Z".to_owned())
}

/// Parses `payload` as a JSON object. serde_json's syntax errors name a position, never the
/// text at it. A field whose value is `null` is absent, as if it had been left out: every field of
/// the device contract treats the two alike.
fn json_object(
    payload: &[u8],
    what: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    check_size(payload)?;
    match serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))? {
        serde_json::Value::Object(mut object) => {
            object.retain(|_, value| !value.is_null());
            Ok(object)
        }
        other => Err(format!(
            "{what} must be a JSON object, not {}",
            kind(&other)
        )),
    }
}

fn check_size(payload: &[u8]) -> Result<(), String> {
    if payload.len() > MAX_PAYLOAD {
        return Err(format!(
            "payload of {} bytes is over the {MAX_PAYLOAD}-byte limit",
            payload.len()
        ));
    }
    Ok(())
}

/// Parses a telemetry payload.
pub fn telemetry(payload: &[u8]) -> Result<Telemetry, String> {
    let mut message = json_object(payload, "a telemetry message")?;
    let raw_points = message.remove("points");
    let raw_ts = message.remove("ts");
    if !message.is_empty() {
        return Err(format!(
            "a telemetry message has only \"ts\" and \"points\"; this one has {} other field(s)",
            message.len()
        ));
    }
    let raw_points = match raw_points {
        Some(serde_json::Value::Object(points)) => points,
        Some(other) => {
            return Err(format!(
                "\"points\" must be an object of name: value, not {}",
                kind(&other)
            ));
        }
        None => return Err("a telemetry message needs \"points\"".to_owned()),
    };
    if raw_points.is_empty() {
        return Err("\"points\" is empty; send at least one point".to_owned());
    }
    if raw_points.len() > MAX_POINTS {
        return Err(format!(
            "{} points in one message; at most {MAX_POINTS}",
            raw_points.len()
        ));
    }
    let mut points = BTreeMap::new();
    for (name, value) in raw_points {
        if !is_point_name(&name) {
            return Err(format!(
                "a point name of {} characters is not 1-64 letters, digits, '_', '.' or '-'",
                name.chars().count()
            ));
        }
        let value = match value {
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => match n.as_f64() {
                Some(f) if f.is_finite() => Value::Number(f),
                _ => return Err(format!("point {name:?} is not a finite number")),
            },
            other => {
                return Err(format!(
                    "point {name:?} is {}, neither a number nor a boolean",
                    kind(&other)
                ));
            }
        };
        points.insert(
            name,
            Point {
                value: Some(value),
                unit: None,
                quality: Quality::Good,
            },
        );
    }
    let ts = match raw_ts {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(ts)) => Some(parse_ts(&ts)?),
        Some(other) => {
            return Err(format!(
                "\"ts\" must be an RFC 3339 string, not {}",
                kind(&other)
            ));
        }
    };
    Ok(Telemetry { ts, points })
}

/// Parses an event payload (its fields are the policy engine's business).
pub fn event(payload: &[u8]) -> Result<Event, String> {
    let body = json_object(payload, "an event")?;
    match body.get("type") {
        Some(serde_json::Value::String(_)) => {}
        Some(other) => {
            return Err(format!("\"type\" must be a string, not {}", kind(other)));
        }
        None => return Err("an event needs a \"type\"".to_owned()),
    }
    let ts = match body.get("ts") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(ts)) => Some(parse_ts(ts)?),
        Some(other) => {
            return Err(format!(
                "\"ts\" must be an RFC 3339 string, not {}",
                kind(other)
            ));
        }
    };
    Ok(Event { ts, body })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_telemetry_message_parses_into_good_points() {
        let t = telemetry(
            br#"{"ts":"2026-05-01T08:00:00Z","points":{"temperature_c":4.5,"door_open":false}}"#,
        )
        .unwrap();
        assert_eq!(t.ts, Some(time::macros::datetime!(2026-05-01 08:00 UTC)));
        assert_eq!(t.points["temperature_c"].value, Some(Value::Number(4.5)));
        assert_eq!(t.points["door_open"].value, Some(Value::Bool(false)));
        assert!(telemetry(br#"{"points":{"t":1}}"#).unwrap().ts.is_none());
    }

    #[test]
    fn a_null_field_is_read_as_an_absent_one() {
        assert!(
            telemetry(br#"{"ts":null,"points":{"t":1}}"#)
                .unwrap()
                .ts
                .is_none()
        );
        let e = event(br#"{"type":"access","witness":null,"note":null,"ts":null}"#).unwrap();
        assert!(e.ts.is_none());
        assert_eq!(e.body.keys().collect::<Vec<_>>(), ["type"]);
        assert!(
            telemetry(br#"{"points":null}"#)
                .unwrap_err()
                .contains("needs \"points\""),
            "a null points is a missing one"
        );
        assert_eq!(
            event(br#"{"type":null}"#).unwrap_err(),
            "an event needs a \"type\""
        );
    }

    #[test]
    fn malformed_telemetry_is_refused_with_a_reason_naming_the_problem() {
        let cases: [(&[u8], &str); 11] = [
            (b"not json", "not JSON"),
            (br#"{"points":{}}"#, "empty"),
            (
                br#"{"points":{"t":"4.5"}}"#,
                "neither a number nor a boolean",
            ),
            (
                br#"{"points":{"t":null}}"#,
                "neither a number nor a boolean",
            ),
            (br#"{"points":{"bad name":1}}"#, "point name"),
            (br#"{"ts":"yesterday","points":{"t":1}}"#, "RFC 3339"),
            (
                br#"{"points":{"t":1},"extra":true}"#,
                "has only \"ts\" and \"points\"",
            ),
            (br#"{"pts":{"t":1}}"#, "has only"),
            (br#"{"ts":"2026-05-01T08:00:00Z"}"#, "needs \"points\""),
            (br#"{"points":[1]}"#, "not an array"),
            (br#"[1,2]"#, "must be a JSON object, not an array"),
        ];
        for (payload, expected) in cases {
            let err = telemetry(payload).unwrap_err();
            assert!(
                err.contains(expected),
                "{}: {err}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn oversized_payloads_and_too_many_points_are_refused() {
        let big = vec![b' '; MAX_PAYLOAD + 1];
        assert!(telemetry(&big).unwrap_err().contains("limit"));
        let many: String = (0..=MAX_POINTS)
            .map(|i| format!("\"p{i}\":1"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(
            telemetry(format!("{{\"points\":{{{many}}}}}").as_bytes())
                .unwrap_err()
                .contains("at most")
        );
    }

    #[test]
    fn an_event_needs_a_string_type_and_a_valid_ts() {
        let e = event(br#"{"type":"access","action":"remove","ts":"2026-05-01T08:00:00+02:00"}"#)
            .unwrap();
        assert_eq!(e.body["action"], "remove");
        assert!(e.ts.is_some());
        assert!(
            event(br#"{"action":"remove"}"#)
                .unwrap_err()
                .contains("needs a \"type\"")
        );
        assert!(
            event(br#"{"type":3}"#)
                .unwrap_err()
                .contains("must be a string")
        );
        assert!(event(br#""access""#).unwrap_err().contains("JSON object"));
        assert!(
            event(br#"{"type":"access","ts":12}"#)
                .unwrap_err()
                .contains("RFC 3339")
        );
    }

    /// Refusal reasons are logged and audited: what the device sent is described, never quoted.
    #[test]
    fn refusal_reasons_never_quote_what_the_device_sent() {
        let secret = "MRN-7788990";
        let telemetry_cases = [
            format!(r#"{{"points":{{"patient_id":"{secret}"}}}}"#),
            format!(r#"{{"points":"{secret}"}}"#),
            format!(r#"{{"points":{{"{secret} x":1}}}}"#),
            format!(r#"{{"points":{{"t":1}},"{secret}":1}}"#),
            format!(r#"{{"ts":"{secret}","points":{{"t":1}}}}"#),
            format!(r#"{{"ts":["{secret}"],"points":{{"t":1}}}}"#),
            format!(r#""{secret}""#),
            format!(r#"{{"points":{{"t":1}}}} "{secret}""#),
        ];
        for payload in &telemetry_cases {
            let err = telemetry(payload.as_bytes()).unwrap_err();
            assert!(!err.contains(secret), "{payload} → {err}");
        }
        let event_cases = [
            format!(r#"{{"type":{{"id":"{secret}"}}}}"#),
            format!(r#"{{"type":"access","ts":"{secret}"}}"#),
            format!(r#"{{"type":"access","ts":{{"p":"{secret}"}}}}"#),
            format!(r#"["{secret}"]"#),
        ];
        for payload in &event_cases {
            let err = event(payload.as_bytes()).unwrap_err();
            assert!(!err.contains(secret), "{payload} → {err}");
        }
    }

    /// Found by the `telemetry` and `event` fuzz targets: valid RFC 3339 that is past the year
    /// 9999 in UTC panicked the outbox writer when it formatted the message.
    #[test]
    fn a_ts_past_9999_in_utc_is_refused() {
        let refusals = [
            telemetry(br#"{"ts":"9999-12-31T23:59:59-01:00","points":{"t":1}}"#).map(|_| ()),
            event(br#"{"type":"access","ts":"9999-12-31T23:59:59-01:00"}"#).map(|_| ()),
        ];
        for refusal in refusals {
            let err = refusal.unwrap_err();
            assert!(err.contains("after 9999-12-31T23:59:59Z"), "{err}");
        }
        assert!(telemetry(br#"{"ts":"9999-12-31T23:59:59Z","points":{"t":1}}"#).is_ok());
    }

    proptest! {
        /// Property-based fuzzing of the device payload parsers: any bytes give Ok or a reason,
        /// never a panic.
        #[test]
        fn arbitrary_bytes_never_panic_the_payload_parsers(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = telemetry(&bytes);
            let _ = event(&bytes);
        }

        #[test]
        fn arbitrary_json_shaped_input_never_panics(s in r#"\{("(ts|points|type|x)":(\{("[a-z ]{0,3}":(-?[0-9]{1,3}(\.[0-9])?|true|null|"x"),?){0,3}\}|"[0-9TZ:-]{0,20}"|[0-9]+),?){0,3}\}"#) {
            let _ = telemetry(s.as_bytes());
            let _ = event(s.as_bytes());
        }
    }
}
