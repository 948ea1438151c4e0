//! Where heaps live. Every store keeps one contract, [`HeapStore`] from the plugin API: the
//! built-in [`MemoryStore`], the bundled file and S3 plugins, any third-party plugin. The
//! runtime reaches them all through [`Store`], which calls the memory store directly (it never
//! blocks) and any other store on the blocking pool under a time limit ([`Blocking`]), and
//! counts every operation.

mod blocking;
pub mod dump;
pub mod loader;
mod locks;
mod memory;
pub mod registry;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use mcp_v8_plugin_api::{journal, validate_heap_name};
pub use mcp_v8_plugin_api::{
    BackendInfo, ErrorKind, Gone, GoneCause, HeapMeta, HeapStore, Pins, Precondition, Record,
    Sharing, Snapshot, StoreError, Usage, Version,
};

pub use blocking::{Blocking, DEFAULT_TIMEOUT as PLUGIN_TIMEOUT};
pub use dump::{Dump, LoadedDump};
pub use locks::HeapLocks;
pub use memory::{human_bytes, MemoryOptions, MemoryStore};
pub use registry::{MemorySettings, StorageChoice};

use crate::metrics::{Op, StorageStats, StoreMetrics};

/// Checks a heap name a caller gave: the contract's rule ([`validate_heap_name`]), and not a
/// name the default journal reserves for its records.
pub fn validate_caller_name(name: &str) -> Result<(), StoreError> {
    validate_heap_name(name)?;
    if journal::is_reserved(name) {
        return Err(StoreError::invalid_name(format!(
            "invalid heap name '{name}': names starting with '{}' are reserved for journals",
            journal::RESERVED_PREFIX
        )));
    }
    Ok(())
}

/// What a call on heap `heap`, which its store dropped on its own, is told, e.g. "heap 'x' was
/// evicted from memory (size limit) 12 min ago; it starts empty".
pub fn explain_gone(gone: &Gone, heap: &str) -> String {
    let ago = SystemTime::now()
        .duration_since(gone.at)
        .unwrap_or_default()
        .as_secs();
    let ago = match ago {
        0..=59 => format!("{ago} s"),
        60..=7199 => format!("{} min", ago / 60),
        _ => format!("{} h", ago / 3600),
    };
    let why = match gone.cause {
        GoneCause::Evicted => "was evicted from memory (size limit, --memory-max-bytes)",
        GoneCause::Expired => "expired from memory (unused longer than --memory-ttl)",
    };
    format!("heap '{heap}' {why} {ago} ago; it starts empty")
}

/// The runtime's handle on its store. Clones share the store and its counters.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    metrics: Arc<StoreMetrics>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

#[derive(Clone)]
enum Backend {
    /// Called inline: every operation is a map lookup under a lock.
    Memory(MemoryStore),
    /// Called on the blocking pool under a time limit.
    Blocking(Blocking),
}

impl Store {
    /// The built-in memory store.
    pub fn memory(store: MemoryStore) -> Self {
        Self::with(Backend::Memory(store))
    }

    /// Any other store (a plugin's, a test's): its calls may block, so they run on the
    /// blocking pool and time out after `timeout`.
    pub fn blocking(store: Arc<dyn HeapStore>, timeout: Duration) -> Self {
        Self::with(Backend::Blocking(Blocking::new(store, timeout)))
    }

    fn with(backend: Backend) -> Self {
        Self {
            backend,
            metrics: Arc::default(),
        }
    }

    /// The backend's name and version.
    pub fn info(&self) -> BackendInfo {
        match &self.backend {
            Backend::Memory(m) => m.info(),
            Backend::Blocking(b) => b.info(),
        }
    }

    /// Counts `op`, which took from `started` to now and moved `bytes` on success.
    fn count<T>(&self, op: Op, started: Instant, result: &Result<T, StoreError>, bytes: u64) {
        let outcome = result.as_ref().map(|_| bytes).map_err(StoreError::kind);
        self.metrics.record(op, started.elapsed(), outcome);
    }

    /// Reads a heap; a missing one is [`ErrorKind::NotFound`].
    pub async fn get(&self, name: &str) -> Result<Snapshot, StoreError> {
        let started = Instant::now();
        let result = match &self.backend {
            Backend::Memory(m) => m.get(name),
            Backend::Blocking(b) => b.get(name).await,
        };
        let len = result.as_ref().map_or(0, |s| s.bytes.len() as u64);
        self.count(Op::Get, started, &result, len);
        result
    }

    /// Writes a heap if `precondition` holds; a failed one is [`ErrorKind::Conflict`].
    pub async fn put(
        &self,
        name: &str,
        bytes: Bytes,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        let (started, len) = (Instant::now(), bytes.len() as u64);
        let result = match &self.backend {
            Backend::Memory(m) => m.put(name, bytes, precondition),
            Backend::Blocking(b) => b.put(name, bytes, precondition).await,
        };
        self.count(Op::Put, started, &result, len);
        result
    }

