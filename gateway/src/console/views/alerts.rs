//! `/alerts` and `/alerts/{id}/ack`: open and recent alerts; acknowledging one is an electronic
//! signature (re-authentication bound to the alert as shown), then the acknowledgement through
//! the alert monitor with the signer as the acknowledger.

use std::sync::Arc;

use askama::Template;
use axum::Extension;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::{Chrome, check_csrf, error, failed, render, require, roles_text, session, time_text};
use crate::alerts::{Alert, AlertState};
use crate::coldchain::AlertKind;
use crate::console::{App, ConnInfo, Current, blocking};
use crate::people::{Action, Meaning, SignatureRequest};

/// Resolved alerts shown under "recently resolved", at most.
const RECENT: usize = 20;

pub(crate) struct AlertRow {
    pub id: String,
    pub headline: String,
    pub severity: String,
    pub state: &'static str,
    pub raised: String,
    pub acknowledged: String,
    pub ackable: bool,
}

fn row(alert: &Alert) -> AlertRow {
    AlertRow {
        id: alert.id.to_string(),
        headline: alert.headline(),
        severity: format!("{:?}", alert.severity).to_lowercase(),
        state: alert.state.as_str(),
        raised: time_text(alert.raised_at),
        acknowledged: match (&alert.acknowledged_by, alert.acknowledged_at) {
            (Some(by), Some(at)) => format!("by {by} at {}", time_text(at)),
            _ => "not yet".to_owned(),
        },
        ackable: alert.acknowledged_at.is_none(),
    }
}

/// Whether an alert is about a fridge's temperature, so its products need a disposition.
pub(crate) fn is_cold_chain(alert: &Alert) -> bool {
    matches!(
        alert.kind,
        AlertKind::TemperatureHigh | AlertKind::TemperatureLow
    )
}

/// A product disposition the form offers, and how the record names it.
pub(crate) fn disposition(value: &str) -> Option<&'static str> {
    match value {
        "quarantined" => Some("quarantined"),
        "discarded" => Some("discarded"),
        "released_after_manufacturer_consultation" => {
            Some("released_after_manufacturer_consultation")
        }
        _ => None,
    }
}

#[derive(Template)]
#[template(path = "alerts.html")]
struct AlertsPage {
    chrome: Chrome,
    open: Vec<AlertRow>,
    recent: Vec<AlertRow>,
}

#[derive(Template)]
#[template(path = "ack.html")]
struct AckPage {
    chrome: Chrome,
    alert: AlertRow,
    csrf: String,
    cold_chain: bool,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "ack_done.html")]
struct AckDonePage {
    chrome: Chrome,
    signer: String,
    roles: String,
    meaning: &'static str,
    signed_at: String,
    headline: String,
    sha256: String,
    seq: u64,
    state: &'static str,
}

#[derive(Deserialize)]
pub(crate) struct AckForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    meaning: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    disposition: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    code: String,
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
    let backend = app.backend.clone();
    match blocking(move || backend.alerts(true)).await {
        Ok(alerts) => {
            let (resolved, open): (Vec<&Alert>, Vec<&Alert>) =
                alerts.iter().partition(|a| a.state == AlertState::Resolved);
            render(
                &current,
                StatusCode::OK,
                &AlertsPage {
                    chrome: Chrome::new(&app, &current, "Alerts"),
                    open: open.into_iter().map(row).collect(),
                    recent: resolved.into_iter().take(RECENT).map(row).collect(),
                },
            )
        }
        Err(e) => failed(&app, &current, &e),
    }
}

/// The signed-in person allowed to acknowledge and sign, and the alert `id`, not yet
/// acknowledged; otherwise the answer (sign-in, 403, 404, 409).
async fn ackable(app: &Arc<App>, current: &Current, id: &str) -> Result<Alert, Response> {
    require(app, current, Action::AcknowledgeAlert)?;
    require(app, current, Action::SignAlert)?;
    let backend = app.backend.clone();
    let alerts = blocking(move || backend.alerts(true))
        .await
        .map_err(|e| failed(app, current, &e))?;
    let Some(alert) = alerts.into_iter().find(|a| a.id.to_string() == id) else {
        return Err(error(
            app,
            current,
            StatusCode::NOT_FOUND,
            "No such alert",
            "There is no alert with this id; pick one from the list of alerts.",
        ));
    };
    if let (Some(by), Some(at)) = (&alert.acknowledged_by, alert.acknowledged_at) {
        return Err(error(
            app,
            current,
            StatusCode::CONFLICT,
            "Already acknowledged",
            format!("{by} acknowledged this alert at {}.", time_text(at)),
        ));
    }
    Ok(alert)
}

