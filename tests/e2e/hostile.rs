//! Hostile peers, through a raw QUIC client speaking the walship protocol byte by byte: frames
//! with a bad magic, another protocol version (newer, or the previous one) or an oversized
//! length; requests whose size or digest lie; names with `/`, `..` or 100 characters; a
//! segment stored under another segment's name; a connection holding 100 silent streams; and
//! TLS peers with an expired certificate, no certificate, or a sender expecting another server
//! name.
//!
//! Each case asserts the receiver's exact refusal, that nothing is visible under the file's name
//! (and no temp file is left), and that the receiver then still stores a correct push.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use walship_common::proto::frame::MAX_HEADER_BYTES;
use walship_common::proto::{Refusal, Reply, Request, PROTOCOL_VERSION};
use walship_tests::process::{wait_for, OsUser};
use walship_tests::raw::{
    client_tls_without_cert, honest_request, preamble, request_with_version, with_trailer,
    RawClient, StreamEnd, REPLY_TIMEOUT,
};
use walship_tests::walship::{
    archive_names, assert_pushed, assert_refused, push, receiver_config, sender_for,
};
use walship_tests::{donors, CertSet, Receiver, ReceiverSetup, Scenario, Segment};

/// A scenario with certificates, a receiver with a chosen `idle_timeout` and a sender for it.
/// Fields drop in order: the receiver stops, then a mounted archive is unmounted, then the
/// scenario reports.
pub struct Rig {
    pub rx: Option<Receiver>,
    pub mount: Option<Tmpfs>,
    pub setup: ReceiverSetup,
    pub sender: PathBuf,
    pub certs: CertSet,
    pub sc: Scenario,
}

impl Rig {
    /// Certificates, receiver config (with `idle_timeout`), sender config; the receiver started.
    pub fn start(name: &str, idle_timeout: &str) -> Rig {
        let mut rig = Rig::configure(name, idle_timeout);
        rig.spawn();
        rig
    }

    /// Like [`start`](Self::start) but without starting the receiver.
    pub fn configure(name: &str, idle_timeout: &str) -> Rig {
        let sc = Scenario::new(name);
        let certs = CertSet::create(&sc, "certs");
        let setup = receiver_config(&sc, "receiver", &certs, None);
        append(
            &sc,
            &setup.config,
            &format!("idle_timeout = \"{idle_timeout}\"\n"),
        );
        let sender = sender_for(&sc, "sender", &setup, &certs);
        Rig {
            rx: None,
            mount: None,
            setup,
            sender,
            certs,
            sc,
        }
    }

    /// Like [`start`](Self::start) (idle_timeout 2 s) with `/metrics` on a free port; the
    /// rig and the port.
    pub fn start_with_metrics(name: &str) -> (Rig, u16) {
        let mut rig = Rig::configure(name, "2s");
        let port = walship_tests::net::free_tcp_port();
        append(
            &rig.sc,
            &rig.setup.config,
            &format!("metrics_listen = \"127.0.0.1:{port}\"\n"),
        );
        rig.spawn();
        (rig, port)
    }

    /// Start `serve` (appending to `receiver.log`).
    pub fn spawn(&mut self) {
        assert!(self.rx.is_none(), "receiver already running");
        self.rx = Some(Receiver::spawn(&self.sc, &self.setup.config, "receiver"));
    }

    pub fn rx(&self) -> &Receiver {
        self.rx.as_ref().expect("receiver running")
    }

    pub fn archive(&self) -> &Path {
        &self.setup.archive_dir
    }

    /// A raw client with the sender's certificates.
    pub fn raw(&self) -> RawClient {
        RawClient::connect(&self.setup.addr, &self.certs)
    }

    /// Push `seg` with walship-sender, require exit 0 and the stored bytes identical.
    pub fn assert_serves(&self, seg: &Segment) {
        let path = seg.write_to(&self.sc, &format!("push-{}", seg.name));
        assert_pushed(&self.sc, &self.sender, &path, &seg.name);
        assert_stored(self.archive(), seg);
    }

