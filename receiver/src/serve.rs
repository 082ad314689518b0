//! `walship-receiver serve`: a QUIC listener (mutual TLS) that takes one file per stream,
//! verifies it with [`Upload`], stores it durably through [`Archive`] and only then replies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn, Instrument};
use walship_common::config::ReceiverSettings;
use walship_common::durable::{is_disk_full, TempFile};
use walship_common::proto::encoding::max_wire_bytes;
use walship_common::proto::frame::{
    decode_preamble, FrameError, MAX_HEADER_BYTES, PREAMBLE_LEN, TRAILER_LEN,
};
use walship_common::proto::upload::TrailerSplit;
use walship_common::proto::{
    BodyDecoder, Encoding, Refusal, Reply, Request, Upload, PROTOCOL_VERSION,
};
use walship_common::tls;

use crate::error::ReceiverError;
use crate::store::{storage_refusal, Archive};

// Memory. The receiver's memory is bounded whatever the number of senders, connections and
// streams. With the constants below:
//
//   process, runtime, TLS and QUIC state at rest                            ~7 MiB (measured)
// + MAX_CONNECTIONS x connection state (TLS, QUIC, no stream credit)     256 x ~30 KiB = 8 MiB
// + MAX_SENDING_CONNECTIONS x CONNECTION_WINDOW (bytes received, unread)  16 x 4 MiB = 64 MiB
//     (QUIC flow control: a sender cannot have more than this in flight to us)
// + MAX_ACTIVE_UPLOADS x per upload                                       8 x 2.7 MiB = 22 MiB
//     (zstd: 2 MiB window, encoding::WINDOW_LOG, capped in the decoder; 256 KiB of block
//     buffers; a 256 KiB decoded chunk; the wire batch. Plain: just the 256 KiB batch)
// = ~100 MiB at the very worst (16 connections each with 16 streams sending at once, 240 more
// connections open and waiting).
//
// A connection gets stream credit (may send) only once it holds one of MAX_SENDING_CONNECTIONS
// slots; until then its sender waits in `open_bi`, costing us no buffer. Connections past
// MAX_CONNECTIONS wait in QUIC's handshake queue. A stream waits (it is not refused) for one of
// MAX_ACTIVE_UPLOADS upload slots before any per-upload memory is allocated, its first
// STREAM_WINDOW bytes held by QUIC meanwhile. Because a connection's window is the sum of its
// streams' windows, streams waiting on a connection never use up the window an active stream
// on the same connection needs.
//
// The common case is far below: `push` uses one stream per connection, which can hold only
// STREAM_WINDOW unread: 16 pushes at once hold 16 x 256 KiB = 4 MiB in QUIC. Measured peak
// (VmHWM) with 16 pushes of 16 MiB segments at once: ~36 MiB with zstd, ~18 MiB plain; 64 at
// once: ~39 and ~20 MiB (it was 133 and 74 MiB with no limits). QUIC's reassembly may keep up
// to 2.5x the unread bytes allocated for an authenticated peer sending pathological frames
// (the 64 MiB term becomes 160 MiB); real senders' frames cost ~1.1x.

/// Uploads decoding and writing at once, across all connections. Each holds a zstd window:
/// this is what bounds decoding memory. Two cores decode faster than 8 senders send.
const MAX_ACTIVE_UPLOADS: usize = 8;
/// Connections open at once, sending or waiting to. More wait in QUIC's handshake queue.
const MAX_CONNECTIONS: usize = 256;
/// Connections with stream credit at once (each may hold CONNECTION_WINDOW unread bytes). Others
/// wait, handshake done, until one closes; PostgreSQL's archiver uses one at a time per primary.
const MAX_SENDING_CONNECTIONS: usize = 16;
/// Streams (files) one connection may have open at once; a sender opening more waits for one
/// to finish (QUIC stream credit). The sender daemon's look-ahead uses one each.
const MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// Unread bytes per stream: enough for one stream to fill a loopback or LAN link while the
/// previous batch is decoded and written (measured: no slower than 8 MiB on loopback). On a
/// long link it caps one stream near 256 KiB per round trip (25 MB/s of wire bytes at 10 ms,
/// ~10x that of WAL with zstd); the daemon's parallel streams add up.
const STREAM_WINDOW: u32 = 256 << 10;
/// Unread bytes per connection: room for every stream's window, so that streams waiting for an
/// upload slot cannot starve one that holds a slot on the same connection.
const CONNECTION_WINDOW: u32 = MAX_STREAMS_PER_CONNECTION * STREAM_WINDOW;
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
/// Application close code sent when the receiver shuts down.
const CLOSE_SHUTDOWN: u32 = 1;

