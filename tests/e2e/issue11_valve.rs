//! Issue 11 item 2, test (b): the pg_wal valve on real PostgreSQL 15. With the receiver stopped
//! and `max_backlog` at four 1 MiB segments, pgbench fills WAL: the `.ready` backlog comes back
//! to the limit and stays there, PostgreSQL keeps running, each dropped segment is one ERROR line
//! in PostgreSQL's log and one record in the sender's state file. Once the receiver is back, the
//! next push reports the drops: `status` on the standby's host names the gap (exit 1), `check` on
//! the primary too; `promote` refuses without `--accept-gap` and promotes at the end before the
//! gap with it. The valve is off by default: nothing is dropped, pushes fail, `.ready` grows.
//! Through the daemon the valve holds too, and the daemon counts the drops.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use walship_tests::failover::{promote_line, run_receiver, Pair, PairOptions};
use walship_tests::pg::PgCluster;
use walship_tests::process::wait_for;
use walship_tests::walship::{add_keys, receiver_config, sender_config, toml_str, Service};
use walship_tests::{CertSet, Scenario};

/// max_backlog: four segments of 1 MiB.
const LIMIT_SEGMENTS: usize = 4;
const SETTLE: Duration = Duration::from_secs(120);

/// `.ready` files in the primary's archive_status.
fn ready_count(primary: &PgCluster) -> usize {
    std::fs::read_dir(primary.wal_dir().join("archive_status"))
        .expect("list archive_status")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".ready"))
        })
        .count()
}

/// The segments named by the valve's ERROR lines in PostgreSQL's log, one entry per line.
fn dropped_lines(primary: &PgCluster) -> Vec<String> {
    let log = std::fs::read_to_string(primary.log_path()).unwrap_or_default();
    log.lines()
        .filter_map(|l| {
            l.split("walship-sender: ERROR: dropped WAL segment ")
                .nth(1)
        })
        .map(|rest| rest[..24].to_string())
        .collect()
}

/// Write WAL until `n` more segments completed (one switch each, after some rows).
fn fill_segments(primary: &PgCluster, n: usize) {
    for _ in 0..n {
        primary
            .sql("insert into filler select g, repeat('x', 200) from generate_series(1, 2000) g");
        primary.switch_wal();
    }
}

/// A sender config for the pair's receiver with a short connect timeout (a push to a stopped
/// receiver fails in 1 s) and `extra` keys; replaces the pair's.
fn write_sender(p: &Pair, extra: &str) {
    let path = sender_config(
        &p.sc,
        "sender",
        &p.setup.addr,
        &p.certs.ca(),
        &p.certs.client_cert(),
        &p.certs.client_key(),
        Some("1s"),
    );
    assert_eq!(path, p.sender);
    add_keys(&path, extra);
}

fn status(sc: &Scenario, config: &Path, code: i32) -> Value {
    let out = run_receiver(sc, config, "status", &["--json"]);
    out.assert_code(code);
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json printed invalid JSON ({e})\n{out}"))
}

