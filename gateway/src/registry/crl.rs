//! What the CA's CRL lists, read from the `certs` table, and the CRL number.
//!
//! Listed: every revoked certificate (its revocation time; reasonCode superseded when a new
//! enrollment replaced it, none when its device was revoked, since the operator's reason is free
//! text), and every certificate a renewal replaced once its grace is over (revocation time = the
//! end of the grace, reasonCode superseded). A certificate drops off the CRL once it has been
//! expired for longer than one CRL validity, so it appears on at least one regularly scheduled
//! CRL issued after it expired (RFC 5280 §3.3) and the CRL does not grow forever.

use std::time::Duration;

use redb::{ReadableTable, TableDefinition};
use rxgate_certs::{RevocationReason, RevokedCert};
use time::OffsetDateTime;

use super::{
    CERTS, CertRecord, CertStatus, DEVICES, DeviceRecord, DeviceStatus, Registry, RevokedBecause,
};
use crate::error::{Error, Result};
use crate::store;

const CRL: TableDefinition<&str, u64> = TableDefinition::new("crl");
const NUMBER: &str = "number";

/// The CRL's entries as of one instant, and when they next change without a revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlEntries {
    /// The certificates to list, by serial.
    pub revoked: Vec<RevokedCert>,
    /// The end of the earliest grace still running: the CRL must be signed again then.
    pub next_change: Option<OffsetDateTime>,
}

impl Registry {
    /// The CRL's entries at `now`; certificates expired for longer than `keep_expired` are left
    /// out. A record written before revocation times were kept is listed with its device's
    /// revocation time, or `now` when there is none: revoked no later than that.
    pub fn crl_entries(&self, now: OffsetDateTime, keep_expired: Duration) -> Result<CrlEntries> {
        let keep_expired = time::Duration::try_from(keep_expired).unwrap_or(time::Duration::MAX);
        self.store.read(|txn| {
            let certs: Vec<CertRecord> = store::all_json(txn, CERTS)?;
            let devices: Vec<DeviceRecord> = store::all_json(txn, DEVICES)?;
            let device = |id: &str| devices.iter().find(|d| d.id == id);
            let mut out = CrlEntries {
                revoked: Vec::new(),
                next_change: None,
            };
            for cert in certs {
                if cert
                    .not_after
                    .checked_add(keep_expired)
                    .is_some_and(|t| t < now)
                {
                    continue;
                }
                let revoked_device = device(&cert.device)
                    .filter(|d| d.status == DeviceStatus::Revoked)
                    .and_then(|d| d.revoked.as_ref().map(|r| r.at));
                let entry = match cert.status {
                    CertStatus::Revoked => Some((
                        cert.revoked_at.or(revoked_device).unwrap_or(now),
                        match cert.revoked_because {
                            Some(RevokedBecause::Reenrolled) => Some(RevocationReason::Superseded),
                            Some(RevokedBecause::DeviceRevoked) | None => None,
                        },
                    )),
                    CertStatus::Superseded => match cert.superseded_until {
                        Some(until) if until > now => {
                            out.next_change = Some(
                                out.next_change
                                    .map_or(until, |t: OffsetDateTime| t.min(until)),
                            );
                            revoked_device.map(|at| (at, None))
                        }
                        Some(until) => Some((until, Some(RevocationReason::Superseded))),
                        None => Some((
                            revoked_device.unwrap_or(now),
                            Some(RevocationReason::Superseded),
                        )),
                    },
                    // Only a record older than revocation bookkeeping can be current on a revoked
                    // device; the listeners refuse it, so the CRL lists it.
                    CertStatus::Current => revoked_device.map(|at| (at, None)),
                };
                if let Some((revoked_at, reason)) = entry {
                    out.revoked.push(RevokedCert {
                        serial: cert.serial,
                        revoked_at,
                        reason,
                    });
                }
            }
            Ok(out)
        })
    }

    /// The next CRL number: one more than the last one handed out, written durably before it is
    /// returned, so no two CRLs share a number even across a crash or a clock thrown back.
    pub fn next_crl_number(&self) -> Result<u64> {
        self.store.write(|txn| {
            let mut table = txn.open_table(CRL)?;
            let last = table.get(NUMBER)?.map_or(0, |v| v.value());
            let next = last.checked_add(1).ok_or_else(|| Error::Corrupt {
                table: "crl".to_owned(),
                key: NUMBER.to_owned(),
                reason: "the CRL number is at its maximum".to_owned(),
            })?;
            table.insert(NUMBER, next)?;
            Ok(next)
        })
    }

    /// Waits until a certificate is revoked (a device revocation, or a new enrollment replacing
    /// certificates). A revocation before the call is reported at once, one at a time: for the
    /// one task that keeps the CRL.
    pub async fn revocation_changed(&self) {
        self.revocations.notified().await;
    }
}
