use std::time::Duration;

use proptest::prelude::*;
use time::macros::datetime;

use super::*;

const T0: OffsetDateTime = datetime!(2026-05-01 08:00 UTC);
const MINUTE: Duration = Duration::from_secs(60);

fn limits() -> Limits {
    Limits::refrigerator(Duration::from_secs(30 * 60))
}

/// Feeds readings `(minutes after T0, temperature, door)`; returns the final state and every
/// change with the minute it happened.
fn run(readings: &[(u64, f64, Option<bool>)]) -> (State, Vec<(u64, Change)>) {
    let limits = limits();
    let mut state = State::default();
    let mut all = Vec::new();
    for &(minute, t, door) in readings {
        let now = T0 + MINUTE * minute as u32;
        // Step at every deadline that falls before this reading, as the monitor task does.
        while let Some(deadline) = next_deadline(&state, &limits).filter(|d| *d <= now) {
            let (next, changes) = step(state, Input::Tick, deadline, &limits);
            state = next;
            let at = ((deadline - T0).whole_seconds() / 60) as u64;
            all.extend(changes.into_iter().map(|c| (at, c)));
        }
        let (next, changes) = step(
            state,
            Input::Reading {
                temperature: Some(t),
                door_open: door,
            },
            now,
            &limits,
        );
        state = next;
        all.extend(changes.into_iter().map(|c| (minute, c)));
    }
    (state, all)
}

fn raised(changes: &[(u64, Change)]) -> Vec<(u64, AlertKind, Severity)> {
    changes
        .iter()
        .filter_map(|(at, c)| match c {
            Change::Raised { kind, severity, .. } => Some((*at, *kind, *severity)),
            _ => None,
        })
        .collect()
}

fn temperature_raised(changes: &[(u64, Change)]) -> Vec<(u64, AlertKind, Severity)> {
    raised(changes)
        .into_iter()
        .filter(|(_, k, _)| matches!(k, AlertKind::TemperatureHigh | AlertKind::TemperatureLow))
        .collect()
}

#[test]
fn a_compressor_failure_alarms_exactly_when_the_delay_has_passed_since_the_first_high_reading() {
    // The compressor has stopped: +0.25 °C a minute from 5 °C, over 8 °C from minute 13.
    let readings: Vec<_> = (0..60).map(|m| (m, 5.0 + 0.25 * m as f64, None)).collect();
    let (_, changes) = run(&readings);
    let first_high = readings.iter().find(|(_, t, _)| *t > 8.0).unwrap().0;
    assert_eq!(
        temperature_raised(&changes),
        [(
            first_high + 30,
            AlertKind::TemperatureHigh,
            Severity::Warning
        )]
    );
    let Change::Raised { started, limit, .. } = &changes
        .iter()
        .find(|(_, c)| matches!(c, Change::Raised { .. }))
        .unwrap()
        .1
    else {
        unreachable!()
    };
    assert_eq!(
        *started,
        T0 + MINUTE * first_high as u32,
        "the alarm dates from the excursion's start"
    );
    assert_eq!(*limit, Some(8.0));
}

#[test]
fn the_deadline_is_the_excursion_start_plus_the_delay() {
    let limits = Limits {
        expected_interval: Duration::from_secs(3600),
        ..limits()
    };
    let (state, _) = step(
        State::default(),
        Input::Reading {
            temperature: Some(9.0),
            door_open: None,
        },
        T0,
        &limits,
    );
    assert_eq!(
        next_deadline(&state, &limits),
        Some(T0 + Duration::from_secs(30 * 60))
    );
    let (state, changes) = step(
        state,
        Input::Tick,
        T0 + Duration::from_secs(30 * 60 - 1),
        &limits,
    );
    assert!(changes.is_empty(), "one second early: nothing");
    let (_, changes) = step(
        state,
        Input::Tick,
        T0 + Duration::from_secs(30 * 60),
        &limits,
    );
    assert!(
        matches!(
            changes[..],
            [Change::Raised {
                kind: AlertKind::TemperatureHigh,
                ..
            }]
        ),
        "{changes:?}"
    );
}

