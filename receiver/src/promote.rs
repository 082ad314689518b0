//! `walship-receiver promote`: manual failover. Wait until the standby replayed every stored
//! segment of its timeline (known from the restore record: it asked for the one after the
//! newest; or, for a hot standby, from its replay LSN at the end of the newest), fence the
//! standby's timeline, promote, and report what the operator may have lost. A failed
//! promotion puts back the fence that was there before.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use tracing::info;
use walship_common::state::{
    newest_segment, replay_state, waiting_for, Fence, Replay, ReplayState, FENCE_FILE,
};
use walship_common::sys::config::ReceiverSettings;
use walship_common::sys::pg_control;
use walship_common::wal::name::{SegNo, TimelineId};
use walship_common::{Lsn, SegmentName, WalFileName};

use crate::error::ReceiverError;
use crate::standby::{self, Connected};
use crate::{state, store};
use walship_common::human;

/// How long PostgreSQL gets to finish promotion (`pg_promote(wait_seconds)`).
const PROMOTE_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

pub struct Options {
    pub timeout: Duration,
    pub no_wait_replay: bool,
    /// Promote at the end of the segment before a gap the primary's pg_wal valve left,
    /// losing everything after it (`--accept-gap`); without it such a gap refuses promotion.
    pub accept_gap: bool,
}

pub async fn promote(settings: &ReceiverSettings, opts: &Options) -> Result<(), ReceiverError> {
    let conninfo = settings
        .conninfo
        .clone()
        .ok_or_else(|| ReceiverError::NoConninfo {
            config: settings.config_path.clone(),
        })?;
    let dir = settings.archive_dir.as_path();
    // Kept to be put back if this promotion fails: an earlier promotion stays fenced.
    let previous = state::read_fence(dir)?;
    if let Some(f) = previous.as_ref().filter(|f| f.new_timeline.is_some()) {
        eprintln!(
            "walship-receiver: note: the archive was fenced before (timeline {} promoted at {})",
            f.timeline,
            f.promoted_at_text()
        );
    }
    let client = connect_in_recovery(&conninfo).await?;
    let warm = client.is_none();
    let seg_size = segment_size(dir)?;

    let gap = gap_in_the_way(settings, client.as_ref(), seg_size, opts.accept_gap).await?;

    let deadline = Instant::now() + opts.timeout;
    if !opts.no_wait_replay {
        wait_for_replay(
            settings,
            &conninfo,
            warm,
            seg_size,
            gap,
            deadline,
            opts.timeout,
        )
        .await?;
    }

    // Fence first, then check once more, then promote: no old-timeline segment can be stored
    // after the last check and be missing from the new timeline (write_fence waits for
    // uploads that passed their fence check to be linked).
    let newest = newest_segment(store::list(dir)?.iter().map(|f| &f.name));
    let old_timeline = fence_timeline(
        standby_timeline(settings, client.as_ref()).await,
        newest.map(|s| s.timeline),
    );
    // No promotion LSN yet: uploads that must be checked against it wait for a retry.
    let mut fence = Fence {
        timeline: old_timeline,
        promoted_at_lsn: None,
        new_timeline: None,
        fenced_at: SystemTime::now(),
    };
    state::write_fence(dir, &fence)?;
    let promoting = async {
        if !opts.no_wait_replay {
            let last_check = deadline.max(Instant::now() + Duration::from_secs(5));
            wait_for_replay(
                settings,
                &conninfo,
                warm,
                seg_size,
                gap,
                last_check,
                opts.timeout,
            )
            .await?;
        }
        let started = Instant::now();
        let client = if warm {
            promote_warm(settings, &conninfo).await?
        } else {
            promote_hot(&conninfo).await?
        };
        Ok((client, started.elapsed()))
    };
    let (client, writable_after) = match promoting.await {
        Ok(done) => done,
        Err(e) => {
            unfence(dir, previous.as_ref());
            return Err(e);
        }
    };
    let promoted = standby::promoted(&client).await?;
    fence.promoted_at_lsn = Some(promoted.lsn);
    fence.new_timeline = promoted.timeline;
    state::write_fence(dir, &fence)?;
    report(dir, &fence, promoted.lsn, writable_after)?;
    info!(lsn = %promoted.lsn, "promoted");
    Ok(())
}

