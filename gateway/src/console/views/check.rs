//! `/fridges/{id}/check`: the daily min/max check. The form shows the fridge's current
//! temperature and its minimum and maximum since the last check; recording the check is an
//! electronic signature (password and a new second factor, meaning `checked`) bound to those
//! values as shown, then the check through the cold-chain monitor, which stores the values it
//! held and resets the extremes to the current temperature.

use std::sync::Arc;

use askama::Template;
use axum::Extension;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::fridge::{celsius, check_text, since_check_text};
use super::{Chrome, check_csrf, error, failed, render, require, session, time_text};
use crate::coldchain::live::FridgeNow;
use crate::console::{App, ConnInfo, Current, blocking};
use crate::people::{Action, Meaning, SignatureRequest};

#[derive(Template)]
#[template(path = "check.html")]
struct CheckPage {
    chrome: Chrome,
    device: String,
    current: String,
    since_check: String,
    check: String,
    csrf: String,
    shown: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "check_done.html")]
struct CheckDonePage {
    chrome: Chrome,
    device: String,
    signer: String,
    signed_at: String,
    current: String,
    min: String,
    max: String,
    since_check: String,
    sha256: String,
    seq: u64,
}

#[derive(Deserialize)]
pub(crate) struct CheckForm {
    #[serde(default)]
    csrf: String,
    /// The values the form showed, as the signer saw them (`current;min;max;since`).
    #[serde(default)]
    shown: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    code: String,
}

/// What the form shows, in one field: the signature is bound to these values.
fn shown(fridge: &FridgeNow) -> String {
    let s = fridge.since_check;
    format!(
        "{};{};{};{}",
        celsius(s.map(|s| s.current)),
        celsius(s.map(|s| s.min)),
        celsius(s.map(|s| s.max)),
        s.map_or_else(|| "—".to_owned(), |s| time_text(s.since))
    )
}

async fn fridge(app: &Arc<App>, current: &Current, device: &str) -> Result<FridgeNow, Response> {
    let backend = app.backend.clone();
    let fridges = blocking(move || backend.fridges())
        .await
        .map_err(|e| failed(app, current, &e))?;
    fridges
        .into_iter()
        .find(|f| f.device == device)
        .ok_or_else(|| {
            error(
                app,
                current,
                StatusCode::NOT_FOUND,
                "No such fridge",
                "No monitored fridge has this id; pick one from the list of fridges.",
            )
        })
}

fn form_page(
    app: &App,
    current: &Current,
    fridge: &FridgeNow,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    render(
        current,
        status,
        &CheckPage {
            chrome: Chrome::new(app, current, "Min/max check"),
            device: fridge.device.clone(),
            current: celsius(fridge.temperature),
            since_check: since_check_text(fridge),
            check: check_text(fridge).0,
            csrf: current.session.csrf.clone(),
            shown: shown(fridge),
            error,
        },
    )
}

pub(crate) async fn form(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path(device): Path<String>,
    headers: HeaderMap,
) -> Response {
    let current = match session(&app, &headers, conn).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    if let Err(answer) = require(&app, &current, Action::RecordMinMaxCheck) {
        return answer;
    }
    match fridge(&app, &current, &device).await {
        Ok(f) => form_page(&app, &current, &f, StatusCode::OK, None),
        Err(answer) => answer,
    }
}

pub(crate) async fn submit(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path(device): Path<String>,
    headers: HeaderMap,
    Form(input): Form<CheckForm>,
) -> Response {
    let current = match session(&app, &headers, conn).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    if let Err(refused) = check_csrf(&app, &current, &input.csrf) {
        return refused;
    }
    let user = match require(&app, &current, Action::RecordMinMaxCheck) {
        Ok(user) => user.clone(),
        Err(answer) => return answer,
    };
    let fridge = match fridge(&app, &current, &device).await {
        Ok(f) => f,
        Err(answer) => return answer,
    };
    let parts: Vec<&str> = input.shown.split(';').collect();
    let [current_seen, min_seen, max_seen, since_seen] = parts[..] else {
        return form_page(
            &app,
            &current,
            &fridge,
            StatusCode::BAD_REQUEST,
            Some("The form lost the values it showed; read them again below and sign.".to_owned()),
        );
    };
    let now = app.now();
    let note = input.note.trim().to_owned();
    let request = SignatureRequest {
        action: Action::RecordMinMaxCheck,
        meaning: Meaning::Checked,
        record_kind: "minmax_check".to_owned(),
        record_id: format!("{device}@{}", crate::clock::rfc3339_seconds(now)),
        record: serde_json::json!({
            "device": device,
            "current": current_seen,
            "min_since_last_check": min_seen,
            "max_since_last_check": max_seen,
            "since": since_seen,
        }),
        statement: serde_json::json!({ "note": note }),
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
            return form_page(&app, &current, &fridge, status, Some(message));
        }
    };
    let (backend, id, by, seq) = (
        app.backend.clone(),
        device.clone(),
        user.name.clone(),
        signature.audit_seq,
    );
    let recorded = blocking(move || {
        let check = backend.min_max_check(&id, &by, source, &note, Some(seq))?;
        let after = backend.fridges()?.into_iter().find(|f| f.device == id);
        Ok((check, after))
    })
    .await;
    match recorded {
        Ok((check, after)) => {
            tracing::info!(device = %device, user = %user.name, "Min/max check signed in the console.");
            render(
                &current,
                StatusCode::OK,
                &CheckDonePage {
                    chrome: Chrome::new(&app, &current, "Checked"),
                    signer: signature.signer,
                    signed_at: time_text(signature.signed_at),
                    current: celsius(check.values.current),
                    min: celsius(check.values.min),
                    max: celsius(check.values.max),
                    since_check: after
                        .as_ref()
                        .map_or_else(|| "—".to_owned(), since_check_text),
                    sha256: signature.record_sha256,
                    seq: signature.audit_seq,
                    device,
                },
            )
        }
        Err(e) => failed(&app, &current, &e),
    }
}
