//! `walship-receiver serve`: a QUIC listener (mutual TLS) that takes one file per stream,
//! verifies it with [`Incoming`], stores it durably through [`Archive`] and only then replies.
//! This driver owns what is about time and resources: deadlines, upload slots, the pace an
//! upload must keep, write batching; every decision about the bytes is `Incoming`'s.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn, Instrument};
use walship_common::handshake;
use walship_common::proto::backup::IncomingFile;
use walship_common::proto::frame::{CLOSE_EVICTED, CLOSE_SHUTDOWN, REQUEST};
use walship_common::proto::{
    BackupRequest, Encoding, FrameError, Incoming, Refusal, Reply, Request, Seal, WireRequest,
    PROTOCOL_VERSION,
};
use walship_common::sys::config::ReceiverSettings;
use walship_common::sys::durable::{is_disk_full, TempFile};
use walship_common::sys::frame_io::{read_frame, ReadError};
use walship_common::sys::metrics_http;
use walship_common::sys::tls;

use crate::error::ReceiverError;
use crate::metrics;
use crate::store::{storage_refusal, Appended, Archive};
use crate::target::Target;

// Memory. The receiver's memory is bounded whatever the number of senders, connections and
// streams. With the defaults of the receiver.toml keys in [brackets]:
//
//   process, runtime, TLS and QUIC state at rest                            ~7 MiB (measured)
// + MAX_OPEN_CONNECTIONS x connection state (TLS, QUIC, no stream credit) 256 x ~30 KiB = 8 MiB
// + [max_connections] x connection window (bytes received, unread)        16 x 4 MiB = 64 MiB
//     (the connection window is MAX_STREAMS_PER_CONNECTION x [stream_window] = 16 x 256 KiB;
//     QUIC flow control: a sender cannot have more than this in flight to us)
// + [max_uploads] x per upload                                            8 x 2.7 MiB = 22 MiB
//     (zstd: 2 MiB window, encoding::WINDOW_LOG, capped in the decoder; 256 KiB of block
//     buffers; a 256 KiB decoded chunk; the wire batch. Plain: just the 256 KiB batch)
// = ~100 MiB at the very worst (16 connections each with 16 streams sending at once, 240 more
// connections open and waiting). In general: ~15 MiB + max_connections x 16 x stream_window +
// max_uploads x 2.7 MiB; the bounds checked at load (config.rs) keep each term finite, the
// operator who raises them chooses the sum.
//
// A connection gets stream credit (may send) only once it holds one of [max_connections]
// sending slots; until then its sender waits in `open_bi`, costing us no buffer. Connections
// past MAX_OPEN_CONNECTIONS wait in QUIC's handshake queue. A stream waits (it is not refused)
// for one of [max_uploads] upload slots before any per-upload memory is allocated, its first
// [stream_window] bytes held by QUIC meanwhile. Because a connection's window is the sum of its
// streams' windows, streams waiting on a connection never use up the window an active stream
// on the same connection needs.
//
// Holding a slot is bounded in time, so that no peer can keep one from others: a request
// header must arrive within [idle_timeout]; an upload holding an upload slot must average
// [min_upload_rate] after a grace of [idle_timeout] (a trickle is cut off, told why); one
// connection holds at most half the upload slots; a connection holding a sending slot with no
// stream in progress for EVICT_IDLE_AFTER is closed when another connection waits for one.
//
// The common case is far below: `push` uses one stream per connection, which can hold only
// [stream_window] unread: 16 pushes at once hold 16 x 256 KiB = 4 MiB in QUIC. Measured peak
// (VmHWM) with 16 pushes of 16 MiB segments at once: ~36 MiB with zstd, ~18 MiB plain; 64 at
// once: ~39 and ~20 MiB (it was 133 and 74 MiB with no limits). QUIC's reassembly may keep up
// to 2.5x the unread bytes allocated for an authenticated peer sending pathological frames
// (the 64 MiB term becomes 160 MiB); real senders' frames cost ~1.1x.

// Uploads decoding and writing at once across all connections: `max_uploads` (default 8,
// config::DEFAULT_MAX_UPLOADS). Each holds a zstd window: this is what bounds decoding memory.
// Connections with stream credit at once (each may hold a connection window of unread bytes):
// `max_connections` (default 16). Others wait, handshake done, until one closes or an idle one
// is evicted; PostgreSQL's archiver uses one at a time per primary.
// Unread bytes per stream: `stream_window` (default 256 KiB): enough for one stream to fill a
// loopback or LAN link while the previous batch is decoded and written (measured: no slower
// than 8 MiB on loopback). On a long link it caps one stream near 256 KiB per round trip (25
// MB/s of wire bytes at 10 ms, ~10x that of WAL with zstd); the daemon's parallel streams add
// up. The connection window is MAX_STREAMS_PER_CONNECTION of them: room for every stream's
// window, so that streams waiting for an upload slot cannot starve one that holds a slot on
// the same connection.

/// Connections open at once, sending or waiting to. More wait in QUIC's handshake queue.
const MAX_OPEN_CONNECTIONS: usize = 256;
/// Streams (files) one connection may have open at once; a sender opening more waits for one
/// to finish (QUIC stream credit). The sender daemon's look-ahead uses one each.
const MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// A connection holding a sending slot with no stream in progress for this long is closed when
/// another connection waits for a slot: a sender given stream credit opens its stream within a
/// round trip, and a daemon's idle warm connection reconnects (and waits its turn) when needed.
const EVICT_IDLE_AFTER: Duration = Duration::from_secs(2);
/// How often a connection waiting for a sending slot looks for an idle one to evict.
const EVICT_CHECK_EVERY: Duration = Duration::from_millis(250);
/// Bytes gathered from the stream before one write to the temp file: large enough to keep the
/// syscall count low (64 writes per 16 MiB segment), small enough to multiply.
const WRITE_BUF: usize = 256 << 10;
/// Compressed bytes gathered before one decode step: they expand ~5-20x, so smaller batches
/// keep decoding and writing in step with the arrival instead of all at the end.
const ZSTD_BATCH: usize = 64 << 10;
/// Handshakes QUIC keeps waiting while MAX_CONNECTIONS are served (more are refused), and the
/// bytes it may buffer for all of them.
const MAX_WAITING_HANDSHAKES: usize = 256;
const WAITING_HANDSHAKE_BYTES: u64 = 1 << 20;
/// How long in-flight uploads may take to finish after SIGINT/SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Run until `shutdown` is cancelled. Binds before returning the first log line "listening".
pub async fn run(
    settings: ReceiverSettings,
    shutdown: CancellationToken,
) -> Result<(), ReceiverError> {
    run_with(settings, shutdown, tokio::sync::oneshot::channel().0).await
}

