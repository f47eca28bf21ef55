//! `[console]`: where the pharmacy console listens and how long its sessions last.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[console]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Whether the console listens at all. `false`: people use the CLI only; alert e-mails
    /// carry no console link.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// HTTPS address of the console. On the pharmacy's network by default: people use it from
    /// the counter's browser.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// PEM certificate chain the console presents; the gateway's server certificate when absent.
    /// Needs `key_file` too.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// A session unused this long ends; the person signs in again.
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A session ends this long after sign-in, however busy.
    #[serde(default = "default_absolute", with = "humantime_serde")]
    pub absolute_timeout: Duration,
    /// Whether demo accounts may sign in: set by `rxgate demo` only, never read from a file.
    #[serde(skip)]
    pub demo_accounts: bool,
}

fn default_enabled() -> bool {
    true
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], crate::people::CONSOLE_PORT))
}

fn default_idle() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_absolute() -> Duration {
    Duration::from_secs(12 * 3600)
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: default_enabled(),
            listen: default_listen(),
            cert_file: None,
            key_file: None,
            idle_timeout: default_idle(),
            absolute_timeout: default_absolute(),
            demo_accounts: false,
        }
    }
}

impl ConsoleConfig {
    /// Relative certificate paths are read from the config file's folder.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        for path in [&mut self.cert_file, &mut self.key_file]
            .into_iter()
            .flatten()
        {
            *path = base.join(&*path);
        }
    }

    /// Adds every problem of these values to `errors`, each naming its key.
    pub fn check(&self, errors: &mut Vec<crate::error::ConfigError>) {
        use crate::error::ConfigError;
        if self.cert_file.is_some() != self.key_file.is_some() {
            errors.push(ConfigError::new(
                if self.cert_file.is_some() { "console.key_file" } else { "console.cert_file" },
                "(missing)",
                "give both console.cert_file and console.key_file, or neither (the gateway's server certificate is used)",
            ));
        }
        if self.absolute_timeout.is_zero() {
            errors.push(ConfigError::new(
                "console.absolute_timeout",
                humantime::format_duration(self.absolute_timeout),
                "use a duration above zero, e.g. \"12h\"",
            ));
        }
        if self.idle_timeout.is_zero() || self.idle_timeout > self.absolute_timeout {
            errors.push(ConfigError::new(
                "console.idle_timeout",
                humantime::format_duration(self.idle_timeout),
                "use a duration above zero and at most console.absolute_timeout, e.g. \"15m\"",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ConsoleConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn an_empty_section_listens_on_8444_with_15_minute_idle_and_12_hour_sessions() {
        let c = parse("");
        assert_eq!(c.listen, "0.0.0.0:8444".parse().unwrap());
        assert_eq!(c.idle_timeout, Duration::from_secs(900));
        assert_eq!(c.absolute_timeout, Duration::from_secs(43200));
        assert_eq!((c.cert_file, c.key_file), (None, None));
    }

    #[test]
    fn a_certificate_without_its_key_and_an_idle_limit_beyond_the_absolute_one_are_named() {
        let c = parse("cert_file = \"c.pem\"\nidle_timeout = \"13h\"\n");
        let mut errors = Vec::new();
        c.check(&mut errors);
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(text[0].contains("console.key_file"), "{text:?}");
        assert!(
            text[1].contains("console.idle_timeout") && text[1].contains("13h"),
            "{text:?}"
        );
    }

    #[test]
    fn an_unknown_key_is_refused() {
        assert!(toml::from_str::<ConsoleConfig>("idle = \"1m\"").is_err());
    }
}
