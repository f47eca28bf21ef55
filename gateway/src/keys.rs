//! Keys at rest: the CA key, the server key (which also signs audit checkpoints), the pseudonym
//! key and the second-factor (TOTP) secrets are stored sealed under a key-encryption key (KEK)
//! that is not in `data_dir`.
//!
//! The KEK comes from, in this order:
//! 1. systemd's credential `[keys].credential` (default `rxgate-kek`) in `$CREDENTIALS_DIRECTORY`,
//!    which the unit's `LoadCredentialEncrypted=` decrypts for the service alone (bound to the
//!    host's credential secret and, where there is one, its TPM);
//! 2. `[keys].kek_file`, a file for other service managers and for commands run by hand.
//!
//! The file holds at least 32 random bytes (`rxgate keys generate-kek FILE`); the KEK is their
//! HKDF-SHA256. A sealed file is `RXGSEAL1`, a 96-bit random nonce and the ChaCha20-Poly1305
//! ciphertext of the key, with the key's name as associated data (a sealed file renamed into
//! another key's place does not open). Sealed TOTP secrets are text in the store:
//! `sealed:v1:<base64>`, with the person's name as associated data.
//!
//! Without a KEK, keys are written in plain files (mode 0600) and `rxgate doctor` warns; the
//! daemon seals every plain key it finds as soon as it starts with a KEK, and `rxgate keys seal`
//! does the same by hand. A copy of `data_dir` without the KEK mints no certificate and signs
//! no checkpoint: every command that needs a key refuses and says where the KEK is looked for.
//! Plain key bytes live only in memory, in buffers zeroised when dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::paths::{DataPaths, write_atomic};

const MAGIC: &[u8; 8] = b"RXGSEAL1";
const TEXT_PREFIX: &str = "sealed:v1:";
const PRIVATE: u32 = 0o600;
/// The KEK file's shortest acceptable content.
pub const KEK_MIN_BYTES: usize = 32;

/// `[keys]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// The systemd credential holding the KEK, looked up in `$CREDENTIALS_DIRECTORY`.
    #[serde(default = "default_credential")]
    pub credential: String,
    /// A file holding the KEK, for service managers without credentials and for commands run
    /// outside the service.
    pub kek_file: Option<PathBuf>,
}

fn default_credential() -> String {
    "rxgate-kek".to_owned()
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            credential: default_credential(),
            kek_file: None,
        }
    }
}

impl KeysConfig {
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(file) = self.kek_file.as_mut() {
            *file = base.join(&*file);
        }
    }

    /// Where the KEK would come from, for messages: the credential (when systemd passed one)
    /// or the file.
    fn sources(&self) -> String {
        let mut out = format!(
            "the systemd credential `{}` ($CREDENTIALS_DIRECTORY, set by the unit's \
             LoadCredentialEncrypted=)",
            self.credential
        );
        match &self.kek_file {
            Some(file) => out.push_str(&format!(" or [keys].kek_file {}", file.display())),
            None => out.push_str(" or [keys].kek_file (not set)"),
        }
        out
    }
}

/// A key kept in `data_dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    CaKey,
    ServerKey,
    PseudonymKey,
}

impl Secret {
    pub const ALL: [Secret; 3] = [Secret::CaKey, Secret::ServerKey, Secret::PseudonymKey];

    pub fn label(self) -> &'static str {
        match self {
            Secret::CaKey => "CA key",
            Secret::ServerKey => "server key",
            Secret::PseudonymKey => "pseudonym key",
        }
    }

    fn plain_path(self, paths: &DataPaths) -> PathBuf {
        match self {
            Secret::CaKey => paths.ca_key(),
            Secret::ServerKey => paths.server_key(),
            Secret::PseudonymKey => paths.pseudonym_key(),
        }
    }

    fn sealed_path(self, paths: &DataPaths) -> PathBuf {
        let plain = self.plain_path(paths);
        let mut name = plain.file_name().unwrap_or_default().to_os_string();
        name.push(".sealed");
        plain.with_file_name(name)
    }

    /// The associated data: what this key is, so that sealed files cannot be swapped.
    fn aad(self) -> &'static [u8] {
        match self {
            Secret::CaKey => b"rxgate ca.key",
            Secret::ServerKey => b"rxgate server.key",
            Secret::PseudonymKey => b"rxgate pseudonym.key",
        }
    }
}

