//! Issue 13 item 5: compression on several threads (`compression_threads`) and the codec that
//! fits the link (`compression = "auto"`, the daemon's per-receiver choice). The stream stays
//! one zstd frame (or plain bytes when the daemon decides to store), so a receiver decodes and
//! checks it as before: a standby replays everything shipped this way, and a direct push of a
//! whole segment on four threads is taken as the identical copy of what the daemon stored.
//! (Which codec "auto" picks depends on measured speeds: the decision is unit-tested on numbers
//! in `common/src/adapt.rs`, and measured in bench/compare.sh, not asserted here.)

use std::fs;

use walship_tests::failover::{conninfo, Pair, PairOptions};
use walship_tests::walship::{add_keys, assert_pushed, toml_str, Service};

#[test]
fn auto_compression_on_several_threads_ships_what_the_standby_replays() {
    let p = Pair::start("issue13_compression", &PairOptions::default());
    add_keys(
        &p.sender,
        &format!(
            "socket = \"sender.sock\"\npgdata = {}\nconninfo = {}\ncompression = \"auto\"\ncompression_threads = 2\n",
            toml_str(&p.primary.data_dir().display().to_string()),
            toml_str(&conninfo(&p.sc, p.primary.port()))
        ),
    );
    let daemon = Service::spawn_daemon(&p.sc, &p.sender, "daemon");

    // A few segments of WAL, compressible and not: enough whole 16 MiB segments for the
    // daemon to measure and pick a codec, and for the multithreaded encoder to cut each into
    // several jobs.
    p.primary.sql(
        "create table t as select g, md5(g::text) as h, repeat('walship', 20) as pad \
         from generate_series(1, 250000) g",
    );
    let mut last = String::new();
    for _ in 0..3 {
        p.primary
            .sql("insert into t select g, md5((g * 7)::text), repeat('x', 100) from generate_series(1, 60000) g");
        last = p.switch_segment();
    }
    replayed_alike(
        &p,
        &last,
        "select count(*), sum(g), md5(string_agg(h, '' order by g, h)) from t",
        "the daemon",
    );
    let stored = fs::read(p.setup.archive_dir.join(&last)).expect("read the archived segment");
    assert_eq!(stored.len(), 16 << 20);

    // The same segment pushed directly with a fixed level on four threads: the receiver
    // decodes the multithreaded frame, checks its digest and finds it identical.
    let text = fs::read_to_string(&p.sender).expect("read sender.toml");
    let direct = p.sender.with_file_name("sender-mt.toml");
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("compression") && !l.starts_with("socket"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(
        &direct,
        format!("{text}compression = \"zstd\"\ncompression_level = 3\ncompression_threads = 4\n"),
    )
    .expect("write sender-mt.toml");
    let segment = p.primary.data_dir().join("pg_wal").join(&last);
    assert_pushed(&p.sc, &direct, &segment, &last);
    daemon.stop_and_check(&[]);
}

#[test]
fn lz4_ships_what_the_standby_replays() {
    // `compression = "lz4"` on the archive_command's direct pushes: the receiver decodes the
    // LZ4 blocks, checks the digest, and stores the segment as pg_wal holds it.
    let p = Pair::start("issue13_lz4", &PairOptions::default());
    add_keys(&p.sender, "compression = \"lz4\"\n");
    p.primary.sql(
        "create table t as select g, md5(g::text) as h, repeat('walship', 20) as pad \
         from generate_series(1, 200000) g",
    );
    let last = p.switch_segment();
    p.wait_archived(&last);
    let lsn = p.primary.sql("select pg_current_wal_lsn()");
    p.wait_replayed(&lsn);
    let want = p
        .primary
        .sql("select count(*), md5(string_agg(h, '' order by g)) from t");
    assert_eq!(
        p.standby
            .sql("select count(*), md5(string_agg(h, '' order by g)) from t"),
        want,
        "the standby replayed what lz4 pushes shipped"
    );
    let segment = p.primary.data_dir().join("pg_wal").join(&last);
    let stored = fs::read(p.setup.archive_dir.join(&last)).expect("read the archived segment");
    assert_eq!(stored.len(), 16 << 20);
    if let Ok(in_pg_wal) = fs::read(&segment) {
        assert!(stored == in_pg_wal, "stored {last} differs from pg_wal's");
    }
}

/// Once `last` is archived and the standby has replayed up to the primary's position, `query`
/// answers the same on both.
fn replayed_alike(p: &Pair, last: &str, query: &str, shipper: &str) {
    p.wait_archived(last);
    let lsn = p.primary.sql("select pg_current_wal_lsn()");
    p.wait_replayed(&lsn);
    assert_eq!(
        p.standby.sql(query),
        p.primary.sql(query),
        "the standby replayed what {shipper} shipped"
    );
}
