//! Content encoding on the wire. The checksum and the announced size always describe the plain
//! bytes; the receiver stores plain segments, so `restore` and `pg_archivecleanup` keep working.
//!
//! Both directions are streaming and bounded: the zstd window is fixed at [`WINDOW_LOG`] by the
//! encoder and capped at the same value by the decoder, so a transfer never holds more than a
//! 2 MiB window whatever the segment size or the level, and a hostile frame asking for a bigger
//! one is refused instead of allocated.

use serde::{Deserialize, Serialize};
use zstd::stream::raw::{CParameter, DParameter, Decoder, Encoder, InBuffer, Operation, OutBuffer};

/// log2 of the zstd window: 2 MiB. WAL repeats within a few pages, so a larger window buys
/// little ratio for memory multiplied by every parallel transfer.
pub const WINDOW_LOG: u32 = 21;
/// Bytes of input per job when zstd compresses on several threads.
pub const MT_JOB_BYTES: u32 = 1 << 20;
/// Decoded bytes handed on per step.
const OUT_CHUNK: usize = 256 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// The file's bytes as they are.
    Plain,
    /// One zstd frame holding the file's bytes.
    Zstd,
}

/// Most wire bytes a `size`-byte file can take in this encoding: beyond it the sender is
/// padding the stream (zstd blocks that decode to nothing), and is refused.
pub fn max_wire_bytes(encoding: Encoding, size: u64) -> u64 {
    match encoding {
        Encoding::Plain => size,
        // zstd's own worst case (ZSTD_COMPRESSBOUND), plus slack for the frame header.
        Encoding::Zstd => size + size / 255 + (128 << 10) + 4096,
    }
}

/// Why wire bytes could not be decoded. The receiver refuses the upload as malformed with this
/// text (see [`crate::proto::incoming`]); the decoder itself knows nothing of refusals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The zstd library could not set up a decoder (out of memory).
    #[error("zstd decoder: {0}")]
    Setup(String),
    /// Not a zstd frame, or a damaged one, or one asking for a window above [`WINDOW_LOG`].
    #[error("compressed stream: {0}")]
    Corrupt(String),
    #[error("compressed stream: data after the end of the zstd frame")]
    TrailingData,
    #[error("compressed stream: ends in the middle of the zstd frame")]
    Truncated,
}

/// Turns wire bytes into plain bytes, chunk by chunk.
pub struct BodyDecoder {
    zstd: Option<ZstdState>,
}

struct ZstdState {
    decoder: Decoder<'static>,
    out: Vec<u8>,
    frame_done: bool,
}

impl BodyDecoder {
    pub fn new(encoding: Encoding) -> Result<Self, DecodeError> {
        let setup = |e: std::io::Error| DecodeError::Setup(e.to_string());
        let zstd = match encoding {
            Encoding::Plain => None,
            Encoding::Zstd => {
                let mut decoder = Decoder::new().map_err(setup)?;
                decoder
                    .set_parameter(DParameter::WindowLogMax(WINDOW_LOG))
                    .map_err(setup)?;
                Some(ZstdState {
                    decoder,
                    out: vec![0u8; OUT_CHUNK],
                    frame_done: false,
                })
            }
        };
        Ok(BodyDecoder { zstd })
    }

    /// Decode `input`, handing the plain bytes to `sink` in pieces of at most 256 KiB. The
    /// sink's error type is the caller's; decoding errors are turned into it.
    pub fn decode<E: From<DecodeError>>(
        &mut self,
        input: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let Some(z) = &mut self.zstd else {
            return sink(input);
        };
        let mut inb = InBuffer::around(input);
        loop {
            if z.frame_done && inb.pos() < input.len() {
                return Err(DecodeError::TrailingData.into());
            }
            let mut outb = OutBuffer::around(&mut z.out[..]);
            let hint = z
                .decoder
                .run(&mut inb, &mut outb)
                .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
            let produced = outb.pos();
            if produced > 0 {
                sink(&z.out[..produced])?;
            }
            if hint == 0 {
                z.frame_done = true;
            }
            // Done with this input once it is consumed and the decoder had room to spare
            // (a full output buffer may mean more is buffered inside).
            if inb.pos() == input.len() && produced < z.out.len() {
                return Ok(());
            }
        }
    }

