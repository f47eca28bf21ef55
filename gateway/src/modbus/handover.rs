//! Handing a device's readings to the pipeline without waiting for the disk.
//!
//! The poller pushes each cycle's intakes into the device's [`Handover`], stamped with the time
//! they were read, and goes on polling: [`Handover::push`] never waits. The device's
//! [`Forwarder`] task queues them into [`Ingest`] one after the other, in the order they were
//! read, and collects their durable outcomes as they come. A write that takes seconds (an SD
//! card that stops answering) delays storing, never the next poll.
//!
//! Bounded, per device: at most [`MAX_QUEUED`] intakes queued in the pipeline and not yet
//! durable, and at most [`MAX_WAITING`] more waiting to be queued. When the waiting queue is
//! full, the oldest waiting *reading* is dropped to make room (a status change is never dropped
//! while a reading waits): the newest temperature is the one that matters for an alarm, and the
//! gap lies in a stretch where storing had stopped anyway. Each dropped reading counts in
//! `rxgate_readings_not_stored_total{reason="backlog"}`; the episode is logged when it starts and
//! when the queue has drained, with how many were dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::message::{Accepted, Ingest, Intake, Pending, Received, Refused};

/// Intakes of one device queued in the pipeline and not yet durable, at most.
pub(crate) const MAX_QUEUED: usize = 16;
/// Intakes of one device waiting to be queued, at most: at a 1 s poll interval, four minutes
/// during which nothing can be written, on top of what the pipeline's own queue holds.
pub(crate) const MAX_WAITING: usize = 240;
/// Longer than this from poll to disk is slow: logged when it starts and when it ends.
const SLOW: Duration = Duration::from_secs(1);

