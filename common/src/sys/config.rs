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
/// Upper bound (and default cap) of `compression_threads`: beyond 4 threads one 16 MiB segment
/// is cut into jobs too few to keep them busy, and the primary's cores are PostgreSQL's.
pub const MAX_COMPRESSION_THREADS: u32 = 4;
/// Bounds of `partial_interval`: below 10 ms the primary is asked more often than it flushes
/// under load; above an hour shipping the open segment makes no sense.
pub const MIN_PARTIAL_INTERVAL: Duration = Duration::from_millis(10);
pub const MAX_PARTIAL_INTERVAL: Duration = Duration::from_secs(3600);
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
    /// A many-cluster config that cannot be used as a whole (both forms, duplicate names or
    /// archive_dirs, a client allowed for two clusters), or one `[[clusters]]` table's problem.
    #[error("config {}: {message}", path.display())]
    Clusters { path: PathBuf, message: String },
    #[error("config {} configures several clusters ({}): pass --cluster NAME to say which", path.display(), names.join(", "))]
    ClusterRequired { path: PathBuf, names: Vec<String> },
    #[error("config {} has no cluster named {name:?} (configured: {}): check --cluster", path.display(), names.join(", "))]
    UnknownCluster {
        path: PathBuf,
        name: String,
        names: Vec<String>,
    },
    #[error("config {} configures a single cluster (top-level archive_dir, no [[clusters]] tables): drop --cluster {name}", path.display())]
    NotClustered { path: PathBuf, name: String },
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
    /// Many clusters on one receiver: one `[[clusters]]` table each, instead of the top-level
    /// `archive_dir`, `pgdata` and `conninfo`.
    pub clusters: Option<Vec<ClusterFile>>,
    /// The object-store tier of the single-cluster form (`[clusters.object_store]` with
    /// `[[clusters]]`).
    pub object_store: Option<ObjectStoreFile>,
}

/// One `[[clusters]]` table of receiver.toml as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub name: Option<String>,
    pub archive_dir: Option<PathBuf>,
    pub pgdata: Option<PathBuf>,
    pub conninfo: Option<String>,
    /// Client certificate names (their common name, as given to `certs --client-name`) that
    /// may write to this cluster.
    pub allowed_clients: Option<Vec<String>>,
    pub retain_for: Option<Scalar>,
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
    /// Fan-out: one `[[receivers]]` table per receiver (instead of `receiver`/`server_name`).
    pub receivers: Option<Vec<ReceiverEntry>>,
    /// Fan-out policy: `"all"` (the default) or a number of receivers.
    pub require: Option<Scalar>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub connect_timeout: Option<Scalar>,
    pub timeout: Option<Scalar>,
    pub compression: Option<String>,
    pub compression_level: Option<i32>,
    pub compression_threads: Option<u32>,
    pub socket: Option<PathBuf>,
    pub pgdata: Option<PathBuf>,
    pub lookahead: Option<usize>,
    pub metrics_listen: Option<String>,
    pub conninfo: Option<String>,
    pub max_backlog: Option<Scalar>,
    pub state_dir: Option<PathBuf>,
    pub partial_interval: Option<Scalar>,
}

/// One `[[receivers]]` table of sender.toml as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverEntry {
    pub address: Option<String>,
    pub server_name: Option<String>,
    /// CA for this receiver only (default: the top-level `ca`).
    pub ca: Option<PathBuf>,
}

/// One receiver a sender ships to, resolved: where, the name its certificate must carry, and
/// the CA that signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverTarget {
    /// `host:port`, resolved when connecting; also how the receiver is named in messages.
    pub address: String,
    pub server_name: String,
    pub ca: PathBuf,
}

/// How many receivers must have stored a file durably before `push` exits 0 (`require`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Require {
    /// Every receiver (`require = "all"`, the default).
    All,
    /// At least this many (`require = N`, 1 to the number of receivers).
    AtLeast(usize),
}

impl Require {
    /// Receivers that must have stored a file, out of `total`.
    pub fn needed(self, total: usize) -> usize {
        match self {
            Require::All => total,
            Require::AtLeast(n) => n.min(total),
        }
    }
}

impl std::fmt::Display for Require {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Require::All => f.write_str("\"all\""),
            Require::AtLeast(n) => write!(f, "{n}"),
        }
    }
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
    /// The `[[clusters]]` table this view is for (`--cluster`); none in the single-cluster form.
    pub cluster: Option<String>,
    /// Client certificate names allowed to write to this view's archive (empty in the
    /// single-cluster form, where any certificate from `client_ca` may).
    pub allowed_clients: Vec<String>,
    /// Every `[[clusters]]` table, in file order (empty in the single-cluster form): what
    /// `serve` serves, see [`ReceiverSettings::views`].
    pub clusters: Vec<ClusterSettings>,
    /// The object-store tier of this view's archive (`[object_store]`, or the cluster's
    /// `[clusters.object_store]`; none: off).
    pub object_store: Option<ObjectStoreSettings>,
}

