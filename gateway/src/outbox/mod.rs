//! The outbox: every message bound for the cloud, durable until the cloud broker acknowledges it.
//!
//! # Invariants
//! - **Accepted means safe: durable here, or in the cloud.** A device gets its PUBACK, and a
//!   Modbus reading counts as kept, only after [`Outbox::append`] has committed it with an fsync
//!   (redb `Durability::Immediate`), or, for telemetry sent before it was stored (below), once
//!   the cloud broker acknowledged it. Appends are grouped (see `pipeline`): one commit carries a
//!   batch, stored as one record per lane, so an SD card sees one sync and a few pages per batch,
//!   not per message. A `kill -9` or a power cut therefore loses nothing a device was
//!   acknowledged for; a polled reading is safe once its batch commits or the cloud has it, at
//!   most `[outbox].batch_delay` (at most 1 s, default 500 ms) plus that commit's own time after
//!   it was read, and it is lost in a power cut only within that window.
//! - **Sent before stored.** While the uplink is connected and has sent everything stored, the
//!   pipeline hands it each telemetry message at once, numbered by [`Outbox::live_seq`] from a
//!   block of its stream's numbers committed beforehand, and appends, when the batch is due,
//!   only those the cloud has not acknowledged (with the number and the bytes they were sent
//!   with). A stream's numbers therefore never repeat even though some are never stored; after
//!   an abrupt stop a stream skips at most [`RESERVE`] numbers (see `streams`), after a clean one
//!   ([`Outbox::release_reservations`]) none. A stream gets its first block with the write that
//!   stores its device's online status ([`Outbox::want_numbers`]), or, failing that, from a
//!   write of its own ([`Outbox::reserve`]) as soon as its first message finds none.
//! - **Deleted only after the cloud's PUBACK, a record at a time.** The uplink acknowledges each
//!   message ([`Outbox::ack`]); acknowledgements are kept in memory, and a record is deleted once
//!   every message in it is acknowledged. Deletions are committed without an fsync. So after a
//!   restart or a power cut, a record some of whose messages were acknowledged is sent again in
//!   full, and a few deleted records may come back and be sent again. Delivery is at least once;
//!   every message carries a unique `id` for consumers to de-duplicate.
//! - **Order.** Messages are kept in lanes by priority (0 = critical … 3 = low). Within a lane,
//!   keys grow in acceptance order and are sent in that order. Each stream (cloud topic) carries
//!   its own `seq`, assigned at append and never reused, so consumers can restore per-stream order
//!   and spot gaps even across lanes and resends.
//! - **Bounded.** When the stored bytes (compressed, as on disk) reach `max_bytes`, appends are
//!   refused (the device gets no PUBACK and resends later; the refusal is counted and logged).
//!   Within a batch the check counts the messages already taken uncompressed, so it refuses a
//!   little early, never late. Nothing accepted is ever dropped to make room.
//! - **A full disk** is refused the same way: the commit fails, nothing of the batch is stored,
//!   the caller gets [`Error::DiskFull`] (the store reopens itself and writes resume once there is
//!   room, see [`Store`]). A commit that reported an error may still have reached the file; after
//!   the store was reopened the counts below are recounted from it before the next write, and
//!   the key counter never goes back, so such a record is sent (a device's resend of it too).
//!
//! # Keys
//! A stored record's key is `(lane: u8, n: u64)`; a message's key ([`Key`]) adds its place in
//! the record, `(lane, n, index: u16)`, and orders messages within a lane. `n` comes from one
//! counter shared by all lanes, which starts above the largest stored `n` when the outbox is
//! opened and only grows. Every outbox write (append or delete) holds the outbox's writer lock
//! from before its redb write transaction begins until after it has committed and the in-memory
//! state is updated, so taking numbers from the counter and committing the records that use them
//! are one step for other writers (the pipeline, the alert channels and the audit keeper append
//! from different threads): no two records ever get the same key. A transaction that does not
//! commit leaves its numbers unused; gaps are harmless, only order matters. As a last guard, an
//! append that finds its key already taken is not committed and fails with
//! [`Error::OutboxKeyTaken`]; a stored record is never overwritten, and never rewritten.
//!
//! The same lock keeps the message and byte counts and each lane's first record exact, so
//! [`Outbox::depth`] answers from memory without a read transaction. Messages acknowledged in a
//! record not yet deleted no longer count as waiting; the age of the oldest is that of the first
//! message of the oldest record.
//!
//! # Tables and layout
//! - `outbox`: key `(lane, n)` as above. Integers big-endian. Value, version 2 (written since
//!   issue 15), all the messages one group commit put in one lane:
//!   `[2u8][compression: u8, 0 = stored, 1 = deflate (RFC 1951, raw)][count: u16, ≥ 1]
//!   [first_accepted_ms: u64][raw_len: u32][block]`, the block being `raw_len` bytes once
//!   inflated: `[topic_count: u16]` then per topic `[len: u16][UTF-8]`, then per message
//!   `[accepted_ms: u64, ms since epoch][flags: u8, bit 0 = retain][topic: u16, index in the
//!   table][payload_len: u32][payload]`, payload being the exact JSON sent. A commit whose
//!   messages in a lane pass 1 MiB uncompressed stores them as several records.
//!   Version 1 (one message per record, written before) is still read and sent:
//!   `[1u8][accepted_ms: u64][flags: u8][topic_len: u16][topic][payload]`.
//! - `outbox_seq`: topic → last `seq` given on that stream (u64), or, for a stream with
//!   numbers reserved, the end of its block (no number given passes it); and the key
//!   `"\0reserved"` while blocks are outstanding (from the first reservation to a clean stop).

