//! Fan-out to several receivers: what the sender knows about each receiver (reachable or down
//! since when, the last error, the newest segment it acknowledged, the segments it still lacks
//! and those it missed for good) and whether the `require` policy can be met. Pure: the daemon
//! passes times in, `walship-sender status` renders what the daemon sent over its socket.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::wal::name::WalFileName;

/// What the sender knows about one receiver.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverStatus {
    /// `host:port` as configured.
    pub address: String,
    pub server_name: String,
    /// The daemon's warm connection is open (without a daemon: the probe passed).
    pub reachable: bool,
    /// Unix seconds since when it has been down (none while reachable or never tried).
    pub down_since: Option<u64>,
    /// The last failure, one line.
    pub last_error: Option<String>,
    /// The newest segment it acknowledged stored (none: none since the daemon started, or
    /// unknown without a daemon).
    pub newest_acked: Option<String>,
    /// Unix seconds of that acknowledgement.
    pub acked_at: Option<u64>,
    /// Files it lacks that the daemon will ship when it answers again (still in pg_wal).
    pub owed: u64,
    /// Files it lacks that left pg_wal before it came back: a hole in its archive.
    pub missed: u64,
    /// The newest of those.
    pub last_missed: Option<String>,
}

/// `walship-sender status`'s view: the policy and every receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanoutStatus {
    /// `"all"` or a number, as configured.
    pub require: String,
    /// Receivers that must store a file for `push` to succeed.
    pub needed: usize,
    pub receivers: Vec<ReceiverStatus>,
}

impl FanoutStatus {
    pub fn reachable(&self) -> usize {
        self.receivers.iter().filter(|r| r.reachable).count()
    }

    /// Whether a push can succeed now: enough receivers are reachable.
    pub fn policy_met(&self) -> bool {
        self.reachable() >= self.needed
    }

    /// The human report, one line per receiver then the policy, times relative to `now`.
    pub fn lines(&self, now: SystemTime) -> Vec<String> {
        let mut lines = Vec::new();
        for r in &self.receivers {
            let mut line = format!("receiver {} ({}): ", r.address, r.server_name);
            if r.reachable {
                line.push_str("reachable");
            } else {
                line.push_str("DOWN");
                if let Some(since) = r.down_since {
                    line.push_str(&format!(" since {}", ago(since, now)));
                }
            }
            match (&r.newest_acked, r.acked_at) {
                (Some(name), Some(at)) => {
                    line.push_str(&format!("; newest acknowledged {name} ({})", ago(at, now)))
                }
                (Some(name), None) => line.push_str(&format!("; newest acknowledged {name}")),
                (None, _) => line.push_str("; no segment acknowledged yet"),
            }
            if r.owed > 0 {
                line.push_str(&format!("; {} file(s) to catch up when it answers", r.owed));
            }
            if r.missed > 0 {
                line.push_str(&format!(
                    "; MISSED {} file(s) gone from pg_wal (newest {}): its archive has a hole, take a new base backup for a standby fed from it",
                    r.missed,
                    r.last_missed.as_deref().unwrap_or("?")
                ));
            }
            if let (false, Some(e)) = (r.reachable, &r.last_error) {
                line.push_str(&format!("; last error: {e}"));
            }
            lines.push(line);
        }
        let verdict = if self.policy_met() {
            "can be met"
        } else {
            "CANNOT be met: pushes fail until enough receivers answer"
        };
        lines.push(format!(
            "policy: require = {}, {} of {} receivers reachable, {} needed: {verdict}",
            self.require,
            self.reachable(),
            self.receivers.len(),
            self.needed
        ));
        lines
    }
}

impl ReceiverStatus {
    pub fn new(address: &str, server_name: &str) -> ReceiverStatus {
        ReceiverStatus {
            address: address.to_string(),
            server_name: server_name.to_string(),
            ..ReceiverStatus::default()
        }
    }

