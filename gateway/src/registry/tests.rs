use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rxgate_certs::{
    CertificateAuthority, CheckedCsr, KeyAlg, check_csr, device_identity, new_device_csr,
};
use time::OffsetDateTime;
use time::macros::datetime;

use super::*;
use crate::clock::{ManualClock, TimeFloor, TimeReading};

const T0: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);
const SITE: &str = "store-1";

struct Fixture {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    registry: Registry,
    ca: CertificateAuthority,
}

fn fixture() -> Fixture {
    let clock = ManualClock::new(T0, true);
    fixture_on(clock.clone(), clock)
}

/// A fixture whose registry sees `clock` through a time floor starting at `floor`.
fn floored_fixture(floor: OffsetDateTime) -> (Fixture, Arc<TimeFloor>) {
    let manual = ManualClock::new(T0, true);
    let floored = TimeFloor::new(manual.clone(), floor);
    (fixture_on(manual, floored.clone()), floored)
}

fn fixture_on(clock: Arc<ManualClock>, seen_by_registry: crate::clock::SharedClock) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("s.redb")).unwrap();
    let registry = Registry::new(store, seen_by_registry);
    let ca = CertificateAuthority::generate("test CA", T0).unwrap();
    Fixture {
        _dir: dir,
        clock,
        registry,
        ca,
    }
}

fn policy() -> IssuePolicy {
    IssuePolicy {
        site: SITE.to_owned(),
        validity: Duration::from_secs(30 * 86400),
        backdate: Duration::from_secs(3600),
        max_failed_attempts: 5,
        failed_lockout: Duration::from_secs(900),
        burn_after_failed: 20,
        superseded_grace: Duration::from_secs(300),
    }
}

fn csr(device: &str) -> CheckedCsr {
    let (_key, der) = new_device_csr(device, KeyAlg::P256).unwrap();
    check_csr(&der).unwrap()
}

const SOURCE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

impl Fixture {
    fn token(&self, device: &str) -> String {
        self.registry
            .create_token(device, "fridge", Duration::from_secs(600), &Actor::cli())
            .unwrap()
            .1
    }

    fn enroll(&self, device: &str, secret: &str) -> Result<IssuedCert, Refusal> {
        self.registry
            .enroll(device, secret, &csr(device), &self.ca, &policy(), SOURCE)
            .unwrap()
    }

    fn identity(&self, cert: &IssuedCert) -> DeviceIdentity {
        device_identity(&cert.der).unwrap()
    }
}

#[test]
fn a_token_is_stored_only_as_a_hash_and_listed_without_it() {
    let f = fixture();
    let secret = f.token("fridge-1");
    assert!(
        secret.starts_with("rxg_") && secret.len() >= 4 + 43,
        "{secret}"
    );
    let tokens = f.registry.tokens().unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].state, "pending");
    let stored = f
        .registry
        .store()
        .read(|txn| store::all_json::<TokenRecord>(txn, TOKENS))
        .unwrap();
    assert_ne!(stored[0].secret_sha256, secret);
    assert!(
        !stored[0]
            .secret_sha256
            .contains(secret.trim_start_matches("rxg_"))
    );
    assert_eq!(
        f.registry.device("fridge-1").unwrap().unwrap().status,
        DeviceStatus::Pending
    );
}

#[test]
fn enrollment_consumes_the_token_and_a_second_use_is_unauthorized() {
    let f = fixture();
    let secret = f.token("fridge-1");
    let cert = f.enroll("fridge-1", &secret).unwrap();
    let device = f.registry.device("fridge-1").unwrap().unwrap();
    assert_eq!(device.status, DeviceStatus::Active);
    assert_eq!(device.serial.as_deref(), Some(cert.serial.as_str()));
    assert!(
        matches!(f.enroll("fridge-1", &secret), Err(Refusal::Unauthenticated { class: "token_used", reason }) if reason.contains("already used"))
    );
}

const STRANGER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 66));

