//! `walship-sender push PATH NAME`: PostgreSQL's archive_command. Sends one file on one QUIC
//! stream, read once (hash, compress and send in one pipeline, the SHA-256 as a trailer), and
//! succeeds only on the receiver's "stored" or "already had" reply, which it sends after
//! verifying the SHA-256 and fsyncing: transport acknowledgements prove nothing.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::VarInt;
use tokio::time::timeout;
use walship_common::proto::digest::Hasher;
use walship_common::proto::frame::{
    decode_preamble, MAX_FILE_BYTES, MAX_REPLY_BYTES, PREAMBLE_LEN,
};
use walship_common::proto::{BodyEncoder, Encoding, Reply, Request};
use walship_common::sys::config::SenderSettings;
use walship_common::sys::tls;
use walship_common::wal::header::{LongPageHeader, LONG_PAGE_HEADER_LEN};
use walship_common::{handshake, WalFileName};

use crate::error::SenderError;

/// How long to let the connection close go out before exiting.
const CLOSE_FLUSH: Duration = Duration::from_millis(2);
/// Read size when hashing and sending.
const CHUNK: usize = 256 << 10;

/// What the receiver said, when it was a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Stored,
    AlreadyHad,
    /// The daemon's look-ahead had shipped exactly this file.
    ShippedAhead,
}

pub async fn push(
    settings: &SenderSettings,
    path: &Path,
    name: &str,
) -> Result<Pushed, SenderError> {
    let request = prepare_blocking(path, name, settings.compression).await?;
    tracing::debug!("prepared (name and header checked)");
    let target = Target::new(settings).await?;
    let progress = Progress::default();
    let result = timeout(settings.timeout, async {
        let conn = target.connect().await?;
        let result = transfer(settings, &conn, path, request, &progress).await;
        conn.close(VarInt::from_u32(0), b"done");
        result
    })
    .await
    .unwrap_or_else(|_| Err(progress.timeout_error(settings, name)));
    tracing::debug!("reply received");
    // The verdict is in hand. Give the endpoint driver a moment to put CONNECTION_CLOSE on the
    // wire so the receiver frees the connection at once rather than after its idle timeout,
    // but do not sit out QUIC's draining period (3 PTO, ~80 ms even on loopback): nothing the
    // receiver could still send matters.
    let _ = timeout(CLOSE_FLUSH, target.endpoint.wait_idle()).await;
    tracing::debug!("done");
    result
}

pub fn reply_timeout(settings: &SenderSettings, name: &str) -> SenderError {
    SenderError::ReplyTimeout {
        addr: settings.receiver.clone(),
        name: name.to_string(),
        timeout: settings.timeout,
    }
}

/// How far a transfer got, so that a push whose `timeout` runs out says where it was waiting.
#[derive(Debug, Default)]
pub struct Progress {
    stage: AtomicU8,
    /// Wire bytes handed to QUIC so far.
    sent: AtomicU64,
}

/// Connected, waiting for the receiver to allow a stream: it gives stream credit only to the
/// connections holding one of its `max_connections` sending slots.
const STAGE_NO_STREAM: u8 = 1;
/// Sending the content: a write blocks when the receiver does not read, which it does only
/// once the upload holds one of its `max_uploads` upload slots (or when the link is slow).
const STAGE_SENDING: u8 = 2;
/// All bytes sent, waiting for the verdict.
const STAGE_REPLY: u8 = 3;

impl Progress {
    fn set(&self, stage: u8) {
        self.stage.store(stage, Ordering::Relaxed);
    }

    /// The error for a push whose `timeout` ran out at this point.
    pub fn timeout_error(&self, settings: &SenderSettings, name: &str) -> SenderError {
        let (addr, name, timeout) = (
            settings.receiver.clone(),
            name.to_string(),
            settings.timeout,
        );
        match self.stage.load(Ordering::Relaxed) {
            STAGE_NO_STREAM => SenderError::NoSendingSlot {
                addr,
                name,
                timeout,
            },
            STAGE_SENDING => SenderError::NotTaken {
                addr,
                name,
                timeout,
                sent: self.sent.load(Ordering::Relaxed),
            },
            STAGE_REPLY => SenderError::NoReply {
                addr,
                name,
                timeout,
            },
            // Still connecting (stage 0).
            _ => reply_timeout(settings, &name),
        }
    }
}

