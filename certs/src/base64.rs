//! EST's transfer encoding: base64 of DER (RFC 7030 §4, as clarified by RFC 8951).

use ::base64::Engine as _;
use ::base64::engine::DecodePaddingMode;
use ::base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};

use crate::Error;

/// Standard alphabet; padding accepted when present and when absent, as clients differ.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &::base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes a base64 body, ignoring ASCII whitespace anywhere (clients wrap lines at 64 or 76
/// columns with CRLF or LF). An invalid character is reported with its byte offset.
///
/// PEM armor lines (`-----BEGIN ...-----`, `-----END ...-----`) are skipped too: what is between
/// them is the same base64 of DER, and `curl --data-binary @req.pem` then just works.
pub fn decode_body(body: &[u8]) -> Result<Vec<u8>, Error> {
    let mut compact = Vec::with_capacity(body.len());
    let mut line_start = true;
    let mut in_armor = false;
    for (offset, &b) in body.iter().enumerate() {
        if line_start && body[offset..].starts_with(b"-----") {
            in_armor = true;
        }
        line_start = b == b'\n';
        if in_armor {
            in_armor = b != b'\n';
            continue;
        }
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' | b'=' => compact.push(b),
            b if b.is_ascii_whitespace() => {}
            b => {
                return Err(Error::Base64 {
                    detail: format!(
                        "byte {offset} is {}, which is not in the base64 alphabet",
                        describe(b)
                    ),
                });
            }
        }
    }
    if compact.is_empty() {
        return Err(Error::Base64 {
            detail: "the body is empty".to_owned(),
        });
    }
    LENIENT.decode(&compact).map_err(|e| Error::Base64 {
        detail: format!("{e} (the data may be truncated)"),
    })
}

fn describe(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("{:?}", char::from(b))
    } else {
        format!("0x{b:02x}")
    }
}

/// Encodes DER as base64 in lines of 64 characters, each ended by `\n`.
pub fn encode_body(der: &[u8]) -> String {
    let mut out = String::with_capacity(der.len().div_ceil(3) * 4 + der.len().div_ceil(48));
    for chunk in der.chunks(48) {
        STANDARD.encode_string(chunk, &mut out);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..=255u8).cycle().take(700).collect()
    }

    #[test]
    fn encode_body_wraps_at_64_columns_with_lf() {
        let text = encode_body(&sample());
        assert!(!text.contains('\r'));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[..lines.len() - 1].iter().all(|l| l.len() == 64));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn decode_body_tolerates_crlf_every_64_characters() {
        let der = sample();
        let crlf = encode_body(&der).replace('\n', "\r\n");
        assert_eq!(decode_body(crlf.as_bytes()).unwrap(), der);
    }

    #[test]
    fn decode_body_tolerates_76_column_lines_spaces_and_no_line_breaks() {
        let der = sample();
        let flat = STANDARD.encode(&der);
        assert_eq!(decode_body(flat.as_bytes()).unwrap(), der);
        let wrapped: String = flat
            .as_bytes()
            .chunks(76)
            .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
            .collect();
        assert_eq!(decode_body(wrapped.as_bytes()).unwrap(), der);
        let spaced = format!("  {}\t\n", &flat);
        assert_eq!(decode_body(spaced.as_bytes()).unwrap(), der);
    }

    #[test]
    fn decode_body_accepts_missing_padding() {
        assert_eq!(decode_body(b"YWI").unwrap(), b"ab");
        assert_eq!(decode_body(b"YWI=").unwrap(), b"ab");
    }

    #[test]
    fn decode_body_names_the_offending_byte() {
        let err = decode_body(b"YWJj\r\nZG-V").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the body is not valid base64: byte 8 is '-', which is not in the base64 alphabet; \
             send the base64 of the DER data"
        );
    }

    #[test]
    fn decode_body_skips_pem_armor() {
        let der = sample();
        let pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\r\n{}-----END CERTIFICATE REQUEST-----\r\n",
            encode_body(&der).replace('\n', "\r\n")
        );
        assert_eq!(decode_body(pem.as_bytes()).unwrap(), der);
    }

    #[test]
    fn decode_body_refuses_an_empty_body() {
        assert!(decode_body(b"\r\n").is_err());
    }
}
