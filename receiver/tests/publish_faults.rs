//! Crashes and errors at each step of the durable publish (`TempFile::publish`, through its
//! fault points, cargo feature `failpoints` of walship-common): nothing half-visible under a
//! WAL name, the next start removes leftovers, PostgreSQL's retry stores the file, and a file
//! acknowledged before the crash is never lost.
//!
//! A crash is a real one: a child process (this test binary, re-run on `crash_child`) runs the
//! receiver and the sender, and a fault point sends the process SIGKILL at its step.
//!
//! The fault points are process-wide: every test here holds `fail::FailScenario`, which runs
//! them one at a time.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use walship_common::proto::Refusal;
use walship_common::sys::durable::{self, DurableError, Published};
use walship_sender::push::Pushed;

use support::{push, refusal, segment, Served, Setup, HOME};

/// The fault points of `TempFile::publish`, in the order of its steps.
const POINTS: [&str; 5] = [
    "publish-after-fsync-temp",
    "publish-after-link",
    "publish-after-remove-temp",
    "publish-before-fsync-dir",
    "publish-after-fsync-dir",
];
/// For the child process: the fault point to crash at, and the test directory.
const CRASH_POINT: &str = "WALSHIP_TEST_CRASH_POINT";
const CRASH_DIR: &str = "WALSHIP_TEST_CRASH_DIR";

/// Stored and acknowledged before any fault.
fn acked() -> (String, Vec<u8>) {
    segment(1, 1, HOME, 1)
}

/// The file being published when the fault hits.
fn hit() -> (String, Vec<u8>) {
    segment(1, 2, HOME, 2)
}

/// Whether the WAL name holds the file once the process dies at `point`.
fn linked_at(point: &str) -> bool {
    point != "publish-after-fsync-temp"
}

