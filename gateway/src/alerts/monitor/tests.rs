//! The monitor on tokio's paused clock: alerts are raised exactly when their delay has passed.

use std::sync::Arc;
use std::time::Duration;

use time::macros::datetime;

use super::*;
use crate::alerts::notify::gpio::RecordingSignals;
use crate::clock::TokioClock;
use crate::config::Config;
use crate::message::{Point, Value};

const T0: OffsetDateTime = datetime!(2026-05-01 08:00 UTC);

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    signals: Arc<RecordingSignals>,
    queue: NotifyQueue,
    handle: AlertsHandle,
    observe: mpsc::Sender<Observation>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    clock: SharedClock,
    checks: crate::coldchain::monitor::CheckHandle,
}

fn config() -> Config {
    let mut config: Config = Config::parse(
        "[gateway]\nsite = \"store-1\"\n[alerts]\nescalate_after = \"30m\"\n[devices.fridge-01]\nprofile = \"refrigerator\"\nalarm_delay = \"15m\"\nexpected_interval = \"1m\"\nmissed_readings = 100\n",
        std::path::Path::new("/"),
    )
    .unwrap();
    config.check().unwrap();
    config.gateway.data_dir = "/nonexistent".into();
    config
}

fn start(dir: tempfile::TempDir) -> Fixture {
    let store = Store::create(&dir.path().join("s.redb")).unwrap();
    start_on(dir, store)
}

fn start_on(dir: tempfile::TempDir, store: Store) -> Fixture {
    start_with(dir, store, TokioClock::new(T0), config())
}

