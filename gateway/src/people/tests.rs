use std::net::IpAddr;
use std::sync::Arc;

use time::macros::{date, datetime};
use time::{Duration as TimeDelta, OffsetDateTime};

use super::*;
use crate::clock::ManualClock;

const START: OffsetDateTime = datetime!(2026-05-01 09:00:00 UTC);
const PASSWORD: &str = "fridge lamp ocean tulip";

fn people() -> (tempfile::TempDir, People, Arc<ManualClock>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("s.redb")).unwrap();
    let clock = ManualClock::new(START, true);
    let people = People::new(
        store,
        clock.clone(),
        "store-0042",
        &["rx.example".to_owned()],
    );
    (dir, people, clock)
}

fn token_of(link: &SetupLink) -> String {
    link.url.rsplit('/').next().unwrap().to_owned()
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// An account set up at START with PASSWORD; returns its TOTP secret and recovery codes.
fn active(people: &People, name: &str, roles: &[Role]) -> (String, Vec<String>) {
    let (_, link) = people.add(name, roles, None, "root").unwrap();
    let token = token_of(&link);
    let offer = people.setup_offer(&token, START).unwrap().unwrap();
    let code = totp_code(&offer.totp_secret, START).unwrap();
    let done = people
        .redeem_setup(&token, PASSWORD, &code, START)
        .unwrap()
        .unwrap();
    (offer.totp_secret, done.recovery_codes)
}

fn audit_kinds(people: &People) -> Vec<(Kind, String, serde_json::Value)> {
    crate::audit::entries(people.store(), 1, 10_000)
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.actor, e.detail))
        .collect()
}

fn sign_in(
    people: &People,
    name: &str,
    password: &str,
    factor: SecondFactor,
    at: OffsetDateTime,
) -> std::result::Result<Identity, SignInError> {
    people.verify_sign_in(name, password, &factor, ip(1), at)
}

#[test]
fn a_new_store_has_no_account_and_add_creates_a_pending_one_with_a_24_hour_link() {
    let (_dir, people, _) = people();
    assert_eq!(people.list().unwrap(), Vec::new());
    let (info, link) = people
        .add(
            "alvarez",
            &[Role::Pharmacist, Role::Technician],
            None,
            "root",
        )
        .unwrap();
    assert_eq!(info.state, "pending");
    assert_eq!(info.roles, vec![Role::Pharmacist, Role::Technician]);
    assert_eq!(info.created_by, "root");
    assert!(
        link.url.starts_with("https://rx.example:8444/setup/"),
        "{}",
        link.url
    );
    assert_eq!(token_of(&link).len(), 43, "256 bits, base64url");
    assert_eq!(link.expires_at, START + TimeDelta::hours(24));
    let stored = people.account("alvarez").unwrap().unwrap();
    assert_eq!(stored.password, None);
    // Only the hash of the token is stored.
    let raw = std::fs::read(people.store().path()).unwrap();
    let token = token_of(&link);
    assert!(!raw.windows(token.len()).any(|w| w == token.as_bytes()));
    let audit = audit_kinds(&people);
    assert_eq!(audit.len(), 1);
    assert_eq!((audit[0].0, audit[0].1.as_str()), (Kind::UserAdded, "root"));
    assert_eq!(
        audit[0].2["roles"],
        serde_json::json!(["pharmacist", "technician"])
    );
}

#[test]
fn add_refuses_an_inspector_without_expiry_a_past_expiry_a_bad_name_no_role_and_a_duplicate() {
    let (_dir, people, _) = people();
    let err = |r: Result<(AccountInfo, SetupLink)>| r.unwrap_err().to_string();
    assert_eq!(
        err(people.add("insp", &[Role::Inspector], None, "root")),
        "an inspector account needs the date it expires (--expires YYYY-MM-DD)"
    );
    assert_eq!(
        err(people.add(
            "insp",
            &[Role::Inspector],
            Some(date!(2026 - 04 - 30)),
            "root"
        )),
        "--expires 2026-04-30 is in the past; give the last day the account should work"
    );
    assert!(err(people.add("Alvarez", &[Role::Admin], None, "root")).contains("is not valid"));
    assert!(
        err(people.add("alvarez", &[], None, "root"))
            .starts_with("an account needs at least one role")
    );
    people.add("alvarez", &[Role::Admin], None, "root").unwrap();
    assert_eq!(
        err(people.add("alvarez", &[Role::Admin], None, "root")),
        "an account \"alvarez\" already exists; see `rxgate user list`"
    );
    let (info, _) = people
        .add(
            "insp",
            &[Role::Inspector],
            Some(date!(2026 - 05 - 01)),
            "root",
        )
        .unwrap();
    assert_eq!(info.expires_on.as_deref(), Some("2026-05-01"));
}

