//! Everything between a file's bytes and the wire, on the sender: the request frame, the
//! content in its encoding and the digest trailer, laid out as [`crate::proto::incoming`]
//! expects them. Pure: the driver reads the file, hands plain bytes to [`Outgoing::encode`] and
//! writes what comes out; it computes the digest with [`crate::proto::digest::Hasher`] where
//! it likes (`push` hashes on a thread of its own, beside compression) and hands it to
//! [`Outgoing::finish`].
//!
//! ```text
//! stream = Request frame ++ wire bytes (encoding of `size` plain bytes) ++ digest (32 bytes)
//! ```

use crate::proto::digest::Digest;
use crate::proto::encoding::BodyEncoder;
use crate::proto::frame::Request;

/// Why the content could not be laid out.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("zstd encoder: {0}")]
    Zstd(#[from] std::io::Error),
    /// PostgreSQL never shortens a finished segment; someone else did.
    #[error("the file shrank from {announced} to {read} bytes while it was read")]
    Shrank { announced: u64, read: u64 },
    #[error("the file grew past the {announced} bytes announced while it was read")]
    Grew { announced: u64 },
}

/// One upload on its way out.
pub struct Outgoing {
    request: Request,
    encoder: BodyEncoder,
    read: u64,
}

impl Outgoing {
    /// `level`: the zstd level, when the request's encoding is zstd.
    pub fn new(request: Request, level: i32) -> Result<Self, EncodeError> {
        Self::with_threads(request, level, 1)
    }

    /// As [`Outgoing::new`], compressing on `threads` threads (see
    /// [`BodyEncoder::with_threads`]); the stream is the same.
    pub fn with_threads(request: Request, level: i32, threads: u32) -> Result<Self, EncodeError> {
        let encoder = BodyEncoder::with_threads(request.encoding, level, request.size, threads)?;
        Ok(Outgoing {
            request,
            encoder,
            read: 0,
        })
    }

    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The request frame, sent first.
    pub fn header(&self) -> Vec<u8> {
        self.request.encode()
    }

    /// The next plain bytes of the file; appends the wire bytes to send to `wire`.
    pub fn encode(&mut self, plain: &[u8], wire: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.read += plain.len() as u64;
        if self.read > self.request.size {
            return Err(EncodeError::Grew {
                announced: self.request.size,
            });
        }
        Ok(self.encoder.encode(plain, wire)?)
    }

    /// After the last plain bytes: the end of the encoding and the trailer carrying `digest`
    /// (of the plain bytes), appended to `wire`.
    pub fn finish(mut self, digest: Digest, wire: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.read != self.request.size {
            return Err(EncodeError::Shrank {
                announced: self.request.size,
                read: self.read,
            });
        }
        self.encoder.finish(wire)?;
        wire.extend_from_slice(&digest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::digest::digest;
    use crate::proto::frame::{decode_frame, MAX_HEADER_BYTES, TRAILER_LEN};
    use crate::proto::Encoding;

    fn request(size: u64) -> Request {
        Request {
            name: "000000010000000000000003".into(),
            size,
            encoding: Encoding::Plain,
            dropped: Vec::new(),
            append_at: None,
        }
    }

    #[test]
    fn lays_out_header_content_and_trailer() {
        let body = b"plain bytes of a file".to_vec();
        let mut out = Outgoing::new(request(body.len() as u64), 1).unwrap();
        assert_eq!(
            decode_frame::<crate::proto::WireRequest>(&out.header(), MAX_HEADER_BYTES).unwrap(),
            crate::proto::WireRequest::Wal(request(body.len() as u64))
        );
        let mut wire = Vec::new();
        out.encode(&body[..5], &mut wire).unwrap();
        out.encode(&body[5..], &mut wire).unwrap();
        out.finish(digest(&body), &mut wire).unwrap();
        assert_eq!(&wire[..body.len()], &body[..]);
        assert_eq!(&wire[body.len()..], &digest(&body));
        assert_eq!(wire.len(), body.len() + TRAILER_LEN);
    }

    #[test]
    fn a_file_that_changes_size_while_read_is_not_sent_whole() {
        let mut out = Outgoing::new(request(10), 1).unwrap();
        let mut wire = Vec::new();
        out.encode(&[0; 4], &mut wire).unwrap();
        let err = out.finish([0; 32], &mut wire).unwrap_err();
        assert!(err.to_string().contains("shrank from 10 to 4"), "{err}");
        let mut out = Outgoing::new(request(3), 1).unwrap();
        assert!(matches!(
            out.encode(&[0; 4], &mut wire),
            Err(EncodeError::Grew { announced: 3 })
        ));
    }
}
