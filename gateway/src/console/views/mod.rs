//! One module per page; each handler extracts, authorises, calls the backend or `People`, and
//! renders its typed template.
//!
//! Helpers return `Result<_, Response>`: the error *is* the answer to send (a redirect, a 403
//! page), built once per request, so its size does not matter.
#![allow(clippy::result_large_err)]

mod alerts;
pub(crate) mod audit;
mod check;
pub(crate) mod devices;
mod excursion;
mod fridge;
mod live;
mod overview;
mod passkeys;
mod setup;
mod signin;
mod users;

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::sessions::{SignedIn, csrf_matches};
use super::{App, Current, MAX_BODY, plain, security_headers};
use crate::people::Action;

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(overview::page))
        .route("/setup/{token}", get(setup::page).post(setup::submit))
        .route("/signin", get(signin::page).post(signin::submit))
        .route("/signout", axum::routing::post(signin::sign_out))
        .route("/signin/passkey", axum::routing::post(signin::passkey))
        .route("/account/passkeys", get(passkeys::page).post(passkeys::add))
        .route(
            "/account/passkeys/{id}/remove",
            axum::routing::post(passkeys::remove),
        )
        .route("/assets/passkey.js", get(passkeys::script))
        .route("/alerts", get(alerts::list))
        .route("/alerts/{id}/ack", get(alerts::form).post(alerts::submit))
        .route("/devices", get(devices::list))
        .route("/devices/enroll", axum::routing::post(devices::enroll))
        .route(
            "/devices/{id}/revoke",
            get(devices::revoke_page).post(devices::revoke),
        )
        .route("/audit", get(audit::page))
        .route("/audit/export.csv", get(audit::export_csv))
        .route("/audit/export.json", get(audit::export_json))
        .route("/users", get(users::list))
        .route("/users/add", axum::routing::post(users::add))
        .route("/users/{name}/{change}", axum::routing::post(users::change))
        .route("/events", get(live::events))
        .route("/fridges", get(fridge::index))
        .route("/fridges/{id}", get(fridge::log))
        .route("/fridges/{id}/chart.svg", get(fridge::chart))
        .route("/fridges/{id}/log.csv", get(fridge::csv))
        .route("/fridges/{id}/check", get(check::form).post(check::submit))
        .route("/excursions/{device}/{id}/report", get(excursion::report))
        .route("/assets/console.css", get(stylesheet))
        .route("/assets/live.js", get(live_script))
        .fallback(not_found)
        .with_state(app)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(security_headers))
}

const STYLESHEET: &str = include_str!("../assets/console.css");

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLESHEET,
    )
        .into_response()
}

const LIVE_SCRIPT: &str = include_str!("../assets/live.js");

async fn live_script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        LIVE_SCRIPT,
    )
        .into_response()
}

async fn not_found() -> Response {
    plain(
        StatusCode::NOT_FOUND,
        "Not found. The console starts at /.\n",
    )
}

/// The signed-in person, as the page header shows them (with the sign-out form's token).
pub(crate) struct Nav {
    pub name: String,
    pub roles: String,
    pub csrf: String,
    /// The pages this person's roles open: fridges, alerts and devices (status), the audit
    /// trail, accounts.
    pub status: bool,
    pub reports: bool,
    pub audit: bool,
    pub users: bool,
}

/// What every page's frame needs.
pub(crate) struct Chrome {
    pub title: String,
    pub site: String,
    pub nav: Option<Nav>,
}

impl Chrome {
    pub fn new(app: &App, current: &Current, title: &str) -> Chrome {
        Chrome {
            title: title.to_owned(),
            site: app.site.clone(),
            nav: current.user().map(|u| Nav {
                name: u.name.clone(),
                roles: roles_text(u),
                csrf: current.session.csrf.clone(),
                status: crate::people::may(&u.roles, Action::ViewStatus),
                reports: crate::people::may(&u.roles, Action::ViewReports),
                audit: crate::people::may(&u.roles, Action::ViewAudit),
                users: crate::people::may(&u.roles, Action::ManageUsers),
            }),
        }
    }
}

pub(crate) fn roles_text(user: &SignedIn) -> String {
    user.roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    chrome: Chrome,
    heading: String,
    message: String,
    back: String,
    back_label: String,
}

/// `template` rendered with `status`, and the session's cookie if it is new.
pub(crate) fn render(current: &Current, status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => current.finish(
            (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                html,
            )
                .into_response(),
        ),
        Err(e) => {
            tracing::error!(error = %e, "A console page could not be rendered.");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "This page could not be made; the gateway's log says why.\n",
            )
        }
    }
}

