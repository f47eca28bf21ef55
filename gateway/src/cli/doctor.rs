//! `rxgate doctor`: a security and health check-up anyone can run. Each check passes, warns or
//! fails, and says what to do; `--json` for machines; the exit status is non-zero when a check
//! fails.
//!
//! It reads the config, the files in `data_dir`, the file system, the OS's update settings, and
//! asks the gateway (the running daemon, or the store when none runs) for its status, devices
//! and accounts through the same admin requests as every other command.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use time::OffsetDateTime;

use crate::admin::{self, Reply, Request};
use crate::config::Config;

/// A certificate expiring this soon is a warning.
const CERT_WARN_DAYS: i64 = 30;
/// The CA, which takes a visit to every device to replace, is warned about earlier.
const CA_WARN_DAYS: i64 = 180;
/// Free space below these shares of the data directory's file system: warn, fail.
const DISK_WARN: f64 = 0.15;
const DISK_FAIL: f64 = 0.05;
/// The oldest record waiting for the cloud, older than these (seconds): warn, fail.
const OUTBOX_AGE_WARN: u64 = 3600;
const OUTBOX_AGE_FAIL: u64 = 24 * 3600;
/// Bytes the daemon writes per day above which an SD card wears out within its expected life.
const WRITE_WARN_PER_DAY: f64 = 1024.0 * 1024.0 * 1024.0;
/// The daemon's writes are scaled to a day only once it has run this long (seconds): its first
/// minutes (store creation, first checkpoint) say nothing about a day.
const WRITE_MIN_WINDOW: u64 = 600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Pass,
    Warn,
    Fail,
}

