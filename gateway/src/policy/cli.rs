//! What `rxgate policy check FILE` and `rxgate policy test FILE --device ID --event EVENT.json`
//! call: pure functions over a file and an event, and a decision explained for people.

use std::fmt::{self, Write as _};
use std::path::Path;

use ring::hmac;
use time::OffsetDateTime;

use super::rule::format_minutes;
use super::{
    Context, Decision, DefaultAction, Event, OpeningHours, Policy, PolicyErrors, Stream, Verdict,
    priority_name, severity_name,
};
use crate::broker::payload;

/// What a valid policy file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub origin: String,
    pub rules: usize,
    pub default: DefaultAction,
    pub opening_hours: Option<OpeningHours>,
    /// Rules with a condition.
    pub conditions: usize,
    /// The largest worst-case cost of one condition, in cost units.
    pub max_condition_cost: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: valid; {} rule(s), {} with a condition (the costliest at most {} of {} units), default {}",
            self.origin,
            self.rules,
            self.conditions,
            self.max_condition_cost,
            super::COST_BUDGET,
            self.default.as_str()
        )?;
        match self.opening_hours {
            Some(h) => write!(
                f,
                ", opening hours {}-{} at UTC{}",
                format_minutes(h.open),
                format_minutes(h.close),
                format_offset(h.utc_offset)
            ),
            None => f.write_str(", no opening hours (never after hours)"),
        }
    }
}

fn format_offset(o: time::UtcOffset) -> String {
    let (h, m, _) = o.as_hms();
    let sign = if o.is_negative() { '-' } else { '+' };
    format!("{sign}{:02}:{:02}", h.unsigned_abs(), m.unsigned_abs())
}

impl Policy {
    /// What the policy holds, for `rxgate policy check`.
    pub fn summary(&self) -> Summary {
        let costs = self
            .rules
            .iter()
            .filter_map(|r| r.condition.as_ref().map(|c| c.cost));
        Summary {
            origin: self.origin.clone(),
            rules: self.rules.len(),
            default: self.default,
            opening_hours: self.opening_hours,
            conditions: costs.clone().count(),
            max_condition_cost: costs.max().unwrap_or(0),
        }
    }
}

/// Loads and checks the policy file at `path`: a summary, or every problem in it (`Display`
/// prints one per line).
pub fn check_file(path: &Path) -> Result<Summary, PolicyErrors> {
    Policy::load(path).map(|p| p.summary())
}

/// An event given to [`test_event`] that the gateway would refuse before the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the gateway would refuse this {stream} payload before the policy: {reason}")]
pub struct PayloadError {
    pub stream: Stream,
    pub reason: String,
}

/// Evaluates `payload` — the JSON a device would publish on `devices/<device>/<stream>` — as
/// the gateway would: parsed by the device payload contract, then decided by `policy` at `now`.
pub fn test_event(
    policy: &Policy,
    device: &str,
    kind: &str,
    stream: Stream,
    payload: &[u8],
    now: OffsetDateTime,
    key: &hmac::Key,
) -> Result<Decision, PayloadError> {
    let refused = |reason| PayloadError { stream, reason };
    let body = match stream {
        Stream::Telemetry => {
            super::telemetry_body(&payload::telemetry(payload).map_err(refused)?.points)
        }
        Stream::Events => payload::event(payload).map_err(refused)?.body,
    };
    let event = Event {
        device,
        kind,
        stream,
        body: &body,
    };
    let ctx = Context {
        now,
        pseudonym_key: key,
    };
    Ok(policy.evaluate(&event, &ctx))
}

impl Decision {
    /// The decision and the rules that made it, for people (`rxgate policy test`).
    pub fn explain(&self) -> String {
        let mut out = String::new();
        let by = match &self.decided_by {
            Some(rule) => format!("rule {rule:?}"),
            None => "the policy's default".to_owned(),
        };
        let _ = match &self.verdict {
            Verdict::Allow => writeln!(out, "verdict: allow (by {by})"),
            Verdict::Deny { reason, .. } => writeln!(out, "verdict: deny (by {by}): {reason}"),
            Verdict::Invalid { errors, .. } => {
                let _ = writeln!(out, "verdict: invalid (by {by}):");
                for e in errors {
                    let _ = writeln!(out, "  - {e}");
                }
                Ok(())
            }
        };
        let _ = writeln!(
            out,
            "after hours: {}",
            if self.after_hours { "yes" } else { "no" }
        );
        if self.verdict.is_allow() {
            let _ = writeln!(
                out,
                "priority: {}",
                self.priority
                    .map_or("(the stream's default)", priority_name)
            );
            let _ = writeln!(
                out,
                "cloud: {}{}",
                if self.route_cloud { "yes" } else { "no" },
                self.cloud_topic_suffix
                    .as_ref()
                    .map(|s| format!(" (topic suffix /{s})"))
                    .unwrap_or_default()
            );
            if let Some(topic) = &self.local_topic {
                let _ = writeln!(out, "local topic: {topic}");
            }
            if let Some(limit) = &self.rate_limit {
                let _ = writeln!(
                    out,
                    "rate limit: {}/s, burst {} (rule {:?})",
                    limit.per_second, limit.burst, limit.rule
                );
            }
            for d in &self.deadbands {
                let _ = writeln!(
                    out,
                    "deadband: {} ±{}, at least every {} (rule {:?})",
                    d.point,
                    d.delta,
                    humantime::format_duration(d.max_interval),
                    d.rule
                );
            }
        }
        if let Some(class) = &self.audit {
            let _ = writeln!(out, "audit: {class}");
        }
        if self.alerts.is_empty() {
            let _ = writeln!(out, "alerts: none");
        } else {
            let _ = writeln!(out, "alerts:");
            for flag in &self.alerts {
                let _ = writeln!(
                    out,
                    "  - {} ({}, rule {:?})",
                    flag.name,
                    severity_name(flag.severity),
                    flag.rule
                );
            }
        }
        if self.matched.is_empty() {
            let _ = writeln!(out, "rules matched: none");
        } else {
            let _ = writeln!(out, "rules matched, in order:");
            for m in &self.matched {
                let did = if m.did.is_empty() {
                    "nothing".to_owned()
                } else {
                    m.did.join("; ")
                };
                let _ = writeln!(out, "  {}. {:?}: {did}", m.index, m.rule);
            }
        }
        for e in &self.errors {
            let _ = writeln!(out, "condition error in rule {:?}: {}", e.rule, e.message);
        }
        let body = serde_json::to_string_pretty(&self.body).unwrap_or_default();
        let _ = writeln!(
            out,
            "{}:\n{body}",
            if self.verdict.is_allow() {
                "body forwarded"
            } else {
                "body (refused; protected fields hidden)"
            }
        );
        out
    }
}
