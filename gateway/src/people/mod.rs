//! People: accounts, their roles and their factors, in the store beside the devices.
//!
//! No account exists after `rxgate init` and there are no default credentials: an admin on the
//! gateway's own command line (`rxgate user add`) creates the first one, which gets a one-time
//! set-up link; the person opens it in the console, chooses a password, scans the TOTP secret
//! into an authenticator app, confirms one code, and receives ten recovery codes. Until then the
//! account can do nothing.
//!
//! # Tables (JSON values)
//! - `people`: account name → [`Account`].
//! - `people_setup`: SHA-256 (hex) of a set-up token → [`SetupRecord`]. The token itself (256
//!   random bits) is shown once, in the link, and never stored; a link is valid for
//!   [`SETUP_TTL`] and works once. An account has at most one live link: issuing a new one
//!   removes the old.
//! - `people_throttle`: `name:<account>` or `source:<address>` → [`Throttle`]: consecutive failed
//!   sign-ins, for the exponential delay. Kept for names that match no account too, so the delay
//!   does not tell whether an account exists; at most [`MAX_THROTTLE_ENTRIES`], the stalest
//!   forgotten first.
//!
//! Every change is written together with its audit entry in one transaction, under the acting
//! person's name (the operating-system user for the CLI, see `admin`). Sign-in refusals are
//! recorded with the precise reason, under the actor `unauthenticated` with the name tried in
//! `detail`; the caller only ever learns [`SignInError::Refused`] or
//! [`SignInError::TryLater`].

mod factors;
mod os_user;
mod passkeys;
mod password;
mod roles;
mod signature;
mod signin;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::time::Duration;

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use ring::digest;
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use crate::audit::{self, Kind, Record};
use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::keys::Sealer;
use crate::store::{self, Store, to_json};

pub use factors::{
    RECOVERY_CODES, RecoveryCode, TotpRefused, check_totp, new_recovery_codes, new_totp_secret,
    provisioning_uri, totp_code,
};
pub use os_user::{current_user, user_name};
pub use passkeys::{
    CEREMONY_TTL, MAX_PASSKEYS, PasskeyInfo, PasskeyRefused, PasskeysUnavailable,
    PendingRegistration, PendingSignIn, RelyingParty, StoredPasskey,
};
pub use password::{MIN_LENGTH, PasswordRefused, check_policy};
pub use roles::{Action, Denied, Role, authorize, may};
pub use signature::{Meaning, SignError, Signature, SignatureRequest, canonical_sha256};
pub use signin::{
    Identity, LOCK_AFTER, MAX_THROTTLE_ENTRIES, SecondFactor, SignInError, Throttle, delay_after,
};

pub(crate) const PEOPLE: TableDefinition<&str, &[u8]> = TableDefinition::new("people");
pub(crate) const SETUP: TableDefinition<&str, &[u8]> = TableDefinition::new("people_setup");
pub(crate) const THROTTLE: TableDefinition<&str, &[u8]> = TableDefinition::new("people_throttle");

/// How long a set-up link works.
pub const SETUP_TTL: Duration = Duration::from_secs(24 * 3600);

/// The console's default port (`[console].listen`); set-up links use the configured one
/// ([`People::with_console_port`]).
pub const CONSOLE_PORT: u16 = 8444;

/// Where an account stands, as stored. `expired` is not stored: it follows from `expires_on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountState {
    /// Created; the person has not completed set-up (no password, no second factor yet).
    Pending,
    Active,
    /// Locked after [`LOCK_AFTER`] failed sign-ins in a row; an admin unlocks it.
    Locked,
    /// Disabled by an admin; it can no longer sign in or be set up.
    Disabled,
}

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    pub roles: BTreeSet<Role>,
    pub state: AccountState,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub created_by: String,
    /// The last day (UTC) the account works; required for inspectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_on: Option<Date>,
    /// Argon2id PHC string; none until set-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The confirmed TOTP secret (base32); none until set-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_secret: Option<String>,
    /// The last TOTP step accepted: that step and earlier ones are refused (replay protection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_last_step: Option<u64>,
    /// The TOTP secret offered by the live set-up link, confirmed when the link is redeemed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_totp_secret: Option<String>,
    #[serde(default)]
    pub recovery_codes: Vec<RecoveryCode>,
    /// Failed sign-ins since the last successful one.
    #[serde(default)]
    pub failed_sign_ins: u32,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_sign_in: Option<OffsetDateTime>,
    /// Made by `rxgate demo`, with credentials it prints: such an account signs in only where
    /// demo accounts are allowed ([`People::allowing_demo_accounts`]), which `rxgate run` never
    /// does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub demo: bool,
    /// Registered passkeys (WebAuthn), each usable instead of a TOTP code; see `passkeys`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passkeys: Vec<StoredPasskey>,
    /// The WebAuthn user handle given to this account's passkeys (random, made at the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passkey_user_id: Option<uuid::Uuid>,
}

