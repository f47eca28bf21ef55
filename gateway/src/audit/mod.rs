//! The audit trail: an append-only, hash-chained log of security decisions and controlled-substance
//! access, in the store.
//!
//! # Layout and invariants
//! Table `audit`: key `u64` sequence number, starting at 1, without gaps. Value: 32 bytes of
//! SHA-256 hash followed by the entry's body, UTF-8 JSON ([`AuditBody`]). The body names the
//! previous entry's hash (`prev`, hex; 64 zeros for the first entry), so
//! `hash(n) = SHA-256(hash(n-1) || body(n))` and changing, removing or reordering any entry breaks
//! every hash after it. The hash covers the exact stored bytes, so verification never depends on
//! re-serialising JSON. Table `audit_meta` holds `head` = the last sequence number and hash.
//!
//! Entries are written in the same store transaction as the change they record, so an action and
//! its audit entry are durable together or not at all.
//!
//! # Pruning
//! Entries past `[audit].retention` (at least two years) are removed from the start of the chain
//! by the keeper, at its first tick and daily after. `audit_meta` key `base` then holds the last
//! removed entry's sequence number and hash, where verification starts. Pruning destroys
//! evidence, and the wall clock of a Pi comes from the network, so the cut-off is never later
//! than the OLDEST of: now, the newest entry's time, the last signed checkpoint's time, and the
//! store's newest time when the keeper started plus the monotonic time since; minus the
//! retention. Nothing is pruned while the clock is not synchronised, nor at the first prune after
//! the wall clock jumped against the monotonic clock by more than a minute. A clock set 800 days
//! ahead therefore prunes nothing. Each prune appends an `audit.pruned` entry in the same
//! transaction (`detail`: `removed` {`from`, `to`, `count`}, `cutoff`, `base` {`seq`, `hash`}),
//! which the keeper's next checkpoint covers.
//!
//! Verification fails on a checkpoint (stored, or the cloud's copy) that names an entry below the
//! base, unless that checkpoint is itself older than the retention: a recent checkpoint of a
//! removed entry means the trail was cut. The failure names the first missing entry: the first
//! one after the base the last `audit.pruned` entry recorded.
//!
//! # Export
//! [`export`] streams a time range entry by entry inside one read transaction, at most a page
//! at a time; entries are in time order by sequence number, so the start is found by binary
//! search and the walk stops at the range's end.

pub mod checkpoint;
mod keeper;
mod refusals;

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use ring::digest;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::store::Store;

pub use checkpoint::{Checkpoint, Signer};
pub use keeper::{
    AuditConfig, AuditKeeper, MIN_RETENTION, PruneHold, checkpoints_topic, prune_cutoff,
};
pub use refusals::{Refusal, RefusalFlag, RefusalLog, Refusals};

pub(crate) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("audit_meta");
const HEAD: &str = "head";
/// After pruning: the last removed entry's sequence number and hash, where verification starts.
const BASE: &str = "base";
pub(crate) const GENESIS: [u8; 32] = [0; 32];

