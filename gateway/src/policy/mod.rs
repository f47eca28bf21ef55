//! The policy engine: who may say what, schema validation, unit conversion, removal or
//! pseudonymisation of patient identifiers, priority, rate limits, deadbands, routing, audit
//! marks and access flags — as one pure function, [`evaluate`]`(&Policy, &Event, &Context) ->
//! Decision`, with the reasons in the decision. It reads no clock, file or environment: the
//! caller passes the time and the pseudonym key in [`Context`] and acts on the [`Decision`]
//! (keeps rate-limit and deadband state, routes, audits, raises alerts).
//!
//! The file format is documented in `docs/policy.md`; `config/policy.toml` is the default
//! policy, built in as [`DEFAULT_POLICY`].
//!
//! # Evaluation
//! - Rules are tried in file order. A rule *matches* when its `device`, `kind` and `stream`
//!   selectors and its `condition` all hold. Every matching rule contributes its actions; a
//!   matching rule with `action = "allow"` or `"deny"`, or whose `validate` fails, ends the
//!   evaluation. Without such a rule, the policy's `default` decides.
//! - Each rule sees the event as the rules before it left it (renamed, converted,
//!   pseudonymised...). Within a rule: validate, then rename, scale, convert, pseudonymise,
//!   redact, drop; then priority, routing, alert, rate limit, deadband, audit; then allow/deny.
//! - Settings (priority, routing, rate limit, audit) of a later matching rule replace those of
//!   an earlier one; alerts accumulate (one per flag name); deadbands accumulate per point.
//! - A condition that cannot be evaluated (a missing field not tested with `has()`, a type
//!   mismatch, an event over the input caps) is recorded in [`Decision::errors`] and counts as
//!   *not matching* — except on a rule with `action = "deny"`, where it counts as matching: an
//!   error never lets through what a deny rule would have stopped.
//! - When the verdict is not [`Verdict::Allow`], the body returned has the privacy transforms
//!   (pseudonymise, redact, drop) of *every* rule applied, and `patient_id` pseudonymised, so a
//!   refused event that gets logged or audited never carries what the policy protects.
//!
//! # Bounds
//! A policy file is at most [`MAX_POLICY_BYTES`] with at most [`MAX_RULES`] rules; each
//! condition is at most [`MAX_EXPRESSION_BYTES`] and is proven at load time to cost at most
//! [`COST_BUDGET`] units on the largest event accepted (see `cel.rs` for how, since the `cel`
//! crate has no runtime budget).

mod access;
mod cel;
mod cli;
mod file;
mod rule;
pub mod stage;
mod transform;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use ring::hmac;
use serde_json::{Map, Value};
use time::OffsetDateTime;

pub use access::{ACTIONS, AUTH_FACTORS, FIELDS as ACCESS_FIELDS, FieldError, SCHEDULES};
pub use cel::{
    COST_BUDGET, FUNCTIONS, INPUT_MAX_BYTES, INPUT_MAX_DEPTH, INPUT_MAX_VALUES, MAX_AST_DEPTH,
    MAX_COMPREHENSION_NESTING, MAX_EXPRESSION_BYTES, MAX_NODES, MAX_PARSE_DEPTH, VARIABLES,
};
pub use cli::{PayloadError, Summary, check_file, test_event};
pub use file::{MAX_POLICY_BYTES, MAX_POLICY_COST, MAX_RULES, PolicyError, PolicyErrors};
pub use rule::{Conversion, Deadband, DefaultAction, OpeningHours, RateLimit};
pub use transform::{REDACTED, pseudonym, telemetry_body};

use crate::coldchain::Severity;
use crate::outbox::Priority;
use rule::{Action, Rule};

/// The rule name a decision made by the policy's `default` carries.
pub const DEFAULT_RULE: &str = "default";

/// The default policy (`config/policy.toml`), for a gateway configured without one.
pub const DEFAULT_POLICY: &str = include_str!("../../../config/policy.toml");

/// Which of a device's streams an event came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// `devices/<id>/telemetry`, and Modbus readings.
    Telemetry,
    /// `devices/<id>/events`.
    Events,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Telemetry => "telemetry",
            Stream::Events => "events",
        }
    }

    pub fn parse(s: &str) -> Option<Stream> {
        match s {
            "telemetry" => Some(Stream::Telemetry),
            "events" => Some(Stream::Events),
            _ => None,
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the engine decides about.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub device: &'a str,
    /// `fridge`, `cabinet` or `sensor`.
    pub kind: &'a str,
    pub stream: Stream,
    /// An event's JSON object as the device sent it, or for telemetry
    /// [`telemetry_body`]`(&reading.points)`.
    pub body: &'a Map<String, Value>,
}

/// What the engine needs from outside: the time (for opening hours) and the pseudonym key.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub now: OffsetDateTime,
    /// HMAC-SHA256 key of the site's pseudonyms; keep it secret and stable, or the same patient
    /// gets a new pseudonym.
    pub pseudonym_key: &'a hmac::Key,
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused by a rule's `action = "deny"` (or the policy's default, rule [`DEFAULT_RULE`]).
    Deny {
        rule: String,
        reason: String,
    },
    /// Refused because it breaks the contract a rule validated it against: the device should
    /// not resend it.
    Invalid {
        rule: String,
        errors: Vec<FieldError>,
    },
}

