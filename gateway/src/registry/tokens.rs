//! One-time enrollment tokens.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use redb::{ReadableTable, WriteTransaction};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use super::{Actor, DEVICES, DeviceRecord, DeviceStatus, Registry, TOKENS, load_device};
use crate::audit::Kind;
use crate::error::{Error, Result};
use crate::store::{self, to_json};

/// Prefix of every token secret, so a leaked one is recognisable by secret scanners.
const SECRET_PREFIX: &str = "rxg_";
/// Source addresses whose wrong guesses one token remembers; beyond it, addresses not locked out
/// are forgotten first (the record is rewritten at every attempt, so it stays small).
const MAX_SOURCES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenState {
    Pending,
    Used,
    /// Too many failed attempts.
    Burnt,
    Revoked,
}

/// A token as stored: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub device: String,
    pub kind: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Wrong secrets from all sources together.
    pub failed_attempts: u32,
    pub state: TokenState,
    /// Wrong secrets per source address, for the per-source lockout.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed_by_source: BTreeMap<IpAddr, SourceFailures>,
}

/// One source address's wrong secrets for one token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFailures {
    pub failures: u32,
    /// Set when `failures` reached the per-source limit: until then the source is refused
    /// without its secret being looked at.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub locked_until: Option<OffsetDateTime>,
}

/// How many wrong secrets a token takes: per source before that source is locked out, and from
/// all sources before the token is burnt.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub per_source: u32,
    pub lockout: Duration,
    pub burn_after: u32,
}

/// What `rxgate token list` shows: no secret, no hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub device: String,
    pub kind: String,
    /// pending, used, burnt, revoked or expired.
    pub state: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub failed_attempts: u32,
}

impl TokenRecord {
    fn info(&self, now: OffsetDateTime) -> TokenInfo {
        let state = match self.state {
            TokenState::Pending if self.expires_at <= now => "expired",
            TokenState::Pending => "pending",
            TokenState::Used => "used",
            TokenState::Burnt => "burnt",
            TokenState::Revoked => "revoked",
        };
        TokenInfo {
            id: self.id.clone(),
            device: self.device.clone(),
            kind: self.kind.clone(),
            state: state.to_owned(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            failed_attempts: self.failed_attempts,
        }
    }
}

/// A token check that failed. `no_token`: there was nothing pending for the device at all.
/// `class` and `reason` are for the audit trail only: the requester is told none of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TokenRefused {
    pub class: &'static str,
    pub reason: String,
    pub no_token: bool,
    pub burnt_now: bool,
}

fn sha256_hex(secret: &str) -> String {
    digest::digest(&digest::SHA256, secret.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Invalid("the system random number generator failed".to_owned()))?;
    Ok(bytes)
}

fn load_token(txn: &WriteTransaction, device: &str) -> Result<Option<TokenRecord>> {
    store::get_json(&txn.open_table(TOKENS)?, "tokens", device)
}

fn save_token(txn: &WriteTransaction, token: &TokenRecord) -> Result<()> {
    txn.open_table(TOKENS)?
        .insert(token.device.as_str(), to_json(token).as_slice())?;
    Ok(())
}

