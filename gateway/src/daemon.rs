//! `rxgate run`: builds every component from the config, runs them as tracked tasks, and drains
//! them on shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminServer};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::enroll::EnrollServer;
use crate::error::Result;
use crate::pki::GatewayPki;
use crate::registry::Registry;
use crate::store::Store;

/// Time components get to finish after shutdown is signalled.
pub const GRACE: Duration = Duration::from_secs(10);

/// A gateway whose listeners are bound and whose store is open: ready to run.
pub struct Gateway {
    admin: AdminServer,
    enroll: EnrollServer,
    registry: Registry,
    addresses: Vec<(String, SocketAddr)>,
}

impl Gateway {
    /// Opens the store, loads the PKI and binds every listener. Fails before anything runs if
    /// one of them cannot be set up.
    pub async fn build(config: &Config, clock: SharedClock) -> Result<Gateway> {
        let paths = config.paths();
        let store = open_store(&paths.store()).await?;
        let pki = GatewayPki::load(config, clock.as_ref())?;
        let registry = Registry::new(store, clock);
        let enroll = EnrollServer::build(config, registry.clone(), &pki).await?;
        let addresses = vec![("enroll".to_owned(), enroll.local_addr()?)];
        let context = admin::Context {
            registry: registry.clone(),
            site: config.gateway.site.clone(),
            default_token_ttl: config.enroll.token_ttl,
            listeners: addresses
                .iter()
                .map(|(n, a)| (n.clone(), a.to_string()))
                .collect(),
            running: true,
        };
        let admin = AdminServer::bind(&paths.admin_socket(), context).await?;
        Ok(Gateway {
            admin,
            enroll,
            registry,
            addresses,
        })
    }

    /// Bound listener addresses, by name.
    pub fn addresses(&self) -> &[(String, SocketAddr)] {
        &self.addresses
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Runs until `shutdown` fires, then waits up to [`GRACE`] for every task to end.
    pub async fn run(self, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        for (name, addr) in &self.addresses {
            tracing::info!(listener = %name, %addr, "Listening.");
        }
        tasks.spawn(self.enroll.run(shutdown.clone()));
        tasks.spawn(self.admin.run(shutdown.clone()));
        tasks.close();
        shutdown.cancelled().await;
        tracing::info!("Shutting down.");
        if tokio::time::timeout(GRACE, tasks.wait()).await.is_err() {
            tracing::warn!(grace = ?GRACE, "Some tasks did not stop in time.");
        }
    }
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
