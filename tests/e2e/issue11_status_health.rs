//! Issue 11 items 4 and 7: `walship-receiver status` exits 0 only when healthy and 1 naming
//! each problem (`serve` not running, the standby unreachable, the newest segment older than
//! `--max-age`), in the human form (`PROBLEM: ...` lines) and in `--json` (`healthy`,
//! `problems`); a fenced archive is no problem by itself. Durations on the command line read
//! like config durations: `promote --timeout 5m`, `status --max-age 10m`, a bare number is
//! seconds as before.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use walship_tests::failover::{next_segment, run_receiver, Pair, PairOptions};
use walship_tests::net::free_tcp_port;
use walship_tests::process::Output;
use walship_tests::walship::receiver_config;
use walship_tests::{CertSet, Scenario};

/// `status --json ARGS` through `config`: the exit code it must have, and its JSON, whose
/// `healthy` must agree with the exit code.
fn status(sc: &Scenario, config: &Path, args: &[&str], code: i32) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run_receiver(sc, config, "status", &all);
    out.assert_code(code);
    let st: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json printed invalid JSON ({e})\n{out}"));
    assert_eq!(st["healthy"], code == 0, "{st:#}");
    assert_eq!(
        st["problems"].as_array().map(Vec::len) == Some(0),
        code == 0,
        "{st:#}"
    );
    st
}

fn problems(st: &Value) -> Vec<&str> {
    st["problems"]
        .as_array()
        .expect("problems is a list")
        .iter()
        .map(|p| p.as_str().expect("a problem is a string"))
        .collect()
}

/// The `PROBLEM:` lines of a human `status`.
fn problem_lines(out: &Output) -> Vec<&str> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with("PROBLEM: "))
        .collect()
}

#[test]
fn item4_status_exit_codes_name_each_problem() {
    let p = Pair::start("i11_status_health", &PairOptions::default());
    let sc = p.sc.clone();
    p.primary
        .sql("create table t as select g as id from generate_series(1, 1000) g");
    let last = p.switch_segment();
    p.wait_archived(&last);
    p.wait_restore_missed(&next_segment(&last));
    let config = p.setup.config.clone();

    // Healthy: serve runs, the standby answers, the newest segment is recent enough.
    let st = status(&sc, &config, &["--max-age", "1h"], 0);
    assert!(st["serve_pid"].is_string(), "{st:#}");
    assert_eq!(st["standby"]["reachable"], true, "{st:#}");
    let human = run_receiver(&sc, &config, "status", &["--max-age", "10m"]);
    human.assert_code(0);
    assert!(human.stdout.contains("health:           ok"), "\n{human}");
    assert!(problem_lines(&human).is_empty(), "\n{human}");

    // The newest segment older than --max-age.
    std::thread::sleep(Duration::from_millis(2100));
    let st = status(&sc, &config, &["--max-age", "2s"], 1);
    assert_eq!(problems(&st).len(), 1, "{st:#}");
    assert!(
        problems(&st)[0].starts_with(&format!("the newest segment {last} arrived "))
            && problems(&st)[0].contains("longer than --max-age 2s"),
        "{st:#}"
    );
    let human = run_receiver(&sc, &config, "status", &["--max-age", "2s"]);
    human.assert_code(1);
    assert_eq!(problem_lines(&human).len(), 1, "\n{human}");
    assert!(!human.stdout.contains("health:           ok"), "\n{human}");

    // The standby unreachable: nothing listens on conninfo's port.
    let dead = p.config_variant(
        "receiver-dead",
        Some(&format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=2",
            free_tcp_port()
        )),
    );
    let st = status(&sc, &dead, &[], 1);
    assert_eq!(problems(&st).len(), 1, "{st:#}");
    assert!(
        problems(&st)[0].starts_with("the standby is unreachable through conninfo: "),
        "{st:#}"
    );
    let human = run_receiver(&sc, &dead, "status", &[]);
    human.assert_code(1);
    assert_eq!(
        problem_lines(&human),
        [format!("PROBLEM: {}", problems(&st)[0]).as_str()],
        "\n{human}"
    );
    // No conninfo: nothing to reach, no problem.
    let bare = p.config_variant("receiver-bare", None);
    status(&sc, &bare, &[], 0);

    // serve stopped: a problem, with what to do; the others add up, one line each.
    let Pair { rx, .. } = p;
    rx.stop_and_check(&[]);
    serve_stopped(&sc, &config, &dead);
}

/// After `serve` stopped: a problem, with what to do; with others, one line each.
fn serve_stopped(sc: &Scenario, config: &Path, dead: &Path) {
    let serve_down = "walship-receiver serve is not running on this archive_dir (start it: \
                      systemctl start walship-receiver)";
    let human = run_receiver(sc, config, "status", &[]);
    human.assert_code(1);
    assert_eq!(
        problem_lines(&human),
        [format!("PROBLEM: {serve_down}").as_str()],
        "\n{human}"
    );
    assert!(
        human.stdout.contains("serve:            not running"),
        "\n{human}"
    );
    let human = run_receiver(sc, dead, "status", &["--max-age", "1s"]);
    human.assert_code(1);
    assert_eq!(problem_lines(&human).len(), 3, "\n{human}");
    let st = status(sc, config, &[], 1);
    assert_eq!(problems(&st), [serve_down], "{st:#}");
    assert!(st["serve_pid"].is_null(), "{st:#}");
}

#[test]
fn item7_durations_on_the_command_line_read_like_config_durations() {
    // No PostgreSQL needed: a config without conninfo, so promote stops right after parsing.
    let sc = Scenario::new("i11_cli_durations");
    let certs = CertSet::create(&sc, "certs");
    let setup = receiver_config(&sc, "receiver", &certs, None);
    for timeout in ["5m", "300", "1h 30m", "90s"] {
        let out = run_receiver(
            &sc,
            &setup.config,
            "promote",
            &["--timeout", timeout, "--no-wait-replay"],
        );
        out.assert_code(1);
        assert!(
            out.stderr.contains("no conninfo in"),
            "--timeout {timeout:?} should parse and promote stop at the missing conninfo\n{out}"
        );
    }
    // Unreadable or out of range: clap's usage error (exit 2), naming the flag and why.
    for (timeout, why) in [
        ("5 parsecs", "unknown unit \"parsecs\""),
        ("0", "at least 1ms"),
        ("soon", "expected a duration like"),
    ] {
        let out = run_receiver(&sc, &setup.config, "promote", &["--timeout", timeout]);
        out.assert_code(2);
        assert!(
            out.stderr.contains("--timeout") && out.stderr.contains(why),
            "--timeout {timeout:?}\n{out}"
        );
    }
    let out = run_receiver(&sc, &setup.config, "status", &["--max-age", "10 furlongs"]);
    out.assert_code(2);
    assert!(out.stderr.contains("--max-age"), "\n{out}");
}
