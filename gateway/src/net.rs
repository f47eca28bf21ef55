//! Accepting TLS connections without letting one peer stall the others.
//!
//! The accept loop only accepts: every handshake runs in its own task under a timeout, so a peer
//! that opens a TCP connection and sends nothing costs one idle task, never a stalled listener.
//! Pending handshakes are capped in total and per source address; when a cap is reached the
//! *oldest* pending handshake (of that source, or overall) is dropped to make room, so a flood of
//! silent connections cannot keep a real device out: real handshakes finish in milliseconds,
//! silent ones are the old ones. Established connections are capped per source (refused beyond)
//! and in total: when every slot is taken, the oldest pending handshake is dropped to free one,
//! and only when every slot holds an established session does the accept loop wait.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Limits of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub max_pending_handshakes: usize,
    pub max_pending_per_source: usize,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
}

/// Why a connection was closed before it was handed to the protocol, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    HandshakeTimeout,
    /// With rustls's reason (no client certificate, unknown issuer, ...).
    HandshakeFailed(String),
    Evicted,
    TooManyFromSource,
}

impl Dropped {
    pub fn as_str(&self) -> &'static str {
        match self {
            Dropped::HandshakeTimeout => "handshake_timeout",
            Dropped::HandshakeFailed(_) => "handshake_failed",
            Dropped::Evicted => "handshake_evicted",
            Dropped::TooManyFromSource => "too_many_connections",
        }
    }
}

#[derive(Default)]
struct Pending {
    next_id: u64,
    /// Oldest first.
    queue: VecDeque<(u64, IpAddr, CancellationToken)>,
}

impl Pending {
    fn admit(&mut self, source: IpAddr, limits: &Limits) -> (u64, CancellationToken) {
        let from_source = self.queue.iter().filter(|(_, ip, _)| *ip == source).count();
        if from_source >= limits.max_pending_per_source {
            if let Some(pos) = self.queue.iter().position(|(_, ip, _)| *ip == source)
                && let Some((_, _, cancel)) = self.queue.remove(pos)
            {
                cancel.cancel();
            }
        } else if self.queue.len() >= limits.max_pending_handshakes
            && let Some((_, _, cancel)) = self.queue.pop_front()
        {
            cancel.cancel();
        }
        let id = self.next_id;
        self.next_id += 1;
        let cancel = CancellationToken::new();
        self.queue.push_back((id, source, cancel.clone()));
        (id, cancel)
    }

    /// Drops the oldest pending handshake, if any: its connection slot is given back.
    fn evict_oldest(&mut self) -> bool {
        match self.queue.pop_front() {
            Some((_, _, cancel)) => {
                cancel.cancel();
                true
            }
            None => false,
        }
    }

    fn done(&mut self, id: u64) {
        if let Some(pos) = self.queue.iter().position(|(i, _, _)| *i == id) {
            self.queue.remove(pos);
        }
    }
}

/// Counts established connections per source; the guard gives the slot back.
#[derive(Clone, Default)]
struct PerSource(Arc<Mutex<HashMap<IpAddr, usize>>>);

struct SourceSlot {
    map: PerSource,
    ip: IpAddr,
}

