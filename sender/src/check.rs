//! `walship-sender check`: does this primary's side of the pair work right now? One line per
//! check (`ok`, `WARN`, `FAIL` with the fix); exit 0 when nothing failed.
//!
//! The receiver is probed with a real connection through the push path ([`Target`]): QUIC and
//! mutual TLS with walship's ALPN, then one stream carrying only the preamble of a request (our
//! protocol version and magic) and no body. A receiver speaking another version answers from
//! the preamble alone (see `walship_common::proto::frame`); one speaking ours waits for the
//! body, sees the stream end and drops it, storing nothing (it logs "sender went away
//! mid-transfer" at INFO). Reaching the end of the stream without a reply therefore proves the
//! receiver accepted our certificate, gave us a sending slot and speaks our protocol.
//!
//! With `conninfo`, the primary's settings are read and a WAL switch is archived end to end:
//! PostgreSQL counts a segment in `pg_stat_archiver.last_archived_wal` only after
//! archive_command exited 0, and `walship-sender push` exits 0 only after the receiver stored
//! the file durably, so seeing the switched segment there means the receiver has it.

use std::path::Path;
use std::time::{Duration, Instant};

use quinn::VarInt;
use tokio::time::timeout;
use tokio_postgres::{Client, NoTls};
use walship_common::check::{
    judge_archived, judge_command, Archived, Archiver, Expected, Report, Verdict,
};
use walship_common::proto::frame::{CLOSE_DONE, PREAMBLE_LEN, REPLY};
use walship_common::proto::{Encoding, FrameError, Refusal, Reply, Request, PROTOCOL_VERSION};
use walship_common::sys::check::{self as files, chain, PathResolver};
use walship_common::sys::config::{ReceiverTarget, SenderSettings};
use walship_common::sys::frame_io::{read_frame, ReadError};

use crate::push::{connection_lost, handshake_error, Target, CLOSE_FLUSH};

/// How long `check` waits for the switched segment by default (`--timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Between two looks at `pg_stat_archiver`.
const POLL: Duration = Duration::from_millis(250);

/// Run every check, printing each line as it is decided; the exit code (0 passed, 1 failed).
pub fn command(config: Option<&Path>, wait: Duration) -> u8 {
    let mut report = Report::default();
    let mut note = |what: String, verdict: Verdict| println!("{}", report.add(what, verdict));
    let Some(settings) = files::settings(config, SenderSettings::load, &mut note) else {
        return 1;
    };
    // Each distinct CA (a receiver may have its own), then our certificate.
    let mut certs: Vec<(&'static str, &Path)> = Vec::new();
    for receiver in &settings.receivers {
        if !certs.iter().any(|(_, p)| *p == receiver.ca) {
            certs.push(("CA", &receiver.ca));
        }
    }
    certs.push(("certificate", &settings.cert));
    files::tls_files(&settings.key, &certs, &mut note);
    valve(&settings, &mut note);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            note(
                "runtime".into(),
                Verdict::fail(e.to_string(), "check free memory and `ulimit -u`"),
            );
            return 1;
        }
    };
    runtime.block_on(async {
        // Every receiver at once: a down one costs its connect_timeout, not the sum.
        let verdicts = probe_all(&settings).await;
        let reachable = verdicts.iter().filter(|v| !matches!(v, Verdict::Fail { .. })).count();
        for (receiver, verdict) in settings.receivers.iter().zip(verdicts) {
            note(format!("receiver {}", receiver.address), verdict);
        }
        if settings.receivers.len() > 1 {
            let need = settings.require.needed(settings.receivers.len());
            let what = format!("require = {}", settings.require);
            let found = format!(
                "{reachable} of {} receivers reachable, {need} needed",
                settings.receivers.len()
            );
            let verdict = if reachable >= need {
                Verdict::Ok(found)
            } else {
                Verdict::fail(found, "pushes fail until enough receivers answer; see the lines above")
            };
            note(what, verdict);
        }
        match &settings.conninfo {
            Some(conninfo) => primary(&settings, conninfo, wait, &mut note).await,
            None => note(
                "PostgreSQL".into(),
                Verdict::Warn(format!(
                    "no `conninfo` in {}: wal_level, archive_mode, archive_command and a WAL switch were not checked; add conninfo = \"host=/var/run/postgresql user=postgres dbname=postgres\" to check them",
                    settings.config_path.display()
                )),
            ),
        }
    });
    u8::from(report.failed())
}