impl Verdict {
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow)
    }

    /// Why it was refused, in one line; `None` when allowed.
    pub fn reason(&self) -> Option<String> {
        match self {
            Verdict::Allow => None,
            Verdict::Deny { reason, .. } => Some(reason.clone()),
            Verdict::Invalid { errors, .. } => Some(format!(
                "invalid access event: {}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Allow => f.write_str("allow"),
            Verdict::Deny { rule, .. } | Verdict::Invalid { rule, .. } => write!(
                f,
                "deny by rule {rule:?}: {}",
                self.reason().unwrap_or_default()
            ),
        }
    }
}

/// An access flag raised by a rule's `alert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub name: String,
    pub severity: Severity,
    pub rule: String,
}

/// A rule that matched, and what it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub rule: String,
    /// The rule's position in the file, from 1.
    pub index: usize,
    pub did: Vec<String>,
}

/// A condition that could not be evaluated (the message never quotes event values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub rule: String,
    pub message: String,
}

/// Everything the engine decided about one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The rule that ended the evaluation (allow, deny, failed validation); `None` when the
    /// policy's default decided.
    pub decided_by: Option<String>,
    /// The body after the transforms: what may be forwarded. See the module comment for what
    /// it holds when the event is refused.
    pub body: Map<String, Value>,
    /// The outbox lane; `None` leaves it to the caller's default for the stream.
    pub priority: Option<Priority>,
    /// Whether the event goes to the cloud (default true).
    pub route_cloud: bool,
    /// Appended to the event's cloud topic, after a `/`.
    pub cloud_topic_suffix: Option<String>,
    /// A topic on the gateway's local broker that also gets the event (`{device}` filled in).
    pub local_topic: Option<String>,
    /// Access flags raised, in rule order, one per flag name.
    pub alerts: Vec<Flag>,
    pub rate_limit: Option<RateLimit>,
    /// One per point at most.
    pub deadbands: Vec<Deadband>,
    /// The audit-trail class the event is marked with (`controlled-substance`).
    pub audit: Option<String>,
    /// The rules that matched, in order, with what each did.
    pub matched: Vec<Matched>,
    /// Conditions that could not be evaluated.
    pub errors: Vec<RuleError>,
    /// Whether the context's time was outside opening hours.
    pub after_hours: bool,
    /// Telemetry: the original name of each renamed point (new name → original name).
    pub point_sources: BTreeMap<String, String>,
    /// Telemetry: the unit of each converted point.
    pub point_units: BTreeMap<String, String>,
}

impl Decision {
    pub(crate) fn new(body: Map<String, Value>) -> Decision {
        Decision {
            verdict: Verdict::Allow,
            decided_by: None,
            body,
            priority: None,
            route_cloud: true,
            cloud_topic_suffix: None,
            local_topic: None,
            alerts: Vec::new(),
            rate_limit: None,
            deadbands: Vec::new(),
            audit: None,
            matched: Vec::new(),
            errors: Vec::new(),
            after_hours: false,
            point_sources: BTreeMap::new(),
            point_units: BTreeMap::new(),
        }
    }
}

/// One field's privacy transform, as the refused-event sweep applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Privacy {
    Pseudonymise,
    Redact,
    Drop,
}

/// A compiled policy. Immutable and cheap to share (`Send + Sync`): evaluate it from any task.
pub struct Policy {
    origin: String,
    default: DefaultAction,
    opening_hours: Option<OpeningHours>,
    rules: Vec<Rule>,
    env: Arc<::cel::Env>,
    /// Fields whose values no error message may quote.
    protected: BTreeSet<String>,
    /// Every privacy transform of every rule, for refused events.
    privacy: Vec<(String, Privacy)>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("origin", &self.origin)
            .field("default", &self.default)
            .field("opening_hours", &self.opening_hours)
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// Parses and compiles a policy; `origin` (a path) is only used in error messages.
    /// Collects every problem in the file.
    pub fn parse(text: &str, origin: &str) -> Result<Policy, PolicyErrors> {
        file::parse(text, origin)
    }

    /// Reads and compiles the policy file at `path`.
    pub fn load(path: &Path) -> Result<Policy, PolicyErrors> {
        file::load(path)
    }

