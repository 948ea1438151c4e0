//! mcp-v8 storage plugin: heap snapshots in any S3-compatible object store (AWS S3, MinIO,
//! Ceph, R2, ...), safe for many hosts sharing one bucket.
//!
//! * Each heap is the object `<prefix><heap>.heap`; its version token is the object's ETag.
//! * `put` with "must not exist" sends `If-None-Match: *`, with "must still be version V"
//!   sends `If-Match: V`; the store's 412 (or 409 for a concurrent conditional write) is the
//!   contract's *conflict*. So two hosts never silently overwrite each other's update.
//! * A heap's journal records are the objects `<prefix><heap>.journal/<number>` (16 hex
//!   digits, so keys list in number order), each written once with `If-None-Match: *`: a
//!   second writer of the same number gets the contract's *conflict*.
//! * For stores that ignore conditional headers, `conditional_writes = "emulated"` compares
//!   the ETag with a HEAD request before writing: there is a race window between the two.
//! * A cdylib cannot use the host's tokio runtime, so the plugin owns a small one and blocks
//!   on it inside the (synchronous) plugin calls, which the host makes off its executor.
//!
//! Credentials and region come from the standard AWS provider chain, as in the AWS CLI:
//! the `AWS_*` variables, the shared `~/.aws/config` and `~/.aws/credentials` files (profile
//! from `AWS_PROFILE` or `profile` below; static keys, SSO, `credential_process`, assumed
//! roles), web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, as Kubernetes IRSA
//! sets them), the ECS container endpoint and the EC2 instance metadata service.
//! Temporary credentials are refreshed before they expire.
//!
//! Configuration (`[plugins.s3.config]`):
//!
//! ```toml
//! bucket = "my-heaps"              # required
//! prefix = "mcp-v8/"               # key prefix (default "")
//! profile = "prod"                 # a profile of ~/.aws/config (default: AWS_PROFILE, "default")
//! region = "eu-west-1"             # default: the provider chain (AWS_REGION, the profile, EC2), else "us-east-1"
//! endpoint_url = "http://127.0.0.1:9000"   # default: AWS_ENDPOINT_URL(_S3), else AWS
//! force_path_style = true          # bucket in the path (default: true with a custom endpoint)
//! timeout_secs = 30                # per operation, retries included (default 30)
//! max_attempts = 3                 # attempts for transient failures (default 3)
//! conditional_writes = "native"    # or "emulated" (default "native")
//! ```

use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::Bytes;
use mcp_v8_plugin_api::{
    export_plugin, journal, validate_heap_name, BackendInfo, ErrorKind, HeapMeta, HeapStore,
    Precondition, Record, Snapshot, StoreError, Version,
};
use serde::Deserialize;

const SUFFIX: &str = ".heap";
/// A heap's journal records are keyed under its name with this suffix and a `/`.
const JOURNAL_SUFFIX: &str = ".journal/";

/// How conditional puts are made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConditionalWrites {
    /// `If-None-Match` / `If-Match` headers, enforced by the store.
    #[default]
    Native,
    /// Compare the ETag with a HEAD first, then write unconditionally (racy).
    Emulated,
}

/// The plugin's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The bucket.
    pub bucket: String,
    /// Prepended to every key.
    #[serde(default)]
    pub prefix: String,
    /// A profile of the shared AWS config files, instead of `AWS_PROFILE`.
    pub profile: Option<String>,
    /// The region.
    pub region: Option<String>,
    /// A custom endpoint (any S3-compatible service).
    pub endpoint_url: Option<String>,
    /// Path-style addressing; by default on with a custom endpoint (as MinIO, Ceph and moto
    /// expect), off for AWS.
    pub force_path_style: Option<bool>,
    /// Time limit of one operation, retries included.
    pub timeout_secs: Option<f64>,
    /// Attempts for transient failures.
    pub max_attempts: Option<u32>,
    /// How conditional puts are made.
    #[serde(default)]
    pub conditional_writes: ConditionalWrites,
}

/// Heaps as objects in an S3 bucket.
#[derive(Debug)]
pub struct S3Store {
    client: Client,
    runtime: tokio::runtime::Runtime,
    bucket: String,
    prefix: String,
    conditional: ConditionalWrites,
    /// Where requests go, for messages.
    target: String,
}

export_plugin!("s3", open);

/// The plugin's constructor: parses the configuration, builds the client and checks that the
/// bucket is there and reachable.
pub fn open(config: &str) -> Result<S3Store, StoreError> {
    let config: Config = mcp_v8_plugin_api::plugin::parse_config("s3", config)?;
    S3Store::open(config, Credentials::ProviderChain)
}

