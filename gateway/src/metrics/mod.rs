//! Metrics: every name and its help text live here; the rest of the code calls the functions.
//! Served as Prometheus text on `[metrics].listen` at `/metrics`, next to `/health`.
//!
//! Labels are low-cardinality by design: reasons and sources, never device ids.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};

const MESSAGES_IN: &str = "rxgate_messages_in_total";
const MESSAGES_OUT: &str = "rxgate_messages_out_total";
const SENT_BEFORE_STORED: &str = "rxgate_messages_sent_before_stored_total";
const REFUSALS: &str = "rxgate_refusals_total";
const DROPPED: &str = "rxgate_messages_dropped_total";
const OUTBOX_RECORDS: &str = "rxgate_outbox_depth";
const OUTBOX_BYTES: &str = "rxgate_outbox_bytes";
const OUTBOX_AGE: &str = "rxgate_outbox_oldest_age_seconds";
const OUTBOX_DISK_FULL: &str = "rxgate_outbox_disk_full";
const OUTBOX_REFUSALS: &str = "rxgate_outbox_refusals_total";
const READINGS_NOT_STORED: &str = "rxgate_readings_not_stored_total";
const WRITE_BYTES: &str = "rxgate_process_write_bytes";
const DEVICES_ONLINE: &str = "rxgate_devices_online";
const UPLINK_CONNECTED: &str = "rxgate_uplink_connected";
const UPLINK_DISCONNECTS: &str = "rxgate_uplink_disconnects_total";
const BACKUP_AGE: &str = "rxgate_backup_age_seconds";
const BACKUP_LAST_SUCCESS: &str = "rxgate_backup_last_success_timestamp_seconds";
const BACKUP_LAST_FAILURE: &str = "rxgate_backup_last_failure_timestamp_seconds";
const BACKUPS: &str = "rxgate_backups_total";

fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if a recorder is already installed (tests starting several gateways in
        // one process): then that one keeps counting.
        let _ = metrics::set_global_recorder(recorder);
        describe_counter!(
            MESSAGES_IN,
            "Messages accepted from devices, by source (mqtt, modbus)."
        );
        describe_counter!(MESSAGES_OUT, "Messages acknowledged by the cloud broker.");
        describe_counter!(
            SENT_BEFORE_STORED,
            "Messages the cloud broker acknowledged before their batch was due, and so never written to disk."
        );
        describe_counter!(
            REFUSALS,
            "Connections, messages and requests refused, by reason."
        );
        describe_counter!(
            DROPPED,
            "Accepted messages the policy left nothing of for the cloud, by reason."
        );
        describe_gauge!(
            OUTBOX_RECORDS,
            "Messages waiting in the outbox for the cloud."
        );
        describe_gauge!(OUTBOX_BYTES, Unit::Bytes, "Bytes the outbox holds.");
        describe_gauge!(
            OUTBOX_AGE,
            Unit::Seconds,
            "Age of the oldest message in the outbox."
        );
        describe_gauge!(
            OUTBOX_DISK_FULL,
            "1 while the file system holding data_dir is full and new records are refused."
        );
        describe_counter!(
            OUTBOX_REFUSALS,
            "Records the outbox refused, by reason (full: max_mib reached; disk_full: no room on the file system; store: another store failure)."
        );
        describe_counter!(
            READINGS_NOT_STORED,
            "Modbus readings and status changes the gateway could not store, by reason."
        );
        describe_gauge!(
            WRITE_BYTES,
            Unit::Bytes,
            "Bytes this process has caused to be written to storage since it started (/proc/self/io write_bytes)."
        );
        describe_gauge!(
            DEVICES_ONLINE,
            "Devices currently connected (MQTT) or answering (Modbus)."
        );
        describe_gauge!(UPLINK_CONNECTED, "1 while the cloud connection is up.");
        describe_counter!(UPLINK_DISCONNECTS, "Cloud connections lost.");
        describe_gauge!(
            BACKUP_AGE,
            Unit::Seconds,
            "Age of the newest successful backup (absent: none yet)."
        );
        describe_gauge!(
            BACKUP_LAST_SUCCESS,
            Unit::Seconds,
            "Unix time of the last successful backup."
        );
        describe_gauge!(
            BACKUP_LAST_FAILURE,
            Unit::Seconds,
            "Unix time of the last failed backup."
        );
        describe_counter!(BACKUPS, "Backups attempted, by result (ok, failed).");
        handle
    })
}

