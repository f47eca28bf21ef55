//! Passkeys (WebAuthn) as a second factor, beside TOTP: a person may register several, each
//! named, on the console; signing in then takes the password, then either a TOTP code (or a
//! recovery code) or a passkey.
//!
//! # Relying party
//! The relying-party id is the host name the console is reached under, and the expected origin
//! `https://<host>[:port]` as the browser sent it in `Host`. Browsers refuse passkeys on a bare
//! IP address, so an IP address gets no passkey ceremony (the console says so and offers TOTP);
//! and only the names the gateway's server certificate carries are accepted (`localhost` and
//! `[gateway].server_names`): under any other name the browser would see a certificate error
//! and refuse too. A passkey works only under the name it was registered under, which is stored
//! with it.
//!
//! # What is stored
//! In the account ([`super::Account::passkeys`]): for each passkey its id (the credential id,
//! base64url), the person's label, the relying-party id, when it was added and last used, the
//! signature counter, and the credential itself (public key, counter and flags) as webauthn-rs
//! serialises it. No attestation is asked for or kept. Ceremony state (the challenge) is never
//! stored: the console keeps it in memory for its session, for [`CEREMONY_TTL`] at most.
//!
//! # Counters
//! An authenticator that keeps a signature counter must show a larger one each time; one that
//! does not (most synchronised passkeys) always shows 0. A non-zero counter not above the
//! stored one is refused as a possibly cloned authenticator. The check runs in the write
//! transaction against the counter as stored then, so two sign-ins at once cannot both pass
//! with the same value.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use webauthn_rs::prelude::{
    CreationChallengeResponse, Passkey, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, RequestChallengeResponse, Url, Uuid,
    Webauthn, WebauthnBuilder,
};

use super::{People, load, not_found, save};
use crate::audit::{Kind, Record};
use crate::error::{Error, Result};

/// How long a person has to complete a ceremony (touch the authenticator) once it is offered.
pub const CEREMONY_TTL: Duration = Duration::from_secs(5 * 60);
/// Passkeys one account may hold.
pub const MAX_PASSKEYS: usize = 16;
/// The longest label kept.
pub const MAX_LABEL: usize = 64;

/// One passkey as stored with its account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredPasskey {
    /// The credential id, base64url without padding.
    pub id: String,
    /// What the person called it ("office PC", "phone").
    pub label: String,
    /// The host name it was registered under; it works only there.
    pub rp_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_used: Option<OffsetDateTime>,
    /// The signature counter last seen (0 for authenticators that keep none).
    #[serde(default)]
    pub sign_count: u32,
    pub credential: Passkey,
}

impl PartialEq for StoredPasskey {
    fn eq(&self, other: &StoredPasskey) -> bool {
        self.id == other.id
            && self.label == other.label
            && self.rp_id == other.rp_id
            && self.created_at == other.created_at
            && self.last_used == other.last_used
            && self.sign_count == other.sign_count
    }
}

impl Eq for StoredPasskey {}

/// What the console lists: no key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PasskeyInfo {
    pub id: String,
    pub label: String,
    pub rp_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used: Option<OffsetDateTime>,
    pub sign_count: u32,
}

impl StoredPasskey {
    pub fn info(&self) -> PasskeyInfo {
        PasskeyInfo {
            id: self.id.clone(),
            label: self.label.clone(),
            rp_id: self.rp_id.clone(),
            created_at: self.created_at,
            last_used: self.last_used,
            sign_count: self.sign_count,
        }
    }
}

/// Why passkeys cannot be offered under the host a page was reached by.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasskeysUnavailable {
    #[error(
        "Passkeys need the console to be opened under a name, not the IP address {ip}: browsers refuse passkeys on a bare IP address. Open it as https://localhost{port} on the gateway itself, or under the Pi's host name (https://<host name>{port}); until then, use the code from your authenticator app."
    )]
    IpAddress {
        ip: String,
        /// `:8444`, as the page was reached, or empty.
        port: String,
    },
    #[error(
        "Passkeys work only under a name the gateway's certificate carries ({known}); this page was opened as {host}. Add the name to [gateway].server_names, or open the console under one of those names."
    )]
    UnknownName { host: String, known: String },
    #[error("the request did not say which host it was for")]
    NoHost,
}

/// The relying party for one host name: what webauthn-rs checks ceremonies against.
#[derive(Clone)]
pub struct RelyingParty {
    id: String,
    webauthn: Arc<Webauthn>,
}

impl std::fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelyingParty")
            .field("id", &self.id)
            .finish()
    }
}

