//! Failover of a warm standby (`hot_standby = off`: no connections during recovery): promote
//! follows replay through the restore record, signals the standby through `pgdata`, and leaves
//! a writable primary on timeline 2 holding the old primary's archived data.

use std::time::Instant;

use walship_tests::failover::{
    assert_promoted, next_segment, pgbench_digest, promote_line, writable_after, Pair, PairOptions,
};

#[test]
fn warm_standby() {
    let t0 = Instant::now();
    let p = Pair::start(
        "warm_standby",
        &PairOptions {
            hot_standby: false,
            archive_timeout: Some("1s"),
            ..PairOptions::default()
        },
    );
    // No queries during recovery: the standby shows only as "up, refusing connections".
    assert!(
        p.standby.try_sql("select 1").is_err(),
        "a warm standby accepted a query during recovery"
    );
    let st = p.status();
    assert_eq!(st["standby"]["reachable"], true, "{st:#}");
    assert_eq!(st["standby"]["accepts_queries"], false, "{st:#}");
    assert_eq!(st["standby"]["in_recovery"], true, "{st:#}");

    p.primary.pgbench(&["-i", "-s", "2", "-q"]);
    p.primary.pgbench(&["-n", "-c", "2", "-T", "5"]);
    let last = p.switch_segment();
    let (_, failed) = p.wait_archived(&last);
    assert_eq!(failed, 0, "the primary's archive_command failed");
    let digest = pgbench_digest(&p.primary);
    p.crash_primary();
    eprintln!("warm_standby: primary crashed after {:.1?}", t0.elapsed());

    let out = p.promote(&["--timeout", "60"]);
    out.assert_code(0);
    let secs = writable_after(&out);
    eprintln!(
        "warm_standby: promote took {:.1?}, writable after {secs}s",
        out.elapsed
    );
    assert!(
        out.stderr.contains("hot_standby = off"),
        "promote should say it follows a warm standby through the restore record\n{out}"
    );
    assert_eq!(promote_line(&out, "timeline: "), "1 -> 2", "\n{out}");

    // Promote waited until the standby asked for the segment after the newest stored one.
    let st = p.status();
    let newest = st["newest_segment"]
        .as_str()
        .expect("newest_segment")
        .to_string();
    assert!(newest.as_str() >= last.as_str(), "{st:#}");
    assert_eq!(
        st["restore"]["last_missed"].as_str(),
        Some(next_segment(&newest).as_str()),
        "{st:#}"
    );
    assert_eq!(st["fence"]["new_timeline"], 2, "{st:#}");

    assert_promoted(&p.standby);
    assert_eq!(
        pgbench_digest(&p.standby),
        digest,
        "the promoted standby's pgbench tables differ from the primary's"
    );
    eprintln!("warm_standby: done after {:.1?}", t0.elapsed());
    let Pair { rx, .. } = p;
    rx.stop_and_check(&[]);
}
