//! Config files (TOML) to resolved settings, in two stages: `*File` mirrors the TOML
//! (`deny_unknown_fields`, so a typo is an error naming the file and line, not a silently ignored
//! key), `*Settings` holds parsed addresses, durations and paths resolved against the config
//! file's directory. Certificates are loaded later, by the commands that need them, so
//! `restore` (run by PostgreSQL as its own user) needs only `archive_dir` to be readable.
//!
//! Every error names the file; one about a place in it (not TOML, an unknown key, a value of the
//! wrong type or out of bounds) says the line and shows it with a caret under the spot, on the
//! lines after the message, so the first line alone still says what to do. A missing required
//! key is named with an example, without a position.

use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::proto::Encoding;
use crate::sys::tls::check_server_name;

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
/// Durations are parsed (and bounded) as on the command line: see [`crate::human`].
pub use crate::human::{parse_duration, MAX_DURATION, MIN_DURATION};
/// Default for `max_uploads`: uploads decoding and writing at once, across all connections.
/// Each holds a zstd window (~2.7 MiB), so this bounds decoding memory; two cores decode faster
/// than 8 senders send.
pub const DEFAULT_MAX_UPLOADS: usize = 8;
/// Bounds for `max_uploads`: at least one; at most 64 (~170 MiB of decoding state).
pub const MAX_UPLOADS_RANGE: RangeInclusive<usize> = 1..=64;
/// Default for `max_connections`: connections allowed to send at once (to hold stream credit,
/// each up to 16 x `stream_window` unread bytes). PostgreSQL's archiver uses one connection at a
/// time per primary; a sender daemon keeps one.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;
/// Bounds for `max_connections`: at least one; at most the 256 connections the receiver keeps
/// open at once (sending or waiting to).
pub const MAX_CONNECTIONS_RANGE: RangeInclusive<usize> = 1..=256;
/// Default for `stream_window`: unread bytes per stream (QUIC flow control).
pub const DEFAULT_STREAM_WINDOW: u64 = 256 << 10;
/// Bounds for `stream_window`: below 16 KiB a stream crawls on any link with a round trip;
/// above 16 MiB one connection's 16 streams could hold 256 MiB of unread bytes.
pub const STREAM_WINDOW_RANGE: RangeInclusive<u64> = (16 << 10)..=(16 << 20);
/// Default for `min_upload_rate` (bytes per second, counted on the file's plain content, after a
/// grace of `idle_timeout`): a 16 MiB segment at this rate takes 4 min 16 s, just under the
/// sender's default `timeout` of 5 min, so a slower upload would fail on the sender's side
/// anyway; below it an upload is not a sender but a hold on a slot.
pub const DEFAULT_MIN_UPLOAD_RATE: u64 = 64 << 10;
/// Bounds for `min_upload_rate`: 1 KiB/s (a 16 MiB segment in 4.5 hours) to 1 GiB/s.
pub const MIN_UPLOAD_RATE_RANGE: RangeInclusive<u64> = (1 << 10)..=(1 << 30);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no config file: pass --config FILE or set WALSHIP_CONFIG")]
    NoConfig,
    #[error("cannot read config {}: {source}; check --config or WALSHIP_CONFIG", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type: toml's message, at its place.
    #[error("config {}{}: {message}{}", path.display(), Excerpt::line_of(at), Excerpt::block_of(at))]
    Parse {
        path: PathBuf,
        message: String,
        at: Option<Box<Excerpt>>,
    },
    #[error("config {}: required key `{key}` is missing; add it, e.g. {key} = {example}", path.display())]
    Missing {
        path: PathBuf,
        key: &'static str,
        example: &'static str,
    },
    /// A value of the right type that cannot be used; `value` as written in the file.
    #[error("config {}{}: {key} = {value}: {reason}{}", path.display(), Excerpt::line_of(at), Excerpt::block_of(at))]
    Invalid {
        path: PathBuf,
        key: &'static str,
        value: String,
        reason: String,
        at: Option<Box<Excerpt>>,
    },
}

/// Where in the file an error is: its line, and that line with a caret under the spot, as
/// toml itself renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excerpt {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// `  |`, `6 | the line`, `  |   ^^^^` (no trailing newline).
    pub rendered: String,
}

