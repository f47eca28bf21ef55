//! From raw registers to values: pure functions, no I/O.

use crate::devices::{DataType, Function, RegisterConfig, WordOrder};
use crate::message::Value;

/// One point of a device's register map, checked and ready to decode.
#[derive(Debug, Clone, PartialEq)]
pub struct PointSpec {
    pub name: String,
    pub function: Function,
    pub address: u16,
    pub data_type: DataType,
    pub word_order: WordOrder,
    pub scale: f64,
    pub offset: f64,
    pub unit: Option<String>,
}

impl PointSpec {
    /// Takes a register entry that passed `config::check_device`.
    pub fn from_config(r: &RegisterConfig) -> PointSpec {
        PointSpec {
            name: r.name.clone(),
            function: r.function,
            address: r.address,
            data_type: r.data_type(),
            word_order: r.word_order,
            scale: r.scale,
            offset: r.offset,
            unit: r.unit.clone(),
        }
    }

    /// Registers (or bits) the point occupies.
    pub fn width(&self) -> u16 {
        self.data_type.words()
    }

    /// The address one past the point's last register, widened so it cannot overflow.
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.width())
    }
}

/// What a block of registers or bits read from the device holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw<'a> {
    Words(&'a [u16]),
    Bits(&'a [bool]),
}

/// Why a point could not be decoded from what the device returned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("the reply holds {got} values, the point needs {needed} from offset {offset}")]
    Short {
        offset: usize,
        needed: usize,
        got: usize,
    },
    #[error("a {0} point was read as bits, or a bool point as registers")]
    Mismatch(&'static str),
    #[error("the device reports a value that is not a number ({0})")]
    NotFinite(f32),
    #[error("the device's {raw} scaled by {scale} with offset {offset} is out of range")]
    OutOfRange { raw: f64, scale: f64, offset: f64 },
}

/// Decodes `spec` from `raw`, where `raw[0]` is the register (or bit) at `block_start`.
pub fn decode_point(
    spec: &PointSpec,
    block_start: u16,
    raw: &Raw<'_>,
) -> Result<Value, DecodeError> {
    let offset = usize::from(spec.address.wrapping_sub(block_start));
    let needed = usize::from(spec.width());
    match (raw, spec.data_type) {
        (Raw::Bits(bits), DataType::Bool) => {
            bits.get(offset)
                .map(|b| Value::Bool(*b))
                .ok_or(DecodeError::Short {
                    offset,
                    needed,
                    got: bits.len(),
                })
        }
        (Raw::Words(words), data_type) if data_type != DataType::Bool => {
            let Some(words) = words.get(offset..offset + needed) else {
                return Err(DecodeError::Short {
                    offset,
                    needed,
                    got: words.len(),
                });
            };
            let raw = raw_number(data_type, spec.word_order, words)?;
            let value = scaled(raw, spec.scale, spec.offset);
            // A finite reading times a huge scale can overflow: never report infinity as good.
            if !value.is_finite() {
                return Err(DecodeError::OutOfRange {
                    raw,
                    scale: spec.scale,
                    offset: spec.offset,
                });
            }
            Ok(Value::Number(value))
        }
        (_, data_type) => Err(DecodeError::Mismatch(data_type.as_str())),
    }
}

/// The unscaled number in `words` (one word for 16-bit types, two for 32-bit ones).
pub fn raw_number(
    data_type: DataType,
    order: WordOrder,
    words: &[u16],
) -> Result<f64, DecodeError> {
    let word = |i: usize| words.get(i).copied().unwrap_or(0);
    let u32_value = || match order {
        WordOrder::Big => (u32::from(word(0)) << 16) | u32::from(word(1)),
        WordOrder::Little => (u32::from(word(1)) << 16) | u32::from(word(0)),
    };
    Ok(match data_type {
        DataType::Bool => f64::from(u8::from(word(0) != 0)),
        DataType::U16 => f64::from(word(0)),
        DataType::I16 => f64::from(word(0) as i16),
        DataType::U32 => f64::from(u32_value()),
        DataType::I32 => f64::from(u32_value() as i32),
        DataType::F32 => {
            let value = f32::from_bits(u32_value());
            if !value.is_finite() {
                return Err(DecodeError::NotFinite(value));
            }
            shortest_f64(value)
        }
    })
}

/// The f64 whose shortest decimal form is the f32's: a device's 5.3f32 becomes 5.3, not
/// 5.300000190734863, which is what it meant and what the cloud should see.
fn shortest_f64(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

/// `raw × scale + offset`, with decimal scales applied as a division so that a raw -215 with
/// scale 0.1 is exactly -21.5 (the nearest f64), not -21.500000000000004.
pub fn scaled(raw: f64, scale: f64, offset: f64) -> f64 {
    let value = if scale == 1.0 {
        raw
    } else {
        let divisor = 1.0 / scale;
        let rounded = divisor.round();
        if scale.abs() < 1.0 && rounded != 0.0 && ((divisor - rounded) / rounded).abs() < 1e-9 {
            raw / rounded
        } else {
            raw * scale
        }
    };
    if offset == 0.0 { value } else { value + offset }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(data_type: DataType, order: WordOrder, scale: f64, offset: f64) -> PointSpec {
        PointSpec {
            name: "p".into(),
            function: if data_type == DataType::Bool {
                Function::Coil
            } else {
                Function::Holding
            },
            address: 10,
            data_type,
            word_order: order,
            scale,
            offset,
            unit: None,
        }
    }

    fn words_of_f32(v: f32, order: WordOrder) -> [u16; 2] {
        let bits = v.to_bits();
        let (hi, lo) = ((bits >> 16) as u16, bits as u16);
        match order {
            WordOrder::Big => [hi, lo],
            WordOrder::Little => [lo, hi],
        }
    }

    #[test]
    fn f32_decodes_in_both_word_orders() {
        // 4.25 = 0x40880000: high word 0x4088.
        assert_eq!(
            raw_number(DataType::F32, WordOrder::Big, &[0x4088, 0x0000]),
            Ok(4.25)
        );
        assert_eq!(
            raw_number(DataType::F32, WordOrder::Little, &[0x0000, 0x4088]),
            Ok(4.25)
        );
        for order in [WordOrder::Big, WordOrder::Little] {
            let words = words_of_f32(-18.7, order);
            assert_eq!(raw_number(DataType::F32, order, &words), Ok(-18.7));
        }
    }

    #[test]
    fn f32_reports_the_decimal_the_device_meant() {
        let words = words_of_f32(5.3, WordOrder::Big);
        assert_eq!(raw_number(DataType::F32, WordOrder::Big, &words), Ok(5.3));
    }

    #[test]
    fn f32_nan_is_an_error_not_a_number() {
        let nan = f32::NAN.to_bits();
        let words = [(nan >> 16) as u16, nan as u16];
        assert!(matches!(
            raw_number(DataType::F32, WordOrder::Big, &words),
            Err(DecodeError::NotFinite(_))
        ));
    }

    /// Found by the `modbus_decode` fuzz target: f32::MAX with scale 1e300 overflowed to
    /// infinity and was reported as a good value.
    #[test]
    fn a_scaled_value_that_overflows_is_not_a_reading() {
        let p = spec(DataType::F32, WordOrder::Big, 1e300, 0.0);
        let words = [0x7F7F, 0xFFFF];
        assert!(matches!(
            decode_point(&p, p.address, &Raw::Words(&words)),
            Err(DecodeError::OutOfRange { .. })
        ));
    }

    #[test]
    fn signed_and_unsigned_integers_decode() {
        assert_eq!(
            raw_number(DataType::I16, WordOrder::Big, &[0xFF9C]),
            Ok(-100.0)
        );
        assert_eq!(
            raw_number(DataType::U16, WordOrder::Big, &[0xFF9C]),
            Ok(65436.0)
        );
        assert_eq!(
            raw_number(DataType::I16, WordOrder::Big, &[0x8000]),
            Ok(-32768.0)
        );
        // -123456 = 0xFFFE1DC0
        assert_eq!(
            raw_number(DataType::I32, WordOrder::Big, &[0xFFFE, 0x1DC0]),
            Ok(-123456.0)
        );
        assert_eq!(
            raw_number(DataType::I32, WordOrder::Little, &[0x1DC0, 0xFFFE]),
            Ok(-123456.0)
        );
        assert_eq!(
            raw_number(DataType::U32, WordOrder::Big, &[0xFFFE, 0x1DC0]),
            Ok(4_294_843_840.0)
        );
        assert_eq!(
            raw_number(DataType::U32, WordOrder::Little, &[0x0001, 0x0002]),
            Ok(131_073.0)
        );
    }

    #[test]
    fn scale_and_offset_apply_as_raw_times_scale_plus_offset() {
        assert_eq!(scaled(-215.0, 0.1, 0.0), -21.5);
        assert_eq!(scaled(43.0, 0.1, 0.0), 4.3);
        assert_eq!(scaled(1234.0, 0.01, 0.0), 12.34);
        assert_eq!(scaled(3300.0, 0.001, 0.0), 3.3);
        assert_eq!(scaled(7.0, 2.0, 0.0), 14.0);
        assert_eq!(scaled(100.0, 0.5, -40.0), 10.0);
        assert_eq!(scaled(2732.0, 0.1, -273.2), 0.0);
        assert_eq!(scaled(5.0, 1.0, 0.0), 5.0);
        // A negative scale flips the sign.
        assert_eq!(scaled(25.0, -0.1, 0.0), -2.5);
    }

    #[test]
    fn a_sensor_fault_reads_as_the_impossible_value() {
        let s = spec(DataType::I16, WordOrder::Big, 0.1, 0.0);
        assert_eq!(
            decode_point(&s, 10, &Raw::Words(&[0x8000])),
            Ok(Value::Number(-3276.8))
        );
    }

    #[test]
    fn points_decode_at_their_offset_within_a_block() {
        let s = spec(DataType::I32, WordOrder::Big, 1.0, 0.0);
        let block = [0, 0, 0xFFFF, 0xFFFF, 7];
        assert_eq!(
            decode_point(&s, 8, &Raw::Words(&block)),
            Ok(Value::Number(-1.0))
        );
        let b = spec(DataType::Bool, WordOrder::Big, 1.0, 0.0);
        let bits = [false, false, true];
        assert_eq!(
            decode_point(&b, 8, &Raw::Bits(&bits)),
            Ok(Value::Bool(true))
        );
    }

    #[test]
    fn a_short_reply_is_an_error_not_a_panic() {
        let s = spec(DataType::F32, WordOrder::Big, 1.0, 0.0);
        assert_eq!(
            decode_point(&s, 8, &Raw::Words(&[1, 2, 3])),
            Err(DecodeError::Short {
                offset: 2,
                needed: 2,
                got: 3
            })
        );
        let b = spec(DataType::Bool, WordOrder::Big, 1.0, 0.0);
        assert!(decode_point(&b, 8, &Raw::Bits(&[true])).is_err());
        assert!(decode_point(&b, 8, &Raw::Words(&[1, 2, 3])).is_err());
        // A block starting after the point (never planned, but must not panic either).
        assert!(decode_point(&s, 20, &Raw::Words(&[1, 2, 3])).is_err());
    }
}