/// [`prepare`] on the blocking pool.
pub async fn prepare_blocking(
    path: &Path,
    name: &str,
    encoding: Encoding,
) -> Result<Request, SenderError> {
    let (path, name) = (path.to_path_buf(), name.to_string());
    tokio::task::spawn_blocking(move || prepare(&path, &name, encoding))
        .await
        .map_err(|e| SenderError::Internal(e.to_string()))?
}

/// The receiver as a place to connect to: its address, and a client endpoint with our
/// certificate. The daemon keeps one for its whole life; `push` makes one per call.
pub struct Target {
    pub endpoint: quinn::Endpoint,
    addr: SocketAddr,
    receiver: String,
    server_name: String,
    connect_timeout: Duration,
}

impl Target {
    pub async fn new(settings: &SenderSettings) -> Result<Self, SenderError> {
        let client = tls::client_config(&settings.ca, &settings.cert, &settings.key)?;
        let addr = resolve(settings).await?;
        let endpoint = client_endpoint(addr, client, settings)?;
        Ok(Target {
            endpoint,
            addr,
            receiver: settings.receiver.clone(),
            server_name: settings.server_name.clone(),
            connect_timeout: settings.connect_timeout,
        })
    }

    /// A new QUIC connection, mutual TLS done.
    pub async fn connect(&self) -> Result<quinn::Connection, SenderError> {
        let addr = self.addr;
        let connecting = self
            .endpoint
            .connect(addr, &self.server_name)
            .map_err(|e| SenderError::Internal(format!("connect to {addr}: {e}")))?;
        let conn = match timeout(self.connect_timeout, connecting).await {
            Err(_) | Ok(Err(quinn::ConnectionError::TimedOut)) => {
                return Err(SenderError::ReceiverUnreachable {
                    port: addr.port().to_string(),
                    addr: self.receiver.clone(),
                    timeout: self.connect_timeout,
                })
            }
            Ok(Err(e)) => return Err(handshake_error(&self.receiver, &self.server_name, e)),
            Ok(Ok(c)) => c,
        };
        tracing::debug!("connected");
        Ok(conn)
    }
}

