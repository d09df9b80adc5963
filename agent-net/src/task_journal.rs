//! The durable record of one task's output on the node.
//!
//! Output chunks from the executor are appended here and made durable
//! before the executor is told it may drop them; log entries are then built
//! from the journal ([`crate::log_entries`]) and the position up to which
//! the control plane has them is kept beside it. After a crash or restart
//! nothing is lost (the journal has every acknowledged byte) and nothing is
//! sent twice (delivery resumes at the stored position). The journal stays
//! after the task ends: it is the full output that `noderax-agent
//! task-output` prints, kept within the retention limits.
//!
//! Layout of `<dir>/`:
//! - `output.journal`: records `[kind u8][stream u8][seq u64][len u32][bytes][fnv1a u32]`,
//!   little endian. Kind 1 is output, kind 2 says `len` bytes were dropped
//!   (no payload). A torn or corrupt tail (a crash mid-append) is cut off
//!   when the journal is opened; those bytes were never acknowledged.
//!   [`TaskJournal::open_read_only`] (for `task-output`, possibly while the
//!   agent appends) changes nothing: it only stops reading at such a tail.
//! - `delivered`: two 40-byte slots `[generation u64][stdout u64][stderr u64][system u64][fnv1a u32][pad u32]`,
//!   written alternately in place and synced, so a torn write leaves the
//!   other slot intact.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use shared::api::task::LogStream;

const JOURNAL: &str = "output.journal";
const DELIVERED: &str = "delivered";
const HEADER: usize = 1 + 1 + 8 + 4;
const TRAILER: usize = 4;
const SLOT: usize = 40;
const KIND_OUTPUT: u8 = 1;
const KIND_DROPPED: u8 = 2;

/// Raw-byte positions per stream: stdout, stderr, system.
pub type Positions = [u64; 3];

fn stream_code(s: LogStream) -> u8 {
    match s {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
        LogStream::System => 2,
    }
}

fn stream_of(code: u8) -> Option<LogStream> {
    match code {
        0 => Some(LogStream::Stdout),
        1 => Some(LogStream::Stderr),
        2 => Some(LogStream::System),
        _ => None,
    }
}

