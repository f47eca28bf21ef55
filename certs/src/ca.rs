//! The certificate authority and the certificate profiles it issues.
//!
//! Every certificate is built from one of the profiles below; from a CSR only the public key is
//! taken (and its common name is checked against the device id). After signing, each certificate
//! is parsed back and checked against its profile, so a change in rcgen's behaviour cannot
//! silently hand a device a CA certificate.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use crate::identity::device_uri;
use crate::names::{check_common_name, check_dns_name};
use crate::{CheckedCsr, Error, pem};

/// How far back the CA's and the gateway's own certificates start, so that a device whose clock
/// runs a little behind still accepts them.
const BACKDATE: time::Duration = time::Duration::hours(1);
/// The lifetime of a CA made by [`CertificateAuthority::generate`].
const CA_YEARS: i32 = 10;
/// The organisation of a CA made by [`CertificateAuthority::generate`].
const CA_ORGANIZATION: &str = "rxgate";

/// The certificate authority: its certificate, its key, and the certificates above it when it is
/// an intermediate imported from a pharmacy chain's PKI.
///
/// The key can be ECDSA P-256 or P-384, Ed25519, or RSA of 2048 to 8192 bits (signing with
/// PKCS#1 v1.5 and SHA-256); it must be unencrypted PKCS#8 ("BEGIN PRIVATE KEY"), as ring only
/// reads that form.
pub struct CertificateAuthority {
    cert: CertificateDer<'static>,
    parents: Vec<CertificateDer<'static>>,
    issuer: Issuer<'static, KeyPair>,
    subject: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    /// Whether the CA certificate allows signing CRLs (keyUsage cRLSign, or no keyUsage).
    signs_crls: bool,
    /// Where the CA's CRL is published; written into every certificate it issues.
    crl_uri: Option<String>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.subject)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("parents", &self.parents.len())
            .field("crl_uri", &self.crl_uri)
            .finish_non_exhaustive()
    }
}

/// What a device certificate is made of, besides the public key from the CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceProfile {
    /// The gateway's site id (`[gateway] site`).
    pub site: String,
    /// The device kind, one of [`crate::KINDS`].
    pub kind: String,
    /// The device id; the CSR's common name must equal it.
    pub device_id: String,
    /// How long the certificate is valid from `now`.
    pub validity: Duration,
    /// How far before `now` the certificate starts, for devices whose clock runs behind.
    pub backdate: Duration,
    /// The issuance time.
    pub now: OffsetDateTime,
}

/// A certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate's DER.
    pub der: CertificateDer<'static>,
    /// The certificate's PEM.
    pub pem: String,
    /// The serial number in lowercase hex, no colons, no leading zero bytes.
    pub serial: String,
    /// The start of validity, as written in the certificate (whole seconds).
    pub not_before: OffsetDateTime,
    /// The end of validity, as written in the certificate (whole seconds).
    pub not_after: OffsetDateTime,
}

/// A certificate issued together with a fresh key.
#[derive(Debug)]
pub struct IssuedKeyPair {
    /// The certificate.
    pub cert: IssuedCert,
    /// The key's PKCS#8 PEM, wiped when dropped.
    pub key_pem: Zeroizing<String>,
}

