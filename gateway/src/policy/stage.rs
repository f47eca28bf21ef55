//! The policy stage of the pipeline: evaluates each submission against the running policy and
//! applies what the decision leaves to its caller — per-device rate limits (token buckets),
//! telemetry deadbands, routing and priority — and maps transformed telemetry back onto points.
//!
//! The policy itself is swapped atomically on reload ([`PolicyHandle`]); a policy that does not
//! load is refused with its errors and the running one stays.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ring::hmac;
use serde_json::{Map, Value as Json};
use time::OffsetDateTime;

use crate::message::{Intake, Point, Reading, Refused, Value};
use crate::outbox::Priority;
use crate::policy::{
    self as policy, Context, Decision, Event, Flag, Policy, PolicyErrors, Stream, Verdict,
};

/// The running policy, shared with whatever reloads it.
#[derive(Clone)]
pub struct PolicyHandle {
    current: Arc<RwLock<Arc<Policy>>>,
    path: Option<PathBuf>,
    last_error: Arc<RwLock<Option<String>>>,
}

impl PolicyHandle {
    /// The policy in `path`, or the built-in default policy when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<PolicyHandle, PolicyErrors> {
        let policy = match path {
            Some(path) => Policy::load(path)?,
            None => Policy::builtin(),
        };
        Ok(PolicyHandle {
            current: Arc::new(RwLock::new(Arc::new(policy))),
            path: path.map(Path::to_owned),
            last_error: Arc::new(RwLock::new(None)),
        })
    }

    pub fn current(&self) -> Arc<Policy> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Why the last reload was refused, if it was.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the policy file again. On error the running policy stays and the error is kept.
    pub fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        match Policy::load(path) {
            Ok(policy) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
                *self.last_error.write().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(())
            }
            Err(errors) => {
                let text = errors.to_string();
                *self.last_error.write().unwrap_or_else(|e| e.into_inner()) = Some(text.clone());
                Err(text)
            }
        }
    }
}