/// What happened, in a stable dotted vocabulary (`device.enrolled`, `enroll.refused`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    #[serde(rename = "token.created")]
    TokenCreated,
    #[serde(rename = "token.revoked")]
    TokenRevoked,
    #[serde(rename = "token.burnt")]
    TokenBurnt,
    #[serde(rename = "device.enrolled")]
    DeviceEnrolled,
    #[serde(rename = "device.renewed")]
    DeviceRenewed,
    #[serde(rename = "device.revoked")]
    DeviceRevoked,
    #[serde(rename = "enroll.refused")]
    EnrollRefused,
    #[serde(rename = "gateway.initialised")]
    GatewayInitialised,
    /// Keys found in plain files were sealed under the key-encryption key (`detail`: `keys`,
    /// `totp_secrets`).
    #[serde(rename = "keys.sealed")]
    KeysSealed,
    #[serde(rename = "connection.refused")]
    ConnectionRefused,
    #[serde(rename = "message.refused")]
    MessageRefused,
    #[serde(rename = "subscription.refused")]
    SubscriptionRefused,
    #[serde(rename = "alert.acknowledged")]
    AlertAcknowledged,
    /// An access event from a dispensing cabinet, as it left the policy (pseudonymised).
    #[serde(rename = "access.event")]
    AccessEvent,
    #[serde(rename = "policy.denied")]
    PolicyDenied,
    #[serde(rename = "policy.reloaded")]
    PolicyReloaded,
    /// Entries past their retention were removed: `detail` names the range, the cut-off and the
    /// new base (see [`prune`]).
    #[serde(rename = "audit.pruned")]
    AuditPruned,
    /// An account was created (`detail`: `user`, `roles`, `expires_on`).
    #[serde(rename = "user.added")]
    UserAdded,
    /// Its person completed set-up: password and authenticator confirmed.
    #[serde(rename = "user.set_up")]
    UserSetUp,
    #[serde(rename = "user.disabled")]
    UserDisabled,
    #[serde(rename = "user.unlocked")]
    UserUnlocked,
    /// Password, authenticator and recovery codes forgotten; a new set-up link issued.
    #[serde(rename = "user.factors_reset")]
    UserFactorsReset,
    /// Locked after repeated failed sign-ins.
    #[serde(rename = "user.locked")]
    UserLocked,
    #[serde(rename = "user.signed_in")]
    UserSignedIn,
    /// A passkey (WebAuthn) registered to an account (`detail`: `user`, `passkey` (its
    /// credential id), `label`, `rp_id`).
    #[serde(rename = "user.passkey_added")]
    UserPasskeyAdded,
    /// A passkey removed from an account.
    #[serde(rename = "user.passkey_removed")]
    UserPasskeyRemoved,
    /// A refused sign-in; `detail.reason` says precisely why.
    #[serde(rename = "user.sign_in_refused")]
    UserSignInRefused,
    /// A console session ended: signed out, or timed out (`detail.reason`).
    #[serde(rename = "user.signed_out")]
    UserSignedOut,
    /// An electronic signature: a re-authentication bound to one record (`detail`: `signer`,
    /// `roles`, `signed_at`, `meaning`, `record`, `record_id`, `record_sha256`).
    #[serde(rename = "record.signed")]
    RecordSigned,
    /// A backup was written (`detail`: `file`, `size`, `sha256`, `destinations`, `skipped`,
    /// `audit_head`: the last entry it holds).
    #[serde(rename = "backup.created")]
    BackupCreated,
    /// A backup could not be written (`detail`: `error`, `destinations`).
    #[serde(rename = "backup.failed")]
    BackupFailed,
    /// This store was restored from a backup (`detail`: `file`, `size`, `sha256`, `site`,
    /// `created`, `audit_head`); written by `rxgate backup restore`.
    #[serde(rename = "backup.restored")]
    BackupRestored,
}

/// One entry as stored (without its hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditBody {
    pub seq: u64,
    /// Previous entry's hash, hex.
    pub prev: String,
    /// Gateway time, RFC 3339.
    pub ts: String,
    pub clock_synced: bool,
    pub kind: Kind,
    /// Who acted: an admin (`cli`), a device id, or `gateway`.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Network source, when the action came over the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Kind-specific details. Never secrets, never clear patient identifiers.
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// An entry to append; sequence, chain and timestamp are filled in by [`append`].
#[derive(Debug, Clone)]
pub struct Record {
    pub kind: Kind,
    pub actor: String,
    pub device: Option<String>,
    pub source: Option<String>,
    pub detail: serde_json::Value,
}

