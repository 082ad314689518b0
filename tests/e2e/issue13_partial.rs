//! Issue 13 items 1-3: the daemon ships the open segment as `NAME.partial` (`partial_interval`),
//! the receiver keeps it durably and checked, and `promote` uses it: a crash of the primary
//! loses well under a second of acknowledged commits instead of the unfinished segment.
//!
//! - the Done-when scenario, with and without `partial_interval` (the difference is asserted);
//! - faults while a partial grows: the daemon SIGKILLed, the receiver SIGKILLed, the receiver
//!   away for a while (link cut); each resumes from what is durable and stores nothing wrong;
//! - the old primary coming back after promote: its partial appends and its finished segment
//!   of timeline 1 are refused.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walship_tests::failover::{assert_promoted, conninfo, Pair, PairOptions, CATCH_UP};
use walship_tests::process::wait_for;
use walship_tests::walship::{add_keys, archived_files, toml_str, Service};

/// Between two inserts of the client.
const ROW_EVERY: Duration = Duration::from_millis(20);

/// The acknowledged ids of the client, each with when its commit returned.
pub(crate) type Acks = Arc<Mutex<Vec<(i64, Instant)>>>;

/// A client inserting one row every 20 ms (synchronous_commit on) into `acks`, recording each
/// acknowledged id, until `stop` or the first error (the primary gone).
pub(crate) struct Writer {
    acks: Acks,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub(crate) fn start(conninfo: String, first_id: i64) -> Writer {
        let acks: Acks = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (acks.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                    .await
                    .expect("the client connects to the primary");
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                client
                    .batch_execute("set synchronous_commit = on")
                    .await
                    .expect("synchronous_commit on");
                let mut id = first_id;
                while !s.load(Ordering::SeqCst) {
                    let sql =
                        format!("insert into acks (id, note) values ({id}, repeat('x', 200))");
                    if client.batch_execute(&sql).await.is_err() {
                        break;
                    }
                    a.lock().expect("acks").push((id, Instant::now()));
                    id += 1;
                    tokio::time::sleep(ROW_EVERY).await;
                }
            });
        });
        Writer {
            acks,
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn acked(&self) -> Vec<(i64, Instant)> {
        self.acks.lock().expect("acks").clone()
    }

    pub(crate) fn finish(mut self) -> Vec<(i64, Instant)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("writer thread");
        }
        self.acked()
    }
}

/// A pair whose sender runs the daemon (pushes hand off to it) with `pgdata`, `conninfo` and,
/// when given, `partial_interval`.
pub(crate) fn pair_with_daemon(name: &str, partial_interval: Option<&str>) -> (Pair, Service) {
    let keys = partial_interval
        .map(|i| format!("partial_interval = \"{i}\"\n"))
        .unwrap_or_default();
    pair_with_daemon_keys(name, &keys)
}

/// As [`pair_with_daemon`], with `extra` lines in sender.toml.
pub(crate) fn pair_with_daemon_keys(name: &str, extra: &str) -> (Pair, Service) {
    let p = Pair::start(name, &PairOptions::default());
    let keys = format!(
        "socket = \"sender.sock\"\npgdata = {}\nconninfo = {}\n{extra}",
        toml_str(&p.primary.data_dir().display().to_string()),
        toml_str(&conninfo(&p.sc, p.primary.port()))
    );
    add_keys(&p.sender, &keys);
    let daemon = Service::spawn_daemon(&p.sc, &p.sender, "daemon");
    p.primary
        .sql("create table acks (id bigint primary key, note text, at timestamptz default clock_timestamp())");
    // Everything so far finished and archived: the rows below go into a fresh segment.
    let done = p.switch_segment();
    p.wait_archived(&done);
    (p, daemon)
}

/// The ids present on `cluster`.
fn present_ids(p: &Pair) -> Vec<i64> {
    let text = p
        .standby
        .sql("select coalesce(string_agg(id::text, ',' order by id), '') from acks");
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("an id"))
        .collect()
}

/// What one crash-and-promote run shows.
pub(crate) struct Loss {
    /// Acknowledged ids, in order, with their commit time.
    pub(crate) acked: Vec<(i64, Instant)>,
    pub(crate) present: Vec<i64>,
    pub(crate) killed_at: Instant,
    pub(crate) promote_stdout: String,
}

