//! The cold-chain state machine: `step(state, input, now) -> (state, changes)`, pure.
//!
//! Temperature: a reading outside `[low, high]` opens an excursion. It becomes an alarm when it
//! lasts `alarm_delay`, or at once when the reading is critical (a refrigerator at or below 0 °C).
//! It ends only when the reading is back inside the range by `hysteresis`, so a reading hovering
//! at the limit is one excursion and one alarm, not many. A short excursion (a door opened to
//! take stock) leaves no trace but the daily minimum and maximum. Door, sensor-offline and probe
//! faults are alarms of their own. The caller asks [`next_deadline`] when to step again without a
//! reading, so an alarm is raised exactly when its delay has passed.

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use super::mkt::Mkt;
use super::profile::Limits;

/// What can be alarming about a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    TemperatureHigh,
    TemperatureLow,
    DoorOpen,
    SensorOffline,
    ProbeFault,
    /// Not a cold-chain condition: a security or access flag (policy or refusals), named in
    /// the alert's `flag`.
    AccessFlag,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::TemperatureHigh => "temperature_high",
            AlertKind::TemperatureLow => "temperature_low",
            AlertKind::DoorOpen => "door_open",
            AlertKind::SensorOffline => "sensor_offline",
            AlertKind::ProbeFault => "probe_fault",
            AlertKind::AccessFlag => "access_flag",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

/// An excursion in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Excursion {
    pub kind: AlertKind,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_at: OffsetDateTime,
    pub last: f64,
    pub min: f64,
    pub max: f64,
    pub mkt: Mkt,
    /// `None` while it is shorter than the alarm delay.
    pub alarm: Option<Severity>,
}

impl Excursion {
    fn new(kind: AlertKind, value: f64, now: OffsetDateTime) -> Self {
        Excursion {
            kind,
            started: now,
            last_at: now,
            last: value,
            min: value,
            max: value,
            mkt: Mkt::default(),
            alarm: None,
        }
    }

    fn add(&mut self, value: f64, now: OffsetDateTime) {
        let held = (now - self.last_at).as_seconds_f64().max(0.0);
        self.mkt.add(self.last, held);
        self.last = value;
        self.last_at = now;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Counts the last reading as held until `now`, without a new reading.
    fn hold_until(&mut self, now: OffsetDateTime) {
        let held = (now - self.last_at).as_seconds_f64().max(0.0);
        self.mkt.add(self.last, held);
        self.last_at = now;
    }

    /// MKT over the excursion so far (the last reading counted up to `end`).
    fn mkt_until(&self, end: OffsetDateTime) -> Option<f64> {
        let mut mkt = self.mkt;
        mkt.add(self.last, (end - self.last_at).as_seconds_f64().max(0.0));
        mkt.celsius().or(Some(self.last))
    }
}

/// A finished, alarmed excursion: what inspectors ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExcursionRecord {
    pub kind: AlertKind,
    pub severity: Severity,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub ended: OffsetDateTime,
    pub duration_s: i64,
    pub min: f64,
    pub max: f64,
    /// Mean kinetic temperature over the excursion, °C.
    pub mkt: Option<f64>,
}

/// Minimum, maximum and mean of one day's readings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailyStats {
    pub date: Date,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub count: u64,
    /// Alarmed excursions that started this day.
    pub excursions: u32,
}

impl DailyStats {
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// Everything remembered about a device between steps. Persisted, so a restart in the middle
/// of an excursion neither forgets it nor raises it again.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct State {
    pub excursion: Option<Excursion>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub door_open_since: Option<OffsetDateTime>,
    pub door_alarm: bool,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_reading: Option<OffsetDateTime>,
    pub offline_alarm: bool,
    pub probe_alarm: bool,
    pub day: Option<DailyStats>,
}

/// What the engine is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input {
    /// A reading: the temperature (absent when the point was not read well) and the door.
    Reading {
        temperature: Option<f64>,
        door_open: Option<bool>,
    },
    /// Time passes (a deadline from [`next_deadline`] was reached).
    Tick,
}

/// What changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Raised {
        kind: AlertKind,
        severity: Severity,
        started: OffsetDateTime,
        /// The reading that made it (temperature), if any.
        value: Option<f64>,
        /// The limit crossed.
        limit: Option<f64>,
    },
    /// An active alarm became critical.
    Escalated { kind: AlertKind, value: f64 },
    Cleared {
        kind: AlertKind,
        ended: OffsetDateTime,
        /// For temperature alarms, the excursion's record.
        excursion: Option<ExcursionRecord>,
    },
    /// A day ended; its statistics are final.
    DayClosed(DailyStats),
}

