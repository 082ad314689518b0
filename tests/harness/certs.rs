//! Certificates made by `walship-receiver certs`: a CA, a server certificate for `localhost`
//! and a client certificate, all signed by that CA.

use std::path::{Path, PathBuf};

use crate::process::Cmd;
use crate::scenario::Scenario;

/// What `certs` writes, in this order: the issue's contract, spelled out here rather than taken
/// from `walship_common::sys::tls::CERT_FILES`, so that a rename there fails the tests.
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

    /// A client certificate signed by this set's CA, valid from `not_before` to `not_after`
    /// (expired, not yet valid...), written to `<scenario>/<name>.pem` and `.key` (0600); the
    /// paths of the certificate and the key.
    pub fn issue_client(
        &self,
        sc: &Scenario,
        name: &str,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> (PathBuf, PathBuf) {
        self.issue_client_as(sc, name, "walship-sender", None, not_before, not_after)
    }

    /// [`issue_client`](Self::issue_client) with the subject `CN=<cn>[, O=<org>]`.
    pub fn issue_client_as(
        &self,
        sc: &Scenario,
        name: &str,
        cn: &str,
        org: Option<&str>,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> (PathBuf, PathBuf) {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let ca_pem = std::fs::read_to_string(self.dir.join("ca.key")).expect("read ca.key");
        // rcgen signs with the issuer's key and names the issuer by its distinguished name: the
        // CA rebuilt from its key and name is, for signing, the CA that `certs` made.
        let ca_key = KeyPair::from_pem(&ca_pem).expect("parse ca.key");
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, "walship CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("rebuild CA certificate");

        let key = KeyPair::generate().expect("generate client key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(org) = org {
            params
                .distinguished_name
                .push(DnType::OrganizationName, org);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .signed_by(&key, &ca_cert, &ca_key)
            .expect("sign client certificate");
        let pem = sc.path(&format!("{name}.pem"));
        let key_path = sc.path(&format!("{name}.key"));
        sc.write_at(&pem, cert.pem(), 0o644);
        sc.write_at(&key_path, key.serialize_pem(), 0o600);
        (pem, key_path)
    }
}
