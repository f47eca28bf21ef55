//! Roles and what each may do: one table, one pure check ([`may`]), called by the console, the
//! admin socket and the CLI alike. Handlers never look at roles themselves.

use serde::{Deserialize, Serialize};

/// What an account is for. One account may hold several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Manages accounts and the gateway's configuration.
    Admin,
    /// Acknowledges and signs alerts and reviews; reports; the controlled-substance audit.
    Pharmacist,
    /// Views the gateway's state and records the daily min/max checks.
    Technician,
    /// Enrolls, renews and revokes devices; creates enrollment tokens.
    Installer,
    /// Read-only: reports, excursions, the audit trail. The account expires on a date set when it
    /// is created.
    Inspector,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Pharmacist,
        Role::Technician,
        Role::Installer,
        Role::Inspector,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Pharmacist => "pharmacist",
            Role::Technician => "technician",
            Role::Installer => "installer",
            Role::Inspector => "inspector",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        let text = text.trim().to_ascii_lowercase();
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "{text:?} is not a role; use admin, pharmacist, technician, installer or inspector"
                )
            })
    }
}

/// Everything a person can ask the gateway to do, as far as permissions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Add, disable, unlock accounts; reset their factors.
    ManageUsers,
    /// Change the gateway's configuration and policy.
    Configure,
    /// See the gateway's state: status, devices, open alerts, current temperatures.
    ViewStatus,
    /// Take charge of an alert (stops escalation, silences the buzzer).
    AcknowledgeAlert,
    /// Electronically sign an alert's resolution.
    SignAlert,
    /// Electronically sign a review (temperature log, excursion review).
    SignReview,
    /// Temperature reports (daily min/max, charts, mean kinetic temperature).
    ViewReports,
    /// Excursions: when a fridge left its range, for how long, how far.
    ViewExcursions,
    /// The audit trail.
    ViewAudit,
    /// Review and sign off the controlled-substance access records.
    ReviewControlledSubstances,
    /// Record the daily min/max check of a fridge.
    RecordMinMaxCheck,
    /// Enroll a device (with a token it was given).
    EnrollDevice,
    /// Renew a device's certificate.
    RenewDevice,
    /// Revoke a device.
    RevokeDevice,
    /// Create a one-time enrollment token.
    CreateToken,
}

impl Action {
    pub const ALL: [Action; 15] = [
        Action::ManageUsers,
        Action::Configure,
        Action::ViewStatus,
        Action::AcknowledgeAlert,
        Action::SignAlert,
        Action::SignReview,
        Action::ViewReports,
        Action::ViewExcursions,
        Action::ViewAudit,
        Action::ReviewControlledSubstances,
        Action::RecordMinMaxCheck,
        Action::EnrollDevice,
        Action::RenewDevice,
        Action::RevokeDevice,
        Action::CreateToken,
    ];
}

/// Whether one role grants `action`. The whole permission table is this match: an action not
/// listed for a role is denied.
fn grants(role: Role, action: Action) -> bool {
    use Action::*;
    match role {
        Role::Admin => matches!(action, ManageUsers | Configure | ViewStatus | ViewAudit),
        Role::Pharmacist => matches!(
            action,
            ViewStatus
                | AcknowledgeAlert
                | SignAlert
                | SignReview
                | ViewReports
                | ViewExcursions
                | ViewAudit
                | ReviewControlledSubstances
                | RecordMinMaxCheck
        ),
        Role::Technician => matches!(
            action,
            ViewStatus | ViewReports | ViewExcursions | RecordMinMaxCheck
        ),
        Role::Installer => matches!(
            action,
            ViewStatus | EnrollDevice | RenewDevice | RevokeDevice | CreateToken
        ),
        Role::Inspector => matches!(action, ViewReports | ViewExcursions | ViewAudit),
    }
}

/// Whether an account holding `roles` may do `action`: any one role granting it is enough.
/// No roles, nothing allowed.
pub fn may(roles: &[Role], action: Action) -> bool {
    roles.iter().any(|&role| grants(role, action))
}

/// Refused by [`authorize`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{action:?} needs a role that grants it; this account holds {}", roles_text(.roles))]
pub struct Denied {
    pub action: Action,
    pub roles: Vec<Role>,
}

fn roles_text(roles: &[Role]) -> String {
    if roles.is_empty() {
        return "no role".to_owned();
    }
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// [`may`] as a `Result`, for handlers that answer a refusal.
pub fn authorize(roles: &[Role], action: Action) -> Result<(), Denied> {
    if may(roles, action) {
        Ok(())
    } else {
        Err(Denied {
            action,
            roles: roles.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The permission table as the product documents it (docs/people.md): one row per action,
    /// one column per role (admin, pharmacist, technician, installer, inspector).
    const TABLE: &[(Action, [bool; 5])] = {
        use Action::*;
        const Y: bool = true;
        const N: bool = false;
        &[
            (ManageUsers, [Y, N, N, N, N]),
            (Configure, [Y, N, N, N, N]),
            (ViewStatus, [Y, Y, Y, Y, N]),
            (AcknowledgeAlert, [N, Y, N, N, N]),
            (SignAlert, [N, Y, N, N, N]),
            (SignReview, [N, Y, N, N, N]),
            (ViewReports, [N, Y, Y, N, Y]),
            (ViewExcursions, [N, Y, Y, N, Y]),
            (ViewAudit, [Y, Y, N, N, Y]),
            (ReviewControlledSubstances, [N, Y, N, N, N]),
            (RecordMinMaxCheck, [N, Y, Y, N, N]),
            (EnrollDevice, [N, N, N, Y, N]),
            (RenewDevice, [N, N, N, Y, N]),
            (RevokeDevice, [N, N, N, Y, N]),
            (CreateToken, [N, N, N, Y, N]),
        ]
    };

    #[test]
    fn each_role_may_do_exactly_what_the_permission_table_says() {
        assert_eq!(TABLE.len(), Action::ALL.len(), "every action has a row");
        for (action, allowed) in TABLE {
            for (role, expected) in Role::ALL.into_iter().zip(allowed) {
                assert_eq!(may(&[role], *action), *expected, "{role} and {action:?}");
            }
        }
    }

    #[test]
    fn several_roles_may_do_what_any_of_them_may_and_no_role_may_do_nothing() {
        for (action, allowed) in TABLE {
            let pharmacist_or_installer = allowed[1] || allowed[3];
            assert_eq!(
                may(&[Role::Pharmacist, Role::Installer], *action),
                pharmacist_or_installer,
                "{action:?}"
            );
            assert!(!may(&[], *action), "{action:?} with no role");
        }
        assert_eq!(
            authorize(&[Role::Inspector], Action::AcknowledgeAlert)
                .unwrap_err()
                .to_string(),
            "AcknowledgeAlert needs a role that grants it; this account holds inspector"
        );
        assert_eq!(authorize(&[Role::Inspector], Action::ViewAudit), Ok(()));
    }

    #[test]
    fn roles_parse_from_their_names_in_any_case_and_nothing_else() {
        assert_eq!("Pharmacist".parse::<Role>(), Ok(Role::Pharmacist));
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert_eq!(
            "root".parse::<Role>(),
            Err(
                "\"root\" is not a role; use admin, pharmacist, technician, installer or inspector"
                    .to_owned()
            )
        );
    }
}
