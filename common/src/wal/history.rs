//! Timeline history files (`NNNNNNNN.history`, `access/transam/timeline.c`).
//!
//! When a standby is promoted it starts a new timeline and writes its history: a copy of its
//! parent timeline's history file (if any), then one line for the switch just made,
//! `parentTLI<TAB>switchpoint<TAB>reason`, the switch point being the LSN where the parent
//! timeline ended and the new one began. Lines starting with `#` (after optional white space)
//! and blank lines are ignored, and PostgreSQL reads each line into a 1024-byte buffer
//! (`readTimeLineHistory`). A standby following `recovery_target_timeline = 'latest'` switches
//! to whatever history it finds in the archive, so the archive must only hold histories that
//! are well formed and agree with each other: the history of timeline N repeats its parent's
//! history and adds one line, and after `walship-receiver promote` the fenced timeline may only
//! have been left at the promotion LSN.

use std::fmt;

use crate::lsn::Lsn;
use crate::wal::name::TimelineId;

/// Largest history file accepted. A line is about 40-120 bytes (timeline, LSN, a reason such as
/// "no recovery target specified" or "at restore point ..."), one per timeline switch in the
/// cluster's past: 1 MiB holds about 10,000 switches, far more than any real cluster makes, and
/// the receiver buffers the whole file while it arrives (one per upload slot).
pub const MAX_HISTORY_BYTES: u64 = 1 << 20;

/// PostgreSQL reads history lines with `fgets` into a `MAXPGPATH` (1024) byte buffer: a longer
/// line would be read as two, the second a syntax error that stops recovery.
const MAX_LINE_BYTES: usize = 1023;

/// One line: the parent timeline ended at `at`, where its child began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    pub parent: TimelineId,
    pub at: Lsn,
}

/// A parsed history file: the switches that led to `timeline`, oldest first (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    pub timeline: TimelineId,
    pub switches: Vec<Switch>,
}

/// Why bytes are not a history file of their timeline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("{len} bytes, more than the {max} a history file may have")]
    TooLarge { len: u64, max: u64 },
    #[error("line {line}: {reason}")]
    Syntax { line: usize, reason: String },
    #[error("timeline 1 has no history file")]
    TimelineOne,
    #[error("no timeline switch line")]
    Empty,
    #[error(
        "line {line}: parent timeline {parent} is not below the file's own timeline {timeline}"
    )]
    ParentNotBelow {
        line: usize,
        parent: TimelineId,
        timeline: TimelineId,
    },
    #[error("line {line}: parent timeline {parent} does not follow the previous line's {previous} (timelines must increase)")]
    ParentNotIncreasing {
        line: usize,
        parent: TimelineId,
        previous: TimelineId,
    },
    #[error("line {line}: switch point {at} is before the previous line's {previous}")]
    SwitchBackwards { line: usize, at: Lsn, previous: Lsn },
}

