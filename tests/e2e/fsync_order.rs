//! The power-loss order of a stored segment, read from the receiver's system calls.
//!
//! `walship-receiver serve` runs under `strace -f` (every thread, the blocking pool included)
//! while a real `walship-sender push` stores one real segment. From the trace, for that segment:
//!
//! 1. the temp file `.walship-tmp.NAME.*` gets all the bytes and is `fsync`ed,
//! 2. only then is it `linkat`ed to NAME (nothing else ever writes under NAME),
//! 3. the temp name is unlinked and the archive directory is `fsync`ed after the link,
//! 4. and the directory fsync has returned before the sender (traced too, same clock: strace's
//!    `-ttt` is CLOCK_REALTIME in both) exits 0 with the reply in hand, and the receiver sends
//!    datagrams (the reply) after it.
//!
//! The reply cannot be picked out of the trace by content (it is encrypted), so (4) is the
//! observable half; the other half is the code: in receiver/src/serve.rs `receive` returns the
//! reply only from `archive.commit(tmp, &verified)` (run on the blocking pool and awaited), and
//! `stream` writes it to the QUIC stream after that. `Archive::commit` (receiver/src/store.rs)
//! returns `Reply::Stored` only after `TempFile::publish` (common/src/durable.rs) returned, and
//! `publish` calls `sync_dir` as its last step. So no reply exists before the directory fsync.
//!
//! Needs `strace` (`apt-get install strace`); without it the test fails and says so.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use walship_tests::process::{terminate, wait_deadline, wait_for};
use walship_tests::walship::{receiver_config, sender_for};
use walship_tests::{donors, CertSet, Scenario};

/// System calls traced in the receiver: files, links, fsyncs, and datagrams going out.
const RECEIVER_SYSCALLS: &str = "trace=openat,close,write,pwrite64,fsync,fdatasync,link,linkat,\
                                 rename,renameat,renameat2,unlink,unlinkat,sendmsg,sendmmsg,sendto";

#[test]
fn fsync_order() {
    let strace = strace_path();
    let seg = &donors().home[0];
    let sc = Scenario::new("fsync_order");
    let certs = CertSet::create(&sc, "certs");
    let setup = receiver_config(&sc, "receiver", &certs, None);
    let sender = sender_for(&sc, "sender", &setup, &certs);
    let archive = fs::canonicalize(&setup.archive_dir).expect("canonical archive path");

    // The receiver, traced from its first instruction: `-f` follows every thread, `-y` prints
    // the path behind each file descriptor, `-s 512` keeps paths whole, `-T` gives durations.
    let rx_trace = sc.path("receiver.strace");
    let mut rx = Traced::spawn(
        &sc,
        sc.cmd(&strace)
            .args([
                "-f",
                "-ttt",
                "-T",
                "-y",
                "-s",
                "512",
                "-e",
                RECEIVER_SYSCALLS,
            ])
            .arg("-o")
            .arg(&rx_trace)
            .arg(sc.bin("walship-receiver"))
            .arg("--config")
            .arg(&setup.config)
            .arg("serve"),
        &sc.path("receiver.log"),
    );

    // One real segment, pushed by the real sender, itself traced for its exit time.
    let tx_trace = sc.path("sender.strace");
    let path = seg.write_to(&sc, "segment");
    let push = sc
        .cmd(&strace)
        .args(["-f", "-ttt", "-e", "trace=exit_group", "-o"])
        .arg(&tx_trace)
        .arg(sc.bin("walship-sender"))
        .arg("--config")
        .arg(&sender)
        .arg("push")
        .arg(&path)
        .arg(&seg.name)
        .timeout(Duration::from_secs(60));
    let out = sc.run(&push);
    out.assert_code(0);
    assert_eq!(
        fs::read(archive.join(&seg.name)).expect("read the stored segment"),
        seg.bytes,
        "the stored segment differs from the pushed one"
    );

    // SIGTERM the receiver and let strace finish writing the trace.
    rx.stop();
    let log = fs::read_to_string(sc.path("receiver.log")).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("segment=\"{}\"", seg.name))
                && l.contains("walship_receiver::serve: stored ms=")),
        "the receiver log has no \"stored\" line for {}:\n{log}",
        seg.name
    );

    let calls = parse_trace(&fs::read_to_string(&rx_trace).expect("read the receiver trace"));
    let sender_exit = sender_exit_time(&fs::read_to_string(&tx_trace).expect("read sender trace"));
    let order = check_order(
        &calls,
        &archive,
        &seg.name,
        seg.bytes.len() as u64,
        sender_exit,
    );
    eprintln!("fsync_order: the trace lines asserted on:\n{order}");
}

