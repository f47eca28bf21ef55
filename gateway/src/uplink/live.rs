//! Telemetry sent to the cloud before it is stored.
//!
//! While the uplink is connected and has sent everything the outbox held, the pipeline hands it
//! each telemetry message as soon as the message is shaped, numbered from its stream's reserved
//! block ([`crate::outbox::Outbox::live_seq`]). When the batch is due, the pipeline stores only
//! the messages whose [`Sent`] the cloud's PUBACK has not marked: the cloud has the others, and
//! the outbox never writes them. A message is therefore safe (in the cloud, or in a synced
//! commit) before its device is told it is accepted, and reaches the cloud without waiting for
//! the batch.
//!
//! A message stored because the cloud's PUBACK came after its batch was due is not sent again
//! by the same connection: the uplink skips its stored copy while the live one is in flight,
//! and acknowledges the stored copy when that PUBACK comes. A message handed over in one
//! connection is never published in another: after a reconnect the outbox, which the pipeline
//! fills with every message not acknowledged, sends it again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

use crate::outbox::Key;

/// One message sent before it was stored: whether the cloud acknowledged it, and where it was
/// stored if its batch came first.
#[derive(Debug, Default)]
pub struct Sent {
    state: Mutex<SentState>,
}

#[derive(Debug, Default)]
struct SentState {
    acked: bool,
    stored: Option<Key>,
}

impl Sent {
    pub fn acked(&self) -> bool {
        self.lock().acked
    }

    /// It was stored as `key`; returns whether the cloud had acknowledged it already (then the
    /// stored copy is acknowledged to the outbox by whoever learns it second: this caller).
    pub fn stored_as(&self, key: Key) -> bool {
        let mut state = self.lock();
        state.stored = Some(key);
        state.acked
    }

    /// Where it was stored, if it was.
    pub fn stored(&self) -> Option<Key> {
        self.lock().stored
    }

    /// The cloud acknowledged it; returns its outbox key if it was stored already.
    fn ack(&self) -> Option<Key> {
        let mut state = self.lock();
        state.acked = true;
        state.stored
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SentState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A message for the uplink to publish now.
#[derive(Debug)]
pub struct LiveMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    /// The connection it was handed over for.
    pub session: u64,
    pub sent: Arc<Sent>,
}

#[derive(Debug)]
struct Shared {
    /// The connection taking messages now; 0 while there is none.
    session: AtomicU64,
    /// [`crate::outbox::Outbox::appends`] as it was when the uplink last found every lane sent;
    /// `u64::MAX` while it has not.
    caught_up_at: AtomicU64,
    /// Woken whenever the cloud acknowledges a message sent before it was stored.
    acked: Notify,
}

/// The pipeline's end.
#[derive(Debug, Clone)]
pub struct Live {
    shared: Arc<Shared>,
    tx: mpsc::Sender<LiveMessage>,
}

/// The uplink's end.
#[derive(Debug)]
pub struct LiveReceiver {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<LiveMessage>,
}

/// A channel holding at most `capacity` messages on their way to the uplink.
pub fn channel(capacity: usize) -> (Live, LiveReceiver) {
    let shared = Arc::new(Shared {
        session: AtomicU64::new(0),
        caught_up_at: AtomicU64::new(u64::MAX),
        acked: Notify::new(),
    });
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        Live {
            shared: shared.clone(),
            tx,
        },
        LiveReceiver { shared, rx },
    )
}

impl Live {
    /// The connection to hand messages to, if the uplink is connected and has sent everything
    /// appended up to `appends` (the outbox's count now): a message sent now cannot overtake a
    /// stored one.
    pub fn ready(&self, appends: u64) -> Option<u64> {
        let session = self.shared.session.load(Ordering::Acquire);
        (session != 0 && self.shared.caught_up_at.load(Ordering::Acquire) == appends)
            .then_some(session)
    }

    /// Whether the uplink has room for a message now. Only the pipeline sends, so room it sees
    /// stays until it sends.
    pub fn has_room(&self) -> bool {
        self.tx.capacity() > 0
    }

    /// Hands `message` over; `false` if the uplink has no room for it now.
    pub fn send(&self, message: LiveMessage) -> bool {
        self.tx.try_send(message).is_ok()
    }

