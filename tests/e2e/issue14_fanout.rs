//! Issue 14 item 1, fan-out: one primary, two receivers. With `require = "all"` every archived
//! segment is on both, a receiver killed makes pushes fail (PostgreSQL retries) and nothing is
//! lost once it returns; with `require = 1` archiving goes on while one is down and the daemon
//! catches it up when it returns. `walship-sender status` says who is down and what is owed;
//! the config refuses both forms at once and a `require` out of range.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use walship_tests::process::wait_for;
use walship_tests::segments::{segment_name, segno};
use walship_tests::walship::{
    archived_files, receiver_config, toml_str, ReceiverSetup, COMMAND_TIMEOUT,
};
use walship_tests::{CertSet, Output, PgCluster, Receiver, Scenario};

/// sender.toml for `receivers` in `[[receivers]]` tables, `extra` keys before them.
fn fanout_sender(
    sc: &Scenario,
    receivers: &[&ReceiverSetup],
    certs: &CertSet,
    extra: &str,
) -> PathBuf {
    let path = |p: PathBuf| toml_str(&p.to_string_lossy());
    let mut text = format!(
        "# walship e2e fan-out sender\nca = {}\ncert = {}\nkey = {}\nconnect_timeout = \"2s\"\ntimeout = \"30s\"\n{extra}\n",
        path(certs.ca()),
        path(certs.client_cert()),
        path(certs.client_key()),
    );
    for rx in receivers {
        text.push_str(&format!(
            "\n[[receivers]]\naddress = {}\nserver_name = {}\n",
            toml_str(&rx.addr),
            toml_str(walship_tests::certs::SERVER_NAME)
        ));
    }
    let config = sc.path("sender.toml");
    sc.write_at(&config, text, 0o644);
    config
}

/// `pg_stat_archiver`: (last archived, failed count, last failed).
fn archiver(primary: &PgCluster) -> (String, u64, String) {
    let row = primary.sql(
        "select coalesce(last_archived_wal, ''), failed_count, coalesce(last_failed_wal, '') from pg_stat_archiver",
    );
    let f: Vec<&str> = row.split('|').collect();
    (
        f[0].to_string(),
        f[1].parse().expect("failed_count"),
        f[2].to_string(),
    )
}

/// Wait until PostgreSQL counts `segment` (or a later one) as archived.
fn wait_archived(primary: &PgCluster, segment: &str) {
    let done = wait_for(Duration::from_secs(120), || {
        let (last, _, _) = archiver(primary);
        (last.len() == 24 && last.as_str() >= segment).then_some(())
    });
    assert!(
        done.is_some(),
        "{segment} never archived: {:?}",
        archiver(primary)
    );
}

/// The segments in an archive (no history or backup files).
fn segments(dir: &Path) -> Vec<String> {
    archived_files(dir)
        .into_iter()
        .filter(|n| n.len() == 24)
        .collect()
}

/// Both archives hold the same files with the same bytes, `first..=last` among them.
fn assert_identical(a: &ReceiverSetup, b: &ReceiverSetup, first: &str, last: &str) {
    let names = archived_files(&a.archive_dir);
    assert_eq!(
        names,
        archived_files(&b.archive_dir),
        "the two archives differ"
    );
    let segs = segments(&a.archive_dir);
    for n in segno(first)..=segno(last) {
        assert!(
            segs.contains(&segment_name(n)),
            "{} missing: {segs:?}",
            segment_name(n)
        );
    }
    for name in &names {
        let (x, y) = (
            fs::read(a.archive_dir.join(name)).expect("read archive a"),
            fs::read(b.archive_dir.join(name)).expect("read archive b"),
        );
        assert!(x == y, "{name} differs between the archives");
    }
}

/// One more segment with a row in it; its name.
fn write_segment(primary: &PgCluster, n: usize) -> String {
    primary.sql(&format!(
        "insert into fanout_marker values ({n}, repeat('x', 1000))"
    ));
    let lsn = primary.switch_wal();
    primary.walfile_name(&lsn)
}

fn status(sc: &Scenario, sender: &Path, json: bool) -> Output {
    let mut cmd = sc
        .cmd(sc.bin("walship-sender"))
        .arg("--config")
        .arg(sender)
        .arg("status");
    if json {
        cmd = cmd.arg("--json");
    }
    sc.run(&cmd.timeout(COMMAND_TIMEOUT))
}