/// Reloads the policy on SIGHUP (`hangup`) and when its file changes (checked every two
/// seconds), until `shutdown`. A policy that does not load is refused, logged with every error,
/// and the running one stays. Each outcome is recorded in the audit trail. On the built-in
/// policy there is nothing to reload: a SIGHUP is logged and changes nothing.
pub async fn watch(
    handle: PolicyHandle,
    mut hangup: Option<tokio::signal::unix::Signal>,
    store: crate::store::Store,
    clock: crate::clock::SharedClock,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let Some(path) = handle.path().map(Path::to_owned) else {
        let Some(signal) = hangup.as_mut() else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                received = signal.recv() => {
                    if received.is_none() {
                        return;
                    }
                    tracing::info!(
                        "SIGHUP: no [gateway].policy_file is set, so the built-in policy stays."
                    );
                }
            }
        }
    };
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    let mut poll = tokio::time::interval(std::time::Duration::from_secs(2));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = async {
                match hangup.as_mut() {
                    Some(signal) => { signal.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => "SIGHUP",
            _ = poll.tick() => {
                let now = modified(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                "file changed"
            }
        };
        // Reading and compiling the file, and recording the outcome, happen off the executor.
        let reloading = handle.clone();
        let outcome = tokio::task::spawn_blocking(move || reloading.reload())
            .await
            .unwrap_or_else(|e| Err(format!("the reload task failed: {e}")));
        match &outcome {
            Ok(()) => tracing::info!(policy = %path.display(), trigger, "Policy reloaded."),
            Err(errors) => tracing::error!(
                policy = %path.display(),
                trigger,
                "Policy reload refused; the running policy stays:\n{errors}"
            ),
        }
        let record = crate::audit::Record::new(crate::audit::Kind::PolicyReloaded, "gateway")
            .detail(serde_json::json!({
                "file": path.display().to_string(),
                "trigger": trigger,
                "accepted": outcome.is_ok(),
                "errors": outcome.err(),
            }));
        let now = clock.now();
        let synced = clock.synced();
        let store = store.clone();
        let written = tokio::task::spawn_blocking(move || {
            store.write(|txn| crate::audit::append(txn, now, synced, record).map(drop))
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "Cannot record the policy reload."),
            Err(e) => tracing::error!(error = %e, "Cannot record the policy reload."),
        }
    }
}

/// What the stage makes of a submission.
pub struct Shaped {
    /// What to write to the outbox; `None` when nothing goes to the cloud (deadband, routing,
    /// refused).
    pub intake: Option<Intake>,
    pub priority: Option<Priority>,
    pub topic_suffix: Option<String>,
    /// Refused: the reason for the device, and the class for metrics and the audit trail.
    pub refused: Option<(Refused, &'static str)>,
    /// Audit class and the event as it left the policy.
    pub audit: Option<(String, Map<String, Json>)>,
    pub flags: Vec<Flag>,
    /// The event as it left the policy, for flags.
    pub decided_body: Map<String, Json>,
    /// Telemetry as the cold chain should see it (transformed, never thinned).
    pub observed: Option<Reading>,
    /// A copy for the local broker (topic, payload).
    pub local: Option<(String, Vec<u8>)>,
}

struct Bucket {
    tokens: f64,
    at: OffsetDateTime,
}

/// The stage's state: token buckets and deadband memories.
pub struct PolicyStage {
    handle: PolicyHandle,
    key: hmac::Key,
    buckets: HashMap<(String, String), Bucket>,
    /// (device, point) → last forwarded value and when.
    forwarded: HashMap<(String, String), (f64, OffsetDateTime)>,
}

impl PolicyStage {
    pub fn new(handle: PolicyHandle, key: hmac::Key) -> Self {
        PolicyStage {
            handle,
            key,
            buckets: HashMap::new(),
            forwarded: HashMap::new(),
        }
    }

    /// Evaluates `intake` at `now`.
    pub fn apply(&mut self, intake: Intake, now: OffsetDateTime) -> Shaped {
        let policy = self.handle.current();
        let ctx = Context {
            now,
            pseudonym_key: &self.key,
        };
        match intake {
            Intake::Status { .. } => Shaped::forward(intake),
            Intake::Telemetry(reading)
                if policy.allows_untouched(&reading.device, &reading.kind, Stream::Telemetry) =>
            {
                untouched(reading)
            }
            Intake::Telemetry(reading) => self.telemetry(&policy, reading, now),
            Intake::Event {
                device,
                kind,
                device_ts,
                body,
            } => {
                let event = Event {
                    device: &device,
                    kind: &kind,
                    stream: Stream::Events,
                    body: &body,
                };
                let decision = policy.evaluate(&event, &ctx);
                let mut shaped = self.common(&decision, &device, now);
                // An event over its rate limit is not acknowledged: the device keeps it and
                // resends later (an access record is never dropped to slow a device down).
                if let Some((Refused::Denied(reason), "rate_limited")) = &shaped.refused {
                    shaped.refused = Some((
                        Refused::Unavailable(format!("{reason}; resend it later")),
                        "rate_limited",
                    ));
                }
                if decision.verdict.is_allow()
                    && let Some(class) = &decision.audit
                {
                    shaped.audit = Some((class.clone(), decision.body.clone()));
                }
                if let Some(topic) = &decision.local_topic {
                    shaped.local = Some((
                        topic.replace("{device}", &device),
                        serde_json::to_vec(&decision.body).unwrap_or_default(),
                    ));
                }
                if shaped.refused.is_none() && decision.route_cloud {
                    shaped.intake = Some(Intake::Event {
                        device,
                        kind,
                        device_ts,
                        body: decision.body.clone(),
                    });
                }
                shaped
            }
        }
    }

    /// A reading through the full evaluation.
    fn telemetry(
        &mut self,
        policy: &policy::Policy,
        reading: Reading,
        now: OffsetDateTime,
    ) -> Shaped {
        let ctx = &Context {
            now,
            pseudonym_key: &self.key,
        };
        let body = policy::telemetry_body(&reading.points);
        let event = Event {
            device: &reading.device,
            kind: &reading.kind,
            stream: Stream::Telemetry,
            body: &body,
        };
        let decision = policy.evaluate(&event, ctx);
        let transformed = decision.telemetry_points(&reading.points);
        // A rule that drops or redacts every point leaves nothing for the cloud, so
        // the message is dropped (counted), never sent as it came. A redacted point
        // carries nothing; one that came without a value still carries its quality.
        // The cold chain still sees the reading: a privacy rule must not blind a
        // fridge's alarms.
        let all_dropped = transformed.iter().all(|(name, point)| {
            point.value.is_none() && reading.points.get(name).is_none_or(|p| p.value.is_some())
        });
        let mut shaped = self.common(&decision, &reading.device, now);
        shaped.observed = Some(if decision.verdict.is_allow() && !all_dropped {
            Reading {
                points: transformed.clone(),
                ..reading.clone()
            }
        } else {
            reading.clone()
        });
        if shaped.refused.is_none() && decision.route_cloud && all_dropped {
            crate::metrics::dropped("all_points_dropped");
        }
        if shaped.refused.is_none()
            && decision.route_cloud
            && !all_dropped
            && self.passes_deadband(&decision, &reading.device, &transformed, now)
        {
            shaped.intake = Some(Intake::Telemetry(Reading {
                points: transformed,
                ..reading
            }));
        }
        shaped
    }

    /// Verdict, rate limit, priority, routing and flags: the same for every stream.
    fn common(&mut self, decision: &Decision, device: &str, now: OffsetDateTime) -> Shaped {
        let mut shaped = Shaped::forward_nothing();
        shaped.priority = decision.priority;
        shaped.topic_suffix = decision.cloud_topic_suffix.clone();
        shaped.decided_body = decision.body.clone();
        shaped.flags = decision.alerts.clone();
        shaped.refused = match &decision.verdict {
            Verdict::Allow => None,
            Verdict::Deny { .. } => Some((
                Refused::Denied(decision.verdict.reason().unwrap_or_default()),
                "policy_denied",
            )),
            Verdict::Invalid { .. } => Some((
                Refused::Invalid(decision.verdict.reason().unwrap_or_default()),
                "invalid_event",
            )),
        };
        if shaped.refused.is_none()
            && let Some(limit) = &decision.rate_limit
        {
            let bucket = self
                .buckets
                .entry((device.to_owned(), limit.rule.clone()))
                .or_insert(Bucket {
                    tokens: f64::from(limit.burst),
                    at: now,
                });
            let elapsed = (now - bucket.at).as_seconds_f64().max(0.0);
            bucket.tokens =
                (bucket.tokens + elapsed * limit.per_second).min(f64::from(limit.burst.max(1)));
            bucket.at = now;
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
            } else {
                shaped.refused = Some((
                    Refused::Denied(format!(
                        "rate limit of rule {:?}: {} messages a second, bursts of {}",
                        limit.rule, limit.per_second, limit.burst
                    )),
                    "rate_limited",
                ));
            }
        }
        if self.buckets.len() > 10_000 {
            self.buckets
                .retain(|_, b| (now - b.at).whole_seconds() < 3600);
        }
        shaped
    }

    /// Whether a reading moved enough (or waited long enough) to go to the cloud. Without a
    /// deadband, always.
    fn passes_deadband(
        &mut self,
        decision: &Decision,
        device: &str,
        points: &BTreeMap<String, Point>,
        now: OffsetDateTime,
    ) -> bool {
        if decision.deadbands.is_empty() {
            return true;
        }
        let mut forward = false;
        for band in &decision.deadbands {
            let Some(value) = points
                .get(&band.point)
                .and_then(|p| p.value)
                .and_then(Value::as_f64)
            else {
                forward = true;
                continue;
            };
            match self.forwarded.get(&(device.to_owned(), band.point.clone())) {
                Some((last, at))
                    if (value - last).abs() <= band.delta && now - *at < band.max_interval => {}
                _ => forward = true,
            }
        }
        // Points without a deadband of their own always count as change.
        let banded: Vec<&str> = decision
            .deadbands
            .iter()
            .map(|b| b.point.as_str())
            .collect();
        if points.keys().any(|name| !banded.contains(&name.as_str())) {
            forward = true;
        }
        if forward {
            for band in &decision.deadbands {
                if let Some(value) = points
                    .get(&band.point)
                    .and_then(|p| p.value)
                    .and_then(Value::as_f64)
                {
                    self.forwarded
                        .insert((device.to_owned(), band.point.clone()), (value, now));
                }
            }
        }
        forward
    }
}

/// What the full evaluation makes of a reading no rule selects under a default of allow,
/// without building its body: a value that is not a finite number becomes absent (a JSON body
/// cannot carry it), and a reading left with no value it had goes nowhere but the cold chain.
fn untouched(reading: Reading) -> Shaped {
    let lost = |p: &Point| matches!(p.value, Some(Value::Number(n)) if !n.is_finite());
    let mut shaped = Shaped::forward_nothing();
    if reading.points.values().all(lost) {
        crate::metrics::dropped("all_points_dropped");
        shaped.observed = Some(reading);
        return shaped;
    }
    let mut reading = reading;
    for point in reading.points.values_mut() {
        if lost(point) {
            point.value = None;
        }
    }
    shaped.observed = Some(reading.clone());
    shaped.intake = Some(Intake::Telemetry(reading));
    shaped
}

impl Shaped {
    fn forward_nothing() -> Shaped {
        Shaped {
            intake: None,
            priority: None,
            topic_suffix: None,
            refused: None,
            audit: None,
            flags: Vec::new(),
            decided_body: Map::new(),
            observed: None,
            local: None,
        }
    }

    /// No policy: forward as it came.
    pub fn passthrough(intake: Intake) -> Shaped {
        Shaped::forward(intake)
    }

    fn forward(intake: Intake) -> Shaped {
        Shaped {
            intake: Some(intake),
            ..Shaped::forward_nothing()
        }
    }
}

#[cfg(test)]
mod tests;