#[test]
fn a_source_with_five_wrong_secrets_is_locked_out_but_another_source_still_enrolls() {
    let f = fixture();
    let secret = f.token("fridge-1");
    let attempt = |secret: &str, source: IpAddr| {
        f.registry
            .enroll(
                "fridge-1",
                secret,
                &csr("fridge-1"),
                &f.ca,
                &policy(),
                source,
            )
            .unwrap()
    };
    for n in 1..=5 {
        let refusal = attempt("rxg_wrong", STRANGER).unwrap_err();
        assert!(
            matches!(&refusal, Refusal::Unauthenticated { class: "wrong_token", reason } if reason.contains(&format!("({n} from 192.0.2.66"))),
            "{n}: {refusal}"
        );
    }
    // Locked out: even the right secret from the stranger's address is not looked at.
    assert!(matches!(
        attempt(&secret, STRANGER),
        Err(Refusal::Unauthenticated {
            class: "source_locked_out",
            ..
        })
    ));
    let token = &f.registry.tokens().unwrap()[0];
    assert_eq!(
        (token.state.as_str(), token.failed_attempts),
        ("pending", 5)
    );
    assert!(attempt(&secret, SOURCE).is_ok());
}

#[test]
fn a_lockout_ends_after_failed_lockout_and_the_source_gets_a_fresh_allowance() {
    let f = fixture();
    let (_, secret) = f
        .registry
        .create_token(
            "fridge-1",
            "fridge",
            Duration::from_secs(3600),
            &Actor::cli(),
        )
        .unwrap();
    let attempt = |secret: &str| {
        f.registry
            .enroll(
                "fridge-1",
                secret,
                &csr("fridge-1"),
                &f.ca,
                &policy(),
                STRANGER,
            )
            .unwrap()
    };
    for _ in 0..5 {
        attempt("rxg_wrong").unwrap_err();
    }
    f.clock.advance(Duration::from_secs(899));
    assert!(matches!(
        attempt(&secret),
        Err(Refusal::Unauthenticated {
            class: "source_locked_out",
            ..
        })
    ));
    f.clock.advance(Duration::from_secs(1));
    assert!(attempt(&secret).is_ok());
}

#[test]
fn wrong_secrets_from_many_sources_burn_the_token_at_burn_after_failed_and_it_is_audited() {
    let f = fixture();
    let secret = f.token("fridge-1");
    // 20 wrong secrets, 4 from each of 5 addresses: nobody locked out, the token burnt.
    for n in 0..20u8 {
        let source = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, n % 5));
        let refusal = f
            .registry
            .enroll(
                "fridge-1",
                "rxg_wrong",
                &csr("fridge-1"),
                &f.ca,
                &policy(),
                source,
            )
            .unwrap()
            .unwrap_err();
        assert_eq!(refusal.class(), "wrong_token");
        assert_eq!(
            refusal.to_string().contains("now burnt"),
            n == 19,
            "{n}: {refusal}"
        );
    }
    assert!(matches!(
        f.enroll("fridge-1", &secret),
        Err(Refusal::Unauthenticated {
            class: "token_burnt",
            ..
        })
    ));
    let kinds: Vec<_> = crate::audit::entries(f.registry.store(), 1, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == Kind::TokenBurnt).count(), 1);
    // Refusals go to the folding refusal log from the EST layer, not one entry each here.
    assert_eq!(
        kinds.iter().filter(|k| **k == Kind::EnrollRefused).count(),
        0
    );
}

#[test]
fn an_expired_token_is_refused_even_with_the_right_secret() {
    let f = fixture();
    let secret = f.token("fridge-1");
    f.clock.advance(Duration::from_secs(601));
    assert!(
        matches!(f.enroll("fridge-1", &secret), Err(Refusal::Unauthenticated { class: "token_expired", reason }) if reason.contains("expired"))
    );
    assert_eq!(f.registry.tokens().unwrap()[0].state, "expired");
}

