//! Simulated pharmacy devices for rxgate: fridges, dispensing cabinets, an EST client and a load
//! generator.
//!
//! So far: [`est`], the enrollment client.

#![warn(missing_docs)]

pub mod est;
