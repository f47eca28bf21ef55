//! PKCS#7 (CMS) "certs-only" messages, EST's way to carry certificates (RFC 7030 §4.1.3, §4.2.3).
//!
//! A certs-only message is a `ContentInfo` of type signedData whose SignedData has no signers,
//! no digest algorithms, an `id-data` encapsulated content without content, and the certificates
//! in its `certificates` field. That field is a DER `SET OF`, which is sorted by encoding: the
//! order the certificates were given in is not kept. Readers find the leaf and the chain order
//! from the certificates themselves (see [`crate::order_chain`]).

use cms::cert::CertificateChoices;
use cms::cert::x509::Certificate;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignedData, SignerInfos};
use der::asn1::{ObjectIdentifier, SetOfVec};
use der::{Any, Decode, Encode};
use rustls_pki_types::CertificateDer;

use crate::Error;

/// `id-signedData` (RFC 5652 §5.1).
const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
/// `id-data` (RFC 5652 §4).
const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");

fn err(detail: impl Into<String>) -> Error {
    Error::Pkcs7 {
        detail: detail.into(),
    }
}

/// Encodes `certs` as the DER of a certs-only `ContentInfo(SignedData)`.
///
/// Each certificate must be strict DER (it is decoded and re-encoded, and refused if that would
/// change a byte). Duplicates are dropped.
pub fn certs_only(certs: &[CertificateDer<'_>]) -> Result<Vec<u8>, Error> {
    if certs.is_empty() {
        return Err(err("no certificates to encode"));
    }
    let mut choices: Vec<CertificateChoices> = Vec::with_capacity(certs.len());
    for (i, der) in certs.iter().enumerate() {
        let cert = Certificate::from_der(der)
            .map_err(|e| err(format!("certificate {} does not decode: {e}", i + 1)))?;
        let again = cert
            .to_der()
            .map_err(|e| err(format!("certificate {} does not re-encode: {e}", i + 1)))?;
        if again.as_slice() != der.as_ref() {
            return Err(err(format!(
                "certificate {} is not in strict DER form; re-encoding it would change it",
                i + 1
            )));
        }
        let choice = CertificateChoices::Certificate(cert);
        if !choices.contains(&choice) {
            choices.push(choice);
        }
    }
    let certificates = CertificateSet(
        SetOfVec::try_from(choices).map_err(|e| err(format!("cannot build the SET OF: {e}")))?,
    );
    let signed_data = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::default(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: None,
        },
        certificates: Some(certificates),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::default()),
    };
    let content = Any::encode_from(&signed_data)
        .map_err(|e| err(format!("cannot encode SignedData: {e}")))?;
    ContentInfo {
        content_type: ID_SIGNED_DATA,
        content,
    }
    .to_der()
    .map_err(|e| err(format!("cannot encode ContentInfo: {e}")))
}

