//! The Modbus poller: reads every `[devices.<id>]` that has a `transport` and submits what it
//! reads through [`Ingest`].
//!
//! ## Tasks
//! One task per TCP or TLS device; one task per serial port, shared by every RTU device on it,
//! which sends one request at a time (an RS-485 bus is half duplex).
//!
//! ## A poll
//! Every `poll_interval`, the device's register map is read with as few requests as the
//! [`plan`] allows. Every request, and every connection attempt, is bounded by `timeout`:
//! tokio-modbus has no timeouts of its own. After a timeout, an I/O error or a malformed reply
//! the connection is closed and reopened at the next poll, so a late reply can never be taken
//! for the answer to a later request (on a serial bus the input is also flushed after a
//! settling delay, as RTU frames carry no transaction id). A poll stops at its first failure.
//!
//! A Modbus exception (illegal data address, device busy, ...) concerns the points of that
//! request only: it is logged once, the connection stays. A merged request refused with
//! "illegal data address" is split into one request per point, for the rest of the run.
//! Exceptions 0x0A/0x0B (a TCP-to-RTU gateway saying the device behind it is unreachable) fail
//! the poll, without closing the connection to that gateway.
//!
//! ## What is submitted
//! Each poll that read something submits `Intake::Telemetry` with every point of the map:
//! - `good`: read in this poll;
//! - `stale`: this poll got no usable value (an exception, or a float that is not a number),
//!   an earlier one did: the value is that earlier one;
//! - `comm_error`: the poll failed before the point was read (the value is the last good one,
//!   if any), or the point never had a usable value (no value).
//!
//! A poll that read nothing submits no reading. The first successful poll after start submits
//! `Intake::Status { online: true }` (before its reading); `offline_after` failed polls in a
//! row submit `online: false`; the next success `online: true` again.
//!
//! ## Polls never wait on the disk
//! A poll's intakes are handed to the device's `handover` queue, stamped with the time they
//! were read (their `gateway_ts`), and the poller goes straight back to its schedule: each poll
//! starts `poll_interval` after the start of the previous one, on the monotonic clock, however
//! long the last reading takes to become durable. A forwarder task per device queues them into
//! [`Ingest`] in order and collects their outcomes (normally durable within the pipeline's
//! `batch_delay` plus one write, well under 1 s). What a lagging disk costs is bounded: per
//! device at most `handover::MAX_QUEUED` (16) intakes queued in the pipeline and
//! `handover::MAX_WAITING` (240) waiting behind them; beyond that the oldest waiting reading is
//! dropped to keep the newest (never a status change while a reading waits), counted in
//! `rxgate_readings_not_stored_total{reason="backlog"}` and logged once per episode. Readings the
//! gateway refuses (a full disk) are counted by reason and logged once per episode too.
//!
//! For the watchdog, a poller's unit of work is its cycle of requests, bounded by its timeouts;
//! a poller that does not come back from its device within that bound is stuck. A disk that
//! does not finish a write is the pipeline's stuck unit of work, not the poller's.
//!
//! ## Timing while offline
//! Failed polls are retried at `poll_interval` until the device counts as offline, then with
//! exponential backoff (with jitter) up to `max_backoff`. There is no last attempt: a device
//! that comes back after days is picked up by itself.

mod decode;
mod handover;
mod health;
mod link;
mod plan;
mod poll;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::devices::{DeviceConfig, Transport};
use crate::error::ConfigErrors;
use crate::error::{Error, Result};
use crate::message::Ingest;
use crate::watchdog::Progress;

pub use decode::{DecodeError, PointSpec, Raw, decode_point, raw_number, scaled};
pub use health::{Health, StatusChange, next_delay};
pub use link::ModbusTlsIdentity;
pub use plan::{MAX_BITS, MAX_GAP, MAX_REGISTERS, ReadRequest, plan};
pub use poll::DeviceStats;

use health::Jitter;
use link::{Link, SerialLine};
use poll::{Device, Timing};

/// The poller for every Modbus device in the config, ready to run.
pub struct ModbusPoller {
    ingest: Ingest,
    devices: Vec<(Device, Link)>,
    buses: Vec<(SerialLine, Vec<Device>)>,
    watchdog: Option<crate::watchdog::Watchdog>,
}

