use std::path::{Path, PathBuf};
use std::time::Duration;

use time::macros::datetime;

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::config::Config;

struct Site {
    dir: tempfile::TempDir,
    config: Config,
    store: Store,
    clock: Arc<ManualClock>,
    identity: age::x25519::Identity,
}

impl Site {
    /// An initialised gateway with a policy file outside data_dir, destinations `usb` and
    /// `share` (both present), `keep = 2`, and an identity whose public key is the recipient.
    fn new(extra: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let identity = age::x25519::Identity::generate();
        for d in ["usb", "share", "conf"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/policy.toml"),
            dir.path().join("policy.toml"),
        )
        .unwrap();
        let text = format!(
            "[gateway]\nsite = \"store-1\"\ndata_dir = \"data\"\npolicy_file = \"conf/../policy.toml\"\n\
             [backup]\nrecipients = [\"{}\"]\ndestinations = [\"usb\", \"share\"]\nkeep = 2\n{extra}",
            identity.to_public()
        );
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        let clock = ManualClock::new(datetime!(2026-12-07 09:00 UTC), true);
        crate::pki::init(
            &config.pki(),
            &crate::pki::InitOptions::default(),
            clock.as_ref(),
        )
        .unwrap();
        let store = Store::open(&config.paths().store()).unwrap();
        store
            .write(|txn| {
                for i in 0..20 {
                    audit::append(
                        txn,
                        clock.now(),
                        true,
                        Record::new(Kind::AccessEvent, format!("cab-{i}")),
                    )?;
                }
                Ok(())
            })
            .unwrap();
        Site {
            dir,
            config,
            store,
            clock,
            identity,
        }
    }

    fn backups(&self) -> Backups {
        Backups::new(
            self.config.backup_plan(),
            self.store.clone(),
            self.clock.clone(),
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn message(result: Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(e) => e.to_string(),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

#[test]
fn a_backup_goes_to_every_destination_and_restores_the_store_keys_certificates_and_config() {
    let site = Site::new("");
    let created = site.backups().create(None, "alice").unwrap();
    assert_eq!(created.file_name, "rxgate-store-1-20261207T090000Z.age");
    assert_eq!(
        created.written,
        vec![
            site.path("usb").join(&created.file_name),
            site.path("share").join(&created.file_name)
        ]
    );
    use std::os::unix::fs::PermissionsExt;
    for copy in &created.written {
        let meta = std::fs::metadata(copy).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), created.size);
    }
    let head = created.audit_head.unwrap();
    // The success is audited after the snapshot, and kept for /health.
    let last = audit::entries(&site.store, head + 1, 1).unwrap();
    assert_eq!(last[0].kind, Kind::BackupCreated);
    assert_eq!(last[0].actor, "alice");
    assert_eq!(last[0].detail["sha256"], created.sha256);
    let status = site.backups().status().unwrap();
    assert_eq!(status.last_success.unwrap().sha256, created.sha256);

    let verified = verify(&created.written[1], std::slice::from_ref(&site.identity)).unwrap();
    assert_eq!(verified.audit_head, Some(head));
    assert_eq!(verified.site, "store-1");

    let target = site.path("new-pi/data");
    let restored = restore(
        &created.written[0],
        std::slice::from_ref(&site.identity),
        &RestoreOptions {
            data_dir: target.clone(),
            config_to: Some(site.path("new-pi/config")),
            keys: Default::default(),
        },
        site.clock.as_ref(),
        "bob",
    )
    .unwrap();
    assert_eq!(restored.audit_seq, head + 1);
    let old = site.config.paths();
    let new = DataPaths::new(&target);
    for (a, b) in [
        (old.ca_cert(), new.ca_cert()),
        (old.ca_key(), new.ca_key()),
        (old.server_cert(), new.server_cert()),
        (old.server_key(), new.server_key()),
        (old.pseudonym_key(), new.pseudonym_key()),
    ] {
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{b:?}"
        );
    }
    for key in [
        new.ca_key(),
        new.server_key(),
        new.pseudonym_key(),
        new.store(),
    ] {
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key:?}");
    }
    let restored_store = Store::open(&new.store()).unwrap();
    let entry = audit::entries(&restored_store, head + 1, 5).unwrap();
    assert_eq!(
        entry.len(),
        1,
        "nothing after the snapshot but the restore: {entry:?}"
    );
    assert_eq!(entry[0].kind, Kind::BackupRestored);
    assert_eq!(entry[0].actor, "bob");
    assert_eq!(
        audit::verify(&restored_store, None, &[]).unwrap(),
        Ok(head + 1)
    );
    let source = site.config.source.clone().unwrap();
    let config_copy = site
        .path("new-pi/config")
        .join(source.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(&config_copy).unwrap(),
        std::fs::read(&source).unwrap()
    );
    assert!(
        restored
            .config_files
            .iter()
            .any(|(key, _)| key == "gateway.policy_file"),
        "{:?}",
        restored.config_files
    );
    // No staging folder is left behind, here or in the old data_dir.
    let old_root: Vec<String> = std::fs::read_dir(&old.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(old_root.is_empty(), "{old_root:?}");
    let mut left: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["ca", "pseudonym.key", "rxgate.redb", "tls"]);
}

