//! `rxgate_certs::check_csr` on arbitrary DER: Ok or a refusal, never a panic; an accepted
//! request has a common name and a supported key, and enrollment can issue its certificate.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match rxgate_certs::check_csr(data) {
        Ok(csr) => rxgate_fuzz::csr::accepted(&csr),
        Err(e) => drop(e.to_string()),
    }
});
