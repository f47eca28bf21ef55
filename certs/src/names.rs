//! Validation of the identifiers that end up in certificates, MQTT topics, URIs and file names.

use crate::Error;

/// The device kinds rxgate knows, as used in device certificates and enrollment tokens.
pub const KINDS: &[&str] = &["fridge", "cabinet", "sensor"];

/// The longest device or site id: X.520's upper bound for a common name.
const MAX_ID_LEN: usize = 64;

/// Checks a device id: 1 to 64 characters of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
///
/// Device ids appear in MQTT topics (`devices/<id>/`), in certificate URIs and in file names, so
/// this set keeps them free of separators, wildcards and path tricks.
pub fn validate_device_id(id: &str) -> Result<(), Error> {
    check_id(id).map_err(|reason| Error::InvalidDeviceId {
        id: id.to_owned(),
        reason,
    })
}

/// Checks a site id with the same rules as [`validate_device_id`]; site ids are part of every
/// cloud topic and of device certificate URIs.
pub fn validate_site(site: &str) -> Result<(), Error> {
    check_id(site).map_err(|reason| Error::InvalidSite {
        site: site.to_owned(),
        reason,
    })
}

/// Checks that `kind` is one of [`KINDS`].
pub fn validate_kind(kind: &str) -> Result<(), Error> {
    if KINDS.contains(&kind) {
        Ok(())
    } else {
        Err(Error::InvalidKind {
            kind: kind.to_owned(),
        })
    }
}

fn check_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("it is empty");
    }
    if id.len() > MAX_ID_LEN {
        return Err("it is longer than 64 characters");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("it contains a character outside A-Z a-z 0-9 . _ -");
    }
    if id.starts_with(['.', '-']) {
        return Err("it starts with '.' or '-'");
    }
    Ok(())
}

/// Checks a CA common name: 1 to 64 characters, no control characters.
pub(crate) fn check_common_name(what: &'static str, name: &str) -> Result<(), Error> {
    let reason = if name.trim().is_empty() {
        Some("it is empty")
    } else if name.chars().count() > MAX_ID_LEN {
        Some("it is longer than 64 characters")
    } else if name.chars().any(char::is_control) {
        Some("it contains control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            what,
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks a DNS name for a server certificate: labels of `A-Z a-z 0-9 -` separated by dots.
pub(crate) fn check_dns_name(name: &str) -> Result<(), Error> {
    let bad = |reason| Error::InvalidName {
        what: "server name",
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > 253 {
        return Err(bad(
            "a DNS name must have 1 to 253 characters; pass a host name or an IP address",
        ));
    }
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad(
                "each dot-separated label must have 1 to 63 characters; pass a host name or an IP address",
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(bad(
                "labels may only hold A-Z a-z 0-9 and inner '-'; pass a host name or an IP address",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_accept_the_documented_alphabet() {
        for id in ["fridge-01", "a", "Cab_2.north", &"x".repeat(64)] {
            assert!(validate_device_id(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn device_ids_refuse_separators_wildcards_and_leading_dots() {
        for id in [
            "",
            ".hidden",
            "-flag",
            "a/b",
            "a+b",
            "a#",
            "a b",
            "été",
            "a:b",
            &"x".repeat(65),
        ] {
            let err = validate_device_id(id).unwrap_err();
            assert!(matches!(err, Error::InvalidDeviceId { .. }), "{id}: {err}");
        }
    }

    #[test]
    fn kinds_are_exactly_the_three_known_ones() {
        assert_eq!(KINDS, ["fridge", "cabinet", "sensor"]);
        assert!(validate_kind("cabinet").is_ok());
        let err = validate_kind("Fridge").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown device kind \"Fridge\"; use one of: fridge, cabinet, sensor"
        );
    }

    #[test]
    fn dns_names_refuse_empty_labels_and_odd_characters() {
        assert!(check_dns_name("rxgate.local").is_ok());
        assert!(check_dns_name("localhost").is_ok());
        for name in ["", "a..b", "-a.b", "a_b.c", "a b", "*.example.com"] {
            assert!(check_dns_name(name).is_err(), "{name}");
        }
    }
}
