//! Enrollment and renewal as a device does them: key, CSR, EST exchange, files on disk.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use rxgate_certs::{KeyAlg, fingerprint_sha256, new_device_csr};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{ClientIdentity, Error, EstClient, ServerTrust};

/// The device key, PKCS#8 PEM, mode 0600.
pub const KEY_FILE: &str = "device.key";
/// The device certificate, PEM.
pub const CERT_FILE: &str = "device.crt";
/// The gateway's CA chain as returned by `cacerts`, PEM, issuing CA first.
pub const CA_FILE: &str = "ca.crt";

/// How [`enroll`] comes to trust the gateway.
#[derive(Debug, Clone)]
pub enum Trust {
    /// A PEM file with the gateway's CA certificate (`rxgate-sim enroll --ca FILE`).
    CaFile(PathBuf),
    /// The gateway's CA certificates, already in memory (for in-process use).
    CaCerts(Vec<CertificateDer<'static>>),
    /// Fetch `cacerts` without verifying the server and accept the CA if one of its certificates
    /// has this SHA-256 fingerprint (hex, colons and case ignored).
    Fingerprint(String),
    /// Fetch `cacerts` without verifying the server and accept whatever CA it returns; its
    /// fingerprints are reported (RFC 7030 §4.1.1 leaves the check to the user). Only on a
    /// network you control.
    InsecureBootstrap,
}

/// What [`enroll`] needs.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// The gateway's EST base URL, like `https://127.0.0.1:8443`.
    pub est_url: String,
    /// The device id; also the HTTP Basic user.
    pub device_id: String,
    /// The one-time enrollment token; the HTTP Basic password.
    pub token: String,
    /// Where to write the key, certificate and CA chain (created if missing, mode 0700).
    pub out_dir: PathBuf,
    /// How to trust the gateway.
    pub trust: Trust,
    /// The key type to generate.
    pub key_alg: KeyAlg,
    /// The limit for each request.
    pub timeout: Duration,
}

/// A CA certificate received from `cacerts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFingerprint {
    /// Its subject, like `O=rxgate, CN=rxgate CA store-0042`.
    pub subject: String,
    /// Its SHA-256 fingerprint, colon-separated uppercase hex as openssl prints it.
    pub sha256: String,
}

/// The result of a successful [`enroll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolledPaths {
    /// The device key file.
    pub key: PathBuf,
    /// The device certificate file.
    pub cert: PathBuf,
    /// The CA chain file.
    pub ca: PathBuf,
    /// The certificate's serial, lowercase hex.
    pub serial: String,
    /// The end of the certificate's validity.
    pub not_after: OffsetDateTime,
    /// The CA certificates received, with fingerprints to compare out of band.
    pub ca_fingerprints: Vec<CaFingerprint>,
    /// Whether the CA was fetched without verifying the server.
    pub bootstrapped: bool,
}

/// Enrolls a device: generates a key and CSR, fetches the CA chain (`cacerts`), sends the CSR
/// with the token (`simpleenroll`) to a server verified against that chain, and writes
/// `device.key` (0600), `device.crt` and `ca.crt` into `out_dir`, each atomically.
pub async fn enroll(opts: EnrollOptions) -> Result<EnrolledPaths, Error> {
    rxgate_certs::validate_device_id(&opts.device_id)?;
    let (key_pem, csr_der) = new_device_csr(&opts.device_id, opts.key_alg)?;

    let (chain, bootstrapped) = match &opts.trust {
        Trust::CaFile(path) => {
            let roots = read_certs(path)?;
            let client = EstClient::new(&opts.est_url, ServerTrust::Roots(roots), None)?
                .with_timeout(opts.timeout);
            (client.cacerts().await?, false)
        }
        Trust::CaCerts(roots) => {
            let client = EstClient::new(&opts.est_url, ServerTrust::Roots(roots.clone()), None)?
                .with_timeout(opts.timeout);
            (client.cacerts().await?, false)
        }
        Trust::Fingerprint(expected) => {
            let chain = bootstrap_cacerts(&opts).await?;
            check_fingerprint(&chain, expected)?;
            (chain, false)
        }
        Trust::InsecureBootstrap => (bootstrap_cacerts(&opts).await?, true),
    };
    let ca_fingerprints = fingerprints(&chain);
    if bootstrapped {
        for ca in &ca_fingerprints {
            tracing::warn!(
                subject = %ca.subject,
                sha256 = %ca.sha256,
                "Trusting an unverified CA fetched from the gateway; compare its fingerprint with `rxgate` on the gateway."
            );
        }
    }

    let client = EstClient::new(&opts.est_url, ServerTrust::Roots(chain.clone()), None)?
        .with_timeout(opts.timeout);
    let cert = client
        .simple_enroll(&opts.device_id, &opts.token, &csr_der)
        .await?;
    let (serial, not_after) = describe(&cert)?;

    let dir = opts.out_dir.clone();
    let files = vec![
        (KEY_FILE, key_pem.as_bytes().to_vec(), 0o600),
        (
            CERT_FILE,
            rxgate_certs::certs_to_pem(&[cert]).into_bytes(),
            0o644,
        ),
        (
            CA_FILE,
            rxgate_certs::certs_to_pem(&chain).into_bytes(),
            0o644,
        ),
    ];
    drop(key_pem);
    let paths = write_files(dir, files).await?;
    Ok(EnrolledPaths {
        key: paths[0].clone(),
        cert: paths[1].clone(),
        ca: paths[2].clone(),
        serial,
        not_after,
        ca_fingerprints,
        bootstrapped,
    })
}