    /// The receiver stored (or had) `name` at `now`: it is reachable, and `name` is its newest
    /// acknowledged segment if it is a later segment than the one before.
    pub fn acked(&mut self, name: &str, now: SystemTime) {
        self.up();
        let Ok(parsed @ WalFileName::Segment(_)) = name.parse::<WalFileName>() else {
            return;
        };
        let newer = match self.newest_acked.as_deref().map(str::parse::<WalFileName>) {
            Some(Ok(old)) => parsed.to_string() > old.to_string(),
            _ => true,
        };
        if newer {
            self.newest_acked = Some(parsed.to_string());
            self.acked_at = Some(unix(now));
        }
    }

    /// The connection is open.
    pub fn up(&mut self) {
        self.reachable = true;
        self.down_since = None;
    }

    /// A connection or transfer failed at `now` because of `error`.
    pub fn down(&mut self, error: String, now: SystemTime) {
        if self.reachable || self.down_since.is_none() {
            self.down_since = Some(unix(now));
        }
        self.reachable = false;
        self.last_error = Some(error);
    }

    /// A transfer failed but the connection may be fine (a refusal, a timeout).
    pub fn failed(&mut self, error: String) {
        self.last_error = Some(error);
    }

    /// `name` left pg_wal before this receiver got it.
    pub fn missed(&mut self, name: &str) {
        self.missed += 1;
        if self.last_missed.as_deref().is_none_or(|old| name > old) {
            self.last_missed = Some(name.to_string());
        }
    }
}

/// Unix seconds of `t` (0 before the epoch).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// "2026-12-02T10:41:10Z (3m 5s ago)".
fn ago(secs: u64, now: SystemTime) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let elapsed = now.duration_since(at).unwrap_or_default();
    format!(
        "{} ({} ago)",
        crate::human::timestamp(at),
        crate::human::duration(Duration::from_secs(elapsed.as_secs()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "000000010000000000000003";
    const B: &str = "000000010000000000000004";

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn newest_acknowledged_only_moves_forward_and_only_for_segments() {
        let mut r = ReceiverStatus::new("h:1", "h");
        r.acked(B, at(10));
        r.acked(A, at(20));
        r.acked("00000002.history", at(30));
        assert_eq!(r.newest_acked.as_deref(), Some(B));
        assert_eq!(r.acked_at, Some(10));
        assert!(r.reachable);
    }

    #[test]
    fn down_keeps_the_first_time_it_went_down() {
        let mut r = ReceiverStatus::new("h:1", "h");
        r.down("no answer".into(), at(100));
        r.down("still no answer".into(), at(200));
        assert_eq!(r.down_since, Some(100));
        assert_eq!(r.last_error.as_deref(), Some("still no answer"));
        r.up();
        assert_eq!((r.reachable, r.down_since), (true, None));
        r.down("gone".into(), at(300));
        assert_eq!(r.down_since, Some(300));
    }

    #[test]
    fn policy_and_report() {
        let mut up = ReceiverStatus::new("a:1", "a");
        up.acked(A, at(100));
        let mut down = ReceiverStatus::new("b:1", "b");
        down.down("receiver b:1 did not answer within 2s".into(), at(50));
        down.owed = 2;
        down.missed(A);
        let mut s = FanoutStatus {
            require: "all".into(),
            needed: 2,
            receivers: vec![up, down],
        };
        assert!(!s.policy_met());
        let lines = s.lines(at(160));
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].contains("reachable; newest acknowledged 000000010000000000000003 (1970-01-01T00:01:40Z (1m ago))"), "{lines:?}");
        assert!(lines[1].contains("DOWN since"), "{lines:?}");
        assert!(lines[1].contains("2 file(s) to catch up"), "{lines:?}");
        assert!(lines[1].contains("MISSED 1"), "{lines:?}");
        assert!(lines[1].contains("last error: receiver b:1"), "{lines:?}");
        assert!(lines[2].contains("CANNOT be met"), "{lines:?}");
        s.needed = 1;
        s.require = "1".into();
        assert!(s.policy_met());
        assert!(s.lines(at(160))[2].ends_with("can be met"));
    }
}