#[test]
fn a_csr_for_another_device_is_a_bad_request_and_keeps_the_token() {
    let f = fixture();
    let secret = f.token("fridge-1");
    let foreign = f
        .registry
        .enroll(
            "fridge-1",
            &secret,
            &csr("fridge-2"),
            &f.ca,
            &policy(),
            SOURCE,
        )
        .unwrap();
    assert!(matches!(foreign, Err(Refusal::BadRequest { .. })));
    assert!(f.enroll("fridge-1", &secret).is_ok());
}

#[test]
fn revoking_refuses_every_certificate_of_the_device_and_announces_it() {
    let f = fixture();
    let mut changes = f.registry.subscribe();
    let cert = f.enroll("fridge-1", &f.token("fridge-1")).unwrap();
    let identity = f.identity(&cert);
    assert_eq!(
        f.registry.check_certificate(&identity, SITE).unwrap(),
        Ok(())
    );
    f.registry
        .revoke_device("fridge-1", "lost", &Actor::cli())
        .unwrap();
    assert!(matches!(
        f.registry.check_certificate(&identity, SITE).unwrap(),
        Err(CertRefusal::DeviceRevoked { .. })
    ));
    assert_eq!(
        changes.try_recv().unwrap(),
        Change::Revoked {
            device: "fridge-1".to_owned()
        }
    );
    let renewal = f
        .registry
        .renew(&identity, &csr("fridge-1"), &f.ca, &policy(), SOURCE)
        .unwrap();
    assert!(matches!(renewal, Err(Refusal::Forbidden { .. })));
    // Without a new token, enrollment is refused like any unknown device's (the same 401 a
    // stranger gets), with the reason kept for the audit trail.
    assert!(matches!(
        f.enroll("fridge-1", "rxg_x"),
        Err(Refusal::Unauthenticated {
            class: "device_revoked",
            ..
        })
    ));
}

#[test]
fn recommissioning_with_a_new_token_revokes_the_old_certificate() {
    let f = fixture();
    let old = f.enroll("fridge-1", &f.token("fridge-1")).unwrap();
    f.registry
        .revoke_device("fridge-1", "replaced", &Actor::cli())
        .unwrap();
    let new = f.enroll("fridge-1", &f.token("fridge-1")).unwrap();
    assert_eq!(
        f.registry
            .check_certificate(&f.identity(&new), SITE)
            .unwrap(),
        Ok(())
    );
    assert!(matches!(
        f.registry
            .check_certificate(&f.identity(&old), SITE)
            .unwrap(),
        Err(CertRefusal::Revoked { .. })
    ));
}

#[test]
fn renewal_issues_a_new_serial_and_the_old_certificate_is_accepted_only_for_the_grace() {
    let f = fixture();
    let first = f.enroll("fridge-1", &f.token("fridge-1")).unwrap();
    let renew = |cert: &IssuedCert| {
        f.registry
            .renew(
                &f.identity(cert),
                &csr("fridge-1"),
                &f.ca,
                &policy(),
                SOURCE,
            )
            .unwrap()
    };
    let second = renew(&first).unwrap();
    assert_ne!(first.serial, second.serial);
    assert_eq!(
        f.registry
            .device("fridge-1")
            .unwrap()
            .unwrap()
            .serial
            .as_deref(),
        Some(second.serial.as_str())
    );
    f.clock.advance(Duration::from_secs(299));
    assert_eq!(
        f.registry
            .check_certificate(&f.identity(&first), SITE)
            .unwrap(),
        Ok(())
    );
    f.clock.advance(Duration::from_secs(1));
    assert!(matches!(
        f.registry
            .check_certificate(&f.identity(&first), SITE)
            .unwrap(),
        Err(CertRefusal::Superseded { .. })
    ));
    let refused = renew(&first).unwrap_err();
    assert!(
        matches!(&refused, Refusal::Forbidden { class: "certificate_superseded", reason } if reason.contains("replaced by a renewal")),
        "{refused}"
    );
    assert_eq!(
        f.registry
            .check_certificate(&f.identity(&second), SITE)
            .unwrap(),
        Ok(())
    );
    assert!(renew(&second).is_ok());
}

