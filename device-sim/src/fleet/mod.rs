//! A load generator: many simulated fridges and dispensing cabinets at once
//! (`rxgate-sim fleet`).
//!
//! Fridges are polled by the gateway, so the gateway must know them: [`config_snippet`] writes
//! the `[devices.<id>]` sections to append to `gateway.toml`. Cabinets connect to the gateway
//! themselves, once enrolled: [`enroll_cabinets`] enrolls each device of a tokens file
//! ([`parse_tokens`]) into its own folder, skipping those enrolled before.
//!
//! Config → build → run: [`FleetConfig`] and [`plan_fridges`] do no I/O; [`Fleet::start`] binds
//! the fridges' listeners; [`Fleet::run`] runs the cabinets and reports until stopped.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rxgate_certs::KeyAlg;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cabinet::{self, CabinetOptions, CabinetStats, Credentials, Scenario};
use crate::est::{self, EnrollOptions, Trust};
use crate::fridge::{Fault, FridgeError, FridgeOptions, FridgeSim, ScheduledFault};

/// The register map the simulated fridges implement, relative to the repository root.
pub const DEFAULT_MODEL: &str = "config/devices/acme-fr400.toml";
/// Enrollment attempts per device while the gateway answers "too many requests".
const ENROLL_ATTEMPTS: u32 = 6;

/// Errors of the load generator.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The tokens file has bad lines; one entry per problem, with its line number.
    #[error("{}", .0.join("; "))]
    Tokens(Vec<String>),
    /// The register map file for the config snippet is missing.
    #[error(
        "register map {} not found ({reason}); pass --model with the path of \
         config/devices/acme-fr400.toml",
        path.display()
    )]
    Model {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// An option is unusable.
    #[error("{0}")]
    Invalid(String),
    /// A fridge could not start.
    #[error("cannot start fridge {id}: {source}")]
    Fridge {
        /// The fridge's device id.
        id: String,
        /// Why.
        #[source]
        source: FridgeError,
    },
    /// Cabinets must be enrolled, and no EST URL was given.
    #[error(
        "{} not enrolled yet (no credentials under {}); pass --est URL to enroll them with \
         their tokens",
        .devices.join(", "),
        .state_dir.display()
    )]
    NeedsEnrollment {
        /// The devices without credentials.
        devices: Vec<String>,
        /// Where credentials were looked for.
        state_dir: PathBuf,
    },
    /// A device's folder holds credentials of another device.
    #[error("{} holds the credentials of {found}, not of {expected}", dir.display())]
    WrongDevice {
        /// The folder.
        dir: PathBuf,
        /// The device the tokens file names.
        expected: String,
        /// The device in the certificate.
        found: String,
    },
    /// Existing credentials are unusable.
    #[error("device {device}: {source}")]
    Credentials {
        /// The device.
        device: String,
        /// Why.
        #[source]
        source: cabinet::CabinetError,
    },
    /// Enrollment failed.
    #[error("enrolling {device} failed: {source}")]
    Enroll {
        /// The device.
        device: String,
        /// Why.
        #[source]
        source: est::Error,
    },
}

/// One line of a tokens file: a device id and its one-time token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    /// The device id.
    pub device: String,
    /// The one-time enrollment token.
    pub token: String,
}

/// Parses a tokens file: one `device-id token` per line, separated by white space, as written by
/// `echo "$id $(rxgate token create --device $id --kind cabinet)"`. Blank lines and lines
/// starting with `#` are skipped. Every bad line is reported, with its number.
pub fn parse_tokens(text: &str) -> Result<Vec<TokenEntry>, FleetError> {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [device, token] = fields[..] else {
            problems.push(format!(
                "line {n}: expected `device-id token`, got {} field(s)",
                fields.len()
            ));
            continue;
        };
        if let Err(e) = rxgate_certs::validate_device_id(device) {
            problems.push(format!("line {n}: {e}"));
            continue;
        }
        if !seen.insert(device.to_owned()) {
            problems.push(format!("line {n}: {device} is listed twice"));
            continue;
        }
        entries.push(TokenEntry {
            device: device.to_owned(),
            token: token.to_owned(),
        });
    }
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(FleetError::Tokens(problems))
    }
}