fn start_with(dir: tempfile::TempDir, store: Store, clock: SharedClock, config: Config) -> Fixture {
    let signals = Arc::new(RecordingSignals::new());
    let queue = NotifyQueue::open(store.clone(), vec![Channel::Cloud, Channel::Email]).unwrap();
    let (monitor, handle, observe) = Monitor::build(
        &config.gateway.site,
        &config.devices,
        &config.alerts,
        store.clone(),
        clock.clone(),
        queue.clone(),
        signals.clone(),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let checks = monitor.checks();
    let task = tokio::spawn(monitor.run(shutdown.clone()));
    Fixture {
        _dir: dir,
        store,
        signals,
        queue,
        handle,
        observe,
        shutdown,
        task,
        clock,
        checks,
    }
}

impl Fixture {
    async fn reading(&self, t: f64) {
        let mut points = BTreeMap::new();
        points.insert(
            "temperature_c".to_owned(),
            Point::good(Value::Number(t), Some("°C")),
        );
        self.observe
            .send(Observation {
                device: "fridge-01".to_owned(),
                at: self.clock.now(),
                points,
            })
            .await
            .unwrap();
        // Let the monitor take it.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    fn alerts(&self) -> Vec<Alert> {
        history::alerts(&self.store).unwrap()
    }

    async fn stop(self) -> (tempfile::TempDir, Store) {
        self.shutdown.cancel();
        self.task.await.unwrap();
        (self._dir, self.store)
    }
}

#[tokio::test(start_paused = true)]
async fn a_compressor_failure_is_raised_exactly_when_the_alarm_delay_has_passed() {
    let f = start(tempfile::tempdir().unwrap());
    // Readings every minute; the compressor failed: +0.5 °C a minute from 5 °C.
    let mut first_high = None;
    for minute in 0..30 {
        let t = 5.0 + 0.5 * minute as f64;
        if t > 8.0 && first_high.is_none() {
            first_high = Some(f.clock.now());
        }
        f.reading(t).await;
        let delay_passed =
            first_high.is_some_and(|s| f.clock.now() - s >= time::Duration::minutes(15));
        assert_eq!(
            !f.alerts().is_empty(),
            delay_passed,
            "minute {minute}: {:?}",
            f.alerts()
        );
        tokio::time::sleep(Duration::from_secs(60) - Duration::from_millis(1)).await;
    }
    let alerts = f.alerts();
    assert_eq!(alerts.len(), 1, "one alert per excursion, not per reading");
    let alert = &alerts[0];
    assert_eq!(alert.kind, AlertKind::TemperatureHigh);
    assert_eq!(alert.started, first_high.unwrap());
    assert_eq!(alert.raised_at - alert.started, time::Duration::minutes(15));
    assert!(f.signals.current().buzzer && f.signals.current().led);
    assert_eq!(f.queue.depth(Channel::Email).unwrap(), 1);
    assert_eq!(f.queue.depth(Channel::Cloud).unwrap(), 1);
    let (_, queued) = f.queue.head(Channel::Email).unwrap().unwrap();
    assert_eq!(queued.event, Event::Raised);
    assert_eq!(queued.alert.device, "fridge-01");
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_alarm_is_raised_at_its_deadline_even_without_another_reading() {
    let f = start(tempfile::tempdir().unwrap());
    f.reading(9.0).await;
    tokio::time::sleep(Duration::from_secs(15 * 60 - 1)).await;
    assert!(f.alerts().is_empty());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alerts = f.alerts();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].raised_at, T0 + time::Duration::minutes(15));
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn without_acknowledgement_the_alert_is_escalated_after_the_set_time_and_acknowledgement_stops_it()
 {
    let f = start(tempfile::tempdir().unwrap());
    f.reading(-0.5).await; // freezing: critical at once
    assert_eq!(f.alerts().len(), 1);
    assert!(f.signals.current().relay, "critical: the relay is on");
    // The e-mails queued so far, taken off the queue: (event, to the escalation list).
    let mails = |queue: &NotifyQueue| -> Vec<(Event, bool)> {
        std::iter::from_fn(|| {
            let (n, notification) = queue.head(Channel::Email).unwrap()?;
            queue.remove(Channel::Email, n).unwrap();
            Some((notification.event, notification.escalation))
        })
        .collect()
    };
    // Not before the set time (30 minutes)...
    tokio::time::sleep(Duration::from_secs(30 * 60 - 1)).await;
    assert_ne!(f.alerts()[0].state, AlertState::Escalated);
    assert_eq!(mails(&f.queue), [(Event::Raised, false)]);
    // ...but once it has passed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let escalated = &f.alerts()[0];
    assert_eq!(escalated.state, AlertState::Escalated);
    assert_eq!(mails(&f.queue), [(Event::Escalated, true)]);

    // A second alert, acknowledged in time, is never escalated.
    let f2 = start(tempfile::tempdir().unwrap());
    f2.reading(-0.5).await;
    let id = f2.alerts()[0].id;
    let acked = f2
        .handle
        .ack(
            id,
            "J. Alvarez".to_owned(),
            "moved stock to backup fridge".to_owned(),
        )
        .await
        .unwrap();
    assert_eq!(acked.state, AlertState::Acknowledged);
    assert!(
        !f2.signals.current().buzzer,
        "acknowledged: the buzzer stops"
    );
    assert!(
        f2.signals.current().relay,
        "still critical and active: the relay stays on"
    );
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    assert_eq!(f2.alerts()[0].state, AlertState::Acknowledged);
    assert!(
        !mails(&f2.queue).iter().any(|&(_, escalation)| escalation),
        "nobody on the escalation list is mailed"
    );
    let audit = crate::audit::entries(&f2.store, 1, 100).unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.kind == crate::audit::Kind::AlertAcknowledged && e.actor == "J. Alvarez")
    );
    f.stop().await;
    f2.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_mid_excursion_gives_one_alert_and_one_continuous_excursion_record() {
    let f = start(tempfile::tempdir().unwrap());
    f.reading(5.0).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    for _ in 0..20 {
        f.reading(10.0).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    assert_eq!(f.alerts().len(), 1);
    let (dir, store) = f.stop().await;

    let f = start_on(dir, store);
    assert!(
        f.signals.current().buzzer,
        "the alarm sounds again after the restart"
    );
    for _ in 0..10 {
        f.reading(10.0).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    f.reading(5.0).await;
    let alerts = f.alerts();
    assert_eq!(alerts.len(), 1, "not raised twice: {alerts:?}");
    assert!(!alerts[0].active);
    let records = crate::coldchain::history::excursions(
        &f.store,
        "fridge-01",
        T0 - time::Duration::days(1),
        T0 + time::Duration::days(1),
    )
    .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].started, alerts[0].started,
        "one continuous excursion"
    );
    assert_eq!(records[0].max, 10.0);
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_delivery_moves_the_alert_to_notified() {
    let f = start(tempfile::tempdir().unwrap());
    f.reading(-1.0).await;
    let id = f.alerts()[0].id;
    f.handle.delivered(id, Channel::Email);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let alert = &f.alerts()[0];
    assert_eq!(alert.state, AlertState::Notified);
    assert_eq!(alert.notified, ["email"]);
    f.stop().await;
}

#[test]
fn an_acknowledgement_needs_a_name_and_a_note() {
    let mut alert = Alert {
        id: Uuid::nil(),
        site: "s".to_owned(),
        device: "d".to_owned(),
        kind: AlertKind::DoorOpen,
        severity: Severity::Warning,
        state: AlertState::Raised,
        active: false,
        started: T0,
        ended: Some(T0),
        raised_at: T0,
        value: None,
        limit: None,
        min: None,
        max: None,
        mkt: None,
        low: None,
        high: None,
        escalated_at: None,
        acknowledged_at: None,
        acknowledged_by: None,
        ack_note: None,
        notified: Vec::new(),
        flag: None,
        detail: None,
        occurrences: 1,
        last_at: None,
        last_detail: None,
        digest_at: None,
        notified_occurrences: 1,
    };
    assert!(acknowledge(&mut alert, "", "note", T0).is_err());
    assert!(acknowledge(&mut alert, "me", " ", T0).is_err());
    acknowledge(&mut alert, "me", "closed the door", T0).unwrap();
    assert_eq!(alert.state, AlertState::Resolved, "already over: resolved");
    assert!(acknowledge(&mut alert, "me", "again", T0).is_err());
}

/// A store write that waits (here on another writer's open transaction, as it would on a slow SD
/// card's fsync) stalls the monitor but not the tasks that share its worker thread.
#[test]
fn a_monitor_waiting_on_the_store_does_not_stall_the_tasks_beside_it() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let fixture = start(tempfile::tempdir().unwrap());
        // Another writer holds the store for 1.5 s.
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let store = fixture.store.clone();
        let holder = std::thread::spawn(move || {
            store
                .write(|_txn| {
                    held_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(1500));
                    Ok(())
                })
                .unwrap();
        });
        held_rx.recv().unwrap();
        let ticker = tokio::spawn(async {
            let mut longest = Duration::ZERO;
            let mut last = std::time::Instant::now();
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                longest = longest.max(last.elapsed());
                last = std::time::Instant::now();
            }
            longest
        });
        // The flag makes the monitor write an alert: it waits for the holder.
        tokio::task::yield_now().await;
        fixture
            .handle
            .flag(
                "cabinet-01",
                "after hours",
                Severity::Warning,
                serde_json::json!({}),
            )
            .await;
        let longest = ticker.await.unwrap();
        holder.join().unwrap();
        assert!(
            longest < Duration::from_millis(750),
            "a task beside the monitor was held up {longest:?} by its store write"
        );
        fixture.shutdown.cancel();
        fixture.task.await.unwrap();
    });
}

