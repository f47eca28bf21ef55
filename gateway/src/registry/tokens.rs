//! One-time enrollment tokens.

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
    pub failed_attempts: u32,
    pub state: TokenState,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TokenRefused {
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

/// Checks `secret` against the device's pending token without consuming it. A wrong secret counts
/// as a failed attempt, and the attempt that reaches `max_failed` burns the token.
pub(super) fn verify(
    txn: &WriteTransaction,
    device: &str,
    secret: &str,
    now: OffsetDateTime,
    max_failed: u32,
) -> Result<Result<TokenRecord, TokenRefused>> {
    let refused = |reason: String, no_token: bool| {
        Ok(Err(TokenRefused {
            reason,
            no_token,
            burnt_now: false,
        }))
    };
    let Some(mut token) = load_token(txn, device)? else {
        return refused(
            format!("no enrollment token exists for device {device:?}"),
            true,
        );
    };
    match token.state {
        TokenState::Used => {
            return refused(
                format!("the token for device {device:?} was already used"),
                true,
            );
        }
        TokenState::Burnt => {
            return refused(
                format!(
                    "the token for device {device:?} was burnt after too many failed attempts; create a new one"
                ),
                true,
            );
        }
        TokenState::Revoked => {
            return refused(format!("the token for device {device:?} was revoked"), true);
        }
        TokenState::Pending => {}
    }
    let matches: bool = sha256_hex(secret)
        .as_bytes()
        .ct_eq(token.secret_sha256.as_bytes())
        .into();
    if !matches {
        token.failed_attempts += 1;
        let burnt_now = token.failed_attempts >= max_failed;
        if burnt_now {
            token.state = TokenState::Burnt;
        }
        save_token(txn, &token)?;
        let reason = if burnt_now {
            format!(
                "wrong token for device {device:?}; after {} failed attempts the token is now burnt",
                token.failed_attempts
            )
        } else {
            format!("wrong token for device {device:?}")
        };
        return Ok(Err(TokenRefused {
            reason,
            no_token: false,
            burnt_now,
        }));
    }
    if token.expires_at <= now {
        return refused(
            format!(
                "the token for device {device:?} expired at {}",
                crate::clock::rfc3339(token.expires_at)
            ),
            false,
        );
    }
    Ok(Ok(token))
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
