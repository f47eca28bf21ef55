//! `[mqtt]`: this component's section of the config file. `config/` assembles the
//! sections and checks them; every key is documented in `config/gateway.toml`.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::Deserialize;

/// `[mqtt]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Whether the device-facing MQTT listener is open. `false`: no device can connect over
    /// MQTT (a gateway whose devices are all polled over Modbus); the embedded broker still
    /// runs on a loopback port only the gateway logs in to.
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
    /// Address of the device-facing MQTT listener (TLS with client certificates only).
    #[serde(default = "defaults::mqtt_listen")]
    pub listen: SocketAddr,
    /// Time a device has to complete the TLS handshake.
    #[serde(default = "defaults::handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Time a device has, after the handshake, to send its MQTT CONNECT.
    #[serde(default = "defaults::handshake_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// TLS handshakes in progress at once; beyond it the oldest is dropped (a silent
    /// connection cannot keep a real device out).
    #[serde(default = "defaults::max_pending_handshakes")]
    pub max_pending_handshakes: NonZeroUsize,
    /// Device sessions at once.
    #[serde(default = "defaults::mqtt_max_connections")]
    pub max_connections: NonZeroUsize,
    /// Connections from one source address at once: sessions and TLS handshakes in progress
    /// alike.
    #[serde(default = "defaults::mqtt_max_per_source")]
    pub max_connections_per_source: NonZeroUsize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            enabled: defaults::enabled(),
            listen: defaults::mqtt_listen(),
            handshake_timeout: defaults::handshake_timeout(),
            connect_timeout: defaults::handshake_timeout(),
            max_pending_handshakes: defaults::max_pending_handshakes(),
            max_connections: defaults::mqtt_max_connections(),
            max_connections_per_source: defaults::mqtt_max_per_source(),
        }
    }
}

mod defaults {
    use super::*;

    pub fn enabled() -> bool {
        true
    }
    pub fn mqtt_listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 8883))
    }
    pub fn handshake_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn max_pending_handshakes() -> NonZeroUsize {
        NonZeroUsize::new(256).expect("256 is not zero")
    }
    pub fn mqtt_max_connections() -> NonZeroUsize {
        NonZeroUsize::new(512).expect("512 is not zero")
    }
    pub fn mqtt_max_per_source() -> NonZeroUsize {
        NonZeroUsize::new(128).expect("128 is not zero")
    }
}
