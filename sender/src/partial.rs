//! The daemon's open-segment shipping (`partial_interval`): ask the primary how far its WAL is
//! flushed, read the segment being written from `pg_wal` up to that position and never beyond
//! (the rest of a recycled file is old WAL), and append the new bytes to the receiver's
//! `NAME.partial`. Bytes below the flush position never change, so every increment appends;
//! the receiver says how much it holds durably, and a restarted daemon or receiver resumes
//! from there.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};
use walship_common::sys::durable::open_regular;
use walship_common::wal::name::{SegNo, TimelineId};
use walship_common::wal::partial::MAX_APPEND_BYTES;
use walship_common::{Lsn, SegmentName};

/// A connection to the primary, with its segment size.
pub struct Primary {
    client: Client,
    pub seg_size: u64,
}

/// Where the primary's WAL is flushed, and on which timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    pub lsn: Lsn,
    pub timeline: TimelineId,
}

const FLUSH_SQL: &str =
    "SELECT pg_current_wal_flush_lsn()::text, pg_walfile_name(pg_current_wal_flush_lsn())";

impl Primary {
    pub async fn connect(conninfo: &str) -> Result<Primary, String> {
        let (client, connection) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_postgres::connect(conninfo, NoTls),
        )
        .await
        .map_err(|_| "the primary did not answer within 10s".to_string())?
        .map_err(|e| format!("connect to the primary ({conninfo}): {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let size: String = client
            .query_one(
                "SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'",
                &[],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| format!("read wal_segment_size: {e}"))?;
        let seg_size: u64 = size
            .parse()
            .ok()
            .filter(|s| walship_common::wal::name::is_valid_seg_size(*s))
            .ok_or_else(|| format!("wal_segment_size {size:?} is not a WAL segment size"))?;
        Ok(Primary { client, seg_size })
    }

    /// The flush position (`pg_current_wal_flush_lsn()`) and the timeline being written (from
    /// `pg_walfile_name`, which names the primary's current timeline). Fails on a server in
    /// recovery: a standby has no open segment to ship.
    pub async fn flushed(&self) -> Result<Flushed, String> {
        let row = self
            .client
            .query_one(FLUSH_SQL, &[])
            .await
            .map_err(|e| format!("ask the primary for its flush position: {e}"))?;
        let lsn: String = row.try_get(0).map_err(|e| e.to_string())?;
        let file: String = row.try_get(1).map_err(|e| e.to_string())?;
        let lsn: Lsn = lsn
            .parse()
            .map_err(|_| format!("flush position {lsn:?} is not an LSN"))?;
        let timeline = file
            .get(..8)
            .and_then(|t| u32::from_str_radix(t, 16).ok())
            .filter(|t| *t > 0)
            .map(TimelineId)
            .ok_or_else(|| format!("WAL file name {file:?} names no timeline"))?;
        Ok(Flushed { lsn, timeline })
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// The open segment at `flushed` and how many of its bytes are flushed (0 right at a
/// segment boundary: nothing of it is written yet).
pub fn open_segment(flushed: Flushed, seg_size: u64) -> (SegmentName, u64) {
    let segno = flushed.lsn.0 / seg_size;
    let name = SegmentName::from_segno(flushed.timeline, SegNo(segno), seg_size);
    (name, flushed.lsn.0 % seg_size)
}

/// The bytes `from..to` of `pg_wal/NAME`, at most [`MAX_APPEND_BYTES`] of them (blocking). A
/// link or other non-regular file under the name is refused; a file shorter than `to` (it
/// cannot be: PostgreSQL preallocates segments) is an error.
pub fn read_range(
    pgdata: &Path,
    name: &SegmentName,
    from: u64,
    to: u64,
) -> Result<Vec<u8>, String> {
    let path: PathBuf = pgdata.join("pg_wal").join(name.to_string());
    read_range_of(&path, from, to)
}

/// [`read_range`] of the file at `path` (a finished segment being shipped, `%p`).
pub fn read_range_of(path: &Path, from: u64, to: u64) -> Result<Vec<u8>, String> {
    let to = to.min(from + MAX_APPEND_BYTES);
    let mut file = open_regular(path)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} is gone", path.display()))?;
    file.seek(SeekFrom::Start(from))
        .map_err(|e| format!("seek in {}: {e}", path.display()))?;
    let mut buf = Vec::with_capacity((to - from) as usize);
    file.take(to - from)
        .read_to_end(&mut buf)
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    if (buf.len() as u64) < to - from {
        return Err(format!(
            "{} has {} bytes, fewer than the {to} flushed",
            path.display(),
            from + buf.len() as u64
        ));
    }
    Ok(buf)
}

/// The digest of the whole file at `path`, which must be `size` bytes (blocking): what a
/// [`Seal`](walship_common::proto::Seal) tells the receiver its partial must hash to.
pub fn digest_of(path: &Path, size: u64) -> Result<walship_common::proto::digest::Digest, String> {
    let mut file = open_regular(path)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} is gone", path.display()))?;
    let mut hasher = walship_common::proto::digest::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        read += n as u64;
        hasher.update(&buf[..n]);
    }
    if read != size {
        return Err(format!("{} has {read} bytes, not {size}", path.display()));
    }
    Ok(hasher.finalize())
}