impl Excerpt {
    /// The excerpt of `text` around the byte range `span` (clamped to the text and its line).
    pub fn new(text: &str, span: Range<usize>) -> Excerpt {
        let start = floor_char_boundary(text, span.start.min(text.len()));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let content = text[line_start..line_end].trim_end_matches('\r');
        let line = text[..line_start].matches('\n').count() + 1;
        let before = &text[line_start..start];
        let end = floor_char_boundary(text, span.end.clamp(start, line_end)).max(start);
        let width = text[start..end].chars().count().max(1);
        // Tabs stay tabs under the caret, so it lines up whatever the tab width.
        let pad: String = before
            .chars()
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let gutter = " ".repeat(line.to_string().len());
        Excerpt {
            line,
            column: before.chars().count() + 1,
            rendered: format!(
                "{gutter} |\n{line} | {content}\n{gutter} | {pad}{}",
                "^".repeat(width)
            ),
        }
    }

    fn line_of(at: &Option<Box<Excerpt>>) -> String {
        at.as_ref()
            .map(|e| format!(", line {}", e.line))
            .unwrap_or_default()
    }

    fn block_of(at: &Option<Box<Excerpt>>) -> String {
        at.as_ref()
            .map(|e| format!("\n{}", e.rendered))
            .unwrap_or_default()
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// receiver.toml as written. Required keys are options here so that a missing one is reported
/// by name ([`ConfigError::Missing`]), not at a made-up position.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverFile {
    pub listen: Option<String>,
    pub archive_dir: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub pgdata: Option<PathBuf>,
    pub conninfo: Option<String>,
    pub idle_timeout: Option<Scalar>,
    pub max_uploads: Option<usize>,
    pub max_connections: Option<usize>,
    pub stream_window: Option<Scalar>,
    pub min_upload_rate: Option<Scalar>,
    pub retain_for: Option<Scalar>,
    pub metrics_listen: Option<String>,
    pub object_store: Option<ObjectStoreFile>,
}

/// receiver.toml `[object_store]` as written. The secret keys are listed only to refuse them
/// with advice: credentials come from the environment or `credentials_file`, never the TOML.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreFile {
    pub url: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub credentials_file: Option<PathBuf>,
    #[serde(alias = "aws_access_key_id")]
    pub access_key_id: Option<toml::Value>,
    #[serde(alias = "aws_secret_access_key", alias = "secret_key")]
    pub secret_access_key: Option<toml::Value>,
    #[serde(alias = "aws_session_token")]
    pub session_token: Option<toml::Value>,
}

/// Resolved `[object_store]`: where the receiver uploads what it stored (see the receiver's
/// `objstore` module). Credentials are read when a command needs them, not at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStoreSettings {
    /// `url` as written (`s3://BUCKET/PREFIX`), for messages and `status`.
    pub url: String,
    pub bucket: String,
    /// The key prefix without leading or trailing `/` (may be empty: the bucket's root).
    pub prefix: String,
    /// `endpoint` (`http://host:port` or `https://...`); none: AWS S3 of `region`.
    pub endpoint: Option<String>,
    /// `region` (default `us-east-1`).
    pub region: String,
    /// `credentials_file`, resolved against the config's directory; none: the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`).
    pub credentials_file: Option<PathBuf>,
}

/// Default `region` of `[object_store]`.
pub const DEFAULT_REGION: &str = "us-east-1";

/// A duration or a size as written in TOML: a number, or a string with or without a unit
/// (`"10s"`, `"256KiB"`, `"3"`). A number means what a string without a unit means (seconds,
/// bytes), so `connect_timeout = 3` and `connect_timeout = "3"` agree.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Int(i64),
    Float(f64),
    Text(String),
}

impl Scalar {
    /// The value as written, in TOML syntax (strings quoted), for messages.
    pub fn literal(&self) -> String {
        match self {
            Scalar::Text(t) => format!("{t:?}"),
            other => other.bare(),
        }
    }

