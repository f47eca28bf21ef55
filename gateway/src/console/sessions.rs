//! Console sessions, kept in memory (a restart signs everyone out; nothing about a session is
//! written to disk). A session id is 256 random bits, sent to the browser only as the
//! `__Host-rxgate_session` cookie (Secure, HttpOnly, SameSite=Strict, path `/`, no domain).
//! Every session, signed in or not, has its own CSRF token (256 random bits) that every form
//! carries and every POST must return.
//!
//! A session ends after `idle` without a request, and `absolute` after it began, however busy;
//! signing in replaces the session (new id, new token), so an id planted before sign-in is
//! worthless after it. At most [`MAX_SESSIONS`] are kept: beyond that the least recently used is
//! forgotten, anonymous ones first.
//!
//! Pure with respect to time: every call takes `now`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

use crate::people::Role;

/// The cookie's name. `__Host-`: the browser accepts it only from a secure origin, with
/// `Path=/` and no `Domain`, so no other host or path can set or shadow it.
pub const COOKIE: &str = "__Host-rxgate_session";

/// Sessions kept at most.
pub const MAX_SESSIONS: usize = 1024;

/// Who is signed in on a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    pub name: String,
    pub roles: Vec<Role>,
}

/// One session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: Option<SignedIn>,
    pub csrf: String,
    pub started: OffsetDateTime,
    pub last_seen: OffsetDateTime,
}

/// What a session id leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Live(Session),
    /// It ended by itself just now (`idle` or `expired`); who was signed in on it, if anyone.
    Ended {
        user: Option<String>,
        reason: &'static str,
    },
    Unknown,
}

/// The shared session table. Cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<String, Session>>>,
    idle: Duration,
    absolute: Duration,
}

