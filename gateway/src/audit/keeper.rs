//! The audit keeper task: signs a checkpoint of the chain's head regularly and sends it to the
//! cloud (`rxgate/v1/<site>/audit/checkpoints`), and prunes entries past their retention.
//!
//! Pruning deletes evidence, so it is judged by more than the wall clock, which a Pi takes from
//! the network (a spoofed NTP answer moves it years): see [`prune_cutoff`]. The cut-off never
//! passes the oldest of now, the newest entry's time, the last signed checkpoint's time and the
//! store's newest time at start plus the monotonic time since, minus the retention; and there is
//! no pruning while the clock is not synchronised or in the first prune after it jumped.

use std::sync::Arc;
use std::time::Duration;

use redb::ReadableTable;
use serde::Deserialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{Checkpoint, Signer};
use crate::clock::{SharedClock, rfc3339};
use crate::error::{Error, Result};
use crate::message::envelope::{self, Stamp};
use crate::outbox::{NewRecord, Outbox, Priority};
use crate::store::Store;

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// How often the chain's head is signed and sent to the cloud (when it has new entries).
    #[serde(default = "defaults::checkpoint_every", with = "humantime_serde")]
    pub checkpoint_every: Duration,
    /// How long entries are kept; at least two years (controlled-substance records).
    #[serde(default = "defaults::retention", with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_every: defaults::checkpoint_every(),
            retention: defaults::retention(),
        }
    }
}

mod defaults {
    use std::time::Duration;

    pub fn checkpoint_every() -> Duration {
        Duration::from_secs(3600)
    }
    pub fn retention() -> Duration {
        Duration::from_secs(731 * 86_400)
    }
}

/// The shortest retention allowed: two years.
pub const MIN_RETENTION: Duration = Duration::from_secs(730 * 86_400);

/// `audit/checkpoints` topic.
pub fn checkpoints_topic(site: &str) -> String {
    format!("rxgate/{}/{site}/audit/checkpoints", envelope::VERSION)
}

/// Largest difference between how far the wall clock and the monotonic clock moved between two
/// ticks before the wall clock is taken to have jumped. NTP slews by at most 0.05 %, 1.8 s an
/// hour; anything beyond a minute is a step (a spoofed or corrected clock).
pub const JUMP_TOLERANCE: Duration = Duration::from_secs(60);

/// Ticks between two prunes (a day at the default `checkpoint_every` of an hour; the first
/// tick prunes).
const PRUNE_EVERY_TICKS: u64 = 24;

/// Why the keeper did not prune.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PruneHold {
    /// The clock is not synchronised: it may be years off.
    ClockNotSynced,
    /// The wall clock moved this much more (or less) than the monotonic clock since the last
    /// observation.
    ClockJumped(time::Duration),
    /// The trail is empty.
    Empty,
}

impl std::fmt::Display for PruneHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PruneHold::ClockNotSynced => write!(f, "the clock is not synchronised"),
            PruneHold::ClockJumped(by) => write!(
                f,
                "the wall clock jumped by {}s against the monotonic clock",
                by.whole_seconds()
            ),
            PruneHold::Empty => write!(f, "the trail is empty"),
        }
    }
}

/// What the time of pruning is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEvidence {
    pub now: OffsetDateTime,
    pub synced: bool,
    /// The newest entry's time.
    pub newest_entry: Option<OffsetDateTime>,
    /// The last signed checkpoint's time.
    pub last_checkpoint: Option<OffsetDateTime>,
    /// The newest time the store vouched for when the keeper started, plus the monotonic time
    /// elapsed since: a clock set ahead before the gateway started, which then stamps new
    /// entries and checkpoints, cannot carry pruning with it.
    pub ceiling: Option<OffsetDateTime>,
    /// How far the wall clock jumped against the monotonic clock since the last prune, if more
    /// than [`JUMP_TOLERANCE`].
    pub jumped: Option<time::Duration>,
}