    /// The built-in default policy ([`DEFAULT_POLICY`]).
    pub fn builtin() -> Policy {
        match Policy::parse(DEFAULT_POLICY, "config/policy.toml") {
            Ok(policy) => policy,
            // A test loads the file; reaching this means the binary was built from a broken
            // tree. Deny everything rather than panic.
            Err(_) => Policy::deny_all(),
        }
    }

    fn deny_all() -> Policy {
        Policy {
            origin: "(deny all)".to_owned(),
            default: DefaultAction::Deny,
            opening_hours: None,
            rules: Vec::new(),
            env: cel::env(),
            protected: BTreeSet::new(),
            privacy: Vec::new(),
        }
    }

    /// Where it came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn default_action(&self) -> DefaultAction {
        self.default
    }

    pub fn opening_hours(&self) -> Option<OpeningHours> {
        self.opening_hours
    }

    /// Rule names, in order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// Decides about `event`; see [`evaluate`].
    pub fn evaluate(&self, event: &Event<'_>, ctx: &Context<'_>) -> Decision {
        evaluate(self, event, ctx)
    }

    /// Whether no rule selects this device, kind and stream and the default allows: evaluating
    /// such an event changes nothing but what [`Decision::telemetry_points`] normalises.
    pub(crate) fn allows_untouched(&self, device: &str, kind: &str, stream: Stream) -> bool {
        self.default.verdict().is_allow()
            && !self.rules.iter().any(|r| r.selects(device, kind, stream))
    }

    fn is_protected(&self, field: &str) -> bool {
        field == "patient_id" || self.protected.contains(field)
    }
}

/// Decides about `event` under `policy` at `ctx.now`. Pure: the same inputs give the same
/// decision. See the module comment for the rules of evaluation.
pub fn evaluate(policy: &Policy, event: &Event<'_>, ctx: &Context<'_>) -> Decision {
    let after_hours = policy
        .opening_hours
        .is_some_and(|hours| hours.after_hours(ctx.now));
    let facts = cel::Facts {
        device: event.device,
        kind: event.kind,
        stream: event.stream.as_str(),
        after_hours,
    };
    let mut body = event.body.clone();
    let mut decision = Decision::new(Map::new());
    decision.after_hours = after_hours;
    let mut verdict: Option<Verdict> = None;
    let mut pseudonymised = BTreeSet::new();
    let mut next = 0;

    while next < policy.rules.len() && verdict.is_none() {
        // Conditions read a CEL view of the body; it is rebuilt only after a rule changed it.
        let input = std::cell::OnceCell::new();
        let mut body_rule = None;
        while next < policy.rules.len() {
            let rule = &policy.rules[next];
            next += 1;
            if !rule.selects(event.device, event.kind, event.stream) {
                continue;
            }
            let mut notes = Vec::new();
            if let Some(condition) = &rule.condition {
                let view = input.get_or_init(|| cel::Input::new(&policy.env, &body, facts));
                match cel::evaluate(condition, view) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(message) => {
                        decision.errors.push(RuleError {
                            rule: rule.name.clone(),
                            message: message.clone(),
                        });
                        if !matches!(rule.action, Some(Action::Deny { .. })) {
                            continue;
                        }
                        notes.push(format!(
                            "condition could not be evaluated ({message}); a deny rule then applies"
                        ));
                    }
                }
            }
            if rule.changes_body() {
                body_rule = Some((rule, notes));
                break;
            }
            verdict = validate(policy, rule, &body, &mut decision, &mut notes)
                .or_else(|| settle(rule, event, &mut decision, notes));
            if verdict.is_some() {
                break;
            }
        }
        drop(input);
        if let Some((rule, mut notes)) = body_rule {
            verdict = validate(policy, rule, &body, &mut decision, &mut notes);
            if verdict.is_some() {
                break;
            }
            transform::apply(
                rule,
                event.stream,
                &mut body,
                ctx.pseudonym_key,
                &mut decision,
                &mut notes,
                &mut pseudonymised,
            );
            verdict = settle(rule, event, &mut decision, notes);
        }
    }

    decision.verdict = verdict.unwrap_or_else(|| policy.default.verdict());
    if !decision.verdict.is_allow() {
        sweep(
            policy,
            event.stream,
            &mut body,
            ctx.pseudonym_key,
            &pseudonymised,
        );
    }
    decision.body = body;
    decision
}

