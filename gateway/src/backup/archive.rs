//! The backup file: an age stream holding a tar archive, `manifest.json` first. See the module
//! documentation of [`super`] for the layout.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The format named in every manifest; a reader refuses any other.
pub const FORMAT: &str = "rxgate-backup/1";
pub const MANIFEST: &str = "manifest.json";
/// Largest manifest, and largest file other than the store, a reader accepts.
const MAX_MANIFEST: u64 = 1 << 20;
const MAX_SMALL_FILE: u64 = 16 << 20;

/// What each file in the archive is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The store snapshot (redb).
    Store,
    CaCert,
    CaChain,
    ServerCert,
    CaKey,
    ServerKey,
    PseudonymKey,
    /// The config file.
    Config,
    /// A file the config names that lives outside data_dir (policy, register map, ...).
    ConfigFile,
}

/// One file of the archive, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path inside the archive.
    pub path: String,
    pub role: Role,
    pub size: u64,
    /// SHA-256 of the contents, hex.
    pub sha256: String,
    /// Where the file was on the gateway (config files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The config key naming it (config files only), e.g. `gateway.policy_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    pub site: String,
    /// When the snapshot was taken, RFC 3339 UTC.
    pub created: String,
    pub clock_synced: bool,
    /// rxgate version that wrote it.
    pub version: String,
    /// The last audit entry in the store snapshot.
    pub audit_head: Option<u64>,
    /// Entries per table of the store snapshot.
    pub tables: BTreeMap<String, u64>,
    /// Every other file of the archive, in archive order.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    pub fn file(&self, role: Role) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.role == role)
    }
}

/// A file to write: its manifest entry and its contents.
pub(super) struct Item {
    pub entry: FileEntry,
    pub content: Content,
}

pub(super) enum Content {
    /// Plain bytes (keys among them), wiped when dropped.
    Bytes(Zeroizing<Vec<u8>>),
    /// A file this process created and nobody else changes (the store snapshot).
    File(PathBuf),
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    crate::audit::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Builds the entry of `content` (size and SHA-256 computed here).
pub(super) fn item(
    path: String,
    role: Role,
    content: Content,
    source: Option<(&str, &Path)>,
) -> Result<Item> {
    let (size, sha256) = match &content {
        Content::Bytes(bytes) => (bytes.len() as u64, sha256_hex(bytes)),
        Content::File(file) => {
            let mut hashing = Hashing::new(io::sink());
            let mut reader =
                std::fs::File::open(file).map_err(Error::io("cannot read", file.as_path()))?;
            io::copy(&mut reader, &mut hashing)
                .map_err(Error::io("cannot read", file.as_path()))?;
            hashing.finish()
        }
    };
    Ok(Item {
        entry: FileEntry {
            path,
            role,
            size,
            sha256,
            source: source.map(|(_, p)| p.display().to_string()),
            key: source.map(|(k, _)| k.to_owned()),
        },
        content,
    })
}

/// A writer (or sink) that counts and hashes what passes through.
pub(super) struct Hashing<W> {
    inner: W,
    digest: ring::digest::Context,
    size: u64,
}

impl<W> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Hashing {
            inner,
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            size: 0,
        }
    }

    /// Size and SHA-256 (hex) of everything written.
    pub fn finish(self) -> (u64, String) {
        (self.size, crate::audit::hex(self.digest.finish().as_ref()))
    }

    pub fn into_parts(self) -> (W, u64, String) {
        let (size, hash) = (self.size, crate::audit::hex(self.digest.finish().as_ref()));
        (self.inner, size, hash)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digest.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Encrypts the archive of `manifest` and `items` to `recipients`, writing it to `out`.
pub(super) fn write<W: Write>(
    out: W,
    recipients: &[age::x25519::Recipient],
    manifest: &Manifest,
    items: &[Item],
    mtime: u64,
) -> Result<W> {
    let failed = |e: io::Error| Error::Invalid(format!("cannot write the backup: {e}"));
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| Error::Invalid(format!("cannot encrypt the backup: {e}")))?;
    let stream = encryptor.wrap_output(out).map_err(failed)?;
    let mut tar = tar::Builder::new(stream);
    let header = |size: u64, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    let manifest_json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| Error::Invalid(format!("cannot encode the backup manifest: {e}")))?;
    tar.append_data(
        &mut header(manifest_json.len() as u64, 0o600),
        MANIFEST,
        manifest_json.as_slice(),
    )
    .map_err(failed)?;
    for item in items {
        let mut h = header(item.entry.size, 0o600);
        match &item.content {
            Content::Bytes(bytes) => tar.append_data(&mut h, &item.entry.path, bytes.as_slice()),
            Content::File(path) => {
                let file = std::fs::File::open(path).map_err(Error::io("cannot read", path))?;
                // Exactly the size hashed: the file is ours and does not change.
                tar.append_data(&mut h, &item.entry.path, file.take(item.entry.size))
            }
        }
        .map_err(failed)?;
    }
    let stream = tar.into_inner().map_err(failed)?;
    stream.finish().map_err(failed)
}

/// Parses an identity file as `age-keygen` writes it: one `AGE-SECRET-KEY-1...` a line, `#`
/// comments.
pub fn identities(path: &Path) -> Result<Vec<age::x25519::Identity>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(Error::io("cannot read the identity file", path))?,
    );
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let identity = line.parse::<age::x25519::Identity>().map_err(|_| {
            Error::Invalid(format!(
                "{} line {}: not an age identity (expected AGE-SECRET-KEY-1..., as age-keygen \
                 writes it; passphrase-protected identity files are not supported)",
                path.display(),
                n + 1
            ))
        })?;
        out.push(identity);
    }
    if out.is_empty() {
        return Err(Error::Invalid(format!(
            "{} holds no age identity (AGE-SECRET-KEY-1...)",
            path.display()
        )));
    }
    Ok(out)
}

