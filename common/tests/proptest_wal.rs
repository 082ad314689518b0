//! Property tests for the WAL decoders: names round-trip through Display, and no input, however
//! hostile, makes a decoder panic (they sit right behind the network).

use proptest::prelude::*;

use walship_common::pg_control::decode_system_id;
use walship_common::wal::header::LongPageHeader;
use walship_common::{Lsn, SegNo, SegmentName, TimelineId, WalFileName};

fn timeline() -> impl Strategy<Value = TimelineId> {
    (1..=u32::MAX).prop_map(TimelineId)
}

fn segment() -> impl Strategy<Value = SegmentName> {
    (timeline(), any::<u32>(), any::<u32>()).prop_map(|(timeline, log, seg)| SegmentName {
        timeline,
        log,
        seg,
    })
}

fn wal_name() -> impl Strategy<Value = WalFileName> {
    prop_oneof![
        segment().prop_map(WalFileName::Segment),
        timeline().prop_map(WalFileName::History),
        (segment(), any::<u32>())
            .prop_map(|(segment, offset)| WalFileName::Backup { segment, offset }),
        segment().prop_map(WalFileName::Partial),
    ]
}

/// Valid segment sizes: powers of two from 1 MiB to 1 GiB.
fn seg_size() -> impl Strategy<Value = u64> {
    (20u32..=30).prop_map(|shift| 1u64 << shift)
}

proptest! {
    #[test]
    fn wal_name_display_round_trips(name in wal_name()) {
        let text = name.to_string();
        prop_assert_eq!(text.parse::<WalFileName>(), Ok(name));
    }

    #[test]
    fn wal_name_parse_never_panics(s in any::<String>()) {
        let _ = s.parse::<WalFileName>();
    }

    #[test]
    fn wal_name_parse_never_panics_on_near_misses(s in "[0-9A-Fa-f./\\\\\0]{0,70}(history|partial|backup)?") {
        if let Ok(name) = s.parse::<WalFileName>() {
            // Whatever parses prints back exactly as given.
            prop_assert_eq!(name.to_string(), s);
        }
    }

    #[test]
    fn from_segno_inverts_segno(tli in timeline(), segno in 0u64..(1 << 34), size in seg_size()) {
        // 2^34 segments is the whole 2^64-byte LSN space at the largest (1 GiB) segment size.
        let name = SegmentName::from_segno(tli, SegNo(segno), size);
        prop_assert_eq!(name.segno(size), Ok(SegNo(segno)));
        prop_assert_eq!(name.start_lsn(size), Ok(Lsn(segno * size)));
    }

    #[test]
    fn lsn_display_round_trips(v in any::<u64>()) {
        prop_assert_eq!(Lsn(v).to_string().parse::<Lsn>(), Ok(Lsn(v)));
    }

    #[test]
    fn lsn_parse_never_panics(s in any::<String>()) {
        let _ = s.parse::<Lsn>();
    }

    #[test]
    fn header_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        if let Ok(header) = LongPageHeader::decode(&bytes) {
            let _ = header.pg_major();
            let name = SegmentName { timeline: TimelineId(1), log: 0, seg: 1 };
            let _ = header.check_against(&name, bytes.len() as u64);
        }
    }

    #[test]
    fn header_decode_never_panics_near_valid(
        magic in prop_oneof![Just(0xD110u16), any::<u16>()],
        info in prop_oneof![Just(2u16), any::<u16>()],
        seg_shift in 0u32..32,
        block_shift in 0u32..32,
        page_addr in any::<u64>(),
        tli in any::<u32>(),
        name in segment(),
        file_size in any::<u64>(),
    ) {
        let mut b = [0u8; 40];
        b[0..2].copy_from_slice(&magic.to_le_bytes());
        b[2..4].copy_from_slice(&info.to_le_bytes());
        b[4..8].copy_from_slice(&tli.to_le_bytes());
        b[8..16].copy_from_slice(&page_addr.to_le_bytes());
        b[32..36].copy_from_slice(&(1u32 << seg_shift).to_le_bytes());
        b[36..40].copy_from_slice(&(1u32 << block_shift).to_le_bytes());
        if let Ok(header) = LongPageHeader::decode(&b) {
            let _ = header.check_against(&name, file_size);
            let _ = header.check_against(&name, u64::from(header.seg_size));
        }
    }

    #[test]
    fn control_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_system_id(&bytes);
    }

    #[test]
    fn control_decode_never_panics_on_known_versions(
        version in prop_oneof![Just(1300u32), Just(1700u32), Just(1800u32)],
        mut bytes in proptest::collection::vec(any::<u8>(), 12..600),
    ) {
        bytes[8..12].copy_from_slice(&version.to_le_bytes());
        let _ = decode_system_id(&bytes);
    }
}

