//! Passkey ceremonies in progress: the challenge a page gave its browser, kept in memory beside
//! the session until the browser's answer comes back (or [`CEREMONY_TTL`] passes). Never
//! written to disk, like the sessions; a restart forgets them and the page is simply loaded
//! again.
//!
//! One ceremony per session and purpose: a new page replaces the old challenge, and an answer
//! takes its challenge out, so each challenge is answered at most once. At most
//! [`MAX_CEREMONIES`] are kept; beyond that the expired go first, then the oldest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

use crate::people::{CEREMONY_TTL, PendingRegistration, PendingSignIn};

/// Ceremonies kept at most (as many as sessions).
pub const MAX_CEREMONIES: usize = super::sessions::MAX_SESSIONS;

/// What a ceremony is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Adding a passkey on the Passkeys page.
    Register,
    /// Adding a passkey on the set-up page.
    Setup,
    /// The second half of a passkey sign-in.
    SignIn,
}

/// A challenge waiting for its answer.
pub enum Ceremony {
    Registration(PendingRegistration),
    SignIn(PendingSignIn),
}

struct Entry {
    ceremony: Ceremony,
    started: OffsetDateTime,
}

/// The shared table, keyed by session id and purpose. Cheap to clone.
#[derive(Clone, Default)]
pub struct Ceremonies {
    inner: Arc<Mutex<HashMap<(String, Purpose), Entry>>>,
}

impl Ceremonies {
    /// Keeps `ceremony` for `session`, replacing one with the same purpose.
    pub fn put(&self, session: &str, purpose: Purpose, ceremony: Ceremony, now: OffsetDateTime) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, e| now - e.started < CEREMONY_TTL);
        if map.len() >= MAX_CEREMONIES {
            let oldest = map
                .iter()
                .min_by_key(|(_, e)| e.started)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        map.insert(
            (session.to_owned(), purpose),
            Entry {
                ceremony,
                started: now,
            },
        );
    }

    /// Takes `session`'s ceremony for `purpose` out, if it has not expired.
    pub fn take(&self, session: &str, purpose: Purpose, now: OffsetDateTime) -> Option<Ceremony> {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&(session.to_owned(), purpose))
            .filter(|e| now - e.started < CEREMONY_TTL)
            .map(|e| e.ceremony)
    }

    /// Ceremonies held now.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