mod config;
pub use config::OutboxConfig;

mod record;
mod streams;
pub use streams::RESERVE;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use redb::{ReadableTable, TableDefinition};
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::store::Store;
use record::{Message, Summary};
use streams::Spans;

const OUTBOX: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("outbox");
const SEQ: TableDefinition<&str, u64> = TableDefinition::new("outbox_seq");
/// Decoded records kept for the uplink, which reads a record's messages a window at a time:
/// without them every read would inflate the whole record again.
const DECODED_MAX_BYTES: usize = 4 << 20;

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

/// A message's key: `(lane, n, index)`, its stored record `(lane, n)` and its place in it.
pub type Key = (u8, u64, u16);

/// A stored record's key: `(lane, n)`.
type RecordKey = (u8, u64);

/// How far a lane has been read: the key of the last message taken, without its lane.
pub type Cursor = (u64, u16);

/// A cursor past every message: [`Outbox::read_due`] skips the lane.
pub const SKIP: Option<Cursor> = Some((u64::MAX, u16::MAX));

/// A message to append. The payload is built once its stream `seq` is known.
pub struct NewRecord {
    pub priority: Priority,
    pub topic: String,
    pub retain: bool,
    pub accepted_ms: u64,
    /// Its stream number if it has one already: handed out by [`Outbox::live_seq`] for a
    /// message sent before it was stored. `None`: the next number of its stream, at append.
    pub seq: Option<u64>,
    pub payload: Box<dyn FnOnce(u64) -> Vec<u8> + Send>,
}

/// Where an appended message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub key: Key,
    pub seq: u64,
}

/// Why a message was not appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error(
        "the outbox is full ({bytes} bytes stored, limit {max_bytes}); the cloud has not taken messages for a while"
    )]
    Full { bytes: u64, max_bytes: u64 },
}

/// A stored message.
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
    /// Messages not yet acknowledged by the cloud.
    pub records: u64,
    /// Bytes the stored records take (compressed, as written).
    pub bytes: u64,
    /// Acceptance time (ms since epoch) of the first message of the oldest record, if any.
    pub oldest_ms: Option<u64>,
}

