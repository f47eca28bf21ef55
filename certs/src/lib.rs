//! rxgate's PKI: the certificate authority, checks of the certificate signing requests devices
//! send, the certificate profiles the gateway issues, and EST's wire formats (base64 DER PKCS#10
//! in, base64 DER PKCS#7 certs-only out).
//!
//! The rule this crate exists to keep: **a certificate is built from rxgate's own profile, never
//! from what a request asks for.** rcgen signs whatever a CSR's parameters say (including
//! `CA:TRUE`), so [`check_csr`] keeps only the public key and the common name, and
//! [`CertificateAuthority::issue_device`] builds everything else from a [`DeviceProfile`].
//!
//! Nothing here reads the clock: every issuing function takes `now`.

#![warn(missing_docs)]

pub mod base64;
mod ca;
mod crl;
mod csr;
mod error;
mod identity;
mod names;
mod pem;
pub mod pkcs7;

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

pub use ca::{CertificateAuthority, DeviceProfile, IssuedCert, IssuedKeyPair};
pub use crl::{CrlContent, RevocationReason, RevokedCert, crl_distribution_uris};
pub use csr::{CheckedCsr, KeyAlg, KeyKind, check_csr, new_device_csr};
pub use error::{CsrError, Error};
pub use identity::{
    DEVICE_URI_PREFIX, DeviceIdentity, device_identity, device_uri, fingerprint_sha256,
};
pub use names::{KINDS, validate_device_id, validate_kind, validate_site};

/// Certificates as concatenated PEM blocks (64-column lines, `\n` line ends), as written to
/// `ca.crt` and `device.crt` files.
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    let mut out = String::new();
    for cert in certs {
        pem::encode_into(&mut out, "CERTIFICATE", cert);
    }
    out
}

/// Orders certificates bottom-up: the one that issued none of the others first, then its issuer,
/// and so on, matching subject and issuer names (signatures are not checked). Certificates that
/// do not fit the path, or do not parse, follow in their original order.
///
/// PKCS#7 sets are sorted by encoding ([`pkcs7`]), so a reader uses this to recover the order of
/// an EST `cacerts` response (the issuing CA first).
pub fn order_chain(certs: Vec<CertificateDer<'static>>) -> Vec<CertificateDer<'static>> {
    struct Names {
        subject: Vec<u8>,
        issuer: Vec<u8>,
    }
    let names: Vec<Option<Names>> = certs
        .iter()
        .map(|der| {
            X509Certificate::from_der(der).ok().map(|(_, x)| Names {
                subject: x.subject().as_raw().to_vec(),
                issuer: x.issuer().as_raw().to_vec(),
            })
        })
        .collect();
    let issued_another = |i: usize| {
        let Some(me) = &names[i] else { return false };
        names.iter().enumerate().any(|(j, other)| {
            j != i
                && other
                    .as_ref()
                    .is_some_and(|o| o.issuer == me.subject && o.subject != me.subject)
        })
    };

    let mut order: Vec<usize> = Vec::with_capacity(certs.len());
    let mut current = (0..certs.len()).find(|&i| names[i].is_some() && !issued_another(i));
    while let Some(i) = current {
        order.push(i);
        let Some(me) = &names[i] else { break };
        if me.issuer == me.subject {
            break;
        }
        current = (0..certs.len()).find(|&j| {
            !order.contains(&j) && names[j].as_ref().is_some_and(|p| p.subject == me.issuer)
        });
    }
    let rest: Vec<usize> = (0..certs.len()).filter(|i| !order.contains(i)).collect();
    order.extend(rest);

    let mut slots: Vec<Option<CertificateDer<'static>>> = certs.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn order_chain_puts_the_issuing_ca_first_and_the_root_last() {
        let now = datetime!(2025-06-01 12:00:00 UTC);
        let root = CertificateAuthority::generate("root", now).unwrap();
        let server = root
            .issue_server(
                &["a.example".to_owned()],
                std::time::Duration::from_secs(60),
                now,
            )
            .unwrap();
        let root_der = CertificateDer::from(root.cert_der().to_vec());
        let stranger = CertificateDer::from(b"not a certificate".to_vec());
        let shuffled = vec![stranger.clone(), root_der.clone(), server.cert.der.clone()];
        assert_eq!(
            order_chain(shuffled),
            vec![server.cert.der, root_der, stranger]
        );
    }
}
