//! PEM reading and writing shared by the CA and the EST helpers.

use ::base64::Engine as _;
use ::base64::engine::general_purpose::STANDARD;
use rustls_pki_types::pem::{self, PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use crate::Error;

/// Appends one PEM block to `out`, with 64-column lines and `\n` line ends.
pub(crate) fn encode_into(out: &mut String, label: &str, der: &[u8]) {
    // Encode in 48-byte chunks: each is exactly one 64-character line, and no intermediate
    // buffer holds the whole (possibly secret) payload.
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in der.chunks(48) {
        STANDARD.encode_string(chunk, out);
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
}

/// The size of a PEM block, so secret PEM can be written into a buffer that never reallocates.
fn encoded_len(label: &str, der_len: usize) -> usize {
    let lines = der_len.div_ceil(48);
    let body = der_len.div_ceil(3) * 4 + lines;
    2 * (label.len() + 16) + body
}

/// PEM of one certificate.
pub(crate) fn cert_pem(der: &[u8]) -> String {
    let mut out = String::with_capacity(encoded_len("CERTIFICATE", der.len()));
    encode_into(&mut out, "CERTIFICATE", der);
    out
}

/// PEM of a PKCS#8 private key, in a buffer that is wiped when dropped.
pub(crate) fn pkcs8_key_pem(der: &[u8]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(encoded_len("PRIVATE KEY", der.len())));
    encode_into(&mut out, "PRIVATE KEY", der);
    out
}

/// Every `CERTIFICATE` block in `text`, in order.
pub(crate) fn parse_certs(
    what: &'static str,
    text: &str,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let mut certs = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes()) {
        let (kind, der) = item.map_err(|e| Error::Pem {
            what,
            detail: format!("malformed PEM ({e}); pass PEM text as written by openssl"),
        })?;
        if kind == SectionKind::Certificate {
            certs.push(CertificateDer::from(der));
        }
    }
    if certs.is_empty() {
        return Err(Error::Pem {
            what,
            detail: "no \"-----BEGIN CERTIFICATE-----\" block found; pass a PEM certificate file"
                .to_owned(),
        });
    }
    Ok(certs)
}

/// The single PKCS#8 private key in `text`.
pub(crate) fn parse_pkcs8_key(
    what: &'static str,
    text: &str,
) -> Result<PrivateKeyDer<'static>, Error> {
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(Error::UnsupportedKey {
            detail: format!("the {what} is encrypted"),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound => Error::Pem {
            what,
            detail: "no \"-----BEGIN PRIVATE KEY-----\" block found; pass a PEM private key file"
                .to_owned(),
        },
        e => Error::Pem {
            what,
            detail: format!("malformed PEM ({e}); pass PEM text as written by openssl"),
        },
    })?;
    match key {
        PrivateKeyDer::Pkcs8(_) => Ok(key),
        PrivateKeyDer::Pkcs1(_) => Err(Error::UnsupportedKey {
            detail: format!("the {what} is a PKCS#1 \"RSA PRIVATE KEY\", not PKCS#8"),
        }),
        PrivateKeyDer::Sec1(_) => Err(Error::UnsupportedKey {
            detail: format!("the {what} is a SEC1 \"EC PRIVATE KEY\", not PKCS#8"),
        }),
        _ => Err(Error::UnsupportedKey {
            detail: format!("the {what} has an unknown PEM format"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_lines_are_64_columns_and_round_trip() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let pem = cert_pem(&der);
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert_eq!(pem.len(), encoded_len("CERTIFICATE", der.len()));
        let back = parse_certs("test", &pem).unwrap();
        assert_eq!(back, vec![CertificateDer::from(der)]);
    }

    #[test]
    fn key_pem_buffer_is_sized_exactly() {
        for len in [0, 1, 47, 48, 49, 121, 138] {
            let der = vec![7u8; len];
            let pem = pkcs8_key_pem(&der);
            assert_eq!(pem.len(), encoded_len("PRIVATE KEY", len), "{len}");
        }
    }

    #[test]
    fn sec1_keys_are_refused_with_a_conversion_hint() {
        let text = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        let err = parse_pkcs8_key("CA key", text).unwrap_err();
        assert!(err.to_string().contains("SEC1"), "{err}");
        assert!(err.to_string().contains("openssl pkcs8 -topk8"), "{err}");
    }
}
