//! Backups end to end: a running gateway with an enrolled device, events waiting in the outbox
//! while the cloud (mosquitto) is down, an open cold-chain alert from a simulated fridge, and an
//! audit trail whose checkpoint the cloud holds, is backed up while it runs; its data_dir is
//! destroyed and restored from the backup; the restored gateway keeps all of it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use age::secrecy::ExposeSecret;
use rxgate_e2e::cloud::Cloud;
use rxgate_e2e::{Gateway, curl, failing_fridge, fridge_device_config, run, text, wait_until};

const TELEMETRY: &str = "rxgate/v1/store-0042/devices/fridge-02/telemetry";

/// A fresh age identity in `dir/identity.txt`, as `age-keygen` writes it; returns the file and
/// the public key.
fn identity(dir: &Path) -> (PathBuf, String) {
    let identity = age::x25519::Identity::generate();
    let public = identity.to_public().to_string();
    let file = dir.join("identity.txt");
    std::fs::write(
        &file,
        format!(
            "# public key: {public}\n{}\n",
            identity.to_string().expose_secret()
        ),
    )
    .unwrap();
    (file, public)
}

/// `rxgate backup verify FILE --identity IDENTITY`.
fn verify_with(gw: &Gateway, file: &Path, identity: &Path) -> std::process::Output {
    gw.cli(&[
        "backup",
        "verify",
        file.to_str().unwrap(),
        "--identity",
        identity.to_str().unwrap(),
    ])
}