fn critical(limits: &Limits, t: f64) -> bool {
    limits.critical_low.is_some_and(|c| t <= c) || limits.critical_high.is_some_and(|c| t >= c)
}

fn direction(limits: &Limits, t: f64) -> Option<AlertKind> {
    if t > limits.high {
        Some(AlertKind::TemperatureHigh)
    } else if t < limits.low {
        Some(AlertKind::TemperatureLow)
    } else {
        None
    }
}

fn back_in_range(limits: &Limits, t: f64) -> bool {
    t >= limits.low + limits.hysteresis && t <= limits.high - limits.hysteresis
}

/// The limit an excursion of `kind` crossed.
fn limit_of(limits: &Limits, kind: AlertKind, critical: bool) -> Option<f64> {
    match (kind, critical) {
        (AlertKind::TemperatureHigh, true) => limits.critical_high,
        (AlertKind::TemperatureLow, true) => limits.critical_low,
        (AlertKind::TemperatureHigh, false) => Some(limits.high),
        (AlertKind::TemperatureLow, false) => Some(limits.low),
        _ => None,
    }
}

fn close(excursion: &Excursion, severity: Severity, ended: OffsetDateTime) -> ExcursionRecord {
    ExcursionRecord {
        kind: excursion.kind,
        severity,
        started: excursion.started,
        ended,
        duration_s: (ended - excursion.started).whole_seconds(),
        min: excursion.min,
        max: excursion.max,
        mkt: excursion.mkt_until(ended),
    }
}

/// One step of the machine.
pub fn step(
    mut state: State,
    input: Input,
    now: OffsetDateTime,
    limits: &Limits,
) -> (State, Vec<Change>) {
    let mut changes = Vec::new();
    match input {
        Input::Reading {
            temperature,
            door_open,
        } => {
            if let Some(open) = door_open {
                door(&mut state, open, now, limits, &mut changes);
            }
            if let Some(t) = temperature {
                reading(&mut state, t, now, limits, &mut changes);
            }
        }
        Input::Tick => {}
    }
    deadlines(&mut state, now, limits, &mut changes);
    (state, changes)
}

fn door(
    state: &mut State,
    open: bool,
    now: OffsetDateTime,
    _limits: &Limits,
    changes: &mut Vec<Change>,
) {
    if open {
        state.door_open_since.get_or_insert(now);
    } else {
        state.door_open_since = None;
        if state.door_alarm {
            state.door_alarm = false;
            changes.push(Change::Cleared {
                kind: AlertKind::DoorOpen,
                ended: now,
                excursion: None,
            });
        }
    }
}

fn reading(
    state: &mut State,
    t: f64,
    now: OffsetDateTime,
    limits: &Limits,
    changes: &mut Vec<Change>,
) {
    // The sensor answered, even if with nonsense: it is not offline.
    state.last_reading = Some(now);
    if state.offline_alarm {
        state.offline_alarm = false;
        changes.push(Change::Cleared {
            kind: AlertKind::SensorOffline,
            ended: now,
            excursion: None,
        });
    }
    if !t.is_finite() || t < limits.probe_min || t > limits.probe_max {
        if !state.probe_alarm {
            state.probe_alarm = true;
            changes.push(Change::Raised {
                kind: AlertKind::ProbeFault,
                severity: Severity::Warning,
                started: now,
                value: t.is_finite().then_some(t),
                limit: None,
            });
        }
        return;
    }
    if state.probe_alarm {
        state.probe_alarm = false;
        changes.push(Change::Cleared {
            kind: AlertKind::ProbeFault,
            ended: now,
            excursion: None,
        });
    }
    daily(state, t, now, changes);
    temperature(state, t, now, limits, changes);
}

