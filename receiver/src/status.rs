//! `walship-receiver status [--json] [--max-age DURATION]`: what the archive holds, whether it
//! is fenced, what the standby says, and whether all is healthy: each problem found is named
//! (see [`problems`]) and makes the command exit 1. The JSON form is a stable interface for monitoring (documented in the
//! README): fields are only ever added. The human form shows sizes, ages and times as a person
//! reads them ([`crate::human`]).

use std::fmt::Display;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};
use walship_common::state::{RestoreEvent, PROMOTION_IN_PROGRESS};
use walship_common::sys::config::ReceiverSettings;
use walship_common::valve::GapRange;
use walship_common::{Lsn, SegmentName, SystemId, TimelineId, WalFileName};

use crate::error::ReceiverError;
use crate::standby::{self, Connected};
use crate::{state, store};
use walship_common::human;

#[derive(Serialize)]
pub struct Status {
    pub archive_dir: String,
    /// System identifier the archive is pinned to, as a decimal string (it exceeds 2^53).
    #[serde(serialize_with = "text")]
    pub cluster_system_identifier: Option<SystemId>,
    /// WAL files stored (segments, history, backup and partial files).
    pub files: u64,
    pub bytes: u64,
    #[serde(serialize_with = "text")]
    pub newest_segment: Option<SegmentName>,
    /// RFC 3339, UTC.
    #[serde(serialize_with = "rfc3339")]
    pub newest_segment_arrived_at: Option<SystemTime>,
    #[serde(serialize_with = "seconds")]
    pub newest_segment_age_seconds: Option<Duration>,
    pub fenced: bool,
    pub fence: Option<FenceStatus>,
    /// The open segment shipped as it grows (`NAME.partial`), when the archive holds one.
    pub partial: Option<PartialStatus>,
    pub restore: RestoreStatus,
    /// Absent when no conninfo is configured.
    pub standby: Option<StandbyStatus>,
    /// The standby's data directory (`pgdata`) as a base backup target: absent when it holds
    /// a data directory with no unfinished backup, or when no pgdata is configured.
    pub pgdata: Option<PgdataStatus>,
    /// The pid of the `serve` holding archive_dir's lock (as it wrote it; "unknown" if not
    /// yet), null when none runs.
    pub serve_pid: Option<String>,
    /// Segments the primary's pg_wal valve dropped (`walship.gaps`), as ranges; each one the
    /// standby has not restored past is a problem.
    pub gaps: Vec<GapRange>,
    /// The object-store tier; null when `[object_store]` is not configured.
    pub object_store: Option<ObjectStoreStatus>,
    /// No problem found: what the exit status says (0 healthy, 1 not).
    pub healthy: bool,
    /// Each problem found, one line each, with what to do.
    pub problems: Vec<String>,
    /// The `[[clusters]]` table's name (`--cluster`); null in the single-cluster form.
    pub cluster_name: Option<String>,
}

#[derive(Serialize)]
pub struct ObjectStoreStatus {
    pub url: String,
    /// Files in archive_dir not yet uploaded (by the upload record `walship.uploaded`).
    pub backlog_files: u64,
    pub backlog_bytes: u64,
    /// WAL files in the bucket under the prefix (null when it could not be listed).
    pub objects: Option<u64>,
    /// The newest segment in the bucket (null when none or not listed).
    #[serde(serialize_with = "text")]
    pub newest_segment: Option<SegmentName>,
    /// Why the bucket or the upload record could not be read.
    pub error: Option<String>,
}

#[derive(Serialize)]
pub struct FenceStatus {
    pub timeline: TimelineId,
    /// Where the new timeline begins; `None` while `promote` runs, shown in JSON as
    /// "promotion in progress" (as always).
    #[serde(serialize_with = "promotion_point")]
    pub promoted_at_lsn: Option<Lsn>,
    pub new_timeline: Option<TimelineId>,
    #[serde(serialize_with = "rfc3339_always")]
    pub fenced_at: SystemTime,
}