/// [`verify_with`] that must pass; its stdout.
fn verified(gw: &Gateway, file: &Path, identity: &Path) -> String {
    let output = verify_with(gw, file, identity);
    assert!(output.status.success(), "{}", text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn reading(n: u64) -> String {
    format!(r#"{{"points":{{"temperature_c":4.5,"n":{n}}}}}"#)
}

fn open_alerts(gw: &Gateway) -> Vec<serde_json::Value> {
    serde_json::from_str(&gw.cli_ok(&["alerts", "list", "--json"])).unwrap()
}

fn audit_kinds(gw: &Gateway) -> Vec<serde_json::Value> {
    serde_json::from_str(&gw.cli_ok(&["audit", "export"])).unwrap()
}

fn health(gw: &Gateway) -> serde_json::Value {
    let body = curl(gw.dir.path(), &[&format!("http://{}/health", gw.metrics)]).body_text();
    serde_json::from_str(&body).unwrap()
}

#[test]
fn a_gateway_backed_up_while_running_and_restored_into_a_fresh_data_dir_keeps_devices_unsent_events_alerts_and_its_audit_trail()
 {
    let tmp = tempfile::tempdir().unwrap();
    let (identity_file, public) = identity(tmp.path());
    let (fridge, fridge_port) = failing_fridge();
    let mut cloud = Cloud::start(tmp.path());
    let backend = cloud.subscribe("rxgate/v1/store-0042/#");
    let mut gw = Gateway::start(&format!(
        "{}\n[audit]\ncheckpoint_every = \"10s\"\n[backup]\nrecipients = [\"{public}\"]\n{}",
        cloud.pki.gateway_config(cloud.port),
        fridge_device_config(fridge_port)
    ));
    let creds = gw.enroll_with_sim("fridge-02", "fridge");
    let alert = wait_until(Duration::from_secs(60), "an open alert", || {
        open_alerts(&gw).into_iter().next()
    });
    // The fridge stays as it is: no reading will resolve the alert.
    drop(fridge);

    // A checkpoint of the trail, enrollment and alert included, reaches the cloud.
    let head = audit_kinds(&gw).last().unwrap()["seq"].as_u64().unwrap();
    let checkpoint = wait_until(Duration::from_secs(40), "a checkpoint in the cloud", || {
        backend
            .json_on("rxgate/v1/store-0042/audit/checkpoints")
            .into_iter()
            .find(|c| c["checkpoint"]["seq"].as_u64() >= Some(head))
    });
    let checkpoint_file = tmp.path().join("cloud-checkpoint.json");
    std::fs::write(&checkpoint_file, checkpoint.to_string()).unwrap();

    // The cloud goes down; the device's readings are acknowledged and wait in the outbox.
    cloud.stop();
    let unsent: Vec<u64> = (100..105).collect();
    for &n in &unsent {
        let out = gw.mosquitto_pub(
            &creds,
            "fridge-02",
            "devices/fridge-02/telemetry",
            &reading(n),
        );
        assert!(out.status.success(), "{}", text(&out));
    }

    // Backed up while it runs, through the daemon.
    let usb = tmp.path().join("usb");
    std::fs::create_dir(&usb).unwrap();
    let written = gw.cli_ok(&["backup", "create", "--to", usb.to_str().unwrap()]);
    let file = PathBuf::from(written.trim());
    assert!(file.starts_with(&usb), "{written}");
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("rxgate-store-0042-") && name.ends_with("Z.age"),
        "{name}"
    );
    let backup = health(&gw)["backup"].clone();
    assert!(
        backup["newest_age_seconds"]
            .as_f64()
            .is_some_and(|a| a < 60.0),
        "{backup}"
    );
    let created = audit_kinds(&gw)
        .into_iter()
        .rfind(|e| e["kind"] == "backup.created")
        .expect("backup.created in the trail");
    assert_eq!(created["detail"]["file"], name.as_str());
    let verified = verified(&gw, &file, &identity_file);
    assert!(
        verified.contains(": ok: a backup of store-0042"),
        "{verified}"
    );
    let sealed = gw.cli_ok(&["backup", "verify", file.to_str().unwrap()]);
    assert!(sealed.contains("unchanged since"), "{sealed}");

    // The gateway is lost.
    assert!(gw.stop(), "{}", gw.logs());
    std::fs::remove_dir_all(gw.data_dir()).unwrap();

    let restored_config = tmp.path().join("restored-config");
    let restored = gw.cli_ok(&[
        "backup",
        "restore",
        file.to_str().unwrap(),
        "--identity",
        identity_file.to_str().unwrap(),
        "--config-to",
        restored_config.to_str().unwrap(),
    ]);
    assert!(restored.contains("restored "), "{restored}");
    let config_copy = restored_config.join(
        gw.config
            .strip_prefix("/")
            .expect("an absolute config path"),
    );
    assert_eq!(
        std::fs::read_to_string(&config_copy).unwrap(),
        std::fs::read_to_string(&gw.config).unwrap()
    );

    cloud.restart();
    gw.spawn();
    let verify = gw.cli(&[
        "audit",
        "verify",
        "--checkpoint",
        checkpoint_file.to_str().unwrap(),
    ]);
    assert!(verify.status.success(), "{}", text(&verify));

    // Every reading the outbox held at the backup reaches the cloud.
    wait_until(
        Duration::from_secs(30),
        "the unsent readings in the cloud",
        || {
            let got: Vec<u64> = backend
                .json_on(TELEMETRY)
                .iter()
                .filter_map(|m| m["points"]["n"]["value"].as_f64())
                .map(|n| n as u64)
                .collect();
            unsent.iter().all(|n| got.contains(n)).then_some(())
        },
    );

    // The device reconnects with the certificate it already had.
    let out = gw.mosquitto_pub(
        &creds,
        "fridge-02",
        "devices/fridge-02/telemetry",
        &reading(999),
    );
    assert!(out.status.success(), "{}", text(&out));
    wait_until(
        Duration::from_secs(20),
        "the new reading in the cloud",
        || {
            backend
                .json_on(TELEMETRY)
                .iter()
                .any(|m| m["points"]["n"]["value"].as_f64() == Some(999.0))
                .then_some(())
        },
    );
    let devices: Vec<serde_json::Value> =
        serde_json::from_str(&gw.cli_ok(&["device", "list", "--json"])).unwrap();
    assert!(
        devices
            .iter()
            .any(|d| d["id"] == "fridge-02" && d["status"] == "active"),
        "{devices:?}"
    );

    // The alert is still open, and the restore is in the trail.
    assert!(
        open_alerts(&gw).iter().any(|a| a["id"] == alert["id"]),
        "alert {} is still open",
        alert["id"]
    );
    let trail = audit_kinds(&gw);
    assert!(
        trail.iter().any(|e| e["kind"] == "backup.restored"
            && e["detail"]["file"] == name.as_str()
            && e["detail"]["audit_head"].as_u64() == created["detail"]["audit_head"].as_u64()),
        "backup.restored in the trail"
    );
}

#[test]
fn the_running_gateway_backs_up_on_schedule_skipping_a_missing_destination_and_reports_it_in_health_and_metrics()
 {
    let tmp = tempfile::tempdir().unwrap();
    let (identity_file, public) = identity(tmp.path());
    let usb = tmp.path().join("usb");
    std::fs::create_dir(&usb).unwrap();
    let share = tmp.path().join("share-not-mounted");
    let gw = Gateway::start(&format!(
        "[backup]\nrecipients = [\"{public}\"]\ninterval = \"1h\"\n\
         destinations = [\"{}\", \"{}\"]\nkeep = 3\n",
        share.display(),
        usb.display()
    ));
    // No backup yet: the first one is made at start.
    let file = wait_until(Duration::from_secs(30), "a scheduled backup", || {
        std::fs::read_dir(&usb)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "age"))
    });
    let verified = verified(&gw, &file, &identity_file);
    assert!(verified.contains(": ok: "), "{verified}");
    let created = wait_until(Duration::from_secs(10), "backup.created", || {
        audit_kinds(&gw)
            .into_iter()
            .find(|e| e["kind"] == "backup.created")
    });
    assert_eq!(created["actor"], "gateway");
    let skipped = created["detail"]["skipped"].to_string();
    assert!(skipped.contains("share-not-mounted: missing"), "{skipped}");
    let backup = health(&gw)["backup"].clone();
    assert!(backup["newest_age_seconds"].as_f64().is_some(), "{backup}");
    let metrics = curl(gw.dir.path(), &[&format!("http://{}/metrics", gw.metrics)]).body_text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("rxgate_backup_age_seconds ")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("rxgate_backups_total{result=\"ok\"} 1")),
        "{metrics}"
    );
}

