//! Issue 10, items 6, 7, 8, 12 and 13 (and the restore half of item 4): what `restore` serves,
//! where it keeps its record, and how the receiver opens what sits in archive_dir.
//!
//! - 6: a symbolic link where a state file is expected (the restore record's spare) is never
//!   written through; a link under a stored WAL name is not compared through on a push.
//! - 7: only regular files of the right shape are served: a short file, a link, a FIFO under a
//!   segment name are one error line and exit 2, without hanging; a FIFO under a stored name does
//!   not block the receiver's compare on a duplicate push.
//! - 8: a missing archive_dir is exit 2 with a line saying so, not "not archived".
//! - 12: the restored file's mode follows the caller's umask (0600 under PostgreSQL's 0077).
//! - 13: each standby (data directory) keeps its own restore record; `status` and `promote` read
//!   the one of the standby they talk to.
//! - 4 (restore half): a read-only archive_dir still serves, silently.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use walship_tests::failover::{
    next_segment, promote_line, run_receiver, status_json, Pair, PairOptions,
};
use walship_tests::walship::{archive_names, assert_pushed, push, toml_str};
use walship_tests::{donors, Output, Scenario};

use crate::Served;

/// A restore that does not finish within this has hung (it takes milliseconds).
const RESTORE_DEADLINE: Duration = Duration::from_secs(10);

/// `walship-receiver restore NAME DEST` as PostgreSQL runs it: in `cwd` (the standby's data
/// directory) under `umask`.
fn restore_as_pg(
    sc: &Scenario,
    config: &Path,
    name: &str,
    dest: &Path,
    cwd: &Path,
    umask: &str,
) -> Output {
    let cmd = sc
        .cmd("/bin/sh")
        .arg("-c")
        .arg(format!(
            "umask {umask}; exec \"$0\" --config \"$1\" restore \"$2\" \"$3\""
        ))
        .arg(sc.bin("walship-receiver"))
        .arg(config)
        .arg(name)
        .arg(dest)
        .cwd(cwd)
        .timeout(RESTORE_DEADLINE);
    sc.run(&cmd)
}

/// Require exit 2 and exactly one stderr line starting "walship-receiver: " mentioning `what`.
fn assert_restore_error(out: &Output, what: &[&str]) {
    out.assert_code(2);
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "one error line expected\n{out}");
    assert!(lines[0].starts_with("walship-receiver: "), "\n{out}");
    let lower = lines[0].to_lowercase();
    assert!(
        what.iter().any(|w| lower.contains(&w.to_lowercase())),
        "the error should mention one of {what:?}\n{out}"
    );
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    // SAFETY: mkfifo reads a NUL-terminated path that lives for the call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// A receiver config like `base` with `pgdata = dir` (replacing any pgdata line).
fn config_with_pgdata(
    sc: &Scenario,
    base: &Path,
    name: &str,
    pgdata: Option<&Path>,
) -> std::path::PathBuf {
    let text = fs::read_to_string(base).expect("read config");
    let mut out: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("pgdata"))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Some(p) = pgdata {
        out.push_str(&format!("pgdata = {}\n", toml_str(&p.to_string_lossy())));
    }
    let path = sc.path(&format!("{name}.toml"));
    sc.write_at(&path, out, 0o644);
    path
}

