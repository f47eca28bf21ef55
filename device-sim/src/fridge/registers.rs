//! The fridge's Modbus register map (that of `config/devices/acme-fr400.toml`, plus the
//! simulator's control registers): requests in, responses or exceptions out. Pure.

use std::time::Duration;

use tokio_modbus::{ExceptionCode, Request, Response};

use super::model::{Fault, Fridge};

/// Holding register 100: active faults as a bit mask (see [`Fault::bit`]); writing it starts the
/// faults whose bits are set and ends the others.
pub const FAULT_MASK: u16 = 100;
/// Duration in seconds of the faults the next write to [`FAULT_MASK`] starts (0: until cleared).
pub const FAULT_DURATION: u16 = 101;
/// Write N: open the door for N seconds; reads the seconds left.
pub const DOOR_OPEN: u16 = 102;

/// The simulator's state behind the register map: the fridge, and the control register that
/// is not part of the fridge.
#[derive(Debug, Clone, PartialEq)]
pub struct Controller {
    /// The fridge.
    pub fridge: Fridge,
    /// Holding register 101.
    pub fault_duration_s: u16,
}

/// Tenths of a degree as the signed register value, saturating.
fn tenths(c: f64) -> u16 {
    ((c * 10.0)
        .round()
        .clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16) as u16
}

fn from_tenths(word: u16) -> f64 {
    f64::from(word as i16) / 10.0
}

/// A sensor fault reads as 0x8000: -3276.8 °C.
pub const SENSOR_FAULT: u16 = 0x8000;

fn input(c: &Controller, address: u16) -> Option<u16> {
    let f = &c.fridge;
    Some(match address {
        0 => f.measured_c().map_or(SENSOR_FAULT, tenths),
        1 => tenths(f.ambient_c),
        2 => (f.compressor_starts >> 16) as u16,
        3 => f.compressor_starts as u16,
        4 => f.door_openings,
        _ => return None,
    })
}

fn holding(c: &Controller, address: u16) -> Option<u16> {
    let f = &c.fridge;
    Some(match address {
        0 => tenths(f.setpoint_c),
        1 => tenths(f.differential_k),
        2 => tenths(f.high_alarm_c),
        3 => tenths(f.low_alarm_c),
        FAULT_MASK => f.fault_mask(),
        FAULT_DURATION => c.fault_duration_s,
        DOOR_OPEN => f.door_open_s.ceil().min(f64::from(u16::MAX)) as u16,
        _ => return None,
    })
}

fn discrete(c: &Controller, address: u16) -> Option<bool> {
    let f = &c.fridge;
    Some(match address {
        0 => f.door_open(),
        1 => f.high_alarm(),
        2 => f.low_alarm(),
        3 => f.measured_c().is_none(),
        4 => f.power_failure_latched,
        _ => return None,
    })
}

fn coil(c: &Controller, address: u16) -> Option<bool> {
    Some(match address {
        0 => c.fridge.compressor_relay,
        1 => c.fridge.alarm_latched,
        _ => return None,
    })
}

fn read_block<T>(
    c: &Controller,
    start: u16,
    count: u16,
    max: u16,
    get: fn(&Controller, u16) -> Option<T>,
) -> Result<Vec<T>, ExceptionCode> {
    if count == 0 || count > max {
        return Err(ExceptionCode::IllegalDataValue);
    }
    (0..count)
        .map(|i| {
            start
                .checked_add(i)
                .and_then(|a| get(c, a))
                .ok_or(ExceptionCode::IllegalDataAddress)
        })
        .collect()
}