#[test]
fn with_no_grace_a_superseded_certificate_is_refused_at_once() {
    let f = fixture();
    let first = f.enroll("fridge-1", &f.token("fridge-1")).unwrap();
    let no_grace = IssuePolicy {
        superseded_grace: Duration::ZERO,
        ..policy()
    };
    f.registry
        .renew(
            &f.identity(&first),
            &csr("fridge-1"),
            &f.ca,
            &no_grace,
            SOURCE,
        )
        .unwrap()
        .unwrap();
    assert!(matches!(
        f.registry
            .check_certificate(&f.identity(&first), SITE)
            .unwrap(),
        Err(CertRefusal::Superseded { .. })
    ));
}

#[test]
fn without_a_time_floor_expiry_is_enforced_only_while_the_clock_is_synchronised() {
    let f = fixture();
    let cert = f.enroll("fridge-1", &f.token("fridge-1")).unwrap();
    f.clock.advance(Duration::from_secs(31 * 86400));
    assert!(matches!(
        f.registry
            .check_certificate(&f.identity(&cert), SITE)
            .unwrap(),
        Err(CertRefusal::Expired { .. })
    ));
    f.clock.set_synced(false);
    assert_eq!(
        f.registry
            .check_certificate(&f.identity(&cert), SITE)
            .unwrap(),
        Ok(())
    );
}

#[test]
fn with_the_clock_unsynchronised_and_behind_the_floor_a_certificate_expired_before_the_floor_is_refused_for_renewal_and_connecting()
 {
    let (f, floor) = floored_fixture(T0);
    // Valid from T0 - 1 h to T0 + 30 d.
    let stolen = f.enroll("fridge-1", &f.token("fridge-1")).unwrap();
    f.clock.advance(Duration::from_secs(40 * 86400));
    floor.observe();
    // Power cut: the Pi boots a month behind, and NTP is blocked.
    f.clock.set(T0 - time::Duration::days(30));
    f.clock.set_synced(false);
    assert_eq!(f.registry.clock().now(), T0 + time::Duration::days(40));

    let refused = f
        .registry
        .renew(
            &f.identity(&stolen),
            &csr("fridge-1"),
            &f.ca,
            &policy(),
            SOURCE,
        )
        .unwrap();
    let expected = format!(
        "certificate {} expired at 2026-03-31T12:00:00Z, before 2026-04-10T12:00:00Z, a time this \
         gateway has already seen (its clock is not synchronised, so expiry is checked against that \
         time floor); enroll the device again with a new token (`rxgate token create`)",
        stolen.serial
    );
    assert_eq!(
        refused,
        Err(Refusal::Unauthorized {
            class: "certificate_refused",
            reason: expected.clone()
        })
    );
    assert_eq!(
        f.registry
            .check_certificate(&f.identity(&stolen), SITE)
            .unwrap()
            .map_err(|e| e.to_string()),
        Err(expected)
    );
}

#[test]
fn with_the_clock_unsynchronised_and_behind_the_floor_a_certificate_valid_at_the_floor_is_renewed_from_the_floor()
 {
    let (f, floor) = floored_fixture(T0);
    f.clock.advance(Duration::from_secs(20 * 86400));
    // Valid from T0 + 20 d - 1 h to T0 + 50 d.
    let cert = f.enroll("fridge-2", &f.token("fridge-2")).unwrap();
    f.clock.advance(Duration::from_secs(20 * 86400));
    floor.observe();
    f.clock.set(T0 - time::Duration::days(30));
    f.clock.set_synced(false);

    assert_eq!(
        f.registry
            .check_certificate(&f.identity(&cert), SITE)
            .unwrap(),
        Ok(())
    );
    let renewed = f
        .registry
        .renew(
            &f.identity(&cert),
            &csr("fridge-2"),
            &f.ca,
            &policy(),
            SOURCE,
        )
        .unwrap()
        .unwrap();
    assert_eq!(renewed.not_after, T0 + time::Duration::days(70));
}

