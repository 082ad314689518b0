//! Issue 11, item 5 (metrics) and the readiness of item 6: `metrics_listen` serves the
//! Prometheus text format at `/metrics` (and 404 elsewhere) on `serve` and the daemon, and their
//! values move by exactly what happened; `serve` and the daemon tell systemd READY=1 once they
//! listen and STOPPING=1 on SIGTERM (through NOTIFY_SOCKET).

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use walship_tests::net::free_tcp_port;
use walship_tests::process::{terminate, wait_deadline, wait_for};
use walship_tests::walship::{
    add_keys, archived_files, assert_pushed, assert_refused, push, receiver_config, sender_for,
    Service,
};
use walship_tests::{donors, CertSet, Receiver, Scenario};

/// One HTTP/1.1 GET; the status line and the body.
pub(crate) fn get(port: u16, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("send the request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap_or("").to_string();
    (status, body.to_string())
}

/// The scraped samples of `/metrics` (series with labels as written, `# ` lines skipped).
pub(crate) struct Scrape(pub(crate) String);

impl Scrape {
    pub(crate) fn take(port: u16) -> Scrape {
        let (status, body) = get(port, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        Scrape(body)
    }

    /// The value of `series` (name and labels exactly as exposed); panics when absent.
    pub(crate) fn value(&self, series: &str) -> f64 {
        self.find(series)
            .unwrap_or_else(|| panic!("no {series} in\n{}", self.0))
    }

    pub(crate) fn find(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().expect("a number"))
        })
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as f64
}

#[test]
fn receiver_metrics_count_stores_refusals_and_restores() {
    let d = donors();
    let sc = Scenario::new("i11-metrics-rx");
    let certs = CertSet::create(&sc, "certs");
    let setup = receiver_config(&sc, "receiver", &certs, None);
    let port = free_tcp_port();
    add_keys(
        &setup.config,
        &format!("metrics_listen = \"127.0.0.1:{port}\"\n"),
    );
    let sender = sender_for(&sc, "sender", &setup, &certs);
    let rx = Receiver::spawn(&sc, &setup.config, "receiver");
    rx.assert_logged(&format!("metrics on http://127.0.0.1:{port}/metrics"));

    let (status, _) = get(port, "/");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = get(port, "/metrics/x");
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    let before = Scrape::take(port);
    assert_eq!(before.value("walship_stored_files_total"), 0.0);
    assert_eq!(
        before.value("walship_refusals_total{reason=\"foreign_cluster\"}"),
        0.0
    );
    assert_eq!(before.value("walship_open_connections"), 0.0);
    let s0 = &d.home[0];
    let foreign = d
        .foreign
        .iter()
        .find(|f| f.name != s0.name)
        .expect("a foreign segment");
    let s1 = d.home[1..]
        .iter()
        .find(|h| h.name != foreign.name)
        .expect("a second home segment");
    let started = now_secs();
    assert_pushed(&sc, &sender, &s0.write_to(&sc, "s0"), &s0.name);
    assert_pushed(&sc, &sender, &s1.write_to(&sc, "s1"), &s1.name);
    // The same file again: "already had", not stored twice.
    assert_pushed(&sc, &sender, &s0.write_to(&sc, "s0"), &s0.name);
    let out = push(
        &sc,
        &sender,
        &foreign.write_to(&sc, "foreign"),
        &foreign.name,
    );
    assert_refused(&out, &["system identifier"]);

    let after = Scrape::take(port);
    let delta = |series: &str| after.value(series) - before.value(series);
    assert_eq!(delta("walship_stored_files_total"), 2.0);
    let bytes = (s0.bytes.len() + s1.bytes.len()) as f64;
    assert_eq!(delta("walship_stored_bytes_total"), bytes);
    assert_eq!(delta("walship_already_had_files_total"), 1.0);
    assert_eq!(
        delta("walship_refusals_total{reason=\"foreign_cluster\"}"),
        1.0
    );
    assert_eq!(
        delta("walship_refusals_total{reason=\"conflicting_content\"}"),
        0.0
    );
    assert_eq!(delta("walship_transfer_duration_seconds_count"), 2.0);
    let last = after.value("walship_last_stored_timestamp_seconds");
    assert!(
        last >= started.floor() && last <= now_secs(),
        "{last} vs {started}"
    );
    assert_eq!(after.value("walship_active_uploads"), 0.0);

    // restore runs as its own process: the receiver reports its records, one per standby.
    let standby = sc.mkdir("standby");
    let restore = |name: &str| {
        sc.run(
            &sc.cmd(sc.bin("walship-receiver"))
                .arg("--config")
                .arg(&setup.config)
                .arg("restore")
                .arg(name)
                .arg(standby.join("RECOVERYXLOG"))
                .cwd(&standby),
        )
    };
    let served = format!(
        "walship_restore_last_served_timestamp_seconds{{data_directory=\"{}\"}}",
        fs::canonicalize(&standby).expect("canonical").display()
    );
    let missed = served.replace("last_served", "last_missed");
    assert_eq!(after.find(&served), None, "{}", after.0);
    let asked = now_secs().floor();
    restore(&s1.name).assert_code(0);
    // A segment past both stored ones: not in the archive.
    let newest = [&s0.name, &s1.name, &foreign.name]
        .into_iter()
        .max()
        .expect("names");
    restore(&next_name(newest)).assert_code(1);
    let later = Scrape::take(port);
    assert!(later.value(&served) >= asked, "{}", later.0);
    assert!(later.value(&missed) >= asked, "{}", later.0);
    rx.stop_and_check(&["system identifier"]);
}

