//! `walship-sender daemon`: runs beside the primary, keeps a warm QUIC connection to each
//! receiver, answers `push` on a Unix socket, and (with `pgdata`) ships the segments PostgreSQL
//! has marked `.ready` ahead of the archiver, several at once, one QUIC stream each.
//!
//! Fan-out: every file goes to every receiver at once, each on its own link (connection,
//! transfer slots, state). The answer to `push` comes as soon as `require` receivers stored it
//! (or as soon as that has become impossible); the others go on in the background. A receiver
//! that failed a file owes it: the link's catch-up task ships what it owes, oldest first, once
//! the receiver answers again, as long as the file is still in pg_wal; a file gone by then is
//! counted as missed (WARN, `status`, metrics). A receiver known to be down is not waited for:
//! its transfer fails at once and the file is owed.
//!
//! It never writes in the data directory: it reads `pg_wal/archive_status` and the segments,
//! nothing else. What it answers `push` for an already-shipped segment rests on the book in
//! `walship_common::lookahead`: the acknowledgement counts only for the file identity read.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use quinn::VarInt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::timeout;
use walship_common::adapt::{Adapt, Codec, Sample};
use walship_common::fanout::{FanoutStatus, ReceiverStatus};
use walship_common::lookahead::{self, Book, FileIdentity, Lookup, Outcome, SETTLE};
use walship_common::proto::frame::{close_meaning, CLOSE_DONE};
use walship_common::proto::handoff::{
    encode_status, Handoff, HandoffReply, StatusRequest, HANDOFF, STATUS, STATUS_MAGIC,
};
use walship_common::proto::{Refusal, Request, Seal};
use walship_common::sys::config::{ReceiverTarget, Require, SenderSettings};
use walship_common::sys::frame_io::{read_frame, ReadError};
use walship_common::WalFileName;

use crate::error::SenderError;
use crate::metrics;
use crate::partial;
use crate::push::{self, Pushed, Target};
use walship_common::proto::Reply;

/// How often `archive_status` is listed. PostgreSQL creates `.ready` and then signals its
/// archiver; 20 ms keeps look-ahead well ahead of it at a negligible cost (one small readdir).
const POLL: Duration = Duration::from_millis(20);
/// Reconnect backoff bounds for the warm connection.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Transfers running at once, look-ahead and hand-offs together; others wait for a slot. With
/// look-ahead at its maximum (8) two slots stay for PostgreSQL's own pushes. Memory per
/// transfer is about 4 MiB (read, hash and wire chunk queues, the zstd context), so the daemon
/// stays near 50 MiB at worst, send window included.
const TRANSFER_SLOTS: usize = walship_common::sys::config::MAX_LOOKAHEAD + 2;
/// A `push` that connects must send its request at once.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle catch-up task looks whether its receiver owes files and answers (it is
/// also woken when a file becomes owed or the connection opens).
const CATCH_UP_POLL: Duration = Duration::from_secs(1);

pub fn run(settings: SenderSettings) -> Result<(), SenderError> {
    let socket = settings.socket.clone().ok_or_else(|| {
        SenderError::Setup(format!(
            "the daemon needs `socket = \"/run/walship/sender.sock\"` (a path of your choice) in {}",
            settings.config_path.display()
        ))
    })?;
    let status_dir = match &settings.pgdata {
        Some(pgdata) if settings.lookahead > 0 => {
            let dir = pgdata.join("pg_wal").join("archive_status");
            if !dir.is_dir() {
                return Err(SenderError::Setup(format!(
                    "pgdata = {}: no pg_wal/archive_status there; set `pgdata` to the primary's data directory, or `lookahead = 0`",
                    pgdata.display()
                )));
            }
            Some(dir)
        }
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| SenderError::Runtime { source })?;
    runtime.block_on(async move {
        let listener = bind(&socket)?;
        let mut links = Vec::new();
        for receiver in &settings.receivers {
            links.push(Arc::new(Link::new(&settings, receiver).await?));
        }
        let scrapes = metrics_endpoint(&settings).await?;
        let daemon = Arc::new(Daemon {
            links,
            settings,
            book: Mutex::new(Book::new()),
            changed: tokio::sync::watch::channel(0).0,
        });
        let mut tasks = Vec::new();
        for link in &daemon.links {
            tasks.push(tokio::spawn(link.clone().keep_warm()));
            tasks.push(tokio::spawn(daemon.clone().catch_up(link.clone())));
        }
        if let Some(dir) = status_dir {
            tokio::spawn(daemon.clone().look_ahead(dir));
        }
        if let (Some(every), Some(pgdata), Some(conninfo)) = (
            daemon.settings.partial_interval,
            daemon.settings.pgdata.clone(),
            daemon.settings.conninfo.clone(),
        ) {
            tracing::info!(partial_interval = ?every, "shipping the open segment as NAME.partial");
            tokio::spawn(daemon.clone().ship_open_segment(every, pgdata, conninfo));
        }
        let pgdata = match &daemon.settings.pgdata {
            Some(dir) => dir.display().to_string(),
            None => "none".into(),
        };
        let receivers: Vec<&str> = daemon.links.iter().map(|l| l.address()).collect();
        tracing::info!(
            socket = %socket.display(),
            lookahead = daemon.settings.lookahead,
            %pgdata,
            receiver = %receivers.join(", "),
            require = %daemon.settings.require,
            "listening"
        );
        // The handlers exist before systemd hears "ready": a SIGTERM right after it must stop
        // the daemon cleanly, not kill it with the default action.
        let stop = Stop::install()?;
        walship_common::sys::notify::ready();
        let result = daemon
            .clone()
            .accept(&listener.listener, listener.uid, stop)
            .await;
        walship_common::sys::notify::stopping();
        listener.remove();
        if let Some(task) = scrapes {
            task.abort();
        }
        for task in tasks {
            task.abort();
        }
        for link in &daemon.links {
            if let Some(conn) = link.conn.lock().await.take() {
                conn.close(VarInt::from_u32(CLOSE_DONE), b"daemon stopping");
            }
        }
        for link in &daemon.links {
            let _ = timeout(Duration::from_millis(100), link.target.endpoint.wait_idle()).await;
        }
        result
    })
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    fn install() -> Result<Stop, SenderError> {
        use tokio::signal::unix::{signal, SignalKind};
        let catch = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| SenderError::Signal {
                signal: name,
                source,
            })
        };
        Ok(Stop {
            term: catch(SignalKind::terminate(), "SIGTERM")?,
            int: catch(SignalKind::interrupt(), "SIGINT")?,
        })
    }
}

