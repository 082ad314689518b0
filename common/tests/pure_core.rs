//! The sans-IO rule, enforced: every module of `walship-common` outside `sys/` decides on
//! values only. It may not open files, sockets or read a clock; callers pass bytes and time in.
//! This test reads the sources (the part before `#[cfg(test)]`) and fails naming the file and
//! the line that breaks the rule.

use std::path::{Path, PathBuf};

/// What an IO-free module may not mention.
const FORBIDDEN: &[&str] = &[
    "std::fs",
    "std::net",
    "std::os::",
    "std::process",
    "std::env",
    "tokio",
    "libc::",
    "rustix",
    "File::",
    "SystemTime::now",
    "Instant::now",
    "thread::spawn",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("list common/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "sys") {
                continue;
            }
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn pure_modules_do_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 5, "found only {files:?}");
    let mut offences = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        for (no, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN {
                if mentions(code, word) {
                    offences.push(format!(
                        "{}:{}: {word}: {}",
                        file.display(),
                        no + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "IO in a pure module of walship-common (move it under common/src/sys/, or pass the value in):\n{}",
        offences.join("\n")
    );
}

/// Whether `code` names `word` as a path of its own (`File::` but not `BackupFile::`).
fn mentions(code: &str, word: &str) -> bool {
    code.match_indices(word).any(|(at, _)| {
        !code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}
