//! Webhook (`[alerts.webhook]`): each notification is POSTed as JSON (the [`Notification`]
//! exactly as queued) over HTTPS, signed with HMAC-SHA256 under a key shared with the receiver.
//!
//! # The request
//!
//! ```text
//! POST <path of url> HTTP/1.1
//! Content-Type: application/json
//! X-Rxgate-Event: raised | worsened | escalated | acknowledged | cleared
//! X-Rxgate-Timestamp: <unix seconds when this attempt was sent>
//! X-Rxgate-Signature: sha256=<hex HMAC-SHA256(key, "<timestamp>." + body)>
//!
//! {"event":"raised","alert":{...},"escalation":false,"at":"...","clock_synced":true}
//! ```
//!
//! The answer decides what happens next: 2xx is delivered; 408, 429, 5xx, a redirect, a
//! connection or TLS failure or no answer within `timeout` is retried with backoff; any other
//! 4xx drops the notification (logged and counted), since sending it again would get the same
//! answer. Delivery is at least once: de-duplicate on (`alert.id`, `event`, `at`).
//!
//! # Verifying a request (receivers)
//!
//! 1. Take the raw body bytes as received, before any JSON parsing.
//! 2. Compute HMAC-SHA256 with the shared key (the content of the gateway's `secret_file`,
//!    surrounding whitespace removed, as bytes) over `timestamp + "." + body`, where `timestamp`
//!    is the `X-Rxgate-Timestamp` header exactly as sent.
//! 3. Compare `"sha256=" + lowercase hex` with `X-Rxgate-Signature` in constant time
//!    (`hmac.compare_digest` in Python); answer 401 on a mismatch.
//! 4. To refuse replays, refuse timestamps too far from your clock (say 5 minutes) — but answer
//!    503, not 4xx: a gateway just back from a power cut may send with an unsynchronised clock
//!    (the body says `"clock_synced": false`), and a 503 makes it retry until its clock is set.
//!
//! ```python
//! import hashlib, hmac
//! def verify(key: bytes, headers, body: bytes) -> bool:
//!     t = headers["X-Rxgate-Timestamp"]
//!     mac = hmac.new(key, t.encode() + b"." + body, hashlib.sha256).hexdigest()
//!     return hmac.compare_digest("sha256=" + mac, headers["X-Rxgate-Signature"])
//! ```

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use ring::hmac;
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{Deliver, DeliveryError, DeliveryFuture};
use crate::alerts::config::{MIN_WEBHOOK_SECRET, WebhookConfig, read_secret};
use crate::alerts::queue::Channel;
use crate::alerts::record::Notification;
use crate::clock::SharedClock;
use crate::error::{Error, Result};

/// The most of a receiver's answer that is read (for the log).
const MAX_ANSWER: usize = 16 * 1024;
/// The most of a receiver's answer that is logged.
const MAX_REASON: usize = 300;

/// A parsed webhook `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written, for the Host header.
    pub authority: String,
    pub path_and_query: String,
}

