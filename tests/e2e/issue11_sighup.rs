//! Issue 11, item 6: SIGHUP reloads the receiver's `cert`, `key` and `client_ca`. New
//! connections get the new certificates, the process and its hold on archive_dir stay; a set
//! that does not load is refused with one ERROR line and the previous one keeps serving.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use walship_tests::process::wait_for;
use walship_tests::walship::{assert_pushed, assert_refused, push, receiver_config, sender_for};
use walship_tests::{donors, CertSet, Receiver, Scenario};

use crate::issue10_serve_lock::{assert_start_refused, serve_expecting_exit};

/// Copy `from`'s server certificate, key and CA over the files the receiver is configured with.
fn install(sc: &Scenario, from: &CertSet, live: &CertSet) {
    for (src, dst, mode) in [
        (from.server_cert(), live.server_cert(), 0o644),
        (from.server_key(), live.server_key(), 0o600),
        (from.ca(), live.ca(), 0o644),
    ] {
        sc.write_at(&dst, fs::read(&src).expect("read certificate"), mode);
    }
}

/// Send SIGHUP and wait for the receiver's `count`-th log line containing `needle`.
fn hangup_until(rx: &Receiver, count: usize, needle: &str) {
    let pid = rx.pid().expect("receiver running");
    // SAFETY: kill only sends a signal to the receiver this test started.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0, "kill -HUP {pid}");
    let seen = |log: &str| log.lines().filter(|l| l.contains(needle)).count();
    wait_for(Duration::from_secs(10), || {
        (seen(&rx.log_text()) >= count).then_some(())
    })
    .unwrap_or_else(|| panic!("no {needle:?} after SIGHUP:\n{}", rx.log_text()));
}

fn assert_still_holds_archive(sc: &Scenario, config: &Path, rx: &Receiver, pid: u32) {
    assert_eq!(rx.pid(), Some(pid), "the receiver is the same process");
    let out = serve_expecting_exit(sc, config);
    assert_start_refused(&out, &[&format!("pid {pid}"), "archive_dir"]);
}

#[test]
fn item6_sighup_reloads_certificates() {
    let d = donors();
    let sc = Scenario::new("i11_sighup");
    let a = CertSet::create(&sc, "certs-a");
    let b = CertSet::create(&sc, "certs-b");
    let live = CertSet {
        dir: sc.mkdir("certs-live"),
    };
    install(&sc, &a, &live);
    let setup = receiver_config(&sc, "receiver", &live, None);
    let sender_a = sender_for(&sc, "sender-a", &setup, &a);
    let sender_b = sender_for(&sc, "sender-b", &setup, &b);
    let rx = Receiver::spawn(&sc, &setup.config, "receiver");
    let pid = rx.pid().expect("receiver running");
    let segs: Vec<_> = d.home[..3]
        .iter()
        .map(|s| (s.write_to(&sc, &format!("seg-{}", s.name)), &s.name))
        .collect();

    assert_pushed(&sc, &sender_a, &segs[0].0, segs[0].1);

    // Set B in place, SIGHUP: B's sender gets in, A's is refused in the handshake.
    install(&sc, &b, &live);
    hangup_until(&rx, 1, "reloaded certificates from");
    assert_pushed(&sc, &sender_b, &segs[1].0, segs[1].1);
    let out = push(&sc, &sender_a, &segs[2].0, segs[2].1);
    assert_refused(&out, &["certificate"]);
    assert_still_holds_archive(&sc, &setup.config, &rx, pid);

    // A key readable by others: one ERROR naming the file and the fix; B keeps serving.
    fs::set_permissions(live.server_key(), fs::Permissions::from_mode(0o644)).expect("chmod");
    hangup_until(&rx, 1, "certificates not reloaded");
    let log = rx.log_text();
    // (A's refused handshake above is logged as an ERROR of its own: "rejected connection".)
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && !l.contains("rejected connection"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "one ERROR line for the failed reload:\n{log}"
    );
    let key = live.server_key().display().to_string();
    assert!(
        errors[0].contains(&key) && errors[0].contains("chmod 600"),
        "{}",
        errors[0]
    );
    assert_pushed(&sc, &sender_b, &segs[2].0, segs[2].1);
    assert_still_holds_archive(&sc, &setup.config, &rx, pid);
    rx.stop_and_check(&["certificates not reloaded", "rejected connection"]);
}
