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
//! - **A full disk** is refused the same way: the commit fails, nothing of the batch is stored,
//!   the caller gets [`Error::DiskFull`] (the store reopens itself and writes resume once there is
//!   room, see [`Store`]). A commit that reported an error may still have reached the file; after
//!   the store was reopened the counts below are recounted from it before the next write, and
//!   the key counter never goes back, so such a record is sent (a device's resend of it too).
//!
//! # Keys
//! A key is `(lane: u8, n: u64)`. `n` comes from one counter shared by all lanes, which starts
//! above the largest stored `n` when the outbox is opened and only grows. Every outbox write
//! (append or delete) holds the outbox's writer lock from before its redb write transaction
//! begins until after it has committed and the in-memory state is updated, so taking numbers
//! from the counter and committing the records that use them are one step for other writers
//! (the pipeline, the alert channels and the audit keeper append from different threads): no
//! two records ever get the same key. A transaction that does not commit leaves its numbers
//! unused; gaps are harmless, only order matters. As a last guard, an append that finds its key
//! already taken is not committed and fails with [`Error::OutboxKeyTaken`]; a stored record is
//! never overwritten.
//!
//! The same lock keeps the record and byte counts and each lane's first record exact, so
//! [`Outbox::depth`] answers from memory without a read transaction.
//!
//! # Tables and layout
//! - `outbox`: key `(lane, n)` as above. Value, version 1:
//!   `[1u8][accepted_at: u64 BE, ms since epoch][flags: u8, bit 0 = retain][topic_len: u16 BE]
//!   [topic][payload]`, payload being the exact JSON sent.
//! - `outbox_seq`: topic → last `seq` given on that stream (u64).

mod config;
pub use config::OutboxConfig;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

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
    /// Held across every outbox write transaction, commit included (see the module docs, Keys).
    writer: Arc<Mutex<Writer>>,
    /// What [`Outbox::depth`] reports: a copy the writer refreshes after each commit, so readers
    /// never wait behind a commit's fsync and never open a read transaction.
    published: Arc<Mutex<Depth>>,
    /// Counts committed appends; see [`Outbox::appends`].
    appends: Arc<AtomicU64>,
    ready: Arc<Notify>,
}

/// The first record of a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    n: u64,
    /// `None` if the record's header is unreadable (reported when it is read, not here).
    accepted_ms: Option<u64>,
}

/// State owned by whoever holds the writer lock; exact, because every outbox write (append or
/// delete) changes it under that lock, in step with its commit.
#[derive(Debug)]
struct Writer {
    /// The next key number to hand out, in any lane.
    next: u64,
    records: u64,
    bytes: u64,
    heads: [Option<Head>; LANES],
    /// The [`Store::generation`] these figures were counted in.
    generation: u64,
}

