//! `serve`'s metrics (receiver.toml `metrics_listen`): every metric is defined here, in one
//! process-wide registry; `serve` calls the event functions below where things happen (each an
//! atomic increment or a gauge set, nothing on the hot path that waits), and the endpoint
//! renders the registry on each scrape.
//!
//! Restores are not counted: `restore` runs as a separate process per call, so `serve` never
//! sees them. What it can tell honestly is what the per-standby restore records say (the last
//! segment served and the last one missed, and when): those are gauges read from archive_dir at
//! scrape time, one series per standby, not counters.
//!
//! Many clusters on one receiver: the series above count the whole receiver; in that form each
//! cluster also has its own `walship_cluster_*` series with a `cluster` label (files and bytes
//! stored, refusals by reason, the last store time), and the restore gauges carry a `cluster`
//! label too.
//!
//! The open segment (issue 13): appends to `NAME.partial` taken, their bytes, and appends not
//! taken by reason (counters, per cluster in the many-cluster form like the others); the LSN
//! the partial reaches and when its last bytes were stored (gauges read from archive_dir at
//! scrape time, like the restore gauges: they survive a restart of `serve`).

use std::path::{Path, PathBuf};
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
use crate::store::Appended;

/// The `reason` label of `walship_refusals_total`: the [`Refusal`] variant, in snake case.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// One standby's restore record: its cluster (many-cluster form only) and its data directory
/// (empty for the record of walship versions that kept a single one). A list of pairs, so that
/// the single-cluster form keeps its one label.
type Standby = Vec<(&'static str, String)>;

/// A cluster's own series (many-cluster form).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cluster {
    cluster: String,
}

/// A cluster's refusals, by reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterReason {
    cluster: String,
    reason: &'static str,
}