    /// SIGTERM the receiver, require exit 0 and no ERROR/WARN line outside `allowed`.
    pub fn stop_and_check(&mut self, allowed: &[&str]) {
        if let Some(rx) = self.rx.take() {
            rx.stop_and_check(allowed);
        }
    }
}

/// A tmpfs mounted on a directory (as root), unmounted on drop.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `mount -t tmpfs -o size=SIZE tmpfs DIR`, then give DIR to `owner`. Failing to mount fails
    /// the test: the disk-full case must not be silently skipped.
    pub fn mount(dir: &Path, size: &str, owner: &OsUser) -> Tmpfs {
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("could not run `mount`: {e}"));
        assert!(
            out.status.success(),
            "`mount -t tmpfs -o size={size} tmpfs {}` failed ({}): {}\nthe disk-full test needs \
             to mount a small tmpfs as the receiver's archive_dir: run the tests as root in an \
             environment that allows mount (e.g. a container with CAP_SYS_ADMIN)",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        owner.chown(dir);
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Busy (a process still holds a file): detach it now, it goes when released.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .status();
        }
    }
}

/// Append `text` to a config file.
pub fn append(sc: &Scenario, path: &Path, text: &str) {
    let mut body =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    body.push_str(text);
    sc.write_at(path, body, 0o644);
}

/// Temp files in an archive directory.
pub fn temps(dir: &Path) -> Vec<String> {
    archive_names(dir)
        .into_iter()
        .filter(|n| n.starts_with(".walship-tmp."))
        .collect()
}

/// Nothing under `name` in `dir`, and no temp file at all.
pub fn assert_nothing_under(dir: &Path, name: &str) {
    assert!(
        !dir.join(name).exists(),
        "{name} is visible in {} after a failed upload; archive: {:?}",
        dir.display(),
        archive_names(dir)
    );
    assert_eq!(
        temps(dir),
        Vec::<String>::new(),
        "temp files left in {}",
        dir.display()
    );
}

/// `dir/<seg.name>` holds exactly `seg.bytes`.
pub fn assert_stored(dir: &Path, seg: &Segment) {
    let stored =
        fs::read(dir.join(&seg.name)).unwrap_or_else(|e| panic!("read stored {}: {e}", seg.name));
    assert!(
        stored == seg.bytes,
        "stored {} differs from the pushed segment ({} vs {} bytes)",
        seg.name,
        stored.len(),
        seg.bytes.len()
    );
}

/// The reply to `end`, which must be a refusal matching `want`.
fn refusal(end: StreamEnd, what: &str) -> Refusal {
    match end {
        StreamEnd::Reply(Reply::Refused(r)) => r,
        other => panic!("{what}: expected a refusal from the receiver, got {other:?}"),
    }
}

/// Refusals the receiver logs at WARN for hostile input (allowed in its log).
const HOSTILE_WARNINGS: [&str; 6] = [
    "malformed request",
    "protocol version",
    "sender announced",
    "received content has",
    "is not a wal file name",
    "is not a valid wal segment",
];

