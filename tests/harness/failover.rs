//! Shared setup for the failover scenarios (`promote`, the fence, `status --json`): a primary,
//! a receiver whose config has `pgdata` and `conninfo` for the standby, and a pg_basebackup
//! standby fed only through `walship-receiver restore` (it does not archive itself).
//!
//! Also the pieces those scenarios need: running `promote` and `status --json`, waiting for the
//! archiver, for replay and for the restore record, an immediate stop of the primary, a digest
//! of the pgbench tables, LSN and segment-name arithmetic on any timeline.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::pg::PgCluster;
use crate::process::{wait_for, Output};
use crate::scenario::Scenario;
use crate::walship::MAX_EXIT_CODE;
use crate::walship::{receiver_config, sender_for, toml_str, Receiver, ReceiverSetup};
use crate::CertSet;

/// Deadline for one `promote` process (it bounds its own wait for replay with `--timeout`).
const PROMOTE_DEADLINE: Duration = Duration::from_secs(150);
/// Deadline for the archiver or the standby to catch up with what a scenario wrote.
pub const CATCH_UP: Duration = Duration::from_secs(60);
/// Between polls of a standby or of `status`.
const POLL: Duration = Duration::from_millis(200);

/// How a pair is set up.
#[derive(Debug, Clone)]
pub struct PairOptions {
    /// `hot_standby` on the standby: off makes a warm standby (no connections in recovery).
    pub hot_standby: bool,
    /// `archive_timeout` on the primary (e.g. `"1s"`); none when `None`.
    pub archive_timeout: Option<&'static str>,
    /// Set the primary's `archive_command` to `walship-sender push` once the receiver runs.
    /// When false, `archive_mode` stays on with an empty command: completed segments wait in
    /// the primary's pg_wal (`.ready`) for the scenario to push by hand.
    pub archive: bool,
    /// `initdb --wal-segsize` in MiB; PostgreSQL's default (16) when `None`.
    pub wal_segsize_mb: Option<u32>,
    /// Ready for the way back: the primary keeps what `pg_rewind` needs (`wal_log_hints`,
    /// `wal_keep_size`), and the standby has `archive_mode = on` with no `archive_command`, so
    /// that once promoted its segments wait as `.ready` until the scenario ships them back.
    pub way_back: bool,
}

impl Default for PairOptions {
    fn default() -> Self {
        PairOptions {
            hot_standby: true,
            archive_timeout: None,
            archive: true,
            wal_segsize_mb: None,
            way_back: false,
        }
    }
}

/// A running primary, receiver (with `pgdata` and `conninfo`) and standby. Fields drop in
/// order: the receiver stops first, then the standby and the primary, then the report.
pub struct Pair {
    pub rx: Receiver,
    pub standby: PgCluster,
    pub primary: PgCluster,
    pub setup: ReceiverSetup,
    pub sender: PathBuf,
    pub certs: CertSet,
    pub sc: Scenario,
}

impl Pair {
    /// Start everything; the standby runs (in recovery) when this returns.
    pub fn start(name: &str, opts: &PairOptions) -> Pair {
        let sc = Scenario::new(name);
        let certs = CertSet::create(&sc, "certs");
        let mut conf = vec!["max_wal_senders = 5".to_string()];
        if let Some(t) = opts.archive_timeout {
            conf.push(format!("archive_timeout = '{t}'"));
        }
        if opts.way_back {
            conf.push("wal_log_hints = on".into());
            conf.push("wal_keep_size = '512MB'".into());
        }
        let conf: Vec<&str> = conf.iter().map(String::as_str).collect();
        let segsize = opts.wal_segsize_mb.map(|mb| format!("--wal-segsize={mb}"));
        let initdb_args: Vec<&str> = segsize.iter().map(String::as_str).collect();
        let mut primary = PgCluster::init_archive_paused(&sc, "primary", &initdb_args, &conf);
        primary.start();

        // Pinned to the standby's cluster, whose data directory exists only after
        // pg_basebackup: write the config now, add conninfo and start the receiver after it.
        let standby_dir = sc.path("standby");
        let setup = receiver_config(&sc, "receiver", &certs, Some(&standby_dir));
        let sender = sender_for(&sc, "sender", &setup, &certs);
        let restore_command = format!(
            "restore_command = '{} --config {} restore %f %p'",
            sc.bin("walship-receiver").display(),
            setup.config.display()
        );
        let hot = format!(
            "hot_standby = {}",
            if opts.hot_standby { "on" } else { "off" }
        );
        // The standby does not archive (it would need a receiver of its own) unless the
        // scenario takes the way back; it retries a missing segment every 200 ms instead of
        // every 5 s, so it follows the archive closely.
        let archive_mode = if opts.way_back {
            "archive_mode = on"
        } else {
            "archive_mode = off"
        };
        let mut standby = primary.basebackup_standby(
            "standby",
            &[
                &hot,
                archive_mode,
                "wal_retrieve_retry_interval = '200ms'",
                &restore_command,
            ],
        );
        append_conninfo(&setup.config, &conninfo(&sc, standby.port()));
        let rx = Receiver::spawn(&sc, &setup.config, "receiver");
        if opts.archive {
            primary.archive_with_push(&sender);
        }
        standby.start();
        Pair {
            rx,
            standby,
            primary,
            setup,
            sender,
            certs,
            sc,
        }
    }

