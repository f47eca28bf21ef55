//! Account passwords: the policy a new password must meet, and Argon2id hashing.
//!
//! Parameters: Argon2id, m = 19 MiB (19 456 KiB), t = 2, p = 1, 32-byte output, 16-byte random
//! salt: OWASP's recommended minimum for Argon2id. On a Raspberry Pi 4 one hash takes in the
//! order of a tenth of a second and 19 MiB for that moment, which a few sign-ins at once can
//! afford; larger memory would let a handful of simultaneous sign-ins exhaust a 1 GiB Pi. The
//! parameters are stored in each hash (PHC string), so raising them later keeps old hashes valid.

use std::sync::OnceLock;

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};

/// Shortest password accepted.
pub const MIN_LENGTH: usize = 12;
/// Longest password accepted: beyond it a password is a paste accident or an attack on the hasher.
pub const MAX_LENGTH: usize = 256;

/// Argon2id memory, KiB (19 MiB).
pub const ARGON2_M_KIB: u32 = 19 * 1024;
pub const ARGON2_T: u32 = 2;
pub const ARGON2_P: u32 = 1;

const COMMON: &str = include_str!("common-passwords.txt");

fn common() -> &'static std::collections::HashSet<&'static str> {
    static SET: OnceLock<std::collections::HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    })
}

/// Why a password is refused; shown to the person choosing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordRefused {
    #[error("the password is {length} characters long; use at least {MIN_LENGTH}")]
    TooShort { length: usize },
    #[error("the password is longer than {MAX_LENGTH} characters; use a shorter one")]
    TooLong,
    #[error(
        "the password is one of the most common passwords; choose another (a few unrelated words work well)"
    )]
    Common,
    #[error("the password contains the account name; choose one that does not")]
    ContainsName,
}

/// Checks a new password for account `name` against the policy.
pub fn check_policy(name: &str, password: &str) -> std::result::Result<(), PasswordRefused> {
    let length = password.chars().count();
    if length < MIN_LENGTH {
        return Err(PasswordRefused::TooShort { length });
    }
    if length > MAX_LENGTH {
        return Err(PasswordRefused::TooLong);
    }
    let lower = password.to_lowercase();
    if common().contains(lower.trim()) {
        return Err(PasswordRefused::Common);
    }
    let name = name.trim().to_lowercase();
    if !name.is_empty() && lower.contains(&name) {
        return Err(PasswordRefused::ContainsName);
    }
    Ok(())
}

fn hasher() -> Result<Argon2<'static>> {
    let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(32))
        .map_err(|e| Error::Invalid(format!("Argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// The Argon2id hash of `password`, as a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
pub fn hash(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| Error::Invalid("the system random number generator failed".to_owned()))?;
    let hash = hasher()?
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map_err(|e| Error::Invalid(format!("cannot hash the password: {e}")))?;
    Ok(hash.to_string())
}

/// Whether `password` matches `phc`. An unreadable hash matches nothing.
pub fn verify(password: &str, phc: &str) -> bool {
    match hasher() {
        Ok(h) => h.verify_password(password.as_bytes(), phc).is_ok(),
        Err(_) => false,
    }
}

/// Costs what [`verify`] costs, for a sign-in naming no account (or one without a password), so
/// the time taken does not tell whether the account exists.
pub fn verify_nothing(password: &str) {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    if let Some(phc) = DUMMY.get_or_init(|| hash("rxgate: no such account, no such password").ok())
    {
        let _ = verify(password, phc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_hashes_to_argon2id_with_the_owasp_parameters_and_verifies_only_itself() {
        let phc = hash("correct pony battery").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify("correct pony battery", &phc));
        assert!(!verify("correct pony batterY", &phc));
        assert!(!verify("correct pony battery", "not a hash"));
        assert_ne!(
            hash("correct pony battery").unwrap(),
            phc,
            "a fresh salt each time"
        );
    }

    #[test]
    fn the_policy_refuses_short_common_and_name_containing_passwords_and_accepts_a_long_one() {
        assert_eq!(
            check_policy("alvarez", "short pass1"),
            Err(PasswordRefused::TooShort { length: 11 })
        );
        assert_eq!(
            check_policy("alvarez", "Password1234"),
            Err(PasswordRefused::Common)
        );
        assert_eq!(
            check_policy("alvarez", "QWERTYUIOP123"),
            Err(PasswordRefused::Common)
        );
        assert_eq!(
            check_policy("alvarez", "my name is ALVAREZ!"),
            Err(PasswordRefused::ContainsName)
        );
        assert_eq!(
            check_policy("alvarez", &"x".repeat(MAX_LENGTH + 1)),
            Err(PasswordRefused::TooLong)
        );
        assert_eq!(check_policy("alvarez", "fridge lamp ocean tulip"), Ok(()));
        // Twelve characters counted as characters, not bytes.
        assert_eq!(
            check_policy("alvarez", "ééééééééééé"),
            Err(PasswordRefused::TooShort { length: 11 })
        );
    }

    #[test]
    fn the_shipped_common_list_has_hundreds_of_lower_case_entries() {
        let list = common();
        assert!(list.len() >= 300, "{}", list.len());
        assert!(list.iter().all(|p| *p == p.to_lowercase()));
        assert!(list.contains("123456") && list.contains("password1234"));
    }
}
