//! `rxgate-sim`: simulated pharmacy devices. This file only parses arguments and calls the
//! library.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use rxgate_certs::KeyAlg;
use rxgate_sim::cabinet::{self, CabinetOptions, Credentials, Scenario};
use rxgate_sim::est::{self, EnrollOptions, RenewOptions, RenewOutcome, Trust};
use rxgate_sim::fleet::{self, EnrollSettings, Fleet, FleetConfig};
use rxgate_sim::fridge::{FridgeOptions, FridgeSim, ScheduledFault, TlsOptions};
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(
    name = "rxgate-sim",
    version,
    about = "Simulated pharmacy devices for rxgate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll a device over EST: make a key, get a certificate with a one-time token, and write
    /// device.key, device.crt and ca.crt into --out.
    Enroll {
        /// The gateway's EST URL, like https://192.168.1.20:8443.
        #[arg(long, value_name = "URL")]
        est: String,
        /// The device id the token was created for.
        #[arg(long, value_name = "ID")]
        device: String,
        /// The one-time enrollment token (`rxgate token create`).
        #[arg(
            long,
            value_name = "TOKEN",
            env = "RXGATE_TOKEN",
            hide_env_values = true
        )]
        token: String,
        /// The folder to write the key, certificate and CA chain into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[command(flatten)]
        trust: TrustArgs,
        /// The key type to generate.
        #[arg(long, value_enum, default_value_t = KeyAlgArg::P256)]
        key_alg: KeyAlgArg,
        /// The limit for each request.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Renew a device certificate over EST with mutual TLS, replacing device.key and device.crt
    /// in --dir.
    Renew {
        /// The gateway's EST URL, like https://192.168.1.20:8443.
        #[arg(long, value_name = "URL")]
        est: String,
        /// The folder `enroll` wrote.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The key type to generate.
        #[arg(long, value_enum, default_value_t = KeyAlgArg::P256)]
        key_alg: KeyAlgArg,
        /// Renew only if the certificate ends within this time, like 7d.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        if_expiring_within: Option<Duration>,
        /// The limit for each request.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Simulate a medication fridge (ACME FR-400 register map, config/devices/acme-fr400.toml)
    /// serving Modbus/TCP, Modbus/TCP Security and/or RTU on a pseudo-terminal. Prints one line
    /// `ready tcp=ADDR tls=ADDR rtu=PATH` on stdout once serving, then runs until Ctrl-C.
    Fridge {
        /// Serve Modbus/TCP here (port 0: any free port). Default 127.0.0.1:1502 when neither
        /// --tls nor --rtu is given.
        #[arg(long, value_name = "ADDR")]
        tcp: Option<SocketAddr>,
        /// Serve Modbus/TCP Security (TLS) here; needs --cert and --key.
        #[arg(long, value_name = "ADDR", requires_all = ["cert", "key"])]
        tls: Option<SocketAddr>,
        /// The fridge's TLS certificate chain (PEM).
        #[arg(long, value_name = "FILE")]
        cert: Option<PathBuf>,
        /// The key of --cert (PEM).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Require client certificates issued by this CA (PEM): mutual TLS, as Modbus/TCP
        /// Security asks.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Serve Modbus RTU on a new pseudo-terminal (its path is printed).
        #[arg(long)]
        rtu: bool,
        /// Unit id answered on RTU.
        #[arg(long, default_value_t = 1)]
        unit: u8,
        /// Simulated seconds per real second (60: an hour passes in a minute; 0 freezes).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Thermostat setpoint, °C.
        #[arg(long, default_value_t = 5.0, allow_negative_numbers = true)]
        setpoint: f64,
        /// Room temperature, °C.
        #[arg(long, default_value_t = 22.0, allow_negative_numbers = true)]
        ambient: f64,
        /// Temperature at start, °C (default: the setpoint).
        #[arg(long, allow_negative_numbers = true)]
        initial: Option<f64>,
        /// Inject a fault: NAME@START[+DURATION] in simulated time, NAME one of
        /// compressor-failure, power-cut, sensor-fault, comms-loss, door-open. Repeatable, like
        /// --fault compressor-failure@60s --fault comms-loss@30s+20s.
        #[arg(long = "fault", value_name = "SPEC")]
        faults: Vec<ScheduledFault>,
        /// Open the door for 30 s this often (simulated time), like 20m.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        door_every: Option<Duration>,
    },
    /// Simulate a dispensing cabinet: publish controlled-substance access events to the gateway
    /// over MQTT with mutual TLS until --count events are acknowledged or Ctrl-C, then print how
    /// many were acknowledged and refused. With --est, --device and --token, enroll into --dir
    /// first (unless it already holds credentials).
    Cabinet {
        /// The gateway's device MQTT address, like 192.168.1.20:8883.
        #[arg(long, value_name = "HOST:PORT")]
        gateway: String,
        /// The device's folder: device.key, device.crt and ca.crt (as `enroll` writes them).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Events per second (0.2: one every 5 s).
        #[arg(long, value_name = "PER_SECOND", default_value = "0.2", value_parser = event_rate)]
        rate: f64,
        /// Stop once this many events are acknowledged (default: run until Ctrl-C).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
        /// Seed of the event generator: the same seed gives the same events (default: random,
        /// logged).
        #[arg(long, value_name = "S")]
        seed: Option<u64>,
        /// Day-to-day use, or patterns the gateway should flag (unwitnessed overrides and
        /// wastes, weak authentication).
        #[arg(long, value_enum, default_value_t = ScenarioArg::Normal)]
        scenario: ScenarioArg,
        #[command(flatten)]
        enroll: CabinetEnrollArgs,
    },
    /// Run many simulated devices at once, as a load generator: N Modbus/TCP fridges and M
    /// dispensing cabinets. Writes the [devices.<id>] sections the gateway needs to poll the
    /// fridges (--config-out), enrolls the cabinets listed in --tokens if needed, and reports
    /// every 10 s until Ctrl-C.
    Fleet(FleetArgs),
}

