//! Issue 14, item 2: many clusters on one receiver. Two primaries (two clusters), each with its
//! own client certificate issued by `certs --client-name` from the one CA, ship into one
//! receiver with two `[[clusters]]` tables; each standby replays its own primary's WAL through
//! `restore --cluster`. The client certificate decides the cluster: a certificate allowed for
//! no cluster is refused naming its subject, and cluster A's sender pushing cluster B's WAL is
//! refused; nothing is written in either archive. `--cluster` is required (and checked) when
//! several clusters are configured, and `certs --client-name` refuses to overwrite.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use walship_tests::failover::{conninfo, run_receiver, CATCH_UP};
use walship_tests::process::wait_for;
use walship_tests::walship::{assert_refused, push, sender_config, toml_str};
use walship_tests::{CertSet, PgCluster, Receiver, Scenario};

/// `walship-receiver certs --dir DIR --client-name NAME`, as postgres.
fn client_certs(sc: &Scenario, dir: &Path, name: &str) -> walship_tests::Output {
    let cmd = sc
        .cmd(sc.bin("walship-receiver"))
        .arg("certs")
        .arg("--dir")
        .arg(dir)
        .args(["--client-name", name]);
    sc.run(&cmd)
}

/// Every file of an archive directory but the restore records (the standby writes those as it
/// polls) with its size and a hash of its content, for "nothing was written".
fn snapshot(dir: &Path) -> BTreeMap<String, (usize, u64)> {
    use std::hash::{Hash, Hasher};
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| {
            !e.file_name()
                .to_string_lossy()
                .starts_with("walship.restore")
        })
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let body = std::fs::read(e.path()).unwrap_or_default();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            body.hash(&mut h);
            (name, (body.len(), h.finish()))
        })
        .collect()
}

/// Wait until `primary` archived `segment` (or a later one).
fn wait_archived(primary: &PgCluster, segment: &str) {
    let query = "select coalesce(last_archived_wal, '') from pg_stat_archiver";
    let done = wait_for(CATCH_UP, || {
        let last = primary.sql(query);
        if last.len() == 24 && last.as_str() >= segment {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(200));
        None
    });
    assert!(
        done.is_some(),
        "{} did not archive {segment}: {}",
        primary.name(),
        primary.sql("select * from pg_stat_archiver")
    );
}