/// How to enroll cabinets that have no credentials yet.
#[derive(Debug, Clone)]
pub struct EnrollSettings {
    /// The gateway's EST URL.
    pub est_url: String,
    /// How to trust the gateway (for the first device; the others reuse the CA it received).
    pub trust: Trust,
    /// The key type to generate.
    pub key_alg: KeyAlg,
    /// The limit for each request.
    pub timeout: Duration,
}

/// A cabinet ready to run: its id and the folder with its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CabinetPlan {
    /// The device id.
    pub device: String,
    /// `device.key`, `device.crt` and `ca.crt` are here.
    pub dir: PathBuf,
}

/// Enrolls each device of `entries` into `state_dir/<device>`, unless that folder already holds
/// its credentials (tokens are single-use, so a second run reuses what the first enrolled).
/// Devices are enrolled one after the other, waiting while the gateway's EST rate limit (per
/// source address) answers 429.
pub async fn enroll_cabinets(
    entries: &[TokenEntry],
    state_dir: &Path,
    settings: Option<&EnrollSettings>,
) -> Result<Vec<CabinetPlan>, FleetError> {
    let mut plans = Vec::new();
    let mut missing = Vec::new();
    for entry in entries {
        let dir = state_dir.join(&entry.device);
        if Credentials::exist(&dir) {
            let found = Credentials::load(&dir)
                .map_err(|source| FleetError::Credentials {
                    device: entry.device.clone(),
                    source,
                })?
                .device;
            if found != entry.device {
                return Err(FleetError::WrongDevice {
                    dir,
                    expected: entry.device.clone(),
                    found,
                });
            }
        } else {
            missing.push(entry.device.clone());
        }
        plans.push(CabinetPlan {
            device: entry.device.clone(),
            dir,
        });
    }
    if missing.is_empty() {
        return Ok(plans);
    }
    let Some(settings) = settings else {
        return Err(FleetError::NeedsEnrollment {
            devices: missing,
            state_dir: state_dir.to_owned(),
        });
    };
    let mut trust = settings.trust.clone();
    for entry in entries.iter().filter(|e| missing.contains(&e.device)) {
        let enrolled = enroll_one(entry, state_dir, settings, &trust).await?;
        tracing::info!(device = %entry.device, serial = %enrolled.serial, dir = %state_dir.join(&entry.device).display(), "Cabinet enrolled.");
        // The first device established trust in the gateway (perhaps by fingerprint, or
        // unverified); the others verify the gateway against the CA it received.
        trust = Trust::CaFile(enrolled.ca);
    }
    Ok(plans)
}

async fn enroll_one(
    entry: &TokenEntry,
    state_dir: &Path,
    settings: &EnrollSettings,
    trust: &Trust,
) -> Result<est::EnrolledPaths, FleetError> {
    let mut wait = Duration::from_secs(2);
    let mut attempt = 1;
    loop {
        let result = est::enroll(EnrollOptions {
            est_url: settings.est_url.clone(),
            device_id: entry.device.clone(),
            token: entry.token.clone(),
            out_dir: state_dir.join(&entry.device),
            trust: trust.clone(),
            key_alg: settings.key_alg,
            timeout: settings.timeout,
        })
        .await;
        match result {
            // Rate limited before the token was looked at: it is still valid.
            Err(est::Error::Http { status: 429, .. }) if attempt < ENROLL_ATTEMPTS => {
                tracing::info!(device = %entry.device, retry_in = ?wait, "The gateway limits enrollment requests; waiting.");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
                attempt += 1;
            }
            result => {
                return result.map_err(|source| FleetError::Enroll {
                    device: entry.device.clone(),
                    source,
                });
            }
        }
    }
}

