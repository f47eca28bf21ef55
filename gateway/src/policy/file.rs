//! Reading a policy file: TOML into a compiled [`Policy`], collecting every problem — syntax,
//! unknown keys, bad values, CEL errors with their position in the expression — each naming the
//! rule (position and name), the key and, where it helps, the value.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use time::UtcOffset;

use super::cel;
use super::rule::{Action, Conversion, DefaultAction, Glob, OpeningHours, Rule};
use super::{Policy, Privacy, Stream, priority_name};
use crate::coldchain::Severity;
use crate::outbox::Priority;

/// Largest policy file.
pub const MAX_POLICY_BYTES: usize = 256 * 1024;
/// Most rules in a policy.
pub const MAX_RULES: usize = 500;
/// Most cost units all conditions of a policy together may spend on one event.
pub const MAX_POLICY_COST: u64 = 20 * cel::COST_BUDGET;

const TOP_KEYS: &[&str] = &["opening_hours", "default", "rules"];
const HOURS_KEYS: &[&str] = &["open", "close", "utc_offset"];
const RULE_KEYS: &[&str] = &[
    "name",
    "description",
    "device",
    "kind",
    "stream",
    "condition",
    "action",
    "reason",
    "validate",
    "rename",
    "scale",
    "convert",
    "drop",
    "redact",
    "pseudonymise",
    "priority",
    "route_cloud",
    "cloud_topic_suffix",
    "local_topic",
    "alert",
    "severity",
    "rate_limit",
    "deadband",
    "audit",
];
const RATE_KEYS: &[&str] = &["per_second", "burst"];
const DEADBAND_KEYS: &[&str] = &["point", "delta", "max_interval"];
const MAX_NAME: usize = 64;

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file (or whatever the text came from).
    pub origin: String,
    /// Line in the file, from 1, when known (syntax errors; the start of a rule).
    pub line: Option<usize>,
    /// The rule: its position in the file, from 1, and its name when it has a valid one.
    pub rule: Option<(usize, Option<String>)>,
    /// The key (`default`, `opening_hours.open`, `condition`, `rate_limit.burst`), or empty for
    /// the file as a whole.
    pub key: String,
    /// The offending value as written, when quoting it helps.
    pub value: Option<String>,
    /// Line and column, from 1, inside the condition expression.
    pub position: Option<(usize, usize)>,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        match &self.rule {
            Some((index, Some(name))) => write!(f, "rule {index} {name:?}: ")?,
            Some((index, None)) => write!(f, "rule {index}: ")?,
            None => {}
        }
        if !self.key.is_empty() {
            f.write_str(&self.key)?;
            if let Some(value) = &self.value {
                write!(f, " = {value}")?;
            }
            if let Some((line, column)) = self.position {
                write!(f, " (at {line}:{column} in the expression)")?;
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a policy file; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

impl PolicyErrors {
    fn file(origin: &str, message: String) -> PolicyErrors {
        PolicyErrors(vec![PolicyError {
            origin: origin.to_owned(),
            line: None,
            rule: None,
            key: String::new(),
            value: None,
            position: None,
            message,
        }])
    }
}

pub(crate) fn load(path: &Path) -> Result<Policy, PolicyErrors> {
    let origin = path.display().to_string();
    let file = std::fs::File::open(path)
        .map_err(|e| PolicyErrors::file(&origin, format!("cannot open the policy file: {e}")))?;
    let mut text = String::new();
    file.take(MAX_POLICY_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| PolicyErrors::file(&origin, format!("cannot read the policy file: {e}")))?;
    parse(&text, &origin)
}

fn short(value: &toml::Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

/// Where errors go, and what they are about.
struct Errors<'a> {
    origin: &'a str,
    list: Vec<PolicyError>,
}

impl Errors<'_> {
    fn push(&mut self, at: &At, key: &str, value: Option<&toml::Value>, message: String) {
        self.list.push(PolicyError {
            origin: self.origin.to_owned(),
            line: at.line,
            rule: at.rule.clone(),
            key: key.to_owned(),
            value: value.map(short),
            position: None,
            message,
        });
    }
}

/// The rule (or the top level) being read.
#[derive(Debug, Clone, Default)]
struct At {
    line: Option<usize>,
    rule: Option<(usize, Option<String>)>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |s| s.matches('\n').count()) + 1
}

