//! The console's routes driven in process: sessions, CSRF, authorisation and signatures, with a
//! store in a temp dir, a manual clock and a backend that records acknowledgements.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use time::OffsetDateTime;
use time::macros::datetime;

use super::*;
use crate::audit::Kind;
use crate::clock::{Clock, ManualClock};
use crate::people::{Role, totp_code};
use crate::store::Store;

const START: OffsetDateTime = datetime!(2026-12-07 09:00:00 UTC);
const PASSWORD: &str = "fridge lamp ocean tulip";
const ALERT_ID: &str = "0193a000-0000-7000-8000-000000000001";

#[derive(Default)]
struct FakeBackend {
    acks: Mutex<Vec<(String, String, String)>>,
}

fn alert() -> Alert {
    serde_json::from_value(serde_json::json!({
        "id": ALERT_ID, "site": "store-0042", "device": "fridge-01", "kind": "temperature_high",
        "severity": "warning", "state": "raised", "active": true,
        "started": "2026-12-07T08:55:00Z", "raised_at": "2026-12-07T08:58:00Z",
        "value": 9.4, "limit": 8.0, "low": 2.0, "high": 8.0,
    }))
    .unwrap()
}

impl Backend for FakeBackend {
    fn alerts(&self, _all: bool) -> Result<Vec<Alert>> {
        let mut alert = alert();
        if let Some((_, by, note)) = self.acks.lock().unwrap().first() {
            alert.acknowledged_by = Some(by.clone());
            alert.acknowledged_at = Some(START);
            alert.ack_note = Some(note.clone());
            alert.state = crate::alerts::AlertState::Acknowledged;
        }
        Ok(vec![alert])
    }

    fn fridges(&self) -> Result<Vec<FridgeNow>> {
        Ok(vec![FridgeNow {
            device: "fridge-01".to_owned(),
            temperature: Some(9.4),
            reading_at: Some(START - time::Duration::seconds(3)),
            low: 2.0,
            high: 8.0,
            condition: "temperature_high".to_owned(),
        }])
    }

    fn acknowledge(&self, id: &str, by: &str, _source: IpAddr, note: &str) -> Result<Alert> {
        self.acks
            .lock()
            .unwrap()
            .push((id.to_owned(), by.to_owned(), note.to_owned()));
        let mut alert = alert();
        alert.state = crate::alerts::AlertState::Acknowledged;
        Ok(alert)
    }
}

struct Console {
    _dir: tempfile::TempDir,
    router: axum::Router,
    people: People,
    clock: Arc<ManualClock>,
    backend: Arc<FakeBackend>,
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Answer {
    fn cookie(&self) -> Option<String> {
        let set = self.headers.get(header::SET_COOKIE)?.to_str().ok()?;
        Some(set.split(';').next()?.to_owned())
    }

    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token");
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

fn console() -> Console {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("s.redb")).unwrap();
    let clock = ManualClock::new(START, true);
    let people = People::new(store, clock.clone(), "store-0042", &[]);
    let backend = Arc::new(FakeBackend::default());
    let app = Arc::new(App {
        people: people.clone(),
        backend: backend.clone(),
        sessions: Sessions::new(Duration::from_secs(900), Duration::from_secs(12 * 3600)),
        ceremonies: Default::default(),
        clock: clock.clone(),
        site: "store-0042".to_owned(),
    });
    Console {
        _dir: dir,
        router: views::router(app),
        people,
        clock,
        backend,
    }
}

impl Console {
    async fn send(
        &self,
        method: &str,
        path: &str,
        cookie: Option<&str>,
        form: Option<&str>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        if form.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let mut request = request
            .body(Body::from(form.unwrap_or_default().to_owned()))
            .unwrap();
        request.extensions_mut().insert(ConnInfo {
            peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
        });
        let response = tower_service::Service::call(&mut self.router.clone(), request)
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// An active account; returns its TOTP secret and recovery codes.
    fn account(&self, name: &str, role: Role) -> (String, Vec<String>) {
        let (_, link) = self.people.add(name, &[role], None, "root").unwrap();
        let token = link.url.rsplit('/').next().unwrap().to_owned();
        let offer = self.people.setup_offer(&token, START).unwrap().unwrap();
        let code = totp_code(&offer.totp_secret, START).unwrap();
        let done = self
            .people
            .redeem_setup(&token, PASSWORD, &code, START)
            .unwrap()
            .unwrap();
        (offer.totp_secret, done.recovery_codes)
    }

    /// Signs `name` in with a recovery code; returns the session cookie.
    async fn sign_in(&self, name: &str, recovery: &str) -> String {
        let page = self.send("GET", "/signin", None, None).await;
        let cookie = page.cookie().unwrap();
        let form = format!(
            "csrf={}&name={name}&password={}&code={recovery}",
            page.csrf(),
            PASSWORD.replace(' ', "+")
        );
        let signed_in = self
            .send("POST", "/signin", Some(&cookie), Some(&form))
            .await;
        assert_eq!(
            signed_in.status,
            StatusCode::SEE_OTHER,
            "{}",
            signed_in.body
        );
        signed_in.cookie().expect("a new session cookie at sign-in")
    }
}

fn kinds(people: &People) -> Vec<(Kind, String, serde_json::Value)> {
    crate::audit::entries(people.store(), 1, 10_000)
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.actor, e.detail))
        .collect()
}

