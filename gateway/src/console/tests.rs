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

struct FakeBackend {
    acks: Mutex<Vec<(String, String, String)>>,
    revoked: Mutex<Vec<(String, String, String)>>,
    tokens: Mutex<Vec<(String, String, String)>>,
    /// The audit trail pages come from, as the gateway's export reads it.
    store: Store,
}

fn device(status: crate::registry::DeviceStatus) -> DeviceRecord {
    serde_json::from_value(serde_json::json!({
        "id": "fridge-01", "kind": "fridge", "status": status,
        "created_at": "2026-11-01T08:00:00Z", "serial": "01ab",
        "not_after": "2027-11-01T08:00:00Z", "last_seen": "2026-12-07T08:59:00Z",
    }))
    .unwrap()
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

const EXCURSION_START: OffsetDateTime = datetime!(2026-12-07 06:10:00 UTC);

fn excursion() -> crate::coldchain::ExcursionRecord {
    crate::coldchain::ExcursionRecord {
        kind: crate::coldchain::AlertKind::TemperatureHigh,
        severity: crate::coldchain::Severity::Warning,
        started: EXCURSION_START,
        ended: EXCURSION_START + time::Duration::seconds(4_925),
        duration_s: 4_925,
        min: 8.2,
        max: 11.37,
        mkt: Some(10.04),
        probe_in_calibration: Some(true),
    }
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
            since_check: Some(crate::coldchain::SinceCheck {
                min: 4.1,
                max: 9.4,
                current: 9.4,
                since: START - time::Duration::hours(20),
            }),
            last_check: None,
            check_due: Some(START + time::Duration::hours(1)),
            check_missed: false,
            calibration: None,
            calibration_overdue: false,
        }])
    }

    fn report(
        &self,
        device: &str,
        from: time::Date,
        to: time::Date,
    ) -> Result<crate::report::ReportData> {
        Ok(crate::report::ReportData {
            device: device.to_owned(),
            from,
            to,
            profile: Some("refrigerator".to_owned()),
            low: Some(2.0),
            high: Some(8.0),
            days: Vec::new(),
            excursions: vec![excursion()],
            samples: Vec::new(),
            checks: Vec::new(),
            reviews: vec![crate::report::ExcursionReview {
                started: EXCURSION_START,
                alert: ALERT_ID.parse().unwrap(),
                alert_state: "resolved".to_owned(),
                acknowledged_by: Some("anna".to_owned()),
                acknowledged_at: Some(START),
                note: Some("acknowledged: moved stock; signature in audit entry 12".to_owned()),
                signature: Some(crate::report::SignatureSeen {
                    signer: "anna".to_owned(),
                    roles: vec!["pharmacist".to_owned()],
                    meaning: "acknowledged".to_owned(),
                    signed_at: "2026-12-07T09:00:00Z".to_owned(),
                    record_sha256: "ab".repeat(32),
                    audit_seq: 12,
                    disposition: Some("released_after_manufacturer_consultation".to_owned()),
                    corrective_action: Some("Moved stock to fridge-02".to_owned()),
                }),
            }],
            calibration: Some(crate::coldchain::Calibration {
                certificate: "CAL-2026-117".to_owned(),
                laboratory: "Thermo Lab".to_owned(),
                calibrated_on: time::macros::date!(2026 - 01 - 10),
                due_on: time::macros::date!(2027 - 01 - 10),
            }),
        })
    }

    fn min_max_check(
        &self,
        device: &str,
        by: &str,
        _source: IpAddr,
        note: &str,
        audit_seq: Option<u64>,
    ) -> Result<crate::coldchain::history::CheckRecord> {
        Ok(crate::coldchain::history::CheckRecord {
            device: device.to_owned(),
            at: START,
            by: by.to_owned(),
            values: crate::coldchain::CheckValues {
                current: Some(9.4),
                min: Some(4.1),
                max: Some(9.4),
                since: None,
            },
            note: note.to_owned(),
            audit_seq,
        })
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

    fn devices(&self) -> Result<Vec<DeviceRecord>> {
        let status = if self.revoked.lock().unwrap().is_empty() {
            crate::registry::DeviceStatus::Active
        } else {
            crate::registry::DeviceStatus::Revoked
        };
        Ok(vec![device(status)])
    }

    fn tokens(&self) -> Result<Vec<TokenInfo>> {
        Ok(Vec::new())
    }

    fn create_token(
        &self,
        device: &str,
        kind: &str,
        by: &str,
        _source: IpAddr,
    ) -> Result<(TokenInfo, String)> {
        rxgate_certs::validate_device_id(device)?;
        rxgate_certs::validate_kind(kind)?;
        self.tokens
            .lock()
            .unwrap()
            .push((device.to_owned(), kind.to_owned(), by.to_owned()));
        let token = serde_json::from_value(serde_json::json!({
            "id": "t1", "device": device, "kind": kind, "state": "pending",
            "created_at": "2026-12-07T09:00:00Z", "expires_at": "2026-12-08T09:00:00Z",
            "failed_attempts": 0,
        }))
        .unwrap();
        Ok((token, "secret-token-value".to_owned()))
    }

    fn revoke_device(
        &self,
        id: &str,
        reason: &str,
        by: &str,
        _source: IpAddr,
    ) -> Result<DeviceRecord> {
        self.revoked
            .lock()
            .unwrap()
            .push((id.to_owned(), reason.to_owned(), by.to_owned()));
        Ok(device(crate::registry::DeviceStatus::Revoked))
    }

    fn enrollment(&self) -> Result<Enrollment> {
        Ok(Enrollment {
            est_url: Some("https://gw.example:8443/.well-known/est".to_owned()),
            ca_sha256: "ab".repeat(32),
            renewal_due: time::Duration::days(10),
        })
    }

    fn audit_page(&self, query: &AuditQuery) -> Result<AuditPage> {
        let parse = |b: &Option<String>| {
            b.as_deref().map(|t| {
                time::OffsetDateTime::parse(
                    &format!("{t}T00:00:00Z"),
                    &time::format_description::well_known::Rfc3339,
                )
                .map_err(|e| crate::Error::Invalid(e.to_string()))
            })
        };
        let range = crate::audit::ExportRange {
            from: parse(&query.from).transpose()?,
            to: parse(&query.to).transpose()?,
            after: query.after,
            until: query.until,
        };
        let mut entries = Vec::new();
        let end = crate::audit::export(&self.store, &range, query.limit as usize, |e| {
            entries.push(e);
            Ok(())
        })?;
        Ok(AuditPage {
            entries,
            next_after: end.more.then_some(end.last).flatten(),
            until: end.until,
        })
    }

    fn audit_verify(&self) -> Result<(u64, Option<(u64, String)>)> {
        let retention = crate::audit::Retention {
            now: START,
            keep: Duration::from_secs(3 * 365 * 86400),
        };
        Ok(
            match crate::audit::verify_at(&self.store, None, &[], retention)? {
                Ok(n) => (n, None),
                Err(broken) => (broken.seq - 1, Some((broken.seq, broken.reason))),
            },
        )
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
    let people = People::new(store.clone(), clock.clone(), "store-0042", &[]);
    let backend = Arc::new(FakeBackend {
        acks: Mutex::default(),
        revoked: Mutex::default(),
        tokens: Mutex::default(),
        store,
    });
    let app = Arc::new(App {
        people: people.clone(),
        backend: backend.clone(),
        sessions: Sessions::new(Duration::from_secs(900), Duration::from_secs(12 * 3600)),
        ceremonies: Default::default(),
        clock: clock.clone(),
        site: "store-0042".to_owned(),
        live_streams: Arc::default(),
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
        let expires = (role == Role::Inspector).then(|| START.date() + time::Duration::days(30));
        self.account_until(name, role, expires)
    }

    /// Like [`Console::account`], expiring after `expires` (inspectors must).
    fn account_until(
        &self,
        name: &str,
        role: Role,
        expires: Option<time::Date>,
    ) -> (String, Vec<String>) {
        let (_, link) = self.people.add(name, &[role], expires, "root").unwrap();
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

mod pages;
#[tokio::test]
async fn the_printable_excursion_report_shows_duration_peak_mkt_calibration_signature_and_disposition()
 {
    let c = console();
    let (_, codes) = c.account_until(
        "ivy",
        Role::Inspector,
        Some(time::macros::date!(2027 - 03 - 31)),
    );
    let cookie = c.sign_in("ivy", &codes[0]).await;
    let id = EXCURSION_START.unix_timestamp();
    let page = c
        .send(
            "GET",
            &format!("/excursions/fridge-01/{id}/report"),
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    for shown in [
        "<dd id=\"duration\">1 h 22 min 05 s</dd>",
        "<dd id=\"peak\">11.4 °C</dd>",
        "<dd id=\"mkt\">10.0 °C</dd>",
        "<dd id=\"in-calibration\">yes</dd>",
        "CAL-2026-117, Thermo Lab",
        "<dd id=\"signer\">anna (pharmacist)</dd>",
        "<dd id=\"meaning\">acknowledged</dd>",
        "<dd id=\"audit-seq\">12</dd>",
        "<dd id=\"disposition\">released after consulting the manufacturer</dd>",
        "<dd id=\"corrective-action\">Moved stock to fridge-02</dd>",
    ] {
        assert!(page.body.contains(shown), "{shown} in {}", page.body);
    }
    assert!(
        !page.body.contains("<script"),
        "no script on a printable page"
    );
    let missing = c
        .send(
            "GET",
            &format!("/excursions/fridge-01/{}/report", id + 1),
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    // An inspector reads reports but records no check.
    let check = c
        .send("GET", "/fridges/fridge-01/check", Some(&cookie), None)
        .await;
    assert_eq!(check.status, StatusCode::FORBIDDEN);
    let index = c.send("GET", "/fridges", Some(&cookie), None).await;
    assert_eq!(index.status, StatusCode::OK, "{}", index.body);
    assert!(index.body.contains("href=\"/fridges/fridge-01\""));
    let log = c
        .send("GET", "/fridges/fridge-01", Some(&cookie), None)
        .await;
    assert_eq!(log.status, StatusCode::OK, "{}", log.body);
    assert!(
        log.body
            .contains("released after consulting the manufacturer")
    );
    assert!(!log.body.contains("id=\"record-check\""));
    let csv = c
        .send("GET", "/fridges/fridge-01/log.csv", Some(&cookie), None)
        .await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(csv.body.starts_with("date,min_c,max_c"), "{}", csv.body);
    assert!(
        csv.headers[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"fridge-01-temperatures-")
    );
    let chart = c
        .send("GET", "/fridges/fridge-01/chart.svg", Some(&cookie), None)
        .await;
    assert_eq!(chart.status, StatusCode::OK);
    assert_eq!(chart.headers[header::CONTENT_TYPE], "image/svg+xml");
    let other = c
        .send("GET", "/fridges/fridge-99", Some(&cookie), None)
        .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_technician_signs_the_min_max_check_with_a_fresh_code_and_the_values_shown() {
    let c = console();
    let (secret, codes) = c.account("tom", Role::Technician);
    let cookie = c.sign_in("tom", &codes[0]).await;
    let form = c
        .send("GET", "/fridges/fridge-01/check", Some(&cookie), None)
        .await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    assert!(form.body.contains("4.1 to 9.4 °C"), "{}", form.body);
    // The set-up spent the current code: sign with the next one.
    c.clock.advance(Duration::from_secs(30));
    let code = totp_code(&secret, c.clock.now()).unwrap();
    let body = format!(
        "csrf={}&shown=9.4+%C2%B0C%3B4.1+%C2%B0C%3B9.4+%C2%B0C%3B-&note=display+agrees&password={}&code={code}",
        form.csrf(),
        PASSWORD.replace(' ', "+")
    );
    let done = c
        .send(
            "POST",
            "/fridges/fridge-01/check",
            Some(&cookie),
            Some(&body),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("<h1>Checked</h1>"), "{}", done.body);
    let signed = kinds(&c.people)
        .into_iter()
        .find(|(k, _, _)| *k == Kind::RecordSigned)
        .expect("a signature");
    assert_eq!(signed.1, "tom");
    assert_eq!(signed.2["meaning"], "checked");
    assert_eq!(signed.2["record"], "minmax_check");
    assert_eq!(signed.2["statement"]["note"], "display agrees");
    // Without its CSRF token the form is refused.
    let refused = c
        .send(
            "POST",
            "/fridges/fridge-01/check",
            Some(&cookie),
            Some("note=x"),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}