/// Where the store's credentials come from.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// The standard AWS provider chain (environment, shared config files and profiles, SSO,
    /// web identity, ECS and EC2 metadata), refreshed before they expire.
    ProviderChain,
    /// Fixed keys, for tests and benchmarks.
    Keys(AccessKeys),
}

/// S3 access keys.
#[derive(Debug, Clone)]
pub struct AccessKeys {
    /// The access key id.
    pub id: String,
    /// The secret access key.
    pub secret: String,
    /// A session token, for temporary credentials.
    pub session_token: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl S3Store {
    /// Connects to the configured bucket and checks the bucket.
    pub fn open(config: Config, credentials: Credentials) -> Result<Self, StoreError> {
        if config.bucket.is_empty() {
            return Err(StoreError::other(
                "invalid s3 storage configuration: bucket is empty",
            ));
        }
        let endpoint = config
            .endpoint_url
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        let timeout = Duration::try_from_secs_f64(config.timeout_secs.unwrap_or(30.0))
            .map_err(|_| StoreError::other("invalid s3 storage configuration: timeout_secs"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mcp-v8-s3")
            .enable_all()
            .build()
            .map_err(|e| StoreError::other(format!("cannot start the S3 plugin's runtime: {e}")))?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        // The shared settings (credentials, region, profile) as the AWS CLI finds them; the
        // credential providers that call AWS (SSO, STS) use the same HTTP client.
        let mut shared = aws_config::defaults(BehaviorVersion::latest()).http_client(http.clone());
        if let Some(profile) = &config.profile {
            shared = shared.profile_name(profile);
        }
        if let Some(region) = &config.region {
            shared = shared.region(Region::new(region.clone()));
        }
        if let Credentials::Keys(keys) = credentials {
            shared = shared.credentials_provider(aws_credential_types::Credentials::new(
                keys.id,
                keys.secret,
                keys.session_token,
                None,
                "mcp-v8",
            ));
        }
        let shared = runtime.block_on(shared.load());
        let region = shared
            .region()
            .cloned()
            .unwrap_or_else(|| Region::new("us-east-1"));
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .region(region.clone())
            .force_path_style(config.force_path_style.unwrap_or(endpoint.is_some()))
            .retry_config(
                RetryConfig::standard().with_max_attempts(config.max_attempts.unwrap_or(3).max(1)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(timeout)
                    .connect_timeout(timeout.min(Duration::from_secs(5)))
                    .build(),
            );
        if let Some(endpoint) = &endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let target = match &endpoint {
            Some(endpoint) => format!("bucket '{}' at {endpoint}", config.bucket),
            None => format!("bucket '{}' in {region}", config.bucket),
        };
        let store = Self {
            client: Client::from_conf(builder.build()),
            runtime,
            bucket: config.bucket,
            prefix: config.prefix,
            conditional: config.conditional_writes,
            target,
        };
        store.check_bucket()?;
        Ok(store)
    }

    fn check_bucket(&self) -> Result<(), StoreError> {
        let result = self
            .runtime
            .block_on(self.client.head_bucket().bucket(&self.bucket).send());
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(match status(&e) {
                Some(404) => StoreError::other(format!("{} does not exist", self.target)),
                Some(403) => StoreError::other(format!(
                    "access to {} is forbidden: check the credentials and the bucket policy",
                    self.target
                )),
                _ => {
                    let e = self.error("check the bucket", e);
                    StoreError::new(e.kind(), e.message().to_string())
                }
            }),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}{SUFFIX}", self.prefix)
    }

    /// The object at `key` and its ETag, `None` when there is none; `what` names the read in
    /// errors.
    async fn fetch(&self, key: &str, what: &str) -> Result<Option<(Bytes, String)>, StoreError> {
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(object) => object,
            Err(e) if status(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(self.error(what, e)),
        };
        let version = object.e_tag().unwrap_or_default().to_string();
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|e| StoreError::unavailable(format!("{what} from S3 failed: {e}")))?;
        Ok(Some((bytes.into_bytes(), version)))
    }

    /// The key prefix of `name`'s journal records.
    fn journal_prefix(&self, name: &str) -> String {
        format!("{}{name}{JOURNAL_SUFFIX}", self.prefix)
    }

    /// The numbers and keys of `name`'s journal records numbered above `after`, in order.
    fn record_keys(&self, name: &str, after: u64) -> Result<Vec<(u64, String)>, StoreError> {
        let prefix = self.journal_prefix(name);
        self.runtime.block_on(async {
            let mut keys = Vec::new();
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .start_after(format!("{prefix}{after:016x}"))
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page =
                    page.map_err(|e| self.error(&format!("list the journal of heap '{name}'"), e))?;
                for object in page.contents() {
                    let Some(key) = object.key() else { continue };
                    let seq = key
                        .strip_prefix(&prefix)
                        .filter(|digits| digits.len() == 16)
                        .and_then(|digits| u64::from_str_radix(digits, 16).ok());
                    if let Some(seq) = seq.filter(|seq| *seq > after) {
                        keys.push((seq, key.to_string()));
                    }
                }
            }
            keys.sort_unstable_by_key(|(seq, _)| *seq);
            Ok(keys)
        })
    }

    /// Maps an SDK error onto the contract's kinds, with a message naming what failed.
    fn error<E>(&self, what: &str, e: SdkError<E, Response>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        if let Some(cause) = credentials_error(&e) {
            use aws_credential_types::provider::error::CredentialsError;
            let message = format!(
                "no S3 credentials for {}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                 or name a profile of ~/.aws/config (AWS_PROFILE or `profile`), or run where \
                 a role is provided (web identity, ECS, EC2). The AWS provider chain said: {}",
                self.target,
                describe(cause)
            );
            return match cause {
                CredentialsError::ProviderTimedOut(_) | CredentialsError::ProviderError(_) => {
                    StoreError::unavailable(message)
                }
                _ => StoreError::other(message),
            };
        }
        let code = match &e {
            SdkError::ServiceError(se) => se.err().code().map(str::to_string),
            _ => None,
        };
        let status = status(&e);
        let detail = code.clone().unwrap_or_else(|| describe(&e));
        match (&e, status) {
            (SdkError::TimeoutError(_), _) => StoreError::unavailable(format!(
                "S3 did not answer in time ({what} in {})",
                self.target
            )),
            (SdkError::DispatchFailure(_), _) | (SdkError::ResponseError(_), _) => {
                StoreError::unavailable(format!(
                    "cannot reach S3 to {what} in {}: {detail}",
                    self.target
                ))
            }
            (_, Some(404)) => StoreError::new(ErrorKind::NotFound, format!("{what}: not found")),
            (_, Some(412)) | (_, Some(409)) => {
                StoreError::conflict(format!("{what}: the object changed meanwhile ({detail})"))
            }
            (_, Some(403)) => StoreError::other(format!(
                "access denied to {what} in {} ({detail})",
                self.target
            )),
            (_, Some(429)) | (_, Some(500..=599)) => {
                StoreError::unavailable(format!("S3 is busy or failing ({what}: {detail})"))
            }
            _ => StoreError::other(format!("S3 refused to {what} in {}: {detail}", self.target)),
        }
    }

    fn head_etag(&self, key: &str) -> Result<Option<String>, StoreError> {
        let result = self.runtime.block_on(
            self.client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send(),
        );
        match result {
            Ok(head) => Ok(head.e_tag().map(str::to_string)),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.error("read the heap's version", e)),
        }
    }
}

