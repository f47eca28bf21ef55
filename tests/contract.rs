//! The published contracts against the real gateway: everything `rxgate` sends to the cloud
//! broker (mosquitto) must match the JSON Schemas in `docs/schemas/`, and so must every example in
//! `docs/cloud-contract.md` and `docs/device-contract.md`; the device payloads the device contract
//! documents as accepted or refused must be accepted or refused by the real gateway too.
//!
//! Schemas are checked with `tests/schemas/validate.py` (Python `jsonschema`), run by the
//! interpreter [`python`] finds.
//!
//! Examples in the docs are fenced ```json blocks, each right after a tag naming its schema:
//! `<!-- schema: telemetry -->`, or `<!-- schema: device-telemetry, refused -->` for a payload the
//! gateway refuses, whose next line quotes the gateway's reason in a ``double-backtick`` span.
//! An untagged ```json block fails the test, so no example escapes checking.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rxgate_e2e::cloud::Cloud;
use rxgate_e2e::{Gateway, text, wait_until};

const SITE: &str = "store-0042";
/// Device ids the device contract's examples use.
const FRIDGE: &str = "vaccine-fridge-02";
const CABINET: &str = "cabinet-01";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_owned()
}

/// The Python that runs validate.py: `RXGATE_PYTHON`, else the workspace's `.venv`, else `python3`.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("RXGATE_PYTHON") {
        return python.into();
    }
    let venv = workspace().join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// Whether `validate` expects the messages to pass or to be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Expect {
    Valid,
    Refused,
}

/// Runs validate.py with `schema` on `messages` (each `(origin, JSON)`); panics with its report
/// unless every message is valid (or, with [`Expect::Refused`], every one is refused).
fn validate(schema: &str, messages: &[(String, serde_json::Value)], expect: Expect) {
    assert!(!messages.is_empty(), "nothing to validate against {schema}");
    let script = workspace().join("tests/schemas/validate.py");
    let mut cmd = Command::new(python());
    cmd.arg(&script);
    if expect == Expect::Refused {
        cmd.arg("--invalid");
    }
    let mut child = cmd
        .arg(schema)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} {}: {e}",
                python().display(),
                script.display()
            )
        });
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for (_, message) in messages {
            writeln!(stdin, "{message}").expect("write to validate.py");
        }
    }
    let output = child.wait_with_output().expect("validate.py output");
    if !output.status.success() {
        let listing: String = messages
            .iter()
            .enumerate()
            .map(|(i, (origin, message))| format!("  line {}: {origin}: {message}\n", i + 1))
            .collect();
        let hint = if output.status.code() == Some(2) {
            "\n(validate.py could not run: install its Python packages, see tests/schemas/validate.py; \
             RXGATE_PYTHON selects the interpreter)"
        } else {
            ""
        };
        panic!(
            "{} message(s) checked against {schema}, expecting {expect:?}: {}{hint}\nmessages:\n{listing}",
            messages.len(),
            text(&output)
        );
    }
}

/// One example from a doc.
#[derive(Debug, Clone)]
struct Example {
    /// `file:line`, for messages.
    origin: String,
    schema: String,
    expect: Expect,
    json: serde_json::Value,
    /// For refused payloads: the gateway's reason as the doc quotes it.
    reason: Option<String>,
    /// For `mosquitto_pub` examples: the client id and topic of the command.
    publish: Option<(String, String)>,
}

