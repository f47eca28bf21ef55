//! The worker against a real store, with a scripted deliverer and tokio's paused clock.

use std::collections::VecDeque;
use std::sync::Mutex;

use time::macros::datetime;
use tokio::time::Instant;

use super::*;
use crate::alerts::record::{Alert, AlertState, Event};
use crate::coldchain::{AlertKind, Severity};
use crate::store::Store;

pub(crate) fn alert(device: &str) -> Alert {
    Alert {
        id: Uuid::now_v7(),
        site: "store-0042".to_owned(),
        device: device.to_owned(),
        kind: AlertKind::TemperatureHigh,
        severity: Severity::Warning,
        state: AlertState::Raised,
        active: true,
        started: datetime!(2026-05-01 08:00:00 UTC),
        ended: None,
        raised_at: datetime!(2026-05-01 08:30:00 UTC),
        value: Some(9.4),
        limit: Some(8.0),
        min: None,
        max: None,
        mkt: None,
        low: Some(2.0),
        high: Some(8.0),
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
    }
}

pub(crate) fn notification(device: &str) -> Notification {
    let alert = alert(device);
    Notification {
        event: Event::Raised,
        at: alert.raised_at,
        alert,
        escalation: false,
        clock_synced: true,
    }
}

/// When each attempt was made, and for which device.
type Attempts = Arc<Mutex<Vec<(Instant, String)>>>;

/// Answers from a script (then `Ok`), and notes every attempt.
struct Scripted {
    script: Mutex<VecDeque<Result<(), DeliveryError>>>,
    attempts: Attempts,
}

impl Scripted {
    fn new(script: impl IntoIterator<Item = Result<(), DeliveryError>>) -> (Scripted, Attempts) {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let scripted = Scripted {
            script: Mutex::new(script.into_iter().collect()),
            attempts: attempts.clone(),
        };
        (scripted, attempts)
    }
}

impl Deliver for Scripted {
    fn channel(&self) -> Channel {
        Channel::Webhook
    }