#[derive(Serialize)]
pub struct PartialStatus {
    /// The segment's name (the file is `<segment>.partial`).
    #[serde(serialize_with = "text_always")]
    pub segment: SegmentName,
    pub bytes: u64,
    /// The LSN its bytes reach.
    pub lsn: Lsn,
    #[serde(serialize_with = "rfc3339_always")]
    pub updated_at: SystemTime,
    /// Age of its newest byte.
    pub age_seconds: f64,
}

#[derive(Serialize)]
pub struct RestoreStatus {
    pub last_served: Option<WalFileName>,
    #[serde(serialize_with = "rfc3339")]
    pub last_served_at: Option<SystemTime>,
    pub last_missed: Option<WalFileName>,
    #[serde(serialize_with = "rfc3339")]
    pub last_missed_at: Option<SystemTime>,
}

#[derive(Serialize)]
pub struct PgdataStatus {
    pub path: String,
    /// "absent" (no data directory yet) or "unfinished_backup" (PostgreSQL will not start).
    pub state: &'static str,
    /// For an unfinished backup: its label and when it started (RFC 3339).
    pub label: Option<String>,
    pub started: Option<String>,
}

#[derive(Serialize)]
pub struct StandbyStatus {
    pub reachable: bool,
    pub accepts_queries: bool,
    pub in_recovery: Option<bool>,
    pub replay_lsn: Option<Lsn>,
    pub error: Option<String>,
}

/// Gather the status of the archive and the standby, and judge it (`max_age`: the newest
/// segment may not be older). An error only when the archive itself cannot be read.
pub async fn gather(
    settings: &ReceiverSettings,
    max_age: Option<Duration>,
) -> Result<Status, ReceiverError> {
    let dir = settings.archive_dir.as_path();
    let serve = state::serve_running(dir);
    let files = store::list(dir)?;
    let newest = store::newest_arrival(&files);
    let fence = state::read_fence(dir)?;
    let log = standby::restore_record(settings, None).await?;
    let standby = match &settings.conninfo {
        None => None,
        Some(conninfo) => Some(standby_status(conninfo).await),
    };
    let split = |e: Option<RestoreEvent>| match e {
        Some(e) => (Some(e.name), Some(e.at)),
        None => (None, None),
    };
    let (all_gaps, open_gaps) = state::gap_ranges(
        dir,
        store::segment_size(&files),
        log.last_served.as_ref().map(|e| &e.name),
    )?;
    let object_store = match &settings.object_store {
        Some(o) => Some(object_store_status(dir, o).await),
        None => None,
    };
    let (last_served, last_served_at) = split(log.last_served);
    let (last_missed, last_missed_at) = split(log.last_missed);
    Ok(Status {
        archive_dir: dir.display().to_string(),
        cluster_system_identifier: state::read_pin(dir)?,
        files: files.len() as u64,
        bytes: files.iter().map(|f| f.bytes).sum(),
        newest_segment: newest.map(|(n, _)| n),
        newest_segment_arrived_at: newest.map(|(_, t)| t),
        newest_segment_age_seconds: newest
            .and_then(|(_, t)| SystemTime::now().duration_since(t).ok()),
        fenced: fence.is_some(),
        partial: store::open_partial(dir, &files).map(|p| PartialStatus {
            segment: p.segment,
            bytes: p.bytes,
            lsn: p.lsn,
            updated_at: p.modified,
            age_seconds: SystemTime::now()
                .duration_since(p.modified)
                .unwrap_or_default()
                .as_secs_f64(),
        }),
        fence: fence.map(|f| FenceStatus {
            timeline: f.timeline,
            promoted_at_lsn: f.promoted_at_lsn,
            new_timeline: f.new_timeline,
            fenced_at: f.fenced_at,
        }),
        restore: RestoreStatus {
            last_served,
            last_served_at,
            last_missed,
            last_missed_at,
        },
        standby,
        pgdata: pgdata_status(settings),
        serve_pid: serve.as_ref().ok().cloned().flatten(),
        gaps: all_gaps,
        object_store,
        healthy: true,
        problems: Vec::new(),
        cluster_name: settings.cluster.clone(),
    }
    .judged(serve.err().as_ref(), max_age, &open_gaps))
}

