//! `/audit`: the audit trail filtered by time, device, person and kind, with the chain's
//! verification state; `/audit/export.csv` and `/audit/export.json` download the filtered range.
//!
//! The time bounds go to the gateway's export (one page of at most [`PAGE`] entries at a time,
//! the most its export gives); device, person and kind are matched here, page by page, so
//! neither the page nor an export ever holds the whole trail. The console does not import
//! `admin` (which imports the config, which imports the console): it asks through `Backend`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use askama::Template;
use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{Chrome, error, failed, render, require, session, time_text};
use crate::audit::AuditBody;
use crate::console::{App, AuditQuery, Backend, ConnInfo, blocking};
use crate::people::Action;

/// Entries shown on the page at most: the newest that match.
pub const SHOWN: usize = 200;
/// Entries asked for per page of the gateway's export.
const PAGE: u32 = 1000;
/// Days shown when the form gives no start.
const DEFAULT_DAYS: i64 = 7;

/// The filters, as the form and the export links carry them.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Filters {
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub person: String,
    #[serde(default)]
    pub kind: String,
}

impl Filters {
    /// The start shown when none is given: the last [`DEFAULT_DAYS`] days.
    fn with_default_start(mut self, today: time::Date) -> Filters {
        if self.from.trim().is_empty() && self.to.trim().is_empty() {
            self.from = (today - time::Duration::days(DEFAULT_DAYS - 1)).to_string();
        }
        self
    }

    fn bound(text: &str) -> Option<String> {
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_owned())
    }

    /// Whether `entry` passes the device, person and kind filters. Device: the entry's device
    /// or its actor; person: its actor; kind: the kind or a dotted prefix of it (`device.`).
    pub(crate) fn matches(&self, entry: &AuditBody) -> bool {
        let (device, person, kind) = (self.device.trim(), self.person.trim(), self.kind.trim());
        if !device.is_empty() && entry.device.as_deref() != Some(device) && entry.actor != device {
            return false;
        }
        if !person.is_empty() && entry.actor != person {
            return false;
        }
        if !kind.is_empty() {
            let name = kind_name(entry);
            if !(name == kind || (kind.ends_with('.') && name.starts_with(kind))) {
                return false;
            }
        }
        true
    }

    /// The filters as a query string, for the export links.
    fn query(&self) -> String {
        let pairs = [
            ("from", &self.from),
            ("to", &self.to),
            ("device", &self.device),
            ("person", &self.person),
            ("kind", &self.kind),
        ];
        let given: Vec<(&str, &str)> = pairs
            .into_iter()
            .map(|(key, value)| (key, value.trim()))
            .filter(|(_, value)| !value.is_empty())
            .collect();
        serde_urlencoded::to_string(given).unwrap_or_default()
    }
}

