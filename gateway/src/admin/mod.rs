//! Administration: every CLI command other than `init`, `run` and `demo` is an admin [`Request`].
//!
//! While `rxgate run` is up it holds the store, so commands reach it over a Unix socket in
//! `data_dir` (mode 0600: whoever can read the data directory administers the gateway). With no
//! daemon running, the CLI opens the store itself and runs the very same [`execute`], so a command
//! behaves identically either way.
//!
//! Every request is run on behalf of the operating-system user on the other end: the daemon reads
//! it from the socket's peer credentials (SO_PEERCRED), the CLI opening the store itself takes its
//! own user; that name is the actor of every audit entry the request writes (see [`crate::people::user_name`]).
//!
//! Wire format: one JSON [`Request`] per connection, one line; one JSON [`Response`] back, one
//! line. Requests are bounded to [`MAX_REQUEST_BYTES`].

mod client;
mod server;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::people::{current_user, user_name};
pub use client::{call, session};
pub use server::AdminServer;

use crate::error::{Error, Result};
use crate::registry::{Actor, DeviceRecord, Registry, TokenInfo};

/// Largest admin request accepted.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Most audit entries in one page of an export: what one reply holds in memory at most.
pub const EXPORT_PAGE: u32 = 1000;

/// A command to the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    TokenCreate {
        device: String,
        kind: String,
        /// Seconds; the configured `enroll.token_ttl` when absent.
        ttl_secs: Option<u64>,
    },
    TokenList,
    TokenRevoke {
        id: String,
    },
    DeviceList,
    DeviceRevoke {
        id: String,
        reason: String,
    },
    /// One page of the audit entries with `from <= ts < to` (RFC 3339 bounds or dates, both
    /// optional), oldest first: at most `limit` (and at most [`EXPORT_PAGE`]) entries after
    /// entry `after`, up to entry `until`. The reply says where the next page starts; see
    /// [`export_pages`].
    AuditExport {
        from: Option<String>,
        to: Option<String>,
        #[serde(default)]
        after: Option<u64>,
        #[serde(default)]
        until: Option<u64>,
        #[serde(default)]
        limit: Option<u32>,
    },
    AuditVerify {
        /// A checkpoint as the cloud received it (JSON), to check the chain against.
        #[serde(default)]
        checkpoint: Option<String>,
    },
    /// Alerts, newest first; all of them, or only those not yet resolved.
    AlertList {
        all: bool,
    },
    /// Each cold-chain fridge: its latest temperature, when it was read, its condition.
    Fridges,
    /// Acknowledged by the operating-system user who sends it.
    AlertAck {
        id: String,
        note: String,
    },
    /// What `rxgate report temperatures` needs for one device and a span of days.
    Report {
        device: String,
        from: String,
        to: String,
    },
    /// A new account (roles by name; `expires`: its last day, YYYY-MM-DD).
    UserAdd {
        name: String,
        roles: Vec<String>,
        #[serde(default)]
        expires: Option<String>,
    },
    UserList,
    UserDisable {
        name: String,
    },
    UserResetFactors {
        name: String,
    },
    UserUnlock {
        name: String,
    },
    /// The daily min/max check of a fridge, recorded by whoever sends it: the extremes since
    /// the last check are reported and reset. `audit_seq`: the `record.signed` entry of the
    /// signature given with it (the console signs first). Needs the running daemon.
    MinMaxCheck {
        device: String,
        #[serde(default)]
        note: String,
        #[serde(default)]
        audit_seq: Option<u64>,
    },
    /// A backup now: into `to` (a directory the daemon's user may write) when given, else into
    /// `[backup].destinations`.
    BackupCreate {
        #[serde(default)]
        to: Option<std::path::PathBuf>,
    },
}

