//! Issue 10, item 5: one peer cannot starve every push. A client with a valid certificate that
//! opens many streams with valid headers and then trickles a byte a second is cut off by the
//! minimum upload rate and cannot take every upload slot from one connection; idle connections
//! holding every sending slot are evicted when a real sender waits; the limits are configurable
//! (`max_uploads`, `max_connections`, `stream_window`, `min_upload_rate`) and bad values are
//! refused at start; a push that waited for a slot says so.

use std::time::{Duration, Instant};

use walship_common::proto::{Refusal, Reply};
use walship_tests::process::wait_for;
use walship_tests::raw::{honest_request, read_reply, RawClient, StreamEnd};
use walship_tests::walship::{assert_refused, push, receiver_config};
use walship_tests::{donors, CertSet, Scenario, Segment};

use crate::hostile::{append, assert_stored, temps, Rig};
use crate::issue10_serve_lock::{assert_start_refused, serve_expecting_exit};

/// Open `n` streams on `raw`, each sending `seg`'s request frame and its first 8 KiB, then one
/// more byte every second until the receiver answers or closes the stream. The handles yield
/// how each stream ended.
fn trickle(
    raw: &RawClient,
    seg: &Segment,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<StreamEnd, String>>> {
    (0..n)
        .map(|_| {
            let conn = raw.connection().clone();
            let mut head = honest_request(&seg.name, &seg.bytes).encode();
            head.extend_from_slice(&seg.bytes[..8192]);
            let rest = seg.bytes[8192..].to_vec();
            raw.runtime().spawn(async move {
                let (mut send, mut recv) =
                    conn.open_bi().await.map_err(|e| format!("open: {e}"))?;
                send.write_all(&head)
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                let drip = async {
                    for b in rest.chunks(1) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if send.write_all(b).await.is_err() {
                            break;
                        }
                    }
                    std::future::pending::<()>().await;
                };
                tokio::select! {
                    end = read_reply(&mut recv) => Ok(end),
                    _ = drip => unreachable!("the drip never ends"),
                }
            })
        })
        .collect()
}

/// Wait for every trickling stream to end; how each ended.
fn ends(
    raw: &RawClient,
    tasks: Vec<tokio::task::JoinHandle<Result<StreamEnd, String>>>,
    within: Duration,
) -> Vec<StreamEnd> {
    raw.runtime().block_on(async {
        let mut out = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            match tokio::time::timeout(within, t).await {
                Err(_) => panic!("trickling stream {i} still open after {within:?}"),
                Ok(Err(e)) => panic!("trickling stream {i}: task failed: {e}"),
                Ok(Ok(Err(e))) => panic!("trickling stream {i}: {e}"),
                Ok(Ok(Ok(end))) => out.push(end),
            }
        }
        out
    })
}

fn is_too_slow(end: &StreamEnd) -> bool {
    matches!(
        end,
        StreamEnd::Reply(Reply::Refused(Refusal::TooSlow { .. }))
    )
}

#[test]
fn item5_trickling_streams_do_not_starve_a_push() {
    let d = donors();
    // A 3 s grace: a trickler is cut 3 s after it got its upload slot.
    let mut rig = Rig::configure("i10_trickle", "3s");
    append(&rig.sc, &rig.sender, "timeout = \"40s\"\n");
    rig.spawn();
    let (a, b) = (rig.raw(), rig.raw());
    // 16 trickling streams on two connections: more than the 8 upload slots.
    let mut tasks = trickle(&a, &d.home[1], 8);
    let tasks_b = trickle(&b, &d.home[2], 8);
    let archive = rig.archive().to_path_buf();
    // The slots are taken (one temp file per upload holding a slot).
    wait_for(Duration::from_secs(10), || {
        (temps(&archive).len() >= 8).then_some(())
    })
    .unwrap_or_else(|| panic!("tricklers hold {} upload slots", temps(&archive).len()));

    let seg = &d.home[0];
    let path = seg.write_to(&rig.sc, "segment");
    let started = Instant::now();
    let out = push(&rig.sc, &rig.sender, &path, &seg.name);
    let took = started.elapsed();
    out.assert_code(0);
    assert!(
        took < Duration::from_secs(15),
        "the push took {took:.1?} while 16 streams trickled\n{out}"
    );
    assert_stored(&archive, seg);

    // Every trickling stream is cut off, told why.
    let mut got = ends(&a, std::mem::take(&mut tasks), Duration::from_secs(60));
    got.extend(ends(&b, tasks_b, Duration::from_secs(60)));
    for (i, end) in got.iter().enumerate() {
        assert!(is_too_slow(end), "trickling stream {i} ended with {end:?}");
    }
    assert_eq!(temps(&archive), Vec::<String>::new());
    a.close();
    b.close();
    rig.assert_serves(&d.home[1]);
    rig.stop_and_check(&["too slow"]);
}

