//! PKCS#10 certificate signing requests: checking what devices send, and making them for the
//! simulator and tests.
//!
//! A checked request contributes exactly two things to a certificate: its public key and its
//! common name (which must be the device id). Whatever extensions it requests are recorded so
//! the gateway can log them, and never copied: rcgen would sign them as asked.

use std::fmt;
use std::str::FromStr;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::error::X509Error;
use x509_parser::prelude::FromDer;
use x509_parser::x509::{SubjectPublicKeyInfo, X509Name};
use zeroize::Zeroizing;

use crate::{CsrError, Error};

/// The type and size of a public key in a certificate signing request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// ECDSA on NIST P-256 (secp256r1).
    EcdsaP256,
    /// ECDSA on NIST P-384 (secp384r1).
    EcdsaP384,
    /// EdDSA on Curve25519.
    Ed25519,
    /// RSA with a modulus of `bits` bits (2048 to 8192).
    Rsa {
        /// The modulus length.
        bits: u32,
    },
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::EcdsaP256 => f.write_str("ECDSA P-256"),
            KeyKind::EcdsaP384 => f.write_str("ECDSA P-384"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
            KeyKind::Rsa { bits } => write!(f, "RSA {bits} bits"),
        }
    }
}

impl KeyKind {
    /// The rcgen algorithm whose SubjectPublicKeyInfo encoding fits this key.
    fn rcgen_algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
            KeyKind::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

/// A certificate signing request that passed [`check_csr`].
///
/// It can only be made by [`check_csr`], so holding one means the signature verified and the key
/// is of a supported type and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCsr {
    /// The subject's single common name, as sent (the device id, if the device behaves).
    pub common_name: String,
    /// The public key's type and size.
    pub key: KeyKind,
    /// Names of the extensions the request asked for (`basicConstraints`, `subjectAltName`, ...,
    /// or dotted OIDs for unknown ones), in request order. They are never copied into a
    /// certificate; this is for logging.
    pub requested_extensions: Vec<String>,
    public_key: CsrPublicKey,
}

impl CheckedCsr {
    /// The request's DER SubjectPublicKeyInfo, re-encoded canonically; compare it to tell whether
    /// a re-enrollment brings a new key.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.public_key.subject_public_key_info()
    }

    pub(crate) fn public_key(&self) -> &CsrPublicKey {
        &self.public_key
    }
}

/// The public key taken from a request, in the form rcgen needs to put it into a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CsrPublicKey {
    alg: &'static rcgen::SignatureAlgorithm,
    /// The SubjectPublicKeyInfo's BIT STRING contents.
    raw: Vec<u8>,
}

impl PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg
    }
}

/// Parses a DER PKCS#10 request and checks it: well-formed with nothing after it, a supported key
/// (ECDSA P-256 or P-384, Ed25519, RSA of 2048 to 8192 bits), a signature made with that key by a
/// non-SHA-1 algorithm, and a subject with exactly one common name.
///
/// The key is checked before the signature so that a refused key is reported as such ("RSA key of
/// 1024 bits; at least 2048 required") rather than as an unverifiable signature.
pub fn check_csr(der: &[u8]) -> Result<CheckedCsr, CsrError> {
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed {
        detail: match e {
            x509_parser::nom::Err::Incomplete(_) => "the data ends early".to_owned(),
            x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e.to_string(),
        },
    })?;
    if !rest.is_empty() {
        return Err(CsrError::TrailingData { bytes: rest.len() });
    }
    let info = &csr.certification_request_info;

    let (key, raw) = check_public_key(&info.subject_pki)?;
    check_signature_algorithm(&csr)?;
    csr.verify_signature().map_err(|e| match e {
        X509Error::SignatureUnsupportedAlgorithm => CsrError::UnsupportedSignatureAlgorithm {
            algorithm: format!(
                "{} with a {key} key",
                oid_name(&csr.signature_algorithm.algorithm.to_id_string())
            ),
        },
        _ => CsrError::BadSignature,
    })?;
    let common_name = single_common_name(&info.subject)?;

    let mut requested_extensions = Vec::new();
    for attr in info.iter_attributes() {
        if let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() {
            requested_extensions.extend(
                req.extensions
                    .iter()
                    .map(|ext| oid_name(&ext.oid.to_id_string()).to_owned()),
            );
        }
    }

    Ok(CheckedCsr {
        common_name,
        key,
        requested_extensions,
        public_key: CsrPublicKey {
            alg: key.rcgen_algorithm(),
            raw,
        },
    })
}