/// What a successful command returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Status(Status),
    TokenCreated {
        token: TokenInfo,
        secret: String,
    },
    Tokens {
        tokens: Vec<TokenInfo>,
    },
    Token {
        token: TokenInfo,
    },
    Devices {
        devices: Vec<DeviceRecord>,
    },
    Device {
        device: DeviceRecord,
    },
    /// A page of an audit export. `next_after`: ask again with `after` set to it (and `until`)
    /// for the next page; `None`: the export is complete.
    AuditPage {
        entries: Vec<crate::audit::AuditBody>,
        next_after: Option<u64>,
        until: u64,
    },
    AuditVerified {
        entries: u64,
        broken: Option<(u64, String)>,
    },
    Alerts {
        alerts: Vec<crate::alerts::Alert>,
    },
    Alert {
        alert: Box<crate::alerts::Alert>,
    },
    Fridges {
        fridges: Vec<crate::coldchain::live::FridgeNow>,
    },
    Report(crate::report::ReportData),
    /// A new account, or one whose factors were reset: the set-up link, shown once.
    UserSetupLink {
        user: crate::people::AccountInfo,
        setup_link: crate::people::SetupLink,
    },
    Users {
        users: Vec<crate::people::AccountInfo>,
    },
    User {
        user: crate::people::AccountInfo,
    },
    MinMaxChecked {
        check: crate::coldchain::history::CheckRecord,
    },
    BackupCreated {
        created: crate::backup::Created,
    },
}

/// The reply on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Box<Reply>),
    Error { message: String },
}

/// `rxgate status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub site: String,
    /// Whether a daemon answered (false: the CLI read the store itself).
    pub running: bool,
    pub clock_synced: bool,
    /// Addresses the running daemon listens on, by listener name (`enroll`, `mqtt`, ...).
    #[serde(default)]
    pub listeners: Vec<(String, String)>,
    pub devices_active: usize,
    pub devices_pending: usize,
    pub devices_revoked: usize,
    /// Where the running policy came from, and why its last reload was refused.
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub policy_error: Option<String>,
    /// Probes whose calibration is due within 30 days or overdue, one sentence each.
    #[serde(default)]
    pub calibration: Vec<String>,
    /// Messages waiting in the outbox for the cloud (not yet acknowledged by it).
    #[serde(default)]
    pub outbox_records: u64,
    /// Age in seconds of the oldest of them, if any.
    #[serde(default)]
    pub outbox_oldest_age_secs: Option<u64>,
    /// Whether the disk holding data_dir was full at the last write (new records are refused).
    #[serde(default)]
    pub disk_full: bool,
    /// The running daemon's own I/O: bytes it caused to be written to storage since it started
    /// (`/proc/<pid>/io` `write_bytes`), and how long ago that was. `None` without a daemon.
    #[serde(default)]
    pub written: Option<Written>,
}

/// What the running daemon has written, for the SD-card write-rate check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Written {
    pub bytes: u64,
    pub over_secs: u64,
}

/// `write_bytes` from `/proc/self/io`: what this process caused to be sent to storage.
pub fn own_write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// What [`execute`] works with.
#[derive(Clone)]
pub struct Context {
    pub registry: Registry,
    /// Accounts, in the same store.
    pub people: crate::people::People,
    pub site: String,
    pub default_token_ttl: Duration,
    /// Set by the daemon: listener names and addresses.
    pub listeners: Vec<(String, String)>,
    pub running: bool,
    /// Alert channels configured (for notifications queued by an acknowledgement).
    pub alert_channels: Vec<crate::alerts::Channel>,
    /// The running alert monitor, when the daemon runs.
    pub alerts: Option<crate::alerts::AlertsHandle>,
    /// The running policy, when the daemon runs.
    pub policy: Option<crate::policy::stage::PolicyHandle>,
    /// What the running cold-chain task sees of each fridge, when the daemon runs.
    pub fridges: Option<crate::coldchain::live::Live>,
    /// Where the running cold-chain task records min/max checks, when the daemon runs.
    pub checks: Option<crate::coldchain::monitor::CheckHandle>,
    /// The gateway's CA certificate (DER), to check checkpoint signatures; or why it could
    /// not be read.
    pub ca_der: std::result::Result<Vec<u8>, String>,
    /// Cold-chain limits by device, for reports.
    pub limits: std::collections::HashMap<String, crate::coldchain::Limits>,
    /// `[audit].retention`: a checkpoint of a removed entry fails verification unless older.
    pub audit_retention: Duration,
    /// Backups of this gateway (one at a time, shared with the daemon's scheduled ones).
    pub backups: crate::backup::Backups,
    /// The running daemon's outbox; without a daemon it is counted from the store.
    pub outbox: Option<crate::outbox::Outbox>,
    /// When the running daemon started, for its write rate.
    pub started: Option<std::time::Instant>,
}

