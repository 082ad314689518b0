//! One base backup file between the wire and the receiver's target, both ways: the same layout
//! as a WAL upload (content in its encoding, then the BLAKE3 digest of the plain bytes as a
//! 32-byte trailer), with a checked [`BackupPath`] instead of a WAL name and no content rules
//! (a data file is whatever PostgreSQL wrote). Pure: the drivers read and write.
//!
//! A file that shrinks while the sender reads it (PostgreSQL truncated or removed a relation
//! during the online backup) is padded with zeros up to the size announced, as PostgreSQL's own
//! `basebackup.c` does; one that grows is sent up to the size announced. WAL replay from the
//! backup's start repairs both: [`OutgoingFile`] does the padding and counts it.

use crate::basebackup::{BackupPath, MAX_FILE_BYTES};
use crate::proto::digest::{Digest, Hasher};
use crate::proto::encoding::{max_wire_bytes, BodyDecoder, BodyEncoder, Encoding};
use crate::proto::frame::{Refusal, TRAILER_LEN};
use crate::proto::incoming::TrailerSplit;

/// One backup file on its way in.
pub struct IncomingFile {
    path: BackupPath,
    announced: u64,
    encoding: Encoding,
    decoder: Option<BodyDecoder>,
    trailer: TrailerSplit,
    hasher: Hasher,
    wire: u64,
    max_wire: u64,
    plain: u64,
}

impl IncomingFile {
    /// Check the path and size before any content arrives.
    pub fn begin(path: &str, size: u64, encoding: Encoding) -> Result<Self, Refusal> {
        let path = BackupPath::parse(path).map_err(|e| Refusal::BadPath {
            path: path.chars().take(200).collect(),
            reason: e.to_string(),
        })?;
        if size > MAX_FILE_BYTES {
            return Err(Refusal::TooLarge {
                name: path.to_string(),
                size,
                max: MAX_FILE_BYTES,
            });
        }
        Ok(IncomingFile {
            path,
            announced: size,
            encoding,
            decoder: None,
            trailer: TrailerSplit::default(),
            hasher: Hasher::new(),
            wire: 0,
            max_wire: max_wire_bytes(encoding, size) + TRAILER_LEN as u64,
            plain: 0,
        })
    }

    pub fn path(&self) -> &BackupPath {
        &self.path
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    pub fn max_wire(&self) -> u64 {
        self.max_wire
    }

    pub fn plain_bytes(&self) -> u64 {
        self.plain
    }

    /// Take the next wire bytes: decode them and hand the plain bytes to `write`.
    pub fn absorb(
        &mut self,
        wire: &[u8],
        write: &mut dyn FnMut(&[u8]) -> Result<(), Refusal>,
    ) -> Result<(), Refusal> {
        self.wire += wire.len() as u64;
        let name = || self.path.to_string();
        if self.wire > self.max_wire {
            return Err(Refusal::SizeMismatch {
                name: name(),
                announced: self.announced,
                received: self.wire,
            });
        }
        let decoder = match &mut self.decoder {
            Some(d) => d,
            slot @ None => slot.insert(BodyDecoder::new(self.encoding)?),
        };
        let (held, content) = self.trailer.split(wire);
        let (hasher, plain, announced) = (&mut self.hasher, &mut self.plain, self.announced);
        let path = &self.path;
        for part in [&held[..], content] {
            decoder.decode::<Refusal>(part, &mut |bytes| {
                *plain += bytes.len() as u64;
                if *plain > announced {
                    return Err(Refusal::SizeMismatch {
                        name: path.to_string(),
                        announced,
                        received: *plain,
                    });
                }
                hasher.update(bytes);
                write(bytes)
            })?;
        }
        Ok(())
    }

    /// The verdict once the stream has ended: complete, the announced size, the digest right.
    pub fn finish(self) -> Result<(BackupPath, u64), Refusal> {
        if let Some(decoder) = &self.decoder {
            decoder.finish()?;
        }
        let name = self.path.to_string();
        let Some(expected) = self.trailer.trailer() else {
            return Err(Refusal::SizeMismatch {
                name,
                announced: self.announced + TRAILER_LEN as u64,
                received: self.wire,
            });
        };
        if self.plain != self.announced {
            return Err(Refusal::SizeMismatch {
                name,
                announced: self.announced,
                received: self.plain,
            });
        }
        let actual = self.hasher.finalize();
        if actual != expected {
            return Err(Refusal::ChecksumMismatch {
                name,
                expected: hex::encode(expected),
                actual: hex::encode(actual),
            });
        }
        Ok((self.path, self.announced))
    }
}

/// One backup file on its way out: encodes and hashes exactly `size` plain bytes, padding a
/// file that came up short with zeros.
pub struct OutgoingFile {
    size: u64,
    read: u64,
    encoder: BodyEncoder,
    hasher: Hasher,
}

impl OutgoingFile {
    pub fn new(size: u64, encoding: Encoding, level: i32) -> std::io::Result<Self> {
        Ok(OutgoingFile {
            size,
            read: 0,
            encoder: BodyEncoder::new(encoding, level, size)?,
            hasher: Hasher::new(),
        })
    }

