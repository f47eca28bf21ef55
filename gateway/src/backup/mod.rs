//! Encrypted backups that restore on a new gateway: `rxgate backup create|verify|restore`, and
//! the daemon's scheduled backups (`[backup]`, [`BackupTask`]).
//!
//! # What a backup holds
//! One file, `rxgate-<site>-<YYYYMMDDTHHMMSSZ>.age` (UTC; `-1`, `-2`... when two are made in one
//! second), mode 0600: an age stream (age-encryption.org/v1) encrypted to every
//! `[backup].recipients` X25519 public key. The gateway holds no identity, so it cannot read its
//! own backups; there is no plaintext header or sidecar. Inside, a tar archive:
//!
//! ```text
//! manifest.json            format "rxgate-backup/1", site, time, rxgate version, the audit
//!                          head and entries per table of the store snapshot, and every file
//!                          below with its role, size and SHA-256
//! store/rxgate.redb        the store (registry, tokens, audit trail, outbox, alerts, accounts)
//! data/ca/ca.crt           the CA certificate (and data/ca/chain.pem for an imported CA)
//! data/tls/server.crt      the server certificate
//! keys/ca.key              the CA, server and pseudonym keys, PLAIN (inside the encryption),
//! keys/server.key          so a gateway whose key-encryption key differs can restore them;
//! keys/pseudonym.key       plain (opened with the key-encryption key); read and written only by
//!                          [`read_keys`] and [`write_keys`], TOTP secrets in the snapshot too
//! config/root/<path>       the config file, and each file it names outside data_dir (policy,
//!                          register maps, cloud credentials, ...), under its absolute path
//! ```
//!
//! # Consistency
//! The store snapshot is one read transaction copied table by table into a fresh redb file
//! ([`snapshot`]), never a copy of the live file: redb does not promise a consistent file while
//! it is being written, and a read transaction sees exactly one commit while writers go on.
//! The snapshot holds what was committed at that instant: an event acknowledged to a device
//! before it is in the backup, one acknowledged after it is not.
//!
//! # Writing
//! Into a temporary file in the destination, fsynced, then renamed to its name (never over an
//! existing file) and the folder fsynced, so a destination only ever holds whole backups. The
//! first destination that takes the whole encrypted stream gets it (one that fails part-way,
//! full or read-only, is a warning and the next is tried); the others get a copy of the finished
//! file. A missing or failing destination is a warning; none that takes the backup is a failure. Backups run one
//! at a time (a second request waits for the first). Each success is audited as
//! `backup.created` (file, size, SHA-256, destinations, the audit head it holds) and each failure
//! as `backup.failed`; the latest of each is kept in table `backup_status` for `/health`.
//!
//! # Restoring
//! Only into an empty (or absent) data_dir. The file is decrypted into a staging folder inside
//! data_dir and checked completely (manifest, every SHA-256, the store's tables and audit chain)
//! before anything is put in place; keys go through [`write_keys`]. The restore itself is
//! recorded as `backup.restored` in the restored store, by the restore command, with the
//! operating-system user who ran it: the entry follows the backup's audit head, so the chain
//! still verifies against the checkpoints the cloud received before the backup.

mod archive;
mod config;
mod restore;
pub mod snapshot;
mod task;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::TableDefinition;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

pub use archive::{FORMAT, FileEntry, Manifest, Role, identities};
pub use config::BackupConfig;
pub use restore::{RestoreOptions, Restored, Sealed, Verified, inspect, restore, verify};
pub use task::{BackupTask, next_wait};

use crate::audit::{self, Kind, Record};
use crate::clock::{SharedClock, rfc3339};
use crate::error::{Error, Result};
use crate::keys::{Keyring, KeysConfig, Secret};
use crate::paths::DataPaths;
use crate::store::Store;
use archive::{Content, Item, item};

/// Latest success and failure: keys `last_success`, `last_failure`; JSON values
/// ([`LastSuccess`], [`LastFailure`]).
const STATUS: TableDefinition<&str, &[u8]> = TableDefinition::new("backup_status");

