//! rxgate: the gateway daemon and its command line.
//!
//! Components, each in its folder: `enroll` (EST), `registry` (devices, tokens, certificates),
//! `audit` (hash-chained trail), `backup` (encrypted backups and restore), `admin` (the CLI's way into a running daemon), `store` (redb).
//! `daemon` wires them together; `cli` is the thin command-line layer over all of it.

pub mod admin;
pub mod alerts;
pub mod audit;
pub mod backup;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod coldchain;
pub mod config;
pub mod console;
pub mod daemon;
pub mod demo;
pub mod devices;
pub mod enroll;
pub mod error;
pub mod keys;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod modbus;
pub mod net;
pub mod outbox;
pub mod paths;
pub mod people;
pub mod pipeline;
pub mod pki;
pub mod policy;
pub mod registry;
pub mod report;
pub mod store;
pub mod tls;
pub mod uplink;
pub mod watchdog;

pub use error::{Error, Result};
