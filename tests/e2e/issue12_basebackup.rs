//! Issue 12, `walship-sender basebackup`: a standby made from nothing over the walship link.
//!
//! One primary (pgbench data) archiving through walship to a receiver whose `pgdata` does not
//! exist yet (`serve` starts anyway). In turn:
//! - a non-empty target is refused (exit 2) with nothing there touched;
//! - a sender SIGKILLed mid-backup, then a receiver SIGKILLed mid-backup: each leaves a target
//!   PostgreSQL refuses to start, and `status` names the unfinished backup;
//! - a run under pgbench succeeds (exit 0, the summary names `pg_ctl -D`), replacing the
//!   unfinished backup without a flag; the standby starts from the target, replays from the
//!   archive and, promoted, has the primary's pgbench data at the last archived segment;
//! - the finished standby is refused without `--force` (exit 2) and replaced with it.

use std::fs;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use walship_tests::failover::{conninfo, pgbench_digest, run_receiver};
use walship_tests::process::{wait_deadline, wait_for, Output};
use walship_tests::walship::{add_keys, receiver_config, sender_for, toml_str};
use walship_tests::{CertSet, PgCluster, Receiver, Scenario};

/// Deadline for one basebackup process.
const BACKUP_DEADLINE: Duration = Duration::from_secs(300);
const MARKER: &str = "walship-basebackup.unfinished";

#[test]
fn issue12_basebackup() {
    let sc = Scenario::new("issue12_basebackup");
    let Setup {
        primary,
        target,
        setup,
        sender,
    } = set_up(&sc, "");
    // serve starts although pgdata does not exist yet.
    let mut rx = Receiver::spawn(&sc, &setup.config, "receiver");
    primary.archive_with_push(&sender);

    not_empty_is_refused(&sc, &sender, &target);

    // The sender killed mid-backup.
    let child = spawn_backup(&sc, &sender, &[]);
    kill_when_copying(&sc, child, &target, None);
    assert_unstartable(&sc, &setup.config, &target);

    // The receiver killed mid-backup (the sender fails), then started again.
    let child = spawn_backup(&sc, &sender, &[]);
    kill_when_copying(&sc, child, &target, Some(&mut rx));
    rx.start();
    assert_unstartable(&sc, &setup.config, &target);

    // Under pgbench: replaces the unfinished backup without a flag, exit 0.
    let bench = spawn_pgbench(&sc, &primary, 20);
    let out = backup(&sc, &sender, &[]);
    out.assert_code(0);
    assert!(
        out.stderr
            .contains(&format!("pg_ctl -D {} start", target.display())),
        "no start command in the summary\n{out}"
    );
    assert!(out.stderr.contains("MB/s"), "{out}");
    assert!(!target.join(MARKER).exists());
    assert!(target.join("backup_label").exists());
    assert!(target.join("standby.signal").exists());
    let auto = fs::read_to_string(target.join("postgresql.auto.conf")).expect("auto.conf");
    assert!(auto.contains("restore_command = '"), "{auto}");
    assert!(auto.contains(&setup.config.display().to_string()), "{auto}");
    assert!(auto.contains("archive_cleanup_command"), "{auto}");
    // Nothing of pg_wal was copied; the empty directories are there.
    assert_eq!(
        fs::read_dir(target.join("pg_wal")).expect("pg_wal").count(),
        1,
        "pg_wal holds only archive_status"
    );
    assert!(target.join("pg_wal/archive_status").is_dir());
    assert!(!target.join("postmaster.pid").exists());

    // pgbench done: the primary's data at its last archived segment.
    let (expected, lsn) = when_archived(&primary, bench);

    let mut standby = replay_and_promote(&sc, &lsn, &expected);
    standby.stop();

    // A finished standby: refused without --force, nothing touched; replaced with it.
    let label = fs::read(target.join("backup_label")).unwrap_or_default();
    let out = backup(&sc, &sender, &[]);
    out.assert_code(2);
    assert!(out.stderr.contains("--force"), "{out}");
    assert_eq!(
        fs::read(target.join("backup_label")).unwrap_or_default(),
        label
    );
    backup(&sc, &sender, &["--force"]).assert_code(0);
    assert!(!target.join(MARKER).exists());

    drop(standby);
    rx.stop_and_check(&[
        "replaces the one in progress",
        "went away",
        "connection lost",
        "removing the previous contents",
        "is not empty and holds no unfinished walship backup",
        "already holds a PostgreSQL cluster",
        // A push the receiver's SIGKILL interrupted.
        "removed leftover of an interrupted transfer",
    ]);
}

