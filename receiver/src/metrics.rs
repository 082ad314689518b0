//! `serve`'s metrics (receiver.toml `metrics_listen`): every metric is defined here, in one
//! process-wide registry; `serve` calls the event functions below where things happen (each an
//! atomic increment or a gauge set, nothing on the hot path that waits), and the endpoint
//! renders the registry on each scrape.
//!
//! Restores are not counted: `restore` runs as a separate process per call, so `serve` never
//! sees them. What it can tell honestly is what the per-standby restore records say (the last
//! segment served and the last one missed, and when): those are gauges read from archive_dir at
//! scrape time, one series per standby, not counters.

use std::path::Path;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use walship_common::proto::Refusal;
use walship_common::state::{is_restore_record_name, RestoreEvent, RESTORE_LOG_FILE};
use walship_common::sys::metrics_http::{encode, unix_secs, Active, Render};

use crate::state::read_restore_log;

/// The `reason` label of `walship_refusals_total`: the [`Refusal`] variant, in snake case.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// One standby's restore record: its data directory (empty for the record of walship versions
/// that kept a single one).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Standby {
    data_directory: String,
}

struct Metrics {
    registry: Registry,
    stored_files: Counter,
    stored_bytes: Counter,
    already_had: Counter,
    refusals: Family<Reason, Counter>,
    transfer_seconds: Histogram,
    last_stored: Gauge,
    connections: Gauge,
    uploads: Gauge,
    restore_served: Family<Standby, Gauge>,
    restore_missed: Family<Standby, Gauge>,
    objstore_uploaded_files: Counter,
    objstore_uploaded_bytes: Counter,
    objstore_uploaded_object_bytes: Counter,
    objstore_upload_failures: Counter,
    objstore_backlog_files: Gauge,
    objstore_backlog_bytes: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics::new().registered());

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            stored_files: Counter::default(),
            stored_bytes: Counter::default(),
            already_had: Counter::default(),
            refusals: Family::default(),
            // 10 ms to ~80 s: a 16 MiB segment on a LAN takes ~0.1 s, on a slow link minutes.
            transfer_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            last_stored: Gauge::default(),
            connections: Gauge::default(),
            uploads: Gauge::default(),
            restore_served: Family::default(),
            restore_missed: Family::default(),
            objstore_uploaded_files: Counter::default(),
            objstore_uploaded_bytes: Counter::default(),
            objstore_uploaded_object_bytes: Counter::default(),
            objstore_upload_failures: Counter::default(),
            objstore_backlog_files: Gauge::default(),
            objstore_backlog_bytes: Gauge::default(),
        };
        for reason in REFUSAL_REASONS {
            // Every reason from the start, at 0: a rate() needs the series before the event.
            let _ = m.refusals.get_or_create(&Reason { reason });
        }
        m
    }

    /// Register clones of the metrics (they share their atomics) in the registry.
    fn registered(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "walship_stored_files",
            "Files stored durably in archive_dir (acknowledged as stored).",
            self.stored_files.clone(),
        );
        r.register(
            "walship_stored_bytes",
            "Bytes of the files stored (their plain size, not the wire's).",
            self.stored_bytes.clone(),
        );
        r.register(
            "walship_already_had_files",
            "Uploads answered \"already stored with identical content\" (nothing written).",
            self.already_had.clone(),
        );
        r.register(
            "walship_refusals",
            "Uploads refused, by reason (the refusal's kind).",
            self.refusals.clone(),
        );
        r.register(
            "walship_transfer_duration_seconds",
            "Time from the start of an upload's stream to its durable store.",
            self.transfer_seconds.clone(),
        );
        r.register(
            "walship_last_stored_timestamp_seconds",
            "When the newest file was stored (Unix time); at start, the newest segment's arrival in archive_dir.",
            self.last_stored.clone(),
        );
        r.register(
            "walship_open_connections",
            "Sender connections open (handshake done).",
            self.connections.clone(),
        );
        r.register(
            "walship_active_uploads",
            "Uploads holding an upload slot (decoding and writing).",
            self.uploads.clone(),
        );
        r.register(
            "walship_restore_last_served_timestamp_seconds",
            "When restore last served a segment to this standby (Unix time, from its restore record).",
            self.restore_served.clone(),
        );
        r.register(
            "walship_restore_last_missed_timestamp_seconds",
            "When restore last found a segment this standby asked for missing (Unix time, from its restore record).",
            self.restore_missed.clone(),
        );
        r.register(
            "walship_objstore_uploaded_files",
            "Files uploaded to the object store and verified (read back).",
            self.objstore_uploaded_files.clone(),
        );
        r.register(
            "walship_objstore_uploaded_bytes",
            "Plain bytes of the files uploaded to the object store.",
            self.objstore_uploaded_bytes.clone(),
        );
        r.register(
            "walship_objstore_uploaded_object_bytes",
            "Bytes of the objects uploaded (zstd-compressed).",
            self.objstore_uploaded_object_bytes.clone(),
        );
        r.register(
            "walship_objstore_upload_failures",
            "Failed attempts to list, upload, verify or record a file for the object store (each retried with backoff).",
            self.objstore_upload_failures.clone(),
        );
        r.register(
            "walship_objstore_backlog_files",
            "Files in archive_dir not yet in the object store.",
            self.objstore_backlog_files.clone(),
        );
        r.register(
            "walship_objstore_backlog_bytes",
            "Plain bytes of the files in archive_dir not yet in the object store.",
            self.objstore_backlog_bytes.clone(),
        );
        self
    }
}

