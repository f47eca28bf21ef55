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
//! the stream goes on without a gap. After an abrupt stop the stream resumes past its bound: the
//! numbers skipped (at most [`RESERVE`]) were given to messages that either reached the cloud or
//! were never acknowledged to anyone. The table's [`MARK`] key says reservations were
//! outstanding, so the next start knows it skipped.

use std::collections::{HashMap, HashSet};

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
}

/// The reserved streams, and those waiting for a block.
#[derive(Debug, Default)]
pub struct Spans {
    spans: HashMap<String, Span>,
    /// Streams that asked for a block (none yet, or running low) since the last reservation.
    wanted: HashSet<String>,
}

impl Spans {
    /// The next number of `topic` if one is reserved; otherwise `None`, and the stream asks for
    /// a block at the next write.
    pub fn take(&mut self, topic: &str) -> Option<u64> {
        match self.spans.get_mut(topic) {
            Some(span) if span.given < span.bound => {
                span.given += 1;
                if span.bound - span.given < LOW && !self.wanted.contains(topic) {
                    self.wanted.insert(topic.to_owned());
                }
                Some(span.given)
            }
            _ => {
                if !self.wanted.contains(topic) {
                    self.wanted.insert(topic.to_owned());
                }
                None
            }
        }
    }

    /// For a message stored without a number of its own: the next number of `topic` if the
    /// stream is reserved (past the bound when the block is used up: the stored number is
    /// durable with the record); `None` if it is not, and the table's count goes on.
    pub fn next_stored(&mut self, topic: &str) -> Option<u64> {
        let span = self.spans.get_mut(topic)?;
        span.given += 1;
        Some(span.given)
    }

    /// Gives back `first..=last` of `topic`, taken by a write that did not commit, if nothing
    /// was taken after them; otherwise they stay unused (a gap, never a number given twice).
    pub fn untake(&mut self, topic: &str, first: u64, last: u64) {
        if let Some(span) = self.spans.get_mut(topic)
            && span.given == last
        {
            span.given = first - 1;
        }
    }

    pub fn wants(&self) -> bool {
        !self.wanted.is_empty()
    }

    /// The streams that asked for a block, with their last number given if reserved already.
    pub fn wanted(&self) -> Vec<(String, Option<u64>)> {
        self.wanted
            .iter()
            .map(|topic| (topic.clone(), self.spans.get(topic).map(|s| s.given)))
            .collect()
    }

    /// A committed reservation: `topic` may give numbers up to `bound`, its last given being
    /// `given` if it had no span.
    pub fn reserved(&mut self, topic: &str, given: u64, bound: u64) {
        let span = self
            .spans
            .entry(topic.to_owned())
            .or_insert(Span { given, bound });
        span.bound = span.bound.max(bound);
        if span.bound - span.given >= LOW {
            self.wanted.remove(topic);
        }
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
