//! `walship-sender basebackup`: an online base backup of the primary, carried over the same
//! QUIC + mutual TLS link as the WAL into the receiver's `pgdata`, which becomes a standby ready
//! to start.
//!
//! 1. Checks before anything is touched: `pgdata` and `conninfo` set, the server a primary with
//!    archiving through walship on (pg_backup_stop waits for the end segment to be archived, and
//!    that goes through `walship-sender push`), no tablespaces (refused: see the README), and
//!    the receiver's `Begin` (its `pgdata` absent, empty or an unfinished backup; a finished
//!    standby only with `--force`).
//! 2. `pg_backup_start` (PostgreSQL 15+; `pg_start_backup` on 13 and 14) on one session, with a
//!    fast checkpoint; the session stays open until `pg_backup_stop` (if this process dies,
//!    PostgreSQL ends the backup itself).
//! 3. The data directory is walked (skip rules in [`walship_common::basebackup::walk`]), its
//!    directories created on the receiver, its files sent [`PARALLEL_FILES`] at a time, one QUIC
//!    stream each, compressed and digested like WAL; `global/pg_control` last. A file that
//!    vanished is skipped, one that shrank is padded with zeros (WAL replay repairs both).
//! 4. `pg_backup_stop` returns once the end segment is archived; `End` hands the receiver the
//!    backup label and the end segment's name, and it answers `Ready` once the standby is
//!    complete and durable, with the end segment in its archive. Exit 0 only then.

use std::io::{IsTerminal, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::VarInt;
use tokio::time::timeout;
use tokio_postgres::{Client, NoTls};
use walship_common::basebackup::{self, Walk, CONTROL};
use walship_common::proto::backup::OutgoingFile;
use walship_common::proto::frame::{WireRequest, CLOSE_DONE};
use walship_common::proto::{BackupRequest, Encoding, Reply};
use walship_common::sys::config::{ReceiverTarget, SenderSettings};
use walship_common::{human, Lsn};

use crate::error::SenderError;
use crate::push::{read_full, read_verdict, Failures, Target, CLOSE_FLUSH};

/// Files in flight at once, one stream each. The receiver lets one connection hold half its
/// upload slots (`max_uploads`, 8 by default): 4 keeps them all busy.
pub const PARALLEL_FILES: usize = 4;
/// Read size when sending a file.
const CHUNK: usize = 256 << 10;
/// Longest wait for pg_backup_stop: it returns once the end segment is archived.
const STOP_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a plain progress line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// What the operator asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Replace a finished standby in the receiver's pgdata.
    pub force: bool,
    /// The backup label (pg_backup_start); a default names walship and the time.
    pub label: Option<String>,
}

/// What the backup did, for the summary.
#[derive(Debug, Clone)]
pub struct Summary {
    pub files: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub end_segment: String,
    /// The standby's data directory on the receiver host.
    pub pgdata: String,
}

impl Summary {
    /// The final lines: size, time, throughput and the command that starts the standby.
    pub fn render(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        format!(
            "walship-sender basebackup: done: {} in {} files in {} ({:.1} MB/s); end of backup in WAL segment {} (archived)\n\
             start the standby on the receiver host, as the PostgreSQL user: pg_ctl -D {} start\n",
            human::size(self.bytes),
            self.files,
            human::duration(self.elapsed.max(Duration::from_secs(1))),
            basebackup::mb_per_sec(self.bytes, secs),
            self.end_segment,
            self.pgdata,
        )
    }
}

/// One entry to send.
#[derive(Debug, Clone)]
enum Entry {
    Dir {
        rel: String,
        mode: u32,
    },
    File {
        rel: String,
        path: PathBuf,
        size: u64,
        mode: u32,
    },
}