    /// Resolves when every one of `sent` is acknowledged, or at `until`.
    pub async fn acked_by(&self, sent: &[Arc<Sent>], until: tokio::time::Instant) {
        // Acknowledgements come mostly in the order of sending: each wake looks on from the
        // first one not yet acknowledged, so a batch costs one pass, not one per wake.
        let mut acked = 0;
        let _ = tokio::time::timeout_at(until, async {
            loop {
                let notified = self.shared.acked.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                while sent.get(acked).is_some_and(|s| s.acked()) {
                    acked += 1;
                }
                if acked == sent.len() {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }
}

impl LiveReceiver {
    /// A connection is up: messages handed over from now on are for `session`.
    pub(crate) fn open(&self, session: u64) {
        self.shared.caught_up_at.store(u64::MAX, Ordering::Release);
        self.shared.session.store(session, Ordering::Release);
    }

    /// The connection is gone: nothing more is handed over until the next one.
    pub(crate) fn close(&self) {
        self.shared.session.store(0, Ordering::Release);
        self.shared.caught_up_at.store(u64::MAX, Ordering::Release);
    }

    /// Every lane was read to its end as the outbox's append count was `appends`.
    pub(crate) fn caught_up(&self, appends: u64) {
        self.shared.caught_up_at.store(appends, Ordering::Release);
    }

    /// Something stored is still to be sent.
    pub(crate) fn behind(&self) {
        self.shared.caught_up_at.store(u64::MAX, Ordering::Release);
    }

    /// The cloud acknowledged `sent`; returns its outbox key if it was stored meanwhile (the
    /// stored copy is then acknowledged too, and not sent again). The pipeline hears of it at
    /// the next [`LiveReceiver::tell_acked`].
    pub(crate) fn acked(&self, sent: &Sent) -> Option<Key> {
        sent.ack()
    }

    /// Wakes the pipeline's wait for acknowledgements: once for every burst of them.
    pub(crate) fn tell_acked(&self) {
        self.shared.acked.notify_waiters();
    }

    /// The next message handed over for `session`; those handed over for an earlier connection
    /// are dropped (the pipeline stores them, unacknowledged).
    pub(crate) async fn recv(&mut self, session: u64) -> Option<LiveMessage> {
        loop {
            let message = self.rx.recv().await?;
            if message.session == session {
                return Some(message);
            }
        }
    }

    /// [`LiveReceiver::recv`] without waiting: `None` when nothing for `session` is waiting.
    pub(crate) fn try_recv(&mut self, session: u64) -> Option<LiveMessage> {
        loop {
            let message = self.rx.try_recv().ok()?;
            if message.session == session {
                return Some(message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_go_over_only_while_connected_and_caught_up_and_only_for_their_session() {
        let (live, mut rx) = channel(4);
        assert_eq!(live.ready(0), None, "not connected");
        rx.open(1);
        assert_eq!(live.ready(0), None, "not caught up yet");
        rx.caught_up(5);
        assert_eq!(live.ready(4), None, "something was appended since");
        assert_eq!(live.ready(5), Some(1));
        let message = |session| LiveMessage {
            topic: "t".to_owned(),
            payload: Vec::new(),
            session,
            sent: Arc::new(Sent::default()),
        };
        assert!(live.send(message(1)));
        rx.close();
        assert_eq!(live.ready(5), None);
        rx.open(2);
        rx.caught_up(5);
        assert!(live.send(message(2)));
        assert!(live.send(message(1)));
        assert!(live.send(message(2)));
        let got = rx.recv(2).await.unwrap();
        assert_eq!(got.session, 2, "the first session's message was dropped");
        let got = rx.try_recv(2).expect("waiting for session 2");
        assert_eq!(got.session, 2, "an earlier session's message was dropped");
        assert!(rx.try_recv(2).is_none(), "nothing more is waiting");
    }

    #[tokio::test(start_paused = true)]
    async fn the_pipeline_waits_for_acknowledgements_until_all_came_or_time_is_up() {
        let (live, rx) = channel(4);
        let sent: Vec<Arc<Sent>> = (0..2).map(|_| Arc::new(Sent::default())).collect();
        let start = tokio::time::Instant::now();
        let until = start + std::time::Duration::from_millis(100);
        let waiting = {
            let live = live.clone();
            let sent = sent.clone();
            tokio::spawn(async move { live.acked_by(&sent, until).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        rx.acked(&sent[0]);
        rx.acked(&sent[1]);
        rx.tell_acked();
        waiting.await.unwrap();
        assert!(start.elapsed() < std::time::Duration::from_millis(100));
        let unacked = [Arc::new(Sent::default())];
        live.acked_by(&unacked, start + std::time::Duration::from_millis(300))
            .await;
        assert!(start.elapsed() >= std::time::Duration::from_millis(300));
    }
}
