//! TLS for the gateway's listeners: server identity, and how device certificates are verified.
//!
//! Device certificates are verified in two steps. rustls checks the chain to the gateway's CA and
//! the handshake signature; the *time* check is left to the registry (`Registry::
//! check_certificate`, which both the device MQTT listener and EST `simplereenroll` call), which
//! knows whether the clock is synchronised and the gateway's time floor. A Pi that boots after a
//! power cut without network has a clock days behind or at 1970: a plain time check would refuse
//! every device (and the CA itself) until NTP answers. So the verifier here, when the only problem
//! is time, re-verifies the chain at an instant inside the certificate's own validity. The
//! registry then refuses a certificate whose notAfter is before the time floor even while the
//! clock is unsynchronised, and never refuses one for a notBefore in the "future".

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::error::{Error, Result};

/// The crypto provider every rxgate TLS endpoint uses (ring: small, builds for arm64 with gcc).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            Error::Invalid(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::Invalid(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// Parses a PEM private key (PKCS#8, SEC1 or PKCS#1) held in memory; `what` names it in errors.
pub fn parse_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| Error::Invalid(format!("cannot read a private key from {what}: {e}")))
}

/// Reads a PEM private key (PKCS#8, SEC1 or PKCS#1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        Error::Invalid(format!(
            "cannot read a private key from {}: {e}",
            path.display()
        ))
    })
}

/// A verifier for device certificates issued by the gateway's CA. See the module docs for why it
/// ignores time.
#[derive(Debug)]
pub struct DeviceCertVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    mandatory: bool,
}

impl DeviceCertVerifier {
    /// `roots`: the gateway's CA chain (the CA first). With `mandatory == false` a client may
    /// connect without a certificate (the EST listener, where enrollment uses a token).
    pub fn new(roots: &[CertificateDer<'static>], mandatory: bool) -> Result<Arc<Self>> {
        let mut store = RootCertStore::empty();
        for cert in roots {
            store.add(cert.clone()).map_err(|e| {
                Error::Invalid(format!("the CA certificate cannot be a trust anchor: {e}"))
            })?;
        }
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider());
        let builder = if mandatory {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        let inner = builder.build().map_err(|e| {
            Error::Invalid(format!("cannot build the client certificate verifier: {e}"))
        })?;
        Ok(Arc::new(DeviceCertVerifier { inner, mandatory }))
    }
}

fn is_time_error(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. }
        )
    )
}

/// One second after the certificate's notBefore: an instant at which it is valid.
fn inside_validity(cert: &CertificateDer<'_>) -> Option<UnixTime> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let not_before = parsed.validity().not_before.timestamp();
    u64::try_from(not_before + 1)
        .ok()
        .map(|s| UnixTime::since_unix_epoch(std::time::Duration::from_secs(s)))
}

impl ClientCertVerifier for DeviceCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Err(e) if is_time_error(&e) => match inside_validity(end_entity) {
                Some(at) => self.inner.verify_client_cert(end_entity, intermediates, at),
                None => Err(e),
            },
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A TLS 1.2/1.3 server config presenting `chain` (server certificate first, then the CA chain
/// so clients holding only the root can build the path) and verifying device certificates.
///
/// The server picks the cipher suite by its own order (the provider's: AES-256-GCM, AES-128-GCM,
/// ChaCha20-Poly1305, ECDHE only), not the client's: a client listing a weaker suite first
/// does not get it, and an audit (testssl.sh `cipher_order`) sees a configured order.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    verifier: Arc<DeviceCertVerifier>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Invalid(format!("TLS setup: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            Error::Invalid(format!(
                "the gateway's server certificate and key do not fit together: {e}"
            ))
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// The device certificate a TLS session was authenticated with, if any.
pub fn peer_certificate(conn: &rustls::ServerConnection) -> Option<CertificateDer<'static>> {
    conn.peer_certificates()
        .and_then(|certs| certs.first())
        .map(|c| c.clone().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::ring::cipher_suite;
    use rustls::{
        CipherSuite, ClientConfig, ClientConnection, ServerConnection, SupportedCipherSuite,
    };
    use rustls_pki_types::ServerName;
    use rxgate_certs::CertificateAuthority;

    fn gateway_server_config() -> (Arc<ServerConfig>, CertificateDer<'static>) {
        let now = time::OffsetDateTime::now_utc();
        let ca = CertificateAuthority::generate("rxgate CA test", now).unwrap();
        let issued = ca
            .issue_server(
                &["localhost".to_owned()],
                std::time::Duration::from_secs(86_400),
                now,
            )
            .unwrap();
        let mut chain = vec![issued.cert.der.clone()];
        chain.extend(ca.chain_der());
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
        let verifier = DeviceCertVerifier::new(&ca.chain_der(), false).unwrap();
        let config = server_config(chain, key, verifier, &[]).unwrap();
        (config, ca.chain_der()[0].clone())
    }

    /// The suite the gateway picks for a client that lists `offered` in that order.
    fn negotiated(
        version: &'static rustls::SupportedProtocolVersion,
        offered: Vec<SupportedCipherSuite>,
    ) -> CipherSuite {
        let (server_config, ca) = gateway_server_config();
        let mut roots = RootCertStore::empty();
        roots.add(ca).unwrap();
        let provider = CryptoProvider {
            cipher_suites: offered,
            ..rustls::crypto::ring::default_provider()
        };
        let client_config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = ClientConnection::new(Arc::new(client_config), name).unwrap();
        let mut server = ServerConnection::new(server_config).unwrap();
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            let mut flight = Vec::new();
            client.write_tls(&mut flight).unwrap();
            server.read_tls(&mut flight.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut flight = Vec::new();
            server.write_tls(&mut flight).unwrap();
            client.read_tls(&mut flight.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
        assert!(!server.is_handshaking(), "the handshake did not finish");
        server.negotiated_cipher_suite().unwrap().suite()
    }

    #[test]
    fn a_tls13_client_preferring_chacha20_gets_the_servers_first_choice_aes_256_gcm() {
        let suite = negotiated(
            &rustls::version::TLS13,
            vec![
                cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
                cipher_suite::TLS13_AES_128_GCM_SHA256,
                cipher_suite::TLS13_AES_256_GCM_SHA384,
            ],
        );
        assert_eq!(suite, CipherSuite::TLS13_AES_256_GCM_SHA384);
    }

    #[test]
    fn a_tls12_client_preferring_chacha20_gets_the_servers_first_choice_aes_256_gcm() {
        let suite = negotiated(
            &rustls::version::TLS12,
            vec![
                cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            ],
        );
        assert_eq!(suite, CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384);
    }
}
