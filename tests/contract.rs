//! The published contracts against the real gateway: everything `rxgate` sends to the cloud
//! broker (mosquitto) must match the JSON Schemas in `docs/schemas/`, and so must every example in
//! `docs/cloud-contract.md` and `docs/device-contract.md`; the device payloads the device contract
//! documents as accepted or refused must be accepted or refused by the real gateway too. The
//! gateway is made to send every kind of message: telemetry, events, statuses, alert
//! notifications of each event, and audit checkpoints, whose documented openssl recipe is run
//! (`<!-- test: verify-checkpoint -->` before its ```sh block; it needs `jq`).
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
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rxgate_e2e::cloud::{Cloud, Subscription};
use rxgate_e2e::{Gateway, text, wait_until};

const SITE: &str = "store-0042";
/// Device ids the device contract's examples use.
const FRIDGE: &str = "vaccine-fridge-02";
const CABINET: &str = "cabinet-01";
/// A patient id a cabinet sends; it must never reach the cloud.
const PATIENT: &str = "MRN-0012345";
/// The schemas of the messages the gateway sends to the cloud.
const CLOUD_SCHEMAS: [&str; 6] = [
    "telemetry",
    "event",
    "device-status",
    "gateway-status",
    "alert",
    "audit-checkpoint",
];

/// Schemas of message forms a gateway sends only when configured to: documented, with examples,
/// and referred to by the AsyncAPI document all the same.
const OPTIONAL_CLOUD_SCHEMAS: [&str; 1] = ["telemetry-compact"];

