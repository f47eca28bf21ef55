//! Embeds the build time as `RXGATE_BUILD_EPOCH` (Unix seconds): `SOURCE_DATE_EPOCH` when it is
//! set (reproducible builds, Debian packaging), else the time this script runs. The gateway never
//! treats a time earlier than it as "now" (`clock::floor`). The script reruns only when it or
//! `SOURCE_DATE_EPOCH` changes, so the embedded time may be older than the binary: it stays a time
//! that has certainly passed, which is all the floor needs.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => match value.trim().parse::<u64>() {
            Ok(epoch) => epoch,
            Err(e) => panic!(
                "SOURCE_DATE_EPOCH={value:?} is not a Unix time in seconds ({e}); unset it or fix it"
            ),
        },
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    println!("cargo:rustc-env=RXGATE_BUILD_EPOCH={epoch}");
}
