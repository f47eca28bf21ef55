//! Recording refusals without letting a misbehaving device flood the store.
//!
//! Listeners report each refusal (a bad certificate, a topic outside the device's namespace, a
//! malformed payload) through [`Refusals::record`], which never blocks. [`RefusalLog`] writes them
//! to the audit trail once a second, folding identical refusals (same kind, device, source and
//! reason class) into one entry with a `count`: a device sending 5 000 bad messages a second costs
//! one audit entry a second, not 5 000 fsyncs.
//!
//! A refusal that keeps coming back (a fridge retrying with an expired certificate every few
//! seconds for months, a device held to its rate limit all day) would still cost an entry a
//! second, years of them on a Pi's SD card. So after [`LOUD_AFTER`] entries of one kind within
//! [`SUMMARY_EVERY`], the rest of that window is held and written as one summary entry when it
//! ends (`count`, `summary: true`, `first_at`). A refusal that never stops costs about 11 entries an
//! hour; the first of each window is still written within a second, and nothing is uncounted.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Kind, Record};
use crate::clock::SharedClock;
use crate::store::Store;

const FLUSH_EVERY: Duration = Duration::from_secs(1);
const QUEUE: usize = 4096;
/// Refused connections from one source within [`REPEAT_WINDOW`] that raise a flag.
pub const REPEAT_THRESHOLD: u32 = 10;
pub const REPEAT_WINDOW: Duration = Duration::from_secs(300);
/// Entries one kind of refusal (kind, device, source, class) gets within [`SUMMARY_EVERY`] before
/// the rest of the window is summarised.
pub const LOUD_AFTER: u32 = 10;
pub const SUMMARY_EVERY: Duration = Duration::from_secs(3600);
/// Kinds of refusal followed for summaries at once; beyond it refusals are folded per second only.
const TRACKED: usize = 4096;

/// One refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: Kind,
    pub device: Option<String>,
    pub source: Option<IpAddr>,
    /// Short, stable reason class: also the metric label (`topic_denied`, `bad_payload`, ...).
    pub class: &'static str,
    /// The full reason, for people.
    pub reason: String,
    /// A device id the request named but did not prove (EST `simpleenroll` refused before its
    /// token was accepted), recorded in the detail as `claimed_device`. Such a refusal, like any
    /// `enroll.refused` without a `device`, has the actor `unauthenticated`: a stranger's
    /// requests are never blamed on a real device.
    pub claimed_device: Option<String>,
}

/// Where listeners report refusals. Cheap to clone.
#[derive(Clone)]
pub struct Refusals {
    tx: mpsc::Sender<Refusal>,
}

impl Refusals {
    /// Counts the refusal in the metrics and queues it for the audit trail. If the queue is full
    /// (a flood), the refusal is only counted.
    pub fn record(&self, refusal: Refusal) {
        tracing::info!(
            device = refusal.device.as_deref().unwrap_or("-"),
            source = ?refusal.source,
            class = refusal.class,
            reason = %refusal.reason,
            "Refused."
        );
        crate::metrics::refused(refusal.class);
        if self.tx.try_send(refusal).is_err() {
            crate::metrics::refused("audit_queue_full");
        }
    }
}

/// The task writing refusals to the audit trail.
pub struct RefusalLog {
    rx: mpsc::Receiver<Refusal>,
    store: Store,
    clock: SharedClock,
    flags: Option<crate::alerts::AlertsHandle>,
    /// Refused connections per source: window start, count, flagged in this window.
    sources: std::collections::HashMap<IpAddr, (tokio::time::Instant, u32, bool)>,
    /// Every kind of refusal seen within its [`SUMMARY_EVERY`] window.
    recent: std::collections::HashMap<FoldKey, Recent>,
}

/// One kind of refusal within its summary window.
struct Recent {
    since: tokio::time::Instant,
    /// Entries written in this window.
    written: u32,
    /// Refusals held for the summary: the first of them, when it came, and how many.
    held: Option<(Refusal, time::OffsetDateTime, u64)>,
}