/// [`run`], sending the bound address to `ready` once listening (tests bind port 0).
pub async fn run_with(
    settings: ReceiverSettings,
    shutdown: CancellationToken,
    ready: tokio::sync::oneshot::Sender<std::net::SocketAddr>,
) -> Result<(), ReceiverError> {
    // One archive per cluster (the single-cluster form: one), each with its own lock, pin,
    // fence and restore records in its archive_dir.
    let mut clusters = Vec::new();
    let mut uploaders = Vec::new();
    for view in settings.views() {
        let archive = match &view.cluster {
            Some(name) => Archive::open(&view).map_err(|e| ReceiverError::Cluster {
                name: name.clone(),
                source: Box::new(e),
            })?,
            None => Archive::open(&view)?,
        };
        if let Some(name) = &view.cluster {
            info!(
                cluster = %name,
                archive_dir = %archive.dir().display(),
                allowed_clients = %view.allowed_clients.join(", "),
                "serving cluster {name}"
            );
        }
        // The object-store tier: checked (credentials, URL) before listening, then uploading
        // in the background; each file stored wakes it.
        let stored_wake = match &view.object_store {
            Some(o) => {
                let bucket = crate::objstore::Bucket::open(o).map_err(|e| match &view.cluster {
                    Some(name) => ReceiverError::Cluster {
                        name: name.clone(),
                        source: Box::new(e),
                    },
                    None => e,
                })?;
                let wake = Arc::new(tokio::sync::Notify::new());
                let task = crate::objstore::uploader(
                    archive.dir().to_path_buf(),
                    Arc::new(bucket),
                    wake.clone(),
                    shutdown.clone(),
                    view.cluster.clone(),
                );
                uploaders.push(match &view.cluster {
                    Some(name) => {
                        tokio::spawn(task.instrument(info_span!("cluster", cluster = %name)))
                    }
                    None => tokio::spawn(task),
                });
                Some(wake)
            }
            None => None,
        };
        clusters.push(Served {
            name: view.cluster.clone(),
            allowed: view.allowed_clients.clone(),
            stored_wake,
            archive: Arc::new(archive),
            // The standby's data directory, for base backups (`pgdata`; may not exist yet).
            target: Arc::new(Target::new(
                view.pgdata.clone(),
                std::env::current_exe().unwrap_or_else(|_| "walship-receiver".into()),
                std::path::absolute(&view.config_path).unwrap_or_else(|_| view.config_path.clone()),
            )),
        });
    }
    let clusters = Arc::new(clusters);
    let (endpoint, local) = endpoint(&settings)?;
    let scrapes = metrics_endpoint(&settings, &clusters).await?;
    let reloads =
        hangups().map(|h| tokio::spawn(reload_on_hangup(h, endpoint.clone(), settings.clone())));
    let dirs: Vec<String> = clusters
        .iter()
        .map(|c| c.archive.dir().display().to_string())
        .collect();
    info!(
        archive_dir = %dirs.join(", "),
        max_uploads = settings.max_uploads,
        max_connections = settings.max_connections,
        stream_window = settings.stream_window,
        min_upload_rate = settings.min_upload_rate,
        "listening on {local}"
    );
    let _ = ready.send(local);
    walship_common::sys::notify::ready();

    let tracker = TaskTracker::new();
    let connections = Arc::new(Semaphore::new(MAX_OPEN_CONNECTIONS));
    let limits = Limits {
        max_uploads: settings.max_uploads,
        max_connections: settings.max_connections,
        per_connection: settings.uploads_per_connection(),
        min_upload_rate: settings.min_upload_rate,
    };
    let sending = Arc::new(Semaphore::new(limits.max_connections));
    let uploads = Arc::new(Semaphore::new(limits.max_uploads));
    let holders = Arc::new(Holders::default());
    loop {
        // A connection slot first: past MAX_OPEN_CONNECTIONS, handshakes wait in QUIC's queue.
        let slot = match connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                warn!("{MAX_OPEN_CONNECTIONS} connections open: new ones wait until one closes");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    p = connections.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                }
            }
        };
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => break,
            },
        };
        let remote = incoming.remote_address();
        let shared = Shared {
            clusters: clusters.clone(),
            archive: None,
            cluster: None,
            subject: Arc::from(""),
            target: None,
            sending: sending.clone(),
            uploads: uploads.clone(),
            holders: holders.clone(),
            limits,
            idle: settings.idle_timeout,
            stored_wake: None,
        };
        let (tracker2, shutdown2) = (tracker.clone(), shutdown.clone());
        tracker.spawn(
            async move {
                connection(incoming, shared, tracker2, shutdown2).await;
                drop(slot);
            }
            .instrument(info_span!(
                "conn",
                %remote,
                client = tracing::field::Empty,
                cluster = tracing::field::Empty
            )),
        );
    }

    walship_common::sys::notify::stopping();
    drain(tracker, endpoint).await;
    // An upload cut short is not in the record: it is uploaded again at the next start.
    for task in [scrapes, reloads].into_iter().flatten().chain(uploaders) {
        task.abort();
    }
    Ok(())
}

/// With `metrics_listen`: the metrics endpoint, bound and serving (see [`metrics`]).
async fn metrics_endpoint(
    settings: &ReceiverSettings,
    clusters: &[Served],
) -> Result<Option<tokio::task::JoinHandle<()>>, ReceiverError> {
    let Some(addr) = settings.metrics_listen else {
        return Ok(None);
    };
    let listener = metrics_http::bind(addr)
        .await
        .map_err(|source| ReceiverError::MetricsBind { addr, source })?;
    let mut archives = Vec::new();
    for c in clusters {
        let dir = c.archive.dir().to_path_buf();
        let listed = dir.clone();
        let newest = tokio::task::spawn_blocking(move || {
            crate::store::list(&listed)
                .ok()
                .and_then(|files| crate::store::newest_arrival(&files).map(|(_, at)| at))
        })
        .await
        .ok()
        .flatten();
        archives.push(metrics::Watched {
            cluster: c.name.clone(),
            dir,
            newest,
        });
    }
    let render = metrics::renderer(archives);
    let bound = metrics_http::local(&listener).unwrap_or(addr);
    info!("metrics on http://{bound}/metrics");
    Ok(Some(tokio::spawn(metrics_http::serve(listener, render))))
}

