//! `rxgate run`: builds every component from the config, runs them as tracked tasks, and drains
//! them on shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminServer};
use crate::alerts::channels::{CloudChannel, LocalChannel};
use crate::alerts::notify::Worker;
use crate::alerts::{self, AlertsHandle, Channel, Monitor, NotifyQueue};
use crate::audit::{AuditKeeper, RefusalLog, Signer};
use crate::broker::DeviceBroker;
use crate::clock::SharedClock;
use crate::clock::floor::FloorKeeper;
use crate::config::Config;
use crate::console::ConsoleServer;
use crate::enroll::EnrollServer;
use crate::error::Result;
use crate::message::Ingest;
use crate::metrics::MetricsServer;
use crate::modbus::{ModbusPoller, ModbusTlsIdentity};
use crate::outbox::Outbox;
use crate::pipeline::Pipeline;
use crate::pki::GatewayPki;
use crate::policy::stage::{PolicyHandle, PolicyStage};
use crate::registry::Registry;
use crate::store::Store;
use crate::uplink::{self, Uplink};
use crate::watchdog::{NotifySettings, Progress, Watchdog};

/// Time components get to finish after shutdown is signalled.
pub const GRACE: Duration = Duration::from_secs(10);

/// Submissions waiting for the pipeline, at most; beyond it intakes wait (back-pressure).
const INGEST_QUEUE: usize = 1024;

