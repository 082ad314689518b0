//! Soak: a primary under pgbench for minutes, archiving through a UDP proxy with
//! `walship-sender push`, while the receiver is SIGKILLed every 20-40 s (restarted 0-3 s later)
//! and the link is cut now and then for 2-8 s; then failover.
//!
//! Not in the normal suite (`#[ignore]`): `bash tests/soak.sh [MINUTES]` (default 10) builds the
//! binaries and runs it with `WALSHIP_SOAK_SECS`. Faults are drawn from a printed seed;
//! `WALSHIP_SOAK_SEED=N` repeats the draw (the timing of the system under test is not repeated).
//!
//! What must hold at the end: the primary archived its last segment; promote exits 0 and the
//! promoted standby holds exactly the primary's pgbench data; the archive holds every segment from
//! the first to the last, on timeline 1, each byte-identical to the primary's copy where that
//! still exists; every archived file was stored exactly once (one file per name, one "stored"
//! line in the receiver's log; other attempts were "already stored with identical content" or
//! failures); and faults really happened (the archiver's failed_count > 0).

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use walship_tests::failover::{next_segment, pgbench_digest, Pair, PairOptions};
use walship_tests::process::wait_for;
use walship_tests::proxy::{Proxy, Rng};
use walship_tests::walship::{archived_files, sender_config, unexpected_lines};

/// Default length of the load phase.
const DEFAULT_SECS: u64 = 600;
/// The first segment of a cluster's timeline 1: archiving starts with it.
const FIRST_SEGMENT: &str = "000000010000000000000001";
/// How long the archiver may take to ship the last segment once the faults stop (it may be
/// sleeping after failures; every failed push takes up to connect_timeout or timeout).
const DRAIN: Duration = Duration::from_secs(300);
/// Receiver log lines at ERROR/WARN that a soak with kills and cuts may produce.
const ALLOWED: &[&str] = &["removed leftover of an interrupted transfer"];

