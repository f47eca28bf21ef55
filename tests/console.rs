//! The pharmacy console end to end, in headless Chromium (Selenium, tests/browser/console.py)
//! against the real `rxgate run`:
//! - a pharmacist sets up, signs in, sees a failing simulated fridge and acknowledges its
//!   cold-chain alert with an electronic signature; a technician is refused;
//! - an admin adds an account, an installer creates a token and revokes a device with a
//!   signature while a technician is refused, an inspector reads and exports the audit trail and
//!   may change nothing, a stolen session cookie stops working after sign-out and after the idle
//!   limit; then, with the gateway's clock past the inspector's last day, their sign-in is
//!   refused, and ten wrong passwords lock an account.
//!
//! axe-core checks every page for serious and critical accessibility violations. The audit trail
//! is read with the CLI. Screenshots of every page go to `<target>/console-screenshots/`.

use std::time::Duration;

use rxgate_e2e::{
    Gateway, browser_test, curl, failing_fridge, fridge_device_config, screenshots, text,
};

/// Runs tests/browser/console.py with `args` (a scenario and its options) against `gw`.
fn browser(gw: &Gateway, args: &[&str]) -> serde_json::Value {
    browser_test(gw, "console.py", args)
}

fn setup_link(gw: &Gateway, name: &str, role: &str) -> String {
    setup_link_with(gw, name, &["--role", role])
}

fn setup_link_with(gw: &Gateway, name: &str, args: &[&str]) -> String {
    let link = gw.cli_ok(&[&["user", "add", name], args].concat());
    let link = link.trim().to_owned();
    assert!(
        link.starts_with("https://localhost:")
            && link.contains(&format!(":{}/setup/", gw.console.port())),
        "the set-up link names the console's port {}: {link}",
        gw.console.port()
    );
    link
}

fn audit(gw: &Gateway) -> Vec<serde_json::Value> {
    serde_json::from_str(&gw.cli_ok(&["audit", "export"])).expect("audit export is JSON")
}