async fn bootstrap_cacerts(opts: &EnrollOptions) -> Result<Vec<CertificateDer<'static>>, Error> {
    EstClient::new(&opts.est_url, ServerTrust::InsecureBootstrap, None)?
        .with_timeout(opts.timeout)
        .cacerts()
        .await
}

fn check_fingerprint(chain: &[CertificateDer<'static>], expected: &str) -> Result<(), Error> {
    let normalize = |s: &str| -> String {
        s.chars()
            .filter(char::is_ascii_hexdigit)
            .map(|c| c.to_ascii_uppercase())
            .collect()
    };
    let want = normalize(expected);
    let got: Vec<String> = chain.iter().map(|c| fingerprint_sha256(c)).collect();
    if got.iter().any(|fp| normalize(fp) == want) {
        Ok(())
    } else {
        Err(Error::FingerprintMismatch {
            expected: expected.to_owned(),
            got: got.join(", "),
        })
    }
}

fn fingerprints(chain: &[CertificateDer<'static>]) -> Vec<CaFingerprint> {
    chain
        .iter()
        .map(|der| CaFingerprint {
            subject: X509Certificate::from_der(der)
                .map(|(_, x)| x.subject().to_string())
                .unwrap_or_else(|_| "(unparsable certificate)".to_owned()),
            sha256: fingerprint_sha256(der),
        })
        .collect()
}

/// What [`renew`] needs.
#[derive(Debug, Clone)]
pub struct RenewOptions {
    /// The gateway's EST base URL, like `https://127.0.0.1:8443`.
    pub est_url: String,
    /// The folder [`enroll`] wrote: `device.key`, `device.crt`, `ca.crt`.
    pub dir: PathBuf,
    /// The key type to generate for the new certificate.
    pub key_alg: KeyAlg,
    /// Renew only if the current certificate ends within this time of `now`.
    pub if_expiring_within: Option<Duration>,
    /// The current time.
    pub now: OffsetDateTime,
    /// The limit for each request.
    pub timeout: Duration,
}

/// What [`renew`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewOutcome {
    /// A new key and certificate replaced the old ones.
    Renewed {
        /// The new certificate's serial.
        serial: String,
        /// The new certificate's end of validity.
        not_after: OffsetDateTime,
        /// The old certificate's end of validity.
        previous_not_after: OffsetDateTime,
    },
    /// The current certificate is valid for longer than `if_expiring_within`; nothing was done.
    NotDue {
        /// The current certificate's end of validity.
        not_after: OffsetDateTime,
    },
}

/// Renews a device certificate: authenticates with the current `device.crt` and `device.key`
/// over mutual TLS, verifies the gateway with `ca.crt`, sends a CSR for a fresh key
/// (`simplereenroll`), and replaces `device.key`, then `device.crt`, each atomically.
///
/// The two files are replaced one after the other: a crash between the two renames leaves the new
/// key beside the old certificate, and the device must then enroll again.
pub async fn renew(opts: RenewOptions) -> Result<RenewOutcome, Error> {
    let cert_path = opts.dir.join(CERT_FILE);
    let key_path = opts.dir.join(KEY_FILE);
    let chain = read_certs(&cert_path)?;
    let roots = read_certs(&opts.dir.join(CA_FILE))?;
    let key_text = zeroize::Zeroizing::new(read_text(&key_path)?);
    let key = PrivateKeyDer::from_pem_slice(key_text.as_bytes()).map_err(|e| Error::BadFile {
        path: key_path.clone(),
        detail: format!("no usable PEM private key ({e}); enroll the device again"),
    })?;

    let identity = rxgate_certs::device_identity(&chain[0]).map_err(|e| Error::BadFile {
        path: cert_path.clone(),
        detail: format!("{e}; enroll the device again"),
    })?;
    if let Some(window) = opts.if_expiring_within {
        let window = time::Duration::try_from(window).unwrap_or(time::Duration::MAX);
        if identity.not_after - opts.now > window {
            return Ok(RenewOutcome::NotDue {
                not_after: identity.not_after,
            });
        }
    }

    let (new_key_pem, csr_der) = new_device_csr(&identity.device_id, opts.key_alg)?;
    let client = EstClient::new(
        &opts.est_url,
        ServerTrust::Roots(roots),
        Some(ClientIdentity { chain, key }),
    )?
    .with_timeout(opts.timeout);
    let cert = client.simple_reenroll(&csr_der).await?;
    let (serial, not_after) = describe(&cert)?;

    let files = vec![
        (KEY_FILE, new_key_pem.as_bytes().to_vec(), 0o600),
        (
            CERT_FILE,
            rxgate_certs::certs_to_pem(&[cert]).into_bytes(),
            0o644,
        ),
    ];
    drop(new_key_pem);
    write_files(opts.dir.clone(), files).await?;
    Ok(RenewOutcome::Renewed {
        serial,
        not_after,
        previous_not_after: identity.not_after,
    })
}

/// The serial and end of validity of a certificate the gateway issued, which must be a device
/// certificate.
fn describe(cert: &CertificateDer<'_>) -> Result<(String, OffsetDateTime), Error> {
    let identity = rxgate_certs::device_identity(cert).map_err(|e| Error::BadResponse {
        detail: format!("the issued certificate is unusable: {e}"),
    })?;
    Ok((identity.serial, identity.not_after))
}

fn read_text(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let text = read_text(path)?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::BadFile {
            path: path.to_owned(),
            detail: format!("malformed PEM ({e})"),
        })?;
    if certs.is_empty() {
        return Err(Error::BadFile {
            path: path.to_owned(),
            detail: "no \"-----BEGIN CERTIFICATE-----\" block found; pass a PEM certificate file"
                .to_owned(),
        });
    }
    Ok(certs)
}