impl Loss {
    /// Acknowledged before `killed_at - margin` but missing on the promoted standby.
    pub(crate) fn lost_before(&self, margin: Duration) -> Vec<i64> {
        self.acked
            .iter()
            .filter(|(_, at)| *at + margin <= self.killed_at)
            .map(|(id, _)| *id)
            .filter(|id| self.present.binary_search(id).is_err())
            .collect()
    }

    /// The loss window: from the newest acknowledged commit present on the standby to the
    /// newest acknowledged one (0 when none is missing).
    pub(crate) fn window_ms(&self) -> u128 {
        let Some(&(_, newest)) = self.acked.last() else {
            return 0;
        };
        let kept = self
            .acked
            .iter()
            .rev()
            .find(|(id, _)| self.present.binary_search(id).is_ok())
            .map(|(_, at)| *at);
        match kept {
            Some(k) => newest.duration_since(k).as_millis(),
            None => newest.duration_since(self.acked[0].1).as_millis(),
        }
    }
}

/// Write for `for_how_long`, kill the primary (`pg_ctl stop -m immediate`) mid-segment,
/// promote, and collect what survived.
pub(crate) fn crash_and_promote(p: &Pair, for_how_long: Duration) -> Loss {
    let writer = Writer::start(conninfo(&p.sc, p.primary.port()), 1);
    std::thread::sleep(for_how_long);
    let killed_at = Instant::now();
    p.crash_primary();
    let acked = writer.finish();
    assert!(
        acked.len() > 50,
        "the client wrote only {} rows",
        acked.len()
    );
    let out = p.promote(&["--timeout", "90s"]);
    out.assert_success();
    let mut present = present_ids(p);
    present.sort_unstable();
    Loss {
        acked,
        present,
        killed_at,
        promote_stdout: out.stdout.clone(),
    }
}

/// The Done-when scenario: with partial_interval = "200ms" every commit acknowledged up to
/// 1 s before the kill is on the promoted standby; without it, the unfinished segment's rows
/// are lost. The promoted standby is writable on timeline 2 and holds exactly the rows the
/// primary committed up to the promotion point: ids 1..=n with no hole, none never attempted.
#[test]
fn done_when_partial_bounds_the_loss_to_under_a_second() {
    let (p, daemon) = pair_with_daemon("issue13_partial_on", Some("200ms"));
    let on = crash_and_promote(&p, Duration::from_secs(4));
    let lost = on.lost_before(Duration::from_secs(1));
    assert!(
        lost.is_empty(),
        "acknowledged more than 1 s before the kill but missing after promote: {lost:?}\n{}",
        on.promote_stdout
    );
    assert!(
        on.promote_stdout.contains("partial reached LSN:"),
        "promote did not use the partial:\n{}",
        on.promote_stdout
    );
    let n = on.present.len() as i64;
    assert_eq!(on.present, (1..=n).collect::<Vec<_>>(), "rows with holes");
    assert!(n <= on.acked.len() as i64 + 1, "rows never attempted");
    assert_promoted(&p.standby);
    eprintln!(
        "issue13: loss window with partial_interval 200ms: {} ms ({} of {} acknowledged rows kept)",
        on.window_ms(),
        n,
        on.acked.len()
    );
    // The partial went into the padded segment and is gone from the archive; the padded
    // segment is a whole segment.
    let archive = &p.setup.archive_dir;
    let names = archived_files(archive);
    assert!(
        !names.iter().any(|n| n.starts_with("00000001")
            && n.ends_with(".partial")
            && fs::metadata(archive.join(n)).map(|m| m.len()).unwrap_or(0) < 16 << 20),
        "a stream partial of timeline 1 is left after promote: {names:?}"
    );
    drop(daemon);
    drop(p);

    let (p, daemon) = pair_with_daemon("issue13_partial_off", None);
    let off = crash_and_promote(&p, Duration::from_secs(4));
    let lost = off.lost_before(Duration::from_secs(1));
    assert!(
        !lost.is_empty() && off.present.is_empty(),
        "without partial_interval the unfinished segment's rows should be lost; present {:?}",
        off.present
    );
    assert_promoted(&p.standby);
    eprintln!(
        "issue13: loss window without partial_interval: {} ms ({} acknowledged rows lost)",
        off.window_ms(),
        off.acked.len() - off.present.len()
    );
    drop(daemon);
}