#[tokio::test(start_paused = true)]
async fn a_thousand_flags_of_one_device_fold_into_one_alert_told_once_until_the_digest_is_due() {
    let f = start(tempfile::tempdir().unwrap());
    for n in 0..1000 {
        f.handle
            .flag(
                "cabinet-01",
                "override_without_witness",
                Severity::Warning,
                serde_json::json!({ "n": n }),
            )
            .await;
    }
    // Another device's flag is an alert of its own.
    f.handle
        .flag(
            "cabinet-02",
            "override_without_witness",
            Severity::Warning,
            serde_json::json!({}),
        )
        .await;
    let folded = wait_for_alerts(&f, 2).await;
    let one = folded.iter().find(|a| a.device == "cabinet-01").unwrap();
    assert_eq!(one.occurrences, 1000);
    assert_eq!(
        one.detail,
        Some(serde_json::json!({ "n": 0 })),
        "the first kept"
    );
    assert_eq!(
        one.last_detail,
        Some(serde_json::json!({ "n": 999 })),
        "and the last"
    );
    assert_eq!(
        f.queue.depth(Channel::Email).unwrap(),
        2,
        "one e-mail per alert, not per occurrence"
    );

    // An hour later the next occurrence brings one digest; escalation came on its own once.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    f.handle
        .flag(
            "cabinet-01",
            "override_without_witness",
            Severity::Warning,
            serde_json::json!({ "n": 1000 }),
        )
        .await;
    let events = wait_for_email_events(&f, 2 + 2 + 1).await;
    assert_eq!(
        events.iter().filter(|e| **e == Event::Repeated).count(),
        1,
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| **e == Event::Escalated).count(),
        2,
        "each alert escalated once: {events:?}"
    );
    f.stop().await;
}

