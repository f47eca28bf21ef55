//! Signing in: password, then a second factor; failures slow down, then lock.
//!
//! Each failed sign-in counts against the name tried and against the source address. After
//! more than [`FREE_FAILURES`] failures in a row, the next attempt for that name (or from that source) is
//! refused unchecked until [`delay_after`] has passed since the last failure: 1 s, then 2, 4,
//! ... up to [`MAX_DELAY`]. A success clears both counts. An account whose failures reach
//! [`LOCK_AFTER`] is locked until an admin unlocks it (`rxgate user unlock`).
//!
//! A passkey sign-in takes two calls: [`People::passkey_challenge`] checks the password (and
//! counts a wrong one like any other failure) and only then returns the challenge, as a
//! [`PendingSignIn`] that stands for the password's proof for [`super::CEREMONY_TTL`]; the
//! browser's answer then comes back as [`SecondFactor::Passkey`] with it, through the same
//! checks, throttling, counting and audit entries as a TOTP code. No challenge is given for a
//! wrong password, so a challenge never tells whether an account exists or which passkeys it
//! has; getting one does tell that the password was right (still throttled and locked like any
//! guessing: a decoy challenge for wrong passwords would close this, and is not done yet).
//!
//! The slow part (Argon2) runs between a read and a write transaction, so a sign-in never holds
//! the store's write lock while hashing; the write re-reads the account, so counts, the lock and
//! the TOTP replay check are exact however many sign-ins run at once.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::passkeys::{self, Asserted, PendingSignIn, RelyingParty};
use super::{AccountState, People, Role, THROTTLE, factors, load, password, save};
use crate::audit::{Kind, Record};
use crate::error::Result;
use crate::store::{self, to_json};

/// Failed sign-ins in a row after which an account is locked.
pub const LOCK_AFTER: u32 = 10;
/// Failures in a row that cost no wait.
pub const FREE_FAILURES: u32 = 2;
/// The longest wait between attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// Throttle records kept; beyond it the stalest are forgotten first.
pub const MAX_THROTTLE_ENTRIES: usize = 4096;
/// A throttle record older than this is forgotten (its delay is long over).
const THROTTLE_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// The second factor offered with a password.
#[derive(Debug, Clone)]
pub enum SecondFactor {
    /// The 6 digits an authenticator app shows.
    Totp(String),
    /// One of the ten recovery codes.
    RecoveryCode(String),
    /// A passkey's answer (the browser's `PublicKeyCredential` as JSON) to the challenge
    /// [`People::passkey_challenge`] gave after checking the password: `pending` is that proof,
    /// so the password is not checked again.
    Passkey {
        pending: Arc<PendingSignIn>,
        response: String,
    },
}

/// Who signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub roles: Vec<Role>,
    /// Unused recovery codes left (the console suggests new ones when few remain).
    pub recovery_codes_left: usize,
}

/// What a refused sign-in tells the caller: never whether the account exists, nor which part
/// was wrong. The precise reason is in the audit trail.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error(
        "sign-in refused: the name, password or second factor is wrong, or the account cannot sign in; ask an admin if this persists"
    )]
    Refused,
    #[error("too many failed sign-ins; try again in {} s", retry_after.as_secs().max(1))]
    TryLater { retry_after: Duration },
    /// The password was right, but the account has no passkey for this host name.
    #[error(
        "this account has no passkey for {rp_id}; enter the code from your authenticator app instead (you can add a passkey under Passkeys once signed in)"
    )]
    NoPasskey { rp_id: String },
    #[error(transparent)]
    Store(#[from] crate::error::Error),
}

/// Consecutive failures for one name or one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttle {
    pub failures: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub last_failure: OffsetDateTime,
}

/// The wait after `failures` failures in a row: none for the first [`FREE_FAILURES`], then
/// doubling from one second, at most [`MAX_DELAY`].
pub fn delay_after(failures: u32) -> Duration {
    if failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let exponent = (failures - FREE_FAILURES - 1).min(20);
    Duration::from_secs(1u64 << exponent).min(MAX_DELAY)
}

pub(super) fn name_key(name: &str) -> String {
    format!("name:{}", name.trim().to_lowercase())
}

fn source_key(source: IpAddr) -> String {
    format!("source:{source}")
}

/// How long to wait before `throttle` allows another attempt at `now`.
fn wait(throttle: Option<&Throttle>, now: OffsetDateTime) -> Duration {
    let Some(t) = throttle else {
        return Duration::ZERO;
    };
    let until = t.last_failure + delay_after(t.failures);
    if until > now {
        (until - now).try_into().unwrap_or(Duration::ZERO)
    } else {
        Duration::ZERO
    }
}

