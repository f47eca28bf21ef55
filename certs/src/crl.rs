//! Certificate revocation lists (RFC 5280 §5) signed by the gateway's CA, and the CRL
//! distribution point the CA writes into every certificate it issues.
//!
//! A CRL is version 2 with the authority key identifier and CRL number extensions (both required
//! by RFC 5280), thisUpdate and nextUpdate as given, and one entry per revoked serial with its
//! revocation time and, when known, a reasonCode. An unknown reason is written as no reasonCode at
//! all, which RFC 5280 §5.3.1 prefers to `unspecified`.

use rcgen::{
    CertificateRevocationListParams, CrlDistributionPoint, KeyIdMethod, RevokedCertParams,
    SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::{CertificateAuthority, Error};

/// Why a certificate was revoked, as far as the gateway knows (RFC 5280 §5.3.1 reason codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RevocationReason {
    /// Replaced by a newer certificate of the same device (renewal past its grace, or a new
    /// enrollment with a token).
    Superseded,
    /// The device was taken out of service.
    CessationOfOperation,
    /// The device's key is known or suspected to be exposed.
    KeyCompromise,
}

impl RevocationReason {
    fn to_rcgen(self) -> rcgen::RevocationReason {
        match self {
            RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
            RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
        }
    }
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCert {
    /// The serial number in lowercase hex, as [`crate::IssuedCert::serial`] gives it.
    pub serial: String,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
    /// Why, when known; `None` writes no reasonCode.
    pub reason: Option<RevocationReason>,
}

/// What a CRL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlContent {
    /// The CRL number: must grow with every CRL the CA issues (RFC 5280 §5.2.3).
    pub number: u64,
    /// When this CRL was issued.
    pub this_update: OffsetDateTime,
    /// When the next CRL will be issued at the latest; after it, clients treat this one as stale.
    pub next_update: OffsetDateTime,
    /// The revoked certificates.
    pub revoked: Vec<RevokedCert>,
}

impl CertificateAuthority {
    /// Signs a CRL listing `content.revoked`. Fails when the CA certificate's keyUsage lacks
    /// cRLSign (an imported intermediate may), when nextUpdate is not after thisUpdate, or when a
    /// serial is not hex.
    pub fn issue_crl(&self, content: &CrlContent) -> Result<Vec<u8>, Error> {
        if !self.signs_crls() {
            return Err(Error::CannotSignCrl {
                subject: self.subject().to_owned(),
            });
        }
        if content.next_update <= content.this_update {
            return Err(Error::InvalidCrl {
                reason: format!(
                    "nextUpdate {} is not after thisUpdate {}",
                    content.next_update, content.this_update
                ),
            });
        }
        let mut revoked_certs = Vec::with_capacity(content.revoked.len());
        for entry in &content.revoked {
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial_bytes(&entry.serial)?),
                revocation_time: entry.revoked_at,
                reason_code: entry.reason.map(RevocationReason::to_rcgen),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: content.this_update,
            next_update: content.next_update,
            crl_number: SerialNumber::from(content.number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(self.issuer())
            .map_err(Error::build("sign the CRL"))?;
        Ok(crl.der().to_vec())
    }
}

/// The CRL distribution point written into issued certificates, when the CA has one.
pub(crate) fn distribution_points(uri: Option<&str>) -> Vec<CrlDistributionPoint> {
    uri.map(|uri| CrlDistributionPoint {
        uris: vec![uri.to_owned()],
    })
    .into_iter()
    .collect()
}

/// Checks a CRL distribution point URI: `http://` or `https://`, printable ASCII without spaces
/// (it is written as an IA5String).
pub(crate) fn check_crl_uri(uri: &str) -> Result<(), Error> {
    let bad = |reason: &str| Error::InvalidCrl {
        reason: format!("distribution point {uri:?}: {reason}"),
    };
    if !(uri.starts_with("https://") || uri.starts_with("http://")) {
        return Err(bad("it must start with https:// or http://"));
    }
    if !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("it must be printable ASCII without spaces"));
    }
    Ok(())
}

/// The URIs of a certificate's CRL distribution points extension, in order; empty when it has
/// none.
pub fn crl_distribution_uris(cert_der: &[u8]) -> Result<Vec<String>, Error> {
    let (_, x509) = X509Certificate::from_der(cert_der).map_err(|e| Error::BadCertificate {
        what: "the certificate".to_owned(),
        detail: e.to_string(),
    })?;
    Ok(uris_of(&x509))
}

pub(crate) fn uris_of(x509: &X509Certificate<'_>) -> Vec<String> {
    let mut uris = Vec::new();
    for ext in x509.extensions() {
        if let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() {
            for point in points.iter() {
                if let Some(DistributionPointName::FullName(names)) = &point.distribution_point {
                    for name in names {
                        if let GeneralName::URI(uri) = name {
                            uris.push((*uri).to_owned());
                        }
                    }
                }
            }
        }
    }
    uris
}

fn serial_bytes(hex: &str) -> Result<Vec<u8>, Error> {
    let bad = || Error::InvalidCrl {
        reason: format!("serial {hex:?} is not an even number of hex digits"),
    };
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

#[cfg(test)]
mod tests;
