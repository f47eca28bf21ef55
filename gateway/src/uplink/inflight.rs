//! Pairing rumqttc's packet ids with outbox keys.

use std::collections::{HashMap, VecDeque};

use crate::outbox::Key;

/// Publishes requested but not yet acknowledged. `None` stands for a publish that is not an
/// outbox record (the gateway's own status message).
#[derive(Debug)]
pub struct Inflight {
    window: usize,
    /// Requested, waiting for rumqttc to give them a packet id; in request order.
    requested: VecDeque<Option<Key>>,
    /// Sent with a packet id, waiting for PUBACK.
    sent: HashMap<u16, Option<Key>>,
}

impl Inflight {
    pub fn new(window: usize) -> Self {
        Inflight {
            window: window.max(1),
            requested: VecDeque::new(),
            sent: HashMap::new(),
        }
    }

    /// How many more publishes may be requested.
    pub fn room(&self) -> usize {
        self.window
            .saturating_sub(self.requested.len() + self.sent.len())
    }

    pub fn has_room(&self) -> bool {
        self.room() > 0
    }

    /// Publishes handed to rumqttc that have no packet id yet.
    pub fn unassigned(&self) -> usize {
        self.requested.len()
    }

    /// A publish for `key` was handed to rumqttc.
    pub fn request(&mut self, key: Option<Key>) {
        self.requested.push_back(key);
    }

    /// rumqttc sent the next requested publish with packet id `pkid`.
    pub fn assigned(&mut self, pkid: u16) {
        if let Some(key) = self.requested.pop_front() {
            self.sent.insert(pkid, key);
        }
    }

    /// The broker acknowledged `pkid`; returns the outbox message it acknowledges.
    pub fn acked(&mut self, pkid: u16) -> Option<Key> {
        self.sent.remove(&pkid).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_pair_with_keys_in_request_order_and_acks_free_room() {
        let mut inflight = Inflight::new(3);
        inflight.request(None);
        inflight.request(Some((2, 10, 0)));
        inflight.request(Some((2, 10, 1)));
        assert!(!inflight.has_room());
        inflight.assigned(1);
        inflight.assigned(2);
        inflight.assigned(3);
        assert_eq!(inflight.acked(3), Some((2, 10, 1)));
        assert_eq!(
            inflight.acked(1),
            None,
            "the status message is not an outbox record"
        );
        assert_eq!(inflight.room(), 2);
        assert_eq!(inflight.acked(2), Some((2, 10, 0)));
        assert_eq!(
            inflight.acked(2),
            None,
            "a duplicate PUBACK frees nothing twice"
        );
    }
}
