//! With no receiver, push fails within connect_timeout and says which address it tried, so
//! PostgreSQL's archiver retries instead of hanging.

use std::time::Duration;

use walship_tests::donors;
use walship_tests::net::free_udp_port;
use walship_tests::walship::{assert_refused, push, sender_config};
use walship_tests::{CertSet, Scenario};

#[test]
fn receiver_down() {
    let d = donors();
    let sc = Scenario::new("receiver_down");
    let certs = CertSet::create(&sc, "certs");
    let addr = format!("127.0.0.1:{}", free_udp_port());
    let sender = sender_config(
        &sc,
        "sender",
        &addr,
        &certs.ca(),
        &certs.client_cert(),
        &certs.client_key(),
        Some("2s"),
    );
    let seg = &d.home[0];
    let path = seg.write_to(&sc, "segment");
    let out = push(&sc, &sender, &path, &seg.name);
    assert_refused(&out, &[&addr]);
    assert!(
        out.elapsed < Duration::from_secs(8),
        "push took {:.1?} with connect_timeout 2s\n{out}",
        out.elapsed
    );
}
