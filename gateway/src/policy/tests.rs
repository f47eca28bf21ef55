//! The engine end to end: parsing, every action, ordering, the default policy against realistic
//! events, the documentation's examples, and property-based fuzzing of the parser and of
//! evaluation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use proptest::prelude::*;
use ring::hmac;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::macros::datetime;

use super::*;
use crate::message::Point;

fn key() -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, b"test site key")
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn policy(text: &str) -> Policy {
    match Policy::parse(text, "test.toml") {
        Ok(p) => p,
        Err(e) => panic!("policy does not parse:\n{e}"),
    }
}

fn errors(text: &str) -> Vec<PolicyError> {
    match Policy::parse(text, "test.toml") {
        Ok(_) => panic!("policy parsed:\n{text}"),
        Err(e) => e.0,
    }
}

fn decide_at(
    p: &Policy,
    device: &str,
    kind: &str,
    stream: Stream,
    body: Value,
    now: OffsetDateTime,
) -> Decision {
    let body = obj(body);
    let key = key();
    p.evaluate(
        &Event {
            device,
            kind,
            stream,
            body: &body,
        },
        &Context {
            now,
            pseudonym_key: &key,
        },
    )
}

fn event(p: &Policy, body: Value) -> Decision {
    decide_at(
        p,
        "cabinet-01",
        "cabinet",
        Stream::Events,
        body,
        datetime!(2026-05-01 10:00 UTC),
    )
}

fn reading(p: &Policy, device: &str, points: Value) -> Decision {
    decide_at(
        p,
        device,
        "fridge",
        Stream::Telemetry,
        json!({ "points": points }),
        datetime!(2026-05-01 10:00 UTC),
    )
}

fn rules(d: &Decision) -> Vec<&str> {
    d.matched.iter().map(|m| m.rule.as_str()).collect()
}

fn flags(d: &Decision) -> Vec<&str> {
    d.alerts.iter().map(|f| f.name.as_str()).collect()
}

fn access(action: &str, schedule: &str) -> Value {
    json!({"type": "access", "action": action, "user": "rn-ortiz", "drawer": "A3",
           "ndc": "0409-1890-01", "item": "Morphine sulfate 4 mg/mL injection",
           "schedule": schedule, "quantity": 1, "patient_id": "MRN-0012345", "auth": "badge",
           "ts": "2026-05-01T23:00:00+01:00", "event_id": "e-1"})
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn policies_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Policy>();
    check::<Decision>();
}

// ---------------------------------------------------------------------------------------------
// Actions

#[test]
fn allow_and_deny_are_terminal_and_later_rules_are_not_tried() {
    let p = policy(
        r#"
        default = "allow"
        [[rules]]
        name = "first"
        priority = "low"
        [[rules]]
        name = "stop"
        condition = 'event.action == "grab"'
        action = "deny"
        reason = "no grabbing"
        [[rules]]
        name = "never"
        alert = "never_raised"
        "#,
    );
    let d = event(&p, json!({"action": "grab"}));
    assert_eq!(
        d.verdict,
        Verdict::Deny {
            rule: "stop".into(),
            reason: "no grabbing".into()
        }
    );
    assert_eq!(d.decided_by.as_deref(), Some("stop"));
    assert_eq!(rules(&d), ["first", "stop"]);
    assert!(d.alerts.is_empty());

    let d = event(&p, json!({"action": "remove"}));
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.decided_by, None);
    assert_eq!(rules(&d), ["first", "never"]);
    assert_eq!(d.priority, Some(Priority::Low));
}

#[test]
fn the_default_decides_when_no_rule_does() {
    let p = policy("default = \"deny\"\n[[rules]]\nname = \"mark\"\npriority = \"high\"\n");
    let d = event(&p, json!({"a": 1}));
    assert_eq!(
        d.verdict,
        Verdict::Deny {
            rule: "default".into(),
            reason: "no rule allowed it and the policy's default is deny".into()
        }
    );
    assert_eq!(d.decided_by, None);
    assert_eq!(rules(&d), ["mark"]);
    let p = policy("default = \"allow\"");
    assert_eq!(event(&p, json!({})).verdict, Verdict::Allow);
}

#[test]
fn later_settings_replace_earlier_ones_and_alerts_add_up() {
    let p = policy(
        r#"
        default = "allow"
        [[rules]]
        name = "a"
        priority = "low"
        route_cloud = false
        audit = "one"
        alert = "x"
        rate_limit = { per_second = 1.0, burst = 2 }
        [[rules]]
        name = "b"
        priority = "critical"
        route_cloud = true
        cloud_topic_suffix = "controlled/cii"
        local_topic = "pharmacy/{device}/access"
        audit = "two"
        alert = "y"
        severity = "critical"
        rate_limit = { per_second = 5, burst = 10 }
        [[rules]]
        name = "c"
        alert = "x"
        "#,
    );
    let d = event(&p, json!({}));
    assert_eq!(d.priority, Some(Priority::Critical));
    assert!(d.route_cloud);
    assert_eq!(d.cloud_topic_suffix.as_deref(), Some("controlled/cii"));
    assert_eq!(d.local_topic.as_deref(), Some("pharmacy/cabinet-01/access"));
    assert_eq!(d.audit.as_deref(), Some("two"));
    assert_eq!(
        d.alerts,
        vec![
            Flag {
                name: "x".into(),
                severity: Severity::Warning,
                rule: "a".into()
            },
            Flag {
                name: "y".into(),
                severity: Severity::Critical,
                rule: "b".into()
            },
        ]
    );
    assert_eq!(
        d.rate_limit,
        Some(RateLimit {
            rule: "b".into(),
            per_second: 5.0,
            burst: 10
        })
    );
    assert_eq!(rules(&d), ["a", "b", "c"]);
    assert_eq!(d.matched[1].index, 2);
}

