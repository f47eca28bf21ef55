//! The access-event contract (`validate = "access-event"`): what a dispensing cabinet publishes on
//! `devices/<id>/events` when someone opens a drawer. Documented in `docs/policy.md` and as JSON
//! Schema in `docs/schemas/access-event.json`; a test keeps the three in step.
//!
//! Unknown fields are refused: a misspelt `patientId` must not slip past pseudonymisation and
//! leave the building in clear.
//!
//! Error messages name the field and say what is expected. They quote the offending value only
//! for fields with a fixed vocabulary (`type`, `action`, `schedule`, `auth`) and for `ts`, and
//! never for a field the policy protects (pseudonymises, redacts or drops): errors are logged
//! and recorded in the audit trail.

use std::fmt;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The name a rule uses to ask for this contract.
pub const SCHEMA: &str = "access-event";

/// `action`: what was done at the drawer.
pub const ACTIONS: &[&str] = &["remove", "return", "waste", "restock", "override", "count"];
/// `schedule`: the item's DEA schedule, or `none`.
pub const SCHEDULES: &[&str] = &["CII", "CIII", "CIV", "CV", "none"];
/// `auth`: how the user proved who they are (one factor, or a list of factors).
pub const AUTH_FACTORS: &[&str] = &["biometric", "badge", "pin", "password"];
/// Every field of the contract.
pub const FIELDS: &[&str] = &[
    "type",
    "action",
    "user",
    "drawer",
    "ndc",
    "item",
    "schedule",
    "quantity",
    "patient_id",
    "witness",
    "auth",
    "ts",
    "event_id",
    "note",
    "comment",
    "free_text",
];

const MAX_ID: usize = 128;
const MAX_ITEM: usize = 256;
const MAX_TEXT: usize = 4096;

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Checks `body` against the access-event contract. `protected` says whether a field's value
/// must never be quoted. Returns every problem found.
pub fn validate(body: &Map<String, Value>, protected: &dyn Fn(&str) -> bool) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut error = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.to_owned(),
            message,
        })
    };
    let quote = |field: &str, value: &str| -> String {
        if protected(field) {
            "the value".to_owned()
        } else {
            let short: String = value.chars().take(32).collect();
            let ellipsis = if value.chars().count() > 32 {
                "…"
            } else {
                ""
            };
            format!("{:?}", format!("{short}{ellipsis}"))
        }
    };

    // `null` is an absent field, everywhere in the device contract.
    let present: Map<String, Value> = body
        .iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let body = &present;
    for name in body.keys() {
        if !FIELDS.contains(&name.as_str()) {
            let shown: String = name.chars().take(64).collect();
            error(
                &format!("{shown:?}"),
                format!(
                    "unknown field; an access event has only {}",
                    FIELDS.join(", ")
                ),
            );
        }
    }

    match body.get("type") {
        Some(Value::String(t)) if t == "access" => {}
        Some(Value::String(t)) => error("type", format!("{} is not \"access\"", quote("type", t))),
        Some(_) => error("type", "must be the string \"access\"".to_owned()),
        None => error("type", "is missing; it must be \"access\"".to_owned()),
    }
    one_of(body, "action", ACTIONS, true, &mut error, &quote);
    one_of(body, "schedule", SCHEDULES, true, &mut error, &quote);
    for (field, max) in [
        ("user", MAX_ID),
        ("drawer", MAX_ID),
        ("ndc", MAX_ID),
        ("item", MAX_ITEM),
    ] {
        text(body, field, max, true, &mut error);
    }
    for (field, max) in [
        ("patient_id", MAX_ID),
        ("witness", MAX_ID),
        ("event_id", MAX_ID),
        ("note", MAX_TEXT),
        ("comment", MAX_TEXT),
        ("free_text", MAX_TEXT),
    ] {
        text(body, field, max, false, &mut error);
    }
    match body.get("quantity") {
        Some(Value::Number(n)) if n.as_f64().is_some_and(|q| q > 0.0 && q.is_finite()) => {}
        Some(Value::Number(_)) => error("quantity", "must be greater than 0".to_owned()),
        Some(_) => error("quantity", "must be a number greater than 0".to_owned()),
        None => error("quantity", "is missing; a number greater than 0".to_owned()),
    }
    match body.get("auth") {
        Some(Value::String(factor)) => {
            if !AUTH_FACTORS.contains(&factor.as_str()) {
                error(
                    "auth",
                    format!(
                        "{} is not one of {}",
                        quote("auth", factor),
                        AUTH_FACTORS.join(", ")
                    ),
                );
            }
        }
        Some(Value::Array(factors)) => {
            let mut seen = Vec::new();
            if factors.is_empty() {
                error(
                    "auth",
                    "is an empty list; give at least one factor".to_owned(),
                );
            }
            for factor in factors {
                match factor.as_str() {
                    Some(f) if AUTH_FACTORS.contains(&f) && !seen.contains(&f) => seen.push(f),
                    Some(f) if seen.contains(&f) => {
                        error("auth", format!("lists {} twice", quote("auth", f)));
                    }
                    Some(f) => error(
                        "auth",
                        format!(
                            "{} is not one of {}",
                            quote("auth", f),
                            AUTH_FACTORS.join(", ")
                        ),
                    ),
                    None => error("auth", "factors must be strings".to_owned()),
                }
            }
        }
        Some(_) => error(
            "auth",
            format!(
                "must be one of {} or a list of them",
                AUTH_FACTORS.join(", ")
            ),
        ),
        None => error(
            "auth",
            format!(
                "is missing; one of {} or a list of them",
                AUTH_FACTORS.join(", ")
            ),
        ),
    }
    match body.get("ts") {
        Some(Value::String(ts)) => {
            if OffsetDateTime::parse(ts, &Rfc3339).is_err() {
                error(
                    "ts",
                    format!(
                        "{} is not an RFC 3339 timestamp (2026-05-01T08:00:00Z)",
                        quote("ts", ts)
                    ),
                );
            }
        }
        Some(_) => error("ts", "must be an RFC 3339 string".to_owned()),
        None => error("ts", "is missing; when it happened, RFC 3339".to_owned()),
    }
    errors
}

