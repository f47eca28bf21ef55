//! The outbox: every message bound for the cloud, durable until the cloud broker acknowledges it.
//!
//! # Invariants
//! - **Accepted means durable.** A device gets its PUBACK, and a Modbus reading counts as kept,
//!   only after [`Outbox::append`] has committed the record with an fsync (redb
//!   `Durability::Immediate`). Appends are grouped (see `pipeline`): one commit carries a batch,
//!   so an SD card sees one sync per batch, not per message.
//! - **Deleted only after the cloud's PUBACK.** The uplink deletes a record once the broker has
//!   acknowledged it. Deletions are committed without an fsync: after a power cut a few
//!   acknowledged records may come back and be sent again. Delivery is at least once; every
//!   message carries a unique `id` for consumers to de-duplicate.
//! - **Order.** Records are kept in lanes by priority (0 = critical … 3 = low). Within a lane,
//!   keys grow in acceptance order and are sent in that order. Each stream (cloud topic) carries
//!   its own `seq`, assigned at append and never reused, so consumers can restore per-stream order
//!   and spot gaps even across lanes and resends.
//! - **Bounded.** When the stored bytes reach `max_bytes`, appends are refused (the device gets
//!   no PUBACK and resends later; the refusal is counted and logged). Nothing accepted is ever
//!   dropped to make room.
//!
//! # Tables and layout
//! - `outbox`: key `(lane: u8, n: u64)`, `n` from a counter that only grows while the process
//!   runs and restarts above the largest stored key. Value, version 1:
//!   `[1u8][accepted_at: u64 BE, ms since epoch][flags: u8, bit 0 = retain][topic_len: u16 BE]
//!   [topic][payload]`, payload being the exact JSON sent.
//! - `outbox_seq`: topic → last `seq` given on that stream (u64).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{ReadableTable, TableDefinition};
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::store::Store;

const OUTBOX: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("outbox");
const SEQ: TableDefinition<&str, u64> = TableDefinition::new("outbox_seq");
const VERSION: u8 = 1;
const HEADER: usize = 1 + 8 + 1 + 2;

/// Number of priority lanes.
pub const LANES: usize = 4;

/// Priority of a message: which lane it waits in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Critical = 0,
    High = 1,
    Normal = 2,
    Low = 3,
}

/// A stored record's key.
pub type Key = (u8, u64);

/// A message to append. The payload is built once its stream `seq` is known.
pub struct NewRecord {
    pub priority: Priority,
    pub topic: String,
    pub retain: bool,
    pub accepted_ms: u64,
    pub payload: Box<dyn FnOnce(u64) -> Vec<u8> + Send>,
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub key: Key,
    pub seq: u64,
}

/// Why a record was not appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error(
        "the outbox is full ({bytes} bytes stored, limit {max_bytes}); the cloud has not taken messages for a while"
    )]
    Full { bytes: u64, max_bytes: u64 },
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Key,
    pub accepted_ms: u64,
    pub retain: bool,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// How full the outbox is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Depth {
    pub records: u64,
    pub bytes: u64,
    /// Acceptance time (ms since epoch) of the oldest record, if any.
    pub oldest_ms: Option<u64>,
}

/// The outbox. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    store: Store,
    max_bytes: u64,
    next: Arc<AtomicU64>,
    records: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    ready: Arc<Notify>,
}

fn encode(accepted_ms: u64, retain: bool, topic: &str, payload: &[u8]) -> Result<Vec<u8>> {
    let topic_len = u16::try_from(topic.len())
        .map_err(|_| Error::Invalid(format!("topic longer than 65535 bytes: {topic:.40}…")))?;
    let mut value = Vec::with_capacity(HEADER + topic.len() + payload.len());
    value.push(VERSION);
    value.extend_from_slice(&accepted_ms.to_be_bytes());
    value.push(u8::from(retain));
    value.extend_from_slice(&topic_len.to_be_bytes());
    value.extend_from_slice(topic.as_bytes());
    value.extend_from_slice(payload);
    Ok(value)
}

fn decode(key: Key, value: &[u8]) -> Result<Record> {
    let corrupt = |reason: &str| Error::Corrupt {
        table: "outbox".to_owned(),
        key: format!("{key:?}"),
        reason: reason.to_owned(),
    };
    if value.len() < HEADER {
        return Err(corrupt("shorter than its header"));
    }
    if value[0] != VERSION {
        return Err(corrupt("unknown record version"));
    }
    let accepted_ms = u64::from_be_bytes(value[1..9].try_into().map_err(|_| corrupt("header"))?);
    let retain = value[9] & 1 == 1;
    let topic_len = usize::from(u16::from_be_bytes([value[10], value[11]]));
    let rest = &value[HEADER..];
    if rest.len() < topic_len {
        return Err(corrupt("topic runs past the end"));
    }
    let topic = std::str::from_utf8(&rest[..topic_len])
        .map_err(|_| corrupt("topic is not UTF-8"))?
        .to_owned();
    Ok(Record {
        key,
        accepted_ms,
        retain,
        topic,
        payload: rest[topic_len..].to_vec(),
    })
}

