//! `[alerts]`: how alerts reach people.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::notify::email::{SmtpSecurity, SmtpUrl};
use super::notify::webhook::WebhookUrl;
use crate::error::ConfigError;

/// `[alerts]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// An alert nobody acknowledged this long after it was raised is escalated: the second
    /// contact list is notified.
    #[serde(default = "defaults::escalate_after", with = "humantime_serde")]
    pub escalate_after: Duration,
    /// Access flags fold: while an access flag of a device is open (not yet acknowledged), the
    /// same flag again only counts an occurrence on it. Its channels hear of the new
    /// occurrences at most this often (a `repeated` notification), besides its escalation.
    #[serde(default = "defaults::flag_digest_every", with = "humantime_serde")]
    pub flag_digest_every: Duration,
    /// E-mail over SMTP.
    pub email: Option<EmailConfig>,
    /// HTTPS POST of signed JSON.
    pub webhook: Option<WebhookConfig>,
    /// Buzzer, relay and LED on the Raspberry Pi's GPIO.
    pub gpio: Option<GpioConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            escalate_after: defaults::escalate_after(),
            flag_digest_every: defaults::flag_digest_every(),
            email: None,
            webhook: None,
            gpio: None,
        }
    }
}

/// `[alerts.email]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server: `smtp://host:port` (plain, for a relay on loopback or the LAN),
    /// `smtp://host:587?tls=required` (STARTTLS) or `smtps://host:465` (TLS from the start).
    /// A user name may go in the URL (`smtp://alerts%40example.org@host:587?tls=required`), its
    /// password in `password_file`; `user:password@` in the URL works but leaves the password in
    /// the config file.
    pub smtp_url: String,
    /// File holding the SMTP password (surrounding whitespace ignored), for the user in
    /// `smtp_url`. Keep it mode 0600, owned by the gateway's user.
    pub password_file: Option<PathBuf>,
    /// Sender, `alerts@example.org` or `"rxgate store-0042" <alerts@example.org>`.
    pub from: String,
    /// Who gets every notification.
    pub to: Vec<String>,
    /// Who else gets escalated notifications (alerts nobody acknowledged in time).
    #[serde(default)]
    pub escalation_to: Vec<String>,
    /// CA certificate(s) (PEM) that verify a private SMTP server; by default the system's
    /// trusted roots.
    pub ca_file: Option<PathBuf>,
    /// Limit for delivering one message, connection and TLS handshake included.
    #[serde(default = "defaults::email_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// Never prints the password an `smtp_url` may carry.
impl fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailConfig")
            .field("smtp_url", &SmtpUrl::redact(&self.smtp_url))
            .field("password_file", &self.password_file)
            .field("from", &self.from)
            .field("to", &self.to)
            .field("escalation_to", &self.escalation_to)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `[alerts.webhook]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where notifications are POSTed: `https://...`; `http://` only to a loopback address
    /// (tests, a local relay).
    pub url: String,
    /// File holding the HMAC-SHA256 key that signs every request (its content, surrounding
    /// whitespace ignored, at least 16 bytes; `openssl rand -hex 32` makes a good one). The
    /// receiver holds the same key. Read when the gateway starts.
    pub secret_file: PathBuf,
    /// CA certificate(s) (PEM) that verify the receiver; by default the system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// Limit for one request, connection and TLS handshake included.
    #[serde(default = "defaults::webhook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// `[alerts.gpio]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioConfig {
    /// `pi` drives the Raspberry Pi's pins (needs a build with `--features pi`); `fake` only
    /// logs and records what the outputs would do. Default: `pi` in a build with the feature,
    /// else `fake`.
    #[serde(default)]
    pub backend: GpioBackend,
    /// BCM number (0–27) of the buzzer's pin: on while an active alarm is unacknowledged.
    pub buzzer_pin: Option<u8>,
    /// BCM number of the relay's pin (to a remote alarm, a dialler): on while a critical
    /// alarm is active.
    pub relay_pin: Option<u8>,
    /// BCM number of the LED's pin: on while any alert is unresolved.
    pub led_pin: Option<u8>,
    /// The buzzer sounds when its pin is low (boards that sink current).
    #[serde(default)]
    pub buzzer_active_low: bool,
    /// The relay closes when its pin is low (most opto-isolated relay boards).
    #[serde(default)]
    pub relay_active_low: bool,
    /// The LED lights when its pin is low.
    #[serde(default)]
    pub led_active_low: bool,
    /// `steady`, or `intermittent`: on and off for `buzzer_interval` each, which people notice
    /// and do not tune out as easily.
    #[serde(default)]
    pub buzzer_pattern: BuzzerPattern,
    /// On and off time of an `intermittent` buzzer.
    #[serde(default = "defaults::buzzer_interval", with = "humantime_serde")]
    pub buzzer_interval: Duration,
}