#[test]
fn require_all_fails_while_one_is_down_and_loses_nothing() {
    let sc = Scenario::new("issue14_fanout_all");
    let certs = CertSet::create(&sc, "certs");
    let mut primary =
        PgCluster::init_archive_paused(&sc, "primary", &[], &["wal_keep_size = '1GB'"]);
    primary.start();
    let first = primary.sql("select pg_walfile_name(pg_current_wal_lsn())");
    let a = receiver_config(&sc, "rx-a", &certs, None);
    let b = receiver_config(&sc, "rx-b", &certs, None);
    let _rx_a = Receiver::spawn(&sc, &a.config, "rx-a");
    let mut rx_b = Receiver::spawn(&sc, &b.config, "rx-b");
    // No daemon: every push connects to both receivers itself.
    let sender = fanout_sender(&sc, &[&a, &b], &certs, "");
    primary.archive_with_push(&sender);

    primary.pgbench(&["-i", "-s", "2", "-q"]);
    primary.pgbench(&["-n", "-c", "2", "-T", "3"]);
    primary.sql("create table fanout_marker (n int, pad text)");
    let last = write_segment(&primary, 0);
    wait_archived(&primary, &last);
    assert_identical(&a, &b, &first, &last);
    let (_, failed_before, _) = archiver(&primary);
    assert_eq!(failed_before, 0, "pushes failed with both receivers up");

    // B down: the push of the next segment fails (A has it, B not), PostgreSQL retries.
    rx_b.kill9();
    let held = write_segment(&primary, 1);
    let failing = wait_for(Duration::from_secs(60), || {
        let (_, failed, last_failed) = archiver(&primary);
        (failed > failed_before && last_failed == held).then_some(())
    });
    assert!(
        failing.is_some(),
        "push of {held} did not fail: {:?}",
        archiver(&primary)
    );
    let (last_archived, _, _) = archiver(&primary);
    assert!(
        last_archived < held,
        "{held} counted archived with a receiver down"
    );
    assert!(!segments(&b.archive_dir).contains(&held));
    let out = status(&sc, &sender, false);
    out.assert_code(1);
    assert!(
        out.stdout
            .contains(&format!("receiver {} (localhost): DOWN", b.addr)),
        "{out}"
    );
    assert!(out.stdout.contains("CANNOT be met"), "{out}");
    assert!(out.stdout.contains("daemon: none"), "{out}");
    let log = fs::read_to_string(primary.log_path()).unwrap_or_default();
    assert!(
        log.lines().any(
            |l| l.contains("stored on 1 of 2 receivers, require = \"all\"") && l.contains(&b.addr)
        ),
        "no one-line failure naming {} in PostgreSQL's log",
        b.addr
    );

    // B back: the retry stores it there, and archiving goes on; nothing lost.
    rx_b.start();
    let after = write_segment(&primary, 2);
    wait_archived(&primary, &after);
    assert_identical(&a, &b, &first, &after);
    assert_eq!(status(&sc, &sender, false).code(), 0);
}