/// The pg_wal valve (`max_backlog`): what waits in pg_wal and every gap it left (a FAIL each,
/// until the record is removed after a new base backup).
fn valve(settings: &SenderSettings, note: &mut impl FnMut(String, Verdict)) {
    let log = match crate::valve::drops(settings) {
        Ok(log) => log,
        Err(e) => {
            note(
                "pg_wal valve".into(),
                Verdict::fail(
                    format!("cannot read the record of dropped segments: {e}"),
                    "",
                ),
            );
            return;
        }
    };
    let record = settings
        .state_dir
        .as_ref()
        .map(|d| {
            d.join(walship_common::valve::DROPS_FILE)
                .display()
                .to_string()
        })
        .unwrap_or_default();
    let told = if log.dropped.iter().all(|r| r.reported) {
        "the receiver knows"
    } else {
        "not all reported to the receiver yet"
    };
    for range in log.ranges() {
        note(
            "pg_wal valve".into(),
            Verdict::fail(
                format!("{} ({told})", range.problem()),
                format!("once the standby is rebuilt, remove {record}"),
            ),
        );
    }
    let (Some(limit), Some(pgdata)) = (settings.max_backlog, settings.pgdata.as_deref()) else {
        return;
    };
    match crate::valve::backlog(pgdata) {
        Ok(b) if log.dropped.is_empty() => note(
            "pg_wal valve".into(),
            Verdict::Ok(format!(
                "max_backlog {}: {} file(s), {} waiting in pg_wal; nothing dropped",
                walship_common::human::size(limit),
                b.files,
                walship_common::human::size(b.bytes)
            )),
        ),
        Ok(_) => {}
        Err(e) => note(
            "pg_wal valve".into(),
            Verdict::fail(
                format!(
                    "cannot list {}/pg_wal/archive_status: {e}",
                    pgdata.display()
                ),
                "set `pgdata` to the primary's data directory, readable by this user",
            ),
        ),
    }
}

/// [`probe`] every receiver concurrently; the verdicts in the order of the config.
pub async fn probe_all(settings: &SenderSettings) -> Vec<Verdict> {
    let shared = std::sync::Arc::new(settings.clone());
    let mut probes = tokio::task::JoinSet::new();
    for (i, receiver) in settings.receivers.iter().enumerate() {
        let (shared, receiver) = (shared.clone(), receiver.clone());
        probes.spawn(async move { (i, probe(&shared, &receiver).await) });
    }
    let mut verdicts: Vec<Option<Verdict>> = settings.receivers.iter().map(|_| None).collect();
    while let Some(done) = probes.join_next().await {
        if let Ok((i, verdict)) = done {
            verdicts[i] = Some(verdict);
        }
    }
    verdicts
        .into_iter()
        .map(|v| {
            v.unwrap_or_else(|| {
                Verdict::fail(
                    "the probe task failed".to_string(),
                    "this is a bug in walship-sender, please report it",
                )
            })
        })
        .collect()
}

/// Connect as `push` does, then the preamble-only exchange (see the module doc).
pub async fn probe(settings: &SenderSettings, receiver: &ReceiverTarget) -> Verdict {
    let target = match Target::new(settings, receiver).await {
        Ok(t) => t,
        Err(e) => return Verdict::fail(e.to_string(), ""),
    };
    let conn = match target.connect().await {
        Ok(c) => c,
        // Worded for PostgreSQL's log; nothing retries a check.
        Err(e) => {
            let text = e.to_string().replace(" (PostgreSQL will retry)", "");
            return Verdict::fail(text, "");
        }
    };
    let verdict = timeout(settings.connect_timeout, exchange(receiver, &conn))
        .await
        .unwrap_or_else(|_| {
            Verdict::fail(
                format!(
                    "connected, but no stream or answer within {:?}",
                    settings.connect_timeout
                ),
                "all the receiver's sending slots (max_connections) may be busy: see its log",
            )
        });
    conn.close(VarInt::from_u32(CLOSE_DONE), b"check");
    let _ = timeout(CLOSE_FLUSH, target.endpoint.wait_idle()).await;
    verdict
}