/// One `[[clusters]]` table, resolved: the per-archive keys of [`ReceiverSettings`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    pub name: String,
    pub archive_dir: PathBuf,
    pub pgdata: Option<PathBuf>,
    pub conninfo: Option<String>,
    pub allowed_clients: Vec<String>,
    pub retain_for: Duration,
    /// The object-store tier (`[object_store]`; none: off).
    pub object_store: Option<ObjectStoreSettings>,
}

#[derive(Debug, Clone)]
pub struct SenderSettings {
    pub config_path: PathBuf,
    /// Where to ship, in the order of the config: `receiver`/`server_name` (one), or one per
    /// `[[receivers]]` table.
    pub receivers: Vec<ReceiverTarget>,
    /// How many of them must store a file before `push` succeeds (`require`).
    pub require: Require,
    /// The top-level `ca` (each target carries the CA it uses).
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Encoding on the wire (`compression = "zstd"`, `"auto"` (zstd, see `adaptive`) or
    /// `"none"`).
    pub compression: Encoding,
    /// `compression = "auto"` (the default): the daemon picks the codec per receiver from the
    /// measured link and compression speeds ([`crate::adapt`]), starting at
    /// `compression_level`; a direct `push` uses `compression_level`.
    pub adaptive: bool,
    /// zstd level (`compression_level`, default 1).
    pub compression_level: i32,
    /// Threads zstd compresses one file on (`compression_threads`; default: the CPUs, at most
    /// 4; 1 compresses on the sending thread alone).
    pub compression_threads: u32,
    /// The daemon's Unix socket (`socket`): `push` hands off there when a daemon answers.
    pub socket: Option<PathBuf>,
    /// The primary's data directory (`pgdata`): the daemon looks ahead through
    /// `pg_wal/archive_status/*.ready` when set.
    pub pgdata: Option<PathBuf>,
    /// Most segments the daemon ships ahead at once (`lookahead`; 0 turns look-ahead off).
    pub lookahead: usize,
    /// The plain-HTTP Prometheus endpoint of the daemon (`metrics_listen`; none: off).
    pub metrics_listen: Option<SocketAddr>,
    /// How `check` and the daemon's open-segment shipping reach the primary (`conninfo`,
    /// libpq syntax).
    pub conninfo: Option<String>,
    /// The pg_wal valve (`max_backlog`, bytes; none: off): past it, a failed push of the
    /// oldest `.ready` segment drops it (see `walship_common::valve`). Needs `pgdata`.
    pub max_backlog: Option<u64>,
    /// Where the sender keeps its state (`state_dir`; default `<pgdata>/walship_sender`):
    /// the record of dropped segments. `None` without `pgdata` and `state_dir`.
    pub state_dir: Option<PathBuf>,
    /// How often the daemon ships the open segment's new flushed bytes as `NAME.partial`
    /// (`partial_interval`; none: off). Needs `pgdata` and `conninfo`.
    pub partial_interval: Option<Duration>,
}

/// Default `state_dir` under `pgdata`: a name of walship's own, which PostgreSQL ignores and
/// walship's base backups must skip.
pub const DEFAULT_STATE_SUBDIR: &str = crate::DEFAULT_SENDER_STATE_SUBDIR;
/// Smallest `max_backlog`: one segment of the smallest size PostgreSQL makes (1 MiB).
pub const MIN_MAX_BACKLOG: u64 = 1 << 20;

impl ReceiverSettings {
    /// The settings of the one cluster `path` configures: the single-cluster form, or a
    /// many-cluster config with exactly one `[[clusters]]` table (more need
    /// [`ReceiverSettings::load_cluster`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_cluster(path, None)
    }

    /// The settings of cluster `name` (`--cluster NAME`): required when several clusters are
    /// configured, refused in the single-cluster form.
    pub fn load_cluster(path: &Path, name: Option<&str>) -> Result<Self, ConfigError> {
        Self::load_all(path)?.select(name)
    }

    /// What `serve` needs: every cluster (see [`ReceiverSettings::views`]); this view is the
    /// first cluster's.
    pub fn load_all(path: &Path) -> Result<Self, ConfigError> {
        let mut settings = Self::parse(path)?;
        if let Some(first) = settings.clusters.first().cloned() {
            settings.apply(&first);
        }
        Ok(settings)
    }

