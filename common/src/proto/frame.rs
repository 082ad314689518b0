//! Frames: a fixed 10-byte preamble (magic `WSHP`, protocol version, body length; big-endian)
//! followed by a bincode-2 body. The preamble is outside bincode so that a peer speaking another
//! protocol version is recognised and told so, instead of failing to decode.
//!
//! Version negotiation. A receiver reading a request whose preamble carries another version
//! does not read the body: it answers [`Refusal::UnsupportedVersion`] (see [`Reply::encode`]),
//! framed in the *sender's* version so that the sender's own preamble check passes, and worded
//! for that sender: a sender of protocol 1 to 3 gets it as [`Refusal::Malformed`] with the whole
//! advice as its reason, because its own text for `UnsupportedVersion` only says "install the
//! same release". That works because `Reply::Refused` (variant 2), `UnsupportedVersion`
//! (variant 7, two u16) and `Malformed` (variant 8, one string) have had the same encoding
//! since protocol 1; they must keep it (pinned by a test). A sender reading a reply whose
//! preamble carries another version knows the receiver speaks that version (a receiver of this
//! release or later would have framed the answer in the sender's own version) and explains it
//! with [`Refusal::UnsupportedVersion`] without decoding the body.

use serde::{Deserialize, Serialize};

use crate::proto::digest::ALGORITHM as DIGEST;
use crate::proto::encoding::Encoding;

/// ALPN protocol id; a peer that does not offer it fails the TLS handshake. It names the
/// framing (a versioned preamble, then bincode), not the protocol version: every release since
/// protocol 1 offers `walship/1`, so releases of different protocol versions still connect and
/// tell each other which one to upgrade, in the preamble.
pub const ALPN: &[u8] = b"walship/1";
/// Version carried in every preamble.
/// Version 2: the digest may follow the content as a trailer (`Request::digest` is `None`).
/// Version 3: the digest is BLAKE3 instead of SHA-256 (see [`crate::proto::digest`]).
/// Version 4: `Refusal::ForeignCluster` no longer carries the archive's system identifier;
/// refusals for history, backup and partial files checked by content; the digest is always the
/// trailer (`Request` has no digest field); a request of another version is answered in the
/// sender's version with advice on which side to upgrade.
/// Version 5: `Request::dropped`, the segments the sender's pg_wal valve dropped and the
/// receiver has not acknowledged yet (recorded by the receiver before it answers);
/// `Request::append_at` (appends to the open segment's `NAME.partial`) and
/// `Reply::Partial` (how many bytes of it the receiver holds durably);
/// `Refusal::ClientNotAllowed`, for a client certificate no `[[clusters]]` table of the
/// receiver allows.
/// Also in version 5: a request is a [`WireRequest`]: a WAL file as before, or a step of a
/// base backup ([`BackupRequest`], `walship-sender basebackup`); refusals for base backups;
/// [`WireRequest::Seal`] (a finished segment made from the `NAME.partial` the receiver holds
/// whole, no content on the wire). A receiver built before it answers a seal `Malformed`, and
/// the sender then ships the segment as usual.
pub const PROTOCOL_VERSION: u16 = 5;
/// The newest protocol whose senders print [`Refusal::UnsupportedVersion`] only as "install the
/// same release": they are told which side to upgrade through [`Refusal::Malformed`] instead.
const LAST_UNDIRECTED_VERSION: u16 = 3;
/// This release, for texts that tell an operator what to install.
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");
/// What `--version` prints after the program's name: the release and the protocol it speaks,
/// so that an operator comparing the two hosts sees at once whether they can talk.
pub const VERSION_LINE: &str = concat!(env!("CARGO_PKG_VERSION"), " (protocol 5)");
/// First bytes of every frame.
pub const MAGIC: [u8; 4] = *b"WSHP";
/// magic (4) + version (2) + body length (4).
pub const PREAMBLE_LEN: usize = 10;
/// Largest header body accepted. A request is a WAL name (at most 64 bytes), a size and an
/// encoding: under 100 bytes. 4 KiB leaves room for later fields while a hostile peer cannot
/// make the receiver allocate more than this before it is authenticated by content.
pub const MAX_HEADER_BYTES: usize = 4096;
/// Largest reply body accepted (reasons carry a few paths and numbers).
pub const MAX_REPLY_BYTES: usize = 16 * 1024;
/// Length of the digest trailer.
pub const TRAILER_LEN: usize = crate::proto::digest::DIGEST_LEN;
/// Largest file accepted: PostgreSQL's largest WAL segment size (`--wal-segsize=1024`).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Application close codes on a walship connection (QUIC CONNECTION_CLOSE).
/// The sender is done with the connection (or the connection was dropped).
pub const CLOSE_DONE: u32 = 0;
/// The receiver is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 1;
/// The receiver closed an idle connection because another one waited for a sending slot.
pub const CLOSE_EVICTED: u32 = 2;