/// Every `reason` label value, one per [`Refusal`] variant.
const REFUSAL_REASONS: [&str; 18] = [
    "bad_name",
    "foreign_cluster",
    "conflicting_content",
    "checksum_mismatch",
    "size_mismatch",
    "too_large",
    "bad_segment",
    "unsupported_version",
    "malformed",
    "disk_full",
    "storage_failed",
    "fenced",
    "shutting_down",
    "bad_history",
    "history_conflict",
    "bad_backup",
    "promotion_in_progress",
    "too_slow",
];

/// The `reason` label of a refusal.
fn reason(r: &Refusal) -> &'static str {
    match r {
        Refusal::BadName { .. } => "bad_name",
        Refusal::ForeignCluster { .. } => "foreign_cluster",
        Refusal::ConflictingContent { .. } => "conflicting_content",
        Refusal::ChecksumMismatch { .. } => "checksum_mismatch",
        Refusal::SizeMismatch { .. } => "size_mismatch",
        Refusal::TooLarge { .. } => "too_large",
        Refusal::BadSegment { .. } => "bad_segment",
        Refusal::UnsupportedVersion { .. } => "unsupported_version",
        Refusal::Malformed { .. } => "malformed",
        Refusal::DiskFull { .. } => "disk_full",
        Refusal::StorageFailed { .. } => "storage_failed",
        Refusal::Fenced { .. } => "fenced",
        Refusal::ShuttingDown => "shutting_down",
        Refusal::BadHistory { .. } => "bad_history",
        Refusal::HistoryConflict { .. } => "history_conflict",
        Refusal::BadBackup { .. } => "bad_backup",
        Refusal::PromotionInProgress { .. } => "promotion_in_progress",
        Refusal::TooSlow { .. } => "too_slow",
    }
}

/// Set up the registry (once) with the last store time from the archive (`newest`: when its
/// newest segment arrived), and return the endpoint's renderer for `archive_dir`.
pub fn renderer(archive_dir: &Path, newest: Option<SystemTime>) -> Render {
    if let Some(at) = newest {
        METRICS.last_stored.set(unix_secs(at));
    }
    let dir = archive_dir.to_path_buf();
    std::sync::Arc::new(move || render(&dir))
}

fn render(archive_dir: &Path) -> String {
    refresh_restores(archive_dir);
    encode(&METRICS.registry)
}