impl Account {
    /// The state shown to people: the stored one, or `expired` past `expires_on`.
    pub fn state_at(&self, now: OffsetDateTime) -> &'static str {
        match self.state {
            AccountState::Disabled => "disabled",
            _ if self.expired_at(now) => "expired",
            AccountState::Pending => "pending",
            AccountState::Active => "active",
            AccountState::Locked => "locked",
        }
    }

    /// Whether the account has expired at `now`: it works through the whole of `expires_on`
    /// (UTC) and stops at the next midnight.
    pub fn expired_at(&self, now: OffsetDateTime) -> bool {
        self.expires_on
            .is_some_and(|day| now.to_offset(time::UtcOffset::UTC).date() > day)
    }

    pub fn roles(&self) -> Vec<Role> {
        self.roles.iter().copied().collect()
    }

    fn info(&self, now: OffsetDateTime) -> AccountInfo {
        AccountInfo {
            name: self.name.clone(),
            roles: self.roles(),
            state: self.state_at(now).to_owned(),
            expires_on: self.expires_on.map(format_day),
            created_at: self.created_at,
            created_by: self.created_by.clone(),
            totp: self.totp_secret.is_some(),
            recovery_codes_left: self
                .recovery_codes
                .iter()
                .filter(|c| c.used_at.is_none())
                .count(),
            failed_sign_ins: self.failed_sign_ins,
            last_sign_in: self.last_sign_in,
            passkeys: self.passkeys.len(),
            totp_plain: [&self.totp_secret, &self.pending_totp_secret]
                .into_iter()
                .flatten()
                .any(|s| !Sealer::is_sealed_text(s)),
        }
    }
}

/// What `rxgate user list` shows: no hash, no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountInfo {
    pub name: String,
    pub roles: Vec<Role>,
    /// pending, active, locked, disabled or expired.
    pub state: String,
    /// The last day the account works (YYYY-MM-DD, UTC).
    pub expires_on: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub created_by: String,
    /// Whether a TOTP authenticator is set up.
    pub totp: bool,
    pub recovery_codes_left: usize,
    pub failed_sign_ins: u32,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_sign_in: Option<OffsetDateTime>,
    /// Passkeys registered.
    #[serde(default)]
    pub passkeys: usize,
    /// Whether a TOTP secret (set up or on offer) is stored unsealed.
    #[serde(default)]
    pub totp_plain: bool,
}

/// What a set-up link stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupRecord {
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A freshly issued set-up link: the token is in the URL and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupLink {
    pub url: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// What the console's set-up page shows before the person commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupOffer {
    pub name: String,
    pub roles: Vec<Role>,
    /// The `otpauth://` URI to show as a QR code (and as text).
    pub otpauth_uri: String,
    /// The secret alone, for apps where it is typed in.
    pub totp_secret: String,
    pub expires_at: OffsetDateTime,
}

/// Set-up done: the recovery codes, shown once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupDone {
    pub name: String,
    pub recovery_codes: Vec<String>,
}

/// Why a set-up link could not be redeemed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// Unknown, used, expired, or the account was disabled: one answer for all.
    #[error(
        "this set-up link does not work (it expired, was used, or was replaced); ask an admin for a new one"
    )]
    InvalidLink,
    /// The link stays valid: choose another password.
    #[error("{0}")]
    Password(#[from] PasswordRefused),
    /// The link stays valid: try the code the app shows now.
    #[error(
        "the code does not match the authenticator; check the app's clock and enter the code it shows now"
    )]
    WrongCode,
}

