//! rustls client configurations for the three ways the EST client trusts a gateway.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::Error;

/// How the client decides that it talks to the right gateway.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// The server certificate must chain to one of these certificates (the gateway's CA, as
    /// returned by `cacerts`, or given by the installer).
    Roots(Vec<CertificateDer<'static>>),
    /// Accept any server certificate. Only for fetching `cacerts` during bootstrap (RFC 7030
    /// §4.1.1), whose result must then be checked out of band; never send credentials this way.
    InsecureBootstrap,
}

/// A device's certificate chain and key, for mutual TLS (`simplereenroll`).
pub struct ClientIdentity {
    /// The device certificate first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The device key.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

pub(crate) fn client_config(
    trust: ServerTrust,
    identity: Option<ClientIdentity>,
) -> Result<ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match trust {
        ServerTrust::Roots(certs) => {
            let mut roots = RootCertStore::empty();
            for cert in certs {
                roots.add(cert)?;
            }
            builder.with_root_certificates(roots)
        }
        ServerTrust::InsecureBootstrap => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider))),
    };
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain, id.key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts any server certificate, but still checks that the server holds its key, so the
/// bootstrap fetch is at least a real TLS session with whoever answered.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
