//! Electronic signatures: a re-authentication (password and a fresh second factor) bound to one
//! record. The signature is the audit entry `record.signed`, written in the same transaction
//! that accepts the re-authentication, so the audit chain (and its signed checkpoints) covers
//! it: the signer, the roles held, the time, the meaning, and the SHA-256 of the record's
//! canonical JSON (keys sorted, no whitespace) as the signer saw it.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Action, Denied, People, Role, SecondFactor, SignInError, may};

/// What a signature says the signer did with the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Meaning {
    Acknowledged,
    Reviewed,
    Resolved,
    /// The signer revoked the record (a device's certificates).
    Revoked,
    /// A daily min/max check: the signer read the fridge's values and reset its extremes.
    /// Not one of [`Meaning::ALL`], which an alert's signer chooses from.
    Checked,
}

impl Meaning {
    pub const ALL: [Meaning; 4] = [
        Meaning::Acknowledged,
        Meaning::Reviewed,
        Meaning::Resolved,
        Meaning::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Meaning::Acknowledged => "acknowledged",
            Meaning::Reviewed => "reviewed",
            Meaning::Resolved => "resolved",
            Meaning::Revoked => "revoked",
            Meaning::Checked => "checked",
        }
    }
}

impl std::str::FromStr for Meaning {
    type Err = String;

    fn from_str(text: &str) -> Result<Meaning, String> {
        Meaning::ALL
            .into_iter()
            .find(|m| m.as_str() == text.trim())
            .ok_or_else(|| {
                format!(
                    "{text:?} is not a signature meaning; use acknowledged, reviewed, resolved or revoked"
                )
            })
    }
}

/// The SHA-256 (hex) of `record`'s canonical JSON: object keys sorted (serde_json's map is
/// ordered), no whitespace.
pub fn canonical_sha256(record: &serde_json::Value) -> String {
    super::sha256_hex(&record.to_string())
}

/// What is to be signed.
#[derive(Debug, Clone)]
pub struct SignatureRequest {
    /// The permission signing needs (e.g. [`Action::SignAlert`]).
    pub action: Action,
    pub meaning: Meaning,
    /// What kind of record (`alert`) and which one.
    pub record_kind: String,
    pub record_id: String,
    /// The record as the signer saw it.
    pub record: serde_json::Value,
    /// What else the signer stated (a corrective action, a product disposition); recorded
    /// with the signature.
    pub statement: serde_json::Value,
}

/// A signature made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signature {
    pub signer: String,
    pub roles: Vec<Role>,
    #[serde(with = "time::serde::rfc3339")]
    pub signed_at: OffsetDateTime,
    pub meaning: Meaning,
    pub record_id: String,
    pub record_sha256: String,
    /// The audit entry that holds it.
    pub audit_seq: u64,
}

/// Why a signature was not made.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Authentication(#[from] SignInError),
    #[error(transparent)]
    Denied(#[from] Denied),
}

/// A request checked and hashed, ready to be written with the re-authentication.
pub(super) struct Pending {
    request: SignatureRequest,
    record_sha256: String,
}

impl Pending {
    pub(super) fn detail(
        &self,
        signer: &str,
        roles: &[Role],
        factor: &str,
        now: OffsetDateTime,
    ) -> serde_json::Value {
        let r = &self.request;
        serde_json::json!({
            "signer": signer,
            "roles": roles,
            "signed_at": crate::clock::rfc3339(now),
            "meaning": r.meaning,
            "factor": factor,
            "record": r.record_kind,
            "record_id": r.record_id,
            "record_sha256": self.record_sha256,
            "statement": r.statement,
        })
    }
}

impl People {
    /// Signs `request` as `name`, who re-enters `password` and a second factor (a TOTP code
    /// not used before, or a recovery code): the same checks, throttling and lockout as a
    /// sign-in. The account's roles as stored now must grant `request.action`; a refusal of
    /// either kind writes no signature.
    pub fn sign(
        &self,
        name: &str,
        password: &str,
        second_factor: &SecondFactor,
        source: IpAddr,
        now: OffsetDateTime,
        request: SignatureRequest,
    ) -> std::result::Result<Signature, SignError> {
        // Checked before the factors are spent: a role that cannot sign does not burn a code.
        if let Some(account) = self.account(name).map_err(SignInError::Store)? {
            super::authorize(&account.roles(), request.action)?;
        }
        let pending = Pending {
            record_sha256: canonical_sha256(&request.record),
            request,
        };
        let (identity, seq) =
            self.authenticate(name, password, second_factor, source, now, Some(&pending))?;
        if !may(&identity.roles, pending.request.action) {
            // Roles changed between the check and the transaction: the entry names the roles
            // held, and the caller is refused.
            return Err(SignError::Denied(Denied {
                action: pending.request.action,
                roles: identity.roles,
            }));
        }
        Ok(Signature {
            signer: identity.name,
            roles: identity.roles,
            signed_at: now,
            meaning: pending.request.meaning,
            record_id: pending.request.record_id,
            record_sha256: pending.record_sha256,
            audit_seq: seq.unwrap_or_default(),
        })
    }

    /// Records that `name`'s console session ended (`reason`: `signed_out`, `idle`, `expired`).
    pub fn signed_out(
        &self,
        name: &str,
        source: Option<IpAddr>,
        reason: &str,
    ) -> crate::error::Result<()> {
        let now = self.clock.now();
        self.store.write(|txn| {
            let mut record = crate::audit::Record::new(crate::audit::Kind::UserSignedOut, name)
                .detail(serde_json::json!({ "user": name, "reason": reason }));
            if let Some(source) = source {
                record = record.source(source);
            }
            self.audit(txn, now, record).map(|_| ())
        })
    }
}
