//! The device registry: enrollment tokens, devices and the certificates issued to them.
//!
//! # Tables (JSON values, see the record types)
//! - `tokens`: device id → [`TokenRecord`]. At most one token per device; creating a new one
//!   replaces the old. Only a SHA-256 hash of the secret is kept: a token is 256 random bits, so a
//!   fast hash is as strong as a slow one, and the secret itself never touches disk or logs.
//! - `devices`: device id → [`DeviceRecord`].
//! - `certs`: serial (lowercase hex) → [`CertRecord`]; what the listeners consult at every
//!   connection to refuse revoked certificates, and certificates a renewal replaced once their
//!   grace (`superseded_until`) is over; and what the CRL lists ([`crl`]).
//! - `crl`: `"number"` → the number of the newest CRL signed (u64), so CRL numbers keep growing
//!   across restarts whatever the clock does.
//!
//! Refusals are not written here: the EST layer reports them to the folding refusal log
//! (`audit::Refusals`), so a flood of bad requests costs a few audit entries, not one each.
//!
//! Every change is written together with its audit entry in one transaction.

mod crl;
mod tokens;

use std::net::IpAddr;
use std::time::Duration;

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use rxgate_certs::{CertificateAuthority, CheckedCsr, DeviceIdentity, DeviceProfile, IssuedCert};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::broadcast;

use crate::audit::{self, Kind, Record};
use crate::clock::{ExpiryReference, SharedClock, TimeReading};
use crate::error::{Error, Result};
use crate::store::{self, Store, to_json};

pub use crl::CrlEntries;
pub use tokens::{TokenInfo, TokenRecord, TokenState};

pub(crate) const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
pub(crate) const CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("certs");
pub(crate) const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");

/// Where a device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// A token exists; the device has not enrolled yet.
    Pending,
    /// Enrolled, holding a valid certificate.
    Active,
    /// Revoked: every certificate it holds is refused; only a new token brings it back.
    Revoked,
}

impl std::fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Active => "active",
            DeviceStatus::Revoked => "revoked",
        })
    }
}

/// A device as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub id: String,
    pub kind: String,
    pub status: DeviceStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Serial of the newest certificate.
    pub serial: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub reason: String,
    pub by: String,
}

/// State of one issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertStatus {
    /// The device's newest certificate.
    Current,
    /// Replaced by a renewal; still accepted until `superseded_until` (`[enroll].superseded_grace`
    /// after the renewal) so a device can switch over, refused everywhere after it.
    Superseded,
    /// Refused everywhere.
    Revoked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    pub serial: String,
    pub device: String,
    pub status: CertStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// When a superseded certificate stops being accepted. A superseded record without it
    /// (written before the grace existed) is refused.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub superseded_until: Option<OffsetDateTime>,
    /// When it was revoked (absent in records written before the CRL existed).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub revoked_at: Option<OffsetDateTime>,
    /// Why it was revoked, for the CRL's reasonCode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_because: Option<RevokedBecause>,
}

/// Why a certificate was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokedBecause {
    /// A new enrollment with a token replaced it (CRL reasonCode superseded).
    Reenrolled,
    /// Its device was revoked (`rxgate device revoke`); the operator's reason is free text in the
    /// audit trail, so the CRL names no reasonCode.
    DeviceRevoked,
}

/// Why the registry refuses a certificate presented by a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertRefusal {
    #[error("certificate {serial} was not issued by this gateway's registry")]
    Unknown { serial: String },
    #[error("certificate {serial} of device {device} is revoked")]
    Revoked { device: String, serial: String },
    #[error(
        "certificate {serial} of device {device} was replaced by a renewal and is no longer \
         accepted (since {until}); use the device's newest certificate, or enroll it again with \
         a new token (`rxgate token create`)"
    )]
    Superseded {
        device: String,
        serial: String,
        until: String,
    },
    #[error("device {device} is revoked")]
    DeviceRevoked { device: String },
    #[error("certificate {serial} belongs to device {owner}, not {device}")]
    WrongDevice {
        device: String,
        owner: String,
        serial: String,
    },
    #[error("certificate {serial} expired at {not_after}")]
    Expired { serial: String, not_after: String },
    /// The clock is not synchronised, but the certificate expired before the gateway's time
    /// floor, a time the gateway knows has passed.
    #[error(
        "certificate {serial} expired at {not_after}, before {floor}, a time this gateway has already \
         seen (its clock is not synchronised, so expiry is checked against that time floor); \
         enroll the device again with a new token (`rxgate token create`)"
    )]
    ExpiredBeforeFloor {
        serial: String,
        not_after: String,
        floor: String,
    },
    #[error("certificate {serial} was issued for site {site}, this gateway is {expected}")]
    WrongSite {
        serial: String,
        site: String,
        expected: String,
    },
}

