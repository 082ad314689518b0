//! `walship-sender push PATH NAME`: PostgreSQL's archive_command. Sends one file on one QUIC
//! stream, read once (hash, compress and send in one pipeline laid out by [`Outgoing`], the
//! digest as a trailer), and succeeds only on the receiver's "stored" or "already had" reply,
//! which it sends after verifying the digest and fsyncing: transport acknowledgements prove
//! nothing. The daemon ships through the same [`transfer`].

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::VarInt;
use tokio::time::timeout;
use walship_common::adapt::{Codec, Sample};
use walship_common::proto::digest::Hasher;
use walship_common::proto::frame::{CLOSE_DONE, MAX_FILE_BYTES, REPLY};
use walship_common::proto::{
    Encoding, FrameError, Outgoing, Refusal, Reply, Request, Seal, WireRequest, PROTOCOL_VERSION,
};
use walship_common::sys::config::{ReceiverTarget, SenderSettings};
use walship_common::sys::frame_io::{read_frame, ReadError};
use walship_common::sys::tls;
use walship_common::wal::header::{LongPageHeader, LONG_PAGE_HEADER_LEN};
use walship_common::{handshake, WalFileName};

use crate::error::SenderError;

/// Longest interval between keep-alive packets on a connection to the receiver.
const KEEP_ALIVE_MAX: Duration = Duration::from_millis(500);

/// How long to let the connection close go out before exiting.
pub const CLOSE_FLUSH: Duration = Duration::from_millis(2);
/// Read size when hashing and sending.
const CHUNK: usize = 256 << 10;

/// What the receiver said, when it was a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Stored,
    AlreadyHad,
    /// The daemon's look-ahead had shipped exactly this file.
    ShippedAhead,
    /// Not shipped: the pg_wal valve dropped it (`max_backlog`), recorded and reported as an
    /// ERROR line.
    Dropped,
}

/// Push `path` as `name` to every receiver at once, each on its own connection and within its
/// own `timeout`, and succeed when `require` of them stored it durably. One receiver: its own
/// verdict, as before fan-out.
pub async fn push(
    settings: &SenderSettings,
    path: &Path,
    name: &str,
) -> Result<Pushed, SenderError> {
    let request = prepare_blocking(path, name, settings.compression).await?;
    tracing::debug!("prepared (name and header checked)");
    if let [only] = settings.receivers.as_slice() {
        return push_one(settings, only, path, name, request).await;
    }
    let shared = Arc::new((settings.clone(), path.to_path_buf(), name.to_string()));
    let mut attempts = tokio::task::JoinSet::new();
    for (i, receiver) in settings.receivers.iter().enumerate() {
        let (shared, receiver, request) = (shared.clone(), receiver.clone(), request.clone());
        attempts.spawn(async move {
            let (settings, path, name) = &*shared;
            (i, push_one(settings, &receiver, path, name, request).await)
        });
    }
    let mut results: Vec<Option<Result<Pushed, SenderError>>> =
        settings.receivers.iter().map(|_| None).collect();
    while let Some(done) = attempts.join_next().await {
        match done {
            Ok((i, result)) => results[i] = Some(result),
            Err(e) => {
                return Err(SenderError::TaskFailed {
                    what: "push",
                    detail: e.to_string(),
                })
            }
        }
    }
    let results = settings
        .receivers
        .iter()
        .zip(results)
        .map(|(r, result)| (r.address.as_str(), result.expect("every attempt joined")))
        .collect::<Vec<_>>();
    tally(settings, name, results)
}