/// The partial the receiver holds for the primary's open segment: (file name, length).
pub(crate) fn held_partial(archive: &Path) -> Option<(String, u64)> {
    archived_files(archive)
        .into_iter()
        .filter(|n| n.ends_with(".partial"))
        .max()
        .map(|n| {
            let len = fs::metadata(archive.join(&n)).map(|m| m.len()).unwrap_or(0);
            (n, len)
        })
}

/// Wait until the receiver's partial of the open segment reaches the primary's flush
/// position of now; returns its name.
pub(crate) fn wait_partial_caught_up(p: &Pair) -> String {
    let name = p
        .primary
        .sql("select pg_walfile_name(pg_current_wal_flush_lsn())");
    let offset: u64 = p
        .primary
        .sql("select (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint % (16*1024*1024)")
        .parse()
        .expect("offset");
    let want = format!("{name}.partial");
    let got = wait_for(CATCH_UP, || {
        match held_partial(&p.setup.archive_dir) {
            Some((n, len)) if n == want && len >= offset => return Some(()),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(100));
        None
    });
    assert!(
        got.is_some(),
        "the receiver's partial did not reach {want} at {offset} bytes: {:?}",
        held_partial(&p.setup.archive_dir)
    );
    want
}

/// After the faults: the segment finishes, is archived whole, its partial is retired (it was
/// a prefix of it: nothing wrong was stored), and the receiver logged no error.
pub(crate) fn finish_and_check(p: &Pair, partial: &str) {
    let seg = partial.trim_end_matches(".partial").to_string();
    let done = p.switch_segment();
    assert_eq!(done, seg, "the segment the partial was for finished");
    p.wait_archived(&done);
    let gone = wait_for(CATCH_UP, || {
        (!archived_files(&p.setup.archive_dir)
            .iter()
            .any(|n| n == partial))
        .then_some(())
    });
    assert!(
        gone.is_some(),
        "{partial} was not retired after {seg} was stored: {:?}",
        archived_files(&p.setup.archive_dir)
    );
    let log = p.rx.log_text();
    assert!(
        !log.lines()
            .any(|l| l.contains("refused") && l.contains(".partial")),
        "an append was refused:\n{log}"
    );
    assert!(
        !log.contains("is not a prefix"),
        "the receiver held a partial that is not a prefix of the finished segment:\n{log}"
    );
    p.rx.check_log(&["went away", "connection lost", "timed out"]);
    // The receiver held the whole segment as its partial: the daemon sealed it rather than
    // upload it again, and what is stored is the primary's segment byte for byte.
    p.rx.assert_logged("sealed: the partial held whole is the finished segment");
    let stored = fs::read(p.setup.archive_dir.join(&seg)).expect("the finished segment");
    if let Ok(primary) = fs::read(p.primary.data_dir().join("pg_wal").join(&seg)) {
        assert!(stored == primary, "{seg} stored is not the primary's");
    }
}

