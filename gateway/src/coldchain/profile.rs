//! Temperature profiles and the per-device settings the engine works with.

use std::time::Duration;

use crate::devices::DeviceConfig;

pub use crate::devices::{Calibration, CalibrationStatus, Profile};

/// (low, high, critical low, critical high, probe min, probe max) of a profile.
fn defaults(profile: Profile) -> (f64, f64, Option<f64>, Option<f64>, f64, f64) {
    match profile {
        Profile::Refrigerator => (2.0, 8.0, Some(0.0), None, -40.0, 60.0),
        Profile::Freezer => (-50.0, -15.0, None, Some(-5.0), -90.0, 60.0),
        Profile::UltraCold => (-90.0, -60.0, None, Some(-40.0), -120.0, 60.0),
        Profile::Room => (20.0, 25.0, None, None, -40.0, 80.0),
    }
}

/// Everything the engine needs to judge one device, profile defaults resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub profile: Profile,
    pub low: f64,
    pub high: f64,
    /// At or below: alarm at once.
    pub critical_low: Option<f64>,
    /// At or above: alarm at once.
    pub critical_high: Option<f64>,
    /// How long a reading may stay out of range before it is an alarm.
    pub alarm_delay: Duration,
    /// An excursion ends only once the reading is back inside the range by this much.
    pub hysteresis: f64,
    /// Which point is the temperature.
    pub point: String,
    /// Which point says the door is open (boolean), if the device reports one.
    pub door_point: String,
    /// Door open longer than this: an alert.
    pub door_open_limit: Duration,
    /// Readings are expected this often…
    pub expected_interval: Duration,
    /// …and the sensor is offline after this many are missed.
    pub missed_readings: u32,
    /// Readings outside these bounds are a probe fault, not a temperature.
    pub probe_min: f64,
    pub probe_max: f64,
    /// The daily min/max check is due by this time of day (UTC); `None`: no check expected.
    pub check_by: Option<time::Time>,
    /// The probe's calibration certificate, if configured.
    pub calibration: Option<Calibration>,
}

impl Limits {
    /// The limits of a device with a `profile`; `None` when it is not monitored.
    pub fn of(device: &DeviceConfig) -> Option<Limits> {
        let profile = device.profile?;
        let (low, high, critical_low, critical_high, probe_min, probe_max) = defaults(profile);
        Some(Limits {
            profile,
            low: device.low.unwrap_or(low),
            high: device.high.unwrap_or(high),
            critical_low: device.critical_low.or(critical_low),
            critical_high: device.critical_high.or(critical_high),
            alarm_delay: device.alarm_delay,
            hysteresis: device.hysteresis,
            point: device.point.clone(),
            door_point: device.door_point.clone(),
            door_open_limit: device.door_open_limit,
            expected_interval: device
                .expected_interval
                .unwrap_or(if device.transport.is_some() {
                    device.poll_interval
                } else {
                    Duration::from_secs(60)
                }),
            missed_readings: device.missed_readings,
            probe_min: device.probe_min.unwrap_or(probe_min),
            probe_max: device.probe_max.unwrap_or(probe_max),
            check_by: device.check_time(),
            calibration: device.calibration(),
        })
    }

    /// Limits for tests and examples: a refrigerator with the given delay.
    pub fn refrigerator(alarm_delay: Duration) -> Limits {
        Limits {
            profile: Profile::Refrigerator,
            low: 2.0,
            high: 8.0,
            critical_low: Some(0.0),
            critical_high: None,
            alarm_delay,
            hysteresis: 0.5,
            point: "temperature_c".to_owned(),
            door_point: "door_open".to_owned(),
            door_open_limit: Duration::from_secs(300),
            expected_interval: Duration::from_secs(60),
            missed_readings: 3,
            probe_min: -40.0,
            probe_max: 60.0,
            check_by: None,
            calibration: None,
        }
    }
}

/// Checks a device's cold-chain keys, adding an error per problem (key and value named).
pub(crate) fn check(id: &str, device: &DeviceConfig, errors: &mut Vec<crate::error::ConfigError>) {
    use crate::error::ConfigError;
    let key = |k: &str| format!("devices.{id}.{k}");
    let Some(limits) = Limits::of(device) else {
        for (name, set) in [
            ("low", device.low.is_some()),
            ("high", device.high.is_some()),
            ("critical_low", device.critical_low.is_some()),
            ("critical_high", device.critical_high.is_some()),
        ] {
            if set {
                errors.push(ConfigError::new(
                    key(name),
                    "set",
                    "has no effect without a `profile` (refrigerator, freezer, ultra-cold or room)",
                ));
            }
        }
        return;
    };
    if limits.low >= limits.high {
        errors.push(ConfigError::new(
            key("low"),
            limits.low,
            format!("must be below high ({})", limits.high),
        ));
    }
    if let Some(c) = limits.critical_low
        && c > limits.low
    {
        errors.push(ConfigError::new(
            key("critical_low"),
            c,
            format!("must be at or below low ({})", limits.low),
        ));
    }
    if let Some(c) = limits.critical_high
        && c < limits.high
    {
        errors.push(ConfigError::new(
            key("critical_high"),
            c,
            format!("must be at or above high ({})", limits.high),
        ));
    }
    if limits.low < limits.high
        && !(0.0..(limits.high - limits.low) / 2.0).contains(&limits.hysteresis)
    {
        errors.push(ConfigError::new(
            key("hysteresis"),
            limits.hysteresis,
            format!(
                "must be at least 0 and less than half the range ({:.2})",
                (limits.high - limits.low) / 2.0
            ),
        ));
    }
    if limits.alarm_delay > Duration::from_secs(24 * 3600) {
        errors.push(ConfigError::new(
            key("alarm_delay"),
            format!(
                "{:?}",
                humantime::format_duration(limits.alarm_delay).to_string()
            ),
            "must be at most 24h",
        ));
    }
    if limits.door_open_limit < Duration::from_secs(10) {
        errors.push(ConfigError::new(
            key("door_open_limit"),
            format!(
                "{:?}",
                humantime::format_duration(limits.door_open_limit).to_string()
            ),
            "must be at least 10s",
        ));
    }
    if limits.missed_readings == 0 {
        errors.push(ConfigError::new(
            key("missed_readings"),
            0,
            "must be at least 1",
        ));
    }
    if limits.probe_min >= limits.low || limits.probe_max <= limits.high {
        errors.push(ConfigError::new(
            key("probe_min"),
            format!("{} to {}", limits.probe_min, limits.probe_max),
            format!(
                "the plausible range must contain the allowed range {} to {}",
                limits.low, limits.high
            ),
        ));
    }
}
