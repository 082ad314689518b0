//! Config files (TOML) to resolved settings, in two stages: `*File` mirrors the TOML
//! (`deny_unknown_fields`, so a typo is an error naming the file and line, not a silently ignored
//! key), `*Settings` holds parsed addresses, durations and paths resolved against the config
//! file's directory. Certificates are loaded later, by the commands that need them, so
//! `restore` (run by PostgreSQL as its own user) needs only `archive_dir` to be readable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::proto::Encoding;

/// Default for `connect_timeout`: PostgreSQL retries a failed archive_command, so failing fast
/// is better than hanging the archiver; 10 s covers a slow handshake on a loaded host.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for `timeout`: the whole push (send 1 GiB at worst, receiver fsync, reply).
pub const DEFAULT_PUSH_TIMEOUT: Duration = Duration::from_secs(300);
/// Default zstd level: level 1 compresses pgbench WAL about 12x at over 1 GB/s on one core, so
/// it costs less time than it saves on any link slower than that.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;
/// Default for `lookahead`: four segments in flight keep a 2-core primary's disk and one core
/// of compression busy without starving PostgreSQL.
pub const DEFAULT_LOOKAHEAD: usize = 4;
/// Upper bound for `lookahead`: each transfer in flight holds a few MiB of buffers, and the
/// daemon's memory is bounded by its transfer slots (see the sender's daemon).
pub const MAX_LOOKAHEAD: usize = 8;
/// Default QUIC idle timeout: a peer silent this long is gone.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest duration any key accepts: below a millisecond QUIC rounds an idle timeout to zero,
/// which means "no timeout", the opposite of what was asked for.
pub const MIN_DURATION: Duration = Duration::from_millis(1);
/// Default for `max_uploads`: uploads decoding and writing at once, across all connections.
/// Each holds a zstd window (~2.7 MiB), so this bounds decoding memory; two cores decode faster
/// than 8 senders send.
pub const DEFAULT_MAX_UPLOADS: usize = 8;
/// Bounds for `max_uploads`: at least one; at most 64 (~170 MiB of decoding state).
pub const MAX_UPLOADS_RANGE: std::ops::RangeInclusive<usize> = 1..=64;
/// Default for `max_connections`: connections allowed to send at once (to hold stream credit,
/// each up to 16 x `stream_window` unread bytes). PostgreSQL's archiver uses one connection at a
/// time per primary; a sender daemon keeps one.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;
/// Bounds for `max_connections`: at least one; at most the 256 connections the receiver keeps
/// open at once (sending or waiting to).
pub const MAX_CONNECTIONS_RANGE: std::ops::RangeInclusive<usize> = 1..=256;
/// Default for `stream_window`: unread bytes per stream (QUIC flow control).
pub const DEFAULT_STREAM_WINDOW: u64 = 256 << 10;
/// Bounds for `stream_window`: below 16 KiB a stream crawls on any link with a round trip;
/// above 16 MiB one connection's 16 streams could hold 256 MiB of unread bytes.
pub const STREAM_WINDOW_RANGE: std::ops::RangeInclusive<u64> = (16 << 10)..=(16 << 20);
/// Default for `min_upload_rate` (bytes per second, counted on the file's plain content, after a
/// grace of `idle_timeout`): a 16 MiB segment at this rate takes 4 min 16 s, just under the
/// sender's default `timeout` of 5 min, so a slower upload would fail on the sender's side
/// anyway; below it an upload is not a sender but a hold on a slot.
pub const DEFAULT_MIN_UPLOAD_RATE: u64 = 64 << 10;
/// Bounds for `min_upload_rate`: 1 KiB/s (a 16 MiB segment in 4.5 hours) to 1 GiB/s.
pub const MIN_UPLOAD_RATE_RANGE: std::ops::RangeInclusive<u64> = (1 << 10)..=(1 << 30);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no config file: pass --config FILE or set WALSHIP_CONFIG")]
    NoConfig,
    #[error("read config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("config {}: {key} = {value:?}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        key: &'static str,
        value: String,
        reason: String,
    },
}

/// receiver.toml as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverFile {
    pub listen: String,
    pub archive_dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub pgdata: Option<PathBuf>,
    pub conninfo: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_uploads: Option<usize>,
    pub max_connections: Option<usize>,
    pub stream_window: Option<Size>,
    pub min_upload_rate: Option<Size>,
    pub retain_for: Option<String>,
}