/// What the receiver closing a connection with `code` means, in words for the sender's log.
pub fn close_meaning(code: u64) -> String {
    match code {
        0 => "the receiver closed it".into(),
        1 => "the receiver is shutting down".into(),
        2 => "the receiver closed it as idle because another sender waited for a sending slot (max_connections)".into(),
        other => format!("the receiver closed it with code {other}"),
    }
}

/// Which frames a reader expects: their magic and the largest body it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameKind {
    pub magic: [u8; 4],
    pub max: usize,
}

/// A [`Request`] frame, as the receiver reads it.
pub const REQUEST: FrameKind = FrameKind {
    magic: MAGIC,
    max: MAX_HEADER_BYTES,
};
/// A [`Reply`] frame, as the sender reads it.
pub const REPLY: FrameKind = FrameKind {
    magic: MAGIC,
    max: MAX_REPLY_BYTES,
};

impl FrameKind {
    /// Check a preamble: magic, then version (so that a peer of another version is told so
    /// whatever its lengths), then length; returns the body length.
    pub fn decode_preamble(&self, pre: &[u8; PREAMBLE_LEN]) -> Result<usize, FrameError> {
        decode_preamble_with(self.magic, pre, self.max)
    }
}

/// What the sender announces before the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The WAL file name (`%f`), checked again by the receiver.
    pub name: String,
    /// Exact number of plain content bytes. The wire bytes follow in `encoding`, then the
    /// digest ([`crate::proto::digest`]) of the plain bytes as the last [`TRAILER_LEN`] bytes of
    /// the stream, so the sender can read, hash, compress and send in one pass.
    pub size: u64,
    /// How the content travels.
    pub encoding: Encoding,
    /// Segments the sender's pg_wal valve (`max_backlog`) dropped without shipping, not yet
    /// acknowledged (at most [`crate::valve::MAX_REPORTED`]): the receiver records them in
    /// its gap record before it answers, so a "stored" or "already had" reply acknowledges
    /// them too. Empty almost always.
    pub dropped: Vec<String>,
    /// `Some(offset)`: the content is the next bytes of the open segment `name` (a
    /// `NAME.partial`), to be appended at `offset` to what the receiver holds of it. The
    /// receiver appends only when it holds exactly `offset` bytes, and answers
    /// [`Reply::Partial`] with what it holds either way.
    pub append_at: Option<u64>,
}

/// What a sender asks on one stream (protocol 5 and later): a WAL file, or one step of a base
/// backup. [`Request::encode`] frames a WAL request as `WireRequest::Wal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireRequest {
    Wal(Request),
    Backup(BackupRequest),
    Seal(Seal),
}

/// "The segment `name` is finished; the `NAME.partial` you hold is all of it." Sent by the
/// sender daemon shipping the open segment (`partial_interval`) once the receiver holds the
/// whole segment as its partial: the receiver checks that partial as it would check the
/// uploaded segment (size, every page header, cluster, timeline, fence) against `digest`, then
/// makes it the finished segment by renaming it, without the 16 MiB crossing the link again.
/// Answered `Stored` when done; anything else (`Partial` with what it holds, a refusal) means
/// "not sealed", and the sender ships the segment as usual, which stays the authority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The finished segment's name (`%f`, no `.partial`).
    pub name: String,
    /// Its size in bytes (the segment size).
    pub size: u64,
    /// The digest ([`crate::proto::digest`]) of the whole segment as the sender reads it.
    pub digest: crate::proto::digest::Digest,
}