impl CertificateAuthority {
    /// Creates a new self-signed root: ECDSA P-256, `CN = common_name`, `O = rxgate`, valid
    /// from one hour before `now` until ten years after it, basicConstraints `CA:TRUE, pathlen:0`
    /// (critical), keyUsage keyCertSign and cRLSign (critical), and a subject key identifier.
    pub fn generate(common_name: &str, now: OffsetDateTime) -> Result<Self, Error> {
        check_common_name("CA common name", common_name)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(Error::build("generate the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, CA_ORGANIZATION);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial()?);
        params.not_before = now
            .checked_sub(BACKDATE)
            .ok_or_else(|| bad_time("CA certificate", now))?;
        params.not_after =
            add_years(now, CA_YEARS).ok_or_else(|| bad_time("CA certificate", now))?;
        let cert = params
            .self_signed(&key)
            .map_err(Error::build("sign the CA certificate"))?;
        Self::assemble(cert.der().clone(), key, Vec::new())
    }

    /// Loads a CA from PEM: its certificate, its unencrypted PKCS#8 key, and optionally the
    /// certificates above it (in any order).
    ///
    /// Used to reload rxgate's own CA and to import an intermediate issued by a pharmacy chain's
    /// PKI. Checks that the certificate is a CA (basicConstraints `CA:TRUE`, keyCertSign if
    /// keyUsage is present), that the key is of a supported type and belongs to the certificate,
    /// that certificates issued by this CA will name it byte for byte as their issuer, and that
    /// each chain certificate is a CA that signed the one below it.
    pub fn from_pem(cert_pem: &str, key_pem: &str, chain_pem: Option<&str>) -> Result<Self, Error> {
        let mut certs = pem::parse_certs("CA certificate", cert_pem)?;
        if certs.len() != 1 {
            return Err(Error::Pem {
                what: "CA certificate",
                detail: format!(
                    "the file holds {} certificates; pass only the CA's own certificate here and \
                     its parents with --ca-chain",
                    certs.len()
                ),
            });
        }
        let cert = certs.remove(0);
        let key_der = pem::parse_pkcs8_key("CA key", key_pem)?;
        let key = key_pair_from(&key_der)?;
        let parents = match chain_pem {
            Some(text) => pem::parse_certs("CA chain", text)?,
            None => Vec::new(),
        };
        Self::assemble(cert, key, parents)
    }

    fn assemble(
        cert: CertificateDer<'static>,
        key: KeyPair,
        parents: Vec<CertificateDer<'static>>,
    ) -> Result<Self, Error> {
        let x509 = parse_cert("the CA certificate", &cert)?;
        let subject = x509.subject().to_string();
        check_is_ca(&x509)?;
        if key.public_key_raw() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(Error::KeyMismatch { subject });
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(|e| Error::BadCertificate {
            what: format!("the CA certificate {subject:?}"),
            detail: format!("it cannot be used to issue certificates: {e}"),
        })?;
        check_issuer_round_trip(&issuer, &x509, &subject)?;
        let parents = order_parents(&x509, &cert, parents)?;
        let not_before = x509.validity().not_before.to_datetime();
        let not_after = x509.validity().not_after.to_datetime();
        let signs_crls = !matches!(x509.key_usage(), Ok(Some(ku)) if !ku.value.crl_sign());
        Ok(Self {
            cert,
            parents,
            issuer,
            subject,
            not_before,
            not_after,
            signs_crls,
            crl_uri: None,
        })
    }

    /// Sets where this CA's CRL is published: every certificate issued from then on carries a
    /// CRL distribution points extension with this one URI (`http://` or `https://`). `None`
    /// issues certificates without one.
    pub fn with_crl_uri(mut self, uri: Option<String>) -> Result<Self, Error> {
        if let Some(uri) = &uri {
            crate::crl::check_crl_uri(uri)?;
        }
        self.crl_uri = uri;
        Ok(self)
    }

    /// Where this CA's CRL is published, if set ([`Self::with_crl_uri`]).
    pub fn crl_uri(&self) -> Option<&str> {
        self.crl_uri.as_deref()
    }

    /// Whether the CA certificate allows signing CRLs: its keyUsage has cRLSign, or it has no
    /// keyUsage. A CA made by [`Self::generate`] always does.
    pub fn signs_crls(&self) -> bool {
        self.signs_crls
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// The CA certificate's PEM.
    pub fn cert_pem(&self) -> String {
        pem::cert_pem(&self.cert)
    }

    /// The CA certificate's DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert
    }

    /// The CA key's PKCS#8 PEM, wiped when dropped.
    pub fn key_pem(&self) -> Zeroizing<String> {
        pem::pkcs8_key_pem(self.issuer.key().serialized_der())
    }

    /// The CA certificate followed by its parents, nearest first: what EST `cacerts` returns, and
    /// what a verifier needs as trust anchors and intermediates.
    pub fn chain_der(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(&self.cert)
            .chain(&self.parents)
            .cloned()
            .collect()
    }

    /// [`Self::chain_der`] as concatenated PEM blocks.
    pub fn chain_pem(&self) -> String {
        crate::certs_to_pem(&self.chain_der())
    }

    /// The CA certificate's subject, as `O=rxgate, CN=...`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The start of the CA certificate's validity.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// The end of the CA certificate's validity; certificates it issues never outlive it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Issues the gateway's TLS server certificate with a fresh ECDSA P-256 key: `CN` = the first
    /// name, one SAN per name (an IP address SAN when the name parses as one, a DNS name
    /// otherwise), extended key usages serverAuth and clientAuth (the gateway also presents it
    /// to Modbus/TLS devices), `CA:FALSE`, a random 16-byte serial, the CA's CRL distribution
    /// point when it has one, valid from one hour before `now` for `validity` (never past the
    /// CA's own end).
    pub fn issue_server(
        &self,
        names: &[String],
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedKeyPair, Error> {
        let Some(first) = names.first() else {
            return Err(Error::InvalidName {
                what: "server name",
                name: String::new(),
                reason: "no names given; pass at least one host name or IP address",
            });
        };
        check_common_name("server name", first)?;
        let mut sans = Vec::with_capacity(names.len());
        for name in names {
            sans.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    check_dns_name(name)?;
                    SanType::DnsName(
                        name.as_str()
                            .try_into()
                            .map_err(Error::build("encode a server name"))?,
                    )
                }
            });
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(Error::build("generate the server key"))?;
        let (mut params, serial) =
            self.leaf_params("server certificate", now, BACKDATE.unsigned_abs(), validity)?;
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(Error::build("sign the server certificate"))?;
        let cert = finish(cert.der().clone(), serial, self.crl_uri(), |_| Ok(()))?;
        Ok(IssuedKeyPair {
            cert,
            key_pem: pem::pkcs8_key_pem(key.serialized_der()),
        })
    }

    /// Issues a device's client certificate from `profile` and the CSR's public key alone:
    /// `CN` = device id, one SAN URI `urn:rxgate:device:<site>:<kind>:<device_id>`, extended key
    /// usage clientAuth, keyUsage digitalSignature, `CA:FALSE`, authority and subject key
    /// identifiers, a random 16-byte serial, the CA's CRL distribution point when it has one
    /// ([`Self::with_crl_uri`]), valid from `now - backdate` to `now + validity`
    /// (never past the CA's own end). Nothing else from the CSR is used; its common name must be
    /// the device id.
    pub fn issue_device(
        &self,
        csr: &CheckedCsr,
        profile: &DeviceProfile,
    ) -> Result<IssuedCert, Error> {
        crate::validate_site(&profile.site)?;
        crate::validate_kind(&profile.kind)?;
        crate::validate_device_id(&profile.device_id)?;
        if csr.common_name != profile.device_id {
            return Err(Error::SubjectMismatch {
                csr_cn: csr.common_name.clone(),
                device_id: profile.device_id.clone(),
            });
        }
        let uri = device_uri(&profile.site, &profile.kind, &profile.device_id);
        let (mut params, serial) = self.leaf_params(
            "device certificate",
            profile.now,
            profile.backdate,
            profile.validity,
        )?;
        params
            .distinguished_name
            .push(DnType::CommonName, profile.device_id.as_str());
        params.subject_alt_names = vec![SanType::URI(
            uri.as_str()
                .try_into()
                .map_err(Error::build("encode the device URI"))?,
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(csr.public_key(), &self.issuer)
            .map_err(Error::build("sign the device certificate"))?;
        finish(cert.der().clone(), serial, self.crl_uri(), |x509| {
            check_device_profile(x509, &uri, &csr.public_key().subject_public_key_info())
        })
    }

    /// The parameters every leaf shares: an empty subject, `CA:FALSE`, key identifiers, a random
    /// serial and the validity window.
    fn leaf_params(
        &self,
        what: &'static str,
        now: OffsetDateTime,
        backdate: Duration,
        validity: Duration,
    ) -> Result<(CertificateParams, String), Error> {
        if now < self.not_before || now >= self.not_after {
            return Err(Error::CaNotValidAt {
                not_before: self.not_before,
                not_after: self.not_after,
                now,
            });
        }
        if validity.is_zero() {
            return Err(Error::InvalidValidity {
                what,
                reason: "it is zero; give a positive duration".to_owned(),
            });
        }
        let too_long = || Error::InvalidValidity {
            what,
            reason: "the end of validity does not fit in a certificate; give a shorter duration"
                .to_owned(),
        };
        let validity = time::Duration::try_from(validity).map_err(|_| too_long())?;
        let backdate = time::Duration::try_from(backdate).map_err(|_| too_long())?;
        let not_after = now.checked_add(validity).ok_or_else(too_long)?;
        let not_before = now.checked_sub(backdate).ok_or_else(too_long)?;

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.crl_distribution_points = crate::crl::distribution_points(self.crl_uri());
        let serial = random_serial()?;
        let serial_hex = hex(serial.as_ref());
        params.serial_number = Some(serial);
        params.not_before = not_before.max(self.not_before);
        params.not_after = not_after.min(self.not_after);
        Ok((params, serial_hex))
    }
}

/// Reads a PKCS#8 key into a signing key.
fn key_pair_from(der: &PrivateKeyDer<'_>) -> Result<KeyPair, Error> {
    KeyPair::try_from(der).map_err(|_| Error::UnsupportedKey {
        detail: "it is not an ECDSA P-256/P-384, Ed25519 or RSA (2048 to 8192 bits) key".to_owned(),
    })
}

fn parse_cert<'a>(what: &str, der: &'a [u8]) -> Result<X509Certificate<'a>, Error> {
    let bad = |detail: String| Error::BadCertificate {
        what: what.to_owned(),
        detail,
    };
    let (rest, x509) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad(format!("{} bytes follow the certificate", rest.len())));
    }
    Ok(x509)
}