/// A size as written in TOML: a number of bytes, or a string like `"256KiB"` (units B, KiB,
/// MiB, GiB; `min_upload_rate` also takes a `/s` suffix).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(i64),
    Text(String),
}

impl Size {
    fn text(&self) -> String {
        match self {
            Size::Bytes(n) => n.to_string(),
            Size::Text(t) => t.clone(),
        }
    }
}

/// sender.toml as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderFile {
    pub receiver: String,
    pub server_name: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub connect_timeout: Option<String>,
    pub timeout: Option<String>,
    pub compression: Option<String>,
    pub compression_level: Option<i32>,
    pub socket: Option<PathBuf>,
    pub pgdata: Option<PathBuf>,
    pub lookahead: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct ReceiverSettings {
    pub config_path: PathBuf,
    pub listen: SocketAddr,
    pub archive_dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub pgdata: Option<PathBuf>,
    pub conninfo: Option<String>,
    pub idle_timeout: Duration,
    /// Uploads decoding and writing at once (`max_uploads`); one connection may hold at most
    /// [`ReceiverSettings::uploads_per_connection`] of them.
    pub max_uploads: usize,
    /// Connections with stream credit (that may send) at once (`max_connections`).
    pub max_connections: usize,
    /// Unread bytes QUIC holds per stream (`stream_window`).
    pub stream_window: u32,
    /// Plain bytes per second an upload must average once it holds an upload slot, after a
    /// grace of `idle_timeout` (`min_upload_rate`).
    pub min_upload_rate: u64,
    /// `cleanup` keeps files stored less than this long ago (`retain_for`; zero: off).
    pub retain_for: Duration,
}

#[derive(Debug, Clone)]
pub struct SenderSettings {
    pub config_path: PathBuf,
    /// `host:port`, resolved when connecting.
    pub receiver: String,
    pub server_name: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Encoding on the wire (`compression = "zstd"` or `"none"`).
    pub compression: Encoding,
    /// zstd level (`compression_level`, default 1).
    pub compression_level: i32,
    /// The daemon's Unix socket (`socket`): `push` hands off there when a daemon answers.
    pub socket: Option<PathBuf>,
    /// The primary's data directory (`pgdata`): the daemon looks ahead through
    /// `pg_wal/archive_status/*.ready` when set.
    pub pgdata: Option<PathBuf>,
    /// Most segments the daemon ships ahead at once (`lookahead`; 0 turns look-ahead off).
    pub lookahead: usize,
}

impl ReceiverSettings {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file: ReceiverFile = read_toml(path)?;
        let base = base_dir(path);
        let invalid = |key, value: &str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            value: value.to_string(),
            reason,
        };
        let listen = file.listen.parse().map_err(|e| {
            invalid(
                "listen",
                &file.listen,
                format!("{e}; expected an address like 127.0.0.1:7443"),
            )
        })?;
        let idle_timeout = match &file.idle_timeout {
            Some(v) => parse_duration(v).map_err(|r| invalid("idle_timeout", v, r))?,
            None => DEFAULT_IDLE_TIMEOUT,
        };
        let count = |key, value: Option<usize>, default, range: std::ops::RangeInclusive<usize>| {
            let n = value.unwrap_or(default);
            if range.contains(&n) {
                Ok(n)
            } else {
                Err(invalid(
                    key,
                    &n.to_string(),
                    format!("expected {} to {}", range.start(), range.end()),
                ))
            }
        };
        let max_uploads = count(
            "max_uploads",
            file.max_uploads,
            DEFAULT_MAX_UPLOADS,
            MAX_UPLOADS_RANGE,
        )?;
        let max_connections = count(
            "max_connections",
            file.max_connections,
            DEFAULT_MAX_CONNECTIONS,
            MAX_CONNECTIONS_RANGE,
        )?;
        let size = |key,
                    value: &Option<Size>,
                    default,
                    range: std::ops::RangeInclusive<u64>,
                    per_second| {
            let Some(v) = value else { return Ok(default) };
            let n = parse_size(v, per_second).map_err(|r| invalid(key, &v.text(), r))?;
            if range.contains(&n) {
                Ok(n)
            } else {
                Err(invalid(
                    key,
                    &v.text(),
                    format!(
                        "expected {} to {}",
                        show_size(*range.start()),
                        show_size(*range.end())
                    ),
                ))
            }
        };
        let stream_window = size(
            "stream_window",
            &file.stream_window,
            DEFAULT_STREAM_WINDOW,
            STREAM_WINDOW_RANGE,
            false,
        )?;
        let min_upload_rate = size(
            "min_upload_rate",
            &file.min_upload_rate,
            DEFAULT_MIN_UPLOAD_RATE,
            MIN_UPLOAD_RATE_RANGE,
            true,
        )?;
        Ok(ReceiverSettings {
            config_path: path.to_path_buf(),
            listen,
            archive_dir: base.join(&file.archive_dir),
            cert: base.join(&file.cert),
            key: base.join(&file.key),
            client_ca: base.join(&file.client_ca),
            pgdata: file.pgdata.map(|p| base.join(p)),
            conninfo: file.conninfo,
            idle_timeout,
            max_uploads,
            max_connections,
            stream_window: u32::try_from(stream_window).expect("bounded by STREAM_WINDOW_RANGE"),
            min_upload_rate,
            retain_for: parse_retain_for(path, file.retain_for.as_deref())?,
        })
    }

    /// Upload slots one connection may hold at once: half of `max_uploads` (at least one), so
    /// that one connection cannot take every slot whenever there are two.
    pub fn uploads_per_connection(&self) -> usize {
        (self.max_uploads / 2).max(1)
    }
}