/// The QUIC endpoint, bound, with this receiver's certificate and transport limits; and the
/// address it listens on (the port chosen when `listen` says port 0).
fn endpoint(
    settings: &ReceiverSettings,
) -> Result<(quinn::Endpoint, std::net::SocketAddr), ReceiverError> {
    let server = server_config(settings)?;
    let bind_err = |source| ReceiverError::Bind {
        addr: settings.listen,
        source,
    };
    let endpoint = quinn::Endpoint::server(server, settings.listen).map_err(bind_err)?;
    let local = endpoint.local_addr().map_err(bind_err)?;
    Ok((endpoint, local))
}

/// The QUIC server configuration: this receiver's certificate, key and client CA as the files
/// hold them now, and its transport limits. Built at start and again on each SIGHUP.
fn server_config(settings: &ReceiverSettings) -> Result<quinn::ServerConfig, ReceiverError> {
    let tls = tls::server_config(&settings.cert, &settings.key, &settings.client_ca)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| {
        ReceiverError::Tls(tls::TlsError::Setup {
            path: settings.cert.clone(),
            message: e.to_string(),
        })
    })?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport(
        settings.idle_timeout,
        settings.stream_window,
    )));
    server
        .max_incoming(MAX_WAITING_HANDSHAKES)
        .incoming_buffer_size(WAITING_HANDSHAKE_BYTES / 16)
        .incoming_buffer_size_total(WAITING_HANDSHAKE_BYTES);
    Ok(server)
}

/// SIGHUP, listened for from before "listening" is logged (its default action would end the
/// process). None, said once, if the handler cannot be installed.
fn hangups() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup())
        .map_err(|e| warn!("cannot listen for SIGHUP ({e}): certificates change only on restart"))
        .ok()
}

/// On each SIGHUP, reload `cert`, `key` and `client_ca`: new connections get the new
/// configuration, connections and uploads in flight keep theirs, the archive is not touched.
/// A configuration that does not load leaves the previous one serving.
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    endpoint: quinn::Endpoint,
    settings: ReceiverSettings,
) {
    while hangups.recv().await.is_some() {
        match server_config(&settings) {
            Ok(config) => {
                endpoint.set_server_config(Some(config));
                info!(
                    "SIGHUP: reloaded certificates from {}, {} and {}",
                    settings.cert.display(),
                    settings.key.display(),
                    settings.client_ca.display()
                );
            }
            Err(e) => error!(
                "SIGHUP: certificates not reloaded, still serving the previous ones: {e}; fix it and send SIGHUP again"
            ),
        }
    }
}

/// Shutdown: no new connections, in-flight uploads get SHUTDOWN_GRACE, then the endpoint
/// closes. Each stage is logged, and said so when slow.
async fn drain(tracker: TaskTracker, endpoint: quinn::Endpoint) {
    let started = Instant::now();
    info!(
        in_flight = tracker.len(),
        "shutting down: no new connections; letting uploads finish"
    );
    tracker.close();
    if timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        warn!(
            "uploads still running after {SHUTDOWN_GRACE:?}; closing them (their senders will retry, nothing unacknowledged was stored)"
        );
    }
    endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"receiver shutting down");
    let _ = timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    info!(elapsed_ms = started.elapsed().as_millis() as u64, "stopped");
}

fn transport(idle: Duration, stream_window: u32) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle).expect("idle timeout within QUIC's limit"),
    ));
    // No stream credit until the connection holds a sending slot (see `connection`).
    t.max_concurrent_bidi_streams(VarInt::from_u32(0));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    // See "Memory" above: the connection window covers all its streams' windows.
    t.stream_receive_window(VarInt::from_u32(stream_window));
    t.receive_window(VarInt::from_u32(
        MAX_STREAMS_PER_CONNECTION.saturating_mul(stream_window),
    ));
    t
}

/// One cluster `serve` stores for: its name (none in the single-cluster form), the client
/// certificate names allowed to write to it, its archive.
struct Served {
    name: Option<String>,
    allowed: Vec<String>,
    archive: Arc<Archive>,
    target: Arc<Target>,
    /// Wakes the cluster's object-store uploader (none without `[object_store]`).
    stored_wake: Option<Arc<tokio::sync::Notify>>,
}

/// What every stream task needs.
#[derive(Clone)]
struct Shared {
    /// Every cluster served.
    clusters: Arc<Vec<Served>>,
    /// The archive this connection's client certificate may write to: none until the
    /// handshake is done, and none for a certificate no cluster allows.
    archive: Option<Arc<Archive>>,
    /// The cluster's name (many-cluster form), for metrics.
    cluster: Option<String>,
    /// The subject of the connection's client certificate.
    subject: Arc<str>,
    /// The chosen cluster's standby data directory, for base backups (none with the archive).
    target: Option<Arc<Target>>,
    /// `max_connections` permits: one per connection with stream credit.
    sending: Arc<Semaphore>,
    /// `max_uploads` permits: one per upload decoding and writing.
    uploads: Arc<Semaphore>,
    /// The connections holding a `sending` permit, for eviction when others wait.
    holders: Arc<Holders>,
    limits: Limits,
    idle: Duration,
    /// Notified on each file stored: wakes the chosen cluster's object-store uploader.
    stored_wake: Option<Arc<tokio::sync::Notify>>,
}

/// The configured limits (receiver.toml), as the tasks use them.
#[derive(Clone, Copy)]
struct Limits {
    max_uploads: usize,
    max_connections: usize,
    /// Upload slots one connection may hold at once.
    per_connection: usize,
    /// Plain bytes per second an upload holding a slot must average after the grace.
    min_upload_rate: u64,
}