pub async fn run(settings: &SenderSettings, opts: &Options) -> Result<Summary, SenderError> {
    let started = Instant::now();
    let setup = |s: String| SenderError::Setup(s);
    let pgdata = settings.pgdata.clone().ok_or_else(|| {
        setup(format!(
            "basebackup needs `pgdata` (the primary's data directory) in {}",
            settings.config_path.display()
        ))
    })?;
    let conninfo = settings.conninfo.clone().ok_or_else(|| {
        setup(format!(
            "basebackup needs `conninfo` (a connection to the primary, e.g. \"host=/var/run/postgresql user=postgres\") in {}",
            settings.config_path.display()
        ))
    })?;
    let label = opts.label.clone().unwrap_or_else(|| {
        format!(
            "walship basebackup {}",
            human::timestamp(std::time::SystemTime::now())
        )
    });
    if !basebackup::label_ok(&label) {
        return Err(setup(format!(
            "--label {label:?}: use at most 100 printable ASCII characters, no quote"
        )));
    }
    let system_id = walship_common::sys::pg_control::read_system_id(&pgdata)
        .map_err(|e| setup(format!("{e}; check `pgdata` in the sender config")))?;
    refuse_tablespaces(&pgdata)?;
    let client = connect(&conninfo).await?;
    let version = preflight(&client, &conninfo, &pgdata).await?;

    // With several receivers (fan-out), the standby is made on the first one listed.
    let receiver = settings.receivers[0].clone();
    let target = Target::new(settings, &receiver).await?;
    let conn = target.connect().await?;
    let backup = backup_id();
    let ctx = Ctx {
        settings: Arc::new(settings.clone()),
        receiver: receiver.clone(),
        conn: conn.clone(),
        backup,
    };
    let result = async {
        ctx.step(
            "the base backup",
            BackupRequest::Begin {
                backup,
                label: label.clone(),
                system_id: system_id.0,
                force: opts.force,
            },
        )
        .await?;
        eprintln!(
            "walship-sender basebackup: receiver {} accepted the backup; starting it on the primary (checkpoint)",
            receiver.address
        );
        let start = backup_start(&client, version, &label).await?;
        eprintln!("walship-sender basebackup: backup started at {start}; copying {}", pgdata.display());
        let entries = {
            let pgdata = pgdata.clone();
            tokio::task::spawn_blocking(move || walk_dir(&pgdata))
                .await
                .map_err(|e| SenderError::TaskFailed {
                    what: "walk",
                    detail: e.to_string(),
                })??
        };
        let (files, bytes) = send_entries(&ctx, entries).await?;
        let (stop_lsn, backup_label) = backup_stop(&client, version).await?;
        let end_segment = walfile_name(&client, stop_lsn).await?;
        // A new connection for the end: the receiver knows the backup by its id, and the first
        // connection sat idle through pg_backup_stop (a receiver short of sending slots may
        // have evicted it meanwhile).
        let end = Ctx {
            conn: target.connect().await?,
            ..ctx.clone()
        };
        let reply = end
            .exchange(
                "the end of the base backup",
                BackupRequest::End {
                    backup,
                    files,
                    bytes,
                    end_segment: end_segment.clone(),
                    backup_label,
                },
            )
            .await?;
        let Reply::Ready { pgdata } = reply else {
            return Err(SenderError::Setup(format!(
                "receiver {} answered the end of the base backup with {reply:?}, not ready",
                receiver.address
            )));
        };
        end.conn.close(VarInt::from_u32(CLOSE_DONE), b"done");
        Ok(Summary {
            files,
            bytes,
            elapsed: started.elapsed(),
            end_segment,
            pgdata,
        })
    }
    .await;
    conn.close(VarInt::from_u32(CLOSE_DONE), b"done");
    let _ = timeout(CLOSE_FLUSH, target.endpoint.wait_idle()).await;
    result
}

/// The tablespaces under pg_tblspc are refused: their paths are outside pgdata on the primary
/// and walship maps no path on the standby host that the operator did not configure.
fn refuse_tablespaces(pgdata: &Path) -> Result<(), SenderError> {
    let dir = pgdata.join("pg_tblspc");
    let names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    if names.is_empty() {
        return Ok(());
    }
    Err(SenderError::Setup(format!(
        "the primary has tablespaces (pg_tblspc: {}): walship basebackup copies only the data directory and refuses tablespaces; move them into pg_default (ALTER TABLE ... SET TABLESPACE pg_default) or take this backup with pg_basebackup --tablespace-mapping",
        names.join(", ")
    )))
}

