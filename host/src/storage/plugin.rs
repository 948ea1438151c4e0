//! A store provided by a dynamically loaded plugin. Its calls block, so they run off the
//! async executor.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use mcp_v8_plugin_api::ffi::ForeignHeapStore;
use mcp_v8_plugin_api::HeapStore;

use super::{BackendInfo, HeapMeta, HeapStorage, Precondition, StoreError, Stored, Version};

/// A plugin's store. Its methods block, so each call runs off the async executor.
#[derive(Clone)]
pub struct PluginStore {
    inner: Arc<ForeignHeapStore>,
    info: BackendInfo,
}

impl PluginStore {
    /// Wraps a store received from a plugin.
    pub fn new(store: ForeignHeapStore) -> Self {
        let info = store.info();
        Self {
            inner: Arc::new(store),
            info,
        }
    }

    /// Runs a blocking plugin call off the async executor. On a multi-threaded runtime it
    /// runs in place (`block_in_place`: this worker thread's other tasks move to another
    /// thread), which saves the hand-off to the blocking pool; that hand-off costs more than
    /// the plugin's own work for a 1 MB read (measured in `benches/storage_plugin.rs`).
    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&ForeignHeapStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let in_place = Handle::try_current()
            .is_ok_and(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread);
        if in_place {
            return tokio::task::block_in_place(|| f(&self.inner));
        }
        let store = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::other(format!("storage {op} did not complete: {e}")))?
    }
}

#[async_trait]
impl HeapStorage for PluginStore {
    fn info(&self) -> BackendInfo {
        self.info.clone()
    }

    async fn get(&self, name: &str) -> Result<Stored, StoreError> {
        let name = name.to_string();
        let (bytes, version) = self.blocking("get", move |s| s.get_raw(&name)).await?;
        // The plugin's buffer becomes the Bytes' owner: no copy.
        Ok(Stored {
            bytes: Bytes::from_owner(bytes),
            version,
        })
    }

    async fn put(
        &self,
        name: &str,
        bytes: Bytes,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        let name = name.to_string();
        self.blocking("put", move |s| s.put(&name, &bytes, precondition))
            .await
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.blocking("delete", move |s| s.delete(&name)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<HeapMeta>, StoreError> {
        let prefix = prefix.to_string();
        self.blocking("list", move |s| s.list(&prefix)).await
    }
}
