//! Transforms a rule applies to the event's body, pseudonyms, and how telemetry is presented to
//! the engine.
//!
//! # Telemetry
//! A reading is presented as the body `{"points": {"<name>": value}}`, value being the point's
//! number, boolean, or `null` when the point could not be read ([`telemetry_body`]). Transform
//! names (`rename`, `scale`, `convert`, `drop`, `redact`, `pseudonymise`) then name *points*;
//! for events they name top-level fields. [`Decision::telemetry_points`] maps the transformed
//! body back onto `Point`s, keeping each point's quality and unit (the unit a `convert` gives
//! replaces it).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ring::hmac;
use serde_json::{Map, Number, Value};

use super::rule::Rule;
use super::{Decision, Stream};
use crate::message::{Point, Quality};

/// What a redacted field holds.
pub const REDACTED: &str = "redacted";

/// The keyed pseudonym of `value`: HMAC-SHA256 under `key`, `ps-` and the first 16 bytes in
/// lowercase hex. The same value under the same key always gives the same pseudonym, so the
/// cloud can link a patient's events without learning who the patient is.
pub fn pseudonym(key: &hmac::Key, value: &str) -> String {
    let tag = hmac::sign(key, value.as_bytes());
    let mut out = String::with_capacity(3 + 32);
    out.push_str("ps-");
    for byte in tag.as_ref().iter().take(16) {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// `{"points": {name: value}}` for a reading's points.
pub fn telemetry_body(points: &BTreeMap<String, Point>) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, point) in points {
        let value = match point.value {
            Some(crate::message::Value::Number(n)) => {
                Number::from_f64(n).map_or(Value::Null, Value::Number)
            }
            Some(crate::message::Value::Bool(b)) => Value::Bool(b),
            None => Value::Null,
        };
        out.insert(name.clone(), value);
    }
    let mut body = Map::new();
    body.insert("points".to_owned(), Value::Object(out));
    body
}

impl Decision {
    /// The points of an allowed reading after the policy's transforms, built from the reading's
    /// `original` points: renamed points keep their source's quality and unit; a converted point
    /// takes the conversion's unit; a value that is no longer a number or boolean (redacted,
    /// pseudonymised) becomes absent.
    pub fn telemetry_points(&self, original: &BTreeMap<String, Point>) -> BTreeMap<String, Point> {
        let mut out = BTreeMap::new();
        let Some(Value::Object(points)) = self.body.get("points") else {
            return out;
        };
        for (name, value) in points {
            let source_name = self.point_sources.get(name).unwrap_or(name);
            let source = original.get(source_name);
            let value = match value {
                Value::Bool(b) => Some(crate::message::Value::Bool(*b)),
                Value::Number(n) => n.as_f64().map(crate::message::Value::Number),
                _ => None,
            };
            let unit = self
                .point_units
                .get(name)
                .cloned()
                .or_else(|| source.and_then(|p| p.unit.clone()));
            out.insert(
                name.clone(),
                Point {
                    value,
                    unit,
                    quality: source.map_or(Quality::Good, |p| p.quality),
                },
            );
        }
        out
    }
}

/// Rounds to 9 decimal places, so `39.2 °F` becomes `4` °C and not `4.000000000000001`.
fn tidy(x: f64) -> f64 {
    if x.abs() < 1e9 {
        (x * 1e9).round() / 1e9
    } else {
        x
    }
}

