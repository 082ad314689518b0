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

/// Who ended a failed handshake. QUIC tells: quinn reports an alert raised by our own TLS stack
/// as `ConnectionError::TransportError` and one received from the peer as
/// `ConnectionError::ConnectionClosed`. The error text cannot tell: rustls words both as
/// "invalid peer certificate", on whichever side judged the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// This side refused the peer (its certificate, or the handshake).
    Local,
    /// The peer refused this side and sent the alert.
    Peer,
}

/// A handshake that ended with a TLS alert: who sent it and which alert. rustls picks the alert
/// from its typed error (`CertificateError::UnknownIssuer` -> unknown_ca, `BadSignature` ->
/// decrypt_error, `Expired`/`NotValidYet` -> certificate_expired, `NotValidForName` ->
/// bad_certificate, `InvalidPurpose` -> unsupported_certificate, no client certificate ->
/// certificate_required), and only the alert crosses QUIC, so the alert is what both sides
/// classify by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeFailure {
    pub origin: Origin,
    pub alert: rustls::AlertDescription,
}

impl HandshakeFailure {
    /// From a QUIC transport error code: QUIC carries a TLS alert as code 0x100 + alert
    /// (RFC 9001, section 4.8, "crypto error"). Any other code is not a TLS failure.
    pub fn from_quic_code(origin: Origin, code: u64) -> Option<Self> {
        let alert = code.checked_sub(0x100).filter(|a| *a <= 0xff)?;
        Some(HandshakeFailure {
            origin,
            alert: rustls::AlertDescription::from(alert as u8),
        })
    }

