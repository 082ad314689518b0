//! `walship-receiver promote`: manual failover. Wait until the standby replayed every stored
//! segment of its timeline (known from the restore record: it asked for the one after the
//! newest; or, for a hot standby, from its replay LSN at the end of the newest), fence the
//! standby's timeline, promote, and report what the operator may have lost. A failed
//! promotion puts back the fence that was there before.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use tracing::info;
use walship_common::state::{
    newest_segment, replay_state, waiting_for, Fence, Replay, ReplayState, FENCE_FILE,
};
use walship_common::sys::config::ReceiverSettings;
use walship_common::sys::durable;
use walship_common::sys::pg_control;
use walship_common::wal::name::{SegNo, TimelineId};
use walship_common::wal::partial::last_record_end;
use walship_common::LongPageHeader;
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
    let mut used = match partial_to_use(dir, old_timeline, seg_size) {
        Ok(u) => u,
        Err(e) => {
            unfence(dir, previous.as_ref());
            return Err(e);
        }
    };
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
        // Fenced: nothing more of the old timeline lands. The open segment's partial, if it
        // goes beyond the newest finished segment, becomes that segment (zero-padded), and the
        // standby replays it before it is promoted.
        if let Some(p) = used.as_mut() {
            let name = p.segment.to_string();
            p.published = publish_padded(dir, p)?;
            if !opts.no_wait_replay {
                let last_check = deadline.max(Instant::now() + Duration::from_secs(30));
                wait_for_partial(settings, &conninfo, warm, p, last_check).await?;
            }
            info!(segment = %name, "the open segment's partial was made available to the standby");
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
            // The padded copy goes with the fence: a primary still alive finishes the segment.
            if let Some(p) = used.as_ref().filter(|p| p.published) {
                if let Err(e) = durable::remove_durably(dir, &p.segment.to_string()) {
                    eprintln!("walship-receiver: could not remove the padded {} after a failed promotion: {e}; remove it by hand", p.segment);
                }
            }
            unfence(dir, previous.as_ref());
            return Err(e);
        }
    };
    // Its content is now under the segment's name; the `.partial` the new primary archives
    // for this segment must find the name free.
    if let Some(p) = &used {
        let pname = format!("{}.partial", p.segment);
        if let Err(e) = durable::remove_durably(dir, &pname) {
            eprintln!("walship-receiver: could not remove {pname}: {e}; remove it by hand");
        }
    }
    let promoted = standby::promoted(&client).await?;
    fence.promoted_at_lsn = Some(promoted.lsn);
    fence.new_timeline = promoted.timeline;
    state::write_fence(dir, &fence)?;
    report(dir, &fence, promoted.lsn, writable_after, used.as_ref())?;
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
    used: Option<&UsedPartial>,
) -> Result<(), ReceiverError> {
    let files = store::list(dir)?;
    let newest_age = files
        .iter()
        .filter(|f| used.is_none_or(|p| f.name != WalFileName::Segment(p.segment)))
        .filter_map(|f| match f.name {
            WalFileName::Segment(s) => Some((s, f.modified)),
            _ => None,
        })
        .max_by_key(|(s, _)| (s.timeline, s.log, s.seg))
        .and_then(|(name, t)| {
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
    match (newest_age, used) {
        (Some((name, age)), None) => println!(
            "newest stored segment: {name}, arrived {} ago; WAL the old primary wrote after it was not received",
            human::duration(age)
        ),
        (Some((name, age)), Some(_)) => println!(
            "newest finished segment: {name}, arrived {} ago",
            human::duration(age)
        ),
        (None, None) => println!("no segment was stored"),
        (None, Some(_)) => println!("no finished segment was stored"),
    }
    if let Some(p) = used {
        println!(
            "partial reached LSN: {} ({}.partial, {} shipped while open; used zero-padded as {})",
            p.lsn,
            p.segment,
            human::size(p.bytes),
            p.segment
        );
        println!(
            "newest shipped byte: {} old when promote started; WAL the old primary flushed after it was not received",
            human::duration(p.age)
        );
    }
    println!(
        "fenced: segments of timeline {} are now refused; history files still go through",
        fence.timeline
    );
    Ok(())
}

/// The open segment's partial that `promote` uses: a `NAME.partial` of the fenced timeline
/// right after the newest finished segment (or with none finished: the archive starts there).
#[derive(Debug)]
struct UsedPartial {
    segment: walship_common::SegmentName,
    bytes: u64,
    seg_size: u64,
    lsn: Lsn,
    /// Age of its newest byte when promote looked.
    age: Duration,
    /// Where the last complete record in it ends: the standby has replayed it once its
    /// replay position is there (`None`: no complete record in it).
    target: Option<Lsn>,
    /// The padded segment was stored by this promote (removed again if promotion fails).
    published: bool,
    published_at: SystemTime,
}

/// The partial to use, if any (see [`UsedPartial`]): one beyond a gap would be unreachable
/// for the standby, and is left out with a note.
fn partial_to_use(
    dir: &Path,
    timeline: TimelineId,
    seg_size: u64,
) -> Result<Option<UsedPartial>, ReceiverError> {
    let files = store::list(dir)?;
    let Some(p) = store::open_partial(dir, &files) else {
        return Ok(None);
    };
    if p.segment.timeline != timeline || p.seg_size != seg_size {
        return Ok(None);
    }
    let newest = newest_segment(
        files
            .iter()
            .map(|f| &f.name)
            .filter(|n| n.timeline() == timeline),
    );
    let (Ok(no), newest_no) = (p.segment.segno(seg_size), newest.map(|n| n.segno(seg_size))) else {
        return Ok(None);
    };
    match newest_no {
        Some(Ok(n)) if n.0 >= no.0 => return Ok(None),
        Some(Ok(n)) if n.0 + 1 < no.0 => {
            eprintln!(
                "walship-receiver: note: {}.partial is not used: the segments between the newest finished one and it are missing",
                p.segment
            );
            return Ok(None);
        }
        _ => {}
    }
    Ok(Some(UsedPartial {
        segment: p.segment,
        bytes: p.bytes,
        seg_size,
        lsn: p.lsn,
        age: SystemTime::now()
            .duration_since(p.modified)
            .unwrap_or_default(),
        target: None,
        published: false,
        published_at: SystemTime::now(),
    }))
}

/// Store the partial, padded with zeros to the segment size, under the segment's name (as one
/// does by hand with pg_receivewal's `.partial` files); finds where its last record ends.
/// True when this call stored it (false: an identical copy was there).
fn publish_padded(dir: &Path, p: &mut UsedPartial) -> Result<bool, ReceiverError> {
    let pname = format!("{}.partial", p.segment);
    let path = dir.join(&pname);
    let failed = |detail: String| ReceiverError::Promotion(format!("use {pname}: {detail}"));
    let file = durable::open_regular(&path)
        .map_err(|e| failed(e.to_string()))?
        .ok_or_else(|| failed("it is gone".into()))?;
    let mut body = Vec::with_capacity(p.seg_size as usize);
    file.take(p.seg_size)
        .read_to_end(&mut body)
        .map_err(|e| failed(format!("read: {e}")))?;
    let header = LongPageHeader::decode(&body).map_err(|e| failed(e.to_string()))?;
    let start = p
        .segment
        .start_lsn(p.seg_size)
        .map_err(|e| failed(e.to_string()))?;
    p.bytes = body.len() as u64;
    p.lsn = Lsn(start.0 + p.bytes);
    p.target = last_record_end(&body, start, u64::from(header.block_size));
    body.resize(p.seg_size as usize, 0);
    p.published_at = SystemTime::now();
    match durable::publish_new(dir, &p.segment.to_string(), &body, store::FILE_MODE) {
        Ok(durable::Published::Stored) => Ok(true),
        Ok(durable::Published::AlreadyIdentical) => Ok(false),
        Err(e) => Err(failed(format!("store it as {}: {e}", p.segment))),
    }
}

/// Wait until the standby has replayed the padded partial: its replay position reached the
/// end of the partial's last record, or (warm standby, or no record in it) `restore` served
/// it: PostgreSQL acts on a promote request only once the WAL it holds is replayed.
async fn wait_for_partial(
    settings: &ReceiverSettings,
    conninfo: &str,
    warm: bool,
    p: &UsedPartial,
    deadline: Instant,
) -> Result<(), ReceiverError> {
    let client = if warm {
        None
    } else {
        match standby::connect(conninfo, Duration::from_secs(10)).await? {
            Connected::Client(c) => Some(c),
            Connected::WarmStandby => None,
        }
    };
    let name = WalFileName::Segment(p.segment);
    let mut last_progress = Instant::now() - PROGRESS_EVERY;
    loop {
        let replay = match &client {
            Some(c) => standby::position(c).await?.lsn,
            None => None,
        };
        if let (Some(r), Some(t)) = (replay, p.target) {
            if r >= t {
                return Ok(());
            }
        }
        let served = standby::restore_record(settings, client.as_ref())
            .await?
            .last_served
            .is_some_and(|e| e.name == name && e.at >= p.published_at);
        if served && (p.target.is_none() || client.is_none()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ReceiverError::NotCaughtUp(format!(
                "the standby did not replay the open segment's partial ({} zero-padded, up to {}) in time (replay LSN {}). NOT promoted; re-run, or with --no-wait-replay to promote now",
                p.segment,
                p.target.map(|t| t.to_string()).unwrap_or_else(|| "?".into()),
                replay.map(|r| r.to_string()).unwrap_or_else(|| "unknown".into()),
            )));
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            eprintln!(
                "walship-receiver: waiting for replay of the open segment's partial {} up to {} (replay LSN {})",
                p.segment,
                p.target.map(|t| t.to_string()).unwrap_or_else(|| "?".into()),
                replay.map(|r| r.to_string()).unwrap_or_else(|| "unknown".into()),
            );
            last_progress = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
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