impl Outbox {
    /// Opens the outbox in `store`, counting what it holds.
    pub fn open(store: Store, max_bytes: u64) -> Result<Outbox> {
        let (next, records, bytes) = store.read(|txn| {
            let table = match txn.open_table(OUTBOX) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok((0, 0, 0)),
                Err(e) => return Err(e.into()),
            };
            let (mut next, mut records, mut bytes) = (0u64, 0u64, 0u64);
            for entry in table.iter()? {
                let (key, value) = entry?;
                next = next.max(key.value().1 + 1);
                records += 1;
                bytes += value.value().len() as u64;
            }
            Ok((next, records, bytes))
        })?;
        Ok(Outbox {
            store,
            max_bytes,
            next: Arc::new(AtomicU64::new(next)),
            records: Arc::new(AtomicU64::new(records)),
            bytes: Arc::new(AtomicU64::new(bytes)),
            ready: Arc::new(Notify::new()),
        })
    }

    /// Appends `batch` in one durable transaction. Each record is appended or refused on its own
    /// (a full outbox refuses the rest of the batch); an `Err` means nothing was appended.
    pub fn append(&self, batch: Vec<NewRecord>) -> Result<Vec<Result<Appended, AppendError>>> {
        self.append_with(batch, |_, _| Ok(()))
    }

    /// Like [`Outbox::append`], and runs `also` in the same transaction with each record's
    /// outcome: what it writes (audit entries for the appended events, and only those) is
    /// durable together with them or not at all.
    pub fn append_with(
        &self,
        batch: Vec<NewRecord>,
        also: impl FnOnce(&redb::WriteTransaction, &[Result<Appended, AppendError>]) -> Result<()>,
    ) -> Result<Vec<Result<Appended, AppendError>>> {
        let mut added_bytes = 0u64;
        let mut added_records = 0u64;
        let stored = self.bytes.load(Ordering::Relaxed);
        let outcome = self.store.write(|txn| {
            let mut table = txn.open_table(OUTBOX)?;
            let mut seqs = txn.open_table(SEQ)?;
            let mut out = Vec::with_capacity(batch.len());
            let mut next = self.next.load(Ordering::Relaxed);
            for record in batch {
                if stored + added_bytes >= self.max_bytes {
                    out.push(Err(AppendError::Full {
                        bytes: stored + added_bytes,
                        max_bytes: self.max_bytes,
                    }));
                    continue;
                }
                let seq = seqs.get(record.topic.as_str())?.map_or(0, |s| s.value()) + 1;
                seqs.insert(record.topic.as_str(), seq)?;
                let payload = (record.payload)(seq);
                let value = encode(record.accepted_ms, record.retain, &record.topic, &payload)?;
                let key = (record.priority as u8, next);
                next += 1;
                table.insert(key, value.as_slice())?;
                added_bytes += value.len() as u64;
                added_records += 1;
                out.push(Ok(Appended { key, seq }));
            }
            drop((table, seqs));
            also(txn, &out)?;
            Ok((out, next))
        })?;
        let (out, next) = outcome;
        self.next.store(next, Ordering::Relaxed);
        self.records.fetch_add(added_records, Ordering::Relaxed);
        self.bytes.fetch_add(added_bytes, Ordering::Relaxed);
        if added_records > 0 {
            self.ready.notify_one();
        }
        Ok(out)
    }

    /// Up to `limit` records of `lane` with keys after `after` (from the start when `None`).
    pub fn read_after(&self, lane: u8, after: Option<u64>, limit: usize) -> Result<Vec<Record>> {
        self.store.read(|txn| {
            let table = match txn.open_table(OUTBOX) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let start = after.map_or(0, |n| n.saturating_add(1));
            if after == Some(u64::MAX) {
                return Ok(Vec::new());
            }
            let mut out = Vec::new();
            for entry in table.range((lane, start)..=(lane, u64::MAX))?.take(limit) {
                let (key, value) = entry?;
                out.push(decode(key.value(), value.value())?);
            }
            Ok(out)
        })
    }

    /// Deletes acknowledged records. Not fsynced (see the module docs).
    pub fn delete(&self, keys: &[Key]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let (removed, freed) = self.store.write_lazy(|txn| {
            let mut table = txn.open_table(OUTBOX)?;
            let (mut removed, mut freed) = (0u64, 0u64);
            for key in keys {
                if let Some(value) = table.remove(*key)? {
                    removed += 1;
                    freed += value.value().len() as u64;
                }
            }
            Ok((removed, freed))
        })?;
        self.records.fetch_sub(
            removed.min(self.records.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        self.bytes.fetch_sub(
            freed.min(self.bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// How many records wait, their size, and the age of the oldest.
    pub fn depth(&self) -> Result<Depth> {
        let mut oldest_ms = None;
        for lane in 0..LANES as u8 {
            if let Some(first) = self.read_after(lane, None, 1)?.into_iter().next() {
                oldest_ms =
                    Some(oldest_ms.map_or(first.accepted_ms, |o: u64| o.min(first.accepted_ms)));
            }
        }
        Ok(Depth {
            records: self.records.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            oldest_ms,
        })
    }

    /// Resolves after the next append (or at once if one happened since the last call).
    pub async fn appended(&self) {
        self.ready.notified().await;
    }
}

#[cfg(test)]
mod tests;
