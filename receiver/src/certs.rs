//! `walship-receiver certs`: a CA, a server and a client certificate in one command.

use std::path::Path;

use walship_common::tls::{CertSet, TlsError, Validity, CERT_FILES};

pub fn certs(dir: &Path, server_name: &str) -> Result<(), TlsError> {
    CertSet::generate(server_name, Validity::ten_years())?.write(dir)?;
    for f in CERT_FILES {
        println!("{}", dir.join(f).display());
    }
    eprintln!(
        "walship-receiver: created a CA and certificates for server name {server_name:?} in {}. \
         Keep ca.key offline; copy ca.pem, client.pem and client.key to the primary (owned by the PostgreSQL user, mode 600 for the key).",
        dir.display()
    );
    Ok(())
}
