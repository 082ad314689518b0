//! Mutual TLS for QUIC (rustls, TLS 1.3 only, as QUIC requires) and certificate generation.
//!
//! The receiver presents `cert`/`key` and accepts only clients whose certificate chains to
//! `client_ca`; the sender trusts only `ca` for the receiver and presents its own certificate.
//! There is no plaintext or "skip verification" mode.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::durable::{self, DurableError};
use crate::proto::ALPN;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {} holds no PEM {expected}", path.display())]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("private key {} is readable by group or others (mode {mode:o}); run: chmod 600 {}", path.display(), path.display())]
    KeyTooOpen { path: PathBuf, mode: u32 },
    #[error("TLS setup with {}: {message}", path.display())]
    Setup { path: PathBuf, message: String },
    #[error("generate certificates: {0}")]
    Generate(String),
    #[error("{} already exists; refusing to overwrite certificates (remove the directory's walship certificates first if you really mean to replace them)", path.display())]
    Exists { path: PathBuf },
    #[error("write certificates: {0}")]
    Write(#[from] DurableError),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// All certificates in a PEM file.
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
            expected: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// The private key in a PEM file, refused when group or others may read it.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let read_err = |source| TlsError::Read {
        what: "private key",
        path: path.to_path_buf(),
        source,
    };
    let mode = std::fs::metadata(path)
        .map_err(read_err)?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyTooOpen {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    let pem = std::fs::read(path).map_err(read_err)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(read_err)?
        .ok_or_else(|| TlsError::Empty {
            what: "private key",
            path: path.to_path_buf(),
            expected: "PRIVATE KEY",
        })
}

fn roots(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(what, path)? {
        roots.add(cert).map_err(|e| TlsError::Setup {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// Receiver side: present `cert`/`key`, require a client certificate chaining to `client_ca`.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<rustls::ServerConfig, TlsError> {
    let setup = |path: &Path| {
        let path = path.to_path_buf();
        move |e: rustls::Error| TlsError::Setup {
            path,
            message: e.to_string(),
        }
    };
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots("client CA", client_ca)?),
        provider(),
    )
    .build()
    .map_err(|e| TlsError::Setup {
        path: client_ca.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup(cert))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs("certificate", cert)?, load_key(key)?)
        .map_err(setup(key))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Sender side: trust only `ca` for the receiver, present `cert`/`key`.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Setup {
            path: ca.to_path_buf(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots("CA", ca)?)
        .with_client_auth_cert(load_certs("certificate", cert)?, load_key(key)?)
        .map_err(|e| TlsError::Setup {
            path: key.to_path_buf(),
            message: e.to_string(),
        })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// A CA with one server and one client certificate, as PEM text.
#[derive(Debug, Clone)]
pub struct CertSet {
    pub ca_pem: String,
    pub ca_key: String,
    pub server_pem: String,
    pub server_key: String,
    pub client_pem: String,
    pub client_key: String,
}

/// Validity window of generated certificates.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
}

impl Validity {
    /// From a day ago (clock skew between hosts) for ten years.
    pub fn ten_years() -> Self {
        let now = time::OffsetDateTime::now_utc();
        Validity {
            not_before: now - time::Duration::days(1),
            not_after: now + time::Duration::days(3650),
        }
    }
}

/// File names written by [`CertSet::write`], in order.
pub const CERT_FILES: [&str; 6] = [
    "ca.pem",
    "ca.key",
    "server.pem",
    "server.key",
    "client.pem",
    "client.key",
];

impl CertSet {
    /// A new CA, a server certificate for `server_name` (a DNS name or an IP address) and a
    /// client certificate, all valid for `validity`.
    pub fn generate(server_name: &str, validity: Validity) -> Result<Self, TlsError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let with_validity = |mut p: CertificateParams, cn: &str| {
            p.not_before = validity.not_before;
            p.not_after = validity.not_after;
            p.distinguished_name.push(DnType::CommonName, cn);
            p
        };

        let ca_key = KeyPair::generate().map_err(gen)?;
        let mut ca = with_validity(CertificateParams::default(), "walship CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).map_err(gen)?;

        let server_key = KeyPair::generate().map_err(gen)?;
        let mut server = with_validity(
            CertificateParams::new(vec![server_name.to_string()]).map_err(gen)?,
            server_name,
        );
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server
            .signed_by(&server_key, &ca_cert, &ca_key)
            .map_err(gen)?;

        let client_key = KeyPair::generate().map_err(gen)?;
        let mut client = with_validity(CertificateParams::default(), "walship-sender");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client
            .signed_by(&client_key, &ca_cert, &ca_key)
            .map_err(gen)?;

        Ok(CertSet {
            ca_pem: ca_cert.pem(),
            ca_key: ca_key.serialize_pem(),
            server_pem: server_cert.pem(),
            server_key: server_key.serialize_pem(),
            client_pem: client_cert.pem(),
            client_key: client_key.serialize_pem(),
        })
    }

    /// Write the six files into `dir` (created if missing), keys 0600, certificates 0644.
    /// Refuses, writing nothing, if any of them exists.
    pub fn write(&self, dir: &Path) -> Result<(), TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Read {
            what: "certificate directory",
            path: dir.to_path_buf(),
            source,
        })?;
        for name in CERT_FILES {
            let path = dir.join(name);
            if path.symlink_metadata().is_ok() {
                return Err(TlsError::Exists { path });
            }
        }
        let bodies = [
            &self.ca_pem,
            &self.ca_key,
            &self.server_pem,
            &self.server_key,
            &self.client_pem,
            &self.client_key,
        ];
        for (name, body) in CERT_FILES.iter().zip(bodies) {
            let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
            // Durable and no-replace: a racing `certs` run cannot clobber a key in use.
            match durable::publish_new(dir, name, body.as_bytes(), mode)? {
                durable::Published::Stored => {}
                durable::Published::AlreadyIdentical => {
                    return Err(TlsError::Exists {
                        path: dir.join(name),
                    })
                }
            }
        }
        Ok(())
    }
}