struct Item {
    intake: Intake,
    received: Received,
    read_at: Instant,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Item>,
    /// Readings dropped since the waiting queue was last empty.
    dropped: u64,
    /// The poller is gone: nothing more will be pushed.
    closed: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The poller's end: where it puts what it read.
pub(crate) struct Handover {
    shared: Arc<Shared>,
    ingest: Ingest,
    device: String,
}

/// The task that moves one device's intakes from its [`Handover`] into the pipeline.
pub(crate) struct Forwarder {
    shared: Arc<Shared>,
    ingest: Ingest,
    queued: VecDeque<(Pending, Instant)>,
    tally: Tally,
}

/// A handover for `device`'s poller and the forwarder that empties it into `ingest`.
pub(crate) fn pair(device: &str, ingest: Ingest) -> (Handover, Forwarder) {
    let shared = Arc::new(Shared::default());
    let handover = Handover {
        shared: shared.clone(),
        ingest: ingest.clone(),
        device: device.to_owned(),
    };
    let forwarder = Forwarder {
        shared,
        ingest,
        queued: VecDeque::new(),
        tally: Tally {
            device: device.to_owned(),
            not_stored: 0,
            slow: false,
        },
    };
    (handover, forwarder)
}

impl Handover {
    /// Hands `intake` over, stamped now. Never waits; when [`MAX_WAITING`] intakes wait
    /// already, the oldest waiting reading is dropped.
    pub(crate) fn push(&self, intake: Intake) {
        let item = Item {
            intake,
            received: self.ingest.now(),
            read_at: Instant::now(),
        };
        let mut state = self.shared.lock();
        if state.waiting.len() >= MAX_WAITING {
            let oldest = state
                .waiting
                .iter()
                .position(|i| matches!(i.intake, Intake::Telemetry(_)))
                .unwrap_or(0);
            state.waiting.remove(oldest);
            crate::metrics::reading_not_stored("backlog");
            if state.dropped == 0 {
                tracing::warn!(
                    device = %self.device,
                    waiting = MAX_WAITING,
                    "Readings are read faster than they can be stored; the oldest waiting ones \
                     are dropped to keep the newest, and counted until storing catches up."
                );
            }
            state.dropped += 1;
        }
        state.waiting.push_back(item);
        drop(state);
        self.shared.wake.notify_one();
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

/// The next intake to queue; `None` once the poller is gone and everything was taken.
async fn next(shared: &Shared, device: &str) -> Option<Item> {
    loop {
        {
            let mut state = shared.lock();
            if let Some(item) = state.waiting.pop_front() {
                if state.waiting.is_empty() && state.dropped > 0 {
                    tracing::info!(
                        device = %device,
                        dropped = state.dropped,
                        "Storing has caught up with polling."
                    );
                    state.dropped = 0;
                }
                return Some(item);
            }
            if state.closed {
                return None;
            }
        }
        shared.wake.notified().await;
    }
}

/// The outcome of the oldest queued intake (outcomes come in the order intakes were queued),
/// with when it was read; never resolves while nothing is queued.
async fn oldest(queued: &mut VecDeque<(Pending, Instant)>) -> (Result<Accepted, Refused>, Instant) {
    match queued.front_mut() {
        Some((pending, read_at)) => {
            let read_at = *read_at;
            let outcome = pending.await;
            queued.pop_front();
            (outcome, read_at)
        }
        None => std::future::pending().await,
    }
}

impl Forwarder {
    /// Runs until `shutdown`, or until the poller is gone and everything it handed over is
    /// settled.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let device = self.tally.device.clone();
        loop {
            let room = self.queued.len() < MAX_QUEUED;
            let item = tokio::select! {
                (outcome, read_at) = oldest(&mut self.queued) => {
                    self.tally.settle(outcome, read_at);
                    continue;
                }
                item = next(&self.shared, &device), if room => match item {
                    Some(item) => item,
                    None => break,
                },
                () = shutdown.cancelled() => {
                        self.abandon();
                        return;
                    }
            };
            let read_at = item.read_at;
            let queue = self.ingest.enqueue_received(item.intake, item.received);
            tokio::pin!(queue);
            // Outcomes keep being collected while the pipeline's queue is full.
            let queued = loop {
                tokio::select! {
                    queued = &mut queue => break queued,
                    (outcome, read_at) = oldest(&mut self.queued) => {
                        self.tally.settle(outcome, read_at);
                    }
                    () = shutdown.cancelled() => {
                        self.abandon();
                        return;
                    }
                }
            };
            match queued {
                Ok(pending) => self.queued.push_back((pending, read_at)),
                Err(refused) => self.tally.settle(Err(refused), read_at),
            }
        }
        while !self.queued.is_empty() {
            tokio::select! {
                (outcome, read_at) = oldest(&mut self.queued) => self.tally.settle(outcome, read_at),
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// At shutdown: what was queued is the pipeline's to finish; what still waits is lost.
    fn abandon(&self) {
        let waiting = self.shared.lock().waiting.len();
        if waiting > 0 {
            tracing::warn!(
                device = %self.tally.device,
                waiting,
                "Stopping with readings that were never handed to the pipeline."
            );
        }
    }
}

/// What the forwarder remembers of outcomes, so that episodes are logged once.
struct Tally {
    device: String,
    /// Intakes the gateway has not accepted since it last accepted one (a full disk, say).
    not_stored: u64,
    /// Whether the last durable intake took longer than [`SLOW`] from poll to disk.
    slow: bool,
}

impl Tally {
    fn settle(&mut self, outcome: Result<Accepted, Refused>, read_at: Instant) {
        match outcome {
            Err(refused) => {
                crate::metrics::reading_not_stored(match refused {
                    Refused::Unavailable(_) => "unavailable",
                    Refused::Invalid(_) => "invalid",
                    Refused::Denied(_) => "denied",
                });
                if self.not_stored == 0 {
                    tracing::warn!(device = %self.device, reason = %refused, "The gateway did not accept a reading; further ones are counted until it accepts one again.");
                }
                self.not_stored += 1;
            }
            Ok(_) => {
                if self.not_stored > 0 {
                    tracing::info!(device = %self.device, not_stored = self.not_stored, "The gateway accepts readings again.");
                    self.not_stored = 0;
                }
                let took = read_at.elapsed();
                if took > SLOW && !self.slow {
                    tracing::warn!(
                        device = %self.device,
                        took = %humantime::format_duration(Duration::from_millis(took.as_millis() as u64)),
                        "Storing a reading took longer than 1s after it was read; polls keep their pace meanwhile."
                    );
                    self.slow = true;
                } else if took <= SLOW && self.slow {
                    tracing::info!(device = %self.device, "Readings are stored within 1s of being read again.");
                    self.slow = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokio::sync::mpsc;

    use super::*;
    use crate::message::{Point, Reading, Submission, Value};

    fn reading(n: u32) -> Intake {
        Intake::Telemetry(Reading {
            device: "fridge-01".into(),
            kind: "fridge".into(),
            device_ts: None,
            points: BTreeMap::from([(
                "n".to_owned(),
                Point::good(Value::Number(f64::from(n)), None),
            )]),
        })
    }

    fn number(intake: &Intake) -> u32 {
        match intake {
            Intake::Telemetry(r) => {
                r.points["n"].value.and_then(Value::as_f64).unwrap_or(-1.0) as u32
            }
            _ => u32::MAX,
        }
    }

    fn setup(
        capacity: usize,
    ) -> (
        Handover,
        mpsc::Receiver<Submission>,
        tokio::task::JoinHandle<()>,
    ) {
        let clock = crate::clock::TokioClock::new(time::OffsetDateTime::UNIX_EPOCH);
        let (ingest, rx) = Ingest::channel(capacity, clock);
        let (handover, forwarder) = pair("fridge-01", ingest);
        let task = tokio::spawn(forwarder.run(CancellationToken::new()));
        (handover, rx, task)
    }

    /// A pipeline that accepts every submission at once; returns what it took, in order.
    async fn accept_all(mut rx: mpsc::Receiver<Submission>) -> Vec<(u32, Received)> {
        let mut got = Vec::new();
        while let Some(s) = rx.recv().await {
            got.push((
                number(&s.intake),
                Received {
                    at: s.received_at,
                    clock_synced: s.clock_synced,
                },
            ));
            let _ = s.reply.send(Ok(Accepted {
                id: uuid::Uuid::nil(),
            }));
        }
        got
    }

    #[tokio::test(start_paused = true)]
    async fn readings_pushed_while_the_pipeline_is_stuck_all_arrive_in_order_with_their_read_time()
    {
        let (handover, rx, task) = setup(1);
        let start = Instant::now();
        for n in 0..20 {
            tokio::time::sleep_until(start + Duration::from_millis(500) * n).await;
            handover.push(reading(n));
            assert_eq!(
                start.elapsed(),
                Duration::from_millis(500) * n,
                "push never waits"
            );
        }
        // Nothing was taken by the pipeline in those 10 s; now it moves.
        drop(handover);
        let pipeline = tokio::spawn(accept_all(rx));
        task.await.unwrap();
        let got = pipeline.await.unwrap();
        assert_eq!(
            got.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            (0..20).collect::<Vec<_>>()
        );
        for (n, received) in &got {
            assert_eq!(
                received.at - time::OffsetDateTime::UNIX_EPOCH,
                Duration::from_millis(500) * *n,
                "stamped when read, not when queued"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_the_bound_the_oldest_waiting_readings_are_dropped_and_the_newest_kept() {
        let (handover, rx, task) = setup(1);
        let pushed = (MAX_WAITING + 50) as u32;
        for n in 0..pushed {
            handover.push(reading(n));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(handover);
        let pipeline = tokio::spawn(accept_all(rx));
        task.await.unwrap();
        let got: Vec<u32> = pipeline
            .await
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        // Reading 0 sits in the pipeline's queue (room for 1), reading 1 in the forwarder
        // waiting for room; the waiting queue holds the newest MAX_WAITING.
        let kept_from = pushed - MAX_WAITING as u32;
        let expected: Vec<u32> = [0, 1].into_iter().chain(kept_from..pushed).collect();
        assert_eq!(got, expected);
        assert_eq!(got.len(), MAX_WAITING + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_change_is_never_dropped_while_a_reading_waits() {
        let (handover, rx, task) = setup(1);
        handover.push(reading(0));
        handover.push(reading(1));
        tokio::task::yield_now().await;
        handover.push(Intake::Status {
            device: "fridge-01".into(),
            online: false,
            reason: "test".into(),
        });
        for n in 2..(MAX_WAITING as u32 + 100) {
            handover.push(reading(n));
        }
        drop(handover);
        let pipeline = tokio::spawn(accept_all(rx));
        task.await.unwrap();
        let got: Vec<u32> = pipeline
            .await
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert!(got.contains(&u32::MAX), "the status arrived: {got:?}");
        assert_eq!(got.len(), MAX_WAITING + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn refused_readings_are_counted_and_the_ones_after_them_still_go_through() {
        let (handover, mut rx, task) = setup(4);
        for n in 0..10 {
            handover.push(reading(n));
        }
        drop(handover);
        let mut seen = Vec::new();
        while let Some(s) = rx.recv().await {
            let n = number(&s.intake);
            seen.push(n);
            let outcome = if n < 5 {
                Err(Refused::Unavailable("the disk is full".into()))
            } else {
                Ok(Accepted {
                    id: uuid::Uuid::nil(),
                })
            };
            let _ = s.reply.send(outcome);
        }
        task.await.unwrap();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_max_queued_wait_in_the_pipeline_for_their_outcome() {
        // A pipeline that takes everything in but never answers.
        let (handover, mut rx, _task) = setup(1024);
        for n in 0..100 {
            handover.push(reading(n));
        }
        let mut taken = Vec::new();
        while let Ok(Some(s)) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            taken.push(s);
        }
        assert_eq!(taken.len(), MAX_QUEUED);
        // Answering one lets one more in.
        let s = taken.remove(0);
        let _ = s.reply.send(Ok(Accepted {
            id: uuid::Uuid::nil(),
        }));
        let next = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
        assert_eq!(
            next.ok().flatten().map(|s| number(&s.intake)),
            Some(MAX_QUEUED as u32)
        );
    }
}
