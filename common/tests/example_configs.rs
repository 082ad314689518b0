//! The example configs in `deploy/` stay loadable, complete and true: as shipped (required keys
//! set, optional ones commented out, so that following the README's steps in order works: no
//! `pgdata` before the standby exists), and with every `# key = value` line uncommented (every
//! documented optional key is spelled right and takes the value shown, which is its default
//! where one exists). Every key the loader knows appears in its example.

use std::path::{Path, PathBuf};
use std::time::Duration;

use walship_common::proto::Encoding;
use walship_common::sys::config::*;

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `text` with each `# key = value` line (one space after `#`, a lowercase key) uncommented.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if is_setting(rest) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_setting(line: &str) -> bool {
    line.split_once(" = ").is_some_and(|(key, _)| {
        !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    })
}

/// The keys a loader knows, from its own "unknown key" error (which lists them all).
fn known_keys(load: impl Fn(&Path) -> Result<(), ConfigError>) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("probe.toml");
    std::fs::write(&path, "no_such_key = 1\n").expect("write probe");
    let err = load(&path).expect_err("an unknown key").to_string();
    let list = err
        .lines()
        .next()
        .and_then(|l| l.split_once("expected one of "))
        .map(|(_, list)| list.to_string())
        .unwrap_or_else(|| panic!("no key list in {err}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Write `text` as `<tmp>/<name>` and load it with `load`.
fn load_text<T>(
    name: &str,
    text: &str,
    load: impl Fn(&Path) -> Result<T, ConfigError>,
) -> (tempfile::TempDir, PathBuf, T) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write config");
    let loaded = load(&path).unwrap_or_else(|e| panic!("deploy/{name}:\n{e}\n---\n{text}"));
    (dir, path, loaded)
}

fn assert_every_key_shown(name: &str, text: &str, keys: &[String]) {
    assert!(keys.len() >= 10, "{keys:?}");
    for key in keys {
        // A table (`[object_store]`) or an array of tables (`[[receivers]]`) is shown by its
        // header in a comment (its keys indented, so that uncommenting leaves them out).
        let shown = text.lines().any(|l| {
            let l = l.strip_prefix("# ").unwrap_or(l);
            l.starts_with(&format!("{key} = "))
                || l.trim() == format!("[[{key}]]")
                || l.trim() == format!("[{key}]")
        });
        assert!(shown, "deploy/{name} does not show `{key}`");
    }
}

#[test]
fn receiver_example_loads_as_shipped_and_uncommented() {
    let text = example("receiver.toml");
    let (_dir, path, s) = load_text("receiver.toml", &text, ReceiverSettings::load);
    let base = path.parent().unwrap();
    assert_eq!(s.listen.to_string(), "0.0.0.0:7443");
    assert_eq!(s.archive_dir, PathBuf::from("/var/lib/walship/archive"));
    assert_eq!(s.cert, base.join("certs/server.pem"));
    assert_eq!(s.client_ca, base.join("certs/ca.pem"));
    assert_eq!(
        s.pgdata, None,
        "pgdata must stay commented: at step 2 the standby does not exist yet"
    );
    assert!(s.conninfo.is_some());

    let all = uncommented(&text);
    let (_dir, _, s) = load_text("receiver.toml", &all, ReceiverSettings::load);
    assert_eq!(s.pgdata, Some(PathBuf::from("/var/lib/postgresql/15/main")));
    assert_eq!(s.idle_timeout, DEFAULT_IDLE_TIMEOUT);
    assert_eq!(s.max_uploads, DEFAULT_MAX_UPLOADS);
    assert_eq!(s.max_connections, DEFAULT_MAX_CONNECTIONS);
    assert_eq!(u64::from(s.stream_window), DEFAULT_STREAM_WINDOW);
    assert_eq!(s.min_upload_rate, DEFAULT_MIN_UPLOAD_RATE);

    let keys = known_keys(|p| ReceiverSettings::load(p).map(drop));
    assert_every_key_shown("receiver.toml", &text, &keys);
}

#[test]
fn sender_example_loads_as_shipped_and_uncommented() {
    let text = example("sender.toml");
    let (_dir, path, s) = load_text("sender.toml", &text, SenderSettings::load);
    let base = path.parent().unwrap();
    assert_eq!(s.receivers.len(), 1);
    assert_eq!(s.receivers[0].address, "standby.example.com:7443");
    assert_eq!(s.receivers[0].server_name, "standby.example.com");
    assert_eq!(s.key, base.join("certs/client.key"));
    assert_eq!((s.socket.as_ref(), s.pgdata.as_ref()), (None, None));

    let all = uncommented(&text);
    let (_dir, _, s) = load_text("sender.toml", &all, SenderSettings::load);
    assert_eq!(s.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(s.timeout, DEFAULT_PUSH_TIMEOUT);
    assert_eq!(s.compression, Encoding::Zstd);
    assert!(s.adaptive, "the example's compression is \"auto\"");
    assert_eq!(s.compression_level, DEFAULT_ZSTD_LEVEL);
    assert_eq!(s.compression_threads, 2);
    assert_eq!(s.lookahead, DEFAULT_LOOKAHEAD);
    assert_eq!(s.socket, Some(PathBuf::from("/run/walship/sender.sock")));
    assert!(s.pgdata.is_some());
    assert!(s.connect_timeout >= Duration::from_secs(1));

    let keys = known_keys(|p| SenderSettings::load(p).map(drop));
    assert_every_key_shown("sender.toml", &text, &keys);
}

#[test]
fn receiver_clusters_example_loads_as_shipped_and_uncommented() {
    let text = example("receiver-clusters.toml");
    for text in [text.clone(), uncommented(&text)] {
        let (_dir, path, s) =
            load_text("receiver-clusters.toml", &text, ReceiverSettings::load_all);
        let base = path.parent().unwrap();
        assert_eq!(s.cert, base.join("certs/server.pem"));
        assert_eq!(s.cluster_names(), ["sales", "billing"]);
        let views = s.views();
        assert_eq!(
            views[0].archive_dir,
            PathBuf::from("/var/lib/walship/sales")
        );
        assert_eq!(views[1].allowed_clients, ["billing-primary"]);
        assert!(views.iter().all(|v| v.conninfo.is_some()));
    }
    let all = uncommented(&text);
    let (_dir, _, s) = load_text("receiver-clusters.toml", &all, |p| {
        ReceiverSettings::load_cluster(p, Some("billing"))
    });
    assert_eq!(
        s.pgdata,
        Some(PathBuf::from("/var/lib/postgresql/15/billing"))
    );
}