/// Checks the body against the contract a matched rule asks for. On failure, records the rule
/// and returns the verdict that ends the evaluation.
fn validate(
    policy: &Policy,
    rule: &Rule,
    body: &Map<String, Value>,
    decision: &mut Decision,
    notes: &mut Vec<String>,
) -> Option<Verdict> {
    if !rule.validate {
        return None;
    }
    let errors = access::validate(body, &|f| policy.is_protected(f));
    if errors.is_empty() {
        notes.push(format!("validated as {}", access::SCHEMA));
        return None;
    }
    notes.push(format!(
        "validated as {}: {} problem(s)",
        access::SCHEMA,
        errors.len()
    ));
    decision.matched.push(Matched {
        rule: rule.name.clone(),
        index: rule.index,
        did: std::mem::take(notes),
    });
    decision.decided_by = Some(rule.name.clone());
    Some(Verdict::Invalid {
        rule: rule.name.clone(),
        errors,
    })
}

/// Applies a matched rule's settings and terminal action; records what it did.
fn settle(
    rule: &Rule,
    event: &Event<'_>,
    decision: &mut Decision,
    mut did: Vec<String>,
) -> Option<Verdict> {
    if let Some(priority) = rule.priority {
        decision.priority = Some(priority);
        did.push(format!("priority {}", priority_name(priority)));
    }
    if let Some(cloud) = rule.route_cloud {
        decision.route_cloud = cloud;
        did.push(
            if cloud {
                "to the cloud"
            } else {
                "kept off the cloud"
            }
            .to_owned(),
        );
    }
    if let Some(suffix) = &rule.cloud_topic_suffix {
        decision.cloud_topic_suffix = Some(suffix.clone());
        did.push(format!("cloud topic suffix {suffix}"));
    }
    if let Some(topic) = &rule.local_topic {
        let topic = topic.replace("{device}", event.device);
        did.push(format!("local topic {topic}"));
        decision.local_topic = Some(topic);
    }
    if let Some((name, severity)) = &rule.alert {
        if !decision.alerts.iter().any(|f| &f.name == name) {
            decision.alerts.push(Flag {
                name: name.clone(),
                severity: *severity,
                rule: rule.name.clone(),
            });
        }
        did.push(format!("alert {name} ({})", severity_name(*severity)));
    }
    if let Some((per_second, burst)) = rule.rate_limit {
        decision.rate_limit = Some(RateLimit {
            rule: rule.name.clone(),
            per_second,
            burst,
        });
        did.push(format!("rate limit {per_second}/s, burst {burst}"));
    }
    if let Some((point, delta, max_interval)) = &rule.deadband {
        decision.deadbands.retain(|d| &d.point != point);
        decision.deadbands.push(Deadband {
            rule: rule.name.clone(),
            point: point.clone(),
            delta: *delta,
            max_interval: *max_interval,
        });
        did.push(format!(
            "deadband {point} ±{delta}, at least every {}",
            humantime::format_duration(*max_interval)
        ));
    }
    if let Some(class) = &rule.audit {
        decision.audit = Some(class.clone());
        did.push(format!("audit {class}"));
    }
    let verdict = match &rule.action {
        None => None,
        Some(Action::Allow) => {
            did.push("allow".to_owned());
            Some(Verdict::Allow)
        }
        Some(Action::Deny { reason }) => {
            did.push(format!("deny: {reason}"));
            Some(Verdict::Deny {
                rule: rule.name.clone(),
                reason: reason.clone(),
            })
        }
    };
    if verdict.is_some() {
        decision.decided_by = Some(rule.name.clone());
    }
    decision.matched.push(Matched {
        rule: rule.name.clone(),
        index: rule.index,
        did,
    });
    verdict
}

/// The privacy transforms of every rule, for a refused event.
fn sweep(
    policy: &Policy,
    stream: Stream,
    body: &mut Map<String, Value>,
    key: &hmac::Key,
    pseudonymised: &BTreeSet<String>,
) {
    let target = match stream {
        Stream::Events => Some(body),
        Stream::Telemetry => match body.get_mut("points") {
            Some(Value::Object(points)) => Some(points),
            _ => None,
        },
    };
    let Some(target) = target else { return };
    let always = ("patient_id".to_owned(), Privacy::Pseudonymise);
    let mut done = pseudonymised.clone();
    for (field, privacy) in policy.privacy.iter().chain(std::iter::once(&always)) {
        match privacy {
            Privacy::Pseudonymise => {
                // A field already pseudonymised (by a rule, or earlier here) keeps its pseudonym.
                if let Some(value) = target.get_mut(field)
                    && done.insert(field.clone())
                {
                    transform::pseudonymise_value(value, key);
                }
            }
            Privacy::Redact => {
                if let Some(value) = target.get_mut(field) {
                    *value = Value::String(REDACTED.to_owned());
                }
            }
            Privacy::Drop => {
                target.remove(field);
            }
        }
    }
}

pub(crate) fn priority_name(p: Priority) -> &'static str {
    match p {
        Priority::Critical => "critical",
        Priority::High => "high",
        Priority::Normal => "normal",
        Priority::Low => "low",
    }
}

pub(crate) fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}