/// Whether `text` is a keyed pseudonym as the default policy makes them: `ps-` + 32 hex digits.
fn is_pseudonym(text: &str) -> bool {
    text.strip_prefix("ps-").is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Every `patient_id` value anywhere in `value`.
fn patient_ids(value: &serde_json::Value) -> Vec<&serde_json::Value> {
    match value {
        serde_json::Value::Object(fields) => fields
            .iter()
            .flat_map(|(k, v)| {
                let own = (k == "patient_id").then_some(v);
                own.into_iter().chain(patient_ids(v))
            })
            .collect(),
        serde_json::Value::Array(items) => items.iter().flat_map(patient_ids).collect(),
        _ => Vec::new(),
    }
}

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
    for schema in CLOUD_SCHEMAS.iter().chain(&OPTIONAL_CLOUD_SCHEMAS) {
        assert!(
            covered(&cloud).contains(&(schema.to_string(), Expect::Valid)),
            "cloud-contract.md has no example of {schema}"
        );
    }
    // What the cloud gets has gone through the default policy: no patient id in clear.
    for e in &cloud {
        for id in patient_ids(&e.json) {
            assert!(
                id.as_str().is_some_and(is_pseudonym),
                "{}: patient_id {id} is not a pseudonym (ps- and 32 hex digits)",
                e.origin
            );
        }
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
    for schema in CLOUD_SCHEMAS.iter().chain(&OPTIONAL_CLOUD_SCHEMAS) {
        assert!(
            refs.contains(&format!("{schema}.json").as_str()),
            "asyncapi.yaml does not refer to schemas/{schema}.json: {refs:?}"
        );
    }
    for schema in refs {
        assert!(
            workspace().join("docs/schemas").join(schema).is_file(),
            "asyncapi.yaml: no docs/schemas/{schema}"
        );
    }
}

/// What the envelope of a cloud topic's messages says besides its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stream {
    /// `devices/<device>/<stream>`: the envelope names the topic's device.
    Device { device: String, kind: &'static str },
    /// `alerts`: the envelope names the alert's device.
    Alerts,
    /// `audit/checkpoints`: gateway-wide, no device.
    Checkpoints,
    /// `gateway/status`: a retained state, not an envelope.
    GatewayStatus,
}

/// The schema a cloud topic's messages follow and what their envelope says; panics on a topic
/// the contract does not document.
fn classify(topic: &str) -> (&'static str, Stream) {
    let rest = topic
        .strip_prefix(&format!("rxgate/v1/{SITE}/"))
        .unwrap_or_else(|| panic!("{topic}: outside rxgate/v1/{SITE}/"));
    let parts: Vec<&str> = rest.split('/').collect();
    let device = |device: &str, kind| Stream::Device {
        device: device.to_owned(),
        kind,
    };
    match parts.as_slice() {
        ["gateway", "status"] => ("gateway-status", Stream::GatewayStatus),
        ["alerts"] => ("alert", Stream::Alerts),
        ["audit", "checkpoints"] => ("audit-checkpoint", Stream::Checkpoints),
        ["devices", id, "telemetry"] => ("telemetry", device(id, "telemetry")),
        ["devices", id, "events"] => ("event", device(id, "event")),
        ["devices", id, "status"] => ("device-status", device(id, "status")),
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
    audit_entries(gw)
        .iter()
        .filter(|e| e["kind"] == "message.refused" && e["detail"]["class"] == "bad_payload")
        .map(|e| e["detail"]["count"].as_u64().unwrap_or(1))
        .sum()
}

/// The audit trail's entries, oldest first.
fn audit_entries(gw: &Gateway) -> Vec<serde_json::Value> {
    match serde_json::from_str(&gw.cli_ok(&["audit", "export"])).expect("audit export is JSON") {
        serde_json::Value::Array(entries) => entries,
        other => panic!("audit export is not an array: {other}"),
    }
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

/// Waits for an alert notification on the cloud with `event` whose alert satisfies `which`.
fn wait_for_alert(
    backend: &Subscription,
    event: &str,
    what: &str,
    which: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_until(
        Duration::from_secs(15),
        &format!("the {event} notification of {what}"),
        || {
            backend
                .json_on(&format!("rxgate/v1/{SITE}/alerts"))
                .into_iter()
                .find(|m| m["event"] == event && which(&m["alert"]))
        },
    )
}

/// The ```sh block right after the line `<!-- test: NAME -->` in `doc`.
fn tested_sh_block(name: &str, doc: &str, test: &str) -> String {
    let tag = format!("<!-- test: {test} -->");
    let lines: Vec<&str> = doc.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim() == tag)
        .unwrap_or_else(|| panic!("docs/{name}: no {tag}"));
    let start = (at + 1..lines.len())
        .find(|&i| !lines[i].trim().is_empty())
        .filter(|&i| lines[i].trim() == "```sh")
        .unwrap_or_else(|| panic!("docs/{name}: {tag} is not followed by a ```sh block"));
    let end = (start + 1..lines.len())
        .find(|&i| lines[i].trim() == "```")
        .unwrap_or_else(|| panic!("docs/{name}: unclosed ```sh block after {tag}"));
    lines[start + 1..end].join("\n")
}

/// Runs the cloud contract's recipe for verifying a checkpoint with openssl and jq on
/// `message` (a checkpoint message as the cloud received it), with the gateway's CA.
fn run_checkpoint_recipe(dir: &Path, message: &serde_json::Value, ca: &Path) -> Output {
    let script = tested_sh_block(
        "cloud-contract.md",
        &read_doc("cloud-contract.md"),
        "verify-checkpoint",
    );
    std::fs::create_dir_all(dir).expect("recipe folder");
    std::fs::write(dir.join("checkpoint.json"), message.to_string()).expect("checkpoint.json");
    std::fs::copy(ca, dir.join("gateway-ca.pem")).expect("gateway-ca.pem");
    Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run the recipe with bash (it needs openssl and jq)")
}

#[test]
fn everything_the_gateway_sends_to_the_cloud_matches_the_published_schemas() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path());
    // Subscribed before the gateway starts, so that every stream is seen from its first message,
    // the audit checkpoint signed at start-up included.
    let backend = cloud.subscribe("rxgate/v1/#");
    // The smart fridge is watched by the cold chain, with delays short enough for every kind of
    // alert notification to happen during the test.
    let mut gw = Gateway::start(&format!(
        "{}\n[alerts]\nescalate_after = \"2s\"\n\
         [devices.{FRIDGE}]\nprofile = \"refrigerator\"\nalarm_delay = \"1s\"\n",
        cloud.pki.gateway_config(cloud.port)
    ));
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
        "item": "Morphine 10mg", "schedule": "CII", "quantity": 1, "auth": "badge", "ts": "2026-05-01T08:00:00Z"
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
    // An override with no witness, proven by a PIN alone: two access flags at any hour. It names
    // a patient and carries a note, neither of which may leave the building in clear.
    let override_access = serde_json::json!({
        "type": "access", "action": "override", "user": "nurse-7", "drawer": "C1", "ndc": "0093-4155-73",
        "item": "Amoxicillin 500mg", "schedule": "none", "quantity": 2, "patient_id": PATIENT, "auth": "pin",
        "note": "patient in pain, pharmacist on break", "ts": "2026-05-01T08:02:00Z"
    });
    publish(
        &gw,
        &creds,
        CABINET,
        &format!("devices/{CABINET}/events"),
        &override_access.to_string(),
    );
    let pseudonym = gw.cli_ok(&["pseudonym", PATIENT]).trim().to_owned();
    assert!(is_pseudonym(&pseudonym), "{pseudonym}");
    let mut override_forwarded = override_access.clone();
    override_forwarded["patient_id"] = pseudonym.clone().into();
    override_forwarded
        .as_object_mut()
        .expect("an object")
        .remove("note");
    sent.entry(topic(CABINET, "events"))
        .or_default()
        .push(override_forwarded.clone());

    // A cold-chain excursion of the smart fridge: too cold for longer than the alarm delay (a
    // warning), then freezing (critical), acknowledged; the last good reading below clears it.
    let fridge_telemetry = format!("devices/{FRIDGE}/telemetry");
    let too_cold = |a: &serde_json::Value| a["device"] == FRIDGE && a["kind"] == "temperature_low";
    let mut worsened = serde_json::Value::Null;
    for (reading, event) in [(1.5, "raised"), (-1.0, "worsened")] {
        let message = serde_json::json!({"points": {"temperature_c": reading}});
        publish(&gw, &creds, FRIDGE, &fridge_telemetry, &message.to_string());
        sent.entry(topic(FRIDGE, "telemetry"))
            .or_default()
            .push(message);
        worsened = wait_for_alert(&backend, event, "the fridge's excursion", too_cold);
    }
    assert_eq!(worsened["alert"]["severity"], "critical", "{worsened:#}");
    assert_eq!(worsened["alert"]["value"], -1.0, "{worsened:#}");
    assert_eq!(worsened["alert"]["limit"], 0.0, "{worsened:#}");
    let alert_id = worsened["alert"]["id"]
        .as_str()
        .expect("alert id")
        .to_owned();
    gw.cli_ok(&[
        "alerts",
        "ack",
        &alert_id,
        "--note",
        "vaccines moved to the backup fridge",
    ]);
    wait_for_alert(&backend, "acknowledged", "the fridge's excursion", |a| {
        a["id"] == alert_id.as_str()
    });

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
            serde_json::json!({"type": "access", "action": "count", "user": "pharm-weiss", "drawer": "B1",
                "ndc": "0409-1890-01", "item": "Morphine sulfate 4 mg/mL injection", "schedule": "CII",
                "quantity": 12, "auth": ["badge", "pin"], "ts": "2026-05-01T08:05:00Z"}),
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
        backend.wait_for(t, messages.len(), Duration::from_secs(15));
        // As a consumer reads a stream: each message once, in seq order (events of one device
        // wait in different priority lanes, so arrival order is not seq order).
        let mut got: BTreeMap<u64, serde_json::Value> = BTreeMap::new();
        for m in backend.json_on(t) {
            got.insert(m["seq"].as_u64().expect("seq"), m);
        }
        let bodies: Vec<&serde_json::Value> = got
            .values()
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
                "{t}: forwarded as the policy shaped it, in seq order"
            );
        }
    }
    let events = backend.json_on(&topic(CABINET, "events"));
    let cloud_access = events
        .iter()
        .find(|m| m["event"] == access)
        .expect("the access event in the cloud");
    assert_eq!(cloud_access["device_ts"], "2026-05-01T08:00:00Z");

    // The override's flags carry the event as it left the policy: the same as the cloud got.
    for (flag, rule) in [
        ("override_without_witness", "override-without-witness"),
        (
            "access_without_second_factor",
            "access-without-second-factor",
        ),
    ] {
        let raised = wait_for_alert(&backend, "raised", flag, |a| a["flag"] == flag);
        let alert = &raised["alert"];
        assert_eq!(alert["kind"], "access_flag", "{raised:#}");
        assert_eq!(alert["device"], CABINET, "{raised:#}");
        assert_eq!(alert["active"], false, "{raised:#}");
        assert_eq!(alert["detail"]["rule"], rule, "{raised:#}");
        assert_eq!(
            alert["detail"]["event"], override_forwarded,
            "{flag}: the event as it left the policy"
        );
    }
    // Flags are never active: nobody acknowledges these, so they escalate.
    let escalated = wait_for_alert(&backend, "escalated", "an access flag", |a| {
        a["kind"] == "access_flag"
    });
    assert_eq!(escalated["escalation"], true, "{escalated:#}");
    assert_eq!(escalated["alert"]["state"], "escalated", "{escalated:#}");
    // The last good reading ended the excursion, which was acknowledged: resolved.
    let cleared = wait_for_alert(&backend, "cleared", "the fridge's excursion", |a| {
        a["id"] == alert_id.as_str()
    });
    let alert = &cleared["alert"];
    assert_eq!(alert["state"], "resolved", "{cleared:#}");
    assert_eq!(alert["active"], false, "{cleared:#}");
    assert_eq!(alert["min"], -1.0, "{cleared:#}");
    assert!(alert["mkt"].is_number(), "{cleared:#}");
    assert_eq!(
        alert["acknowledged_by"],
        rxgate_e2e::whoami().as_str(),
        "{cleared:#}"
    );

    // Gateway status: connected, the last will when the gateway dies, connected again, and the
    // goodbye on a clean stop. The restarted gateway signs the audit chain's head at start-up.
    let gateway_status = format!("rxgate/v1/{SITE}/gateway/status");
    backend.wait_for(&gateway_status, 1, Duration::from_secs(5));
    let head = audit_entries(&gw)
        .last()
        .and_then(|e| e["seq"].as_u64())
        .expect("an audit trail");
    let mut child = gw.child.take().expect("the gateway runs");
    child.kill().expect("SIGKILL the gateway");
    child.wait().expect("reap the gateway");
    backend.wait_for(&gateway_status, 2, Duration::from_secs(10));
    gw.spawn();
    backend.wait_for(&gateway_status, 3, Duration::from_secs(15));
    let checkpoints = format!("rxgate/v1/{SITE}/audit/checkpoints");
    let checkpoint = wait_until(
        Duration::from_secs(15),
        "a checkpoint of the whole audit trail",
        || {
            backend
                .json_on(&checkpoints)
                .into_iter()
                .find(|m| m["checkpoint"]["seq"].as_u64() >= Some(head))
        },
    );
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

    // The checkpoint as the cloud received it verifies: with the documented openssl recipe, and
    // on the gateway with `rxgate audit verify --checkpoint`. A forged one does not.
    let recipe = run_checkpoint_recipe(&gw.path("recipe"), &checkpoint, &gw.ca_cert());
    assert!(
        recipe.status.success() && String::from_utf8_lossy(&recipe.stdout).contains("Verified OK"),
        "the cloud contract's openssl recipe: {}",
        text(&recipe)
    );
    let mut forged = checkpoint.clone();
    forged["checkpoint"]["seq"] = (head + 1000).into();
    let recipe = run_checkpoint_recipe(&gw.path("forged"), &forged, &gw.ca_cert());
    assert!(
        !recipe.status.success(),
        "the recipe accepts a forged checkpoint: {}",
        text(&recipe)
    );
    let kept = gw.path("checkpoint.json");
    std::fs::write(&kept, checkpoint.to_string()).expect("write the checkpoint");
    let verified = gw.cli(&[
        "audit",
        "verify",
        "--checkpoint",
        &kept.display().to_string(),
    ]);
    assert!(
        verified.status.success(),
        "rxgate audit verify --checkpoint: {}",
        text(&verified)
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
        assert!(
            !payload.contains(PATIENT) && !payload.contains("patient in pain"),
            "{t}: a patient id or free text left the building: {payload}"
        );
        let message: serde_json::Value = serde_json::from_str(payload)
            .unwrap_or_else(|e| panic!("{t}: not JSON ({e}): {payload}"));
        let (schema, stream) = classify(t);
        let (device, kind) = match &stream {
            Stream::GatewayStatus => {
                by_schema
                    .entry(schema)
                    .or_default()
                    .push((t.clone(), message));
                continue;
            }
            Stream::Device { device, kind } => (Some(device.as_str()), *kind),
            Stream::Alerts => {
                assert_eq!(message["alert"]["site"], SITE, "{t}: {payload}");
                (message["alert"]["device"].as_str(), "alert")
            }
            Stream::Checkpoints => {
                assert_eq!(message["checkpoint"]["site"], SITE, "{t}: {payload}");
                assert_eq!(
                    message["gateway_ts"], message["checkpoint"]["ts"],
                    "{t}: {payload}"
                );
                (None, "audit_checkpoint")
            }
        };
        assert_eq!(message["site"], SITE, "{t}: {payload}");
        assert_eq!(
            message.get("device").and_then(|d| d.as_str()),
            device,
            "{t}: {payload}"
        );
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
    let alert_events: BTreeSet<&str> = by_schema["alert"]
        .iter()
        .filter_map(|(_, m)| m["event"].as_str())
        .collect();
    assert_eq!(
        alert_events,
        BTreeSet::from(["raised", "worsened", "escalated", "acknowledged", "cleared"]),
        "every kind of alert notification was seen"
    );
    for schema in CLOUD_SCHEMAS {
        let messages = by_schema
            .get(schema)
            .unwrap_or_else(|| panic!("the gateway sent no {schema} message"));
        validate(schema, messages, Expect::Valid);
    }
}

