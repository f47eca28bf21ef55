//! Opening a Modbus connection: TCP, TLS (Modbus/TCP Security) or a serial port.
//!
//! tokio-modbus has no timeouts; the caller wraps every function here (and every request) in
//! one, and drops a connection that timed out.

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier as _;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_modbus::Slave;
use tokio_modbus::client::Context;
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

use crate::clock::SharedClock;
use crate::devices::{DeviceConfig, Parity};
use crate::error::{Error, Result};

/// How one TCP or TLS device is reached.
#[derive(Clone)]
pub(crate) enum Link {
    Tcp {
        host: String,
        port: u16,
    },
    Tls {
        host: String,
        port: u16,
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
    },
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Link::Tcp { host, port } => write!(f, "tcp://{}", join_host_port(host, *port)),
            Link::Tls { host, port, .. } => write!(f, "tls://{}", join_host_port(host, *port)),
        }
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl Link {
    /// Connects and, for TLS, completes the handshake. Not bounded in time: the caller is.
    pub(crate) async fn connect(&self, unit: u8) -> io::Result<Context> {
        match self {
            Link::Tcp { host, port } => {
                let stream = connect_tcp(host, *port).await?;
                Ok(tokio_modbus::client::tcp::attach_slave(stream, Slave(unit)))
            }
            Link::Tls {
                host,
                port,
                config,
                server_name,
            } => {
                let stream = connect_tcp(host, *port).await?;
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = connector.connect(server_name.clone(), stream).await?;
                Ok(tokio_modbus::client::tcp::attach_slave(tls, Slave(unit)))
            }
        }
    }
}

/// Tries every address `host` resolves to, in order.
async fn connect_tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolves to no address"),
        )
    }))
}

/// Line settings of a serial bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SerialLine {
    pub path: PathBuf,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

impl SerialLine {
    pub(crate) fn of(device: &DeviceConfig, path: &Path) -> SerialLine {
        SerialLine {
            path: path.to_owned(),
            baud: device.baud,
            parity: device.parity,
            data_bits: device.data_bits,
            stop_bits: device.stop_bits,
        }
    }

    /// Opens the port in raw mode with these settings and takes an exclusive advisory lock on
    /// it, so two processes polling one bus fail loudly instead of garbling each other's frames.
    ///
    /// Not `TIOCEXCL` (serialport's "exclusive"): that flag belongs to the tty, not to our file
    /// descriptor, and outlives it while anyone else holds the tty open (a pty simulator does),
    /// which would lock the gateway out of its own bus when it reopens the port after a timeout.
    pub(crate) fn open(&self) -> io::Result<SerialStream> {
        let data_bits = match self.data_bits {
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        };
        let stop_bits = match self.stop_bits {
            2 => tokio_serial::StopBits::Two,
            _ => tokio_serial::StopBits::One,
        };
        let parity = match self.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        };
        let stream = tokio_serial::new(self.path.to_string_lossy(), self.baud)
            .data_bits(data_bits)
            .stop_bits(stop_bits)
            .parity(parity)
            .flow_control(tokio_serial::FlowControl::None)
            .exclusive(false)
            .open_native_async()
            .map_err(io::Error::from)?;
        // SAFETY: flock on a descriptor we own; LOCK_NB so it never blocks.
        let locked = unsafe { libc::flock(stream.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("the port is in use by another process (flock: {e})"),
            ));
        }
        Ok(stream)
    }

    /// Drops whatever the port has received and nobody read: after a timeout, a late reply
    /// must not be taken for the answer to the next request (RTU frames carry no transaction
    /// id).
    pub(crate) fn discard_input(stream: &SerialStream) -> io::Result<()> {
        stream
            .clear(tokio_serial::ClearBuffer::Input)
            .map_err(io::Error::from)
    }
}

impl fmt::Display for SerialLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parity = match self.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        write!(
            f,
            "{} {} {}{}{}",
            self.path.display(),
            self.baud,
            self.data_bits,
            parity,
            self.stop_bits
        )
    }
}

/// What the gateway presents to Modbus/TLS devices and how it recognises them.
pub struct ModbusTlsIdentity {
    /// The gateway's certificate first (its server certificate, which carries the clientAuth
    /// usage too), then its CA chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// The key of `chain[0]`.
    pub key: PrivateKeyDer<'static>,
    /// The gateway's CA chain: verifies devices that have no `ca_file`.
    pub ca_chain: Vec<CertificateDer<'static>>,
    /// Whether the clock can be trusted decides whether certificate validity periods are
    /// enforced (see `crate::tls`).
    pub clock: SharedClock,
}

impl fmt::Debug for ModbusTlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModbusTlsIdentity")
            .field("chain", &self.chain.len())
            .field("ca_chain", &self.ca_chain.len())
            .finish_non_exhaustive()
    }
}

