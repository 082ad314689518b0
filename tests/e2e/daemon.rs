//! `walship-sender daemon`: `push` hands off to it over its Unix socket, look-ahead ships
//! `.ready` segments before PostgreSQL asks, an acknowledgement counts only for the exact file
//! that was read, and a dead daemon costs nothing but a fallback to a direct connection.

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use walship_tests::process::wait_for;
use walship_tests::segments::{segment_name, segno};
use walship_tests::walship::{
    add_keys, archived_files, push_with_env, receiver_config, sender_for, Service, COMMAND_TIMEOUT,
};
use walship_tests::{donors, CertSet, Output, PgCluster, Receiver, Scenario};

/// `push` with its debug line on stderr, so the outcome (`ShippedAhead`, `Stored`, …) shows.
fn push_debug(sc: &Scenario, config: &Path, path: &Path, name: &str) -> Output {
    push_with_env(
        sc,
        config,
        path,
        name,
        &[("RUST_LOG", "walship_sender=debug")],
    )
}

fn wait_archived(dir: &Path, name: &str) {
    let found = wait_for(Duration::from_secs(30), || {
        archived_files(dir).iter().any(|n| n == name).then_some(())
    });
    assert!(
        found.is_some(),
        "{name} never reached the archive: {:?}",
        archived_files(dir)
    );
}

/// Overwrite one byte in the middle of `path` in place, then put its mtime back: only the
/// ctime (which no user can set) still tells that the bytes changed.
fn rewrite_keeping_mtime(path: &Path, byte: u8) {
    let mtime = fs::metadata(path)
        .and_then(|m| m.modified())
        .expect("mtime of the segment");
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open the segment for writing");
    f.seek(SeekFrom::Start(8 << 20))
        .and_then(|_| f.write_all(&[byte]))
        .and_then(|()| f.set_modified(mtime))
        .and_then(|()| f.sync_all())
        .expect("rewrite one byte, keep the mtime");
}