/// How a key is stored right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Sealed,
    Plain,
    Missing,
}

/// Seals and opens short secrets (the TOTP secrets) kept in the store. Without a KEK it passes
/// plain text through, and refuses to open what is sealed.
#[derive(Clone)]
pub struct Sealer {
    kek: Option<Arc<LessSafeKey>>,
    /// Where the KEK is looked for, for the refusal's message.
    sources: Arc<str>,
}

/// No key-encryption key: passes plain text through; its refusals name the default sources.
impl Default for Sealer {
    fn default() -> Self {
        Sealer {
            kek: None,
            sources: KeysConfig::default().sources().into(),
        }
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("kek", &self.kek.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Sealer {
    /// Whether a KEK is at hand (new secrets are sealed).
    pub fn sealing(&self) -> bool {
        self.kek.is_some()
    }

    /// Whether stored text is sealed.
    pub fn is_sealed_text(stored: &str) -> bool {
        stored.starts_with(TEXT_PREFIX)
    }

    /// `plain` sealed for `context` when a KEK is at hand, else `plain` itself.
    pub fn seal_text(&self, context: &str, plain: &str) -> Result<String> {
        match &self.kek {
            None => Ok(plain.to_owned()),
            Some(kek) => {
                let sealed = seal(kek, context.as_bytes(), plain.as_bytes())?;
                Ok(format!(
                    "{TEXT_PREFIX}{}",
                    base64::engine::general_purpose::STANDARD_NO_PAD.encode(sealed)
                ))
            }
        }
    }

    /// The plain text of `stored` (sealed for `context`, or plain).
    pub fn open_text(&self, context: &str, stored: &str) -> Result<Zeroizing<String>> {
        let Some(encoded) = stored.strip_prefix(TEXT_PREFIX) else {
            return Ok(Zeroizing::new(stored.to_owned()));
        };
        let Some(kek) = &self.kek else {
            return Err(Error::KeysSealed(format!(
                "a second-factor secret is sealed and the key-encryption key is not available: \
                 it is read from {}",
                self.sources
            )));
        };
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(encoded)
            .map_err(|_| Error::Invalid("a sealed second-factor secret is damaged".to_owned()))?;
        let plain = open(kek, context.as_bytes(), &bytes).ok_or_else(|| {
            Error::KeysSealed(
                "a second-factor secret does not open with this key-encryption key: it was \
                 sealed under another one"
                    .to_owned(),
            )
        })?;
        String::from_utf8(plain.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| Error::Invalid("a sealed second-factor secret is damaged".to_owned()))
    }
}

/// The keys in `data_dir`, and the KEK if one is at hand.
#[derive(Clone)]
pub struct Keyring {
    paths: DataPaths,
    sealer: Sealer,
}

impl Keyring {
    /// Finds the KEK (see the module doc). A configured `kek_file` that cannot be read, or holds
    /// too little, is an error; no KEK at all is not (keys are then plain).
    pub fn open(paths: &DataPaths, config: &KeysConfig) -> Result<Keyring> {
        let from_credential = std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|dir| PathBuf::from(dir).join(&config.credential))
            .filter(|path| path.exists());
        let source = from_credential.or_else(|| config.kek_file.clone());
        let kek = match source {
            None => None,
            Some(path) => Some(Arc::new(read_kek(&path)?)),
        };
        Ok(Keyring {
            paths: paths.clone(),
            sealer: Sealer {
                kek,
                sources: config.sources().into(),
            },
        })
    }

    /// Whether a KEK is at hand: new keys are sealed.
    pub fn sealing(&self) -> bool {
        self.sealer.sealing()
    }

    /// The sealer for secrets kept in the store.
    pub fn sealer(&self) -> Sealer {
        self.sealer.clone()
    }

    pub fn stored(&self, secret: Secret) -> Stored {
        if secret.sealed_path(&self.paths).exists() {
            Stored::Sealed
        } else if secret.plain_path(&self.paths).exists() {
            Stored::Plain
        } else {
            Stored::Missing
        }
    }

    /// The key's plain bytes, or `None` when it does not exist. A sealed key without the KEK,
    /// or under another KEK, is an error that says so.
    pub fn read(&self, secret: Secret) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let sealed_path = secret.sealed_path(&self.paths);
        match std::fs::read(&sealed_path) {
            Ok(bytes) => {
                let Some(kek) = &self.sealer.kek else {
                    return Err(Error::KeysSealed(format!(
                        "the {} ({}) is sealed and the key-encryption key is not available: it \
                         is read from {}",
                        secret.label(),
                        sealed_path.display(),
                        self.sealer.sources
                    )));
                };
                let body = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(|| {
                    Error::Invalid(format!(
                        "{} is not a sealed key (restore it from a backup)",
                        sealed_path.display()
                    ))
                })?;
                return open(kek, secret.aad(), body).map(Some).ok_or_else(|| {
                    Error::KeysSealed(format!(
                        "the {} ({}) does not open with this key-encryption key: it was sealed \
                         under another one, or the file is damaged",
                        secret.label(),
                        sealed_path.display()
                    ))
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("cannot read", &sealed_path)(e)),
        }
        let plain_path = secret.plain_path(&self.paths);
        match std::fs::read(&plain_path) {
            Ok(bytes) => Ok(Some(Zeroizing::new(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("cannot read", &plain_path)(e)),
        }
    }

    /// [`Keyring::read`] for a key that must exist.
    pub fn require(&self, secret: Secret) -> Result<Zeroizing<Vec<u8>>> {
        self.read(secret)?.ok_or_else(|| Error::NotInitialised {
            missing: secret.plain_path(&self.paths),
        })
    }

    /// Stores `bytes` as the key: sealed when a KEK is at hand (and any plain copy removed),
    /// else in a plain 0600 file. Without a KEK, a key that is sealed now is not replaced: that
    /// would undo the sealing, and whoever lacks the KEK should not replace keys.
    pub fn write(&self, secret: Secret, bytes: &[u8]) -> Result<()> {
        let (sealed_path, plain_path) = (
            secret.sealed_path(&self.paths),
            secret.plain_path(&self.paths),
        );
        match &self.sealer.kek {
            Some(kek) => {
                let mut file = MAGIC.to_vec();
                file.extend(seal(kek, secret.aad(), bytes)?);
                write_atomic(&sealed_path, &file, PRIVATE)
                    .map_err(Error::io("cannot write", &sealed_path))?;
                remove_plain(&plain_path)
            }
            None if sealed_path.exists() => Err(Error::KeysSealed(format!(
                "the {} ({}) is sealed and the key-encryption key is not available: it is read \
                 from {}; a new key is not written in its place without it",
                secret.label(),
                sealed_path.display(),
                self.sealer.sources
            ))),
            None => write_atomic(&plain_path, bytes, PRIVATE)
                .map_err(Error::io("cannot write", &plain_path)),
        }
    }

    /// Seals every key still in a plain file; returns those it sealed. Needs the KEK.
    pub fn seal_plain_keys(&self) -> Result<Vec<Secret>> {
        if !self.sealing() {
            return Err(Error::KeysSealed(format!(
                "no key-encryption key to seal with: it is read from {}",
                self.sealer.sources
            )));
        }
        let mut sealed = Vec::new();
        for secret in Secret::ALL {
            if self.stored(secret) == Stored::Plain {
                let bytes = self.require(secret)?;
                self.write(secret, &bytes)?;
                sealed.push(secret);
            }
        }
        Ok(sealed)
    }
}

/// Overwrites a plain key file with zeros before removing it. On flash storage the old blocks
/// may survive in the card's spare area: seal keys before they are first written (a KEK at
/// `rxgate init`) where that matters.
fn remove_plain(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            let zeros = vec![0u8; usize::try_from(meta.len()).unwrap_or(0)];
            let _ = std::fs::write(path, &zeros)
                .and_then(|()| std::fs::File::open(path).and_then(|f| f.sync_all()));
            std::fs::remove_file(path).map_err(Error::io("cannot remove", path))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot read", path)(e)),
    }
}

fn read_kek(path: &Path) -> Result<LessSafeKey> {
    let material = Zeroizing::new(std::fs::read(path).map_err(|e| {
        Error::KeysSealed(format!(
            "cannot read the key-encryption key {}: {e}",
            path.display()
        ))
    })?);
    if material.len() < KEK_MIN_BYTES {
        return Err(Error::KeysSealed(format!(
            "the key-encryption key {} holds {} bytes, fewer than {KEK_MIN_BYTES}: make one with \
             `rxgate keys generate-kek FILE`",
            path.display(),
            material.len()
        )));
    }
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"rxgate kek v1");
    let prk = salt.extract(&material);
    let okm = prk
        .expand(&[b"chacha20-poly1305"], &CHACHA20_POLY1305)
        .map_err(|_| Error::Invalid("cannot derive the key-encryption key".to_owned()))?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

fn seal(kek: &LessSafeKey, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| Error::Invalid("the system random number generator failed".to_owned()))?;
    let mut body = plain.to_vec();
    kek.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut body,
    )
    .map_err(|_| Error::Invalid("cannot seal a key".to_owned()))?;
    let mut out = nonce.to_vec();
    out.extend(body);
    Ok(out)
}

fn open(kek: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut body = Zeroizing::new(body.to_vec());
    let plain_len = kek
        .open_in_place(nonce, Aad::from(aad), &mut body)
        .ok()?
        .len();
    body.truncate(plain_len);
    Some(body)
}

/// Writes a new KEK: 32 random bytes, mode 0600. Refuses to replace an existing file: keys
/// sealed under it would no longer open.
pub fn generate_kek(path: &Path) -> Result<()> {
    if path.exists() {
        return Err(Error::Invalid(format!(
            "{} exists; a new key-encryption key would leave the keys sealed under it unreadable",
            path.display()
        )));
    }
    let mut kek = Zeroizing::new([0u8; 32]);
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), kek.as_mut())
        .map_err(|_| Error::Invalid("the system random number generator failed".to_owned()))?;
    write_atomic(path, kek.as_ref(), 0o400).map_err(Error::io("cannot write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(dir: &Path, kek: Option<&Path>) -> Keyring {
        let config = KeysConfig {
            credential: "rxgate-kek-test-absent".to_owned(),
            kek_file: kek.map(Path::to_owned),
        };
        Keyring::open(&DataPaths::new(dir), &config).unwrap()
    }

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data/ca")).unwrap();
        std::fs::create_dir_all(dir.path().join("data/tls")).unwrap();
        let kek = dir.path().join("kek");
        generate_kek(&kek).unwrap();
        (dir, kek)
    }

