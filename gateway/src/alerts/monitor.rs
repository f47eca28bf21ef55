//! The alert task: turns the cold-chain task's [`Update`]s into alerts and stores them with the
//! excursion records, daily statistics and engine state they came with (one transaction each),
//! queues notifications durably, raises access and security flags, drives the GPIO outputs,
//! escalates alerts nobody acknowledges and records acknowledgements. It is the only writer of
//! alerts while the daemon runs; acknowledgements and flags reach it as [`Command`]s.
//!
//! [`Monitor`] is the two tasks together: the cold-chain task (`coldchain::monitor`) judges
//! readings, this one acts on what it finds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::history;
use super::notify::gpio::{Outputs, Signals};
use super::queue::{Channel, NotifyQueue};
use super::record::{Alert, AlertState, Event, Notification};
use crate::audit::{self, Kind, Record};
use crate::clock::SharedClock;
pub use crate::coldchain::monitor::Observation;
use crate::coldchain::monitor::{ColdChain, Update};
use crate::coldchain::{AlertKind, Change, Limits, Severity, State, history as coldchain_history};
use crate::devices::DeviceConfig;
use crate::error::{Error, Result};
use crate::store::Store;

/// Requests to the monitor.
#[derive(Debug)]
pub enum Command {
    Ack {
        id: Uuid,
        by: String,
        note: String,
        reply: oneshot::Sender<Result<Alert>>,
    },
    /// A channel delivered a notification about alert `id`.
    Delivered { id: Uuid, channel: Channel },
    /// An access or security flag (from the policy, or repeated refusals): an alert of its own,
    /// with nothing to clear, waiting for someone to review and acknowledge it.
    Flag {
        device: String,
        flag: String,
        severity: Severity,
        detail: serde_json::Value,
    },
}

/// How the rest of the gateway talks to the running monitor. Cheap to clone.
#[derive(Clone)]
pub struct AlertsHandle {
    commands: mpsc::Sender<Command>,
}

impl AlertsHandle {
    /// A handle and the receiving end, for tests of the components that talk to the monitor.
    #[cfg(test)]
    pub(crate) fn channel(capacity: usize) -> (AlertsHandle, mpsc::Receiver<Command>) {
        let (commands, rx) = mpsc::channel(capacity);
        (AlertsHandle { commands }, rx)
    }

    /// Acknowledges alert `id` on behalf of `by`, with the corrective action taken.
    pub async fn ack(&self, id: Uuid, by: String, note: String) -> Result<Alert> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Ack {
                id,
                by,
                note,
                reply,
            })
            .await
            .map_err(|_| Error::Invalid("the alert monitor has stopped".to_owned()))?;
        answer
            .await
            .map_err(|_| Error::Invalid("the alert monitor has stopped".to_owned()))?
    }

    /// Raises an access or security flag. Waits for room in the monitor's queue.
    pub async fn flag(
        &self,
        device: &str,
        flag: &str,
        severity: Severity,
        detail: serde_json::Value,
    ) {
        let _ = self
            .commands
            .send(Command::Flag {
                device: device.to_owned(),
                flag: flag.to_owned(),
                severity,
                detail,
            })
            .await;
    }

    /// Tells the monitor a channel delivered a notification (never blocks; best effort).
    pub fn delivered(&self, id: Uuid, channel: Channel) {
        let _ = self.commands.try_send(Command::Delivered { id, channel });
    }
}

/// Applies an acknowledgement to `alert`; pure.
pub fn acknowledge(alert: &mut Alert, by: &str, note: &str, now: OffsetDateTime) -> Result<()> {
    if by.trim().is_empty() || note.trim().is_empty() {
        return Err(Error::Invalid(
            "an acknowledgement needs who acknowledges and the corrective action taken (--note TEXT)".to_owned(),
        ));
    }
    if alert.acknowledged_at.is_some() {
        return Err(Error::Invalid(format!(
            "alert {} was already acknowledged by {}",
            alert.id,
            alert.acknowledged_by.as_deref().unwrap_or("someone")
        )));
    }
    alert.acknowledged_at = Some(now);
    alert.acknowledged_by = Some(by.trim().to_owned());
    alert.ack_note = Some(note.trim().to_owned());
    alert.state = if alert.active {
        AlertState::Acknowledged
    } else {
        AlertState::Resolved
    };
    Ok(())
}

