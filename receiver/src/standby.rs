//! Talking to the standby PostgreSQL (`conninfo`), for `promote` and `status`. LSNs arrive as
//! `pg_lsn` values (`PgLsn`) and become [`Lsn`] here, at the edge.

use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, NoTls};
use walship_common::state::{Replay, RestoreLog};
use walship_common::sys::config::ReceiverSettings;
use walship_common::wal::name::{SegmentName, TimelineId};
use walship_common::Lsn;

use crate::error::ReceiverError;
use crate::state;

/// A connection attempt's result.
pub enum Connected {
    Client(Client),
    /// The server is up but refuses connections during recovery (hot_standby = off).
    WarmStandby,
}

pub async fn connect(conninfo: &str, timeout: Duration) -> Result<Connected, ReceiverError> {
    let err = |detail: String| ReceiverError::Standby {
        conninfo: conninfo.to_string(),
        detail,
    };
    let attempt = tokio::time::timeout(timeout, tokio_postgres::connect(conninfo, NoTls)).await;
    match attempt {
        Err(_) => Err(err(format!(
            "no answer within {}",
            walship_common::human::duration(timeout)
        ))),
        Ok(Err(e)) if e.code() == Some(&SqlState::CANNOT_CONNECT_NOW) => Ok(Connected::WarmStandby),
        Ok(Err(e)) => Err(err(match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => chain(&e),
        })),
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(Connected::Client(client))
        }
    }
}

/// What a query-able standby says about itself.
pub struct Probe {
    pub in_recovery: bool,
    pub replay_lsn: Option<Lsn>,
}

const PROBE: &str = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()";

pub async fn probe(client: &Client) -> Result<Probe, ReceiverError> {
    let row = client
        .query_one(PROBE, &[])
        .await
        .and_then(|row| {
            Ok(Probe {
                in_recovery: row.try_get(0)?,
                replay_lsn: row.try_get::<_, Option<PgLsn>>(1)?.map(lsn),
            })
        })
        .map_err(|e| query_error(PROBE, &e))?;
    Ok(row)
}

/// Where a hot standby's replay is, as far as it says.
pub struct Position {
    /// `pg_last_wal_replay_lsn()`; `None` before anything was replayed.
    pub lsn: Option<Lsn>,
    /// Its timeline as its control data says (the newest of the last restartpoint's, the
    /// minimum recovery point's and, when streaming, the received timeline: all lag behind
    /// replay, so this is a lower bound).
    pub timeline: Option<TimelineId>,
}

impl Position {
    /// The replay position for [`walship_common::state::replay_state`], once there is one.
    pub fn replay(&self) -> Option<Replay> {
        self.lsn.map(|lsn| Replay {
            lsn,
            timeline: self.timeline,
        })
    }
}

const POSITION: &str = "SELECT pg_last_wal_replay_lsn(), greatest(\
    (SELECT timeline_id FROM pg_control_checkpoint()), \
    (SELECT min_recovery_end_timeline FROM pg_control_recovery()), \
    (SELECT received_tli FROM pg_stat_wal_receiver))::int8";

pub async fn position(client: &Client) -> Result<Position, ReceiverError> {
    let (replayed, timeline) = client
        .query_one(POSITION, &[])
        .await
        .and_then(|row| {
            Ok((
                row.try_get::<_, Option<PgLsn>>(0)?,
                row.try_get::<_, Option<i64>>(1)?,
            ))
        })
        .map_err(|e| query_error(POSITION, &e))?;
    Ok(Position {
        lsn: replayed.map(lsn),
        timeline: timeline
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .map(TimelineId),
    })
}

/// Where the standby's replay stopped and the timeline it writes now, once promoted.
pub struct Promoted {
    pub lsn: Lsn,
    /// From the name of the WAL file it writes (`pg_walfile_name`); `None` if that is not a
    /// segment name.
    pub timeline: Option<TimelineId>,
}

const PROMOTED: &str = "SELECT pg_last_wal_replay_lsn(), pg_walfile_name(pg_current_wal_lsn())";

pub async fn promoted(client: &Client) -> Result<Promoted, ReceiverError> {
    let (replayed, walfile) = client
        .query_one(PROMOTED, &[])
        .await
        .and_then(|row| {
            Ok((
                row.try_get::<_, Option<PgLsn>>(0)?,
                row.try_get::<_, String>(1)?,
            ))
        })
        .map_err(|e| query_error(PROMOTED, &e))?;
    let lsn = replayed
        .map(lsn)
        .ok_or_else(|| ReceiverError::StandbyQuery {
            query: PROMOTED.into(),
            detail: "pg_last_wal_replay_lsn() is NULL: the standby replayed nothing".into(),
        })?;
    Ok(Promoted {
        lsn,
        timeline: walfile.parse::<SegmentName>().ok().map(|s| s.timeline),
    })
}

/// Run one query returning a single text value.
pub async fn text(client: &Client, sql: &str) -> Result<String, ReceiverError> {
    client
        .query_one(sql, &[])
        .await
        .and_then(|r| r.try_get::<_, String>(0))
        .map_err(|e| query_error(sql, &e))
}

fn lsn(v: PgLsn) -> Lsn {
    Lsn(u64::from(v))
}

fn query_error(sql: &str, e: &tokio_postgres::Error) -> ReceiverError {
    ReceiverError::StandbyQuery {
        query: sql.split_whitespace().collect::<Vec<_>>().join(" "),
        detail: match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => chain(e),
        },
    }
}

/// The restore record of the standby `promote` and `status` talk to (several standbys may
/// restore from one archive, each keeping its own record): the one of `pgdata` when it is
/// configured, else the one of the data directory the standby reports through `client` (or a
/// new connection with `conninfo` when `client` is `None`). `SHOW data_directory` needs a
/// superuser or a member of pg_read_all_settings; when the standby cannot be asked,
/// [`state::standby_restore_log`] decides without knowing.
pub async fn restore_record(
    settings: &ReceiverSettings,
    client: Option<&Client>,
) -> Result<RestoreLog, ReceiverError> {
    let data_dir = match (&settings.pgdata, client, &settings.conninfo) {
        (Some(pgdata), _, _) => Some(pgdata.clone()),
        (None, Some(c), _) => data_directory(c).await,
        (None, None, Some(conninfo)) => match connect(conninfo, Duration::from_secs(3)).await {
            Ok(Connected::Client(c)) => data_directory(&c).await,
            _ => None,
        },
        (None, None, None) => None,
    };
    Ok(state::standby_restore_log(
        &settings.archive_dir,
        data_dir.as_deref(),
    )?)
}

/// The standby's data directory, if this connection may see it.
async fn data_directory(client: &Client) -> Option<PathBuf> {
    text(client, "SHOW data_directory")
        .await
        .ok()
        .map(PathBuf::from)
}

/// An error with its causes on one line ("error connecting to server: Connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    walship_common::sys::check::chain(e)
}
