//! Input formats of the Modbus targets.
//!
//! `modbus_decode`: a register map and the device's replies.
//! ```text
//! u8   block_shift     how far before the first point the no-panic pass starts its blocks
//! u8   n               points (n % 65)
//! n ×  u8   function   bits 0-1: coil, discrete, holding, input; bit 2: `type` left to its default
//!      u16  address
//!      u8   type       % 6: bool, u16, i16, u32, i32, f32
//!      u8   word_order bit 0: little
//!      u8   scale      index into SCALES, or 255 and an f64 follows
//!      u8   offset     index into OFFSETS, or 255 and an f64 follows
//!      u8   name       0: "p<i>"; 1: the previous point's name; 2: not a valid name
//!      u8   unit       % 4: none, "°C", "", 40 bytes
//! rest                 reply data, consumed by the requests in plan order: 2 bytes per
//!                      register (big-endian, as on the wire), 1 bit per coil (LSB first)
//! ```
//!
//! `modbus_frame`: one read request and the raw reply bytes, framed as TCP or RTU.
//! ```text
//! u8   mode        bit 0: RTU (else TCP); bit 1: send `rest` as is (else frame it: MBAP header
//!                  with the request's transaction id, or unit id + CRC); bit 2: corrupt the
//!                  framing (wrong transaction id / length / CRC)
//! u8   function    % 4: coil, discrete, holding, input
//! u16  start
//! u16  count       1 to the function's limit
//! rest             the reply: a PDU (function code, then data) unless bit 1
//! ```

use rxgate::config::{DataType, Function, RegisterConfig, WordOrder};

use crate::Reader;

pub const SCALES: [f64; 16] = [
    1.0, 0.1, 0.01, 0.001, 10.0, -0.1, 0.5, 2.0, 0.0, 1e-9, 1e300, 1e-310, -1.0, 100.0, 0.25, 3.0,
];
pub const OFFSETS: [f64; 8] = [0.0, -40.0, -273.15, 273.15, 1e308, -1e308, 0.5, 1000.0];
pub const FUNCTIONS: [Function; 4] = [
    Function::Coil,
    Function::Discrete,
    Function::Holding,
    Function::Input,
];
pub const TYPES: [DataType; 6] = [
    DataType::Bool,
    DataType::U16,
    DataType::I16,
    DataType::U32,
    DataType::I32,
    DataType::F32,
];

/// A `modbus_decode` input, read.
pub struct MapInput<'a> {
    pub block_shift: u8,
    pub registers: Vec<RegisterConfig>,
    pub reply: &'a [u8],
}

fn pick(r: &mut Reader<'_>, table: &[f64]) -> f64 {
    match r.u8() {
        255 => r.f64(),
        i => table[usize::from(i) % table.len()],
    }
}

pub fn read_map(data: &[u8]) -> MapInput<'_> {
    let mut r = Reader::new(data);
    let block_shift = r.u8();
    let n = r.u8() % 65;
    let mut registers: Vec<RegisterConfig> = Vec::new();
    for i in 0..n {
        let function = r.u8();
        let address = r.u16();
        let kind = TYPES[usize::from(r.u8() % 6)];
        let word_order = if r.u8() & 1 == 1 {
            WordOrder::Little
        } else {
            WordOrder::Big
        };
        let scale = pick(&mut r, &SCALES);
        let offset = pick(&mut r, &OFFSETS);
        let name = match r.u8() % 3 {
            1 if !registers.is_empty() => registers[registers.len() - 1].name.clone(),
            2 => format!("p {i}"),
            _ => format!("p{i}"),
        };
        let unit = match r.u8() % 4 {
            0 => None,
            1 => Some("°C".to_owned()),
            2 => Some(String::new()),
            _ => Some("x".repeat(40)),
        };
        registers.push(RegisterConfig {
            name,
            function: FUNCTIONS[usize::from(function & 3)],
            address,
            kind: (function & 4 == 0).then_some(kind),
            word_order,
            scale,
            offset,
            unit,
            count: None,
        });
    }
    MapInput {
        block_shift,
        registers,
        reply: r.rest(),
    }
}

/// Writes `registers` and `reply` in the `modbus_decode` format (for seeds).
pub fn write_map(registers: &[RegisterConfig], reply: &[u8]) -> Vec<u8> {
    let mut out = vec![0, registers.len() as u8];
    for reg in registers {
        let function = FUNCTIONS
            .iter()
            .position(|f| *f == reg.function)
            .unwrap_or(0) as u8;
        let (function, kind) = match reg.kind {
            Some(kind) => (function, TYPES.iter().position(|t| *t == kind).unwrap_or(0)),
            None => (function | 4, 0),
        };
        out.push(function);
        out.extend_from_slice(&reg.address.to_be_bytes());
        out.push(kind as u8);
        out.push(u8::from(reg.word_order == WordOrder::Little));
        for (value, table) in [(reg.scale, &SCALES[..]), (reg.offset, &OFFSETS[..])] {
            match table.iter().position(|t| *t == value) {
                Some(i) => out.push(i as u8),
                None => {
                    out.push(255);
                    out.extend_from_slice(&value.to_be_bytes());
                }
            }
        }
        out.push(0);
        out.push(match reg.unit.as_deref() {
            None => 0,
            Some("°C") => 1,
            Some("") => 2,
            Some(_) => 3,
        });
    }
    out.extend_from_slice(reply);
    out
}

/// The next `count` registers of a reply stream (zeros once it runs out).
pub fn take_words(reply: &mut &[u8], count: usize) -> Vec<u16> {
    (0..count)
        .map(|_| {
            let mut r = Reader::new(reply);
            let word = r.u16();
            *reply = r.rest();
            word
        })
        .collect()
}

/// The next `count` bits of a reply stream, packed LSB first as on the wire.
pub fn take_bits(reply: &mut &[u8], count: usize) -> Vec<bool> {
    let bytes = count.div_ceil(8);
    let (packed, rest) = reply.split_at(bytes.min(reply.len()));
    *reply = rest;
    (0..count)
        .map(|i| packed.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1))
        .collect()
}

/// A `modbus_frame` input, read.
pub struct FrameInput<'a> {
    pub rtu: bool,
    pub raw: bool,
    pub corrupt: bool,
    pub function: Function,
    pub start: u16,
    pub count: u16,
    pub reply: &'a [u8],
}

pub fn read_frame(data: &[u8]) -> FrameInput<'_> {
    let mut r = Reader::new(data);
    let mode = r.u8();
    let function = FUNCTIONS[usize::from(r.u8() & 3)];
    let start = r.u16();
    let limit = if function.is_bits() { 2000 } else { 125 };
    let count = r.u16() % limit + 1;
    FrameInput {
        rtu: mode & 1 == 1,
        raw: mode & 2 == 2,
        corrupt: mode & 4 == 4,
        function,
        start,
        count,
        reply: r.rest(),
    }
}

/// Writes a `modbus_frame` input whose reply is `pdu`, framed by the target.
pub fn write_frame(rtu: bool, function: Function, start: u16, count: u16, pdu: &[u8]) -> Vec<u8> {
    let function = FUNCTIONS.iter().position(|f| *f == function).unwrap_or(0) as u8;
    let mut out = vec![u8::from(rtu), function];
    out.extend_from_slice(&start.to_be_bytes());
    out.extend_from_slice(&(count - 1).to_be_bytes());
    out.extend_from_slice(pdu);
    out
}

/// Modbus RTU's CRC-16 (polynomial 0xA001, initial 0xFFFF), sent low byte first.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}
