//! The pharmacy console: server-rendered HTTPS pages on `[console].listen` where people set up
//! their account, sign in, see each fridge and acknowledge alerts with an electronic signature.
//!
//! - `GET/POST /setup/{token}`: the set-up link `rxgate user add` prints (password, TOTP
//!   enrolment, recovery codes shown once).
//! - `GET/POST /signin`, `POST /signout`; `POST /signin/passkey`, the second half of a sign-in
//!   with a passkey (password first, then the passkey instead of a code).
//! - `GET/POST /account/passkeys`, `POST /account/passkeys/{id}/remove`: the signed-in
//!   person's passkeys (WebAuthn). Passkeys need the console to be reached under a DNS name
//!   (`localhost` or one of `[gateway].server_names`); on an IP address the pages say so and
//!   offer TOTP only.
//! - `GET /`: each cold-chain fridge: temperature, range, state, age of the last reading.
//! - `GET /alerts`, `GET/POST /alerts/{id}/ack`: open and recent alerts; acknowledging is a
//!   signature (password and a new second factor, meaning, corrective action, product
//!   disposition) written to the audit chain, then the acknowledgement through the alert monitor.
//! - `GET /devices`, `POST /devices/enroll`, `GET/POST /devices/{id}/revoke`: devices, tokens,
//!   signed revocation.
//! - `GET /audit`, `/audit/export.csv`, `/audit/export.json`: the filtered audit trail.
//! - `GET /users`, `POST /users/add`, `POST /users/{name}/{change}`: accounts (admin).
//! - `GET /events`: live updates of the overview (server-sent events).
//! - `GET /fridges`, `GET /fridges/{id}` (with `chart.svg` and `log.csv`): the temperature logs;
//!   `GET/POST /fridges/{id}/check`: the signed daily min/max check;
//!   `GET /excursions/{device}/{start}/report`: the printable excursion report.
//! - `GET /assets/console.css`: the only style; `/assets/live.js` (live updates) and
//!   `/assets/passkey.js` (the browser side of the passkey ceremonies): the only scripts;
//!   nothing inline, no eval (the CSP forbids both).
//!
//! The console reads and changes the gateway only through [`Backend`] (the daemon answers it with
//! the admin interface the CLI uses) and [`People`]; it never opens the store. Every page checks
//! its action with [`crate::people::authorize`]. Sessions live in memory ([`sessions`]); every
//! POST carries its session's CSRF token. Passkey challenges wait beside the sessions, in memory
//! ([`ceremonies`]). Connections are bounded like the EST listener's
//! ([`crate::net::serve_tls`]), request bodies to [`MAX_BODY`].

pub mod ceremonies;
pub mod config;
pub mod sessions;
mod views;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use config::ConsoleConfig;

use crate::alerts::Alert;
use crate::audit::AuditBody;
use crate::clock::SharedClock;
use crate::coldchain::live::FridgeNow;
use crate::error::{Error, Result};
use crate::net::{self, Limits};
use crate::people::{Action, People};
use crate::registry::{DeviceRecord, TokenInfo};
use sessions::{Lookup, Session, Sessions, SignedIn};