/// Checks `secret` from `source` against the device's pending token without consuming it.
///
/// A wrong secret counts against its source and against the token. A source that reaches
/// `limits.per_source` is locked out of this token for `limits.lockout`: its attempts are refused
/// unchecked, so a stranger at one address cannot use up the installer's attempts at another.
/// The wrong secret that brings all sources together to `limits.burn_after` burns the token.
pub(super) fn verify(
    txn: &WriteTransaction,
    device: &str,
    secret: &str,
    source: IpAddr,
    now: OffsetDateTime,
    limits: Limits,
) -> Result<Result<TokenRecord, TokenRefused>> {
    let refused = |class: &'static str, reason: String, no_token: bool| {
        Ok(Err(TokenRefused {
            class,
            reason,
            no_token,
            burnt_now: false,
        }))
    };
    let Some(mut token) = load_token(txn, device)? else {
        return refused(
            "no_token",
            format!("no enrollment token exists for device {device:?}"),
            true,
        );
    };
    match token.state {
        TokenState::Used => {
            return refused(
                "token_used",
                format!("the token for device {device:?} was already used"),
                true,
            );
        }
        TokenState::Burnt => {
            return refused(
                "token_burnt",
                format!(
                    "the token for device {device:?} was burnt after {} failed attempts; create a new one",
                    token.failed_attempts
                ),
                true,
            );
        }
        TokenState::Revoked => {
            return refused(
                "token_revoked",
                format!("the token for device {device:?} was revoked"),
                true,
            );
        }
        TokenState::Pending => {}
    }
    if let Some(entry) = token.failed_by_source.get_mut(&source) {
        match entry.locked_until {
            Some(until) if until > now => {
                return refused(
                    "source_locked_out",
                    format!(
                        "{source} is locked out of the token for device {device:?} until {} after {} wrong tokens; the secret was not checked",
                        crate::clock::rfc3339(until),
                        entry.failures
                    ),
                    false,
                );
            }
            // The lockout is over: a fresh allowance.
            Some(_) => {
                entry.failures = 0;
                entry.locked_until = None;
            }
            None => {}
        }
    }
    let matches: bool = sha256_hex(secret)
        .as_bytes()
        .ct_eq(token.secret_sha256.as_bytes())
        .into();
    if !matches {
        token.failed_attempts = token.failed_attempts.saturating_add(1);
        make_room(&mut token.failed_by_source, source, now);
        let entry = token
            .failed_by_source
            .entry(source)
            .or_insert(SourceFailures {
                failures: 0,
                locked_until: None,
            });
        entry.failures = entry.failures.saturating_add(1);
        let mut reason = format!(
            "wrong token for device {device:?} ({} from {source}, {} from all sources)",
            entry.failures, token.failed_attempts
        );
        if entry.failures >= limits.per_source {
            let until = now + limits.lockout;
            entry.locked_until = Some(until);
            reason.push_str(&format!(
                "; {source} is locked out of this token until {}",
                crate::clock::rfc3339(until)
            ));
        }
        let burnt_now = token.failed_attempts >= limits.burn_after;
        if burnt_now {
            token.state = TokenState::Burnt;
            reason.push_str("; the token is now burnt");
        }
        save_token(txn, &token)?;
        return Ok(Err(TokenRefused {
            class: "wrong_token",
            reason,
            no_token: false,
            burnt_now,
        }));
    }
    if token.expires_at <= now {
        return refused(
            "token_expired",
            format!(
                "the token for device {device:?} expired at {}",
                crate::clock::rfc3339(token.expires_at)
            ),
            false,
        );
    }
    Ok(Ok(token))
}

/// Keeps `sources` below [`MAX_SOURCES`] before `source` is added: addresses not locked out go
/// first, fewest failures first.
fn make_room(sources: &mut BTreeMap<IpAddr, SourceFailures>, source: IpAddr, now: OffsetDateTime) {
    if sources.len() < MAX_SOURCES || sources.contains_key(&source) {
        return;
    }
    let victim = sources
        .iter()
        .min_by_key(|(_, f)| (f.locked_until.is_some_and(|until| until > now), f.failures))
        .map(|(ip, _)| *ip);
    if let Some(victim) = victim {
        sources.remove(&victim);
    }
}

pub(super) fn mark_used(
    txn: &WriteTransaction,
    mut token: TokenRecord,
    _now: OffsetDateTime,
) -> Result<()> {
    token.state = TokenState::Used;
    save_token(txn, &token)
}