#[test]
fn a_gateway_set_to_compact_points_sends_telemetry_that_matches_the_compact_schema_and_not_the_full_one()
 {
    let tmp = tempfile::tempdir().unwrap();
    let requests = tmp.path().join("unused.log");
    let mut cmd = Command::new(python());
    cmd.arg(workspace().join("tests/pymodbus_server.py"))
        .arg("0")
        .arg(&requests);
    let (_server, port) = rxgate_e2e::start_ready(cmd, "the pymodbus server");
    // The Thermolog TL-2's map, and a point the server does not serve (holding 40): never read.
    let model = tmp.path().join("tl2-plus.toml");
    let mut map = std::fs::read_to_string(workspace().join("config/devices/thermolog-tl2.toml"))
        .expect("the TL-2 model");
    map.push_str(
        "\n[[registers]]\nname = \"missing\"\nfunction = \"holding\"\naddress = 40\ntype = \"u16\"\n",
    );
    std::fs::write(&model, map).unwrap();
    let cloud = Cloud::start(tmp.path());
    let backend = cloud.subscribe("rxgate/v1/#");
    let _gw = Gateway::start(&format!(
        "{}points = \"compact\"\n[devices.logger-01]\nkind = \"sensor\"\ntransport = \"tcp\"\n\
         address = \"127.0.0.1:{port}\"\nmodel = \"{}\"\npoll_interval = \"500ms\"\n",
        cloud.pki.gateway_config(cloud.port),
        model.display()
    ));
    let topic = format!("rxgate/v1/{SITE}/devices/logger-01/telemetry");
    let messages = backend.wait_for(&topic, 3, Duration::from_secs(20));
    let m = &messages[0];
    assert_eq!(m["points_version"], 2, "{m}");
    let points = &m["points"];
    assert_eq!(points["probe1_c"], 4.25, "{m}");
    assert_eq!(points["battery_v"], 3.312, "{m}");
    // Whole numbers arrive as JSON integers.
    assert_eq!(points["records_stored"].as_u64(), Some(123_456_789), "{m}");
    assert_eq!(points["log_interval_s"].as_u64(), Some(300), "{m}");
    assert_eq!(points["missing"], serde_json::Value::Null, "{m}");
    assert_eq!(
        m["quality"],
        serde_json::json!({ "missing": "comm_error" }),
        "only the point that is not good: {m}"
    );
    let raw = backend
        .messages()
        .into_iter()
        .find(|(t, _)| *t == topic)
        .map(|(_, p)| p)
        .unwrap();
    println!("a compact TL-2 reading, {} bytes: {raw}", raw.len());
    let tagged: Vec<(String, serde_json::Value)> = messages
        .iter()
        .map(|m| (topic.clone(), m.clone()))
        .collect();
    validate("telemetry-compact", &tagged, Expect::Valid);
    validate("telemetry", &tagged, Expect::Refused);
    // Statuses are not telemetry: unchanged.
    let statuses = backend.wait_for(
        &format!("rxgate/v1/{SITE}/devices/logger-01/status"),
        1,
        Duration::from_secs(5),
    );
    let tagged: Vec<(String, serde_json::Value)> = statuses
        .into_iter()
        .map(|m| ("status".to_owned(), m))
        .collect();
    validate("device-status", &tagged, Expect::Valid);
}
