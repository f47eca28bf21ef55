//! `/signin` and `/signout`. Signing in replaces the session (new id, new CSRF token); refusals
//! say no more than `People::verify_sign_in` does, and count towards its throttling.
//!
//! With a passkey: the sign-in form's "Use a passkey" button posts the name and password
//! without a code; when the password is right the answer is a page carrying the passkey
//! challenge (kept for the session), whose script posts the passkey's answer to
//! `/signin/passkey`.

use std::sync::Arc;

use askama::Template;
use axum::Extension;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::passkeys::host;
use super::{Chrome, check_csrf, failed, render, second_factor};
use crate::console::ceremonies::{Ceremony, Purpose};
use crate::console::sessions::{self, SignedIn};
use crate::console::{App, ConnInfo, Current, blocking, plain};
use crate::people::{Identity, SecondFactor, SignInError};

#[derive(Template)]
#[template(path = "signin.html")]
struct SignInPage {
    chrome: Chrome,
    csrf: String,
    name: String,
    error: Option<String>,
    /// Why the passkey button is not offered under this host (an IP address, say).
    passkeys_unavailable: Option<String>,
}

#[derive(Template)]
#[template(path = "signin_passkey.html")]
struct PasskeyPage {
    chrome: Chrome,
    csrf: String,
    name: String,
    rp_id: String,
    /// The challenge, JSON for `navigator.credentials.get`.
    options: String,
}

#[derive(Deserialize)]
pub(crate) struct SignInForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    code: String,
    /// `passkey`: the password now, a passkey instead of the code next.
    #[serde(default)]
    method: String,
}

#[derive(Deserialize)]
pub(crate) struct PasskeyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    assertion: String,
}

#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

fn form(
    app: &App,
    current: &Current,
    headers: &HeaderMap,
    status: StatusCode,
    name: &str,
    error: Option<String>,
) -> Response {
    render(
        current,
        status,
        &SignInPage {
            chrome: Chrome::new(app, current, "Sign in"),
            csrf: current.session.csrf.clone(),
            name: name.to_owned(),
            error,
            passkeys_unavailable: app
                .people
                .relying_party(host(headers).as_deref())
                .err()
                .map(|why| why.to_string()),
        },
    )
}

