//! Log sequence numbers, printed like PostgreSQL does (`%X/%X`: `0/3000028`).
//!
//! An LSN (`XLogRecPtr`, `access/xlogdefs.h`) is a 64-bit byte position in the endless WAL
//! stream. PostgreSQL prints it as two upper-case hex numbers without leading zeros, the high
//! and the low 32 bits separated by a slash (`LSN_FORMAT_ARGS`), and `pg_lsn` input accepts the
//! same form in either case. We print and parse exactly that, so values in our messages can be
//! pasted into `pg_waldump --start` or compared with `pg_current_wal_lsn()` as they are. State
//! files and JSON carry it in the same text form (serde), never as a bare integer.
//!
//! Why our own type and not `postgres_types::PgLsn`: `PgLsn` is the same u64 with the same
//! text form, but it lives in the PostgreSQL client crates, which this pure crate and the sender
//! do not link, and it has none of what walship decides with: the segment arithmetic
//! ([`Lsn::segno`], [`Lsn::segment_offset`]), a parse error that names the value, and serde in
//! the text form. The receiver reads `pg_lsn` columns as `PgLsn` (no text round trip) and
//! converts at that edge (`Lsn::from(u64::from(pg_lsn))`).

use std::fmt;
use std::str::FromStr;

/// A position in the WAL stream (`XLogRecPtr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an LSN (expected two hex numbers of at most 8 digits separated by '/', like 0/3000028)")]
pub struct LsnParseError(pub String);

impl Lsn {
    /// `InvalidXLogRecPtr`: PostgreSQL never writes a record at 0 (a history file may say it).
    pub const INVALID: Lsn = Lsn(0);

    /// Offset of this LSN inside its segment (`XLogSegmentOffset`); `seg_size` must be a power
    /// of two, as every valid WAL segment size is.
    pub fn segment_offset(self, seg_size: u64) -> u64 {
        self.0 & seg_size.wrapping_sub(1)
    }

    /// Number of the segment holding this LSN (`XLByteToSeg`); `seg_size` must not be zero.
    pub fn segno(self, seg_size: u64) -> u64 {
        self.0 / seg_size
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    /// Parse `X/X` as `pg_lsn_in` does: 1 to 8 hex digits on each side, either case.
    fn from_str(s: &str) -> Result<Self, LsnParseError> {
        let err = || LsnParseError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = parse_half(hi).ok_or_else(err)?;
        let lo = parse_half(lo).ok_or_else(err)?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

/// As text (`"0/3000028"`), like PostgreSQL's `pg_lsn` output.
impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One side of `X/X`: 1..=8 hex digits. `u32::from_str_radix` alone would accept a leading
/// `+`, so the digits are checked first.
fn parse_half(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

#[cfg(test)]
// In tests a panic is the failure report, so unwrapping is the clearest assertion.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_postgresql() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x3000028).to_string(), "0/3000028");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!(Lsn(1 << 32).to_string(), "1/0");
    }

    #[test]
    fn parses_what_it_prints() {
        for v in [0, 1, 0x3000028, 0x16_B374_D848, 1 << 32, u64::MAX] {
            let lsn = Lsn(v);
            assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
        }
    }

    #[test]
    fn parses_lower_case_and_leading_zeros() {
        assert_eq!("16/b374d848".parse::<Lsn>(), Ok(Lsn(0x16_B374_D848)));
        assert_eq!("00000000/03000028".parse::<Lsn>(), Ok(Lsn(0x3000028)));
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "0/0/0",
            "G/0",
            "0/+1",
            "+0/1",
            "-1/0",
            " 0/1",
            "0/1 ",
            "123456789/0",
            "0/123456789",
            "0x1/0",
        ] {
            let err = s.parse::<Lsn>().unwrap_err();
            assert_eq!(err, LsnParseError(s.to_owned()), "{s:?}");
        }
    }

    #[test]
    fn segment_helpers() {
        let seg = 16 * 1024 * 1024;
        let lsn: Lsn = "0/3000028".parse().unwrap();
        assert_eq!(lsn.segno(seg), 3);
        assert_eq!(lsn.segment_offset(seg), 0x28);
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.segno(seg), 0x16 * 256 + 0xB3);
        assert_eq!(lsn.segment_offset(seg), 0x74D848);
    }

    #[test]
    fn serde_uses_the_text_form() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct At {
            lsn: Lsn,
        }
        let at = At {
            lsn: Lsn(0x16_B374_D848),
        };
        let text = toml::to_string(&at).unwrap();
        assert_eq!(text, "lsn = \"16/B374D848\"\n");
        assert_eq!(toml::from_str::<At>(&text).unwrap(), at);
        let err = toml::from_str::<At>("lsn = \"16-B3\"").unwrap_err();
        assert!(err.to_string().contains("is not an LSN"), "{err}");
        assert!(toml::from_str::<At>("lsn = 5").is_err());
    }

    #[test]
    fn orders_by_position() {
        assert!(Lsn(0x1_0000_0000) > Lsn(0xFFFF_FFFF));
        assert_eq!(Lsn::INVALID, Lsn(0));
    }
}
