use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use time::macros::datetime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::*;
use crate::{KeyAlg, KeyKind, check_csr, device_identity, new_device_csr};

const NOW: OffsetDateTime = datetime!(2025-06-01 12:00:00 UTC);
const DAY: Duration = Duration::from_secs(86_400);

fn ca() -> CertificateAuthority {
    CertificateAuthority::generate("rxgate CA store-0042", NOW).unwrap()
}

fn profile(device_id: &str) -> DeviceProfile {
    DeviceProfile {
        site: "store-0042".to_owned(),
        kind: "fridge".to_owned(),
        device_id: device_id.to_owned(),
        validity: 30 * DAY,
        backdate: Duration::from_secs(300),
        now: NOW,
    }
}

fn device_csr(device_id: &str) -> CheckedCsr {
    let (_, der) = new_device_csr(device_id, KeyAlg::P256).unwrap();
    check_csr(&der).unwrap()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, x509) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    x509
}

fn unix(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(t.unix_timestamp().try_into().unwrap()))
}

/// Verifies `leaf` up to `anchor` the way rustls does for a connecting device.
fn verify_client(
    anchor: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    leaf: &CertificateDer<'_>,
    at: OffsetDateTime,
) -> Result<(), webpki::Error> {
    let anchors = [webpki::anchor_from_trusted_cert(anchor)?];
    let ee = webpki::EndEntityCert::try_from(leaf)?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        unix(at),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
}

fn verify_server(
    anchor: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    leaf: &CertificateDer<'_>,
    name: &str,
    at: OffsetDateTime,
) -> Result<(), webpki::Error> {
    let anchors = [webpki::anchor_from_trusted_cert(anchor)?];
    let ee = webpki::EndEntityCert::try_from(leaf)?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        unix(at),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )?;
    let name = rustls_pki_types::ServerName::try_from(name).unwrap();
    ee.verify_is_valid_for_subject_name(&name)
}

fn anchor_of(ca: &CertificateAuthority) -> CertificateDer<'static> {
    CertificateDer::from(ca.cert_der().to_vec())
}

#[test]
fn generate_makes_a_ten_year_p256_root_with_pathlen_zero() {
    let ca = ca();
    let x509 = parse(ca.cert_der());

    assert_eq!(
        x509.subject().to_string(),
        "O=rxgate, CN=rxgate CA store-0042"
    );
    assert_eq!(ca.subject(), "O=rxgate, CN=rxgate CA store-0042");
    assert_eq!(x509.issuer().as_raw(), x509.subject().as_raw());
    x509.verify_signature(None).unwrap();

    let bc = x509.basic_constraints().unwrap().unwrap();
    assert!(bc.critical);
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = x509.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
    assert!(x509.iter_extensions().any(|e| matches!(
        e.parsed_extension(),
        ParsedExtension::SubjectKeyIdentifier(_)
    )));

    assert_eq!(
        x509.validity().not_before.to_datetime(),
        datetime!(2025-06-01 11:00:00 UTC)
    );
    assert_eq!(
        x509.validity().not_after.to_datetime(),
        datetime!(2035-06-01 12:00:00 UTC)
    );
    assert_eq!(ca.not_after(), datetime!(2035-06-01 12:00:00 UTC));
    assert_eq!(
        x509.public_key().algorithm.algorithm.to_id_string(),
        "1.2.840.10045.2.1"
    );
    assert_eq!(x509.raw_serial().len(), 16);
    assert_eq!(ca.chain_der().len(), 1);
}

#[test]
fn generate_on_29_february_ends_on_28_february() {
    let ca = CertificateAuthority::generate("leap", datetime!(2028-02-29 08:00:00 UTC)).unwrap();
    assert_eq!(ca.not_after(), datetime!(2038-02-28 08:00:00 UTC));
}