async fn connect(conninfo: &str) -> Result<Client, SenderError> {
    let err = |detail: String| SenderError::Primary {
        conninfo: conninfo.to_string(),
        detail,
    };
    let (client, connection) = timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(conninfo, NoTls),
    )
    .await
    .map_err(|_| err("no answer within 10s".into()))?
    .map_err(|e| err(pg_error(&e)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The server is a primary, archives, and (when it may say so) has `pgdata` as its data
/// directory; returns its `server_version_num`.
async fn preflight(client: &Client, conninfo: &str, pgdata: &Path) -> Result<i32, SenderError> {
    let err = |detail: String| SenderError::Primary {
        conninfo: conninfo.to_string(),
        detail,
    };
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, pg_is_in_recovery(), \
             current_setting('archive_mode'), current_setting('archive_command')",
            &[],
        )
        .await
        .map_err(|e| err(pg_error(&e)))?;
    let version: i32 = row.get(0);
    let in_recovery: bool = row.get(1);
    let archive_mode: String = row.get(2);
    let archive_command: String = row.get(3);
    if version < 130000 {
        return Err(err(format!(
            "server_version_num {version}: basebackup needs PostgreSQL 13 or later"
        )));
    }
    if in_recovery {
        return Err(err(
            "the server is in recovery: run basebackup against the primary".into(),
        ));
    }
    if archive_mode == "off" || archive_command.trim().is_empty() {
        return Err(err(format!(
            "archive_mode is {archive_mode} and archive_command is {archive_command:?}: pg_backup_stop waits for the backup's end to be archived, so set archive_mode = on and archive_command = 'walship-sender --config <sender.toml> push %p %f' first (README, setup)"
        )));
    }
    // Only a superuser or pg_read_all_settings may see it; then it must be ours.
    if let Ok(row) = client.query_one("SHOW data_directory", &[]).await {
        let theirs: String = row.get(0);
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        };
        if !same(Path::new(&theirs), pgdata) {
            return Err(err(format!(
                "its data directory is {theirs}, but `pgdata` in the sender config is {}: point both at the same cluster",
                pgdata.display()
            )));
        }
    }
    Ok(version)
}

async fn backup_start(client: &Client, version: i32, label: &str) -> Result<Lsn, SenderError> {
    // Non-exclusive, fast checkpoint: the backup starts now, and ends with this session.
    let sql = if version >= 150000 {
        "SELECT pg_backup_start($1, true)::text"
    } else {
        "SELECT pg_start_backup($1, true, false)::text"
    };
    let row = client
        .query_one(sql, &[&label])
        .await
        .map_err(|e| backup_error("start", &e))?;
    let text: String = row.get(0);
    text.parse::<Lsn>()
        .map_err(|e| SenderError::Setup(format!("pg_backup_start returned {text:?}: {e}")))
}

/// End the backup; waits for the end segment to be archived. Its LSN and the backup label.
async fn backup_stop(client: &Client, version: i32) -> Result<(Lsn, String), SenderError> {
    let sql = if version >= 150000 {
        "SELECT lsn::text, labelfile, coalesce(spcmapfile, '') FROM pg_backup_stop(true)"
    } else {
        "SELECT lsn::text, labelfile, coalesce(spcmapfile, '') FROM pg_stop_backup(false, true)"
    };
    eprintln!("walship-sender basebackup: all files sent; pg_backup_stop (waits for the end of the backup to be archived through walship)");
    let row = timeout(STOP_TIMEOUT, client.query_one(sql, &[]))
        .await
        .map_err(|_| {
            SenderError::Setup(format!(
                "pg_backup_stop did not return within {}: the backup's end segment was not archived; check archive_command on the primary and the receiver's log, then run basebackup again",
                human::duration(STOP_TIMEOUT)
            ))
        })?
        .map_err(|e| backup_error("stop", &e))?;
    let lsn: String = row.get(0);
    let label: String = row.get(1);
    let lsn = lsn
        .parse::<Lsn>()
        .map_err(|e| SenderError::Setup(format!("pg_backup_stop returned {lsn:?}: {e}")))?;
    Ok((lsn, label))
}

async fn walfile_name(client: &Client, lsn: Lsn) -> Result<String, SenderError> {
    let row = client
        .query_one(
            "SELECT pg_walfile_name($1::text::pg_lsn)",
            &[&lsn.to_string()],
        )
        .await
        .map_err(|e| backup_error("end segment name", &e))?;
    Ok(row.get(0))
}

fn backup_error(what: &str, e: &tokio_postgres::Error) -> SenderError {
    SenderError::Setup(format!(
        "the primary refused the backup {what}: {}; basebackup needs a superuser or a role granted EXECUTE on pg_backup_start/pg_backup_stop",
        pg_error(e)
    ))
}

fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => walship_common::sys::check::chain(e),
    }
}

/// A backup id for the receiver: the time and our pid, distinct for every run on one host.
fn backup_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 40)
}

/// Walk `pgdata` (blocking): directories first in walk order, then files, `global/pg_control`
/// last. Links: `pg_wal` (often a link elsewhere) becomes an empty directory like any pg_wal;
/// another link is followed and its target copied under the link's name.
fn walk_dir(pgdata: &Path) -> Result<Vec<Entry>, SenderError> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    let mut control = None;
    let mut stack = vec![(pgdata.to_path_buf(), String::new())];
    let mut seen = std::collections::HashSet::new();
    while let Some((dir, rel)) = stack.pop() {
        let read_err = |source| SenderError::ReadFile {
            path: dir.clone(),
            source,
        };
        let mut names: Vec<_> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .collect(),
            // Removed while the backup runs (a dropped database): replay recreates nothing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel.is_empty() => continue,
            Err(e) => return Err(read_err(e)),
        };
        names.sort();
        for name in names {
            let Some(name) = name.to_str().map(str::to_string) else {
                tracing::warn!("skipping a name that is not UTF-8 in {}", dir.display());
                continue;
            };
            let path = dir.join(&name);
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            // stat follows links: a link is copied as what it points at.
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(SenderError::ReadFile { path, source: e });
                }
            };
            let mode = meta.permissions().mode() & 0o777;
            if meta.is_dir() {
                match basebackup::walk(&child, true) {
                    Walk::Skip => {}
                    Walk::EmptyDir => {
                        dirs.push(Entry::Dir {
                            rel: child.clone(),
                            mode,
                        });
                        if child == "pg_wal" {
                            dirs.push(Entry::Dir {
                                rel: "pg_wal/archive_status".into(),
                                mode,
                            });
                        }
                    }
                    Walk::Copy => {
                        if !seen.insert((meta.dev(), meta.ino())) {
                            tracing::warn!("{} loops back through a link: skipped", path.display());
                            continue;
                        }
                        dirs.push(Entry::Dir {
                            rel: child.clone(),
                            mode,
                        });
                        stack.push((path, child));
                    }
                }
            } else if meta.is_file() {
                if basebackup::walk(&child, false) != Walk::Copy {
                    continue;
                }
                let entry = Entry::File {
                    rel: child.clone(),
                    path,
                    size: meta.len(),
                    mode,
                };
                if child == CONTROL {
                    control = Some(entry);
                } else {
                    files.push(entry);
                }
            }
            // Sockets, FIFOs and devices are not part of a cluster: skipped.
        }
    }
    let Some(control) = control else {
        return Err(SenderError::Setup(format!(
            "{} has no global/pg_control: `pgdata` is not a PostgreSQL data directory",
            pgdata.display()
        )));
    };
    // Parents before children: the walk is depth first, so sort directories by depth.
    dirs.sort_by_key(|d| match d {
        Entry::Dir { rel, .. } => rel.matches('/').count(),
        Entry::File { .. } => 0,
    });
    // pg_wal/archive_status may be listed twice (a real one, and the one added above).
    dirs.dedup_by(
        |a, b| matches!((a, b), (Entry::Dir { rel: x, .. }, Entry::Dir { rel: y, .. }) if x == y),
    );
    let mut out = dirs;
    // Large files first: the tail of the backup is many small files in parallel, not one big.
    files.sort_by_key(|f| match f {
        Entry::File { size, .. } => std::cmp::Reverse(*size),
        Entry::Dir { .. } => std::cmp::Reverse(0),
    });
    out.extend(files);
    out.push(control);
    Ok(out)
}

/// What every send needs (cheap to clone: one per file task).
#[derive(Clone)]
struct Ctx {
    settings: Arc<SenderSettings>,
    /// The receiver that writes the standby (the first one listed).
    receiver: ReceiverTarget,
    conn: quinn::Connection,
    backup: u64,
}

impl Ctx {
    /// One request with no content; its reply must be `Stored`.
    async fn step(&self, what: &str, request: BackupRequest) -> Result<(), SenderError> {
        match self.exchange(what, request).await? {
            Reply::Stored => Ok(()),
            other => Err(SenderError::Setup(format!(
                "receiver {} answered {what} with {other:?}",
                self.receiver.address
            ))),
        }
    }