#[test]
fn item6_symlinked_restore_record_is_not_written_through() {
    let d = donors();
    let s = Served::start("i10_item6_record");
    let sc = s.sc.clone();
    let seg = &d.home[0];
    let path = seg.write_to(&sc, "segment");
    assert_pushed(&sc, &s.sender, &path, &seg.name);
    let standby = sc.mkdir("standby");
    let dest = standby.join("RECOVERYXLOG");
    // Two calls: the record and its spare exist afterwards.
    for _ in 0..2 {
        restore_as_pg(&sc, &s.setup.config, &seg.name, &dest, &standby, "077").assert_code(0);
    }
    // Every record file (and the spare name older versions use) becomes a link to a victim.
    let archive = &s.setup.archive_dir;
    let mut records: Vec<String> = archive_names(archive)
        .into_iter()
        .filter(|n| n.starts_with("walship.restore"))
        .collect();
    assert!(!records.is_empty(), "no restore record was written");
    if !records.iter().any(|n| n == "walship.restore.spare") {
        records.push("walship.restore.spare".into());
    }
    let mut victims = Vec::new();
    for (i, name) in records.iter().enumerate() {
        let victim = sc.write(&format!("victim{i}.conf"), format!("precious {i}\n"));
        let _ = fs::remove_file(archive.join(name));
        symlink(&victim, archive.join(name)).expect("plant symlink");
        victims.push((victim, format!("precious {i}\n")));
    }
    for _ in 0..2 {
        let out = restore_as_pg(&sc, &s.setup.config, &seg.name, &dest, &standby, "077");
        for (victim, content) in &victims {
            assert_eq!(
                fs::read_to_string(victim).expect("victim"),
                *content,
                "{} was written through a symbolic link\n{out}",
                victim.display()
            );
        }
        // The file is served; the record is advisory, but the link is named.
        out.assert_code(0);
        assert!(
            out.stderr_lines().len() <= 1 && out.stderr.contains("symbolic link"),
            "a link where the restore record should be must be named in one line\n{out}"
        );
        assert_eq!(fs::read(&dest).expect("restored"), seg.bytes);
    }
    for (victim, content) in &victims {
        assert_eq!(
            fs::read_to_string(victim).expect("victim"),
            *content,
            "{} was written through a symbolic link",
            victim.display()
        );
    }
}

#[test]
fn item6_item7_receiver_compares_no_link_and_no_fifo() {
    let d = donors();
    let s = Served::start("i10_item7_compare");
    let sc = s.sc.clone();
    // A link under a segment's name, to a file with exactly that segment's bytes: a push of
    // the segment must not be answered "already stored" through the link.
    let seg = &d.home[0];
    let path = seg.write_to(&sc, "segment0");
    let elsewhere = seg.write_to(&sc, "elsewhere");
    symlink(&elsewhere, s.setup.archive_dir.join(&seg.name)).expect("plant symlink");
    let out = push(&sc, &s.sender, &path, &seg.name);
    out.assert_code(1);
    assert!(out.stderr.contains("symbolic link"), "\n{out}");

    // A FIFO under a segment's name: the compare must not block (the push is refused at once,
    // and a later push of another segment still gets a slot and is stored).
    let seg1 = &d.home[1];
    let path1 = seg1.write_to(&sc, "segment1");
    mkfifo(&s.setup.archive_dir.join(&seg1.name));
    let out = push(&sc, &s.sender, &path1, &seg1.name);
    out.assert_code(1);
    assert!(
        out.elapsed < Duration::from_secs(5) && out.stderr.contains("not a regular file"),
        "a FIFO under a stored name must be refused at once\n{out}"
    );
    let seg2 = &d.home[2];
    let path2 = seg2.write_to(&sc, "segment2");
    assert_pushed(&sc, &s.sender, &path2, &seg2.name);
}

