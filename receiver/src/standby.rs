//! Talking to the standby PostgreSQL (`conninfo`), for `promote` and `status`.

use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use walship_common::state::{Replay, RestoreLog};
use walship_common::sys::config::ReceiverSettings;
use walship_common::wal::name::TimelineId;
use walship_common::Lsn;

use crate::error::ReceiverError;
use crate::store;

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
        Err(_) => Err(err(format!("no answer within {timeout:?}"))),
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

pub async fn probe(client: &Client) -> Result<Probe, ReceiverError> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text",
            &[],
        )
        .await
        .map_err(|e| ReceiverError::Standby {
            conninfo: String::new(),
            detail: e.to_string(),
        })?;
    let lsn: Option<String> = row.get(1);
    Ok(Probe {
        in_recovery: row.get(0),
        replay_lsn: lsn.and_then(|l| l.parse().ok()),
    })
}

/// Where a hot standby's replay is: `pg_last_wal_replay_lsn()` and its timeline as its control
/// data says (the newest of the last restartpoint's, the minimum recovery point's and, when
/// streaming, the received timeline: all lag behind replay, so this is a lower bound).
pub async fn replay(client: &Client) -> Result<Replay, ReceiverError> {
    let row = client
        .query_one(
            "SELECT pg_last_wal_replay_lsn()::text, greatest(\
               (SELECT timeline_id FROM pg_control_checkpoint()), \
               (SELECT min_recovery_end_timeline FROM pg_control_recovery()), \
               (SELECT received_tli FROM pg_stat_wal_receiver))::int8",
            &[],
        )
        .await
        .map_err(|e| ReceiverError::Standby {
            conninfo: String::new(),
            detail: e.to_string(),
        })?;
    let lsn: Option<String> = row.get(0);
    let timeline: Option<i64> = row.get(1);
    Ok(Replay {
        lsn: lsn.and_then(|l| l.parse().ok()).unwrap_or(Lsn::INVALID),
        timeline: timeline
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .map(TimelineId),
    })
}

/// Run one query returning a single text value.
pub async fn text(client: &Client, sql: &str) -> Result<String, ReceiverError> {
    client
        .query_one(sql, &[])
        .await
        .and_then(|r| r.try_get::<_, String>(0))
        .map_err(|e| ReceiverError::Standby {
            conninfo: String::new(),
            detail: format!("{sql}: {e}"),
        })
}

/// The restore record of the standby `promote` and `status` talk to (several standbys may
/// restore from one archive, each keeping its own record): the one of `pgdata` when it is
/// configured, else the one of the data directory the standby reports through `client` (or a
/// new connection with `conninfo` when `client` is `None`). `SHOW data_directory` needs a
/// superuser or a member of pg_read_all_settings; when the standby cannot be asked,
/// [`store::standby_restore_log`] decides without knowing.
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
    Ok(store::standby_restore_log(
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
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