    /// The value as text without quotes: what the parsers read.
    fn bare(&self) -> String {
        match self {
            Scalar::Int(n) => n.to_string(),
            Scalar::Float(x) => x.to_string(),
            Scalar::Text(t) => t.clone(),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or a string with a unit, like \"10s\" or \"256KiB\"")
            }
            fn visit_i64<E>(self, n: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(n))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Scalar, E> {
                i64::try_from(n)
                    .map(Scalar::Int)
                    .map_err(|_| E::custom(format!("{n} is too large")))
            }
            fn visit_f64<E>(self, x: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(x))
            }
            fn visit_str<E>(self, t: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(t.to_string()))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// sender.toml as written (required keys as options, see [`ReceiverFile`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderFile {
    pub receiver: Option<String>,
    pub server_name: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub connect_timeout: Option<Scalar>,
    pub timeout: Option<Scalar>,
    pub compression: Option<String>,
    pub compression_level: Option<i32>,
    pub socket: Option<PathBuf>,
    pub pgdata: Option<PathBuf>,
    pub lookahead: Option<usize>,
    pub metrics_listen: Option<String>,
    pub conninfo: Option<String>,
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
    /// The plain-HTTP Prometheus endpoint of `serve` (`metrics_listen`; none: off).
    pub metrics_listen: Option<SocketAddr>,
    /// The object-store tier (`[object_store]`; none: off).
    pub object_store: Option<ObjectStoreSettings>,
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
    /// The plain-HTTP Prometheus endpoint of the daemon (`metrics_listen`; none: off).
    pub metrics_listen: Option<SocketAddr>,
    /// How `check` reaches the primary (`conninfo`, libpq syntax).
    pub conninfo: Option<String>,
}

