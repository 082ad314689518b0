//! Issue 12 item 5: the way back. A primary A archives through walship to a receiver feeding
//! standby B; A crashes and B is promoted (timeline 2). Then A's host gets a receiver of its
//! own, B ships its WAL there through walship, A is rewound (`pg_rewind`, the faster path) and
//! started as B's standby, follows B under load, and a planned switchover makes A the primary
//! again (timeline 3) with B's data. Data equal at each step.

use std::fs;
use std::path::Path;

use walship_tests::failover::{
    append_conninfo, conninfo, pgbench_digest, run_receiver, Pair, PairOptions, CATCH_UP,
};
use walship_tests::pg::PgCluster;
use walship_tests::process::wait_for;
use walship_tests::walship::{receiver_config, sender_for};
use walship_tests::{Receiver, Scenario};

/// Wait until `cluster`'s archiver reports `segment` (or later) archived. Failed attempts
/// before that are allowed: only the archived position matters.
fn wait_archived(cluster: &PgCluster, segment: &str) {
    let q = "select coalesce(last_archived_wal, '') from pg_stat_archiver";
    let done = wait_for(CATCH_UP, || {
        let last = cluster.sql(q);
        if last.len() == 24 && last.as_str() >= segment {
            return Some(());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        None
    });
    assert!(
        done.is_some(),
        "{} did not archive {segment} within {CATCH_UP:?}: {}",
        cluster.name(),
        cluster.sql("select * from pg_stat_archiver")
    );
}

/// Switch `cluster` to a new segment after writing a checkpoint record (so there is a segment
/// to finish even when idle), wait until it is archived; the switch LSN.
fn ship_current_segment(cluster: &PgCluster) -> String {
    cluster.sql("checkpoint");
    let lsn = cluster.switch_wal();
    let segment = cluster.walfile_name(&lsn);
    wait_archived(cluster, &segment);
    lsn
}

fn wait_replayed(cluster: &PgCluster, lsn: &str) {
    let probe = format!("select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
    let done = wait_for(CATCH_UP, || match cluster.try_sql(&probe) {
        Ok(s) if s == "t" => Some(()),
        _ => {
            std::thread::sleep(std::time::Duration::from_millis(200));
            None
        }
    });
    assert!(
        done.is_some(),
        "{} did not replay up to {lsn} within {CATCH_UP:?}",
        cluster.name()
    );
}

fn pg_rewind(sc: &Scenario, target: &Path, source_port: u16) {
    let cmd = sc
        .cmd(sc.pg_tool("pg_rewind"))
        .arg(format!("--target-pgdata={}", target.display()))
        .arg(format!("--source-server={}", conninfo(sc, source_port)));
    sc.run(&cmd).assert_success();
}

#[test]
fn item5_a_to_b_and_back_to_a_with_pg_rewind() {
    let mut p = Pair::start(
        "i12_way_back",
        &PairOptions {
            way_back: true,
            ..PairOptions::default()
        },
    );
    let sc = p.sc.clone();

    // 1. A -> B: pgbench on A, everything archived and replayed, then A crashes, B promoted.
    p.primary.pgbench(&["-i", "-s", "2", "-q"]);
    p.primary.pgbench(&["-n", "-c", "2", "-T", "3"]);
    let lsn = p.primary.switch_wal();
    p.wait_archived(&p.primary.walfile_name(&lsn));
    p.wait_replayed(&lsn);
    let digest_a = pgbench_digest(&p.primary);
    p.crash_primary();
    p.promote(&["--timeout", "60"]).assert_success();
    assert_eq!(p.standby.sql("select pg_is_in_recovery()"), "f");
    assert_eq!(pgbench_digest(&p.standby), digest_a, "B after failover");

    // 2. A receiver on A's host, pinned by A's data directory; B ships to it.
    let setup_a = receiver_config(&sc, "receiver-a", &p.certs, Some(p.primary.data_dir()));
    append_conninfo(&setup_a.config, &conninfo(&sc, p.primary.port()));
    let _rx_a = Receiver::spawn(&sc, &setup_a.config, "receiver-a");
    let sender_b = sender_for(&sc, "sender-b", &setup_a, &p.certs);
    let push_b = format!(
        "{} --config {} push %p %f",
        sc.bin("walship-sender").display(),
        sender_b.display()
    );
    p.standby
        .append_conf(&format!("\narchive_command = '{push_b}'\n"));
    p.standby.sql("select pg_reload_conf()");
    ship_current_segment(&p.standby);
    assert!(
        setup_a.archive_dir.join("00000002.history").is_file(),
        "B's timeline history reached A's archive"
    );

    // 3. A rewound from B and started as B's standby, fed by its own receiver. pg_rewind
    //    copies B's configuration files: A's own settings go after them (later lines win).
    pg_rewind(&sc, p.primary.data_dir(), p.standby.port());
    let restore_a = format!(
        "{} --config {} restore %f %p",
        sc.bin("walship-receiver").display(),
        setup_a.config.display()
    );
    let push_a = format!(
        "{} --config {} push %p %f",
        sc.bin("walship-sender").display(),
        p.sender.display()
    );
    p.primary.append_conf(&format!(
        "\n# the way back: A is B's standby\nport = {}\nhot_standby = on\n\
         restore_command = '{restore_a}'\narchive_command = '{push_a}'\n",
        p.primary.port()
    ));
    let signal = p.primary.data_dir().join("standby.signal");
    fs::write(&signal, b"").expect("write standby.signal");
    sc.user().chown(&signal);
    // A is consistent once it replayed past B's position at the rewind: ship that first.
    ship_current_segment(&p.standby);
    p.primary.start();
    assert_eq!(p.primary.sql("select pg_is_in_recovery()"), "t");

    // 4. B under load; A follows through walship.
    p.standby.pgbench(&["-n", "-c", "2", "-T", "3"]);
    let lsn_b = ship_current_segment(&p.standby);
    wait_replayed(&p.primary, &lsn_b);
    let digest_b = pgbench_digest(&p.standby);
    assert_eq!(pgbench_digest(&p.primary), digest_b, "A following B");

    // 5. Switchover back: B stops cleanly, A is promoted through its receiver.
    p.standby.stop();
    let out = run_receiver(&sc, &setup_a.config, "promote", &["--timeout", "60"]);
    out.assert_success();
    assert_eq!(p.primary.sql("select pg_is_in_recovery()"), "f", "{out}");
    assert_eq!(
        p.primary
            .sql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
        "00000003",
        "A runs timeline 3 after the switch back"
    );
    assert_eq!(
        pgbench_digest(&p.primary),
        digest_b,
        "A after the switch back"
    );
    p.primary
        .sql("create table after_way_back as select 1 as id");
    assert_eq!(p.primary.sql("select count(*) from after_way_back"), "1");
}
