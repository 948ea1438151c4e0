//! A store provided by a dynamically loaded plugin, called from tokio's blocking pool.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use mcp_v8_plugin_api::ffi::ForeignHeapStore;
use mcp_v8_plugin_api::HeapStore;

use super::{BackendInfo, HeapMeta, HeapStorage, Precondition, StoreError, Stored, Version};

/// A plugin's store. Its methods block, so each call runs on a blocking thread.
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

    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&ForeignHeapStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
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