/// An archive the endpoint reports on: its cluster (none in the single-cluster form), its
/// directory, and when its newest segment arrived (at start).
pub struct Watched {
    pub cluster: Option<String>,
    pub dir: PathBuf,
    pub newest: Option<SystemTime>,
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
    cluster_files: Family<Cluster, Counter>,
    cluster_bytes: Family<Cluster, Counter>,
    cluster_already_had: Family<Cluster, Counter>,
    cluster_refusals: Family<ClusterReason, Counter>,
    cluster_last_stored: Family<Cluster, Gauge>,
    objstore_uploaded_files: Family<Cluster, Counter>,
    objstore_uploaded_bytes: Family<Cluster, Counter>,
    objstore_uploaded_object_bytes: Family<Cluster, Counter>,
    objstore_upload_failures: Family<Cluster, Counter>,
    objstore_backlog_files: Family<Cluster, Gauge>,
    objstore_backlog_bytes: Family<Cluster, Gauge>,
    partial_appends: Counter,
    partial_sealed: Counter,
    partial_bytes: Counter,
    partial_refused: Family<Reason, Counter>,
    cluster_partial_appends: Family<Cluster, Counter>,
    cluster_partial_bytes: Family<Cluster, Counter>,
    cluster_partial_refused: Family<ClusterReason, Counter>,
    partial_lsn: Family<Standby, Gauge>,
    partial_modified: Family<Standby, Gauge>,
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
            cluster_files: Family::default(),
            cluster_bytes: Family::default(),
            cluster_already_had: Family::default(),
            cluster_refusals: Family::default(),
            cluster_last_stored: Family::default(),
            objstore_uploaded_files: Family::default(),
            objstore_uploaded_bytes: Family::default(),
            objstore_uploaded_object_bytes: Family::default(),
            objstore_upload_failures: Family::default(),
            objstore_backlog_files: Family::default(),
            objstore_backlog_bytes: Family::default(),
            partial_appends: Counter::default(),
            partial_sealed: Counter::default(),
            partial_bytes: Counter::default(),
            partial_refused: Family::default(),
            cluster_partial_appends: Family::default(),
            cluster_partial_bytes: Family::default(),
            cluster_partial_refused: Family::default(),
            partial_lsn: Family::default(),
            partial_modified: Family::default(),
        };
        for reason in REFUSAL_REASONS {
            // Every reason from the start, at 0: a rate() needs the series before the event.
            let _ = m.refusals.get_or_create(&Reason { reason });
        }
        for reason in APPEND_REASONS {
            let _ = m.partial_refused.get_or_create(&Reason { reason });
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
            "walship_cluster_stored_files",
            "Files stored durably, by cluster (many-cluster form).",
            self.cluster_files.clone(),
        );
        r.register(
            "walship_cluster_stored_bytes",
            "Bytes of the files stored, by cluster (many-cluster form).",
            self.cluster_bytes.clone(),
        );
        r.register(
            "walship_cluster_already_had_files",
            "Uploads answered \"already stored\", by cluster (many-cluster form).",
            self.cluster_already_had.clone(),
        );
        r.register(
            "walship_cluster_refusals",
            "Uploads refused, by cluster and reason (many-cluster form; a client certificate allowed for no cluster counts in walship_refusals_total only).",
            self.cluster_refusals.clone(),
        );
        r.register(
            "walship_cluster_last_stored_timestamp_seconds",
            "When the newest file of the cluster was stored (Unix time; many-cluster form).",
            self.cluster_last_stored.clone(),
        );
        r.register(
            "walship_objstore_uploaded_files",
            "Files uploaded to the object store and verified (read back), by cluster (empty in the single-cluster form).",
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
        r.register(
            "walship_partial_appends",
            "Appends to the open segment's NAME.partial stored durably (partial_interval on the primary's daemon).",
            self.partial_appends.clone(),
        );
        r.register(
            "walship_partial_sealed",
            "Finished segments made from the NAME.partial held whole (a seal from the primary's daemon: checked like an upload, renamed, not shipped again). They count in walship_stored_files too.",
            self.partial_sealed.clone(),
        );
        r.register(
            "walship_partial_bytes",
            "Bytes appended to NAME.partial files (stored durably).",
            self.partial_bytes.clone(),
        );
        r.register(
            "walship_partial_refused",
            "Appends to a NAME.partial not taken, by reason: a refusal's kind, wrong_offset (not at the partial's end: a gap or an overlap; the reply says where to resume) or finished (the finished segment is stored).",
            self.partial_refused.clone(),
        );
        r.register(
            "walship_cluster_partial_appends",
            "Appends to NAME.partial files stored durably, by cluster (many-cluster form).",
            self.cluster_partial_appends.clone(),
        );
        r.register(
            "walship_cluster_partial_bytes",
            "Bytes appended to NAME.partial files, by cluster (many-cluster form).",
            self.cluster_partial_bytes.clone(),
        );
        r.register(
            "walship_cluster_partial_refused",
            "Appends to a NAME.partial not taken, by cluster and reason (many-cluster form).",
            self.cluster_partial_refused.clone(),
        );
        r.register(
            "walship_partial_lsn",
            "The LSN the open segment's NAME.partial reaches (as a number of bytes; label segment), from archive_dir at scrape time; absent when none is open.",
            self.partial_lsn.clone(),
        );
        r.register(
            "walship_partial_last_append_timestamp_seconds",
            "When the open segment's NAME.partial last grew (Unix time; its age is time() minus this), from archive_dir at scrape time.",
            self.partial_modified.clone(),
        );
        self
    }
}

/// Every `reason` label value, one per [`Refusal`] variant.
const REFUSAL_REASONS: [&str; 27] = [
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
    "client_not_allowed",
    "no_target",
    "target_not_empty",
    "standby_exists",
    "target_running",
    "bad_path",
    "backup_gone",
    "backup_incomplete",
    "end_not_archived",
];

/// The `reason` labels of `walship_partial_refused` besides the refusals' own.
const APPEND_REASONS: [&str; 2] = ["wrong_offset", "finished"];

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
        Refusal::ClientNotAllowed { .. } => "client_not_allowed",
        Refusal::NoTarget => "no_target",
        Refusal::TargetNotEmpty { .. } => "target_not_empty",
        Refusal::StandbyExists { .. } => "standby_exists",
        Refusal::TargetRunning { .. } => "target_running",
        Refusal::BadPath { .. } => "bad_path",
        Refusal::BackupGone => "backup_gone",
        Refusal::BackupIncomplete { .. } => "backup_incomplete",
        Refusal::EndNotArchived { .. } => "end_not_archived",
    }
}