    /// One request with no content, and its reply (a refusal is an error).
    async fn exchange(&self, what: &str, request: BackupRequest) -> Result<Reply, SenderError> {
        let fail = Failures {
            receiver: &self.receiver.address,
            server_name: &self.receiver.server_name,
            name: what,
        };
        let (mut tx, mut rx) = self.conn.open_bi().await.map_err(|e| fail.conn(e))?;
        tx.write_all(&WireRequest::Backup(request).encode())
            .await
            .map_err(|e| fail.write(e))?;
        let _ = tx.finish();
        match read_verdict(&mut rx, &fail).await? {
            Reply::Refused(refusal) => Err(SenderError::BackupRefused {
                what: what.to_string(),
                refusal,
            }),
            other => Ok(other),
        }
    }

    /// One file: the request, its content through [`OutgoingFile`], the verdict. `None` when
    /// the file vanished before it could be opened.
    async fn file(
        &self,
        rel: String,
        path: PathBuf,
        mode: u32,
        progress: &Progress,
    ) -> Result<Option<u64>, SenderError> {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(SenderError::ReadFile { path, source }),
        };
        let size = file
            .metadata()
            .map_err(|source| SenderError::ReadFile {
                path: path.clone(),
                source,
            })?
            .len();
        let fail = Failures {
            receiver: &self.receiver.address,
            server_name: &self.receiver.server_name,
            name: &rel,
        };
        let encoding = self.settings.compression;
        let request = BackupRequest::File {
            backup: self.backup,
            path: rel.clone(),
            size,
            mode,
            encoding,
        };
        let (mut tx, mut rx) = self.conn.open_bi().await.map_err(|e| fail.conn(e))?;
        tx.write_all(&WireRequest::Backup(request).encode())
            .await
            .map_err(|e| fail.write(e))?;
        let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel::<Result<Vec<u8>, SenderError>>(4);
        let level = self.settings.compression_level;
        let read = progress.read.clone();
        let producer = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = produce(file, &path, size, encoding, level, &chunks_tx, &read) {
                    let _ = chunks_tx.blocking_send(Err(e));
                }
            })
        };
        let mut stopped = false;
        while let Some(chunk) = chunks.recv().await {
            match tx.write_all(&chunk?).await {
                Ok(()) => {}
                Err(quinn::WriteError::Stopped(_)) => {
                    stopped = true;
                    break;
                }
                Err(e) => return Err(fail.write(e)),
            }
        }
        drop(chunks);
        let _ = producer.await;
        if !stopped {
            let _ = tx.finish();
        }
        match read_verdict(&mut rx, &fail).await? {
            Reply::Stored => Ok(Some(size)),
            Reply::Refused(refusal) => Err(SenderError::BackupRefused {
                what: rel,
                refusal: crate::push::with_lz4_hint(refusal, encoding),
            }),
            other => Err(SenderError::Setup(format!(
                "receiver {} answered {rel} with {other:?}",
                self.receiver.address
            ))),
        }
    }
}

/// Read `size` bytes of `file` (blocking) through an [`OutgoingFile`], handing wire chunks on.
fn produce(
    file: std::fs::File,
    path: &Path,
    size: u64,
    encoding: Encoding,
    level: i32,
    out: &tokio::sync::mpsc::Sender<Result<Vec<u8>, SenderError>>,
    read: &AtomicU64,
) -> Result<(), SenderError> {
    let read_err = |source| SenderError::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    let mut outgoing = OutgoingFile::new(size, encoding, level).map_err(read_err)?;
    let mut file = file.take(size);
    loop {
        let mut buf = vec![0u8; CHUNK];
        let n = read_full(&mut file, &mut buf).map_err(read_err)?;
        let mut wire = Vec::new();
        if n == 0 {
            let padded = outgoing.finish(&mut wire).map_err(read_err)?;
            if padded > 0 {
                tracing::info!("{} shrank while it was read: {padded} bytes of zeros sent instead (WAL replay restores it)", path.display());
            }
            read.fetch_add(padded, Ordering::Relaxed);
            let _ = out.blocking_send(Ok(wire));
            return Ok(());
        }
        outgoing.encode(&buf[..n], &mut wire).map_err(read_err)?;
        read.fetch_add(n as u64, Ordering::Relaxed);
        if !wire.is_empty() && out.blocking_send(Ok(wire)).is_err() {
            return Ok(());
        }
    }
}