/// How a device trusts the gateway when it enrolls.
#[derive(Debug, Args)]
struct TrustArgs {
    /// The gateway's CA certificate (PEM), to verify the gateway.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["ca_fingerprint", "insecure_bootstrap"])]
    ca: Option<PathBuf>,
    /// The SHA-256 fingerprint of the gateway's CA: fetch the CA and accept it only if it has
    /// this fingerprint.
    #[arg(long, value_name = "SHA256", conflicts_with = "insecure_bootstrap")]
    ca_fingerprint: Option<String>,
    /// Fetch the gateway's CA without verifying the gateway, print its fingerprint, and trust
    /// it. Only on a network you control.
    #[arg(long)]
    insecure_bootstrap: bool,
}

impl TrustArgs {
    fn trust(self) -> anyhow::Result<Trust> {
        let trust = match (self.ca, self.ca_fingerprint, self.insecure_bootstrap) {
            (Some(file), _, _) => Trust::CaFile(file),
            (None, Some(fp), _) => Trust::Fingerprint(fp),
            (None, None, true) => Trust::InsecureBootstrap,
            (None, None, false) => anyhow::bail!(
                "no way to trust the gateway: pass --ca FILE with the gateway's CA certificate \
                 (<data_dir>/ca/ca.crt on the gateway), --ca-fingerprint SHA256, or \
                 --insecure-bootstrap to fetch the CA unverified and check its fingerprint"
            ),
        };
        Ok(trust)
    }
}

