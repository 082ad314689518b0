//! Issue 10, item 9: `serve` takes archive_dir for itself before touching anything. A second
//! `serve` on the same archive_dir exits 1 naming the running one, and the first one's in-flight
//! upload (its temp file) survives; an archive_dir the receiver cannot write is refused at start;
//! a duration under 1 ms is refused at start (it used to mean "no timeout").

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use walship_common::proto::Reply;
use walship_tests::process::wait_for;
use walship_tests::raw::{honest_request, with_trailer, REPLY_TIMEOUT};
use walship_tests::walship::receiver_config;
use walship_tests::{donors, CertSet, Output, Scenario};

use crate::hostile::{append, assert_stored, temps, Rig};

/// `walship-receiver --config CONFIG serve` run to completion: it must exit by itself.
pub fn serve_expecting_exit(sc: &Scenario, config: &std::path::Path) -> Output {
    let cmd = sc
        .cmd(sc.bin("walship-receiver"))
        .arg("--config")
        .arg(config)
        .arg("serve")
        .timeout(Duration::from_secs(20));
    sc.run(&cmd)
}

/// Exit 1 with exactly one stderr line starting "walship-receiver: " and containing every one of
/// `all_of` (case-insensitive).
pub fn assert_start_refused(out: &Output, all_of: &[&str]) {
    out.assert_code(1);
    let lines = out.stderr_lines();
    let errors: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("walship-receiver: "))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "a refused start must print one error line\n{out}"
    );
    let lower = errors[0].to_lowercase();
    for w in all_of {
        assert!(
            lower.contains(&w.to_lowercase()),
            "the error line should mention {w:?}\n{out}"
        );
    }
}

#[test]
fn item9_second_serve_exits_and_keeps_the_first_ones_upload() {
    let d = donors();
    let mut rig = Rig::start("i10_second_serve", "10s");
    let seg = &d.home[0];
    let pid = rig.rx().pid().expect("receiver running");

    // An upload in flight: header and half the content, so the receiver holds a temp file.
    let raw = rig.raw();
    let mut stream = raw.open().expect("open stream");
    let mut head = honest_request(&seg.name, &seg.bytes).encode();
    let half = seg.bytes.len() / 2;
    head.extend_from_slice(&seg.bytes[..half]);
    stream.write(&head).expect("write half the segment");
    let archive = rig.archive().to_path_buf();
    let temp = wait_for(Duration::from_secs(10), || temps(&archive).pop())
        .expect("the receiver did not create a temp file for the upload in flight");

    // A second serve on the same config (same archive_dir, same port).
    let out = serve_expecting_exit(&rig.sc, &rig.setup.config);
    assert_start_refused(&out, &[&format!("pid {pid}"), "archive_dir"]);
    assert!(
        archive.join(&temp).exists(),
        "the second serve removed the first one's in-flight temp file {temp}; archive: {:?}",
        fs::read_dir(&archive)
            .map(|r| r
                .filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .collect::<Vec<_>>())
            .unwrap_or_default()
    );

    // The first upload completes and is stored.
    stream
        .write(&with_trailer(&seg.bytes[half..], &seg.bytes))
        .expect("write the rest of the segment and its digest");
    stream.finish();
    assert_eq!(stream.reply(REPLY_TIMEOUT).reply(), Reply::Stored);
    assert_stored(&archive, seg);
    raw.close();
    rig.assert_serves(&d.home[1]);
    rig.stop_and_check(&[]);
}

#[test]
fn item9_unwritable_archive_dir_is_refused_at_start() {
    let sc = Scenario::new("i10_unwritable");
    let certs = CertSet::create(&sc, "certs");
    let setup = receiver_config(&sc, "receiver", &certs, None);
    // Owned by root, mode 0755: the receiver (running as postgres) can read it, not write it.
    std::os::unix::fs::chown(&setup.archive_dir, Some(0), Some(0)).expect("chown archive to root");
    fs::set_permissions(&setup.archive_dir, fs::Permissions::from_mode(0o755))
        .expect("chmod archive");
    let out = serve_expecting_exit(&sc, &setup.config);
    assert_start_refused(&out, &["archive_dir", "not writable"]);
}

#[test]
fn item9_sub_millisecond_durations_are_refused_at_start() {
    let sc = Scenario::new("i10_tiny_duration");
    let certs = CertSet::create(&sc, "certs");
    let setup = receiver_config(&sc, "receiver", &certs, None);
    append(&sc, &setup.config, "idle_timeout = \"0.0001ms\"\n");
    let out = serve_expecting_exit(&sc, &setup.config);
    assert_start_refused(&out, &["idle_timeout", "0.0001ms", "1ms"]);
    // The floor itself is accepted (the control): the same config with "1ms" starts.
    let fixed = fs::read_to_string(&setup.config)
        .expect("read config")
        .replace("idle_timeout = \"0.0001ms\"", "idle_timeout = \"1ms\"");
    sc.write_at(&setup.config, fixed, 0o644);
    let rx = walship_tests::Receiver::spawn(&sc, &setup.config, "receiver");
    rx.stop_and_check(&[]);
}
