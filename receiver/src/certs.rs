//! `walship-receiver certs`: a CA, a server and a client certificate in one command. Generation
//! lives here, not in walship-common: only the receiver's `certs` makes certificates, so the
//! sender links no certificate generator.

use std::path::Path;

use walship_common::sys::durable;
use walship_common::sys::tls::{check_server_name, TlsError};

/// `certs --dir DIR --server-name NAME`: refuses a name the sender could not use before
/// writing anything, then writes the six files (never over existing ones) and says where each
/// goes.
pub fn certs(dir: &Path, server_name: &str) -> Result<(), TlsError> {
    check_certificate_name(server_name).map_err(|reason| TlsError::BadServerName {
        name: server_name.to_string(),
        reason,
    })?;
    CertSet::generate(server_name, Validity::ten_years())?.write(dir)?;
    for f in CERT_FILES {
        println!("{}", dir.join(f).display());
    }
    eprintln!(
        "walship-receiver: created a CA, a server certificate for {server_name:?} and a client certificate in {}. \
         Copy ca.pem, server.pem and server.key to the receiver's host; ca.pem, client.pem and client.key to the primary, \
         with server_name = {server_name:?} in its sender.toml; keys owned by the user running walship there, mode 0600. \
         Keep ca.key off both hosts.",
        dir.display()
    );
    Ok(())
}

/// Why `name` cannot go into the server certificate: what the sender's `server_name` refuses,
/// and a trailing dot (the sender may write "host." for "host", but a certificate made for
/// "host." matches no name at all).
fn check_certificate_name(name: &str) -> Result<(), String> {
    check_server_name(name)?;
    if name.ends_with('.') {
        return Err("remove the trailing dot".into());
    }
    Ok(())
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
        std::fs::create_dir_all(dir).map_err(|source| TlsError::CreateDir {
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use walship_common::sys::tls::{client_config, load_key, server_config};

    use super::*;

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

    #[test]
    fn a_name_the_sender_cannot_use_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        for (i, name) in ["", "a b", "standby.", "*.example.com", "[::1]"]
            .iter()
            .enumerate()
        {
            let out = dir.path().join(i.to_string());
            let err = certs(&out, name).unwrap_err();
            assert!(
                matches!(err, TlsError::BadServerName { .. }),
                "{name:?}: {err}"
            );
            assert!(err.to_string().contains("nothing was written"), "{err}");
            assert!(!out.exists(), "{name:?}");
        }
        for name in [
            "localhost",
            "standby.example.com",
            "10.0.0.7",
            "::1",
            "db_1.internal",
        ] {
            assert_eq!(check_certificate_name(name), Ok(()), "{name:?}");
        }
    }
}