/// Makes `model` absolute, checking that it exists: the config snippet is appended to a
/// gateway.toml elsewhere, whose relative paths are relative to its own folder.
pub fn resolve_model(model: &Path) -> Result<PathBuf, FleetError> {
    std::fs::canonicalize(model).map_err(|e| FleetError::Model {
        path: model.to_owned(),
        reason: e.to_string(),
    })
}

/// What the fleet should be.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Number of simulated fridges.
    pub fridges: usize,
    /// Address the fridges listen on (must be one the gateway can reach).
    pub bind: IpAddr,
    /// Fridge `i` (from 0) listens on `base_port + i`; `None`: any free port.
    pub base_port: Option<u16>,
    /// Give a quarter of the fridges a fault (see [`plan_fridges`]).
    pub faults: bool,
    /// Simulated seconds per real second, for every fridge.
    pub speed: f64,
    /// Seed of the variation between fridges and of the cabinets' events.
    pub seed: u64,
    /// Fridge ids are this prefix and a number from 01.
    pub fridge_prefix: String,
    /// The register map named in the config snippet (absolute, see [`resolve_model`]).
    pub model: PathBuf,
    /// `poll_interval` in the config snippet.
    pub poll_interval: Duration,
    /// Enrolled cabinets to run.
    pub cabinets: Vec<CabinetPlan>,
    /// The gateway's device MQTT address, `host:port` (needed when there are cabinets).
    pub gateway: Option<String>,
    /// Events per second, per cabinet.
    pub cabinet_rate: f64,
    /// What kind of events the cabinets produce.
    pub scenario: Scenario,
    /// Time between reports.
    pub report_every: Duration,
}

impl Default for FleetConfig {
    /// No devices, on loopback, ephemeral ports, real time, polled every 10 s, one cabinet
    /// event every 5 s, reports every 10 s.
    fn default() -> Self {
        FleetConfig {
            fridges: 0,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            base_port: None,
            faults: false,
            speed: 1.0,
            seed: 1,
            fridge_prefix: "sim-fridge-".to_owned(),
            model: PathBuf::from(DEFAULT_MODEL),
            poll_interval: Duration::from_secs(10),
            cabinets: Vec::new(),
            gateway: None,
            cabinet_rate: 0.2,
            scenario: Scenario::Normal,
            report_every: Duration::from_secs(10),
        }
    }
}

/// One fridge of the fleet, before it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct FridgePlan {
    /// Its device id.
    pub id: String,
    /// Where it listens (port 0: any free port).
    pub listen: SocketAddr,
    /// Thermostat setpoint, °C (3.5 to 6.0: a 2–8 °C medicines fridge).
    pub setpoint_c: f64,
    /// Room temperature, °C.
    pub ambient_c: f64,
    /// Temperature at start, °C.
    pub initial_c: f64,
    /// The door opens for 30 s this often (simulated time).
    pub door_every: Duration,
    /// Faults to inject (simulated time).
    pub faults: Vec<ScheduledFault>,
}

/// The faults given in turn to every fourth fridge with `--faults`: an excursion (the
/// compressor fails), a silent device (power cut, then comms loss), and a failed probe.
fn fault_rotation(n: usize) -> ScheduledFault {
    let min = |m: u64| Duration::from_secs(60 * m);
    let (fault, at, duration) = match n % 4 {
        0 => (Fault::CompressorFailure, min(10), min(30)),
        1 => (Fault::PowerCut, min(5), min(10)),
        2 => (Fault::SensorFault, min(3), min(5)),
        _ => (Fault::CommsLoss, min(2), min(3)),
    };
    ScheduledFault {
        fault,
        at,
        duration: Some(duration),
    }
}