/// Connect to the standby and check that it is in recovery; `None` for a warm standby (no
/// connections during recovery), which is then followed through the restore record.
async fn connect_in_recovery(
    conninfo: &str,
) -> Result<Option<tokio_postgres::Client>, ReceiverError> {
    match standby::connect(conninfo, Duration::from_secs(10)).await? {
        Connected::WarmStandby => {
            eprintln!("walship-receiver: the standby does not accept connections during recovery (hot_standby = off): following replay through the restore record, promoting through pgdata");
            Ok(None)
        }
        Connected::Client(client) => {
            if !standby::probe(&client).await?.in_recovery {
                return Err(ReceiverError::NotInRecovery);
            }
            Ok(Some(client))
        }
    }
}

/// What the operator learns once the standby is promoted: how long it took, where the new
/// timeline begins and how old the newest stored segment was (WAL after it was lost).
fn report(
    dir: &Path,
    fence: &Fence,
    lsn: Lsn,
    writable_after: Duration,
) -> Result<(), ReceiverError> {
    let newest_age = store::newest_arrival(&store::list(dir)?).and_then(|(name, t)| {
        SystemTime::now()
            .duration_since(t)
            .ok()
            .map(|age| (name, age))
    });
    println!(
        "promoted: the standby is writable after {:.1}s",
        writable_after.as_secs_f64()
    );
    println!("promotion LSN: {lsn}");
    println!(
        "timeline: {} -> {}",
        fence.timeline,
        fence
            .new_timeline
            .map(|t| t.to_string())
            .unwrap_or_else(|| "unknown".into())
    );
    match newest_age {
        Some((name, age)) => println!(
            "newest stored segment: {name}, arrived {} ago; WAL the old primary wrote after it was not received",
            human::duration(age)
        ),
        None => println!("no segment was stored"),
    }
    println!(
        "fenced: segments of timeline {} are now refused; history files still go through",
        fence.timeline
    );
    Ok(())
}

/// The timeline the fence closes: the standby's own (from its control data, a lower bound
/// during recovery), or the newest stored segment's if that is newer (a standby caught up with
/// the archive replays it, though its control data may not say so before a restartpoint);
/// 1 when neither is known.
fn fence_timeline(standby: Option<TimelineId>, newest_stored: Option<TimelineId>) -> TimelineId {
    standby.max(newest_stored).unwrap_or(TimelineId(1))
}

/// The standby's timeline from its control data: over SQL when it answers, else from
/// `pgdata/global/pg_control` (CRC-checked). `None` (with a note) when neither works.
async fn standby_timeline(
    settings: &ReceiverSettings,
    client: Option<&tokio_postgres::Client>,
) -> Option<TimelineId> {
    let mut why = Vec::new();
    if let Some(c) = client {
        match standby::position(c).await {
            Ok(p) if p.timeline.is_some() => return p.timeline,
            Ok(_) => why.push("the standby did not say".to_string()),
            Err(e) => why.push(e.to_string()),
        }
    }
    if let Some(pgdata) = &settings.pgdata {
        match pg_control::read_timelines(pgdata) {
            Ok(t) => return Some(t.newest()),
            Err(e) => why.push(e.to_string()),
        }
    }
    if why.is_empty() {
        why.push("hot_standby is off and no pgdata is configured".into());
    }
    eprintln!(
        "walship-receiver: note: the standby's timeline is unknown ({}): fencing the newest stored segment's timeline",
        why.join("; ")
    );
    None
}

fn unfence(dir: &Path, previous: Option<&Fence>) {
    // Promotion did not happen: do not keep a healthy primary from archiving, but an earlier
    // promotion's fence stays.
    if let Err(e) = state::restore_fence(dir, previous) {
        let what = match previous {
            Some(_) => "put back the previous fence",
            None => "remove the fence",
        };
        eprintln!(
            "walship-receiver: could not {what} after a failed promotion: {e}; check {} by hand",
            dir.join(FENCE_FILE).display()
        );
    }
}

