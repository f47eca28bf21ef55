//! Turning TOML into [`Config`] and checking it, collecting every error with its key and value.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::uplink::cloud_endpoint;

use super::{
    CloudConfig, Config, DeviceConfig, EnrollConfig, GatewayConfig, MetricsConfig, MqttConfig,
    OutboxConfig,
};

pub use crate::error::{ConfigError, ConfigErrors};

fn section<T: DeserializeOwned>(
    table: &mut toml::Table,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Option<T>> {
    let Some(value) = table.remove(key) else {
        return Some(None);
    };
    match value.try_into::<T>() {
        Ok(parsed) => Some(Some(parsed)),
        Err(e) => {
            errors.push(ConfigError::section(key, e.message().trim_end().to_owned()));
            None
        }
    }
}

pub(super) fn parse_sections(mut table: toml::Table, base: &Path) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let gateway = section::<GatewayConfig>(&mut table, "gateway", &mut errors);
    let enroll = section::<EnrollConfig>(&mut table, "enroll", &mut errors);
    let mqtt = section::<MqttConfig>(&mut table, "mqtt", &mut errors);
    let cloud = section::<CloudConfig>(&mut table, "cloud", &mut errors);
    let outbox = section::<OutboxConfig>(&mut table, "outbox", &mut errors);
    let metrics = section::<MetricsConfig>(&mut table, "metrics", &mut errors);
    let alerts = section::<crate::alerts::AlertsConfig>(&mut table, "alerts", &mut errors);
    let audit = section::<crate::audit::AuditConfig>(&mut table, "audit", &mut errors);
    let console = section::<crate::console::ConsoleConfig>(&mut table, "console", &mut errors);
    let keys = section::<crate::keys::KeysConfig>(&mut table, "keys", &mut errors);
    let backup = section::<crate::backup::BackupConfig>(&mut table, "backup", &mut errors);
    let devices = parse_devices(&mut table, base, &mut errors);
    for unknown in table.keys() {
        errors.push(ConfigError::section(
            unknown,
            "unknown section; expected one of `gateway`, `enroll`, `mqtt`, `cloud`, `outbox`, `metrics`, `alerts`, `audit`, `console`, `keys`, `backup`, `devices`",
        ));
    }
    if let Some(None) = gateway {
        errors.push(ConfigError::section(
            "gateway",
            "missing section; at least `[gateway]` with `site = \"...\"` is required",
        ));
    }
    let (
        Some(Some(mut gateway)),
        Some(enroll),
        Some(mqtt),
        Some(mut cloud),
        Some(outbox),
        Some(metrics),
        Some(alerts),
        Some(audit),
        Some(console),
        Some(keys),
        Some(backup),
    ) = (
        gateway, enroll, mqtt, cloud, outbox, metrics, alerts, audit, console, keys, backup,
    )
    else {
        return Err(ConfigErrors(errors));
    };
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    gateway.data_dir = base.join(&gateway.data_dir);
    if let Some(policy) = gateway.policy_file.as_mut() {
        *policy = base.join(&*policy);
    }
    let mut alerts = alerts.unwrap_or_default();
    alerts.resolve_paths(base);
    let mut console = console.unwrap_or_default();
    console.resolve_paths(base);
    let mut keys = keys.unwrap_or_default();
    keys.resolve_paths(base);
    let mut backup = backup.unwrap_or_default();
    backup.resolve_paths(base);
    if let Some(cloud) = cloud.as_mut() {
        for path in [
            &mut cloud.ca_file,
            &mut cloud.cert_file,
            &mut cloud.key_file,
        ]
        .into_iter()
        .flatten()
        {
            *path = base.join(&*path);
        }
    }
    Ok(Config {
        gateway,
        enroll: enroll.unwrap_or_default(),
        mqtt: mqtt.unwrap_or_default(),
        cloud,
        outbox: outbox.unwrap_or_default(),
        metrics: metrics.unwrap_or_default(),
        alerts,
        audit: audit.unwrap_or_default(),
        console,
        keys,
        backup,
        devices,
        source: None,
    })
}

