//! The daemon's metrics (sender.toml `metrics_listen`): every metric is defined here, in one
//! process-wide registry; the daemon calls the event functions below where things happen (an
//! atomic increment or a gauge set each), and the endpoint renders the registry on a scrape.
//!
//! With several receivers, the totals count every receiver's transfers, and the
//! `walship_receiver_*` families say the same per receiver (label `receiver`, its `host:port`).
//!
//! `push` run by PostgreSQL without a daemon is a process per segment and keeps no metrics:
//! what it ships shows in the receiver's.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use walship_common::sys::metrics_http::{encode, unix_secs, Active, Render};

struct Metrics {
    registry: Registry,
    shipped_files: Counter,
    shipped_bytes: Counter,
    already_had: Counter,
    failures: Counter,
    transfer_seconds: Histogram,
    last_shipped: Gauge,
    handoffs: Counter,
    lookahead_hits: Counter,
    uploads: Gauge,
    connected: Gauge,
    ready: Gauge,
    dropped: Counter,
    per_up: Family<Label, Gauge>,
    per_shipped: Family<Label, Counter>,
    per_failures: Family<Label, Counter>,
    per_owed: Family<Label, Gauge>,
    per_missed: Family<Label, Counter>,
    per_last_acked: Family<Label, Gauge>,
    partial_appends: Family<Label, Counter>,
    partial_sealed: Family<Label, Counter>,
    partial_bytes: Family<Label, Counter>,
    partial_failures: Family<Label, Counter>,
    partial_lsn: Family<Label, Gauge>,
}

/// `receiver="host:port"`.
type Label = Vec<(&'static str, String)>;

fn label(receiver: &str) -> Label {
    vec![("receiver", receiver.to_string())]
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            shipped_files: Counter::default(),
            shipped_bytes: Counter::default(),
            already_had: Counter::default(),
            failures: Counter::default(),
            // 10 ms to ~80 s, as the receiver's.
            transfer_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            last_shipped: Gauge::default(),
            handoffs: Counter::default(),
            lookahead_hits: Counter::default(),
            uploads: Gauge::default(),
            connected: Gauge::default(),
            ready: Gauge::default(),
            dropped: Counter::default(),
            per_up: Family::default(),
            per_shipped: Family::default(),
            per_failures: Family::default(),
            per_owed: Family::default(),
            per_missed: Family::default(),
            per_last_acked: Family::default(),
            partial_appends: Family::default(),
            partial_sealed: Family::default(),
            partial_bytes: Family::default(),
            partial_failures: Family::default(),
            partial_lsn: Family::default(),
        };
        // The registry holds clones: they share their atomics with the fields above.
        let r = &mut m.registry;
        r.register(
            "walship_shipped_files",
            "Files the receiver stored from this daemon (hand-offs and look-ahead).",
            m.shipped_files.clone(),
        );
        r.register(
            "walship_shipped_bytes",
            "Bytes of the files shipped and stored (plain size, not the wire's).",
            m.shipped_bytes.clone(),
        );
        r.register(
            "walship_already_had_files",
            "Files the receiver answered \"already stored with identical content\".",
            m.already_had.clone(),
        );
        r.register(
            "walship_ship_failures",
            "Shipping attempts that failed (refused, timed out, connection lost).",
            m.failures.clone(),
        );
        r.register(
            "walship_transfer_duration_seconds",
            "Time to ship one file until the receiver acknowledged it stored.",
            m.transfer_seconds.clone(),
        );
        r.register(
            "walship_last_shipped_timestamp_seconds",
            "When the receiver last stored a file from this daemon (Unix time; 0: not yet).",
            m.last_shipped.clone(),
        );
        r.register(
            "walship_handoffs",
            "push calls answered on the daemon socket (any answer).",
            m.handoffs.clone(),
        );
        r.register(
            "walship_lookahead_hits",
            "push calls answered from look-ahead: the segment was already shipped.",
            m.lookahead_hits.clone(),
        );
        r.register(
            "walship_active_uploads",
            "Transfers to the receiver in progress.",
            m.uploads.clone(),
        );
        r.register(
            "walship_receiver_connected",
            "Receivers whose warm connection is open (1 or 0 with one receiver).",
            m.connected.clone(),
        );
        r.register(
            "walship_receiver_up",
            "Per receiver: 1 while its warm connection is open, else 0.",
            m.per_up.clone(),
        );
        r.register(
            "walship_receiver_shipped_files",
            "Per receiver: files it stored (or already had) from this daemon.",
            m.per_shipped.clone(),
        );
        r.register(
            "walship_receiver_ship_failures",
            "Per receiver: transfers to it that failed.",
            m.per_failures.clone(),
        );
        r.register(
            "walship_receiver_owed_files",
            "Per receiver: files it lacks that the daemon will ship when it answers (still in pg_wal).",
            m.per_owed.clone(),
        );
        r.register(
            "walship_receiver_missed_files",
            "Per receiver: files it lacks that left pg_wal before it came back (a hole in its archive).",
            m.per_missed.clone(),
        );
        r.register(
            "walship_receiver_last_acked_timestamp_seconds",
            "Per receiver: when it last acknowledged a file (Unix time; absent: not yet).",
            m.per_last_acked.clone(),
        );
        r.register(
            "walship_ready_segments",
            "Segments waiting in pg_wal/archive_status (.ready) at the last look (look-ahead only).",
            m.ready.clone(),
        );
        r.register(
            "walship_dropped_segments",
            "Segments the pg_wal valve (max_backlog) acknowledged without shipping them: gaps the standby cannot replay past.",
            m.dropped.clone(),
        );
        r.register(
            "walship_partial_appends",
            "Per receiver: appends of the open segment (partial_interval) it stored durably in NAME.partial.",
            m.partial_appends.clone(),
        );
        r.register(
            "walship_partial_sealed",
            "Per receiver: finished segments it made from the partial it held whole (a seal: the segment was not uploaded again). They count in walship_shipped_files too.",
            m.partial_sealed.clone(),
        );
        r.register(
            "walship_partial_bytes",
            "Per receiver: bytes of the open segment it appended durably.",
            m.partial_bytes.clone(),
        );
        r.register(
            "walship_partial_failures",
            "Per receiver: rounds of partial_interval that could not ship the open segment (receiver unreachable, a refusal).",
            m.partial_failures.clone(),
        );
        r.register(
            "walship_partial_lsn",
            "Per receiver: the LSN up to which it holds the open segment durably (as a number of bytes).",
            m.partial_lsn.clone(),
        );
        m
    }
}