    /// Removes a heap; a missing one is [`ErrorKind::NotFound`].
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = match &self.backend {
            Backend::Memory(m) => m.delete(name),
            Backend::Blocking(b) => b.delete(name).await,
        };
        self.count(Op::Delete, started, &result, 0);
        result
    }

    /// Lists heaps whose names start with `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<HeapMeta>, StoreError> {
        let started = Instant::now();
        let result = match &self.backend {
            Backend::Memory(m) => m.list(prefix),
            Backend::Blocking(b) => b.list(prefix).await,
        };
        self.count(Op::List, started, &result, 0);
        result
    }

    /// The version a heap is at now, `None` when it does not exist: what the runtime asks
    /// before it runs code on a warm isolate.
    pub async fn version(&self, name: &str) -> Result<Option<Version>, StoreError> {
        let started = Instant::now();
        let result = match &self.backend {
            Backend::Memory(m) => m.version(name),
            Backend::Blocking(b) => b.version(name).await,
        };
        self.count(Op::Version, started, &result, 0);
        if let Ok(found) = &result {
            self.metrics.looked_up(found.is_some());
        }
        result
    }

    /// Appends `record` to heap `name`'s journal unless its number is taken
    /// ([`ErrorKind::Conflict`]).
    pub async fn append(&self, name: &str, record: Record) -> Result<(), StoreError> {
        let (started, len) = (Instant::now(), record.bytes.len() as u64);
        let result = match &self.backend {
            Backend::Memory(m) => m.append(name, record),
            Backend::Blocking(b) => b.append(name, record).await,
        };
        self.count(Op::Append, started, &result, len);
        result
    }

    /// The records of heap `name`'s journal numbered above `after`, in order.
    pub async fn read_journal(&self, name: &str, after: u64) -> Result<Vec<Record>, StoreError> {
        let started = Instant::now();
        let result = match &self.backend {
            Backend::Memory(m) => m.read_journal(name, after),
            Backend::Blocking(b) => b.read_journal(name, after).await,
        };
        let len = result.as_ref().map_or(0, |records| {
            records.iter().map(|r| r.bytes.len() as u64).sum()
        });
        self.count(Op::ReadJournal, started, &result, len);
        result
    }

    /// Removes the records of heap `name`'s journal numbered `through` or below.
    pub async fn trim_journal(&self, name: &str, through: u64) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = match &self.backend {
            Backend::Memory(m) => m.trim_journal(name, through),
            Backend::Blocking(b) => b.trim_journal(name, through).await,
        };
        self.count(Op::TrimJournal, started, &result, 0);
        result
    }

    /// Who else may write the store's heaps, as the store declares it.
    pub fn sharing(&self) -> Sharing {
        match &self.backend {
            Backend::Memory(m) => m.sharing(),
            Backend::Blocking(b) => b.sharing(),
        }
    }

    /// Hands the store the runtime's per-heap locks as its pins: a heap whose lock is held
    /// is in use (a call runs on it or its state is being stored), which a store that drops
    /// heaps on its own never drops.
    pub fn use_locks(&self, locks: &HeapLocks) {
        self.store().set_pins(locks.pins());
    }

    /// The store as the contract's trait object, for its capabilities (answered in memory,
    /// without a blocking call).
    fn store(&self) -> &dyn HeapStore {
        match &self.backend {
            Backend::Memory(m) => m,
            Backend::Blocking(b) => b.store(),
        }
    }

    /// Why the store dropped `name` on its own lately, if it did.
    pub fn gone(&self, name: &str) -> Option<Gone> {
        self.store().gone(name)
    }

    /// The size of heap `name`'s snapshot before compression, if the store knows it without
    /// reading the heap and it is still at `version`.
    pub fn raw_size(&self, name: &str, version: &Version) -> Option<u64> {
        self.store().raw_size(name, version)
    }

    /// Copies heap `from` to `to` inside the store, if the store can: the copy's version,
    /// `None` when the caller must copy.
    pub async fn copy(
        &self,
        from: &str,
        to: &str,
        precondition: Precondition,
    ) -> Result<Option<Version>, StoreError> {
        let started = Instant::now();
        let result = match &self.backend {
            Backend::Memory(m) => HeapStore::copy(m, from, to, precondition),
            Backend::Blocking(b) => b.copy(from, to, precondition).await,
        };
        if matches!(result, Ok(Some(_)) | Err(_)) {
            self.count(Op::Put, started, &result, 0);
        }
        result
    }

    /// The heap whose name `name`'s stored envelope carries, when the store made it as a
    /// copy sharing another heap's bytes.
    pub fn sealed_for(&self, name: &str) -> Option<String> {
        self.store().copied_from(name)
    }

    /// What `storage_stats` reports: the counters, and what the store holds if it knows.
    pub fn stats(&self) -> StorageStats {
        self.metrics.stats(&self.info().name, self.store().usage())
    }

    /// The counters.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }
}
