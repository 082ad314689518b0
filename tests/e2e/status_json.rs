//! `walship-receiver status --json` on a running pair: every documented field, with values
//! checked against the archive and the standby; with an unreachable standby it still reports
//! everything and says so (exiting 1 since issue 11: an unreachable standby is a problem);
//! without conninfo `standby` is null.

use std::fs;

use walship_tests::failover::{
    next_segment, run_receiver, status_json as status_of, Pair, PairOptions,
};
use walship_tests::net::free_tcp_port;
use walship_tests::walship::archived_files;

#[test]
fn status_json() {
    let p = Pair::start("status_json", &PairOptions::default());
    let sc = p.sc.clone();
    p.primary
        .sql("create table t as select g as id from generate_series(1, 1000) g");
    let last = p.switch_segment();
    p.wait_archived(&last);
    let st = p.wait_restore_missed(&next_segment(&last));

    let archive = &p.setup.archive_dir;
    let files = archived_files(archive);
    let bytes: u64 = files
        .iter()
        .map(|n| {
            fs::metadata(archive.join(n))
                .expect("stat archived file")
                .len()
        })
        .sum();
    let sysid = p
        .standby
        .sql("select system_identifier::text from pg_control_system()");
    let replay_lsn = p.standby.sql("select pg_last_wal_replay_lsn()");

    assert_eq!(
        st["archive_dir"],
        archive.display().to_string().as_str(),
        "{st:#}"
    );
    assert_eq!(st["cluster_system_identifier"], sysid.as_str(), "{st:#}");
    assert_eq!(st["files"], files.len(), "{st:#}");
    assert_eq!(st["bytes"], bytes, "{st:#}");
    assert_eq!(st["newest_segment"], last.as_str(), "{st:#}");
    let arrived = st["newest_segment_arrived_at"]
        .as_str()
        .expect("arrived_at");
    assert!(
        arrived.len() >= 20 && arrived.ends_with('Z') && arrived.as_bytes()[10] == b'T',
        "newest_segment_arrived_at {arrived:?} is not RFC 3339 UTC"
    );
    let age = st["newest_segment_age_seconds"].as_f64().expect("age");
    assert!((0.0..120.0).contains(&age), "{st:#}");
    assert_eq!(st["fenced"], false, "{st:#}");
    assert!(st["fence"].is_null(), "{st:#}");
    assert_eq!(st["restore"]["last_served"], last.as_str(), "{st:#}");
    assert!(st["restore"]["last_served_at"].is_string(), "{st:#}");
    assert_eq!(
        st["restore"]["last_missed"],
        next_segment(&last).as_str(),
        "{st:#}"
    );
    assert!(st["restore"]["last_missed_at"].is_string(), "{st:#}");
    let standby = &st["standby"];
    assert_eq!(standby["reachable"], true, "{st:#}");
    assert_eq!(standby["accepts_queries"], true, "{st:#}");
    assert_eq!(standby["in_recovery"], true, "{st:#}");
    assert_eq!(standby["replay_lsn"], replay_lsn.as_str(), "{st:#}");
    assert!(standby["error"].is_null(), "{st:#}");

    // The standby unreachable (nothing listens on the port): it says so, and (issue 11 item 4)
    // exits 1.
    let dead = p.config_variant(
        "receiver-dead",
        Some(&format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=2",
            free_tcp_port()
        )),
    );
    let out = run_receiver(&sc, &dead, "status", &["--json"]);
    out.assert_code(1);
    let down: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json printed invalid JSON ({e})\n{out}"));
    assert_eq!(down["standby"]["reachable"], false, "{down:#}");
    assert_eq!(down["standby"]["accepts_queries"], false, "{down:#}");
    assert!(down["standby"]["in_recovery"].is_null(), "{down:#}");
    assert!(
        down["standby"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{down:#}"
    );
    for field in [
        "files",
        "bytes",
        "newest_segment",
        "fenced",
        "cluster_system_identifier",
    ] {
        assert_eq!(down[field], st[field], "{field} differs\n{down:#}");
    }
    let human = run_receiver(&sc, &dead, "status", &[]);
    human.assert_code(1);
    assert!(human.stdout.contains("unreachable"), "\n{human}");

    // No conninfo: the archive's part only.
    let bare = p.config_variant("receiver-bare", None);
    let offline = status_of(&sc, &bare);
    assert!(offline["standby"].is_null(), "{offline:#}");
    assert_eq!(offline["newest_segment"], last.as_str(), "{offline:#}");

    let Pair { rx, .. } = p;
    rx.stop_and_check(&[]);
}