/// One step of a base backup (`walship-sender basebackup`), each on its own stream and each
/// answered with one [`Reply`]: `Stored` when done and durable, or a refusal. `backup` is the
/// id chosen by the sender at `Begin`; the receiver refuses steps of any other backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupRequest {
    /// Check the receiver's `pgdata` (absent, empty or an unfinished backup; a finished
    /// standby only with `force`), pin the archive to `system_id`, write the marker.
    Begin {
        backup: u64,
        label: String,
        system_id: u64,
        force: bool,
    },
    /// Create a directory (parents first); `mode` as on the primary (permission bits).
    Dir {
        backup: u64,
        path: String,
        mode: u32,
    },
    /// A file: `size` plain bytes follow in `encoding`, then the digest trailer, as for WAL.
    File {
        backup: u64,
        path: String,
        size: u64,
        mode: u32,
        encoding: Encoding,
    },
    /// Every file was sent: check the counts and that `end_segment` (the WAL segment holding
    /// the backup's end, archived by `pg_backup_stop`) is stored, write `backup_label` (from
    /// `pg_backup_stop`), `standby.signal` and the restore settings, put `global/pg_control`
    /// in place and remove the marker.
    End {
        backup: u64,
        files: u64,
        bytes: u64,
        end_segment: String,
        backup_label: String,
    },
}

impl WireRequest {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }
    /// Decode a request body (after [`REQUEST`]'s preamble check).
    pub fn decode_body(body: &[u8]) -> Result<Self, FrameError> {
        decode_body(body)
    }
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
    /// To an append ([`Request::append_at`]): the receiver now holds `bytes` bytes of the
    /// partial durably (the append's end if it was taken; otherwise where to append from).
    Partial { bytes: u64 },
    /// A base backup's `End` is done: the standby in `pgdata` (the receiver's path) is ready to
    /// start (protocol 5).
    Ready { pgdata: String },
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
    #[error("{name}: received content has {DIGEST} digest {actual}, the sender announced {expected}; the file changed while it was read or was damaged in transit (PostgreSQL will retry)")]
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
    /// The two ends speak different protocol versions; the text says which side to upgrade.
    /// Its encoding must never change (see the module doc).
    #[error("{}", version_advice(*receiver, *sender))]
    UnsupportedVersion { receiver: u16, sender: u16 },
    #[error("malformed request: {reason}")]
    Malformed { reason: String },
    #[error("the standby's disk is full while storing {name} ({detail}); free space in the receiver's archive_dir (pg_archivecleanup) and PostgreSQL will retry")]
    DiskFull { name: String, detail: String },
    #[error("receiver could not store {name}: {detail}; see the receiver's log")]
    StorageFailed { name: String, detail: String },
    #[error("{name} is on timeline {timeline}, which is closed: the standby was promoted{}{}. This primary is fenced; stop it and rebuild it as a standby of the new primary", promoted_at(promoted_at_lsn), new_timeline.map(|t| format!(" and now runs timeline {t}")).unwrap_or_default())]
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
    /// The receiver serves several clusters and no `[[clusters]]` table lists this client
    /// certificate in `allowed_clients`; `subject` is the certificate's subject, as the receiver
    /// read it. Nothing was read or written.
    #[error("the receiver allows client certificate {subject} to write to none of its clusters; nothing was stored. Add its name to allowed_clients of this primary's [[clusters]] table in receiver.toml (and restart serve), or give this sender the certificate issued for its cluster (walship-receiver certs --client-name)")]
    ClientNotAllowed { subject: String },
    #[error("the receiver has no `pgdata` in its config: set pgdata in receiver.toml to the standby's data directory (absent or empty) and restart walship-receiver serve")]
    NoTarget,
    #[error("the standby's data directory {path} is not empty and holds no unfinished walship backup; nothing there was touched: empty it, or point pgdata in receiver.toml elsewhere")]
    TargetNotEmpty { path: String },
    #[error("the standby's data directory {path} already holds a PostgreSQL cluster (a finished standby); nothing there was touched: rerun basebackup with --force to replace it")]
    StandbyExists { path: String },
    #[error("the standby's data directory {path} has a postmaster.pid: PostgreSQL may be running there; nothing was touched: stop it first (pg_ctl -D {path} stop)")]
    TargetRunning { path: String },
    #[error("{path:?} is not an acceptable path in a base backup ({reason})")]
    BadPath { path: String, reason: String },
    #[error("the receiver has no base backup in progress with this id (it restarted, or another basebackup replaced this one): run basebackup again")]
    BackupGone,
    #[error("the base backup is incomplete ({reason}); run basebackup again")]
    BackupIncomplete { reason: String },
    #[error("the backup's end segment {segment} is not in this receiver's archive: archive_command on the primary must be walship-sender push to this receiver; fix it and run basebackup again")]
    EndNotArchived { segment: String },
}

