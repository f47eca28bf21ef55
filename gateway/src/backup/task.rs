//! The daemon's scheduled backups (`[backup].interval`).
//!
//! Waiting is on the monotonic clock (tokio's), so a wall clock stepped by NTP, or set years
//! off after a power cut, neither fires a burst of backups nor stops them. The wall clock only
//! decides the first wait after a start, from the last success's time, and that wait is clamped
//! to one interval.

use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::Backups;

/// The scheduled-backup task.
pub struct BackupTask {
    backups: Backups,
    interval: Duration,
}

/// How long to wait before the next backup, given the last success at `now` (wall clock):
/// what is left of the interval since then, never more than one interval (a last success in the
/// future means the clock was stepped back), nothing when none succeeded yet or it is overdue.
pub fn next_wait(
    interval: Duration,
    last_success: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Duration {
    let Some(last) = last_success else {
        return Duration::ZERO;
    };
    let since = now - last;
    if since.is_negative() {
        return interval;
    }
    interval.saturating_sub(since.unsigned_abs())
}

/// After a failure: try again sooner than a whole interval, but not in a loop.
fn retry_wait(interval: Duration) -> Duration {
    (interval / 4).max(Duration::from_secs(60)).min(interval)
}

impl BackupTask {
    /// The task, when `[backup]` schedules backups.
    pub fn build(backups: &Backups) -> Option<BackupTask> {
        let interval = backups.plan().config.scheduled()?;
        Some(BackupTask {
            backups: backups.clone(),
            interval,
        })
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let last = self
            .backups
            .status()
            .ok()
            .and_then(|s| s.last_success)
            .and_then(|s| super::parse_time(&s.at));
        let mut wait = next_wait(self.interval, last, self.backups.clock.now());
        tracing::info!(
            interval = %humantime::format_duration(self.interval),
            first_in = %humantime::format_duration(Duration::from_secs(wait.as_secs())),
            "Scheduled backups on."
        );
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let backups = self.backups.clone();
            let done = tokio::task::spawn_blocking(move || backups.create(None, "gateway")).await;
            wait = match done {
                Ok(Ok(created)) => {
                    tracing::info!(
                        file = %created.file_name,
                        size = created.size,
                        copies = created.written.len(),
                        skipped = created.warnings.len(),
                        "Backup written."
                    );
                    self.interval
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "Scheduled backup failed.");
                    retry_wait(self.interval)
                }
                Err(e) => {
                    tracing::error!(error = %e, "Scheduled backup task failed.");
                    retry_wait(self.interval)
                }
            };
        }
    }
}