/// Where strace is; a missing strace fails the test with the fix.
fn strace_path() -> PathBuf {
    ["/usr/bin/strace", "/bin/strace", "/usr/local/bin/strace"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "strace not found: the fsync_order test reads the receiver's system calls; \
                 install it with `apt-get install strace`"
            )
        })
}

/// The checks of the module doc; returns the trace lines they rest on, in order.
fn check_order(calls: &[Call], archive: &Path, name: &str, size: u64, sender_exit: u64) -> String {
    let dir = archive.to_string_lossy().into_owned();
    let final_path = format!("{dir}/{name}");
    let tmp_prefix = format!("{dir}/.walship-tmp.{name}.");
    let dump = || {
        calls
            .iter()
            .filter(|c| c.line.contains(&dir))
            .map(|c| c.line.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };

    // 1. The temp file: created once, written whole, fsynced.
    let opens: Vec<&Call> = calls
        .iter()
        .filter(|c| c.name == "openat" && c.ok())
        .filter(|c| {
            c.quoted()
                .first()
                .is_some_and(|p| p.starts_with(&tmp_prefix))
        })
        .collect();
    assert_eq!(
        opens.len(),
        1,
        "expected one temp file {tmp_prefix}* opened; the trace under {dir}:\n{}",
        dump()
    );
    let open = opens[0];
    let tmp = open.quoted()[0].clone();
    let writes: Vec<&Call> = calls
        .iter()
        .filter(|c| matches!(c.name.as_str(), "write" | "pwrite64") && c.fd_path() == Some(&tmp))
        .collect();
    let written: u64 = writes.iter().map(|c| c.ret.max(0) as u64).sum();
    assert_eq!(
        written,
        size,
        "bytes written to {tmp}; the trace under {dir}:\n{}",
        dump()
    );
    let data_sync = calls
        .iter()
        .find(|c| {
            matches!(c.name.as_str(), "fsync" | "fdatasync") && c.fd_path() == Some(&tmp) && c.ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "{tmp} was never fsynced; the trace under {dir}:\n{}",
                dump()
            )
        });
    let last_write = writes.iter().map(|c| c.end).max().unwrap_or(open.end);
    assert!(
        last_write <= data_sync.start,
        "the temp file was written after its fsync began:\n{}",
        dump()
    );

    // 2. The link to the WAL name, after the data fsync returned; nothing else writes NAME.
    let links: Vec<&Call> = calls
        .iter()
        .filter(|c| {
            matches!(
                c.name.as_str(),
                "link" | "linkat" | "rename" | "renameat" | "renameat2"
            )
        })
        .filter(|c| c.quoted().contains(&final_path))
        .collect();
    assert_eq!(
        links.len(),
        1,
        "expected one link to {final_path}; the trace under {dir}:\n{}",
        dump()
    );
    let link = links[0];
    assert!(
        link.name.starts_with("link")
            && link.ok()
            && link.quoted() == [tmp.clone(), final_path.clone()],
        "expected linkat({tmp} -> {final_path}) = 0 (a link never replaces), got:\n{}",
        link.line
    );
    assert!(
        data_sync.end <= link.start,
        "the temp file was linked to {name} before its fsync returned:\n{}\n{}",
        data_sync.line,
        link.line
    );
    for c in calls.iter().filter(|c| c.start < link.start) {
        let opened_final = c.name == "openat" && c.quoted().first() == Some(&final_path);
        assert!(
            !opened_final || !c.ok(),
            "{final_path} was opened before the link:\n{}",
            c.line
        );
    }
    assert!(
        !calls
            .iter()
            .any(|c| c.fd_path() == Some(&final_path)
                && matches!(c.name.as_str(), "write" | "pwrite64")),
        "something wrote through {final_path} directly:\n{}",
        dump()
    );

    // 3. The temp name removed, then the directory fsynced, after the link.
    let unlink = calls
        .iter()
        .find(|c| c.name.starts_with("unlink") && c.quoted().first() == Some(&tmp) && c.ok())
        .unwrap_or_else(|| {
            panic!(
                "{tmp} was never unlinked; the trace under {dir}:\n{}",
                dump()
            )
        });
    assert!(
        link.end <= unlink.start,
        "unlinked before linked:\n{}",
        dump()
    );
    let dir_sync = calls
        .iter()
        .find(|c| c.name == "fsync" && c.fd_path() == Some(&dir) && c.ok() && c.start >= link.end)
        .unwrap_or_else(|| {
            panic!(
                "the archive directory was not fsynced after the link; the trace under {dir}:\n{}",
                dump()
            )
        });
    assert!(
        unlink.end <= dir_sync.start,
        "the directory fsync began before the temp name was removed:\n{}\n{}",
        unlink.line,
        dir_sync.line
    );

    // 4. The reply: the sender exits 0 (it has the "stored" reply) after the directory fsync
    //    returned, and the receiver sent datagrams in between (the reply among them).
    assert!(
        dir_sync.end <= sender_exit,
        "the sender exited at {} before the receiver's directory fsync returned at {}:\n{}",
        micros(sender_exit),
        micros(dir_sync.end),
        dir_sync.line
    );
    let reply = calls
        .iter()
        .find(|c| {
            matches!(c.name.as_str(), "sendmsg" | "sendmmsg" | "sendto")
                && c.start >= dir_sync.end
                && c.start <= sender_exit
        })
        .unwrap_or_else(|| {
            panic!(
                "the receiver sent no datagram between its directory fsync (returned {}) and the \
                 sender's exit ({})",
                micros(dir_sync.end),
                micros(sender_exit)
            )
        });

    let mut s = String::new();
    for (what, c) in [
        ("open temp  ", open),
        ("fsync temp ", data_sync),
        ("link       ", link),
        ("unlink temp", unlink),
        ("fsync dir  ", dir_sync),
        ("first send after it", reply),
    ] {
        s.push_str(&format!("  {what}: {}\n", shorten(&c.line)));
    }
    s.push_str(&format!(
        "  sender exit 0 at {} ({} us after the directory fsync returned)\n",
        micros(sender_exit),
        sender_exit - dir_sync.end
    ));
    s
}

