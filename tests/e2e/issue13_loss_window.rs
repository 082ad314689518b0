//! Issue 13's closing measurement: the loss window of a crash failover (ms of acknowledged
//! commits lost) with and without `partial_interval`, over many kills. Not a regular test
//! (`#[ignore]`): bench/loss_window.sh runs it with `WALSHIP_LOSS_KILLS` (default 10) and puts
//! its table in bench/RESULTS-loss-window.md.
//!
//! Each kill is the Done-when scenario on a fresh pair: the daemon (with `partial_interval =
//! "200ms"`, or without it), a client inserting a row every 20 ms with synchronous_commit on,
//! the primary killed (`pg_ctl stop -m immediate`) after a random time (1.5 s to 6 s: always
//! mid-segment, the client writes a few tens of KiB of WAL per second), `promote`, and the
//! window measured as the commit time of the newest acknowledged id minus that of the newest
//! id present on the promoted standby (0 when none is missing). The modes alternate, and which
//! one goes first alternates too, so that a slow phase of the machine hits both alike. The
//! seed is printed and taken back through `WALSHIP_FAULT_SEED`.

use std::time::Duration;

use walship_tests::proxy::{self, Rng};

use crate::issue13_partial::{crash_and_promote, pair_with_daemon};

/// Kills per mode when `WALSHIP_LOSS_KILLS` is not set.
const DEFAULT_KILLS: usize = 10;

/// One mode of the measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Partial,
    ArchiveOnly,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Partial => "partial_interval = \"200ms\"",
            Mode::ArchiveOnly => "without partial_interval",
        }
    }

    fn interval(self) -> Option<&'static str> {
        match self {
            Mode::Partial => Some("200ms"),
            Mode::ArchiveOnly => None,
        }
    }
}

/// What one kill lost.
struct Kill {
    mode: Mode,
    wrote_ms: u128,
    acked: usize,
    lost_rows: usize,
    window_ms: u128,
}

#[test]
#[ignore = "a benchmark of several minutes: bench/loss_window.sh"]
fn loss_window_over_kills() {
    let kills: usize = match std::env::var("WALSHIP_LOSS_KILLS") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|e| panic!("WALSHIP_LOSS_KILLS={s:?}: {e}")),
        Err(_) => DEFAULT_KILLS,
    };
    let mut rng = Rng::new(proxy::seed("issue13_loss_window"));
    let mut results: Vec<Kill> = Vec::new();
    for i in 0..kills {
        let order = if i % 2 == 0 {
            [Mode::Partial, Mode::ArchiveOnly]
        } else {
            [Mode::ArchiveOnly, Mode::Partial]
        };
        for mode in order {
            let write_for = rng.millis(1_500, 6_000);
            let name = format!("issue13_loss_{i}_{}", mode.interval().unwrap_or("off"));
            let (p, daemon) = pair_with_daemon(&name, mode.interval());
            let loss = crash_and_promote(&p, write_for);
            let kill = Kill {
                mode,
                wrote_ms: write_for.as_millis(),
                acked: loss.acked.len(),
                lost_rows: loss.acked.len().saturating_sub(loss.present.len()),
                window_ms: loss.window_ms(),
            };
            eprintln!(
                "loss_window: kill {:>2} {:<28} wrote {:>5} ms, {:>4} acknowledged, {:>4} lost, window {:>5} ms",
                i + 1,
                mode.label(),
                kill.wrote_ms,
                kill.acked,
                kill.lost_rows,
                kill.window_ms
            );
            // The Done-when bound holds in every run with the partial.
            if mode == Mode::Partial {
                let lost = loss.lost_before(Duration::from_secs(1));
                assert!(
                    lost.is_empty(),
                    "kill {}: acknowledged more than 1 s before the kill but lost: {lost:?}\n{}",
                    i + 1,
                    loss.promote_stdout
                );
            }
            results.push(kill);
            drop(daemon);
            drop(p);
        }
    }
    println!("{}", table(&results, kills));
}

/// The markdown table: min / median / max of the window and the rows lost, per mode.
fn table(results: &[Kill], kills: usize) -> String {
    let mut out = String::from(
        "| mode | kills | window min (ms) | window median (ms) | window max (ms) | rows lost min / median / max |\n\
         |---|---|---|---|---|---|\n",
    );
    for mode in [Mode::Partial, Mode::ArchiveOnly] {
        let mut w: Vec<u128> = results
            .iter()
            .filter(|k| k.mode == mode)
            .map(|k| k.window_ms)
            .collect();
        let mut r: Vec<usize> = results
            .iter()
            .filter(|k| k.mode == mode)
            .map(|k| k.lost_rows)
            .collect();
        if w.is_empty() {
            continue;
        }
        w.sort_unstable();
        r.sort_unstable();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} / {} / {} |\n",
            mode.label(),
            w.len(),
            w[0],
            median(&w),
            w[w.len() - 1],
            r[0],
            median(&r),
            r[r.len() - 1]
        ));
    }
    out.push_str(&format!("\n({kills} kills per mode.)\n"));
    out
}

fn median<T>(v: &[T]) -> T
where
    T: Copy + std::ops::Add<Output = T> + std::ops::Div<Output = T> + From<u8>,
{
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / T::from(2)
    }
}
