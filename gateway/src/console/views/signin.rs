//! `/signin` and `/signout`. Signing in replaces the session (new id, new CSRF token); refusals
//! say no more than `People::verify_sign_in` does, and count towards its throttling.

use std::sync::Arc;

use askama::Template;
use axum::Extension;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{Chrome, check_csrf, failed, render, second_factor};
use crate::console::sessions::{self, SignedIn};
use crate::console::{App, ConnInfo, Current, blocking, plain};
use crate::people::SignInError;

#[derive(Template)]
#[template(path = "signin.html")]
struct SignInPage {
    chrome: Chrome,
    csrf: String,
    name: String,
    error: Option<String>,
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
}

#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

fn form(
    app: &App,
    current: &Current,
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
        Ok(current) => form(&app, &current, StatusCode::OK, "", None),
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
    let factor = second_factor(&input.code);
    let (n, password) = (name.clone(), input.password);
    let outcome = tokio::task::spawn_blocking(move || {
        people.verify_sign_in(&n, &password, &factor, source, now)
    })
    .await;
    match outcome {
        Ok(Ok(identity)) => {
            app.sessions.remove(&current.id);
            let user = SignedIn {
                name: identity.name,
                roles: identity.roles,
            };
            match app.sessions.create(Some(user), now) {
                Ok((id, _)) => {
                    tracing::info!(user = %name, %source, "Signed in to the console.");
                    let mut response = Redirect::to("/").into_response();
                    if let Ok(cookie) = HeaderValue::from_str(&sessions::set_cookie(&id)) {
                        response.headers_mut().append(header::SET_COOKIE, cookie);
                    }
                    response
                }
                Err(e) => failed(&app, &current, &e),
            }
        }
        Ok(Err(SignInError::Store(e))) => failed(&app, &current, &e),
        Ok(Err(e @ SignInError::TryLater { .. })) => form(
            &app,
            &current,
            StatusCode::TOO_MANY_REQUESTS,
            &name,
            Some(e.to_string()),
        ),
        Ok(Err(e)) => form(
            &app,
            &current,
            StatusCode::UNAUTHORIZED,
            &name,
            Some(e.to_string()),
        ),
        Err(e) => failed(
            &app,
            &current,
            &crate::error::Error::Invalid(format!("the sign-in task failed: {e}")),
        ),
    }
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
