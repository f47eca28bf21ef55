//! Operating-system users by name: the CLI's actors. The admin socket takes the uid from the
//! socket's peer credentials (SO_PEERCRED), never from anything the client says; a command that
//! opens the store itself takes its own process's uid. Every CLI action is recorded under the
//! user name found here.

/// The name of user `uid` from the system's user database, or `uid:<n>` when it has none.
pub fn user_name(uid: u32) -> String {
    lookup(uid).unwrap_or_else(|| format!("uid:{uid}"))
}

/// The user running this process (the CLI opening the store itself).
pub fn current_user() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    user_name(unsafe { libc::getuid() })
}

fn lookup(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf` outlives the use of `pwd`'s fields.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: getpwuid_r succeeded, so pw_name points to a NUL-terminated string in `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        return name.to_str().ok().map(str::to_owned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_0_is_root_and_an_unknown_uid_is_named_by_its_number() {
        assert_eq!(user_name(0), "root");
        assert_eq!(user_name(4_000_000_123), "uid:4000000123");
    }

    #[test]
    fn the_current_user_is_the_one_the_environment_names() {
        let expected = std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap();
        assert_eq!(
            current_user(),
            String::from_utf8_lossy(&expected.stdout).trim()
        );
    }
}