/// What the checks found, before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    Accepted {
        /// The TOTP step to record, the recovery code used, or the passkey used.
        totp_step: Option<u64>,
        recovery_code: Option<String>,
        passkey: Option<Asserted>,
    },
    /// `counts`: a wrong password or second factor, which moves the account towards its lock.
    Refused { reason: String, counts: bool },
}

impl People {
    /// Signs `name` in with `password` and `second_factor`, from `source`, at `now`.
    ///
    /// Refused unchecked while the name or the source must wait (see the module doc). Otherwise
    /// the password is checked (or, for a name with no account, an equal amount of work done),
    /// then the account's state (active, not expired), then the second factor: a TOTP code not
    /// used before, or an unused recovery code, which is then spent.
    pub fn verify_sign_in(
        &self,
        name: &str,
        password_text: &str,
        second_factor: &SecondFactor,
        source: IpAddr,
        now: OffsetDateTime,
    ) -> std::result::Result<Identity, SignInError> {
        self.authenticate(name, password_text, second_factor, source, now, None)
            .map(|(identity, _)| identity)
    }

    /// [`People::verify_sign_in`] for a purpose: with `signing`, an accepted re-authentication
    /// is recorded as the signature (`record.signed`, with its sequence number returned)
    /// instead of a sign-in, in the same transaction.
    pub(super) fn authenticate(
        &self,
        name: &str,
        password_text: &str,
        second_factor: &SecondFactor,
        source: IpAddr,
        now: OffsetDateTime,
        signing: Option<&super::signature::Pending>,
    ) -> std::result::Result<(Identity, Option<u64>), SignInError> {
        let name = name.trim();
        let password_ok = match second_factor {
            // The password was checked when the challenge was given (see the module doc).
            SecondFactor::Passkey { pending, .. } => {
                self.check_throttle(name, source, now)?;
                pending.name == name && now - pending.issued_at <= super::CEREMONY_TTL
            }
            _ => self.check_password(name, password_text, source, now)?.1,
        };
        self.store
            .write(|txn| {
                // Re-read: another sign-in may have changed the account since.
                let account = load(txn, name)?;
                let verdict = judge(self, account.as_ref(), password_ok, second_factor, now)?;
                record(self, txn, name, account, verdict, source, now, signing)
            })?
            .map_err(|()| SignInError::Refused)
    }

    /// The first half of a passkey sign-in: checks `name`'s `password` like a sign-in does
    /// (throttled, a wrong one counted and audited), then the account's state, and returns the
    /// challenge for its passkeys registered under `rp`, for the browser, with the state that
    /// [`SecondFactor::Passkey`] hands back. Nothing is written when the password is right.
    pub fn passkey_challenge(
        &self,
        name: &str,
        password_text: &str,
        rp: &RelyingParty,
        source: IpAddr,
        now: OffsetDateTime,
    ) -> std::result::Result<
        (
            webauthn_rs::prelude::RequestChallengeResponse,
            PendingSignIn,
        ),
        SignInError,
    > {
        let name = name.trim();
        let (account, password_ok) = self.check_password(name, password_text, source, now)?;
        if let Some(account) = account.as_ref()
            && refusal(Some(account), password_ok, now).is_none()
        {
            return match passkeys::sign_in_challenge(account, rp, now)? {
                Some(challenge) => Ok(challenge),
                None => Err(SignInError::NoPasskey {
                    rp_id: rp.id().to_owned(),
                }),
            };
        }
        self.store
            .write(|txn| {
                let account = load(txn, name)?;
                let (reason, counts) = refusal(account.as_ref(), password_ok, now)
                    .unwrap_or(("the account changed during sign-in", false));
                let verdict = Verdict::Refused {
                    reason: reason.to_owned(),
                    counts,
                };
                record(self, txn, name, account, verdict, source, now, None)
            })?
            .map(|_| ())
            .map_err(|()| SignInError::Refused)?;
        Err(SignInError::Refused)
    }

    /// Refuses unchecked while `name` or `source` must wait.
    fn check_throttle(
        &self,
        name: &str,
        source: IpAddr,
        now: OffsetDateTime,
    ) -> std::result::Result<(), SignInError> {
        let (by_name, by_source) = self.store.read(|txn| match txn.open_table(THROTTLE) {
            Ok(t) => Ok((
                store::get_json::<_, Throttle>(&t, "people_throttle", name_key(name).as_str())?,
                store::get_json::<_, Throttle>(&t, "people_throttle", source_key(source).as_str())?,
            )),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok((None, None)),
            Err(e) => Err(e.into()),
        })?;
        let retry_after = wait(by_name.as_ref(), now).max(wait(by_source.as_ref(), now));
        if !retry_after.is_zero() {
            tracing::debug!(user = name, %source, ?retry_after, "Sign-in attempt refused unchecked: too many failures.");
            return Err(SignInError::TryLater { retry_after });
        }
        Ok(())
    }