#[test]
fn item7_restore_refuses_what_is_not_a_stored_segment() {
    let d = donors();
    let s = Served::start("i10_item7_restore");
    let sc = s.sc.clone();
    let seg = &d.home[0];
    let path = seg.write_to(&sc, "segment");
    assert_pushed(&sc, &s.sender, &path, &seg.name);
    let archive = &s.setup.archive_dir;
    let standby = sc.mkdir("standby");
    let dest = standby.join("RECOVERYXLOG");
    let next = |k: usize| {
        let mut n = seg.name.clone();
        for _ in 0..k {
            n = next_segment(&n);
        }
        n
    };

    // A 1000-byte file under a segment name.
    let short = next(10);
    sc.write_at(&archive.join(&short), vec![0u8; 1000], 0o640);
    let out = restore_as_pg(&sc, &s.setup.config, &short, &dest, &standby, "077");
    assert_restore_error(&out, &["segment", "bytes"]);
    assert!(!dest.exists(), "nothing may be left at the destination");

    // A link to /etc/hostname under a segment name.
    let link = next(11);
    symlink("/etc/hostname", archive.join(&link)).expect("symlink");
    let out = restore_as_pg(&sc, &s.setup.config, &link, &dest, &standby, "077");
    assert_restore_error(&out, &["symbolic link"]);
    assert!(!dest.exists());

    // A FIFO: must not hang (the harness kills and fails a restore after 10 s).
    let fifo = next(12);
    mkfifo(&archive.join(&fifo));
    let out = restore_as_pg(&sc, &s.setup.config, &fifo, &dest, &standby, "077");
    assert_restore_error(&out, &["not a regular file"]);
    assert!(!dest.exists());

    // A real segment of this cluster under another segment's name: the header says otherwise.
    let renamed = next(13);
    sc.write_at(&archive.join(&renamed), &seg.bytes, 0o640);
    let out = restore_as_pg(&sc, &s.setup.config, &renamed, &dest, &standby, "077");
    assert_restore_error(&out, &["not the segment its name says"]);
    assert!(!dest.exists());

    // History names: a link is refused too.
    symlink("/etc/hostname", archive.join("00000005.history")).expect("symlink");
    let out = restore_as_pg(
        &sc,
        &s.setup.config,
        "00000005.history",
        &dest,
        &standby,
        "077",
    );
    assert_restore_error(&out, &["symbolic link"]);

    // The genuine segment is still served, and a missing one is still exit 1, silently.
    restore_as_pg(&sc, &s.setup.config, &seg.name, &dest, &standby, "077").assert_code(0);
    assert_eq!(fs::read(&dest).expect("restored"), seg.bytes);
    let out = restore_as_pg(&sc, &s.setup.config, &next(1), &dest, &standby, "077");
    out.assert_code(1);
    assert_eq!(out.stderr, "", "\n{out}");

    // A segment of another cluster under its name (which the genuine one had: both clusters'
    // first completed segments share it): the pin says otherwise.
    let foreign = &d.foreign[0];
    fs::remove_file(&dest).expect("remove restored file");
    sc.write_at(&archive.join(&foreign.name), &foreign.bytes, 0o640);
    let out = restore_as_pg(&sc, &s.setup.config, &foreign.name, &dest, &standby, "077");
    assert_restore_error(&out, &["cluster"]);
    assert!(!dest.exists());
}