#[test]
fn a_door_opened_for_two_minutes_raises_nothing_and_one_left_open_raises_a_door_alert() {
    let mut readings = vec![
        (0, 5.0, Some(false)),
        (1, 7.5, Some(true)),
        (2, 9.5, Some(true)),
        (3, 8.5, Some(false)),
    ];
    readings.extend((4..60).map(|m| (m, 5.0, Some(false))));
    let (_, changes) = run(&readings);
    assert_eq!(raised(&changes), []);

    let (_, changes) = run(&[
        (0, 5.0, Some(true)),
        (2, 5.5, Some(true)),
        (4, 5.5, Some(true)),
        (6, 6.0, Some(true)),
        (7, 5.0, Some(false)),
    ]);
    assert_eq!(
        raised(&changes),
        [(5, AlertKind::DoorOpen, Severity::Warning)]
    );
    assert!(changes.iter().any(|(at, c)| *at == 7
        && matches!(
            c,
            Change::Cleared {
                kind: AlertKind::DoorOpen,
                ..
            }
        )));
}

#[test]
fn spikes_shorter_than_the_delay_raise_nothing() {
    let readings: Vec<_> = (0..240)
        .map(|m| (m, if m % 40 < 20 { 9.0 } else { 5.0 }, None))
        .collect();
    let (_, changes) = run(&readings);
    assert_eq!(raised(&changes), []);
}

#[test]
fn a_reading_oscillating_around_the_limit_is_one_excursion_and_one_alert() {
    let readings: Vec<_> = (0..120)
        .map(|m| (m, if m % 2 == 0 { 8.2 } else { 7.8 }, None))
        .collect();
    let (state, changes) = run(&readings);
    assert_eq!(
        temperature_raised(&changes),
        [(30, AlertKind::TemperatureHigh, Severity::Warning)]
    );
    assert!(
        !changes
            .iter()
            .any(|(_, c)| matches!(c, Change::Cleared { .. }))
    );
    assert!(state.excursion.is_some());
}

#[test]
fn freezing_in_a_refrigerator_alarms_at_once_as_critical() {
    let (_, changes) = run(&[(0, 4.0, None), (1, 1.5, None), (2, 0.0, None)]);
    assert_eq!(
        temperature_raised(&changes),
        [(2, AlertKind::TemperatureLow, Severity::Critical)]
    );
}

#[test]
fn a_warning_becomes_critical_when_the_reading_crosses_the_critical_limit() {
    let mut readings: Vec<_> = (0..35).map(|m| (m, 1.5, None)).collect();
    readings.push((35, -0.5, None));
    let (_, changes) = run(&readings);
    assert_eq!(
        temperature_raised(&changes),
        [(30, AlertKind::TemperatureLow, Severity::Warning)]
    );
    assert!(
        changes
            .iter()
            .any(|(at, c)| *at == 35 && matches!(c, Change::Escalated { .. }))
    );
}

#[test]
fn an_alarmed_excursion_ends_with_a_record_of_start_end_duration_extremes_and_mkt() {
    let mut readings = vec![(0, 5.0, None)];
    readings.extend((10..=50).map(|m| (m, if m < 30 { 10.0 } else { 12.0 }, None)));
    readings.push((51, 7.0, None));
    let (state, changes) = run(&readings);
    let record = changes
        .iter()
        .find_map(|(_, c)| match c {
            Change::Cleared {
                excursion: Some(r), ..
            } => Some(r.clone()),
            _ => None,
        })
        .expect("the excursion record");
    assert_eq!(record.started, T0 + MINUTE * 10);
    assert_eq!(record.ended, T0 + MINUTE * 51);
    assert_eq!(record.duration_s, 41 * 60);
    assert_eq!(
        (record.min, record.max),
        (10.0, 12.0),
        "the recovering reading is not part of it"
    );
    // 20 min at 10 °C, 21 min at 12 °C (the last reading before recovery held until it).
    let expected =
        crate::coldchain::mkt::of_readings(&[vec![10.0; 20], vec![12.0; 21]].concat()).unwrap();
    assert!(
        (record.mkt.unwrap() - expected).abs() < 1e-6,
        "{:?} vs {expected}",
        record.mkt
    );
    assert!(state.excursion.is_none());
}