/// A message accepted from a device.
pub fn message_in(source: &'static str) {
    counter!(MESSAGES_IN, "source" => source).increment(1);
}

/// The cloud acknowledged a message.
pub fn uplink_sent() {
    counter!(MESSAGES_OUT).increment(1);
}

/// The cloud acknowledged `count` messages sent before they were stored, in time for their
/// batch: they were not written.
pub fn sent_before_stored(count: u64) {
    counter!(SENT_BEFORE_STORED).increment(count);
}

/// Something was refused; `reason` is a short stable word (`topic_denied`, `bad_payload`, ...).
pub fn refused(reason: &'static str) {
    counter!(REFUSALS, "reason" => reason).increment(1);
}

/// An accepted message was not forwarded: the policy left nothing of it for the cloud.
pub fn dropped(reason: &'static str) {
    counter!(DROPPED, "reason" => reason).increment(1);
}

/// Whether the file system holding data_dir is full.
pub fn outbox_disk_full(full: bool) {
    gauge!(OUTBOX_DISK_FULL).set(if full { 1.0 } else { 0.0 });
}

/// Records the outbox refused; `reason` is `full`, `disk_full` or `store`.
pub fn outbox_refused(reason: &'static str, records: u64) {
    counter!(OUTBOX_REFUSALS, "reason" => reason).increment(records);
}

/// A Modbus reading or status change that could not be stored.
pub fn reading_not_stored(reason: &'static str) {
    counter!(READINGS_NOT_STORED, "reason" => reason).increment(1);
}

/// Bytes written by this process so far (the daemon samples its own I/O counters).
pub fn process_write_bytes(bytes: u64) {
    gauge!(WRITE_BYTES).set(bytes as f64);
}

pub fn device_online(delta: f64) {
    gauge!(DEVICES_ONLINE).increment(delta);
}

pub fn uplink_connected(connected: bool) {
    gauge!(UPLINK_CONNECTED).set(if connected { 1.0 } else { 0.0 });
}

pub fn uplink_disconnect() {
    counter!(UPLINK_DISCONNECTS).increment(1);
}

/// A backup was attempted.
pub fn backup_done(ok: bool) {
    counter!(BACKUPS, "result" => if ok { "ok" } else { "failed" }).increment(1);
}

/// `[metrics]`
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Whether the `/metrics` and `/health` endpoint listens at all.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Address of the plain-HTTP endpoint serving `/metrics` (Prometheus) and `/health`, which
    /// has no authentication. Loopback by default; any other address is refused unless
    /// `allow_remote` is set.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Serve the endpoint on a non-loopback `listen` address (for a scraper on the LAN, behind
    /// a firewall you trust). `rxgate config check` then warns that it is unauthenticated.
    #[serde(default)]
    pub allow_remote: bool,
}

fn default_enabled() -> bool {
    true
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9880))
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: default_enabled(),
            listen: default_listen(),
            allow_remote: false,
        }
    }
}

/// Connections the endpoint serves at once; more are closed at once (a scraper needs one).
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client has to send its request headers, and to be done with its connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// What the gateway's components publish for `/metrics` and `/health`, read at each scrape: the
/// daemon builds it from the outbox, the uplink and the clock, so this module imports none of
/// them.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// The uplink's state (`connected`, `backoff`, ...).
    pub uplink: &'static str,
    pub uplink_connected: bool,
    pub outbox_records: u64,
    pub outbox_bytes: u64,
    pub outbox_oldest_age_seconds: f64,
    pub clock_synced: bool,
    pub backup: BackupHealth,
}

