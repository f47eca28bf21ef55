//! The `rxgate` command line: parse, dispatch, print. Logic lives in the library modules.

mod backup;
mod doctor;
mod output;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::admin::{self, Request};
use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::pki::{self, InitOptions};

#[derive(Debug, Parser)]
#[command(
    name = "rxgate",
    version,
    about = "Secure IoT gateway for pharmacies: device identity, telemetry, cold-chain alerts, audit trail",
    propagate_version = true
)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "RXGATE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the CA, the gateway's server certificate and the store under data_dir.
    Init {
        /// Replace an existing CA (every enrolled device must then enroll again).
        #[arg(long)]
        force: bool,
        /// Import an intermediate CA certificate (PEM) from the pharmacy chain's PKI instead
        /// of creating a root.
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        /// Private key of --ca-cert (PEM, PKCS#8).
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// Certificates above --ca-cert up to the root (PEM); `cacerts` then returns the chain.
        #[arg(long, requires = "ca_cert")]
        ca_chain: Option<PathBuf>,
    },
    /// Run the gateway.
    Run,
    /// A guided tour on loopback: gateway, simulated devices and a stand-in cloud broker.
    Demo {
        /// Stop by itself after this long (e.g. 30s); default: run until Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Enrollment tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Enrolled devices.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Cold-chain alerts.
    Alerts {
        #[command(subcommand)]
        command: AlertsCommand,
    },
    /// Reports for pharmacists and inspectors.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// The policy every message passes.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The pseudonym the gateway gives a patient identifier, to find that patient's records.
    Pseudonym {
        /// The patient identifier as the dispensing cabinet sends it.
        patient_id: String,
    },
    /// The tamper-evident audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Encrypted backups: create, verify, restore.
    Backup {
        #[command(subcommand)]
        command: backup::BackupCommand,
    },
    /// Accounts of the people who use the console.
    User {
        #[command(subcommand)]
        command: users::UserCommand,
    },
    /// Whether the daemon runs, where it listens, how many devices it knows.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// A security and health check-up: each check passes, warns or fails, with what to do.
    /// Exits non-zero when a check fails.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// The keys at rest: sealed under the key-encryption key ([keys] in the config).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Whether each key, and the second-factor secrets, are sealed.
    Status,
    /// Seal every key and second-factor secret still stored in plain text (the gateway must
    /// be stopped; it also seals by itself when it starts with a key-encryption key).
    Seal,
    /// Write a new key-encryption key (32 random bytes, mode 0400) to FILE, for [keys].kek_file
    /// or for `systemd-creds encrypt`. Never replaces an existing file.
    GenerateKek { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a policy file; print every error (rule, key, position) and exit non-zero if any.
    Check { file: PathBuf },
    /// Show what a policy decides about one message, and the rules that made the decision.
    Test {
        file: PathBuf,
        /// The device the message comes from.
        #[arg(long)]
        device: String,
        /// Its kind (fridge, cabinet, sensor).
        #[arg(long, default_value = "cabinet")]
        kind: String,
        /// The message: a JSON file as the device would publish it.
        #[arg(long)]
        event: PathBuf,
        /// Which stream it is published on.
        #[arg(long, value_enum, default_value_t = StreamArg::Events)]
        stream: StreamArg,
        /// Evaluate at this time (RFC 3339) instead of now, e.g. to test opening hours.
        #[arg(long)]
        at: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StreamArg {
    Events,
    Telemetry,
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Alerts not yet resolved (--all: every alert), newest first.
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge an alert and say what was done. Stops escalation and silences the buzzer. The
    /// acknowledger is the operating-system user running the command.
    Ack {
        /// The alert id, from `rxgate alerts list`.
        id: String,
        /// The corrective action taken (kept with the alert and in the audit trail).
        #[arg(long)]
        note: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Daily minimum/maximum log (CSV) or chart (SVG) of one device's temperatures.
    Temperatures {
        #[arg(long)]
        device: String,
        /// First day, like 2026-05-01 (UTC days).
        #[arg(long)]
        from: String,
        /// Last day, included.
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value_t = ReportFormat::Csv)]
        format: ReportFormat,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ReportFormat {
    Csv,
    Svg,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and the signed checkpoints; exits non-zero naming the first entry
    /// that does not verify.
    Verify {
        /// A checkpoint message as the cloud received it (JSON file), to check the chain
        /// against: a chain truncated or rewritten on the gateway no longer matches it.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Print entries (oldest first) as JSON or CSV.
    Export {
        /// First day (2026-05-01) or instant (RFC 3339) to include.
        #[arg(long)]
        from: Option<String>,
        /// Day or instant to stop before.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
        format: ExportFormat,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Json,
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration; print every error with its key and value.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a one-time enrollment token for a device (only the token, on stdout).
    Create {
        /// Device id: 1-64 letters, digits, '.', '_' or '-'.
        #[arg(long)]
        device: String,
        /// Device kind: fridge, cabinet or sensor.
        #[arg(long)]
        kind: String,
        /// Lifetime (e.g. 30m, 2h); default: [enroll].token_ttl.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a pending token, by token id or device id.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// List devices: id, kind, status, serial, expiry, last seen.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a device: its certificates are refused everywhere from now on.
    Revoke {
        id: String,
        /// Why (kept in the audit trail).
        #[arg(long)]
        reason: String,
    },
}

/// Entry point of the `rxgate` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|errors| {
        anyhow::anyhow!(
            "invalid configuration {}:\n{errors}\n(run `rxgate --config {} config check` to see every problem)",
            path.display(),
            path.display()
        )
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check,
        } => Ok(config_check(&cli.config)),
        Command::Demo { duration } => {
            // The demo's own output is the show.
            crate::logging::init("error");
            let options = crate::demo::DemoOptions { duration };
            runtime()?.block_on(crate::demo::run(options, crate::clock::system(false)))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Init {
            force,
            ca_cert,
            ca_key,
            ca_chain,
        } => {
            let config = load(&cli.config)?;
            let options = InitOptions {
                force,
                ca_cert,
                ca_key,
                ca_chain,
            };
            let clock = crate::clock::system(config.gateway.assume_clock_synced);
            let report = pki::init(&config.pki(), &options, clock.as_ref())?;
            output::init(&report);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            let config = load(&cli.config)?;
            crate::logging::init(&config.gateway.log);
            let clock = crate::clock::system(config.gateway.assume_clock_synced);
            runtime()?.block_on(crate::daemon::run(config, clock))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Alerts { command } => {
            let config = load(&cli.config)?;
            let (request, json) = match command {
                AlertsCommand::List { all, json } => (Request::AlertList { all }, json),
                AlertsCommand::Ack { id, note } => (Request::AlertAck { id, note }, false),
            };
            let reply = admin::call(&config, request)?;
            output::reply(&reply, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            command:
                ReportCommand::Temperatures {
                    device,
                    from,
                    to,
                    format,
                    out,
                },
        } => {
            let config = load(&cli.config)?;
            let reply = admin::call(&config, Request::Report { device, from, to })?;
            let admin::Reply::Report(data) = reply else {
                anyhow::bail!("unexpected answer from the gateway");
            };
            let text = match format {
                ReportFormat::Csv => data.csv(),
                ReportFormat::Svg => data.svg(),
            };
            match out {
                Some(path) => {
                    std::fs::write(&path, text)
                        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                    eprintln!("wrote {}", path.display());
                }
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => match crate::policy::check_file(&file) {
            Ok(summary) => {
                println!("{summary}");
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                println!("{errors}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Policy {
            command:
                PolicyCommand::Test {
                    file,
                    device,
                    kind,
                    event,
                    stream,
                    at,
                },
        } => {
            let policy = match crate::policy::Policy::load(&file) {
                Ok(policy) => policy,
                Err(errors) => {
                    println!("{errors}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let payload = std::fs::read(&event)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", event.display()))?;
            let now = match at {
                Some(at) => {
                    time::OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339)
                        .map_err(|e| anyhow::anyhow!("--at {at:?} is not an RFC 3339 time: {e}"))?
                }
                None => time::OffsetDateTime::now_utc(),
            };
            // The site's pseudonym key when this machine is the gateway, else a throwaway one:
            // the pseudonyms shown are then not the site's.
            let key = load(&cli.config)
                .ok()
                .and_then(|config| config.pki().keyring().ok())
                .and_then(|keys| keys.read(crate::keys::Secret::PseudonymKey).ok().flatten())
                .map(|bytes| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes))
                .unwrap_or_else(|| {
                    eprintln!("note: no pseudonym key found; pseudonyms below are not this site's");
                    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"rxgate policy test")
                });
            let stream = match stream {
                StreamArg::Events => crate::policy::Stream::Events,
                StreamArg::Telemetry => crate::policy::Stream::Telemetry,
            };
            match crate::policy::test_event(&policy, &device, &kind, stream, &payload, now, &key) {
                Ok(decision) => {
                    print!("{}", decision.explain());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Pseudonym { patient_id } => {
            let config = load(&cli.config)?;
            let bytes = config
                .pki()
                .keyring()?
                .read(crate::keys::Secret::PseudonymKey)?
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "no pseudonym key in {} (run on the gateway, as its user)",
                        config.gateway.data_dir.display()
                    )
                })?;
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes);
            println!("{}", crate::policy::pseudonym(&key, patient_id.trim()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command } => {
            let config = load(&cli.config)?;
            match command {
                AuditCommand::Verify { checkpoint } => {
                    let checkpoint = checkpoint
                        .map(|path| {
                            std::fs::read_to_string(&path)
                                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
                        })
                        .transpose()?;
                    let reply = admin::call(&config, Request::AuditVerify { checkpoint })?;
                    Ok(output::audit_verified(&reply))
                }
                AuditCommand::Export { from, to, format } => {
                    let stdout = std::io::stdout();
                    let mut out = output::AuditExport::new(stdout.lock(), format);
                    out.begin()?;
                    admin::session(&config, |send| {
                        admin::export_pages(send, from, to, admin::EXPORT_PAGE, |entry| {
                            out.entry(&entry).map_err(|e| {
                                crate::error::Error::Invalid(format!(
                                    "cannot write the export: {e}"
                                ))
                            })
                        })
                    })?;
                    out.end()?;
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Backup { command } => backup::run(&cli.config, command),
        Command::User { command } => {
            let config = load(&cli.config)?;
            let (request, json) = command.request();
            let reply = admin::call(&config, request)?;
            output::reply(&reply, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { command } => keys_command(&cli.config, command),
        Command::Doctor { json } => {
            let config = load(&cli.config)?;
            let now = crate::clock::system(config.gateway.assume_clock_synced).now();
            let checks = doctor::run(&config, now, std::path::Path::new(doctor::APT_CONF_DIR));
            let worst = doctor::worst(&checks);
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "worst": worst, "checks": checks })
                );
            } else {
                doctor::print(&checks);
            }
            Ok(if worst == doctor::Level::Fail {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Status { json } => {
            let config = load(&cli.config)?;
            let reply = admin::call(&config, Request::Status)?;
            output::reply(&reply, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { command } => {
            let config = load(&cli.config)?;
            let (request, json) = match command {
                TokenCommand::Create { device, kind, ttl } => (
                    Request::TokenCreate {
                        device,
                        kind,
                        ttl_secs: ttl.map(|t| t.as_secs()),
                    },
                    false,
                ),
                TokenCommand::List { json } => (Request::TokenList, json),
                TokenCommand::Revoke { id } => (Request::TokenRevoke { id }, false),
            };
            let reply = admin::call(&config, request)?;
            output::reply(&reply, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Device { command } => {
            let config = load(&cli.config)?;
            let (request, json) = match command {
                DeviceCommand::List { json } => (Request::DeviceList, json),
                DeviceCommand::Revoke { id, reason } => {
                    (Request::DeviceRevoke { id, reason }, false)
                }
            };
            let reply = admin::call(&config, request)?;
            output::reply(&reply, json);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn config_check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            // The policy is checked here and at `rxgate run`, not by every command: a policy
            // being edited must not lock the pharmacist out of `rxgate alerts ack`.
            if let Some(policy) = &config.gateway.policy_file
                && let Err(errors) = crate::policy::Policy::load(policy)
            {
                println!(
                    "error: gateway.policy_file = {:?}: the policy does not load:",
                    policy.display().to_string()
                );
                println!("{errors}");
                return ExitCode::FAILURE;
            }
            for notice in crate::config::notices(&config) {
                println!("{notice}");
            }
            let limits = config
                .devices
                .iter()
                .filter_map(|(id, d)| crate::coldchain::Limits::of(d).map(|l| (id.clone(), l)))
                .collect();
            let today = crate::clock::system(config.gateway.assume_clock_synced)
                .now()
                .date();
            for notice in crate::admin::calibration_notices(&limits, today) {
                println!("notice: {notice}");
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                println!("error: {e}");
            }
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            ExitCode::FAILURE
        }
    }
}

/// `rxgate keys ...`.
fn keys_command(config_path: &std::path::Path, command: KeysCommand) -> anyhow::Result<ExitCode> {
    use crate::keys::{Secret, Stored};
    if let KeysCommand::GenerateKek { file } = &command {
        crate::keys::generate_kek(file)?;
        println!("Wrote a new key-encryption key to {}.", file.display());
        println!(
            "Keep a copy apart from the gateway's backups; then set [keys].kek_file, or seal it for \
             systemd: systemd-creds encrypt --name=rxgate-kek {} /etc/credstore.encrypted/rxgate-kek",
            file.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let config = load(config_path)?;
    let keys = config.pki().keyring()?;
    let open_people = |store: crate::store::Store| {
        let clock = crate::clock::system(config.gateway.assume_clock_synced);
        crate::people::People::new(
            store,
            clock,
            &config.gateway.site,
            &config.gateway.server_names,
        )
        .with_sealer(keys.sealer())
    };
    match command {
        KeysCommand::GenerateKek { .. } => unreachable!("handled above"),
        KeysCommand::Status => {
            println!(
                "key-encryption key: {}",
                if keys.sealing() {
                    "available"
                } else {
                    "not available"
                }
            );
            let mut plain = 0;
            for secret in Secret::ALL {
                let state = keys.stored(secret);
                plain += usize::from(state == Stored::Plain);
                let state = match state {
                    Stored::Sealed => "sealed",
                    Stored::Plain => "PLAIN",
                    Stored::Missing => "missing",
                };
                println!("{:<15} {state}", secret.label());
            }
            match crate::store::Store::open(&config.paths().store()) {
                Ok(store) => {
                    let totp = open_people(store).plain_secrets()?;
                    plain += totp;
                    println!("TOTP secrets    {totp} in plain text");
                }
                Err(e) => println!("TOTP secrets    not read: {e}"),
            }
            if plain > 0 {
                println!(
                    "Run `rxgate keys seal` with the key-encryption key at hand to seal them."
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Seal => {
            let store =
                crate::store::Store::open(&config.paths().store()).map_err(|e| match e {
                    crate::Error::StoreLocked { .. } => anyhow::anyhow!(
                        "the gateway is running; it seals plain keys by itself when it starts with \
                     the key-encryption key: restart it (systemctl restart rxgate)"
                    ),
                    e => e.into(),
                })?;
            let (sealed, totp) =
                open_people(store).seal_everything(&keys, &crate::people::current_user())?;
            let labels: Vec<&str> = sealed.iter().map(|s| s.label()).collect();
            if labels.is_empty() {
                println!("No key was in plain text.");
            } else {
                println!("Sealed: {}.", labels.join(", "));
            }
            println!("Sealed {totp} TOTP secret(s).");
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// The Debian package ships the manual pages in `deploy/debian/man/` (rxgate(1), and one per
    /// command: rxgate-backup-create(1), ...), rendered from the same clap definitions `--help`
    /// prints. A command added, removed or reworded without the pages rendered again fails here;
    /// `RXGATE_BLESS=1 cargo nextest run -p rxgate --lib manual_pages` renders them.
    #[test]
    fn the_packaged_manual_pages_are_rendered_from_the_cli() {
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/debian/man");
        let rendered = std::env::temp_dir().join(format!("rxgate-man-{}", std::process::id()));
        std::fs::create_dir_all(&rendered).unwrap();
        clap_mangen::generate_to(Cli::command(), &rendered).unwrap();
        let pages = |dir: &std::path::Path| -> std::collections::BTreeMap<String, String> {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .map(|entry| entry.unwrap().path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "1"))
                .map(|path| {
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    (name, std::fs::read_to_string(&path).unwrap())
                })
                .collect()
        };
        let want = pages(&rendered);
        std::fs::remove_dir_all(&rendered).unwrap();
        assert!(want.contains_key("rxgate.1") && want.contains_key("rxgate-backup-create.1"));
        if std::env::var_os("RXGATE_BLESS").is_some() {
            let _ = std::fs::remove_dir_all(&shipped);
            std::fs::create_dir_all(&shipped).unwrap();
            for (name, page) in &want {
                std::fs::write(shipped.join(name), page).unwrap();
            }
        }
        let have = pages(&shipped);
        let stale: std::collections::BTreeSet<&String> = want
            .keys()
            .chain(have.keys())
            .filter(|name| want.get(*name) != have.get(*name))
            .collect();
        assert!(
            stale.is_empty(),
            "{} is out of date ({stale:?}): run RXGATE_BLESS=1 cargo nextest run -p rxgate --lib manual_pages",
            shipped.display()
        );
    }
}
