//! Interactive terminal events (PROTOCOL.md §9).

use serde::{Deserialize, Serialize};

use super::Schema;
use crate::timestamp::Timestamp;

/// Allowed terminal width (§9.2).
pub const COLS_RANGE: std::ops::RangeInclusive<u16> = 20..=400;
/// Allowed terminal height (§9.2).
pub const ROWS_RANGE: std::ops::RangeInclusive<u16> = 10..=200;
pub const DEFAULT_COLS: u16 = 120;
pub const DEFAULT_ROWS: u16 = 34;
/// Longest base64 `payload` of one `terminal.output` event (§9.3).
pub const MAX_OUTPUT_PAYLOAD_CHARS: usize = 65_536;
/// Longest base64 `payload` of one `terminal.input` event (§9.2).
pub const MAX_INPUT_PAYLOAD_CHARS: usize = 32_768;
/// Longest `terminal.exited` reason (§9.3).
pub const MAX_EXIT_REASON_CHARS: usize = 500;
/// Longest `terminal.error` message (§9.3).
pub const MAX_ERROR_MESSAGE_CHARS: usize = 1000;

/// `terminal.start` (server → agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminalStart {
    pub session_id: String,
    #[serde(default)]
    pub cols: Option<u16>,
    #[serde(default)]
    pub rows: Option<u16>,
    #[serde(default)]
    pub run_as_root: bool,
}

/// `terminal.input` (server → agent): standard base64 of raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminalInput {
    pub session_id: String,
    pub payload: String,
}

/// `terminal.resize` (server → agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminalResize {
    pub session_id: String,
    pub cols: u16,
    pub rows: u16,
}

/// `terminal.stop` (server → agent); `reason` may be `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminalStop {
    pub session_id: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `terminal.opened` (agent → server), within 15 s of `terminal.start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "terminal.opened", rename_all = "camelCase")]
pub struct TerminalOpened {
    pub session_id: String,
    pub cols: u16,
    pub rows: u16,
    pub timestamp: Timestamp,
}

impl Schema for TerminalOpened {
    const ACCEPTED: &'static [&'static str] = &["type", "sessionId", "cols", "rows", "timestamp"];
    const REQUIRED: &'static [&'static str] = &["sessionId"];
}

/// Direction of terminal output; PTYs only produce `stdout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TerminalDirection {
    Stdout,
    Stderr,
    System,
}

/// `terminal.output` (agent → server): standard base64 of raw PTY bytes,
/// at most [`MAX_OUTPUT_PAYLOAD_CHARS`] characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "terminal.output", rename_all = "camelCase")]
pub struct TerminalOutput {
    pub session_id: String,
    pub direction: TerminalDirection,
    pub payload: String,
    pub timestamp: Timestamp,
}

impl Schema for TerminalOutput {
    const ACCEPTED: &'static [&'static str] =
        &["type", "sessionId", "direction", "payload", "timestamp"];
    const REQUIRED: &'static [&'static str] = &["sessionId", "direction", "payload"];
}

/// `terminal.exited` (agent → server). The exit code is always sent, 0
/// included (§13 item 42); `-1` when the shell died by a signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "terminal.exited", rename_all = "camelCase")]
pub struct TerminalExited {
    pub session_id: String,
    pub exit_code: i32,
    /// At most [`MAX_EXIT_REASON_CHARS`] characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub timestamp: Timestamp,
}

impl Schema for TerminalExited {
    const ACCEPTED: &'static [&'static str] =
        &["type", "sessionId", "exitCode", "reason", "timestamp"];
    const REQUIRED: &'static [&'static str] = &["sessionId"];
}

/// `terminal.error` (agent → server); the server marks the session failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "terminal.error", rename_all = "camelCase")]
pub struct TerminalError {
    pub session_id: String,
    /// 1–[`MAX_ERROR_MESSAGE_CHARS`] characters.
    pub message: String,
    pub timestamp: Timestamp,
}

impl Schema for TerminalError {
    const ACCEPTED: &'static [&'static str] = &["type", "sessionId", "message", "timestamp"];
    const REQUIRED: &'static [&'static str] = &["sessionId", "message"];
}