pub(crate) async fn page(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    match app.current(&headers, conn.peer.ip()).await {
        Ok(current) if current.user().is_some() => Redirect::to("/").into_response(),
        Ok(current) => form(&app, &current, &headers, StatusCode::OK, "", None),
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub(crate) async fn submit(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Form(input): Form<SignInForm>,
) -> Response {
    let current = match app.current(&headers, conn.peer.ip()).await {
        Ok(c) => c,
        Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let Err(refused) = check_csrf(&app, &current, &input.csrf) {
        return refused;
    }
    let (people, now, source) = (app.people.clone(), app.now(), conn.peer.ip());
    let name = input.name.trim().to_owned();
    if input.method == "passkey" {
        return passkey_challenge(&app, &current, &headers, name, input.password, source).await;
    }
    let factor = second_factor(&input.code);
    let (n, password) = (name.clone(), input.password);
    let outcome = tokio::task::spawn_blocking(move || {
        people.verify_sign_in(&n, &password, &factor, source, now)
    })
    .await;
    finish(&app, &current, &headers, &name, source, outcome)
}

/// The answer to a sign-in's outcome: the new session, or the form again with why not.
fn finish(
    app: &App,
    current: &Current,
    headers: &HeaderMap,
    name: &str,
    source: std::net::IpAddr,
    outcome: std::result::Result<
        std::result::Result<Identity, SignInError>,
        tokio::task::JoinError,
    >,
) -> Response {
    match outcome {
        Ok(Ok(identity)) => {
            app.sessions.remove(&current.id);
            let user = SignedIn {
                name: identity.name,
                roles: identity.roles,
            };
            match app.sessions.create(Some(user), app.now()) {
                Ok((id, _)) => {
                    tracing::info!(user = %name, %source, "Signed in to the console.");
                    let mut response = Redirect::to("/").into_response();
                    if let Ok(cookie) = HeaderValue::from_str(&sessions::set_cookie(&id)) {
                        response.headers_mut().append(header::SET_COOKIE, cookie);
                    }
                    response
                }
                Err(e) => failed(app, current, &e),
            }
        }
        Ok(Err(SignInError::Store(e))) => failed(app, current, &e),
        Ok(Err(e @ SignInError::TryLater { .. })) => form(
            app,
            current,
            headers,
            StatusCode::TOO_MANY_REQUESTS,
            name,
            Some(e.to_string()),
        ),
        Ok(Err(e @ SignInError::NoPasskey { .. })) => form(
            app,
            current,
            headers,
            StatusCode::BAD_REQUEST,
            name,
            Some(e.to_string()),
        ),
        Ok(Err(e)) => form(
            app,
            current,
            headers,
            StatusCode::UNAUTHORIZED,
            name,
            Some(e.to_string()),
        ),
        Err(e) => failed(
            app,
            current,
            &crate::error::Error::Invalid(format!("the sign-in task failed: {e}")),
        ),
    }
}

/// The first half of a passkey sign-in: the password is checked, then the page with the
/// passkey challenge.
async fn passkey_challenge(
    app: &Arc<App>,
    current: &Current,
    headers: &HeaderMap,
    name: String,
    password: String,
    source: std::net::IpAddr,
) -> Response {
    let rp = match app.people.relying_party(host(headers).as_deref()) {
        Ok(rp) => rp,
        Err(why) => {
            return form(
                app,
                current,
                headers,
                StatusCode::BAD_REQUEST,
                &name,
                Some(why.to_string()),
            );
        }
    };
    let (people, now, n) = (app.people.clone(), app.now(), name.clone());
    let outcome = tokio::task::spawn_blocking(move || {
        people.passkey_challenge(&n, &password, &rp, source, now)
    })
    .await;
    match outcome {
        Ok(Ok((options, pending))) => {
            let Ok(options) = serde_json::to_string(&options) else {
                return plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The passkey challenge could not be written.\n",
                );
            };
            let rp_id = pending.rp_id().to_owned();
            app.ceremonies.put(
                &current.id,
                Purpose::SignIn,
                Ceremony::SignIn(pending),
                app.now(),
            );
            render(
                current,
                StatusCode::OK,
                &PasskeyPage {
                    chrome: Chrome::new(app, current, "Confirm with your passkey"),
                    csrf: current.session.csrf.clone(),
                    name,
                    rp_id,
                    options,
                },
            )
        }
        Ok(Err(e)) => finish(app, current, headers, &name, source, Ok(Err(e))),
        Err(e) => finish(app, current, headers, &name, source, Err(e)),
    }
}

/// `POST /signin/passkey`: the passkey's answer to the challenge this session was given.
pub(crate) async fn passkey(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Form(input): Form<PasskeyForm>,
) -> Response {
    let current = match app.current(&headers, conn.peer.ip()).await {
        Ok(c) => c,
        Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let Err(refused) = check_csrf(&app, &current, &input.csrf) {
        return refused;
    }
    let now = app.now();
    let Some(Ceremony::SignIn(pending)) = app.ceremonies.take(&current.id, Purpose::SignIn, now)
    else {
        return form(
            &app,
            &current,
            &headers,
            StatusCode::BAD_REQUEST,
            "",
            Some(
                "The passkey prompt expired (it lasts 5 minutes) or was already answered; sign in again."
                    .to_owned(),
            ),
        );
    };
    let (people, source) = (app.people.clone(), conn.peer.ip());
    let name = pending.name().to_owned();
    let factor = SecondFactor::Passkey {
        pending: Arc::new(pending),
        response: input.assertion,
    };
    let n = name.clone();
    let outcome =
        tokio::task::spawn_blocking(move || people.verify_sign_in(&n, "", &factor, source, now))
            .await;
    finish(&app, &current, &headers, &name, source, outcome)
}

pub(crate) async fn sign_out(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Form(input): Form<CsrfOnly>,
) -> Response {
    let current = match app.current(&headers, conn.peer.ip()).await {
        Ok(c) => c,
        Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let Err(refused) = check_csrf(&app, &current, &input.csrf) {
        return refused;
    }
    app.sessions.remove(&current.id);
    if let Some(user) = current.user() {
        let (people, name, source) = (app.people.clone(), user.name.clone(), conn.peer.ip());
        if let Err(e) = blocking(move || people.signed_out(&name, Some(source), "signed_out")).await
        {
            return failed(&app, &current, &e);
        }
        tracing::info!(user = %user.name, "Signed out of the console.");
    }
    let mut response = Redirect::to("/signin").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&sessions::clear_cookie()) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}
