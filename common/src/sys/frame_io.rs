//! The one frame reader: a preamble checked by [`FrameKind`] (magic, version, length bound),
//! then exactly the body it announces, all before a deadline the caller sets. Used for requests
//! (receiver), replies (sender) and hand-offs (daemon, and `push` through
//! [`read_frame_blocking`]).
//!
//! Generic over tokio's `AsyncRead`, which quinn's streams and tokio's Unix sockets implement;
//! the pure core does not depend on tokio, only this module does.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::time::Instant;

use crate::proto::frame::{FrameError, FrameKind, PREAMBLE_LEN};

/// Why no frame was read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer finished (or closed) before the first byte: no frame, nothing malformed.
    #[error("closed before sending anything")]
    Ended,
    /// The deadline passed before the whole frame arrived.
    #[error("no whole frame before the deadline")]
    Deadline,
    /// Reading failed, or the stream ended inside the frame (`UnexpectedEof`).
    #[error("{0}")]
    Io(io::Error),
    /// The preamble or its length is not acceptable.
    #[error("{0}")]
    Frame(FrameError),
}

/// Read one frame of `kind` from `r`, whole by `deadline` (none: as long as it takes); returns
/// its body, to decode with the frame type's `decode_body`. A peer speaking another protocol
/// version is reported as `ReadError::Frame(FrameError::Version { .. })` from its preamble,
/// before its body is read.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    kind: FrameKind,
    deadline: Option<Instant>,
) -> Result<Vec<u8>, ReadError> {
    match deadline {
        None => read(r, kind).await,
        Some(at) => tokio::time::timeout_at(at, read(r, kind))
            .await
            .unwrap_or(Err(ReadError::Deadline)),
    }
}

/// [`read_frame`] on a blocking reader, with no runtime: `push` asks the daemon this way, in
/// about a millisecond. The reader's own timeouts (`set_read_timeout`) bound the wait.
pub fn read_frame_blocking(r: &mut impl io::Read, kind: FrameKind) -> Result<Vec<u8>, ReadError> {
    let mut reader = Blocking(r);
    let mut future = std::pin::pin!(read(&mut reader, kind));
    // Every read completes within its poll, so the first poll finishes the frame.
    let waker = Waker::from(Arc::new(NoWake));
    match future.as_mut().poll(&mut Context::from_waker(&waker)) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(ReadError::Io(io::Error::other(
            "a blocking read did not complete",
        ))),
    }
}

async fn read<R: AsyncRead + Unpin>(r: &mut R, kind: FrameKind) -> Result<Vec<u8>, ReadError> {
    let mut pre = [0u8; PREAMBLE_LEN];
    let first = r.read(&mut pre).await.map_err(ReadError::Io)?;
    if first == 0 {
        return Err(ReadError::Ended);
    }
    r.read_exact(&mut pre[first..])
        .await
        .map_err(ReadError::Io)?;
    let len = kind.decode_preamble(&pre).map_err(ReadError::Frame)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(ReadError::Io)?;
    Ok(body)
}

/// A blocking reader as an `AsyncRead` whose reads are always ready.
struct Blocking<'a, R>(&'a mut R);

impl<R: io::Read> AsyncRead for Blocking<'_, R> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.0.read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Nothing waits to be woken: blocking reads never return `Pending`.
struct NoWake;

impl Wake for NoWake {
    fn wake(self: Arc<Self>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::{REPLY, REQUEST};
    use crate::proto::{Reply, Request};

    #[test]
    fn reads_exactly_one_frame_and_reports_how_others_end() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut two = Reply::Stored.encode();
            two.extend_from_slice(&Reply::AlreadyHad.encode());
            let mut r = &two[..];
            let body = read_frame(&mut r, REPLY, None).await.unwrap();
            assert_eq!(Reply::decode_body(&body).unwrap(), Reply::Stored);
            let body = read_frame(&mut r, REPLY, None).await.unwrap();
            assert_eq!(Reply::decode_body(&body).unwrap(), Reply::AlreadyHad);
            assert!(matches!(
                read_frame(&mut r, REPLY, None).await,
                Err(ReadError::Ended)
            ));

            // Another version: told from the preamble, the body never read.
            let mut newer = Reply::Stored.encode();
            newer[4..6].copy_from_slice(&9u16.to_be_bytes());
            newer[6..10].copy_from_slice(&u32::MAX.to_be_bytes());
            match read_frame(&mut &newer[..], REQUEST, None).await {
                Err(ReadError::Frame(FrameError::Version { theirs: 9, .. })) => {}
                other => panic!("{other:?}"),
            }

            // A peer that sends half a preamble and then nothing runs into the deadline.
            let (mut client, mut server) = tokio::io::duplex(64);
            tokio::io::AsyncWriteExt::write_all(&mut client, b"WSHP")
                .await
                .unwrap();
            let due = Instant::now() + std::time::Duration::from_millis(20);
            assert!(matches!(
                read_frame(&mut server, REQUEST, Some(due)).await,
                Err(ReadError::Deadline)
            ));
        });
    }

    #[test]
    fn blocking_reads_the_same_frames() {
        let request = Request {
            name: "000000010000000000000003".into(),
            size: 3,
            encoding: crate::proto::Encoding::Plain,
            dropped: Vec::new(),
            append_at: None,
        };
        let bytes = request.encode();
        let body = read_frame_blocking(&mut &bytes[..], REQUEST).unwrap();
        assert_eq!(Request::decode_body(&body).unwrap(), request);
        assert!(matches!(
            read_frame_blocking(&mut &bytes[..5], REQUEST),
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof
        ));
    }
}