/// A trace line (or two joined halves) with long buffers cut, for the report.
fn shorten(text: &str) -> String {
    let cut = |line: &str| {
        if line.len() > 300 {
            let mut end = 300;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}...", &line[..end])
        } else {
            line.to_string()
        }
    };
    text.lines()
        .map(cut)
        .collect::<Vec<_>>()
        .join("\n               ")
}

/// `seconds.micros` of a timestamp in microseconds.
fn micros(t: u64) -> String {
    format!("{}.{:06}", t / 1_000_000, t % 1_000_000)
}

/// One completed system call of a `strace -f -ttt -T -y` trace (unfinished and resumed halves
/// joined), times in microseconds since the epoch.
#[derive(Debug, Clone)]
struct Call {
    start: u64,
    end: u64,
    name: String,
    args: String,
    ret: i64,
    /// The line as printed (for joined calls: both halves).
    line: String,
}

impl Call {
    fn ok(&self) -> bool {
        self.ret >= 0
    }

    /// The quoted strings among the arguments (paths, for file calls), unescaped only for `\"`.
    fn quoted(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut chars = self.args.chars();
        while let Some(c) = chars.next() {
            if c != '"' {
                continue;
            }
            let mut s = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            s.push(n);
                        }
                    }
                    '"' => break,
                    c => s.push(c),
                }
            }
            out.push(s);
        }
        out
    }

    /// The path `-y` printed for the first argument, `N</path>`.
    fn fd_path(&self) -> Option<&str> {
        let a = self.args.trim_start();
        let digits = a.find(|c: char| !c.is_ascii_digit())?;
        let rest = a[digits..].strip_prefix('<')?;
        let end = rest.find('>')?;
        Some(&rest[..end])
    }
}