/// `rxgate-sim cabinet`'s optional enrollment.
#[derive(Debug, Args)]
struct CabinetEnrollArgs {
    /// Enroll first, at this EST URL (like https://192.168.1.20:8443), when --dir holds no
    /// credentials yet.
    #[arg(long, value_name = "URL", requires_all = ["device", "token"])]
    est: Option<String>,
    /// The device id the token was created for (with --est).
    #[arg(long, value_name = "ID", requires = "est")]
    device: Option<String>,
    /// The one-time enrollment token (with --est).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "RXGATE_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    #[command(flatten)]
    trust: TrustArgs,
    /// The key type to generate.
    #[arg(long, value_enum, default_value_t = KeyAlgArg::P256)]
    key_alg: KeyAlgArg,
    /// The limit for each EST request.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// `rxgate-sim fleet`.
#[derive(Debug, Args)]
struct FleetArgs {
    /// Simulated Modbus/TCP fridges to start.
    #[arg(long, value_name = "N", default_value_t = 0)]
    fridges: usize,
    /// Dispensing cabinets to run: the first M devices of --tokens.
    #[arg(long, value_name = "M", default_value_t = 0)]
    cabinets: usize,
    /// Address the fridges listen on; the gateway must reach them there.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Fridge N listens on BASE_PORT + N - 1, so the gateway config stays valid across runs
    /// (default: any free ports, new ones each run).
    #[arg(long, value_name = "BASE_PORT")]
    base_port: Option<u16>,
    /// Give every fourth fridge a fault, in turn: compressor failure (10m+30m), power cut
    /// (5m+10m), sensor fault (3m+5m), comms loss (2m+3m), in simulated time.
    #[arg(long)]
    faults: bool,
    /// Simulated seconds per real second for the fridges (60: an hour passes in a minute).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Seed of the variation between fridges and of the cabinets' events (default: random,
    /// logged).
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Fridge ids are this prefix and a number: sim-fridge-01, sim-fridge-02, ...
    #[arg(long, value_name = "PREFIX", default_value = "sim-fridge-")]
    fridge_prefix: String,
    /// Write the [devices.<id>] sections for the fridges to this file, to append to
    /// gateway.toml.
    #[arg(long, value_name = "FILE")]
    config_out: Option<PathBuf>,
    /// The fridges' register map, named (as an absolute path) in those sections.
    #[arg(long, value_name = "FILE", default_value = fleet::DEFAULT_MODEL)]
    model: PathBuf,
    /// poll_interval in those sections.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// The cabinets: one `device-id token` per line (see README for a loop over `rxgate token
    /// create`).
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// The gateway's device MQTT address, like 192.168.1.20:8883 (with --cabinets).
    #[arg(long, value_name = "HOST:PORT")]
    gateway: Option<String>,
    /// Each cabinet's credentials live in DIR/<device-id>; devices found there are not
    /// enrolled again.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The gateway's EST URL, like https://192.168.1.20:8443, to enroll cabinets not enrolled
    /// yet.
    #[arg(long, value_name = "URL")]
    est: Option<String>,
    #[command(flatten)]
    trust: TrustArgs,
    /// The key type cabinets generate when they enroll.
    #[arg(long, value_enum, default_value_t = KeyAlgArg::P256)]
    key_alg: KeyAlgArg,
    /// The limit for each EST request.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Events per second, per cabinet.
    #[arg(long, value_name = "PER_SECOND", default_value = "0.2", value_parser = event_rate)]
    cabinet_rate: f64,
    /// What kind of events the cabinets produce.
    #[arg(long, value_enum, default_value_t = ScenarioArg::Normal)]
    scenario: ScenarioArg,
    /// Time between reports.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    report_every: Duration,
}

impl FleetArgs {
    /// What clap cannot say: what --cabinets needs, and that there is something to run.
    fn check(&self) -> Result<(), String> {
        if self.fridges == 0 && self.cabinets == 0 {
            return Err("nothing to simulate: pass --fridges N and/or --cabinets M".to_owned());
        }
        if self.cabinets > 0 {
            let missing: Vec<&str> = [
                ("--tokens FILE", self.tokens.is_none()),
                ("--gateway HOST:PORT", self.gateway.is_none()),
                ("--state-dir DIR", self.state_dir.is_none()),
            ]
            .into_iter()
            .filter_map(|(name, absent)| absent.then_some(name))
            .collect();
            if !missing.is_empty() {
                return Err(format!("--cabinets needs {}", missing.join(", ")));
            }
        }
        Ok(())
    }
}

/// A cabinet event rate, events per second.
fn event_rate(text: &str) -> Result<f64, String> {
    let (min, max) = cabinet::RATE_RANGE;
    match text.parse::<f64>() {
        Ok(rate) if (min..=max).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate from {min} to {max} events per second"
        )),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScenarioArg {
    /// Day-to-day use.
    Normal,
    /// Suspicious patterns.
    Suspicious,
}

impl From<ScenarioArg> for Scenario {
    fn from(arg: ScenarioArg) -> Self {
        match arg {
            ScenarioArg::Normal => Scenario::Normal,
            ScenarioArg::Suspicious => Scenario::Suspicious,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KeyAlgArg {
    /// ECDSA P-256.
    P256,
    /// ECDSA P-384.
    P384,
    /// Ed25519.
    Ed25519,
}

impl From<KeyAlgArg> for KeyAlg {
    fn from(arg: KeyAlgArg) -> Self {
        match arg {
            KeyAlgArg::P256 => KeyAlg::P256,
            KeyAlgArg::P384 => KeyAlg::P384,
            KeyAlgArg::Ed25519 => KeyAlg::Ed25519,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // A fleet's devices share the cores; a single device needs one thread.
    let mut builder = match cli.command {
        Command::Fleet(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping causes whose text an outer message already
/// includes (the library errors name their cause themselves).
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Enroll {
            est,
            device,
            token,
            out,
            trust,
            key_alg,
            timeout,
        } => {
            enroll(EnrollOptions {
                est_url: est,
                device_id: device,
                token,
                out_dir: out,
                trust: trust.trust()?,
                key_alg: key_alg.into(),
                timeout,
            })
            .await?;
        }
        Command::Renew {
            est,
            dir,
            key_alg,
            if_expiring_within,
            timeout,
        } => {
            let outcome = est::renew(RenewOptions {
                est_url: est,
                dir: dir.clone(),
                key_alg: key_alg.into(),
                if_expiring_within,
                now: time::OffsetDateTime::now_utc(),
                timeout,
            })
            .await
            .with_context(|| format!("renewing the certificate in {} failed", dir.display()))?;
            match outcome {
                RenewOutcome::Renewed {
                    serial,
                    not_after,
                    previous_not_after,
                } => println!(
                    "Renewed: certificate {serial} valid until {} (the previous one ended {}); \
                     replaced {} and {}.",
                    rfc3339(not_after),
                    rfc3339(previous_not_after),
                    dir.join(est::KEY_FILE).display(),
                    dir.join(est::CERT_FILE).display()
                ),
                RenewOutcome::NotDue { not_after } => println!(
                    "Not renewed: the certificate is valid until {}, beyond the \
                     --if-expiring-within window.",
                    rfc3339(not_after)
                ),
            }
        }
        Command::Fridge {
            tcp,
            tls,
            cert,
            key,
            ca,
            rtu,
            unit,
            speed,
            setpoint,
            ambient,
            initial,
            faults,
            door_every,
        } => {
            let tls = match (tls, cert, key) {
                (Some(listen), Some(cert), Some(key)) => {
                    Some(TlsOptions::from_files(listen, &cert, &key, ca.as_deref())?)
                }
                _ => None,
            };
            let tcp = match tcp {
                None if tls.is_none() && !rtu => Some(SocketAddr::from(([127, 0, 0, 1], 1502))),
                other => other,
            };
            let fridge = FridgeSim::start(FridgeOptions {
                tcp,
                tls,
                rtu,
                unit,
                speed,
                setpoint_c: setpoint,
                ambient_c: ambient,
                initial_c: initial,
                schedule: faults,
                door_every,
                ..FridgeOptions::default()
            })
            .await
            .context("cannot start the simulated fridge")?;
            println!("{}", fridge.ready_line());
            std::io::Write::flush(&mut std::io::stdout())?;
            let mut report = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = report.tick() => {
                        let f = fridge.snapshot();
                        tracing::info!(
                            sim_time = %humantime::format_duration(Duration::from_secs(f.sim_time_s as u64)),
                            temperature_c = format_args!("{:.1}", f.temperature_c),
                            compressor = f.compressor_relay,
                            door_open = f.door_open(),
                            faults = f.fault_mask(),
                            "Fridge."
                        );
                    }
                    () = shutdown_signal() => break,
                }
            }
            fridge.stop().await;
        }
        Command::Cabinet {
            gateway,
            dir,
            rate,
            count,
            seed,
            scenario,
            enroll: enroll_args,
        } => {
            if let Some(est_url) = enroll_args.est {
                let device = enroll_args.device.context("--est needs --device")?;
                let token = enroll_args.token.context("--est needs --token")?;
                if Credentials::exist(&dir) {
                    let found = Credentials::load(&dir)?.device;
                    anyhow::ensure!(
                        found == device,
                        "{} already holds the credentials of {found}, not of {device}; pass \
                         another --dir",
                        dir.display()
                    );
                    tracing::info!(device = %device, dir = %dir.display(), "Already enrolled; not enrolling again.");
                } else {
                    enroll(EnrollOptions {
                        est_url,
                        device_id: device,
                        token,
                        out_dir: dir.clone(),
                        trust: enroll_args.trust.trust()?,
                        key_alg: enroll_args.key_alg.into(),
                        timeout: enroll_args.timeout,
                    })
                    .await?;
                }
            }
            anyhow::ensure!(
                Credentials::exist(&dir),
                "no device credentials in {}: pass --est URL, --device ID and --token TOKEN \
                 (and --ca FILE) to enroll into it, or enroll first with `rxgate-sim enroll`",
                dir.display()
            );
            let device = Credentials::load(&dir)?.device;
            let seed = seed.unwrap_or_else(random_seed);
            tracing::info!(device = %device, seed, rate, "Cabinet starting.");
            let stop = stop_on_signal();
            let stats = cabinet::run(
                CabinetOptions {
                    gateway,
                    dir,
                    rate,
                    count,
                    seed,
                    scenario: scenario.into(),
                },
                stop,
            )
            .await
            .with_context(|| format!("cabinet {device} stopped"))?;
            println!(
                "Cabinet {device}: {} events acknowledged, {} rejected, {} unacknowledged.",
                stats.acknowledged,
                stats.rejected,
                stats.unacknowledged()
            );
        }
        Command::Fleet(args) => run_fleet(args).await?,
    }
    Ok(())
}

/// Enrolls a device and says what was written (`enroll`, and `cabinet --est`).
async fn enroll(options: EnrollOptions) -> anyhow::Result<()> {
    let device = options.device_id.clone();
    let enrolled = est::enroll(options)
        .await
        .with_context(|| format!("enrolling {device} failed"))?;
    if enrolled.bootstrapped {
        for ca in &enrolled.ca_fingerprints {
            eprintln!(
                "Trusted without verification: {} SHA-256 {}",
                ca.subject, ca.sha256
            );
        }
        eprintln!(
            "Compare with `openssl x509 -noout -fingerprint -sha256 -in <data_dir>/ca/ca.crt` \
             on the gateway; if it differs, delete {} and enroll again with --ca.",
            enrolled.ca.display()
        );
    }
    println!(
        "Enrolled {device}: certificate {} valid until {}.",
        enrolled.serial,
        rfc3339(enrolled.not_after)
    );
    println!(
        "Wrote {}, {} and {}.",
        enrolled.key.display(),
        enrolled.cert.display(),
        enrolled.ca.display()
    );
    Ok(())
}

async fn run_fleet(args: FleetArgs) -> anyhow::Result<()> {
    args.check().map_err(anyhow::Error::msg)?;
    let seed = args.seed.unwrap_or_else(random_seed);
    tracing::info!(seed, "Fleet starting.");
    // Only fridges are named in the config snippet: a fleet of cabinets needs no register map.
    let model = if args.fridges > 0 {
        fleet::resolve_model(&args.model)?
    } else {
        args.model.clone()
    };
    let mut cabinets = Vec::new();
    if let (Some(tokens), Some(state_dir)) = (&args.tokens, &args.state_dir)
        && args.cabinets > 0
    {
        let mut entries = read_tokens(tokens)?;
        anyhow::ensure!(
            entries.len() >= args.cabinets,
            "{} lists {} device(s); --cabinets {} needs as many",
            tokens.display(),
            entries.len(),
            args.cabinets
        );
        entries.truncate(args.cabinets);
        let settings = match args.est {
            Some(est_url) => Some(EnrollSettings {
                est_url,
                trust: args.trust.trust()?,
                key_alg: args.key_alg.into(),
                timeout: args.timeout,
            }),
            None => None,
        };
        cabinets = fleet::enroll_cabinets(&entries, state_dir, settings.as_ref()).await?;
    }
    let fleet = Fleet::start(FleetConfig {
        fridges: args.fridges,
        bind: args.bind,
        base_port: args.base_port,
        faults: args.faults,
        speed: args.speed,
        seed,
        fridge_prefix: args.fridge_prefix,
        model,
        poll_interval: args.poll_interval,
        cabinets,
        gateway: args.gateway.clone(),
        cabinet_rate: args.cabinet_rate,
        scenario: args.scenario.into(),
        report_every: args.report_every,
    })
    .await?;
    for fridge in fleet.fridges() {
        let plan = &fridge.plan;
        let faults: Vec<String> = plan.faults.iter().map(fleet::describe_fault).collect();
        println!(
            "fridge {} listens on {} (setpoint {:.1} °C, room {:.0} °C, door every {}{})",
            plan.id,
            fridge.addr(),
            plan.setpoint_c,
            plan.ambient_c,
            humantime::format_duration(plan.door_every),
            if faults.is_empty() {
                String::new()
            } else {
                format!(", fault {}", faults.join(" "))
            }
        );
    }
    for cabinet in fleet.cabinets() {
        println!(
            "cabinet {} publishes to {} (credentials in {})",
            cabinet.device,
            args.gateway.as_deref().unwrap_or_default(),
            cabinet.dir.display()
        );
    }
    if let Some(out) = &args.config_out {
        std::fs::write(out, fleet.config_snippet())
            .with_context(|| format!("cannot write {}", out.display()))?;
        println!(
            "Wrote the [devices] sections of {} fridge(s) to {}: append them to gateway.toml and \
             restart the gateway.",
            fleet.fridges().len(),
            out.display()
        );
    } else if !fleet.fridges().is_empty() {
        println!(
            "The gateway polls only the fridges in its config: pass --config-out FILE for their \
             [devices] sections."
        );
    }
    std::io::Write::flush(&mut std::io::stdout())?;
    let report = fleet.run(stop_on_signal()).await;
    println!(
        "Fleet stopped: {}/{} fridges answering; {} cabinet event(s) acknowledged, {} rejected, \
         {} unacknowledged.",
        report.fridges_answering,
        report.fridges,
        report.events_acknowledged,
        report.events_rejected,
        report
            .events_generated
            .saturating_sub(report.events_acknowledged)
    );
    Ok(())
}

fn read_tokens(path: &Path) -> anyhow::Result<Vec<fleet::TokenEntry>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    fleet::parse_tokens(&text).with_context(|| format!("in {}", path.display()))
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A stop flag that turns true on Ctrl-C or SIGTERM.
fn stop_on_signal() -> watch::Receiver<bool> {
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("Stopping.");
        let _ = stop.send(true);
    });
    stopped
}

/// A seed that differs between runs (time and process id); logged so a run can be repeated.
fn random_seed() -> u64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from([&["rxgate-sim"], args].concat()).map(|cli| cli.command)
    }

