use std::collections::BTreeMap;
use std::time::Duration;

use time::macros::datetime;

use super::*;
use crate::message::Quality;

const T0: OffsetDateTime = datetime!(2026-05-01 12:00 UTC);

fn stage(policy: &str) -> (tempfile::TempDir, PolicyStage) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let handle = PolicyHandle::load(Some(&path)).unwrap();
    let key = hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef0123456789abcdef");
    (dir, PolicyStage::new(handle, key))
}

fn reading(points: &[(&str, f64)]) -> Intake {
    let mut map = BTreeMap::new();
    for (name, value) in points {
        map.insert(
            (*name).to_owned(),
            Point::good(Value::Number(*value), Some("°C")),
        );
    }
    Intake::Telemetry(Reading {
        device: "fridge-01".to_owned(),
        kind: "fridge".to_owned(),
        device_ts: None,
        points: map,
    })
}

#[test]
fn a_device_over_its_rate_limit_is_refused_until_its_bucket_refills() {
    let (_dir, mut stage) = stage(
        "default = \"allow\"\n[[rules]]\nname = \"limit\"\nstream = \"telemetry\"\nrate_limit = { per_second = 2.0, burst = 3 }\n",
    );
    let refused: Vec<bool> = (0..5)
        .map(|_| stage.apply(reading(&[("t", 4.0)]), T0).refused.is_some())
        .collect();
    assert_eq!(refused, [false, false, false, true, true]);
    let later = stage.apply(reading(&[("t", 4.0)]), T0 + Duration::from_millis(600));
    assert!(
        later.refused.is_none(),
        "one token back after half a second at 2/s"
    );
    let (refusal, class) = stage
        .apply(reading(&[("t", 4.0)]), T0 + Duration::from_millis(600))
        .refused
        .unwrap();
    assert_eq!(class, "rate_limited");
    assert!(refusal.to_string().contains("rate limit"), "{refusal}");
}

#[test]
fn a_deadband_thins_what_goes_to_the_cloud_but_never_what_the_cold_chain_sees() {
    let (_dir, mut stage) = stage(
        "default = \"allow\"\n[[rules]]\nname = \"band\"\nstream = \"telemetry\"\ndeadband = { point = \"temperature_c\", delta = 0.5, max_interval = \"5m\" }\n",
    );
    let mut forwarded = Vec::new();
    let mut observed = 0;
    for (i, t) in [4.0, 4.2, 4.4, 4.6, 4.7, 5.2].iter().enumerate() {
        let shaped = stage.apply(
            reading(&[("temperature_c", *t)]),
            T0 + Duration::from_secs(10 * i as u64),
        );
        if shaped.observed.is_some() {
            observed += 1;
        }
        if shaped.intake.is_some() {
            forwarded.push(*t);
        }
    }
    assert_eq!(
        forwarded,
        [4.0, 4.6, 5.2],
        "a move of more than 0.5 from the last forwarded"
    );
    assert_eq!(observed, 6);
    let after = stage.apply(
        reading(&[("temperature_c", 5.2)]),
        T0 + Duration::from_secs(50 + 301),
    );
    assert!(
        after.intake.is_some(),
        "forwarded after max_interval even without change"
    );
}

#[test]
fn renamed_and_converted_points_keep_their_quality_and_get_their_unit() {
    let (_dir, mut stage) = stage(
        "default = \"allow\"\n[[rules]]\nname = \"units\"\nstream = \"telemetry\"\nrename = { temp_f = \"temperature_c\" }\nconvert = { temperature_c = \"f_to_c\" }\n",
    );
    let mut points = BTreeMap::new();
    points.insert(
        "temp_f".to_owned(),
        Point {
            value: Some(Value::Number(41.0)),
            unit: Some("°F".to_owned()),
            quality: Quality::Stale,
        },
    );
    let shaped = stage.apply(
        Intake::Telemetry(Reading {
            device: "fridge-01".to_owned(),
            kind: "fridge".to_owned(),
            device_ts: None,
            points,
        }),
        T0,
    );
    let Some(Intake::Telemetry(out)) = shaped.intake else {
        panic!("forwarded")
    };
    let point = &out.points["temperature_c"];
    assert!(
        (point.value.unwrap().as_f64().unwrap() - 5.0).abs() < 1e-9,
        "{point:?}"
    );
    assert_eq!(point.quality, Quality::Stale);
    assert_eq!(point.unit.as_deref(), Some("°C"));
}