/// The line each `[[rules]]` table starts on, when the file has that shape.
fn rule_lines(text: &str) -> Vec<usize> {
    #[derive(Deserialize)]
    struct Lines {
        #[serde(default)]
        rules: Vec<toml::Spanned<toml::Table>>,
    }
    toml::from_str::<Lines>(text)
        .map(|l| {
            l.rules
                .iter()
                .map(|r| line_of(text, r.span().start))
                .collect()
        })
        .unwrap_or_default()
}

/// Stack of the thread policies are compiled on: the CEL parser recurses deeply (see `cel.rs`),
/// and a policy may be loaded from any thread, a 2 MiB tokio worker included.
const COMPILE_STACK: usize = 64 * 1024 * 1024;

pub(crate) fn parse(text: &str, origin: &str) -> Result<Policy, PolicyErrors> {
    std::thread::scope(|scope| {
        let compiler = std::thread::Builder::new()
            .name("policy-compile".to_owned())
            .stack_size(COMPILE_STACK)
            .spawn_scoped(scope, || parse_here(text, origin));
        match compiler {
            Ok(handle) => handle.join().unwrap_or_else(|_| {
                Err(PolicyErrors::file(
                    origin,
                    "the policy compiler failed unexpectedly".to_owned(),
                ))
            }),
            Err(e) => Err(PolicyErrors::file(
                origin,
                format!("cannot start the policy compiler thread: {e}"),
            )),
        }
    })
}

fn parse_here(text: &str, origin: &str) -> Result<Policy, PolicyErrors> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyErrors::file(
            origin,
            format!(
                "the policy file is over {MAX_POLICY_BYTES} bytes ({} KiB at most)",
                MAX_POLICY_BYTES / 1024
            ),
        ));
    }
    let mut table: toml::Table = match toml::from_str(text) {
        Ok(table) => table,
        Err(e) => {
            let mut errors =
                PolicyErrors::file(origin, format!("invalid TOML: {}", e.message().trim_end()));
            errors.0[0].line = e.span().map(|s| line_of(text, s.start));
            return Err(errors);
        }
    };
    let mut errors = Errors {
        origin,
        list: Vec::new(),
    };
    let top = At::default();

    let default = match table.remove("default") {
        Some(toml::Value::String(s)) if s == "allow" => Some(DefaultAction::Allow),
        Some(toml::Value::String(s)) if s == "deny" => Some(DefaultAction::Deny),
        Some(other) => {
            errors.push(
                &top,
                "default",
                Some(&other),
                "must be \"allow\" or \"deny\"".to_owned(),
            );
            None
        }
        None => {
            errors.push(
                &top,
                "default",
                None,
                "missing; say what happens to an event no rule allows or denies: default = \"allow\" or \"deny\"".to_owned(),
            );
            None
        }
    };

    let opening_hours = table
        .remove("opening_hours")
        .and_then(|v| opening_hours(v, &mut errors));

    let env = cel::env();
    let mut rules = Vec::new();
    if let Some(value) = table.remove("rules") {
        match value {
            toml::Value::Array(items) if items.len() > MAX_RULES => errors.push(
                &top,
                "rules",
                None,
                format!("{} rules; at most {MAX_RULES}", items.len()),
            ),
            toml::Value::Array(items) => {
                let lines = rule_lines(text);
                let mut names = BTreeSet::new();
                for (i, item) in items.into_iter().enumerate() {
                    let at = At {
                        line: lines.get(i).copied(),
                        rule: Some((i + 1, None)),
                    };
                    let toml::Value::Table(item) = item else {
                        errors.push(
                            &at,
                            "",
                            None,
                            "each rule must be a table: write it as [[rules]]".to_owned(),
                        );
                        continue;
                    };
                    if let Some(rule) = parse_rule(item, at, &env, &mut errors, &mut names) {
                        rules.push(rule);
                    }
                }
            }
            other => errors.push(
                &top,
                "rules",
                Some(&other),
                "must be an array of tables: write each rule as [[rules]]".to_owned(),
            ),
        }
    }
    for key in table.keys() {
        errors.push(&top, key, None, unknown_key(key, TOP_KEYS));
    }

    let total: u64 = rules
        .iter()
        .filter_map(|r| r.condition.as_ref())
        .fold(0u64, |a, c| a.saturating_add(c.cost));
    if total > MAX_POLICY_COST {
        errors.push(
            &top,
            "rules",
            None,
            format!(
                "the conditions together may cost up to {total} units on one event; at most {MAX_POLICY_COST}"
            ),
        );
    }

    let Some(default) = default else {
        return Err(PolicyErrors(errors.list));
    };
    if !errors.list.is_empty() {
        return Err(PolicyErrors(errors.list));
    }

    let mut protected = BTreeSet::new();
    let mut privacy: Vec<(String, Privacy)> = Vec::new();
    for rule in &rules {
        for (names, kind) in [
            (&rule.pseudonymise, Privacy::Pseudonymise),
            (&rule.redact, Privacy::Redact),
            (&rule.drop, Privacy::Drop),
        ] {
            for name in names {
                protected.insert(name.clone());
                if !privacy.iter().any(|(n, _)| n == name) {
                    privacy.push((name.clone(), kind));
                }
            }
        }
    }
    Ok(Policy {
        origin: origin.to_owned(),
        default,
        opening_hours,
        rules,
        env,
        protected,
        privacy,
    })
}

