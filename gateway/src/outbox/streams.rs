//! Stream numbers (`seq`) for messages sent to the cloud before they are stored.
//!
//! A message the cloud acknowledges before its batch is due is never written (see the module
//! docs, "Sent before stored"), yet its `seq` must never be given again, even after a power
//! cut. So numbers are reserved in blocks: the `outbox_seq` table holds, per stream, a bound that
//! no number handed out ever passes, committed with an fsync *before* any number up to it is
//! used. In memory a [`Span`] keeps the last number given and that bound; [`Spans::take`] hands
//! out the next one without touching the disk while the block lasts.
//!
//! A clean stop writes back the last number given ([`super::Outbox::release_reservations`]), so
//! the stream goes on without a gap. So does a crash or a `kill -9`: every number is written to
//! a small [`Ledger`] file before it is handed out, without an fsync: the kernel keeps the write
//! in its page cache whatever becomes of the process, and the next start of the same boot (the
//! ledger names the kernel's boot id) reads the exact last numbers back. Only a power cut or a
//! kernel crash loses the ledger: then each stream resumes past its bound, and the numbers
//! skipped (at most [`RESERVE`]) were given to messages that either reached the cloud or were
//! never acknowledged to anyone. The table's [`MARK`] key says reservations were outstanding, so
//! the next start knows to look.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Numbers reserved for a stream at a time: the most one stream skips after an abrupt stop.
pub const RESERVE: u64 = 4096;

/// A stream whose room falls below this asks for its next block early, so it never runs dry
/// while its messages flow.
const LOW: u64 = RESERVE / 2;

/// `outbox_seq` key (not a topic: topics are never empty and never hold NUL) present while
/// reserved numbers may be outstanding, that is from the first reservation until a clean stop.
pub const MARK: &str = "\u{0}reserved";

/// A stream's numbers: the last one given and the committed bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub given: u64,
    pub bound: u64,
    /// Its slot in the ledger, if there is one.
    slot: Option<u64>,
}

/// The reserved streams, and those waiting for a block.
#[derive(Debug, Default)]
pub struct Spans {
    spans: HashMap<String, Span>,
    /// Streams that asked for a block (none yet, or running low) since the last reservation.
    wanted: HashSet<String>,
    ledger: Option<Ledger>,
    /// Ledger slots taken for streams whose first block is being committed.
    slots: HashMap<String, u64>,
    /// Streams the ledger cannot keep (a topic too long, a write that failed): always stored
    /// first.
    unkept: HashSet<String>,
}

const LEDGER_MAGIC: &[u8; 8] = b"rxgseq1\n";
/// Magic, then the boot id (36 ASCII characters, padded).
const LEDGER_HEADER: u64 = 48;
/// Per stream: `[given: u64 LE][topic length: u8][topic]`, the topic at most this long.
const SLOT: u64 = 256;
const TOPIC_MAX: usize = (SLOT - 9) as usize;

/// The last number given on each reserved stream, as of this boot (see the module docs).
#[derive(Debug)]
pub struct Ledger {
    file: File,
    path: std::path::PathBuf,
    slots: u64,
}

/// This process's user id, as the owner of the files it creates.
fn current_uid() -> u32 {
    // SAFETY: getuid(2) has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// The kernel's id for this boot; a different one means the page cache was lost since.
fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (id.len() == 36).then(|| id.to_owned())
}