/// The outbox. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    store: Store,
    max_bytes: u64,
    /// Held across every outbox write transaction, commit included (see the module docs, Keys).
    writer: Arc<Mutex<Writer>>,
    /// Messages the cloud acknowledged, by record, until the record is deleted. Never held
    /// across a commit, so readers do not wait behind an fsync; taken after `writer` when both
    /// are held.
    acks: Arc<Mutex<HashMap<RecordKey, Acked>>>,
    /// Recently written or read records, decoded; taken after `acks` when both are held.
    decoded: Arc<Mutex<Decoded>>,
    /// What [`Outbox::depth`] reports: a copy the writer refreshes after each commit, so readers
    /// never wait behind a commit's fsync and never open a read transaction.
    published: Arc<Mutex<Depth>>,
    /// Counts committed appends; see [`Outbox::appends`].
    appends: Arc<AtomicU64>,
    ready: Arc<Notify>,
    /// Stream numbers reserved for messages sent before they are stored; taken after `writer`
    /// when both are held, and never held across a commit.
    streams: Arc<Mutex<Spans>>,
    /// Whether the store said reservations were outstanding when it was opened: the last stop
    /// was abrupt, and reserved streams resumed past their blocks.
    resumed: bool,
}

/// Which messages of one record the cloud acknowledged.
#[derive(Debug, Clone)]
struct Acked {
    count: u16,
    done: Vec<bool>,
    left: u16,
}

impl Acked {
    fn new(count: u16) -> Acked {
        Acked {
            count,
            done: vec![false; usize::from(count)],
            left: count,
        }
    }

    /// Marks `index`; true if it was not acknowledged before.
    fn mark(&mut self, index: u16) -> bool {
        match self.done.get_mut(usize::from(index)) {
            Some(done) if !*done => {
                *done = true;
                self.left -= 1;
                true
            }
            _ => false,
        }
    }

    fn has(&self, index: u16) -> bool {
        self.done.get(usize::from(index)).copied().unwrap_or(false)
    }

    fn acked(&self) -> u64 {
        u64::from(self.count - self.left)
    }
}

/// Decoded records, oldest first, bounded by their payload bytes. A record is never rewritten
/// and its key never reused, so a decoded copy stays true until the record is deleted.
#[derive(Default)]
struct Decoded {
    records: VecDeque<(RecordKey, Arc<Vec<Message>>)>,
    bytes: usize,
}

impl Decoded {
    fn get(&self, key: RecordKey) -> Option<Arc<Vec<Message>>> {
        self.records
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, m)| m.clone())
    }

    fn insert(&mut self, key: RecordKey, messages: Arc<Vec<Message>>) {
        self.bytes += weight(&messages);
        self.records.push_back((key, messages));
        while self.bytes > DECODED_MAX_BYTES && self.records.len() > 1 {
            if let Some((_, old)) = self.records.pop_front() {
                self.bytes -= weight(&old);
            }
        }
    }

    fn remove(&mut self, key: RecordKey) {
        if let Some(i) = self.records.iter().position(|(k, _)| *k == key)
            && let Some((_, old)) = self.records.remove(i)
        {
            self.bytes -= weight(&old);
        }
    }
}

fn weight(messages: &[Message]) -> usize {
    messages.iter().map(Message::raw_len).sum()
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
    /// Messages stored and not acknowledged.
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

fn corrupt(key: RecordKey, reason: &str) -> Error {
    Error::Corrupt {
        table: "outbox".to_owned(),
        key: format!("{key:?}"),
        reason: reason.to_owned(),
    }
}

fn head(key: RecordKey, value: &[u8]) -> Head {
    Head {
        n: key.1,
        accepted_ms: record::summary(value).ok().map(|s| s.first_accepted_ms),
    }
}

/// The first record of `lane`, if any.
fn first_in_lane(
    table: &impl ReadableTable<RecordKey, &'static [u8]>,
    lane: u8,
) -> Result<Option<Head>> {
    match table.range((lane, 0)..=(lane, u64::MAX))?.next() {
        Some(entry) => {
            let (key, value) = entry?;
            Ok(Some(head(key.value(), value.value())))
        }
        None => Ok(None),
    }
}

/// Counts what the outbox holds, in one read transaction; messages in `acks` are not counted
/// as waiting, and acknowledgements of records no longer stored are forgotten.
fn count(store: &Store, acks: &mut HashMap<RecordKey, Acked>) -> Result<Writer> {
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
            Err(redb::TableError::TableDoesNotExist(_)) => {
                acks.clear();
                return Ok(writer);
            }
            Err(e) => return Err(e.into()),
        };
        let mut present = std::collections::HashSet::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let key = key.value();
            let value = value.value();
            writer.next = writer.next.max(key.1 + 1);
            // An unreadable record counts as one message: it is reported when it is read.
            let count = record::summary(value).map_or(1, |s| u64::from(s.count));
            let acked = acks.get(&key).map_or(0, Acked::acked);
            writer.records += count.saturating_sub(acked);
            writer.bytes += value.len() as u64;
            if let Some(slot) = writer.heads.get_mut(usize::from(key.0)) {
                slot.get_or_insert_with(|| head(key, value));
            }
            present.insert(key);
        }
        acks.retain(|key, _| present.contains(key));
        Ok(writer)
    })
}

