//! Web terminals between the control plane's `terminal.*` events and the
//! executor's PTY sessions (PROTOCOL.md §9).
//!
//! Requests from the server are checked here (session id, size ranges,
//! base64 input, known session) so the executor only sees valid requests,
//! and every failure becomes a `terminal.error` for that session — after
//! which the session's shell is killed, because the server marks the session
//! failed and would never stop it (§9.1).
//!
//! Sessions belong to the executor, not to the socket: while the socket is
//! down, events wait in a bounded queue and go out after the next
//! authentication. Output of a session that has ended by then is stale and
//! is dropped; its `terminal.exited` still goes out.

use std::collections::{HashMap, VecDeque};

use base64::Engine as _;
use serde_json::Value;
use shared::api::realtime::event;
use shared::api::terminal::{
    self, COLS_RANGE, DEFAULT_COLS, DEFAULT_ROWS, ROWS_RANGE, TerminalDirection, TerminalError,
    TerminalExited, TerminalInput, TerminalOpened, TerminalOutput, TerminalResize, TerminalStart,
    TerminalStop,
};
use shared::ipc::{NetMessage, PtyMode, TerminalOpen, TerminalState};
use shared::timestamp::Timestamp;

/// Raw bytes per `terminal.output` so its base64 stays within 65 536 characters.
pub const MAX_OUTPUT_BYTES: usize = terminal::MAX_OUTPUT_PAYLOAD_CHARS / 4 * 3;

/// One event for the server.
pub type Outgoing = (String, Value);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `TerminalOpen` sent, waiting for the executor.
    Opening,
    Open,
}

/// Terminal sessions and the events waiting for the socket.
pub struct TerminalBridge {
    sessions: HashMap<String, Phase>,
    queue: VecDeque<(Option<String>, Outgoing)>,
    queue_limit: usize,
    /// Output events dropped because the queue was full.
    pub dropped_events: u64,
}

fn standard_b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("terminal events serialize")
}

fn clip(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((i, _)) => text[..i].to_owned(),
        None => text.to_owned(),
    }
}

impl TerminalBridge {
    /// `queue_limit`: events kept while the socket is down (`realtime_queue_size`).
    pub fn new(queue_limit: usize) -> Self {
        Self {
            sessions: HashMap::new(),
            queue: VecDeque::new(),
            queue_limit: queue_limit.max(16),
            dropped_events: 0,
        }
    }

    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Events for the server, oldest first; empties the queue.
    pub fn take_outgoing(&mut self) -> Vec<Outgoing> {
        self.queue.drain(..).map(|(_, e)| e).collect()
    }

    /// Puts events back at the front (the socket could not take them).
    pub fn requeue_front(&mut self, events: Vec<Outgoing>) {
        for e in events.into_iter().rev() {
            self.queue.push_front((None, e));
        }
    }

    fn push(&mut self, session: Option<&str>, name: &str, payload: Value) {
        if self.queue.len() >= self.queue_limit {
            // Drop the oldest output; lifecycle events (no session tag) stay.
            if let Some(i) = self.queue.iter().position(|(s, _)| s.is_some()) {
                self.queue.remove(i);
                self.dropped_events += 1;
            }
        }
        self.queue
            .push_back((session.map(str::to_owned), (name.to_owned(), payload)));
    }

    fn error(&mut self, session_id: &str, message: &str) {
        let message = clip(message, terminal::MAX_ERROR_MESSAGE_CHARS);
        let message = if message.is_empty() {
            "terminal error".to_owned()
        } else {
            message
        };
        self.push(
            None,
            event::TERMINAL_ERROR,
            to_value(&TerminalError {
                session_id: session_id.to_owned(),
                message,
                timestamp: Timestamp::now(),
            }),
        );
    }