    /// What to do, from `side`'s point of view: which side's certificate was refused and which
    /// setting to check. `server_name` is the sender's (ignored on the receiver).
    pub fn advice(&self, side: Side, server_name: &str) -> String {
        use rustls::AlertDescription as A;
        let alert = self.alert;
        let protocol = |peer: &str| {
            format!("{peer} does not speak walship protocol 1 (ALPN walship/1): is it walship of the same release?")
        };
        match (side, self.origin, alert) {
            (_, _, A::NoApplicationProtocol) => protocol(match side {
                Side::Sender => "the receiver",
                Side::Receiver => "the client",
            }),
            // The sender judged the receiver's certificate against `ca` and `server_name`.
            (Side::Sender, Origin::Local, A::UnknownCA | A::DecryptError) => format!(
                "the receiver's certificate is not signed by the CA in `ca` ({alert:?}): set `ca` to the ca.pem made with the receiver's certificates"
            ),
            (Side::Sender, Origin::Local, A::BadCertificate) => format!(
                "the receiver's certificate is not valid for `server_name` {server_name:?} ({alert:?}): set `server_name` to a name the receiver's certificate was made for"
            ),
            (Side::Sender, Origin::Local, A::CertificateExpired) => format!(
                "the receiver's certificate has expired or is not valid yet ({alert:?}): make new receiver certificates (walship-receiver certs) or check the clocks of both hosts"
            ),
            (Side::Sender, Origin::Local, A::UnsupportedCertificate) => format!(
                "the receiver's certificate is not made for a server ({alert:?}): give the receiver the server.pem made by walship-receiver certs"
            ),
            (Side::Sender, Origin::Local, _) => format!(
                "this sender refused the receiver's handshake ({alert:?}): check `ca` and `server_name` against the receiver's certificate"
            ),
            // The receiver judged our client certificate against its `client_ca`.
            (Side::Sender, Origin::Peer, A::UnknownCA | A::DecryptError) => format!(
                "the receiver refused our client certificate as not signed by its `client_ca` ({alert:?}): `cert`/`key` must be signed by the CA in the receiver's `client_ca`"
            ),
            (Side::Sender, Origin::Peer, A::CertificateExpired) => format!(
                "the receiver refused our client certificate as expired or not valid yet ({alert:?}): renew `cert`/`key` or check the clocks of both hosts"
            ),
            (Side::Sender, Origin::Peer, A::CertificateRequired) => format!(
                "the receiver requires a client certificate and got none ({alert:?}): set `cert`/`key` in the sender config"
            ),
            (Side::Sender, Origin::Peer, _) => format!(
                "the receiver refused our client certificate ({alert:?}): check `cert`/`key` against the receiver's `client_ca`"
            ),
            // The receiver judged the client's certificate against `client_ca`.
            (Side::Receiver, Origin::Local, A::UnknownCA | A::DecryptError) => format!(
                "the client's certificate is not signed by this receiver's `client_ca` ({alert:?}): give the sender a `cert`/`key` signed by that CA, or set `client_ca` to the CA that signed it"
            ),
            (Side::Receiver, Origin::Local, A::CertificateExpired) => format!(
                "the client's certificate has expired or is not valid yet ({alert:?}): renew the sender's `cert`/`key` or check the clocks of both hosts"
            ),
            (Side::Receiver, Origin::Local, A::CertificateRequired) => format!(
                "the client presented no certificate ({alert:?}): set `cert`/`key` in the sender config"
            ),
            (Side::Receiver, Origin::Local, A::UnsupportedCertificate) => format!(
                "the client's certificate is not made for a client ({alert:?}): give the sender the client.pem made by walship-receiver certs"
            ),
            (Side::Receiver, Origin::Local, _) => format!(
                "this receiver refused the client's handshake ({alert:?}): check the sender's `cert`/`key` against `client_ca`"
            ),
            // The client judged this receiver's certificate against its `ca` and `server_name`.
            (Side::Receiver, Origin::Peer, A::BadCertificate) => format!(
                "the client refused this receiver's certificate as not valid for the name it asked for ({alert:?}): check the sender's `server_name` against the names in this receiver's `cert`"
            ),
            (Side::Receiver, Origin::Peer, A::UnknownCA | A::DecryptError) => format!(
                "the client refused this receiver's certificate as not signed by the CA it trusts ({alert:?}): the sender's `ca` must be the CA that signed this receiver's `cert`"
            ),
            (Side::Receiver, Origin::Peer, A::CertificateExpired) => format!(
                "the client refused this receiver's certificate as expired or not valid yet ({alert:?}): renew `cert`/`key` here (walship-receiver certs) or check the clocks of both hosts"
            ),
            (Side::Receiver, Origin::Peer, _) => format!(
                "the client refused this receiver's certificate or aborted the handshake ({alert:?}): check the sender's `ca` and `server_name` against this receiver's `cert`"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_crypto_codes_are_tls_failures() {
        use Origin::*;
        assert_eq!(HandshakeFailure::from_quic_code(Local, 0x0a), None);
        assert_eq!(HandshakeFailure::from_quic_code(Peer, 0x200), None);
        let f = HandshakeFailure::from_quic_code(Peer, 0x130).expect("crypto error");
        assert_eq!(f.origin, Peer);
        assert_eq!(f.alert, rustls::AlertDescription::UnknownCA);
    }

    /// Each case names the side at fault and the setting to check, and never the other side.
    #[test]
    fn handshake_failures_get_the_right_advice() {
        use Origin::*;
        use Side::*;
        let advice = |side, origin, code: u64| {
            HandshakeFailure::from_quic_code(origin, 0x100 + code)
                .expect("crypto error")
                .advice(side, "other.example")
        };
        let check = |text: String, must: &[&str], must_not: &[&str]| {
            for m in must {
                assert!(text.contains(m), "{text:?} should say {m:?}");
            }
            for m in must_not {
                assert!(!text.contains(m), "{text:?} should not say {m:?}");
            }
        };
        // (a) The sender's client certificate is from another CA (unknown_ca; decrypt_error
        // when both CAs have the same name, as every `certs` CA does).
        for code in [48, 51] {
            check(
                advice(Sender, Peer, code),
                &[
                    "receiver refused our client certificate",
                    "`client_ca`",
                    "`cert`",
                ],
                &["receiver's certificate", "`ca`"],
            );
            check(
                advice(Receiver, Local, code),
                &["client's certificate is not signed by", "`client_ca`"],
                &["receiver's certificate"],
            );
        }
        // (b) Wrong server_name: the sender sends bad_certificate.
        check(
            advice(Sender, Local, 42),
            &["receiver's certificate", "`server_name`", "other.example"],
            &["client"],
        );
        check(
            advice(Receiver, Peer, 42),
            &[
                "client refused this receiver's certificate",
                "`server_name`",
            ],
            &["client's certificate", "client_ca"],
        );
        // (c) The receiver's certificate is from another CA than the sender's `ca`.
        for code in [48, 51] {
            check(
                advice(Sender, Local, code),
                &["receiver's certificate is not signed by the CA in `ca`"],
                &["client"],
            );
            check(
                advice(Receiver, Peer, code),
                &[
                    "client refused this receiver's certificate",
                    "sender's `ca`",
                ],
                &["client's certificate", "client_ca"],
            );
        }
        // (d) Expired (or not yet valid) certificates, both ways.
        check(
            advice(Sender, Peer, 45),
            &[
                "receiver refused our client certificate as expired",
                "`cert`",
            ],
            &["receiver's certificate"],
        );
        check(
            advice(Receiver, Local, 45),
            &["client's certificate has expired", "`cert`"],
            &["receiver's certificate"],
        );
        check(
            advice(Sender, Local, 45),
            &["receiver's certificate has expired"],
            &["client"],
        );
        check(
            advice(Receiver, Peer, 45),
            &["client refused this receiver's certificate as expired"],
            &["client's certificate"],
        );
        // No client certificate; another protocol.
        check(
            advice(Receiver, Local, 116),
            &["client presented no certificate", "`cert`"],
            &[],
        );
        check(
            advice(Sender, Peer, 116),
            &["got none", "`cert`"],
            &["receiver's certificate"],
        );
        check(advice(Sender, Peer, 120), &["ALPN"], &["certificate"]);
        check(advice(Receiver, Local, 120), &["ALPN"], &["certificate"]);
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
