//! `/fridges/{id}`: one fridge's temperature log — the minimum and maximum since the last
//! min/max check, the daily minimum/maximum of the last [`LOG_DAYS`] days, the excursions (with
//! duration, peak, mean kinetic temperature, whether the probe was in calibration, and the
//! signature and product disposition of their alert), the checks recorded and the probe's
//! calibration; `/fridges/{id}/chart.svg` the chart of the same days (an image, so the CSP's
//! `img-src 'self'` admits it) and `/fridges/{id}/log.csv` the daily log to download.

use std::sync::Arc;

use askama::Template;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Chrome, error, failed, render, require, time_text};
use crate::coldchain::live::FridgeNow;
use crate::coldchain::{AlertKind, Calibration, CalibrationStatus, ExcursionRecord};
use crate::console::{App, ConnInfo, Current, blocking, permitted, plain};
use crate::error::Error;
use crate::people::Action;
use crate::report::{ExcursionReview, ReportData};

/// Days the log shows, today included.
pub(crate) const LOG_DAYS: i64 = 14;

pub(crate) fn celsius(t: Option<f64>) -> String {
    t.map_or_else(|| "—".to_owned(), |t| format!("{t:.1} °C"))
}

/// `1 h 05 min 20 s`.
pub(crate) fn duration_text(seconds: i64) -> String {
    let s = seconds.max(0);
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec} s"),
        (0, min, sec) => format!("{min} min {sec:02} s"),
        (h, min, sec) => format!("{h} h {min:02} min {sec:02} s"),
    }
}

/// The excursion's most extreme reading: the maximum of a warm one, the minimum of a cold one.
pub(crate) fn peak(e: &ExcursionRecord) -> f64 {
    if e.kind == AlertKind::TemperatureLow {
        e.min
    } else {
        e.max
    }
}

pub(crate) fn kind_text(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::TemperatureHigh => "too warm",
        AlertKind::TemperatureLow => "too cold",
        _ => "other",
    }
}

pub(crate) fn in_calibration_text(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "NO: probe out of calibration",
        None => "unknown (no calibration configured)",
    }
}

pub(crate) fn disposition_text(d: &str) -> String {
    match d {
        "released_after_manufacturer_consultation" => {
            "released after consulting the manufacturer".to_owned()
        }
        other => other.replace('_', " "),
    }
}

/// How the console shows a calibration on `today`, and the row's class.
pub(crate) fn calibration_text(
    c: Option<&Calibration>,
    today: time::Date,
) -> (String, &'static str) {
    match c {
        None => ("no certificate configured".to_owned(), "unknown"),
        Some(c) => match c.status(today) {
            CalibrationStatus::Valid => (format!("valid until {}", c.due_on), "ok"),
            CalibrationStatus::DueSoon => (
                format!(
                    "due on {} (in {} days)",
                    c.due_on,
                    (c.due_on - today).whole_days()
                ),
                "notice",
            ),
            CalibrationStatus::Overdue => (format!("OVERDUE since {}", c.due_on), "alarm"),
        },
    }
}

/// How the console shows the min/max check state of `fridge`, and its class.
pub(crate) fn check_text(fridge: &FridgeNow) -> (String, &'static str) {
    let last = fridge.last_check.map_or_else(
        || "never checked".to_owned(),
        |at| format!("checked {}", time_text(at)),
    );
    if fridge.check_missed {
        (format!("MISSED ({last})"), "alarm")
    } else {
        match fridge.check_due {
            Some(due) => (format!("{last}; next due by {}", time_text(due)), "ok"),
            None => (format!("{last}; no daily check expected"), "ok"),
        }
    }
}

/// The minimum and maximum since the last check, as the console shows them.
pub(crate) fn since_check_text(fridge: &FridgeNow) -> String {
    match fridge.since_check {
        Some(s) => format!(
            "{:.1} to {:.1} °C (since {})",
            s.min,
            s.max,
            time_text(s.since)
        ),
        None => "—".to_owned(),
    }
}

pub(crate) struct DayRow {
    pub date: String,
    pub min: String,
    pub max: String,
    pub mean: String,
    pub readings: u64,
    pub excursions: u32,
}