/// The first segment of a gap the primary's pg_wal valve left and the standby has not restored
/// past (`walship.gaps`, see `state::gap_ranges`): an error without `accept_gap`, else the
/// segment before which replay is to end (said on stderr).
async fn gap_in_the_way(
    settings: &ReceiverSettings,
    client: Option<&tokio_postgres::Client>,
    seg_size: u64,
    accept_gap: bool,
) -> Result<Option<SegmentName>, ReceiverError> {
    let served = standby::restore_record(settings, client).await?.last_served;
    let (_, open) = state::gap_ranges(
        &settings.archive_dir,
        seg_size,
        served.as_ref().map(|e| &e.name),
    )?;
    let Some(first) = open.iter().min_by_key(|g| g.first.segno(seg_size).ok()) else {
        return Ok(None);
    };
    let before = first
        .first
        .segno(seg_size)
        .ok()
        .filter(|n| n.0 > 0)
        .map(|n| SegmentName::from_segno(first.first.timeline, SegNo(n.0 - 1), seg_size));
    let end = before
        .map(|b| format!("the end of {b}"))
        .unwrap_or_else(|| "where the standby is".into());
    if !accept_gap {
        return Err(ReceiverError::Gap(format!(
            "{}. NOT promoted: re-run with --accept-gap to promote at {end} (everything after it is lost), or rebuild the standby from a new base backup",
            first.problem()
        )));
    }
    eprintln!(
        "walship-receiver: --accept-gap: segments {}..{} were dropped on the primary; promoting at {end}: WAL after it is lost",
        first.first, first.last
    );
    Ok(Some(first.first))
}

/// Whether `name` lies before the gap starting at `gap` (anything when there is none).
fn before_gap(name: &WalFileName, gap: Option<SegmentName>, seg_size: u64) -> bool {
    match (name, gap) {
        (WalFileName::Segment(s), Some(g)) => match (s.segno(seg_size), g.segno(seg_size)) {
            (Ok(a), Ok(b)) => a < b,
            _ => true,
        },
        _ => true,
    }
}

