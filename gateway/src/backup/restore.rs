//! `rxgate backup verify` and `rxgate backup restore`: decrypt, check everything, and only then
//! put anything in place.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::archive::{self, Role};
use super::{Keys, audit_head, snapshot, write_keys};
use crate::audit::{self, Kind, Record};
use crate::error::{Error, Result};
use crate::paths::{DataPaths, create_private_dir, write_atomic};
use crate::store::Store;

/// What `rxgate backup verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub site: String,
    pub created: String,
    pub version: String,
    /// Files checked against the manifest, the store snapshot among them.
    pub files: usize,
    /// Audit entries verified in the snapshot, up to `audit_head`.
    pub audit_entries: u64,
    pub audit_head: Option<u64>,
    /// Entries per table of the snapshot.
    pub tables: std::collections::BTreeMap<String, u64>,
}

/// Checks an opened backup's store: its tables as the manifest counts them, its audit chain
/// whole up to the head the manifest names, every checkpoint in it signed by the CA in it.
fn check_store(file: &Path, opened: &archive::Opened) -> Result<Verified> {
    let bad = |what: String| {
        Error::Invalid(format!(
            "{}: {what}; this backup cannot be trusted",
            file.display()
        ))
    };
    let tables = snapshot::count(&opened.store)?;
    if tables != opened.manifest.tables {
        return Err(bad(format!(
            "the store snapshot's tables {tables:?} are not the ones its manifest counts {:?}",
            opened.manifest.tables
        )));
    }
    let ca_pem = opened
        .bytes(Role::CaCert)
        .ok_or_else(|| bad("it holds no CA certificate".to_owned()))?;
    let ca = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(ca_pem)
            .map_err(|e| bad(format!("its CA certificate is unreadable: {e}")))?
    };
    let store = Store::open(&opened.store)?;
    let entries = match audit::verify(&store, Some(ca.as_ref()), &[])? {
        Ok(n) => n,
        Err(broken) => {
            return Err(bad(format!(
                "its audit trail does not verify at entry {}: {}",
                broken.seq, broken.reason
            )));
        }
    };
    let head = store.read(audit_head)?;
    if head != opened.manifest.audit_head {
        return Err(bad(format!(
            "its audit trail ends at {head:?}, its manifest says {:?}",
            opened.manifest.audit_head
        )));
    }
    Ok(Verified {
        site: opened.manifest.site.clone(),
        created: opened.manifest.created.clone(),
        version: opened.manifest.version.clone(),
        files: opened.manifest.files.len(),
        audit_entries: entries,
        audit_head: head,
        tables,
    })
}

/// `rxgate backup verify FILE --identity KEY`: decrypts `file`, checks the manifest, every
/// file's size and SHA-256, the store snapshot's tables and its audit chain. Nothing is written
/// but a private temporary copy of the snapshot, removed after.
pub fn verify(file: &Path, identities: &[age::x25519::Identity]) -> Result<Verified> {
    let staging = tempfile::Builder::new()
        .prefix("rxgate-verify-")
        .tempdir()
        .map_err(Error::io(
            "cannot create a temporary folder in",
            std::env::temp_dir(),
        ))?;
    let opened = archive::open(file, identities, staging.path())?;
    check_store(file, &opened)
}

/// What can be told of a backup without its identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub size: u64,
    pub sha256: String,
}

/// `rxgate backup verify FILE` without an identity: the file is an age file, and its size and
/// SHA-256 (to compare with the `backup.created` entry the gateway audited when it wrote it).
/// The contents cannot be checked without an identity.
pub fn inspect(file: &Path) -> Result<Sealed> {
    let input = std::fs::File::open(file).map_err(Error::io("cannot open the backup", file))?;
    let reader = std::io::BufReader::new(input);
    age::Decryptor::new_buffered(reader).map_err(|e| {
        Error::Invalid(format!(
            "{} is not an rxgate backup: it does not start with an age header ({e})",
            file.display()
        ))
    })?;
    let mut hashing = archive::Hashing::new(std::io::sink());
    let mut input = std::fs::File::open(file).map_err(Error::io("cannot read", file))?;
    std::io::copy(&mut input, &mut hashing).map_err(Error::io("cannot read", file))?;
    let (size, sha256) = hashing.finish();
    Ok(Sealed { size, sha256 })
}

/// Where `rxgate backup restore` puts things.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The data_dir to restore into: absent or empty.
    pub data_dir: PathBuf,
    /// Write the config file and the files it names under this folder, each at its original
    /// absolute path below it (`<dir>/etc/rxgate/gateway.toml`), for you to put in place.
    pub config_to: Option<PathBuf>,
    /// `[keys]` of the gateway restored to: its key-encryption key seals the restored keys.
    pub keys: crate::keys::KeysConfig,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    pub verified: Verified,
    pub data_dir: PathBuf,
    /// Config files written (with `config_to`), or found in the backup (without it).
    pub config_files: Vec<(String, PathBuf)>,
    pub config_written: bool,
    /// The `backup.restored` audit entry.
    pub audit_seq: u64,
}

