//! The CA's CRL, published at `GET /crl` on the EST listener.
//!
//! The CRL is signed by one task, never by a request: at start, at every revocation
//! ([`Registry::revocation_changed`]), when a renewal's grace ends (the replaced certificate
//! joins the CRL), and when half of `[enroll].crl_validity` has passed, so a client always finds a
//! CRL whose nextUpdate is at least half a validity away. thisUpdate is the gateway's time (never
//! earlier than the time floor), nextUpdate thisUpdate + `crl_validity`, and the CRL number comes
//! from a counter in the store ([`Registry::next_crl_number`]), so it grows whatever the clock
//! does. Requests read the cached DER.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use rxgate_certs::{CertificateAuthority, CrlContent};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::registry::Registry;

/// After a failed signing, the next try.
const RETRY: Duration = Duration::from_secs(60);
/// The shortest wait between two scheduled CRLs.
const MIN_WAIT: Duration = Duration::from_secs(1);

/// The newest CRL's DER, shared by the publisher and the request handlers.
#[derive(Clone, Default)]
pub(crate) struct Published(Arc<RwLock<Option<Bytes>>>);

impl Published {
    /// The newest CRL, if one was signed.
    pub(crate) fn current(&self) -> Option<Bytes> {
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, der: Bytes) {
        match self.0.write() {
            Ok(mut guard) => *guard = Some(der),
            Err(poisoned) => *poisoned.into_inner() = Some(der),
        }
    }
}

/// Signs the CRL and keeps [`Published`] current.
#[derive(Clone)]
pub(crate) struct CrlPublisher {
    registry: Registry,
    ca: Arc<CertificateAuthority>,
    validity: Duration,
    published: Published,
}

impl CrlPublisher {
    pub(crate) fn new(
        registry: Registry,
        ca: Arc<CertificateAuthority>,
        validity: Duration,
    ) -> Self {
        CrlPublisher {
            registry,
            ca,
            validity,
            published: Published::default(),
        }
    }

    pub(crate) fn published(&self) -> Published {
        self.published.clone()
    }

    /// Signs a new CRL and publishes it; returns how long until the next one is due.
    pub(crate) fn publish(&self) -> Result<Duration> {
        let now = self.registry.clock().now();
        let entries = self.registry.crl_entries(now, self.validity)?;
        let number = self.registry.next_crl_number()?;
        let validity = time::Duration::try_from(self.validity).unwrap_or(time::Duration::DAY);
        let content = CrlContent {
            number,
            this_update: now,
            next_update: now + validity,
            revoked: entries.revoked,
        };
        let der = self.ca.issue_crl(&content)?;
        self.published.set(Bytes::from(der));
        tracing::info!(
            number,
            revoked = content.revoked.len(),
            next_update = %crate::clock::rfc3339(content.next_update),
            "CRL published."
        );
        let mut wait = self.validity / 2;
        if let Some(change) = entries.next_change {
            let until = Duration::try_from(change - now).unwrap_or(Duration::ZERO);
            wait = wait.min(until);
        }
        Ok(wait.max(MIN_WAIT))
    }

    /// Keeps the CRL current until `shutdown`; `wait` is what the first [`Self::publish`] said.
    pub(crate) async fn run(self, mut wait: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.registry.revocation_changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            let publisher = self.clone();
            wait = match tokio::task::spawn_blocking(move || publisher.publish()).await {
                Ok(Ok(wait)) => wait,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, retry_in_s = RETRY.as_secs(), "Cannot sign the CRL; the previous one stays published.");
                    RETRY
                }
                Err(e) => {
                    tracing::error!(error = %e, retry_in_s = RETRY.as_secs(), "The CRL task failed; the previous one stays published.");
                    RETRY
                }
            };
        }
    }
}