/// The raw response type of every S3 operation.
type Response = aws_smithy_runtime_api::http::Response;

fn status<E>(e: &SdkError<E, Response>) -> Option<u16> {
    match e {
        SdkError::ServiceError(se) => Some(se.raw().status().as_u16()),
        _ => None,
    }
}

/// The credential providers' failure behind a request that could not be signed.
fn credentials_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a aws_credential_types::provider::error::CredentialsError> {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(found) = s.downcast_ref() {
            return Some(found);
        }
        source = s.source();
    }
    None
}

fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn system_time(t: &aws_smithy_types::DateTime) -> SystemTime {
    SystemTime::try_from(*t).unwrap_or(SystemTime::UNIX_EPOCH)
}

impl HeapStore for S3Store {
    fn info(&self) -> BackendInfo {
        BackendInfo::new("s3", env!("CARGO_PKG_VERSION"))
    }

    fn get(&self, name: &str) -> Result<Snapshot, StoreError> {
        validate_heap_name(name)?;
        let key = self.key(name);
        match self
            .runtime
            .block_on(self.fetch(&key, &format!("read heap '{name}'")))?
        {
            Some((bytes, version)) => Ok(Snapshot {
                bytes,
                version: Version(version),
            }),
            None => Err(StoreError::not_found(name)),
        }
    }

