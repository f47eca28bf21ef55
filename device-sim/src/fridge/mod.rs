//! A simulated medication fridge: an ACME FR-400 controller (`config/devices/acme-fr400.toml`)
//! serving Modbus/TCP, Modbus/TCP Security (TLS) and Modbus RTU over a pseudo-terminal, with a
//! thermal model and fault injection.
//!
//! ## Register map
//! Addresses are 0-based as on the wire (mbpoll's `-r` is 1-based: add one).
//!
//! | table    | address | content                                                        |
//! |----------|---------|----------------------------------------------------------------|
//! | input    | 0       | cabinet temperature, i16 tenths of °C; 0x8000 if the probe failed |
//! | input    | 1       | ambient temperature, i16 tenths of °C                          |
//! | input    | 2–3     | compressor starts, u32, high word first                        |
//! | input    | 4       | door openings, u16                                             |
//! | holding  | 0       | setpoint, i16 tenths of °C (-50.0 to 50.0)                     |
//! | holding  | 1       | thermostat differential, tenths of K (0.2 to 10.0)             |
//! | holding  | 2, 3    | high and low alarm limits, i16 tenths of °C                    |
//! | discrete | 0       | door open                                                      |
//! | discrete | 1, 2, 3 | high temperature, low temperature, probe failure alarms        |
//! | discrete | 4       | power failure alarm (latched when power returns)               |
//! | coil     | 0       | compressor relay (read-only)                                   |
//! | coil     | 1       | alarm latched; write 0 to acknowledge                          |
//!
//! Simulator control, not in the model file (nothing to poll there):
//!
//! | holding | 100 | active faults, a bit mask: 1 compressor failure, 2 power cut, 4 sensor fault, 8 comms loss. Writing it starts the faults whose bits are set and ends the others. |
//! | holding | 101 | duration in seconds of the faults started by the next write to 100 (0: until cleared) |
//! | holding | 102 | write N: open the door for N seconds; reads the seconds left |
//!
//! A power cut or comms loss silences the fridge, so it cannot be ended over Modbus: give it a
//! duration (register 101, `--fault power-cut@1m+5m`) or end it through [`FridgeSim`].
//!
//! ## Time
//! The model runs on simulated time: real time × `speed`. Fault schedules and durations are in
//! simulated time. `speed` 0 freezes the fridge (tests that want exact values).

mod model;
mod registers;
mod serve;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_serial::{SerialPort as _, SerialStream};

pub use model::{
    COOLING_C_PER_S, DEFAULT_DOOR_OPEN, DOOR_LEAK_PER_S, Fault, Fridge, LEAK_PER_S, ScheduledFault,
};
pub use registers::{DOOR_OPEN, FAULT_DURATION, FAULT_MASK, SENSOR_FAULT};

use registers::Controller;
use serve::{FridgeService, Shared, lock};

