//! `/account/passkeys`: the signed-in person's passkeys: the list (name, where it works, added,
//! last used), adding one (a WebAuthn registration: the page carries the challenge,
//! `/assets/passkey.js` asks the browser and posts its answer with the form), removing one.
//! Every signed-in person manages their own passkeys, whatever their roles; each change is an
//! audit entry under their name.

use std::sync::Arc;

use askama::Template;
use axum::Extension;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{Chrome, check_csrf, failed, render, time_text};
use crate::console::ceremonies::{Ceremony, Purpose};
use crate::console::{App, ConnInfo, Current, blocking, plain};
use crate::people::{MAX_PASSKEYS, PasskeyInfo};

/// A passkey as listed.
pub(crate) struct Row {
    pub id: String,
    pub label: String,
    pub rp_id: String,
    pub created: String,
    pub last_used: String,
    pub sign_count: u32,
}

#[derive(Template)]
#[template(path = "passkeys.html")]
struct PasskeysPage {
    chrome: Chrome,
    csrf: String,
    rows: Vec<Row>,
    /// The registration challenge (JSON for `navigator.credentials.create`), when passkeys can
    /// be added under this host.
    options: Option<String>,
    /// Why passkeys cannot be added here.
    unavailable: Option<String>,
    rp_id: String,
    max: usize,
    message: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct AddForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    credential: String,
}

#[derive(Deserialize)]
pub(crate) struct RemoveForm {
    #[serde(default)]
    csrf: String,
}

/// The `Host` header: the name the browser reached the console under.
pub(crate) fn host(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
}

fn rows(passkeys: Vec<PasskeyInfo>) -> Vec<Row> {
    passkeys
        .into_iter()
        .map(|p| Row {
            id: p.id,
            label: p.label,
            rp_id: p.rp_id,
            created: time_text(p.created_at),
            last_used: p.last_used.map_or_else(|| "never".to_owned(), time_text),
            sign_count: p.sign_count,
        })
        .collect()
}

/// Renders the page for `current`'s person with a fresh challenge (kept for the session).
async fn page_for(
    app: &Arc<App>,
    current: &Current,
    headers: &HeaderMap,
    status: StatusCode,
    message: Option<String>,
    error: Option<String>,
) -> Response {
    let Some(user) = current.user() else {
        return current.finish(Redirect::to("/signin").into_response());
    };
    let (people, name) = (app.people.clone(), user.name.clone());
    let rp = app.people.relying_party(host(headers).as_deref());
    let rp_id = rp.as_ref().map(|r| r.id().to_owned()).unwrap_or_default();
    let outcome = blocking(move || {
        let list = people.passkeys(&name)?;
        let challenge = match rp {
            Ok(rp) if list.len() < MAX_PASSKEYS => {
                Some(Ok(people.start_passkey_registration(&name, &rp)?))
            }
            Ok(_) => None,
            Err(why) => Some(Err(why)),
        };
        Ok((list, challenge))
    })
    .await;
    let (list, challenge) = match outcome {
        Ok(found) => found,
        Err(e) => return failed(app, current, &e),
    };
    let (options, unavailable) = match challenge {
        Some(Ok((options, pending))) => {
            app.ceremonies.put(
                &current.id,
                Purpose::Register,
                Ceremony::Registration(pending),
                app.now(),
            );
            (serde_json::to_string(&options).ok(), None)
        }
        Some(Err(why)) => (None, Some(why.to_string())),
        None => (None, None),
    };
    render(
        current,
        status,
        &PasskeysPage {
            chrome: Chrome::new(app, current, "Passkeys"),
            csrf: current.session.csrf.clone(),
            rows: rows(list),
            options,
            unavailable,
            rp_id,
            max: MAX_PASSKEYS,
            message,
            error,
        },
    )
}

pub(crate) async fn page(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    match app.current(&headers, conn.peer.ip()).await {
        Ok(current) => page_for(&app, &current, &headers, StatusCode::OK, None, None).await,
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub(crate) async fn add(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Form(form): Form<AddForm>,
) -> Response {
    let current = match app.current(&headers, conn.peer.ip()).await {
        Ok(c) => c,
        Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let Err(refused) = check_csrf(&app, &current, &form.csrf) {
        return refused;
    }
    let Some(user) = current.user() else {
        return current.finish(Redirect::to("/signin").into_response());
    };
    let pending = match app
        .ceremonies
        .take(&current.id, Purpose::Register, app.now())
    {
        Some(Ceremony::Registration(p)) if p.name() == user.name => p,
        _ => {
            return page_for(
                &app,
                &current,
                &headers,
                StatusCode::BAD_REQUEST,
                None,
                Some(
                    "The passkey prompt expired or was replaced by a newer page; add the passkey again."
                        .to_owned(),
                ),
            )
            .await;
        }
    };
    if form.credential.trim().is_empty() {
        return page_for(
            &app,
            &current,
            &headers,
            StatusCode::BAD_REQUEST,
            None,
            Some("No passkey came with the form: adding a passkey needs JavaScript, and the prompt on your device must be completed.".to_owned()),
        )
        .await;
    }
    let (people, source) = (app.people.clone(), conn.peer.ip());
    let (label, credential) = (form.label, form.credential);
    let outcome = blocking(move || {
        people.finish_passkey_registration(&pending, &label, &credential, Some(source))
    })
    .await;
    match outcome {
        Ok(Ok(added)) => {
            page_for(
                &app,
                &current,
                &headers,
                StatusCode::OK,
                Some(format!(
                    "Passkey \u{201c}{}\u{201d} added: it signs you in under {} instead of a code.",
                    added.label, added.rp_id
                )),
                None,
            )
            .await
        }
        Ok(Err(refused)) => {
            page_for(
                &app,
                &current,
                &headers,
                StatusCode::BAD_REQUEST,
                None,
                Some(refused.to_string()),
            )
            .await
        }
        Err(e) => failed(&app, &current, &e),
    }
}

pub(crate) async fn remove(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<RemoveForm>,
) -> Response {
    let current = match app.current(&headers, conn.peer.ip()).await {
        Ok(c) => c,
        Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let Err(refused) = check_csrf(&app, &current, &form.csrf) {
        return refused;
    }
    let Some(user) = current.user() else {
        return current.finish(Redirect::to("/signin").into_response());
    };
    let (people, name, source) = (app.people.clone(), user.name.clone(), conn.peer.ip());
    let outcome = blocking(move || people.remove_passkey(&name, &id, &name, Some(source))).await;
    match outcome {
        Ok(removed) => {
            page_for(
                &app,
                &current,
                &headers,
                StatusCode::OK,
                Some(format!(
                    "Passkey \u{201c}{}\u{201d} removed.",
                    removed.label
                )),
                None,
            )
            .await
        }
        Err(e @ crate::error::Error::NotFound(_)) => {
            page_for(
                &app,
                &current,
                &headers,
                StatusCode::NOT_FOUND,
                None,
                Some(e.to_string()),
            )
            .await
        }
        Err(e) => failed(&app, &current, &e),
    }
}

const SCRIPT: &str = include_str!("../assets/passkey.js");

/// `/assets/passkey.js`: the browser side of the ceremonies.
pub(crate) async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}
