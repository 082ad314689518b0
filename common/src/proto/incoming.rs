//! Everything between the wire and a verified file, on the receiver: the bound on wire bytes,
//! the digest trailer split off the end of the stream, decoding (zstd or plain), the checks of
//! [`Upload`] (name, size, page header, cluster, history and backup content, fence) and the
//! digest. Pure: the driver reads wire bytes from its stream, hands them to
//! [`Incoming::absorb`] with a function that writes plain bytes to its temp file, and publishes
//! the file only with the [`Verified`] that [`Incoming::finish`] returns.
//!
//! ```text
//! stream = wire bytes (encoding of `size` plain bytes) ++ digest of the plain bytes (32 bytes)
//! ```

use crate::proto::digest::Digest;
use crate::proto::encoding::{max_wire_bytes, BodyDecoder, DecodeError, Encoding};
use crate::proto::frame::{Refusal, Request, TRAILER_LEN};
use crate::proto::upload::{ArchiveFacts, Upload, Verified};
use crate::wal::name::WalFileName;

impl From<DecodeError> for Refusal {
    fn from(e: DecodeError) -> Self {
        Refusal::Malformed {
            reason: e.to_string(),
        }
    }
}

/// One upload on its way in, from the request header to a verified file.
pub struct Incoming {
    upload: Upload,
    encoding: Encoding,
    /// Made at the first wire bytes, so that an upload refused (or waiting) before its content
    /// holds no decoding memory (a zstd window).
    decoder: Option<BodyDecoder>,
    trailer: TrailerSplit,
    announced: u64,
    wire: u64,
    max_wire: u64,
    plain: u64,
}

impl Incoming {
    /// Check the request before any content arrives: refuses what cannot be stored whatever the
    /// bytes (bad name, too large, fenced timeline, history while a promotion runs).
    pub fn begin(request: &Request, facts: &ArchiveFacts) -> Result<Self, Refusal> {
        let upload = Upload::begin(request, facts)?;
        Ok(Incoming {
            upload,
            encoding: request.encoding,
            decoder: None,
            trailer: TrailerSplit::default(),
            announced: request.size,
            wire: 0,
            max_wire: max_wire_bytes(request.encoding, request.size) + TRAILER_LEN as u64,
            plain: 0,
        })
    }

    pub fn name(&self) -> &WalFileName {
        self.upload.name()
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Most wire bytes this upload may take (content in its encoding, and the trailer).
    pub fn max_wire(&self) -> u64 {
        self.max_wire
    }

    /// Plain bytes handed to the writer so far.
    pub fn plain_bytes(&self) -> u64 {
        self.plain
    }

    /// Take the next wire bytes: decode them and hand the plain bytes, once checked, to `write`
    /// (in pieces of at most 256 KiB). Refuses a stream longer than the file can take in its
    /// encoding before decoding it, and content as soon as it is known to be unacceptable.
    pub fn absorb(
        &mut self,
        wire: &[u8],
        write: &mut dyn FnMut(&[u8]) -> Result<(), Refusal>,
    ) -> Result<(), Refusal> {
        self.wire += wire.len() as u64;
        if self.wire > self.max_wire {
            return Err(Refusal::SizeMismatch {
                name: self.upload.name().to_string(),
                announced: self.announced,
                received: self.wire,
            });
        }
        let decoder = match &mut self.decoder {
            Some(d) => d,
            slot @ None => slot.insert(BodyDecoder::new(self.encoding)?),
        };
        let (held, content) = self.trailer.split(wire);
        let (upload, plain) = (&mut self.upload, &mut self.plain);
        for part in [&held[..], content] {
            decoder.decode::<Refusal>(part, &mut |bytes| {
                upload.feed(bytes)?;
                write(bytes)?;
                *plain += bytes.len() as u64;
                Ok(())
            })?;
        }
        Ok(())
    }

    /// The verdict once the stream has ended: the encoding complete, the size and the trailer's
    /// digest right, the content acceptable.
    pub fn finish(self) -> Result<Verified, Refusal> {
        if let Some(decoder) = &self.decoder {
            decoder.finish()?;
        }
        self.upload.finish(self.trailer.trailer())
    }
}

/// Splits a stream into its content and the [`TRAILER_LEN`] bytes at its very end, without
/// knowing where the end is until the stream finishes: the last bytes seen are held back until
/// more arrive.
#[derive(Debug, Default)]
pub struct TrailerSplit {
    held: Vec<u8>,
}

impl TrailerSplit {
    /// The content in `chunk` and the bytes held back before it, in order: first the returned
    /// vector (at most a trailer's length), then the returned slice of `chunk`.
    pub fn split<'a>(&mut self, chunk: &'a [u8]) -> (Vec<u8>, &'a [u8]) {
        if chunk.len() >= TRAILER_LEN {
            let (content, tail) = chunk.split_at(chunk.len() - TRAILER_LEN);
            let released = std::mem::replace(&mut self.held, tail.to_vec());
            (released, content)
        } else {
            let mut all = std::mem::take(&mut self.held);
            all.extend_from_slice(chunk);
            self.held = all.split_off(all.len().saturating_sub(TRAILER_LEN));
            (all, &[])
        }
    }

