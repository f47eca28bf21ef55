//! systemd's service manager protocol (`sd_notify`): `READY=1` once the gateway is built and
//! every listener is bound, `WATCHDOG=1` while every watched component is making progress, and
//! `STOPPING=1` at shutdown. Without `NOTIFY_SOCKET` (not started by systemd) it does nothing.
//!
//! A watched component (the pipeline, the uplink, each Modbus poller, each alert channel) holds
//! a [`Progress`] and marks each unit of work with [`Progress::working`] or, for work with a
//! timeout of its own, [`Progress::working_within`]. Waiting for work is not being stuck; a
//! unit of work that has lasted longer than the stall limit (half of `WATCHDOG_USEC`), or than
//! its own bound plus the stall limit, is. While any is stuck the heartbeat stops, the
//! `STATUS=` line names the component, and systemd restarts the service once `WatchdogSec`
//! has passed since the last heartbeat. Elapsed time is measured on the monotonic clock, so a
//! wall clock that jumps neither stops the heartbeat nor hides a stuck component.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where notifications go and how often the heartbeat is due.
#[derive(Debug, Clone, Default)]
pub struct NotifySettings {
    /// `NOTIFY_SOCKET`: a path, or `@name` for an abstract socket.
    pub socket: Option<String>,
    /// `WATCHDOG_USEC`, when `WATCHDOG_PID` is unset or this process.
    pub watchdog: Option<Duration>,
}

impl NotifySettings {
    /// What systemd put in the environment.
    pub fn from_env() -> NotifySettings {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty());
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us)
            .map(Duration::from_micros);
        NotifySettings { socket, watchdog }
    }
}

/// The components being watched, and the link to the service manager.
#[derive(Clone)]
pub struct Watchdog {
    inner: Arc<Inner>,
}

struct Inner {
    settings: NotifySettings,
    base: Instant,
    slots: Mutex<Vec<Weak<Slot>>>,
}

struct Slot {
    name: String,
    /// 0 when idle; otherwise when the current unit of work started, in ms since `base`, plus 1.
    since: AtomicU64,
    /// The current unit's own bound in ms (0: none).
    bound: AtomicU64,
}

/// A component's progress, as the watchdog sees it. Cloning shares it; one unit of work at a
/// time per `Progress`.
#[derive(Clone)]
pub struct Progress {
    slot: Option<Arc<Slot>>,
    base: Instant,
}

/// A unit of work in progress; it ends when dropped.
#[must_use = "the unit of work ends when this is dropped"]
pub struct Working {
    slot: Option<Weak<Slot>>,
}

impl Drop for Working {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.as_ref().and_then(Weak::upgrade) {
            slot.since.store(0, Ordering::Release);
        }
    }
}

impl Progress {
    /// A progress nobody watches (components built outside a daemon, in tests).
    pub fn untracked() -> Progress {
        Progress {
            slot: None,
            base: Instant::now(),
        }
    }

    /// Marks the start of a unit of work that has no timeout of its own.
    pub fn working(&self) -> Working {
        self.start(Duration::ZERO)
    }

    /// Marks the start of a unit of work that ends by itself within `bound` (a timeout); it
    /// counts as stuck only once it has overrun that bound by the stall limit.
    pub fn working_within(&self, bound: Duration) -> Working {
        self.start(bound)
    }