fn read_doc(name: &str) -> String {
    let path = workspace().join("docs").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of the first ``double-backtick`` code span in `line`.
fn double_backtick_span(line: &str) -> Option<String> {
    let start = line.find("``")? + 2;
    let end = line[start..].find("``")?;
    Some(line[start..start + end].trim().to_owned())
}

/// The tagged ```json examples of `doc` (see the module docs).
fn json_examples(name: &str, doc: &str) -> Vec<Example> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut examples = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "```json" {
            i += 1;
            continue;
        }
        let origin = format!("docs/{name}:{}", i + 1);
        let tag = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().strip_prefix("<!-- schema:"))
            .and_then(|l| l.strip_suffix("-->"))
            .unwrap_or_else(|| {
                panic!("{origin}: a ```json block without a `<!-- schema: NAME -->` line before it")
            });
        let (schema, expect) = match tag.trim().split_once(',') {
            None => (tag.trim(), Expect::Valid),
            Some((schema, "refused" | " refused")) => (schema.trim(), Expect::Refused),
            Some(_) => panic!("{origin}: tag {tag:?} is neither `NAME` nor `NAME, refused`"),
        };
        let end = (i + 1..lines.len())
            .find(|&j| lines[j].trim() == "```")
            .unwrap_or_else(|| panic!("{origin}: unclosed ```json block"));
        let body = lines[i + 1..end].join("\n");
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{origin}: the example is not JSON: {e}"));
        let reason = match expect {
            Expect::Valid => None,
            Expect::Refused => Some(
                lines[end + 1..]
                    .iter()
                    .find(|l| !l.trim().is_empty())
                    .and_then(|l| double_backtick_span(l))
                    .unwrap_or_else(|| panic!("{origin}: a refused example needs the gateway's reason in `` `` on the next line")),
            ),
        };
        examples.push(Example {
            origin,
            schema: schema.to_owned(),
            expect,
            json,
            reason,
            publish: None,
        });
        i = end + 1;
    }
    examples
}

/// The `mosquitto_pub ... -i ID -t TOPIC -m '<json>'` commands in the ```sh blocks of `doc`, as
/// examples of the device payload schema their topic calls for.
fn mosquitto_pub_examples(name: &str, doc: &str) -> Vec<Example> {
    let mut examples = Vec::new();
    let mut in_sh = false;
    let mut command = String::new();
    let mut start = 0;
    for (n, line) in doc.lines().enumerate() {
        match line.trim() {
            "```sh" => {
                in_sh = true;
                continue;
            }
            "```" if in_sh => {
                in_sh = false;
                continue;
            }
            _ if !in_sh => continue,
            _ => {}
        }
        if command.is_empty() {
            start = n + 1;
        }
        match line.trim_end().strip_suffix('\\') {
            Some(part) => {
                command.push_str(part);
                continue;
            }
            None => command.push_str(line),
        }
        let whole = std::mem::take(&mut command);
        if !whole.trim_start().starts_with("mosquitto_pub") {
            continue;
        }
        let origin = format!("docs/{name}:{start}");
        let option = |flag: &str| -> String {
            let at = whole
                .find(&format!(" {flag} "))
                .unwrap_or_else(|| panic!("{origin}: no {flag} in the mosquitto_pub command"));
            let rest = whole[at + flag.len() + 2..].trim_start();
            match rest.strip_prefix('\'') {
                Some(quoted) => quoted[..quoted.find('\'').expect("closing quote")].to_owned(),
                None => rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            }
        };
        let (client, topic, message) = (option("-i"), option("-t"), option("-m"));
        let schema = match topic.rsplit('/').next() {
            Some("telemetry") => "device-telemetry",
            Some("events") => "device-event",
            _ => panic!("{origin}: no device payload schema for topic {topic}"),
        };
        let json = serde_json::from_str(&message)
            .unwrap_or_else(|e| panic!("{origin}: -m is not JSON: {e}"));
        examples.push(Example {
            origin,
            schema: schema.to_owned(),
            expect: Expect::Valid,
            json,
            reason: None,
            publish: Some((client, topic)),
        });
    }
    examples
}

fn device_examples() -> Vec<Example> {
    let doc = read_doc("device-contract.md");
    let mut examples = json_examples("device-contract.md", &doc);
    examples.extend(mosquitto_pub_examples("device-contract.md", &doc));
    examples
}

/// Validates `examples`, grouped by schema and expectation.
fn validate_examples(examples: &[Example]) {
    let mut groups: BTreeMap<(String, bool), Vec<(String, serde_json::Value)>> = BTreeMap::new();
    for e in examples {
        groups
            .entry((e.schema.clone(), e.expect == Expect::Refused))
            .or_default()
            .push((e.origin.clone(), e.json.clone()));
    }
    for ((schema, refused), messages) in &groups {
        validate(
            schema,
            messages,
            if *refused {
                Expect::Refused
            } else {
                Expect::Valid
            },
        );
    }
}