/// Wait until the standby replayed every stored segment of its timeline, or with `gap` every
/// stored segment before it.
async fn wait_for_replay(
    settings: &ReceiverSettings,
    conninfo: &str,
    warm: bool,
    seg_size: u64,
    gap: Option<SegmentName>,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), ReceiverError> {
    let dir = settings.archive_dir.as_path();
    let client = if warm {
        None
    } else {
        match standby::connect(conninfo, Duration::from_secs(10)).await? {
            Connected::Client(c) => Some(c),
            Connected::WarmStandby => None,
        }
    };
    let mut last_progress = Instant::now() - PROGRESS_EVERY;
    loop {
        let stored = store::list(dir)?;
        let newest = newest_segment(
            stored
                .iter()
                .map(|f| &f.name)
                .filter(|n| before_gap(n, gap, seg_size)),
        );
        let replay: Option<Replay> = match &client {
            // No replay position yet (nothing replayed): as good as unknown.
            Some(c) => standby::position(c).await?.replay(),
            None => None,
        };
        let missed = standby::restore_record(settings, client.as_ref())
            .await?
            .last_missed
            .map(|e| e.name);
        let state = replay_state(newest, seg_size, replay, missed.as_ref());
        let (newest, gap) = match state {
            ReplayState::NothingArchived | ReplayState::Caught { .. } => return Ok(()),
            ReplayState::Behind { newest, gap, .. } => (newest, gap),
        };
        let waiting = waiting_for(&newest, seg_size, replay);
        if Instant::now() >= deadline {
            let why = match gap {
                Some(g) => format!("the standby is waiting for {g}, which is not in the archive while {newest} is (a gap: push the missing segment from the primary's pg_wal or an archive, or accept losing everything after it with --no-wait-replay)"),
                None => format!("{waiting}; check the standby's log for restore_command errors"),
            };
            return Err(ReceiverError::NotCaughtUp(format!(
                "the standby did not replay everything in the archive within {}: {why}. NOT promoted; re-run with a larger --timeout, or with --no-wait-replay to promote now",
                human::duration(timeout)
            )));
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            eprintln!("walship-receiver: waiting for replay: {waiting}");
            last_progress = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn promote_hot(conninfo: &str) -> Result<tokio_postgres::Client, ReceiverError> {
    let client = match standby::connect(conninfo, Duration::from_secs(10)).await? {
        Connected::Client(c) => c,
        Connected::WarmStandby => {
            return Err(ReceiverError::Promotion(
                "the standby stopped accepting connections".into(),
            ))
        }
    };
    let sql = format!("SELECT pg_promote(true, {})", PROMOTE_WAIT.as_secs());
    let done: bool = client
        .query_one(&sql, &[])
        .await
        .map_err(|e| ReceiverError::Promotion(format!("pg_promote: {e}")))?
        .get(0);
    if !done {
        return Err(ReceiverError::Promotion(format!(
            "pg_promote did not finish within {}; check the standby's log",
            human::duration(PROMOTE_WAIT)
        )));
    }
    wait_writable(conninfo).await
}

/// Warm standby: no SQL during recovery, so do what `pg_ctl promote` does: create the
/// `promote` signal file in the data directory and send SIGUSR1 to the postmaster.
async fn promote_warm(
    settings: &ReceiverSettings,
    conninfo: &str,
) -> Result<tokio_postgres::Client, ReceiverError> {
    let pgdata = settings.pgdata.as_ref().ok_or_else(|| {
        ReceiverError::Promotion("the standby runs with hot_standby = off, so promote needs `pgdata` in the receiver config to signal it".into())
    })?;
    let pid_text = std::fs::read_to_string(pgdata.join("postmaster.pid")).map_err(|e| {
        ReceiverError::Promotion(format!(
            "read {}/postmaster.pid: {e}; is the standby running?",
            pgdata.display()
        ))
    })?;
    let pid: i32 = pid_text
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| {
            ReceiverError::Promotion(format!(
                "{}/postmaster.pid has no pid on its first line; is the standby running?",
                pgdata.display()
            ))
        })?;
    std::fs::write(pgdata.join("promote"), b"").map_err(|e| {
        ReceiverError::Promotion(format!("create {}/promote: {e}", pgdata.display()))
    })?;
    let postmaster = rustix::process::Pid::from_raw(pid).ok_or_else(|| {
        ReceiverError::Promotion(format!(
            "{}/postmaster.pid names pid {pid}, which is no process; is the standby running?",
            pgdata.display()
        ))
    })?;
    rustix::process::kill_process(postmaster, rustix::process::Signal::USR1).map_err(|e| {
        let hint = if e == rustix::io::Errno::PERM {
            "run promote as the PostgreSQL user or root"
        } else {
            "is the standby running?"
        };
        ReceiverError::Promotion(format!(
            "could not signal the postmaster (pid {pid}) to promote: {}; {hint}",
            std::io::Error::from(e)
        ))
    })?;
    wait_writable(conninfo).await
}

/// Poll until the server accepts connections and is out of recovery.
async fn wait_writable(conninfo: &str) -> Result<tokio_postgres::Client, ReceiverError> {
    let deadline = Instant::now() + PROMOTE_WAIT;
    loop {
        if let Ok(Connected::Client(c)) = standby::connect(conninfo, Duration::from_secs(5)).await {
            if let Ok(p) = standby::probe(&c).await {
                if !p.in_recovery {
                    return Ok(c);
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(ReceiverError::Promotion(format!(
                "the standby was still in recovery {} after the promote request; check its log",
                human::duration(PROMOTE_WAIT)
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Segment size from the stored segments (all have the same size), 16 MiB if none.
fn segment_size(dir: &Path) -> Result<u64, ReceiverError> {
    Ok(store::segment_size(&store::list(dir)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item10b_fence_takes_the_standbys_timeline_or_the_newer_archive() {
        let t = |n| Some(TimelineId(n));
        // A standby on timeline 2 over an archive of timeline 1 only, or an empty one.
        assert_eq!(fence_timeline(t(2), t(1)), TimelineId(2));
        assert_eq!(fence_timeline(t(2), None), TimelineId(2));
        // Its control data lags behind a timeline switch it replayed from the archive.
        assert_eq!(fence_timeline(t(1), t(2)), TimelineId(2));
        assert_eq!(fence_timeline(None, t(3)), TimelineId(3));
        assert_eq!(fence_timeline(None, None), TimelineId(1));
    }
}