/// `[alerts.gpio].backend`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpioBackend {
    Pi,
    Fake,
}

impl Default for GpioBackend {
    fn default() -> Self {
        if cfg!(feature = "pi") {
            GpioBackend::Pi
        } else {
            GpioBackend::Fake
        }
    }
}

/// `[alerts.gpio].buzzer_pattern`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuzzerPattern {
    Steady,
    #[default]
    Intermittent,
}

/// Highest BCM GPIO number on a Raspberry Pi's 40-pin header.
pub const MAX_BCM_PIN: u8 = 27;

impl AlertsConfig {
    /// Makes relative file names relative to `base`, the config file's folder.
    pub fn resolve_paths(&mut self, base: &Path) {
        let email = self.email.as_mut().into_iter().flat_map(|e| {
            [e.password_file.as_mut(), e.ca_file.as_mut()]
                .into_iter()
                .flatten()
        });
        let webhook = self.webhook.as_mut().into_iter().flat_map(|w| {
            [Some(&mut w.secret_file), w.ca_file.as_mut()]
                .into_iter()
                .flatten()
        });
        for path in email.chain(webhook) {
            *path = base.join(&*path);
        }
    }

    /// Checks `[alerts.email]`, `[alerts.webhook]` and `[alerts.gpio]`, adding one error per
    /// problem, each naming its key and value. Reads the files they name (no other I/O).
    pub fn check(&self, errors: &mut Vec<ConfigError>) {
        if let Some(email) = &self.email {
            email.check(errors);
        }
        if let Some(webhook) = &self.webhook {
            webhook.check(errors);
        }
        if let Some(gpio) = &self.gpio {
            gpio.check(errors);
        }
    }
}

impl EmailConfig {
    fn check(&self, errors: &mut Vec<ConfigError>) {
        match SmtpUrl::parse(&self.smtp_url) {
            Err(message) => errors.push(ConfigError::new(
                "alerts.email.smtp_url",
                quoted(&SmtpUrl::redact(&self.smtp_url)),
                message,
            )),
            Ok(url) => {
                if self.password_file.is_some() {
                    if url.user.is_none() {
                        errors.push(missing(
                            "alerts.email.password_file",
                            "needs a user name in smtp_url (smtp://USER@host...)",
                        ));
                    }
                    if url.password.is_some() {
                        errors.push(missing(
                            "alerts.email.password_file",
                            "and a password in smtp_url are both set: keep only password_file",
                        ));
                    }
                }
                let has_password = url.password.is_some() || self.password_file.is_some();
                if has_password && url.security == SmtpSecurity::Plain && !url.is_loopback() {
                    errors.push(ConfigError::new(
                        "alerts.email.smtp_url",
                        quoted(&SmtpUrl::redact(&self.smtp_url)),
                        "would send the SMTP password unencrypted; use smtp://host:587?tls=required \
                         or smtps://host:465",
                    ));
                }
                if url.security == SmtpSecurity::Plain && self.ca_file.is_some() {
                    errors.push(missing(
                        "alerts.email.ca_file",
                        "is set but smtp_url uses no TLS; add ?tls=required or use smtps://",
                    ));
                }
            }
        }
        if let Err(e) = self.from.parse::<lettre::message::Mailbox>() {
            errors.push(ConfigError::new(
                "alerts.email.from",
                quoted(&self.from),
                format!("not an e-mail address: {e}"),
            ));
        }
        if self.to.is_empty() {
            errors.push(missing(
                "alerts.email.to",
                "is empty; list at least one address that gets the alerts",
            ));
        }
        for (key, list) in [
            ("alerts.email.to", &self.to),
            ("alerts.email.escalation_to", &self.escalation_to),
        ] {
            for address in list {
                if let Err(e) = address.parse::<lettre::message::Mailbox>() {
                    errors.push(ConfigError::new(
                        key,
                        quoted(address),
                        format!("not an e-mail address: {e}"),
                    ));
                }
            }
        }
        if let Some(path) = &self.password_file {
            check_secret_file("alerts.email.password_file", path, 1, errors);
        }
        if let Some(path) = &self.ca_file {
            check_ca_file("alerts.email.ca_file", path, errors);
        }
        check_timeout("alerts.email.timeout", self.timeout, errors);
    }
}