/// Check the name and, for segments, the page header against the name and the file's size: the
/// request to send. The digest follows the content as a trailer (computed while sending), so
/// the file is read once.
pub fn prepare(path: &Path, name: &str, encoding: Encoding) -> Result<Request, SenderError> {
    let parsed: WalFileName =
        name.parse().map_err(
            |e: walship_common::wal::name::NameError| SenderError::BadName {
                name: name.to_string(),
                reason: e.to_string(),
            },
        )?;
    let read_err = |source| SenderError::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    if size > MAX_FILE_BYTES {
        return Err(SenderError::TooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    if let Some(segment) = parsed.segment_bytes() {
        // Catch a wrong %p/%f pairing here, with a clear message, before using the network.
        let bad = |reason: String| SenderError::BadSegment {
            path: path.to_path_buf(),
            name: name.to_string(),
            reason,
        };
        let mut head = Vec::with_capacity(LONG_PAGE_HEADER_LEN);
        (&mut file)
            .take(LONG_PAGE_HEADER_LEN as u64)
            .read_to_end(&mut head)
            .map_err(read_err)?;
        let header = LongPageHeader::decode(&head).map_err(|e| bad(e.to_string()))?;
        header
            .check_against(segment, size)
            .map_err(|e| bad(e.to_string()))?;
    }
    Ok(Request {
        name: parsed.to_string(),
        size,
        digest: None,
        encoding,
    })
}

async fn resolve(settings: &SenderSettings) -> Result<SocketAddr, SenderError> {
    let err = |reason: String| SenderError::Resolve {
        addr: settings.receiver.clone(),
        reason,
        config: settings.config_path.clone(),
    };
    let mut addrs = timeout(
        settings.connect_timeout,
        tokio::net::lookup_host(settings.receiver.as_str()),
    )
    .await
    .map_err(|_| err(format!("no answer within {:?}", settings.connect_timeout)))?
    .map_err(|e| err(e.to_string()))?;
    addrs.next().ok_or_else(|| err("no address".into()))
}

fn client_endpoint(
    addr: SocketAddr,
    tls: rustls::ClientConfig,
    settings: &SenderSettings,
) -> Result<quinn::Endpoint, SenderError> {
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .expect("literal address");
    let mut endpoint = quinn::Endpoint::client(bind)
        .map_err(|e| SenderError::Internal(format!("bind a UDP socket: {e}")))?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| SenderError::Internal(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // Idle timeout no longer than the connect timeout: a silent receiver fails the push fast.
    let idle = settings.connect_timeout.max(Duration::from_secs(1));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle).expect("bounded by config"),
    ));
    transport.keep_alive_interval(Some(idle / 3));
    // Unacknowledged bytes buffered per connection: 8 MiB covers 100 Mbit/s at 600 ms RTT or
    // 1 Gbit/s at 60 ms, and bounds the daemon's memory however many streams it runs.
    transport.send_window(8 << 20);
    transport.stream_receive_window(VarInt::from_u32(1 << 16));
    config.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Send one file on a new stream of `conn` and wait for the receiver's verdict, noting in
/// `progress` how far it got (for the error when the caller's `timeout` runs out).
pub async fn transfer(
    settings: &SenderSettings,
    conn: &quinn::Connection,
    path: &Path,
    request: Request,
    progress: &Progress,
) -> Result<Pushed, SenderError> {
    let name = request.name.clone();
    let receiver = settings.receiver.clone();
    let lost = |detail: String| SenderError::ConnectionLost {
        addr: receiver.clone(),
        name: name.clone(),
        detail,
    };
    // In TLS 1.3 the server judges our certificate after we think the handshake is done: a
    // rejection shows up as the connection closing on the first stream operation.
    let conn_err = |e: quinn::ConnectionError| match tls_failure(&e) {
        Some(_) => handshake_error(&receiver, &settings.server_name, e),
        None => lost(e.to_string()),
    };
    progress.set(STAGE_NO_STREAM);
    let (mut tx, mut rx) = conn.open_bi().await.map_err(conn_err)?;
    progress.set(STAGE_SENDING);
    let write_err = |e: quinn::WriteError| match e {
        quinn::WriteError::ConnectionLost(c) => conn_err(c),
        e => lost(e.to_string()),
    };
    tx.write_all(&request.encode()).await.map_err(write_err)?;

    // Read and compress on a blocking thread while this task sends: the two overlap, and the
    // bounded channel keeps memory to a few chunks whatever the file size.
    let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    let producer = {
        let (path, size) = (path.to_path_buf(), request.size);
        let (encoding, level) = (request.encoding, settings.compression_level);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = produce(&path, size, encoding, level, &chunks_tx) {
                let _ = chunks_tx.blocking_send(Err(e));
            }
        })
    };
    let mut stopped_early = false;
    let mut wire = 0u64;
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk.map_err(|source| SenderError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        match tx.write_all(&chunk).await {
            Ok(()) => {
                wire += chunk.len() as u64;
                progress.sent.store(wire, Ordering::Relaxed);
            }
            // The receiver stopped reading: it has answered already (refused or had it).
            Err(quinn::WriteError::Stopped(_)) => {
                stopped_early = true;
                break;
            }
            Err(e) => return Err(write_err(e)),
        }
    }
    drop(chunks);
    let _ = producer.await;
    tracing::debug!(wire, plain = request.size, "content sent");
    if !stopped_early {
        let _ = tx.finish();
    }
    tracing::debug!("all bytes written");
    progress.set(STAGE_REPLY);

    let reply = read_reply(&mut rx).await.map_err(|e| match e {
        ReplyError::Read(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c))) => {
            conn_err(c)
        }
        ReplyError::Read(e) => lost(e.to_string()),
        ReplyError::Frame(f) => SenderError::BadReply(f, receiver.clone()),
    })?;
    match reply {
        Reply::Stored => Ok(Pushed::Stored),
        Reply::AlreadyHad => Ok(Pushed::AlreadyHad),
        Reply::Refused(refusal) => Err(SenderError::Refused { name, refusal }),
    }
}

