//! The demo's live view: one line per message the cloud receives.

use serde_json::Value;

pub fn header() {
    println!(
        "{:<8}  {:<10}  {:<9}  {:>5}  what",
        "time", "device", "type", "seq"
    );
}

fn time_of(message: &Value) -> String {
    message["gateway_ts"]
        .as_str()
        .and_then(|ts| ts.get(11..19))
        .unwrap_or("--:--:--")
        .to_owned()
}

fn number(point: &Value) -> String {
    match &point["value"] {
        Value::Number(n) => {
            let unit = point["unit"].as_str().unwrap_or("");
            let n = n.as_f64().unwrap_or(0.0);
            format!("{n:.1}{}{unit}", if unit.is_empty() { "" } else { " " })
        }
        Value::Bool(b) => b.to_string(),
        _ => point["quality"].as_str().unwrap_or("?").to_owned(),
    }
}

/// What a message says, in a few words.
fn summary(message: &Value) -> String {
    match message["type"].as_str() {
        Some("telemetry") => {
            let points = &message["points"];
            let mut parts = Vec::new();
            for name in ["temperature_c", "setpoint_c", "door_open", "compressor_on"] {
                if !points[name].is_null() {
                    parts.push(format!("{name} {}", number(&points[name])));
                }
            }
            if parts.is_empty()
                && let Some(map) = points.as_object()
            {
                parts = map
                    .iter()
                    .take(3)
                    .map(|(k, v)| format!("{k} {}", number(v)))
                    .collect();
            }
            parts.join(", ")
        }
        Some("event") => {
            let e = &message["event"];
            format!(
                "{} {} x{} by {} ({})",
                e["action"].as_str().unwrap_or("?"),
                e["item"].as_str().unwrap_or("?"),
                e["quantity"],
                e["user"].as_str().unwrap_or("?"),
                e["schedule"].as_str().unwrap_or("?"),
            )
        }
        Some("status") => format!(
            "{} ({})",
            if message["online"] == true {
                "online"
            } else {
                "offline"
            },
            message["reason"].as_str().unwrap_or("")
        ),
        Some("alert") => {
            let a = &message["alert"];
            format!(
                "ALERT {} {} {} ({}){}",
                message["event"].as_str().unwrap_or("?"),
                a["kind"].as_str().unwrap_or("?"),
                a["severity"].as_str().unwrap_or("?"),
                a["state"].as_str().unwrap_or("?"),
                a["value"]
                    .as_f64()
                    .map(|v| format!(", {v:.1} °C"))
                    .unwrap_or_default()
            )
        }
        Some(other) => other.to_owned(),
        None => String::new(),
    }
}

/// The id of a cold-chain alert a `raised` message announces.
pub fn raised_alert(payload: &[u8]) -> Option<uuid::Uuid> {
    let message: Value = serde_json::from_slice(payload).ok()?;
    // The demo's pharmacist acts on the cold chain at once; access flags wait for the review a
    // pharmacist does later (they fold, so the cabinet's events keep adding to one alert each).
    if message["event"] != "raised" || message["alert"]["kind"] == "access_flag" {
        return None;
    }
    message["alert"]["id"].as_str()?.parse().ok()
}

/// A mail the sink received.
pub fn mail(to: &[String], subject: &str) {
    println!(
        "{:<8}  {:<10}  {:<9}  {:>5}  to {}: {subject}",
        "",
        "mail sink",
        "e-mail",
        "-",
        to.join(", ")
    );
}

/// Prints one line for a message; returns its type for the summary.
pub fn line(topic: &str, payload: &[u8]) -> String {
    let Ok(message) = serde_json::from_slice::<Value>(payload) else {
        println!("{topic}: {} bytes", payload.len());
        return "other".to_owned();
    };
    if topic.ends_with("/gateway/status") {
        println!(
            "{:<8}  {:<10}  {:<9}  {:>5}  {}",
            time_of(&message),
            "gateway",
            "status",
            "-",
            if message["online"] == true {
                "online"
            } else {
                "offline"
            }
        );
        return "gateway".to_owned();
    }
    let kind = message["type"].as_str().unwrap_or("other").to_owned();
    println!(
        "{:<8}  {:<10}  {:<9}  {:>5}  {}",
        time_of(&message),
        message["device"].as_str().unwrap_or("-"),
        kind,
        message["seq"].to_string(),
        summary(&message)
    );
    kind
}
