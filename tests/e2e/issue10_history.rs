//! Issue 10, item 2: timeline history (`.history`), backup history (`.backup`) and `.partial`
//! files are checked by content, not only by name.
//!
//! - Random bytes under a history or backup name are refused and nothing is stored.
//! - A history file must agree with the histories already stored (the history of timeline N
//!   repeats its parent's, then adds one line).
//! - After `walship-receiver promote` (the fence: timeline T ended at LSN X), a history that
//!   leaves T anywhere but X is refused, so a forged `00000002.history` can neither steer the
//!   standby nor take the name before the real new primary's file; the real one is stored.
//! - A `.partial` of the fenced timeline whose segment starts after X is refused; the one
//!   holding X (the new primary's) is stored. While `promote` runs, both wait (retry).
//! - Legitimate promotions still work: a streaming standby promoted with `pg_ctl promote`
//!   (outside walship) archives `00000002.history`, then the old timeline's `.partial`,
//!   through walship, and both are stored; a real `pg_basebackup` stores its `.backup` file.

use std::fs;
use std::path::Path;
use std::time::Duration;

use walship_tests::failover::{
    parse_lsn, pg_ctl_stop_immediate, promote_line, Pair, PairOptions, CATCH_UP,
};
use walship_tests::process::wait_for;
use walship_tests::segments::segno;
use walship_tests::walship::{
    archived_files, assert_pushed, assert_refused, push, receiver_config, sender_for, SEGMENT_BYTES,
};
use walship_tests::{donors, CertSet, PgCluster, Receiver, Scenario};

use crate::Served;

/// Deterministic bytes that are no text format at all.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Write `walship.fence` as `promote` does (timeline 1 closed at `promoted_at_lsn`).
fn write_fence(sc: &Scenario, archive_dir: &Path, promoted_at_lsn: &str) {
    let text = format!(
        "timeline = 1\npromoted_at_lsn = \"{promoted_at_lsn}\"\nnew_timeline = 2\nfenced_at_unix_ms = 0\n"
    );
    sc.write_at(&archive_dir.join("walship.fence"), text, 0o644);
}

#[test]
fn item2_random_bytes_as_history_or_backup_are_refused() {
    let s = Served::start("i10-random-history");
    let sc = s.sc.clone();
    let random = sc.write("random", random_bytes(300, 7));
    let out = push(&sc, &s.sender, &random, "00000002.history");
    assert_refused(&out, &["timeline history"]);
    let out = push(
        &sc,
        &s.sender,
        &random,
        "000000010000000000000002.00000028.backup",
    );
    assert_refused(&out, &["backup history"]);
    // Text, but not a history: its own timeline as parent, and switch points going back.
    let own = sc.write("own-parent", "2\t0/3000000\tno recovery target specified\n");
    assert_refused(
        &push(&sc, &s.sender, &own, "00000002.history"),
        &["timeline history"],
    );
    let back = sc.write("backwards", "1\t0/5000000\tx\n2\t0/3000000\ty\n");
    assert_refused(
        &push(&sc, &s.sender, &back, "00000003.history"),
        &["timeline history"],
    );
    assert_eq!(
        archived_files(&s.setup.archive_dir),
        Vec::<String>::new(),
        "a refused file was stored"
    );
    let Served { rx, .. } = s;
    rx.stop_and_check(&["timeline history", "backup history"]);
}

#[test]
fn item2_history_must_agree_with_stored_histories() {
    let s = Served::start("i10-history-chain");
    let sc = s.sc.clone();
    let two = "1\t0/3000148\tno recovery target specified\n";
    let two_path = sc.write("two", two);
    assert_pushed(&sc, &s.sender, &two_path, "00000002.history");

    // Timeline 3 claims timeline 1 ended elsewhere than the stored history of 2 says.
    let forged = "1\t0/4000000\tno recovery target specified\n\n2\t0/5000000\tno recovery target specified\n";
    let forged_path = sc.write("forged-three", forged);
    let out = push(&sc, &s.sender, &forged_path, "00000003.history");
    assert_refused(&out, &["00000002.history"]);
    assert!(
        !s.setup.archive_dir.join("00000003.history").exists(),
        "the contradicting history was stored"
    );

    // As PostgreSQL writes it: the parent's file verbatim, a blank line, one more line.
    let good = format!("{two}\n2\t0/5000000\tno recovery target specified\n");
    let good_path = sc.write("good-three", &good);
    assert_pushed(&sc, &s.sender, &good_path, "00000003.history");
    assert_eq!(
        fs::read_to_string(s.setup.archive_dir.join("00000003.history")).expect("read stored"),
        good
    );
    let Served { rx, .. } = s;
    rx.stop_and_check(&["contradicts"]);
}