fn check_public_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<(KeyKind, Vec<u8>), CsrError> {
    let raw = spki.subject_public_key.data.to_vec();
    if spki.subject_public_key.unused_bits != 0 {
        return Err(CsrError::MalformedKey {
            detail: "the key's BIT STRING is not byte-aligned".to_owned(),
        });
    }
    let algorithm = spki.algorithm.algorithm.to_id_string();
    let kind = match algorithm.as_str() {
        OID_EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string())
                .ok_or_else(|| CsrError::MalformedKey {
                    detail: "the EC key does not name its curve".to_owned(),
                })?;
            let (kind, point_len) = match curve.as_str() {
                OID_P256 => (KeyKind::EcdsaP256, 65),
                OID_P384 => (KeyKind::EcdsaP384, 97),
                other => {
                    return Err(CsrError::UnsupportedCurve {
                        curve: oid_name(other).to_owned(),
                    });
                }
            };
            // Verifiers (ring, webpki) only take uncompressed points.
            if raw.len() != point_len || raw.first() != Some(&0x04) {
                return Err(CsrError::MalformedKey {
                    detail: format!("the {kind} key is not an uncompressed curve point"),
                });
            }
            kind
        }
        OID_ED25519 => {
            if raw.len() != 32 {
                return Err(CsrError::MalformedKey {
                    detail: format!("an Ed25519 key has 32 bytes, this one {}", raw.len()),
                });
            }
            KeyKind::Ed25519
        }
        OID_RSA_ENCRYPTION => {
            let bits = rsa_modulus_bits(spki)?;
            if bits < 2048 {
                return Err(CsrError::RsaKeyTooShort { bits });
            }
            if bits > 8192 {
                return Err(CsrError::RsaKeyTooLong { bits });
            }
            KeyKind::Rsa { bits }
        }
        other => {
            return Err(CsrError::UnsupportedKeyType {
                algorithm: oid_name(other).to_owned(),
            });
        }
    };
    Ok((kind, raw))
}

fn rsa_modulus_bits(spki: &SubjectPublicKeyInfo<'_>) -> Result<u32, CsrError> {
    let malformed = |detail: &str| CsrError::MalformedKey {
        detail: detail.to_owned(),
    };
    match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
            // x509-parser's own key_size() miscounts moduli without a leading zero byte.
            let modulus = rsa.modulus;
            let start = modulus
                .iter()
                .position(|&b| b != 0)
                .unwrap_or(modulus.len());
            let significant = &modulus[start..];
            let Some(&first) = significant.first() else {
                return Err(malformed("the RSA modulus is zero"));
            };
            let bits = (significant.len() as u64 - 1) * 8 + u64::from(8 - first.leading_zeros());
            u32::try_from(bits).map_err(|_| malformed("the RSA modulus is absurdly long"))
        }
        _ => Err(malformed("the RSA key does not parse")),
    }
}

fn check_signature_algorithm(csr: &X509CertificationRequest<'_>) -> Result<(), CsrError> {
    let oid = csr.signature_algorithm.algorithm.to_id_string();
    match oid.as_str() {
        OID_SHA256_WITH_RSA | OID_SHA384_WITH_RSA | OID_SHA512_WITH_RSA | OID_RSASSA_PSS
        | OID_ECDSA_SHA256 | OID_ECDSA_SHA384 | OID_ED25519 => Ok(()),
        other => Err(CsrError::UnsupportedSignatureAlgorithm {
            algorithm: oid_name(other).to_owned(),
        }),
    }
}

