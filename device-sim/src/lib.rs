//! Simulated pharmacy devices for rxgate: fridges, dispensing cabinets, an EST client and a load
//! generator.
//!
//! So far: [`est`], the enrollment client, and [`fridge`], a medication fridge polled over
//! Modbus.

#![warn(missing_docs)]

pub mod cabinet;
pub mod est;
pub mod fridge;
