//! Segment sizes other than 16 MiB (`initdb --wal-segsize`). A 64 MiB cluster archives through
//! the daemon with look-ahead, its standby replays and `promote` turns it into a primary. A
//! 1 GiB segment (the largest PostgreSQL makes) ships direct with zstd and through the daemon
//! without compression in bounded memory, and `restore` gives it back byte for byte.

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;

use walship_tests::failover::{assert_promoted, pgbench_digest, promote_line, Pair, PairOptions};
use walship_tests::process::peak_rss_kib;
use walship_tests::walship::{
    add_keys, archived_files, push_with_peak_rss, receiver_config, restore, sender_for, Service,
};
use walship_tests::{CertSet, PgCluster, Receiver, Scenario};

const MIB: u64 = 1024 * 1024;

/// Peak memory the issue allows: a `push` process, and the receiver or the daemon.
const PUSH_MAX_KIB: u64 = 32 * 1024;
const SERVICE_MAX_KIB: u64 = 64 * 1024;

/// Makes `push` say on stderr how it was answered (`outcome=…`) and whether it fell back.
const DEBUG: &[(&str, &str)] = &[("RUST_LOG", "walship_sender=debug")];

/// The daemon answered (no fallback to a direct connection) with `outcome`.
fn assert_handed_off(stderr: &str, outcome: &str) {
    assert!(
        stderr.contains(&format!("outcome={outcome}")) && !stderr.contains("pushing directly"),
        "push was not answered {outcome} by the daemon:\n{stderr}"
    );
}

#[test]
fn sixty_four_mib_segments_through_the_daemon_replay_and_promote() {
    let p = Pair::start(
        "segsize_64",
        &PairOptions {
            archive: false,
            archive_timeout: Some("1s"),
            wal_segsize_mb: Some(64),
            ..PairOptions::default()
        },
    );
    assert_eq!(p.primary.sql("show wal_segment_size"), "64MB");
    add_keys(
        &p.sender,
        &format!(
            "socket = \"sender.sock\"\npgdata = \"{}\"\nlookahead = 2\n",
            p.primary.data_dir().display()
        ),
    );
    let daemon = Service::spawn_daemon(&p.sc, &p.sender, "daemon");
    let command = format!(
        "RUST_LOG=walship_sender=debug {} --config {} push %p %f",
        p.sc.bin("walship-sender").display(),
        p.sender.display()
    );
    p.primary
        .sql(&format!("alter system set archive_command = '{command}'"));
    p.primary.sql("select pg_reload_conf()");

    p.primary.pgbench(&["-i", "-s", "2", "-q"]);
    p.primary.pgbench(&["-n", "-c", "2", "-T", "3"]);
    let switch_lsn = p.primary.switch_wal();
    let last = p.primary.walfile_name(&switch_lsn);
    let (archived, failed) = p.wait_archived(&last);
    assert_eq!(failed, 0, "archive_command failed {failed} times");
    let segments: Vec<String> = archived_files(&p.setup.archive_dir)
        .into_iter()
        .filter(|n| n.len() == 24)
        .collect();
    assert!(segments.contains(&last), "{segments:?}");
    for name in &segments {
        let stored = p.setup.archive_dir.join(name);
        assert_eq!(
            file_len(&stored),
            64 * MIB,
            "{name} stored with the wrong size"
        );
        let original = p.primary.wal_dir().join(name);
        if original.exists() {
            assert_same_bytes(&original, &stored);
        }
    }
    eprintln!(
        "segsize_64: {archived} files archived, {} segments of 64 MiB",
        segments.len()
    );
    // Every push was answered by the daemon (debug lines of push land in PostgreSQL's log).
    let log = fs::read_to_string(p.primary.log_path()).expect("PostgreSQL log");
    assert!(log.contains("outcome="), "no push answered:\n{log}");
    assert!(
        !log.contains("pushing directly"),
        "a push fell back:\n{log}"
    );

    p.wait_replayed(&switch_lsn);
    let digest = pgbench_digest(&p.primary);
    p.crash_primary();
    daemon.stop_and_check(&[]);
    let out = p.promote(&["--timeout", "60"]);
    out.assert_code(0);
    assert_eq!(promote_line(&out, "timeline: "), "1 -> 2", "\n{out}");
    assert_promoted(&p.standby);
    assert_eq!(
        pgbench_digest(&p.standby),
        digest,
        "the promoted standby's pgbench tables differ from the primary's"
    );
}