#[test]
#[ignore = "soak: minutes long; run with `bash tests/soak.sh [MINUTES]`"]
fn soak() {
    let secs: u64 = match std::env::var("WALSHIP_SOAK_SECS") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|e| panic!("WALSHIP_SOAK_SECS={s:?}: {e}")),
        Err(_) => DEFAULT_SECS,
    };
    let seed = soak_seed();
    let mut rng = Rng::new(seed);
    let t0 = Instant::now();

    let mut p = Pair::start(
        "soak",
        &PairOptions {
            archive_timeout: Some("5s"),
            archive: false,
            ..PairOptions::default()
        },
    );
    // The pair's receiver is the one the faults SIGKILL and restart (same config, one log).
    let log = p.rx.log_path().to_path_buf();

    let px = Proxy::start(&p.setup.addr, seed);
    let sender = sender_config(
        &p.sc,
        "sender-proxy",
        &px.addr(),
        &p.certs.ca(),
        &p.certs.client_cert(),
        &p.certs.client_key(),
        Some("3s"),
    );
    let mut f = OpenOptions::new()
        .append(true)
        .open(&sender)
        .expect("open sender config");
    writeln!(f, "timeout = \"20s\"").expect("append timeout");
    drop(f);
    p.primary.archive_with_push(&sender);
    p.primary.pgbench(&["-i", "-s", "2", "-q"]);

    // Load and faults, for `secs`.
    let (mut kills, mut cuts) = (0u32, 0u32);
    let bench = thread::scope(|s| {
        let bench = s.spawn(|| {
            let cmd =
                p.sc.cmd(p.sc.pg_tool("pgbench"))
                    .arg("-h")
                    .arg(p.sc.dir())
                    .arg("-p")
                    .arg(p.primary.port().to_string())
                    .args([
                        "-U", "postgres", "-n", "-c", "2", "-j", "2", "-R", "300", "-T",
                    ])
                    .arg(secs.to_string())
                    .arg("postgres")
                    .timeout(Duration::from_secs(secs + 180));
            p.sc.run(&cmd)
        });
        let started = Instant::now();
        let at = || format!("t={:>4}s", started.elapsed().as_secs());
        let mut next_kill = started + rng.millis(20_000, 40_000);
        let mut next_cut = started + rng.millis(10_000, 60_000);
        let mut heal_at: Option<Instant> = None;
        while !bench.is_finished() {
            let now = Instant::now();
            if heal_at.is_some_and(|h| now >= h) {
                px.cut(false);
                heal_at = None;
                eprintln!("soak {}: link healed", at());
            }
            if now >= next_kill {
                p.rx.kill9();
                kills += 1;
                let pause = rng.millis(0, 3_000);
                thread::sleep(pause);
                p.rx.start();
                eprintln!(
                    "soak {}: receiver SIGKILLed (#{kills}), restarted after {pause:.1?}",
                    at()
                );
                next_kill = Instant::now() + rng.millis(20_000, 40_000);
            }
            if now >= next_cut && heal_at.is_none() {
                let length = rng.millis(2_000, 8_000);
                px.cut(true);
                cuts += 1;
                heal_at = Some(now + length);
                next_cut = now + length + rng.millis(20_000, 60_000);
                eprintln!("soak {}: link cut (#{cuts}) for {length:.1?}", at());
            }
            thread::sleep(Duration::from_millis(100));
        }
        px.cut(false);
        bench.join().expect("pgbench thread")
    });
    bench.assert_success();
    let transactions: u64 = bench
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in pgbench's output\n{bench}"));

    // Faults stopped: the archiver must catch up with a final switch.
    let switch_lsn = p.primary.switch_wal();
    let last = p.primary.walfile_name(&switch_lsn);
    let query = "select archived_count, failed_count, coalesce(last_archived_wal, '') \
                 from pg_stat_archiver";
    let drained = Instant::now();
    let stat = wait_for(DRAIN, || {
        let s = p.primary.sql(query);
        let f: Vec<String> = s.split('|').map(str::to_string).collect();
        // A later archive_timeout switch (a checkpoint record) may move it past `last`.
        (f.len() == 3 && f[2].len() == 24 && f[2] >= last).then_some(f)
    })
    .unwrap_or_else(|| {
        panic!(
            "the primary did not archive {last} within {DRAIN:?} of the faults stopping: {}",
            p.primary.sql("select * from pg_stat_archiver")
        )
    });
    let archived_count: u64 = stat[0].parse().expect("archived_count");
    let failed_count: u64 = stat[1].parse().expect("failed_count");
    let last_archived = stat[2].clone();
    eprintln!(
        "soak: the archiver shipped {last} {:.1?} after the faults stopped (last archived \
         {last_archived})",
        drained.elapsed()
    );
    let digest = pgbench_digest(&p.primary);
    p.crash_primary();

    let promote = p.promote(&["--timeout", "300"]);
    let promoted_digest = if promote.code() == 0 {
        pgbench_digest(&p.standby)
    } else {
        String::new()
    };

    // The archive: temp files of abandoned uploads go with the receiver's idle timeout.
    let archive = p.setup.archive_dir.clone();
    let temps_gone = wait_for(Duration::from_secs(90), || {
        (!archive_names(&archive)
            .iter()
            .any(|n| n.starts_with(".walship-tmp.")))
        .then_some(())
    })
    .is_some();
    let files = archived_files(&archive);
    let segments: Vec<&String> = files.iter().filter(|n| is_segment(n)).collect();
    let mut gaps = Vec::new();
    let mut expected = FIRST_SEGMENT.to_string();
    let last_in_archive = segments.last().map(|s| s.as_str()).unwrap_or("");
    let upto = if last_in_archive > last_archived.as_str() {
        last_in_archive
    } else {
        last_archived.as_str()
    };
    while expected.as_str() <= upto {
        if !segments.iter().any(|s| **s == expected) {
            gaps.push(expected.clone());
        }
        expected = next_segment(&expected);
    }
    let off_timeline: Vec<&&String> = segments
        .iter()
        .filter(|s| !s.starts_with("00000001"))
        .collect();
    let (mut compared, mut differ) = (0usize, Vec::new());
    for name in &segments {
        let Ok(theirs) = fs::read(p.primary.wal_dir().join(name)) else {
            continue;
        };
        compared += 1;
        if fs::read(archive.join(name)).expect("read archived segment") != theirs {
            differ.push(name.to_string());
        }
    }

    // Exactly once: one "stored" line per archived file, none for anything else.
    p.rx.stop();
    let text = String::from_utf8_lossy(&fs::read(&log).expect("read receiver log")).into_owned();
    let mut stored: BTreeMap<String, usize> = BTreeMap::new();
    let mut already = 0usize;
    for line in text.lines() {
        let Some(name) = line
            .split_once("segment=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(n, _)| n)
        else {
            continue;
        };
        if line.contains("walship_receiver::serve: stored ms=") {
            *stored.entry(name.to_string()).or_default() += 1;
        } else if line.contains("walship_receiver::serve: already stored with identical content") {
            already += 1;
        }
    }
    let not_once: Vec<String> = files
        .iter()
        .filter(|n| stored.get(*n).copied().unwrap_or(0) != 1)
        .map(|n| format!("{n} stored {} times", stored.get(n).copied().unwrap_or(0)))
        .chain(
            stored
                .keys()
                .filter(|n| !files.contains(n))
                .map(|n| format!("{n} logged stored but not in the archive")),
        )
        .collect();
    let leftovers = text
        .lines()
        .filter(|l| l.contains("removed leftover of an interrupted transfer"))
        .count();
    let abandoned = text
        .lines()
        .filter(|l| l.contains("partial upload discarded"))
        .count();
    let unexpected = unexpected_lines(&text, ALLOWED);
    let equal = promote.code() == 0 && promoted_digest == digest;

    eprintln!(
        "\n===== soak summary =====\n\
         duration            {:.1?} load ({secs} s requested), {:.1?} in all\n\
         seed                {seed} (repeat with WALSHIP_SOAK_SEED={seed})\n\
         receiver kills      {kills} (SIGKILL; {leftovers} leftover temp files removed at restart)\n\
         link cuts           {cuts}\n\
         pgbench             {transactions} transactions (-c 2 -R 300)\n\
         segments shipped    {} segments {FIRST_SEGMENT}..{last_in_archive} (+{} other files); \
         archived_count {archived_count}\n\
         duplicates          {already} pushes answered \"already stored\"; {abandoned} partial \
         uploads discarded\n\
         archiver failures   failed_count {failed_count}\n\
         segments lost       {} {gaps:?}\n\
         byte-identical      {}/{compared} still in the primary's pg_wal {differ:?}\n\
         stored exactly once {} {not_once:?}\n\
         promote             exit {} after {:.1?}\n\
         checksums equal     {}\n\
         unexpected log      {} lines\n\
         ========================",
        Duration::from_secs(secs),
        t0.elapsed(),
        segments.len(),
        files.len() - segments.len(),
        gaps.len(),
        compared - differ.len(),
        if not_once.is_empty() { "yes" } else { "NO" },
        promote.code(),
        promote.elapsed,
        if equal { "yes" } else { "NO" },
        unexpected.len(),
    );

    promote.assert_code(0);
    assert_eq!(
        promoted_digest, digest,
        "the promoted standby's pgbench data differ from the primary's"
    );
    assert!(
        gaps.is_empty(),
        "segments missing from the archive: {gaps:?}"
    );
    assert!(
        off_timeline.is_empty(),
        "segments not on timeline 1: {off_timeline:?}"
    );
    assert!(
        segments.first().map(|s| s.as_str()) == Some(FIRST_SEGMENT),
        "the archive does not start at {FIRST_SEGMENT}: {:?}",
        segments.first()
    );
    assert!(
        differ.is_empty(),
        "archived segments differ from the primary's: {differ:?}"
    );
    assert!(
        compared > 0,
        "no archived segment left in the primary's pg_wal to compare"
    );
    assert!(
        failed_count > 0,
        "pg_stat_archiver.failed_count is 0: the faults never hit a push"
    );
    assert!(
        kills > 0,
        "the receiver was never killed (run longer than 40 s)"
    );
    assert!(not_once.is_empty(), "not stored exactly once: {not_once:?}");
    assert!(
        temps_gone,
        "temp files left in the archive: {:?}",
        archive_names(&archive)
    );
    assert!(
        unexpected.is_empty(),
        "unexpected ERROR/WARN lines in the receiver log:\n{}",
        unexpected.join("\n")
    );
}

/// The seed: `WALSHIP_SOAK_SEED` if set, else the clock; printed either way.
fn soak_seed() -> u64 {
    let seed = match std::env::var("WALSHIP_SOAK_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|e| panic!("WALSHIP_SOAK_SEED={s:?} is not a u64: {e}")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    eprintln!("soak: seed {seed} (repeat with WALSHIP_SOAK_SEED={seed})");
    seed
}

/// A WAL segment name: 24 upper-case hex digits.
fn is_segment(name: &str) -> bool {
    name.len() == 24
        && name
            .chars()
            .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c))
}

/// Every name in `dir`, sorted.
fn archive_names(dir: &Path) -> Vec<String> {
    walship_tests::walship::archive_names(dir)
}