#[test]
fn what_an_interrupted_backup_left_in_data_dir_is_removed_by_the_next_one() {
    let site = Site::new("");
    let stale = site.config.paths().root.join(".backup-interrupted");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("rxgate.redb"), b"a plain snapshot").unwrap();
    site.backups().create(None, "alice").unwrap();
    assert!(!stale.exists());
}

#[test]
fn a_backup_is_refused_clearly_with_the_wrong_identity() {
    let site = Site::new("");
    let created = site.backups().create(None, "alice").unwrap();
    let stranger = age::x25519::Identity::generate();
    let refused = message(verify(&created.written[0], &[stranger]));
    assert!(
        refused.contains("was not encrypted to this identity"),
        "{refused}"
    );
}

#[test]
fn a_truncated_or_corrupted_backup_is_refused_by_verify_and_restore_writes_nothing() {
    let site = Site::new("");
    let created = site.backups().create(None, "alice").unwrap();
    let bytes = std::fs::read(&created.written[0]).unwrap();
    let ids = std::slice::from_ref(&site.identity);

    let truncated = site.path("truncated.age");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let refused = message(verify(&truncated, ids));
    assert!(refused.contains("is damaged or truncated"), "{refused}");

    let corrupted = site.path("corrupted.age");
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    std::fs::write(&corrupted, &flipped).unwrap();
    let refused = message(verify(&corrupted, ids));
    assert!(refused.contains("is damaged or truncated"), "{refused}");

    let not_age = site.path("not-age.age");
    std::fs::write(&not_age, b"hello").unwrap();
    let refused = message(verify(&not_age, ids));
    assert!(refused.contains("is not an rxgate backup"), "{refused}");

    let target = site.path("new-pi");
    let refused = message(restore(
        &corrupted,
        ids,
        &RestoreOptions {
            data_dir: target.clone(),
            config_to: None,
            keys: Default::default(),
        },
        site.clock.as_ref(),
        "bob",
    ));
    assert!(refused.contains("is damaged or truncated"), "{refused}");
    assert!(
        !target.join("rxgate.redb").exists() && !target.join("ca").exists(),
        "nothing is put in place from a damaged backup"
    );
}

#[test]
fn a_restore_into_a_data_dir_that_holds_anything_is_refused_naming_what_it_holds() {
    let site = Site::new("");
    let created = site.backups().create(None, "alice").unwrap();
    let refused = message(restore(
        &created.written[0],
        std::slice::from_ref(&site.identity),
        &RestoreOptions {
            data_dir: site.config.gateway.data_dir.clone(),
            config_to: None,
            keys: Default::default(),
        },
        site.clock.as_ref(),
        "bob",
    ));
    assert!(refused.contains("is not empty (it holds "), "{refused}");
    assert!(refused.contains("rxgate.redb"), "{refused}");
    assert!(
        refused.contains("only restored into an empty data directory"),
        "{refused}"
    );
}

#[test]
fn two_backups_at_once_take_turns_and_both_are_whole_under_their_own_names() {
    let site = Site::new("");
    // As the daemon has it: the admin socket's requests and the schedule share one handle.
    let backups = site.backups();
    let (a, b) = std::thread::scope(|s| {
        let one = s.spawn(|| backups.clone().create(None, "alice"));
        let two = s.spawn(|| backups.clone().create(None, "bob"));
        (one.join().unwrap().unwrap(), two.join().unwrap().unwrap())
    });
    let mut names = [a.file_name.clone(), b.file_name.clone()];
    names.sort();
    assert_eq!(
        names,
        [
            "rxgate-store-1-20261207T090000Z-1.age",
            "rxgate-store-1-20261207T090000Z.age"
        ]
    );
    for created in [&a, &b] {
        for copy in &created.written {
            verify(copy, std::slice::from_ref(&site.identity)).unwrap();
        }
    }
    // The second snapshot holds the first one's backup.created entry.
    assert_eq!(
        a.audit_head.max(b.audit_head),
        a.audit_head.min(b.audit_head).map(|h| h + 1),
        "one after the other"
    );
}