#[test]
fn item2_partials_and_histories_beyond_the_fence_are_refused() {
    let d = donors();
    let s = Served::start("i10-partial-fence");
    let sc = s.sc.clone();
    let [first, second, third] = [&d.home[0], &d.home[1], &d.home[2]];
    // Timeline 1 was promoted away from inside the second segment.
    let x = segno(&second.name) * SEGMENT_BYTES + 0x1000;
    write_fence(&sc, &s.setup.archive_dir, &lsn_text(x));

    // A partial whose segment starts after the promotion: WAL the new timeline never had.
    let third_path = third.write_to(&sc, "third");
    let out = push(
        &sc,
        &s.sender,
        &third_path,
        &format!("{}.partial", third.name),
    );
    assert_refused(&out, &["closed"]);
    // The partial holding the promotion point, and an older one: stored.
    let second_path = second.write_to(&sc, "second");
    assert_pushed(
        &sc,
        &s.sender,
        &second_path,
        &format!("{}.partial", second.name),
    );
    let first_path = first.write_to(&sc, "first");
    assert_pushed(
        &sc,
        &s.sender,
        &first_path,
        &format!("{}.partial", first.name),
    );

    // A history leaving timeline 1 elsewhere than the fence says: refused.
    let forged = sc.write(
        "forged",
        format!(
            "1\t{}\tno recovery target specified\n",
            lsn_text(x + 0x2000)
        ),
    );
    assert_refused(
        &push(&sc, &s.sender, &forged, "00000002.history"),
        &["fence"],
    );

    // While promote has not yet learnt the LSN, both wait for a retry.
    write_fence(&sc, &s.setup.archive_dir, "promotion in progress");
    let real = sc.write(
        "real",
        format!("1\t{}\tno recovery target specified\n", lsn_text(x)),
    );
    assert_refused(&push(&sc, &s.sender, &real, "00000002.history"), &["retry"]);
    assert_refused(
        &push(
            &sc,
            &s.sender,
            &third_path,
            &format!("{}.partial", third.name),
        ),
        &["retry"],
    );
    write_fence(&sc, &s.setup.archive_dir, &lsn_text(x));
    assert_pushed(&sc, &s.sender, &real, "00000002.history");

    let mut expected = vec![
        "00000002.history".to_string(),
        format!("{}.partial", first.name),
        format!("{}.partial", second.name),
    ];
    expected.sort();
    assert_eq!(archived_files(&s.setup.archive_dir), expected);
    let Served { rx, .. } = s;
    rx.stop_and_check(&["closed", "fence", "retry"]);
}

#[test]
fn item2_forged_history_after_promote_is_refused_and_the_real_one_stored() {
    let p = Pair::start("i10-forged-history", &PairOptions::default());
    let sc = p.sc.clone();
    p.primary
        .sql("create table t as select g as id from generate_series(1, 1000) g");
    let last = p.switch_segment();
    let (_, failed) = p.wait_archived(&last);
    assert_eq!(failed, 0, "the primary's archive_command failed");
    p.crash_primary();
    let out = p.promote(&["--timeout", "60"]);
    out.assert_code(0);
    let promoted_at = parse_lsn(promote_line(&out, "promotion LSN: "));

    // Someone holding a client certificate races the new primary for the history's name.
    let forged = sc.write(
        "forged-history",
        format!(
            "1\t{}\tno recovery target specified\n",
            lsn_text(promoted_at + 0x10000)
        ),
    );
    let out = push(&sc, &p.sender, &forged, "00000002.history");
    assert_refused(&out, &["fence"]);
    assert!(
        !p.setup.archive_dir.join("00000002.history").exists(),
        "the forged history was stored"
    );

    // The promoted standby's own history goes through.
    let real = p.standby.wal_dir().join("00000002.history");
    assert_pushed(&sc, &p.sender, &real, "00000002.history");
    assert_eq!(
        fs::read(p.setup.archive_dir.join("00000002.history")).expect("read stored history"),
        fs::read(&real).expect("read the standby's history")
    );
    let Pair { rx, .. } = p;
    rx.stop_and_check(&["fence"]);
}