    /// The throttle check, then the account as read and whether `password_text` is its
    /// password (for a name with no account, an equal amount of work is done).
    fn check_password(
        &self,
        name: &str,
        password_text: &str,
        source: IpAddr,
        now: OffsetDateTime,
    ) -> std::result::Result<(Option<super::Account>, bool), SignInError> {
        self.check_throttle(name, source, now)?;
        let account = self.account(name)?;
        let password_ok = match account.as_ref().and_then(|a| a.password.as_deref()) {
            Some(phc) => password::verify(password_text, phc),
            None => {
                password::verify_nothing(password_text);
                false
            }
        };
        Ok((account, password_ok))
    }
}

/// Why `account` may not sign in whatever its second factor (reason, and whether it counts
/// towards the lock), or `None`.
fn refusal(
    account: Option<&super::Account>,
    password_ok: bool,
    now: OffsetDateTime,
) -> Option<(&'static str, bool)> {
    let Some(account) = account else {
        return Some(("no such account", false));
    };
    if account.password.is_none() {
        return Some(("the account's set-up is not complete", false));
    }
    if !password_ok {
        return Some(("wrong password", true));
    }
    match account.state {
        AccountState::Disabled => return Some(("the account is disabled", false)),
        AccountState::Locked => {
            return Some((
                "the account is locked after failed sign-ins; an admin must unlock it",
                false,
            ));
        }
        AccountState::Pending => return Some(("the account's set-up is not complete", false)),
        AccountState::Active => {}
    }
    if account.expired_at(now) {
        return Some(("the account has expired", false));
    }
    None
}

/// The checks after the password, in order; pure apart from reading the factors.
fn judge(
    people: &People,
    account: Option<&super::Account>,
    password_ok: bool,
    factor: &SecondFactor,
    now: OffsetDateTime,
) -> Result<Verdict> {
    let demo_accounts = people.demo_accounts_allowed();
    let refused = |reason: &str, counts: bool| {
        Ok(Verdict::Refused {
            reason: reason.to_owned(),
            counts,
        })
    };
    if let Some((reason, counts)) = refusal(account, password_ok, now) {
        // A passkey answer whose challenge does not fit (another name, too old) is refused as
        // a wrong password would be: the proof of the password is what failed.
        let reason = match factor {
            SecondFactor::Passkey { .. } if reason == "wrong password" => {
                "the passkey challenge is for another account or has expired"
            }
            _ => reason,
        };
        return refused(reason, counts);
    }
    let Some(account) = account else {
        return refused("no such account", false);
    };
    if account.demo && !demo_accounts {
        return refused("a demo account signs in only in `rxgate demo`", false);
    }
    match factor {
        SecondFactor::Totp(code) => {
            let Some(secret) = account.totp_secret.as_deref() else {
                return refused("the account has no authenticator set up", false);
            };
            let secret = people.open_totp(&account.name, secret)?;
            match factors::check_totp(&secret, code, now, account.totp_last_step)? {
                Ok(step) => Ok(Verdict::Accepted {
                    totp_step: Some(step),
                    recovery_code: None,
                    passkey: None,
                }),
                Err(factors::TotpRefused::Wrong) => refused("wrong TOTP code", true),
                Err(factors::TotpRefused::Replayed) => {
                    refused("TOTP code already used (replay refused)", true)
                }
            }
        }
        SecondFactor::RecoveryCode(code) => {
            let mut codes = account.recovery_codes.clone();
            if factors::use_recovery_code(&mut codes, code, now) {
                Ok(Verdict::Accepted {
                    totp_step: None,
                    recovery_code: Some(code.clone()),
                    passkey: None,
                })
            } else {
                refused("wrong or already used recovery code", true)
            }
        }
        SecondFactor::Passkey { pending, response } => {
            match passkeys::verify_assertion(account, pending, response) {
                Ok(asserted) => Ok(Verdict::Accepted {
                    totp_step: None,
                    recovery_code: None,
                    passkey: Some(asserted),
                }),
                Err(reason) => refused(&reason, true),
            }
        }
    }
}