/// Accounts in the store, with the clock used for admin changes. Cheap to clone.
#[derive(Clone)]
pub struct People {
    store: Store,
    clock: SharedClock,
    site: String,
    /// The host set-up links point to: the first `[gateway].server_names` entry or `localhost`.
    console_host: String,
    /// The console's port: `[console].listen`'s, or the port it is bound to.
    console_port: u16,
    /// Host names passkeys may be registered and used under: `localhost` and the DNS names
    /// among `[gateway].server_names` (the server certificate's names).
    passkey_hosts: Vec<String>,
    /// Whether demo accounts may sign in (only in `rxgate demo`).
    demo_accounts: bool,
    /// Seals TOTP secrets under the key-encryption key (`keys`), when there is one.
    sealer: Sealer,
}

/// What `rxgate demo` prints for its demo account.
#[derive(Debug, Clone)]
pub struct DemoCredentials {
    pub name: String,
    pub password: String,
    pub totp_secret: String,
    pub recovery_codes: Vec<String>,
}

/// Account names: 3–32 of `a-z 0-9 . _ -`, starting with a letter. Lower case only, so two
/// accounts cannot differ by case alone.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = (3..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "account name {name:?} is not valid: use 3-32 lower-case letters, digits, '.', '_' or '-', starting with a letter"
        )))
    }
}

/// A date as the CLI takes it: `2026-07-31`.
pub fn parse_day(text: &str) -> Result<Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(text.trim(), &format).map_err(|_| {
        Error::Invalid(format!(
            "--expires {text:?}: expected a date like 2026-07-31 (YYYY-MM-DD)"
        ))
    })
}

fn format_day(day: Date) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    day.format(&format).unwrap_or_default()
}

/// The associated data a person's sealed TOTP secret is bound to.
fn totp_context(name: &str) -> String {
    format!("totp:{name}")
}

fn sha256_hex(text: &str) -> String {
    audit::hex(digest::digest(&digest::SHA256, text.as_bytes()).as_ref())
}

