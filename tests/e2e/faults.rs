//! Faults around a transfer: the receiver SIGKILLed mid-transfer, the sender gone mid-transfer,
//! two senders pushing the same segment at once, the archive's disk full, and a damaged network
//! path (loss, duplication, reordering, delay, cuts) through a UDP proxy.
//!
//! What must hold every time: nothing is visible under a file's name unless it was stored whole;
//! an interrupted transfer leaves at most a `.walship-tmp.*` file, removed at the next start or
//! when the upload is abandoned; and the receiver then stores a correct push, byte-identical.

use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::Duration;

use walship_tests::process::{wait_deadline, wait_for};
use walship_tests::proxy::{self, Faults, Proxy};
use walship_tests::raw::{honest_request, RawClient, StreamEnd};
use walship_tests::walship::{assert_pushed, assert_refused, push, sender_config};
use walship_tests::{donors, Output, Segment};

use crate::hostile::{append, assert_nothing_under, assert_stored, temps, Rig, Tmpfs};

/// Bytes the receiver must have written to its temp file before a test interrupts a transfer.
const PARTIAL_ON_DISK: u64 = 1 << 20;

#[test]
fn receiver_killed_mid_transfer() {
    let d = donors();
    let mut rig = Rig::start("faults_rx_killed", "2s");
    for (round, seg) in d.home.iter().enumerate() {
        // Header and half the segment, then the client waits: the receiver is mid-transfer.
        let raw = rig.raw();
        let mut stream = raw.open().expect("open stream");
        let mut bytes = honest_request(&seg.name, &seg.bytes).encode();
        bytes.extend_from_slice(&seg.bytes[..seg.bytes.len() / 2]);
        stream.write(&bytes).expect("write half a segment");
        let temp = wait_partial(rig.archive(), &seg.name);

        kill9(receiver_pid(&rig.setup.config));
        let end = stream.reply(Duration::from_secs(15));
        assert!(
            matches!(end, StreamEnd::Ended(_)),
            "round {round}: the client of a killed receiver got {end:?}"
        );
        assert!(
            !rig.archive().join(&seg.name).exists(),
            "round {round}: {} visible after the receiver was killed mid-transfer",
            seg.name
        );
        let left = temps(rig.archive());
        assert!(
            left.iter()
                .all(|t| t.starts_with(&format!(".walship-tmp.{}.", seg.name))),
            "round {round}: unexpected temp files {left:?}"
        );
        drop(raw);

        // Restart: the leftover goes (with a WARN naming it), the push succeeds.
        drop(rig.rx.take()); // reaps the killed process
        rig.spawn();
        assert!(
            !rig.archive().join(&temp).exists(),
            "round {round}: serve did not remove the leftover {temp}"
        );
        rig.rx().assert_logged(&format!(
            "removed leftover of an interrupted transfer path={}",
            rig.archive().join(&temp).display()
        ));
        assert_eq!(temps(rig.archive()), Vec::<String>::new());
        rig.assert_serves(seg);
    }
    rig.stop_and_check(&["removed leftover of an interrupted transfer"]);
}

/// The same with PostgreSQL's own view: a real `walship-sender push` in flight (held mid-transfer
/// by the proxy) when the receiver is SIGKILLed exits 1 with one line, nothing is visible, and
/// after the restart the retried push stores the file byte-identical.
#[test]
fn receiver_killed_under_a_real_push() {
    let d = donors();
    let mut rig = Rig::start("faults_rx_killed_push", "2s");
    let px = Proxy::start(&rig.setup.addr, proxy::seed("faults_rx_killed_push"));
    let via_proxy = proxy_sender(&rig, &px, "sender-kill", "3s");
    for (round, seg) in d.home.iter().enumerate() {
        px.set(Faults {
            cut_after_upstream_bytes: Some(4 << 20),
            ..Faults::default()
        });
        let path = seg.write_to(&rig.sc, &format!("kill-{round}"));
        let out = thread::scope(|s| {
            let pushing = s.spawn(|| push(&rig.sc, &via_proxy, &path, &seg.name));
            let stalled = wait_for(Duration::from_secs(20), || px.is_cut().then_some(()));
            assert!(
                stalled.is_some(),
                "round {round}: the push never got 4 MiB through: {:?}",
                px.stats()
            );
            wait_partial(rig.archive(), &seg.name);
            kill9(receiver_pid(&rig.setup.config));
            // The path heals, but nobody is listening any more.
            px.set(Faults::default());
            pushing.join().expect("push thread")
        });
        out.assert_code(1);
        assert_eq!(
            out.stderr_lines().len(),
            1,
            "round {round}: one line for PostgreSQL's log\n{out}"
        );
        assert!(
            out.elapsed < Duration::from_secs(25),
            "round {round}: took {:.1?}\n{out}",
            out.elapsed
        );
        assert!(
            !rig.archive().join(&seg.name).exists(),
            "round {round}: {} visible after the kill",
            seg.name
        );

        drop(rig.rx.take()); // reaps the killed process
        rig.spawn();
        assert_eq!(
            temps(rig.archive()),
            Vec::<String>::new(),
            "round {round}: leftovers after restart"
        );
        assert_pushed(&rig.sc, &via_proxy, &path, &seg.name);
        assert_stored(rig.archive(), seg);
    }
    rig.stop_and_check(&["removed leftover of an interrupted transfer"]);
}