#[test]
fn route_cloud_false_keeps_an_event_local() {
    let p = policy("default = \"allow\"\n[[rules]]\nname = \"local\"\nroute_cloud = false\n");
    assert!(!event(&p, json!({})).route_cloud);
}

#[test]
fn selectors_match_device_globs_kinds_and_streams() {
    let p = policy(
        r#"
        default = "allow"
        [[rules]]
        name = "fridges"
        device = ["fridge-*", "freezer-0?"]
        kind = "fridge"
        stream = "telemetry"
        alert = "matched"
        "#,
    );
    let hit = |device: &str, kind: &str, stream: Stream| {
        !decide_at(
            &p,
            device,
            kind,
            stream,
            json!({"points": {}}),
            datetime!(2026-05-01 10:00 UTC),
        )
        .alerts
        .is_empty()
    };
    assert!(hit("fridge-01", "fridge", Stream::Telemetry));
    assert!(hit("freezer-07", "fridge", Stream::Telemetry));
    assert!(!hit("freezer-107", "fridge", Stream::Telemetry));
    assert!(!hit("cabinet-01", "fridge", Stream::Telemetry));
    assert!(!hit("fridge-01", "sensor", Stream::Telemetry));
    assert!(!hit("fridge-01", "fridge", Stream::Events));
}

#[test]
fn conditions_see_device_kind_stream_and_after_hours() {
    let p = policy(
        r#"
        default = "allow"
        [opening_hours]
        open = "22:00"
        close = "06:00"
        utc_offset = "-05:00"
        [[rules]]
        name = "night-shift-off"
        condition = 'after_hours && device == "cabinet-01" && kind == "cabinet" && stream == "events"'
        alert = "day_access"
        "#,
    );
    let at = |now| decide_at(&p, "cabinet-01", "cabinet", Stream::Events, json!({}), now);
    // 23:30 local (-05:00) is inside the night pharmacy's hours.
    let d = at(datetime!(2026-05-02 04:30 UTC));
    assert!(!d.after_hours);
    assert!(d.alerts.is_empty());
    // 05:59 local, still open; 06:00 local, closed.
    assert!(!at(datetime!(2026-05-02 10:59 UTC)).after_hours);
    let d = at(datetime!(2026-05-02 11:00 UTC));
    assert!(d.after_hours);
    assert_eq!(flags(&d), ["day_access"]);
}

#[test]
fn rename_scale_convert_drop_redact_and_pseudonymise_events() {
    let p = policy(
        r#"
        default = "allow"
        [[rules]]
        name = "shape"
        stream = "events"
        rename = { patientId = "patient_id", qty = "quantity" }
        scale = { quantity = 0.5, missing = 2 }
        convert = { temp = "f_to_c", item = "c_to_f" }
        pseudonymise = ["patient_id", "mrn_number"]
        redact = ["user"]
        drop = ["note", "absent"]
        "#,
    );
    let d = event(
        &p,
        json!({"patientId": "MRN-1", "qty": 3, "temp": 39.2, "item": "Morphine", "user": "rn-chen",
               "note": "text", "mrn_number": 42, "other": true}),
    );
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(
        Value::Object(d.body.clone()),
        json!({"patient_id": pseudonym(&key(), "MRN-1"), "quantity": 1.5, "temp": 4.0,
               "item": "Morphine", "user": "redacted", "mrn_number": pseudonym(&key(), "42"),
               "other": true})
    );
    let did = &d.matched[0].did;
    for expected in [
        "renamed patientId to patient_id",
        "renamed qty to quantity",
        "scaled by 0.5 quantity",
        "converted (f_to_c) temp",
        "left item as it is: not a number, or out of range",
        "pseudonymised patient_id",
        "pseudonymised mrn_number",
        "redacted user",
        "dropped note",
    ] {
        assert!(
            did.iter().any(|d| d == expected),
            "{expected:?} not in {did:#?}"
        );
    }
}

