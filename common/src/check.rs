//! `check` on both sides (`walship-sender check`, `walship-receiver check`): the judgements,
//! on values only. The drivers (`sender/src/check.rs`, `receiver/src/check.rs`) gather the
//! facts (files, a connection, PostgreSQL's settings) and print one [`Line`] per check:
//!
//! ```text
//! ok   receiver 10.0.0.7:7443: mutual TLS and protocol 5
//! WARN certificate /etc/walship/client.pem: expires 2025-06-01T00:00:00Z, in 9d 23h; ...
//! FAIL archive_command: it runs /bin/true, not this walship-sender ...; set archive_command = '...'
//! ```
//!
//! A run passes (exit 0) when no line is a FAIL; WARNs are allowed.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::human;
use crate::SystemId;

/// A certificate expiring sooner than this is worth a warning: time to issue and install new
/// ones on both hosts before the pair stops.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// The verdict of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Passed; the detail (may be empty) says what was found.
    Ok(String),
    /// Works now, but odd or about to break: what and what to do.
    Warn(String),
    /// Does not work: why, and the fix.
    Fail { why: String, fix: String },
}

impl Verdict {
    pub fn fail(why: impl Into<String>, fix: impl Into<String>) -> Verdict {
        Verdict::Fail {
            why: why.into(),
            fix: fix.into(),
        }
    }
}

/// One printed line: what was checked and the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub what: String,
    pub verdict: Verdict,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.verdict {
            Verdict::Ok(detail) if detail.is_empty() => write!(f, "ok   {}", self.what),
            Verdict::Ok(detail) => write!(f, "ok   {}: {detail}", self.what),
            Verdict::Warn(why) => write!(f, "WARN {}: {why}", self.what),
            // Errors of walship's own already end with what to do.
            Verdict::Fail { why, fix } if fix.is_empty() => write!(f, "FAIL {}: {why}", self.what),
            Verdict::Fail { why, fix } => write!(f, "FAIL {}: {why}; {fix}", self.what),
        }
    }
}

/// The lines of one run, for the exit status.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<Line>,
}

impl Report {
    /// Record a verdict; the line to print.
    pub fn add(&mut self, what: impl Into<String>, verdict: Verdict) -> &Line {
        self.lines.push(Line {
            what: what.into(),
            verdict,
        });
        self.lines.last().expect("just pushed")
    }

    /// Whether any check failed (exit 1).
    pub fn failed(&self) -> bool {
        self.lines
            .iter()
            .any(|l| matches!(l.verdict, Verdict::Fail { .. }))
    }
}

/// One certificate's validity period, as read from its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validity {
    pub subject: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Is this certificate usable `now`, and for how long: expired or not yet valid fails;
/// expiring within [`EXPIRY_WARNING`] warns.
pub fn judge_validity(v: &Validity, now: SystemTime) -> Verdict {
    let renew = "issue new certificates (walship-receiver certs, or your CA) and install them on both hosts";
    if now < v.not_before {
        return Verdict::fail(
            format!(
                "{} is not valid before {}",
                v.subject,
                human::timestamp(v.not_before)
            ),
            "check this host's clock, or issue a certificate valid now",
        );
    }
    match v.not_after.duration_since(now) {
        Err(e) => Verdict::fail(
            format!(
                "{} expired {} ({} ago)",
                v.subject,
                human::timestamp(v.not_after),
                human::duration(e.duration())
            ),
            renew,
        ),
        Ok(left) if left < EXPIRY_WARNING => Verdict::Warn(format!(
            "{} expires {}, in {}; {renew} before then",
            v.subject,
            human::timestamp(v.not_after),
            human::duration(left)
        )),
        Ok(_) => Verdict::Ok(format!(
            "{} valid until {}",
            v.subject,
            human::timestamp(v.not_after)
        )),
    }
}

/// A walship command line as PostgreSQL runs it (`archive_command`, `restore_command`): the
/// program, the config it names (`--config F`, `--config=F` or a leading `WALSHIP_CONFIG=F`),
/// and the words after those (the subcommand and its arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub program: String,
    pub config: Option<String>,
    pub rest: Vec<String>,
}

