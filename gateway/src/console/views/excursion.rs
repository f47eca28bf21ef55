//! `/excursions/{device}/{id}/report`: the printable report of one excursion (`id`: its start,
//! Unix seconds) that an inspector takes away — when and how long, the peak and the mean kinetic
//! temperature, the allowed range, whether the probe was in calibration (with its certificate),
//! and what was done: the alert's acknowledgement, the electronic signature and the product
//! disposition. No script; the stylesheet's print rules drop the navigation.

use std::sync::Arc;

use askama::Template;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::fridge::{
    celsius, disposition_text, duration_text, in_calibration_text, kind_text, load, peak,
};
use super::{Chrome, error, render, require, time_text};
use crate::coldchain::Calibration;
use crate::console::{App, ConnInfo, plain};
use crate::people::Action;
use crate::report::SignatureSeen;

#[derive(Template)]
#[template(path = "excursion_report.html")]
struct ExcursionReport {
    chrome: Chrome,
    site: String,
    device: String,
    profile: String,
    range: String,
    kind: &'static str,
    severity: String,
    started: String,
    ended: String,
    duration: String,
    min: String,
    max: String,
    peak: String,
    mkt: String,
    in_calibration: &'static str,
    calibration: Option<Calibration>,
    alert: String,
    acknowledged: String,
    note: String,
    signature: Option<SignatureSeen>,
    roles: String,
    disposition: String,
    printed: String,
}

pub(crate) async fn report(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path((device, id)): Path<(String, i64)>,
    headers: HeaderMap,
) -> Response {
    let current = match app.current(&headers, conn.peer.ip()).await {
        Ok(c) => c,
        Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let Err(answer) = require(&app, &current, Action::ViewExcursions) {
        return answer;
    }
    let not_found = |app: &App| {
        error(
            app,
            &current,
            StatusCode::NOT_FOUND,
            "No such excursion",
            "There is no recorded excursion of this fridge starting then; pick one from its temperature log.",
        )
    };
    let Ok(started) = time::OffsetDateTime::from_unix_timestamp(id) else {
        return not_found(&app);
    };
    let day = started.date();
    let (_, data) = match load(&app, &current, &device, day, day).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    // The id is the start to the second; the record keeps its fraction.
    let Some(excursion) = data
        .excursions
        .iter()
        .find(|e| e.started.unix_timestamp() == id)
    else {
        return not_found(&app);
    };
    let review = data.review_of(excursion.started);
    let signature = review.and_then(|r| r.signature.clone()).map(|mut s| {
        if let Ok(at) = time::OffsetDateTime::parse(
            &s.signed_at,
            &time::format_description::well_known::Rfc3339,
        ) {
            s.signed_at = time_text(at);
        }
        s
    });
    render(
        &current,
        StatusCode::OK,
        &ExcursionReport {
            chrome: Chrome::new(&app, &current, &format!("Excursion report, {device}")),
            site: app.site.clone(),
            profile: data.profile.clone().unwrap_or_else(|| "—".to_owned()),
            range: match (data.low, data.high) {
                (Some(l), Some(h)) => format!("{l:.1} to {h:.1} °C"),
                _ => "—".to_owned(),
            },
            kind: kind_text(excursion.kind),
            severity: format!("{:?}", excursion.severity).to_lowercase(),
            started: time_text(excursion.started),
            ended: time_text(excursion.ended),
            duration: duration_text(excursion.duration_s),
            min: celsius(Some(excursion.min)),
            max: celsius(Some(excursion.max)),
            peak: celsius(Some(peak(excursion))),
            mkt: celsius(excursion.mkt),
            in_calibration: in_calibration_text(excursion.probe_in_calibration),
            calibration: data.calibration.clone(),
            alert: review.map_or_else(|| "none".to_owned(), |r| r.alert.to_string()),
            acknowledged: match review {
                Some(r) => match (&r.acknowledged_by, r.acknowledged_at) {
                    (Some(by), Some(at)) => format!("by {by} at {}", time_text(at)),
                    _ => format!("not yet (alert {})", r.alert_state),
                },
                None => "no alert was raised".to_owned(),
            },
            note: signature
                .as_ref()
                .and_then(|s| s.corrective_action.clone())
                .or_else(|| review.and_then(|r| r.note.clone()))
                .unwrap_or_else(|| "—".to_owned()),
            roles: signature
                .as_ref()
                .map(|s| s.roles.join(", "))
                .unwrap_or_default(),
            disposition: signature
                .as_ref()
                .and_then(|s| s.disposition.as_deref())
                .map_or_else(|| "not stated".to_owned(), disposition_text),
            signature,
            printed: time_text(app.now()),
            device,
        },
    )
}