impl Context {
    /// The context for `config`, without a running daemon's extras.
    pub fn new(config: &crate::config::Config, registry: Registry) -> Context {
        // Without a key-encryption key, new TOTP secrets are stored plain (and sealed when the
        // daemon next starts with one); a sealed one then cannot be checked here, and says so.
        let sealer = match config.pki().keyring() {
            Ok(keys) => keys.sealer(),
            Err(e) => {
                tracing::warn!(error = %e, "Second-factor secrets cannot be sealed or opened.");
                crate::keys::Sealer::default()
            }
        };
        Context::with_sealer(config, registry, sealer)
    }

    /// The context for `config`, sealing second-factor secrets with `sealer` (the daemon's, from
    /// the keyring it opened at start).
    pub fn with_sealer(
        config: &crate::config::Config,
        registry: Registry,
        sealer: crate::keys::Sealer,
    ) -> Context {
        let people = crate::people::People::new(
            registry.store().clone(),
            registry.clock().clone(),
            &config.gateway.site,
            &config.gateway.server_names,
        )
        .with_console_port(config.console.listen.port())
        .with_sealer(sealer);
        let backups = crate::backup::Backups::new(
            config.backup_plan(),
            registry.store().clone(),
            registry.clock().clone(),
        );
        Context {
            people: if config.console.demo_accounts {
                people.allowing_demo_accounts()
            } else {
                people
            },
            registry,
            site: config.gateway.site.clone(),
            default_token_ttl: config.enroll.token_ttl,
            listeners: Vec::new(),
            running: false,
            alert_channels: crate::alerts::configured_channels(&config.alerts),
            alerts: None,
            policy: None,
            fridges: None,
            checks: None,
            ca_der: crate::tls::load_certs(&config.paths().ca_cert())
                .map(|certs| certs[0].to_vec())
                .map_err(|e| e.to_string()),
            limits: config
                .devices
                .iter()
                .filter_map(|(id, d)| crate::coldchain::Limits::of(d).map(|l| (id.clone(), l)))
                .collect(),
            audit_retention: config.audit.retention,
            backups,
            outbox: None,
            started: None,
        }
    }
}