/// Which end of the handshake is explaining a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Sender,
    Receiver,
}

/// Turn a failed handshake's text (quinn/rustls) into what to do. The errors reach us only as
/// text through quinn, in two shapes: our own verification failing ("invalid peer certificate:
/// certificate expired: ...", "...: UnknownIssuer") or the peer's TLS alert ("error 48").
pub fn explain_handshake_failure(text: &str, side: Side, server_name: &str) -> String {
    let t = text.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| t.contains(n));
    let ours = t.contains("invalid peer certificate") || t.contains("peer sent no certificates");
    let expired = has(&["certificate expired", ": expired", "error 45"]);
    let not_yet = has(&["not valid yet", "notvalidyet"]);
    match side {
        Side::Sender if ours && has(&["not valid for name", "notvalidforname"]) => format!(
            "the receiver's certificate does not cover server_name {server_name:?}: set server_name in the sender config to a name the receiver's certificate was made for"
        ),
        Side::Sender if ours && expired => "the receiver's certificate has expired: make new certificates (walship-receiver certs) or check the clocks".into(),
        Side::Sender if ours && not_yet => "the receiver's certificate is not valid yet: check the clocks of both hosts".into(),
        Side::Sender if ours => "the receiver's certificate is not signed by the CA in `ca`: use the ca.pem made with the receiver's certificates".into(),
        Side::Sender if expired => "the receiver refused our client certificate as expired: renew `cert`/`key` or check the clocks".into(),
        Side::Sender if has(&["error 120", "no application protocol"]) => "the peer does not speak walship protocol 1 (ALPN walship/1): is it a walship-receiver of the same release?".into(),
        Side::Sender if has(&["error 42", "error 46", "error 48", "error 116", "certificate"]) => "the receiver refused our client certificate: `cert`/`key` must be signed by the receiver's client_ca".into(),
        Side::Sender => "PostgreSQL will retry".into(),
        Side::Receiver if t.contains("peer sent no certificates") => "the sender presented no client certificate: set cert/key in its config".into(),
        Side::Receiver if ours && expired => "the sender's client certificate has expired: renew it or check the clocks".into(),
        Side::Receiver if ours && not_yet => "the sender's client certificate is not valid yet: check the clocks of both hosts".into(),
        Side::Receiver if ours => "the sender's client certificate is not signed by this receiver's client_ca".into(),
        Side::Receiver if has(&["error 42", "error 45", "error 46", "error 48"]) => "the sender refused this receiver's certificate: check the sender's `ca` and `server_name` against this receiver's certificate".into(),
        Side::Receiver if has(&["error 120", "no application protocol"]) => "the client does not speak walship protocol 1 (ALPN walship/1)".into(),
        Side::Receiver => "the client gave up during the handshake".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_failures_get_the_right_advice() {
        use Side::*;
        let name = "the cryptographic handshake failed: error 42: invalid peer certificate: certificate not valid for name \"other.example\"; certificate is only valid for DnsName(\"localhost\")";
        assert!(explain_handshake_failure(name, Sender, "other.example").contains("server_name"));
        let expired = "the cryptographic handshake failed: error 45: invalid peer certificate: certificate expired: verification time 1 (UNIX), but certificate is not valid after 0 (1 seconds ago)";
        assert!(explain_handshake_failure(expired, Sender, "x").contains("expired"));
        assert!(explain_handshake_failure(expired, Receiver, "x")
            .contains("sender's client certificate has expired"));
        let issuer =
            "the cryptographic handshake failed: error 48: invalid peer certificate: UnknownIssuer";
        assert!(explain_handshake_failure(issuer, Sender, "x").contains("`ca`"));
        assert!(explain_handshake_failure(issuer, Receiver, "x").contains("client_ca"));
        let alert = "closed by peer: the cryptographic handshake failed: error 48";
        assert!(explain_handshake_failure(alert, Sender, "x").contains("client_ca"));
        assert!(explain_handshake_failure(alert, Receiver, "x")
            .contains("sender refused this receiver's certificate"));
        let none = "the cryptographic handshake failed: error 116: peer sent no certificates";
        assert!(explain_handshake_failure(none, Receiver, "x").contains("no client certificate"));
        let alpn = "closed by peer: the cryptographic handshake failed: error 120";
        assert!(explain_handshake_failure(alpn, Sender, "x").contains("ALPN"));
    }

    #[test]
    fn generated_set_loads_into_both_configs() {
        let dir = tempfile::tempdir().unwrap();
        CertSet::generate("localhost", Validity::ten_years())
            .unwrap()
            .write(dir.path())
            .unwrap();
        let p = |n: &str| dir.path().join(n);
        let mode = std::fs::metadata(p("server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        server_config(&p("server.pem"), &p("server.key"), &p("ca.pem")).unwrap();
        client_config(&p("ca.pem"), &p("client.pem"), &p("client.key")).unwrap();
    }

    #[test]
    fn refuses_to_overwrite_and_open_keys() {
        let dir = tempfile::tempdir().unwrap();
        let set = CertSet::generate("127.0.0.1", Validity::ten_years()).unwrap();
        set.write(dir.path()).unwrap();
        let before = std::fs::read(dir.path().join("ca.key")).unwrap();
        let err = CertSet::generate("x", Validity::ten_years())
            .unwrap()
            .write(dir.path())
            .unwrap_err();
        assert!(matches!(err, TlsError::Exists { .. }), "{err}");
        assert_eq!(std::fs::read(dir.path().join("ca.key")).unwrap(), before);

        let key = dir.path().join("client.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_key(&key).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
