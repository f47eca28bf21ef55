//! Notification channels: one [`Worker`] per channel delivers that channel's durable queue
//! ([`NotifyQueue`]) through a [`Deliver`] (e-mail, webhook; the cloud and local broker live
//! with the monitor), and the GPIO outputs ([`gpio`]), which are driven directly.
//!
//! Each worker is its own task, so a dead SMTP server never delays another channel. It delivers
//! its queue in order: it takes the head entry, delivers it, and removes it only then, so a
//! notification survives restarts and is delivered *at least once* (a crash or shutdown between
//! delivery and removal sends it again; receivers de-duplicate on alert id, event and `at`).
//! A transient failure ([`DeliveryError::Retry`]) retries the same entry after a backoff of 1 s
//! doubling to 5 min, with jitter; a permanent one ([`DeliveryError::Drop`]: an address every
//! server refuses, a 4xx from a webhook) is logged, counted and removed, so one bad entry cannot
//! block the queue forever.

pub mod email;
pub mod gpio;
pub mod webhook;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::queue::{Channel, NotifyQueue};
use super::record::Notification;
use crate::watchdog::Progress;

/// What [`Deliver::deliver`] returns.
pub type DeliveryFuture<'a> = Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send + 'a>>;

/// One way of getting a notification to people.
pub trait Deliver: Send + Sync + 'static {
    /// The queue this deliverer serves.
    fn channel(&self) -> Channel;
    /// Delivers one notification. Must bound its own time (connection, TLS, reply): the worker
    /// waits for it.
    fn deliver<'a>(&'a self, n: &'a Notification) -> DeliveryFuture<'a>;
    /// The bound on one delivery, when the deliverer has one (its `timeout`): the watchdog
    /// counts a delivery as stuck only once it overruns it.
    fn time_limit(&self) -> Option<Duration> {
        None
    }
}

/// Why a delivery failed, and so what the worker does with the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Transient (server down, timeout, 5xx, 429): the same entry is retried with backoff.
    #[error("{0}")]
    Retry(String),
    /// Permanent (every address refused, a 4xx from a webhook): logged, counted, dropped.
    #[error("{0}")]
    Drop(String),
}

/// First wait after a failed delivery; it doubles after each further failure.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);

/// The wait before attempt `attempt + 1`, after `attempt` (≥ 1) failures: 1 s doubling to 5 min,
/// of which a random part (up to a quarter, from `random`) is taken off so that gateways do not
/// hammer a shared server in step.
pub fn backoff(attempt: u32, random: u32) -> Duration {
    let doubled = BACKOFF_MIN.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    let base = doubled.min(BACKOFF_MAX);
    let jitter = base / 4 * (random % 1024) / 1024;
    base - jitter
}

fn random_u32() -> u32 {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 4];
    // Jitter only; without randomness the backoff is merely unjittered.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    u32::from_le_bytes(bytes)
}

/// What a worker did, for tests and status output.
#[derive(Debug, Default)]
pub struct Counters {
    /// Notifications delivered.
    pub delivered: AtomicU64,
    /// Failed attempts that will be retried.
    pub retries: AtomicU64,
    /// Notifications dropped after a permanent failure.
    pub dropped: AtomicU64,
}

impl Counters {
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Called after each successful delivery with the alert id and the channel.
pub type OnDelivered = Box<dyn Fn(Uuid, Channel) + Send + Sync>;

/// Delivers one channel's queue.
pub struct Worker<D> {
    queue: NotifyQueue,
    deliver: D,
    delivered: OnDelivered,
    counters: Arc<Counters>,
    progress: Progress,
}

impl<D: Deliver> Worker<D> {
    pub fn new(queue: NotifyQueue, deliver: D, delivered: OnDelivered) -> Worker<D> {
        Worker {
            queue,
            deliver,
            delivered,
            counters: Arc::default(),
            progress: Progress::untracked(),
        }
    }

    /// The channel this worker delivers.
    pub fn channel(&self) -> Channel {
        self.deliver.channel()
    }

    /// Reports each delivery to the watchdog.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Shared with the running worker.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Delivers until `shutdown`. A delivery in progress at shutdown is abandoned; its entry
    /// stays queued and is delivered after the restart.
    pub async fn run(self, shutdown: CancellationToken) {
        let channel = self.deliver.channel();
        // Failed attempts at the current head entry (or at reading the store).
        let mut failures: u32 = 0;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let head = match self.queue.head(channel) {
                Ok(head) => head,
                Err(e) => {
                    failures += 1;
                    let wait = backoff(failures, random_u32());
                    tracing::error!(channel = channel.as_str(), error = %e, retry_in = ?wait, "Cannot read the notification queue.");
                    if !sleep_or_shutdown(wait, &shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            let Some((n, notification)) = head else {
                failures = 0;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.queue.woken(channel) => continue,
                }
            };
            let attempt = failures + 1;
            let alert = &notification.alert;
            let work = match self.deliver.time_limit() {
                Some(limit) => self.progress.working_within(limit),
                None => self.progress.working(),
            };
            let result = tokio::select! {
                _ = shutdown.cancelled() => break,
                result = self.deliver.deliver(&notification) => result,
            };
            drop(work);
            match result {
                Ok(()) => {
                    tracing::info!(
                        alert = %alert.id,
                        device = %alert.device,
                        channel = channel.as_str(),
                        event = notification.event.as_str(),
                        attempt,
                        "Notification delivered."
                    );
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    failures = 0;
                    (self.delivered)(alert.id, channel);
                    if !self.remove(channel, n, &shutdown).await {
                        break;
                    }
                }
                Err(DeliveryError::Drop(reason)) => {
                    tracing::error!(
                        alert = %alert.id,
                        device = %alert.device,
                        channel = channel.as_str(),
                        event = notification.event.as_str(),
                        attempt,
                        error = %reason,
                        "Notification refused for good; dropping it."
                    );
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    failures = 0;
                    if !self.remove(channel, n, &shutdown).await {
                        break;
                    }
                }
                Err(DeliveryError::Retry(reason)) => {
                    failures += 1;
                    let wait = backoff(failures, random_u32());
                    tracing::warn!(
                        alert = %alert.id,
                        device = %alert.device,
                        channel = channel.as_str(),
                        event = notification.event.as_str(),
                        attempt,
                        retry_in = %humantime::format_duration(wait),
                        error = %reason,
                        "Notification not delivered; will retry."
                    );
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    if !sleep_or_shutdown(wait, &shutdown).await {
                        break;
                    }
                }
            }
        }
        tracing::debug!(channel = channel.as_str(), "Notification worker stopped.");
    }

    /// Removes entry `n`, retrying a failing store; false on shutdown.
    async fn remove(&self, channel: Channel, n: u64, shutdown: &CancellationToken) -> bool {
        let mut failures = 0;
        loop {
            match self.queue.remove(channel, n) {
                Ok(()) => return true,
                Err(e) => {
                    failures += 1;
                    let wait = backoff(failures, random_u32());
                    tracing::error!(channel = channel.as_str(), error = %e, retry_in = ?wait, "Cannot remove a delivered notification from the queue.");
                    if !sleep_or_shutdown(wait, shutdown).await {
                        return false;
                    }
                }
            }
        }
    }
}

/// Sleeps `wait`; false if shutdown came first.
async fn sleep_or_shutdown(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

#[cfg(test)]
mod tests;
