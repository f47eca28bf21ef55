//! `/setup/{token}`: the set-up link. Shows the TOTP secret, takes a password and a code, and
//! shows the recovery codes once.

use std::sync::Arc;

use askama::Template;
use axum::Extension;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::{Chrome, check_csrf, error, failed, render, time_text};
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
}

#[derive(Template)]
#[template(path = "setup_done.html")]
struct SetupDonePage {
    chrome: Chrome,
    name: String,
    codes: Vec<String>,
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

fn form_page(
    app: &App,
    current: &Current,
    token: &str,
    offer: &SetupOffer,
    status: StatusCode,
    error: Option<String>,
) -> Response {
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
        Ok(Some(offer)) => form_page(&app, &current, &token, &offer, StatusCode::OK, None),
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
            &token,
            &offered,
            StatusCode::BAD_REQUEST,
            Some("The two passwords differ; type the same password twice.".to_owned()),
        );
    }
    let (people, t, now) = (app.people.clone(), token.clone(), app.now());
    let (password, code) = (form.password, form.code);
    let outcome = blocking(move || people.redeem_setup(&t, &password, code.trim(), now)).await;
    match outcome {
        Ok(Ok(done)) => render(
            &current,
            StatusCode::OK,
            &SetupDonePage {
                chrome: Chrome::new(&app, &current, "Your account is ready"),
                name: done.name,
                codes: done.recovery_codes,
            },
        ),
        Ok(Err(SetupError::InvalidLink)) => invalid(&app, &current),
        Ok(Err(refused)) => form_page(
            &app,
            &current,
            &token,
            &offered,
            StatusCode::BAD_REQUEST,
            Some(refused.to_string()),
        ),
        Err(e) => failed(&app, &current, &e),
    }
}