impl WebhookUrl {
    /// Parses `https://host[:port]/path?query`, or `http://` to a loopback host.
    pub fn parse(url: &str) -> std::result::Result<WebhookUrl, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("not a URL ({e}); expected https://host/path"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("must start with https://".to_owned()),
        };
        let authority = uri.authority().ok_or("names no host")?.as_str().to_owned();
        if authority.contains('@') {
            return Err(
                "credentials do not belong in the URL; requests are signed with \
                        secret_file"
                    .to_owned(),
            );
        }
        let host = uri
            .host()
            .ok_or("names no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err("names no host".to_owned());
        }
        if !tls && !is_loopback(&host) {
            return Err(
                "must use https://; http:// is only allowed to a loopback address \
                        (127.0.0.1, ::1, localhost)"
                    .to_owned(),
            );
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        if port == 0 {
            return Err("port 0 is not a port".to_owned());
        }
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/")
            .to_owned();
        Ok(WebhookUrl {
            tls,
            host,
            port,
            authority,
            path_and_query,
        })
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `sha256=<lowercase hex of HMAC-SHA256(key, "<timestamp>." + body)>`.
pub fn signature(key: &hmac::Key, timestamp: i64, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// What an HTTP status means for the notification.
pub fn classify(status: StatusCode) -> std::result::Result<(), DeliveryError> {
    let code = status.as_u16();
    if status.is_success() {
        Ok(())
    } else if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Err(DeliveryError::Retry(format!(
            "the receiver answered {code}"
        )))
    } else if status.is_client_error() {
        Err(DeliveryError::Drop(format!(
            "the receiver refused the notification with {code}"
        )))
    } else if status.is_redirection() {
        Err(DeliveryError::Retry(format!(
            "the receiver redirects ({code}); redirects are not followed: set \
             alerts.webhook.url to the final address"
        )))
    } else {
        Err(DeliveryError::Retry(format!(
            "the receiver answered {code}, which is not an answer to a POST"
        )))
    }
}

/// Delivers notifications as signed HTTPS POSTs.
pub struct WebhookDeliverer {
    url: WebhookUrl,
    server_name: ServerName<'static>,
    tls: Option<TlsConnector>,
    key: hmac::Key,
    timeout: Duration,
    clock: SharedClock,
}

impl std::fmt::Debug for WebhookDeliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookDeliverer")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl WebhookDeliverer {
    /// Reads `secret_file` and `ca_file` (or the system's trusted roots). `clock` stamps each
    /// request.
    pub fn build(config: &WebhookConfig, clock: SharedClock) -> Result<WebhookDeliverer> {
        let invalid =
            |key: &str, message: String| Error::Invalid(format!("alerts.webhook.{key}: {message}"));
        let url = WebhookUrl::parse(&config.url)
            .map_err(|m| invalid("url", format!("{:?} {m}", config.url)))?;
        let secret = read_secret(&config.secret_file).map_err(|e| {
            invalid(
                "secret_file",
                format!("{}: {e}", config.secret_file.display()),
            )
        })?;
        if secret.len() < MIN_WEBHOOK_SECRET {
            return Err(invalid(
                "secret_file",
                format!(
                    "{}: the key must be at least {MIN_WEBHOOK_SECRET} bytes",
                    config.secret_file.display()
                ),
            ));
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let server_name = match url.host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(url.host.clone())
                .map_err(|_| invalid("url", format!("{:?} is not a host name", url.host)))?,
        };
        let tls = if url.tls {
            Some(TlsConnector::from(Arc::new(client_config(
                config.ca_file.as_deref(),
            )?)))
        } else {
            None
        };
        Ok(WebhookDeliverer {
            url,
            server_name,
            tls,
            key,
            timeout: config.timeout,
            clock,
        })
    }

    /// The signed request for `n`, stamped `timestamp`.
    pub fn request(
        &self,
        n: &Notification,
        timestamp: i64,
    ) -> std::result::Result<Request<Full<Bytes>>, String> {
        let body = serde_json::to_vec(n).map_err(|e| format!("cannot encode: {e}"))?;
        let signature = signature(&self.key, timestamp, &body);
        Request::builder()
            .method(Method::POST)
            .uri(self.url.path_and_query.as_str())
            .header(header::HOST, self.url.authority.as_str())
            .header(
                header::USER_AGENT,
                concat!("rxgate/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .header("x-rxgate-event", n.event.as_str())
            .header("x-rxgate-timestamp", timestamp)
            .header("x-rxgate-signature", signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("cannot build the request: {e}"))
    }

    async fn send(&self, n: &Notification) -> std::result::Result<(), DeliveryError> {
        let request = self
            .request(n, self.clock.now().unix_timestamp())
            .map_err(DeliveryError::Drop)?;
        let retry = |what: &str, e: &dyn std::fmt::Display| {
            DeliveryError::Retry(format!("{}: {what}: {e}", self.url.authority))
        };
        let tcp = TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|e| retry("cannot connect", &e))?;
        let _ = tcp.set_nodelay(true);
        let (status, answer) = match &self.tls {
            Some(tls) => {
                let stream = tls
                    .connect(self.server_name.clone(), tcp)
                    .await
                    .map_err(|e| retry("TLS handshake failed", &e))?;
                exchange(stream, request).await
            }
            None => exchange(tcp, request).await,
        }
        .map_err(|e| retry("HTTP exchange failed", &e))?;
        classify(status).map_err(|e| match e {
            DeliveryError::Retry(m) => DeliveryError::Retry(with_reason(m, &answer)),
            DeliveryError::Drop(m) => DeliveryError::Drop(with_reason(m, &answer)),
        })
    }
}

impl Deliver for WebhookDeliverer {
    fn time_limit(&self) -> Option<Duration> {
        Some(self.timeout)
    }

    fn channel(&self) -> Channel {
        Channel::Webhook
    }

    fn deliver<'a>(&'a self, n: &'a Notification) -> DeliveryFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.send(n)).await {
                Ok(result) => result,
                Err(_) => Err(DeliveryError::Retry(format!(
                    "{}: no answer within {}",
                    self.url.authority,
                    humantime::format_duration(self.timeout)
                ))),
            }
        })
    }
}

