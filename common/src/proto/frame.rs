//! Frames: a fixed 10-byte preamble (magic `WSHP`, protocol version, body length; big-endian)
//! followed by a bincode-2 body. The preamble is outside bincode so that a peer speaking another
//! protocol version is recognised and told so, instead of failing to decode.

use serde::{Deserialize, Serialize};

/// ALPN protocol id; a peer that does not offer it fails the TLS handshake.
pub const ALPN: &[u8] = b"walship/1";
/// Version carried in every preamble.
/// Version 2: the digest may follow the content as a trailer (`Request::digest` is `None`).
/// Version 3: the digest is BLAKE3 instead of SHA-256 (see [`crate::proto::digest`]).
/// Version 4: `Refusal::ForeignCluster` no longer carries the archive's system identifier;
/// refusals for history, backup and partial files checked by content.
pub const PROTOCOL_VERSION: u16 = 4;
/// First bytes of every frame.
pub const MAGIC: [u8; 4] = *b"WSHP";
/// magic (4) + version (2) + body length (4).
pub const PREAMBLE_LEN: usize = 10;
/// Largest header body accepted. A request is a WAL name (at most 64 bytes), a size and a
/// 32-byte digest: about 100 bytes. 4 KiB leaves room for later fields while a hostile peer
/// cannot make the receiver allocate more than this before it is authenticated by content.
pub const MAX_HEADER_BYTES: usize = 4096;
/// Largest reply body accepted (reasons carry a few paths and numbers).
pub const MAX_REPLY_BYTES: usize = 16 * 1024;
/// Length of the digest trailer.
pub const TRAILER_LEN: usize = crate::proto::digest::DIGEST_LEN;
/// Largest file accepted: PostgreSQL's largest WAL segment size (`--wal-segsize=1024`).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// What the sender announces before the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The WAL file name (`%f`), checked again by the receiver.
    pub name: String,
    /// Exact number of content bytes that follow.
    pub size: u64,
    /// Digest ([`crate::proto::digest`]) of the content (the plain bytes, whatever the encoding). `None`: the digest is
    /// the last [`TRAILER_LEN`] bytes of the stream, after the content, so the sender can
    /// read, hash, compress and send in one pass. `Some` lets the receiver answer "already
    /// had" before the content arrives.
    pub digest: Option<crate::proto::digest::Digest>,
    /// How the content travels.
    pub encoding: crate::proto::encoding::Encoding,
}

/// The receiver's one answer per stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Verified, fsynced and visible under its name.
    Stored,
    /// A file with identical content was already stored under that name.
    AlreadyHad,
    /// Not stored; the reason says why and what to do.
    Refused(Refusal),
}

