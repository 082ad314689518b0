//! The object-store tier (receiver.toml `[object_store]`): an S3-compatible bucket that holds a
//! copy of everything archive_dir stored, through the `object_store` crate (Apache Arrow).
//!
//! Layout: the file `NAME` is the object `PREFIX/NAME.zst`, its content compressed with zstd,
//! with the user metadata `blake3` (hex BLAKE3 of the plain file, `x-amz-meta-blake3`) and
//! `size` (plain bytes). An upload is verified by reading the object back and comparing it
//! byte for byte; a download is verified by the digest and size in its metadata.
//!
//! [`uploader`] runs inside `serve`: the order and the record are
//! [`walship_common::upload_queue`]'s; here is only the IO (listing, reading, uploading,
//! writing the record durably, retrying with backoff).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, AttributeValue, Attributes, ClientOptions, ObjectStore, ObjectStoreExt, PutOptions,
    PutPayload, RetryConfig,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use walship_common::sys::config::ObjectStoreSettings;
use walship_common::sys::durable::{self, Sync as DurableSync};
use walship_common::upload_queue::{
    self, parse_credentials, Backlog, LocalFile, UploadRecord, UPLOAD_RECORD_FILE,
};
use walship_common::WalFileName;

use crate::error::ReceiverError;
use crate::metrics;
use crate::store;

/// zstd level of the objects: level 3 (zstd's default) packs pgbench WAL a little tighter
/// than the wire's level 1, at a cost the uploader (off the acknowledgement path) can pay.
const ZSTD_LEVEL: i32 = 3;
/// The largest object a download accepts (compressed), and the largest plain file: a WAL
/// segment is at most 1 GiB.
const MAX_OBJECT: u64 = 1 << 30;
/// First pause after a failed upload; it doubles on each failure in a row up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// With nothing to upload, look at archive_dir again after this long even without a wake-up
/// (files stored by a `serve` before a restart, the settle time of a first segment).
const IDLE_POLL: Duration = Duration::from_secs(1);
const STATE_FILE_MODE: u32 = 0o644;
/// The most `credentials_file` bytes read (a few short lines).
const CREDENTIALS_LIMIT: u64 = 64 << 10;
/// The object's key suffix.
const SUFFIX: &str = ".zst";

/// One bucket and prefix, with credentials.
#[derive(Debug)]
pub struct Bucket {
    store: AmazonS3,
    prefix: String,
    url: String,
}

/// One object of the bucket that is a WAL file.
#[derive(Debug, Clone)]
pub struct BucketFile {
    pub name: WalFileName,
    /// Compressed bytes.
    pub bytes: u64,
    pub last_modified: SystemTime,
}