/// The fan-out verdict: success once `require` receivers stored the file (the first success
/// stands for all, "stored" before "already had"); the failures of the others are one WARN
/// line then, or the error's detail otherwise.
pub fn tally(
    settings: &SenderSettings,
    name: &str,
    results: Vec<(&str, Result<Pushed, SenderError>)>,
) -> Result<Pushed, SenderError> {
    let total = results.len();
    let need = settings.require.needed(total);
    let mut stored = Vec::new();
    let mut failures = Vec::new();
    for (addr, result) in results {
        match result {
            Ok(pushed) => stored.push(pushed),
            Err(e) => failures.push(failure_text(addr, &e)),
        }
    }
    if stored.len() >= need {
        if !failures.is_empty() {
            tracing::warn!(
                "{name} stored on {} of {total} receivers (require = {}); not on: {}",
                stored.len(),
                settings.require,
                failures.join("; ")
            );
        }
        let outcome = if stored.contains(&Pushed::Stored) {
            Pushed::Stored
        } else {
            stored.first().copied().unwrap_or(Pushed::AlreadyHad)
        };
        return Ok(outcome);
    }
    Err(SenderError::NotEnoughReceivers {
        name: name.to_string(),
        stored: stored.len(),
        total,
        require: settings.require,
        failures: failures.join("; "),
    })
}

/// One receiver's failure inside a fan-out line: it names the receiver (most errors do
/// already), and the "PostgreSQL will retry" is said once for the whole line.
pub fn failure_text(addr: &str, e: &SenderError) -> String {
    let text = e.to_string().replace(" (PostgreSQL will retry)", "");
    let text = text.replace("; PostgreSQL will retry", "");
    if text.contains(addr) {
        text
    } else {
        format!("receiver {addr}: {text}")
    }
}

/// One receiver, on a connection of its own, within `timeout`.
async fn push_one(
    settings: &SenderSettings,
    receiver: &ReceiverTarget,
    path: &Path,
    name: &str,
    request: Request,
) -> Result<Pushed, SenderError> {
    let target = Target::new(settings, receiver).await?;
    let progress = Progress::default();
    let result = timeout(settings.timeout, async {
        let conn = target.connect().await?;
        let codec = fixed_codec(settings);
        let result = transfer(settings, receiver, &conn, path, request, codec, &progress).await;
        conn.close(VarInt::from_u32(CLOSE_DONE), b"done");
        result
    })
    .await
    .unwrap_or_else(|_| Err(progress.timeout_error(settings, &receiver.address, name)));
    tracing::debug!(receiver = %receiver.address, "reply received");
    // The verdict is in hand. Give the endpoint driver a moment to put CONNECTION_CLOSE on the
    // wire so the receiver frees the connection at once rather than after its idle timeout,
    // but do not sit out QUIC's draining period (3 PTO, ~80 ms even on loopback): nothing the
    // receiver could still send matters.
    let _ = timeout(CLOSE_FLUSH, target.endpoint.wait_idle()).await;
    tracing::debug!("done");
    result
}

pub fn reply_timeout(settings: &SenderSettings, addr: &str, name: &str) -> SenderError {
    SenderError::ReplyTimeout {
        addr: addr.to_string(),
        name: name.to_string(),
        timeout: settings.timeout,
    }
}

/// Transfers of this process compressing right now.
static COMPRESSING: AtomicUsize = AtomicUsize::new(0);

/// One transfer counted in [`COMPRESSING`] while it lives.
struct Compressing;

impl Compressing {
    /// The threads a new transfer compresses on: `compression_threads` when it is the only
    /// one, else one. Transfers running side by side (look-ahead, fan-out, parallel pushes)
    /// keep the cores busy already; more threads would only add memory (a few MiB of job
    /// buffers each) and contention.
    fn threads(settings: &SenderSettings) -> (u32, Compressing) {
        let others = COMPRESSING.fetch_add(1, Ordering::Relaxed);
        let threads = if others == 0 {
            settings.compression_threads
        } else {
            1
        };
        (threads, Compressing)
    }
}