/// The pruning rule: entries stamped before the returned cut-off may go. The cut-off is the
/// OLDEST of now, the newest entry's time, the last checkpoint's time and the ceiling, minus
/// `retention` (at least [`MIN_RETENTION`]); and nothing is pruned while the clock is not
/// synchronised or after it jumped.
pub fn prune_cutoff(
    evidence: &TimeEvidence,
    retention: Duration,
) -> std::result::Result<OffsetDateTime, PruneHold> {
    if !evidence.synced {
        return Err(PruneHold::ClockNotSynced);
    }
    if let Some(by) = evidence.jumped {
        return Err(PruneHold::ClockJumped(by));
    }
    let Some(newest) = evidence.newest_entry else {
        return Err(PruneHold::Empty);
    };
    let basis = [
        Some(evidence.now),
        Some(newest),
        evidence.last_checkpoint,
        evidence.ceiling,
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(evidence.now);
    Ok(basis - retention.max(MIN_RETENTION))
}

/// The newest entry's and the last checkpoint's times.
fn store_times(store: &Store) -> Result<(Option<OffsetDateTime>, Option<OffsetDateTime>)> {
    let ts =
        |s: &str| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok();
    let newest = store.read(|txn| {
        let table = match txn.open_table(super::AUDIT) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match table.last()? {
            Some((k, v)) => Ok(super::decode(k.value(), v.value())
                .ok()
                .and_then(|b| ts(&b.ts))),
            None => Ok(None),
        }
    })?;
    let checkpoint = super::checkpoint::last(store)?.and_then(|c| ts(&c.ts));
    Ok((newest, checkpoint))
}

/// The keeper's view of the clocks: where wall and monotonic time stood at start and at the
/// last tick.
struct Watch {
    anchor: Option<OffsetDateTime>,
    start: tokio::time::Instant,
    last_wall: OffsetDateTime,
    last_mono: tokio::time::Instant,
    /// The largest jump seen since the last prune.
    jumped: Option<time::Duration>,
}

impl Watch {
    fn new(anchor: Option<OffsetDateTime>, now: OffsetDateTime) -> Watch {
        let mono = tokio::time::Instant::now();
        Watch {
            anchor,
            start: mono,
            last_wall: now,
            last_mono: mono,
            jumped: None,
        }
    }

    /// Compares how far each clock moved since the last observation.
    fn observe(&mut self, now: OffsetDateTime) {
        let mono = tokio::time::Instant::now();
        let wall = now - self.last_wall;
        let elapsed =
            time::Duration::try_from(mono - self.last_mono).unwrap_or(time::Duration::MAX);
        let drift = wall - elapsed;
        if drift.unsigned_abs() > JUMP_TOLERANCE {
            tracing::warn!(
                jump_s = drift.whole_seconds(),
                "The wall clock jumped; audit pruning is held back until the next prune."
            );
            if self
                .jumped
                .is_none_or(|j| j.unsigned_abs() < drift.unsigned_abs())
            {
                self.jumped = Some(drift);
            }
        }
        self.last_wall = now;
        self.last_mono = mono;
    }

    fn ceiling(&self) -> Option<OffsetDateTime> {
        self.anchor.map(|a| a + self.start.elapsed())
    }
}

pub struct AuditKeeper {
    store: Store,
    outbox: Outbox,
    clock: SharedClock,
    signer: Option<Arc<Signer>>,
    site: String,
    config: AuditConfig,
    watch: Watch,
}

impl AuditKeeper {
    /// Reads the newest time the store vouches for (its newest entry, its last checkpoint):
    /// pruning in this run is bounded by it plus the time the monotonic clock has measured since.
    pub fn new(
        store: Store,
        outbox: Outbox,
        clock: SharedClock,
        signer: Option<Signer>,
        site: &str,
        config: AuditConfig,
    ) -> Self {
        let anchor = match store_times(&store) {
            Ok((entry, checkpoint)) => entry.max(checkpoint),
            Err(e) => {
                tracing::error!(error = %e, "Cannot read the audit trail's newest time.");
                None
            }
        };
        let watch = Watch::new(anchor, clock.now());
        AuditKeeper {
            store,
            outbox,
            clock,
            signer: signer.map(Arc::new),
            site: site.to_owned(),
            config,
            watch,
        }
    }

    /// Signs the head (if it moved) and queues the checkpoint for the cloud. The signing and
    /// the durable writes run on a blocking thread.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        let Some(signer) = self.signer.clone() else {
            return Ok(None);
        };
        let store = self.store.clone();
        let outbox = self.outbox.clone();
        let clock = self.clock.clone();
        let site = self.site.clone();
        let done = tokio::task::spawn_blocking(move || {
            let now = clock.now();
            let Some(checkpoint) = signer.checkpoint(&store, now)? else {
                return Ok(None);
            };
            let stamp = Stamp::new(None, now, clock.synced());
            // Nested: the checkpoint's own `seq` (the audit entry) is not the message's stream seq.
            let body = serde_json::json!({ "checkpoint": checkpoint });
            let topic = checkpoints_topic(&site);
            let record = NewRecord {
                priority: Priority::High,
                topic,
                retain: false,
                accepted_ms: u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
                seq: None,
                payload: Box::new(move |seq| {
                    envelope::encode(&site, None, "audit_checkpoint", &stamp, seq, &body)
                }),
            };
            outbox.append(vec![record])?;
            tracing::info!(seq = checkpoint.seq, "Audit checkpoint signed.");
            Ok(Some(checkpoint))
        })
        .await;
        done.map_err(|e| Error::Invalid(format!("the audit checkpoint task failed: {e}")))?
    }

    /// Applies the pruning rule ([`prune_cutoff`]); the store work runs on a blocking thread.
    pub async fn prune(&mut self) -> Result<Option<super::Pruned>> {
        let store = self.store.clone();
        let clock = self.clock.clone();
        let retention = self.config.retention;
        let ceiling = self.watch.ceiling();
        let jumped = self.watch.jumped.take();
        let done = tokio::task::spawn_blocking(move || {
            let (newest_entry, last_checkpoint) = store_times(&store)?;
            let evidence = TimeEvidence {
                now: clock.now(),
                synced: clock.synced(),
                newest_entry,
                last_checkpoint,
                ceiling,
                jumped,
            };
            let cutoff = match prune_cutoff(&evidence, retention) {
                Ok(cutoff) => cutoff,
                Err(hold) => {
                    tracing::info!(reason = %hold, "Audit entries not pruned.");
                    return Ok(None);
                }
            };
            let pruned = super::prune(&store, cutoff, evidence.now, evidence.synced)?;
            match &pruned {
                Some(p) => tracing::info!(
                    first = p.first,
                    last = p.last,
                    cutoff = %rfc3339(cutoff),
                    "Audit entries past their retention removed."
                ),
                None => tracing::info!(
                    cutoff = %rfc3339(cutoff),
                    "Audit retention checked: no entry is past it."
                ),
            }
            Ok(pruned)
        })
        .await;
        done.map_err(|e| Error::Invalid(format!("the audit pruning task failed: {e}")))?
    }

    /// One tick: observe the clocks, prune (every [`PRUNE_EVERY_TICKS`]th tick, starting with
    /// the first), then sign, so the checkpoint covers the `audit.pruned` entry.
    async fn tick(&mut self, n: u64) {
        self.watch.observe(self.clock.now());
        if n.is_multiple_of(PRUNE_EVERY_TICKS)
            && let Err(e) = self.prune().await
        {
            tracing::error!(error = %e, "Cannot prune the audit trail.");
        }
        if let Err(e) = self.checkpoint().await {
            tracing::error!(error = %e, "Cannot sign an audit checkpoint.");
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(self.config.checkpoint_every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = every.tick() => {
                    self.tick(ticks).await;
                    ticks += 1;
                }
            }
        }
        if let Err(e) = self.checkpoint().await {
            tracing::error!(error = %e, "Cannot sign the final audit checkpoint.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTable;

    use crate::audit::{Kind, Record, append, verify};

    fn signer_and_ca() -> (Signer, Vec<u8>) {
        let now = time::OffsetDateTime::now_utc();
        let ca = rxgate_certs::CertificateAuthority::generate("test CA", now).unwrap();
        let issued = ca
            .issue_server(&["localhost".to_owned()], Duration::from_secs(86_400), now)
            .unwrap();
        let key =
            rustls_pki_types::pem::PemObject::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
        let key: rustls_pki_types::PrivatePkcs8KeyDer = key;
        (
            Signer::new("store-1", key.secret_pkcs8_der(), &issued.cert.pem).unwrap(),
            ca.cert_der().to_vec(),
        )
    }

    fn add(store: &Store, n: usize) {
        for _ in 0..n {
            store
                .write(|txn| {
                    append(
                        txn,
                        time::OffsetDateTime::now_utc(),
                        true,
                        Record::new(Kind::TokenCreated, "cli"),
                    )
                })
                .unwrap();
        }
    }

    #[test]
    fn deleting_the_tail_and_rewriting_the_head_is_caught_by_the_last_signed_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s.redb")).unwrap();
        let (signer, ca) = signer_and_ca();
        add(&store, 5);
        let checkpoint = signer
            .checkpoint(&store, time::OffsetDateTime::now_utc())
            .unwrap()
            .unwrap();
        assert_eq!(checkpoint.seq, 5);
        checkpoint.verify_signature(&ca).unwrap();
        assert_eq!(verify(&store, Some(&ca), &[]).unwrap(), Ok(5));

        // An attacker removes entries 4 and 5 and makes the head agree with entry 3.
        store
            .write(|txn| {
                let mut audit = txn.open_table(crate::audit::AUDIT)?;
                let hash = audit.get(3)?.unwrap().value()[..32].to_vec();
                audit.remove(4)?;
                audit.remove(5)?;
                let mut head = 3u64.to_be_bytes().to_vec();
                head.extend_from_slice(&hash);
                txn.open_table(crate::audit::META)?
                    .insert("head", head.as_slice())?;
                Ok(())
            })
            .unwrap();
        let broken = verify(&store, Some(&ca), &[]).unwrap().unwrap_err();
        assert_eq!(broken.seq, 4);
        assert!(broken.reason.contains("checkpoint"), "{}", broken.reason);

        // Even with the local checkpoints deleted too, the copy the cloud holds catches it.
        store
            .write(|txn| {
                txn.open_table(super::super::checkpoint::CHECKPOINTS)?
                    .retain(|_, _| false)?;
                Ok(())
            })
            .unwrap();
        assert_eq!(verify(&store, Some(&ca), &[]).unwrap(), Ok(3));
        let broken = verify(&store, Some(&ca), &[checkpoint])
            .unwrap()
            .unwrap_err();
        assert_eq!(broken.seq, 4);
    }

    #[test]
    fn a_forged_checkpoint_does_not_verify() {
        let (signer, ca) = signer_and_ca();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s.redb")).unwrap();
        add(&store, 2);
        let mut checkpoint = signer
            .checkpoint(&store, time::OffsetDateTime::now_utc())
            .unwrap()
            .unwrap();
        checkpoint.seq = 1;
        assert!(checkpoint.verify_signature(&ca).is_err());
        let (_, other_ca) = signer_and_ca();
        let good = signer
            .checkpoint(&store, time::OffsetDateTime::now_utc())
            .unwrap();
        assert!(good.is_none(), "nothing new to sign");
        let stored = crate::audit::checkpoint::checkpoints(&store).unwrap();
        assert!(
            stored[0].verify_signature(&other_ca).is_err(),
            "another CA's gateway did not sign it"
        );
    }

    #[test]
    fn pruning_keeps_the_chain_verifiable_from_the_last_removed_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s.redb")).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let old = now - time::Duration::days(900);
        for _ in 0..3 {
            store
                .write(|txn| append(txn, old, true, Record::new(Kind::TokenCreated, "cli")))
                .unwrap();
        }
        add(&store, 2);
        let pruned = crate::audit::prune(&store, now - time::Duration::days(731), now, true)
            .unwrap()
            .unwrap();
        assert_eq!((pruned.first, pruned.last, pruned.entry), (1, 3, 6));
        // Two kept entries and the audit.pruned entry.
        assert_eq!(verify(&store, None, &[]).unwrap(), Ok(3));
        assert_eq!(crate::audit::entries(&store, 1, 10).unwrap()[0].seq, 4);
    }

    const DAY: time::Duration = time::Duration::days(1);
    const RETENTION: Duration = Duration::from_secs(731 * 86_400);

    fn evidence(now: OffsetDateTime) -> TimeEvidence {
        TimeEvidence {
            now,
            synced: true,
            newest_entry: Some(now),
            last_checkpoint: Some(now),
            ceiling: Some(now),
            jumped: None,
        }
    }

    #[test]
    fn the_cutoff_is_the_oldest_of_now_newest_entry_last_checkpoint_and_ceiling_minus_retention() {
        let t = time::macros::datetime!(2026-06-01 00:00 UTC);
        let retention = time::Duration::days(731);
        assert_eq!(prune_cutoff(&evidence(t), RETENTION), Ok(t - retention));
        // A clock 800 days ahead: the newest entry and the last checkpoint are recent.
        let ahead = TimeEvidence {
            now: t + DAY * 800,
            ..evidence(t)
        };
        assert_eq!(prune_cutoff(&ahead, RETENTION), Ok(t - retention));
        let each = [
            TimeEvidence {
                newest_entry: Some(t - DAY * 5),
                ..evidence(t)
            },
            TimeEvidence {
                last_checkpoint: Some(t - DAY * 5),
                ..evidence(t)
            },
            TimeEvidence {
                ceiling: Some(t - DAY * 5),
                ..evidence(t)
            },
            TimeEvidence {
                now: t - DAY * 5,
                ..evidence(t)
            },
        ];
        for e in each {
            assert_eq!(
                prune_cutoff(&e, RETENTION),
                Ok(t - DAY * 5 - retention),
                "{e:?}"
            );
        }
        // No checkpoint (no signer) and no ceiling: those terms do not count.
        let bare = TimeEvidence {
            last_checkpoint: None,
            ceiling: None,
            ..evidence(t)
        };
        assert_eq!(prune_cutoff(&bare, RETENTION), Ok(t - retention));
        // A retention below two years is raised to two years.
        assert_eq!(
            prune_cutoff(&evidence(t), Duration::from_secs(86_400)),
            Ok(t - time::Duration::days(730))
        );
    }

    #[test]
    fn nothing_is_pruned_while_the_clock_is_not_synchronised_after_a_jump_or_from_an_empty_trail() {
        let t = time::macros::datetime!(2026-06-01 00:00 UTC);
        let unsynced = TimeEvidence {
            synced: false,
            ..evidence(t)
        };
        assert_eq!(
            prune_cutoff(&unsynced, RETENTION),
            Err(PruneHold::ClockNotSynced)
        );
        let jumped = TimeEvidence {
            jumped: Some(DAY * 800),
            ..evidence(t)
        };
        assert_eq!(
            prune_cutoff(&jumped, RETENTION),
            Err(PruneHold::ClockJumped(DAY * 800))
        );
        let empty = TimeEvidence {
            newest_entry: None,
            ..evidence(t)
        };
        assert_eq!(prune_cutoff(&empty, RETENTION), Err(PruneHold::Empty));
    }

    /// A store with three entries 900 days before `now` and two at `now`.
    fn old_and_new(now: OffsetDateTime) -> (tempfile::TempDir, Store, Outbox) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s.redb")).unwrap();
        for ts in [now - DAY * 900, now - DAY * 900, now - DAY * 900, now, now] {
            store
                .write(|txn| append(txn, ts, true, Record::new(Kind::TokenCreated, "cli")))
                .unwrap();
        }
        let outbox = Outbox::open(store.clone(), 1 << 20).unwrap();
        (dir, store, outbox)
    }

    fn keeper(
        store: &Store,
        outbox: &Outbox,
        clock: SharedClock,
        signer: Option<Signer>,
    ) -> AuditKeeper {
        AuditKeeper::new(
            store.clone(),
            outbox.clone(),
            clock,
            signer,
            "store-1",
            AuditConfig::default(),
        )
    }

    fn seqs(store: &Store) -> Vec<u64> {
        crate::audit::entries(store, 1, 1000)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_800_days_ahead_prunes_nothing_even_after_it_stamped_new_entries_and_a_checkpoint()
     {
        let now = time::OffsetDateTime::now_utc();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s.redb")).unwrap();
        add(&store, 5);
        let (signer, _) = signer_and_ca();
        signer.checkpoint(&store, now).unwrap().unwrap();
        let outbox = Outbox::open(store.clone(), 1 << 20).unwrap();
        // Started with the clock 800 days ahead (a spoofed NTP answer before the restart).
        let clock = crate::clock::TokioClock::new(now + DAY * 800);
        let mut keeper = keeper(&store, &outbox, clock, Some(signer));
        assert_eq!(keeper.prune().await.unwrap(), None);
        assert_eq!(seqs(&store), [1, 2, 3, 4, 5]);
        // The wrong clock then stamps an entry and a checkpoint; a day later the ceiling (the
        // store's newest time at start, plus a day of monotonic time) still holds pruning back.
        store
            .write(|txn| {
                append(
                    txn,
                    now + DAY * 800,
                    true,
                    Record::new(Kind::TokenCreated, "cli"),
                )
            })
            .unwrap();
        keeper.checkpoint().await.unwrap().unwrap();
        tokio::time::advance(Duration::from_secs(86_400)).await;
        assert_eq!(keeper.prune().await.unwrap(), None);
        assert_eq!(seqs(&store), [1, 2, 3, 4, 5, 6]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wall_clock_jump_against_the_monotonic_clock_holds_back_the_next_prune_only() {
        let now = time::OffsetDateTime::now_utc();
        let (_dir, store, outbox) = old_and_new(now);
        let clock = crate::clock::ManualClock::new(now, true);
        let mut keeper = keeper(&store, &outbox, clock.clone(), None);
        // Two hours on the wall clock, none on the monotonic clock.
        clock.advance(Duration::from_secs(7200));
        keeper.tick(0).await;
        assert_eq!(seqs(&store), [1, 2, 3, 4, 5], "held back after the jump");
        // The next prune, with both clocks in step, removes what is past retention.
        let pruned = keeper.prune().await.unwrap().unwrap();
        assert_eq!((pruned.first, pruned.last), (1, 3));
        assert_eq!(seqs(&store), [4, 5, 6]);
    }

    #[tokio::test(start_paused = true)]
    async fn clocks_in_step_prune_at_the_first_tick() {
        let now = time::OffsetDateTime::now_utc();
        let (_dir, store, outbox) = old_and_new(now);
        let clock = crate::clock::TokioClock::new(now);
        let mut keeper = keeper(&store, &outbox, clock, None);
        tokio::time::advance(Duration::from_secs(7200)).await;
        keeper.tick(0).await;
        assert_eq!(seqs(&store), [4, 5, 6]);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_pruned_while_the_clock_is_not_synchronised() {
        let now = time::OffsetDateTime::now_utc();
        let (_dir, store, outbox) = old_and_new(now);
        let clock = crate::clock::ManualClock::new(now, false);
        let mut keeper = keeper(&store, &outbox, clock.clone(), None);
        keeper.tick(0).await;
        assert_eq!(seqs(&store), [1, 2, 3, 4, 5]);
        clock.set_synced(true);
        assert!(keeper.prune().await.unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn each_prune_is_an_audit_entry_covered_by_the_next_signed_checkpoint() {
        let now = time::OffsetDateTime::now_utc();
        let (_dir, store, outbox) = old_and_new(now);
        let (signer, ca) = signer_and_ca();
        let clock = crate::clock::TokioClock::new(now);
        let mut keeper = keeper(&store, &outbox, clock, Some(signer));
        keeper.tick(0).await;
        let entries = crate::audit::entries(&store, 1, 10).unwrap();
        let pruned = entries.last().unwrap();
        assert_eq!(pruned.seq, 6);
        assert_eq!(pruned.kind, Kind::AuditPruned);
        assert_eq!(
            pruned.detail["removed"],
            serde_json::json!({"from": 1, "to": 3, "count": 3})
        );
        assert_eq!(pruned.detail["base"]["seq"], 3);
        assert_eq!(pruned.detail["base"]["hash"].as_str().unwrap().len(), 64);
        let cutoff = pruned.detail["cutoff"].as_str().unwrap();
        assert_eq!(cutoff, rfc3339(now - time::Duration::days(731)));
        let last = crate::audit::checkpoint::last(&store).unwrap().unwrap();
        assert_eq!(
            last.seq, 6,
            "the tick's checkpoint covers the audit.pruned entry"
        );
        assert_eq!(verify(&store, Some(&ca), &[last]).unwrap(), Ok(3));
    }
}
