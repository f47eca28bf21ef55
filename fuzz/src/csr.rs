//! What an accepted certificate signing request must satisfy, and what the gateway then does
//! with it: issue a device certificate from its own profile.

use std::sync::OnceLock;
use std::time::Duration;

use rxgate_certs::{CertificateAuthority, CheckedCsr, DeviceProfile, KeyKind};
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

fn now() -> OffsetDateTime {
    // Fixed, so a crash reproduces whatever the day.
    OffsetDateTime::from_unix_timestamp(1_780_000_000).expect("a valid timestamp")
}

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| {
        CertificateAuthority::generate("rxgate fuzz CA", now() - Duration::from_secs(86_400))
            .expect("a CA")
    })
}

/// Checks the invariants of a CSR that `check_csr` accepted, then issues a certificate for it
/// as enrollment does, when its common name is a valid device id.
pub fn accepted(csr: &CheckedCsr) {
    assert!(!csr.common_name.is_empty(), "accepted with an empty CN");
    match csr.key {
        KeyKind::EcdsaP256 | KeyKind::EcdsaP384 | KeyKind::Ed25519 => {}
        KeyKind::Rsa { bits } => assert!(
            (2048..=8192).contains(&bits),
            "accepted an RSA key of {bits} bits"
        ),
    }
    let spki = csr.public_key_der();
    let (rest, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki)
        .expect("the re-encoded public key parses");
    assert!(rest.is_empty());
    assert_eq!(parsed.subject_public_key.unused_bits, 0);

    if rxgate_certs::validate_device_id(&csr.common_name).is_err() {
        return;
    }
    let profile = DeviceProfile {
        site: "store-0042".to_owned(),
        kind: "fridge".to_owned(),
        device_id: csr.common_name.clone(),
        validity: Duration::from_secs(30 * 86_400),
        backdate: Duration::from_secs(300),
        now: now(),
    };
    let issued = ca()
        .issue_device(csr, &profile)
        .unwrap_or_else(|e| panic!("an accepted CSR could not be issued: {e}"));
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&issued.der)
        .expect("the issued certificate parses");
    assert_eq!(
        cert.public_key().raw,
        &spki[..],
        "the certificate certifies another key than the CSR's"
    );
    assert!(!cert.is_ca(), "a device certificate with CA:TRUE");
    let identity = rxgate_certs::device_identity(&issued.der).expect("the gateway reads it back");
    assert_eq!(identity.device_id, csr.common_name);
}