fn check_is_ca(x509: &X509Certificate<'_>) -> Result<(), Error> {
    let subject = || x509.subject().to_string();
    let bc = x509
        .basic_constraints()
        .map_err(|e| Error::BadCertificate {
            what: format!("the CA certificate {:?}", subject()),
            detail: format!("its basicConstraints: {e}"),
        })?;
    if !bc.is_some_and(|bc| bc.value.ca) {
        return Err(Error::NotACa {
            subject: subject(),
            reason: "basicConstraints CA:TRUE is missing",
        });
    }
    let ku = x509.key_usage().map_err(|e| Error::BadCertificate {
        what: format!("the CA certificate {:?}", subject()),
        detail: format!("its keyUsage: {e}"),
    })?;
    if ku.is_some_and(|ku| !ku.value.key_cert_sign()) {
        return Err(Error::NotACa {
            subject: subject(),
            reason: "its keyUsage lacks keyCertSign",
        });
    }
    Ok(())
}

/// Signs a throwaway certificate and checks that it names the CA exactly as the CA certificate
/// names itself (rcgen rebuilds issuer names, and cannot represent repeated or multi-valued
/// attributes), and that the CA certificate's key verifies the signature.
fn check_issuer_round_trip(
    issuer: &Issuer<'static, KeyPair>,
    ca: &X509Certificate<'_>,
    subject: &str,
) -> Result<(), Error> {
    let mut params = CertificateParams::default();
    params.serial_number = Some(SerialNumber::from(1u64));
    let probe = params
        .signed_by(issuer.key(), issuer)
        .map_err(Error::build("sign a test certificate with the CA key"))?;
    let probe = parse_cert("the CA's test certificate", probe.der())?;
    if probe.issuer().as_raw() != ca.subject().as_raw() {
        return Err(Error::UnsupportedCaName {
            subject: subject.to_owned(),
            detail: format!("it would be written as {:?}", probe.issuer().to_string()),
        });
    }
    probe
        .verify_signature(Some(ca.public_key()))
        .map_err(|_| Error::KeyMismatch {
            subject: subject.to_owned(),
        })
}

