//! The audit trail against a wrong clock, end to end: a gateway restarted with its clock 800 days
//! ahead (under libfaketime, as a spoofed NTP answer would set it) prunes nothing, and the trail
//! still verifies against the checkpoint the cloud holds; a trail cut at its start below a
//! checkpoint the cloud holds fails `rxgate audit verify`, naming the first missing entry.

use std::process::{Command, Stdio};
use std::time::Duration;

use redb::{ReadableTable, TableDefinition};
use rxgate_e2e::cloud::Cloud;
use rxgate_e2e::{Gateway, bin, wait_until};

const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("audit_meta");
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_checkpoints");

/// Debian's libfaketime (package `libfaketime`, pulled in by `faketime`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Lines the audit keeper logs each time it applies the retention, whatever it decides.
const PRUNE_LINES: [&str; 3] = [
    "Audit entries not pruned.",
    "Audit retention checked",
    "Audit entries past their retention removed.",
];

/// A gateway with a cloud, three tokens made before its start, and the checkpoint of that
/// history as the cloud received it, saved in `checkpoint.json`. Left running.
fn gateway_with_a_checkpoint_in_the_cloud(cloud: &Cloud) -> (Gateway, serde_json::Value) {
    let backend = cloud.subscribe("rxgate/v1/+/audit/checkpoints");
    let mut gw = Gateway::init(&cloud.pki.gateway_config(cloud.port));
    for i in 0..3 {
        gw.token(&format!("fridge-{i:02}"), "fridge");
    }
    gw.spawn();
    let message = wait_until(Duration::from_secs(30), "a checkpoint in the cloud", || {
        backend
            .json_on("rxgate/v1/store-0042/audit/checkpoints")
            .into_iter()
            .next()
    });
    std::fs::write(gw.path("checkpoint.json"), message.to_string()).unwrap();
    (gw, message)
}

fn seqs(gw: &Gateway) -> Vec<u64> {
    let entries: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["audit", "export"])).unwrap();
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

fn verify_against_the_clouds_copy(gw: &Gateway) -> (bool, String) {
    let file = gw.path("checkpoint.json");
    let output = gw.cli(&["audit", "verify", "--checkpoint", file.to_str().unwrap()]);
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Starts `rxgate run` under libfaketime at `offset` (`+800d`) (the monotonic clock left alone) and waits
/// until the audit keeper has applied the retention once.
fn run_under_faketime(gw: &mut Gateway, offset: &str) {
    let log = std::fs::File::create(gw.log_path()).unwrap();
    // libfaketime preloaded into rxgate itself (not through the `faketime` wrapper, which
    // would take the SIGTERM that stops the gateway).
    let child = Command::new(bin("rxgate"))
        .arg("--config")
        .arg(&gw.config)
        .arg("run")
        .env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("run rxgate under libfaketime");
    gw.child = Some(child);
    wait_until(
        Duration::from_secs(30),
        "the audit keeper's first tick under faketime",
        || {
            if !gw.is_running() {
                panic!("rxgate run under faketime exited:\n{}", gw.logs());
            }
            let logs = gw.logs();
            PRUNE_LINES.iter().any(|l| logs.contains(l)).then_some(())
        },
    );
}

#[test]
fn a_restart_with_the_clock_800_days_ahead_prunes_nothing_and_the_trail_verifies_against_the_clouds_checkpoint()
 {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path());
    let (mut gw, message) = gateway_with_a_checkpoint_in_the_cloud(&cloud);
    assert!(
        message["checkpoint"]["seq"].as_u64() >= Some(4),
        "{message}"
    );
    assert!(gw.stop());
    let before = seqs(&gw);
    assert_eq!(before.first(), Some(&1));

    // The fake clock is really 800 days ahead of the gateway's.
    let date = Command::new("faketime")
        .args(["-f", "+800d", "date", "+%Y"])
        .output()
        .unwrap();
    let year: i32 = String::from_utf8_lossy(&date.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(year >= time::OffsetDateTime::now_utc().year() + 2, "{year}");

    run_under_faketime(&mut gw, "+800d");
    assert!(gw.stop(), "{}", gw.logs());
    let logs = gw.logs();
    assert!(
        !logs.contains("Audit entries past their retention removed."),
        "{logs}"
    );

    // Back at the real time.
    assert_eq!(seqs(&gw)[..before.len()], before[..], "nothing was pruned");
    let (ok, text) = verify_against_the_clouds_copy(&gw);
    assert!(ok, "{text}");
    assert!(text.contains("audit trail intact"), "{text}");
}

#[test]
fn a_trail_cut_below_the_clouds_checkpoint_fails_verify_naming_the_first_missing_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(tmp.path());
    let (mut gw, message) = gateway_with_a_checkpoint_in_the_cloud(&cloud);
    let covered = message["checkpoint"]["seq"].as_u64().unwrap();
    // More history after the checkpoint, so a cut can go past it and leave a verifiable rest.
    gw.token("fridge-10", "fridge");
    gw.token("fridge-11", "fridge");
    assert!(gw.stop());
    let (ok, text) = verify_against_the_clouds_copy(&gw);
    assert!(ok, "{text}");

    // Remove every entry up to one past the checkpoint and record the base as pruning does,
    // local checkpoints of removed entries included; but the entries are minutes old.
    let cut = covered + 1;
    let db = redb::Database::open(gw.data_dir().join("rxgate.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut audit = txn.open_table(AUDIT).unwrap();
        let hash = audit.get(cut).unwrap().unwrap().value()[..32].to_vec();
        audit.retain(|seq, _| seq > cut).unwrap();
        let mut base = cut.to_be_bytes().to_vec();
        base.extend_from_slice(&hash);
        txn.open_table(META)
            .unwrap()
            .insert("base", base.as_slice())
            .unwrap();
        txn.open_table(CHECKPOINTS)
            .unwrap()
            .retain(|seq, _| seq > cut)
            .unwrap();
    }
    txn.commit().unwrap();
    drop(db);

    let output = gw.cli(&["audit", "verify"]);
    assert!(
        output.status.success(),
        "without the cloud's copy the rest of the trail verifies: {}",
        rxgate_e2e::text(&output)
    );
    let (ok, text) = verify_against_the_clouds_copy(&gw);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!(
            "audit trail BROKEN at entry 1: the trail was cut: entries 1..={cut} were removed \
             from its start, but the checkpoint signed at {} covers entry {covered}",
            message["checkpoint"]["ts"].as_str().unwrap()
        )),
        "{text}"
    );
}
