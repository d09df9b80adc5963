//! The private protocol between `agent-net` and `agent-exec`
//! (ARCHITECTURE.md §4).
//!
//! One connected Unix stream socket carries frames: a 4-byte little-endian
//! length, then one bincode-encoded message ([`codec`]). Each side first
//! sends [`Hello`]; a different protocol major version is refused
//! ([`check_peer`]). agent-net sends [`NetMessage`]s, agent-exec sends
//! [`ExecMessage`]s. A frame that is too long, does not decode, or is not
//! allowed in the current state closes the connection; the peer reconnects
//! and nothing crashes.

pub mod codec;
mod message;

pub use codec::{CodecError, FrameDecoder, MAX_FRAME_LEN, read_message, write_message};
pub use message::*;

/// Version of this protocol. A major change is incompatible; a minor change
/// only adds messages or variants that an older peer never receives.
pub const PROTOCOL_MAJOR: u16 = 1;
pub const PROTOCOL_MINOR: u16 = 0;

/// The handshake both sides send first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hello {
    pub protocol_major: u16,
    pub protocol_minor: u16,
    /// The sender's release version ([`crate::build_info::VERSION`]).
    pub agent_version: String,
    pub pid: u32,
}

impl Hello {
    /// This process's handshake.
    pub fn current() -> Self {
        Self {
            protocol_major: PROTOCOL_MAJOR,
            protocol_minor: PROTOCOL_MINOR,
            agent_version: crate::build_info::VERSION.to_owned(),
            pid: std::process::id(),
        }
    }
}

/// The peer speaks an incompatible protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "peer (pid {pid}, version {version}) speaks IPC protocol {major}.x but this process speaks {PROTOCOL_MAJOR}.x; install noderax-agent and noderax-agent-exec from the same release"
)]
pub struct IncompatiblePeer {
    pub pid: u32,
    pub version: String,
    pub major: u16,
}

/// Accepts a peer's [`Hello`] when its major version matches.
pub fn check_peer(peer: &Hello) -> Result<(), IncompatiblePeer> {
    if peer.protocol_major == PROTOCOL_MAJOR {
        Ok(())
    } else {
        Err(IncompatiblePeer {
            pid: peer.pid,
            version: peer.agent_version.clone(),
            major: peer.protocol_major,
        })
    }
}

#[cfg(test)]
mod tests;
