//! Failover under load: the primary ships pgbench's WAL, dies (`pg_ctl stop -m immediate`), and
//! `walship-receiver promote` turns the hot standby into a writable primary on timeline 2 that
//! holds exactly the data the primary had archived. A second promote finds nothing to do.

use std::time::Instant;

use walship_tests::failover::{
    assert_promoted, parse_lsn, pgbench_digest, promote_line, writable_after, Pair, PairOptions,
};
use walship_tests::walship::archived_files;

#[test]
fn failover() {
    let t0 = Instant::now();
    let p = Pair::start(
        "failover",
        &PairOptions {
            archive_timeout: Some("1s"),
            ..PairOptions::default()
        },
    );
    p.primary.pgbench(&["-i", "-s", "2", "-q"]);
    p.primary.pgbench(&["-n", "-c", "2", "-T", "5"]);
    let switch_lsn = p.primary.switch_wal();
    let last = p.primary.walfile_name(&switch_lsn);
    let (archived, failed) = p.wait_archived(&last);
    assert_eq!(
        failed, 0,
        "the primary's archive_command failed {failed} times"
    );
    let digest = pgbench_digest(&p.primary);
    let primary_lsn = p.primary.sql("select pg_current_wal_lsn()");
    eprintln!(
        "failover: {archived} files archived up to {last} (switch at {switch_lsn}, primary at \
         {primary_lsn}) after {:.1?}",
        t0.elapsed()
    );
    p.crash_primary();

    let out = p.promote(&["--timeout", "60"]);
    out.assert_code(0);
    let secs = writable_after(&out);
    eprintln!(
        "failover: promote took {:.1?}, writable after {secs}s",
        out.elapsed
    );
    assert_eq!(promote_line(&out, "timeline: "), "1 -> 2", "\n{out}");
    // Everything up to the switch was archived, so replay reached it before promotion.
    let promoted_at = promote_line(&out, "promotion LSN: ");
    assert!(
        parse_lsn(promoted_at) >= parse_lsn(&switch_lsn),
        "promoted at {promoted_at}, before the primary's last archived switch at {switch_lsn}\n{out}"
    );
    let newest = archived_files(&p.setup.archive_dir)
        .into_iter()
        .filter(|n| n.len() == 24)
        .max()
        .expect("segments in the archive");
    let newest_line = promote_line(&out, "newest stored segment: ");
    assert!(
        newest_line.starts_with(&format!("{newest}, arrived ")),
        "promote names {newest_line:?}, the archive's newest segment is {newest}\n{out}"
    );

    // The new primary: out of recovery, on timeline 2, writable, with the old primary's data.
    assert_promoted(&p.standby);
    assert_eq!(
        pgbench_digest(&p.standby),
        digest,
        "the promoted standby's pgbench tables differ from the primary's"
    );
    let st = p.status();
    assert_eq!(st["fenced"], true, "{st:#}");
    assert_eq!(st["fence"]["new_timeline"], 2, "{st:#}");
    assert_eq!(st["fence"]["promoted_at_lsn"], promoted_at, "{st:#}");

    // Nothing left to promote; the fence stays as it was.
    let again = p.promote(&["--timeout", "10"]);
    again.assert_code(1);
    assert!(
        again.stderr.contains("not in recovery"),
        "a second promote should say \"not in recovery\"\n{again}"
    );
    assert!(
        !again.stdout.contains("promoted:"),
        "a second promote claims a promotion\n{again}"
    );
    assert_eq!(
        p.status()["fence"],
        st["fence"],
        "the second promote changed the fence"
    );

    eprintln!("failover: done after {:.1?}", t0.elapsed());
    let Pair { rx, .. } = p;
    rx.stop_and_check(&[]);
}