/// One request on a fresh connection; the status and the start of the answer.
async fn exchange<S>(
    stream: S,
    request: Request<Full<Bytes>>,
) -> std::result::Result<(StatusCode, Bytes), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        // The answer only goes into the log: a body too long or cut short is not an error.
        let answer = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok((status, answer))
    }
    .await;
    driver.abort();
    result
}

fn with_reason(message: String, answer: &[u8]) -> String {
    let text = String::from_utf8_lossy(answer);
    let reason: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON)
        .collect();
    if reason.is_empty() {
        message
    } else {
        format!("{message}: {reason}")
    }
}

fn client_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in crate::tls::load_certs(path)? {
                roots.add(cert).map_err(|e| {
                    Error::Invalid(format!("alerts.webhook.ca_file: {}: {e}", path.display()))
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(Error::Invalid(
                    "alerts.webhook: no trusted root certificates found on this system \
                     (install ca-certificates) and no ca_file given"
                        .to_owned(),
                ));
            }
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Invalid(format!("alerts.webhook: TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_an_independent_hmac_sha256() {
        // python3 -c 'import hmac,hashlib; print(hmac.new(b"rxgate-test-secret-0123456789",
        //   b"1777622400." + b"{\"event\":\"raised\",\"alert\":{\"device\":\"fridge-01\"}}",
        //   hashlib.sha256).hexdigest())'
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"rxgate-test-secret-0123456789");
        let body = br#"{"event":"raised","alert":{"device":"fridge-01"}}"#;
        assert_eq!(
            signature(&key, 1_777_622_400, body),
            "sha256=a1ee18983a8fefe17bfd8a58d2153d20330b3d4814f0f0a219b7f131fd1ce218"
        );
    }

    #[test]
    fn statuses_are_classified_as_delivered_retry_or_drop() {
        let kind = |code: u16| match classify(StatusCode::from_u16(code).unwrap()) {
            Ok(()) => "ok",
            Err(DeliveryError::Retry(_)) => "retry",
            Err(DeliveryError::Drop(_)) => "drop",
        };
        for (code, expected) in [
            (200, "ok"),
            (202, "ok"),
            (204, "ok"),
            (408, "retry"),
            (429, "retry"),
            (500, "retry"),
            (502, "retry"),
            (503, "retry"),
            (301, "retry"),
            (400, "drop"),
            (401, "drop"),
            (403, "drop"),
            (404, "drop"),
            (410, "drop"),
            (422, "drop"),
        ] {
            assert_eq!(kind(code), expected, "status {code}");
        }
    }

    #[test]
    fn url_needs_https_except_to_loopback() {
        let ok = WebhookUrl::parse("https://hooks.example.org/rxgate?team=7").unwrap();
        assert_eq!(
            (ok.tls, ok.port, ok.path_and_query.as_str()),
            (true, 443, "/rxgate?team=7")
        );
        let local = WebhookUrl::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            (local.tls, local.port, local.path_and_query.as_str()),
            (false, 9000, "/")
        );
        assert!(WebhookUrl::parse("http://[::1]:9000/x").is_ok());
        assert!(
            WebhookUrl::parse("http://hooks.example.org/x")
                .unwrap_err()
                .contains("https://")
        );
        assert!(WebhookUrl::parse("ftp://hooks.example.org/").is_err());
        assert!(
            WebhookUrl::parse("https://user:pw@hooks.example.org/")
                .unwrap_err()
                .contains("credentials")
        );
    }
}