impl Writer {
    fn depth(&self) -> Depth {
        Depth {
            records: self.records,
            bytes: self.bytes,
            oldest_ms: self
                .heads
                .iter()
                .flatten()
                .filter_map(|h| h.accepted_ms)
                .min(),
        }
    }
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

fn corrupt(key: Key, reason: &str) -> Error {
    Error::Corrupt {
        table: "outbox".to_owned(),
        key: format!("{key:?}"),
        reason: reason.to_owned(),
    }
}

fn accepted_ms(key: Key, value: &[u8]) -> Result<u64> {
    if value.len() < HEADER {
        return Err(corrupt(key, "shorter than its header"));
    }
    if value[0] != VERSION {
        return Err(corrupt(key, "unknown record version"));
    }
    let bytes = value[1..9].try_into().map_err(|_| corrupt(key, "header"))?;
    Ok(u64::from_be_bytes(bytes))
}

fn decode(key: Key, value: &[u8]) -> Result<Record> {
    let accepted_ms = accepted_ms(key, value)?;
    let retain = value[9] & 1 == 1;
    let topic_len = usize::from(u16::from_be_bytes([value[10], value[11]]));
    let rest = &value[HEADER..];
    if rest.len() < topic_len {
        return Err(corrupt(key, "topic runs past the end"));
    }
    let topic = std::str::from_utf8(&rest[..topic_len])
        .map_err(|_| corrupt(key, "topic is not UTF-8"))?
        .to_owned();
    Ok(Record {
        key,
        accepted_ms,
        retain,
        topic,
        payload: rest[topic_len..].to_vec(),
    })
}

fn head(key: Key, value: &[u8]) -> Head {
    Head {
        n: key.1,
        accepted_ms: accepted_ms(key, value).ok(),
    }
}

/// The first record of `lane`, if any.
fn first_in_lane(table: &impl ReadableTable<Key, &'static [u8]>, lane: u8) -> Result<Option<Head>> {
    match table.range((lane, 0)..=(lane, u64::MAX))?.next() {
        Some(entry) => {
            let (key, value) = entry?;
            Ok(Some(head(key.value(), value.value())))
        }
        None => Ok(None),
    }
}

/// Up to `limit` records of `lane` with key numbers after `after` (from the start when `None`),
/// appended to `out`.
fn take_lane(
    table: &impl ReadableTable<Key, &'static [u8]>,
    lane: u8,
    after: Option<u64>,
    limit: usize,
    out: &mut Vec<Record>,
) -> Result<()> {
    let start = match after {
        None => 0,
        Some(u64::MAX) => return Ok(()),
        Some(n) => n + 1,
    };
    for entry in table.range((lane, start)..=(lane, u64::MAX))?.take(limit) {
        let (key, value) = entry?;
        out.push(decode(key.value(), value.value())?);
    }
    Ok(())
}

/// Counts what the outbox holds, in one read transaction.
fn count(store: &Store) -> Result<Writer> {
    // Read before the transaction: if the store is reopened meanwhile, the figures are
    // counted again at the next write.
    let generation = store.generation();
    store.read(|txn| {
        let mut writer = Writer {
            next: 0,
            records: 0,
            bytes: 0,
            heads: [None; LANES],
            generation,
        };
        let table = match txn.open_table(OUTBOX) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(writer),
            Err(e) => return Err(e.into()),
        };
        for entry in table.iter()? {
            let (key, value) = entry?;
            let key = key.value();
            writer.next = writer.next.max(key.1 + 1);
            writer.records += 1;
            writer.bytes += value.value().len() as u64;
            if let Some(slot) = writer.heads.get_mut(usize::from(key.0)) {
                slot.get_or_insert_with(|| head(key, value.value()));
            }
        }
        Ok(writer)
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state is changed only after a commit succeeded, in steps that cannot panic, so
    // a panic elsewhere while it was held (a payload builder, say) leaves it consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Outbox {
    /// Opens the outbox in `store`, counting what it holds.
    pub fn open(store: Store, max_bytes: u64) -> Result<Outbox> {
        let writer = count(&store)?;
        Ok(Outbox {
            store,
            max_bytes,
            published: Arc::new(Mutex::new(writer.depth())),
            writer: Arc::new(Mutex::new(writer)),
            appends: Arc::new(AtomicU64::new(0)),
            ready: Arc::new(Notify::new()),
        })
    }

    /// The writer state, recounted from the store if the store was reopened since it was last
    /// counted: a commit that reported an error (a full disk during its sync) may still have
    /// reached the file, and only the file says. The key counter never goes back.
    fn writer(&self) -> Result<MutexGuard<'_, Writer>> {
        let mut writer = lock(&self.writer);
        if writer.generation != self.store.generation() {
            let mut fresh = count(&self.store)?;
            fresh.next = fresh.next.max(writer.next);
            *writer = fresh;
            *lock(&self.published) = writer.depth();
        }
        Ok(writer)
    }

    /// Appends `batch` in one durable transaction. Each record is appended or refused on its own
    /// (a full outbox refuses the rest of the batch); an `Err` means nothing was appended.
    pub fn append(&self, batch: Vec<NewRecord>) -> Result<Vec<Result<Appended, AppendError>>> {
        self.append_with(batch, |_, _| Ok(()))
    }

    /// Like [`Outbox::append`], and runs `also` in the same transaction, after the records, with
    /// what became of each of them: what it writes (audit entries for the appended events) is
    /// durable together with them or not at all. An `Err` from `also` writes nothing.
    pub fn append_with(
        &self,
        batch: Vec<NewRecord>,
        also: impl FnOnce(&redb::WriteTransaction, &[Result<Appended, AppendError>]) -> Result<()>,
    ) -> Result<Vec<Result<Appended, AppendError>>> {
        let mut writer = self.writer()?;
        let writer = &mut *writer;
        let (out, added_records, added_bytes, new_heads) = self.store.write(|txn| {
            let mut table = txn.open_table(OUTBOX)?;
            let mut seqs = txn.open_table(SEQ)?;
            let mut out = Vec::with_capacity(batch.len());
            let (mut added_records, mut added_bytes) = (0u64, 0u64);
            let mut new_heads = writer.heads;
            for record in batch {
                let stored = writer.bytes + added_bytes;
                if stored >= self.max_bytes {
                    out.push(Err(AppendError::Full {
                        bytes: stored,
                        max_bytes: self.max_bytes,
                    }));
                    continue;
                }
                let seq = seqs.get(record.topic.as_str())?.map_or(0, |s| s.value()) + 1;
                seqs.insert(record.topic.as_str(), seq)?;
                let payload = (record.payload)(seq);
                let value = encode(record.accepted_ms, record.retain, &record.topic, &payload)?;
                // Taken from the counter now, under the writer lock: if this transaction does
                // not commit the number is simply never used.
                let lane = record.priority as u8;
                let key = (lane, writer.next);
                writer.next += 1;
                if table.insert(key, value.as_slice())?.is_some() {
                    // The counter disagrees with the store. Returning an error drops the
                    // transaction uncommitted, so the record that held the key is untouched.
                    // Move the counter past every stored key so the next append succeeds.
                    for l in 0..LANES as u8 {
                        if let Some(last) = table.range((l, 0)..=(l, u64::MAX))?.next_back() {
                            writer.next = writer.next.max(last?.0.value().1.saturating_add(1));
                        }
                    }
                    return Err(Error::OutboxKeyTaken { lane, n: key.1 });
                }
                new_heads[usize::from(lane)].get_or_insert(Head {
                    n: key.1,
                    accepted_ms: Some(record.accepted_ms),
                });
                added_bytes += value.len() as u64;
                added_records += 1;
                out.push(Ok(Appended { key, seq }));
            }
            drop((table, seqs));
            also(txn, &out)?;
            Ok((out, added_records, added_bytes, new_heads))
        })?;
        writer.records += added_records;
        writer.bytes += added_bytes;
        writer.heads = new_heads;
        *lock(&self.published) = writer.depth();
        if added_records > 0 {
            self.appends.fetch_add(1, Ordering::Release);
            self.ready.notify_one();
        }
        Ok(out)
    }

    /// Up to `limit` records of `lane` with keys after `after` (from the start when `None`).
    pub fn read_after(&self, lane: u8, after: Option<u64>, limit: usize) -> Result<Vec<Record>> {
        let mut cursors = [Some(u64::MAX); LANES];
        if let Some(cursor) = cursors.get_mut(usize::from(lane)) {
            *cursor = after;
        }
        self.read_due(&cursors, limit)
    }

    /// The records due next, in one read transaction: up to `limit` of them, lane by lane in
    /// priority order (critical first), each lane's in key order after its cursor (`None`: from
    /// the lane's start; `Some(u64::MAX)`: skip the lane).
    pub fn read_due(&self, cursors: &[Option<u64>; LANES], limit: usize) -> Result<Vec<Record>> {
        self.store.read(|txn| {
            let table = match txn.open_table(OUTBOX) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            for (lane, cursor) in (0u8..).zip(cursors) {
                let room = limit - out.len();
                if room == 0 {
                    break;
                }
                take_lane(&table, lane, *cursor, room, &mut out)?;
            }
            Ok(out)
        })
    }

    /// Deletes acknowledged records. Not fsynced (see the module docs).
    pub fn delete(&self, keys: &[Key]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut writer = self.writer()?;
        let writer = &mut *writer;
        let (removed, freed, heads) = self.store.write_lazy(|txn| {
            let mut table = txn.open_table(OUTBOX)?;
            let (mut removed, mut freed) = (0u64, 0u64);
            let mut heads = writer.heads;
            let mut moved = [false; LANES];
            for key in keys {
                if let Some(value) = table.remove(*key)? {
                    removed += 1;
                    freed += value.value().len() as u64;
                    let lane = usize::from(key.0);
                    if heads.get(lane).copied().flatten().map(|h| h.n) == Some(key.1) {
                        moved[lane] = true;
                    }
                }
            }
            // A lane's first record went: its next one, if any, is now the first.
            for (lane, slot) in (0u8..).zip(heads.iter_mut()) {
                if moved[usize::from(lane)] {
                    *slot = first_in_lane(&table, lane)?;
                }
            }
            Ok((removed, freed, heads))
        })?;
        writer.records = writer.records.saturating_sub(removed);
        writer.bytes = writer.bytes.saturating_sub(freed);
        writer.heads = heads;
        *lock(&self.published) = writer.depth();
        Ok(())
    }

    /// How many records wait, their size, and the age of the oldest. Reads no transaction: the
    /// figures are kept up to date by every append and delete.
    pub fn depth(&self) -> Result<Depth> {
        Ok(*lock(&self.published))
    }

    /// How many appends have committed since the outbox was opened. A reader that found every
    /// lane exhausted while this read `n` need not read again until it changes: it changes
    /// after the commit of any append that stored a record.
    pub fn appends(&self) -> u64 {
        self.appends.load(Ordering::Acquire)
    }

    /// Resolves after the next append (or at once if one happened since the last call).
    pub async fn appended(&self) {
        self.ready.notified().await;
    }
}

#[cfg(test)]
mod tests;