#[test]
fn each_fault_point_fails_publish_new_and_a_retry_stores_the_file() {
    let _scenario = fail::FailScenario::setup();
    for point in POINTS {
        let dir = tempfile::tempdir().expect("temp dir");
        fail::cfg(point, "1*return").expect("configure the fault point");
        let err = durable::publish_new(dir.path(), "f", b"body", 0o640).unwrap_err();
        assert!(
            matches!(&err, DurableError::Io { action, .. } if *action == point),
            "{point}: {err}"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        // The temp name is gone (removed on error); the final name is whole or absent.
        let expected: Vec<String> = if linked_at(point) {
            vec!["f".into()]
        } else {
            vec![]
        };
        assert_eq!(names, expected, "{point}");
        let again = durable::publish_new(dir.path(), "f", b"body", 0o640).expect("retry");
        let want = if linked_at(point) {
            Published::AlreadyIdentical
        } else {
            Published::Stored
        };
        assert_eq!(again, want, "{point}");
        assert_eq!(std::fs::read(dir.path().join("f")).expect("read"), b"body");
        fail::remove(point);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_at_each_step_is_refused_and_the_retry_stores_the_file() {
    let _scenario = fail::FailScenario::setup();
    for point in POINTS {
        let setup = Setup::new("");
        let rx = Served::start(setup.receiver_settings()).await;
        let sender = setup.sender_settings(rx.addr, "");
        let (a, a_body) = acked();
        let a_path = setup.file("a", &a_body);
        assert_eq!(push(&sender, &a_path, &a).await.unwrap(), Pushed::Stored);

        fail::cfg(point, "1*return").expect("configure the fault point");
        let (b, b_body) = hit();
        let b_path = setup.file("b", &b_body);
        match refusal(push(&sender, &b_path, &b).await) {
            Refusal::StorageFailed { name, detail } => {
                assert_eq!(name, b, "{point}");
                assert!(detail.contains("fault injected"), "{point}: {detail}");
            }
            other => panic!("{point}: expected Refusal::StorageFailed, got {other:?}"),
        }
        fail::remove(point);
        check_after_fault(&setup, point);
        assert!(
            setup.leftovers().is_empty(),
            "{point}: {:?}",
            setup.leftovers()
        );

        let again = push(&sender, &b_path, &b).await.expect("retry");
        check_retry(&setup, point, again);
        rx.stop().await.expect("serve returns Ok");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_each_step_loses_nothing_acknowledged() {
    let _scenario = fail::FailScenario::setup();
    let exe = std::env::current_exe().expect("path of this test binary");
    for point in POINTS {
        let setup = Setup::new("");
        let out = tokio::process::Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CRASH_POINT, point)
            .env(CRASH_DIR, setup.root())
            .output()
            .await
            .expect("run the child");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "{point}: the child was to die at the fault point; it ended with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        check_after_fault(&setup, point);
        // A temp name survives a crash until the link's temp name is removed.
        let left = !setup.leftovers().is_empty();
        let expect_left = matches!(point, "publish-after-fsync-temp" | "publish-after-link");
        assert_eq!(left, expect_left, "{point}: {:?}", setup.leftovers());

        // The next start removes leftovers; PostgreSQL's retry then succeeds.
        let rx = Served::start(setup.receiver_settings()).await;
        assert!(
            setup.leftovers().is_empty(),
            "{point}: {:?}",
            setup.leftovers()
        );
        let sender = setup.sender_settings(rx.addr, "");
        let again = push(&sender, &setup.path("b"), &hit().0)
            .await
            .expect("retry after the crash");
        check_retry(&setup, point, again);
        rx.stop().await.expect("serve returns Ok");
    }
}

/// The child of [`a_crash_at_each_step_loses_nothing_acknowledged`]; does nothing in a normal
/// run. Stores one file (acknowledged), then dies by SIGKILL at the fault point while storing
/// the next.
#[test]
fn crash_child() {
    let (Ok(point), Ok(root)) = (std::env::var(CRASH_POINT), std::env::var(CRASH_DIR)) else {
        return;
    };
    let _scenario = fail::FailScenario::setup();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let setup = Setup::open(Path::new(&root));
        let rx = Served::start(setup.receiver_settings()).await;
        let sender = setup.sender_settings(rx.addr, "");
        let (a, a_body) = acked();
        let a_path = setup.file("a", &a_body);
        assert_eq!(push(&sender, &a_path, &a).await.unwrap(), Pushed::Stored);
        fail::cfg_callback(point.as_str(), kill_self).expect("configure the fault point");
        let (b, b_body) = hit();
        let result = push(&sender, &setup.file("b", &b_body), &b).await;
        panic!("fault point {point} was never reached: push returned {result:?}");
    });
}

/// Die as `kill -9` would: no unwinding, no destructors, no flushing.
fn kill_self() {
    // SAFETY: kill(2) on our own pid with a constant signal touches no memory of ours.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}

/// After a fault at `point`: the acknowledged file is whole, and the file being published is
/// whole under its name or not there at all.
fn check_after_fault(setup: &Setup, point: &str) {
    let ((a, a_body), (b, b_body)) = (acked(), hit());
    setup.assert_stored(&a, &a_body);
    let visible = setup.archived().contains(&b);
    assert_eq!(visible, linked_at(point), "{point}: {:?}", setup.archived());
    if visible {
        setup.assert_stored(&b, &b_body);
    }
}

/// The retry after a fault at `point` stores the file (or finds it stored), leaving both files
/// whole and no temp file.
fn check_retry(setup: &Setup, point: &str, again: Pushed) {
    let want = if linked_at(point) {
        Pushed::AlreadyHad
    } else {
        Pushed::Stored
    };
    assert_eq!(again, want, "{point}");
    let ((a, a_body), (b, b_body)) = (acked(), hit());
    setup.assert_stored(&a, &a_body);
    setup.assert_stored(&b, &b_body);
    assert_eq!(setup.archived(), vec![a, b], "{point}");
    assert!(
        setup.leftovers().is_empty(),
        "{point}: {:?}",
        setup.leftovers()
    );
}
