//! `noderax-agent task-output TASK_ID`: a task's full output as kept on the
//! node (the control plane keeps at most 100 log rows of 5000 characters and
//! 200 000 characters of `output`; the node keeps everything, within
//! `task_output_max_bytes` and `task_output_retention`).
//!
//! The journal is opened read-only ([`TaskJournal::open_read_only`]): this
//! command may run while the agent appends to the same task, and it must
//! never cut off what looks like a torn tail but is a record being written.
//! Output is streamed chunk by chunk, so a 1 GB output is never in memory.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use shared::api::task::LogStream;
use shared::config::{self, Location, ProcessEnv};

use noderax_agent::state_dir::StateDir;
use noderax_agent::task_journal::TaskJournal;
use noderax_agent::task_report::TaskRecord;

#[derive(Debug, Args)]
pub struct TaskOutputArgs {
    /// The task's id, a UUID as shown in the web UI and in the agent's logs.
    #[arg(value_name = "TASK_ID")]
    task_id: String,
    /// Print only this stream (repeat for several). Default: all of them,
    /// interleaved in the order they were produced.
    #[arg(long, value_enum, value_name = "STREAM")]
    stream: Vec<StreamArg>,
    /// Print one JSON object per chunk, {"stream":"stdout","text":"..."},
    /// instead of the raw bytes (text is UTF-8; invalid bytes become U+FFFD).
    #[arg(long)]
    json: bool,
    /// Do not print the summary (task type, exit, sizes, delivery) to stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StreamArg {
    Stdout,
    Stderr,
    /// The agent's and executor's own notes about the task.
    System,
}

impl StreamArg {
    fn matches(self, s: LogStream) -> bool {
        matches!(
            (self, s),
            (Self::Stdout, LogStream::Stdout)
                | (Self::Stderr, LogStream::Stderr)
                | (Self::System, LogStream::System)
        )
    }
}

fn index(s: LogStream) -> usize {
    match s {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
        LogStream::System => 2,
    }
}

const STREAM_NAMES: [&str; 3] = ["stdout", "stderr", "system"];

pub fn run(args: &TaskOutputArgs, cli_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let id = args.task_id.trim();
    shared::validate::uuid(id).map_err(|e| {
        anyhow::anyhow!(
            "TASK_ID {id:?} is not a task id ({}); pass the task's UUID as shown in the web UI or the agent's log, e.g. 3f1c2a9e-5b7d-4c1e-9a2b-0c4d5e6f7a8b",
            e.reason()
        )
    })?;
    let location = Location::resolve(cli_path, &ProcessEnv);
    let loaded = config::load(&location, &ProcessEnv)
        .context("could not load the configuration, which says where task outputs are kept")?;
    let cfg = &loaded.config;
    let state = StateDir::for_state_file(&cfg.state_file);
    // The control plane issues lower-case ids; accept either case.
    let mut found = None;
    for dir in [state.task(id), state.task(&id.to_ascii_lowercase())] {
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {
                found = Some(dir);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
                "cannot look into {}: permission denied; run this as the agent's user (e.g. `sudo -u noderax-net noderax-agent task-output {id}`) or as root",
                dir.display()
            ),
            _ => {}
        }
    }
    let Some(dir) = found else {
        let dir = state.task(&id.to_ascii_lowercase());
        bail!(
            "no output of task {id} is kept on this node: {} does not exist. Full outputs are kept in {} for task_output_retention ({}) and within task_output_max_bytes ({}); older ones are removed. Check that the task ran on this node and that this is the agent's configuration (config file: {}; state_file {} from {}; run as the agent's user or root)",
            dir.display(),
            state.tasks().display(),
            shared::go_duration::format(cfg.task_output_retention),
            human_bytes(cfg.task_output_max_bytes),
            loaded
                .path
                .as_ref()
                .map_or_else(|| "none".to_owned(), |p| p.display().to_string()),
            cfg.state_file.display(),
            loaded.origin("state_file"),
        );
    };
    let record = TaskRecord::load(&dir).with_context(|| {
        format!(
            "could not read {}; the output itself may still be readable with --json or from output.journal",
            dir.join("task.json").display()
        )
    });
    let journal = match TaskJournal::open_read_only(&dir) {
        Ok(j) => Some(j),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "could not read the output journal in {} (run as the agent's user or root)",
                    dir.display()
                )
            });
        }
    };
    let mut printed = [0u64; 3];
    if let Some(journal) = &journal {
        printed = print_output(journal, &args.stream, args.json)?;
    }
    if !args.quiet {
        let summary = summary(id, &dir, record, journal.as_ref(), printed, args);
        eprint!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Streams the selected output to stdout; returns the bytes printed per stream.
fn print_output(
    journal: &TaskJournal,
    streams: &[StreamArg],
    json: bool,
) -> anyhow::Result<[u64; 3]> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut reader = journal
        .reader([0; 3])
        .context("could not open the output journal")?;
    let mut printed = [0u64; 3];
    // Per stream: bytes of a UTF-8 sequence split across chunks (--json).
    let mut pending: [Vec<u8>; 3] = Default::default();
    while let Some((stream, bytes)) = reader
        .next_chunk(journal)
        .context("could not read the output journal")?
    {
        if !streams.is_empty() && !streams.iter().any(|s| s.matches(stream)) {
            continue;
        }
        let i = index(stream);
        printed[i] += bytes.len() as u64;
        if json {
            let p = &mut pending[i];
            p.extend_from_slice(&bytes);
            let keep = incomplete_utf8_tail(p);
            let text = String::from_utf8_lossy(&p[..p.len() - keep]).into_owned();
            p.drain(..p.len() - keep);
            write_json(&mut out, i, &text)?;
        } else {
            out.write_all(&bytes)?;
        }
    }
    for (i, p) in pending.iter().enumerate() {
        if !p.is_empty() {
            write_json(&mut out, i, &String::from_utf8_lossy(p))?;
        }
    }
    out.flush()?;
    Ok(printed)
}