#[test]
fn every_example_in_the_docs_matches_its_schema_and_every_refused_one_is_refused() {
    let cloud = json_examples("cloud-contract.md", &read_doc("cloud-contract.md"));
    let device = device_examples();
    let covered = |examples: &[Example]| -> BTreeSet<(String, Expect)> {
        examples
            .iter()
            .map(|e| (e.schema.clone(), e.expect))
            .collect::<BTreeSet<_>>()
    };
    for schema in ["telemetry", "event", "device-status", "gateway-status"] {
        assert!(
            covered(&cloud).contains(&(schema.to_owned(), Expect::Valid)),
            "cloud-contract.md has no example of {schema}"
        );
    }
    for (schema, expect) in [
        ("device-telemetry", Expect::Valid),
        ("device-telemetry", Expect::Refused),
        ("device-event", Expect::Valid),
        ("device-event", Expect::Refused),
        ("device-rejected", Expect::Valid),
    ] {
        assert!(
            covered(&device).contains(&(schema.to_owned(), expect)),
            "device-contract.md has no {expect:?} example of {schema}"
        );
    }
    assert!(
        device.iter().any(|e| e.publish.is_some()),
        "device-contract.md shows no mosquitto_pub command"
    );
    validate_examples(&cloud);
    validate_examples(&device);

    // The AsyncAPI document refers to schema files that exist.
    let asyncapi = read_doc("asyncapi.yaml");
    let refs: Vec<&str> = asyncapi
        .lines()
        .filter_map(|l| l.trim().strip_prefix("$ref: './schemas/"))
        .map(|l| l.trim_end_matches('\''))
        .collect();
    assert!(
        refs.len() >= 4,
        "asyncapi.yaml refers to too few schemas: {refs:?}"
    );
    for schema in refs {
        assert!(
            workspace().join("docs/schemas").join(schema).is_file(),
            "asyncapi.yaml: no docs/schemas/{schema}"
        );
    }
}

/// The schema a cloud topic's messages follow, and for device streams the device and the
/// envelope `type`; panics on a topic the contract does not document.
fn classify(topic: &str) -> (&'static str, Option<(String, &'static str)>) {
    let rest = topic
        .strip_prefix(&format!("rxgate/v1/{SITE}/"))
        .unwrap_or_else(|| panic!("{topic}: outside rxgate/v1/{SITE}/"));
    if rest == "gateway/status" {
        return ("gateway-status", None);
    }
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        ["devices", device, "telemetry"] => ("telemetry", Some((device.to_string(), "telemetry"))),
        ["devices", device, "events"] => ("event", Some((device.to_string(), "event"))),
        ["devices", device, "status"] => ("device-status", Some((device.to_string(), "status"))),
        _ => panic!("{topic}: a topic cloud-contract.md does not document"),
    }
}

/// `value` with every number as a float: telemetry values travel as 64-bit floats (`41` comes
/// out as `41.0`), which JSON consumers read as the same number.
fn numbers_as_f64(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Number(n) => serde_json::json!(n.as_f64()),
        serde_json::Value::Array(items) => items.iter().map(numbers_as_f64).collect(),
        serde_json::Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| (k.clone(), numbers_as_f64(v)))
            .collect(),
        other => other.clone(),
    }
}

/// How many device messages the audit trail records as refused for their payload (the trail
/// folds identical refusals into one entry with a `count`).
fn refused_payloads(gw: &Gateway) -> u64 {
    let entries: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["audit", "export"])).expect("audit export is JSON");
    entries
        .as_array()
        .expect("audit export is an array")
        .iter()
        .filter(|e| e["kind"] == "message.refused" && e["detail"]["class"] == "bad_payload")
        .map(|e| e["detail"]["count"].as_u64().unwrap_or(1))
        .sum()
}

fn publish(
    gw: &Gateway,
    creds: &BTreeMap<&str, PathBuf>,
    client: &str,
    topic: &str,
    message: &str,
) {
    let out = gw.mosquitto_pub(&creds[client], client, topic, message);
    assert!(
        out.status.success(),
        "mosquitto_pub as {client} on {topic} {message}: {}",
        text(&out)
    );
}

