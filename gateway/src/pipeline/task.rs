//! The pipeline task: takes submissions, shapes them into cloud messages and appends them to the
//! outbox in groups, then tells each intake its outcome.
//!
//! Group commit: the first submission opens a batch; the batch closes when it holds `batch_max`
//! submissions or `batch_delay` has passed, and is written in one durable transaction. Under load
//! batches fill at once; a lone reading waits at most `batch_delay`.

use std::collections::HashSet;
use std::sync::Arc;
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
    /// Each batch, from its first submission to every intake told, is one unit of work.
    progress: Progress,
    /// Why outbox writes fail (`disk_full`, `store`) while they do: an episode is logged when it
    /// starts and when it ends, not once per refused batch.
    failing: Option<&'static str>,
    /// Where telemetry goes before it is stored, if the uplink takes it.
    live: Option<Live>,
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
            failing: None,
            live: None,
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
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let first = tokio::select! {
                biased;
                first = self.rx.recv() => match first {
                    Some(first) => first,
                    None => break,
                },
                _ = shutdown.cancelled() => break,
            };
            let _work = self.progress.working();
            let opened = tokio::time::Instant::now();
            let due = opened + self.batch_delay;
            // Messages sent before they are stored get the last part of the delay for the
            // cloud's acknowledgement: collecting ends that much earlier, so a batch is still
            // written within `batch_delay`.
            let collect_until = due - self.batch_delay / 5;
            let mut batch = Batch::default();
            self.prepare(first, &mut batch);
            while batch.items.len() < self.batch_max {
                match tokio::time::timeout_at(collect_until, self.rx.recv()).await {
                    Ok(Some(next)) => self.prepare(next, &mut batch),
                    Ok(None) | Err(_) => break,
                }
            }
            if let Some(live) = &self.live
                && !batch.sent.is_empty()
            {
                let grace = (tokio::time::Instant::now() + self.batch_delay / 5).min(due);
                live.acked_by(&batch.sent, grace).await;
            }
            self.commit(batch).await;
        }
        self.rx.close();
        let mut rest = Batch::default();
        while let Ok(next) = self.rx.try_recv() {
            self.prepare(next, &mut rest);
        }
        if !rest.items.is_empty() {
            self.commit(rest).await;
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
                let (record, sent) = match telemetry {
                    true => self.send_live(record, batch),
                    false => (record, None),
                };
                Pending::Record { record, id, sent }
            }
            None => Pending::Accepted(envelope::new_id(submission.received_at)),
        };
        let audit = shaped
            .audit
            .map(|(class, body)| (device.clone(), class, body));
        batch.items.push(item(pending, audit));
    }

    /// Hands `record` to the uplink if it can take it now, numbered from its stream's reserved
    /// block; returns the record to store if the cloud has not acknowledged it when the batch
    /// is due, numbered and rendered as sent. A stream one of whose messages in this batch was
    /// not handed over hands over no later one: its numbers follow the order messages came in.
    fn send_live(&self, record: NewRecord, batch: &mut Batch) -> (NewRecord, Option<Arc<Sent>>) {
        let Some(live) = &self.live else {
            return (record, None);
        };
        if batch.held.contains(&record.topic) {
            return (record, None);
        }
        let session = live
            .ready(self.outbox.appends())
            .filter(|s| batch.session.is_none_or(|b| b == *s));
        // Numbered only when it is handed over: a number taken and not sent would be a gap.
        let numbered = session.and_then(|s| Some((s, self.outbox.live_seq(&record.topic)?)));
        let Some((session, seq)) = numbered else {
            batch.held.insert(record.topic.clone());
            return (record, None);
        };
        batch.session = Some(session);
        let payload = (record.payload)(seq);
        let sent = Arc::new(Sent::default());
        let handed = live.send(LiveMessage {
            topic: record.topic.clone(),
            payload: payload.clone(),
            session,
            sent: sent.clone(),
        });
        let numbered = NewRecord {
            seq: Some(seq),
            payload: Box::new(move |_| payload),
            ..record
        };
        if !handed {
            batch.held.insert(numbered.topic.clone());
            return (numbered, None);
        }
        batch.sent.push(sent.clone());
        (numbered, Some(sent))
    }

    async fn commit(&mut self, batch: Batch) {
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
            // copy is acknowledged at once.
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
                Ok(())
            })?;
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
                if let Some((_, monitor)) = &self.monitor {
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
    /// Streams with a message in this batch that was not handed over.
    held: HashSet<String>,
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
        let clock = ManualClock::new(time::macros::datetime!(2026-05-01 08:00 UTC), true);
        let (ingest, rx) = Ingest::channel(64, clock.clone());
        let shutdown = CancellationToken::new();
        tokio::spawn(
            Pipeline::new(
                rx,
                outbox.clone(),
                clock,
                "s",
                64,
                Duration::from_millis(300),
            )
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
        let (ingest, shutdown) = live_pipeline(&outbox, live);

        // Connected, but the stream has no numbers reserved yet: stored first, and the stream
        // gets its block in the same commit.
        uplink.open(1);
        uplink.caught_up(outbox.appends());
        let first = ingest.submit(reading("fridge-1", 4.0)).await.unwrap();
        let stored = outbox.read_after(Priority::Normal as u8, None, 10).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(seq_and_id(&stored[0].payload), (1, first.id.to_string()));

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