async fn connection(
    incoming: quinn::Incoming,
    shared: Shared,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            let text = e.to_string();
            if let Some(failure) = walship_common::sys::quic::tls_failure(&e) {
                // A certificate problem on one side or the other: a person must look.
                let advice = failure.advice(handshake::Side::Receiver, "");
                error!("rejected connection: {advice} ({text})");
            } else {
                // A client that hangs up (its connect timeout ran out, it was killed) is not
                // an error here: it says so in PostgreSQL's log and retries.
                info!("client went away during the handshake: {text}");
            }
            return;
        }
    };
    // Who wrote: every line of this connection and its files names the client certificate.
    let (subject, common_name) = peer_names(&conn);
    tracing::Span::current().record("client", subject.as_str());
    let mut shared = shared;
    shared.subject = Arc::from(subject.as_str());
    match route(&shared.clusters, common_name.as_deref()) {
        Some(served) => {
            shared.archive = Some(served.archive.clone());
            shared.target = Some(served.target.clone());
            shared.stored_wake = served.stored_wake.clone();
            shared.cluster = served.name.clone();
            if let Some(name) = &served.name {
                tracing::Span::current().record("cluster", name.as_str());
            }
            info!("connection accepted");
        }
        None => {
            // Accepted so that each upload is answered with the reason, but nothing is stored.
            error!(
                "client certificate {subject} is allowed for none of this receiver's clusters: its uploads are refused, nothing is stored; add its name to the allowed_clients of its [[clusters]] table, or give that sender its cluster's certificate"
            );
        }
    }
    let _open = metrics::connection();
    let idle = shared.idle;
    // Stream credit only with a sending slot: until then the sender waits to open a stream.
    let Some(_sending) = sending_slot(&conn, &shared, &shutdown).await else {
        return;
    };
    let holder = shared.holders.add(conn.clone());
    let _registered = Registered(shared.holders.clone(), holder.clone());
    // At most half the upload slots for this connection: see "Memory" above.
    let conn_uploads = Arc::new(Semaphore::new(shared.limits.per_connection));
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(MAX_STREAMS_PER_CONNECTION));
    loop {
        let (send, recv) = tokio::select! {
            _ = shutdown.cancelled() => break,
            stream = conn.accept_bi() => match stream {
                Ok(s) => s,
                Err(quinn::ConnectionError::ApplicationClosed(_)) | Err(quinn::ConnectionError::LocallyClosed) => break,
                Err(quinn::ConnectionError::TimedOut) => {
                    info!("connection idle for {idle:?}; closed");
                    break;
                }
                Err(e) => {
                    info!("connection ended: {e}");
                    break;
                }
            },
        };
        let span = info_span!(
            "file",
            segment = tracing::field::Empty,
            bytes = tracing::field::Empty,
            encoding = tracing::field::Empty,
            outcome = tracing::field::Empty
        );
        let busy = Busy::new(holder.clone());
        let (conn_uploads, shared, conn) = (conn_uploads.clone(), shared.clone(), conn.clone());
        tracker.spawn(
            async move {
                stream(send, recv, &conn_uploads, &shared, conn).await;
                drop(busy);
            }
            .instrument(span),
        );
    }
}

/// One of the `max_connections` sending slots for `conn`, waiting (and evicting idle holders)
/// if all are taken; `None` when the connection or the receiver closes first.
async fn sending_slot(
    conn: &quinn::Connection,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(p) = shared.sending.clone().try_acquire_owned() {
        return Some(p);
    }
    info!(
        "{} connections sending (max_connections): this one waits for one to close or an idle one to be evicted",
        shared.limits.max_connections
    );
    let acquire = shared.sending.clone().acquire_owned();
    tokio::pin!(acquire);
    let mut tick = tokio::time::interval(EVICT_CHECK_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = conn.closed() => return None,
            p = &mut acquire => return Some(p.expect("the semaphore is never closed")),
            _ = tick.tick() => shared.holders.evict_idle(Instant::now()),
        }
    }
}

/// The subject of the peer's certificate (`CN=walship-sender`), for the logs (who wrote),
/// and its common name, which decides the cluster it may write to.
fn peer_names(conn: &quinn::Connection) -> (String, Option<String>) {
    let certs = conn.peer_identity().and_then(|id| {
        id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()
    });
    match certs.as_deref().and_then(|c| c.first()) {
        None => ("(no certificate)".into(), None),
        Some(der) => match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => {
                let cn = cert
                    .subject()
                    .iter_common_name()
                    .next()
                    .and_then(|cn| cn.as_str().ok())
                    .map(str::to_string);
                (cert.subject().to_string(), cn)
            }
            Err(e) => (format!("(unreadable certificate: {e})"), None),
        },
    }
}

/// The cluster a client certificate (its common name) may write to: in the single-cluster form
/// the one archive, whatever the certificate (any from client_ca); else the cluster whose
/// allowed_clients lists it, if any.
fn route<'a>(clusters: &'a [Served], common_name: Option<&str>) -> Option<&'a Served> {
    if let [only] = clusters {
        if only.name.is_none() {
            return Some(only);
        }
    }
    let name = walship_common::clusters::cluster_for(
        common_name,
        clusters
            .iter()
            .filter_map(|c| Some((c.name.as_deref()?, c.allowed.as_slice()))),
    )?;
    clusters.iter().find(|c| c.name.as_deref() == Some(name))
}

/// The connections holding a sending slot, and how long each has had no stream in progress.
#[derive(Default)]
struct Holders(Mutex<Vec<Arc<Holder>>>);

struct Holder {
    conn: quinn::Connection,
    /// Streams in progress, and since when there have been none.
    activity: Mutex<(usize, Instant)>,
}

impl Holders {
    fn add(&self, conn: quinn::Connection) -> Arc<Holder> {
        let holder = Arc::new(Holder {
            conn,
            activity: Mutex::new((0, Instant::now())),
        });
        self.0
            .lock()
            .expect("holders lock poisoned")
            .push(holder.clone());
        holder
    }

    /// Close the connection idle longest, if one has had no stream for EVICT_IDLE_AFTER.
    fn evict_idle(&self, now: Instant) {
        let holders = self.0.lock().expect("holders lock poisoned");
        let activity: Vec<(usize, Instant)> = holders
            .iter()
            .map(|h| *h.activity.lock().expect("activity lock poisoned"))
            .collect();
        if let Some(i) = pick_idle(&activity, now, EVICT_IDLE_AFTER) {
            let h = &holders[i];
            let idle = now.saturating_duration_since(activity[i].1);
            // Only idle connections are closed: no upload is cut short.
            info!(
                remote = %h.conn.remote_address(),
                "evicted a connection idle for {idle:.1?}: another sender waits for a sending slot"
            );
            h.conn.close(
                VarInt::from_u32(CLOSE_EVICTED),
                b"evicted: idle while another sender waits for a sending slot (max_connections)",
            );
        }
    }
}

/// Which of the connections (streams in progress, idle since) to evict: the one idle longest,
/// if it has had no stream in progress for at least `after`.
fn pick_idle(activity: &[(usize, Instant)], now: Instant, after: Duration) -> Option<usize> {
    activity
        .iter()
        .enumerate()
        .filter(|(_, (streams, since))| {
            *streams == 0 && now.saturating_duration_since(*since) >= after
        })
        .min_by_key(|(_, (_, since))| *since)
        .map(|(i, _)| i)
}

/// Removes a connection from [`Holders`] when its task ends.
struct Registered(Arc<Holders>, Arc<Holder>);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0
             .0
            .lock()
            .expect("holders lock poisoned")
            .retain(|h| !Arc::ptr_eq(h, &self.1));
    }
}

