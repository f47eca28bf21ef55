//! `/`: each cold-chain fridge as the gateway sees it now.

use std::sync::Arc;

use askama::Template;
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::{Chrome, failed, render, require, time_text};
use crate::coldchain::live::FridgeNow;
use crate::console::{App, ConnInfo, blocking, plain};
use crate::people::Action;

pub(crate) struct FridgeRow {
    pub device: String,
    pub temperature: String,
    pub range: String,
    pub state: String,
    pub age: String,
    pub class: &'static str,
    pub since_check: String,
    pub check: String,
    pub check_class: &'static str,
    pub calibration: String,
    pub calibration_class: &'static str,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    chrome: Chrome,
    fridges: Vec<FridgeRow>,
    open_alerts: usize,
}

/// How the overview shows `condition`.
pub(crate) fn condition_text(condition: &str) -> &'static str {
    match condition {
        "temperature_high" => "too warm",
        "temperature_low" => "too cold",
        "probe_fault" => "probe fault",
        "offline" => "sensor offline",
        "door_open" => "door open",
        "no_reading" => "no reading yet",
        "in_range" => "in range",
        _ => "unknown",
    }
}

pub(crate) fn row(fridge: &FridgeNow, now: time::OffsetDateTime) -> FridgeRow {
    let (check, check_class) = super::fridge::check_text(fridge);
    let (calibration, calibration_class) =
        super::fridge::calibration_text(fridge.calibration.as_ref(), now.date());
    FridgeRow {
        since_check: super::fridge::since_check_text(fridge),
        check,
        check_class,
        calibration,
        calibration_class,
        device: fridge.device.clone(),
        temperature: fridge
            .temperature
            .map_or_else(|| "—".to_owned(), |t| format!("{t:.1} °C")),
        range: format!("{:.1} to {:.1} °C", fridge.low, fridge.high),
        state: condition_text(&fridge.condition).to_owned(),
        age: fridge.reading_at.map_or_else(
            || "never".to_owned(),
            |at| {
                let secs = (now - at).whole_seconds().max(0);
                let ago = match secs {
                    0..=119 => format!("{secs} s ago"),
                    120..=7199 => format!("{} min ago", secs / 60),
                    _ => format!("{} h ago", secs / 3600),
                };
                format!("{ago} ({})", time_text(at))
            },
        ),
        class: if fridge.condition == "in_range" {
            "ok"
        } else {
            "alarm"
        },
    }
}

pub(crate) async fn page(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    let current = match app.current(&headers, conn.peer.ip()).await {
        Ok(c) => c,
        Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    // An inspector sees no live status: their start page is the audit trail.
    if let Some(user) = current.user()
        && !crate::people::may(&user.roles, Action::ViewStatus)
        && crate::people::may(&user.roles, Action::ViewAudit)
    {
        return current.finish(Redirect::to("/audit").into_response());
    }
    if let Err(answer) = require(&app, &current, Action::ViewStatus) {
        return answer;
    }
    let backend = app.backend.clone();
    let loaded = blocking(move || Ok((backend.fridges()?, backend.alerts(false)?.len()))).await;
    match loaded {
        Ok((fridges, open_alerts)) => {
            let now = app.now();
            render(
                &current,
                StatusCode::OK,
                &OverviewPage {
                    chrome: Chrome::new(&app, &current, "Fridges"),
                    fridges: fridges.iter().map(|f| row(f, now)).collect(),
                    open_alerts,
                },
            )
        }
        Err(e) => failed(&app, &current, &e),
    }
}