#[test]
fn lookahead_acknowledgement_is_tied_to_file_identity() {
    let d = donors();
    let sc = Scenario::new("daemon_identity");
    let certs = CertSet::create(&sc, "certs");
    let rx_setup = receiver_config(&sc, "receiver", &certs, None);
    let rx = Receiver::spawn(&sc, &rx_setup.config, "receiver");

    // A stand-in data directory: PostgreSQL's layout, .ready files written by the test.
    let pgdata = sc.mkdir("pgdata");
    sc.mkdir("pgdata/pg_wal/archive_status");
    let wal = pgdata.join("pg_wal");
    let [s0, s1, s2] = [&d.home[0], &d.home[1], &d.home[2]];
    let p0 = wal.join(&s0.name);
    sc.write_at(&p0, &s0.bytes, 0o600);
    sc.write(
        &format!("pgdata/pg_wal/archive_status/{}.ready", s0.name),
        "",
    );

    let sender = sender_for(&sc, "sender", &rx_setup, &certs);
    add_keys(
        &sender,
        "socket = \"sender.sock\"\npgdata = \"pgdata\"\nlookahead = 2\n",
    );
    let mut daemon = Service::spawn_daemon(&sc, &sender, "daemon");
    let socket = sc.path("sender.sock");
    let meta = fs::symlink_metadata(&socket).expect("the daemon's socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");

    // Look-ahead ships the .ready segment without anybody calling push.
    wait_archived(&rx_setup.archive_dir, &s0.name);
    let stored = rx_setup.archive_dir.join(&s0.name);
    assert_eq!(fs::read(&stored).unwrap(), s0.bytes);

    // PostgreSQL's push for it is answered from the acknowledgement.
    let out = push_debug(&sc, &sender, &p0, &s0.name);
    out.assert_code(0);
    assert!(
        out.stderr.contains("ShippedAhead"),
        "expected a look-ahead answer\n{out}"
    );

    // Same inode, size and mtime, other bytes: the acknowledgement does not cover them. The
    // push goes to the receiver, which refuses the conflicting content and keeps its copy.
    rewrite_keeping_mtime(&p0, !s0.bytes[8 << 20]);
    let out = push_debug(&sc, &sender, &p0, &s0.name);
    out.assert_code(1);
    assert!(!out.stderr.contains("ShippedAhead"), "{out}");
    assert!(out.stderr.contains("different content"), "{out}");
    assert_eq!(fs::read(&stored).unwrap(), s0.bytes, "stored copy touched");

    // The original bytes again (identity still changed): a real round trip, "already had".
    rewrite_keeping_mtime(&p0, s0.bytes[8 << 20]);
    let out = push_debug(&sc, &sender, &p0, &s0.name);
    out.assert_code(0);
    assert!(out.stderr.contains("AlreadyHad"), "{out}");

    // A second daemon on the same socket is refused; the first keeps serving.
    let second = sc.run(
        &sc.cmd(sc.bin("walship-sender"))
            .arg("--config")
            .arg(&sender)
            .arg("daemon")
            .timeout(COMMAND_TIMEOUT),
    );
    second.assert_code(1);
    assert!(
        second.stderr.contains("another walship-sender daemon"),
        "{second}"
    );

    // SIGKILL leaves a stale socket: push falls back to a direct connection, says so in one
    // line, and exits 0 only once stored.
    daemon.kill9();
    let p1 = sc.write(&s1.name, &s1.bytes);
    let out = push_debug(&sc, &sender, &p1, &s1.name);
    out.assert_code(0);
    assert!(out.stderr.contains("pushing directly"), "{out}");
    assert_eq!(
        fs::read(rx_setup.archive_dir.join(&s1.name)).unwrap(),
        s1.bytes
    );

    // Restarted, the daemon replaces the stale socket and serves pushes on its connection.
    daemon.start();
    let p2 = sc.write(&s2.name, &s2.bytes);
    let out = push_debug(&sc, &sender, &p2, &s2.name);
    out.assert_code(0);
    assert!(out.stderr.contains("outcome=Stored"), "{out}");
    assert!(!out.stderr.contains("pushing directly"), "{out}");
    assert_eq!(
        fs::read(rx_setup.archive_dir.join(&s2.name)).unwrap(),
        s2.bytes
    );

    daemon.stop();
    assert!(!socket.exists(), "a clean stop removes the socket");
    daemon.check_log(&[]);

    // Without look-ahead the daemon keeps no acknowledgement: every push asks the receiver.
    let plain = sender_for(&sc, "sender-plain", &rx_setup, &certs);
    add_keys(&plain, "socket = \"plain.sock\"\n");
    let mut no_lookahead = Service::spawn_daemon(&sc, &plain, "daemon-plain");
    for _ in 0..2 {
        let out = push_debug(&sc, &plain, &p2, &s2.name);
        out.assert_code(0);
        assert!(out.stderr.contains("outcome=AlreadyHad"), "{out}");
    }
    no_lookahead.stop();
    no_lookahead.check_log(&[]);
    rx.stop_and_check(&[
        "different content",
        "already archived with different content",
    ]);
}