/// The segment the daemon ships as a partial, and what one receiver holds of it.
#[derive(Debug, Default)]
struct OpenSegment {
    segment: Option<walship_common::SegmentName>,
    /// Bytes the receiver holds durably, as it last said; `None`: not asked yet.
    held: Option<u64>,
    /// The receiver has the finished segment: nothing more to append.
    done: bool,
}

struct Daemon {
    settings: SenderSettings,
    /// One per receiver, in the order of the config.
    links: Vec<Arc<Link>>,
    book: Mutex<Book>,
    /// Bumped whenever a transfer ends, for pushes waiting on one.
    changed: tokio::sync::watch::Sender<u64>,
}

/// One receiver: its endpoint, warm connection, transfer slots, what is known about it and
/// what it owes.
struct Link {
    receiver: ReceiverTarget,
    /// The only receiver: its failures reach `push` as they are, no need to log them here.
    alone: bool,
    target: Target,
    /// The warm connection; replaced when it closes.
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
    /// Bounds the transfers running at once to this receiver (and so the daemon's memory: a
    /// down or slow receiver holds only its own slots).
    slots: tokio::sync::Semaphore,
    state: Mutex<ReceiverStatus>,
    /// Files it failed and that others may have stored: name to path in pg_wal.
    owed: Mutex<BTreeMap<String, PathBuf>>,
    /// Wakes the catch-up task.
    wake: tokio::sync::Notify,
    /// The codec that fits this link (`compression = "auto"`), from its measured transfers.
    adapt: Mutex<Adapt>,
    /// The open segment's partial, and the one before, as this receiver last said it holds
    /// them (`partial_interval`): when a segment is finished and the receiver holds it whole, a
    /// [`Seal`] replaces the upload.
    partial: Mutex<partial::Held>,
    /// The receiver answered a seal `Malformed`: built before seals; upload from then on.
    no_seals: std::sync::atomic::AtomicBool,
}

