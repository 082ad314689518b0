//! Issue 11, `check` on both sides. A primary archives through walship to a hot standby's
//! receiver. `walship-sender check` (with `conninfo` to the primary) and `walship-receiver
//! check` (with `serve` running, `conninfo` and `pgdata` for the standby) pass, the sender's
//! after a WAL switch archived end to end. Then each fails with the named cause: a client
//! certificate expiring in 10 days is a WARN (exit still 0); an archive_command that is not
//! walship is a FAIL of that line (exit 1); with the receiver stopped, the sender's receiver
//! line and WAL switch fail, and the receiver's `serve` line fails.

use std::fs;
use std::path::Path;
use std::time::Duration;

use walship_tests::failover::{conninfo, run_receiver, Pair, PairOptions};
use walship_tests::walship::{add_keys, toml_str};
use walship_tests::Output;

/// Deadline for one `walship-sender check` process (its WAL-switch wait is `--timeout`).
const CHECK_DEADLINE: Duration = Duration::from_secs(120);

#[test]
fn issue11_check() {
    let mut p = Pair::start(
        "issue11_check",
        &PairOptions {
            wal_segsize_mb: Some(1),
            ..PairOptions::default()
        },
    );
    add_keys(
        &p.sender,
        &format!(
            "conninfo = {}\n",
            toml_str(&conninfo(&p.sc, p.primary.port()))
        ),
    );

    // A good pair: everything passes.
    let out = sender_check(&p, &["--timeout", "60s"]);
    out.assert_code(0);
    for line in [
        "ok   config",
        "ok   private key",
        "ok   receiver",
        "ok   wal_level: replica",
        "ok   archive_mode: on",
        "ok   archive_command",
        "ok   WAL switch",
    ] {
        assert_line(&out, line);
    }
    assert_no_line(&out, "FAIL");
    assert_no_line(&out, "WARN");
    let out = run_receiver(&p.sc, &p.setup.config, "check", &[]);
    eprintln!("walship-receiver check:\n{}", out.stdout);
    out.assert_code(0);
    for line in [
        "ok   config",
        "ok   TLS setup",
        "ok   archive_dir",
        "ok   serve: running (pid",
        "ok   standby in recovery",
        "ok   restore_command",
        "ok   standby cluster: system identifier",
    ] {
        assert_line(&out, line);
    }
    assert_no_line(&out, "FAIL");

    expiring_certificate_warns(&p);
    foreign_archive_command_fails(&p);

    // The probes stored nothing and left no ERROR or WARN line in the receiver's log.
    p.rx.check_log(&[]);

    // The receiver down: the probe names it, the switched segment is not archived.
    p.rx.stop();
    let out = sender_check(&p, &["--timeout", "30s"]);
    out.assert_code(1);
    assert_line(&out, "FAIL receiver");
    assert_line(&out, "did not answer within 5s");
    assert_line(&out, "FAIL WAL switch: archive_command failed for");
    let out = run_receiver(&p.sc, &p.setup.config, "check", &[]);
    out.assert_code(1);
    assert_line(&out, "FAIL serve: not running");
    p.rx.start();
}

/// A client certificate valid for 10 more days: a WARN naming it, exit still 0.
fn expiring_certificate_warns(p: &Pair) {
    let now = time::OffsetDateTime::now_utc();
    let (cert, key) = p.certs.issue_client(
        &p.sc,
        "client-10d",
        now - time::Duration::days(1),
        now + time::Duration::days(10),
    );
    let original = fs::read_to_string(&p.sender).expect("read sender config");
    let text: String = original
        .lines()
        .map(|l| match l.split('=').next().map(str::trim) {
            Some("cert") => format!("cert = {}\n", toml_str(&cert.display().to_string())),
            Some("key") => format!("key = {}\n", toml_str(&key.display().to_string())),
            _ => format!("{l}\n"),
        })
        .collect();
    p.sc.write_at(&p.sender, text, 0o644);
    let out = sender_check(p, &["--timeout", "60s"]);
    p.sc.write_at(&p.sender, original, 0o644);
    out.assert_code(0);
    assert_line(&out, &format!("WARN certificate {}", cert.display()));
    assert_line(&out, "expires");
    assert_line(&out, "in 9d 23h");
    assert_line(&out, "ok   receiver");
    assert_line(&out, "ok   WAL switch");
    assert_no_line(&out, "FAIL");
}

/// archive_command set to something else: that line fails and names what it runs.
fn foreign_archive_command_fails(p: &Pair) {
    let command = p.primary.sql("show archive_command");
    p.primary
        .sql("alter system set archive_command = '/bin/false %p'");
    p.primary.sql("select pg_reload_conf()");
    wait_setting(p, "/bin/false %p");
    let out = sender_check(p, &["--timeout", "10s"]);
    p.primary
        .sql(&format!("alter system set archive_command = '{command}'"));
    p.primary.sql("select pg_reload_conf()");
    wait_setting(p, &command);
    out.assert_code(1);
    assert_line(&out, "FAIL archive_command: it runs ");
    assert_line(&out, "false, not this walship-sender");
    assert_line(&out, "set archive_command = '");
    assert_line(&out, "ok   receiver");
}

/// Wait until the primary reports archive_command as `value` (a reload is asynchronous).
fn wait_setting(p: &Pair, value: &str) {
    let got = walship_tests::process::wait_for(Duration::from_secs(10), || {
        (p.primary.sql("show archive_command") == value).then_some(())
    });
    assert!(got.is_some(), "archive_command did not become {value:?}");
}

fn sender_check(p: &Pair, args: &[&str]) -> Output {
    let out = sender_check_quiet(p, args);
    eprintln!("walship-sender check {}:\n{}", args.join(" "), out.stdout);
    out
}

fn sender_check_quiet(p: &Pair, args: &[&str]) -> Output {
    let cmd =
        p.sc.cmd(p.sc.bin("walship-sender"))
            .arg("--config")
            .arg(Path::new(&p.sender))
            .arg("check")
            .args(args)
            .timeout(CHECK_DEADLINE);
    p.sc.run(&cmd)
}

fn assert_line(out: &Output, needle: &str) {
    assert!(
        out.stdout.lines().any(|l| l.contains(needle)),
        "no line of check contains {needle:?}\n{out}"
    );
}

fn assert_no_line(out: &Output, needle: &str) {
    assert!(
        !out.stdout.lines().any(|l| l.contains(needle)),
        "a line of check contains {needle:?}\n{out}"
    );
}