pub(crate) struct ExcursionRow {
    pub id: i64,
    pub kind: &'static str,
    pub started: String,
    pub duration: String,
    pub peak: String,
    pub mkt: String,
    pub in_calibration: &'static str,
    pub signed: String,
    pub disposition: String,
}

pub(crate) fn excursion_row(e: &ExcursionRecord, review: Option<&ExcursionReview>) -> ExcursionRow {
    let signature = review.and_then(|r| r.signature.as_ref());
    ExcursionRow {
        id: e.started.unix_timestamp(),
        kind: kind_text(e.kind),
        started: time_text(e.started),
        duration: duration_text(e.duration_s),
        peak: celsius(Some(peak(e))),
        mkt: celsius(e.mkt),
        in_calibration: in_calibration_text(e.probe_in_calibration),
        signed: match (signature, review) {
            (Some(s), _) => format!("{} ({}), {}", s.signer, s.meaning, s.signed_at),
            (None, Some(r)) => r.acknowledged_by.as_ref().map_or_else(
                || "not yet".to_owned(),
                |by| format!("acknowledged by {by}, unsigned"),
            ),
            (None, None) => "no alert".to_owned(),
        },
        disposition: signature
            .and_then(|s| s.disposition.as_deref())
            .map_or_else(|| "—".to_owned(), disposition_text),
    }
}

pub(crate) struct CheckRow {
    pub at: String,
    pub by: String,
    pub current: String,
    pub min: String,
    pub max: String,
    pub note: String,
    pub seq: String,
}

#[derive(Template)]
#[template(path = "fridge.html")]
struct FridgePage {
    chrome: Chrome,
    device: String,
    range: String,
    temperature: String,
    since_check: String,
    check: String,
    check_class: &'static str,
    may_check: bool,
    calibration: Option<Calibration>,
    calibration_state: String,
    calibration_class: &'static str,
    from: String,
    to: String,
    days: Vec<DayRow>,
    excursions: Vec<ExcursionRow>,
    checks: Vec<CheckRow>,
}