impl Record {
    pub fn new(kind: Kind, actor: impl Into<String>) -> Self {
        Record {
            kind,
            actor: actor.into(),
            device: None,
            source: None,
            detail: serde_json::Value::Null,
        }
    }

    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }

    pub fn source(mut self, source: impl ToString) -> Self {
        self.source = Some(source.to_string());
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

fn chain_hash(prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prev);
    ctx.update(body);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Appends `record` inside `txn`, returning its sequence number.
pub fn append(
    txn: &WriteTransaction,
    now: OffsetDateTime,
    synced: bool,
    record: Record,
) -> Result<u64> {
    let mut meta = txn.open_table(META)?;
    let (last_seq, last_hash) = match meta.get(HEAD)? {
        Some(head) => parse_head(head.value())?,
        None => (0, GENESIS),
    };
    let seq = last_seq + 1;
    let body = AuditBody {
        seq,
        prev: hex(&last_hash),
        ts: rfc3339(now),
        clock_synced: synced,
        kind: record.kind,
        actor: record.actor,
        device: record.device,
        source: record.source,
        detail: record.detail,
    };
    let body = crate::store::to_json(&body);
    let hash = chain_hash(&last_hash, &body);
    let mut value = Vec::with_capacity(32 + body.len());
    value.extend_from_slice(&hash);
    value.extend_from_slice(&body);
    txn.open_table(AUDIT)?.insert(seq, value.as_slice())?;
    let mut head = Vec::with_capacity(40);
    head.extend_from_slice(&seq.to_be_bytes());
    head.extend_from_slice(&hash);
    meta.insert(HEAD, head.as_slice())?;
    Ok(seq)
}

fn parse_head(bytes: &[u8]) -> Result<(u64, [u8; 32])> {
    let corrupt = || Error::Corrupt {
        table: "audit_meta".to_owned(),
        key: HEAD.to_owned(),
        reason: format!("expected 40 bytes, found {}", bytes.len()),
    };
    let (seq, hash) = bytes.split_first_chunk::<8>().ok_or_else(corrupt)?;
    let hash: [u8; 32] = hash.try_into().map_err(|_| corrupt())?;
    Ok((u64::from_be_bytes(*seq), hash))
}

/// Reads entries with `from <= seq`, at most `limit`, oldest first.
pub fn entries(store: &Store, from: u64, limit: usize) -> Result<Vec<AuditBody>> {
    store.read(|txn| {
        let table = match txn.open_table(AUDIT) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in table.range(from..)?.take(limit) {
            let (seq, value) = entry?;
            let body = value.value().get(32..).unwrap_or_default();
            out.push(serde_json::from_slice(body).map_err(|e| Error::Corrupt {
                table: "audit".to_owned(),
                key: seq.value().to_string(),
                reason: e.to_string(),
            })?);
        }
        Ok(out)
    })
}

/// The first entry that does not verify, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub seq: u64,
    pub reason: String,
}

/// The head (last sequence number and hash) recorded in `audit_meta`.
pub(crate) fn head_of(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<(u64, [u8; 32])>> {
    meta.get(HEAD)?.map(|h| parse_head(h.value())).transpose()
}

/// What verification judges checkpoints of removed entries by: a checkpoint naming an entry
/// below the trail's start is only acceptable if the checkpoint itself is past the retention.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// The verifier's time.
    pub now: OffsetDateTime,
    /// `[audit].retention` (never less than [`MIN_RETENTION`]).
    pub keep: std::time::Duration,
}

impl Retention {
    /// Instants before this are past retention.
    pub fn oldest_kept(&self) -> OffsetDateTime {
        self.now - self.keep.max(MIN_RETENTION)
    }
}

fn parse_ts(ts: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()
}

/// [`verify_at`] now, with the shortest retention.
pub fn verify(
    store: &Store,
    ca_der: Option<&[u8]>,
    external: &[Checkpoint],
) -> Result<Result<u64, Broken>> {
    let retention = Retention {
        now: OffsetDateTime::now_utc(),
        keep: MIN_RETENTION,
    };
    verify_at(store, ca_der, external, retention)
}