#[test]
fn redeeming_a_setup_link_checks_password_and_code_then_activates_with_ten_recovery_codes_once() {
    let (_dir, people, _) = people();
    let (_, link) = people
        .add("alvarez", &[Role::Pharmacist], None, "root")
        .unwrap();
    let token = token_of(&link);
    let offer = people.setup_offer(&token, START).unwrap().unwrap();
    assert_eq!(offer.name, "alvarez");
    assert!(
        offer
            .otpauth_uri
            .starts_with("otpauth://totp/rxgate%20store-0042:alvarez?secret="),
        "{}",
        offer.otpauth_uri
    );
    let code = totp_code(&offer.totp_secret, START).unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_eq!(
        people.redeem_setup(&token, PASSWORD, wrong, START).unwrap(),
        Err(SetupError::WrongCode)
    );
    assert_eq!(
        people
            .redeem_setup(&token, "password1234", &code, START)
            .unwrap(),
        Err(SetupError::Password(PasswordRefused::Common))
    );
    assert_eq!(
        people
            .redeem_setup(&token, "alvarez-the-great", &code, START)
            .unwrap(),
        Err(SetupError::Password(PasswordRefused::ContainsName))
    );
    let done = people
        .redeem_setup(&token, PASSWORD, &code, START)
        .unwrap()
        .unwrap();
    assert_eq!(done.recovery_codes.len(), 10);
    let account = people.account("alvarez").unwrap().unwrap();
    assert_eq!(account.state, AccountState::Active);
    assert!(
        account
            .password
            .as_deref()
            .unwrap()
            .starts_with("$argon2id$")
    );
    assert_eq!(
        account.totp_secret.as_deref(),
        Some(offer.totp_secret.as_str())
    );
    assert_eq!(
        people.redeem_setup(&token, PASSWORD, &code, START).unwrap(),
        Err(SetupError::InvalidLink),
        "a link works once"
    );
    // The confirmation code itself cannot be replayed to sign in.
    assert!(matches!(
        sign_in(
            &people,
            "alvarez",
            PASSWORD,
            SecondFactor::Totp(code),
            START
        ),
        Err(SignInError::Refused)
    ));
    let setup = audit_kinds(&people)
        .into_iter()
        .find(|e| e.0 == Kind::UserSetUp)
        .unwrap();
    assert_eq!((setup.0, setup.1.as_str()), (Kind::UserSetUp, "alvarez"));
}

#[test]
fn a_setup_link_stops_working_after_24_hours_and_when_replaced_or_disabled() {
    let (_dir, people, _) = people();
    let (_, link) = people
        .add("alvarez", &[Role::Technician], None, "root")
        .unwrap();
    let token = token_of(&link);
    let late = START + TimeDelta::hours(24);
    assert_eq!(
        people.setup_offer(&token, late).unwrap(),
        Err(SetupError::InvalidLink)
    );
    assert!(
        people
            .setup_offer(&token, late - TimeDelta::seconds(1))
            .unwrap()
            .is_ok()
    );
    let (_, fresh) = people.reset_factors("alvarez", "root").unwrap();
    assert_eq!(
        people.setup_offer(&token, START).unwrap(),
        Err(SetupError::InvalidLink)
    );
    people.disable("alvarez", "root").unwrap();
    assert_eq!(
        people.setup_offer(&token_of(&fresh), START).unwrap(),
        Err(SetupError::InvalidLink)
    );
    assert_eq!(
        people.setup_offer("not-a-token", START).unwrap(),
        Err(SetupError::InvalidLink)
    );
}

#[test]
fn sign_in_takes_password_and_a_fresh_totp_code_and_refuses_the_same_code_twice() {
    let (_dir, people, _) = people();
    let (secret, _) = active(&people, "alvarez", &[Role::Pharmacist]);
    let at = START + TimeDelta::minutes(5);
    let code = totp_code(&secret, at).unwrap();
    let identity = sign_in(
        &people,
        "alvarez",
        PASSWORD,
        SecondFactor::Totp(code.clone()),
        at,
    )
    .unwrap();
    assert_eq!(identity.name, "alvarez");
    assert_eq!(identity.roles, vec![Role::Pharmacist]);
    assert!(matches!(
        sign_in(
            &people,
            "alvarez",
            PASSWORD,
            SecondFactor::Totp(code),
            at + TimeDelta::seconds(20)
        ),
        Err(SignInError::Refused)
    ));
    let last = audit_kinds(&people).pop().unwrap();
    assert_eq!(last.0, Kind::UserSignInRefused);
    assert_eq!(last.2["reason"], "TOTP code already used (replay refused)");
    let next = at + TimeDelta::seconds(30);
    let code = totp_code(&secret, next).unwrap();
    assert!(sign_in(&people, "alvarez", PASSWORD, SecondFactor::Totp(code), next).is_ok());
}