#[test]
fn a_denied_event_is_refused_with_its_reason_and_nothing_is_forwarded() {
    let (_dir, mut stage) = stage(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/policy.toml"
        ))
        .unwrap(),
    );
    let mut body = serde_json::Map::new();
    body.insert("type".to_owned(), "maintenance".into());
    let shaped = stage.apply(
        Intake::Event {
            device: "cabinet-01".to_owned(),
            kind: "cabinet".to_owned(),
            device_ts: None,
            body,
        },
        T0,
    );
    assert!(shaped.intake.is_none());
    let (refused, class) = shaped.refused.unwrap();
    assert_eq!(class, "policy_denied");
    assert!(
        refused.to_string().contains("unknown event type"),
        "{refused}"
    );
}

#[test]
fn a_reload_that_fails_keeps_the_running_policy_and_remembers_why() {
    let (dir, stage) = stage("default = \"allow\"\n");
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, "default = \"maybe\"\n").unwrap();
    let err = stage.handle.reload().unwrap_err();
    assert!(
        stage.handle.last_error().unwrap().contains("default"),
        "{err}"
    );
    assert_eq!(
        stage.handle.current().default_action(),
        crate::policy::DefaultAction::Allow
    );
    std::fs::write(&path, "default = \"deny\"\n").unwrap();
    stage.handle.reload().unwrap();
    assert!(stage.handle.last_error().is_none());
    assert_eq!(
        stage.handle.current().default_action(),
        crate::policy::DefaultAction::Deny
    );
}

fn forwarded_points(shaped: &Shaped) -> Option<&BTreeMap<String, Point>> {
    match &shaped.intake {
        Some(Intake::Telemetry(r)) => Some(&r.points),
        _ => None,
    }
}

#[test]
fn a_rule_that_drops_every_point_forwards_nothing_but_the_cold_chain_still_sees_the_reading() {
    let (_dir, mut stage) = stage(
        "default = \"allow\"\n[[rules]]\nname = \"local-only\"\nstream = \"telemetry\"\ndrop = [\"t\", \"h\"]\n",
    );
    let shaped = stage.apply(reading(&[("t", 4.0), ("h", 40.0)]), T0);
    assert!(shaped.refused.is_none(), "dropping is not refusing");
    assert!(
        shaped.intake.is_none(),
        "nothing of the message is left for the cloud, so nothing is sent"
    );
    let observed = shaped.observed.expect("the cold chain sees the reading");
    assert_eq!(
        observed.points.keys().collect::<Vec<_>>(),
        ["h", "t"],
        "a privacy rule never blinds the cold chain"
    );

    let (_dir, mut all) = self::stage(
        "default = \"allow\"\n[[rules]]\nname = \"all\"\nstream = \"telemetry\"\nredact = [\"t\"]\n",
    );
    assert!(
        all.apply(reading(&[("t", 4.0)]), T0).intake.is_none(),
        "a message whose only point was redacted carries nothing"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]

    /// Whatever a telemetry rule drops or redacts never reaches the cloud with its value, and a
    /// message left with no point is not sent at all.
    #[test]
    fn dropped_and_redacted_points_never_reach_the_cloud(
        points in proptest::collection::btree_map("[a-e]", -50.0f64..50.0, 1..5),
        dropped in proptest::collection::btree_set("[a-e]", 0..5),
        redacted in proptest::collection::btree_set("[a-e]", 0..5),
    ) {
        let list = |s: &std::collections::BTreeSet<String>| {
            s.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
        };
        let (_dir, mut stage) = self::stage(&format!(
            "default = \"allow\"\n[[rules]]\nname = \"privacy\"\nstream = \"telemetry\"\npriority = \"normal\"\ndrop = [{}]\nredact = [{}]\n",
            list(&dropped),
            list(&redacted),
        ));
        let named: Vec<(&str, f64)> = points.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        let shaped = stage.apply(reading(&named), T0);
        proptest::prop_assert!(shaped.refused.is_none());
        let kept: Vec<&String> = points
            .keys()
            .filter(|n| !dropped.contains(*n) && !redacted.contains(*n))
            .collect();
        match forwarded_points(&shaped) {
            None => proptest::prop_assert!(kept.is_empty(), "kept {kept:?} but nothing was sent"),
            Some(sent) => {
                proptest::prop_assert!(!kept.is_empty(), "everything was dropped or redacted, yet sent");
                for (name, point) in sent {
                    proptest::prop_assert!(!dropped.contains(name), "dropped {name} was sent");
                    if redacted.contains(name) {
                        proptest::prop_assert_eq!(point.value, None, "redacted {} kept its value", name);
                    }
                }
            }
        }
    }
}

