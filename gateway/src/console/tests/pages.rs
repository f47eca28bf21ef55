//! The devices, audit and users pages, driven in process: who may see and change what, the
//! revocation signature, the token shown once with its QR code, the audit filters and exports.

use super::*;

async fn get(c: &Console, path: &str, cookie: &str) -> Answer {
    c.send("GET", path, Some(cookie), None).await
}

/// A form posted with the CSRF token of the page at `form_page`.
async fn post(c: &Console, form_page: &str, path: &str, cookie: &str, fields: &str) -> Answer {
    let page = get(c, form_page, cookie).await;
    assert_eq!(page.status, StatusCode::OK, "{form_page}: {}", page.body);
    let form = format!("csrf={}&{fields}", page.csrf());
    c.send("POST", path, Some(cookie), Some(&form)).await
}

#[tokio::test]
async fn a_technician_sees_the_devices_but_gets_403_revoking_one_and_creating_a_token() {
    let c = console();
    let (_, codes) = c.account("tom", Role::Technician);
    let cookie = c.sign_in("tom", &codes[0]).await;
    let list = get(&c, "/devices", &cookie).await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(
        list.body.contains("id=\"device-fridge-01\""),
        "{}",
        list.body
    );
    assert!(
        !list.body.contains("/revoke\""),
        "no revoke link for a technician"
    );
    assert!(!list.body.contains("action=\"/devices/enroll\""));
    let form = get(&c, "/devices/fridge-01/revoke", &cookie).await;
    assert_eq!(form.status, StatusCode::FORBIDDEN);
    let csrf = list.csrf();
    let revoke = c
        .send(
            "POST",
            "/devices/fridge-01/revoke",
            Some(&cookie),
            Some(&format!("csrf={csrf}&reason=stolen&password=x&code=123456")),
        )
        .await;
    assert_eq!(revoke.status, StatusCode::FORBIDDEN, "{}", revoke.body);
    let token = c
        .send(
            "POST",
            "/devices/enroll",
            Some(&cookie),
            Some(&format!("csrf={csrf}&device=fridge-09&kind=fridge")),
        )
        .await;
    assert_eq!(token.status, StatusCode::FORBIDDEN);
    assert!(c.backend.revoked.lock().unwrap().is_empty());
    assert!(c.backend.tokens.lock().unwrap().is_empty());
    assert!(
        !kinds(&c.people)
            .iter()
            .any(|(k, _, _)| *k == Kind::RecordSigned),
        "nothing signed"
    );
}

#[tokio::test]
async fn an_installer_revokes_a_device_with_a_reason_signed_by_password_and_a_new_code() {
    let c = console();
    let (secret, codes) = c.account("ines", Role::Installer);
    let cookie = c.sign_in("ines", &codes[0]).await;
    // The code set-up used is a replay: refused, nothing revoked.
    let replay = totp_code(&secret, c.clock.now()).unwrap();
    let pw = PASSWORD.replace(' ', "+");
    let refused = post(
        &c,
        "/devices/fridge-01/revoke",
        "/devices/fridge-01/revoke",
        &cookie,
        &format!("reason=lost&password={pw}&code={replay}"),
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    assert!(c.backend.revoked.lock().unwrap().is_empty());
    // No reason: refused before anything is checked.
    let no_reason = post(
        &c,
        "/devices/fridge-01/revoke",
        "/devices/fridge-01/revoke",
        &cookie,
        &format!("reason=+&password={pw}&code=000000"),
    )
    .await;
    assert_eq!(no_reason.status, StatusCode::BAD_REQUEST);

    c.clock.advance(Duration::from_secs(30));
    let code = totp_code(&secret, c.clock.now()).unwrap();
    let done = post(
        &c,
        "/devices/fridge-01/revoke",
        "/devices/fridge-01/revoke",
        &cookie,
        &format!("reason=Stolen+from+the+stock+room&password={pw}&code={code}"),
    )
    .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("Device revoked"));
    let revoked = c.backend.revoked.lock().unwrap().clone();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].0, "fridge-01");
    assert_eq!(revoked[0].2, "ines");
    assert!(
        revoked[0]
            .1
            .starts_with("Stolen from the stock room (signature in audit entry ")
    );
    let entries = kinds(&c.people);
    let (_, actor, detail) = entries
        .iter()
        .find(|(k, _, _)| *k == Kind::RecordSigned)
        .expect("the revocation's signature");
    assert_eq!(actor, "ines");
    assert_eq!(detail["meaning"], "revoked");
    assert_eq!(detail["record"], "device");
    assert_eq!(detail["record_id"], "fridge-01");
    assert_eq!(detail["statement"]["reason"], "Stolen from the stock room");
}

