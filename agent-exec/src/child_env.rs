//! The environment every child process starts with.
//!
//! Never the executor's own environment: whatever systemd or agent-net put
//! there (and anything an attacker could smuggle in) must not reach operator
//! commands (PROTOCOL.md §13 item 26). The base is:
//!
//! | variable | value |
//! |---|---|
//! | `HOME`, `USER`, `LOGNAME` | from the password database for the executor's uid |
//! | `SHELL` | the shell that runs the command |
//! | `PATH` | [`DEFAULT_PATH`] |
//! | `LANG` | `C.UTF-8` |
//! | `PAGER` | `cat` (no pager may wait for a key) |
//! | `COLUMNS` | `100000` (tools must not wrap or cut lines) |
//!
//! A task's `environment` overrides any of these.

use std::ffi::CStr;

/// `PATH` of every child.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Who the executor runs as, looked up once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub home: String,
    /// Login shell from the password database, if any.
    pub shell: Option<String>,
}

impl User {
    /// The password-database entry of the current uid; a uid without an
    /// entry gets its number as name and `/` as home.
    pub fn current() -> Self {
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        // SAFETY: every pointer refers to live, correctly sized storage; the
        // strings read below point into `buf`, which outlives them.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        if rc != 0 || result.is_null() {
            return Self {
                name: uid.to_string(),
                home: "/".into(),
                shell: None,
            };
        }
        // SAFETY: non-null NUL-terminated strings inside `buf` (see above).
        let text = |p: *const libc::c_char| {
            if p.is_null() {
                String::new()
            } else {
                unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
            }
        };
        let name = text(pwd.pw_name);
        let home = text(pwd.pw_dir);
        let shell = text(pwd.pw_shell);
        Self {
            name: if name.is_empty() {
                uid.to_string()
            } else {
                name
            },
            home: if home.is_empty() { "/".into() } else { home },
            shell: Some(shell).filter(|s| !s.is_empty()),
        }
    }
}

/// The uid of user `name` from the password database.
pub fn uid_of(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: every pointer refers to live, correctly sized storage.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(pwd.pw_uid)
}

/// The base environment for a child run with `shell`, then `overrides`.
pub fn build(user: &User, shell: &str, overrides: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("HOME".into(), user.home.clone()),
        ("USER".into(), user.name.clone()),
        ("LOGNAME".into(), user.name.clone()),
        ("SHELL".into(), shell.into()),
        ("PATH".into(), DEFAULT_PATH.into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("PAGER".into(), "cat".into()),
        ("COLUMNS".into(), "100000".into()),
    ];
    for (key, value) in overrides {
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.clone(),
            None => env.push((key.clone(), value.clone())),
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_is_fixed_and_overrides_win() {
        let user = User {
            name: "noderax".into(),
            home: "/var/lib/noderax-agent".into(),
            shell: None,
        };
        let env = build(
            &user,
            "/bin/bash",
            &[("PAGER".into(), "less".into()), ("FOO".into(), "1".into())],
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("HOME"), Some("/var/lib/noderax-agent"));
        assert_eq!(get("USER"), Some("noderax"));
        assert_eq!(get("LOGNAME"), Some("noderax"));
        assert_eq!(get("SHELL"), Some("/bin/bash"));
        assert_eq!(get("PATH"), Some(DEFAULT_PATH));
        assert_eq!(get("COLUMNS"), Some("100000"));
        assert_eq!(get("PAGER"), Some("less"));
        assert_eq!(get("FOO"), Some("1"));
        assert_eq!(env.len(), 9);
    }

    #[test]
    fn users_resolve_to_their_uid() {
        assert_eq!(uid_of("root"), Some(0));
        assert_eq!(uid_of("no-such-user-here"), None);
    }

    #[test]
    fn current_user_has_a_name_and_a_home() {
        let user = User::current();
        assert!(!user.name.is_empty());
        assert!(user.home.starts_with('/'));
    }
}