#[test]
fn an_event_over_its_rate_limit_is_left_with_the_device_to_resend_not_dropped() {
    let (_dir, mut stage) = stage(
        "default = \"allow\"\n[[rules]]\nname = \"limit\"\nstream = \"events\"\nrate_limit = { per_second = 1.0, burst = 2 }\n",
    );
    let event = || Intake::Event {
        device: "cabinet-01".to_owned(),
        kind: "cabinet".to_owned(),
        device_ts: None,
        body: serde_json::json!({"type": "door"})
            .as_object()
            .unwrap()
            .clone(),
    };
    assert!(stage.apply(event(), T0).refused.is_none());
    assert!(stage.apply(event(), T0).refused.is_none());
    let (refused, class) = stage.apply(event(), T0).refused.unwrap();
    assert_eq!(class, "rate_limited");
    assert!(
        matches!(&refused, Refused::Unavailable(reason) if reason.contains("resend")),
        "{refused:?}"
    );
}

#[test]
fn a_reading_no_rule_selects_is_shaped_as_the_full_evaluation_shapes_it() {
    // The rule selects events only: telemetry takes the short way in `apply`.
    let (_dir, mut stage) = stage(
        "default = \"allow\"\n[[rules]]\nname = \"events\"\nstream = \"events\"\npriority = \"high\"\n",
    );
    let policy = stage.handle.current();
    assert!(policy.allows_untouched("fridge-01", "fridge", Stream::Telemetry));
    assert!(!policy.allows_untouched("fridge-01", "fridge", Stream::Events));
    let point = |value, unit: Option<&str>, quality| Point {
        value,
        unit: unit.map(str::to_owned),
        quality,
    };
    let readings = [
        vec![
            (
                "temperature_c",
                point(Some(Value::Number(4.5)), Some("°C"), Quality::Good),
            ),
            ("door", point(Some(Value::Bool(true)), None, Quality::Good)),
        ],
        vec![
            (
                "t",
                point(Some(Value::Number(f64::NAN)), Some("°C"), Quality::Good),
            ),
            (
                "h",
                point(Some(Value::Number(40.0)), Some("%"), Quality::Stale),
            ),
            (
                "x",
                point(Some(Value::Number(f64::INFINITY)), None, Quality::Good),
            ),
        ],
        vec![(
            "t",
            point(Some(Value::Number(f64::NAN)), Some("°C"), Quality::Good),
        )],
        vec![("t", point(None, Some("°C"), Quality::CommError))],
        vec![],
    ];
    for points in readings {
        let reading = Reading {
            device: "fridge-01".to_owned(),
            kind: "fridge".to_owned(),
            device_ts: None,
            points: points
                .into_iter()
                .map(|(name, p)| (name.to_owned(), p))
                .collect(),
        };
        let full = stage.telemetry(&policy, reading.clone(), T0);
        let short = untouched(reading.clone());
        // Debug, not ==: a NaN the cold chain sees is never equal to itself.
        assert_eq!(
            format!("{:?}", short.observed),
            format!("{:?}", full.observed),
            "{reading:?}"
        );
        assert_eq!(short.intake, full.intake, "{reading:?}");
        assert!(full.refused.is_none() && short.refused.is_none());
        assert_eq!(short.priority, full.priority);
        assert_eq!(short.topic_suffix, full.topic_suffix);
        assert!(full.flags.is_empty() && short.flags.is_empty());
    }
    // Through `apply`, the same.
    let shaped = stage.apply(reading(&[("temperature_c", 4.5)]), T0);
    assert_eq!(
        forwarded_points(&shaped).map(|p| p["temperature_c"].value),
        Some(Some(Value::Number(4.5)))
    );
}