/// A backup decrypted and checked against its manifest: every file present once, with the size
/// and SHA-256 the manifest names; nothing else in the archive.
pub struct Opened {
    pub manifest: Manifest,
    /// The store snapshot, written to the staging folder.
    pub store: PathBuf,
    /// Every other file, by archive path (plain keys among them, wiped when dropped).
    pub files: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

impl Opened {
    pub fn bytes(&self, role: Role) -> Option<&[u8]> {
        let entry = self.manifest.file(role)?;
        self.files.get(&entry.path).map(|b| b.as_slice())
    }
}

fn damaged(file: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!(
        "{} is damaged or truncated: {e}; it cannot be used (take another backup, or use an \
         older copy)",
        file.display()
    ))
}

/// Decrypts `file` with `identities` and checks it, writing the store snapshot into `staging`
/// (a private folder). Refuses clearly a file for other identities, a file that is not an rxgate
/// backup, and a damaged or truncated one.
pub fn open(file: &Path, identities: &[age::x25519::Identity], staging: &Path) -> Result<Opened> {
    let input = std::fs::File::open(file).map_err(Error::io("cannot open the backup", file))?;
    let decryptor =
        age::Decryptor::new_buffered(io::BufReader::new(input)).map_err(|e| match e {
            age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => {
                Error::Invalid(format!(
                    "{} is not an rxgate backup: it does not start with an age header ({e})",
                    file.display()
                ))
            }
            other => damaged(file, other),
        })?;
    let reader = decryptor
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => Error::Invalid(format!(
                "{} was not encrypted to this identity: use the identity whose public key \
                 (age-keygen -y) is in [backup].recipients of the gateway that made it",
                file.display()
            )),
            other => damaged(file, other),
        })?;
    let mut archive = tar::Archive::new(reader);
    let mut manifest: Option<Manifest> = None;
    let mut store = None;
    let mut files = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for entry in archive.entries().map_err(|e| damaged(file, e))? {
        let mut entry = entry.map_err(|e| damaged(file, e))?;
        let path = entry
            .path()
            .map_err(|e| damaged(file, e))?
            .to_string_lossy()
            .into_owned();
        let Some(manifest) = &manifest else {
            if path != MANIFEST {
                return Err(damaged(file, format!("{MANIFEST} is not its first file")));
            }
            let mut text = Vec::new();
            (&mut entry)
                .take(MAX_MANIFEST)
                .read_to_end(&mut text)
                .map_err(|e| damaged(file, e))?;
            let parsed: Manifest = serde_json::from_slice(&text)
                .map_err(|e| damaged(file, format!("its manifest is unreadable: {e}")))?;
            if parsed.format != FORMAT {
                return Err(Error::Invalid(format!(
                    "{} is a backup of format {:?}; this rxgate reads {FORMAT:?}",
                    file.display(),
                    parsed.format
                )));
            }
            manifest = Some(parsed);
            continue;
        };
        let Some(expected) = manifest.files.iter().find(|f| f.path == path) else {
            return Err(damaged(
                file,
                format!("it holds {path:?}, which its manifest does not list"),
            ));
        };
        if !seen.insert(path.clone()) {
            return Err(damaged(file, format!("it holds {path:?} twice")));
        }
        let (size, sha256) = if expected.role == Role::Store {
            let target = staging.join("rxgate.redb");
            let out = std::fs::File::create(&target)
                .map_err(Error::io("cannot write", target.as_path()))?;
            let mut hashing = Hashing::new(io::BufWriter::new(out));
            io::copy(&mut entry, &mut hashing).map_err(|e| damaged(file, e))?;
            let (out, size, sha256) = hashing.into_parts();
            out.into_inner()
                .map_err(|e| Error::io("cannot write", target.as_path())(e.into_error()))?
                .sync_all()
                .map_err(Error::io("cannot write", target.as_path()))?;
            store = Some(target);
            (size, sha256)
        } else {
            // Sized up front: a growing buffer would leave unwiped copies of key bytes behind.
            let mut bytes = Zeroizing::new(Vec::with_capacity(
                expected.size.min(MAX_SMALL_FILE) as usize + 1,
            ));
            (&mut entry)
                .take(MAX_SMALL_FILE)
                .read_to_end(&mut bytes)
                .map_err(|e| damaged(file, e))?;
            let found = (bytes.len() as u64, sha256_hex(&bytes));
            files.insert(path.clone(), bytes);
            found
        };
        if size != expected.size || sha256 != expected.sha256 {
            return Err(damaged(
                file,
                format!(
                    "{path} has {size} bytes with SHA-256 {sha256}, but its manifest says {} \
                     bytes with SHA-256 {}",
                    expected.size, expected.sha256
                ),
            ));
        }
    }
    // Read to the end of the age stream: its last chunk proves the file is whole.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(|e| damaged(file, e))?;
    let Some(manifest) = manifest else {
        return Err(damaged(file, "it holds no manifest"));
    };
    if let Some(missing) = manifest.files.iter().find(|f| !seen.contains(&f.path)) {
        return Err(damaged(
            file,
            format!("{} listed in its manifest is missing", missing.path),
        ));
    }
    let Some(store) = store else {
        return Err(damaged(file, "it holds no store snapshot"));
    };
    Ok(Opened {
        manifest,
        store,
        files,
    })
}
