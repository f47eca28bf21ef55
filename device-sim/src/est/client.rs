//! The EST client: one HTTP/1.1 request per TLS connection, which is all enrollment needs.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::Error;
use super::tls::{ClientIdentity, ServerTrust, client_config};

/// The default limit for one request, connection and TLS handshake included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest response body read; EST responses are a few kilobytes.
const MAX_BODY: usize = 1024 * 1024;
/// The longest server explanation kept in [`Error::Http`].
const MAX_REASON: usize = 1000;
const WELL_KNOWN: &str = "/.well-known/est";

/// A client for one gateway's EST service (RFC 7030) at `https://<host>:<port>/.well-known/est/`.
#[derive(Clone)]
pub struct EstClient {
    /// `host:port` as written in the URL, for the Host header and messages.
    authority: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    insecure: bool,
    timeout: Duration,
}

impl std::fmt::Debug for EstClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EstClient")
            .field("authority", &self.authority)
            .field("insecure", &self.insecure)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl EstClient {
    /// A client for the gateway at `base_url` (`https://host[:port]`, no path), trusting its
    /// certificate as `trust` says, and presenting `identity` when given.
    pub fn new(
        base_url: &str,
        trust: ServerTrust,
        identity: Option<ClientIdentity>,
    ) -> Result<Self, Error> {
        let bad = |reason| Error::Url {
            url: base_url.to_owned(),
            reason,
        };
        let uri: Uri = base_url
            .parse()
            .map_err(|_| bad("not a URL; pass something like https://192.168.1.20:8443"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad(
                "EST needs https://; pass something like https://192.168.1.20:8443",
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad(
                "pass only scheme, host and port; the client adds /.well-known/est/ itself",
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| bad("the URL has no host"))?
            .as_str()
            .to_owned();
        if authority.contains('@') {
            return Err(bad("credentials do not belong in the URL; pass --token"));
        }
        let host = uri
            .host()
            .ok_or_else(|| bad("the URL has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let server_name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.clone())
                .map_err(|_| bad("the host is neither an IP address nor a DNS name"))?,
        };
        let insecure = matches!(trust, ServerTrust::InsecureBootstrap);
        let tls = Arc::new(client_config(trust, identity)?);
        Ok(Self {
            authority,
            host,
            port,
            server_name,
            tls,
            insecure,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets the limit for each request, connection and TLS handshake included.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `GET /.well-known/est/cacerts`: the gateway's CA certificate and its parents, issuing CA
    /// first.
    pub async fn cacerts(&self) -> Result<Vec<CertificateDer<'static>>, Error> {
        let body = self.call(Method::GET, "cacerts", None, None).await?;
        let certs = rxgate_certs::pkcs7::parse_certs_only(&body)?;
        Ok(rxgate_certs::order_chain(certs))
    }

    /// `POST /.well-known/est/simpleenroll` with HTTP Basic credentials (user = device id,
    /// password = the one-time token): returns the issued certificate.
    ///
    /// Refuses to send the credentials over a connection whose server was not verified.
    pub async fn simple_enroll(
        &self,
        device: &str,
        token: &str,
        csr_der: &[u8],
    ) -> Result<CertificateDer<'static>, Error> {
        if self.insecure {
            return Err(Error::BadResponse {
                detail: "refusing to send the enrollment token to an unverified server; \
                         fetch cacerts first and build the client with ServerTrust::Roots"
                    .to_owned(),
            });
        }
        let credentials = zeroize::Zeroizing::new(format!("{device}:{token}"));
        let mut auth = HeaderValue::try_from(format!("Basic {}", STANDARD.encode(&*credentials)))
            .map_err(|_| Error::BadResponse {
            detail: "the token contains characters that cannot be sent in a header".to_owned(),
        })?;
        auth.set_sensitive(true);
        let body = self
            .call(Method::POST, "simpleenroll", Some(auth), Some(csr_der))
            .await?;
        issued_certificate(&body, csr_der)
    }

    /// `POST /.well-known/est/simplereenroll`, authenticated by the client certificate this
    /// client was built with: returns the new certificate.
    pub async fn simple_reenroll(&self, csr_der: &[u8]) -> Result<CertificateDer<'static>, Error> {
        let body = self
            .call(Method::POST, "simplereenroll", None, Some(csr_der))
            .await?;
        issued_certificate(&body, csr_der)
    }

    /// Sends one EST request and returns the decoded (base64 → DER) body of a 200 answer that
    /// carries `application/pkcs7-mime`.
    async fn call(
        &self,
        method: Method,
        operation: &str,
        authorization: Option<HeaderValue>,
        csr_der: Option<&[u8]>,
    ) -> Result<Vec<u8>, Error> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{WELL_KNOWN}/{operation}"))
            .header(header::HOST, &self.authority)
            .header(
                header::USER_AGENT,
                concat!("rxgate-sim/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::ACCEPT, "application/pkcs7-mime");
        if let Some(auth) = authorization {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let body = match csr_der {
            Some(der) => {
                request = request
                    .header(header::CONTENT_TYPE, "application/pkcs10")
                    .header("content-transfer-encoding", "base64");
                Full::new(Bytes::from(rxgate_certs::base64::encode_body(der)))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(body).map_err(|e| Error::BadResponse {
            detail: format!("cannot build the request: {e}"),
        })?;

        let (status, content_type, body) =
            tokio::time::timeout(self.timeout, self.exchange(request))
                .await
                .map_err(|_| Error::Timeout {
                    addr: self.authority.clone(),
                    timeout: self.timeout,
                })??;

        if status == StatusCode::ACCEPTED {
            return Err(Error::Http {
                status: status.as_u16(),
                reason: format!(
                    "the request awaits manual approval; {}",
                    reason_text(&body).unwrap_or_else(|| "try again later".to_owned())
                ),
            });
        }
        if status != StatusCode::OK {
            return Err(Error::Http {
                status: status.as_u16(),
                reason: reason_text(&body).unwrap_or_else(|| {
                    status
                        .canonical_reason()
                        .unwrap_or("no reason given")
                        .to_owned()
                }),
            });
        }
        let content_type = content_type.unwrap_or_default();
        if !content_type
            .to_ascii_lowercase()
            .starts_with("application/pkcs7-mime")
        {
            return Err(Error::BadResponse {
                detail: format!(
                    "{operation} answered with content type {content_type:?}, not application/pkcs7-mime"
                ),
            });
        }
        Ok(rxgate_certs::base64::decode_body(&body)?)
    }

    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Option<String>, Bytes), Error> {
        let addr = || self.authority.clone();
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| Error::Connect {
                addr: addr(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|source| Error::Tls {
                addr: addr(),
                hint: tls_hint(&source),
                source,
            })?;
        let protocol = |source| Error::Protocol {
            addr: addr(),
            source,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(protocol)?;
        let driver = tokio::spawn(connection);
        let result = async {
            let response = sender.send_request(request).await.map_err(protocol)?;
            let status = response.status();
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| Error::BadResponse {
                    detail: format!("cannot read the response body: {e}"),
                })?
                .to_bytes();
            Ok((status, content_type, body))
        }
        .await;
        driver.abort();
        result
    }
}

/// The certificate in a certs-only response that certifies the CSR's key.
fn issued_certificate(pkcs7_der: &[u8], csr_der: &[u8]) -> Result<CertificateDer<'static>, Error> {
    let certs = rxgate_certs::pkcs7::parse_certs_only(pkcs7_der)?;
    let (_, csr) = X509CertificationRequest::from_der(csr_der).map_err(|e| Error::BadResponse {
        detail: format!("our own request does not parse: {e}"),
    })?;
    let spki = csr.certification_request_info.subject_pki.raw;
    certs
        .into_iter()
        .find(|cert| {
            X509Certificate::from_der(cert).is_ok_and(|(_, x509)| x509.public_key().raw == spki)
        })
        .ok_or_else(|| Error::BadResponse {
            detail: "the response holds no certificate for the key we sent".to_owned(),
        })
}

/// The server's plain-text explanation: trimmed, one line, no control characters, capped.
fn reason_text(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let cleaned: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON)
        .collect();
    (!cleaned.is_empty()).then_some(cleaned)
}

fn tls_hint(error: &std::io::Error) -> &'static str {
    let text = error.to_string();
    if text.contains("UnknownIssuer") || text.contains("invalid peer certificate") {
        "the gateway's certificate is not signed by the CA you trust: pass the gateway's CA with \
         --ca, or --insecure-bootstrap to fetch it and compare its fingerprint"
    } else if text.contains("NotValidForName") {
        "the gateway's certificate does not name the host in the URL: use the host name or IP \
         address the certificate was issued for"
    } else if text.contains("certificate required") || text.contains("CertificateRequired") {
        "the gateway wants a client certificate: renew with the current device certificate"
    } else {
        "check that the URL points to the gateway's EST port"
    }
}

#[cfg(test)]
mod tests {
    use rxgate_certs::{CertificateAuthority, DeviceProfile, KeyAlg, check_csr, new_device_csr};
    use time::macros::datetime;

    use super::*;

    #[test]
    fn new_accepts_https_host_port_and_ipv6() {
        for url in [
            "https://127.0.0.1:8443",
            "https://127.0.0.1:8443/",
            "https://rxgate.local",
            "https://[::1]:8443",
        ] {
            let client = EstClient::new(url, ServerTrust::Roots(Vec::new()), None).unwrap();
            assert!(!client.insecure, "{url}");
        }
        let client =
            EstClient::new("https://[::1]:8443", ServerTrust::Roots(Vec::new()), None).unwrap();
        assert_eq!(client.host, "::1");
        assert_eq!(client.port, 8443);
        let client =
            EstClient::new("https://rxgate.local", ServerTrust::Roots(Vec::new()), None).unwrap();
        assert_eq!(client.port, 443);
    }

    #[test]
    fn new_refuses_http_paths_and_garbage() {
        for url in [
            "http://127.0.0.1:8443",
            "https://127.0.0.1:8443/.well-known/est",
            "127.0.0.1:8443",
            "https://user:pw@127.0.0.1",
            "not a url",
        ] {
            let err = EstClient::new(url, ServerTrust::Roots(Vec::new()), None).unwrap_err();
            assert!(matches!(err, Error::Url { .. }), "{url}: {err}");
        }
    }

    #[tokio::test]
    async fn simple_enroll_refuses_to_send_a_token_to_an_unverified_server() {
        let client =
            EstClient::new("https://127.0.0.1:1", ServerTrust::InsecureBootstrap, None).unwrap();
        let err = client
            .simple_enroll("fridge-01", "t", b"csr")
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("refusing to send the enrollment token"),
            "{err}"
        );
    }

    #[test]
    fn issued_certificate_picks_the_certificate_for_our_key() {
        let now = datetime!(2025-06-01 12:00:00 UTC);
        let ca = CertificateAuthority::generate("rxgate CA test", now).unwrap();
        let (_, csr_der) = new_device_csr("fridge-01", KeyAlg::P256).unwrap();
        let profile = DeviceProfile {
            site: "store-0042".to_owned(),
            kind: "fridge".to_owned(),
            device_id: "fridge-01".to_owned(),
            validity: Duration::from_secs(86_400),
            backdate: Duration::ZERO,
            now,
        };
        let issued = ca
            .issue_device(&check_csr(&csr_der).unwrap(), &profile)
            .unwrap();
        let ca_der = CertificateDer::from(ca.cert_der().to_vec());
        let response =
            rxgate_certs::pkcs7::certs_only(&[ca_der.clone(), issued.der.clone()]).unwrap();
        assert_eq!(issued_certificate(&response, &csr_der).unwrap(), issued.der);

        let (_, other_csr) = new_device_csr("fridge-01", KeyAlg::P256).unwrap();
        let err = issued_certificate(&response, &other_csr).unwrap_err();
        assert!(
            err.to_string()
                .contains("no certificate for the key we sent"),
            "{err}"
        );
    }

    #[test]
    fn reason_text_is_one_trimmed_line() {
        assert_eq!(
            reason_text(b"  token already used\r\n").as_deref(),
            Some("token already used")
        );
        assert_eq!(reason_text(b"a\nb").as_deref(), Some("a b"));
        assert_eq!(reason_text(b" \n"), None);
        assert_eq!(
            reason_text(&[b'x'; 5000]).map(|s| s.len()),
            Some(MAX_REASON)
        );
    }
}
