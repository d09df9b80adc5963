//! Framing and encoding of IPC messages.
//!
//! The only module that knows bincode: `bincode = "=2.0.1"` with its serde
//! integration. Upstream development has stopped (RUSTSEC-2025-0141, 3.0.0 is
//! only a `compile_error!`) but 2.0.1 is complete for this use; replacing it
//! means changing this file alone.
//!
//! Defences: the length prefix is checked against [`MAX_FRAME_LEN`] before
//! anything is allocated for the frame; bincode runs with the same limit so a
//! length *inside* a frame cannot make it allocate more; trailing bytes after
//! a message are an error. Every failure is a [`CodecError`], never a panic.

use std::io::{self, Read, Write};

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest frame payload (1 MiB), both directions.
pub const MAX_FRAME_LEN: usize = 1 << 20;
const HEADER_LEN: usize = 4;

type Config = Configuration<LittleEndian, Varint, Limit<MAX_FRAME_LEN>>;

fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Why a frame could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("IPC frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    #[error("IPC frame is empty")]
    Empty,
    #[error("IPC frame does not decode: {0}")]
    Decode(String),
    #[error("IPC frame has {0} bytes after the message")]
    Trailing(usize),
    #[error("IPC message does not encode: {0}")]
    Encode(String),
    #[error("IPC connection closed in the middle of a frame")]
    Truncated,
    #[error("IPC I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Encodes `msg` as one frame (length prefix included).
pub fn encode<M: Serialize>(msg: &M) -> Result<Vec<u8>, CodecError> {
    let mut frame = vec![0u8; HEADER_LEN];
    bincode::serde::encode_into_std_write(msg, &mut frame, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let len = frame.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge(len));
    }
    frame[..HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(frame)
}

/// Decodes one frame payload (without the length prefix).
pub fn decode<M: DeserializeOwned>(payload: &[u8]) -> Result<M, CodecError> {
    if payload.is_empty() {
        return Err(CodecError::Empty);
    }
    if payload.len() > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge(payload.len()));
    }
    let (msg, used) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(CodecError::Trailing(payload.len() - used));
    }
    Ok(msg)
}

fn frame_len(header: [u8; HEADER_LEN]) -> Result<usize, CodecError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge(len));
    }
    Ok(len)
}

/// Writes one message as a frame.
pub fn write_message<W: Write, M: Serialize>(w: &mut W, msg: &M) -> Result<(), CodecError> {
    w.write_all(&encode(msg)?)?;
    Ok(())
}

/// Reads one message. `Ok(None)` on a clean end of stream between frames.
pub fn read_message<R: Read, M: DeserializeOwned>(r: &mut R) -> Result<Option<M>, CodecError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(CodecError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = frame_len(header)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => CodecError::Truncated,
        _ => CodecError::Io(e),
    })?;
    decode(&payload).map(Some)
}

/// Incremental decoder for non-blocking or async readers: push whatever bytes
/// arrived, then take complete messages. Holds at most one frame's bytes
/// beyond what was pushed in one call.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, `Ok(None)` if more bytes are needed. An
    /// oversized length is reported as soon as its header has arrived,
    /// before the payload is buffered. After an error the stream is out of
    /// sync and the connection must be closed.
    pub fn next_message<M: DeserializeOwned>(&mut self) -> Result<Option<M>, CodecError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let header: [u8; HEADER_LEN] = self.buf[..HEADER_LEN].try_into().expect("4 bytes");
        let len = frame_len(header)?;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let result = decode(&self.buf[HEADER_LEN..HEADER_LEN + len]);
        self.buf.drain(..HEADER_LEN + len);
        result.map(Some)
    }
}
