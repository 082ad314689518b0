//! `walship-receiver check`: does the standby host's side of the pair work right now? One line
//! per check (`ok`, `WARN`, `FAIL` with the fix); exit 0 when nothing failed.
//!
//! Whether `serve` runs is read from its lock on `walship.lock` (held exclusively for its whole
//! life): a non-blocking shared `flock` attempt on a read-only, link-free, non-blocking open
//! fails only while a `serve` holds it, and never makes `serve` wait. With `conninfo`, the
//! standby is asked whether it is in recovery, what its restore_command runs and its system
//! identifier; with `pgdata` only, the identifier is read from its `global/pg_control`.

use std::fs;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::Client;
use walship_common::check::{judge_command, judge_identity, Expected, Report, Verdict};
use walship_common::state::LOCK_FILE;
use walship_common::sys::check::{self as files, PathResolver};
use walship_common::sys::config::ReceiverSettings;
use walship_common::sys::tls;
use walship_common::SystemId;

use crate::standby::{self, Connected};
use crate::state;

/// How long to wait for the standby's answer.
const STANDBY_TIMEOUT: Duration = Duration::from_secs(10);

/// Run every check, printing each line as it is decided; the exit code (0 passed, 1 failed).
pub fn command(config: Option<&Path>, cluster: Option<&str>) -> u8 {
    let mut report = Report::default();
    let mut note = |what: String, verdict: Verdict| println!("{}", report.add(what, verdict));
    let load = |p: &Path| ReceiverSettings::load_cluster(p, cluster);
    let Some(settings) = files::settings(config, load, &mut note) else {
        return 1;
    };
    files::tls_files(
        &settings.key,
        &[
            ("certificate", &settings.cert),
            ("client CA", &settings.client_ca),
        ],
        &mut note,
    );
    let pair = match tls::server_config(&settings.cert, &settings.key, &settings.client_ca) {
        Ok(_) => Verdict::Ok("certificate, key and client CA load together".into()),
        Err(e) => Verdict::fail(e.to_string(), ""),
    };
    note("TLS setup".into(), pair);
    let dir = &settings.archive_dir;
    note(format!("archive_dir {}", dir.display()), writable(dir));
    note("serve".into(), serve(dir));
    if settings.conninfo.is_some() || settings.pgdata.is_some() {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(standby_checks(&settings, &mut note)),
            Err(e) => note(
                "runtime".into(),
                Verdict::fail(e.to_string(), "check free memory"),
            ),
        }
    }
    u8::from(report.failed())
}

/// A directory this user may create files in.
fn writable(dir: &Path) -> Verdict {
    use rustix::fs::{access, Access};
    match fs::metadata(dir) {
        Err(e) => {
            return Verdict::fail(e.to_string(), "create it, owned by the user serve runs as")
        }
        Ok(m) if !m.is_dir() => {
            return Verdict::fail("not a directory", "set archive_dir to a directory")
        }
        Ok(_) => {}
    }
    match access(dir, Access::WRITE_OK | Access::EXEC_OK) {
        Ok(()) => Verdict::Ok("writable".into()),
        Err(e) => Verdict::fail(
            format!(
                "not writable by this user (uid {}): {e}",
                rustix::process::getuid().as_raw()
            ),
            "run check as the user serve runs as, or give that user the directory (chown)",
        ),
    }
}

fn serve(dir: &Path) -> Verdict {
    match crate::state::serve_running(dir) {
        Ok(Some(pid)) => Verdict::Ok(format!("running (pid {pid}), holding {LOCK_FILE}")),
        Ok(None) => Verdict::fail(
            format!(
                "not running: nothing holds {}",
                dir.join(LOCK_FILE).display()
            ),
            "start it (systemctl start walship-receiver, or walship-receiver serve)",
        ),
        Err(e) => Verdict::fail(
            format!("cannot tell whether serve runs: {e}"),
            "run check as the user serve runs as",
        ),
    }
}

/// The standby: in recovery, restore_command, system identifier against the pin.
async fn standby_checks(settings: &ReceiverSettings, note: &mut impl FnMut(String, Verdict)) {
    let client = match &settings.conninfo {
        None => None,
        Some(conninfo) => match standby::connect(conninfo, STANDBY_TIMEOUT).await {
            Ok(Connected::Client(c)) => Some(c),
            Ok(Connected::WarmStandby) => {
                note("standby".into(), Verdict::Warn("it refuses connections during recovery (hot_standby = off), so it is in recovery; restore_command was not checked (SQL needs a hot standby)".into()));
                None
            }
            Err(e) => {
                let fix = format!("check `conninfo` in {}", settings.config_path.display());
                note("standby".into(), Verdict::fail(e.to_string(), fix));
                None
            }
        },
    };
    if let Some(client) = &client {
        note("standby in recovery".into(), in_recovery(client).await);
        note(
            "restore_command".into(),
            restore_command(settings, client).await,
        );
    }
    let pin = match state::read_pin(&settings.archive_dir) {
        Ok(pin) => pin,
        Err(e) => return note("cluster pin".into(), Verdict::fail(e.to_string(), "")),
    };
    let id = match (&settings.pgdata, &client) {
        (Some(pgdata), _) => {
            walship_common::sys::pg_control::read_system_id(pgdata).map_err(|e| e.to_string())
        }
        (None, Some(client)) => system_id(client).await,
        (None, None) => return,
    };
    match id {
        Ok(id) => note("standby cluster".into(), judge_identity(pin, id)),
        Err(e) => note(
            "standby cluster".into(),
            Verdict::fail(e, "check pgdata and conninfo"),
        ),
    }
}

async fn in_recovery(client: &Client) -> Verdict {
    match standby::probe(client).await {
        Ok(p) if p.in_recovery => Verdict::Ok("pg_is_in_recovery() is true".into()),
        Ok(_) => Verdict::fail(
            "pg_is_in_recovery() is false: it is a primary now",
            "point conninfo at the standby, or, after a promotion, set up a new standby",
        ),
        Err(e) => Verdict::fail(e.to_string(), ""),
    }
}

async fn restore_command(settings: &ReceiverSettings, client: &Client) -> Verdict {
    let command = match standby::text(client, "SHOW restore_command").await {
        Ok(c) => c,
        Err(e) => return Verdict::fail(e.to_string(), ""),
    };
    let data_dir = match standby::text(client, "SHOW data_directory").await {
        Ok(d) => Some(PathBuf::from(d)),
        Err(_) => settings.pgdata.clone(),
    };
    let resolver = PathResolver::new(data_dir, &settings.config_path);
    let (program, config) = (
        resolver.exe.display().to_string(),
        resolver.config.display().to_string(),
    );
    // Many clusters: the standby names its own (`restore --cluster NAME %f %p`).
    let rest: Vec<&str> = match &settings.cluster {
        Some(name) => vec!["restore", "--cluster", name, "%f", "%p"],
        None => vec!["restore", "%f", "%p"],
    };
    let expect = Expected {
        setting: "restore_command",
        program_name: "walship-receiver",
        program: &program,
        config: &config,
        rest: &rest,
    };
    judge_command(&command, &expect, &resolver)
}

async fn system_id(client: &Client) -> Result<SystemId, String> {
    const SQL: &str = "SELECT system_identifier FROM pg_control_system()";
    client
        .query_one(SQL, &[])
        .await
        .and_then(|r| r.try_get::<_, i64>(0))
        .map(|id| SystemId(id as u64))
        .map_err(|e| format!("{SQL}: {e}"))
}
