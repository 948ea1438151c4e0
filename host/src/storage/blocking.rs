//! The blocking adapter: any [`HeapStore`] whose calls may block (a plugin's, reached through
//! the FFI boundary), called from async code behind a defended boundary.
//!
//! A plugin is trusted code running in this process, but a buggy one must not take the
//! server down with it. So every call:
//!
//! * runs on tokio's blocking pool under a time limit (`--storage-timeout`): a call that does
//!   not answer in time fails with "storage did not answer", releases its heap, and can be
//!   cancelled by the client meanwhile;
//! * is refused at once while an earlier call on the same heap is still stuck, and while
//!   [`MAX_STUCK`] calls are stuck in all, so hung calls hold at most that many threads and
//!   never starve the pool that other heaps need;
//! * has its answers checked like a client's: `list` entries with invalid names are dropped
//!   (and logged), and at most [`MAX_LISTED`] are kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mcp_v8_plugin_api::{journal, validate_heap_name};

use super::{
    BackendInfo, HeapMeta, HeapStore, Precondition, Record, Sharing, Snapshot, StoreError, Version,
};

/// Most plugin calls that may be stuck (past their time limit and still running) at once.
pub(super) const MAX_STUCK: usize = 64;
/// Most heaps a `list` passes on; a plugin listing more is cut there (and it is logged).
pub(super) const MAX_LISTED: usize = 100_000;
/// The default of `--storage-timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A store whose calls may block, called on the blocking pool under a time limit.
#[derive(Clone)]
pub struct Blocking {
    inner: Arc<dyn HeapStore>,
    info: BackendInfo,
    sharing: Sharing,
    timeout: Duration,
    calls: Arc<Calls>,
}

impl std::fmt::Debug for Blocking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocking").finish_non_exhaustive()
    }
}

/// Plugin calls still running, by id: which heap (empty for `list`), which call, since when.
#[derive(Default)]
struct Calls {
    next: AtomicU64,
    running: Mutex<HashMap<u64, (String, &'static str, Instant)>>,
}

impl Calls {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (String, &'static str, Instant)>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Takes a call off the running list when the plugin returns (or its task is dropped).
struct Running {
    calls: Arc<Calls>,
    id: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.calls.running().remove(&self.id);
    }
}

impl Blocking {
    /// Wraps `store`; a call that takes longer than `timeout` fails.
    pub fn new(store: Arc<dyn HeapStore>, timeout: Duration) -> Self {
        let (info, sharing) = (store.info(), store.sharing());
        Self {
            inner: store,
            info,
            sharing,
            timeout,
            calls: Arc::default(),
        }
    }

    /// Runs a blocking plugin call on the blocking pool, under the time limit.
    async fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        heap: &str,
        f: impl FnOnce(&dyn HeapStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let running = self.admit(op, heap)?;
        let store = Arc::clone(&self.inner);
        let task = tokio::task::spawn_blocking(move || {
            let _running = running;
            f(&*store)
        });
        match tokio::time::timeout(self.timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(StoreError::other(format!(
                "storage {op} did not complete: {e}"
            ))),
            Err(_) => {
                tracing::error!(
                    plugin = %self.info.name,
                    op,
                    heap,
                    "a storage plugin call did not answer in time"
                );
                Err(StoreError::unavailable(format!(
                    "storage did not answer in {} s ({op}{}); see --storage-timeout",
                    self.timeout.as_secs_f64(),
                    if heap.is_empty() {
                        String::new()
                    } else {
                        format!(" of heap '{heap}'")
                    },
                )))
            }
        }
    }

    /// Registers a call, unless calls that never answered forbid it.
    fn admit(&self, op: &'static str, heap: &str) -> Result<Running, StoreError> {
        let mut running = self.calls.running();
        let now = Instant::now();
        let stuck = |since: &Instant| now.duration_since(*since) >= self.timeout;
        if let Some((_, earlier, since)) = running
            .values()
            .find(|(name, _, since)| name == heap && stuck(since))
        {
            return Err(StoreError::unavailable(format!(
                "storage has not answered an earlier {earlier}{} for {} s; refusing more calls \
                 on it until that one returns",
                if heap.is_empty() {
                    String::new()
                } else {
                    format!(" of heap '{heap}'")
                },
                now.duration_since(*since).as_secs()
            )));
        }
        let stuck_calls = running
            .values()
            .filter(|(_, _, since)| stuck(since))
            .count();
        if stuck_calls >= MAX_STUCK {
            return Err(StoreError::unavailable(format!(
                "storage has {stuck_calls} calls that never answered; refusing more until they \
                 return"
            )));
        }
        let id = self.calls.next.fetch_add(1, Ordering::Relaxed);
        running.insert(id, (heap.to_string(), op, now));
        Ok(Running {
            calls: Arc::clone(&self.calls),
            id,
        })
    }
}

impl Blocking {
    /// The store's name and version.
    pub fn info(&self) -> BackendInfo {
        self.info.clone()
    }

    /// [`HeapStore::get`]; the bytes come as the store returned them (from a plugin: lent
    /// across the boundary, not copied).
    pub async fn get(&self, name: &str) -> Result<Snapshot, StoreError> {
        let heap = name.to_string();
        self.call("get", name, move |s| s.get(&heap)).await
    }