/// Orders the given parents from the CA's issuer upwards, checking each link's name and
/// signature. Copies of the CA certificate itself are dropped.
fn order_parents(
    ca: &X509Certificate<'_>,
    ca_der: &[u8],
    parents: Vec<CertificateDer<'static>>,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let mut remaining: Vec<CertificateDer<'static>> = Vec::new();
    for (i, der) in parents.into_iter().enumerate() {
        parse_cert(&format!("certificate {} of the CA chain", i + 1), &der)?;
        if der.as_ref() != ca_der && !remaining.contains(&der) {
            remaining.push(der);
        }
    }

    let mut ordered = Vec::with_capacity(remaining.len());
    let mut current_der: Vec<u8> = ca_der.to_vec();
    loop {
        let current = parse_cert("the CA chain", &current_der)?;
        if current.subject().as_raw() == current.issuer().as_raw() {
            break; // a self-signed root ends the chain
        }
        let parent_at = remaining.iter().position(|p| {
            parse_cert("the CA chain", p).is_ok_and(|parent| {
                parent.subject().as_raw() == current.issuer().as_raw()
                    && current.verify_signature(Some(parent.public_key())).is_ok()
            })
        });
        let Some(at) = parent_at else { break };
        let parent = remaining.remove(at);
        let parsed = parse_cert("the CA chain", &parent)?;
        if check_is_ca(&parsed).is_err() {
            return Err(Error::BrokenChain {
                subject: parsed.subject().to_string(),
                reason: "is not a CA certificate".to_owned(),
            });
        }
        current_der = parent.to_vec();
        ordered.push(parent);
    }
    if let Some(stray) = remaining.first() {
        let subject = parse_cert("the CA chain", stray)?.subject().to_string();
        return Err(Error::BrokenChain {
            subject,
            reason: format!(
                "did not sign the CA certificate {:?} nor any certificate above it",
                ca.subject().to_string()
            ),
        });
    }
    Ok(ordered)
}

