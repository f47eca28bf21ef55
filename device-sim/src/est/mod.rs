//! An EST (RFC 7030) client, as a device uses it to get and renew its certificate from the
//! gateway.
//!
//! [`EstClient`] speaks the three operations rxgate serves (`cacerts`, `simpleenroll`,
//! `simplereenroll`) over HTTP/1.1 on rustls, one connection per request. [`enroll`] and
//! [`renew`] are the whole device-side flows, files included, used by `rxgate-sim enroll|renew`,
//! by `rxgate demo` and by tests.
//!
//! Trust in the gateway comes first: a device either knows the gateway's CA ([`Trust::CaFile`],
//! [`Trust::CaCerts`], or its fingerprint, [`Trust::Fingerprint`]), or explicitly accepts the CA
//! that `cacerts` returns on first contact ([`Trust::InsecureBootstrap`], RFC 7030 §4.1.1). The
//! enrollment token is only ever sent to a server verified against the CA.

mod client;
mod error;
mod flow;
mod tls;

pub use client::{DEFAULT_TIMEOUT, EstClient};
pub use error::Error;
pub use flow::{
    CA_FILE, CERT_FILE, CaFingerprint, EnrollOptions, EnrolledPaths, KEY_FILE, RenewOptions,
    RenewOutcome, Trust, enroll, renew,
};
pub use tls::{ClientIdentity, ServerTrust};