#[test]
fn item2_valve_drops_the_oldest_and_every_side_reports_the_gap() {
    let opts = PairOptions {
        wal_segsize_mb: Some(1),
        ..PairOptions::default()
    };
    let mut p = Pair::start("i11_valve", &opts);
    let pgdata = p.primary.data_dir().to_path_buf();
    write_sender(
        &p,
        &format!(
            "pgdata = {}\nmax_backlog = \"4MiB\"\n",
            toml_str(&pgdata.display().to_string())
        ),
    );
    p.primary.sql("create table filler (id int, pad text)");
    let before = p.switch_segment();
    p.wait_archived(&before);

    // The receiver goes away; pgbench fills WAL.
    p.rx.stop();
    p.primary.pgbench(&["-i", "-s", "2"]);
    p.primary.pgbench(&["-c", "2", "-T", "3"]);
    fill_segments(&p.primary, 3);
    let settled = wait_for(SETTLE, || {
        (ready_count(&p.primary) <= LIMIT_SEGMENTS && !dropped_lines(&p.primary).is_empty())
            .then_some(())
    });
    assert!(
        settled.is_some(),
        "the .ready backlog did not come down to {LIMIT_SEGMENTS} within {SETTLE:?}: {} waiting; archiver: {}",
        ready_count(&p.primary),
        p.primary.sql("select * from pg_stat_archiver")
    );
    // Bounded from then on: every new segment makes the oldest go.
    for _ in 0..3 {
        fill_segments(&p.primary, 1);
        let back = wait_for(SETTLE, || {
            (ready_count(&p.primary) <= LIMIT_SEGMENTS).then_some(())
        });
        assert!(back.is_some(), "{} .ready", ready_count(&p.primary));
    }
    // PostgreSQL keeps running and writing.
    p.primary.pgbench(&["-c", "1", "-t", "50"]);
    assert_eq!(p.primary.sql("select count(*) > 0 from filler"), "t");
    // Back at the limit: no further drop until more WAL comes (every drop's line is written
    // before its .ready goes).
    let back = wait_for(SETTLE, || {
        (ready_count(&p.primary) <= LIMIT_SEGMENTS).then_some(())
    });
    assert!(back.is_some(), "{} .ready", ready_count(&p.primary));

    // One ERROR line per dropped segment, consecutive from the oldest; the same in the record.
    let mut dropped = dropped_lines(&p.primary);
    let lines = dropped.len();
    dropped.sort();
    dropped.dedup();
    assert_eq!(lines, dropped.len(), "a segment dropped twice: {dropped:?}");
    for pair in dropped.windows(2) {
        assert_eq!(
            u64::from_str_radix(&pair[1][8..], 16).unwrap(),
            u64::from_str_radix(&pair[0][8..], 16).unwrap() + 1,
            "dropped segments not consecutive: {dropped:?}"
        );
    }
    let (first, last) = (dropped[0].clone(), dropped[dropped.len() - 1].clone());
    assert!(first > before, "{first} dropped though archived before");
    let record = std::fs::read_to_string(pgdata.join("walship_sender/walship.dropped"))
        .expect("the sender's record of dropped segments");
    for name in &dropped {
        assert_eq!(
            record.matches(name.as_str()).count(),
            1,
            "{name}:\n{record}"
        );
    }
    assert_eq!(record.matches("reported = false").count(), dropped.len());
    let problem = format!(
        "segments {first}..{last} were dropped on the primary to keep it running; this standby cannot be promoted past {first}; take a new base backup"
    );

    // The sender side lists it before the receiver knows.
    let check = |code: i32, told: &str| {
        let out = p.sc.run(
            &p.sc
                .cmd(p.sc.bin("walship-sender"))
                .arg("--config")
                .arg(&p.sender)
                .arg("check")
                .timeout(Duration::from_secs(60)),
        );
        out.assert_code(code);
        assert!(
            out.stdout
                .contains(&format!("FAIL pg_wal valve: {problem} ({told})")),
            "\n{out}"
        );
    };
    check(1, "not all reported to the receiver yet");

    // The receiver comes back: the next push reports the drops, the receiver records them.
    p.rx.start();
    let after = p.switch_segment();
    p.wait_archived(&after);
    let record = wait_for(Duration::from_secs(30), || {
        let r = std::fs::read_to_string(pgdata.join("walship_sender/walship.dropped")).ok()?;
        (!r.contains("reported = false")).then_some(r)
    });
    assert!(record.is_some(), "the drops were not marked reported");
    check(1, "the receiver knows");
    // The standby restores up to the gap and asks for its first segment.
    let st = wait_for(Duration::from_secs(60), || {
        let st = status(&p.sc, &p.setup.config, 1);
        (st["restore"]["last_missed"].as_str() == Some(first.as_str())).then_some(st)
    })
    .unwrap_or_else(|| {
        panic!(
            "the standby did not stop at {first}: {:#}",
            status(&p.sc, &p.setup.config, 1)
        )
    });
    assert_eq!(st["healthy"], false);
    assert_eq!(st["problems"][0], problem.as_str(), "{st:#}");
    assert_eq!(st["gaps"][0]["first"], first.as_str());
    assert_eq!(st["gaps"][0]["last"], last.as_str());
    assert_eq!(st["gaps"][0]["segments"], dropped.len() as u64);
    let human = run_receiver(&p.sc, &p.setup.config, "status", &[]);
    human.assert_code(1);
    assert!(
        human.stdout.contains(&format!("PROBLEM: {problem}")),
        "\n{human}"
    );
    assert!(p.setup.archive_dir.join("walship.gaps").is_file());

    // promote refuses past the gap without --accept-gap, and the standby stays in recovery.
    let refused = p.promote(&["--timeout", "30s"]);
    refused.assert_code(1);
    assert!(
        refused.stderr.contains(&problem) && refused.stderr.contains("--accept-gap"),
        "\n{refused}"
    );
    assert_eq!(refused.stderr.trim().lines().count(), 1, "\n{refused}");
    assert_eq!(p.standby.sql("select pg_is_in_recovery()"), "t");
    // With it: promoted at the end before the gap, and says so.
    let promoted = p.promote(&["--accept-gap", "--timeout", "60s"]);
    promoted.assert_code(0);
    assert!(
        promoted.stderr.contains("--accept-gap")
            && promoted.stderr.contains("promoting at the end of"),
        "\n{promoted}"
    );
    assert_eq!(p.standby.sql("select pg_is_in_recovery()"), "f");
    // The new timeline begins where the gap does: the promotion LSN is at the end of the
    // segment before it (pg_walfile_name names the segment an LSN ends, at a boundary).
    let lsn = promote_line(&promoted, "promotion LSN: ");
    let at = p.standby.walfile_name(lsn.trim());
    let pos = |name: &str| u64::from_str_radix(&name[8..], 16).expect("segment name");
    assert!(
        pos(&at) + 1 == pos(&first) || pos(&at) == pos(&first),
        "promoted at {lsn} ({at}), the gap starts at {first}\n{promoted}"
    );
    let Pair { rx, .. } = p;
    rx.stop_and_check(&["the primary reported a gap"]);
}