impl Drop for Compressing {
    fn drop(&mut self) {
        COMPRESSING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The codec of a direct `push` (and of the daemon when `compression` is not "auto"): the
/// configured encoding at `compression_level`.
pub fn fixed_codec(settings: &SenderSettings) -> Codec {
    match settings.compression {
        Encoding::Plain => Codec::Store,
        Encoding::Zstd => Codec::Zstd(settings.compression_level),
        Encoding::Lz4 => Codec::Lz4,
    }
}

/// How far a transfer got, so that a push whose `timeout` runs out says where it was waiting;
/// and, once it is done, its timings for [`walship_common::adapt`].
#[derive(Debug, Default)]
pub struct Progress {
    stage: AtomicU8,
    /// Wire bytes handed to QUIC so far.
    sent: AtomicU64,
    /// Nanoseconds the producer spent in the encoder.
    compress_ns: AtomicU64,
    /// Nanoseconds from the first wire byte until all were acknowledged (0 until then).
    elapsed_ns: AtomicU64,
    /// Nanoseconds of those the sending task waited for the encoder.
    starved_ns: AtomicU64,
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

    /// The numbers of a finished transfer of `plain` bytes sent with `codec`; `None` when it
    /// did not get as far as the receiver holding every byte.
    pub fn sample(&self, codec: Codec, plain: u64) -> Option<Sample> {
        let elapsed = self.elapsed_ns.load(Ordering::Relaxed);
        (elapsed > 0).then(|| Sample {
            codec,
            plain,
            wire: self.sent.load(Ordering::Relaxed),
            compress: Duration::from_nanos(self.compress_ns.load(Ordering::Relaxed)),
            elapsed: Duration::from_nanos(elapsed),
            starved: Duration::from_nanos(self.starved_ns.load(Ordering::Relaxed)),
        })
    }

    /// The error for a push whose `timeout` ran out at this point.
    pub fn timeout_error(&self, settings: &SenderSettings, addr: &str, name: &str) -> SenderError {
        let (addr, name, timeout) = (addr.to_string(), name.to_string(), settings.timeout);
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
            _ => reply_timeout(settings, &addr, &name),
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
        .map_err(|e| SenderError::TaskFailed {
            what: "file check",
            detail: e.to_string(),
        })?
}

/// One receiver as a place to connect to: its address, and a client endpoint with our
/// certificate and its CA. The daemon keeps one per receiver for its whole life; `push` makes
/// one per receiver per call.
pub struct Target {
    pub endpoint: quinn::Endpoint,
    addr: SocketAddr,
    receiver: String,
    server_name: String,
    connect_timeout: Duration,
    config_path: std::path::PathBuf,
}

impl Target {
    pub async fn new(
        settings: &SenderSettings,
        receiver: &ReceiverTarget,
    ) -> Result<Self, SenderError> {
        let client = tls::client_config(&receiver.ca, &settings.cert, &settings.key)?;
        let addr = resolve(settings, &receiver.address).await?;
        let endpoint = client_endpoint(addr, client, settings)?;
        Ok(Target {
            endpoint,
            addr,
            receiver: receiver.address.clone(),
            server_name: receiver.server_name.clone(),
            connect_timeout: settings.connect_timeout,
            config_path: settings.config_path.clone(),
        })
    }

    /// `host:port` as configured.
    pub fn address(&self) -> &str {
        &self.receiver
    }

    /// A new QUIC connection, mutual TLS done.
    pub async fn connect(&self) -> Result<quinn::Connection, SenderError> {
        let addr = self.addr;
        let connecting = self
            .endpoint
            .connect(addr, &self.server_name)
            .map_err(|e| match e {
                quinn::ConnectError::InvalidServerName(_) => SenderError::BadServerName {
                    name: self.server_name.clone(),
                    config: self.config_path.clone(),
                },
                e => SenderError::Connect {
                    addr: self.receiver.clone(),
                    detail: e.to_string(),
                },
            })?;
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
        encoding,
        dropped: Vec::new(),
        append_at: None,
    })
}

async fn resolve(settings: &SenderSettings, address: &str) -> Result<SocketAddr, SenderError> {
    let err = |reason: String| SenderError::Resolve {
        addr: address.to_string(),
        reason,
        config: settings.config_path.clone(),
    };
    let mut addrs = timeout(settings.connect_timeout, tokio::net::lookup_host(address))
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
    let mut endpoint =
        quinn::Endpoint::client(bind).map_err(|source| SenderError::UdpBind { bind, source })?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| {
        SenderError::Tls(tls::TlsError::Setup {
            path: settings.cert.clone(),
            message: format!("not usable for QUIC (TLS 1.3): {e}"),
        })
    })?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // Idle timeout no longer than the connect timeout: a silent receiver fails the push fast.
    let idle = settings.connect_timeout.max(Duration::from_secs(1));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle).expect("bounded by config"),
    ));
    // Keep-alives also keep a push that waits for one of the receiver's upload slots from
    // being dropped as idle: QUIC's idle timeout is the smaller of both sides', and the
    // receiver's `idle_timeout` (at least 1 ms, 30 s by default) is unknown here. Every
    // 500 ms (or a third of ours) is a few bytes, and a receiver's idle_timeout shorter than
    // that would drop any sender between two segments anyway.
    transport.keep_alive_interval(Some((idle / 3).min(KEEP_ALIVE_MAX)));
    // Unacknowledged bytes buffered per connection: 8 MiB covers 100 Mbit/s at 600 ms RTT or
    // 1 Gbit/s at 60 ms, and bounds the daemon's memory however many streams it runs.
    transport.send_window(8 << 20);
    transport.stream_receive_window(VarInt::from_u32(1 << 16));
    config.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// A `Malformed` refusal of something `sent` in LZ4 most likely comes from a receiver built