impl Level {
    fn word(self) -> &'static str {
        match self {
            Level::Pass => "pass",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// Stable name (`listeners`, `file-modes`, ...).
    pub check: &'static str,
    pub level: Level,
    /// What was found.
    pub found: String,
    /// What to do about it; empty when nothing.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub advice: String,
}

fn check(check: &'static str, level: Level, found: impl Into<String>, advice: &str) -> Check {
    Check {
        check,
        level,
        found: found.into(),
        advice: advice.to_owned(),
    }
}

/// Where the OS keeps its APT settings: unattended upgrades are read from here.
pub const APT_CONF_DIR: &str = "/etc/apt/apt.conf.d";

/// Runs every check for `config`, at `now`, reading APT's settings from `apt_conf_dir`.
pub fn run(config: &Config, now: OffsetDateTime, apt_conf_dir: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    out.extend(listeners(config));
    out.extend(plaintext(config));
    out.push(keys_at_rest(config));
    out.extend(file_modes(config));
    out.extend(certificates(config, now));
    let gateway = admin::session(config, |send| {
        Ok((
            send(Request::Status)?,
            send(Request::DeviceList)?,
            send(Request::UserList)?,
        ))
    });
    match gateway {
        Ok((status, devices, users)) => {
            if let Reply::Status(status) = status {
                out.push(if status.clock_synced {
                    check("clock", Level::Pass, "the clock is synchronised", "")
                } else {
                    check(
                        "clock",
                        Level::Warn,
                        "the clock is not synchronised: certificates are checked against the last trusted time and new audit entries are flagged",
                        "Enable NTP (timedatectl set-ntp true) and let the gateway reach a time server.",
                    )
                });
                out.push(outbox_age(&status));
                out.push(write_rate(&status));
            }
            if let Reply::Devices { devices } = devices {
                out.push(renewals(&devices, now, renewal_due(config)));
            }
            if let Reply::Users { users } = users {
                out.push(accounts(&users));
                out.push(second_factor_secrets(&users));
            }
        }
        Err(e) => out.push(check(
            "gateway",
            Level::Fail,
            format!("the gateway could not be asked: {e}"),
            "Run `rxgate init` first, or run this as the gateway's user (it reads data_dir).",
        )),
    }
    out.push(disk(&config.gateway.data_dir));
    out.push(backups(config, now));
    out.push(unattended_upgrades(apt_conf_dir));
    out
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

fn listeners(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    let all = config.listeners();
    let off: Vec<&str> = all
        .iter()
        .filter(|l| l.listen.is_none())
        .map(|l| l.name)
        .collect();
    let off = if off.is_empty() {
        String::new()
    } else {
        format!("; off: {}", off.join(", "))
    };
    // Metrics has a check of its own below.
    let exposed: Vec<String> = all
        .iter()
        .filter(|l| l.name != "metrics")
        .filter_map(|l| {
            let addr = l.listen?;
            (!is_loopback(&addr)).then(|| format!("{} on {addr} ({})", l.name, l.serves))
        })
        .collect();
    out.push(if exposed.is_empty() {
        check(
            "listeners",
            Level::Pass,
            format!("every open listener is on loopback{off}"),
            "",
        )
    } else {
        check(
            "listeners",
            Level::Warn,
            format!("open to the network: {}{off}", exposed.join("; ")),
            "Intended when devices and people reach the gateway over the LAN; set a listener's `listen` to 127.0.0.1 where nothing on the network needs it, or `enabled = false` in its section where nothing needs it at all, and keep the Pi on the pharmacy's own network segment.",
        )
    });
    out.push(if !config.metrics.enabled {
        check(
            "metrics",
            Level::Pass,
            "the metrics endpoint is off (metrics.enabled = false)",
            "",
        )
    } else if is_loopback(&config.metrics.listen) {
        check(
            "metrics",
            Level::Pass,
            format!("metrics on {} (loopback only)", config.metrics.listen),
            "",
        )
    } else {
        check(
            "metrics",
            Level::Warn,
            format!(
                "the unauthenticated metrics endpoint is open on {}",
                config.metrics.listen
            ),
            "Anyone on the network can read device ids and counters there; bind [metrics].listen to 127.0.0.1 unless a monitoring server needs it.",
        )
    });
    out
}

/// Whether a URL's host is a loopback address or `localhost`.
fn loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn plaintext(config: &Config) -> Vec<Check> {
    let mut plain = Vec::new();
    if let Some(cloud) = &config.cloud
        && cloud.url.starts_with("mqtt://")
        && !loopback_url(&cloud.url)
    {
        plain.push(format!(
            "the cloud link {} is plain MQTT: telemetry and access events cross the network unencrypted",
            cloud.url
        ));
    }
    if let Some(email) = &config.alerts.email
        && email.smtp_url.starts_with("smtp://")
        && !email.smtp_url.contains("tls=required")
        && !loopback_url(&email.smtp_url)
    {
        plain.push(
            "alert e-mails go to the SMTP server without TLS ([alerts.email].smtp_url)".to_owned(),
        );
    }
    if plain.is_empty() {
        vec![check(
            "plaintext",
            Level::Pass,
            "every link leaving the gateway is encrypted (or stays on loopback)",
            "",
        )]
    } else {
        vec![check(
            "plaintext",
            Level::Fail,
            plain.join("; "),
            "Use mqtts:// for [cloud].url and smtps:// or `?tls=required` for [alerts.email].smtp_url.",
        )]
    }
}

/// Whether the keys in data_dir are sealed, and whether the key-encryption key is at hand.
/// The second-factor secrets are judged from the accounts (see [`run`]).
fn keys_at_rest(config: &Config) -> Check {
    use crate::keys::{Secret, Stored};
    let keys = match config.pki().keyring() {
        Ok(keys) => keys,
        Err(e) => {
            return check(
                "keys-sealed",
                Level::Fail,
                format!("the key-encryption key cannot be read: {e}"),
                "Fix [keys].kek_file, or the unit's LoadCredentialEncrypted= (docs in config/gateway.toml, [keys]).",
            );
        }
    };
    let plain: Vec<&str> = Secret::ALL
        .into_iter()
        .filter(|s| keys.stored(*s) == Stored::Plain)
        .map(|s| s.label())
        .collect();
    if !plain.is_empty() {
        return check(
            "keys-sealed",
            Level::Warn,
            format!(
                "stored unsealed in data_dir (protected by file modes only): {}; a copy of data_dir can mint device certificates",
                plain.join(", ")
            ),
            if keys.sealing() {
                "Restart the gateway (it seals them at start) or stop it and run `rxgate keys seal`."
            } else {
                "Give rxgate a key-encryption key: the packaged unit's systemd credential rxgate-kek, or [keys].kek_file (`rxgate keys generate-kek FILE`); then restart it."
            },
        );
    }
    check(
        "keys-sealed",
        Level::Pass,
        "the CA, server and pseudonym keys are sealed under the key-encryption key",
        "",
    )
}

fn mode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

fn file_modes(config: &Config) -> Vec<Check> {
    let paths = config.paths();
    let mut bad = Vec::new();
    match mode_of(&config.gateway.data_dir) {
        Some(mode) if mode & 0o077 != 0 => bad.push(format!(
            "{} is mode {mode:o} (others can look in)",
            config.gateway.data_dir.display()
        )),
        _ => {}
    }
    let keys: [(&str, PathBuf); 3] = [
        ("CA key", paths.ca_key()),
        ("server key", paths.server_key()),
        ("pseudonym key", paths.pseudonym_key()),
    ];
    for (what, path) in &keys {
        if let Some(mode) = mode_of(path)
            && mode & 0o077 != 0
        {
            bad.push(format!("the {what} {} is mode {mode:o}", path.display()));
        }
    }
    if let Some(mode) = mode_of(&paths.store())
        && mode & 0o077 != 0
    {
        bad.push(format!(
            "the store {} is mode {mode:o}",
            paths.store().display()
        ));
    }
    vec![if bad.is_empty() {
        check(
            "file-modes",
            Level::Pass,
            "data_dir is 0700 and its keys and store are readable by the gateway's user only",
            "",
        )
    } else {
        check(
            "file-modes",
            Level::Fail,
            bad.join("; "),
            "chmod 700 data_dir and chmod 600 the files named: anyone who can read them can impersonate the gateway.",
        )
    }]
}

/// The end of validity of the first certificate in the PEM file at `path`.
fn not_after(path: &Path) -> std::result::Result<OffsetDateTime, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(cert.validity().not_after.to_datetime())
}

fn certificates(config: &Config, now: OffsetDateTime) -> Vec<Check> {
    let paths = config.paths();
    let mut out = Vec::new();
    for (name, path, warn_days) in [
        ("ca-certificate", paths.ca_cert(), CA_WARN_DAYS),
        ("server-certificate", paths.server_cert(), CERT_WARN_DAYS),
    ] {
        out.push(match not_after(&path) {
            Err(e) => check(
                name,
                Level::Fail,
                format!("cannot be read: {e}"),
                "Run `rxgate init` (or restore data_dir).",
            ),
            Ok(end) if end <= now => check(
                name,
                Level::Fail,
                format!("expired at {}", crate::clock::rfc3339_seconds(end)),
                if name == "ca-certificate" {
                    "Every device certificate chains to it: plan a new CA (`rxgate init --force`) and re-enroll the devices."
                } else {
                    "Restart the gateway to renew its server certificate, or run `rxgate init --force`."
                },
            ),
            Ok(end) => {
                let days = (end - now).whole_days();
                if days < warn_days {
                    check(
                        name,
                        Level::Warn,
                        format!(
                            "expires in {days} days ({})",
                            crate::clock::rfc3339_seconds(end)
                        ),
                        "Renew it before it expires.",
                    )
                } else {
                    check(
                        name,
                        Level::Pass,
                        format!("valid for {days} more days"),
                        "",
                    )
                }
            }
        });
    }
    out
}

/// A device certificate with less than this left should have been renewed: devices renew from
/// two thirds of its lifetime (`[enroll].cert_validity`).
pub fn renewal_due(config: &Config) -> time::Duration {
    time::Duration::try_from(config.enroll.cert_validity / 3).unwrap_or(time::Duration::DAY)
}

fn renewals(
    devices: &[crate::registry::DeviceRecord],
    now: OffsetDateTime,
    due_within: time::Duration,
) -> Check {
    use crate::registry::DeviceStatus;
    let mut due: Vec<String> = devices
        .iter()
        .filter(|d| d.status == DeviceStatus::Active)
        .filter_map(|d| {
            let end = d.not_after?;
            if end <= now {
                Some(format!("{} (expired)", d.id))
            } else if end - now < due_within {
                Some(format!("{} ({} days left)", d.id, (end - now).whole_days()))
            } else {
                None
            }
        })
        .collect();
    due.sort();
    if due.is_empty() {
        check(
            "device-certificates",
            Level::Pass,
            format!(
                "{} enrolled device(s), none due for renewal",
                devices
                    .iter()
                    .filter(|d| d.status == DeviceStatus::Active)
                    .count()
            ),
            "",
        )
    } else {
        check(
            "device-certificates",
            Level::Warn,
            format!("due for renewal: {}", due.join(", ")),
            "Devices renew themselves over EST; one that has not is offline or misconfigured: check it, or enroll it again with a new token.",
        )
    }
}

fn accounts(users: &[crate::people::AccountInfo]) -> Check {
    let without: Vec<&str> = users
        .iter()
        .filter(|u| !u.totp && u.state != "disabled")
        .map(|u| u.name.as_str())
        .collect();
    let admins = users
        .iter()
        .filter(|u| u.state == "active" && u.roles.contains(&crate::people::Role::Admin) && u.totp)
        .count();
    if !without.is_empty() {
        check(
            "accounts",
            Level::Warn,
            format!(
                "account(s) without a second factor yet (set-up not finished): {}",
                without.join(", ")
            ),
            "Ask each person to finish set-up with their link, or `rxgate user reset-factors NAME` for a new one, or disable the account.",
        )
    } else if admins == 0 {
        check(
            "accounts",
            Level::Warn,
            "no active admin account",
            "Add one on the gateway's command line: rxgate user add NAME --role admin",
        )
    } else {
        check(
            "accounts",
            Level::Pass,
            format!("{} account(s), every one with a second factor", users.len()),
            "",
        )
    }
}

fn second_factor_secrets(users: &[crate::people::AccountInfo]) -> Check {
    let plain: Vec<&str> = users
        .iter()
        .filter(|u| u.totp_plain)
        .map(|u| u.name.as_str())
        .collect();
    if plain.is_empty() {
        check(
            "secrets-sealed",
            Level::Pass,
            "every TOTP secret is sealed under the key-encryption key",
            "",
        )
    } else {
        check(
            "secrets-sealed",
            Level::Warn,
            format!("TOTP secrets stored unsealed: {}", plain.join(", ")),
            "Give rxgate a key-encryption key and restart it: it seals them at start.",
        )
    }
}

/// The age of the oldest record the cloud has not acknowledged.
fn outbox_age(status: &admin::Status) -> Check {
    const ADVICE: &str = "The cloud has not taken messages for a while: check the cloud link (`rxgate status`, the uplink's state in /health, the [cloud] url and certificates, the site's internet access).";
    let Some(age) = status.outbox_oldest_age_secs else {
        return check(
            "outbox-age",
            Level::Pass,
            "the outbox is empty: everything was delivered",
            "",
        );
    };
    let found = format!(
        "{} message(s) wait for the cloud, the oldest for {}",
        status.outbox_records,
        humantime::format_duration(std::time::Duration::from_secs(age))
    );
    if age > OUTBOX_AGE_FAIL {
        check("outbox-age", Level::Fail, found, ADVICE)
    } else if age > OUTBOX_AGE_WARN {
        check("outbox-age", Level::Warn, found, ADVICE)
    } else {
        check("outbox-age", Level::Pass, found, "")
    }
}

/// Bytes the running daemon writes to storage per day, from its own I/O counters.
fn write_rate(status: &admin::Status) -> Check {
    let Some(written) = status.written else {
        return check(
            "sd-write-rate",
            Level::Pass,
            "cannot be measured: the gateway is not running (the rate comes from the running daemon's own I/O counters)",
            "Run the doctor again while `rxgate run` is up.",
        );
    };
    let mib = written.bytes as f64 / 1048576.0;
    if written.over_secs < WRITE_MIN_WINDOW {
        return check(
            "sd-write-rate",
            Level::Pass,
            format!(
                "{mib:.1} MiB written since the gateway started {} s ago: too short to scale to a day",
                written.over_secs
            ),
            "Run the doctor again once the gateway has run for 10 minutes.",
        );
    }
    let per_day = written.bytes as f64 * 86400.0 / written.over_secs as f64;
    let found = format!(
        "{:.0} MiB a day ({mib:.1} MiB in {})",
        per_day / 1048576.0,
        humantime::format_duration(std::time::Duration::from_secs(written.over_secs))
    );
    if per_day > WRITE_WARN_PER_DAY {
        check(
            "sd-write-rate",
            Level::Warn,
            found,
            "More than 1 GiB a day wears an SD card out early: raise [outbox].batch_delay so commits carry more messages, lower the devices' publish rate or poll_interval, and keep logs in RAM (journald Storage=volatile); or use an SSD.",
        )
    } else {
        check("sd-write-rate", Level::Pass, found, "")
    }
}

fn disk(data_dir: &Path) -> Check {
    let Ok(path) = std::ffi::CString::new(data_dir.as_os_str().as_encoded_bytes()) else {
        return check("disk", Level::Fail, "data_dir is not a valid path", "");
    };
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return check(
            "disk",
            Level::Fail,
            format!(
                "cannot read the file system of {}: {}",
                data_dir.display(),
                std::io::Error::last_os_error()
            ),
            "",
        );
    }
    let total = stat.f_blocks as f64 * stat.f_frsize as f64;
    let free = stat.f_bavail as f64 * stat.f_frsize as f64;
    let share = if total > 0.0 { free / total } else { 0.0 };
    let found = format!(
        "{:.0} MiB free of {:.0} MiB ({:.0} %) where data_dir is",
        free / 1048576.0,
        total / 1048576.0,
        share * 100.0
    );
    if share < DISK_FAIL {
        check(
            "disk",
            Level::Fail,
            found,
            "The outbox refuses new records when the disk is full: free space now (old logs, journal: journalctl --vacuum-size=100M).",
        )
    } else if share < DISK_WARN {
        check(
            "disk",
            Level::Warn,
            found,
            "Free some space before the outbox runs out of room.",
        )
    } else {
        check("disk", Level::Pass, found, "")
    }
}