/// Split `command` into words as the shell would for a simple command (blanks separate words;
/// single quotes, double quotes and backslashes quote), then pick out the program and config.
pub fn parse_invocation(command: &str) -> Result<Invocation, String> {
    let mut words = shell_words(command)?.into_iter().peekable();
    let mut config = None;
    while let Some(w) = words.peek() {
        match w.split_once('=') {
            Some((var, value)) if is_variable(var) => {
                if var == "WALSHIP_CONFIG" {
                    config = Some(value.to_string());
                }
                words.next();
            }
            _ => break,
        }
    }
    let program = words.next().ok_or("it is empty")?;
    let mut rest = Vec::new();
    while let Some(w) = words.next() {
        if w == "--config" {
            config = Some(words.next().ok_or("--config has no value")?);
        } else if let Some(value) = w.strip_prefix("--config=") {
            config = Some(value.to_string());
        } else {
            rest.push(w);
        }
    }
    Ok(Invocation {
        program,
        config,
        rest,
    })
}

/// What a setting should run: this program, with this config, this subcommand and arguments.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The setting's name (`archive_command`).
    pub setting: &'a str,
    /// "walship-sender" or "walship-receiver".
    pub program_name: &'a str,
    /// Our own path and config path, absolute.
    pub program: &'a str,
    pub config: &'a str,
    /// `["push", "%p", "%f"]`.
    pub rest: &'a [&'a str],
}

impl Expected<'_> {
    /// The line to put in postgresql.conf.
    pub fn suggestion(&self) -> String {
        format!(
            "set {} = '{} --config {} {}'",
            self.setting,
            self.program,
            self.config,
            self.rest.join(" ")
        )
    }
}

/// Whether a part of the command resolves to ours; the driver resolves paths (relative ones
/// against the data directory, links followed) and says.
pub trait Resolver {
    /// The program path resolved, and whether it is this program.
    fn program(&self, program: &str) -> (String, bool);
    /// The config path resolved, and whether it is this config file.
    fn config(&self, config: &str) -> (String, bool);
}

/// Does `command` (the setting's value) run this program with this config and the expected
/// subcommand and arguments?
pub fn judge_command(command: &str, expect: &Expected, resolve: &dyn Resolver) -> Verdict {
    let fix = expect.suggestion();
    let setting = expect.setting;
    if command.trim().is_empty() {
        return Verdict::fail(format!("{setting} is empty"), fix);
    }
    let inv = match parse_invocation(command) {
        Ok(inv) => inv,
        Err(e) => return Verdict::fail(format!("cannot read {setting} {command:?}: {e}"), fix),
    };
    let (program, same) = resolve.program(&inv.program);
    if !same {
        return Verdict::fail(
            format!(
                "it runs {program}, not this {} ({})",
                expect.program_name, expect.program
            ),
            fix,
        );
    }
    if inv.rest != expect.rest {
        return Verdict::fail(
            format!(
                "it runs `{}`, expected `{}`",
                inv.rest.join(" "),
                expect.rest.join(" ")
            ),
            fix,
        );
    }
    let Some(config) = inv.config else {
        return Verdict::Warn(format!(
            "{command:?} names no --config: {} then reads WALSHIP_CONFIG from PostgreSQL's environment, which check cannot see; {fix}",
            expect.program_name
        ));
    };
    let (resolved, same) = resolve.config(&config);
    if !same {
        return Verdict::fail(
            format!(
                "it uses the config {resolved}, this check uses {}",
                expect.config
            ),
            fix,
        );
    }
    Verdict::Ok(command.to_string())
}

/// The archiver's progress as `pg_stat_archiver` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Archiver {
    pub last_archived: Option<String>,
    pub failed_count: i64,
    pub last_failed: Option<String>,
}

/// Where the wait for a switched segment stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Archived {
    /// `last_archived_wal` reached the segment: PostgreSQL counts a file archived only after
    /// archive_command exited 0, and walship-sender exits 0 only after the receiver stored it.
    Done,
    /// Not yet.
    Waiting,
    /// archive_command failed for this segment (or a later one) since the switch.
    Failing(String),
}