/// before LZ4: say so, and what to do. Other refusals, or other encodings, as they are.
pub(crate) fn with_lz4_hint(refusal: Refusal, sent: Encoding) -> Refusal {
    match refusal {
        Refusal::Malformed { reason } if sent == Encoding::Lz4 => Refusal::Malformed {
            reason: format!(
                "{reason} (sent with compression = \"lz4\": a receiver older than lz4 cannot \
                 read it; upgrade walship-receiver or set compression = \"zstd\")"
            ),
        },
        other => other,
    }
}

/// Send one file on a new stream of `conn` with `codec` and wait for the receiver's verdict,
/// noting in `progress` how far it got (for the error when the caller's `timeout` runs out)
/// and how long compression and the link took.
pub async fn transfer(
    settings: &SenderSettings,
    receiver: &ReceiverTarget,
    conn: &quinn::Connection,
    path: &Path,
    mut request: Request,
    codec: Codec,
    progress: &Progress,
) -> Result<Pushed, SenderError> {
    let name = request.name.clone();
    // Drops of the pg_wal valve not acknowledged yet go with every request until one is: the
    // receiver records them before it answers.
    request.dropped = crate::valve::to_report(settings);
    let reported = request.dropped.clone();
    let fail = Failures {
        receiver: &receiver.address,
        server_name: &receiver.server_name,
        name: &name,
    };
    let level = match codec {
        Codec::Store => {
            request.encoding = Encoding::Plain;
            settings.compression_level
        }
        Codec::Zstd(level) => {
            request.encoding = Encoding::Zstd;
            level
        }
        Codec::Lz4 => {
            request.encoding = Encoding::Lz4;
            settings.compression_level
        }
    };
    let encoding = request.encoding;
    let (threads, _compressing) = Compressing::threads(settings);
    let outgoing =
        Outgoing::with_threads(request, level, threads).map_err(|source| SenderError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
    progress.set(STAGE_NO_STREAM);
    let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| fail.conn(e))?;
    progress.set(STAGE_SENDING);
    tx.write_all(&outgoing.header())
        .await
        .map_err(|e| fail.write(e))?;
    let sent = send_content(&mut tx, outgoing, path, progress, &fail).await?;
    if !sent.stopped_early {
        let _ = tx.finish();
    }
    tracing::debug!("all bytes written");
    progress.set(STAGE_REPLY);
    // From the first wire byte until the receiver acknowledged them all (or answered), and
    // how long of that the sender waited for the encoder.
    let acked = tx.stopped();
    let reply = read_verdict(&mut rx, &fail);
    tokio::pin!(acked, reply);
    let mut acked_at = None;
    let verdict = loop {
        tokio::select! {
            _ = &mut acked, if acked_at.is_none() => acked_at = Some(Instant::now()),
            verdict = &mut reply => break verdict?,
        }
    };
    if let (false, Some(first)) = (sent.stopped_early, sent.first_write) {
        let end = acked_at.unwrap_or_else(Instant::now);
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let elapsed = end.saturating_duration_since(first);
        progress
            .elapsed_ns
            .store(ns(elapsed).max(1), Ordering::Relaxed);
        progress
            .starved_ns
            .store(ns(sent.starved), Ordering::Relaxed);
    }
    if !reported.is_empty() && matches!(verdict, Reply::Stored | Reply::AlreadyHad) {
        crate::valve::mark_reported(settings, &reported);
    }
    match verdict {
        Reply::Stored => Ok(Pushed::Stored),
        Reply::AlreadyHad => Ok(Pushed::AlreadyHad),
        Reply::Ready { .. } => {
            Err(fail.lost("the receiver answered a WAL file as a base backup".into()))
        }
        Reply::Refused(refusal) => Err(SenderError::Refused {
            name: name.clone(),
            refusal: with_lz4_hint(refusal, encoding),
        }),
        Reply::Partial { .. } => {
            Err(fail.lost("the receiver answered a whole file as an append to a partial".into()))
        }
    }
}