/// Each device on its own, so errors name `devices.<id>`.
fn parse_devices(
    table: &mut toml::Table,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> std::collections::BTreeMap<String, DeviceConfig> {
    let mut out = std::collections::BTreeMap::new();
    let Some(value) = table.remove("devices") else {
        return out;
    };
    let toml::Value::Table(devices) = value else {
        errors.push(ConfigError::section(
            "devices",
            "must be a table of `[devices.<id>]` sections",
        ));
        return out;
    };
    for (id, device) in devices {
        let key = format!("devices.{id}");
        match device.try_into::<DeviceConfig>() {
            Ok(mut device) => {
                for path in [&mut device.model, &mut device.ca_file]
                    .into_iter()
                    .flatten()
                {
                    *path = base.join(&*path);
                }
                out.insert(id, device);
            }
            Err(e) => errors.push(ConfigError::section(
                &key,
                e.message().trim_end().to_owned(),
            )),
        }
    }
    out
}

/// Site ids and device ids share one alphabet: they appear in topics, URIs and file names.
pub(crate) fn is_identifier(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !s.starts_with(['.', '-'])
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

fn duration_within(
    errors: &mut Vec<ConfigError>,
    key: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) {
    if value < min || value > max {
        errors.push(ConfigError::new(
            key,
            quoted(&humantime::format_duration(value).to_string()),
            format!(
                "must be between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

pub(super) fn check(config: &Config) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    let g = &config.gateway;
    if !is_identifier(&g.site) {
        errors.push(ConfigError::new(
            "gateway.site",
            quoted(&g.site),
            "must be 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'",
        ));
    }
    for name in &g.server_names {
        if name.parse::<std::net::IpAddr>().is_err() && !is_dns_name(name) {
            errors.push(ConfigError::new(
                "gateway.server_names",
                quoted(name),
                "is neither a DNS name nor an IP address",
            ));
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&g.log) {
        errors.push(ConfigError::new(
            "gateway.log",
            quoted(&g.log),
            format!("not a log filter: {e}"),
        ));
    }

    let e = &config.enroll;
    duration_within(
        &mut errors,
        "enroll.cert_validity",
        e.cert_validity,
        HOUR,
        825 * DAY,
    );
    duration_within(
        &mut errors,
        "enroll.cert_backdate",
        e.cert_backdate,
        Duration::ZERO,
        DAY,
    );
    duration_within(
        &mut errors,
        "enroll.server_cert_validity",
        e.server_cert_validity,
        DAY,
        3650 * DAY,
    );
    duration_within(
        &mut errors,
        "enroll.token_ttl",
        e.token_ttl,
        MINUTE,
        30 * DAY,
    );
    duration_within(
        &mut errors,
        "enroll.handshake_timeout",
        e.handshake_timeout,
        Duration::from_secs(1),
        MINUTE,
    );
    duration_within(
        &mut errors,
        "enroll.failed_lockout",
        e.failed_lockout,
        Duration::ZERO,
        DAY,
    );
    duration_within(
        &mut errors,
        "enroll.superseded_grace",
        e.superseded_grace,
        Duration::ZERO,
        DAY,
    );
    duration_within(
        &mut errors,
        "enroll.crl_validity",
        e.crl_validity,
        HOUR,
        7 * DAY,
    );
    if e.burn_after_failed < e.max_failed_attempts {
        errors.push(ConfigError::new(
            "enroll.burn_after_failed",
            e.burn_after_failed,
            format!(
                "must be at least enroll.max_failed_attempts ({}): the per-address lockout is what keeps one guesser from burning the token",
                e.max_failed_attempts
            ),
        ));
    }
    if e.max_body_bytes.get() < 4096 || e.max_body_bytes.get() > 1 << 20 {
        errors.push(ConfigError::new(
            "enroll.max_body_bytes",
            e.max_body_bytes,
            "must be between 4096 and 1048576 (a CSR is a few KiB at most)",
        ));
    }

    if e.enabled && config.mqtt.enabled && e.listen.port() != 0 && e.listen == config.mqtt.listen {
        errors.push(ConfigError::new(
            "mqtt.listen",
            quoted(&config.mqtt.listen.to_string()),
            "is the same address as enroll.listen",
        ));
    }

    if let Some(cloud) = &config.cloud {
        check_cloud(cloud, &mut errors);
    }
    config.alerts.check(&mut errors);

    duration_within(
        &mut errors,
        "audit.checkpoint_every",
        config.audit.checkpoint_every,
        Duration::from_secs(10),
        DAY,
    );
    duration_within(
        &mut errors,
        "audit.retention",
        config.audit.retention,
        crate::audit::MIN_RETENTION,
        20 * 366 * DAY,
    );
    let o = &config.outbox;
    duration_within(
        &mut errors,
        "outbox.batch_delay",
        o.batch_delay,
        Duration::ZERO,
        Duration::from_secs(1),
    );
    if o.batch_max.get() > 10_000 {
        errors.push(ConfigError::new(
            "outbox.batch_max",
            o.batch_max,
            "must be at most 10000",
        ));
    }
    for (id, device) in &config.devices {
        crate::devices::check_device(id, device, &mut errors);
        crate::coldchain::profile::check(id, device, &mut errors);
    }
    crate::devices::check_serial_buses(&config.devices, &mut errors);
    config.console.check(&mut errors);
    config.backup.check(&mut errors);
    let metrics = &config.metrics;
    if metrics.enabled && !metrics.listen.ip().is_loopback() && !metrics.allow_remote {
        errors.push(ConfigError::new(
            "metrics.listen",
            quoted(&metrics.listen.to_string()),
            "is not a loopback address, and /metrics and /health have no authentication; keep it on 127.0.0.1, or set metrics.allow_remote = true to serve it on the network anyway",
        ));
    }

    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// What `rxgate config check` should say of a valid config besides "ok": every listener, open
/// (where, how protected) or off, then the open ones beyond loopback, and what is served there
/// without authentication.
pub fn notices(config: &Config) -> Vec<String> {
    let mut notices: Vec<String> = config.listeners().iter().map(|l| l.to_string()).collect();
    for (key, listen) in [
        (
            "enroll.listen",
            config.enroll.enabled.then_some(config.enroll.listen),
        ),
        (
            "mqtt.listen",
            config.mqtt.enabled.then_some(config.mqtt.listen),
        ),
    ] {
        if let Some(listen) = listen
            && !listen.ip().is_loopback()
        {
            notices.push(format!("{key} = {listen}: open to the network (mTLS)"));
        }
    }
    if config.console.enabled && !config.console.listen.ip().is_loopback() {
        notices.push(format!(
            "console.listen = {}: open to the network (HTTPS; people sign in with a password and a second factor)",
            config.console.listen
        ));
    }
    if config.metrics.enabled && !config.metrics.listen.ip().is_loopback() {
        notices.push(format!(
            "warning: metrics.listen = {}: /metrics and /health are served to anyone who can reach it, without authentication (metrics.allow_remote = true)",
            config.metrics.listen
        ));
    }
    notices
}

fn check_cloud(cloud: &CloudConfig, errors: &mut Vec<ConfigError>) {
    match cloud_endpoint(&cloud.url) {
        Err(message) => errors.push(ConfigError::new("cloud.url", quoted(&cloud.url), message)),
        Ok(endpoint) => {
            if endpoint.tls && cloud.ca_file.is_none() {
                errors.push(ConfigError::section(
                    "cloud.ca_file",
                    "is required with an mqtts:// url: it is how the gateway knows it talks to the right broker",
                ));
            }
        }
    }
    duration_within(
        errors,
        "cloud.keep_alive",
        cloud.keep_alive,
        Duration::from_secs(5),
        Duration::from_secs(3600),
    );
    duration_within(
        errors,
        "cloud.reconnect_min",
        cloud.reconnect_min,
        Duration::from_millis(100),
        Duration::from_secs(600),
    );
    duration_within(
        errors,
        "cloud.reconnect_max",
        cloud.reconnect_max,
        cloud.reconnect_min,
        Duration::from_secs(3600),
    );
    if cloud.max_inflight.get() > 1000 {
        errors.push(ConfigError::new(
            "cloud.max_inflight",
            cloud.max_inflight,
            "must be at most 1000",
        ));
    }
    if cloud.cert_file.is_some() != cloud.key_file.is_some() {
        errors.push(ConfigError::section(
            "cloud.cert_file",
            "cert_file and key_file go together: set both or neither",
        ));
    }
}