impl Bucket {
    /// The client for `settings`, with credentials from `credentials_file` or the environment.
    pub fn open(settings: &ObjectStoreSettings) -> Result<Bucket, ReceiverError> {
        let fail = |detail: String| ReceiverError::ObjectStore {
            url: settings.url.clone(),
            detail,
        };
        // The HTTPS client's TLS: the ring provider (see receiver/Cargo.toml). Installing it
        // fails only when one is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (id, secret, token) = credentials(settings).map_err(fail)?;
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_access_key_id(id)
            .with_secret_access_key(secret)
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120)),
            );
        if let Some(t) = token {
            b = b.with_token(t);
        }
        if let Some(endpoint) = &settings.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let store = b.build().map_err(|e| fail(e.to_string()))?;
        Ok(Bucket {
            store,
            prefix: settings.prefix.clone(),
            url: settings.url.clone(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, name: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(format!("{name}{SUFFIX}"))
        } else {
            ObjectPath::from(format!("{}/{name}{SUFFIX}", self.prefix))
        }
    }

    fn err(&self, what: &str, name: &str, e: impl std::fmt::Display) -> ReceiverError {
        ReceiverError::ObjectStore {
            url: self.url.clone(),
            detail: format!("{what} {name}: {e}"),
        }
    }

    /// Upload `plain` as `name`: compress, put with its digest, read back and compare.
    /// Returns the object's (compressed) size.
    pub async fn upload(&self, name: &str, plain: Vec<u8>) -> Result<u64, ReceiverError> {
        let (packed, digest, size) = tokio::task::spawn_blocking(move || {
            let digest = blake3::hash(&plain).to_hex().to_string();
            zstd::bulk::compress(&plain, ZSTD_LEVEL).map(|p| (p, digest, plain.len()))
        })
        .await
        .map_err(|e| self.err("compress", name, e))?
        .map_err(|e| self.err("compress", name, e))?;
        let key = self.key(name);
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::Metadata("blake3".into()), digest.clone().into());
        attributes.insert(Attribute::Metadata("size".into()), size.to_string().into());
        attributes.insert(
            Attribute::ContentType,
            AttributeValue::from("application/zstd"),
        );
        let sent = blake3::hash(&packed);
        let len = packed.len() as u64;
        self.store
            .put_opts(
                &key,
                PutPayload::from(packed),
                PutOptions {
                    attributes,
                    ..PutOptions::default()
                },
            )
            .await
            .map_err(|e| self.err("upload", name, e))?;
        // Read back: the bytes and the digest as the store serves them.
        let got = self
            .store
            .get(&key)
            .await
            .map_err(|e| self.err("read back", name, e))?;
        let meta_digest = metadata(&got.attributes, "blake3");
        let body = got
            .bytes()
            .await
            .map_err(|e| self.err("read back", name, e))?;
        if blake3::hash(&body) != sent || meta_digest.as_deref() != Some(digest.as_str()) {
            return Err(self.err(
                "verify",
                name,
                "the object read back differs from what was uploaded (content or blake3 metadata)",
            ));
        }
        Ok(len)
    }

    /// The plain content of `name`, verified against its digest and size; `None` when the
    /// bucket has no such object.
    pub async fn fetch(&self, name: &str) -> Result<Option<Vec<u8>>, ReceiverError> {
        let got = match self.store.get(&self.key(name)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.err("download", name, e)),
        };
        if got.meta.size > MAX_OBJECT {
            return Err(self.err("download", name, "the object is larger than 1 GiB"));
        }
        let digest = metadata(&got.attributes, "blake3")
            .ok_or_else(|| self.err("download", name, "the object has no blake3 metadata"))?;
        let size: Option<u64> = metadata(&got.attributes, "size").and_then(|s| s.parse().ok());
        let body = got
            .bytes()
            .await
            .map_err(|e| self.err("download", name, e))?;
        let plain = decompress(&body, size.unwrap_or(MAX_OBJECT))
            .map_err(|e| self.err("decompress", name, e))?;
        if size.is_some_and(|s| s != plain.len() as u64) {
            return Err(self.err("verify", name, "its size differs from its size metadata"));
        }
        if blake3::hash(&plain).to_hex().as_str() != digest {
            return Err(self.err(
                "verify",
                name,
                "its BLAKE3 digest differs from its blake3 metadata: the object is damaged",
            ));
        }
        Ok(Some(plain))
    }

    /// Every WAL file in the bucket under the prefix (other keys are ignored).
    pub async fn list(&self) -> Result<Vec<BucketFile>, ReceiverError> {
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let mut stream = self.store.list(prefix.as_ref());
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            let meta = item.map_err(|e| self.err("list", &self.url, e))?;
            let Some(file) = meta.location.filename() else {
                continue;
            };
            // Only objects directly under the prefix.
            if meta.location.as_ref() != self.key(file.trim_end_matches(SUFFIX)).as_ref() {
                continue;
            }
            let Some(name) = file
                .strip_suffix(SUFFIX)
                .and_then(|n| n.parse::<WalFileName>().ok())
            else {
                continue;
            };
            out.push(BucketFile {
                name,
                bytes: meta.size,
                last_modified: meta.last_modified.into(),
            });
        }
        Ok(out)
    }

    pub async fn remove(&self, name: &str) -> Result<(), ReceiverError> {
        match self.store.delete(&self.key(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", name, e)),
        }
    }
}