fn age_text(age: time::Duration) -> String {
    let minutes = age.whole_minutes().max(0) as u64;
    humantime::format_duration(std::time::Duration::from_secs(minutes * 60)).to_string()
}

/// Backup freshness, from the backup files in `[backup].destinations`: a missing destination
/// fails; no schedule, no backup yet, or a newest backup older than twice the interval warns.
fn backups(config: &Config, now: OffsetDateTime) -> Check {
    let b = &config.backup;
    let Some(interval) = b.scheduled() else {
        return check(
            "backups",
            Level::Warn,
            "no backups configured",
            "Set [backup] recipients (an age public key), destinations and interval, so a dead              gateway can be rebuilt without enrolling every device again (README: Back up and restore).",
        );
    };
    let (newest, missing) = crate::backup::newest(&b.destinations, &config.gateway.site);
    let newest_text = match &newest {
        Some((path, at)) => format!(
            "the newest backup, {}, is {} old",
            path.display(),
            age_text(now - *at)
        ),
        None => "no backup found".to_owned(),
    };
    if !missing.is_empty() {
        let missing: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
        return check(
            "backups",
            Level::Fail,
            format!(
                "backup destination missing: {} (not mounted?); {newest_text}",
                missing.join(", ")
            ),
            "Plug in or mount the destination, or remove it from [backup].destinations.",
        );
    }
    let every = humantime::format_duration(interval).to_string();
    match newest {
        None => check(
            "backups",
            Level::Warn,
            format!("no backup found in [backup].destinations yet (one every {every})"),
            "Run `rxgate backup create` now, and check the gateway's log for backup errors.",
        ),
        Some((_, at))
            if (now - at).unsigned_abs() > 2 * interval || at > now + time::Duration::DAY =>
        {
            check(
                "backups",
                Level::Warn,
                format!("{newest_text}, more than twice the interval of {every}"),
                "Scheduled backups are failing: see `curl http://<metrics>/health` (backup.last_error)                  and the gateway's log, then run `rxgate backup create`.",
            )
        }
        Some(_) => check(
            "backups",
            Level::Pass,
            format!("{newest_text} (one every {every})"),
            "",
        ),
    }
}