#[test]
fn expiry_is_judged_against_the_floor_only_while_unsynchronised_and_a_future_not_before_is_never_refused()
 {
    let floor = T0;
    let reading = |clock: OffsetDateTime, synced: bool| TimeReading {
        clock,
        synced,
        floor: Some(floor),
    };
    let hour = time::Duration::hours(1);
    // Unsynchronised and far ahead: only the floor counts.
    assert_eq!(
        check_expiry("01", floor + hour, &reading(floor + 400 * 24 * hour, false)),
        Ok(())
    );
    assert!(matches!(
        check_expiry("01", floor - hour, &reading(floor - 700 * 24 * hour, false)),
        Err(CertRefusal::ExpiredBeforeFloor { .. })
    ));
    // Synchronised: the clock, never below the floor.
    assert!(matches!(
        check_expiry("01", floor + hour, &reading(floor + 2 * hour, true)),
        Err(CertRefusal::Expired { .. })
    ));
    assert!(matches!(
        check_expiry("01", floor - hour, &reading(floor - 2 * hour, true)),
        Err(CertRefusal::Expired { .. })
    ));
    // notAfter exactly at the floor is not yet past it.
    assert_eq!(
        check_expiry("01", floor, &reading(floor - hour, false)),
        Ok(())
    );
}

#[test]
fn a_certificate_from_another_site_or_unknown_serial_is_refused() {
    let f = fixture();
    let cert = f.enroll("fridge-1", &f.token("fridge-1")).unwrap();
    assert!(matches!(
        f.registry
            .check_certificate(&f.identity(&cert), "store-2")
            .unwrap(),
        Err(CertRefusal::WrongSite { .. })
    ));
    let mut unknown = f.identity(&cert);
    unknown.serial = "00ff".to_owned();
    assert!(matches!(
        f.registry.check_certificate(&unknown, SITE).unwrap(),
        Err(CertRefusal::Unknown { .. })
    ));
}

#[test]
fn a_token_for_an_active_device_of_another_kind_is_refused() {
    let f = fixture();
    f.enroll("fridge-1", &f.token("fridge-1")).unwrap();
    let err = f
        .registry
        .create_token(
            "fridge-1",
            "cabinet",
            Duration::from_secs(60),
            &Actor::cli(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("revoke it first"), "{err}");
}

#[test]
fn every_change_is_in_a_verifiable_audit_chain() {
    let f = fixture();
    let cert = f.enroll("fridge-1", &f.token("fridge-1")).unwrap();
    f.registry
        .renew(
            &f.identity(&cert),
            &csr("fridge-1"),
            &f.ca,
            &policy(),
            SOURCE,
        )
        .unwrap()
        .unwrap();
    f.registry
        .revoke_device("fridge-1", "test", &Actor::cli())
        .unwrap();
    let kinds: Vec<_> = crate::audit::entries(f.registry.store(), 1, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            Kind::TokenCreated,
            Kind::DeviceEnrolled,
            Kind::DeviceRenewed,
            Kind::DeviceRevoked
        ]
    );
    assert_eq!(
        crate::audit::verify(f.registry.store(), None, &[]).unwrap(),
        Ok(4)
    );
}

const CRL_KEEP: Duration = Duration::from_secs(86_400);

fn listed(
    entries: &CrlEntries,
) -> Vec<(
    String,
    OffsetDateTime,
    Option<rxgate_certs::RevocationReason>,
)> {
    entries
        .revoked
        .iter()
        .map(|e| (e.serial.clone(), e.revoked_at, e.reason))
        .collect()
}

