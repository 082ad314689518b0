//! Issue 14 items 3-4, Done-when (c): the object-store tier against a real S3 server (s3s-fs on
//! loopback) and real PostgreSQL 15.
//!
//! One primary archives through `walship-sender push` into a receiver with `[object_store]`.
//! Under pgbench every stored file appears in the bucket, zstd-compressed, with the BLAKE3
//! digest of the stored file; with the S3 server down the receiver keeps storing (the local
//! copy is the acknowledgement) and uploads nothing; SIGKILLed while the backlog drains, it
//! resumes from its record and loses nothing; at no moment does the bucket hold a segment
//! whose predecessor (since the first uploaded) is missing. Then a fresh standby, whose
//! archive_dir is empty, replays from the bucket alone through `restore` to the primary's
//! table checksums, and `cleanup` applies the retention rule to the bucket too.
//!
//! Printed (not asserted): upload throughput, the backlog under pgbench -c 8, receiver RSS.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walship_tests::process::{peak_rss_kib, wait_for};
use walship_tests::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use walship_tests::segments::segno;
use walship_tests::walship::{add_keys, archived_files, receiver_config, sender_for};
use walship_tests::{CertSet, PgCluster, Receiver, Scenario};

const BUCKET: &str = "walship-archive";
const PREFIX: &str = "clusters/main";
/// Checksums of what pgbench writes, compared between primary and standby.
const CHECKSUMS: &str = "select (select sum(hashtext(a::text)) from pgbench_accounts a) || '/' || \
     (select sum(hashtext(h::text)) from pgbench_history h) || '/' || \
     (select sum(hashtext(b::text)) from pgbench_branches b)";

fn object_store_table(s3: &S3Server, credentials: Option<&str>) -> String {
    let mut t = format!(
        "\n[object_store]\nurl = \"s3://{BUCKET}/{PREFIX}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n",
        s3.endpoint()
    );
    if let Some(c) = credentials {
        t.push_str(&format!("credentials_file = \"{c}\"\n"));
    }
    t
}

fn credentials_file(sc: &Scenario, rel: &str) {
    sc.write_at(
        &sc.path(rel),
        format!(
            "[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        ),
        0o600,
    );
}

/// The WAL file names in the bucket (keys `NAME.zst` under the prefix).
fn bucket_names(s3: &S3Server) -> Vec<String> {
    s3.keys(PREFIX)
        .into_iter()
        .filter_map(|k| k.strip_suffix(".zst").map(str::to_string))
        .collect()
}

/// The bucket's segments (timeline 1) form one run: no hole before a present segment.
fn assert_no_hole(names: &[String]) {
    let segs: BTreeSet<u64> = names
        .iter()
        .filter(|n| n.len() == 24)
        .map(|n| segno(n))
        .collect();
    if let (Some(first), Some(last)) = (segs.first(), segs.last()) {
        assert_eq!(
            (last - first + 1) as usize,
            segs.len(),
            "the bucket has a hole: segments {segs:?}"
        );
    }
}

/// Switch to a new segment and wait until the primary archived the one it finished (false:
/// not within `within`). `pg_walfile_name(pg_current_wal_lsn())` right after a switch names
/// the finished segment, not the new one, so the switch LSN's segment is waited for.
fn switch_and_archive(primary: &PgCluster, within: Duration) -> bool {
    let segment = primary.walfile_name(&primary.switch_wal());
    wait_for(within, || {
        let s = primary.sql("select coalesce(last_archived_wal, '') from pg_stat_archiver");
        (s.len() == 24 && s >= segment).then_some(())
    })
    .is_some()
}

fn status_json(sc: &Scenario, config: &Path) -> serde_json::Value {
    let out = sc.run(
        &sc.cmd(sc.bin("walship-receiver"))
            .arg("--config")
            .arg(config)
            .args(["status", "--json"]),
    );
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}\n{}", out.stdout, out.stderr))
}