    /// Plain bytes still wanted.
    pub fn remaining(&self) -> u64 {
        self.size - self.read
    }

    /// The next plain bytes read from the file (anything past `size` is ignored: the file grew
    /// while it was read); wire bytes are appended to `wire`.
    pub fn encode(&mut self, plain: &[u8], wire: &mut Vec<u8>) -> std::io::Result<()> {
        let take = plain.len().min(self.remaining() as usize);
        let plain = &plain[..take];
        self.read += take as u64;
        self.hasher.update(plain);
        self.encoder.encode(plain, wire)
    }

    /// After the file's end: zeros up to `size` (returns how many), the end of the encoding
    /// and the digest trailer, appended to `wire`.
    pub fn finish(mut self, wire: &mut Vec<u8>) -> std::io::Result<u64> {
        let padded = self.remaining();
        let zeros = vec![0u8; 64 << 10];
        while self.remaining() > 0 {
            let n = self.remaining().min(zeros.len() as u64) as usize;
            self.encode(&zeros[..n], wire)?;
        }
        self.encoder.finish(wire)?;
        let digest: Digest = self.hasher.finalize();
        wire.extend_from_slice(&digest);
        Ok(padded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(size: u64, enc: Encoding, pieces: &[&[u8]]) -> (Vec<u8>, u64) {
        let mut out = OutgoingFile::new(size, enc, 1).unwrap();
        let mut wire = Vec::new();
        for p in pieces {
            out.encode(p, &mut wire).unwrap();
        }
        let padded = out.finish(&mut wire).unwrap();
        (wire, padded)
    }

    fn receive(path: &str, size: u64, enc: Encoding, wire: &[u8]) -> Result<Vec<u8>, Refusal> {
        let mut written = Vec::new();
        let mut inc = IncomingFile::begin(path, size, enc)?;
        for piece in wire.chunks(7) {
            inc.absorb(piece, &mut |b| {
                written.extend_from_slice(b);
                Ok(())
            })?;
        }
        inc.finish()?;
        Ok(written)
    }

    #[test]
    fn a_file_arrives_whole_in_either_encoding() {
        // Over two of LZ4's 256 KiB blocks.
        let body: Vec<u8> = (0..600_000u32).map(|i| (i % 13) as u8).collect();
        for enc in [Encoding::Plain, Encoding::Zstd, Encoding::Lz4] {
            let (wire, padded) = send(body.len() as u64, enc, &[&body[..10], &body[10..]]);
            assert_eq!(padded, 0);
            assert_eq!(
                receive("base/1/2", body.len() as u64, enc, &wire).unwrap(),
                body
            );
        }
    }

    #[test]
    fn a_shrunk_file_is_padded_and_a_grown_one_cut() {
        for enc in [Encoding::Zstd, Encoding::Lz4] {
            let (wire, padded) = send(10, enc, &[b"abc"]);
            assert_eq!(padded, 7);
            assert_eq!(
                receive("base/1/2", 10, enc, &wire).unwrap(),
                b"abc\0\0\0\0\0\0\0"
            );
        }
        let (wire, _) = send(3, Encoding::Plain, &[b"abcdef"]);
        assert_eq!(receive("x", 3, Encoding::Plain, &wire).unwrap(), b"abc");
    }

    #[test]
    fn tampered_short_long_and_hostile_input_is_refused() {
        let (mut wire, _) = send(5, Encoding::Plain, &[b"hello"]);
        wire[0] ^= 1;
        assert!(matches!(
            receive("x", 5, Encoding::Plain, &wire),
            Err(Refusal::ChecksumMismatch { .. })
        ));
        let (wire, _) = send(5, Encoding::Plain, &[b"hello"]);
        assert!(matches!(
            receive("x", 6, Encoding::Plain, &wire),
            Err(Refusal::SizeMismatch { .. })
        ));
        assert!(matches!(
            receive("x", 4, Encoding::Plain, &wire),
            Err(Refusal::SizeMismatch { .. })
        ));
        assert!(matches!(
            receive("x", 5, Encoding::Plain, &wire[..10]),
            Err(Refusal::SizeMismatch { .. })
        ));
        assert!(matches!(
            IncomingFile::begin("../etc/passwd", 1, Encoding::Plain),
            Err(Refusal::BadPath { .. })
        ));
        assert!(matches!(
            IncomingFile::begin("backup_label", 1, Encoding::Plain),
            Err(Refusal::BadPath { .. })
        ));
        assert!(matches!(
            IncomingFile::begin("x", MAX_FILE_BYTES + 1, Encoding::Plain),
            Err(Refusal::TooLarge { .. })
        ));
    }
}
