//! One async mutex per heap name, so calls on one heap run one after another while calls
//! on different heaps run in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// Per-heap locks. Entries disappear once nobody holds or waits for them. Clones share the
/// same locks.
#[derive(Debug, Default, Clone)]
pub struct HeapLocks {
    locks: Arc<Mutex<HashMap<String, Weak<AsyncMutex<()>>>>>,
}

impl HeapLocks {
    /// Waits for exclusive use of heap `name` (in arrival order).
    pub async fn lock(&self, name: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(lock) = locks.get(name).and_then(Weak::upgrade) {
                lock
            } else {
                // Prune dead entries now and then so the map stays as small as the live set.
                if locks.len() >= 64 {
                    locks.retain(|_, weak| weak.strong_count() > 0);
                }
                let lock = Arc::new(AsyncMutex::new(()));
                locks.insert(name.to_string(), Arc::downgrade(&lock));
                lock
            }
        };
        lock.lock_owned().await
    }

    /// Whether anyone holds or waits for heap `name`'s lock: a call runs on it, or its state
    /// is still being saved.
    pub fn is_held(&self, name: &str) -> bool {
        let locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        locks.get(name).is_some_and(|weak| weak.strong_count() > 0)
    }

    /// These locks as a store's pins: a heap whose lock is held is in use.
    pub fn pins(&self) -> mcp_v8_plugin_api::Pins {
        let locks = self.clone();
        mcp_v8_plugin_api::Pins::new(move |name| locks.is_held(name))
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.locks.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    #[tokio::test]
    async fn same_name_excludes_other_names_do_not() {
        let locks = HeapLocks::default();
        let a = locks.lock("a").await;
        // A different heap is free.
        let _b = locks.lock("b").await;
        // The same heap is not, until the guard is dropped.
        let mut waiting = std::pin::pin!(locks.lock("a"));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        assert!(locks.is_held("a") && locks.clone().is_held("b"));
        drop(a);
        let a = waiting.await;
        drop(a);
        assert!(!locks.is_held("a"), "a lock nobody holds still counts");
    }

    #[tokio::test]
    async fn unused_entries_are_pruned() {
        let locks = HeapLocks::default();
        for i in 0..200 {
            drop(locks.lock(&format!("h{i}")).await);
        }
        assert!(locks.tracked() <= 65, "{} entries kept", locks.tracked());
    }
}