#[test]
fn item8_missing_archive_dir_is_an_error_not_a_miss() {
    let s = Served::start("i10_item8_missing");
    let sc = s.sc.clone();
    let config = sc.path("gone.toml");
    let text = fs::read_to_string(&s.setup.config)
        .expect("config")
        .lines()
        .map(|l| {
            if l.starts_with("archive_dir") {
                "archive_dir = \"not-mounted/archive\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    sc.write_at(&config, text + "\n", 0o644);
    let standby = sc.mkdir("standby");
    let dest = standby.join("RECOVERYXLOG");
    let out = restore_as_pg(
        &sc,
        &config,
        "000000010000000000000001",
        &dest,
        &standby,
        "077",
    );
    assert_restore_error(&out, &["archive_dir"]);
    assert!(out.stderr.contains("not-mounted/archive"), "\n{out}");
    let out = restore_as_pg(&sc, &config, "00000002.history", &dest, &standby, "077");
    assert_restore_error(&out, &["archive_dir"]);
}

#[test]
fn item12_restored_file_mode_follows_the_umask() {
    let d = donors();
    let s = Served::start("i10_item12_mode");
    let sc = s.sc.clone();
    let seg = &d.home[0];
    let path = seg.write_to(&sc, "segment");
    assert_pushed(&sc, &s.sender, &path, &seg.name);
    let standby = sc.mkdir("standby");
    for (umask, want) in [("077", 0o600), ("027", 0o640)] {
        let dest = standby.join(format!("RECOVERYXLOG.{umask}"));
        restore_as_pg(&sc, &s.setup.config, &seg.name, &dest, &standby, umask).assert_code(0);
        let mode = fs::metadata(&dest).expect("restored").permissions().mode() & 0o777;
        assert_eq!(
            mode, want,
            "restored under umask {umask}: mode {mode:o}, PostgreSQL expects {want:o}"
        );
        assert_eq!(fs::read(&dest).expect("restored"), seg.bytes);
    }
    // Nothing but the restored files in the destination directory (no temp left over).
    let mut names = archive_names(&standby);
    names.sort();
    assert_eq!(names, ["RECOVERYXLOG.027", "RECOVERYXLOG.077"]);
}

#[test]
fn item4_restore_serves_from_a_read_only_archive_dir_silently() {
    let d = donors();
    let s = Served::start("i10_item4_readonly");
    let sc = s.sc.clone();
    let seg = &d.home[0];
    let path = seg.write_to(&sc, "segment");
    assert_pushed(&sc, &s.sender, &path, &seg.name);
    let archive = &s.setup.archive_dir;
    fs::set_permissions(archive, fs::Permissions::from_mode(0o555)).expect("chmod archive");
    let standby = sc.mkdir("standby");
    let dest = standby.join("RECOVERYXLOG");
    let out = restore_as_pg(&sc, &s.setup.config, &seg.name, &dest, &standby, "077");
    fs::set_permissions(archive, fs::Permissions::from_mode(0o755)).expect("chmod archive");
    out.assert_code(0);
    assert_eq!(
        out.stderr, "",
        "a read-only archive_dir must not warn per call\n{out}"
    );
    assert_eq!(fs::read(&dest).expect("restored"), seg.bytes);
}

#[test]
fn item13_two_data_directories_keep_separate_restore_records() {
    let d = donors();
    let s = Served::start("i10_item13_records");
    let sc = s.sc.clone();
    let seg = &d.home[0];
    let path = seg.write_to(&sc, "segment");
    assert_pushed(&sc, &s.sender, &path, &seg.name);
    let (one, two) = (sc.mkdir("standby1"), sc.mkdir("standby2"));
    let missing = next_segment(&seg.name);
    restore_as_pg(&sc, &s.setup.config, &seg.name, &one.join("X"), &one, "077").assert_code(0);
    restore_as_pg(&sc, &s.setup.config, &missing, &two.join("X"), &two, "077").assert_code(1);

    let st1 = status_json(
        &sc,
        &config_with_pgdata(&sc, &s.setup.config, "rx1", Some(&one)),
    );
    assert_eq!(st1["restore"]["last_served"], seg.name.as_str(), "{st1:#}");
    assert!(st1["restore"]["last_missed"].is_null(), "{st1:#}");
    let st2 = status_json(
        &sc,
        &config_with_pgdata(&sc, &s.setup.config, "rx2", Some(&two)),
    );
    assert!(st2["restore"]["last_served"].is_null(), "{st2:#}");
    assert_eq!(st2["restore"]["last_missed"], missing.as_str(), "{st2:#}");
    // A path spelled differently (through a link) is the same standby.
    let alias = sc.path("alias1");
    symlink(&one, &alias).expect("symlink");
    let st1 = status_json(
        &sc,
        &config_with_pgdata(&sc, &s.setup.config, "rx1b", Some(&alias)),
    );
    assert_eq!(st1["restore"]["last_served"], seg.name.as_str(), "{st1:#}");
}

#[test]
fn item13_promote_reads_the_record_of_the_standby_it_promotes() {
    let p = Pair::start("i10_item13_promote", &PairOptions::default());
    let sc = p.sc.clone();
    p.primary
        .sql("create table t as select g as id from generate_series(1, 1000) g");
    let first = p.switch_segment();
    p.primary
        .sql("insert into t select g from generate_series(1, 1000) g");
    let last = p.switch_segment();
    p.wait_archived(&last);
    p.wait_restore_missed(&next_segment(&last));
    p.crash_primary();

    // Another standby on the same archive (a restore run from another data directory), far
    // behind: it was served the first segment. The real standby now only misses the segment
    // after the newest (every 200 ms), so a shared record would keep the other's last_served.
    let other = sc.mkdir("other_standby");
    let out = restore_as_pg(
        &sc,
        &p.setup.config,
        &first,
        &other.join("X"),
        &other,
        "077",
    );
    out.assert_code(0);
    p.wait_restore_missed(&next_segment(&last));

    // Without pgdata: the standby is found through conninfo (SHOW data_directory).
    let conninfo_only = config_with_pgdata(&sc, &p.setup.config, "rx_conninfo", None);
    let st = status_json(&sc, &conninfo_only);
    assert_eq!(
        st["restore"]["last_served"],
        last.as_str(),
        "status must show the record of the standby behind conninfo\n{st:#}"
    );
    assert_eq!(
        st["restore"]["last_missed"],
        next_segment(&last).as_str(),
        "{st:#}"
    );
    let out = run_receiver(&sc, &conninfo_only, "promote", &["--timeout", "30"]);
    out.assert_code(0);
    assert_eq!(promote_line(&out, "timeline: "), "1 -> 2", "\n{out}");
}