#[test]
fn a_recovery_code_signs_in_once_and_is_then_spent() {
    let (_dir, people, _) = people();
    let (_, codes) = active(&people, "alvarez", &[Role::Admin]);
    let at = START + TimeDelta::minutes(1);
    let identity = sign_in(
        &people,
        "alvarez",
        PASSWORD,
        SecondFactor::RecoveryCode(codes[0].clone()),
        at,
    )
    .unwrap();
    assert_eq!(identity.recovery_codes_left, 9);
    assert!(matches!(
        sign_in(
            &people,
            "alvarez",
            PASSWORD,
            SecondFactor::RecoveryCode(codes[0].clone()),
            at + TimeDelta::minutes(1)
        ),
        Err(SignInError::Refused)
    ));
    let info = people.list().unwrap().remove(0);
    assert_eq!(info.recovery_codes_left, 9);
    let signed_in = audit_kinds(&people)
        .into_iter()
        .find(|e| e.0 == Kind::UserSignedIn)
        .unwrap();
    assert_eq!(signed_in.2["factor"], "recovery_code");
}

#[test]
fn a_wrong_password_and_an_unknown_name_get_the_same_answer_and_precise_audit_reasons() {
    let (_dir, people, _) = people();
    let (secret, _) = active(&people, "alvarez", &[Role::Pharmacist]);
    let at = START + TimeDelta::minutes(1);
    let code = || SecondFactor::Totp(totp_code(&secret, at).unwrap());
    let wrong = sign_in(&people, "alvarez", "not the password", code(), at).unwrap_err();
    let unknown = sign_in(&people, "nobody", PASSWORD, code(), at).unwrap_err();
    assert_eq!(wrong.to_string(), unknown.to_string());
    assert!(matches!(wrong, SignInError::Refused));
    let reasons: Vec<_> = audit_kinds(&people)
        .into_iter()
        .filter(|e| e.0 == Kind::UserSignInRefused)
        .map(|e| (e.1, e.2["user"].clone(), e.2["reason"].clone()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (
                "unauthenticated".to_owned(),
                "alvarez".into(),
                "wrong password".into()
            ),
            (
                "unauthenticated".to_owned(),
                "nobody".into(),
                "no such account".into()
            ),
        ]
    );
}

#[test]
fn failures_slow_down_exponentially_per_name_and_per_source() {
    assert_eq!(
        (1..=9)
            .map(|n| delay_after(n).as_secs())
            .collect::<Vec<_>>(),
        vec![0, 0, 1, 2, 4, 8, 16, 32, 64]
    );
    assert_eq!(delay_after(40), std::time::Duration::from_secs(900));
    let (_dir, people, _) = people();
    let (secret, _) = active(&people, "alvarez", &[Role::Pharmacist]);
    let at = START + TimeDelta::minutes(1);
    for _ in 0..3 {
        assert!(matches!(
            sign_in(&people, "nobody", "x", SecondFactor::Totp("1".into()), at),
            Err(SignInError::Refused)
        ));
    }
    // The unknown name waits exactly as an account would, and so does its source.
    match sign_in(&people, "nobody", "x", SecondFactor::Totp("1".into()), at) {
        Err(SignInError::TryLater { retry_after }) => assert_eq!(retry_after.as_secs(), 1),
        other => panic!("{other:?}"),
    }
    let code = totp_code(&secret, at).unwrap();
    assert!(
        matches!(
            people.verify_sign_in(
                "alvarez",
                PASSWORD,
                &SecondFactor::Totp(code.clone()),
                ip(1),
                at
            ),
            Err(SignInError::TryLater { .. })
        ),
        "same source"
    );
    // Another source is not held up by this one's failures, and a success clears its count.
    assert!(
        people
            .verify_sign_in("alvarez", PASSWORD, &SecondFactor::Totp(code), ip(2), at)
            .is_ok()
    );
}

#[test]
fn ten_failed_sign_ins_lock_the_account_until_an_admin_unlocks_it() {
    let (_dir, people, _) = people();
    let (secret, _) = active(&people, "alvarez", &[Role::Pharmacist]);
    let mut at = START + TimeDelta::minutes(1);
    for _ in 0..LOCK_AFTER {
        at += TimeDelta::minutes(10);
        let code = SecondFactor::Totp(totp_code(&secret, at).unwrap());
        assert!(matches!(
            sign_in(&people, "alvarez", "wrong wrong wrong", code, at),
            Err(SignInError::Refused)
        ));
    }
    let info = people.list().unwrap().remove(0);
    assert_eq!((info.state.as_str(), info.failed_sign_ins), ("locked", 10));
    at += TimeDelta::hours(2);
    let code = |at| SecondFactor::Totp(totp_code(&secret, at).unwrap());
    assert!(matches!(
        sign_in(&people, "alvarez", PASSWORD, code(at), at),
        Err(SignInError::Refused)
    ));
    let audit = audit_kinds(&people);
    let locked: Vec<_> = audit.iter().filter(|e| e.0 == Kind::UserLocked).collect();
    assert_eq!(locked.len(), 1);
    assert_eq!(locked[0].2["failed_sign_ins"], 10);
    assert_eq!(
        audit.last().unwrap().2["reason"],
        "the account is locked after failed sign-ins; an admin must unlock it"
    );
    let info = people.unlock("alvarez", "root").unwrap();
    assert_eq!((info.state.as_str(), info.failed_sign_ins), ("active", 0));
    // The source still waits out its own delay (11 failures: 256 s).
    assert!(matches!(
        sign_in(&people, "alvarez", PASSWORD, code(at), at),
        Err(SignInError::TryLater { .. })
    ));
    at += TimeDelta::minutes(5);
    assert!(sign_in(&people, "alvarez", PASSWORD, code(at), at).is_ok());
    let unlocked = audit_kinds(&people)
        .into_iter()
        .find(|e| e.0 == Kind::UserUnlocked)
        .unwrap();
    assert_eq!(unlocked.1, "root");
    assert_eq!(
        people.unlock("alvarez", "root").unwrap_err().to_string(),
        "account alvarez is active, not locked; nothing to unlock"
    );
}

