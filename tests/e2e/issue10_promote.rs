//! Issue 10, items 4 and 10 (b, c): `promote` and the fence.
//!
//! - item 4: with archive_dir read-only for the standby's user, `restore` cannot keep its
//!   record, yet `promote` of a caught-up hot standby must go through: a replay LSN at the end
//!   of the newest stored segment is caught up, whatever the record says.
//! - item 10b: the fence closes the standby's own timeline, not the newest stored segment's.
//! - item 10c: a failed re-promote puts the earlier fence back instead of removing it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use walship_tests::failover::{
    append_conninfo, conninfo, next_segment, parse_lsn, promote_line, run_receiver, Pair,
    PairOptions,
};
use walship_tests::process::Output;
use walship_tests::walship::{archived_files, assert_pushed, toml_str, SEGMENT_BYTES};
use walship_tests::{Cmd, PgCluster, Scenario};

/// `walship-receiver promote` as root: the receiver's side, while the standby (postgres)
/// cannot write archive_dir.
fn promote_as_root(sc: &Scenario, config: &Path, args: &[&str]) -> Output {
    let cmd = Cmd::new(sc.bin("walship-receiver"))
        .arg("--config")
        .arg(config)
        .arg("promote")
        .args(args)
        .cwd(sc.dir())
        .timeout(Duration::from_secs(150));
    sc.run(&cmd)
}

/// The LSN where a segment (16 MiB) starts.
fn segment_start(name: &str) -> u64 {
    let part = |r: std::ops::Range<usize>| u64::from_str_radix(&name[r], 16).expect("segment name");
    part(8..16) * 0x1_0000_0000 + part(16..24) * SEGMENT_BYTES
}

/// `key = value` of the fence file, as text (`None` when there is no fence).
fn fence_field(archive: &Path, key: &str) -> Option<String> {
    let text = match fs::read_to_string(archive.join("walship.fence")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("read walship.fence: {e}"),
    };
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim().strip_prefix('='))
        .unwrap_or_else(|| panic!("walship.fence has no {key}:\n{text}"));
    Some(value.trim().trim_matches('"').to_string())
}

/// Push every completed segment (and other file) the primary has waiting as `.ready`.
fn push_ready(p: &Pair) -> Vec<String> {
    let status_dir = p.primary.wal_dir().join("archive_status");
    let mut ready: Vec<String> = fs::read_dir(&status_dir)
        .expect("list archive_status")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".ready").map(str::to_string)
        })
        .collect();
    ready.sort();
    for name in &ready {
        assert_pushed(&p.sc, &p.sender, &p.primary.wal_dir().join(name), name);
    }
    ready
}

#[test]
fn item4_promote_with_a_read_only_archive_dir() {
    let mut p = Pair::start(
        "issue10_item4",
        &PairOptions {
            archive: false,
            ..PairOptions::default()
        },
    );
    let sc = p.sc.clone();
    // The standby is down while the archive fills, and its old restore record goes: nothing
    // written before the lock-down can tell promote that it caught up.
    p.standby.stop();
    p.primary.sql("create table t (id int primary key)");
    let mut last = String::new();
    for id in 1..=3 {
        p.primary.sql(&format!("insert into t values ({id})"));
        last = p.switch_segment();
    }
    push_ready(&p);
    let archive = p.setup.archive_dir.clone();
    assert!(archived_files(&archive).contains(&last));
    for e in fs::read_dir(&archive).expect("list archive").flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with("walship.restore")
        {
            fs::remove_file(e.path()).expect("remove the restore record");
        }
    }
    // The receiver's side owns archive_dir; the standby's user (postgres) may only read.
    std::os::unix::fs::chown(&archive, Some(0), Some(0)).expect("chown archive_dir to root");
    fs::set_permissions(&archive, fs::Permissions::from_mode(0o755)).expect("chmod archive_dir");

    p.standby.start();
    // Replaying the XLOG_SWITCH that ends the newest stored segment moves
    // pg_last_wal_replay_lsn() to the start of the next segment: the end of the newest one.
    let newest_end = segment_start(&next_segment(&last));
    let end_text = format!("{:X}/{:X}", newest_end >> 32, newest_end & 0xFFFF_FFFF);
    p.wait_replayed(&end_text);
    let replay = p.standby.sql("select pg_last_wal_replay_lsn()");
    assert_eq!(
        parse_lsn(&replay),
        newest_end,
        "replay LSN {replay} after the switch ending {last}: expected the start of the next segment {end_text}"
    );
    assert_eq!(p.standby.sql("select count(*) from t"), "3");
    let names: Vec<String> = fs::read_dir(&archive)
        .expect("list archive")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("walship.restore")),
        "restore wrote a record into a read-only archive_dir: {names:?}"
    );

    let out = promote_as_root(&sc, &p.setup.config, &["--timeout", "15"]);
    out.assert_code(0);
    assert_eq!(promote_line(&out, "timeline: "), "1 -> 2", "\n{out}");
    assert!(
        !out.stderr.contains("0 segment(s) left"),
        "promote's progress still says \"0 segment(s) left\"\n{out}"
    );
    assert_eq!(p.standby.sql("select pg_is_in_recovery()"), "f");
    assert_eq!(p.standby.sql("select count(*) from t"), "3");
    assert_eq!(fence_field(&archive, "timeline").as_deref(), Some("1"));
    let Pair { rx, .. } = p;
    rx.stop_and_check(&[]);
}