fn unknown_key(key: &str, known: &[&str]) -> String {
    let guess = known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min();
    let guess = match (key, guess) {
        ("pseudonymize", _) => Some("pseudonymise"),
        (_, Some((_, k))) => Some(k),
        _ => None,
    };
    match guess {
        Some(k) => format!("unknown key; did you mean `{k}`?"),
        None => format!("unknown key; expected one of {}", known.join(", ")),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn parse_time_of_day(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn parse_offset(s: &str) -> Option<UtcOffset> {
    if s == "Z" {
        return Some(UtcOffset::UTC);
    }
    let sign = match s.as_bytes().first()? {
        b'+' => 1i8,
        b'-' => -1i8,
        _ => return None,
    };
    let minutes = parse_time_of_day(&s[1..])?;
    let h = i8::try_from(minutes / 60).ok()?;
    let m = i8::try_from(minutes % 60).ok()?;
    UtcOffset::from_hms(sign * h, sign * m, 0).ok()
}

fn opening_hours(value: toml::Value, errors: &mut Errors<'_>) -> Option<OpeningHours> {
    let top = At::default();
    let toml::Value::Table(mut t) = value else {
        errors.push(
            &top,
            "opening_hours",
            None,
            "must be a table: [opening_hours] with open, close and utc_offset".to_owned(),
        );
        return None;
    };
    let mut time_of_day = |key: &str, t: &mut toml::Table| -> Option<u16> {
        let full = format!("opening_hours.{key}");
        match t.remove(key) {
            Some(toml::Value::String(s)) => match parse_time_of_day(&s) {
                Some(m) => Some(m),
                None => {
                    errors.push(
                        &top,
                        &full,
                        Some(&toml::Value::String(s)),
                        "must be a 24-hour time HH:MM, like \"08:00\"".to_owned(),
                    );
                    None
                }
            },
            Some(other) => {
                errors.push(
                    &top,
                    &full,
                    Some(&other),
                    "must be a string HH:MM, like \"08:00\"".to_owned(),
                );
                None
            }
            None => {
                errors.push(
                    &top,
                    &full,
                    None,
                    "missing (HH:MM, like \"08:00\")".to_owned(),
                );
                None
            }
        }
    };
    let open = time_of_day("open", &mut t);
    let close = time_of_day("close", &mut t);
    let offset = match t.remove("utc_offset") {
        Some(toml::Value::String(s)) => match parse_offset(&s) {
            Some(o) => Some(o),
            None => {
                errors.push(
                    &top,
                    "opening_hours.utc_offset",
                    Some(&toml::Value::String(s)),
                    "must be +HH:MM or -HH:MM, like \"+01:00\"".to_owned(),
                );
                None
            }
        },
        Some(other) => {
            errors.push(
                &top,
                "opening_hours.utc_offset",
                Some(&other),
                "must be a string +HH:MM or -HH:MM".to_owned(),
            );
            None
        }
        None => {
            errors.push(
                &top,
                "opening_hours.utc_offset",
                None,
                "missing; the pharmacy's offset from UTC, like \"+01:00\" (fixed: adjust it when daylight saving time changes)".to_owned(),
            );
            None
        }
    };
    for key in t.keys() {
        errors.push(
            &top,
            &format!("opening_hours.{key}"),
            None,
            unknown_key(key, HOURS_KEYS),
        );
    }
    let (open, close, utc_offset) = (open?, close?, offset?);
    if open == close {
        errors.push(
            &top,
            "opening_hours",
            None,
            "open and close are the same time; leave [opening_hours] out for a pharmacy open around the clock".to_owned(),
        );
        return None;
    }
    Some(OpeningHours {
        open,
        close,
        utc_offset,
    })
}

fn is_field_name(s: &str) -> bool {
    (1..=MAX_NAME).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

fn is_word(s: &str, extra: &[u8]) -> bool {
    (1..=MAX_NAME).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
}

/// Reads one rule's keys, each on its own so every problem is reported.
struct RuleReader<'e, 'o> {
    at: At,
    errors: &'e mut Errors<'o>,
}

impl RuleReader<'_, '_> {
    fn err(&mut self, key: &str, value: Option<&toml::Value>, message: impl Into<String>) {
        self.errors.push(&self.at, key, value, message.into());
    }

    fn string(&mut self, key: &str, value: &toml::Value) -> Option<String> {
        match value {
            toml::Value::String(s) => Some(s.clone()),
            other => {
                self.err(key, Some(other), "must be a string");
                None
            }
        }
    }

    fn one_of<T: Copy>(
        &mut self,
        key: &str,
        value: &toml::Value,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        match value {
            toml::Value::String(s) => match choices.iter().find(|(n, _)| n == s) {
                Some((_, v)) => Some(*v),
                None => {
                    self.err(key, Some(value), format!("must be {}", names.join(" or ")));
                    None
                }
            },
            other => {
                self.err(key, Some(other), format!("must be {}", names.join(" or ")));
                None
            }
        }
    }

    /// A string or an array of strings.
    fn strings(&mut self, key: &str, value: &toml::Value) -> Option<Vec<String>> {
        match value {
            toml::Value::String(s) => Some(vec![s.clone()]),
            toml::Value::Array(items) if !items.is_empty() => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        toml::Value::String(s) => out.push(s.clone()),
                        other => {
                            self.err(key, Some(other), "must be a string or an array of strings");
                            return None;
                        }
                    }
                }
                Some(out)
            }
            other => {
                self.err(
                    key,
                    Some(other),
                    "must be a string or a non-empty array of strings",
                );
                None
            }
        }
    }

    /// An array of field (or point) names.
    fn names(&mut self, key: &str, value: &toml::Value) -> Option<Vec<String>> {
        let toml::Value::Array(items) = value else {
            self.err(
                key,
                Some(value),
                "must be an array of field names, like [\"note\"]",
            );
            return None;
        };
        let mut out: Vec<String> = Vec::new();
        for item in items {
            match item {
                toml::Value::String(s) if is_field_name(s) => {
                    if out.contains(s) {
                        self.err(key, Some(item), "is listed twice");
                    } else {
                        out.push(s.clone());
                    }
                }
                other => {
                    self.err(
                        key,
                        Some(other),
                        format!("must be a field name: 1 to {MAX_NAME} visible ASCII characters"),
                    );
                    return None;
                }
            }
        }
        Some(out)
    }

    fn table<'t>(&mut self, key: &str, value: &'t toml::Value) -> Option<&'t toml::Table> {
        match value {
            toml::Value::Table(t) => Some(t),
            other => {
                self.err(key, Some(other), "must be a table, like { name = ... }");
                None
            }
        }
    }

    fn number(&mut self, key: &str, value: Option<&toml::Value>) -> Option<f64> {
        match value {
            Some(toml::Value::Float(f)) if f.is_finite() => Some(*f),
            Some(toml::Value::Integer(i)) => Some(*i as f64),
            Some(other) => {
                self.err(key, Some(other), "must be a number");
                None
            }
            None => {
                self.err(key, None, "missing");
                None
            }
        }
    }

    fn unknown(&mut self, prefix: &str, table: &toml::Table, known: &[&str]) {
        for key in table.keys() {
            if !known.contains(&key.as_str()) {
                self.err(&format!("{prefix}.{key}"), None, unknown_key(key, known));
            }
        }
    }
}