/// A gateway whose listeners are bound and whose store is open: ready to run.
pub struct Gateway {
    admin: AdminServer,
    enroll: EnrollServer,
    /// `None` when `[console].enabled = false`.
    console: Option<ConsoleServer>,
    broker: DeviceBroker,
    modbus: ModbusPoller,
    pipeline: Pipeline,
    monitor: Monitor,
    notifiers: Vec<Notifier>,
    refusal_log: RefusalLog,
    audit_keeper: AuditKeeper,
    floor_keeper: FloorKeeper,
    policy: PolicyHandle,
    store: Store,
    clock: SharedClock,
    uplink: Option<Uplink>,
    /// `None` when `[metrics].enabled = false`.
    metrics: Option<MetricsServer>,
    registry: Registry,
    outbox: Outbox,
    ingest: Ingest,
    alerts: AlertsHandle,
    addresses: Vec<(String, SocketAddr)>,
    watchdog: Watchdog,
    /// Scheduled backups, when `[backup]` asks for them.
    backup_task: Option<crate::backup::BackupTask>,
    /// SIGHUP, caught from before the admin socket answers: `systemctl reload` right after a
    /// start must not kill the gateway (SIGHUP's default action).
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Gateway {
    /// Opens the store, loads the PKI and binds every listener. Fails before anything runs if
    /// one of them cannot be set up. Every component sees `clock` through the time floor
    /// (`clock::floor`): never earlier than the latest time the gateway knows has passed.
    pub async fn build(config: &Config, clock: SharedClock) -> Result<Gateway> {
        // /proc/self/io counts from the process's start, a moment before this.
        let started = std::time::Instant::now();
        let paths = config.paths();
        let watchdog = Watchdog::new(NotifySettings::from_env());
        let store = open_store(&paths.store()).await?;
        let floor =
            crate::clock::floor::open(&store, clock, crate::audit::newest_synced_entry(&store)?)?;
        let reading = crate::clock::Clock::reading(floor.as_ref());
        tracing::info!(
            floor = %crate::clock::rfc3339(floor.floor()),
            clock = %crate::clock::rfc3339(reading.clock),
            clock_synced = reading.synced,
            raised = reading.raised(),
            "Time floor loaded."
        );
        let floor_keeper = FloorKeeper::new(store.clone(), floor.clone());
        let clock: SharedClock = floor;
        let keys = config.pki().keyring()?;
        seal_plain_keys(config, &keys, &store, &clock)?;
        let pki = GatewayPki::load(&config.pki(), &keys, clock.as_ref())?;
        let registry = Registry::new(store.clone(), clock.clone());
        let outbox = Outbox::open(
            store.clone(),
            u64::from(config.outbox.max_mib.get()) * 1024 * 1024,
        )?
        .keep_ledger(&paths.seq_ledger())?;
        let (ingest, submissions) = Ingest::channel(INGEST_QUEUE, clock.clone());
        let pipeline = Pipeline::new(
            submissions,
            outbox.clone(),
            clock.clone(),
            &config.gateway.site,
            config.outbox.batch_max.get(),
            config.outbox.batch_delay,
        )
        .with_progress(watchdog.progress("pipeline"))
        .with_points_form(config.cloud.as_ref().map(|c| c.points).unwrap_or_default());
        let (refusals, refusal_log) = RefusalLog::new(store.clone(), clock.clone());
        let audit_keeper = AuditKeeper::new(
            store.clone(),
            outbox.clone(),
            clock.clone(),
            checkpoint_signer(config, &pki),
            &config.gateway.site,
            config.audit.clone(),
        );
        let queue = NotifyQueue::open(store.clone(), alerts::configured_channels(&config.alerts))?;
        let signals = alerts::notify::gpio::build(config.alerts.gpio.as_ref())?;
        let (monitor, alerts_handle, observations) = Monitor::build(
            &config.gateway.site,
            &config.devices,
            &config.alerts,
            store.clone(),
            clock.clone(),
            queue.clone(),
            signals,
        )?;
        let pipeline =
            pipeline.with_monitor(monitor.monitored().into_iter().collect(), observations);
        let enroll = EnrollServer::build(
            &config.gateway.site,
            &config.enroll,
            registry.clone(),
            &pki,
            refusals.clone(),
        )
        .await?;
        let mut broker = DeviceBroker::build(
            &config.gateway.site,
            &config.mqtt,
            registry.clone(),
            &pki,
            ingest.clone(),
            refusals.clone(),
        )
        .await?;
        let (flags, mut raised) = tokio::sync::mpsc::channel::<crate::audit::RefusalFlag>(16);
        let refusal_log = refusal_log.with_flags(flags);
        {
            // The refusal log's flags become alerts; it does not know the alert monitor.
            let alerts = alerts_handle.clone();
            tokio::spawn(async move {
                while let Some(flag) = raised.recv().await {
                    alerts
                        .flag(
                            &flag.device,
                            flag.flag,
                            crate::coldchain::Severity::Warning,
                            flag.detail,
                        )
                        .await;
                }
            });
        }
        let policy =
            PolicyHandle::load(config.gateway.policy_file.as_deref()).map_err(|errors| {
                crate::Error::Invalid(format!("the policy does not load:\n{errors}"))
            })?;
        let pipeline = pipeline.with_policy(
            PolicyStage::new(policy.clone(), crate::pki::pseudonym_key(&keys)?),
            refusals,
            alerts_handle.clone(),
            broker.take_policy_link(),
        );
        let modbus = ModbusPoller::build(
            &config.gateway.site,
            &config.devices,
            ingest.clone(),
            Some(ModbusTlsIdentity::from_pki(&pki, clock.clone())),
        )?
        .with_watchdog(watchdog.clone());
        let console_listener = match config.console.enabled {
            true => Some(crate::console::bind(&config.console).await?),
            false => None,
        };
        let console_url = console_listener
            .as_ref()
            .map(|listener| {
                listener.local_addr().map_err(crate::Error::io(
                    "cannot read the address of",
                    "the console listener",
                ))
            })
            .transpose()?
            .map(|addr| crate::console::base_url(&config.gateway.server_names, addr.port()));
        let notifiers = notifiers(
            config,
            &queue,
            &outbox,
            &mut broker,
            &alerts_handle,
            &clock,
            console_url.as_deref(),
        )?;
        let uplink_status = uplink::Status::default();
        let (uplink, pipeline) = match &config.cloud {
            Some(cloud) => {
                // Telemetry goes to the cloud as it comes, and is stored only if the cloud has
                // not acknowledged it when its batch is due.
                let (live, live_rx) = uplink::live::channel(cloud.max_inflight.get());
                let uplink = Uplink::build(
                    &config.gateway.site,
                    cloud,
                    outbox.clone(),
                    clock.clone(),
                    uplink_status.clone(),
                )?
                .with_progress(watchdog.progress("uplink"))
                .with_live(live_rx);
                (Some(uplink), pipeline.with_live(live))
            }
            None => {
                tracing::warn!("No [cloud] configured: messages wait in the outbox.");
                (None, pipeline)
            }
        };
        let mut context = admin::Context::with_sealer(config, registry.clone(), keys.sealer());
        let backup_task = crate::backup::BackupTask::build(&context.backups);
        let metrics = match config.metrics.enabled {
            true => Some(
                MetricsServer::build(
                    config.metrics.listen,
                    health_probe(&outbox, uplink_status, &clock, &context.backups),
                )
                .await?,
            ),
            false => None,
        };
        context.running = true;
        context.alerts = Some(alerts_handle.clone());
        context.policy = Some(policy.clone());
        context.fridges = Some(monitor.fridges());
        context.outbox = Some(outbox.clone());
        context.started = Some(started);
        let enrollment = crate::console::Enrollment {
            est_url: enroll.local_addr()?.map(|addr| {
                let host = config
                    .gateway
                    .server_names
                    .first()
                    .map_or("localhost", String::as_str);
                let host = match host.parse::<std::net::Ipv6Addr>() {
                    Ok(v6) => format!("[{v6}]"),
                    Err(_) => host.to_owned(),
                };
                format!("https://{host}:{}/.well-known/est", addr.port())
            }),
            ca_sha256: context
                .ca_der
                .as_deref()
                .map(rxgate_certs::fingerprint_sha256)
                .unwrap_or_default(),
            renewal_due: time::Duration::try_from(config.enroll.cert_validity / 3)
                .unwrap_or(time::Duration::DAY),
        };
        context.checks = Some(monitor.checks());
        let console = match console_listener {
            Some(listener) => Some(
                ConsoleServer::build(
                    &config.console,
                    listener,
                    pki.server_chain.clone(),
                    pki.server_key.clone_key(),
                    context.people.clone(),
                    std::sync::Arc::new(ConsoleBackend {
                        context: context.clone(),
                        enrollment,
                    }),
                    clock.clone(),
                    &config.gateway.site,
                )
                .await?,
            ),
            None => None,
        };
        if let Some(console) = &console {
            // Set-up links point to the port the console is bound to.
            context.people = context
                .people
                .clone()
                .with_console_port(console.local_addr()?.port());
        }
        // The open listeners; one that is off is not listed (`rxgate config check` names it).
        let addresses: Vec<(String, SocketAddr)> = [
            ("enroll", enroll.local_addr()?),
            ("mqtt", broker.local_addr()?),
            (
                "metrics",
                metrics
                    .as_ref()
                    .map(MetricsServer::local_addr)
                    .transpose()?,
            ),
            (
                "console",
                console
                    .as_ref()
                    .map(ConsoleServer::local_addr)
                    .transpose()?,
            ),
        ]
        .into_iter()
        .filter_map(|(name, addr)| Some((name.to_owned(), addr?)))
        .collect();
        context.listeners = addresses
            .iter()
            .map(|(n, a)| (n.clone(), a.to_string()))
            .collect();
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot catch SIGHUP; the policy reloads only when its file changes.");
                None
            }
        };
        let admin = AdminServer::bind(&paths.admin_socket(), context).await?;
        Ok(Gateway {
            admin,
            enroll,
            console,
            broker,
            modbus,
            pipeline,
            monitor,
            notifiers,
            refusal_log,
            audit_keeper,
            floor_keeper,
            policy: policy.clone(),
            store: store.clone(),
            clock: clock.clone(),
            uplink,
            metrics,
            registry,
            outbox,
            ingest,
            alerts: alerts_handle,
            addresses,
            watchdog,
            backup_task,
            hangup,
        })
    }

    /// Bound listener addresses, by name.
    pub fn addresses(&self) -> &[(String, SocketAddr)] {
        &self.addresses
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The alert monitor (for in-process tools like the demo).
    pub fn alerts(&self) -> &AlertsHandle {
        &self.alerts
    }

    /// Where intakes submit (for in-process tools like the demo).
    pub fn ingest(&self) -> &Ingest {
        &self.ingest
    }

    /// Runs until `shutdown` fires, then waits up to [`GRACE`] for every task to end.
    ///
    /// Intakes stop first (they feed the pipeline), then the pipeline drains what it holds,
    /// then the uplink and the logs.
    pub async fn run(self, shutdown: CancellationToken) {
        // Stopped in order: intakes (nothing new comes in), then the pipeline (what came in is
        // durable, readings reach the monitor), then everything downstream.
        let intakes = CancellationToken::new();
        let pipeline = CancellationToken::new();
        let core = CancellationToken::new();
        let intake_tasks = TaskTracker::new();
        let pipeline_task = TaskTracker::new();
        let core_tasks = TaskTracker::new();
        for (name, addr) in &self.addresses {
            tracing::info!(listener = %name, %addr, "Listening.");
        }
        intake_tasks.spawn(self.enroll.run(intakes.clone()));
        intake_tasks.spawn(self.broker.run(intakes.clone()));
        intake_tasks.spawn(self.modbus.run(intakes.clone()));
        intake_tasks.spawn(self.admin.run(intakes.clone()));
        if let Some(console) = self.console {
            intake_tasks.spawn(console.run(intakes.clone()));
        }
        intake_tasks.close();
        pipeline_task.spawn(self.pipeline.run(pipeline.clone()));
        pipeline_task.close();
        core_tasks.spawn(self.monitor.run(core.clone()));
        for notifier in self.notifiers {
            core_tasks.spawn(notifier.run(&self.watchdog, core.clone()));
        }
        core_tasks.spawn(self.refusal_log.run(core.clone()));
        core_tasks.spawn(self.audit_keeper.run(core.clone()));
        core_tasks.spawn(self.floor_keeper.run(core.clone()));
        core_tasks.spawn(crate::policy::stage::watch(
            self.policy,
            self.hangup,
            self.store,
            self.clock,
            core.clone(),
        ));
        if let Some(metrics) = self.metrics {
            core_tasks.spawn(metrics.run(core.clone()));
        }
        if let Some(uplink) = self.uplink {
            core_tasks.spawn(uplink.run(core.clone()));
        }
        // Every listener was bound by `build`: the service manager may start what depends on us.
        self.watchdog.ready("running");
        let watchdog = self.watchdog.clone();
        core_tasks.spawn(self.watchdog.run(core.clone()));
        if let Some(backups) = self.backup_task {
            core_tasks.spawn(backups.run(core.clone()));
        }
        core_tasks.close();

        shutdown.cancelled().await;
        tracing::info!("Shutting down.");
        watchdog.stopping();
        let deadline = tokio::time::Instant::now() + GRACE;
        intakes.cancel();
        if tokio::time::timeout_at(deadline, intake_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("Some connections did not close in time.");
        }
        pipeline.cancel();
        let _ = tokio::time::timeout_at(deadline, pipeline_task.wait()).await;
        // Nothing numbers telemetry any more: the streams go on without a gap at the next start.
        let outbox = self.outbox.clone();
        match tokio::task::spawn_blocking(move || outbox.release_reservations()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Cannot write back the reserved stream numbers; the next start skips past them.")
            }
            Err(e) => tracing::warn!(error = %e, "Stream number task failed."),
        }
        core.cancel();
        if tokio::time::timeout_at(deadline, core_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?GRACE, "Some tasks did not stop in time.");
        }
    }
}

