//! EST request handlers.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use http_body_util::BodyExt;
use rxgate_certs::{CertificateAuthority, CheckedCsr, IssuedCert};

use super::ConnInfo;
use super::limit::RateLimiter;
use crate::audit::{Kind, Refusals};
use crate::error::Result;
use crate::registry::{IssuePolicy, Refusal, Registry};

/// After the body limit is exceeded, this much more is read and thrown away so the client sees
/// the 413 instead of a reset connection; beyond it the connection is closed.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

const PKCS7: &str = "application/pkcs7-mime";
const PKCS7_CERTS_ONLY: &str = "application/pkcs7-mime; smime-type=certs-only";

/// The one answer to every `simpleenroll` whose credentials are not accepted: missing or
/// malformed, unknown device, no token, wrong, used, expired, burnt or revoked token, locked-out
/// source. Which it was is recorded in the audit trail only, so the answer tells a stranger
/// nothing about a device or its token.
pub(crate) const UNAUTHENTICATED: &str = "enrollment refused: the device id and token do not \
     match a pending enrollment. Check both (user = device id, password = the token printed by \
     `rxgate token create`); a token works once, until it expires. If it still fails, ask the \
     administrator to create a new token; the gateway's audit trail says why this one was refused.";

pub(crate) struct Est {
    registry: Registry,
    ca: Arc<CertificateAuthority>,
    policy: IssuePolicy,
    limiter: RateLimiter,
    max_body: usize,
    /// Where refusals go: folded per second, summarised when they keep coming.
    refusals: Refusals,
    /// `cacerts` never changes while the daemon runs: encoded once.
    cacerts: String,
    /// The CA's newest CRL; `None` when the CA may not sign CRLs.
    crl: Option<super::crl::Published>,
}

impl Est {
    pub(crate) fn new(
        registry: Registry,
        ca: Arc<CertificateAuthority>,
        policy: IssuePolicy,
        limiter: RateLimiter,
        max_body: usize,
        refusals: Refusals,
        crl: Option<super::crl::Published>,
    ) -> Result<Self> {
        let cacerts =
            rxgate_certs::base64::encode_body(&rxgate_certs::pkcs7::certs_only(&ca.chain_der())?);
        Ok(Est {
            registry,
            ca,
            policy,
            limiter,
            max_body,
            refusals,
            cacerts,
            crl,
        })
    }
}

pub(crate) fn router(est: Arc<Est>) -> Router {
    Router::new()
        .route("/.well-known/est/cacerts", get(cacerts))
        .route("/.well-known/est/simpleenroll", post(simple_enroll))
        .route("/.well-known/est/simplereenroll", post(simple_reenroll))
        .route(crate::pki::CRL_PATH, get(crl))
        .fallback(not_found)
        .with_state(est)
        .layer(axum::middleware::map_response(security_headers))
}

/// Headers on every EST answer, errors and 404s included. EST clients are not browsers, but a
/// browser pointed at the listener must not sniff a certificate into a script, frame it, or
/// keep an issued certificate in its cache. No HSTS: it would bind every port of the host name,
/// the plain-HTTP metrics endpoint among them.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    let mut message = message.into();
    message.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

fn pkcs7(content_type: &'static str, body: String) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::HeaderName::from_static("content-transfer-encoding"),
                "base64",
            ),
        ],
        body,
    )
        .into_response()
}

async fn not_found() -> Response {
    text(
        StatusCode::NOT_FOUND,
        "not an EST endpoint; use /.well-known/est/cacerts, simpleenroll or simplereenroll, or /crl",
    )
}

fn rate_limited(est: &Est, source: IpAddr) -> Option<Response> {
    let wait = est.limiter.check(source, Instant::now()).err()?;
    let mut response = text(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "too many requests from {source}; retry in {} s",
            wait.as_secs()
        ),
    );
    if let Ok(value) = HeaderValue::from_str(&wait.as_secs().to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    Some(response)
}

async fn cacerts(State(est): State<Arc<Est>>, Extension(conn): Extension<ConnInfo>) -> Response {
    if let Some(refused) = rate_limited(&est, conn.peer.ip()) {
        return refused;
    }
    pkcs7(PKCS7, est.cacerts.clone())
}