/// The endpoint's renderer.
pub fn renderer() -> Render {
    Arc::new(|| encode(&METRICS.registry))
}

/// `receiver` stored a file of `bytes` plain bytes, shipped in `took`.
pub fn shipped(receiver: &str, bytes: u64, took: Duration) {
    let m = &*METRICS;
    acked(receiver);
    m.shipped_files.inc();
    m.shipped_bytes.inc_by(bytes);
    m.transfer_seconds.observe(took.as_secs_f64());
    m.last_shipped.set(unix_secs(SystemTime::now()));
}

/// `receiver` already had the file.
pub fn already_had(receiver: &str) {
    acked(receiver);
    METRICS.already_had.inc();
}

fn acked(receiver: &str) {
    let m = &*METRICS;
    m.per_shipped.get_or_create(&label(receiver)).inc();
    m.per_last_acked
        .get_or_create(&label(receiver))
        .set(unix_secs(SystemTime::now()));
}

/// A shipping attempt to `receiver` failed.
pub fn failed(receiver: &str) {
    METRICS.failures.inc();
    METRICS.per_failures.get_or_create(&label(receiver)).inc();
}

/// Files `receiver` lacks and will be sent when it answers.
pub fn owed(receiver: &str, n: usize) {
    METRICS
        .per_owed
        .get_or_create(&label(receiver))
        .set(i64::try_from(n).unwrap_or(i64::MAX));
}

/// `receiver` missed a file for good.
pub fn missed(receiver: &str) {
    METRICS.per_missed.get_or_create(&label(receiver)).inc();
}

/// A `push` was answered on the socket; `ahead`: from look-ahead's acknowledgement.
pub fn handoff(ahead: bool) {
    METRICS.handoffs.inc();
    if ahead {
        METRICS.lookahead_hits.inc();
    }
}

/// `receiver` appended `bytes` bytes of the open segment and now holds it up to `lsn`.
pub fn partial_appended(receiver: &str, bytes: u64, lsn: u64) {
    let m = &*METRICS;
    m.partial_appends.get_or_create(&label(receiver)).inc();
    m.partial_bytes
        .get_or_create(&label(receiver))
        .inc_by(bytes);
    partial_held(receiver, lsn);
}

/// `receiver` made a finished segment from the partial it held whole.
pub fn sealed(receiver: &str) {
    METRICS.partial_sealed.get_or_create(&label(receiver)).inc();
}

/// `receiver` holds the open segment up to `lsn` (what it answered).
pub fn partial_held(receiver: &str, lsn: u64) {
    METRICS
        .partial_lsn
        .get_or_create(&label(receiver))
        .set(i64::try_from(lsn).unwrap_or(i64::MAX));
}

/// A round of shipping the open segment to `receiver` failed.
pub fn partial_failed(receiver: &str) {
    METRICS
        .partial_failures
        .get_or_create(&label(receiver))
        .inc();
}

/// The pg_wal valve dropped a segment.
pub fn dropped() {
    METRICS.dropped.inc();
}

/// Whether the warm connection to `receiver` is open (it was not, or was, before).
pub fn connected(receiver: &str, open: bool) {
    let m = &*METRICS;
    let up = m.per_up.get_or_create(&label(receiver));
    let was = up.set(i64::from(open));
    match (was, open) {
        (0, true) => {
            m.connected.inc();
        }
        (1, false) => {
            m.connected.dec();
        }
        _ => {}
    }
}

/// `.ready` segments seen at the last listing.
pub fn ready_segments(n: usize) {
    METRICS.ready.set(i64::try_from(n).unwrap_or(i64::MAX));
}

/// A transfer is in progress until the returned guard drops.
pub fn upload() -> Active {
    Active::new(&METRICS.uploads)
}