#[test]
fn bad_frames() {
    let d = donors();
    let mut rig = Rig::start("hostile_frames", "2s");
    let raw = rig.raw();
    let seg = &d.home[0];

    // Not our magic at all: an HTTP request sent to the walship port.
    let r = refusal(
        raw.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        "bad magic",
    );
    assert!(
        matches!(&r, Refusal::Malformed { reason } if reason.contains("bad magic")),
        "{r:?}"
    );

    other_versions_are_told_to_upgrade(&raw, &rig, seg);

    // A header length over the limit: refused from the preamble alone, without waiting for
    // (or allocating) the body. The stream stays open, so a reply proves the receiver did not
    // try to read the announced body.
    for len in [MAX_HEADER_BYTES as u32 + 1, u32::MAX] {
        let mut s = raw.open().expect("open stream");
        s.write(&preamble(*b"WSHP", PROTOCOL_VERSION, len))
            .expect("write preamble");
        let started = Instant::now();
        let r = refusal(s.reply(Duration::from_secs(10)), "oversized header");
        assert!(
            matches!(&r, Refusal::Malformed { reason } if reason.contains("exceeds the limit of 4096")),
            "header length {len}: {r:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "header length {len}: the refusal took {:.1?}, as if the receiver waited for the body",
            started.elapsed()
        );
    }

    // A valid preamble and an undecodable body.
    let mut junk = preamble(*b"WSHP", PROTOCOL_VERSION, 8);
    junk.extend_from_slice(&[0xff; 8]);
    let r = refusal(raw.exchange(&junk), "undecodable body");
    assert!(
        matches!(&r, Refusal::Malformed { reason } if reason.contains("undecodable")),
        "{r:?}"
    );

    // Half a preamble, then the end of the stream: no request to answer; the stream just ends.
    match raw.exchange(b"WSHP\x00") {
        StreamEnd::Ended(_) => {}
        other => panic!("truncated preamble: expected the stream to end, got {other:?}"),
    }
    assert_eq!(temps(rig.archive()), Vec::<String>::new());
    raw.close();

    rig.assert_serves(seg);
    rig.rx().assert_logged("malformed request");
    rig.stop_and_check(&HOSTILE_WARNINGS);
}

/// A sender of the next protocol version gets the typed refusal; one of the previous version
/// (3) gets it in its own version, as the one free-text refusal every release since protocol 1
/// prints, and is told which side to upgrade. Nothing is stored either way.
fn other_versions_are_told_to_upgrade(raw: &RawClient, rig: &Rig, seg: &Segment) {
    let req = honest_request(&seg.name, &seg.bytes);
    // Our magic, the next protocol version, followed by a well-formed request and the content.
    let next = PROTOCOL_VERSION + 1;
    let mut v2 = request_with_version(&req, next);
    v2.extend_from_slice(&seg.bytes[..4096]);
    let r = refusal(raw.exchange(&v2), "next version");
    assert_eq!(
        r,
        Refusal::UnsupportedVersion {
            receiver: PROTOCOL_VERSION,
            sender: next
        }
    );
    assert_nothing_under(rig.archive(), &seg.name);

    // The previous protocol.
    let mut s = raw.open().expect("open stream");
    let _ = s.write(&request_with_version(&req, 3));
    s.finish();
    let (version, end) = s.versioned_reply(REPLY_TIMEOUT);
    assert_eq!(
        version,
        Some(3),
        "the refusal is not framed in the sender's version"
    );
    let r = refusal(end, "previous version");
    assert!(
        matches!(&r, Refusal::Malformed { reason }
            if reason.contains("upgrade walship-sender on the primary")
                && reason.contains("protocol version 3")
                && reason.contains(&format!("protocol version {PROTOCOL_VERSION}"))),
        "{r:?}"
    );
    assert_nothing_under(rig.archive(), &seg.name);
}

#[test]
fn hostile_compressed_streams() {
    use walship_common::proto::Encoding;
    let d = donors();
    let mut rig = Rig::start("hostile_zstd", "2s");
    let raw = rig.raw();
    let seg = &d.home[1];
    let mut req = honest_request(&seg.name, &seg.bytes);
    req.encoding = Encoding::Zstd;

    let trailed = |wire: &[u8]| with_trailer(wire, &seg.bytes);

    // Garbage where a zstd frame should be.
    let r = refusal(
        raw.upload_wire(&req, &trailed(&[0x5a; 4096])),
        "garbage zstd",
    );
    assert!(
        matches!(&r, Refusal::Malformed { reason } if reason.contains("compressed stream")),
        "{r:?}"
    );
    assert_nothing_under(rig.archive(), &seg.name);

    // A frame cut short.
    let wire = compressed(Encoding::Zstd, &seg.bytes);
    let r = refusal(
        raw.upload_wire(&req, &trailed(&wire[..wire.len() / 2])),
        "truncated zstd",
    );
    assert!(
        matches!(r, Refusal::Malformed { .. } | Refusal::SizeMismatch { .. }),
        "{r:?}"
    );
    assert_nothing_under(rig.archive(), &seg.name);

    bomb_then_honest(&mut rig, &raw, &req, seg);
}