fn single_common_name(subject: &X509Name<'_>) -> Result<String, CsrError> {
    let cns: Vec<_> = subject.iter_common_name().collect();
    match cns.as_slice() {
        [] => Err(CsrError::MissingCommonName),
        [cn] => {
            let cn = cn.as_str().map_err(|_| CsrError::CommonNameNotText)?;
            if cn.is_empty() {
                Err(CsrError::MissingCommonName)
            } else {
                Ok(cn.to_owned())
            }
        }
        more => Err(CsrError::MultipleCommonNames { count: more.len() }),
    }
}

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_ED25519: &str = "1.3.101.112";
const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const OID_SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";
const OID_SHA384_WITH_RSA: &str = "1.2.840.113549.1.1.12";
const OID_SHA512_WITH_RSA: &str = "1.2.840.113549.1.1.13";
const OID_RSASSA_PSS: &str = "1.2.840.113549.1.1.10";
const OID_ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const OID_ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";

/// A readable name for the OIDs a device is likely to send; the dotted form otherwise.
pub(crate) fn oid_name(oid: &str) -> &str {
    match oid {
        // Key types and curves.
        OID_EC_PUBLIC_KEY => "ECDSA",
        OID_P256 => "P-256",
        OID_P384 => "P-384",
        "1.3.132.0.35" => "P-521",
        "1.3.132.0.10" => "secp256k1",
        "1.3.36.3.3.2.8.1.1.7" => "brainpoolP256r1",
        "1.3.36.3.3.2.8.1.1.11" => "brainpoolP384r1",
        "1.3.36.3.3.2.8.1.1.13" => "brainpoolP512r1",
        OID_ED25519 => "Ed25519",
        "1.3.101.113" => "Ed448",
        "1.3.101.110" => "X25519",
        "1.3.101.111" => "X448",
        OID_RSA_ENCRYPTION => "RSA",
        "1.2.840.10040.4.1" => "DSA",
        // Signature algorithms.
        "1.2.840.113549.1.1.4" => "md5WithRSAEncryption",
        "1.2.840.113549.1.1.5" => "sha1WithRSAEncryption",
        "1.3.14.3.2.29" => "sha1WithRSAEncryption",
        OID_SHA256_WITH_RSA => "sha256WithRSAEncryption",
        OID_SHA384_WITH_RSA => "sha384WithRSAEncryption",
        OID_SHA512_WITH_RSA => "sha512WithRSAEncryption",
        OID_RSASSA_PSS => "RSASSA-PSS",
        "1.2.840.10045.4.1" => "ecdsa-with-SHA1",
        OID_ECDSA_SHA256 => "ecdsa-with-SHA256",
        OID_ECDSA_SHA384 => "ecdsa-with-SHA384",
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
        // Extensions.
        "2.5.29.14" => "subjectKeyIdentifier",
        "2.5.29.15" => "keyUsage",
        "2.5.29.17" => "subjectAltName",
        "2.5.29.19" => "basicConstraints",
        "2.5.29.30" => "nameConstraints",
        "2.5.29.31" => "cRLDistributionPoints",
        "2.5.29.32" => "certificatePolicies",
        "2.5.29.35" => "authorityKeyIdentifier",
        "2.5.29.37" => "extendedKeyUsage",
        "1.3.6.1.5.5.7.1.1" => "authorityInfoAccess",
        other => other,
    }
}

/// Key algorithms [`new_device_csr`] can generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyAlg {
    /// ECDSA P-256 with SHA-256: the default, supported by every TLS stack.
    #[default]
    P256,
    /// ECDSA P-384 with SHA-384.
    P384,
    /// Ed25519: small and fast, but not accepted by some older TLS stacks.
    Ed25519,
}