#[test]
fn sender_gone_mid_transfer() {
    let d = donors();
    let mut rig = Rig::start("faults_tx_gone", "2s");
    let seg = &d.home[0];
    let half = seg.bytes.len() / 2;
    let mut half_upload = honest_request(&seg.name, &seg.bytes).encode();
    half_upload.extend_from_slice(&seg.bytes[..half]);

    // 1. The client resets its stream after sending half.
    let raw = rig.raw();
    let mut stream = raw.open().expect("open stream");
    stream.write(&half_upload).expect("write half");
    wait_partial(rig.archive(), &seg.name);
    stream.reset();
    wait_abandoned(&rig, &seg.name, 1);
    raw.close();

    // 2. The client vanishes without a word: the link is cut, then the client is dropped.
    let px = Proxy::start(&rig.setup.addr, proxy::seed("faults_tx_gone"));
    let tls = walship_tests::raw::client_tls(
        &rig.certs.ca(),
        &rig.certs.client_cert(),
        &rig.certs.client_key(),
    );
    let raw = RawClient::connect_with(&px.addr(), tls, Duration::from_secs(5))
        .expect("connect through the proxy");
    let mut stream = raw.open().expect("open stream");
    stream.write(&half_upload).expect("write half");
    wait_partial(rig.archive(), &seg.name);
    px.cut(true);
    drop(stream);
    raw.close();
    wait_abandoned(&rig, &seg.name, 2);

    // 3. A walship-sender SIGKILLed mid-transfer: the link stalls after 4 MiB, then the sender
    //    is killed; the receiver hears nothing more.
    px.set(Faults {
        cut_after_upstream_bytes: Some(4 << 20),
        ..Faults::default()
    });
    let via_proxy = proxy_sender(&rig, &px, "sender-proxy", "5s");
    let path = seg.write_to(&rig.sc, "segment");
    let mut child = rig
        .sc
        .cmd(rig.sc.bin("walship-sender"))
        .arg("--config")
        .arg(&via_proxy)
        .arg("push")
        .arg(&path)
        .arg(&seg.name)
        .spawn_with(Stdio::null(), Stdio::null());
    let stalled = wait_for(Duration::from_secs(20), || px.is_cut().then_some(()));
    assert!(
        stalled.is_some(),
        "the sender never sent 4 MiB through the proxy: {:?}",
        px.stats()
    );
    wait_partial(rig.archive(), &seg.name);
    child.kill().expect("SIGKILL walship-sender");
    wait_deadline(&mut child, Duration::from_secs(5)).expect("reap walship-sender");
    wait_abandoned(&rig, &seg.name, 3);

    // The link healed, the same sender (through the proxy) stores it.
    px.set(Faults::default());
    assert_pushed(&rig.sc, &via_proxy, &path, &seg.name);
    assert_stored(rig.archive(), seg);
    rig.stop_and_check(&[]);
}

#[test]
fn concurrent_pushes_of_one_segment() {
    let d = donors();
    let mut rig = Rig::start("faults_concurrent", "2s");
    for (round, seg) in d.home.iter().enumerate() {
        let path = seg.write_to(&rig.sc, &format!("segment-{round}"));
        let outs: Vec<Output> = thread::scope(|s| {
            let pushes: Vec<_> = (0..2)
                .map(|_| s.spawn(|| push(&rig.sc, &rig.sender, &path, &seg.name)))
                .collect();
            pushes
                .into_iter()
                .map(|h| h.join().expect("push thread"))
                .collect()
        });
        for out in &outs {
            out.assert_code(0);
            assert!(out.stderr_lines().is_empty(), "round {round}\n{out}");
        }
        let names: Vec<String> = walship_tests::walship::archived_files(rig.archive());
        assert_eq!(
            names,
            d.home[..=round]
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>(),
            "round {round}: archive holds other files than the segments pushed"
        );
        assert_stored(rig.archive(), seg);
    }
    rig.stop_and_check(&[]);
}