/// Why an enrollment or renewal is refused; the EST layer maps these to HTTP statuses and
/// reports them to the refusal log. `class` is the short, stable reason (audit and metrics),
/// `reason` the full one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 401 to a request that proved nothing (`simpleenroll`: no token, wrong, used, expired,
    /// burnt or revoked token, locked-out source). The requester gets one fixed answer for all of
    /// them; `reason` is for the audit trail only.
    #[error("{reason}")]
    Unauthenticated { class: &'static str, reason: String },
    /// 401 with the reason (`simplereenroll`: a certificate the registry does not accept).
    #[error("{reason}")]
    Unauthorized { class: &'static str, reason: String },
    /// 403: the device or its certificate is revoked or replaced.
    #[error("{reason}")]
    Forbidden { class: &'static str, reason: String },
    /// 400: the request itself is wrong (a CSR for another device).
    #[error("{reason}")]
    BadRequest { class: &'static str, reason: String },
}

impl Refusal {
    pub fn class(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated { class, .. }
            | Refusal::Unauthorized { class, .. }
            | Refusal::Forbidden { class, .. }
            | Refusal::BadRequest { class, .. } => class,
        }
    }
}

/// A registry change the running daemon's components react to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Drop every live session of this device.
    Revoked { device: String },
    /// The device renewed: sessions holding any of its certificates other than `serial` end at
    /// `until` (the end of `[enroll].superseded_grace`), or sooner if theirs ends sooner.
    Superseded {
        device: String,
        serial: String,
        until: OffsetDateTime,
    },
}

/// Who asks, from where: recorded in the audit trail.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub source: Option<IpAddr>,
}

impl Actor {
    pub fn cli() -> Self {
        Actor {
            name: "cli".to_owned(),
            source: None,
        }
    }

    /// A person at the gateway's command line: the operating-system user.
    pub fn os_user(name: &str) -> Self {
        Actor {
            name: name.to_owned(),
            source: None,
        }
    }

    pub fn device(id: &str, source: IpAddr) -> Self {
        Actor {
            name: id.to_owned(),
            source: Some(source),
        }
    }

    fn record(&self, kind: Kind) -> Record {
        let record = Record::new(kind, &self.name);
        match self.source {
            Some(ip) => record.source(ip),
            None => record,
        }
    }
}

/// Certificate issuance settings taken from `[enroll]`.
#[derive(Debug, Clone)]
pub struct IssuePolicy {
    pub site: String,
    pub validity: Duration,
    pub backdate: Duration,
    /// Wrong tokens one source may try before it is locked out of the token for `failed_lockout`.
    pub max_failed_attempts: u32,
    pub failed_lockout: Duration,
    /// Wrong tokens from all sources after which the token is burnt.
    pub burn_after_failed: u32,
    /// How long a certificate replaced by a renewal is still accepted.
    pub superseded_grace: Duration,
}

/// The registry: the store plus the clock, and a channel announcing changes to live components.
#[derive(Clone)]
pub struct Registry {
    store: Store,
    clock: SharedClock,
    changes: broadcast::Sender<Change>,
    /// Wakes the CRL publisher when a certificate is revoked.
    revocations: std::sync::Arc<tokio::sync::Notify>,
}