    /// `walship-receiver --config RECEIVER promote ARGS`.
    pub fn promote(&self, args: &[&str]) -> Output {
        run_receiver(&self.sc, &self.setup.config, "promote", args)
    }

    /// `walship-receiver --config RECEIVER status --json`, required to exit 0 and parse.
    pub fn status(&self) -> Value {
        status_json(&self.sc, &self.setup.config)
    }

    /// Switch the primary to a new segment; the name of the segment just completed.
    pub fn switch_segment(&self) -> String {
        let lsn = self.primary.switch_wal();
        self.primary.walfile_name(&lsn)
    }

    /// Wait until the primary's archiver reports `segment` (or a later one) archived; returns
    /// `(archived_count, failed_count)`.
    pub fn wait_archived(&self, segment: &str) -> (u64, u64) {
        let query = "select archived_count, failed_count, coalesce(last_archived_wal, '') \
                     from pg_stat_archiver";
        let got = wait_for(CATCH_UP, || {
            let s = self.primary.sql(query);
            let f: Vec<&str> = s.split('|').collect();
            if f.len() == 3 && f[2].len() == 24 && f[2] >= segment {
                let n = |i: usize| f[i].parse::<u64>().expect("pg_stat_archiver count");
                return Some((n(0), n(1)));
            }
            std::thread::sleep(POLL);
            None
        });
        got.unwrap_or_else(|| {
            panic!(
                "the primary did not archive {segment} within {CATCH_UP:?}: {}",
                self.primary.sql("select * from pg_stat_archiver")
            )
        })
    }

    /// Wait until the (hot) standby replayed up to `lsn`.
    pub fn wait_replayed(&self, lsn: &str) {
        let probe = format!("select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
        let mut last = String::new();
        let done = wait_for(CATCH_UP, || {
            match self.standby.try_sql(&probe) {
                Ok(s) if s == "t" => return Some(()),
                Ok(s) => last = s,
                Err(out) => last = out.stderr.trim().to_string(),
            }
            std::thread::sleep(POLL);
            None
        });
        assert!(
            done.is_some(),
            "the standby did not replay up to {lsn} within {CATCH_UP:?}; last answer {last:?}; \
             replay LSN {:?}",
            self.standby.try_sql("select pg_last_wal_replay_lsn()")
        );
    }

    /// Wait until `status --json` says `restore` last missed `segment`: the standby consumed
    /// everything before it and asks for it. Works for warm standbys too.
    pub fn wait_restore_missed(&self, segment: &str) -> Value {
        let mut last = Value::Null;
        let got = wait_for(CATCH_UP, || {
            let st = self.status();
            if st["restore"]["last_missed"].as_str() == Some(segment) {
                return Some(st);
            }
            last = st;
            std::thread::sleep(POLL);
            None
        });
        got.unwrap_or_else(|| {
            panic!(
                "the standby did not ask for {segment} within {CATCH_UP:?}; last status:\n{last:#}"
            )
        })
    }

    /// `pg_ctl stop -m immediate` on the primary: a crash, as far as its WAL is concerned.
    pub fn crash_primary(&self) {
        pg_ctl_stop_immediate(&self.sc, &self.primary);
    }

    /// Another receiver config for the same archive and certificates, with `conninfo` replaced
    /// (`None`: no conninfo line at all). Written as `<scenario>/<name>.toml`.
    pub fn config_variant(&self, name: &str, conninfo: Option<&str>) -> PathBuf {
        let text = fs::read_to_string(&self.setup.config).expect("read receiver config");
        let mut out: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("conninfo"))
            .map(|l| format!("{l}\n"))
            .collect();
        if let Some(c) = conninfo {
            out.push_str(&format!("conninfo = {}\n", toml_str(c)));
        }
        let path = self.sc.path(&format!("{name}.toml"));
        self.sc.write_at(&path, out, 0o644);
        path
    }
}

/// A libpq connection string for a cluster of this scenario (Unix socket in its directory).
pub fn conninfo(sc: &Scenario, port: u16) -> String {
    format!(
        "host={} port={port} user=postgres dbname=postgres",
        sc.dir().display()
    )
}

/// Add `conninfo = "..."` to a receiver config.
pub fn append_conninfo(config: &Path, conninfo: &str) {
    let mut f = OpenOptions::new()
        .append(true)
        .open(config)
        .unwrap_or_else(|e| panic!("open {}: {e}", config.display()));
    writeln!(f, "conninfo = {}", toml_str(conninfo)).expect("append conninfo");
}