/// The console's view of the gateway: the admin requests the CLI sends, run as the person
/// signed in to the console.
struct ConsoleBackend {
    context: admin::Context,
    enrollment: crate::console::Enrollment,
}

impl ConsoleBackend {
    fn ask(
        &self,
        request: admin::Request,
        by: &str,
        source: Option<std::net::IpAddr>,
    ) -> Result<admin::Reply> {
        let actor = crate::registry::Actor {
            name: by.to_owned(),
            source,
        };
        admin::execute(&self.context, request, &actor)
    }
}

impl crate::console::Backend for ConsoleBackend {
    fn alerts(&self, all: bool) -> Result<Vec<alerts::Alert>> {
        match self.ask(admin::Request::AlertList { all }, "console", None)? {
            admin::Reply::Alerts { alerts } => Ok(alerts),
            other => Err(unexpected(&other)),
        }
    }

    fn fridges(&self) -> Result<Vec<crate::coldchain::live::FridgeNow>> {
        match self.ask(admin::Request::Fridges, "console", None)? {
            admin::Reply::Fridges { fridges } => Ok(fridges),
            other => Err(unexpected(&other)),
        }
    }

    fn acknowledge(
        &self,
        id: &str,
        by: &str,
        source: std::net::IpAddr,
        note: &str,
    ) -> Result<alerts::Alert> {
        let request = admin::Request::AlertAck {
            id: id.to_owned(),
            note: note.to_owned(),
        };
        match self.ask(request, by, Some(source))? {
            admin::Reply::Alert { alert } => Ok(*alert),
            other => Err(unexpected(&other)),
        }
    }