/// Append `bytes` (already read, at most `MAX_APPEND_BYTES`) at `offset` to the receiver's
/// `NAME.partial` of the open segment; the receiver's answer: [`Reply::Partial`] with what it
/// holds durably, [`Reply::AlreadyHad`] when the finished segment is stored, or a refusal
/// (as an error).
pub async fn append(
    settings: &SenderSettings,
    receiver: &ReceiverTarget,
    conn: &quinn::Connection,
    name: &str,
    offset: u64,
    bytes: &[u8],
) -> Result<Reply, SenderError> {
    let fail = Failures {
        receiver: &receiver.address,
        server_name: &receiver.server_name,
        name,
    };
    let request = Request {
        name: name.to_string(),
        size: bytes.len() as u64,
        encoding: settings.compression,
        dropped: Vec::new(),
        append_at: Some(offset),
    };
    let mut outgoing = Outgoing::new(request, settings.compression_level).map_err(|source| {
        SenderError::Encode {
            path: name.into(),
            source,
        }
    })?;
    let mut wire = outgoing.header();
    let encode_err = |source| SenderError::Encode {
        path: name.into(),
        source,
    };
    outgoing.encode(bytes, &mut wire).map_err(encode_err)?;
    outgoing
        .finish(walship_common::proto::digest::digest(bytes), &mut wire)
        .map_err(encode_err)?;
    let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| fail.conn(e))?;
    match tx.write_all(&wire).await {
        Ok(()) | Err(quinn::WriteError::Stopped(_)) => {}
        Err(e) => return Err(fail.write(e)),
    }
    let _ = tx.finish();
    match read_verdict(&mut rx, &fail).await? {
        Reply::Refused(refusal) => Err(SenderError::Refused {
            name: name.to_string(),
            refusal,
        }),
        other => Ok(other),
    }
}

/// Ask the receiver to make the finished segment from the `NAME.partial` it holds whole
/// (see [`Seal`]); its answer: `Stored` when sealed, anything else means "not sealed" (the
/// caller then ships the segment as usual). A refusal comes back as an error.
pub async fn seal(
    receiver: &ReceiverTarget,
    conn: &quinn::Connection,
    seal: &Seal,
) -> Result<Reply, SenderError> {
    let fail = Failures {
        receiver: &receiver.address,
        server_name: &receiver.server_name,
        name: &seal.name,
    };
    let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| fail.conn(e))?;
    match tx
        .write_all(&WireRequest::Seal(seal.clone()).encode())
        .await
    {
        Ok(()) | Err(quinn::WriteError::Stopped(_)) => {}
        Err(e) => return Err(fail.write(e)),
    }
    let _ = tx.finish();
    match read_verdict(&mut rx, &fail).await? {
        Reply::Refused(refusal) => Err(SenderError::Refused {
            name: seal.name.clone(),
            refusal,
        }),
        other => Ok(other),
    }
}

