//! Per-source request rate limiting (token bucket), for the EST listener.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sources tracked at most; beyond it, full (idle) buckets are forgotten.
const MAX_SOURCES: usize = 4096;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A token bucket per source address: `per_minute` sustained, `burst` at once.
#[derive(Debug)]
pub struct RateLimiter {
    rate_per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32, burst: u32) -> Self {
        RateLimiter {
            rate_per_sec: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `source` at `now`. `Err(wait)`: refused, retry after `wait`.
    pub fn check(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_SOURCES && !buckets.contains_key(&source) {
            let (rate, burst) = (self.rate_per_sec, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(source).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate_per_sec).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - bucket.tokens;
            Err(
                Duration::from_secs_f64(missing / self.rate_per_sec.max(f64::MIN_POSITIVE))
                    .max(Duration::from_secs(1)),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_burst_then_is_refused_until_tokens_refill() {
        let limiter = RateLimiter::new(60, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(ip, t0).is_ok());
        }
        let wait = limiter.check(ip, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(limiter.check(ip, t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn sources_are_limited_independently() {
        let limiter = RateLimiter::new(60, 1);
        let t0 = Instant::now();
        assert!(limiter.check("192.0.2.1".parse().unwrap(), t0).is_ok());
        assert!(limiter.check("192.0.2.1".parse().unwrap(), t0).is_err());
        assert!(limiter.check("192.0.2.2".parse().unwrap(), t0).is_ok());
    }
}