impl Registry {
    pub fn new(store: Store, clock: SharedClock) -> Self {
        let (changes, _) = broadcast::channel(64);
        Registry {
            store,
            clock,
            changes,
            revocations: std::sync::Arc::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Changes as they happen (revocations), for components holding live sessions.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    fn audit(&self, txn: &WriteTransaction, record: Record) -> Result<u64> {
        audit::append(txn, self.clock.now(), self.clock.synced(), record)
    }

    /// All devices, ordered by id.
    pub fn devices(&self) -> Result<Vec<DeviceRecord>> {
        self.store.read(|txn| store::all_json(txn, DEVICES))
    }

    pub fn device(&self, id: &str) -> Result<Option<DeviceRecord>> {
        self.store.read(|txn| match txn.open_table(DEVICES) {
            Ok(t) => store::get_json(&t, "devices", id),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        })
    }

    /// Revokes a device and every certificate it holds; live sessions are dropped by whoever
    /// listens to [`Registry::subscribe`]. A pending token for it is revoked too.
    pub fn revoke_device(&self, id: &str, reason: &str, actor: &Actor) -> Result<DeviceRecord> {
        if reason.trim().is_empty() {
            return Err(Error::Invalid(
                "a revocation needs a reason (--reason TEXT)".to_owned(),
            ));
        }
        let now = self.clock.now();
        let record = self.store.write(|txn| {
            let mut devices = txn.open_table(DEVICES)?;
            let mut device: DeviceRecord =
                store::get_json(&devices, "devices", id)?.ok_or_else(|| {
                    Error::NotFound(format!(
                        "no device {id:?} in the registry; see `rxgate device list`"
                    ))
                })?;
            if device.status == DeviceStatus::Revoked {
                return Err(Error::Invalid(format!("device {id} is already revoked")));
            }
            device.status = DeviceStatus::Revoked;
            device.revoked = Some(Revocation {
                at: now,
                reason: reason.to_owned(),
                by: actor.name.clone(),
            });
            devices.insert(id, to_json(&device).as_slice())?;
            let serials = revoke_certs_of(txn, id, now, RevokedBecause::DeviceRevoked)?;
            tokens::revoke_pending(txn, id)?;
            self.audit(
                txn,
                actor
                    .record(Kind::DeviceRevoked)
                    .device(id)
                    .detail(serde_json::json!({ "reason": reason, "serials": serials })),
            )?;
            Ok(device)
        })?;
        let _ = self.changes.send(Change::Revoked {
            device: id.to_owned(),
        });
        self.revocations.notify_one();
        tracing::info!(device = %id, reason, "Device revoked.");
        Ok(record)
    }

    /// Checks a certificate presented by a device against the registry: known, not revoked,
    /// not replaced by a renewal longer ago than its grace, device active, same site, not expired ([`check_expiry`]: against the clock while it is
    /// synchronised, against the time floor while it is not).
    pub fn check_certificate(
        &self,
        identity: &DeviceIdentity,
        site: &str,
    ) -> Result<Result<(), CertRefusal>> {
        if identity.site != site {
            return Ok(Err(CertRefusal::WrongSite {
                serial: identity.serial.clone(),
                site: identity.site.clone(),
                expected: site.to_owned(),
            }));
        }
        let reading = self.clock.reading();
        if let Err(refusal) = check_expiry(&identity.serial, identity.not_after, &reading) {
            return Ok(Err(refusal));
        }
        let now = reading.now();
        self.store.read(|txn| {
            let cert: Option<CertRecord> = match txn.open_table(CERTS) {
                Ok(t) => store::get_json(&t, "certs", identity.serial.as_str())?,
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e.into()),
            };
            let Some(cert) = cert else {
                return Ok(Err(CertRefusal::Unknown {
                    serial: identity.serial.clone(),
                }));
            };
            if cert.device != identity.device_id {
                return Ok(Err(CertRefusal::WrongDevice {
                    device: identity.device_id.clone(),
                    owner: cert.device,
                    serial: cert.serial,
                }));
            }
            let device: Option<DeviceRecord> =
                store::get_json(&txn.open_table(DEVICES)?, "devices", cert.device.as_str())?;
            if device.is_none_or(|d| d.status == DeviceStatus::Revoked) {
                return Ok(Err(CertRefusal::DeviceRevoked {
                    device: cert.device,
                }));
            }
            match cert.status {
                CertStatus::Revoked => Ok(Err(CertRefusal::Revoked {
                    device: cert.device,
                    serial: cert.serial,
                })),
                // The gateway's time, never earlier than the floor: a clock thrown back by a
                // power cut cannot reopen a grace that has passed.
                CertStatus::Superseded
                    if cert.superseded_until.is_none_or(|until| until <= now) =>
                {
                    Ok(Err(CertRefusal::Superseded {
                        device: cert.device,
                        serial: cert.serial,
                        until: cert.superseded_until.map_or_else(
                            || "before this gateway version".to_owned(),
                            crate::clock::rfc3339,
                        ),
                    }))
                }
                CertStatus::Superseded | CertStatus::Current => Ok(Ok(())),
            }
        })
    }

    /// Enrollment with a token (EST `simpleenroll`). The token is checked and consumed, the
    /// certificate built from our profile and recorded, all in one transaction: two requests
    /// racing with the same token cannot both succeed. A token-based enrollment is a
    /// (re-)commissioning: earlier certificates of the device are revoked.
    pub fn enroll(
        &self,
        device: &str,
        secret: &str,
        csr: &CheckedCsr,
        ca: &CertificateAuthority,
        policy: &IssuePolicy,
        source: IpAddr,
    ) -> Result<Result<IssuedCert, Refusal>> {
        let now = self.clock.now();
        let actor = Actor::device(device, source);
        let limits = tokens::Limits {
            per_source: policy.max_failed_attempts,
            lockout: policy.failed_lockout,
            burn_after: policy.burn_after_failed,
        };
        self.store.write(|txn| {
            let token = match tokens::verify(txn, device, secret, source, now, limits)? {
                Ok(token) => token,
                Err(refused) => {
                    if refused.burnt_now {
                        self.audit(
                            txn,
                            Record::new(Kind::TokenBurnt, "gateway")
                                .device(device)
                                .detail(serde_json::json!({ "reason": refused.reason })),
                        )?;
                    }
                    // A revoked device without a token gets the same 401 as any unknown id:
                    // a stranger cannot probe which devices were revoked. The reason is in the
                    // audit trail, and `rxgate device list` shows the state to the installer.
                    let revoked = matches!(load_device(txn, device)?, Some(d) if d.status == DeviceStatus::Revoked);
                    return Ok(Err(if revoked && refused.no_token {
                        Refusal::Unauthenticated {
                            class: "device_revoked",
                            reason: format!(
                                "device {device} is revoked; an administrator must create a new token to re-commission it"
                            ),
                        }
                    } else {
                        Refusal::Unauthenticated {
                            class: refused.class,
                            reason: refused.reason,
                        }
                    }));
                }
            };
            if csr.common_name != device {
                // The token stays usable: the installer only needs to fix the CSR.
                return Ok(Err(Refusal::BadRequest {
                    class: "csr_for_another_device",
                    reason: format!(
                        "the CSR's subject CN is {:?} but the token is for device {device:?}",
                        csr.common_name
                    ),
                }));
            }
            let kind = token.kind.clone();
            tokens::mark_used(txn, token, now)?;
            let revoked_serials = revoke_certs_of(txn, device, now, RevokedBecause::Reenrolled)?;
            let issued = ca.issue_device(csr, &profile(policy, &kind, device, now))?;
            let previous = load_device(txn, device)?;
            let record = DeviceRecord {
                id: device.to_owned(),
                kind: kind.clone(),
                status: DeviceStatus::Active,
                created_at: previous.as_ref().map_or(now, |d| d.created_at),
                serial: Some(issued.serial.clone()),
                not_after: Some(issued.not_after),
                last_seen: Some(now),
                revoked: None,
            };
            txn.open_table(DEVICES)?.insert(device, to_json(&record).as_slice())?;
            insert_cert(txn, device, &issued)?;
            let mut detail = serde_json::json!({
                "serial": issued.serial,
                "kind": kind,
                "not_after": crate::clock::rfc3339(issued.not_after),
                "key": csr.key.to_string(),
            });
            if !revoked_serials.is_empty() {
                detail["replaced_serials"] = serde_json::json!(revoked_serials);
            }
            if !csr.requested_extensions.is_empty() {
                detail["ignored_extensions"] = serde_json::json!(csr.requested_extensions);
            }
            self.audit(txn, actor.record(Kind::DeviceEnrolled).device(device).detail(detail))?;
            Ok(Ok((issued, !revoked_serials.is_empty())))
        })
        .map(|outcome| {
            outcome.map(|(issued, revoked_some)| {
                if revoked_some {
                    self.revocations.notify_one();
                }
                issued
            })
        })
    }

    /// Renewal (EST `simplereenroll`), authenticated by the device's current certificate.
    pub fn renew(
        &self,
        identity: &DeviceIdentity,
        csr: &CheckedCsr,
        ca: &CertificateAuthority,
        policy: &IssuePolicy,
        source: IpAddr,
    ) -> Result<Result<IssuedCert, Refusal>> {
        let device = identity.device_id.as_str();
        let actor = Actor::device(device, source);
        let now = self.clock.now();
        let check = self.check_certificate(identity, &policy.site)?;
        let refusal = match check {
            Err(CertRefusal::DeviceRevoked { .. } | CertRefusal::Revoked { .. }) => {
                Some(Refusal::Forbidden {
                    class: "certificate_revoked",
                    reason: format!("device {device} or its certificate is revoked"),
                })
            }
            Err(superseded @ CertRefusal::Superseded { .. }) => Some(Refusal::Forbidden {
                class: "certificate_superseded",
                reason: superseded.to_string(),
            }),
            Err(other) => Some(Refusal::Unauthorized {
                class: "certificate_refused",
                reason: other.to_string(),
            }),
            Ok(()) if csr.common_name != device => Some(Refusal::BadRequest {
                class: "csr_for_another_device",
                reason: format!(
                    "the CSR's subject CN is {:?} but the client certificate is for device {device:?}",
                    csr.common_name
                ),
            }),
            Ok(()) => None,
        };
        if let Some(refusal) = refusal {
            return Ok(Err(refusal));
        }
        let mut superseded = None;
        let outcome = self.store.write(|txn| {
            let Some(mut record) = load_device(txn, device)? else {
                return Ok(Err(Refusal::Unauthorized {
                    class: "device_unknown",
                    reason: format!("device {device} is not registered"),
                }));
            };
            let issued = ca.issue_device(csr, &profile(policy, &record.kind, device, now))?;
            supersede_current(txn, device, now + policy.superseded_grace)?;
            superseded = Some(issued.serial.clone());
            insert_cert(txn, device, &issued)?;
            record.serial = Some(issued.serial.clone());
            record.not_after = Some(issued.not_after);
            record.last_seen = Some(now);
            txn.open_table(DEVICES)?
                .insert(device, to_json(&record).as_slice())?;
            self.audit(
                txn,
                actor.record(Kind::DeviceRenewed).device(device).detail(serde_json::json!({
                    "serial": issued.serial,
                    "previous_serial": identity.serial,
                    "previous_accepted_until": crate::clock::rfc3339(now + policy.superseded_grace),
                    "not_after": crate::clock::rfc3339(issued.not_after),
                })),
            )?;
            Ok(Ok(issued))
        })?;
        if let Some(serial) = superseded {
            let _ = self.changes.send(Change::Superseded {
                device: device.to_owned(),
                serial,
                until: now + policy.superseded_grace,
            });
        }
        Ok(outcome)
    }

    /// Until when the certificate `serial` is accepted, if it has been superseded by a renewal.
    pub fn superseded_until(&self, serial: &str) -> Result<Option<OffsetDateTime>> {
        self.store.read(|txn| {
            let cert: Option<CertRecord> = match txn.open_table(CERTS) {
                Ok(t) => store::get_json(&t, "certs", serial)?,
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e.into()),
            };
            Ok(cert
                .filter(|c| c.status == CertStatus::Superseded)
                .and_then(|c| c.superseded_until))
        })
    }