#[test]
fn generate_refuses_an_empty_common_name() {
    let err = CertificateAuthority::generate("  ", NOW).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidName {
                what: "CA common name",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn from_pem_round_trips_a_generated_ca() {
    let original = ca();
    let reloaded =
        CertificateAuthority::from_pem(&original.cert_pem(), &original.key_pem(), None).unwrap();
    assert_eq!(reloaded.cert_der(), original.cert_der());
    assert_eq!(*reloaded.key_pem(), *original.key_pem());
    assert_eq!(reloaded.chain_pem(), original.cert_pem());
    assert!(
        original
            .key_pem()
            .starts_with("-----BEGIN PRIVATE KEY-----\n")
    );

    // Certificates issued after the reload chain to the original CA certificate.
    let cert = reloaded
        .issue_device(&device_csr("fridge-01"), &profile("fridge-01"))
        .unwrap();
    verify_client(&anchor_of(&original), &[], &cert.der, NOW).unwrap();
}

#[test]
fn from_pem_refuses_a_leaf_certificate_as_ca() {
    let ca = ca();
    let server = ca
        .issue_server(&["rxgate.local".to_owned()], 30 * DAY, NOW)
        .unwrap();
    let err = CertificateAuthority::from_pem(&server.cert.pem, &server.key_pem, None).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotACa {
                reason: "basicConstraints CA:TRUE is missing",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn from_pem_refuses_the_key_of_another_ca() {
    let one = ca();
    let other = ca();
    let err = CertificateAuthority::from_pem(&one.cert_pem(), &other.key_pem(), None).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("does not belong to the CA certificate")
    );
}

#[test]
fn from_pem_refuses_two_certificates_in_the_cert_file() {
    let ca = ca();
    let two = format!("{}{}", ca.cert_pem(), ca.cert_pem());
    let err = CertificateAuthority::from_pem(&two, &ca.key_pem(), None).unwrap_err();
    assert!(err.to_string().contains("holds 2 certificates"), "{err}");
}

#[test]
fn from_pem_refuses_text_without_pem_blocks() {
    let ca = ca();
    let err = CertificateAuthority::from_pem("hello", &ca.key_pem(), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "CA certificate: no \"-----BEGIN CERTIFICATE-----\" block found; pass a PEM certificate file"
    );
    let err = CertificateAuthority::from_pem(&ca.cert_pem(), &ca.cert_pem(), None).unwrap_err();
    assert!(err.to_string().contains("BEGIN PRIVATE KEY"), "{err}");
}

#[test]
fn from_pem_accepts_an_rsa_ca_and_issues_verifiable_device_certificates() {
    let ca = CertificateAuthority::from_pem(
        include_str!("../../testdata/rsa-ca.pem"),
        include_str!("../../testdata/rsa-ca.key"),
        None,
    )
    .unwrap();
    // The fixture's validity starts when it was made.
    let mut p = profile("fridge-01");
    p.now = ca.not_before() + time::Duration::days(1);
    let cert = ca.issue_device(&device_csr("fridge-01"), &p).unwrap();
    assert_eq!(
        parse(&cert.der)
            .signature_algorithm
            .algorithm
            .to_id_string(),
        "1.2.840.113549.1.1.11"
    );
    verify_client(&anchor_of(&ca), &[], &cert.der, p.now).unwrap();
}

#[test]
fn from_pem_refuses_a_ca_subject_with_repeated_attributes() {
    let err = CertificateAuthority::from_pem(
        include_str!("../../testdata/two-ou-ca.pem"),
        include_str!("../../testdata/two-ou-ca.key"),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, Error::UnsupportedCaName { .. }), "{err}");
}

/// A pharmacy chain's root (P-384) and an intermediate for one store, made with rcgen as the
/// chain's own PKI would.
struct ChainPki {
    root_der: CertificateDer<'static>,
    root_pem: String,
    intermediate_pem: String,
    intermediate_key_pem: String,
}

fn chain_pki() -> ChainPki {
    let mut root_params = CertificateParams::default();
    root_params.distinguished_name = DistinguishedName::new();
    root_params
        .distinguished_name
        .push(DnType::OrganizationName, "Example Pharmacy Chain");
    root_params
        .distinguished_name
        .push(DnType::CommonName, "Example Chain Root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    root_params.not_before = NOW - time::Duration::days(365);
    root_params.not_after = NOW + time::Duration::days(20 * 365);
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let root = CertifiedIssuer::self_signed(root_params, root_key).unwrap();

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Example Pharmacy Chain");
    params
        .distinguished_name
        .push(DnType::CommonName, "Example Chain store-0042");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    params.not_before = NOW - time::Duration::days(1);
    params.not_after = NOW + time::Duration::days(5 * 365);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let intermediate = params.signed_by(&key, &root).unwrap();

    ChainPki {
        root_der: root.der().clone(),
        root_pem: root.pem(),
        intermediate_pem: intermediate.pem(),
        intermediate_key_pem: key.serialize_pem(),
    }
}

#[test]
fn an_imported_intermediate_issues_certificates_that_verify_through_the_chain() {
    let pki = chain_pki();
    let ca = CertificateAuthority::from_pem(
        &pki.intermediate_pem,
        &pki.intermediate_key_pem,
        Some(&pki.root_pem),
    )
    .unwrap();

    let chain = ca.chain_der();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0].as_ref(), ca.cert_der());
    assert_eq!(chain[1], pki.root_der);
    assert_eq!(ca.chain_pem(), format!("{}{}", ca.cert_pem(), pki.root_pem));

    let device = ca
        .issue_device(&device_csr("fridge-01"), &profile("fridge-01"))
        .unwrap();
    let issuer_der = CertificateDer::from(ca.cert_der().to_vec());
    verify_client(
        &pki.root_der,
        std::slice::from_ref(&issuer_der),
        &device.der,
        NOW,
    )
    .unwrap();
    // Without the intermediate the root alone cannot vouch for the device.
    assert!(verify_client(&pki.root_der, &[], &device.der, NOW).is_err());

    let server = ca
        .issue_server(&["rxgate.local".to_owned()], 365 * DAY, NOW)
        .unwrap();
    verify_server(
        &pki.root_der,
        &[issuer_der],
        &server.cert.der,
        "rxgate.local",
        NOW,
    )
    .unwrap();

    // The device certificate's AKI is the intermediate's SKI, so OpenSSL builds the same path.
    let x509 = parse(&device.der);
    let ca_x509 = parse(ca.cert_der());
    let aki = x509
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.clone(),
            _ => None,
        })
        .unwrap();
    let ski = ca_x509
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(ski) => Some(ski.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(aki.0, ski.0);
}

