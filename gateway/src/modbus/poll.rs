//! The poll cycle, and the tasks that run it: one per TCP/TLS device, one per serial bus.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_modbus::client::{Client as _, Context};
use tokio_modbus::slave::SlaveContext as _;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::devices::Function;
use crate::message::{Intake, Point, Quality, Reading, Value};
use crate::watchdog::Progress;

use super::decode::{PointSpec, Raw, decode_point};
use super::handover::Handover;
use super::health::{Health, Jitter, StatusChange, next_delay};
use super::link::{Link, SerialLine};
use super::plan::{ReadRequest, split};

/// Timing settings of one device.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub poll_interval: Duration,
    pub timeout: Duration,
    pub max_backoff: Duration,
    pub offline_after: u32,
}

/// Counters one device's poller keeps; cheap to read from elsewhere (status, metrics).
#[derive(Debug, Default)]
pub struct DeviceStats {
    polls_ok: AtomicU64,
    polls_failed: AtomicU64,
    last_success_unix_ms: AtomicU64,
    online: AtomicBool,
}

impl DeviceStats {
    /// Polls that got an answer to every request.
    pub fn polls_ok(&self) -> u64 {
        self.polls_ok.load(Ordering::Relaxed)
    }
    /// Polls that failed (no connection, timeout, I/O error, malformed reply).
    pub fn polls_failed(&self) -> u64 {
        self.polls_failed.load(Ordering::Relaxed)
    }
    /// System time of the last successful poll, if any.
    pub fn last_success(&self) -> Option<std::time::SystemTime> {
        match self.last_success_unix_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(std::time::UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }
    /// As last reported in an `Intake::Status` (false until the first successful poll).
    pub fn online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }
}

/// One polled device and everything the poller remembers about it.
pub(crate) struct Device {
    pub id: String,
    /// The device's kind, from its config section.
    pub kind: String,
    pub unit: u8,
    pub points: Vec<PointSpec>,
    /// Mutable: a merged request a device refuses is replaced by one request per point.
    pub plan: Vec<ReadRequest>,
    pub timing: Timing,
    pub health: Health,
    /// The last good value of each point.
    pub last: Vec<Option<Value>>,
    /// What was last wrong with each point (an exception, an unusable value), so that a
    /// problem is logged when it starts, not at every poll.
    pub problem: Vec<Option<String>>,
    pub jitter: Jitter,
    pub stats: Arc<DeviceStats>,
    /// When the next poll starts.
    pub next_due: Instant,
    /// The origin of the poll schedule, shared by every poller of the gateway: a healthy device
    /// is polled at `grid + k × poll_interval`.
    pub grid: Instant,
}

impl Device {
    /// How long one cycle's requests can take at most, each bounded by the timeout: connecting,
    /// every planned request, and one request per point if a merged read is split, twice (a
    /// kept connection found closed is reopened once). Storing the reading is not part of it:
    /// the poller never waits for the disk (a pipeline that does not move is the pipeline's
    /// own stuck unit of work).
    fn cycle_bound(&self) -> Duration {
        let requests = 2 * (1 + self.plan.len() + self.points.len());
        self.timing
            .timeout
            .saturating_mul(u32::try_from(requests).unwrap_or(u32::MAX))
    }

    /// Starts the poll schedule on `grid` (shared by every poller): the first poll at once, the
    /// next ones on `grid + k × poll_interval`.
    pub fn start_grid(&mut self, grid: Instant) {
        self.grid = grid;
        self.next_due = grid;
    }

    /// Schedules the next poll. Healthy: at the next point of the shared grid after this one's
    /// start, so that devices with the same interval are read together (their readings then
    /// share one durable commit, which is what an SD card pays for, not the bytes). Offline:
    /// this one's start plus the backoff. A poll that overran simply makes the next one start
    /// at once, never a burst of catch-ups.
    fn schedule_next(&mut self, started: Instant) {
        let t = self.timing;
        let delay = next_delay(
            self.health.failures(),
            t.offline_after,
            t.poll_interval,
            t.max_backoff,
            self.jitter.next_unit(),
        );
        let due = if delay == t.poll_interval {
            on_grid_after(self.grid, started, delay)
        } else {
            started + delay
        };
        self.next_due = due.max(Instant::now());
    }
}

/// The first point of `grid + k × interval` later than `started`.
fn on_grid_after(grid: Instant, started: Instant, interval: Duration) -> Instant {
    let interval_ns = interval.as_nanos().max(1);
    let k = started.saturating_duration_since(grid).as_nanos() / interval_ns + 1;
    let offset = u64::try_from(k * interval_ns).unwrap_or(u64::MAX);
    grid + Duration::from_nanos(offset)
}