    /// One view per cluster, in file order (the single-cluster form: itself). Each carries
    /// the top-level settings and its cluster's archive_dir, pgdata, conninfo, retain_for and
    /// allowed clients.
    pub fn views(&self) -> Vec<ReceiverSettings> {
        if self.clusters.is_empty() {
            return vec![self.clone()];
        }
        self.clusters
            .iter()
            .map(|c| {
                let mut view = self.clone();
                view.apply(c);
                view
            })
            .collect()
    }

    /// The names of the configured clusters (empty in the single-cluster form).
    pub fn cluster_names(&self) -> Vec<String> {
        self.clusters.iter().map(|c| c.name.clone()).collect()
    }

    fn select(mut self, name: Option<&str>) -> Result<Self, ConfigError> {
        let path = self.config_path.clone();
        let chosen = match (name, self.clusters.len()) {
            (Some(name), 0) => {
                return Err(ConfigError::NotClustered {
                    path,
                    name: name.to_string(),
                })
            }
            (None, 0) => return Ok(self),
            (None, 1) => self.clusters[0].clone(),
            (None, _) => {
                return Err(ConfigError::ClusterRequired {
                    path,
                    names: self.cluster_names(),
                })
            }
            (Some(name), _) => match self.clusters.iter().find(|c| c.name == name) {
                Some(c) => c.clone(),
                None => {
                    return Err(ConfigError::UnknownCluster {
                        path,
                        name: name.to_string(),
                        names: self.cluster_names(),
                    })
                }
            },
        };
        self.apply(&chosen);
        Ok(self)
    }

    fn apply(&mut self, c: &ClusterSettings) {
        self.cluster = Some(c.name.clone());
        self.archive_dir = c.archive_dir.clone();
        self.pgdata = c.pgdata.clone();
        self.conninfo = c.conninfo.clone();
        self.retain_for = c.retain_for;
        self.allowed_clients = c.allowed_clients.clone();
        self.object_store = c.object_store.clone();
    }

