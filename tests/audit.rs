//! The audit trail end to end: tampering with the store is caught by `rxgate audit verify`,
//! naming the entry; deleting the tail is caught against the signed checkpoint the cloud holds;
//! a checkpoint altered after signing, or signed by another key, is refused by its signature.

use std::path::Path;
use std::time::Duration;

use redb::{ReadableTable, TableDefinition};
use rxgate_e2e::cloud::Cloud;
use rxgate_e2e::{Gateway, openssl};

const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("audit_meta");

/// A gateway with some history, stopped (the store is only opened by one process at a time).
fn gateway_with_history(extra: &str) -> Gateway {
    let mut gw = Gateway::start(extra);
    for i in 0..4 {
        gw.token(&format!("fridge-{i:02}"), "fridge");
    }
    gw.cli_ok(&["token", "revoke", "fridge-01"]);
    assert!(gw.stop());
    gw
}

fn verify(gw: &Gateway, extra: &[&str]) -> (bool, String) {
    let output = gw.cli(&[&["audit", "verify"], extra].concat());
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn changing_one_byte_of_a_stored_entry_makes_verify_fail_naming_that_entry() {
    let gw = gateway_with_history("");
    let (ok, text) = verify(&gw, &[]);
    assert!(ok, "{text}");

    let db = redb::Database::open(gw.data_dir().join("rxgate.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(AUDIT).unwrap();
        let mut value = table.get(3).unwrap().unwrap().value().to_vec();
        // Inside the JSON body, after the 32-byte hash: turn one letter of the actor into another.
        let pos = value.iter().rposition(|b| *b == b'i').unwrap();
        value[pos] = b'j';
        table.insert(3, value.as_slice()).unwrap();
    }
    txn.commit().unwrap();
    drop(db);

    let (ok, text) = verify(&gw, &[]);
    assert!(!ok, "{text}");
    assert!(text.contains("BROKEN at entry 3"), "{text}");
}

#[test]
fn deleting_the_tail_is_detected_against_the_last_signed_checkpoint_even_from_the_clouds_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path());
    let backend = cloud.subscribe("rxgate/v1/+/audit/checkpoints");
    let mut gw = Gateway::start(&format!(
        "{}\n[audit]\ncheckpoint_every = \"10s\"\n",
        cloud.pki.gateway_config(cloud.port)
    ));
    for i in 0..4 {
        gw.token(&format!("fridge-{i:02}"), "fridge");
    }
    // Wait for a checkpoint covering all of that to reach the cloud.
    let entries =
        serde_json::from_str::<serde_json::Value>(&gw.cli_ok(&["audit", "export"])).unwrap();
    let head = entries.as_array().unwrap().last().unwrap()["seq"]
        .as_u64()
        .unwrap();
    let last = rxgate_e2e::wait_until(
        Duration::from_secs(30),
        "a checkpoint of the whole chain",
        || {
            backend
                .json_on("rxgate/v1/store-0042/audit/checkpoints")
                .into_iter()
                .find(|c| c["checkpoint"]["seq"].as_u64() >= Some(head))
        },
    );
    assert!(gw.stop());
    let covered = last["checkpoint"]["seq"].as_u64().unwrap();
    assert!(covered >= 5, "{last}");
    let cloud_copy = gw.path("checkpoint.json");
    std::fs::write(&cloud_copy, last.to_string()).unwrap();
    let (ok, text) = verify(&gw, &["--checkpoint", cloud_copy.to_str().unwrap()]);
    assert!(ok, "{text}");

    // Remove the last two entries, make the head agree, and remove the local checkpoints too.
    let db = redb::Database::open(gw.data_dir().join("rxgate.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    let new_end = covered - 2;
    {
        let mut audit = txn.open_table(AUDIT).unwrap();
        let hash = audit.get(new_end).unwrap().unwrap().value()[..32].to_vec();
        for seq in new_end + 1..=covered {
            audit.remove(seq).unwrap();
        }
        let mut head = new_end.to_be_bytes().to_vec();
        head.extend_from_slice(&hash);
        txn.open_table(META)
            .unwrap()
            .insert("head", head.as_slice())
            .unwrap();
        let checkpoints: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_checkpoints");
        let mut local = txn.open_table(checkpoints).unwrap();
        local.retain(|_, _| false).unwrap();
    }
    txn.commit().unwrap();
    drop(db);

    let (ok, text) = verify(&gw, &[]);
    assert!(
        ok,
        "without any checkpoint the shortened chain looks whole: {text}"
    );
    let (ok, text) = verify(&gw, &["--checkpoint", cloud_copy.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("BROKEN at entry {}", new_end + 1)),
        "{text}"
    );
    assert!(text.contains("checkpoint"), "{text}");
}

/// `text` signed by a key and self-signed certificate of the forger's own, made with openssl
/// in `dir`: (signature as base64 DER, certificate PEM). The signature is checked with openssl,
/// so a refusal can only come from who signed, not from how.
fn sign_with_a_key_of_ones_own(dir: &Path, text: &str) -> (String, String) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("signed.txt"), text).unwrap();
    let run = |args: &str| openssl(dir, &args.split_whitespace().collect::<Vec<_>>());
    run(
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout forger.key \
         -out forger.pem -days 30 -subj /CN=rxgate",
    );
    run("dgst -sha256 -sign forger.key -out signature.der signed.txt");
    run("x509 -in forger.pem -pubkey -noout -out forger.pub");
    let verified = run("dgst -sha256 -verify forger.pub -signature signature.der signed.txt");
    assert_eq!(
        String::from_utf8_lossy(&verified.stdout).trim(),
        "Verified OK"
    );
    let signature = run("base64 -A -in signature.der");
    (
        String::from_utf8_lossy(&signature.stdout).trim().to_owned(),
        std::fs::read_to_string(dir.join("forger.pem")).unwrap(),
    )
}