#[test]
fn a_backup_is_an_age_file_the_age_cli_decrypts_with_an_age_keygen_identity_and_the_cli_refuses_what_it_must()
 {
    let tmp = tempfile::tempdir().unwrap();
    let identity_file = tmp.path().join("age-keygen.txt");
    let keygen = run(std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&identity_file));
    assert!(
        keygen.status.success(),
        "age-keygen (Debian package age): {}",
        text(&keygen)
    );
    let public = std::fs::read_to_string(&identity_file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_owned))
        .expect("age-keygen names the public key");
    let gw = Gateway::init(&format!("[backup]\nrecipients = [\"{public}\"]\n"));
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    // No daemon runs: the command opens the store itself.
    let written = gw.cli_ok(&["backup", "create", "--to", out_dir.to_str().unwrap()]);
    let file = PathBuf::from(written.trim());
    let verified = verified(&gw, &file, &identity_file);
    assert!(verified.contains(": ok: "), "{verified}");

    let plain = tmp.path().join("plain.tar");
    let decrypted = run(std::process::Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&identity_file)
        .arg("-o")
        .arg(&plain)
        .arg(&file));
    assert!(decrypted.status.success(), "{}", text(&decrypted));
    let listed = run(std::process::Command::new("tar").arg("-tf").arg(&plain));
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let names: Vec<&str> = listed.lines().collect();
    assert_eq!(names[0], "manifest.json", "{listed}");
    for name in [
        "store/rxgate.redb",
        "data/ca/ca.crt",
        "data/tls/server.crt",
        "keys/ca.key",
        "keys/server.key",
        "keys/pseudonym.key",
    ] {
        assert!(names.contains(&name), "{name} in {listed}");
    }

    let (other, _) = identity(tmp.path());
    let refused = verify_with(&gw, &file, &other);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("was not encrypted to this identity"),
        "{}",
        text(&refused)
    );

    // The gateway's own data_dir is not empty.
    let refused = gw.cli(&[
        "backup",
        "restore",
        file.to_str().unwrap(),
        "--identity",
        identity_file.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("is not empty (it holds "),
        "{}",
        text(&refused)
    );

    // A copy changed by one byte is not the one the gateway audited.
    let changed = tmp.path().join("changed.age");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&changed, bytes).unwrap();
    let sealed = gw.cli(&["backup", "verify", changed.to_str().unwrap()]);
    assert!(!sealed.status.success(), "{}", text(&sealed));
    assert!(
        text(&sealed).contains("no backup.created entry of this gateway has that SHA-256"),
        "{}",
        text(&sealed)
    );
}

