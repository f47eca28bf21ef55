//! The gateway's configuration: one TOML file, every key documented in `config/gateway.toml`.
//!
//! Loading is pure: [`Config::parse`] turns text into typed values and resolves relative paths
//! against the config file's folder; nothing here binds sockets or opens files other than the
//! config file itself ([`Config::load`]). [`Config::check`] collects *every* problem, each naming
//! its key and the offending value, so `rxgate config check` can print them all at once.

mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::broker::MqttConfig;
pub use crate::devices::{
    DataType, DeviceConfig, Function, ModelFile, Parity, RegisterConfig, Transport, WordOrder,
};
pub use crate::enroll::EnrollConfig;
pub use crate::metrics::MetricsConfig;
pub use crate::outbox::OutboxConfig;
pub use crate::uplink::{CloudConfig, CloudEndpoint, cloud_endpoint};
pub use validate::{ConfigError, ConfigErrors, notices};

/// Where the CLI looks for the config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/rxgate/gateway.toml";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Site identity and where persistent state lives.
    pub gateway: GatewayConfig,
    /// EST enrollment listener and certificate issuance.
    #[serde(default)]
    pub enroll: EnrollConfig,
    /// Device-facing MQTT listener.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// The cloud broker; without it events wait in the outbox.
    pub cloud: Option<CloudConfig>,
    /// The durable queue of messages for the cloud.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// Prometheus metrics and health endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The audit trail: checkpoints and retention.
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
    /// How alerts reach people: e-mail, webhook, GPIO, escalation.
    #[serde(default)]
    pub alerts: crate::alerts::AlertsConfig,
    /// The pharmacy console (HTTPS): address, certificate, session limits.
    #[serde(default)]
    pub console: crate::console::ConsoleConfig,
    /// Where the key-encryption key that seals the keys at rest comes from.
    #[serde(default)]
    pub keys: crate::keys::KeysConfig,
    /// Encrypted backups: recipients, schedule, destinations, how many to keep.
    #[serde(default)]
    pub backup: crate::backup::BackupConfig,
    /// Per-device settings, by device id: Modbus polling, cold-chain limits.
    #[serde(default)]
    pub devices: BTreeMap<String, DeviceConfig>,
    /// The file this config was loaded from ([`Config::load`]); backups carry it.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// One network listener of the gateway, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// Its config section, and its name in `rxgate status`: `enroll`, `mqtt`, `console`,
    /// `metrics`.
    pub name: &'static str,
    /// What it is for.
    pub serves: &'static str,
    /// Where it listens; `None`: off (`enabled = false` in its section).
    pub listen: Option<SocketAddr>,
    /// How its connections are protected.
    pub security: &'static str,
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "listener {} ({}): ", self.name, self.serves)?;
        match self.listen {
            Some(addr) => write!(f, "{addr}, {}", self.security),
            None => write!(f, "off ({}.enabled = false)", self.name),
        }
    }
}

/// `[gateway]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Site id (e.g. `store-0042`), part of every cloud topic and of every device certificate.
    pub site: String,
    /// CA, store, sockets: everything persistent. Created by `rxgate init` with mode 0700.
    #[serde(default = "defaults::data_dir")]
    pub data_dir: PathBuf,
    /// Extra DNS names and IP addresses devices use to reach the gateway; they go into the
    /// gateway's server certificate next to `localhost` and `127.0.0.1`.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Log filter, in `tracing` env-filter syntax (`info`, `rxgate=debug,info`). `RUST_LOG`
    /// overrides it.
    #[serde(default = "defaults::log")]
    pub log: String,
    /// The policy file (rules for every message; see docs/policy.md), relative to this file.
    /// Absent: the built-in default policy (the same as config/policy.toml).
    pub policy_file: Option<PathBuf>,
    /// Treat the system clock as synchronised even when the kernel does not say so (hardware
    /// with a battery-backed RTC, containers). When false, certificate expiry is not enforced
    /// and timestamps are marked `clock_synced: false` until NTP has set the clock.
    #[serde(default)]
    pub assume_clock_synced: bool,
}

/// Defaults live here, in one place.
mod defaults {
    use super::*;

    pub fn data_dir() -> PathBuf {
        PathBuf::from("/var/lib/rxgate")
    }
    pub fn log() -> String {
        "info".to_owned()
    }
}