/// FNV-1a, enough to tell a torn or garbled record from a good one.
fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for part in parts {
        for b in *part {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// Where one output record's payload is.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    stream: LogStream,
    seq: u64,
    /// Offset of the payload in the journal file.
    offset: u64,
    len: u32,
}

/// One task's journal, open for appending.
pub struct TaskJournal {
    dir: PathBuf,
    file: File,
    /// Bytes of the journal file that hold whole records.
    file_len: u64,
    chunks: Vec<Chunk>,
    /// Output bytes received per stream.
    received: Positions,
    last_seq: u64,
    dropped: u64,
    delivered: Positions,
    generation: u64,
    /// `None` when opened read-only.
    delivered_file: Option<File>,
}

impl TaskJournal {
    /// Opens (creating if needed) the journal in `dir`, dropping a torn tail.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(dir.join(JOURNAL))?;
        let delivered_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(DELIVERED))?;
        let (j, disk_len) = Self::scan(dir, file, Some(delivered_file))?;
        if j.file_len < disk_len {
            // A record cut short by a crash: never acknowledged, so drop it.
            j.file.set_len(j.file_len)?;
            j.file.sync_all()?;
        }
        Ok(j)
    }

    /// Opens an existing journal without changing anything on disk: nothing
    /// is created, and a torn tail (or a record the running agent is
    /// appending right now) is left in place and simply not read. Appending
    /// to it or recording delivery fails. `NotFound` when `dir` holds no
    /// journal.
    pub fn open_read_only(dir: &Path) -> io::Result<Self> {
        let file = File::open(dir.join(JOURNAL))?;
        let delivered_file = match File::open(dir.join(DELIVERED)) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let (mut j, _) = Self::scan(dir, file, delivered_file)?;
        j.delivered_file = None;
        Ok(j)
    }

    /// Reads the index of whole records and the delivered positions;
    /// returns the journal and the file's size on disk.
    fn scan(dir: &Path, file: File, delivered_file: Option<File>) -> io::Result<(Self, u64)> {
        let disk_len = file.metadata()?.len();
        let mut j = Self {
            dir: dir.to_owned(),
            file_len: 0,
            chunks: Vec::new(),
            received: [0; 3],
            last_seq: 0,
            dropped: 0,
            delivered: [0; 3],
            generation: 0,
            delivered_file,
            file: file.try_clone()?,
        };
        // Scan record by record: memory stays at one record, whatever the size.
        let mut reader = io::BufReader::with_capacity(64 * 1024, file);
        let mut pos = 0u64;
        let mut record = Vec::new();
        loop {
            let mut header = [0u8; HEADER];
            if reader.read_exact(&mut header).is_err() {
                break;
            }
            let Some((kind, stream, seq, len)) = parse_header(&header) else {
                break;
            };
            let payload = if kind == KIND_OUTPUT { len as usize } else { 0 };
            // A garbled length must not make us allocate what the file does not hold.
            if pos + (HEADER + payload + TRAILER) as u64 > disk_len {
                break;
            }
            record.clear();
            record.resize(payload + TRAILER, 0);
            if reader.read_exact(&mut record).is_err() {
                break;
            }
            let sum = u32::from_le_bytes(record[payload..].try_into().expect("4 bytes"));
            if fnv1a(&[&header, &record[..payload]]) != sum {
                break;
            }
            if kind == KIND_OUTPUT {
                j.chunks.push(Chunk {
                    stream,
                    seq,
                    offset: pos + HEADER as u64,
                    len,
                });
                j.received[usize::from(stream_code(stream))] += u64::from(len);
            } else {
                j.dropped += u64::from(len);
            }
            j.last_seq = j.last_seq.max(seq);
            pos += (HEADER + payload + TRAILER) as u64;
        }
        j.file_len = pos;
        j.load_delivered()?;
        Ok((j, disk_len))
    }

    fn load_delivered(&mut self) -> io::Result<()> {
        let Some(delivered_file) = &self.delivered_file else {
            return Ok(());
        };
        let mut buf = [0u8; 2 * SLOT];
        let n = delivered_file.read_at(&mut buf, 0)?;
        let mut best: Option<(u64, Positions)> = None;
        for slot in buf[..n].chunks_exact(SLOT) {
            let sum = u32::from_le_bytes(slot[32..36].try_into().expect("4 bytes"));
            if fnv1a(&[&slot[..32]]) != sum {
                continue;
            }
            let word =
                |k: usize| u64::from_le_bytes(slot[8 * k..8 * k + 8].try_into().expect("8 bytes"));
            let (generation, pos) = (word(0), [word(1), word(2), word(3)]);
            if best.is_none_or(|(g, _)| generation > g) {
                best = Some((generation, pos));
            }
        }
        if let Some((generation, pos)) = best {
            self.generation = generation;
            // Never beyond what the journal holds (it is the source of truth).
            self.delivered = [0, 1, 2].map(|i| pos[i].min(self.received[i]));
        }
        Ok(())
    }

    /// Appends one output chunk (not yet durable: see [`sync`](Self::sync)).
    pub fn append(&mut self, stream: LogStream, seq: u64, bytes: &[u8]) -> io::Result<()> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "chunk over 4 GiB"))?;
        self.write_record(KIND_OUTPUT, stream, seq, len, bytes)?;
        self.chunks.push(Chunk {
            stream,
            seq,
            offset: self.file_len - (TRAILER + bytes.len()) as u64,
            len,
        });
        self.received[usize::from(stream_code(stream))] += u64::from(len);
        self.last_seq = self.last_seq.max(seq);
        Ok(())
    }

    /// Records that `len` bytes of output (chunk `seq`) were not stored
    /// because a bound was hit, so the completion can say so.
    pub fn append_dropped(&mut self, stream: LogStream, seq: u64, len: u32) -> io::Result<()> {
        self.write_record(KIND_DROPPED, stream, seq, len, &[])?;
        self.dropped += u64::from(len);
        self.last_seq = self.last_seq.max(seq);
        Ok(())
    }

    fn write_record(
        &mut self,
        kind: u8,
        stream: LogStream,
        seq: u64,
        len: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        // Only a journal opened for writing has its delivered file.
        if self.delivered_file.is_none() {
            return Err(read_only());
        }
        let mut header = [0u8; HEADER];
        header[0] = kind;
        header[1] = stream_code(stream);
        header[2..10].copy_from_slice(&seq.to_le_bytes());
        header[10..14].copy_from_slice(&len.to_le_bytes());
        let sum = fnv1a(&[&header, payload]).to_le_bytes();
        let mut record = Vec::with_capacity(HEADER + payload.len() + TRAILER);
        record.extend_from_slice(&header);
        record.extend_from_slice(payload);
        record.extend_from_slice(&sum);
        if let Err(e) = self.file.write_all(&record) {
            // Keep the file at whole records so the next append is readable.
            let _ = self.file.set_len(self.file_len);
            return Err(e);
        }
        self.file_len += record.len() as u64;
        Ok(())
    }

    /// Makes every appended record durable; returns the highest chunk
    /// sequence number now safe to acknowledge to the executor.
    pub fn sync(&mut self) -> io::Result<u64> {
        self.file.sync_data()?;
        Ok(self.last_seq)
    }

    /// Highest executor sequence number stored (0: none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Output bytes stored per stream.
    pub fn received(&self) -> Positions {
        self.received
    }

    /// Output bytes that could not be stored.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Size of the journal on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.file_len
    }

    /// How far the control plane has the output, per stream.
    pub fn delivered(&self) -> Positions {
        self.delivered
    }

    /// Durably records that the control plane has the output up to `pos`.
    pub fn set_delivered(&mut self, pos: Positions) -> io::Result<()> {
        self.record_delivered(pos)?;
        self.sync_delivered()
    }

    /// Like [`set_delivered`](Self::set_delivered) without waiting for the
    /// disk: a crash of the process loses nothing (the page cache has it),
    /// a power loss at worst resends entries — duplicates, never loss. The
    /// reporter syncs every ~100 ms and before the completion, so an fsync
    /// per log request does not cap the shipping rate.
    pub fn record_delivered(&mut self, pos: Positions) -> io::Result<()> {
        let generation = self.generation + 1;
        let mut slot = [0u8; SLOT];
        slot[..8].copy_from_slice(&generation.to_le_bytes());
        for (k, p) in pos.iter().enumerate() {
            slot[8 * (k + 1)..8 * (k + 2)].copy_from_slice(&p.to_le_bytes());
        }
        let sum = fnv1a(&[&slot[..32]]);
        slot[32..36].copy_from_slice(&sum.to_le_bytes());
        let at = (generation % 2) * SLOT as u64;
        let file = self.delivered_file.as_ref().ok_or_else(read_only)?;
        file.write_all_at(&slot, at)?;
        self.generation = generation;
        self.delivered = pos;
        Ok(())
    }

    /// Makes the recorded delivered positions durable.
    pub fn sync_delivered(&mut self) -> io::Result<()> {
        self.delivered_file
            .as_ref()
            .ok_or_else(read_only)?
            .sync_data()
    }

    /// The stored output after `from` (per stream), in the order it was
    /// produced, chunk by chunk. Loads it all: for tests and small outputs;
    /// use [`reader`](Self::reader) otherwise.
    pub fn read_from(&self, from: Positions) -> io::Result<Vec<(LogStream, Vec<u8>)>> {
        let mut reader = self.reader(from)?;
        let mut out = Vec::new();
        while let Some(chunk) = reader.next_chunk(self)? {
            out.push(chunk);
        }
        Ok(out)
    }

    /// A reader of the output after `from`, one chunk at a time; it also
    /// sees chunks appended after it was created.
    pub fn reader(&self, from: Positions) -> io::Result<JournalReader> {
        Ok(JournalReader {
            file: File::open(self.dir.join(JOURNAL))?,
            next: 0,
            pos: [0; 3],
            from,
        })
    }

    /// Every chunk's sequence number, in order (diagnostics and tests).
    pub fn seqs(&self) -> Vec<u64> {
        self.chunks.iter().map(|c| c.seq).collect()
    }
}

