//! An EST `simpleenroll` body as the enrollment endpoint takes it: base64 (maybe PEM-armoured,
//! wrapped, padded or not) decoded by `rxgate_certs::base64::decode_body`, then checked as a CSR.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rxgate_certs::base64::{decode_body, encode_body};

fuzz_target!(|data: &[u8]| {
    let der = match decode_body(data) {
        Ok(der) => der,
        Err(e) => return drop(e.to_string()),
    };
    // Base64 only ever shrinks: 3 bytes for every 4 characters kept.
    assert!(
        der.len() * 4 <= data.len() * 3 + 3,
        "decoded more than the body holds"
    );
    // What the gateway writes, it reads back.
    assert_eq!(
        decode_body(encode_body(&der).as_bytes()).ok().as_ref(),
        Some(&der)
    );
    match rxgate_certs::check_csr(&der) {
        Ok(csr) => rxgate_fuzz::csr::accepted(&csr),
        Err(e) => drop(e.to_string()),
    }
});