/// A stream in progress on a connection: the connection is not idle while one lives.
struct Busy(Arc<Holder>);

impl Busy {
    fn new(holder: Arc<Holder>) -> Busy {
        holder.activity.lock().expect("activity lock poisoned").0 += 1;
        Busy(holder)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut a = self.0.activity.lock().expect("activity lock poisoned");
        a.0 -= 1;
        if a.0 == 0 {
            a.1 = Instant::now();
        }
    }
}

/// What became of one stream.
enum Outcome {
    Reply(Reply),
    /// The peer went away or stalled; no reply can be delivered.
    Gone(String),
}

async fn stream(
    mut send: SendStream,
    mut recv: RecvStream,
    conn_uploads: &Arc<Semaphore>,
    shared: &Shared,
    conn: quinn::Connection,
) {
    let started = Instant::now();
    let span = tracing::Span::current();
    let idle = shared.idle;
    let outcome = receive(&mut recv, conn_uploads, shared, started, conn).await;
    let reply = match outcome {
        Outcome::Gone(why) => {
            span.record("outcome", "abandoned");
            info!("sender went away mid-transfer ({why}); partial upload discarded");
            return;
        }
        Outcome::Reply(r) => r,
    };
    let ms = started.elapsed().as_millis() as u64;
    match &reply {
        Reply::Stored => {
            span.record("outcome", "stored");
            info!(ms, "stored");
        }
        Reply::Ready { pgdata } => {
            span.record("outcome", "ready");
            info!(
                ms,
                "base backup complete: the standby in {pgdata} is ready to start"
            );
        }
        Reply::AlreadyHad => {
            metrics::already_had(shared.cluster.as_deref());
            span.record("outcome", "already_had");
            info!(ms, "already stored with identical content");
        }
        Reply::Partial { bytes } => {
            span.record("outcome", "partial");
            debug!(ms, bytes, "partial held durably");
        }
        Reply::Refused(r) => {
            metrics::refused(r, shared.cluster.as_deref());
            span.record("outcome", "refused");
            match r {
                // The archive's own cluster is for the operator only, never for the sender.
                Refusal::ForeignCluster { .. } => {
                    match shared.archive.as_ref().and_then(|a| a.cluster()) {
                        Some(ours) => error!("refused: {r} (this archive holds cluster {ours})"),
                        None => error!("refused: {r}"),
                    }
                }
                Refusal::ConflictingContent { .. }
                | Refusal::ClientNotAllowed { .. }
                | Refusal::HistoryConflict { .. }
                | Refusal::NoTarget
                | Refusal::DiskFull { .. }
                | Refusal::StorageFailed { .. } => error!("refused: {r}"),
                _ => warn!("refused: {r}"),
            }
            // Do not wait for bytes we will not read.
            let _ = recv.stop(VarInt::from_u32(0));
        }
    }
    if send.write_all(&reply.encode()).await.is_ok() && send.finish().is_ok() {
        // Keep the stream until the sender has read the reply (or gone).
        let _ = timeout(idle, send.stopped()).await;
    }
}

/// Read, check, decode, write and commit one file: the request, then wire bytes through
/// [`Incoming`] into a temp file, then the durable commit (counted from `started`).
async fn receive(
    recv: &mut RecvStream,
    conn_uploads: &Arc<Semaphore>,
    shared: &Shared,
    started: Instant,
    conn: quinn::Connection,
) -> Outcome {
    let request = match read_request(recv, shared.idle).await {
        Ok(WireRequest::Wal(r)) => r,
        Ok(WireRequest::Backup(b)) => {
            return backup_step(recv, conn_uploads, shared, b, conn).await;
        }
        Ok(WireRequest::Seal(s)) => return seal(conn_uploads, shared, started, s).await,
        Err(outcome) => return outcome,
    };
    let append = request.append_at.is_some();
    let outcome = receive_wal(recv, conn_uploads, shared, started, request).await;
    if let (true, Outcome::Reply(Reply::Refused(r))) = (append, &outcome) {
        metrics::partial_refused(r, shared.cluster.as_deref());
    }
    outcome
}

/// [`receive`] for a [`Seal`]: the partial held whole becomes the finished segment (no
/// content on the stream). It reads and hashes the segment, so it takes an upload slot.
async fn seal(
    conn_uploads: &Arc<Semaphore>,
    shared: &Shared,
    started: Instant,
    seal: Seal,
) -> Outcome {
    let span = tracing::Span::current();
    span.record("segment", seal.name.as_str());
    span.record("bytes", seal.size);
    let Some(archive) = &shared.archive else {
        return Outcome::Reply(Reply::Refused(Refusal::ClientNotAllowed {
            subject: shared.subject.to_string(),
        }));
    };
    let _permit = (
        upload_slot(conn_uploads, &shared.uploads, &shared.limits).await,
        metrics::upload(),
    );
    let archive = archive.clone();
    let size = seal.size;
    let name = seal.name.clone();
    match tokio::task::spawn_blocking(move || archive.seal_partial(&seal)).await {
        Ok(reply) => {
            if reply == Reply::Stored {
                metrics::stored(size, started.elapsed(), shared.cluster.as_deref());
                metrics::sealed();
                if let Some(wake) = &shared.stored_wake {
                    wake.notify_one();
                }
            }
            Outcome::Reply(reply)
        }
        Err(e) => Outcome::Reply(Reply::Refused(Refusal::StorageFailed {
            name,
            detail: e.to_string(),
        })),
    }
}

