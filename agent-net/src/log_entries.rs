//! Turns a task's raw output into the log entries the API accepts
//! (PROTOCOL.md §6.5, ARCHITECTURE.md §5).
//!
//! The API stores one row per request, at most 5000 code points, never an
//! empty line, ordered by insertion, and shows the first 100 rows. So:
//! - consecutive lines of one stream that arrive within a short window are
//!   coalesced into one entry, newline-joined, up to 5000 code points;
//! - a longer line becomes several continuation entries, never truncated;
//! - empty lines are dropped (their bytes still count as consumed);
//! - bytes are read without any line-length limit; invalid UTF-8 becomes
//!   U+FFFD; a `\r` before `\n` is dropped.
//!
//! Every entry records how far into its stream it reaches ([`Entry::end`]),
//! counted in raw bytes. Once an entry is delivered, that position is what
//! the sender persists: after a restart the builder is fed again from the
//! delivered positions and produces exactly the entries not yet delivered,
//! whatever the timing was the first time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use shared::api::task::{LogStream, MAX_LOG_LINE_CHARS};

/// One log request's worth of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub stream: LogStream,
    /// 1..=5000 code points.
    pub line: String,
    /// Raw-byte position in `stream` just after this entry's content.
    pub end: u64,
}

/// Streams are indexed in arrays by this order.
fn idx(s: LogStream) -> usize {
    match s {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
        LogStream::System => 2,
    }
}

struct Pending {
    stream: LogStream,
    line: String,
    chars: usize,
    end: u64,
    since: Instant,
}

/// Builds entries from output chunks. Feed it with [`push`](Self::push),
/// take entries with [`pop`](Self::pop), call [`tick`](Self::tick) when the
/// coalescing window may have passed and [`finish`](Self::finish) at exit.
pub struct EntryBuilder {
    window: Duration,
    max_chars: usize,
    /// Bytes of each stream's unfinished line.
    partial: [Vec<u8>; 3],
    /// Raw-byte position of each stream up to which input was received.
    received: [u64; 3],
    pending: Option<Pending>,
    ready: VecDeque<Entry>,
}

impl EntryBuilder {
    /// Starts at the given per-stream positions (0 for a new task, the
    /// delivered positions after a restart).
    pub fn new(window: Duration, start: [u64; 3]) -> Self {
        Self::with_limit(window, start, MAX_LOG_LINE_CHARS)
    }

    /// As [`new`](Self::new) with another entry size limit (tests).
    pub fn with_limit(window: Duration, start: [u64; 3], max_chars: usize) -> Self {
        assert!(max_chars > 0);
        Self {
            window,
            max_chars,
            partial: Default::default(),
            received: start,
            pending: None,
            ready: VecDeque::new(),
        }
    }

    /// Raw bytes received per stream (stdout, stderr, system).
    pub fn received(&self) -> [u64; 3] {
        self.received
    }