#[test]
fn hostile_lz4_streams() {
    use walship_common::proto::Encoding;
    let d = donors();
    let mut rig = Rig::start("hostile_lz4", "2s");
    let raw = rig.raw();
    let seg = &d.home[1];
    let mut req = honest_request(&seg.name, &seg.bytes);
    req.encoding = Encoding::Lz4;
    let trailed = |wire: &[u8]| with_trailer(wire, &seg.bytes);
    let malformed = |end: StreamEnd, what: &str, says: &str| {
        let r = refusal(end, what);
        assert!(
            matches!(&r, Refusal::Malformed { reason } if reason.contains(says)),
            "{what}: {r:?}"
        );
    };

    // A block header asking for more than any LZ4 block (a 2 GiB "block").
    let mut huge = (0x7fff_ff00u32).to_le_bytes().to_vec();
    huge.extend_from_slice(&[0x5a; 4096]);
    malformed(
        raw.upload_wire(&req, &trailed(&huge)),
        "huge block",
        "LZ4 block of",
    );
    assert_nothing_under(rig.archive(), &seg.name);

    // A block that does not decode.
    let mut garbage = 4096u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 4096]);
    malformed(
        raw.upload_wire(&req, &trailed(&garbage)),
        "garbage block",
        "does not decode",
    );
    assert_nothing_under(rig.archive(), &seg.name);

    // The honest stream cut before its end header.
    let wire = compressed(Encoding::Lz4, &seg.bytes);
    let r = refusal(
        raw.upload_wire(&req, &trailed(&wire[..wire.len() - 4])),
        "no end header",
    );
    assert!(
        matches!(&r, Refusal::Malformed { reason } if reason.contains("before the end of the LZ4 blocks")),
        "{r:?}"
    );
    assert_nothing_under(rig.archive(), &seg.name);

    bomb_then_honest(&mut rig, &raw, &req, seg);
}

/// `seg` compressed with `encoding`.
fn compressed(encoding: walship_common::proto::Encoding, plain: &[u8]) -> Vec<u8> {
    let mut e =
        walship_common::proto::BodyEncoder::new(encoding, 1, plain.len() as u64).expect("encoder");
    let mut out = Vec::new();
    e.encode(plain, &mut out).expect("encode");
    e.finish(&mut out).expect("finish");
    out
}

/// The end of both compressed-stream tests, in `req`'s encoding: a small stream that inflates
/// past the announced size (a decompression bomb) is refused as soon as the plain bytes pass
/// the announcement, nothing stored; then the honest upload is stored byte-identical.
fn bomb_then_honest(rig: &mut Rig, raw: &RawClient, req: &Request, seg: &Segment) {
    let mut bomb_plain = seg.bytes.clone();
    bomb_plain.extend(std::iter::repeat_n(0u8, 64 << 20));
    let bomb = with_trailer(&compressed(req.encoding, &bomb_plain), &seg.bytes);
    let r = refusal(raw.upload_wire(req, &bomb), "bomb");
    assert!(
        matches!(&r, Refusal::SizeMismatch { announced, .. } if *announced == seg.bytes.len() as u64),
        "{:?}: {r:?}",
        req.encoding
    );
    assert_nothing_under(rig.archive(), &seg.name);
    let honest = with_trailer(&compressed(req.encoding, &seg.bytes), &seg.bytes);
    assert!(
        matches!(
            raw.upload_wire(req, &honest),
            StreamEnd::Reply(Reply::Stored)
        ),
        "honest {:?} upload",
        req.encoding
    );
    assert_eq!(
        fs::read(rig.archive().join(&seg.name)).expect("stored"),
        seg.bytes
    );
    rig.stop_and_check(&HOSTILE_WARNINGS);
}