impl Status {
    /// With [`problems`] filled in, and `healthy` when there are none.
    fn judged(
        mut self,
        serve_error: Option<&ReceiverError>,
        max_age: Option<Duration>,
        open_gaps: &[GapRange],
    ) -> Self {
        self.problems = problems(&self, serve_error, max_age);
        // A gap the standby has not restored past, plainly, first: nothing else is as grave.
        let gaps = open_gaps.iter().map(|g| g.problem());
        self.problems.splice(0..0, gaps);
        self.healthy = self.problems.is_empty();
        self
    }
}

/// The problems in `st`, one line each saying what is wrong and what to do: `serve` not running
/// on archive_dir (or no way to tell: `serve_error`), the standby unreachable through conninfo,
/// the newest segment older than `max_age` (or none at all). A fenced archive is not a problem
/// by itself: it is what `promote` leaves behind on purpose.
pub fn problems(
    st: &Status,
    serve_error: Option<&ReceiverError>,
    max_age: Option<Duration>,
) -> Vec<String> {
    let mut out = Vec::new();
    match serve_error {
        Some(e) => out.push(format!(
            "cannot tell whether walship-receiver serve is running: {e} (run status as the \
             user of serve, or in its group)"
        )),
        None if st.serve_pid.is_none() => out.push(
            "walship-receiver serve is not running on this archive_dir (start it: systemctl \
             start walship-receiver)"
                .to_string(),
        ),
        None => {}
    }
    if let Some(sb) = st.standby.as_ref().filter(|sb| !sb.reachable) {
        out.push(format!(
            "the standby is unreachable through conninfo: {} (start it, or correct conninfo)",
            sb.error.as_deref().unwrap_or("no answer")
        ));
    }
    if let Some(p) = &st.pgdata {
        out.push(match p.state {
            "absent" => format!(
                "no standby yet: pgdata {} does not exist (run walship-sender basebackup on the primary)",
                p.path
            ),
            _ => format!(
                "pgdata {} holds an unfinished base backup ({:?}, started {}): PostgreSQL will not start there; run walship-sender basebackup on the primary again (it replaces it)",
                p.path,
                p.label.as_deref().unwrap_or(""),
                p.started.as_deref().unwrap_or("?")
            ),
        });
    }
    // The gaps the pg_wal valve left are added by `Status::judged` (see `state::gap_ranges`).
    if let Some(e) = st.object_store.as_ref().and_then(|o| o.error.as_ref()) {
        out.push(format!(
            "the object store cannot be read: {e} (check [object_store] and its credentials)"
        ));
    }
    if let Some(max) = max_age {
        match (&st.newest_segment, st.newest_segment_age_seconds) {
            (Some(name), Some(age)) if age > max => out.push(format!(
                "the newest segment {name} arrived {} ago, longer than --max-age {} (is the \
                 primary archiving? see its log for walship-sender push)",
                human::duration(age),
                human::duration(max)
            )),
            (Some(_), _) => {}
            (None, _) => out.push(format!(
                "no segment stored yet, and --max-age {} asks for one (is the primary \
                 archiving? see its log for walship-sender push)",
                human::duration(max)
            )),
        }
    }
    out
}

fn pgdata_status(settings: &ReceiverSettings) -> Option<PgdataStatus> {
    let path = settings.pgdata.as_ref()?;
    let shown = path.display().to_string();
    match crate::target::status(Some(path))? {
        crate::target::TargetStatus::Absent => Some(PgdataStatus {
            path: shown,
            state: "absent",
            label: None,
            started: None,
        }),
        crate::target::TargetStatus::Unfinished(m) => Some(PgdataStatus {
            path: shown,
            state: "unfinished_backup",
            label: Some(m.label),
            started: Some(m.started),
        }),
    }
}

async fn object_store_status(
    dir: &std::path::Path,
    o: &walship_common::sys::config::ObjectStoreSettings,
) -> ObjectStoreStatus {
    let mut st = ObjectStoreStatus {
        url: o.url.clone(),
        backlog_files: 0,
        backlog_bytes: 0,
        objects: None,
        newest_segment: None,
        error: None,
    };
    match crate::objstore::backlog(dir) {
        Ok(b) => (st.backlog_files, st.backlog_bytes) = (b.files, b.bytes),
        Err(e) => st.error = Some(e.to_string()),
    }
    let listed = match crate::objstore::Bucket::open(o) {
        Ok(bucket) => bucket.list().await,
        Err(e) => Err(e),
    };
    match listed {
        Ok(files) => {
            st.objects = Some(files.len() as u64);
            st.newest_segment =
                walship_common::state::newest_segment(files.iter().map(|f| &f.name));
        }
        Err(e) => st.error = Some(e.to_string()),
    }
    st
}