/// Waits (on the paused clock) until `n` alerts exist; returns them.
async fn wait_for_alerts(f: &Fixture, n: usize) -> Vec<Alert> {
    for _ in 0..1000 {
        let alerts = f.alerts();
        if alerts.len() >= n && alerts.iter().map(|a| a.occurrences).sum::<u64>() >= 1001 {
            return alerts;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("alerts: {:#?}", f.alerts());
}

/// The events of the first `n` e-mail notifications queued, waiting for them.
async fn wait_for_email_events(f: &Fixture, n: u64) -> Vec<Event> {
    for _ in 0..1000 {
        if f.queue.depth(Channel::Email).unwrap() >= n {
            let mut events = Vec::new();
            while let Some((k, queued)) = f.queue.head(Channel::Email).unwrap() {
                events.push(queued.event);
                f.queue.remove(Channel::Email, k).unwrap();
            }
            return events;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "only {} e-mails queued",
        f.queue.depth(Channel::Email).unwrap()
    );
}

#[tokio::test(start_paused = true)]
async fn a_min_max_check_is_stored_with_the_reset_extremes_and_a_restart_keeps_them() {
    let f = start(tempfile::tempdir().unwrap());
    for t in [5.0, 3.5, 7.5, 6.0] {
        f.reading(t).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    let check = f
        .checks
        .check("fridge-01", "tom", "display agrees", Some(7))
        .await
        .unwrap();
    assert_eq!(
        (check.values.current, check.values.min, check.values.max),
        (Some(6.0), Some(3.5), Some(7.5))
    );
    assert_eq!((check.by.as_str(), check.audit_seq), ("tom", Some(7)));
    f.reading(6.5).await;
    let unknown = f.checks.check("fridge-99", "tom", "", None).await;
    assert!(matches!(unknown, Err(Error::NotFound(_))), "{unknown:?}");
    let (dir, store) = f.stop().await;

    let states: HashMap<String, State> = coldchain_history::states(&store)
        .unwrap()
        .into_iter()
        .collect();
    let since = states["fridge-01"].since_check.unwrap();
    assert_eq!((since.min, since.max, since.current), (6.0, 6.5, 6.5));
    let stored =
        coldchain_history::checks(&store, "fridge-01", T0, T0 + time::Duration::DAY).unwrap();
    assert_eq!(stored, vec![check]);

    // After a restart the extremes since the check are those before it.
    let f = start_on(dir, store);
    f.reading(6.2).await;
    let check = f.checks.check("fridge-01", "ana", "", None).await.unwrap();
    assert_eq!((check.values.min, check.values.max), (Some(6.0), Some(6.5)));
    f.stop().await;
}

fn checked_config() -> Config {
    let mut config = Config::parse(
        "[gateway]\nsite = \"store-1\"\n[devices.fridge-01]\nprofile = \"refrigerator\"\ncheck_by = \"10:00\"\nexpected_interval = \"1m\"\nmissed_readings = 100000\n",
        std::path::Path::new("/"),
    )
    .unwrap();
    config.check().unwrap();
    config.gateway.data_dir = "/nonexistent".into();
    config
}

#[tokio::test(start_paused = true)]
async fn a_missed_check_is_one_alert_after_a_forward_clock_jump_and_none_after_a_backward_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("s.redb")).unwrap();
    let clock = crate::clock::ManualClock::new(T0, true);
    let f = start_with(dir, store, clock.clone(), checked_config());
    let missed = |f: &Fixture| {
        f.alerts()
            .into_iter()
            .filter(|a| a.kind == AlertKind::CheckMissed)
            .collect::<Vec<_>>()
    };
    f.reading(5.0).await;
    // The wall clock jumps from 08:00 to three days later (NTP after a power cut); the task
    // notices within a minute, whatever it was sleeping for.
    clock.set(T0 + time::Duration::days(3));
    tokio::time::sleep(Duration::from_secs(61)).await;
    let alerts = missed(&f);
    assert_eq!(
        alerts.len(),
        1,
        "one alert for the missed checks: {alerts:?}"
    );
    assert!(alerts[0].active);
    assert!(
        !f.signals.current().buzzer,
        "a missed check does not sound the buzzer"
    );
    f.reading(5.0).await;
    assert_eq!(missed(&f).len(), 1, "not raised again by readings");
    f.checks.check("fridge-01", "tom", "", None).await.unwrap();
    assert!(!missed(&f)[0].active, "the check clears it");
    // Back two days: nothing is due before the day after the check.
    clock.set(T0 + time::Duration::days(1));
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(61)).await;
        f.reading(5.0).await;
    }
    assert_eq!(missed(&f).len(), 1);
    f.stop().await;
}