    fn devices(&self) -> Result<Vec<crate::registry::DeviceRecord>> {
        match self.ask(admin::Request::DeviceList, "console", None)? {
            admin::Reply::Devices { devices } => Ok(devices),
            other => Err(unexpected(&other)),
        }
    }

    fn tokens(&self) -> Result<Vec<crate::registry::TokenInfo>> {
        match self.ask(admin::Request::TokenList, "console", None)? {
            admin::Reply::Tokens { tokens } => Ok(tokens),
            other => Err(unexpected(&other)),
        }
    }

    fn create_token(
        &self,
        device: &str,
        kind: &str,
        by: &str,
        source: std::net::IpAddr,
    ) -> Result<(crate::registry::TokenInfo, String)> {
        let request = admin::Request::TokenCreate {
            device: device.to_owned(),
            kind: kind.to_owned(),
            ttl_secs: None,
        };
        match self.ask(request, by, Some(source))? {
            admin::Reply::TokenCreated { token, secret } => Ok((token, secret)),
            other => Err(unexpected(&other)),
        }
    }

    fn revoke_device(
        &self,
        id: &str,
        reason: &str,
        by: &str,
        source: std::net::IpAddr,
    ) -> Result<crate::registry::DeviceRecord> {
        let request = admin::Request::DeviceRevoke {
            id: id.to_owned(),
            reason: reason.to_owned(),
        };
        match self.ask(request, by, Some(source))? {
            admin::Reply::Device { device } => Ok(device),
            other => Err(unexpected(&other)),
        }
    }