/// Why the receiver refused a file. Displayed by the sender in PostgreSQL's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("{name:?} is not a WAL file name ({reason})")]
    BadName { name: String, reason: String },
    /// Names only the cluster the segment came from: the archive's own system identifier is
    /// what a forger would need to pass the pin, so it never goes on the wire (the receiver
    /// logs it).
    #[error("{name} comes from the cluster with system identifier {segment}, which is not the cluster this archive holds; check that archive_command on this primary points at its own standby's receiver")]
    ForeignCluster { name: String, segment: u64 },
    #[error("{name} is already archived with different content; the stored copy was kept. Two primaries may be archiving to the same receiver, or this primary was restored from an old backup: investigate before removing anything")]
    ConflictingContent { name: String },
    #[error("{name}: received content has SHA-256 {actual}, the sender announced {expected}; the file changed while it was read or was damaged in transit (PostgreSQL will retry)")]
    ChecksumMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("{name}: sender announced {announced} bytes but sent {received}")]
    SizeMismatch {
        name: String,
        announced: u64,
        received: u64,
    },
    #[error("{name} is {size} bytes, more than the largest WAL file ({max} bytes)")]
    TooLarge { name: String, size: u64, max: u64 },
    #[error("{name} is not a valid WAL segment: {reason}")]
    BadSegment { name: String, reason: String },
    #[error("receiver speaks protocol version {receiver}, sender speaks {sender}: install the same walship release on both sides")]
    UnsupportedVersion { receiver: u16, sender: u16 },
    #[error("malformed request: {reason}")]
    Malformed { reason: String },
    #[error("the standby's disk is full while storing {name} ({detail}); free space in the receiver's archive_dir (pg_archivecleanup) and PostgreSQL will retry")]
    DiskFull { name: String, detail: String },
    #[error("receiver could not store {name}: {detail}; see the receiver's log")]
    StorageFailed { name: String, detail: String },
    #[error("{name} is on timeline {timeline}, which is closed: the standby was promoted at LSN {promoted_at_lsn}{}. This primary is fenced; stop it and rebuild it as a standby of the new primary", new_timeline.map(|t| format!(" and now runs timeline {t}")).unwrap_or_default())]
    Fenced {
        name: String,
        timeline: u32,
        promoted_at_lsn: String,
        new_timeline: Option<u32>,
    },
    #[error("receiver is shutting down; PostgreSQL will retry")]
    ShuttingDown,
    #[error("{name} is not a valid timeline history file ({reason}); not stored")]
    BadHistory { name: String, reason: String },
    #[error("{name} contradicts the archive's timeline history: {reason}; not stored. A standby other than the promoted one may be archiving here: check which server runs this archive_command")]
    HistoryConflict { name: String, reason: String },
    #[error("{name} is not a valid backup history file ({reason}); not stored")]
    BadBackup { name: String, reason: String },
    #[error("{name} cannot be checked while walship-receiver promote is running (the promotion LSN is not known yet); PostgreSQL will retry")]
    PromotionInProgress { name: String },
    #[error("{name}: upload too slow, cut off after {elapsed_secs}s with {received} of {announced} bytes received; the receiver requires at least {min_rate} bytes/s per upload after a grace of {grace_secs}s (min_upload_rate): check the link, or lower min_upload_rate on the receiver (PostgreSQL will retry)")]
    TooSlow {
        name: String,
        announced: u64,
        received: u64,
        elapsed_secs: u64,
        min_rate: u64,
        grace_secs: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("peer is not speaking the walship protocol (bad magic {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("peer speaks walship protocol version {theirs}, we speak {ours}: install the same walship release on both sides")]
    Version { ours: u16, theirs: u16 },
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("undecodable frame: {0}")]
    Decode(String),
}

/// bincode settings; the limit caps what a decoder may allocate for a claimed length, so a
/// hostile length field cannot exhaust memory.
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ MAX_REPLY_BYTES }>()
}

fn encode<T: Serialize>(body: &T) -> Vec<u8> {
    encode_with(MAGIC, body)
}

/// A frame with the given magic: the wire protocol uses [`MAGIC`], the local hand-off between
/// `push` and the daemon its own, so neither can be mistaken for the other.
pub(crate) fn encode_with<T: Serialize>(magic: [u8; 4], body: &T) -> Vec<u8> {
    let payload = bincode::serde::encode_to_vec(body, config())
        .expect("serialising a plain struct into a Vec cannot fail");
    let mut out = Vec::with_capacity(PREAMBLE_LEN + payload.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Check a preamble; returns the body length, bounded by `max`.
pub fn decode_preamble(pre: &[u8; PREAMBLE_LEN], max: usize) -> Result<usize, FrameError> {
    decode_preamble_with(MAGIC, pre, max)
}

pub(crate) fn decode_preamble_with(
    expected: [u8; 4],
    pre: &[u8; PREAMBLE_LEN],
    max: usize,
) -> Result<usize, FrameError> {
    let magic: [u8; 4] = pre[..4].try_into().expect("4 bytes");
    if magic != expected {
        return Err(FrameError::BadMagic(magic));
    }
    let version = u16::from_be_bytes([pre[4], pre[5]]);
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version {
            ours: PROTOCOL_VERSION,
            theirs: version,
        });
    }
    let len = u32::from_be_bytes([pre[6], pre[7], pre[8], pre[9]]) as usize;
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    Ok(len)
}

