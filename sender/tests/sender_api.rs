//! The sender through its public API, in process: sender.toml to push settings, the hand-off
//! refusing a daemon socket it cannot trust, and the one-line errors PostgreSQL's log gets when
//! the receiver is down or the input is wrong. Certificates are made per test; a receiver, when
//! one is needed, is `serve` in process (the receiver tests' support module, shared).

#[path = "../../receiver/tests/support/mod.rs"]
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use walship_common::proto::Encoding;
use walship_common::sys::config::{ConfigError, SenderSettings};
use walship_sender::error::SenderError;
use walship_sender::handoff::{self, Unavailable};
use walship_sender::push::Pushed;

use support::{push, segment, Served, Setup, HOME};

/// A loopback UDP port nobody listens on (bound, read, released).
fn dead_port() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    socket.local_addr().expect("local address")
}

#[test]
fn sender_toml_becomes_push_settings() {
    let setup = Setup::new("");
    let addr: SocketAddr = "127.0.0.1:7443".parse().expect("address");
    let s = setup.sender_settings(
        addr,
        "compression = \"none\"\ncompression_level = 3\nsocket = \"run/sender.sock\"\nlookahead = 0",
    );
    assert_eq!(s.receivers.len(), 1);
    assert_eq!(s.receivers[0].address, "127.0.0.1:7443");
    assert_eq!(s.receivers[0].server_name, support::SERVER_NAME);
    assert_eq!(s.receivers[0].ca, setup.path("certs/ca.pem"));
    // Relative paths are resolved against the config file's directory.
    assert_eq!(s.ca, setup.path("certs/ca.pem"));
    assert_eq!(s.key, setup.path("certs/client.key"));
    assert_eq!(s.socket, Some(setup.path("run/sender.sock")));
    assert_eq!(s.connect_timeout, Duration::from_secs(5));
    assert_eq!(s.timeout, Duration::from_secs(60));
    assert_eq!(s.compression, Encoding::Plain);
    assert!(!s.adaptive);
    assert_eq!(s.compression_level, 3);
    assert_eq!(s.lookahead, 0);

    // Defaults: "auto" (zstd starting at level 1, adapted by the daemon), no socket.
    let d = setup.sender_settings(addr, "");
    assert_eq!(d.compression, Encoding::Zstd);
    assert!(d.adaptive);
    assert_eq!(d.compression_level, 1);
    assert!((1..=4).contains(&d.compression_threads));
    // A fixed level, on two threads.
    let z = setup.sender_settings(addr, "compression = \"zstd\"\ncompression_threads = 2");
    assert_eq!(
        (z.compression, z.adaptive, z.compression_threads),
        (Encoding::Zstd, false, 2)
    );
    assert_eq!(d.socket, None);
}