#[test]
fn a_restart_mid_excursion_keeps_one_alert_and_one_continuous_excursion() {
    let limits = limits();
    let (first_half, _) = run(&(0..40)
        .map(|m| (m, if m < 5 { 5.0 } else { 11.0 }, None))
        .collect::<Vec<_>>());
    // The monitor persists the state as JSON; a restart reads it back.
    let stored = serde_json::to_string(&first_half).unwrap();
    let mut state: State = serde_json::from_str(&stored).unwrap();
    assert_eq!(state, first_half);
    let mut changes = Vec::new();
    for m in 40..80u32 {
        let t = if m < 70 { 11.0 } else { 5.0 };
        let (next, c) = step(
            state,
            Input::Reading {
                temperature: Some(t),
                door_open: None,
            },
            T0 + MINUTE * m,
            &limits,
        );
        state = next;
        changes.extend(c);
    }
    assert!(
        !changes.iter().any(|c| matches!(c, Change::Raised { .. })),
        "not raised twice: {changes:?}"
    );
    let record = changes
        .iter()
        .find_map(|c| match c {
            Change::Cleared {
                excursion: Some(r), ..
            } => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        record.started,
        T0 + MINUTE * 5,
        "one continuous excursion across the restart"
    );
    assert_eq!(record.ended, T0 + MINUTE * 70);
}

#[test]
fn a_silent_sensor_is_reported_offline_after_the_missed_readings_and_back_with_the_next() {
    let (_, changes) = run(&[(0, 5.0, None), (1, 5.0, None), (10, 5.0, None)]);
    assert_eq!(
        raised(&changes),
        [(4, AlertKind::SensorOffline, Severity::Warning)]
    );
    assert!(changes.iter().any(|(at, c)| *at == 10
        && matches!(
            c,
            Change::Cleared {
                kind: AlertKind::SensorOffline,
                ..
            }
        )));
}

#[test]
fn an_impossible_value_is_a_probe_fault_not_a_temperature() {
    let (state, changes) = run(&[
        (0, 5.0, None),
        (1, -3276.8, None),
        (2, -3276.8, None),
        (3, 5.0, None),
    ]);
    assert_eq!(
        raised(&changes),
        [(1, AlertKind::ProbeFault, Severity::Warning)]
    );
    assert!(state.excursion.is_none());
    let day = state.day.unwrap();
    assert_eq!(
        (day.min, day.max, day.count),
        (5.0, 5.0, 2),
        "the fault is not a reading"
    );
}

#[test]
fn each_day_keeps_its_minimum_maximum_and_mean() {
    let limits = limits();
    let mut state = State::default();
    let mut closed = Vec::new();
    for (hour, t) in [(0, 4.0), (6, 6.0), (23, 5.0), (24, 3.0)] {
        let (next, changes) = step(
            state,
            Input::Reading {
                temperature: Some(t),
                door_open: None,
            },
            T0 - Duration::from_secs(8 * 3600) + Duration::from_secs(hour * 3600),
            &limits,
        );
        state = next;
        closed.extend(changes.into_iter().filter_map(|c| match c {
            Change::DayClosed(d) => Some(d),
            _ => None,
        }));
    }
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].date, datetime!(2026-05-01 00:00 UTC).date());
    assert_eq!(
        (closed[0].min, closed[0].max, closed[0].count),
        (4.0, 6.0, 3)
    );
    assert_eq!(closed[0].mean(), Some(5.0));
    assert_eq!(state.day.unwrap().min, 3.0);
}