impl SenderSettings {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file: SenderFile = read_toml(path)?;
        let base = base_dir(path);
        let duration = |key, value: &Option<String>, default| match value {
            Some(v) => parse_duration(v).map_err(|reason| ConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                value: v.clone(),
                reason,
            }),
            None => Ok(default),
        };
        if !file.receiver.contains(':') {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key: "receiver",
                value: file.receiver.clone(),
                reason: "expected host:port, like 10.0.0.7:7443".into(),
            });
        }
        let invalid = |key, value: String, reason: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            value,
            reason: reason.to_string(),
        };
        let compression = match file.compression.as_deref() {
            None | Some("zstd") => Encoding::Zstd,
            Some("none") => Encoding::Plain,
            Some(other) => {
                return Err(invalid(
                    "compression",
                    other.to_string(),
                    "expected \"zstd\" or \"none\"",
                ))
            }
        };
        let compression_level = file.compression_level.unwrap_or(DEFAULT_ZSTD_LEVEL);
        if !(1..=19).contains(&compression_level) {
            return Err(invalid(
                "compression_level",
                compression_level.to_string(),
                "expected 1 (fastest, the default) to 19 (smallest)",
            ));
        }
        let lookahead = file.lookahead.unwrap_or(DEFAULT_LOOKAHEAD);
        if lookahead > MAX_LOOKAHEAD {
            return Err(invalid(
                "lookahead",
                lookahead.to_string(),
                &format!("expected 0 (off) to {MAX_LOOKAHEAD}"),
            ));
        }
        Ok(SenderSettings {
            socket: file.socket.map(|p| base.join(p)),
            pgdata: file.pgdata.map(|p| base.join(p)),
            lookahead,
            compression,
            compression_level,
            config_path: path.to_path_buf(),
            connect_timeout: duration(
                "connect_timeout",
                &file.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
            )?,
            timeout: duration("timeout", &file.timeout, DEFAULT_PUSH_TIMEOUT)?,
            receiver: file.receiver,
            server_name: file.server_name,
            ca: base.join(&file.ca),
            cert: base.join(&file.cert),
            key: base.join(&file.key),
        })
    }
}

/// The config path from `--config` or `WALSHIP_CONFIG` (clap fills both into one option).
pub fn require(path: Option<&Path>) -> Result<&Path, ConfigError> {
    path.ok_or(ConfigError::NoConfig)
}

/// The config file's directory, absolute, so that logs and `status` show real paths even when
/// `--config` was relative.
fn base_dir(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match std::env::current_dir() {
        // Collecting the components drops the "." segments.
        Ok(cwd) if dir.is_relative() => cwd.join(&dir).components().collect(),
        _ => dir,
    }
}

fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        // toml's message names the line and column and quotes the offending text.
        message: e.to_string().trim_end().replace('\n', " "),
    })
}

