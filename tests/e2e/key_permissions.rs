//! A private key readable by group or others is refused, with the `chmod` that fixes it: by
//! `push` (exit 1, one line) and by `serve` (it does not start listening).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use walship_tests::donors;
use walship_tests::walship::{archived_files, assert_refused, push, receiver_config};
use walship_tests::{CertSet, Scenario};

#[test]
fn key_permissions() {
    let d = donors();
    let sc = Scenario::new("key_permissions");
    let certs = CertSet::create(&sc, "certs");
    let setup = receiver_config(&sc, "receiver", &certs, None);

    // serve with a group-readable server key: refuses to start, exit 1, says chmod.
    fs::set_permissions(certs.server_key(), fs::Permissions::from_mode(0o640)).expect("chmod");
    let serve = sc
        .cmd(sc.bin("walship-receiver"))
        .arg("--config")
        .arg(&setup.config)
        .arg("serve")
        .timeout(Duration::from_secs(30));
    let out = sc.run(&serve);
    out.assert_code(1);
    assert!(
        out.stderr.contains("chmod"),
        "the refusal should say how to fix it\n{out}"
    );
    assert!(
        !out.stderr.contains("listening"),
        "serve started anyway\n{out}"
    );

    // push with a world-readable client key: exit 1 before anything is sent.
    fs::set_permissions(certs.client_key(), fs::Permissions::from_mode(0o644)).expect("chmod");
    let sender = walship_tests::walship::sender_for(&sc, "sender", &setup, &certs);
    let seg = &d.home[0];
    let path = seg.write_to(&sc, "segment");
    let out = push(&sc, &sender, &path, &seg.name);
    assert_refused(&out, &["chmod"]);
    assert_eq!(archived_files(&setup.archive_dir), Vec::<String>::new());
}