impl RefusalLog {
    pub fn new(store: Store, clock: SharedClock) -> (Refusals, RefusalLog) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (
            Refusals { tx },
            RefusalLog {
                rx,
                store,
                clock,
                flags: None,
                sources: std::collections::HashMap::new(),
                recent: std::collections::HashMap::new(),
            },
        )
    }

    /// Raises `repeated_refused_connections` through `flags` when one source is refused
    /// [`REPEAT_THRESHOLD`] times within [`REPEAT_WINDOW`].
    pub fn with_flags(mut self, flags: crate::alerts::AlertsHandle) -> Self {
        self.flags = Some(flags);
        self
    }

    async fn watch(&mut self, refusal: &Refusal) {
        let (Some(flags), Some(source), Kind::ConnectionRefused) =
            (&self.flags, refusal.source, refusal.kind)
        else {
            return;
        };
        let now = tokio::time::Instant::now();
        if self.sources.len() > 4096 {
            self.sources
                .retain(|_, (start, _, _)| now.duration_since(*start) < REPEAT_WINDOW);
        }
        let entry = self.sources.entry(source).or_insert((now, 0, false));
        if now.duration_since(entry.0) >= REPEAT_WINDOW {
            *entry = (now, 0, false);
        }
        entry.1 += 1;
        if entry.1 >= REPEAT_THRESHOLD && !entry.2 {
            entry.2 = true;
            // A connection refused before it named a device is the gateway's own business; the
            // source address is in the detail.
            let device = refusal
                .device
                .clone()
                .unwrap_or_else(|| "gateway".to_owned());
            flags
                .flag(
                    &device,
                    "repeated_refused_connections",
                    crate::coldchain::Severity::Warning,
                    serde_json::json!({
                        "source": source.to_string(),
                        "refused": entry.1,
                        "within_s": REPEAT_WINDOW.as_secs(),
                        "last_reason": refusal.reason,
                    }),
                )
                .await;
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending: Vec<Refusal> = Vec::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                received = self.rx.recv() => match received {
                    Some(refusal) => {
                        self.watch(&refusal).await;
                        pending.push(refusal);
                    }
                    None => break,
                },
                _ = tick.tick() => self.flush(&mut pending, false).await,
            }
        }
        while let Ok(refusal) = self.rx.try_recv() {
            self.watch(&refusal).await;
            pending.push(refusal);
        }
        self.flush(&mut pending, true).await;
    }

    /// Decides what of `pending` is written now and what is held for a summary, and adds the
    /// summaries whose window has ended (every summary when `last`).
    fn entries(&mut self, pending: Vec<Refusal>, last: bool) -> Vec<Entry> {
        let now = tokio::time::Instant::now();
        let mut out = Vec::new();
        self.summarise(
            |recent| now.duration_since(recent.since) >= SUMMARY_EVERY,
            &mut out,
        );
        for (refusal, count) in fold(pending) {
            let key = fold_key(&refusal);
            // Beyond TRACKED kinds at once, a new kind is only folded per second.
            if self.recent.contains_key(&key) || self.recent.len() < TRACKED {
                let recent = self.recent.entry(key).or_insert(Recent {
                    since: now,
                    written: 0,
                    held: None,
                });
                if recent.written >= LOUD_AFTER {
                    match &mut recent.held {
                        Some((_, _, held)) => *held += count,
                        None => recent.held = Some((refusal, self.clock.now(), count)),
                    }
                    continue;
                }
                recent.written += 1;
            }
            out.push(Entry {
                refusal,
                count,
                summary_since: None,
            });
        }
        if last {
            self.summarise(|_| true, &mut out);
        }
        out
    }

    /// Forgets the windows `ended` says are over, adding their summaries to `out`.
    fn summarise(&mut self, ended: impl Fn(&Recent) -> bool, out: &mut Vec<Entry>) {
        self.recent.retain(|_, recent| {
            if !ended(recent) {
                return true;
            }
            if let Some((refusal, first_at, count)) = recent.held.take() {
                out.push(Entry {
                    refusal,
                    count,
                    summary_since: Some(first_at),
                });
            }
            false
        });
    }

    async fn flush(&mut self, pending: &mut Vec<Refusal>, last: bool) {
        let batch = self.entries(std::mem::take(pending), last);
        if batch.is_empty() {
            return;
        }
        let store = self.store.clone();
        let clock = self.clock.clone();
        let result = tokio::task::spawn_blocking(move || {
            store.write(|txn| {
                for Entry {
                    refusal,
                    count,
                    summary_since,
                } in batch
                {
                    let mut detail = serde_json::json!({
                        "class": refusal.class,
                        "reason": refusal.reason,
                        "count": count,
                    });
                    if let Some(claimed) = &refusal.claimed_device {
                        detail["claimed_device"] = claimed.clone().into();
                    }
                    if let Some(first_at) = summary_since {
                        detail["summary"] = true.into();
                        detail["first_at"] = first_at
                            .format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default()
                            .into();
                    }
                    let actor = match &refusal.device {
                        Some(device) => device.clone(),
                        None if refusal.claimed_device.is_some()
                            || refusal.kind == Kind::EnrollRefused =>
                        {
                            "unauthenticated".to_owned()
                        }
                        None => "unknown".to_owned(),
                    };
                    let mut record = Record::new(refusal.kind, actor).detail(detail);
                    if let Some(device) = refusal.device {
                        record = record.device(device);
                    }
                    if let Some(source) = refusal.source {
                        record = record.source(source);
                    }
                    super::append(txn, clock.now(), clock.synced(), record)?;
                }
                Ok(())
            })
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "Cannot write refusals to the audit trail."),
            Err(e) => tracing::error!(error = %e, "Refusal log task failed."),
        }
    }
}