/// Bytes read and files done so far, shared with the progress display.
#[derive(Clone)]
struct Progress {
    read: Arc<AtomicU64>,
    files: Arc<AtomicU64>,
}

/// Create the directories (in order), then send the files, [`PARALLEL_FILES`] at a time, with
/// `global/pg_control` alone at the end; the files and bytes stored.
async fn send_entries(ctx: &Ctx, entries: Vec<Entry>) -> Result<(u64, u64), SenderError> {
    let mut files = Vec::new();
    for e in entries {
        match e {
            Entry::Dir { rel, mode } => {
                ctx.step(
                    &rel.clone(),
                    BackupRequest::Dir {
                        backup: ctx.backup,
                        path: rel,
                        mode,
                    },
                )
                .await?
            }
            Entry::File {
                rel,
                path,
                size,
                mode,
            } => files.push((rel, path, size, mode)),
        }
    }
    let total_bytes: u64 = files.iter().map(|f| f.2).sum();
    let total_files = files.len() as u64;
    let progress = Progress {
        read: Arc::new(AtomicU64::new(0)),
        files: Arc::new(AtomicU64::new(0)),
    };
    let display = Display::start(total_bytes, total_files, &progress);
    let control = files.pop();
    let (mut stored, mut bytes) = (0u64, 0u64);
    let mut queue = files.into_iter();
    let mut running = tokio::task::JoinSet::new();
    let result = loop {
        while running.len() < PARALLEL_FILES {
            let Some((rel, path, _, mode)) = queue.next() else {
                break;
            };
            let (ctx, progress) = (ctx.clone(), progress.clone());
            running.spawn(async move { ctx.file(rel, path, mode, &progress).await });
        }
        let Some(joined) = running.join_next().await else {
            break Ok(());
        };
        match joined {
            Ok(Ok(sent)) => {
                if let Some(size) = sent {
                    stored += 1;
                    bytes += size;
                }
                progress.files.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => break Err(e),
            Err(e) => {
                break Err(SenderError::TaskFailed {
                    what: "file transfer",
                    detail: e.to_string(),
                })
            }
        }
    };
    if let Err(e) = result {
        running.abort_all();
        display.finish();
        return Err(e);
    }
    if let Some((rel, path, _, mode)) = control {
        let size = ctx
            .file(rel, path.clone(), mode, &progress)
            .await?
            .ok_or_else(|| SenderError::Setup(format!("{} vanished", path.display())))?;
        stored += 1;
        bytes += size;
        progress.files.fetch_add(1, Ordering::Relaxed);
    }
    display.finish();
    Ok((stored, bytes))
}

/// Progress on stderr: a bar (bytes, files, rate, ETA) on a terminal, else a plain line every
/// [`PLAIN_EVERY`].
struct Display {
    bar: Option<indicatif::ProgressBar>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Display {
    fn start(total_bytes: u64, total_files: u64, progress: &Progress) -> Display {
        let (read, files) = (progress.read.clone(), progress.files.clone());
        let started = Instant::now();
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total_bytes);
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            let b = bar.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    b.set_position(read.load(Ordering::Relaxed).min(total_bytes));
                    b.set_message(format!(
                        "{}/{total_files} files",
                        files.load(Ordering::Relaxed)
                    ));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            return Display {
                bar: Some(bar),
                ticker,
            };
        }
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(PLAIN_EVERY).await;
                let done = read.load(Ordering::Relaxed).min(total_bytes);
                let secs = started.elapsed().as_secs_f64();
                let rate = done as f64 / secs.max(0.001);
                let eta = if rate > 0.0 {
                    human::duration(Duration::from_secs_f64((total_bytes - done) as f64 / rate))
                } else {
                    "?".into()
                };
                eprintln!(
                    "walship-sender basebackup: {} of {}, {} of {total_files} files, {:.1} MB/s, ETA {eta}",
                    human::size(done),
                    human::size(total_bytes),
                    files.load(Ordering::Relaxed),
                    basebackup::mb_per_sec(done, secs),
                );
            }
        });
        Display { bar: None, ticker }
    }

    fn finish(self) {
        self.ticker.abort();
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
