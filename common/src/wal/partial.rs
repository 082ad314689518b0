//! The open segment, shipped while PostgreSQL writes it: checks of each append to a
//! `NAME.partial` (the page header of every page whose header arrived, as for a finished
//! segment), and where the last complete WAL record in such a prefix ends (what a standby
//! replaying the zero-padded partial reaches).
//!
//! Pure: the receiver hands in the bytes it holds and the bytes that arrive.

use crate::lsn::Lsn;
use crate::pg_control::SystemId;
use crate::wal::header::{LongPageHeader, LONG_PAGE_HEADER_LEN, XLP_ALL_FLAGS, XLP_LONG_HEADER};
use crate::wal::name::SegmentName;

/// Most plain bytes one append may carry: the sender splits larger increments. Bounds what
/// the receiver holds in memory per append.
pub const MAX_APPEND_BYTES: u64 = 4 << 20;

/// Bytes of an ordinary page header (`SizeOfXLogShortPHD`, MAXALIGNed).
pub const SHORT_PAGE_HEADER_LEN: u64 = 24;
/// `XLP_FIRST_IS_CONTRECORD`: the page starts with the rest of a record from the page before.
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `SizeOfXLogRecord`: the fixed part of a WAL record.
const RECORD_HEADER_LEN: u64 = 24;

/// Check `bytes`, to be appended at `offset` to the partial of `segment`. `head`: the long
/// page header of what is already held (`None` when `offset` is 0). Returns the long header
/// (read from `bytes` when they start the segment). Refuses: a first page that is not this
/// segment's (page address, segment size, timeline, cluster), any later page header in the
/// range whose magic, flags, page address or timeline is wrong, an append starting or ending
/// inside a page header (PostgreSQL's flush position never does), and a partial running past
/// the segment's end.
pub fn check_append(
    segment: &SegmentName,
    head: Option<&LongPageHeader>,
    offset: u64,
    bytes: &[u8],
    cluster: Option<SystemId>,
) -> Result<LongPageHeader, String> {
    let header = match (offset, head) {
        (0, _) => {
            let h = LongPageHeader::decode(bytes).map_err(|e| e.to_string())?;
            h.check_against(segment, u64::from(h.seg_size))
                .map_err(|e| e.to_string())?;
            if let Some(c) = cluster {
                h.check_system_id(c).map_err(|e| e.to_string())?;
            }
            h
        }
        (_, Some(h)) => *h,
        (_, None) => return Err("an append after the start needs the segment's first page".into()),
    };
    let seg_size = u64::from(header.seg_size);
    let block = u64::from(header.block_size);
    let end = offset + bytes.len() as u64;
    if end > seg_size {
        return Err(format!(
            "the partial would reach {end} bytes, past the segment size {seg_size}"
        ));
    }
    let inside_header = |at: u64| {
        let in_page = at % block;
        let len = if at / block == 0 {
            LONG_PAGE_HEADER_LEN as u64
        } else {
            SHORT_PAGE_HEADER_LEN
        };
        in_page > 0 && in_page < len
    };
    if inside_header(offset) || inside_header(end) {
        return Err(format!(
            "an append from {offset} to {end} starts or ends inside a page header; PostgreSQL's flush position never does"
        ));
    }
    let start = segment.start_lsn(seg_size).map_err(|e| e.to_string())?;
    // Every page that begins in the new bytes (page 0 was checked above).
    let mut page = offset.div_ceil(block) * block;
    while page < end {
        if page > 0 {
            let at = (page - offset) as usize;
            let h = &bytes[at..at + SHORT_PAGE_HEADER_LEN as usize];
            let magic = u16::from_le_bytes([h[0], h[1]]);
            let info = u16::from_le_bytes([h[2], h[3]]);
            let tli = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
            let addr = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
            let expected = start.0 + page;
            if magic == 0 {
                // After an XLOG_SWITCH PostgreSQL leaves the rest of the segment zeroed, and
                // flushed: a page of zeros is the end of WAL, harmless, and taken as such.
                let to = ((page + block).min(end) - offset) as usize;
                if bytes[at..to].iter().all(|b| *b == 0) {
                    page += block;
                    continue;
                }
            }
            if magic != header.magic {
                return Err(format!(
                    "page at offset {page} has magic {magic:#06X}, the segment {:#06X}",
                    header.magic
                ));
            }
            if info & !XLP_ALL_FLAGS != 0 || info & XLP_LONG_HEADER != 0 {
                return Err(format!("page at offset {page} has page info {info:#06X}"));
            }
            if addr != expected {
                return Err(format!(
                    "page at offset {page} has page address {}, expected {}",
                    Lsn(addr),
                    Lsn(expected)
                ));
            }
            if tli > segment.timeline.0 || tli < header.timeline.0 {
                return Err(format!(
                    "page at offset {page} is on timeline {tli}, not that of {segment}"
                ));
            }
        }
        page += block;
    }
    Ok(header)
}