    /// [`HeapStore::put`].
    pub async fn put(
        &self,
        name: &str,
        bytes: Bytes,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        let heap = name.to_string();
        self.call("put", name, move |s| s.put(&heap, bytes, precondition))
            .await
    }

    /// [`HeapStore::delete`].
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let heap = name.to_string();
        self.call("delete", name, move |s| s.delete(&heap)).await
    }

    /// [`HeapStore::list`], checked: names a client could not have used are dropped.
    pub async fn list(&self, prefix: &str) -> Result<Vec<HeapMeta>, StoreError> {
        let owned = prefix.to_string();
        let plugin = self.info.name.clone();
        self.call("list", "", move |s| {
            let listed = s.list(&owned)?;
            Ok(checked_listing(&plugin, &owned, listed.into_iter()))
        })
        .await
    }

    /// [`HeapStore::version`].
    pub async fn version(&self, name: &str) -> Result<Option<Version>, StoreError> {
        let heap = name.to_string();
        self.call("version", name, move |s| s.version(&heap)).await
    }

    /// [`HeapStore::append`].
    pub async fn append(&self, name: &str, record: Record) -> Result<(), StoreError> {
        let heap = name.to_string();
        self.call("append", name, move |s| s.append(&heap, record))
            .await
    }

    /// [`HeapStore::read_journal`], checked: records come in ascending order above `after`,
    /// each number once, or the store is not keeping the contract.
    pub async fn read_journal(&self, name: &str, after: u64) -> Result<Vec<Record>, StoreError> {
        let heap = name.to_string();
        let plugin = self.info.name.clone();
        self.call("read_journal", name, move |s| {
            let records = s.read_journal(&heap, after)?;
            let mut last = after;
            for record in &records {
                if record.seq <= last {
                    return Err(StoreError::corrupt(format!(
                        "storage plugin {plugin} returned heap '{heap}'s journal out of order \
                         (record {} after {last})",
                        record.seq
                    )));
                }
                last = record.seq;
            }
            Ok(records)
        })
        .await
    }

    /// [`HeapStore::trim_journal`].
    pub async fn trim_journal(&self, name: &str, through: u64) -> Result<(), StoreError> {
        let heap = name.to_string();
        self.call("trim_journal", name, move |s| {
            s.trim_journal(&heap, through)
        })
        .await
    }

    /// [`HeapStore::sharing`], as the store said when it was opened.
    pub fn sharing(&self) -> Sharing {
        self.sharing
    }

    /// [`HeapStore::copy`].
    pub async fn copy(
        &self,
        from: &str,
        to: &str,
        precondition: Precondition,
    ) -> Result<Option<Version>, StoreError> {
        let (source, target) = (from.to_string(), to.to_string());
        self.call("copy", to, move |s| s.copy(&source, &target, precondition))
            .await
    }

    /// The store itself, for the capabilities the contract says answer from memory.
    pub fn store(&self) -> &dyn HeapStore {
        &*self.inner
    }
}

/// The entries of a plugin's `list` that a client could have named, at most [`MAX_LISTED`].
fn checked_listing(
    plugin: &str,
    prefix: &str,
    listed: impl Iterator<Item = HeapMeta>,
) -> Vec<HeapMeta> {
    let (mut invalid, mut over) = (0usize, 0usize);
    let mut heaps = Vec::new();
    for meta in listed {
        // The default journal's records: not heaps, and not a fault of the plugin.
        if journal::is_reserved(&meta.name) {
            continue;
        }
        if validate_heap_name(&meta.name).is_err() || !meta.name.starts_with(prefix) {
            invalid += 1;
        } else if heaps.len() >= MAX_LISTED {
            over += 1;
        } else {
            heaps.push(meta);
        }
    }
    if invalid > 0 {
        tracing::warn!(
            plugin,
            invalid,
            "storage plugin listed invalid heap names; they were ignored"
        );
    }
    if over > 0 {
        tracing::warn!(
            plugin,
            over,
            max = MAX_LISTED,
            "storage plugin listed too many heaps; the rest were ignored"
        );
    }
    heaps
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_v8_plugin_api::Version;
    use std::time::UNIX_EPOCH;

    fn meta(name: &str) -> HeapMeta {
        HeapMeta {
            name: name.into(),
            size: 1,
            version: Version("1".into()),
            last_modified: UNIX_EPOCH,
        }
    }

    #[test]
    fn listings_keep_only_names_a_client_could_use() {
        let long = "x".repeat(100_000);
        let names = [
            "good",
            "../etc/passwd",
            "",
            "nul\0",
            "new\nline",
            &long,
            "good.2",
            "other",
            "_mcp-v8-journal.af63dc4c8601ec8c.0000000000000001",
        ];
        let kept = checked_listing("p", "good", names.iter().map(|n| meta(n)));
        let kept: Vec<&str> = kept.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(kept, ["good", "good.2"]);
        let many = (0..MAX_LISTED + 5).map(|i| meta(&format!("h{i}")));
        assert_eq!(checked_listing("p", "", many).len(), MAX_LISTED);
    }
}
