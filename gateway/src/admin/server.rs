//! The daemon's end of the admin socket.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Context, MAX_REQUEST_BYTES, Request, Response, execute};
use crate::error::{Error, Result};

/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The admin socket, bound and ready.
pub struct AdminServer {
    listener: UnixListener,
    path: PathBuf,
    context: Arc<tokio::sync::RwLock<Context>>,
}

impl AdminServer {
    /// Binds the socket at `path` with mode 0600. A socket left behind by a daemon that died is
    /// removed; one that still answers means another daemon runs, which is an error.
    pub async fn bind(path: &Path, context: Context) -> Result<AdminServer> {
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                return Err(Error::Admin {
                    socket: path.to_owned(),
                    reason: "another rxgate daemon is already answering on this socket".to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(Error::io("cannot remove stale socket", path))?;
        }
        let listener =
            UnixListener::bind(path).map_err(Error::io("cannot bind admin socket", path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(Error::io("cannot restrict admin socket", path))?;
        Ok(AdminServer {
            listener,
            path: path.to_owned(),
            context: Arc::new(tokio::sync::RwLock::new(context)),
        })
    }

    /// Lets the daemon publish its listener addresses once they are bound.
    pub fn context(&self) -> Arc<tokio::sync::RwLock<Context>> {
        self.context.clone()
    }

    /// Serves until `shutdown`; removes the socket file on the way out.
    pub async fn run(self, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let context = self.context.clone();
                        tasks.spawn(async move {
                            if let Err(e) = serve(stream, context).await {
                                tracing::debug!(error = %e, "Admin connection ended with an error.");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Admin socket accept failed.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        tasks.close();
        tasks.wait().await;
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve(
    stream: UnixStream,
    context: Arc<tokio::sync::RwLock<Context>>,
) -> std::io::Result<()> {
    // The kernel's word for who connected, not the client's.
    let actor = match stream.peer_cred() {
        Ok(cred) => crate::registry::Actor::os_user(&super::user_name(cred.uid())),
        Err(e) => {
            tracing::warn!(error = %e, "Admin connection without peer credentials refused.");
            return Err(e);
        }
    };
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES as u64 + 1));
    let n = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    let response = if n > MAX_REQUEST_BYTES {
        Response::Error {
            message: format!("request larger than {MAX_REQUEST_BYTES} bytes"),
        }
    } else {
        match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Error {
                message: format!("malformed admin request: {e}"),
            },
            Ok(request) => {
                let is_mutation = !matches!(
                    request,
                    Request::Status | Request::TokenList | Request::DeviceList | Request::UserList
                );
                let name = serde_json::to_value(&request)
                    .ok()
                    .and_then(|v| v.get("cmd").and_then(|c| c.as_str()).map(str::to_owned))
                    .unwrap_or_default();
                let ctx = context.read().await.clone();
                let by = actor.name.clone();
                let result =
                    tokio::task::spawn_blocking(move || execute(&ctx, request, &actor)).await;
                match result {
                    Ok(Ok(reply)) => {
                        if is_mutation {
                            tracing::info!(command = %name, by = %by, "Admin command done.");
                        }
                        Response::Ok(Box::new(reply))
                    }
                    Ok(Err(e)) => Response::Error {
                        message: e.to_string(),
                    },
                    Err(e) => Response::Error {
                        message: format!("admin command failed: {e}"),
                    },
                }
            }
        }
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}