impl ReceiverSettings {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let src = Source::read(path)?;
        let file: ReceiverFile = src.parse()?;
        let base = base_dir(path);
        let listen = src.required(file.listen, "listen", "\"0.0.0.0:7443\"")?;
        let archive_dir = src.required(
            file.archive_dir,
            "archive_dir",
            "\"/var/lib/walship/archive\"",
        )?;
        let cert = src.required(file.cert, "cert", "\"/etc/walship/server.pem\"")?;
        let key = src.required(file.key, "key", "\"/etc/walship/server.key\"")?;
        let client_ca = src.required(file.client_ca, "client_ca", "\"/etc/walship/ca.pem\"")?;
        let listen = listen.parse().map_err(|e| {
            src.invalid(
                "listen",
                format!("{listen:?}"),
                format!("{e}; expected an address and port like \"0.0.0.0:7443\""),
            )
        })?;
        let stream_window = src.size(
            "stream_window",
            &file.stream_window,
            DEFAULT_STREAM_WINDOW,
            STREAM_WINDOW_RANGE,
            false,
        )?;
        Ok(ReceiverSettings {
            config_path: path.to_path_buf(),
            listen,
            archive_dir: base.join(archive_dir),
            cert: base.join(cert),
            key: base.join(key),
            client_ca: base.join(client_ca),
            pgdata: file.pgdata.map(|p| base.join(p)),
            conninfo: file.conninfo,
            idle_timeout: src.duration("idle_timeout", &file.idle_timeout, DEFAULT_IDLE_TIMEOUT)?,
            max_uploads: src.count(
                "max_uploads",
                file.max_uploads,
                DEFAULT_MAX_UPLOADS,
                MAX_UPLOADS_RANGE,
            )?,
            max_connections: src.count(
                "max_connections",
                file.max_connections,
                DEFAULT_MAX_CONNECTIONS,
                MAX_CONNECTIONS_RANGE,
            )?,
            stream_window: u32::try_from(stream_window).expect("bounded by STREAM_WINDOW_RANGE"),
            min_upload_rate: src.size(
                "min_upload_rate",
                &file.min_upload_rate,
                DEFAULT_MIN_UPLOAD_RATE,
                MIN_UPLOAD_RATE_RANGE,
                true,
            )?,
            retain_for: src.retain_for(&file.retain_for)?,
            metrics_listen: src.metrics_listen(file.metrics_listen)?,
            object_store: file
                .object_store
                .map(|o| src.object_store(o, &base))
                .transpose()?,
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
        let src = Source::read(path)?;
        let file: SenderFile = src.parse()?;
        let base = base_dir(path);
        let receiver = src.required(file.receiver, "receiver", "\"standby.example.com:7443\"")?;
        let server_name =
            src.required(file.server_name, "server_name", "\"standby.example.com\"")?;
        let ca = src.required(file.ca, "ca", "\"/etc/walship/ca.pem\"")?;
        let cert = src.required(file.cert, "cert", "\"/etc/walship/client.pem\"")?;
        let key = src.required(file.key, "key", "\"/etc/walship/client.key\"")?;
        let port = receiver
            .rsplit_once(':')
            .map(|(host, port)| (host, port.parse::<u16>()));
        if !matches!(port, Some((host, Ok(_))) if !host.is_empty()) {
            return Err(src.invalid(
                "receiver",
                format!("{receiver:?}"),
                "expected host:port, like \"standby.example.com:7443\" or \"10.0.0.7:7443\"",
            ));
        }
        check_server_name(&server_name).map_err(|reason| {
            src.invalid(
                "server_name",
                format!("{server_name:?}"),
                format!("{reason}; set it to the name or IP address the receiver's certificate was made for (walship-receiver certs --server-name)"),
            )
        })?;
        let compression = match file.compression.as_deref() {
            None | Some("zstd") => Encoding::Zstd,
            Some("none") => Encoding::Plain,
            Some(other) => {
                return Err(src.invalid(
                    "compression",
                    format!("{other:?}"),
                    "expected \"zstd\" or \"none\"",
                ))
            }
        };
        let compression_level = file.compression_level.unwrap_or(DEFAULT_ZSTD_LEVEL);
        if !(1..=19).contains(&compression_level) {
            return Err(src.invalid(
                "compression_level",
                compression_level.to_string(),
                "expected 1 (fastest, the default) to 19 (smallest)",
            ));
        }
        let lookahead = file.lookahead.unwrap_or(DEFAULT_LOOKAHEAD);
        if lookahead > MAX_LOOKAHEAD {
            return Err(src.invalid(
                "lookahead",
                lookahead.to_string(),
                format!("expected 0 (off) to {MAX_LOOKAHEAD}"),
            ));
        }
        Ok(SenderSettings {
            socket: file.socket.map(|p| base.join(p)),
            pgdata: file.pgdata.map(|p| base.join(p)),
            lookahead,
            metrics_listen: src.metrics_listen(file.metrics_listen)?,
            conninfo: file.conninfo,
            compression,
            compression_level,
            config_path: path.to_path_buf(),
            connect_timeout: src.duration(
                "connect_timeout",
                &file.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
            )?,
            timeout: src.duration("timeout", &file.timeout, DEFAULT_PUSH_TIMEOUT)?,
            receiver,
            server_name,
            ca: base.join(ca),
            cert: base.join(cert),
            key: base.join(key),
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

/// A config file's path and text: deserializes it, and builds the errors that point into it.
struct Source {
    path: PathBuf,
    text: String,
}

impl Source {
    fn read(path: &Path) -> Result<Source, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Source {
            path: path.to_path_buf(),
            text,
        })
    }

    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(&self.text).map_err(|e| {
            let span = e.span();
            // toml names an unknown key itself; for a value of the wrong type, say whose.
            let key = span.clone().and_then(|s| self.key_at(s.start));
            ConfigError::Parse {
                path: self.path.clone(),
                message: parse_message(e.message(), key.as_deref()),
                at: span.map(|s| Box::new(Excerpt::new(&self.text, s))),
            }
        })
    }

    fn required<T>(
        &self,
        value: Option<T>,
        key: &'static str,
        example: &'static str,
    ) -> Result<T, ConfigError> {
        value.ok_or_else(|| ConfigError::Missing {
            path: self.path.clone(),
            key,
            example,
        })
    }

    /// `[object_store]`, checked: an `s3://BUCKET/PREFIX` url, an http(s) endpoint, no secret.
    fn object_store(
        &self,
        o: ObjectStoreFile,
        base: &Path,
    ) -> Result<ObjectStoreSettings, ConfigError> {
        for (set, key) in [
            (o.access_key_id.is_some(), "object_store.access_key_id"),
            (
                o.secret_access_key.is_some(),
                "object_store.secret_access_key",
            ),
            (o.session_token.is_some(), "object_store.session_token"),
        ] {
            if set {
                return Err(self.invalid(
                    key,
                    "(hidden)".to_string(),
                    "credentials are never read from receiver.toml; remove this line and set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment, or name a file of mode 0600 holding them in object_store.credentials_file",
                ));
            }
        }
        let url = self.required(o.url, "object_store.url", "\"s3://my-bucket/walship\"")?;
        let bad_url = |reason: &str| {
            self.invalid(
                "object_store.url",
                format!("{url:?}"),
                format!(
                    "{reason}; expected s3://BUCKET/PREFIX, like \"s3://wal-archive/cluster1\""
                ),
            )
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad_url("it does not start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !bucket_ok {
            return Err(bad_url(
                "the bucket name must be 3 to 63 lowercase letters, digits, '-' or '.'",
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..")
            || prefix.contains("//")
            || prefix.chars().any(|c| c.is_control())
        {
            return Err(bad_url("the prefix has an empty, '.' or '..' part"));
        }
        let endpoint = match o.endpoint {
            None => None,
            Some(e) => {
                let ok = ["http://", "https://"].iter().any(|p| {
                    e.strip_prefix(p)
                        .is_some_and(|h| !h.is_empty() && !h.contains(char::is_whitespace))
                });
                if !ok {
                    return Err(self.invalid(
                        "object_store.endpoint",
                        format!("{e:?}"),
                        "expected an http:// or https:// URL like \"http://127.0.0.1:3900\"",
                    ));
                }
                Some(e.trim_end_matches('/').to_string())
            }
        };
        let region = o.region.unwrap_or_else(|| DEFAULT_REGION.to_string());
        if region.is_empty() || region.contains(char::is_whitespace) {
            return Err(self.invalid(
                "object_store.region",
                format!("{region:?}"),
                "expected a region name like \"us-east-1\" (S3-compatible stores accept any; Garage's default is \"garage\")",
            ));
        }
        Ok(ObjectStoreSettings {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            url,
            endpoint,
            region,
            credentials_file: o.credentials_file.map(|p| base.join(p)),
        })
    }

    /// `key = value` cannot be used, for `reason`; points at the value in the file.
    /// `metrics_listen`, an address and port, when set.
    fn metrics_listen(&self, value: Option<String>) -> Result<Option<SocketAddr>, ConfigError> {
        value
            .map(|v| {
                v.parse().map_err(|e| {
                    self.invalid(
                        "metrics_listen",
                        format!("{v:?}"),
                        format!("{e}; expected an address and port like \"127.0.0.1:9847\""),
                    )
                })
            })
            .transpose()
    }

    fn invalid(&self, key: &'static str, value: String, reason: impl Into<String>) -> ConfigError {
        let span = self
            .entries()
            .into_iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, value)| value);
        ConfigError::Invalid {
            path: self.path.clone(),
            key,
            value,
            reason: reason.into(),
            at: span.map(|s| Box::new(Excerpt::new(&self.text, s))),
        }
    }

    /// Top-level keys with the spans of the key and of its value (none if the text is not TOML).
    fn entries(&self) -> Vec<(String, Range<usize>, Range<usize>)> {
        let Ok(table) = toml::de::DeTable::parse(&self.text) else {
            return Vec::new();
        };
        table
            .get_ref()
            .iter()
            .map(|(k, v)| (k.get_ref().to_string(), k.span(), v.span()))
            .collect()
    }

    /// The top-level key whose line holds byte `offset`, if any.
    fn key_at(&self, offset: usize) -> Option<String> {
        self.entries()
            .into_iter()
            .find(|(_, k, v)| k.start <= offset && offset <= v.end)
            .map(|(key, _, _)| key)
    }

    fn duration(
        &self,
        key: &'static str,
        value: &Option<Scalar>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            Some(v) => parse_duration(&v.bare()).map_err(|r| self.invalid(key, v.literal(), r)),
            None => Ok(default),
        }
    }

    /// `retain_for`: a duration, or zero in any unit (`0`, `"0"`, `"0s"`, the default) for none.
    fn retain_for(&self, value: &Option<Scalar>) -> Result<Duration, ConfigError> {
        match value {
            Some(v) => crate::human::parse_duration_or_zero(&v.bare())
                .map_err(|r| self.invalid("retain_for", v.literal(), r)),
            None => Ok(Duration::ZERO),
        }
    }

    fn count(
        &self,
        key: &'static str,
        value: Option<usize>,
        default: usize,
        range: RangeInclusive<usize>,
    ) -> Result<usize, ConfigError> {
        let n = value.unwrap_or(default);
        if range.contains(&n) {
            Ok(n)
        } else {
            let reason = format!("expected {} to {}", range.start(), range.end());
            Err(self.invalid(key, n.to_string(), reason))
        }
    }

    fn size(
        &self,
        key: &'static str,
        value: &Option<Scalar>,
        default: u64,
        range: RangeInclusive<u64>,
        per_second: bool,
    ) -> Result<u64, ConfigError> {
        let Some(v) = value else { return Ok(default) };
        let n = parse_size(v, per_second).map_err(|r| self.invalid(key, v.literal(), r))?;
        if range.contains(&n) {
            return Ok(n);
        }
        let unit = if per_second { "/s" } else { "" };
        let reason = format!(
            "expected {}{unit} to {}{unit}",
            show_size(*range.start()),
            show_size(*range.end())
        );
        Err(self.invalid(key, v.literal(), reason))
    }
}

/// toml's message in the words of the README ("key", "a whole number"), with what to do.
fn parse_message(message: &str, key: Option<&str>) -> String {
    let message = message.trim_end();
    if let Some(rest) = message.strip_prefix("unknown field") {
        return format!("unknown key{rest}; correct its spelling or remove it");
    }
    let mut plain = message.to_string();
    for (rust, words) in [
        ("usize", "a whole number, 0 or more"),
        ("u64", "a whole number, 0 or more"),
        ("i32", "a whole number"),
        ("i64", "a whole number"),
    ] {
        plain = plain.replace(&format!("expected {rust}"), &format!("expected {words}"));
    }
    match key {
        Some(key) => format!("{key}: {plain}; correct this line"),
        None => format!("{plain}; correct this line"),
    }
}

/// Parse a size: a TOML integer of bytes, or a string like `"256KiB"`, `"1MiB"`, `"65536"`
/// (units B, KiB, MiB, GiB; with `per_second`, an optional `/s` suffix too).
pub fn parse_size(value: &Scalar, per_second: bool) -> Result<u64, String> {
    let example = if per_second {
        "\"64KiB/s\""
    } else {
        "\"256KiB\""
    };
    let text = match value {
        Scalar::Int(n) => {
            return u64::try_from(*n).map_err(|_| "negative; expected a size".to_string())
        }
        Scalar::Float(_) => {
            return Err(format!(
                "expected a whole number of bytes or a size with a unit, like {example}"
            ))
        }
        Scalar::Text(t) => t.trim(),
    };
    let bare = match text.strip_suffix("/s") {
        Some(t) if per_second => t.trim_end(),
        _ => text,
    };
    let (num, unit) = match bare.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&bare[..i], bare[i..].trim()),
        None => (bare, "B"),
    };
    let expected = || format!("expected a size like {example}, \"1MiB\" or a number of bytes");
    let n: u64 = num.parse().map_err(|_| expected())?;
    let scale: u64 = match unit {
        "B" | "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            let suffix = if per_second {
                ", optionally followed by /s"
            } else {
                ""
            };
            return Err(format!(
                "unknown unit {unit:?}; use B, KiB, MiB or GiB{suffix}"
            ));
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
    fn sizes() {
        let text = |t: &str| Scalar::Text(t.into());
        assert_eq!(parse_size(&Scalar::Int(65536), false), Ok(65536));
        assert_eq!(parse_size(&text("256KiB"), false), Ok(256 << 10));
        assert_eq!(parse_size(&text("1 MiB"), false), Ok(1 << 20));
        assert_eq!(parse_size(&text("2GiB"), false), Ok(2 << 30));
        assert_eq!(parse_size(&text("4096"), false), Ok(4096));
        assert_eq!(parse_size(&text("64KiB/s"), true), Ok(64 << 10));
        assert!(parse_size(&text("64KiB/s"), false).is_err());
        assert!(parse_size(&Scalar::Int(-1), false).is_err());
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
    fn metrics_listen_is_off_by_default_and_takes_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("receiver.toml");
        let base = "listen = \"127.0.0.1:7443\"\narchive_dir = \"a\"\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\n";
        std::fs::write(&path, base).unwrap();
        assert_eq!(ReceiverSettings::load(&path).unwrap().metrics_listen, None);
        std::fs::write(
            &path,
            format!("{base}metrics_listen = \"127.0.0.1:9847\"\n"),
        )
        .unwrap();
        assert_eq!(
            ReceiverSettings::load(&path).unwrap().metrics_listen,
            Some("127.0.0.1:9847".parse().unwrap())
        );
        std::fs::write(&path, format!("{base}metrics_listen = \"localhost\"\n")).unwrap();
        let err = ReceiverSettings::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("metrics_listen") && err.contains("127.0.0.1:9847"),
            "{err}"
        );

        let path = dir.path().join("sender.toml");
        let base =
            "receiver = \"h:7443\"\nserver_name = \"h\"\nca = \"ca\"\ncert = \"c\"\nkey = \"k\"\n";
        std::fs::write(&path, format!("{base}metrics_listen = \"[::1]:9848\"\n")).unwrap();
        assert_eq!(
            SenderSettings::load(&path).unwrap().metrics_listen,
            Some("[::1]:9848".parse().unwrap())
        );
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
            ("\"0d\"", Duration::ZERO),
            ("\"30d\"", Duration::from_secs(30 * 86_400)),
            ("\"1w 2d\"", Duration::from_secs(9 * 86_400)),
        ] {
            std::fs::write(&path, format!("{base}retain_for = {value}\n")).unwrap();
            assert_eq!(
                ReceiverSettings::load(&path).unwrap().retain_for,
                want,
                "{value}"
            );
        }
        for value in [
            "\"forever\"",
            "\"0 parsecs\"",
            "\"-1h\"",
            "\"400d\"",
            "\"0.1ms\"",
        ] {
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

    const SENDER: &str =
        "receiver = \"h:1\"\nserver_name = \"h\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";

    /// The error loading `text` as sender.toml gives, and the file's path (removed by then).
    fn sender_error(text: &str) -> (PathBuf, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sender.toml");
        std::fs::write(&path, text).unwrap();
        let err = SenderSettings::load(&path).unwrap_err().to_string();
        (path, err)
    }

    #[test]
    fn toml_errors_show_the_line_with_a_caret_under_the_key() {
        let (path, err) = sender_error(&format!("{SENDER}recieverr = 1\n"));
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 4, "{err}");
        assert!(
            lines[0].starts_with(&format!(
                "config {}, line 6: unknown key `recieverr`, expected one of `receiver`",
                path.display()
            )),
            "{err}"
        );
        assert!(
            lines[0].ends_with("correct its spelling or remove it"),
            "{err}"
        );
        assert_eq!(&lines[1..], ["  |", "6 | recieverr = 1", "  | ^^^^^^^^^"]);

        // A value of the wrong type: the caret under the value, the key named.
        let (_, err) = sender_error(&format!("{SENDER}lookahead = \"4\"\n"));
        let lines: Vec<&str> = err.lines().collect();
        assert!(
            lines[0].ends_with(
                "line 6: lookahead: invalid type: string \"4\", expected a whole number, 0 or more; correct this line"
            ),
            "{err}"
        );
        assert_eq!(
            &lines[1..],
            ["  |", "6 | lookahead = \"4\"", "  |             ^^^"]
        );

        // Not TOML at all: toml's own place, past the key.
        let (_, err) = sender_error(&format!("{SENDER}oops\n"));
        assert!(
            err.lines()
                .next()
                .unwrap()
                .contains("line 6: key with no value"),
            "{err}"
        );
        assert!(!err.contains("line 1, column 1"), "{err}");
    }