/// Where an append may end: `to`, or an earlier page boundary when more than
/// [`MAX_APPEND_BYTES`] are left (a multiple of every WAL page size, so a split never ends
/// inside a page header).
pub fn append_end(from: u64, to: u64) -> u64 {
    to.min(from + MAX_APPEND_BYTES)
}

/// What one receiver last said it holds of the open segment's partial and of the one before
/// it. The archiver's copy of a finished segment often reaches the daemon after the open
/// segment has moved on (the previous one completed, the next one appended to): the seal of the
/// finished one still needs what the receiver holds of it. Only a hint: the receiver answers
/// every append and the seal with what it really holds.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Held([Option<(SegmentName, u64)>; 2]);

impl Held {
    /// The receiver holds `held` bytes of `segment`'s partial.
    pub fn note(&mut self, segment: SegmentName, held: u64) {
        match self.0 {
            [Some((s, _)), _] if s == segment => self.0[0] = Some((segment, held)),
            [_, Some((s, _))] if s == segment => self.0[1] = Some((segment, held)),
            [newest, _] => self.0 = [Some((segment, held)), newest],
        }
    }

    /// The bytes of `segment`'s partial the receiver was last known to hold.
    pub fn of(&self, segment: SegmentName) -> Option<u64> {
        self.0
            .iter()
            .flatten()
            .find(|(s, _)| *s == segment)
            .map(|(_, h)| *h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_receiver_holds_is_kept_for_the_open_segment_and_the_one_before() {
        let seg = |n: u32| SegmentName {
            timeline: TimelineId(1),
            log: 0,
            seg: n,
        };
        let mut h = Held::default();
        assert_eq!(h.of(seg(3)), None);
        h.note(seg(3), 100);
        h.note(seg(3), 16 << 20);
        h.note(seg(4), 8192);
        assert_eq!(
            h.of(seg(3)),
            Some(16 << 20),
            "the finished one is still known"
        );
        assert_eq!(h.of(seg(4)), Some(8192));
        // A late answer about the previous one updates it, not the open one.
        h.note(seg(3), 1 << 20);
        assert_eq!((h.of(seg(3)), h.of(seg(4))), (Some(1 << 20), Some(8192)));
        h.note(seg(5), 0);
        assert_eq!(h.of(seg(3)), None, "two segments back is forgotten");
        assert_eq!((h.of(seg(4)), h.of(seg(5))), (Some(8192), Some(0)));
    }

    #[test]
    fn the_open_segment_and_its_flushed_bytes() {
        let f = Flushed {
            lsn: Lsn(0x3_000_028 + (16 << 20)),
            timeline: TimelineId(2),
        };
        let (name, off) = open_segment(f, 16 << 20);
        assert_eq!(name.to_string(), "000000020000000000000004");
        assert_eq!(off, 0x28);
        assert_eq!(append_end(0, 100), 100);
        assert_eq!(append_end(0, 16 << 20), MAX_APPEND_BYTES);
    }
}