/// One audit entry to write: a refusal and how many like it; a summary says since when.
struct Entry {
    refusal: Refusal,
    count: u64,
    summary_since: Option<time::OffsetDateTime>,
}

/// What makes two refusals "the same" for folding.
type FoldKey = (
    Kind,
    Option<String>,
    Option<IpAddr>,
    &'static str,
    Option<String>,
);

fn fold_key(refusal: &Refusal) -> FoldKey {
    (
        refusal.kind,
        refusal.device.clone(),
        refusal.source,
        refusal.class,
        refusal.claimed_device.clone(),
    )
}

/// Folds identical refusals into (first occurrence, count), in order of first occurrence.
fn fold(refusals: Vec<Refusal>) -> Vec<(Refusal, u64)> {
    let mut index: BTreeMap<FoldKey, usize> = BTreeMap::new();
    let mut out: Vec<(Refusal, u64)> = Vec::new();
    for refusal in refusals {
        let key = fold_key(&refusal);
        match index.get(&key) {
            Some(&i) => out[i].1 += 1,
            None => {
                index.insert(key, out.len());
                out.push((refusal, 1));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(device: &str, class: &'static str) -> Refusal {
        Refusal {
            kind: Kind::MessageRefused,
            device: Some(device.to_owned()),
            source: None,
            class,
            reason: format!("{class} from {device}"),
            claimed_device: None,
        }
    }

    #[test]
    fn identical_refusals_fold_into_one_entry_with_a_count() {
        let folded = fold(vec![
            refusal("a", "bad_payload"),
            refusal("b", "bad_payload"),
            refusal("a", "bad_payload"),
            refusal("a", "topic_denied"),
            refusal("a", "bad_payload"),
        ]);
        let summary: Vec<_> = folded
            .iter()
            .map(|(r, n)| (r.device.as_deref().unwrap(), r.class, *n))
            .collect();
        assert_eq!(
            summary,
            [
                ("a", "bad_payload", 3),
                ("b", "bad_payload", 1),
                ("a", "topic_denied", 1)
            ]
        );
    }

    #[tokio::test]
    async fn repeated_refused_connections_from_one_source_raise_one_flag() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s.redb")).unwrap();
        let clock = crate::clock::ManualClock::new(time::OffsetDateTime::UNIX_EPOCH, true);
        let (refusals, log) = RefusalLog::new(store, clock);
        let (handle, mut commands) = crate::alerts::AlertsHandle::channel(16);
        let log = log.with_flags(handle);
        let source: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..(REPEAT_THRESHOLD * 2) {
            refusals.record(Refusal {
                kind: Kind::ConnectionRefused,
                device: None,
                source: Some(source),
                class: "tls_handshake",
                reason: "TLS handshake failed: unknown issuer".to_owned(),
                claimed_device: None,
            });
        }
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let task = tokio::spawn(log.run(shutdown));
        let flag = commands.recv().await.expect("a flag");
        let crate::alerts::monitor::Command::Flag {
            device,
            flag,
            detail,
            ..
        } = flag
        else {
            panic!("expected a flag");
        };
        assert_eq!(flag, "repeated_refused_connections");
        assert_eq!(device, "gateway");
        assert_eq!(detail["source"], "192.0.2.7");
        assert_eq!(detail["refused"], REPEAT_THRESHOLD);
        task.await.unwrap();
        assert!(
            commands.try_recv().is_err(),
            "one flag per window, not one per refusal"
        );
    }

    #[tokio::test]
    async fn a_flood_of_refusals_becomes_a_few_audit_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s.redb")).unwrap();
        let clock = crate::clock::ManualClock::new(time::OffsetDateTime::UNIX_EPOCH, true);
        let (refusals, log) = RefusalLog::new(store.clone(), clock);
        let shutdown = CancellationToken::new();
        for _ in 0..1000 {
            refusals.record(refusal("flooder", "bad_payload"));
        }
        shutdown.cancel();
        log.run(shutdown).await;
        let entries = super::super::entries(&store, 1, 100).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].detail["count"], 1000);
        assert_eq!(entries[0].kind, Kind::MessageRefused);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_that_never_stops_is_summarised_each_hour_and_nothing_goes_uncounted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s.redb")).unwrap();
        let clock = crate::clock::ManualClock::new(time::OffsetDateTime::UNIX_EPOCH, true);
        let (refusals, log) = RefusalLog::new(store.clone(), clock);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(log.run(shutdown.clone()));
        // A device held to its rate limit every 10 s for two hours and a half: 900 refusals.
        for i in 0..900 {
            refusals.record(refusal("stuck", "rate_limited"));
            if i == 450 {
                refusals.record(refusal("other", "bad_payload"));
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        let before_shutdown = super::super::entries(&store, 1, 1000).unwrap();
        shutdown.cancel();
        task.await.unwrap();
        let entries = super::super::entries(&store, 1, 1000).unwrap();

        let stuck: Vec<_> = entries
            .iter()
            .filter(|e| e.device.as_deref() == Some("stuck"))
            .collect();
        let counted: u64 = stuck
            .iter()
            .map(|e| e.detail["count"].as_u64().unwrap())
            .sum();
        assert_eq!(counted, 900, "every refusal counted");
        // Three windows: ten entries each at most, and a summary for each.
        assert!(
            stuck.len() <= 3 * (LOUD_AFTER as usize + 1),
            "{}",
            stuck.len()
        );
        assert!(
            stuck[..LOUD_AFTER as usize]
                .iter()
                .all(|e| e.detail["count"] == 1 && e.detail.get("summary").is_none()),
            "the first refusals are written as they come"
        );
        let summaries: Vec<_> = stuck
            .iter()
            .filter(|e| e.detail["summary"] == true)
            .collect();
        assert_eq!(summaries.len(), 3, "{summaries:?}");
        assert!(summaries[0].detail["count"].as_u64().unwrap() > 300);
        assert!(summaries.iter().all(|e| e.detail["first_at"].is_string()));
        assert_eq!(summaries[0].detail["class"], "rate_limited");
        // The first two windows were summarised while the gateway ran; the last at shutdown.
        assert_eq!(
            before_shutdown
                .iter()
                .filter(|e| e.detail["summary"] == true)
                .count(),
            2
        );
        // Another device's refusal is written at once, not held behind the loud one.
        let other: Vec<_> = entries
            .iter()
            .filter(|e| e.device.as_deref() == Some("other"))
            .collect();
        assert_eq!(other.len(), 1);
        assert!(other[0].detail.get("summary").is_none());
    }
}