    fn parse(path: &Path) -> Result<Self, ConfigError> {
        let src = Source::read(path)?;
        let mut file: ReceiverFile = src.parse()?;
        let base = base_dir(path);
        let single = [
            ("archive_dir", file.archive_dir.is_some()),
            ("pgdata", file.pgdata.is_some()),
            ("conninfo", file.conninfo.is_some()),
        ];
        let listen = src.required(file.listen, "listen", "\"0.0.0.0:7443\"")?;
        let retain_for = src.retain_for(&file.retain_for)?;
        let clusters = match file.clusters.take() {
            Some(tables) => {
                if file.object_store.is_some() {
                    return Err(ConfigError::Clusters {
                        path: path.to_path_buf(),
                        message: "a top-level [object_store] table and [[clusters]] tables are both set: give each cluster its own bucket prefix in a [clusters.object_store] table under its [[clusters]] table".into(),
                    });
                }
                src.clusters(&base, single, tables, retain_for)?
            }
            None => Vec::new(),
        };
        let archive_dir = match clusters.first() {
            Some(c) => c.archive_dir.clone(),
            None => base.join(src.required(
                file.archive_dir,
                "archive_dir",
                "\"/var/lib/walship/archive\"",
            )?),
        };
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
            archive_dir,
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
            retain_for,
            metrics_listen: src.metrics_listen(file.metrics_listen)?,
            cluster: None,
            allowed_clients: Vec::new(),
            clusters,
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
        let ca = src.required(file.ca.clone(), "ca", "\"/etc/walship/ca.pem\"")?;
        let ca = base.join(ca);
        let receivers = src.receivers(&file, &base, &ca)?;
        let cert = src.required(file.cert, "cert", "\"/etc/walship/client.pem\"")?;
        let key = src.required(file.key, "key", "\"/etc/walship/client.key\"")?;
        let require = src.require(&file.require, receivers.len())?;
        let (compression, adaptive) = match file.compression.as_deref() {
            None | Some("auto") => (Encoding::Zstd, true),
            Some(name) => match Encoding::from_name(name) {
                Some(pinned) => (pinned, false),
                None => {
                    return Err(src.invalid(
                        "compression",
                        format!("{name:?}"),
                        "expected \"auto\" (the default), \"zstd\", \"lz4\" or \"none\"",
                    ))
                }
            },
        };
        let compression_threads = match file.compression_threads {
            None => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .clamp(1, MAX_COMPRESSION_THREADS as usize) as u32,
            Some(n) if (1..=MAX_COMPRESSION_THREADS).contains(&n) => n,
            Some(n) => {
                return Err(src.invalid(
                    "compression_threads",
                    n.to_string(),
                    format!(
                        "expected 1 (compress on the sending thread) to {MAX_COMPRESSION_THREADS}"
                    ),
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
        let pgdata = file.pgdata.map(|p| base.join(p));
        let max_backlog = match &file.max_backlog {
            None => None,
            Some(v) => {
                let n =
                    parse_size(v, false).map_err(|r| src.invalid("max_backlog", v.literal(), r))?;
                if n < MIN_MAX_BACKLOG {
                    return Err(src.invalid(
                        "max_backlog",
                        v.literal(),
                        format!(
                            "expected at least {}, like \"4GiB\"",
                            show_size(MIN_MAX_BACKLOG)
                        ),
                    ));
                }
                if pgdata.is_none() {
                    return Err(src.invalid(
                        "max_backlog",
                        v.literal(),
                        "needs `pgdata` (the primary's data directory, to see what waits in pg_wal/archive_status); add pgdata = \"/var/lib/postgresql/15/main\" or remove max_backlog",
                    ));
                }
                Some(n)
            }
        };
        let state_dir = match file.state_dir {
            Some(dir) => Some(base.join(dir)),
            None => pgdata.as_ref().map(|p| p.join(DEFAULT_STATE_SUBDIR)),
        };
        let partial_interval = match &file.partial_interval {
            None => None,
            Some(v) => {
                let d = parse_duration(&v.bare())
                    .map_err(|r| src.invalid("partial_interval", v.literal(), r))?;
                if !(MIN_PARTIAL_INTERVAL..=MAX_PARTIAL_INTERVAL).contains(&d) {
                    return Err(src.invalid(
                        "partial_interval",
                        v.literal(),
                        "expected \"10ms\" to \"1h\" (for example \"200ms\"), or leave it out to ship finished segments only",
                    ));
                }
                if pgdata.is_none() || file.conninfo.is_none() {
                    return Err(src.invalid(
                        "partial_interval",
                        v.literal(),
                        "the daemon reads the open segment from pg_wal and asks the primary for its flush position: set `pgdata` and `conninfo` too",
                    ));
                }
                Some(d)
            }
        };
        Ok(SenderSettings {
            partial_interval,
            socket: file.socket.map(|p| base.join(p)),
            pgdata,
            max_backlog,
            state_dir,
            lookahead,
            metrics_listen: src.metrics_listen(file.metrics_listen)?,
            conninfo: file.conninfo,
            compression,
            adaptive,
            compression_level,
            compression_threads,
            config_path: path.to_path_buf(),
            connect_timeout: src.duration(
                "connect_timeout",
                &file.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
            )?,
            timeout: src.duration("timeout", &file.timeout, DEFAULT_PUSH_TIMEOUT)?,
            receivers,
            require,
            ca,
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

    /// The `[[clusters]]` tables, resolved and checked: not with the single-cluster keys
    /// (`single`: which of them are set), each
    /// with a safe unique name, its own archive_dir, and its allowed clients (a client
    /// certificate name in one cluster only: the certificate decides the cluster).
    fn clusters(
        &self,
        base: &Path,
        single: [(&'static str, bool); 3],
        tables: Vec<ClusterFile>,
        retain_for: Duration,
    ) -> Result<Vec<ClusterSettings>, ConfigError> {
        let fail = |message: String| ConfigError::Clusters {
            path: self.path.clone(),
            message,
        };
        if let Some((key, _)) = single.iter().find(|(_, set)| *set) {
            return Err(fail(format!(
                "top-level {key} and [[clusters]] tables are both set: use one form; with [[clusters]], put archive_dir, pgdata and conninfo in each cluster's table"
            )));
        }
        if tables.is_empty() {
            return Err(fail(
                "clusters is empty: add one [[clusters]] table per cluster (name, archive_dir, allowed_clients)".into(),
            ));
        }
        let mut out: Vec<ClusterSettings> = Vec::with_capacity(tables.len());
        for (i, t) in tables.into_iter().enumerate() {
            let at = match &t.name {
                Some(n) => format!("[[clusters]] table {} (name = {n:?})", i + 1),
                None => format!("[[clusters]] table {}", i + 1),
            };
            let missing = |key: &str, example: &str| {
                fail(format!(
                    "{at}: required key `{key}` is missing; add it, e.g. {key} = {example}"
                ))
            };
            let name = t.name.clone().ok_or_else(|| missing("name", "\"sales\""))?;
            crate::clusters::check_name(&name)
                .map_err(|reason| fail(format!("{at}: name = {name:?}: {reason}")))?;
            if out.iter().any(|c| c.name == name) {
                return Err(fail(format!(
                    "{at}: the name {name:?} is used by an earlier table: give each cluster its own name"
                )));
            }
            let archive_dir = base.join(
                t.archive_dir
                    .ok_or_else(|| missing("archive_dir", "\"/var/lib/walship/sales\""))?,
            );
            let archive_dir: PathBuf = archive_dir.components().collect();
            if let Some(other) = out.iter().find(|c| c.archive_dir == archive_dir) {
                return Err(fail(format!(
                    "{at}: archive_dir {} is also cluster {:?}'s: give each cluster its own archive_dir (its pin, fence and restore records live there)",
                    archive_dir.display(),
                    other.name
                )));
            }
            let allowed = t
                .allowed_clients
                .ok_or_else(|| missing("allowed_clients", "[\"sales-primary\"]"))?;
            for client in &allowed {
                crate::clusters::check_name(client).map_err(|reason| {
                    fail(format!(
                        "{at}: allowed_clients: {client:?}: {reason} (the name given to walship-receiver certs --client-name)"
                    ))
                })?;
                if let Some(other) = out.iter().find(|c| c.allowed_clients.contains(client)) {
                    return Err(fail(format!(
                        "{at}: allowed_clients: {client:?} is also allowed for cluster {:?}: a client certificate may write to one cluster only; issue one per cluster (walship-receiver certs --client-name)",
                        other.name
                    )));
                }
            }
            let retain_for = match &t.retain_for {
                Some(v) => crate::human::parse_duration_or_zero(&v.bare())
                    .map_err(|r| fail(format!("{at}: retain_for = {}: {r}", v.literal())))?,
                None => retain_for,
            };
            out.push(ClusterSettings {
                name,
                archive_dir,
                pgdata: t.pgdata.map(|p| base.join(p)),
                conninfo: t.conninfo,
                allowed_clients: allowed,
                retain_for,
                object_store: t
                    .object_store
                    .map(|o| self.object_store(o, base))
                    .transpose()
                    .map_err(|e| {
                        let (m, head) =
                            (e.to_string(), format!("config {}: ", self.path.display()));
                        fail(format!("{at}: {}", m.strip_prefix(&head).unwrap_or(&m)))
                    })?,
            });
            let this = out.last().expect("just pushed");
            if let Some(o) = &this.object_store {
                let same = out[..out.len() - 1].iter().find(|c| {
                    c.object_store.as_ref().is_some_and(|p| {
                        p.bucket == o.bucket
                            && p.endpoint == o.endpoint
                            && (p.prefix == o.prefix
                                || p.prefix.is_empty()
                                || o.prefix.is_empty()
                                || p.prefix.starts_with(&format!("{}/", o.prefix))
                                || o.prefix.starts_with(&format!("{}/", p.prefix)))
                    })
                });
                if let Some(other) = same {
                    return Err(fail(format!(
                        "{at}: object_store url {:?} overlaps cluster {:?}'s: give each cluster its own prefix (its WAL names are the same as another cluster's)",
                        o.url, other.name
                    )));
                }
            }
        }
        Ok(out)
    }

    /// The receivers, from either form: `receiver` + `server_name` (one receiver), or
    /// `[[receivers]]` tables; both at once, or an empty list, is an error.
    fn receivers(
        &self,
        file: &SenderFile,
        base: &Path,
        ca: &Path,
    ) -> Result<Vec<ReceiverTarget>, ConfigError> {
        let Some(entries) = &file.receivers else {
            let address = self.required(
                file.receiver.clone(),
                "receiver",
                "\"standby.example.com:7443\"",
            )?;
            let server_name = self.required(
                file.server_name.clone(),
                "server_name",
                "\"standby.example.com\"",
            )?;
            self.check_address("receiver", &address)?;
            self.check_name("server_name", &server_name)?;
            return Ok(vec![ReceiverTarget {
                address,
                server_name,
                ca: ca.to_path_buf(),
            }]);
        };
        if let Some(single) = file.receiver.as_ref().or(file.server_name.as_ref()) {
            let key = if file.receiver.is_some() {
                "receiver"
            } else {
                "server_name"
            };
            return Err(self.invalid(
                key,
                format!("{single:?}"),
                "both forms given: use either `receiver` and `server_name` (one receiver) or `[[receivers]]` tables (several), not both; move this receiver into a [[receivers]] table",
            ));
        }
        if entries.is_empty() {
            return Err(self.invalid(
                "receivers",
                "[]".into(),
                "no receiver listed; add one [[receivers]] table per receiver, with address = \"host:port\" and server_name",
            ));
        }
        let mut targets: Vec<ReceiverTarget> = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let n = i + 1;
            let address = entry.address.clone().ok_or_else(|| {
                self.invalid(
                    "receivers",
                    format!("[[receivers]] #{n}"),
                    "no `address`; add address = \"standby.example.com:7443\" to it",
                )
            })?;
            let server_name = entry.server_name.clone().ok_or_else(|| {
                self.invalid(
                    "receivers",
                    format!("[[receivers]] #{n} ({address})"),
                    "no `server_name`; add the name the receiver's certificate was made for (walship-receiver certs --server-name)",
                )
            })?;
            self.check_address("receivers", &address)?;
            self.check_name("receivers", &server_name)?;
            if targets.iter().any(|t| t.address == address) {
                return Err(self.invalid(
                    "receivers",
                    format!("address = {address:?}"),
                    "listed twice; each [[receivers]] table must name a different receiver",
                ));
            }
            targets.push(ReceiverTarget {
                address,
                server_name,
                ca: entry
                    .ca
                    .as_ref()
                    .map_or_else(|| ca.to_path_buf(), |c| base.join(c)),
            });
        }
        Ok(targets)
    }

    /// `require`: `"all"` (default) or a number from 1 to the number of receivers.
    fn require(&self, value: &Option<Scalar>, total: usize) -> Result<Require, ConfigError> {
        let bad = |v: &Scalar| {
            self.invalid(
                "require",
                v.literal(),
                format!("expected \"all\" or a number of receivers from 1 to {total} (the receivers listed)"),
            )
        };
        match value {
            None => Ok(Require::All),
            Some(Scalar::Text(t)) if t == "all" => Ok(Require::All),
            Some(v @ Scalar::Int(n)) => match usize::try_from(*n) {
                Ok(n) if (1..=total).contains(&n) => Ok(Require::AtLeast(n)),
                _ => Err(bad(v)),
            },
            Some(v) => Err(bad(v)),
        }
    }

    fn check_address(&self, key: &'static str, address: &str) -> Result<(), ConfigError> {
        let port = address
            .rsplit_once(':')
            .map(|(host, port)| (host, port.parse::<u16>()));
        if matches!(port, Some((host, Ok(_))) if !host.is_empty()) {
            return Ok(());
        }
        Err(self.invalid(
            key,
            format!("{address:?}"),
            "expected host:port, like \"standby.example.com:7443\" or \"10.0.0.7:7443\"",
        ))
    }

    fn check_name(&self, key: &'static str, server_name: &str) -> Result<(), ConfigError> {
        check_server_name(server_name).map_err(|reason| {
            self.invalid(
                key,
                format!("{server_name:?}"),
                format!("{reason}; set it to the name or IP address the receiver's certificate was made for (walship-receiver certs --server-name)"),
            )
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

    const TOP: &str = "listen = \"127.0.0.1:7443\"\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\nretain_for = \"1h\"\n";

    fn cluster_table(name: &str, dir: &str, clients: &str) -> String {
        format!("\n[[clusters]]\nname = \"{name}\"\narchive_dir = \"{dir}\"\nallowed_clients = [{clients}]\n")
    }

    /// The error loading `text` as receiver.toml with `--cluster cluster`.
    fn receiver_error(text: &str, cluster: Option<&str>) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("receiver.toml");
        std::fs::write(&path, text).unwrap();
        ReceiverSettings::load_cluster(&path, cluster)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn many_clusters_resolve_per_cluster_views() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("receiver.toml");
        let text = format!(
            "{TOP}{}pgdata = \"/pg/a\"\nconninfo = \"host=a\"\nretain_for = \"2d\"\n{}",
            cluster_table("a", "arch/a", "\"pa\", \"pa2\""),
            cluster_table("b", "./arch/b", "\"pb\"")
        );
        std::fs::write(&path, text).unwrap();
        let all = ReceiverSettings::load_all(&path).unwrap();
        assert_eq!(all.cluster_names(), ["a", "b"]);
        let views = all.views();
        assert_eq!(views.len(), 2);
        let (a, b) = (&views[0], &views[1]);
        assert_eq!(a.cluster.as_deref(), Some("a"));
        assert_eq!(a.archive_dir, dir.path().join("arch/a"));
        assert_eq!(a.pgdata, Some(PathBuf::from("/pg/a")));
        assert_eq!(a.conninfo.as_deref(), Some("host=a"));
        assert_eq!(a.retain_for, Duration::from_secs(2 * 86_400));
        assert_eq!(a.allowed_clients, ["pa", "pa2"]);
        assert_eq!(b.archive_dir, dir.path().join("arch/b"));
        assert_eq!((b.pgdata.as_ref(), b.conninfo.as_ref()), (None, None));
        // The top-level retain_for is the default of every cluster.
        assert_eq!(b.retain_for, Duration::from_secs(3600));
        assert_eq!(b.listen, a.listen);

        let b2 = ReceiverSettings::load_cluster(&path, Some("b")).unwrap();
        assert_eq!(b2.archive_dir, b.archive_dir);
        assert_eq!(b2.allowed_clients, ["pb"]);
        let err = ReceiverSettings::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("several clusters (a, b)") && err.contains("--cluster NAME"),
            "{err}"
        );
        let err = ReceiverSettings::load_cluster(&path, Some("c"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no cluster named \"c\" (configured: a, b)"),
            "{err}"
        );

        // One cluster: --cluster is optional.
        std::fs::write(&path, format!("{TOP}{}", cluster_table("only", "x", ""))).unwrap();
        let s = ReceiverSettings::load(&path).unwrap();
        assert_eq!(s.cluster.as_deref(), Some("only"));
        assert!(s.allowed_clients.is_empty());
    }

    #[test]
    fn the_single_cluster_form_is_unchanged_and_takes_no_cluster_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("receiver.toml");
        std::fs::write(&path, format!("{TOP}archive_dir = \"a\"\n")).unwrap();
        let s = ReceiverSettings::load(&path).unwrap();
        assert_eq!((s.cluster.as_ref(), s.clusters.len()), (None, 0));
        assert_eq!(s.views().len(), 1);
        assert_eq!(s.archive_dir, dir.path().join("a"));
        let err = ReceiverSettings::load_cluster(&path, Some("a"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("single cluster") && err.contains("drop --cluster a"),
            "{err}"
        );
    }

    #[test]
    fn many_clusters_are_checked_at_load() {
        let a = cluster_table("a", "arch-a", "\"pa\"");
        for (text, says) in [
            (
                format!("{TOP}archive_dir = \"x\"\n{a}"),
                "top-level archive_dir and [[clusters]] tables are both set",
            ),
            (
                format!("{TOP}conninfo = \"x\"\n{a}"),
                "top-level conninfo and [[clusters]]",
            ),
            (format!("{TOP}clusters = []\n"), "clusters is empty"),
            (
                format!("{TOP}{a}{}", cluster_table("a", "arch-b", "\"pb\"")),
                "table 2 (name = \"a\"): the name \"a\" is used by an earlier table",
            ),
            (
                format!("{TOP}{a}{}", cluster_table("b", "./arch-a", "\"pb\"")),
                "is also cluster \"a\"'s",
            ),
            (
                format!("{TOP}{a}{}", cluster_table("b", "arch-b", "\"pb\", \"pa\"")),
                "\"pa\" is also allowed for cluster \"a\"",
            ),
            (
                format!("{TOP}{}", cluster_table("a/b", "x", "")),
                "name = \"a/b\": it contains '/'",
            ),
            (
                format!("{TOP}{}", cluster_table("a", "x", "\"bad name\"")),
                "allowed_clients: \"bad name\"",
            ),
            (
                format!("{TOP}[[clusters]]\nname = \"a\"\narchive_dir = \"x\"\n"),
                "required key `allowed_clients` is missing",
            ),
            (
                format!("{TOP}[[clusters]]\narchive_dir = \"x\"\nallowed_clients = []\n"),
                "[[clusters]] table 1: required key `name` is missing",
            ),
            (
                format!("{TOP}{a}retain_for = \"forever\"\n"),
                "retain_for = \"forever\"",
            ),
            (
                format!("{TOP}{a}archive = \"x\"\n"),
                "unknown key `archive`",
            ),
        ] {
            let err = receiver_error(&text, None);
            assert!(
                err.contains(says) && err.contains("receiver.toml"),
                "{says}: {err}"
            );
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

        std::fs::write(&path, "receiver = \"h:1\"\nserver_name = \"h\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\ncompression = \"brotli\"\n").unwrap();
        let err = SenderSettings::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("compression") && err.contains("brotli"),
            "{err}"
        );
        std::fs::write(&path, "receiver = \"h:1\"\nserver_name = \"h\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\ncompression = \"lz4\"\n").unwrap();
        let lz4 = SenderSettings::load(&path).unwrap();
        assert_eq!((lz4.compression, lz4.adaptive), (Encoding::Lz4, false));
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
        let (path, err) = sender_error(&format!("{SENDER}\tcompression = \"lzo\"\n"));
        assert_eq!(
            err,
            format!(
                "config {}, line 6: compression = \"lzo\": expected \"auto\" (the default), \"zstd\", \"lz4\" or \"none\"\n  |\n6 | \tcompression = \"lzo\"\n  | \t              ^^^^^",
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
            assert_eq!(
                SenderSettings::load(&path).unwrap().receivers[0].server_name,
                good
            );
        }
    }

    const FANOUT: &str = "ca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
    const TABLES: &str = "\n[[receivers]]\naddress = \"a.example:7443\"\nserver_name = \"a.example\"\n\n[[receivers]]\naddress = \"10.0.0.8:7443\"\nserver_name = \"10.0.0.8\"\nca = \"ca-b.pem\"\n";

    #[test]
    fn fanout_receivers_and_require() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sender.toml");
        std::fs::write(&path, format!("{FANOUT}{TABLES}")).unwrap();
        let s = SenderSettings::load(&path).unwrap();
        assert_eq!(s.require, Require::All);
        assert_eq!(s.receivers.len(), 2);
        assert_eq!(s.receivers[0].address, "a.example:7443");
        assert_eq!(s.receivers[0].ca, dir.path().join("a"));
        assert_eq!(s.receivers[1].server_name, "10.0.0.8");
        assert_eq!(s.receivers[1].ca, dir.path().join("ca-b.pem"));
        assert_eq!(s.require.needed(2), 2);
        for (value, want) in [
            ("\"all\"", Require::All),
            ("1", Require::AtLeast(1)),
            ("2", Require::AtLeast(2)),
        ] {
            std::fs::write(&path, format!("{FANOUT}require = {value}\n{TABLES}")).unwrap();
            assert_eq!(
                SenderSettings::load(&path).unwrap().require,
                want,
                "{value}"
            );
        }
        assert_eq!(Require::AtLeast(1).needed(2), 1);

        // The single form is one receiver, require all; `require` is checked against it too.
        std::fs::write(&path, SENDER).unwrap();
        let s = SenderSettings::load(&path).unwrap();
        assert_eq!((s.receivers.len(), s.require), (1, Require::All));
        assert_eq!(s.receivers[0].ca, dir.path().join("a"));
        let (_, err) = sender_error(&format!("{SENDER}require = 2\n"));
        assert!(
            err.contains("require = 2: expected \"all\" or a number of receivers from 1 to 1"),
            "{err}"
        );

        for (text, says) in [
            (
                format!("{FANOUT}require = 3\n{TABLES}"),
                "require = 3: expected \"all\" or a number of receivers from 1 to 2",
            ),
            (
                format!("{FANOUT}require = 0\n{TABLES}"),
                "require = 0: expected",
            ),
            (
                format!("{FANOUT}require = -1\n{TABLES}"),
                "require = -1: expected",
            ),
            (
                format!("{FANOUT}require = \"1\"\n{TABLES}"),
                "require = \"1\": expected",
            ),
            (
                format!("{FANOUT}require = \"any\"\n{TABLES}"),
                "require = \"any\": expected",
            ),
            (
                format!("receiver = \"h:1\"\n{FANOUT}{TABLES}"),
                "receiver = \"h:1\": both forms given",
            ),
            (
                format!("server_name = \"h\"\n{FANOUT}{TABLES}"),
                "server_name = \"h\": both forms given",
            ),
            (format!("{FANOUT}receivers = []\n"), "no receiver listed"),
            (
                format!("{FANOUT}\n[[receivers]]\nserver_name = \"h\"\n"),
                "no `address`",
            ),
            (
                format!("{FANOUT}\n[[receivers]]\naddress = \"h:1\"\n"),
                "no `server_name`",
            ),
            (
                format!("{FANOUT}\n[[receivers]]\naddress = \"h\"\nserver_name = \"h\"\n"),
                "receivers = \"h\": expected host:port",
            ),
            (
                format!("{FANOUT}\n[[receivers]]\naddress = \"h:1\"\nserver_name = \"a b\"\n"),
                "it contains spaces",
            ),
            (
                format!(
                    "{FANOUT}{TABLES}{}",
                    TABLES.replace("10.0.0.8:7443", "a.example:7443")
                ),
                "listed twice",
            ),
            (
                format!(
                    "{FANOUT}\n[[receivers]]\naddress = \"h:1\"\nserver_name = \"h\"\nport = 1\n"
                ),
                "unknown key `port`",
            ),
        ] {
            let (_, err) = sender_error(&text);
            assert!(
                err.contains(says) && err.contains("sender.toml"),
                "{text}\n{err}"
            );
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