/// Where the last WAL record wholly inside `bytes` (a prefix of the segment starting at
/// `seg_start`, pages of `block` bytes) ends, MAXALIGNed as PostgreSQL reports a replay
/// position; `None` when no record ends inside it. A record whose length field is zero (the
/// zeros after the flush position) or runs past the prefix ends the walk.
pub fn last_record_end(bytes: &[u8], seg_start: Lsn, block: u64) -> Option<Lsn> {
    let len = bytes.len() as u64;
    let u16_at = |at: u64| -> Option<u16> {
        let a = at as usize;
        Some(u16::from_le_bytes(bytes.get(a..a + 2)?.try_into().ok()?))
    };
    let u32_at = |at: u64| -> Option<u32> {
        let a = at as usize;
        Some(u32::from_le_bytes(bytes.get(a..a + 4)?.try_into().ok()?))
    };
    let header_len = |page: u64| {
        if page == 0 {
            LONG_PAGE_HEADER_LEN as u64
        } else {
            SHORT_PAGE_HEADER_LEN
        }
    };
    // Consume `n` record bytes from `pos`, skipping the headers of the pages they cross.
    let consume = |mut pos: u64, mut n: u64| -> Option<u64> {
        while n > 0 {
            if pos.is_multiple_of(block) {
                let page = pos / block;
                if pos + header_len(page) > len || u16_at(pos)? == 0 {
                    return None;
                }
                pos += header_len(page);
            }
            let room = block - pos % block;
            let take = room.min(n);
            pos += take;
            n -= take;
        }
        (pos <= len).then_some(pos)
    };
    let align = |p: u64| (p + 7) & !7;
    // The first page may begin with the tail of a record from the previous segment.
    let info = u16_at(2)?;
    let mut pos = LONG_PAGE_HEADER_LEN as u64;
    if info & XLP_FIRST_IS_CONTRECORD != 0 {
        let rem = u64::from(u32_at(16)?);
        pos = align(consume(pos, rem)?);
    }
    let mut last = None;
    loop {
        if pos >= len {
            break;
        }
        if pos.is_multiple_of(block) {
            let page = pos / block;
            if pos + header_len(page) > len || u16_at(pos)? == 0 {
                break;
            }
            pos += header_len(page);
        }
        let Some(total) = u32_at(pos) else { break };
        let total = u64::from(total);
        if total < RECORD_HEADER_LEN {
            break;
        }
        let Some(after) = consume(pos, total) else {
            break;
        };
        let end = align(after);
        last = Some(Lsn(seg_start.0 + end));
        pos = end;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::name::TimelineId;

    const BLOCK: u64 = 8192;
    const SEG: u64 = 16 << 20;

    fn seg() -> SegmentName {
        "000000010000000000000003".parse().unwrap()
    }

    /// A segment prefix of `pages` pages: proper headers, records of `rec` bytes laid end to
    /// end (crossing pages), and the end of the last whole record.
    fn prefix(pages: u64, rec: u64, upto: u64) -> (Vec<u8>, u64) {
        let start = 3 * SEG;
        let mut b = vec![0u8; (pages * BLOCK) as usize];
        for p in 0..pages {
            let at = (p * BLOCK) as usize;
            b[at..at + 2].copy_from_slice(&0xD110u16.to_le_bytes());
            let info: u16 = if p == 0 { XLP_LONG_HEADER } else { 0 };
            b[at + 2..at + 4].copy_from_slice(&info.to_le_bytes());
            b[at + 4..at + 8].copy_from_slice(&1u32.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&(start + p * BLOCK).to_le_bytes());
            if p == 0 {
                b[24..32].copy_from_slice(&7u64.to_le_bytes());
                b[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
                b[36..40].copy_from_slice(&(BLOCK as u32).to_le_bytes());
            }
        }
        // Records: write the length at each record start, skipping page headers.
        let mut pos = 40u64;
        let mut last = 0;
        loop {
            if pos.is_multiple_of(BLOCK) {
                pos += 24;
            }
            if pos + rec > upto {
                break;
            }
            b[pos as usize..pos as usize + 4].copy_from_slice(&(rec as u32).to_le_bytes());
            let mut n = rec;
            while n > 0 {
                if pos.is_multiple_of(BLOCK) {
                    pos += 24;
                }
                let take = (BLOCK - pos % BLOCK).min(n);
                pos += take;
                n -= take;
            }
            if pos > upto {
                break;
            }
            pos = (pos + 7) & !7;
            last = pos;
        }
        b.truncate(upto as usize);
        (b, last)
    }

    #[test]
    fn appends_are_checked_page_by_page() {
        let (b, _) = prefix(4, 100, 4 * BLOCK);
        let h = check_append(&seg(), None, 0, &b[..5000], Some(crate::SystemId(7))).unwrap();
        assert_eq!(h.timeline, TimelineId(1));
        check_append(&seg(), Some(&h), 5000, &b[5000..], None).unwrap();
        // Another cluster, another segment, a page of another address.
        assert!(check_append(&seg(), None, 0, &b[..5000], Some(crate::SystemId(8))).is_err());
        let other: SegmentName = "000000010000000000000004".parse().unwrap();
        assert!(check_append(&other, None, 0, &b[..5000], None).is_err());
        let mut bad = b.clone();
        bad[(2 * BLOCK + 8) as usize] ^= 1;
        let e = check_append(&seg(), Some(&h), 5000, &bad[5000..], None).unwrap_err();
        assert!(e.contains("page address"), "{e}");
        // A page of zeros (the rest of a segment after a WAL switch) passes; half zeros not.
        let mut zeroed = b.clone();
        zeroed[(2 * BLOCK) as usize..].fill(0);
        check_append(&seg(), Some(&h), 5000, &zeroed[5000..], None).unwrap();
        zeroed[(2 * BLOCK + 100) as usize] = 1;
        assert!(check_append(&seg(), Some(&h), 5000, &zeroed[5000..], None).is_err());
        // Later timeline than the name; inside a header.
        let mut bad = b.clone();
        bad[(BLOCK + 4) as usize] = 2;
        assert!(check_append(&seg(), Some(&h), 5000, &bad[5000..], None).is_err());
        let e = check_append(
            &seg(),
            Some(&h),
            5000,
            &b[5000..(BLOCK + 10) as usize],
            None,
        )
        .unwrap_err();
        assert!(e.contains("inside a page header"), "{e}");
        // No head for a later append.
        assert!(check_append(&seg(), None, 5000, &b[5000..], None).is_err());
    }

    #[test]
    fn the_last_whole_record_is_found_across_pages() {
        for (rec, upto) in [(100, 3 * BLOCK - 500), (9000, 3 * BLOCK + 100), (48, 5000)] {
            let (b, last) = prefix(4, rec, upto);
            assert_eq!(
                last_record_end(&b, Lsn(3 * SEG), BLOCK),
                Some(Lsn(3 * SEG + last)),
                "rec {rec} upto {upto}"
            );
        }
        let (b, _) = prefix(1, 100, 40);
        assert_eq!(last_record_end(&b, Lsn(3 * SEG), BLOCK), None);
    }
}