/// [`receive`] for a WAL file (or an append to the open segment's partial).
async fn receive_wal(
    recv: &mut RecvStream,
    conn_uploads: &Arc<Semaphore>,
    shared: &Shared,
    started: Instant,
    request: Request,
) -> Outcome {
    let refuse = |r: Refusal| Outcome::Reply(Reply::Refused(r));
    let span = tracing::Span::current();
    span.record("segment", request.name.as_str());
    span.record("bytes", request.size);
    span.record("encoding", tracing::field::display(request.encoding));
    // The client certificate decides the archive; none allowed: refused before anything else.
    let Some(archive) = &shared.archive else {
        return refuse(Refusal::ClientNotAllowed {
            subject: shared.subject.to_string(),
        });
    };
    if !request.dropped.is_empty() {
        if let Err(r) = record_gaps(archive.dir(), &request).await {
            return refuse(r);
        }
    }
    let incoming = match Incoming::begin(&request, &archive.facts(&request.name)) {
        Ok(i) => i,
        Err(r) => return refuse(r),
    };
    let name = incoming.name().to_string();

    // An upload slot before any per-upload memory (decoder, buffer) or temp file. Waiting here
    // costs no more than the stream's window, held by QUIC; the sender waits on flow control.
    let permit = (
        upload_slot(conn_uploads, &shared.uploads, &shared.limits).await,
        metrics::upload(),
    );
    // From here the upload holds a slot others may need: it must keep up `min_upload_rate`.
    let mut pace = Pace::new(shared.idle, shared.limits.min_upload_rate);
    let sink = match request.append_at {
        // An append to the open segment: at most MAX_APPEND_BYTES (checked at begin), held
        // in memory, checked against what is stored, then appended durably.
        Some(_) => Sink::Memory(Vec::with_capacity(request.size as usize)),
        None => match archive.temp(&name) {
            Ok(t) => Sink::Temp(t),
            Err(e) => return refuse(storage_refusal(&name, &e)),
        },
    };
    let (incoming, sink) = match pump(recv, incoming, sink, &mut pace, &request, shared.idle).await
    {
        Ok(v) => v,
        Err(outcome) => return outcome,
    };
    // The decoding memory goes with `incoming`: the fsyncs below need no slot.
    let verified = incoming.finish();
    drop(permit);
    let verified = match verified {
        Ok(v) => v,
        Err(r) => return refuse(r),
    };
    let archive = archive.clone();
    let size = verified.size;
    let tmp = match (sink, request.append_at) {
        (Sink::Temp(t), _) => t,
        (Sink::Memory(bytes), Some(offset)) => {
            // An empty append is a question (where to resume), not an append at a wrong offset.
            let asks = bytes.is_empty();
            return match tokio::task::spawn_blocking(move || {
                archive.append_partial(&verified, offset, &bytes)
            })
            .await
            {
                Ok(appended) => {
                    if !(asks && matches!(appended, Appended::Held { .. })) {
                        metrics::partial_append(&appended, shared.cluster.as_deref());
                    }
                    Outcome::Reply(appended.reply())
                }
                Err(e) => refuse(Refusal::StorageFailed {
                    name,
                    detail: e.to_string(),
                }),
            };
        }
        (Sink::Memory(_), None) => unreachable!("a memory sink is made only for appends"),
    };
    match tokio::task::spawn_blocking(move || archive.commit(tmp, &verified)).await {
        Ok(reply) => {
            if reply == Reply::Stored {
                metrics::stored(size, started.elapsed(), shared.cluster.as_deref());
                if let Some(wake) = &shared.stored_wake {
                    wake.notify_one();
                }
            }
            Outcome::Reply(reply)
        }
        Err(e) => refuse(Refusal::StorageFailed {
            name,
            detail: e.to_string(),
        }),
    }
}

/// The primary reported segments its pg_wal valve dropped: record them durably before the
/// reply, which acknowledges them (blocking pool: a read, and an fsync when new). Each new
/// range is one ERROR line: a person must take a new base backup.
async fn record_gaps(dir: &std::path::Path, request: &Request) -> Result<(), Refusal> {
    let names = walship_common::valve::parse_reported(&request.dropped)
        .map_err(|reason| Refusal::Malformed { reason })?;
    let dir = dir.to_path_buf();
    let added = tokio::task::spawn_blocking(move || crate::state::record_gaps(&dir, &names))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let added = added.map_err(|detail| Refusal::StorageFailed {
        name: request.name.clone(),
        detail: format!("recording the segments the primary dropped: {detail}"),
    })?;
    // The request is almost always a segment: its size is the segment size.
    let seg_size = if walship_common::wal::name::is_valid_seg_size(request.size) {
        request.size
    } else {
        16 << 20
    };
    let added: Vec<walship_common::WalFileName> = added
        .into_iter()
        .map(walship_common::WalFileName::Segment)
        .collect();
    for range in walship_common::valve::ranges(&added, seg_size) {
        error!("the primary reported a gap: {}", range.problem());
    }
    Ok(())
}

/// The request header, whole within one idle timeout (not one per read: a header trickled a
/// byte at a time would otherwise hold the stream, and the connection's sending slot, for
/// ever). A sender of another protocol version is answered from its preamble alone.
async fn read_request(recv: &mut RecvStream, idle: Duration) -> Result<WireRequest, Outcome> {
    let refuse = |r: Refusal| Outcome::Reply(Reply::Refused(r));
    let due = tokio::time::Instant::now() + idle;
    let body = match read_frame(recv, REQUEST, Some(due)).await {
        Ok(body) => body,
        Err(ReadError::Frame(FrameError::Version { theirs, .. })) => {
            return Err(refuse(Refusal::UnsupportedVersion {
                receiver: PROTOCOL_VERSION,
                sender: theirs,
            }))
        }
        Err(ReadError::Frame(e)) => {
            return Err(refuse(Refusal::Malformed {
                reason: e.to_string(),
            }))
        }
        Err(ReadError::Deadline) => return Err(Outcome::Gone(format!("no data for {idle:?}"))),
        Err(e @ (ReadError::Ended | ReadError::Io(_))) => return Err(Outcome::Gone(e.to_string())),
    };
    WireRequest::decode_body(&body).map_err(|e| {
        refuse(Refusal::Malformed {
            reason: e.to_string(),
        })
    })
}

/// Move the stream's wire bytes through `incoming` into `tmp` until the sender finishes, in
/// batches (decoded and written on the blocking pool), keeping the sender to `pace`.
async fn pump<S: Feed>(
    recv: &mut RecvStream,
    mut incoming: S,
    mut tmp: Sink,
    pace: &mut Pace,
    request: &Request,
    idle: Duration,
) -> Result<(S, Sink), Outcome> {
    let refuse = |r: Refusal| Outcome::Reply(Reply::Refused(r));
    let batch = match incoming.encoding() {
        Encoding::Plain => WRITE_BUF,
        Encoding::Zstd | Encoding::Lz4 => ZSTD_BATCH,
    };
    let mut buf = vec![0u8; batch.min(incoming.max_wire() as usize).max(1)];
    let (mut filled, mut wire) = (0, 0u64);
    loop {
        let progress = incoming.plain_bytes().max(wire);
        let now = tokio::time::Instant::now();
        let rate_due = pace.due(progress);
        if now >= rate_due {
            return Err(refuse(pace.too_slow(&request.name, request.size, progress)));
        }
        let read = tokio::time::timeout_at(rate_due.min(now + idle), recv.read(&mut buf[filled..]));
        let n = match read.await {
            Err(_) if rate_due <= now + idle => {
                return Err(refuse(pace.too_slow(&request.name, request.size, progress)))
            }
            Err(_) => return Err(Outcome::Gone(format!("no data for {idle:?}"))),
            Ok(Err(e)) => return Err(Outcome::Gone(e.to_string())),
            Ok(Ok(v)) => v,
        };
        let done = n.is_none();
        if let Some(n) = n {
            filled += n;
            wire += n as u64;
        }
        if filled > 0 && (done || filled == buf.len()) {
            // Decode, check and write on the blocking pool: it is CPU and disk work, ours, so
            // its time does not count against the sender's pace.
            let ours = Instant::now();
            let result = tokio::task::spawn_blocking(move || {
                let r = absorb(&mut incoming, &mut tmp, &buf[..filled]);
                (incoming, tmp, buf, r)
            })
            .await;
            pace.exclude(ours.elapsed());
            match result {
                Ok((i, t, b, Ok(()))) => (incoming, tmp, buf) = (i, t, b),
                Ok((_, _, _, Err(r))) => return Err(refuse(r)),
                Err(e) => {
                    return Err(refuse(Refusal::StorageFailed {
                        name: request.name.clone(),
                        detail: e.to_string(),
                    }))
                }
            }
            filled = 0;
        }
        if done {
            return Ok((incoming, tmp));
        }
    }
}