#[test]
fn a_checkpoint_from_the_cloud_altered_after_signing_or_signed_by_another_key_fails_verify_on_its_signature()
 {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path());
    let backend = cloud.subscribe("rxgate/v1/+/audit/checkpoints");
    let mut gw = Gateway::init(&cloud.pki.gateway_config(cloud.port));
    // History before the daemon starts: the checkpoint it signs at start covers it.
    for i in 0..3 {
        gw.token(&format!("fridge-{i:02}"), "fridge");
    }
    gw.spawn();
    let message =
        rxgate_e2e::wait_until(Duration::from_secs(30), "a checkpoint in the cloud", || {
            backend
                .json_on("rxgate/v1/store-0042/audit/checkpoints")
                .into_iter()
                .next()
        });
    let signed = message["checkpoint"].clone();
    let seq = signed["seq"].as_u64().unwrap();
    assert!(seq >= 4, "the init entry and three tokens: {message}");
    assert_eq!(signed["site"], "store-0042", "{message}");
    let entries: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["audit", "export"])).unwrap();
    let entry = |n: u64| {
        entries
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["seq"] == n)
            .unwrap_or_else(|| panic!("no entry {n}: {entries}"))
            .clone()
    };
    // The hash of the entry before the one signed, as the signed entry names it.
    let earlier_hash = entry(seq)["prev"].as_str().unwrap().to_owned();
    assert_eq!(earlier_hash.len(), 64, "{earlier_hash}");

    let as_received = gw.path("checkpoint.json");
    std::fs::write(&as_received, message.to_string()).unwrap();
    let (ok, text) = verify(&gw, &["--checkpoint", as_received.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("audit trail intact"), "{text}");

    // Each alteration keeps the gateway's signature and certificate. All but the changed hash
    // agree with the chain (the entry before it with its real hash, another time, another site):
    // only the signature tells them from the real thing.
    let altered = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut forged = message.clone();
        change(&mut forged["checkpoint"]);
        forged
    };
    let mut flipped = signed["hash"].as_str().unwrap().to_owned();
    let last = if flipped.ends_with('0') { "1" } else { "0" };
    flipped.replace_range(63.., last);
    let forgeries = [
        (
            "an earlier entry",
            altered(&|c| {
                c["seq"] = (seq - 1).into();
                c["hash"] = earlier_hash.clone().into();
            }),
        ),
        (
            "another time",
            altered(&|c| c["ts"] = "2026-01-01T00:00:00Z".into()),
        ),
        (
            "another hash",
            altered(&|c| c["hash"] = flipped.clone().into()),
        ),
        (
            "another site",
            altered(&|c| c["site"] = "store-0043".into()),
        ),
    ];
    for (what, forged) in &forgeries {
        let file = gw.path("forged.json");
        std::fs::write(&file, forged.to_string()).unwrap();
        let (ok, text) = verify(&gw, &["--checkpoint", file.to_str().unwrap()]);
        assert!(!ok, "{what}: {text}");
        let forged_seq = forged["checkpoint"]["seq"].as_u64().unwrap();
        assert!(
            text.contains(&format!(
                "BROKEN at entry {forged_seq}: the checkpoint of entry {forged_seq} ({}) does not \
                 verify: the signature does not match",
                forged["checkpoint"]["ts"].as_str().unwrap()
            )),
            "{what}: {text}"
        );
    }

    // Signed properly, by a key of the forger's own with a certificate of the same name.
    let ts = signed["ts"].as_str().unwrap();
    let (signature, certificate) = sign_with_a_key_of_ones_own(
        &gw.path("forger"),
        &format!(
            "rxgate-audit-checkpoint\nstore-0042\n{}\n{earlier_hash}\n{ts}\n",
            seq - 1
        ),
    );
    let resigned = altered(&|c| {
        c["seq"] = (seq - 1).into();
        c["hash"] = earlier_hash.clone().into();
        c["signature"] = signature.clone().into();
        c["certificate"] = certificate.clone().into();
    });
    let file = gw.path("resigned.json");
    std::fs::write(&file, resigned.to_string()).unwrap();
    let (ok, text) = verify(&gw, &["--checkpoint", file.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!(
            "BROKEN at entry {}: the checkpoint of entry {} ({ts}) does not verify: the \
             checkpoint's certificate was not issued by this gateway's CA",
            seq - 1,
            seq - 1
        )),
        "{text}"
    );

    // The same without the daemon: the command opens the store itself.
    assert!(gw.stop());
    let (ok, text) = verify(&gw, &["--checkpoint", as_received.to_str().unwrap()]);
    assert!(ok, "{text}");
    let (ok, text) = verify(&gw, &["--checkpoint", file.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("was not issued by this gateway's CA"),
        "{text}"
    );
    let file = gw.path("forged.json");
    std::fs::write(&file, forgeries[0].1.to_string()).unwrap();
    let (ok, text) = verify(&gw, &["--checkpoint", file.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(text.contains("the signature does not match"), "{text}");

    // Without the CA certificate no signature can be checked: verify refuses, never passes.
    let ca = gw.data_dir().join("ca/ca.crt");
    std::fs::rename(&ca, gw.path("ca.crt.aside")).unwrap();
    for extra in [&["--checkpoint", file.to_str().unwrap()][..], &[]] {
        let (ok, text) = verify(&gw, extra);
        assert!(!ok, "{text}");
        assert!(
            text.contains("without the gateway's CA certificate"),
            "{text}"
        );
    }
}

#[test]
fn the_export_lists_entries_as_json_and_csv_within_dates() {
    let gw = gateway_with_history("");
    let json: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["audit", "export", "--from", "2020-01-01"])).unwrap();
    let kinds: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"token.created") && kinds.contains(&"token.revoked"),
        "{kinds:?}"
    );
    let csv = gw.cli_ok(&["audit", "export", "--format", "csv"]);
    assert!(
        csv.starts_with("seq,ts,clock_synced,kind,actor,device,source,detail,prev\n"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), json.as_array().unwrap().len() + 1);
    let none = gw.cli_ok(&["audit", "export", "--to", "2020-01-01"]);
    assert_eq!(none.trim(), "[]");
}