/// Writes a block of numbers for each stream in `wanted` (with its last number given if it is
/// reserved already, else the table's count), and the mark that reservations are outstanding.
/// Returns `(topic, given, bound)` for the streams once the transaction commits.
fn reserve(
    seqs: &mut redb::Table<&str, u64>,
    wanted: &[(String, Option<u64>)],
) -> Result<Vec<(String, u64, u64)>> {
    let mut reserved = Vec::with_capacity(wanted.len());
    for (topic, given) in wanted {
        let counted = seqs.get(topic.as_str())?.map_or(0, |s| s.value());
        let given = given.unwrap_or(counted);
        // Never below what the table holds: a block only ever moves the bound up.
        let bound = (given + streams::RESERVE).max(counted);
        seqs.insert(topic.as_str(), bound)?;
        reserved.push((topic.clone(), given, bound));
    }
    if !reserved.is_empty() {
        seqs.insert(streams::MARK, 1)?;
    }
    Ok(reserved)
}

/// Gives back the numbers a write that did not commit took from reserved streams.
fn untake(streams: &mut Spans, taken: Vec<(String, u64)>) {
    let mut runs: HashMap<String, (u64, u64)> = HashMap::new();
    for (topic, seq) in taken {
        let run = runs.entry(topic).or_insert((seq, seq));
        run.0 = run.0.min(seq);
        run.1 = run.1.max(seq);
    }
    for (topic, (first, last)) in runs {
        streams.untake(&topic, first, last);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state is changed only after a commit succeeded, in steps that cannot panic, so
    // a panic elsewhere while it was held (a payload builder, say) leaves it consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The messages of one record being written, with where each came from in the batch.
#[derive(Default)]
struct Open {
    messages: Vec<Message>,
    /// Per message, its index in the batch.
    from: Vec<usize>,
    raw: usize,
}

/// A record ready to be inserted.
struct Sealed {
    messages: Vec<Message>,
    from: Vec<usize>,
}

impl Outbox {
    /// Opens the outbox in `store`, counting what it holds.
    pub fn open(store: Store, max_bytes: u64) -> Result<Outbox> {
        let mut acks = HashMap::new();
        let writer = count(&store, &mut acks)?;
        let resumed = store.read(|txn| match txn.open_table(SEQ) {
            Ok(table) => Ok(table.get(streams::MARK)?.is_some()),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(e.into()),
        })?;
        Ok(Outbox {
            store,
            max_bytes,
            published: Arc::new(Mutex::new(writer.depth())),
            writer: Arc::new(Mutex::new(writer)),
            acks: Arc::new(Mutex::new(acks)),
            decoded: Arc::new(Mutex::new(Decoded::default())),
            appends: Arc::new(AtomicU64::new(0)),
            ready: Arc::new(Notify::new()),
            streams: Arc::new(Mutex::new(Spans::default())),
            resumed,
        })
    }

    /// The writer state, recounted from the store if the store was reopened since it was last
    /// counted: a commit that reported an error (a full disk during its sync) may still have
    /// reached the file, and only the file says. The key counter never goes back.
    fn writer(&self) -> Result<MutexGuard<'_, Writer>> {
        let mut writer = lock(&self.writer);
        if writer.generation != self.store.generation() {
            let mut fresh = count(&self.store, &mut lock(&self.acks))?;
            fresh.next = fresh.next.max(writer.next);
            *writer = fresh;
            *lock(&self.published) = writer.depth();
        }
        Ok(writer)
    }

    /// Appends `batch` in one durable transaction. Each message is appended or refused on its own
    /// (a full outbox refuses the rest of the batch); an `Err` means nothing was appended.
    pub fn append(&self, batch: Vec<NewRecord>) -> Result<Vec<Result<Appended, AppendError>>> {
        self.append_with(batch, |_, _| Ok(Vec::new()))
    }

    /// Like [`Outbox::append`], and runs `also` in the same transaction, after the records, with
    /// what became of each message: what it writes (audit entries for the appended events) is
    /// durable together with them or not at all. An `Err` from `also` writes nothing.
    ///
    /// `also` returns the keys of appended messages the cloud has already (sent before they were
    /// stored, acknowledged meanwhile): they count as acknowledged before the append is seen by
    /// any reader, so the uplink never sends them again. [`Outbox::ack`] then deletes them.
    pub fn append_with(
        &self,
        batch: Vec<NewRecord>,
        also: impl FnOnce(&redb::WriteTransaction, &[Result<Appended, AppendError>]) -> Result<Vec<Key>>,
    ) -> Result<Vec<Result<Appended, AppendError>>> {
        let mut writer = self.writer()?;
        let writer = &mut *writer;
        // Stream numbers taken from reserved blocks for stored messages, and numbers now
        // counted in the table past what it held: settled with the streams after the commit.
        let mut taken: Vec<(String, u64)> = Vec::new();
        let mut past: Vec<(String, u64)> = Vec::new();
        let mut reserved: Vec<(String, u64, u64)> = Vec::new();
        let written = self.store.write(|txn| {
            let mut table = txn.open_table(OUTBOX)?;
            let mut seqs = txn.open_table(SEQ)?;
            let mut out = Vec::with_capacity(batch.len());
            // Per lane, the record being filled and those already full.
            let mut open: [Open; LANES] = Default::default();
            let mut sealed: Vec<(u8, Sealed)> = Vec::new();
            let mut taken_bytes = 0u64;
            for record in batch {
                let stored = writer.bytes + taken_bytes;
                if stored >= self.max_bytes {
                    out.push(Err(AppendError::Full {
                        bytes: stored,
                        max_bytes: self.max_bytes,
                    }));
                    continue;
                }
                let counted = seqs.get(record.topic.as_str())?.map_or(0, |s| s.value());
                let (seq, reserved_stream) = match record.seq {
                    Some(seq) => (seq, true),
                    None => match lock(&self.streams).next_stored(&record.topic) {
                        Some(seq) => {
                            taken.push((record.topic.clone(), seq));
                            (seq, true)
                        }
                        None => (counted + 1, false),
                    },
                };
                if seq > counted {
                    seqs.insert(record.topic.as_str(), seq)?;
                    if reserved_stream {
                        past.push((record.topic.clone(), seq));
                    }
                }
                let message = Message {
                    accepted_ms: record.accepted_ms,
                    retain: record.retain,
                    topic: record.topic.into(),
                    payload: (record.payload)(seq),
                };
                let lane = record.priority as u8;
                let filling = &mut open[usize::from(lane)];
                if !filling.messages.is_empty()
                    && (filling.raw + message.raw_len() > record::RECORD_RAW_MAX
                        || filling.messages.len() >= record::RECORD_COUNT_MAX)
                {
                    let full = std::mem::take(filling);
                    sealed.push((
                        lane,
                        Sealed {
                            messages: full.messages,
                            from: full.from,
                        },
                    ));
                }
                taken_bytes += message.raw_len() as u64;
                filling.raw += message.raw_len();
                filling.from.push(out.len());
                filling.messages.push(message);
                // The key is known once the record is sealed.
                out.push(Ok(Appended {
                    key: (lane, 0, 0),
                    seq,
                }));
            }
            for (lane, filling) in (0u8..).zip(open) {
                if !filling.messages.is_empty() {
                    sealed.push((
                        lane,
                        Sealed {
                            messages: filling.messages,
                            from: filling.from,
                        },
                    ));
                }
            }
            // Within a lane records were sealed in batch order; keys follow that order.
            sealed.sort_by_key(|(lane, _)| *lane);
            let (mut added_records, mut added_bytes) = (0u64, 0u64);
            let mut new_heads = writer.heads;
            let mut written = Vec::with_capacity(sealed.len());
            for (lane, sealed) in sealed {
                let value = record::encode(&sealed.messages)?;
                // Taken from the counter now, under the writer lock: if this transaction does
                // not commit the number is simply never used.
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
                    accepted_ms: Some(sealed.messages[0].accepted_ms),
                });
                for (index, from) in (0u16..).zip(&sealed.from) {
                    if let Some(Ok(appended)) = out.get_mut(*from) {
                        appended.key = (lane, key.1, index);
                    }
                }
                added_bytes += value.len() as u64;
                added_records += sealed.messages.len() as u64;
                written.push((key, Arc::new(sealed.messages)));
            }
            reserved = reserve(&mut seqs, &lock(&self.streams).wanted())?;
            drop((table, seqs));
            let acked = also(txn, &out)?;
            Ok((out, added_records, added_bytes, new_heads, written, acked))
        });
        let (out, added_records, added_bytes, new_heads, written, acked) = {
            let mut streams = lock(&self.streams);
            match written {
                Ok(written) => {
                    for (topic, seq) in past {
                        streams.stored(&topic, seq);
                    }
                    for (topic, given, bound) in reserved {
                        streams.reserved(&topic, given, bound);
                    }
                    written
                }
                Err(e) => {
                    untake(&mut streams, taken);
                    return Err(e);
                }
            }
        };
        writer.records += added_records;
        writer.bytes += added_bytes;
        writer.heads = new_heads;
        if !acked.is_empty() {
            let mut acks = lock(&self.acks);
            for key in acked {
                let Some((_, messages)) = written.iter().find(|(k, _)| *k == (key.0, key.1)) else {
                    continue;
                };
                let count = u16::try_from(messages.len()).unwrap_or(u16::MAX);
                if acks
                    .entry((key.0, key.1))
                    .or_insert_with(|| Acked::new(count))
                    .mark(key.2)
                {
                    writer.records = writer.records.saturating_sub(1);
                }
            }
        }
        *lock(&self.published) = writer.depth();
        {
            let mut decoded = lock(&self.decoded);
            for (key, messages) in written {
                decoded.insert(key, messages);
            }
        }
        if added_records > 0 {
            self.appends.fetch_add(1, Ordering::Release);
            self.ready.notify_one();
        }
        Ok(out)
    }

    /// For the one process that sends messages before storing them (the gateway): keeps the last
    /// number given on each stream in the ledger at `path` (see `streams`), after settling the
    /// previous run's. Called once, before anything appends. If that run stopped abruptly during this boot, the ledger has its exact
    /// last numbers and every stream goes on without a gap; after a power cut it has nothing, and
    /// the reserved streams resume past their blocks.
    /// A ledger that cannot be opened is not fatal: the gateway runs without one, and after a
    /// crash its streams skip past their blocks instead of going on exactly.
    pub fn keep_ledger(mut self, path: &std::path::Path) -> Result<Outbox> {
        let (ledger, found) = match streams::Ledger::open(path) {
            Ok(opened) => opened,
            Err(e) => {
                tracing::warn!(
                    ledger = %path.display(),
                    error = %e,
                    "Cannot keep the stream number ledger; after a crash, telemetry streams will skip up to {} numbers. Remove the file if it is not the gateway's, or set RUNTIME_DIRECTORY to a private directory in memory.",
                    streams::RESERVE
                );
                return Ok(self);
            }
        };
        if self.resumed {
            let settled = self.store.write(|txn| {
                let mut seqs = txn.open_table(SEQ)?;
                let mut settled = 0usize;
                for (topic, given) in &found {
                    // The bound committed before any number up to it was given: a number past
                    // it, or a stream with no bound, is not one this ledger could hold.
                    let bound = seqs.get(topic.as_str())?.map(|b| b.value());
                    if bound.is_some_and(|b| *given <= b) {
                        seqs.insert(topic.as_str(), *given)?;
                        settled += 1;
                    }
                }
                if !found.is_empty() && settled == found.len() {
                    seqs.remove(streams::MARK)?;
                }
                Ok(settled)
            })?;
            if !found.is_empty() && settled == found.len() {
                tracing::info!(
                    streams = settled,
                    "The last stop was abrupt; every stream goes on from its last number."
                );
                self.resumed = false;
            } else {
                tracing::warn!(
                    "The last stop was abrupt and the page cache was lost with it (a power cut or a kernel crash): streams whose messages were sent before they were stored resume past their reserved numbers (a seq gap of at most {} on each; the numbers skipped were never given to a message kept here).",
                    streams::RESERVE
                );
            }
        }
        lock(&self.streams).keep_ledger(ledger);
        Ok(self)
    }

    /// The next `seq` of stream `topic` for a message about to be sent before it is stored,
    /// if the stream has numbers reserved; `None` otherwise (the message is stored first, and
    /// the stream gets a block at the next write). Never waits on the disk.
    pub fn live_seq(&self, topic: &str) -> Option<u64> {
        lock(&self.streams).take(topic)
    }

    /// Stream `topic` is about to take live numbers (its device came online): if it has no
    /// block, it gets one with the next write, which is usually the one storing that status.
    pub fn want_numbers(&self, topic: &str) {
        lock(&self.streams).want(topic);
    }

    /// Whether a stream waits for a block of numbers, which the next append (or
    /// [`Outbox::reserve`]) commits.
    pub fn wants_reservation(&self) -> bool {
        lock(&self.streams).wants()
    }

    /// Commits, with an fsync, a block of numbers for every stream that asked for one.
    pub fn reserve(&self) -> Result<()> {
        if !self.wants_reservation() {
            return Ok(());
        }
        self.append(Vec::new()).map(|_| ())
    }

    /// A clean stop: writes back each reserved stream's last number given, so the streams go
    /// on without a gap at the next start, and clears the mark. Called once nothing appends
    /// any more.
    pub fn release_reservations(&self) -> Result<()> {
        let _writer = self.writer()?;
        let released = lock(&self.streams).release();
        if released.is_empty() && !self.resumed {
            return Ok(());
        }
        self.store.write(|txn| {
            let mut seqs = txn.open_table(SEQ)?;
            for (topic, given) in &released {
                seqs.insert(topic.as_str(), *given)?;
            }
            seqs.remove(streams::MARK)?;
            Ok(())
        })
    }

    /// Whether this start followed an abrupt stop with numbers reserved: each such stream
    /// skipped at most [`RESERVE`] numbers.
    pub fn resumed_after_abrupt_stop(&self) -> bool {
        self.resumed
    }

    /// Up to `limit` messages of `lane` after `after` (from the start when `None`) that the cloud
    /// has not acknowledged.
    pub fn read_after(&self, lane: u8, after: Option<Cursor>, limit: usize) -> Result<Vec<Record>> {
        let mut cursors = [SKIP; LANES];
        if let Some(cursor) = cursors.get_mut(usize::from(lane)) {
            *cursor = after;
        }
        self.read_due(&cursors, limit)
    }

    /// The messages due next, in one read transaction: up to `limit` of them, lane by lane in
    /// priority order (critical first), each lane's in key order after its cursor (`None`: from
    /// the lane's start; [`SKIP`]: skip the lane), leaving out those the cloud acknowledged.
    pub fn read_due(&self, cursors: &[Option<Cursor>; LANES], limit: usize) -> Result<Vec<Record>> {
        self.store.read(|txn| {
            let table = match txn.open_table(OUTBOX) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let acks = lock(&self.acks);
            let mut decoded = lock(&self.decoded);
            let mut out = Vec::new();
            for (lane, cursor) in (0u8..).zip(cursors) {
                if out.len() >= limit {
                    break;
                }
                if *cursor == SKIP {
                    continue;
                }
                let (start, after) = match cursor {
                    None => (0, None),
                    Some((n, index)) => (*n, Some((*n, *index))),
                };
                for entry in table.range((lane, start)..=(lane, u64::MAX))? {
                    if out.len() >= limit {
                        break;
                    }
                    let (key, value) = entry?;
                    let key = key.value();
                    let messages = match decoded.get(key) {
                        Some(messages) => messages,
                        None => {
                            let messages = Arc::new(
                                record::decode(value.value()).map_err(|why| corrupt(key, why))?,
                            );
                            decoded.insert(key, messages.clone());
                            messages
                        }
                    };
                    let acked = acks.get(&key);
                    // A record the cursor is in is read on from the cursor, not from its start:
                    // a backlog read a few messages at a time costs its length once.
                    let first = match after {
                        Some((n, i)) if key.1 == n => usize::from(i) + 1,
                        _ => 0,
                    };
                    for (offset, message) in
                        messages.get(first..).unwrap_or_default().iter().enumerate()
                    {
                        if out.len() >= limit {
                            break;
                        }
                        // A record holds at most `RECORD_COUNT_MAX` (u16::MAX) messages.
                        let index = u16::try_from(first + offset).unwrap_or(u16::MAX);
                        if acked.is_some_and(|a| a.has(index)) {
                            continue;
                        }
                        out.push(Record {
                            key: (lane, key.1, index),
                            accepted_ms: message.accepted_ms,
                            retain: message.retain,
                            topic: message.topic.to_string(),
                            payload: message.payload.clone(),
                        });
                    }
                }
            }
            Ok(out)
        })
    }

    /// Records that the cloud acknowledged these messages, and deletes every record all of whose
    /// messages are now acknowledged. Not fsynced (see the module docs). Keys of messages that
    /// are not stored (acknowledged before, or deleted) are ignored.
    pub fn ack(&self, keys: &[Key]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut writer = self.writer()?;
        let writer = &mut *writer;
        // The size of records acknowledged for the first time, read from their headers.
        let unknown: Vec<RecordKey> = {
            let acks = lock(&self.acks);
            let mut unknown: Vec<RecordKey> = keys
                .iter()
                .map(|k| (k.0, k.1))
                .filter(|k| !acks.contains_key(k))
                .collect();
            unknown.sort_unstable();
            unknown.dedup();
            unknown
        };
        let summaries: Vec<(RecordKey, Summary)> = if unknown.is_empty() {
            Vec::new()
        } else {
            self.store.read(|txn| {
                let table = match txn.open_table(OUTBOX) {
                    Ok(t) => t,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(e.into()),
                };
                let mut found = Vec::new();
                for key in unknown {
                    if let Some(value) = table.get(key)? {
                        let summary =
                            record::summary(value.value()).map_err(|why| corrupt(key, why))?;
                        found.push((key, summary));
                    }
                }
                Ok(found)
            })?
        };
        let complete: Vec<RecordKey> = {
            let mut acks = lock(&self.acks);
            for (key, summary) in summaries {
                acks.insert(key, Acked::new(summary.count));
            }
            let mut newly = 0u64;
            for key in keys {
                if let Some(acked) = acks.get_mut(&(key.0, key.1))
                    && acked.mark(key.2)
                {
                    newly += 1;
                }
            }
            writer.records = writer.records.saturating_sub(newly);
            // Every finished record, including any whose delete failed before.
            acks.iter()
                .filter(|(_, a)| a.left == 0)
                .map(|(k, _)| *k)
                .collect()
        };
        if !complete.is_empty() {
            let (freed, heads) = self.store.write_lazy(|txn| {
                let mut table = txn.open_table(OUTBOX)?;
                let mut freed = 0u64;
                let mut heads = writer.heads;
                let mut moved = [false; LANES];
                for key in &complete {
                    if let Some(value) = table.remove(*key)? {
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
                Ok((freed, heads))
            })?;
            writer.bytes = writer.bytes.saturating_sub(freed);
            writer.heads = heads;
            let mut acks = lock(&self.acks);
            let mut decoded = lock(&self.decoded);
            for key in complete {
                acks.remove(&key);
                decoded.remove(key);
            }
        }
        *lock(&self.published) = writer.depth();
        Ok(())
    }

    /// How many messages wait, the size of their records, and the age of the oldest. Reads no
    /// transaction: the figures are kept up to date by every append and acknowledgement.
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
