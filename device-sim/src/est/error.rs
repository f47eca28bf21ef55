use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong while enrolling or renewing over EST.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The gateway answered with an HTTP error; `reason` is its plain-text explanation.
    #[error("the gateway refused the request: HTTP {status}: {reason}")]
    Http {
        /// The HTTP status code.
        status: u16,
        /// The response body (trimmed, control characters removed), or the status's reason
        /// phrase when the body is empty.
        reason: String,
    },
    /// The EST URL cannot be used.
    #[error("invalid EST URL {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it and what to pass instead.
        reason: &'static str,
    },
    /// No TCP connection could be made.
    #[error("cannot connect to {addr}: {source}; check the URL and that the gateway is running")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed; most often the gateway's certificate is not trusted.
    #[error("TLS handshake with {addr} failed: {source}; {hint}")]
    Tls {
        /// `host:port`.
        addr: String,
        /// rustls's reason.
        #[source]
        source: std::io::Error,
        /// What to check.
        hint: &'static str,
    },
    /// The HTTP exchange broke off.
    #[error("HTTP exchange with {addr} failed: {source}")]
    Protocol {
        /// `host:port`.
        addr: String,
        /// hyper's reason.
        #[source]
        source: hyper::Error,
    },
    /// The gateway did not answer in time.
    #[error("no answer from {addr} within {}", humantime::format_duration(*timeout))]
    Timeout {
        /// `host:port`.
        addr: String,
        /// The limit.
        timeout: Duration,
    },
    /// The gateway answered 2xx with something that is not what EST promises.
    #[error("unexpected response from the gateway: {detail}")]
    BadResponse {
        /// What was wrong.
        detail: String,
    },
    /// A CA fetched during bootstrap does not have the fingerprint the user expected.
    #[error(
        "none of the CA certificates the gateway sent has the SHA-256 fingerprint {expected}; \
         got {got}; someone may be intercepting the connection, or the fingerprint is of another \
         gateway"
    )]
    FingerprintMismatch {
        /// The expected fingerprint.
        expected: String,
        /// The fingerprints received.
        got: String,
    },
    /// The TLS client could not be configured (for example, a client key of an unsupported type).
    #[error("cannot set up TLS: {0}")]
    TlsConfig(#[from] rustls::Error),
    /// A PKI operation failed (CSR generation, PKCS#7 or base64 decoding, certificate parsing).
    #[error(transparent)]
    Certs(#[from] rxgate_certs::Error),
    /// A file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done: "read", "write", "create".
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{}: {detail}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },
}