async fn exchange(receiver: &ReceiverTarget, conn: &quinn::Connection) -> Verdict {
    let lost = |e: quinn::ConnectionError| {
        let e = handshake_error(&receiver.address, &receiver.server_name, e);
        Verdict::fail(e.to_string(), "")
    };
    let (mut tx, mut rx) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return lost(e),
    };
    let request = Request {
        name: "000000010000000000000001".into(),
        size: 0,
        encoding: Encoding::Plain,
        dropped: Vec::new(),
        append_at: None,
    };
    let frame = request.encode();
    if let Err(e) = tx.write_all(&frame[..PREAMBLE_LEN]).await {
        return match e {
            quinn::WriteError::ConnectionLost(c) => lost(c),
            e => Verdict::fail(format!("sending the probe: {e}"), "see the receiver's log"),
        };
    }
    let _ = tx.finish();
    let upgrade = "install the same walship release on both hosts (`--version` shows the protocol)";
    match read_frame(&mut rx, REPLY, None).await {
        Err(ReadError::Ended) => Verdict::Ok(format!("mutual TLS and protocol {PROTOCOL_VERSION}")),
        Err(ReadError::Frame(FrameError::Version { theirs, .. })) => Verdict::fail(
            format!("it speaks protocol {theirs}, this walship-sender {PROTOCOL_VERSION}"),
            upgrade,
        ),
        Ok(body) => match Reply::decode_body(&body) {
            Ok(Reply::Refused(r @ Refusal::UnsupportedVersion { .. })) => {
                Verdict::fail(r.to_string(), "")
            }
            Ok(other) => Verdict::fail(format!("unexpected answer {other:?}"), upgrade),
            Err(e) => Verdict::fail(format!("unreadable answer: {e}"), upgrade),
        },
        Err(ReadError::Io(e)) => match connection_lost(&e) {
            Some(c) => lost(c),
            None => Verdict::fail(
                format!("the probe stream failed: {e}"),
                "see the receiver's log",
            ),
        },
        Err(e) => Verdict::fail(e.to_string(), "see the receiver's log"),
    }
}

/// The primary's archiving settings, then a WAL switch archived end to end.
async fn primary(
    settings: &SenderSettings,
    conninfo: &str,
    wait: Duration,
    note: &mut impl FnMut(String, Verdict),
) {
    let client = match connect(conninfo, settings.connect_timeout).await {
        Ok(c) => c,
        Err(why) => {
            let fix = format!("check `conninfo` in {}", settings.config_path.display());
            return note("PostgreSQL".into(), Verdict::fail(why, fix));
        }
    };
    let mut ready = true;
    let mut judge = |what: &str, verdict: Verdict| {
        ready &= !matches!(verdict, Verdict::Fail { .. });
        note(what.to_string(), verdict);
    };
    let wal_level = show(&client, "wal_level").await;
    judge(
        "wal_level",
        setting(&wal_level, &["replica", "logical"], "wal_level = replica"),
    );
    let mode = show(&client, "archive_mode").await;
    judge(
        "archive_mode",
        setting(&mode, &["on", "always"], "archive_mode = on"),
    );
    judge("archive_command", archive_command(settings, &client).await);
    if ready {
        let verdict = switch_and_wait(&client, wait).await;
        note("WAL switch".into(), verdict);
    }
}

/// A setting that must be one of `good`; the fix needs a restart.
fn setting(value: &Result<String, String>, good: &[&str], fix: &str) -> Verdict {
    match value {
        Ok(v) if good.contains(&v.as_str()) => Verdict::Ok(v.clone()),
        Ok(v) => Verdict::fail(
            format!("it is {v}"),
            format!("set {fix} and restart PostgreSQL"),
        ),
        Err(e) => Verdict::fail(
            e.clone(),
            "connect as a superuser or a member of pg_read_all_settings",
        ),
    }
}