/// splitmix64: varied but reproducible fridges from a seed.
fn mix(seed: u64, i: u64, salt: u64) -> u64 {
    let mut z = seed
        .wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(salt.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The fridges of `config`: ids, addresses, setpoints, rooms, door habits and, with
/// `faults`, a fault for every fourth fridge (the 4th, 8th, …) taken in turn from: compressor
/// failure at 10 min for 30 min, power cut at 5 min for 10 min, sensor fault at 3 min for 5 min,
/// comms loss at 2 min for 3 min (simulated time).
pub fn plan_fridges(config: &FleetConfig) -> Result<Vec<FridgePlan>, FleetError> {
    if !config.speed.is_finite() || config.speed < 0.0 {
        return Err(FleetError::Invalid(format!(
            "speed {} must be 0 or more",
            config.speed
        )));
    }
    if let Some(base) = config.base_port {
        let last = u64::from(base) + config.fridges.saturating_sub(1) as u64;
        if base == 0 || last > u64::from(u16::MAX) {
            return Err(FleetError::Invalid(format!(
                "base port {base} with {} fridges needs ports {base} to {last}; pick a base \
                 port from 1 to {}",
                config.fridges,
                u64::from(u16::MAX) + 1 - config.fridges.max(1) as u64
            )));
        }
    }
    let width = config.fridges.to_string().len().max(2);
    let mut plans = Vec::with_capacity(config.fridges);
    for i in 0..config.fridges {
        let id = format!("{}{:0width$}", config.fridge_prefix, i + 1);
        rxgate_certs::validate_device_id(&id)
            .map_err(|e| FleetError::Invalid(format!("fridge id {id:?}: {e}")))?;
        let n = i as u64;
        let setpoint_c = 3.5 + 0.5 * (mix(config.seed, n, 1) % 6) as f64;
        let port = config.base_port.map_or(0, |base| base + i as u16);
        plans.push(FridgePlan {
            id,
            listen: SocketAddr::new(config.bind, port),
            setpoint_c,
            ambient_c: 19.0 + (mix(config.seed, n, 2) % 8) as f64,
            initial_c: setpoint_c + ((mix(config.seed, n, 3) % 21) as f64 - 10.0) / 10.0,
            door_every: Duration::from_secs(60 * (10 + 5 * (mix(config.seed, n, 4) % 11))),
            faults: if config.faults && i % 4 == 3 {
                vec![fault_rotation(i / 4)]
            } else {
                Vec::new()
            },
        });
    }
    Ok(plans)
}

/// `NAME@START+DURATION`, as `rxgate-sim fridge --fault` takes it.
pub fn describe_fault(fault: &ScheduledFault) -> String {
    let mut text = format!("{}@{}", fault.fault, humantime::format_duration(fault.at));
    if let Some(d) = fault.duration {
        let _ = write!(text, "+{}", humantime::format_duration(d));
    }
    text
}

/// The `[devices.<id>]` sections that make the gateway poll `fridges`, to append to
/// `gateway.toml`. `model` should be absolute (see [`resolve_model`]).
pub fn config_snippet(
    fridges: &[(String, SocketAddr)],
    model: &Path,
    poll_interval: Duration,
) -> String {
    let mut text = format!(
        "# Simulated fridges of `rxgate-sim fleet` ({}). Append to gateway.toml and restart the\n\
         # gateway; the addresses hold while the fleet runs with the same --base-port.\n",
        fridges.len()
    );
    for (id, addr) in fridges {
        let _ = write!(
            text,
            "\n[devices.{}]\nkind = \"fridge\"\ntransport = \"tcp\"\naddress = {}\nmodel = {}\n\
             poll_interval = {}\n",
            toml_key(id),
            toml_string(&addr.to_string()),
            toml_string(&model.display().to_string()),
            toml_string(&humantime::format_duration(poll_interval).to_string()),
        );
    }
    text
}

/// A TOML basic string. JSON's string escapes are a subset of TOML's, and serde_json never
/// writes `\/`, the one JSON escape TOML lacks.
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// A bare key when TOML allows one (device ids may contain '.', which would nest tables).
fn toml_key(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        s.to_owned()
    } else {
        toml_string(s)
    }
}

/// A fridge of a running fleet.
#[derive(Debug)]
pub struct RunningFridge {
    /// What it was started with.
    pub plan: FridgePlan,
    /// The simulator.
    pub sim: FridgeSim,
}

impl RunningFridge {
    /// The address it actually listens on.
    pub fn addr(&self) -> SocketAddr {
        self.sim.local_addr().unwrap_or(self.plan.listen)
    }
}

/// The fleet's state at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetReport {
    /// Fridges simulated.
    pub fridges: usize,
    /// Fridges that answer requests (not in a power cut or comms loss).
    pub fridges_answering: usize,
    /// Cabinets started.
    pub cabinets: usize,
    /// Cabinets holding a session with the gateway.
    pub cabinets_connected: usize,
    /// Events the cabinets produced.
    pub events_generated: u64,
    /// Events the gateway acknowledged.
    pub events_acknowledged: u64,
    /// Refusal notices the cabinets received.
    pub events_rejected: u64,
}