/// Why a simulated fridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum FridgeError {
    /// A listener could not be bound.
    #[error("cannot listen for Modbus/{what} on {addr}: {source}")]
    Bind {
        /// `TCP` or `TLS`.
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The pseudo-terminal for RTU could not be created.
    #[error("cannot create a pseudo-terminal for Modbus RTU: {0}")]
    Pty(String),
    /// The TLS certificate, key or CA is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// No transport was asked for.
    #[error("nothing to serve: enable at least one of TCP, TLS and RTU")]
    NoTransport,
    /// An option is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// Modbus/TCP Security settings.
pub struct TlsOptions {
    /// Where to listen (Modbus/TCP Security's port is 802).
    pub listen: SocketAddr,
    /// The fridge's certificate, then its chain.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The key of `cert_chain[0]`.
    pub key: PrivateKeyDer<'static>,
    /// CA certificates that client (gateway) certificates must chain to; `None` accepts
    /// clients without a certificate.
    pub client_ca: Option<Vec<CertificateDer<'static>>>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("listen", &self.listen)
            .field("mutual", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsOptions {
    /// Reads the certificate chain, key and optional client CA from PEM files.
    pub fn from_files(
        listen: SocketAddr,
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<TlsOptions, FridgeError> {
        let certs = |path: &Path| {
            CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    FridgeError::Tls(format!(
                        "cannot read certificates from {}: {e}",
                        path.display()
                    ))
                })
        };
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
            FridgeError::Tls(format!(
                "cannot read a private key from {}: {e}",
                key.display()
            ))
        })?;
        Ok(TlsOptions {
            listen,
            cert_chain: certs(cert)?,
            key,
            client_ca: client_ca.map(certs).transpose()?,
        })
    }

    fn acceptor(self) -> Result<tokio_rustls::TlsAcceptor, FridgeError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| FridgeError::Tls(e.to_string()))?;
        let builder = match self.client_ca {
            Some(cas) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in cas {
                    roots
                        .add(ca)
                        .map_err(|e| FridgeError::Tls(format!("unusable client CA: {e}")))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| FridgeError::Tls(format!("client verifier: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(self.cert_chain, self.key)
            .map_err(|e| {
                FridgeError::Tls(format!("the certificate and key do not fit together: {e}"))
            })?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// How to start a simulated fridge.
#[derive(Debug)]
pub struct FridgeOptions {
    /// Serve Modbus/TCP here (port 0: any free port).
    pub tcp: Option<SocketAddr>,
    /// Serve Modbus/TCP Security.
    pub tls: Option<TlsOptions>,
    /// Serve Modbus RTU on a new pseudo-terminal ([`FridgeSim::rtu_path`]).
    pub rtu: bool,
    /// Unit id answered on RTU (on TCP every unit id is answered).
    pub unit: u8,
    /// Simulated seconds per real second; 0 freezes the model.
    pub speed: f64,
    /// Thermostat setpoint, °C.
    pub setpoint_c: f64,
    /// Room temperature, °C.
    pub ambient_c: f64,
    /// Temperature at start (default: the setpoint).
    pub initial_c: Option<f64>,
    /// Faults to inject, in simulated time.
    pub schedule: Vec<ScheduledFault>,
    /// Open the door for 30 s this often (simulated time).
    pub door_every: Option<Duration>,
    /// Real time between model steps.
    pub tick: Duration,
}

impl Default for FridgeOptions {
    /// Modbus/TCP on a free loopback port, real-time, 5 °C in a 22 °C room.
    fn default() -> Self {
        FridgeOptions {
            tcp: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            tls: None,
            rtu: false,
            unit: 1,
            speed: 1.0,
            setpoint_c: 5.0,
            ambient_c: 22.0,
            initial_c: None,
            schedule: Vec::new(),
            door_every: None,
            tick: Duration::from_millis(100),
        }
    }
}

/// A running simulated fridge. Dropping it stops it.
pub struct FridgeSim {
    state: Shared,
    tcp: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    rtu: Option<PathBuf>,
    tasks: Vec<JoinHandle<()>>,
    /// The slave side of the pseudo-terminal stays open here: on Linux, reading the master
    /// fails once no slave descriptor is open, which would end the RTU server whenever the
    /// gateway closes and reopens the port.
    _pty_slave: Option<SerialStream>,
}

impl std::fmt::Debug for FridgeSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FridgeSim")
            .field("tcp", &self.tcp)
            .field("tls", &self.tls)
            .field("rtu", &self.rtu)
            .finish_non_exhaustive()
    }
}

impl FridgeSim {
    /// Binds the listeners, creates the pseudo-terminal and starts serving and simulating.
    pub async fn start(options: FridgeOptions) -> Result<FridgeSim, FridgeError> {
        if options.tcp.is_none() && options.tls.is_none() && !options.rtu {
            return Err(FridgeError::NoTransport);
        }
        if !options.speed.is_finite() || options.speed < 0.0 {
            return Err(FridgeError::Invalid(format!(
                "speed {} must be 0 or more",
                options.speed
            )));
        }
        let mut fridge = Fridge::new(
            options.setpoint_c,
            options.ambient_c,
            options.initial_c.unwrap_or(options.setpoint_c),
        );
        fridge.schedule(&options.schedule);
        fridge.open_door_every(options.door_every);
        let state: Shared = Arc::new(Mutex::new(Controller {
            fridge,
            fault_duration_s: 0,
        }));

        let mut tasks = Vec::new();
        let mut sim = FridgeSim {
            state: state.clone(),
            tcp: None,
            tls: None,
            rtu: None,
            tasks: Vec::new(),
            _pty_slave: None,
        };
        if let Some(addr) = options.tcp {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| FridgeError::Bind {
                    what: "TCP",
                    addr,
                    source,
                })?;
            sim.tcp = listener.local_addr().ok();
            let service = FridgeService::new(state.clone(), options.unit, true);
            tasks.push(tokio::spawn(serve::serve_tcp(listener, service)));
        }
        if let Some(tls) = options.tls {
            let addr = tls.listen;
            let acceptor = tls.acceptor()?;
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| FridgeError::Bind {
                    what: "TLS",
                    addr,
                    source,
                })?;
            sim.tls = listener.local_addr().ok();
            let service = FridgeService::new(state.clone(), options.unit, true);
            tasks.push(tokio::spawn(serve::serve_tls(listener, acceptor, service)));
        }
        if options.rtu {
            let (master, slave) =
                SerialStream::pair().map_err(|e| FridgeError::Pty(e.to_string()))?;
            let path = slave
                .name()
                .ok_or_else(|| FridgeError::Pty("the pseudo-terminal has no name".to_owned()))?;
            sim.rtu = Some(PathBuf::from(path));
            sim._pty_slave = Some(slave);
            let service = FridgeService::new(state.clone(), options.unit, false);
            tasks.push(tokio::spawn(serve::serve_rtu(master, service)));
        }
        tasks.push(tokio::spawn(run_model(state, options.speed, options.tick)));
        sim.tasks = tasks;
        Ok(sim)
    }

    /// The Modbus/TCP address actually bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The Modbus/TCP Security address actually bound.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls
    }

    /// The pseudo-terminal a Modbus RTU master opens (like `/dev/pts/5`).
    pub fn rtu_path(&self) -> Option<&Path> {
        self.rtu.as_deref()
    }

    /// One line saying where the fridge serves, for scripts and tests to parse:
    /// `ready tcp=127.0.0.1:40123 tls=127.0.0.1:40124 rtu=/dev/pts/5` (absent ones left out).
    pub fn ready_line(&self) -> String {
        let mut line = String::from("ready");
        if let Some(a) = self.tcp {
            line.push_str(&format!(" tcp={a}"));
        }
        if let Some(a) = self.tls {
            line.push_str(&format!(" tls={a}"));
        }
        if let Some(p) = &self.rtu {
            line.push_str(&format!(" rtu={}", p.display()));
        }
        line
    }

    /// Starts `fault` now, for `duration` of simulated time or until [`FridgeSim::clear_fault`].
    pub fn set_fault(&self, fault: Fault, duration: Option<Duration>) {
        tracing::info!(%fault, ?duration, "Fault injected.");
        lock(&self.state).fridge.set_fault(fault, duration);
    }

    /// Ends `fault` now.
    pub fn clear_fault(&self, fault: Fault) {
        tracing::info!(%fault, "Fault cleared.");
        lock(&self.state).fridge.clear_fault(fault);
    }

    /// Opens the door for `duration` of simulated time.
    pub fn open_door(&self, duration: Duration) {
        lock(&self.state).fridge.open_door(duration);
    }

    /// The true cabinet temperature, °C.
    pub fn temperature(&self) -> f64 {
        lock(&self.state).fridge.temperature_c
    }

    /// Sets the true cabinet temperature (tests that want exact values also set speed 0).
    pub fn set_temperature(&self, celsius: f64) {
        lock(&self.state).fridge.temperature_c = celsius;
    }

    /// A copy of the whole model.
    pub fn snapshot(&self) -> Fridge {
        lock(&self.state).fridge.clone()
    }

    /// Stops serving and simulating, and waits until every task has ended.
    pub async fn stop(mut self) {
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for FridgeSim {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Steps the model by the real time elapsed × `speed`, every `tick`.
async fn run_model(state: Shared, speed: f64, tick: Duration) {
    let mut interval = tokio::time::interval(tick.max(Duration::from_millis(1)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    loop {
        interval.tick().await;
        let now = tokio::time::Instant::now();
        let dt = (now - last).as_secs_f64() * speed;
        last = now;
        if dt > 0.0 {
            lock(&state).fridge.step(dt);
        }
    }
}
