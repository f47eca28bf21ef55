//! The policy file: `rxgate::policy::Policy::parse(text, origin)` as `rxgate policy check` and
//! the daemon load it. It may refuse, naming at least one problem, never panic. A policy it
//! compiles is evaluated on the device contract's example events: whatever its conditions say,
//! evaluation ends (expressions run with a budget) with a decision, and never panics.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rxgate::message::{Point, Value};
use rxgate::policy::{Context, Event, Policy, Stream, telemetry_body};
use serde_json::Map;

type Body = Map<String, serde_json::Value>;

fn events() -> &'static [(Stream, &'static str, Body)] {
    static EVENTS: OnceLock<Vec<(Stream, &'static str, Body)>> = OnceLock::new();
    EVENTS.get_or_init(|| {
        let object = |text: &str| match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => unreachable!("the examples are JSON objects"),
        };
        let points = BTreeMap::from([
            (
                "temperature_c".to_owned(),
                Point::good(Value::Number(4.6), Some("°C")),
            ),
            (
                "door_open".to_owned(),
                Point::good(Value::Bool(false), None),
            ),
        ]);
        vec![
            (
                Stream::Events,
                "cabinet",
                object(
                    r#"{"type": "access", "action": "remove", "user": "nurse-7", "drawer": "A3",
                        "ndc": "0409-1234-01", "item": "Morphine 10mg", "schedule": "CII",
                        "quantity": 1, "patient_id": "P-1", "ts": "2026-05-01T08:00:00Z"}"#,
                ),
            ),
            (Stream::Telemetry, "fridge", telemetry_body(&points)),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = match Policy::parse(text, "fuzz.toml") {
        Ok(policy) => policy,
        Err(errors) => return assert!(!errors.to_string().is_empty(), "refused without a reason"),
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"rxgate fuzz pseudonym key");
    let ctx = Context {
        now: rxgate_fuzz::gateway_now(),
        pseudonym_key: &key,
    };
    for (stream, kind, body) in events() {
        let event = Event {
            device: "cabinet-01",
            kind,
            stream: *stream,
            body,
        };
        let decision = policy.evaluate(&event, &ctx);
        let _ = (decision.verdict.is_allow(), decision.verdict.reason());
    }
});