#[test]
fn from_pem_orders_the_chain_and_drops_a_copy_of_the_ca() {
    let pki = chain_pki();
    let full_chain = format!("{}{}", pki.root_pem, pki.intermediate_pem);
    let ca = CertificateAuthority::from_pem(
        &pki.intermediate_pem,
        &pki.intermediate_key_pem,
        Some(&full_chain),
    )
    .unwrap();
    assert_eq!(ca.chain_der().len(), 2);
    assert_eq!(ca.chain_der()[1], pki.root_der);
}

#[test]
fn from_pem_refuses_a_chain_certificate_that_did_not_sign_the_ca() {
    let pki = chain_pki();
    let stranger = ca();
    let err = CertificateAuthority::from_pem(
        &pki.intermediate_pem,
        &pki.intermediate_key_pem,
        Some(&stranger.cert_pem()),
    )
    .unwrap_err();
    assert!(matches!(err, Error::BrokenChain { .. }), "{err}");
    assert!(err.to_string().contains("rxgate CA store-0042"), "{err}");
}

#[test]
fn issue_device_ignores_a_csr_that_asks_for_ca_and_extra_names() {
    let mut evil = CertificateParams::default();
    evil.distinguished_name = DistinguishedName::new();
    evil.distinguished_name
        .push(DnType::CommonName, "fridge-01");
    evil.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    evil.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    evil.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    evil.subject_alt_names = vec![
        SanType::DnsName("bank.example".try_into().unwrap()),
        SanType::URI(
            "urn:rxgate:device:store-0042:cabinet:other"
                .try_into()
                .unwrap(),
        ),
    ];
    let key = KeyPair::generate().unwrap();
    let der = evil.serialize_request(&key).unwrap().der().to_vec();
    let csr = check_csr(&der).unwrap();
    assert_eq!(
        csr.requested_extensions,
        [
            "keyUsage",
            "subjectAltName",
            "extendedKeyUsage",
            "basicConstraints"
        ]
    );

    let ca = ca();
    let cert = ca.issue_device(&csr, &profile("fridge-01")).unwrap();
    let x509 = parse(&cert.der);

    let bc = x509.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, None);
    let sans = &x509
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(
        sans.as_slice(),
        [GeneralName::URI(
            "urn:rxgate:device:store-0042:fridge:fridge-01"
        )]
    );
    let eku = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth);
    assert!(!eku.server_auth && !eku.any && eku.other.is_empty());
    let ku = x509.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature());
    assert!(!ku.key_cert_sign());
    assert_eq!(x509.subject().to_string(), "CN=fridge-01");
    assert_eq!(x509.public_key().raw, csr.public_key_der().as_slice());

    verify_client(&anchor_of(&ca), &[], &cert.der, NOW).unwrap();
    assert!(
        verify_server(&anchor_of(&ca), &[], &cert.der, "bank.example", NOW).is_err(),
        "a device certificate must not serve TLS"
    );
}