fn parse_rule(
    mut t: toml::Table,
    mut at: At,
    env: &std::sync::Arc<::cel::Env>,
    errors: &mut Errors<'_>,
    names: &mut BTreeSet<String>,
) -> Option<Rule> {
    let index = at.rule.as_ref().map_or(0, |r| r.0);
    // The name first, so every later error carries it.
    let name = match t.remove("name") {
        Some(toml::Value::String(s))
            if (1..=MAX_NAME).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) =>
        {
            at.rule = Some((index, Some(s.clone())));
            if s == super::DEFAULT_RULE {
                errors.push(
                    &at,
                    "name",
                    Some(&toml::Value::String(s.clone())),
                    "\"default\" is reserved for the policy's default".to_owned(),
                );
            } else if !names.insert(s.clone()) {
                errors.push(
                    &at,
                    "name",
                    Some(&toml::Value::String(s.clone())),
                    "another rule has this name; names must be unique".to_owned(),
                );
            }
            Some(s)
        }
        Some(other) => {
            errors.push(
                &at,
                "name",
                Some(&other),
                format!("must be 1 to {MAX_NAME} letters, digits, '_', '.' or '-'"),
            );
            None
        }
        None => {
            errors.push(
                &at,
                "name",
                None,
                "missing; every rule needs a name, used in logs, decisions and the audit trail"
                    .to_owned(),
            );
            None
        }
    };
    let mut r = RuleReader { at, errors };
    let mut rule = Rule {
        name: name.clone().unwrap_or_default(),
        index,
        devices: Vec::new(),
        kinds: Vec::new(),
        stream: None,
        condition: None,
        action: None,
        validate: false,
        rename: Vec::new(),
        scale: Vec::new(),
        convert: Vec::new(),
        pseudonymise: Vec::new(),
        redact: Vec::new(),
        drop: Vec::new(),
        priority: None,
        route_cloud: None,
        cloud_topic_suffix: None,
        local_topic: None,
        alert: None,
        rate_limit: None,
        deadband: None,
        audit: None,
    };
    let before = r.errors.list.len();
    let mut reason = None;
    let mut severity = None;
    let mut deny = false;
    let has_alert = t.contains_key("alert");

    for (key, value) in &t {
        let key = key.as_str();
        match key {
            "description" => {
                if let Some(s) = r.string(key, value)
                    && s.len() > 1024
                {
                    r.err(key, None, "longer than 1024 bytes");
                }
            }
            "device" => {
                if let Some(patterns) = r.strings(key, value) {
                    for p in patterns {
                        let ok = (1..=MAX_NAME).contains(&p.len())
                            && p.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"._-*?".contains(&b));
                        if ok {
                            rule.devices.push(Glob(p));
                        } else {
                            r.err(
                                key,
                                Some(&toml::Value::String(p)),
                                "must be a device id or a glob of one (letters, digits, '.', '_', '-', with '*' and '?')",
                            );
                        }
                    }
                }
            }
            "kind" => {
                if let Some(kinds) = r.strings(key, value) {
                    for k in kinds {
                        if rxgate_certs::KINDS.contains(&k.as_str()) {
                            rule.kinds.push(k);
                        } else {
                            r.err(
                                key,
                                Some(&toml::Value::String(k)),
                                format!("must be one of {}", rxgate_certs::KINDS.join(", ")),
                            );
                        }
                    }
                }
            }
            "stream" => {
                rule.stream = r.one_of(
                    key,
                    value,
                    &[("telemetry", Stream::Telemetry), ("events", Stream::Events)],
                );
            }
            "condition" => {
                if let Some(source) = r.string(key, value) {
                    match cel::compile(env, &source) {
                        Ok(c) => rule.condition = Some(c),
                        Err(list) => {
                            for e in list {
                                r.errors.list.push(super::PolicyError {
                                    origin: r.errors.origin.to_owned(),
                                    line: r.at.line,
                                    rule: r.at.rule.clone(),
                                    key: "condition".to_owned(),
                                    value: None,
                                    position: e.position,
                                    message: e.message,
                                });
                            }
                        }
                    }
                }
            }
            "action" => match r.one_of(key, value, &[("allow", false), ("deny", true)]) {
                Some(true) => deny = true,
                Some(false) => rule.action = Some(Action::Allow),
                None => {}
            },
            "reason" => {
                if let Some(s) = r.string(key, value) {
                    if s.trim().is_empty() || s.len() > 256 {
                        r.err(key, Some(value), "must be 1 to 256 bytes of text");
                    } else {
                        reason = Some(s);
                    }
                }
            }
            "validate" => {
                rule.validate = r
                    .one_of(key, value, &[(super::access::SCHEMA, true)])
                    .unwrap_or(false);
            }
            "rename" => {
                if let Some(table) = r.table(key, value) {
                    let mut targets = BTreeSet::new();
                    for (old, new) in table {
                        match new {
                            toml::Value::String(new)
                                if is_field_name(old) && is_field_name(new) && old != new =>
                            {
                                if !targets.insert(new.clone()) {
                                    r.err(
                                        &format!("rename.{old}"),
                                        Some(&toml::Value::String(new.clone())),
                                        "two fields are renamed to the same name",
                                    );
                                }
                                rule.rename.push((old.clone(), new.clone()));
                            }
                            other => r.err(
                                &format!("rename.{old}"),
                                Some(other),
                                "must be the new name, different from the old one",
                            ),
                        }
                    }
                }
            }
            "scale" => {
                if let Some(table) = r.table(key, value) {
                    for (point, factor) in table {
                        let full = format!("scale.{point}");
                        if let Some(f) = r.number(&full, Some(factor)) {
                            if f == 0.0 || !is_field_name(point) {
                                r.err(
                                    &full,
                                    Some(factor),
                                    "must be a non-zero factor for a field or point name",
                                );
                            } else {
                                rule.scale.push((point.clone(), f));
                            }
                        }
                    }
                }
            }
            "convert" => {
                if let Some(table) = r.table(key, value) {
                    for (point, conversion) in table {
                        let full = format!("convert.{point}");
                        match conversion.as_str().and_then(Conversion::parse) {
                            Some(c) if is_field_name(point) => {
                                rule.convert.push((point.clone(), c))
                            }
                            _ => r.err(
                                &full,
                                Some(conversion),
                                format!(
                                    "must be one of {}",
                                    Conversion::NAMES
                                        .iter()
                                        .map(|n| format!("\"{n}\""))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            ),
                        }
                    }
                }
            }
            "drop" => rule.drop = r.names(key, value).unwrap_or_default(),
            "redact" => rule.redact = r.names(key, value).unwrap_or_default(),
            "pseudonymise" => rule.pseudonymise = r.names(key, value).unwrap_or_default(),
            "priority" => {
                rule.priority = r.one_of(
                    key,
                    value,
                    &[
                        Priority::Critical,
                        Priority::High,
                        Priority::Normal,
                        Priority::Low,
                    ]
                    .map(|p| (priority_name(p), p)),
                );
            }
            "route_cloud" => match value {
                toml::Value::Boolean(b) => rule.route_cloud = Some(*b),
                other => r.err(key, Some(other), "must be true or false"),
            },
            "cloud_topic_suffix" => {
                if let Some(s) = r.string(key, value) {
                    let ok = s.len() <= MAX_NAME && s.split('/').all(|seg| is_word(seg, b"_-"));
                    if ok {
                        rule.cloud_topic_suffix = Some(s);
                    } else {
                        r.err(
                            key,
                            Some(value),
                            "must be topic levels of lowercase letters, digits, '_' and '-', separated by '/' (no wildcards, no leading or trailing '/')",
                        );
                    }
                }
            }
            "local_topic" => {
                if let Some(s) = r.string(key, value) {
                    let plain = s.replace("{device}", "");
                    let ok = (1..=128).contains(&s.len())
                        && !s.starts_with('/')
                        && !s.starts_with('$')
                        && !s.starts_with("devices/")
                        && !plain.contains(['+', '#', '{', '}', '\0'])
                        && s.split('/').all(|seg| !seg.is_empty());
                    if ok {
                        rule.local_topic = Some(s);
                    } else {
                        r.err(
                            key,
                            Some(value),
                            "must be an MQTT topic without wildcards, empty levels or a leading '/' or '$', outside devices/ (which belongs to the devices); {device} is replaced by the device id",
                        );
                    }
                }
            }
            "alert" => {
                if let Some(s) = r.string(key, value) {
                    if is_word(&s, b"_") {
                        rule.alert = Some((s, Severity::Warning));
                    } else {
                        r.err(
                            key,
                            Some(value),
                            format!("must be a flag name: 1 to {MAX_NAME} lowercase letters, digits and '_'"),
                        );
                    }
                }
            }
            "severity" => {
                severity = r.one_of(
                    key,
                    value,
                    &[
                        ("warning", Severity::Warning),
                        ("critical", Severity::Critical),
                    ],
                );
            }
            "rate_limit" => {
                if let Some(table) = r.table(key, value) {
                    r.unknown("rate_limit", table, RATE_KEYS);
                    let per_second = r.number("rate_limit.per_second", table.get("per_second"));
                    let burst = match table.get("burst") {
                        Some(toml::Value::Integer(b)) if (1..=1_000_000).contains(b) => {
                            u32::try_from(*b).ok()
                        }
                        Some(other) => {
                            r.err(
                                "rate_limit.burst",
                                Some(other),
                                "must be a whole number from 1 to 1000000",
                            );
                            None
                        }
                        None => {
                            r.err("rate_limit.burst", None, "missing (events allowed at once)");
                            None
                        }
                    };
                    match (per_second, burst) {
                        (Some(p), Some(b)) if p > 0.0 && p <= 1_000_000.0 => {
                            rule.rate_limit = Some((p, b));
                        }
                        (Some(p), Some(_)) => r.err(
                            "rate_limit.per_second",
                            Some(&toml::Value::Float(p)),
                            "must be greater than 0 and at most 1000000",
                        ),
                        _ => {}
                    }
                }
            }
            "deadband" => {
                if let Some(table) = r.table(key, value) {
                    r.unknown("deadband", table, DEADBAND_KEYS);
                    let point = match table.get("point") {
                        Some(toml::Value::String(p)) if is_field_name(p) => Some(p.clone()),
                        Some(other) => {
                            r.err("deadband.point", Some(other), "must be a point name");
                            None
                        }
                        None => {
                            r.err("deadband.point", None, "missing");
                            None
                        }
                    };
                    let delta = r.number("deadband.delta", table.get("delta"));
                    if let Some(d) = delta
                        && d < 0.0
                    {
                        r.err(
                            "deadband.delta",
                            Some(&toml::Value::Float(d)),
                            "must be 0 or more",
                        );
                    }
                    let interval = match table.get("max_interval") {
                        Some(toml::Value::String(s)) => match humantime::parse_duration(s) {
                            Ok(d)
                                if d >= Duration::from_secs(1)
                                    && d <= Duration::from_secs(86_400) =>
                            {
                                Some(d)
                            }
                            _ => {
                                r.err(
                                    "deadband.max_interval",
                                    table.get("max_interval"),
                                    "must be a duration from 1s to 24h, like \"5m\"",
                                );
                                None
                            }
                        },
                        Some(other) => {
                            r.err(
                                "deadband.max_interval",
                                Some(other),
                                "must be a duration string, like \"5m\"",
                            );
                            None
                        }
                        None => {
                            r.err(
                                "deadband.max_interval",
                                None,
                                "missing; a reading is forwarded at least this often, changed or not",
                            );
                            None
                        }
                    };
                    if let (Some(p), Some(d), Some(i)) = (point, delta, interval)
                        && d >= 0.0
                    {
                        rule.deadband = Some((p, d, i));
                    }
                }
            }
            "audit" => {
                if let Some(s) = r.string(key, value) {
                    if is_word(&s, b"_-") {
                        rule.audit = Some(s);
                    } else {
                        r.err(
                            key,
                            Some(value),
                            "must be an audit class: lowercase letters, digits, '_' and '-'",
                        );
                    }
                }
            }
            "name" => {}
            other => r.err(other, None, unknown_key(other, RULE_KEYS)),
        }
    }
    t.clear();

    match (deny, reason) {
        (true, Some(reason)) => rule.action = Some(Action::Deny { reason }),
        (true, None) => r.err(
            "reason",
            None,
            "missing; a deny rule says why (it is logged and reported to the device)",
        ),
        (false, Some(_)) => r.err(
            "reason",
            None,
            "only a rule with action = \"deny\" has a reason",
        ),
        (false, None) => {}
    }
    match (&mut rule.alert, severity) {
        (Some((_, s)), Some(severity)) => *s = severity,
        (None, Some(_)) if !has_alert => {
            r.err("severity", None, "only a rule with an alert has a severity");
        }
        _ => {}
    }
    if rule.validate && rule.stream != Some(Stream::Events) {
        r.err(
            "validate",
            None,
            "access events come on the events stream: add stream = \"events\" to this rule",
        );
    }
    if rule.deadband.is_some() && rule.stream != Some(Stream::Telemetry) {
        r.err(
            "deadband",
            None,
            "deadbands apply to telemetry: add stream = \"telemetry\" to this rule",
        );
    }
    let does_something = rule.action.is_some()
        || deny
        || rule.validate
        || rule.changes_body()
        || rule.priority.is_some()
        || rule.route_cloud.is_some()
        || rule.cloud_topic_suffix.is_some()
        || rule.local_topic.is_some()
        || rule.alert.is_some()
        || rule.rate_limit.is_some()
        || rule.deadband.is_some()
        || rule.audit.is_some();
    if !does_something && r.errors.list.len() == before {
        r.err(
            "",
            None,
            "the rule does nothing: give it an action, a transform, a priority, routing, an alert, a rate limit, a deadband or an audit class",
        );
    }
    (name.is_some() && r.errors.list.len() == before).then_some(rule)
}