    /// Adds output of `stream`.
    pub fn push(&mut self, stream: LogStream, bytes: &[u8], now: Instant) {
        let i = idx(stream);
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            let (line, after) = rest.split_at(nl);
            let start = self.received[i] - self.partial[i].len() as u64;
            self.partial[i].extend_from_slice(line);
            self.received[i] += line.len() as u64 + 1;
            let mut raw = std::mem::take(&mut self.partial[i]);
            if raw.last() == Some(&b'\r') {
                raw.pop();
            }
            self.line(stream, &raw, start, self.received[i], now);
            rest = &after[1..];
        }
        self.partial[i].extend_from_slice(rest);
        self.received[i] += rest.len() as u64;
        // An endless line is shipped in full pieces while it grows; 4 bytes
        // per code point bound the bytes of `max_chars` characters.
        let keep = 4 * self.max_chars + 3;
        if self.partial[i].len() > 2 * keep {
            let take = self.partial[i].len() - keep;
            let pieces = split_chars(&self.partial[i][..take], self.max_chars);
            // The last piece may end in a character cut at `take`; it stays.
            let full = pieces.len().saturating_sub(1);
            let mut used = 0;
            for (text, n) in pieces.into_iter().take(full) {
                used += n;
                let end = self.received[i] - (self.partial[i].len() - used) as u64;
                self.flush_pending();
                self.ready.push_back(Entry {
                    stream,
                    line: text,
                    end,
                });
            }
            self.partial[i].drain(..used);
        }
    }

    /// A complete line (without its newline) that starts at raw position
    /// `start`; `end` is just after its newline (or its last byte at exit).
    fn line(&mut self, stream: LogStream, raw: &[u8], start: u64, end: u64, now: Instant) {
        if raw.is_empty() {
            // Nothing to send; an earlier pending entry keeps its own end.
            return;
        }
        let pieces = split_chars(raw, self.max_chars);
        if pieces.len() > 1 {
            self.flush_pending();
            let count = pieces.len();
            let mut consumed = 0u64;
            for (k, (text, n)) in pieces.into_iter().enumerate() {
                consumed += n as u64;
                // The last piece also covers the newline (and any `\r`).
                let piece_end = if k + 1 == count {
                    end
                } else {
                    start + consumed
                };
                self.ready.push_back(Entry {
                    stream,
                    line: text,
                    end: piece_end,
                });
            }
            return;
        }
        let (text, _) = pieces
            .into_iter()
            .next()
            .expect("non-empty input yields a piece");
        let chars = text.chars().count();
        if let Some(p) = &mut self.pending
            && p.stream == stream
            && p.chars + 1 + chars <= self.max_chars
        {
            p.line.push('\n');
            p.line.push_str(&text);
            p.chars += 1 + chars;
            p.end = end;
            return;
        }
        self.flush_pending();
        self.pending = Some(Pending {
            stream,
            line: text,
            chars,
            end,
            since: now,
        });
        self.tick(now);
    }

    fn flush_pending(&mut self) {
        if let Some(p) = self.pending.take() {
            self.ready.push_back(Entry {
                stream: p.stream,
                line: p.line,
                end: p.end,
            });
        }
    }

    /// Releases the pending entry once the coalescing window has passed.
    pub fn tick(&mut self, now: Instant) {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| now.duration_since(p.since) >= self.window)
        {
            self.flush_pending();
        }
    }

    /// When the pending entry will be due, if there is one.
    pub fn due(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.since + self.window)
    }

    /// The output ended: unfinished lines become entries and everything is released.
    pub fn finish(&mut self, now: Instant) {
        for stream in [LogStream::Stdout, LogStream::Stderr, LogStream::System] {
            let i = idx(stream);
            let mut raw = std::mem::take(&mut self.partial[i]);
            let start = self.received[i] - raw.len() as u64;
            if raw.last() == Some(&b'\r') {
                raw.pop();
            }
            self.line(stream, &raw, start, self.received[i], now);
        }
        self.flush_pending();
    }

    /// Entries ready to send.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// The next entry ready to send.
    pub fn pop(&mut self) -> Option<Entry> {
        self.ready.pop_front()
    }
}