/// The segment after `name` (same timeline), for a restore that misses.
fn next_name(name: &str) -> String {
    let (tli, seg) = name.split_at(8);
    let n = u64::from_str_radix(seg, 16).expect("hex") + 1;
    format!("{tli}{:016X}", n)
}

#[test]
fn daemon_metrics_count_shipped_files_and_lookahead_hits() {
    let d = donors();
    let sc = Scenario::new("i11-metrics-daemon");
    let certs = CertSet::create(&sc, "certs");
    let setup = receiver_config(&sc, "receiver", &certs, None);
    let rx = Receiver::spawn(&sc, &setup.config, "receiver");
    let pgdata = sc.mkdir("pgdata");
    sc.mkdir("pgdata/pg_wal/archive_status");
    let (s0, s1) = (&d.home[0], &d.home[1]);
    let p0 = pgdata.join("pg_wal").join(&s0.name);
    sc.write_at(&p0, &s0.bytes, 0o600);
    let port = free_tcp_port();
    let sender = sender_for(&sc, "sender", &setup, &certs);
    add_keys(
        &sender,
        &format!(
            "socket = \"sender.sock\"\npgdata = \"pgdata\"\nlookahead = 2\nmetrics_listen = \"127.0.0.1:{port}\"\n"
        ),
    );
    let daemon = Service::spawn_daemon(&sc, &sender, "daemon");
    daemon.assert_logged(&format!("metrics on http://127.0.0.1:{port}/metrics"));
    let (status, _) = get(port, "/other");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let before = Scrape::take(port);
    assert_eq!(before.value("walship_shipped_files_total"), 0.0);
    assert_eq!(before.value("walship_ready_segments"), 0.0);

    // Look-ahead ships the .ready segment; PostgreSQL's push for it is a hit.
    sc.write(
        &format!("pgdata/pg_wal/archive_status/{}.ready", s0.name),
        "",
    );
    let shipped = wait_for(Duration::from_secs(30), || {
        archived_files(&setup.archive_dir)
            .contains(&s0.name)
            .then_some(())
    });
    assert!(shipped.is_some(), "look-ahead never shipped {}", s0.name);
    assert_pushed(&sc, &sender, &p0, &s0.name);
    // A segment look-ahead does not know: the daemon ships it on the push.
    assert_pushed(&sc, &sender, &s1.write_to(&sc, "s1"), &s1.name);

    let after = Scrape::take(port);
    let delta = |series: &str| after.value(series) - before.value(series);
    assert_eq!(delta("walship_shipped_files_total"), 2.0);
    let bytes = (s0.bytes.len() + s1.bytes.len()) as f64;
    assert_eq!(delta("walship_shipped_bytes_total"), bytes);
    assert_eq!(delta("walship_handoffs_total"), 2.0);
    assert_eq!(delta("walship_lookahead_hits_total"), 1.0);
    assert_eq!(delta("walship_ship_failures_total"), 0.0);
    assert_eq!(delta("walship_transfer_duration_seconds_count"), 2.0);
    // The .ready file stays (only PostgreSQL renames it to .done).
    assert_eq!(after.value("walship_ready_segments"), 1.0);
    assert_eq!(after.value("walship_receiver_connected"), 1.0);
    assert_eq!(after.value("walship_active_uploads"), 0.0);
    daemon.stop_and_check(&[]);
    rx.stop_and_check(&[]);
}

/// Run `program --config config subcommand` with NOTIFY_SOCKET set; READY=1 must arrive once it
/// logged "listening", STOPPING=1 after SIGTERM.
fn assert_notifies(sc: &Scenario, program: &str, subcommand: &str, config: &Path) {
    let socket_path = sc.path(&format!("notify-{subcommand}.sock"));
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    // The service runs as postgres: it must be able to send to the socket.
    fs::set_permissions(&socket_path, fs::Permissions::from_mode(0o666)).expect("chmod");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let log = sc.path(&format!("{subcommand}-notify.log"));
    let file = fs::File::create(&log).expect("log file");
    let mut child = sc
        .cmd(sc.bin(program))
        .env("NOTIFY_SOCKET", &socket_path)
        .arg("--config")
        .arg(config)
        .arg(subcommand)
        .spawn_with(Stdio::null(), Stdio::from(file));
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("READY=1 within 30 s");
    let message = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(message.lines().any(|l| l == "READY=1"), "{message:?}");
    let text = fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("listening"),
        "READY=1 came before the \"listening\" line:\n{text}"
    );
    terminate(child.id());
    let n = socket.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    let message = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(message.lines().any(|l| l == "STOPPING=1"), "{message:?}");
    let status = wait_deadline(&mut child, Duration::from_secs(30)).expect("exits after SIGTERM");
    assert!(
        status.success(),
        "{status}\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn serve_and_daemon_notify_systemd_ready_and_stopping() {
    let sc = Scenario::new("i11-notify");
    let certs = CertSet::create(&sc, "certs");
    let setup = receiver_config(&sc, "receiver", &certs, None);
    assert_notifies(&sc, "walship-receiver", "serve", &setup.config);
    let rx = Receiver::spawn(&sc, &setup.config, "receiver");
    let sender = sender_for(&sc, "sender", &setup, &certs);
    add_keys(&sender, "socket = \"sender.sock\"\n");
    assert_notifies(&sc, "walship-sender", "daemon", &sender);
    rx.stop_and_check(&[]);
}