/// Walks the whole chain from its start (or from the last pruned entry), and checks it against
/// the head and against every signed checkpoint: the stored ones and `external` ones (as the
/// cloud received them), verifying their signatures when `ca_der` is given. A checkpoint naming
/// an entry below the trail's start fails verification unless it is itself older than
/// `retention`: pruning only ever removes entries past their retention, so a recent checkpoint
/// of a removed entry shows the trail was cut. `Ok(n)`: `n` entries verified.
pub fn verify_at(
    store: &Store,
    ca_der: Option<&[u8]>,
    external: &[Checkpoint],
    retention: Retention,
) -> Result<Result<u64, Broken>> {
    let mut checkpoints = checkpoint::checkpoints(store)?;
    checkpoints.extend(external.iter().cloned());
    if let Some(ca) = ca_der {
        for c in &checkpoints {
            if let Err(reason) = c.verify_signature(ca) {
                return Ok(Err(Broken {
                    seq: c.seq,
                    reason: format!(
                        "the checkpoint of entry {} ({}) does not verify: {reason}",
                        c.seq, c.ts
                    ),
                }));
            }
        }
    }
    store.read(|txn| {
        let (meta_head, base) = match txn.open_table(META) {
            Ok(meta) => (
                head_of(&meta)?,
                meta.get(BASE)?
                    .map(|b| parse_head(b.value()))
                    .transpose()?,
            ),
            Err(redb::TableError::TableDoesNotExist(_)) => (None, None),
            Err(e) => return Err(e.into()),
        };
        let (base_seq, mut prev) = base.unwrap_or((0, GENESIS));
        let mut expected_seq = base_seq + 1;
        // The base the newest `audit.pruned` entry still in the chain recorded: entries up to
        // it were removed by the gateway's own pruning.
        let mut recorded_base = 0u64;
        let mut hashes: std::collections::BTreeMap<u64, [u8; 32]> =
            std::collections::BTreeMap::new();
        let wanted: std::collections::BTreeSet<u64> = checkpoints.iter().map(|c| c.seq).collect();
        match txn.open_table(AUDIT) {
            Ok(table) => {
                for entry in table.range::<u64>(..)? {
                    let (seq, value) = entry?;
                    let seq = seq.value();
                    let broken = |reason: String| Ok(Err(Broken { seq, reason }));
                    if seq != expected_seq {
                        return broken(format!(
                            "expected entry {expected_seq} next, found {seq}: entries are missing"
                        ));
                    }
                    let value = value.value();
                    let Some((stored_hash, body)) = value.split_first_chunk::<32>() else {
                        return broken("entry is shorter than its hash".to_owned());
                    };
                    let parsed: AuditBody = match serde_json::from_slice(body) {
                        Ok(b) => b,
                        Err(e) => return broken(format!("entry is not valid JSON: {e}")),
                    };
                    if parsed.seq != seq || parsed.prev != hex(&prev) {
                        return broken("entry does not name its predecessor's hash".to_owned());
                    }
                    if chain_hash(&prev, body) != *stored_hash {
                        return broken("entry's contents do not match its hash".to_owned());
                    }
                    if parsed.kind == Kind::AuditPruned
                        && let Some(b) = parsed.detail["base"]["seq"].as_u64()
                    {
                        recorded_base = b;
                    }
                    if wanted.contains(&seq) {
                        hashes.insert(seq, *stored_hash);
                    }
                    prev = *stored_hash;
                    expected_seq += 1;
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let last = expected_seq - 1;
        let oldest_kept = retention.oldest_kept();
        let cut = checkpoints
            .iter()
            .filter(|c| c.seq <= base_seq)
            .filter(|c| parse_ts(&c.ts).is_none_or(|ts| ts >= oldest_kept))
            .min_by_key(|c| c.seq);
        if let Some(c) = cut {
            // Entries the gateway's own pruning did not account for are the first missing; if
            // it did remove this recent entry (its clock was wrong), the cut starts there.
            let first = if recorded_base < c.seq {
                recorded_base + 1
            } else {
                c.seq
            };
            return Ok(Err(Broken {
                seq: first,
                reason: format!(
                    "the trail was cut: entries {first}..={base_seq} were removed from its start, \
                     but the checkpoint signed at {} covers entry {} and is not older than the \
                     retention of {} days",
                    c.ts,
                    c.seq,
                    retention.keep.max(MIN_RETENTION).as_secs() / 86_400
                ),
            }));
        }
        for c in &checkpoints {
            if c.seq <= base_seq {
                continue;
            }
            if c.seq > last {
                return Ok(Err(Broken {
                    seq: last + 1,
                    reason: format!(
                        "the chain ends at entry {last} but a checkpoint signed at {} covers entry {}: entries {}..={} were removed",
                        c.ts,
                        c.seq,
                        last + 1,
                        c.seq
                    ),
                }));
            }
            if hashes.get(&c.seq).map(|h| hex(h)) != Some(c.hash.clone()) {
                return Ok(Err(Broken {
                    seq: c.seq,
                    reason: format!(
                        "entry {} is not the one the checkpoint signed at {} covers: the chain was rewritten",
                        c.seq, c.ts
                    ),
                }));
            }
        }
        match meta_head {
            Some((seq, hash)) if seq != last || hash != prev => Ok(Err(Broken {
                seq: last + 1,
                reason: format!(
                    "the chain ends at entry {last} but its head says {seq}: the tail was removed"
                ),
            })),
            _ => Ok(Ok(last - base_seq)),
        }
    })
}

/// What one [`prune`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// First and last entry removed.
    pub first: u64,
    pub last: u64,
    /// The `audit.pruned` entry recording it.
    pub entry: u64,
}

/// Removes entries stamped before `cutoff` from the start of the chain, never the newest one,
/// and in the same transaction appends an `audit.pruned` entry (at `now`) naming the range
/// removed, the cut-off and the new base (the last removed entry's sequence number and hash,
/// where verification starts). Checkpoints of removed entries go too. Which cut-off is safe is
/// the keeper's decision ([`keeper::prune_cutoff`]); this only applies it.
pub fn prune(
    store: &Store,
    cutoff: OffsetDateTime,
    now: OffsetDateTime,
    synced: bool,
) -> Result<Option<Pruned>> {
    store.write(|txn| {
        let mut first: Option<u64> = None;
        let mut last: Option<(u64, [u8; 32])> = None;
        {
            let mut table = txn.open_table(AUDIT)?;
            loop {
                let Some((seq, value)) =
                    table.first()?.map(|(k, v)| (k.value(), v.value().to_vec()))
                else {
                    break;
                };
                let Some((hash, body)) = value.split_first_chunk::<32>() else {
                    break;
                };
                let old = serde_json::from_slice::<AuditBody>(body)
                    .ok()
                    .and_then(|b| parse_ts(&b.ts))
                    .is_some_and(|ts| ts < cutoff);
                // Never remove the last entry: the head must stay verifiable.
                if !old || table.len()? <= 1 {
                    break;
                }
                table.remove(seq)?;
                first.get_or_insert(seq);
                last = Some((seq, *hash));
            }
        }
        let (Some(first), Some((seq, hash))) = (first, last) else {
            return Ok(None);
        };
        let mut base = Vec::with_capacity(40);
        base.extend_from_slice(&seq.to_be_bytes());
        base.extend_from_slice(&hash);
        txn.open_table(META)?.insert(BASE, base.as_slice())?;
        txn.open_table(checkpoint::CHECKPOINTS)?
            .retain(|c, _| c > seq)?;
        let entry = append(
            txn,
            now,
            synced,
            Record::new(Kind::AuditPruned, "gateway").detail(serde_json::json!({
                "removed": { "from": first, "to": seq, "count": seq - first + 1 },
                "cutoff": rfc3339(cutoff),
                "base": { "seq": seq, "hash": hex(&hash) },
            })),
        )?;
        Ok(Some(Pruned {
            first,
            last: seq,
            entry,
        }))
    })
}

/// Which entries an export covers: those stamped `from <= ts < to`, optionally one page of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportRange {
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
    /// Resume after this entry (the last one of the previous page).
    pub after: Option<u64>,
    /// Entries after this one are left out (the head when the export began).
    pub until: Option<u64>,
}

/// Where an export stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportEnd {
    /// The last entry written, if any.
    pub last: Option<u64>,
    /// The page was full and more entries may follow: resume after `last`.
    pub more: bool,
    /// The head when this page began: pass it as `until` to later pages.
    pub until: u64,
    /// Entries read from the store (in range or not), for tests and metrics.
    pub read: u64,
}