/// A running fleet.
#[derive(Debug)]
pub struct Fleet {
    fridges: Vec<RunningFridge>,
    cabinets: Vec<CabinetPlan>,
    gateway: Option<String>,
    cabinet_rate: f64,
    scenario: Scenario,
    seed: u64,
    model: PathBuf,
    poll_interval: Duration,
    report_every: Duration,
}

impl Fleet {
    /// Starts the fridges (their listeners are bound when this returns). Cabinets start with
    /// [`Fleet::run`].
    pub async fn start(config: FleetConfig) -> Result<Fleet, FleetError> {
        let plans = plan_fridges(&config)?;
        if !config.cabinets.is_empty() {
            if config.gateway.is_none() {
                return Err(FleetError::Invalid(
                    "cabinets need the gateway's MQTT address (--gateway HOST:PORT)".to_owned(),
                ));
            }
            let (min, max) = cabinet::RATE_RANGE;
            if !(min..=max).contains(&config.cabinet_rate) {
                return Err(FleetError::Invalid(format!(
                    "cabinet rate {} must be between {min} and {max} events per second",
                    config.cabinet_rate
                )));
            }
        }
        let mut fridges = Vec::with_capacity(plans.len());
        for plan in plans {
            let sim = FridgeSim::start(FridgeOptions {
                tcp: Some(plan.listen),
                speed: config.speed,
                setpoint_c: plan.setpoint_c,
                ambient_c: plan.ambient_c,
                initial_c: Some(plan.initial_c),
                schedule: plan.faults.clone(),
                door_every: Some(plan.door_every),
                ..FridgeOptions::default()
            })
            .await
            .map_err(|source| FleetError::Fridge {
                id: plan.id.clone(),
                source,
            })?;
            fridges.push(RunningFridge { plan, sim });
        }
        Ok(Fleet {
            fridges,
            cabinets: config.cabinets,
            gateway: config.gateway,
            cabinet_rate: config.cabinet_rate,
            scenario: config.scenario,
            seed: config.seed,
            model: config.model,
            poll_interval: config.poll_interval,
            report_every: config.report_every,
        })
    }

    /// The running fridges.
    pub fn fridges(&self) -> &[RunningFridge] {
        &self.fridges
    }

    /// The cabinets [`Fleet::run`] starts.
    pub fn cabinets(&self) -> &[CabinetPlan] {
        &self.cabinets
    }

    /// The `[devices.<id>]` sections for the running fridges (see [`config_snippet`]).
    pub fn config_snippet(&self) -> String {
        let fridges: Vec<(String, SocketAddr)> = self
            .fridges
            .iter()
            .map(|f| (f.plan.id.clone(), f.addr()))
            .collect();
        config_snippet(&fridges, &self.model, self.poll_interval)
    }

