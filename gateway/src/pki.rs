//! The gateway's own PKI material under `data_dir`: `rxgate init`, loading at start-up, and
//! keeping the server certificate fresh.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use rxgate_certs::CertificateAuthority;
use time::OffsetDateTime;

use crate::audit::{self, Kind, Record};
use crate::clock::{Clock, ExpiryReference};
use crate::error::{Error, Result};
use crate::keys::{Keyring, KeysConfig, Secret, Stored};
use crate::paths::{DataPaths, create_private_dir, write_atomic};
use crate::store::Store;

const PUBLIC: u32 = 0o644;

/// Options of `rxgate init`.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// Replace an existing CA.
    pub force: bool,
    /// Import this intermediate CA (PEM) instead of creating a root.
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    /// Parents of the imported CA, up to the pharmacy chain's root (PEM).
    pub ca_chain: Option<PathBuf>,
}

/// What `rxgate init` did.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub data_dir: PathBuf,
    pub imported: bool,
    pub ca_subject: String,
    pub ca_sha256: String,
    pub server_names: Vec<String>,
    /// Whether the keys were sealed (a key-encryption key was at hand).
    pub sealed: bool,
}

fn read(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(Error::io("cannot read", path))
}

/// What the gateway's PKI is told by the config (`Config::pki`).
#[derive(Debug, Clone)]
pub struct PkiSettings {
    pub paths: DataPaths,
    /// `[gateway].site`, named in a generated CA's subject.
    pub site: String,
    /// `[gateway].server_names`, beyond `localhost` and `127.0.0.1`.
    pub server_names: Vec<String>,
    /// `[enroll].server_cert_validity`.
    pub server_cert_validity: Duration,
    /// Where the CA's CRL is published ([`crl_uri`]); `None` when the EST port is not fixed.
    pub crl_uri: Option<String>,
    /// `[keys]`: the key-encryption key that seals the keys (`keys`).
    pub keys: KeysConfig,
}

impl PkiSettings {
    /// The keys under `data_dir`, with the key-encryption key if one is at hand.
    pub fn keyring(&self) -> Result<Keyring> {
        Keyring::open(&self.paths, &self.keys)
    }
}

/// The path of the CRL on the EST listener.
pub const CRL_PATH: &str = "/crl";

/// The CRL distribution point written into every certificate the CA issues:
/// `https://<host>:<port>/crl`, where host is the first of `[gateway].server_names` (the name
/// devices are told to use), or `localhost` when none is configured, and port is the port of
/// `[enroll].listen`. `None` when that port is 0: an ephemeral port changes at every start, so no
/// URI written into a certificate would stay right.
pub fn crl_uri(server_names: &[String], est_listen: std::net::SocketAddr) -> Option<String> {
    if est_listen.port() == 0 {
        return None;
    }
    let host = server_names.first().map_or("localhost", String::as_str);
    let host = match host.parse::<std::net::Ipv6Addr>() {
        Ok(v6) => format!("[{v6}]"),
        Err(_) => host.to_owned(),
    };
    Some(format!("https://{host}:{}{CRL_PATH}", est_listen.port()))
}

/// Points `ca` at its CRL, unless it may not sign CRLs (an imported intermediate whose keyUsage
/// lacks cRLSign): then certificates name no distribution point, rather than one that never
/// answers.
fn with_crl(ca: CertificateAuthority, uri: Option<&str>) -> Result<CertificateAuthority> {
    if uri.is_some() && !ca.signs_crls() {
        tracing::warn!(
            ca = ca.subject(),
            "The CA may not sign CRLs (keyUsage lacks cRLSign): no CRL is published and \
             certificates name no CRL distribution point."
        );
        return Ok(ca);
    }
    Ok(ca.with_crl_uri(uri.map(str::to_owned))?)
}

