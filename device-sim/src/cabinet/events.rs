//! Plausible dispensing-cabinet access events.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// What kind of events a cabinet produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scenario {
    /// Day-to-day use: mostly removals and returns, witnessed wastes, few overrides.
    #[default]
    Normal,
    /// Suspicious patterns for the access flags: overrides and wastes without a witness,
    /// access without a second factor.
    Suspicious,
}

/// Items a cabinet holds: (NDC, name, DEA schedule).
const ITEMS: &[(&str, &str, &str)] = &[
    ("0409-1890-01", "Morphine sulfate 4 mg/mL injection", "CII"),
    ("0409-2552-01", "Hydromorphone 2 mg/mL injection", "CII"),
    (
        "0641-6030-01",
        "Fentanyl citrate 50 mcg/mL injection",
        "CII",
    ),
    ("0406-0552-01", "Oxycodone 5 mg tablet", "CII"),
    ("0641-6044-01", "Lorazepam 2 mg/mL injection", "CIV"),
    ("0591-5620-01", "Tramadol 50 mg tablet", "CIV"),
    ("0143-9505-01", "Ketamine 50 mg/mL injection", "CIII"),
    ("0002-8215-01", "Insulin lispro 100 units/mL", "none"),
    ("0338-0049-04", "Sodium chloride 0.9% 1000 mL", "none"),
    ("0409-4888-02", "Ondansetron 2 mg/mL injection", "none"),
];
const USERS: &[&str] = &[
    "rn-ortiz",
    "rn-chen",
    "rn-okafor",
    "pharm-weiss",
    "rn-larsen",
    "tech-dubois",
];
const AUTH: &[&str] = &["biometric", "badge", "pin", "password"];

/// A small deterministic generator (xorshift64*): reproducible runs from a seed.
#[derive(Debug, Clone)]
pub struct EventGenerator {
    state: u64,
    scenario: Scenario,
}

impl EventGenerator {
    /// A generator seeded with `seed` (any value; 0 is replaced).
    pub fn new(seed: u64, scenario: Scenario) -> Self {
        EventGenerator {
            state: seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            scenario,
        }
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// The next event, stamped `now`.
    pub fn next(&mut self, now: OffsetDateTime) -> Value {
        let suspicious = self.scenario == Scenario::Suspicious;
        let roll = self.next_u64() % 100;
        let action = match roll {
            0..=54 => "remove",
            55..=69 => "return",
            70..=79 => "waste",
            80..=87 => "restock",
            88..=94 => "count",
            _ => "override",
        };
        let action = if suspicious && self.chance(40) {
            *self.pick(&["override", "waste"])
        } else {
            action
        };
        let (ndc, item, schedule) = *self.pick(ITEMS);
        let user = *self.pick(USERS);
        let mut witness = None;
        if matches!(action, "waste" | "override") && !(suspicious && self.chance(70)) {
            let other = *self.pick(USERS);
            if other != user {
                witness = Some(other);
            }
        }
        let auth = if suspicious && self.chance(50) {
            "password"
        } else {
            *self.pick(AUTH)
        };
        let patient = matches!(action, "remove" | "return" | "waste" | "override")
            .then(|| format!("MRN-{:07}", self.next_u64() % 10_000_000));
        let mut event = json!({
            "type": "access",
            "action": action,
            "user": user,
            "drawer": format!("{}{}", self.pick(&["A", "B", "C", "D"]), 1 + self.next_u64() % 6),
            "ndc": ndc,
            "item": item,
            "schedule": schedule,
            "quantity": 1 + self.next_u64() % 3,
            "auth": auth,
            "ts": now.format(&Rfc3339).unwrap_or_default(),
        });
        // Absent, not null: a policy rule asking whether an event has a witness should not
        // have to tell the two apart.
        if let Some(patient) = patient {
            event["patient_id"] = patient.into();
        }
        if let Some(witness) = witness {
            event["witness"] = witness.into();
        }
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_events() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let mut a = EventGenerator::new(7, Scenario::Normal);
        let mut b = EventGenerator::new(7, Scenario::Normal);
        for _ in 0..20 {
            assert_eq!(a.next(now), b.next(now));
        }
    }

    #[test]
    fn events_carry_every_contract_field() {
        let mut g = EventGenerator::new(1, Scenario::Normal);
        for _ in 0..200 {
            let e = g.next(OffsetDateTime::UNIX_EPOCH);
            assert_eq!(e["type"], "access");
            for field in [
                "action", "user", "drawer", "ndc", "item", "schedule", "quantity", "auth", "ts",
            ] {
                assert!(!e[field].is_null(), "{field} missing in {e}");
            }
            assert!(
                ["remove", "return", "waste", "restock", "count", "override"]
                    .contains(&e["action"].as_str().unwrap())
            );
        }
    }

    #[test]
    fn the_suspicious_scenario_produces_unwitnessed_overrides() {
        let mut g = EventGenerator::new(3, Scenario::Suspicious);
        let events: Vec<Value> = (0..500)
            .map(|_| g.next(OffsetDateTime::UNIX_EPOCH))
            .collect();
        assert!(
            events
                .iter()
                .any(|e| e["action"] == "override" && e.get("witness").is_none())
        );
    }

    #[test]
    fn absent_fields_are_left_out_rather_than_null() {
        let mut g = EventGenerator::new(5, Scenario::Suspicious);
        for _ in 0..200 {
            let e = g.next(OffsetDateTime::UNIX_EPOCH);
            let object = e.as_object().unwrap();
            assert!(object.values().all(|v| !v.is_null()), "{e}");
            let with_patient =
                ["remove", "return", "waste", "override"].contains(&e["action"].as_str().unwrap());
            assert_eq!(object.contains_key("patient_id"), with_patient, "{e}");
        }
    }
}