impl PerSource {
    fn take(&self, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            map: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.map.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Binds the listener at `addr` (the error says `action` and the address, e.g. "cannot listen
/// for EST on 0.0.0.0:8443"), or binds nothing when the listener is switched off
/// (`enabled = false` in its section).
pub async fn bind_if(
    enabled: bool,
    addr: SocketAddr,
    action: &'static str,
) -> crate::error::Result<Option<TcpListener>> {
    if !enabled {
        return Ok(None);
    }
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| crate::error::Error::Io {
            action,
            path: addr.to_string().into(),
            source,
        })
}

/// Accepts connections on `listener` until `shutdown`, hands each completed TLS session to
/// `handler`, and waits for all handlers to end. `on_drop` hears of every connection closed
/// before the handler saw it.
pub async fn serve_tls<H, Fut>(
    name: &'static str,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: Limits,
    shutdown: CancellationToken,
    on_drop: impl Fn(SocketAddr, Dropped) + Send + Sync + 'static,
    handler: H,
) where
    H: Fn(TlsStream<TcpStream>, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tasks = TaskTracker::new();
    let pending = Arc::new(Mutex::new(Pending::default()));
    let per_source = PerSource::default();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let handler = Arc::new(handler);
    let on_drop = Arc::new(on_drop);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(source_slot) = per_source.take(peer.ip(), limits.max_connections_per_source)
        else {
            on_drop(peer, Dropped::TooManyFromSource);
            continue;
        };
        // A connection slot. When every slot is taken, the oldest pending handshake gives its
        // own back: silent peers that never finish a handshake cannot hold the listener's slots
        // against a real client, whose handshake takes milliseconds. Only when every slot holds
        // an established session does the accept loop wait.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => break,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                let evicted = pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .evict_oldest();
                if !evicted {
                    tracing::debug!(
                        listener = name,
                        "Every connection slot holds an established session; waiting for one."
                    );
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let (id, evicted) = pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(peer.ip(), &limits);
        let acceptor = acceptor.clone();
        let pending = pending.clone();
        let handler = handler.clone();
        let on_drop = on_drop.clone();
        let timeout = limits.handshake_timeout;
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let _source_slot = source_slot;
            let outcome = tokio::select! {
                _ = evicted.cancelled() => Err(Dropped::Evicted),
                _ = shutdown.cancelled() => return,
                result = tokio::time::timeout(timeout, acceptor.accept(stream)) => match result {
                    Err(_) => Err(Dropped::HandshakeTimeout),
                    Ok(Err(e)) => {
                        tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed.");
                        Err(Dropped::HandshakeFailed(e.to_string()))
                    }
                    Ok(Ok(tls)) => Ok(tls),
                },
            };
            pending.lock().unwrap_or_else(|e| e.into_inner()).done(id);
            match outcome {
                Ok(tls) => handler(tls, peer).await,
                Err(reason) => on_drop(peer, reason),
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_source: usize) -> Limits {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            max_pending_handshakes: total,
            max_pending_per_source: per_source,
            max_connections: 100,
            max_connections_per_source: 100,
        }
    }

    #[test]
    fn a_source_at_its_cap_evicts_its_own_oldest_handshake() {
        let mut pending = Pending::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let l = limits(10, 2);
        let (_, b_first) = pending.admit(b, &l);
        let (_, a_first) = pending.admit(a, &l);
        let (_, a_second) = pending.admit(a, &l);
        let (_, a_third) = pending.admit(a, &l);
        assert!(a_first.is_cancelled());
        assert!(!a_second.is_cancelled() && !a_third.is_cancelled());
        assert!(
            !b_first.is_cancelled(),
            "another source's handshake is untouched"
        );
    }

    #[test]
    fn the_global_cap_evicts_the_oldest_handshake_overall() {
        let mut pending = Pending::default();
        let l = limits(2, 10);
        let (_, first) = pending.admit("10.0.0.1".parse().unwrap(), &l);
        let (id2, second) = pending.admit("10.0.0.2".parse().unwrap(), &l);
        let (_, third) = pending.admit("10.0.0.3".parse().unwrap(), &l);
        assert!(first.is_cancelled());
        assert!(!second.is_cancelled() && !third.is_cancelled());
        pending.done(id2);
        assert_eq!(pending.queue.len(), 1);
    }

    #[test]
    fn per_source_slots_are_returned_on_drop() {
        let slots = PerSource::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let one = slots.take(ip, 2).unwrap();
        let _two = slots.take(ip, 2).unwrap();
        assert!(slots.take(ip, 2).is_none());
        drop(one);
        assert!(slots.take(ip, 2).is_some());
    }
}