/// Runs one admin request on behalf of `actor` (the operating-system user who sent it). Used by
/// the daemon's socket and by the CLI when no daemon runs.
pub fn execute(ctx: &Context, request: Request, actor: &Actor) -> Result<Reply> {
    match request {
        Request::Status => {
            let devices = ctx.registry.devices()?;
            let count = |s| devices.iter().filter(|d| d.status == s).count();
            use crate::registry::DeviceStatus::*;
            let depth = match &ctx.outbox {
                Some(outbox) => outbox.depth()?,
                None => {
                    crate::outbox::Outbox::open(ctx.registry.store().clone(), u64::MAX)?.depth()?
                }
            };
            let now_ms = ctx.registry.clock().now().unix_timestamp_nanos() / 1_000_000;
            let outbox_oldest_age_secs = depth
                .oldest_ms
                .map(|oldest| ((now_ms - i128::from(oldest)).max(0) / 1000) as u64);
            let written = ctx.started.and_then(|started| {
                Some(Written {
                    bytes: own_write_bytes()?,
                    over_secs: started.elapsed().as_secs(),
                })
            });
            Ok(Reply::Status(Status {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                site: ctx.site.clone(),
                running: ctx.running,
                clock_synced: ctx.registry.clock().synced(),
                listeners: ctx.listeners.clone(),
                devices_active: count(Active),
                devices_pending: count(Pending),
                devices_revoked: count(Revoked),
                policy: ctx.policy.as_ref().map(|p| p.current().origin().to_owned()),
                policy_error: ctx.policy.as_ref().and_then(|p| p.last_error()),
                calibration: calibration_notices(&ctx.limits, ctx.registry.clock().now().date()),
                outbox_records: depth.records,
                outbox_oldest_age_secs,
                disk_full: ctx.registry.store().disk_full(),
                written,
            }))
        }
        Request::TokenCreate {
            device,
            kind,
            ttl_secs,
        } => {
            let ttl = ttl_secs.map_or(ctx.default_token_ttl, Duration::from_secs);
            if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(30 * 86400) {
                return Err(Error::Invalid(format!(
                    "token lifetime {} is out of range: use between 1s and 30d",
                    humantime::format_duration(ttl)
                )));
            }
            let (token, secret) = ctx.registry.create_token(&device, &kind, ttl, actor)?;
            Ok(Reply::TokenCreated { token, secret })
        }
        Request::TokenList => Ok(Reply::Tokens {
            tokens: ctx.registry.tokens()?,
        }),
        Request::TokenRevoke { id } => Ok(Reply::Token {
            token: ctx.registry.revoke_token(&id, actor)?,
        }),
        Request::DeviceList => Ok(Reply::Devices {
            devices: ctx.registry.devices()?,
        }),
        Request::DeviceRevoke { id, reason } => Ok(Reply::Device {
            device: ctx.registry.revoke_device(&id, &reason, actor)?,
        }),
        Request::AuditExport {
            from,
            to,
            after,
            until,
            limit,
        } => {
            let parse = |bound: Option<String>,
                         name: &str|
             -> Result<Option<time::OffsetDateTime>> {
                bound
                    .map(|b| {
                        parse_bound(&b).map_err(|e| Error::Invalid(format!("--{name} {b:?}: {e}")))
                    })
                    .transpose()
            };
            let range = crate::audit::ExportRange {
                from: parse(from, "from")?,
                to: parse(to, "to")?,
                after,
                until,
            };
            let limit = limit.unwrap_or(EXPORT_PAGE).min(EXPORT_PAGE) as usize;
            let mut entries = Vec::with_capacity(limit.min(64));
            let end = crate::audit::export(ctx.registry.store(), &range, limit, |e| {
                entries.push(e);
                Ok(())
            })?;
            Ok(Reply::AuditPage {
                entries,
                next_after: end.more.then_some(end.last).flatten(),
                until: end.until,
            })
        }
        Request::AlertList { all } => {
            let mut alerts = if all {
                crate::alerts::history::alerts(ctx.registry.store())?
            } else {
                crate::alerts::history::open_alerts(ctx.registry.store())?
            };
            alerts.reverse();
            Ok(Reply::Alerts { alerts })
        }
        Request::Fridges => {
            let fridges = match &ctx.fridges {
                Some(live) => live.fridges(),
                // No daemon: the engine states as last saved, without a current temperature.
                None => {
                    let states: std::collections::HashMap<_, _> =
                        crate::coldchain::history::states(ctx.registry.store())?
                            .into_iter()
                            .collect();
                    let mut devices: Vec<_> = ctx.limits.iter().collect();
                    devices.sort_by(|a, b| a.0.cmp(b.0));
                    crate::coldchain::live::Live::new(
                        devices.into_iter().map(|(d, l)| (d, l, states.get(d))),
                    )
                    .fridges()
                }
            };
            Ok(Reply::Fridges { fridges })
        }
        Request::AlertAck { id, note } => {
            let by = actor.name.clone();
            let id = uuid::Uuid::parse_str(id.trim()).map_err(|_| {
                Error::Invalid(format!(
                    "{id:?} is not an alert id; see `rxgate alerts list`"
                ))
            })?;
            let alert = match &ctx.alerts {
                Some(handle) => {
                    tokio::runtime::Handle::current().block_on(handle.ack(id, by, note))?
                }
                None => {
                    let store = ctx.registry.store().clone();
                    let queue = crate::alerts::NotifyQueue::open(
                        store.clone(),
                        ctx.alert_channels.clone(),
                    )?;
                    crate::alerts::monitor::acknowledge_in_store(
                        &store,
                        &queue,
                        ctx.registry.clock(),
                        id,
                        &by,
                        &note,
                    )?
                }
            };
            Ok(Reply::Alert {
                alert: Box::new(alert),
            })
        }
        Request::Report { device, from, to } => {
            let (from, to) = (parse_day(&from, "from")?, parse_day(&to, "to")?);
            let limits = ctx.limits.get(&device);
            Ok(Reply::Report(crate::report::ReportData::load(
                ctx.registry.store(),
                &device,
                limits,
                from,
                to,
            )?))
        }
        Request::UserAdd {
            name,
            roles,
            expires,
        } => {
            let roles = roles
                .iter()
                .map(|r| r.parse::<crate::people::Role>().map_err(Error::Invalid))
                .collect::<Result<Vec<_>>>()?;
            let expires = expires
                .as_deref()
                .map(crate::people::parse_day)
                .transpose()?;
            let (user, setup_link) = ctx.people.add(&name, &roles, expires, &actor.name)?;
            Ok(Reply::UserSetupLink { user, setup_link })
        }
        Request::UserList => Ok(Reply::Users {
            users: ctx.people.list()?,
        }),
        Request::UserDisable { name } => Ok(Reply::User {
            user: ctx.people.disable(&name, &actor.name)?,
        }),
        Request::UserUnlock { name } => Ok(Reply::User {
            user: ctx.people.unlock(&name, &actor.name)?,
        }),
        Request::UserResetFactors { name } => {
            let (user, setup_link) = ctx.people.reset_factors(&name, &actor.name)?;
            Ok(Reply::UserSetupLink { user, setup_link })
        }
        Request::MinMaxCheck {
            device,
            note,
            audit_seq,
        } => {
            let Some(checks) = &ctx.checks else {
                return Err(Error::Invalid(
                    "the min/max check resets what the running cold-chain monitor holds: start the gateway (rxgate run) first".to_owned(),
                ));
            };
            let check = tokio::runtime::Handle::current().block_on(checks.check(
                &device,
                &actor.name,
                note.trim(),
                audit_seq,
            ))?;
            Ok(Reply::MinMaxChecked { check })
        }
        Request::BackupCreate { to } => Ok(Reply::BackupCreated {
            created: ctx.backups.create(to.as_deref(), &actor.name)?,
        }),
        Request::AuditVerify { checkpoint } => {
            let external: Vec<crate::audit::Checkpoint> = match checkpoint {
                None => Vec::new(),
                Some(text) => {
                    // A cloud message nests it under "checkpoint"; a bare checkpoint works too.
                    let value: serde_json::Value = serde_json::from_str(&text)
                        .map_err(|e| Error::Invalid(format!("the checkpoint is not JSON: {e}")))?;
                    let checkpoint = value.get("checkpoint").cloned().unwrap_or(value);
                    vec![serde_json::from_value(checkpoint).map_err(|e| {
                        Error::Invalid(format!(
                            "not an audit checkpoint (from rxgate/v1/<site>/audit/checkpoints): {e}"
                        ))
                    })?]
                }
            };
            // Without the CA, a checkpoint's signature cannot be checked, and a chain that
            // only matches unchecked checkpoints proves nothing: refuse rather than pass.
            let ca = ctx.ca_der.as_deref().map_err(|e| {
                Error::Invalid(format!(
                    "cannot check the signatures of audit checkpoints without the gateway's CA \
                     certificate: {e}"
                ))
            })?;
            let retention = crate::audit::Retention {
                now: ctx.registry.clock().now(),
                keep: ctx.audit_retention,
            };
            audit_verified(crate::audit::verify_at(
                ctx.registry.store(),
                Some(ca),
                &external,
                retention,
            )?)
        }
    }
}

