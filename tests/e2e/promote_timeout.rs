//! A gap in the archive: a segment below the newest stored one is missing, so the standby stops
//! replaying at it. `promote --timeout 5` gives up without promoting (exit 1, "NOT promoted",
//! naming the gap), leaves no fence and the standby in recovery. Once the missing segment is
//! pushed, promote goes through and the standby has every row.

use std::fs;
use std::time::Instant;

use walship_tests::failover::{
    assert_promoted, next_segment, promote_line, writable_after, Pair, PairOptions,
};
use walship_tests::walship::{archived_files, assert_pushed};

#[test]
fn promote_timeout() {
    // No archive_command: completed segments wait in the primary's pg_wal and are pushed by
    // hand, all but one.
    let p = Pair::start(
        "promote_timeout",
        &PairOptions {
            archive: false,
            ..PairOptions::default()
        },
    );
    let sc = p.sc.clone();
    p.primary.sql("create table t (id int primary key)");
    let mut segments = Vec::new();
    for id in 1..=4 {
        p.primary.sql(&format!("insert into t values ({id})"));
        segments.push(p.switch_segment());
    }
    for pair in segments.windows(2) {
        assert_eq!(next_segment(&pair[0]), pair[1], "segments {segments:?}");
    }
    let gap = segments[1].clone();

    // Everything the primary completed (including what predates the base backup and the
    // backup history file), except the gap.
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
    assert!(
        segments.iter().all(|s| ready.contains(s)),
        "not all of {segments:?} are ready for archiving: {ready:?}"
    );
    for name in ready.iter().filter(|n| **n != gap) {
        assert_pushed(&sc, &p.sender, &p.primary.wal_dir().join(name), name);
    }
    let archived = archived_files(&p.setup.archive_dir);
    assert!(!archived.contains(&gap), "{archived:?}");
    assert!(archived.contains(&segments[3]), "{archived:?}");

    // The standby replays the first segment and then keeps asking for the gap.
    let st = p.wait_restore_missed(&gap);
    assert_eq!(
        st["newest_segment"].as_str(),
        Some(segments[3].as_str()),
        "{st:#}"
    );
    assert_eq!(
        p.standby.sql("select array_agg(id order by id) from t"),
        "{1}"
    );

    let started = Instant::now();
    let out = p.promote(&["--timeout", "5"]);
    let took = started.elapsed();
    out.assert_code(1);
    assert!(
        took.as_secs_f64() < 15.0,
        "promote --timeout 5 took {took:.1?}\n{out}"
    );
    assert!(
        took.as_secs_f64() >= 5.0,
        "promote --timeout 5 gave up after {took:.1?}, before its timeout\n{out}"
    );
    for needle in ["NOT promoted", "gap", gap.as_str()] {
        assert!(
            out.stderr.contains(needle),
            "promote's stderr lacks {needle:?}\n{out}"
        );
    }
    assert!(
        !out.stdout.contains("promoted:"),
        "promote claims a promotion\n{out}"
    );
    assert_eq!(p.standby.sql("select pg_is_in_recovery()"), "t");
    let st = p.status();
    assert_eq!(st["fenced"], false, "{st:#}");
    assert!(st["fence"].is_null(), "{st:#}");
    assert!(
        !p.setup.archive_dir.join("walship.fence").exists(),
        "a failed promote left walship.fence"
    );

    // Fill the gap: now promote waits for replay of all four segments and promotes.
    assert_pushed(&sc, &p.sender, &p.primary.wal_dir().join(&gap), &gap);
    let out = p.promote(&["--timeout", "60"]);
    out.assert_code(0);
    eprintln!(
        "promote_timeout: promote took {:.1?}, writable after {}s",
        out.elapsed,
        writable_after(&out)
    );
    assert_eq!(promote_line(&out, "timeline: "), "1 -> 2", "\n{out}");
    assert_promoted(&p.standby);
    assert_eq!(
        p.standby.sql("select array_agg(id order by id) from t"),
        "{1,2,3,4}"
    );
    let Pair { rx, .. } = p;
    rx.stop_and_check(&[]);
}
