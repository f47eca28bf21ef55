//! Simulated pharmacy devices for rxgate: fridges, dispensing cabinets, an EST client and a load
//! generator.
//!
//! [`est`], the enrollment client; [`fridge`], a medication fridge polled over Modbus;
//! [`cabinet`], a dispensing cabinet publishing access events over MQTT; and [`fleet`], a load
//! generator running many of both.

#![warn(missing_docs)]

pub mod cabinet;
pub mod est;
pub mod fleet;
pub mod fridge;
