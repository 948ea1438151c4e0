//! The built-in store: heaps in this process's memory, gone when it exits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{BackendInfo, HeapMeta, HeapStorage, Precondition, StoreError, Stored, Version};

/// Heaps in memory. Clones share the same heaps. Reads take a shared lock and hand out the
/// stored [`Bytes`] without copying them; writes take the lock exclusively and store the
/// given [`Bytes`] as they are.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    heaps: RwLock<HashMap<String, Entry>>,
    /// Versions come from one counter, so a deleted and re-created heap never repeats one.
    generation: AtomicU64,
}

struct Entry {
    bytes: Bytes,
    version: u64,
    modified: SystemTime,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Synchronous [`HeapStorage::get`], for callers outside an async context.
    pub fn get_now(&self, name: &str) -> Result<Stored, StoreError> {
        let heaps = self
            .inner
            .heaps
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = heaps.get(name).ok_or_else(|| StoreError::not_found(name))?;
        Ok(Stored {
            bytes: entry.bytes.clone(),
            version: Version(entry.version.to_string()),
        })
    }

    /// Synchronous [`HeapStorage::put`].
    pub fn put_now(
        &self,
        name: &str,
        bytes: Bytes,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        let mut heaps = self
            .inner
            .heaps
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let current = heaps.get(name).map(|e| Version(e.version.to_string()));
        precondition.check(name, current.as_ref())?;
        let version = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        heaps.insert(
            name.to_string(),
            Entry {
                bytes,
                version,
                modified: SystemTime::now(),
            },
        );
        Ok(Version(version.to_string()))
    }
}

#[async_trait]
impl HeapStorage for MemoryStore {
    fn info(&self) -> BackendInfo {
        BackendInfo::new("memory", env!("CARGO_PKG_VERSION"))
    }

    async fn get(&self, name: &str) -> Result<Stored, StoreError> {
        self.get_now(name)
    }

    async fn put(
        &self,
        name: &str,
        bytes: Bytes,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        self.put_now(name, bytes, precondition)
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let mut heaps = self
            .inner
            .heaps
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        heaps
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| StoreError::not_found(name))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<HeapMeta>, StoreError> {
        let heaps = self
            .inner
            .heaps
            .read()
            .unwrap_or_else(PoisonError::into_inner);
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

    async fn version(&self, name: &str) -> Result<Option<Version>, StoreError> {
        let heaps = self
            .inner
            .heaps
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(heaps.get(name).map(|e| Version(e.version.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ErrorKind;

    #[tokio::test]
    async fn get_shares_the_stored_bytes() {
        let store = MemoryStore::new();
        let blob = Bytes::from(vec![7u8; 1 << 20]);
        store
            .put("a", blob.clone(), Precondition::Any)
            .await
            .unwrap();
        let got = store.get("a").await.unwrap();
        assert_eq!(got.bytes.as_ptr(), blob.as_ptr(), "get copied the blob");
    }

    #[tokio::test]
    async fn conditional_puts_are_compare_and_swap() {
        let store = MemoryStore::new();
        let v1 = store
            .put("a", Bytes::from_static(b"1"), Precondition::MustNotExist)
            .await
            .unwrap();
        let again = store
            .put("a", Bytes::from_static(b"x"), Precondition::MustNotExist)
            .await
            .unwrap_err();
        assert_eq!(again.kind(), ErrorKind::Conflict);
        let v2 = store
            .put(
                "a",
                Bytes::from_static(b"2"),
                Precondition::MustMatch(v1.clone()),
            )
            .await
            .unwrap();
        let stale = store
            .put("a", Bytes::from_static(b"x"), Precondition::MustMatch(v1))
            .await
            .unwrap_err();
        assert_eq!(stale.kind(), ErrorKind::Conflict);
        let got = store.get("a").await.unwrap();
        assert_eq!((&got.bytes[..], got.version), (&b"2"[..], v2));
        let missing = store
            .put(
                "b",
                Bytes::from_static(b"x"),
                Precondition::MustMatch(Version("1".into())),
            )
            .await
            .unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::Conflict);
    }

    #[tokio::test]
    async fn versions_never_repeat_after_delete() {
        let store = MemoryStore::new();
        let v1 = store
            .put("a", Bytes::new(), Precondition::Any)
            .await
            .unwrap();
        store.delete("a").await.unwrap();
        let v2 = store
            .put("a", Bytes::new(), Precondition::Any)
            .await
            .unwrap();
        assert_ne!(v1, v2);
    }

    #[tokio::test]
    async fn list_filters_by_prefix_and_delete_reports_missing() {
        let store = MemoryStore::new();
        for name in ["app-1", "app-2", "other"] {
            store
                .put(name, Bytes::from_static(b"abc"), Precondition::Any)
                .await
                .unwrap();
        }
        let mut names: Vec<_> = store
            .list("app-")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        names.sort();
        assert_eq!(names, ["app-1", "app-2"]);
        assert_eq!(store.list("").await.unwrap().len(), 3);
        assert_eq!(store.list("other").await.unwrap()[0].size, 3);
        store.delete("other").await.unwrap();
        assert_eq!(
            store.delete("other").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            store.get("other").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn concurrent_writers_with_cas_lose_no_update() {
        let store = MemoryStore::new();
        store
            .put_now("n", Bytes::from_static(b"0"), Precondition::MustNotExist)
            .unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut done = 0;
                    while done < 100 {
                        let cur = store.get_now("n").unwrap();
                        let n: u64 = std::str::from_utf8(&cur.bytes).unwrap().parse().unwrap();
                        let next = Bytes::from((n + 1).to_string());
                        if store
                            .put_now("n", next, Precondition::MustMatch(cur.version))
                            .is_ok()
                        {
                            done += 1;
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(&store.get_now("n").unwrap().bytes[..], b"400");
    }
}
