//! E-mail over SMTP (`[alerts.email]`), with lettre's SMTP connection driven one command at a
//! time, so each recipient's answer is known: a recipient the server refuses for good is skipped
//! (and logged), a message every recipient is refused for is dropped, and anything transient
//! (connection, TLS, authentication, 4xx, a 5xx to anything but RCPT) is retried by the worker.
//!
//! Each notification is one message to `to` (plus `escalation_to` when it is an escalation),
//! plain text, with a `Message-ID` derived from the notification: a message sent twice (the
//! worker delivers at least once) carries the same id, which mail clients fold into one. Every
//! message about one alert references the same id, so clients thread them.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, Certificate, CertificateStore, TlsParameters,
};
use lettre::transport::smtp::commands::{Data, Mail, Quit, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailParameter};
use zeroize::Zeroizing;

use super::{Deliver, DeliveryError, DeliveryFuture};
use crate::alerts::config::{EmailConfig, read_secret};
use crate::alerts::queue::Channel;
use crate::alerts::record::{Event, Notification};
use crate::clock::rfc3339_seconds;
use crate::coldchain::Severity;
use crate::error::{Error, Result};

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// `smtp://`: none (a relay on loopback or the LAN).
    Plain,
    /// `smtp://...?tls=required`: STARTTLS, refused if the server does not offer it.
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Implicit,
}

/// A parsed `smtp_url`.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpUrl {
    pub security: SmtpSecurity,
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpUrl")
            .field("security", &self.security)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl SmtpUrl {
    /// Parses `smtp://[user[:password]@]host[:port][?tls=required]` or `smtps://...`; user and
    /// password are percent-decoded. Default ports: 25 (plain), 587 (STARTTLS), 465 (smtps).
    pub fn parse(url: &str) -> std::result::Result<SmtpUrl, String> {
        let (implicit, rest) = if let Some(rest) = url.strip_prefix("smtps://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("smtp://") {
            (false, rest)
        } else {
            return Err(
                "must start with smtp:// (plain or ?tls=required for STARTTLS) or \
                        smtps:// (TLS)"
                    .to_owned(),
            );
        };
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let security = match (implicit, query) {
            (true, None) => SmtpSecurity::Implicit,
            (false, None) => SmtpSecurity::Plain,
            (false, Some("tls=required")) => SmtpSecurity::StartTls,
            (true, Some(_)) => {
                return Err("smtps:// is TLS already; drop the `?...` part".to_owned());
            }
            (false, Some(_)) => {
                return Err("the only option is ?tls=required (STARTTLS)".to_owned());
            }
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err("must be scheme://host[:port] with no path".to_owned());
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(userinfo) => {
                let (user, password) = match userinfo.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (userinfo, None),
                };
                let user = percent_decode(user).ok_or("the user name is badly percent-encoded")?;
                if user.is_empty() {
                    return Err("the user name before '@' is empty".to_owned());
                }
                let password = match password {
                    Some(p) => Some(Zeroizing::new(
                        percent_decode(p).ok_or("the password is badly percent-encoded")?,
                    )),
                    None => None,
                };
                (Some(user), password)
            }
        };
        let default_port = match security {
            SmtpSecurity::Plain => 25,
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::Implicit => 465,
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or("unclosed '[' in the host")?;
            let port = match after {
                "" => default_port,
                _ => parse_port(after.strip_prefix(':').ok_or("junk after ']'")?)?,
            };
            (host, port)
        } else {
            match hostport.split_once(':') {
                Some((host, port)) => (host, parse_port(port)?),
                None => (hostport, default_port),
            }
        };
        if host.is_empty() {
            return Err("names no host".to_owned());
        }
        Ok(SmtpUrl {
            security,
            host: host.to_owned(),
            port,
            user,
            password,
        })
    }

    /// `url` with any password replaced by `***`, for messages and logs.
    pub fn redact(url: &str) -> String {
        let Some((scheme, rest)) = url.split_once("://") else {
            return url.to_owned();
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        match rest[..end].rsplit_once('@') {
            Some((userinfo, _)) if userinfo.contains(':') => {
                let user = userinfo.split(':').next().unwrap_or_default();
                let at = userinfo.len();
                format!("{scheme}://{user}:***{}", &rest[at..])
            }
            _ => url.to_owned(),
        }
    }

    /// Whether the server is on this machine (where a plain connection carries no risk).
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

fn parse_port(port: &str) -> std::result::Result<u16, String> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("port {port:?} is not a number between 1 and 65535")),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Delivers notifications by e-mail.
pub struct EmailDeliverer {
    site: String,
    url: SmtpUrl,
    credentials: Option<Credentials>,
    tls: Option<TlsParameters>,
    hello: ClientId,
    from: Mailbox,
    to: Vec<Mailbox>,
    escalation_to: Vec<Mailbox>,
    timeout: Duration,
    /// The console's address (`https://host:port`), for links to each alert's page.
    console: Option<String>,
}