fn metadata(attributes: &Attributes, key: &'static str) -> Option<String> {
    attributes
        .get(&Attribute::Metadata(key.into()))
        .map(|v| v.as_ref().to_string())
}

/// Decompress at most `limit` bytes (a larger content is an error, not an allocation).
fn decompress(packed: &[u8], limit: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    let decoder = zstd::stream::read::Decoder::new(packed).map_err(|e| e.to_string())?;
    decoder
        .take(limit.min(MAX_OBJECT) + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() as u64 > limit.min(MAX_OBJECT) {
        return Err("it decompresses to more than its size metadata says".into());
    }
    Ok(out)
}

/// (access key id, secret access key, session token) from `credentials_file` (refused when
/// group or others may read it) or else the environment.
fn credentials(settings: &ObjectStoreSettings) -> Result<(String, String, Option<String>), String> {
    if let Some(path) = &settings.credentials_file {
        use std::io::Read;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let shown = path.display();
        // A symbolic link is followed (secrets are often mounted as links), but what is opened
        // must be a regular file: O_NONBLOCK and the fstat keep a FIFO from hanging serve or
        // restore. Read at most CREDENTIALS_LIMIT bytes.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| format!("credentials_file {shown}: {e}"))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("credentials_file {shown}: {e}"))?;
        durable::check_regular(path, &meta).map_err(|e| format!("credentials_file: {e}"))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "credentials_file {shown} has mode {:04o}: group or others may read it; chmod 600 it",
                mode & 0o7777
            ));
        }
        let mut text = String::new();
        file.take(CREDENTIALS_LIMIT)
            .read_to_string(&mut text)
            .map_err(|e| format!("credentials_file {shown}: {e}"))?;
        return parse_credentials(&text).map_err(|e| format!("credentials_file {shown}: {e}"));
    }
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => Ok((id, secret, var("AWS_SESSION_TOKEN"))),
        _ => Err("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment, or name a file of mode 0600 holding them in object_store.credentials_file".into()),
    }
}

/// The upload record of `dir` (empty when there is none yet).
pub fn read_record(dir: &Path) -> Result<UploadRecord, ReceiverError> {
    let path = dir.join(UPLOAD_RECORD_FILE);
    match durable::read_regular(&path, 1 << 20)? {
        None => Ok(UploadRecord::default()),
        Some(text) => UploadRecord::decode(&text).map_err(|e| ReceiverError::BadState {
            path,
            reason: e.to_string(),
        }),
    }
}

fn write_record(dir: &Path, record: &UploadRecord) -> Result<(), ReceiverError> {
    durable::replace(
        dir,
        UPLOAD_RECORD_FILE,
        record.encode().as_bytes(),
        STATE_FILE_MODE,
        DurableSync::Durable,
    )?;
    Ok(())
}

/// archive_dir's WAL files as the queue sees them.
pub fn local_files(dir: &Path) -> Result<Vec<LocalFile>, ReceiverError> {
    Ok(store::list(dir)?
        .into_iter()
        .map(|f| LocalFile {
            name: f.name,
            bytes: f.bytes,
            stored_at: f.modified,
        })
        .collect())
}

/// What archive_dir holds that the bucket does not yet.
pub fn backlog(dir: &Path) -> Result<Backlog, ReceiverError> {
    Ok(upload_queue::backlog(
        &local_files(dir)?,
        &read_record(dir)?,
    ))
}