/// Run until `shutdown` is cancelled. Binds before returning the first log line "listening".
pub async fn run(
    settings: ReceiverSettings,
    shutdown: CancellationToken,
) -> Result<(), ReceiverError> {
    let archive = Arc::new(Archive::open(&settings)?);
    let tls = tls::server_config(&settings.cert, &settings.key, &settings.client_ca)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| {
        ReceiverError::Tls(tls::TlsError::Setup {
            path: settings.cert.clone(),
            message: e.to_string(),
        })
    })?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport(settings.idle_timeout)));
    server
        .max_incoming(MAX_WAITING_HANDSHAKES)
        .incoming_buffer_size(WAITING_HANDSHAKE_BYTES / 16)
        .incoming_buffer_size_total(WAITING_HANDSHAKE_BYTES);
    let endpoint =
        quinn::Endpoint::server(server, settings.listen).map_err(|source| ReceiverError::Bind {
            addr: settings.listen,
            source,
        })?;
    let local = endpoint
        .local_addr()
        .map_err(|source| ReceiverError::Bind {
            addr: settings.listen,
            source,
        })?;
    info!(archive_dir = %archive.dir().display(), "listening on {local}");

    let tracker = TaskTracker::new();
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let sending = Arc::new(Semaphore::new(MAX_SENDING_CONNECTIONS));
    let uploads = Arc::new(Semaphore::new(MAX_ACTIVE_UPLOADS));
    loop {
        // A connection slot first: past MAX_CONNECTIONS, handshakes wait in QUIC's queue.
        let slot = match connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                warn!("{MAX_CONNECTIONS} connections open: new ones wait until one closes");
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
            archive: archive.clone(),
            sending: sending.clone(),
            uploads: uploads.clone(),
            idle: settings.idle_timeout,
        };
        let (tracker2, shutdown2) = (tracker.clone(), shutdown.clone());
        tracker.spawn(
            async move {
                connection(incoming, shared, tracker2, shutdown2).await;
                drop(slot);
            }
            .instrument(info_span!("conn", %remote)),
        );
    }

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
    Ok(())
}

fn transport(idle: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle).expect("idle timeout within QUIC's limit"),
    ));
    // No stream credit until the connection holds a sending slot (see `connection`).
    t.max_concurrent_bidi_streams(VarInt::from_u32(0));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    // See "Memory" above: the connection window covers all its streams' windows.
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(VarInt::from_u32(CONNECTION_WINDOW));
    t
}

/// What every stream task needs.
#[derive(Clone)]
struct Shared {
    archive: Arc<Archive>,
    /// MAX_SENDING_CONNECTIONS permits: one per connection with stream credit.
    sending: Arc<Semaphore>,
    /// MAX_ACTIVE_UPLOADS permits: one per upload decoding and writing.
    uploads: Arc<Semaphore>,
    idle: Duration,
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
            if let Some(failure) = tls_failure(&e) {
                // A certificate problem on one side or the other: a person must look.
                let advice = failure.advice(tls::Side::Receiver, "");
                error!("rejected connection: {advice} ({text})");
            } else {
                // A client that hangs up (its connect timeout ran out, it was killed) is not
                // an error here: it says so in PostgreSQL's log and retries.
                info!("client went away during the handshake: {text}");
            }
            return;
        }
    };
    info!("connection accepted");
    let idle = shared.idle;
    // Stream credit only with a sending slot: until then the sender waits to open a stream.
    let _sending = match shared.sending.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            info!("{MAX_SENDING_CONNECTIONS} connections sending: this one waits for one to close");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = conn.closed() => return,
                p = shared.sending.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            }
        }
    };
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
            outcome = tracing::field::Empty
        );
        tracker.spawn(stream(send, recv, shared.clone()).instrument(span));
    }
}