    #[test]
    fn a_key_written_with_a_kek_is_sealed_on_disk_and_reads_back_only_with_that_kek() {
        let (dir, kek) = setup();
        let data = dir.path().join("data");
        let ring = keyring(&data, Some(&kek));
        ring.write(Secret::CaKey, b"-----BEGIN PRIVATE KEY----- ca")
            .unwrap();
        assert_eq!(ring.stored(Secret::CaKey), Stored::Sealed);
        let on_disk = std::fs::read(data.join("ca/ca.key.sealed")).unwrap();
        assert!(!on_disk.windows(5).any(|w| w == b"BEGIN"));
        assert!(!data.join("ca/ca.key").exists());
        assert_eq!(
            ring.require(Secret::CaKey).unwrap().as_slice(),
            b"-----BEGIN PRIVATE KEY----- ca"
        );

        // The directory alone: refused, saying where the KEK is looked for.
        let err = keyring(&data, None).read(Secret::CaKey).unwrap_err();
        assert!(
            matches!(&err, Error::KeysSealed(m) if m.contains("CA key") && m.contains("rxgate-kek-test-absent") && m.contains("kek_file")),
            "{err}"
        );
        // Another KEK: refused.
        let other = dir.path().join("other");
        generate_kek(&other).unwrap();
        let err = keyring(&data, Some(&other))
            .read(Secret::CaKey)
            .unwrap_err();
        assert!(err.to_string().contains("another one"), "{err}");
    }

