//! Issue 10, item 11: a failed TLS handshake is explained on both sides with the side at fault
//! and the setting to check. The advice comes from who closed the connection (this side or the
//! peer) and the TLS alert, not from the error text, which names "peer certificate" on both.

use std::fs;
use std::path::Path;
use std::time::Duration;

use walship_tests::process::wait_for;
use walship_tests::walship::{
    add_keys, archived_files, assert_pushed, assert_refused, push, receiver_config, sender_config,
    sender_for, toml_str, Service,
};
use walship_tests::{donors, CertSet, Output, Receiver, Scenario};

use crate::Served;

/// The sender's one line, checked for what it must and must not say.
fn assert_sender_says(out: &Output, must: &[&str], must_not: &[&str]) {
    assert_refused(out, &[]);
    let line = out.stderr_lines()[0];
    for m in must {
        assert!(line.contains(m), "the sender should say {m:?}\n{out}");
    }
    for m in must_not {
        assert!(!line.contains(m), "the sender should not say {m:?}\n{out}");
    }
}

/// The receiver's "rejected connection" line (waiting a little: the receiver logs once its
/// side of the handshake has failed), checked for what it must and must not say.
fn assert_receiver_logs(rx: &Receiver, must: &[&str], must_not: &[&str]) {
    let line = wait_for(Duration::from_secs(5), || {
        rx.log_text()
            .lines()
            .find(|l| l.contains("rejected connection"))
            .map(str::to_string)
    })
    .unwrap_or_else(|| {
        panic!(
            "the receiver logged no \"rejected connection\" line:\n{}",
            rx.log_text()
        )
    });
    for m in must {
        assert!(line.contains(m), "the receiver should say {m:?}:\n{line}");
    }
    for m in must_not {
        assert!(
            !line.contains(m),
            "the receiver should not say {m:?}:\n{line}"
        );
    }
}