    /// Records that a device was seen (connected, published). Best effort; never fails a caller.
    pub fn touch(&self, device: &str) {
        let now = self.clock.now();
        let result = self.store.write(|txn| {
            let mut devices = txn.open_table(DEVICES)?;
            let record: Option<DeviceRecord> = store::get_json(&devices, "devices", device)?;
            if let Some(mut record) = record {
                record.last_seen = Some(now);
                devices.insert(device, to_json(&record).as_slice())?;
            }
            Ok(())
        });
        if let Err(e) = result {
            tracing::warn!(device, error = %e, "Could not record last-seen time.");
        }
    }
}

/// Whether a certificate has expired, judged on `time` ([`TimeReading::expiry_reference`]): on a
/// synchronised clock against the gateway's time, on an unsynchronised one against the time floor
/// only. A notBefore in the "future" is never checked here: after a power cut the clock may be far
/// behind, and a site whose devices all look not-yet-valid is bricked.
///
/// [`TimeReading::expiry_reference`]: crate::clock::TimeReading::expiry_reference
pub fn check_expiry(
    serial: &str,
    not_after: OffsetDateTime,
    time: &TimeReading,
) -> Result<(), CertRefusal> {
    match time.expiry_reference() {
        Some(ExpiryReference::Clock(now)) if not_after < now => Err(CertRefusal::Expired {
            serial: serial.to_owned(),
            not_after: crate::clock::rfc3339(not_after),
        }),
        Some(ExpiryReference::Floor(floor)) if not_after < floor => {
            Err(CertRefusal::ExpiredBeforeFloor {
                serial: serial.to_owned(),
                not_after: crate::clock::rfc3339(not_after),
                floor: crate::clock::rfc3339(floor),
            })
        }
        _ => Ok(()),
    }
}

