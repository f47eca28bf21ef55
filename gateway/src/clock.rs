//! Time as the gateway sees it. A Raspberry Pi has no real-time clock: after a power cut it boots
//! with a stale time until NTP catches up, so every timestamp the gateway records carries whether
//! the clock was synchronised, and certificate time checks are relaxed while it is not (see
//! `tls`). Decision logic takes the time as an argument; only the I/O edges ask a [`Clock`].

use std::sync::Arc;

use time::OffsetDateTime;

/// A source of the current time and of whether it can be trusted.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
    /// Whether the kernel reports the system clock as synchronised (NTP or similar).
    fn synced(&self) -> bool;
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