/// Where the standby was promoted, for the fenced refusal: an LSN, or, while `promote` runs and
/// does not know it yet, that the promotion is in progress.
fn promoted_at(lsn: &str) -> String {
    if lsn.parse::<crate::Lsn>().is_ok() {
        format!(" at LSN {lsn}")
    } else {
        " (the promotion is still in progress)".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("peer is not speaking the walship protocol (bad magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// On the wire both ends turn this into [`Refusal::UnsupportedVersion`]; its own text is
    /// what the local hand-off between `push` and the daemon reports.
    #[error("peer speaks walship protocol version {theirs}, this program {ours}: run the same walship release on both ends (after an upgrade, restart walship-sender daemon)")]
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
    encode_versioned(magic, PROTOCOL_VERSION, body)
}

fn encode_versioned<T: Serialize>(magic: [u8; 4], version: u16, body: &T) -> Vec<u8> {
    let payload = bincode::serde::encode_to_vec(body, config())
        .expect("serialising a plain struct into a Vec cannot fail");
    let mut out = Vec::with_capacity(PREAMBLE_LEN + payload.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The text of [`Refusal::UnsupportedVersion`]: which side is older and what to install.
fn version_advice(receiver: u16, sender: u16) -> String {
    let both = format!(
        "walship-sender speaks protocol version {sender}, walship-receiver protocol version {receiver}"
    );
    match sender.cmp(&receiver) {
        std::cmp::Ordering::Less => format!(
            "{both}: upgrade walship-sender on the primary to the receiver's release (`walship-receiver --version` prints it) (PostgreSQL will retry)"
        ),
        std::cmp::Ordering::Greater => format!(
            "{both}: upgrade walship-receiver on the standby to the sender's release (`walship-sender --version` prints it) (PostgreSQL will retry)"
        ),
        std::cmp::Ordering::Equal => format!("{both}: no upgrade should be needed"),
    }
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
    /// The request frame of a WAL file (a [`WireRequest::Wal`]).
    pub fn encode(&self) -> Vec<u8> {
        encode(&WireRequest::Wal(self.clone()))
    }
    /// Decode a WAL request body (after [`REQUEST`]'s preamble check).
    pub fn decode_body(body: &[u8]) -> Result<Self, FrameError> {
        match decode_body(body)? {
            WireRequest::Wal(r) => Ok(r),
            WireRequest::Backup(_) | WireRequest::Seal(_) => Err(FrameError::Decode(
                "a base backup or seal request where a WAL file was expected".into(),
            )),
        }
    }
}

impl Reply {
    /// The reply frame. A version refusal is framed in the sender's version, so that the sender
    /// can read it, and a sender of protocol 1 to 3 gets its advice as a malformed-request
    /// reason, the one free text it can print (see the module doc).
    pub fn encode(&self) -> Vec<u8> {
        let Reply::Refused(r @ Refusal::UnsupportedVersion { sender, .. }) = self else {
            return encode(self);
        };
        if *sender > LAST_UNDIRECTED_VERSION {
            return encode_versioned(MAGIC, *sender, self);
        }
        let reason = format!("{r}; walship-receiver here is walship {RELEASE}");
        encode_versioned(
            MAGIC,
            *sender,
            &Reply::Refused(Refusal::Malformed { reason }),
        )
    }
    /// Decode a reply body (after [`REPLY`]'s preamble check).
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
            encoding: Encoding::Zstd,
            dropped: Vec::new(),
            append_at: None,
        }
    }

    #[test]
    fn request_and_replies_round_trip() {
        let r = request();
        assert_eq!(
            decode_frame::<WireRequest>(&r.encode(), MAX_HEADER_BYTES).unwrap(),
            WireRequest::Wal(r.clone())
        );
        let step = WireRequest::Backup(BackupRequest::File {
            backup: 7,
            path: "base/1/1259".into(),
            size: 8192,
            mode: 0o600,
            encoding: Encoding::Zstd,
        });
        assert_eq!(
            decode_frame::<WireRequest>(&step.encode(), MAX_HEADER_BYTES).unwrap(),
            step
        );
        // A base backup step is never taken for a WAL file.
        assert!(Request::decode_body(&step.encode()[PREAMBLE_LEN..]).is_err());
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
            decode_frame::<WireRequest>(&buf, MAX_HEADER_BYTES),
            Err(FrameError::BadMagic(_))
        ));

        let mut buf = request().encode();
        buf[4..6].copy_from_slice(&1u16.to_be_bytes());
        let err = decode_frame::<WireRequest>(&buf, MAX_HEADER_BYTES).unwrap_err();
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
            decode_frame::<WireRequest>(&buf, MAX_HEADER_BYTES),
            Err(FrameError::TooLong { .. })
        ));

        let mut buf = request().encode();
        buf.push(0);
        assert!(
            decode_frame::<WireRequest>(&buf, MAX_HEADER_BYTES).is_err(),
            "length lie"
        );

        let mut garbage = MAGIC.to_vec();
        garbage.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        garbage.extend_from_slice(&8u32.to_be_bytes());
        garbage.extend_from_slice(&[0xff; 8]);
        assert!(matches!(
            decode_frame::<WireRequest>(&garbage, MAX_HEADER_BYTES),
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

    #[test]
    fn the_version_line_names_the_protocol_spoken() {
        assert_eq!(
            VERSION_LINE,
            format!("{RELEASE} (protocol {PROTOCOL_VERSION})")
        );
    }

    /// What a sender of protocol 1 to 3 decodes from a version refusal: its preamble check
    /// passes (same version), and the body is `Reply::Refused(Refusal::Malformed { reason })`
    /// in the encoding those releases share with this one: variant 2, variant 8, a string.
    #[test]
    fn an_old_sender_reads_the_version_refusal_as_one_clear_line() {
        let bytes = Reply::Refused(Refusal::UnsupportedVersion {
            receiver: PROTOCOL_VERSION,
            sender: 3,
        })
        .encode();
        assert_eq!(&bytes[..4], b"WSHP");
        assert_eq!(u16::from_be_bytes([bytes[4], bytes[5]]), 3);
        let body = &bytes[PREAMBLE_LEN..];
        assert_eq!(&body[..2], &[2, 8], "Reply::Refused, Refusal::Malformed");
        let Reply::Refused(Refusal::Malformed { reason }) = Reply::decode_body(body).unwrap()
        else {
            panic!("not a malformed-request refusal")
        };
        let ours = format!("protocol version {PROTOCOL_VERSION}");
        for needle in [
            "protocol version 3",
            ours.as_str(),
            "upgrade walship-sender on the primary",
            RELEASE,
        ] {
            assert!(reason.contains(needle), "{needle:?} missing: {reason}");
        }
        assert!(!reason.contains('\n'), "{reason}");
    }

    /// A newer sender (protocol 4 and later) gets the typed refusal in its own version, and the
    /// encoding of `UnsupportedVersion` is the one it was in protocol 1: variants 2 and 7, two
    /// u16 (varint).
    #[test]
    fn a_newer_sender_gets_the_typed_refusal_in_its_own_version() {
        let newer = PROTOCOL_VERSION + 1;
        let refusal = Refusal::UnsupportedVersion {
            receiver: PROTOCOL_VERSION,
            sender: newer,
        };
        let bytes = Reply::Refused(refusal.clone()).encode();
        assert_eq!(u16::from_be_bytes([bytes[4], bytes[5]]), newer);
        assert_eq!(
            &bytes[PREAMBLE_LEN..],
            &[2, 7, PROTOCOL_VERSION as u8, newer as u8]
        );
        // A sender of protocol 4 (before ClientNotAllowed) gets it in its own version too.
        let bytes = Reply::Refused(Refusal::UnsupportedVersion {
            receiver: PROTOCOL_VERSION,
            sender: 4,
        })
        .encode();
        assert_eq!(u16::from_be_bytes([bytes[4], bytes[5]]), 4);
        assert_eq!(&bytes[PREAMBLE_LEN..], &[2, 7, PROTOCOL_VERSION as u8, 4]);
        let text = refusal.to_string();
        assert!(
            text.contains("upgrade walship-receiver on the standby"),
            "{text}"
        );
        let older = Refusal::UnsupportedVersion {
            receiver: newer,
            sender: PROTOCOL_VERSION,
        };
        assert!(older
            .to_string()
            .contains("upgrade walship-sender on the primary"));
        // Every other reply is framed in our own version.
        let bytes = Reply::Stored.encode();
        assert_eq!(u16::from_be_bytes([bytes[4], bytes[5]]), PROTOCOL_VERSION);
    }

    /// Each refusal's text names what it is about: the file, the facts the sender needs and the
    /// digest algorithm by its one constant, so that a change cannot leave a stale name behind.
    #[test]
    fn every_refusal_names_the_file_and_its_facts() {
        let mut table = content_refusals();
        table.extend(other_refusals());
        check_refusal_texts(&table);
    }

    /// A refusal and the texts its message must contain.
    type Row = (Refusal, Vec<&'static str>);
    const N: &str = "000000010000000000000003";

    /// Refusals about a file's name, size and content.
    fn content_refusals() -> Vec<Row> {
        let s = || N.to_string();
        vec![
            (
                Refusal::BadName {
                    name: "a/b".into(),
                    reason: "has /".into(),
                },
                vec!["a/b", "has /"],
            ),
            (
                Refusal::ForeignCluster {
                    name: s(),
                    segment: 7301,
                },
                vec![N, "7301"],
            ),
            (
                Refusal::ConflictingContent { name: s() },
                vec![N, "different content"],
            ),
            (
                Refusal::ChecksumMismatch {
                    name: s(),
                    expected: "ab12".into(),
                    actual: "cd34".into(),
                },
                vec![N, "ab12", "cd34", crate::proto::digest::ALGORITHM],
            ),
            (
                Refusal::SizeMismatch {
                    name: s(),
                    announced: 16,
                    received: 9,
                },
                vec![N, "16", "9"],
            ),
            (
                Refusal::TooLarge {
                    name: s(),
                    size: 2048,
                    max: 1024,
                },
                vec![N, "2048", "1024"],
            ),
            (
                Refusal::BadSegment {
                    name: s(),
                    reason: "page address".into(),
                },
                vec![N, "page address"],
            ),
            (
                Refusal::UnsupportedVersion {
                    receiver: 4,
                    sender: 3,
                },
                vec!["3", "4", "upgrade"],
            ),
        ]
    }

    /// Refusals about the request, the archive, the fence and the pace.
    fn other_refusals() -> Vec<Row> {
        let s = || N.to_string();
        vec![
            (
                Refusal::Malformed {
                    reason: "bad magic".into(),
                },
                vec!["bad magic"],
            ),
            (
                Refusal::DiskFull {
                    name: s(),
                    detail: "ENOSPC".into(),
                },
                vec![N, "ENOSPC", "archive_dir"],
            ),
            (
                Refusal::StorageFailed {
                    name: s(),
                    detail: "EIO".into(),
                },
                vec![N, "EIO", "log"],
            ),
            (
                Refusal::Fenced {
                    name: s(),
                    timeline: 1,
                    promoted_at_lsn: "0/3000028".into(),
                    new_timeline: Some(2),
                },
                vec![N, "timeline 1", "0/3000028", "timeline 2"],
            ),
            (Refusal::ShuttingDown, vec!["shutting down", "retry"]),
            (
                Refusal::BadHistory {
                    name: "00000002.history".into(),
                    reason: "r1".into(),
                },
                vec!["00000002.history", "r1"],
            ),
            (
                Refusal::HistoryConflict {
                    name: "00000002.history".into(),
                    reason: "r2".into(),
                },
                vec!["00000002.history", "r2"],
            ),
            (
                Refusal::BadBackup {
                    name: "x.backup".into(),
                    reason: "r3".into(),
                },
                vec!["x.backup", "r3"],
            ),
            (
                Refusal::PromotionInProgress { name: s() },
                vec![N, "promote", "retry"],
            ),
            (
                Refusal::TooSlow {
                    name: s(),
                    announced: 100,
                    received: 7,
                    elapsed_secs: 31,
                    min_rate: 65536,
                    grace_secs: 30,
                },
                vec![N, "100", " 7 ", "31s", "65536", "30s", "min_upload_rate"],
            ),
            (
                Refusal::ClientNotAllowed {
                    subject: "CN=walship-sender".into(),
                },
                vec!["CN=walship-sender", "allowed_clients", "--client-name"],
            ),
            (Refusal::NoTarget, vec!["pgdata", "receiver.toml"]),
            (
                Refusal::TargetNotEmpty { path: "/d".into() },
                vec!["/d", "not empty", "nothing"],
            ),
            (
                Refusal::StandbyExists { path: "/d".into() },
                vec!["/d", "--force", "nothing"],
            ),
            (
                Refusal::TargetRunning { path: "/d".into() },
                vec!["/d", "postmaster.pid", "stop"],
            ),
            (
                Refusal::BadPath {
                    path: "../x".into(),
                    reason: "r4".into(),
                },
                vec!["../x", "r4"],
            ),
            (Refusal::BackupGone, vec!["run basebackup again"]),
            (
                Refusal::BackupIncomplete {
                    reason: "r5".into(),
                },
                vec!["r5", "again"],
            ),
            (
                Refusal::EndNotArchived { segment: s() },
                vec![N, "archive_command"],
            ),
        ]
    }

    fn check_refusal_texts(table: &[Row]) {
        for (refusal, needles) in table {
            let text = refusal.to_string();
            for needle in needles {
                assert!(
                    text.contains(needle),
                    "{needle:?} missing from {refusal:?}: {text}"
                );
            }
            assert!(!text.contains('\n'), "{text}");
            // No digest but ours is ever named.
            for other in ["SHA-256", "SHA256", "sha-256", "BLAKE3", "blake3"] {
                if other != crate::proto::digest::ALGORITHM {
                    assert!(!text.contains(other), "{other} in {text}");
                }
            }
        }
        // Every variant has a row: a new variant fails to compile in `variant_count` until it
        // is counted there, and then this count until it has a row.
        let mut seen: Vec<std::mem::Discriminant<Refusal>> = table
            .iter()
            .map(|(r, _)| std::mem::discriminant(r))
            .collect();
        seen.dedup();
        assert_eq!(seen.len(), variant_count(&table[0].0));
    }

    /// The number of `Refusal` variants (the match has no wildcard on purpose).
    fn variant_count(r: &Refusal) -> usize {
        use Refusal::*;
        match r {
            BadName { .. } | ForeignCluster { .. } | ConflictingContent { .. } => 27,
            ChecksumMismatch { .. } | SizeMismatch { .. } | TooLarge { .. } => 27,
            BadSegment { .. } | UnsupportedVersion { .. } | Malformed { .. } => 27,
            DiskFull { .. } | StorageFailed { .. } | Fenced { .. } | ShuttingDown => 27,
            BadHistory { .. } | HistoryConflict { .. } | BadBackup { .. } => 27,
            PromotionInProgress { .. } | TooSlow { .. } | ClientNotAllowed { .. } => 27,
            NoTarget | TargetNotEmpty { .. } | StandbyExists { .. } => 27,
            TargetRunning { .. } | BadPath { .. } | BackupGone => 27,
            BackupIncomplete { .. } | EndNotArchived { .. } => 27,
        }
    }

    #[test]
    fn a_fenced_refusal_says_where_or_that_the_promotion_is_still_running() {
        let fenced = |lsn: &str| {
            Refusal::Fenced {
                name: "000000010000000000000009".into(),
                timeline: 1,
                promoted_at_lsn: lsn.into(),
                new_timeline: None,
            }
            .to_string()
        };
        assert!(fenced("0/5000028").contains("promoted at LSN 0/5000028."));
        let running = fenced("promotion in progress");
        assert!(
            running.contains("promoted (the promotion is still in progress)."),
            "{running}"
        );
        assert!(!running.contains("LSN promotion"), "{running}");
    }
}