fn profile(policy: &IssuePolicy, kind: &str, device: &str, now: OffsetDateTime) -> DeviceProfile {
    DeviceProfile {
        site: policy.site.clone(),
        kind: kind.to_owned(),
        device_id: device.to_owned(),
        validity: policy.validity,
        backdate: policy.backdate,
        now,
    }
}

fn load_device(txn: &WriteTransaction, id: &str) -> Result<Option<DeviceRecord>> {
    store::get_json(&txn.open_table(DEVICES)?, "devices", id)
}

fn insert_cert(txn: &WriteTransaction, device: &str, issued: &IssuedCert) -> Result<()> {
    let record = CertRecord {
        serial: issued.serial.clone(),
        device: device.to_owned(),
        status: CertStatus::Current,
        not_after: issued.not_after,
        superseded_until: None,
        revoked_at: None,
        revoked_because: None,
    };
    txn.open_table(CERTS)?
        .insert(issued.serial.as_str(), to_json(&record).as_slice())?;
    Ok(())
}

fn certs_of(txn: &WriteTransaction, device: &str) -> Result<Vec<CertRecord>> {
    let table = txn.open_table(CERTS)?;
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (key, value) = entry?;
        let record: CertRecord =
            serde_json::from_slice(value.value()).map_err(|e| Error::Corrupt {
                table: "certs".to_owned(),
                key: key.value().to_owned(),
                reason: e.to_string(),
            })?;
        if record.device == device {
            out.push(record);
        }
    }
    Ok(out)
}

