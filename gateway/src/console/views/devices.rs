//! `/devices`: every device and enrollment token; installers create a token (shown once, with a
//! QR code of everything the device needs) and revoke a device with a reason, signed by
//! re-entering their password and a new code.

use std::sync::Arc;

use askama::Template;
use axum::Extension;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::{
    Chrome, NotSigned, check_csrf, error, failed, render, require, session, sign, time_text,
};
use crate::console::{App, ConnInfo, Current, blocking};
use crate::people::{Action, Meaning, SignatureRequest, may};
use crate::registry::{DeviceRecord, DeviceStatus, TokenInfo};

pub(crate) struct DeviceRow {
    pub id: String,
    pub kind: String,
    pub status: &'static str,
    pub certificate: String,
    pub renewal: &'static str,
    pub last_seen: String,
    pub revoked: String,
    pub revocable: bool,
}

/// `device` as the list shows it; a certificate with less than `renewal_due` left is due for
/// renewal (devices renew themselves from two thirds of its life; one this close has not).
fn device_row(
    device: &DeviceRecord,
    now: time::OffsetDateTime,
    renewal_due: time::Duration,
) -> DeviceRow {
    let status = match device.status {
        DeviceStatus::Active => "enrolled",
        DeviceStatus::Pending => "pending",
        DeviceStatus::Revoked => "revoked",
    };
    let (certificate, renewal) = match device.not_after {
        Some(end) if device.status == DeviceStatus::Active => {
            let renewal = if end <= now {
                "expired"
            } else if end - now < renewal_due {
                "renewal due"
            } else {
                "current"
            };
            (format!("valid until {}", time_text(end)), renewal)
        }
        Some(end) => (format!("was valid until {}", time_text(end)), "—"),
        None => ("none yet".to_owned(), "—"),
    };
    DeviceRow {
        id: device.id.clone(),
        kind: device.kind.clone(),
        status,
        certificate,
        renewal,
        last_seen: device
            .last_seen
            .map_or_else(|| "never".to_owned(), time_text),
        revoked: device.revoked.as_ref().map_or_else(String::new, |r| {
            format!("by {} at {}: {}", r.by, time_text(r.at), r.reason)
        }),
        revocable: device.status != DeviceStatus::Revoked,
    }
}

pub(crate) struct TokenRow {
    pub device: String,
    pub kind: String,
    pub state: String,
    pub expires: String,
}

fn token_row(token: &TokenInfo) -> TokenRow {
    TokenRow {
        device: token.device.clone(),
        kind: token.kind.clone(),
        state: token.state.clone(),
        expires: time_text(token.expires_at),
    }
}

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage {
    chrome: Chrome,
    devices: Vec<DeviceRow>,
    tokens: Vec<TokenRow>,
    csrf: String,
    can_enroll: bool,
    can_revoke: bool,
    kinds: &'static [&'static str],
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "token_created.html")]
struct TokenCreatedPage {
    chrome: Chrome,
    device: String,
    kind: String,
    secret: String,
    expires: String,
    est_url: String,
    ca_sha256: String,
    /// The QR code, an inline SVG made here from the values above (no text of its own).
    qr_svg: String,
}

#[derive(Template)]
#[template(path = "revoke.html")]
struct RevokePage {
    chrome: Chrome,
    device: DeviceRow,
    csrf: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "revoked.html")]
struct RevokedPage {
    chrome: Chrome,
    device: DeviceRow,
    signer: String,
    signed_at: String,
    sha256: String,
    seq: u64,
}