/// Wait until the hot standby replayed up to `lsn`.
fn wait_replayed(standby: &PgCluster, lsn: &str) {
    let probe = format!("select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
    let done = wait_for(CATCH_UP, || {
        if standby.try_sql(&probe).is_ok_and(|s| s == "t") {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(200));
        None
    });
    assert!(
        done.is_some(),
        "{} did not replay up to {lsn}",
        standby.name()
    );
}

struct Side {
    primary: PgCluster,
    standby: PgCluster,
    archive: PathBuf,
    sender: PathBuf,
}

#[test]
fn two_clusters_on_one_receiver() {
    let sc = Scenario::new("i14_clusters");
    let certs = CertSet::create(&sc, "certs");

    // One more client certificate per cluster from the one CA; never over an existing one.
    for name in ["prim-a", "prim-b"] {
        client_certs(&sc, &certs.dir, name).assert_code(0);
    }
    let pem_a = certs.dir.join("client-prim-a.pem");
    let before = std::fs::read(&pem_a).expect("client-prim-a.pem");
    let again = client_certs(&sc, &certs.dir, "prim-a");
    again.assert_code(1);
    assert!(again.stderr.contains("already exists"), "{again}");
    assert_eq!(std::fs::read(&pem_a).unwrap(), before, "overwritten");
    let bad = client_certs(&sc, &certs.dir, "../evil");
    bad.assert_code(1);
    assert!(bad.stderr.contains("--client-name"), "{bad}");
    assert!(!sc.path("client-..").exists() && !certs.dir.join("client-../evil.pem").exists());

    // Two primaries; their standbys exist before serve starts (it pins each archive to them).
    let addr = format!("127.0.0.1:{}", walship_tests::net::free_udp_port());
    let config = sc.path("receiver.toml");
    let mut sides = Vec::new();
    for c in ["a", "b"] {
        let mut primary = PgCluster::init_archive_paused(
            &sc,
            &format!("primary-{c}"),
            &[],
            &["max_wal_senders = 5"],
        );
        primary.start();
        let restore = format!(
            "restore_command = '{} --config {} restore --cluster {c} %f %p'",
            sc.bin("walship-receiver").display(),
            config.display()
        );
        let standby = primary.basebackup_standby(
            &format!("standby-{c}"),
            &[
                "hot_standby = on",
                "archive_mode = off",
                "wal_retrieve_retry_interval = '200ms'",
                &restore,
            ],
        );
        let archive = sc.mkdir(&format!("archive-{c}"));
        let sender = sender_config(
            &sc,
            &format!("sender-{c}"),
            &addr,
            &certs.ca(),
            &certs.dir.join(format!("client-prim-{c}.pem")),
            &certs.dir.join(format!("client-prim-{c}.key")),
            Some("5s"),
        );
        sides.push(Side {
            primary,
            standby,
            archive,
            sender,
        });
    }
    let mut text = format!(
        "listen = {}\ncert = \"certs/server.pem\"\nkey = \"certs/server.key\"\nclient_ca = \"certs/ca.pem\"\n",
        toml_str(&addr)
    );
    for (c, side) in ["a", "b"].iter().zip(&sides) {
        text.push_str(&format!(
            "\n[[clusters]]\nname = \"{c}\"\narchive_dir = \"archive-{c}\"\npgdata = \"standby-{c}\"\nconninfo = {}\nallowed_clients = [\"prim-{c}\"]\n",
            toml_str(&conninfo(&sc, side.standby.port()))
        ));
    }
    sc.write_at(&config, text, 0o644);
    let rx = Receiver::spawn(&sc, &config, "receiver");
    for (c, side) in ["a", "b"].iter().zip(sides.iter_mut()) {
        side.primary.archive_with_push(&side.sender);
        side.standby.start();
        // Each primary writes its own table.
        side.primary.sql(&format!(
            "create table only_{c} as select g as x from generate_series(1, 1000) g"
        ));
    }

    // Each standby replays its own primary, from its own archive.
    for side in &sides {
        let lsn = side.primary.switch_wal();
        let segment = side.primary.walfile_name(&lsn);
        wait_archived(&side.primary, &segment);
        assert!(
            side.archive.join(&segment).is_file(),
            "{segment} not in {}",
            side.archive.display()
        );
        wait_replayed(&side.standby, &lsn);
    }
    let (a, b) = (&sides[0], &sides[1]);
    assert_eq!(a.standby.sql("select count(*) from only_a"), "1000");
    assert_eq!(b.standby.sql("select count(*) from only_b"), "1000");
    assert!(a.standby.try_sql("select 1 from only_b").is_err());
    assert!(b.standby.try_sql("select 1 from only_a").is_err());
    // Each archive pinned to its own cluster.
    assert_ne!(
        std::fs::read(a.archive.join("walship.cluster")).unwrap(),
        std::fs::read(b.archive.join("walship.cluster")).unwrap()
    );

    // Refusals: nothing is written in either archive.
    let (snap_a, snap_b) = (snapshot(&a.archive), snapshot(&b.archive));
    // A segment of cluster B, under a name cluster A has not stored yet.
    let b_seg = b.primary.walfile_name(&b.primary.switch_wal());
    wait_archived(&b.primary, &b_seg);
    let snap_b = {
        let mut s = snap_b;
        s.extend(snapshot(&b.archive));
        s
    };
    let foreign = sc.path("b-segment");
    let bytes = std::fs::read(b.archive.join(&b_seg)).expect("read B's segment");
    sc.write_at(&foreign, bytes, 0o644);
    // Cluster A's certificate with cluster B's WAL: refused by A's pin (checked on the
    // segment's header before any name comparison).
    let out = push(&sc, &a.sender, &foreign, &b_seg);
    assert_refused(&out, &["not the cluster this archive holds"]);
    // A certificate no cluster allows (CN=walship-sender, from the same CA): refused, named.
    let stranger = sender_config(
        &sc,
        "sender-stranger",
        &addr,
        &certs.ca(),
        &certs.client_cert(),
        &certs.client_key(),
        Some("5s"),
    );
    let out = push(&sc, &stranger, &foreign, &b_seg);
    assert_refused(&out, &["CN=walship-sender"]);
    assert!(out.stderr.contains("allowed_clients"), "{out}");
    assert_eq!(snapshot(&a.archive), snap_a, "cluster A's archive changed");
    assert_eq!(snapshot(&b.archive), snap_b, "cluster B's archive changed");

    // --cluster: required with several clusters, checked, and it selects the archive.
    let dest = sc.path("restored");
    let out = run_receiver(&sc, &config, "restore", &[&b_seg, dest.to_str().unwrap()]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("several clusters (a, b)") && out.stderr.contains("--cluster"),
        "{out}"
    );
    let out = run_receiver(&sc, &config, "status", &["--cluster", "c", "--json"]);
    out.assert_code(1);
    assert!(
        out.stderr.contains("no cluster named \"c\"") && out.stderr.contains("a, b"),
        "{out}"
    );
    for sub in ["promote", "cleanup", "check"] {
        let args: &[&str] = if sub == "cleanup" {
            &["000000010000000000000001"]
        } else {
            &[]
        };
        let out = run_receiver(&sc, &config, sub, args);
        assert_ne!(out.code(), 0, "{sub}\n{out}");
        assert!(
            format!("{}{}", out.stdout, out.stderr).contains("pass --cluster NAME"),
            "{sub}\n{out}"
        );
    }
    let out = run_receiver(
        &sc,
        &config,
        "restore",
        &["--cluster", "b", &b_seg, dest.to_str().unwrap()],
    );
    out.assert_code(0);
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(&foreign).unwrap()
    );
    let out = run_receiver(&sc, &config, "status", &["--cluster", "a", "--json"]);
    out.assert_code(0);
    let st: serde_json::Value = serde_json::from_str(&out.stdout).expect("status JSON");
    assert_eq!(
        st["archive_dir"].as_str().map(PathBuf::from),
        Some(a.archive.clone()),
        "{st:#}"
    );
    assert_eq!(st["standby"]["in_recovery"], true, "{st:#}");
    let out = run_receiver(&sc, &config, "check", &["--cluster", "b"]);
    out.assert_code(0);

    // The receiver logged each connection's certificate subject and cluster.
    let log = rx.log_text();
    let accepted = |subject: &str, cluster: &str| {
        log.lines().any(|l| {
            l.contains("connection accepted")
                && l.contains(&format!("client=\"{subject}\""))
                && l.contains(&format!("cluster=\"{cluster}\""))
        })
    };
    assert!(accepted("CN=prim-a", "a"), "{log}");
    assert!(accepted("CN=prim-b", "b"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("CN=walship-sender") && l.contains("allowed for none")),
        "{log}"
    );
    rx.stop_and_check(&[
        "allowed for none",
        "refused",
        "another cluster",
        "belongs to",
    ]);
}