/// Reads the certificates out of a certs-only `ContentInfo(SignedData)` DER, in encoded order.
///
/// Signers, if any, are ignored: EST's certs-only responses carry none, and trust comes from the
/// TLS connection and the certificates' own signatures.
pub fn parse_certs_only(der: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let info =
        ContentInfo::from_der(der).map_err(|e| err(format!("not a DER CMS ContentInfo ({e})")))?;
    if info.content_type != ID_SIGNED_DATA {
        return Err(err(format!(
            "the content type is {}, not signedData (1.2.840.113549.1.7.2)",
            info.content_type
        )));
    }
    let signed: SignedData = info
        .content
        .decode_as()
        .map_err(|e| err(format!("the SignedData does not decode ({e})")))?;
    let Some(set) = signed.certificates else {
        return Err(err("the SignedData holds no certificates"));
    };
    let mut out = Vec::with_capacity(set.0.len());
    for choice in set.0.iter() {
        if let CertificateChoices::Certificate(cert) = choice {
            let der = cert
                .to_der()
                .map_err(|e| err(format!("a certificate does not re-encode ({e})")))?;
            out.push(CertificateDer::from(der));
        }
    }
    if out.is_empty() {
        return Err(err("the SignedData holds no X.509 certificates"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::CertificateAuthority;

    fn two_certs() -> Vec<CertificateDer<'static>> {
        let now = datetime!(2025-06-01 12:00:00 UTC);
        let ca = CertificateAuthority::generate("rxgate CA store-0042", now).unwrap();
        let server = ca
            .issue_server(
                &["rxgate.local".to_owned()],
                std::time::Duration::from_secs(3600),
                now,
            )
            .unwrap();
        vec![
            CertificateDer::from(ca.cert_der().to_vec()),
            server.cert.der,
        ]
    }

    #[test]
    fn certs_only_round_trips_its_certificates() {
        let certs = two_certs();
        let der = certs_only(&certs).unwrap();
        let back = parse_certs_only(&der).unwrap();
        assert_eq!(back.len(), 2);
        assert!(certs.iter().all(|c| back.contains(c)));
        // The SET OF is sorted by encoding; order_chain restores the path order.
        assert_eq!(
            crate::order_chain(back),
            vec![certs[1].clone(), certs[0].clone()]
        );
    }

    #[test]
    fn certs_only_has_no_signers_and_no_content() {
        let der = certs_only(&two_certs()).unwrap();
        let info = ContentInfo::from_der(&der).unwrap();
        assert_eq!(info.content_type, ID_SIGNED_DATA);
        let sd: SignedData = info.content.decode_as().unwrap();
        assert_eq!(sd.version, CmsVersion::V1);
        assert!(sd.digest_algorithms.is_empty());
        assert!(sd.signer_infos.0.is_empty());
        assert_eq!(sd.encap_content_info.econtent_type, ID_DATA);
        assert!(sd.encap_content_info.econtent.is_none());
        assert!(sd.crls.is_none());
    }

    #[test]
    fn certs_only_drops_duplicates_and_refuses_nothing_or_garbage() {
        let certs = two_certs();
        let doubled = [certs[0].clone(), certs[0].clone()];
        assert_eq!(
            parse_certs_only(&certs_only(&doubled).unwrap())
                .unwrap()
                .len(),
            1
        );
        assert!(certs_only(&[]).is_err());
        assert!(certs_only(&[CertificateDer::from(vec![0x30, 0x00])]).is_err());
    }

    #[test]
    fn parse_certs_only_refuses_garbage_and_other_content_types() {
        assert!(matches!(
            parse_certs_only(b"junk"),
            Err(Error::Pkcs7 { .. })
        ));
        // A ContentInfo of type id-data.
        let data = ContentInfo {
            content_type: ID_DATA,
            content: Any::encode_from(&der::asn1::OctetString::new(vec![1, 2]).unwrap()).unwrap(),
        }
        .to_der()
        .unwrap();
        let err = parse_certs_only(&data).unwrap_err();
        assert!(err.to_string().contains("not signedData"), "{err}");
    }

    /// RFC 7030 clients are often `openssl pkcs7`; it must read what the gateway sends.
    #[test]
    fn certs_only_is_readable_by_openssl_pkcs7_print_certs() {
        let certs = two_certs();
        let der = certs_only(&certs).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certs.p7");
        std::fs::write(&path, &der).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["pkcs7", "-inform", "DER", "-print_certs", "-in"])
            .arg(&path)
            .output()
            .expect("the openssl CLI (Debian package openssl) runs");
        assert!(
            out.status.success(),
            "openssl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            text.matches("-----BEGIN CERTIFICATE-----").count(),
            2,
            "{text}"
        );
        assert!(
            text.contains("subject=O = rxgate, CN = rxgate CA store-0042"),
            "{text}"
        );
        assert!(text.contains("subject=CN = rxgate.local"), "{text}");
        let printed = crate::pem::parse_certs("openssl output", &text).unwrap();
        for cert in &certs {
            assert!(printed.contains(cert));
        }
    }
}