/// 256 random bits, hex.
pub fn random_id() -> crate::error::Result<String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(|_| {
        crate::error::Error::Invalid(
            "the system's random number generator failed; a session cannot be made".to_owned(),
        )
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `offered` is the session's CSRF token, compared in constant time.
pub fn csrf_matches(session: &Session, offered: &str) -> bool {
    use subtle::ConstantTimeEq;
    !offered.is_empty()
        && offered.len() == session.csrf.len()
        && bool::from(offered.as_bytes().ct_eq(session.csrf.as_bytes()))
}

/// The `Set-Cookie` value that gives the browser session `id`.
pub fn set_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict")
}

/// The `Set-Cookie` value that makes the browser forget the session.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The session id in a `Cookie` header, if any.
pub fn id_from_cookies(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Sessions {
    pub fn new(idle: Duration, absolute: Duration) -> Sessions {
        Sessions {
            inner: Arc::new(Mutex::new(HashMap::new())),
            idle,
            absolute,
        }
    }

    fn ended(&self, session: &Session, now: OffsetDateTime) -> Option<&'static str> {
        if now - session.started >= self.absolute {
            Some("expired")
        } else if now - session.last_seen >= self.idle {
            Some("idle")
        } else {
            None
        }
    }

    /// A new session (signed in as `user`, or anonymous) and its id.
    pub fn create(
        &self,
        user: Option<SignedIn>,
        now: OffsetDateTime,
    ) -> crate::error::Result<(String, Session)> {
        let id = random_id()?;
        let session = Session {
            user,
            csrf: random_id()?,
            started: now,
            last_seen: now,
        };
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_SESSIONS {
            let stalest = map
                .iter()
                .min_by_key(|(_, s)| (s.user.is_some(), s.last_seen))
                .map(|(id, _)| id.clone());
            if let Some(stalest) = stalest {
                map.remove(&stalest);
            }
        }
        map.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    /// Whether session `id` is live at `now`, without marking it used: a page's live updates are
    /// not activity, so they never hold a session open past its idle limit.
    pub fn is_live(&self, id: &str, now: OffsetDateTime) -> bool {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id).is_some_and(|s| self.ended(s, now).is_none())
    }

    /// The session `id` at `now`, marked as used; an ended one is forgotten.
    pub fn lookup(&self, id: &str, now: OffsetDateTime) -> Lookup {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(session) = map.get_mut(id) else {
            return Lookup::Unknown;
        };
        if let Some(reason) = self.ended(session, now) {
            let user = session.user.as_ref().map(|u| u.name.clone());
            map.remove(id);
            return Lookup::Ended { user, reason };
        }
        session.last_seen = now;
        Lookup::Live(session.clone())
    }

    /// Ends session `id`; returns it if it was there.
    pub fn remove(&self, id: &str) -> Option<Session> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }

    /// Sessions held now.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-12-07 09:00 UTC);

    fn anna() -> SignedIn {
        SignedIn {
            name: "anna".to_owned(),
            roles: vec![Role::Pharmacist],
        }
    }

    fn sessions() -> Sessions {
        Sessions::new(Duration::from_secs(15 * 60), Duration::from_secs(12 * 3600))
    }

    #[test]
    fn a_session_id_and_its_csrf_token_are_256_random_bits_in_hex_and_differ() {
        let (id, session) = sessions().create(None, T0).unwrap();
        assert_eq!(id.len(), 64);
        assert_eq!(session.csrf.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, session.csrf);
        let (other, _) = sessions().create(None, T0).unwrap();
        assert_ne!(id, other);
    }

    #[test]
    fn a_session_unused_for_the_idle_timeout_ends_and_names_who_was_signed_in() {
        let s = sessions();
        let (id, _) = s.create(Some(anna()), T0).unwrap();
        assert!(matches!(
            s.lookup(&id, T0 + time::Duration::minutes(14)),
            Lookup::Live(_)
        ));
        // Used at 14 min: idle counts from there.
        assert!(matches!(
            s.lookup(&id, T0 + time::Duration::minutes(28)),
            Lookup::Live(_)
        ));
        assert_eq!(
            s.lookup(&id, T0 + time::Duration::minutes(43)),
            Lookup::Ended {
                user: Some("anna".to_owned()),
                reason: "idle"
            }
        );
        assert_eq!(
            s.lookup(&id, T0 + time::Duration::minutes(43)),
            Lookup::Unknown
        );
    }

    #[test]
    fn a_busy_session_still_ends_at_the_absolute_timeout() {
        let s = sessions();
        let (id, _) = s.create(Some(anna()), T0).unwrap();
        let mut now = T0;
        while now < T0 + time::Duration::hours(12) - time::Duration::minutes(10) {
            now += time::Duration::minutes(10);
            assert!(matches!(s.lookup(&id, now), Lookup::Live(_)), "at {now}");
        }
        assert_eq!(
            s.lookup(&id, T0 + time::Duration::hours(12)),
            Lookup::Ended {
                user: Some("anna".to_owned()),
                reason: "expired"
            }
        );
    }

    #[test]
    fn the_csrf_check_accepts_only_the_sessions_own_token() {
        let s = sessions();
        let (_, mine) = s.create(None, T0).unwrap();
        let (_, theirs) = s.create(None, T0).unwrap();
        assert!(csrf_matches(&mine, &mine.csrf));
        assert!(!csrf_matches(&mine, &theirs.csrf));
        assert!(!csrf_matches(&mine, ""));
        assert!(!csrf_matches(&mine, &mine.csrf[..63]));
    }

    #[test]
    fn a_full_table_forgets_the_stalest_anonymous_session_before_any_signed_in_one() {
        // Limits far away: only the table's size makes sessions go.
        let s = Sessions::new(Duration::from_secs(86400), Duration::from_secs(2 * 86400));
        let (signed_in, _) = s.create(Some(anna()), T0).unwrap();
        let (oldest_anonymous, _) = s.create(None, T0 + time::Duration::seconds(1)).unwrap();
        for i in 2..MAX_SESSIONS as i64 {
            s.create(None, T0 + time::Duration::seconds(i)).unwrap();
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        s.create(None, T0 + time::Duration::seconds(5000)).unwrap();
        assert_eq!(s.len(), MAX_SESSIONS);
        let now = T0 + time::Duration::seconds(5001);
        assert_eq!(s.lookup(&oldest_anonymous, now), Lookup::Unknown);
        assert!(matches!(s.lookup(&signed_in, now), Lookup::Live(_)));
    }

    #[test]
    fn the_cookie_is_host_prefixed_secure_http_only_and_same_site_strict() {
        assert_eq!(
            set_cookie("ab"),
            "__Host-rxgate_session=ab; Path=/; Secure; HttpOnly; SameSite=Strict"
        );
        let id = "a".repeat(64);
        assert_eq!(
            id_from_cookies(&format!("x=1; __Host-rxgate_session={id}; y=2")),
            Some(id.as_str())
        );
        assert_eq!(id_from_cookies("__Host-rxgate_session=not-hex"), None);
        assert_eq!(id_from_cookies("rxgate_session=".to_owned().as_str()), None);
    }
}