    /// How many fridges answer requests now.
    pub fn fridges_answering(&self) -> usize {
        self.fridges
            .iter()
            .filter(|f| !f.sim.snapshot().silent())
            .count()
    }

    fn report(&self, cabinets: &[watch::Receiver<CabinetStats>]) -> FleetReport {
        let mut report = FleetReport {
            fridges: self.fridges.len(),
            fridges_answering: self.fridges_answering(),
            cabinets: cabinets.len(),
            ..FleetReport::default()
        };
        for stats in cabinets {
            let s = *stats.borrow();
            report.cabinets_connected += usize::from(s.connected);
            report.events_generated += s.generated;
            report.events_acknowledged += s.acknowledged;
            report.events_rejected += s.rejected;
        }
        report
    }

    /// Runs the cabinets and logs a report every `report_every` until `stop` turns true; then
    /// stops the cabinets (each disconnects cleanly) and the fridges, and returns the last
    /// report. A cabinet that fails is logged; the rest of the fleet goes on.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> FleetReport {
        let mut tasks = JoinSet::new();
        let mut observers = Vec::with_capacity(self.cabinets.len());
        let gateway = self.gateway.clone().unwrap_or_default();
        for (i, plan) in self.cabinets.iter().enumerate() {
            let (sender, receiver) = watch::channel(CabinetStats::default());
            observers.push(receiver);
            let options = CabinetOptions {
                gateway: gateway.clone(),
                dir: plan.dir.clone(),
                rate: self.cabinet_rate,
                count: None,
                seed: self.seed.wrapping_add(i as u64 + 1),
                scenario: self.scenario,
            };
            let device = plan.device.clone();
            let stop = stop.clone();
            tasks
                .spawn(async move { (device, cabinet::run_observed(options, stop, sender).await) });
        }
        let mut every = tokio::time::interval(self.report_every.max(Duration::from_millis(100)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            tokio::select! {
                () = cabinet::stop_requested(&mut stop) => break,
                _ = every.tick() => {
                    let r = self.report(&observers);
                    tracing::info!(
                        fridges_answering = format_args!("{}/{}", r.fridges_answering, r.fridges),
                        cabinets_connected = format_args!("{}/{}", r.cabinets_connected, r.cabinets),
                        events_acknowledged = r.events_acknowledged,
                        events_rejected = r.events_rejected,
                        events_waiting = r.events_generated.saturating_sub(r.events_acknowledged),
                        "Fleet."
                    );
                }
                Some(done) = tasks.join_next() => log_cabinet_end(done),
            }
        }
        while let Some(done) = tasks.join_next().await {
            log_cabinet_end(done);
        }
        let report = self.report(&observers);
        for fridge in self.fridges {
            fridge.sim.stop().await;
        }
        report
    }
}