    fn enrollment(&self) -> Result<crate::console::Enrollment> {
        Ok(self.enrollment.clone())
    }

    fn audit_page(&self, query: &crate::console::AuditQuery) -> Result<crate::console::AuditPage> {
        let request = admin::Request::AuditExport {
            from: query.from.clone(),
            to: query.to.clone(),
            after: query.after,
            until: query.until,
            limit: Some(query.limit),
        };
        match self.ask(request, "console", None)? {
            admin::Reply::AuditPage {
                entries,
                next_after,
                until,
            } => Ok(crate::console::AuditPage {
                entries,
                next_after,
                until,
            }),
            other => Err(unexpected(&other)),
        }
    }

    fn audit_verify(&self) -> Result<(u64, Option<(u64, String)>)> {
        match self.ask(
            admin::Request::AuditVerify { checkpoint: None },
            "console",
            None,
        )? {
            admin::Reply::AuditVerified { entries, broken } => Ok((entries, broken)),
            other => Err(unexpected(&other)),
        }
    }

    fn report(
        &self,
        device: &str,
        from: time::Date,
        to: time::Date,
    ) -> Result<crate::report::ReportData> {
        let request = admin::Request::Report {
            device: device.to_owned(),
            from: from.to_string(),
            to: to.to_string(),
        };
        match self.ask(request, "console", None)? {
            admin::Reply::Report(data) => Ok(data),
            other => Err(unexpected(&other)),
        }
    }

