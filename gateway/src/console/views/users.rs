//! `/users` (admin): every account with its roles, state and factors; add one (its set-up link
//! is shown once), disable, unlock, or reset its factors (a new set-up link). Each change is an
//! audit entry under the admin's name, written by [`crate::people::People`].

use std::sync::Arc;

use askama::Template;
use axum::Extension;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::{Chrome, check_csrf, failed, render, require, session, time_text};
use crate::console::{App, ConnInfo, Current, blocking};
use crate::error::Error;
use crate::people::{AccountInfo, Action, Role, SetupLink};

pub(crate) struct UserRow {
    pub name: String,
    pub roles: String,
    pub state: String,
    pub expires: String,
    pub factors: String,
    pub last_sign_in: String,
    pub can_disable: bool,
    pub can_unlock: bool,
}

fn user_row(user: &AccountInfo) -> UserRow {
    let factors = match (user.totp, user.recovery_codes_left) {
        (false, _) => "not set up".to_owned(),
        (true, n) => format!("authenticator app, {n} recovery codes left"),
    };
    UserRow {
        name: user.name.clone(),
        roles: user
            .roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        state: user.state.clone(),
        expires: user.expires_on.clone().unwrap_or_else(|| "—".to_owned()),
        factors,
        last_sign_in: user
            .last_sign_in
            .map_or_else(|| "never".to_owned(), time_text),
        can_disable: user.state != "disabled",
        can_unlock: user.state == "locked",
    }
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    chrome: Chrome,
    users: Vec<UserRow>,
    roles: Vec<&'static str>,
    csrf: String,
    error: Option<String>,
    done: Option<String>,
}

#[derive(Template)]
#[template(path = "user_link.html")]
struct LinkPage {
    chrome: Chrome,
    heading: String,
    name: String,
    url: String,
    expires: String,
}

async fn list_page(
    app: &Arc<App>,
    current: &Current,
    status: StatusCode,
    error: Option<String>,
    done: Option<String>,
) -> Response {
    let people = app.people.clone();
    match blocking(move || people.list()).await {
        Ok(users) => render(
            current,
            status,
            &UsersPage {
                chrome: Chrome::new(app, current, "Users"),
                users: users.iter().map(user_row).collect(),
                roles: Role::ALL.iter().map(|r| r.as_str()).collect(),
                csrf: current.session.csrf.clone(),
                error,
                done,
            },
        ),
        Err(e) => failed(app, current, &e),
    }
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
    if let Err(answer) = require(&app, &current, Action::ManageUsers) {
        return answer;
    }
    list_page(&app, &current, StatusCode::OK, None, None).await
}

/// The add form: one checkbox per role.
#[derive(Deserialize)]
pub(crate) struct AddForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    expires: String,
    role_admin: Option<String>,
    role_pharmacist: Option<String>,
    role_technician: Option<String>,
    role_installer: Option<String>,
    role_inspector: Option<String>,
}

impl AddForm {
    fn roles(&self) -> Vec<Role> {
        [
            (&self.role_admin, Role::Admin),
            (&self.role_pharmacist, Role::Pharmacist),
            (&self.role_technician, Role::Technician),
            (&self.role_installer, Role::Installer),
            (&self.role_inspector, Role::Inspector),
        ]
        .into_iter()
        .filter(|(checked, _)| checked.is_some())
        .map(|(_, role)| role)
        .collect()
    }
}

fn link_page(
    app: &App,
    current: &Current,
    heading: &str,
    name: &str,
    link: &SetupLink,
) -> Response {
    render(
        current,
        StatusCode::OK,
        &LinkPage {
            chrome: Chrome::new(app, current, heading),
            heading: heading.to_owned(),
            name: name.to_owned(),
            url: link.url.clone(),
            expires: time_text(link.expires_at),
        },
    )
}

pub(crate) async fn add(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Form(input): Form<AddForm>,
) -> Response {
    let current = match session(&app, &headers, conn).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    if let Err(refused) = check_csrf(&app, &current, &input.csrf) {
        return refused;
    }
    let by = match require(&app, &current, Action::ManageUsers) {
        Ok(user) => user.name.clone(),
        Err(answer) => return answer,
    };
    let (people, name, roles) = (
        app.people.clone(),
        input.name.trim().to_owned(),
        input.roles(),
    );
    let expires = input.expires.trim().to_owned();
    let added = blocking(move || {
        let expires = (!expires.is_empty())
            .then(|| crate::people::parse_day(&expires))
            .transpose()?;
        people.add(&name, &roles, expires, &by)
    })
    .await;
    match added {
        Ok((user, link)) => link_page(&app, &current, "Account created", &user.name, &link),
        Err(e @ (Error::Invalid(_) | Error::NotFound(_))) => {
            list_page(
                &app,
                &current,
                StatusCode::BAD_REQUEST,
                Some(e.to_string()),
                None,
            )
            .await
        }
        Err(e) => failed(&app, &current, &e),
    }
}

#[derive(Deserialize)]
pub(crate) struct ChangeForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /users/{name}/{change}`: `disable`, `unlock` or `reset-factors`.
pub(crate) async fn change(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path((name, change)): Path<(String, String)>,
    headers: HeaderMap,
    Form(input): Form<ChangeForm>,
) -> Response {
    let current = match session(&app, &headers, conn).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    if let Err(refused) = check_csrf(&app, &current, &input.csrf) {
        return refused;
    }
    let by = match require(&app, &current, Action::ManageUsers) {
        Ok(user) => user.name.clone(),
        Err(answer) => return answer,
    };
    let people = app.people.clone();
    let account = name.clone();
    let outcome = blocking(move || match change.as_str() {
        "disable" => people.disable(&account, &by).map(|_| None),
        "unlock" => people.unlock(&account, &by).map(|_| None),
        "reset-factors" => people
            .reset_factors(&account, &by)
            .map(|(_, link)| Some(link)),
        other => Err(Error::NotFound(format!(
            "{other:?} is not a change to an account; use disable, unlock or reset-factors"
        ))),
    })
    .await;
    match outcome {
        Ok(Some(link)) => link_page(&app, &current, "Factors reset", &name, &link),
        Ok(None) => {
            let done = format!("{name}: done.");
            list_page(&app, &current, StatusCode::OK, None, Some(done)).await
        }
        Err(e @ (Error::Invalid(_) | Error::NotFound(_))) => {
            list_page(
                &app,
                &current,
                StatusCode::BAD_REQUEST,
                Some(e.to_string()),
                None,
            )
            .await
        }
        Err(e) => failed(&app, &current, &e),
    }
}