/// Reads a journal's output in order without loading it all.
pub struct JournalReader {
    file: File,
    /// Index of the next chunk to look at.
    next: usize,
    /// Per-stream position at the start of chunk `next`.
    pos: Positions,
    /// Output before these positions is skipped.
    from: Positions,
}

impl JournalReader {
    /// The next piece of output, or `None` when everything stored so far was read.
    pub fn next_chunk(
        &mut self,
        journal: &TaskJournal,
    ) -> io::Result<Option<(LogStream, Vec<u8>)>> {
        while let Some(c) = journal.chunks.get(self.next) {
            self.next += 1;
            let i = usize::from(stream_code(c.stream));
            let start = self.pos[i];
            self.pos[i] += u64::from(c.len);
            if self.pos[i] <= self.from[i] {
                continue;
            }
            let skip = self.from[i].saturating_sub(start);
            let mut buf = vec![0u8; (u64::from(c.len) - skip) as usize];
            self.file.seek(SeekFrom::Start(c.offset + skip))?;
            self.file.read_exact(&mut buf)?;
            return Ok(Some((c.stream, buf)));
        }
        Ok(None)
    }
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "the task journal was opened read-only",
    )
}

/// `(kind, stream, seq, len)` from a record header, if it is one.
fn parse_header(h: &[u8; HEADER]) -> Option<(u8, LogStream, u64, u32)> {
    let kind = h[0];
    if kind != KIND_OUTPUT && kind != KIND_DROPPED {
        return None;
    }
    let stream = stream_of(h[1])?;
    let seq = u64::from_le_bytes(h[2..10].try_into().ok()?);
    let len = u32::from_le_bytes(h[10..14].try_into().ok()?);
    Some((kind, stream, seq, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use LogStream::{Stderr, Stdout, System};

    fn concat(chunks: &[(LogStream, Vec<u8>)], s: LogStream) -> Vec<u8> {
        chunks
            .iter()
            .filter(|(x, _)| *x == s)
            .flat_map(|(_, b)| b.clone())
            .collect()
    }

    #[test]
    fn append_sync_reopen_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = TaskJournal::open(dir.path()).unwrap();
        j.append(Stdout, 1, b"hello\n").unwrap();
        j.append(Stderr, 2, b"oops\n").unwrap();
        j.append(Stdout, 3, &[0xff, 0, 1]).unwrap();
        assert_eq!(j.sync().unwrap(), 3);
        drop(j);
        let j = TaskJournal::open(dir.path()).unwrap();
        assert_eq!(j.seqs(), [1, 2, 3]);
        assert_eq!(j.received(), [9, 5, 0]);
        let all = j.read_from([0; 3]).unwrap();
        assert_eq!(concat(&all, Stdout), b"hello\n\xff\x00\x01");
        assert_eq!(concat(&all, Stderr), b"oops\n");
        // Reading from the middle of a chunk, per stream.
        let rest = j.read_from([3, 5, 0]).unwrap();
        assert_eq!(
            rest,
            [(Stdout, b"lo\n".to_vec()), (Stdout, vec![0xff, 0, 1])]
        );
    }

    #[test]
    fn a_torn_tail_is_cut_and_appending_continues() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = TaskJournal::open(dir.path()).unwrap();
        j.append(Stdout, 1, b"kept\n").unwrap();
        j.append(Stdout, 2, b"torn record\n").unwrap();
        j.sync().unwrap();
        drop(j);
        let path = dir.path().join(JOURNAL);
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let mut j = TaskJournal::open(dir.path()).unwrap();
        assert_eq!(j.seqs(), [1]);
        assert_eq!(j.last_seq(), 1);
        j.append(Stdout, 2, b"again\n").unwrap();
        j.sync().unwrap();
        drop(j);
        let j = TaskJournal::open(dir.path()).unwrap();
        assert_eq!(
            concat(&j.read_from([0; 3]).unwrap(), Stdout),
            b"kept\nagain\n"
        );
    }

    #[test]
    fn a_corrupt_record_ends_the_readable_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = TaskJournal::open(dir.path()).unwrap();
        j.append(Stdout, 1, b"good\n").unwrap();
        j.append(Stdout, 2, b"flipped\n").unwrap();
        j.sync().unwrap();
        drop(j);
        let path = dir.path().join(JOURNAL);
        let mut data = fs::read(&path).unwrap();
        let n = data.len();
        data[n - 8] ^= 0x20;
        fs::write(&path, data).unwrap();
        let j = TaskJournal::open(dir.path()).unwrap();
        assert_eq!(j.seqs(), [1]);
    }

    #[test]
    fn delivered_positions_survive_and_a_torn_slot_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = TaskJournal::open(dir.path()).unwrap();
        j.append(Stdout, 1, &[b'x'; 100]).unwrap();
        j.append(System, 2, &[b'y'; 10]).unwrap();
        j.sync().unwrap();
        j.set_delivered([10, 0, 0]).unwrap();
        j.set_delivered([50, 0, 4]).unwrap();
        drop(j);
        let j = TaskJournal::open(dir.path()).unwrap();
        assert_eq!(j.delivered(), [50, 0, 4]);
        drop(j);
        // Tear the newer slot: the older one is used.
        let path = dir.path().join(DELIVERED);
        let mut data = fs::read(&path).unwrap();
        data[3] ^= 0xff; // generation 2 lives in slot 0
        fs::write(&path, data).unwrap();
        let j = TaskJournal::open(dir.path()).unwrap();
        assert_eq!(j.delivered(), [10, 0, 0]);
    }

    #[test]
    fn dropped_bytes_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = TaskJournal::open(dir.path()).unwrap();
        j.append(Stdout, 1, b"a\n").unwrap();
        j.append_dropped(Stdout, 2, 4096).unwrap();
        j.append(Stdout, 3, b"b\n").unwrap();
        j.sync().unwrap();
        drop(j);
        let j = TaskJournal::open(dir.path()).unwrap();
        assert_eq!((j.dropped(), j.last_seq()), (4096, 3));
        assert_eq!(concat(&j.read_from([0; 3]).unwrap(), Stdout), b"a\nb\n");
    }

    #[test]
    fn a_garbled_length_is_not_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = TaskJournal::open(dir.path()).unwrap();
        j.append(Stdout, 1, b"ok\n").unwrap();
        j.sync().unwrap();
        drop(j);
        let path = dir.path().join(JOURNAL);
        let mut data = fs::read(&path).unwrap();
        let mut bogus = vec![KIND_OUTPUT, 0];
        bogus.extend_from_slice(&2u64.to_le_bytes());
        bogus.extend_from_slice(&u32::MAX.to_le_bytes());
        data.extend_from_slice(&bogus);
        fs::write(&path, data).unwrap();
        let j = TaskJournal::open(dir.path()).unwrap();
        assert_eq!(j.seqs(), [1]);
    }

    /// The journal and the entry builder together: deliver part of the
    /// entries, "crash", reopen, and resume — every line arrives exactly once.
    #[test]
    fn resume_after_a_crash_delivers_each_line_once() {
        use crate::log_entries::EntryBuilder;
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let mut j = TaskJournal::open(dir.path()).unwrap();
        let mut want = Vec::new();
        for n in 0..2000u64 {
            let line = format!("line {n} {}\n", "x".repeat((n % 97) as usize));
            want.push(line.trim_end_matches('\n').to_owned());
            // Chunk boundaries deliberately split lines.
            let (a, b) = line.as_bytes().split_at(line.len() / 2);
            j.append(Stdout, 2 * n + 1, a).unwrap();
            j.append(Stdout, 2 * n + 2, b).unwrap();
        }
        j.sync().unwrap();
        let t0 = Instant::now();
        let build = |j: &TaskJournal| {
            let mut b = EntryBuilder::new(Duration::from_millis(5), j.delivered());
            for (s, bytes) in j.read_from(j.delivered()).unwrap() {
                b.push(s, &bytes, t0);
            }
            b.finish(t0);
            std::iter::from_fn(move || b.pop()).collect::<Vec<_>>()
        };
        let first = build(&j);
        let mut got: Vec<String> = Vec::new();
        for e in &first[..first.len() / 3] {
            got.extend(e.line.split('\n').map(str::to_owned));
            j.set_delivered([e.end, 0, 0]).unwrap();
        }
        drop(j);
        let j = TaskJournal::open(dir.path()).unwrap();
        for e in build(&j) {
            got.extend(e.line.split('\n').map(str::to_owned));
        }
        assert_eq!(got.len(), want.len());
        assert!(got == want, "a line was lost, duplicated or changed");
    }

    #[test]
    fn a_read_only_open_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            TaskJournal::open_read_only(dir.path())
                .err()
                .map(|e| e.kind()),
            Some(io::ErrorKind::NotFound)
        );
        assert!(!dir.path().join(JOURNAL).exists(), "nothing is created");
        let mut j = TaskJournal::open(dir.path()).unwrap();
        j.append(Stdout, 1, b"whole\n").unwrap();
        j.append(Stderr, 2, b"half written").unwrap();
        j.sync().unwrap();
        j.set_delivered([3, 0, 0]).unwrap();
        drop(j);
        let path = dir.path().join(JOURNAL);
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let before = fs::read(&path).unwrap();
        let mut j = TaskJournal::open_read_only(dir.path()).unwrap();
        assert_eq!(
            j.read_from([0; 3]).unwrap(),
            [(Stdout, b"whole\n".to_vec())]
        );
        assert_eq!(j.delivered(), [3, 0, 0]);
        assert!(j.append(Stdout, 3, b"x").is_err());
        assert!(j.set_delivered([6, 0, 0]).is_err());
        drop(j);
        assert_eq!(
            fs::read(&path).unwrap(),
            before,
            "the torn tail is left alone"
        );
        assert_eq!(
            TaskJournal::open(dir.path()).unwrap().delivered(),
            [3, 0, 0]
        );
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut j = TaskJournal::open(dir.path()).unwrap();
        j.set_delivered([0; 3]).unwrap();
        for f in [JOURNAL, DELIVERED] {
            let mode = fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{f}");
        }
    }
}