#[test]
fn a_disabled_account_and_an_expired_inspector_cannot_sign_in() {
    let (_dir, people, clock) = people();
    let (secret, _) = active(&people, "alvarez", &[Role::Pharmacist]);
    people.disable("alvarez", "root").unwrap();
    let at = START + TimeDelta::minutes(1);
    let code = SecondFactor::Totp(totp_code(&secret, at).unwrap());
    assert!(matches!(
        sign_in(&people, "alvarez", PASSWORD, code, at),
        Err(SignInError::Refused)
    ));
    assert_eq!(
        audit_kinds(&people).last().unwrap().2["reason"],
        "the account is disabled"
    );

    let (_, link) = people
        .add(
            "insp",
            &[Role::Inspector],
            Some(date!(2026 - 05 - 02)),
            "root",
        )
        .unwrap();
    let token = token_of(&link);
    let offer = people.setup_offer(&token, START).unwrap().unwrap();
    let code = totp_code(&offer.totp_secret, START).unwrap();
    people
        .redeem_setup(&token, PASSWORD, &code, START)
        .unwrap()
        .unwrap();
    let last_minute = datetime!(2026-05-02 23:59:00 UTC);
    let code = SecondFactor::Totp(totp_code(&offer.totp_secret, last_minute).unwrap());
    assert!(sign_in(&people, "insp", PASSWORD, code, last_minute).is_ok());
    let next_day = datetime!(2026-05-03 00:00:30 UTC);
    let code = SecondFactor::Totp(totp_code(&offer.totp_secret, next_day).unwrap());
    assert!(matches!(
        sign_in(&people, "insp", PASSWORD, code, next_day),
        Err(SignInError::Refused)
    ));
    assert_eq!(
        audit_kinds(&people).last().unwrap().2["reason"],
        "the account has expired"
    );
    clock.set(next_day);
    let states: Vec<_> = people
        .list()
        .unwrap()
        .into_iter()
        .map(|a| (a.name, a.state))
        .collect();
    assert_eq!(
        states,
        vec![
            ("alvarez".to_owned(), "disabled".to_owned()),
            ("insp".to_owned(), "expired".to_owned())
        ]
    );
}

#[test]
fn reset_factors_makes_the_old_password_and_codes_useless_and_issues_a_new_link() {
    let (_dir, people, _) = people();
    let (secret, codes) = active(&people, "alvarez", &[Role::Installer]);
    let (info, link) = people.reset_factors("alvarez", "root").unwrap();
    assert_eq!(
        (info.state.as_str(), info.totp, info.recovery_codes_left),
        ("pending", false, 0)
    );
    let at = START + TimeDelta::minutes(1);
    let code = SecondFactor::Totp(totp_code(&secret, at).unwrap());
    assert!(matches!(
        sign_in(&people, "alvarez", PASSWORD, code, at),
        Err(SignInError::Refused)
    ));
    assert!(matches!(
        sign_in(
            &people,
            "alvarez",
            PASSWORD,
            SecondFactor::RecoveryCode(codes[1].clone()),
            at + TimeDelta::minutes(1)
        ),
        Err(SignInError::Refused)
    ));
    let offer = people.setup_offer(&token_of(&link), at).unwrap().unwrap();
    assert_ne!(offer.totp_secret, secret, "a new authenticator secret");
    let reset = audit_kinds(&people)
        .into_iter()
        .find(|e| e.0 == Kind::UserFactorsReset)
        .unwrap();
    assert_eq!(
        (reset.1.as_str(), reset.2["was"].as_str()),
        ("root", Some("active"))
    );
}

