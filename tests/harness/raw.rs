//! A raw walship client: QUIC with mutual TLS, speaking the wire protocol byte by byte, so that
//! tests can send what `walship-sender` never would (bad magic, another version, lying sizes,
//! wrong digests, names with `/`) and see the receiver's exact reply.
//!
//! The protocol (common/src/proto/frame.rs): ALPN `walship/1`, one bidirectional stream per file;
//! the client writes a frame (10-byte preamble `WSHP`, u16 BE version, u32 BE body length, then a
//! bincode body) holding a [`Request`], then the content (`size` plain bytes, in the request's
//! encoding), then the 32-byte digest of the plain bytes, then finishes its side; the receiver
//! answers one [`Reply`] frame. The client reads replies of any version, as a sender of that
//! version would (the layout of a refusal is the same since protocol 1).
//!
//! The client owns a small multi-threaded tokio runtime, so the connection keeps being driven
//! (acknowledgements, keep-alives, flow control) while the test thread sleeps or polls files.
//! Its methods block; [`RawClient::runtime`] and [`RawClient::connection`] are there for tests that
//! need many streams at once.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use tokio::runtime::{Handle, Runtime};
use walship_common::proto::digest::digest;
use walship_common::proto::frame::{MAGIC, MAX_REPLY_BYTES, PREAMBLE_LEN};
use walship_common::proto::{Reply, Request, ALPN};

use crate::certs::{CertSet, SERVER_NAME};

/// How long a raw client waits for the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default QUIC idle timeout of a raw connection; keep-alives are sent at a third of it.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(5);
/// Default wait for a reply frame.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// How a stream ended, from the client's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The receiver answered with a well-formed reply frame.
    Reply(Reply),
    /// The stream or the connection ended without a reply (reset, finished early, closed,
    /// timed out at the QUIC level); the text says how.
    Ended(String),
    /// Nothing happened within the wait.
    NoAnswer(Duration),
}

impl StreamEnd {
    /// The reply, or a panic naming what came instead.
    pub fn reply(self) -> Reply {
        match self {
            StreamEnd::Reply(r) => r,
            other => panic!("expected a reply frame from the receiver, got {other:?}"),
        }
    }
}

/// One QUIC connection to a receiver, with blocking helpers.
pub struct RawClient {
    rt: Runtime,
    endpoint: Endpoint,
    conn: Connection,
}

impl RawClient {
    /// Connect to `addr` as the sender of `certs` would (trust `ca.pem`, present the client
    /// certificate); panics if the handshake fails.
    pub fn connect(addr: &str, certs: &CertSet) -> RawClient {
        let tls = client_tls(&certs.ca(), &certs.client_cert(), &certs.client_key());
        RawClient::connect_with(addr, tls, DEFAULT_IDLE)
            .unwrap_or_else(|e| panic!("raw client: connect to {addr}: {e}"))
    }

    /// Connect with any TLS configuration (ALPN must be set by the caller) and QUIC idle timeout.
    /// In TLS 1.3 the server judges the client certificate after the client considers the
    /// handshake done: a rejected certificate shows up on the first stream, not here.
    pub fn connect_with(
        addr: &str,
        tls: rustls::ClientConfig,
        idle: Duration,
    ) -> Result<RawClient, String> {
        let addr: SocketAddr = addr.parse().map_err(|e| format!("address {addr}: {e}"))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let (endpoint, conn) = rt.block_on(async {
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
                .map_err(|e| format!("QUIC TLS config: {e}"))?;
            let mut config = quinn::ClientConfig::new(Arc::new(crypto));
            let mut transport = quinn::TransportConfig::default();
            transport.max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(idle).map_err(|e| e.to_string())?,
            ));
            transport.keep_alive_interval(Some(idle / 3));
            config.transport_config(Arc::new(transport));
            let mut endpoint = Endpoint::client("127.0.0.1:0".parse().expect("literal"))
                .map_err(|e| format!("bind UDP: {e}"))?;
            endpoint.set_default_client_config(config);
            let connecting = endpoint
                .connect(addr, SERVER_NAME)
                .map_err(|e| format!("connect: {e}"))?;
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
                .await
                .map_err(|_| format!("no handshake within {CONNECT_TIMEOUT:?}"))?
                .map_err(|e| format!("handshake: {e}"))?;
            Ok::<_, String>((endpoint, conn))
        })?;
        Ok(RawClient { rt, endpoint, conn })
    }

    /// Open a stream. Nothing reaches the receiver until the first byte is written.
    pub fn open(&self) -> Result<RawStream, String> {
        let (send, recv) = self
            .rt
            .block_on(self.conn.open_bi())
            .map_err(|e| format!("open stream: {e}"))?;
        Ok(RawStream {
            rt: self.rt.handle().clone(),
            send,
            recv,
        })
    }

    /// Send `bytes` on a new stream, finish it and wait for the reply.
    pub fn exchange(&self, bytes: &[u8]) -> StreamEnd {
        let mut s = match self.open() {
            Ok(s) => s,
            Err(e) => return StreamEnd::Ended(e),
        };
        // A receiver that refused early stops reading: the rest of the write fails, the reply
        // is still there to read.
        let _ = s.write(bytes);
        s.finish();
        s.reply(REPLY_TIMEOUT)
    }

    /// Send `request`'s frame, `content` as plain bytes (which may disagree with the request)
    /// and its honest digest trailer, then finish.
    pub fn upload(&self, request: &Request, content: &[u8]) -> StreamEnd {
        self.upload_wire(request, &with_trailer(content, content))
    }

    /// Send `request`'s frame followed by exactly `wire` (content and trailer as the test
    /// makes them), then finish.
    pub fn upload_wire(&self, request: &Request, wire: &[u8]) -> StreamEnd {
        let mut bytes = request.encode();
        bytes.extend_from_slice(wire);
        self.exchange(&bytes)
    }

    /// Close the connection (CONNECTION_CLOSE with code 0) and let it reach the peer.
    pub fn close(self) {
        self.conn.close(VarInt::from_u32(0), b"raw client done");
        let endpoint = &self.endpoint;
        self.rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        });
    }

    /// Wait until the connection is closed (by the peer, an idle timeout or a reset); returns
    /// why, or None if it is still open after `within`.
    pub fn closed_within(&self, within: Duration) -> Option<String> {
        let conn = &self.conn;
        self.rt
            .block_on(async { tokio::time::timeout(within, conn.closed()).await })
            .ok()
            .map(|e| e.to_string())
    }

    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// One stream of a [`RawClient`].
