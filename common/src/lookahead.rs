//! Look-ahead bookkeeping for the sender daemon: which `archive_status/*.ready` files to ship
//! next, which are in flight, and which the receiver acknowledged, tied to the identity of the
//! file that was read. Pure: the daemon feeds it directory listings, stats and outcomes.
//!
//! The rule that keeps it safe: `push` may answer from the book only when the file at its path
//! has the same identity (device, inode, size, mtime, ctime) as the file look-ahead read and the
//! receiver acknowledged. Any write, rename, truncation or replacement changes one of those, and
//! then `push` ships the file for real (the receiver answers "already had" if the bytes match).
//! [`judge`] decides what an acknowledgement is trusted for; [`Book::lookup`] answers `push`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use crate::wal::name::WalFileName;

/// Suffix PostgreSQL gives a file waiting for archive_command in `pg_wal/archive_status`.
pub const READY_SUFFIX: &str = ".ready";
/// First retry delay after a failed look-ahead transfer; doubles up to [`MAX_RETRY_DELAY`].
pub const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// A file modified this recently may still change without its mtime moving: the kernel stamps
/// times from a coarse clock (one tick is 1-10 ms). Identity is trusted only for files whose
/// mtime was at least this old before they were read.
pub const SETTLE: Duration = Duration::from_millis(20);

/// What identifies the bytes of a file without reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileIdentity {
    /// Whether the file was last changed at least [`SETTLE`] before `now`, so that a change
    /// after `now` is sure to move its mtime or ctime.
    pub fn settled(&self, now: SystemTime) -> bool {
        let now_ns = match now.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(_) => return false,
        };
        let newest = self.mtime_ns.max(self.ctime_ns);
        now_ns - newest >= SETTLE.as_nanos() as i128
    }
}

/// What the receiver's verdict on a transfer may be trusted for: the rule of this module, in one
/// place. `durable`: the receiver stored the file (or already had it). `read`: the identity of
/// the file at the path just before it was read, taken at `read_at`. `now`: its identity once
/// the verdict is in (`None`: gone, or it cannot be examined).
///
/// The acknowledgement holds for `read` only when the file had settled before it was read (a
/// change after `read_at` is then sure to move its times, see [`SETTLE`]) and the path still
/// holds that very file, unchanged, after the reply. Otherwise the bytes are durable but nobody
/// knows which: keep nothing, and `push` ships the file for real.
pub fn judge(
    durable: bool,
    read: &FileIdentity,
    read_at: SystemTime,
    now: Option<&FileIdentity>,
) -> Outcome {
    if !durable {
        return Outcome::Failed;
    }
    match now {
        Some(now) if read.settled(read_at) && now == read => Outcome::Acked(*read),
        _ => Outcome::Untrusted,
    }
}

/// Parse a `archive_status` entry: `Some(name)` for `NAME.ready` with a valid WAL name.
pub fn ready_name(entry: &str) -> Option<WalFileName> {
    entry.strip_suffix(READY_SUFFIX)?.parse().ok()
}

/// PostgreSQL's archiver order: timeline history files first (a standby needs them to follow a
/// promotion), then everything else oldest first (names sort by timeline, then position).
pub fn archive_order(names: &mut [WalFileName]) {
    names.sort_by_cached_key(|n| (!matches!(n, WalFileName::History(_)), n.to_string()));
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    InFlight,
    Acked(FileIdentity),
    Failed { retry_at: Instant, delay: Duration },
}

/// What the book knows about a name, for `push`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The receiver acknowledged exactly this file: answer at once.
    Shipped,
    /// A transfer of this name is running: wait for it, then look again.
    InFlight,
    /// Nothing usable (never shipped, failed, or the file changed since): ship it now.
    Ship,
}

/// The daemon's book of look-ahead transfers.
#[derive(Debug, Default)]
pub struct Book {
    entries: HashMap<String, Entry>,
    /// Last retry delay per name, kept across the retry's own InFlight state.
    delays: HashMap<String, Duration>,
}

impl Book {
    pub fn new() -> Self {
        Self::default()
    }

    /// `push` asks about `name`, whose file now has `identity`.
    pub fn lookup(&self, name: &str, identity: &FileIdentity) -> Lookup {
        match self.entries.get(name) {
            Some(Entry::Acked(acked)) if acked == identity => Lookup::Shipped,
            Some(Entry::InFlight) => Lookup::InFlight,
            _ => Lookup::Ship,
        }
    }

    /// Claim `name` for a transfer; false when one is already running.
    pub fn begin(&mut self, name: &str) -> bool {
        if self.entries.get(name) == Some(&Entry::InFlight) {
            return false;
        }
        self.entries.insert(name.to_string(), Entry::InFlight);
        true
    }

