//! The EST client's flows against a small in-process EST server built from rxgate-certs, on
//! loopback. The real gateway is exercised by the end-to-end tests in `tests/`; this checks the
//! client's own logic: trust bootstrap, credentials only to a verified server, mutual TLS for
//! renewal, error reporting and the files it writes.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use rxgate_certs::{CertificateAuthority, DeviceProfile, KeyAlg};
use rxgate_sim::est::{self, EnrollOptions, Error, RenewOptions, RenewOutcome, Trust};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const TOKEN: &str = "one-time-token";

struct FakeGateway {
    url: String,
    ca: Arc<CertificateAuthority>,
    /// How many simpleenroll requests reached the server.
    enroll_requests: Arc<AtomicUsize>,
    /// The validity the server gives device certificates.
    validity: Arc<Mutex<Duration>>,
}

async fn start() -> FakeGateway {
    let now = OffsetDateTime::now_utc();
    let ca = Arc::new(CertificateAuthority::generate("rxgate CA store-test", now).unwrap());
    let server = ca
        .issue_server(&["127.0.0.1".to_owned()], Duration::from_secs(3600), now)
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.cert_der().to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .unwrap();
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server.cert.der.clone()],
            PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let enroll_requests = Arc::new(AtomicUsize::new(0));
    let validity = Arc::new(Mutex::new(Duration::from_secs(30 * 86_400)));

    let state = (ca.clone(), enroll_requests.clone(), validity.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first().cloned());
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    let peer = peer.clone();
                    async move { Ok::<_, Infallible>(handle(req, peer, state).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });

    FakeGateway {
        url,
        ca,
        enroll_requests,
        validity,
    }
}

type State = (
    Arc<CertificateAuthority>,
    Arc<AtomicUsize>,
    Arc<Mutex<Duration>>,
);

async fn handle(
    req: Request<Incoming>,
    peer: Option<CertificateDer<'static>>,
    (ca, enroll_requests, validity): State,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, reason: &str| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(format!("{reason}\r\n"))))
            .unwrap()
    };
    let pkcs7 = |certs: &[CertificateDer<'static>]| {
        let der = rxgate_certs::pkcs7::certs_only(certs).unwrap();
        Response::builder()
            .header(
                "content-type",
                "application/pkcs7-mime; smime-type=certs-only",
            )
            .body(Full::new(Bytes::from(rxgate_certs::base64::encode_body(
                &der,
            ))))
            .unwrap()
    };
    let path = req.uri().path().to_owned();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let issue = |device: &str, kind: &str| {
        let der = match rxgate_certs::base64::decode_body(&body) {
            Ok(der) => der,
            Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let csr = match rxgate_certs::check_csr(&der) {
            Ok(csr) => csr,
            Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let profile = DeviceProfile {
            site: "store-test".to_owned(),
            kind: kind.to_owned(),
            device_id: device.to_owned(),
            validity: *validity.lock().unwrap(),
            backdate: Duration::from_secs(60),
            now: OffsetDateTime::now_utc(),
        };
        match ca.issue_device(&csr, &profile) {
            Ok(cert) => pkcs7(&[cert.der]),
            Err(e) => text(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    };
    match path.as_str() {
        "/.well-known/est/cacerts" => pkcs7(&ca.chain_der()),
        "/.well-known/est/simpleenroll" => {
            enroll_requests.fetch_add(1, Ordering::SeqCst);
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("fridge-01:{TOKEN}"))
            );
            if auth.as_deref() != Some(expected.as_str()) {
                return text(StatusCode::UNAUTHORIZED, "token unknown or already used");
            }
            issue("fridge-01", "fridge")
        }
        "/.well-known/est/simplereenroll" => {
            let Some(identity) = peer.and_then(|c| rxgate_certs::device_identity(&c).ok()) else {
                return text(StatusCode::UNAUTHORIZED, "a device certificate is required");
            };
            issue(&identity.device_id, &identity.kind)
        }
        _ => text(StatusCode::NOT_FOUND, "no such EST operation"),
    }
}

fn options(gw: &FakeGateway, out: &Path, trust: Trust) -> EnrollOptions {
    EnrollOptions {
        est_url: gw.url.clone(),
        device_id: "fridge-01".to_owned(),
        token: TOKEN.to_owned(),
        out_dir: out.to_owned(),
        trust,
        key_alg: KeyAlg::P256,
        timeout: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn enroll_with_insecure_bootstrap_writes_key_certificate_and_ca() {
    let gw = start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fridge-01");
    let enrolled = est::enroll(options(&gw, &out, Trust::InsecureBootstrap))
        .await
        .unwrap();

    assert!(enrolled.bootstrapped);
    assert_eq!(enrolled.ca_fingerprints.len(), 1);
    assert_eq!(
        enrolled.ca_fingerprints[0].sha256,
        rxgate_certs::fingerprint_sha256(gw.ca.cert_der())
    );
    assert_eq!(enrolled.key, out.join("device.key"));
    let mode = std::fs::metadata(&enrolled.key)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(&enrolled.ca).unwrap(),
        gw.ca.chain_pem()
    );

    let cert = CertificateDer::from_pem_file(&enrolled.cert).unwrap();
    let id = rxgate_certs::device_identity(&cert).unwrap();
    assert_eq!(id.device_id, "fridge-01");
    assert_eq!(id.serial, enrolled.serial);
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&enrolled.key).unwrap()).unwrap();
    let (_, x509) = x509_parser::parse_x509_certificate(&cert).unwrap();
    assert_eq!(
        key.public_key_raw(),
        x509.public_key().subject_public_key.data.as_ref()
    );
}

