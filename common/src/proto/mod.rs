//! The wire protocol between `walship-sender` and `walship-receiver`.
//!
//! One QUIC connection (ALPN [`frame::ALPN`]) carries one bidirectional stream per file. On each
//! stream the sender writes a [`frame::Request`] header, then the file content (`size` plain
//! bytes, encoded as the header says), then the digest ([`digest`], BLAKE3) of the plain bytes
//! as a 32-byte trailer, then finishes its side; the receiver answers with one [`frame::Reply`]
//! and finishes its side. The reply is sent only after the file is verified and durable, so
//! the sender trusts it, never transport acknowledgements. A peer of another protocol version
//! is told which side to upgrade (see [`frame`]).
//!
//! Layers, each using only those above it:
//! - [`digest`], [`encoding`]: the content digest, and zstd or plain bytes (its own
//!   [`encoding::DecodeError`]);
//! - [`frame`]: preamble, request, reply and refusals, version negotiation;
//! - [`upload`]: the checks of one file's plain bytes (name, header, cluster, history, fence);
//! - [`incoming`] (receiver) and [`outgoing`] (sender): the whole stream, wire bytes to a
//!   verified file and back;
//! - [`backup`]: one base backup file's stream (path checked, zeros for a file that shrank);
//! - [`handoff`]: the local hand-off between `push` and the sender daemon (Unix socket).
//!
//! Reading frames from a socket is IO: [`crate::sys::frame_io`].

pub mod backup;
pub mod digest;
pub mod encoding;
pub mod frame;
pub mod handoff;
pub mod incoming;
pub mod outgoing;
pub mod upload;

pub use encoding::{BodyDecoder, BodyEncoder, DecodeError, Encoding};
pub use frame::{
    BackupRequest, FrameError, Refusal, Reply, Request, Seal, WireRequest, ALPN, PROTOCOL_VERSION,
};
pub use incoming::Incoming;
pub use outgoing::Outgoing;
pub use upload::{ArchiveFacts, Upload, Verified};