#[test]
fn a_bad_sender_toml_names_file_line_key_and_value_with_a_caret() {
    let setup = Setup::new("");
    let path = setup.path("sender.toml");
    let base = "server_name = \"localhost\"\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\n";
    let cases = [
        (
            "receiver = \"10.0.0.7\"\n",
            "receiver = \"10.0.0.7\": expected host:port",
        ),
        (
            "receiver = \"10.0.0.7:7443\"\ncompression = \"lzma\"\n",
            "compression = \"lzma\": expected \"auto\" (the default), \"zstd\", \"lz4\" or \"none\"",
        ),
        (
            "receiver = \"10.0.0.7:7443\"\ncompression_threads = 0\n",
            "compression_threads = 0: expected 1 (compress on the sending thread) to 4",
        ),
        (
            "receiver = \"10.0.0.7:7443\"\nlookahead = 99\n",
            "lookahead = 99: expected 0 (off) to 8",
        ),
    ];
    for (line, expected) in cases {
        std::fs::write(&path, format!("{line}{base}")).expect("write sender.toml");
        let err = SenderSettings::load(&path).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err:?}");
        // One line that says it all (file, line, key, value, what is expected), then the line of
        // the file with a caret under the value.
        let text = err.to_string();
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("config {}, line ", path.display()))
                && first.contains(expected),
            "{text}"
        );
        assert!(text.lines().any(|l| l.contains('^')), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_says_where_and_what_to_do() {
    let setup = Setup::new("");
    let addr = dead_port();
    let sender = setup.sender_settings(addr, "connect_timeout = \"300ms\"");
    let (name, body) = segment(1, 1, HOME, 1);
    let path = setup.file("seg", &body);
    let started = Instant::now();
    let err = push(&sender, &path, &name).await.unwrap_err();
    assert!(
        matches!(err, SenderError::ReceiverUnreachable { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "receiver {addr} did not answer within 300ms; check that walship-receiver serve is running there and UDP {} is reachable (PostgreSQL will retry)",
            addr.port()
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_receiver_is_unreachable_and_a_restarted_one_takes_the_retry() {
    let setup = Setup::new("");
    let rx = Served::start(setup.receiver_settings()).await;
    let addr = rx.addr;
    rx.stop().await.expect("serve returns Ok");
    let sender = setup.sender_settings(addr, "connect_timeout = \"300ms\"");
    let (name, body) = segment(1, 1, HOME, 1);
    let path = setup.file("seg", &body);
    let err = push(&sender, &path, &name).await.unwrap_err();
    assert!(support::is_retryable(&err), "{err:?}: {err}");
    let rx = Served::start(setup.receiver_settings()).await;
    let sender = setup.sender_settings(rx.addr, "");
    assert_eq!(push(&sender, &path, &name).await.unwrap(), Pushed::Stored);
    setup.assert_stored(&name, &body);
    rx.stop().await.expect("serve returns Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_input_is_refused_before_the_network() {
    let setup = Setup::new("");
    // Nobody listens: each of these must fail on its own, not on the connection.
    let sender = setup.sender_settings(dead_port(), "connect_timeout = \"10s\"");
    let (name, body) = segment(1, 1, HOME, 1);
    let path = setup.file("seg", &body);

    let missing = setup.path("missing");
    match push(&sender, &missing, &name).await {
        Err(e @ SenderError::ReadFile { .. }) => {
            assert!(
                e.to_string()
                    .starts_with(&format!("read {}: ", missing.display())),
                "{e}"
            )
        }
        other => panic!("expected ReadFile, got {other:?}"),
    }
    // %p and %f of different segments: the page header does not fit the name.
    let other = segment(1, 2, HOME, 1).0;
    match push(&sender, &path, &other).await {
        Err(e @ SenderError::BadSegment { .. }) => assert!(
            e.to_string().starts_with(&format!(
                "{} is not the WAL segment {other}: ",
                path.display()
            )),
            "{e}"
        ),
        other => panic!("expected BadSegment, got {other:?}"),
    }
    match push(&sender, &path, "RECOVERYHISTORY").await {
        Err(e @ SenderError::BadName { .. }) => {
            assert!(
                e.to_string()
                    .starts_with("refusing to push \"RECOVERYHISTORY\": "),
                "{e}"
            )
        }
        other => panic!("expected BadName, got {other:?}"),
    }
}

#[test]
fn the_hand_off_trusts_only_a_socket_of_this_user() {
    let setup = Setup::new("");
    let (name, body) = segment(1, 1, HOME, 1);
    let path = setup.file("seg", &body);
    let wait = Duration::from_secs(2);

    // No socket: no daemon, push goes direct (quietly).
    let absent = setup.path("absent.sock");
    assert!(matches!(
        handoff::ask(&absent, &path, &name, wait),
        Err(Unavailable::NotStarted(_))
    ));

    // Not a socket: never trusted, never sent the path.
    let plain = setup.file("plain.sock", b"");
    match handoff::ask(&plain, &path, &name, wait) {
        Err(e @ Unavailable::Untrusted { .. }) => {
            let text = e.to_string();
            assert!(text.contains("it is not a socket"), "{text}");
            assert!(
                text.contains("put `socket` in a directory only this user can write"),
                "{text}"
            );
        }
        other => panic!("expected Untrusted, got {other:?}"),
    }

    // A socket file of another user (needs root to make one).
    if rustix::process::geteuid().is_root() {
        let foreign = setup.path("foreign.sock");
        let _listener = UnixListener::bind(&foreign).expect("bind");
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).expect("chown to nobody");
        match handoff::ask(&foreign, &path, &name, wait) {
            Err(e @ Unavailable::Untrusted { .. }) => {
                assert!(
                    e.to_string().contains("the file belongs to uid 65534"),
                    "{e}"
                )
            }
            other => panic!("expected Untrusted, got {other:?}"),
        }
    }

    // Ours, but silent: no answer within the wait, so push goes direct.
    let silent = setup.path("silent.sock");
    let _listener = UnixListener::bind(&silent).expect("bind");
    let started = Instant::now();
    match handoff::ask(&silent, &path, &name, Duration::from_millis(300)) {
        Err(Unavailable::NoAnswer { .. }) => {}
        other => panic!("expected NoAnswer, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn the_daemon_refuses_a_socket_directory_others_may_write() {
    let setup = Setup::new("");
    let open_dir = setup.path("open");
    std::fs::create_dir(&open_dir).expect("mkdir");
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let sender = setup.sender_settings(dead_port(), "socket = \"open/sender.sock\"\nlookahead = 0");
    match walship_sender::daemon::run(sender) {
        Err(e @ SenderError::Setup(_)) => {
            let text = e.to_string();
            assert!(
                text.contains("is writable by group or others and not sticky (mode 777)"),
                "{text}"
            );
            assert!(
                text.contains(&format!("chmod go-w {}", open_dir.display())),
                "{text}"
            );
        }
        other => panic!("expected a Setup error, got {other:?}"),
    }
    assert!(!open_dir.join("sender.sock").exists());
}
