//! One task's output, kept until the network process acknowledges it.
//!
//! Every chunk gets the next sequence number (1, 2, ...) and stays here until
//! an `AckOutput` covers it, so a network process that restarts mid-task can
//! ask for a replay and lose nothing. Chunks live in memory up to a bound;
//! beyond it they are appended to a spill file under the executor's state
//! directory; beyond the spill bound they are dropped and counted, and the
//! count ends up in `TaskExit::dropped_bytes` (never a silent loss).
//!
//! Sequence numbers are only given to stored chunks, so the stored ones are
//! always contiguous: `acked + 1 ..= last_seq`.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use shared::ipc::OutputStream;

/// Limits of one buffer.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Unacknowledged bytes kept in memory.
    pub memory: usize,
    /// Unacknowledged bytes kept in the spill file.
    pub spill: u64,
}

enum Data {
    Memory(Vec<u8>),
    Spilled { offset: u64, len: usize },
}

struct Chunk {
    seq: u64,
    stream: OutputStream,
    data: Data,
}

/// The unacknowledged output of one task.
pub struct OutputBuffer {
    chunks: VecDeque<Chunk>,
    last_seq: u64,
    acked: u64,
    memory_used: usize,
    spill_path: PathBuf,
    spill: Option<File>,
    /// End of the spill file; reset to 0 when no spilled chunk is left.
    spill_end: u64,
    spilled_chunks: usize,
    bounds: Bounds,
    dropped: u64,
    /// Why the latest drop happened, for the task's system note.
    drop_reason: Option<String>,
}

impl OutputBuffer {
    /// `spill_path` is created only when memory runs out.
    pub fn new(spill_path: PathBuf, bounds: Bounds) -> Self {
        Self {
            chunks: VecDeque::new(),
            last_seq: 0,
            acked: 0,
            memory_used: 0,
            spill_path,
            spill: None,
            spill_end: 0,
            spilled_chunks: 0,
            bounds,
            dropped: 0,
            drop_reason: None,
        }
    }

    /// Highest sequence number given out (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Highest acknowledged sequence number.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Bytes dropped because both bounds were full or the spill file failed.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Why bytes were dropped (set once something was dropped).
    pub fn drop_reason(&self) -> Option<&str> {
        self.drop_reason.as_deref()
    }

    /// Unacknowledged bytes held in memory.
    #[cfg(test)]
    pub fn memory_used(&self) -> usize {
        self.memory_used
    }

    /// Stores a chunk and returns its sequence number, or `None` when it had
    /// to be dropped (counted in [`Self::dropped`]).
    pub fn push(&mut self, stream: OutputStream, bytes: Vec<u8>) -> Option<u64> {
        if bytes.is_empty() {
            return None;
        }
        let len = bytes.len();
        let data = if self.memory_used + len <= self.bounds.memory {
            self.memory_used += len;
            Data::Memory(bytes)
        } else if self.spill_end + len as u64 <= self.bounds.spill {
            match self.spill_write(&bytes) {
                Ok(offset) => {
                    self.spilled_chunks += 1;
                    Data::Spilled { offset, len }
                }
                Err(e) => {
                    self.drop_bytes(
                        len,
                        format!(
                            "could not write the spill file {}: {e}; check free space and permissions of the executor's state directory",
                            self.spill_path.display()
                        ),
                    );
                    return None;
                }
            }
        } else {
            self.drop_bytes(
                len,
                format!(
                    "the network process left more than {} bytes unacknowledged (memory {} + spill file {})",
                    self.bounds.memory as u64 + self.bounds.spill,
                    self.bounds.memory,
                    self.bounds.spill
                ),
            );
            return None;
        };
        self.last_seq += 1;
        self.chunks.push_back(Chunk {
            seq: self.last_seq,
            stream,
            data,
        });
        Some(self.last_seq)
    }

    /// Stores the executor's own note; if no bound leaves room for it, it
    /// is left out without counting it as dropped task output.
    pub fn push_note(&mut self, bytes: Vec<u8>) -> Option<u64> {
        let (dropped, reason) = (self.dropped, self.drop_reason.clone());
        let seq = self.push(OutputStream::System, bytes);
        if seq.is_none() {
            self.dropped = dropped;
            self.drop_reason = reason;
        }
        seq
    }

    fn drop_bytes(&mut self, len: usize, reason: String) {
        self.dropped += len as u64;
        self.drop_reason = Some(reason);
    }

    fn spill_write(&mut self, bytes: &[u8]) -> io::Result<u64> {
        if self.spill.is_none() {
            // Task output may be sensitive: readable by the executor only.
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .mode(0o600)
                .open(&self.spill_path)?;
            self.spill = Some(file);
        }
        let file = self.spill.as_mut().expect("opened above");
        let offset = self.spill_end;
        file.write_all_at(bytes, offset)?;
        self.spill_end += bytes.len() as u64;
        Ok(offset)
    }