#[test]
fn accounts_added_and_failures_recorded_from_many_threads_at_once_are_all_counted_exactly() {
    let (_dir, people, _) = people();
    active(&people, "target", &[Role::Technician]);
    let threads: Vec<_> = (0..8u8)
        .map(|i| {
            let people = people.clone();
            std::thread::spawn(move || {
                let own = people.add(&format!("user-{i}"), &[Role::Technician], None, "root");
                let shared = people.add("shared", &[Role::Admin], None, "root");
                for _ in 0..2 {
                    signin::record_failure_for_test(&people, "target", ip(i), START).unwrap();
                }
                (own.is_ok(), shared.is_ok())
            })
        })
        .collect();
    let results: Vec<(bool, bool)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(results.iter().all(|(own, _)| *own));
    assert_eq!(
        results.iter().filter(|(_, shared)| *shared).count(),
        1,
        "one wins the name"
    );
    let list = people.list().unwrap();
    assert_eq!(list.len(), 1 + 8 + 1);
    let target = list.iter().find(|a| a.name == "target").unwrap();
    assert_eq!(
        (target.state.as_str(), target.failed_sign_ins),
        ("locked", 16)
    );
    let audit = audit_kinds(&people);
    assert_eq!(audit.iter().filter(|e| e.0 == Kind::UserLocked).count(), 1);
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.0 == Kind::UserSignInRefused)
            .count(),
        16
    );
    assert_eq!(
        audit.iter().filter(|e| e.0 == Kind::UserAdded).count(),
        1 + 8 + 1
    );
    assert_eq!(
        crate::audit::verify(people.store(), None, &[]).unwrap(),
        Ok(audit.len() as u64)
    );
}

#[test]
fn set_up_links_name_the_consoles_port_once_it_is_known() {
    let (_dir, people, _clock) = people();
    let (_, link) = people
        .add("anna", &[Role::Pharmacist], None, "root")
        .unwrap();
    assert!(
        link.url.starts_with("https://rx.example:8444/setup/"),
        "{}",
        link.url
    );
    let people = people.with_console_port(40123);
    let (_, link) = people
        .add("tom", &[Role::Technician], None, "root")
        .unwrap();
    assert!(
        link.url.starts_with("https://rx.example:40123/setup/"),
        "{}",
        link.url
    );
}

fn alert_request() -> SignatureRequest {
    SignatureRequest {
        action: Action::SignAlert,
        meaning: Meaning::Acknowledged,
        record_kind: "alert".to_owned(),
        record_id: "a-1".to_owned(),
        record: serde_json::json!({ "id": "a-1", "device": "fridge-01" }),
        statement: serde_json::json!({ "note": "moved stock" }),
    }
}