impl Ledger {
    /// Opens (or creates) the ledger at `path`. Returns it, empty and stamped with this boot,
    /// and the last numbers it held if it was written during this boot: `(topic, given)`.
    pub fn open(path: &Path) -> std::io::Result<(Ledger, Vec<(String, u64)>)> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let boot = boot_id();
        // Only a regular file of ours, never through a link: the ledger may live in a
        // directory others can write to (/dev/shm), and one it believed wrongly could have a
        // number given twice.
        let ours = match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                if !meta.file_type().is_file()
                    || meta.uid() != current_uid()
                    || meta.mode() & 0o077 != 0
                {
                    return Err(std::io::Error::other(
                        "not a private regular file of this user; remove it",
                    ));
                }
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        let old = match ours {
            true => std::fs::read(path)?,
            false => Vec::new(),
        };
        let mut found = Vec::new();
        let header = LEDGER_HEADER as usize;
        if let Some(boot) = &boot
            && old.len() >= header
            && &old[..8] == LEDGER_MAGIC
            && &old[8..44] == boot.as_bytes()
        {
            for slot in old[header..].chunks_exact(SLOT as usize) {
                let given = u64::from_le_bytes(slot[..8].try_into().unwrap_or_default());
                let len = usize::from(slot[8]);
                if given > 0
                    && len > 0
                    && len <= TOPIC_MAX
                    && let Ok(topic) = std::str::from_utf8(&slot[9..9 + len])
                {
                    found.push((topic.to_owned(), given));
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let mut head = vec![0u8; header];
        head[..8].copy_from_slice(LEDGER_MAGIC);
        if let Some(boot) = &boot {
            head[8..44].copy_from_slice(boot.as_bytes());
        }
        file.write_all_at(&head, 0)?;
        Ok((
            Ledger {
                file,
                path: path.to_owned(),
                slots: 0,
            },
            found,
        ))
    }

    /// Takes a slot for `topic`, written in full now so later writes to it allocate nothing.
    fn slot(&mut self, topic: &str, given: u64) -> Option<u64> {
        if topic.is_empty() || topic.len() > TOPIC_MAX {
            return None;
        }
        let slot = self.slots;
        let mut bytes = vec![0u8; SLOT as usize];
        bytes[..8].copy_from_slice(&given.to_le_bytes());
        bytes[8] = topic.len() as u8;
        bytes[9..9 + topic.len()].copy_from_slice(topic.as_bytes());
        self.file
            .write_all_at(&bytes, LEDGER_HEADER + slot * SLOT)
            .ok()?;
        self.slots += 1;
        Some(slot)
    }

    fn write(&self, slot: u64, given: u64) -> std::io::Result<()> {
        self.file
            .write_all_at(&given.to_le_bytes(), LEDGER_HEADER + slot * SLOT)
    }

    /// Makes the ledger say nothing: a write to it failed, so it may be behind.
    fn void(&self) {
        let _ = self.file.set_len(0);
    }

    /// A clean stop: the numbers are in the store, the ledger goes.
    fn remove(self) {
        self.void();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Spans {
    /// The next number of `topic` if one is reserved; otherwise `None`, and the stream asks for
    /// a block at the next write.
    pub fn take(&mut self, topic: &str) -> Option<u64> {
        match self.spans.get_mut(topic) {
            Some(span) if span.given < span.bound => {
                span.given += 1;
                let given = span.given;
                if span.bound - given < LOW && !self.wanted.contains(topic) {
                    self.wanted.insert(topic.to_owned());
                }
                self.record(topic);
                Some(given)
            }
            _ => {
                if !self.wanted.contains(topic) && !self.unkept.contains(topic) {
                    self.wanted.insert(topic.to_owned());
                }
                None
            }
        }
    }

    /// `topic` will take numbers soon (its device just came online): it asks for a block at
    /// the next write if it has none.
    pub fn want(&mut self, topic: &str) {
        if !self.spans.contains_key(topic)
            && !self.wanted.contains(topic)
            && !self.unkept.contains(topic)
        {
            self.wanted.insert(topic.to_owned());
        }
    }

    /// For a message stored without a number of its own: the next number of `topic` if the
    /// stream is reserved (past the bound when the block is used up: the stored number is
    /// durable with the record); `None` if it is not, and the table's count goes on.
    pub fn next_stored(&mut self, topic: &str) -> Option<u64> {
        let span = self.spans.get_mut(topic)?;
        span.given += 1;
        let given = span.given;
        self.record(topic);
        Some(given)
    }

    /// Writes `topic`'s last number given to the ledger. If that fails the ledger is voided
    /// and dropped: a ledger that is behind would have a number given twice after a crash,
    /// where no ledger only skips.
    fn record(&mut self, topic: &str) {
        let (Some(ledger), Some(span)) = (&self.ledger, self.spans.get(topic)) else {
            return;
        };
        if let Some(slot) = span.slot
            && let Err(e) = ledger.write(slot, span.given)
        {
            tracing::warn!(error = %e, "Cannot write the stream number ledger; after a crash streams skip past their reserved numbers.");
            ledger.void();
            self.ledger = None;
        }
    }

    /// Keeps the last numbers given in `ledger` from now on.
    pub fn keep_ledger(&mut self, ledger: Ledger) {
        self.ledger = Some(ledger);
    }

    /// Gives back `first..=last` of `topic`, taken by a write that did not commit, if nothing
    /// was taken after them; otherwise they stay unused (a gap, never a number given twice).
    pub fn untake(&mut self, topic: &str, first: u64, last: u64) {
        if let Some(span) = self.spans.get_mut(topic)
            && span.given == last
        {
            span.given = first - 1;
            self.record(topic);
        }
    }

    pub fn wants(&self) -> bool {
        !self.wanted.is_empty()
    }

    /// The streams that asked for a block, with their last number given if reserved already.
    /// With a ledger, a stream's first block comes with its ledger slot, taken now: one the
    /// ledger cannot keep is not reserved, and is stored first from now on.
    pub fn wanted(&mut self) -> Vec<(String, Option<u64>)> {
        let mut out = Vec::with_capacity(self.wanted.len());
        let mut unkept = Vec::new();
        for topic in &self.wanted {
            if let Some(span) = self.spans.get(topic) {
                out.push((topic.clone(), Some(span.given)));
                continue;
            }
            if let Some(ledger) = &mut self.ledger
                && !self.slots.contains_key(topic)
            {
                match ledger.slot(topic, 0) {
                    Some(slot) => {
                        self.slots.insert(topic.clone(), slot);
                    }
                    None => {
                        unkept.push(topic.clone());
                        continue;
                    }
                }
            }
            out.push((topic.clone(), None));
        }
        for topic in unkept {
            self.wanted.remove(&topic);
            self.unkept.insert(topic);
        }
        out
    }

    /// A committed reservation: `topic` may give numbers up to `bound`, its last given being
    /// `given` if it had no span.
    pub fn reserved(&mut self, topic: &str, given: u64, bound: u64) {
        if !self.spans.contains_key(topic) {
            let slot = self.slots.remove(topic);
            self.spans
                .insert(topic.to_owned(), Span { given, bound, slot });
        }
        let Some(span) = self.spans.get_mut(topic) else {
            return;
        };
        span.bound = span.bound.max(bound);
        if span.bound - span.given >= LOW {
            self.wanted.remove(topic);
        }
        self.record(topic);
    }

    /// A stored number past the bound was committed: the bound follows it.
    pub fn stored(&mut self, topic: &str, seq: u64) {
        if let Some(span) = self.spans.get_mut(topic) {
            span.bound = span.bound.max(seq);
        }
    }

    /// Every stream's last number given, and forgets them all (a clean stop).
    pub fn release(&mut self) -> Vec<(String, u64)> {
        self.wanted.clear();
        if let Some(ledger) = self.ledger.take() {
            ledger.remove();
        }
        self.spans.drain().map(|(t, s)| (t, s.given)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_come_only_from_a_committed_block_and_a_low_block_asks_for_more() {
        let mut spans = Spans::default();
        assert_eq!(spans.take("t"), None, "nothing reserved yet");
        assert!(spans.wants());
        spans.reserved("t", 7, 7 + RESERVE);
        assert!(!spans.wants());
        assert_eq!(spans.take("t"), Some(8));
        for _ in 0..LOW {
            spans.take("t");
        }
        assert!(spans.wants(), "below half a block left");
        let last = 8 + LOW;
        spans.reserved("t", 0, last + RESERVE);
        assert!(!spans.wants());
        assert_eq!(spans.take("t"), Some(last + 1), "the given count is kept");
    }

    #[test]
    fn a_used_up_block_gives_nothing_until_the_next_is_committed() {
        let mut spans = Spans::default();
        spans.reserved("t", 0, 2);
        assert_eq!(spans.take("t"), Some(1));
        assert_eq!(spans.take("t"), Some(2));
        assert_eq!(spans.take("t"), None);
        assert_eq!(spans.next_stored("t"), Some(3), "a stored message goes on");
        spans.stored("t", 3);
        assert_eq!(
            spans.take("t"),
            None,
            "the bound moved only to what is stored"
        );
    }

    #[test]
    fn numbers_of_a_write_that_failed_come_back_only_if_none_were_taken_after() {
        let mut spans = Spans::default();
        spans.reserved("t", 10, 100);
        let first = spans.next_stored("t").unwrap();
        let last = spans.next_stored("t").unwrap();
        spans.untake("t", first, last);
        assert_eq!(spans.take("t"), Some(11));
        let first = spans.next_stored("t").unwrap();
        assert_eq!(spans.take("t"), Some(13), "taken after the failed write's");
        spans.untake("t", first, first);
        assert_eq!(
            spans.take("t"),
            Some(14),
            "so 12 stays unused, never given twice"
        );
    }

    #[test]
    fn a_clean_stop_hands_back_the_last_numbers_given() {
        let mut spans = Spans::default();
        spans.reserved("a", 3, 3 + RESERVE);
        spans.take("a");
        spans.take("b");
        let mut released = spans.release();
        released.sort();
        assert_eq!(released, vec![("a".to_owned(), 4)]);
        assert!(spans.release().is_empty() && !spans.wants());
    }
}
