//! `rxgate user ...`: accounts for the people who use the console.

use clap::Subcommand;

use crate::admin::{Reply, Request};
use crate::clock::rfc3339_seconds as rfc3339;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account and print its one-time set-up link (valid 24 h).
    Add {
        /// Account name: 3-32 lower-case letters, digits, '.', '_' or '-', starting with a letter.
        name: String,
        /// admin, pharmacist, technician, installer or inspector; repeat for several.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// The last day the account works (YYYY-MM-DD, UTC); required for inspectors.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List accounts: roles, state, expiry, factors.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Disable an account: it can no longer sign in.
    Disable { name: String },
    /// Forget an account's password, authenticator and recovery codes (a lost phone) and print a
    /// new set-up link.
    ResetFactors { name: String },
    /// Unlock an account locked after repeated failed sign-ins.
    Unlock { name: String },
}

impl UserCommand {
    /// The admin request, and whether the answer is wanted as JSON.
    pub fn request(self) -> (Request, bool) {
        match self {
            UserCommand::Add {
                name,
                roles,
                expires,
            } => (
                Request::UserAdd {
                    name,
                    roles,
                    expires,
                },
                false,
            ),
            UserCommand::List { json } => (Request::UserList, json),
            UserCommand::Disable { name } => (Request::UserDisable { name }, false),
            UserCommand::ResetFactors { name } => (Request::UserResetFactors { name }, false),
            UserCommand::Unlock { name } => (Request::UserUnlock { name }, false),
        }
    }
}

fn roles(roles: &[crate::people::Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Prints a people reply; false if `reply` is not one.
pub fn print(reply: &Reply, as_json: bool) -> bool {
    match reply {
        // Only the link on stdout, so it can be piped into a message to the person.
        Reply::UserSetupLink { user, setup_link } => {
            println!("{}", setup_link.url);
            eprintln!(
                "account {} ({}) is pending set-up; give the link above to that person only: it \
                 works once, until {}, and is not shown again",
                user.name,
                roles(&user.roles),
                rfc3339(setup_link.expires_at)
            );
        }
        Reply::Users { users } if as_json => super::output::json(users),
        Reply::Users { users } if users.is_empty() => {
            println!("no accounts; create the first with `rxgate user add NAME --role admin`")
        }
        Reply::Users { users } => super::output::table(
            &[
                "NAME",
                "ROLES",
                "STATE",
                "EXPIRES",
                "TOTP",
                "RECOVERY",
                "FAILED",
                "LAST_SIGN_IN",
            ],
            users
                .iter()
                .map(|u| {
                    vec![
                        u.name.clone(),
                        roles(&u.roles),
                        u.state.clone(),
                        u.expires_on.clone().unwrap_or_else(|| "-".to_owned()),
                        if u.totp { "yes" } else { "no" }.to_owned(),
                        u.recovery_codes_left.to_string(),
                        u.failed_sign_ins.to_string(),
                        u.last_sign_in
                            .map(rfc3339)
                            .unwrap_or_else(|| "-".to_owned()),
                    ]
                })
                .collect(),
        ),
        Reply::User { user } => println!("account {} is now {}", user.name, user.state),
        _ => return false,
    }
    true
}
