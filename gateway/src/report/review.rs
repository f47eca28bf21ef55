//! Each excursion linked to the alert it raised, that alert's acknowledgement, and the
//! electronic signature given with it: what an inspector's excursion report shows beside the
//! temperatures.
//!
//! The console's acknowledgement note names the `record.signed` audit entry that holds the
//! signature ("… signature in audit entry N"); the entry is read and used only when it really is
//! a signature of that alert (`detail.record == "alert"`, `detail.record_id` its id), so a note
//! typed at the command line cannot borrow someone else's signature.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::alerts::Alert;
use crate::audit::{AuditBody, Kind};
use crate::coldchain::ExcursionRecord;
use crate::error::Result;
use crate::store::Store;

/// The words before the audit entry's number in an acknowledgement note.
pub const SIGNATURE_NOTE: &str = "signature in audit entry ";

/// An electronic signature as the audit trail holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignatureSeen {
    pub signer: String,
    pub roles: Vec<String>,
    pub meaning: String,
    /// RFC 3339.
    pub signed_at: String,
    pub record_sha256: String,
    pub audit_seq: u64,
    /// The product disposition the signer stated (`quarantined`, `discarded`,
    /// `released_after_manufacturer_consultation`), for cold-chain alerts.
    pub disposition: Option<String>,
    /// The corrective action the signer stated.
    pub corrective_action: Option<String>,
}

/// What was done about one excursion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExcursionReview {
    /// The excursion's start: which excursion this is about.
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    pub alert: uuid::Uuid,
    pub alert_state: String,
    pub acknowledged_by: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub acknowledged_at: Option<OffsetDateTime>,
    pub note: Option<String>,
    pub signature: Option<SignatureSeen>,
}

/// The audit entry an acknowledgement note names, if it names one.
pub fn signature_seq(note: &str) -> Option<u64> {
    let (_, rest) = note.split_once(SIGNATURE_NOTE)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `entry` read as the signature of alert `alert`, if it is one.
pub fn signature_of(entry: &AuditBody, alert: &uuid::Uuid) -> Option<SignatureSeen> {
    let d = &entry.detail;
    if entry.kind != Kind::RecordSigned
        || d["record"] != "alert"
        || d["record_id"].as_str() != Some(alert.to_string().as_str())
    {
        return None;
    }
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    Some(SignatureSeen {
        signer: text(&d["signer"])?,
        roles: d["roles"]
            .as_array()
            .map(|r| r.iter().filter_map(text).collect())
            .unwrap_or_default(),
        meaning: text(&d["meaning"]).unwrap_or_default(),
        signed_at: text(&d["signed_at"]).unwrap_or_else(|| entry.ts.clone()),
        record_sha256: text(&d["record_sha256"]).unwrap_or_default(),
        audit_seq: entry.seq,
        disposition: text(&d["statement"]["disposition"]),
        corrective_action: text(&d["statement"]["note"]),
    })
}

/// The review of each of `excursions` of `device` that raised an alert.
pub fn reviews(
    store: &Store,
    device: &str,
    excursions: &[ExcursionRecord],
) -> Result<Vec<ExcursionReview>> {
    if excursions.is_empty() {
        return Ok(Vec::new());
    }
    let alerts: Vec<Alert> = crate::alerts::history::alerts(store)?
        .into_iter()
        .filter(|a| a.device == device)
        .collect();
    let mut out = Vec::new();
    for excursion in excursions {
        let Some(alert) = alerts
            .iter()
            .find(|a| a.kind == excursion.kind && a.started == excursion.started)
        else {
            continue;
        };
        let signature = match alert.ack_note.as_deref().and_then(signature_seq) {
            Some(seq) => crate::audit::entries(store, seq, 1)?
                .first()
                .filter(|e| e.seq == seq)
                .and_then(|e| signature_of(e, &alert.id)),
            None => None,
        };
        out.push(ExcursionReview {
            started: excursion.started,
            alert: alert.id,
            alert_state: alert.state.as_str().to_owned(),
            acknowledged_by: alert.acknowledged_by.clone(),
            acknowledged_at: alert.acknowledged_at,
            note: alert.ack_note.clone(),
            signature,
        });
    }
    Ok(out)
}