    #[test]
    fn a_sealed_key_renamed_into_another_keys_place_does_not_open() {
        let (dir, kek) = setup();
        let data = dir.path().join("data");
        let ring = keyring(&data, Some(&kek));
        ring.write(Secret::ServerKey, b"server").unwrap();
        std::fs::copy(
            data.join("tls/server.key.sealed"),
            data.join("ca/ca.key.sealed"),
        )
        .unwrap();
        assert!(ring.read(Secret::CaKey).is_err());
        assert_eq!(
            ring.require(Secret::ServerKey).unwrap().as_slice(),
            b"server"
        );
    }

    #[test]
    fn plain_keys_are_sealed_by_seal_plain_keys_and_their_plain_files_removed() {
        let (dir, kek) = setup();
        let data = dir.path().join("data");
        let plain = keyring(&data, None);
        plain.write(Secret::CaKey, b"ca").unwrap();
        plain.write(Secret::PseudonymKey, &[7u8; 32]).unwrap();
        assert_eq!(plain.stored(Secret::CaKey), Stored::Plain);
        assert!(
            plain.seal_plain_keys().is_err(),
            "no KEK, nothing to seal with"
        );

        let ring = keyring(&data, Some(&kek));
        assert_eq!(
            ring.seal_plain_keys().unwrap(),
            vec![Secret::CaKey, Secret::PseudonymKey]
        );
        assert_eq!(ring.stored(Secret::CaKey), Stored::Sealed);
        assert_eq!(ring.stored(Secret::ServerKey), Stored::Missing);
        assert!(!data.join("pseudonym.key").exists());
        assert_eq!(
            ring.require(Secret::PseudonymKey).unwrap().as_slice(),
            &[7u8; 32]
        );
        assert!(ring.seal_plain_keys().unwrap().is_empty());
    }