/// `walship-receiver --config CONFIG SUBCOMMAND ARGS`, with the contract's exit-code ceiling.
pub fn run_receiver(sc: &Scenario, config: &Path, subcommand: &str, args: &[&str]) -> Output {
    let cmd = sc
        .cmd(sc.bin("walship-receiver"))
        .arg("--config")
        .arg(config)
        .arg(subcommand)
        .args(args)
        .timeout(PROMOTE_DEADLINE);
    let out = sc.run(&cmd);
    let code = out.code();
    assert!(
        (0..=MAX_EXIT_CODE).contains(&code),
        "exit code {code} is outside 0..={MAX_EXIT_CODE}\n{out}"
    );
    out
}

/// `status --json` through `config`: exit 0 and valid JSON, or the test fails.
pub fn status_json(sc: &Scenario, config: &Path) -> Value {
    let out = run_receiver(sc, config, "status", &["--json"]);
    out.assert_code(0);
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json printed invalid JSON ({e})\n{out}"))
}

/// `pg_ctl stop -m immediate`. The cluster's `Drop` tries again and finds nothing running.
pub fn pg_ctl_stop_immediate(sc: &Scenario, cluster: &PgCluster) {
    let cmd = sc
        .cmd(sc.pg_tool("pg_ctl"))
        .arg("-D")
        .arg(cluster.data_dir())
        .args(["-w", "-t", "60", "-m", "immediate", "stop"]);
    sc.run(&cmd).assert_success();
}

/// A digest of everything pgbench keeps: counts and sums of all four tables, and an md5 over
/// every account balance in order. Equal digests mean equal data.
pub fn pgbench_digest(cluster: &PgCluster) -> String {
    cluster.sql(
        "select (select count(*) || ':' || sum(abalance) from pgbench_accounts) \
         || ' ' || (select count(*) || ':' || sum(bbalance) from pgbench_branches) \
         || ' ' || (select count(*) || ':' || sum(tbalance) from pgbench_tellers) \
         || ' ' || (select count(*) || ':' || coalesce(sum(delta), 0) from pgbench_history) \
         || ' ' || (select md5(string_agg(aid || '=' || abalance, ',' order by aid)) \
                    from pgbench_accounts) \
         || ' ' || (select md5(coalesce(string_agg(tid || '/' || bid || '/' || aid || '/' || delta, \
                    ',' order by tid, bid, aid, delta, mtime), '')) from pgbench_history)",
    )
}

/// An LSN (`X/Y`, hex) as a number.
pub fn parse_lsn(lsn: &str) -> u64 {
    let (hi, lo) = lsn
        .trim()
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {lsn:?}"));
    let hi = u64::from_str_radix(hi, 16).unwrap_or_else(|e| panic!("LSN {lsn:?}: {e}"));
    let lo = u64::from_str_radix(lo, 16).unwrap_or_else(|e| panic!("LSN {lsn:?}: {e}"));
    (hi << 32) | lo
}

/// The segment after `name` on the same timeline (16 MiB segments: 256 per log file).
pub fn next_segment(name: &str) -> String {
    assert_eq!(name.len(), 24, "not a segment name: {name:?}");
    let part = |r: std::ops::Range<usize>| {
        u32::from_str_radix(&name[r], 16).unwrap_or_else(|e| panic!("segment {name:?}: {e}"))
    };
    let (tli, mut log, mut seg) = (part(0..8), part(8..16), part(16..24));
    seg += 1;
    if seg == 0x100 {
        seg = 0;
        log += 1;
    }
    format!("{tli:08X}{log:08X}{seg:08X}")
}

/// The seconds in promote's "promoted: the standby is writable after X.Ys" line.
pub fn writable_after(out: &Output) -> f64 {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("promoted: the standby is writable after "))
        .and_then(|rest| rest.trim().strip_suffix('s'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("promote printed no \"writable after\" line\n{out}"))
}

/// A stdout line of promote starting with `prefix`, without the prefix.
pub fn promote_line<'a>(out: &'a Output, prefix: &str) -> &'a str {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("promote printed no line starting {prefix:?}\n{out}"))
}

/// The timeline part (first 8 hex digits) of the WAL file the cluster writes now.
pub fn current_timeline(cluster: &PgCluster) -> String {
    cluster.sql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
}

/// Require that a promoted cluster is a primary: out of recovery, on timeline 2, writable.
pub fn assert_promoted(cluster: &PgCluster) {
    assert_eq!(
        cluster.sql("select pg_is_in_recovery()"),
        "f",
        "{} is still in recovery",
        cluster.name()
    );
    assert_eq!(current_timeline(cluster), "00000002", "timeline");
    cluster.sql("create table after_promotion (id int primary key, note text)");
    cluster.sql("insert into after_promotion values (1, 'written after promote')");
    assert_eq!(
        cluster.sql("select note from after_promotion where id = 1"),
        "written after promote"
    );
}