/// The same standby made with `compression = "lz4"` (WAL and data files in LZ4 blocks; pgbench's
/// relations span many 256 KiB blocks), while pgbench writes: it replays from the archive and,
/// promoted, holds the primary's data.
#[test]
fn issue12_basebackup_lz4() {
    let sc = Scenario::new("issue12_basebackup_lz4");
    let Setup {
        primary,
        target,
        setup,
        sender,
    } = set_up(&sc, "compression = \"lz4\"\n");
    let rx = Receiver::spawn(&sc, &setup.config, "receiver");
    primary.archive_with_push(&sender);

    let bench = spawn_pgbench(&sc, &primary, 10);
    let out = backup(&sc, &sender, &[]);
    out.assert_code(0);
    assert!(!target.join(MARKER).exists(), "{out}");
    assert!(target.join("backup_label").exists(), "{out}");
    let (expected, lsn) = when_archived(&primary, bench);

    // The receiver's "stored" lines say how each file crossed: data files and WAL in LZ4.
    let log = rx.log_text();
    for what in ["segment=\"base/", "segment=\"0000000100000000000000"] {
        assert!(
            log.lines()
                .any(|l| l.contains(what) && l.contains("encoding=lz4") && l.contains("stored")),
            "no {what}... stored in lz4 in the receiver log:\n{log}"
        );
    }
    assert!(!log.contains("encoding=zstd"), "{log}");

    let standby = replay_and_promote(&sc, &lsn, &expected);
    drop(standby);
    rx.stop_and_check(&[]);
}

/// What both tests start from.
struct Setup {
    primary: PgCluster,
    target: std::path::PathBuf,
    setup: walship_tests::ReceiverSetup,
    sender: std::path::PathBuf,
}

/// A primary with pgbench data (1 MiB segments, archiving paused), the receiver's config with
/// `pgdata` = `<scenario>/standby` (absent), and a sender with `pgdata`, `conninfo` and `keys`.
fn set_up(sc: &Scenario, keys: &str) -> Setup {
    let certs = CertSet::create(sc, "certs");
    let mut primary = PgCluster::init_archive_paused(
        sc,
        "primary",
        &["--wal-segsize=1"],
        &["max_wal_senders = 5"],
    );
    primary.start();
    primary.pgbench(&["-i", "-s", "5", "-q"]);
    let target = sc.path("standby");
    let setup = receiver_config(sc, "receiver", &certs, Some(&target));
    let sender = sender_for(sc, "sender", &setup, &certs);
    add_keys(
        &sender,
        &format!(
            "pgdata = {}\nconninfo = {}\n{keys}",
            toml_str(&primary.data_dir().display().to_string()),
            toml_str(&conninfo(sc, primary.port()))
        ),
    );
    Setup {
        primary,
        target,
        setup,
        sender,
    }
}

/// `pgbench -c 2 -T secs` against `primary`, in the background.
fn spawn_pgbench(sc: &Scenario, primary: &PgCluster, secs: u32) -> Child {
    sc.cmd(sc.pg_tool("pgbench"))
        .arg("-h")
        .arg(sc.dir())
        .arg("-p")
        .arg(primary.port().to_string())
        .args([
            "-U",
            "postgres",
            "-c",
            "2",
            "-T",
            &secs.to_string(),
            "postgres",
        ])
        .spawn_with(Stdio::null(), Stdio::null())
}

/// Once `bench` is done: the primary's pgbench digest and the LSN of a WAL switch whose
/// segment has been archived.
fn when_archived(primary: &PgCluster, mut bench: Child) -> (String, String) {
    assert!(
        wait_deadline(&mut bench, Duration::from_secs(120)).is_some(),
        "pgbench did not finish"
    );
    let expected = pgbench_digest(primary);
    let lsn = primary.switch_wal();
    wait_archived(primary, &primary.walfile_name(&lsn));
    (expected, lsn)
}