impl std::fmt::Debug for EmailDeliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailDeliverer")
            .field("url", &self.url)
            .field("from", &self.from)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

impl EmailDeliverer {
    /// Reads `password_file` and `ca_file`, and checks what `rxgate config check` checks.
    /// `site` goes into every subject.
    pub fn build(config: &EmailConfig, site: &str) -> Result<EmailDeliverer> {
        let invalid =
            |key: &str, message: String| Error::Invalid(format!("alerts.email.{key}: {message}"));
        let url = SmtpUrl::parse(&config.smtp_url).map_err(|m| {
            invalid(
                "smtp_url",
                format!("{:?} {m}", SmtpUrl::redact(&config.smtp_url)),
            )
        })?;
        let password = match (&config.password_file, &url.password) {
            (Some(path), _) => Some(
                read_secret(path)
                    .map_err(|e| invalid("password_file", format!("{}: {e}", path.display())))?,
            ),
            (None, Some(password)) => Some(password.clone()),
            (None, None) => None,
        };
        let credentials = match (&url.user, password) {
            (Some(user), Some(password)) => {
                Some(Credentials::new(user.clone(), password.to_string()))
            }
            (Some(_), None) => {
                return Err(invalid(
                    "password_file",
                    "smtp_url names a user but no password is given; set password_file".to_owned(),
                ));
            }
            (None, _) => None,
        };
        let tls = match url.security {
            SmtpSecurity::Plain => None,
            SmtpSecurity::StartTls | SmtpSecurity::Implicit => {
                Some(tls_parameters(&url.host, config.ca_file.as_deref())?)
            }
        };
        let mailbox = |key: &str, s: &str| {
            s.parse::<Mailbox>()
                .map_err(|e| invalid(key, format!("{s:?} is not an e-mail address: {e}")))
        };
        let from = mailbox("from", &config.from)?;
        let to = config
            .to
            .iter()
            .map(|s| mailbox("to", s))
            .collect::<Result<Vec<_>>>()?;
        if to.is_empty() {
            return Err(invalid("to", "is empty".to_owned()));
        }
        let escalation_to = config
            .escalation_to
            .iter()
            .map(|s| mailbox("escalation_to", s))
            .collect::<Result<Vec<_>>>()?;
        Ok(EmailDeliverer {
            site: site.to_owned(),
            url,
            credentials,
            tls,
            hello: hello_name(),
            from,
            to,
            escalation_to,
            timeout: config.timeout,
            console: None,
        })
    }

    /// Links every message to its alert's page in the console at `base` (`https://host:port`).
    pub fn with_console(mut self, base: &str) -> EmailDeliverer {
        self.console = Some(base.trim_end_matches('/').to_owned());
        self
    }

    /// Who gets `n`: `to`, and for an escalation `escalation_to` too, each once.
    pub fn recipients(&self, n: &Notification) -> Vec<Mailbox> {
        let mut all = self.to.clone();
        if n.escalation {
            for m in &self.escalation_to {
                if !all.iter().any(|a| a.email == m.email) {
                    all.push(m.clone());
                }
            }
        }
        all
    }