async fn standby_status(conninfo: &str) -> StandbyStatus {
    let mut s = StandbyStatus {
        reachable: false,
        accepts_queries: false,
        in_recovery: None,
        replay_lsn: None,
        error: None,
    };
    match standby::connect(conninfo, Duration::from_secs(3)).await {
        Ok(Connected::WarmStandby) => {
            // Up, refusing connections during recovery: a warm standby.
            s.reachable = true;
            s.in_recovery = Some(true);
        }
        Ok(Connected::Client(c)) => {
            s.reachable = true;
            s.accepts_queries = true;
            match standby::probe(&c).await {
                Ok(p) => {
                    s.in_recovery = Some(p.in_recovery);
                    s.replay_lsn = p.replay_lsn;
                }
                Err(e) => s.error = Some(e.to_string()),
            }
        }
        Err(e) => s.error = Some(e.to_string()),
    }
    s
}

/// The human form:
///
/// ```text
/// archive_dir:      /var/lib/walship/archive
/// cluster:          7372041215042384562
/// stored:           12 files, 192.0 MiB
/// newest segment:   00000001000000000000000C (arrived 2024-05-01T12:00:03Z, 5m 3s ago)
/// fenced:           no
/// restore:          last served 00000001000000000000000C (2024-05-01T12:00:04Z), last missed ...
/// standby:          in recovery, replay LSN 0/C000060
/// serve:            running, pid 4242
/// health:           ok
/// ```
///
/// or, instead of `health: ok`, one `PROBLEM: ...` line per problem.
pub fn print_human(s: &Status) {
    if let Some(name) = &s.cluster_name {
        println!("cluster name:     {name}");
    }
    println!("archive_dir:      {}", s.archive_dir);
    match s.cluster_system_identifier {
        Some(id) => println!("cluster:          {id}"),
        None => println!("cluster:          not pinned yet"),
    }
    println!(
        "stored:           {} files, {}",
        s.files,
        human::size(s.bytes)
    );
    match (&s.newest_segment, s.newest_segment_arrived_at) {
        (Some(n), Some(at)) => println!(
            "newest segment:   {n} (arrived {}, {} ago)",
            human::timestamp(at),
            s.newest_segment_age_seconds
                .map(human::duration)
                .unwrap_or_else(|| "moments".into())
        ),
        _ => println!("newest segment:   none"),
    }
    match &s.fence {
        Some(f) => println!(
            "fenced:           yes, since {}: timeline {} {}{}",
            human::timestamp(f.fenced_at),
            f.timeline,
            match f.promoted_at_lsn {
                Some(lsn) => format!("closed at {lsn}"),
                None => format!("closed, {PROMOTION_IN_PROGRESS}"),
            },
            f.new_timeline
                .map(|t| format!(", standby now on timeline {t}"))
                .unwrap_or_default()
        ),
        None => println!("fenced:           no"),
    }
    match &s.partial {
        Some(p) => println!(
            "open segment:     {}.partial, {} up to LSN {} (updated {}, {} ago)",
            p.segment,
            human::size(p.bytes),
            p.lsn,
            human::timestamp(p.updated_at),
            human::duration(Duration::from_secs_f64(p.age_seconds))
        ),
        None => println!("open segment:     none"),
    }
    let event = |name: &Option<WalFileName>, at: Option<SystemTime>| match (name, at) {
        (Some(n), Some(at)) => format!("{n} ({})", human::timestamp(at)),
        _ => "-".to_string(),
    };
    println!(
        "restore:          last served {}, last missed {}",
        event(&s.restore.last_served, s.restore.last_served_at),
        event(&s.restore.last_missed, s.restore.last_missed_at)
    );
    println!("standby:          {}", standby_line(s.standby.as_ref()));
    for g in &s.gaps {
        println!(
            "gap:              {}..{} ({} segment(s) dropped on the primary)",
            g.first, g.last, g.segments
        );
    }
    if let Some(p) = &s.pgdata {
        match p.state {
            "absent" => println!("pgdata:           {} does not exist yet (no base backup)", p.path),
            _ => println!(
                "pgdata:           {}: UNFINISHED base backup {:?} (started {}); PostgreSQL will not start there",
                p.path,
                p.label.as_deref().unwrap_or(""),
                p.started.as_deref().unwrap_or("?")
            ),
        }
    }
    if let Some(o) = &s.object_store {
        println!(
            "object store:     {}: {} objects, newest segment {}; upload backlog {} files, {}",
            o.url,
            o.objects.map_or("?".to_string(), |n| n.to_string()),
            o.newest_segment
                .map_or("none".to_string(), |n| n.to_string()),
            o.backlog_files,
            human::size(o.backlog_bytes)
        );
    }
    match &s.serve_pid {
        Some(pid) => println!("serve:            running, pid {pid}"),
        None => println!("serve:            not running"),
    }
    if s.healthy {
        println!("health:           ok");
    }
    for problem in &s.problems {
        println!("PROBLEM: {problem}");
    }
}