    /// After the last input: the compressed frame must be complete.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match &self.zstd {
            Some(z) if !z.frame_done => Err(DecodeError::Truncated),
            _ => Ok(()),
        }
    }
}

/// Turns plain bytes into wire bytes (sender side).
pub struct BodyEncoder {
    zstd: Option<Encoder<'static>>,
}

impl BodyEncoder {
    /// `level`: zstd level (1 is fast and already shrinks pgbench WAL about 12x). One
    /// thread: the caller's.
    pub fn new(encoding: Encoding, level: i32, plain_size: u64) -> std::io::Result<Self> {
        Self::with_threads(encoding, level, plain_size, 1)
    }

    /// As [`BodyEncoder::new`], compressing on `threads` worker threads of zstd's own when
    /// `threads` is 2 or more and the file is larger than one [`MT_JOB_BYTES`] job. The output
    /// is the same single zstd frame with the same window ([`WINDOW_LOG`]): the receiver
    /// decodes it as any other. Jobs of 1 MiB keep the memory to a few MiB per transfer
    /// (zstd's default would be 8 MiB jobs at this window).
    pub fn with_threads(
        encoding: Encoding,
        level: i32,
        plain_size: u64,
        threads: u32,
    ) -> std::io::Result<Self> {
        let zstd = match encoding {
            Encoding::Plain => None,
            Encoding::Zstd => {
                let mut e = Encoder::new(level)?;
                e.set_parameter(CParameter::WindowLog(WINDOW_LOG))?;
                if threads >= 2 && plain_size > MT_JOB_BYTES as u64 {
                    e.set_parameter(CParameter::NbWorkers(threads))?;
                    e.set_parameter(CParameter::JobSize(MT_JOB_BYTES))?;
                }
                e.set_pledged_src_size(Some(plain_size))?;
                Some(e)
            }
        };
        Ok(BodyEncoder { zstd })
    }

    /// Encode `input`, appending wire bytes to `out`.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        let Some(e) = &mut self.zstd else {
            out.extend_from_slice(input);
            return Ok(());
        };
        let mut inb = InBuffer::around(input);
        while inb.pos() < input.len() {
            reserve(out);
            let mut outb = OutBuffer::around_pos(out, out.len());
            e.run(&mut inb, &mut outb)?;
        }
        Ok(())
    }

    /// End the stream, appending the last wire bytes to `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let Some(e) = &mut self.zstd else {
            return Ok(());
        };
        loop {
            reserve(out);
            let mut outb = OutBuffer::around_pos(out, out.len());
            if e.finish(&mut outb, true)? == 0 {
                return Ok(());
            }
        }
    }
}

