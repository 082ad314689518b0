//! `walship-receiver serve`: a QUIC listener (mutual TLS) that takes one file per stream,
//! verifies it with [`Upload`], stores it durably through [`Archive`] and only then replies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{RecvStream, SendStream, VarInt};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};
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

/// Bytes gathered from the stream before one write to the temp file: large writes keep the
/// per-segment syscall count low, and it bounds memory per transfer.
const WRITE_BUF: usize = 1 << 20;
/// Streams (files) one connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 64;
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
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => break,
            },
        };
        let remote = incoming.remote_address();
        let archive = archive.clone();
        let idle = settings.idle_timeout;
        let (tracker2, shutdown2) = (tracker.clone(), shutdown.clone());
        tracker.spawn(
            async move { connection(incoming, archive, idle, tracker2, shutdown2).await }
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
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_CONNECTION));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    // Windows sized for a 16 MiB segment on a fast link, bounded per connection.
    t.stream_receive_window(VarInt::from_u32(8 << 20));
    t.receive_window(VarInt::from_u32(32 << 20));
    t
}

async fn connection(
    incoming: quinn::Incoming,
    archive: Arc<Archive>,
    idle: Duration,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            let text = e.to_string();
            if is_tls_failure(&e) {
                // A certificate problem on one side or the other: a person must look.
                let advice = tls::explain_handshake_failure(&text, tls::Side::Receiver, "");
                error!("rejected connection: {text}; {advice}");
            } else {
                // A client that hangs up (its connect timeout ran out, it was killed) is not
                // an error here: it says so in PostgreSQL's log and retries.
                info!("client went away during the handshake: {text}");
            }
            return;
        }
    };
    info!("connection accepted");
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
        let archive = archive.clone();
        let span = info_span!(
            "file",
            segment = tracing::field::Empty,
            bytes = tracing::field::Empty,
            outcome = tracing::field::Empty
        );
        tracker.spawn(stream(send, recv, archive, idle).instrument(span));
    }
}

/// Whether a failed handshake ended with a TLS alert (QUIC "crypto error" codes
/// 0x100-0x1ff: certificate refused, no certificate, ALPN mismatch) rather than the peer
/// leaving.
fn is_tls_failure(e: &quinn::ConnectionError) -> bool {
    let code = match e {
        quinn::ConnectionError::TransportError(t) => t.code,
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code,
        _ => return false,
    };
    (0x100..=0x1ff).contains(&u64::from(code))
}

/// What became of one stream.
enum Outcome {
    Reply(Reply),
    /// The peer went away or stalled; no reply can be delivered.
    Gone(String),
}

async fn stream(mut send: SendStream, mut recv: RecvStream, archive: Arc<Archive>, idle: Duration) {
    let started = Instant::now();
    let span = tracing::Span::current();
    let outcome = receive(&mut recv, &archive, idle).await;
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
                Refusal::ForeignCluster { .. }
                | Refusal::ConflictingContent { .. }
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

async fn receive(recv: &mut RecvStream, archive: &Arc<Archive>, idle: Duration) -> Outcome {
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

    let upload = match Upload::begin(&request, &archive.facts()) {
        Ok(u) => u,
        Err(r) => return refuse(r),
    };
    let name = upload.name().to_string();

    // Already stored? With the digest in the header, answer without taking the bytes. With a
    // trailer digest, the commit compares with the stored copy instead.
    let existing = match request.sha256 {
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
    // Compressed bytes expand ~5-20x: smaller wire batches keep decoding and writing in step
    // with the arrival instead of all at the end.
    let batch = match request.encoding {
        Encoding::Plain => WRITE_BUF,
        Encoding::Zstd => WRITE_BUF / 8,
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
