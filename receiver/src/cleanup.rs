//! `walship-receiver cleanup [--dry-run] %r`: the standby's `archive_cleanup_command`. Removes
//! the archived WAL the standby no longer needs; what goes is decided in
//! [`walship_common::retention`] (the rule of `pg_archivecleanup`, plus `retain_for`), this
//! driver lists archive_dir, removes and logs.
//!
//! PostgreSQL runs it after each restartpoint, from the checkpointer, and puts its stderr in the
//! server log, so what it prints is for a DBA reading that log: one line per file removed (its
//! name and size), one summary line (files and bytes freed, files kept by `retain_for`, entries
//! that are not regular files), and nothing at all when nothing precedes `%r`. With `RUST_LOG`
//! set (e.g. `debug`), why each file stayed is logged too.
//!
//! Exit codes: 0 done (also when there was nothing to remove); 2 `%r` is not a WAL file name
//! (nothing removed); 1 anything else (config, archive_dir unreadable, a removal refused).
//! PostgreSQL only logs a WARNING when `archive_cleanup_command` fails and tries again at the
//! next restartpoint; recovery goes on.
//!
//! Races: the receiver only ever adds files (a temp name, then a link under the WAL name, never
//! replacing one), and a file it stores during a cleanup is newer than `%r`. Cleanup never
//! touches names that are not WAL names (temp files included), decides from `lstat` (a link is
//! never followed: it is left and reported), and a name that vanished meanwhile is skipped.

use std::fs;
use std::io;
use std::path::Path;
use std::time::SystemTime;

use walship_common::retention::{self, Decision, Kept, Policy, StoredFile, Summary, Verdict};
use walship_common::sys::config::{self, ReceiverSettings};
use walship_common::sys::durable;
use walship_common::{SegmentName, WalFileName};

use crate::error::ReceiverError;

/// Exit code for a `%r` that is not a WAL file name, as `pg_archivecleanup`'s.
pub const EXIT_BAD_NAME: u8 = 2;

/// The whole command: parse `%r`, load the config, clean up, print. Returns the exit code.
pub fn command(config: Option<&Path>, cluster: Option<&str>, restart: &str, dry_run: bool) -> u8 {
    let segment = match retention::restart_segment(restart) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "walship-receiver: cleanup {restart:?} refused: {e}; archive_cleanup_command passes %r, the WAL file of the standby's last restartpoint (e.g. 000000010000000000000010); nothing was removed"
            );
            return EXIT_BAD_NAME;
        }
    };
    let result = config::require(config)
        .and_then(|p| ReceiverSettings::load_cluster(p, cluster))
        .map_err(ReceiverError::from)
        .and_then(|s| cleanup(&s, segment, dry_run, SystemTime::now()));
    match result {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("walship-receiver: {e}");
            1
        }
    }
}

/// Remove (or, with `dry_run`, print on stdout) every file of archive_dir that precedes
/// `restart`, as of `now`. Logs each removal and a summary on stderr; the directory is fsynced
/// once at the end, so the removals are durable when this returns `Ok`.
pub fn cleanup(
    settings: &ReceiverSettings,
    restart: SegmentName,
    dry_run: bool,
    now: SystemTime,
) -> Result<Summary, ReceiverError> {
    let dir = &settings.archive_dir;
    let files = list(dir)?;
    let policy = Policy {
        restart,
        retain_for: settings.retain_for,
        now,
    };
    let mut decisions = retention::plan(&files, &policy);
    if settings.object_store.is_some() {
        // Never remove what the bucket does not have yet.
        let record = crate::objstore::read_record(dir)?;
        for d in &mut decisions {
            if d.verdict == Verdict::Remove {
                let uploaded = d
                    .file
                    .name
                    .parse::<WalFileName>()
                    .is_ok_and(|n| walship_common::upload_queue::uploaded(&record, &n));
                if !uploaded {
                    d.verdict = Verdict::Keep(Kept::NotUploaded);
                }
            }
        }
    }
    let mut summary = retention::summarize(&decisions, &policy, dry_run);
    let (removed, bytes, failed) = carry_out(dir, &decisions, dry_run);
    summary.removed = removed;
    summary.bytes = bytes;
    // One fsync of the directory for all the unlinks: after it, a crash cannot bring them back.
    let synced = if removed > 0 && !dry_run {
        durable::sync_dir(dir).map_err(ReceiverError::from)
    } else {
        Ok(())
    };
    if summary.is_noteworthy() {
        let command = if dry_run {
            "cleanup --dry-run"
        } else {
            "cleanup"
        };
        eprintln!("walship-receiver: {command}: {summary}");
    }
    let bucket = match &settings.object_store {
        Some(o) if failed.is_none() => bucket_cleanup(o, &policy, dry_run).err(),
        _ => None,
    };
    match failed.or(bucket) {
        Some(e) => Err(e),
        None => synced.map(|()| summary),
    }
}