    /// A `terminal.*` event from the server. Returns what to send to the
    /// executor; `executor_up` says whether there is an executor to send to.
    pub fn from_server(
        &mut self,
        name: &str,
        payload: Value,
        executor_up: bool,
    ) -> Vec<NetMessage> {
        let session_of = |p: &Value| p["sessionId"].as_str().unwrap_or("").to_owned();
        match name {
            event::TERMINAL_START => {
                let sid = session_of(&payload);
                let start: TerminalStart = match serde_json::from_value(payload) {
                    Ok(s) => s,
                    Err(e) => return self.refuse(&sid, &format!("invalid terminal.start: {e}")),
                };
                if let Err(e) = shared::validate::uuid(&start.session_id) {
                    return self.refuse(&sid, &format!("invalid session id: {e}"));
                }
                if self.sessions.contains_key(&start.session_id) {
                    self.error(&start.session_id, "terminal session already exists");
                    return vec![];
                }
                if start.run_as_root {
                    return self.refuse(
                        &start.session_id,
                        "current root access profile does not allow root terminals",
                    );
                }
                let cols = start.cols.filter(|c| *c != 0).unwrap_or(DEFAULT_COLS);
                let rows = start.rows.filter(|r| *r != 0).unwrap_or(DEFAULT_ROWS);
                if !COLS_RANGE.contains(&cols) || !ROWS_RANGE.contains(&rows) {
                    return self.refuse(
                        &start.session_id,
                        &format!(
                            "terminal size is invalid: {cols}x{rows}; columns must be 20-400 and rows 10-200"
                        ),
                    );
                }
                if !executor_up {
                    return self.refuse(
                        &start.session_id,
                        "the agent's executor is not available; try again in a moment",
                    );
                }
                self.sessions
                    .insert(start.session_id.clone(), Phase::Opening);
                vec![NetMessage::TerminalOpen(TerminalOpen {
                    session_id: start.session_id,
                    cols,
                    rows,
                })]
            }
            event::TERMINAL_INPUT => {
                let sid = session_of(&payload);
                let input: TerminalInput = match serde_json::from_value(payload) {
                    Ok(i) => i,
                    Err(e) => {
                        return self.fail_session(&sid, &format!("invalid terminal.input: {e}"));
                    }
                };
                if !self.sessions.contains_key(&input.session_id) {
                    self.error(&input.session_id, "terminal session was not found");
                    return vec![];
                }
                if input.payload.len() > terminal::MAX_INPUT_PAYLOAD_CHARS {
                    return self.fail_session(
                        &input.session_id,
                        &format!(
                            "terminal input of {} base64 characters exceeds the limit of {}",
                            input.payload.len(),
                            terminal::MAX_INPUT_PAYLOAD_CHARS
                        ),
                    );
                }
                match standard_b64().decode(input.payload.as_bytes()) {
                    Ok(bytes) => vec![NetMessage::TerminalInput {
                        session_id: input.session_id,
                        bytes,
                    }],
                    Err(e) => self.fail_session(
                        &input.session_id,
                        &format!("terminal input is not valid base64: {e}"),
                    ),
                }
            }
            event::TERMINAL_RESIZE => {
                let sid = session_of(&payload);
                let r: TerminalResize = match serde_json::from_value(payload) {
                    Ok(r) => r,
                    Err(e) => {
                        return self.fail_session(&sid, &format!("invalid terminal.resize: {e}"));
                    }
                };
                if !self.sessions.contains_key(&r.session_id) {
                    self.error(&r.session_id, "terminal session was not found");
                    return vec![];
                }
                if !COLS_RANGE.contains(&r.cols) || !ROWS_RANGE.contains(&r.rows) {
                    return self.fail_session(
                        &r.session_id,
                        &format!(
                            "terminal size is invalid: {}x{}; columns must be 20-400 and rows 10-200",
                            r.cols, r.rows
                        ),
                    );
                }
                vec![NetMessage::TerminalResize {
                    session_id: r.session_id,
                    cols: r.cols,
                    rows: r.rows,
                }]
            }
            event::TERMINAL_STOP => {
                let sid = session_of(&payload);
                let stop: TerminalStop = match serde_json::from_value(payload) {
                    Ok(s) => s,
                    Err(e) => {
                        return self.fail_session(&sid, &format!("invalid terminal.stop: {e}"));
                    }
                };
                if !self.sessions.contains_key(&stop.session_id) {
                    // Already gone: confirm so the server does not wait 10 s.
                    self.exited(
                        &stop.session_id,
                        -1,
                        stop.reason
                            .as_deref()
                            .or(Some("terminal session was not found")),
                    );
                    return vec![];
                }
                vec![NetMessage::TerminalClose {
                    session_id: stop.session_id,
                    reason: stop.reason,
                }]
            }
            _ => vec![],
        }
    }

    /// A request that never reached the executor failed.
    fn refuse(&mut self, session_id: &str, message: &str) -> Vec<NetMessage> {
        if !session_id.is_empty() {
            self.error(session_id, message);
        }
        vec![]
    }