impl History {
    /// Parse the content of `timeline`'s history file, as `readTimeLineHistory` would, and
    /// check that it can be a real one: parent timelines strictly increasing and below
    /// `timeline`, switch points not going back, at least one switch.
    pub fn parse(timeline: TimelineId, bytes: &[u8]) -> Result<History, HistoryError> {
        if bytes.len() as u64 > MAX_HISTORY_BYTES {
            return Err(HistoryError::TooLarge {
                len: bytes.len() as u64,
                max: MAX_HISTORY_BYTES,
            });
        }
        if timeline.0 <= 1 {
            return Err(HistoryError::TimelineOne);
        }
        let mut switches: Vec<Switch> = Vec::new();
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = i + 1;
            let syntax = |reason: &str| HistoryError::Syntax {
                line,
                reason: reason.to_string(),
            };
            if raw.len() > MAX_LINE_BYTES {
                return Err(syntax(
                    "longer than the 1023 bytes PostgreSQL reads as one line",
                ));
            }
            if raw.contains(&0) {
                return Err(syntax("contains a NUL byte"));
            }
            let rest = trim_start(raw);
            if rest.is_empty() || rest[0] == b'#' {
                continue;
            }
            let (tli, rest) = split_field(rest);
            let parent = parse_timeline(tli)
                .ok_or_else(|| syntax("expected a numeric parent timeline ID first"))?;
            let (lsn, _reason) = split_field(trim_start(rest));
            let at = std::str::from_utf8(lsn)
                .ok()
                .and_then(|s| s.parse::<Lsn>().ok())
                .filter(|l| *l != Lsn::INVALID)
                .ok_or_else(|| {
                    syntax("expected a switch point like 0/3000148 after the timeline")
                })?;
            if parent >= timeline {
                return Err(HistoryError::ParentNotBelow {
                    line,
                    parent,
                    timeline,
                });
            }
            if let Some(prev) = switches.last() {
                if parent <= prev.parent {
                    return Err(HistoryError::ParentNotIncreasing {
                        line,
                        parent,
                        previous: prev.parent,
                    });
                }
                if at < prev.at {
                    return Err(HistoryError::SwitchBackwards {
                        line,
                        at,
                        previous: prev.at,
                    });
                }
            }
            switches.push(Switch { parent, at });
        }
        if switches.is_empty() {
            return Err(HistoryError::Empty);
        }
        Ok(History { timeline, switches })
    }

    /// The timeline this one branched from.
    pub fn parent(&self) -> TimelineId {
        self.switches
            .last()
            .expect("a parsed history has at least one switch")
            .parent
    }

    /// Where this history says `tli` was left, and the index of that line.
    pub fn left(&self, tli: TimelineId) -> Option<(usize, Lsn)> {
        self.switches
            .iter()
            .position(|s| s.parent == tli)
            .map(|i| (i, self.switches[i].at))
    }

    /// Check against another stored history: when one timeline is an ancestor of the other,
    /// the ancestor's history must be exactly the lines before the one leaving it. Unrelated
    /// timelines (siblings branching from a common parent) are not compared.
    pub fn agrees_with(&self, stored: &History) -> Result<(), String> {
        if stored.timeline == self.timeline {
            // Same name: the no-replace rule decides (identical content or a conflict).
            return Ok(());
        }
        let file = file_name(stored.timeline);
        if let Some((i, _)) = self.left(stored.timeline) {
            return prefix_mismatch(&stored.switches, &self.switches[..i])
                .map_or(Ok(()), |d| Err(format!("the stored {file} {d}")));
        }
        if let Some((i, _)) = stored.left(self.timeline) {
            return prefix_mismatch(&self.switches, &stored.switches[..i]).map_or(Ok(()), |d| {
                Err(format!(
                    "the stored {file} descends from timeline {} and {}",
                    self.timeline,
                    d.replace("this file says", "its lines before say")
                ))
            });
        }
        Ok(())
    }

    /// Check against walship's fence: timeline `fenced` was promoted away from at `at`,
    /// becoming `new_timeline` (when known). Any later timeline must have left `fenced` at
    /// exactly `at`; the new timeline must have branched from `fenced` itself.
    pub fn agrees_with_fence(
        &self,
        fenced: TimelineId,
        at: Lsn,
        new_timeline: Option<TimelineId>,
    ) -> Result<(), String> {
        if self.timeline <= fenced {
            return Ok(());
        }
        match self.left(fenced) {
            None => Err(format!(
                "walship.fence says this archive's history continues from timeline {fenced} (promoted at {at}), and timeline {} does not descend from it",
                self.timeline
            )),
            Some((_, left)) if left != at => Err(format!(
                "walship.fence says timeline {fenced} ended at {at} when the standby was promoted; this file says {left}"
            )),
            Some(_) if new_timeline == Some(self.timeline) && self.parent() != fenced => Err(format!(
                "walship.fence says timeline {} was promoted from timeline {fenced}; this file says from {}",
                self.timeline,
                self.parent()
            )),
            Some(_) => Ok(()),
        }
    }
}

impl fmt::Display for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timeline {} ended at {}", self.parent, self.at)
    }
}

/// `NNNNNNNN.history`.
fn file_name(tli: TimelineId) -> String {
    format!("{:08X}.history", tli.0)
}

/// How `got` differs from `expected` (the lines both should share), or None when equal.
fn prefix_mismatch(expected: &[Switch], got: &[Switch]) -> Option<String> {
    for (e, g) in expected.iter().zip(got) {
        if e != g {
            return Some(format!("says {e}; this file says {g}"));
        }
    }
    match expected.len().cmp(&got.len()) {
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Greater => Some(format!(
            "says {}; this file has no such line",
            expected[got.len()]
        )),
        std::cmp::Ordering::Less => Some(format!(
            "has no line for {}; this file says {}",
            got[expected.len()].parent,
            got[expected.len()]
        )),
    }
}