#[test]
fn a_pharmacist_sets_up_signs_in_sees_the_warm_fridge_and_signs_its_alert_while_a_technician_is_refused()
 {
    let (_fridge, fridge_port) = failing_fridge();
    let gw = Gateway::start(&fridge_device_config(fridge_port));
    let base = format!("https://{}", gw.console);
    let anna = setup_link(&gw, "anna", "pharmacist");
    let tom = setup_link(&gw, "tom", "technician");

    // A form posted without its session's CSRF token is refused before anything is checked.
    let jar = gw.dir.path().join("cookies");
    let jar = jar.to_str().unwrap();
    let page = curl(gw.dir.path(), &["-k", "-c", jar, &format!("{base}/signin")]);
    assert_eq!(page.status, 200);
    assert!(
        page.headers
            .to_lowercase()
            .contains("set-cookie: __host-rxgate_session="),
        "{}",
        page.headers
    );
    let refused = curl(
        gw.dir.path(),
        &[
            "-k",
            "-b",
            jar,
            "--data",
            "name=anna&password=x&code=123456",
            &format!("{base}/signin"),
        ],
    );
    assert_eq!(refused.status, 403, "{}", refused.body_text());

    let shots = screenshots();
    let seen = browser(
        &gw,
        &[
            "pharmacist",
            "--base",
            &base,
            "--anna",
            &anna,
            "--tom",
            &tom,
        ],
    );
    assert_eq!(seen["recovery_codes"], 10);
    assert!(
        seen["overview_row"].as_str().unwrap().contains("°C"),
        "{seen}"
    );
    assert!(
        seen["live"].as_str().unwrap().starts_with("Live: updated"),
        "{seen}"
    );
    assert_eq!(seen["alert_state"], "acknowledged", "{seen}");
    assert_eq!(seen["technician_ack_heading"], "Not allowed", "{seen}");
    for page in [
        "01-setup",
        "01-recovery-codes",
        "02-signin",
        "03-overview",
        "04-alerts",
        "05-ack-form",
        "06-signed",
        "07-signed-out",
        "08-technician-refused",
    ] {
        assert!(
            shots.join(format!("{page}.png")).is_file(),
            "screenshot {page}"
        );
    }

    let alerts: Vec<serde_json::Value> =
        serde_json::from_str(&gw.cli_ok(&["alerts", "list", "--all", "--json"])).unwrap();
    let alert = alerts
        .iter()
        .find(|a| {
            seen["ack_url"]
                .as_str()
                .unwrap()
                .contains(a["id"].as_str().unwrap())
        })
        .expect("the signed alert");
    assert_eq!(alert["kind"], "temperature_high");
    assert_eq!(alert["acknowledged_by"], "anna");

    let trail = audit(&gw);
    let signature = trail
        .iter()
        .find(|e| e["kind"] == "record.signed")
        .expect("a record.signed entry");
    assert_eq!(signature["seq"], seen["audit_seq"]);
    assert_eq!(signature["actor"], "anna");
    assert_eq!(signature["source"], "127.0.0.1");
    let detail = &signature["detail"];
    assert_eq!(detail["signer"], "anna");
    assert_eq!(detail["roles"], serde_json::json!(["pharmacist"]));
    assert_eq!(detail["meaning"], "acknowledged");
    assert_eq!(detail["record"], "alert");
    assert_eq!(detail["record_id"], alert["id"]);
    assert_eq!(detail["record_sha256"], seen["record_sha256"]);
    assert_eq!(detail["record_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(detail["statement"]["disposition"], "quarantined");
    let ack = trail
        .iter()
        .find(|e| e["kind"] == "alert.acknowledged")
        .expect("an alert.acknowledged entry");
    assert_eq!(ack["actor"], "anna");
    for (kind, actor) in [
        ("user.signed_in", "anna"),
        ("user.signed_out", "anna"),
        ("user.signed_in", "tom"),
    ] {
        assert!(
            trail
                .iter()
                .any(|e| e["kind"] == kind && e["actor"] == actor),
            "{kind} by {actor} in the audit trail"
        );
    }
    let verified = gw.cli(&["audit", "verify"]);
    assert!(
        verified.status.success(),
        "rxgate audit verify: {}",
        text(&verified)
    );
}

/// Debian's libfaketime (package `libfaketime`, pulled in by `faketime`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[test]
fn installers_revoke_technicians_are_refused_inspectors_only_read_and_sessions_end_at_sign_out_idle_and_expiry()
 {
    const IDLE_SECS: u64 = 6;
    let mut gw = Gateway::start(&format!("[console]\nidle_timeout = \"{IDLE_SECS}s\"\n"));
    let device = "fridge-05";
    gw.enroll_with_sim(device, "fridge");
    let base = format!("https://localhost:{}", gw.console.port());
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let links = [
        setup_link(&gw, "ada", "admin"),
        setup_link(&gw, "ines", "installer"),
        setup_link(&gw, "tom", "technician"),
        setup_link_with(&gw, "ivy", &["--role", "inspector", "--expires", &today]),
    ];
    let idle = IDLE_SECS.to_string();
    let seen = browser(
        &gw,
        &[
            "roles", "--base", &base, "--ada", &links[0], "--ines", &links[1], "--tom", &links[2],
            "--ivy", &links[3], "--device", device, "--idle", &idle,
        ],
    );
    // The admin's new account.
    assert!(
        seen["paula_link"].as_str().unwrap().contains("/setup/"),
        "{seen}"
    );
    let users: Vec<serde_json::Value> =
        serde_json::from_str(&gw.cli_ok(&["user", "list", "--json"])).unwrap();
    let paula = users.iter().find(|u| u["name"] == "paula").expect("paula");
    assert_eq!(paula["roles"], serde_json::json!(["pharmacist"]));
    assert_eq!(paula["created_by"], "ada");
    // The technician: no revoke link, 403 on the form.
    assert_eq!(seen["technician_revoke_links"], 0);
    assert_eq!(seen["technician_revoke_heading"], "Not allowed");
    // The installer's token, shown once with a QR code, and the revocation.
    assert_eq!(seen["token_qr"], 1);
    assert!(
        seen["token_est_url"]
            .as_str()
            .unwrap()
            .ends_with("/.well-known/est")
    );
    let tokens = gw.cli_ok(&["token", "list", "--json"]);
    assert!(tokens.contains("fridge-07"), "{tokens}");
    assert!(
        !tokens.contains(seen["token_secret"].as_str().unwrap()),
        "the secret is never listed"
    );
    let devices: Vec<serde_json::Value> =
        serde_json::from_str(&gw.cli_ok(&["device", "list", "--json"])).unwrap();
    let revoked = devices.iter().find(|d| d["id"] == device).unwrap();
    assert_eq!(revoked["status"], "revoked", "{revoked}");
    assert_eq!(revoked["revoked"]["by"], "ines");
    assert!(
        revoked["revoked"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("Replaced after a probe fault")
    );
    let trail = audit(&gw);
    let signature = trail
        .iter()
        .find(|e| e["seq"] == seen["revoke_audit_seq"])
        .expect("the revocation's signature entry");
    assert_eq!(signature["kind"], "record.signed");
    assert_eq!(signature["actor"], "ines");
    assert_eq!(signature["detail"]["meaning"], "revoked");
    assert_eq!(signature["detail"]["record_id"], device);
    assert!(
        trail
            .iter()
            .any(|e| e["kind"] == "device.revoked" && e["actor"] == "ines"),
        "device.revoked by ines"
    );
    // The inspector: lands on the audit trail, reads and exports it, changes nothing.
    assert!(
        seen["inspector_home"].as_str().unwrap().ends_with("/audit"),
        "{seen}"
    );
    assert!(
        seen["audit_verification"]
            .as_str()
            .unwrap()
            .starts_with("Intact"),
        "{seen}"
    );
    assert_eq!(seen["audit_actors"], serde_json::json!(["ines"]));
    assert!(
        seen["audit_kinds"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("device.revoked"))
    );
    assert_eq!(seen["export_status"], 200);
    let csv = seen["export_csv"].as_str().unwrap();
    let mut rows = csv.lines();
    assert_eq!(
        rows.next(),
        Some("seq,ts,kind,actor,device,source,clock_synced,prev,detail")
    );
    let rows: Vec<&str> = rows.collect();
    assert!(
        rows.iter().any(|r| r.contains(",device.revoked,ines,")),
        "{csv}"
    );
    assert!(
        rows.iter().all(|r| r.contains(",ines,")),
        "only ines: {csv}"
    );
    for page in [
        "/devices",
        "/users",
        &format!("/devices/{device}/revoke") as &str,
    ] {
        assert_eq!(seen["inspector_headings"][page], "Not allowed", "{page}");
    }
    // Stolen cookies: good before, useless after sign-out and after the idle limit.
    assert_eq!(seen["stolen_before"], 200);
    assert_eq!(seen["stolen_after_sign_out"], 303);
    assert_eq!(seen["idle_before"], 200);
    assert_eq!(seen["stolen_after_idle"], 303);
    for page in [
        "10-users",
        "11-user-link",
        "12-technician-revoke-refused",
        "13-devices",
        "14-token",
        "15-revoke-form",
        "16-revoked",
        "17-audit",
        "18-inspector-refused",
    ] {
        assert!(
            screenshots().join(format!("{page}.png")).is_file(),
            "screenshot {page}"
        );
    }

    // Two days later (the gateway's clock, under libfaketime, running 60 times fast so the
    // sign-in delays pass quickly) the inspector's account has expired.
    assert!(gw.stop());
    // Sessions long enough for a form at 60 times the speed.
    let config = std::fs::read_to_string(&gw.config).unwrap();
    let config = config.replace(
        &format!("idle_timeout = \"{IDLE_SECS}s\""),
        "idle_timeout = \"2h\"",
    );
    assert!(config.contains("idle_timeout = \"2h\""), "{config}");
    std::fs::write(&gw.config, config).unwrap();
    gw.spawn_with_env(
        "debug",
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME", "+2d x60"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let base = format!("https://localhost:{}", gw.console.port());
    let code = seen["ivy_codes"][0].as_str().unwrap().to_owned();
    let expired = browser(
        &gw,
        &["expired", "--base", &base, "--name", "ivy", "--code", &code],
    );
    assert_eq!(expired["expired_heading"], "Sign in", "{expired}");
    let trail = audit(&gw);
    let refusal = trail
        .iter()
        .rev()
        .find(|e| e["kind"] == "user.sign_in_refused" && e["detail"]["user"] == "ivy")
        .expect("ivy's refused sign-in");
    assert_eq!(
        refusal["detail"]["reason"], "the account has expired",
        "{refusal}"
    );

    // Ten wrong passwords lock tom's account; the right one is then refused too.
    let jar = gw.path("tom-cookies");
    let jar = jar.to_str().unwrap();
    let mut counted = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while counted < 10 {
        assert!(std::time::Instant::now() < deadline, "ten sign-ins in 60 s");
        let page = curl(
            gw.dir.path(),
            &["-k", "-c", jar, "-b", jar, &format!("{base}/signin")],
        );
        let csrf = csrf_of(&page.body_text());
        let answer = curl(
            gw.dir.path(),
            &[
                "-k",
                "-c",
                jar,
                "-b",
                jar,
                "--data",
                &format!("csrf={csrf}&name=tom&password=wrong+password+{counted}&code=000000"),
                &format!("{base}/signin"),
            ],
        );
        match answer.status {
            401 => counted += 1,
            // Slowed down: wait (the gateway's clock runs 60 times fast).
            429 => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("sign-in answered {other}: {}", answer.body_text()),
        }
    }
    let users: Vec<serde_json::Value> =
        serde_json::from_str(&gw.cli_ok(&["user", "list", "--json"])).unwrap();
    let tom = users.iter().find(|u| u["name"] == "tom").unwrap();
    assert_eq!(tom["state"], "locked", "{tom}");
    let trail = audit(&gw);
    assert!(
        trail.iter().any(|e| e["kind"] == "user.locked"),
        "the lock is audited"
    );
}

/// The CSRF token of the form on `page`.
fn csrf_of(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let at = page.find(marker).expect("a form with a CSRF token") + marker.len();
    page[at..][..page[at..].find('"').unwrap()].to_owned()
}
