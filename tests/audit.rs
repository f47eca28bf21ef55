//! The audit trail end to end: tampering with the store is caught by `rxgate audit verify`,
//! naming the entry; deleting the tail is caught against the signed checkpoint the cloud holds.

use std::time::Duration;

use redb::{ReadableTable, TableDefinition};
use rxgate_e2e::Gateway;
use rxgate_e2e::cloud::Cloud;

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
