//! A real S3-compatible server on loopback for the object-store tests: `s3s-fs` (the s3s
//! project's file-system S3 server, from crates.io; `.ci/run` installs it into
//! /opt/walship-ci). It keeps each bucket as a directory under its root and each object as a
//! file at its key, so a test can also look at what was stored without going through S3.
//!
//! Found through `WALSHIP_S3_SERVER`, /opt/walship-ci/bin/s3s-fs, or `s3s-fs` on PATH.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::net::free_tcp_port;
use crate::process::{terminate, wait_deadline, wait_for};
use crate::scenario::Scenario;

/// The credentials the server accepts (SigV4 is checked).
pub const ACCESS_KEY: &str = "walship-test-access";
pub const SECRET_KEY: &str = "walship-test-secret-0123456789";

/// The server binary.
pub fn server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WALSHIP_S3_SERVER") {
        return PathBuf::from(p);
    }
    let ci = PathBuf::from("/opt/walship-ci/bin/s3s-fs");
    if ci.exists() {
        return ci;
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join("s3s-fs");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "no S3 server for the object-store tests: install it with `cargo install --locked \
         --root /opt/walship-ci --version 0.14.1 --features binary s3s-fs` (as .ci/run does), \
         or set WALSHIP_S3_SERVER"
    )
}

/// `s3s-fs` serving `<scenario>/<name>` on 127.0.0.1 with one bucket.
pub struct S3Server {
    root: PathBuf,
    bucket: String,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl S3Server {
    /// Start a server with `bucket` created (an empty directory is an empty bucket to s3s-fs).
    pub fn start(sc: &Scenario, name: &str, bucket: &str) -> S3Server {
        let root = sc.mkdir(name);
        std::fs::create_dir_all(root.join(bucket)).expect("create the bucket");
        let mut s = S3Server {
            log: sc.path(&format!("{name}.log")),
            root,
            bucket: bucket.to_string(),
            port: free_tcp_port(),
            child: None,
        };
        s.resume();
        s
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Where the server keeps the object `key` of the bucket (a plain file).
    pub fn object_file(&self, key: &str) -> PathBuf {
        self.root.join(&self.bucket).join(key)
    }

    /// The keys under `prefix/` (one level), sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let dir = self.root.join(&self.bucket).join(prefix);
        let mut out: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Stop the server (SIGTERM, then wait): the endpoint refuses connections until
    /// [`resume`](Self::resume).
    pub fn pause(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(child.id());
            if wait_deadline(&mut child, Duration::from_secs(15)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Start (again) on the same port and root; wait until it accepts connections.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "s3s-fs already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the S3 server log");
        let child = Command::new(server_bin())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.root)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("dup log")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", server_bin().display()));
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        let up = wait_for(Duration::from_secs(20), || {
            TcpStream::connect(&addr).ok().map(|_| ())
        });
        assert!(
            up.is_some(),
            "s3s-fs did not listen on {addr} within 20 s; its log:\n{}",
            crate::process::tail(&self.log, 30)
        );
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.pause();
    }
}