/// Answers one request. Writes are all-or-nothing: a request with one bad value changes
/// nothing.
pub fn handle(c: &mut Controller, request: Request<'_>) -> Result<Response, ExceptionCode> {
    match request {
        Request::ReadInputRegisters(start, count) => {
            read_block(c, start, count, 125, input).map(Response::ReadInputRegisters)
        }
        Request::ReadHoldingRegisters(start, count) => {
            read_block(c, start, count, 125, holding).map(Response::ReadHoldingRegisters)
        }
        Request::ReadDiscreteInputs(start, count) => {
            read_block(c, start, count, 2000, discrete).map(Response::ReadDiscreteInputs)
        }
        Request::ReadCoils(start, count) => {
            read_block(c, start, count, 2000, coil).map(Response::ReadCoils)
        }
        Request::WriteSingleRegister(address, word) => {
            write_registers(c, address, &[word])?;
            Ok(Response::WriteSingleRegister(address, word))
        }
        Request::WriteMultipleRegisters(address, words) => {
            if words.is_empty() || words.len() > 123 {
                return Err(ExceptionCode::IllegalDataValue);
            }
            write_registers(c, address, &words)?;
            Ok(Response::WriteMultipleRegisters(
                address,
                words.len() as u16,
            ))
        }
        Request::WriteSingleCoil(address, value) => {
            write_coils(c, address, &[value])?;
            Ok(Response::WriteSingleCoil(address, value))
        }
        Request::WriteMultipleCoils(address, values) => {
            if values.is_empty() || values.len() > 1968 {
                return Err(ExceptionCode::IllegalDataValue);
            }
            write_coils(c, address, &values)?;
            Ok(Response::WriteMultipleCoils(address, values.len() as u16))
        }
        _ => Err(ExceptionCode::IllegalFunction),
    }
}

fn write_registers(c: &mut Controller, start: u16, words: &[u16]) -> Result<(), ExceptionCode> {
    let mut writes = Vec::with_capacity(words.len());
    for (i, &word) in words.iter().enumerate() {
        let address = u16::try_from(i)
            .ok()
            .and_then(|i| start.checked_add(i))
            .ok_or(ExceptionCode::IllegalDataAddress)?;
        let value = from_tenths(word);
        let valid = match address {
            0 => (-50.0..=50.0).contains(&value),
            1 => (0.2..=10.0).contains(&value),
            2 | 3 => true,
            FAULT_MASK => word < 1 << Fault::MASKABLE.len(),
            FAULT_DURATION | DOOR_OPEN => true,
            _ => return Err(ExceptionCode::IllegalDataAddress),
        };
        if !valid {
            return Err(ExceptionCode::IllegalDataValue);
        }
        writes.push((address, word));
    }
    // The fault mask goes last, so a write of 100..=101 in one request uses its duration.
    writes.sort_by_key(|(address, _)| *address == FAULT_MASK);
    for (address, word) in writes {
        let f = &mut c.fridge;
        match address {
            0 => f.setpoint_c = from_tenths(word),
            1 => f.differential_k = from_tenths(word),
            2 => f.high_alarm_c = from_tenths(word),
            3 => f.low_alarm_c = from_tenths(word),
            FAULT_DURATION => c.fault_duration_s = word,
            DOOR_OPEN => f.open_door(Duration::from_secs(u64::from(word))),
            FAULT_MASK => {
                let duration = match c.fault_duration_s {
                    0 => None,
                    s => Some(Duration::from_secs(u64::from(s))),
                };
                for fault in Fault::MASKABLE {
                    let wanted = fault.bit().is_some_and(|bit| word & bit != 0);
                    if wanted {
                        f.set_fault(fault, duration);
                    } else {
                        f.clear_fault(fault);
                    }
                }
            }
            _ => return Err(ExceptionCode::IllegalDataAddress),
        }
    }
    Ok(())
}

