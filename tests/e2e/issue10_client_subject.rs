//! Issue 10, item 14: the receiver logs who wrote. Every connection, and every file stored or
//! refused on it, names the subject of the client certificate it came with, so an archive entry
//! can be traced to a certificate.

use std::fs;
use std::path::PathBuf;

use walship_tests::walship::{assert_pushed, assert_refused, push, sender_config};
use walship_tests::{donors, Scenario};

use crate::hostile::Rig;

/// A client certificate with subject `CN=<cn>, O=<org>` signed by the set's CA (see
/// `hostile::issue_client_cert`); returns the paths of its certificate and key.
fn client_cert(sc: &Scenario, ca_key: &str, name: &str, cn: &str, org: &str) -> (PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::from_pem(ca_key).expect("parse ca.key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "walship CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).expect("rebuild CA certificate");
    let key = KeyPair::generate().expect("generate client key");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, org);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("sign client certificate");
    let pem = sc.path(&format!("{name}.pem"));
    let key_path = sc.path(&format!("{name}.key"));
    sc.write_at(&pem, cert.pem(), 0o644);
    sc.write_at(&key_path, key.serialize_pem(), 0o600);
    (pem, key_path)
}

#[test]
fn item14_log_names_the_client_certificate() {
    let d = donors();
    let mut rig = Rig::start("i10_who_wrote", "10s");
    let sc = rig.sc.clone();
    let ca_key = fs::read_to_string(rig.certs.dir.join("ca.key")).expect("read ca.key");
    let (cert, key) = client_cert(&sc, &ca_key, "db1", "db1.example.com", "Acme");
    let sender = sender_config(
        &sc,
        "sender-db1",
        &rig.setup.addr,
        &rig.certs.ca(),
        &cert,
        &key,
        Some("5s"),
    );

    // Stored: the line saying so names the certificate.
    let seg = &d.home[0];
    let path = seg.write_to(&sc, "segment");
    assert_pushed(&sc, &sender, &path, &seg.name);
    // Refused: a foreign cluster's segment after the archive was pinned by the first.
    let foreign = &d.foreign[1];
    let fpath = foreign.write_to(&sc, "foreign");
    assert_refused(&push(&sc, &sender, &fpath, &foreign.name), &[]);
    // The usual certificate, for the default subject.
    rig.assert_serves(&d.home[1]);

    let log = rig.rx().log_text();
    let subject = "client=\"CN=db1.example.com, O=Acme\"";
    let line = |needle: &str, name: &str| {
        log.lines()
            .find(|l| l.contains(needle) && l.contains(name))
            .unwrap_or_else(|| panic!("no {needle:?} line for {name} in the receiver log:\n{log}"))
            .to_string()
    };
    let stored = line("stored", &seg.name);
    assert!(stored.contains(subject), "stored line: {stored}");
    let refused = line("refused", &foreign.name);
    assert!(refused.contains(subject), "refused line: {refused}");
    let default = line("stored", &d.home[1].name);
    assert!(
        default.contains("client=\"CN=walship-sender\""),
        "stored line: {default}"
    );
    let accepted = line("connection accepted", "");
    assert!(
        accepted.contains("client=\""),
        "connection line: {accepted}"
    );
    rig.stop_and_check(&["refused", "another cluster", "belongs to"]);
}
