//! The crate's error types.
//!
//! [`CsrError`] is everything wrong with a certificate signing request sent by a device; the
//! gateway answers those with HTTP 400 and the message as the plain-text reason, so each message
//! names what was found and what the device must send instead. [`Error`] is everything else.

use time::OffsetDateTime;

/// Why a PKCS#10 certificate signing request was refused by [`crate::check_csr`].
///
/// The `Display` text is meant to be sent back to the device (or the installer) verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// The body is not a DER-encoded PKCS#10 request.
    #[error(
        "not a DER PKCS#10 certificate signing request ({detail}); send the base64 of the DER \
         request (openssl req -outform DER)"
    )]
    Malformed {
        /// What the parser tripped over.
        detail: String,
    },
    /// The request parsed, but bytes followed it.
    #[error(
        "{bytes} unexpected bytes after the certificate signing request; send exactly one DER request"
    )]
    TrailingData {
        /// How many bytes followed the request.
        bytes: usize,
    },
    /// The subject has no common name.
    #[error("the request's subject has no common name (CN); set CN to the device id")]
    MissingCommonName,
    /// The subject has more than one common name.
    #[error("the request's subject has {count} common names (CN); set exactly one, the device id")]
    MultipleCommonNames {
        /// How many CN attributes the subject has.
        count: usize,
    },
    /// The common name is not a readable string.
    #[error("the request's common name (CN) is not a text string; set CN to the device id")]
    CommonNameNotText,
    /// An RSA key shorter than 2048 bits.
    #[error("RSA key of {bits} bits; at least 2048 required")]
    RsaKeyTooShort {
        /// The modulus length.
        bits: u32,
    },
    /// An RSA key longer than the verifiers in use accept.
    #[error("RSA key of {bits} bits; at most 8192 supported")]
    RsaKeyTooLong {
        /// The modulus length.
        bits: u32,
    },
    /// An elliptic curve other than P-256 and P-384.
    #[error("ECDSA curve {curve} not supported; use P-256 or P-384")]
    UnsupportedCurve {
        /// The curve's name, or its OID when it has no well-known name.
        curve: String,
    },
    /// A key type that is neither ECDSA, Ed25519 nor RSA.
    #[error(
        "{algorithm} keys are not supported; use ECDSA P-256 or P-384, Ed25519, or RSA of at least 2048 bits"
    )]
    UnsupportedKeyType {
        /// The key algorithm's name, or its OID.
        algorithm: String,
    },
    /// The public key could not be decoded.
    #[error("the request's public key is malformed ({detail}); regenerate the key")]
    MalformedKey {
        /// What is wrong with it.
        detail: String,
    },
    /// The request is signed with an algorithm that is refused (SHA-1) or cannot be checked.
    #[error(
        "the request is signed with {algorithm}, which is not accepted; sign it with SHA-256 or stronger (ECDSA, RSA PKCS#1 v1.5 or PSS) or Ed25519"
    )]
    UnsupportedSignatureAlgorithm {
        /// The signature algorithm's name, or its OID.
        algorithm: String,
    },
    /// The signature does not verify with the request's own public key.
    #[error(
        "the request's signature does not verify with its own public key; the request was altered or signed with another key"
    )]
    BadSignature,
}