/// An error page.
pub(crate) fn error(
    app: &App,
    current: &Current,
    status: StatusCode,
    heading: &str,
    message: impl Into<String>,
) -> Response {
    let signed_in = current.user().is_some();
    render(
        current,
        status,
        &ErrorPage {
            chrome: Chrome::new(app, current, heading),
            heading: heading.to_owned(),
            message: message.into(),
            back: if signed_in { "/" } else { "/signin" }.to_owned(),
            back_label: if signed_in {
                "Back to the fridges"
            } else {
                "Sign in"
            }
            .to_owned(),
        },
    )
}

/// A failure of the gateway itself while answering.
pub(crate) fn failed(app: &App, current: &Current, e: &crate::error::Error) -> Response {
    tracing::error!(error = %e, "A console request failed.");
    error(
        app,
        current,
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        format!(
            "The gateway could not answer: {e}. Try again; if it persists, the gateway's log says more."
        ),
    )
}

/// The signed-in person if they may do `action`; otherwise the answer to send: to the sign-in
/// page when nobody is signed in, 403 when their roles do not grant it.
pub(crate) fn require<'a>(
    app: &App,
    current: &'a Current,
    action: Action,
) -> Result<&'a SignedIn, Response> {
    let Some(user) = current.user() else {
        return Err(current.finish(Redirect::to("/signin").into_response()));
    };
    match super::permitted(user, action) {
        Ok(()) => Ok(user),
        Err(denied) => Err(error(
            app,
            current,
            StatusCode::FORBIDDEN,
            "Not allowed",
            format!("Your account may not do this: {denied}. Ask a pharmacist."),
        )),
    }
}

/// Refuses a POST whose form does not carry the session's CSRF token.
pub(crate) fn check_csrf(app: &App, current: &Current, offered: &str) -> Result<(), Response> {
    if csrf_matches(&current.session, offered) {
        Ok(())
    } else {
        tracing::info!("Console form refused: missing or wrong CSRF token.");
        Err(error(
            app,
            current,
            StatusCode::FORBIDDEN,
            "Form expired",
            "This form does not belong to your current session (it is old, or came from elsewhere). Reload the page and try again.",
        ))
    }
}

/// A second factor as typed: six digits are an authenticator code, anything else a recovery code.
pub(crate) fn second_factor(text: &str) -> crate::people::SecondFactor {
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()) {
        crate::people::SecondFactor::Totp(digits)
    } else {
        crate::people::SecondFactor::RecoveryCode(text.trim().to_owned())
    }
}

/// `t` as the console shows times: UTC to the second.
pub(crate) fn time_text(t: time::OffsetDateTime) -> String {
    crate::clock::rfc3339_seconds(t)
        .replace('T', " ")
        .replace('Z', " UTC")
}

/// Why a signature was not made: an answer to send as it is (403, 500), or a message to show
/// on the form again, with its status (wrong password or code, wait).
pub(crate) enum NotSigned {
    Answer(Response),
    Form(StatusCode, String),
}

/// Signs `request` as the signed-in `user`, who re-entered `password` and `code`: the
/// re-authentication of [`crate::people::People::sign`], off the async threads.
pub(crate) async fn sign(
    app: &Arc<App>,
    current: &Current,
    user: &SignedIn,
    source: std::net::IpAddr,
    password: String,
    code: &str,
    request: crate::people::SignatureRequest,
) -> Result<crate::people::Signature, NotSigned> {
    use crate::people::{SignError, SignInError};
    let (people, now, name, factor) = (
        app.people.clone(),
        app.now(),
        user.name.clone(),
        second_factor(code),
    );
    let signed = tokio::task::spawn_blocking(move || {
        people.sign(&name, &password, &factor, source, now, request)
    })
    .await;
    match signed {
        Ok(Ok(signature)) => Ok(signature),
        Ok(Err(SignError::Denied(denied))) => Err(NotSigned::Answer(error(
            app,
            current,
            StatusCode::FORBIDDEN,
            "Not allowed",
            denied.to_string(),
        ))),
        Ok(Err(SignError::Authentication(SignInError::Store(e)))) => {
            Err(NotSigned::Answer(failed(app, current, &e)))
        }
        Ok(Err(SignError::Authentication(e @ SignInError::TryLater { .. }))) => {
            Err(NotSigned::Form(StatusCode::TOO_MANY_REQUESTS, e.to_string()))
        }
        Ok(Err(SignError::Authentication(_))) => Err(NotSigned::Form(
            StatusCode::UNAUTHORIZED,
            "Not signed: the password or the code is wrong, or the code was used already (wait for the next one).".to_owned(),
        )),
        Err(e) => Err(NotSigned::Answer(failed(
            app,
            current,
            &crate::error::Error::Invalid(format!("the signing task failed: {e}")),
        ))),
    }
}

/// The request's session, or the answer when it cannot be had.
pub(crate) async fn session(
    app: &Arc<App>,
    headers: &axum::http::HeaderMap,
    conn: super::ConnInfo,
) -> Result<Current, Response> {
    app.current(headers, conn.peer.ip())
        .await
        .map_err(|e| plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