    /// A request for a running session failed: report it and kill the shell.
    fn fail_session(&mut self, session_id: &str, message: &str) -> Vec<NetMessage> {
        if session_id.is_empty() {
            return vec![];
        }
        self.error(session_id, message);
        if self.sessions.remove(session_id).is_some() {
            vec![NetMessage::TerminalClose {
                session_id: session_id.to_owned(),
                reason: Some(clip(message, terminal::MAX_EXIT_REASON_CHARS)),
            }]
        } else {
            vec![]
        }
    }

    fn exited(&mut self, session_id: &str, exit_code: i32, reason: Option<&str>) {
        // Output of this session still waiting is stale now.
        self.queue.retain(|(s, _)| s.as_deref() != Some(session_id));
        self.push(
            None,
            event::TERMINAL_EXITED,
            to_value(&TerminalExited {
                session_id: session_id.to_owned(),
                exit_code,
                reason: reason
                    .map(|r| clip(r, terminal::MAX_EXIT_REASON_CHARS))
                    .filter(|r| !r.is_empty()),
                timestamp: Timestamp::now(),
            }),
        );
    }

    /// The executor opened a session.
    pub fn opened(
        &mut self,
        session_id: &str,
        cols: u16,
        rows: u16,
        mode: PtyMode,
    ) -> Option<String> {
        let phase = self.sessions.get_mut(session_id)?;
        *phase = Phase::Open;
        self.push(
            None,
            event::TERMINAL_OPENED,
            to_value(&TerminalOpened {
                session_id: session_id.to_owned(),
                cols,
                rows,
                timestamp: Timestamp::now(),
            }),
        );
        (mode != PtyMode::ControllingTty).then(|| {
            format!("terminal session {session_id} runs in {mode:?} mode: job control (Ctrl-Z, fg) is limited")
        })
    }

    /// Shell output; returns false when the session is unknown (the caller closes it).
    pub fn output(&mut self, session_id: &str, bytes: &[u8]) -> bool {
        if !self.sessions.contains_key(session_id) {
            return false;
        }
        for chunk in bytes.chunks(MAX_OUTPUT_BYTES) {
            self.push(
                Some(session_id),
                event::TERMINAL_OUTPUT,
                to_value(&TerminalOutput {
                    session_id: session_id.to_owned(),
                    direction: TerminalDirection::Stdout,
                    payload: standard_b64().encode(chunk),
                    timestamp: Timestamp::now(),
                }),
            );
        }
        true
    }

    /// The shell exited.
    pub fn shell_exited(&mut self, session_id: &str, exit_code: i32, reason: Option<&str>) {
        self.sessions.remove(session_id);
        self.exited(
            session_id,
            exit_code,
            reason.or(Some("terminal session exited")),
        );
    }

    /// The executor reported an error for a session; returns the close request.
    pub fn executor_error(&mut self, session_id: &str, message: &str) -> Vec<NetMessage> {
        self.fail_session(session_id, message)
    }

    /// The executor (re)connected with these terminals; sessions it no
    /// longer has are reported exited.
    pub fn executor_up(&mut self, alive: &[TerminalState]) {
        let gone: Vec<String> = self
            .sessions
            .keys()
            .filter(|s| !alive.iter().any(|t| &t.session_id == *s))
            .cloned()
            .collect();
        for sid in gone {
            self.shell_exited(
                &sid,
                -1,
                Some("the agent's executor stopped; the shell ended with it"),
            );
        }
    }

