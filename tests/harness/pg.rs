//! A PostgreSQL cluster for tests: `initdb`, `pg_ctl start/stop`, `psql -At`, `pg_switch_wal()`
//! and a standby made with `pg_basebackup`.
//!
//! Each cluster listens only on a Unix socket in the scenario directory (`listen_addresses = ''`),
//! on a port picked free for the scenario, and logs to `<scenario>/<name>.log` (through
//! `pg_ctl -l`), which the failure report prints. `Drop` stops a running server with
//! `pg_ctl stop -m immediate`: a test that panics leaves no postmaster behind.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::net::free_tcp_port;
use crate::process::Output;
use crate::scenario::Scenario;

/// How long to wait for a server to start or stop.
const PG_CTL_WAIT: Duration = Duration::from_secs(60);

/// postgresql.conf lines for a primary that archives, with the command left empty: PostgreSQL
/// then keeps completed segments as `.ready` (nothing fails) until a command is set.
pub const ARCHIVE_PAUSED: [&str; 3] = [
    "wal_level = replica",
    "archive_mode = on",
    "archive_command = ''",
];

/// One cluster: its data directory, port and server log.
pub struct PgCluster {
    sc: Scenario,
    name: String,
    data: PathBuf,
    port: u16,
    running: bool,
}

impl PgCluster {
    /// `initdb` a new cluster named `name` in the scenario directory and append `conf` lines
    /// to its postgresql.conf. Not started.
    pub fn init(sc: &Scenario, name: &str, conf: &[&str]) -> PgCluster {
        PgCluster::init_with(sc, name, &[], conf)
    }

    /// A primary whose completed segments wait as `.ready` until the scenario sets
    /// `archive_command` ([`ARCHIVE_PAUSED`]), with `conf` appended after those lines.
    pub fn init_archive_paused(
        sc: &Scenario,
        name: &str,
        initdb_args: &[&str],
        conf: &[&str],
    ) -> PgCluster {
        let conf: Vec<&str> = ARCHIVE_PAUSED.iter().chain(conf).copied().collect();
        PgCluster::init_with(sc, name, initdb_args, &conf)
    }