#[test]
fn the_crl_lists_a_revoked_device_certificate_at_its_revocation_time_without_a_reason() {
    let f = fixture();
    let cert = f.enroll("fridge-1", &f.token("fridge-1")).unwrap();
    assert_eq!(
        listed(&f.registry.crl_entries(T0, CRL_KEEP).unwrap()),
        vec![]
    );
    f.clock.advance(Duration::from_secs(60));
    f.registry
        .revoke_device("fridge-1", "stolen", &Actor::cli())
        .unwrap();
    let now = T0 + Duration::from_secs(120);
    assert_eq!(
        listed(&f.registry.crl_entries(now, CRL_KEEP).unwrap()),
        vec![(cert.serial, T0 + Duration::from_secs(60), None)]
    );
}

#[test]
fn the_crl_lists_a_certificate_replaced_by_a_new_enrollment_as_superseded() {
    let f = fixture();
    let first = f.enroll("fridge-1", &f.token("fridge-1")).unwrap();
    f.clock.advance(Duration::from_secs(30));
    let second = f.enroll("fridge-1", &f.token("fridge-1")).unwrap();
    let entries = f
        .registry
        .crl_entries(T0 + Duration::from_secs(40), CRL_KEEP)
        .unwrap();
    assert_eq!(
        listed(&entries),
        vec![(
            first.serial,
            T0 + Duration::from_secs(30),
            Some(rxgate_certs::RevocationReason::Superseded)
        )]
    );
    assert!(!listed(&entries).iter().any(|(s, ..)| *s == second.serial));
}

#[test]
fn the_crl_lists_a_renewed_certificate_only_once_its_grace_is_over_and_says_when_that_is() {
    let f = fixture();
    let first = f.enroll("fridge-1", &f.token("fridge-1")).unwrap();
    f.registry
        .renew(
            &f.identity(&first),
            &csr("fridge-1"),
            &f.ca,
            &policy(),
            SOURCE,
        )
        .unwrap()
        .unwrap();
    let grace_end = T0 + Duration::from_secs(300);
    let during = f.registry.crl_entries(T0, CRL_KEEP).unwrap();
    assert_eq!(listed(&during), vec![]);
    assert_eq!(during.next_change, Some(grace_end));
    let after = f.registry.crl_entries(grace_end, CRL_KEEP).unwrap();
    assert_eq!(
        listed(&after),
        vec![(
            first.serial,
            grace_end,
            Some(rxgate_certs::RevocationReason::Superseded)
        )]
    );
    assert_eq!(after.next_change, None);
}

#[test]
fn the_crl_drops_a_revoked_certificate_once_it_has_been_expired_for_longer_than_one_crl_validity() {
    let f = fixture();
    let cert = f.enroll("fridge-1", &f.token("fridge-1")).unwrap();
    f.registry
        .revoke_device("fridge-1", "retired", &Actor::cli())
        .unwrap();
    let at_expiry_plus_keep = cert.not_after + CRL_KEEP;
    assert_eq!(
        f.registry
            .crl_entries(at_expiry_plus_keep, CRL_KEEP)
            .unwrap()
            .revoked
            .len(),
        1
    );
    let later = at_expiry_plus_keep + Duration::from_secs(1);
    assert_eq!(
        f.registry
            .crl_entries(later, CRL_KEEP)
            .unwrap()
            .revoked
            .len(),
        0
    );
}

#[test]
fn crl_numbers_grow_by_one_and_survive_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = ManualClock::new(T0, true);
    {
        let registry = Registry::new(Store::create(&path).unwrap(), clock.clone());
        assert_eq!(registry.next_crl_number().unwrap(), 1);
        assert_eq!(registry.next_crl_number().unwrap(), 2);
    }
    let registry = Registry::new(Store::create(&path).unwrap(), clock);
    assert_eq!(registry.next_crl_number().unwrap(), 3);
}

#[tokio::test]
async fn a_revocation_wakes_whoever_waits_for_revocation_changes() {
    let f = fixture();
    f.enroll("fridge-1", &f.token("fridge-1")).unwrap();
    f.registry
        .revoke_device("fridge-1", "retired", &Actor::cli())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), f.registry.revocation_changed())
        .await
        .unwrap();
}