/// Acknowledges an alert directly in the store, for the CLI when no daemon runs: the same change
/// and the same notifications as through the monitor.
pub fn acknowledge_in_store(
    store: &Store,
    queue: &NotifyQueue,
    clock: &SharedClock,
    id: Uuid,
    by: &str,
    note: &str,
) -> Result<Alert> {
    let now = clock.now();
    let alert = store.write(|txn| {
        let table = txn.open_table(history::ALERTS)?;
        let mut alert: Alert = crate::store::get_json(&table, "alerts", id.to_string().as_str())?
            .ok_or_else(|| {
            Error::NotFound(format!("no alert {id}; see `rxgate alerts list`"))
        })?;
        drop(table);
        acknowledge(&mut alert, by, note, now)?;
        history::save_alert(txn, &alert)?;
        record_ack(txn, &alert, now, clock.synced())?;
        queue.enqueue(
            txn,
            &notification(Event::Acknowledged, &alert, false, now, clock.synced()),
        )?;
        Ok(alert)
    })?;
    queue.wake();
    Ok(alert)
}

fn record_ack(
    txn: &redb::WriteTransaction,
    alert: &Alert,
    now: OffsetDateTime,
    synced: bool,
) -> Result<u64> {
    audit::append(
        txn,
        now,
        synced,
        Record::new(
            Kind::AlertAcknowledged,
            alert.acknowledged_by.clone().unwrap_or_default(),
        )
        .device(&alert.device)
        .detail(serde_json::json!({
            "alert": alert.id,
            "kind": alert.kind,
            "note": alert.ack_note,
        })),
    )
}

fn notification(
    event: Event,
    alert: &Alert,
    escalation: bool,
    at: OffsetDateTime,
    clock_synced: bool,
) -> Notification {
    Notification {
        event,
        alert: alert.clone(),
        escalation,
        at,
        clock_synced,
    }
}

/// The cold-chain task and the alert task, built together.
pub struct Monitor {
    coldchain: ColdChain,
    alerts: AlertTask,
}

impl Monitor {
    /// Loads what was persisted (engine states, open alerts) and sets the outputs accordingly,
    /// so an alarm sounding before a restart sounds again after it. `devices` with a cold-chain
    /// profile are monitored.
    pub fn build(
        site: &str,
        devices: &BTreeMap<String, DeviceConfig>,
        config: &super::AlertsConfig,
        store: Store,
        clock: SharedClock,
        queue: NotifyQueue,
        signals: Arc<dyn Signals>,
    ) -> Result<(Monitor, AlertsHandle, mpsc::Sender<Observation>)> {
        let (coldchain, observe_tx, updates) = ColdChain::build(devices, &store, clock.clone())?;
        let open = history::open_alerts(&store)?
            .into_iter()
            .map(|a| (a.id, a))
            .collect();
        let (command_tx, commands) = mpsc::channel(64);
        let alerts = AlertTask {
            store,
            clock,
            site: site.to_owned(),
            open,
            queue,
            signals,
            escalate_after: config.escalate_after,
            flag_digest_every: config.flag_digest_every,
            updates,
            commands,
        };
        alerts.drive_outputs();
        Ok((
            Monitor { coldchain, alerts },
            AlertsHandle {
                commands: command_tx,
            },
            observe_tx,
        ))
    }

    /// Devices under cold-chain monitoring.
    pub fn monitored(&self) -> Vec<String> {
        self.coldchain.monitored()
    }

    /// What the cold-chain task last saw of each fridge.
    pub fn fridges(&self) -> crate::coldchain::live::Live {
        self.coldchain.live()
    }

    /// Where min/max checks are recorded.
    pub fn checks(&self) -> crate::coldchain::monitor::CheckHandle {
        self.coldchain.checks()
    }

    /// Runs both tasks until `shutdown`; the alert task stores every update the cold-chain
    /// task sent before it stopped.
    pub async fn run(self, shutdown: CancellationToken) {
        tokio::join!(
            self.coldchain.run(shutdown.clone()),
            self.alerts.run(shutdown)
        );
    }
}

/// The running alert task.
struct AlertTask {
    store: Store,
    clock: SharedClock,
    site: String,
    /// Alerts not yet resolved, by id.
    open: HashMap<Uuid, Alert>,
    queue: NotifyQueue,
    signals: Arc<dyn Signals>,
    escalate_after: Duration,
    flag_digest_every: Duration,
    updates: mpsc::Receiver<Update>,
    commands: mpsc::Receiver<Command>,
}