/// Set up the registry (once) with the last store time from the archives (`newest`: when
/// their newest segment arrived), and return the endpoint's renderer for them.
pub fn renderer(archives: Vec<Watched>) -> Render {
    let m = &*METRICS;
    for w in &archives {
        if let Some(name) = &w.cluster {
            let cluster = Cluster {
                cluster: name.clone(),
            };
            // Every cluster's series from the start, at 0.
            let _ = m.cluster_files.get_or_create(&cluster);
            let _ = m.cluster_bytes.get_or_create(&cluster);
            let _ = m.cluster_already_had.get_or_create(&cluster);
            for reason in REFUSAL_REASONS {
                let _ = m.cluster_refusals.get_or_create(&ClusterReason {
                    cluster: name.clone(),
                    reason,
                });
            }
            let _ = m.cluster_partial_appends.get_or_create(&cluster);
            let _ = m.cluster_partial_bytes.get_or_create(&cluster);
            for reason in APPEND_REASONS {
                let _ = m.cluster_partial_refused.get_or_create(&ClusterReason {
                    cluster: name.clone(),
                    reason,
                });
            }
            if let Some(at) = w.newest {
                m.cluster_last_stored
                    .get_or_create(&cluster)
                    .set(unix_secs(at));
            }
        }
    }
    if let Some(at) = archives.iter().filter_map(|w| w.newest).max() {
        m.last_stored.set(unix_secs(at));
    }
    std::sync::Arc::new(move || render(&archives))
}

fn render(archives: &[Watched]) -> String {
    let m = &*METRICS;
    m.restore_served.clear();
    m.restore_missed.clear();
    m.partial_lsn.clear();
    m.partial_modified.clear();
    for w in archives {
        refresh_restores(w.cluster.as_deref(), &w.dir);
        refresh_partial(w.cluster.as_deref(), &w.dir);
    }
    encode(&m.registry)
}

/// The restore gauges from the restore records in archive_dir, as they are now.
fn refresh_restores(cluster: Option<&str>, archive_dir: &Path) {
    let m = &*METRICS;
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
        let mut standby: Standby = Vec::new();
        if let Some(c) = cluster {
            standby.push(("cluster", c.to_string()));
        }
        standby.push((
            "data_directory",
            log.data_directory.clone().unwrap_or_default(),
        ));
        let set = |family: &Family<Standby, Gauge>, event: &Option<RestoreEvent>| {
            if let Some(e) = event {
                family.get_or_create(&standby).set(unix_secs(e.at));
            }
        };
        set(&m.restore_served, &log.last_served);
        set(&m.restore_missed, &log.last_missed);
    }
}

/// The open segment's partial gauges from archive_dir, as it is now.
fn refresh_partial(cluster: Option<&str>, archive_dir: &Path) {
    let m = &*METRICS;
    let Ok(files) = crate::store::list(archive_dir) else {
        return;
    };
    let Some(p) = crate::store::open_partial(archive_dir, &files) else {
        return;
    };
    let mut labels: Standby = Vec::new();
    if let Some(c) = cluster {
        labels.push(("cluster", c.to_string()));
    }
    labels.push(("segment", p.segment.to_string()));
    m.partial_lsn
        .get_or_create(&labels)
        .set(i64::try_from(p.lsn.0).unwrap_or(i64::MAX));
    m.partial_modified
        .get_or_create(&labels)
        .set(unix_secs(p.modified));
}

/// An append to a `NAME.partial` of `cluster` was answered (refusals count in
/// [`partial_refused`]).
pub fn partial_append(appended: &Appended, cluster: Option<&str>) {
    let m = &*METRICS;
    let not_taken = match appended {
        Appended::Taken { added, .. } => {
            m.partial_appends.inc();
            m.partial_bytes.inc_by(*added);
            if let Some(c) = cluster {
                let c = Cluster {
                    cluster: c.to_string(),
                };
                m.cluster_partial_appends.get_or_create(&c).inc();
                m.cluster_partial_bytes.get_or_create(&c).inc_by(*added);
            }
            return;
        }
        Appended::Held { .. } => "wrong_offset",
        Appended::Finished => "finished",
        // Counted with every refused append, where the reply is sent.
        Appended::Refused(_) => return,
    };
    partial_not_taken(not_taken, cluster);
}

/// An append to a `NAME.partial` of `cluster` was refused.
pub fn partial_refused(r: &Refusal, cluster: Option<&str>) {
    partial_not_taken(reason(r), cluster);
}