#[test]
fn item5_one_connection_cannot_take_every_upload_slot() {
    let d = donors();
    // A long grace: the trickler is not cut during this test, only capped.
    let mut rig = Rig::configure("i10_per_conn", "30s");
    append(&rig.sc, &rig.sender, "timeout = \"10s\"\n");
    rig.spawn();
    let a = rig.raw();
    let _tasks = trickle(&a, &d.home[1], 8);
    let archive = rig.archive().to_path_buf();
    std::thread::sleep(Duration::from_secs(2));
    let held = temps(&archive).len();
    assert!(
        (1..=4).contains(&held),
        "one connection holds {held} of the 8 upload slots (at most 4 expected)"
    );
    let started = Instant::now();
    rig.assert_serves(&d.home[0]);
    assert!(started.elapsed() < Duration::from_secs(5));
    a.close();
    rig.stop_and_check(&[]);
}

#[test]
fn item5_idle_connections_do_not_block_a_push() {
    let d = donors();
    let mut rig = Rig::configure("i10_idle_conns", "30s");
    append(&rig.sc, &rig.sender, "timeout = \"30s\"\n");
    rig.spawn();
    // 16 connections that hold every sending slot and never open a stream (keep-alives only).
    let idle: Vec<RawClient> = (0..16).map(|_| rig.raw()).collect();
    std::thread::sleep(Duration::from_millis(500));

    let seg = &d.home[0];
    let path = seg.write_to(&rig.sc, "segment");
    let started = Instant::now();
    let out = push(&rig.sc, &rig.sender, &path, &seg.name);
    let took = started.elapsed();
    out.assert_code(0);
    assert!(
        took < Duration::from_secs(10),
        "the push took {took:.1?} behind 16 idle connections\n{out}"
    );
    assert_stored(rig.archive(), seg);
    // At least one idle connection was closed, and told why.
    let reasons: Vec<String> = idle
        .iter()
        .filter_map(|c| c.closed_within(Duration::from_millis(10)))
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("evicted")),
        "no idle connection was evicted: {reasons:?}"
    );
    for c in idle {
        c.close();
    }
    rig.stop_and_check(&[]);
}

