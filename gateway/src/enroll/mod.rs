//! Device enrollment over EST (RFC 7030), HTTPS on `[enroll].listen`.
//!
//! - `GET  /.well-known/est/cacerts`: the CA chain, base64 DER PKCS#7 certs-only.
//! - `POST /.well-known/est/simpleenroll`: HTTP Basic (user = device id, password = one-time
//!   token), body base64 DER PKCS#10; answers the new certificate as base64 PKCS#7 certs-only.
//! - `POST /.well-known/est/simplereenroll`: authenticated by the device's current certificate
//!   (TLS client certificate, optional on this listener), same body and answer.
//! - `GET  /crl`: the CA's CRL, DER (`application/pkix-crl`), no authentication; the URI every
//!   certificate the CA issues names as its CRL distribution point ([`crate::pki::crl_uri`]).
//!   Signed by a task of its own, never by a request ([`crl`]).
//!
//! Bad input is answered with a plain-text reason and the right status (400, 401, 403, 413, 429)
//! and never reaches anything that could take the daemon down. The exception is a 401 to
//! `simpleenroll`: every one has the same body ([`est::UNAUTHENTICATED`]), so it says nothing about
//! a device or its token. Every refusal goes to the folding refusal log (`audit::Refusals`); one
//! to an unproven `simpleenroll` has the actor `unauthenticated` and the claimed device id in its
//! detail.

mod config;
pub use config::EnrollConfig;

mod crl;
mod est;
mod limit;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::audit::Refusals;
use crate::error::{Error, Result};
use crate::net::{self, Limits};
use crate::pki::GatewayPki;
use crate::registry::{IssuePolicy, Registry};
use crate::tls::{DeviceCertVerifier, server_config};

pub use limit::RateLimiter;

/// The EST listener, bound and ready to run.
pub struct EnrollServer {
    /// `None` when `[enroll].enabled = false`: nothing listens, the CRL is still kept.
    listener: Option<TcpListener>,
    /// The CRL's publisher and when it next signs; `None` when the CA may not sign CRLs.
    crl: Option<(crl::CrlPublisher, std::time::Duration)>,
    acceptor: TlsAcceptor,
    router: axum::Router,
    limits: Limits,
}

/// What a request handler knows about its connection.
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    pub client_cert: Option<CertificateDer<'static>>,
}

impl EnrollServer {
    /// Binds `[enroll].listen` (unless the listener is off) and prepares the TLS and HTTP
    /// stacks, for the devices of `site`.
    pub async fn build(
        site: &str,
        e: &EnrollConfig,
        registry: Registry,
        pki: &GatewayPki,
        refusals: Refusals,
    ) -> Result<EnrollServer> {
        let listener = net::bind_if(e.enabled, e.listen, "cannot listen for EST on").await?;
        let verifier = DeviceCertVerifier::new(&pki.ca.chain_der(), false)?;
        let tls = server_config(
            pki.server_chain.clone(),
            pki.server_key.clone_key(),
            verifier,
            &[b"http/1.1"],
        )?;
        let crl = if pki.ca.signs_crls() {
            let publisher =
                crl::CrlPublisher::new(registry.clone(), pki.ca.clone(), e.crl_validity);
            let first = publisher.clone();
            let wait = tokio::task::spawn_blocking(move || first.publish())
                .await
                .map_err(|e| Error::Invalid(format!("the CRL task failed: {e}")))??;
            Some((publisher, wait))
        } else {
            None
        };
        let state = est::Est::new(
            registry,
            pki.ca.clone(),
            IssuePolicy {
                site: site.to_owned(),
                validity: e.cert_validity,
                backdate: e.cert_backdate,
                max_failed_attempts: e.max_failed_attempts.get(),
                failed_lockout: e.failed_lockout,
                burn_after_failed: e.burn_after_failed.get(),
                superseded_grace: e.superseded_grace,
            },
            RateLimiter::new(e.rate_per_minute.get(), e.rate_burst.get()),
            e.max_body_bytes.get(),
            refusals,
            crl.as_ref().map(|(publisher, _)| publisher.published()),
        )?;
        Ok(EnrollServer {
            listener,
            crl,
            acceptor: TlsAcceptor::from(tls),
            router: est::router(Arc::new(state)),
            limits: Limits {
                handshake_timeout: e.handshake_timeout,
                // Per source below the total: one host cannot fill the listener, and when
                // several do, the oldest unfinished handshake makes room (`net`).
                max_pending_handshakes: e.max_connections.get(),
                max_pending_per_source: e.max_connections.get().div_ceil(2),
                max_connections: e.max_connections.get(),
                max_connections_per_source: e.max_connections.get().div_ceil(2),
            },
        })
    }

    /// Where the EST listener is bound; `None` when it is off.
    pub fn local_addr(&self) -> Result<Option<SocketAddr>> {
        self.listener
            .as_ref()
            .map(|l| {
                l.local_addr().map_err(|source| Error::Io {
                    action: "cannot read the address of",
                    path: "the EST listener".into(),
                    source,
                })
            })
            .transpose()
    }

    /// Serves until `shutdown`, then lets requests in flight finish.
    pub async fn run(self, shutdown: CancellationToken) {
        let crl_task = self
            .crl
            .map(|(publisher, wait)| tokio::spawn(publisher.run(wait, shutdown.clone())));
        let Some(listener) = self.listener else {
            shutdown.cancelled().await;
            if let Some(task) = crl_task {
                let _ = task.await;
            }
            return;
        };
        let router = self.router;
        let header_timeout = self.limits.handshake_timeout;
        let conn_shutdown = shutdown.clone();
        net::serve_tls(
            "enroll",
            listener,
            self.acceptor,
            self.limits,
            shutdown,
            |peer, why| tracing::debug!(%peer, reason = why.as_str(), "EST connection dropped."),
            move |tls, peer| {
                let info = ConnInfo {
                    peer,
                    client_cert: crate::tls::peer_certificate(tls.get_ref().1),
                };
                let app = router.clone().layer(axum::Extension(info));
                let shutdown = conn_shutdown.clone();
                async move {
                    let service = TowerToHyperService::new(app);
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
                    let conn = builder.serve_connection(TokioIo::new(tls), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        result = conn.as_mut() => {
                            if let Err(e) = result {
                                tracing::debug!(%peer, error = %e, "EST connection error.");
                            }
                        }
                        _ = shutdown.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
                        }
                    }
                }
            },
        )
        .await;
        if let Some(task) = crl_task {
            let _ = task.await;
        }
    }
}