    /// A transfer ended. `acked` is the identity the receiver's acknowledgement may be trusted
    /// for: `Some` only when the transfer succeeded and the file kept one settled identity from
    /// before it was read until the reply. `failed` schedules a look-ahead retry with backoff.
    pub fn finish(&mut self, name: &str, outcome: Outcome, now: Instant) {
        let entry = match outcome {
            Outcome::Acked(identity) => {
                self.delays.remove(name);
                Entry::Acked(identity)
            }
            Outcome::Untrusted => {
                self.delays.remove(name);
                self.entries.remove(name);
                return;
            }
            Outcome::Failed => {
                let delay = match self.delays.get(name) {
                    Some(delay) => (*delay * 2).min(MAX_RETRY_DELAY),
                    None => FIRST_RETRY_DELAY,
                };
                self.delays.insert(name.to_string(), delay);
                Entry::Failed {
                    retry_at: now + delay,
                    delay,
                }
            }
        };
        self.entries.insert(name.to_string(), entry);
    }

    /// Forget what PostgreSQL no longer waits for: names with no `.ready` file (archived, so
    /// `.done`, or recycled). Running transfers are kept until they finish.
    pub fn retain_ready(&mut self, ready: &[WalFileName]) {
        let ready: HashSet<String> = ready.iter().map(|n| n.to_string()).collect();
        self.entries
            .retain(|name, e| *e == Entry::InFlight || ready.contains(name));
        let entries = &self.entries;
        self.delays.retain(|name, _| entries.contains_key(name));
    }

    /// Number of transfers running.
    pub fn in_flight(&self) -> usize {
        self.entries
            .values()
            .filter(|e| **e == Entry::InFlight)
            .count()
    }

    /// Which of `ready` (in archive order) to start now so that at most `limit` transfers run.
    /// Marks them in flight.
    pub fn plan(&mut self, ready: &[WalFileName], limit: usize, now: Instant) -> Vec<String> {
        let mut room = limit.saturating_sub(self.in_flight());
        let mut start = Vec::new();
        for name in ready {
            if room == 0 {
                break;
            }
            // A backup history file is stored only once the segment it starts in is (the
            // receiver checks it against that segment), which the archiver's in-order push
            // guarantees and parallel look-ahead does not; it is a few hundred bytes, so
            // shipping it ahead would gain nothing.
            if matches!(name, WalFileName::Backup { .. }) {
                continue;
            }
            let name = name.to_string();
            let due = match self.entries.get(&name) {
                None => true,
                Some(Entry::Failed { retry_at, .. }) => *retry_at <= now,
                Some(Entry::InFlight | Entry::Acked(_)) => false,
            };
            if due {
                self.entries.insert(name.clone(), Entry::InFlight);
                start.push(name);
                room -= 1;
            }
        }
        start
    }
}