/// `rxgate init`: creates `data_dir` (0700), the CA, the server certificate and the store.
pub fn init(config: &PkiSettings, options: &InitOptions, clock: &dyn Clock) -> Result<InitReport> {
    let paths = config.paths.clone();
    if options.ca_cert.is_some() != options.ca_key.is_some() {
        return Err(Error::Invalid(
            "--ca-cert and --ca-key go together".to_owned(),
        ));
    }
    if options.ca_chain.is_some() && options.ca_cert.is_none() {
        return Err(Error::Invalid(
            "--ca-chain is only meaningful with --ca-cert and --ca-key".to_owned(),
        ));
    }
    if paths.ca_cert().exists() && !options.force {
        return Err(Error::AlreadyInitialised {
            data_dir: paths.root.clone(),
        });
    }
    let keys = config.keyring()?;
    // Before anything is written: a sealed data_dir without its key-encryption key is refused
    // here, not halfway (the pseudonym key is kept across --force, so it must open).
    for secret in Secret::ALL {
        if keys.stored(secret) == Stored::Sealed {
            keys.require(secret)?;
        }
    }
    for dir in [
        paths.root.clone(),
        paths.root.join("ca"),
        paths.root.join("tls"),
    ] {
        create_private_dir(&dir, 0o700).map_err(Error::io("cannot create", &dir))?;
    }
    // The store first: if a daemon holds it, fail before touching any key.
    let store = Store::create(&paths.store())?;
    let now = clock.now();

    let ca = match (&options.ca_cert, &options.ca_key) {
        (Some(cert), Some(key)) => {
            let chain = options.ca_chain.as_deref().map(read).transpose()?;
            let key = zeroize::Zeroizing::new(read(key)?);
            CertificateAuthority::from_pem(&read(cert)?, &key, chain.as_deref())?
        }
        _ => CertificateAuthority::generate(&format!("rxgate CA {}", config.site), now)?,
    };
    let ca = with_crl(ca, config.crl_uri.as_deref())?;
    keys.write(
        Secret::CaKey,
        zeroize::Zeroizing::new(ca.key_pem()).as_bytes(),
    )?;
    write_atomic(&paths.ca_cert(), ca.cert_pem().as_bytes(), PUBLIC)
        .map_err(Error::io("cannot write", paths.ca_cert()))?;
    let parents = rxgate_certs::certs_to_pem(&ca.chain_der()[1..]);
    if parents.is_empty() {
        match std::fs::remove_file(paths.ca_chain()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("cannot remove", paths.ca_chain())(e)),
        }
    } else {
        write_atomic(&paths.ca_chain(), parents.as_bytes(), PUBLIC)
            .map_err(Error::io("cannot write", paths.ca_chain()))?;
    }
    let names = server_names(config);
    issue_server_cert(&keys, &paths, &ca, &names, config.server_cert_validity, now)?;
    // Kept across --force: a new key would give every patient a new pseudonym.
    pseudonym_key(&keys)?;

    let ca_sha256 = rxgate_certs::fingerprint_sha256(ca.cert_der());
    let imported = options.ca_cert.is_some();
    store.write(|txn| {
        audit::append(
            txn,
            now,
            clock.synced(),
            Record::new(Kind::GatewayInitialised, crate::people::current_user()).detail(
                serde_json::json!({
                    "ca_sha256": ca_sha256,
                    "imported_ca": imported,
                    "replaced": options.force,
                    "server_names": names,
                }),
            ),
        )
    })?;
    Ok(InitReport {
        data_dir: paths.root.clone(),
        imported,
        ca_subject: ca.subject().to_owned(),
        ca_sha256,
        server_names: names,
        sealed: keys.sealing(),
    })
}

/// The names in the server certificate: `localhost`, `127.0.0.1`, then `[gateway].server_names`.
pub fn server_names(config: &PkiSettings) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    for name in &config.server_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

fn issue_server_cert(
    keys: &Keyring,
    paths: &DataPaths,
    ca: &CertificateAuthority,
    names: &[String],
    validity: Duration,
    now: OffsetDateTime,
) -> Result<()> {
    let issued = ca.issue_server(names, validity, now)?;
    keys.write(
        Secret::ServerKey,
        zeroize::Zeroizing::new(issued.key_pem).as_bytes(),
    )?;
    write_atomic(&paths.server_cert(), issued.cert.pem.as_bytes(), PUBLIC)
        .map_err(Error::io("cannot write", paths.server_cert()))?;
    Ok(())
}