pub(crate) fn decode_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(FrameError::Decode(format!(
            "{} trailing bytes after the frame",
            body.len() - used
        )));
    }
    Ok(value)
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }
    /// Decode a request body (after [`decode_preamble`] with [`MAX_HEADER_BYTES`]).
    pub fn decode_body(body: &[u8]) -> Result<Self, FrameError> {
        decode_body(body)
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }
    /// Decode a reply body (after [`decode_preamble`] with [`MAX_REPLY_BYTES`]).
    pub fn decode_body(body: &[u8]) -> Result<Self, FrameError> {
        decode_body(body)
    }
}

/// Decode a whole frame held in one buffer (preamble and body); used by tests and fuzzing.
pub fn decode_frame<T: for<'de> Deserialize<'de>>(buf: &[u8], max: usize) -> Result<T, FrameError> {
    if buf.len() < PREAMBLE_LEN {
        return Err(FrameError::Decode(format!(
            "{} bytes, shorter than a preamble",
            buf.len()
        )));
    }
    let pre: &[u8; PREAMBLE_LEN] = buf[..PREAMBLE_LEN].try_into().expect("checked length");
    let len = decode_preamble(pre, max)?;
    if buf.len() - PREAMBLE_LEN != len {
        return Err(FrameError::Decode(format!(
            "preamble announces {len} bytes, {} present",
            buf.len() - PREAMBLE_LEN
        )));
    }
    decode_body(&buf[PREAMBLE_LEN..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request {
            name: "000000010000000000000001".into(),
            size: 16 << 20,
            digest: Some([7; 32]),
            encoding: crate::proto::encoding::Encoding::Zstd,
        }
    }

    #[test]
    fn request_and_replies_round_trip() {
        let r = request();
        assert_eq!(
            decode_frame::<Request>(&r.encode(), MAX_HEADER_BYTES).unwrap(),
            r
        );
        let replies = [
            Reply::Stored,
            Reply::AlreadyHad,
            Reply::Refused(Refusal::ForeignCluster {
                name: "x".into(),
                segment: 1,
            }),
            Reply::Refused(Refusal::HistoryConflict {
                name: "00000002.history".into(),
                reason: "r".into(),
            }),
            Reply::Refused(Refusal::DiskFull {
                name: "x".into(),
                detail: "No space left on device".into(),
            }),
        ];
        for reply in replies {
            assert_eq!(
                decode_frame::<Reply>(&reply.encode(), MAX_REPLY_BYTES).unwrap(),
                reply
            );
        }
        assert!(request().encode().len() < 100);
    }

    #[test]
    fn rejects_bad_magic_version_length_and_garbage() {
        let mut buf = request().encode();
        buf[0] = b'X';
        assert!(matches!(
            decode_frame::<Request>(&buf, MAX_HEADER_BYTES),
            Err(FrameError::BadMagic(_))
        ));

        let mut buf = request().encode();
        buf[4..6].copy_from_slice(&1u16.to_be_bytes());
        let err = decode_frame::<Request>(&buf, MAX_HEADER_BYTES).unwrap_err();
        assert_eq!(
            err,
            FrameError::Version {
                ours: PROTOCOL_VERSION,
                theirs: 1
            }
        );
        assert!(err.to_string().contains("same walship release"));

        let mut buf = request().encode();
        buf[6..10].copy_from_slice(&(MAX_HEADER_BYTES as u32 + 1).to_be_bytes());
        assert!(matches!(
            decode_frame::<Request>(&buf, MAX_HEADER_BYTES),
            Err(FrameError::TooLong { .. })
        ));

        let mut buf = request().encode();
        buf.push(0);
        assert!(
            decode_frame::<Request>(&buf, MAX_HEADER_BYTES).is_err(),
            "length lie"
        );

        let mut garbage = MAGIC.to_vec();
        garbage.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        garbage.extend_from_slice(&8u32.to_be_bytes());
        garbage.extend_from_slice(&[0xff; 8]);
        assert!(matches!(
            decode_frame::<Request>(&garbage, MAX_HEADER_BYTES),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn a_huge_announced_string_does_not_allocate() {
        // A body claiming a 2^60-byte name must fail to decode, not allocate.
        let mut body = vec![253u8];
        body.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(Request::decode_body(&body).is_err());
    }
}
