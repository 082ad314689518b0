//! The local hand-off between `walship-sender push` and `walship-sender daemon` over the
//! daemon's Unix socket: one [`Handoff`] frame from `push`, one [`HandoffReply`] back, then both
//! close. Same preamble layout as the wire protocol (magic, version, length) with its own magic,
//! so a wire peer and a local peer can never be confused.
//!
//! `walship-sender status` asks on the same socket with frames of their own magic ([`STATUS`]):
//! one [`StatusRequest`], one [`FanoutStatus`] back.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::frame::{decode_body, encode_with, FrameError, FrameKind};
use crate::fanout::FanoutStatus;

/// First bytes of every hand-off frame.
pub const HANDOFF_MAGIC: [u8; 4] = *b"WSLH";
/// Largest hand-off body accepted: a path (PATH_MAX is 4096) and a WAL name, or a reply line.
pub const MAX_HANDOFF_BYTES: usize = 8 * 1024;
/// Hand-off frames, both ways (read with [`crate::sys::frame_io`]).
pub const HANDOFF: FrameKind = FrameKind {
    magic: HANDOFF_MAGIC,
    max: MAX_HANDOFF_BYTES,
};

/// First bytes of a status frame, both ways.
pub const STATUS_MAGIC: [u8; 4] = *b"WSLS";
/// Largest status body accepted: a few hundred bytes per receiver (address, names, one error
/// line); 256 KiB is far more than any sane number of receivers needs.
pub const MAX_STATUS_BYTES: usize = 256 * 1024;
/// Status frames, both ways.
pub const STATUS: FrameKind = FrameKind {
    magic: STATUS_MAGIC,
    max: MAX_STATUS_BYTES,
};

/// `status` asks the daemon what it knows about each receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRequest {
    /// Reserved, so that a later request can say more; empty today.
    pub detail: String,
}

impl StatusRequest {
    pub fn encode(&self) -> Vec<u8> {
        encode_with(STATUS_MAGIC, self)
    }
    pub fn decode_body(body: &[u8]) -> Result<Self, FrameError> {
        decode_body(body)
    }
}

/// The daemon's answer to a [`StatusRequest`].
pub fn encode_status(status: &FanoutStatus) -> Vec<u8> {
    encode_with(STATUS_MAGIC, status)
}

pub fn decode_status(body: &[u8]) -> Result<FanoutStatus, FrameError> {
    decode_body(body)
}

/// `push` asks the daemon to make `path` durable on the receiver as `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// Absolute path of the file (`%p` joined to push's working directory, the data directory).
    pub path: PathBuf,
    /// The WAL file name (`%f`).
    pub name: String,
}

/// The daemon's verdict. Only the first three mean "durable on the receiver". New variants go
/// at the end (bincode indices).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandoffReply {
    /// The receiver stored it, on the daemon's warm connection.
    Stored,
    /// The receiver already held identical content.
    AlreadyHad,
    /// Look-ahead had shipped it and the receiver acknowledged exactly the file now at `path`
    /// (same device, inode, size, mtime and ctime as when it was read).
    ShippedAhead,
    /// Not durable: the one line to print (PostgreSQL will retry).
    Failed { message: String },
    /// Not shipped, and dropped by the pg_wal valve (`max_backlog`): recorded on the primary,
    /// `push` prints the one ERROR line and exits 0 so that PostgreSQL recycles the segment.
    Dropped { message: String },
}

impl Handoff {
    pub fn encode(&self) -> Vec<u8> {
        encode_with(HANDOFF_MAGIC, self)
    }
    pub fn decode_body(body: &[u8]) -> Result<Self, FrameError> {
        decode_body(body)
    }
}

impl HandoffReply {
    pub fn encode(&self) -> Vec<u8> {
        encode_with(HANDOFF_MAGIC, self)
    }
    pub fn decode_body(body: &[u8]) -> Result<Self, FrameError> {
        decode_body(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::{FrameError, PREAMBLE_LEN, REQUEST};
    use crate::sys::frame_io::{read_frame_blocking, ReadError};

    fn read_frame(r: &mut &[u8]) -> Result<Vec<u8>, ReadError> {
        read_frame_blocking(r, HANDOFF)
    }

    #[test]
    fn round_trips() {
        let h = Handoff {
            path: "/var/lib/postgresql/15/main/pg_wal/000000010000000000000003".into(),
            name: "000000010000000000000003".into(),
        };
        let bytes = h.encode();
        assert_eq!(
            read_frame(&mut &bytes[..])
                .map(|b| Handoff::decode_body(&b).unwrap())
                .unwrap(),
            h
        );
        for reply in [
            HandoffReply::Stored,
            HandoffReply::AlreadyHad,
            HandoffReply::ShippedAhead,
            HandoffReply::Failed {
                message: "receiver refused".into(),
            },
        ] {
            let bytes = reply.encode();
            let body = read_frame(&mut &bytes[..]).unwrap();
            assert_eq!(HandoffReply::decode_body(&body).unwrap(), reply);
        }
    }

    #[test]
    fn wire_and_handoff_frames_are_not_interchangeable() {
        let h = Handoff {
            path: "/x".into(),
            name: "000000010000000000000003".into(),
        };
        let bytes = h.encode();
        let pre: &[u8; PREAMBLE_LEN] = bytes[..PREAMBLE_LEN].try_into().unwrap();
        assert!(matches!(
            REQUEST.decode_preamble(pre),
            Err(FrameError::BadMagic(_))
        ));
        let wire = crate::proto::Reply::Stored.encode();
        assert!(matches!(
            read_frame(&mut &wire[..]),
            Err(ReadError::Frame(FrameError::BadMagic(_)))
        ));
    }

    #[test]
    fn refuses_oversized_and_truncated_frames() {
        let mut bytes = HANDOFF_MAGIC.to_vec();
        bytes.extend_from_slice(&crate::proto::PROTOCOL_VERSION.to_be_bytes());
        bytes.extend_from_slice(&((MAX_HANDOFF_BYTES + 1) as u32).to_be_bytes());
        assert!(matches!(
            read_frame(&mut &bytes[..]),
            Err(ReadError::Frame(FrameError::TooLong { .. }))
        ));
        let good = HandoffReply::Stored.encode();
        assert!(matches!(
            read_frame(&mut &good[..good.len() - 1]),
            Err(ReadError::Io(_))
        ));
        assert!(matches!(read_frame(&mut &[][..]), Err(ReadError::Ended)));
    }
}
