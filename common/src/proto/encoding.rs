//! Content encoding on the wire. The checksum and the announced size always describe the plain
//! bytes; the receiver stores plain segments, so `restore` and `pg_archivecleanup` keep working.
//!
//! Both directions are streaming and bounded: the zstd window is fixed at [`WINDOW_LOG`] by the
//! encoder and capped at the same value by the decoder, so a transfer never holds more than a
//! 2 MiB window whatever the segment size or the level, and a hostile frame asking for a bigger
//! one is refused instead of allocated.
//!
//! LZ4 ([`Encoding::Lz4`], the fast codec for links faster than zstd compresses) is a sequence
//! of blocks of at most [`LZ4_BLOCK`] plain bytes, each compressed on its own (LZ4's block
//! format), in walship's own framing: a 4-byte little-endian header per block, the block's
//! length on the wire in the low 31 bits and the top bit set when the block is stored as it is
//! (it did not shrink); a header of 0 ends the stream. A decoder holds one block in and one
//! block out (about 512 KiB), whatever the peer declares: a longer block, an empty one, a block
//! that decodes to more than [`LZ4_BLOCK`] or does not decode are refused.

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
    /// LZ4 blocks in walship's framing (see the module's text). Added after protocol 5's
    /// first release: a receiver built before it answers an upload in it `Malformed`.
    Lz4,
}

impl Encoding {
    /// Each encoding under the name sender.toml's `compression` gives it ("none" for plain).
    const NAMES: [(Encoding, &'static str); 3] = [
        (Encoding::Plain, "none"),
        (Encoding::Zstd, "zstd"),
        (Encoding::Lz4, "lz4"),
    ];

    /// The encoding `compression = "<name>"` pins ("auto" is not one: see the config).
    pub fn from_name(name: &str) -> Option<Encoding> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(e, _)| *e)
    }
}

impl std::fmt::Display for Encoding {
    /// As the config's `compression` values name it ("none" for plain).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (_, name) = Self::NAMES
            .iter()
            .find(|(e, _)| e == self)
            .expect("every encoding is named");
        f.write_str(name)
    }
}

/// Plain bytes per LZ4 block (the last block of a file may be shorter).
pub const LZ4_BLOCK: usize = 256 << 10;
/// The top bit of an LZ4 block header: the block is stored, not compressed.
const LZ4_STORED: u32 = 1 << 31;
/// Longest LZ4 block on the wire (LZ4's worst case for [`LZ4_BLOCK`] plain bytes).
fn lz4_max_block() -> usize {
    lz4_flex::block::get_maximum_output_size(LZ4_BLOCK)
}