#[test]
fn require_one_goes_on_and_the_daemon_catches_up() {
    let sc = Scenario::new("issue14_fanout_one");
    let certs = CertSet::create(&sc, "certs");
    let mut primary =
        PgCluster::init_archive_paused(&sc, "primary", &[], &["wal_keep_size = '1GB'"]);
    primary.start();
    let first = primary.sql("select pg_walfile_name(pg_current_wal_lsn())");
    let a = receiver_config(&sc, "rx-a", &certs, None);
    let b = receiver_config(&sc, "rx-b", &certs, None);
    let _rx_a = Receiver::spawn(&sc, &a.config, "rx-a");
    let mut rx_b = Receiver::spawn(&sc, &b.config, "rx-b");
    let extra = format!(
        "require = 1\nsocket = \"sender.sock\"\npgdata = {}\nlookahead = 2\n",
        toml_str(&primary.data_dir().to_string_lossy())
    );
    let sender = fanout_sender(&sc, &[&a, &b], &certs, &extra);
    let daemon = walship_tests::walship::Service::spawn_daemon(&sc, &sender, "daemon");
    primary.archive_with_push(&sender);

    primary.pgbench(&["-i", "-s", "1", "-q"]);
    primary.sql("create table fanout_marker (n int, pad text)");
    let last = write_segment(&primary, 0);
    wait_archived(&primary, &last);
    // Both got everything (the second may finish a moment after the policy was met).
    let both = wait_for(Duration::from_secs(30), || {
        (archived_files(&a.archive_dir) == archived_files(&b.archive_dir)).then_some(())
    });
    assert!(both.is_some(), "archives differ with both up");
    assert_identical(&a, &b, &first, &last);

    // B down: archiving goes on with A alone.
    rx_b.kill9();
    let mut written = Vec::new();
    for n in 1..=3 {
        written.push(write_segment(&primary, n));
    }
    let newest = written.last().expect("segments written").clone();
    wait_archived(&primary, &newest);
    let on_b = segments(&b.archive_dir);
    assert!(
        written.iter().all(|s| !on_b.contains(s)),
        "B stored while down?"
    );
    assert!(segments(&a.archive_dir).contains(&newest));
    // The daemon notices within its connect_timeout (2 s) that B is gone.
    let mut last = None;
    let seen = wait_for(Duration::from_secs(60), || {
        let json = status(&sc, &sender, true);
        let v: serde_json::Value = serde_json::from_str(json.stdout.trim()).ok()?;
        let owed = v["receivers"][1]["owed"].as_u64().unwrap_or(0);
        let down = v["receivers"][1]["reachable"] == false;
        last = Some(json);
        (down && owed >= 3).then_some(v)
    });
    let Some(v) = seen else {
        panic!("status never showed B down owing 3 files: {last:?}");
    };
    let json = last.expect("a status");
    json.assert_code(0);
    assert_eq!(v["daemon"], "running", "{json}");
    assert_eq!(v["policy_met"], true, "{json}");
    assert_eq!(v["receivers"][0]["reachable"], true, "{json}");
    assert_eq!(v["receivers"][0]["newest_acked"], newest.as_str(), "{json}");
    let out = status(&sc, &sender, false);
    out.assert_code(0);
    assert!(out.stdout.contains("daemon: running"), "{out}");
    assert!(
        out.stdout
            .contains(&format!("receiver {} (localhost): DOWN since", b.addr)),
        "{out}"
    );
    assert!(
        out.stdout
            .contains(&format!("newest acknowledged {newest}")),
        "{out}"
    );
    assert!(out.stdout.contains("to catch up when it answers"), "{out}");
    assert!(
        out.stdout
            .contains("require = 1, 1 of 2 receivers reachable, 1 needed: can be met"),
        "{out}"
    );

    // B back: the daemon ships it what it owes (still in pg_wal), without PostgreSQL asking.
    rx_b.start();
    let caught_up = wait_for(Duration::from_secs(90), || {
        let on_b = segments(&b.archive_dir);
        written.iter().all(|s| on_b.contains(s)).then_some(())
    });
    assert!(
        caught_up.is_some(),
        "B not caught up: has {:?}\ndaemon log:\n{}",
        segments(&b.archive_dir),
        walship_tests::process::tail(daemon.log_path(), 30)
    );
    assert_identical(&a, &b, &first, &newest);
    let json = status(&sc, &sender, true);
    let v: serde_json::Value = serde_json::from_str(json.stdout.trim()).expect("status --json");
    assert_eq!(v["receivers"][1]["reachable"], true, "{json}");
    assert_eq!(v["receivers"][1]["owed"], 0, "{json}");
    assert_eq!(v["receivers"][1]["newest_acked"], newest.as_str(), "{json}");
    assert_eq!(v["receivers"][1]["missed"], 0, "{json}");
}

#[test]
fn config_refuses_both_forms_and_require_out_of_range() {
    let sc = Scenario::new("issue14_fanout_config");
    let certs = CertSet::create(&sc, "certs");
    let a = receiver_config(&sc, "rx-a", &certs, None);
    let b = receiver_config(&sc, "rx-b", &certs, None);
    let path = sc.write("seg", "");
    let run = |extra: &str| {
        let sender = fanout_sender(&sc, &[&a, &b], &certs, extra);
        sc.run(
            &sc.cmd(sc.bin("walship-sender"))
                .arg("--config")
                .arg(&sender)
                .args(["push"])
                .arg(&path)
                .arg("000000010000000000000001")
                .timeout(COMMAND_TIMEOUT),
        )
    };
    for (extra, says) in [
        (
            "require = 3",
            "require = 3: expected \"all\" or a number of receivers from 1 to 2",
        ),
        ("require = 0", "require = 0: expected"),
        ("require = \"most\"", "require = \"most\": expected"),
        (
            "receiver = \"127.0.0.1:7443\"\nserver_name = \"localhost\"",
            "use either `receiver` and `server_name` (one receiver) or `[[receivers]]` tables",
        ),
    ] {
        let out = run(extra);
        out.assert_code(1);
        let first = out.stderr.lines().next().unwrap_or("");
        assert!(
            first.contains(says) && first.contains("sender.toml"),
            "{extra}: {out}"
        );
    }
}
