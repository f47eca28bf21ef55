//! The cold-chain task: readings in, alert changes out.
//!
//! It steps each monitored device's engine on the readings the pipeline accepted
//! ([`Observation`]) and at the engine's deadlines, keeps the five-minute buckets of the
//! temperature history, and sends what must be kept as [`Update`]s on a bounded channel to the
//! alert task (`alerts::monitor`). It writes nothing itself: the alert task stores each update
//! in one transaction with the alerts it raises, so an engine state is never durable without
//! its alert, and updates are stored in the order they were made.
//!
//! Min/max checks reach it through a [`CheckHandle`]: the check resets state the task holds, so
//! only the task can make it; the reply comes once the alert task has stored the record with
//! the reset state.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::history::{self, Bucket, CheckRecord};
use super::{Change, Input, Limits, State};
use crate::clock::SharedClock;
use crate::devices::DeviceConfig;
use crate::error::{Error, Result};
use crate::message::{Point, Quality, Value};
use crate::store::Store;

/// How often buckets, engine states and the day's statistics are written even without news.
const FLUSH_EVERY: Duration = Duration::from_secs(60);
/// Readings waiting for the task, at most (the pipeline waits beyond it).
pub const OBSERVATIONS_QUEUE: usize = 1024;
/// Updates waiting for the alert task, at most (the cold-chain task waits beyond it).
pub const UPDATES_QUEUE: usize = 256;
/// Min/max checks waiting for the task, at most (the console waits beyond it).
const CHECKS_QUEUE: usize = 16;
/// The longest the task sleeps without looking at the clock, so a wall clock that jumps (NTP
/// catching up after a power cut) moves deadlines hours away within this much.
const LOOK_AT_THE_CLOCK: Duration = Duration::from_secs(60);

/// A min/max check to record.
#[derive(Debug)]
pub struct CheckRequest {
    pub device: String,
    pub by: String,
    pub note: String,
    pub audit_seq: Option<u64>,
    pub reply: oneshot::Sender<Result<CheckRecord>>,
}

/// A check made, on its way to the store: the alert task replies once it is stored.
#[derive(Debug)]
pub struct PendingCheck {
    pub record: CheckRecord,
    pub reply: oneshot::Sender<Result<CheckRecord>>,
}

/// How the rest of the gateway records min/max checks with the running task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CheckHandle(mpsc::Sender<CheckRequest>);