    /// Forgets every chunk up to and including `seq`. Returns false (and
    /// changes nothing) when `seq` is beyond the last chunk.
    pub fn ack(&mut self, seq: u64) -> bool {
        if seq > self.last_seq {
            return false;
        }
        while self.chunks.front().is_some_and(|c| c.seq <= seq) {
            let chunk = self.chunks.pop_front().expect("checked");
            match chunk.data {
                Data::Memory(v) => self.memory_used -= v.len(),
                Data::Spilled { .. } => self.spilled_chunks -= 1,
            }
        }
        self.acked = self.acked.max(seq);
        if self.spilled_chunks == 0 && self.spill_end > 0 {
            // Nothing in the file is needed any more: give the space back.
            if let Some(file) = &self.spill {
                let _ = file.set_len(0);
            }
            self.spill_end = 0;
        }
        true
    }

    /// The chunk with sequence number `seq`, if it is still held.
    pub fn get(&self, seq: u64) -> io::Result<Option<(OutputStream, Vec<u8>)>> {
        let Some(first) = self.chunks.front().map(|c| c.seq) else {
            return Ok(None);
        };
        if seq < first || seq > self.last_seq {
            return Ok(None);
        }
        let chunk = &self.chunks[(seq - first) as usize];
        let bytes = match &chunk.data {
            Data::Memory(v) => v.clone(),
            Data::Spilled { offset, len } => {
                let mut buf = vec![0u8; *len];
                let file = self.spill.as_ref().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "spill file is not open")
                })?;
                file.read_exact_at(&mut buf, *offset)?;
                buf
            }
        };
        Ok(Some((chunk.stream, bytes)))
    }
}

impl Drop for OutputBuffer {
    fn drop(&mut self) {
        if self.spill.take().is_some() {
            let _ = std::fs::remove_file(&self.spill_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(dir: &tempfile::TempDir, memory: usize, spill: u64) -> OutputBuffer {
        OutputBuffer::new(dir.path().join("t.spill"), Bounds { memory, spill })
    }

    #[test]
    fn keeps_chunks_until_acknowledged_and_spills_beyond_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = buffer(&dir, 10, 100);
        assert_eq!(b.push(OutputStream::Stdout, b"hello".to_vec()), Some(1));
        assert_eq!(b.push(OutputStream::Stderr, b"world".to_vec()), Some(2));
        // Memory is full: this one goes to the file.
        assert_eq!(b.push(OutputStream::Stdout, b"spilled!".to_vec()), Some(3));
        assert!(dir.path().join("t.spill").exists());
        assert_eq!(
            b.get(3).unwrap(),
            Some((OutputStream::Stdout, b"spilled!".to_vec()))
        );
        assert_eq!(
            b.get(2).unwrap(),
            Some((OutputStream::Stderr, b"world".to_vec()))
        );
        assert!(b.ack(2));
        assert_eq!(b.get(2).unwrap(), None);
        assert_eq!(b.memory_used(), 0);
        // Freed memory is used again for new chunks; order stays by seq.
        assert_eq!(b.push(OutputStream::Stdout, b"again".to_vec()), Some(4));
        assert_eq!(
            b.get(3).unwrap(),
            Some((OutputStream::Stdout, b"spilled!".to_vec()))
        );
        assert_eq!(
            b.get(4).unwrap(),
            Some((OutputStream::Stdout, b"again".to_vec()))
        );
        assert!(b.ack(4));
        assert_eq!(b.dropped(), 0);
        assert_eq!(
            std::fs::metadata(dir.path().join("t.spill")).unwrap().len(),
            0
        );
        drop(b);
        assert!(!dir.path().join("t.spill").exists());
    }

    #[test]
    fn counts_exactly_what_is_dropped_beyond_both_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = buffer(&dir, 4, 4);
        assert_eq!(b.push(OutputStream::Stdout, b"abcd".to_vec()), Some(1));
        assert_eq!(b.push(OutputStream::Stdout, b"efgh".to_vec()), Some(2));
        assert_eq!(b.push(OutputStream::Stdout, b"ijklm".to_vec()), None);
        assert_eq!(b.push(OutputStream::Stdout, b"x".to_vec()), None);
        assert_eq!(b.dropped(), 6);
        assert!(b.drop_reason().unwrap().contains("unacknowledged"));
        // Sequence numbers stay contiguous.
        assert!(b.ack(1));
        assert_eq!(b.push(OutputStream::Stdout, b"n".to_vec()), Some(3));
        assert_eq!(b.last_seq(), 3);
    }

    #[test]
    fn acknowledging_beyond_the_last_chunk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = buffer(&dir, 100, 100);
        b.push(OutputStream::Stdout, b"a".to_vec());
        assert!(!b.ack(2));
        assert_eq!(b.acked(), 0);
        assert!(b.ack(1));
        assert_eq!(b.acked(), 1);
        assert_eq!(b.push(OutputStream::System, Vec::new()), None);
        assert_eq!(b.dropped(), 0);
    }
}
