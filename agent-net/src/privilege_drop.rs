//! Leaving root when `noderax-agent run` is started as root in the
//! foreground (the shipped units start it as `noderax-net` directly).
//!
//! Order matters: the capability bounding set can only be emptied while
//! CAP_SETPCAP is still held, supplementary groups and the gid only while
//! root, so: bounding set → groups → gid → uid → check that no capability
//! and no way back to uid 0 remains.

use std::ffi::CString;

use caps::CapSet;

/// Why dropping privileges failed; the agent does not start.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error(
        "user {0:?} does not exist; create it (the installer creates noderax-net) or name another"
    )]
    NoSuchUser(String),
    #[error("user {0:?} is root; name an unprivileged user")]
    RootUser(String),
    #[error("{what} failed: {err}")]
    Call {
        what: &'static str,
        err: std::io::Error,
    },
    #[error("capabilities could not be cleared: {0}")]
    Caps(String),
    #[error("still privileged after the drop ({0}); refusing to run")]
    StillPrivileged(String),
}

/// The user's uid, gid and home directory.
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

/// Looks `name` up in the user database.
pub fn account(name: &str) -> Result<Account, DropError> {
    let c = CString::new(name).map_err(|_| DropError::NoSuchUser(name.to_owned()))?;
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the sizes given; `out` is set to
    // `&mut pw` or null.
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() {
        return Err(DropError::NoSuchUser(name.to_owned()));
    }
    Ok(Account {
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    })
}

fn check(rc: libc::c_int, what: &'static str) -> Result<(), DropError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(DropError::Call {
            what,
            err: std::io::Error::last_os_error(),
        })
    }
}

/// Becomes `name` for good. Must run before any thread is started: uid
/// changes apply per thread at the kernel level.
pub fn become_user(name: &str) -> Result<Account, DropError> {
    let acct = account(name)?;
    if acct.uid == 0 {
        return Err(DropError::RootUser(name.to_owned()));
    }
    for cap in caps::all() {
        caps::drop(None, CapSet::Bounding, cap).map_err(|e| DropError::Caps(e.to_string()))?;
    }
    // SAFETY: plain system calls with valid arguments.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        check(libc::setresgid(acct.gid, acct.gid, acct.gid), "setresgid")?;
        check(libc::setresuid(acct.uid, acct.uid, acct.uid), "setresuid")?;
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| DropError::Caps(e.to_string()))?;
    }
    // SAFETY: plain system calls.
    let (uid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
    if uid == 0 || euid == 0 || unsafe { libc::setuid(0) } == 0 {
        return Err(DropError::StillPrivileged("uid 0 is reachable".into()));
    }
    let left = caps::read(None, CapSet::Permitted).map_err(|e| DropError::Caps(e.to_string()))?;
    if !left.is_empty() {
        return Err(DropError::StillPrivileged(format!(
            "permitted capabilities {left:?}"
        )));
    }
    Ok(acct)
}