/// Applies `rule`'s transforms to `body` in a fixed order — rename, scale, convert, pseudonymise,
/// redact, drop — and describes what changed. Names refer to points for telemetry, to top-level
/// fields for events; within one rule, names after `rename` are the new names.
pub(crate) fn apply(
    rule: &Rule,
    stream: Stream,
    body: &mut Map<String, Value>,
    key: &hmac::Key,
    decision: &mut Decision,
    did: &mut Vec<String>,
    pseudonymised: &mut std::collections::BTreeSet<String>,
) {
    let target = match stream {
        Stream::Events => Some(body),
        Stream::Telemetry => match body.get_mut("points") {
            Some(Value::Object(points)) => Some(points),
            _ => None,
        },
    };
    let Some(target) = target else {
        did.push("no points to transform".to_owned());
        return;
    };
    let telemetry = stream == Stream::Telemetry;

    // Renames happen at once: `{a = "b", b = "a"}` swaps.
    let mut moved = Vec::new();
    for (old, new) in &rule.rename {
        if let Some(value) = target.remove(old) {
            moved.push((old, new, value));
        }
    }
    for (old, new, value) in moved {
        if target.insert(new.clone(), value).is_some() {
            did.push(format!("renamed {old} to {new}, replacing the {new} there"));
        } else {
            did.push(format!("renamed {old} to {new}"));
        }
        if telemetry {
            let source = decision
                .point_sources
                .remove(old)
                .unwrap_or_else(|| old.clone());
            decision.point_sources.insert(new.clone(), source);
            if let Some(unit) = decision.point_units.remove(old) {
                decision.point_units.insert(new.clone(), unit);
            }
        }
    }

    let mut numeric =
        |name: &str, verb: &str, f: &dyn Fn(f64) -> f64, did: &mut Vec<String>| -> bool {
            match target.get_mut(name) {
                None => false,
                Some(value) => {
                    let result = value
                        .as_f64()
                        .map(|x| tidy(f(x)))
                        .and_then(Number::from_f64);
                    match result {
                        Some(n) => {
                            *value = Value::Number(n);
                            did.push(format!("{verb} {name}"));
                            true
                        }
                        None => {
                            did.push(format!(
                                "left {name} as it is: not a number, or out of range"
                            ));
                            false
                        }
                    }
                }
            }
        };
    for (name, factor) in &rule.scale {
        numeric(name, &format!("scaled by {factor}"), &|x| x * factor, did);
    }
    for (name, conversion) in &rule.convert {
        let verb = format!("converted ({})", conversion.as_str());
        if numeric(name, &verb, &|x| conversion.apply(x), did) && telemetry {
            decision
                .point_units
                .insert(name.clone(), conversion.unit().to_owned());
        }
    }

    for name in &rule.pseudonymise {
        if let Some(value) = target.get_mut(name)
            && !pseudonymised.contains(name)
            && pseudonymise_value(value, key)
        {
            did.push(format!("pseudonymised {name}"));
            pseudonymised.insert(name.clone());
        }
    }
    for name in &rule.redact {
        if let Some(value) = target.get_mut(name) {
            *value = Value::String(REDACTED.to_owned());
            did.push(format!("redacted {name}"));
        }
    }
    for name in &rule.drop {
        if target.remove(name).is_some() {
            did.push(format!("dropped {name}"));
        }
    }
}

/// Replaces `value` with its pseudonym (of the string, or of the JSON text of anything else but
/// `null`). Returns whether it changed.
pub(crate) fn pseudonymise_value(value: &mut Value, key: &hmac::Key) -> bool {
    let hidden = match &*value {
        Value::Null => return false,
        Value::String(s) => pseudonym(key, s),
        other => pseudonym(key, &other.to_string()),
    };
    *value = Value::String(hidden);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_keyed_deterministic_and_shaped_ps_hex32() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"site secret");
        let a = pseudonym(&key, "MRN-0012345");
        assert_eq!(a, pseudonym(&key, "MRN-0012345"));
        assert_ne!(a, pseudonym(&key, "MRN-0012346"));
        assert_ne!(
            a,
            pseudonym(&hmac::Key::new(hmac::HMAC_SHA256, b"other"), "MRN-0012345")
        );
        assert_eq!(a.len(), 35);
        assert!(a.starts_with("ps-"));
        assert!(
            a[3..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        // RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
        let jefe = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(
            pseudonym(&jefe, "what do ya want for nothing?"),
            "ps-5bdcc146bf60754e6a042426089575c7"
        );
    }

    #[test]
    fn telemetry_is_presented_as_plain_values_and_mapped_back_with_quality_and_units() {
        let mut points = BTreeMap::new();
        points.insert(
            "temp_f".to_owned(),
            Point::good(crate::message::Value::Number(39.2), Some("°F")),
        );
        points.insert(
            "door".to_owned(),
            Point {
                value: None,
                unit: None,
                quality: Quality::CommError,
            },
        );
        let body = telemetry_body(&points);
        assert_eq!(
            Value::Object(body.clone()),
            serde_json::json!({"points": {"temp_f": 39.2, "door": null}})
        );
        let mut decision = Decision::new(body);
        decision
            .point_sources
            .insert("temperature_c".into(), "temp_f".into());
        decision
            .point_units
            .insert("temperature_c".into(), "°C".into());
        decision.body = match serde_json::json!({"points": {"temperature_c": 4.0, "door": null}}) {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let back = decision.telemetry_points(&points);
        assert_eq!(
            back["temperature_c"].value,
            Some(crate::message::Value::Number(4.0))
        );
        assert_eq!(back["temperature_c"].unit.as_deref(), Some("°C"));
        assert_eq!(back["temperature_c"].quality, Quality::Good);
        assert_eq!(back["door"].value, None);
        assert_eq!(back["door"].quality, Quality::CommError);
    }
}
