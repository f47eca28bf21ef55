//! Time as the gateway sees it. A Raspberry Pi has no real-time clock: after a power cut it boots
//! with a stale time until NTP catches up, so every timestamp the gateway records carries whether
//! the clock was synchronised, and certificate time checks are relaxed while it is not (see
//! `tls`). Decision logic takes the time as an argument ([`TimeReading`]); only the I/O edges ask
//! a [`Clock`].
//!
//! Relaxed is not absent: the running gateway keeps a *time floor* ([`TimeFloor`]), the latest
//! time it knows has passed (its build time, the newest synchronised time it stored, the newest
//! synchronised audit entry; see [`floor`]). Its `now()` is never earlier than the floor, and
//! while the clock is unsynchronised a certificate that expired before the floor is still
//! expired: blocking NTP does not bring a stolen, expired certificate back to life.

pub mod floor;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use time::OffsetDateTime;

/// A source of the current time and of whether it can be trusted.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
    /// Whether the kernel reports the system clock as synchronised (NTP or similar).
    fn synced(&self) -> bool;
    /// Everything known about the time at this instant, for decisions that take it as input.
    /// A clock without a floor reports none.
    fn reading(&self) -> TimeReading {
        TimeReading {
            clock: self.now(),
            synced: self.synced(),
            floor: None,
        }
    }
}

/// One look at the time: what the clock says, whether it is synchronised, and the time floor (the
/// latest time known to have passed). Plain data, so time decisions are pure functions of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeReading {
    /// The wall clock's own reading, not raised to the floor.
    pub clock: OffsetDateTime,
    pub synced: bool,
    pub floor: Option<OffsetDateTime>,
}

impl TimeReading {
    /// The gateway's time: the clock, but never earlier than the floor.
    pub fn now(&self) -> OffsetDateTime {
        match self.floor {
            Some(floor) if floor > self.clock => floor,
            _ => self.clock,
        }
    }

    /// Whether the clock reads earlier than the floor, so [`TimeReading::now`] is the floor.
    pub fn raised(&self) -> bool {
        self.floor.is_some_and(|floor| floor > self.clock)
    }

    /// The time a certificate's notAfter is judged against, if any: the gateway's time on a
    /// synchronised clock; on an unsynchronised one only the floor, which is known to have passed
    /// (the clock itself may be anywhere, and a clock running ahead must not expire every device).
    pub fn expiry_reference(&self) -> Option<ExpiryReference> {
        if self.synced {
            Some(ExpiryReference::Clock(self.now()))
        } else {
            self.floor.map(ExpiryReference::Floor)
        }
    }
}

/// What expiry is checked against; see [`TimeReading::expiry_reference`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryReference {
    /// The synchronised clock (raised to the floor).
    Clock(OffsetDateTime),
    /// The time floor, while the clock is unsynchronised.
    Floor(OffsetDateTime),
}

impl ExpiryReference {
    pub fn at(self) -> OffsetDateTime {
        match self {
            ExpiryReference::Clock(t) | ExpiryReference::Floor(t) => t,
        }
    }
}

/// A clock that never goes below the latest trustworthy time the gateway has seen. `now()` is
/// `max(inner.now(), floor)`; `synced()` is the inner clock's. The floor only moves forward: to
/// synchronised readings of the inner clock ([`TimeFloor::observe`]) and to stored times
/// ([`TimeFloor::raise`]). [`floor::FloorKeeper`] persists it.
pub struct TimeFloor {
    inner: SharedClock,
    /// Unix time in nanoseconds (an i64 holds them until 2262).
    floor_ns: AtomicI64,
}

impl std::fmt::Debug for TimeFloor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeFloor")
            .field("floor", &self.floor())
            .finish_non_exhaustive()
    }
}