fn standby_line(standby: Option<&StandbyStatus>) -> String {
    let Some(st) = standby else {
        return "no conninfo configured".into();
    };
    if !st.reachable {
        return format!("unreachable: {}", st.error.as_deref().unwrap_or("?"));
    }
    let state = match st.in_recovery {
        Some(true) if !st.accepts_queries => "in recovery (warm: no queries)",
        Some(true) => "in recovery",
        Some(false) => "NOT in recovery (promoted)",
        None => "state unknown",
    };
    let lsn = st
        .replay_lsn
        .map(|l| l.to_string())
        .unwrap_or_else(|| "unknown".into());
    match &st.error {
        Some(e) => format!("{state}, replay LSN {lsn} ({e})"),
        None => format!("{state}, replay LSN {lsn}"),
    }
}

/// `Some(v)` as the string `v` prints as, `None` as null.
fn text<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

fn text_always<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// RFC 3339, UTC, with the sub-second digits `status --json` has always printed.
fn rfc3339<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    text(&t.map(|t| human::rfc3339(t, true)), s)
}

fn rfc3339_always<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&human::rfc3339(*t, true))
}

fn promotion_point<S: Serializer>(lsn: &Option<Lsn>, s: S) -> Result<S::Ok, S::Error> {
    match lsn {
        Some(lsn) => s.collect_str(lsn),
        None => s.serialize_str(PROMOTION_IN_PROGRESS),
    }
}