#[tokio::test]
async fn an_installer_creates_a_token_shown_once_with_a_qr_code_and_a_bad_device_id_is_explained() {
    let c = console();
    let (_, codes) = c.account("ines", Role::Installer);
    let cookie = c.sign_in("ines", &codes[0]).await;
    let page = post(
        &c,
        "/devices",
        "/devices/enroll",
        &cookie,
        "device=fridge-09&kind=fridge",
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("secret-token-value"));
    assert!(
        page.body
            .contains("https://gw.example:8443/.well-known/est")
    );
    assert!(page.body.contains(&"ab".repeat(32)));
    let svg = page.body.find("<svg").expect("an inline QR code");
    assert!(
        !page.body.contains("<?xml"),
        "no XML declaration inside HTML"
    );
    assert!(page.body[svg..].contains("<path"), "the QR code's modules");
    assert_eq!(
        c.backend.tokens.lock().unwrap().clone(),
        vec![(
            "fridge-09".to_owned(),
            "fridge".to_owned(),
            "ines".to_owned()
        )]
    );
    let payload = views::devices::enrollment_payload("https://e", "fridge-09", "fridge", "s", "ff");
    let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(payload["token"], "s");
    assert_eq!(payload["ca_sha256"], "ff");

    let bad = post(
        &c,
        "/devices",
        "/devices/enroll",
        &cookie,
        "device=Fridge+9!&kind=fridge",
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert!(bad.body.contains("id=\"error\""), "{}", bad.body);
}

#[tokio::test]
async fn the_audit_page_filters_by_person_and_kind_and_exports_exactly_the_filtered_entries() {
    let c = console();
    let (_, codes) = c.account("anna", Role::Pharmacist);
    let (_, tom_codes) = c.account("tom", Role::Technician);
    let cookie = c.sign_in("anna", &codes[0]).await;
    let _tom = c.sign_in("tom", &tom_codes[0]).await;

    let page = get(&c, "/audit?person=tom", &cookie).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Intact: all "), "{}", page.body);
    assert!(page.body.contains("class=\"actor\">tom<"));
    assert!(!page.body.contains("class=\"actor\">anna<"));
    let prefix = get(&c, "/audit?kind=user.", &cookie).await;
    assert!(prefix.body.contains("user.signed_in"));
    assert!(prefix.body.contains("user.added"), "{}", prefix.body);
    let exact = get(&c, "/audit?kind=user.signed_in", &cookie).await;
    assert!(!exact.body.contains("user.added"));

    let csv = get(&c, "/audit/export.csv?kind=user.signed_in", &cookie).await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(
        csv.headers[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .contains("rxgate-store-0042-audit-")
    );
    let mut reader = ::csv::Reader::from_reader(csv.body.as_bytes());
    let rows: Vec<::csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 2, "{}", csv.body);
    assert!(rows.iter().all(|r| &r[2] == "user.signed_in"));
    let json = get(&c, "/audit/export.json?person=anna", &cookie).await;
    let entries: Vec<serde_json::Value> = serde_json::from_str(&json.body).unwrap();
    assert!(!entries.is_empty());
    assert!(entries.iter().all(|e| e["actor"] == "anna"));

    // Across pages of two entries, the scan sees every entry once, in order.
    let filters = views::audit::Filters::default();
    let mut seen = Vec::new();
    let matched = views::audit::scan(c.backend.as_ref(), &filters, 2, |e| {
        seen.push(e.seq);
        Ok(())
    })
    .unwrap();
    let all = crate::audit::entries(c.people.store(), 1, 10_000).unwrap();
    assert_eq!(matched as usize, all.len());
    assert_eq!(seen, all.iter().map(|e| e.seq).collect::<Vec<_>>());
}

#[tokio::test]
async fn an_inspector_starts_on_the_audit_trail_and_may_change_nothing() {
    let c = console();
    let (_, codes) = c.account("ivy", Role::Inspector);
    let cookie = c.sign_in("ivy", &codes[0]).await;
    let home = get(&c, "/", &cookie).await;
    assert_eq!(home.status, StatusCode::SEE_OTHER);
    assert_eq!(home.headers[header::LOCATION], "/audit");
    let audit = get(&c, "/audit", &cookie).await;
    assert_eq!(audit.status, StatusCode::OK);
    assert!(!audit.body.contains("href=\"/users\""), "no users link");
    let csrf = audit.csrf();
    for (path, form) in [
        ("/devices/enroll", "device=fridge-09&kind=fridge"),
        ("/devices/fridge-01/revoke", "reason=x&password=x&code=1"),
        ("/users/add", "name=eve&role_admin=on"),
        ("/users/anna/disable", ""),
        (
            &format!("/alerts/{ALERT_ID}/ack") as &str,
            "meaning=acknowledged&note=x",
        ),
    ] {
        let answer = c
            .send(
                "POST",
                path,
                Some(&cookie),
                Some(&format!("csrf={csrf}&{form}")),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{path}: {}",
            answer.body
        );
    }
    assert_eq!(
        get(&c, "/users", &cookie).await.status,
        StatusCode::FORBIDDEN
    );
    assert!(c.backend.tokens.lock().unwrap().is_empty());
    assert!(c.backend.revoked.lock().unwrap().is_empty());
    assert!(c.backend.acks.lock().unwrap().is_empty());
    assert_eq!(c.people.list().unwrap().len(), 1, "no account added");
}

#[tokio::test]
async fn an_admin_adds_an_account_whose_link_is_shown_once_then_disables_it_under_their_name() {
    let c = console();
    let (_, codes) = c.account("root-admin", Role::Admin);
    let cookie = c.sign_in("root-admin", &codes[0]).await;
    let added = post(
        &c,
        "/users",
        "/users/add",
        &cookie,
        "name=paula&role_pharmacist=on&role_technician=on&expires=",
    )
    .await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);
    assert!(added.body.contains("/setup/"), "{}", added.body);
    let paula = c.people.account("paula").unwrap().expect("paula exists");
    assert_eq!(paula.roles(), vec![Role::Pharmacist, Role::Technician]);
    // An inspector without an end date is refused, with the reason.
    let inspector = post(
        &c,
        "/users",
        "/users/add",
        &cookie,
        "name=ivy&role_inspector=on",
    )
    .await;
    assert_eq!(inspector.status, StatusCode::BAD_REQUEST);
    assert!(inspector.body.contains("expires"), "{}", inspector.body);
    let disabled = post(&c, "/users", "/users/paula/disable", &cookie, "").await;
    assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.body);
    let list = c.people.list().unwrap();
    let paula = list.iter().find(|u| u.name == "paula").unwrap();
    assert_eq!(paula.state, "disabled");
    let entries = kinds(&c.people);
    assert!(
        entries
            .iter()
            .any(|(k, actor, _)| *k == Kind::UserAdded && actor == "root-admin"),
        "{entries:?}"
    );
    assert!(
        entries
            .iter()
            .any(|(k, actor, _)| *k == Kind::UserDisabled && actor == "root-admin")
    );
}