/// The daemon SIGKILLed, then the receiver SIGKILLed, then the receiver away for 3 s (the
/// link cut), each while the partial grows: each time shipping resumes from what the receiver
/// holds durably and the partial catches up with the primary's flush position; at the end the
/// partial is a prefix of the finished segment.
#[test]
fn faults_while_a_partial_grows_resume_and_store_nothing_wrong() {
    let (mut p, mut daemon) = pair_with_daemon("issue13_faults", Some("100ms"));
    let writer = Writer::start(conninfo(&p.sc, p.primary.port()), 1);
    std::thread::sleep(Duration::from_secs(1));
    let partial = wait_partial_caught_up(&p);

    daemon.kill9();
    std::thread::sleep(Duration::from_millis(700));
    daemon.start();
    assert_eq!(
        wait_partial_caught_up(&p),
        partial,
        "after the daemon's SIGKILL"
    );

    p.rx.kill9();
    std::thread::sleep(Duration::from_millis(700));
    p.rx.start();
    assert_eq!(
        wait_partial_caught_up(&p),
        partial,
        "after the receiver's SIGKILL"
    );

    p.rx.stop();
    std::thread::sleep(Duration::from_secs(3));
    p.rx.start();
    assert_eq!(
        wait_partial_caught_up(&p),
        partial,
        "after the link came back"
    );

    // status shows it: segment, LSN reached, age.
    let st = p.status();
    assert_eq!(
        st["partial"]["segment"].as_str(),
        Some(partial.trim_end_matches(".partial")),
        "{st:#}"
    );
    assert!(
        st["partial"]["lsn"]
            .as_str()
            .is_some_and(|l| l.contains('/')),
        "{st:#}"
    );
    assert!(st["partial"]["age_seconds"].as_f64().is_some(), "{st:#}");

    let acked = writer.finish();
    assert!(
        acked.len() > 50,
        "the client wrote only {} rows",
        acked.len()
    );
    finish_and_check(&p, &partial);
    daemon.check_log(&[
        "open segment not shipped",
        "warm connection",
        "connection to receiver",
        "retrying",
    ]);
}

/// `compression = "lz4"`: the appends to the open segment go in LZ4 blocks like any upload,
/// the partial is a byte prefix of pg_wal's segment, and the finished segment is sealed from it.
#[test]
fn lz4_appends_grow_the_partial_and_seal_it() {
    let (p, daemon) = pair_with_daemon_keys(
        "issue13_lz4_partial",
        "partial_interval = \"100ms\"\ncompression = \"lz4\"\n",
    );
    let writer = Writer::start(conninfo(&p.sc, p.primary.port()), 1);
    std::thread::sleep(Duration::from_secs(1));
    let partial = wait_partial_caught_up(&p);
    let acked = writer.finish();
    assert!(
        acked.len() > 20,
        "the client wrote only {} rows",
        acked.len()
    );
    finish_and_check(&p, &partial);
    daemon.check_log(&[]);
}

/// After promote, the old primary comes back: its appends to the timeline-1 partial and its
/// finished timeline-1 segment are refused, and the archive's timeline-1 files stay as they
/// were.
#[test]
fn the_old_primary_coming_back_after_promote_is_fenced() {
    let (mut p, daemon) = pair_with_daemon("issue13_old_primary", Some("200ms"));
    let loss = crash_and_promote(&p, Duration::from_secs(2));
    assert!(loss.lost_before(Duration::from_secs(1)).is_empty());
    let archive = p.setup.archive_dir.clone();
    let snapshot = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = archived_files(dir)
            .into_iter()
            .filter(|n| n.starts_with("00000001") && !n.ends_with(".partial"))
            .map(|n| {
                let b = fs::read(dir.join(&n)).expect("read archived file");
                (n, b)
            })
            .collect();
        v.sort();
        v
    };
    let before = snapshot(&archive);

    // The old primary restarts (crash recovery) and writes more on timeline 1.
    p.primary.start();
    let writer = Writer::start(conninfo(&p.sc, p.primary.port()), 1_000_000);
    std::thread::sleep(Duration::from_secs(2));
    let _ = writer.finish();
    let fenced = wait_for(CATCH_UP, || {
        daemon
            .log_text()
            .contains("closed: the standby was promoted")
            .then_some(())
    });
    assert!(
        fenced.is_some(),
        "the daemon's appends of the old primary were not refused as fenced:\n{}",
        daemon.log_text()
    );
    // Its finished timeline-1 segment: refused too (the archiver keeps failing).
    let _ = p.primary.sql("select pg_switch_wal()");
    let failed = wait_for(CATCH_UP, || {
        let n: u64 = p
            .primary
            .sql("select failed_count from pg_stat_archiver")
            .parse()
            .unwrap_or(0);
        (n > 0).then_some(())
    });
    assert!(
        failed.is_some(),
        "the old primary's finished segment was not refused"
    );
    assert_eq!(
        snapshot(&archive),
        before,
        "timeline-1 files changed after promote"
    );
    p.rx.assert_logged("fenced");
    p.primary.stop();
    drop(daemon);
}
