//! The pipeline task: takes submissions, shapes them into cloud messages and appends them to the
//! outbox in groups, then tells each intake its outcome.
//!
//! Group commit: the first submission opens a batch; the batch closes when it holds `batch_max`
//! submissions or `batch_delay` has passed, and is written in one durable transaction. Under load
//! batches fill at once; a lone reading waits at most `batch_delay`. A batch is written while
//! the next one collects, one write at a time.
//!
//! Telemetry goes to the uplink as it arrives when the uplink can take it
//! ([`crate::uplink::live`]); a batch stores only what the cloud has not acknowledged when it is
//! due. A message the uplink cannot take yet is held back, and handed over later in its batch
//! once it can, behind the earlier ones of its stream.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::coldchain::monitor::Observation;
use crate::message::envelope::{
    self, EventBody, PointsForm, Stamp, StatusBody, Stream, TelemetryBody,
};
use crate::message::{Accepted, Intake, Refused, Submission};
use crate::outbox::{AppendError, Appended, NewRecord, Outbox, Priority};
use crate::policy::Flag;
use crate::policy::stage::{PolicyStage, Shaped};
use crate::uplink::live::{Live, LiveMessage, Sent};
use crate::watchdog::Progress;

/// The running pipeline.
pub struct Pipeline {
    rx: mpsc::Receiver<Submission>,
    outbox: Outbox,
    clock: crate::clock::SharedClock,
    policy: Option<PolicyStage>,
    refusals: Option<crate::audit::Refusals>,
    alerts: Option<crate::alerts::AlertsHandle>,
    local: Option<std::sync::Mutex<rumqttd::local::LinkTx>>,
    site: String,
    /// How telemetry points are written for the cloud (`[cloud].points`).
    points: PointsForm,
    batch_max: usize,
    batch_delay: Duration,
    /// Devices under cold-chain monitoring, and where their accepted readings go.
    monitor: Option<(HashSet<String>, mpsc::Sender<Observation>)>,
    /// Each batch's write, from waiting for the cloud's acknowledgements to every intake told,
    /// is one unit of work.
    progress: Progress,
    /// Where telemetry goes before it is stored, if the uplink takes it.
    live: Option<Live>,
    reserving: Arc<std::sync::Mutex<Reserving>>,
}

impl Pipeline {
    pub fn new(
        rx: mpsc::Receiver<Submission>,
        outbox: Outbox,
        clock: crate::clock::SharedClock,
        site: &str,
        batch_max: usize,
        batch_delay: Duration,
    ) -> Self {
        Pipeline {
            rx,
            outbox,
            clock,
            policy: None,
            refusals: None,
            alerts: None,
            local: None,
            site: site.to_owned(),
            points: PointsForm::default(),
            batch_max: batch_max.max(1),
            batch_delay,
            monitor: None,
            progress: Progress::untracked(),
            live: None,
            reserving: Arc::default(),
        }
    }

    /// Reports each batch to the watchdog: a batch whose write does not finish stops the
    /// service manager's heartbeat.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Writes telemetry points in `form` (the full form of v1 unless told otherwise).
    pub fn with_points_form(mut self, form: PointsForm) -> Self {
        self.points = form;
        self
    }

    /// Sends the accepted readings of `devices` to the cold-chain monitor. The channel is
    /// bounded: a slow monitor slows the pipeline rather than missing a reading.
    pub fn with_monitor(
        mut self,
        devices: HashSet<String>,
        observations: mpsc::Sender<Observation>,
    ) -> Self {
        self.monitor = Some((devices, observations));
        self
    }

    /// Evaluates every submission against a policy first; refusals are recorded through
    /// `refusals`, access flags raised through `alerts`, local routes published on `local`.
    pub fn with_policy(
        mut self,
        stage: PolicyStage,
        refusals: crate::audit::Refusals,
        alerts: crate::alerts::AlertsHandle,
        local: Option<rumqttd::local::LinkTx>,
    ) -> Self {
        self.policy = Some(stage);
        self.refusals = Some(refusals);
        self.alerts = Some(alerts);
        self.local = local.map(std::sync::Mutex::new);
        self
    }

    /// Hands telemetry to the uplink as it arrives, numbered from reserved blocks, and stores
    /// only what the cloud has not acknowledged by the time the batch is due.
    pub fn with_live(mut self, live: Live) -> Self {
        self.live = Some(live);
        self
    }

