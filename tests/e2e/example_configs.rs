//! The example configs in `deploy/`, as an operator follows the README: `certs` writes the
//! certificates beside the config (the examples name them `certs/...`, relative to the config
//! file), only the host-specific values are substituted (the listen port, the archive
//! directory, the receiver's address and the certificate's server name), and then `serve`
//! starts, `push` stores a segment, and `restore` gives it back. `pgdata` stays commented out,
//! as step 2 of the README needs: the standby does not exist yet.

use std::fs;
use std::path::{Path, PathBuf};

use walship_tests::certs::SERVER_NAME;
use walship_tests::net::free_udp_port;
use walship_tests::walship::{archived_files, assert_pushed, restore, toml_str};
use walship_tests::{donors, CertSet, Receiver, Scenario};

/// `deploy/<name>` with each `(from, to)` replaced; every `from` must occur exactly once.
fn example_with(name: &str, substitutions: &[(&str, String)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    let mut text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    for (from, to) in substitutions {
        assert_eq!(
            text.matches(from).count(),
            1,
            "deploy/{name} should hold `{from}` once"
        );
        text = text.replace(from, to);
    }
    text
}

#[test]
fn example_configs_serve_push_and_restore() {
    let d = donors();
    let sc = Scenario::new("example_configs");
    CertSet::create(&sc, "certs");
    let archive = sc.mkdir("archive");
    let addr = format!("127.0.0.1:{}", free_udp_port());

    let receiver = sc.path("receiver.toml");
    let text = example_with(
        "receiver.toml",
        &[
            (
                "listen = \"0.0.0.0:7443\"",
                format!("listen = {}", toml_str(&addr)),
            ),
            (
                "archive_dir = \"/var/lib/walship/archive\"",
                format!("archive_dir = {}", toml_str(&archive.display().to_string())),
            ),
        ],
    );
    assert!(
        !text.contains("\npgdata ="),
        "pgdata must stay commented out\n{text}"
    );
    sc.write_at(&receiver, text, 0o644);
    let rx = Receiver::spawn(&sc, &receiver, "receiver");

    let sender: PathBuf = sc.path("sender.toml");
    let text = example_with(
        "sender.toml",
        &[
            (
                "receiver = \"standby.example.com:7443\"",
                format!("receiver = {}", toml_str(&addr)),
            ),
            (
                "server_name = \"standby.example.com\"",
                format!("server_name = {}", toml_str(SERVER_NAME)),
            ),
        ],
    );
    sc.write_at(&sender, text, 0o644);

    let seg = &d.home[0];
    let path = seg.write_to(&sc, "segment");
    assert_pushed(&sc, &sender, &path, &seg.name);
    assert_eq!(archived_files(&archive), vec![seg.name.clone()]);

    let dest = sc.path("restored");
    restore(&sc, &receiver, &seg.name, &dest).assert_code(0);
    assert!(
        fs::read(&dest).expect("read restored") == seg.bytes,
        "restored bytes differ"
    );
    rx.stop_and_check(&[]);
}