#[test]
fn telemetry_transforms_apply_to_points_and_map_back_onto_points() {
    let p = policy(
        r#"
        default = "deny"
        [[rules]]
        name = "acme"
        device = "acme-*"
        stream = "telemetry"
        rename = { temp_f = "temperature_c" }
        convert = { temperature_c = "f_to_c" }
        scale = { humidity_permille = 0.1 }
        drop = ["debug"]
        [[rules]]
        name = "warm"
        stream = "telemetry"
        condition = "event.points.temperature_c > 8.0"
        priority = "high"
        [[rules]]
        name = "telemetry"
        stream = "telemetry"
        deadband = { point = "temperature_c", delta = 0.2, max_interval = "5m" }
        action = "allow"
        "#,
    );
    let mut points = BTreeMap::new();
    points.insert(
        "temp_f".to_owned(),
        Point::good(crate::message::Value::Number(50.0), Some("°F")),
    );
    points.insert(
        "humidity_permille".to_owned(),
        Point::good(crate::message::Value::Number(415.0), None),
    );
    points.insert(
        "debug".to_owned(),
        Point::good(crate::message::Value::Bool(true), None),
    );
    let body = telemetry_body(&points);
    let key = key();
    let d = p.evaluate(
        &Event {
            device: "acme-fridge-2",
            kind: "fridge",
            stream: Stream::Telemetry,
            body: &body,
        },
        &Context {
            now: datetime!(2026-05-01 10:00 UTC),
            pseudonym_key: &key,
        },
    );
    assert_eq!(d.verdict, Verdict::Allow);
    // The second rule saw the converted value: 50 °F is 10 °C.
    assert_eq!(rules(&d), ["acme", "warm", "telemetry"]);
    assert_eq!(d.priority, Some(Priority::High));
    assert_eq!(
        Value::Object(d.body.clone()),
        json!({"points": {"temperature_c": 10.0, "humidity_permille": 41.5}})
    );
    assert_eq!(
        d.deadbands,
        vec![Deadband {
            rule: "telemetry".into(),
            point: "temperature_c".into(),
            delta: 0.2,
            max_interval: std::time::Duration::from_secs(300)
        }]
    );
    let back = d.telemetry_points(&points);
    assert_eq!(back.len(), 2);
    assert_eq!(
        back["temperature_c"].value,
        Some(crate::message::Value::Number(10.0))
    );
    assert_eq!(back["temperature_c"].unit.as_deref(), Some("°C"));
    assert_eq!(
        back["humidity_permille"].value,
        Some(crate::message::Value::Number(41.5))
    );
}

#[test]
fn each_rule_sees_the_event_as_earlier_rules_left_it() {
    let p = policy(
        r#"
        default = "allow"
        [[rules]]
        name = "normalise"
        rename = { kind_of_thing = "type" }
        [[rules]]
        name = "needs-new-name"
        condition = 'has(event.type) && event.type == "access"'
        alert = "saw_renamed_field"
        [[rules]]
        name = "hide"
        pseudonymise = ["type"]
        [[rules]]
        name = "sees-pseudonym"
        condition = 'event.type.startsWith("ps-")'
        alert = "saw_pseudonym"
        "#,
    );
    let d = event(&p, json!({"kind_of_thing": "access"}));
    assert_eq!(flags(&d), ["saw_renamed_field", "saw_pseudonym"]);
}

#[test]
fn validation_failure_refuses_as_invalid_and_ends_the_evaluation() {
    let p = policy(
        r#"
        default = "allow"
        [[rules]]
        name = "contract"
        stream = "events"
        validate = "access-event"
        [[rules]]
        name = "after"
        alert = "never"
        "#,
    );
    let mut e = access("grab", "CII");
    e["patient_id"] = json!(12345678);
    let d = event(&p, e);
    let Verdict::Invalid { rule, errors } = &d.verdict else {
        panic!("{:?}", d.verdict)
    };
    assert_eq!(rule, "contract");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].field, "action");
    let reason = d.verdict.reason().unwrap();
    assert!(
        reason.starts_with("invalid access event: action: \"grab\" is not one of"),
        "{reason}"
    );
    assert!(reason.contains("patient_id: must be a string"), "{reason}");
    assert!(!reason.contains("12345678"), "{reason}");
    assert!(d.alerts.is_empty());
    // Refused: the patient id in the body is pseudonymised anyway.
    assert_eq!(d.body["patient_id"], json!(pseudonym(&key(), "12345678")));
}

#[test]
fn a_failing_condition_skips_its_rule_but_a_deny_rule_fails_closed() {
    let p = policy(
        r#"
        default = "allow"
        [[rules]]
        name = "needs-witness"
        condition = 'event.witness == "nobody"'
        alert = "x"
        [[rules]]
        name = "deny-on-error"
        condition = 'event.quantity > 100'
        action = "deny"
        reason = "too many"
        "#,
    );
    let d = event(&p, json!({"quantity": 1}));
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(
        d.errors,
        vec![RuleError {
            rule: "needs-witness".into(),
            message: "the event has no field `witness` (test for it first with has(event.witness))"
                .into()
        }]
    );
    let d = event(&p, json!({"quantity": "MRN-0012345", "witness": "nobody"}));
    assert_eq!(
        d.verdict,
        Verdict::Deny {
            rule: "deny-on-error".into(),
            reason: "too many".into()
        }
    );
    assert_eq!(flags(&d), ["x"]);
    assert_eq!(d.errors.len(), 1);
    assert!(!d.errors[0].message.contains("MRN"), "{:?}", d.errors);
    assert!(d.matched[1].did[0].contains("could not be evaluated"));
}

