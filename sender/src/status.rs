//! `walship-sender status [--json]`: each receiver's state (reachable, or down since when and
//! why), the newest segment it acknowledged, what it still owes and what it missed, and whether
//! the `require` policy can be met. The running daemon knows all of it (asked over its socket,
//! see [`crate::handoff::ask_status`]); without one, every receiver is probed as `check` does
//! and the acknowledgements are unknown. Exit 0 when the policy can be met, 1 otherwise.

use std::path::Path;
use std::time::{Duration, SystemTime};

use walship_common::check::Verdict;
use walship_common::fanout::{FanoutStatus, ReceiverStatus};
use walship_common::sys::config::{self, Require, SenderSettings};

use crate::handoff;

/// How long to wait for the daemon's answer.
const DAEMON_WAIT: Duration = Duration::from_secs(5);

/// Print the status; the exit code (0: the policy can be met, 1: not, or no config).
pub fn command(config: Option<&Path>, json: bool) -> u8 {
    let settings = match config::require(config).and_then(SenderSettings::load) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("walship-sender status: {e}");
            return 1;
        }
    };
    let (status, daemon) = match daemon_status(&settings) {
        Ok(status) => (status, "running".to_string()),
        Err(why) => match probe(&settings) {
            Ok(status) => (status, format!("none ({why}); receivers probed now")),
            Err(e) => {
                eprintln!("walship-sender status: {e}");
                return 1;
            }
        },
    };
    if json {
        let value = serde_json::json!({
            "daemon": daemon,
            "require": status.require,
            "needed": status.needed,
            "reachable": status.reachable(),
            "policy_met": status.policy_met(),
            "receivers": status.receivers,
        });
        println!("{value}");
    } else {
        println!("daemon: {daemon}");
        for line in status.lines(SystemTime::now()) {
            println!("{line}");
        }
    }
    u8::from(!status.policy_met())
}

fn daemon_status(settings: &SenderSettings) -> Result<FanoutStatus, String> {
    let Some(socket) = &settings.socket else {
        return Err("no `socket` in the config".into());
    };
    handoff::ask_status(socket, DAEMON_WAIT).map_err(|e| e.to_string())
}

/// Without a daemon: probe every receiver now.
fn probe(settings: &SenderSettings) -> Result<FanoutStatus, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let verdicts = runtime.block_on(crate::check::probe_all(settings));
    let now = SystemTime::now();
    let receivers = settings
        .receivers
        .iter()
        .zip(verdicts)
        .map(|(r, verdict)| {
            let mut s = ReceiverStatus::new(&r.address, &r.server_name);
            match verdict {
                Verdict::Fail { why, fix } if fix.is_empty() => s.down(why, now),
                Verdict::Fail { why, fix } => s.down(format!("{why}; {fix}"), now),
                Verdict::Ok(_) | Verdict::Warn(_) => s.up(),
            }
            // Probed, not watched: "down since" would only say "now".
            s.down_since = None;
            s
        })
        .collect();
    Ok(FanoutStatus {
        require: match settings.require {
            Require::All => "all".into(),
            Require::AtLeast(n) => n.to_string(),
        },
        needed: settings.require.needed(settings.receivers.len()),
        receivers,
    })
}