/// Reads an issued certificate back, checks it is a leaf and passes `check`, and describes it.
fn finish(
    der: CertificateDer<'static>,
    serial: String,
    crl_uri: Option<&str>,
    check: impl FnOnce(&X509Certificate<'_>) -> Result<(), Error>,
) -> Result<IssuedCert, Error> {
    let x509 = parse_cert("the issued certificate", &der)?;
    let violation = |detail: &str| Error::ProfileViolation {
        detail: detail.to_owned(),
    };
    match x509.basic_constraints() {
        Ok(Some(bc)) if !bc.value.ca => {}
        _ => return Err(violation("basicConstraints is not CA:FALSE")),
    }
    if crate::identity::serial_hex(x509.raw_serial()) != serial {
        return Err(violation("the serial number differs"));
    }
    if crate::crl::uris_of(&x509) != crl_uri.into_iter().map(str::to_owned).collect::<Vec<_>>() {
        return Err(violation("the CRL distribution point is not the CA's"));
    }
    check(&x509)?;
    let not_before = x509.validity().not_before.to_datetime();
    let not_after = x509.validity().not_after.to_datetime();
    drop(x509);
    Ok(IssuedCert {
        pem: pem::cert_pem(&der),
        der,
        serial,
        not_before,
        not_after,
    })
}

fn check_device_profile(x509: &X509Certificate<'_>, uri: &str, spki: &[u8]) -> Result<(), Error> {
    let violation = |detail: &str| Error::ProfileViolation {
        detail: detail.to_owned(),
    };
    let sans: Vec<_> = match x509.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.iter().collect(),
        _ => return Err(violation("subjectAltName is missing")),
    };
    if !matches!(sans.as_slice(), [x509_parser::extensions::GeneralName::URI(u)] if *u == uri) {
        return Err(violation("subjectAltName is not exactly the device URI"));
    }
    match x509.extended_key_usage() {
        Ok(Some(eku))
            if eku.value.client_auth
                && !eku.value.server_auth
                && !eku.value.any
                && !eku.value.code_signing
                && eku.value.other.is_empty() => {}
        _ => return Err(violation("extendedKeyUsage is not exactly clientAuth")),
    }
    if x509.public_key().raw != spki {
        return Err(violation("the public key is not the request's"));
    }
    Ok(())
}

/// A random positive 16-byte serial number whose first byte is non-zero, so its DER and hex forms
/// always have 16 bytes.
fn random_serial() -> Result<SerialNumber, Error> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Random)?;
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 0x01;
    }
    Ok(SerialNumber::from_slice(&bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn add_years(t: OffsetDateTime, years: i32) -> Option<OffsetDateTime> {
    let year = t.year().checked_add(years)?;
    t.replace_year(year)
        .ok()
        // 29 February has no counterpart in most years.
        .or_else(|| t.replace_day(28).ok()?.replace_year(year).ok())
}

fn bad_time(what: &'static str, now: OffsetDateTime) -> Error {
    Error::InvalidValidity {
        what,
        reason: format!("the time {now} is out of range; check the clock"),
    }
}

#[cfg(test)]
mod tests;
