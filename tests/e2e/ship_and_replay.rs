//! The whole path: a primary archives through `walship-sender push`, the receiver stores the
//! segments, and a standby made with pg_basebackup replays them through
//! `walship-receiver restore` until it sees a row written after the backup.

use std::fs;
use std::time::Duration;

use walship_tests::process::wait_for;
use walship_tests::segments::{segment_name, segno};
use walship_tests::walship::{archived_files, receiver_config, sender_for, SEGMENT_BYTES};
use walship_tests::{CertSet, PgCluster, Receiver, Scenario};

const MARKER: &str = "shipped by walship";

#[test]
fn ship_and_replay() {
    let sc = Scenario::new("ship_and_replay");
    let certs = CertSet::create(&sc, "certs");
    // archive_command stays empty until the receiver runs: with archive_mode on, segments wait
    // as .ready instead of failing (so failed_count must end at 0).
    let mut primary = PgCluster::init_archive_paused(&sc, "primary", &[], &["max_wal_senders = 5"]);
    primary.start();
    // Archiving starts with the segment current at first start (initdb's WAL is not archived).
    let first_segment = primary.sql("select pg_walfile_name(pg_current_wal_lsn())");

    // The receiver is pinned to the standby's cluster, whose data directory exists only after
    // pg_basebackup: write the configs now, start the receiver after the backup.
    let standby_dir = sc.path("standby");
    let rx_setup = receiver_config(&sc, "receiver", &certs, Some(&standby_dir));
    let sender = sender_for(&sc, "sender", &rx_setup, &certs);
    let restore_command = format!(
        "restore_command = '{} --config {} restore %f %p'",
        sc.bin("walship-receiver").display(),
        rx_setup.config.display()
    );
    let mut standby = primary.basebackup_standby(
        "standby",
        &["hot_standby = on", "archive_mode = off", &restore_command],
    );
    let rx = Receiver::spawn(&sc, &rx_setup.config, "receiver");
    primary.archive_with_push(&sender);
    standby.start();

    primary.pgbench(&["-i", "-s", "2", "-q"]);
    primary.pgbench(&["-n", "-c", "2", "-T", "3"]);
    primary.sql("create table walship_marker (note text)");
    primary.sql(&format!("insert into walship_marker values ('{MARKER}')"));
    let switch_lsn = primary.switch_wal();
    let last_segment = primary.walfile_name(&switch_lsn);

    // The standby only gets WAL through restore_command: seeing the row means shipping worked.
    // Poll with a query that cannot fail, then read the row once replay is past the switch.
    let probe = format!("select pg_last_wal_replay_lsn() >= '{switch_lsn}'::pg_lsn");
    let mut last_seen = String::new();
    let replayed = wait_for(Duration::from_secs(90), || {
        match standby.try_sql(&probe) {
            Ok(s) if s == "t" => return Some(()),
            Ok(s) => last_seen = s,
            Err(out) => last_seen = out.stderr.trim().to_string(),
        }
        std::thread::sleep(Duration::from_millis(400));
        None
    });
    assert!(
        replayed.is_some(),
        "standby did not replay past the switch LSN {switch_lsn} (segment {last_segment}) within \
         90 s; last answer: {last_seen:?}; replay LSN {:?}",
        standby.try_sql("select pg_last_wal_replay_lsn()")
    );
    assert_eq!(standby.sql("select note from walship_marker"), MARKER);

    // The archiver's own account: everything up to the switch archived, nothing failed.
    let stats = wait_for(Duration::from_secs(30), || {
        let s = primary.sql("select archived_count, failed_count, coalesce(last_archived_wal, '') from pg_stat_archiver");
        let f: Vec<String> = s.split('|').map(str::to_string).collect();
        (f.len() == 3 && f[2] >= last_segment).then_some(f)
    })
    .unwrap_or_else(|| {
        panic!(
            "pg_stat_archiver never reached {last_segment}: {}",
            primary.sql("select * from pg_stat_archiver")
        )
    });
    let archived: u64 = stats[0].parse().expect("archived_count");
    assert_eq!(
        stats[1], "0",
        "the primary's archive_command failed {} times: {stats:?}",
        stats[1]
    );

    // The archive holds exactly the segments first_segment..=last_segment, each a whole 16 MiB
    // segment (plus the backup history file pg_basebackup left), and the ones still in the
    // primary's pg_wal are byte-identical.
    let expected_names: Vec<String> = (segno(&first_segment)..=segno(&last_segment))
        .map(segment_name)
        .collect();
    let all = archived_files(&rx_setup.archive_dir);
    let names: Vec<String> = all.iter().filter(|n| n.len() == 24).cloned().collect();
    assert_eq!(names, expected_names, "archived segments");
    let others: Vec<&String> = all.iter().filter(|n| n.len() != 24).collect();
    assert!(
        others.iter().all(|n| n.ends_with(".backup")),
        "unexpected files in the archive: {others:?}"
    );
    assert!(
        archived >= expected_names.len() as u64,
        "archived_count {archived} < {} segments in the archive: {stats:?}",
        expected_names.len()
    );
    let mut compared = 0;
    for name in &names {
        let stored = rx_setup.archive_dir.join(name);
        let len = fs::metadata(&stored).expect("stat archived segment").len();
        assert_eq!(len, SEGMENT_BYTES, "archived {name} has {len} bytes");
        if let Ok(original) = fs::read(primary.wal_dir().join(name)) {
            let copy = fs::read(&stored).expect("read archived segment");
            assert!(
                original == copy,
                "archived {name} differs from the primary's pg_wal/{name}"
            );
            compared += 1;
        }
    }
    assert!(
        compared > 0,
        "no archived segment left in the primary's pg_wal to compare with"
    );

    // No primary_conninfo: the last segment reached the standby through restore_command, and
    // restore's failures would show in the standby's log as walship-receiver lines.
    let standby_log = fs::read_to_string(standby.log_path()).unwrap_or_default();
    let restored = format!("restored log file \"{last_segment}\" from archive");
    assert!(
        standby_log.contains(&restored),
        "the standby's log does not say {restored:?}"
    );
    let complaints: Vec<&str> = standby_log
        .lines()
        .filter(|l| l.contains("walship-receiver"))
        .collect();
    assert!(
        complaints.is_empty(),
        "walship-receiver restore complained:\n{}",
        complaints.join("\n")
    );

    standby.stop();
    primary.stop();
    rx.stop_and_check(&[]);
}