const STORE: &str = "store/rxgate.redb";
const CA_CERT: &str = "data/ca/ca.crt";
const CA_CHAIN: &str = "data/ca/chain.pem";
const SERVER_CERT: &str = "data/tls/server.crt";
const CA_KEY: &str = "keys/ca.key";
const SERVER_KEY: &str = "keys/server.key";
const PSEUDONYM_KEY: &str = "keys/pseudonym.key";
const CONFIG_ROOT: &str = "config/root";

/// The gateway's private keys, plain, wiped from memory when dropped.
pub struct Keys {
    pub ca: Zeroizing<Vec<u8>>,
    pub server: Zeroizing<Vec<u8>>,
    pub pseudonym: Zeroizing<Vec<u8>>,
}

/// Reads the plain private keys, opening sealed ones with the key-encryption key: the one place
/// backups read key material. A backup carries plain keys (inside its age encryption), so that
/// a restore on another Pi seals them under that Pi's key-encryption key.
pub fn read_keys(keys: &Keyring) -> Result<Keys> {
    Ok(Keys {
        ca: keys.require(Secret::CaKey)?,
        server: keys.require(Secret::ServerKey)?,
        pseudonym: keys.require(Secret::PseudonymKey)?,
    })
}

/// Stores `keys` as the private keys, sealed when a key-encryption key is at hand (else plain,
/// 0600): the one place a restore writes key material.
pub fn write_keys(keyring: &Keyring, keys: &Keys) -> Result<()> {
    for (secret, bytes) in [
        (Secret::CaKey, &keys.ca),
        (Secret::ServerKey, &keys.server),
        (Secret::PseudonymKey, &keys.pseudonym),
    ] {
        keyring.write(secret, bytes)?;
    }
    Ok(())
}

/// What a backup of this gateway takes, from its config.
#[derive(Debug, Clone)]
pub struct Plan {
    pub site: String,
    pub paths: DataPaths,
    /// The config file, when the config was loaded from one.
    pub config_file: Option<PathBuf>,
    /// Files the config names outside data_dir, by config key.
    pub referenced: Vec<(String, PathBuf)>,
    pub config: BackupConfig,
    /// `[keys]`: opens the sealed keys it backs up.
    pub keys: KeysConfig,
}

/// The last audit entry as `txn` sees it.
fn audit_head(txn: &redb::ReadTransaction) -> Result<Option<u64>> {
    match txn.open_table(audit::META) {
        Ok(meta) => Ok(audit::head_of(&meta)?.map(|(seq, _)| seq)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What one backup did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub file_name: String,
    pub size: u64,
    /// SHA-256 of the encrypted file, hex.
    pub sha256: String,
    /// Every copy written.
    pub written: Vec<PathBuf>,
    /// Destinations skipped, each with why.
    pub warnings: Vec<String>,
    /// Older backups removed (`keep`).
    pub pruned: Vec<PathBuf>,
    /// The last audit entry in the backup.
    pub audit_head: Option<u64>,
    pub created: String,
}

/// The latest successful backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSuccess {
    pub at: String,
    pub file_name: String,
    pub size: u64,
    pub sha256: String,
    pub destinations: Vec<PathBuf>,
}

/// The latest failed backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastFailure {
    pub at: String,
    pub error: String,
}

/// What `backup_status` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub last_success: Option<LastSuccess>,
    pub last_failure: Option<LastFailure>,
}

fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