async fn current(app: &Arc<App>, headers: &HeaderMap, conn: ConnInfo) -> Result<Current, Response> {
    app.current(headers, conn.peer.ip())
        .await
        .map_err(|e| plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The log's span: the last [`LOG_DAYS`] days, today (UTC) included.
fn span(app: &App) -> (time::Date, time::Date) {
    let today = app.now().date();
    (today - time::Duration::days(LOG_DAYS - 1), today)
}

/// The fridge `device` and its report for `from..=to`; 404 for a device that is not a fridge.
pub(crate) async fn load(
    app: &Arc<App>,
    current: &Current,
    device: &str,
    from: time::Date,
    to: time::Date,
) -> Result<(FridgeNow, ReportData), Response> {
    let backend = app.backend.clone();
    let id = device.to_owned();
    let loaded = blocking(move || {
        let fridge = backend.fridges()?.into_iter().find(|f| f.device == id);
        match fridge {
            Some(fridge) => Ok(Some((fridge, backend.report(&id, from, to)?))),
            None => Ok(None),
        }
    })
    .await;
    match loaded {
        Ok(Some(found)) => Ok(found),
        Ok(None) | Err(Error::NotFound(_)) => Err(error(
            app,
            current,
            StatusCode::NOT_FOUND,
            "No such fridge",
            "No monitored fridge has this id; pick one from the list of fridges.",
        )),
        Err(e) => Err(failed(app, current, &e)),
    }
}

pub(crate) async fn log(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path(device): Path<String>,
    headers: HeaderMap,
) -> Response {
    let current = match current(&app, &headers, conn).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let user = match require(&app, &current, Action::ViewReports) {
        Ok(user) => user.clone(),
        Err(answer) => return answer,
    };
    let (from, to) = span(&app);
    let (fridge, report) = match load(&app, &current, &device, from, to).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let (check, check_class) = check_text(&fridge);
    let (calibration_state, calibration_class) =
        calibration_text(fridge.calibration.as_ref(), app.now().date());
    let mut days: Vec<DayRow> = report
        .days
        .iter()
        .map(|d| DayRow {
            date: d.date.to_string(),
            min: celsius(Some(d.min)),
            max: celsius(Some(d.max)),
            mean: celsius(d.mean()),
            readings: d.count,
            excursions: d.excursions,
        })
        .collect();
    days.reverse();
    let mut excursions: Vec<ExcursionRow> = report
        .excursions
        .iter()
        .map(|e| excursion_row(e, report.review_of(e.started)))
        .collect();
    excursions.reverse();
    let mut checks: Vec<CheckRow> = report
        .checks
        .iter()
        .map(|c| CheckRow {
            at: time_text(c.at),
            by: c.by.clone(),
            current: celsius(c.values.current),
            min: celsius(c.values.min),
            max: celsius(c.values.max),
            note: c.note.clone(),
            seq: c
                .audit_seq
                .map_or_else(|| "—".to_owned(), |s| s.to_string()),
        })
        .collect();
    checks.reverse();
    render(
        &current,
        StatusCode::OK,
        &FridgePage {
            chrome: Chrome::new(&app, &current, &format!("Temperature log of {device}")),
            range: format!("{:.1} to {:.1} °C", fridge.low, fridge.high),
            temperature: celsius(fridge.temperature),
            since_check: since_check_text(&fridge),
            check,
            check_class,
            may_check: permitted(&user, Action::RecordMinMaxCheck).is_ok(),
            calibration: fridge.calibration.clone(),
            calibration_state,
            calibration_class,
            from: from.to_string(),
            to: to.to_string(),
            days,
            excursions,
            checks,
            device,
        },
    )
}

pub(crate) async fn chart(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path(device): Path<String>,
    headers: HeaderMap,
) -> Response {
    let current = match current(&app, &headers, conn).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    if let Err(answer) = require(&app, &current, Action::ViewReports) {
        return answer;
    }
    let (from, to) = span(&app);
    match load(&app, &current, &device, from, to).await {
        Ok((_, report)) => current
            .finish(([(header::CONTENT_TYPE, "image/svg+xml")], report.svg()).into_response()),
        Err(answer) => answer,
    }
}

pub(crate) async fn csv(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    Path(device): Path<String>,
    headers: HeaderMap,
) -> Response {
    let current = match current(&app, &headers, conn).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    if let Err(answer) = require(&app, &current, Action::ViewReports) {
        return answer;
    }
    let (from, to) = span(&app);
    match load(&app, &current, &device, from, to).await {
        Ok((_, report)) => {
            let disposition =
                format!("attachment; filename=\"{device}-temperatures-{from}-to-{to}.csv\"");
            current.finish(
                (
                    [
                        (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                        (header::CONTENT_DISPOSITION, disposition),
                    ],
                    report.csv(),
                )
                    .into_response(),
            )
        }
        Err(answer) => answer,
    }
}

pub(crate) struct LogLink {
    pub device: String,
    pub since_check: String,
    pub check: String,
    pub check_class: &'static str,
    pub calibration: String,
    pub calibration_class: &'static str,
}

#[derive(Template)]
#[template(path = "fridges.html")]
struct FridgesPage {
    chrome: Chrome,
    fridges: Vec<LogLink>,
}

/// `/fridges`: every fridge's temperature log, for whoever reads reports (an inspector, who
/// does not see the overview).
pub(crate) async fn index(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    let current = match current(&app, &headers, conn).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    if let Err(answer) = require(&app, &current, Action::ViewReports) {
        return answer;
    }
    let backend = app.backend.clone();
    match blocking(move || backend.fridges()).await {
        Ok(fridges) => {
            let today = app.now().date();
            let fridges = fridges
                .iter()
                .map(|f| {
                    let (check, check_class) = check_text(f);
                    let (calibration, calibration_class) =
                        calibration_text(f.calibration.as_ref(), today);
                    LogLink {
                        device: f.device.clone(),
                        since_check: since_check_text(f),
                        check,
                        check_class,
                        calibration,
                        calibration_class,
                    }
                })
                .collect();
            render(
                &current,
                StatusCode::OK,
                &FridgesPage {
                    chrome: Chrome::new(&app, &current, "Temperature logs"),
                    fridges,
                },
            )
        }
        Err(e) => failed(&app, &current, &e),
    }
}
