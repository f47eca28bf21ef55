//! `[cloud]`: this component's section of the config file. `config/` assembles the
//! sections and checks them; every key is documented in `config/gateway.toml`.

use std::fmt;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[cloud]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// Broker URL, `mqtts://host:port` (TLS) or `mqtt://host:port` (loopback testing only).
    pub url: String,
    /// CA certificate(s) that verify the cloud broker (PEM).
    pub ca_file: Option<PathBuf>,
    /// The gateway's client certificate towards the cloud (PEM).
    pub cert_file: Option<PathBuf>,
    /// Private key for `cert_file` (PEM, PKCS#8 or SEC1).
    pub key_file: Option<PathBuf>,
    /// MQTT client id (default `rxgate-<site>`).
    pub client_id: Option<String>,
    /// MQTT keep-alive interval.
    #[serde(default = "defaults::keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Messages sent but not yet acknowledged by the broker, at most.
    #[serde(default = "defaults::max_inflight")]
    pub max_inflight: NonZeroUsize,
    /// First wait before reconnecting after a failure; doubles up to `reconnect_max`.
    #[serde(default = "defaults::reconnect_min", with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest wait between reconnection attempts.
    #[serde(default = "defaults::reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// How telemetry points are written: `full` (contract v1, the default) or `compact`
    /// (points version 2: values alone, qualities only where not good). Applies to readings
    /// accepted from then on; see docs/cloud-contract.md.
    #[serde(default)]
    pub points: crate::message::envelope::PointsForm,
}

impl fmt::Display for CloudConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// A parsed `[cloud].url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEndpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// Parses `mqtts://host:port` or `mqtt://host:port` (port defaults to 8883 / 1883).
pub fn cloud_endpoint(url: &str) -> Result<CloudEndpoint, String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err("must start with mqtts:// (or mqtt:// for a broker on loopback)".to_owned());
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') || rest.is_empty() {
        return Err("must be scheme://host[:port] with no path or credentials".to_owned());
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("port {port:?} is not a number between 1 and 65535"))?;
            (host.trim_start_matches('[').trim_end_matches(']'), port)
        }
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() || port == 0 {
        return Err("must name a host and a non-zero port".to_owned());
    }
    // Plaintext would carry patient pseudonyms, access records and the gateway's login across
    // the network in clear: only a broker on this machine may be reached without TLS. Names
    // other than `localhost` are not resolved here (parsing does no I/O), so they are refused.
    let on_loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !tls && !on_loopback {
        return Err(format!(
            "mqtt:// (no TLS) is only for a broker on loopback (127.0.0.1, ::1, localhost), not {host}; use mqtts://{host}:8883"
        ));
    }
    Ok(CloudEndpoint {
        tls,
        host: host.to_owned(),
        port,
    })
}

mod defaults {
    use super::*;

    pub fn keep_alive() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_inflight() -> NonZeroUsize {
        NonZeroUsize::new(64).expect("64 is not zero")
    }
    pub fn reconnect_min() -> Duration {
        Duration::from_secs(1)
    }
    pub fn reconnect_max() -> Duration {
        Duration::from_secs(120)
    }
}
