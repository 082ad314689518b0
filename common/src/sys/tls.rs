//! Mutual TLS for QUIC (rustls, TLS 1.3 only, as QUIC requires): loading certificates and
//! keys (with the key-permission check) into client and server configurations.
//!
//! The receiver presents `cert`/`key` and accepts only clients whose certificate chains to
//! `client_ca`; the sender trusts only `ca` for the receiver and presents its own certificate.
//! There is no plaintext or "skip verification" mode.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;

use crate::check::Validity;
use crate::proto::ALPN;
use crate::sys::durable::DurableError;

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
    #[error("--server-name {name:?}: {reason}; give the DNS name or IP address the sender uses to reach this receiver, e.g. --server-name standby.example.com (nothing was written)")]
    BadServerName { name: String, reason: String },
    #[error("generate certificates: {0}")]
    Generate(String),
    #[error("cannot create certificate directory {}: {source}; choose a --dir this user can write", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} already exists; nothing was written. Choose another --dir, or, to replace the certificates in use on both hosts, move the old ones away first", path.display())]
    Exists { path: PathBuf },
    #[error("write certificates: {0}")]
    Write(#[from] DurableError),
}

/// Why `name` cannot be a TLS server name: the sender checks the receiver's certificate against
/// it with rustls, so what rustls takes (a DNS name or an IP address) is the rule, checked where
/// the name is given (`certs --server-name`, the sender's `server_name`) rather than at connect.
pub fn check_server_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.contains(char::is_whitespace) {
        return Err("it contains spaces".into());
    }
    match ServerName::try_from(name) {
        Ok(_) => Ok(()),
        Err(_) => Err("not a DNS name (letters, digits, '-' and '.') or an IP address".into()),
    }
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

/// The validity period of every certificate in a PEM file (for `check`).
pub fn validity(what: &'static str, path: &Path) -> Result<Vec<Validity>, TlsError> {
    let at = |secs: i64| {
        let since = std::time::Duration::from_secs(secs.unsigned_abs());
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + since
        } else {
            SystemTime::UNIX_EPOCH - since
        }
    };
    load_certs(what, path)?
        .iter()
        .map(|der| {
            let (_, cert) =
                x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Setup {
                    path: path.to_path_buf(),
                    message: format!("unreadable certificate: {e}"),
                })?;
            let period = cert.validity();
            Ok(Validity {
                subject: cert.subject().to_string(),
                not_before: at(period.not_before.timestamp()),
                not_after: at(period.not_after.timestamp()),
            })
        })
        .collect()
}