#[test]
fn item5_push_waiting_for_a_slot_says_so() {
    let d = donors();
    let mut rig = Rig::configure("i10_slot_msg", "30s");
    append(&rig.sc, &rig.sender, "timeout = \"3s\"\n");
    rig.spawn();
    // Every sending slot held by a connection whose stream sent half a preamble: busy, not idle.
    let busy: Vec<RawClient> = (0..16).map(|_| rig.raw()).collect();
    let _streams: Vec<_> = busy
        .iter()
        .map(|c| {
            let mut s = c.open().expect("open");
            s.write(b"WSHP").expect("write");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let seg = &d.home[0];
    let path = seg.write_to(&rig.sc, "segment");
    let out = push(&rig.sc, &rig.sender, &path, &seg.name);
    assert_refused(&out, &["no free sending slot"]);
    assert!(out.stderr.contains("max_connections"), "{out}");
    assert!(!out.stderr.contains("raise `timeout`"), "{out}");
    drop(_streams);
    for c in busy {
        c.close();
    }

    // Every upload slot held by two connections trickling (the grace is 30 s): the push gets a
    // stream but its upload waits for a slot.
    let (a, b) = (rig.raw(), rig.raw());
    let _ta = trickle(&a, &d.home[1], 4);
    let _tb = trickle(&b, &d.home[2], 4);
    let archive = rig.archive().to_path_buf();
    wait_for(Duration::from_secs(10), || {
        (temps(&archive).len() >= 8).then_some(())
    })
    .expect("the tricklers hold every upload slot");
    let out = push(&rig.sc, &rig.sender, &path, &seg.name);
    assert_refused(&out, &["no free upload slot"]);
    assert!(out.stderr.contains("max_uploads"), "{out}");
    a.close();
    b.close();
    rig.stop_and_check(&[]);
}

/// A receiver with extra keys in its config, and a sender for it.
fn configured(name: &str, keys: &str) -> Rig {
    let mut rig = Rig::configure(name, "30s");
    append(&rig.sc, &rig.setup.config, keys);
    append(&rig.sc, &rig.sender, "timeout = \"20s\"\n");
    rig.spawn();
    rig
}

#[test]
fn item5_limits_are_configurable() {
    let d = donors();
    // max_uploads = 1: of two connections trickling, only one holds an upload (a temp file).
    let rig = configured("i10_max_uploads", "max_uploads = 1\n");
    let (a, b) = (rig.raw(), rig.raw());
    let _ta = trickle(&a, &d.home[1], 1);
    let _tb = trickle(&b, &d.home[2], 1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        temps(rig.archive()).len(),
        1,
        "max_uploads = 1 not honoured"
    );
    a.close();
    b.close();
    drop(rig);

    // stream_window = "64KiB": a stream waiting for its upload slot can send no more than that.
    let rig = configured(
        "i10_stream_window",
        "max_uploads = 1\nstream_window = \"64KiB\"\n",
    );
    let a = rig.raw();
    let _ta = trickle(&a, &d.home[1], 1);
    wait_for(Duration::from_secs(10), || {
        (temps(rig.archive()).len() == 1).then_some(())
    })
    .expect("the trickler holds the slot");
    let b = rig.raw();
    let seg = &d.home[2];
    let mut bytes = honest_request(&seg.name, &seg.bytes).encode();
    bytes.extend_from_slice(&seg.bytes);
    let sent = b.runtime().block_on(async {
        let mut sent = 0usize;
        let (mut tx, _rx) = b.connection().open_bi().await.expect("open");
        for chunk in bytes.chunks(4096) {
            match tokio::time::timeout(Duration::from_secs(1), tx.write_all(chunk)).await {
                Ok(Ok(())) => sent += chunk.len(),
                _ => break,
            }
        }
        sent
    });
    assert!(
        (60 << 10..=72 << 10).contains(&sent),
        "a waiting stream could send {sent} bytes with stream_window = 64KiB"
    );
    a.close();
    b.close();
    drop(rig);

    // max_connections = 1: while one connection has a stream in progress, a second one cannot
    // open a stream.
    let rig = configured("i10_max_conns", "max_connections = 1\n");
    let a = rig.raw();
    let _ta = trickle(&a, &d.home[1], 1);
    std::thread::sleep(Duration::from_millis(500));
    let b = rig.raw();
    let opened = b.runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(3), b.connection().open_bi())
            .await
            .is_ok()
    });
    assert!(
        !opened,
        "max_connections = 1 not honoured: a second connection opened a stream"
    );
    a.close();
    b.close();
}

#[test]
fn item5_bad_limits_are_refused_at_start() {
    let sc = Scenario::new("i10_bad_limits");
    let certs = CertSet::create(&sc, "certs");
    let setup = receiver_config(&sc, "receiver", &certs, None);
    let base = std::fs::read_to_string(&setup.config).expect("read config");
    for (line, key, value) in [
        ("max_uploads = 0", "max_uploads", "0"),
        ("max_uploads = 100000", "max_uploads", "100000"),
        ("max_connections = 0", "max_connections", "0"),
        (
            "stream_window = \"12 furlongs\"",
            "stream_window",
            "12 furlongs",
        ),
        ("stream_window = 100", "stream_window", "100"),
        ("min_upload_rate = \"0\"", "min_upload_rate", "0"),
    ] {
        sc.write_at(&setup.config, format!("{base}{line}\n"), 0o644);
        let out = serve_expecting_exit(&sc, &setup.config);
        assert_start_refused(&out, &[key, value]);
    }
}
