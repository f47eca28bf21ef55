//! What the cold-chain task last saw of each monitored fridge: the latest good temperature, when
//! it was read, and the engine's condition. Shared with readers (the console's overview through
//! the admin interface) behind a short lock that is never held across an `.await`; the task
//! updates it with every reading and every engine step, so it is as current as the engine.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Calibration, Limits, SinceCheck, State};

/// One fridge as the cold-chain task sees it now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FridgeNow {
    pub device: String,
    /// The latest good temperature, °C; `None` before the first one.
    pub temperature: Option<f64>,
    /// When that temperature was read.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub reading_at: Option<OffsetDateTime>,
    /// Its range, °C.
    pub low: f64,
    pub high: f64,
    /// [`condition`] of its engine state.
    pub condition: String,
    /// Minimum and maximum since the last min/max check.
    #[serde(default)]
    pub since_check: Option<SinceCheck>,
    /// When the last min/max check was recorded.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_check: Option<OffsetDateTime>,
    /// When the next check is due (`None`: no check expected).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub check_due: Option<OffsetDateTime>,
    /// Whether a check was missed (its alarm is raised).
    #[serde(default)]
    pub check_missed: bool,
    /// The probe's calibration certificate, if configured.
    #[serde(default)]
    pub calibration: Option<Calibration>,
    /// Whether its calibration-overdue alarm is raised.
    #[serde(default)]
    pub calibration_overdue: bool,
}

/// The engine's state in one word: an excursion first (`temperature_high`, `temperature_low`),
/// then a broken probe, a silent sensor, an open door; `no_reading` before anything was heard;
/// `in_range` otherwise.
pub fn condition(state: &State) -> &'static str {
    if let Some(excursion) = &state.excursion {
        return excursion.kind.as_str();
    }
    if state.probe_alarm {
        "probe_fault"
    } else if state.offline_alarm {
        "offline"
    } else if state.door_alarm {
        "door_open"
    } else if state.last_reading.is_none() {
        "no_reading"
    } else {
        "in_range"
    }
}

/// The shared view. Cheap to clone.
#[derive(Clone, Default)]
pub struct Live(Arc<Mutex<BTreeMap<String, FridgeNow>>>);

impl Live {
    /// A view of `devices` in the states they were loaded with.
    pub fn new<'a>(
        devices: impl Iterator<Item = (&'a String, &'a Limits, Option<&'a State>)>,
    ) -> Live {
        let live = Live::default();
        for (device, limits, state) in devices {
            live.step(device, limits, &state.cloned().unwrap_or_default());
        }
        live
    }

    /// A good temperature read at `at`.
    pub fn reading(&self, device: &str, temperature: f64, at: OffsetDateTime) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fridge) = map.get_mut(device) {
            fridge.temperature = Some(temperature);
            fridge.reading_at = Some(at);
        }
    }

    /// The engine of `device` stepped to `state`.
    pub fn step(&self, device: &str, limits: &Limits, state: &State) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let fridge = map.entry(device.to_owned()).or_insert_with(|| FridgeNow {
            device: device.to_owned(),
            temperature: None,
            reading_at: None,
            low: limits.low,
            high: limits.high,
            condition: String::new(),
            since_check: None,
            last_check: None,
            check_due: None,
            check_missed: false,
            calibration: None,
            calibration_overdue: false,
        });
        condition(state).clone_into(&mut fridge.condition);
        fridge.since_check = state.since_check;
        fridge.last_check = state.last_check;
        fridge.check_due = super::check_due(state, limits);
        fridge.check_missed = state.check_alarm;
        fridge.calibration = limits.calibration.clone();
        fridge.calibration_overdue = state.calibration_alarm;
    }

    /// Every fridge, by device id.
    pub fn fridges(&self) -> Vec<FridgeNow> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::DeviceConfig;
    use time::macros::datetime;

    fn limits() -> Limits {
        let device: DeviceConfig = toml::from_str(
            "transport = \"tcp\"\naddress = \"127.0.0.1:1\"\nprofile = \"refrigerator\"\n",
        )
        .unwrap();
        Limits::of(&device).unwrap()
    }

    #[test]
    fn a_fridge_shows_its_latest_good_temperature_and_the_engines_condition() {
        let (device, limits) = ("fridge-01".to_owned(), limits());
        let live = Live::new(std::iter::once((&device, &limits, None)));
        assert_eq!(live.fridges()[0].condition, "no_reading");
        assert_eq!(live.fridges()[0].temperature, None);
        let at = datetime!(2026-12-07 09:00 UTC);
        live.reading("fridge-01", 9.5, at);
        let (state, _) = crate::coldchain::step(
            State::default(),
            crate::coldchain::Input::Reading {
                temperature: Some(9.5),
                door_open: None,
            },
            at,
            &limits,
        );
        live.step("fridge-01", &limits, &state);
        let fridge = &live.fridges()[0];
        assert_eq!(fridge.temperature, Some(9.5));
        assert_eq!(fridge.reading_at, Some(at));
        assert_eq!(fridge.condition, "temperature_high");
        assert_eq!((fridge.low, fridge.high), (2.0, 8.0));
        live.reading("fridge-02", 4.0, at);
        assert_eq!(
            live.fridges().len(),
            1,
            "an unmonitored device is not added by a reading"
        );
    }
}
