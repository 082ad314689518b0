//! After `promote`, the receiver refuses the old timeline: an old primary that comes back
//! cannot store WAL it wrote after the last archived segment (its push exits 1 naming the
//! promotion LSN and nothing is stored), while history and partial files of any timeline, and
//! segments of the new timeline, are still accepted and served by `restore`.

use std::fs;

use walship_tests::failover::{next_segment, promote_line, writable_after, Pair, PairOptions};
use walship_tests::walship::{archived_files, assert_pushed, assert_refused, push, restore};

#[test]
fn fencing() {
    let p = Pair::start("fencing", &PairOptions::default());
    let sc = p.sc.clone();
    p.primary.sql(
        "create table t as select g as id, 'archived' as note from generate_series(1, 1000) g",
    );
    let last = p.switch_segment();
    let (_, failed) = p.wait_archived(&last);
    assert_eq!(failed, 0, "the primary's archive_command failed");

    // A write the archive never gets: it goes into the next segment, which is not complete
    // when the primary dies (no archive_timeout here, so nothing switches it).
    p.primary.sql("insert into t values (-1, 'lost')");
    let lost_segment = next_segment(&last);
    assert_eq!(
        p.primary
            .sql("select pg_walfile_name(pg_current_wal_lsn())"),
        lost_segment
    );
    p.crash_primary();

    let out = p.promote(&["--timeout", "60"]);
    out.assert_code(0);
    eprintln!("fencing: writable after {}s", writable_after(&out));
    let promoted_at = promote_line(&out, "promotion LSN: ").to_string();
    assert_eq!(promote_line(&out, "timeline: "), "1 -> 2", "\n{out}");
    assert_eq!(p.standby.sql("select count(*) from t"), "1000");
    assert_eq!(
        p.standby.sql("select count(*) from t where note = 'lost'"),
        "0"
    );

    // The old primary's segment holding the lost write: a real timeline-1 segment of this
    // cluster, which the archive lacks. Refused, naming the promotion, and not stored.
    let old = p.primary.wal_dir().join(&lost_segment);
    assert!(old.is_file(), "the old primary has no {}", old.display());
    let before = archived_files(&p.setup.archive_dir);
    assert!(
        !before.contains(&lost_segment),
        "{lost_segment} already archived: {before:?}"
    );
    let out = push(&sc, &p.sender, &old, &lost_segment);
    assert_refused(&out, &["closed: the standby was promoted at LSN"]);
    assert!(
        out.stderr
            .contains(&format!("promoted at LSN {promoted_at}")),
        "the refusal should name the promotion LSN {promoted_at}\n{out}"
    );
    assert!(
        out.stderr.contains("timeline 2"),
        "the refusal should name the new timeline\n{out}"
    );
    assert_eq!(
        archived_files(&p.setup.archive_dir),
        before,
        "a refused segment changed the archive"
    );
    let dest = sc.path("restored-lost");
    restore(&sc, &p.setup.config, &lost_segment, &dest).assert_code(1);
    assert!(
        !dest.exists(),
        "restore of a refused segment created {}",
        dest.display()
    );

    // The same bytes as a .partial (how an operator saves the old primary's last WAL): kept.
    let partial = format!("{lost_segment}.partial");
    assert_pushed(&sc, &p.sender, &old, &partial);
    let dest = sc.path("restored-partial");
    restore(&sc, &p.setup.config, &partial, &dest).assert_code(0);
    assert!(
        fs::read(&dest).expect("read restored partial")
            == fs::read(&old).expect("read old segment"),
        "restored {partial} differs from what was pushed"
    );

    // The new timeline's history file: accepted and served byte for byte.
    let history_src = p.standby.wal_dir().join("00000002.history");
    let history = fs::read(&history_src).expect("read the promoted standby's 00000002.history");
    assert_pushed(&sc, &p.sender, &history_src, "00000002.history");
    let dest = sc.path("restored-history");
    restore(&sc, &p.setup.config, "00000002.history", &dest).assert_code(0);
    assert_eq!(
        fs::read(&dest).expect("read restored history"),
        history,
        "restored 00000002.history differs"
    );

    // A completed segment of timeline 2 goes through: only timeline 1 is closed.
    let tl2_lsn = p.standby.switch_wal();
    let tl2_segment = p.standby.walfile_name(&tl2_lsn);
    assert!(tl2_segment.starts_with("00000002"), "{tl2_segment}");
    assert_pushed(
        &sc,
        &p.sender,
        &p.standby.wal_dir().join(&tl2_segment),
        &tl2_segment,
    );

    let st = p.status();
    assert_eq!(st["fenced"], true, "{st:#}");
    assert_eq!(st["fence"]["timeline"], 1, "{st:#}");
    assert_eq!(st["fence"]["new_timeline"], 2, "{st:#}");
    assert_eq!(
        st["fence"]["promoted_at_lsn"],
        promoted_at.as_str(),
        "{st:#}"
    );
    assert!(st["fence"]["fenced_at"].is_string(), "{st:#}");
    assert_eq!(st["standby"]["in_recovery"], false, "{st:#}");
    assert!(
        p.setup.archive_dir.join("walship.fence").is_file(),
        "no walship.fence in the archive"
    );

    p.rx.assert_logged("which is closed");
    let Pair { rx, .. } = p;
    rx.stop_and_check(&["which is closed"]);
}
