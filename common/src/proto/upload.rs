//! The receiver's pure state machine for one incoming file: given the request header and the
//! facts about the archive, decide as early as possible whether the bytes may be stored, track
//! length and digest as chunks arrive, and give a verdict at the end. No I/O here: the driver
//! writes the chunks to a temp file and publishes it only with a [`Verified`] in hand.

use crate::pg_control::SystemId;
use crate::proto::digest::{Digest, Hasher};
use crate::proto::frame::{Refusal, Request, MAX_FILE_BYTES};
use crate::state::Fence;
use crate::wal::header::{LongPageHeader, LONG_PAGE_HEADER_LEN};
use crate::wal::name::WalFileName;

/// What the receiver knows about its archive when an upload starts.
#[derive(Debug, Clone, Default)]
pub struct ArchiveFacts {
    /// The cluster this archive belongs to, when known (standby's pg_control or the pin file).
    pub cluster: Option<SystemId>,
    /// Set once the standby was promoted: old-timeline segments are refused.
    pub fence: Option<Fence>,
}

/// A file that arrived whole, with the announced size and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub name: WalFileName,
    pub size: u64,
    pub digest: Digest,
    /// System identifier from the page header, for files that carry one (segments, partials).
    pub system_id: Option<SystemId>,
}

#[derive(Debug)]
pub struct Upload {
    name: WalFileName,
    announced: u64,
    /// From the header, or set from the trailer before [`Upload::finish`].
    expected: Option<Digest>,
    received: u64,
    hasher: Hasher,
    /// First bytes, kept until the long page header can be decoded.
    head: Vec<u8>,
    cluster: Option<SystemId>,
    system_id: Option<SystemId>,
}

impl Upload {
    /// Check the request before any content arrives.
    pub fn begin(request: &Request, facts: &ArchiveFacts) -> Result<Self, Refusal> {
        let name: WalFileName =
            request
                .name
                .parse()
                .map_err(|e: crate::wal::name::NameError| Refusal::BadName {
                    name: request.name.clone(),
                    reason: e.to_string(),
                })?;
        if let Some(fence) = &facts.fence {
            check_fence(fence, &name)?;
        }
        if request.size > MAX_FILE_BYTES {
            return Err(Refusal::TooLarge {
                name: request.name.clone(),
                size: request.size,
                max: MAX_FILE_BYTES,
            });
        }
        Ok(Upload {
            name,
            announced: request.size,
            expected: request.digest,
            received: 0,
            hasher: Hasher::new(),
            head: Vec::with_capacity(LONG_PAGE_HEADER_LEN),
            cluster: facts.cluster,
            system_id: None,
        })
    }

    pub fn name(&self) -> &WalFileName {
        &self.name
    }

    /// Announced size in bytes.
    pub fn size(&self) -> u64 {
        self.announced
    }

    /// Account for the next chunk. Refuses as soon as the content is known to be unacceptable
    /// (too many bytes, a page header that contradicts the name or belongs to another cluster).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Refusal> {
        let received = self.received + chunk.len() as u64;
        if received > self.announced {
            return Err(Refusal::SizeMismatch {
                name: self.name.to_string(),
                announced: self.announced,
                received,
            });
        }
        self.received = received;
        self.hasher.update(chunk);
        if self.name.segment_bytes().is_some() && self.head.len() < LONG_PAGE_HEADER_LEN {
            let take = (LONG_PAGE_HEADER_LEN - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
            if self.head.len() == LONG_PAGE_HEADER_LEN {
                self.check_header()?;
            }
        }
        Ok(())
    }

    /// Whether the digest comes as a trailer after the content.
    pub fn expects_trailer(&self) -> bool {
        self.expected.is_none()
    }

    /// The digest read from the trailer (when the header carried none).
    pub fn set_trailer(&mut self, digest: Digest) {
        if self.expected.is_none() {
            self.expected = Some(digest);
        }
    }