impl RelyingParty {
    /// The host name passkeys are registered under.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The host name and the port (`:8444`, or empty) in a `Host` header value (`name`,
/// `name:port`, `[v6]:port`).
fn host_name(host: &str) -> (&str, &str) {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (ip, after);
    }
    match host.rfind(':') {
        Some(at) if host[at + 1..].bytes().all(|b| b.is_ascii_digit()) => host.split_at(at),
        _ => (host, ""),
    }
}

/// A ceremony started and waiting for the browser's answer. Only `People` makes one; the
/// console keeps it (in memory, for its session) and hands it back with the answer.
pub struct PendingRegistration {
    pub(super) name: String,
    pub(super) rp: RelyingParty,
    pub(super) state: PasskeyRegistration,
    pub(super) user_id: Uuid,
}

impl PendingRegistration {
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A passkey sign-in whose password was right: the challenge the browser answers. Only made by
/// [`People::passkey_challenge`], after the password was checked.
pub struct PendingSignIn {
    pub(super) name: String,
    pub(super) rp: RelyingParty,
    pub(super) state: PasskeyAuthentication,
    /// When the password was checked; the proof lapses [`CEREMONY_TTL`] later.
    pub(super) issued_at: OffsetDateTime,
}

impl PendingSignIn {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host name the challenge is for.
    pub fn rp_id(&self) -> &str {
        &self.rp.id
    }
}

impl std::fmt::Debug for PendingSignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSignIn")
            .field("name", &self.name)
            .field("rp", &self.rp)
            .finish()
    }
}

/// Why a passkey was not registered. The message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasskeyRefused {
    #[error(
        "the browser's answer was not a passkey registration ({0}); try again, and complete the prompt on your device"
    )]
    BadResponse(String),
    #[error("the passkey could not be verified ({0}); try again from the same page")]
    Verification(String),
    #[error("this passkey is already registered; it is listed below")]
    AlreadyRegistered,
    #[error("an account keeps at most {MAX_PASSKEYS} passkeys; remove one first")]
    TooMany,
    #[error("the account cannot register passkeys now (it is not active)")]
    NotActive,
}

/// The credential id as stored and shown: base64url without padding.
fn credential_id(passkey: &Passkey) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(passkey.cred_id().as_ref())
}

/// A label as kept: trimmed, at most [`MAX_LABEL`] characters, never empty.
fn clean_label(label: &str, existing: usize) -> String {
    let label: String = label
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_LABEL)
        .collect();
    if label.is_empty() {
        format!("Passkey {}", existing + 1)
    } else {
        label
    }
}

impl People {
    /// The relying party for a page reached under `host` (the `Host` header), or why passkeys
    /// cannot be offered there.
    pub fn relying_party(
        &self,
        host: Option<&str>,
    ) -> std::result::Result<RelyingParty, PasskeysUnavailable> {
        let host = host.map(str::trim).filter(|h| !h.is_empty());
        let Some(host) = host else {
            return Err(PasskeysUnavailable::NoHost);
        };
        let (name, port) = host_name(host);
        let name = name.to_ascii_lowercase();
        if name.parse::<IpAddr>().is_ok() {
            return Err(PasskeysUnavailable::IpAddress {
                ip: name,
                port: port.to_owned(),
            });
        }
        if !self.passkey_hosts.contains(&name) {
            return Err(PasskeysUnavailable::UnknownName {
                host: name,
                known: self.passkey_hosts.join(", "),
            });
        }
        let unknown = || PasskeysUnavailable::UnknownName {
            host: host.to_owned(),
            known: self.passkey_hosts.join(", "),
        };
        let origin =
            Url::parse(&format!("https://{}", host.to_ascii_lowercase())).map_err(|_| unknown())?;
        let rp_name = format!("rxgate {}", self.site);
        let webauthn = WebauthnBuilder::new(&name, &origin)
            .map_err(|_| unknown())?
            .rp_name(&rp_name)
            .timeout(CEREMONY_TTL)
            .build()
            .map_err(|_| unknown())?;
        Ok(RelyingParty {
            id: name,
            webauthn: Arc::new(webauthn),
        })
    }

    /// `name`'s passkeys, oldest first.
    pub fn passkeys(&self, name: &str) -> Result<Vec<PasskeyInfo>> {
        Ok(self
            .account(name)?
            .ok_or_else(|| not_found(name))?
            .passkeys
            .iter()
            .map(StoredPasskey::info)
            .collect())
    }