fn set_cert_status(
    txn: &WriteTransaction,
    records: Vec<CertRecord>,
    status: CertStatus,
) -> Result<Vec<String>> {
    let mut table = txn.open_table(CERTS)?;
    let mut serials = Vec::new();
    for mut record in records {
        record.status = status;
        table.insert(record.serial.as_str(), to_json(&record).as_slice())?;
        serials.push(record.serial);
    }
    Ok(serials)
}

fn revoke_certs_of(
    txn: &WriteTransaction,
    device: &str,
    at: OffsetDateTime,
    because: RevokedBecause,
) -> Result<Vec<String>> {
    let live = certs_of(txn, device)?
        .into_iter()
        .filter(|c| c.status != CertStatus::Revoked)
        .map(|mut c| {
            c.revoked_at = Some(at);
            c.revoked_because = Some(because);
            c
        })
        .collect();
    set_cert_status(txn, live, CertStatus::Revoked)
}

/// Marks the device's current certificate superseded, accepted until `until`. A certificate
/// already superseded keeps its own deadline: renewing from it again does not extend it.
fn supersede_current(txn: &WriteTransaction, device: &str, until: OffsetDateTime) -> Result<()> {
    let current = certs_of(txn, device)?
        .into_iter()
        .filter(|c| c.status == CertStatus::Current)
        .map(|mut c| {
            c.superseded_until = Some(until);
            c
        })
        .collect();
    set_cert_status(txn, current, CertStatus::Superseded).map(drop)
}

#[cfg(test)]
mod tests;