fn backlog_files(sc: &Scenario, config: &Path) -> u64 {
    status_json(sc, config)["object_store"]["backlog_files"]
        .as_u64()
        .expect("object_store.backlog_files")
}

/// Wait until every file of archive_dir is in the bucket (backlog 0).
fn drained(sc: &Scenario, config: &Path, within: Duration) -> Duration {
    let started = Instant::now();
    wait_for(within, || (backlog_files(sc, config) == 0).then_some(())).unwrap_or_else(|| {
        panic!(
            "the upload backlog did not drain within {within:?}: {}",
            status_json(sc, config)
        )
    });
    started.elapsed()
}

#[test]
fn issue14_objstore() {
    let sc = Scenario::new("issue14_objstore");
    let certs = CertSet::create(&sc, "certs");
    let mut s3 = S3Server::start(&sc, "s3", BUCKET);
    credentials_file(&sc, "s3.credentials");

    let mut primary = PgCluster::init_archive_paused(&sc, "primary", &[], &["max_wal_senders = 5"]);
    primary.start();
    let setup = receiver_config(&sc, "receiver", &certs, None);
    add_keys(
        &setup.config,
        &object_store_table(&s3, Some("s3.credentials")),
    );
    let sender = sender_for(&sc, "sender", &setup, &certs);

    // The disaster-recovery standby: its own receiver config, an empty archive_dir, the same
    // bucket. Backed up now, started at the end.
    let dr = receiver_config(&sc, "dr", &certs, None);
    credentials_file(&sc, "dr.credentials");
    add_keys(&dr.config, &object_store_table(&s3, Some("dr.credentials")));
    let restore_command = format!(
        "restore_command = '{} --config {} restore %f %p'",
        sc.bin("walship-receiver").display(),
        dr.config.display()
    );
    let mut standby = primary.basebackup_standby(
        "standby",
        &["hot_standby = on", "archive_mode = off", &restore_command],
    );

    let mut rx = Receiver::spawn(&sc, &setup.config, "receiver");
    let rx_pid = rx.pid().expect("receiver pid");
    primary.sql(&format!(
        "alter system set archive_command = '{} --config {} push %p %f'",
        sc.bin("walship-sender").display(),
        sender.display()
    ));
    primary.sql("select pg_reload_conf()");

    // Sample the bucket for holes and the backlog all along.
    let stop = Arc::new(AtomicBool::new(false));
    let max_backlog = Arc::new(Mutex::new(0u64));
    let watcher = {
        let (stop, max_backlog) = (stop.clone(), max_backlog.clone());
        let (sc, config) = (sc.clone(), setup.config.clone());
        let object_dir = s3.object_file(PREFIX);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut names: Vec<String> = fs::read_dir(&object_dir)
                    .map(|rd| {
                        rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                            .filter_map(|n| n.strip_suffix(".zst").map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                names.sort();
                assert_no_hole(&names);
                let b = backlog_files(&sc, &config);
                let mut m = max_backlog.lock().unwrap();
                *m = (*m).max(b);
                drop(m);
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };

    // 1. Under pgbench -c 8: everything stored reaches the bucket.
    primary.pgbench(&["-i", "-s", "4", "-q"]);
    primary.pgbench(&["-n", "-c", "8", "-j", "2", "-T", "8"]);
    let settle = Duration::from_secs(120);
    assert!(
        switch_and_archive(&primary, settle),
        "the primary archived its WAL"
    );
    drained(&sc, &setup.config, settle);
    let backlog_under_pgbench = *max_backlog.lock().unwrap();

    // 2. S3 down: storing goes on, nothing is uploaded; the backlog grows.
    s3.pause();
    let in_bucket_before = bucket_names(&s3);
    primary.pgbench(&["-n", "-c", "8", "-j", "2", "-T", "5"]);
    // At least three new segments, whatever pgbench managed on this machine.
    for _ in 0..3 {
        primary.sql("insert into pgbench_history (tid, bid, aid, delta) values (1, 1, 1, 1)");
        assert!(
            switch_and_archive(&primary, settle),
            "pushes failed while only the object store was down"
        );
    }
    let waiting = status_json(&sc, &setup.config);
    let backlog = waiting["object_store"]["backlog_files"].as_u64().unwrap();
    let backlog_bytes = waiting["object_store"]["backlog_bytes"].as_u64().unwrap();
    assert!(backlog >= 3, "no backlog while S3 was down: {waiting}");
    assert!(
        waiting["object_store"]["error"].is_string() && waiting["healthy"] == false,
        "status did not report the unreachable object store: {waiting}"
    );
    assert_eq!(
        bucket_names(&s3),
        in_bucket_before,
        "uploaded while S3 was down?"
    );

    // 3. S3 back: the backlog drains in order; measure the throughput.
    s3.resume();
    let took = drained(&sc, &setup.config, settle);
    let mib_s = backlog_bytes as f64 / (1 << 20) as f64 / took.as_secs_f64();
    eprintln!(
        "MEASURED upload: {backlog} files, {:.1} MiB in {:.2?} after S3 came back: {mib_s:.1} MiB/s (includes up to 1 s of backoff)",
        backlog_bytes as f64 / (1 << 20) as f64,
        took
    );

    // 4. SIGKILL during uploads: the queue resumes, nothing is lost.
    s3.pause();
    primary.pgbench(&["-n", "-c", "4", "-T", "3"]);
    for _ in 0..3 {
        primary.sql("insert into pgbench_history (tid, bid, aid, delta) values (1, 1, 1, 1)");
        assert!(
            switch_and_archive(&primary, settle),
            "archived with S3 down"
        );
    }
    wait_for(settle, || {
        (backlog_files(&sc, &setup.config) >= 3).then_some(())
    })
    .expect("a backlog to kill the receiver in");
    let before_kill = bucket_names(&s3).len();
    s3.resume();
    // Kill as soon as the first new object is there (uploads in progress).
    wait_for(settle, || {
        (bucket_names(&s3).len() > before_kill).then_some(())
    })
    .expect("uploads resumed after S3 came back");
    let rss_kib = peak_rss_kib(rx_pid).unwrap_or(0);
    rx.kill9();
    let after_kill = backlog_files(&sc, &setup.config);
    rx.start();
    drained(&sc, &setup.config, settle);
    eprintln!("killed with {after_kill} files still to upload; all uploaded after the restart");

    stop.store(true, Ordering::Relaxed);
    watcher.join().expect("hole watcher");
    eprintln!(
        "MEASURED backlog under pgbench -c 8 (sampled every ~0.3 s): at most {backlog_under_pgbench} files"
    );
    eprintln!("MEASURED receiver peak RSS (VmHWM) with the object store on: {rss_kib} KiB");

    // 5. Every stored file is in the bucket, compressed, with the right content.
    let local = archived_files(&setup.archive_dir);
    let in_bucket = bucket_names(&s3);
    assert_no_hole(&in_bucket);
    for name in &local {
        assert!(
            in_bucket.contains(name),
            "{name} is not in the bucket: {in_bucket:?}"
        );
        let packed = fs::read(s3.object_file(&format!("{PREFIX}/{name}.zst"))).unwrap();
        let plain = zstd::decode_all(packed.as_slice()).expect("a zstd object");
        let stored = fs::read(setup.archive_dir.join(name)).unwrap();
        assert!(
            packed.len() < stored.len() || stored.len() < 4096,
            "{name} not compressed"
        );
        assert_eq!(
            blake3::hash(&plain),
            blake3::hash(&stored),
            "{name}: the object's content differs from the stored file"
        );
    }
    assert!(local.iter().any(|n| n.ends_with(".backup")), "{local:?}");

    // 6. Disaster recovery: the fresh standby (empty archive_dir) replays from the bucket.
    primary.sql("create table walship_dr (note text)");
    primary.sql("insert into walship_dr values ('from the bucket')");
    let switch_lsn = primary.switch_wal();
    wait_for(settle, || {
        let s = primary.sql("select last_archived_wal from pg_stat_archiver");
        (s == primary.walfile_name(&switch_lsn)).then_some(())
    })
    .expect("the last segment archived");
    drained(&sc, &setup.config, settle);
    assert!(archived_files(&dr.archive_dir).is_empty());
    let want = primary.sql(CHECKSUMS);
    standby.start();
    let probe = format!("select pg_last_wal_replay_lsn() >= '{switch_lsn}'::pg_lsn");
    wait_for(Duration::from_secs(180), || {
        (standby.try_sql(&probe).ok().as_deref() == Some("t")).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the DR standby did not replay past {switch_lsn} from the bucket; replay at {:?}",
            standby.try_sql("select pg_last_wal_replay_lsn()")
        )
    });
    assert_eq!(standby.sql(CHECKSUMS), want, "table checksums differ");
    assert_eq!(
        standby.sql("select note from walship_dr"),
        "from the bucket"
    );
    assert!(
        archived_files(&dr.archive_dir).is_empty(),
        "restore copied into archive_dir"
    );
    let standby_log = fs::read_to_string(standby.log_path()).unwrap_or_default();
    let complaints: Vec<&str> = standby_log
        .lines()
        .filter(|l| l.contains("walship-receiver"))
        .collect();
    assert!(complaints.is_empty(), "restore complained: {complaints:?}");
    standby.stop();

    // 7. Credentials: from the environment when no file is named; never from the TOML.
    let env_cfg = receiver_config(&sc, "envcreds", &certs, None);
    add_keys(&env_cfg.config, &object_store_table(&s3, None));
    let some = in_bucket.iter().find(|n| n.len() == 24).unwrap().clone();
    let dest = sc.path("restored-by-env");
    let restore = |with_env: bool| {
        let mut cmd = sc
            .cmd(sc.bin("walship-receiver"))
            .arg("--config")
            .arg(&env_cfg.config)
            .args(["restore", &some])
            .arg(&dest);
        if with_env {
            cmd = cmd
                .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        }
        sc.run(&cmd)
    };
    let out = restore(false);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(out.stderr.contains("AWS_ACCESS_KEY_ID"), "{}", out.stderr);
    restore(true).assert_success();
    assert_eq!(
        fs::read(&dest).unwrap(),
        fs::read(setup.archive_dir.join(&some)).unwrap()
    );
    let secret_cfg = receiver_config(&sc, "secret", &certs, None);
    add_keys(
        &secret_cfg.config,
        &format!(
            "{}secret_access_key = \"{SECRET_KEY}\"\n",
            object_store_table(&s3, None)
        ),
    );
    let out = sc.run(
        &sc.cmd(sc.bin("walship-receiver"))
            .arg("--config")
            .arg(&secret_cfg.config)
            .args(["status"]),
    );
    assert_eq!(out.code(), 1);
    assert!(
        out.stderr.contains("never read from receiver.toml") && !out.stderr.contains(SECRET_KEY),
        "{}",
        out.stderr
    );
    // A damaged object is not served: exit 2, one line.
    let victim = s3.object_file(&format!("{PREFIX}/{some}.zst"));
    let good = fs::read(&victim).unwrap();
    let mut bad = zstd::decode_all(good.as_slice()).unwrap();
    bad[100] ^= 0xff;
    fs::write(&victim, zstd::encode_all(bad.as_slice(), 1).unwrap()).unwrap();
    let out = restore(true);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(out.stderr.contains("BLAKE3"), "{}", out.stderr);
    fs::write(&victim, good).unwrap();

    // 8. cleanup applies the rule to the bucket: objects before %r go, the rest stays.
    let segs: Vec<&String> = in_bucket.iter().filter(|n| n.len() == 24).collect();
    let restart = segs[segs.len() / 2].clone();
    let out = sc.run(
        &sc.cmd(sc.bin("walship-receiver"))
            .arg("--config")
            .arg(&setup.config)
            .args(["cleanup", &restart]),
    );
    out.assert_success();
    let left = bucket_names(&s3);
    for n in left.iter().filter(|n| n.len() == 24) {
        assert!(
            segno(n) >= segno(&restart),
            "{n} before {restart} left in the bucket"
        );
    }
    assert!(left.contains(&restart), "{left:?}");
    assert!(out.stderr.contains("objects"), "{}", out.stderr);

    rx.stop_and_check(&["object store upload failed"]);
}

/// `[clusters.object_store]`: two primaries (two clusters) into one receiver, each cluster with
/// its own prefix in the same bucket. Each cluster's files land under its own prefix only (their
/// WAL names are the same), `restore --cluster` on a host with empty archive_dirs falls back to
/// that cluster's prefix, and configs that would mix two clusters' objects are refused.
#[test]
fn issue14_objstore_per_cluster() {
    use walship_tests::failover::CATCH_UP;
    use walship_tests::walship::{sender_config, toml_str};

    let sc = Scenario::new("i14_objstore_clusters");
    let certs = CertSet::create(&sc, "certs");
    let s3 = S3Server::start(&sc, "s3", BUCKET);
    credentials_file(&sc, "s3.credentials");
    let addr = format!("127.0.0.1:{}", walship_tests::net::free_udp_port());
    let clusters_toml = |archive: &str| {
        let mut text = format!(
            "listen = {}\ncert = \"certs/server.pem\"\nkey = \"certs/server.key\"\nclient_ca = \"certs/ca.pem\"\n",
            toml_str(&addr)
        );
        for c in ["a", "b"] {
            sc.mkdir(&format!("{archive}-{c}"));
            text.push_str(&format!(
                "\n[[clusters]]\nname = \"{c}\"\narchive_dir = \"{archive}-{c}\"\nallowed_clients = [\"prim-{c}\"]\n[clusters.object_store]\nurl = \"s3://{BUCKET}/{PREFIX}-{c}\"\nendpoint = \"{}\"\ncredentials_file = \"s3.credentials\"\n",
                s3.endpoint()
            ));
        }
        text
    };
    let config = sc.path("receiver.toml");
    sc.write_at(&config, clusters_toml("archive"), 0o644);

    let mut primaries = Vec::new();
    for c in ["a", "b"] {
        let (cert, key) = certs.issue_client_as(
            &sc,
            &format!("client-prim-{c}"),
            &format!("prim-{c}"),
            None,
            time::OffsetDateTime::now_utc() - Duration::from_secs(3600),
            time::OffsetDateTime::now_utc() + Duration::from_secs(86400),
        );
        let sender = sender_config(
            &sc,
            &format!("sender-{c}"),
            &addr,
            &certs.ca(),
            &cert,
            &key,
            Some("5s"),
        );
        let mut primary = PgCluster::init_archive_paused(&sc, &format!("primary-{c}"), &[], &[]);
        primary.start();
        primary.sql(&format!(
            "alter system set archive_command = '{} --config {} push %p %f'",
            sc.bin("walship-sender").display(),
            sender.display()
        ));
        primary.sql("select pg_reload_conf()");
        primary.sql(&format!(
            "create table only_{c} as select g as x from generate_series(1, 1000) g"
        ));
        primaries.push(primary);
    }
    let rx = Receiver::spawn(&sc, &config, "receiver");

    // Each primary archives a segment or two; each reaches its cluster's prefix only.
    let mut last = Vec::new();
    for p in &primaries {
        p.switch_wal();
        let lsn = p.switch_wal();
        last.push(p.walfile_name(&lsn));
    }
    for (i, c) in ["a", "b"].iter().enumerate() {
        let prefix = format!("{PREFIX}-{c}");
        let want = format!("{}.zst", last[i]);
        wait_for(CATCH_UP, || s3.keys(&prefix).contains(&want).then_some(()))
            .unwrap_or_else(|| panic!("{want} not under {prefix}: {:?}", s3.keys(&prefix)));
        let local = archived_files(&sc.path(&format!("archive-{c}")));
        for name in local.iter().filter(|n| n.len() == 24 && **n <= last[i]) {
            let packed = fs::read(s3.object_file(&format!("{prefix}/{name}.zst"))).unwrap();
            let stored = fs::read(sc.path(&format!("archive-{c}")).join(name)).unwrap();
            assert_eq!(
                blake3::hash(&zstd::decode_all(packed.as_slice()).unwrap()),
                blake3::hash(&stored),
                "cluster {c}: {name} under {prefix} is not this cluster's file"
            );
        }
    }
    assert!(
        s3.keys(PREFIX).is_empty(),
        "objects outside the clusters' prefixes"
    );
    // Both clusters stored a file under the same name, with different contents.
    let same = last[0].clone().min(last[1].clone());
    let same = &same;
    let (a_file, b_file) = (
        fs::read(sc.path("archive-a").join(same)).unwrap(),
        fs::read(sc.path("archive-b").join(same)).unwrap(),
    );
    assert_ne!(
        a_file, b_file,
        "the two clusters' {same} are the same bytes"
    );

    // status --cluster shows that cluster's bucket; metrics carry the cluster label.
    let out = sc.run(
        &sc.cmd(sc.bin("walship-receiver"))
            .arg("--config")
            .arg(&config)
            .args(["status", "--json", "--cluster", "b"]),
    );
    let st: serde_json::Value = serde_json::from_str(&out.stdout).expect("status json");
    assert_eq!(
        st["object_store"]["url"],
        format!("s3://{BUCKET}/{PREFIX}-b"),
        "{st}"
    );

    // A new host with empty archive_dirs: restore --cluster reads that cluster's prefix.
    let dr = sc.path("dr.toml");
    sc.write_at(&dr, clusters_toml("dr-archive"), 0o644);
    for (c, plain) in [("a", &a_file), ("b", &b_file)] {
        let dest = sc.path(&format!("restored-{c}"));
        sc.run(
            &sc.cmd(sc.bin("walship-receiver"))
                .arg("--config")
                .arg(&dr)
                .args(["restore", "--cluster", c, same])
                .arg(&dest),
        )
        .assert_success();
        assert_eq!(&fs::read(&dest).unwrap(), plain, "restore --cluster {c}");
    }

    // Refused at load: the same prefix for two clusters, a top-level table next to clusters.
    let shared_prefix = clusters_toml("x").replace(&format!("{PREFIX}-b"), &format!("{PREFIX}-a"));
    let top_level = clusters_toml("y").replacen(
        "\n[[clusters]]",
        &format!(
            "{}\n[[clusters]]",
            object_store_table(&s3, Some("s3.credentials"))
        ),
        1,
    );
    for (name, text, says) in [
        ("shared.toml", shared_prefix, "own prefix"),
        ("top.toml", top_level, "[clusters.object_store]"),
    ] {
        let path = sc.path(name);
        sc.write_at(&path, text, 0o644);
        let out = sc.run(
            &sc.cmd(sc.bin("walship-receiver"))
                .arg("--config")
                .arg(&path)
                .args(["status", "--cluster", "a"]),
        );
        assert_ne!(out.code(), 0, "{name}: {out}");
        assert!(out.stderr.contains(says), "{name}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    }
    eprintln!(
        "MEASURED receiver peak RSS (VmHWM) serving two clusters, each with its object store: {} KiB",
        rx.pid().and_then(peak_rss_kib).unwrap_or(0)
    );
    for p in &mut primaries {
        p.stop();
    }
    rx.stop_and_check(&[]);
}
