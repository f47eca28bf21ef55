//! A compiled rule and the pieces it is made of: device globs, opening hours, transforms.

use std::time::Duration;

use time::{OffsetDateTime, UtcOffset};

use super::cel::Condition;
use super::{Stream, Verdict};
use crate::coldchain::Severity;
use crate::outbox::Priority;

/// `action = "allow" | "deny"`: terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Allow,
    Deny { reason: String },
}

/// What `default` says when no terminal rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultAction {
    Allow,
    Deny,
}

impl DefaultAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultAction::Allow => "allow",
            DefaultAction::Deny => "deny",
        }
    }

    pub(crate) fn verdict(self) -> Verdict {
        match self {
            DefaultAction::Allow => Verdict::Allow,
            DefaultAction::Deny => Verdict::Deny {
                rule: super::DEFAULT_RULE.to_owned(),
                reason: "no rule allowed it and the policy's default is deny".to_owned(),
            },
        }
    }
}

/// `convert = { point = "..." }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    FahrenheitToCelsius,
    CelsiusToFahrenheit,
    KelvinToCelsius,
}

impl Conversion {
    pub(crate) const NAMES: &'static [&'static str] = &["f_to_c", "c_to_f", "k_to_c"];

    pub(crate) fn parse(s: &str) -> Option<Conversion> {
        match s {
            "f_to_c" => Some(Conversion::FahrenheitToCelsius),
            "c_to_f" => Some(Conversion::CelsiusToFahrenheit),
            "k_to_c" => Some(Conversion::KelvinToCelsius),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Conversion::FahrenheitToCelsius => "f_to_c",
            Conversion::CelsiusToFahrenheit => "c_to_f",
            Conversion::KelvinToCelsius => "k_to_c",
        }
    }

    pub fn apply(self, x: f64) -> f64 {
        match self {
            Conversion::FahrenheitToCelsius => (x - 32.0) * 5.0 / 9.0,
            Conversion::CelsiusToFahrenheit => x * 9.0 / 5.0 + 32.0,
            Conversion::KelvinToCelsius => x - 273.15,
        }
    }

    /// The unit of the result.
    pub fn unit(self) -> &'static str {
        match self {
            Conversion::FahrenheitToCelsius | Conversion::KelvinToCelsius => "°C",
            Conversion::CelsiusToFahrenheit => "°F",
        }
    }
}

/// A device id pattern: `*` matches any run of characters, `?` any one character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob(pub String);

impl Glob {
    pub(crate) fn matches(&self, text: &str) -> bool {
        glob_match(self.0.as_bytes(), text.as_bytes())
    }
}

/// Iterative wildcard matching with single-star backtracking: O(pattern × text) at worst.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// `[opening_hours]`: when the pharmacy is open, at a fixed UTC offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpeningHours {
    /// Minutes after local midnight.
    pub open: u16,
    pub close: u16,
    pub utc_offset: UtcOffset,
}

impl OpeningHours {
    /// Whether `now` is outside opening hours. `close` before `open` means open across midnight
    /// (`open = "22:00"`, `close = "06:00"`). Opening is inclusive, closing exclusive.
    pub fn after_hours(&self, now: OffsetDateTime) -> bool {
        let local = now.checked_to_offset(self.utc_offset).unwrap_or(now);
        let minute = u16::from(local.hour()) * 60 + u16::from(local.minute());
        let open = if self.open < self.close {
            self.open <= minute && minute < self.close
        } else {
            minute >= self.open || minute < self.close
        };
        !open
    }
}

pub(crate) fn format_minutes(m: u16) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// `rate_limit = { per_second, burst }`: a token bucket the caller keeps per device and rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// The rule that set it: key the bucket by (device, rule).
    pub rule: String,
    pub per_second: f64,
    pub burst: u32,
}

/// `deadband = { point, delta, max_interval }`: the caller forwards a reading to the cloud only
/// when `point` moved by more than `delta` since the last one forwarded, or `max_interval` has
/// passed. It must never thin what the cold-chain monitor sees.
#[derive(Debug, Clone, PartialEq)]
pub struct Deadband {
    pub rule: String,
    pub point: String,
    pub delta: f64,
    pub max_interval: Duration,
}