    fn deliver<'a>(&'a self, n: &'a Notification) -> DeliveryFuture<'a> {
        Box::pin(async move {
            self.attempts
                .lock()
                .unwrap()
                .push((Instant::now(), n.alert.device.clone()));
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.script.lock().unwrap().pop_front().unwrap_or(Ok(()))
        })
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Store,
    queue: NotifyQueue,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rxgate.redb");
    let store = Store::create(&path).unwrap();
    let queue = NotifyQueue::open(store.clone(), vec![Channel::Email, Channel::Webhook]).unwrap();
    Setup {
        _dir: dir,
        path,
        store,
        queue,
    }
}

/// Queues a notification per device, in order; their alert ids.
fn enqueue(s: &Setup, devices: &[&str]) -> Vec<Uuid> {
    let ids = s
        .store
        .write(|txn| {
            let mut ids = Vec::new();
            for device in devices {
                let n = notification(device);
                s.queue.enqueue(txn, &n)?;
                ids.push(n.alert.id);
            }
            Ok(ids)
        })
        .unwrap();
    s.queue.wake();
    ids
}

type Delivered = Arc<Mutex<Vec<(Uuid, Channel)>>>;

fn recorder() -> (OnDelivered, Delivered) {
    let seen: Delivered = Arc::default();
    let sink = seen.clone();
    (
        Box::new(move |id, channel| sink.lock().unwrap().push((id, channel))),
        seen,
    )
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3600);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn devices(attempts: &Mutex<Vec<(Instant, String)>>) -> Vec<String> {
    attempts
        .lock()
        .unwrap()
        .iter()
        .map(|(_, d)| d.clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn worker_delivers_its_queue_in_order_and_reports_each_alert() {
    let s = setup();
    let ids = enqueue(&s, &["fridge-01", "fridge-02", "fridge-03"]);
    let (deliver, attempts) = Scripted::new([]);
    let (on_delivered, delivered) = recorder();
    let worker = Worker::new(s.queue.clone(), deliver, on_delivered);
    let counters = worker.counters();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(worker.run(shutdown.clone()));

    until("the queue to drain", || {
        s.queue.depth(Channel::Webhook).unwrap() == 0
    })
    .await;
    assert_eq!(devices(&attempts), ["fridge-01", "fridge-02", "fridge-03"]);
    let delivered = delivered.lock().unwrap().clone();
    let expected: Vec<(Uuid, Channel)> = ids.into_iter().map(|id| (id, Channel::Webhook)).collect();
    assert_eq!(delivered, expected);
    assert_eq!(counters.delivered(), 3);
    assert_eq!(counters.retries(), 0);
    // Other channels' queues are not touched.
    assert_eq!(s.queue.depth(Channel::Email).unwrap(), 3);
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn failed_head_entry_is_retried_with_doubling_backoff_and_blocks_the_ones_behind_it() {
    let s = setup();
    enqueue(&s, &["fridge-01", "fridge-02"]);
    let down = || Err(DeliveryError::Retry("connection refused".to_owned()));
    let (deliver, attempts) = Scripted::new([down(), down(), down(), down()]);
    let (on_delivered, delivered) = recorder();
    let worker = Worker::new(s.queue.clone(), deliver, on_delivered);
    let counters = worker.counters();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(worker.run(shutdown.clone()));

    until("the queue to drain", || {
        s.queue.depth(Channel::Webhook).unwrap() == 0
    })
    .await;
    assert_eq!(
        devices(&attempts),
        [
            "fridge-01",
            "fridge-01",
            "fridge-01",
            "fridge-01",
            "fridge-01",
            "fridge-02"
        ]
    );
    let times: Vec<Instant> = attempts.lock().unwrap().iter().map(|(t, _)| *t).collect();
    // Each gap is the 10 ms attempt plus the backoff: 1 s, 2 s, 4 s, 8 s, less up to a quarter.
    for (i, base) in [1u64, 2, 4, 8].into_iter().enumerate() {
        let gap = times[i + 1] - times[i] - Duration::from_millis(10);
        let base = Duration::from_secs(base);
        assert!(
            gap <= base && gap >= base * 3 / 4,
            "wait {i} was {gap:?}, expected {base:?} less at most a quarter"
        );
    }
    assert_eq!(counters.retries(), 4);
    assert_eq!(counters.delivered(), 2);
    assert_eq!(delivered.lock().unwrap().len(), 2);
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn permanently_refused_entry_is_dropped_counted_and_not_reported_delivered() {
    let s = setup();
    enqueue(&s, &["fridge-01", "fridge-02"]);
    let (deliver, attempts) = Scripted::new([Err(DeliveryError::Drop("404 Not Found".to_owned()))]);
    let (on_delivered, delivered) = recorder();
    let worker = Worker::new(s.queue.clone(), deliver, on_delivered);
    let counters = worker.counters();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(worker.run(shutdown.clone()));

    until("the queue to drain", || {
        s.queue.depth(Channel::Webhook).unwrap() == 0
    })
    .await;
    assert_eq!(devices(&attempts), ["fridge-01", "fridge-02"]);
    assert_eq!(counters.dropped(), 1);
    assert_eq!(counters.delivered(), 1);
    assert_eq!(counters.retries(), 0);
    assert_eq!(delivered.lock().unwrap().len(), 1);
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn idle_worker_wakes_when_a_notification_is_queued() {
    let s = setup();
    let (deliver, attempts) = Scripted::new([]);
    let (on_delivered, _) = recorder();
    let shutdown = CancellationToken::new();
    let task =
        tokio::spawn(Worker::new(s.queue.clone(), deliver, on_delivered).run(shutdown.clone()));
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(attempts.lock().unwrap().is_empty());

    let queued = Instant::now();
    enqueue(&s, &["fridge-07"]);
    until("the delivery", || !attempts.lock().unwrap().is_empty()).await;
    assert!(attempts.lock().unwrap()[0].0 - queued < Duration::from_millis(100));
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_a_retrying_worker_at_once_and_the_entry_survives_a_restart() {
    let s = setup();
    enqueue(&s, &["fridge-01"]);
    let down = || Err(DeliveryError::Retry("connection refused".to_owned()));
    let (deliver, attempts) = Scripted::new(std::iter::repeat_with(down).take(100));
    let (on_delivered, _) = recorder();
    let shutdown = CancellationToken::new();
    let task =
        tokio::spawn(Worker::new(s.queue.clone(), deliver, on_delivered).run(shutdown.clone()));
    until("a few attempts", || attempts.lock().unwrap().len() >= 5).await;

    // It is now in a backoff of about 16 s; shutdown must not wait for it.
    let cancelled = Instant::now();
    shutdown.cancel();
    task.await.unwrap();
    assert!(Instant::now() - cancelled < Duration::from_millis(100));
    assert_eq!(s.queue.depth(Channel::Webhook).unwrap(), 1);

    // The process restarts: the store is reopened and a new worker delivers the entry.
    let Setup {
        _dir,
        path,
        store,
        queue,
    } = s;
    drop((store, queue));
    let store = Store::create(&path).unwrap();
    let queue = NotifyQueue::open(store, vec![Channel::Email, Channel::Webhook]).unwrap();
    let (deliver, attempts) = Scripted::new([]);
    let (on_delivered, delivered) = recorder();
    let shutdown = CancellationToken::new();
    let task =
        tokio::spawn(Worker::new(queue.clone(), deliver, on_delivered).run(shutdown.clone()));
    until("the delivery after the restart", || {
        queue.depth(Channel::Webhook).unwrap() == 0
    })
    .await;
    assert_eq!(devices(&attempts), ["fridge-01"]);
    assert_eq!(delivered.lock().unwrap().len(), 1);
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_abandons_a_delivery_in_progress_and_keeps_its_entry() {
    struct Hangs;
    impl Deliver for Hangs {
        fn channel(&self) -> Channel {
            Channel::Email
        }
        fn deliver<'a>(&'a self, _: &'a Notification) -> DeliveryFuture<'a> {
            Box::pin(std::future::pending())
        }
    }
    let s = setup();
    enqueue(&s, &["fridge-01"]);
    let (on_delivered, delivered) = recorder();
    let shutdown = CancellationToken::new();
    let task =
        tokio::spawn(Worker::new(s.queue.clone(), Hangs, on_delivered).run(shutdown.clone()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(s.queue.depth(Channel::Email).unwrap(), 1);
    assert!(delivered.lock().unwrap().is_empty());
}

#[test]
fn backoff_doubles_from_one_second_to_five_minutes_with_at_most_a_quarter_off() {
    let no_jitter: Vec<u64> = (1..=12).map(|a| backoff(a, 0).as_secs()).collect();
    assert_eq!(no_jitter, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    assert_eq!(backoff(u32::MAX, 0), BACKOFF_MAX);
    for random in [1, 511, 1023, u32::MAX] {
        let wait = backoff(10, random);
        assert!(
            wait <= BACKOFF_MAX && wait >= BACKOFF_MAX * 3 / 4,
            "{wait:?}"
        );
    }
    let most_jitter = backoff(1, 1023);
    assert!(most_jitter > Duration::from_millis(750) && most_jitter < Duration::from_millis(751));
}