/// The same rule (`%r` and `retain_for`, measured on the objects' last-modified times) applied
/// to the bucket: its objects before `%r` go, oldest first; with `dry_run` their URLs are
/// printed instead. One summary line when anything went.
fn bucket_cleanup(
    o: &walship_common::sys::config::ObjectStoreSettings,
    policy: &Policy,
    dry_run: bool,
) -> Result<(), ReceiverError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ReceiverError::Task(e.to_string()))?;
    let bucket = crate::objstore::Bucket::open(o)?;
    runtime.block_on(async {
        let files: Vec<StoredFile> = bucket
            .list()
            .await?
            .into_iter()
            .map(|f| StoredFile {
                name: f.name.to_string(),
                bytes: f.bytes,
                stored_at: f.last_modified,
                regular: true,
            })
            .collect();
        let (mut removed, mut bytes) = (0u64, 0u64);
        for d in retention::plan(&files, policy) {
            if d.verdict != Verdict::Remove {
                continue;
            }
            if dry_run {
                println!("{}/{}.zst", o.url.trim_end_matches('/'), d.file.name);
                continue;
            }
            bucket.remove(&d.file.name).await?;
            removed += 1;
            bytes += d.file.bytes;
        }
        if removed > 0 {
            eprintln!(
                "walship-receiver: cleanup: removed {removed} objects ({}) before {} from {}",
                walship_common::human::size(bytes),
                policy.restart,
                o.url
            );
        }
        Ok(())
    })
}

/// Every WAL-named entry of archive_dir, from `lstat`. Other names (walship's state files, temp
/// files) are not even looked at.
fn list(dir: &Path) -> Result<Vec<StoredFile>, ReceiverError> {
    let failed = |source: io::Error| ReceiverError::Cleanup {
        action: "list archive_dir",
        path: dir.to_path_buf(),
        source,
        advice:
            "; check archive_dir in the config and that this user may read it (nothing was removed)",
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(failed)? {
        let entry = entry.map_err(failed)?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.parse::<WalFileName>().is_err() {
            continue;
        }
        // DirEntry::metadata is lstat: a link is described, never followed.
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(failed(e)),
        };
        files.push(StoredFile {
            name,
            bytes: meta.len(),
            stored_at: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            regular: meta.file_type().is_file(),
        });
    }
    Ok(files)
}

/// Remove the files the plan says go, oldest first, stopping at the first failure (the cause,
/// a permission or a read-only file system, would hold for the rest). Returns the files and
/// bytes removed and the failure, if any.
fn carry_out(
    dir: &Path,
    decisions: &[Decision],
    dry_run: bool,
) -> (u64, u64, Option<ReceiverError>) {
    let (mut removed, mut bytes) = (0, 0);
    for d in decisions {
        let name = &d.file.name;
        let path = dir.join(name);
        match d.verdict {
            Verdict::Keep(Kept::NotRegular) => {
                if let Ok(meta) = fs::symlink_metadata(&path) {
                    if let Err(e) = durable::check_regular(&path, &meta) {
                        eprintln!("walship-receiver: cleanup: left {e}");
                    }
                }
                continue;
            }
            Verdict::Keep(why) => {
                tracing::debug!(%name, ?why, "kept");
                continue;
            }
            Verdict::Remove if dry_run => println!("{name}"),
            // unlink removes the name itself, never what a link points to.
            Verdict::Remove => match fs::remove_file(&path) {
                Ok(()) => eprintln!(
                    "walship-receiver: cleanup: removed {name} ({})",
                    walship_common::human::size(d.file.bytes)
                ),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tracing::debug!(%name, "already gone");
                    continue;
                }
                Err(source) => {
                    let advice = if source.kind() == io::ErrorKind::PermissionDenied {
                        "; archive_cleanup_command runs as the standby's user, which needs write permission on archive_dir (or run cleanup as the receiver's user)"
                    } else {
                        ""
                    };
                    let e = ReceiverError::Cleanup {
                        action: "remove",
                        path,
                        source,
                        advice,
                    };
                    return (removed, bytes, Some(e));
                }
            },
        }
        removed += 1;
        bytes += d.file.bytes;
    }
    (removed, bytes, None)
}