fn decode(seq: u64, value: &[u8]) -> Result<AuditBody> {
    serde_json::from_slice(value.get(32..).unwrap_or_default()).map_err(|e| Error::Corrupt {
        table: "audit".to_owned(),
        key: seq.to_string(),
        reason: e.to_string(),
    })
}

/// Streams the entries of `range`, oldest first, at most `limit` of them, to `write`, one at a
/// time: nothing but the entry being written is held. Entries are in time order by sequence
/// number (each is stamped when appended), so the first entry at or after `from` is found by
/// binary search over sequence numbers and the walk stops at the first entry at or after `to`.
/// An entry stamped while the clock was wrong stays where it was written; one whose time does
/// not parse is included.
pub fn export(
    store: &Store,
    range: &ExportRange,
    limit: usize,
    mut write: impl FnMut(AuditBody) -> Result<()>,
) -> Result<ExportEnd> {
    store.read(|txn| {
        let mut end = ExportEnd {
            last: None,
            more: false,
            until: 0,
            read: 0,
        };
        let table = match txn.open_table(AUDIT) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(end),
            Err(e) => return Err(e.into()),
        };
        let (Some(first), Some(head)) = (
            table.first()?.map(|(k, _)| k.value()),
            table.last()?.map(|(k, _)| k.value()),
        ) else {
            return Ok(end);
        };
        let until = range.until.unwrap_or(head).min(head);
        end.until = until;
        // The time of the first entry at or after `seq`, if any.
        let mut time_at = |seq: u64| -> Result<Option<(u64, Option<OffsetDateTime>)>> {
            match table.range(seq..)?.next() {
                Some(entry) => {
                    let (k, v) = entry?;
                    end.read += 1;
                    let body = decode(k.value(), v.value())?;
                    Ok(Some((k.value(), parse_ts(&body.ts))))
                }
                None => Ok(None),
            }
        };
        let start = match (range.after, range.from) {
            (Some(after), _) => after.saturating_add(1),
            (None, None) => first,
            (None, Some(from)) => {
                // Smallest seq in [first, until + 1) whose entry is not before `from`.
                let (mut lo, mut hi) = (first, until.saturating_add(1));
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    let before = match time_at(mid)? {
                        Some((_, Some(ts))) => ts < from,
                        Some((_, None)) => false,
                        None => false,
                    };
                    if before {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                lo
            }
        };
        if start > until {
            return Ok(end);
        }
        let mut written = 0usize;
        for entry in table.range(start..=until)? {
            let (k, v) = entry?;
            end.read += 1;
            let body = decode(k.value(), v.value())?;
            let ts = parse_ts(&body.ts);
            if let (Some(to), Some(ts)) = (range.to, ts)
                && ts >= to
            {
                break;
            }
            if range
                .from
                .is_some_and(|from| ts.is_some_and(|ts| ts < from))
            {
                continue;
            }
            if written == limit {
                end.more = true;
                break;
            }
            let seq = body.seq;
            write(body)?;
            written += 1;
            end.last = Some(seq);
        }
        Ok(end)
    })
}