    fn min_max_check(
        &self,
        device: &str,
        by: &str,
        source: std::net::IpAddr,
        note: &str,
        audit_seq: Option<u64>,
    ) -> Result<crate::coldchain::history::CheckRecord> {
        let request = admin::Request::MinMaxCheck {
            device: device.to_owned(),
            note: note.to_owned(),
            audit_seq,
        };
        match self.ask(request, by, Some(source))? {
            admin::Reply::MinMaxChecked { check } => Ok(check),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(reply: &admin::Reply) -> crate::Error {
    crate::Error::Invalid(format!(
        "the admin interface answered unexpectedly: {reply:?}"
    ))
}

/// A notification channel's worker, whatever its channel: started with its watchdog progress
/// and the shutdown token.
pub struct Notifier {
    channel: Channel,
    start: Box<dyn FnOnce(Progress, CancellationToken) -> BoxFuture + Send>,
}

type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Notifier {
    fn new<D: alerts::notify::Deliver>(worker: Worker<D>) -> Notifier {
        Notifier {
            channel: worker.channel(),
            start: Box::new(move |progress, shutdown| {
                Box::pin(worker.with_progress(progress).run(shutdown))
            }),
        }
    }

    fn run(self, watchdog: &Watchdog, shutdown: CancellationToken) -> BoxFuture {
        let progress = watchdog.progress(format!("alerts {}", self.channel.as_str()));
        (self.start)(progress, shutdown)
    }
}

/// The signer of audit checkpoints: the gateway's TLS server key. Without one (a key that is not
/// ECDSA P-256 PKCS#8), checkpoints are off and a warning says so.
fn checkpoint_signer(config: &Config, pki: &GatewayPki) -> Option<Signer> {
    let signer = match (
        &pki.server_key,
        std::fs::read_to_string(config.paths().server_cert()),
    ) {
        (rustls_pki_types::PrivateKeyDer::Pkcs8(key), Ok(cert)) => {
            Signer::new(&config.gateway.site, key.secret_pkcs8_der(), &cert)
        }
        _ => Err(crate::Error::Invalid(
            "the server key is not a PKCS#8 key".to_owned(),
        )),
    };
    match signer {
        Ok(signer) => Some(signer),
        Err(e) => {
            tracing::warn!(error = %e, "Audit checkpoints are off.");
            None
        }
    }
}

/// One worker per configured channel, each on its own so a dead SMTP server delays nothing else.
fn notifiers(
    config: &Config,
    queue: &NotifyQueue,
    outbox: &Outbox,
    broker: &mut DeviceBroker,
    handle: &AlertsHandle,
    clock: &SharedClock,
    console_url: Option<&str>,
) -> Result<Vec<Notifier>> {
    let delivered = || -> alerts::notify::OnDelivered {
        let handle = handle.clone();
        Box::new(move |id, channel| handle.delivered(id, channel))
    };
    let mut out = Vec::new();
    for channel in queue.channels() {
        let q = queue.clone();
        match channel {
            Channel::Cloud => out.push(Notifier::new(Worker::new(
                q,
                CloudChannel::new(outbox.clone()),
                delivered(),
            ))),
            Channel::Local => {
                if let Some(link) = broker.take_local_link() {
                    out.push(Notifier::new(Worker::new(
                        q,
                        LocalChannel::new(link),
                        delivered(),
                    )));
                }
            }
            Channel::Email => {
                if let Some(email) = &config.alerts.email {
                    let mut deliverer =
                        alerts::notify::email::EmailDeliverer::build(email, &config.gateway.site)?;
                    if let Some(url) = console_url {
                        deliverer = deliverer.with_console(url);
                    }
                    out.push(Notifier::new(Worker::new(q, deliverer, delivered())));
                }
            }
            Channel::Webhook => {
                if let Some(webhook) = &config.alerts.webhook {
                    let deliverer =
                        alerts::notify::webhook::WebhookDeliverer::build(webhook, clock.clone())?;
                    out.push(Notifier::new(Worker::new(q, deliverer, delivered())));
                }
            }
        }
    }
    Ok(out)
}

/// Seals what is still plain (keys in files, TOTP secrets in the store) when a key-encryption
/// key is at hand, with an audit entry; without one, warns that the keys are not sealed.
fn seal_plain_keys(
    config: &Config,
    keys: &crate::keys::Keyring,
    store: &Store,
    clock: &SharedClock,
) -> Result<()> {
    if !keys.sealing() {
        tracing::warn!(
            credential = %config.keys.credential,
            "No key-encryption key: the keys in data_dir are not sealed (see `rxgate doctor`)."
        );
        return Ok(());
    }
    crate::people::People::new(
        store.clone(),
        clock.clone(),
        &config.gateway.site,
        &config.gateway.server_names,
    )
    .with_sealer(keys.sealer())
    .seal_everything(keys, "rxgate")?;
    Ok(())
}

/// Opens the store, waiting a little if a CLI command run directly holds it right now.
async fn open_store(path: &std::path::Path) -> Result<Store> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(path) {
            Err(crate::Error::StoreLocked { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "Cannot listen for SIGTERM; only Ctrl-C will stop the gateway.");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `rxgate run`.
pub async fn run(config: Config, clock: SharedClock) -> Result<()> {
    let gateway = Gateway::build(&config, clock).await?;
    tracing::info!(site = %config.gateway.site, version = env!("CARGO_PKG_VERSION"), "rxgate started.");
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        trigger.cancel();
    });
    gateway.run(shutdown).await;
    tracing::info!("rxgate stopped.");
    Ok(())
}

/// What `/health` and `/metrics` read at each scrape: the outbox's depth and age, the uplink's
/// state and whether the clock is synchronised.
fn health_probe(
    outbox: &Outbox,
    uplink: crate::uplink::Status,
    clock: &SharedClock,
    backups: &crate::backup::Backups,
) -> crate::metrics::HealthProbe {
    let (outbox, clock, backups) = (outbox.clone(), clock.clone(), backups.clone());
    std::sync::Arc::new(move || {
        let depth = outbox.depth().unwrap_or_default();
        let now_ms = clock.now().unix_timestamp_nanos() / 1_000_000;
        let age = depth.oldest_ms.map_or(0.0, |oldest| {
            ((now_ms - i128::from(oldest)).max(0) as f64) / 1000.0
        });
        let state = uplink.get();
        crate::metrics::Health {
            uplink: state.as_str(),
            uplink_connected: state == crate::uplink::State::Connected,
            outbox_records: depth.records,
            outbox_bytes: depth.bytes,
            outbox_oldest_age_seconds: age,
            clock_synced: clock.synced(),
            backup: backups
                .status()
                .map(|s| s.health(clock.now()))
                .unwrap_or_default(),
        }
    })
}