#[test]
fn item2_streaming_standby_promoted_outside_walship_archives_history_then_partial() {
    let sc = Scenario::new("i10-streaming-promote");
    let certs = CertSet::create(&sc, "certs");
    let setup = receiver_config(&sc, "receiver", &certs, None);
    let sender = sender_for(&sc, "sender", &setup, &certs);
    let rx = Receiver::spawn(&sc, &setup.config, "receiver");
    let archive_command = format!(
        "archive_command = '{} --config {} push %p %f'",
        sc.bin("walship-sender").display(),
        sender.display()
    );
    let mut primary = PgCluster::init(
        &sc,
        "primary",
        &[
            "wal_level = replica",
            "archive_mode = on",
            &archive_command,
            "max_wal_senders = 5",
        ],
    );
    primary.start();
    primary.sql("create table t as select g as id from generate_series(1, 1000) g");
    let primary_conninfo = format!(
        "primary_conninfo = 'host={} port={} user=postgres'",
        sc.dir().display(),
        primary.port()
    );
    // The base backup leaves a backup history file on the primary, archived through walship.
    let mut standby = primary.basebackup_standby(
        "standby",
        &[
            "hot_standby = on",
            &primary_conninfo,
            "archive_mode = on",
            &archive_command,
        ],
    );
    let backup = wait_for(CATCH_UP, || {
        archived_files(&setup.archive_dir)
            .into_iter()
            .find(|n| n.ends_with(".backup"))
    })
    .unwrap_or_else(|| panic!("no .backup file was archived within {CATCH_UP:?}"));
    assert_eq!(
        fs::read(setup.archive_dir.join(&backup)).expect("read stored backup file"),
        fs::read(primary.wal_dir().join(&backup)).expect("read the primary's backup file")
    );

    standby.start();
    primary.sql("insert into t select g from generate_series(1001, 2000) g");
    let lsn = primary.sql("select pg_current_wal_lsn()");
    let probe = format!("select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
    assert!(
        wait_for(CATCH_UP, || (standby.try_sql(&probe).ok()? == "t")
            .then_some(()))
        .is_some(),
        "the streaming standby did not replay up to {lsn}"
    );
    pg_ctl_stop_immediate(&sc, &primary);
    let promote = sc
        .cmd(sc.pg_tool("pg_ctl"))
        .arg("-D")
        .arg(standby.data_dir())
        .args(["-w", "-t", "60", "promote"])
        .timeout(Duration::from_secs(90));
    sc.run(&promote).assert_success();

    // PostgreSQL archives the history first, then the old timeline's partial segment.
    let partial = wait_for(CATCH_UP, || {
        fs::read_dir(standby.wal_dir())
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.ends_with(".partial"))
    })
    .unwrap_or_else(|| panic!("the promoted standby made no .partial file"));
    for name in ["00000002.history", partial.as_str()] {
        let stored = setup.archive_dir.join(name);
        assert!(
            wait_for(CATCH_UP, || stored.is_file().then_some(())).is_some(),
            "{name} was not archived through walship within {CATCH_UP:?}: {}",
            standby.sql("select * from pg_stat_archiver")
        );
        assert!(
            fs::read(&stored).expect("read stored file")
                == fs::read(standby.wal_dir().join(name)).expect("read the new primary's file"),
            "stored {name} differs from the new primary's"
        );
    }
    assert_eq!(
        standby.sql("select failed_count from pg_stat_archiver"),
        "0",
        "the new primary's archive_command failed: {}",
        standby.sql("select * from pg_stat_archiver")
    );
    rx.stop_and_check(&[]);
}