    /// Starts registering a passkey for `name` under `rp`: the options for the browser
    /// (`navigator.credentials.create`) and the state to hand back to
    /// [`People::finish_passkey_registration`]. The account's existing passkeys are excluded,
    /// so an authenticator is not registered twice.
    pub fn start_passkey_registration(
        &self,
        name: &str,
        rp: &RelyingParty,
    ) -> Result<(CreationChallengeResponse, PendingRegistration)> {
        let account = self.account(name)?.ok_or_else(|| not_found(name))?;
        let user_id = account.passkey_user_id.unwrap_or_else(Uuid::new_v4);
        let exclude: Vec<_> = account
            .passkeys
            .iter()
            .map(|p| p.credential.cred_id().clone())
            .collect();
        let display = format!("{name} ({})", self.site);
        let (options, state) = rp
            .webauthn
            .start_passkey_registration(user_id, name, &display, Some(exclude))
            .map_err(|e| Error::Invalid(format!("a passkey registration could not start: {e}")))?;
        Ok((
            options,
            PendingRegistration {
                name: name.to_owned(),
                rp: rp.clone(),
                state,
                user_id,
            },
        ))
    }

    /// Verifies the browser's answer (`response`, the credential as JSON) to `pending` and
    /// stores the passkey under `label`, with its audit entry `user.passkey_added` under the
    /// person's name, in one transaction.
    pub fn finish_passkey_registration(
        &self,
        pending: &PendingRegistration,
        label: &str,
        response: &str,
        source: Option<IpAddr>,
    ) -> Result<std::result::Result<PasskeyInfo, PasskeyRefused>> {
        let credential = match verify_registration(pending, response) {
            Ok(c) => c,
            Err(refused) => return Ok(Err(refused)),
        };
        self.store_passkey(
            &pending.name,
            &pending.rp.id,
            pending.user_id,
            label,
            credential,
            source,
        )
    }

    /// Stores a verified passkey for `name` (re-reading the account in the write transaction,
    /// so concurrent registrations all land), with its audit entry.
    pub(super) fn store_passkey(
        &self,
        name: &str,
        rp_id: &str,
        user_id: Uuid,
        label: &str,
        credential: Passkey,
        source: Option<IpAddr>,
    ) -> Result<std::result::Result<PasskeyInfo, PasskeyRefused>> {
        let now = self.clock.now();
        self.store.write(|txn| {
            let Some(mut account) = load(txn, name)? else {
                return Err(not_found(name));
            };
            if let Err(refused) =
                add_to(&mut account, rp_id, user_id, label, credential.clone(), now)
            {
                return Ok(Err(refused));
            }
            save(txn, &account)?;
            let added = account.passkeys.last().map(StoredPasskey::info);
            let Some(added) = added else {
                return Ok(Err(PasskeyRefused::NotActive));
            };
            self.audit(txn, now, passkey_added(name, &added, source))?;
            tracing::info!(user = name, rp_id = %added.rp_id, "Passkey registered.");
            Ok(Ok(added))
        })
    }

    /// Removes `name`'s passkey `id`, with its audit entry `user.passkey_removed` under `by`.
    pub fn remove_passkey(
        &self,
        name: &str,
        id: &str,
        by: &str,
        source: Option<IpAddr>,
    ) -> Result<PasskeyInfo> {
        let now = self.clock.now();
        self.store.write(|txn| {
            let mut account = load(txn, name)?.ok_or_else(|| not_found(name))?;
            let Some(at) = account.passkeys.iter().position(|p| p.id == id) else {
                return Err(Error::NotFound(format!(
                    "account {name} has no passkey {id:?}; it may have been removed already"
                )));
            };
            let removed = account.passkeys.remove(at).info();
            save(txn, &account)?;
            let mut record = Record::new(Kind::UserPasskeyRemoved, by).detail(serde_json::json!({
                "user": name,
                "passkey": removed.id,
                "label": removed.label,
                "rp_id": removed.rp_id,
                "passkeys_left": account.passkeys.len(),
            }));
            if let Some(source) = source {
                record = record.source(source);
            }
            self.audit(txn, now, record)?;
            tracing::info!(user = name, by, "Passkey removed.");
            Ok(removed)
        })
    }
}

/// The browser's registration answer checked against the challenge.
pub(super) fn verify_registration(
    pending: &PendingRegistration,
    response: &str,
) -> std::result::Result<Passkey, PasskeyRefused> {
    let response: RegisterPublicKeyCredential =
        serde_json::from_str(response).map_err(|e| PasskeyRefused::BadResponse(e.to_string()))?;
    pending
        .rp
        .webauthn
        .finish_passkey_registration(&response, &pending.state)
        .map_err(|e| PasskeyRefused::Verification(e.to_string()))
}

