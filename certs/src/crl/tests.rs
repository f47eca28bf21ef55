use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use time::macros::datetime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::x509::ReasonCode;

use super::*;
use crate::{DeviceProfile, KeyAlg, check_csr, new_device_csr};

const NOW: OffsetDateTime = datetime!(2025-06-01 12:00:00 UTC);
const URI: &str = "https://rxgate.local:8443/crl";

fn ca() -> CertificateAuthority {
    CertificateAuthority::generate("rxgate CA store-0042", NOW).unwrap()
}

fn content(revoked: Vec<RevokedCert>) -> CrlContent {
    CrlContent {
        number: 7,
        this_update: NOW,
        next_update: NOW + time::Duration::hours(24),
        revoked,
    }
}

fn device_cert(ca: &CertificateAuthority) -> crate::IssuedCert {
    let (_, der) = new_device_csr("fridge-01", KeyAlg::P256).unwrap();
    let csr = check_csr(&der).unwrap();
    ca.issue_device(
        &csr,
        &DeviceProfile {
            site: "store-0042".to_owned(),
            kind: "fridge".to_owned(),
            device_id: "fridge-01".to_owned(),
            validity: Duration::from_secs(86_400),
            backdate: Duration::from_secs(60),
            now: NOW,
        },
    )
    .unwrap()
}

#[test]
fn issue_crl_lists_each_serial_with_its_time_and_reason_signed_by_the_ca() {
    let ca = ca();
    let revoked = vec![
        RevokedCert {
            serial: "7f0102030405060708090a0b0c0d0e0f".to_owned(),
            revoked_at: datetime!(2025-05-31 10:00:00 UTC),
            reason: Some(RevocationReason::Superseded),
        },
        RevokedCert {
            serial: "0102".to_owned(),
            revoked_at: datetime!(2025-05-30 09:30:00 UTC),
            reason: None,
        },
    ];
    let der = ca.issue_crl(&content(revoked)).unwrap();

    let (rest, crl) = CertificateRevocationList::from_der(&der).unwrap();
    assert!(rest.is_empty());
    let (_, ca_x509) = X509Certificate::from_der(ca.cert_der()).unwrap();
    crl.verify_signature(ca_x509.public_key()).unwrap();
    assert_eq!(crl.issuer().as_raw(), ca_x509.subject().as_raw());
    assert_eq!(
        crl.crl_number().map(|n| n.to_string()),
        Some("7".to_owned())
    );
    assert_eq!(crl.last_update().to_datetime(), NOW);
    assert_eq!(
        crl.next_update().map(|t| t.to_datetime()),
        Some(datetime!(2025-06-02 12:00:00 UTC))
    );
    let entries: Vec<(String, OffsetDateTime, Option<ReasonCode>)> = crl
        .iter_revoked_certificates()
        .map(|e| {
            (
                crate::identity::serial_hex(e.raw_serial()),
                e.revocation_date.to_datetime(),
                e.reason_code().map(|(_, code)| code),
            )
        })
        .collect();
    assert_eq!(
        entries,
        vec![
            (
                "7f0102030405060708090a0b0c0d0e0f".to_owned(),
                datetime!(2025-05-31 10:00:00 UTC),
                Some(ReasonCode::Superseded)
            ),
            ("0102".to_owned(), datetime!(2025-05-30 09:30:00 UTC), None),
        ]
    );
}

#[test]
fn issue_crl_with_nothing_revoked_has_no_entries() {
    let der = ca().issue_crl(&content(Vec::new())).unwrap();
    let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
    assert_eq!(crl.iter_revoked_certificates().count(), 0);
}

#[test]
fn issue_crl_refuses_a_next_update_not_after_this_update_and_a_serial_that_is_not_hex() {
    let ca = ca();
    let mut stale = content(Vec::new());
    stale.next_update = NOW;
    assert!(matches!(
        ca.issue_crl(&stale),
        Err(Error::InvalidCrl { reason }) if reason.contains("is not after thisUpdate")
    ));
    let bad = content(vec![RevokedCert {
        serial: "xyz".to_owned(),
        revoked_at: NOW,
        reason: None,
    }]);
    assert!(matches!(
        ca.issue_crl(&bad),
        Err(Error::InvalidCrl { reason }) if reason.contains("\"xyz\"")
    ));
}

#[test]
fn issue_crl_refuses_a_ca_whose_key_usage_lacks_crl_sign() {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "chain intermediate");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.not_before = NOW - time::Duration::days(1);
    params.not_after = NOW + time::Duration::days(365);
    let cert = params.self_signed(&key).unwrap();
    let ca = CertificateAuthority::from_pem(&cert.pem(), &key.serialize_pem(), None).unwrap();
    assert!(!ca.signs_crls());
    assert!(matches!(
        ca.issue_crl(&content(Vec::new())),
        Err(Error::CannotSignCrl { .. })
    ));
}

#[test]
fn certificates_carry_the_crl_distribution_point_only_once_the_ca_has_one() {
    let ca = ca();
    let server = ca
        .issue_server(
            &["rxgate.local".to_owned()],
            Duration::from_secs(86_400),
            NOW,
        )
        .unwrap();
    assert_eq!(
        crl_distribution_uris(&server.cert.der).unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        crl_distribution_uris(&device_cert(&ca).der).unwrap(),
        Vec::<String>::new()
    );

    let ca = ca.with_crl_uri(Some(URI.to_owned())).unwrap();
    assert_eq!(ca.crl_uri(), Some(URI));
    let server = ca
        .issue_server(
            &["rxgate.local".to_owned()],
            Duration::from_secs(86_400),
            NOW,
        )
        .unwrap();
    assert_eq!(crl_distribution_uris(&server.cert.der).unwrap(), vec![URI]);
    assert_eq!(
        crl_distribution_uris(&device_cert(&ca).der).unwrap(),
        vec![URI]
    );
}

#[test]
fn with_crl_uri_refuses_a_uri_that_is_not_http_or_has_spaces() {
    for uri in ["ldap://x/crl", "https://a b/crl", "rxgate.local/crl"] {
        assert!(
            matches!(
                ca().with_crl_uri(Some(uri.to_owned())),
                Err(Error::InvalidCrl { .. })
            ),
            "{uri}"
        );
    }
}