impl KeyAlg {
    fn rcgen_algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlg::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlg::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlg::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

impl fmt::Display for KeyAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlg::P256 => "p256",
            KeyAlg::P384 => "p384",
            KeyAlg::Ed25519 => "ed25519",
        })
    }
}

impl FromStr for KeyAlg {
    type Err = String;

    /// Parses `p256`, `p384` or `ed25519` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "p256" | "p-256" => Ok(KeyAlg::P256),
            "p384" | "p-384" => Ok(KeyAlg::P384),
            "ed25519" => Ok(KeyAlg::Ed25519),
            _ => Err(format!(
                "unknown key algorithm {s:?}; use p256, p384 or ed25519"
            )),
        }
    }
}

/// Generates a device key and a PKCS#10 request for it with `CN = device_id` and no extensions.
///
/// Returns the PKCS#8 PEM of the key (wiped when dropped) and the DER of the request.
pub fn new_device_csr(device_id: &str, alg: KeyAlg) -> Result<(Zeroizing<String>, Vec<u8>), Error> {
    crate::validate_device_id(device_id)?;
    let key = KeyPair::generate_for(alg.rcgen_algorithm())
        .map_err(Error::build("generate a device key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, device_id);
    let csr = params
        .serialize_request(&key)
        .map_err(Error::build("build a certificate signing request"))?;
    Ok((
        crate::pem::pkcs8_key_pem(key.serialized_der()),
        csr.der().to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, IsCa, SanType};

    use super::*;

    fn csr_with(params: &CertificateParams, alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = KeyPair::generate_for(alg).unwrap();
        params.serialize_request(&key).unwrap().der().to_vec()
    }

    fn named(cn: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
    }

    #[test]
    fn check_csr_accepts_p256_and_reads_the_common_name() {
        let (_, der) = new_device_csr("fridge-01", KeyAlg::P256).unwrap();
        let csr = check_csr(&der).unwrap();
        assert_eq!(csr.common_name, "fridge-01");
        assert_eq!(csr.key, KeyKind::EcdsaP256);
        assert!(csr.requested_extensions.is_empty());
    }

    #[test]
    fn check_csr_accepts_p384() {
        let (_, der) = new_device_csr("fridge-01", KeyAlg::P384).unwrap();
        assert_eq!(check_csr(&der).unwrap().key, KeyKind::EcdsaP384);
    }

    #[test]
    fn check_csr_accepts_ed25519() {
        let (_, der) = new_device_csr("cab-7", KeyAlg::Ed25519).unwrap();
        assert_eq!(check_csr(&der).unwrap().key, KeyKind::Ed25519);
    }

    #[test]
    fn check_csr_rejects_a_tampered_signature() {
        let (_, mut der) = new_device_csr("fridge-01", KeyAlg::P256).unwrap();
        // The DER ECDSA signature ends the request; flipping its last byte keeps the structure.
        let last = der.len() - 1;
        der[last] ^= 0x01;
        assert_eq!(check_csr(&der), Err(CsrError::BadSignature));
    }

    #[test]
    fn check_csr_rejects_a_tampered_subject() {
        let (_, der) = new_device_csr("fridge-01", KeyAlg::P256).unwrap();
        let pos = der.windows(9).position(|w| w == b"fridge-01").unwrap();
        let mut der = der;
        der[pos + 8] = b'2';
        assert_eq!(check_csr(&der), Err(CsrError::BadSignature));
    }

    #[test]
    fn check_csr_rejects_garbage() {
        for garbage in [&b""[..], b"hello", b"\x30\x03\x02\x01\x00", &[0x30; 40]] {
            let err = check_csr(garbage).unwrap_err();
            assert!(matches!(err, CsrError::Malformed { .. }), "{err:?}");
        }
        assert!(matches!(
            check_csr(b"-----BEGIN CERTIFICATE REQUEST-----"),
            Err(CsrError::Malformed { .. })
        ));
    }

    #[test]
    fn check_csr_rejects_trailing_bytes() {
        let (_, mut der) = new_device_csr("fridge-01", KeyAlg::P256).unwrap();
        der.extend_from_slice(b"\0\0");
        assert_eq!(check_csr(&der), Err(CsrError::TrailingData { bytes: 2 }));
    }

    #[test]
    fn check_csr_rejects_a_missing_common_name() {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "rxgate");
        let der = csr_with(&params, &rcgen::PKCS_ECDSA_P256_SHA256);
        let err = check_csr(&der).unwrap_err();
        assert_eq!(err, CsrError::MissingCommonName);
        assert_eq!(
            err.to_string(),
            "the request's subject has no common name (CN); set CN to the device id"
        );
    }

    #[test]
    fn check_csr_rejects_rsa_1024_naming_the_size() {
        let err = check_csr(include_bytes!("../testdata/rsa1024.der")).unwrap_err();
        assert_eq!(err, CsrError::RsaKeyTooShort { bits: 1024 });
        assert_eq!(
            err.to_string(),
            "RSA key of 1024 bits; at least 2048 required"
        );
    }

    #[test]
    fn check_csr_accepts_rsa_2048() {
        let csr = check_csr(include_bytes!("../testdata/rsa2048.der")).unwrap();
        assert_eq!(csr.key, KeyKind::Rsa { bits: 2048 });
        assert_eq!(csr.common_name, "fridge-01");
    }

    #[test]
    fn check_csr_rejects_secp256k1_naming_the_curve() {
        let err = check_csr(include_bytes!("../testdata/secp256k1.der")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ECDSA curve secp256k1 not supported; use P-256 or P-384"
        );
    }

    #[test]
    fn check_csr_rejects_p521() {
        let err = check_csr(include_bytes!("../testdata/p521.der")).unwrap_err();
        assert_eq!(
            err,
            CsrError::UnsupportedCurve {
                curve: "P-521".to_owned()
            }
        );
    }

    #[test]
    fn check_csr_rejects_a_sha1_signature() {
        let err = check_csr(include_bytes!("../testdata/rsa2048-sha1.der")).unwrap_err();
        assert_eq!(
            err,
            CsrError::UnsupportedSignatureAlgorithm {
                algorithm: "sha1WithRSAEncryption".to_owned()
            }
        );
    }

    #[test]
    fn check_csr_rejects_two_common_names() {
        let err = check_csr(include_bytes!("../testdata/two-cns.der")).unwrap_err();
        assert_eq!(err, CsrError::MultipleCommonNames { count: 2 });
    }

    #[test]
    fn check_csr_records_requested_extensions_by_name() {
        let mut params = named("fridge-01");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .subject_alt_names
            .push(SanType::DnsName("evil.example".try_into().unwrap()));
        let der = csr_with(&params, &rcgen::PKCS_ECDSA_P256_SHA256);
        let csr = check_csr(&der).unwrap();
        assert_eq!(
            csr.requested_extensions,
            ["subjectAltName", "basicConstraints"]
        );
    }

    #[test]
    fn key_kinds_display_readably() {
        assert_eq!(KeyKind::Rsa { bits: 3072 }.to_string(), "RSA 3072 bits");
        assert_eq!(KeyKind::EcdsaP384.to_string(), "ECDSA P-384");
    }

    #[test]
    fn key_algs_parse_from_cli_spelling() {
        assert_eq!("p256".parse::<KeyAlg>(), Ok(KeyAlg::P256));
        assert_eq!("Ed25519".parse::<KeyAlg>(), Ok(KeyAlg::Ed25519));
        assert!("rsa".parse::<KeyAlg>().is_err());
    }

    #[test]
    fn new_device_csr_refuses_an_invalid_device_id() {
        assert!(matches!(
            new_device_csr("../etc", KeyAlg::P256),
            Err(Error::InvalidDeviceId { .. })
        ));
    }
}
