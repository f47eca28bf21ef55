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
pub use keeper::{AuditConfig, AuditKeeper, MIN_RETENTION, checkpoints_topic};
pub use refusals::{Refusal, RefusalLog, Refusals};

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

/// Walks the whole chain from its start (or from the last pruned entry), and checks it against
/// the head and against every signed checkpoint: the stored ones and `external` ones (as the
/// cloud received them), verifying their signatures when `ca_der` is given. `Ok(n)`: `n`
/// entries verified.
pub fn verify(
    store: &Store,
    ca_der: Option<&[u8]>,
    external: &[Checkpoint],
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
            Ok(meta) => (head_of(&meta)?, meta.get(BASE)?.map(|b| parse_head(b.value())).transpose()?),
            Err(redb::TableError::TableDoesNotExist(_)) => (None, None),
            Err(e) => return Err(e.into()),
        };
        let (base_seq, mut prev) = base.unwrap_or((0, GENESIS));
        let mut expected_seq = base_seq + 1;
        let mut hashes: std::collections::BTreeMap<u64, [u8; 32]> = std::collections::BTreeMap::new();
        let wanted: std::collections::BTreeSet<u64> = checkpoints.iter().map(|c| c.seq).collect();
        match txn.open_table(AUDIT) {
            Ok(table) => {
                for entry in table.range::<u64>(..)? {
                    let (seq, value) = entry?;
                    let seq = seq.value();
                    let broken = |reason: String| Ok(Err(Broken { seq, reason }));
                    if seq != expected_seq {
                        return broken(format!("expected entry {expected_seq} next, found {seq}: entries are missing"));
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
                    reason: format!("entry {} is not the one the checkpoint signed at {} covers: the chain was rewritten", c.seq, c.ts),
                }));
            }
        }
        match meta_head {
            Some((seq, hash)) if seq != last || hash != prev => Ok(Err(Broken {
                seq: last + 1,
                reason: format!("the chain ends at entry {last} but its head says {seq}: the tail was removed"),
            })),
            _ => Ok(Ok(last - base_seq)),
        }
    })
}

/// Removes entries older than `cutoff` from the start of the chain, remembering the last removed
/// entry's hash so verification still starts from a known point. Checkpoints below it go too.
pub fn prune(store: &Store, cutoff: OffsetDateTime) -> Result<u64> {
    store.write(|txn| {
        let mut table = txn.open_table(AUDIT)?;
        let mut removed = 0u64;
        let mut last: Option<(u64, [u8; 32])> = None;
        loop {
            let Some((seq, value)) = table.first()?.map(|(k, v)| (k.value(), v.value().to_vec()))
            else {
                break;
            };
            let Some((hash, body)) = value.split_first_chunk::<32>() else {
                break;
            };
            let old = serde_json::from_slice::<AuditBody>(body)
                .ok()
                .and_then(|b| {
                    OffsetDateTime::parse(&b.ts, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .is_some_and(|ts| ts < cutoff);
            // Never remove the last entry: the head must stay verifiable.
            if !old || table.len()? <= 1 {
                break;
            }
            table.remove(seq)?;
            last = Some((seq, *hash));
            removed += 1;
        }
        if let Some((seq, hash)) = last {
            let mut base = Vec::with_capacity(40);
            base.extend_from_slice(&seq.to_be_bytes());
            base.extend_from_slice(&hash);
            txn.open_table(META)?.insert(BASE, base.as_slice())?;
            txn.open_table(checkpoint::CHECKPOINTS)?
                .retain(|c, _| c > seq)?;
        }
        Ok(removed)
    })
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
}