fn one_of(
    body: &Map<String, Value>,
    field: &str,
    allowed: &[&str],
    required: bool,
    error: &mut impl FnMut(&str, String),
    quote: &impl Fn(&str, &str) -> String,
) {
    match body.get(field) {
        Some(Value::String(v)) if allowed.contains(&v.as_str()) => {}
        Some(Value::String(v)) => error(
            field,
            format!("{} is not one of {}", quote(field, v), allowed.join(", ")),
        ),
        Some(_) => error(
            field,
            format!("must be a string, one of {}", allowed.join(", ")),
        ),
        None if required => error(field, format!("is missing; one of {}", allowed.join(", "))),
        None => {}
    }
}

fn text(
    body: &Map<String, Value>,
    field: &str,
    max: usize,
    required: bool,
    error: &mut impl FnMut(&str, String),
) {
    match body.get(field) {
        Some(Value::String(v)) if v.trim().is_empty() => {
            error(field, "is empty".to_owned());
        }
        Some(Value::String(v)) if v.chars().count() > max => {
            error(field, format!("is longer than {max} characters"));
        }
        Some(Value::String(_)) => {}
        Some(_) => error(field, "must be a string".to_owned()),
        None if required => error(field, "is missing".to_owned()),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn morphine() -> Value {
        json!({"type": "access", "action": "remove", "user": "nurse-7", "drawer": "A3",
               "ndc": "0409-1234-01", "item": "Morphine 10mg", "schedule": "CII", "quantity": 1,
               "patient_id": "MRN-0012345", "auth": "badge", "ts": "2026-05-01T08:00:00Z",
               "event_id": "e-1"})
    }

    #[test]
    fn a_complete_access_event_is_valid() {
        assert_eq!(validate(&body(morphine()), &|_| false), vec![]);
        let mut e = morphine();
        e["auth"] = json!(["badge", "pin"]);
        e["witness"] = json!("rn-chen");
        e["quantity"] = json!(2.5);
        e["note"] = json!("patient asked for a smaller dose");
        assert_eq!(validate(&body(e), &|_| false), vec![]);
    }

    #[test]
    fn a_null_optional_field_is_read_as_an_absent_one() {
        let mut e = morphine();
        e["witness"] = Value::Null;
        e["note"] = Value::Null;
        assert_eq!(validate(&body(e), &|_| false), vec![]);
        let mut e = morphine();
        e["user"] = Value::Null;
        let errors: Vec<String> = validate(&body(e), &|_| false)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors, ["user: is missing"]);
    }

    #[test]
    fn every_problem_is_named_by_its_field() {
        let e = json!({"type": "access", "action": "grab", "user": 7, "drawer": "",
                       "schedule": "CVI", "quantity": 0, "auth": ["pin", "pin"],
                       "ts": "yesterday", "patientId": "MRN-1"});
        let errors = validate(&body(e), &|_| false);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let expect = [
            "\"patientId\": unknown field",
            "action: \"grab\" is not one of remove, return, waste, restock, override, count",
            "schedule: \"CVI\" is not one of CII, CIII, CIV, CV, none",
            "user: must be a string",
            "drawer: is empty",
            "ndc: is missing",
            "item: is missing",
            "quantity: must be greater than 0",
            "auth: lists \"pin\" twice",
            "ts: \"yesterday\" is not an RFC 3339 timestamp",
        ];
        for e in expect {
            assert!(
                text.iter().any(|t| t.starts_with(e)),
                "{e} not in {text:#?}"
            );
        }
        assert_eq!(text.len(), expect.len(), "{text:#?}");
    }

    #[test]
    fn protected_values_are_never_quoted() {
        let mut e = morphine();
        e["patient_id"] = json!(12345);
        e["action"] = json!("MRN-0012345");
        let errors = validate(&body(e), &|f| f == "patient_id" || f == "action");
        let text = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!text.contains("12345"), "{text}");
        assert!(text.contains("action: the value is not one of"), "{text}");
        assert!(text.contains("patient_id: must be a string"), "{text}");
    }
}