#[test]
fn one_gib_segment_ships_in_bounded_memory_and_restores() {
    let sc = Scenario::new("segsize_1g");
    let certs = CertSet::create(&sc, "certs");
    // Never started: initdb leaves the first segment, 1 GiB with a real long page header.
    let cluster = PgCluster::init_with(&sc, "primary", &["--wal-segsize=1024"], &[]);
    let name = "000000010000000000000001";
    let segment = cluster.wal_dir().join(name);
    assert_eq!(file_len(&segment), 1024 * MIB);

    let setup = receiver_config(&sc, "receiver", &certs, None);
    let rx = Receiver::spawn(&sc, &setup.config, "receiver");
    let rx_pid = rx.pid().expect("receiver running");

    // Through the daemon, uncompressed: 1 GiB of plain bytes on the wire.
    let plain = sender_for(&sc, "sender_plain", &setup, &certs);
    add_keys(&plain, "compression = \"none\"\nsocket = \"plain.sock\"\n");
    let daemon = Service::spawn_daemon(&sc, &plain, "daemon");
    let daemon_pid = daemon.pid().expect("daemon running");
    let (out, handoff_kib) = push_with_peak_rss(&sc, &plain, &segment, name, DEBUG);
    out.assert_code(0);
    assert_handed_off(&out.stderr, "Stored");
    let stored = setup.archive_dir.join(name);
    assert_same_bytes(&segment, &stored);
    let daemon_kib = peak_rss_kib(daemon_pid).expect("daemon alive");

    // Direct with zstd (the default): the receiver compares it with the 1 GiB it stored.
    let direct = sender_for(&sc, "sender", &setup, &certs);
    let (out, push_kib) = push_with_peak_rss(&sc, &direct, &segment, name, DEBUG);
    out.assert_code(0);
    assert!(out.stderr.contains("outcome=AlreadyHad"), "{out}");
    let rx_kib = peak_rss_kib(rx_pid).expect("receiver alive");
    eprintln!(
        "segsize_1g: peak RSS push through the daemon {handoff_kib} KiB, daemon {daemon_kib} \
         KiB, push direct {push_kib} KiB, receiver {rx_kib} KiB; push direct {:.1?}",
        out.elapsed
    );
    for (what, kib, max) in [
        ("push (through the daemon)", handoff_kib, PUSH_MAX_KIB),
        ("daemon (no compression)", daemon_kib, SERVICE_MAX_KIB),
        ("push (direct, zstd)", push_kib, PUSH_MAX_KIB),
        ("receiver (after both)", rx_kib, SERVICE_MAX_KIB),
    ] {
        assert!(
            kib > 0 && kib <= max,
            "{what}: peak RSS {kib} KiB shipping a 1 GiB segment, over {max} KiB"
        );
    }
    daemon.stop_and_check(&[]);

    let dest = sc.path("restored");
    restore(&sc, &setup.config, name, &dest).assert_code(0);
    assert_same_bytes(&segment, &dest);
    rx.stop_and_check(&[]);
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len()
}

/// Compare two files in 4 MiB chunks (segments can be 1 GiB).
fn assert_same_bytes(a: &Path, b: &Path) {
    assert_eq!(
        file_len(a),
        file_len(b),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    let open = |p: &Path| File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a), open(b));
    let (mut ba, mut bb) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    let mut offset = 0u64;
    loop {
        let n = fa.read(&mut ba).expect("read");
        if n == 0 {
            return;
        }
        fb.read_exact(&mut bb[..n]).expect("read");
        assert!(
            ba[..n] == bb[..n],
            "{} and {} differ within bytes {offset}..{}",
            a.display(),
            b.display(),
            offset + n as u64
        );
        offset += n as u64;
    }
}
