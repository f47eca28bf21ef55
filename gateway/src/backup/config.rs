//! `[backup]`: who can read the backups, where they go, how often, how many are kept.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;

/// `[backup]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// age public keys (`age1...`, from `age-keygen -y`) every backup is encrypted to. Only the
    /// holders of the matching identities can read a backup; the gateway, which has none, cannot.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// A file of further age public keys, one a line (`#` starts a comment), relative to the
    /// config file. Read at every backup.
    pub recipients_file: Option<PathBuf>,
    /// How often the running gateway backs up on its own, e.g. `"24h"`. Absent: never (backups
    /// are then only made by `rxgate backup create`).
    #[serde(default, with = "humantime_serde::option")]
    pub interval: Option<Duration>,
    /// Directories each backup is written to (a USB drive, a mounted share). One that is missing
    /// (an unplugged drive, an unmounted share) is skipped with a warning; the others still get
    /// the backup. Give a folder on the drive, not the mount point, so an unmounted drive shows
    /// as missing instead of filling the SD card.
    #[serde(default)]
    pub destinations: Vec<PathBuf>,
    /// Backups of this site kept in each destination; older ones are removed after each
    /// scheduled or configured backup.
    #[serde(default = "default_keep")]
    pub keep: NonZeroU32,
}

fn default_keep() -> NonZeroU32 {
    NonZeroU32::new(7).unwrap_or(NonZeroU32::MIN)
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            recipients: Vec::new(),
            recipients_file: None,
            interval: None,
            destinations: Vec::new(),
            keep: default_keep(),
        }
    }
}

/// Shortest and longest `backup.interval`.
const MIN_INTERVAL: Duration = Duration::from_secs(60);
const MAX_INTERVAL: Duration = Duration::from_secs(31 * 86_400);

impl BackupConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        for path in self
            .recipients_file
            .iter_mut()
            .chain(self.destinations.iter_mut())
        {
            *path = base.join(&*path);
        }
    }

    /// Whether the daemon makes backups on its own: an interval, recipients and destinations.
    pub fn scheduled(&self) -> Option<Duration> {
        self.interval.filter(|_| {
            (!self.recipients.is_empty() || self.recipients_file.is_some())
                && !self.destinations.is_empty()
        })
    }

    /// Every recipient: those listed and those in `recipients_file`.
    pub fn recipients(&self) -> Result<Vec<age::x25519::Recipient>, String> {
        let mut out = Vec::new();
        for (i, text) in self.recipients.iter().enumerate() {
            out.push(parse_recipient(text).map_err(|e| format!("backup.recipients[{i}]: {e}"))?);
        }
        if let Some(file) = &self.recipients_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("backup.recipients_file {}: {e}", file.display()))?;
            for (n, parsed) in recipient_lines(&text) {
                out.push(parsed.map_err(|e| {
                    format!("backup.recipients_file {} line {n}: {e}", file.display())
                })?);
            }
        }
        if out.is_empty() {
            return Err(
                "no backup recipients: set [backup].recipients to the age public key \
                 (age1...) of whoever may restore this gateway (see `age-keygen`)"
                    .to_owned(),
            );
        }
        Ok(out)
    }

    /// Adds one error per problem, each naming its key and value. Reads `recipients_file`.
    pub fn check(&self, errors: &mut Vec<ConfigError>) {
        for (i, text) in self.recipients.iter().enumerate() {
            if let Err(e) = parse_recipient(text) {
                errors.push(ConfigError::new(
                    format!("backup.recipients[{i}]"),
                    format!("{text:?}"),
                    e,
                ));
            }
        }
        if let Some(file) = &self.recipients_file {
            let shown = format!("{:?}", file.display().to_string());
            match std::fs::read_to_string(file) {
                Err(e) => errors.push(ConfigError::new(
                    "backup.recipients_file",
                    shown,
                    format!("cannot be read: {e}"),
                )),
                Ok(text) => {
                    for (n, parsed) in recipient_lines(&text) {
                        if let Err(e) = parsed {
                            errors.push(ConfigError::new(
                                "backup.recipients_file",
                                &shown,
                                format!("line {n}: {e}"),
                            ));
                        }
                    }
                }
            }
        }
        if let Some(interval) = self.interval {
            if interval < MIN_INTERVAL || interval > MAX_INTERVAL {
                errors.push(ConfigError::new(
                    "backup.interval",
                    format!("{:?}", humantime::format_duration(interval).to_string()),
                    "must be between 1m and 31days",
                ));
            }
            if self.recipients.is_empty() && self.recipients_file.is_none() {
                errors.push(ConfigError::new(
                    "backup.interval",
                    format!("{:?}", humantime::format_duration(interval).to_string()),
                    "needs backup.recipients (age public keys) to encrypt the backups to",
                ));
            }
            if self.destinations.is_empty() {
                errors.push(ConfigError::new(
                    "backup.interval",
                    format!("{:?}", humantime::format_duration(interval).to_string()),
                    "needs backup.destinations (directories to write the backups to)",
                ));
            }
        }
        if self.keep.get() > 1000 {
            errors.push(ConfigError::new(
                "backup.keep",
                self.keep,
                "must be at most 1000",
            ));
        }
    }
}

/// Each key of a recipients file with its line number (1-based); blank lines and `#` comments
/// skipped.
fn recipient_lines(
    text: &str,
) -> impl Iterator<Item = (usize, Result<age::x25519::Recipient, String>)> + '_ {
    text.lines()
        .enumerate()
        .map(|(n, line)| (n + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(n, line)| (n, parse_recipient(line)))
}

fn parse_recipient(text: &str) -> Result<age::x25519::Recipient, String> {
    age::x25519::Recipient::from_str(text.trim()).map_err(|e| {
        format!("is not an age public key ({e}); expected age1... as `age-keygen -y` prints it")
    })
}
