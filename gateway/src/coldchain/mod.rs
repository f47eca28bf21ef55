//! Cold-chain monitoring: judging temperatures against a profile, raising and clearing alarms,
//! keeping excursion records and the daily minimum and maximum per device.

pub mod engine;
pub mod history;
pub mod live;
pub mod mkt;
pub mod monitor;
pub mod profile;

pub use engine::{
    AlertKind, Change, CheckValues, DailyStats, ExcursionRecord, Input, Severity, SinceCheck,
    State, check_due, next_deadline, step,
};
pub use profile::{Calibration, CalibrationStatus, Limits, Profile};