/// Make sure `out` has spare capacity for the encoder to write into.
fn reserve(out: &mut Vec<u8>) {
    if out.capacity() - out.len() < 64 << 10 {
        out.reserve(128 << 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_like(n: usize) -> Vec<u8> {
        // Repetitive with some variety, like WAL records.
        (0..n)
            .map(|i| ((i / 7) % 251) as u8 ^ ((i % 8192 == 0) as u8))
            .collect()
    }

    fn encode_all(enc: Encoding, body: &[u8], chunk: usize) -> Vec<u8> {
        let mut e = BodyEncoder::new(enc, 1, body.len() as u64).unwrap();
        let mut out = Vec::new();
        for c in body.chunks(chunk) {
            e.encode(c, &mut out).unwrap();
        }
        e.finish(&mut out).unwrap();
        out
    }

    fn decode_all(enc: Encoding, wire: &[u8], chunk: usize) -> Result<Vec<u8>, DecodeError> {
        let mut d = BodyDecoder::new(enc)?;
        let mut plain = Vec::new();
        for c in wire.chunks(chunk.max(1)) {
            d.decode(c, &mut |p| -> Result<(), DecodeError> {
                plain.extend_from_slice(p);
                Ok(())
            })?;
        }
        d.finish()?;
        Ok(plain)
    }

    #[test]
    fn zstd_round_trips_in_any_chunking_and_shrinks() {
        let body = wal_like(3 << 20);
        for (ec, dc) in [(1 << 20, 1), (4096, 1000), (7, 1 << 20), (1 << 22, 1 << 22)] {
            let wire = encode_all(Encoding::Zstd, &body, ec);
            assert!(
                wire.len() * 10 < body.len(),
                "{} bytes on the wire",
                wire.len()
            );
            if dc == 1 {
                // byte-by-byte decoding of 3 MiB is slow in debug builds: a prefix suffices.
                continue;
            }
            assert_eq!(decode_all(Encoding::Zstd, &wire, dc).unwrap(), body);
        }
        let plain = encode_all(Encoding::Plain, &body, 1000);
        assert_eq!(plain, body);
        assert_eq!(decode_all(Encoding::Plain, &plain, 333).unwrap(), body);
    }

    #[test]
    fn several_threads_make_one_frame_the_decoder_takes() {
        let body = wal_like(5 << 20);
        for threads in [2, 4] {
            let mut e =
                BodyEncoder::with_threads(Encoding::Zstd, 1, body.len() as u64, threads).unwrap();
            let mut wire = Vec::new();
            for c in body.chunks(256 << 10) {
                e.encode(c, &mut wire).unwrap();
            }
            e.finish(&mut wire).unwrap();
            assert!(wire.len() * 10 < body.len(), "{} bytes", wire.len());
            assert_eq!(decode_all(Encoding::Zstd, &wire, 1 << 16).unwrap(), body);
        }
        // Negative (fast) levels too.
        let wire = {
            let mut e =
                BodyEncoder::with_threads(Encoding::Zstd, -5, body.len() as u64, 2).unwrap();
            let mut w = Vec::new();
            e.encode(&body, &mut w).unwrap();
            e.finish(&mut w).unwrap();
            w
        };
        assert_eq!(decode_all(Encoding::Zstd, &wire, 1 << 20).unwrap(), body);
    }

    #[test]
    fn truncated_garbage_and_trailing_data_are_refused() {
        let body = wal_like(1 << 20);
        let wire = encode_all(Encoding::Zstd, &body, 1 << 16);
        let err = decode_all(Encoding::Zstd, &wire[..wire.len() - 3], 4096).unwrap_err();
        assert!(
            err.to_string().contains("middle of the zstd frame"),
            "{err}"
        );
        assert!(decode_all(Encoding::Zstd, &[0x42; 100], 10).is_err());
        let mut extra = wire.clone();
        extra.extend_from_slice(b"junk");
        let err = decode_all(Encoding::Zstd, &extra, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("after the end"), "{err}");
    }

    #[test]
    fn a_frame_wanting_a_larger_window_is_refused() {
        let body = wal_like(1 << 20);
        let mut e = Encoder::new(3).unwrap();
        e.set_parameter(CParameter::WindowLog(WINDOW_LOG + 3))
            .unwrap();
        e.set_parameter(CParameter::EnableLongDistanceMatching(true))
            .unwrap();
        let wire = zstd::stream::encode_all(&body[..], 3).unwrap();
        // A plain level-3 frame of 1 MiB stays within the cap...
        assert_eq!(decode_all(Encoding::Zstd, &wire, 1 << 16).unwrap(), body);
        // ...one declaring a 16 MiB window does not.
        let mut big = Vec::new();
        let mut enc = BodyEncoder { zstd: Some(e) };
        enc.encode(&body, &mut big).unwrap();
        enc.finish(&mut big).unwrap();
        assert!(decode_all(Encoding::Zstd, &big, 1 << 16).is_err());
    }
}