/// How many of the newest audit entries are searched for one with a synchronised timestamp.
pub const AUDIT_LOOKBACK: u64 = 256;

/// The timestamp of the newest audit entry written with a synchronised clock, among the last
/// [`AUDIT_LOOKBACK`].
pub fn newest_synced_entry(store: &Store) -> Result<Option<OffsetDateTime>> {
    let last = store.read(|txn| match txn.open_table(AUDIT) {
        Ok(table) => Ok(table.last()?.map(|(seq, _)| seq.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    })?;
    let Some(last) = last else {
        return Ok(None);
    };
    let from = last.saturating_sub(AUDIT_LOOKBACK - 1);
    let entries = entries(store, from, AUDIT_LOOKBACK as usize)?;
    Ok(entries
        .iter()
        .rev()
        .filter(|e| e.clock_synced)
        .find_map(|e| {
            OffsetDateTime::parse(&e.ts, &time::format_description::well_known::Rfc3339).ok()
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s.redb")).unwrap();
        (dir, store)
    }

    fn add(store: &Store, n: usize) {
        for i in 0..n {
            store
                .write(|txn| {
                    append(
                        txn,
                        OffsetDateTime::UNIX_EPOCH,
                        true,
                        Record::new(Kind::DeviceEnrolled, "cli")
                            .device(format!("d{i}"))
                            .detail(serde_json::json!({"serial": i})),
                    )
                })
                .unwrap();
        }
    }

    #[test]
    fn appended_entries_verify_and_read_back_in_order() {
        let (_dir, store) = store();
        add(&store, 5);
        assert_eq!(verify(&store, None, &[]).unwrap(), Ok(5));
        let all = entries(&store, 1, 100).unwrap();
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(all[0].prev, hex(&GENESIS));
        assert_eq!(all[2].device.as_deref(), Some("d2"));
    }

    #[test]
    fn changing_one_byte_of_an_entry_is_detected_at_that_entry() {
        let (_dir, store) = store();
        add(&store, 5);
        store
            .write(|txn| {
                let mut table = txn.open_table(AUDIT)?;
                let mut value = table.get(3)?.unwrap().value().to_vec();
                let pos = value.len() - 3;
                value[pos] ^= 1;
                table.insert(3, value.as_slice())?;
                Ok(())
            })
            .unwrap();
        assert_eq!(verify(&store, None, &[]).unwrap().unwrap_err().seq, 3);
    }

    #[test]
    fn removing_the_tail_is_detected_against_the_head() {
        let (_dir, store) = store();
        add(&store, 4);
        store
            .write(|txn| {
                txn.open_table(AUDIT)?.remove(4)?;
                Ok(())
            })
            .unwrap();
        let broken = verify(&store, None, &[]).unwrap().unwrap_err();
        assert_eq!(broken.seq, 4);
        assert!(
            broken.reason.contains("tail was removed"),
            "{}",
            broken.reason
        );
    }

    #[test]
    fn removing_an_entry_in_the_middle_is_detected() {
        let (_dir, store) = store();
        add(&store, 4);
        store
            .write(|txn| {
                txn.open_table(AUDIT)?.remove(2)?;
                Ok(())
            })
            .unwrap();
        assert_eq!(verify(&store, None, &[]).unwrap().unwrap_err().seq, 3);
    }

    /// `n` entries, entry `i + 1` stamped `start + i` minutes, in one transaction.
    fn minutes(store: &Store, start: OffsetDateTime, n: u64) {
        store
            .write(|txn| {
                for i in 0..n {
                    let ts = start + time::Duration::minutes(i as i64);
                    append(txn, ts, true, Record::new(Kind::AccessEvent, "cab-1"))?;
                }
                Ok(())
            })
            .unwrap();
    }

    fn signer_and_ca() -> (Signer, Vec<u8>) {
        let now = OffsetDateTime::now_utc();
        let ca = rxgate_certs::CertificateAuthority::generate("test CA", now).unwrap();
        let issued = ca
            .issue_server(
                &["localhost".to_owned()],
                std::time::Duration::from_secs(86_400),
                now,
            )
            .unwrap();
        let key: rustls_pki_types::PrivatePkcs8KeyDer =
            rustls_pki_types::pem::PemObject::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
        (
            Signer::new("store-1", key.secret_pkcs8_der(), &issued.cert.pem).unwrap(),
            ca.cert_der().to_vec(),
        )
    }

    /// Removes entries `..=last` and records `last` as the base, as a prune would, but without
    /// an `audit.pruned` entry and whatever the entries' age.
    fn cut(store: &Store, last: u64) {
        store
            .write(|txn| {
                let mut audit = txn.open_table(AUDIT)?;
                let hash = audit.get(last)?.unwrap().value()[..32].to_vec();
                audit.retain(|seq, _| seq > last)?;
                let mut base = last.to_be_bytes().to_vec();
                base.extend_from_slice(&hash);
                txn.open_table(META)?.insert(BASE, base.as_slice())?;
                txn.open_table(checkpoint::CHECKPOINTS)?
                    .retain(|c, _| c > last)?;
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_checkpoint_of_a_removed_entry_fails_verify_naming_the_first_missing_entry_unless_it_is_past_retention()
     {
        let (_dir, store) = store();
        let now = OffsetDateTime::now_utc();
        minutes(&store, now - time::Duration::minutes(10), 6);
        let (signer, ca) = signer_and_ca();
        let cloud = signer.checkpoint(&store, now).unwrap().unwrap();
        assert_eq!(cloud.seq, 6);
        minutes(&store, now, 4);
        cut(&store, 8);
        let at = |now| Retention {
            now,
            keep: MIN_RETENTION,
        };
        let broken = verify_at(&store, Some(&ca), std::slice::from_ref(&cloud), at(now))
            .unwrap()
            .unwrap_err();
        assert_eq!(broken.seq, 1);
        assert_eq!(
            broken.reason,
            format!(
                "the trail was cut: entries 1..=8 were removed from its start, but the checkpoint \
                 signed at {} covers entry 6 and is not older than the retention of 730 days",
                cloud.ts
            )
        );
        // Without the cloud's copy (the local one went with the entries) nothing shows it.
        assert_eq!(verify_at(&store, Some(&ca), &[], at(now)).unwrap(), Ok(2));
        // Once the checkpoint itself is past retention, pruning may have removed its entry.
        let later = now + time::Duration::days(731);
        assert_eq!(
            verify_at(&store, Some(&ca), &[cloud], at(later)).unwrap(),
            Ok(2)
        );
    }

    #[test]
    fn a_cut_after_the_gateways_own_prunes_names_the_first_entry_they_did_not_account_for() {
        let (_dir, store) = store();
        let now = OffsetDateTime::now_utc();
        minutes(&store, now - time::Duration::days(800), 3);
        minutes(&store, now - time::Duration::minutes(10), 3);
        let (signer, ca) = signer_and_ca();
        let cloud = signer.checkpoint(&store, now).unwrap().unwrap();
        assert_eq!(cloud.seq, 6);
        let pruned = prune(&store, now - time::Duration::days(731), now, true)
            .unwrap()
            .unwrap();
        assert_eq!((pruned.first, pruned.last, pruned.entry), (1, 3, 7));
        minutes(&store, now, 2);
        let retention = Retention {
            now,
            keep: MIN_RETENTION,
        };
        assert_eq!(
            verify_at(&store, Some(&ca), std::slice::from_ref(&cloud), retention).unwrap(),
            Ok(6)
        );
        // Cut up to the checkpoint, leaving the audit.pruned entry that accounts for 1..=3.
        cut(&store, 6);
        let broken = verify_at(&store, Some(&ca), &[cloud], retention)
            .unwrap()
            .unwrap_err();
        assert_eq!(broken.seq, 4, "{}", broken.reason);
        assert!(
            broken.reason.contains("entries 4..=6 were removed"),
            "{}",
            broken.reason
        );
    }

    /// 50 000 entries a minute apart from 2026-01-01.
    fn large_trail() -> (tempfile::TempDir, Store, OffsetDateTime) {
        let (dir, store) = store();
        let start = time::macros::datetime!(2026-01-01 00:00 UTC);
        minutes(&store, start, 50_000);
        (dir, store, start)
    }

    #[test]
    fn an_export_of_a_date_range_from_50_000_entries_reads_about_only_that_range() {
        let (_dir, store, start) = large_trail();
        let range = ExportRange {
            from: Some(start + time::Duration::minutes(20_000)),
            to: Some(start + time::Duration::minutes(20_500)),
            ..ExportRange::default()
        };
        let mut seen = Vec::new();
        let end = export(&store, &range, usize::MAX, |e| {
            seen.push(e.seq);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, (20_001..=20_500).collect::<Vec<_>>());
        assert_eq!(
            (end.last, end.more, end.until),
            (Some(20_500), false, 50_000)
        );
        // The range, the entry that ends it, and a binary search: 2 log2(50 000) < 40.
        assert!(end.read <= 501 + 40, "read {} entries", end.read);
    }

    #[test]
    fn an_export_in_pages_returns_each_entry_of_the_range_once_and_no_page_exceeds_its_limit() {
        let (_dir, store, start) = large_trail();
        let mut range = ExportRange {
            from: Some(start + time::Duration::minutes(1_234)),
            to: Some(start + time::Duration::minutes(4_321)),
            ..ExportRange::default()
        };
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let mut page = 0;
            let end = export(&store, &range, 500, |e| {
                page += 1;
                seen.push(e.seq);
                Ok(())
            })
            .unwrap();
            assert!(page <= 500, "{page}");
            pages += 1;
            if !end.more {
                break;
            }
            range.after = end.last;
            range.until = Some(end.until);
        }
        assert_eq!(seen, (1_235..=4_321).collect::<Vec<_>>());
        assert_eq!(pages, 7);
        // Nothing in range, before the trail, after it.
        for (from, to) in [(-100, -10), (60_000, 70_000), (10, 10)] {
            let range = ExportRange {
                from: Some(start + time::Duration::minutes(from)),
                to: Some(start + time::Duration::minutes(to)),
                ..ExportRange::default()
            };
            let end = export(&store, &range, 500, |_| panic!("nothing in range")).unwrap();
            assert_eq!(end.last, None);
        }
    }
}