/// One sentence per probe whose calibration is due within
/// [`crate::devices::CALIBRATION_NOTICE_DAYS`] or overdue on `today`, by device id.
pub fn calibration_notices(
    limits: &std::collections::HashMap<String, crate::coldchain::Limits>,
    today: time::Date,
) -> Vec<String> {
    use crate::coldchain::CalibrationStatus;
    let mut devices: Vec<_> = limits.iter().collect();
    devices.sort_by(|a, b| a.0.cmp(b.0));
    devices
        .into_iter()
        .filter_map(|(device, l)| {
            let c = l.calibration.as_ref()?;
            match c.status(today) {
                CalibrationStatus::Valid => None,
                CalibrationStatus::DueSoon => Some(format!(
                    "{device}: probe calibration (certificate {}, {}) is due on {}, in {} days",
                    c.certificate,
                    c.laboratory,
                    c.due_on,
                    (c.due_on - today).whole_days()
                )),
                CalibrationStatus::Overdue => Some(format!(
                    "{device}: probe calibration (certificate {}, {}) was due on {}: OVERDUE, readings are from an uncalibrated probe",
                    c.certificate, c.laboratory, c.due_on
                )),
            }
        })
        .collect()
}

/// Exports the audit entries with `from <= ts < to` page by page through `send` (the daemon's
/// socket, or [`execute`] on the store), handing them to `write` one at a time: at most one page
/// (`page` entries, at most [`EXPORT_PAGE`]) is held at once, however long the trail. The export
/// ends at the head as it was when it began. Returns the number of entries written.
pub fn export_pages(
    send: &mut dyn FnMut(Request) -> Result<Reply>,
    from: Option<String>,
    to: Option<String>,
    page: u32,
    mut write: impl FnMut(crate::audit::AuditBody) -> Result<()>,
) -> Result<u64> {
    let (mut after, mut until) = (None, None);
    let mut written = 0u64;
    loop {
        let reply = send(Request::AuditExport {
            from: from.clone(),
            to: to.clone(),
            after,
            until,
            limit: Some(page),
        })?;
        let Reply::AuditPage {
            entries,
            next_after,
            until: head,
        } = reply
        else {
            return Err(Error::Invalid(
                "unexpected answer to an audit export; is the daemon the same rxgate version?"
                    .to_owned(),
            ));
        };
        for entry in entries {
            write(entry)?;
            written += 1;
        }
        match next_after {
            Some(next) => {
                after = Some(next);
                until = Some(head);
            }
            None => return Ok(written),
        }
    }
}