    /// Runs until `shutdown`; then takes what is already queued, so no intake waits forever.
    ///
    /// A batch is written while the next one collects: a submission never waits on the disk
    /// to be shaped, and telemetry reaches the uplink while the last batch syncs. At most one
    /// write runs at a time, in the order the batches closed.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut idle = Some(Committer {
            outbox: self.outbox.clone(),
            clock: self.clock.clone(),
            alerts: self.alerts.take(),
            local: self.local.take(),
            observations: self.monitor.as_ref().map(|(_, tx)| tx.clone()),
            failing: None,
            live: self.live.clone(),
            progress: self.progress.clone(),
        });
        let mut writing: Option<tokio::task::JoinHandle<Committer>> = None;
        // What the batch being written held back, while it is: see `Earlier`.
        let mut earlier: Option<Earlier> = None;
        loop {
            let first = tokio::select! {
                biased;
                first = self.rx.recv() => match first {
                    Some(first) => first,
                    None => break,
                },
                _ = shutdown.cancelled() => break,
            };
            let opened = tokio::time::Instant::now();
            let due = opened + self.batch_delay;
            // A batch with messages sent before they are stored gives the last part of the
            // delay to the cloud's acknowledgements: its collecting ends that much earlier, so
            // it is still written within `batch_delay`. One with none collects until it is due.
            let collect_until = due - self.batch_delay / 5;
            let mut batch = Batch {
                earlier: earlier.take(),
                ..Batch::default()
            };
            self.prepare(first, &mut batch);
            while batch.items.len() < self.batch_max {
                let until = match batch.sent.is_empty() {
                    true => due,
                    false => collect_until,
                };
                match tokio::time::timeout_at(until, self.rx.recv()).await {
                    Ok(Some(next)) => self.prepare(next, &mut batch),
                    Ok(None) | Err(_) => break,
                }
            }
            self.hand_over_held(&mut batch);
            let mut committer = free(&mut writing, &mut idle).await;
            let written = Arc::new(AtomicBool::new(false));
            earlier = Some(Earlier {
                session: batch.session,
                held: batch.held.keys().cloned().collect(),
                written: written.clone(),
            });
            let grace = (tokio::time::Instant::now() + self.batch_delay / 5).min(due);
            writing = Some(tokio::spawn(async move {
                committer.commit(batch, grace).await;
                written.store(true, Ordering::Release);
                committer
            }));
        }
        let mut committer = free(&mut writing, &mut idle).await;
        self.rx.close();
        let mut rest = Batch::default();
        while let Ok(next) = self.rx.try_recv() {
            self.prepare(next, &mut rest);
        }
        if !rest.items.is_empty() {
            committer.commit(rest, tokio::time::Instant::now()).await;
        }
        let reserving = lock(&self.reserving).task.take();
        if let Some(reserving) = reserving {
            let _ = reserving.await;
        }
    }

    /// Shapes one submission as it arrives and, if it is telemetry the uplink can take now,
    /// hands it over.
    fn prepare(&mut self, submission: Submission, batch: &mut Batch) {
        let device = submission.intake.device().to_owned();
        let shaped = match self.policy.as_mut() {
            Some(stage) => stage.apply(submission.intake, submission.received_at),
            None => {
                let observed = match &submission.intake {
                    Intake::Telemetry(reading) => Some(reading.clone()),
                    _ => None,
                };
                Shaped {
                    observed,
                    ..Shaped::passthrough(submission.intake)
                }
            }
        };
        // A refused submission has nothing appended to wait on: what follows from it happens
        // once per refusal.
        let depends = shaped.refused.is_none() && shaped.intake.is_some();
        let observed = match (&self.monitor, &shaped.observed) {
            (Some((devices, _)), Some(reading)) if devices.contains(&reading.device) => {
                Some(Observation {
                    device: reading.device.clone(),
                    at: submission.received_at,
                    points: reading.points.clone(),
                })
            }
            _ => None,
        };
        let flags = shaped
            .flags
            .iter()
            .map(|flag| (device.clone(), flag.clone(), shaped.decided_body.clone()))
            .collect();
        let item = |pending, audit| Prepared {
            reply: submission.reply,
            pending,
            depends,
            observed,
            flags,
            local: shaped.local,
            audit,
        };
        if let Some((refused, class)) = shaped.refused {
            if let Some(refusals) = &self.refusals {
                refusals.record(crate::audit::Refusal {
                    kind: crate::audit::Kind::PolicyDenied,
                    device: Some(device.clone()),
                    source: None,
                    class,
                    reason: refused.to_string(),
                    claimed_device: None,
                });
            }
            batch.items.push(item(Pending::Refused(refused), None));
            return;
        }
        let audit = shaped
            .audit
            .map(|(class, body)| (device.clone(), class, body));
        let mut live_topic = None;
        if let (
            Some(_),
            Some(Intake::Status {
                device,
                online: true,
                ..
            }),
        ) = (&self.live, &shaped.intake)
        {
            // Its telemetry will want numbers: the block comes with this status's write.
            self.outbox.want_numbers(&envelope::device_topic(
                &self.site,
                device,
                Stream::Telemetry,
            ));
        }
        let pending = match shaped.intake {
            Some(intake) => {
                let telemetry = matches!(intake, Intake::Telemetry(_));
                let (record, id) = shape(
                    &self.site,
                    self.points,
                    intake,
                    submission.received_at,
                    submission.clock_synced,
                    shaped.priority,
                    shaped.topic_suffix.as_deref(),
                );
                if telemetry && self.live.is_some() {
                    live_topic = Some(record.topic.clone());
                }
                Pending::Record {
                    record,
                    id,
                    sent: None,
                }
            }
            None => Pending::Accepted(envelope::new_id(submission.received_at)),
        };
        batch.items.push(item(pending, audit));
        if let Some(topic) = live_topic {
            // Those held back earlier go first, so a stream's numbers follow the order its
            // messages came in.
            self.hand_over_held(batch);
            let i = batch.items.len() - 1;
            if let Some(queue) = batch.held.get_mut(&topic) {
                queue.push(i);
            } else if !self.hand_over(batch, i) {
                batch.held.insert(topic, vec![i]);
            }
        }
    }

    /// Hands over what this batch held back (the uplink was behind, or had no room), stream by
    /// stream in the order it came in, as far as the uplink takes it now; the rest is stored
    /// with the batch.
    fn hand_over_held(&self, batch: &mut Batch) {
        if batch.held.is_empty()
            || self
                .live
                .as_ref()
                .is_none_or(|l| !l.has_room() || self.ready(l, batch).is_none())
        {
            return;
        }
        let mut held = std::mem::take(&mut batch.held);
        held.retain(|_, queue| {
            let handed = queue
                .iter()
                .take_while(|&&i| self.hand_over(batch, i))
                .count();
            queue.drain(..handed);
            !queue.is_empty()
        });
        batch.held = held;
    }

    /// The uplink connection to hand this batch's messages to now, if any: after a reconnect
    /// the rest of the batch is stored first, so nothing overtakes what the lost connection
    /// had.
    fn ready(&self, live: &Live, batch: &mut Batch) -> Option<u64> {
        if batch
            .earlier
            .as_ref()
            .is_some_and(|e| e.written.load(Ordering::Acquire))
        {
            batch.earlier = None;
        }
        let session = batch
            .session
            .or(batch.earlier.as_ref().and_then(|e| e.session));
        live.ready(self.outbox.appends())
            .filter(|s| session.is_none_or(|b| b == *s))
    }

    /// A stream has no numbers to send with (a new device, or a gateway just started): its
    /// block is committed now rather than with the batch, so its messages are held back for one
    /// sync and not for the whole batch. One such write at a time; after one fails, none for a
    /// second (the batch's own write asks again).
    fn reserve_soon(&self) {
        let mut reserving = lock(&self.reserving);
        let busy = reserving.task.as_ref().is_some_and(|t| !t.is_finished());
        let recently_failed = reserving
            .failed_at
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1));
        if busy || recently_failed || !self.outbox.wants_reservation() {
            return;
        }
        let (outbox, shared) = (self.outbox.clone(), self.reserving.clone());
        reserving.task = Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = outbox.reserve() {
                tracing::debug!(error = %e, "Cannot reserve stream numbers now; the batch's write asks again.");
                lock(&shared).failed_at = Some(std::time::Instant::now());
            }
        }));
    }

    /// Hands the batch's telemetry item `i` to the uplink if it can take it now, numbered from
    /// its stream's reserved block; returns whether it did. An item not handed over is stored
    /// if it is still not when the batch is due; one numbered already keeps its number and
    /// bytes, stored or handed over later.
    fn hand_over(&self, batch: &mut Batch, i: usize) -> bool {
        let Some(live) = &self.live else {
            return false;
        };
        // Nothing is numbered, rendered or copied for a message the uplink has no room for.
        let Some(session) = self.ready(live, batch).filter(|_| live.has_room()) else {
            return false;
        };
        let Pending::Record { record, sent, .. } = &mut batch.items[i].pending else {
            return false;
        };
        if batch
            .earlier
            .as_ref()
            .is_some_and(|e| e.held.contains(&record.topic))
        {
            return false;
        }
        // Numbered only when it can be handed over: a number taken and neither sent nor stored
        // would be a gap.
        let Some(seq) = record.seq.or_else(|| self.outbox.live_seq(&record.topic)) else {
            self.reserve_soon();
            return false;
        };
        let payload = std::mem::replace(&mut record.payload, Box::new(|_| Vec::new()))(seq);
        let keep = payload.clone();
        record.seq = Some(seq);
        record.payload = Box::new(move |_| keep);
        let handed = Arc::new(Sent::default());
        if !live.send(LiveMessage {
            topic: record.topic.clone(),
            payload,
            session,
            sent: handed.clone(),
        }) {
            return false;
        }
        batch.session = Some(session);
        batch.sent.push(handed.clone());
        *sent = Some(handed);
        true
    }
}