proptest! {
    /// Whatever the readings, alerts pair up: never two active alerts of one kind, every
    /// clear follows a raise, and an excursion's record lies within its readings.
    #[test]
    fn alerts_are_raised_once_and_cleared_once(temps in prop::collection::vec((0u64..5, -5.0f64..15.0, any::<Option<bool>>()), 1..150)) {
        let mut minute = 0;
        let readings: Vec<_> = temps.into_iter().map(|(gap, t, door)| { minute += gap; (minute, t, door) }).collect();
        let (_, changes) = run(&readings);
        let mut active = std::collections::HashSet::new();
        for (_, change) in &changes {
            match change {
                Change::Raised { kind, .. } => prop_assert!(active.insert(*kind), "{kind:?} raised twice"),
                Change::Cleared { kind, excursion, .. } => {
                    prop_assert!(active.remove(kind), "{kind:?} cleared but not active");
                    if let Some(r) = excursion {
                        prop_assert!(r.min <= r.max && r.ended >= r.started);
                        let mkt = r.mkt.unwrap();
                        prop_assert!(mkt >= r.min - 1e-9 && mkt <= r.max + 1e-9, "MKT {} outside [{}, {}]", mkt, r.min, r.max);
                    }
                }
                Change::Escalated { kind, .. } => prop_assert!(active.contains(kind)),
                Change::DayClosed(_) | Change::Checked(_) => {}
            }
        }
    }
}

fn reading(t: f64) -> Input {
    Input::Reading {
        temperature: Some(t),
        door_open: None,
    }
}

fn checked_by_ten() -> Limits {
    Limits {
        check_by: Some(time::macros::time!(10:00)),
        expected_interval: Duration::from_secs(24 * 3600),
        ..limits()
    }
}

fn kinds_raised(changes: &[Change]) -> Vec<AlertKind> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Raised { kind, .. } => Some(*kind),
            _ => None,
        })
        .collect()
}

#[test]
fn a_check_reports_the_extremes_since_the_last_one_and_resets_them_to_the_current_temperature() {
    let limits = checked_by_ten();
    let mut state = State::default();
    for (minute, t) in [(0u32, 5.0), (1, 8.6), (2, 3.1), (3, 4.5)] {
        state = step(state, reading(t), T0 + MINUTE * minute, &limits).0;
    }
    let at = T0 + MINUTE * 4;
    let (state, changes) = step(state, Input::Check, at, &limits);
    assert_eq!(
        changes,
        vec![Change::Checked(CheckValues {
            current: Some(4.5),
            min: Some(3.1),
            max: Some(8.6),
            since: Some(T0),
        })]
    );
    let since = state.since_check.unwrap();
    assert_eq!((since.min, since.max, since.current), (4.5, 4.5, 4.5));
    assert_eq!(since.since, at);
    assert_eq!(state.last_check, Some(at));
    // The next reading widens the reset extremes again.
    let (state, _) = step(state, reading(6.0), at + MINUTE, &limits);
    let since = state.since_check.unwrap();
    assert_eq!((since.min, since.max, since.current), (4.5, 6.0, 6.0));
    // Persisted as JSON with the rest of the state: a restart keeps them.
    let restored: State = serde_json::from_slice(&serde_json::to_vec(&state).unwrap()).unwrap();
    assert_eq!(restored, state);
    assert_eq!(restored.since_check, Some(since));
    // A state saved before checks existed still loads, with nothing since a check.
    let old: State = serde_json::from_str(
        r#"{"excursion":null,"door_alarm":false,"offline_alarm":false,"probe_alarm":false,"day":null}"#,
    )
    .unwrap();
    assert_eq!(
        (old.since_check, old.last_check, old.check_alarm),
        (None, None, false)
    );
}