/// What one request (or the whole cycle) got for one point.
#[derive(Debug, Clone, PartialEq)]
enum PointRead {
    NotRead,
    Good(Value),
    /// The device answered with a Modbus exception.
    Refused(ExceptionCode),
    /// The device answered, but the value is unusable (a NaN float): why.
    Unusable(String),
}

/// Why a poll failed.
#[derive(Debug, Clone)]
struct Failure {
    reason: String,
    /// The connection can no longer be trusted to be in step: close it, reopen next time.
    drop_connection: bool,
    /// No reply arrived in time (on a serial bus, a late reply may still come).
    timed_out: bool,
}

impl Failure {
    fn broken(reason: String) -> Failure {
        Failure {
            reason,
            drop_connection: true,
            timed_out: false,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The result of one poll cycle.
struct Cycle {
    reads: Vec<PointRead>,
    failure: Option<Failure>,
    /// Whether any reply at all came back in this cycle (a failure before any means a
    /// connection the device may have closed while idle).
    any_reply: bool,
}

impl Cycle {
    fn failed(points: usize, failure: Failure) -> Cycle {
        Cycle {
            reads: vec![PointRead::NotRead; points],
            failure: Some(failure),
            any_reply: false,
        }
    }
}

enum Block {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// Sends one read and checks that the reply fits the request: the right kind and the right
/// number of values. Anything else is a failure that drops the connection, never a panic.
async fn read(
    ctx: &mut Context,
    req: &ReadRequest,
    timeout: Duration,
) -> Result<Result<Block, ExceptionCode>, Failure> {
    let (start, count) = (req.start, req.count);
    let request = match req.function {
        Function::Coil => Request::ReadCoils(start, count),
        Function::Discrete => Request::ReadDiscreteInputs(start, count),
        Function::Holding => Request::ReadHoldingRegisters(start, count),
        Function::Input => Request::ReadInputRegisters(start, count),
    };
    let what = format!("{} {start}+{count}", req.function.as_str());
    let response = match tokio::time::timeout(timeout, ctx.call(request)).await {
        Err(_) => {
            return Err(Failure {
                reason: format!(
                    "no reply to reading {what} within {}",
                    humantime::format_duration(timeout)
                ),
                drop_connection: true,
                timed_out: true,
            });
        }
        Ok(Err(tokio_modbus::Error::Transport(e))) => {
            return Err(Failure::broken(format!(
                "reading {what}: {}",
                describe_io(&e)
            )));
        }
        Ok(Err(tokio_modbus::Error::Protocol(e))) => {
            return Err(Failure::broken(format!(
                "reading {what}: the reply does not match the request: {e}"
            )));
        }
        Ok(Ok(Err(code))) => return Ok(Err(code)),
        Ok(Ok(Ok(response))) => response,
    };
    let wrong_length = |unit: &str, got: usize| {
        Failure::broken(format!(
            "reading {what}: the device answered {got} {unit} to a request for {count}"
        ))
    };
    match (req.function, response) {
        (Function::Coil, Response::ReadCoils(mut bits))
        | (Function::Discrete, Response::ReadDiscreteInputs(mut bits)) => {
            // Bits travel packed in bytes, so a reply holds the count rounded up to 8.
            let expected = usize::from(count).div_ceil(8) * 8;
            if bits.len() != expected {
                return Err(wrong_length("bits", bits.len()));
            }
            bits.truncate(usize::from(count));
            Ok(Ok(Block::Bits(bits)))
        }
        (Function::Holding, Response::ReadHoldingRegisters(words))
        | (Function::Input, Response::ReadInputRegisters(words)) => {
            if words.len() != usize::from(count) {
                return Err(wrong_length("registers", words.len()));
            }
            Ok(Ok(Block::Words(words)))
        }
        (_, other) => Err(Failure::broken(format!(
            "reading {what}: the device answered with {other:?}"
        ))),
    }
}

fn describe_io(e: &std::io::Error) -> String {
    // tokio-modbus 0.17 reports a connection closed by the peer as `io::Error::last_os_error()`,
    // whatever errno the thread last saw: usually EAGAIN ("would block", which a finished async
    // read cannot mean) or 0 ("success").
    if e.kind() == std::io::ErrorKind::WouldBlock || e.raw_os_error() == Some(0) {
        return "the device closed the connection".to_owned();
    }
    match e.kind() {
        std::io::ErrorKind::InvalidData => format!("malformed reply ({e})"),
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::ConnectionReset => {
            format!("the connection was closed ({e})")
        }
        _ => e.to_string(),
    }
}

/// Runs every request of the device's plan on `ctx`. Stops at the first failure: after a
/// timeout, every further request would cost another timeout (and the connection must go).
async fn poll_cycle(ctx: &mut Context, dev: &mut Device) -> Cycle {
    ctx.set_slave(Slave(dev.unit));
    let mut reads = vec![PointRead::NotRead; dev.points.len()];
    let mut any_reply = false;
    let mut i = 0;
    while i < dev.plan.len() {
        let req = dev.plan[i].clone();
        match read(ctx, &req, dev.timing.timeout).await {
            Err(failure) => {
                return Cycle {
                    reads,
                    failure: Some(failure),
                    any_reply,
                };
            }
            Ok(Err(ExceptionCode::IllegalDataAddress)) if req.points.len() > 1 => {
                any_reply = true;
                tracing::info!(
                    device = %dev.id,
                    function = req.function.as_str(),
                    start = req.start,
                    count = req.count,
                    "The device refuses a read spanning several points (illegal data address); \
                     reading them one by one from now on."
                );
                let parts = split(&req, &dev.points);
                dev.plan.splice(i..=i, parts);
                continue;
            }
            Ok(Err(
                code @ (ExceptionCode::GatewayPathUnavailable | ExceptionCode::GatewayTargetDevice),
            )) => {
                // A TCP-to-RTU gateway answering for a device behind it that did not answer: the
                // device is unreachable, but the connection to its gateway is fine.
                return Cycle {
                    reads,
                    failure: Some(Failure {
                        reason: format!("its Modbus gateway reports: {code}"),
                        drop_connection: false,
                        timed_out: false,
                    }),
                    any_reply: true,
                };
            }
            Ok(Err(code)) => {
                any_reply = true;
                for &p in &req.points {
                    reads[p] = PointRead::Refused(code);
                }
            }
            Ok(Ok(block)) => {
                any_reply = true;
                let raw = match &block {
                    Block::Words(w) => Raw::Words(w),
                    Block::Bits(b) => Raw::Bits(b),
                };
                for &p in &req.points {
                    reads[p] = match decode_point(&dev.points[p], req.start, &raw) {
                        Ok(value) => PointRead::Good(value),
                        Err(e) => PointRead::Unusable(e.to_string()),
                    };
                }
            }
        }
        i += 1;
    }
    Cycle {
        reads,
        failure: None,
        any_reply,
    }
}

/// Turns a cycle's reads into a reading, remembering good values. `None` when nothing was
/// read and the poll failed: there is nothing new to say (the offline status covers it).
fn reading(dev: &mut Device, cycle: &Cycle) -> Option<Reading> {
    let any_good = cycle.reads.iter().any(|r| matches!(r, PointRead::Good(_)));
    if cycle.failure.is_some() && !any_good {
        return None;
    }
    let mut points = BTreeMap::new();
    for (i, read) in cycle.reads.iter().enumerate() {
        let spec = &dev.points[i];
        let (value, quality) = match read {
            PointRead::Good(v) => {
                dev.last[i] = Some(*v);
                if dev.problem[i].take().is_some() {
                    tracing::info!(device = %dev.id, point = %spec.name, "The point reads again.");
                }
                (Some(*v), Quality::Good)
            }
            PointRead::Refused(code) => {
                let problem = format!("Modbus exception: {code}");
                if dev.problem[i].as_ref() != Some(&problem) {
                    tracing::warn!(
                        device = %dev.id,
                        point = %spec.name,
                        function = spec.function.as_str(),
                        address = spec.address,
                        exception = %code,
                        "The device refuses to read this point; check the register map."
                    );
                    dev.problem[i] = Some(problem);
                }
                stale_or_missing(dev.last[i])
            }
            PointRead::Unusable(why) => {
                if dev.problem[i].as_ref() != Some(why) {
                    tracing::warn!(device = %dev.id, point = %spec.name, problem = %why, "Unusable value.");
                    dev.problem[i] = Some(why.clone());
                }
                stale_or_missing(dev.last[i])
            }
            PointRead::NotRead => (dev.last[i], Quality::CommError),
        };
        points.insert(
            spec.name.clone(),
            Point {
                value,
                unit: spec.unit.clone(),
                quality,
            },
        );
    }
    Some(Reading {
        device: dev.id.clone(),
        kind: dev.kind.clone(),
        device_ts: None,
        points,
    })
}

fn stale_or_missing(last: Option<Value>) -> (Option<Value>, Quality) {
    match last {
        Some(v) => (Some(v), Quality::Stale),
        None => (None, Quality::CommError),
    }
}

/// Hands the cycle's reading and status change over. Never waits for them to be stored.
fn finish_cycle(dev: &mut Device, cycle: Cycle, handover: &Handover) {
    let change = match &cycle.failure {
        None => {
            dev.stats.polls_ok.fetch_add(1, Ordering::Relaxed);
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            dev.stats
                .last_success_unix_ms
                .store(now_ms, Ordering::Relaxed);
            dev.health.success()
        }
        Some(failure) => {
            dev.stats.polls_failed.fetch_add(1, Ordering::Relaxed);
            let change = dev.health.failure();
            if dev.health.failures() == 1 {
                tracing::warn!(device = %dev.id, reason = %failure, "Poll failed.");
            } else {
                tracing::debug!(device = %dev.id, failures = dev.health.failures(), reason = %failure, "Poll failed.");
            }
            change
        }
    };
    let reading = reading(dev, &cycle);
    let status = change.map(|change| {
        let online = change == StatusChange::Online;
        let was_online = dev.stats.online.swap(online, Ordering::Relaxed);
        if was_online != online {
            crate::metrics::device_online(if online { 1.0 } else { -1.0 });
        }
        let reason = match (&cycle.failure, online) {
            (_, true) => "the device answered a poll".to_owned(),
            (Some(f), false) => {
                format!("{} polls in a row failed; last: {f}", dev.health.failures())
            }
            (None, false) => "polls failed".to_owned(),
        };
        if online {
            tracing::info!(device = %dev.id, "Device online.");
        } else {
            tracing::warn!(device = %dev.id, %reason, "Device offline.");
        }
        Intake::Status {
            device: dev.id.clone(),
            online,
            reason,
        }
    });
    // Online before the reading that proves it; offline after the last partial reading.
    let (before, after) = match status {
        Some(s @ Intake::Status { online: true, .. }) => (Some(s), None),
        other => (None, other),
    };
    let intakes = before
        .into_iter()
        .chain(reading.map(Intake::Telemetry))
        .chain(after);
    for intake in intakes {
        handover.push(intake);
    }
}

/// Polls one TCP or TLS device until shutdown.
pub(crate) async fn run_device(
    mut dev: Device,
    link: Link,
    handover: Handover,
    progress: Progress,
    shutdown: CancellationToken,
) {
    let mut source = LinkCycles { ctx: None, link };
    poll_loop(&mut dev, &handover, &progress, &shutdown, &mut source).await;
    tracing::debug!(device = %dev.id, "Poller stopped.");
}

/// Where a poll loop's cycles come from: a device's link, or a test's stand-in.
trait Cycles {
    fn cycle<'a>(&'a mut self, dev: &'a mut Device) -> impl Future<Output = Cycle> + Send + 'a;
}

/// The cycles of one TCP or TLS device, over a connection kept between polls.
struct LinkCycles {
    ctx: Option<Context>,
    link: Link,
}

impl Cycles for LinkCycles {
    fn cycle<'a>(&'a mut self, dev: &'a mut Device) -> impl Future<Output = Cycle> + Send + 'a {
        let span = tracing::debug_span!("poll", device = %dev.id, link = %self.link);
        poll_link(&mut self.ctx, dev, &self.link).instrument(span)
    }
}

/// Runs `cycle` at the device's cadence until shutdown. Each poll starts `poll_interval` after
/// the start of the previous one (on the monotonic clock), whatever happens to its reading
/// afterwards: handing it over never waits for the disk. Only the cycle itself is a unit of
/// work for the watchdog, bounded by its timeouts.
async fn poll_loop(
    dev: &mut Device,
    handover: &Handover,
    progress: &Progress,
    shutdown: &CancellationToken,
    source: &mut impl Cycles,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(dev.next_due) => {}
            () = shutdown.cancelled() => break,
        }
        let started = Instant::now();
        let work = progress.working_within(dev.cycle_bound());
        let cycle = tokio::select! {
            cycle = source.cycle(dev) => cycle,
            () = shutdown.cancelled() => break,
        };
        drop(work);
        finish_cycle(dev, cycle, handover);
        dev.schedule_next(started);
    }
}

/// One cycle on a TCP/TLS link: connects if needed, and retries once on a fresh connection
/// when a kept one turns out to be closed (many devices close idle connections).
async fn poll_link(ctx: &mut Option<Context>, dev: &mut Device, link: &Link) -> Cycle {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let reused = ctx.is_some();
        if ctx.is_none() {
            match tokio::time::timeout(dev.timing.timeout, link.connect(dev.unit)).await {
                Ok(Ok(c)) => {
                    tracing::debug!("Connected.");
                    *ctx = Some(c);
                }
                Ok(Err(e)) => {
                    return Cycle::failed(
                        dev.points.len(),
                        Failure::broken(format!("cannot connect to {link}: {e}")),
                    );
                }
                Err(_) => {
                    return Cycle::failed(
                        dev.points.len(),
                        Failure::broken(format!(
                            "connecting to {link} took longer than {}",
                            humantime::format_duration(dev.timing.timeout)
                        )),
                    );
                }
            }
        }
        let Some(c) = ctx.as_mut() else {
            return Cycle::failed(
                dev.points.len(),
                Failure::broken("not connected".to_owned()),
            );
        };
        let cycle = poll_cycle(c, dev).await;
        let Some(failure) = &cycle.failure else {
            return cycle;
        };
        if failure.drop_connection {
            // Dropping the context closes the socket: a late reply can never be read as the
            // answer to a later request.
            *ctx = None;
        }
        let closed_while_idle =
            reused && !cycle.any_reply && !failure.timed_out && failure.drop_connection;
        if !(closed_while_idle && attempts == 1) {
            return cycle;
        }
        tracing::debug!(reason = %failure, "The kept connection is gone; reconnecting.");
    }
}

/// Polls every device on one serial bus until shutdown, one request at a time. A device that
/// does not answer costs the others one timeout per poll of it (its cycle stops at the first
/// timeout), and fewer while it is offline, as its backoff grows.
pub(crate) async fn run_bus(
    mut devices: Vec<(Device, Handover)>,
    line: SerialLine,
    progress: Progress,
    shutdown: CancellationToken,
) {
    let mut ctx: Option<Context> = None;
    let mut after_timeout = false;
    while let Some((dev, handover)) = devices.iter_mut().min_by_key(|(d, _)| d.next_due) {
        tokio::select! {
            () = tokio::time::sleep_until(dev.next_due) => {}
            () = shutdown.cancelled() => break,
        }
        let started = Instant::now();
        let work = progress.working_within(dev.cycle_bound());
        let span = tracing::debug_span!("poll", device = %dev.id, serial = %line);
        let cycle = tokio::select! {
            cycle = poll_bus(&mut ctx, &mut after_timeout, dev, &line).instrument(span) => cycle,
            () = shutdown.cancelled() => break,
        };
        drop(work);
        finish_cycle(dev, cycle, handover);
        dev.schedule_next(started);
    }
    tracing::debug!(serial = %line, "Bus poller stopped.");
}

async fn poll_bus(
    ctx: &mut Option<Context>,
    after_timeout: &mut bool,
    dev: &mut Device,
    line: &SerialLine,
) -> Cycle {
    if ctx.is_none() {
        let stream = match line.open() {
            Ok(stream) => stream,
            Err(e) => {
                return Cycle::failed(
                    dev.points.len(),
                    Failure::broken(format!(
                        "cannot open the serial port {}: {e}",
                        line.path.display()
                    )),
                );
            }
        };
        if std::mem::take(after_timeout) {
            // A device that missed its timeout may still be sending; let it finish, then drop
            // what arrived. Bounded, so a dead device costs the bus little.
            tokio::time::sleep(settle_time(dev.timing.timeout)).await;
            if let Err(e) = SerialLine::discard_input(&stream) {
                tracing::debug!(error = %e, "Cannot flush the serial input buffer.");
            }
        }
        tracing::debug!("Serial port open.");
        *ctx = Some(tokio_modbus::client::rtu::attach_slave(
            stream,
            Slave(dev.unit),
        ));
    }
    let Some(c) = ctx.as_mut() else {
        return Cycle::failed(
            dev.points.len(),
            Failure::broken("the serial port is not open".to_owned()),
        );
    };
    let cycle = poll_cycle(c, dev).await;
    if let Some(failure) = &cycle.failure
        && failure.drop_connection
    {
        *ctx = None;
        *after_timeout = failure.timed_out;
    }
    cycle
}

/// How long to let a late RTU reply drain after a timeout before flushing the input.
fn settle_time(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(20), Duration::from_millis(250))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    #[test]
    fn healthy_polls_land_on_the_shared_grid_and_an_overrun_does_not_burst() {
        let grid = Instant::now();
        let second = Duration::from_secs(1);
        let at = |ms: u64| grid + Duration::from_millis(ms);
        // Woken a little late, or started anywhere in a period: the next grid point.
        assert_eq!(on_grid_after(grid, at(3), second), at(1000));
        assert_eq!(on_grid_after(grid, at(1004), second), at(2000));
        assert_eq!(on_grid_after(grid, at(2999), second), at(3000));
        // Exactly on a point: the one after it.
        assert_eq!(on_grid_after(grid, at(3000), second), at(4000));
        // Days of polling at 10 ms stay on the grid (no overflow).
        let days = Duration::from_secs(90 * 86_400);
        let late = on_grid_after(
            grid,
            grid + days + Duration::from_micros(1),
            Duration::from_millis(10),
        );
        assert_eq!(late, grid + days + Duration::from_millis(10));

        // A device (polled every 10 s) whose first poll took 300 ms is polled next on the grid,
        // with every other device of that interval.
        let mut dev = device(Vec::new());
        dev.start_grid(grid);
        assert_eq!(dev.next_due, grid, "the first poll at once");
        dev.schedule_next(at(300));
        assert_eq!(dev.next_due, at(10_000));
    }

