//! `walship-receiver status [--json]`: what the archive holds, whether it is fenced, and what
//! the standby says. The JSON form is a stable interface for monitoring (documented in the
//! README): fields are only ever added.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use walship_common::state::RestoreEvent;
use walship_common::sys::config::ReceiverSettings;

use crate::error::ReceiverError;
use crate::promote::newest_arrival;
use crate::standby::{self, Connected};
use crate::store;

#[derive(Serialize)]
pub struct Status {
    pub archive_dir: String,
    /// System identifier the archive is pinned to, as a decimal string (it exceeds 2^53).
    pub cluster_system_identifier: Option<String>,
    /// WAL files stored (segments, history, backup and partial files).
    pub files: u64,
    pub bytes: u64,
    pub newest_segment: Option<String>,
    /// RFC 3339, UTC.
    pub newest_segment_arrived_at: Option<String>,
    pub newest_segment_age_seconds: Option<f64>,
    pub fenced: bool,
    pub fence: Option<FenceStatus>,
    pub restore: RestoreStatus,
    /// Absent when no conninfo is configured.
    pub standby: Option<StandbyStatus>,
}

#[derive(Serialize)]
pub struct FenceStatus {
    pub timeline: u32,
    pub promoted_at_lsn: String,
    pub new_timeline: Option<u32>,
    pub fenced_at: String,
}

#[derive(Serialize)]
pub struct RestoreStatus {
    pub last_served: Option<String>,
    pub last_served_at: Option<String>,
    pub last_missed: Option<String>,
    pub last_missed_at: Option<String>,
}

#[derive(Serialize)]
pub struct StandbyStatus {
    pub reachable: bool,
    pub accepts_queries: bool,
    pub in_recovery: Option<bool>,
    pub replay_lsn: Option<String>,
    pub error: Option<String>,
}

pub async fn gather(settings: &ReceiverSettings) -> Result<Status, ReceiverError> {
    let dir = settings.archive_dir.as_path();
    let files = store::list(dir)?;
    let newest = newest_arrival(dir)?;
    let fence = store::read_fence(dir)?;
    let log = standby::restore_record(settings, None).await?;
    let standby = match &settings.conninfo {
        None => None,
        Some(conninfo) => Some(standby_status(conninfo).await),
    };
    let event = |e: &Option<RestoreEvent>| {
        (
            e.as_ref().map(|e| e.name.clone()),
            e.as_ref()
                .map(|e| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(e.at_unix_ms))),
        )
    };
    let (last_served, last_served_at) = event(&log.last_served);
    let (last_missed, last_missed_at) = event(&log.last_missed);
    Ok(Status {
        archive_dir: dir.display().to_string(),
        cluster_system_identifier: store::read_pin(dir)?.map(|s| s.to_string()),
        files: files.len() as u64,
        bytes: files.iter().map(|f| f.bytes).sum(),
        newest_segment: newest.map(|(n, _)| n.to_string()),
        newest_segment_arrived_at: newest.map(|(_, t)| rfc3339(t)),
        newest_segment_age_seconds: newest
            .and_then(|(_, t)| SystemTime::now().duration_since(t).ok())
            .map(|d| d.as_secs_f64()),
        fenced: fence.is_some(),
        fence: fence.map(|f| FenceStatus {
            timeline: f.timeline,
            promoted_at_lsn: f.promoted_at_lsn,
            new_timeline: f.new_timeline,
            fenced_at: rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(f.fenced_at_unix_ms)),
        }),
        restore: RestoreStatus {
            last_served,
            last_served_at,
            last_missed,
            last_missed_at,
        },
        standby,
    })
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
                    s.replay_lsn = p.replay_lsn.map(|l| l.to_string());
                }
                Err(e) => s.error = Some(e.to_string()),
            }
        }
        Err(e) => s.error = Some(e.to_string()),
    }
    s
}

pub fn print_human(s: &Status) {
    println!("archive_dir:      {}", s.archive_dir);
    println!(
        "cluster:          {}",
        s.cluster_system_identifier
            .as_deref()
            .unwrap_or("not pinned yet")
    );
    println!("stored:           {} files, {} bytes", s.files, s.bytes);
    match (
        &s.newest_segment,
        &s.newest_segment_arrived_at,
        s.newest_segment_age_seconds,
    ) {
        (Some(n), Some(at), Some(age)) => {
            println!("newest segment:   {n} (arrived {at}, {age:.0}s ago)")
        }
        _ => println!("newest segment:   none"),
    }
    match &s.fence {
        Some(f) => println!(
            "fenced:           yes: timeline {} closed at {}{}",
            f.timeline,
            f.promoted_at_lsn,
            f.new_timeline
                .map(|t| format!(", standby now on timeline {t}"))
                .unwrap_or_default()
        ),
        None => println!("fenced:           no"),
    }
    println!(
        "restore:          last served {}, last missed {}",
        s.restore.last_served.as_deref().unwrap_or("-"),
        s.restore.last_missed.as_deref().unwrap_or("-")
    );
    match &s.standby {
        None => println!("standby:          no conninfo configured"),
        Some(st) if !st.reachable => println!(
            "standby:          unreachable: {}",
            st.error.as_deref().unwrap_or("?")
        ),
        Some(st) => println!(
            "standby:          {}, replay LSN {}",
            match st.in_recovery {
                Some(true) if !st.accepts_queries => "in recovery (warm: no queries)",
                Some(true) => "in recovery",
                Some(false) => "NOT in recovery (promoted)",
                None => "state unknown",
            },
            st.replay_lsn.as_deref().unwrap_or("unknown")
        ),
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "?".into())
}