/// How a transfer ended, for [`Book::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Durable on the receiver, and these are the bytes it holds.
    Acked(FileIdentity),
    /// Durable, but the file changed (or was too fresh) around the read, or nobody will ask
    /// again: keep nothing.
    Untrusted,
    /// Not durable.
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64, mtime_ns: i128) -> FileIdentity {
        FileIdentity {
            dev: 1,
            ino,
            size: 16 << 20,
            mtime_ns,
            ctime_ns: mtime_ns,
        }
    }

    fn names(list: &[&str]) -> Vec<WalFileName> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    const A: &str = "000000010000000000000001";
    const B: &str = "000000010000000000000002";
    const C: &str = "000000010000000000000003";

    #[test]
    fn ready_names_only() {
        assert_eq!(ready_name(&format!("{A}.ready")).unwrap().to_string(), A);
        assert!(ready_name(&format!("{A}.done")).is_none());
        assert!(ready_name("garbage.ready").is_none());
        assert!(ready_name(".ready").is_none());
        assert_eq!(
            ready_name("00000002.history.ready").unwrap().to_string(),
            "00000002.history"
        );
    }

    #[test]
    fn backup_history_files_are_left_to_the_archiver() {
        let mut book = Book::new();
        let backup = "000000010000000000000001.00000028.backup";
        let ready = names(&[A, backup, B]);
        assert_eq!(book.plan(&ready, 8, Instant::now()), [A, B]);
    }

    #[test]
    fn history_files_go_first_then_oldest() {
        let mut n = names(&[C, "00000002.history", A, "000000020000000000000003", B]);
        archive_order(&mut n);
        let order: Vec<String> = n.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            order,
            ["00000002.history", A, B, C, "000000020000000000000003"]
        );
    }

    #[test]
    fn acknowledgement_holds_only_for_the_identity_read() {
        let now = Instant::now();
        let mut book = Book::new();
        assert!(book.begin(A));
        assert_eq!(book.lookup(A, &id(7, 100)), Lookup::InFlight);
        book.finish(A, Outcome::Acked(id(7, 100)), now);
        assert_eq!(book.lookup(A, &id(7, 100)), Lookup::Shipped);
        // Rewritten in place (mtime moved), replaced (new inode), truncated (size), renamed
        // over (ctime): every change means ship again.
        assert_eq!(book.lookup(A, &id(7, 101)), Lookup::Ship);
        assert_eq!(book.lookup(A, &id(8, 100)), Lookup::Ship);
        let mut shorter = id(7, 100);
        shorter.size -= 1;
        assert_eq!(book.lookup(A, &shorter), Lookup::Ship);
        let mut renamed = id(7, 100);
        renamed.ctime_ns += 1;
        assert_eq!(book.lookup(A, &renamed), Lookup::Ship);
        // Another name with the same identity is not covered.
        assert_eq!(book.lookup(B, &id(7, 100)), Lookup::Ship);
        // An untrusted success leaves nothing to answer from.
        assert!(book.begin(B));
        book.finish(B, Outcome::Untrusted, now);
        assert_eq!(book.lookup(B, &id(9, 100)), Lookup::Ship);
    }

    #[test]
    fn an_acknowledgement_is_trusted_only_for_a_settled_unchanged_file() {
        let written = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let ns = written
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        let read = id(7, ns);
        let settled = written + SETTLE;
        let fresh = written + SETTLE / 2;
        assert_eq!(
            judge(true, &read, settled, Some(&read)),
            Outcome::Acked(read)
        );
        // Not durable: a failure, whatever the file did.
        assert_eq!(judge(false, &read, settled, Some(&read)), Outcome::Failed);
        // Read too soon after its last write: a later write might not have moved its times.
        assert_eq!(judge(true, &read, fresh, Some(&read)), Outcome::Untrusted);
        // Changed during the transfer: written to, replaced, truncated, renamed over, removed.
        let mut truncated = read;
        truncated.size -= 1;
        let mut renamed = read;
        renamed.ctime_ns += 1;
        for now in [id(7, ns + 1), id(8, ns), truncated, renamed] {
            assert_eq!(
                judge(true, &read, settled, Some(&now)),
                Outcome::Untrusted,
                "{now:?}"
            );
        }
        assert_eq!(judge(true, &read, settled, None), Outcome::Untrusted);
    }

    #[test]
    fn plan_respects_limit_in_order_and_skips_shipped() {
        let now = Instant::now();
        let mut book = Book::new();
        let ready = names(&[A, B, C]);
        assert_eq!(book.plan(&ready, 2, now), [A, B]);
        assert_eq!(book.plan(&ready, 2, now), Vec::<String>::new());
        book.finish(A, Outcome::Acked(id(1, 1)), now);
        assert_eq!(book.plan(&ready, 2, now), [C]);
        assert!(!book.begin(C), "a running transfer is not started twice");
        assert_eq!(book.in_flight(), 2);
    }

    #[test]
    fn failures_back_off() {
        let t0 = Instant::now();
        let mut book = Book::new();
        let ready = names(&[A]);
        assert_eq!(book.plan(&ready, 4, t0), [A]);
        book.finish(A, Outcome::Failed, t0);
        assert!(book.plan(&ready, 4, t0).is_empty());
        assert_eq!(
            book.lookup(A, &id(1, 1)),
            Lookup::Ship,
            "push still ships it"
        );
        let t1 = t0 + FIRST_RETRY_DELAY;
        assert_eq!(book.plan(&ready, 4, t1), [A]);
        book.finish(A, Outcome::Failed, t1);
        assert!(book.plan(&ready, 4, t1 + FIRST_RETRY_DELAY).is_empty());
        assert_eq!(book.plan(&ready, 4, t1 + FIRST_RETRY_DELAY * 2), [A]);
    }

    #[test]
    fn forgets_what_is_no_longer_ready_but_not_running_transfers() {
        let now = Instant::now();
        let mut book = Book::new();
        book.plan(&names(&[A, B]), 4, now);
        book.finish(A, Outcome::Acked(id(1, 1)), now);
        book.retain_ready(&names(&[C]));
        assert_eq!(book.lookup(A, &id(1, 1)), Lookup::Ship);
        assert_eq!(book.lookup(B, &id(1, 1)), Lookup::InFlight);
    }

    #[test]
    fn identity_of_a_real_file_and_settling() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"one").unwrap();
        let a = crate::sys::file_identity(&std::fs::metadata(&p).unwrap());
        assert!(!a.settled(SystemTime::now() - SETTLE * 2));
        assert!(a.settled(SystemTime::now() + SETTLE));
        std::fs::write(&p, b"two!").unwrap();
        let b = crate::sys::file_identity(&std::fs::metadata(&p).unwrap());
        assert_ne!(a, b);
        assert_eq!(a.ino, b.ino);
    }
}