fn write_coils(c: &mut Controller, start: u16, values: &[bool]) -> Result<(), ExceptionCode> {
    for (i, &value) in values.iter().enumerate() {
        let address = u16::try_from(i)
            .ok()
            .and_then(|i| start.checked_add(i))
            .ok_or(ExceptionCode::IllegalDataAddress)?;
        match (address, value) {
            // Acknowledging clears the latched alarms; latching is the controller's business.
            (1, false) => {}
            (1, true) => return Err(ExceptionCode::IllegalDataValue),
            // The compressor relay is the thermostat's output, not writable.
            _ => return Err(ExceptionCode::IllegalDataAddress),
        }
    }
    c.fridge.alarm_latched = false;
    c.fridge.power_failure_latched = false;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn controller(temperature_c: f64) -> Controller {
        Controller {
            fridge: Fridge::new(5.0, 22.0, temperature_c),
            fault_duration_s: 0,
        }
    }

    #[test]
    fn input_registers_hold_temperatures_in_signed_tenths() {
        let mut c = controller(-2.5);
        c.fridge.compressor_starts = 0x0001_0002;
        c.fridge.door_openings = 7;
        assert_eq!(
            handle(&mut c, Request::ReadInputRegisters(0, 5)),
            Ok(Response::ReadInputRegisters(vec![
                (-25i16) as u16,
                220,
                1,
                2,
                7
            ]))
        );
    }

    #[test]
    fn a_sensor_fault_reads_0x8000() {
        let mut c = controller(5.0);
        c.fridge.set_fault(Fault::SensorFault, None);
        assert_eq!(
            handle(&mut c, Request::ReadInputRegisters(0, 1)),
            Ok(Response::ReadInputRegisters(vec![0x8000]))
        );
        assert_eq!(
            handle(&mut c, Request::ReadDiscreteInputs(3, 1)),
            Ok(Response::ReadDiscreteInputs(vec![true]))
        );
    }

    #[test]
    fn reads_outside_the_map_are_illegal_addresses() {
        let mut c = controller(5.0);
        assert_eq!(
            handle(&mut c, Request::ReadInputRegisters(4, 2)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            handle(&mut c, Request::ReadHoldingRegisters(3, 98)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            handle(&mut c, Request::ReadCoils(65535, 2)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            handle(&mut c, Request::ReadInputRegisters(0, 0)),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            handle(&mut c, Request::ReportServerId),
            Err(ExceptionCode::IllegalFunction)
        );
    }

    #[test]
    fn writing_the_fault_registers_starts_faults_for_the_given_duration() {
        let mut c = controller(5.0);
        let words = [0b0001, 60];
        assert_eq!(
            handle(
                &mut c,
                Request::WriteMultipleRegisters(FAULT_MASK, Cow::Borrowed(&words))
            ),
            Ok(Response::WriteMultipleRegisters(FAULT_MASK, 2))
        );
        assert!(c.fridge.has_fault(Fault::CompressorFailure));
        assert_eq!(
            handle(&mut c, Request::ReadHoldingRegisters(FAULT_MASK, 3)),
            Ok(Response::ReadHoldingRegisters(vec![1, 60, 0]))
        );
        c.fridge.step(60.0);
        assert!(!c.fridge.has_fault(Fault::CompressorFailure));
        handle(&mut c, Request::WriteSingleRegister(FAULT_MASK, 0b1000)).unwrap();
        assert!(c.fridge.silent());
        assert_eq!(
            handle(&mut c, Request::WriteSingleRegister(FAULT_MASK, 0b1_0000)),
            Err(ExceptionCode::IllegalDataValue)
        );
    }

    #[test]
    fn settings_are_writable_within_range_and_all_or_nothing() {
        let mut c = controller(5.0);
        handle(&mut c, Request::WriteSingleRegister(0, 40)).unwrap();
        assert_eq!(c.fridge.setpoint_c, 4.0);
        let words = [45, 0];
        assert_eq!(
            handle(
                &mut c,
                Request::WriteMultipleRegisters(0, Cow::Borrowed(&words))
            ),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(c.fridge.setpoint_c, 4.0, "nothing changed");
        assert_eq!(
            handle(&mut c, Request::WriteSingleRegister(50, 1)),
            Err(ExceptionCode::IllegalDataAddress)
        );
    }

    #[test]
    fn the_door_opens_by_register_and_alarms_are_acknowledged_by_coil() {
        let mut c = controller(5.0);
        handle(&mut c, Request::WriteSingleRegister(DOOR_OPEN, 30)).unwrap();
        assert_eq!(
            handle(&mut c, Request::ReadDiscreteInputs(0, 5)),
            Ok(Response::ReadDiscreteInputs(vec![
                true, false, false, false, false
            ]))
        );
        c.fridge.alarm_latched = true;
        assert_eq!(
            handle(&mut c, Request::ReadCoils(0, 2)),
            Ok(Response::ReadCoils(vec![false, true]))
        );
        handle(&mut c, Request::WriteSingleCoil(1, false)).unwrap();
        assert!(!c.fridge.alarm_latched);
        assert_eq!(
            handle(&mut c, Request::WriteSingleCoil(0, true)),
            Err(ExceptionCode::IllegalDataAddress)
        );
    }
}
