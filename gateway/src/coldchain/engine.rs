//! The cold-chain state machine: `step(state, input, now) -> (state, changes)`, pure.
//!
//! Temperature: a reading outside `[low, high]` opens an excursion. It becomes an alarm when it
//! lasts `alarm_delay`, or at once when the reading is critical (a refrigerator at or below 0 °C).
//! It ends only when the reading is back inside the range by `hysteresis`, so a reading hovering
//! at the limit is one excursion and one alarm, not many. A short excursion (a door opened to
//! take stock) leaves no trace but the daily minimum and maximum. Door, sensor-offline and probe
//! faults are alarms of their own. The caller asks [`next_deadline`] when to step again without a
//! reading, so an alarm is raised exactly when its delay has passed.
//!
//! The daily min/max check: the state keeps the minimum and maximum since the last check
//! ([`SinceCheck`]); [`Input::Check`] reports them ([`Change::Checked`]) and resets both to the
//! current temperature, as the reset button of a min/max thermometer does. A fridge not checked
//! since the start of the day (00:00 UTC) at its `check_by` time raises one `check_missed` alarm,
//! cleared by the next check ([`check_due`]); a fridge never checked gets its first deadline at
//! the first `check_by` after the engine first saw it. A probe past its calibration due date
//! raises one `calibration_overdue` alarm, cleared when the configuration names a valid one.
//! Every time is the caller's `now`: a wall clock jumping forward raises at most one alarm of
//! each, one jumping back raises none.

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
    /// The daily min/max check was not recorded by its `check_by` time.
    CheckMissed,
    /// The probe is past its calibration due date.
    CalibrationOverdue,
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
            AlertKind::CheckMissed => "check_missed",
            AlertKind::CalibrationOverdue => "calibration_overdue",
        }
    }

    /// Whether the alarm is about the products right now (the buzzer sounds for it), rather
    /// than a record-keeping duty (a missed check, a calibration due).
    pub fn is_physical(self) -> bool {
        !matches!(
            self,
            AlertKind::CheckMissed | AlertKind::CalibrationOverdue | AlertKind::AccessFlag
        )
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
    /// Whether the probe was within its calibration certificate's dates for the whole
    /// excursion; `None` when no calibration is configured.
    #[serde(default)]
    pub probe_in_calibration: Option<bool>,
}

/// Minimum and maximum since the last min/max check (or since the first reading), and the
/// latest good temperature.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SinceCheck {
    pub min: f64,
    pub max: f64,
    pub current: f64,
    /// Since when: the last check, or the first reading.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// What a min/max check saw before it reset the extremes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CheckValues {
    pub current: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
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
    /// Extremes since the last min/max check.
    #[serde(default)]
    pub since_check: Option<SinceCheck>,
    /// When the last min/max check was recorded.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_check: Option<OffsetDateTime>,
    /// When the engine first stepped for this device: the first check deadline follows it.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub watched_since: Option<OffsetDateTime>,
    #[serde(default)]
    pub check_alarm: bool,
    #[serde(default)]
    pub calibration_alarm: bool,
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
    /// Someone recorded the daily min/max check.
    Check,
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
    /// A min/max check was recorded: what it saw (the extremes are now reset).
    Checked(CheckValues),
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

fn close(
    excursion: &Excursion,
    severity: Severity,
    ended: OffsetDateTime,
    limits: &Limits,
) -> ExcursionRecord {
    ExcursionRecord {
        probe_in_calibration: limits
            .calibration
            .as_ref()
            .map(|c| c.covers(excursion.started, ended)),
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
    state.watched_since.get_or_insert(now);
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
        Input::Check => check(&mut state, now, &mut changes),
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
    match &mut state.since_check {
        Some(since) => {
            since.min = since.min.min(t);
            since.max = since.max.max(t);
            since.current = t;
        }
        none => {
            *none = Some(SinceCheck {
                min: t,
                max: t,
                current: t,
                since: now,
            });
        }
    }
    temperature(state, t, now, limits, changes);
}

/// The min/max check: reports the extremes since the last one and resets them to the current
/// temperature.
fn check(state: &mut State, now: OffsetDateTime, changes: &mut Vec<Change>) {
    let seen = CheckValues {
        current: state.since_check.map(|s| s.current),
        min: state.since_check.map(|s| s.min),
        max: state.since_check.map(|s| s.max),
        since: state.since_check.map(|s| s.since).or(state.last_check),
    };
    if let Some(since) = state.since_check.as_mut() {
        since.min = since.current;
        since.max = since.current;
        since.since = now;
    }
    state.last_check = Some(now);
    if state.check_alarm {
        state.check_alarm = false;
        changes.push(Change::Cleared {
            kind: AlertKind::CheckMissed,
            ended: now,
            excursion: None,
        });
    }
    changes.push(Change::Checked(seen));
}

/// When the next min/max check is due: `check_by` on the day after the last check, or, for a
/// fridge never checked, the first `check_by` after the engine first saw it. `None` when no
/// check is expected (or the engine has not stepped yet).
pub fn check_due(state: &State, limits: &Limits) -> Option<OffsetDateTime> {
    let by = limits.check_by?;
    let at = |date: Date| date.with_time(by).assume_utc();
    match state.last_check {
        Some(last) => last.date().next_day().map(at),
        None => {
            let from = state.watched_since?;
            let today = at(from.date());
            if from < today {
                Some(today)
            } else {
                from.date().next_day().map(at)
            }
        }
    }
}

/// The first moment the probe is out of calibration: the day after its due date.
fn calibration_expiry(limits: &Limits) -> Option<OffsetDateTime> {
    let due = limits.calibration.as_ref()?.due_on;
    due.next_day().map(|d| d.midnight().assume_utc())
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
                        excursion: Some(close(&excursion, severity, now, limits)),
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
/// sensor gone quiet, a missed min/max check, a calibration past due.
fn deadlines(state: &mut State, now: OffsetDateTime, limits: &Limits, changes: &mut Vec<Change>) {
    if let Some(due) = check_due(state, limits)
        && !state.check_alarm
        && now >= due
    {
        state.check_alarm = true;
        changes.push(Change::Raised {
            kind: AlertKind::CheckMissed,
            severity: Severity::Warning,
            started: due,
            value: None,
            limit: None,
        });
    }
    if state.check_alarm && limits.check_by.is_none() {
        // The check is no longer expected (the configuration changed).
        state.check_alarm = false;
        changes.push(Change::Cleared {
            kind: AlertKind::CheckMissed,
            ended: now,
            excursion: None,
        });
    }
    let overdue = calibration_expiry(limits).filter(|expiry| now >= *expiry);
    match (overdue, state.calibration_alarm) {
        (Some(expiry), false) => {
            state.calibration_alarm = true;
            changes.push(Change::Raised {
                kind: AlertKind::CalibrationOverdue,
                severity: Severity::Warning,
                started: expiry,
                value: None,
                limit: None,
            });
        }
        (None, true) => {
            state.calibration_alarm = false;
            changes.push(Change::Cleared {
                kind: AlertKind::CalibrationOverdue,
                ended: now,
                excursion: None,
            });
        }
        _ => {}
    }
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
    let check = check_due(state, limits).filter(|_| !state.check_alarm);
    let calibration = calibration_expiry(limits).filter(|_| !state.calibration_alarm);
    [excursion, door, offline, check, calibration]
        .into_iter()
        .flatten()
        .min()
}

#[cfg(test)]
mod tests;
