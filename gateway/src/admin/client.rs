//! The CLI's end: ask the running daemon, or do it ourselves when none runs.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// How long a command waits for a store held by another process (a daemon starting up).
const LOCK_WAIT: Duration = Duration::from_secs(10);

use super::{Context, Reply, Request, Response, execute};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::store::Store;

/// Runs `request` against the gateway configured by `config`: through the daemon's admin socket
/// when one answers, otherwise directly on the store.
pub fn call(config: &Config, request: Request) -> Result<Reply> {
    session(config, |send| send(request))
}

/// Runs `f`, which may send any number of requests in turn: each over its own connection to the
/// daemon's socket when a daemon answers, otherwise on the store, opened once for all of them.
pub fn session<R>(
    config: &Config,
    f: impl FnOnce(&mut dyn FnMut(Request) -> Result<Reply>) -> Result<R>,
) -> Result<R> {
    let socket = config.paths().admin_socket();
    // A daemon that is starting holds the store before its socket answers, and a command run
    // directly holds the store briefly: retry for a while instead of failing on the overlap.
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        if let Ok(stream) = UnixStream::connect(&socket) {
            let mut first = Some(stream);
            let mut send = |request: Request| -> Result<Reply> {
                let stream = match first.take() {
                    Some(stream) => stream,
                    None => UnixStream::connect(&socket).map_err(|e| Error::Admin {
                        socket: socket.clone(),
                        reason: format!("the daemon stopped answering: {e}"),
                    })?,
                };
                over_socket(stream, &request)
                    .map_err(|reason| Error::Admin {
                        socket: socket.clone(),
                        reason,
                    })?
                    .map_err(Error::Invalid)
            };
            return f(&mut send);
        }
        match Store::open(&config.paths().store()) {
            Ok(store) => {
                let registry = Registry::new(
                    store,
                    crate::clock::system(config.gateway.assume_clock_synced),
                );
                let context = Context::new(config, registry);
                // No daemon to read our credentials: this process's own user acts.
                let actor = crate::registry::Actor::os_user(&super::current_user());
                return f(&mut |request| execute(&context, request, &actor));
            }
            Err(Error::StoreLocked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Outer error: the conversation failed. Inner error: the daemon refused the command.
fn over_socket(mut stream: UnixStream, request: &Request) -> Result<Result<Reply, String>, String> {
    // A backup of a large store onto a slow USB stick takes minutes.
    let timeout = Some(match request {
        Request::BackupCreate { .. } => Duration::from_secs(30 * 60),
        _ => Duration::from_secs(60),
    });
    stream
        .set_read_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(timeout)
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(|e| format!("no answer from the daemon: {e}"))?;
    match serde_json::from_str::<Response>(&reply) {
        Ok(Response::Ok(reply)) => Ok(Ok(*reply)),
        Ok(Response::Error { message }) => Ok(Err(message)),
        Err(e) => Err(format!(
            "unintelligible answer from the daemon ({e}); is it the same rxgate version?"
        )),
    }
}