pub struct RawStream {
    rt: Handle,
    send: SendStream,
    recv: RecvStream,
}

impl RawStream {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.rt
            .block_on(self.send.write_all(bytes))
            .map_err(|e| e.to_string())
    }

    /// Finish our side (the receiver sees the end of the content).
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// Abort our side (RESET_STREAM with code 0) and stop reading.
    pub fn reset(&mut self) {
        let _ = self.send.reset(VarInt::from_u32(0));
        let _ = self.recv.stop(VarInt::from_u32(0));
    }

    /// Wait up to `within` for the reply frame.
    pub fn reply(&mut self, within: Duration) -> StreamEnd {
        self.versioned_reply(within).1
    }

    /// Wait up to `within` for the reply frame; also the protocol version its preamble carries.
    pub fn versioned_reply(&mut self, within: Duration) -> (Option<u16>, StreamEnd) {
        let recv = &mut self.recv;
        match self
            .rt
            .block_on(async { tokio::time::timeout(within, read_versioned_reply(recv)).await })
        {
            Err(_) => (None, StreamEnd::NoAnswer(within)),
            Ok(end) => end,
        }
    }
}

/// Read one reply frame from `recv`.
pub async fn read_reply(recv: &mut RecvStream) -> StreamEnd {
    read_versioned_reply(recv).await.1
}

/// Read one reply frame of any protocol version from `recv`: the version in its preamble, and
/// the reply (decoded as this release's `Reply`, whose refusals encode as in every version).
pub async fn read_versioned_reply(recv: &mut RecvStream) -> (Option<u16>, StreamEnd) {
    let mut pre = [0u8; PREAMBLE_LEN];
    if let Err(e) = recv.read_exact(&mut pre).await {
        return (None, StreamEnd::Ended(e.to_string()));
    }
    assert_eq!(
        pre[..4],
        MAGIC,
        "the receiver sent a reply with a bad magic: {pre:02x?}"
    );
    let version = u16::from_be_bytes([pre[4], pre[5]]);
    let len = u32::from_be_bytes([pre[6], pre[7], pre[8], pre[9]]) as usize;
    assert!(
        len <= MAX_REPLY_BYTES,
        "the receiver sent a reply of {len} bytes"
    );
    let mut body = vec![0u8; len];
    if let Err(e) = recv.read_exact(&mut body).await {
        return (Some(version), StreamEnd::Ended(format!("reply body: {e}")));
    }
    match Reply::decode_body(&body) {
        Ok(r) => (Some(version), StreamEnd::Reply(r)),
        Err(e) => panic!("the receiver sent an undecodable reply: {e}"),
    }
}

/// The sender's TLS configuration (as `walship-sender` builds it), from PEM files.
pub fn client_tls(ca: &Path, cert: &Path, key: &Path) -> rustls::ClientConfig {
    walship_common::sys::tls::client_config(ca, cert, key)
        .unwrap_or_else(|e| panic!("raw client TLS configuration: {e}"))
}

/// A TLS configuration trusting `ca` but presenting no client certificate.
pub fn client_tls_without_cert(ca: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in walship_common::sys::tls::load_certs("CA", ca).expect("load CA") {
        roots.add(cert).expect("add CA to roots");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3 with ring")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    config
}

/// A preamble with any magic, version and body length.
pub fn preamble(magic: [u8; 4], version: u16, len: u32) -> Vec<u8> {
    let mut out = magic.to_vec();
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out
}

/// A request frame with its preamble rewritten to `version` (the body is left as is).
pub fn request_with_version(request: &Request, version: u16) -> Vec<u8> {
    let mut bytes = request.encode();
    bytes[4..6].copy_from_slice(&version.to_be_bytes());
    bytes
}

/// The request walship-sender would send for `content` under `name` (plain encoding).
pub fn honest_request(name: &str, content: &[u8]) -> Request {
    Request {
        name: name.to_string(),
        size: content.len() as u64,
        encoding: walship_common::proto::Encoding::Plain,
        dropped: Vec::new(),
        append_at: None,
    }
}

/// `wire` followed by the digest trailer of `plain`.
pub fn with_trailer(wire: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut out = wire.to_vec();
    out.extend_from_slice(&digest(plain));
    out
}