#[test]
fn a_refused_event_has_every_privacy_transform_applied() {
    let p = policy(
        r#"
        default = "deny"
        [[rules]]
        name = "privacy-for-access-only"
        condition = 'event.type == "access"'
        pseudonymise = ["mrn"]
        redact = ["user"]
        drop = ["note"]
        "#,
    );
    let d = event(
        &p,
        json!({"type": "other", "mrn": "MRN-9", "user": "u", "note": "n",
                             "patient_id": "MRN-8", "x": 1}),
    );
    assert!(!d.verdict.is_allow());
    assert_eq!(
        Value::Object(d.body),
        json!({"type": "other", "mrn": pseudonym(&key(), "MRN-9"), "user": "redacted",
               "patient_id": pseudonym(&key(), "MRN-8"), "x": 1})
    );
}

// ---------------------------------------------------------------------------------------------
// Parsing and errors

#[test]
fn every_problem_in_a_file_is_reported_with_rule_key_and_value() {
    let errs = errors(
        r#"
        default = "maybe"
        colour = "blue"
        [opening_hours]
        open = "8am"
        close = "20:00"
        utc_offset = "CET"
        [[rules]]
        name = "one"
        stream = "telemetry"
        pseudonymize = ["patient_id"]
        priority = "urgent"
        [[rules]]
        name = "two"
        action = "deny"
        kind = "robot"
        [[rules]]
        name = "one"
        severity = "critical"
        alert = "Bad Name"
        "#,
    );
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let expected = [
        "test.toml: default = \"maybe\": must be \"allow\" or \"deny\"",
        "test.toml: opening_hours.open = \"8am\": must be a 24-hour time HH:MM",
        "test.toml: opening_hours.utc_offset = \"CET\": must be +HH:MM or -HH:MM",
        "test.toml: colour: unknown key; expected one of opening_hours, default, rules",
        "test.toml:8: rule 1 \"one\": pseudonymize: unknown key; did you mean `pseudonymise`?",
        "test.toml:8: rule 1 \"one\": priority = \"urgent\": must be \"critical\" or \"high\" or \"normal\" or \"low\"",
        "test.toml:13: rule 2 \"two\": kind = \"robot\": must be one of fridge, cabinet, sensor",
        "test.toml:13: rule 2 \"two\": reason: missing; a deny rule says why",
        "test.toml:17: rule 3 \"one\": name = \"one\": another rule has this name",
        "test.toml:17: rule 3 \"one\": alert = \"Bad Name\": must be a flag name",
    ];
    for e in expected {
        assert!(
            text.iter().any(|t| t.starts_with(e)),
            "{e}\nnot in\n{}",
            text.join("\n")
        );
    }
    assert_eq!(text.len(), expected.len(), "{}", text.join("\n"));
}

#[test]
fn cel_errors_name_the_rule_and_the_position_in_the_expression() {
    let errs = errors(
        r#"
        default = "allow"
        [[rules]]
        name = "fine"
        priority = "low"
        [[rules]]
        name = "broken"
        condition = '''
event.action == "override"
  && (!has(event.witness) || event.witness == )
'''
        alert = "x"
        [[rules]]
        name = "typo"
        condition = 'evnt.action == "waste"'
        alert = "y"
        "#,
    );
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(errs[0].rule, Some((2, Some("broken".into()))));
    assert_eq!(errs[0].key, "condition");
    assert_eq!(errs[0].position, Some((2, 47)));
    assert_eq!(errs[0].line, Some(6));
    assert!(errs[0].to_string().starts_with(
        "test.toml:6: rule 2 \"broken\": condition (at 2:47 in the expression): mismatched input ')'"
    ), "{}", errs[0]);
    assert_eq!(
        errs[1].to_string(),
        "test.toml:13: rule 3 \"typo\": condition (at 1:1 in the expression): unknown name `evnt`; conditions can use event, device, kind, stream, after_hours"
    );
}

#[test]
fn toml_syntax_errors_give_the_line() {
    let errs = errors("default = \"allow\"\n[[rules]]\nname = \"x\nalert = \"y\"\n");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, Some(3), "{}", errs[0]);
    assert!(errs[0].message.starts_with("invalid TOML"), "{}", errs[0]);
}

#[test]
fn rules_that_do_nothing_or_misuse_validate_and_deadband_are_refused() {
    let errs = errors(
        r#"
        default = "allow"
        [[rules]]
        name = "nothing"
        device = "fridge-*"
        [[rules]]
        name = "validate-telemetry"
        validate = "access-event"
        [[rules]]
        name = "deadband-on-events"
        stream = "events"
        deadband = { point = "t", delta = 0.2, max_interval = "5m" }
        [[rules]]
        name = "bad-deadband"
        stream = "telemetry"
        deadband = { point = "t", delta = -1, max_interval = "forever", extra = 1 }
        [[rules]]
        name = "reason-without-deny"
        action = "allow"
        reason = "because"
        [[rules]]
        name = "bad-topics"
        local_topic = "devices/x/cmd"
        cloud_topic_suffix = "a/#"
        "#,
    );
    let text = errs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    for e in [
        "rule 1 \"nothing\": the rule does nothing",
        "rule 2 \"validate-telemetry\": validate: access events come on the events stream",
        "rule 3 \"deadband-on-events\": deadband: deadbands apply to telemetry",
        "rule 4 \"bad-deadband\": deadband.extra: unknown key",
        "rule 4 \"bad-deadband\": deadband.delta = -1.0: must be 0 or more",
        "rule 4 \"bad-deadband\": deadband.max_interval = \"forever\": must be a duration",
        "rule 5 \"reason-without-deny\": reason: only a rule with action = \"deny\" has a reason",
        "rule 6 \"bad-topics\": local_topic = \"devices/x/cmd\"",
        "rule 6 \"bad-topics\": cloud_topic_suffix = \"a/#\"",
    ] {
        assert!(text.contains(e), "{e}\nnot in\n{text}");
    }
}