fn temperature(
    state: &mut State,
    t: f64,
    now: OffsetDateTime,
    limits: &Limits,
    changes: &mut Vec<Change>,
) {
    let is_critical = critical(limits, t);
    match state.excursion.take() {
        None => {
            if let Some(kind) = direction(limits, t) {
                let mut excursion = Excursion::new(kind, t, now);
                if is_critical {
                    raise(
                        &mut excursion,
                        Severity::Critical,
                        Some(t),
                        limits,
                        changes,
                        state.day.as_mut(),
                    );
                }
                state.excursion = Some(excursion);
            }
        }
        Some(mut excursion) => {
            let flipped = direction(limits, t).is_some_and(|kind| kind != excursion.kind);
            if back_in_range(limits, t) || flipped {
                // The reading that ends it is not part of it: only the time up to it counts.
                excursion.hold_until(now);
                if let Some(severity) = excursion.alarm {
                    changes.push(Change::Cleared {
                        kind: excursion.kind,
                        ended: now,
                        excursion: Some(close(&excursion, severity, now)),
                    });
                }
                if flipped {
                    // From too warm straight to too cold (or back): a new excursion.
                    temperature(state, t, now, limits, changes);
                }
                return;
            }
            excursion.add(t, now);
            match excursion.alarm {
                Some(Severity::Warning) if is_critical => {
                    excursion.alarm = Some(Severity::Critical);
                    changes.push(Change::Escalated {
                        kind: excursion.kind,
                        value: t,
                    });
                }
                None if is_critical => raise(
                    &mut excursion,
                    Severity::Critical,
                    Some(t),
                    limits,
                    changes,
                    state.day.as_mut(),
                ),
                _ => {}
            }
            state.excursion = Some(excursion);
        }
    }
}

fn raise(
    excursion: &mut Excursion,
    severity: Severity,
    value: Option<f64>,
    limits: &Limits,
    changes: &mut Vec<Change>,
    day: Option<&mut DailyStats>,
) {
    excursion.alarm = Some(severity);
    if let Some(day) = day {
        day.excursions += 1;
    }
    changes.push(Change::Raised {
        kind: excursion.kind,
        severity,
        started: excursion.started,
        value: value.or(Some(excursion.last)),
        limit: limit_of(limits, excursion.kind, severity == Severity::Critical),
    });
}

fn daily(state: &mut State, t: f64, now: OffsetDateTime, changes: &mut Vec<Change>) {
    let date = now.date();
    match &mut state.day {
        Some(day) if day.date == date => {
            day.min = day.min.min(t);
            day.max = day.max.max(t);
            day.sum += t;
            day.count += 1;
        }
        other => {
            if let Some(done) = other.take() {
                changes.push(Change::DayClosed(done));
            }
            *other = Some(DailyStats {
                date,
                min: t,
                max: t,
                sum: t,
                count: 1,
                excursions: 0,
            });
        }
    }
}

/// Alarms that come from time passing: an excursion outlasting its delay, a door left open, a
/// sensor gone quiet.
fn deadlines(state: &mut State, now: OffsetDateTime, limits: &Limits, changes: &mut Vec<Change>) {
    if let Some(excursion) = state.excursion.as_mut()
        && excursion.alarm.is_none()
        && now - excursion.started >= limits.alarm_delay
    {
        raise(
            excursion,
            Severity::Warning,
            None,
            limits,
            changes,
            state.day.as_mut(),
        );
    }
    if let Some(since) = state.door_open_since
        && !state.door_alarm
        && now - since >= limits.door_open_limit
    {
        state.door_alarm = true;
        changes.push(Change::Raised {
            kind: AlertKind::DoorOpen,
            severity: Severity::Warning,
            started: since,
            value: None,
            limit: None,
        });
    }
    if let Some(last) = state.last_reading
        && !state.offline_alarm
        && now - last >= limits.expected_interval * limits.missed_readings
    {
        state.offline_alarm = true;
        changes.push(Change::Raised {
            kind: AlertKind::SensorOffline,
            severity: Severity::Warning,
            started: last,
            value: None,
            limit: None,
        });
    }
}

/// When the engine must be stepped again even if no reading comes.
pub fn next_deadline(state: &State, limits: &Limits) -> Option<OffsetDateTime> {
    let excursion = state
        .excursion
        .as_ref()
        .filter(|e| e.alarm.is_none())
        .map(|e| e.started + limits.alarm_delay);
    let door = state
        .door_open_since
        .filter(|_| !state.door_alarm)
        .map(|since| since + limits.door_open_limit);
    let offline = state
        .last_reading
        .filter(|_| !state.offline_alarm)
        .map(|last| last + limits.expected_interval * limits.missed_readings);
    [excursion, door, offline].into_iter().flatten().min()
}

#[cfg(test)]
mod tests;