#[tokio::test]
async fn every_answer_carries_the_strict_csp_nosniff_no_referrer_and_no_store() {
    let c = console();
    for path in ["/signin", "/", "/nowhere", "/assets/console.css"] {
        let answer = c.send("GET", path, None, None).await;
        let h = &answer.headers;
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP, "{path}");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer", "{path}");
        assert_eq!(h[header::CACHE_CONTROL], "no-store", "{path}");
    }
}

#[tokio::test]
async fn a_page_without_a_signed_in_session_redirects_to_sign_in() {
    let c = console();
    for path in ["/", "/alerts", &format!("/alerts/{ALERT_ID}/ack")] {
        let answer = c.send("GET", path, None, None).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(answer.headers[header::LOCATION], "/signin", "{path}");
    }
}

#[tokio::test]
async fn a_sign_in_post_without_the_sessions_csrf_token_is_refused_with_403_and_checks_nothing() {
    let c = console();
    let (_, codes) = c.account("anna", Role::Pharmacist);
    let page = c.send("GET", "/signin", None, None).await;
    let cookie = page.cookie().unwrap();
    let before = kinds(&c.people).len();
    for form in [
        format!(
            "name=anna&password={}&code={}",
            PASSWORD.replace(' ', "+"),
            codes[0]
        ),
        format!(
            "csrf={}&name=anna&password={}&code={}",
            "0".repeat(64),
            PASSWORD.replace(' ', "+"),
            codes[0]
        ),
    ] {
        let answer = c.send("POST", "/signin", Some(&cookie), Some(&form)).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{form}");
        assert!(answer.body.contains("Form expired"), "{}", answer.body);
    }
    assert_eq!(kinds(&c.people).len(), before, "no sign-in was attempted");
}

