//! Shared by the in-process receiver tests: a receiver (`serve::run_with` on 127.0.0.1:0) with
//! certificates made per test, the real sender client (`walship_sender::push`) pointed at it,
//! synthetic WAL segments, and a raw QUIC client for peers that misbehave on purpose.
//!
//! Everything is real: files in a temp directory, QUIC with mutual TLS on loopback.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use walship_common::proto::frame::{decode_preamble, MAX_REPLY_BYTES, PREAMBLE_LEN};
use walship_common::proto::{Refusal, Reply, Request};
use walship_common::sys::config::{ReceiverSettings, SenderSettings};
use walship_common::sys::durable::TEMP_PREFIX;
use walship_common::sys::tls;
use walship_receiver::certs::{CertSet, Validity};
use walship_receiver::error::ReceiverError;
use walship_receiver::serve;
use walship_sender::error::SenderError;
use walship_sender::push::{self, Pushed};

/// Server name in the receiver's certificate; the sender connects to 127.0.0.1 under it.
pub const SERVER_NAME: &str = "localhost";
/// Segment size of the synthetic segments: the smallest PostgreSQL allows, to keep tests fast.
pub const SEG: u64 = 1 << 20;
/// The cluster most tests push segments of.
pub const HOME: u64 = 0x5741_4c53_4849_5031;
/// Another cluster.
pub const FOREIGN: u64 = 0x0f0f_0f0f_0f0f_0f0f;
/// How long a receiver may take to stop once its token is cancelled (its grace is 10 s).
pub const STOP_WITHIN: Duration = Duration::from_secs(30);

/// A test directory: certificates, `receiver.toml` (listen on port 0) and the archive.
pub struct Setup {
    root: PathBuf,
    /// Removes the directory when the test ends (`None` for one opened by a child process).
    _owned: Option<tempfile::TempDir>,
}

impl Setup {
    /// Certificates and a receiver config with `extra` appended (limits and the like).
    pub fn new(extra: &str) -> Setup {
        let owned = tempfile::tempdir().expect("temp dir");
        let root = owned.path().to_path_buf();
        CertSet::generate(SERVER_NAME, Validity::ten_years())
            .expect("generate certificates")
            .write(&root.join("certs"))
            .expect("write certificates");
        let config = format!(
            "listen = \"127.0.0.1:0\"\narchive_dir = \"archive\"\ncert = \"certs/server.pem\"\n\
             key = \"certs/server.key\"\nclient_ca = \"certs/ca.pem\"\n{extra}\n"
        );
        fs::write(root.join("receiver.toml"), config).expect("write receiver.toml");
        Setup {
            root,
            _owned: Some(owned),
        }
    }