#[test]
fn daemon_under_postgres_with_lookahead_and_a_kill() {
    let sc = Scenario::new("daemon_postgres");
    let certs = CertSet::create(&sc, "certs");
    let mut primary = PgCluster::init_archive_paused(&sc, "primary", &[], &[]);
    primary.start();
    let first_segment = primary.sql("select pg_walfile_name(pg_current_wal_lsn())");
    let rx_setup = receiver_config(&sc, "receiver", &certs, Some(primary.data_dir()));
    let rx = Receiver::spawn(&sc, &rx_setup.config, "receiver");
    let sender = sender_for(&sc, "sender", &rx_setup, &certs);
    add_keys(
        &sender,
        &format!(
            "socket = \"sender.sock\"\npgdata = \"{}\"\nlookahead = 4\n",
            primary.data_dir().display()
        ),
    );
    let mut daemon = Service::spawn_daemon(&sc, &sender, "daemon");

    // archive_command stays empty while pgbench runs, so segments pile up as .ready files the
    // way they do behind a slow archiver: look-ahead ships them without being asked.
    primary.pgbench(&["-i", "-s", "2", "-q"]);
    primary.pgbench(&["-n", "-c", "2", "-T", "2"]);
    // However slow the machine, at least three finished segments wait.
    primary.sql("create table filler (i int)");
    for i in 0..3 {
        primary.sql(&format!("insert into filler values ({i})"));
        primary.switch_wal();
    }
    let backlog_end = primary.sql("select pg_walfile_name(pg_current_wal_lsn() - 1)");
    let backlog: Vec<String> = (segno(&first_segment)..=segno(&backlog_end))
        .map(segment_name)
        .collect();
    assert!(backlog.len() >= 3, "{backlog:?}");
    let shipped = wait_for(Duration::from_secs(60), || {
        let have = archived_files(&rx_setup.archive_dir);
        backlog.iter().all(|n| have.contains(n)).then_some(())
    });
    assert!(
        shipped.is_some(),
        "look-ahead did not ship the backlog {backlog:?}: {:?}",
        archived_files(&rx_setup.archive_dir)
    );

    // Now PostgreSQL archives: every segment of the backlog is answered from look-ahead.
    // Debug output of push lands in PostgreSQL's log and shows how each was answered.
    let archive_command = format!(
        "RUST_LOG=walship_sender=debug {} --config {} push %p %f",
        sc.bin("walship-sender").display(),
        sender.display()
    );
    primary.sql(&format!(
        "alter system set archive_command = '{archive_command}'"
    ));
    primary.sql("select pg_reload_conf()");
    primary.pgbench(&["-n", "-c", "2", "-T", "2"]);
    let last = wait_all_archived(&primary);
    let log = fs::read_to_string(primary.log_path()).expect("PostgreSQL log");
    for name in &backlog {
        assert!(
            log.contains(&format!("outcome=ShippedAhead name={name}")),
            "{name} was not answered from look-ahead; PostgreSQL log:\n{}",
            tail(&log)
        );
    }

    // The daemon dies while PostgreSQL archives: every push falls back, nothing fails.
    daemon.kill9();
    primary.pgbench(&["-n", "-c", "2", "-T", "2"]);
    let last_without = wait_all_archived(&primary);
    assert!(last_without > last);
    let log = fs::read_to_string(primary.log_path()).expect("PostgreSQL log");
    assert!(log.contains("pushing directly"), "{}", tail(&log));

    // Back again: pushes go through it.
    daemon.start();
    let before = log.matches("outcome=").count();
    primary.sql("create table after_restart (i int); insert into after_restart values (1)");
    let final_segment = wait_all_archived(&primary);
    let log = fs::read_to_string(primary.log_path()).expect("PostgreSQL log");
    assert!(log.matches("outcome=").count() > before, "{}", tail(&log));

    let failed = primary.sql("select failed_count from pg_stat_archiver");
    assert_eq!(failed, "0", "archive_command failed: {}", tail(&log));
    // Every segment from the first to the last, once; those still in pg_wal byte-identical.
    let expected: Vec<String> = (segno(&first_segment)..=segno(&final_segment))
        .map(segment_name)
        .collect();
    let names: Vec<String> = archived_files(&rx_setup.archive_dir)
        .into_iter()
        .filter(|n| n.len() == 24)
        .collect();
    assert_eq!(names, expected);
    for name in &names {
        if let Ok(ours) = fs::read(primary.wal_dir().join(name)) {
            let theirs = fs::read(rx_setup.archive_dir.join(name)).expect("archived copy");
            assert!(ours == theirs, "{name} differs from the primary's copy");
        }
    }
    daemon.stop();
    daemon.check_log(&[]);
    rx.stop_and_check(&[]);
}

/// Switch WAL and wait until the archiver has archived the segment just finished; its name.
fn wait_all_archived(primary: &PgCluster) -> String {
    let lsn = primary.switch_wal();
    let segment = primary.walfile_name(&lsn);
    let done = wait_for(Duration::from_secs(60), || {
        let last = primary.sql("select coalesce(last_archived_wal, '') from pg_stat_archiver");
        (last >= segment).then_some(())
    });
    assert!(
        done.is_some(),
        "{segment} not archived within 60 s: {}",
        primary.sql("select * from pg_stat_archiver")
    );
    segment
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
