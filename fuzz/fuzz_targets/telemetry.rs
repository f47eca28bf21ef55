//! `rxgate::broker::payload::telemetry` on what a device publishes on `devices/<id>/telemetry`:
//! Ok or a reason, never a panic; what is accepted is what the device contract promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rxgate::broker::payload::{MAX_PAYLOAD, MAX_POINTS, telemetry};
use rxgate::message::envelope::{self, PointsForm, Stamp, TelemetryBody};
use rxgate::message::{Quality, Value};

fuzz_target!(|data: &[u8]| {
    let t = match telemetry(data) {
        Ok(t) => t,
        Err(reason) => return assert!(!reason.is_empty()),
    };
    assert!(data.len() <= MAX_PAYLOAD);
    assert!((1..=MAX_POINTS).contains(&t.points.len()));
    for (name, point) in &t.points {
        assert!(
            (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')),
            "accepted point name {name:?}"
        );
        assert_eq!(point.quality, Quality::Good);
        assert_eq!(point.unit, None);
        match point.value {
            Some(Value::Number(n)) => assert!(n.is_finite(), "{name} = {n} accepted as good"),
            Some(Value::Bool(_)) => {}
            None => panic!("{name} accepted without a value"),
        }
    }
    // What the pipeline makes of it for the outbox and the cloud.
    let stamp = Stamp::new(t.ts, rxgate_fuzz::gateway_now(), true);
    // In both point forms (`[cloud].points`).
    for form in [PointsForm::Full, PointsForm::Compact] {
        let body = TelemetryBody {
            points: t.points.clone(),
            form,
        };
        let json = envelope::encode(
            "store-0042",
            Some("fridge-01"),
            "telemetry",
            &stamp,
            1,
            &body,
        );
        let message: serde_json::Value =
            serde_json::from_slice(&json).expect("the envelope is JSON");
        rxgate_fuzz::device_ts_survives(t.ts, &message);
        match form {
            PointsForm::Full => {
                let sent = serde_json::to_value(&body.points).expect("points serialise");
                assert!(
                    rxgate_fuzz::json_eq(&message["points"], &sent),
                    "points {sent} sent as {}",
                    message["points"]
                );
            }
            PointsForm::Compact => {
                assert_eq!(message["points_version"], 2, "{message}");
                let names = message["points"].as_object().expect("a points map");
                assert!(
                    names.keys().eq(t.points.keys()),
                    "points {:?} sent as {:?}",
                    t.points.keys(),
                    names.keys()
                );
            }
        }
    }
});