/// Most wire bytes a `size`-byte file can take in this encoding: beyond it the sender is
/// padding the stream (zstd blocks that decode to nothing), and is refused.
pub fn max_wire_bytes(encoding: Encoding, size: u64) -> u64 {
    match encoding {
        Encoding::Plain => size,
        // zstd's own worst case (ZSTD_COMPRESSBOUND), plus slack for the frame header.
        Encoding::Zstd => size + size / 255 + (128 << 10) + 4096,
        // Every block at its worst (stored blocks are never longer than compressed ones
        // would be), a header each, and the end header.
        Encoding::Lz4 => {
            let blocks = size.div_ceil(LZ4_BLOCK as u64);
            size + blocks * ((lz4_max_block() - LZ4_BLOCK) as u64 + 4) + 4
        }
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
    /// An LZ4 block header or block the framing does not allow, or a block that does not
    /// decode.
    #[error("compressed stream: {0}")]
    Lz4(String),
    #[error("compressed stream: data after the end of the LZ4 blocks")]
    Lz4TrailingData,
    #[error("compressed stream: ends before the end of the LZ4 blocks")]
    Lz4Truncated,
}

/// Turns wire bytes into plain bytes, chunk by chunk.
pub struct BodyDecoder {
    zstd: Option<ZstdState>,
    lz4: Option<Lz4State>,
}

/// Where the LZ4 decoder is in the block sequence.
struct Lz4State {
    /// Header bytes gathered so far (a header may arrive split across inputs).
    header: Vec<u8>,
    /// The current block's header once whole: its wire length and whether it is stored.
    block: Option<(usize, bool)>,
    /// The current block's bytes gathered so far.
    data: Vec<u8>,
    out: Vec<u8>,
    done: bool,
}

impl Lz4State {
    fn new() -> Self {
        Lz4State {
            header: Vec::with_capacity(4),
            block: None,
            data: Vec::new(),
            out: vec![0u8; LZ4_BLOCK],
            done: false,
        }
    }

    fn decode<E: From<DecodeError>>(
        &mut self,
        mut input: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        while !input.is_empty() {
            if self.done {
                return Err(DecodeError::Lz4TrailingData.into());
            }
            let Some((len, stored)) = self.block else {
                let take = (4 - self.header.len()).min(input.len());
                self.header.extend_from_slice(&input[..take]);
                input = &input[take..];
                if self.header.len() == 4 {
                    let h = u32::from_le_bytes(self.header[..].try_into().expect("4 bytes"));
                    self.header.clear();
                    if h == 0 {
                        self.done = true;
                        continue;
                    }
                    let (len, stored) = ((h & !LZ4_STORED) as usize, h & LZ4_STORED != 0);
                    let max = if stored { LZ4_BLOCK } else { lz4_max_block() };
                    if len == 0 || len > max {
                        return Err(DecodeError::Lz4(format!(
                            "an LZ4 block of {len} bytes (1 to {max} allowed)"
                        ))
                        .into());
                    }
                    self.block = Some((len, stored));
                }
                continue;
            };
            if self.data.is_empty() && input.len() >= len {
                // The whole block is in this input: no copy.
                let (block, rest) = input.split_at(len);
                input = rest;
                self.emit(block, stored, sink)?;
            } else {
                let take = (len - self.data.len()).min(input.len());
                self.data.extend_from_slice(&input[..take]);
                input = &input[take..];
                if self.data.len() == len {
                    let block = std::mem::take(&mut self.data);
                    self.emit(&block, stored, sink)?;
                    self.data = block;
                    self.data.clear();
                }
            }
        }
        Ok(())
    }

    fn emit<E: From<DecodeError>>(
        &mut self,
        block: &[u8],
        stored: bool,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.block = None;
        if stored {
            return sink(block);
        }
        let n = lz4_flex::block::decompress_into(block, &mut self.out)
            .map_err(|e| DecodeError::Lz4(format!("an LZ4 block that does not decode: {e}")))?;
        if n == 0 {
            return Err(DecodeError::Lz4("an LZ4 block of no bytes".into()).into());
        }
        sink(&self.out[..n])
    }
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
            Encoding::Plain | Encoding::Lz4 => None,
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
        let lz4 = (encoding == Encoding::Lz4).then(Lz4State::new);
        Ok(BodyDecoder { zstd, lz4 })
    }

    /// Decode `input`, handing the plain bytes to `sink` in pieces of at most 256 KiB. The
    /// sink's error type is the caller's; decoding errors are turned into it.
    pub fn decode<E: From<DecodeError>>(
        &mut self,
        input: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(l) = &mut self.lz4 {
            return l.decode(input, sink);
        }
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
        match (&self.zstd, &self.lz4) {
            (Some(z), _) if !z.frame_done => Err(DecodeError::Truncated),
            (_, Some(l)) if !l.done => Err(DecodeError::Lz4Truncated),
            _ => Ok(()),
        }
    }
}