#[test]
fn a_signature_is_one_record_signed_entry_over_the_records_canonical_hash() {
    let (_dir, people, _clock) = people();
    let (secret, _) = active(&people, "anna", &[Role::Pharmacist]);
    let at = START + TimeDelta::seconds(30);
    let code = totp_code(&secret, at).unwrap();
    let signature = people
        .sign(
            "anna",
            PASSWORD,
            &SecondFactor::Totp(code),
            ip(1),
            at,
            alert_request(),
        )
        .unwrap();
    // Keys sorted, no whitespace.
    assert_eq!(
        signature.record_sha256,
        sha256_hex(r#"{"device":"fridge-01","id":"a-1"}"#)
    );
    let entries = audit_kinds(&people);
    let (kind, actor, detail) = entries.last().unwrap();
    assert_eq!((*kind, actor.as_str()), (Kind::RecordSigned, "anna"));
    assert_eq!(detail["record_sha256"], signature.record_sha256.as_str());
    assert_eq!(detail["meaning"], "acknowledged");
    assert!(
        !entries.iter().any(|(k, _, _)| *k == Kind::UserSignedIn),
        "a signature is not a sign-in"
    );
}

#[test]
fn a_technicians_signature_is_denied_before_the_code_is_spent() {
    let (_dir, people, _clock) = people();
    let (secret, _) = active(&people, "tom", &[Role::Technician]);
    let at = START + TimeDelta::seconds(30);
    let code = totp_code(&secret, at).unwrap();
    let refused = people.sign(
        "tom",
        PASSWORD,
        &SecondFactor::Totp(code.clone()),
        ip(1),
        at,
        alert_request(),
    );
    assert!(matches!(refused, Err(SignError::Denied(_))), "{refused:?}");
    assert!(
        !audit_kinds(&people)
            .iter()
            .any(|(k, _, _)| *k == Kind::RecordSigned)
    );
    // The code was not spent: it still signs tom in.
    assert!(
        people
            .verify_sign_in("tom", PASSWORD, &SecondFactor::Totp(code), ip(1), at)
            .is_ok()
    );
}

/// A passkey credential as webauthn-rs stores it (a P-256 public key; the id varies).
fn test_passkey(id: u8) -> webauthn_rs::prelude::Passkey {
    let cred_id: String = format!("{id:02x}").repeat(16);
    serde_json::from_value(serde_json::json!({ "cred": {
        "cred_id": cred_id,
        "cred": {"type_": "ES256", "key": {"EC_EC2": {"curve": "SECP256R1",
            "x": [194,126,127,109,252,23,131,21,252,6,223,99,44,254,140,27,230,17,94,5,133,28,104,41,144,69,171,149,161,26,200,243],
            "y": [143,123,183,156,24,178,21,248,117,159,162,69,171,52,188,252,26,59,6,47,103,92,19,58,117,103,249,0,219,8,95,196]}}},
        "counter": 0,
        "user_verified": true,
        "backup_eligible": false,
        "backup_state": false,
        "registration_policy": "required",
        "extensions": {"cred_protect": "NotRequested", "hmac_create_secret": "NotRequested"},
        "attestation": {"data": "None", "metadata": "None"},
        "attestation_format": "none"
    }}))
    .expect("a passkey credential")
}

fn user_id() -> uuid::Uuid {
    uuid::Uuid::from_u128(0x5eed)
}

#[test]
fn a_registered_passkey_is_stored_with_its_label_and_host_and_audited_under_the_person() {
    let (_dir, people, _) = people();
    active(&people, "alvarez", &[Role::Pharmacist]);
    let added = people
        .store_passkey(
            "alvarez",
            "localhost",
            user_id(),
            " office PC ",
            test_passkey(1),
            Some(ip(7)),
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        (added.label.as_str(), added.rp_id.as_str()),
        ("office PC", "localhost")
    );
    assert_eq!((added.last_used, added.sign_count), (None, 0));
    let account = people.account("alvarez").unwrap().unwrap();
    assert_eq!(account.passkeys.len(), 1);
    assert_eq!(account.passkeys[0].id, added.id);
    assert_eq!(account.passkey_user_id, Some(user_id()));
    assert_eq!(people.list().unwrap()[0].passkeys, 1);
    assert_eq!(people.passkeys("alvarez").unwrap(), vec![added.clone()]);
    // Survives a round trip through the store's JSON, key included.
    let stored = serde_json::to_value(&account.passkeys[0]).unwrap();
    assert_eq!(stored["credential"]["cred"]["counter"], 0);

    let entry = audit_kinds(&people)
        .into_iter()
        .find(|e| e.0 == Kind::UserPasskeyAdded)
        .expect("user.passkey_added");
    assert_eq!(entry.1, "alvarez");
    assert_eq!(entry.2["passkey"], added.id.as_str());
    assert_eq!(entry.2["label"], "office PC");
    assert_eq!(entry.2["rp_id"], "localhost");

    // The same authenticator twice is refused, and nothing more is written.
    assert_eq!(
        people
            .store_passkey(
                "alvarez",
                "localhost",
                user_id(),
                "again",
                test_passkey(1),
                None
            )
            .unwrap(),
        Err(PasskeyRefused::AlreadyRegistered)
    );
    assert_eq!(people.passkeys("alvarez").unwrap().len(), 1);
}

#[test]
fn a_passkey_use_raises_its_counter_and_an_old_counter_is_refused_as_a_clone() {
    let (_dir, people, _) = people();
    active(&people, "alvarez", &[Role::Pharmacist]);
    let added = people
        .store_passkey(
            "alvarez",
            "localhost",
            user_id(),
            "key",
            test_passkey(2),
            None,
        )
        .unwrap()
        .unwrap();
    let mut account = people.account("alvarez").unwrap().unwrap();
    let used = START + TimeDelta::minutes(5);
    passkeys::mark_used(
        &mut account,
        &passkeys::Asserted {
            id: added.id.clone(),
            counter: 7,
        },
        used,
    );
    let p = &account.passkeys[0];
    assert_eq!((p.sign_count, p.last_used), (7, Some(used)));
    assert!(passkeys::check_counter(p, 8).is_ok());
    assert!(passkeys::check_counter(p, 0).is_ok(), "0: no counter kept");
    assert!(
        passkeys::check_counter(p, 7)
            .unwrap_err()
            .contains("cloned")
    );
    assert!(passkeys::check_counter(p, 3).is_err());
}

#[test]
fn a_removed_passkey_is_gone_and_its_removal_audited_and_reset_factors_forgets_the_rest() {
    let (_dir, people, _) = people();
    active(&people, "alvarez", &[Role::Pharmacist]);
    let first = people
        .store_passkey(
            "alvarez",
            "localhost",
            user_id(),
            "one",
            test_passkey(3),
            None,
        )
        .unwrap()
        .unwrap();
    people
        .store_passkey(
            "alvarez",
            "rx.example",
            user_id(),
            "two",
            test_passkey(4),
            None,
        )
        .unwrap()
        .unwrap();
    let removed = people
        .remove_passkey("alvarez", &first.id, "alvarez", Some(ip(3)))
        .unwrap();
    assert_eq!(removed.label, "one");
    let left = people.passkeys("alvarez").unwrap();
    assert_eq!(
        left.iter().map(|p| p.label.as_str()).collect::<Vec<_>>(),
        ["two"]
    );
    assert!(matches!(
        people.remove_passkey("alvarez", &first.id, "alvarez", None),
        Err(Error::NotFound(_))
    ));
    let entry = audit_kinds(&people)
        .into_iter()
        .find(|e| e.0 == Kind::UserPasskeyRemoved)
        .expect("user.passkey_removed");
    assert_eq!(entry.1, "alvarez");
    assert_eq!(entry.2["passkey"], first.id.as_str());
    assert_eq!(entry.2["passkeys_left"], 1);

    people.reset_factors("alvarez", "root").unwrap();
    assert!(people.passkeys("alvarez").unwrap().is_empty());
}

#[test]
fn passkeys_registered_at_once_from_several_threads_are_all_kept() {
    let (_dir, people, _) = people();
    active(&people, "alvarez", &[Role::Pharmacist]);
    let threads: Vec<_> = (0..8u8)
        .map(|i| {
            let people = people.clone();
            std::thread::spawn(move || {
                people
                    .store_passkey(
                        "alvarez",
                        "localhost",
                        user_id(),
                        &format!("key {i}"),
                        test_passkey(10 + i),
                        None,
                    )
                    .unwrap()
                    .unwrap()
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(people.passkeys("alvarez").unwrap().len(), 8);
    let added = audit_kinds(&people)
        .into_iter()
        .filter(|e| e.0 == Kind::UserPasskeyAdded)
        .count();
    assert_eq!(added, 8);
}

#[test]
fn passkeys_are_offered_under_localhost_and_the_server_names_but_not_an_ip_address() {
    let (_dir, people, _) = people();
    assert_eq!(
        people.relying_party(Some("localhost:8444")).unwrap().id(),
        "localhost"
    );
    assert_eq!(
        people.relying_party(Some("RX.example:8444")).unwrap().id(),
        "rx.example"
    );
    assert!(matches!(
        people.relying_party(Some("192.168.1.20:8444")),
        Err(PasskeysUnavailable::IpAddress { ip, port }) if ip == "192.168.1.20" && port == ":8444"
    ));
    assert!(matches!(
        people.relying_party(Some("[::1]:8444")),
        Err(PasskeysUnavailable::IpAddress { .. })
    ));
    assert!(
        people
            .relying_party(Some("10.0.0.5:8444"))
            .unwrap_err()
            .to_string()
            .contains("https://localhost:8444")
    );
    assert!(matches!(
        people.relying_party(Some("evil.example")),
        Err(PasskeysUnavailable::UnknownName { .. })
    ));
    assert!(matches!(
        people.relying_party(None),
        Err(PasskeysUnavailable::NoHost)
    ));
}

#[test]
fn a_passkey_challenge_needs_the_right_password_and_counts_a_wrong_one() {
    let (_dir, people, _) = people();
    active(&people, "alvarez", &[Role::Pharmacist]);
    let rp = people.relying_party(Some("localhost:8444")).unwrap();
    let at = START + TimeDelta::minutes(1);
    assert!(matches!(
        people.passkey_challenge("alvarez", PASSWORD, &rp, ip(1), at),
        Err(SignInError::NoPasskey { rp_id }) if rp_id == "localhost"
    ));
    people
        .store_passkey(
            "alvarez",
            "localhost",
            user_id(),
            "key",
            test_passkey(5),
            None,
        )
        .unwrap()
        .unwrap();
    let (options, pending) = people
        .passkey_challenge("alvarez", PASSWORD, &rp, ip(1), at)
        .unwrap();
    assert_eq!(pending.name(), "alvarez");
    let options = serde_json::to_value(&options).unwrap();
    assert_eq!(options["publicKey"]["rpId"], "localhost");
    assert_eq!(
        options["publicKey"]["allowCredentials"][0]["id"],
        people.passkeys("alvarez").unwrap()[0].id.as_str()
    );
    assert!(matches!(
        people.passkey_challenge("alvarez", "wrong wrong wrong", &rp, ip(1), at),
        Err(SignInError::Refused)
    ));
    assert!(matches!(
        people.passkey_challenge("nobody", PASSWORD, &rp, ip(1), at),
        Err(SignInError::Refused)
    ));
    assert_eq!(
        people.account("alvarez").unwrap().unwrap().failed_sign_ins,
        1
    );
    // A garbage answer to a real challenge is refused and counted; so is the challenge offered
    // for another name.
    let factor = SecondFactor::Passkey {
        pending: Arc::new(pending),
        response: "{}".to_owned(),
    };
    assert!(matches!(
        sign_in(&people, "alvarez", "", factor.clone(), at),
        Err(SignInError::Refused)
    ));
    // (From another address: this one now waits after three failures in a row.)
    assert!(matches!(
        people.verify_sign_in("bernard", "", &factor, ip(9), at),
        Err(SignInError::Refused)
    ));
    let reasons: Vec<String> = audit_kinds(&people)
        .into_iter()
        .filter(|e| e.0 == Kind::UserSignInRefused)
        .map(|e| e.2["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(reasons[0], "wrong password");
    assert_eq!(reasons[1], "no such account");
    assert!(reasons[2].contains("not WebAuthn JSON"), "{reasons:?}");
    assert_eq!(reasons[3], "no such account");
}

#[test]
fn a_demo_account_signs_in_only_where_demo_accounts_are_allowed() {
    let (_dir, people, _clock) = people();
    assert!(
        people
            .add_demo_account("demo-pharmacist", &[Role::Pharmacist])
            .is_err(),
        "no demo account outside the demo"
    );
    let demo = people.clone().allowing_demo_accounts();
    let credentials = demo
        .add_demo_account("demo-pharmacist", &[Role::Pharmacist])
        .unwrap();
    assert!(check_policy("demo-pharmacist", &credentials.password).is_ok());
    assert_eq!(credentials.recovery_codes.len(), RECOVERY_CODES);
    let code = |i: usize| SecondFactor::RecoveryCode(credentials.recovery_codes[i].clone());
    let later = START + TimeDelta::seconds(1);
    assert!(
        demo.verify_sign_in(
            "demo-pharmacist",
            &credentials.password,
            &code(0),
            ip(1),
            later
        )
        .is_ok()
    );
    // The same store, as `rxgate run` sees it: refused, and the reason recorded.
    assert!(matches!(
        people.verify_sign_in(
            "demo-pharmacist",
            &credentials.password,
            &code(1),
            ip(1),
            later
        ),
        Err(SignInError::Refused)
    ));
    let refused = audit_kinds(&people)
        .into_iter()
        .filter(|(k, _, _)| *k == Kind::UserSignInRefused)
        .map(|(_, _, d)| d["reason"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(refused, ["a demo account signs in only in `rxgate demo`"]);
    assert!(people.account("demo-pharmacist").unwrap().unwrap().demo);
}

/// A sealer with a fresh key-encryption key in `dir`.
fn sealer(dir: &std::path::Path) -> crate::keys::Sealer {
    let kek = dir.join("kek");
    crate::keys::generate_kek(&kek).unwrap();
    let config = crate::keys::KeysConfig {
        credential: "rxgate-kek-test-absent".to_owned(),
        kek_file: Some(kek),
    };
    crate::keys::Keyring::open(&crate::paths::DataPaths::new(dir), &config)
        .unwrap()
        .sealer()
}

fn store_bytes(dir: &std::path::Path) -> Vec<u8> {
    std::fs::read(dir.join("s.redb")).unwrap()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn with_a_key_encryption_key_totp_secrets_are_sealed_in_the_store_and_still_sign_in() {
    let (dir, people, _) = people();
    let people = people.with_sealer(sealer(dir.path()));
    let (secret, _) = active(&people, "alvarez", &[Role::Pharmacist]);
    assert!(
        !contains(&store_bytes(dir.path()), &secret),
        "the secret is sealed"
    );
    let stored = people
        .account("alvarez")
        .unwrap()
        .unwrap()
        .totp_secret
        .unwrap();
    assert!(crate::keys::Sealer::is_sealed_text(&stored), "{stored}");
    assert!(!people.list().unwrap()[0].totp_plain);

    let at = START + TimeDelta::minutes(5);
    let code = totp_code(&secret, at).unwrap();
    assert!(
        sign_in(
            &people,
            "alvarez",
            PASSWORD,
            SecondFactor::Totp(code.clone()),
            at
        )
        .is_ok()
    );

    // The store alone, without the key-encryption key: the code cannot be checked.
    let later = at + TimeDelta::minutes(5);
    let code = totp_code(&secret, later).unwrap();
    let without = People::new(
        people.store().clone(),
        people.clock.clone(),
        "store-0042",
        &[],
    );
    let err = sign_in(
        &without,
        "alvarez",
        PASSWORD,
        SecondFactor::Totp(code),
        later,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("sealed") && err.to_string().contains("kek_file"),
        "{err}"
    );
}

#[test]
fn plain_totp_secrets_are_sealed_later_by_seal_plain_secrets_and_keep_working() {
    let (dir, people, _) = people();
    let (secret, _) = active(&people, "alvarez", &[Role::Pharmacist]);
    people
        .add("brook", &[Role::Technician], None, "root")
        .unwrap();
    assert!(
        contains(&store_bytes(dir.path()), &secret),
        "plain at first"
    );
    assert_eq!(
        people.plain_secrets().unwrap(),
        2,
        "alvarez's and brook's on offer"
    );
    assert_eq!(
        people.seal_plain_secrets().unwrap(),
        0,
        "no key: nothing sealed"
    );

    let people = people.with_sealer(sealer(dir.path()));
    assert_eq!(people.seal_plain_secrets().unwrap(), 2);
    assert_eq!(people.plain_secrets().unwrap(), 0);
    assert_eq!(
        people.seal_plain_secrets().unwrap(),
        0,
        "nothing left to seal"
    );
    let at = START + TimeDelta::minutes(5);
    let code = totp_code(&secret, at).unwrap();
    assert!(sign_in(&people, "alvarez", PASSWORD, SecondFactor::Totp(code), at).is_ok());
}