impl WebhookConfig {
    fn check(&self, errors: &mut Vec<ConfigError>) {
        if let Err(message) = WebhookUrl::parse(&self.url) {
            errors.push(ConfigError::new(
                "alerts.webhook.url",
                quoted(&self.url),
                message,
            ));
        }
        check_secret_file(
            "alerts.webhook.secret_file",
            &self.secret_file,
            MIN_WEBHOOK_SECRET,
            errors,
        );
        if let Some(path) = &self.ca_file {
            check_ca_file("alerts.webhook.ca_file", path, errors);
        }
        check_timeout("alerts.webhook.timeout", self.timeout, errors);
    }
}

/// Shortest HMAC key accepted, in bytes.
pub const MIN_WEBHOOK_SECRET: usize = 16;

impl GpioConfig {
    /// The `[alerts.gpio]` part of [`AlertsConfig::check`]; also run by `gpio::build`.
    pub(crate) fn check(&self, errors: &mut Vec<ConfigError>) {
        if self.backend == GpioBackend::Pi && !cfg!(feature = "pi") {
            errors.push(ConfigError::new(
                "alerts.gpio.backend",
                quoted("pi"),
                "this rxgate was built without GPIO support; build it with `--features pi` \
                 (the Raspberry Pi package is), or set backend = \"fake\"",
            ));
        }
        let pins = [
            ("alerts.gpio.buzzer_pin", self.buzzer_pin),
            ("alerts.gpio.relay_pin", self.relay_pin),
            ("alerts.gpio.led_pin", self.led_pin),
        ];
        for (i, (key, pin)) in pins.iter().enumerate() {
            let Some(pin) = *pin else { continue };
            if pin > MAX_BCM_PIN {
                errors.push(ConfigError::new(
                    *key,
                    pin,
                    format!("is not a GPIO of the 40-pin header; use a BCM number from 0 to {MAX_BCM_PIN}"),
                ));
            }
            if let Some((other, _)) = pins[..i].iter().find(|(_, p)| *p == Some(pin)) {
                errors.push(ConfigError::new(
                    *key,
                    pin,
                    format!("is also {other}; each output needs its own pin"),
                ));
            }
        }
        if self.buzzer_pattern == BuzzerPattern::Intermittent
            && !(Duration::from_millis(100)..=Duration::from_secs(10))
                .contains(&self.buzzer_interval)
        {
            errors.push(ConfigError::new(
                "alerts.gpio.buzzer_interval",
                quoted(&humantime::format_duration(self.buzzer_interval).to_string()),
                "must be between 100ms and 10s",
            ));
        }
    }

    /// The logical outputs that have a pin.
    pub fn wired(&self) -> impl Iterator<Item = (&'static str, u8, bool)> + '_ {
        [
            ("buzzer", self.buzzer_pin, self.buzzer_active_low),
            ("relay", self.relay_pin, self.relay_active_low),
            ("led", self.led_pin, self.led_active_low),
        ]
        .into_iter()
        .filter_map(|(name, pin, low)| pin.map(|pin| (name, pin, low)))
    }
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

fn missing(key: &str, message: &str) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        value: None,
        message: message.to_owned(),
    }
}

fn check_timeout(key: &str, value: Duration, errors: &mut Vec<ConfigError>) {
    if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&value) {
        errors.push(ConfigError::new(
            key,
            quoted(&humantime::format_duration(value).to_string()),
            "must be between 1s and 5m",
        ));
    }
}

/// The secret a file holds: its content without surrounding whitespace.
pub(crate) fn read_secret(path: &Path) -> std::io::Result<zeroize::Zeroizing<String>> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path)?);
    Ok(zeroize::Zeroizing::new(text.trim().to_owned()))
}

fn check_secret_file(key: &str, path: &Path, min_len: usize, errors: &mut Vec<ConfigError>) {
    let value = quoted(&path.display().to_string());
    match read_secret(path) {
        Err(e) => errors.push(ConfigError::new(key, value, format!("cannot be read: {e}"))),
        Ok(secret) if secret.len() < min_len => errors.push(ConfigError::new(
            key,
            value,
            if min_len > 1 {
                format!(
                    "holds {} bytes; the key must be at least {min_len} (make one with \
                     `openssl rand -hex 32`)",
                    secret.len()
                )
            } else {
                "is empty".to_owned()
            },
        )),
        Ok(_) => {}
    }
}