/// The PKI material a running gateway needs.
pub struct GatewayPki {
    pub ca: Arc<CertificateAuthority>,
    /// Server certificate followed by the CA chain.
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: PrivateKeyDer<'static>,
}

impl GatewayPki {
    /// Loads the CA and server certificate, re-issuing the server certificate first when it is
    /// missing, lacks a configured name, names another CRL distribution point than the CA's
    /// ([`crl_uri`]), or has less than a tenth of its lifetime left. On an
    /// unsynchronised clock only expiry before the time floor counts (`clock::floor`).
    pub fn load(config: &PkiSettings, keys: &Keyring, clock: &dyn Clock) -> Result<GatewayPki> {
        let paths = config.paths.clone();
        if !paths.ca_cert().exists() {
            return Err(Error::NotInitialised {
                missing: paths.ca_cert(),
            });
        }
        let chain = paths.ca_chain();
        let chain = if chain.exists() {
            Some(read(&chain)?)
        } else {
            None
        };
        let ca_key = keys.require(Secret::CaKey)?;
        let ca_key = std::str::from_utf8(&ca_key)
            .map_err(|_| Error::Invalid("the CA key is not PEM text".to_owned()))?;
        let ca =
            CertificateAuthority::from_pem(&read(&paths.ca_cert())?, ca_key, chain.as_deref())?;
        let ca = with_crl(ca, config.crl_uri.as_deref())?;
        let names = server_names(config);
        let validity = config.server_cert_validity;
        if let Some(reason) =
            server_cert_needs_renewal(keys, &paths, &names, ca.crl_uri(), validity, clock)
        {
            tracing::info!(reason, "Issuing a new server certificate.");
            issue_server_cert(keys, &paths, &ca, &names, validity, clock.now())?;
        }
        let mut server_chain = crate::tls::load_certs(&paths.server_cert())?;
        server_chain.truncate(1);
        server_chain.extend(ca.chain_der());
        let server_key = crate::tls::parse_key(
            &keys.require(Secret::ServerKey)?,
            &paths.server_key().display().to_string(),
        )?;
        Ok(GatewayPki {
            ca: Arc::new(ca),
            server_chain,
            server_key,
        })
    }
}