#[test]
fn issue_device_uses_the_profile_validity_and_backdate() {
    let cert = ca()
        .issue_device(&device_csr("fridge-01"), &profile("fridge-01"))
        .unwrap();
    assert_eq!(cert.not_before, datetime!(2025-06-01 11:55:00 UTC));
    assert_eq!(cert.not_after, datetime!(2025-07-01 12:00:00 UTC));
    assert_eq!(cert.serial.len(), 32);
    assert!(
        cert.serial
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert!(cert.pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
}

#[test]
fn issue_device_never_outlives_the_ca() {
    let ca = ca();
    let mut long = profile("fridge-01");
    long.validity = 20 * 365 * DAY;
    let cert = ca.issue_device(&device_csr("fridge-01"), &long).unwrap();
    assert_eq!(cert.not_after, ca.not_after());
}

#[test]
fn issue_device_refuses_a_clock_before_the_ca_existed() {
    let ca = ca();
    let mut early = profile("fridge-01");
    early.now = datetime!(1970-01-01 00:00:10 UTC);
    let err = ca
        .issue_device(&device_csr("fridge-01"), &early)
        .unwrap_err();
    assert!(matches!(err, Error::CaNotValidAt { .. }), "{err}");
    assert!(err.to_string().contains("clock is probably wrong"), "{err}");
}

#[test]
fn issue_device_refuses_a_csr_for_another_device() {
    let err = ca()
        .issue_device(&device_csr("fridge-02"), &profile("fridge-01"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the request's common name \"fridge-02\" does not match the device id \"fridge-01\"; set CN to the device id"
    );
}

#[test]
fn issue_device_refuses_an_unknown_kind_and_a_bad_site() {
    let ca = ca();
    let mut p = profile("fridge-01");
    p.kind = "toaster".to_owned();
    assert!(matches!(
        ca.issue_device(&device_csr("fridge-01"), &p),
        Err(Error::InvalidKind { .. })
    ));
    let mut p = profile("fridge-01");
    p.site = "store:42".to_owned();
    assert!(matches!(
        ca.issue_device(&device_csr("fridge-01"), &p),
        Err(Error::InvalidSite { .. })
    ));
    let mut p = profile("fridge-01");
    p.validity = Duration::ZERO;
    assert!(matches!(
        ca.issue_device(&device_csr("fridge-01"), &p),
        Err(Error::InvalidValidity { .. })
    ));
}

#[test]
fn issue_device_signs_ed25519_and_rsa_keys() {
    let ca = ca();
    let (_, der) = new_device_csr("cab-1", KeyAlg::Ed25519).unwrap();
    let csr = check_csr(&der).unwrap();
    let cert = ca.issue_device(&csr, &profile("cab-1")).unwrap();
    verify_client(&anchor_of(&ca), &[], &cert.der, NOW).unwrap();

    let csr = check_csr(include_bytes!("../../testdata/rsa2048.der")).unwrap();
    assert_eq!(csr.key, KeyKind::Rsa { bits: 2048 });
    let cert = ca.issue_device(&csr, &profile("fridge-01")).unwrap();
    verify_client(&anchor_of(&ca), &[], &cert.der, NOW).unwrap();
}

#[test]
fn serials_are_distinct_across_100_issuances() {
    let ca = ca();
    let csr = device_csr("fridge-01");
    let serials: std::collections::HashSet<String> = (0..100)
        .map(|_| ca.issue_device(&csr, &profile("fridge-01")).unwrap().serial)
        .collect();
    assert_eq!(serials.len(), 100);
}

#[test]
fn issue_server_names_ips_as_ip_sans_and_serves_and_authenticates() {
    let ca = ca();
    let names = ["rxgate.local", "127.0.0.1", "::1"].map(str::to_owned);
    let issued = ca.issue_server(&names, 90 * DAY, NOW).unwrap();
    let x509 = parse(&issued.cert.der);
    assert_eq!(x509.subject().to_string(), "CN=rxgate.local");
    let sans = &x509
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(
        sans.as_slice(),
        [
            GeneralName::DNSName("rxgate.local"),
            GeneralName::IPAddress(&[127, 0, 0, 1]),
            GeneralName::IPAddress(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        ]
    );
    let eku = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!x509.basic_constraints().unwrap().unwrap().value.ca);
    assert_eq!(issued.cert.not_before, datetime!(2025-06-01 11:00:00 UTC));
    assert_eq!(issued.cert.not_after, datetime!(2025-08-30 12:00:00 UTC));

    verify_server(&anchor_of(&ca), &[], &issued.cert.der, "127.0.0.1", NOW).unwrap();
    verify_server(&anchor_of(&ca), &[], &issued.cert.der, "rxgate.local", NOW).unwrap();
    verify_client(&anchor_of(&ca), &[], &issued.cert.der, NOW).unwrap();

    let key = KeyPair::from_pem(&issued.key_pem).unwrap();
    assert_eq!(
        key.public_key_raw(),
        x509.public_key().subject_public_key.data.as_ref()
    );
}

#[test]
fn issue_server_refuses_no_names_and_bad_names() {
    let ca = ca();
    assert!(matches!(
        ca.issue_server(&[], DAY, NOW),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        ca.issue_server(&["bad name".to_owned()], DAY, NOW),
        Err(Error::InvalidName { .. })
    ));
}

#[test]
fn device_identity_round_trips_an_issued_certificate() {
    let cert = ca()
        .issue_device(&device_csr("fridge-01"), &profile("fridge-01"))
        .unwrap();
    let id = device_identity(&cert.der).unwrap();
    assert_eq!(
        id,
        crate::DeviceIdentity {
            device_id: "fridge-01".to_owned(),
            kind: "fridge".to_owned(),
            site: "store-0042".to_owned(),
            serial: cert.serial.clone(),
            not_before: cert.not_before,
            not_after: cert.not_after,
        }
    );
}

#[test]
fn device_identity_refuses_a_server_certificate() {
    let server = ca()
        .issue_server(&["rxgate.local".to_owned()], DAY, NOW)
        .unwrap();
    let err = device_identity(&server.cert.der).unwrap_err();
    assert_eq!(
        err.to_string(),
        "not an rxgate device certificate: it has 0 urn:rxgate:device: URIs, not one"
    );
}

#[test]
fn debug_output_does_not_reveal_the_key() {
    let ca = ca();
    let debug = format!("{ca:?}");
    assert!(debug.contains("rxgate CA store-0042"));
    assert!(!debug.contains("PRIVATE"));
}