impl ModbusTlsIdentity {
    /// The gateway's server certificate, key and CA chain, as loaded at start-up.
    pub fn from_pki(pki: &crate::pki::GatewayPki, clock: SharedClock) -> ModbusTlsIdentity {
        ModbusTlsIdentity {
            chain: pki.server_chain.clone(),
            key: pki.server_key.clone_key(),
            ca_chain: pki.ca.chain_der(),
            clock,
        }
    }
}

/// The TLS client config for one device: the gateway's identity, and either the device's
/// `ca_file` (standard server verification against `server_name`) or the gateway's CA (the
/// device's certificate must be one this gateway issued to this very device id).
pub(crate) fn tls_link(
    id: &str,
    site: &str,
    device: &DeviceConfig,
    host: &str,
    port: u16,
    identity: &ModbusTlsIdentity,
) -> Result<Link> {
    let provider = crate::tls::provider();
    let verifier: Arc<dyn ServerCertVerifier> = match &device.ca_file {
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for cert in crate::tls::load_certs(ca_file)? {
                roots.add(cert).map_err(|e| {
                    Error::Invalid(format!(
                        "devices.{id}.ca_file: a certificate in {} cannot be a trust anchor: {e}",
                        ca_file.display()
                    ))
                })?;
            }
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| Error::Invalid(format!("devices.{id}.ca_file: {e}")))?;
            Arc::new(ClockAwareVerifier {
                inner,
                clock: identity.clock.clone(),
            })
        }
        None => Arc::new(GatewayIssuedDevice {
            inner: crate::tls::DeviceCertVerifier::new(&identity.ca_chain, true)?,
            device_id: id.to_owned(),
            site: site.to_owned(),
            clock: identity.clock.clone(),
        }),
    };
    let name = device.server_name.as_deref().unwrap_or(host);
    let server_name = ServerName::try_from(name.to_owned()).map_err(|e| {
        Error::Invalid(format!(
            "devices.{id}: {name:?} is not a valid TLS server name: {e}"
        ))
    })?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Invalid(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| {
            Error::Invalid(format!(
                "the gateway's certificate cannot be used as a TLS client identity: {e}"
            ))
        })?;
    Ok(Link::Tls {
        host: host.to_owned(),
        port,
        config: Arc::new(config),
        server_name,
    })
}

fn is_time_error(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. }
        )
    )
}

/// `(notBefore, notAfter)` in Unix seconds.
fn validity(cert: &CertificateDer<'_>) -> Option<(i64, i64)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some((
        parsed.validity().not_before.timestamp(),
        parsed.validity().not_after.timestamp(),
    ))
}

fn inside_validity(cert: &CertificateDer<'_>) -> Option<UnixTime> {
    let (not_before, _) = validity(cert)?;
    u64::try_from(not_before + 1)
        .ok()
        .map(|s| UnixTime::since_unix_epoch(std::time::Duration::from_secs(s)))
}

/// Standard server verification, except that validity periods are not enforced while the
/// clock is not synchronised (a Pi after a power cut; see `crate::tls`).
struct ClockAwareVerifier {
    inner: Arc<WebPkiServerVerifier>,
    clock: SharedClock,
}

impl fmt::Debug for ClockAwareVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClockAwareVerifier").finish_non_exhaustive()
    }
}

impl ServerCertVerifier for ClockAwareVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(e) if is_time_error(&e) && !self.clock.synced() => {
                match inside_validity(end_entity) {
                    Some(at) => self.inner.verify_server_cert(
                        end_entity,
                        intermediates,
                        server_name,
                        ocsp,
                        at,
                    ),
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A device holding a certificate from this gateway's CA: device certificates carry the
/// clientAuth usage and name the device (`urn:rxgate:device:<site>:<kind>:<id>`), not a host,
/// and a device's IP address may change with DHCP. So the chain is verified as for a device
/// connecting to the gateway, and the certificate must name this site and this device id.
struct GatewayIssuedDevice {
    inner: Arc<crate::tls::DeviceCertVerifier>,
    device_id: String,
    site: String,
    clock: SharedClock,
}

impl fmt::Debug for GatewayIssuedDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayIssuedDevice")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for GatewayIssuedDevice {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The inner verifier ignores validity periods; enforce them when the clock is trusted.
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.clock.synced() {
            let (not_before, not_after) = validity(end_entity).ok_or(
                rustls::Error::InvalidCertificate(CertificateError::BadEncoding),
            )?;
            let now = now.as_secs() as i64;
            if now < not_before {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidYet,
                ));
            }
            if now > not_after {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
            }
        }
        let identity = rxgate_certs::device_identity(end_entity).map_err(|e| {
            tracing::warn!(device = %self.device_id, error = %e, "The device's certificate is not an rxgate device certificate.");
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        })?;
        if identity.device_id != self.device_id || identity.site != self.site {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