/// The restore gauges from the restore records in archive_dir, as they are now.
fn refresh_restores(archive_dir: &Path) {
    let m = &*METRICS;
    m.restore_served.clear();
    m.restore_missed.clear();
    let Ok(entries) = std::fs::read_dir(archive_dir) else {
        return;
    };
    for name in entries.filter_map(|e| e.ok()?.file_name().into_string().ok()) {
        if name != RESTORE_LOG_FILE && !is_restore_record_name(&name) {
            continue;
        }
        let Ok(log) = read_restore_log(archive_dir, &name) else {
            continue;
        };
        let standby = Standby {
            data_directory: log.data_directory.clone().unwrap_or_default(),
        };
        let set = |family: &Family<Standby, Gauge>, event: &Option<RestoreEvent>| {
            if let Some(e) = event {
                family.get_or_create(&standby).set(unix_secs(e.at));
            }
        };
        set(&m.restore_served, &log.last_served);
        set(&m.restore_missed, &log.last_missed);
    }
}

/// A file was stored: `bytes` plain bytes, `took` since its stream began.
pub fn stored(bytes: u64, took: Duration) {
    let m = &*METRICS;
    m.stored_files.inc();
    m.stored_bytes.inc_by(bytes);
    m.transfer_seconds.observe(took.as_secs_f64());
    m.last_stored.set(unix_secs(SystemTime::now()));
}

/// An upload was answered "already had".
pub fn already_had() {
    METRICS.already_had.inc();
}

/// An upload was refused.
pub fn refused(r: &Refusal) {
    METRICS
        .refusals
        .get_or_create(&Reason { reason: reason(r) })
        .inc();
}

/// A file was uploaded to the object store: `bytes` plain, `packed` as stored.
pub fn uploaded(bytes: u64, packed: u64) {
    let m = &*METRICS;
    m.objstore_uploaded_files.inc();
    m.objstore_uploaded_bytes.inc_by(bytes);
    m.objstore_uploaded_object_bytes.inc_by(packed);
    m.objstore_backlog_files.dec();
    m.objstore_backlog_bytes
        .set(m.objstore_backlog_bytes.get().saturating_sub(bytes as i64));
}

/// An attempt to upload failed (it is retried).
pub fn upload_failed() {
    METRICS.objstore_upload_failures.inc();
}

/// The upload backlog as last listed.
pub fn upload_backlog(b: walship_common::upload_queue::Backlog) {
    let m = &*METRICS;
    m.objstore_backlog_files.set(b.files as i64);
    m.objstore_backlog_bytes.set(b.bytes as i64);
}

/// A connection is open until the returned guard drops.
pub fn connection() -> Active {
    Active::new(&METRICS.connections)
}

/// An upload holds a slot until the returned guard drops.
pub fn upload() -> Active {
    Active::new(&METRICS.uploads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_its_listed_reason() {
        let (name, s) = (String::new, String::new);
        let all = [
            Refusal::BadName {
                name: name(),
                reason: s(),
            },
            Refusal::ForeignCluster {
                name: name(),
                segment: 1,
            },
            Refusal::ConflictingContent { name: name() },
            Refusal::ChecksumMismatch {
                name: name(),
                expected: s(),
                actual: s(),
            },
            Refusal::SizeMismatch {
                name: name(),
                announced: 1,
                received: 0,
            },
            Refusal::TooLarge {
                name: name(),
                size: 2,
                max: 1,
            },
            Refusal::BadSegment {
                name: name(),
                reason: s(),
            },
            Refusal::UnsupportedVersion {
                receiver: 4,
                sender: 3,
            },
            Refusal::Malformed { reason: s() },
            Refusal::DiskFull {
                name: name(),
                detail: s(),
            },
            Refusal::StorageFailed {
                name: name(),
                detail: s(),
            },
            Refusal::Fenced {
                name: name(),
                timeline: 1,
                promoted_at_lsn: s(),
                new_timeline: None,
            },
            Refusal::ShuttingDown,
            Refusal::BadHistory {
                name: name(),
                reason: s(),
            },
            Refusal::HistoryConflict {
                name: name(),
                reason: s(),
            },
            Refusal::BadBackup {
                name: name(),
                reason: s(),
            },
            Refusal::PromotionInProgress { name: name() },
            Refusal::TooSlow {
                name: name(),
                announced: 1,
                received: 0,
                elapsed_secs: 1,
                min_rate: 1,
                grace_secs: 1,
            },
        ];
        let labels: Vec<&str> = all.iter().map(reason).collect();
        assert_eq!(labels, REFUSAL_REASONS);
    }
}
