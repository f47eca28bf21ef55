//! Alerts as stored and as sent out.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::coldchain::{AlertKind, Severity};

/// Where an alert is in its life. Ordered: an alert only moves forward, except that
/// `resolved` (the condition is over) may come before or after `acknowledged`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// Raised; notifications queued.
    Raised,
    /// At least one channel delivered it.
    Notified,
    /// Not acknowledged in time: the second contact list was notified.
    Escalated,
    /// Someone took charge, with a note of the corrective action.
    Acknowledged,
    /// The condition is over and the alert was acknowledged (or needed no acknowledgement).
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Raised => "raised",
            AlertState::Notified => "notified",
            AlertState::Escalated => "escalated",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }
}

/// One alert: one per excursion (or door, offline, probe episode), never one per reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: Uuid,
    pub site: String,
    pub device: String,
    pub kind: AlertKind,
    pub severity: Severity,
    pub state: AlertState,
    /// Whether the condition is still present.
    pub active: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub ended: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub raised_at: OffsetDateTime,
    /// The reading that raised it, and the limit it crossed (temperatures, °C).
    pub value: Option<f64>,
    pub limit: Option<f64>,
    /// Extremes and mean kinetic temperature of the excursion, once it has ended.
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub mkt: Option<f64>,
    /// The device's allowed range, for the reader of a notification.
    pub low: Option<f64>,
    pub high: Option<f64>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub escalated_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub acknowledged_at: Option<OffsetDateTime>,
    pub acknowledged_by: Option<String>,
    /// The corrective action taken, in the acknowledger's words.
    pub ack_note: Option<String>,
    /// Channels that delivered at least one notification about it.
    #[serde(default)]
    pub notified: Vec<String>,
    /// For access flags: which one (`override_without_witness`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
    /// For access flags: what was seen (the event as it left the policy, pseudonymised), the
    /// first time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    /// For access flags: how many times the flag was raised while this alert was open (the
    /// same flag of the same device folds into one alert until it is acknowledged).
    #[serde(default = "one")]
    pub occurrences: u64,
    /// For access flags: when the latest occurrence came, and what it was.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_detail: Option<serde_json::Value>,
    /// When the channels last heard of this alert's occurrences, and how many there were then.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub digest_at: Option<OffsetDateTime>,
    #[serde(default = "one")]
    pub notified_occurrences: u64,
}

fn one() -> u64 {
    1
}

impl Alert {
    /// A one-line description for people: "fridge-01: temperature above 8.0 °C (9.4 °C) since …".
    pub fn headline(&self) -> String {
        let what = match self.kind {
            AlertKind::TemperatureHigh => match self.limit {
                Some(l) => format!("temperature above {l:.1} °C"),
                None => "temperature too high".to_owned(),
            },
            AlertKind::TemperatureLow => match (self.limit, self.severity) {
                (Some(l), Severity::Critical) => {
                    format!("temperature at or below {l:.1} °C (freezing)")
                }
                (Some(l), _) => format!("temperature below {l:.1} °C"),
                (None, _) => "temperature too low".to_owned(),
            },
            AlertKind::DoorOpen => "door left open".to_owned(),
            AlertKind::SensorOffline => "no readings from the sensor".to_owned(),
            AlertKind::ProbeFault => "temperature probe fault (impossible value)".to_owned(),
            AlertKind::CheckMissed => "daily min/max check not recorded".to_owned(),
            AlertKind::CalibrationOverdue => {
                "temperature probe past its calibration due date".to_owned()
            }
            AlertKind::AccessFlag => format!(
                "access flag {}",
                self.flag
                    .as_deref()
                    .unwrap_or("(unnamed)")
                    .replace('_', " ")
            ),
        };
        let value = self
            .value
            .map(|v| format!(" ({v:.1} °C)"))
            .unwrap_or_default();
        format!(
            "{}: {what}{value} since {}",
            self.device,
            crate::clock::rfc3339_seconds(self.started)
        )
    }
}

/// What happened to an alert, for the channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Raised,
    /// The condition got worse (a warning became critical).
    Worsened,
    /// An open access flag was raised again (a digest of the new occurrences).
    Repeated,
    Escalated,
    Acknowledged,
    /// The condition is over.
    Cleared,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Raised => "raised",
            Event::Worsened => "worsened",
            Event::Repeated => "repeated",
            Event::Escalated => "escalated",
            Event::Acknowledged => "acknowledged",
            Event::Cleared => "cleared",
        }
    }
}

/// One notification, queued durably for every configured channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub event: Event,
    /// The alert as it was when this happened.
    pub alert: Alert,
    /// For the escalation contacts (e-mail `escalation_to`), not the first list.
    pub escalation: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub clock_synced: bool,
}