mod frames {
    use proptest::prelude::*;
    use walship_common::proto::frame::{decode_frame, MAX_HEADER_BYTES, MAX_REPLY_BYTES};
    use walship_common::proto::{ArchiveFacts, Refusal, Reply, Request, Upload, WireRequest};

    proptest! {
        #[test]
        fn request_round_trips(name in "[0-9A-F.a-z/]{0,64}", size in any::<u64>()) {
            let r = Request { name, size, encoding: walship_common::proto::Encoding::Plain, dropped: Vec::new(), append_at: None };
            prop_assert_eq!(decode_frame::<WireRequest>(&r.encode(), MAX_HEADER_BYTES).unwrap(), WireRequest::Wal(r));
        }

        #[test]
        fn reply_round_trips(name in ".{0,80}", a in any::<u64>(), b in any::<u64>()) {
            for reply in [
                Reply::Stored,
                Reply::AlreadyHad,
                Reply::Refused(Refusal::ForeignCluster { name: name.clone(), segment: a }),
                Reply::Refused(Refusal::SizeMismatch { name: name.clone(), announced: a, received: b }),
            ] {
                prop_assert_eq!(decode_frame::<Reply>(&reply.encode(), MAX_REPLY_BYTES).unwrap(), reply);
            }
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame::<WireRequest>(&bytes, MAX_HEADER_BYTES);
            let _ = decode_frame::<Reply>(&bytes, MAX_REPLY_BYTES);
            let _ = Request::decode_body(&bytes);
            let _ = Reply::decode_body(&bytes);
        }

        #[test]
        fn upload_never_panics_and_accepts_only_exact_content(
            reason in "[ -~]{0,1000}",
            cut in 0usize..4096,
            flip in any::<bool>(),
        ) {
            // A history file whose reason is free-form: only size and digest decide.
            let body = format!("1\t0/3000000\t{reason}\n").into_bytes();
            let sha = walship_common::proto::digest::digest(&body);
            let req = Request { name: "00000002.history".into(), size: body.len() as u64, encoding: walship_common::proto::Encoding::Plain, dropped: Vec::new(), append_at: None };
            let mut up = Upload::begin(&req, &ArchiveFacts::default()).unwrap();
            let cut = cut.min(body.len());
            let mut sent = body.clone();
            if flip && !sent.is_empty() {
                let at = cut.min(sent.len() - 1);
                sent[at] ^= 1;
            }
            up.feed(&sent[..cut]).unwrap();
            up.feed(&sent[cut..]).unwrap();
            prop_assert_eq!(up.finish(Some(sha)).is_ok(), !flip || body.is_empty());
        }

        #[test]
        fn incoming_never_panics_on_arbitrary_wire_bytes(
            wire in proptest::collection::vec(any::<u8>(), 0..4096),
            cut in 1usize..600,
            zstd in any::<bool>(),
        ) {
            use walship_common::proto::{Encoding, Incoming};
            let encoding = if zstd { Encoding::Zstd } else { Encoding::Plain };
            let req = Request { name: "00000002.history".into(), size: 300, encoding, dropped: Vec::new(), append_at: None };
            let mut incoming = Incoming::begin(&req, &ArchiveFacts::default()).unwrap();
            let mut absorbed = Ok(());
            for piece in wire.chunks(cut) {
                absorbed = incoming.absorb(piece, &mut |_| Ok(()));
                if absorbed.is_err() {
                    break;
                }
            }
            if absorbed.is_ok() {
                let _ = incoming.finish();
            }
        }

        #[test]
        fn history_upload_accepts_only_what_parses(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let sha = walship_common::proto::digest::digest(&body);
            let req = Request { name: "00000002.history".into(), size: body.len() as u64, encoding: walship_common::proto::Encoding::Plain, dropped: Vec::new(), append_at: None };
            let mut up = Upload::begin(&req, &ArchiveFacts::default()).unwrap();
            up.feed(&body).unwrap();
            let parses = walship_common::wal::history::History::parse(walship_common::TimelineId(2), &body).is_ok();
            prop_assert_eq!(up.finish(Some(sha)).is_ok(), parses);
        }
    }
}