/// White space as C's `isspace` sees it.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | 0x0B | 0x0C)
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&c| is_space(c)).count();
    &b[n..]
}

/// The bytes up to the first white space, and the rest.
fn split_field(b: &[u8]) -> (&[u8], &[u8]) {
    let n = b.iter().take_while(|&&c| !is_space(c)).count();
    b.split_at(n)
}

/// A decimal timeline ID (1 to 4294967295).
fn parse_timeline(b: &[u8]) -> Option<TimelineId> {
    if b.is_empty() || b.len() > 10 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v: u64 = std::str::from_utf8(b).ok()?.parse().ok()?;
    u32::try_from(v).ok().filter(|v| *v > 0).map(TimelineId)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const REASON: &str = "no recovery target specified";

    fn tli(n: u32) -> TimelineId {
        TimelineId(n)
    }

    fn parse(n: u32, text: &str) -> Result<History, HistoryError> {
        History::parse(tli(n), text.as_bytes())
    }

    fn sw(parent: u32, at: u64) -> Switch {
        Switch {
            parent: tli(parent),
            at: Lsn(at),
        }
    }

    #[test]
    fn parses_what_postgresql_writes() {
        // Timeline 3's file: 2's copied verbatim, a blank line, then the new line.
        let two = format!("1\t0/3000148\t{REASON}\n");
        let three = format!("{two}\n2\t0/5000000\t{REASON}\n");
        assert_eq!(parse(2, &two).unwrap().switches, [sw(1, 0x3000148)]);
        let h = parse(3, &three).unwrap();
        assert_eq!(h.switches, [sw(1, 0x3000148), sw(2, 0x5000000)]);
        assert_eq!(h.parent(), tli(2));
        assert_eq!(h.left(tli(1)), Some((0, Lsn(0x3000148))));
        assert_eq!(h.left(tli(3)), None);
        // Comments, blank lines, no reason, no final newline, spaces instead of tabs.
        let h = parse(
            5,
            "# made by hand\n\n  1 0/3000000\n# x\n2\t1/0\tbefore 2020-01-01",
        )
        .unwrap();
        assert_eq!(h.switches, [sw(1, 0x3000000), sw(2, 1 << 32)]);
        // Lower-case hex, as pg_lsn accepts.
        assert!(parse(2, "1\t0/3a00028\tx\n").is_ok());
    }

    #[test]
    fn refuses_what_is_not_a_history() {
        let bad = |n: u32, text: &[u8]| History::parse(tli(n), text).unwrap_err();
        assert!(matches!(bad(2, b""), HistoryError::Empty));
        assert!(matches!(
            bad(2, b"# only a comment\n\n"),
            HistoryError::Empty
        ));
        assert!(matches!(
            bad(1, b"1\t0/3000000\tx\n"),
            HistoryError::TimelineOne
        ));
        assert!(matches!(
            bad(2, b"x\t0/3000000\n"),
            HistoryError::Syntax { line: 1, .. }
        ));
        assert!(matches!(
            bad(2, b"1\n"),
            HistoryError::Syntax { line: 1, .. }
        ));
        assert!(matches!(bad(2, b"1\tzz\n"), HistoryError::Syntax { .. }));
        assert!(matches!(bad(2, b"1\t0/0\n"), HistoryError::Syntax { .. }));
        assert!(matches!(
            bad(2, b"0\t0/3000000\n"),
            HistoryError::Syntax { .. }
        ));
        assert!(matches!(
            bad(2, b"-1\t0/3000000\n"),
            HistoryError::Syntax { .. }
        ));
        assert!(matches!(
            bad(2, b"1\t0/30000\x0000\n"),
            HistoryError::Syntax { .. }
        ));
        assert!(matches!(
            bad(2, b"1\t0/3000000x\n"),
            HistoryError::Syntax { .. }
        ));
        assert!(matches!(
            bad(2, b"99999999999\t0/3000000\n"),
            HistoryError::Syntax { .. }
        ));
        let long = format!("1\t0/3000000\t{}\n", "x".repeat(1100));
        assert!(matches!(
            bad(2, long.as_bytes()),
            HistoryError::Syntax { .. }
        ));
        assert!(matches!(
            bad(2, b"2\t0/3000000\tx\n"),
            HistoryError::ParentNotBelow { .. }
        ));
        assert!(matches!(
            bad(4, b"2\t0/3000000\n1\t0/4000000\n"),
            HistoryError::ParentNotIncreasing { line: 2, .. }
        ));
        assert!(matches!(
            bad(4, b"1\t0/3000000\n1\t0/4000000\n"),
            HistoryError::ParentNotIncreasing { .. }
        ));
        assert!(matches!(
            bad(4, b"1\t0/5000000\n2\t0/4000000\n"),
            HistoryError::SwitchBackwards { line: 2, .. }
        ));
        let huge = vec![b'#'; MAX_HISTORY_BYTES as usize + 1];
        assert!(matches!(bad(2, &huge), HistoryError::TooLarge { .. }));
        // Random bytes.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let random: Vec<u8> = (0..400)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(History::parse(tli(2), &random).is_err());
    }

    #[test]
    fn agrees_with_its_ancestors_and_descendants() {
        let two = parse(2, "1\t0/3000148\tx\n").unwrap();
        let three = parse(3, "1\t0/3000148\tx\n\n2\t0/5000000\ty\n").unwrap();
        assert_eq!(three.agrees_with(&two), Ok(()));
        assert_eq!(two.agrees_with(&three), Ok(()));
        // Timeline 3 says 1 ended elsewhere than the stored history of 2.
        let forged = parse(3, "1\t0/4000000\tx\n2\t0/5000000\ty\n").unwrap();
        let err = forged.agrees_with(&two).unwrap_err();
        assert!(err.contains("00000002.history"), "{err}");
        assert!(
            err.contains("0/3000148") && err.contains("0/4000000"),
            "{err}"
        );
        // The other way round: a stored descendant contradicts a new ancestor.
        let err = parse(2, "1\t0/4000000\tx\n")
            .unwrap()
            .agrees_with(&three)
            .unwrap_err();
        assert!(err.contains("00000003.history"), "{err}");
        // Timeline 3 leaving 2, whose stored history has a line 3 lacks.
        let short = parse(3, "2\t0/5000000\ty\n").unwrap();
        assert!(short.agrees_with(&two).is_err());
        // Siblings (both from timeline 1, at different points) are not compared.
        let sibling = parse(4, "1\t0/7000000\tz\n").unwrap();
        assert_eq!(sibling.agrees_with(&two), Ok(()));
        assert_eq!(sibling.agrees_with(&three), Ok(()));
    }

    #[test]
    fn agrees_with_the_fence_only_at_the_promotion_point() {
        let at = Lsn(0x3000148);
        let real = parse(2, "1\t0/3000148\tx\n").unwrap();
        assert_eq!(real.agrees_with_fence(tli(1), at, Some(tli(2))), Ok(()));
        let forged = parse(2, "1\t0/3010148\tx\n").unwrap();
        let err = forged
            .agrees_with_fence(tli(1), at, Some(tli(2)))
            .unwrap_err();
        assert!(
            err.contains("walship.fence") && err.contains("0/3010148"),
            "{err}"
        );
        // A later timeline must pass through the same point.
        let later = parse(3, "1\t0/3000148\tx\n2\t0/9000000\ty\n").unwrap();
        assert_eq!(later.agrees_with_fence(tli(1), at, Some(tli(2))), Ok(()));
        let later_forged = parse(3, "1\t0/3000000\tx\n2\t0/9000000\ty\n").unwrap();
        assert!(later_forged
            .agrees_with_fence(tli(1), at, Some(tli(2)))
            .is_err());
        // The promoted timeline must branch from the fenced one itself.
        let via_two = parse(3, "1\t0/3000148\tx\n2\t0/9000000\ty\n").unwrap();
        assert!(via_two.agrees_with_fence(tli(1), at, Some(tli(3))).is_err());
        // Not descending from the fenced timeline at all.
        let elsewhere = parse(4, "2\t0/3000148\tx\n").unwrap();
        assert!(elsewhere.agrees_with_fence(tli(3), at, None).is_err());
        // Histories of the fenced timeline or older are not the fence's business.
        assert_eq!(forged.agrees_with_fence(tli(2), at, Some(tli(3))), Ok(()));
    }
}