    fn put(
        &self,
        name: &str,
        bytes: Bytes,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        validate_heap_name(name)?;
        let key = self.key(name);
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/octet-stream")
            .body(ByteStream::from(bytes));
        match (self.conditional, &precondition) {
            (_, Precondition::Any) => {}
            (ConditionalWrites::Native, Precondition::MustNotExist) => {
                request = request.if_none_match("*");
            }
            (ConditionalWrites::Native, Precondition::MustMatch(version)) => {
                request = request.if_match(version.as_str());
            }
            (ConditionalWrites::Emulated, _) => {
                // Race window: another writer may write between this HEAD and the PUT.
                let current = self.head_etag(&key)?.map(Version);
                precondition.check(name, current.as_ref())?;
            }
        }
        let output = self.runtime.block_on(request.send()).map_err(|e| {
            // `If-Match` on a missing object is S3's 404; the contract calls it a conflict.
            let gone = status(&e) == Some(404);
            match (gone, &precondition) {
                (true, Precondition::MustMatch(_)) => StoreError::conflict(format!(
                    "heap '{name}' no longer exists, so it is not at the version read"
                )),
                _ => self.error(&format!("write heap '{name}'"), e),
            }
        })?;
        Ok(Version(output.e_tag().unwrap_or_default().to_string()))
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        validate_heap_name(name)?;
        let key = self.key(name);
        // S3 deletes missing objects silently; the contract reports them.
        if self.head_etag(&key)?.is_none() {
            return Err(StoreError::not_found(name));
        }
        self.runtime
            .block_on(
                self.client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(&key)
                    .send(),
            )
            .map(|_| ())
            .map_err(|e| self.error(&format!("delete heap '{name}'"), e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<HeapMeta>, StoreError> {
        let key_prefix = format!("{}{prefix}", self.prefix);
        self.runtime.block_on(async {
            let mut heaps = Vec::new();
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&key_prefix)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| self.error("list heaps", e))?;
                for object in page.contents() {
                    let Some(name) = object
                        .key()
                        .and_then(|k| k.strip_prefix(&self.prefix))
                        .and_then(|k| k.strip_suffix(SUFFIX))
                    else {
                        continue;
                    };
                    if validate_heap_name(name).is_err() {
                        continue;
                    }
                    heaps.push(HeapMeta {
                        name: name.to_string(),
                        size: object.size().unwrap_or(0).max(0) as u64,
                        version: Version(object.e_tag().unwrap_or_default().to_string()),
                        last_modified: object
                            .last_modified()
                            .map(system_time)
                            .unwrap_or(SystemTime::UNIX_EPOCH),
                    });
                }
            }
            Ok(heaps)
        })
    }

    fn version(&self, name: &str) -> Result<Option<Version>, StoreError> {
        validate_heap_name(name)?;
        Ok(self.head_etag(&self.key(name))?.map(Version))
    }

    fn append(&self, name: &str, record: Record) -> Result<(), StoreError> {
        validate_heap_name(name)?;
        let key = format!("{}{:016x}", self.journal_prefix(name), record.seq);
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/octet-stream")
            .body(ByteStream::from(record.bytes));
        match self.conditional {
            ConditionalWrites::Native => request = request.if_none_match("*"),
            ConditionalWrites::Emulated => {
                // Race window, as for puts.
                if self.head_etag(&key)?.is_some() {
                    return Err(journal::taken(name, record.seq));
                }
            }
        }
        match self.runtime.block_on(request.send()) {
            Ok(_) => Ok(()),
            Err(e) if matches!(status(&e), Some(412 | 409)) => {
                Err(journal::taken(name, record.seq))
            }
            Err(e) => Err(self.error(
                &format!(
                    "append record {} to the journal of heap '{name}'",
                    record.seq
                ),
                e,
            )),
        }
    }

    fn read_journal(&self, name: &str, after: u64) -> Result<Vec<Record>, StoreError> {
        validate_heap_name(name)?;
        let keys = self.record_keys(name, after)?;
        self.runtime.block_on(async {
            let mut records = Vec::with_capacity(keys.len());
            for (seq, key) in keys {
                let what = format!("read journal record {seq} of heap '{name}'");
                // Trimmed since the listing (`None`): the caller sees the gap.
                if let Some((bytes, _)) = self.fetch(&key, &what).await? {
                    records.push(Record::new(seq, bytes));
                }
            }
            Ok(records)
        })
    }

    fn trim_journal(&self, name: &str, through: u64) -> Result<(), StoreError> {
        validate_heap_name(name)?;
        let keys = self.record_keys(name, 0)?;
        self.runtime.block_on(async {
            for (seq, key) in keys.into_iter().filter(|(seq, _)| *seq <= through) {
                // S3 deletes missing objects silently, which is what trimming wants.
                self.client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(&key)
                    .send()
                    .await
                    .map_err(|e| {
                        self.error(&format!("remove journal record {seq} of heap '{name}'"), e)
                    })?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_errors_name_the_field() {
        let err = open(r#"{"bucket": "b", "bukket": "c"}"#).err().unwrap();
        assert!(err.message().contains("unknown field `bukket`"), "{err}");
        let err = open(r#"{"prefix": "p/"}"#).err().unwrap();
        assert!(err.message().contains("missing field `bucket`"), "{err}");
        let err = open(r#"{"bucket": "b", "conditional_writes": "sometimes"}"#)
            .err()
            .unwrap();
        assert!(
            err.message().contains("unknown variant `sometimes`"),
            "{err}"
        );
    }
}
