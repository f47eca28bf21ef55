//! Pairing rumqttc's packet ids with what each publish was.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::live::Sent;
use crate::outbox::Key;

/// What a publish carries.
#[derive(Debug, Clone)]
pub enum Publish {
    /// The gateway's own status message.
    Status,
    /// A stored message, by its outbox key.
    Stored(Key),
    /// A message sent before it was stored.
    Live(Arc<Sent>),
}

/// Publishes requested but not yet acknowledged.
#[derive(Debug)]
pub struct Inflight {
    window: usize,
    /// Requested, waiting for rumqttc to give them a packet id; in request order.
    requested: VecDeque<Publish>,
    /// Sent with a packet id, waiting for PUBACK.
    sent: HashMap<u16, Publish>,
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

    /// A publish was handed to rumqttc.
    pub fn request(&mut self, publish: Publish) {
        self.requested.push_back(publish);
    }

    /// rumqttc sent the next requested publish with packet id `pkid`.
    pub fn assigned(&mut self, pkid: u16) {
        if let Some(key) = self.requested.pop_front() {
            self.sent.insert(pkid, key);
        }
    }

    /// The outbox keys of messages sent before they were stored, in flight now, whose stored
    /// copy exists: that copy need not be sent too.
    pub fn live_stored(&self) -> std::collections::HashSet<Key> {
        self.requested
            .iter()
            .chain(self.sent.values())
            .filter_map(|p| match p {
                Publish::Live(sent) => sent.stored(),
                _ => None,
            })
            .collect()
    }

    /// The broker acknowledged `pkid`; returns what it acknowledges.
    pub fn acked(&mut self, pkid: u16) -> Option<Publish> {
        self.sent.remove(&pkid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(publish: Option<Publish>) -> Option<Key> {
        match publish {
            Some(Publish::Stored(key)) => Some(key),
            _ => None,
        }
    }

    #[test]
    fn packet_ids_pair_with_keys_in_request_order_and_acks_free_room() {
        let mut inflight = Inflight::new(4);
        inflight.request(Publish::Status);
        inflight.request(Publish::Stored((2, 10, 0)));
        let live = Arc::new(Sent::default());
        inflight.request(Publish::Live(live.clone()));
        inflight.request(Publish::Stored((2, 10, 1)));
        assert!(!inflight.has_room());
        assert!(inflight.live_stored().is_empty());
        assert!(!live.stored_as((2, 11, 0)), "not acknowledged yet");
        assert_eq!(
            inflight.live_stored(),
            [(2, 11, 0)].into(),
            "its stored copy need not be sent while it is in flight"
        );
        for pkid in 1..=4 {
            inflight.assigned(pkid);
        }
        assert_eq!(key(inflight.acked(4)), Some((2, 10, 1)));
        assert!(matches!(inflight.acked(1), Some(Publish::Status)));
        assert!(matches!(inflight.acked(3), Some(Publish::Live(s)) if Arc::ptr_eq(&s, &live)));
        assert_eq!(inflight.room(), 3);
        assert_eq!(key(inflight.acked(2)), Some((2, 10, 0)));
        assert!(
            inflight.acked(2).is_none(),
            "a duplicate PUBACK frees nothing twice"
        );
    }
}
