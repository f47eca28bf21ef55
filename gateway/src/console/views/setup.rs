//! `/setup/{token}`: the set-up link. Shows the TOTP secret, takes a password and a code, and
//! shows the recovery codes once. Under a DNS name it also offers to add a passkey: the page
//! carries a registration challenge (kept for the session), `/assets/passkey.js` puts the
//! browser's answer into the form, and the passkey is stored once set-up has succeeded.

use std::sync::Arc;

use askama::Template;
use axum::Extension;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::passkeys::host;
use super::{Chrome, check_csrf, error, failed, render, time_text};
use crate::console::ceremonies::{Ceremony, Purpose};
use crate::console::{App, ConnInfo, Current, blocking};
use crate::people::{SetupError, SetupOffer};

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupPage {
    chrome: Chrome,
    token: String,
    csrf: String,
    name: String,
    roles: String,
    secret: String,
    uri: String,
    expires: String,
    error: Option<String>,
    /// The passkey registration challenge (JSON), when passkeys work under this host.
    passkey_options: Option<String>,
    /// Why passkeys are not offered here.
    passkeys_unavailable: Option<String>,
}

#[derive(Template)]
#[template(path = "setup_done.html")]
struct SetupDonePage {
    chrome: Chrome,
    name: String,
    codes: Vec<String>,
    /// What became of the passkey offered with the form, if one was.
    passkey: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct SetupForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    password2: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    credential: String,
    #[serde(default)]
    passkey_label: String,
}

fn invalid(app: &App, current: &Current) -> Response {
    error(
        app,
        current,
        StatusCode::NOT_FOUND,
        "This set-up link does not work",
        "It was used already, replaced by a newer one, or has expired (links work once, for 24 hours). Ask an admin for a new one: rxgate user reset-factors NAME.",
    )
}

async fn form_page(
    app: &Arc<App>,
    current: &Current,
    headers: &HeaderMap,
    token: &str,
    offer: &SetupOffer,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let (passkey_options, passkeys_unavailable) =
        match app.people.relying_party(host(headers).as_deref()) {
            Ok(rp) => {
                let (people, name) = (app.people.clone(), offer.name.clone());
                match blocking(move || people.start_passkey_registration(&name, &rp)).await {
                    Ok((options, pending)) => {
                        app.ceremonies.put(
                            &current.id,
                            Purpose::Setup,
                            Ceremony::Registration(pending),
                            app.now(),
                        );
                        (serde_json::to_string(&options).ok(), None)
                    }
                    Err(e) => (None, Some(e.to_string())),
                }
            }
            Err(why) => (None, Some(why.to_string())),
        };
    render(
        current,
        status,
        &SetupPage {
            chrome: Chrome::new(app, current, "Set up your account"),
            token: token.to_owned(),
            csrf: current.session.csrf.clone(),
            name: offer.name.clone(),
            roles: offer
                .roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            secret: offer.totp_secret.clone(),
            uri: offer.otpauth_uri.clone(),
            expires: time_text(offer.expires_at),
            error,
            passkey_options,
            passkeys_unavailable,
        },
    )
}

async fn offer(app: &Arc<App>, token: &str) -> crate::error::Result<Option<SetupOffer>> {
    let (people, token, now) = (app.people.clone(), token.to_owned(), app.now());
    blocking(move || Ok(people.setup_offer(&token, now)?.ok())).await
}

pub(crate) async fn page(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let current = match app.current(&headers, conn.peer.ip()).await {
        Ok(c) => c,
        Err(e) => return crate::console::plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match offer(&app, &token).await {
        Ok(Some(offer)) => {
            form_page(
                &app,
                &current,
                &headers,
                &token,
                &offer,
                StatusCode::OK,
                None,
            )
            .await
        }
        Ok(None) => invalid(&app, &current),
        Err(e) => failed(&app, &current, &e),
    }
}

pub(crate) async fn submit(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path(token): Path<String>,
    headers: HeaderMap,
    Form(form): Form<SetupForm>,
) -> Response {
    let current = match app.current(&headers, conn.peer.ip()).await {
        Ok(c) => c,
        Err(e) => return crate::console::plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let Err(refused) = check_csrf(&app, &current, &form.csrf) {
        return refused;
    }
    let offered = match offer(&app, &token).await {
        Ok(Some(offer)) => offer,
        Ok(None) => return invalid(&app, &current),
        Err(e) => return failed(&app, &current, &e),
    };
    if form.password != form.password2 {
        return form_page(
            &app,
            &current,
            &headers,
            &token,
            &offered,
            StatusCode::BAD_REQUEST,
            Some("The two passwords differ; type the same password twice.".to_owned()),
        )
        .await;
    }
    let (people, t, now) = (app.people.clone(), token.clone(), app.now());
    let (password, code) = (form.password, form.code);
    let outcome = blocking(move || people.redeem_setup(&t, &password, code.trim(), now)).await;
    match outcome {
        Ok(Ok(done)) => {
            let passkey = add_passkey(
                &app,
                &current,
                &done.name,
                form.passkey_label,
                form.credential,
                conn.peer.ip(),
            )
            .await;
            render(
                &current,
                StatusCode::OK,
                &SetupDonePage {
                    chrome: Chrome::new(&app, &current, "Your account is ready"),
                    name: done.name,
                    codes: done.recovery_codes,
                    passkey,
                },
            )
        }
        Ok(Err(SetupError::InvalidLink)) => invalid(&app, &current),
        Ok(Err(refused)) => {
            form_page(
                &app,
                &current,
                &headers,
                &token,
                &offered,
                StatusCode::BAD_REQUEST,
                Some(refused.to_string()),
            )
            .await
        }
        Err(e) => failed(&app, &current, &e),
    }
}

/// Stores the passkey the set-up form carried, once set-up has succeeded; what to tell the
/// person about it (`None` when none was offered).
async fn add_passkey(
    app: &Arc<App>,
    current: &Current,
    name: &str,
    label: String,
    credential: String,
    source: std::net::IpAddr,
) -> Option<String> {
    let pending = app.ceremonies.take(&current.id, Purpose::Setup, app.now());
    if credential.trim().is_empty() {
        return None;
    }
    let pending = match pending {
        Some(Ceremony::Registration(p)) if p.name() == name => p,
        _ => {
            return Some(
                "The passkey was not added: its prompt expired. Sign in and add it under Passkeys."
                    .to_owned(),
            );
        }
    };
    let people = app.people.clone();
    let outcome = blocking(move || {
        people.finish_passkey_registration(&pending, &label, &credential, Some(source))
    })
    .await;
    Some(match outcome {
        Ok(Ok(added)) => format!(
            "Passkey \u{201c}{}\u{201d} added: it signs you in under {} instead of a code.",
            added.label, added.rp_id
        ),
        Ok(Err(refused)) => {
            format!("The passkey was not added: {refused} Sign in and add it under Passkeys.")
        }
        Err(e) => format!("The passkey was not added: {e}. Sign in and add it under Passkeys."),
    })
}