pub(crate) fn kind_name(entry: &AuditBody) -> String {
    serde_json::to_value(entry.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Every entry in the filters' time range that passes them, oldest first, handed to `each`,
/// one export page (`page` entries) at a time. Returns how many matched.
pub(crate) fn scan(
    backend: &dyn Backend,
    filters: &Filters,
    page: u32,
    mut each: impl FnMut(AuditBody) -> crate::error::Result<()>,
) -> crate::error::Result<u64> {
    let mut query = AuditQuery {
        from: Filters::bound(&filters.from),
        to: Filters::bound(&filters.to),
        after: None,
        until: None,
        limit: page,
    };
    let mut matched = 0u64;
    loop {
        let page = backend.audit_page(&query)?;
        for entry in page.entries {
            if filters.matches(&entry) {
                matched += 1;
                each(entry)?;
            }
        }
        match page.next_after {
            Some(next) => {
                query.after = Some(next);
                query.until = Some(page.until);
            }
            None => return Ok(matched),
        }
    }
}

pub(crate) struct EntryRow {
    pub seq: u64,
    pub ts: String,
    pub kind: String,
    pub actor: String,
    pub device: String,
    pub source: String,
    pub detail: String,
}

fn entry_row(entry: &AuditBody) -> EntryRow {
    EntryRow {
        seq: entry.seq,
        ts: entry.ts.replace('T', " ").replace('Z', " UTC"),
        kind: kind_name(entry),
        actor: entry.actor.clone(),
        device: entry.device.clone().unwrap_or_default(),
        source: entry.source.clone().unwrap_or_default(),
        detail: if entry.detail.is_null() {
            String::new()
        } else {
            entry.detail.to_string()
        },
    }
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    filters: Filters,
    entries: Vec<EntryRow>,
    matched: u64,
    shown: usize,
    intact: bool,
    verification: String,
    export_query: String,
}

pub(crate) async fn page(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Query(filters): Query<Filters>,
) -> Response {
    let current = match session(&app, &headers, conn).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    if let Err(answer) = require(&app, &current, Action::ViewAudit) {
        return answer;
    }
    let filters = filters.with_default_start(app.now().date());
    let (backend, scanned) = (app.backend.clone(), filters.clone());
    let loaded = blocking(move || {
        let mut newest = VecDeque::with_capacity(SHOWN);
        let matched = scan(backend.as_ref(), &scanned, PAGE, |entry| {
            if newest.len() == SHOWN {
                newest.pop_front();
            }
            newest.push_back(entry);
            Ok(())
        })?;
        Ok((newest, matched, backend.audit_verify()?))
    })
    .await;
    let (newest, matched, (entries, broken)) = match loaded {
        Ok(loaded) => loaded,
        Err(e @ crate::error::Error::Invalid(_)) => {
            return error(
                &app,
                &current,
                StatusCode::BAD_REQUEST,
                "Filter not understood",
                e.to_string(),
            );
        }
        Err(e) => return failed(&app, &current, &e),
    };
    let (intact, verification) = match broken {
        None => (
            true,
            format!(
                "Intact: all {entries} entries chain from the first, checked at {}.",
                time_text(app.now())
            ),
        ),
        Some((seq, why)) => (
            false,
            format!("Broken at entry {seq}: {why}. Entries after it cannot be trusted."),
        ),
    };
    let rows: Vec<EntryRow> = newest.iter().rev().map(entry_row).collect();
    render(
        &current,
        StatusCode::OK,
        &AuditPage {
            chrome: Chrome::new(&app, &current, "Audit trail"),
            export_query: filters.query(),
            shown: rows.len(),
            filters,
            entries: rows,
            matched,
            intact,
            verification,
        },
    )
}

/// The export's formats.
#[derive(Debug, Clone, Copy)]
enum Format {
    Csv,
    Json,
}

const CSV_HEADER: [&str; 9] = [
    "seq",
    "ts",
    "kind",
    "actor",
    "device",
    "source",
    "clock_synced",
    "prev",
    "detail",
];

fn csv_line(entry: &AuditBody) -> crate::error::Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let row = entry_row(entry);
    writer
        .write_record([
            entry.seq.to_string(),
            entry.ts.clone(),
            row.kind,
            row.actor,
            row.device,
            row.source,
            entry.clock_synced.to_string(),
            entry.prev.clone(),
            row.detail,
        ])
        .map_err(|e| crate::error::Error::Invalid(format!("CSV: {e}")))?;
    writer
        .into_inner()
        .map_err(|e| crate::error::Error::Invalid(format!("CSV: {e}")))
}

async fn export(
    app: Arc<App>,
    current: super::Current,
    filters: Filters,
    format: Format,
) -> Response {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let backend = app.backend.clone();
    let scanned = filters.clone();
    // Entries go out as they are read, so an export of two years holds one page at a time.
    tokio::task::spawn_blocking(move || {
        let mut chunk: Vec<u8> = Vec::with_capacity(64 * 1024);
        match format {
            Format::Csv => {
                chunk.extend_from_slice(format!("{}\n", CSV_HEADER.join(",")).as_bytes())
            }
            Format::Json => chunk.push(b'['),
        }
        let mut first = true;
        let result = scan(backend.as_ref(), &scanned, PAGE, |entry| {
            match format {
                Format::Csv => chunk.extend(csv_line(&entry)?),
                Format::Json => {
                    if !first {
                        chunk.push(b',');
                    }
                    chunk.push(b'\n');
                    serde_json::to_writer(&mut chunk, &entry)
                        .map_err(|e| crate::error::Error::Invalid(format!("JSON: {e}")))?;
                }
            }
            first = false;
            if chunk.len() >= 60 * 1024 {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(64 * 1024));
                tx.blocking_send(Bytes::from(full)).map_err(|_| {
                    crate::error::Error::Invalid("the download was abandoned".to_owned())
                })?;
            }
            Ok(())
        });
        match result {
            Ok(_) => {
                if let Format::Json = format {
                    chunk.extend_from_slice(b"\n]\n");
                }
                let _ = tx.blocking_send(Bytes::from(chunk));
            }
            // The download ends short, and says why at its end; the log says it too.
            Err(e) => {
                tracing::warn!(error = %e, "An audit export from the console ended early.");
                let _ = tx.blocking_send(Bytes::from(format!("\nexport failed: {e}\n")));
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|chunk| chunk.map(Ok::<_, Infallible>))
    });
    let (content_type, extension) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        Format::Json => ("application/json", "json"),
    };
    let name = format!(
        "attachment; filename=\"rxgate-{}-audit-{}.{extension}\"",
        app.site,
        app.now().date()
    );
    let response = (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_DISPOSITION, name),
        ],
        Body::from_stream(stream),
    )
        .into_response();
    current.finish(response)
}

async fn export_as(
    app: Arc<App>,
    conn: ConnInfo,
    headers: HeaderMap,
    filters: Filters,
    format: Format,
) -> Response {
    let current = match session(&app, &headers, conn).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    if let Err(answer) = require(&app, &current, Action::ViewAudit) {
        return answer;
    }
    let filters = filters.with_default_start(app.now().date());
    if let Some(user) = current.user() {
        tracing::info!(user = %user.name, query = %filters.query(), "Audit export downloaded from the console.");
    }
    export(app, current, filters, format).await
}

pub(crate) async fn export_csv(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Query(filters): Query<Filters>,
) -> Response {
    export_as(app, conn, headers, filters, Format::Csv).await
}

pub(crate) async fn export_json(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Query(filters): Query<Filters>,
) -> Response {
    export_as(app, conn, headers, filters, Format::Json).await
}