    use crate::devices::{DataType, WordOrder};

    fn point(name: &str, address: u16, data_type: DataType) -> PointSpec {
        PointSpec {
            name: name.into(),
            function: Function::Input,
            address,
            data_type,
            word_order: WordOrder::Big,
            scale: 0.1,
            offset: 0.0,
            unit: None,
        }
    }

    fn device(points: Vec<PointSpec>) -> Device {
        Device {
            id: "fridge-01".into(),
            kind: "fridge".into(),
            unit: 1,
            plan: super::super::plan::plan(&points),
            last: vec![None; points.len()],
            problem: vec![None; points.len()],
            points,
            timing: Timing {
                poll_interval: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                max_backoff: Duration::from_secs(60),
                offline_after: 3,
            },
            health: Health::new(3),
            jitter: Jitter::new("fridge-01"),
            stats: Arc::default(),
            next_due: Instant::now(),
            grid: Instant::now(),
        }
    }

    /// A Modbus/TCP peer on the other end of an in-memory pipe: for each request (function,
    /// start, count) `answer` returns the PDU to send back (`None`: stay silent), or raw bytes
    /// to send instead of a framed reply.
    fn peer(
        mut io: DuplexStream,
        answer: impl Fn(u8, u16, u16) -> Option<Result<Vec<u8>, Vec<u8>>> + Send + 'static,
    ) {
        tokio::spawn(async move {
            loop {
                let mut header = [0u8; 7];
                if io.read_exact(&mut header).await.is_err() {
                    return;
                }
                let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
                let mut pdu = vec![0u8; len - 1];
                if io.read_exact(&mut pdu).await.is_err() {
                    return;
                }
                let start = u16::from_be_bytes([pdu[1], pdu[2]]);
                let count = u16::from_be_bytes([pdu[3], pdu[4]]);
                let bytes = match answer(pdu[0], start, count) {
                    None => continue,
                    Some(Err(raw)) => raw,
                    Some(Ok(reply)) => {
                        let mut frame = header[..4].to_vec();
                        frame.extend_from_slice(&(reply.len() as u16 + 1).to_be_bytes());
                        frame.push(header[6]);
                        frame.extend_from_slice(&reply);
                        frame
                    }
                };
                if io.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        });
    }

    /// Registers `start..start+n` holding their own address ×10.
    fn registers(function: u8, start: u16, n: u16) -> Vec<u8> {
        let mut pdu = vec![function, (2 * n) as u8];
        for a in start..start + n {
            pdu.extend_from_slice(&(a * 10).to_be_bytes());
        }
        pdu
    }

    fn connect(
        answer: impl Fn(u8, u16, u16) -> Option<Result<Vec<u8>, Vec<u8>>> + Send + 'static,
    ) -> Context {
        let (client, server) = tokio::io::duplex(1024);
        peer(server, answer);
        tokio_modbus::client::tcp::attach_slave(client, Slave(1))
    }

    #[tokio::test(start_paused = true)]
    async fn a_good_reply_reads_every_point_in_one_request() {
        let mut dev = device(vec![
            point("a", 0, DataType::U16),
            point("b", 1, DataType::U32),
        ]);
        let mut ctx = connect(|f, start, count| Some(Ok(registers(f, start, count))));
        let cycle = poll_cycle(&mut ctx, &mut dev).await;
        assert!(cycle.failure.is_none());
        // b = (10 << 16 | 20) × 0.1
        assert_eq!(
            cycle.reads,
            [
                PointRead::Good(Value::Number(0.0)),
                PointRead::Good(Value::Number(65_538.0))
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_with_the_wrong_number_of_registers_is_a_clear_failure_not_a_panic() {
        let mut dev = device(vec![
            point("a", 0, DataType::U16),
            point("b", 1, DataType::U16),
        ]);
        let mut ctx = connect(|f, start, _| Some(Ok(registers(f, start, 1))));
        let cycle = poll_cycle(&mut ctx, &mut dev).await;
        let failure = cycle.failure.expect("a failure");
        assert_eq!(
            failure.reason,
            "reading input 0+2: the device answered 1 registers to a request for 2"
        );
        assert!(failure.drop_connection);
        assert_eq!(cycle.reads, [PointRead::NotRead, PointRead::NotRead]);
    }

    #[tokio::test(start_paused = true)]
    async fn garbage_is_a_clear_failure_not_a_panic() {
        let mut dev = device(vec![point("a", 0, DataType::U16)]);
        // A header with protocol id 0xFFFF, then noise.
        let mut ctx = connect(|_, _, _| Some(Err(vec![0, 0, 0xFF, 0xFF, 0, 3, 1, 4, 2, 0, 0])));
        let failure = poll_cycle(&mut ctx, &mut dev)
            .await
            .failure
            .expect("a failure");
        assert!(
            failure
                .reason
                .starts_with("reading input 0+1: malformed reply"),
            "{}",
            failure.reason
        );
        assert!(failure.drop_connection);

        // A reply to another function than asked.
        let mut ctx = connect(|_, start, count| Some(Ok(registers(3, start, count))));
        let failure = poll_cycle(&mut ctx, &mut dev)
            .await
            .failure
            .expect("a failure");
        assert!(
            failure.reason.contains("does not match the request"),
            "{}",
            failure.reason
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_closed_by_the_device_says_so() {
        let mut dev = device(vec![point("a", 0, DataType::U16)]);
        let (client, server) = tokio::io::duplex(64);
        drop(server);
        let mut ctx = tokio_modbus::client::tcp::attach_slave(client, Slave(1));
        let failure = poll_cycle(&mut ctx, &mut dev)
            .await
            .failure
            .expect("a failure");
        assert!(failure.drop_connection);
        assert!(
            failure.reason.contains("closed the connection")
                || failure.reason.contains("connection was closed"),
            "{}",
            failure.reason
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_device_fails_after_the_timeout_and_the_cycle_stops_there() {
        let mut dev = device(vec![
            point("a", 0, DataType::U16),
            point("b", 100, DataType::U16),
        ]);
        let mut ctx = connect(|_, _, _| None);
        let started = Instant::now();
        let cycle = poll_cycle(&mut ctx, &mut dev).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1),
            "one timeout, not one per request"
        );
        let failure = cycle.failure.expect("a failure");
        assert!(failure.timed_out && failure.drop_connection);
        assert_eq!(failure.reason, "no reply to reading input 0+1 within 1s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_merged_read_is_split_and_a_refused_point_is_reported_on_its_own() {
        // 0 and 3 are merged into 0+4; the device implements 0, 3 and 4 only.
        let mut dev = device(vec![
            point("a", 0, DataType::U16),
            point("b", 3, DataType::U16),
            point("gone", 4, DataType::U16),
        ]);
        assert_eq!(dev.plan.len(), 1);
        let mut ctx = connect(|f, start, count| {
            let implemented = |a: u16| matches!(a, 0 | 3);
            if (start..start + count).all(implemented) {
                Some(Ok(registers(f, start, count)))
            } else {
                Some(Ok(vec![f | 0x80, 0x02]))
            }
        });
        let cycle = poll_cycle(&mut ctx, &mut dev).await;
        assert!(cycle.failure.is_none(), "exceptions do not fail the poll");
        assert_eq!(
            cycle.reads,
            [
                PointRead::Good(Value::Number(0.0)),
                PointRead::Good(Value::Number(3.0)),
                PointRead::Refused(ExceptionCode::IllegalDataAddress)
            ]
        );
        assert_eq!(dev.plan.len(), 3, "split for the rest of the run");

        let r = reading(&mut dev, &cycle).expect("a reading");
        assert_eq!(r.points["a"].quality, Quality::Good);
        assert_eq!(
            (r.points["gone"].value, r.points["gone"].quality),
            (None, Quality::CommError),
            "never had a value"
        );

        // Once a point had a value, a refusal reports that value as stale.
        dev.last[2] = Some(Value::Number(9.0));
        let r = reading(&mut dev, &cycle).expect("a reading");
        assert_eq!(
            (r.points["gone"].value, r.points["gone"].quality),
            (Some(Value::Number(9.0)), Quality::Stale)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_gateway_exception_fails_the_poll_but_keeps_the_connection() {
        let mut dev = device(vec![point("a", 0, DataType::U16)]);
        let mut ctx = connect(|f, _, _| Some(Ok(vec![f | 0x80, 0x0B])));
        let failure = poll_cycle(&mut ctx, &mut dev)
            .await
            .failure
            .expect("a failure");
        assert!(!failure.drop_connection);
        assert!(
            failure.reason.starts_with("its Modbus gateway reports"),
            "{}",
            failure.reason
        );
    }

    #[test]
    fn a_failed_poll_that_read_nothing_submits_no_reading() {
        let mut dev = device(vec![point("a", 0, DataType::U16)]);
        let cycle = Cycle::failed(1, Failure::broken("x".into()));
        assert_eq!(reading(&mut dev, &cycle), None);
    }

    /// Cycles that take 50 ms and read every point, noting when each started.
    struct Recorded {
        starts: Arc<std::sync::Mutex<Vec<Instant>>>,
        hang: bool,
    }

    impl Cycles for Recorded {
        async fn cycle(&mut self, dev: &mut Device) -> Cycle {
            self.starts.lock().unwrap().push(Instant::now());
            if self.hang {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            Cycle {
                reads: vec![PointRead::Good(Value::Number(4.0)); dev.points.len()],
                failure: None,
                any_reply: true,
            }
        }
    }

    struct Looping {
        starts: Arc<std::sync::Mutex<Vec<Instant>>>,
        watchdog: crate::watchdog::Watchdog,
        submissions: tokio::sync::mpsc::Receiver<crate::message::Submission>,
        forwarder: tokio::task::JoinHandle<()>,
        poller: tokio::task::JoinHandle<()>,
        stop: CancellationToken,
    }

    fn start_loop(hang: bool) -> Looping {
        let clock = crate::clock::TokioClock::new(time::OffsetDateTime::UNIX_EPOCH);
        // Room for one submission, and nobody takes it: a pipeline stuck in its write.
        let (ingest, submissions) = crate::message::Ingest::channel(1, clock);
        let (handover, forwarder) = super::super::handover::pair("fridge-01", ingest);
        let forwarder = tokio::spawn(forwarder.run(CancellationToken::new()));
        let watchdog = crate::watchdog::Watchdog::new(Default::default());
        let progress = watchdog.progress("modbus poller fridge-01");
        let starts = Arc::<std::sync::Mutex<Vec<Instant>>>::default();
        let mut source = Recorded {
            starts: starts.clone(),
            hang,
        };
        let stop = CancellationToken::new();
        let poller = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut dev = device(vec![point("a", 0, DataType::U16)]);
                dev.timing.poll_interval = Duration::from_secs(1);
                poll_loop(&mut dev, &handover, &progress, &stop, &mut source).await;
            }
        });
        Looping {
            starts,
            watchdog,
            submissions,
            forwarder,
            poller,
            stop,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn polls_keep_their_interval_while_the_pipeline_cannot_write_and_the_poller_is_not_stuck()
    {
        let mut l = start_loop(false);
        let begin = Instant::now();
        // 30 s of a pipeline that takes nothing, watched every 10 ms.
        while begin.elapsed() < Duration::from_millis(29_500) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(
                l.watchdog.stuck(Duration::from_millis(100)),
                [],
                "a disk stall is not the poller's"
            );
        }
        l.stop.cancel();
        l.poller.await.unwrap();
        let starts = l.starts.lock().unwrap().clone();
        assert_eq!(starts.len(), 30);
        for (i, at) in starts.iter().enumerate() {
            assert_eq!(*at - begin, Duration::from_secs(i as u64), "poll {i}");
        }

        // The pipeline moves again: every reading arrives, in order, stamped when it was read.
        let mut stamps = Vec::new();
        while let Some(s) = l.submissions.recv().await {
            stamps.push(s.received_at - time::OffsetDateTime::UNIX_EPOCH);
            let _ = s.reply.send(Ok(crate::message::Accepted {
                id: uuid::Uuid::nil(),
            }));
        }
        l.forwarder.await.unwrap();
        // The first poll's `online` status, then one reading per poll.
        let expected: Vec<_> = std::iter::once(Duration::from_millis(50))
            .chain((0..30).map(|i| Duration::from_secs(i) + Duration::from_millis(50)))
            .collect();
        assert_eq!(stamps, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_poller_whose_device_never_answers_is_reported_stuck() {
        let l = start_loop(true);
        // device(): timeout 1 s, one point, one request: bound 2 × (1 + 1 + 1) s = 6 s.
        tokio::time::sleep(Duration::from_millis(6_900)).await;
        assert_eq!(l.watchdog.stuck(Duration::from_secs(1)), []);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stuck = l.watchdog.stuck(Duration::from_secs(1));
        assert_eq!(stuck.len(), 1, "{stuck:?}");
        assert_eq!(stuck[0].component, "modbus poller fridge-01");
        l.stop.cancel();
    }

    #[test]
    fn the_rtu_settle_time_is_bounded() {
        assert_eq!(
            settle_time(Duration::from_millis(10)),
            Duration::from_millis(20)
        );
        assert_eq!(
            settle_time(Duration::from_millis(400)),
            Duration::from_millis(100)
        );
        assert_eq!(
            settle_time(Duration::from_secs(5)),
            Duration::from_millis(250)
        );
    }
}
