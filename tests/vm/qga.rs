//! Client of the QEMU guest agent (`qemu-guest-agent` in the guest), reached
//! over the unix socket QEMU exposes for its virtio-serial port
//! `org.qemu.guest_agent.0`. It is the harness's only way to run commands
//! and move files in the guest (the guest has no network).
//!
//! The protocol is QMP-like JSON, one request and one response at a time.
//! Because the guest agent may have missed or still hold bytes from an
//! earlier connection (a reboot, a timed-out call), every connection starts
//! with `guest-sync-delimited`: the answer is preceded by a 0xFF byte and
//! carries the random id sent, so anything older is skipped. A call that
//! fails or times out drops the connection; the next call reconnects.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long one request may take to be answered (not a command's run time).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a running command's status is asked for.
const EXEC_POLL: Duration = Duration::from_millis(250);
/// Bytes per guest-file-read / guest-file-write request.
const FILE_CHUNK: usize = 48 * 1024;

struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// A guest agent connection (re-established on demand).
pub struct GuestAgent {
    socket: PathBuf,
    conn: Option<Conn>,
}

/// What a command run with `guest-exec` did.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// Exit status; `None` when it was killed by a signal.
    pub code: Option<i64>,
    pub signal: Option<i64>,
    pub stdout: String,
    pub stderr: String,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// One line saying how it ended, with its output, for error messages.
    pub fn describe(&self) -> String {
        let how = match (self.code, self.signal) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            (None, None) => "no exit status".into(),
        };
        format!(
            "{how}; stdout: {:?}; stderr: {:?}",
            tail(&self.stdout, 2000),
            tail(&self.stderr, 2000)
        )
    }
}

/// The last `max` bytes of `s` (on a character boundary).
pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

impl GuestAgent {
    pub fn new(socket: PathBuf) -> Self {
        Self { socket, conn: None }
    }

    /// Connects and synchronises within `timeout`.
    async fn connect(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.conn = None;
        let socket = self.socket.clone();
        let conn = tokio::time::timeout(timeout, async move {
            let stream = UnixStream::connect(&socket)
                .await
                .with_context(|| format!("connecting to {}", socket.display()))?;
            let (r, w) = stream.into_split();
            let mut conn = Conn {
                reader: BufReader::new(r),
                writer: w,
            };
            let id = u64::from(uuid::Uuid::new_v4().as_u128() as u32);
            let req = json!({"execute": "guest-sync-delimited", "arguments": {"id": id}});
            conn.writer.write_all(format!("{req}\n").as_bytes()).await?;
            loop {
                // Skip to the delimiter, then read the answer's line.
                let mut skipped = Vec::new();
                conn.reader.read_until(0xFF, &mut skipped).await?;
                if skipped.last() != Some(&0xFF) {
                    bail!("the guest agent closed the connection while synchronising");
                }
                let mut line = String::new();
                conn.reader.read_line(&mut line).await?;
                let v: Value = match serde_json::from_str(line.trim()) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                if v["return"].as_u64() == Some(id) {
                    return Ok(conn);
                }
            }
        })
        .await
        .map_err(|_| anyhow!("the guest agent did not answer guest-sync within {timeout:?}"))??;
        self.conn = Some(conn);
        Ok(())
    }

