//! Issue 10, item 1: `push` trusts an answer on the daemon socket only from its own user (or
//! root), and the daemon refuses a socket directory where another user could replace the socket.
//!
//! The impostor is a small Python listener running as `nobody` in a world-writable sticky
//! directory (like /tmp), answering every request with a well-formed "stored" hand-off reply.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use walship_common::proto::handoff::HandoffReply;
use walship_tests::net::free_udp_port;
use walship_tests::process::{wait_for, OsUser};
use walship_tests::walship::{
    add_keys, archived_files, push, receiver_config, sender_config, sender_for, Service,
};
use walship_tests::{donors, CertSet, Cmd, Receiver, Scenario};

/// Listen on argv[1], answer every connection with the bytes hex-encoded in argv[2]; stop by
/// itself after 120 s without a connection.
const IMPOSTOR: &str = r#"
import os, socket, sys
path, reply = sys.argv[1], bytes.fromhex(sys.argv[2])
os.umask(0)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
s.listen(16)
s.settimeout(120)
print("listening", flush=True)
while True:
    try:
        c, _ = s.accept()
    except socket.timeout:
        break
    try:
        c.settimeout(5)
        c.recv(65536)
        c.sendall(reply)
    except OSError:
        pass
    c.close()
"#;

/// The impostor process; killed when dropped.
struct Impostor {
    child: Child,
}

impl Impostor {
    /// Start the impostor as `nobody` on `socket` and wait until it listens.
    fn start(sc: &Scenario, socket: &Path) -> Impostor {
        let python = Path::new("/usr/bin/python3");
        assert!(
            python.is_file(),
            "this test needs /usr/bin/python3 for its impostor (apt-get install python3)"
        );
        let log = sc.path("impostor.log");
        let file = fs::File::create(&log).expect("create impostor.log");
        let reply = hex::encode(HandoffReply::Stored.encode());
        let child = Cmd::new(python)
            .user(&nobody(), Path::new("/"))
            .args(["-c", IMPOSTOR])
            .arg(socket)
            .arg(reply)
            .spawn_with(
                Stdio::from(file.try_clone().expect("dup impostor log")),
                Stdio::from(file),
            );
        let mut impostor = Impostor { child };
        let ready = wait_for(Duration::from_secs(10), || {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.contains("listening") {
                return Some(Ok(()));
            }
            match impostor.child.try_wait() {
                Ok(Some(status)) => Some(Err(format!("exited with {status}: {text}"))),
                _ => None,
            }
        });
        match ready {
            Some(Ok(())) => impostor,
            Some(Err(e)) => panic!("the impostor did not start: {e}"),
            None => {
                let _ = impostor.child.kill();
                panic!("the impostor did not listen within 10 s")
            }
        }
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `nobody` account: another user than the one push runs as.
fn nobody() -> OsUser {
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == "nobody" {
            return OsUser {
                name: "nobody".into(),
                uid: f[2].parse().expect("nobody's uid"),
                gid: f[3].parse().expect("nobody's gid"),
                switch: true,
            };
        }
    }
    panic!("no `nobody` user in /etc/passwd")
}

/// A directory anybody may write, sticky like /tmp.
fn shared_dir(sc: &Scenario, rel: &str, mode: u32) -> PathBuf {
    let dir = sc.mkdir(rel);
    fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).expect("chmod shared dir");
    dir
}

fn assert_one_warning(out: &walship_tests::Output, socket: &Path, needle: &str) {
    let warnings: Vec<&str> = out
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("WARN"))
        .collect();
    assert_eq!(warnings.len(), 1, "expected one warning line\n{out}");
    let w = warnings[0];
    assert!(
        w.contains(&socket.display().to_string()) && w.contains(needle),
        "the warning should name the socket and say {needle:?}\n{out}"
    );
    assert!(w.contains("pushing directly"), "{out}");
}