/// A standby of `primary` (running), made with pg_basebackup, with no restore_command and no
/// primary_conninfo: it stays in recovery on `primary`'s timeline. Started.
fn standby_of(primary: &PgCluster, name: &str, hot: bool) -> PgCluster {
    let hot = format!("hot_standby = {}", if hot { "on" } else { "off" });
    let mut s =
        primary.basebackup_standby(name, &[&hot, "archive_mode = off", "restore_command = ''"]);
    s.start();
    s
}

/// A receiver config for the same archive and certificates, reaching `standby` (`pgdata` set to
/// its data directory when `with_pgdata`).
fn config_for(p: &Pair, name: &str, standby: &PgCluster, with_pgdata: bool) -> std::path::PathBuf {
    let text = fs::read_to_string(&p.setup.config).expect("read receiver config");
    let mut out: String = text
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            !l.starts_with("conninfo") && !l.starts_with("pgdata")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    if with_pgdata {
        out.push_str(&format!(
            "pgdata = {}\n",
            toml_str(&standby.data_dir().display().to_string())
        ));
    }
    let path = p.sc.path(&format!("{name}.toml"));
    p.sc.write_at(&path, out, 0o644);
    append_conninfo(&path, &conninfo(&p.sc, standby.port()));
    path
}

/// A pair whose standby was promoted once through walship (timeline 1 -> 2, fence on 1).
fn promoted_pair(name: &str) -> Pair {
    let p = Pair::start(name, &PairOptions::default());
    p.primary
        .sql("create table t as select g as id from generate_series(1, 100) g");
    let last = p.switch_segment();
    p.wait_archived(&last);
    let out = p.promote(&["--timeout", "60"]);
    out.assert_code(0);
    assert_eq!(promote_line(&out, "timeline: "), "1 -> 2", "\n{out}");
    assert_eq!(
        fence_field(&p.setup.archive_dir, "timeline").as_deref(),
        Some("1")
    );
    p
}

#[test]
fn item10b_fence_takes_the_standbys_timeline() {
    let p = promoted_pair("issue10_item10b");
    // A standby of the promoted cluster: it is on timeline 2, while the archive holds only
    // segments of timeline 1 (the new primary does not archive here).
    let standby2 = standby_of(&p.standby, "standby2", true);
    let archived = archived_files(&p.setup.archive_dir);
    assert!(
        archived
            .iter()
            .all(|n| !n.starts_with("00000002") || n.ends_with(".history")),
        "{archived:?}"
    );
    let config = config_for(&p, "receiver-standby2", &standby2, false);
    let out = run_receiver(&p.sc, &config, "promote", &["--no-wait-replay"]);
    out.assert_code(0);
    assert_eq!(promote_line(&out, "timeline: "), "2 -> 3", "\n{out}");
    assert_eq!(
        fence_field(&p.setup.archive_dir, "timeline").as_deref(),
        Some("2"),
        "the fence must close the promoted standby's timeline 2\n{out}"
    );
    assert_eq!(
        fence_field(&p.setup.archive_dir, "new_timeline").as_deref(),
        Some("3")
    );
    drop(standby2);
    let Pair { rx, .. } = p;
    rx.stop_and_check(&[]);
}

#[test]
fn item10c_failed_repromote_keeps_the_earlier_fence() {
    let p = promoted_pair("issue10_item10c");
    let before = fs::read(p.setup.archive_dir.join("walship.fence")).expect("read the fence");
    // A warm standby of the promoted cluster, and a config without pgdata: promote fences, then
    // cannot signal the standby and gives up.
    let standby2 = standby_of(&p.standby, "standby2", false);
    let config = config_for(&p, "receiver-standby2", &standby2, false);
    let out = run_receiver(&p.sc, &config, "promote", &["--no-wait-replay"]);
    out.assert_code(1);
    assert!(out.stderr.contains("promotion failed"), "\n{out}");
    let after = fs::read(p.setup.archive_dir.join("walship.fence"));
    assert_eq!(
        after.as_deref().ok(),
        Some(before.as_slice()),
        "a failed promote must put the earlier fence back\n{out}"
    );
    drop(standby2);
    let Pair { rx, .. } = p;
    rx.stop_and_check(&[]);
}