impl CheckHandle {
    /// Records the check of `device` by `by`: the extremes since the last check are reported
    /// and reset. Waits until it is stored.
    pub async fn check(
        &self,
        device: &str,
        by: &str,
        note: &str,
        audit_seq: Option<u64>,
    ) -> Result<CheckRecord> {
        let stopped = || Error::Invalid("the cold-chain monitor has stopped".to_owned());
        let (reply, answer) = oneshot::channel();
        self.0
            .send(CheckRequest {
                device: device.to_owned(),
                by: by.to_owned(),
                note: note.to_owned(),
                audit_seq,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// A telemetry reading accepted by the pipeline.
#[derive(Debug, Clone)]
pub struct Observation {
    pub device: String,
    pub at: OffsetDateTime,
    pub points: BTreeMap<String, Point>,
}

/// What the cold-chain task hands the alert task to act on and store.
#[derive(Debug)]
pub enum Update {
    /// A device's engine changed: alerts to raise, worsen or clear, an excursion record or a
    /// closed day; stored with the engine's new `state`.
    Changed {
        device: String,
        at: OffsetDateTime,
        limits: Box<Limits>,
        changes: Vec<Change>,
        state: Box<State>,
        /// A min/max check that made the change, stored with it.
        check: Option<Box<PendingCheck>>,
    },
    /// A five-minute bucket of the temperature history is complete.
    Bucket { device: String, bucket: Bucket },
    /// Every engine state and bucket in progress, written periodically and at shutdown.
    Flush {
        states: Vec<(String, State)>,
        buckets: Vec<(String, Bucket)>,
    },
}

/// The running cold-chain task.
pub struct ColdChain {
    clock: SharedClock,
    limits: HashMap<String, Limits>,
    states: HashMap<String, State>,
    buckets: HashMap<String, Bucket>,
    observations: mpsc::Receiver<Observation>,
    updates: mpsc::Sender<Update>,
    live: super::live::Live,
    checks: mpsc::Receiver<CheckRequest>,
    check_handle: CheckHandle,
}

impl ColdChain {
    /// Judges the devices of `devices` that have a cold-chain profile, from the engine states
    /// persisted in `store`. Returns the task, where readings go, and where its updates come out.
    pub fn build(
        devices: &BTreeMap<String, DeviceConfig>,
        store: &Store,
        clock: SharedClock,
    ) -> Result<(ColdChain, mpsc::Sender<Observation>, mpsc::Receiver<Update>)> {
        let limits: HashMap<String, Limits> = devices
            .iter()
            .filter_map(|(id, device)| Limits::of(device).map(|l| (id.clone(), l)))
            .collect();
        let states: HashMap<String, State> = history::states(store)?
            .into_iter()
            .filter(|(device, _)| limits.contains_key(device))
            .collect();
        let live = super::live::Live::new(
            limits
                .iter()
                .map(|(device, l)| (device, l, states.get(device))),
        );
        let (observe_tx, observations) = mpsc::channel(OBSERVATIONS_QUEUE);
        let (updates, updates_rx) = mpsc::channel(UPDATES_QUEUE);
        let (check_tx, checks) = mpsc::channel(CHECKS_QUEUE);
        Ok((
            ColdChain {
                clock,
                limits,
                states,
                buckets: HashMap::new(),
                observations,
                updates,
                live,
                checks,
                check_handle: CheckHandle(check_tx),
            },
            observe_tx,
            updates_rx,
        ))
    }

    /// Devices under cold-chain monitoring.
    pub fn monitored(&self) -> Vec<String> {
        self.limits.keys().cloned().collect()
    }

    /// Where min/max checks are recorded.
    pub fn checks(&self) -> CheckHandle {
        self.check_handle.clone()
    }

    /// What the task last saw of each fridge, kept current while it runs.
    pub fn live(&self) -> super::live::Live {
        self.live.clone()
    }

    /// Runs until `shutdown`, then judges the readings already queued, sends a last flush and
    /// closes its updates channel.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        flush.tick().await;
        loop {
            let wait = self.next_deadline().map(|deadline| {
                let left = (deadline - self.clock.now()).max(time::Duration::ZERO);
                Duration::try_from(left)
                    .unwrap_or(Duration::ZERO)
                    .min(LOOK_AT_THE_CLOCK)
            });
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(observation) = self.observations.recv() => self.observe(observation).await,
                Some(request) = self.checks.recv() => self.check(request).await,
                _ = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600))), if wait.is_some() => self.tick().await,
                _ = flush.tick() => self.flush().await,
            }
        }
        while let Ok(observation) = self.observations.try_recv() {
            self.observe(observation).await;
        }
        self.flush().await;
    }

    fn next_deadline(&self) -> Option<OffsetDateTime> {
        self.states
            .iter()
            .filter_map(|(device, state)| super::next_deadline(state, self.limits.get(device)?))
            .min()
    }

    async fn send(&self, update: Update) {
        if self.updates.send(update).await.is_err() {
            tracing::error!("The alert task has stopped: a cold-chain update is not stored.");
        }
    }

    async fn observe(&mut self, observation: Observation) {
        let Some(limits) = self.limits.get(&observation.device).cloned() else {
            return;
        };
        let good = |name: &str| {
            observation
                .points
                .get(name)
                .filter(|p| p.quality == Quality::Good)
                .and_then(|p| p.value)
        };
        let temperature = match good(&limits.point) {
            Some(Value::Number(t)) => Some(t),
            _ => None,
        };
        let door_open = match good(&limits.door_point) {
            Some(Value::Bool(open)) => Some(open),
            Some(Value::Number(n)) => Some(n != 0.0),
            None => None,
        };
        if let Some(t) = temperature
            .filter(|t| t.is_finite() && (limits.probe_min..=limits.probe_max).contains(t))
        {
            self.live.reading(&observation.device, t, observation.at);
            let start = history::bucket_start(observation.at);
            match self.buckets.get_mut(&observation.device) {
                Some(bucket) if bucket.start == start => bucket.add(t),
                _ => {
                    if let Some(done) = self
                        .buckets
                        .insert(observation.device.clone(), Bucket::new(start, t))
                    {
                        self.send(Update::Bucket {
                            device: observation.device.clone(),
                            bucket: done,
                        })
                        .await;
                    }
                }
            }
        }
        self.step(
            &observation.device,
            Input::Reading {
                temperature,
                door_open,
            },
            observation.at,
            &limits,
        )
        .await;
    }

    async fn tick(&mut self) {
        let now = self.clock.now();
        let due: Vec<(String, Limits)> = self
            .states
            .iter()
            .filter_map(|(device, state)| {
                let limits = self.limits.get(device)?;
                super::next_deadline(state, limits)
                    .filter(|d| *d <= now)
                    .map(|_| (device.clone(), limits.clone()))
            })
            .collect();
        for (device, limits) in due {
            self.step(&device, Input::Tick, now, &limits).await;
        }
    }

    async fn step(&mut self, device: &str, input: Input, now: OffsetDateTime, limits: &Limits) {
        let state = self.states.remove(device).unwrap_or_default();
        let (state, changes) = super::step(state, input, now, limits);
        self.live.step(device, limits, &state);
        self.states.insert(device.to_owned(), state.clone());
        if !changes.is_empty() {
            self.send(Update::Changed {
                device: device.to_owned(),
                at: now,
                limits: Box::new(limits.clone()),
                changes,
                state: Box::new(state),
                check: None,
            })
            .await;
        }
    }

    async fn check(&mut self, request: CheckRequest) {
        let Some(limits) = self.limits.get(&request.device).cloned() else {
            let _ = request.reply.send(Err(Error::NotFound(format!(
                "{:?} is not a monitored fridge (no cold-chain `profile` under [devices.{}])",
                request.device, request.device
            ))));
            return;
        };
        let now = self.clock.now();
        let state = self.states.remove(&request.device).unwrap_or_default();
        let (state, changes) = super::step(state, Input::Check, now, &limits);
        self.live.step(&request.device, &limits, &state);
        self.states.insert(request.device.clone(), state.clone());
        let values = changes.iter().find_map(|c| match c {
            Change::Checked(values) => Some(*values),
            _ => None,
        });
        let Some(values) = values else {
            let _ = request
                .reply
                .send(Err(Error::Invalid("the check changed nothing".to_owned())));
            return;
        };
        let record = CheckRecord {
            device: request.device.clone(),
            at: now,
            by: request.by,
            values,
            note: request.note,
            audit_seq: request.audit_seq,
        };
        tracing::info!(device = %record.device, by = %record.by, "Min/max check recorded.");
        self.send(Update::Changed {
            device: request.device,
            at: now,
            limits: Box::new(limits),
            changes,
            state: Box::new(state),
            check: Some(Box::new(PendingCheck {
                record,
                reply: request.reply,
            })),
        })
        .await;
    }

    async fn flush(&mut self) {
        self.send(Update::Flush {
            states: self
                .states
                .iter()
                .map(|(d, s)| (d.clone(), s.clone()))
                .collect(),
            buckets: self.buckets.iter().map(|(d, b)| (d.clone(), *b)).collect(),
        })
        .await;
    }
}