/// Largest request body accepted (a form is a few hundred bytes).
pub const MAX_BODY: usize = 16 * 1024;
/// Connections at once, and per source address.
const MAX_CONNECTIONS: usize = 64;
/// Time for the TLS handshake, and then for each request's headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The security headers on every answer. The CSP allows only the stylesheet, scripts, images
/// and live-update stream served by the console itself (nothing inline, no eval), forms posting
/// to it, no frames.
pub const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the console reads and asks of the gateway: the same requests the CLI makes through the
/// admin socket. Calls block (they may touch the store); the console runs them off the async
/// threads.
pub trait Backend: Send + Sync + 'static {
    /// Alerts, newest first: every one kept, or only those not yet resolved.
    fn alerts(&self, all: bool) -> Result<Vec<Alert>>;
    /// Each cold-chain fridge as the gateway sees it now.
    fn fridges(&self) -> Result<Vec<FridgeNow>>;
    /// Acknowledges alert `id` on behalf of `by` (a signed-in person) with `note`.
    fn acknowledge(&self, id: &str, by: &str, source: IpAddr, note: &str) -> Result<Alert>;
    /// Every device the gateway knows, enrolled, pending or revoked.
    fn devices(&self) -> Result<Vec<DeviceRecord>>;
    /// Every enrollment token (never their secrets).
    fn tokens(&self) -> Result<Vec<TokenInfo>>;
    /// A new one-time enrollment token for `device` of `kind`, created by `by`: the token and
    /// its secret, which is shown once.
    fn create_token(
        &self,
        device: &str,
        kind: &str,
        by: &str,
        source: IpAddr,
    ) -> Result<(TokenInfo, String)>;
    /// Revokes device `id` for `reason`, on behalf of `by`.
    fn revoke_device(
        &self,
        id: &str,
        reason: &str,
        by: &str,
        source: IpAddr,
    ) -> Result<DeviceRecord>;
    /// What a device needs besides its token to enroll: the EST URL and the CA's fingerprint.
    fn enrollment(&self) -> Result<Enrollment>;
    /// One page of the audit trail, as the admin request `audit_export` gives it.
    fn audit_page(&self, query: &AuditQuery) -> Result<AuditPage>;
    /// The chain checked from its start: entries intact, or the first broken one and why.
    fn audit_verify(&self) -> Result<(u64, Option<(u64, String)>)>;
    /// The temperature log of `device` for the days `from..=to` (UTC): daily minimum and
    /// maximum, excursions with their reviews, min/max checks, the chart's samples.
    fn report(
        &self,
        device: &str,
        from: time::Date,
        to: time::Date,
    ) -> Result<crate::report::ReportData>;
    /// Records the daily min/max check of `device` by `by`, whose signature is audit entry
    /// `audit_seq`; the extremes since the last check are reset.
    fn min_max_check(
        &self,
        device: &str,
        by: &str,
        source: IpAddr,
        note: &str,
        audit_seq: Option<u64>,
    ) -> Result<crate::coldchain::history::CheckRecord>;
}

/// Where a device enrolls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// `https://host:port/.well-known/est`, or `None` when EST is not served.
    pub est_url: Option<String>,
    /// SHA-256 of the gateway CA's certificate (DER), hex.
    pub ca_sha256: String,
    /// A device certificate with less than this left is due for renewal (devices renew from
    /// two thirds of `[enroll].cert_validity`).
    pub renewal_due: time::Duration,
}

/// A page of the audit trail: entries with `from <= ts < to` after entry `after`, up to entry
/// `until`, at most `limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub after: Option<u64>,
    pub until: Option<u64>,
    pub limit: u32,
}

/// What [`Backend::audit_page`] returns: the entries, where the next page starts (`None`: this
/// was the last), and the head the export stops at.
#[derive(Debug, Clone, Default)]
pub struct AuditPage {
    pub entries: Vec<AuditBody>,
    pub next_after: Option<u64>,
    pub until: u64,
}

/// What every handler shares.
pub(crate) struct App {
    people: People,
    backend: Arc<dyn Backend>,
    sessions: Sessions,
    ceremonies: ceremonies::Ceremonies,
    clock: SharedClock,
    site: String,
    /// Live-update streams open now (see `views::live`).
    live_streams: Arc<std::sync::atomic::AtomicUsize>,
}

/// What a handler knows about its connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
}

/// The console, bound and ready to run.
pub struct ConsoleServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: axum::Router,
}

/// Binds `config.listen`, before the console is built, so that alert e-mails can link to it.
pub async fn bind(config: &ConsoleConfig) -> Result<TcpListener> {
    TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Io {
            action: "cannot listen for the console on",
            path: config.listen.to_string().into(),
            source,
        })
}

/// The console's address as people reach it: `https://<first server name>:<port>`, or
/// `localhost` when the gateway has no server name (the names its certificate holds).
pub fn base_url(server_names: &[String], port: u16) -> String {
    let host = server_names.first().map_or("localhost", String::as_str);
    match host.parse::<std::net::Ipv6Addr>() {
        Ok(v6) => format!("https://[{v6}]:{port}"),
        Err(_) => format!("https://{host}:{port}"),
    }
}