#[test]
fn lying_sizes_and_digests() {
    let d = donors();
    let mut rig = Rig::start("hostile_sizes", "2s");
    let raw = rig.raw();
    let seg = &d.home[1];
    let size = seg.bytes.len() as u64;
    let req = honest_request(&seg.name, &seg.bytes);
    let half = seg.bytes.len() / 2;

    // Announces the whole segment, sends half, finishes.
    let r = refusal(raw.upload(&req, &seg.bytes[..half]), "short content");
    assert_eq!(
        r,
        Refusal::SizeMismatch {
            name: seg.name.clone(),
            announced: size,
            received: half as u64
        }
    );
    assert_nothing_under(rig.archive(), &seg.name);

    // Announces the whole segment, sends it and one more byte.
    let mut longer = seg.bytes.clone();
    longer.push(0);
    let r = refusal(raw.upload(&req, &longer), "long content");
    assert!(
        matches!(&r, Refusal::SizeMismatch { name, announced, received }
            if *name == seg.name && *announced == size && *received > size),
        "{r:?}"
    );
    assert_nothing_under(rig.archive(), &seg.name);

    // The right bytes, with another digest in the trailer.
    let real = walship_common::proto::digest::digest(&seg.bytes);
    let mut wrong = real;
    wrong[0] ^= 0xff;
    let mut with_wrong = seg.bytes.clone();
    with_wrong.extend_from_slice(&wrong);
    let r = refusal(raw.upload_wire(&req, &with_wrong), "wrong digest");
    assert_eq!(
        r,
        Refusal::ChecksumMismatch {
            name: seg.name.clone(),
            expected: hex::encode(wrong),
            actual: hex::encode(real),
        }
    );
    assert_nothing_under(rig.archive(), &seg.name);

    // No trailer: the stream ends with the content, whose last 32 bytes are taken for one.
    let r = refusal(raw.upload_wire(&req, &seg.bytes), "no trailer");
    assert!(
        matches!(&r, Refusal::SizeMismatch { name, .. } if *name == seg.name),
        "{r:?}"
    );
    assert_nothing_under(rig.archive(), &seg.name);

    // The announced digest, content damaged after the page header.
    let mut damaged = seg.bytes.clone();
    damaged[5_000_000] ^= 0x01;
    let r = refusal(
        raw.upload_wire(&req, &with_trailer(&damaged, &seg.bytes)),
        "damaged content",
    );
    assert!(
        matches!(&r, Refusal::ChecksumMismatch { name, .. } if *name == seg.name),
        "{r:?}"
    );
    assert_nothing_under(rig.archive(), &seg.name);
    raw.close();

    rig.assert_serves(seg);
    rig.stop_and_check(&HOSTILE_WARNINGS);
}