/// A time bound: an RFC 3339 timestamp or a date (`2026-05-01`, meaning its midnight UTC).
fn parse_bound(text: &str) -> Result<time::OffsetDateTime, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(ts) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(ts);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &format)
        .map(|d| d.midnight().assume_utc())
        .map_err(|_| "expected a date (2026-05-01) or an RFC 3339 timestamp".to_owned())
}

/// A report bound: a date, `2026-05-01`.
fn parse_day(text: &str, name: &str) -> Result<time::Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text.trim(), &format).map_err(|_| {
        Error::Invalid(format!(
            "--{name} {text:?}: expected a date like 2026-05-01"
        ))
    })
}

fn audit_verified(outcome: Result<u64, crate::audit::Broken>) -> Result<Reply> {
    Ok(match outcome {
        Ok(entries) => Reply::AuditVerified {
            entries,
            broken: None,
        },
        Err(broken) => Reply::AuditVerified {
            entries: broken.seq.saturating_sub(1),
            broken: Some((broken.seq, broken.reason)),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_notices_name_probes_due_within_thirty_days_and_overdue_ones_and_checks_need_the_daemon()
     {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config::parse(
            "[gateway]\nsite = \"store-1\"\ndata_dir = \"data\"\n\
             [devices.fridge-01]\nprofile = \"refrigerator\"\n[devices.fridge-01.calibration]\n\
             certificate = \"C-1\"\nlaboratory = \"Lab\"\ncalibrated_on = \"2026-01-01\"\ndue_on = \"2026-12-31\"\n\
             [devices.fridge-02]\nprofile = \"refrigerator\"\n[devices.fridge-02.calibration]\n\
             certificate = \"C-2\"\nlaboratory = \"Lab\"\ncalibrated_on = \"2025-01-01\"\ndue_on = \"2026-12-01\"\n\
             [devices.fridge-03]\nprofile = \"refrigerator\"\n",
            dir.path(),
        )
        .unwrap();
        let store = crate::store::Store::create(&dir.path().join("s.redb")).unwrap();
        let clock =
            crate::clock::ManualClock::new(time::macros::datetime!(2026-12-07 09:00 UTC), true);
        let ctx = Context::new(&config, Registry::new(store, clock));
        let notices = calibration_notices(&ctx.limits, time::macros::date!(2026 - 12 - 07));
        assert_eq!(notices.len(), 2, "{notices:?}");
        assert!(
            notices[0].starts_with("fridge-01: ") && notices[0].contains("in 24 days"),
            "{notices:?}"
        );
        assert!(
            notices[1].starts_with("fridge-02: ") && notices[1].contains("OVERDUE"),
            "{notices:?}"
        );
        assert!(calibration_notices(&ctx.limits, time::macros::date!(2026 - 10 - 01)).is_empty());
        let Ok(Reply::Status(status)) = execute(&ctx, Request::Status, &Actor::cli()) else {
            panic!("a status");
        };
        assert_eq!(status.calibration, notices);
        let refused = execute(
            &ctx,
            Request::MinMaxCheck {
                device: "fridge-01".to_owned(),
                note: String::new(),
                audit_seq: None,
            },
            &Actor::cli(),
        );
        assert!(
            matches!(&refused, Err(Error::Invalid(m)) if m.contains("rxgate run")),
            "{refused:?}"
        );
    }

    #[test]
    fn an_audit_export_through_the_admin_protocol_comes_in_bounded_pages_holding_exactly_the_range()
    {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config::parse(
            "[gateway]\nsite = \"store-1\"\ndata_dir = \"data\"\n",
            dir.path(),
        )
        .unwrap();
        let store = crate::store::Store::create(&dir.path().join("s.redb")).unwrap();
        let start = time::macros::datetime!(2026-01-01 00:00 UTC);
        store
            .write(|txn| {
                for i in 0..50_000 {
                    let record =
                        crate::audit::Record::new(crate::audit::Kind::AccessEvent, "cab-1");
                    crate::audit::append(txn, start + time::Duration::minutes(i), true, record)?;
                }
                Ok(())
            })
            .unwrap();
        let clock = crate::clock::ManualClock::new(start, true);
        let ctx = Context::new(&config, Registry::new(store, clock));
        let mut largest = 0;
        let mut pages = 0;
        let mut send = |request: Request| {
            let reply = execute(&ctx, request, &Actor::cli())?;
            if let Reply::AuditPage { entries, .. } = &reply {
                largest = largest.max(entries.len());
                pages += 1;
            }
            Ok(reply)
        };
        let mut seqs = Vec::new();
        let written = export_pages(
            &mut send,
            Some("2026-01-10".to_owned()),
            Some("2026-01-12".to_owned()),
            EXPORT_PAGE,
            |e| {
                seqs.push(e.seq);
                Ok(())
            },
        )
        .unwrap();
        // 2026-01-10 00:00 is minute 9 × 1440 (entry 12 961); 2026-01-12 00:00 is entry 15 841.
        assert_eq!(seqs, (12_961..=15_840).collect::<Vec<_>>());
        assert_eq!(written, 2_880);
        assert_eq!((largest, pages), (EXPORT_PAGE as usize, 3));
    }
}