fn to_ns(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(if t.year() < 1970 {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn from_ns(ns: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl TimeFloor {
    pub fn new(inner: SharedClock, floor: OffsetDateTime) -> Arc<Self> {
        Arc::new(TimeFloor {
            inner,
            floor_ns: AtomicI64::new(to_ns(floor)),
        })
    }

    /// The latest time known to have passed.
    pub fn floor(&self) -> OffsetDateTime {
        from_ns(self.floor_ns.load(Ordering::Relaxed))
    }

    /// Moves the floor up to `to` (never down).
    pub fn raise(&self, to: OffsetDateTime) {
        self.floor_ns.fetch_max(to_ns(to), Ordering::Relaxed);
    }

    /// Takes the inner clock's reading into the floor if the clock is synchronised; returns the
    /// reading taken.
    pub fn observe(&self) -> TimeReading {
        let reading = self.reading();
        if reading.synced {
            self.raise(reading.clock);
        }
        reading
    }

    /// Whether `now()` is raised to the floor right now (the clock reads earlier).
    pub fn raised(&self) -> bool {
        self.reading().raised()
    }
}

impl Clock for TimeFloor {
    // Not through `reading()`: that asks the kernel whether the clock is synchronised, which
    // `now()` does not need.
    fn now(&self) -> OffsetDateTime {
        self.inner.now().max(self.floor())
    }

    fn synced(&self) -> bool {
        self.inner.synced()
    }

    fn reading(&self) -> TimeReading {
        let inner = self.inner.reading();
        let floor = match inner.floor {
            Some(other) => other.max(self.floor()),
            None => self.floor(),
        };
        TimeReading {
            floor: Some(floor),
            ..inner
        }
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// The system clock, with synchronisation read from the kernel (`adjtimex`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn synced(&self) -> bool {
        kernel_clock_synced()
    }
}

/// `adjtimex(2)` in read-only mode: the clock is synchronised unless the kernel says
/// `TIME_ERROR` / `STA_UNSYNC`. Where the call fails we assume it is not.
fn kernel_clock_synced() -> bool {
    // SAFETY: `timex` is plain data; modes = 0 makes adjtimex read-only.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    state >= 0 && state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0
}

/// A clock for tests: a fixed time that the test moves, and a synchronised flag it sets.
#[derive(Debug)]
pub struct ManualClock {
    state: std::sync::Mutex<(OffsetDateTime, bool)>,
}

impl ManualClock {
    pub fn new(now: OffsetDateTime, synced: bool) -> Arc<Self> {
        Arc::new(ManualClock {
            state: std::sync::Mutex::new((now, synced)),
        })
    }

    pub fn advance(&self, by: std::time::Duration) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 += by;
    }

    /// Sets the time, forwards or back (a power cut, a clock stepped by NTP).
    pub fn set(&self, now: OffsetDateTime) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 = now;
    }

    pub fn set_synced(&self, synced: bool) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = synced;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    fn synced(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

/// A clock whose time is the system's but which is declared synchronised: for hardware with a
/// battery-backed RTC, and containers where `adjtimex` does not tell (`[gateway].assume_clock_synced`).
#[derive(Debug, Default, Clone, Copy)]
pub struct TrustedSystemClock;

impl Clock for TrustedSystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn synced(&self) -> bool {
        true
    }
}

/// A clock that follows tokio's clock from a starting wall time: with tokio's paused time in
/// tests, time-dependent logic sees exactly the time the test advances.
#[derive(Debug)]
pub struct TokioClock {
    start_wall: OffsetDateTime,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new(start_wall: OffsetDateTime) -> Arc<Self> {
        Arc::new(TokioClock {
            start_wall,
            start: tokio::time::Instant::now(),
        })
    }
}

impl Clock for TokioClock {
    fn now(&self) -> OffsetDateTime {
        self.start_wall + self.start.elapsed()
    }

    fn synced(&self) -> bool {
        true
    }
}

/// The clock a gateway with this setting uses.
pub fn system(assume_synced: bool) -> SharedClock {
    if assume_synced {
        Arc::new(TrustedSystemClock)
    } else {
        Arc::new(SystemClock)
    }
}

/// RFC 3339 in UTC with millisecond precision: how timestamps are stored as text and sent.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.checked_to_offset(time::UtcOffset::UTC).unwrap_or(t);
    let t = t.replace_millisecond(t.millisecond()).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// RFC 3339 in UTC to the second: how the CLI shows times.
pub fn rfc3339_seconds(t: OffsetDateTime) -> String {
    let t = t.checked_to_offset(time::UtcOffset::UTC).unwrap_or(t);
    rfc3339(t.replace_nanosecond(0).unwrap_or(t))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const FLOOR: OffsetDateTime = datetime!(2026-05-01 08:00 UTC);

    #[test]
    fn now_is_raised_to_the_floor_while_the_clock_reads_earlier_and_synced_is_the_clocks() {
        let clock = ManualClock::new(FLOOR - time::Duration::days(30), false);
        let floored = TimeFloor::new(clock.clone(), FLOOR);
        assert_eq!(floored.now(), FLOOR);
        assert!(floored.raised());
        assert!(!floored.synced());
        let reading = floored.reading();
        assert_eq!(reading.clock, FLOOR - time::Duration::days(30));
        assert_eq!(reading.floor, Some(FLOOR));
        assert_eq!(
            reading.expiry_reference(),
            Some(ExpiryReference::Floor(FLOOR))
        );

        clock.advance(std::time::Duration::from_secs(31 * 86400));
        assert_eq!(floored.now(), FLOOR + time::Duration::days(1));
        assert!(!floored.raised());
    }

    #[test]
    fn the_floor_follows_only_synchronised_readings_and_never_moves_down() {
        let clock = ManualClock::new(FLOOR + time::Duration::hours(1), false);
        let floored = TimeFloor::new(clock.clone(), FLOOR);
        floored.observe();
        assert_eq!(
            floored.floor(),
            FLOOR,
            "an unsynchronised reading is not trusted"
        );
        clock.set_synced(true);
        floored.observe();
        assert_eq!(floored.floor(), FLOOR + time::Duration::hours(1));
        floored.raise(FLOOR);
        assert_eq!(floored.floor(), FLOOR + time::Duration::hours(1));
    }

    #[test]
    fn a_synchronised_clock_is_judged_by_its_time_raised_to_the_floor_and_one_without_a_floor_by_nothing_while_unsynchronised()
     {
        let behind = TimeReading {
            clock: FLOOR - time::Duration::hours(2),
            synced: true,
            floor: Some(FLOOR),
        };
        assert_eq!(
            behind.expiry_reference(),
            Some(ExpiryReference::Clock(FLOOR))
        );
        let unsynced_without_floor = TimeReading {
            clock: FLOOR,
            synced: false,
            floor: None,
        };
        assert_eq!(unsynced_without_floor.expiry_reference(), None);
    }
}
