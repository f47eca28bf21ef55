//! `rxgate-sim`: simulated pharmacy devices. This file only parses arguments and calls the
//! library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use rxgate_certs::KeyAlg;
use rxgate_sim::est::{self, EnrollOptions, RenewOptions, RenewOutcome, Trust};
use rxgate_sim::fridge::{FridgeOptions, FridgeSim, ScheduledFault, TlsOptions};

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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
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
            ca,
            ca_fingerprint,
            insecure_bootstrap,
            key_alg,
            timeout,
        } => {
            let trust = match (ca, ca_fingerprint, insecure_bootstrap) {
                (Some(file), _, _) => Trust::CaFile(file),
                (None, Some(fp), _) => Trust::Fingerprint(fp),
                (None, None, true) => Trust::InsecureBootstrap,
                (None, None, false) => anyhow::bail!(
                    "no way to trust the gateway: pass --ca FILE with the gateway's CA \
                     certificate (<data_dir>/ca/ca.crt on the gateway), --ca-fingerprint SHA256, or \
                     --insecure-bootstrap to fetch the CA unverified and check its fingerprint"
                ),
            };
            let enrolled = est::enroll(EnrollOptions {
                est_url: est,
                device_id: device.clone(),
                token,
                out_dir: out,
                trust,
                key_alg: key_alg.into(),
                timeout,
            })
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
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
            fridge.stop().await;
        }
    }
    Ok(())
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}