/// (a) The sender presents a client certificate from another CA: the receiver refuses it.
#[test]
fn item11_client_cert_from_another_ca() {
    let d = donors();
    let s = Served::start("i11_client_ca");
    let other = CertSet::create(&s.sc, "other-certs");
    let seg = &d.home[0];
    let path = seg.write_to(&s.sc, "segment");
    let sender = sender_config(
        &s.sc,
        "sender-foreign-client",
        &s.setup.addr,
        &s.certs.ca(),
        &other.client_cert(),
        &other.client_key(),
        Some("5s"),
    );
    let out = push(&s.sc, &sender, &path, &seg.name);
    assert_sender_says(
        &out,
        &[
            "receiver refused our client certificate",
            "`client_ca`",
            "`cert`",
        ],
        &["receiver's certificate", "`server_name`"],
    );
    assert_receiver_logs(
        &s.rx,
        &["client's certificate is not signed by this receiver's `client_ca`"],
        &["refused this receiver's certificate", "server_name"],
    );
    assert_eq!(archived_files(&s.setup.archive_dir), Vec::<String>::new());

    // The daemon with the same certificate: its warm connection is refused the same way, it
    // says so (and backs off), and a push handed to it gets the same advice.
    add_keys(&sender, "socket = \"foreign.sock\"\n");
    let mut daemon = Service::spawn_daemon(&s.sc, &sender, "daemon");
    let warned = wait_for(Duration::from_secs(10), || {
        daemon
            .log_text()
            .lines()
            .find(|l| l.contains("WARN"))
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("the daemon did not warn:\n{}", daemon.log_text()));
    assert!(
        warned.contains("receiver refused our client certificate")
            && warned.contains("`client_ca`"),
        "{warned}"
    );
    let out = push(&s.sc, &sender, &path, &seg.name);
    assert_sender_says(
        &out,
        &["receiver refused our client certificate", "`client_ca`"],
        &["receiver's certificate"],
    );
    daemon.stop();
    daemon.check_log(&["receiver refused our client certificate"]);
    assert_eq!(archived_files(&s.setup.archive_dir), Vec::<String>::new());

    assert_pushed(&s.sc, &s.sender, &path, &seg.name);
    s.rx.stop_and_check(&["rejected connection"]);
}

/// (b) The sender expects another name than the receiver's certificate was made for.
#[test]
fn item11_wrong_server_name() {
    let d = donors();
    let s = Served::start("i11_server_name");
    let seg = &d.home[0];
    let path = seg.write_to(&s.sc, "segment");
    let text = fs::read_to_string(&s.sender).expect("read sender.toml");
    let other_name = s.sc.path("sender-other-name.toml");
    s.sc.write_at(
        &other_name,
        text.replace(
            "server_name = \"localhost\"",
            "server_name = \"other.example\"",
        ),
        0o644,
    );
    let out = push(&s.sc, &other_name, &path, &seg.name);
    assert_sender_says(
        &out,
        &[
            "receiver's certificate is not valid for `server_name`",
            "other.example",
        ],
        &["client certificate", "client_ca"],
    );
    assert_receiver_logs(
        &s.rx,
        &[
            "client refused this receiver's certificate",
            "`server_name`",
        ],
        &["client's certificate", "client_ca"],
    );
    assert_eq!(archived_files(&s.setup.archive_dir), Vec::<String>::new());
    assert_pushed(&s.sc, &s.sender, &path, &seg.name);
    s.rx.stop_and_check(&["rejected connection"]);
}

/// (c) The receiver presents a certificate from another CA than the sender's `ca`.
#[test]
fn item11_receiver_cert_from_another_ca() {
    let d = donors();
    let sc = Scenario::new("i11_server_ca");
    let certs = CertSet::create(&sc, "certs");
    let other = CertSet::create(&sc, "other-certs");
    // Server certificate and key from the other set; clients still checked against `certs`.
    let setup = receiver_config(&sc, "receiver", &other, None);
    set_key(&setup.config, "client_ca", &certs.ca());
    let rx = Receiver::spawn(&sc, &setup.config, "receiver");
    let sender = sender_for(&sc, "sender", &setup, &certs);
    let seg = &d.home[0];
    let path = seg.write_to(&sc, "segment");
    let out = push(&sc, &sender, &path, &seg.name);
    assert_sender_says(
        &out,
        &["receiver's certificate is not signed by the CA in `ca`"],
        &["client certificate", "client_ca"],
    );
    assert_receiver_logs(
        &rx,
        &[
            "client refused this receiver's certificate",
            "sender's `ca`",
        ],
        &["client's certificate", "client_ca"],
    );
    assert_eq!(archived_files(&setup.archive_dir), Vec::<String>::new());
    rx.stop_and_check(&["rejected connection"]);
}

/// (d) The sender's client certificate, from the right CA, has expired.
#[test]
fn item11_expired_client_cert() {
    let d = donors();
    let s = Served::start("i11_expired");
    let now = time::OffsetDateTime::now_utc();
    let (cert, key) = s.certs.issue_client(
        &s.sc,
        "client-expired",
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    );
    let sender = sender_config(
        &s.sc,
        "sender-expired",
        &s.setup.addr,
        &s.certs.ca(),
        &cert,
        &key,
        Some("5s"),
    );
    let seg = &d.home[0];
    let path = seg.write_to(&s.sc, "segment");
    let out = push(&s.sc, &sender, &path, &seg.name);
    assert_sender_says(
        &out,
        &[
            "receiver refused our client certificate as expired",
            "`cert`",
        ],
        &["receiver's certificate"],
    );
    assert_receiver_logs(
        &s.rx,
        &["client's certificate has expired", "`cert`"],
        &["refused this receiver's certificate"],
    );
    assert_eq!(archived_files(&s.setup.archive_dir), Vec::<String>::new());
    s.rx.stop_and_check(&["rejected connection"]);
}

/// Replace the line `key = ...` of a harness-written config with `key = "<path>"`.
fn set_key(config: &Path, key: &str, value: &Path) {
    let text = fs::read_to_string(config).expect("read config");
    let prefix = format!("{key} = ");
    assert!(text.lines().any(|l| l.starts_with(&prefix)), "{text}");
    let replaced: String = text
        .lines()
        .map(|l| {
            if l.starts_with(&prefix) {
                format!("{prefix}{}\n", toml_str(&value.display().to_string()))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(config, replaced).expect("write config");
}
