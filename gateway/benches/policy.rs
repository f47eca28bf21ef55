//! The policy engine on its hot path: the default policy deciding about a telemetry reading and
//! about a controlled-substance access event (validated, pseudonymised, flagged, audited).
//!
//! `cargo bench -p rxgate --bench policy` (add `-- --quick` for a short run). Throughput is
//! reported in decisions per second.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ring::hmac;
use rxgate::message::{Point, Value};
use rxgate::policy::{Context, Event, Policy, Stream, telemetry_body};
use time::macros::datetime;

fn policy(c: &mut Criterion) {
    let policy = Policy::builtin();
    let key = hmac::Key::new(hmac::HMAC_SHA256, b"bench site key");
    let ctx = Context {
        now: datetime!(2026-05-01 22:00 UTC),
        pseudonym_key: &key,
    };

    let mut points = BTreeMap::new();
    points.insert(
        "temperature_c".to_owned(),
        Point::good(Value::Number(4.6), Some("°C")),
    );
    points.insert(
        "probe2_temperature_c".to_owned(),
        Point::good(Value::Number(4.9), Some("°C")),
    );
    points.insert(
        "humidity_pct".to_owned(),
        Point::good(Value::Number(41.0), Some("%")),
    );
    points.insert(
        "door_open".to_owned(),
        Point::good(Value::Bool(false), None),
    );
    let reading = telemetry_body(&points);

    let access = match serde_json::json!({
        "type": "access", "action": "override", "user": "rn-ortiz", "drawer": "A3",
        "ndc": "0409-1890-01", "item": "Morphine sulfate 4 mg/mL injection", "schedule": "CII",
        "quantity": 1, "patient_id": "MRN-0012345", "auth": ["badge", "pin"],
        "ts": "2026-05-01T23:00:00+01:00", "event_id": "4f1c-17", "note": "bed 12"
    }) {
        serde_json::Value::Object(m) => m,
        _ => unreachable!(),
    };
    let check = policy.evaluate(
        &Event {
            device: "cabinet-01",
            kind: "cabinet",
            stream: Stream::Events,
            body: &access,
        },
        &ctx,
    );
    assert!(
        check.verdict.is_allow() && check.alerts.len() == 2,
        "{}",
        check.explain()
    );

    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(1));
    group.bench_function("default/telemetry", |b| {
        b.iter(|| {
            policy.evaluate(
                black_box(&Event {
                    device: "fridge-01",
                    kind: "fridge",
                    stream: Stream::Telemetry,
                    body: &reading,
                }),
                &ctx,
            )
        })
    });
    group.bench_function("default/controlled-access-event", |b| {
        b.iter(|| {
            policy.evaluate(
                black_box(&Event {
                    device: "cabinet-01",
                    kind: "cabinet",
                    stream: Stream::Events,
                    body: &access,
                }),
                &ctx,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, policy);
criterion_main!(benches);