#[tokio::test]
async fn enroll_with_the_ca_file_verifies_the_gateway() {
    let gw = start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("gateway-ca.pem");
    std::fs::write(&ca_file, gw.ca.cert_pem()).unwrap();
    let enrolled = est::enroll(options(&gw, &dir.path().join("d"), Trust::CaFile(ca_file)))
        .await
        .unwrap();
    assert!(!enrolled.bootstrapped);
}

#[tokio::test]
async fn enroll_with_another_ca_fails_the_handshake_and_sends_no_token() {
    let gw = start().await;
    let other = CertificateAuthority::generate("someone else", OffsetDateTime::now_utc()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = est::enroll(options(&gw, dir.path(), Trust::CaCerts(other.chain_der())))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert!(err.to_string().contains("--insecure-bootstrap"), "{err}");
    assert_eq!(gw.enroll_requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn enroll_with_a_wrong_fingerprint_sends_no_token() {
    let gw = start().await;
    let dir = tempfile::tempdir().unwrap();
    let err = est::enroll(options(
        &gw,
        dir.path(),
        Trust::Fingerprint("AA:BB".to_owned()),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, Error::FingerprintMismatch { .. }), "{err}");
    assert_eq!(gw.enroll_requests.load(Ordering::SeqCst), 0);

    let right = rxgate_certs::fingerprint_sha256(gw.ca.cert_der());
    est::enroll(options(&gw, dir.path(), Trust::Fingerprint(right)))
        .await
        .unwrap();
}

#[tokio::test]
async fn enroll_with_a_wrong_token_reports_http_401_and_the_reason() {
    let gw = start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&gw, dir.path(), Trust::CaCerts(gw.ca.chain_der()));
    opts.token = "used".to_owned();
    let err = est::enroll(opts).await.unwrap_err();
    match err {
        Error::Http { status, reason } => {
            assert_eq!(status, 401);
            assert_eq!(reason, "token unknown or already used");
        }
        other => panic!("expected HTTP 401, got {other}"),
    }
    assert!(!dir.path().join("device.key").exists());
}

#[tokio::test]
async fn renew_replaces_key_and_certificate_only_when_due() {
    let gw = start().await;
    let dir = tempfile::tempdir().unwrap();
    let enrolled = est::enroll(options(&gw, dir.path(), Trust::CaCerts(gw.ca.chain_der())))
        .await
        .unwrap();
    let old_key = std::fs::read_to_string(&enrolled.key).unwrap();

    let renew = |window: Option<Duration>| RenewOptions {
        est_url: gw.url.clone(),
        dir: dir.path().to_owned(),
        key_alg: KeyAlg::Ed25519,
        if_expiring_within: window,
        now: OffsetDateTime::now_utc(),
        timeout: Duration::from_secs(10),
    };
    let outcome = est::renew(renew(Some(Duration::from_secs(7 * 86_400))))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RenewOutcome::NotDue {
            not_after: enrolled.not_after
        }
    );
    assert_eq!(std::fs::read_to_string(&enrolled.key).unwrap(), old_key);

    *gw.validity.lock().unwrap() = Duration::from_secs(90 * 86_400);
    let outcome = est::renew(renew(Some(Duration::from_secs(60 * 86_400))))
        .await
        .unwrap();
    let RenewOutcome::Renewed {
        serial,
        previous_not_after,
        ..
    } = outcome
    else {
        panic!("expected a renewal, got {outcome:?}");
    };
    assert_eq!(previous_not_after, enrolled.not_after);
    assert_ne!(serial, enrolled.serial);
    assert_ne!(std::fs::read_to_string(&enrolled.key).unwrap(), old_key);
    let mode = std::fs::metadata(&enrolled.key)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let cert = CertificateDer::from_pem_file(&enrolled.cert).unwrap();
    assert_eq!(rxgate_certs::device_identity(&cert).unwrap().serial, serial);

    // The renewed (Ed25519) identity authenticates the next renewal.
    let outcome = est::renew(renew(None)).await.unwrap();
    assert!(
        matches!(outcome, RenewOutcome::Renewed { .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn renew_without_an_enrolled_folder_names_the_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = est::renew(RenewOptions {
        est_url: "https://127.0.0.1:1".to_owned(),
        dir: dir.path().to_owned(),
        key_alg: KeyAlg::P256,
        if_expiring_within: None,
        now: OffsetDateTime::now_utc(),
        timeout: Duration::from_secs(1),
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("device.crt"), "{err}");
}
