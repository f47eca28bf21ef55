//! A device's register map and its replies, through the poller's pure functions
//! (`gateway/src/modbus/{plan,decode}.rs`): `plan` groups the points into reads,
//! `decode_point` turns the registers or bits of a reply into values.
//!
//! The map goes through `Config::check` first, as the poller's `build` does. For a map the
//! check accepts: every point is read by exactly one request that fits Modbus's limits and
//! covers it; a reply of the requested size decodes every point; and a value that decodes is
//! a finite number (it is reported with quality `good`). For any map: no panic, whatever the
//! reply and wherever its block starts. Input format: `rxgate_fuzz::modbus`.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use rxgate::config::{Config, DeviceConfig};
use rxgate::modbus::{
    DecodeError, MAX_BITS, MAX_REGISTERS, PointSpec, Raw, decode_point, plan, raw_number,
};
use rxgate::message::Value;
use rxgate_fuzz::modbus::{read_map, take_bits, take_words};

fn device() -> DeviceConfig {
    toml::from_str("transport = \"tcp\"\naddress = \"127.0.0.1\"").expect("a polled device")
}

fuzz_target!(|data: &[u8]| {
    let input = read_map(data);
    let mut config = Config::loopback("store-0042", std::path::Path::new("/nonexistent"));
    let mut dev = device();
    dev.registers = input.registers.clone();
    config.devices.insert("fridge-01".to_owned(), dev);
    let accepted = config.check().is_ok();
    let points: Vec<PointSpec> = input.registers.iter().map(PointSpec::from_config).collect();
    if accepted {
        checked_map(&points, input.reply);
    } else {
        any_map(&points, input.block_shift, input.reply);
    }
});

fn checked_map(points: &[PointSpec], mut reply: &[u8]) {
    let requests = plan(points);
    let mut seen = BTreeSet::new();
    for req in &requests {
        let limit = if req.function.is_bits() {
            MAX_BITS
        } else {
            MAX_REGISTERS
        };
        assert!(
            req.count >= 1 && req.count <= limit,
            "{req:?} exceeds {limit}"
        );
        assert!(
            u32::from(req.start) + u32::from(req.count) <= 65_536,
            "{req:?} runs past address 65535"
        );
        let raw_words;
        let raw_bits;
        let raw = if req.function.is_bits() {
            raw_bits = take_bits(&mut reply, usize::from(req.count));
            Raw::Bits(&raw_bits)
        } else {
            raw_words = take_words(&mut reply, usize::from(req.count));
            Raw::Words(&raw_words)
        };
        for &i in &req.points {
            assert!(seen.insert(i), "point {i} read twice");
            let p = &points[i];
            assert_eq!(p.function, req.function, "{req:?} carries {p:?}");
            assert!(
                p.address >= req.start && p.end() <= u32::from(req.start) + u32::from(req.count),
                "{req:?} does not cover {p:?}"
            );
            match decode_point(p, req.start, &raw) {
                Ok(Value::Number(n)) => assert!(
                    n.is_finite(),
                    "{p:?} decodes to {n}, which would be reported as good"
                ),
                Ok(Value::Bool(_)) => assert!(p.function.is_bits()),
                // A NaN or infinite float from the device: reported stale, not good.
                Err(DecodeError::NotFinite(f)) => assert!(!f.is_finite()),
                // A finite reading that scaling takes out of range: the same.
                Err(DecodeError::OutOfRange { raw, .. }) => assert!(raw.is_finite()),
                Err(e) => panic!("{p:?} in a reply of the requested size: {e}"),
            }
        }
    }
    assert_eq!(seen.len(), points.len(), "a point is never read");
    // Functions come in a stable order, each by address.
    assert!(
        requests
            .windows(2)
            .all(|w| (w[0].function, w[0].start) < (w[1].function, w[1].start))
    );
}

fn any_map(points: &[PointSpec], shift: u8, mut reply: &[u8]) {
    let _ = plan(points);
    let words = take_words(&mut reply, 130);
    let bits = take_bits(&mut reply, 130);
    for p in points {
        let start = p.address.wrapping_sub(u16::from(shift));
        let len = usize::from(shift) % 131;
        for raw in [Raw::Words(&words[..len]), Raw::Bits(&bits[..len])] {
            let _ = decode_point(p, start, &raw);
        }
        let _ = raw_number(p.data_type, p.word_order, &words[..len.min(2)]);
    }
}