    #[test]
    fn a_missing_key_is_named_without_a_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sender.toml");
        std::fs::write(&path, SENDER.replace("server_name = \"h\"\n", "")).unwrap();
        let err = SenderSettings::load(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "config {}: required key `server_name` is missing; add it, e.g. server_name = \"standby.example.com\"",
                path.display()
            )
        );
        let path = dir.path().join("receiver.toml");
        std::fs::write(&path, "# nothing yet\n").unwrap();
        let err = ReceiverSettings::load(&path).unwrap_err().to_string();
        assert!(err.contains("required key `listen` is missing"), "{err}");
        assert!(!err.contains("line"), "{err}");
    }

    #[test]
    fn a_bad_value_names_key_value_and_line() {
        let (path, err) = sender_error(&format!("{SENDER}\tcompression = \"lz4\"\n"));
        assert_eq!(
            err,
            format!(
                "config {}, line 6: compression = \"lz4\": expected \"zstd\" or \"none\"\n  |\n6 | \tcompression = \"lz4\"\n  | \t              ^^^^^",
                path.display()
            )
        );
        let (_, err) = sender_error(&format!("{SENDER}compression_level = 99\n"));
        assert!(err.contains("compression_level = 99: expected 1"), "{err}");
        let (_, err) = sender_error(&SENDER.replace("\"h:1\"", "\"standby\""));
        assert!(
            err.contains("line 1: receiver = \"standby\": expected host:port"),
            "{err}"
        );
    }

    #[test]
    fn a_duration_may_be_a_number_of_seconds_written_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sender.toml");
        for (value, expected) in [
            ("3", Duration::from_secs(3)),
            ("\"3\"", Duration::from_secs(3)),
            ("\"3s\"", Duration::from_secs(3)),
            ("0.5", Duration::from_millis(500)),
            ("\"1ms\"", MIN_DURATION),
        ] {
            std::fs::write(&path, format!("{SENDER}connect_timeout = {value}\n")).unwrap();
            let s = SenderSettings::load(&path).unwrap();
            assert_eq!(s.connect_timeout, expected, "connect_timeout = {value}");
        }
        for (value, says) in [
            ("0", "connect_timeout = 0: out of range: at least 1ms"),
            ("-3", "connect_timeout = -3: expected a duration"),
            (
                "\"0.1ms\"",
                "connect_timeout = \"0.1ms\": out of range: at least 1ms",
            ),
            ("true", "connect_timeout: invalid type: boolean `true`"),
        ] {
            let (_, err) = sender_error(&format!("{SENDER}connect_timeout = {value}\n"));
            assert!(err.contains(says), "{value}: {err}");
            assert!(err.contains("line 6"), "{value}: {err}");
        }
    }

    #[test]
    fn server_name_is_checked_at_load() {
        for bad in [
            "",
            " ",
            "standby example",
            "-standby",
            "[::1]",
            "10.0.0.300",
            "a..b",
        ] {
            let (_, err) = sender_error(
                &SENDER.replace("server_name = \"h\"", &format!("server_name = {bad:?}")),
            );
            let first = err.lines().next().unwrap();
            assert!(
                first.contains(&format!("line 2: server_name = {bad:?}: "))
                    && first.contains("walship-receiver certs --server-name"),
                "{bad:?}: {err}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sender.toml");
        for good in [
            "localhost",
            "standby.example.com",
            "standby.example.com.",
            "10.0.0.7",
            "::1",
        ] {
            std::fs::write(&path, SENDER.replace("\"h\"", &format!("{good:?}"))).unwrap();
            assert_eq!(SenderSettings::load(&path).unwrap().server_name, good);
        }
    }

    #[test]
    fn excerpts_count_characters_and_stay_on_the_line() {
        let text = "a = 1\nnamé = \"x\"\n";
        let at = text.find("\"x\"").unwrap();
        let e = Excerpt::new(text, at..at + 3);
        assert_eq!((e.line, e.column), (2, 8));
        assert_eq!(e.rendered, "  |\n2 | namé = \"x\"\n  |        ^^^");
        // A span past the end of its line, or of the text, is cut to one caret at the end.
        let e = Excerpt::new(text, 4..text.len());
        assert_eq!(e.rendered, "  |\n1 | a = 1\n  |     ^");
        let e = Excerpt::new("x", 1..1);
        assert_eq!(e.rendered, "  |\n1 | x\n  |  ^");
    }
}
