//! The layout of `data_dir`. Everything persistent lives under it; nothing else is written.
//!
//! ```text
//! data_dir/            0700
//!   ca/ca.crt          the CA certificate devices are issued from
//!   ca/ca.key          its private key (0600)
//!   ca/chain.pem       parents of an imported intermediate CA (absent for a self-made root)
//!   tls/server.crt     the gateway's TLS server certificate (EST, device MQTT)
//!   tls/server.key     its private key (0600)
//!   rxgate.redb        the store: registry, tokens, audit trail, outbox
//!   rxgate.sock        admin socket of a running daemon (0600)
//!   pseudonym.key      HMAC key for patient-identifier pseudonyms (0600); never leaves the gateway
//! ```

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Paths of everything under `data_dir`.
#[derive(Debug, Clone)]
pub struct DataPaths {
    pub root: PathBuf,
}

impl DataPaths {
    pub fn new(root: &Path) -> Self {
        DataPaths {
            root: root.to_owned(),
        }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca/ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca/ca.key")
    }
    pub fn ca_chain(&self) -> PathBuf {
        self.root.join("ca/chain.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.root.join("tls/server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.root.join("tls/server.key")
    }
    pub fn store(&self) -> PathBuf {
        self.root.join("rxgate.redb")
    }
    /// The last stream numbers given, kept in memory across a crash (see the outbox): in the
    /// service's runtime directory (`RUNTIME_DIRECTORY`, /run/rxgate under systemd), else in
    /// /dev/shm; both are memory, never written to the SD card, and never block on it. Named
    /// after data_dir, so gateways on one machine keep their own.
    pub fn seq_ledger(&self) -> PathBuf {
        let dir = std::env::var_os("RUNTIME_DIRECTORY")
            .map(PathBuf::from)
            .and_then(|d| d.is_dir().then_some(d))
            .unwrap_or_else(|| PathBuf::from("/dev/shm"));
        let root = fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        let digest =
            ring::digest::digest(&ring::digest::SHA256, root.as_os_str().as_encoded_bytes());
        let name: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        dir.join(format!("rxgate-seq-{name}.ledger"))
    }
    pub fn admin_socket(&self) -> PathBuf {
        self.root.join("rxgate.sock")
    }
    pub fn pseudonym_key(&self) -> PathBuf {
        self.root.join("pseudonym.key")
    }
}

/// Creates `dir` and its missing parents; `dir` itself gets `mode` even if it existed.
pub fn create_private_dir(dir: &Path, mode: u32) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}

/// Writes `contents` to `path` atomically (temporary file, fsync, rename) with `mode` from the
/// moment the file exists, so a private key is never readable by others, even briefly.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(dir) = fs::File::open(parent) {
            dir.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