fn random_token() -> Result<String> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Invalid("the system random number generator failed".to_owned()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

pub(crate) fn load(txn: &WriteTransaction, name: &str) -> Result<Option<Account>> {
    store::get_json(&txn.open_table(PEOPLE)?, "people", name)
}

pub(crate) fn save(txn: &WriteTransaction, account: &Account) -> Result<()> {
    txn.open_table(PEOPLE)?
        .insert(account.name.as_str(), to_json(account).as_slice())?;
    Ok(())
}

fn not_found(name: &str) -> Error {
    Error::NotFound(format!("no account {name:?}; see `rxgate user list`"))
}

/// Removes every set-up link of `name`.
fn drop_links(txn: &WriteTransaction, name: &str) -> Result<()> {
    let mut table = txn.open_table(SETUP)?;
    let mut stale = Vec::new();
    for entry in table.iter()? {
        let (key, value) = entry?;
        if serde_json::from_slice::<SetupRecord>(value.value()).is_ok_and(|r| r.name == name) {
            stale.push(key.value().to_owned());
        }
    }
    for key in stale {
        table.remove(key.as_str())?;
    }
    Ok(())
}

impl People {
    pub fn new(store: Store, clock: SharedClock, site: &str, server_names: &[String]) -> People {
        People {
            store,
            clock,
            site: site.to_owned(),
            console_host: server_names
                .first()
                .cloned()
                .unwrap_or_else(|| "localhost".to_owned()),
            console_port: CONSOLE_PORT,
            demo_accounts: false,
            sealer: Sealer::default(),
            passkey_hosts: std::iter::once("localhost".to_owned())
                .chain(
                    server_names
                        .iter()
                        .map(|n| n.trim().to_ascii_lowercase())
                        .filter(|n| n.parse::<std::net::IpAddr>().is_err() && n != "localhost"),
                )
                .collect(),
        }
    }

    /// Seals new TOTP secrets with `sealer`, and opens sealed ones with it.
    pub fn with_sealer(mut self, sealer: Sealer) -> People {
        self.sealer = sealer;
        self
    }

    /// The plain TOTP secret of `name` as stored (sealed or not).
    pub(crate) fn open_totp(&self, name: &str, stored: &str) -> Result<zeroize::Zeroizing<String>> {
        self.sealer.open_text(&totp_context(name), stored)
    }

    /// Seals every TOTP secret still stored in plain text; returns how many accounts changed.
    /// Needs the key-encryption key.
    pub fn seal_plain_secrets(&self) -> Result<usize> {
        if !self.sealer.sealing() {
            return Ok(0);
        }
        self.rewrite_secrets(false, |name, plain| {
            self.sealer.seal_text(&totp_context(name), plain)
        })
    }

    /// Opens every sealed TOTP secret in place: for a backup's copy of the store, which leaves
    /// this gateway's key-encryption key behind. Returns how many accounts changed.
    pub fn unseal_secrets(&self) -> Result<usize> {
        self.rewrite_secrets(true, |name, stored| {
            Ok(self.open_totp(name, stored)?.to_string())
        })
    }

    /// Seals what is still plain under `keys`' key-encryption key: the keys in files, then the
    /// TOTP secrets (this store's sealer must be `keys.sealer()`), with one `keys.sealed` audit
    /// entry by `actor` when anything was sealed. Returns the keys and how many accounts.
    pub fn seal_everything(
        &self,
        keys: &crate::keys::Keyring,
        actor: &str,
    ) -> Result<(Vec<crate::keys::Secret>, usize)> {
        let sealed = keys.seal_plain_keys()?;
        let totp = self.seal_plain_secrets()?;
        if !sealed.is_empty() || totp > 0 {
            let labels: Vec<&str> = sealed.iter().map(|s| s.label()).collect();
            tracing::info!(keys = %labels.join(", "), totp_secrets = totp, "Sealed plain keys under the key-encryption key.");
            let now = self.clock.now();
            self.store.write(|txn| {
                self.audit(
                    txn,
                    now,
                    Record::new(Kind::KeysSealed, actor)
                        .detail(serde_json::json!({ "keys": labels, "totp_secrets": totp })),
                )
            })?;
        }
        Ok((sealed, totp))
    }

    /// Replaces each TOTP secret (set up or on offer) that is sealed (`sealed`) or plain (not
    /// `sealed`) with `rewrite(name, secret)`, in one transaction; returns how many accounts
    /// changed. Reads first, so a store without such secrets is not written at all (a write
    /// transaction would create the table in a store that has none).
    fn rewrite_secrets(
        &self,
        sealed: bool,
        rewrite: impl Fn(&str, &str) -> Result<String>,
    ) -> Result<usize> {
        let matches = |s: &String| Sealer::is_sealed_text(s) == sealed;
        let accounts: Vec<Account> = self.store.read(|txn| store::all_json(txn, PEOPLE))?;
        let names: Vec<String> = accounts
            .iter()
            .filter(|a| {
                [&a.totp_secret, &a.pending_totp_secret]
                    .into_iter()
                    .flatten()
                    .any(matches)
            })
            .map(|a| a.name.clone())
            .collect();
        if names.is_empty() {
            return Ok(0);
        }
        self.store.write(|txn| {
            let mut changed = 0;
            for name in &names {
                // Re-read inside the transaction: it may have changed since.
                let Some(mut account) = load(txn, name)? else {
                    continue;
                };
                let mut touched = false;
                for secret in [&mut account.totp_secret, &mut account.pending_totp_secret] {
                    if let Some(old) = secret.as_ref().filter(|s| matches(s)) {
                        *secret = Some(rewrite(name, old)?);
                        touched = true;
                    }
                }
                if touched {
                    save(txn, &account)?;
                    changed += 1;
                }
            }
            Ok(changed)
        })
    }

    /// How many accounts keep a TOTP secret in plain text.
    pub fn plain_secrets(&self) -> Result<usize> {
        Ok(self.list()?.iter().filter(|a| a.totp_plain).count())
    }

    /// Lets demo accounts sign in: for `rxgate demo` only.
    pub fn allowing_demo_accounts(mut self) -> People {
        self.demo_accounts = true;
        self
    }

    pub(crate) fn demo_accounts_allowed(&self) -> bool {
        self.demo_accounts
    }

    /// Creates and sets up the demo account `name` with `roles`, a random password and a TOTP
    /// secret, marked as a demo account: refused unless demo accounts are allowed.
    pub fn add_demo_account(&self, name: &str, roles: &[Role]) -> Result<DemoCredentials> {
        if !self.demo_accounts {
            return Err(Error::Invalid(
                "demo accounts exist only in `rxgate demo`".to_owned(),
            ));
        }
        let (_, link) = self.add(name, roles, None, "rxgate demo")?;
        let token = link.url.rsplit('/').next().unwrap_or_default().to_owned();
        let now = self.clock.now();
        let offer = self
            .setup_offer(&token, now)?
            .map_err(|e| Error::Invalid(format!("the demo account's set-up: {e}")))?;
        // Four random words' worth of letters: long, and not on any list of common passwords.
        let password = {
            let bytes = factors::random_bytes::<12>()?;
            let letters: String = bytes.iter().map(|b| char::from(b'a' + b % 26)).collect();
            format!("{}-{}-{}", &letters[..4], &letters[4..8], &letters[8..])
        };
        let code = totp_code(&offer.totp_secret, now)?;
        let done = self
            .redeem_setup(&token, &password, &code, now)?
            .map_err(|e| Error::Invalid(format!("the demo account's set-up: {e}")))?;
        self.store.write(|txn| {
            if let Some(mut account) = load(txn, name)? {
                account.demo = true;
                save(txn, &account)?;
            }
            Ok(())
        })?;
        Ok(DemoCredentials {
            name: name.to_owned(),
            password,
            totp_secret: offer.totp_secret,
            recovery_codes: done.recovery_codes,
        })
    }

    /// Set-up links point to the console on `port` (when 0, the default port is kept).
    pub fn with_console_port(mut self, port: u16) -> People {
        if port != 0 {
            self.console_port = port;
        }
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn audit(&self, txn: &WriteTransaction, now: OffsetDateTime, record: Record) -> Result<u64> {
        audit::append(txn, now, self.clock.synced(), record)
    }

    /// Issues a set-up link for `name` inside `txn`, replacing any earlier one, with a fresh
    /// TOTP secret on offer.
    fn issue_link(
        &self,
        txn: &WriteTransaction,
        account: &mut Account,
        now: OffsetDateTime,
    ) -> Result<SetupLink> {
        drop_links(txn, &account.name)?;
        let token = random_token()?;
        let expires_at = now + SETUP_TTL;
        let record = SetupRecord {
            name: account.name.clone(),
            expires_at,
        };
        txn.open_table(SETUP)?
            .insert(sha256_hex(&token).as_str(), to_json(&record).as_slice())?;
        account.pending_totp_secret = Some(
            self.sealer
                .seal_text(&totp_context(&account.name), &new_totp_secret()?)?,
        );
        Ok(SetupLink {
            url: format!(
                "https://{}:{}/setup/{token}",
                self.console_host, self.console_port
            ),
            expires_at,
        })
    }

    /// Creates an account with `roles`, pending until its person completes set-up through the
    /// returned link. Inspectors need `expires_on`; any account may have one.
    pub fn add(
        &self,
        name: &str,
        roles: &[Role],
        expires_on: Option<Date>,
        by: &str,
    ) -> Result<(AccountInfo, SetupLink)> {
        validate_name(name)?;
        if roles.is_empty() {
            return Err(Error::Invalid(
                "an account needs at least one role (--role admin|pharmacist|technician|installer|inspector)".to_owned(),
            ));
        }
        if roles.contains(&Role::Inspector) && expires_on.is_none() {
            return Err(Error::Invalid(
                "an inspector account needs the date it expires (--expires YYYY-MM-DD)".to_owned(),
            ));
        }
        let now = self.clock.now();
        if let Some(day) = expires_on
            && day < now.date()
        {
            return Err(Error::Invalid(format!(
                "--expires {} is in the past; give the last day the account should work",
                format_day(day)
            )));
        }
        let (info, link) = self.store.write(|txn| {
            if load(txn, name)?.is_some() {
                return Err(Error::Invalid(format!(
                    "an account {name:?} already exists; see `rxgate user list`"
                )));
            }
            let mut account = Account {
                name: name.to_owned(),
                roles: roles.iter().copied().collect(),
                state: AccountState::Pending,
                created_at: now,
                created_by: by.to_owned(),
                expires_on,
                password: None,
                totp_secret: None,
                totp_last_step: None,
                pending_totp_secret: None,
                recovery_codes: Vec::new(),
                failed_sign_ins: 0,
                last_sign_in: None,
                demo: false,
                passkeys: Vec::new(),
                passkey_user_id: None,
            };
            let link = self.issue_link(txn, &mut account, now)?;
            save(txn, &account)?;
            self.audit(
                txn,
                now,
                Record::new(Kind::UserAdded, by).detail(serde_json::json!({
                    "user": name,
                    "roles": account.roles(),
                    "expires_on": expires_on.map(format_day),
                    "setup_link_expires_at": crate::clock::rfc3339(link.expires_at),
                })),
            )?;
            Ok((account.info(now), link))
        })?;
        tracing::info!(user = name, by, "Account added.");
        Ok((info, link))
    }

    /// Every account, by name.
    pub fn list(&self) -> Result<Vec<AccountInfo>> {
        let now = self.clock.now();
        let accounts: Vec<Account> = self.store.read(|txn| store::all_json(txn, PEOPLE))?;
        Ok(accounts.iter().map(|a| a.info(now)).collect())
    }

    /// One account as stored (for the console's session checks and for tests).
    pub fn account(&self, name: &str) -> Result<Option<Account>> {
        self.store.read(|txn| match txn.open_table(PEOPLE) {
            Ok(t) => store::get_json(&t, "people", name),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        })
    }

    /// Disables an account: it can no longer sign in, and its set-up link stops working.
    pub fn disable(&self, name: &str, by: &str) -> Result<AccountInfo> {
        let now = self.clock.now();
        self.store.write(|txn| {
            let mut account = load(txn, name)?.ok_or_else(|| not_found(name))?;
            if account.state == AccountState::Disabled {
                return Err(Error::Invalid(format!(
                    "account {name} is already disabled"
                )));
            }
            let was = account.state_at(now);
            account.state = AccountState::Disabled;
            account.pending_totp_secret = None;
            drop_links(txn, name)?;
            save(txn, &account)?;
            self.audit(
                txn,
                now,
                Record::new(Kind::UserDisabled, by)
                    .detail(serde_json::json!({ "user": name, "was": was })),
            )?;
            Ok(account.info(now))
        })
    }

    /// Unlocks an account locked by failed sign-ins.
    pub fn unlock(&self, name: &str, by: &str) -> Result<AccountInfo> {
        let now = self.clock.now();
        self.store.write(|txn| {
            let mut account = load(txn, name)?.ok_or_else(|| not_found(name))?;
            if account.state != AccountState::Locked {
                return Err(Error::Invalid(format!(
                    "account {name} is {}, not locked; nothing to unlock",
                    account.state_at(now)
                )));
            }
            let failures = account.failed_sign_ins;
            account.state = AccountState::Active;
            account.failed_sign_ins = 0;
            save(txn, &account)?;
            txn.open_table(THROTTLE)?
                .remove(signin::name_key(name).as_str())?;
            self.audit(
                txn,
                now,
                Record::new(Kind::UserUnlocked, by).detail(serde_json::json!({
                    "user": name,
                    "failed_sign_ins": failures,
                })),
            )?;
            Ok(account.info(now))
        })
    }

    /// Forgets an account's password, authenticator, passkeys and recovery codes (a lost phone) and issues
    /// a new set-up link: the account is pending again until its person completes set-up anew.
    pub fn reset_factors(&self, name: &str, by: &str) -> Result<(AccountInfo, SetupLink)> {
        let now = self.clock.now();
        self.store.write(|txn| {
            let mut account = load(txn, name)?.ok_or_else(|| not_found(name))?;
            if account.state == AccountState::Disabled {
                return Err(Error::Invalid(format!(
                    "account {name} is disabled; a disabled account is not set up again"
                )));
            }
            let was = account.state_at(now);
            account.state = AccountState::Pending;
            account.password = None;
            account.totp_secret = None;
            account.totp_last_step = None;
            account.recovery_codes.clear();
            let passkeys_forgotten = account.passkeys.len();
            account.passkeys.clear();
            account.failed_sign_ins = 0;
            let link = self.issue_link(txn, &mut account, now)?;
            save(txn, &account)?;
            txn.open_table(THROTTLE)?
                .remove(signin::name_key(name).as_str())?;
            self.audit(
                txn,
                now,
                Record::new(Kind::UserFactorsReset, by).detail(serde_json::json!({
                    "user": name,
                    "was": was,
                    "passkeys_forgotten": passkeys_forgotten,
                    "setup_link_expires_at": crate::clock::rfc3339(link.expires_at),
                })),
            )?;
            Ok((account.info(now), link))
        })
    }

    /// What the set-up page at `token` offers, if the link works at `now`.
    pub fn setup_offer(
        &self,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<std::result::Result<SetupOffer, SetupError>> {
        let key = sha256_hex(token.trim());
        self.store.read(|txn| {
            let link: Option<SetupRecord> = match txn.open_table(SETUP) {
                Ok(t) => store::get_json(&t, "people_setup", key.as_str())?,
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e.into()),
            };
            let Some(link) = link.filter(|l| l.expires_at > now) else {
                return Ok(Err(SetupError::InvalidLink));
            };
            let account: Option<Account> = match txn.open_table(PEOPLE) {
                Ok(t) => store::get_json(&t, "people", link.name.as_str())?,
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e.into()),
            };
            let Some((account, secret)) = account
                .filter(|a| a.state == AccountState::Pending && !a.expired_at(now))
                .and_then(|a| a.pending_totp_secret.clone().map(|s| (a, s)))
            else {
                return Ok(Err(SetupError::InvalidLink));
            };
            let secret = self.open_totp(&account.name, &secret)?.to_string();
            Ok(Ok(SetupOffer {
                otpauth_uri: provisioning_uri(&self.site, &account.name, &secret),
                name: account.name.clone(),
                roles: account.roles(),
                totp_secret: secret,
                expires_at: link.expires_at,
            }))
        })
    }

    /// Completes set-up through the link `token`: checks `password` against the policy and
    /// `totp_confirmation` against the secret on offer, then stores the password's hash and the
    /// confirmed secret, makes ten recovery codes and activates the account. The link then stops
    /// working. A refused password or code leaves the link valid.
    pub fn redeem_setup(
        &self,
        token: &str,
        password: &str,
        totp_confirmation: &str,
        now: OffsetDateTime,
    ) -> Result<std::result::Result<SetupDone, SetupError>> {
        let offer = match self.setup_offer(token, now)? {
            Ok(offer) => offer,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(refused) = check_policy(&offer.name, password) {
            return Ok(Err(refused.into()));
        }
        let step = match check_totp(&offer.totp_secret, totp_confirmation, now, None)? {
            Ok(step) => step,
            Err(_) => return Ok(Err(SetupError::WrongCode)),
        };
        // Hash outside the write transaction: it takes a while and holds nothing.
        let phc = password::hash(password)?;
        let (shown, stored) = new_recovery_codes()?;
        let key = sha256_hex(token.trim());
        self.store.write(|txn| {
            // Again inside the transaction: the link may have been used or replaced meanwhile.
            let link: Option<SetupRecord> =
                store::get_json(&txn.open_table(SETUP)?, "people_setup", key.as_str())?;
            let Some(link) = link.filter(|l| l.expires_at > now && l.name == offer.name) else {
                return Ok(Err(SetupError::InvalidLink));
            };
            let on_offer = |a: &Account| {
                a.pending_totp_secret
                    .as_deref()
                    .and_then(|stored| self.open_totp(&a.name, stored).ok())
                    .is_some_and(|secret| *secret == offer.totp_secret)
            };
            let Some(mut account) =
                load(txn, &link.name)?.filter(|a| a.state == AccountState::Pending && on_offer(a))
            else {
                return Ok(Err(SetupError::InvalidLink));
            };
            txn.open_table(SETUP)?.remove(key.as_str())?;
            account.state = AccountState::Active;
            account.password = Some(phc);
            account.totp_secret = account.pending_totp_secret.take();
            account.totp_last_step = Some(step);
            account.recovery_codes = stored;
            account.failed_sign_ins = 0;
            save(txn, &account)?;
            self.audit(
                txn,
                now,
                Record::new(Kind::UserSetUp, &account.name).detail(serde_json::json!({
                    "user": account.name,
                    "factors": ["password", "totp"],
                    "recovery_codes": shown.len(),
                })),
            )?;
            tracing::info!(user = %account.name, "Account set up.");
            Ok(Ok(SetupDone {
                name: account.name.clone(),
                recovery_codes: shown,
            }))
        })
    }
}