/// Parse `"500ms"`, `"10s"`, `"2m"`, `"1h"`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&t[..i], t[i..].trim()),
        None => (t, "s"),
    };
    let n: f64 = num.parse().map_err(|_| {
        format!("expected a duration like \"10s\", \"500ms\" or \"2m\", got {text:?}")
    })?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}; use ms, s, m or h"
            ))
        }
    };
    if !secs.is_finite() || secs < MIN_DURATION.as_secs_f64() || secs > 86_400.0 * 7.0 {
        return Err(format!(
            "{text:?} is out of range (at least 1ms, at most a week)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `retain_for`: a duration, or zero in any unit (`"0"`, `"0s"`), the default, for none.
fn parse_retain_for(path: &Path, value: Option<&str>) -> Result<Duration, ConfigError> {
    let Some(v) = value else {
        return Ok(Duration::ZERO);
    };
    let t = v.trim();
    let (num, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len()));
    if num.trim().parse::<f64>() == Ok(0.0) && ["", "ms", "s", "m", "min", "h"].contains(&unit) {
        return Ok(Duration::ZERO);
    }
    parse_duration(v).map_err(|reason| ConfigError::Invalid {
        path: path.to_path_buf(),
        key: "retain_for",
        value: v.to_string(),
        reason,
    })
}

/// Parse a size: a TOML integer of bytes, or a string like `"256KiB"`, `"1MiB"`, `"65536"`
/// (units B, KiB, MiB, GiB; with `per_second`, an optional `/s` suffix too).
pub fn parse_size(value: &Size, per_second: bool) -> Result<u64, String> {
    let text = match value {
        Size::Bytes(n) => {
            return u64::try_from(*n).map_err(|_| format!("{n} is negative; expected a size"))
        }
        Size::Text(t) => t.trim(),
    };
    let bare = match text.strip_suffix("/s") {
        Some(t) if per_second => t.trim_end(),
        _ => text,
    };
    let (num, unit) = match bare.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&bare[..i], bare[i..].trim()),
        None => (bare, "B"),
    };
    let expected = || {
        format!(
            "expected a size like \"256KiB\", \"1MiB\" or a number of bytes{}, got {text:?}",
            if per_second { " (per second)" } else { "" }
        )
    };
    let n: u64 = num.parse().map_err(|_| expected())?;
    let scale: u64 = match unit {
        "B" | "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}; use B, KiB, MiB or GiB"
            ))
        }
    };
    n.checked_mul(scale).ok_or_else(expected)
}

