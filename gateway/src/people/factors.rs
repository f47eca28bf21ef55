//! Second factors: TOTP (RFC 6238) and single-use recovery codes.
//!
//! TOTP is SHA-1, 6 digits, 30-second steps, the parameters every authenticator app supports;
//! a code is accepted for its own step and the one before and after (±30 s of clock skew), and
//! never twice: the account keeps the last step accepted and refuses that step and earlier ones.
//! Secrets are 160 random bits from the system generator, made on the gateway.
//!
//! Recovery codes: ten per account, each 80 random bits written as four groups of four base32
//! letters (`abcd-efgh-ijkl-mnop`). Only their SHA-256 is stored: at 80 bits, a fast hash is as
//! good as a slow one (the same reasoning as enrollment tokens). Each works once.

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use totp_rs::{Algorithm, Builder, Secret, Totp};

use crate::error::{Error, Result};

pub const TOTP_DIGITS: u8 = 6;
pub const TOTP_STEP_SECS: u64 = 30;
/// Steps accepted either side of the current one.
pub const TOTP_SKEW: u16 = 1;
/// Recovery codes given at set-up.
pub const RECOVERY_CODES: usize = 10;
/// What authenticator apps show as the account's issuer.
pub const ISSUER: &str = "rxgate";

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    random()
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Invalid("the system random number generator failed".to_owned()))?;
    Ok(bytes)
}

/// A new TOTP secret, base32 (what authenticator apps take, and what the store keeps).
pub fn new_totp_secret() -> Result<String> {
    Ok(Secret::from(random::<20>()?).to_base32())
}

fn totp(secret_b32: &str) -> Result<Totp> {
    let secret = Secret::try_from_base32(secret_b32).map_err(|e| Error::Corrupt {
        table: "people".to_owned(),
        key: "totp".to_owned(),
        reason: format!("the TOTP secret is not base32: {e:?}"),
    })?;
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(TOTP_DIGITS)
        .with_step_duration(TOTP_STEP_SECS)
        .with_skew(TOTP_SKEW)
        .with_secret(secret)
        .build()
        .map_err(|e| Error::Invalid(format!("TOTP parameters: {e:?}")))
}

fn unix_secs(now: OffsetDateTime) -> u64 {
    u64::try_from(now.unix_timestamp()).unwrap_or(0)
}

/// The step `code` belongs to at `now` (±1 step), if it is right and newer than `last_step`
/// (the last step this account had accepted): a code seen once is refused for the rest of its
/// window. `Err(Replayed)` when the code is right but its step was already used.
pub fn check_totp(
    secret_b32: &str,
    code: &str,
    now: OffsetDateTime,
    last_step: Option<u64>,
) -> Result<std::result::Result<u64, TotpRefused>> {
    let totp = totp(secret_b32)?;
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    Ok(match totp.check(&code, unix_secs(now)) {
        None => Err(TotpRefused::Wrong),
        Some(step) if last_step.is_some_and(|last| step <= last) => Err(TotpRefused::Replayed),
        Some(step) => Ok(step),
    })
}

/// Why a TOTP code was not accepted (for the audit trail; the person is told neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpRefused {
    Wrong,
    Replayed,
}

/// The code an authenticator shows at `at` (for tests and for the console's set-up checks).
pub fn totp_code(secret_b32: &str, at: OffsetDateTime) -> Result<String> {
    Ok(totp(secret_b32)?.generate(unix_secs(at)).to_string())
}