    /// The executor process is gone: every shell went with it.
    pub fn executor_exited(&mut self) {
        self.executor_up(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SID: &str = "0b7e2c3a-1d2f-4e5a-9b8c-7d6e5f4a3b2c";

    fn names(b: &mut TerminalBridge) -> Vec<String> {
        b.take_outgoing().into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn start_normalises_the_size_and_refuses_bad_requests() {
        let mut b = TerminalBridge::new(100);
        let m = b.from_server(
            event::TERMINAL_START,
            json!({"sessionId": SID, "cols": 0, "rows": 0, "runAsRoot": false}),
            true,
        );
        assert_eq!(
            m,
            vec![NetMessage::TerminalOpen(TerminalOpen {
                session_id: SID.into(),
                cols: 120,
                rows: 34
            })]
        );
        // A second start for the same id.
        assert!(
            b.from_server(event::TERMINAL_START, json!({"sessionId": SID}), true)
                .is_empty()
        );
        let out = b.take_outgoing();
        assert_eq!(out[0].1["message"], "terminal session already exists");

        let other = "1b7e2c3a-1d2f-4e5a-9b8c-7d6e5f4a3b2c";
        for (payload, why) in [
            (
                json!({"sessionId": other, "cols": 10, "rows": 34}),
                "terminal size is invalid",
            ),
            (
                json!({"sessionId": other, "runAsRoot": true}),
                "does not allow root terminals",
            ),
            (json!({"sessionId": "../etc"}), "invalid session id"),
        ] {
            assert!(
                b.from_server(event::TERMINAL_START, payload, true)
                    .is_empty()
            );
            let out = b.take_outgoing();
            assert_eq!(out[0].0, event::TERMINAL_ERROR);
            assert!(
                out[0].1["message"].as_str().unwrap().contains(why),
                "{out:?}"
            );
        }
        assert!(
            b.from_server(event::TERMINAL_START, json!({"sessionId": other}), false)
                .is_empty()
        );
        assert!(
            b.take_outgoing()[0].1["message"]
                .as_str()
                .unwrap()
                .contains("not available")
        );
    }

    #[test]
    fn bad_input_reports_an_error_and_kills_the_session() {
        let mut b = TerminalBridge::new(100);
        b.from_server(event::TERMINAL_START, json!({"sessionId": SID}), true);
        assert_eq!(
            b.from_server(
                event::TERMINAL_INPUT,
                json!({"sessionId": SID, "payload": "bHMK"}),
                true
            ),
            vec![NetMessage::TerminalInput {
                session_id: SID.into(),
                bytes: b"ls\n".to_vec()
            }]
        );
        let m = b.from_server(
            event::TERMINAL_INPUT,
            json!({"sessionId": SID, "payload": "%%%"}),
            true,
        );
        assert!(
            matches!(&m[..], [NetMessage::TerminalClose { session_id, .. }] if session_id == SID)
        );
        assert_eq!(names(&mut b), vec![event::TERMINAL_ERROR]);
        // The session is gone now.
        assert!(
            b.from_server(
                event::TERMINAL_INPUT,
                json!({"sessionId": SID, "payload": "bHMK"}),
                true
            )
            .is_empty()
        );
        assert_eq!(
            b.take_outgoing()[0].1["message"],
            "terminal session was not found"
        );
    }

    #[test]
    fn output_is_split_within_the_payload_limit_and_stale_output_is_dropped() {
        let mut b = TerminalBridge::new(100);
        b.from_server(event::TERMINAL_START, json!({"sessionId": SID}), true);
        b.opened(SID, 120, 34, PtyMode::ControllingTty);
        let big = vec![b'x'; MAX_OUTPUT_BYTES * 2 + 5];
        assert!(b.output(SID, &big));
        let out = b.take_outgoing();
        assert_eq!(out.len(), 4);
        let mut total = 0;
        for (name, p) in &out[1..] {
            assert_eq!(name, event::TERMINAL_OUTPUT);
            let s = p["payload"].as_str().unwrap();
            assert!(s.len() <= terminal::MAX_OUTPUT_PAYLOAD_CHARS);
            total += standard_b64().decode(s).unwrap().len();
        }
        assert_eq!(total, big.len());

        // Socket down: output queued, then the shell exits: only `exited` remains.
        b.output(SID, b"late");
        b.shell_exited(SID, 0, None);
        let out = b.take_outgoing();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, event::TERMINAL_EXITED);
        assert_eq!(out[0].1["exitCode"], 0);
    }

    #[test]
    fn sessions_missing_after_an_executor_reconnect_are_reported_exited() {
        let mut b = TerminalBridge::new(100);
        let other = "1b7e2c3a-1d2f-4e5a-9b8c-7d6e5f4a3b2c";
        b.from_server(event::TERMINAL_START, json!({"sessionId": SID}), true);
        b.from_server(event::TERMINAL_START, json!({"sessionId": other}), true);
        b.executor_up(&[TerminalState {
            session_id: SID.into(),
            last_seq: 3,
        }]);
        let out = b.take_outgoing();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1["sessionId"], other);
        assert_eq!(out[0].1["exitCode"], -1);
        assert_eq!(b.open_sessions(), 1);
    }

    #[test]
    fn a_full_queue_drops_output_but_keeps_lifecycle_events() {
        let mut b = TerminalBridge::new(16);
        b.from_server(event::TERMINAL_START, json!({"sessionId": SID}), true);
        b.opened(SID, 120, 34, PtyMode::ControllingTty);
        for _ in 0..100 {
            b.output(SID, b"x");
        }
        let out = b.take_outgoing();
        assert_eq!(out.len(), 16);
        assert_eq!(out[0].0, event::TERMINAL_OPENED);
        assert_eq!(b.dropped_events, 85);
    }
}
