//! Crash-safe replacement of small files (config, identity, state).
//!
//! The new content goes to a temporary file in the same directory, is
//! fsync'ed, then renamed over the target, and the directory is fsync'ed: a
//! crash leaves either the old or the new file, never a torn one. An existing
//! file keeps its mode and owner (so `config set` run by root does not make
//! the network user's config unreadable to it); a new file gets `new_mode`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A file operation that failed, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("could not {action} {}: {source}", path.display())]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FileError {
    pub fn new(action: &'static str, path: &Path, source: io::Error) -> Self {
        Self {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// Atomically replaces `path` with `contents`.
pub fn write(path: &Path, contents: &[u8], new_mode: u32) -> Result<(), FileError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| {
            FileError::new(
                "write",
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
            )
        })?
        .to_string_lossy()
        .into_owned();
    let existing = fs::metadata(path).ok();
    let mode = existing
        .as_ref()
        .map_or(new_mode, |m| m.permissions().mode() & 0o7777);

    let (tmp_path, mut tmp) = create_temp(&dir, &name, mode)
        .map_err(|e| FileError::new("create a temporary file in", &dir, e))?;
    let result = (|| {
        tmp.write_all(contents)
            .map_err(|e| FileError::new("write", &tmp_path, e))?;
        // The umask may have narrowed the mode at creation; set it exactly.
        tmp.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| FileError::new("set the mode of", &tmp_path, e))?;
        if let Some(m) = &existing {
            let (uid, gid) = (m.uid(), m.gid());
            let ours = tmp.metadata().map(|t| (t.uid(), t.gid())).ok();
            if ours != Some((uid, gid)) {
                std::os::unix::fs::fchown(&tmp, Some(uid), Some(gid))
                    .map_err(|e| FileError::new("keep the owner of", path, e))?;
            }
        }
        tmp.sync_all()
            .map_err(|e| FileError::new("flush", &tmp_path, e))?;
        fs::rename(&tmp_path, path).map_err(|e| FileError::new("replace", path, e))?;
        // Make the rename itself durable.
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| FileError::new("flush directory", &dir, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp_path);
    }
    result
}

fn create_temp(dir: &Path, name: &str, mode: u32) -> io::Result<(PathBuf, File)> {
    let pid = std::process::id();
    let mut attempt = 0u32;
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = dir.join(format!(".{name}.tmp-{pid}-{nanos:x}-{attempt}"));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 16 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_with_mode_and_replaces_keeping_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        write(&p, b"one", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );

        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        write(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn failure_names_the_directory() {
        let err = write(Path::new("/nonexistent-dir/x.json"), b"x", 0o600).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir"), "{err}");
    }
}