    fn fleet(args: &[&str]) -> FleetArgs {
        match parse(&[&["fleet"], args].concat()) {
            Ok(Command::Fleet(args)) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cabinet_defaults_to_one_event_every_five_seconds_until_stopped() {
        let Command::Cabinet {
            rate,
            count,
            seed,
            enroll,
            ..
        } = parse(&["cabinet", "--gateway", "127.0.0.1:8883", "--dir", "c"]).unwrap()
        else {
            panic!("not a cabinet");
        };
        assert_eq!((rate, count, seed), (0.2, None, None));
        assert!(enroll.est.is_none());
    }

    #[test]
    fn cabinet_refuses_rates_out_of_range_and_a_zero_count() {
        for arg in [
            "--rate=0",
            "--rate=-1",
            "--rate=fast",
            "--rate=5000",
            "--count=0",
        ] {
            let err = parse(&["cabinet", "--gateway", "h:1", "--dir", "c", arg]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{arg}");
        }
    }

    #[test]
    fn cabinet_enrollment_needs_device_and_token_together_with_est() {
        let base = ["cabinet", "--gateway", "h:1", "--dir", "c"];
        let err = parse(
            &[
                &base[..],
                &["--est", "https://gw:8443", "--device", "cab-1"],
            ]
            .concat(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let err = parse(&[&base[..], &["--device", "cab-1"]].concat()).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let ok = parse(
            &[
                &base[..],
                &[
                    "--est",
                    "https://gw:8443",
                    "--device",
                    "cab-1",
                    "--token",
                    "t",
                    "--ca",
                    "ca.crt",
                ],
            ]
            .concat(),
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn fleet_cabinets_need_tokens_gateway_and_state_dir() {
        assert_eq!(
            fleet(&["--cabinets", "2"]).check(),
            Err("--cabinets needs --tokens FILE, --gateway HOST:PORT, --state-dir DIR".to_owned())
        );
        assert_eq!(
            fleet(&[
                "--cabinets",
                "2",
                "--tokens",
                "t",
                "--gateway",
                "h:1",
                "--state-dir",
                "s"
            ])
            .check(),
            Ok(())
        );
        assert!(
            fleet(&[])
                .check()
                .unwrap_err()
                .starts_with("nothing to simulate")
        );
        assert_eq!(fleet(&["--fridges", "3"]).check(), Ok(()));
    }

    #[test]
    fn fleet_defaults_match_the_documented_ones() {
        let args = fleet(&["--fridges", "3"]);
        assert_eq!(args.model, Path::new("config/devices/acme-fr400.toml"));
        assert_eq!(args.poll_interval, Duration::from_secs(10));
        assert_eq!(args.cabinet_rate, 0.2);
        assert_eq!(args.bind, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(args.base_port, None);
    }

    #[test]
    fn enroll_still_takes_exactly_one_way_to_trust_the_gateway() {
        let base = [
            "enroll",
            "--est",
            "https://gw:8443",
            "--device",
            "d",
            "--token",
            "t",
            "--out",
            "o",
        ];
        let err =
            parse(&[&base[..], &["--ca", "ca.crt", "--insecure-bootstrap"]].concat()).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let Command::Enroll { trust, .. } =
            parse(&[&base[..], &["--ca-fingerprint", "AB:CD"]].concat()).unwrap()
        else {
            panic!("not enroll");
        };
        assert!(matches!(trust.trust(), Ok(Trust::Fingerprint(fp)) if fp == "AB:CD"));
    }
}