impl Status {
    /// Reads the status from `store`.
    pub fn read(store: &Store) -> Result<Status> {
        store.read(|txn| {
            let table = match txn.open_table(STATUS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Status::default()),
                Err(e) => return Err(e.into()),
            };
            Ok(Status {
                last_success: crate::store::get_json(&table, "backup_status", "last_success")?,
                last_failure: crate::store::get_json(&table, "backup_status", "last_failure")?,
            })
        })
    }

    /// What `/health` and the metrics show of it at `now`.
    pub fn health(&self, now: OffsetDateTime) -> crate::metrics::BackupHealth {
        let success = self.last_success.as_ref().and_then(|s| parse_time(&s.at));
        let failure = self.last_failure.as_ref().and_then(|f| parse_time(&f.at));
        crate::metrics::BackupHealth {
            newest_age_seconds: success.map(|at| (now - at).as_seconds_f64().max(0.0)),
            last_success_unix: success.map(OffsetDateTime::unix_timestamp),
            last_failure_unix: failure.map(OffsetDateTime::unix_timestamp),
            // Only while it is the latest word: a success since then settles it.
            last_error: self
                .last_failure
                .as_ref()
                .filter(|_| failure > success)
                .map(|f| f.error.clone()),
        }
    }
}

/// Makes backups of one gateway; cheap to clone, and clones take turns (one backup at a time).
#[derive(Clone)]
pub struct Backups {
    store: Store,
    clock: SharedClock,
    plan: Arc<Plan>,
    turn: Arc<Mutex<()>>,
}

impl std::fmt::Debug for Backups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backups")
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

/// `rxgate-<site>-<YYYYMMDDTHHMMSSZ>`, without the extension.
pub fn file_stem(site: &str, at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    format!(
        "rxgate-{site}-{}",
        at.format(&format)
            .unwrap_or_else(|_| at.unix_timestamp().to_string())
    )
}

/// When the backup of `site` named `name` was made, if `name` is one.
pub fn backup_time(site: &str, name: &str) -> Option<OffsetDateTime> {
    let rest = name.strip_prefix(&format!("rxgate-{site}-"))?;
    let rest = rest.strip_suffix(".age")?;
    let stamp = rest.get(..16)?;
    let tail = &rest[16..];
    if !(tail.is_empty()
        || tail
            .strip_prefix('-')
            .is_some_and(|n| n.parse::<u32>().is_ok()))
    {
        return None;
    }
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(stamp, &format)
        .ok()
        .map(|t| t.assume_utc())
}

/// The backups of `site` in `dir`, oldest first.
pub fn backups_in(dir: &Path, site: &str) -> std::io::Result<Vec<(PathBuf, OffsetDateTime)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(at) = backup_time(site, &name) {
            out.push((entry.path(), at));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

/// Moves the finished temporary file `tmp` to `<dir>/<stem>.age`, or `<stem>-1.age`... if taken;
/// never replaces a file. Fsyncs the folder.
fn persist(tmp: tempfile::NamedTempFile, dir: &Path, stem: &str) -> Result<PathBuf> {
    tmp.as_file()
        .sync_all()
        .map_err(Error::io("cannot write", tmp.path()))?;
    let mut tmp = tmp;
    for n in 0..1000 {
        let name = if n == 0 {
            format!("{stem}.age")
        } else {
            format!("{stem}-{n}.age")
        };
        let target = dir.join(name);
        match tmp.persist_noclobber(&target) {
            Ok(_) => {
                if let Ok(d) = std::fs::File::open(dir) {
                    d.sync_all().map_err(Error::io("cannot sync", dir))?;
                }
                return Ok(target);
            }
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => tmp = e.file,
            Err(e) => return Err(Error::io("cannot write", target)(e.error)),
        }
    }
    Err(Error::Invalid(format!(
        "{}: a thousand backups named {stem} already exist",
        dir.display()
    )))
}

/// Removes what a backup interrupted by a crash or power cut left in data_dir: a `.backup-*`
/// folder holding a plain store snapshot. Only called by the one process holding the store,
/// during its turn, so no other backup can be using one.
fn remove_stale_staging(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".backup-")
            && entry.file_type().is_ok_and(|t| t.is_dir())
        {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::info!(path = %entry.path().display(), "Removed what an interrupted backup left.")
                }
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "Cannot remove what an interrupted backup left.")
                }
            }
        }
    }
}