/// Turns plain bytes into wire bytes (sender side).
pub struct BodyEncoder {
    zstd: Option<Encoder<'static>>,
    /// LZ4: the plain bytes of the block being filled.
    lz4: Option<Vec<u8>>,
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
            Encoding::Plain | Encoding::Lz4 => None,
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
        let lz4 = (encoding == Encoding::Lz4).then(|| Vec::with_capacity(LZ4_BLOCK));
        Ok(BodyEncoder { zstd, lz4 })
    }

    /// Encode `input`, appending wire bytes to `out`.
    pub fn encode(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        if let Some(pending) = &mut self.lz4 {
            while !input.is_empty() {
                if pending.is_empty() && input.len() >= LZ4_BLOCK {
                    let (block, rest) = input.split_at(LZ4_BLOCK);
                    lz4_block(block, out)?;
                    input = rest;
                    continue;
                }
                let take = (LZ4_BLOCK - pending.len()).min(input.len());
                pending.extend_from_slice(&input[..take]);
                input = &input[take..];
                if pending.len() == LZ4_BLOCK {
                    lz4_block(pending, out)?;
                    pending.clear();
                }
            }
            return Ok(());
        }
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
        if let Some(pending) = &mut self.lz4 {
            if !pending.is_empty() {
                lz4_block(pending, out)?;
                pending.clear();
            }
            out.extend_from_slice(&0u32.to_le_bytes());
            return Ok(());
        }
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

/// Append one LZ4 block (1 to [`LZ4_BLOCK`] plain bytes) with its header to `out`: compressed,
/// or stored when compressing did not shrink it.
fn lz4_block(plain: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    debug_assert!(!plain.is_empty() && plain.len() <= LZ4_BLOCK);
    let at = out.len();
    out.resize(
        at + 4 + lz4_flex::block::get_maximum_output_size(plain.len()),
        0,
    );
    let n =
        lz4_flex::block::compress_into(plain, &mut out[at + 4..]).map_err(std::io::Error::other)?;
    let header = if n < plain.len() {
        out.truncate(at + 4 + n);
        n as u32
    } else {
        out.truncate(at + 4);
        out.extend_from_slice(plain);
        plain.len() as u32 | LZ4_STORED
    };
    out[at..at + 4].copy_from_slice(&header.to_le_bytes());
    Ok(())
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

    #[test]
    fn every_encoding_is_named_as_the_config_names_it() {
        for (e, name) in [
            (Encoding::Plain, "none"),
            (Encoding::Zstd, "zstd"),
            (Encoding::Lz4, "lz4"),
        ] {
            assert_eq!(e.to_string(), name);
            assert_eq!(Encoding::from_name(name), Some(e));
        }
        assert_eq!(Encoding::from_name("auto"), None);
        assert_eq!(Encoding::from_name("LZ4"), None);
    }

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
        let mut enc = BodyEncoder {
            zstd: Some(e),
            lz4: None,
        };
        enc.encode(&body, &mut big).unwrap();
        enc.finish(&mut big).unwrap();
        assert!(decode_all(Encoding::Zstd, &big, 1 << 16).is_err());
    }

    #[test]
    fn lz4_round_trips_in_any_chunking_and_shrinks() {
        let body = wal_like((3 << 20) + 12345);
        for (ec, dc) in [
            (1 << 20, 7),
            (4096, 1000),
            (LZ4_BLOCK, 1 << 20),
            (1 << 22, 3),
        ] {
            let wire = encode_all(Encoding::Lz4, &body, ec);
            assert!(
                wire.len() * 4 < body.len(),
                "{} bytes on the wire",
                wire.len()
            );
            assert!(wire.len() as u64 <= max_wire_bytes(Encoding::Lz4, body.len() as u64));
            assert_eq!(
                decode_all(Encoding::Lz4, &wire, dc).unwrap(),
                body,
                "{ec}/{dc}"
            );
        }
        // An empty file is the end header alone.
        let wire = encode_all(Encoding::Lz4, &[], 10);
        assert_eq!(wire, [0, 0, 0, 0]);
        assert_eq!(decode_all(Encoding::Lz4, &wire, 1).unwrap(), b"");
    }

    #[test]
    fn lz4_stores_what_does_not_shrink_within_the_wire_bound() {
        // Noise does not compress: every block goes as it is, and the bound still holds.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let body: Vec<u8> = (0..(LZ4_BLOCK * 2 + 100))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let wire = encode_all(Encoding::Lz4, &body, 1 << 16);
        assert_eq!(wire.len(), body.len() + 3 * 4 + 4);
        assert!(wire.len() as u64 <= max_wire_bytes(Encoding::Lz4, body.len() as u64));
        assert_eq!(decode_all(Encoding::Lz4, &wire, 999).unwrap(), body);
    }

    #[test]
    fn hostile_lz4_framing_is_refused() {
        let body = wal_like(LZ4_BLOCK + 5000);
        let wire = encode_all(Encoding::Lz4, &body, 1 << 16);
        // Cut anywhere before the end header: truncated.
        for cut in [1, 3, 4, 100, wire.len() - 4, wire.len() - 1] {
            let err = decode_all(Encoding::Lz4, &wire[..cut], 64).unwrap_err();
            assert_eq!(err, DecodeError::Lz4Truncated, "cut at {cut}");
        }
        // Bytes after the end header.
        let mut extra = wire.clone();
        extra.push(0);
        let err = decode_all(Encoding::Lz4, &extra, 1 << 20).unwrap_err();
        assert_eq!(err, DecodeError::Lz4TrailingData);
        // A block longer than any LZ4 block of LZ4_BLOCK bytes, stored or compressed; an
        // empty stored block.
        for header in [
            (lz4_max_block() as u32 + 1),
            LZ4_STORED | (LZ4_BLOCK as u32 + 1),
            LZ4_STORED,
        ] {
            let mut w = header.to_le_bytes().to_vec();
            w.extend_from_slice(&[0; 64]);
            let err = decode_all(Encoding::Lz4, &w, 1 << 20).unwrap_err();
            assert!(matches!(err, DecodeError::Lz4(_)), "{header:#x}: {err}");
        }
        // A block that does not decode, and one that would decode to more than LZ4_BLOCK
        // bytes (a match copying past the output's end).
        let mut garbage = 40u32.to_le_bytes().to_vec();
        garbage.extend_from_slice(&[0xff; 40]);
        garbage.extend_from_slice(&[0; 4]);
        let err = decode_all(Encoding::Lz4, &garbage, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("does not decode"), "{err}");
        let big = lz4_flex::block::compress(&vec![7u8; LZ4_BLOCK + 1]);
        let mut w = (big.len() as u32).to_le_bytes().to_vec();
        w.extend_from_slice(&big);
        w.extend_from_slice(&[0; 4]);
        let err = decode_all(Encoding::Lz4, &w, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("does not decode"), "{err}");
    }
}