/// What [`send_content`] saw.
struct Sent {
    /// The receiver stopped reading before the end (it has answered already: refused, or had
    /// it).
    stopped_early: bool,
    /// When the first wire bytes went to QUIC.
    first_write: Option<Instant>,
    /// How long this task then waited for the encoder.
    starved: Duration,
}

/// Read and compress on a blocking thread while this task sends: the two overlap, and the
/// bounded channel keeps memory to a few chunks whatever the file size.
async fn send_content(
    tx: &mut quinn::SendStream,
    outgoing: Outgoing,
    path: &Path,
    progress: &Progress,
    fail: &Failures<'_>,
) -> Result<Sent, SenderError> {
    let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel::<Result<Vec<u8>, SenderError>>(4);
    let compress_ns = Arc::new(AtomicU64::new(0));
    let producer = {
        let path = path.to_path_buf();
        let compress_ns = compress_ns.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = produce(&path, outgoing, &chunks_tx, &compress_ns) {
                let _ = chunks_tx.blocking_send(Err(e));
            }
        })
    };
    let mut stopped_early = false;
    let mut wire = 0u64;
    let mut first_write = None;
    let mut starved = Duration::ZERO;
    loop {
        let waited = Instant::now();
        let Some(chunk) = chunks.recv().await else {
            break;
        };
        if first_write.is_some() {
            starved += waited.elapsed();
        } else {
            first_write = Some(Instant::now());
        }
        let chunk = chunk?;
        match tx.write_all(&chunk).await {
            Ok(()) => {
                wire += chunk.len() as u64;
                progress.sent.store(wire, Ordering::Relaxed);
            }
            Err(quinn::WriteError::Stopped(_)) => {
                stopped_early = true;
                break;
            }
            Err(e) => return Err(fail.write(e)),
        }
    }
    drop(chunks);
    let _ = producer.await;
    progress
        .compress_ns
        .store(compress_ns.load(Ordering::Relaxed), Ordering::Relaxed);
    tracing::debug!(wire, ?starved, "content sent");
    Ok(Sent {
        stopped_early,
        first_write,
        starved,
    })
}

/// The receiver's one reply frame.
pub(crate) async fn read_verdict(
    rx: &mut quinn::RecvStream,
    fail: &Failures<'_>,
) -> Result<Reply, SenderError> {
    let body = read_frame(rx, REPLY, None).await.map_err(|e| match e {
        // The receiver speaks another version: it answered in its own (a receiver of this
        // release or later would have answered in ours), see proto::frame.
        ReadError::Frame(FrameError::Version { theirs, .. }) => SenderError::Refused {
            name: fail.name.to_string(),
            refusal: Refusal::UnsupportedVersion {
                receiver: theirs,
                sender: PROTOCOL_VERSION,
            },
        },
        ReadError::Frame(f) => SenderError::BadReply(f, fail.receiver.to_string()),
        ReadError::Io(e) => match connection_lost(&e) {
            Some(c) => fail.conn(c),
            None => fail.lost(format!("reading the reply: {e}")),
        },
        e @ (ReadError::Ended | ReadError::Deadline) => {
            fail.lost(format!("the receiver's reply stream {e}"))
        }
    })?;
    Reply::decode_body(&body).map_err(|f| SenderError::BadReply(f, fail.receiver.to_string()))
}

/// How a transfer's stream failures are reported: which receiver, which file.
pub(crate) struct Failures<'a> {
    pub(crate) receiver: &'a str,
    pub(crate) server_name: &'a str,
    pub(crate) name: &'a str,
}