/// A size for a message: in KiB, MiB or GiB when exact.
fn show_size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n}B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("0s").is_err());
        // Under a millisecond QUIC would round an idle timeout to "none": refused.
        let err = parse_duration("0.0001ms").unwrap_err();
        assert!(err.contains("at least 1ms"), "{err}");
        assert!(parse_duration("0.5ms").is_err());
        assert_eq!(parse_duration("1ms").unwrap(), MIN_DURATION);
    }

    #[test]
    fn sizes() {
        let text = |t: &str| Size::Text(t.into());
        assert_eq!(parse_size(&Size::Bytes(65536), false), Ok(65536));
        assert_eq!(parse_size(&text("256KiB"), false), Ok(256 << 10));
        assert_eq!(parse_size(&text("1 MiB"), false), Ok(1 << 20));
        assert_eq!(parse_size(&text("2GiB"), false), Ok(2 << 30));
        assert_eq!(parse_size(&text("4096"), false), Ok(4096));
        assert_eq!(parse_size(&text("64KiB/s"), true), Ok(64 << 10));
        assert!(parse_size(&text("64KiB/s"), false).is_err());
        assert!(parse_size(&Size::Bytes(-1), false).is_err());
        assert!(parse_size(&text("12 furlongs"), false).is_err());
        assert!(parse_size(&text("1.5MiB"), false).is_err());
        assert!(parse_size(&text("99999999999GiB"), false).is_err());
        assert_eq!(show_size(256 << 10), "256KiB");
        assert_eq!(show_size(16 << 20), "16MiB");
    }

    #[test]
    fn receiver_limits_default_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("receiver.toml");
        let base = "listen = \"127.0.0.1:7443\"\narchive_dir = \"a\"\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\n";
        std::fs::write(&path, base).unwrap();
        let s = ReceiverSettings::load(&path).unwrap();
        assert_eq!(s.max_uploads, DEFAULT_MAX_UPLOADS);
        assert_eq!(s.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(u64::from(s.stream_window), DEFAULT_STREAM_WINDOW);
        assert_eq!(s.min_upload_rate, DEFAULT_MIN_UPLOAD_RATE);
        assert_eq!(s.uploads_per_connection(), 4);

        std::fs::write(&path, format!("{base}max_uploads = 1\nmax_connections = 2\nstream_window = \"64KiB\"\nmin_upload_rate = \"1MiB/s\"\n")).unwrap();
        let s = ReceiverSettings::load(&path).unwrap();
        assert_eq!((s.max_uploads, s.max_connections), (1, 2));
        assert_eq!((s.stream_window, s.min_upload_rate), (64 << 10, 1 << 20));
        assert_eq!(s.uploads_per_connection(), 1);
        std::fs::write(&path, format!("{base}stream_window = 131072\n")).unwrap();
        assert_eq!(
            ReceiverSettings::load(&path).unwrap().stream_window,
            128 << 10
        );

        for (line, key) in [
            ("max_uploads = 0", "max_uploads"),
            ("max_uploads = 65", "max_uploads"),
            ("max_connections = 0", "max_connections"),
            ("max_connections = 257", "max_connections"),
            ("stream_window = \"1KiB\"", "stream_window"),
            ("stream_window = \"1GiB\"", "stream_window"),
            ("stream_window = \"lots\"", "stream_window"),
            ("min_upload_rate = 0", "min_upload_rate"),
            ("idle_timeout = \"0.0001ms\"", "idle_timeout"),
        ] {
            std::fs::write(&path, format!("{base}{line}\n")).unwrap();
            let err = ReceiverSettings::load(&path).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains("receiver.toml"),
                "{line}: {err}"
            );
        }
    }

    #[test]
    fn retain_for_is_off_by_default_and_takes_a_duration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("receiver.toml");
        let base = "listen = \"127.0.0.1:7443\"\narchive_dir = \"a\"\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\n";
        std::fs::write(&path, base).unwrap();
        assert_eq!(
            ReceiverSettings::load(&path).unwrap().retain_for,
            Duration::ZERO
        );
        for (value, want) in [
            ("\"2h\"", Duration::from_secs(7200)),
            ("\"90m\"", Duration::from_secs(5400)),
            ("\"0\"", Duration::ZERO),
            ("\"0s\"", Duration::ZERO),
        ] {
            std::fs::write(&path, format!("{base}retain_for = {value}\n")).unwrap();
            assert_eq!(
                ReceiverSettings::load(&path).unwrap().retain_for,
                want,
                "{value}"
            );
        }
        for value in ["\"forever\"", "\"0 parsecs\"", "\"-1h\""] {
            std::fs::write(&path, format!("{base}retain_for = {value}\n")).unwrap();
            let err = ReceiverSettings::load(&path).unwrap_err().to_string();
            assert!(err.contains("retain_for"), "{value}: {err}");
        }
    }

    #[test]
    fn receiver_paths_resolve_against_the_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("receiver.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7443\"\narchive_dir = \"archive\"\ncert = \"certs/server.pem\"\nkey = \"/abs/server.key\"\nclient_ca = \"certs/ca.pem\"\n",
        )
        .unwrap();
        let s = ReceiverSettings::load(&path).unwrap();
        assert_eq!(s.archive_dir, dir.path().join("archive"));
        assert_eq!(s.key, PathBuf::from("/abs/server.key"));
        assert_eq!(s.pgdata, None);
        assert_eq!(s.idle_timeout, DEFAULT_IDLE_TIMEOUT);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sender.toml");
        std::fs::write(&path, "receiver = \"h:1\"\nserver_name = \"h\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\nrecieverr = 1\n").unwrap();
        let err = SenderSettings::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("sender.toml") && err.contains("recieverr"),
            "{err}"
        );

        std::fs::write(&path, "receiver = \"h:1\"\nserver_name = \"h\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\nconnect_timeout = \"soon\"\n").unwrap();
        let err = SenderSettings::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("connect_timeout") && err.contains("soon"),
            "{err}"
        );

        std::fs::write(
            &path,
            "receiver = \"h:1\"\nserver_name = \"h\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
        )
        .unwrap();
        let s = SenderSettings::load(&path).unwrap();
        assert_eq!(s.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!((s.compression, s.compression_level), (Encoding::Zstd, 1));

        std::fs::write(&path, "receiver = \"h:1\"\nserver_name = \"h\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\ncompression = \"lz4\"\n").unwrap();
        let err = SenderSettings::load(&path).unwrap_err().to_string();
        assert!(err.contains("compression") && err.contains("lz4"), "{err}");
        std::fs::write(&path, "receiver = \"h:1\"\nserver_name = \"h\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\ncompression = \"none\"\n").unwrap();
        assert_eq!(
            SenderSettings::load(&path).unwrap().compression,
            Encoding::Plain
        );
        assert_eq!(s.ca, dir.path().join("a"));
    }
}