/// A compiled rule.
#[derive(Debug)]
pub(crate) struct Rule {
    pub name: String,
    /// Position in the file, from 1.
    pub index: usize,
    pub devices: Vec<Glob>,
    pub kinds: Vec<String>,
    pub stream: Option<Stream>,
    pub condition: Option<Condition>,
    pub action: Option<Action>,
    pub validate: bool,
    pub rename: Vec<(String, String)>,
    pub scale: Vec<(String, f64)>,
    pub convert: Vec<(String, Conversion)>,
    pub pseudonymise: Vec<String>,
    pub redact: Vec<String>,
    pub drop: Vec<String>,
    pub priority: Option<Priority>,
    pub route_cloud: Option<bool>,
    pub cloud_topic_suffix: Option<String>,
    pub local_topic: Option<String>,
    pub alert: Option<(String, Severity)>,
    pub rate_limit: Option<(f64, u32)>,
    pub deadband: Option<(String, f64, Duration)>,
    pub audit: Option<String>,
}

impl Rule {
    /// Whether the rule applies to this device, kind and stream (the condition aside).
    pub(crate) fn selects(&self, device: &str, kind: &str, stream: Stream) -> bool {
        self.stream.is_none_or(|s| s == stream)
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind))
            && (self.devices.is_empty() || self.devices.iter().any(|g| g.matches(device)))
    }

    /// Whether applying the rule changes the body (so conditions after it need a fresh view).
    pub(crate) fn changes_body(&self) -> bool {
        !(self.rename.is_empty()
            && self.scale.is_empty()
            && self.convert.is_empty()
            && self.pseudonymise.is_empty()
            && self.redact.is_empty()
            && self.drop.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use time::macros::{datetime, offset};

    use super::*;

    #[test]
    fn globs_match_stars_and_question_marks() {
        let g = |p: &str, t: &str| Glob(p.to_owned()).matches(t);
        assert!(g("fridge-*", "fridge-01"));
        assert!(g("fridge-*", "fridge-"));
        assert!(!g("fridge-*", "freezer-01"));
        assert!(g("*-01", "fridge-01"));
        assert!(g("f*e-*1", "fridge-01"));
        assert!(g("cabinet-0?", "cabinet-07"));
        assert!(!g("cabinet-0?", "cabinet-107"));
        assert!(g("exact", "exact"));
        assert!(!g("exact", "exact2"));
        assert!(g("*", ""));
        assert!(g("a*b*c", "aXXbYYbZc"));
        assert!(!g("a*b*c", "aXXbYYbZ"));
    }

    #[test]
    fn opening_hours_respect_the_offset_and_may_span_midnight() {
        let day = OpeningHours {
            open: 8 * 60,
            close: 20 * 60,
            utc_offset: offset!(+01:00),
        };
        // 07:00 UTC is 08:00 at +01:00: just open.
        assert!(!day.after_hours(datetime!(2026-05-01 07:00 UTC)));
        assert!(day.after_hours(datetime!(2026-05-01 06:59 UTC)));
        // 19:00 UTC is 20:00 local: just closed.
        assert!(day.after_hours(datetime!(2026-05-01 19:00 UTC)));
        assert!(!day.after_hours(datetime!(2026-05-01 18:59 UTC)));
        // The offset of `now` itself does not matter, only the instant.
        assert!(!day.after_hours(datetime!(2026-05-01 12:00 -05:00)));
        assert!(day.after_hours(datetime!(2026-05-01 22:00 +00:00)));

        let night = OpeningHours {
            open: 22 * 60,
            close: 6 * 60,
            utc_offset: offset!(-05:00),
        };
        assert!(!night.after_hours(datetime!(2026-05-02 03:00 UTC))); // 22:00 local
        assert!(!night.after_hours(datetime!(2026-05-02 08:30 UTC))); // 03:30 local
        assert!(night.after_hours(datetime!(2026-05-02 11:00 UTC))); // 06:00 local
        assert!(night.after_hours(datetime!(2026-05-02 17:00 UTC))); // 12:00 local
    }

    #[test]
    fn conversions_give_the_expected_temperatures() {
        assert!((Conversion::FahrenheitToCelsius.apply(39.2) - 4.0).abs() < 1e-9);
        assert!((Conversion::CelsiusToFahrenheit.apply(-40.0) + 40.0).abs() < 1e-9);
        assert!((Conversion::KelvinToCelsius.apply(277.15) - 4.0).abs() < 1e-9);
    }
}
