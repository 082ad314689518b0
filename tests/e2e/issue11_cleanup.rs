//! Issue 11, retention: `walship-receiver cleanup %r` as the standby's `archive_cleanup_command`.
//!
//! A primary archives pgbench's WAL and many switched segments through walship to a hot standby
//! whose `archive_cleanup_command` is `walship-receiver cleanup %r`; `CHECKPOINT` on the standby
//! forces restartpoints, each of which runs it. With `retain_for = "1h"` nothing goes; `--dry-run`
//! lists what would go and removes nothing; a name that is not a WAL file name is exit 2 and
//! removes nothing; without `retain_for` the archive shrinks to what follows `%r`, the state
//! files stay, and `promote` still makes a writable primary with the old primary's data. After
//! the promotion the new timeline's history file stays while a cleanup with a `%r` on timeline 2
//! removes timeline 1's older segments.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use walship_tests::failover::{
    assert_promoted, pgbench_digest, run_receiver, Pair, PairOptions, CATCH_UP,
};
use walship_tests::process::wait_for;
use walship_tests::walship::{add_keys, archive_names, archived_files, assert_pushed};

#[test]
fn issue11_cleanup() {
    let t0 = Instant::now();
    // 1 MiB segments: many segments from little WAL, and little disk.
    let p = Pair::start(
        "issue11_cleanup",
        &PairOptions {
            wal_segsize_mb: Some(1),
            ..PairOptions::default()
        },
    );
    let cleanup_command = format!(
        "archive_cleanup_command = '{} --config {} cleanup %r'\n",
        p.sc.bin("walship-receiver").display(),
        p.setup.config.display()
    );
    p.standby.append_conf(&cleanup_command);
    p.standby.sql("select pg_reload_conf()");
    add_keys(&p.setup.config, "retain_for = \"1h\"\n");

    bad_names_remove_nothing(&p);

    // Many segments: pgbench's initial load and a run, then switched segments of filler.
    p.primary.pgbench(&["-i", "-s", "2", "-q"]);
    p.primary.pgbench(&["-n", "-c", "2", "-T", "3"]);
    p.primary
        .sql("create table filler (id int, pad text); insert into filler values (0, '')");
    write_segments(&p, 8);

    let (r1, older) = retain_for_keeps_everything(&p);
    let no_retain = dry_run_removes_nothing(&p, &r1, &older);
    // Without retain_for, the next restartpoint removes everything before its %r.
    fs::copy(&no_retain, &p.setup.config).expect("rewrite the receiver config");
    p.primary.pgbench(&["-n", "-c", "2", "-T", "3"]);
    write_segments(&p, 3);
    restartpoint_removes_what_precedes(&p, older.len());
    eprintln!("issue11_cleanup: cleaned up after {:.1?}", t0.elapsed());

    promote_and_compare(&p);
    history_stays_across_timelines(&p);
    eprintln!("issue11_cleanup: done after {:.1?}", t0.elapsed());
    let Pair { rx, .. } = p;
    rx.stop_and_check(&[]);
}

/// Names that are not segment names are refused with exit 2 and one line; nothing is removed,
/// even with a name that sorts after everything.
fn bad_names_remove_nothing(p: &Pair) {
    p.primary.sql("create table early (id int)");
    let last = p.switch_segment();
    p.wait_archived(&last);
    let before = archive_names(&p.setup.archive_dir);
    for bad in [
        "00000001.history",
        "not-a-wal-file",
        "0000000100000000000000ff",
        "../000000010000000000000099",
        "FFFFFFFFFFFFFFFFFFFFFFFF0",
    ] {
        let out = run_receiver(&p.sc, &p.setup.config, "cleanup", &[bad]);
        out.assert_code(2);
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "one line for {bad:?}\n{out}");
        assert!(lines[0].contains("nothing was removed"), "{bad:?}\n{out}");
        assert_eq!(archive_names(&p.setup.archive_dir), before, "{bad:?}");
    }
}

/// With `retain_for = "1h"`, a restartpoint's cleanup keeps everything (all of it was stored
/// less than an hour ago) and says so. Returns its `%r` and the WAL files before it.
fn retain_for_keeps_everything(p: &Pair) -> (String, Vec<String>) {
    let before = archive_names(&p.setup.archive_dir);
    let r1 = restartpoint(p);
    let older = wal_before(&p.setup.archive_dir, &r1);
    assert!(
        older.len() >= 8,
        "expected many segments before {r1}, found {older:?}"
    );
    let log = wait_logged(p, &format!("cleanup: removed 0 files before {r1}"));
    assert!(
        log.contains(&format!(
            "kept {} files stored less than retain_for (1h) ago",
            older.len()
        )),
        "the standby's log should say retain_for kept {} files:\n{log}",
        older.len()
    );
    assert_all_present(&p.setup.archive_dir, &before, "with retain_for = 1h");
    (r1, older)
}