    /// The message for `n`.
    pub fn message(&self, n: &Notification) -> std::result::Result<Message, String> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject(&self.site, n))
            .message_id(Some(message_id(&self.site, n)))
            .header(ContentType::TEXT_PLAIN)
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("References"),
                thread_id(&self.site, n),
            ))
            // RFC 3834: no out-of-office replies to alarms.
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("Auto-Submitted"),
                "auto-generated".to_owned(),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("X-Rxgate-Alert"),
                n.alert.id.to_string(),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("X-Rxgate-Event"),
                n.event.as_str().to_owned(),
            ));
        for to in self.recipients(n) {
            builder = builder.to(to);
        }
        builder
            .body(body(&self.site, n, self.console.as_deref()))
            .map_err(|e| format!("cannot compose the message: {e}"))
    }

    async fn send(&self, n: &Notification) -> std::result::Result<(), DeliveryError> {
        let message = self.message(n).map_err(DeliveryError::Drop)?;
        let implicit = match self.url.security {
            SmtpSecurity::Implicit => self.tls.clone(),
            _ => None,
        };
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            (self.url.host.as_str(), self.url.port),
            Some(self.timeout),
            &self.hello,
            implicit,
            None,
        )
        .await
        .map_err(|e| retry(&self.url, "cannot connect", &e))?;
        let result = self.transaction(&mut conn, &message).await;
        if conn.has_broken() {
            conn.abort().await;
        } else {
            let _ = conn.command(Quit).await;
        }
        result
    }

    async fn transaction(
        &self,
        conn: &mut AsyncSmtpConnection,
        message: &Message,
    ) -> std::result::Result<(), DeliveryError> {
        if self.url.security == SmtpSecurity::StartTls {
            let Some(tls) = self.tls.clone() else {
                return Err(DeliveryError::Retry("no TLS parameters".to_owned()));
            };
            if !conn.can_starttls() {
                return Err(DeliveryError::Retry(format!(
                    "{}:{} does not offer STARTTLS, which smtp_url requires (?tls=required)",
                    self.url.host, self.url.port
                )));
            }
            conn.starttls(tls, &self.hello)
                .await
                .map_err(|e| retry(&self.url, "STARTTLS failed", &e))?;
        }
        if let Some(credentials) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(|e| retry(&self.url, "authentication failed", &e))?;
        }
        let envelope = message.envelope();
        let mut params = Vec::new();
        let non_ascii = envelope
            .from()
            .into_iter()
            .chain(envelope.to())
            .any(|a: &lettre::Address| !AsRef::<str>::as_ref(a).is_ascii());
        if non_ascii {
            if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
                return Err(DeliveryError::Drop(
                    "an address is not ASCII and the server does not support SMTPUTF8".to_owned(),
                ));
            }
            params.push(MailParameter::SmtpUtfEight);
        }
        conn.command(Mail::new(envelope.from().cloned(), params))
            .await
            .map_err(|e| retry(&self.url, "MAIL FROM refused", &e))?;
        let mut accepted = 0;
        let mut refused = Vec::new();
        for to in envelope.to() {
            match conn.command(Rcpt::new(to.clone(), vec![])).await {
                Ok(_) => accepted += 1,
                Err(e) if e.is_permanent() => {
                    tracing::warn!(recipient = %to, error = %e, "SMTP server refuses a recipient for good; skipping it.");
                    refused.push(format!("{to}: {e}"));
                }
                Err(e) => return Err(retry(&self.url, &format!("RCPT TO {to}"), &e)),
            }
        }
        if accepted == 0 {
            return Err(DeliveryError::Drop(format!(
                "the SMTP server refuses every recipient: {}",
                refused.join("; ")
            )));
        }
        conn.command(Data)
            .await
            .map_err(|e| retry(&self.url, "DATA refused", &e))?;
        conn.message(&message.formatted())
            .await
            .map_err(|e| retry(&self.url, "message refused", &e))?;
        Ok(())
    }
}

impl Deliver for EmailDeliverer {
    fn time_limit(&self) -> Option<Duration> {
        Some(self.timeout)
    }

    fn channel(&self) -> Channel {
        Channel::Email
    }

    fn deliver<'a>(&'a self, n: &'a Notification) -> DeliveryFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.send(n)).await {
                Ok(result) => result,
                Err(_) => Err(DeliveryError::Retry(format!(
                    "no answer from {}:{} within {}",
                    self.url.host,
                    self.url.port,
                    humantime::format_duration(self.timeout)
                ))),
            }
        })
    }
}

fn retry(url: &SmtpUrl, what: &str, e: &lettre::transport::smtp::Error) -> DeliveryError {
    DeliveryError::Retry(format!("{}:{}: {what}: {e}", url.host, url.port))
}