fn new_temp(dir: &Path) -> Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(".rxgate-backup-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(Error::io("cannot create a file in", dir))
}

impl Backups {
    pub fn new(plan: Plan, store: Store, clock: SharedClock) -> Backups {
        Backups {
            store,
            clock,
            plan: Arc::new(plan),
            turn: Arc::new(Mutex::new(())),
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn status(&self) -> Result<Status> {
        Status::read(&self.store)
    }

    /// Makes one backup: into `to` when given, else into every configured destination (and then
    /// prunes those to `keep`). `actor` is recorded with it. A failure is audited and returned.
    pub fn create(&self, to: Option<&Path>, actor: &str) -> Result<Created> {
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        let destinations: Vec<PathBuf> = match to {
            Some(dir) => vec![dir.to_owned()],
            None => self.plan.config.destinations.clone(),
        };
        match self.make(&destinations, to.is_none()) {
            Ok(created) => {
                let now = self.clock.now();
                let success = LastSuccess {
                    at: created.created.clone(),
                    file_name: created.file_name.clone(),
                    size: created.size,
                    sha256: created.sha256.clone(),
                    destinations: created
                        .written
                        .iter()
                        .filter_map(|p| p.parent().map(Path::to_owned))
                        .collect(),
                };
                self.store.write(|txn| {
                    audit::append(
                        txn,
                        now,
                        self.clock.synced(),
                        Record::new(Kind::BackupCreated, actor).detail(serde_json::json!({
                            "file": created.file_name,
                            "size": created.size,
                            "sha256": created.sha256,
                            "destinations": success.destinations,
                            "skipped": created.warnings,
                            "audit_head": created.audit_head,
                        })),
                    )?;
                    txn.open_table(STATUS)?
                        .insert("last_success", crate::store::to_json(&success).as_slice())?;
                    Ok(())
                })?;
                crate::metrics::backup_done(true);
                Ok(created)
            }
            Err(e) => {
                let now = self.clock.now();
                let failure = LastFailure {
                    at: rfc3339(now),
                    error: e.to_string(),
                };
                let recorded = self.store.write(|txn| {
                    audit::append(
                        txn,
                        now,
                        self.clock.synced(),
                        Record::new(Kind::BackupFailed, actor).detail(serde_json::json!({
                            "error": failure.error,
                            "destinations": destinations,
                        })),
                    )?;
                    txn.open_table(STATUS)?
                        .insert("last_failure", crate::store::to_json(&failure).as_slice())?;
                    Ok(())
                });
                if let Err(audit_error) = recorded {
                    tracing::error!(error = %audit_error, "Cannot record the failed backup.");
                }
                crate::metrics::backup_done(false);
                Err(e)
            }
        }
    }

    fn make(&self, destinations: &[PathBuf], prune: bool) -> Result<Created> {
        let recipients = self.plan.config.recipients().map_err(Error::Invalid)?;
        if destinations.is_empty() {
            return Err(Error::Invalid(
                "no backup destination: give --to DIR, or set [backup].destinations".to_owned(),
            ));
        }
        let mut warnings = Vec::new();
        let available: Vec<&PathBuf> = destinations
            .iter()
            .filter(|d| {
                let ok = d.is_dir();
                if !ok {
                    tracing::warn!(destination = %d.display(), "Backup destination missing (not mounted?); skipped.");
                    warnings.push(format!(
                        "{}: missing (not mounted?); skipped",
                        d.display()
                    ));
                }
                ok
            })
            .collect();
        if available.is_empty() {
            return Err(Error::Invalid(format!(
                "no backup destination is available: {}",
                warnings.join("; ")
            )));
        }
        let now = self.clock.now();
        let paths = &self.plan.paths;
        remove_stale_staging(&paths.root);
        let staging = tempfile::Builder::new()
            .prefix(".backup-")
            .tempdir_in(&paths.root)
            .map_err(Error::io("cannot create a folder in", &paths.root))?;
        let snapshot = staging.path().join("rxgate.redb");
        let (tables, audit_head) = self
            .store
            .read(|txn| Ok((snapshot::copy(txn, &snapshot)?, audit_head(txn)?)))?;
        // Second-factor secrets leave sealed under this Pi's key-encryption key; the backup
        // carries them plain (inside its age encryption), like the keys.
        let keyring = Keyring::open(paths, &self.plan.keys)?;
        crate::people::People::new(
            Store::open(&snapshot)?,
            self.clock.clone(),
            &self.plan.site,
            &[],
        )
        .with_sealer(keyring.sealer())
        .unseal_secrets()?;
        let items = self.items(snapshot)?;
        let manifest = Manifest {
            format: FORMAT.to_owned(),
            site: self.plan.site.clone(),
            created: rfc3339(now),
            clock_synced: self.clock.synced(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            audit_head,
            tables,
            files: items.iter().map(|i| i.entry.clone()).collect(),
        };
        let stem = file_stem(&self.plan.site, now);
        // The archive is written to the first destination that takes it whole (a full or
        // failing USB drive does not stop the backup reaching the share), then copied to the rest.
        let mut destinations = available.into_iter();
        let mut failed = None;
        let (written_first, size, sha256) = loop {
            let Some(dir) = destinations.next() else {
                return Err(failed.unwrap_or_else(|| {
                    Error::Invalid("no backup destination is available".to_owned())
                }));
            };
            let archive = (|| {
                let tmp = new_temp(dir)?;
                let file = tmp
                    .reopen()
                    .map_err(Error::io("cannot write", tmp.path()))?;
                let out = archive::Hashing::new(std::io::BufWriter::new(file));
                let out = archive::write(
                    out,
                    &recipients,
                    &manifest,
                    &items,
                    u64::try_from(now.unix_timestamp()).unwrap_or(0),
                )?;
                let (out, size, sha256) = out.into_parts();
                out.into_inner()
                    .map_err(|e| Error::io("cannot write", tmp.path())(e.into_error()))?
                    .sync_all()
                    .map_err(Error::io("cannot write", tmp.path()))?;
                Ok((persist(tmp, dir, &stem)?, size, sha256))
            })();
            match archive {
                Ok(written) => break written,
                Err(e) => {
                    tracing::warn!(destination = %dir.display(), error = %e, "Backup to this destination failed; trying the next.");
                    warnings.push(format!("{}: {e}", dir.display()));
                    failed = Some(e);
                }
            }
        };
        drop(items);
        let file_name = written_first
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut written = vec![written_first.clone()];
        for dir in destinations {
            let copied = (|| {
                let tmp = new_temp(dir)?;
                let mut target = tmp
                    .reopen()
                    .map_err(Error::io("cannot write", tmp.path()))?;
                let mut source = std::fs::File::open(&written_first)
                    .map_err(Error::io("cannot read", &written_first))?;
                std::io::copy(&mut source, &mut target)
                    .map_err(Error::io("cannot write", tmp.path()))?;
                persist(tmp, dir, file_name.trim_end_matches(".age"))
            })();
            match copied {
                Ok(path) => written.push(path),
                Err(e) => {
                    tracing::warn!(destination = %dir.display(), error = %e, "Backup copy failed; skipped.");
                    warnings.push(format!("{}: {e}", dir.display()));
                }
            }
        }
        let mut pruned = Vec::new();
        if prune {
            for path in &written {
                if let Some(dir) = path.parent() {
                    self.prune(dir, &mut pruned, &mut warnings);
                }
            }
        }
        Ok(Created {
            file_name,
            size,
            sha256,
            written,
            warnings,
            pruned,
            audit_head,
            created: manifest.created,
        })
    }

    /// Every file of the backup but the manifest: the store snapshot at `snapshot`, the
    /// certificates, the keys, the config and the files it names.
    fn items(&self, snapshot: PathBuf) -> Result<Vec<Item>> {
        let paths = &self.plan.paths;
        let mut items = vec![item(
            STORE.to_owned(),
            Role::Store,
            Content::File(snapshot),
            None,
        )?];
        let public = |path: PathBuf| -> Result<Content> {
            Ok(Content::Bytes(Zeroizing::new(
                std::fs::read(&path).map_err(Error::io("cannot read", &path))?,
            )))
        };
        items.push(item(
            CA_CERT.to_owned(),
            Role::CaCert,
            public(paths.ca_cert())?,
            None,
        )?);
        if paths.ca_chain().exists() {
            items.push(item(
                CA_CHAIN.to_owned(),
                Role::CaChain,
                public(paths.ca_chain())?,
                None,
            )?);
        }
        items.push(item(
            SERVER_CERT.to_owned(),
            Role::ServerCert,
            public(paths.server_cert())?,
            None,
        )?);
        let keys = read_keys(&Keyring::open(paths, &self.plan.keys)?)?;
        for (path, role, bytes) in [
            (CA_KEY, Role::CaKey, keys.ca),
            (SERVER_KEY, Role::ServerKey, keys.server),
            (PSEUDONYM_KEY, Role::PseudonymKey, keys.pseudonym),
        ] {
            items.push(item(path.to_owned(), role, Content::Bytes(bytes), None)?);
        }
        let config_files = self
            .plan
            .config_file
            .iter()
            .map(|p| ("config".to_owned(), p.clone(), Role::Config))
            .chain(
                self.plan
                    .referenced
                    .iter()
                    .map(|(k, p)| (k.clone(), p.clone(), Role::ConfigFile)),
            );
        for (key, path, role) in config_files {
            // Canonical: no `..` or `.` in the archive path (the file must exist to be read).
            let absolute = std::fs::canonicalize(&path).map_err(|e| {
                Error::Invalid(format!(
                    "cannot read {} ({key}), which the config names: {e}",
                    path.display()
                ))
            })?;
            let inside = format!(
                "{CONFIG_ROOT}/{}",
                absolute.display().to_string().trim_start_matches('/')
            );
            let bytes = std::fs::read(&absolute).map_err(|e| {
                Error::Invalid(format!(
                    "cannot read {} ({key}), which the config names: {e}",
                    absolute.display()
                ))
            })?;
            items.push(item(
                inside,
                role,
                Content::Bytes(Zeroizing::new(bytes)),
                Some((&key, &absolute)),
            )?);
        }
        Ok(items)
    }

    /// Removes the oldest backups of this site in `dir` beyond `keep`.
    fn prune(&self, dir: &Path, pruned: &mut Vec<PathBuf>, warnings: &mut Vec<String>) {
        let keep = self.plan.config.keep.get() as usize;
        match backups_in(dir, &self.plan.site) {
            Ok(all) if all.len() > keep => {
                for (old, _) in &all[..all.len() - keep] {
                    match std::fs::remove_file(old) {
                        Ok(()) => pruned.push(old.clone()),
                        Err(e) => warnings.push(format!(
                            "cannot remove the old backup {}: {e}",
                            old.display()
                        )),
                    }
                }
            }
            Ok(_) => {}
            Err(e) => warnings.push(format!("cannot list {}: {e}", dir.display())),
        }
    }
}

/// The newest backup of `site` across `destinations` (for the doctor), and each destination
/// that is missing.
pub fn newest(
    destinations: &[PathBuf],
    site: &str,
) -> (Option<(PathBuf, OffsetDateTime)>, Vec<PathBuf>) {
    let mut newest: Option<(PathBuf, OffsetDateTime)> = None;
    let mut missing = Vec::new();
    for dir in destinations {
        match backups_in(dir, site) {
            Ok(found) => {
                if let Some(last) = found.into_iter().last()
                    && newest.as_ref().is_none_or(|(_, at)| last.1 > *at)
                {
                    newest = Some(last);
                }
            }
            Err(_) => missing.push(dir.clone()),
        }
    }
    (newest, missing)
}

#[cfg(test)]
mod tests;
