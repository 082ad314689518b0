//! Mutual TLS both ways: a client certificate from another CA is refused by the receiver, and a
//! sender that does not trust the receiver's CA refuses to send. Nothing is stored either way.

use walship_tests::donors;
use walship_tests::walship::{archived_files, assert_pushed, assert_refused, push, sender_config};
use walship_tests::CertSet;

use crate::Served;

#[test]
fn bad_client_cert() {
    let d = donors();
    let s = Served::start("bad_client_cert");
    let sc = s.sc.clone();
    let other = CertSet::create(&sc, "other-certs");
    let seg = &d.home[0];
    let path = seg.write_to(&sc, "segment");

    // Trusts the receiver, but presents a client certificate the receiver's CA did not sign.
    let foreign_client = sender_config(
        &sc,
        "sender-foreign-client",
        &s.setup.addr,
        &s.certs.ca(),
        &other.client_cert(),
        &other.client_key(),
        Some("5s"),
    );
    let out = push(&sc, &foreign_client, &path, &seg.name);
    assert_refused(&out, &["certificate"]);
    assert_eq!(archived_files(&s.setup.archive_dir), Vec::<String>::new());

    // Presents a good client certificate, but trusts another CA: the server is not trusted.
    let wrong_ca = sender_config(
        &sc,
        "sender-wrong-ca",
        &s.setup.addr,
        &other.ca(),
        &s.certs.client_cert(),
        &s.certs.client_key(),
        Some("5s"),
    );
    let out = push(&sc, &wrong_ca, &path, &seg.name);
    assert_refused(&out, &["certificate"]);
    assert_eq!(archived_files(&s.setup.archive_dir), Vec::<String>::new());

    // The receiver is still fine for a proper sender.
    assert_pushed(&sc, &s.sender, &path, &seg.name);
    assert_eq!(archived_files(&s.setup.archive_dir), vec![seg.name.clone()]);

    // Both refusals are ERRORs on the receiver's side too (a person must look).
    s.rx.assert_logged("invalid peer certificate");
    s.rx.stop_and_check(&["invalid peer certificate"]);
}
