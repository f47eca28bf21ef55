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
    /// Counts the refusal in the metrics and queues it for the audit trail and the log, which
    /// get the same folded entries: a flood of one kind costs the journal about as few lines as
    /// the trail entries. If the queue is full (a flood), the refusal is only counted.
    pub fn record(&self, refusal: Refusal) {
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
    flags: Option<mpsc::Sender<RefusalFlag>>,
    /// Refused connections of the device listener in the current [`REPEAT_WINDOW`].
    connections: Option<ConnectionWindow>,
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
                connections: None,
                recent: std::collections::HashMap::new(),
            },
        )
    }

    /// Raises `repeated_refused_connections` on `flags` when some source (an IPv4 address, or
    /// an IPv6 /64, which one host can fill with addresses) has [`REPEAT_THRESHOLD`] connections
    /// refused within [`REPEAT_WINDOW`]: once per window for the whole listener, counting every
    /// source refused in it, so a thousand addresses raise one flag, not a thousand.
    pub fn with_flags(mut self, flags: mpsc::Sender<RefusalFlag>) -> Self {
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
        let window = match &mut self.connections {
            Some(window) if now.duration_since(window.since) < REPEAT_WINDOW => window,
            slot => slot.insert(ConnectionWindow::new(now)),
        };
        if let Some(detail) = window.count(source_key(source), &refusal.reason) {
            raise_refused_connections(flags, detail).await;
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
                _ = tick.tick() => {
                    self.close_window(false).await;
                    self.flush(&mut pending, false).await;
                }
            }
        }
        while let Ok(refusal) = self.rx.try_recv() {
            self.watch(&refusal).await;
            pending.push(refusal);
        }
        self.close_window(true).await;
        self.flush(&mut pending, true).await;
    }

    /// Ends the refused-connection window once it is over (or at shutdown, `last`): a flagged
    /// window that kept counting raises the flag once more with its whole count, so the alert
    /// (which folds it in) ends up saying how many sources and refusals the window saw.
    async fn close_window(&mut self, last: bool) {
        let over = |w: &ConnectionWindow| last || w.since.elapsed() >= REPEAT_WINDOW;
        let Some(window) = self.connections.take_if(|w| over(w)) else {
            return;
        };
        if let (Some(flags), Some(detail)) = (&self.flags, window.closing_detail()) {
            raise_refused_connections(flags, detail).await;
        }
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
        for (refusal, count, others) in fold(pending) {
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
                others,
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
                    others: Vec::new(),
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
        for entry in &batch {
            let refusal = &entry.refusal;
            tracing::info!(
                device = refusal.device.as_deref().unwrap_or("-"),
                source = ?refusal.source,
                class = refusal.class,
                count = entry.count,
                summary = entry.summary_since.is_some(),
                reason = %refusal.reason,
                other_reasons = %entry.others.join(" | "),
                "Refused."
            );
        }
        let store = self.store.clone();
        let clock = self.clock.clone();
        let result = tokio::task::spawn_blocking(move || {
            store.write(|txn| {
                for Entry {
                    refusal,
                    count,
                    others,
                    summary_since,
                } in batch
                {
                    let mut detail = serde_json::json!({
                        "class": refusal.class,
                        "reason": refusal.reason,
                        "count": count,
                    });
                    if !others.is_empty() {
                        detail["other_reasons"] = others.into();
                    }
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

/// A flag the refusal log raises, for the alert monitor (the daemon forwards it).
#[derive(Debug, Clone, PartialEq)]
pub struct RefusalFlag {
    pub device: String,
    pub flag: &'static str,
    pub detail: serde_json::Value,
}

/// Sources whose refusals are counted within one window; beyond it, refusals are counted together.
const WINDOW_SOURCES: usize = 4096;
/// Sources named in a flag's detail, most refused first.
const NAMED_SOURCES: usize = 10;

/// The device listener's refused connections within one [`REPEAT_WINDOW`].
struct ConnectionWindow {
    since: tokio::time::Instant,
    per_source: std::collections::HashMap<String, u32>,
    /// Refusals from sources beyond [`WINDOW_SOURCES`].
    others: u32,
    refused: u32,
    last_reason: String,
    /// `refused` when the flag was raised, if it was.
    flagged_at: Option<u32>,
}

impl ConnectionWindow {
    fn new(since: tokio::time::Instant) -> Self {
        ConnectionWindow {
            since,
            per_source: std::collections::HashMap::new(),
            others: 0,
            refused: 0,
            last_reason: String::new(),
            flagged_at: None,
        }
    }

    /// Counts one refusal from `source`; the flag's detail when this one makes the window loud.
    fn count(&mut self, source: String, last_reason: &str) -> Option<serde_json::Value> {
        self.refused += 1;
        last_reason.clone_into(&mut self.last_reason);
        let from_source =
            if self.per_source.contains_key(&source) || self.per_source.len() < WINDOW_SOURCES {
                let n = self.per_source.entry(source).or_insert(0);
                *n += 1;
                *n
            } else {
                self.others += 1;
                self.others
            };
        // One loud source (a device retrying with a revoked certificate), or many quiet ones
        // together (a scan from a range of addresses).
        let loud = from_source >= REPEAT_THRESHOLD || self.refused >= REPEAT_THRESHOLD * 10;
        if self.flagged_at.is_some() || !loud {
            return None;
        }
        self.flagged_at = Some(self.refused);
        Some(self.detail(false))
    }

    /// The window's count for the flag; `closed` once the window is over.
    fn detail(&self, closed: bool) -> serde_json::Value {
        let mut loudest: Vec<(&String, &u32)> = self.per_source.iter().collect();
        loudest.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let named: Vec<serde_json::Value> = loudest
            .into_iter()
            .take(NAMED_SOURCES)
            .map(|(source, n)| serde_json::json!({"source": source, "refused": n}))
            .collect();
        serde_json::json!({
            "listener": "mqtt",
            "sources": self.per_source.len() + usize::from(self.others > 0),
            "refused": self.refused,
            "within_s": REPEAT_WINDOW.as_secs(),
            "window_closed": closed,
            "loudest": named,
            "last_reason": self.last_reason,
        })
    }

    /// The closing count, when refusals came after the flag was raised.
    fn closing_detail(&self) -> Option<serde_json::Value> {
        let at = self.flagged_at?;
        (self.refused > at).then(|| self.detail(true))
    }
}

/// Raises the listener's `repeated_refused_connections` flag, which is the gateway's own.
async fn raise_refused_connections(flags: &mpsc::Sender<RefusalFlag>, detail: serde_json::Value) {
    let _ = flags
        .send(RefusalFlag {
            device: "gateway".to_owned(),
            flag: "repeated_refused_connections",
            detail,
        })
        .await;
}

/// A refusal's source as counted for flags: an IPv4 address, or an IPv6 address's /64.
fn source_key(source: IpAddr) -> String {
    match source {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// One audit entry to write: a refusal and how many like it; a summary says since when.
struct Entry {
    refusal: Refusal,
    count: u64,
    /// Up to [`OTHER_REASONS`] further reasons among the refusals folded in, as they differed.
    others: Vec<String>,
    summary_since: Option<time::OffsetDateTime>,
}

/// Distinct reasons beyond the first an entry keeps: a device sending five kinds of bad payload
/// in one second gets them all named, a flood of varied ones costs no more than this.
const OTHER_REASONS: usize = 7;

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

/// Folds identical refusals into (first occurrence, count, other reasons), in order of first
/// occurrence.
fn fold(refusals: Vec<Refusal>) -> Vec<(Refusal, u64, Vec<String>)> {
    let mut index: BTreeMap<FoldKey, usize> = BTreeMap::new();
    let mut out: Vec<(Refusal, u64, Vec<String>)> = Vec::new();
    for refusal in refusals {
        let key = fold_key(&refusal);
        match index.get(&key) {
            Some(&i) => {
                let (first, count, others) = &mut out[i];
                *count += 1;
                if others.len() < OTHER_REASONS
                    && refusal.reason != first.reason
                    && !others.contains(&refusal.reason)
                {
                    others.push(refusal.reason);
                }
            }
            None => {
                index.insert(key, out.len());
                out.push((refusal, 1, Vec::new()));
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
            .map(|(r, n, _)| (r.device.as_deref().unwrap(), r.class, *n))
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

    #[test]
    fn a_folded_entry_names_a_few_of_the_other_reasons_it_counts() {
        let mut refusals = Vec::new();
        for i in 0..20 {
            let mut r = refusal("a", "bad_payload");
            r.reason = format!("point {} is a string", i % 10);
            refusals.push(r);
        }
        let folded = fold(refusals);
        assert_eq!(folded.len(), 1);
        let (first, count, others) = &folded[0];
        assert_eq!(first.reason, "point 0 is a string");
        assert_eq!(*count, 20);
        let named: Vec<String> = (1..=7).map(|i| format!("point {i} is a string")).collect();
        assert_eq!(others, &named);
    }

    /// Runs a refusal log over `refusals` (sent before it starts) and returns the flags it raised.
    async fn flags_of(refusals: Vec<Refusal>) -> Vec<RefusalFlag> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s.redb")).unwrap();
        let clock = crate::clock::ManualClock::new(time::OffsetDateTime::UNIX_EPOCH, true);
        let (handle, log) = RefusalLog::new(store, clock);
        let (tx, mut rx) = mpsc::channel(16);
        let log = log.with_flags(tx);
        for refusal in refusals {
            handle.record(refusal);
        }
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        log.run(shutdown).await;
        let mut flags = Vec::new();
        while let Ok(flag) = rx.try_recv() {
            flags.push(flag);
        }
        flags
    }

    fn refused_connection(source: &str) -> Refusal {
        Refusal {
            kind: Kind::ConnectionRefused,
            device: None,
            source: Some(source.parse().unwrap()),
            class: "tls_handshake",
            reason: "TLS handshake failed: unknown issuer".to_owned(),
            claimed_device: None,
        }
    }

    #[tokio::test]
    async fn repeated_refused_connections_from_one_source_raise_one_flag() {
        let flags = flags_of(vec![
            refused_connection("192.0.2.7");
            REPEAT_THRESHOLD as usize * 2
        ])
        .await;
        // Raised when the source gets loud, then once more when the window closes with its count.
        assert_eq!(
            flags.len(),
            2,
            "one flag per window and its closing count: {flags:?}"
        );
        assert_eq!(flags[1].detail["window_closed"], true);
        assert_eq!(flags[1].detail["refused"], REPEAT_THRESHOLD * 2);
        let flag = &flags[0];
        assert_eq!(flag.flag, "repeated_refused_connections");
        assert_eq!(flag.device, "gateway");
        assert_eq!(flag.detail["listener"], "mqtt");
        assert_eq!(flag.detail["sources"], 1);
        assert_eq!(flag.detail["refused"], REPEAT_THRESHOLD);
        assert_eq!(flag.detail["loudest"][0]["source"], "192.0.2.7");
    }

    #[tokio::test]
    async fn twenty_loud_addresses_raise_one_flag_for_the_listener() {
        let mut refusals = Vec::new();
        for _round in 0..REPEAT_THRESHOLD {
            for host in 1..=20 {
                refusals.push(refused_connection(&format!("192.0.2.{host}")));
            }
        }
        let flags = flags_of(refusals).await;
        assert_eq!(flags.len(), 2, "{flags:?}");
        assert_eq!(flags[1].detail["sources"], 20);
        assert_eq!(flags[1].detail["refused"], REPEAT_THRESHOLD * 20);
        assert_eq!(flags[1].detail["loudest"].as_array().unwrap().len(), 10);
    }

    #[tokio::test]
    async fn ipv6_addresses_of_one_64_count_as_one_source() {
        // A host given a /64 has 2^64 addresses: each refused only once, they still add up.
        let refusals: Vec<Refusal> = (1..=REPEAT_THRESHOLD)
            .map(|i| refused_connection(&format!("2001:db8:1:2::{i:x}")))
            .collect();
        let flags = flags_of(refusals).await;
        assert_eq!(flags.len(), 1, "{flags:?}");
        assert_eq!(flags[0].detail["sources"], 1);
        assert_eq!(flags[0].detail["loudest"][0]["source"], "2001:db8:1:2::/64");
        // Addresses in different /64s, each refused once, are quiet.
        let quiet: Vec<Refusal> = (1..=REPEAT_THRESHOLD)
            .map(|i| refused_connection(&format!("2001:db8:{i:x}::1")))
            .collect();
        assert!(flags_of(quiet).await.is_empty());
    }

    #[tokio::test]
    async fn many_quiet_sources_together_raise_the_flag() {
        let refusals: Vec<Refusal> = (0..REPEAT_THRESHOLD * 10)
            .map(|i| refused_connection(&format!("10.{}.{}.1", i / 250, i % 250)))
            .collect();
        let flags = flags_of(refusals).await;
        assert_eq!(flags.len(), 1, "{flags:?}");
        assert_eq!(flags[0].detail["sources"], REPEAT_THRESHOLD * 10);
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