fn server_cert_needs_renewal(
    keys: &Keyring,
    paths: &DataPaths,
    names: &[String],
    crl_uri: Option<&str>,
    validity: Duration,
    clock: &dyn Clock,
) -> Option<&'static str> {
    if !paths.server_cert().exists() || keys.stored(Secret::ServerKey) == Stored::Missing {
        return Some("server certificate missing");
    }
    let Ok(certs) = crate::tls::load_certs(&paths.server_cert()) else {
        return Some("server certificate unreadable");
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&certs[0]) else {
        return Some("server certificate unparsable");
    };
    let mut present: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(n) => present.push((*n).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*ip) {
                        present.push(std::net::Ipv4Addr::from(v4).to_string());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*ip) {
                        present.push(std::net::Ipv6Addr::from(v6).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    if names.iter().any(|n| !present.contains(n)) {
        return Some("server_names changed");
    }
    let crl_uris = rxgate_certs::crl_distribution_uris(&certs[0]).unwrap_or_default();
    if crl_uris.iter().map(String::as_str).ne(crl_uri) {
        return Some("CRL distribution point changed");
    }
    let not_after = cert.validity().not_after.timestamp();
    match clock.reading().expiry_reference() {
        Some(ExpiryReference::Clock(now))
            if not_after - now.unix_timestamp() < (validity.as_secs() / 10) as i64 =>
        {
            Some("server certificate close to expiry")
        }
        // Unsynchronised: only what is certainly expired; the 10% margin waits for a real clock.
        Some(ExpiryReference::Floor(floor)) if not_after < floor.unix_timestamp() => {
            Some("server certificate expired before the time floor")
        }
        _ => None,
    }
}

/// The HMAC key that turns patient identifiers into pseudonyms: `data_dir/pseudonym.key`
/// (sealed: `pseudonym.key.sealed`), 32 random bytes made on first use. It never leaves the
/// gateway; losing it means the same patient gets a new pseudonym from then on, so back it up
/// with the CA.
pub fn pseudonym_key(keys: &Keyring) -> Result<ring::hmac::Key> {
    let bytes = match keys.read(Secret::PseudonymKey)? {
        Some(bytes) if bytes.len() == 32 => bytes,
        Some(bytes) => {
            return Err(Error::Invalid(format!(
                "the pseudonym key holds {} bytes, not 32: it is not a pseudonym key (restore it \
                 from a backup)",
                bytes.len()
            )));
        }
        None => {
            let mut key = zeroize::Zeroizing::new(vec![0u8; 32]);
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).map_err(
                |_| Error::Invalid("the system random number generator failed".to_owned()),
            )?;
            keys.write(Secret::PseudonymKey, &key)?;
            key
        }
    };
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use time::macros::datetime;

    use super::*;
    use crate::clock::ManualClock;

    fn settings(dir: &std::path::Path, crl_uri: Option<&str>) -> PkiSettings {
        PkiSettings {
            paths: DataPaths::new(dir),
            site: "store-1".to_owned(),
            server_names: Vec::new(),
            server_cert_validity: Duration::from_secs(90 * 86_400),
            crl_uri: crl_uri.map(str::to_owned),
            keys: KeysConfig::default(),
        }
    }

    fn server_crl_uris(settings: &PkiSettings) -> Vec<String> {
        let certs = crate::tls::load_certs(&settings.paths.server_cert()).unwrap();
        rxgate_certs::crl_distribution_uris(&certs[0]).unwrap()
    }

    #[test]
    fn crl_uri_names_the_first_server_name_or_localhost_and_the_est_port_and_is_none_on_port_0() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            crl_uri(&[], at("0.0.0.0:8443")).as_deref(),
            Some("https://localhost:8443/crl")
        );
        assert_eq!(
            crl_uri(
                &["rxgate.local".to_owned(), "10.0.0.2".to_owned()],
                at("0.0.0.0:9443")
            )
            .as_deref(),
            Some("https://rxgate.local:9443/crl")
        );
        assert_eq!(
            crl_uri(&["fd00::1".to_owned()], at("[::]:8443")).as_deref(),
            Some("https://[fd00::1]:8443/crl")
        );
        assert_eq!(
            crl_uri(&["rxgate.local".to_owned()], at("127.0.0.1:0")),
            None
        );
    }

    #[test]
    fn load_reissues_the_server_certificate_when_its_crl_distribution_point_changed() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(datetime!(2026-03-01 12:00 UTC), true);
        let first = settings(dir.path(), Some("https://localhost:8443/crl"));
        init(&first, &InitOptions::default(), clock.as_ref()).unwrap();
        assert_eq!(server_crl_uris(&first), vec!["https://localhost:8443/crl"]);
        let loaded = GatewayPki::load(&first, &first.keyring().unwrap(), clock.as_ref()).unwrap();
        assert_eq!(loaded.ca.crl_uri(), Some("https://localhost:8443/crl"));
        let before = std::fs::read(first.paths.server_cert()).unwrap();
        drop(loaded);
        GatewayPki::load(&first, &first.keyring().unwrap(), clock.as_ref()).unwrap();
        assert_eq!(std::fs::read(first.paths.server_cert()).unwrap(), before);

        let moved = settings(dir.path(), Some("https://localhost:9443/crl"));
        GatewayPki::load(&moved, &moved.keyring().unwrap(), clock.as_ref()).unwrap();
        assert_eq!(server_crl_uris(&moved), vec!["https://localhost:9443/crl"]);

        let none = settings(dir.path(), None);
        GatewayPki::load(&none, &none.keyring().unwrap(), clock.as_ref()).unwrap();
        assert_eq!(server_crl_uris(&none), Vec::<String>::new());
    }
}