/// The live stream of `cookie`'s session: its answer, with the body left to read.
async fn live(c: &Console, cookie: &str) -> axum::response::Response {
    let mut request = Request::builder()
        .uri("/events")
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap();
    request.extensions_mut().insert(ConnInfo {
        peer: SocketAddr::from(([127, 0, 0, 1], 40001)),
    });
    tower_service::Service::call(&mut c.router.clone(), request)
        .await
        .unwrap()
}

async fn next_event(body: &mut Body) -> Option<String> {
    let frame = tokio::time::timeout(Duration::from_secs(60), body.frame())
        .await
        .expect("the stream answers within a minute")?;
    Some(String::from_utf8_lossy(&frame.unwrap().into_data().unwrap()).into_owned())
}

#[tokio::test(start_paused = true)]
async fn live_updates_stream_the_fridges_and_end_with_the_session_which_they_do_not_keep_alive() {
    let c = console();
    let (_, codes) = c.account("anna", Role::Pharmacist);
    let cookie = c.sign_in("anna", &codes[0]).await;
    let answer = live(&c, &cookie).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = answer.into_body();
    let first = next_event(&mut body).await.expect("a first update at once");
    assert!(first.starts_with("event: fridges\ndata: {"), "{first}");
    assert!(first.contains("\"device\":\"fridge-01\""), "{first}");
    assert!(
        first.contains("9.4 °C") && first.contains("too warm"),
        "{first}"
    );
    assert!(first.contains("\"open_alerts\":1"), "{first}");
    // Ten minutes of updates alone: the session is not used, so it ends at its idle limit.
    for _ in 0..2 {
        c.clock.advance(Duration::from_secs(5 * 60));
        assert!(next_event(&mut body).await.is_some());
    }
    c.clock.advance(Duration::from_secs(6 * 60));
    assert!(
        next_event(&mut body).await.is_none(),
        "the stream ends with the session"
    );
    let page = get(&c, "/", &cookie).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "the session ended idle");
}

#[tokio::test]
async fn at_most_sixteen_live_streams_run_at_once_and_an_anonymous_one_is_sent_to_sign_in() {
    let c = console();
    let anonymous = c.send("GET", "/events", None, None).await;
    assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
    let (_, codes) = c.account("anna", Role::Pharmacist);
    let cookie = c.sign_in("anna", &codes[0]).await;
    let mut open = Vec::new();
    for _ in 0..16 {
        let answer = live(&c, &cookie).await;
        assert_eq!(answer.status(), StatusCode::OK);
        open.push(answer);
    }
    assert_eq!(
        live(&c, &cookie).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    drop(open);
    // A closed stream gives its place back once its task sees the browser gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if live(&c, &cookie).await.status() == StatusCode::OK {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "places given back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
