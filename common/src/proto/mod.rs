//! The wire protocol between `walship-sender` and `walship-receiver`.
//!
//! One QUIC connection (ALPN [`frame::ALPN`]) carries one bidirectional stream per file. On each
//! stream the sender writes a [`frame::Request`] header, then the file content (`size` plain
//! bytes, encoded as the header says), then, when the header carries no digest, the digest
//! ([`digest`], BLAKE3) as a 32-byte trailer, then finishes its side; the receiver answers with one [`frame::Reply`] and finishes
//! its side. The reply is sent only after the file is verified and durable, so the sender trusts
//! it, never transport acknowledgements.
//!
//! [`handoff`] is the local hand-off between `push` and the sender daemon (Unix socket).
//!
//! [`upload::Upload`] is the receiver's pure state machine for one stream.

pub mod digest;
pub mod encoding;
pub mod frame;
pub mod handoff;
pub mod upload;

pub use encoding::{BodyDecoder, BodyEncoder, Encoding};
pub use frame::{FrameError, Refusal, Reply, Request, ALPN, PROTOCOL_VERSION};
pub use upload::{ArchiveFacts, Upload, Verified};