#[test]
fn size_caps_are_enforced() {
    let big = format!("default = \"allow\"\n# {}\n", "x".repeat(MAX_POLICY_BYTES));
    let errs = errors(&big);
    assert!(errs[0].message.contains("over 262144 bytes"), "{}", errs[0]);

    let mut many = String::from("default = \"allow\"\n");
    for i in 0..=MAX_RULES {
        many.push_str(&format!("[[rules]]\nname = \"r{i}\"\npriority = \"low\"\n"));
    }
    let errs = errors(&many);
    assert_eq!(errs.len(), 1);
    assert_eq!(
        errs[0].to_string(),
        "test.toml: rules: 501 rules; at most 500"
    );

    let long = format!(
        "default = \"allow\"\n[[rules]]\nname = \"long\"\nalert = \"x\"\ncondition = 'event.a == \"{}\"'\n",
        "a".repeat(MAX_EXPRESSION_BYTES)
    );
    let errs = errors(&long);
    assert!(errs[0].message.contains("at most 2048"), "{}", errs[0]);

    // 500 rules, each with a condition just within budget, are over the policy's total.
    let mut costly = String::from("default = \"allow\"\n");
    for i in 0..MAX_RULES {
        costly.push_str(&format!(
            "[[rules]]\nname = \"r{i}\"\nalert = \"x\"\ncondition = 'event.note.contains(\"a\")'\n"
        ));
    }
    let errs = errors(&costly);
    assert!(
        errs[0]
            .to_string()
            .contains("the conditions together may cost"),
        "{}",
        errs[0]
    );
}

#[test]
fn opening_hours_must_be_complete_and_not_empty() {
    let errs = errors(
        "default = \"allow\"\n[opening_hours]\nopen = \"08:00\"\nclose = \"08:00\"\nutc_offset = \"+00:00\"\n",
    );
    assert!(
        errs[0].message.contains("open and close are the same"),
        "{}",
        errs[0]
    );
    let errs =
        errors("default = \"allow\"\n[opening_hours]\nopen = \"08:00\"\nclose = \"24:00\"\n");
    assert_eq!(errs.len(), 2, "{errs:?}");
}