impl std::fmt::Debug for ModbusPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModbusPoller")
            .field(
                "devices",
                &self
                    .devices
                    .iter()
                    .map(|(d, l)| format!("{} {l}", d.id))
                    .collect::<Vec<_>>(),
            )
            .field(
                "buses",
                &self
                    .buses
                    .iter()
                    .map(|(l, d)| format!("{l}: {}", d.len()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ModbusPoller {
    /// Checks every polled device (as `rxgate config check` does), loads model files and plans
    /// the reads. Opens no connection. `tls` is required when a device uses `transport = "tls"`.
    pub fn build(
        site: &str,
        inventory: &BTreeMap<String, DeviceConfig>,
        ingest: Ingest,
        tls: Option<ModbusTlsIdentity>,
    ) -> Result<ModbusPoller> {
        let mut errors = Vec::new();
        for (id, device) in inventory.iter().filter(|(_, d)| d.is_modbus()) {
            device.check(id, &mut errors);
        }
        DeviceConfig::check_buses(inventory, &mut errors);
        if !errors.is_empty() {
            return Err(Error::Config(ConfigErrors(errors)));
        }

        let mut devices = Vec::new();
        let mut buses: BTreeMap<PathBuf, (SerialLine, Vec<Device>)> = BTreeMap::new();
        for (id, config_device) in inventory {
            let Some(transport) = config_device.transport else {
                continue;
            };
            let device = prepare(id, config_device)?;
            match transport {
                Transport::Tcp | Transport::Tls => {
                    let (host, port) = config_device
                        .host_port()
                        .unwrap_or_else(|| Err("is required".to_owned()))
                        .map_err(|e| Error::Invalid(format!("devices.{id}.address: {e}")))?;
                    let link = if transport == Transport::Tls {
                        let identity = tls.as_ref().ok_or_else(|| {
                            Error::Invalid(format!(
                                "devices.{id} uses transport = \"tls\", but the poller was built without \
                                 the gateway's TLS identity"
                            ))
                        })?;
                        link::tls_link(id, site, config_device, &host, port, identity)?
                    } else {
                        Link::Tcp { host, port }
                    };
                    devices.push((device, link));
                }
                Transport::Rtu => {
                    let Some(path) = config_device.serial.as_deref() else {
                        return Err(Error::Invalid(format!("devices.{id}.serial is required")));
                    };
                    buses
                        .entry(path.to_owned())
                        .or_insert_with(|| (SerialLine::of(config_device, path), Vec::new()))
                        .1
                        .push(device);
                }
            }
        }
        Ok(ModbusPoller {
            ingest,
            devices,
            buses: buses.into_values().collect(),
            watchdog: None,
        })
    }

    /// Per-device counters, by device id; they stay readable while the poller runs.
    pub fn stats(&self) -> Vec<(String, Arc<DeviceStats>)> {
        self.devices
            .iter()
            .map(|(d, _)| d)
            .chain(self.buses.iter().flat_map(|(_, devices)| devices))
            .map(|d| (d.id.clone(), d.stats.clone()))
            .collect()
    }

    /// Whether any device is configured for polling.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.buses.is_empty()
    }

    /// Reports each poller's cycles to `watchdog`: a cycle that overruns its timeouts stops the
    /// service manager's heartbeat.
    pub fn with_watchdog(mut self, watchdog: crate::watchdog::Watchdog) -> Self {
        self.watchdog = Some(watchdog);
        self
    }

    fn progress(&self, component: String) -> Progress {
        self.watchdog
            .as_ref()
            .map_or_else(Progress::untracked, |w| w.progress(component))
    }

    /// Polls until `shutdown` fires; returns once every poll task has stopped.
    pub async fn run(self, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        let devices: Vec<_> = self
            .devices
            .iter()
            .map(|(device, _)| self.progress(format!("modbus poller {}", device.id)))
            .collect();
        let buses: Vec<_> = self
            .buses
            .iter()
            .map(|(line, _)| self.progress(format!("modbus poller {line}")))
            .collect();
        // Every poller's schedule is on one grid from now: devices polled at the same interval
        // are read at the same moments, so their readings share one durable commit.
        let grid = Instant::now();
        for ((mut device, link), progress) in self.devices.into_iter().zip(devices) {
            device.start_grid(grid);
            tracing::info!(device = %device.id, %link, points = device.points.len(), requests = device.plan.len(), "Polling.");
            let (handover, forwarder) = handover::pair(&device.id, self.ingest.clone());
            tasks.spawn(forwarder.run(shutdown.clone()));
            tasks.spawn(poll::run_device(
                device,
                link,
                handover,
                progress,
                shutdown.clone(),
            ));
        }
        for ((line, devices), progress) in self.buses.into_iter().zip(buses) {
            let mut handed = Vec::with_capacity(devices.len());
            for mut device in devices {
                device.start_grid(grid);
                tracing::info!(device = %device.id, serial = %line, unit = device.unit, points = device.points.len(), requests = device.plan.len(), "Polling.");
                let (handover, forwarder) = handover::pair(&device.id, self.ingest.clone());
                tasks.spawn(forwarder.run(shutdown.clone()));
                handed.push((device, handover));
            }
            tasks.spawn(poll::run_bus(handed, line, progress, shutdown.clone()));
        }
        tasks.close();
        tasks.wait().await;
    }
}

fn prepare(id: &str, config: &DeviceConfig) -> Result<Device> {
    let map = config
        .register_map()
        .map_err(|e| Error::Invalid(format!("devices.{id}.model: {e}")))?;
    let points: Vec<PointSpec> = map.iter().map(PointSpec::from_config).collect();
    let plan = plan::plan(&points);
    Ok(Device {
        id: id.to_owned(),
        kind: config.kind.clone(),
        unit: config.unit,
        last: vec![None; points.len()],
        problem: vec![None; points.len()],
        points,
        plan,
        timing: Timing {
            poll_interval: config.poll_interval,
            timeout: config.timeout(),
            max_backoff: config.max_backoff,
            offline_after: config.offline_after,
        },
        health: Health::new(config.offline_after),
        jitter: Jitter::new(id),
        stats: Arc::new(DeviceStats::default()),
        // The first poll starts at once.
        next_due: Instant::now(),
        grid: Instant::now(),
    })
}