#[test]
fn item1_push_does_not_trust_another_users_socket() {
    let d = donors();
    let sc = Scenario::new("i10_impostor");
    let certs = CertSet::create(&sc, "certs");
    let rx_setup = receiver_config(&sc, "receiver", &certs, None);
    let rx = Receiver::spawn(&sc, &rx_setup.config, "receiver");
    let shared = shared_dir(&sc, "shared", 0o1777);
    let socket = shared.join("sender.sock");
    let sender = sender_for(&sc, "sender", &rx_setup, &certs);
    add_keys(&sender, "socket = \"shared/sender.sock\"\n");
    let _impostor = Impostor::start(&sc, &socket);

    // The socket file belongs to nobody: push does not ask it, ships directly, says so once.
    let s0 = &d.home[0];
    let p0 = s0.write_to(&sc, "segment0");
    let out = push(&sc, &sender, &p0, &s0.name);
    out.assert_code(0);
    assert_eq!(
        archived_files(&rx_setup.archive_dir),
        vec![s0.name.clone()],
        "push exited 0 but the receiver does not have the segment\n{out}"
    );
    assert_one_warning(&out, &socket, "uid");
    assert_eq!(out.stderr_lines().len(), 1, "{out}");

    // The socket file handed to our user (a stand-in for any way the file check could be
    // fooled): the peer's credentials still say nobody.
    std::os::unix::fs::chown(&socket, Some(sc.user().uid), Some(sc.user().gid))
        .expect("chown the impostor's socket");
    let s1 = &d.home[1];
    let p1 = s1.write_to(&sc, "segment1");
    let out = push(&sc, &sender, &p1, &s1.name);
    out.assert_code(0);
    assert!(
        archived_files(&rx_setup.archive_dir).contains(&s1.name),
        "push exited 0 but the receiver does not have the segment\n{out}"
    );
    assert_one_warning(&out, &socket, "uid");
    assert_eq!(out.stderr_lines().len(), 1, "{out}");

    // No receiver at all: the impostor's "stored" must not turn into exit 0.
    let nowhere = sender_config(
        &sc,
        "sender-nowhere",
        &format!("127.0.0.1:{}", free_udp_port()),
        &certs.ca(),
        &certs.client_cert(),
        &certs.client_key(),
        Some("1s"),
    );
    add_keys(&nowhere, "socket = \"shared/sender.sock\"\n");
    let s2 = &d.home[2];
    let p2 = s2.write_to(&sc, "segment2");
    let out = push(&sc, &nowhere, &p2, &s2.name);
    out.assert_code(1);
    assert!(out.stderr.contains("did not answer"), "{out}");
    assert_one_warning(&out, &socket, "uid");
    assert!(!archived_files(&rx_setup.archive_dir).contains(&s2.name));
    rx.stop_and_check(&[]);
}

#[test]
fn item1_daemon_refuses_a_socket_directory_others_can_write() {
    let sc = Scenario::new("i10_sockdir");
    let certs = CertSet::create(&sc, "certs");
    let rx_setup = receiver_config(&sc, "receiver", &certs, None);
    for (rel, mode) in [("open", 0o777), ("group", 0o775)] {
        let dir = shared_dir(&sc, rel, mode);
        let sender = sender_for(&sc, &format!("sender-{rel}"), &rx_setup, &certs);
        add_keys(&sender, &format!("socket = \"{rel}/sender.sock\"\n"));
        let out = sc.run(
            &sc.cmd(sc.bin("walship-sender"))
                .arg("--config")
                .arg(&sender)
                .arg("daemon")
                .timeout(Duration::from_secs(15)),
        );
        out.assert_code(1);
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "one line\n{out}");
        assert!(
            lines[0].contains(&dir.display().to_string()) && lines[0].contains("chmod"),
            "the line should name the directory and the fix\n{out}"
        );
        assert!(!dir.join("sender.sock").exists(), "{out}");
    }

    // Sticky but owned by another user: its owner may still replace any entry.
    let foreign = shared_dir(&sc, "foreign", 0o1777);
    std::os::unix::fs::chown(&foreign, Some(65534), None).expect("chown to nobody");
    let sender = sender_for(&sc, "sender-foreign", &rx_setup, &certs);
    add_keys(&sender, "socket = \"foreign/sender.sock\"\n");
    let out = sc.run(
        &sc.cmd(sc.bin("walship-sender"))
            .arg("--config")
            .arg(&sender)
            .arg("daemon")
            .timeout(Duration::from_secs(15)),
    );
    out.assert_code(1);
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "one line\n{out}");
    assert!(
        lines[0].contains(&foreign.display().to_string()) && lines[0].contains("uid 65534"),
        "the line should name the directory and its owner\n{out}"
    );

    // Sticky, like /tmp: nobody else can replace our socket there; the daemon starts.
    shared_dir(&sc, "sticky", 0o1777);
    let sender = sender_for(&sc, "sender-sticky", &rx_setup, &certs);
    add_keys(&sender, "socket = \"sticky/sender.sock\"\n");
    let rx = Receiver::spawn(&sc, &rx_setup.config, "receiver");
    let mut daemon = Service::spawn_daemon(&sc, &sender, "daemon");
    daemon.stop();
    daemon.check_log(&[]);
    rx.stop_and_check(&[]);
}