/// The CA's CRL (DER), as the publisher last signed it. Public: no authentication, rate-limited
/// like every EST route.
async fn crl(State(est): State<Arc<Est>>, Extension(conn): Extension<ConnInfo>) -> Response {
    if let Some(refused) = rate_limited(&est, conn.peer.ip()) {
        return refused;
    }
    match est.crl.as_ref().and_then(super::crl::Published::current) {
        Some(der) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/pkix-crl")],
            der,
        )
            .into_response(),
        None => text(
            StatusCode::NOT_FOUND,
            "this gateway publishes no CRL: its CA certificate may not sign CRLs (keyUsage lacks \
             cRLSign); revocation is still enforced at every connection",
        ),
    }
}

type Refused = (StatusCode, String);

/// Reads at most `limit` bytes of body; a larger body is 413 (after draining it, bounded).
async fn read_body(body: Body, limit: usize, headers: &HeaderMap) -> Result<Bytes, Refused> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {limit} bytes; a CSR is a few KiB"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return Err(too_large());
    }
    let mut body = body;
    let mut buf = Vec::new();
    let mut seen = 0usize;
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err((
                    StatusCode::REQUEST_TIMEOUT,
                    "request body not received in time".to_owned(),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= limit {
                buf.extend_from_slice(&data);
            } else if seen > DRAIN_LIMIT {
                return Err(too_large());
            }
        }
    }
    if seen > limit {
        return Err(too_large());
    }
    Ok(Bytes::from(buf))
}

/// Reads the body and decodes and checks the CSR in it.
async fn read_csr(body: Body, limit: usize, headers: &HeaderMap) -> Result<CheckedCsr, Refused> {
    let body = read_body(body, limit, headers).await?;
    let bad = |reason: String| (StatusCode::BAD_REQUEST, reason);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad(
            "empty body: expected a base64-encoded DER PKCS#10 certificate request".to_owned(),
        ));
    }
    let der = rxgate_certs::base64::decode_body(&body)
        .map_err(|e| bad(format!("body is not base64 (RFC 7030 §4.2.1): {e}")))?;
    rxgate_certs::check_csr(&der).map_err(|e| bad(format!("certificate request refused: {e}")))
}

/// `Authorization: Basic` → (user, password).
fn basic_auth(headers: &HeaderMap) -> Result<(String, String), String> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or("simpleenroll needs HTTP Basic authentication: user = device id, password = enrollment token")?;
    let value = value
        .to_str()
        .map_err(|_| "malformed Authorization header")?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
        .ok_or("Authorization must be HTTP Basic")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| "malformed Basic credentials")?;
    let decoded = String::from_utf8(decoded).map_err(|_| "malformed Basic credentials")?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or("malformed Basic credentials")?;
    Ok((user.to_owned(), password.to_owned()))
}

fn unauthorized(message: impl Into<String>) -> Response {
    let mut response = text(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"rxgate EST\""),
    );
    response
}

/// Who a refused request was from, for the audit trail.
enum Requester<'a> {
    /// Named this device id but did not prove it (`simpleenroll` before the token is accepted).
    Claimed(Option<&'a str>),
    /// Proved to be this device (a token that was accepted, or its certificate).
    Device(&'a str),
}

impl Est {
    /// Reports a refused request to the refusal log, which folds repeats.
    fn report(
        &self,
        requester: Requester<'_>,
        source: IpAddr,
        endpoint: &'static str,
        class: &'static str,
        reason: &str,
    ) {
        let (device, claimed_device) = match requester {
            Requester::Claimed(claimed) => (None, claimed.map(str::to_owned)),
            Requester::Device(device) => (Some(device.to_owned()), None),
        };
        self.refusals.record(crate::audit::Refusal {
            kind: Kind::EnrollRefused,
            device,
            source: Some(source),
            class,
            reason: format!("{endpoint}: {reason}"),
            claimed_device,
        });
    }
}

fn refusal(refusal: Refusal) -> Response {
    match refusal {
        Refusal::Unauthenticated { .. } => unauthorized(UNAUTHENTICATED),
        Refusal::Unauthorized { reason, .. } => unauthorized(reason),
        Refusal::Forbidden { reason, .. } => text(StatusCode::FORBIDDEN, reason),
        Refusal::BadRequest { reason, .. } => text(StatusCode::BAD_REQUEST, reason),
    }
}

fn issued(cert: IssuedCert) -> Response {
    match rxgate_certs::pkcs7::certs_only(std::slice::from_ref(&cert.der)) {
        Ok(der) => pkcs7(PKCS7_CERTS_ONLY, rxgate_certs::base64::encode_body(&der)),
        Err(e) => internal(e),
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "EST request failed inside the gateway.");
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the gateway could not complete the request; see its log",
    )
}

