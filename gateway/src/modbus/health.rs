//! Whether a device is online, and when to try it next: pure state, no clock, no I/O.

use std::hash::BuildHasher;
use std::time::Duration;

/// A change the poller reports as `Intake::Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    Online,
    Offline,
}

/// Counts failed polls in a row and decides when the device's status changes.
///
/// The first successful poll after start reports `Online`; `offline_after` failed polls in a
/// row report `Offline` (also when the device was never reached since start); the first
/// success after that reports `Online` again. Nothing is reported twice in a row.
#[derive(Debug, Clone)]
pub struct Health {
    offline_after: u32,
    failures: u32,
    reported: Option<StatusChange>,
}

impl Health {
    pub fn new(offline_after: u32) -> Health {
        Health {
            offline_after: offline_after.max(1),
            failures: 0,
            reported: None,
        }
    }

    /// Failed polls in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn is_offline(&self) -> bool {
        self.reported == Some(StatusChange::Offline)
    }

    pub fn success(&mut self) -> Option<StatusChange> {
        self.failures = 0;
        self.report(StatusChange::Online)
    }

    pub fn failure(&mut self) -> Option<StatusChange> {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.offline_after {
            self.report(StatusChange::Offline)
        } else {
            None
        }
    }

    fn report(&mut self, change: StatusChange) -> Option<StatusChange> {
        if self.reported == Some(change) {
            None
        } else {
            self.reported = Some(change);
            Some(change)
        }
    }
}

/// The wait from the start of one poll to the start of the next.
///
/// Healthy, and for the first failures until the device counts as offline: `poll_interval`, so
/// an outage is detected after `offline_after` intervals. Offline: doubling from twice
/// `poll_interval` up to `max_backoff`, less up to a quarter at random (`jitter` in `[0, 1)`),
/// so that devices that went down together (a switch rebooting) do not retry in lockstep. Never
/// less than `poll_interval` (or `max_backoff` if that is shorter), never more than
/// `max_backoff`; there is no last attempt.
pub fn next_delay(
    failures: u32,
    offline_after: u32,
    poll_interval: Duration,
    max_backoff: Duration,
    jitter: f64,
) -> Duration {
    if failures < offline_after.max(1) {
        return poll_interval;
    }
    let doublings = (failures - offline_after.max(1) + 1).min(32);
    let base = poll_interval
        .checked_mul(1u32 << doublings.min(31))
        .unwrap_or(max_backoff)
        .min(max_backoff);
    let jittered = base.mul_f64(1.0 - 0.25 * jitter.clamp(0.0, 1.0));
    jittered.max(poll_interval.min(max_backoff))
}

/// A small random source for backoff jitter (xorshift64*), seeded per device from the
/// process's random hasher keys: no cryptographic quality needed, no dependency.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed_from: &str) -> Jitter {
        Jitter(std::collections::hash_map::RandomState::new().hash_one(seed_from) | 1)
    }

    /// A number in `[0, 1)`.
    pub fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn first_success_after_start_reports_online_once() {
        let mut h = Health::new(3);
        assert_eq!(h.success(), Some(StatusChange::Online));
        assert_eq!(h.success(), None);
    }

    #[test]
    fn offline_is_reported_after_n_failures_in_a_row_and_online_on_the_next_success() {
        let mut h = Health::new(3);
        assert_eq!(h.success(), Some(StatusChange::Online));
        assert_eq!(h.failure(), None);
        assert_eq!(h.failure(), None);
        assert_eq!(
            h.success(),
            None,
            "two failures then a success is no outage"
        );
        assert_eq!(h.failure(), None);
        assert_eq!(h.failure(), None);
        assert_eq!(h.failure(), Some(StatusChange::Offline));
        assert!(h.is_offline());
        assert_eq!(h.failure(), None);
        assert_eq!(h.failures(), 4);
        assert_eq!(h.success(), Some(StatusChange::Online));
        assert_eq!(h.failures(), 0);
    }

    #[test]
    fn a_device_never_reached_since_start_is_reported_offline() {
        let mut h = Health::new(2);
        assert_eq!(h.failure(), None);
        assert_eq!(h.failure(), Some(StatusChange::Offline));
        assert_eq!(h.success(), Some(StatusChange::Online));
    }

    #[test]
    fn delay_is_the_poll_interval_until_offline_then_doubles_up_to_max_backoff() {
        let max = Duration::from_secs(60);
        let d = |failures| next_delay(failures, 3, 5 * S, max, 0.0);
        assert_eq!([d(0), d(1), d(2)], [5 * S, 5 * S, 5 * S]);
        assert_eq!([d(3), d(4), d(5), d(6)], [10 * S, 20 * S, 40 * S, 60 * S]);
        assert_eq!(d(1000), 60 * S, "never gives up, never exceeds max_backoff");
        assert_eq!(d(u32::MAX), 60 * S);
    }

    #[test]
    fn jitter_shortens_by_at_most_a_quarter_and_stays_within_bounds() {
        let max = Duration::from_secs(60);
        let mut jitter = Jitter::new("fridge-01");
        for failures in 3..40 {
            let j = jitter.next_unit();
            assert!((0.0..1.0).contains(&j));
            let d = next_delay(failures, 3, 5 * S, max, j);
            let full = next_delay(failures, 3, 5 * S, max, 0.0);
            assert!(
                d <= full && d >= full.mul_f64(0.75) && d >= 5 * S,
                "{d:?} vs {full:?}"
            );
        }
        assert_eq!(next_delay(9, 3, 5 * S, 5 * S, 0.99), 5 * S);
    }

    #[test]
    fn jitter_sources_for_different_devices_differ() {
        let a: Vec<f64> = (0..4)
            .map({
                let mut j = Jitter::new("a");
                move |_| j.next_unit()
            })
            .collect();
        let b: Vec<f64> = (0..4)
            .map({
                let mut j = Jitter::new("b");
                move |_| j.next_unit()
            })
            .collect();
        assert_ne!(a, b);
    }
}