#[tokio::test]
async fn signing_in_replaces_the_session_so_the_anonymous_cookie_no_longer_works() {
    let c = console();
    let (_, codes) = c.account("anna", Role::Pharmacist);
    let page = c.send("GET", "/signin", None, None).await;
    let anonymous = page.cookie().unwrap();
    let form = format!(
        "csrf={}&name=anna&password={}&code={}",
        page.csrf(),
        PASSWORD.replace(' ', "+"),
        codes[0]
    );
    let signed_in = c
        .send("POST", "/signin", Some(&anonymous), Some(&form))
        .await;
    let cookie = signed_in.cookie().unwrap();
    assert_ne!(cookie, anonymous);
    assert_eq!(
        c.send("GET", "/", Some(&cookie), None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        c.send("GET", "/", Some(&anonymous), None).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn a_technician_gets_403_acknowledging_an_alert_and_nothing_is_signed_or_acknowledged() {
    let c = console();
    let (secret, codes) = c.account("tom", Role::Technician);
    let cookie = c.sign_in("tom", &codes[0]).await;
    let alerts = c.send("GET", "/alerts", Some(&cookie), None).await;
    assert_eq!(alerts.status, StatusCode::OK);
    let form_page = c
        .send(
            "GET",
            &format!("/alerts/{ALERT_ID}/ack"),
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(
        form_page.status,
        StatusCode::FORBIDDEN,
        "{}",
        form_page.body
    );
    c.clock.advance(Duration::from_secs(30));
    let code = totp_code(&secret, c.clock.now()).unwrap();
    let form = format!(
        "csrf={}&meaning=acknowledged&note=moved&disposition=quarantined&password={}&code={code}",
        alerts.csrf(),
        PASSWORD.replace(' ', "+")
    );
    let answer = c
        .send(
            "POST",
            &format!("/alerts/{ALERT_ID}/ack"),
            Some(&cookie),
            Some(&form),
        )
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    assert!(c.backend.acks.lock().unwrap().is_empty());
    assert!(
        !kinds(&c.people)
            .iter()
            .any(|(k, _, _)| *k == Kind::RecordSigned)
    );
}

#[tokio::test]
async fn a_pharmacist_signs_an_alert_and_the_audit_trail_holds_the_signature_over_the_alerts_hash()
{
    let c = console();
    let (secret, codes) = c.account("anna", Role::Pharmacist);
    let cookie = c.sign_in("anna", &codes[0]).await;
    let page = c
        .send(
            "GET",
            &format!("/alerts/{ALERT_ID}/ack"),
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("name=\"disposition\""),
        "a cold-chain alert asks for the products' disposition"
    );
    c.clock.advance(Duration::from_secs(30));
    let code = totp_code(&secret, c.clock.now()).unwrap();
    let form = format!(
        "csrf={}&meaning=acknowledged&note=Moved+stock+to+fridge-02&disposition=quarantined&password={}&code={code}",
        page.csrf(),
        PASSWORD.replace(' ', "+")
    );
    let answer = c
        .send(
            "POST",
            &format!("/alerts/{ALERT_ID}/ack"),
            Some(&cookie),
            Some(&form),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let expected_hash = crate::people::canonical_sha256(&serde_json::to_value(alert()).unwrap());
    assert!(answer.body.contains(&expected_hash));
    let entries = kinds(&c.people);
    let (_, actor, detail) = entries
        .iter()
        .find(|(k, _, _)| *k == Kind::RecordSigned)
        .expect("a record.signed entry");
    assert_eq!(actor, "anna");
    assert_eq!(detail["signer"], "anna");
    assert_eq!(detail["roles"], serde_json::json!(["pharmacist"]));
    assert_eq!(detail["meaning"], "acknowledged");
    assert_eq!(detail["record"], "alert");
    assert_eq!(detail["record_id"], ALERT_ID);
    assert_eq!(detail["record_sha256"], expected_hash.as_str());
    assert_eq!(detail["statement"]["disposition"], "quarantined");
    assert_eq!(detail["signed_at"], "2026-12-07T09:00:30Z");
    let acks = c.backend.acks.lock().unwrap().clone();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].0, ALERT_ID);
    assert_eq!(acks[0].1, "anna");
    assert!(acks[0].2.starts_with("acknowledged: Moved stock to fridge-02; products quarantined; signature in audit entry "), "{}", acks[0].2);
}

#[tokio::test]
async fn a_signature_with_a_replayed_code_is_refused_and_the_alert_stays_unacknowledged() {
    let c = console();
    let (secret, codes) = c.account("anna", Role::Pharmacist);
    let cookie = c.sign_in("anna", &codes[0]).await;
    let page = c
        .send(
            "GET",
            &format!("/alerts/{ALERT_ID}/ack"),
            Some(&cookie),
            None,
        )
        .await;
    // The code set-up confirmed, at this same step: a replay.
    let code = totp_code(&secret, c.clock.now()).unwrap();
    let form = format!(
        "csrf={}&meaning=acknowledged&note=x&disposition=discarded&password={}&code={code}",
        page.csrf(),
        PASSWORD.replace(' ', "+")
    );
    let answer = c
        .send(
            "POST",
            &format!("/alerts/{ALERT_ID}/ack"),
            Some(&cookie),
            Some(&form),
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
    assert!(c.backend.acks.lock().unwrap().is_empty());
}

#[tokio::test]
async fn signing_out_ends_the_session_and_is_audited() {
    let c = console();
    let (_, codes) = c.account("anna", Role::Pharmacist);
    let cookie = c.sign_in("anna", &codes[0]).await;
    let page = c.send("GET", "/", Some(&cookie), None).await;
    assert!(page.body.contains("fridge-fridge-01"), "{}", page.body);
    let out = c
        .send(
            "POST",
            "/signout",
            Some(&cookie),
            Some(&format!("csrf={}", page.csrf())),
        )
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(
        c.send("GET", "/", Some(&cookie), None).await.status,
        StatusCode::SEE_OTHER
    );
    let entries = kinds(&c.people);
    let (_, actor, detail) = entries.last().unwrap();
    assert_eq!(
        (entries.last().unwrap().0, actor.as_str()),
        (Kind::UserSignedOut, "anna")
    );
    assert_eq!(detail["reason"], "signed_out");
}

#[tokio::test]
async fn a_request_body_over_16_kib_is_refused_with_413_before_any_check() {
    let c = console();
    let page = c.send("GET", "/signin", None, None).await;
    let cookie = page.cookie().unwrap();
    let form = format!(
        "csrf={}&name=anna&password={}&code=1",
        page.csrf(),
        "x".repeat(MAX_BODY)
    );
    let answer = c.send("POST", "/signin", Some(&cookie), Some(&form)).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(kinds(&c.people).is_empty(), "no sign-in was attempted");
}

#[tokio::test]
async fn a_session_left_idle_for_15_minutes_ends_and_its_end_is_audited_as_idle() {
    let c = console();
    let (_, codes) = c.account("anna", Role::Pharmacist);
    let cookie = c.sign_in("anna", &codes[0]).await;
    c.clock.advance(Duration::from_secs(15 * 60));
    let answer = c.send("GET", "/", Some(&cookie), None).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(answer.headers[header::LOCATION], "/signin");
    let entries = kinds(&c.people);
    let (kind, actor, detail) = entries.last().unwrap();
    assert_eq!((*kind, actor.as_str()), (Kind::UserSignedOut, "anna"));
    assert_eq!(detail["reason"], "idle");
}