fn log_cabinet_end(
    done: Result<(String, Result<CabinetStats, cabinet::CabinetError>), tokio::task::JoinError>,
) {
    match done {
        Ok((device, Ok(stats))) => tracing::debug!(
            device = %device,
            acknowledged = stats.acknowledged,
            "Cabinet stopped."
        ),
        Ok((device, Err(e))) => tracing::error!(device = %device, error = %e, "Cabinet failed."),
        Err(e) => tracing::error!(error = %e, "Cabinet task failed."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_files_list_devices_and_tokens_skipping_blanks_and_comments() {
        let entries = parse_tokens("# made by a loop\ncab-01 tok1\n\n  cab-02\ttok2  \n").unwrap();
        assert_eq!(
            entries,
            [
                TokenEntry {
                    device: "cab-01".to_owned(),
                    token: "tok1".to_owned()
                },
                TokenEntry {
                    device: "cab-02".to_owned(),
                    token: "tok2".to_owned()
                },
            ]
        );
    }

    #[test]
    fn every_bad_tokens_line_is_reported_with_its_number() {
        let Err(FleetError::Tokens(problems)) =
            parse_tokens("cab-01 tok1\ncab-02\ncab-01 tok3\nbad/id tok4\ncab-05 a b\n")
        else {
            panic!("expected a tokens error");
        };
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].starts_with("line 2: expected `device-id token`, got 1"));
        assert_eq!(problems[1], "line 3: cab-01 is listed twice");
        assert!(problems[2].starts_with("line 4: "), "{problems:?}");
        assert!(problems[3].starts_with("line 5: expected `device-id token`, got 3"));
    }

    fn config(fridges: usize) -> FleetConfig {
        FleetConfig {
            fridges,
            ..FleetConfig::default()
        }
    }

    #[test]
    fn fridges_are_numbered_and_varied_within_a_medicines_fridge_range() {
        let plans = plan_fridges(&config(12)).unwrap();
        assert_eq!(plans[0].id, "sim-fridge-01");
        assert_eq!(plans[11].id, "sim-fridge-12");
        assert!(plans.iter().all(|p| (3.5..=6.0).contains(&p.setpoint_c)));
        assert!(plans.iter().all(|p| p.faults.is_empty()));
        let setpoints: HashSet<u64> = plans.iter().map(|p| p.setpoint_c.to_bits()).collect();
        assert!(setpoints.len() > 1, "setpoints should vary");
        assert_eq!(plan_fridges(&config(12)).unwrap(), plans, "reproducible");
        assert_eq!(plan_fridges(&config(100)).unwrap()[0].id, "sim-fridge-001");
    }

    #[test]
    fn with_faults_every_fourth_fridge_gets_the_next_fault_of_the_rotation() {
        let plans = plan_fridges(&FleetConfig {
            faults: true,
            ..config(16)
        })
        .unwrap();
        let faults: Vec<(usize, String)> = plans
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.faults.iter().map(move |f| (i, describe_fault(f))))
            .collect();
        assert_eq!(
            faults,
            [
                (3, "compressor-failure@10m+30m".to_owned()),
                (7, "power-cut@5m+10m".to_owned()),
                (11, "sensor-fault@3m+5m".to_owned()),
                (15, "comms-loss@2m+3m".to_owned()),
            ]
        );
    }

    #[test]
    fn base_ports_are_consecutive_and_must_fit() {
        let plans = plan_fridges(&FleetConfig {
            base_port: Some(15020),
            ..config(3)
        })
        .unwrap();
        let ports: Vec<u16> = plans.iter().map(|p| p.listen.port()).collect();
        assert_eq!(ports, [15020, 15021, 15022]);
        assert!(matches!(
            plan_fridges(&FleetConfig {
                base_port: Some(65535),
                ..config(2)
            }),
            Err(FleetError::Invalid(_))
        ));
    }

    #[test]
    fn the_config_snippet_quotes_what_toml_needs_quoted() {
        let snippet = config_snippet(
            &[
                ("fridge-1".to_owned(), "127.0.0.1:1502".parse().unwrap()),
                ("fridge.2".to_owned(), "127.0.0.1:1503".parse().unwrap()),
            ],
            Path::new("/srv/rx \"gate\"/acme-fr400.toml"),
            Duration::from_secs(5),
        );
        let parsed: toml::Table = snippet.parse().unwrap();
        let devices = parsed["devices"].as_table().unwrap();
        assert_eq!(devices.len(), 2, "{snippet}");
        let second = devices["fridge.2"].as_table().unwrap();
        assert_eq!(second["address"].as_str(), Some("127.0.0.1:1503"));
        assert_eq!(
            second["model"].as_str(),
            Some("/srv/rx \"gate\"/acme-fr400.toml")
        );
        assert_eq!(second["poll_interval"].as_str(), Some("5s"));
    }
}