    /// A directory made by [`Setup::new`] elsewhere (in the parent of a child process).
    pub fn open(root: &Path) -> Setup {
        Setup {
            root: root.to_path_buf(),
            _owned: None,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn archive(&self) -> PathBuf {
        self.path("archive")
    }

    pub fn receiver_settings(&self) -> ReceiverSettings {
        ReceiverSettings::load(&self.path("receiver.toml")).expect("load receiver.toml")
    }

    /// Sender settings for the receiver at `addr` (`extra` appended to sender.toml; the
    /// timeouts are 5 s to connect and 60 s per push unless `extra` sets them).
    pub fn sender_settings(&self, addr: SocketAddr, extra: &str) -> SenderSettings {
        let mut config = format!(
            "receiver = \"{addr}\"\nserver_name = \"{SERVER_NAME}\"\nca = \"certs/ca.pem\"\n\
             cert = \"certs/client.pem\"\nkey = \"certs/client.key\"\n{extra}\n"
        );
        for (key, value) in [("connect_timeout", "5s"), ("timeout", "60s")] {
            if !extra.lines().any(|l| l.starts_with(&format!("{key} "))) {
                config.push_str(&format!("{key} = \"{value}\"\n"));
            }
        }
        let path = self.path("sender.toml");
        fs::write(&path, config).expect("write sender.toml");
        SenderSettings::load(&path).expect("load sender.toml")
    }

    /// Write `body` as a file to push (outside the archive) and return its path.
    pub fn file(&self, rel: &str, body: &[u8]) -> PathBuf {
        let path = self.path(rel);
        fs::write(&path, body).expect("write file to push");
        path
    }

    /// The archive's WAL file names (state files and temp files left out), sorted.
    pub fn archived(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.archive())
            .expect("list archive")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.') && !n.starts_with("walship."))
            .collect();
        names.sort();
        names
    }

    /// Temp files (`.walship-tmp.*`) in the archive.
    pub fn leftovers(&self) -> Vec<String> {
        temp_files(&self.archive())
    }

    /// The archive holds `name` with exactly `body`.
    pub fn assert_stored(&self, name: &str, body: &[u8]) {
        let stored = fs::read(self.archive().join(name))
            .unwrap_or_else(|e| panic!("{name} not in the archive ({e}): {:?}", self.archived()));
        assert!(
            stored == body,
            "{name} in the archive differs from what was pushed ({} bytes stored, {} pushed)",
            stored.len(),
            body.len()
        );
    }
}

/// Temp files (`.walship-tmp.*`) in `dir`.
pub fn temp_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(TEMP_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

/// A receiver running in this process.
pub struct Served {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), ReceiverError>>>,
}

impl Served {
    /// Start `serve` and wait until it listens.
    pub async fn start(settings: ReceiverSettings) -> Served {
        let shutdown = CancellationToken::new();
        let (ready, bound) = oneshot::channel();
        let handle = tokio::spawn(serve::run_with(settings, shutdown.clone(), ready));
        match bound.await {
            Ok(addr) => Served {
                addr,
                shutdown,
                handle: Some(handle),
            },
            Err(_) => panic!("serve stopped before listening: {:?}", handle.await),
        }
    }

    /// Cancel the token and wait for `run` to return (within [`STOP_WITHIN`]).
    pub async fn stop(mut self) -> Result<(), ReceiverError> {
        self.shutdown.cancel();
        self.join().await
    }