/// Has `segment` been archived, judging by the archiver's statistics `before` the switch and
/// `now`? File names of one timeline order like their positions (fixed-width upper-case hex).
pub fn judge_archived(segment: &str, before: &Archiver, now: &Archiver) -> Archived {
    if now.last_archived.as_deref().is_some_and(|l| l >= segment) {
        return Archived::Done;
    }
    match &now.last_failed {
        Some(failed) if now.failed_count > before.failed_count && failed.as_str() >= segment => {
            Archived::Failing(failed.clone())
        }
        _ => Archived::Waiting,
    }
}

/// Is the standby (`standby`, from its pg_control) of the cluster the archive is pinned to?
pub fn judge_identity(pin: Option<SystemId>, standby: SystemId) -> Verdict {
    match pin {
        Some(p) if p == standby => Verdict::Ok(format!("system identifier {standby}, as pinned")),
        Some(p) => Verdict::fail(
            format!("the standby's system identifier is {standby}, the archive is pinned to {p}"),
            "this archive belongs to another cluster: point the standby at its own archive, or take a new base backup of the primary that archives here",
        ),
        None => Verdict::Warn(format!(
            "system identifier {standby}; the archive is not pinned yet (serve pins it at start from pgdata, or to the cluster of the first segment it stores)"
        )),
    }
}