#[test]
fn disk_full() {
    let d = donors();
    let mut rig = Rig::configure("faults_disk_full", "2s");
    let owner = rig.sc.user().clone();
    rig.mount = Some(Tmpfs::mount(rig.archive(), "20m", &owner));
    rig.spawn();

    // 20 MiB hold one 16 MiB segment, not two.
    let first = &d.home[0];
    rig.assert_serves(first);
    let second = &d.home[1];
    let path = second.write_to(&rig.sc, "second");
    let out = push(&rig.sc, &rig.sender, &path, &second.name);
    assert_refused(&out, &["disk is full"]);
    assert_nothing_under(rig.archive(), &second.name);

    // Free space: the same push now succeeds.
    std::fs::remove_file(rig.archive().join(&first.name)).expect("remove a stored segment");
    rig.assert_serves(second);
    rig.rx().assert_logged("disk is full");
    rig.stop_and_check(&["disk is full"]);
}

#[test]
fn lossy_link() {
    let d = donors();
    let mut rig = Rig::start("faults_lossy", "4s");
    let px = Proxy::start(&rig.setup.addr, proxy::seed("faults_lossy"));
    px.set(Faults {
        drop: 0.05,
        duplicate: 0.05,
        reorder: 0.05,
        ..Faults::default()
    });
    let sender = proxy_sender(&rig, &px, "sender-lossy", "4s");
    push_until_stored(&rig, &sender, &d.home[0], 5);
    let stats = px.stats();
    assert!(
        stats.dropped > 0 && stats.duplicated > 0 && stats.reordered > 0,
        "the proxy did not damage the path: {stats:?}"
    );
    eprintln!("lossy_link: {stats:?}");
    rig.stop_and_check(&[]);
}

#[test]
fn slow_link() {
    let d = donors();
    let mut rig = Rig::start("faults_slow", "4s");
    let px = Proxy::start(&rig.setup.addr, proxy::seed("faults_slow"));
    px.set(Faults {
        delay: Duration::from_millis(50),
        duplicate: 0.02,
        ..Faults::default()
    });
    let sender = proxy_sender(&rig, &px, "sender-slow", "4s");
    push_until_stored(&rig, &sender, &d.home[1], 5);
    let stats = px.stats();
    assert!(
        stats.duplicated > 0,
        "the proxy did not damage the path: {stats:?}"
    );
    eprintln!("slow_link: {stats:?}");
    rig.stop_and_check(&[]);
}