/// Whether APT's settings in `dir` turn unattended upgrades on
/// (`APT::Periodic::Unattended-Upgrade "1";`), the last file in name order winning.
fn unattended_upgrades(dir: &Path) -> Check {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    names.sort();
    let mut enabled = None;
    for path in names {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("APT::Periodic::Unattended-Upgrade") {
                let value = rest.trim().trim_end_matches(';').trim().trim_matches('"');
                enabled = Some(value != "0");
            }
        }
    }
    match enabled {
        Some(true) => check(
            "security-updates",
            Level::Pass,
            "unattended security updates are on",
            "",
        ),
        Some(false) => check(
            "security-updates",
            Level::Warn,
            "unattended upgrades are turned off",
            "Turn them on: apt install unattended-upgrades && dpkg-reconfigure -plow unattended-upgrades",
        ),
        None => check(
            "security-updates",
            Level::Warn,
            "unattended security updates are not set up",
            "apt install unattended-upgrades && dpkg-reconfigure -plow unattended-upgrades",
        ),
    }
}

/// Prints `checks` for people: one line each, the advice below it, and a summary.
pub fn print(checks: &[Check]) {
    for c in checks {
        println!("{:<4}  {:<20} {}", c.level.word(), c.check, c.found);
        if !c.advice.is_empty() && c.level != Level::Pass {
            println!("      {:<20} → {}", "", c.advice);
        }
    }
    let count = |l| checks.iter().filter(|c| c.level == l).count();
    println!(
        "\n{} passed, {} warning(s), {} failed",
        count(Level::Pass),
        count(Level::Warn),
        count(Level::Fail)
    );
}