/// The committer, once the write in progress (if any) is done.
async fn free(
    writing: &mut Option<tokio::task::JoinHandle<Committer>>,
    idle: &mut Option<Committer>,
) -> Committer {
    match writing.take() {
        Some(write) => write.await.expect("the outbox write task panicked"),
        None => idle.take().expect("a committer is idle when none writes"),
    }
}

/// What writes batches: one at a time, in order.
struct Committer {
    outbox: Outbox,
    clock: crate::clock::SharedClock,
    alerts: Option<crate::alerts::AlertsHandle>,
    local: Option<std::sync::Mutex<rumqttd::local::LinkTx>>,
    observations: Option<mpsc::Sender<Observation>>,
    /// Why outbox writes fail (`disk_full`, `store`) while they do: an episode is logged when it
    /// starts and when it ends, not once per refused batch.
    failing: Option<&'static str>,
    live: Option<Live>,
    /// Each write, from waiting for the cloud's acknowledgements to every intake told, is one
    /// unit of work.
    progress: Progress,
}

impl Committer {
    /// Waits until `grace` for the cloud to acknowledge what the batch sent before it was
    /// stored, then writes the rest and tells every intake its outcome.
    async fn commit(&mut self, batch: Batch, grace: tokio::time::Instant) {
        let _work = self.progress.working();
        if let Some(live) = &self.live
            && !batch.sent.is_empty()
        {
            live.acked_by(&batch.sent, grace).await;
        }
        // Per item, what its outcome waits on: nothing, the cloud (which acknowledged it in
        // time, so it is not written), or record `i` of those appended.
        let mut records = Vec::with_capacity(batch.items.len());
        let mut deps = Vec::with_capacity(batch.items.len());
        let mut waiting = Vec::with_capacity(batch.items.len());
        let mut follows = Vec::with_capacity(batch.items.len());
        let mut audits = Vec::new();
        let mut in_cloud = 0u64;
        // Sent, not yet acknowledged, and so stored: (record, what the uplink knows of it).
        let mut sent_then_stored = Vec::new();
        for (i, item) in batch.items.into_iter().enumerate() {
            let (dep, outcome) = match item.pending {
                Pending::Refused(refused) => (Dep::None, Outcome::Refused(refused)),
                Pending::Accepted(id) => (Dep::None, Outcome::Accepted(id)),
                Pending::Record { sent, id, .. } if sent.as_ref().is_some_and(|s| s.acked()) => {
                    in_cloud += 1;
                    (Dep::Cloud, Outcome::Accepted(id))
                }
                Pending::Record { record, id, sent } => {
                    if let Some(sent) = sent {
                        sent_then_stored.push((records.len(), sent));
                    }
                    records.push(record);
                    (
                        Dep::Record(records.len() - 1),
                        Outcome::Record(records.len() - 1, id),
                    )
                }
            };
            // A refused or empty submission's consequences do not wait on a record.
            deps.push(if item.depends { dep } else { Dep::None });
            waiting.push((item.reply, outcome));
            if let Some(audit) = item.audit {
                audits.push((i, audit));
            }
            follows.push((item.observed, item.flags, item.local));
        }
        if in_cloud > 0 {
            crate::metrics::sent_before_stored(in_cloud);
        }
        let outbox = self.outbox.clone();
        let clock = self.clock.clone();
        // A batch with nothing to keep (all refused, say a flooding device held to its rate
        // limit, or all in the cloud already) costs no write transaction, and so no sync of the
        // SD card, unless a stream needs its next block of numbers.
        let nothing_to_write =
            records.is_empty() && audits.is_empty() && !outbox.wants_reservation();
        let submitted = records.len() as u64;
        let audit_deps = deps.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            if nothing_to_write {
                return Ok(Vec::new());
            }
            // Acknowledged by the cloud between the check above and the commit: the stored
            // copy counts as acknowledged from the moment it is appended.
            let mut late = Vec::new();
            let results = outbox.append_with(records, |txn, appended| {
                // Told before the commit, so the uplink never sends a stored copy whose live
                // one is in flight; a key of a transaction that does not commit is never used.
                for (i, sent) in &sent_then_stored {
                    if let Some(Ok(appended)) = appended.get(*i)
                        && sent.stored_as(appended.key)
                    {
                        late.push(appended.key);
                    }
                }
                for (i, (device, class, body)) in audits {
                    if !kept(appended, audit_deps[i]) {
                        continue;
                    }
                    let controlled = class == "controlled-substance";
                    crate::audit::append(
                        txn,
                        clock.now(),
                        clock.synced(),
                        crate::audit::Record::new(crate::audit::Kind::AccessEvent, device.clone())
                            .device(device)
                            .detail(serde_json::json!({
                                "class": class,
                                "controlled_substance": controlled,
                                "event": body,
                            })),
                    )?;
                }
                // Never read by the uplink: acknowledged before the append is seen.
                Ok(late.clone())
            })?;
            // Deleted once the record is fully acknowledged.
            if let Err(e) = outbox.ack(&late) {
                tracing::warn!(error = %e, "Cannot acknowledge stored copies the cloud has; they will be sent again.");
            }
            Ok(results)
        })
        .await;
        match outcome {
            Ok(Ok(results)) => {
                if !nothing_to_write && let Some(reason) = self.failing.take() {
                    tracing::info!(
                        was = reason,
                        "Outbox writes succeed again; new records are accepted."
                    );
                    crate::metrics::outbox_disk_full(false);
                }
                let full = results.iter().filter(|r| r.is_err()).count() as u64;
                if full > 0 {
                    crate::metrics::outbox_refused("full", full);
                }
                if let Some(monitor) = &self.observations {
                    for ((observed, _, _), dep) in follows.iter_mut().zip(&deps) {
                        if let Some(observation) = observed.take()
                            && kept(&results, *dep)
                        {
                            let _ = monitor.send(observation).await;
                        }
                    }
                }
                for (reply, outcome) in waiting {
                    let _ = reply.send(match outcome {
                        Outcome::Refused(refused) => Err(refused),
                        Outcome::Accepted(id) => Ok(Accepted { id }),
                        Outcome::Record(index, id) => match results.get(index) {
                            Some(Ok(_)) => Ok(Accepted { id }),
                            Some(Err(full)) => Err(Refused::Unavailable(full.to_string())),
                            None => Err(Refused::Unavailable("not written".to_owned())),
                        },
                    });
                }
                if let Some(alerts) = &self.alerts {
                    for ((_, flags, _), dep) in follows.iter_mut().zip(&deps) {
                        if !kept(&results, *dep) {
                            continue;
                        }
                        for (device, flag, body) in flags.drain(..) {
                            alerts
                                .flag(
                                    &device,
                                    &flag.name,
                                    flag.severity,
                                    serde_json::json!({ "rule": flag.rule, "event": body }),
                                )
                                .await;
                        }
                    }
                }
                if let Some(link) = &self.local {
                    let mut link = link.lock().unwrap_or_else(|e| e.into_inner());
                    for ((_, _, local), dep) in follows.into_iter().zip(&deps) {
                        if let Some((topic, payload)) = local
                            && kept(&results, *dep)
                        {
                            let _ = link.publish(topic, payload);
                        }
                    }
                }
            }
            Ok(Err(e)) => {
                let reason = match e {
                    crate::Error::DiskFull { .. } => "disk_full",
                    _ => "store",
                };
                crate::metrics::outbox_refused(reason, submitted);
                crate::metrics::outbox_disk_full(reason == "disk_full");
                if self.failing.replace(reason) != Some(reason) {
                    tracing::error!(error = %e, reason, "Outbox write failed; new records are refused (devices resend later) until writes succeed again.");
                } else {
                    tracing::debug!(error = %e, "Outbox write failed again.");
                }
                for (reply, _) in waiting {
                    let _ = reply.send(Err(Refused::Unavailable(format!(
                        "the outbox could not be written: {e}"
                    ))));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "Outbox write task failed.");
                for (reply, _) in waiting {
                    let _ = reply.send(Err(Refused::Unavailable("internal error".to_owned())));
                }
            }
        }
    }
}

