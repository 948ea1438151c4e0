//! The example plugin's in-memory store, with misbehaviours a third-party plugin might have,
//! each switched on by configuration. Only for the end-to-end tests of the host's defences.
//!
//! ```toml
//! [plugins.hostile.config]
//! hang_on_get = "stuck"   # get of heaps whose names start with this never returns
//! hang_on_list = true     # list never returns
//! list = "junk"           # list returns invalid names besides the real heaps
//! list_count = 5000000    # list returns this many made-up heaps besides the real ones
//! hold_puts_until = "/tmp/x/release"  # a put over a heap's version (a snapshot after a
//!                                      # committed call) waits until this file exists
//! fail_puts_on = "down"   # put of heaps whose names start with this fails (unavailable)
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use mcp_v8_plugin_api::{
    export_plugin, BackendInfo, HeapMeta, HeapStore, Precondition, Snapshot, StoreError, Version,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    hang_on_get: Option<String>,
    #[serde(default)]
    hang_on_list: bool,
    list: Option<String>,
    list_count: Option<u64>,
    hold_puts_until: Option<std::path::PathBuf>,
    fail_puts_on: Option<String>,
}

struct HostileStore {
    config: Config,
    heaps: Mutex<HashMap<String, (Bytes, u64)>>,
    next_version: AtomicU64,
}

fn open(config: &str) -> Result<HostileStore, StoreError> {
    Ok(HostileStore {
        config: mcp_v8_plugin_api::plugin::parse_config("hostile", config)?,
        heaps: Mutex::default(),
        next_version: AtomicU64::new(1),
    })
}

export_plugin!("hostile", open);

/// Never returns, like a plugin waiting on a dead connection without a timeout.
fn hang() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn meta(name: String) -> HeapMeta {
    HeapMeta {
        name,
        size: 1,
        version: Version("1".into()),
        last_modified: SystemTime::UNIX_EPOCH,
    }
}

impl HeapStore for HostileStore {
    fn info(&self) -> BackendInfo {
        BackendInfo::new("hostile", env!("CARGO_PKG_VERSION"))
    }

    fn get(&self, name: &str) -> Result<Snapshot, StoreError> {
        if self
            .config
            .hang_on_get
            .as_deref()
            .is_some_and(|p| name.starts_with(p))
        {
            hang();
        }
        let heaps = self.heaps.lock().unwrap_or_else(PoisonError::into_inner);
        let (bytes, version) = heaps.get(name).ok_or_else(|| StoreError::not_found(name))?;
        Ok(Snapshot {
            bytes: bytes.clone(),
            version: Version(version.to_string()),
        })
    }

    fn put(
        &self,
        name: &str,
        bytes: Bytes,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        let replacing = matches!(precondition, Precondition::MustMatch(_));
        if let Some(release) = self.config.hold_puts_until.as_ref().filter(|_| replacing) {
            // A store slower than any call: the host's answers cannot wait for it.
            while !release.exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if self
            .config
            .fail_puts_on
            .as_deref()
            .is_some_and(|p| name.starts_with(p))
        {
            return Err(StoreError::unavailable("the store is down"));
        }
        let mut heaps = self.heaps.lock().unwrap_or_else(PoisonError::into_inner);
        let current = heaps.get(name).map(|(_, v)| Version(v.to_string()));
        precondition.check(name, current.as_ref())?;
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        heaps.insert(name.to_string(), (bytes, version));
        Ok(Version(version.to_string()))
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        let mut heaps = self.heaps.lock().unwrap_or_else(PoisonError::into_inner);
        heaps
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| StoreError::not_found(name))
    }

    fn list(&self, prefix: &str) -> Result<Vec<HeapMeta>, StoreError> {
        if self.config.hang_on_list {
            hang();
        }
        let heaps = self.heaps.lock().unwrap_or_else(PoisonError::into_inner);
        let mut listed: Vec<HeapMeta> = heaps
            .keys()
            .filter(|name| name.starts_with(prefix))
            .map(|name| meta(name.clone()))
            .collect();
        if self.config.list.as_deref() == Some("junk") {
            for junk in ["../etc/passwd", "", "nul\0byte", "new\nline", ".hidden"] {
                listed.push(meta(junk.to_string()));
            }
            listed.push(meta("x".repeat(100_000)));
        }
        for i in 0..self.config.list_count.unwrap_or(0) {
            listed.push(meta(format!("made-up-{i}")));
        }
        Ok(listed)
    }
}