async fn archive_command(settings: &SenderSettings, client: &Client) -> Verdict {
    // PostgreSQL 15 and later: an archive_library takes precedence over archive_command.
    if let Ok(library) = show(client, "archive_library").await {
        if !library.is_empty() {
            return Verdict::fail(
                format!("archive_library = '{library}' is set, so archive_command is not used"),
                "set archive_library = '' and reload PostgreSQL",
            );
        }
    }
    let command = match show(client, "archive_command").await {
        Ok(c) => c,
        Err(e) => {
            return Verdict::fail(
                e,
                "connect as a superuser or a member of pg_read_all_settings",
            )
        }
    };
    let data_dir = show(client, "data_directory")
        .await
        .ok()
        .map(Into::into)
        .or_else(|| settings.pgdata.clone());
    let resolver = PathResolver::new(data_dir, &settings.config_path);
    let (program, config) = (
        resolver.exe.display().to_string(),
        resolver.config.display().to_string(),
    );
    let expect = Expected {
        setting: "archive_command",
        program_name: "walship-sender",
        program: &program,
        config: &config,
        rest: &["push", "%p", "%f"],
    };
    judge_command(&command, &expect, &resolver)
}

/// `pg_switch_wal()`, then watch `pg_stat_archiver` until the switched segment is archived,
/// archiving it fails, or `wait` runs out.
async fn switch_and_wait(client: &Client, wait: Duration) -> Verdict {
    let before = match archiver(client).await {
        Ok(a) => a,
        Err(e) => return Verdict::fail(e, "connect as a superuser"),
    };
    // A WAL record first, so that the switch completes a segment even on an idle primary.
    let _ = client
        .simple_query("SELECT pg_logical_emit_message(false, 'walship-check', '')")
        .await;
    let segment = match one(client, "SELECT pg_walfile_name(pg_switch_wal())").await {
        Ok(s) => s,
        Err(e) => return Verdict::fail(e, "run check on the primary, connected as a superuser (or GRANT EXECUTE ON FUNCTION pg_switch_wal() to the conninfo user)"),
    };
    let started = Instant::now();
    loop {
        let now = match archiver(client).await {
            Ok(a) => a,
            Err(e) => return Verdict::fail(e, "connect as a superuser"),
        };
        match judge_archived(&segment, &before, &now) {
            Archived::Done => {
                return Verdict::Ok(format!(
                    "{segment} stored by the receiver (archived after {})",
                    walship_common::human::duration(started.elapsed())
                ))
            }
            Archived::Failing(failed) => {
                return Verdict::fail(
                    format!(
                        "archive_command failed for {failed} (pg_stat_archiver.failed_count {})",
                        now.failed_count
                    ),
                    "PostgreSQL's log has walship-sender's line saying why",
                )
            }
            Archived::Waiting if started.elapsed() >= wait => {
                return Verdict::fail(
                    format!(
                        "{segment} not archived within {} (last archived: {})",
                        walship_common::human::duration(wait),
                        now.last_archived.as_deref().unwrap_or("none")
                    ),
                    "see PostgreSQL's log; raise --timeout if the archiver is behind",
                )
            }
            Archived::Waiting => tokio::time::sleep(POLL).await,
        }
    }
}

async fn archiver(client: &Client) -> Result<Archiver, String> {
    const SQL: &str =
        "SELECT last_archived_wal, failed_count, last_failed_wal FROM pg_stat_archiver";
    let row = client
        .query_one(SQL, &[])
        .await
        .map_err(|e| sql_error(SQL, &e))?;
    Ok(Archiver {
        last_archived: row.try_get(0).map_err(|e| sql_error(SQL, &e))?,
        failed_count: row.try_get(1).map_err(|e| sql_error(SQL, &e))?,
        last_failed: row.try_get(2).map_err(|e| sql_error(SQL, &e))?,
    })
}

async fn connect(conninfo: &str, within: Duration) -> Result<Client, String> {
    match timeout(within, tokio_postgres::connect(conninfo, NoTls)).await {
        Err(_) => Err(format!("no answer from {conninfo:?} within {within:?}")),
        Ok(Err(e)) => Err(format!("cannot connect with {conninfo:?}: {}", chain(&e))),
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
    }
}

async fn show(client: &Client, name: &str) -> Result<String, String> {
    one(client, &format!("SHOW {name}")).await
}

async fn one(client: &Client, sql: &str) -> Result<String, String> {
    client
        .query_one(sql, &[])
        .await
        .and_then(|r| r.try_get::<_, String>(0))
        .map_err(|e| sql_error(sql, &e))
}

fn sql_error(sql: &str, e: &tokio_postgres::Error) -> String {
    format!("{sql}: {}", chain(e))
}