/// Join the lines of a `strace -f -ttt -T` trace into calls.
fn parse_trace(text: &str) -> Vec<Call> {
    let mut pending: std::collections::HashMap<String, (u64, String, String, String)> =
        std::collections::HashMap::new();
    let mut calls = Vec::new();
    for line in text.lines() {
        // "PID TIME CALL": strace pads the pid column, so split on runs of spaces.
        let Some((pid, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Some((ts, rest)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let Some(ts) = parse_time(ts) else { continue };
        if rest.starts_with("---") || rest.starts_with("+++") {
            continue;
        }
        if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            let Some((name, args)) = head.split_once('(') else {
                continue;
            };
            pending.insert(
                pid.to_string(),
                (ts, name.to_string(), args.to_string(), line.to_string()),
            );
            continue;
        }
        let (start, name, args, tail, shown) = if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = resumed.split_once(" resumed>") else {
                continue;
            };
            let Some((start, _, args, first)) = pending.remove(pid) else {
                continue;
            };
            (
                start,
                name.to_string(),
                format!("{args}{tail}"),
                tail.to_string(),
                format!("{first}\n{line}"),
            )
        } else {
            let Some((name, args)) = rest.split_once('(') else {
                continue;
            };
            (
                ts,
                name.to_string(),
                args.to_string(),
                args.to_string(),
                line.to_string(),
            )
        };
        // ") = RET[<path>] [ERRNO (text)] <DURATION>"
        let Some(eq) = tail.rfind(") = ") else {
            continue;
        };
        let result = &tail[eq + 4..];
        let ret_text: String = result
            .chars()
            .take_while(|c| *c == '-' || c.is_ascii_digit())
            .collect();
        let Ok(ret) = ret_text.parse::<i64>() else {
            continue;
        };
        let duration = result
            .rfind(" <")
            .and_then(|i| result[i + 2..].strip_suffix('>'))
            .and_then(parse_time)
            .unwrap_or(0);
        let args = args[..args.len() - (tail.len() - eq)].to_string();
        calls.push(Call {
            start,
            end: (start + duration).max(ts),
            name,
            args,
            ret,
            line: shown,
        });
    }
    calls.sort_by_key(|c| c.start);
    calls
}

/// `1700000000.123456` (or `0.000123`) as microseconds.
fn parse_time(s: &str) -> Option<u64> {
    let (secs, frac) = s.split_once('.')?;
    if frac.len() != 6 {
        return None;
    }
    Some(secs.parse::<u64>().ok()? * 1_000_000 + frac.parse::<u64>().ok()?)
}

/// When the traced sender exited 0: the `+++ exited with 0 +++` line of its main process.
fn sender_exit_time(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.ends_with("+++ exited with 0 +++"))
        .filter_map(|l| l.split_whitespace().nth(1).and_then(parse_time))
        .max()
        .unwrap_or_else(|| panic!("the sender's trace has no \"exited with 0\":\n{text}"))
}

/// `strace ... walship-receiver serve` in the background, its output in a log.
struct Traced {
    child: Option<Child>,
    log: PathBuf,
}

impl Traced {
    fn spawn(sc: &Scenario, cmd: walship_tests::Cmd, log: &Path) -> Traced {
        let file = fs::File::create(log).expect("create receiver log");
        sc.user().chown(log);
        let child = cmd.spawn_with(
            Stdio::null(),
            Stdio::from(file.try_clone().expect("dup log")),
        );
        let mut t = Traced {
            child: Some(child),
            log: log.to_path_buf(),
        };
        let ready = wait_for(Duration::from_secs(30), || {
            let text = fs::read_to_string(&t.log).unwrap_or_default();
            if text.contains("listening") {
                return Some(true);
            }
            match t.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(_))) => Some(false),
                _ => None,
            }
        });
        assert_eq!(
            ready,
            Some(true),
            "`{}` did not log \"listening\"; its log:\n{}",
            cmd.describe(),
            walship_tests::process::tail(&t.log, 40)
        );
        t
    }

    /// SIGTERM the receiver (strace's child), wait for both; the receiver must exit 0 (strace
    /// exits with its tracee's status).
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child_of(child.id()) {
            terminate(pid);
        }
        let status = wait_deadline(&mut child, Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.code() == Some(0)),
            "the traced receiver did not exit 0 after SIGTERM ({status:?}); its log:\n{}",
            walship_tests::process::tail(&self.log, 40)
        );
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child_of(child.id()) {
                terminate(pid);
            }
            if wait_deadline(&mut child, Duration::from_secs(20)).is_none() {
                eprintln!("strace (receiver) did not exit; killed it");
            }
        }
    }
}

