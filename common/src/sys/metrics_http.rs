//! The plain-HTTP metrics endpoint (`metrics_listen`) of `serve` and the daemon, built so that
//! it cannot hurt the program it reports on: at most [`MAX_CLIENTS`] connections at once (more
//! wait in the kernel's backlog), a request head of at most `http::MAX_HEAD` bytes, and one
//! [`DEADLINE`] for reading the request and writing the answer; then the connection closes.
//! What to answer is `crate::http`'s; the exposition text is the caller's `render`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::http::{self, Route};

/// Scrapes served at once.
pub const MAX_CLIENTS: usize = 4;
/// From accepting a connection to the last byte of the answer.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Renders the exposition text; called on the blocking pool, once per scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Bind the endpoint (TCP, plain HTTP).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serve scrapes on `listener` for ever; the caller aborts the task to stop it.
pub async fn serve(listener: TcpListener, render: Render) {
    let clients = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = clients.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                tracing::warn!("metrics endpoint: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(DEADLINE, answer(stream, render)).await {
                tracing::debug!("metrics endpoint: a client took longer than {DEADLINE:?}: {e}");
            }
            drop(permit);
        });
    }
}

/// Read one request head (bounded), answer it, close.
async fn answer(mut stream: TcpStream, render: Render) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let route = loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if let Some(route) = http::route(&head) {
            break route;
        }
    };
    let body = if route == Route::Metrics {
        match tokio::task::spawn_blocking(move || render()).await {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!("metrics endpoint: rendering failed: {e}");
                return;
            }
        }
    } else {
        String::new()
    };
    let _ = stream.write_all(&http::response(route, &body)).await;
    let _ = stream.shutdown().await;
}

/// The registry as exposition text (what [`Render`] returns).
pub fn encode(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String does not fail");
    out
}

/// A gauge counting things in progress: one more while the guard lives.
pub struct Active(&'static Gauge);

impl Active {
    pub fn new(gauge: &'static Gauge) -> Active {
        gauge.inc();
        Active(gauge)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `at` in whole seconds since the Unix epoch, for a timestamp gauge (0 before 1970).
pub fn unix_secs(at: std::time::SystemTime) -> i64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The address a `metrics_listen` endpoint is bound to, for the log line.
pub fn local(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