async fn list_page(
    app: &Arc<App>,
    current: &Current,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let Some(user) = current.user() else {
        return failed(
            app,
            current,
            &crate::error::Error::Invalid("no one is signed in".to_owned()),
        );
    };
    let backend = app.backend.clone();
    let loaded = blocking(move || {
        Ok((
            backend.devices()?,
            backend.tokens()?,
            backend.enrollment()?.renewal_due,
        ))
    })
    .await;
    let (devices, tokens, renewal_due) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => return failed(app, current, &e),
    };
    let now = app.now();
    render(
        current,
        status,
        &DevicesPage {
            chrome: Chrome::new(app, current, "Devices"),
            devices: devices
                .iter()
                .map(|d| device_row(d, now, renewal_due))
                .collect(),
            tokens: tokens
                .iter()
                .filter(|t| t.state == "pending")
                .map(token_row)
                .collect(),
            csrf: current.session.csrf.clone(),
            can_enroll: may(&user.roles, Action::CreateToken),
            can_revoke: may(&user.roles, Action::RevokeDevice),
            kinds: rxgate_certs::KINDS,
            error,
        },
    )
}

pub(crate) async fn list(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    let current = match session(&app, &headers, conn).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    if let Err(answer) = require(&app, &current, Action::ViewStatus) {
        return answer;
    }
    list_page(&app, &current, StatusCode::OK, None).await
}

#[derive(Deserialize)]
pub(crate) struct EnrollForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    device: String,
    #[serde(default)]
    kind: String,
}

/// The QR code of `text` as inline SVG: dark modules on white, sized by the page's style.
fn qr_svg(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(240, 240)
        .dark_color(qrcode::render::svg::Color("#000"))
        .light_color(qrcode::render::svg::Color("#fff"))
        .build();
    // The renderer starts with an XML declaration, which has no place inside HTML.
    let start = svg.find("<svg")?;
    Some(svg[start..].to_owned())
}

/// What the QR code holds: one line of JSON a device's set-up app can read.
pub(crate) fn enrollment_payload(
    est_url: &str,
    device: &str,
    kind: &str,
    token: &str,
    ca_sha256: &str,
) -> String {
    serde_json::json!({
        "est": est_url,
        "device": device,
        "kind": kind,
        "token": token,
        "ca_sha256": ca_sha256,
    })
    .to_string()
}

pub(crate) async fn enroll(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Form(input): Form<EnrollForm>,
) -> Response {
    let current = match session(&app, &headers, conn).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    if let Err(refused) = check_csrf(&app, &current, &input.csrf) {
        return refused;
    }
    let user = match require(&app, &current, Action::CreateToken) {
        Ok(user) => user.clone(),
        Err(answer) => return answer,
    };
    let (device, kind) = (input.device.trim().to_owned(), input.kind.trim().to_owned());
    let backend = app.backend.clone();
    let source = conn.peer.ip();
    let (by, for_device, for_kind) = (user.name.clone(), device.clone(), kind.clone());
    let created = blocking(move || {
        let token = backend.create_token(&for_device, &for_kind, &by, source)?;
        Ok((token, backend.enrollment()?))
    })
    .await;
    let ((token, secret), enrollment) = match created {
        Ok(created) => created,
        Err(e @ (crate::error::Error::Invalid(_) | crate::error::Error::Certs(_))) => {
            return list_page(&app, &current, StatusCode::BAD_REQUEST, Some(e.to_string())).await;
        }
        Err(e) => return failed(&app, &current, &e),
    };
    let est_url = enrollment.est_url.unwrap_or_default();
    let payload = enrollment_payload(&est_url, &device, &kind, &secret, &enrollment.ca_sha256);
    tracing::info!(device = %device, user = %user.name, "Enrollment token created in the console.");
    render(
        &current,
        StatusCode::OK,
        &TokenCreatedPage {
            chrome: Chrome::new(&app, &current, "Enrollment token"),
            device,
            kind,
            secret,
            expires: time_text(token.expires_at),
            est_url,
            ca_sha256: enrollment.ca_sha256,
            qr_svg: qr_svg(&payload).unwrap_or_default(),
        },
    )
}