/// Splits raw bytes into pieces of at most `max_chars` code points, decoding
/// invalid UTF-8 as U+FFFD (one code point per invalid sequence). Returns
/// each piece's text and how many raw bytes it consumed.
pub fn split_chars(raw: &[u8], max_chars: usize) -> Vec<(String, usize)> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let (mut chars, mut bytes) = (0usize, 0usize);
    let mut push = |ch: char, n: usize, text: &mut String, chars: &mut usize, bytes: &mut usize| {
        if *chars == max_chars {
            pieces.push((std::mem::take(text), *bytes));
            *chars = 0;
            *bytes = 0;
        }
        text.push(ch);
        *chars += 1;
        *bytes += n;
    };
    for chunk in raw.utf8_chunks() {
        for ch in chunk.valid().chars() {
            push(ch, ch.len_utf8(), &mut text, &mut chars, &mut bytes);
        }
        if !chunk.invalid().is_empty() {
            push(
                char::REPLACEMENT_CHARACTER,
                chunk.invalid().len(),
                &mut text,
                &mut chars,
                &mut bytes,
            );
        }
    }
    if chars > 0 {
        pieces.push((text, bytes));
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use LogStream::{Stderr, Stdout, System};
    use proptest::prelude::*;

    const W: Duration = Duration::from_millis(100);

    fn drain(b: &mut EntryBuilder) -> Vec<Entry> {
        std::iter::from_fn(|| b.pop()).collect()
    }

    fn lines(entries: &[Entry]) -> Vec<(LogStream, &str)> {
        entries
            .iter()
            .map(|e| (e.stream, e.line.as_str()))
            .collect()
    }

    #[test]
    fn coalesces_lines_of_one_stream_within_the_window() {
        let t0 = Instant::now();
        let mut b = EntryBuilder::new(W, [0; 3]);
        b.push(Stdout, b"one\r\ntwo\n\n\nthree\n", t0);
        assert!(b.pop().is_none(), "held for the window");
        b.push(Stdout, b"four\n", t0 + Duration::from_millis(50));
        b.tick(t0 + Duration::from_millis(99));
        assert!(b.pop().is_none());
        b.tick(t0 + W);
        let e = drain(&mut b);
        assert_eq!(lines(&e), [(Stdout, "one\ntwo\nthree\nfour")]);
        assert_eq!(e[0].end, 22);
        // After the window, a new entry starts.
        b.push(Stdout, b"five\n", t0 + W);
        b.finish(t0 + W);
        assert_eq!(lines(&drain(&mut b)), [(Stdout, "five")]);
    }

    #[test]
    fn a_stream_switch_ends_the_entry() {
        let t0 = Instant::now();
        let mut b = EntryBuilder::new(W, [0; 3]);
        b.push(Stdout, b"a\nb\n", t0);
        b.push(Stderr, b"E\n", t0);
        b.push(Stdout, b"c\n", t0);
        b.push(System, b"note\n", t0);
        b.finish(t0);
        assert_eq!(
            lines(&drain(&mut b)),
            [
                (Stdout, "a\nb"),
                (Stderr, "E"),
                (Stdout, "c"),
                (System, "note")
            ]
        );
    }

    #[test]
    fn empty_output_and_blank_lines_send_nothing() {
        let t0 = Instant::now();
        let mut b = EntryBuilder::new(W, [0; 3]);
        b.push(Stdout, b"\n\r\n\n", t0);
        b.finish(t0);
        assert!(b.pop().is_none());
        assert_eq!(b.received(), [4, 0, 0]);
    }

    #[test]
    fn entries_never_exceed_the_limit_and_long_lines_continue() {
        let t0 = Instant::now();
        let mut b = EntryBuilder::with_limit(W, [0; 3], 10);
        b.push(Stdout, b"12345\n1234\n", t0); // 5 + 1 + 4 = 10: fits
        b.push(Stdout, b"x\n", t0); // would be 12: new entry
        b.push(Stdout, b"abcdefghijklmnopqrstuvwxy\n", t0); // 25 chars: 3 pieces
        b.finish(t0);
        let e = drain(&mut b);
        assert_eq!(
            lines(&e),
            [
                (Stdout, "12345\n1234"),
                (Stdout, "x"),
                (Stdout, "abcdefghij"),
                (Stdout, "klmnopqrst"),
                (Stdout, "uvwxy"),
            ]
        );
        let ends: Vec<u64> = e.iter().map(|e| e.end).collect();
        assert_eq!(ends, [11, 13, 23, 33, 39]);
    }

    #[test]
    fn an_endless_line_is_shipped_while_it_grows() {
        let t0 = Instant::now();
        let mut b = EntryBuilder::new(W, [0; 3]);
        let chunk = vec![b'x'; 64 * 1024];
        let mut total = 0usize;
        let mut shipped = 0usize;
        for _ in 0..80 {
            // 5 MiB without a newline
            b.push(Stdout, &chunk, t0);
            total += chunk.len();
            for e in drain(&mut b) {
                assert_eq!(e.line.chars().count(), MAX_LOG_LINE_CHARS);
                shipped += e.line.len();
            }
            assert!(b.partial[0].len() <= 2 * (4 * MAX_LOG_LINE_CHARS + 3) + chunk.len());
        }
        b.finish(t0);
        for e in drain(&mut b) {
            shipped += e.line.len();
        }
        assert_eq!(shipped, total);
    }

    #[test]
    fn utf8_split_across_chunks_and_invalid_bytes() {
        let t0 = Instant::now();
        let mut b = EntryBuilder::new(W, [0; 3]);
        let text = "héllo wörld\n".as_bytes();
        b.push(Stdout, &text[..2], t0); // cuts inside "é"
        b.push(Stdout, &text[2..], t0);
        b.push(Stderr, b"bad \xff\xfe byte\n", t0);
        b.finish(t0);
        assert_eq!(
            lines(&drain(&mut b)),
            [
                (Stdout, "héllo wörld"),
                (Stderr, "bad \u{fffd}\u{fffd} byte")
            ]
        );
    }

    /// The reference: every non-empty line, decoded, split into pieces.
    fn reference(out: &[(LogStream, Vec<u8>)], max: usize) -> Vec<(LogStream, String)> {
        let mut per: [Vec<u8>; 3] = Default::default();
        let mut order: Vec<(LogStream, String)> = Vec::new();
        for (s, bytes) in out {
            per[idx(*s)].extend_from_slice(bytes);
        }
        for s in [Stdout, Stderr, System] {
            for line in per[idx(s)].split(|b| *b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                for (piece, _) in split_chars(line, max) {
                    order.push((s, piece));
                }
            }
        }
        order
    }

    fn flatten(entries: &[Entry], s: LogStream) -> Vec<String> {
        entries
            .iter()
            .filter(|e| e.stream == s)
            .flat_map(|e| e.line.split('\n').map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }

    fn arb_output() -> impl Strategy<Value = Vec<(LogStream, Vec<u8>)>> {
        let stream = prop_oneof![Just(Stdout), Just(Stderr), Just(System)];
        let bytes = proptest::collection::vec(
            prop_oneof![
                3 => Just(b'a'),
                2 => Just(b'\n'),
                1 => Just(b'\r'),
                1 => Just(0xc3u8),
                1 => Just(0xa9u8),
                1 => any::<u8>(),
            ],
            0..200,
        );
        proptest::collection::vec((stream, bytes), 0..30)
    }

    proptest! {
        #[test]
        fn every_line_arrives_once_in_order_within_limits(out in arb_output(), max in 1usize..12) {
            let t0 = Instant::now();
            let mut b = EntryBuilder::with_limit(W, [0; 3], max);
            let mut entries = Vec::new();
            for (k, (s, bytes)) in out.iter().enumerate() {
                b.push(*s, bytes, t0 + Duration::from_millis(37 * k as u64));
                entries.extend(drain(&mut b));
            }
            b.finish(t0);
            entries.extend(drain(&mut b));
            for e in &entries {
                let n = e.line.chars().count();
                prop_assert!(n >= 1 && n <= max, "entry of {} chars", n);
                prop_assert!(!e.line.split('\n').any(str::is_empty));
            }
            let want = reference(&out, max);
            for s in [Stdout, Stderr, System] {
                let want_s: Vec<String> = want.iter().filter(|(w, _)| *w == s).map(|(_, l)| l.clone()).collect();
                prop_assert_eq!(flatten(&entries, s), want_s);
                let ends: Vec<u64> = entries.iter().filter(|e| e.stream == s).map(|e| e.end).collect();
                prop_assert!(ends.windows(2).all(|w| w[0] < w[1]), "ends increase");
            }
        }

        #[test]
        fn a_restart_from_delivered_positions_sends_the_rest_exactly_once(
            out in arb_output(), max in 1usize..12, delivered in 0usize..40,
        ) {
            let t0 = Instant::now();
            let run = |start: [u64; 3]| {
                let mut b = EntryBuilder::with_limit(W, start, max);
                let mut pos = [0u64; 3];
                for (s, bytes) in &out {
                    // Feed only what lies beyond the start position.
                    let i = idx(*s);
                    let skip = start[i].saturating_sub(pos[i]).min(bytes.len() as u64) as usize;
                    pos[i] += bytes.len() as u64;
                    b.push(*s, &bytes[skip..], t0);
                }
                b.finish(t0);
                drain(&mut b)
            };
            let first = run([0; 3]);
            let delivered = delivered.min(first.len());
            let mut start = [0u64; 3];
            for e in &first[..delivered] {
                start[idx(e.stream)] = e.end;
            }
            let mut combined: Vec<Entry> = first[..delivered].to_vec();
            combined.extend(run(start));
            for s in [Stdout, Stderr, System] {
                prop_assert_eq!(flatten(&combined, s), flatten(&first, s));
            }
        }
    }
}