#[test]
fn bad_names_and_misnamed_segment() {
    let d = donors();
    let mut rig = Rig::start("hostile_names", "2s");
    let raw = rig.raw();
    let seg = &d.home[1];
    let scenario_before = archive_names(rig.sc.dir());

    let names = [
        format!("{}/", seg.name),
        format!("../{}", seg.name),
        format!("x/{}", seg.name),
        "..".to_string(),
        "/".to_string(),
        "0".repeat(100),
        "A".repeat(100),
    ];
    for name in &names {
        let req = Request {
            name: name.clone(),
            size: seg.bytes.len() as u64,
            encoding: walship_common::proto::Encoding::Plain,
            dropped: Vec::new(),
            append_at: None,
        };
        let r = refusal(raw.upload(&req, &seg.bytes), name);
        assert!(
            matches!(&r, Refusal::BadName { name: n, .. } if n == name),
            "{name:?}: {r:?}"
        );
        assert_eq!(
            archive_names(rig.archive()),
            vec!["walship.lock".to_string()],
            "after {name:?}"
        );
    }
    assert_eq!(
        archive_names(rig.sc.dir()),
        scenario_before,
        "a name escaped the archive directory"
    );

    // Segment home[1]'s bytes under home[2]'s name: the page address contradicts the name.
    let other = &d.home[2];
    let r = refusal(
        raw.upload(&honest_request(&other.name, &seg.bytes), &seg.bytes),
        "misnamed segment",
    );
    assert!(
        matches!(&r, Refusal::BadSegment { name, reason }
            if *name == other.name && reason.contains("page address")),
        "{r:?}"
    );
    assert_nothing_under(rig.archive(), &other.name);
    raw.close();

    rig.assert_serves(seg);
    rig.assert_serves(other);
    rig.stop_and_check(&HOSTILE_WARNINGS);
}

#[test]
fn many_silent_streams() {
    const STREAMS: usize = 100;
    let d = donors();
    let mut rig = Rig::start("hostile_streams", "2s");
    let raw = rig.raw();
    let started = Instant::now();

    // 100 streams that each send the first 4 bytes of a preamble and then nothing. The
    // receiver allows 16 streams per connection at once: the rest open as the first are closed
    // (7 rounds of the 2 s idle timeout).
    let tasks: Vec<_> = (0..STREAMS)
        .map(|_| {
            let conn = raw.connection().clone();
            raw.runtime().spawn(async move {
                let (mut send, mut recv) =
                    conn.open_bi().await.map_err(|e| format!("open: {e}"))?;
                send.write_all(b"WSHP")
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                let opened = Instant::now();
                let end = walship_tests::raw::read_reply(&mut recv).await;
                Ok::<_, String>((end, opened.elapsed()))
            })
        })
        .collect();

    // Meanwhile a normal push goes through.
    rig.assert_serves(&d.home[0]);
    let pushed_after = started.elapsed();

    let results = raw.runtime().block_on(async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(tokio::time::timeout(Duration::from_secs(40), t).await);
        }
        out
    });
    for (i, r) in results.into_iter().enumerate() {
        let (end, held) = match r {
            Err(_) => panic!("stream {i}: not closed by the receiver within 40s"),
            Ok(Err(e)) => panic!("stream {i}: task failed: {e}"),
            Ok(Ok(Err(e))) => panic!("stream {i}: {e}"),
            Ok(Ok(Ok(v))) => v,
        };
        assert!(
            matches!(end, StreamEnd::Ended(_)),
            "stream {i}: expected the receiver to close the silent stream, got {end:?}"
        );
        assert!(
            held >= Duration::from_millis(1500) && held < Duration::from_secs(8),
            "stream {i} was closed after {held:.1?}, expected about the 2s idle_timeout"
        );
    }
    assert!(
        pushed_after < Duration::from_secs(10),
        "the normal push took {pushed_after:.1?} while 100 silent streams were open"
    );
    let discarded = rig
        .rx()
        .log_text()
        .lines()
        .filter(|l| l.contains("no data for 2s"))
        .count();
    assert!(
        discarded >= STREAMS,
        "the receiver logged {discarded} streams closed for silence, expected {STREAMS}"
    );
    assert_eq!(temps(rig.archive()), Vec::<String>::new());
    raw.close();
    rig.assert_serves(&d.home[1]);
    rig.stop_and_check(&[]);
}

