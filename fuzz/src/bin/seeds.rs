//! Writes the seed corpora, `fuzz/seeds/<target>/`, from real inputs: CSRs made as devices make
//! them, the device contract's payload examples, MQTT packets as clients send them, the example
//! register maps with replies like the poller's tests use, the example config files, and the
//! default policy with the policy guide's examples.
//!
//! Run by `scripts/fuzz seeds`; the output is committed. Each file is named after what it holds.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
// Links libFuzzer's coverage runtime, which the instrumented build of every crate needs.
use libfuzzer_sys as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, SanType,
};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    Connect, LastWill, Login, Packet, PubAck, PubRel, Publish, Subscribe, Unsubscribe,
};
use rxgate::config::{Function, ModelFile};
use rxgate_certs::KeyAlg;
use rxgate_certs::base64::encode_body;
use rxgate_fuzz::modbus::{write_frame, write_map};

fn root() -> PathBuf {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    fuzz.parent().unwrap_or(fuzz).to_owned()
}

struct Corpus(PathBuf);

impl Corpus {
    fn new(target: &str) -> Corpus {
        let dir = root().join("fuzz/seeds").join(target);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the seed folder");
        Corpus(dir)
    }

    fn add(&self, name: &str, bytes: impl AsRef<[u8]>) {
        fs::write(self.0.join(name), bytes).expect("write a seed");
    }
}

fn csrs() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (alg, name) in [
        (KeyAlg::P256, "p256"),
        (KeyAlg::P384, "p384"),
        (KeyAlg::Ed25519, "ed25519"),
    ] {
        let (_, der) = rxgate_certs::new_device_csr("fridge-01", alg).expect("a CSR");
        out.push((format!("{name}.der"), der));
    }
    // What a misbehaving device asks for: CA:TRUE and a SAN. Accepted; the extensions are ignored.
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "cab-7");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "rxgate");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.subject_alt_names = vec![SanType::DnsName("evil.example".try_into().expect("a name"))];
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
    let der = params
        .serialize_request(&key)
        .expect("a CSR")
        .der()
        .to_vec();
    out.push(("p256-ca-san.der".to_owned(), der));
    // openssl-made requests: RSA, refused curves and algorithms, two CNs.
    let testdata = root().join("certs/testdata");
    for entry in fs::read_dir(&testdata).expect("certs/testdata") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|e| e == "der") {
            let name = path
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            out.push((
                format!("openssl-{name}"),
                fs::read(&path).expect("read a CSR"),
            ));
        }
    }
    out.sort();
    out
}

fn csr_seeds() {
    let csr = Corpus::new("csr");
    let est = Corpus::new("est_body");
    for (name, der) in csrs() {
        csr.add(&name, &der);
        let body = encode_body(&der);
        let stem = name.trim_end_matches(".der");
        est.add(&format!("{stem}.b64"), &body);
        if stem == "p256" || stem == "openssl-rsa2048" {
            // curl --data-binary @req.pem; CRLF line ends; one line without padding.
            est.add(
                &format!("{stem}.pem"),
                format!(
                    "-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"
                ),
            );
            est.add(&format!("{stem}.crlf.b64"), body.replace('\n', "\r\n"));
            est.add(
                &format!("{stem}.flat.b64"),
                body.replace('\n', "").trim_end_matches('='),
            );
        }
    }
}