/// Everything else that can go wrong in the PKI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A certificate signing request was refused.
    #[error("certificate signing request refused: {0}")]
    Csr(#[from] CsrError),

    /// A device id that cannot be used in topics, URIs and file names.
    #[error(
        "invalid device id {id:?}: {reason}; use 1 to 64 characters of A-Z a-z 0-9 . _ -, not \
         starting with '.' or '-'"
    )]
    InvalidDeviceId {
        /// The refused id.
        id: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A site id that cannot be used in topics and URIs.
    #[error(
        "invalid site id {site:?}: {reason}; use 1 to 64 characters of A-Z a-z 0-9 . _ -, not \
         starting with '.' or '-'"
    )]
    InvalidSite {
        /// The refused site id.
        site: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A device kind that rxgate does not know.
    #[error("unknown device kind {kind:?}; use one of: {}", crate::KINDS.join(", "))]
    InvalidKind {
        /// The refused kind.
        kind: String,
    },
    /// A name for a certificate (CA common name, server DNS name) that cannot be used.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// Which name: "CA common name", "server name".
        what: &'static str,
        /// The refused name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The CSR's common name is not the device the certificate is being issued for.
    #[error(
        "the request's common name {csr_cn:?} does not match the device id {device_id:?}; set CN \
         to the device id"
    )]
    SubjectMismatch {
        /// The CN in the CSR.
        csr_cn: String,
        /// The device the certificate would be issued for.
        device_id: String,
    },
    /// A validity period that is zero or does not fit in a certificate.
    #[error("invalid validity for {what}: {reason}")]
    InvalidValidity {
        /// Which certificate.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The CA certificate is not valid at the time a certificate would be issued.
    #[error(
        "the CA certificate is valid from {not_before} to {not_after} but the time is {now}; {}",
        if now < not_before { "the clock is probably wrong: synchronise it before issuing certificates" }
        else { "the CA has expired: create or import a new CA" }
    )]
    CaNotValidAt {
        /// The CA's notBefore.
        not_before: OffsetDateTime,
        /// The CA's notAfter.
        not_after: OffsetDateTime,
        /// The issuance time.
        now: OffsetDateTime,
    },

    /// Text that should hold PEM does not.
    #[error("{what}: {detail}")]
    Pem {
        /// Which input: "CA certificate", "CA key", "CA chain".
        what: &'static str,
        /// What is wrong and what to pass instead.
        detail: String,
    },
    /// Bytes that should be an X.509 certificate are not.
    #[error("{what} is not a valid X.509 certificate ({detail})")]
    BadCertificate {
        /// Which certificate.
        what: String,
        /// What the parser tripped over.
        detail: String,
    },
    /// The certificate given as the CA is not a CA certificate.
    #[error(
        "the certificate {subject:?} is not a CA certificate ({reason}); pass the certificate of \
         the issuing CA, not of a server or device"
    )]
    NotACa {
        /// The certificate's subject.
        subject: String,
        /// Which check failed.
        reason: &'static str,
    },
    /// The CA key cannot be used.
    #[error(
        "the CA key cannot be used: {detail}; pass an unencrypted PKCS#8 ECDSA P-256/P-384, \
         Ed25519 or RSA (2048 to 8192 bits) key (openssl pkcs8 -topk8 -nocrypt -in KEY -out \
         KEY.pk8)"
    )]
    UnsupportedKey {
        /// What is wrong with it.
        detail: String,
    },
    /// The CA key is not the key of the CA certificate.
    #[error(
        "the CA key does not belong to the CA certificate {subject:?}; pass the key the \
         certificate was issued for"
    )]
    KeyMismatch {
        /// The CA certificate's subject.
        subject: String,
    },
    /// rxgate cannot reproduce the CA's subject name byte for byte in the certificates it issues,
    /// so they would not chain to it.
    #[error(
        "the CA certificate's subject {subject:?} uses a name form rxgate cannot reproduce in \
         the certificates it issues ({detail}); issue the intermediate with a simple subject \
         such as \"CN=rxgate store-0042, O=Example Pharmacy\""
    )]
    UnsupportedCaName {
        /// The CA certificate's subject.
        subject: String,
        /// What does not round-trip.
        detail: String,
    },
    /// A certificate in the CA chain is not a parent of the CA.
    #[error(
        "the CA chain is broken: {subject:?} {reason}; pass the parents of the CA certificate \
         (its issuer, that one's issuer, ...) in --ca-chain"
    )]
    BrokenChain {
        /// The certificate at fault.
        subject: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A certificate is not an rxgate device certificate.
    #[error("not an rxgate device certificate: {reason}")]
    NotADeviceCertificate {
        /// What is missing or inconsistent.
        reason: String,
    },

    /// A PKCS#7 (CMS) certs-only structure could not be built or read.
    #[error("PKCS#7 certs-only: {detail}")]
    Pkcs7 {
        /// What failed.
        detail: String,
    },
    /// An EST body is not valid base64.
    #[error("the body is not valid base64: {detail}; send the base64 of the DER data")]
    Base64 {
        /// What is wrong, and where.
        detail: String,
    },

    /// The certificate builder refused to build a certificate or key.
    #[error("could not {action}: {source}")]
    Build {
        /// What was being built.
        action: &'static str,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed; check that /dev/urandom is available")]
    Random,
    /// The CA certificate's keyUsage does not allow signing CRLs.
    #[error(
        "the CA {subject:?} may not sign CRLs (its keyUsage lacks cRLSign); import a CA \
         certificate that has it to publish revocations"
    )]
    CannotSignCrl {
        /// The CA's subject.
        subject: String,
    },
    /// A CRL or a CRL distribution point cannot be built from what was given.
    #[error("invalid CRL: {reason}")]
    InvalidCrl {
        /// What is wrong.
        reason: String,
    },
    /// A certificate rxgate just built does not have the profile it was built with: a bug.
    #[error(
        "internal error: the issued certificate does not match its profile ({detail}); please report this"
    )]
    ProfileViolation {
        /// What differs.
        detail: String,
    },
}

impl Error {
    pub(crate) fn build(action: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
        move |source| Error::Build { action, source }
    }
}
