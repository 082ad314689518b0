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

/// `certs --dir DIR --client-name NAME`: one more client certificate, common name NAME, from
/// the CA in DIR (ca.pem, ca.key), written as `client-NAME.pem` and `client-NAME.key` (never
/// over existing ones). NAME is what a `[[clusters]]` table's allowed_clients lists.
pub fn client_certificate(dir: &Path, name: &str) -> Result<(), TlsError> {
    walship_common::clusters::check_name(name).map_err(|reason| {
        TlsError::Generate(format!(
            "--client-name {name:?}: {reason}; nothing was written"
        ))
    })?;
    let (pem, key) = client_file_names(name);
    for file in [&pem, &key] {
        let path = dir.join(file);
        if path.symlink_metadata().is_ok() {
            return Err(TlsError::Exists { path });
        }
    }
    let read = |what: &'static str, file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).map_err(|source| TlsError::Read { what, path, source })
    };
    let ca_pem = read("CA certificate", "ca.pem")?;
    let ca_key = read("CA key", "ca.key")?;
    let client = issue_client(&ca_pem, &ca_key, name, Validity::ten_years())?;
    for (file, body, mode) in [(&pem, &client.0, 0o644), (&key, &client.1, 0o600)] {
        match durable::publish_new(dir, file, body.as_bytes(), mode)? {
            durable::Published::Stored => {}
            durable::Published::AlreadyIdentical => {
                return Err(TlsError::Exists {
                    path: dir.join(file),
                })
            }
        }
        println!("{}", dir.join(file).display());
    }
    eprintln!(
        "walship-receiver: created a client certificate for {name:?} from the CA in {dir}. \
         Copy {pem} and {key} (and ca.pem) to that cluster's primary, as cert and key in its sender.toml (key owned by the user running walship there, mode 0600), \
         and list {name:?} in allowed_clients of its [[clusters]] table in receiver.toml.",
        dir = dir.display()
    );
    Ok(())
}

/// The files `certs --client-name NAME` writes: `client-NAME.pem`, `client-NAME.key`.
pub fn client_file_names(name: &str) -> (String, String) {
    (format!("client-{name}.pem"), format!("client-{name}.key"))
}

/// A client certificate (PEM) and its key (PEM) with common name `name`, signed by the CA
/// `ca_pem`/`ca_key_pem`. Checks that the key is the CA's and that the issued certificate names
/// the CA's subject exactly (so that it chains to ca.pem).
pub fn issue_client(
    ca_pem: &str,
    ca_key_pem: &str,
    name: &str,
    validity: Validity,
) -> Result<(String, String), TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let bad_ca = |why: String| TlsError::Generate(format!("ca.pem: {why}; nothing was written"));
    let ca_der = rustls_pemfile_der(ca_pem).ok_or_else(|| bad_ca("no PEM certificate".into()))?;
    let (_, ca) =
        x509_parser::parse_x509_certificate(&ca_der).map_err(|e| bad_ca(e.to_string()))?;
    let ca_key = KeyPair::from_pem(ca_key_pem)
        .map_err(|e| TlsError::Generate(format!("ca.key: {e}; nothing was written")))?;
    if ca.public_key().subject_public_key.data.as_ref() != ca_key.public_key_raw() {
        return Err(TlsError::Generate(
            "ca.key is not the key of ca.pem; nothing was written. Use the ca.pem and ca.key that walship-receiver certs wrote together".into(),
        ));
    }
    let mut issuer = CertificateParams::default();
    issuer.distinguished_name = distinguished_name(ca.subject()).map_err(bad_ca)?;
    issuer.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    issuer.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = issuer.self_signed(&ca_key).map_err(gen)?;

    let key = KeyPair::generate().map_err(gen)?;
    let mut params = CertificateParams::default();
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer, &ca_key).map_err(gen)?;
    let (_, issued) =
        x509_parser::parse_x509_certificate(cert.der()).map_err(|e| bad_ca(e.to_string()))?;
    if issued.issuer().as_raw() != ca.subject().as_raw() {
        return Err(bad_ca(format!(
            "its subject {} cannot be reproduced exactly, so a certificate issued here would not chain to it; use a CA made by walship-receiver certs",
            ca.subject()
        )));
    }
    Ok((cert.pem(), key.serialize_pem()))
}