impl Daemon {
    /// Accept `push` clients until SIGTERM or SIGINT.
    async fn accept(
        self: Arc<Self>,
        listener: &UnixListener,
        uid: u32,
        mut stop: Stop,
    ) -> Result<(), SenderError> {
        loop {
            let stream = tokio::select! {
                _ = stop.term.recv() => break,
                _ = stop.int.recv() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("accept on the daemon socket: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // The socket is 0600, so only our user (or root) can connect; check anyway.
            match stream.peer_cred() {
                Ok(cred) if cred.uid() == uid || cred.uid() == 0 => {}
                other => {
                    tracing::warn!(peer = ?other, "refused a client of another user on the daemon socket");
                    continue;
                }
            }
            tokio::spawn(self.clone().serve_client(stream));
        }
        tracing::info!("stopping");
        Ok(())
    }

    async fn serve_client(self: Arc<Self>, mut stream: UnixStream) {
        let due = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        // The magic says which request this is: a push's hand-off or `status`.
        let mut magic = [0u8; 4];
        let filled = match tokio::time::timeout_at(due, read_up_to(&mut stream, &mut magic)).await {
            // Connected and closed without a byte: a liveness probe (a second daemon checking
            // whether this one is alive).
            Ok(Ok(0)) => return,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::warn!("unreadable request on the daemon socket: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!("a client connected to the daemon socket and sent no request within {REQUEST_TIMEOUT:?}");
                return;
            }
        };
        let magic = &magic[..filled];
        if magic == STATUS_MAGIC {
            let mut reader = magic.chain(&mut stream);
            let body = read_frame(&mut reader, STATUS, Some(due)).await;
            if let Err(e) = body.map(|b| StatusRequest::decode_body(&b)) {
                tracing::warn!("unreadable status request on the daemon socket: {e}");
                return;
            }
            let _ = stream.write_all(&encode_status(&self.status())).await;
            return;
        }
        let body = read_frame(&mut magic.chain(&mut stream), HANDOFF, Some(due)).await;
        let request = match body.map(|b| Handoff::decode_body(&b).map_err(ReadError::Frame)) {
            Ok(Ok(r)) => r,
            // Connected and closed without a byte: a liveness probe (a second daemon checking
            // whether this one is alive).
            Err(ReadError::Ended) => return,
            Err(ReadError::Deadline) => {
                tracing::warn!("a client connected to the daemon socket and sent no request within {REQUEST_TIMEOUT:?}");
                return;
            }
            Ok(Err(e)) | Err(e) => {
                tracing::warn!("unreadable request on the daemon socket: {e}");
                return;
            }
        };
        let started = Instant::now();
        let reply = self.handle(&request).await;
        metrics::handoff(reply == HandoffReply::ShippedAhead);
        tracing::debug!(name = %request.name, ?reply, elapsed = ?started.elapsed(), "push answered");
        // If push has gone (killed, timed out) there is nobody to tell.
        let _ = stream.write_all(&reply.encode()).await;
    }

    /// Answer one `push`: from the book when look-ahead shipped exactly this file, else by
    /// shipping it now on the warm connection.
    async fn handle(self: &Arc<Self>, request: &Handoff) -> HandoffReply {
        let failed = |e: SenderError| HandoffReply::Failed {
            message: e.to_string(),
        };
        if !request.path.is_absolute() {
            return failed(SenderError::Setup(format!(
                "the daemon needs an absolute path, got {}",
                request.path.display()
            )));
        }
        let name = request.name.as_str();
        loop {
            let mut changed = self.changed.subscribe();
            let identity = match identity(&request.path).await {
                Ok(id) => id,
                Err(e) => return failed(e),
            };
            let lookup = self.book().lookup(name, &identity);
            match lookup {
                Lookup::Shipped => return HandoffReply::ShippedAhead,
                Lookup::InFlight => {
                    let _ = changed.changed().await;
                }
                Lookup::Ship => {
                    if self.book().begin(name) {
                        break;
                    }
                }
            }
        }
        let (result, outcome) = self.ship(&request.path, name).await;
        // Without look-ahead nothing prunes the book, and PostgreSQL will not ask again for a
        // segment it was told is archived: keep nothing (`Untrusted` removes the entry). With it, keep the acknowledgement
        // until the .ready file goes, so look-ahead does not ship the segment a second time.
        let outcome = if self.look_ahead_on() {
            outcome
        } else {
            Outcome::Untrusted
        };
        self.finish(name, outcome);
        match result {
            Ok(Pushed::Stored) => HandoffReply::Stored,
            Ok(Pushed::AlreadyHad) => HandoffReply::AlreadyHad,
            Ok(Pushed::ShippedAhead) => HandoffReply::ShippedAhead,
            Ok(Pushed::Dropped) => unreachable_dropped(),
            Err(e) => self.valve(&request.path, name, e).await,
        }
    }

    /// A failed push through the daemon: dropped by the pg_wal valve (`max_backlog`), counted
    /// and logged here, its ERROR line printed by `push`; or the failure.
    async fn valve(&self, path: &Path, name: &str, failure: SenderError) -> HandoffReply {
        if self.settings.max_backlog.is_none() {
            return HandoffReply::Failed {
                message: failure.to_string(),
            };
        }
        let (settings, path, name) = (self.settings.clone(), path.to_path_buf(), name.to_string());
        let decided = tokio::task::spawn_blocking(move || {
            crate::valve::consider(&settings, &path, &name, failure)
        })
        .await;
        match decided {
            Ok(Ok(message)) => {
                metrics::dropped();
                tracing::error!("{message}");
                HandoffReply::Dropped { message }
            }
            Ok(Err(e)) => HandoffReply::Failed {
                message: e.to_string(),
            },
            Err(e) => HandoffReply::Failed {
                message: SenderError::TaskFailed {
                    what: "pg_wal valve",
                    detail: e.to_string(),
                }
                .to_string(),
            },
        }
    }

    fn look_ahead_on(&self) -> bool {
        self.settings.pgdata.is_some() && self.settings.lookahead > 0
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        // A panic while holding the lock cannot leave the book half-updated in a way that
        // matters: every method is a single map operation.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn finish(&self, name: &str, outcome: Outcome) {
        self.book().finish(name, outcome, Instant::now());
        self.changed.send_modify(|n| *n += 1);
    }

    /// Ship `path` as `name` and say what the receiver's acknowledgement may be trusted for.
    async fn ship(
        self: &Arc<Self>,
        path: &Path,
        name: &str,
    ) -> (Result<Pushed, SenderError>, Outcome) {
        let mut before = match identity(path).await {
            Ok(id) => id,
            Err(e) => return (Err(e), Outcome::Failed),
        };
        if !before.settled(SystemTime::now()) {
            // Just written: wait until a further write would be sure to move its times.
            tokio::time::sleep(SETTLE).await;
            before = match identity(path).await {
                Ok(id) => id,
                Err(e) => return (Err(e), Outcome::Failed),
            };
        }
        let read_at = SystemTime::now();
        let result = self.ship_once(path, name).await;
        let now = identity(path).await.ok();
        let outcome = lookahead::judge(result.is_ok(), &before, read_at, now.as_ref());
        (result, outcome)
    }

    /// Send the file to every receiver at once and answer as soon as the policy is decided:
    /// met (`require` stored it) or out of reach (too many failed). Transfers still running go
    /// on; each link records its own outcome (and owes the file on failure).
    async fn ship_once(self: &Arc<Self>, path: &Path, name: &str) -> Result<Pushed, SenderError> {
        let request = push::prepare_blocking(path, name, self.settings.compression).await?;
        let total = self.links.len();
        let need = self.settings.require.needed(total);
        let (tx, mut rx) = tokio::sync::mpsc::channel(total);
        for (i, link) in self.links.iter().enumerate() {
            let (daemon, link, tx) = (self.clone(), link.clone(), tx.clone());
            let (path, name, request) = (path.to_path_buf(), name.to_string(), request.clone());
            tokio::spawn(async move {
                let result = link.ship(&daemon.settings, &path, &name, request).await;
                link.record(&name, &path, &result);
                let _ = tx.send((i, result)).await;
            });
        }
        drop(tx);
        let mut results: Vec<(&str, Result<Pushed, SenderError>)> = Vec::new();
        let (mut stored, mut failed) = (0, 0);
        while let Some((i, result)) = rx.recv().await {
            match &result {
                Ok(_) => stored += 1,
                Err(_) => failed += 1,
            }
            results.push((self.links[i].address(), result));
            if stored >= need || failed > total - need {
                break;
            }
        }
        if total == 1 {
            if let Some((_, result)) = results.pop() {
                return result;
            }
        }
        push::tally(&self.settings, name, results)
    }

    /// Every `every`: append the open segment's newly flushed bytes to each receiver's
    /// `NAME.partial` (see [`crate::partial`]). Problems are logged once each (a WARN when one
    /// starts, an INFO when shipping works again) and retried at the next round.
    async fn ship_open_segment(
        self: Arc<Self>,
        every: Duration,
        pgdata: PathBuf,
        conninfo: String,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut primary: Option<partial::Primary> = None;
        let mut open: Vec<OpenSegment> =
            self.links.iter().map(|_| OpenSegment::default()).collect();
        let mut problem: Vec<Option<String>> = self.links.iter().map(|_| None).collect();
        loop {
            tick.tick().await;
            let flushed = match self.flushed(&mut primary, &conninfo).await {
                Ok(f) => f,
                Err(e) => {
                    if problem[0].as_deref() != Some(e.as_str()) {
                        tracing::warn!("open segment not shipped: {e}; retrying every {every:?}");
                        problem[0] = Some(e);
                    }
                    continue;
                }
            };
            for (i, link) in self.links.iter().enumerate() {
                match self
                    .partial_round(link, flushed, &mut open[i], &pgdata)
                    .await
                {
                    Ok(()) => {
                        if problem[i].take().is_some() {
                            tracing::info!(receiver = %link.address(), "shipping the open segment again");
                        }
                    }
                    Err(e) => {
                        metrics::partial_failed(link.address());
                        if problem[i].as_deref() != Some(e.as_str()) {
                            tracing::warn!(receiver = %link.address(), "open segment not shipped: {e}; retrying every {every:?}");
                            problem[i] = Some(e);
                        }
                    }
                }
            }
        }
    }

    /// The primary's flush position and segment size, reconnecting when needed.
    async fn flushed(
        &self,
        primary: &mut Option<partial::Primary>,
        conninfo: &str,
    ) -> Result<(partial::Flushed, u64), String> {
        if primary.as_ref().is_none_or(|p| p.is_closed()) {
            *primary = Some(partial::Primary::connect(conninfo).await?);
        }
        let p = primary.as_ref().expect("connected just above");
        match p.flushed().await {
            Ok(f) => Ok((f, p.seg_size)),
            Err(e) => {
                *primary = None;
                Err(e)
            }
        }
    }

    /// One round for one receiver: the appends up to the flush position. When the open
    /// segment changed, the previous one is completed first (all of it is flushed), so that
    /// its WAL is on the receiver before the archiver's copy of it arrives.
    async fn partial_round(
        &self,
        link: &Link,
        (flushed, seg_size): (partial::Flushed, u64),
        open: &mut OpenSegment,
        pgdata: &Path,
    ) -> Result<(), String> {
        let (name, upto) = partial::open_segment(flushed, seg_size);
        if open.segment != Some(name) {
            if let Some(prev) = open.segment {
                if !open.done && prev.timeline == name.timeline {
                    // Best effort: the archiver ships the finished segment anyway.
                    if let Err(e) = self
                        .append_upto(link, prev, (seg_size, seg_size), open, pgdata)
                        .await
                    {
                        tracing::debug!(segment = %prev, "finishing the previous partial: {e}");
                    }
                }
            }
            *open = OpenSegment {
                segment: Some(name),
                ..OpenSegment::default()
            };
        }
        if upto == 0 {
            return Ok(());
        }
        self.append_upto(link, name, (upto, seg_size), open, pgdata)
            .await
    }

    /// Append `pg_wal/NAME` up to `target` bytes to the receiver's `NAME.partial`, from what
    /// it holds (asked first when not known: a restarted daemon or receiver resumes there).
    /// `seg_size`: the segment size, for the LSN the metrics report.
    async fn append_upto(
        &self,
        link: &Link,
        name: walship_common::SegmentName,
        (target, seg_size): (u64, u64),
        open: &mut OpenSegment,
        pgdata: &Path,
    ) -> Result<(), String> {
        let pname = format!("{name}.partial");
        let seg_start = name.start_lsn(seg_size).map(|l| l.0).unwrap_or(0);
        let settings = &self.settings;
        loop {
            if open.done {
                return Ok(());
            }
            // Unknown: an empty append at an impossible offset only asks.
            let (from, to) = match open.held {
                Some(h) if h >= target => return Ok(()),
                Some(h) => (h, partial::append_end(h, target)),
                None => (u64::MAX, u64::MAX),
            };
            let bytes = if from == u64::MAX {
                Vec::new()
            } else {
                let pgdata = pgdata.to_path_buf();
                tokio::task::spawn_blocking(move || partial::read_range(&pgdata, &name, from, to))
                    .await
                    .map_err(|e| e.to_string())??
            };
            let conn = link.connection().await.map_err(|e| e.to_string())?;
            let reply = timeout(
                settings.timeout,
                push::append(settings, &link.receiver, &conn, &pname, from, &bytes),
            )
            .await
            .map_err(|_| format!("{pname}: no reply within {:?}", settings.timeout))?
            .map_err(|e| e.to_string())?;
            match reply {
                Reply::Partial { bytes: held } => {
                    if from != u64::MAX && held == to {
                        tracing::debug!(partial = %pname, held, "appended");
                        metrics::partial_appended(link.address(), to - from, seg_start + held);
                    } else {
                        metrics::partial_held(link.address(), seg_start + held);
                    }
                    open.held = Some(held);
                    link.note_partial(name, held);
                }
                Reply::AlreadyHad => open.done = true,
                other => return Err(format!("{pname}: unexpected reply {other:?}")),
            }
        }
    }

    /// What the daemon knows about every receiver, for `status`.
    fn status(&self) -> FanoutStatus {
        let total = self.links.len();
        FanoutStatus {
            require: match self.settings.require {
                Require::All => "all".into(),
                Require::AtLeast(n) => n.to_string(),
            },
            needed: self.settings.require.needed(total),
            receivers: self
                .links
                .iter()
                .map(|l| {
                    let mut s = l.state().clone();
                    s.owed = l.owed().len() as u64;
                    s
                })
                .collect(),
        }
    }

    /// Ship what `link`'s receiver owes, oldest first, whenever it answers; a file gone from
    /// pg_wal by then is missed for good.
    async fn catch_up(self: Arc<Self>, link: Arc<Link>) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let next = if link.state().reachable {
                link.owed()
                    .first_key_value()
                    .map(|(n, p)| (n.clone(), p.clone()))
            } else {
                None
            };
            let Some((name, path)) = next else {
                tokio::select! {
                    _ = link.wake.notified() => {}
                    _ = tokio::time::sleep(CATCH_UP_POLL) => {}
                }
                continue;
            };
            let request = match push::prepare_blocking(&path, &name, self.settings.compression)
                .await
            {
                Ok(r) => r,
                Err(SenderError::ReadFile { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    link.missed(&name);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(receiver = %link.address(), %name, "catch-up: {e}; not shipping it to this receiver");
                    link.forget(&name);
                    continue;
                }
            };
            let result = link.ship(&self.settings, &path, &name, request).await;
            link.record(&name, &path, &result);
            match result {
                Ok(pushed) => {
                    backoff = FIRST_BACKOFF;
                    tracing::info!(receiver = %link.address(), %name, ?pushed, owed = link.owed().len(), "caught up");
                }
                Err(e) => {
                    tracing::debug!(receiver = %link.address(), %name, "catch-up: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Ship `.ready` segments ahead of the archiver, at most `lookahead` at once.
    async fn look_ahead(self: Arc<Self>, status_dir: PathBuf) {
        let wal_dir = status_dir
            .parent()
            .expect("archive_status is under pg_wal")
            .to_path_buf();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut listing_failed = false;
        loop {
            tick.tick().await;
            let dir = status_dir.clone();
            let ready = match tokio::task::spawn_blocking(move || list_ready(&dir)).await {
                Ok(Ok(ready)) => {
                    listing_failed = false;
                    ready
                }
                Ok(Err(e)) => {
                    if !listing_failed {
                        tracing::warn!(
                            "cannot list {}: {e}; look-ahead paused",
                            status_dir.display()
                        );
                    }
                    listing_failed = true;
                    continue;
                }
                Err(e) => {
                    tracing::error!("look-ahead listing task failed: {e}");
                    continue;
                }
            };
            let start = {
                let mut book = self.book();
                book.retain_ready(&ready);
                metrics::ready_segments(ready.len());
                book.plan(&ready, self.settings.lookahead, Instant::now())
            };
            for name in start {
                let daemon = self.clone();
                let path = wal_dir.join(&name);
                tokio::spawn(async move {
                    let started = Instant::now();
                    let (result, outcome) = daemon.ship(&path, &name).await;
                    daemon.finish(&name, outcome);
                    match result {
                        Ok(pushed) => {
                            tracing::debug!(%name, ?pushed, ?outcome, elapsed = ?started.elapsed(), "shipped ahead")
                        }
                        // PostgreSQL's own push will try again and report in its log.
                        Err(e) => tracing::warn!(%name, "look-ahead: {e}"),
                    }
                });
            }
        }
    }
}

impl Link {
    async fn new(
        settings: &SenderSettings,
        receiver: &ReceiverTarget,
    ) -> Result<Link, SenderError> {
        Ok(Link {
            receiver: receiver.clone(),
            alone: settings.receivers.len() == 1,
            target: Target::new(settings, receiver).await?,
            conn: tokio::sync::Mutex::new(None),
            slots: tokio::sync::Semaphore::new(TRANSFER_SLOTS),
            state: Mutex::new(ReceiverStatus::new(
                &receiver.address,
                &receiver.server_name,
            )),
            owed: Mutex::new(BTreeMap::new()),
            wake: tokio::sync::Notify::new(),
            adapt: Mutex::new(Adapt::new(push::fixed_codec(settings))),
            partial: Mutex::new(partial::Held::default()),
            no_seals: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn address(&self) -> &str {
        &self.receiver.address
    }

    /// The receiver said it holds `held` bytes of `segment`'s partial.
    fn note_partial(&self, segment: walship_common::SegmentName, held: u64) {
        self.partial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(segment, held);
    }

    /// The finished segment `name` (at `path`, `size` bytes) without uploading it, when this
    /// receiver holds its partial: the missing end appended (usually nothing under load, the
    /// open-segment task completes a partial when the segment changes; after a switch on a
    /// quiet primary, the rest of the segment), then a [`Seal`] carrying the digest of the
    /// whole file. `None` whenever that does not
    /// give `Stored` (no partial of it, an older receiver, a partial that is not a prefix):
    /// the caller uploads the segment as usual, which stays the authority.
    async fn try_seal(
        &self,
        settings: &SenderSettings,
        path: &Path,
        name: &str,
        size: u64,
    ) -> Option<Pushed> {
        let Ok(WalFileName::Segment(seg)) = name.parse::<WalFileName>() else {
            return None;
        };
        if self.no_seals.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let hint = self
            .partial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .of(seg);
        tracing::debug!(segment = %name, ?hint, "finished: what the receiver holds of its partial");
        let mut held = hint?;
        if held > size {
            return None;
        }
        let conn = self.connection().await.ok()?;
        let pname = format!("{name}.partial");
        while held < size {
            let (p, to) = (path.to_path_buf(), partial::append_end(held, size));
            let bytes = tokio::task::spawn_blocking(move || partial::read_range_of(&p, held, to))
                .await
                .ok()?
                .ok()?;
            let append = push::append(settings, &self.receiver, &conn, &pname, held, &bytes);
            match timeout(settings.timeout, append).await.ok()?.ok()? {
                Reply::Partial { bytes: now } if now > held => {
                    if now == to {
                        let start = seg.start_lsn(size).map(|l| l.0).unwrap_or(0);
                        metrics::partial_appended(self.address(), to - held, start + now);
                    }
                    held = now;
                    self.note_partial(seg, held);
                }
                other => {
                    tracing::debug!(segment = %name, ?other, "not sealed: completing the partial");
                    return None;
                }
            }
        }
        let p = path.to_path_buf();
        let digest = tokio::task::spawn_blocking(move || partial::digest_of(&p, size))
            .await
            .ok()?
            .ok()?;
        let seal = Seal {
            name: name.to_string(),
            size,
            digest,
        };
        match timeout(settings.timeout, push::seal(&self.receiver, &conn, &seal)).await {
            Ok(Ok(Reply::Stored)) => {
                tracing::debug!(segment = %name, "sealed from the partial the receiver holds");
                metrics::sealed(self.address());
                Some(Pushed::Stored)
            }
            Ok(Ok(other)) => {
                tracing::debug!(segment = %name, ?other, "not sealed; uploading it");
                None
            }
            Ok(Err(e)) => {
                if let SenderError::Refused {
                    refusal: Refusal::Malformed { .. },
                    ..
                } = e
                {
                    tracing::info!(receiver = %self.address(), "the receiver does not know seals (a release before them): finished segments are uploaded whole; upgrade it to stop shipping them twice");
                    self.no_seals
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                } else {
                    tracing::debug!(segment = %name, "not sealed ({e}); uploading it");
                }
                None
            }
            Err(_) => None,
        }
    }

    // A panic while holding these locks cannot leave them half-updated in a way that matters:
    // every change is a single field or map operation.
    fn state(&self) -> std::sync::MutexGuard<'_, ReceiverStatus> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn owed(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PathBuf>> {
        self.owed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn adapt(&self) -> std::sync::MutexGuard<'_, Adapt> {
        self.adapt.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take in a stored transfer's numbers; say so when the codec for this link changes (a
    /// one-transfer try of a faster codec only in the debug log).
    fn observe(&self, sample: Sample) {
        let mut adapt = self.adapt();
        let before = adapt.settled();
        tracing::debug!(receiver = %self.address(), ?sample, "transfer measured");
        let changed = adapt.observe(sample);
        let now = adapt.settled();
        let link = walship_common::human::size(adapt.link_speed().unwrap_or(0.0) as u64);
        if now != before {
            tracing::info!(
                receiver = %self.address(),
                "compression: {now} instead of {before} (link about {link}/s, last transfer {} in {} to compress)",
                walship_common::human::size(sample.plain),
                walship_common::human::duration(sample.compress),
            );
        } else if let Some(next) = changed {
            tracing::debug!(receiver = %self.address(), "compression: {next} for the next transfer (settled on {now}; link about {link}/s)");
        }
    }

    /// One transfer to this receiver, retried once on a fresh connection when the warm one
    /// turns out dead (the receiver restarted): the receiver answers "already had" if the
    /// first got through. A receiver known to be down fails at once (its file is then owed).
    async fn ship(
        &self,
        settings: &SenderSettings,
        path: &Path,
        name: &str,
        request: Request,
    ) -> Result<Pushed, SenderError> {
        {
            let state = self.state();
            if !state.reachable && state.down_since.is_some() {
                return Err(SenderError::ReceiverDown {
                    addr: self.address().to_string(),
                    error: state.last_error.clone().unwrap_or_default(),
                });
            }
        }
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the transfer semaphore is never closed");
        let _active = metrics::upload();
        let started = Instant::now();
        let size = request.size;
        if settings.partial_interval.is_some() {
            if let Some(pushed) = self.try_seal(settings, path, name, size).await {
                metrics::shipped(self.address(), size, started.elapsed());
                return Ok(pushed);
            }
        }
        let receiver = &self.receiver;
        let codec = if settings.adaptive {
            self.adapt().codec()
        } else {
            push::fixed_codec(settings)
        };
        let attempt = |conn: quinn::Connection, codec: Codec| {
            let request = request.clone();
            async move {
                let progress = push::Progress::default();
                let result = timeout(
                    settings.timeout,
                    push::transfer(settings, receiver, &conn, path, request, codec, &progress),
                )
                .await
                .unwrap_or_else(|_| Err(progress.timeout_error(settings, &receiver.address, name)));
                if settings.adaptive && matches!(result, Ok(Pushed::Stored)) {
                    if let Some(sample) = progress.sample(codec, size) {
                        self.observe(sample);
                    }
                }
                result
            }
        };
        let conn = self.connection().await?;
        let result = match attempt(conn.clone(), codec).await {
            Err(SenderError::ConnectionLost { .. } | SenderError::Handshake { .. })
                if conn.close_reason().is_some() =>
            {
                tracing::info!(receiver = %self.address(), %name, "warm connection was gone; retrying on a new one");
                attempt(self.connection().await?, codec).await
            }
            Err(SenderError::Refused {
                refusal: walship_common::proto::Refusal::Malformed { reason },
                ..
            }) if settings.adaptive && codec == Codec::Lz4 => {
                // A receiver built before LZ4 cannot read the request: zstd from now on.
                let next = {
                    let mut adapt = self.adapt();
                    adapt.forbid(Codec::Lz4);
                    adapt.codec()
                };
                tracing::info!(receiver = %self.address(), "this receiver does not take lz4 ({reason}): it is probably older than this sender; {next} from now on (upgrade it to let \"auto\" use lz4 on a fast link)");
                attempt(self.connection().await?, next).await
            }
            other => other,
        };
        match &result {
            Ok(Pushed::Stored) => metrics::shipped(self.address(), size, started.elapsed()),
            Ok(Pushed::AlreadyHad) => metrics::already_had(self.address()),
            Ok(Pushed::ShippedAhead | Pushed::Dropped) => {}
            Err(_) => metrics::failed(self.address()),
        }
        result
    }

    /// Note a transfer's outcome: acknowledged, or owed (unless the receiver refused the
    /// content: sending it again would be refused again, so it is reported, not retried).
    fn record(&self, name: &str, path: &Path, result: &Result<Pushed, SenderError>) {
        let now = SystemTime::now();
        match result {
            Ok(_) => {
                self.state().acked(name, now);
                self.forget(name);
            }
            Err(e @ SenderError::Refused { refusal, .. })
                if !matches!(refusal, walship_common::proto::Refusal::ShuttingDown) =>
            {
                // With several receivers a refusal may hide behind `require = N`: say it here.
                if !self.alone {
                    tracing::warn!(receiver = %self.address(), "{e}");
                }
                self.state().failed(e.to_string());
                self.forget(name);
            }
            Err(e) => {
                match e {
                    SenderError::ReceiverDown { .. } => {}
                    SenderError::ReceiverUnreachable { .. }
                    | SenderError::ConnectionLost { .. }
                    | SenderError::Handshake { .. }
                    | SenderError::Connect { .. } => self.state().down(e.to_string(), now),
                    e => self.state().failed(e.to_string()),
                }
                // The only receiver owes nothing: PostgreSQL retries until it has the file.
                if self.alone {
                    return;
                }
                let n = {
                    let mut owed = self.owed();
                    owed.insert(name.to_string(), path.to_path_buf());
                    owed.len()
                };
                metrics::owed(self.address(), n);
                self.wake.notify_one();
            }
        }
    }

    /// `name` is no longer owed.
    fn forget(&self, name: &str) {
        let n = {
            let mut owed = self.owed();
            owed.remove(name);
            owed.len()
        };
        metrics::owed(self.address(), n);
    }

    /// `name` left pg_wal before this receiver got it.
    fn missed(&self, name: &str) {
        tracing::warn!(
            receiver = %self.address(),
            "receiver {} missed {name}: it left pg_wal before the receiver came back, so that receiver's archive has a hole there; a standby fed only from it needs a new base backup",
            self.address()
        );
        self.state().missed(name);
        metrics::missed(self.address());
        self.forget(name);
    }

    /// The warm connection, or a new one if it closed.
    async fn connection(&self) -> Result<quinn::Connection, SenderError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let conn = self.target.connect().await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Keep a connection open, reconnecting with backoff, so `push` finds one ready.
    async fn keep_warm(self: Arc<Self>) {
        let mut backoff = FIRST_BACKOFF;
        let addr = self.address().to_string();
        loop {
            match self.connection().await {
                Ok(conn) => {
                    metrics::connected(&addr, true);
                    let came_back = !self.state().reachable;
                    self.state().up();
                    if came_back && !self.owed().is_empty() {
                        tracing::info!(receiver = %addr, owed = self.owed().len(), "receiver answers again; catching it up");
                    }
                    self.wake.notify_one();
                    let reason = conn.closed().await;
                    metrics::connected(&addr, false);
                    // In TLS 1.3 the receiver judges our certificate after we consider the
                    // handshake done: its refusal arrives as the connection closing. Say so,
                    // with the advice, and back off rather than reconnect at once.
                    if walship_common::sys::quic::tls_failure(&reason).is_some() {
                        let e = push::handshake_error(&addr, &self.receiver.server_name, reason);
                        tracing::warn!("{e}; retrying in {backoff:?}");
                        self.state().down(e.to_string(), SystemTime::now());
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    } else {
                        backoff = FIRST_BACKOFF;
                        tracing::info!(
                            receiver = %addr,
                            "connection to receiver closed: {}; reconnecting",
                            closed_how(&reason)
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!("{e}; retrying in {backoff:?}");
                    self.state().down(e.to_string(), SystemTime::now());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// `ship` never drops: only a failed push is dropped, by [`Daemon::valve`].
fn unreachable_dropped() -> HandoffReply {
    HandoffReply::Failed {
        message: "internal error: a transfer reported a drop; this is a bug in walship-sender, please report it (PostgreSQL will retry)".into(),
    }
}

/// With `metrics_listen`: the metrics endpoint, bound and serving (see [`metrics`]).
async fn metrics_endpoint(
    settings: &SenderSettings,
) -> Result<Option<tokio::task::JoinHandle<()>>, SenderError> {
    use walship_common::sys::metrics_http;
    let Some(addr) = settings.metrics_listen else {
        return Ok(None);
    };
    let listener = metrics_http::bind(addr).await.map_err(|e| {
        SenderError::Setup(format!(
            "cannot listen for metrics on TCP {addr}: {e}; is the port taken, or is `metrics_listen` wrong?"
        ))
    })?;
    let bound = metrics_http::local(&listener).unwrap_or(addr);
    tracing::info!("metrics on http://{bound}/metrics");
    Ok(Some(tokio::spawn(metrics_http::serve(
        listener,
        metrics::renderer(),
    ))))
}

/// Read until `buf` is full or the peer stops sending; the bytes read.
async fn read_up_to(stream: &mut UnixStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

async fn identity(path: &Path) -> Result<FileIdentity, SenderError> {
    tokio::fs::metadata(path)
        .await
        .map(|m| walship_common::sys::file_identity(&m))
        .map_err(|source| SenderError::ReadFile {
            path: path.to_path_buf(),
            source,
        })
}

/// Why the warm connection closed, in words (quinn's own text for an application close is
/// "closed by peer: 0").
fn closed_how(reason: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    match reason {
        E::ApplicationClosed(c) => close_meaning(c.error_code.into_inner()),
        E::TimedOut => {
            "no packet from the receiver within the idle timeout (it may be down, or the link cut)"
                .into()
        }
        E::Reset => "the receiver no longer knew it (restarted?)".into(),
        E::LocallyClosed => "closed by this daemon".into(),
        E::ConnectionClosed(c) => format!("the receiver's QUIC stack closed it ({c})"),
        other => other.to_string(),
    }
}

/// `.ready` WAL files in `archive_status`, in the archiver's order.
fn list_ready(status_dir: &Path) -> std::io::Result<Vec<WalFileName>> {
    let mut ready = Vec::new();
    for entry in std::fs::read_dir(status_dir)? {
        if let Some(name) = entry?.file_name().to_str().and_then(lookahead::ready_name) {
            ready.push(name);
        }
    }
    lookahead::archive_order(&mut ready);
    Ok(ready)
}

/// Refuse a socket directory that others may write unless it is sticky: there another user
/// could remove our socket and listen in its place, answering `push` with lies (`push` checks
/// who answers, but a daemon that can be pushed aside is a misconfiguration to fix at once).
fn check_socket_dir(path: &Path, dir: &Path) -> Result<(), SenderError> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        SenderError::Setup(format!(
            "daemon socket {}: directory {}: {e}; create it, owned by this user",
            path.display(),
            dir.display()
        ))
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    // Group or others may write, and the sticky bit (only a file's owner may remove or rename
    // it) is not set.
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(SenderError::Setup(format!(
            "daemon socket {}: directory {} is writable by group or others and not sticky (mode {mode:o}), so another user could replace the socket; run chmod go-w {} or set `socket` to a path in a directory of this user's own, such as /run/walship/sender.sock",
            path.display(),
            dir.display(),
            dir.display()
        )));
    }
    // The directory's owner may remove or replace any entry in it, sticky or not.
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(SenderError::Setup(format!(
            "daemon socket {}: directory {} belongs to uid {}, not this user (uid {me}) or root, so its owner could replace the socket; set `socket` to a path in a directory of this user's own, such as /run/walship/sender.sock",
            path.display(),
            dir.display(),
            meta.uid()
        )));
    }
    Ok(())
}

/// The bound daemon socket; removed again on a clean stop.
struct BoundSocket {
    listener: UnixListener,
    path: PathBuf,
    ino: u64,
    uid: u32,
}

impl BoundSocket {
    /// Remove the socket file if it is still ours (a second daemon may have replaced it).
    fn remove(&self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Bind the socket with mode 0600 from the first moment it is reachable: bind under a
/// temporary name, chmod, then rename into place (which also replaces the stale socket of a
/// killed daemon atomically). Refuses when another daemon answers there, or when the path is
/// something other than a socket.
fn bind(path: &Path) -> Result<BoundSocket, SenderError> {
    let err =
        |what: String| SenderError::Setup(format!("daemon socket {}: {what}", path.display()));
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    check_socket_dir(path, dir)?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(err(
                "exists and is not a socket; choose another `socket` path".into(),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(
                "another walship-sender daemon is listening there; stop it first".into(),
            ));
        }
    }
    let file = path
        .file_name()
        .ok_or_else(|| err("not a file path".into()))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{file}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let std_listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(|e| {
        err(format!(
            "bind: {e} (does the directory exist and belong to this user?)"
        ))
    })?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::symlink_metadata(&tmp))
        .and_then(|meta| std::fs::rename(&tmp, path).map(|()| meta));
    let meta = match placed {
        Ok(meta) => meta,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e.to_string()));
        }
    };
    std_listener
        .set_nonblocking(true)
        .map_err(|e| err(e.to_string()))?;
    let listener = UnixListener::from_std(std_listener).map_err(|e| err(e.to_string()))?;
    Ok(BoundSocket {
        listener,
        path: path.to_path_buf(),
        ino: meta.ino(),
        uid: meta.uid(),
    })
}