fn payload_seeds() {
    let telemetry = Corpus::new("telemetry");
    let examples: &[(&str, &str)] = &[
        (
            "contract-ts",
            r#"{"ts": "2026-05-01T08:00:00.150Z", "points": {"temperature_c": 4.6, "door_open": false}}"#,
        ),
        (
            "contract-points",
            r#"{"points": {"temperature_c": 4.6, "probe2_temperature_c": 4.9, "humidity_pct": 41, "door_open": false, "on_battery": false}}"#,
        ),
        (
            "refused-unit",
            r#"{"points": {"temperature_c": 4.6}, "unit": "C"}"#,
        ),
        ("refused-string", r#"{"points": {"temperature_c": "4.6"}}"#),
        ("refused-name", r#"{"points": {"temperature c": 4.6}}"#),
        ("refused-empty", r#"{"points": {}}"#),
        (
            "refused-ts",
            r#"{"ts": "01/05/2026 08:00", "points": {"temperature_c": 4.6}}"#,
        ),
        ("refused-top-level", r#"{"temperature_c": 4.6}"#),
        (
            "offset-ts",
            r#"{"ts": "2026-05-01T08:00:00.123456789+02:00", "points": {"t": -18.25e0, "big": 1e308, "neg": -0.0}}"#,
        ),
        ("null", r#"{"points": {"t": null}}"#),
    ];
    for (name, text) in examples {
        telemetry.add(&format!("{name}.json"), text);
    }
    let events = Corpus::new("event");
    let examples: &[(&str, &str)] = &[
        (
            "contract-access",
            r#"{"type": "access", "action": "remove", "user": "nurse-7", "drawer": "A3", "ndc": "0409-1234-01", "item": "Morphine 10mg", "schedule": "CII", "quantity": 1, "ts": "2026-05-01T08:00:00Z"}"#,
        ),
        ("refused-no-type", r#"{"action": "remove", "drawer": "A3"}"#),
        ("refused-type-number", r#"{"type": 7, "drawer": "A3"}"#),
        ("refused-unix-ts", r#"{"type": "access", "ts": 1777622400}"#),
        ("refused-array", r#"["access", "remove"]"#),
        (
            "offset-ts",
            r#"{"type":"access","action":"remove","ts":"2026-05-01T08:00:00+02:00","patient":{"id":"P-1","dob":"1950-01-01"},"items":[1,2.5,true,null]}"#,
        ),
        ("null-ts", r#"{"type": "door", "ts": null}"#),
    ];
    for (name, text) in examples {
        events.add(&format!("{name}.json"), text);
    }
}

fn mqtt_seeds() {
    let corpus = Corpus::new("mqtt_relay");
    let write = |packets: &[Packet]| {
        let mut buf = BytesMut::new();
        for p in packets {
            p.write(&mut buf, 1 << 20).expect("write a packet");
        }
        buf.to_vec()
    };
    let mut connect = Connect::new("fridge-01");
    connect.keep_alive = 30;
    let mut with_will = connect.clone();
    with_will.last_will = Some(LastWill::new(
        "devices/fridge-01/status",
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    with_will.login = Some(Login::new("fridge-01", "ignored"));
    let telemetry = |qos, pkid| {
        let mut p = Publish::new(
            "devices/fridge-01/telemetry",
            qos,
            br#"{"ts":"2026-05-01T08:00:00Z","points":{"temperature_c":4.6,"door_open":false}}"#
                .to_vec(),
        );
        p.pkid = pkid;
        Packet::Publish(p)
    };
    let event = {
        let mut p = Publish::new(
            "devices/cabinet-01/events",
            QoS::ExactlyOnce,
            br#"{"type":"access","action":"remove","drawer":"A3"}"#.to_vec(),
        );
        p.pkid = 7;
        Packet::Publish(p)
    };
    let local = Packet::Publish(Publish::from_bytes(
        "devices/fridge-01/state/door",
        QoS::AtMostOnce,
        Bytes::from_static(b"open"),
    ));
    let subscribe = Packet::Subscribe(Subscribe::new("devices/fridge-01/#", QoS::AtLeastOnce));
    let unsubscribe = Packet::Unsubscribe(Unsubscribe::new("devices/fridge-01/#"));
    let session = [
        Packet::Connect(connect.clone()),
        subscribe.clone(),
        telemetry(QoS::AtLeastOnce, 1),
        telemetry(QoS::AtMostOnce, 0),
        event.clone(),
        Packet::PubRel(PubRel::new(7)),
        Packet::PubAck(PubAck::new(3)),
        local.clone(),
        Packet::PingReq,
        unsubscribe.clone(),
        Packet::Disconnect,
    ];
    corpus.add("session.bin", write(&session));
    corpus.add("connect.bin", write(&[Packet::Connect(connect)]));
    corpus.add(
        "connect-will-login.bin",
        write(&[Packet::Connect(with_will)]),
    );
    corpus.add("publish-qos1.bin", write(&[telemetry(QoS::AtLeastOnce, 1)]));
    corpus.add("publish-qos2-event.bin", write(&[event]));
    corpus.add("publish-local.bin", write(&[local]));
    corpus.add("subscribe.bin", write(&[subscribe]));
    corpus.add("unsubscribe.bin", write(&[unsubscribe]));
    corpus.add(
        "pingreq-disconnect.bin",
        write(&[Packet::PingReq, Packet::Disconnect]),
    );
    // MQTT 3.1 and 5.0 CONNECTs, refused by protocol level.
    let mut v31 = vec![0x10, 0x13, 0, 6];
    v31.extend_from_slice(b"MQIsdp");
    v31.extend_from_slice(&[3, 0x02, 0, 60, 0, 5]);
    v31.extend_from_slice(b"cab-7");
    corpus.add("connect-mqtt31.bin", v31);
    let mut v5 = vec![0x10, 0x12, 0, 4];
    v5.extend_from_slice(b"MQTT");
    v5.extend_from_slice(&[5, 0x02, 0, 60, 0, 0, 5]);
    v5.extend_from_slice(b"cab-7");
    corpus.add("connect-mqtt5.bin", v5);
}

/// Registers `start..start+n` holding their own address ×10, as the poller's tests answer.
fn register_reply(start: u16, n: u16) -> Vec<u8> {
    (start..start + n)
        .flat_map(|a| a.wrapping_mul(10).to_be_bytes())
        .collect()
}

fn modbus_seeds() {
    let decode = Corpus::new("modbus_decode");
    for model in ["acme-fr400", "thermolog-tl2"] {
        let path = root().join(format!("config/devices/{model}.toml"));
        let map = ModelFile::load(&path)
            .expect("an example model file")
            .registers;
        let mut reply = register_reply(0, 64);
        reply.extend_from_slice(&[0x00, 0x00, 0xC0, 0x7F, 0x80, 0x00, 0xFF, 0xFF]);
        decode.add(&format!("{model}.bin"), write_map(&map, &reply));
    }
    let frame = Corpus::new("modbus_frame");
    for (rtu, transport) in [(false, "tcp"), (true, "rtu")] {
        let mut holding = vec![0x03, 8];
        holding.extend_from_slice(&register_reply(0, 4));
        frame.add(
            &format!("{transport}-holding.bin"),
            write_frame(rtu, Function::Holding, 0, 4, &holding),
        );
        let mut input = vec![0x04, 4];
        input.extend_from_slice(&[0xFF, 0x9C, 0x80, 0x00]);
        frame.add(
            &format!("{transport}-input.bin"),
            write_frame(rtu, Function::Input, 10, 2, &input),
        );
        frame.add(
            &format!("{transport}-coils.bin"),
            write_frame(rtu, Function::Coil, 0, 10, &[0x01, 2, 0b1010_0101, 0b11]),
        );
        frame.add(
            &format!("{transport}-discrete.bin"),
            write_frame(rtu, Function::Discrete, 5, 3, &[0x02, 1, 0b101]),
        );
        frame.add(
            &format!("{transport}-exception.bin"),
            write_frame(rtu, Function::Holding, 0, 2, &[0x83, 0x02]),
        );
        frame.add(
            &format!("{transport}-gateway-exception.bin"),
            write_frame(rtu, Function::Input, 0, 1, &[0x84, 0x0B]),
        );
        frame.add(
            &format!("{transport}-short.bin"),
            write_frame(rtu, Function::Holding, 0, 2, &[0x03, 2, 0, 1]),
        );
    }
}

fn config_seeds() {
    let corpus = Corpus::new("config");
    for (name, path) in [
        ("gateway.toml", "config/gateway.toml"),
        ("alerts.example.toml", "config/alerts.example.toml"),
    ] {
        corpus.add(
            name,
            fs::read(root().join(path)).expect("an example config"),
        );
    }
    corpus.add(
        "modbus-devices.toml",
        r#"[gateway]
site = "store-0042"
data_dir = "data"

[cloud]
url = "mqtts://broker.example:8883"
ca_file = "cloud-ca.pem"

[devices.fridge-01]
transport = "tcp"
address = "192.168.1.50:502"
model = "devices/acme-fr400.toml"
profile = "refrigerator"

[devices.fridge-02]
transport = "rtu"
serial = "/dev/ttyUSB0"
unit = 2
baud = 19200
parity = "even"
model = "devices/thermolog-tl2.toml"
poll_interval = "5s"
timeout = "500ms"

[devices.freezer-01]
transport = "tls"
address = "[fd00::5]"
server_name = "freezer-01.local"
profile = "freezer"
alarm_delay = "10m"
registers = [
  { name = "temperature_c", function = "holding", address = 0, type = "f32", word_order = "little" },
  { name = "door_open", function = "coil", address = 3 },
  { name = "setpoint_c", function = "holding", address = 10, type = "i16", scale = 0.1, offset = -40.0, unit = "°C" },
]

[devices.cabinet-01]
kind = "cabinet"
"#,
    );
}

/// The default policy and every example of the policy guide, so that even a short run
/// starts from policies that compile and reaches rule evaluation.
fn policy_seeds() {
    let corpus = Corpus::new("policy");
    corpus.add(
        "default.toml",
        fs::read(root().join("config/policy.toml")).expect("the default policy"),
    );
    let guide = fs::read_to_string(root().join("docs/policy.md")).expect("the policy guide");
    let examples = guide
        .split("```toml\n")
        .skip(1)
        .filter_map(|block| block.split_once("```").map(|(example, _)| example));
    for (i, example) in examples.enumerate() {
        corpus.add(&format!("guide-{}.toml", i + 1), example);
    }
}

fn main() {
    csr_seeds();
    payload_seeds();
    mqtt_seeds();
    modbus_seeds();
    config_seeds();
    policy_seeds();
    println!(
        "seeds written under {}",
        root().join("fuzz/seeds").display()
    );
}
