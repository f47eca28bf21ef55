//! Reading a device's identity back from its certificate.

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::Error;

/// The prefix of the URI that names a device in its certificate.
pub const DEVICE_URI_PREFIX: &str = "urn:rxgate:device:";

/// The SAN URI of a device certificate: `urn:rxgate:device:<site>:<kind>:<device_id>`.
///
/// The parts are not checked here; [`crate::CertificateAuthority::issue_device`] validates them
/// before use, which also guarantees that none contains a `:`.
pub fn device_uri(site: &str, kind: &str, device_id: &str) -> String {
    format!("{DEVICE_URI_PREFIX}{site}:{kind}:{device_id}")
}

/// Who a device certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// The device id (the certificate's common name, equal to the URI's last part).
    pub device_id: String,
    /// The device kind, one of [`crate::KINDS`].
    pub kind: String,
    /// The site the device was enrolled at.
    pub site: String,
    /// The serial number in lowercase hex, no colons, no leading zero bytes.
    pub serial: String,
    /// The start of validity.
    pub not_before: OffsetDateTime,
    /// The end of validity.
    pub not_after: OffsetDateTime,
}

/// Reads the identity from a device certificate presented at TLS: the common name, and site,
/// kind and device id from the one `urn:rxgate:device:` SAN URI, which must agree with the
/// common name.
///
/// This does not verify the certificate; the TLS verifier has done that (chain, validity,
/// revocation) before the listener asks who the device is.
pub fn device_identity(cert_der: &[u8]) -> Result<DeviceIdentity, Error> {
    let not_device = |reason: String| Error::NotADeviceCertificate { reason };
    let (rest, x509) = X509Certificate::from_der(cert_der)
        .map_err(|e| not_device(format!("it does not parse as X.509 ({e})")))?;
    if !rest.is_empty() {
        return Err(not_device(format!(
            "{} bytes follow the certificate",
            rest.len()
        )));
    }

    let cns: Vec<_> = x509.subject().iter_common_name().collect();
    let [cn] = cns.as_slice() else {
        return Err(not_device(format!(
            "its subject has {} common names, not one",
            cns.len()
        )));
    };
    let cn = cn
        .as_str()
        .map_err(|_| not_device("its common name is not text".to_owned()))?;

    let san = x509
        .subject_alternative_name()
        .map_err(|e| not_device(format!("its subjectAltName does not parse ({e})")))?
        .ok_or_else(|| not_device("it has no subjectAltName".to_owned()))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with(DEVICE_URI_PREFIX) => Some(*uri),
            _ => None,
        })
        .collect();
    let [uri] = uris.as_slice() else {
        return Err(not_device(format!(
            "it has {} {DEVICE_URI_PREFIX} URIs, not one",
            uris.len()
        )));
    };
    let rest = &uri[DEVICE_URI_PREFIX.len()..];
    let parts: Vec<&str> = rest.split(':').collect();
    let [site, kind, device_id] = parts.as_slice() else {
        return Err(not_device(format!(
            "its URI {uri:?} is not {DEVICE_URI_PREFIX}<site>:<kind>:<device id>"
        )));
    };
    crate::validate_site(site)
        .and_then(|()| crate::validate_kind(kind))
        .and_then(|()| crate::validate_device_id(device_id))
        .map_err(|e| not_device(format!("its URI {uri:?} is malformed: {e}")))?;
    if *device_id != cn {
        return Err(not_device(format!(
            "its common name {cn:?} differs from the device id {device_id:?} in its URI"
        )));
    }

    Ok(DeviceIdentity {
        device_id: (*device_id).to_owned(),
        kind: (*kind).to_owned(),
        site: (*site).to_owned(),
        serial: serial_hex(x509.raw_serial()),
        not_before: x509.validity().not_before.to_datetime(),
        not_after: x509.validity().not_after.to_datetime(),
    })
}

/// A certificate serial in lowercase hex without the DER sign byte or other leading zeros.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    crate::ca::hex(&raw[start..])
}

/// The SHA-256 fingerprint of DER bytes as uppercase hex pairs joined by colons, the form
/// `openssl x509 -noout -fingerprint -sha256` prints, for comparing a CA out of band.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex = crate::ca::hex(digest.as_ref()).to_ascii_uppercase();
    let mut out = String::with_capacity(hex.len() / 2 * 3);
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.extend(pair.iter().map(|&b| char::from(b)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_hex_drops_the_sign_byte() {
        assert_eq!(serial_hex(&[0x00, 0x80, 0x01]), "8001");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[0x7f, 0x00]), "7f00");
    }

    #[test]
    fn fingerprints_use_openssl_formatting() {
        let fp = fingerprint_sha256(b"");
        assert!(fp.starts_with("E3:B0:C4:42:98:FC:1C:14"), "{fp}");
        assert_eq!(fp.len(), 32 * 3 - 1);
    }

    #[test]
    fn device_identity_rejects_garbage() {
        assert!(matches!(
            device_identity(b"nope"),
            Err(Error::NotADeviceCertificate { .. })
        ));
    }
}