#[test]
fn a_fridge_not_checked_by_ten_raises_one_missed_check_alarm_that_the_check_clears() {
    let limits = checked_by_ten();
    // First seen at 08:00: the first check is due by 10:00 the same day.
    let (state, _) = step(State::default(), reading(5.0), T0, &limits);
    let due = datetime!(2026-05-01 10:00 UTC);
    assert_eq!(check_due(&state, &limits), Some(due));
    assert_eq!(next_deadline(&state, &limits), Some(due));
    let (state, changes) = step(state, Input::Tick, due - MINUTE, &limits);
    assert!(kinds_raised(&changes).is_empty());
    let (state, changes) = step(state, Input::Tick, due, &limits);
    assert_eq!(kinds_raised(&changes), vec![AlertKind::CheckMissed]);
    assert!(matches!(changes[0], Change::Raised { started, .. } if started == due));
    assert!(state.check_alarm);
    // Days pass without a check: still one alarm, not one per day or per step.
    let mut state = state;
    for day in 1..4 {
        let (next, changes) = step(
            state,
            reading(5.0),
            due + time::Duration::days(day),
            &limits,
        );
        assert!(kinds_raised(&changes).is_empty(), "day {day}: {changes:?}");
        state = next;
    }
    let at = datetime!(2026-05-04 09:30 UTC);
    let (state, changes) = step(state, Input::Check, at, &limits);
    assert!(matches!(
        changes[0],
        Change::Cleared { kind: AlertKind::CheckMissed, ended, .. } if ended == at
    ));
    assert!(!state.check_alarm);
    assert_eq!(
        check_due(&state, &limits),
        Some(datetime!(2026-05-05 10:00 UTC)),
        "checked on the 4th: due again by 10:00 on the 5th"
    );
}

#[test]
fn a_fridge_first_seen_after_the_check_time_is_first_due_the_next_morning_and_off_means_never() {
    let limits = checked_by_ten();
    let (state, _) = step(
        State::default(),
        reading(5.0),
        datetime!(2026-05-01 14:00 UTC),
        &limits,
    );
    assert_eq!(
        check_due(&state, &limits),
        Some(datetime!(2026-05-02 10:00 UTC))
    );
    assert_eq!(
        check_due(&state, &self::limits()),
        None,
        "check_by off: no deadline"
    );
}

fn missed(changes: &[Change]) -> Vec<AlertKind> {
    kinds_raised(changes)
        .into_iter()
        .filter(|k| *k == AlertKind::CheckMissed)
        .collect()
}

#[test]
fn the_missed_check_survives_wall_clock_jumps_with_one_alarm_forward_and_none_backward() {
    let limits = checked_by_ten();
    let clock = crate::clock::ManualClock::new(T0, true);
    use crate::clock::Clock;
    let (state, _) = step(State::default(), reading(5.0), clock.now(), &limits);
    // NTP catches up: the clock jumps forward five days at once.
    clock.set(T0 + time::Duration::days(5));
    let (state, changes) = step(state, Input::Tick, clock.now(), &limits);
    assert_eq!(
        missed(&changes),
        vec![AlertKind::CheckMissed],
        "one alarm, not five"
    );
    let (state, _) = step(state, Input::Check, clock.now(), &limits);
    // The clock jumps back two days (a bad time source): the check made "in the future" still
    // counts, and nothing is raised until the day after it.
    clock.set(T0 + time::Duration::days(3));
    let mut state = state;
    for hour in 0..48 {
        let (next, changes) = step(
            state,
            reading(5.0),
            clock.now() + time::Duration::hours(hour),
            &limits,
        );
        assert!(missed(&changes).is_empty(), "hour {hour}: {changes:?}");
        state = next;
    }
    assert_eq!(
        check_due(&state, &limits),
        Some(datetime!(2026-05-07 10:00 UTC))
    );
    let (_, changes) = step(state, Input::Tick, datetime!(2026-05-07 10:00 UTC), &limits);
    assert_eq!(missed(&changes), vec![AlertKind::CheckMissed]);
}