/// Read `size` bytes of `path` once: hash, encode, and hand wire chunks to the sender task,
/// then the digest trailer (blocking). Hashing runs on its own thread beside compression, so a
/// 16 MiB segment costs the slower of the two, not their sum.
fn produce(
    path: &Path,
    size: u64,
    encoding: Encoding,
    level: i32,
    out: &tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>,
) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?.take(size);
    let mut encoder = BodyEncoder::new(encoding, level, size)?;
    // A few chunks in flight bound the memory: CHUNK x (hasher queue 2 + 2 in hand), plus the
    // wire queue to the sender task.
    let (to_hasher, chunks) = std::sync::mpsc::sync_channel::<Arc<Vec<u8>>>(2);
    std::thread::scope(|scope| {
        let hasher = scope.spawn(move || {
            let mut hasher = Hasher::new();
            for chunk in chunks {
                hasher.update(&chunk[..]);
            }
            hasher.finalize()
        });
        let mut total = 0u64;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = read_full(&mut file, &mut buf)?;
            let mut wire = Vec::new();
            if n == 0 {
                if total != size {
                    // PostgreSQL never shortens a finished segment; someone else did.
                    return Err(std::io::Error::other(format!(
                        "the file shrank from {size} to {total} bytes while it was read"
                    )));
                }
                drop(to_hasher);
                encoder.finish(&mut wire)?;
                let digest = hasher
                    .join()
                    .map_err(|_| std::io::Error::other("the hashing thread panicked"))?;
                wire.extend_from_slice(&digest);
                // If the sender task has stopped, the receiver answered early: nothing to do.
                let _ = out.blocking_send(Ok(wire));
                return Ok(());
            }
            total += n as u64;
            buf.truncate(n);
            let chunk = Arc::new(buf);
            to_hasher
                .send(chunk.clone())
                .map_err(|_| std::io::Error::other("the hashing thread stopped"))?;
            encoder.encode(&chunk, &mut wire)?;
            if !wire.is_empty() && out.blocking_send(Ok(wire)).is_err() {
                return Ok(()); // the sender task stopped: the receiver answered early
            }
        }
    })
}

/// Fill `buf` unless the file ends first; the number of bytes read.
fn read_full(file: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

enum ReplyError {
    Read(quinn::ReadExactError),
    Frame(walship_common::proto::FrameError),
}

async fn read_reply(rx: &mut quinn::RecvStream) -> Result<Reply, ReplyError> {
    let mut pre = [0u8; PREAMBLE_LEN];
    rx.read_exact(&mut pre).await.map_err(ReplyError::Read)?;
    let len = decode_preamble(&pre, MAX_REPLY_BYTES).map_err(ReplyError::Frame)?;
    let mut body = vec![0u8; len];
    rx.read_exact(&mut body).await.map_err(ReplyError::Read)?;
    Reply::decode_body(&body).map_err(ReplyError::Frame)
}

/// Turn a handshake-time failure into advice: which side refused which certificate, and the
/// setting to check. Classified by who closed and with which TLS alert, not by the error text.
pub fn handshake_error(addr: &str, server_name: &str, e: quinn::ConnectionError) -> SenderError {
    let text = e.to_string();
    let detail = match tls_failure(&e) {
        Some(failure) => format!(
            "{} ({text})",
            failure.advice(handshake::Side::Sender, server_name)
        ),
        None => format!("{text}; PostgreSQL will retry"),
    };
    SenderError::Handshake {
        addr: addr.to_string(),
        detail,
    }
}

/// The TLS alert that ended a connection, and whether we raised it (our TLS stack refused the
/// receiver: quinn's `TransportError`) or the receiver sent it (`ConnectionClosed`).
pub fn tls_failure(e: &quinn::ConnectionError) -> Option<handshake::HandshakeFailure> {
    match e {
        quinn::ConnectionError::TransportError(t) => {
            handshake::HandshakeFailure::from_quic_code(handshake::Origin::Local, u64::from(t.code))
        }
        quinn::ConnectionError::ConnectionClosed(c) => handshake::HandshakeFailure::from_quic_code(
            handshake::Origin::Peer,
            u64::from(c.error_code),
        ),
        _ => None,
    }
}
