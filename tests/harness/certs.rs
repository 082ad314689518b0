//! Certificates made by `walship-receiver certs`: a CA, a server certificate for `localhost`
//! and a client certificate, all signed by that CA.

use std::path::{Path, PathBuf};

use crate::process::Cmd;
use crate::scenario::Scenario;

/// What `certs` writes, in this order: the contract, spelled out here rather than taken
/// from `walship_common::tls::CERT_FILES`, so that a rename there fails the tests.
pub const CERT_FILES: [&str; 6] = [
    "ca.pem",
    "ca.key",
    "server.pem",
    "server.key",
    "client.pem",
    "client.key",
];

/// The server name the tests connect to (the server certificate is made for it).
pub const SERVER_NAME: &str = "localhost";

/// A directory of certificates made by one `certs` run.
#[derive(Debug, Clone)]
pub struct CertSet {
    pub dir: PathBuf,
}

impl CertSet {
    /// Run `walship-receiver certs --dir <scenario>/<rel> --server-name localhost` (as postgres)
    /// and check that it wrote the six files.
    pub fn create(sc: &Scenario, rel: &str) -> CertSet {
        let dir = sc.path(rel);
        sc.run(&Self::command(sc, &dir)).assert_success();
        for f in CERT_FILES {
            assert!(
                dir.join(f).is_file(),
                "`certs` exited 0 but did not write {}\n{}",
                dir.join(f).display(),
                crate::scenario::listing(&dir)
            );
        }
        CertSet { dir }
    }

    /// The `certs` command line, for tests of `certs` itself.
    pub fn command(sc: &Scenario, dir: &Path) -> Cmd {
        sc.cmd(sc.bin("walship-receiver"))
            .arg("certs")
            .arg("--dir")
            .arg(dir)
            .args(["--server-name", SERVER_NAME])
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }
}