    fn start(&self, bound: Duration) -> Working {
        if let Some(slot) = &self.slot {
            slot.bound
                .store(millis(bound).max(0) as u64, Ordering::Relaxed);
            let now = millis(self.base.elapsed()) as u64 + 1;
            slot.since.store(now, Ordering::Release);
        }
        Working {
            slot: self.slot.as_ref().map(Arc::downgrade),
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A component stuck in one unit of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    pub component: String,
    pub for_: Duration,
}

impl Watchdog {
    pub fn new(settings: NotifySettings) -> Watchdog {
        Watchdog {
            inner: Arc::new(Inner {
                settings,
                base: Instant::now(),
                slots: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Watches a component from now on, until its last `Progress` clone is dropped.
    pub fn progress(&self, component: impl Into<String>) -> Progress {
        let slot = Arc::new(Slot {
            name: component.into(),
            since: AtomicU64::new(0),
            bound: AtomicU64::new(0),
        });
        let mut slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|s| s.strong_count() > 0);
        slots.push(Arc::downgrade(&slot));
        Progress {
            slot: Some(slot),
            base: self.inner.base,
        }
    }

    /// How long a unit of work may last before it counts as stuck: half the watchdog interval,
    /// so systemd's restart comes at most one interval after a component got stuck.
    pub fn stall_limit(&self) -> Option<Duration> {
        self.inner.settings.watchdog.map(|interval| interval / 2)
    }

    /// The components stuck for longer than `stall` (plus their own bound), longest first.
    pub fn stuck(&self, stall: Duration) -> Vec<Stuck> {
        let now = millis(self.inner.base.elapsed());
        let slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut stuck: Vec<Stuck> = slots
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|slot| {
                let since = slot.since.load(Ordering::Acquire);
                if since == 0 {
                    return None;
                }
                let busy = (now - (since as i64 - 1)).max(0);
                let allowed = slot.bound.load(Ordering::Relaxed) as i64 + millis(stall);
                (busy > allowed).then(|| Stuck {
                    component: slot.name.clone(),
                    for_: Duration::from_millis(busy as u64),
                })
            })
            .collect();
        stuck.sort_by_key(|s| std::cmp::Reverse(s.for_));
        stuck
    }

    /// Tells the service manager the gateway is up: every listener is bound.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    /// Tells the service manager the gateway is shutting down.
    pub fn stopping(&self) {
        self.notify("STOPPING=1");
    }

    /// Sends `state` (newline-separated `KEY=value` lines) to `NOTIFY_SOCKET`, if any. A failure
    /// is logged, never fatal: the gateway's work matters more than its service manager.
    fn notify(&self, state: &str) {
        let Some(socket) = &self.inner.settings.socket else {
            return;
        };
        if let Err(e) = send(socket, state) {
            tracing::warn!(socket, error = %e, "Cannot notify the service manager.");
        }
    }

    /// Sends the heartbeat every quarter interval while nothing is stuck, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        if let (Some(interval), Some(stall)) = (self.inner.settings.watchdog, self.stall_limit()) {
            let mut tick = tokio::time::interval((interval / 4).max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut was_stuck = false;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let stuck = self.stuck(stall);
                match stuck.first() {
                    None => {
                        if was_stuck {
                            tracing::info!("Every component is making progress again.");
                            self.notify("WATCHDOG=1\nSTATUS=running");
                            was_stuck = false;
                        } else {
                            self.notify("WATCHDOG=1");
                        }
                    }
                    Some(first) => {
                        if !was_stuck {
                            let components: Vec<&str> =
                                stuck.iter().map(|s| s.component.as_str()).collect();
                            tracing::error!(
                                components = %components.join(", "),
                                for_ = %humantime::format_duration(round(first.for_)),
                                "A component is stuck; the watchdog heartbeat stops, so systemd will restart rxgate."
                            );
                            self.notify(&format!(
                                "STATUS={} stuck for {}",
                                first.component,
                                humantime::format_duration(round(first.for_))
                            ));
                            was_stuck = true;
                        }
                    }
                }
            }
        } else {
            shutdown.cancelled().await;
        }
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

fn send(socket: &str, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), PathBuf::from(socket))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(socket: &std::path::Path, interval: Duration) -> NotifySettings {
        NotifySettings {
            socket: Some(socket.display().to_string()),
            watchdog: Some(interval),
        }
    }

    /// Every datagram that arrived, oldest first.
    fn received(listener: &UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = listener.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn the_heartbeat_stops_while_a_component_is_stuck_and_resumes_when_it_moves_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let watchdog = Watchdog::new(settings(&path, Duration::from_secs(20)));
        let pipeline = watchdog.progress("pipeline");
        let poller = watchdog.progress("modbus poller fridge-1");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watchdog.clone().run(shutdown.clone()));
        watchdog.ready("running");

        // Busy but brief units of work, and idle waits, keep the heartbeat going.
        for _ in 0..8 {
            let _work = pipeline.working();
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
        let beats = received(&listener);
        assert_eq!(beats[0], "READY=1\nSTATUS=running");
        assert!(
            beats.iter().filter(|b| *b == "WATCHDOG=1").count() >= 5,
            "{beats:?}"
        );

        // The poller hangs in one unit of work: after the stall limit (10 s) no heartbeat.
        let hung = poller.working();
        tokio::time::sleep(Duration::from_secs(11)).await;
        received(&listener);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let during = received(&listener);
        assert!(!during.iter().any(|b| b == "WATCHDOG=1"), "{during:?}");
        assert_eq!(
            watchdog.stuck(Duration::from_secs(10))[0].component,
            "modbus poller fridge-1"
        );

        drop(hung);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let after = received(&listener);
        assert_eq!(after[0], "WATCHDOG=1\nSTATUS=running", "{after:?}");

        shutdown.cancel();
        task.await.unwrap();
        watchdog.stopping();
        assert_eq!(received(&listener).last().unwrap(), "STOPPING=1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_unit_of_work_with_its_own_timeout_is_stuck_only_once_it_overruns_it() {
        let watchdog = Watchdog::new(NotifySettings::default());
        let email = watchdog.progress("alerts email");
        let _work = email.working_within(Duration::from_secs(30));
        tokio::time::sleep(Duration::from_secs(35)).await;
        assert!(watchdog.stuck(Duration::from_secs(10)).is_empty());
        tokio::time::sleep(Duration::from_secs(6)).await;
        let stuck = watchdog.stuck(Duration::from_secs(10));
        assert_eq!(stuck.len(), 1);
        assert_eq!(stuck[0].component, "alerts email");
        assert!(stuck[0].for_ >= Duration::from_secs(41), "{stuck:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_component_that_ended_is_no_longer_watched() {
        let watchdog = Watchdog::new(NotifySettings::default());
        let progress = watchdog.progress("uplink");
        let work = progress.working();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(watchdog.stuck(Duration::from_secs(10)).len(), 1);
        drop(progress);
        assert!(watchdog.stuck(Duration::from_secs(10)).is_empty());
        drop(work);
    }

    #[test]
    fn without_a_notify_socket_nothing_is_sent_and_nothing_fails() {
        let watchdog = Watchdog::new(NotifySettings::default());
        watchdog.ready("running");
        assert!(watchdog.stall_limit().is_none());
    }
}