fn calibrated(due_on: time::Date) -> Limits {
    Limits {
        calibration: Some(crate::coldchain::Calibration {
            certificate: "CAL-2025-0042".to_owned(),
            laboratory: "Thermo Lab".to_owned(),
            calibrated_on: time::macros::date!(2025 - 05 - 01),
            due_on,
        }),
        expected_interval: Duration::from_secs(24 * 3600),
        ..limits()
    }
}

#[test]
fn a_calibration_is_a_notice_within_thirty_days_and_overdue_the_day_after_its_due_date() {
    use crate::coldchain::CalibrationStatus::*;
    let c = calibrated(time::macros::date!(2026 - 06 - 30))
        .calibration
        .unwrap();
    let day = |d: time::Date| c.status(d);
    assert_eq!(
        day(time::macros::date!(2026 - 05 - 30)),
        Valid,
        "31 days left"
    );
    assert_eq!(
        day(time::macros::date!(2026 - 05 - 31)),
        DueSoon,
        "30 days left"
    );
    assert_eq!(
        day(time::macros::date!(2026 - 06 - 30)),
        DueSoon,
        "due today"
    );
    assert_eq!(day(time::macros::date!(2026 - 07 - 01)), Overdue);
}

#[test]
fn an_overdue_calibration_raises_one_alarm_that_a_renewed_certificate_clears() {
    let limits = calibrated(time::macros::date!(2026 - 05 - 01));
    let (state, changes) = step(State::default(), reading(5.0), T0, &limits);
    assert!(
        kinds_raised(&changes).is_empty(),
        "due today: not yet overdue"
    );
    let expiry = datetime!(2026-05-02 00:00 UTC);
    assert_eq!(next_deadline(&state, &limits), Some(expiry));
    let (state, changes) = step(state, Input::Tick, expiry, &limits);
    assert_eq!(kinds_raised(&changes), vec![AlertKind::CalibrationOverdue]);
    let mut state = state;
    for minute in 1..100u32 {
        let (next, changes) = step(state, reading(5.0), expiry + MINUTE * minute, &limits);
        assert!(kinds_raised(&changes).is_empty(), "one alarm, not a flood");
        state = next;
    }
    let renewed = calibrated(time::macros::date!(2027 - 05 - 01));
    let (state, changes) = step(state, reading(5.0), expiry + MINUTE * 200, &renewed);
    assert!(matches!(
        changes[..],
        [Change::Cleared {
            kind: AlertKind::CalibrationOverdue,
            ..
        }]
    ));
    assert!(!state.calibration_alarm);
}

#[test]
fn an_excursion_record_says_whether_the_probe_was_in_calibration() {
    let record = |limits: &Limits, start: OffsetDateTime| {
        let mut state = State::default();
        let mut records = Vec::new();
        for minute in 0..60u32 {
            let t = if minute < 45 { 9.5 } else { 5.0 };
            let (next, changes) = step(state, reading(t), start + MINUTE * minute, limits);
            state = next;
            records.extend(changes.into_iter().filter_map(|c| match c {
                Change::Cleared {
                    excursion: Some(r), ..
                } => Some(r),
                _ => None,
            }));
        }
        assert_eq!(records.len(), 1);
        records.remove(0).probe_in_calibration
    };
    let valid = calibrated(time::macros::date!(2026 - 12 - 31));
    assert_eq!(record(&valid, T0), Some(true));
    let expired = calibrated(time::macros::date!(2026 - 04 - 30));
    assert_eq!(record(&expired, T0), Some(false));
    // An excursion running past midnight of the due date is not covered.
    let due_that_day = calibrated(time::macros::date!(2026 - 05 - 01));
    assert_eq!(
        record(&due_that_day, datetime!(2026-05-01 23:30 UTC)),
        Some(false)
    );
    assert_eq!(record(&limits(), T0), None, "no calibration configured");
}