impl ConsoleServer {
    /// Serves on `listener` (from [`bind`]) with TLS from `config`'s certificate, or the
    /// gateway's server certificate (`chain`, `key`) when it names none.
    #[allow(clippy::too_many_arguments)]
    pub async fn build(
        config: &ConsoleConfig,
        listener: TcpListener,
        chain: Vec<rustls_pki_types::CertificateDer<'static>>,
        key: rustls_pki_types::PrivateKeyDer<'static>,
        people: People,
        backend: Arc<dyn Backend>,
        clock: SharedClock,
        site: &str,
    ) -> Result<ConsoleServer> {
        let (chain, key) = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => (crate::tls::load_certs(cert)?, crate::tls::load_key(key)?),
            _ => (chain, key),
        };
        let mut tls = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::Invalid(format!("console TLS setup: {e}")))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                Error::Invalid(format!(
                    "the console's certificate and key do not fit together: {e}; check console.cert_file and console.key_file"
                ))
            })?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Set-up links name the port the console is bound to.
        let people = match listener.local_addr() {
            Ok(addr) => people.with_console_port(addr.port()),
            Err(_) => people,
        };
        let app = Arc::new(App {
            people,
            backend,
            sessions: Sessions::new(config.idle_timeout, config.absolute_timeout),
            ceremonies: ceremonies::Ceremonies::default(),
            clock,
            site: site.to_owned(),
            live_streams: Arc::default(),
        });
        Ok(ConsoleServer {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            router: views::router(app),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(|source| Error::Io {
            action: "cannot read the address of",
            path: "the console listener".into(),
            source,
        })
    }

    /// Serves until `shutdown`, then lets requests in flight finish.
    pub async fn run(self, shutdown: CancellationToken) {
        let router = self.router;
        let conn_shutdown = shutdown.clone();
        net::serve_tls(
            "console",
            self.listener,
            self.acceptor,
            Limits {
                handshake_timeout: HANDSHAKE_TIMEOUT,
                max_pending_handshakes: MAX_CONNECTIONS,
                max_pending_per_source: MAX_CONNECTIONS / 2,
                max_connections: MAX_CONNECTIONS,
                max_connections_per_source: MAX_CONNECTIONS / 2,
            },
            shutdown,
            |peer, why| tracing::debug!(%peer, reason = why.as_str(), "Console connection dropped."),
            move |tls, peer| {
                let app = router.clone().layer(axum::Extension(ConnInfo { peer }));
                let shutdown = conn_shutdown.clone();
                async move {
                    let service = TowerToHyperService::new(app);
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder
                        .timer(TokioTimer::new())
                        .header_read_timeout(HANDSHAKE_TIMEOUT);
                    let conn = builder.serve_connection(TokioIo::new(tls), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        result = conn.as_mut() => {
                            if let Err(e) = result {
                                tracing::debug!(%peer, error = %e, "Console connection error.");
                            }
                        }
                        _ = shutdown.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                        }
                    }
                }
            },
        )
        .await;
    }
}

/// Headers on every answer, errors included.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// The request's session: the live one its cookie names, or a new anonymous one whose cookie
/// the answer must set.
pub(crate) struct Current {
    pub id: String,
    pub session: Session,
    pub set_cookie: Option<String>,
}

impl Current {
    pub fn user(&self) -> Option<&SignedIn> {
        self.session.user.as_ref()
    }

    /// Adds the cookie of a new session to `response`.
    pub fn finish(&self, mut response: Response) -> Response {
        if let Some(cookie) = &self.set_cookie
            && let Ok(value) = HeaderValue::from_str(cookie)
        {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
        response
    }
}

impl App {
    pub(crate) fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }

    /// The session of a request with `headers`, from `peer`. A session that timed out is
    /// audited as a sign-out of its person.
    pub(crate) async fn current(
        self: &Arc<Self>,
        headers: &HeaderMap,
        peer: IpAddr,
    ) -> Result<Current> {
        let now = self.now();
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(sessions::id_from_cookies)
            .map(str::to_owned);
        if let Some(id) = cookie {
            match self.sessions.lookup(&id, now) {
                Lookup::Live(session) => {
                    return Ok(Current {
                        id,
                        session,
                        set_cookie: None,
                    });
                }
                Lookup::Ended {
                    user: Some(name),
                    reason,
                } => {
                    let app = self.clone();
                    blocking(move || app.people.signed_out(&name, Some(peer), reason)).await?;
                }
                Lookup::Ended { user: None, .. } | Lookup::Unknown => {}
            }
        }
        let (id, session) = self.sessions.create(None, now)?;
        Ok(Current {
            set_cookie: Some(sessions::set_cookie(&id)),
            id,
            session,
        })
    }
}

/// Runs `f` on a blocking thread (store access, Argon2).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Invalid(format!("a console task failed: {e}")))?
}

/// Whether `user` may do `action`, through the one permission function.
pub(crate) fn permitted(
    user: &SignedIn,
    action: Action,
) -> std::result::Result<(), crate::people::Denied> {
    crate::people::authorize(&user.roles, action)
}

/// A plain-text answer for failures below the pages (the page itself could not be made).
pub(crate) fn plain(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.into(),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
