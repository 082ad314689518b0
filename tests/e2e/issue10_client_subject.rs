//! Issue 10, item 14: the receiver logs who wrote. Every connection, and every file stored or
//! refused on it, names the subject of the client certificate it came with, so an archive entry
//! can be traced to a certificate.

use walship_tests::donors;
use walship_tests::walship::{assert_pushed, assert_refused, push, sender_config};

use crate::hostile::Rig;

#[test]
fn item14_log_names_the_client_certificate() {
    let d = donors();
    let mut rig = Rig::start("i10_who_wrote", "10s");
    let sc = rig.sc.clone();
    let now = time::OffsetDateTime::now_utc();
    let (cert, key) = rig.certs.issue_client_as(
        &sc,
        "db1",
        "db1.example.com",
        Some("Acme"),
        now - time::Duration::days(1),
        now + time::Duration::days(30),
    );
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