/// Adds a verified passkey to `account` (in its write transaction).
pub(super) fn add_to(
    account: &mut super::Account,
    rp_id: &str,
    user_id: Uuid,
    label: &str,
    credential: Passkey,
    now: OffsetDateTime,
) -> std::result::Result<(), PasskeyRefused> {
    if matches!(
        account.state,
        super::AccountState::Disabled | super::AccountState::Locked
    ) {
        return Err(PasskeyRefused::NotActive);
    }
    let id = credential_id(&credential);
    if account.passkeys.iter().any(|p| p.id == id) {
        return Err(PasskeyRefused::AlreadyRegistered);
    }
    if account.passkeys.len() >= MAX_PASSKEYS {
        return Err(PasskeyRefused::TooMany);
    }
    account.passkey_user_id.get_or_insert(user_id);
    let label = clean_label(label, account.passkeys.len());
    account.passkeys.push(StoredPasskey {
        id,
        label,
        rp_id: rp_id.to_owned(),
        created_at: now,
        last_used: None,
        sign_count: 0,
        credential,
    });
    Ok(())
}

/// The audit entry for a passkey registered.
pub(super) fn passkey_added(name: &str, added: &PasskeyInfo, source: Option<IpAddr>) -> Record {
    let record = Record::new(Kind::UserPasskeyAdded, name).detail(serde_json::json!({
        "user": name,
        "passkey": added.id,
        "label": added.label,
        "rp_id": added.rp_id,
    }));
    match source {
        Some(source) => record.source(source),
        None => record,
    }
}

/// The challenge for a passkey sign-in of `account` under `rp`: its passkeys registered there.
/// `None` when it has none there.
pub(super) fn sign_in_challenge(
    account: &super::Account,
    rp: &RelyingParty,
    now: OffsetDateTime,
) -> Result<Option<(RequestChallengeResponse, PendingSignIn)>> {
    let keys: Vec<Passkey> = account
        .passkeys
        .iter()
        .filter(|p| p.rp_id == rp.id)
        .map(|p| p.credential.clone())
        .collect();
    if keys.is_empty() {
        return Ok(None);
    }
    let (options, state) = rp
        .webauthn
        .start_passkey_authentication(&keys)
        .map_err(|e| Error::Invalid(format!("a passkey sign-in could not start: {e}")))?;
    Ok(Some((
        options,
        PendingSignIn {
            name: account.name.clone(),
            rp: rp.clone(),
            state,
            issued_at: now,
        },
    )))
}

/// What a passkey assertion proved: which passkey, and its new counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Asserted {
    pub id: String,
    pub counter: u32,
}

/// Checks the browser's answer to `pending` against `account`'s passkeys as stored now.
/// `Err(reason)` for the audit trail.
pub(super) fn verify_assertion(
    account: &super::Account,
    pending: &PendingSignIn,
    response: &str,
) -> std::result::Result<Asserted, String> {
    let response: PublicKeyCredential = serde_json::from_str(response)
        .map_err(|e| format!("the passkey answer is not WebAuthn JSON: {e}"))?;
    let result = pending
        .rp
        .webauthn
        .finish_passkey_authentication(&response, &pending.state)
        .map_err(|e| format!("passkey assertion refused: {e}"))?;
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(result.cred_id().as_ref());
    let Some(stored) = account
        .passkeys
        .iter()
        .find(|p| p.id == id && p.rp_id == pending.rp.id)
    else {
        return Err("the passkey is not (or no longer) registered to this account".to_owned());
    };
    check_counter(stored, result.counter())?;
    Ok(Asserted {
        id,
        counter: result.counter(),
    })
}

/// A non-zero counter must exceed the stored one (see the module doc).
pub(super) fn check_counter(
    stored: &StoredPasskey,
    counter: u32,
) -> std::result::Result<(), String> {
    if counter > 0 && counter <= stored.sign_count {
        return Err(format!(
            "passkey counter {counter} is not above the stored {} (a cloned authenticator?)",
            stored.sign_count
        ));
    }
    Ok(())
}

/// Records a passkey's use on `account`.
pub(super) fn mark_used(account: &mut super::Account, asserted: &Asserted, now: OffsetDateTime) {
    if let Some(p) = account.passkeys.iter_mut().find(|p| p.id == asserted.id) {
        p.last_used = Some(now);
        p.sign_count = p.sign_count.max(asserted.counter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_name_is_taken_from_a_host_header_with_or_without_port() {
        assert_eq!(host_name("localhost:8444"), ("localhost", ":8444"));
        assert_eq!(host_name("pharmacy-pi.local"), ("pharmacy-pi.local", ""));
        assert_eq!(host_name("[::1]:8444"), ("::1", ":8444"));
        assert_eq!(host_name("127.0.0.1:8444"), ("127.0.0.1", ":8444"));
    }

    #[test]
    fn an_empty_label_becomes_a_numbered_one_and_a_long_one_is_cut() {
        assert_eq!(clean_label("  ", 2), "Passkey 3");
        assert_eq!(clean_label(" office PC ", 0), "office PC");
        assert_eq!(clean_label(&"x".repeat(100), 0).len(), MAX_LABEL);
    }
}