/// `rxgate keys generate-kek FILE`.
fn generate_kek(path: &Path) {
    let out = run(std::process::Command::new(rxgate_e2e::bin("rxgate"))
        .args(["keys", "generate-kek"])
        .arg(path));
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_backup_of_sealed_keys_restores_on_a_pi_with_another_key_encryption_key_and_is_sealed_there() {
    let tmp = tempfile::tempdir().unwrap();
    let (identity_file, public) = identity(tmp.path());
    let (old_kek, new_kek) = (tmp.path().join("old.kek"), tmp.path().join("new.kek"));
    generate_kek(&old_kek);
    generate_kek(&new_kek);
    let gw = Gateway::init(&format!(
        "[backup]\nrecipients = [\"{public}\"]\n[keys]\nkek_file = \"{}\"\n",
        old_kek.display()
    ));
    // A person with a TOTP secret on offer: sealed under the old key in the store.
    gw.cli_ok(&["user", "add", "ada", "--role", "admin"]);
    let status = gw.cli_ok(&["keys", "status"]);
    assert!(status.contains("CA key          sealed"), "{status}");
    assert!(
        status.contains("TOTP secrets    0 in plain text"),
        "{status}"
    );
    let pseudonym = gw.cli_ok(&["pseudonym", "MRN-1"]);
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let written = gw.cli_ok(&["backup", "create", "--to", out_dir.to_str().unwrap()]);
    let file = PathBuf::from(written.trim());

    // The new Pi: its own key-encryption key, an empty data_dir.
    let new_pi = tmp.path().join("new-pi");
    std::fs::create_dir(&new_pi).unwrap();
    let config = new_pi.join("gateway.toml");
    std::fs::write(
        &config,
        rxgate_e2e::config_text(
            "store-0042",
            &format!("[keys]\nkek_file = \"{}\"\n", new_kek.display()),
        ),
    )
    .unwrap();
    let rxgate = |args: &[&str]| {
        run(std::process::Command::new(rxgate_e2e::bin("rxgate"))
            .arg("--config")
            .arg(&config)
            .args(args))
    };
    let restored = rxgate(&[
        "backup",
        "restore",
        file.to_str().unwrap(),
        "--identity",
        identity_file.to_str().unwrap(),
    ]);
    assert!(restored.status.success(), "{}", text(&restored));
    let data = new_pi.join("data");
    assert!(data.join("ca/ca.key.sealed").exists() && !data.join("ca/ca.key").exists());
    let status = text(&rxgate(&["keys", "status"]));
    assert!(status.contains("CA key          sealed"), "{status}");
    // The TOTP secret came back opened (the old key stayed behind) and is sealed again here.
    assert!(
        status.contains("TOTP secrets    1 in plain text"),
        "{status}"
    );
    let sealed = rxgate(&["keys", "seal"]);
    assert!(
        text(&sealed).contains("Sealed 1 TOTP secret(s)."),
        "{}",
        text(&sealed)
    );
    let same = rxgate(&["pseudonym", "MRN-1"]);
    assert_eq!(
        String::from_utf8_lossy(&same.stdout),
        pseudonym,
        "the same pseudonym key"
    );
    // The old key does not open the new Pi's keys.
    std::fs::write(
        &config,
        rxgate_e2e::config_text(
            "store-0042",
            &format!("[keys]\nkek_file = \"{}\"\n", old_kek.display()),
        ),
    )
    .unwrap();
    let refused = rxgate(&["pseudonym", "MRN-1"]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("another one"), "{}", text(&refused));
}