/// Submissions shaped on arrival, waiting for their batch to be written.
#[derive(Default)]
struct Batch {
    items: Vec<Prepared>,
    /// What the uplink was handed, for the cloud's acknowledgements.
    sent: Vec<Arc<Sent>>,
    /// The uplink connection messages of this batch were handed to: after a reconnect the rest
    /// of the batch is stored first, so nothing overtakes what the lost connection had.
    session: Option<u64>,
    /// Per stream, the items of this batch not handed over yet, in the order they came in: a
    /// later message of the stream waits behind them.
    held: HashMap<String, Vec<usize>>,
    /// The batch before, while it is being written.
    earlier: Option<Earlier>,
}

/// Stream numbers reserved ahead of a batch's write.
#[derive(Default)]
struct Reserving {
    /// The write in progress or the last one; the pipeline waits for it before it ends, so no
    /// block is reserved after the clean stop wrote the streams' last numbers back.
    task: Option<tokio::task::JoinHandle<()>>,
    failed_at: Option<std::time::Instant>,
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the batch being written holds back from the one collecting. Its held-back messages
/// are numbered only when they are appended, and what it sent in a lost connection is stored
/// to be sent again: until its write is done, a stream it held back hands over nothing, and
/// nothing is handed to a connection other than the one it used, so no message overtakes one
/// of its stream stored earlier. After the write the outbox's append count does the same.
struct Earlier {
    session: Option<u64>,
    held: HashSet<String>,
    written: Arc<AtomicBool>,
}

/// One shaped submission.
struct Prepared {
    reply: tokio::sync::oneshot::Sender<Result<Accepted, Refused>>,
    pending: Pending,
    /// Whether what follows from it (its cold-chain observation, audit entry, flags and local
    /// copy) happens only once it is kept: an event the outbox refuses is resent by its device
    /// and must not be audited or flagged twice. `false` for one refused or accepted with
    /// nothing to write: then it follows once, now.
    depends: bool,
    observed: Option<Observation>,
    flags: Vec<(String, Flag, Json)>,
    local: Option<(String, Vec<u8>)>,
    /// (device, class, event) for the audit trail.
    audit: Option<(String, String, Json)>,
}

enum Pending {
    Refused(Refused),
    /// Accepted with nothing to write (deadband, routing).
    Accepted(uuid::Uuid),
    /// To be stored unless `sent` and acknowledged by the cloud when the batch is due.
    Record {
        record: NewRecord,
        id: uuid::Uuid,
        sent: Option<Arc<Sent>>,
    },
}

/// What a submission's consequences wait on.
#[derive(Debug, Clone, Copy)]
enum Dep {
    None,
    /// The cloud acknowledged it before the batch was due.
    Cloud,
    /// Record `.0` of those appended.
    Record(usize),
}

/// Whether a submission is kept: it waits on nothing, the cloud has it, or its record was
/// appended.
fn kept(results: &[Result<Appended, AppendError>], dep: Dep) -> bool {
    match dep {
        Dep::None | Dep::Cloud => true,
        Dep::Record(i) => matches!(results.get(i), Some(Ok(_))),
    }
}

/// An event as it left the policy.
type Json = serde_json::Map<String, serde_json::Value>;

/// What a submission comes to once the batch is written.
enum Outcome {
    Refused(Refused),
    /// Accepted with nothing to write (deadband, routing).
    Accepted(uuid::Uuid),
    /// Accepted if record `.0` of the batch is written.
    Record(usize, uuid::Uuid),
}

fn accepted_ms(at: time::OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// Turns an intake into its outbox record.
fn shape(
    site: &str,
    points: PointsForm,
    intake: Intake,
    received_at: time::OffsetDateTime,
    clock_synced: bool,
    priority: Option<Priority>,
    suffix: Option<&str>,
) -> (NewRecord, uuid::Uuid) {
    let (mut record, id) = shape_default(site, points, intake, received_at, clock_synced);
    if let Some(priority) = priority {
        record.priority = priority;
    }
    if let Some(suffix) = suffix.filter(|s| !s.is_empty()) {
        record.topic = format!("{}/{}", record.topic, suffix.trim_matches('/'));
    }
    (record, id)
}

fn shape_default(
    site: &str,
    form: PointsForm,
    intake: Intake,
    received_at: time::OffsetDateTime,
    clock_synced: bool,
) -> (NewRecord, uuid::Uuid) {
    let site = site.to_owned();
    match intake {
        Intake::Telemetry(reading) => {
            let stamp = Stamp::new(reading.device_ts, received_at, clock_synced);
            let id = stamp.id;
            let topic = envelope::device_topic(&site, &reading.device, Stream::Telemetry);
            let body = TelemetryBody {
                points: reading.points,
                form,
            };
            let device = reading.device;
            let record = NewRecord {
                priority: Priority::Normal,
                topic,
                retain: false,
                accepted_ms: accepted_ms(received_at),
                seq: None,
                payload: Box::new(move |seq| {
                    envelope::encode(&site, Some(&device), "telemetry", &stamp, seq, &body)
                }),
            };
            (record, id)
        }
        Intake::Event {
            device,
            device_ts,
            body,
            ..
        } => {
            let stamp = Stamp::new(device_ts, received_at, clock_synced);
            let id = stamp.id;
            let topic = envelope::device_topic(&site, &device, Stream::Events);
            let body = EventBody { event: body };
            let record = NewRecord {
                priority: Priority::High,
                topic,
                retain: false,
                accepted_ms: accepted_ms(received_at),
                seq: None,
                payload: Box::new(move |seq| {
                    envelope::encode(&site, Some(&device), "event", &stamp, seq, &body)
                }),
            };
            (record, id)
        }
        Intake::Status {
            device,
            online,
            reason,
        } => {
            let stamp = Stamp::new(None, received_at, clock_synced);
            let id = stamp.id;
            let topic = envelope::device_topic(&site, &device, Stream::Status);
            let body = StatusBody { online, reason };
            let record = NewRecord {
                priority: Priority::High,
                topic,
                retain: true,
                accepted_ms: accepted_ms(received_at),
                seq: None,
                payload: Box::new(move |seq| {
                    envelope::encode(&site, Some(&device), "status", &stamp, seq, &body)
                }),
            };
            (record, id)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::clock::ManualClock;
    use crate::message::{Ingest, Point, Reading, Value};
    use crate::store::Store;

    #[tokio::test]
    async fn submissions_are_durable_before_they_are_accepted_and_carry_the_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let outbox =
            Outbox::open(Store::create(&dir.path().join("s.redb")).unwrap(), u64::MAX).unwrap();
        let clock = ManualClock::new(time::macros::datetime!(2026-05-01 08:00 UTC), true);
        let (ingest, rx) = Ingest::channel(16, clock.clone());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(
            Pipeline::new(
                rx,
                outbox.clone(),
                clock.clone(),
                "store-1",
                8,
                Duration::from_millis(5),
            )
            .run(shutdown.clone()),
        );

        let mut points = BTreeMap::new();
        points.insert(
            "temperature_c".to_owned(),
            Point::good(Value::Number(4.5), Some("°C")),
        );
        let accepted = ingest
            .submit(Intake::Telemetry(Reading {
                device: "fridge-1".to_owned(),
                kind: "fridge".to_owned(),
                device_ts: None,
                points,
            }))
            .await
            .unwrap();

        let records = outbox.read_after(Priority::Normal as u8, None, 10).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0].topic,
            "rxgate/v1/store-1/devices/fridge-1/telemetry"
        );
        let message: serde_json::Value = serde_json::from_slice(&records[0].payload).unwrap();
        assert_eq!(message["id"], accepted.id.to_string());
        assert_eq!(message["seq"], 1);
        assert_eq!(message["type"], "telemetry");
        assert_eq!(message["device"], "fridge-1");
        assert_eq!(message["gateway_ts"], "2026-05-01T08:00:00Z");
        assert_eq!(message["clock_synced"], true);
        assert_eq!(message["device_ts"], serde_json::Value::Null);
        assert_eq!(message["points"]["temperature_c"]["value"], 4.5);
        assert_eq!(message["points"]["temperature_c"]["quality"], "good");
        assert_eq!(accepted.id.get_version_num(), 7);

        shutdown.cancel();
        task.await.unwrap();
    }

    fn reading(device: &str, t: f64) -> Intake {
        let mut points = BTreeMap::new();
        points.insert(
            "temperature_c".to_owned(),
            Point::good(Value::Number(t), Some("°C")),
        );
        Intake::Telemetry(Reading {
            device: device.to_owned(),
            kind: "fridge".to_owned(),
            device_ts: None,
            points,
        })
    }

    /// A pipeline handing telemetry to `live`, with a long batch delay: what reaches the uplink
    /// at once is visibly ahead of its batch.
    fn live_pipeline(
        outbox: &Outbox,
        live: crate::uplink::live::Live,
    ) -> (Ingest, CancellationToken) {
        live_pipeline_every(outbox, live, Duration::from_millis(300))
    }

    fn live_pipeline_every(
        outbox: &Outbox,
        live: crate::uplink::live::Live,
        batch_delay: Duration,
    ) -> (Ingest, CancellationToken) {
        let clock = ManualClock::new(time::macros::datetime!(2026-05-01 08:00 UTC), true);
        let (ingest, rx) = Ingest::channel(64, clock.clone());
        let shutdown = CancellationToken::new();
        tokio::spawn(
            Pipeline::new(rx, outbox.clone(), clock, "s", 64, batch_delay)
                .with_live(live)
                .run(shutdown.clone()),
        );
        (ingest, shutdown)
    }

    fn seq_and_id(payload: &[u8]) -> (u64, String) {
        let m: serde_json::Value = serde_json::from_slice(payload).unwrap();
        (
            m["seq"].as_u64().unwrap(),
            m["id"].as_str().unwrap().to_owned(),
        )
    }

    #[tokio::test]
    async fn telemetry_the_cloud_acknowledges_before_its_batch_is_due_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let outbox =
            Outbox::open(Store::create(&dir.path().join("s.redb")).unwrap(), u64::MAX).unwrap();
        let (live, mut uplink) = crate::uplink::live::channel(16);
        // A batch collects for 0.8 s: time enough to commit a block of numbers.
        let (ingest, shutdown) = live_pipeline_every(&outbox, live, Duration::from_secs(1));

        // Connected, but the stream has no numbers reserved yet: the reading is held back, the
        // stream gets its block at once, and the reading goes over by the end of its batch. The
        // cloud does not acknowledge it in time: it is stored as it was sent.
        uplink.open(1);
        uplink.caught_up(outbox.appends());
        let first = ingest.submit(reading("fridge-1", 4.0)).await.unwrap();
        let stored = outbox.read_after(Priority::Normal as u8, None, 10).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(seq_and_id(&stored[0].payload), (1, first.id.to_string()));
        let sent_first = tokio::time::timeout(Duration::from_secs(10), uplink.recv(1))
            .await
            .expect("handed over once its stream had numbers")
            .unwrap();
        assert_eq!(sent_first.payload, stored[0].payload);

        // The uplink sent it and is caught up: the next readings go over at once and the cloud
        // takes them.
        uplink.caught_up(outbox.appends());
        let submitting = {
            let ingest = ingest.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..5 {
                    ids.push(
                        ingest
                            .submit(reading("fridge-1", 4.1 + f64::from(i)))
                            .await
                            .unwrap()
                            .id,
                    );
                }
                ids
            })
        };
        let mut sent = Vec::new();
        while sent.len() < 5 {
            let message = tokio::time::timeout(Duration::from_secs(10), uplink.recv(1))
                .await
                .expect("handed over at once")
                .unwrap();
            assert_eq!(message.topic, "rxgate/v1/s/devices/fridge-1/telemetry");
            uplink.acked(&message.sent);
            uplink.tell_acked();
            sent.push(seq_and_id(&message.payload));
        }
        let ids = submitting.await.unwrap();
        assert_eq!(
            sent,
            (2..7)
                .zip(ids.iter().map(|id| id.to_string()))
                .collect::<Vec<_>>(),
            "numbered on from the stored one, in the order they came, with the ids the devices were told"
        );
        assert_eq!(
            outbox
                .read_after(Priority::Normal as u8, None, 10)
                .unwrap()
                .len(),
            1,
            "nothing more was written"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn telemetry_not_acknowledged_when_its_batch_is_due_is_stored_as_it_was_sent() {
        let dir = tempfile::tempdir().unwrap();
        let outbox =
            Outbox::open(Store::create(&dir.path().join("s.redb")).unwrap(), u64::MAX).unwrap();
        outbox.live_seq("rxgate/v1/s/devices/fridge-1/telemetry");
        outbox.reserve().unwrap();
        let (live, mut uplink) = crate::uplink::live::channel(16);
        uplink.open(7);
        uplink.caught_up(outbox.appends());
        let (ingest, shutdown) = live_pipeline(&outbox, live);
        let accepted = ingest.submit(reading("fridge-1", 4.0));
        let handed = tokio::time::timeout(Duration::from_secs(10), uplink.recv(7));
        let (accepted, message) = tokio::join!(accepted, handed);
        let message = message.expect("handed over at once");
        let (accepted, message) = (accepted.unwrap(), message.unwrap());
        assert!(!message.sent.acked());
        let stored = outbox.read_after(Priority::Normal as u8, None, 10).unwrap();
        assert_eq!(stored.len(), 1, "stored once its batch was due");
        assert_eq!(
            stored[0].payload, message.payload,
            "the same bytes, number and id"
        );
        assert_eq!(seq_and_id(&stored[0].payload), (1, accepted.id.to_string()));

        // The uplink lost its connection: nothing goes over, and the next reading is stored
        // with the next number.
        uplink.close();
        ingest.submit(reading("fridge-1", 4.2)).await.unwrap();
        let stored = outbox.read_after(Priority::Normal as u8, None, 10).unwrap();
        assert_eq!(seq_and_id(&stored[1].payload).0, 2);
        shutdown.cancel();
    }

    /// An outbox whose streams for `devices` have numbers reserved, so their telemetry can be
    /// sent before it is stored.
    fn outbox_reserved_for(dir: &std::path::Path, devices: &[&str]) -> Outbox {
        let outbox = Outbox::open(Store::create(&dir.join("s.redb")).unwrap(), u64::MAX).unwrap();
        for device in devices {
            assert_eq!(outbox.live_seq(&telemetry_topic(device)), None);
        }
        outbox.reserve().unwrap();
        outbox
    }

    fn telemetry_topic(device: &str) -> String {
        format!("rxgate/v1/s/devices/{device}/telemetry")
    }

    async fn handed(uplink: &mut crate::uplink::live::LiveReceiver, session: u64) -> LiveMessage {
        tokio::time::timeout(Duration::from_secs(10), uplink.recv(session))
            .await
            .expect("handed over")
            .unwrap()
    }

    async fn nothing_handed(uplink: &mut crate::uplink::live::LiveReceiver, session: u64) {
        if let Ok(message) =
            tokio::time::timeout(Duration::from_millis(100), uplink.recv(session)).await
        {
            panic!("handed over: {message:?}");
        }
    }

    #[tokio::test]
    async fn telemetry_held_back_while_the_uplink_is_behind_goes_over_in_order_once_it_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = outbox_reserved_for(dir.path(), &["fridge-1"]);
        let (live, mut uplink) = crate::uplink::live::channel(16);
        uplink.open(3);
        uplink.behind();
        let (ingest, shutdown) = live_pipeline_every(&outbox, live, Duration::from_secs(2));
        let submit = |t: f64| {
            let ingest = ingest.clone();
            tokio::spawn(async move { ingest.submit(reading("fridge-1", t)).await.unwrap().id })
        };
        let first = submit(4.0);
        nothing_handed(&mut uplink, 3).await;

        // Caught up well before the batch is due: the held reading goes first, then the new one.
        uplink.caught_up(outbox.appends());
        let second = submit(4.1);
        let (a, b) = (handed(&mut uplink, 3).await, handed(&mut uplink, 3).await);
        uplink.acked(&a.sent);
        uplink.acked(&b.sent);
        uplink.tell_acked();
        let (first, second) = (first.await.unwrap(), second.await.unwrap());
        assert_eq!(
            [seq_and_id(&a.payload), seq_and_id(&b.payload)],
            [(1, first.to_string()), (2, second.to_string())],
            "in the order they came, numbered from the stream's block"
        );
        assert!(
            outbox
                .read_after(Priority::Normal as u8, None, 10)
                .unwrap()
                .is_empty(),
            "the cloud had both when the batch was due: nothing written"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_device_coming_online_gets_numbers_with_its_status_and_its_first_reading_goes_over_at_once()
     {
        let dir = tempfile::tempdir().unwrap();
        let outbox =
            Outbox::open(Store::create(&dir.path().join("s.redb")).unwrap(), u64::MAX).unwrap();
        let (live, mut uplink) = crate::uplink::live::channel(16);
        uplink.open(1);
        let (ingest, shutdown) = live_pipeline(&outbox, live);
        ingest
            .submit(Intake::Status {
                device: "fridge-1".to_owned(),
                online: true,
                reason: "connected".to_owned(),
            })
            .await
            .unwrap();
        assert_eq!(
            outbox.live_seq(&telemetry_topic("fridge-1")),
            Some(1),
            "the status's write reserved its telemetry's numbers"
        );
        // The uplink sent the status.
        uplink.caught_up(outbox.appends());
        let submitted = {
            let ingest = ingest.clone();
            tokio::spawn(async move { ingest.submit(reading("fridge-1", 4.0)).await.unwrap().id })
        };
        let message = handed(&mut uplink, 1).await;
        uplink.acked(&message.sent);
        uplink.tell_acked();
        let id = submitted.await.unwrap();
        assert_eq!(seq_and_id(&message.payload), (2, id.to_string()));
        assert_eq!(
            outbox
                .read_after(Priority::Normal as u8, None, 10)
                .unwrap()
                .iter()
                .filter(|m| m.topic.ends_with("/telemetry"))
                .count(),
            0,
            "the reading was never written"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn while_a_batch_is_written_the_next_hands_over_all_but_the_streams_it_stored_unsent() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = outbox_reserved_for(dir.path(), &["fridge-1", "fridge-2"]);
        let (live, mut uplink) = crate::uplink::live::channel(16);
        uplink.open(1);
        uplink.caught_up(outbox.appends());
        // Batches collect for 3.2 s and then wait up to 0.8 s for the cloud.
        let batch_delay = Duration::from_secs(4);
        let (ingest, shutdown) = live_pipeline_every(&outbox, live, batch_delay);
        let submit = |device: &'static str, t: f64| {
            let ingest = ingest.clone();
            tokio::spawn(async move { ingest.submit(reading(device, t)).await.unwrap().id })
        };
        let opened = tokio::time::Instant::now();

        // Batch one: fridge-1's reading goes over and is never acknowledged; fridge-2's comes
        // while the uplink is behind, and is held back to the end.
        let t1 = submit("fridge-1", 4.0);
        let live_t1 = handed(&mut uplink, 1).await;
        uplink.behind();
        let u1 = submit("fridge-2", 5.0);
        nothing_handed(&mut uplink, 1).await;

        // Batch one stopped collecting and waits for the cloud's acknowledgement; batch two
        // collects meanwhile. Its fridge-1 reading goes over at once; its fridge-2 reading
        // waits: batch one's is not stored yet, and will get its number when it is.
        tokio::time::sleep_until(opened + batch_delay * 17 / 20).await;
        uplink.caught_up(outbox.appends());
        let t2 = submit("fridge-1", 4.1);
        let live_t2 = handed(&mut uplink, 1).await;
        assert!(
            opened.elapsed() < batch_delay,
            "handed over while batch one waited; the test ran late ({:?})",
            opened.elapsed()
        );
        uplink.acked(&live_t2.sent);
        uplink.tell_acked();
        let u2 = submit("fridge-2", 5.1);
        nothing_handed(&mut uplink, 1).await;

        // Batch one is written: both its readings, as they were numbered.
        let (t1, u1) = (t1.await.unwrap(), u1.await.unwrap());
        let stored: Vec<_> = outbox
            .read_after(Priority::Normal as u8, None, 10)
            .unwrap()
            .iter()
            .map(|m| (m.topic.clone(), seq_and_id(&m.payload)))
            .collect();
        assert_eq!(
            stored,
            [
                (telemetry_topic("fridge-1"), (1, t1.to_string())),
                (telemetry_topic("fridge-2"), (1, u1.to_string())),
            ]
        );
        assert_eq!(
            live_t1.payload,
            outbox.read_after(Priority::Normal as u8, None, 1).unwrap()[0].payload
        );

        // The uplink reads them; then fridge-2's held reading goes over, after its stored one.
        uplink.caught_up(outbox.appends());
        let t3 = submit("fridge-1", 4.2);
        let (live_u2, live_t3) = (handed(&mut uplink, 1).await, handed(&mut uplink, 1).await);
        uplink.acked(&live_u2.sent);
        uplink.acked(&live_t3.sent);
        uplink.tell_acked();
        let (t2, u2, t3) = (t2.await.unwrap(), u2.await.unwrap(), t3.await.unwrap());
        assert_eq!(seq_and_id(&live_t2.payload), (2, t2.to_string()));
        assert_eq!(live_u2.topic, telemetry_topic("fridge-2"));
        assert_eq!(seq_and_id(&live_u2.payload), (2, u2.to_string()));
        assert_eq!(seq_and_id(&live_t3.payload), (3, t3.to_string()));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_as_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(Store::create(&dir.path().join("s.redb")).unwrap(), 10).unwrap();
        let clock = ManualClock::new(time::macros::datetime!(2026-05-01 08:00 UTC), true);
        let (ingest, rx) = Ingest::channel(16, clock.clone());
        let shutdown = CancellationToken::new();
        tokio::spawn(
            Pipeline::new(rx, outbox, clock.clone(), "s", 8, Duration::from_millis(1))
                .run(shutdown.clone()),
        );
        let status = |online| Intake::Status {
            device: "d".to_owned(),
            online,
            reason: "test".to_owned(),
        };
        assert!(ingest.submit(status(true)).await.is_ok());
        assert!(matches!(
            ingest.submit(status(false)).await,
            Err(Refused::Unavailable(_))
        ));
        shutdown.cancel();
    }

    fn morphine_override() -> Intake {
        let body = serde_json::json!({
            "type": "access", "action": "override", "user": "nurse-7", "drawer": "A3",
            "ndc": "0409-1234-01", "item": "Morphine 10mg", "schedule": "CII", "quantity": 1,
            "patient_id": "MRN-0012345", "auth": "badge", "ts": "2026-05-01T02:00:00Z",
        });
        let serde_json::Value::Object(body) = body else {
            unreachable!()
        };
        Intake::Event {
            device: "cabinet-01".to_owned(),
            kind: "cabinet".to_owned(),
            device_ts: None,
            body,
        }
    }

    #[tokio::test]
    async fn an_event_the_full_outbox_refused_is_audited_and_flagged_only_once_it_is_appended() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s.redb")).unwrap();
        // Room for one record: the first status fills the outbox.
        let outbox = Outbox::open(store.clone(), 10).unwrap();
        let clock = ManualClock::new(time::macros::datetime!(2026-05-01 02:00 UTC), true);
        let (ingest, rx) = Ingest::channel(16, clock.clone());
        let handle = crate::policy::stage::PolicyHandle::load(None).unwrap();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7; 32]);
        let (refusals, _log) = crate::audit::RefusalLog::new(store.clone(), clock.clone());
        let (alerts, mut flags) = crate::alerts::AlertsHandle::channel(64);
        let shutdown = CancellationToken::new();
        tokio::spawn(
            Pipeline::new(
                rx,
                outbox.clone(),
                clock.clone(),
                "s",
                8,
                Duration::from_millis(1),
            )
            .with_policy(PolicyStage::new(handle, key), refusals, alerts, None)
            .run(shutdown.clone()),
        );
        let status = Intake::Status {
            device: "cabinet-01".to_owned(),
            online: true,
            reason: "test".to_owned(),
        };
        assert!(ingest.submit(status).await.is_ok());
        let access_entries = || {
            crate::audit::entries(&store, 1, 1000)
                .unwrap()
                .into_iter()
                .filter(|e| e.kind == crate::audit::Kind::AccessEvent)
                .count()
        };
        for resend in 0..3 {
            let outcome = ingest.submit(morphine_override()).await;
            assert!(
                matches!(outcome, Err(Refused::Unavailable(_))),
                "resend {resend}: {outcome:?}"
            );
        }
        assert_eq!(
            access_entries(),
            0,
            "nothing was appended, so nothing is audited"
        );
        assert!(flags.try_recv().is_err(), "nor flagged");

        // The cloud takes the status: there is room again, and the resend is kept, once.
        let first = outbox.read_after(Priority::High as u8, None, 1).unwrap();
        outbox.ack(&[first[0].key]).unwrap();
        assert!(ingest.submit(morphine_override()).await.is_ok());
        assert_eq!(access_entries(), 1, "audited once, when it was appended");
        assert!(
            flags.try_recv().is_ok(),
            "the default policy flags a CII override without a witness"
        );
        shutdown.cancel();
    }
}