/// Refuses a data_dir that holds anything, naming a few of its entries.
fn require_empty(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("cannot read", dir)(e)),
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let mut shown: Vec<String> = names.iter().take(5).cloned().collect();
    if names.len() > 5 {
        shown.push(format!("and {} more", names.len() - 5));
    }
    Err(Error::Invalid(format!(
        "{} is not empty (it holds {}): a backup is only restored into an empty data directory, \
         so no gateway's keys or store are ever overwritten; move it aside, or restore with \
         --data-dir into a new folder",
        dir.display(),
        shown.join(", ")
    )))
}

/// `rxgate backup restore FILE --identity KEY`: checks the whole backup, then puts the store,
/// the certificates and the keys (through [`write_keys`]) into the empty `options.data_dir` and
/// records `backup.restored` there, on behalf of `actor`.
pub fn restore(
    file: &Path,
    identities: &[age::x25519::Identity],
    options: &RestoreOptions,
    clock: &dyn crate::clock::Clock,
    actor: &str,
) -> Result<Restored> {
    let data_dir = &options.data_dir;
    require_empty(data_dir)?;
    if let Some(dir) = &options.config_to {
        require_empty(dir)?;
    }
    let sealed = inspect(file)?;
    create_private_dir(data_dir, 0o700).map_err(Error::io("cannot create", data_dir))?;
    let staging = tempfile::Builder::new()
        .prefix(".restore-")
        .tempdir_in(data_dir)
        .map_err(Error::io("cannot create a folder in", data_dir))?;
    let opened = archive::open(file, identities, staging.path())?;
    let verified = check_store(file, &opened)?;
    let paths = DataPaths::new(data_dir);
    let need = |role: Role| {
        opened.bytes(role).ok_or_else(|| {
            Error::Invalid(format!("{}: the backup holds no {role:?}", file.display()))
        })
    };
    let keys = Keys {
        ca: Zeroizing::new(need(Role::CaKey)?.to_vec()),
        server: Zeroizing::new(need(Role::ServerKey)?.to_vec()),
        pseudonym: Zeroizing::new(need(Role::PseudonymKey)?.to_vec()),
    };
    for dir in [paths.root.join("ca"), paths.root.join("tls")] {
        create_private_dir(&dir, 0o700).map_err(Error::io("cannot create", &dir))?;
    }
    let keyring = crate::keys::Keyring::open(&paths, &options.keys)?;
    write_keys(&keyring, &keys)?;
    drop(keys);
    for (role, path) in [
        (Role::CaCert, paths.ca_cert()),
        (Role::ServerCert, paths.server_cert()),
    ] {
        write_atomic(&path, need(role)?, 0o644).map_err(Error::io("cannot write", &path))?;
    }
    if let Some(chain) = opened.bytes(Role::CaChain) {
        write_atomic(&paths.ca_chain(), chain, 0o644)
            .map_err(Error::io("cannot write", paths.ca_chain()))?;
    }
    let store_path = paths.store();
    std::fs::rename(&opened.store, &store_path).map_err(Error::io("cannot write", &store_path))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&store_path, std::fs::Permissions::from_mode(0o600))
            .map_err(Error::io("cannot restrict", &store_path))?;
    }
    let mut config_files = Vec::new();
    for entry in opened
        .manifest
        .files
        .iter()
        .filter(|f| matches!(f.role, Role::Config | Role::ConfigFile))
    {
        let key = entry.key.clone().unwrap_or_default();
        let source = PathBuf::from(entry.source.clone().unwrap_or_default());
        let Some(dir) = &options.config_to else {
            config_files.push((key, source));
            continue;
        };
        // Only plain components below the folder: the manifest is checked, but never trusted
        // to name where outside the folder to write.
        let relative: PathBuf = source
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(part) => Some(part),
                _ => None,
            })
            .collect();
        if relative.as_os_str().is_empty() {
            continue;
        }
        let target = dir.join(relative);
        if let Some(parent) = target.parent() {
            create_private_dir(parent, 0o700).map_err(Error::io("cannot create", parent))?;
        }
        let bytes = opened
            .files
            .get(&entry.path)
            .map(|b| b.as_slice())
            .unwrap_or_default();
        write_atomic(&target, bytes, 0o600).map_err(Error::io("cannot write", &target))?;
        config_files.push((key, target));
    }
    drop(opened);
    drop(staging);
    let store = Store::open(&store_path)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let audit_seq = store.write(|txn| {
        audit::append(
            txn,
            clock.now(),
            clock.synced(),
            Record::new(Kind::BackupRestored, actor).detail(serde_json::json!({
                "file": name,
                "size": sealed.size,
                "sha256": sealed.sha256,
                "site": verified.site,
                "created": verified.created,
                "audit_head": verified.audit_head,
            })),
        )
    })?;
    Ok(Restored {
        verified,
        data_dir: data_dir.clone(),
        config_files,
        config_written: options.config_to.is_some(),
        audit_seq,
    })
}