#[test]
fn a_missing_file_is_one_clear_error() {
    let err = check_file(std::path::Path::new("/nonexistent/policy.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/policy.toml: cannot open the policy file"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// The default policy

fn default_policy() -> Policy {
    match Policy::load(&workspace().join("config/policy.toml")) {
        Ok(p) => p,
        Err(e) => panic!("config/policy.toml:\n{e}"),
    }
}

#[test]
fn the_default_policy_file_loads_and_is_the_built_in_one() {
    let summary = check_file(&workspace().join("config/policy.toml")).unwrap();
    assert_eq!(summary.rules, 10);
    assert_eq!(summary.default, DefaultAction::Deny);
    assert!(summary.max_condition_cost < COST_BUDGET / 4, "{summary}");
    let builtin = Policy::builtin();
    assert_eq!(
        builtin.rule_names().collect::<Vec<_>>(),
        default_policy().rule_names().collect::<Vec<_>>()
    );
    assert!(
        summary
            .to_string()
            .contains("opening hours 08:00-20:00 at UTC+01:00"),
        "{summary}"
    );
}

#[test]
fn an_unwitnessed_override_at_night_is_allowed_flagged_pseudonymised_high_and_audited() {
    let p = default_policy();
    let mut e = access("override", "CII");
    e["note"] = json!("for bed 12, Mrs Smith");
    // 23:00 at +01:00.
    let d = decide_at(
        &p,
        "cabinet-01",
        "cabinet",
        Stream::Events,
        e,
        datetime!(2026-05-01 22:00 UTC),
    );
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.decided_by.as_deref(), Some("access-events"));
    assert!(d.after_hours);
    assert_eq!(
        flags(&d),
        ["access_after_hours", "override_without_witness"]
    );
    assert_eq!(d.priority, Some(Priority::High));
    assert_eq!(d.audit.as_deref(), Some("controlled-substance"));
    assert!(d.route_cloud);
    assert_eq!(
        d.body["patient_id"],
        json!(pseudonym(&key(), "MRN-0012345"))
    );
    assert!(!d.body.contains_key("note"));
    assert_eq!(d.body["user"], "rn-ortiz");
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(
        rules(&d),
        [
            "access-contract",
            "patient-privacy",
            "controlled-substance",
            "access-after-hours",
            "override-without-witness",
            "access-events"
        ]
    );
    let explained = d.explain();
    for line in [
        "verdict: allow (by rule \"access-events\")",
        "after hours: yes",
        "priority: high",
        "audit: controlled-substance",
        "  - override_without_witness (warning, rule \"override-without-witness\")",
        "  3. \"patient-privacy\": pseudonymised patient_id; dropped note",
    ] {
        assert!(explained.contains(line), "{line:?} not in\n{explained}");
    }
    assert!(!explained.contains("MRN-0012345"), "{explained}");
}

#[test]
fn a_daytime_witnessed_non_controlled_access_is_plain() {
    let p = default_policy();
    let mut e = access("waste", "none");
    e["auth"] = json!(["badge", "pin"]);
    let d = decide_at(
        &p,
        "cabinet-01",
        "cabinet",
        Stream::Events,
        e,
        datetime!(2026-05-01 10:00 UTC),
    );
    assert_eq!(d.verdict, Verdict::Allow);
    assert!(!d.after_hours);
    assert!(d.alerts.is_empty(), "{:?}", d.alerts);
    assert_eq!(d.priority, Some(Priority::Normal));
    assert_eq!(d.audit, None);
}

#[test]
fn the_default_policy_flags_unwitnessed_controlled_waste_self_witnessing_and_single_knowledge_factors()
 {
    let p = default_policy();
    let day = datetime!(2026-05-01 10:00 UTC);
    let at = |e: Value| decide_at(&p, "cabinet-01", "cabinet", Stream::Events, e, day);

    let d = at(access("waste", "CIV"));
    assert_eq!(flags(&d), ["waste_without_witness"]);
    let mut e = access("waste", "CIV");
    e["witness"] = json!("rn-ortiz");
    assert_eq!(flags(&at(e)), ["waste_without_witness"]);
    let mut e = access("waste", "CIV");
    e["witness"] = json!("rn-chen");
    assert!(flags(&at(e)).is_empty());

    for auth in [json!("password"), json!("pin"), json!(["pin", "password"])] {
        let mut e = access("remove", "none");
        e["auth"] = auth.clone();
        assert_eq!(flags(&at(e)), ["access_without_second_factor"], "{auth}");
    }
    for auth in [
        json!("biometric"),
        json!("badge"),
        json!(["password", "badge"]),
    ] {
        let mut e = access("remove", "none");
        e["auth"] = auth.clone();
        assert!(flags(&at(e)).is_empty(), "{auth}");
    }
}

#[test]
fn the_default_policy_denies_unknown_event_types_and_invalid_access_events() {
    let p = default_policy();
    let d = event(
        &p,
        json!({"type": "door", "open": true, "patient_id": "MRN-1"}),
    );
    assert_eq!(
        d.verdict,
        Verdict::Deny {
            rule: "unknown-event-type".into(),
            reason: "unknown event type".into()
        }
    );
    assert_eq!(d.body["patient_id"], json!(pseudonym(&key(), "MRN-1")));

    let mut e = access("remove", "CII");
    e.as_object_mut().unwrap().remove("auth");
    e["patientId"] = json!("MRN-0012345");
    let d = event(&p, e);
    assert!(matches!(&d.verdict, Verdict::Invalid { rule, .. } if rule == "access-contract"));
    let reason = d.verdict.reason().unwrap();
    assert!(reason.contains("\"patientId\": unknown field"), "{reason}");
    assert!(reason.contains("auth: is missing"), "{reason}");
    assert!(!reason.contains("MRN"), "{reason}");
}

#[test]
fn the_default_policy_allows_telemetry_with_a_per_device_rate_limit() {
    let p = default_policy();
    let d = reading(
        &p,
        "fridge-01",
        json!({"temperature_c": 4.6, "door_open": false}),
    );
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(
        d.rate_limit,
        Some(RateLimit {
            rule: "telemetry".into(),
            per_second: 50.0,
            burst: 500
        })
    );
    assert!(d.deadbands.is_empty());
    assert_eq!(d.priority, None);
    assert_eq!(
        Value::Object(d.body),
        json!({"points": {"temperature_c": 4.6, "door_open": false}})
    );
}

#[test]
fn every_simulated_cabinet_event_passes_the_default_policy_pseudonymised() {
    use rxgate_sim::cabinet::{EventGenerator, Scenario};
    let p = default_policy();
    let key = key();
    for scenario in [Scenario::Normal, Scenario::Suspicious] {
        let mut g = EventGenerator::new(11, scenario);
        let mut flagged = 0;
        for i in 0..300 {
            let now = datetime!(2026-05-01 00:00 UTC) + time::Duration::minutes(i * 7);
            let mut e = g.next(now);
            e["event_id"] = json!(format!("run-{i}"));
            let body = obj(e.clone());
            let d = p.evaluate(
                &Event {
                    device: "cabinet-01",
                    kind: "cabinet",
                    stream: Stream::Events,
                    body: &body,
                },
                &Context {
                    now,
                    pseudonym_key: &key,
                },
            );
            assert_eq!(d.verdict, Verdict::Allow, "{e}\n{}", d.explain());
            assert!(d.errors.is_empty(), "{e}: {:?}", d.errors);
            if let Some(Value::String(patient)) = e.get("patient_id") {
                assert_eq!(d.body["patient_id"], json!(pseudonym(&key, patient)));
            }
            flagged += usize::from(!d.alerts.is_empty());
        }
        assert!(flagged > 0, "{scenario:?}");
    }
}

#[test]
fn test_event_parses_payloads_like_the_gateway() {
    let p = default_policy();
    let key = key();
    let now = datetime!(2026-05-01 10:00 UTC);
    let payload = serde_json::to_vec(&access("remove", "CII")).unwrap();
    let d = test_event(
        &p,
        "cabinet-01",
        "cabinet",
        Stream::Events,
        &payload,
        now,
        &key,
    )
    .unwrap();
    assert_eq!(d.audit.as_deref(), Some("controlled-substance"));
    let d = test_event(
        &p,
        "fridge-01",
        "fridge",
        Stream::Telemetry,
        br#"{"points": {"temperature_c": 4.6}}"#,
        now,
        &key,
    )
    .unwrap();
    assert!(d.verdict.is_allow());
    let err = test_event(
        &p,
        "fridge-01",
        "fridge",
        Stream::Telemetry,
        br#"{"points": {}}"#,
        now,
        &key,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the gateway would refuse this telemetry payload before the policy: \"points\" is empty; send at least one point"
    );
}

// ---------------------------------------------------------------------------------------------
// Documentation

fn doc_blocks(doc: &str, fence: &str) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    let mut marker = None;
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if let Some(m) = line
            .strip_prefix("<!-- ")
            .and_then(|l| l.strip_suffix(" -->"))
        {
            marker = Some(m.to_owned());
            continue;
        }
        if line.trim() == format!("```{fence}") {
            let mut block = String::new();
            for l in lines.by_ref() {
                if l.trim() == "```" {
                    break;
                }
                block.push_str(l);
                block.push('\n');
            }
            out.push((marker.take(), block));
        } else if !line.trim().is_empty() {
            marker = None;
        }
    }
    out
}