/// Revokes the device's pending token, if any. Returns whether there was one.
pub(super) fn revoke_pending(txn: &WriteTransaction, device: &str) -> Result<bool> {
    match load_token(txn, device)? {
        Some(mut token) if token.state == TokenState::Pending => {
            token.state = TokenState::Revoked;
            save_token(txn, &token)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

impl Registry {
    /// Creates a one-time token for `device` of `kind`, valid for `ttl`, replacing any earlier
    /// token of that device. Returns the token's public description and its secret; the secret
    /// is not stored and cannot be shown again.
    pub fn create_token(
        &self,
        device: &str,
        kind: &str,
        ttl: Duration,
        actor: &Actor,
    ) -> Result<(TokenInfo, String)> {
        rxgate_certs::validate_device_id(device)?;
        rxgate_certs::validate_kind(kind)?;
        let now = self.clock.now();
        let secret = format!(
            "{SECRET_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(random_bytes::<32>()?)
        );
        let id: String = random_bytes::<6>()?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let token = TokenRecord {
            id: format!("t-{id}"),
            device: device.to_owned(),
            kind: kind.to_owned(),
            secret_sha256: sha256_hex(&secret),
            created_at: now,
            expires_at: now + ttl,
            failed_attempts: 0,
            state: TokenState::Pending,
            failed_by_source: BTreeMap::new(),
        };
        self.store.write(|txn| {
            let existing = load_device(txn, device)?;
            if let Some(existing) = &existing
                && existing.kind != kind
                && existing.status != DeviceStatus::Revoked
            {
                return Err(Error::Invalid(format!(
                    "device {device} is registered as kind {:?}, not {kind:?}; revoke it first to change its kind",
                    existing.kind
                )));
            }
            let replaced = load_token(txn, device)?.filter(|t| t.state == TokenState::Pending);
            save_token(txn, &token)?;
            if existing.is_none() {
                let record = DeviceRecord {
                    id: device.to_owned(),
                    kind: kind.to_owned(),
                    status: DeviceStatus::Pending,
                    created_at: now,
                    serial: None,
                    not_after: None,
                    last_seen: None,
                    revoked: None,
                };
                txn.open_table(DEVICES)?.insert(device, to_json(&record).as_slice())?;
            }
            self.audit(
                txn,
                actor.record(Kind::TokenCreated).device(device).detail(serde_json::json!({
                    "token": token.id,
                    "kind": kind,
                    "expires_at": crate::clock::rfc3339(token.expires_at),
                    "replaced_token": replaced.map(|t| t.id),
                })),
            )?;
            Ok(())
        })?;
        tracing::info!(device, kind, token = %token.id, "Enrollment token created.");
        Ok((token.info(now), secret))
    }

    /// All tokens, by device id.
    pub fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let now = self.clock.now();
        let records: Vec<TokenRecord> = self.store.read(|txn| store::all_json(txn, TOKENS))?;
        Ok(records.iter().map(|t| t.info(now)).collect())
    }

    /// Revokes a pending token, named by its id (`t-…`) or its device id.
    pub fn revoke_token(&self, id_or_device: &str, actor: &Actor) -> Result<TokenInfo> {
        let now = self.clock.now();
        self.store.write(|txn| {
            let mut found = load_token(txn, id_or_device)?;
            if found.is_none() {
                for entry in txn.open_table(TOKENS)?.iter()? {
                    let (_, value) = entry?;
                    if let Ok(token) = serde_json::from_slice::<TokenRecord>(value.value())
                        && token.id == id_or_device
                    {
                        found = Some(token);
                        break;
                    }
                }
            }
            let Some(mut token) = found else {
                return Err(Error::NotFound(format!(
                    "no token with id or device {id_or_device:?}; see `rxgate token list`"
                )));
            };
            if token.state != TokenState::Pending {
                return Err(Error::Invalid(format!(
                    "token {} is {}, not pending; nothing to revoke",
                    token.id,
                    token.info(now).state
                )));
            }
            token.state = TokenState::Revoked;
            save_token(txn, &token)?;
            self.audit(
                txn,
                actor
                    .record(Kind::TokenRevoked)
                    .device(&token.device)
                    .detail(serde_json::json!({ "token": token.id })),
            )?;
            Ok(token.info(now))
        })
    }
}
