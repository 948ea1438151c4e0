//! Where heaps live: one async interface over the built-in memory store and over
//! storage plugins.

mod dump;
pub mod loader;
mod locks;
mod memory;
mod plugin;
pub mod registry;

use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
pub use mcp_v8_plugin_api::{BackendInfo, ErrorKind, HeapMeta, Precondition, StoreError, Version};

pub use dump::{Dump, Loaded as DumpLoaded};
pub use locks::HeapLocks;
pub use memory::{human_bytes, MemoryOptions, MemoryStore};
pub use plugin::{PluginStore, DEFAULT_TIMEOUT as PLUGIN_TIMEOUT};
pub use registry::{MemorySettings, StorageChoice};

/// A stored heap: its sealed bytes (shared, not copied) and their version.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The sealed snapshot.
    pub bytes: Bytes,
    /// Its version, for the conditional put that follows a run.
    pub version: Version,
}

/// Why a store no longer holds a heap it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneCause {
    /// Dropped to stay within the store's size limit.
    Evicted,
    /// Unused for longer than the store keeps heaps.
    Expired,
}

/// A heap a store dropped on its own, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone {
    /// Why.
    pub cause: GoneCause,
    /// When.
    pub at: SystemTime,
}

impl Gone {
    /// What a call on the heap is told, e.g. "heap 'x' was evicted from memory (size limit)
    /// 12 min ago; it starts empty".
    pub fn explain(&self, heap: &str) -> String {
        let ago = SystemTime::now()
            .duration_since(self.at)
            .unwrap_or_default()
            .as_secs();
        let ago = match ago {
            0..=59 => format!("{ago} s"),
            60..=7199 => format!("{} min", ago / 60),
            _ => format!("{} h", ago / 3600),
        };
        let why = match self.cause {
            GoneCause::Evicted => "was evicted from memory (size limit, --memory-max-bytes)",
            GoneCause::Expired => "expired from memory (unused longer than --memory-ttl)",
        };
        format!("heap '{heap}' {why} {ago} ago; it starts empty")
    }
}

/// What a store holds, for stores that know it without a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Heaps held.
    pub heaps: u64,
    /// Stored bytes held.
    pub bytes: u64,
    /// The same heaps' snapshots before compression.
    pub raw_bytes: u64,
    /// The store's limit, if it has one.
    pub max_bytes: Option<u64>,
    /// Heaps dropped for the size limit so far.
    pub evictions: u64,
    /// Heaps dropped for being unused so far.
    pub expirations: u64,
}

/// The host's view of a heap store. Names are validated before they get here.
#[async_trait]
pub trait HeapStorage: Send + Sync + 'static {
    /// The backend's name and version.
    fn info(&self) -> BackendInfo;
    /// Reads a heap; a missing one is [`ErrorKind::NotFound`].
    async fn get(&self, name: &str) -> Result<Stored, StoreError>;
    /// Writes a heap if `precondition` holds; a failed one is [`ErrorKind::Conflict`].
    async fn put(
        &self,
        name: &str,
        bytes: Bytes,
        precondition: Precondition,
    ) -> Result<Version, StoreError>;
    /// Removes a heap; a missing one is [`ErrorKind::NotFound`].
    async fn delete(&self, name: &str) -> Result<(), StoreError>;
    /// Lists heaps whose names start with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<HeapMeta>, StoreError>;
    /// The version a heap is at now, `None` when it does not exist: what the runtime asks
    /// before it runs code on a warm isolate. Stores that can answer it more cheaply than a
    /// listing (the memory store) say so.
    async fn version(&self, name: &str) -> Result<Option<Version>, StoreError> {
        let heaps = self.list(name).await?;
        Ok(heaps
            .into_iter()
            .find(|m| m.name == name)
            .map(|m| m.version))
    }

    /// Hands the store the runtime's per-heap locks: a heap whose lock is held is in use (a
    /// call runs on it or its save is pending), which a store that drops heaps on its own
    /// must not drop.
    fn use_locks(&self, _locks: &HeapLocks) {}

    /// Why the store dropped `name` on its own lately, if it did.
    fn gone(&self, _name: &str) -> Option<Gone> {
        None
    }

    /// The size of heap `name`'s snapshot before compression, if the store knows it without
    /// reading the heap and it is still at `version`.
    fn raw_size(&self, _name: &str, _version: &Version) -> Option<u64> {
        None
    }

    /// What the store holds, if it knows without a listing.
    fn usage(&self) -> Option<Usage> {
        None
    }
}