/// Where an upload's plain bytes go: a temp file (a whole file), or memory (an append to the
/// open segment's partial, at most `MAX_APPEND_BYTES`).
enum Sink {
    Temp(TempFile),
    Memory(Vec<u8>),
}

/// What [`pump`] feeds through: a WAL upload ([`Incoming`]) or a base backup file ([`IncomingFile`]).
trait Feed: Send + 'static {
    fn name(&self) -> String;
    fn encoding(&self) -> Encoding;
    fn max_wire(&self) -> u64;
    fn plain_bytes(&self) -> u64;
    fn absorb(
        &mut self,
        wire: &[u8],
        write: &mut dyn FnMut(&[u8]) -> Result<(), Refusal>,
    ) -> Result<(), Refusal>;
}

impl Feed for Incoming {
    fn name(&self) -> String {
        Incoming::name(self).to_string()
    }
    fn encoding(&self) -> Encoding {
        Incoming::encoding(self)
    }
    fn max_wire(&self) -> u64 {
        Incoming::max_wire(self)
    }
    fn plain_bytes(&self) -> u64 {
        Incoming::plain_bytes(self)
    }
    fn absorb(
        &mut self,
        wire: &[u8],
        write: &mut dyn FnMut(&[u8]) -> Result<(), Refusal>,
    ) -> Result<(), Refusal> {
        Incoming::absorb(self, wire, write)
    }
}

impl Feed for IncomingFile {
    fn name(&self) -> String {
        self.path().to_string()
    }
    fn encoding(&self) -> Encoding {
        IncomingFile::encoding(self)
    }
    fn max_wire(&self) -> u64 {
        IncomingFile::max_wire(self)
    }
    fn plain_bytes(&self) -> u64 {
        IncomingFile::plain_bytes(self)
    }
    fn absorb(
        &mut self,
        wire: &[u8],
        write: &mut dyn FnMut(&[u8]) -> Result<(), Refusal>,
    ) -> Result<(), Refusal> {
        IncomingFile::absorb(self, wire, write)
    }
}

/// One step of a base backup: `Begin`, `Dir` and `End` are quick file system work; `File`
/// streams like a WAL upload (an upload slot, the pace) into the target.
async fn backup_step(
    recv: &mut RecvStream,
    conn_uploads: &Arc<Semaphore>,
    shared: &Shared,
    step: BackupRequest,
    conn: quinn::Connection,
) -> Outcome {
    let span = tracing::Span::current();
    // The client certificate decides the cluster, hence the target; none allowed: refused.
    let (Some(target), Some(archive)) = (shared.target.clone(), shared.archive.clone()) else {
        return Outcome::Reply(Reply::Refused(Refusal::ClientNotAllowed {
            subject: shared.subject.to_string(),
        }));
    };
    let target_path = target.path();
    let blocking = |f: Box<dyn FnOnce() -> Result<(), Refusal> + Send>| async move {
        let result = tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
            Err(Refusal::StorageFailed {
                name: "base backup".into(),
                detail: e.to_string(),
            })
        });
        Outcome::Reply(match result {
            Ok(()) => Reply::Stored,
            Err(r) => Reply::Refused(r),
        })
    };
    match step {
        BackupRequest::Begin {
            backup,
            label,
            system_id,
            force,
        } => {
            span.record("segment", "basebackup: begin");
            blocking(Box::new(move || {
                target.begin(
                    backup,
                    &label,
                    walship_common::SystemId(system_id),
                    force,
                    conn,
                    &archive,
                )
            }))
            .await
        }
        BackupRequest::Dir { backup, path, mode } => {
            span.record("segment", path.as_str());
            blocking(Box::new(move || target.dir_step(backup, &path, mode))).await
        }
        BackupRequest::End {
            backup,
            files,
            bytes,
            end_segment,
            backup_label,
        } => {
            span.record("segment", "basebackup: end");
            let pgdata = target_path;
            match blocking(Box::new(move || {
                target.end(backup, files, bytes, &end_segment, &backup_label, &archive)
            }))
            .await
            {
                Outcome::Reply(Reply::Stored) => Outcome::Reply(Reply::Ready { pgdata }),
                other => other,
            }
        }
        BackupRequest::File {
            backup,
            path,
            size,
            mode,
            encoding,
        } => {
            span.record("segment", path.as_str());
            span.record("bytes", size);
            span.record("encoding", tracing::field::display(encoding));
            backup_file(
                recv,
                conn_uploads,
                shared,
                backup,
                &path,
                size,
                mode,
                encoding,
            )
            .await
        }
    }
}