/// `--dry-run` (with a config without retain_for, returned) lists exactly the WAL files before
/// `r1`, oldest first, and removes nothing.
fn dry_run_removes_nothing(p: &Pair, r1: &str, older: &[String]) -> PathBuf {
    let before = archive_names(&p.setup.archive_dir);
    let no_retain = config_without_retain_for(p);
    let dry = run_receiver(&p.sc, &no_retain, "cleanup", &["--dry-run", r1]);
    dry.assert_code(0);
    let listed: Vec<&str> = dry.stdout.lines().collect();
    let mut sorted_older = older.to_vec();
    sorted_older.sort_by_key(|n| (n[8..24].to_string(), n.clone()));
    assert_eq!(listed, sorted_older, "dry run lists\n{dry}");
    assert!(
        older.iter().any(|n| n.ends_with(".backup")),
        "pg_basebackup's backup history file should be among {older:?}"
    );
    assert_all_present(&p.setup.archive_dir, &before, "after --dry-run");
    no_retain
}

/// A restartpoint without retain_for: every WAL file before its `%r` goes (more than the
/// `at_least` of the first round), each named in the standby's log; the rest and the state
/// files stay.
fn restartpoint_removes_what_precedes(p: &Pair, at_least: usize) {
    let state_before = state_files(&p.setup.archive_dir);
    let files_before = archived_files(&p.setup.archive_dir);
    let r2 = restartpoint(p);
    let log = wait_logged(p, &format!("before {r2}, "));
    let gone: Vec<&String> = files_before.iter().filter(|n| precedes(n, &r2)).collect();
    assert!(gone.len() > at_least, "{gone:?}");
    for name in &gone {
        assert!(
            log.contains(&format!("cleanup: removed {name} (")),
            "the standby's log does not name the removal of {name}:\n{log}"
        );
    }
    let after = archived_files(&p.setup.archive_dir);
    assert!(
        wal_before(&p.setup.archive_dir, &r2).is_empty(),
        "left before {r2}: {after:?}"
    );
    let kept: Vec<&String> = files_before.iter().filter(|n| !gone.contains(n)).collect();
    assert_all_present(&p.setup.archive_dir, &kept, "after the cleanup");
    assert!(
        after.len() < files_before.len(),
        "the archive did not shrink"
    );
    assert_eq!(state_files(&p.setup.archive_dir), state_before);
    eprintln!(
        "issue11_cleanup: {} files before, {} after cleanup at {r2}",
        files_before.len(),
        after.len()
    );
}

/// Fill and switch `n` segments on the primary and wait until the last is archived.
fn write_segments(p: &Pair, n: usize) {
    let mut last = String::new();
    for i in 0..n {
        p.primary.sql(&format!(
            "insert into filler select {i}, repeat('x', 200) from generate_series(1, 5000)"
        ));
        last = p.switch_segment();
    }
    let (_, failed) = p.wait_archived(&last);
    assert_eq!(failed, 0, "the primary's archive_command failed");
}

/// A checkpoint on the primary, replayed by the standby, then `CHECKPOINT` on the standby: a
/// restartpoint, which runs archive_cleanup_command. Returns its `%r`.
fn restartpoint(p: &Pair) -> String {
    p.primary.sql("checkpoint");
    let lsn = p.primary.switch_wal();
    p.wait_archived(&p.primary.walfile_name(&lsn));
    p.wait_replayed(&lsn);
    p.standby.sql("checkpoint");
    p.standby
        .sql("select redo_wal_file from pg_control_checkpoint()")
}

/// Wait until the standby's log has a line containing `needle`; the whole log.
fn wait_logged(p: &Pair, needle: &str) -> String {
    let path = p.standby.log_path();
    let found = wait_for(CATCH_UP, || {
        let log = fs::read_to_string(&path).unwrap_or_default();
        if log.contains(needle) {
            return Some(log);
        }
        std::thread::sleep(Duration::from_millis(200));
        None
    });
    found.unwrap_or_else(|| {
        panic!(
            "the standby's log {} never said {needle:?}:\n{}",
            path.display(),
            fs::read_to_string(&path).unwrap_or_default()
        )
    })
}

/// Segments, partials and backup history files in `dir` whose position precedes `restart`'s.
fn wal_before(dir: &Path, restart: &str) -> Vec<String> {
    archived_files(dir)
        .into_iter()
        .filter(|n| precedes(n, restart))
        .collect()
}

/// A segment, partial or backup history name whose position (the 16 hex digits after the
/// timeline) comes before `restart`'s.
fn precedes(name: &str, restart: &str) -> bool {
    name.len() >= 24 && !name.starts_with('.') && name[8..24] < restart[8..24]
}