#[test]
fn every_policy_example_in_the_docs_parses() {
    let doc = std::fs::read_to_string(workspace().join("docs/policy.md")).unwrap();
    let blocks = doc_blocks(&doc, "toml");
    assert!(blocks.len() >= 5, "{}", blocks.len());
    for (_, block) in blocks {
        if let Err(e) = Policy::parse(&block, "docs/policy.md") {
            panic!("{block}\n{e}");
        }
    }
}

#[test]
fn every_access_event_example_in_the_docs_is_judged_as_marked() {
    let doc = std::fs::read_to_string(workspace().join("docs/policy.md")).unwrap();
    let blocks: Vec<_> = doc_blocks(&doc, "json")
        .into_iter()
        .filter(|(m, _)| m.as_deref().is_some_and(|m| m.starts_with("access-event")))
        .collect();
    assert_eq!(blocks.len(), 3);
    for (marker, block) in blocks {
        let body = obj(serde_json::from_str(&block).unwrap());
        let errors = access::validate(&body, &|f| f == "patient_id");
        match marker.as_deref() {
            Some("access-event") => assert!(errors.is_empty(), "{block}: {errors:?}"),
            _ => assert_eq!(errors.len(), 3, "{block}: {errors:?}"),
        }
    }
}

#[test]
fn the_json_schema_lists_the_same_fields_and_vocabularies_as_the_code() {
    let text = std::fs::read_to_string(workspace().join("docs/schemas/access-event.json")).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    let properties: Vec<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut fields = ACCESS_FIELDS.to_vec();
    fields.sort_unstable();
    assert_eq!(properties, fields);
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(strings(&schema["properties"]["action"]["enum"]), ACTIONS);
    assert_eq!(
        strings(&schema["properties"]["schedule"]["enum"]),
        SCHEDULES
    );
    assert_eq!(strings(&schema["$defs"]["factor"]["enum"]), AUTH_FACTORS);
    assert_eq!(schema["additionalProperties"], false);
    let required = strings(&schema["required"]);
    for optional in [
        "patient_id",
        "witness",
        "event_id",
        "note",
        "comment",
        "free_text",
    ] {
        assert!(!required.iter().any(|r| r == optional));
    }
    assert_eq!(required.len(), ACCESS_FIELDS.len() - 6);
}