fn is_variable(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Words of a simple shell command: blanks separate, quotes and backslashes quote.
fn shell_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => w.push(chars.next().ok_or("trailing backslash")?),
                        Some(c) => w.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => word
                .get_or_insert_with(String::new)
                .push(chars.next().ok_or("trailing backslash")?),
            ';' | '|' | '&' | '<' | '>' | '`' | '$' | '(' | ')' => {
                return Err(format!(
                    "it is not a simple command ({c:?}): check cannot tell what it runs"
                ))
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn validity(from: SystemTime, days: u32) -> Validity {
        Validity {
            subject: "CN=walship-sender".into(),
            not_before: from,
            not_after: from + DAY * days,
        }
    }

    #[test]
    fn expiry_is_judged_against_the_time_given() {
        let t0 = SystemTime::UNIX_EPOCH + 20_000 * DAY;
        assert!(matches!(
            judge_validity(&validity(t0, 365), t0 + DAY),
            Verdict::Ok(_)
        ));
        let soon = judge_validity(&validity(t0, 40), t0 + DAY * 30);
        assert!(
            matches!(&soon, Verdict::Warn(w) if w.contains("in 10d")),
            "{soon:?}"
        );
        let gone = judge_validity(&validity(t0, 10), t0 + DAY * 12);
        assert!(
            matches!(&gone, Verdict::Fail { why, .. } if why.contains("expired") && why.contains("2d ago")),
            "{gone:?}"
        );
        let early = judge_validity(&validity(t0, 10), t0 - DAY);
        assert!(matches!(&early, Verdict::Fail { why, .. } if why.contains("not valid before")));
        // Exactly 30 days left is not yet a warning.
        assert!(matches!(
            judge_validity(&validity(t0, 30), t0),
            Verdict::Ok(_)
        ));
    }

    #[test]
    fn lines_print_as_documented() {
        let mut r = Report::default();
        assert_eq!(
            r.add("config", Verdict::Ok(String::new())).to_string(),
            "ok   config"
        );
        assert_eq!(r.add("a", Verdict::Ok("b".into())).to_string(), "ok   a: b");
        assert_eq!(
            r.add("a", Verdict::Warn("w".into())).to_string(),
            "WARN a: w"
        );
        assert!(!r.failed());
        assert_eq!(
            r.add("a", Verdict::fail("why", "fix")).to_string(),
            "FAIL a: why; fix"
        );
        assert_eq!(
            r.add("a", Verdict::fail("why; do", "")).to_string(),
            "FAIL a: why; do"
        );
        assert!(r.failed());
    }

    #[test]
    fn invocations_are_read_like_the_shell() {
        let inv = parse_invocation(
            "/usr/bin/walship-sender --config /etc/walship/sender.toml push %p %f",
        )
        .unwrap();
        assert_eq!(inv.program, "/usr/bin/walship-sender");
        assert_eq!(inv.config.as_deref(), Some("/etc/walship/sender.toml"));
        assert_eq!(inv.rest, ["push", "%p", "%f"]);
        let inv =
            parse_invocation("WALSHIP_CONFIG='/etc/my dir/s.toml' walship-sender push \"%p\" %f")
                .unwrap();
        assert_eq!(inv.config.as_deref(), Some("/etc/my dir/s.toml"));
        assert_eq!(inv.program, "walship-sender");
        assert_eq!(inv.rest, ["push", "%p", "%f"]);
        let inv = parse_invocation("walship-receiver --config=r.toml restore %f %p").unwrap();
        assert_eq!(inv.config.as_deref(), Some("r.toml"));
        assert!(parse_invocation("").is_err());
        assert!(parse_invocation("cp %p /mnt/%f && walship-sender push %p %f").is_err());
        assert!(parse_invocation("a 'b").is_err());
        assert!(parse_invocation("walship-sender --config").is_err());
    }

    struct Fake;
    impl Resolver for Fake {
        fn program(&self, p: &str) -> (String, bool) {
            (format!("/abs/{p}"), p.ends_with("walship-sender"))
        }
        fn config(&self, c: &str) -> (String, bool) {
            (format!("/abs/{c}"), c == "sender.toml")
        }
    }

    const EXPECT: Expected = Expected {
        setting: "archive_command",
        program_name: "walship-sender",
        program: "/usr/bin/walship-sender",
        config: "/etc/walship/sender.toml",
        rest: &["push", "%p", "%f"],
    };

    #[test]
    fn commands_are_judged_against_this_program_and_config() {
        let ok = judge_command(
            "walship-sender --config sender.toml push %p %f",
            &EXPECT,
            &Fake,
        );
        assert!(matches!(ok, Verdict::Ok(_)), "{ok:?}");
        let other = judge_command("/bin/true", &EXPECT, &Fake);
        let Verdict::Fail { why, fix } = other else {
            panic!("{other:?}")
        };
        assert!(
            why.contains("runs /abs//bin/true, not this walship-sender"),
            "{why}"
        );
        assert_eq!(fix, "set archive_command = '/usr/bin/walship-sender --config /etc/walship/sender.toml push %p %f'");
        let config = judge_command("walship-sender --config x.toml push %p %f", &EXPECT, &Fake);
        assert!(
            matches!(&config, Verdict::Fail { why, .. } if why.contains("/abs/x.toml") && why.contains("/etc/walship/sender.toml")),
            "{config:?}"
        );
        let args = judge_command(
            "walship-sender --config sender.toml push %f %p",
            &EXPECT,
            &Fake,
        );
        assert!(
            matches!(&args, Verdict::Fail { why, .. } if why.contains("`push %f %p`")),
            "{args:?}"
        );
        let empty = judge_command(" ", &EXPECT, &Fake);
        assert!(matches!(&empty, Verdict::Fail { why, .. } if why == "archive_command is empty"));
        let no_config = judge_command("walship-sender push %p %f", &EXPECT, &Fake);
        assert!(matches!(no_config, Verdict::Warn(_)));
    }

    #[test]
    fn identity_is_judged_against_the_pin() {
        let id = SystemId(7);
        assert!(matches!(judge_identity(Some(id), id), Verdict::Ok(_)));
        assert!(matches!(judge_identity(None, id), Verdict::Warn(_)));
        let other = judge_identity(Some(SystemId(8)), id);
        assert!(
            matches!(&other, Verdict::Fail { why, .. } if why.contains("is 7") && why.contains("pinned to 8"))
        );
    }

    #[test]
    fn archiving_is_judged_from_the_archiver_statistics() {
        let seg = "000000010000000000000005";
        let before = Archiver {
            last_archived: Some("000000010000000000000004".into()),
            failed_count: 2,
            last_failed: Some("000000010000000000000003".into()),
        };
        assert_eq!(judge_archived(seg, &before, &before), Archived::Waiting);
        let done = Archiver {
            last_archived: Some(seg.into()),
            ..before.clone()
        };
        assert_eq!(judge_archived(seg, &before, &done), Archived::Done);
        let failing = Archiver {
            failed_count: 3,
            last_failed: Some(seg.into()),
            ..before.clone()
        };
        assert_eq!(
            judge_archived(seg, &before, &failing),
            Archived::Failing(seg.into())
        );
        // An old failure counted again is not about this segment.
        let old = Archiver {
            failed_count: 3,
            ..before.clone()
        };
        assert_eq!(judge_archived(seg, &before, &old), Archived::Waiting);
    }
}
