//! A server name the sender could not use is refused where it is given, with one line naming
//! it: by `certs --server-name` (exit 1, nothing written, not even the directory) and by the
//! sender's config load (`server_name`, exit 1 before any connection), never as "internal:" at
//! connect time.

use std::fs;
use std::path::Path;

use walship_tests::walship::{receiver_config, sender_for, MAX_EXIT_CODE};
use walship_tests::{donors, CertSet, Output, Scenario};

/// `walship-receiver certs --dir DIR --server-name=NAME` (with `=`, so that clap takes
/// "-standby" as the value, not as a flag).
fn certs(sc: &Scenario, dir: &Path, name: &str) -> Output {
    sc.run(
        &sc.cmd(sc.bin("walship-receiver"))
            .arg("certs")
            .arg("--dir")
            .arg(dir)
            .arg(format!("--server-name={name}")),
    )
}

#[test]
fn certs_refuses_a_bad_server_name_and_writes_nothing() {
    let sc = Scenario::new("certs_bad_server_name");
    for (i, name) in [
        "",
        " ",
        "standby example",
        "-standby",
        "standby.",
        "[::1]",
        "a..b",
    ]
    .iter()
    .enumerate()
    {
        let dir = sc.path(&format!("certs-{i}"));
        let out = certs(&sc, &dir, name);
        out.assert_code(1);
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "{name:?}: one line\n{out}");
        assert!(
            lines[0].starts_with(&format!("walship-receiver: --server-name {name:?}: "))
                && lines[0].contains("nothing was written")
                && !lines[0].contains("internal"),
            "{name:?}\n{out}"
        );
        assert!(out.stdout.is_empty(), "{name:?}: no file listed\n{out}");
        assert!(!dir.exists(), "{name:?}: {} was created", dir.display());
    }
    // The control: an IP address and a DNS name are fine.
    for (i, name) in ["10.0.0.7", "standby.example.com"].iter().enumerate() {
        let dir = sc.path(&format!("good-{i}"));
        let out = certs(&sc, &dir, name);
        out.assert_code(0);
        assert!(dir.join("server.pem").is_file(), "{name:?}\n{out}");
    }
}

#[test]
fn push_refuses_a_bad_server_name_at_config_load() {
    let d = donors();
    let sc = Scenario::new("sender_bad_server_name");
    let certs = CertSet::create(&sc, "certs");
    let setup = receiver_config(&sc, "receiver", &certs, None);
    let sender = sender_for(&sc, "sender", &setup, &certs);
    let text = fs::read_to_string(&sender).expect("read sender.toml");
    let bad = text.replace("server_name = \"localhost\"", "server_name = \"stand by\"");
    assert_ne!(bad, text);
    sc.write_at(&sender, bad, 0o644);

    let seg = &d.home[0];
    let path = seg.write_to(&sc, "segment");
    // No receiver runs: the config is refused before any connection is tried.
    let out = walship_tests::walship::push(&sc, &sender, &path, &seg.name);
    out.assert_code(1);
    assert!((1..=MAX_EXIT_CODE).contains(&out.code()));
    let first = out.stderr_lines()[0].to_string();
    assert!(
        first.starts_with("walship-sender: config ")
            && first.contains("server_name = \"stand by\": it contains spaces")
            && !first.contains("internal"),
        "{out}"
    );
    // The rest is the line of the file with a caret under the value.
    assert!(
        out.stderr.contains("| server_name = \"stand by\"\n"),
        "{out}"
    );
    assert!(out.stderr.contains("^^^^^^^^^^"), "{out}");
}