// ---------------------------------------------------------------------------------------------
// Property-based fuzzing

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-z ]{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "access",
            "override",
            "waste",
            "remove",
            "CII",
            "none",
            "password",
            "pin",
            "badge",
            "2026-05-01T23:00:00Z",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies around the access contract: a valid event with fields replaced, removed or added.
fn access_body() -> impl Strategy<Value = Map<String, Value>> {
    let field = prop::sample::select(ACCESS_FIELDS.to_vec());
    (
        prop::collection::vec((field.clone(), json_value()), 0..4),
        prop::collection::vec(field, 0..3),
        prop::collection::btree_map("[a-z_]{1,8}", json_value(), 0..2),
        any::<bool>(),
    )
        .prop_map(|(replace, remove, extra, night)| {
            let mut e = obj(access("override", "CII"));
            for (k, v) in replace {
                if k != "patient_id" {
                    e.insert(k.to_owned(), v);
                }
            }
            for k in remove {
                if k != "patient_id" {
                    e.remove(k);
                }
            }
            if night {
                for (k, v) in extra {
                    e.insert(k, v);
                }
            }
            e
        })
}

fn values(v: &Value, out: &mut Vec<Value>) {
    out.push(v.clone());
    match v {
        Value::Array(items) => items.iter().for_each(|i| values(i, out)),
        Value::Object(m) => m.values().for_each(|i| values(i, out)),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics_the_parser(text in "\\PC{0,400}") {
        let _ = Policy::parse(&text, "fuzz.toml");
    }

    #[test]
    fn toml_shaped_input_never_panics_the_parser(
        default in prop::sample::select(vec!["allow", "deny", "maybe", ""]),
        rules in prop::collection::vec(
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "name", "device", "kind", "stream", "condition", "action", "reason",
                        "validate", "rename", "scale", "convert", "drop", "redact",
                        "pseudonymise", "priority", "route_cloud", "cloud_topic_suffix",
                        "local_topic", "alert", "severity", "rate_limit", "deadband", "audit",
                        "bogus",
                    ]),
                    prop_oneof![
                        "\"[a-z*?_ -]{0,10}\"".prop_map(|s| s),
                        "'(event|device|after_hours|kind)(\\.[a-z]{1,6})? (==|>|in|&&) (\"x\"|1|true|\\[\\]|event\\.y)'",
                        "\\[(\"[a-z_]{1,6}\", ?){0,3}\\]",
                        "\\{ ?([a-z_]{1,8} = (\"[a-z_]{1,6}\"|-?[0-9]{1,3}(\\.[0-9])?), ?){0,2}\\}",
                        "(true|false|-?[0-9]{1,4}|[0-9]\\.[0-9])",
                        "\\{ ?per_second = [0-9]\\.[0-9], burst = -?[0-9]{1,3} ?\\}",
                        "\\{ ?point = \"t\", delta = [0-9]\\.[0-9], max_interval = \"[0-9]{1,2}(s|m|h|x)\" ?\\}",
                    ],
                ),
                0..6,
            ),
            0..5,
        ),
        hours in prop::option::of(("[0-9:]{0,6}", "[0-9:]{0,6}", "[+-Z]?[0-9:]{0,6}")),
    ) {
        let mut text = format!("default = \"{default}\"\n");
        if let Some((open, close, offset)) = hours {
            text.push_str(&format!("[opening_hours]\nopen = \"{open}\"\nclose = \"{close}\"\nutc_offset = \"{offset}\"\n"));
        }
        for rule in rules {
            text.push_str("[[rules]]\n");
            let mut seen = std::collections::BTreeSet::new();
            for (k, v) in rule {
                if seen.insert(k) {
                    text.push_str(&format!("{k} = {v}\n"));
                }
            }
        }
        if let Ok(p) = Policy::parse(&text, "fuzz.toml") {
            // Whatever parses also evaluates without panicking.
            let body = obj(json!({"type": "access", "points": {"t": 1.5}, "x": "y"}));
            let key = key();
            for stream in [Stream::Events, Stream::Telemetry] {
                let _ = p.evaluate(
                    &Event { device: "fridge-01", kind: "fridge", stream, body: &body },
                    &Context { now: datetime!(2026-05-01 22:00 UTC), pseudonym_key: &key },
                );
            }
        }
    }

    #[test]
    fn arbitrary_bodies_never_panic_and_never_leak_the_patient_id(
        mut body in prop::collection::btree_map("[a-z_]{1,10}", json_value(), 0..8)
            .prop_map(|m| m.into_iter().collect::<Map<String, Value>>()),
        with_type in any::<bool>(),
        patient in "MRN-[0-9]{7}",
        hour in 0i64..24,
    ) {
        if with_type {
            body.insert("type".into(), json!("access"));
        }
        body.insert("patient_id".into(), json!(patient));
        let p = default_policy();
        let key = key();
        let now = datetime!(2026-05-01 00:00 UTC) + time::Duration::hours(hour);
        for stream in [Stream::Events, Stream::Telemetry] {
            let d = p.evaluate(
                &Event { device: "cabinet-01", kind: "cabinet", stream, body: &body },
                &Context { now, pseudonym_key: &key },
            );
            if stream == Stream::Events {
                let mut all = Vec::new();
                values(&Value::Object(d.body.clone()), &mut all);
                prop_assert!(!all.contains(&json!(patient)), "{}", d.explain());
                prop_assert!(!d.explain().contains(&patient));
            }
        }
    }

    #[test]
    fn near_valid_access_events_never_leak_the_patient_id(
        body in access_body(),
        patient in prop_oneof![
            "MRN-[0-9]{7}".prop_map(|s| json!(s)),
            (10_000_000u64..99_999_999).prop_map(|n| json!(n)),
        ],
        hour in 0i64..24,
    ) {
        let mut body = body;
        body.insert("patient_id".into(), patient.clone());
        let p = default_policy();
        let key = key();
        let now = datetime!(2026-05-01 00:00 UTC) + time::Duration::hours(hour);
        let d = p.evaluate(
            &Event { device: "cabinet-01", kind: "cabinet", stream: Stream::Events, body: &body },
            &Context { now, pseudonym_key: &key },
        );
        let mut all = Vec::new();
        values(&Value::Object(d.body.clone()), &mut all);
        prop_assert!(!all.contains(&patient), "{}", d.explain());
        let clear = match &patient { Value::String(s) => s.clone(), other => other.to_string() };
        prop_assert!(!d.verdict.reason().unwrap_or_default().contains(&clear));
        prop_assert!(d.errors.iter().all(|e| !e.message.contains(&clear)));
    }
}