    /// [`init`](Self::init) with extra `initdb` arguments (for example `--wal-segsize=64`).
    pub fn init_with(sc: &Scenario, name: &str, initdb_args: &[&str], conf: &[&str]) -> PgCluster {
        let data = sc.path(name);
        let initdb = sc
            .cmd(sc.pg_tool("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .args(initdb_args);
        sc.run(&initdb).assert_success();
        let pg = PgCluster {
            sc: sc.clone(),
            name: name.into(),
            data,
            port: free_tcp_port(),
            running: false,
        };
        let mut base = format!(
            "\n# walship e2e: {name}\nport = {}\nlisten_addresses = ''\nunix_socket_directories = '{}'\n",
            pg.port,
            sc.dir().display()
        );
        // The tests check behaviour, not durability of the cluster itself: skip its fsyncs.
        base.push_str("fsync = off\nmax_connections = 20\nshared_buffers = 16MB\n");
        pg.append_conf(&base);
        let mut extra = String::new();
        for line in conf {
            let _ = writeln!(extra, "{line}");
        }
        pg.append_conf(&extra);
        pg
    }

    /// A standby of this (running) cluster, made with `pg_basebackup -X stream` into a new data
    /// directory `name`, with `standby.signal`, its own port, and `conf` appended (for example
    /// `restore_command`). Not started.
    pub fn basebackup_standby(&self, name: &str, conf: &[&str]) -> PgCluster {
        let sc = &self.sc;
        let data = sc.path(name);
        let cmd = sc
            .cmd(sc.pg_tool("pg_basebackup"))
            .arg("-h")
            .arg(sc.dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args([
                "-U",
                "postgres",
                "-c",
                "fast",
                "-X",
                "stream",
                "--no-sync",
                "-D",
            ])
            .arg(&data);
        sc.run(&cmd).assert_success();
        let standby = PgCluster {
            sc: sc.clone(),
            name: name.into(),
            data,
            port: free_tcp_port(),
            running: false,
        };
        fs::write(standby.data.join("standby.signal"), b"").expect("write standby.signal");
        sc.user().chown(&standby.data.join("standby.signal"));
        let mut extra = format!("\n# walship e2e: standby {name}\nport = {}\n", standby.port);
        for line in conf {
            let _ = writeln!(extra, "{line}");
        }
        standby.append_conf(&extra);
        standby
    }

    /// A cluster whose data directory `name` exists already (made by `walship-sender
    /// basebackup`), with its own port and `conf` appended. Not started.
    pub fn adopt(sc: &Scenario, name: &str, conf: &[&str]) -> PgCluster {
        let pg = PgCluster {
            sc: sc.clone(),
            name: name.into(),
            data: sc.path(name),
            port: free_tcp_port(),
            running: false,
        };
        let mut extra = format!("\n# walship e2e: adopted {name}\nport = {}\n", pg.port);
        for line in conf {
            let _ = writeln!(extra, "{line}");
        }
        pg.append_conf(&extra);
        pg
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.data.join("pg_wal")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server log, printed by the failure report.
    pub fn log_path(&self) -> PathBuf {
        self.sc.path(&format!("{}.log", self.name))
    }

    /// Append text to postgresql.conf (later settings win).
    pub fn append_conf(&self, text: &str) {
        let mut f = OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        f.write_all(text.as_bytes())
            .expect("append to postgresql.conf");
    }

    /// `pg_ctl start -w`: returns once the server accepts connections.
    pub fn start(&mut self) {
        let cmd = self
            .sc
            .cmd(self.sc.pg_tool("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", &PG_CTL_WAIT.as_secs().to_string(), "start"])
            .timeout(PG_CTL_WAIT + Duration::from_secs(10));
        // Mark running first: if pg_ctl times out, Drop still stops what it may have started.
        self.running = true;
        self.sc.run(&cmd).assert_success();
    }

    /// `pg_ctl stop -m fast`.
    pub fn stop(&mut self) {
        if self.running {
            let out = self.sc.run(&self.pg_ctl_stop("fast"));
            self.running = false;
            out.assert_success();
        }
    }

    /// Run one statement through `psql -XAt`; panics (with psql's stderr) if it fails.
    pub fn sql(&self, query: &str) -> String {
        match self.try_sql(query) {
            Ok(s) => s,
            Err(out) => panic!("SQL failed on {}: {query}\n{out}", self.name),
        }
    }

    /// Like [`sql`](Self::sql), but a failure is returned (for polling a starting standby).
    pub fn try_sql(&self, query: &str) -> Result<String, Output> {
        let out = self.sc.run(&self.psql(query));
        if out.success() {
            Ok(out.stdout.trim_end_matches('\n').to_string())
        } else {
            Err(out)
        }
    }

    /// Archive through `walship-sender --config <sender> push %p %f` (ALTER SYSTEM, reload).
    pub fn archive_with_push(&self, sender: &Path) {
        let command = format!(
            "{} --config {} push %p %f",
            self.sc.bin("walship-sender").display(),
            sender.display()
        );
        self.sql(&format!("alter system set archive_command = '{command}'"));
        self.sql("select pg_reload_conf()");
    }

    /// `select pg_switch_wal()`: the LSN (as text) just past the switch record.
    pub fn switch_wal(&self) -> String {
        self.sql("select pg_switch_wal()")
    }

    /// The WAL file name that holds `lsn` on the current timeline.
    pub fn walfile_name(&self, lsn: &str) -> String {
        self.sql(&format!("select pg_walfile_name('{lsn}')"))
    }

    /// `pgbench` against database postgres with `args` (for example `-i -s 2`).
    pub fn pgbench(&self, args: &[&str]) -> Output {
        let cmd = self
            .sc
            .cmd(self.sc.pg_tool("pgbench"))
            .arg("-h")
            .arg(self.sc.dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres"])
            .args(args)
            .arg("postgres")
            .timeout(Duration::from_secs(180));
        let out = self.sc.run(&cmd);
        out.assert_success();
        out
    }

    fn psql(&self, query: &str) -> crate::process::Cmd {
        self.sc
            .cmd(self.sc.pg_tool("psql"))
            .arg("-h")
            .arg(self.sc.dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args([
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-XAt",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                query,
            ])
            .timeout(Duration::from_secs(60))
    }

    fn pg_ctl_stop(&self, mode: &str) -> crate::process::Cmd {
        self.sc
            .cmd(self.sc.pg_tool("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args([
                "-w",
                "-t",
                &PG_CTL_WAIT.as_secs().to_string(),
                "-m",
                mode,
                "stop",
            ])
            .timeout(PG_CTL_WAIT + Duration::from_secs(10))
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            // Never panic in Drop: report and go on.
            let out = self.pg_ctl_stop("immediate").run();
            if !out.success() && self.data.join("postmaster.pid").exists() {
                eprintln!("could not stop cluster {}:\n{out}", self.name);
            }
        }
    }
}