/// `serve`'s uploader: until `shutdown`, upload what [`upload_queue::next`] offers, one file
/// at a time, noting each in the record once verified. `wake` is notified on each store.
pub async fn uploader(
    dir: PathBuf,
    bucket: Arc<Bucket>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
    cluster: Option<String>,
) {
    let cluster = cluster.as_deref();
    info!(url = bucket.url(), "uploading to the object store");
    let mut failures = 0u32;
    let mut last_error = String::new();
    while !shutdown.is_cancelled() {
        let d = dir.clone();
        let listed = tokio::task::spawn_blocking(move || {
            let present = local_files(&d)?;
            let record = read_record(&d)?;
            Ok::<_, ReceiverError>((present, record))
        })
        .await;
        let (present, mut record) = match listed {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                failed(cluster, &mut failures, &mut last_error, &e.to_string());
                pause(failures, &shutdown).await;
                continue;
            }
            Err(e) => {
                failed(cluster, &mut failures, &mut last_error, &e.to_string());
                pause(failures, &shutdown).await;
                continue;
            }
        };
        metrics::upload_backlog(cluster, upload_queue::backlog(&present, &record));
        let todo = upload_queue::next(&present, &record, SystemTime::now());
        if todo.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
            continue;
        }
        for file in todo {
            if shutdown.is_cancelled() {
                break;
            }
            match upload_one(&dir, &bucket, &file).await {
                Ok(packed) => {
                    record.note(&file.name);
                    record.prune(&present);
                    let (d, r) = (dir.clone(), record.clone());
                    let written = tokio::task::spawn_blocking(move || write_record(&d, &r))
                        .await
                        .map_err(|e| ReceiverError::Task(e.to_string()))
                        .and_then(|r| r);
                    if let Err(e) = written {
                        failed(cluster, &mut failures, &mut last_error, &e.to_string());
                        pause(failures, &shutdown).await;
                        break;
                    }
                    if failures > 0 {
                        info!(
                            "object store reachable again after {failures} failed attempts: uploading"
                        );
                    }
                    failures = 0;
                    last_error.clear();
                    metrics::uploaded(cluster, file.bytes, packed);
                    tracing::debug!(name = %file.name, bytes = file.bytes, packed, "uploaded");
                }
                Err(e) => {
                    failed(cluster, &mut failures, &mut last_error, &e.to_string());
                    pause(failures, &shutdown).await;
                    break;
                }
            }
        }
    }
}

async fn upload_one(dir: &Path, bucket: &Bucket, file: &LocalFile) -> Result<u64, ReceiverError> {
    let name = file.name.to_string();
    let path = dir.join(&name);
    let plain = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let f = durable::open_regular(&path)?.ok_or_else(|| ReceiverError::ArchiveDir {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "removed before upload"),
        })?;
        let mut out = Vec::new();
        f.take(MAX_OBJECT)
            .read_to_end(&mut out)
            .map_err(|source| ReceiverError::ArchiveDir { path, source })?;
        Ok::<_, ReceiverError>(out)
    })
    .await
    .map_err(|e| ReceiverError::Task(e.to_string()))??;
    bucket.upload(&name, plain).await
}

/// Count a failure; log it once per new message (a server down for an hour is one line, then
/// one when it is back).
fn failed(cluster: Option<&str>, failures: &mut u32, last: &mut String, message: &str) {
    *failures += 1;
    metrics::upload_failed(cluster);
    if message != last {
        warn!("object store upload failed (will retry with backoff; nothing newer is uploaded before it): {message}");
        *last = message.to_string();
    }
}

async fn pause(failures: u32, shutdown: &CancellationToken) {
    let backoff = FIRST_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(6))
        .min(MAX_BACKOFF);
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(backoff) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn settings(file: &Path) -> ObjectStoreSettings {
        ObjectStoreSettings {
            url: "s3://b/p".into(),
            bucket: "b".into(),
            prefix: "p".into(),
            endpoint: None,
            region: "us-east-1".into(),
            credentials_file: Some(file.to_path_buf()),
        }
    }

    const TEXT: &str = "aws_access_key_id = id\naws_secret_access_key = secret\n";

    #[test]
    fn credentials_file_may_be_a_link_to_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, TEXT).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let (id, secret, token) = credentials(&settings(&link)).unwrap();
        assert_eq!(
            (id.as_str(), secret.as_str(), token),
            ("id", "secret", None)
        );
    }

    #[test]
    fn credentials_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("creds");
        std::fs::write(&f, TEXT).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = credentials(&settings(&f)).unwrap_err();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn credentials_file_that_is_a_fifo_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("creds");
        let c = std::ffi::CString::new(f.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path living for the call.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(rc, 0);
        let e = credentials(&settings(&f)).unwrap_err();
        assert!(e.contains("credentials_file") && e.contains("FIFO"), "{e}");
    }
}