#[test]
fn a_missing_destination_is_skipped_with_a_warning_and_older_backups_beyond_keep_are_removed() {
    let site = Site::new("");
    std::fs::remove_dir(site.path("share")).unwrap();
    let mut made = Vec::new();
    for _ in 0..3 {
        made.push(site.backups().create(None, "gateway").unwrap());
        site.clock.advance(Duration::from_secs(3600));
    }
    let last = made.last().unwrap();
    assert_eq!(last.written, vec![site.path("usb").join(&last.file_name)]);
    assert!(
        last.warnings[0].contains("share: missing (not mounted?); skipped"),
        "{:?}",
        last.warnings
    );
    assert_eq!(last.pruned, vec![made[0].written[0].clone()]);
    let left: Vec<_> = backups_in(&site.path("usb"), "store-1")
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        left,
        vec![made[1].written[0].clone(), made[2].written[0].clone()]
    );

    std::fs::remove_dir_all(site.path("usb")).unwrap();
    let refused = message(site.backups().create(None, "gateway"));
    assert!(
        refused.contains("no backup destination is available"),
        "{refused}"
    );
    let status = site.backups().status().unwrap();
    let failed = status.last_failure.clone().unwrap();
    assert!(failed.error.contains("no backup destination"), "{failed:?}");
    let health = status.health(site.clock.now());
    assert!(
        health
            .last_error
            .is_some_and(|e| e.contains("no backup destination"))
    );
    assert_eq!(
        health.newest_age_seconds,
        Some(3600.0),
        "the last success, an hour ago"
    );
    std::fs::create_dir(site.path("usb")).unwrap();
    site.clock.advance(Duration::from_secs(60));
    site.backups().create(None, "gateway").unwrap();
    let health = site.backups().status().unwrap().health(site.clock.now());
    assert_eq!(health.last_error, None, "a success since settles it");
    assert!(health.last_failure_unix.is_some());
}

#[test]
fn a_destination_that_cannot_be_written_does_not_stop_the_backup_reaching_the_next() {
    let site = Site::new("");
    // `usb` is there but takes no file (as a full or read-only drive): /proc refuses even root.
    std::fs::remove_dir(site.path("usb")).unwrap();
    std::os::unix::fs::symlink("/proc", site.path("usb")).unwrap();
    let made = site.backups().create(None, "gateway").unwrap();
    assert_eq!(made.written, vec![site.path("share").join(&made.file_name)]);
    assert!(
        made.warnings
            .iter()
            .any(|w| w.contains("usb") && w.contains("cannot create a file in")),
        "{:?}",
        made.warnings
    );
    let verified = verify(&made.written[0], std::slice::from_ref(&site.identity)).unwrap();
    assert_eq!(verified.site, "store-1");

    // With no destination that takes it, the backup fails, naming the destination's error.
    std::fs::remove_dir_all(site.path("share")).unwrap();
    std::os::unix::fs::symlink("/proc", site.path("share")).unwrap();
    let refused = message(site.backups().create(None, "gateway"));
    assert!(refused.contains("cannot create a file in"), "{refused}");
}

#[test]
fn the_wait_for_the_next_backup_is_what_is_left_of_the_interval_and_a_clock_stepped_back_waits_one_interval()
 {
    let day = Duration::from_secs(86_400);
    let now = datetime!(2026-12-07 12:00 UTC);
    assert_eq!(next_wait(day, None, now), Duration::ZERO);
    assert_eq!(
        next_wait(day, Some(datetime!(2026-12-07 06:00 UTC)), now),
        Duration::from_secs(18 * 3600)
    );
    assert_eq!(
        next_wait(day, Some(datetime!(2026-12-01 06:00 UTC)), now),
        Duration::ZERO
    );
    // The last backup "in the future": the clock was stepped back.
    assert_eq!(
        next_wait(day, Some(datetime!(2030-01-01 00:00 UTC)), now),
        day
    );
}

#[test]
fn backup_names_carry_the_site_and_utc_time_and_other_files_are_not_taken_for_backups() {
    let at = datetime!(2026-12-07 09:05:03 +01:00);
    assert_eq!(file_stem("store-1", at), "rxgate-store-1-20261207T080503Z");
    assert_eq!(
        backup_time("store-1", "rxgate-store-1-20261207T080503Z-2.age"),
        Some(datetime!(2026-12-07 08:05:03 UTC))
    );
    for other in [
        "rxgate-store-2-20261207T080503Z.age",
        "rxgate-store-1-20261207T080503Z.age.tmp",
        ".rxgate-backup-abc.tmp",
        "rxgate-store-1-20261207T080503Z-x.age",
    ] {
        assert_eq!(backup_time("store-1", other), None, "{other}");
    }
}

#[test]
fn backup_config_errors_name_their_keys_and_unknown_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let errors = Config::parse(
        "[gateway]\nsite = \"s\"\n[backup]\nrecipients = [\"age1nope\"]\ninterval = \"10s\"\n",
        dir.path(),
    )
    .unwrap()
    .check()
    .unwrap_err();
    let keys: Vec<_> = errors.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["backup.recipients[0]", "backup.interval", "backup.interval"],
        "{errors}"
    );
    let unknown =
        Config::parse("[gateway]\nsite = \"s\"\n[backup]\nkeeps = 3\n", dir.path()).unwrap_err();
    assert!(unknown.to_string().contains("keeps"), "{unknown}");
}