    #[test]
    fn a_short_or_missing_kek_file_is_a_clear_error_and_an_existing_one_is_never_replaced() {
        let (dir, kek) = setup();
        let short = dir.path().join("short");
        std::fs::write(&short, b"too short").unwrap();
        let open = |file: &Path| {
            Keyring::open(
                &DataPaths::new(dir.path()),
                &KeysConfig {
                    credential: "absent".to_owned(),
                    kek_file: Some(file.to_owned()),
                },
            )
        };
        let err = open(&short).err().unwrap().to_string();
        assert!(err.contains("fewer than 32"), "{err}");
        let err = open(&dir.path().join("nope")).err().unwrap().to_string();
        assert!(err.contains("cannot read the key-encryption key"), "{err}");
        let before = std::fs::read(&kek).unwrap();
        assert!(generate_kek(&kek).is_err());
        assert_eq!(std::fs::read(&kek).unwrap(), before);
    }

    #[test]
    fn sealed_text_opens_only_for_its_context_and_plain_text_passes_through() {
        let (dir, kek) = setup();
        let sealer = keyring(&dir.path().join("data"), Some(&kek)).sealer();
        let stored = sealer
            .seal_text("totp:alvarez", "JBSWY3DPEHPK3PXP")
            .unwrap();
        assert!(Sealer::is_sealed_text(&stored));
        assert!(!stored.contains("JBSWY3DPEHPK3PXP"));
        assert_eq!(
            sealer.open_text("totp:alvarez", &stored).unwrap().as_str(),
            "JBSWY3DPEHPK3PXP"
        );
        assert!(sealer.open_text("totp:tom", &stored).is_err());
        assert_eq!(
            sealer
                .open_text("totp:tom", "PLAINSECRET")
                .unwrap()
                .as_str(),
            "PLAINSECRET"
        );
        let none = Sealer::default();
        assert_eq!(none.seal_text("totp:tom", "ABC").unwrap(), "ABC");
        assert!(matches!(
            none.open_text("totp:alvarez", &stored),
            Err(Error::KeysSealed(_))
        ));
    }
}