    /// The verdict once the sender has finished its side.
    pub fn finish(self) -> Result<Verified, Refusal> {
        let name = self.name.to_string();
        let Some(expected) = self.expected else {
            return Err(Refusal::SizeMismatch {
                name,
                announced: self.announced + crate::proto::frame::TRAILER_LEN as u64,
                received: self.received,
            });
        };
        if self.received != self.announced {
            return Err(Refusal::SizeMismatch {
                name,
                announced: self.announced,
                received: self.received,
            });
        }
        if self.name.segment_bytes().is_some() && self.system_id.is_none() {
            return Err(Refusal::BadSegment {
                name,
                reason: format!(
                    "{} bytes, too short to hold a WAL page header",
                    self.received
                ),
            });
        }
        let actual = self.hasher.finalize();
        if actual != expected {
            return Err(Refusal::ChecksumMismatch {
                name,
                expected: hex::encode(expected),
                actual: hex::encode(actual),
            });
        }
        Ok(Verified {
            name: self.name,
            size: self.received,
            digest: actual,
            system_id: self.system_id,
        })
    }

    fn check_header(&mut self) -> Result<(), Refusal> {
        let segment = *self
            .name
            .segment_bytes()
            .expect("only called for segment files");
        let bad = |reason: String| Refusal::BadSegment {
            name: self.name.to_string(),
            reason,
        };
        let header = LongPageHeader::decode(&self.head).map_err(|e| bad(e.to_string()))?;
        header
            .check_against(&segment, self.announced)
            .map_err(|e| bad(e.to_string()))?;
        if let Some(cluster) = self.cluster {
            if header.system_id != cluster {
                return Err(Refusal::ForeignCluster {
                    name: self.name.to_string(),
                    segment: header.system_id.0,
                    archive: cluster.0,
                });
            }
        }
        self.system_id = Some(header.system_id);
        Ok(())
    }
}

/// Splits a stream into its content and the [`TRAILER_LEN`](crate::proto::frame::TRAILER_LEN)
/// bytes at its very end, without knowing where the end is until the stream finishes: the last
/// bytes seen are held back until more arrive.
#[derive(Debug, Default)]
pub struct TrailerSplit {
    enabled: bool,
    held: Vec<u8>,
}

impl TrailerSplit {
    /// `enabled`: the stream ends with a trailer (else everything is content).
    pub fn new(enabled: bool) -> Self {
        TrailerSplit {
            enabled,
            held: Vec::new(),
        }
    }

    /// The content in `chunk` and the bytes held back before it, in order: first the returned
    /// vector (at most a trailer's length), then the returned slice of `chunk`.
    pub fn split<'a>(&mut self, chunk: &'a [u8]) -> (Vec<u8>, &'a [u8]) {
        const N: usize = crate::proto::frame::TRAILER_LEN;
        if !self.enabled {
            return (Vec::new(), chunk);
        }
        if chunk.len() >= N {
            let (content, tail) = chunk.split_at(chunk.len() - N);
            let released = std::mem::replace(&mut self.held, tail.to_vec());
            (released, content)
        } else {
            let mut all = std::mem::take(&mut self.held);
            all.extend_from_slice(chunk);
            self.held = all.split_off(all.len().saturating_sub(N));
            (all, &[])
        }
    }

    /// The trailer, once the stream ended: `None` when it was shorter than a trailer.
    pub fn trailer(self) -> Option<[u8; 32]> {
        self.held.try_into().ok()
    }
}

