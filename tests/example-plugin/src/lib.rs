//! A complete mcp-v8 storage plugin in one file: heaps kept in the plugin's own memory.
//!
//! It shows everything a plugin needs: the configuration, the `HeapStore` methods with
//! versions and preconditions, error kinds, and the export. It leaves the journal to the
//! contract's default methods, which keep records as entries under reserved names. Build it, point a
//! `[plugins.example]` table at `libmcp_v8_example_storage.so`, set `storage = "example"`.
//!
//! Configuration:
//!
//! ```toml
//! [plugins.example.config]
//! max_heaps = 100              # refuse to create more heaps than this (optional)
//! panic_on_heap = "boom"       # panic when writing this heap, to see panics contained (optional)
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;
use mcp_v8_plugin_api::{
    export_plugin, journal, validate_heap_name, BackendInfo, HeapMeta, HeapStore, Precondition,
    Snapshot, StoreError, Version,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    max_heaps: Option<usize>,
    panic_on_heap: Option<String>,
}

/// One stored heap.
struct Entry {
    bytes: Bytes,
    version: u64,
    modified: SystemTime,
}

struct ExampleStore {
    config: Config,
    heaps: Mutex<HashMap<String, Entry>>,
    next_version: AtomicU64,
}

/// The constructor the host calls with `[plugins.example.config]` as JSON.
fn open(config: &str) -> Result<ExampleStore, StoreError> {
    let config: Config = mcp_v8_plugin_api::plugin::parse_config("example", config)?;
    Ok(ExampleStore {
        config,
        heaps: Mutex::default(),
        next_version: AtomicU64::new(1),
    })
}

export_plugin!("example", open);

impl HeapStore for ExampleStore {
    fn info(&self) -> BackendInfo {
        BackendInfo::new("example", env!("CARGO_PKG_VERSION"))
    }

    fn get(&self, name: &str) -> Result<Snapshot, StoreError> {
        validate_heap_name(name)?;
        let heaps = self.heaps.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = heaps.get(name).ok_or_else(|| StoreError::not_found(name))?;
        Ok(Snapshot {
            bytes: entry.bytes.clone(),
            version: Version(entry.version.to_string()),
        })
    }

    fn put(
        &self,
        name: &str,
        bytes: Bytes,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        validate_heap_name(name)?;
        if self.config.panic_on_heap.as_deref() == Some(name) {
            panic!("asked to panic on heap '{name}'");
        }
        let mut heaps = self.heaps.lock().unwrap_or_else(PoisonError::into_inner);
        let current = heaps.get(name).map(|e| Version(e.version.to_string()));
        // The contract's compare-and-swap, checked under the lock that makes it atomic.
        precondition.check(name, current.as_ref())?;
        // Journal records kept by the contract's default methods are entries too, under
        // reserved names; they are not heaps.
        let is_heap = |name: &str| !journal::is_reserved(name);
        let held = heaps.keys().filter(|name| is_heap(name)).count();
        if current.is_none()
            && is_heap(name)
            && self.config.max_heaps.is_some_and(|max| held >= max)
        {
            return Err(StoreError::unavailable("the example store is full"));
        }
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            bytes,
            version,
            modified: SystemTime::now(),
        };
        heaps.insert(name.to_string(), entry);
        Ok(Version(version.to_string()))
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        validate_heap_name(name)?;
        let mut heaps = self.heaps.lock().unwrap_or_else(PoisonError::into_inner);
        heaps
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| StoreError::not_found(name))
    }

    fn list(&self, prefix: &str) -> Result<Vec<HeapMeta>, StoreError> {
        let heaps = self.heaps.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(heaps
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, e)| HeapMeta {
                name: name.clone(),
                size: e.bytes.len() as u64,
                version: Version(e.version.to_string()),
                last_modified: e.modified,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every store runs the contract's conformance suite; so should yours.
    #[test]
    fn the_example_store_keeps_the_contract() {
        let store = open("{}").unwrap_or_else(|e| panic!("{e}"));
        mcp_v8_plugin_api::conformance::run(&store, "conformance-");
    }
}