/// Receive one base backup file into the target.
#[allow(clippy::too_many_arguments)]
async fn backup_file(
    recv: &mut RecvStream,
    conn_uploads: &Arc<Semaphore>,
    shared: &Shared,
    backup: u64,
    path: &str,
    size: u64,
    mode: u32,
    encoding: Encoding,
) -> Outcome {
    let refuse = |r: Refusal| Outcome::Reply(Reply::Refused(r));
    let Some(target) = shared.target.clone() else {
        return refuse(Refusal::ClientNotAllowed {
            subject: shared.subject.to_string(),
        });
    };
    let incoming = match IncomingFile::begin(path, size, encoding) {
        Ok(i) => i,
        Err(r) => return refuse(r),
    };
    let permit = upload_slot(conn_uploads, &shared.uploads, &shared.limits).await;
    let mut pace = Pace::new(shared.idle, shared.limits.min_upload_rate);
    let (tmp, name) = match target.temp(backup, incoming.path(), mode) {
        Ok(t) => t,
        Err(r) => return refuse(r),
    };
    // For the pace's and the pump's messages, which name the request.
    let request = Request {
        name: incoming.path().to_string(),
        size,
        encoding,
        dropped: Vec::new(),
        append_at: None,
    };
    let (incoming, tmp) = match pump(
        recv,
        incoming,
        Sink::Temp(tmp),
        &mut pace,
        &request,
        shared.idle,
    )
    .await
    {
        Ok((i, Sink::Temp(t))) => (i, t),
        Ok((_, Sink::Memory(_))) => unreachable!("a backup file is pumped into a temp file"),
        Err(outcome) => return outcome,
    };
    let verified = incoming.finish();
    drop(permit);
    let (path, bytes) = match verified {
        Ok(v) => v,
        Err(r) => return refuse(r),
    };
    let result =
        tokio::task::spawn_blocking(move || target.commit(backup, &path, tmp, &name, bytes)).await;
    match result {
        Ok(Ok(())) => Outcome::Reply(Reply::Stored),
        Ok(Err(r)) => refuse(r),
        Err(e) => refuse(Refusal::StorageFailed {
            name: request.name,
            detail: e.to_string(),
        }),
    }
}

/// Blocking: one batch of wire bytes through `incoming`, its plain bytes written to `tmp`.
fn absorb<S: Feed>(incoming: &mut S, tmp: &mut Sink, wire: &[u8]) -> Result<(), Refusal> {
    use std::io::Write;
    let name = incoming.name();
    let before = incoming.plain_bytes();
    incoming.absorb(wire, &mut |plain| match tmp {
        Sink::Temp(t) => t
            .file()
            .write_all(plain)
            .map_err(|e| write_refusal(&name, &e)),
        Sink::Memory(m) => {
            m.extend_from_slice(plain);
            Ok(())
        }
    })?;
    // Start writeback of what this batch wrote, so the final fsync is short.
    if let Sink::Temp(t) = tmp {
        t.start_writeback(before, incoming.plain_bytes() - before);
    }
    Ok(())
}

/// Take one of this connection's upload slots, then one of the `max_uploads` slots, waiting
/// (first come, first served) if all are busy. The connection's first: a stream waiting for it
/// must not sit on a global slot meanwhile.
async fn upload_slot(
    conn_uploads: &Arc<Semaphore>,
    uploads: &Arc<Semaphore>,
    limits: &Limits,
) -> (OwnedSemaphorePermit, OwnedSemaphorePermit) {
    let started = Instant::now();
    let mine = match conn_uploads.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            debug!(
                "this connection has {} uploads in progress, its most: waiting for one to finish",
                limits.per_connection
            );
            conn_uploads
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed")
        }
    };
    let global = match uploads.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            info!(
                "{} uploads in progress (max_uploads): waiting for one to finish",
                limits.max_uploads
            );
            uploads
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed")
        }
    };
    let waited = started.elapsed();
    if waited >= Duration::from_millis(100) {
        info!(waited_ms = waited.as_millis() as u64, "upload slot free");
    }
    (mine, global)
}

/// The pace an upload holding a slot must keep: `min_rate` plain bytes per second on average,
/// after a grace (the idle timeout) that covers a slow start and short stalls. Time the
/// receiver itself spends decoding and writing is not counted against the sender.
struct Pace {
    started: tokio::time::Instant,
    grace: Duration,
    min_rate: u64,
    excluded: Duration,
}

impl Pace {
    fn new(grace: Duration, min_rate: u64) -> Pace {
        Pace {
            started: tokio::time::Instant::now(),
            grace,
            min_rate,
            excluded: Duration::ZERO,
        }
    }

    /// When the upload falls behind if no more than `progress` bytes have arrived by then.
    fn due(&self, progress: u64) -> tokio::time::Instant {
        self.started + self.grace + self.excluded + pace_time(progress, self.min_rate)
    }

    fn exclude(&mut self, d: Duration) {
        self.excluded += d;
    }

    fn too_slow(&self, name: &str, announced: u64, received: u64) -> Refusal {
        Refusal::TooSlow {
            name: name.to_string(),
            announced,
            received,
            elapsed_secs: self.started.elapsed().as_secs(),
            min_rate: self.min_rate,
            grace_secs: self.grace.as_secs(),
        }
    }
}

/// The time `bytes` take at `rate` bytes per second.
fn pace_time(bytes: u64, rate: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64)
}

fn write_refusal(name: &str, e: &std::io::Error) -> Refusal {
    if is_disk_full(e) {
        Refusal::DiskFull {
            name: name.to_string(),
            detail: e.to_string(),
        }
    } else {
        Refusal::StorageFailed {
            name: name.to_string(),
            detail: format!("write: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_connection_idle_longest_and_only_after_a_while() {
        let now = Instant::now();
        let ago = |s: u64| now - Duration::from_secs(s);
        let after = Duration::from_secs(2);
        // Busy connections are never picked, however old their last idle time.
        assert_eq!(pick_idle(&[(1, ago(100)), (3, ago(50))], now, after), None);
        // Idle, but not for long enough.
        assert_eq!(pick_idle(&[(0, ago(1)), (1, ago(100))], now, after), None);
        // The one idle longest.
        assert_eq!(
            pick_idle(
                &[(0, ago(3)), (0, ago(10)), (2, ago(60)), (0, ago(5))],
                now,
                after
            ),
            Some(1)
        );
        assert_eq!(pick_idle(&[], now, after), None);
    }

    #[test]
    fn pace_allows_the_grace_then_the_rate() {
        let mut pace = Pace::new(Duration::from_secs(30), 64 << 10);
        let start = pace.started;
        assert_eq!(pace.due(0), start + Duration::from_secs(30));
        // 16 MiB at 64 KiB/s: 256 s after the grace.
        assert_eq!(pace.due(16 << 20), start + Duration::from_secs(286));
        pace.exclude(Duration::from_secs(4));
        assert_eq!(pace.due(0), start + Duration::from_secs(34));
        match pace.too_slow("x", 100, 7) {
            Refusal::TooSlow {
                announced,
                received,
                min_rate,
                grace_secs,
                ..
            } => assert_eq!(
                (announced, received, min_rate, grace_secs),
                (100, 7, 64 << 10, 30)
            ),
            other => panic!("{other:?}"),
        }
    }
}