    /// The trailer, once the stream ended: `None` when it was shorter than a trailer.
    pub fn trailer(self) -> Option<Digest> {
        self.held.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::digest::digest;
    use crate::proto::outgoing::Outgoing;

    const HISTORY: &[u8] = b"1\t0/3000000\tno recovery target specified\n";

    fn request(encoding: Encoding, body: &[u8]) -> Request {
        Request {
            name: "00000002.history".into(),
            size: body.len() as u64,
            encoding,
            dropped: Vec::new(),
            append_at: None,
        }
    }

    /// The whole stream `Outgoing` produces for `body`.
    fn stream(encoding: Encoding, body: &[u8]) -> Vec<u8> {
        let mut out = Outgoing::new(request(encoding, body), 1).unwrap();
        let mut wire = Vec::new();
        out.encode(body, &mut wire).unwrap();
        out.finish(digest(body), &mut wire).unwrap();
        wire
    }

    /// Absorb `wire` in `chunk`-byte pieces; the verdict and the plain bytes written.
    fn receive(req: &Request, wire: &[u8], chunk: usize) -> (Result<Verified, Refusal>, Vec<u8>) {
        let mut written = Vec::new();
        let result = (|| {
            let mut incoming = Incoming::begin(req, &ArchiveFacts::default())?;
            for piece in wire.chunks(chunk) {
                incoming.absorb(piece, &mut |p| {
                    written.extend_from_slice(p);
                    Ok(())
                })?;
            }
            assert_eq!(incoming.plain_bytes(), written.len() as u64);
            incoming.finish()
        })();
        (result, written)
    }

    #[test]
    fn what_outgoing_sends_incoming_verifies_in_any_chunking() {
        for encoding in [Encoding::Plain, Encoding::Zstd, Encoding::Lz4] {
            let wire = stream(encoding, HISTORY);
            for chunk in [1, 7, 31, 32, 33, 1 << 16] {
                let (verdict, written) = receive(&request(encoding, HISTORY), &wire, chunk);
                let v = verdict.unwrap_or_else(|r| panic!("{encoding:?}/{chunk}: {r}"));
                assert_eq!(v.digest, digest(HISTORY));
                assert_eq!(written, HISTORY, "{encoding:?}/{chunk}");
            }
        }
    }

    #[test]
    fn padding_a_missing_trailer_and_a_wrong_digest_are_refused() {
        let req = request(Encoding::Plain, HISTORY);
        // More wire bytes than the content and the trailer: refused before decoding.
        let mut padded = stream(Encoding::Plain, HISTORY);
        padded.push(0);
        let (verdict, written) = receive(&req, &padded, 1 << 16);
        assert!(
            matches!(verdict, Err(Refusal::SizeMismatch { received, .. }) if received == padded.len() as u64)
        );
        assert!(written.is_empty());
        // The content without its trailer: its last 32 bytes are taken for one.
        let (verdict, _) = receive(&req, HISTORY, 5);
        assert!(
            matches!(verdict, Err(Refusal::SizeMismatch { .. })),
            "{verdict:?}"
        );
        // Another digest.
        let mut wire = HISTORY.to_vec();
        wire.extend_from_slice(&[7; 32]);
        let (verdict, _) = receive(&req, &wire, 5);
        assert!(
            matches!(verdict, Err(Refusal::ChecksumMismatch { .. })),
            "{verdict:?}"
        );
    }

    #[test]
    fn a_broken_zstd_stream_is_malformed() {
        let req = request(Encoding::Zstd, HISTORY);
        let wire = stream(Encoding::Zstd, HISTORY);
        // Cut in the middle of the frame (the trailer still 32 bytes at the end).
        let mut cut = wire[..wire.len() - TRAILER_LEN - 3].to_vec();
        cut.extend_from_slice(&digest(HISTORY));
        let (verdict, _) = receive(&req, &cut, 1 << 16);
        match verdict {
            Err(Refusal::Malformed { reason }) => assert!(reason.contains("middle"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let mut garbage = vec![0x5a; 64];
        garbage.extend_from_slice(&digest(HISTORY));
        let (verdict, _) = receive(&req, &garbage, 1 << 16);
        assert!(
            matches!(verdict, Err(Refusal::Malformed { reason }) if reason.contains("compressed stream"))
        );
    }

    #[test]
    fn trailer_split_finds_the_last_bytes_whatever_the_chunking() {
        let stream: Vec<u8> = (0..200u8).collect();
        for size in [1, 5, 31, 32, 33, 64, 199, 200] {
            let mut split = TrailerSplit::default();
            let mut content = Vec::new();
            for chunk in stream.chunks(size) {
                let (held, part) = split.split(chunk);
                content.extend_from_slice(&held);
                content.extend_from_slice(part);
            }
            assert_eq!(content, &stream[..168], "chunk size {size}");
            assert_eq!(split.trailer().unwrap().to_vec(), &stream[168..]);
        }
        let mut short = TrailerSplit::default();
        let _ = short.split(&[1, 2, 3]);
        assert_eq!(short.trailer(), None);
    }
}