impl Config {
    /// Reads and parses the file at `path`; relative paths inside resolve against its folder.
    /// Returns every problem found, not just the first.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::single(ConfigError::file(format!(
                "cannot read config file {}: {e}",
                path.display()
            )))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::parse(&text, base)?;
        config.check()?;
        config.source = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_owned()));
        Ok(config)
    }

    /// Parses config text; `base` is the folder relative paths are resolved against.
    /// Each section is deserialised on its own so that one bad section does not hide another.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigErrors> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigErrors::single(ConfigError::syntax(&e)))?;
        validate::parse_sections(table, base)
    }

    /// The semantic checks that serde cannot express, all of them at once.
    pub fn check(&self) -> Result<(), ConfigErrors> {
        validate::check(self)
    }

    /// The file layout under `data_dir`.
    /// What a backup of this gateway takes (`backup`).
    pub fn backup_plan(&self) -> crate::backup::Plan {
        crate::backup::Plan {
            site: self.gateway.site.clone(),
            paths: self.paths(),
            config_file: self.source.clone(),
            referenced: referenced_files(self),
            config: self.backup.clone(),
            keys: self.keys.clone(),
        }
    }

    pub fn paths(&self) -> crate::paths::DataPaths {
        crate::paths::DataPaths::new(&self.gateway.data_dir)
    }

    /// What the PKI needs of this config.
    pub fn pki(&self) -> crate::pki::PkiSettings {
        crate::pki::PkiSettings {
            paths: self.paths(),
            site: self.gateway.site.clone(),
            server_names: self.gateway.server_names.clone(),
            server_cert_validity: self.enroll.server_cert_validity,
            // With the EST listener off nothing serves `/crl`: certificates name no CRL.
            crl_uri: self
                .enroll
                .enabled
                .then(|| crate::pki::crl_uri(&self.gateway.server_names, self.enroll.listen))
                .flatten(),
            keys: self.keys.clone(),
        }
    }

    /// The gateway's network listeners, each with its address, or `None` when its section
    /// says `enabled = false`: what `rxgate config check` and `rxgate doctor` report.
    pub fn listeners(&self) -> [Listener; 4] {
        let on = |enabled: bool, listen: SocketAddr| enabled.then_some(listen);
        [
            Listener {
                name: "enroll",
                serves: "device enrollment (EST)",
                listen: on(self.enroll.enabled, self.enroll.listen),
                security: "TLS (HTTPS; renewals by client certificate)",
            },
            Listener {
                name: "mqtt",
                serves: "device MQTT",
                listen: on(self.mqtt.enabled, self.mqtt.listen),
                security: "TLS, client certificate required",
            },
            Listener {
                name: "console",
                serves: "the pharmacy console",
                listen: on(self.console.enabled, self.console.listen),
                security: "TLS (HTTPS; password and second factor)",
            },
            Listener {
                name: "metrics",
                serves: "/metrics and /health",
                listen: on(self.metrics.enabled, self.metrics.listen),
                security: "plain HTTP, no TLS, no authentication",
            },
        ]
    }

    /// A config for a gateway on loopback with ephemeral ports under `data_dir`: what `rxgate
    /// demo` and tests start from.
    pub fn loopback(site: &str, data_dir: &Path) -> Config {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Config {
            gateway: GatewayConfig {
                site: site.to_owned(),
                data_dir: data_dir.to_owned(),
                server_names: Vec::new(),
                log: defaults::log(),
                policy_file: None,
                assume_clock_synced: false,
            },
            enroll: EnrollConfig {
                listen: loopback,
                ..EnrollConfig::default()
            },
            mqtt: MqttConfig {
                listen: loopback,
                ..MqttConfig::default()
            },
            cloud: None,
            outbox: OutboxConfig::default(),
            metrics: MetricsConfig {
                listen: loopback,
                ..MetricsConfig::default()
            },
            alerts: crate::alerts::AlertsConfig::default(),
            audit: crate::audit::AuditConfig::default(),
            console: crate::console::ConsoleConfig {
                listen: loopback,
                ..crate::console::ConsoleConfig::default()
            },
            keys: crate::keys::KeysConfig::default(),
            backup: crate::backup::BackupConfig::default(),
            devices: BTreeMap::new(),
            source: None,
        }
    }
}

#[cfg(test)]
mod tests;

/// Every file `config` names, by key, that lives outside data_dir.
fn referenced_files(config: &Config) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    let mut add = |key: String, path: Option<&PathBuf>| {
        if let Some(path) = path
            && !path.starts_with(&config.gateway.data_dir)
            && !out.iter().any(|(_, p)| p == path)
        {
            out.push((key, path.clone()));
        }
    };
    add(
        "gateway.policy_file".to_owned(),
        config.gateway.policy_file.as_ref(),
    );
    for (id, device) in &config.devices {
        add(format!("devices.{id}.model"), device.model.as_ref());
        add(format!("devices.{id}.ca_file"), device.ca_file.as_ref());
    }
    if let Some(cloud) = &config.cloud {
        add("cloud.ca_file".to_owned(), cloud.ca_file.as_ref());
        add("cloud.cert_file".to_owned(), cloud.cert_file.as_ref());
        add("cloud.key_file".to_owned(), cloud.key_file.as_ref());
    }
    if let Some(email) = &config.alerts.email {
        add(
            "alerts.email.password_file".to_owned(),
            email.password_file.as_ref(),
        );
        add("alerts.email.ca_file".to_owned(), email.ca_file.as_ref());
    }
    if let Some(webhook) = &config.alerts.webhook {
        add(
            "alerts.webhook.secret_file".to_owned(),
            Some(&webhook.secret_file),
        );
        add(
            "alerts.webhook.ca_file".to_owned(),
            webhook.ca_file.as_ref(),
        );
    }
    add(
        "console.cert_file".to_owned(),
        config.console.cert_file.as_ref(),
    );
    add(
        "console.key_file".to_owned(),
        config.console.key_file.as_ref(),
    );
    add(
        "backup.recipients_file".to_owned(),
        config.backup.recipients_file.as_ref(),
    );
    out
}