/// One GET of the daemon's `/metrics`; the value of `series`.
fn scrape(port: u16, series: &str) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("send the request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the response");
    text.lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().expect("a number"))
        })
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn item2_valve_is_off_by_default_and_holds_through_the_daemon() {
    let sc = Scenario::new("i11_valve_off");
    let certs = CertSet::create(&sc, "certs");
    // A receiver that never runs: every push fails.
    let setup = receiver_config(&sc, "receiver", &certs, None);
    let mut primary = PgCluster::init_archive_paused(&sc, "primary", &["--wal-segsize=1"], &[]);
    primary.start();
    let pgdata = primary.data_dir().to_path_buf();
    let sender = sender_config(
        &sc,
        "sender",
        &setup.addr,
        &certs.ca(),
        &certs.client_cert(),
        &certs.client_key(),
        Some("1s"),
    );
    add_keys(
        &sender,
        &format!("pgdata = {}\n", toml_str(&pgdata.display().to_string())),
    );
    primary.archive_with_push(&sender);
    primary.sql("create table filler (id int, pad text)");

    // Off by default: pushes fail, nothing is dropped, the backlog grows past any limit.
    let grown = LIMIT_SEGMENTS + 4;
    fill_segments(&primary, grown);
    let failed = wait_for(SETTLE, || {
        let f: u64 = primary
            .sql("select failed_count from pg_stat_archiver")
            .parse()
            .ok()?;
        (f >= 3).then_some(())
    });
    assert!(
        failed.is_some(),
        "{}",
        primary.sql("select * from pg_stat_archiver")
    );
    assert!(
        ready_count(&primary) >= grown,
        "{} .ready",
        ready_count(&primary)
    );
    assert_eq!(
        primary.sql("select archived_count from pg_stat_archiver"),
        "0"
    );
    assert!(dropped_lines(&primary).is_empty());
    assert!(!pgdata.join("walship_sender/walship.dropped").exists());

    // The valve on, pushes through the daemon: it drops the oldest until the backlog is back
    // at the limit, one ERROR line each in PostgreSQL's log and in the daemon's, and counts them.
    let port = walship_tests::net::free_tcp_port();
    add_keys(
        &sender,
        &format!(
            "max_backlog = \"4MiB\"\nsocket = \"sender.sock\"\nlookahead = 0\nmetrics_listen = \"127.0.0.1:{port}\"\n"
        ),
    );
    let daemon = Service::spawn_daemon(&sc, &sender, "daemon");
    assert_eq!(scrape(port, "walship_dropped_segments_total"), 0.0);
    fill_segments(&primary, 1);
    let settled = wait_for(SETTLE, || {
        (ready_count(&primary) <= LIMIT_SEGMENTS).then_some(())
    });
    assert!(
        settled.is_some(),
        "{} .ready; {}",
        ready_count(&primary),
        primary.sql("select * from pg_stat_archiver")
    );
    let dropped = dropped_lines(&primary);
    assert!(dropped.len() > grown - LIMIT_SEGMENTS, "{dropped:?}");
    let counted = wait_for(Duration::from_secs(10), || {
        (scrape(port, "walship_dropped_segments_total") == dropped.len() as f64).then_some(())
    });
    assert!(
        counted.is_some(),
        "metric {} for {} drops",
        scrape(port, "walship_dropped_segments_total"),
        dropped.len()
    );
    let log = daemon.log_text();
    for name in &dropped {
        let lines = log
            .lines()
            .filter(|l| l.contains("ERROR") && l.contains(&format!("dropped WAL segment {name}")))
            .count();
        assert_eq!(lines, 1, "{name} in the daemon log:\n{log}");
    }
    assert_eq!(primary.sql("select count(*) > 0 from filler"), "t");
    daemon.stop_and_check(&["dropped WAL segment", "retrying in", "did not answer"]);
}