    /// Wait for `run` to return (within [`STOP_WITHIN`]), the token being cancelled already.
    pub async fn join(&mut self) -> Result<(), ReceiverError> {
        let handle = self.handle.take().expect("joined once");
        tokio::time::timeout(STOP_WITHIN, handle)
            .await
            .unwrap_or_else(|_| panic!("serve did not return within {STOP_WITHIN:?} of shutdown"))
            .expect("serve task panicked")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // A failed test must not leave a listener behind in the runtime.
        self.shutdown.cancel();
    }
}

/// Push `path` as `name` with the real sender client, as `walship-sender push` does.
pub async fn push(
    settings: &SenderSettings,
    path: &Path,
    name: &str,
) -> Result<Pushed, SenderError> {
    push::push(settings, path, name).await
}

/// The refusal in a sender error, or a panic naming what came back instead.
pub fn refusal<T: std::fmt::Debug>(result: Result<T, SenderError>) -> Refusal {
    match result {
        Err(SenderError::Refused { refusal, .. }) => refusal,
        other => panic!("expected a refusal from the receiver, got {other:?}"),
    }
}

/// An error after which PostgreSQL's retry of `push` can succeed: the receiver went away or is
/// stopping; never a verdict on the content.
pub fn is_retryable(e: &SenderError) -> bool {
    let kind = matches!(
        e,
        SenderError::ConnectionLost { .. }
            | SenderError::ReceiverUnreachable { .. }
            | SenderError::ReplyTimeout { .. }
            | SenderError::NoReply { .. }
            | SenderError::NotTaken { .. }
            | SenderError::NoSendingSlot { .. }
            | SenderError::Refused {
                refusal: Refusal::ShuttingDown,
                ..
            }
    );
    kind && e.to_string().contains("PostgreSQL will retry")
}

/// A synthetic segment of `SEG` bytes: a PostgreSQL 15 long page header for segment `segno` of
/// timeline `tli` and cluster `sysid`, then bytes that depend on `seed` (so two versions of a
/// segment can differ in content only).
pub fn segment(tli: u32, segno: u64, sysid: u64, seed: u64) -> (String, Vec<u8>) {
    segment_of_size(tli, segno, sysid, seed, SEG)
}

/// [`segment`] with another segment size (a power of two from 1 MiB to 1 GiB).
pub fn segment_of_size(
    tli: u32,
    segno: u64,
    sysid: u64,
    seed: u64,
    size: u64,
) -> (String, Vec<u8>) {
    let per_log = 0x1_0000_0000 / size;
    let name = format!("{tli:08X}{:08X}{:08X}", segno / per_log, segno % per_log);
    let mut body = filler(size as usize, seed ^ segno ^ sysid);
    body[0..2].copy_from_slice(&0xD110u16.to_le_bytes()); // PostgreSQL 15 magic
    body[2..4].copy_from_slice(&0x0002u16.to_le_bytes()); // XLP_LONG_HEADER
    body[4..8].copy_from_slice(&tli.to_le_bytes());
    body[8..16].copy_from_slice(&(segno * size).to_le_bytes()); // page address
    body[16..24].fill(0); // rem_len and padding
    body[24..32].copy_from_slice(&sysid.to_le_bytes());
    body[32..36].copy_from_slice(&(size as u32).to_le_bytes());
    body[36..40].copy_from_slice(&8192u32.to_le_bytes());
    (name, body)
}

/// Compressible but not constant bytes (half the words repeat), from a small LCG.
fn filler(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let word = if state & 0x100 == 0 { 0 } else { state >> 11 };
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A raw QUIC client with the sender's certificate: for peers that stall or lie on purpose.
pub struct RawClient {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
}

impl RawClient {
    pub async fn connect(setup: &Setup, addr: SocketAddr) -> RawClient {
        let tls = tls::client_config(
            &setup.path("certs/ca.pem"),
            &setup.path("certs/client.pem"),
            &setup.path("certs/client.key"),
        )
        .expect("client TLS config");
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC client crypto");
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("address")).expect("bind UDP");
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        // Alive but silent: keep-alives hold the connection open while the stream stalls.
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_millis(200)));
        config.transport_config(Arc::new(transport));
        endpoint.set_default_client_config(config);
        let conn = endpoint
            .connect(addr, SERVER_NAME)
            .expect("connect")
            .await
            .expect("handshake");
        RawClient { endpoint, conn }
    }

    /// Open a stream and send the request header for `name` (`size` bytes, digest in a
    /// trailer) followed by `content`, without finishing the stream.
    pub async fn begin(
        &self,
        name: &str,
        size: u64,
        content: &[u8],
    ) -> (quinn::SendStream, quinn::RecvStream) {
        let (mut tx, rx) = self.conn.open_bi().await.expect("open stream");
        let request = Request {
            name: name.to_string(),
            size,
            encoding: walship_common::proto::Encoding::Plain,
            dropped: Vec::new(),
            append_at: None,
        };
        tx.write_all(&request.encode()).await.expect("send header");
        tx.write_all(content).await.expect("send content");
        (tx, rx)
    }
}

/// Read the receiver's one reply on a stream; `Err` says how the stream ended without one.
pub async fn read_reply(rx: &mut quinn::RecvStream) -> Result<Reply, String> {
    let mut pre = [0u8; PREAMBLE_LEN];
    rx.read_exact(&mut pre).await.map_err(|e| e.to_string())?;
    let len = decode_preamble(&pre, MAX_REPLY_BYTES).expect("reply preamble decodes");
    let mut body = vec![0u8; len];
    rx.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    Ok(Reply::decode_body(&body).expect("reply decodes"))
}

/// Poll `probe` every 2 ms until it holds or `within` runs out; whether it held.
pub async fn wait_until(within: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if probe() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    probe()
}