fn form_page(
    app: &App,
    current: &Current,
    alert: &Alert,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    render(
        current,
        status,
        &AckPage {
            chrome: Chrome::new(app, current, "Acknowledge and sign"),
            alert: row(alert),
            csrf: current.session.csrf.clone(),
            cold_chain: is_cold_chain(alert),
            error,
        },
    )
}

pub(crate) async fn form(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let current = match session(&app, &headers, conn).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    match ackable(&app, &current, &id).await {
        Ok(alert) => form_page(&app, &current, &alert, StatusCode::OK, None),
        Err(answer) => answer,
    }
}

pub(crate) async fn submit(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(input): Form<AckForm>,
) -> Response {
    let current = match session(&app, &headers, conn).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    if let Err(refused) = check_csrf(&app, &current, &input.csrf) {
        return refused;
    }
    let alert = match ackable(&app, &current, &id).await {
        Ok(alert) => alert,
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
    let refuse = |message: &str| {
        form_page(
            &app,
            &current,
            &alert,
            StatusCode::BAD_REQUEST,
            Some(message.to_owned()),
        )
    };
    let meaning: Meaning = match input.meaning.parse() {
        Ok(Meaning::Revoked) => {
            return refuse("An alert is acknowledged, reviewed or resolved, not revoked.");
        }
        Ok(m) => m,
        Err(e) => return refuse(&e),
    };
    let note = input.note.trim().to_owned();
    if note.is_empty() {
        return refuse("Say what corrective action was taken (the note is required).");
    }
    let disposition = if is_cold_chain(&alert) {
        match disposition(input.disposition.trim()) {
            Some(d) => Some(d),
            None => {
                return refuse(
                    "Choose what happens to the products: quarantined, discarded, or released after consulting the manufacturer.",
                );
            }
        }
    } else {
        None
    };
    let record = match serde_json::to_value(&alert) {
        Ok(v) => v,
        Err(e) => {
            return failed(
                &app,
                &current,
                &crate::error::Error::Invalid(format!("the alert cannot be serialised: {e}")),
            );
        }
    };
    let request = SignatureRequest {
        action: Action::SignAlert,
        meaning,
        record_kind: "alert".to_owned(),
        record_id: alert.id.to_string(),
        record,
        statement: serde_json::json!({ "note": note, "disposition": disposition }),
    };
    let source = conn.peer.ip();
    let signature = match super::sign(
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
        Err(super::NotSigned::Answer(answer)) => return answer,
        Err(super::NotSigned::Form(status, message)) => {
            return form_page(&app, &current, &alert, status, Some(message));
        }
    };
    let ack_note = match disposition {
        Some(d) => format!(
            "{}: {note}; products {}; signature in audit entry {}",
            meaning.as_str(),
            d.replace('_', " "),
            signature.audit_seq
        ),
        None => format!(
            "{}: {note}; signature in audit entry {}",
            meaning.as_str(),
            signature.audit_seq
        ),
    };
    let (backend, alert_id, by) = (app.backend.clone(), id.clone(), user.name.clone());
    let acknowledged =
        blocking(move || backend.acknowledge(&alert_id, &by, source, &ack_note)).await;
    match acknowledged {
        Ok(done) => {
            tracing::info!(alert = %done.id, user = %user.name, meaning = meaning.as_str(), "Alert signed and acknowledged in the console.");
            render(
                &current,
                StatusCode::OK,
                &AckDonePage {
                    chrome: Chrome::new(&app, &current, "Signed"),
                    signer: signature.signer,
                    roles: roles_text(&user),
                    meaning: meaning.as_str(),
                    signed_at: time_text(signature.signed_at),
                    headline: alert.headline(),
                    sha256: signature.record_sha256,
                    seq: signature.audit_seq,
                    state: done.state.as_str(),
                },
            )
        }
        Err(e) => failed(&app, &current, &e),
    }
}