/// The TLS alert a failed handshake ended with (QUIC "crypto error" codes 0x100-0x1ff:
/// certificate refused, no certificate, ALPN mismatch), and who sent it: our TLS stack refusing
/// the client (`TransportError`) or the client refusing us (`ConnectionClosed`). `None` when the
/// peer simply left.
fn tls_failure(e: &quinn::ConnectionError) -> Option<tls::HandshakeFailure> {
    match e {
        quinn::ConnectionError::TransportError(t) => {
            tls::HandshakeFailure::from_quic_code(tls::Origin::Local, u64::from(t.code))
        }
        quinn::ConnectionError::ConnectionClosed(c) => {
            tls::HandshakeFailure::from_quic_code(tls::Origin::Peer, u64::from(c.error_code))
        }
        _ => None,
    }
}

/// What became of one stream.
enum Outcome {
    Reply(Reply),
    /// The peer went away or stalled; no reply can be delivered.
    Gone(String),
}

async fn stream(mut send: SendStream, mut recv: RecvStream, shared: Shared) {
    let started = Instant::now();
    let span = tracing::Span::current();
    let idle = shared.idle;
    let outcome = receive(&mut recv, &shared).await;
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
        Reply::AlreadyHad => {
            span.record("outcome", "already_had");
            info!(ms, "already stored with identical content");
        }
        Reply::Refused(r) => {
            span.record("outcome", "refused");
            match r {
                // The archive's own cluster is for the operator only, never for the sender.
                Refusal::ForeignCluster { .. } => match shared.archive.cluster() {
                    Some(ours) => error!("refused: {r} (this archive holds cluster {ours})"),
                    None => error!("refused: {r}"),
                },
                Refusal::ConflictingContent { .. }
                | Refusal::HistoryConflict { .. }
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

async fn receive(recv: &mut RecvStream, shared: &Shared) -> Outcome {
    let (archive, idle) = (&shared.archive, shared.idle);
    macro_rules! read_or_gone {
        ($fut:expr) => {
            match timeout(idle, $fut).await {
                Err(_) => return Outcome::Gone(format!("no data for {idle:?}")),
                Ok(Err(e)) => return Outcome::Gone(e.to_string()),
                Ok(Ok(v)) => v,
            }
        };
    }
    let refuse = |r: Refusal| Outcome::Reply(Reply::Refused(r));

    let mut pre = [0u8; PREAMBLE_LEN];
    read_or_gone!(recv.read_exact(&mut pre));
    let len = match decode_preamble(&pre, MAX_HEADER_BYTES) {
        Ok(len) => len,
        Err(FrameError::Version { theirs, .. }) => {
            return refuse(Refusal::UnsupportedVersion {
                receiver: PROTOCOL_VERSION,
                sender: theirs,
            })
        }
        Err(e) => {
            return refuse(Refusal::Malformed {
                reason: e.to_string(),
            })
        }
    };
    let mut body = vec![0u8; len];
    read_or_gone!(recv.read_exact(&mut body));
    let request = match Request::decode_body(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(Refusal::Malformed {
                reason: e.to_string(),
            })
        }
    };
    let span = tracing::Span::current();
    span.record("segment", request.name.as_str());
    span.record("bytes", request.size);

    let upload = match Upload::begin(&request, &archive.facts(&request.name)) {
        Ok(u) => u,
        Err(r) => return refuse(r),
    };
    let name = upload.name().to_string();

    // Already stored? With the digest in the header, answer without taking the bytes. With a
    // trailer digest, the commit compares with the stored copy instead.
    let existing = match request.digest {
        Some(sha) => {
            let (archive, name) = (archive.clone(), name.clone());
            tokio::task::spawn_blocking(move || archive.compare_existing(&name, request.size, &sha))
                .await
        }
        None => Ok(Ok(None)),
    };
    match existing {
        Ok(Ok(None)) => {}
        Ok(Ok(Some(true))) => return Outcome::Reply(Reply::AlreadyHad),
        Ok(Ok(Some(false))) => return refuse(Refusal::ConflictingContent { name }),
        Ok(Err(e)) => {
            return refuse(Refusal::StorageFailed {
                name,
                detail: format!("read the stored copy: {e}"),
            })
        }
        Err(e) => {
            return refuse(Refusal::StorageFailed {
                name,
                detail: e.to_string(),
            })
        }
    }

    // An upload slot before any per-upload memory (decoder, buffer) or temp file. Waiting here
    // costs no more than the stream's window, held by QUIC; the sender waits on flow control.
    let permit = upload_slot(&shared.uploads).await;
    let tmp = match archive.temp(&name) {
        Ok(t) => t,
        Err(e) => return refuse(storage_refusal(&name, &e)),
    };
    let decoder = match BodyDecoder::new(request.encoding) {
        Ok(d) => d,
        Err(r) => return refuse(r),
    };
    let trailer = TrailerSplit::new(upload.expects_trailer());
    let max_wire = max_wire_bytes(request.encoding, request.size) + TRAILER_LEN as u64;
    let mut sink = Sink {
        upload,
        decoder,
        trailer,
        tmp,
        written: 0,
    };
    let mut wire = 0u64;
    let batch = match request.encoding {
        Encoding::Plain => WRITE_BUF,
        Encoding::Zstd => ZSTD_BATCH,
    };
    let mut buf = vec![0u8; batch.min(max_wire as usize).max(1)];
    let mut filled = 0;
    loop {
        let n = read_or_gone!(recv.read(&mut buf[filled..]));
        let done = n.is_none();
        if let Some(n) = n {
            filled += n;
            wire += n as u64;
            if wire > max_wire {
                return refuse(Refusal::SizeMismatch {
                    name,
                    announced: request.size,
                    received: wire,
                });
            }
        }
        if filled > 0 && (done || filled == buf.len()) {
            // Decode, check and write on the blocking pool: it is CPU and disk work.
            let result = tokio::task::spawn_blocking(move || {
                let r = sink.consume(&buf[..filled]);
                (sink, buf, r)
            })
            .await;
            match result {
                Ok((s, b, Ok(()))) => (sink, buf) = (s, b),
                Ok((_, _, Err(r))) => return refuse(r),
                Err(e) => {
                    return refuse(Refusal::StorageFailed {
                        name,
                        detail: e.to_string(),
                    })
                }
            }
            filled = 0;
        }
        if done {
            break;
        }
    }
    drop(buf);
    let Sink {
        mut upload,
        decoder,
        trailer,
        tmp,
        ..
    } = sink;
    if let Err(r) = decoder.finish() {
        return refuse(r);
    }
    // The decoding memory is gone: the fsyncs below need no slot.
    drop(decoder);
    drop(permit);
    if let Some(digest) = trailer.trailer() {
        upload.set_trailer(digest);
    }
    let verified = match upload.finish() {
        Ok(v) => v,
        Err(r) => return refuse(r),
    };
    let archive = archive.clone();
    match tokio::task::spawn_blocking(move || archive.commit(tmp, &verified)).await {
        Ok(reply) => Outcome::Reply(reply),
        Err(e) => refuse(Refusal::StorageFailed {
            name,
            detail: e.to_string(),
        }),
    }
}

/// Take one of the MAX_ACTIVE_UPLOADS slots, waiting (first come, first served) if all are busy.
async fn upload_slot(uploads: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    match uploads.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            let started = Instant::now();
            debug!("{MAX_ACTIVE_UPLOADS} uploads in progress: waiting for one to finish");
            let p = uploads
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            debug!(
                waited_ms = started.elapsed().as_millis() as u64,
                "upload slot free"
            );
            p
        }
    }
}

/// Where the bytes of one upload go: decoded, accounted for, written to the temp file.
struct Sink {
    upload: Upload,
    decoder: BodyDecoder,
    /// Holds back the digest trailer at the end of the stream.
    trailer: TrailerSplit,
    tmp: TempFile,
    /// Plain bytes written so far.
    written: u64,
}

impl Sink {
    /// Blocking: decode `wire` and write the plain bytes.
    fn consume(&mut self, wire: &[u8]) -> Result<(), Refusal> {
        use std::io::Write;
        let Sink {
            upload,
            decoder,
            trailer,
            tmp,
            written,
        } = self;
        let name = upload.name().to_string();
        let before = *written;
        let (held, content) = trailer.split(wire);
        for part in [&held[..], content] {
            decoder.decode(part, &mut |plain| {
                upload.feed(plain)?;
                tmp.file()
                    .write_all(plain)
                    .map_err(|e| write_refusal(&name, &e))?;
                *written += plain.len() as u64;
                Ok(())
            })?;
        }
        // Start writeback of what this batch wrote, so the final fsync is short.
        tmp.start_writeback(before, *written - before);
        Ok(())
    }
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