/// Writes what a verdict changes: counts, lock, spent factor, and the audit entries.
/// `Err(())`: the sign-in was refused (and that is recorded).
#[allow(clippy::too_many_arguments)] // one call site; every argument is part of what is written
fn record(
    people: &People,
    txn: &WriteTransaction,
    name: &str,
    account: Option<super::Account>,
    verdict: Verdict,
    source: IpAddr,
    now: OffsetDateTime,
    signing: Option<&super::signature::Pending>,
) -> Result<std::result::Result<(Identity, Option<u64>), ()>> {
    match verdict {
        Verdict::Accepted {
            totp_step,
            recovery_code,
            passkey,
        } => {
            let Some(mut account) = account else {
                return Ok(Err(()));
            };
            let factor = if let Some(step) = totp_step {
                account.totp_last_step = Some(step);
                "totp"
            } else if let Some(asserted) = &passkey {
                passkeys::mark_used(&mut account, asserted, now);
                "passkey"
            } else {
                if let Some(code) = &recovery_code {
                    factors::use_recovery_code(&mut account.recovery_codes, code, now);
                }
                "recovery_code"
            };
            account.failed_sign_ins = 0;
            account.last_sign_in = Some(now);
            save(txn, &account)?;
            let mut throttle = txn.open_table(THROTTLE)?;
            throttle.remove(name_key(name).as_str())?;
            throttle.remove(source_key(source).as_str())?;
            drop(throttle);
            let left = account
                .recovery_codes
                .iter()
                .filter(|c| c.used_at.is_none())
                .count();
            let entry = match signing {
                None => Record::new(Kind::UserSignedIn, name).detail(serde_json::json!({
                    "user": name,
                    "factor": factor,
                    "passkey": passkey.as_ref().map(|p| p.id.as_str()),
                    "recovery_codes_left": left,
                })),
                Some(pending) => Record::new(Kind::RecordSigned, name).detail(pending.detail(
                    name,
                    &account.roles(),
                    factor,
                    now,
                )),
            };
            let seq = people.audit(txn, now, entry.source(source))?;
            Ok(Ok((
                Identity {
                    name: account.name.clone(),
                    roles: account.roles(),
                    recovery_codes_left: left,
                },
                signing.map(|_| seq),
            )))
        }
        Verdict::Refused { reason, counts } => {
            let name_failures = bump(txn, &name_key(name), now)?;
            bump(txn, &source_key(source), now)?;
            let mut locked_now = false;
            let mut account_failures = None;
            if let Some(mut account) = account
                && counts
            {
                account.failed_sign_ins = account.failed_sign_ins.saturating_add(1);
                account_failures = Some(account.failed_sign_ins);
                if account.failed_sign_ins >= LOCK_AFTER && account.state == AccountState::Active {
                    account.state = AccountState::Locked;
                    locked_now = true;
                }
                save(txn, &account)?;
            }
            people.audit(
                txn,
                now,
                Record::new(Kind::UserSignInRefused, "unauthenticated")
                    .source(source)
                    .detail(serde_json::json!({
                        "user": name,
                        "reason": reason,
                        "failed_sign_ins": account_failures,
                        "failures_for_name": name_failures,
                    })),
            )?;
            if locked_now {
                people.audit(
                    txn,
                    now,
                    Record::new(Kind::UserLocked, "gateway")
                        .source(source)
                        .detail(serde_json::json!({
                            "user": name,
                            "failed_sign_ins": account_failures,
                            "reason": format!("{LOCK_AFTER} failed sign-ins in a row"),
                        })),
                )?;
                tracing::warn!(user = name, %source, "Account locked after failed sign-ins.");
            }
            Ok(Err(()))
        }
    }
}

/// Counts one more failure under `key`; returns the count.
fn bump(txn: &WriteTransaction, key: &str, now: OffsetDateTime) -> Result<u32> {
    let mut table = txn.open_table(THROTTLE)?;
    let previous: Option<Throttle> = store::get_json(&table, "people_throttle", key)?;
    let failures = previous
        .filter(|t| now - t.last_failure < THROTTLE_MEMORY)
        .map_or(0, |t| t.failures)
        .saturating_add(1);
    if previous.is_none() && table.len()? as usize >= MAX_THROTTLE_ENTRIES {
        // Forget the stalest record to make room.
        let mut stalest: Option<(String, OffsetDateTime)> = None;
        for entry in table.iter()? {
            let (k, v) = entry?;
            let last = serde_json::from_slice::<Throttle>(v.value())
                .map(|t| t.last_failure)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            if stalest.as_ref().is_none_or(|(_, s)| last < *s) {
                stalest = Some((k.value().to_owned(), last));
            }
        }
        if let Some((k, _)) = stalest {
            table.remove(k.as_str())?;
        }
    }
    let record = Throttle {
        failures,
        last_failure: now,
    };
    table.insert(key, to_json(&record).as_slice())?;
    Ok(failures)
}

#[cfg(test)]
pub(super) fn record_failure_for_test(
    people: &People,
    name: &str,
    source: IpAddr,
    now: OffsetDateTime,
) -> Result<()> {
    people.store.write(|txn| {
        let account = load(txn, name)?;
        let verdict = Verdict::Refused {
            reason: "wrong password".to_owned(),
            counts: true,
        };
        record(people, txn, name, account, verdict, source, now, None).map(|_| ())
    })
}