#[test]
fn everything_the_gateway_sends_to_the_cloud_matches_the_published_schemas() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path());
    let mut gw = Gateway::start(&cloud.pki.gateway_config(cloud.port));
    let backend = cloud.subscribe("rxgate/v1/#");
    let creds: BTreeMap<&str, PathBuf> = [(FRIDGE, "fridge"), (CABINET, "cabinet")]
        .into_iter()
        .map(|(id, kind)| (id, gw.enroll_with_sim(id, kind)))
        .collect();
    let topic = |device: &str, stream: &str| format!("rxgate/v1/{SITE}/devices/{device}/{stream}");
    let default_device = |schema: &str| match schema {
        "device-telemetry" => (FRIDGE, "telemetry"),
        "device-event" => (CABINET, "events"),
        other => panic!("no device publishes {other}"),
    };

    // The device contract's accepted payloads, as the devices its examples name.
    let examples = device_examples();
    let mut sent: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for e in examples
        .iter()
        .filter(|e| e.expect == Expect::Valid && e.schema != "device-rejected")
    {
        let (client, device_topic) = match &e.publish {
            Some((client, device_topic)) => (client.clone(), device_topic.clone()),
            None => {
                let (device, stream) = default_device(&e.schema);
                (device.to_owned(), format!("devices/{device}/{stream}"))
            }
        };
        publish(&gw, &creds, &client, &device_topic, &e.json.to_string());
        sent.entry(format!("rxgate/v1/{SITE}/{device_topic}"))
            .or_default()
            .push(e.json.clone());
    }
    // A controlled-substance access, the event dispensing cabinets send most.
    let access = serde_json::json!({
        "type": "access", "action": "remove", "user": "nurse-7", "drawer": "A3", "ndc": "0409-1234-01",
        "item": "Morphine 10mg", "schedule": "CII", "quantity": 1, "ts": "2026-05-01T08:00:00Z"
    });
    publish(
        &gw,
        &creds,
        CABINET,
        &format!("devices/{CABINET}/events"),
        &access.to_string(),
    );
    sent.entry(topic(CABINET, "events"))
        .or_default()
        .push(access.clone());

    // The refused ones: acknowledged (mosquitto_pub succeeds), refused with the documented reason.
    let refused: Vec<&Example> = examples
        .iter()
        .filter(|e| e.expect == Expect::Refused)
        .collect();
    for e in &refused {
        let (device, stream) = default_device(&e.schema);
        publish(
            &gw,
            &creds,
            device,
            &format!("devices/{device}/{stream}"),
            &e.json.to_string(),
        );
    }
    let count = wait_until(
        Duration::from_secs(10),
        "the refusals in the audit trail",
        || {
            let count = refused_payloads(&gw);
            (count >= refused.len() as u64).then_some(count)
        },
    );
    assert_eq!(
        count,
        refused.len() as u64,
        "exactly the documented malformed payloads are refused"
    );
    let logs = gw.logs();
    for e in &refused {
        let reason = e
            .reason
            .as_deref()
            .expect("refused examples quote a reason");
        assert!(
            logs.lines()
                .any(|l| l.contains("Refused.") && l.contains(reason)),
            "{}: the gateway does not give the documented reason {reason:?}:\n{}",
            e.origin,
            logs.lines()
                .filter(|l| l.contains("Refused."))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // A last good message on each stream: whatever was refused before it would arrive before it.
    for (device, stream, message) in [
        (
            FRIDGE,
            "telemetry",
            serde_json::json!({"points": {"temperature_c": 4.7}}),
        ),
        (
            CABINET,
            "events",
            serde_json::json!({"type": "door", "action": "close"}),
        ),
    ] {
        publish(
            &gw,
            &creds,
            device,
            &format!("devices/{device}/{stream}"),
            &message.to_string(),
        );
        sent.entry(topic(device, stream)).or_default().push(message);
    }
    for (t, messages) in &sent {
        let got = backend.wait_for(t, messages.len(), Duration::from_secs(15));
        let bodies: Vec<&serde_json::Value> = got
            .iter()
            .map(|m| {
                if m["type"] == "event" {
                    &m["event"]
                } else {
                    &m["points"]
                }
            })
            .collect();
        let expected: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| match m.get("points") {
                Some(points) => points
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            serde_json::json!({"value": v, "quality": "good"}),
                        )
                    })
                    .collect(),
                None => m.clone(),
            })
            .collect();
        assert_eq!(
            bodies.len(),
            expected.len(),
            "{t}: only the accepted messages reach the cloud: {got:#?}"
        );
        for (body, expected) in bodies.iter().zip(&expected) {
            assert_eq!(
                numbers_as_f64(body),
                numbers_as_f64(expected),
                "{t}: forwarded unchanged, in order"
            );
        }
    }
    let events = backend.json_on(&topic(CABINET, "events"));
    let cloud_access = events
        .iter()
        .find(|m| m["event"] == access)
        .expect("the access event in the cloud");
    assert_eq!(cloud_access["device_ts"], "2026-05-01T08:00:00Z");

    // Gateway status: connected (retained, seen on subscribing), the last will when the gateway
    // dies, connected again, and the goodbye on a clean stop.
    let gateway_status = format!("rxgate/v1/{SITE}/gateway/status");
    backend.wait_for(&gateway_status, 1, Duration::from_secs(5));
    let mut child = gw.child.take().expect("the gateway runs");
    child.kill().expect("SIGKILL the gateway");
    child.wait().expect("reap the gateway");
    backend.wait_for(&gateway_status, 2, Duration::from_secs(10));
    gw.spawn();
    backend.wait_for(&gateway_status, 3, Duration::from_secs(15));
    assert!(gw.stop(), "the gateway stops cleanly:\n{}", gw.logs());
    let statuses = backend.wait_for(&gateway_status, 4, Duration::from_secs(10));
    let reasons: Vec<&str> = statuses
        .iter()
        .filter_map(|s| s["reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        ["connected", "connection lost", "connected", "shutdown"],
        "{statuses:#?}"
    );

    // Every message on the wire: documented topic, schema, envelope consistent with its topic.
    let received: Vec<(String, String)> = backend
        .messages()
        .into_iter()
        .filter(|(t, _)| t.starts_with("rxgate/"))
        .collect();
    let mut by_schema: BTreeMap<&str, Vec<(String, serde_json::Value)>> = BTreeMap::new();
    let mut by_id: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut seqs: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for (t, payload) in &received {
        let message: serde_json::Value = serde_json::from_str(payload)
            .unwrap_or_else(|e| panic!("{t}: not JSON ({e}): {payload}"));
        let (schema, stream) = classify(t);
        if let Some((device, kind)) = stream {
            assert_eq!(message["site"], SITE, "{t}: {payload}");
            assert_eq!(message["device"], device.as_str(), "{t}: {payload}");
            assert_eq!(message["type"], kind, "{t}: {payload}");
            let id = message["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{t}: no id: {payload}"))
                .to_owned();
            match by_id.get(&id) {
                // A redelivery is the same message: same topic, same bytes.
                Some(first) => assert_eq!(
                    first,
                    &(t.clone(), payload.clone()),
                    "two messages share the id {id}"
                ),
                None => {
                    by_id.insert(id, (t.clone(), payload.clone()));
                    let seq = message["seq"]
                        .as_u64()
                        .unwrap_or_else(|| panic!("{t}: no seq: {payload}"));
                    assert!(
                        seqs.entry(t.clone()).or_default().insert(seq),
                        "{t}: seq {seq} given to two messages"
                    );
                }
            }
        }
        by_schema
            .entry(schema)
            .or_default()
            .push((t.clone(), message));
    }
    // Every stream began after the backend subscribed: 1, 2, 3, ... without gaps.
    for (t, seqs) in &seqs {
        let expected: BTreeSet<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, &expected, "{t}: seq from 1 without gaps");
    }
    let statuses = &by_schema["device-status"];
    for device in [FRIDGE, CABINET] {
        for online in [true, false] {
            assert!(
                statuses
                    .iter()
                    .any(|(_, m)| m["device"] == device && m["online"] == online),
                "{device}: a status with online = {online}: {statuses:#?}"
            );
        }
    }
    for schema in ["telemetry", "event", "device-status", "gateway-status"] {
        let messages = by_schema
            .get(schema)
            .unwrap_or_else(|| panic!("the gateway sent no {schema} message"));
        validate(schema, messages, Expect::Valid);
    }
}