/// The backups as `/health` and `/metrics` show them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackupHealth {
    /// Age of the newest successful backup; `None`: none yet.
    pub newest_age_seconds: Option<f64>,
    pub last_success_unix: Option<i64>,
    pub last_failure_unix: Option<i64>,
    /// Why the last backup failed, when no backup succeeded since.
    pub last_error: Option<String>,
}

/// Reads the gateway's [`Health`]; may block briefly (it is called off the async workers).
pub type HealthProbe = Arc<dyn Fn() -> Health + Send + Sync>;

/// The metrics and health endpoint, bound.
pub struct MetricsServer {
    listener: TcpListener,
    router: Router,
}

impl MetricsServer {
    pub async fn build(listen: SocketAddr, probe: HealthProbe) -> Result<Self> {
        handle();
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| Error::Io {
                action: "cannot listen for metrics on",
                path: listen.to_string().into(),
                source,
            })?;
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route("/health", get(health))
            .with_state(probe);
        Ok(MetricsServer { listener, router })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(|source| Error::Io {
            action: "cannot read the address of",
            path: "the metrics listener".into(),
            source,
        })
    }

    /// Serves until `shutdown`. At most [`MAX_CONNECTIONS`] at once (a connection over the cap
    /// is closed as soon as it is accepted, so idle peers cannot pile up file descriptors the
    /// device listeners need); headers must arrive within 5 s, one request per connection,
    /// and no connection lives longer than 30 s.
    pub async fn run(self, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let tasks = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "Metrics endpoint cannot accept.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                refused("metrics_connections");
                drop(stream);
                continue;
            };
            let service = TowerToHyperService::new(self.router.clone());
            tasks.spawn(async move {
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false);
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "Metrics connection error."),
                    Err(_) => tracing::debug!(%peer, "Metrics connection closed: too slow."),
                }
                drop(slot);
            });
        }
        tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    }
}

async fn probe(probe: &HealthProbe) -> Option<Health> {
    let probe = probe.clone();
    tokio::task::spawn_blocking(move || probe()).await.ok()
}

async fn metrics(State(health): State<HealthProbe>) -> Response {
    if let Some(health) = probe(&health).await {
        gauge!(OUTBOX_RECORDS).set(health.outbox_records as f64);
        gauge!(OUTBOX_BYTES).set(health.outbox_bytes as f64);
        gauge!(OUTBOX_AGE).set(health.outbox_oldest_age_seconds);
        uplink_connected(health.uplink_connected);
        let backup = &health.backup;
        if let Some(age) = backup.newest_age_seconds {
            gauge!(BACKUP_AGE).set(age);
        }
        if let Some(at) = backup.last_success_unix {
            gauge!(BACKUP_LAST_SUCCESS).set(at as f64);
        }
        if let Some(at) = backup.last_failure_unix {
            gauge!(BACKUP_LAST_FAILURE).set(at as f64);
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle().render(),
    )
        .into_response()
}

async fn health(State(health): State<HealthProbe>) -> Response {
    let Some(health) = probe(&health).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the health probe failed").into_response();
    };
    axum::Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uplink": health.uplink,
        "outbox_depth": health.outbox_records,
        "outbox_oldest_age_seconds": health.outbox_oldest_age_seconds,
        "clock_synced": health.clock_synced,
        "backup": {
            "newest_age_seconds": health.backup.newest_age_seconds,
            "last_success_unix": health.backup.last_success_unix,
            "last_failure_unix": health.backup.last_failure_unix,
            "last_error": health.backup.last_error,
        },
    }))
    .into_response()
}

const GPIO_OUTPUT: &str = "rxgate_gpio_output";

/// The GPIO outputs as they are now set: `rxgate_gpio_output{output="buzzer|relay|led"}` is 1
/// while the output is on.
pub fn gpio_outputs(outputs: impl IntoIterator<Item = (&'static str, bool)>) {
    describe_gauge!(
        GPIO_OUTPUT,
        "1 while the alarm output (buzzer, relay, led) is on."
    );
    for (output, on) in outputs {
        gauge!(GPIO_OUTPUT, "output" => output).set(if on { 1.0 } else { 0.0 });
    }
}