/// The first certificate of a PEM text, as DER.
fn rustls_pemfile_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

/// rcgen's form of a certificate subject, attribute by attribute, with each value's string type.
fn distinguished_name(
    subject: &x509_parser::x509::X509Name,
) -> Result<rcgen::DistinguishedName, String> {
    use rcgen::{DnType, DnValue};
    use x509_parser::der_parser::asn1_rs::Tag;
    let mut dn = rcgen::DistinguishedName::new();
    for attr in subject.iter_attributes() {
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or("an attribute type too long to copy")?
            .collect();
        let ty = match oid.as_slice() {
            [2, 5, 4, 3] => DnType::CommonName,
            [2, 5, 4, 6] => DnType::CountryName,
            [2, 5, 4, 7] => DnType::LocalityName,
            [2, 5, 4, 8] => DnType::StateOrProvinceName,
            [2, 5, 4, 10] => DnType::OrganizationName,
            [2, 5, 4, 11] => DnType::OrganizationalUnitName,
            _ => DnType::CustomDnType(oid),
        };
        let value = attr.attr_value();
        let text = || {
            std::str::from_utf8(value.data)
                .map(str::to_string)
                .map_err(|_| "an attribute that is not text".to_string())
        };
        let value = match value.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?),
            Tag::PrintableString => DnValue::PrintableString(
                text()?
                    .try_into()
                    .map_err(|e: rcgen::Error| e.to_string())?,
            ),
            Tag::Ia5String => DnValue::Ia5String(
                text()?
                    .try_into()
                    .map_err(|e: rcgen::Error| e.to_string())?,
            ),
            other => return Err(format!("an attribute of string type {other}")),
        };
        dn.push(ty, value);
    }
    Ok(dn)
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
    fn client_names_issue_certificates_from_the_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        CertSet::generate("localhost", Validity::ten_years())
            .unwrap()
            .write(dir.path())
            .unwrap();
        client_certificate(dir.path(), "sales-primary").unwrap();
        let pem = std::fs::read_to_string(p("client-sales-primary.pem")).unwrap();
        let der = rustls_pemfile_der(&pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=sales-primary");
        assert_eq!(cert.issuer().to_string(), "CN=walship CA");
        let mode = std::fs::metadata(p("client-sales-primary.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        client_config(
            &p("ca.pem"),
            &p("client-sales-primary.pem"),
            &p("client-sales-primary.key"),
        )
        .unwrap();

        // Never over an existing file; a bad name writes nothing.
        let err = client_certificate(dir.path(), "sales-primary").unwrap_err();
        assert!(matches!(err, TlsError::Exists { .. }), "{err}");
        assert_eq!(
            std::fs::read_to_string(p("client-sales-primary.pem")).unwrap(),
            pem
        );
        for bad in ["", "../x", "a b", ".x"] {
            let err = client_certificate(dir.path(), bad).unwrap_err().to_string();
            assert!(err.contains("--client-name"), "{bad:?}: {err}");
        }
        // A key that is not the CA's.
        let other = CertSet::generate("localhost", Validity::ten_years()).unwrap();
        let ca = std::fs::read_to_string(p("ca.pem")).unwrap();
        let err = issue_client(&ca, &other.ca_key, "x", Validity::ten_years()).unwrap_err();
        assert!(err.to_string().contains("not the key of ca.pem"), "{err}");
        // No CA in the directory.
        let empty = tempfile::tempdir().unwrap();
        let err = client_certificate(empty.path(), "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ca.pem"), "{err}");
        assert!(!empty.path().join("client-x.pem").exists());
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