/// The (first) child process of `parent`, from /proc.
fn child_of(parent: u32) -> Option<u32> {
    for (pid, dir) in walship_tests::process::processes() {
        let Ok(stat) = fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            return Some(pid);
        }
    }
    None
}

/// A trace of a correct publish of `/a/N` (4 bytes), as `strace -f -ttt -T -y` prints it; the
/// fsync of the temp file is split across two lines as under `-f`. `$LINK` and `$DIRSYNC` are
/// the times of the link and the directory fsync, for the checks below to move.
const GOOD_TRACE: &str = "\
100 1000.000000 openat(AT_FDCWD</d>, \"/a/N\", O_RDONLY|O_CLOEXEC) = -1 ENOENT (No such file or directory) <0.000005>
100 1000.000010 openat(AT_FDCWD</d>, \"/a/.walship-tmp.N.7.0\", O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC, 0640) = 11</a/.walship-tmp.N.7.0> <0.000010>
101 1000.000100 write(11</a/.walship-tmp.N.7.0>, \"abcd\", 4) = 4 <0.000010>
102 1000.000200 fsync(11</a/.walship-tmp.N.7.0> <unfinished ...>
99  1000.000210 sendmsg(9<socket:[1]>, {msg_iov=[{iov_base=\"ack\"}]}, 0) = 3 <0.000005>
102 1000.000300 <... fsync resumed>) = 0 <0.000100>
102 $LINK linkat(AT_FDCWD</d>, \"/a/.walship-tmp.N.7.0\", AT_FDCWD</d>, \"/a/N\", 0) = 0 <0.000010>
102 1000.000420 unlink(\"/a/.walship-tmp.N.7.0\") = 0 <0.000010>
102 1000.000440 openat(AT_FDCWD</d>, \"/a\", O_RDONLY|O_CLOEXEC) = 12</a> <0.000005>
102 $DIRSYNC fsync(12</a>) = 0 <0.000050>
100 1000.000600 sendmsg(9<socket:[1]>, {msg_iov=[{iov_base=\"reply\"}]}, 0) = 5 <0.000005>
";

fn synthetic(link: &str, dir_sync: &str) -> Vec<Call> {
    parse_trace(
        &GOOD_TRACE
            .replace("$LINK", link)
            .replace("$DIRSYNC", dir_sync),
    )
}

#[test]
fn fsync_order_checker_accepts_the_right_order() {
    let calls = synthetic("1000.000400", "1000.000460");
    let fsync = calls
        .iter()
        .find(|c| c.name == "fsync" && c.fd_path() == Some("/a/.walship-tmp.N.7.0"))
        .expect("joined fsync");
    assert_eq!(
        (fsync.start, fsync.end, fsync.ret),
        (1_000_000_200, 1_000_000_300, 0)
    );
    // strace pads short pids ("99  1000.000210 ..."): that line counts too.
    assert_eq!(calls.iter().filter(|c| c.name == "sendmsg").count(), 2);
    assert_eq!(
        sender_exit_time("123  1000.000700 +++ exited with 0 +++\n"),
        1_000_000_700
    );
    check_order(&calls, Path::new("/a"), "N", 4, 1_000_000_700);
}

#[test]
#[should_panic(expected = "linked to N before its fsync returned")]
fn fsync_order_checker_refuses_link_before_data_fsync() {
    check_order(
        &synthetic("1000.000250", "1000.000460"),
        Path::new("/a"),
        "N",
        4,
        1_000_000_700,
    );
}

#[test]
#[should_panic(expected = "not fsynced after the link")]
fn fsync_order_checker_refuses_dir_fsync_before_link() {
    check_order(
        &synthetic("1000.000400", "1000.000390"),
        Path::new("/a"),
        "N",
        4,
        1_000_000_700,
    );
}

#[test]
#[should_panic(expected = "before the receiver's directory fsync returned")]
fn fsync_order_checker_refuses_exit_before_dir_fsync() {
    check_order(
        &synthetic("1000.000400", "1000.000460"),
        Path::new("/a"),
        "N",
        4,
        1_000_000_480,
    );
}