/// The worst level found.
pub fn worst(checks: &[Check]) -> Level {
    checks.iter().map(|c| c.level).max().unwrap_or(Level::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unattended_upgrades_are_read_from_apt_settings_the_last_file_winning() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(unattended_upgrades(dir.path()).level, Level::Warn);
        std::fs::write(
            dir.path().join("20auto-upgrades"),
            "APT::Periodic::Update-Package-Lists \"1\";\nAPT::Periodic::Unattended-Upgrade \"1\";\n",
        )
        .unwrap();
        assert_eq!(unattended_upgrades(dir.path()).level, Level::Pass);
        std::fs::write(
            dir.path().join("99off"),
            "APT::Periodic::Unattended-Upgrade \"0\";\n",
        )
        .unwrap();
        let off = unattended_upgrades(dir.path());
        assert_eq!(off.level, Level::Warn);
        assert!(off.found.contains("turned off"));
    }

    #[test]
    fn loopback_urls_are_told_from_network_ones() {
        for url in [
            "mqtt://127.0.0.1:1883",
            "mqtt://localhost",
            "smtp://user@[::1]:25",
            "mqtt://127.0.0.9:1/x",
        ] {
            assert!(loopback_url(url), "{url}");
        }
        for url in [
            "mqtt://broker.example:1883",
            "smtp://10.0.0.5:25",
            "mqtt://user@192.168.1.2",
        ] {
            assert!(!loopback_url(url), "{url}");
        }
    }

    fn status(records: u64, age: Option<u64>, written: Option<(u64, u64)>) -> admin::Status {
        admin::Status {
            version: String::new(),
            site: String::new(),
            running: written.is_some(),
            clock_synced: true,
            listeners: Vec::new(),
            devices_active: 0,
            devices_pending: 0,
            devices_revoked: 0,
            policy: None,
            policy_error: None,
            calibration: Vec::new(),
            outbox_records: records,
            outbox_oldest_age_secs: age,
            disk_full: false,
            written: written.map(|(bytes, over_secs)| admin::Written { bytes, over_secs }),
        }
    }

    #[test]
    fn an_outbox_waiting_over_an_hour_warns_and_over_a_day_fails_pointing_at_the_cloud_link() {
        assert_eq!(outbox_age(&status(0, None, None)).level, Level::Pass);
        assert_eq!(outbox_age(&status(3, Some(600), None)).level, Level::Pass);
        let warn = outbox_age(&status(3, Some(2 * 3600), None));
        assert_eq!(warn.level, Level::Warn);
        assert!(warn.advice.contains("cloud link"), "{warn:?}");
        assert!(
            warn.found.contains("3 message(s)") && warn.found.contains("2h"),
            "{warn:?}"
        );
        assert_eq!(
            outbox_age(&status(3, Some(2 * 86400), None)).level,
            Level::Fail
        );
    }

    #[test]
    fn the_write_rate_warns_above_a_gib_a_day_and_says_when_it_cannot_be_measured() {
        let gib = 1u64 << 30;
        let stopped = write_rate(&status(0, None, None));
        assert_eq!(stopped.level, Level::Pass);
        assert!(stopped.found.contains("cannot be measured"), "{stopped:?}");
        let young = write_rate(&status(0, None, Some((gib, 60))));
        assert_eq!(young.level, Level::Pass);
        assert!(young.found.contains("too short"), "{young:?}");
        // 100 MiB in an hour is 2.3 GiB a day.
        let heavy = write_rate(&status(0, None, Some((100 << 20, 3600))));
        assert_eq!(heavy.level, Level::Warn);
        assert!(heavy.found.contains("2400 MiB a day"), "{heavy:?}");
        assert_eq!(
            write_rate(&status(0, None, Some((10 << 20, 3600)))).level,
            Level::Pass
        );
    }

    #[test]
    fn backups_warn_when_not_configured_or_stale_and_fail_when_a_destination_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let usb = dir.path().join("usb");
        std::fs::create_dir(&usb).unwrap();
        let text = |destinations: &str| {
            format!(
                "[gateway]\nsite = \"store-1\"\n[backup]\n\
                 recipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n\
                 interval = \"24h\"\ndestinations = [{destinations}]\n"
            )
        };
        let now = time::macros::datetime!(2026-12-07 12:00 UTC);
        let none = Config::parse("[gateway]\nsite = \"store-1\"\n", dir.path()).unwrap();
        let c = backups(&none, now);
        assert_eq!(
            (c.level, c.found.as_str()),
            (Level::Warn, "no backups configured")
        );

        let config = Config::parse(&text("\"usb\""), dir.path()).unwrap();
        assert_eq!(backups(&config, now).level, Level::Warn, "no backup yet");
        std::fs::write(usb.join("rxgate-store-1-20261206T120000Z.age"), b"x").unwrap();
        let c = backups(&config, now);
        assert_eq!(c.level, Level::Pass, "{c:?}");
        assert!(c.found.contains("is 1day old"), "{c:?}");
        let c = backups(&config, now + time::Duration::hours(25));
        assert_eq!(c.level, Level::Warn, "older than twice the interval: {c:?}");
        assert!(
            c.found.contains("more than twice the interval of 1day"),
            "{c:?}"
        );

        let config = Config::parse(&text("\"usb\", \"share\""), dir.path()).unwrap();
        let c = backups(&config, now);
        assert_eq!(c.level, Level::Fail, "{c:?}");
        assert!(c.found.contains("share (not mounted?)"), "{c:?}");
    }

    #[test]
    fn the_worst_level_decides_and_nothing_found_passes() {
        assert_eq!(worst(&[]), Level::Pass);
        let w = check("a", Level::Warn, "x", "");
        let f = check("b", Level::Fail, "y", "");
        assert_eq!(worst(std::slice::from_ref(&w)), Level::Warn);
        assert_eq!(worst(&[w, f]), Level::Fail);
    }
}