/// Refuse `name` when the fence closes its timeline.
pub fn check_fence(fence: &Fence, name: &WalFileName) -> Result<(), Refusal> {
    if fence.admits(name) {
        return Ok(());
    }
    Err(Refusal::Fenced {
        name: name.to_string(),
        timeline: fence.timeline,
        promoted_at_lsn: fence.promoted_at_lsn.clone(),
        new_timeline: fence.new_timeline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::digest::digest;
    use crate::wal::name::{SegNo, SegmentName, TimelineId};

    const SEG: u64 = 1 << 20; // 1 MiB segments keep tests small

    /// A minimal segment: long page header for `segno` on timeline 1, zeros after it.
    fn segment(segno: u64, sysid: u64) -> (String, Vec<u8>) {
        let name = SegmentName::from_segno(TimelineId(1), SegNo(segno), SEG);
        let mut body = vec![0u8; SEG as usize];
        body[0..2].copy_from_slice(&0xD110u16.to_le_bytes()); // PostgreSQL 15 magic
        body[2..4].copy_from_slice(&0x0002u16.to_le_bytes()); // XLP_LONG_HEADER
        body[4..8].copy_from_slice(&1u32.to_le_bytes());
        body[8..16].copy_from_slice(&(segno * SEG).to_le_bytes());
        body[24..32].copy_from_slice(&sysid.to_le_bytes());
        body[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
        body[36..40].copy_from_slice(&8192u32.to_le_bytes());
        (name.to_string(), body)
    }

    fn request(name: &str, body: &[u8]) -> Request {
        Request {
            name: name.into(),
            size: body.len() as u64,
            digest: Some(digest(body)),
            encoding: crate::proto::Encoding::Plain,
        }
    }

    fn run(req: &Request, facts: &ArchiveFacts, chunks: &[&[u8]]) -> Result<Verified, Refusal> {
        let mut up = Upload::begin(req, facts)?;
        for c in chunks {
            up.feed(c)?;
        }
        up.finish()
    }

    #[test]
    fn accepts_a_segment_fed_in_odd_chunks() {
        let (name, body) = segment(3, 42);
        let facts = ArchiveFacts {
            cluster: Some(SystemId(42)),
            fence: None,
        };
        let chunks: Vec<&[u8]> = body.chunks(7).take(10).collect();
        let mut up = Upload::begin(&request(&name, &body), &facts).unwrap();
        for c in chunks {
            up.feed(c).unwrap();
        }
        up.feed(&body[70..]).unwrap();
        let v = up.finish().unwrap();
        assert_eq!(v.system_id, Some(SystemId(42)));
        assert_eq!(v.size, SEG);
    }

    #[test]
    fn refuses_foreign_cluster_at_the_header() {
        let (name, body) = segment(3, 42);
        let facts = ArchiveFacts {
            cluster: Some(SystemId(7)),
            fence: None,
        };
        let mut up = Upload::begin(&request(&name, &body), &facts).unwrap();
        let err = up.feed(&body[..64]).unwrap_err();
        assert!(
            matches!(
                err,
                Refusal::ForeignCluster {
                    segment: 42,
                    archive: 7,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_short_long_and_tampered_content() {
        let (name, body) = segment(3, 42);
        let facts = ArchiveFacts::default();
        let req = request(&name, &body);
        assert!(matches!(
            run(&req, &facts, &[&body[..1000]]),
            Err(Refusal::SizeMismatch { .. })
        ));
        let mut longer = body.clone();
        longer.push(0);
        assert!(matches!(
            run(&req, &facts, &[&longer]),
            Err(Refusal::SizeMismatch { .. })
        ));
        let mut tampered = body.clone();
        tampered[5000] ^= 0xff;
        assert!(matches!(
            run(&req, &facts, &[&tampered]),
            Err(Refusal::ChecksumMismatch { .. })
        ));
        assert!(run(&req, &facts, &[&body]).is_ok());
    }

    #[test]
    fn refuses_segment_whose_header_contradicts_its_name() {
        let (_, body) = segment(3, 42);
        let other = SegmentName::from_segno(TimelineId(1), SegNo(4), SEG).to_string();
        let err = run(&request(&other, &body), &ArchiveFacts::default(), &[&body]).unwrap_err();
        assert!(matches!(err, Refusal::BadSegment { .. }), "{err}");
        let err = run(
            &request(&other, &body[..20]),
            &ArchiveFacts::default(),
            &[&body[..20]],
        )
        .unwrap_err();
        assert!(matches!(err, Refusal::BadSegment { .. }), "{err}");
    }

    #[test]
    fn refuses_bad_names_and_oversize_before_content() {
        for bad in [
            "../000000010000000000000001",
            "foo",
            "000000010000000000000001/",
            "00000001000000000000000a",
        ] {
            let req = Request {
                name: bad.into(),
                size: 1,
                digest: Some([0; 32]),
                encoding: crate::proto::Encoding::Plain,
            };
            assert!(
                matches!(
                    Upload::begin(&req, &ArchiveFacts::default()),
                    Err(Refusal::BadName { .. })
                ),
                "{bad}"
            );
        }
        let req = Request {
            name: "00000002.history".into(),
            size: MAX_FILE_BYTES + 1,
            digest: Some([0; 32]),
            encoding: crate::proto::Encoding::Plain,
        };
        assert!(matches!(
            Upload::begin(&req, &ArchiveFacts::default()),
            Err(Refusal::TooLarge { .. })
        ));
    }

    #[test]
    fn fence_refuses_old_timeline_segments_but_not_history() {
        let fence = Fence {
            timeline: 1,
            promoted_at_lsn: "0/3000028".into(),
            new_timeline: Some(2),
            fenced_at_unix_ms: 0,
        };
        let facts = ArchiveFacts {
            cluster: None,
            fence: Some(fence),
        };
        let (name, body) = segment(3, 42);
        let err = Upload::begin(&request(&name, &body), &facts).unwrap_err();
        assert!(matches!(err, Refusal::Fenced { timeline: 1, .. }), "{err}");
        assert!(err.to_string().contains("0/3000028"), "{err}");
        let hist = b"1\t0/3000028\tno recovery target specified\n";
        assert!(Upload::begin(&request("00000002.history", hist), &facts).is_ok());
    }

    #[test]
    fn history_files_carry_no_header() {
        let body = b"1\t0/3000000\tno recovery target specified\n";
        let v = run(
            &request("00000002.history", body),
            &ArchiveFacts {
                cluster: Some(SystemId(1)),
                fence: None,
            },
            &[body],
        )
        .unwrap();
        assert_eq!(v.system_id, None);
    }

    #[test]
    fn trailer_split_finds_the_last_bytes_whatever_the_chunking() {
        let stream: Vec<u8> = (0..200u8).collect();
        for size in [1, 5, 31, 32, 33, 64, 199, 200] {
            let mut split = TrailerSplit::new(true);
            let mut content = Vec::new();
            for chunk in stream.chunks(size) {
                let (held, part) = split.split(chunk);
                content.extend_from_slice(&held);
                content.extend_from_slice(part);
            }
            assert_eq!(content, &stream[..168], "chunk size {size}");
            assert_eq!(split.trailer().unwrap().to_vec(), &stream[168..]);
        }
        let mut short = TrailerSplit::new(true);
        let _ = short.split(&[1, 2, 3]);
        assert_eq!(short.trailer(), None);
        let mut off = TrailerSplit::new(false);
        assert_eq!(off.split(&stream).1, &stream[..]);
    }

    #[test]
    fn trailer_digest_is_checked_and_required() {
        let (name, body) = segment(1, 42);
        let mut req = request(&name, &body);
        req.digest = None;
        let facts = ArchiveFacts::default();
        let mut up = Upload::begin(&req, &facts).unwrap();
        assert!(up.expects_trailer());
        up.feed(&body).unwrap();
        up.set_trailer(digest(&body));
        assert_eq!(up.finish().unwrap().digest, digest(&body));

        let mut up = Upload::begin(&req, &facts).unwrap();
        up.feed(&body).unwrap();
        up.set_trailer([9; 32]);
        assert!(matches!(up.finish(), Err(Refusal::ChecksumMismatch { .. })));

        // The stream ended before a trailer: never stored.
        let mut up = Upload::begin(&req, &facts).unwrap();
        up.feed(&body).unwrap();
        assert!(matches!(up.finish(), Err(Refusal::SizeMismatch { .. })));
    }
}
