//! Where heaps live: one async interface over the built-in memory store and over
//! storage plugins.

pub mod loader;
mod locks;
mod memory;
mod plugin;
pub mod registry;

use async_trait::async_trait;
use bytes::Bytes;
pub use mcp_v8_plugin_api::{BackendInfo, ErrorKind, HeapMeta, Precondition, StoreError, Version};

pub use locks::HeapLocks;
pub use memory::MemoryStore;
pub use plugin::{PluginStore, DEFAULT_TIMEOUT as PLUGIN_TIMEOUT};
pub use registry::StorageChoice;

/// A stored heap: its sealed bytes (shared, not copied) and their version.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The sealed snapshot.
    pub bytes: Bytes,
    /// Its version, for the conditional put that follows a run.
    pub version: Version,
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
}