impl Failures<'_> {
    pub(crate) fn lost(&self, detail: String) -> SenderError {
        SenderError::ConnectionLost {
            addr: self.receiver.to_string(),
            name: self.name.to_string(),
            detail,
        }
    }

    /// In TLS 1.3 the server judges our certificate after we think the handshake is done: a
    /// rejection shows up as the connection closing on the first stream operation.
    pub(crate) fn conn(&self, e: quinn::ConnectionError) -> SenderError {
        match walship_common::sys::quic::tls_failure(&e) {
            Some(_) => handshake_error(self.receiver, self.server_name, e),
            None => self.lost(e.to_string()),
        }
    }

    pub(crate) fn write(&self, e: quinn::WriteError) -> SenderError {
        match e {
            quinn::WriteError::ConnectionLost(c) => self.conn(c),
            e => self.lost(e.to_string()),
        }
    }
}

/// The connection error under a failed stream read, if the connection is what failed.
pub(crate) fn connection_lost(e: &std::io::Error) -> Option<quinn::ConnectionError> {
    match e.get_ref()?.downcast_ref::<quinn::ReadError>()? {
        quinn::ReadError::ConnectionLost(c) => Some(c.clone()),
        _ => None,
    }
}

/// Read `path` once through `outgoing`: hash, encode, and hand wire chunks to the sender task,
/// then the end of the encoding and the digest trailer (blocking). Hashing runs on its own
/// thread beside compression, so a 16 MiB segment costs the slower of the two, not their sum.
fn produce(
    path: &Path,
    mut outgoing: Outgoing,
    out: &tokio::sync::mpsc::Sender<Result<Vec<u8>, SenderError>>,
    compress_ns: &AtomicU64,
) -> Result<(), SenderError> {
    let timed = |started: Instant| {
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        compress_ns.fetch_add(ns, Ordering::Relaxed);
    };
    let read_err = |source| SenderError::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    let encode_err = |source| SenderError::Encode {
        path: path.to_path_buf(),
        source,
    };
    let hashing = |detail: &str| SenderError::TaskFailed {
        what: "hashing",
        detail: detail.to_string(),
    };
    let size = outgoing.request().size;
    let mut file = std::fs::File::open(path).map_err(read_err)?.take(size);
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
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = read_full(&mut file, &mut buf).map_err(read_err)?;
            let mut wire = Vec::new();
            if n == 0 {
                drop(to_hasher);
                let digest = hasher.join().map_err(|_| hashing("the thread panicked"))?;
                let started = Instant::now();
                outgoing.finish(digest, &mut wire).map_err(encode_err)?;
                timed(started);
                // If the sender task has stopped, the receiver answered early: nothing to do.
                let _ = out.blocking_send(Ok(wire));
                return Ok(());
            }
            buf.truncate(n);
            let chunk = Arc::new(buf);
            to_hasher
                .send(chunk.clone())
                .map_err(|_| hashing("the thread stopped"))?;
            let started = Instant::now();
            outgoing.encode(&chunk, &mut wire).map_err(encode_err)?;
            timed(started);
            if !wire.is_empty() && out.blocking_send(Ok(wire)).is_err() {
                return Ok(()); // the sender task stopped: the receiver answered early
            }
        }
    })
}

/// Fill `buf` unless the file ends first; the number of bytes read.
pub(crate) fn read_full(file: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
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

/// Turn a handshake-time failure into advice: which side refused which certificate, and the
/// setting to check. Classified by who closed and with which TLS alert, not by the error text.
pub fn handshake_error(addr: &str, server_name: &str, e: quinn::ConnectionError) -> SenderError {
    let text = e.to_string();
    let detail = match walship_common::sys::quic::tls_failure(&e) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_lz4_upload_says_what_to_do_and_nothing_else_changes() {
        let malformed = || Refusal::Malformed {
            reason: "unknown variant".into(),
        };
        match with_lz4_hint(malformed(), Encoding::Lz4) {
            Refusal::Malformed { reason } => {
                assert!(reason.starts_with("unknown variant ("), "{reason}");
                assert!(reason.contains("upgrade walship-receiver"), "{reason}");
                assert!(reason.contains("compression = \"zstd\""), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(with_lz4_hint(malformed(), Encoding::Zstd), malformed());
        let other = Refusal::ClientNotAllowed {
            subject: "CN=x".into(),
        };
        assert_eq!(with_lz4_hint(other.clone(), Encoding::Lz4), other);
    }
}