/// Writes each `(name, bytes, mode)` into `dir` atomically, in order, off the async runtime.
async fn write_files(
    dir: PathBuf,
    files: Vec<(&'static str, Vec<u8>, u32)>,
) -> Result<Vec<PathBuf>, Error> {
    tokio::task::spawn_blocking(move || {
        let mut files = files;
        create_private_dir(&dir)?;
        let mut paths = Vec::with_capacity(files.len());
        for (name, bytes, mode) in &mut files {
            let path = dir.join(*name);
            let result = write_atomic(&path, bytes, *mode);
            zeroize::Zeroize::zeroize(bytes);
            result?;
            paths.push(path);
        }
        sync_dir(&dir)?;
        Ok(paths)
    })
    .await
    .map_err(|e| Error::Io {
        action: "write into",
        path: PathBuf::new(),
        source: std::io::Error::other(e),
    })?
}

fn create_private_dir(dir: &Path) -> Result<(), Error> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
        .map_err(|source| Error::Io {
            action: "create",
            path: dir.to_owned(),
            source,
        })
}

/// Writes `path` through a temporary file in the same folder and a rename, so readers see the
/// old or the new content, never a mix; the file has `mode` from its creation on.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let io = |action, source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io("write", source));
    }
    fs::rename(&tmp, path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        io("replace", source)
    })
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            action: "sync",
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_creates_a_key_file_readable_only_by_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        write_atomic(&path, b"first", 0o600).unwrap();
        write_atomic(&path, b"second", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, [KEY_FILE]);
    }

    #[test]
    fn check_fingerprint_ignores_case_and_colons() {
        let now = time::macros::datetime!(2025-06-01 12:00:00 UTC);
        let ca = rxgate_certs::CertificateAuthority::generate("rxgate CA test", now).unwrap();
        let chain = ca.chain_der();
        let fp = fingerprint_sha256(ca.cert_der());
        check_fingerprint(&chain, &fp.replace(':', "").to_lowercase()).unwrap();
        let err = check_fingerprint(&chain, "00:11").unwrap_err();
        assert!(matches!(err, Error::FingerprintMismatch { .. }), "{err}");
    }

    #[test]
    fn read_certs_explains_an_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        fs::write(&path, "nothing here").unwrap();
        let err = read_certs(&path).unwrap_err();
        assert!(
            err.to_string()
                .contains("no \"-----BEGIN CERTIFICATE-----\""),
            "{err}"
        );
    }
}