fn partial_not_taken(reason: &'static str, cluster: Option<&str>) {
    let m = &*METRICS;
    m.partial_refused.get_or_create(&Reason { reason }).inc();
    if let Some(c) = cluster {
        m.cluster_partial_refused
            .get_or_create(&ClusterReason {
                cluster: c.to_string(),
                reason,
            })
            .inc();
    }
}

/// A file was stored in `cluster` (none: the single-cluster form): `bytes` plain bytes,
/// `took` since its stream began.
pub fn stored(bytes: u64, took: Duration, cluster: Option<&str>) {
    let m = &*METRICS;
    let now = unix_secs(SystemTime::now());
    m.stored_files.inc();
    m.stored_bytes.inc_by(bytes);
    m.transfer_seconds.observe(took.as_secs_f64());
    m.last_stored.set(now);
    if let Some(c) = cluster {
        let c = Cluster {
            cluster: c.to_string(),
        };
        m.cluster_files.get_or_create(&c).inc();
        m.cluster_bytes.get_or_create(&c).inc_by(bytes);
        m.cluster_last_stored.get_or_create(&c).set(now);
    }
}

/// A finished segment was made from its whole partial (a seal).
pub fn sealed() {
    METRICS.partial_sealed.inc();
}

/// An upload to `cluster` was answered "already had".
pub fn already_had(cluster: Option<&str>) {
    METRICS.already_had.inc();
    if let Some(c) = cluster {
        METRICS
            .cluster_already_had
            .get_or_create(&Cluster {
                cluster: c.to_string(),
            })
            .inc();
    }
}

/// An upload to `cluster` was refused (none: the single-cluster form, or a client certificate
/// allowed for no cluster).
pub fn refused(r: &Refusal, cluster: Option<&str>) {
    let reason = reason(r);
    METRICS.refusals.get_or_create(&Reason { reason }).inc();
    if let Some(c) = cluster {
        METRICS
            .cluster_refusals
            .get_or_create(&ClusterReason {
                cluster: c.to_string(),
                reason,
            })
            .inc();
    }
}

/// The label of an object-store metric: the cluster's name, empty in the single-cluster form
/// (Prometheus reads an empty label as no label).
fn objstore_label(cluster: Option<&str>) -> Cluster {
    Cluster {
        cluster: cluster.unwrap_or_default().to_string(),
    }
}

/// A file of `cluster` was uploaded to the object store: `bytes` plain, `packed` as stored.
pub fn uploaded(cluster: Option<&str>, bytes: u64, packed: u64) {
    let (m, c) = (&*METRICS, objstore_label(cluster));
    m.objstore_uploaded_files.get_or_create(&c).inc();
    m.objstore_uploaded_bytes.get_or_create(&c).inc_by(bytes);
    m.objstore_uploaded_object_bytes
        .get_or_create(&c)
        .inc_by(packed);
    m.objstore_backlog_files.get_or_create(&c).dec();
    let backlog = m.objstore_backlog_bytes.get_or_create(&c);
    backlog.set(backlog.get().saturating_sub(bytes as i64));
}

/// An attempt to upload a file of `cluster` failed (it is retried).
pub fn upload_failed(cluster: Option<&str>) {
    METRICS
        .objstore_upload_failures
        .get_or_create(&objstore_label(cluster))
        .inc();
}

/// The upload backlog of `cluster` as last listed.
pub fn upload_backlog(cluster: Option<&str>, b: walship_common::upload_queue::Backlog) {
    let (m, c) = (&*METRICS, objstore_label(cluster));
    m.objstore_backlog_files
        .get_or_create(&c)
        .set(b.files as i64);
    m.objstore_backlog_bytes
        .get_or_create(&c)
        .set(b.bytes as i64);
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
            Refusal::ClientNotAllowed { subject: s() },
            Refusal::NoTarget,
            Refusal::TargetNotEmpty { path: s() },
            Refusal::StandbyExists { path: s() },
            Refusal::TargetRunning { path: s() },
            Refusal::BadPath {
                path: s(),
                reason: s(),
            },
            Refusal::BackupGone,
            Refusal::BackupIncomplete { reason: s() },
            Refusal::EndNotArchived { segment: name() },
        ];
        let labels: Vec<&str> = all.iter().map(reason).collect();
        assert_eq!(labels, REFUSAL_REASONS);
    }
}