/// The standby starts from the target (as postgres), replays from the archive up to `lsn`, and
/// once promoted holds exactly the primary's data (`expected`). Returns it, running.
fn replay_and_promote(sc: &Scenario, lsn: &str, expected: &str) -> PgCluster {
    let mut standby = PgCluster::adopt(
        sc,
        "standby",
        &[
            "archive_mode = off",
            "hot_standby = on",
            "wal_retrieve_retry_interval = '200ms'",
        ],
    );
    standby.start();
    let replayed = wait_for(Duration::from_secs(120), || {
        let done = standby
            .try_sql(&format!(
                "select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"
            ))
            .ok()
            .filter(|s| s == "t");
        if done.is_none() {
            std::thread::sleep(Duration::from_millis(200));
        }
        done
    });
    assert!(replayed.is_some(), "the standby did not replay up to {lsn}");
    assert_eq!(standby.sql("select pg_is_in_recovery()"), "t");
    standby.sql("select pg_promote(true, 60)");
    assert_eq!(standby.sql("select pg_is_in_recovery()"), "f");
    assert_eq!(
        pgbench_digest(&standby),
        expected,
        "data differ after promote"
    );
    standby
}

/// A target holding a stray file: exit 2, one line, the file and directory untouched.
fn not_empty_is_refused(sc: &Scenario, sender: &Path, target: &Path) {
    fs::create_dir_all(target).expect("mkdir target");
    fs::write(target.join("notes.txt"), b"keep me").expect("write");
    sc.user().chown(target);
    let before = listing(target);
    let out = backup(sc, sender, &[]);
    out.assert_code(2);
    assert!(out.stderr.contains("not empty"), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "one line\n{out}");
    assert_eq!(listing(target), before);
    assert_eq!(
        fs::read(target.join("notes.txt")).expect("read"),
        b"keep me"
    );
    fs::remove_dir_all(target).expect("remove target");
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn backup(sc: &Scenario, sender: &Path, args: &[&str]) -> Output {
    let cmd = sc
        .cmd(sc.bin("walship-sender"))
        .arg("--config")
        .arg(sender)
        .arg("basebackup")
        .args(args)
        .timeout(BACKUP_DEADLINE);
    sc.run(&cmd)
}

fn spawn_backup(sc: &Scenario, sender: &Path, args: &[&str]) -> Child {
    sc.cmd(sc.bin("walship-sender"))
        .arg("--config")
        .arg(sender)
        .arg("basebackup")
        .args(args)
        .spawn_with(Stdio::null(), Stdio::null())
}

/// Once files arrive in the target (`base/` exists), SIGKILL the sender, or the receiver
/// (`rx`) and then wait for the sender to fail.
fn kill_when_copying(sc: &Scenario, mut child: Child, target: &Path, rx: Option<&mut Receiver>) {
    let copying = wait_for(Duration::from_secs(120), || {
        if target.join("base").is_dir() {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(10));
        None
    });
    assert!(copying.is_some(), "the backup never started copying");
    match rx {
        None => {
            child.kill().expect("SIGKILL the sender");
            child.wait().expect("reap the sender");
        }
        Some(rx) => {
            rx.kill9();
            let status = wait_deadline(&mut child, Duration::from_secs(120))
                .expect("the sender did not give up after the receiver died");
            assert!(
                !status.success(),
                "the sender succeeded without its receiver"
            );
        }
    }
    let _ = sc;
}

/// The target of an interrupted backup: marked unfinished, no pg_control, PostgreSQL refuses
/// to start there, and `status` says why.
fn assert_unstartable(sc: &Scenario, config: &Path, target: &Path) {
    assert!(target.join(MARKER).exists(), "no marker in the target");
    assert!(!target.join("global/pg_control").exists());
    assert!(!target.join("backup_label").exists());
    let start = sc
        .cmd(sc.pg_tool("pg_ctl"))
        .arg("-D")
        .arg(target)
        .arg("-l")
        .arg(sc.path("unfinished.log"))
        .args(["-w", "-t", "20", "start"])
        .timeout(Duration::from_secs(40));
    let out = sc.run(&start);
    assert!(
        !out.success(),
        "PostgreSQL started on an unfinished backup\n{out}"
    );
    let out = run_receiver(sc, config, "status", &["--json"]);
    out.assert_code(1);
    let st: serde_json::Value = serde_json::from_str(&out.stdout).expect("status JSON");
    assert_eq!(st["pgdata"]["state"], "unfinished_backup", "{st:#}");
    let text = st["problems"].to_string();
    assert!(text.contains("unfinished base backup"), "{text}");
}

fn wait_archived(primary: &PgCluster, segment: &str) {
    let done = wait_for(Duration::from_secs(60), || {
        let s = primary.sql("select coalesce(last_archived_wal, '') from pg_stat_archiver");
        if s.len() == 24 && s.as_str() >= segment {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(200));
        None
    });
    assert!(done.is_some(), "{segment} not archived");
}
