//! What the fuzz targets share: the byte formats of the structure-aware targets (so that
//! `seeds` can write real inputs in them) and small helpers.
//!
//! A structure-aware input is read front to back; a byte past the end reads as 0, so every
//! input, however short, is a valid one.

pub mod csr;
pub mod modbus;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The gateway's clock in the targets: fixed, so that a crash reproduces whatever the day.
pub fn gateway_now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_780_000_000).expect("a valid timestamp")
}

/// JSON equality, with numbers equal when within 2 ulp: serde_json (without its
/// `float_roundtrip` feature) may read the shortest decimal of an f64 back one ulp off.
pub fn json_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (a, b) {
        (J::Number(x), J::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) if x.is_finite() && y.is_finite() => near(x, y),
            _ => x == y,
        },
        (J::Array(x), J::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (J::Object(x), J::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, x), (ky, y))| kx == ky && json_eq(x, y))
        }
        _ => a == b,
    }
}

fn near(x: f64, y: f64) -> bool {
    x == y || (x.to_bits() as i64).abs_diff(y.to_bits() as i64) <= 2 && x.signum() == y.signum()
}

/// A device timestamp the payload parser accepted reaches the cloud message as the same
/// instant, in RFC 3339.
pub fn device_ts_survives(ts: Option<OffsetDateTime>, message: &serde_json::Value) {
    match (ts, &message["device_ts"]) {
        (None, serde_json::Value::Null) => {}
        (Some(ts), serde_json::Value::String(sent)) => {
            let sent = OffsetDateTime::parse(sent, &Rfc3339)
                .unwrap_or_else(|e| panic!("device_ts {sent:?} is not RFC 3339: {e}"));
            // Sent to the millisecond.
            assert!(
                (sent - ts).abs() < time::Duration::milliseconds(1),
                "{ts} sent as {sent}"
            );
        }
        (ts, sent) => panic!("device_ts {ts:?} sent as {sent}"),
    }
}

/// Reads fixed-size values off the front of a fuzz input.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn f64(&mut self) -> f64 {
        let mut bytes = [0u8; 8];
        for b in &mut bytes {
            *b = self.u8();
        }
        f64::from_be_bytes(bytes)
    }

    /// Everything not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.data
    }
}