/// The `otpauth://` URI authenticator apps scan (Key Uri Format): issuer, account, secret and
/// the parameters, spelled out so that apps do not assume others.
pub fn provisioning_uri(site: &str, account: &str, secret_b32: &str) -> String {
    let label = format!("{ISSUER} {site}:{account}");
    format!(
        "otpauth://totp/{}?secret={secret_b32}&issuer={}&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP_SECS}",
        percent_encode(&label),
        percent_encode(&format!("{ISSUER} {site}"))
    )
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else if b == b':' {
            // The label's issuer/account separator stays readable (apps accept both).
            out.push(':');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One recovery code as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryCode {
    /// SHA-256 of the normalised code, hex.
    pub sha256: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub used_at: Option<OffsetDateTime>,
}

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A code as typed: lower case, without spaces or dashes.
fn normalise(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn sha256_hex(text: &str) -> String {
    crate::audit::hex(digest::digest(&digest::SHA256, text.as_bytes()).as_ref())
}

/// Ten new recovery codes: what to show the person once, and what to store.
pub fn new_recovery_codes() -> Result<(Vec<String>, Vec<RecoveryCode>)> {
    let mut shown = Vec::with_capacity(RECOVERY_CODES);
    let mut stored = Vec::with_capacity(RECOVERY_CODES);
    for _ in 0..RECOVERY_CODES {
        // 80 bits = 16 base32 letters.
        let bytes = random::<10>()?;
        let mut bits: u128 = 0;
        for b in bytes {
            bits = (bits << 8) | u128::from(b);
        }
        let letters: String = (0..16)
            .rev()
            .map(|i| BASE32[((bits >> (i * 5)) & 31) as usize] as char)
            .collect();
        let code = format!(
            "{}-{}-{}-{}",
            &letters[0..4],
            &letters[4..8],
            &letters[8..12],
            &letters[12..16]
        );
        stored.push(RecoveryCode {
            sha256: sha256_hex(&normalise(&code)),
            used_at: None,
        });
        shown.push(code);
    }
    Ok((shown, stored))
}

/// Marks the unused code matching `code` as used at `now` and returns true; false if none
/// matches (wrong, or already used).
pub fn use_recovery_code(codes: &mut [RecoveryCode], code: &str, now: OffsetDateTime) -> bool {
    let digest = sha256_hex(&normalise(code));
    let mut found = None;
    for (i, c) in codes.iter().enumerate() {
        let same: bool = c.sha256.as_bytes().ct_eq(digest.as_bytes()).into();
        if same && c.used_at.is_none() {
            found = Some(i);
        }
    }
    match found.and_then(|i| codes.get_mut(i)) {
        Some(c) => {
            c.used_at = Some(now);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    /// RFC 6238 appendix B's SHA-1 secret ("12345678901234567890"), in base32.
    const RFC_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

    #[test]
    fn totp_codes_match_the_rfc_6238_test_vectors_truncated_to_six_digits() {
        // Appendix B, SHA-1: 59 s → 94287082, 1111111109 → 07081804, 2000000000 → 69279037.
        for (unix, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (2_000_000_000, "279037"),
        ] {
            let at = OffsetDateTime::from_unix_timestamp(unix).unwrap();
            assert_eq!(totp_code(RFC_SECRET, at).unwrap(), code, "at {unix}");
        }
    }

    #[test]
    fn a_totp_code_is_accepted_one_step_either_side_and_refused_two_steps_away() {
        let secret = new_totp_secret().unwrap();
        let at = datetime!(2026-05-01 10:00:15 UTC);
        let code = totp_code(&secret, at).unwrap();
        let step = (at.unix_timestamp() as u64) / 30;
        for offset in [-30, 0, 30] {
            let now = at + time::Duration::seconds(offset);
            assert_eq!(
                check_totp(&secret, &code, now, None).unwrap(),
                Ok(step),
                "{offset}s"
            );
        }
        for offset in [-60, 60] {
            let now = at + time::Duration::seconds(offset);
            assert_eq!(
                check_totp(&secret, &code, now, None).unwrap(),
                Err(TotpRefused::Wrong),
                "{offset}s"
            );
        }
        assert_eq!(
            check_totp(&secret, "12345", at, None).unwrap(),
            Err(TotpRefused::Wrong)
        );
    }

    #[test]
    fn a_totp_code_already_accepted_is_refused_as_a_replay_for_the_rest_of_its_window() {
        let secret = new_totp_secret().unwrap();
        let at = datetime!(2026-05-01 10:00:00 UTC);
        let code = totp_code(&secret, at).unwrap();
        let step = check_totp(&secret, &code, at, None).unwrap().unwrap();
        let later = at + time::Duration::seconds(40);
        assert_eq!(
            check_totp(&secret, &code, later, Some(step)).unwrap(),
            Err(TotpRefused::Replayed)
        );
        // The previous step's code, still inside the skew, is older than the one used: refused.
        let earlier = totp_code(&secret, at - time::Duration::seconds(30)).unwrap();
        assert_eq!(
            check_totp(&secret, &earlier, at, Some(step)).unwrap(),
            Err(TotpRefused::Replayed)
        );
        let next = totp_code(&secret, later).unwrap();
        assert_eq!(
            check_totp(&secret, &next, later, Some(step)).unwrap(),
            Ok(step + 1)
        );
    }

    #[test]
    fn the_provisioning_uri_names_the_issuer_account_secret_and_parameters() {
        assert_eq!(
            provisioning_uri("store-0042", "alvarez", "JBSWY3DPEHPK3PXP"),
            "otpauth://totp/rxgate%20store-0042:alvarez?secret=JBSWY3DPEHPK3PXP\
             &issuer=rxgate%20store-0042&algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn ten_recovery_codes_each_work_once_in_any_case_and_spacing() {
        let (shown, mut stored) = new_recovery_codes().unwrap();
        assert_eq!((shown.len(), stored.len()), (10, 10));
        assert!(
            shown
                .iter()
                .all(|c| c.len() == 19 && c.matches('-').count() == 3),
            "{shown:?}"
        );
        let distinct: std::collections::HashSet<_> = shown.iter().collect();
        assert_eq!(distinct.len(), 10);
        let now = datetime!(2026-05-01 10:00 UTC);
        let typed = shown[3].to_uppercase().replace('-', " ");
        assert!(use_recovery_code(&mut stored, &typed, now));
        assert!(!use_recovery_code(&mut stored, &shown[3], now), "used once");
        assert!(!use_recovery_code(&mut stored, "aaaa-aaaa-aaaa-aaaa", now));
        assert_eq!(stored.iter().filter(|c| c.used_at.is_some()).count(), 1);
        assert!(
            stored
                .iter()
                .all(|c| !c.sha256.contains(&normalise(&shown[0])))
        );
    }
}
