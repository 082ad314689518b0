//! Everything in walship-common that touches the operating system: the durable-write helper,
//! config files, TLS key and certificate files, pg_control files. The rest of the crate decides
//! on values only (enforced by `tests/pure_core.rs`); these modules read and write, then hand
//! bytes to it.

pub mod check;
pub mod config;
pub mod durable;
pub mod frame_io;
pub mod logging;
pub mod metrics_http;
pub mod notify;
pub mod pg_control;
pub mod quic;
pub mod tls;

use crate::lookahead::FileIdentity;

/// The identity of a file's bytes from its metadata (see [`FileIdentity`]).
pub fn file_identity(meta: &std::fs::Metadata) -> FileIdentity {
    use std::os::unix::fs::MetadataExt;
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    FileIdentity {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
        ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
    }
}