/// Device `id`, which the signed-in person may revoke; otherwise the answer.
async fn revocable(app: &Arc<App>, current: &Current, id: &str) -> Result<DeviceRecord, Response> {
    require(app, current, Action::RevokeDevice)?;
    let backend = app.backend.clone();
    let devices = blocking(move || backend.devices())
        .await
        .map_err(|e| failed(app, current, &e))?;
    let Some(device) = devices.into_iter().find(|d| d.id == id) else {
        return Err(error(
            app,
            current,
            StatusCode::NOT_FOUND,
            "No such device",
            "There is no device with this id; pick one from the list of devices.",
        ));
    };
    if device.status == DeviceStatus::Revoked {
        return Err(error(
            app,
            current,
            StatusCode::CONFLICT,
            "Already revoked",
            "This device is revoked already.",
        ));
    }
    Ok(device)
}

fn revoke_form(
    app: &App,
    current: &Current,
    device: &DeviceRecord,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    render(
        current,
        status,
        &RevokePage {
            chrome: Chrome::new(app, current, "Revoke a device"),
            device: device_row(device, app.now(), time::Duration::ZERO),
            csrf: current.session.csrf.clone(),
            error,
        },
    )
}

pub(crate) async fn revoke_page(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let current = match session(&app, &headers, conn).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    match revocable(&app, &current, &id).await {
        Ok(device) => revoke_form(&app, &current, &device, StatusCode::OK, None),
        Err(answer) => answer,
    }
}

#[derive(Deserialize)]
pub(crate) struct RevokeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    code: String,
}

pub(crate) async fn revoke(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(input): Form<RevokeForm>,
) -> Response {
    let current = match session(&app, &headers, conn).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    if let Err(refused) = check_csrf(&app, &current, &input.csrf) {
        return refused;
    }
    let device = match revocable(&app, &current, &id).await {
        Ok(device) => device,
        Err(answer) => return answer,
    };
    let Some(user) = current.user().cloned() else {
        return error(
            &app,
            &current,
            StatusCode::UNAUTHORIZED,
            "Sign in",
            "Sign in first.",
        );
    };
    let reason = input.reason.trim().to_owned();
    if reason.is_empty() {
        return revoke_form(
            &app,
            &current,
            &device,
            StatusCode::BAD_REQUEST,
            Some("Say why the device is revoked (the reason is required).".to_owned()),
        );
    }
    let record = match serde_json::to_value(&device) {
        Ok(v) => v,
        Err(e) => {
            return failed(
                &app,
                &current,
                &crate::error::Error::Invalid(format!("the device cannot be serialised: {e}")),
            );
        }
    };
    let request = SignatureRequest {
        action: Action::RevokeDevice,
        meaning: Meaning::Revoked,
        record_kind: "device".to_owned(),
        record_id: device.id.clone(),
        record,
        statement: serde_json::json!({ "reason": reason }),
    };
    let source = conn.peer.ip();
    let signature = match sign(
        &app,
        &current,
        &user,
        source,
        input.password,
        &input.code,
        request,
    )
    .await
    {
        Ok(signature) => signature,
        Err(NotSigned::Answer(answer)) => return answer,
        Err(NotSigned::Form(status, message)) => {
            return revoke_form(&app, &current, &device, status, Some(message));
        }
    };
    let (backend, by) = (app.backend.clone(), user.name.clone());
    let note = format!(
        "{reason} (signature in audit entry {})",
        signature.audit_seq
    );
    match blocking(move || backend.revoke_device(&id, &note, &by, source)).await {
        Ok(revoked) => {
            tracing::info!(device = %revoked.id, user = %user.name, "Device revoked in the console.");
            render(
                &current,
                StatusCode::OK,
                &RevokedPage {
                    chrome: Chrome::new(&app, &current, "Device revoked"),
                    device: device_row(&revoked, app.now(), time::Duration::ZERO),
                    signer: signature.signer,
                    signed_at: time_text(signature.signed_at),
                    sha256: signature.record_sha256,
                    seq: signature.audit_seq,
                },
            )
        }
        Err(e) => failed(&app, &current, &e),
    }
}