/// Runs blocking registry work (store transactions, signing) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(internal(e)),
        Err(e) => Err(internal(e)),
    }
}

async fn simple_enroll(
    State(est): State<Arc<Est>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let source = conn.peer.ip();
    if let Some(refused) = rate_limited(&est, source) {
        return refused;
    }
    let (device, token) = match basic_auth(&headers) {
        Ok(credentials) => credentials,
        Err(reason) => {
            est.report(
                Requester::Claimed(None),
                source,
                "simpleenroll",
                "malformed_auth",
                &reason,
            );
            return unauthorized(UNAUTHENTICATED);
        }
    };
    if let Err(e) = rxgate_certs::validate_device_id(&device) {
        est.report(
            Requester::Claimed(None),
            source,
            "simpleenroll",
            "invalid_device_id",
            &format!("the user name is not a device id: {e}"),
        );
        return unauthorized(UNAUTHENTICATED);
    }
    let csr = match read_csr(body, est.max_body, &headers).await {
        Ok(csr) => csr,
        Err(refused) => {
            return answer_refused(
                &est,
                Requester::Claimed(Some(&device)),
                source,
                "simpleenroll",
                refused,
            );
        }
    };
    let outcome = {
        let est = est.clone();
        let device = device.clone();
        blocking(move || {
            est.registry
                .enroll(&device, &token, &csr, &est.ca, &est.policy, source)
        })
        .await
    };
    match outcome {
        Err(response) => response,
        Ok(Err(refused)) => {
            let requester = match refused {
                // Only a CSR problem comes after the token was accepted.
                Refusal::BadRequest { .. } => Requester::Device(&device),
                _ => Requester::Claimed(Some(&device)),
            };
            est.report(
                requester,
                source,
                "simpleenroll",
                refused.class(),
                &refused.to_string(),
            );
            refusal(refused)
        }
        Ok(Ok(cert)) => {
            tracing::info!(%device, %source, serial = %cert.serial, "Device enrolled.");
            issued(cert)
        }
    }
}

async fn simple_reenroll(
    State(est): State<Arc<Est>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let source = conn.peer.ip();
    if let Some(refused) = rate_limited(&est, source) {
        return refused;
    }
    let Some(cert) = conn.client_cert else {
        return unauthorized(
            "simplereenroll needs the device's current certificate as the TLS client certificate",
        );
    };
    let identity = match rxgate_certs::device_identity(&cert) {
        Ok(identity) => identity,
        Err(e) => {
            return unauthorized(format!(
                "the client certificate is not a device certificate: {e}"
            ));
        }
    };
    let device = identity.device_id.clone();
    let csr = match read_csr(body, est.max_body, &headers).await {
        Ok(csr) => csr,
        Err(refused) => {
            return answer_refused(
                &est,
                Requester::Device(&device),
                source,
                "simplereenroll",
                refused,
            );
        }
    };
    let outcome = {
        let est = est.clone();
        blocking(move || {
            est.registry
                .renew(&identity, &csr, &est.ca, &est.policy, source)
        })
        .await
    };
    match outcome {
        Err(response) => response,
        Ok(Err(refused)) => {
            est.report(
                Requester::Device(&device),
                source,
                "simplereenroll",
                refused.class(),
                &refused.to_string(),
            );
            refusal(refused)
        }
        Ok(Ok(cert)) => {
            tracing::info!(%device, %source, serial = %cert.serial, "Device certificate renewed.");
            issued(cert)
        }
    }
}

/// Reports a request refused for its body (unreadable, oversized, not a CSR), then answers it.
/// The body is checked before the token, so on `simpleenroll` the device id is only claimed.
fn answer_refused(
    est: &Est,
    requester: Requester<'_>,
    source: IpAddr,
    endpoint: &'static str,
    (status, reason): Refused,
) -> Response {
    let class = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::REQUEST_TIMEOUT => "body_timeout",
        _ => "bad_csr",
    };
    est.report(requester, source, endpoint, class, &reason);
    text(status, reason)
}