fn seconds<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_714_564_803_250);
        Status {
            archive_dir: "/a".into(),
            cluster_system_identifier: Some(SystemId(7_372_041_215_042_384_562)),
            files: 2,
            bytes: 16 << 20,
            newest_segment: "000000010000000000000003".parse().ok(),
            newest_segment_arrived_at: Some(at),
            newest_segment_age_seconds: Some(Duration::from_millis(1500)),
            fenced: true,
            fence: Some(FenceStatus {
                timeline: TimelineId(1),
                promoted_at_lsn: None,
                new_timeline: None,
                fenced_at: at,
            }),
            partial: None,
            restore: RestoreStatus {
                last_served: "000000010000000000000003".parse().ok(),
                last_served_at: Some(at),
                last_missed: None,
                last_missed_at: None,
            },
            pgdata: None,
            standby: Some(StandbyStatus {
                reachable: true,
                accepts_queries: true,
                in_recovery: Some(true),
                replay_lsn: Some(Lsn(0x3000060)),
                error: None,
            }),
            serve_pid: Some("4242".into()),
            gaps: Vec::new(),
            object_store: None,
            healthy: true,
            problems: Vec::new(),
            cluster_name: None,
        }
    }

    #[test]
    fn json_keeps_its_documented_shape() {
        let st = sample();
        let json = serde_json::to_value(&st).unwrap();
        let expected = serde_json::json!({
            "archive_dir": "/a",
            "cluster_system_identifier": "7372041215042384562",
            "files": 2,
            "bytes": 16777216,
            "newest_segment": "000000010000000000000003",
            "newest_segment_arrived_at": "2024-05-01T12:00:03.25Z",
            "newest_segment_age_seconds": 1.5,
            "fenced": true,
            "fence": {
                "timeline": 1,
                "promoted_at_lsn": "promotion in progress",
                "new_timeline": null,
                "fenced_at": "2024-05-01T12:00:03.25Z"
            },
            "partial": null,
            "restore": {
                "last_served": "000000010000000000000003",
                "last_served_at": "2024-05-01T12:00:03.25Z",
                "last_missed": null,
                "last_missed_at": null
            },
            "standby": {
                "reachable": true,
                "accepts_queries": true,
                "in_recovery": true,
                "replay_lsn": "0/3000060",
                "error": null
            },
            "pgdata": null,
            "serve_pid": "4242",
            "gaps": [],
            "object_store": null,
            "healthy": true,
            "problems": [],
            "cluster_name": null
        });
        assert_eq!(json, expected);
    }

    #[test]
    fn a_running_serve_and_a_reachable_standby_are_healthy_even_fenced() {
        let st = sample().judged(None, Some(Duration::from_secs(60)), &[]);
        assert!(st.healthy && st.fenced, "{:?}", st.problems);
        assert!(st.problems.is_empty());
    }

    #[test]
    fn each_problem_is_named_with_what_to_do() {
        let mut st = sample();
        st.serve_pid = None;
        st.standby = Some(StandbyStatus {
            reachable: false,
            accepts_queries: false,
            in_recovery: None,
            replay_lsn: None,
            error: Some("connection refused".into()),
        });
        st.newest_segment_age_seconds = Some(Duration::from_secs(11 * 60));
        let st = st.judged(None, Some(Duration::from_secs(600)), &[]);
        assert!(!st.healthy);
        assert_eq!(
            st.problems,
            [
                "walship-receiver serve is not running on this archive_dir (start it: \
                 systemctl start walship-receiver)",
                "the standby is unreachable through conninfo: connection refused (start it, \
                 or correct conninfo)",
                "the newest segment 000000010000000000000003 arrived 11m ago, longer than \
                 --max-age 10m (is the primary archiving? see its log for walship-sender push)",
            ]
        );
    }

    #[test]
    fn max_age_wants_a_segment_and_no_standby_is_no_problem() {
        let mut st = sample();
        st.standby = None;
        st.newest_segment = None;
        st.newest_segment_age_seconds = None;
        assert!(st.judged(None, None, &[]).healthy);
        let mut st = sample();
        st.newest_segment = None;
        st.newest_segment_age_seconds = None;
        let st = st.judged(None, Some(Duration::from_secs(60)), &[]);
        assert_eq!(st.problems.len(), 1, "{:?}", st.problems);
        assert!(st.problems[0].starts_with("no segment stored yet, and --max-age 1m"));
        let err = ReceiverError::ArchiveDir {
            path: "/a/walship.lock".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let st = sample().judged(Some(&err), None, &[]);
        assert!(!st.healthy);
        assert!(
            st.problems[0].starts_with("cannot tell whether walship-receiver serve is running"),
            "{:?}",
            st.problems
        );
    }

    #[test]
    fn a_gap_comes_first_plainly() {
        let seg = |n: &str| n.parse::<SegmentName>().unwrap();
        let gap = GapRange {
            first: seg("000000010000000000000005"),
            last: seg("000000010000000000000007"),
            segments: 3,
        };
        let mut st = sample();
        st.gaps = vec![gap];
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(
            json["gaps"],
            serde_json::json!([{
                "first": "000000010000000000000005",
                "last": "000000010000000000000007",
                "segments": 3
            }])
        );
        let st = st.judged(None, None, &[gap]);
        assert!(!st.healthy);
        assert_eq!(
            st.problems,
            [
                "segments 000000010000000000000005..000000010000000000000007 were dropped on the \
              primary to keep it running; this standby cannot be promoted past \
              000000010000000000000005; take a new base backup"
            ]
        );
    }
}
