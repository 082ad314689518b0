//! Issue 13, the link cut while the open segment grows: the daemon (`partial_interval`)
//! reaches the receiver through the harness's UDP proxy, which drops every datagram for a few
//! seconds while a client keeps committing. PostgreSQL never waits for the link; once it heals
//! the partial resumes from what the receiver holds durably and catches up, it is a byte prefix
//! of the primary's own segment file, and the finished segment is stored whole and the partial
//! retired. Both `/metrics` endpoints (receiver and daemon) count the appends.

use std::fs;
use std::time::Duration;

use walship_tests::failover::{conninfo, Pair, PairOptions};
use walship_tests::net::free_tcp_port;
use walship_tests::proxy::{self, Proxy};
use walship_tests::walship::{add_keys, toml_str, Service};

use crate::issue11_metrics::Scrape;
use crate::issue13_partial::{finish_and_check, held_partial, wait_partial_caught_up, Writer};

/// How long the link stays cut: longer than the sender's `timeout` below, so that appends
/// in flight fail and the daemon has to find where to resume.
const CUT: Duration = Duration::from_secs(5);

#[test]
fn link_cut_while_a_partial_grows() {
    let mut p = Pair::start("issue13_link_cut", &PairOptions::default());
    let px = Proxy::start(&p.setup.addr, proxy::seed("issue13_link_cut"));

    // The receiver with its metrics endpoint (restarted: the pair started it without).
    let rx_port = free_tcp_port();
    p.rx.stop();
    add_keys(
        &p.setup.config,
        &format!("metrics_listen = \"127.0.0.1:{rx_port}\"\n"),
    );
    p.rx.start();

    // The sender's daemon reaches the receiver through the proxy only.
    let text = fs::read_to_string(&p.sender).expect("read sender config");
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("receiver = ") {
                format!("receiver = {}\n", toml_str(&px.addr()))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    p.sc.write_at(&p.sender, text, 0o644);
    let tx_port = free_tcp_port();
    add_keys(
        &p.sender,
        &format!(
            "socket = \"sender.sock\"\npgdata = {}\nconninfo = {}\npartial_interval = \"100ms\"\n\
             timeout = \"2s\"\nmetrics_listen = \"127.0.0.1:{tx_port}\"\n",
            toml_str(&p.primary.data_dir().display().to_string()),
            toml_str(&conninfo(&p.sc, p.primary.port()))
        ),
    );
    let daemon = Service::spawn_daemon(&p.sc, &p.sender, "daemon");
    p.primary
        .sql("create table acks (id bigint primary key, note text, at timestamptz default clock_timestamp())");
    let done = p.switch_segment();
    p.wait_archived(&done);

    let writer = Writer::start(conninfo(&p.sc, p.primary.port()), 1);
    std::thread::sleep(Duration::from_secs(1));
    let partial = wait_partial_caught_up(&p);

    // The receiver's counts before the cut, bracketed by the partial's length (it grows
    // meanwhile): the bytes counted lie between the two.
    let before = Scraped::take(&p, rx_port);

    // The cut: PostgreSQL keeps committing; nothing reaches the receiver.
    let acked_before = writer.acked().len();
    let dropped_before = px.stats().dropped;
    px.cut(true);
    std::thread::sleep(CUT);
    let during = writer.acked().len() - acked_before;
    let (_, len_at_heal) = held_partial(&p.setup.archive_dir).expect("the partial is held");
    px.cut(false);
    assert!(
        px.stats().dropped > dropped_before,
        "the proxy dropped nothing during the cut"
    );
    // At one row per 20 ms the client commits ~250 rows in 5 s: PostgreSQL did not wait.
    assert!(
        during > 100,
        "the primary committed only {during} rows while the link was cut"
    );

    // Healed: the partial catches up with the flush position, from where it was.
    assert_eq!(
        wait_partial_caught_up(&p),
        partial,
        "after the link came back"
    );
    let seg = partial.trim_end_matches(".partial");
    let held = fs::read(p.setup.archive_dir.join(&partial)).expect("read the partial");
    assert!(
        held.len() as u64 > len_at_heal,
        "the partial did not grow after the cut ({len_at_heal} bytes)"
    );
    let pg_wal = fs::read(p.primary.wal_dir().join(seg)).expect("read the primary's segment");
    assert!(
        pg_wal.len() >= held.len() && pg_wal[..held.len()] == held[..],
        "{partial} ({} bytes) is not a prefix of the primary's pg_wal/{seg}",
        held.len()
    );

    // Every byte appended since counted once, and the partial's LSN.
    let after = Scraped::take(&p, rx_port);
    let bytes = after.bytes - before.bytes;
    assert!(
        bytes >= after.len_from - before.len_to && bytes <= after.len_to - before.len_from,
        "walship_partial_bytes_total grew by {bytes}; the partial from {}..{} to {}..{} bytes",
        before.len_from,
        before.len_to,
        after.len_from,
        after.len_to
    );
    let appends = after.appends - before.appends;
    assert!(appends >= 1, "no append counted after the cut");
    let lsn = after
        .scrape
        .value(&format!("walship_partial_lsn{{segment=\"{seg}\"}}")) as u64;
    let seg_start = (u64::from_str_radix(&seg[8..16], 16).expect("log") << 32)
        | (u64::from_str_radix(&seg[16..24], 16).expect("seg") << 24);
    assert!(
        lsn >= seg_start + after.len_from && lsn <= seg_start + after.len_to,
        "walship_partial_lsn {lsn}, the partial {}..{} bytes from {seg_start}",
        after.len_from,
        after.len_to
    );
    let tx = Scrape::take(tx_port);
    let label = format!("{{receiver=\"{}\"}}", px.addr());
    let sent = tx.value(&format!("walship_partial_appends_total{label}"));
    assert!(
        sent >= after.appends as f64,
        "the daemon counts {sent} appends, the receiver stored {}\n{}",
        after.appends,
        tx.0
    );
    assert!(
        tx.value(&format!("walship_partial_bytes_total{label}")) >= after.bytes as f64,
        "{}",
        tx.0
    );
    assert!(
        tx.value(&format!("walship_partial_failures_total{label}")) >= 1.0,
        "no round failed while the link was cut for {CUT:?} (timeout 2s)\n{}",
        tx.0
    );

    let acked = writer.finish();
    assert!(acked.len() > 200, "the client wrote only {}", acked.len());
    finish_and_check(&p, &partial);
    daemon.check_log(&[
        "open segment not shipped",
        "warm connection",
        "connection to receiver",
        "retrying",
        "no reply within",
        "timed out",
    ]);
}

/// The receiver's append counters, scraped between two reads of the partial's length.
struct Scraped {
    scrape: Scrape,
    appends: u64,
    bytes: u64,
    len_from: u64,
    len_to: u64,
}

impl Scraped {
    fn take(p: &Pair, port: u16) -> Scraped {
        let len = || held_partial(&p.setup.archive_dir).map_or(0, |(_, l)| l);
        let len_from = len();
        let scrape = Scrape::take(port);
        let len_to = len();
        Scraped {
            appends: scrape.value("walship_partial_appends_total") as u64,
            bytes: scrape.value("walship_partial_bytes_total") as u64,
            scrape,
            len_from,
            len_to,
        }
    }
}