fn tls_parameters(host: &str, ca_file: Option<&Path>) -> Result<TlsParameters> {
    let mut builder = TlsParameters::builder(host.to_owned());
    if let Some(path) = ca_file {
        builder = builder.certificate_store(CertificateStore::None);
        for cert in crate::tls::load_certs(path)? {
            let cert = Certificate::from_der(cert.to_vec()).map_err(|e| {
                Error::Invalid(format!("alerts.email.ca_file: {}: {e}", path.display()))
            })?;
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build_rustls()
        .map_err(|e| Error::Invalid(format!("alerts.email: cannot set up TLS for {host}: {e}")))
}

/// The name the gateway gives in EHLO: its host name when that is a DNS name.
fn hello_name() -> ClientId {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    let dns = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if dns {
        ClientId::Domain(name.to_owned())
    } else {
        ClientId::Domain("localhost".to_owned())
    }
}

fn severity_word(severity: Severity) -> &'static str {
    match severity {
        Severity::Warning => "WARNING",
        Severity::Critical => "CRITICAL",
    }
}

/// `[rxgate store-0042] CRITICAL fridge-01: temperature at or below 0.0 °C (freezing) since …`
pub fn subject(site: &str, n: &Notification) -> String {
    let severity = severity_word(n.alert.severity);
    let what = match n.event {
        Event::Raised => severity.to_owned(),
        Event::Worsened => format!("{severity} (worse)"),
        Event::Repeated => format!("{severity} REPEATED ×{}", n.alert.occurrences),
        Event::Escalated => format!("ESCALATED {severity}"),
        Event::Acknowledged => "ACKNOWLEDGED".to_owned(),
        Event::Cleared => "CLEARED".to_owned(),
    };
    format!("[rxgate {site}] {what} {}", n.alert.headline())
}

fn temperature(v: f64) -> String {
    format!("{v:.1} °C")
}

/// The plain-text body: what happened, the facts an inspector asks for, and what to do; with
/// `console` (its `https://host:port`), a link to the alert's page there.
pub fn body(site: &str, n: &Notification, console: Option<&str>) -> String {
    let a = &n.alert;
    let mut out = String::new();
    let intro = match n.event {
        Event::Raised => "A cold-chain alert was raised",
        Event::Worsened => "A cold-chain alert got worse",
        Event::Repeated => "An open alert was raised again, more than once",
        Event::Escalated => "A cold-chain alert has not been acknowledged in time",
        Event::Acknowledged => "A cold-chain alert was acknowledged",
        Event::Cleared => "The condition of a cold-chain alert is over",
    };
    let _ = writeln!(out, "{intro} at {site}:\n\n  {}\n", a.headline());
    let mut field = |name: &str, value: String| {
        let _ = writeln!(out, "{:<16}{value}", format!("{name}:"));
    };
    field("Event", n.event.as_str().to_owned());
    field("Device", a.device.clone());
    field("Kind", a.kind.as_str().to_owned());
    field("Severity", severity_word(a.severity).to_lowercase());
    if let Some(value) = a.value {
        let limit = a
            .limit
            .map(|l| format!(" (limit {})", temperature(l)))
            .unwrap_or_default();
        field("Value", format!("{}{limit}", temperature(value)));
    }
    match (a.low, a.high) {
        (Some(low), Some(high)) => field(
            "Allowed range",
            format!("{} to {}", temperature(low), temperature(high)),
        ),
        (Some(low), None) => field("Allowed range", format!("at least {}", temperature(low))),
        (None, Some(high)) => field("Allowed range", format!("at most {}", temperature(high))),
        (None, None) => {}
    }
    field("Started", rfc3339_seconds(a.started));
    if let Some(ended) = a.ended {
        field("Ended", rfc3339_seconds(ended));
        let seconds = (ended - a.started).whole_seconds().max(0).unsigned_abs();
        field(
            "Duration",
            humantime::format_duration(Duration::from_secs(seconds)).to_string(),
        );
    }
    if n.event == Event::Cleared || a.ended.is_some() {
        for (name, value) in [("Minimum", a.min), ("Maximum", a.max), ("MKT", a.mkt)] {
            if let Some(v) = value {
                field(name, temperature(v));
            }
        }
    }
    field(
        "State",
        format!(
            "{}{}",
            a.state.as_str(),
            if a.active {
                " (condition present)"
            } else {
                " (condition over)"
            }
        ),
    );
    if a.occurrences > 1 {
        let last = a
            .last_at
            .map(|t| format!(", the latest at {}", rfc3339_seconds(t)))
            .unwrap_or_default();
        field(
            "Occurrences",
            format!(
                "{} since {}{last}",
                a.occurrences,
                rfc3339_seconds(a.started)
            ),
        );
    }
    if let Some(at) = a.escalated_at {
        field("Escalated", rfc3339_seconds(at));
    }
    if let Some(by) = &a.acknowledged_by {
        let at = a
            .acknowledged_at
            .map(|t| format!(" at {}", rfc3339_seconds(t)))
            .unwrap_or_default();
        field("Acknowledged", format!("by {by}{at}"));
        if let Some(note) = &a.ack_note {
            field("Action taken", note.clone());
        }
    }
    field("Alert id", a.id.to_string());
    field("Reported", rfc3339_seconds(n.at));
    if !n.clock_synced {
        let _ = writeln!(
            out,
            "\nNote: the gateway's clock was not synchronised when this was reported; the \
             times above may be off."
        );
    }
    let _ = writeln!(out, "\nWhat to do:");
    let cli = format!("  rxgate alerts ack {} --note \"what you did\"", a.id);
    // The console is where a pharmacist signs; the command line stays for the gateway's admin.
    let (ack, place) = match console {
        Some(base) => (
            format!(
                "  {base}/alerts/{}/ack\n\nor on the gateway's command line:\n\n{cli}",
                a.id
            ),
            "in the console (you sign with your password and a new code)",
        ),
        None => (cli, "on the gateway"),
    };
    if a.acknowledged_at.is_some() {
        let _ = writeln!(
            out,
            "Nothing more: {} has taken charge. The excursion is kept in the gateway's records \
             (`rxgate alerts list`).",
            a.acknowledged_by.as_deref().unwrap_or("someone")
        );
    } else if a.active {
        let _ = writeln!(
            out,
            "Check {} and the medicines in it now (door, power, setting; move stock to a \
             working fridge if needed and set it aside until its use is assessed). Then \
             acknowledge the alert with the action you took, {place}:\n\n{ack}",
            a.device
        );
    } else {
        let _ = writeln!(
            out,
            "The condition is over, but nobody has acknowledged the alert. Assess the stock \
             that was exposed, then record what you did, {place}:\n\n{ack}"
        );
    }
    if let (Some(base), Some(_)) = (console, a.acknowledged_at) {
        let _ = writeln!(
            out,
            "\nThe alert in the console: {base}/alerts#alert-{}",
            a.id
        );
    }
    let _ = writeln!(out, "\n-- \nrxgate at {site}");
    out
}

fn message_id(site: &str, n: &Notification) -> String {
    format!(
        "<{}.{}.{}@{site}.rxgate>",
        n.alert.id,
        n.event.as_str(),
        n.at.unix_timestamp_nanos()
    )
}

fn thread_id(site: &str, n: &Notification) -> String {
    format!("<{}@{site}.rxgate>", n.alert.id)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::alerts::config::EmailConfig;
    use crate::alerts::notify::tests::notification;
    use crate::alerts::record::AlertState;
    use crate::coldchain::AlertKind;

    fn config(toml: &str) -> EmailConfig {
        toml::from_str(toml).unwrap()
    }

    fn deliverer() -> EmailDeliverer {
        EmailDeliverer::build(
            &config(
                r#"
                smtp_url = "smtp://127.0.0.1:2525"
                from = "rxgate <alerts@pharmacy.example>"
                to = ["duty@pharmacy.example", "owner@pharmacy.example"]
                escalation_to = ["owner@pharmacy.example", "area-manager@chain.example"]
                "#,
            ),
            "store-0042",
        )
        .unwrap()
    }

    fn freezing() -> Notification {
        let mut n = notification("fridge-01");
        n.alert.kind = AlertKind::TemperatureLow;
        n.alert.severity = Severity::Critical;
        n.alert.value = None;
        n.alert.limit = Some(0.0);
        n
    }

    #[test]
    fn smtp_url_forms_and_default_ports() {
        let plain = SmtpUrl::parse("smtp://relay.lan").unwrap();
        assert_eq!(
            (plain.security, plain.host.as_str(), plain.port),
            (SmtpSecurity::Plain, "relay.lan", 25)
        );
        let starttls = SmtpUrl::parse("smtp://mail.example.org?tls=required").unwrap();
        assert_eq!(
            (starttls.security, starttls.port),
            (SmtpSecurity::StartTls, 587)
        );
        let implicit =
            SmtpUrl::parse("smtps://alerts%40example.org:p%3Ass@mail.example.org").unwrap();
        assert_eq!(
            (implicit.security, implicit.port),
            (SmtpSecurity::Implicit, 465)
        );
        assert_eq!(implicit.user.as_deref(), Some("alerts@example.org"));
        assert_eq!(
            implicit.password.as_deref().map(String::as_str),
            Some("p:ss")
        );
        let v6 = SmtpUrl::parse("smtp://[::1]:2525").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 2525));
        assert!(v6.is_loopback());
    }

    #[test]
    fn smtp_url_mistakes_are_explained() {
        for (url, expected) in [
            ("mailto:a@b", "must start with smtp://"),
            (
                "smtp://host?tls=opportunistic",
                "only option is ?tls=required",
            ),
            ("smtps://host?tls=required", "TLS already"),
            ("smtp://host:0", "port \"0\""),
            ("smtp://host:25/path", "no path"),
            ("smtp://", "no host"),
        ] {
            let e = SmtpUrl::parse(url).unwrap_err();
            assert!(e.contains(expected), "{url}: {e}");
        }
    }

    #[test]
    fn redaction_hides_only_the_password() {
        assert_eq!(
            SmtpUrl::redact("smtps://me:secret@mail.example.org:465"),
            "smtps://me:***@mail.example.org:465"
        );
        assert_eq!(
            SmtpUrl::redact("smtp://me@relay:25?tls=required"),
            "smtp://me@relay:25?tls=required"
        );
        assert!(
            !format!("{:?}", SmtpUrl::parse("smtps://me:secret@h").unwrap()).contains("secret")
        );
    }

    #[test]
    fn subject_reads_like_the_headline_with_site_and_severity() {
        assert_eq!(
            subject("store-0042", &freezing()),
            "[rxgate store-0042] CRITICAL fridge-01: temperature at or below 0.0 °C (freezing) since 2026-05-01T08:00:00Z"
        );
        let mut cleared = freezing();
        cleared.event = Event::Cleared;
        assert!(
            subject("store-0042", &cleared).starts_with("[rxgate store-0042] CLEARED fridge-01: ")
        );
        let mut escalated = notification("fridge-02");
        escalated.event = Event::Escalated;
        assert_eq!(
            subject("s1", &escalated),
            "[rxgate s1] ESCALATED WARNING fridge-02: temperature above 8.0 °C (9.4 °C) since 2026-05-01T08:00:00Z"
        );
    }

    #[test]
    fn raised_body_gives_the_facts_and_the_ack_command() {
        let n = notification("fridge-01");
        let body = body("store-0042", &n, None);
        for line in [
            "Event:          raised",
            "Device:         fridge-01",
            "Kind:           temperature_high",
            "Severity:       warning",
            "Value:          9.4 °C (limit 8.0 °C)",
            "Allowed range:  2.0 °C to 8.0 °C",
            "Started:        2026-05-01T08:00:00Z",
            "State:          raised (condition present)",
        ] {
            assert!(body.contains(line), "missing {line:?} in:\n{body}");
        }
        let ack = format!("rxgate alerts ack {} --note", n.alert.id);
        assert!(body.contains(&ack), "{body}");
        assert!(!body.contains("Ended:"));
        assert!(!body.contains("clock was not synchronised"));
    }

    #[test]
    fn cleared_body_has_end_duration_and_extremes() {
        let mut n = notification("fridge-01");
        n.event = Event::Cleared;
        n.alert.active = false;
        n.alert.ended = Some(datetime!(2026-05-01 09:42:10 UTC));
        n.alert.min = Some(8.1);
        n.alert.max = Some(11.26);
        n.alert.mkt = Some(9.87);
        n.clock_synced = false;
        let body = body("store-0042", &n, None);
        for line in [
            "Event:          cleared",
            "Ended:          2026-05-01T09:42:10Z",
            "Duration:       1h 42m 10s",
            "Minimum:        8.1 °C",
            "Maximum:        11.3 °C",
            "MKT:            9.9 °C",
            "State:          raised (condition over)",
            "nobody has acknowledged",
            "clock was not synchronised",
        ] {
            assert!(body.contains(line), "missing {line:?} in:\n{body}");
        }
    }

    #[test]
    fn acknowledged_body_says_who_and_what_was_done() {
        let mut n = notification("fridge-01");
        n.event = Event::Acknowledged;
        n.alert.state = AlertState::Acknowledged;
        n.alert.acknowledged_at = Some(datetime!(2026-05-01 08:50:00 UTC));
        n.alert.acknowledged_by = Some("Dr. Ana Silva".to_owned());
        n.alert.ack_note = Some("door was ajar; closed it, stock checked".to_owned());
        let body = body("store-0042", &n, None);
        for line in [
            "Acknowledged:   by Dr. Ana Silva at 2026-05-01T08:50:00Z",
            "Action taken:   door was ajar; closed it, stock checked",
            "Nothing more: Dr. Ana Silva has taken charge.",
        ] {
            assert!(body.contains(line), "missing {line:?} in:\n{body}");
        }
        assert!(!body.contains("rxgate alerts ack"));
        let linked = super::body("store-0042", &n, Some("https://gw.local:8444"));
        assert!(
            linked.contains(&format!(
                "The alert in the console: https://gw.local:8444/alerts#alert-{}",
                n.alert.id
            )),
            "{linked}"
        );
    }

    #[test]
    fn with_the_console_the_body_links_to_the_alerts_signing_page() {
        let n = notification("fridge-01");
        let body = body("store-0042", &n, Some("https://gw.local:8444"));
        assert!(
            body.contains(&format!(
                "  https://gw.local:8444/alerts/{}/ack\n",
                n.alert.id
            )),
            "{body}"
        );
        assert!(body.contains("in the console (you sign with your password and a new code)"));
        // The command line is still offered, after the link.
        let link = body.find("/ack\n").unwrap();
        let cli = body.find("rxgate alerts ack").unwrap();
        assert!(link < cli, "{body}");
    }

    #[test]
    fn escalations_also_go_to_the_escalation_list_each_address_once() {
        let d = deliverer();
        let addresses = |n: &Notification| -> Vec<String> {
            d.recipients(n)
                .iter()
                .map(|m| m.email.to_string())
                .collect()
        };
        let mut n = notification("fridge-01");
        assert_eq!(
            addresses(&n),
            ["duty@pharmacy.example", "owner@pharmacy.example"]
        );
        n.escalation = true;
        assert_eq!(
            addresses(&n),
            [
                "duty@pharmacy.example",
                "owner@pharmacy.example",
                "area-manager@chain.example"
            ]
        );
    }

    #[test]
    fn message_id_is_the_same_for_the_same_notification() {
        let d = deliverer();
        let n = freezing();
        let text = |m: Message| String::from_utf8(m.formatted()).unwrap();
        let (a, b) = (text(d.message(&n).unwrap()), text(d.message(&n).unwrap()));
        let id = |t: &str| {
            t.lines()
                .find(|l| l.starts_with("Message-ID:"))
                .map(str::to_owned)
        };
        assert!(id(&a).is_some());
        assert_eq!(id(&a), id(&b));
        assert!(
            a.contains(&format!("References: <{}@store-0042.rxgate>", n.alert.id)),
            "{a}"
        );
        assert!(a.contains("Auto-Submitted: auto-generated"));
        assert!(a.is_ascii(), "the formatted message must be 7-bit clean");
    }

    #[test]
    fn a_user_without_a_password_is_refused_at_build() {
        let e = EmailDeliverer::build(
            &config(
                r#"
                smtp_url = "smtps://me@mail.example.org"
                from = "alerts@pharmacy.example"
                to = ["duty@pharmacy.example"]
                "#,
            ),
            "s1",
        )
        .unwrap_err();
        assert!(e.to_string().contains("password_file"), "{e}");
    }
}
