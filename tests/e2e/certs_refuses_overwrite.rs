//! `walship-receiver certs` never overwrites: with any of its files present it exits non-zero
//! and leaves every file as it was. Private keys are written 0600.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use walship_tests::certs::CERT_FILES;
use walship_tests::walship::MAX_EXIT_CODE;
use walship_tests::{CertSet, Scenario};

#[test]
fn certs_refuses_overwrite() {
    let sc = Scenario::new("certs_refuses_overwrite");
    let set = CertSet::create(&sc, "certs");
    for f in CERT_FILES.iter().filter(|f| f.ends_with(".key")) {
        let mode = fs::metadata(set.dir.join(f))
            .expect("stat key")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f} has mode {mode:o}");
    }
    let before = snapshot(&set.dir);

    let out = sc.run(&CertSet::command(&sc, &set.dir));
    let code = out.code();
    assert!(
        (1..=MAX_EXIT_CODE).contains(&code),
        "second `certs` run must refuse\n{out}"
    );
    assert!(
        !out.stderr.trim().is_empty(),
        "the refusal should say why\n{out}"
    );
    assert_eq!(
        snapshot(&set.dir),
        before,
        "files changed by the refused run"
    );

    // One file missing, the others present: still a refusal, still nothing touched.
    fs::remove_file(set.dir.join("client.pem")).expect("remove client.pem");
    let before = snapshot(&set.dir);
    let out = sc.run(&CertSet::command(&sc, &set.dir));
    let code = out.code();
    assert!(
        (1..=MAX_EXIT_CODE).contains(&code),
        "`certs` with 5 of 6 files present must refuse\n{out}"
    );
    assert_eq!(
        snapshot(&set.dir),
        before,
        "files changed by the refused run"
    );
}

/// Name -> (contents, mode) of every file in `dir`.
fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    fs::read_dir(dir)
        .expect("list certs dir")
        .filter_map(|e| e.ok())
        .map(|e| {
            let mode = e.metadata().expect("stat").permissions().mode();
            let bytes = fs::read(e.path()).expect("read");
            (e.file_name().to_string_lossy().into_owned(), (bytes, mode))
        })
        .collect()
}
