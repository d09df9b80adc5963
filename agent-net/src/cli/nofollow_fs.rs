//! Removing and re-owning files below a root directory without ever
//! following a symbolic link, for `uninstall`, which runs as root on paths
//! that unprivileged users may have had a hand in.
//!
//! An absolute path is walked from the root one component at a time, each
//! directory opened with `O_NOFOLLOW`, and every change is made relative to
//! the descriptor of the directory that holds the entry (`unlinkat`,
//! `fchownat(AT_SYMLINK_NOFOLLOW)`). A symbolic link anywhere on the way
//! stops the walk; a link at the end is removed itself. Recursive removal
//! stays on the file system it starts on.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// What an entry is (not following links).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    Symlink,
    File,
}

/// The outcome of removing one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    Yes,
    /// It did not exist (nothing to do).
    Missing,
    /// A directory that is not empty; kept.
    NotEmpty,
}

/// The root every path is resolved below (`/`, or a test's directory).
pub struct Root {
    fd: OwnedFd,
    dir: PathBuf,
}

fn cstring(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn open_dir_at(parent: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: openat with a NUL-terminated name; the result is a new fd we own.
    let fd = check(unsafe {
        libc::openat(
            parent,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd is a freshly opened descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn stat_at(parent: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: a zeroed stat is a valid out-parameter for fstatat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstatat(parent, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn stat_fd(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: as above, on an fd we hold.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

fn kind_of(st: &libc::stat) -> Kind {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        _ => Kind::File,
    }
}

fn unlink_at(parent: RawFd, name: &CStr, dir: bool) -> io::Result<()> {
    let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: unlinkat with a NUL-terminated name.
    check(unsafe { libc::unlinkat(parent, name.as_ptr(), flags) }).map(|_| ())
}

/// The names in an open directory, without `.` and `..`.
fn list(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    // fdopendir takes the descriptor over; give it a duplicate.
    // SAFETY: dup of an fd we hold; fdopendir/readdir/closedir on the
    // duplicate only, and every d_name is copied before the next readdir.
    unsafe {
        let dup = check(libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0))?;
        let stream = libc::fdopendir(dup);
        if stream.is_null() {
            let e = io::Error::last_os_error();
            libc::close(dup);
            return Err(e);
        }
        let mut names = Vec::new();
        loop {
            *libc::__errno_location() = 0;
            let ent = libc::readdir(stream);
            if ent.is_null() {
                let errno = *libc::__errno_location();
                libc::closedir(stream);
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(errno));
                }
                break;
            }
            let name = CStr::from_ptr((*ent).d_name.as_ptr());
            let b = name.to_bytes();
            if b != b"." && b != b".." {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }
}

impl Root {
    pub fn open(dir: &Path) -> io::Result<Self> {
        let c = cstring(dir.as_os_str().as_bytes())?;
        // SAFETY: open with a NUL-terminated path; the result is ours.
        let fd = check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        Ok(Self {
            // SAFETY: freshly opened.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            dir: dir.to_owned(),
        })
    }

    /// `abs` as it is on this machine (for messages).
    pub fn shown(&self, abs: &str) -> PathBuf {
        if self.dir == Path::new("/") {
            PathBuf::from(abs)
        } else {
            self.dir.join(abs.trim_start_matches('/'))
        }
    }

    /// The directory holding `abs` and `abs`'s last name; `Ok(None)` when a
    /// directory on the way does not exist. `abs` must be absolute and
    /// normal (checked by the manifest reader).
    fn parent_of(&self, abs: &str) -> io::Result<Option<(OwnedFd, CString)>> {
        let comps: Vec<&str> = abs.split('/').filter(|c| !c.is_empty()).collect();
        let Some((last, dirs)) = comps.split_last() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the root itself is never removed",
            ));
        };
        let mut cur = open_dir_at(self.fd.as_raw_fd(), c".")?;
        let mut walked = String::new();
        for comp in dirs {
            walked.push('/');
            walked.push_str(comp);
            let name = cstring(comp.as_bytes())?;
            match open_dir_at(cur.as_raw_fd(), &name) {
                Ok(fd) => cur = fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                    let what = match stat_at(cur.as_raw_fd(), &name).map(|st| kind_of(&st)) {
                        Ok(Kind::Symlink) => "a symbolic link",
                        _ => "not a directory",
                    };
                    return Err(io::Error::other(format!(
                        "{} is {what}; nothing below it is touched",
                        self.shown(&walked).display()
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Some((cur, cstring(last.as_bytes())?)))
    }

    /// What `abs` is, or `None` when it does not exist.
    pub fn kind(&self, abs: &str) -> io::Result<Option<Kind>> {
        let Some((parent, name)) = self.parent_of(abs)? else {
            return Ok(None);
        };
        match stat_at(parent.as_raw_fd(), &name) {
            Ok(st) => Ok(Some(kind_of(&st))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Owner, group and mode of `abs` (not following a final link).
    pub fn owner_mode(&self, abs: &str) -> io::Result<Option<(u32, u32, u32)>> {
        let Some((parent, name)) = self.parent_of(abs)? else {
            return Ok(None);
        };
        match stat_at(parent.as_raw_fd(), &name) {
            Ok(st) => Ok(Some((st.st_uid, st.st_gid, st.st_mode & 0o7777))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a regular file (not through a link) of at most `max` bytes.
    pub fn read(&self, abs: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        use std::io::Read as _;
        let Some((parent, name)) = self.parent_of(abs)? else {
            return Ok(None);
        };
        // SAFETY: openat with a NUL-terminated name; the result is ours.
        let fd = match check(unsafe {
            libc::openat(
                parent.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        }) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // SAFETY: freshly opened.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if kind_of(&stat_fd(file.as_raw_fd())?) != Kind::File {
            return Err(io::Error::other("not a regular file"));
        }
        let mut bytes = Vec::new();
        file.take(max + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > max {
            return Err(io::Error::other(format!("larger than {max} bytes")));
        }
        Ok(Some(bytes))
    }

    /// Removes a file or link, or a directory if it is empty.
    pub fn remove(&self, abs: &str) -> io::Result<Removed> {
        let Some((parent, name)) = self.parent_of(abs)? else {
            return Ok(Removed::Missing);
        };
        let st = match stat_at(parent.as_raw_fd(), &name) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removed::Missing),
            Err(e) => return Err(e),
        };
        let dir = kind_of(&st) == Kind::Dir;
        match unlink_at(parent.as_raw_fd(), &name, dir) {
            Ok(()) => Ok(Removed::Yes),
            Err(e) if dir && matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
                Ok(Removed::NotEmpty)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes `abs` with everything below it.
    pub fn remove_tree(&self, abs: &str) -> io::Result<Removed> {
        let Some((parent, name)) = self.parent_of(abs)? else {
            return Ok(Removed::Missing);
        };
        let dev = stat_fd(parent.as_raw_fd())?.st_dev;
        match remove_tree_at(parent.as_raw_fd(), &name, dev) {
            Ok(()) => Ok(Removed::Yes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Removed::Missing),
            Err(e) => Err(e),
        }
    }

    /// Gives every entry at and below `abs` whose owner is in `uids` to
    /// uid 0, and whose group is in `gids` to gid 0. Returns how many
    /// entries changed.
    pub fn chown_tree_to_root(&self, abs: &str, uids: &[u32], gids: &[u32]) -> io::Result<usize> {
        let Some((parent, name)) = self.parent_of(abs)? else {
            return Ok(0);
        };
        let dev = stat_fd(parent.as_raw_fd())?.st_dev;
        chown_tree_at(parent.as_raw_fd(), &name, dev, uids, gids)
    }
}

fn remove_tree_at(parent: RawFd, name: &CStr, dev: libc::dev_t) -> io::Result<()> {
    let st = stat_at(parent, name)?;
    if kind_of(&st) == Kind::Dir {
        if st.st_dev != dev {
            return Err(io::Error::other(format!(
                "{} is a mount point; not removed",
                name.to_string_lossy()
            )));
        }
        let dir = open_dir_at(parent, name)?;
        for entry in list(&dir)? {
            remove_tree_at(dir.as_raw_fd(), &entry, dev)?;
        }
        unlink_at(parent, name, true)
    } else {
        unlink_at(parent, name, false)
    }
}

fn chown_tree_at(
    parent: RawFd,
    name: &CStr,
    dev: libc::dev_t,
    uids: &[u32],
    gids: &[u32],
) -> io::Result<usize> {
    let st = match stat_at(parent, name) {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut changed = 0;
    let (to_uid, to_gid) = (
        if uids.contains(&st.st_uid) {
            0
        } else {
            u32::MAX
        },
        if gids.contains(&st.st_gid) {
            0
        } else {
            u32::MAX
        },
    );
    if to_uid != u32::MAX || to_gid != u32::MAX {
        // SAFETY: fchownat on a NUL-terminated name; -1 (u32::MAX) leaves an id.
        check(unsafe {
            libc::fchownat(
                parent,
                name.as_ptr(),
                to_uid,
                to_gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        changed += 1;
    }
    if kind_of(&st) == Kind::Dir && st.st_dev == dev {
        let dir = open_dir_at(parent, name)?;
        for entry in list(&dir)? {
            changed += chown_tree_at(dir.as_raw_fd(), &entry, dev, uids, gids)?;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn removes_without_following_links() {
        let root_dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = root_dir.path();
        std::fs::write(outside.path().join("precious"), "x").unwrap();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::write(r.join("a/b/f"), "f").unwrap();
        // A directory on the way replaced by a link to somewhere else.
        symlink(outside.path(), r.join("a/link")).unwrap();
        let root = Root::open(r).unwrap();

        let err = root.remove("/a/link/precious").unwrap_err().to_string();
        assert!(err.contains("is a symbolic link"), "{err}");
        let err = root.remove_tree("/a/link/precious").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(outside.path().join("precious").exists());

        // A link at the end goes, its target stays.
        assert_eq!(root.kind("/a/link").unwrap(), Some(Kind::Symlink));
        assert_eq!(root.remove_tree("/a/link").unwrap(), Removed::Yes);
        assert!(outside.path().join("precious").exists());

        assert_eq!(root.remove("/a/b").unwrap(), Removed::NotEmpty);
        assert_eq!(root.remove("/a/b/f").unwrap(), Removed::Yes);
        assert_eq!(root.remove("/a/b/f").unwrap(), Removed::Missing);
        assert_eq!(root.remove("/nope/x").unwrap(), Removed::Missing);
        assert_eq!(root.remove("/a/b").unwrap(), Removed::Yes);

        std::fs::create_dir_all(r.join("t/x/y")).unwrap();
        std::fs::write(r.join("t/x/y/z"), "z").unwrap();
        symlink(outside.path(), r.join("t/x/out")).unwrap();
        assert_eq!(root.remove_tree("/t").unwrap(), Removed::Yes);
        assert!(!r.join("t").exists());
        assert!(outside.path().join("precious").exists());
        assert_eq!(root.remove_tree("/t").unwrap(), Removed::Missing);
    }

    #[test]
    fn reads_only_regular_files_not_through_links() {
        let root_dir = tempfile::tempdir().unwrap();
        let r = root_dir.path();
        std::fs::write(r.join("m"), "manifest").unwrap();
        symlink(r.join("m"), r.join("l")).unwrap();
        let root = Root::open(r).unwrap();
        assert_eq!(root.read("/m", 100).unwrap().unwrap(), b"manifest");
        assert!(root.read("/m", 3).is_err());
        assert!(root.read("/l", 100).is_err());
        assert_eq!(root.read("/none", 100).unwrap(), None);
    }
}