#[test]
fn tls_expired_client_cert() {
    let d = donors();
    let mut rig = Rig::start("hostile_tls_expired", "2s");
    let sc = rig.sc.clone();
    let seg = &d.home[0];
    let path = seg.write_to(&sc, "segment");

    // Client certificates signed by the receiver's own CA: one expired yesterday, one valid (the
    // control that shows the expired one fails for its dates, not for its issuer).
    let now = time::OffsetDateTime::now_utc();
    let expired = rig.certs.issue_client(
        &sc,
        "client-expired",
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    );
    let valid = rig.certs.issue_client(
        &sc,
        "client-valid",
        now - time::Duration::days(1),
        now + time::Duration::days(30),
    );
    let sender_with = |name: &str, (cert, key): &(PathBuf, PathBuf)| {
        walship_tests::walship::sender_config(
            &sc,
            name,
            &rig.setup.addr,
            &rig.certs.ca(),
            cert,
            key,
            Some("5s"),
        )
    };

    let out = push(
        &sc,
        &sender_with("sender-expired", &expired),
        &path,
        &seg.name,
    );
    assert_refused(&out, &["expired"]);
    assert_nothing_under(rig.archive(), &seg.name);
    wait_logged(rig.rx(), "rejected connection");
    rig.rx().assert_logged("certificate expired");

    // The control: the same CA's valid certificate is accepted.
    let out = push(&sc, &sender_with("sender-valid", &valid), &path, &seg.name);
    out.assert_code(0);
    assert_stored(rig.archive(), seg);
    rig.assert_serves(&d.home[1]);
    rig.stop_and_check(&["rejected connection"]);
}

#[test]
fn tls_no_client_cert() {
    let d = donors();
    let mut rig = Rig::start("hostile_tls_nocert", "2s");
    let seg = &d.home[0];

    // TLS 1.3: the client considers the handshake done before the receiver judges its (absent)
    // certificate, so the refusal may show on the connection or on the first stream.
    let tls = client_tls_without_cert(&rig.certs.ca());
    match RawClient::connect_with(&rig.setup.addr, tls, Duration::from_secs(5)) {
        Err(e) => assert!(e.contains("handshake"), "{e}"),
        Ok(raw) => {
            let end = raw.upload(&honest_request(&seg.name, &seg.bytes), &seg.bytes);
            assert!(
                matches!(&end, StreamEnd::Ended(e) if e.contains("116") || e.contains("certificate")),
                "a client without a certificate got {end:?}"
            );
        }
    }
    assert_nothing_under(rig.archive(), &seg.name);
    wait_logged(rig.rx(), "rejected connection");
    rig.rx().assert_logged("peer sent no certificates");

    rig.assert_serves(seg);
    rig.stop_and_check(&["rejected connection"]);
}

#[test]
fn tls_wrong_server_name() {
    let d = donors();
    let mut rig = Rig::start("hostile_tls_name", "2s");
    let sc = rig.sc.clone();
    let seg = &d.home[0];
    let path = seg.write_to(&sc, "segment");

    // The receiver's certificate is for localhost; this sender expects another name.
    let other_name = sc.path("sender-other-name.toml");
    let text = fs::read_to_string(&rig.sender).expect("read sender.toml");
    assert!(text.contains("server_name = \"localhost\""), "{text}");
    sc.write_at(
        &other_name,
        text.replace(
            "server_name = \"localhost\"",
            "server_name = \"other.example\"",
        ),
        0o644,
    );
    let out = push(&sc, &other_name, &path, &seg.name);
    assert_refused(&out, &["server_name"]);
    assert!(
        !out.stderr.contains("client_ca"),
        "the sender blames its client certificate for a server name mismatch\n{out}"
    );
    assert_nothing_under(rig.archive(), &seg.name);

    rig.assert_serves(seg);
    // The sender aborts the handshake; the receiver sees (and logs) the abort.
    rig.stop_and_check(&["rejected connection"]);
}

/// Wait (a little: the receiver logs after the handshake fails on its side) for a log line.
fn wait_logged(rx: &Receiver, needle: &str) {
    let lower = needle.to_lowercase();
    let found = wait_for(Duration::from_secs(5), || {
        rx.log_text().to_lowercase().contains(&lower).then_some(())
    });
    if found.is_none() {
        rx.assert_logged(needle);
    }
}
