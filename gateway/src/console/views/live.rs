//! `/events`: live updates of the fridges overview by server-sent events, which
//! `/assets/live.js` applies to the table (the page works without it; it then shows the state at
//! load time).
//!
//! Every [`TICK`] the stream sends one `fridges` event: each fridge's row as the overview renders
//! it, and the number of open alerts. A stream is not activity: it ends when its session ends
//! (idle, absolute limit, sign-out), checked each tick without marking the session used, and at
//! most [`MAX_STREAMS`] run at once (more get 503), so open tabs cannot hold every console
//! connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::overview::row;
use super::{require, session};
use crate::console::{App, ConnInfo, blocking, plain};
use crate::people::Action;

/// Time between two updates.
pub const TICK: Duration = Duration::from_secs(5);
/// Live streams at once, for the whole console.
pub const MAX_STREAMS: usize = 16;

/// A stream's place among [`MAX_STREAMS`] (counted in `App::live_streams`), given back when
/// the stream ends.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(streams: &Arc<AtomicUsize>) -> Option<Slot> {
        streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_STREAMS).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(streams.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Serialize)]
struct FridgeUpdate {
    device: String,
    temperature: String,
    state: String,
    age: String,
    class: &'static str,
}

#[derive(Serialize)]
struct Update {
    fridges: Vec<FridgeUpdate>,
    open_alerts: usize,
}

/// One `fridges` event, as the stream sends it.
async fn event(app: &Arc<App>) -> crate::error::Result<Bytes> {
    let backend = app.backend.clone();
    let (fridges, open_alerts) =
        blocking(move || Ok((backend.fridges()?, backend.alerts(false)?.len()))).await?;
    let now = app.now();
    let update = Update {
        fridges: fridges
            .iter()
            .map(|f| {
                let r = row(f, now);
                FridgeUpdate {
                    device: r.device,
                    temperature: r.temperature,
                    state: r.state,
                    age: r.age,
                    class: r.class,
                }
            })
            .collect(),
        open_alerts,
    };
    let json = serde_json::to_string(&update)
        .map_err(|e| crate::error::Error::Invalid(format!("a live update: {e}")))?;
    Ok(Bytes::from(format!("event: fridges\ndata: {json}\n\n")))
}

pub(crate) async fn events(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    let current = match session(&app, &headers, conn).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    if let Err(answer) = require(&app, &current, Action::ViewStatus) {
        return answer;
    }
    let Some(slot) = Slot::take(&app.live_streams) else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many live views are open; the page still works, reload it for the latest.\n",
        );
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let id = current.id.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !app.sessions.is_live(&id, app.now()) {
                break;
            }
            let chunk = match event(&app).await {
                Ok(chunk) => chunk,
                Err(e) => {
                    tracing::warn!(error = %e, "A live console update failed.");
                    Bytes::from_static(b": update failed\n\n")
                }
            };
            // The browser went away: the stream ends with its connection.
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|chunk| chunk.map(Ok::<_, Infallible>))
    });
    let mut response = Body::from_stream(stream).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    current.finish(response)
}
