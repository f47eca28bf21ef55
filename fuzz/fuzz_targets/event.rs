//! `rxgate::broker::payload::event` on what a device publishes on `devices/<id>/events`: Ok or
//! a reason, never a panic; an accepted event is an object with a string `type` and a valid `ts`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rxgate::broker::payload::{MAX_PAYLOAD, event};
use rxgate::message::envelope::{self, EventBody, Stamp};
use time::format_description::well_known::Rfc3339;

fuzz_target!(|data: &[u8]| {
    let e = match event(data) {
        Ok(e) => e,
        Err(reason) => return assert!(!reason.is_empty()),
    };
    assert!(data.len() <= MAX_PAYLOAD);
    assert!(e.body.get("type").is_some_and(|t| t.is_string()));
    match (e.body.get("ts"), e.ts) {
        (None | Some(serde_json::Value::Null), None) => {}
        (Some(serde_json::Value::String(s)), Some(ts)) => {
            assert_eq!(time::OffsetDateTime::parse(s, &Rfc3339).ok(), Some(ts));
        }
        (raw, ts) => panic!("\"ts\" {raw:?} accepted as {ts:?}"),
    }
    // What the pipeline makes of it for the outbox and the cloud.
    let stamp = Stamp::new(e.ts, rxgate_fuzz::gateway_now(), true);
    let body = EventBody { event: e.body };
    let json = envelope::encode("store-0042", Some("cabinet-01"), "event", &stamp, 1, &body);
    let message: serde_json::Value = serde_json::from_slice(&json).expect("the envelope is JSON");
    rxgate_fuzz::device_ts_survives(e.ts, &message);
    let event = serde_json::Value::Object(body.event);
    assert!(
        rxgate_fuzz::json_eq(&message["event"], &event),
        "event {event} sent as {}",
        message["event"]
    );
});