    /// Waits until the guest agent answers (the guest has booted far enough).
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            match self.connect(Duration::from_secs(5)).await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(last.unwrap_or_else(|| anyhow!("no attempt made")))
            .with_context(|| format!("the guest agent did not answer within {timeout:?}"))
    }

    /// Sends one command and returns its `return` value.
    pub async fn call(&mut self, command: &str, arguments: Value) -> anyhow::Result<Value> {
        if self.conn.is_none() {
            self.connect(CALL_TIMEOUT).await?;
        }
        let conn = self.conn.as_mut().expect("connected above");
        let req = if arguments.is_null() {
            json!({"execute": command})
        } else {
            json!({"execute": command, "arguments": arguments})
        };
        let answer = tokio::time::timeout(CALL_TIMEOUT, async {
            conn.writer.write_all(format!("{req}\n").as_bytes()).await?;
            loop {
                // Bytes, not a String: a late sync answer's 0xFF delimiter
                // is not UTF-8.
                let mut raw = Vec::new();
                if conn.reader.read_until(b'\n', &mut raw).await? == 0 {
                    bail!("the guest agent closed the connection");
                }
                let line = String::from_utf8_lossy(&raw);
                let line = line.trim_matches(|c: char| c.is_whitespace() || c == '\u{FFFD}');
                if !line.is_empty() {
                    return Ok::<Value, anyhow::Error>(serde_json::from_str(line)?);
                }
            }
        })
        .await;
        let answer = match answer {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                self.conn = None;
                return Err(e.context(format!("guest agent command {command}")));
            }
            Err(_) => {
                self.conn = None;
                bail!("guest agent command {command} got no answer within {CALL_TIMEOUT:?}");
            }
        };
        if let Some(err) = answer.get("error") {
            bail!(
                "guest agent command {command} failed: {} ({})",
                err["desc"].as_str().unwrap_or("no description"),
                err["class"].as_str().unwrap_or("?")
            );
        }
        Ok(answer.get("return").cloned().unwrap_or(Value::Null))
    }

    /// Sends a command after which the guest agent does not answer
    /// (`guest-shutdown`); the connection is dropped.
    pub async fn send_no_reply(&mut self, command: &str, arguments: Value) -> anyhow::Result<()> {
        if self.conn.is_none() {
            self.connect(CALL_TIMEOUT).await?;
        }
        let conn = self.conn.as_mut().expect("connected above");
        let req = json!({"execute": command, "arguments": arguments});
        let r = conn.writer.write_all(format!("{req}\n").as_bytes()).await;
        self.conn = None;
        r.with_context(|| format!("sending {command} to the guest agent"))
    }

    /// Runs `argv` in the guest as root and waits for it up to `timeout`.
    pub async fn exec(
        &mut self,
        argv: &[&str],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> anyhow::Result<ExecOutput> {
        let (path, args) = argv.split_first().context("empty command")?;
        let mut arguments = json!({"path": path, "arg": args, "capture-output": true});
        if let Some(input) = stdin {
            arguments["input-data"] =
                json!(base64::engine::general_purpose::STANDARD.encode(input));
        }
        let started = self.call("guest-exec", arguments).await?;
        let pid = started["pid"]
            .as_i64()
            .with_context(|| format!("guest-exec answered without a pid: {started}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let st = self
                .call("guest-exec-status", json!({"pid": pid}))
                .await
                .with_context(|| format!("status of {argv:?} (guest pid {pid})"))?;
            if st["exited"].as_bool() == Some(true) {
                let text = |k: &str| -> anyhow::Result<String> {
                    let b64 = st[k].as_str().unwrap_or("");
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .with_context(|| format!("{k} of guest-exec-status is not base64"))?;
                    Ok(String::from_utf8_lossy(&bytes).into_owned())
                };
                return Ok(ExecOutput {
                    code: st["exitcode"].as_i64(),
                    signal: st["signal"].as_i64(),
                    stdout: text("out-data")?,
                    stderr: text("err-data")?,
                });
            }
            if Instant::now() >= deadline {
                bail!("{argv:?} did not finish in the guest within {timeout:?} (guest pid {pid})");
            }
            tokio::time::sleep(EXEC_POLL).await;
        }
    }

    /// Runs a shell script in the guest (`/bin/sh -c`) as root.
    pub async fn sh(&mut self, script: &str, timeout: Duration) -> anyhow::Result<ExecOutput> {
        self.exec(&["/bin/sh", "-c", script], None, timeout).await
    }

    /// Runs a shell script and fails unless it exits 0; returns its stdout.
    pub async fn sh_ok(&mut self, script: &str, timeout: Duration) -> anyhow::Result<String> {
        let out = self.sh(script, timeout).await?;
        if !out.success() {
            bail!("in the guest, `{script}` failed: {}", out.describe());
        }
        Ok(out.stdout)
    }

    /// Reads a whole file from the guest (guest-file-open/read/close).
    pub async fn read_file(&mut self, path: &str) -> anyhow::Result<Vec<u8>> {
        let handle = self
            .call("guest-file-open", json!({"path": path, "mode": "r"}))
            .await
            .with_context(|| format!("opening {path} in the guest"))?;
        let mut data = Vec::new();
        let result = async {
            loop {
                let chunk = self
                    .call(
                        "guest-file-read",
                        json!({"handle": &handle, "count": FILE_CHUNK}),
                    )
                    .await?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(chunk["buf-b64"].as_str().unwrap_or(""))
                    .context("guest-file-read answered with invalid base64")?;
                data.extend_from_slice(&bytes);
                if chunk["eof"].as_bool() == Some(true) || bytes.is_empty() {
                    return Ok::<(), anyhow::Error>(());
                }
            }
        }
        .await;
        let closed = self
            .call("guest-file-close", json!({"handle": &handle}))
            .await;
        result.with_context(|| format!("reading {path} in the guest"))?;
        closed?;
        Ok(data)
    }

    /// Writes (creates or truncates) a file in the guest, owned by root.
    pub async fn write_file(&mut self, path: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let handle = self
            .call("guest-file-open", json!({"path": path, "mode": "w"}))
            .await
            .with_context(|| format!("creating {path} in the guest"))?;
        let result = async {
            for chunk in bytes.chunks(FILE_CHUNK) {
                let b64 = base64::engine::general_purpose::STANDARD.encode(chunk);
                let w = self
                    .call(
                        "guest-file-write",
                        json!({"handle": &handle, "buf-b64": b64}),
                    )
                    .await?;
                if w["count"].as_u64() != Some(chunk.len() as u64) {
                    bail!("short write: {w}");
                }
            }
            Ok(())
        }
        .await;
        let closed = self
            .call("guest-file-close", json!({"handle": &handle}))
            .await;
        result.with_context(|| format!("writing {path} in the guest"))?;
        closed?;
        Ok(())
    }
}