#[test]
fn link_cuts() {
    let d = donors();
    let mut rig = Rig::start("faults_cuts", "4s");
    let px = Proxy::start(&rig.setup.addr, proxy::seed("faults_cuts"));
    let sender = proxy_sender(&rig, &px, "sender-cuts", "4s");

    // A 2 s cut mid-transfer, shorter than both idle timeouts: QUIC may ride it out, or the
    // push fails cleanly; either way a retry stores the segment.
    let seg = &d.home[0];
    px.set(Faults {
        cut_after_upstream_bytes: Some(4 << 20),
        ..Faults::default()
    });
    let first = thread::scope(|s| {
        let healer = s.spawn(|| wait_cut_then_heal(&px, Duration::from_secs(2)));
        let first = push_until_stored(&rig, &sender, seg, 5);
        assert!(
            healer.join().expect("healer thread"),
            "the link was never cut"
        );
        first
    });
    eprintln!("link_cuts: after a 2s cut the first attempt exited {first}");

    // A 6 s cut, longer than the 4 s idle timeouts: the push must fail cleanly and promptly.
    let seg = &d.home[1];
    px.set(Faults {
        cut_after_upstream_bytes: Some(4 << 20),
        ..Faults::default()
    });
    let path = seg.write_to(&rig.sc, "cut-long");
    let out = push(&rig.sc, &sender, &path, &seg.name);
    assert!(px.is_cut(), "the push ended before the cut: {out}");
    assert_refused(&out, &[]);
    assert!(
        out.elapsed < Duration::from_secs(12),
        "a push over a dead link took {:.1?} with 4s idle timeouts\n{out}",
        out.elapsed
    );
    assert!(!rig.archive().join(&seg.name).exists());
    px.cut(false);
    push_until_stored(&rig, &sender, seg, 5);
    // The abandoned upload's temp file goes with the receiver's idle timeout.
    let gone = wait_for(Duration::from_secs(10), || {
        temps(rig.archive()).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "temp files left: {:?}",
        temps(rig.archive())
    );
    rig.stop_and_check(&[]);
}

/// Wait for the proxy to cut the link (it does so by itself after a byte count), keep it cut
/// for `for_`, heal it. Runs on the caller's thread until the cut is seen.
fn wait_cut_then_heal(px: &Proxy, for_: Duration) -> bool {
    let cut = wait_for(Duration::from_secs(30), || px.is_cut().then_some(())).is_some();
    if cut {
        thread::sleep(for_);
        px.cut(false);
    }
    cut
}

/// A sender config for `rig`'s receiver reached through `px`, with a 20 s push timeout.
fn proxy_sender(rig: &Rig, px: &Proxy, name: &str, connect_timeout: &str) -> std::path::PathBuf {
    let config = sender_config(
        &rig.sc,
        name,
        &px.addr(),
        &rig.certs.ca(),
        &rig.certs.client_cert(),
        &rig.certs.client_key(),
        Some(connect_timeout),
    );
    // Transport faults need bulk traffic to bite: a zstd-compressed segment is a few hundred
    // packets (too few for 2% duplication to be sure to hit, and under the 4 MiB cut points),
    // so these senders ship plain content. Compression is covered by every other scenario.
    append(
        &rig.sc,
        &config,
        "timeout = \"20s\"\ncompression = \"none\"\n",
    );
    config
}

/// Push like PostgreSQL's archiver: retry until exit 0, at most `attempts` times. Every attempt
/// exits 0, or 1 with one stderr line, within the push timeout; nothing is visible under the name
/// until the push succeeds. Returns the first attempt's exit code.
fn push_until_stored(rig: &Rig, sender: &Path, seg: &Segment, attempts: usize) -> i32 {
    let path = seg.write_to(&rig.sc, &format!("retry-{}", seg.name));
    let mut first = None;
    for attempt in 1..=attempts {
        let out = push(&rig.sc, sender, &path, &seg.name);
        assert!(
            out.elapsed < Duration::from_secs(25),
            "attempt {attempt} took {:.1?} with a 20s push timeout\n{out}",
            out.elapsed
        );
        first.get_or_insert(out.code());
        if out.code() == 0 {
            assert!(out.stderr_lines().is_empty(), "{out}");
            assert_stored(rig.archive(), seg);
            return first.unwrap_or(0);
        }
        assert_refused(&out, &[]);
        assert!(
            !rig.archive().join(&seg.name).exists(),
            "{} visible after a failed push\n{out}",
            seg.name
        );
        thread::sleep(Duration::from_millis(500));
    }
    panic!("{} not stored after {attempts} attempts", seg.name);
}

/// Wait until the receiver has written at least [`PARTIAL_ON_DISK`] bytes of `name` to a temp
/// file; returns the temp file's name.
fn wait_partial(archive: &Path, name: &str) -> String {
    let prefix = format!(".walship-tmp.{name}.");
    let found = wait_for(Duration::from_secs(20), || {
        temps(archive).into_iter().find(|t| {
            t.starts_with(&prefix)
                && std::fs::metadata(archive.join(t)).is_ok_and(|m| m.len() >= PARTIAL_ON_DISK)
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "the receiver never wrote {PARTIAL_ON_DISK} bytes of {name} to a temp file; archive: {:?}",
            walship_tests::walship::archive_names(archive)
        )
    })
}

/// Wait until the receiver has logged `count` abandoned uploads and no temp file is left, and
/// nothing is visible under `name`.
fn wait_abandoned(rig: &Rig, name: &str, count: usize) {
    let done = wait_for(Duration::from_secs(10), || {
        let logged = rig
            .rx()
            .log_text()
            .lines()
            .filter(|l| l.contains("partial upload discarded"))
            .count();
        (logged >= count && temps(rig.archive()).is_empty()).then_some(())
    });
    assert!(
        done.is_some(),
        "the receiver did not discard abandoned upload #{count} within 10s; temps: {:?}",
        temps(rig.archive())
    );
    assert_nothing_under(rig.archive(), name);
}

/// The pid of the `walship-receiver ... serve` this scenario started with `config`.
fn receiver_pid(config: &Path) -> u32 {
    let config = config.to_string_lossy();
    for (pid, dir) in walship_tests::process::processes() {
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_ours = args
            .first()
            .is_some_and(|a| a.ends_with("walship-receiver"))
            && args.iter().any(|a| *a == config)
            && args.iter().any(|a| a == "serve");
        if is_ours {
            return pid;
        }
    }
    panic!("no walship-receiver serve running with --config {config}");
}

/// SIGKILL one process we started.
fn kill9(pid: u32) {
    let status = std::process::Command::new("/bin/sh")
        .args(["-c", "kill -KILL \"$1\"", "sh", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -KILL {pid} failed");
}