fn write_json(out: &mut impl std::io::Write, stream: usize, text: &str) -> std::io::Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    let line = serde_json::json!({ "stream": STREAM_NAMES[stream], "text": text });
    writeln!(out, "{line}")
}

/// Bytes at the end of `b` that start a UTF-8 sequence the next chunk completes.
fn incomplete_utf8_tail(b: &[u8]) -> usize {
    let n = b.len();
    for back in 1..=n.min(3) {
        let c = b[n - back];
        if c & 0xC0 == 0x80 {
            continue; // continuation byte: look further back for the lead byte
        }
        let need = match c {
            0xF0..=0xF7 => 4,
            0xE0..=0xEF => 3,
            0xC0..=0xDF => 2,
            _ => 1,
        };
        return if need > back { back } else { 0 };
    }
    0
}

fn summary(
    id: &str,
    dir: &Path,
    record: anyhow::Result<Option<TaskRecord>>,
    journal: Option<&TaskJournal>,
    printed: [u64; 3],
    args: &TaskOutputArgs,
) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str("noderax-agent: ");
        s.push_str(&l);
        s.push('\n');
    };
    let record = match record {
        Ok(r) => r,
        Err(e) => {
            line(format!("{e:#}"));
            None
        }
    };
    match &record {
        Some(r) => {
            let end = match &r.exit {
                Some(x) => {
                    let status = serde_json::to_value(x.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_else(|| format!("{:?}", x.status));
                    let mut e = format!(
                        "{status}, exit code {}, after {}, finished {}",
                        x.exit_code,
                        human_duration_ms(x.duration_ms),
                        x.finished_at
                    );
                    if let Some(err) = x.error.as_deref().filter(|e| !e.is_empty()) {
                        e.push_str(&format!("; error: {err}"));
                    }
                    e
                }
                None => {
                    "no exit recorded yet (still running, or the agent stopped before it ended)"
                        .to_owned()
                }
            };
            line(format!("task {id} ({}): {end}", r.task_type));
        }
        None => line(format!(
            "task {id}: no task record ({} is missing), so type and exit status are unknown",
            dir.join("task.json").display()
        )),
    }
    let Some(j) = journal else {
        line(format!(
            "output: none stored ({} does not exist)",
            dir.join("output.journal").display()
        ));
        return s;
    };
    let received = j.received();
    let total: u64 = received.iter().sum();
    let shown: u64 = printed.iter().sum();
    let mut out = format!(
        "output: {total} bytes (stdout {}, stderr {}, system {})",
        received[0], received[1], received[2]
    );
    if !args.stream.is_empty() {
        out.push_str(&format!(", {shown} printed"));
    }
    match j.dropped() {
        0 => out.push_str("; nothing dropped"),
        d => out.push_str(&format!(
            "; {d} bytes were dropped because the node's output store was full (not stored anywhere)"
        )),
    }
    line(out);
    let delivered = j.delivered();
    let delivered_total: u64 = delivered.iter().sum();
    let delivery = match &record {
        Some(r) if r.completed_sent => {
            "complete: the control plane has the log and the completion".to_owned()
        }
        Some(r) if r.ended.is_some() => format!(
            "stopped early: the control plane ended the task's stream ({}); this output is the only complete copy",
            r.ended.as_deref().unwrap_or_default()
        ),
        Some(r) if r.exit.is_some() => format!(
            "in progress: log delivered up to {delivered_total} of {total} bytes, completion not accepted yet (the running agent keeps retrying)"
        ),
        _ => format!("in progress: log delivered up to {delivered_total} of {total} bytes"),
    };
    line(format!("delivery to the control plane: {delivery}"));
    s
}

/// `512 MiB`, `1.5 GiB`, `300 bytes`.
fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size {
            let v = n as f64 / size as f64;
            return if n % size == 0 {
                format!("{} {unit}", n / size)
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{n} bytes")
}

fn human_duration_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        shared::go_duration::format(std::time::Duration::from_millis(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_utf8_sequences_are_held_back() {
        let euro = "€".as_bytes(); // e2 82 ac
        assert_eq!(incomplete_utf8_tail(b"abc"), 0);
        assert_eq!(incomplete_utf8_tail(&euro[..1]), 1);
        assert_eq!(incomplete_utf8_tail(&euro[..2]), 2);
        assert_eq!(incomplete_utf8_tail(euro), 0);
        assert_eq!(incomplete_utf8_tail(&[b'a', 0xf0, 0x9f, 0x98]), 3);
        assert_eq!(incomplete_utf8_tail(&[0x80, 0x80, 0x80]), 0);
        assert_eq!(incomplete_utf8_tail(&[0xff]), 0);
    }
}
