//! `[enroll]`: the EST listener's section of the config file. `config/` assembles the sections
//! and checks them; every key is documented in `config/gateway.toml`.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use serde::Deserialize;

/// `[enroll]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollConfig {
    /// Whether the EST listener is open. `false`: nothing listens for enrollment (a gateway
    /// whose devices are all polled over Modbus); the CA still signs CRLs, and the other keys
    /// of this section still apply to certificates the gateway issues.
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
    /// Address of the EST listener (HTTPS).
    #[serde(default = "defaults::enroll_listen")]
    pub listen: SocketAddr,
    /// Lifetime of device certificates issued by enrollment and renewal.
    #[serde(default = "defaults::cert_validity", with = "humantime_serde")]
    pub cert_validity: Duration,
    /// How far back `notBefore` is set, so a device whose clock lags a little accepts its
    /// certificate at once.
    #[serde(default = "defaults::cert_backdate", with = "humantime_serde")]
    pub cert_backdate: Duration,
    /// Lifetime of the gateway's own TLS server certificate; it is re-issued at start-up when
    /// less than a tenth of this is left.
    #[serde(default = "defaults::server_cert_validity", with = "humantime_serde")]
    pub server_cert_validity: Duration,
    /// Default lifetime of an enrollment token (`rxgate token create --ttl` overrides it).
    #[serde(default = "defaults::token_ttl", with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Wrong tokens one source address may try for a device before that address is locked out
    /// of the device's token for `failed_lockout` (other addresses are not affected).
    #[serde(default = "defaults::max_failed_attempts")]
    pub max_failed_attempts: NonZeroU32,
    /// How long a source address that used up `max_failed_attempts` is refused for that token.
    #[serde(default = "defaults::failed_lockout", with = "humantime_serde")]
    pub failed_lockout: Duration,
    /// Wrong tokens from all addresses together after which the token is burnt and a new one
    /// must be created: a bound on guesses however many addresses a guesser uses.
    #[serde(default = "defaults::burn_after_failed")]
    pub burn_after_failed: NonZeroU32,
    /// How long a certificate replaced by a renewal is still accepted (MQTT, renewal), so a
    /// device can switch over or retry a renewal whose answer it lost. `0s`: refused at once.
    #[serde(default = "defaults::superseded_grace", with = "humantime_serde")]
    pub superseded_grace: Duration,
    /// How long each CRL the gateway publishes (`GET /crl` on this listener) is valid: its
    /// nextUpdate is its thisUpdate plus this. A new CRL is signed at every revocation and when
    /// half of this has passed.
    #[serde(default = "defaults::crl_validity", with = "humantime_serde")]
    pub crl_validity: Duration,
    /// Largest request body accepted; larger requests get 413.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: NonZeroUsize,
    /// Requests one source address may make per minute before getting 429.
    #[serde(default = "defaults::rate_per_minute")]
    pub rate_per_minute: NonZeroU32,
    /// Requests one source address may make in a burst above the per-minute rate.
    #[serde(default = "defaults::rate_burst")]
    pub rate_burst: NonZeroU32,
    /// Time allowed for a client to finish the TLS handshake.
    #[serde(default = "defaults::handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Connections served at once. When all are taken, the oldest unfinished TLS handshake is
    /// dropped to make room; one source address may hold at most half of them.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: NonZeroUsize,
}

impl Default for EnrollConfig {
    fn default() -> Self {
        EnrollConfig {
            enabled: defaults::enabled(),
            listen: defaults::enroll_listen(),
            cert_validity: defaults::cert_validity(),
            cert_backdate: defaults::cert_backdate(),
            server_cert_validity: defaults::server_cert_validity(),
            token_ttl: defaults::token_ttl(),
            max_failed_attempts: defaults::max_failed_attempts(),
            failed_lockout: defaults::failed_lockout(),
            burn_after_failed: defaults::burn_after_failed(),
            superseded_grace: defaults::superseded_grace(),
            crl_validity: defaults::crl_validity(),
            max_body_bytes: defaults::max_body_bytes(),
            rate_per_minute: defaults::rate_per_minute(),
            rate_burst: defaults::rate_burst(),
            handshake_timeout: defaults::handshake_timeout(),
            max_connections: defaults::max_connections(),
        }
    }
}

mod defaults {
    use super::*;

    pub fn enabled() -> bool {
        true
    }
    pub fn enroll_listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 8443))
    }
    pub fn cert_validity() -> Duration {
        Duration::from_secs(30 * 24 * 3600)
    }
    pub fn cert_backdate() -> Duration {
        Duration::from_secs(3600)
    }
    pub fn server_cert_validity() -> Duration {
        Duration::from_secs(398 * 24 * 3600)
    }
    pub fn token_ttl() -> Duration {
        Duration::from_secs(3600)
    }
    pub fn max_failed_attempts() -> NonZeroU32 {
        NonZeroU32::new(5).expect("5 is not zero")
    }
    pub fn failed_lockout() -> Duration {
        Duration::from_secs(15 * 60)
    }
    pub fn burn_after_failed() -> NonZeroU32 {
        NonZeroU32::new(1000).expect("1000 is not zero")
    }
    pub fn superseded_grace() -> Duration {
        Duration::from_secs(5 * 60)
    }
    pub fn crl_validity() -> Duration {
        Duration::from_secs(24 * 3600)
    }
    pub fn max_body_bytes() -> NonZeroUsize {
        NonZeroUsize::new(64 * 1024).expect("64 KiB is not zero")
    }
    pub fn rate_per_minute() -> NonZeroU32 {
        NonZeroU32::new(60).expect("60 is not zero")
    }
    pub fn rate_burst() -> NonZeroU32 {
        NonZeroU32::new(30).expect("30 is not zero")
    }
    pub fn handshake_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn max_connections() -> NonZeroUsize {
        NonZeroUsize::new(64).expect("64 is not zero")
    }
}
