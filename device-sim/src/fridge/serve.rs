//! Serving the register map over Modbus/TCP, Modbus/TCP Security (TLS) and RTU.

use std::future::{Ready, ready};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Response, SlaveRequest};
use tokio_rustls::TlsAcceptor;
use tokio_serial::SerialStream;

use super::model::Fault;
use super::registers::{Controller, handle};

/// Time a TLS client gets to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The shared controller, locked briefly and never across an await.
pub(super) type Shared = Arc<Mutex<Controller>>;

pub(super) fn lock(state: &Shared) -> MutexGuard<'_, Controller> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The Modbus service: answers from the shared controller, or not at all while the fridge is
/// silent (power cut, comms loss).
#[derive(Clone)]
pub(super) struct FridgeService {
    state: Shared,
    unit: u8,
    /// On TCP a single device answers whatever unit id it is sent; on a serial bus it must
    /// answer only its own, or it would talk over the other devices.
    any_unit: bool,
}

impl FridgeService {
    pub(super) fn new(state: Shared, unit: u8, any_unit: bool) -> FridgeService {
        FridgeService {
            state,
            unit,
            any_unit,
        }
    }
}

impl Service for FridgeService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        if !self.any_unit && req.slave != self.unit {
            return ready(Ok(None));
        }
        let mut controller = lock(&self.state);
        if controller.fridge.silent() {
            tracing::debug!(request = ?req.request, "Silent: not answering.");
            return ready(Ok(None));
        }
        let outcome = handle(&mut controller, req.request);
        if let Err(code) = &outcome {
            tracing::debug!(exception = %code, "Answering with an exception.");
        }
        ready(outcome.map(Some))
    }
}

fn powered(state: &Shared) -> bool {
    !lock(state).fridge.has_fault(Fault::PowerCut)
}

/// Serves Modbus/TCP until the task is aborted. Without power, connections are closed as soon
/// as they are accepted.
pub(super) async fn serve_tcp(listener: TcpListener, service: FridgeService) {
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let on_connected = |stream: TcpStream, peer: SocketAddr| {
        let service = service.clone();
        async move {
            if !powered(&service.state) {
                return Ok(None);
            }
            tracing::debug!(%peer, "Modbus/TCP connection.");
            Ok(Some((service, stream)))
        }
    };
    let on_error = |e: io::Error| tracing::debug!(error = %e, "Modbus/TCP connection ended.");
    if let Err(e) = server.serve(&on_connected, on_error).await {
        tracing::error!(error = %e, "The Modbus/TCP listener failed.");
    }
}

/// Serves Modbus/TCP Security until the task is aborted. The handshake happens in the accept
/// loop, bounded by [`HANDSHAKE_TIMEOUT`] (enough for a simulator).
pub(super) async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    service: FridgeService,
) {
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let on_connected = |stream: TcpStream, peer: SocketAddr| {
        let service = service.clone();
        let acceptor = acceptor.clone();
        async move {
            if !powered(&service.state) {
                return Ok(None);
            }
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    tracing::debug!(%peer, "Modbus/TLS connection.");
                    Ok(Some((service, tls)))
                }
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "TLS handshake failed.");
                    Ok(None)
                }
                Err(_) => {
                    tracing::warn!(%peer, "TLS handshake timed out.");
                    Ok(None)
                }
            }
        }
    };
    let on_error = |e: io::Error| tracing::debug!(error = %e, "Modbus/TLS connection ended.");
    if let Err(e) = server.serve(&on_connected, on_error).await {
        tracing::error!(error = %e, "The Modbus/TLS listener failed.");
    }
}

/// Serves Modbus RTU on the master side of a pseudo-terminal until the task is aborted.
pub(super) async fn serve_rtu(master: SerialStream, service: FridgeService) {
    let server = tokio_modbus::server::rtu::Server::new(master);
    if let Err(e) = server.serve_forever(service).await {
        tracing::error!(error = %e, "The Modbus RTU server stopped.");
    }
}