fn check_ca_file(key: &str, path: &Path, errors: &mut Vec<ConfigError>) {
    if let Err(e) = crate::tls::load_certs(path) {
        errors.push(ConfigError::new(
            key,
            quoted(&path.display().to_string()),
            e.to_string(),
        ));
    }
}

mod defaults {
    use std::time::Duration;

    pub fn escalate_after() -> Duration {
        Duration::from_secs(30 * 60)
    }

    pub fn flag_digest_every() -> Duration {
        Duration::from_secs(3600)
    }

    pub fn email_timeout() -> Duration {
        Duration::from_secs(30)
    }

    pub fn webhook_timeout() -> Duration {
        Duration::from_secs(10)
    }

    pub fn buzzer_interval() -> Duration {
        Duration::from_secs(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(toml: &str) -> Vec<ConfigError> {
        let config: AlertsConfig = toml::from_str(toml).unwrap_or_else(|e| panic!("{e}"));
        let mut errors = Vec::new();
        config.check(&mut errors);
        errors
    }

    fn keys(errors: &[ConfigError]) -> Vec<&str> {
        errors.iter().map(|e| e.key.as_str()).collect()
    }

    #[test]
    fn example_alerts_block_loads_and_passes_every_check() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/alerts.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut table: toml::Table = toml::from_str(&text).unwrap();
        let alerts = table.remove("alerts").unwrap();
        assert!(table.is_empty(), "only [alerts] belongs in the example");
        let mut config: AlertsConfig = alerts.try_into().unwrap();
        // The files it names are the operator's: made up here, in a stand-in config folder.
        let dir = tempfile::tempdir().unwrap();
        config.resolve_paths(dir.path());
        let email = config.email.clone().unwrap();
        let webhook = config.webhook.clone().unwrap();
        std::fs::write(email.password_file.unwrap(), "smtp password\n").unwrap();
        std::fs::write(&webhook.secret_file, "0123456789abcdef0123456789abcdef\n").unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.example".to_owned()]).unwrap();
        for ca_file in [email.ca_file.unwrap(), webhook.ca_file.unwrap()] {
            std::fs::write(ca_file, ca.cert.pem()).unwrap();
        }
        let mut errors = Vec::new();
        config.check(&mut errors);
        assert_eq!(errors, [], "{errors:#?}");
        assert_eq!(config.escalate_after, Duration::from_secs(30 * 60));
        assert_eq!(email.to.len(), 2);
        let gpio = config.gpio.unwrap();
        assert_eq!(gpio.backend, GpioBackend::default());
        assert_eq!(
            (gpio.buzzer_pin, gpio.relay_pin, gpio.led_pin),
            (Some(18), Some(23), Some(24))
        );
    }

    #[test]
    fn defaults_apply_to_omitted_keys() {
        let config: AlertsConfig = toml::from_str(
            "[email]\nsmtp_url = \"smtp://127.0.0.1\"\nfrom = \"a@b.example\"\nto = [\"c@d.example\"]\n\
             [webhook]\nurl = \"https://h.example/x\"\nsecret_file = \"k\"\n[gpio]\n",
        )
        .unwrap();
        let (email, webhook, gpio) = (
            config.email.unwrap(),
            config.webhook.unwrap(),
            config.gpio.unwrap(),
        );
        assert_eq!(email.timeout, Duration::from_secs(30));
        assert!(email.escalation_to.is_empty());
        assert_eq!(webhook.timeout, Duration::from_secs(10));
        assert_eq!(gpio.buzzer_pattern, BuzzerPattern::Intermittent);
        assert_eq!(gpio.buzzer_interval, Duration::from_secs(1));
        assert_eq!(
            gpio.backend,
            if cfg!(feature = "pi") {
                GpioBackend::Pi
            } else {
                GpioBackend::Fake
            }
        );
        assert!(!gpio.relay_active_low);
    }

    #[test]
    fn email_errors_name_each_key_and_value() {
        let errors = errors(
            r#"
            [email]
            smtp_url = "smtp://bob:hunter2@mail.example.org:25"
            from = "not an address"
            to = []
            escalation_to = ["ok@example.org", "@nope"]
            password_file = "/nonexistent/pw"
            ca_file = "/nonexistent/ca.pem"
            timeout = "0s"
            "#,
        );
        assert_eq!(
            keys(&errors),
            [
                "alerts.email.password_file",
                "alerts.email.smtp_url",
                "alerts.email.ca_file",
                "alerts.email.from",
                "alerts.email.to",
                "alerts.email.escalation_to",
                "alerts.email.password_file",
                "alerts.email.ca_file",
                "alerts.email.timeout",
            ],
            "{errors:#?}"
        );
        let smtp = &errors[1];
        assert_eq!(
            smtp.value.as_deref(),
            Some("\"smtp://bob:***@mail.example.org:25\"")
        );
        assert!(smtp.message.contains("unencrypted"), "{smtp}");
        assert_eq!(errors[5].value.as_deref(), Some("\"@nope\""));
        assert!(errors.iter().all(|e| !e.to_string().contains("hunter2")));
    }

    #[test]
    fn smtp_url_errors_say_what_is_expected() {
        let errors = errors(
            "[email]\nsmtp_url = \"http://mail.example.org\"\nfrom = \"a@b.example\"\nto = [\"c@d.example\"]\n",
        );
        assert_eq!(keys(&errors), ["alerts.email.smtp_url"]);
        assert!(errors[0].message.contains("smtp://"), "{}", errors[0]);
    }

    #[test]
    fn a_password_over_plain_smtp_is_fine_only_on_loopback() {
        let errors = errors(
            "[email]\nsmtp_url = \"smtp://bob:pw@127.0.0.1:25\"\nfrom = \"a@b.example\"\nto = [\"c@d.example\"]\n",
        );
        assert_eq!(errors, []);
    }

    #[test]
    fn webhook_errors_name_each_key_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, "tooshort\n").unwrap();
        let errors = errors(&format!(
            "[webhook]\nurl = \"http://hooks.example.org/rxgate\"\nsecret_file = \"{}\"\n\
             ca_file = \"{}\"\n",
            short.display(),
            dir.path().join("missing.pem").display()
        ));
        assert_eq!(
            keys(&errors),
            [
                "alerts.webhook.url",
                "alerts.webhook.secret_file",
                "alerts.webhook.ca_file"
            ],
            "{errors:#?}"
        );
        assert!(errors[0].message.contains("https://"));
        assert!(errors[1].message.contains("at least 16"), "{}", errors[1]);
    }

    #[test]
    fn gpio_pins_must_exist_and_be_distinct() {
        let errors = errors(
            "[gpio]\nbackend = \"fake\"\nbuzzer_pin = 18\nrelay_pin = 40\nled_pin = 18\nbuzzer_interval = \"20s\"\n",
        );
        assert_eq!(
            keys(&errors),
            [
                "alerts.gpio.relay_pin",
                "alerts.gpio.led_pin",
                "alerts.gpio.buzzer_interval"
            ],
            "{errors:#?}"
        );
        assert_eq!(errors[0].value.as_deref(), Some("40"));
        assert!(errors[1].message.contains("alerts.gpio.buzzer_pin"));
    }

    #[test]
    fn gpio_pi_backend_needs_the_pi_feature() {
        let errors = errors("[gpio]\nbackend = \"pi\"\nbuzzer_pin = 18\n");
        if cfg!(feature = "pi") {
            assert_eq!(errors, []);
        } else {
            assert_eq!(keys(&errors), ["alerts.gpio.backend"]);
            assert!(errors[0].message.contains("--features pi"));
        }
    }

    #[test]
    fn relative_files_resolve_against_the_config_folder() {
        let mut config: AlertsConfig = toml::from_str(
            "[email]\nsmtp_url = \"smtps://h\"\nfrom = \"a@b.example\"\nto = [\"c@d.example\"]\n\
             ca_file = \"smtp-ca.pem\"\npassword_file = \"/abs/pw\"\n\
             [webhook]\nurl = \"https://h.example/x\"\nsecret_file = \"webhook.key\"\n",
        )
        .unwrap();
        config.resolve_paths(Path::new("/etc/rxgate"));
        let email = config.email.unwrap();
        assert_eq!(email.ca_file.unwrap(), Path::new("/etc/rxgate/smtp-ca.pem"));
        assert_eq!(email.password_file.unwrap(), Path::new("/abs/pw"));
        assert_eq!(
            config.webhook.unwrap().secret_file,
            Path::new("/etc/rxgate/webhook.key")
        );
    }

    #[test]
    fn debug_output_never_shows_the_smtp_password() {
        let config: AlertsConfig = toml::from_str(
            "[email]\nsmtp_url = \"smtps://bob:hunter2@h\"\nfrom = \"a@b.example\"\nto = [\"c@d.example\"]\n",
        )
        .unwrap();
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("bob:***@h"),
            "{debug}"
        );
    }
}