impl AlertTask {
    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let wait = self.next_escalation().map(|deadline| {
                let left = (deadline - self.clock.now()).max(time::Duration::ZERO);
                Duration::try_from(left).unwrap_or(Duration::ZERO)
            });
            tokio::select! {
                _ = shutdown.cancelled() => break,
                update = self.updates.recv() => match update {
                    Some(update) => self.update(update),
                    None => break,
                },
                Some(command) = self.commands.recv() => self.command(command),
                _ = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600))), if wait.is_some() => self.escalate(self.clock.now()),
            }
        }
        // The cold-chain task sends what it still holds, then closes the channel.
        while let Some(update) = self.updates.recv().await {
            self.update(update);
        }
    }

    fn next_escalation(&self) -> Option<OffsetDateTime> {
        self.open
            .values()
            .filter(|a| matches!(a.state, AlertState::Raised | AlertState::Notified))
            .map(|a| a.raised_at + self.escalate_after)
            .min()
    }

    fn update(&mut self, update: Update) {
        match update {
            Update::Changed {
                device,
                at,
                limits,
                changes,
                state,
                check,
            } => self.apply(&device, changes, at, &limits, &state, check.map(|c| *c)),
            Update::Bucket { device, bucket } => {
                self.write(|txn| coldchain_history::save_bucket(txn, &device, &bucket));
            }
            Update::Flush { states, buckets } => {
                self.write(|txn| {
                    for (device, state) in &states {
                        coldchain_history::save_state(txn, device, state)?;
                        if let Some(day) = &state.day {
                            coldchain_history::save_day(txn, device, day)?;
                        }
                    }
                    for (device, bucket) in &buckets {
                        coldchain_history::save_bucket(txn, device, bucket)?;
                    }
                    Ok(())
                });
            }
        }
    }

    /// Turns engine changes into stored alerts and queued notifications, in one transaction
    /// with the engine's new state.
    fn apply(
        &mut self,
        device: &str,
        changes: Vec<Change>,
        now: OffsetDateTime,
        limits: &Limits,
        state: &State,
        check: Option<crate::coldchain::monitor::PendingCheck>,
    ) {
        let synced = self.clock.synced();
        let mut updated: Vec<Alert> = Vec::new();
        let mut notifications: Vec<Notification> = Vec::new();
        let mut excursions = Vec::new();
        let mut days = Vec::new();
        for change in changes {
            match change {
                Change::Raised {
                    kind,
                    severity,
                    started,
                    value,
                    limit,
                } => {
                    let alert = Alert {
                        id: crate::message::envelope::new_id(now),
                        site: self.site.clone(),
                        device: device.to_owned(),
                        kind,
                        severity,
                        state: AlertState::Raised,
                        active: true,
                        started,
                        ended: None,
                        raised_at: now,
                        value,
                        limit,
                        min: None,
                        max: None,
                        mkt: None,
                        low: Some(limits.low),
                        high: Some(limits.high),
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
                    tracing::warn!(alert = %alert.id, device, kind = kind.as_str(), severity = ?severity, "{}", alert.headline());
                    notifications.push(notification(Event::Raised, &alert, false, now, synced));
                    self.open.insert(alert.id, alert.clone());
                    updated.push(alert);
                }
                Change::Escalated { kind, value } => {
                    if let Some(alert) = self.active_mut(device, kind) {
                        alert.severity = Severity::Critical;
                        alert.value = Some(value);
                        alert.limit = if kind == AlertKind::TemperatureLow {
                            limits.critical_low
                        } else {
                            limits.critical_high
                        };
                        tracing::warn!(alert = %alert.id, device, "{}", alert.headline());
                        notifications.push(notification(
                            Event::Worsened,
                            alert,
                            false,
                            now,
                            synced,
                        ));
                        updated.push(alert.clone());
                    }
                }
                Change::Cleared {
                    kind,
                    ended,
                    excursion,
                } => {
                    if let Some(alert) = self.active_mut(device, kind) {
                        alert.active = false;
                        alert.ended = Some(ended);
                        if let Some(record) = &excursion {
                            alert.min = Some(record.min);
                            alert.max = Some(record.max);
                            alert.mkt = record.mkt;
                        }
                        if alert.acknowledged_at.is_some() {
                            alert.state = AlertState::Resolved;
                        }
                        tracing::info!(alert = %alert.id, device, kind = kind.as_str(), "Alert condition over.");
                        notifications.push(notification(Event::Cleared, alert, false, now, synced));
                        updated.push(alert.clone());
                    }
                    if let Some(record) = excursion {
                        excursions.push(record);
                    }
                }
                Change::DayClosed(day) => days.push(day),
                // Stored below, with who checked (`check`).
                Change::Checked(_) => {}
            }
        }
        let queue = self.queue.clone();
        let written = self.write(|txn| {
            for alert in &updated {
                history::save_alert(txn, alert)?;
            }
            for notification in &notifications {
                queue.enqueue(txn, notification)?;
            }
            for record in &excursions {
                coldchain_history::save_excursion(txn, device, record)?;
            }
            for day in &days {
                coldchain_history::save_day(txn, device, day)?;
            }
            if !days.is_empty() {
                coldchain_history::prune(txn, now)?;
            }
            if let Some(check) = &check {
                coldchain_history::save_check(txn, &check.record)?;
            }
            coldchain_history::save_state(txn, device, state)
        });
        if written {
            self.queue.wake();
        }
        if let Some(check) = check {
            let _ = check.reply.send(if written {
                Ok(check.record)
            } else {
                Err(Error::Invalid(
                    "the min/max check could not be stored; the gateway's log says why".to_owned(),
                ))
            });
        }
        self.open.retain(|_, a| a.state != AlertState::Resolved);
        self.drive_outputs();
    }

    fn active_mut(&mut self, device: &str, kind: AlertKind) -> Option<&mut Alert> {
        self.open
            .values_mut()
            .find(|a| a.device == device && a.kind == kind && a.active)
    }

    /// Notifies the escalation contacts of alerts nobody acknowledged in time.
    fn escalate(&mut self, now: OffsetDateTime) {
        let synced = self.clock.synced();
        let due: Vec<Uuid> = self
            .open
            .values()
            .filter(|a| {
                matches!(a.state, AlertState::Raised | AlertState::Notified)
                    && a.raised_at + self.escalate_after <= now
            })
            .map(|a| a.id)
            .collect();
        for id in due {
            let Some(alert) = self.open.get_mut(&id) else {
                continue;
            };
            alert.state = AlertState::Escalated;
            alert.escalated_at = Some(now);
            tracing::warn!(alert = %id, device = %alert.device, "Alert not acknowledged in time: escalated.");
            let snapshot = alert.clone();
            let queue = self.queue.clone();
            if self.write(|txn| {
                history::save_alert(txn, &snapshot)?;
                queue.enqueue(
                    txn,
                    &notification(Event::Escalated, &snapshot, true, now, synced),
                )
            }) {
                self.queue.wake();
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Ack {
                id,
                by,
                note,
                reply,
            } => {
                let _ = reply.send(self.ack(id, &by, &note));
            }
            Command::Flag {
                device,
                flag,
                severity,
                detail,
            } => self.raise_flag(&device, &flag, severity, detail),
            Command::Delivered { id, channel } => {
                let Some(alert) = self.open.get_mut(&id) else {
                    return;
                };
                let name = channel.as_str().to_owned();
                if alert.notified.contains(&name) && alert.state != AlertState::Raised {
                    return;
                }
                if !alert.notified.contains(&name) {
                    alert.notified.push(name);
                }
                if alert.state == AlertState::Raised {
                    alert.state = AlertState::Notified;
                }
                let snapshot = alert.clone();
                self.write(|txn| history::save_alert(txn, &snapshot));
            }
        }
    }

    fn raise_flag(
        &mut self,
        device: &str,
        flag: &str,
        severity: Severity,
        detail: serde_json::Value,
    ) {
        let now = self.clock.now();
        let synced = self.clock.synced();
        if self.fold_flag(device, flag, severity, &detail, now, synced) {
            return;
        }
        let alert = Alert {
            id: crate::message::envelope::new_id(now),
            site: self.site.clone(),
            device: device.to_owned(),
            kind: AlertKind::AccessFlag,
            severity,
            state: AlertState::Raised,
            active: false,
            started: now,
            ended: Some(now),
            raised_at: now,
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
            flag: Some(flag.to_owned()),
            detail: Some(detail),
            occurrences: 1,
            last_at: None,
            last_detail: None,
            digest_at: None,
            notified_occurrences: 1,
        };
        tracing::warn!(alert = %alert.id, device, flag, "{}", alert.headline());
        let queue = self.queue.clone();
        let written = self.write(|txn| {
            history::save_alert(txn, &alert)?;
            queue.enqueue(
                txn,
                &notification(Event::Raised, &alert, false, now, synced),
            )
        });
        if written {
            self.queue.wake();
        }
        self.open.insert(alert.id, alert);
        self.drive_outputs();
    }

    /// Folds a flag into the open alert of the same device and flag, if there is one: counts the
    /// occurrence and keeps the latest, and tells the channels only when the digest interval has
    /// passed since they last heard (or the flag came with a higher severity). Escalation stays
    /// as it was: once per alert. Returns whether it folded.
    fn fold_flag(
        &mut self,
        device: &str,
        flag: &str,
        severity: Severity,
        detail: &serde_json::Value,
        now: OffsetDateTime,
        synced: bool,
    ) -> bool {
        let Some(alert) = self.open.values_mut().find(|a| {
            a.kind == AlertKind::AccessFlag
                && a.device == device
                && a.flag.as_deref() == Some(flag)
                && matches!(
                    a.state,
                    AlertState::Raised | AlertState::Notified | AlertState::Escalated
                )
        }) else {
            return false;
        };
        alert.occurrences = alert.occurrences.saturating_add(1);
        alert.last_at = Some(now);
        alert.ended = Some(now);
        alert.last_detail = Some(detail.clone());
        let worse = severity > alert.severity;
        if worse {
            alert.severity = severity;
        }
        let last_told = alert.digest_at.unwrap_or(alert.raised_at);
        let digest_due = now - last_told >= self.flag_digest_every;
        let event = if worse {
            Some(Event::Worsened)
        } else if digest_due {
            Some(Event::Repeated)
        } else {
            None
        };
        if event.is_some() {
            alert.digest_at = Some(now);
            alert.notified_occurrences = alert.occurrences;
        }
        let snapshot = alert.clone();
        let queue = self.queue.clone();
        let written = self.write(|txn| {
            history::save_alert(txn, &snapshot)?;
            match event {
                Some(event) => {
                    queue.enqueue(txn, &notification(event, &snapshot, false, now, synced))
                }
                None => Ok(()),
            }
        });
        if written && event.is_some() {
            self.queue.wake();
        }
        tracing::debug!(
            alert = %snapshot.id,
            device,
            flag,
            occurrences = snapshot.occurrences,
            "Access flag folded into its open alert."
        );
        true
    }

    fn ack(&mut self, id: Uuid, by: &str, note: &str) -> Result<Alert> {
        let now = self.clock.now();
        let synced = self.clock.synced();
        let mut alert = match self.open.get(&id) {
            Some(alert) => alert.clone(),
            None => history::alert(&self.store, id)?.ok_or_else(|| {
                Error::NotFound(format!("no alert {id}; see `rxgate alerts list`"))
            })?,
        };
        acknowledge(&mut alert, by, note, now)?;
        let queue = self.queue.clone();
        crate::store::off_executor(|| {
            self.store.write(|txn| {
                history::save_alert(txn, &alert)?;
                record_ack(txn, &alert, now, synced)?;
                queue.enqueue(
                    txn,
                    &notification(Event::Acknowledged, &alert, false, now, synced),
                )
            })
        })?;
        self.queue.wake();
        tracing::info!(alert = %id, device = %alert.device, by, "Alert acknowledged.");
        if alert.state == AlertState::Resolved {
            self.open.remove(&id);
        } else {
            self.open.insert(id, alert.clone());
        }
        self.drive_outputs();
        Ok(alert)
    }

    /// Buzzer while an active alarm is unacknowledged; relay while a critical one is active;
    /// LED while any alert is unresolved.
    fn drive_outputs(&self) {
        let outputs = Outputs {
            buzzer: self
                .open
                .values()
                .any(|a| a.active && a.acknowledged_at.is_none() && a.kind.is_physical()),
            relay: self
                .open
                .values()
                .any(|a| a.active && a.severity == Severity::Critical),
            led: !self.open.is_empty(),
        };
        if let Err(e) = self.signals.set(outputs) {
            tracing::error!(error = %e, "Cannot drive the GPIO outputs.");
        }
    }

    /// Runs a store write; a failure is logged (the monitor keeps running on what it holds).
    /// Off the executor: a slow disk stalls the monitor, never the tasks beside it.
    fn write(&self, f: impl FnOnce(&redb::WriteTransaction) -> Result<()>) -> bool {
        match crate::store::off_executor(|| self.store.write(f)) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "Cannot write cold-chain records.");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests;