/// walship's own files in `dir`.
fn state_files(dir: &Path) -> Vec<String> {
    let state: Vec<String> = archive_names(dir)
        .into_iter()
        .filter(|n| n.starts_with("walship."))
        .collect();
    for required in ["walship.cluster", "walship.fence.lock", "walship.lock"] {
        assert!(
            state.iter().any(|n| n == required),
            "{required} missing: {state:?}"
        );
    }
    assert!(
        state.iter().any(|n| n.starts_with("walship.restore.")),
        "no restore record: {state:?}"
    );
    state
}

fn assert_all_present<S: AsRef<str>>(dir: &Path, names: &[S], when: &str) {
    let now = archive_names(dir);
    for name in names {
        let name = name.as_ref();
        assert!(
            now.iter().any(|n| n == name),
            "{name} was removed {when}: {now:?}"
        );
    }
}

/// The receiver config without its `retain_for` line, as `<scenario>/no-retain.toml`.
fn config_without_retain_for(p: &Pair) -> PathBuf {
    let text = fs::read_to_string(&p.setup.config).expect("read receiver config");
    let kept: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("retain_for"))
        .map(|l| format!("{l}\n"))
        .collect();
    let path = p.sc.path("no-retain.toml");
    p.sc.write_at(&path, kept, 0o644);
    path
}

/// The primary dies; promote still finds everything it needs and the data is the primary's.
fn promote_and_compare(p: &Pair) {
    let digest = pgbench_digest(&p.primary);
    let filler = p.primary.sql("select count(*), sum(id) from filler");
    p.crash_primary();
    let out = p.promote(&["--timeout", "60"]);
    out.assert_code(0);
    assert_promoted(&p.standby);
    assert_eq!(pgbench_digest(&p.standby), digest, "pgbench tables differ");
    assert_eq!(
        p.standby.sql("select count(*), sum(id) from filler"),
        filler
    );
}

/// The new timeline's history file, stored, survives a cleanup whose %r is on timeline 2, which
/// removes timeline 1's segments before that position; the state files stay.
fn history_stays_across_timelines(p: &Pair) {
    let history = "00000002.history";
    assert_pushed(
        &p.sc,
        &p.sender,
        &p.standby.wal_dir().join(history),
        history,
    );
    p.standby.sql("create table on_timeline_2 (id int)");
    let lsn = p.standby.switch_wal();
    let r3 = p.standby.walfile_name(&lsn);
    assert!(r3.starts_with("00000002"), "{r3}");
    let state_before = state_files(&p.setup.archive_dir);
    let out = run_receiver(&p.sc, &p.setup.config, "cleanup", &[&r3]);
    out.assert_code(0);
    let names = archive_names(&p.setup.archive_dir);
    assert!(names.iter().any(|n| n == history), "{names:?}");
    assert!(names.iter().any(|n| n == "walship.fence"), "{names:?}");
    assert_eq!(state_files(&p.setup.archive_dir), state_before);
    assert!(
        wal_before(&p.setup.archive_dir, &r3).is_empty(),
        "left before {r3}: {names:?}\n{out}"
    );
}

/// Hostile files under WAL names before `%r`: a symlink to a file outside the archive and a FIFO
/// are left where they are (one line each), the link's target is untouched, cleanup does not
/// block on the FIFO, and the regular segment before `%r` goes.
#[test]
fn issue11_cleanup_leaves_links_and_fifos() {
    use walship_tests::walship::receiver_config;
    use walship_tests::{CertSet, Scenario};
    let sc = Scenario::new("i11_cleanup_links");
    let certs = CertSet::create(&sc, "certs");
    let setup = receiver_config(&sc, "receiver", &certs, None);
    let dir = &setup.archive_dir;
    let victim = sc.path("victim.conf");
    sc.write_at(&victim, "keep me\n", 0o644);
    sc.write_at(
        &dir.join("000000010000000000000001"),
        vec![0u8; 4096],
        0o640,
    );
    std::os::unix::fs::symlink(&victim, dir.join("000000010000000000000002")).expect("symlink");
    let fifo = dir.join("000000010000000000000003");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo {}", fifo.display());
    let out = run_receiver(&sc, &setup.config, "cleanup", &["000000010000000000000005"]);
    out.assert_code(0);
    let left: Vec<&str> = out
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("cleanup: left"))
        .collect();
    assert_eq!(left.len(), 2, "one line per link or FIFO\n{out}");
    let names = archive_names(dir);
    assert!(
        !names.contains(&"000000010000000000000001".to_string()),
        "{names:?}\n{out}"
    );
    for kept in ["000000010000000000000002", "000000010000000000000003"] {
        assert!(
            names.contains(&kept.to_string()),
            "{kept} left\n{names:?}\n{out}"
        );
    }
    assert_eq!(fs::read_to_string(&victim).expect("victim"), "keep me\n");
}
