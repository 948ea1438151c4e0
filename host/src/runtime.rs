//! What the MCP tools do, independent of MCP: run code on a heap (load, verify, execute,
//! snapshot, conditionally store), run code statelessly, list and delete heaps.

use std::sync::Arc;
use std::time::Duration;

use mcp_v8_plugin_api::validate_heap_name;

use crate::engine::{Completion, Limits, Run, RunError};
use crate::envelope::EnvelopeError;
use crate::executor::Executor;
use crate::job::{Job, Target};
use crate::storage::{ErrorKind, HeapLocks, HeapMeta, HeapStorage, Precondition, StoreError};

/// Why a tool call failed. Every variant leaves the stored heap as it was.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The heap name was rejected before any store saw it.
    #[error("{0}")]
    InvalidName(StoreError),
    /// A per-call limit was out of range.
    #[error("{0}")]
    InvalidLimit(String),
    /// The code failed (exception, timeout, heap limit, crash).
    #[error("{0}")]
    Run(#[from] RunError),
    /// The stored heap cannot be restored.
    #[error("heap '{heap}' cannot be loaded: {error} (delete_heap removes it so the name can start over)")]
    Envelope { heap: String, error: EnvelopeError },
    /// The stored heap passed verification, but V8 failed to restore it.
    #[error("heap '{heap}' cannot be loaded: V8 could not restore its snapshot ({reason}); the code did not run (delete_heap removes the heap so the name can start over)")]
    Unrestorable { heap: String, reason: String },
    /// Someone else saved the heap while this call ran on the old state.
    #[error("heap '{heap}' was changed concurrently while this code ran, so its result was not saved; retry the call")]
    Conflict { heap: String },
    /// The heap store failed.
    #[error("storage error ({kind}) for heap '{heap}': {error}", kind = error.kind())]
    Storage { heap: String, error: StoreError },
    /// The heap store failed to list heaps.
    #[error("storage error ({kind}) while listing heaps: {0}", kind = .0.kind())]
    Listing(StoreError),
    /// Something that should not happen.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A call's result and what the code printed, which is worth showing also after a failure.
pub type Reply<T> = Run<T, CallError>;

/// The result of a stateful run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeapRun {
    /// The rendered completion value and pending timers.
    pub completion: Completion,
    /// The heap the code ran on (generated when the caller gave none).
    pub heap: String,
}

/// Per-call limits; each may only tighten the server's.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallLimits {
    /// Time limit for this call.
    pub timeout: Option<Duration>,
    /// Heap limit for this call, in bytes.
    pub heap_bytes: Option<usize>,
}

/// Runs code on heaps kept in a [`HeapStorage`].
pub struct Runtime {
    storage: Arc<dyn HeapStorage>,
    executor: Executor,
    locks: HeapLocks,
    limits: Limits,
}

impl Runtime {
    /// A runtime storing heaps in `storage` and running code with `executor` under `limits`.
    pub fn new(storage: Arc<dyn HeapStorage>, executor: Executor, limits: Limits) -> Self {
        Self {
            storage,
            executor,
            locks: HeapLocks::default(),
            limits,
        }
    }

    /// Gets the executor ready for the first call.
    pub fn prewarm(&self) {
        self.executor.prewarm();
    }

    /// The store behind this runtime.
    pub fn storage(&self) -> &Arc<dyn HeapStorage> {
        &self.storage
    }

    /// The server's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The server's limits tightened by a call's.
    fn limits_for(&self, call: CallLimits) -> Result<Limits, CallError> {
        let mut limits = self.limits;
        if let Some(timeout) = call.timeout {
            if timeout.is_zero() || timeout > self.limits.timeout {
                return Err(CallError::InvalidLimit(format!(
                    "timeout_secs must be more than 0 and at most the server's {} s",
                    self.limits.timeout.as_secs_f64()
                )));
            }
            limits.timeout = timeout;
        }
        if let Some(heap_bytes) = call.heap_bytes {
            if heap_bytes < (1 << 20) || heap_bytes > self.limits.heap_bytes {
                return Err(CallError::InvalidLimit(format!(
                    "heap_memory_max_mb must be at least 1 and at most the server's {} MB",
                    self.limits.heap_bytes >> 20
                )));
            }
            limits.heap_bytes = heap_bytes;
        }
        Ok(limits)
    }

    /// Runs `code` without any heap.
    pub async fn run_stateless(&self, code: String, call: CallLimits) -> Reply<Completion> {
        let limits = match self.limits_for(call) {
            Ok(limits) => limits,
            Err(e) => return Reply::failed(e),
        };
        let job = Job {
            code,
            target: Target::Stateless,
            limits,
        };
        let outcome = self.executor.run(job).await;
        outcome.map_result(|result| {
            result
                .map(|(completion, _)| completion)
                .map_err(CallError::from)
        })
    }

    /// Runs `code` on heap `heap` (a new heap with a generated name when `None`) and saves
    /// the heap afterwards, unless the code failed.
    pub async fn run_on_heap(
        &self,
        code: String,
        heap: Option<String>,
        call: CallLimits,
    ) -> Reply<HeapRun> {
        let heap = match heap {
            Some(name) => match validate_heap_name(&name) {
                Ok(()) => name,
                Err(e) => return Reply::failed(CallError::InvalidName(e)),
            },
            None => generated_name(),
        };
        let limits = match self.limits_for(call) {
            Ok(limits) => limits,
            Err(e) => return Reply::failed(e),
        };
        let _guard = self.locks.lock(&heap).await;
        tracing::debug!("running code on heap {heap}");

        let (stored, precondition) = match self.storage.get(&heap).await {
            Ok(stored) => (Some(stored.bytes), Precondition::MustMatch(stored.version)),
            Err(e) if e.kind() == ErrorKind::NotFound => (None, Precondition::MustNotExist),
            Err(error) => return Reply::failed(CallError::Storage { heap, error }),
        };
        let job = Job {
            code,
            target: Target::Heap {
                name: heap.clone(),
                sealed: stored,
            },
            limits,
        };
        let outcome = self.executor.run(job).await;
        let result = match outcome.result {
            Ok((completion, Some(sealed))) => {
                match self.storage.put(&heap, sealed, precondition).await {
                    Ok(_) => Ok(HeapRun { completion, heap }),
                    Err(e) if e.kind() == ErrorKind::Conflict => Err(CallError::Conflict { heap }),
                    Err(error) => Err(CallError::Storage { heap, error }),
                }
            }
            Ok((_, None)) => Err(CallError::Internal(
                "a stateful run returned no heap".into(),
            )),
            Err(RunError::Heap(error)) => Err(CallError::Envelope { heap, error }),
            Err(RunError::Unrestorable(reason)) => Err(CallError::Unrestorable { heap, reason }),
            Err(e) => Err(e.into()),
        };
        Run {
            result,
            console: outcome.console,
        }
    }

    /// All heaps, sorted by name.
    pub async fn list(&self) -> Result<Vec<HeapMeta>, CallError> {
        let mut heaps = self.storage.list("").await.map_err(CallError::Listing)?;
        heaps.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(heaps)
    }

    /// Up to `limit` heaps whose names sort after `after`, by name, and the cursor (the last
    /// name) to pass as `after` for the next page, if there is one.
    pub async fn list_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<HeapMeta>, Option<String>), CallError> {
        let limit = limit.max(1);
        let mut heaps = self.list().await?;
        if let Some(after) = after {
            heaps.retain(|m| m.name.as_str() > after);
        }
        let next = (heaps.len() > limit).then(|| heaps[limit - 1].name.clone());
        heaps.truncate(limit);
        Ok((heaps, next))
    }

    /// Metadata of one heap, or `None` when it does not exist.
    pub async fn describe(&self, heap: &str) -> Result<Option<HeapMeta>, CallError> {
        validate_heap_name(heap).map_err(CallError::InvalidName)?;
        let heaps = self
            .storage
            .list(heap)
            .await
            .map_err(|error| CallError::Storage {
                heap: heap.into(),
                error,
            })?;
        Ok(heaps.into_iter().find(|m| m.name == heap))
    }

    /// Deletes a heap, waiting for any call running on it.
    pub async fn delete(&self, heap: &str) -> Result<(), CallError> {
        validate_heap_name(heap).map_err(CallError::InvalidName)?;
        let _guard = self.locks.lock(heap).await;
        self.storage
            .delete(heap)
            .await
            .map_err(|error| CallError::Storage {
                heap: heap.into(),
                error,
            })
    }
}

/// A fresh heap name such as `heap-3f9c2a1b7d4e`.
fn generated_name() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("heap-{}", &id[..12])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope;
    use crate::storage::MemoryStore;
    use bytes::Bytes;

    fn runtime() -> (Runtime, MemoryStore) {
        let store = MemoryStore::new();
        (
            Runtime::new(
                Arc::new(store.clone()),
                Executor::InProcess,
                Limits::default(),
            ),
            store,
        )
    }

    async fn output(rt: &Runtime, code: &str, heap: &str) -> String {
        rt.run_on_heap(code.into(), Some(heap.into()), CallLimits::default())
            .await
            .result
            .unwrap()
            .completion
            .output
    }

    /// Replaces the stored bytes of `heap` with `f(bytes)`.
    fn tamper(store: &MemoryStore, heap: &str, f: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Bytes {
        let stored = store.get_now(heap).unwrap();
        let bad = Bytes::from(f(stored.bytes.to_vec()));
        store.put_now(heap, bad.clone(), Precondition::Any).unwrap();
        bad
    }

    type Damage = Box<dyn FnOnce(Vec<u8>) -> Vec<u8>>;

    #[tokio::test]
    async fn damaged_heaps_are_clear_errors_and_are_left_alone() {
        let (rt, store) = runtime();
        let damages: Vec<(&str, Damage, &str)> = vec![
            (
                "truncated",
                Box::new(|b: Vec<u8>| b[..b.len() / 2].to_vec()),
                "corrupt heap",
            ),
            (
                "bitflip",
                Box::new(|mut b: Vec<u8>| {
                    let i = b.len() - 100;
                    b[i] ^= 1;
                    b
                }),
                "checksum mismatch",
            ),
            (
                "foreign",
                Box::new(|_| b"PK\x03\x04 a zip file".to_vec()),
                "not an mcp-v8 heap",
            ),
            ("empty", Box::new(|_| Vec::new()), "truncated"),
            (
                "other-v8",
                Box::new(|b: Vec<u8>| {
                    // The same snapshot, sealed as if another V8 had made it.
                    let payload = envelope::open(&Bytes::from(b), "other-v8").unwrap();
                    envelope::seal_for("12.0.1.0", "other-v8", &payload)
                }),
                "made by V8",
            ),
        ];
        for (heap, damage, expected) in damages {
            output(&rt, "var keep = 1", heap).await;
            let bad = tamper(&store, heap, damage);
            let error = rt
                .run_on_heap("keep".into(), Some(heap.into()), CallLimits::default())
                .await
                .result
                .unwrap_err();
            assert!(
                matches!(error, CallError::Envelope { .. }),
                "{heap}: {error}"
            );
            assert!(error.to_string().contains(expected), "{heap}: {error}");
            // The damaged bytes are not overwritten: nothing is lost that could be recovered.
            assert_eq!(store.get_now(heap).unwrap().bytes, bad, "{heap}");
            // The runtime keeps working, on other heaps and once the heap is deleted.
            assert_eq!(output(&rt, "2 + 2", "healthy").await, "4");
            rt.delete(heap).await.unwrap();
            assert_eq!(output(&rt, "typeof keep", heap).await, "undefined");
        }
    }

    #[tokio::test]
    async fn a_concurrent_writer_turns_into_a_conflict_and_nothing_is_lost() {
        let (rt, store) = runtime();
        output(&rt, "var n = 1", "h").await;
        // Another host saves the heap between this host's load and save: simulate it with a
        // store whose version moves under us.
        let moved = store.get_now("h").unwrap().bytes;
        let racing = RacingStore {
            inner: store.clone(),
            sneak_in: moved,
        };
        let rt2 = Runtime::new(Arc::new(racing), Executor::InProcess, Limits::default());
        let error = rt2
            .run_on_heap("n = 100".into(), Some("h".into()), CallLimits::default())
            .await
            .result
            .unwrap_err();
        assert!(matches!(error, CallError::Conflict { .. }), "{error}");
        assert!(
            error.to_string().contains("changed concurrently"),
            "{error}"
        );
        assert_eq!(output(&rt, "n", "h").await, "1");
    }

    /// A store in which someone else writes the heap right after every read.
    struct RacingStore {
        inner: MemoryStore,
        sneak_in: Bytes,
    }

    #[async_trait::async_trait]
    impl HeapStorage for RacingStore {
        fn info(&self) -> crate::storage::BackendInfo {
            self.inner.info()
        }
        async fn get(&self, name: &str) -> Result<crate::storage::Stored, StoreError> {
            let got = self.inner.get(name).await;
            self.inner
                .put_now(name, self.sneak_in.clone(), Precondition::Any)?;
            got
        }
        async fn put(
            &self,
            name: &str,
            bytes: Bytes,
            p: Precondition,
        ) -> Result<crate::storage::Version, StoreError> {
            self.inner.put(name, bytes, p).await
        }
        async fn delete(&self, name: &str) -> Result<(), StoreError> {
            self.inner.delete(name).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<HeapMeta>, StoreError> {
            self.inner.list(prefix).await
        }
    }

    #[tokio::test]
    async fn storage_failures_are_reported_with_their_kind() {
        struct Down;
        #[async_trait::async_trait]
        impl HeapStorage for Down {
            fn info(&self) -> crate::storage::BackendInfo {
                crate::storage::BackendInfo::new("down", "0")
            }
            async fn get(&self, _: &str) -> Result<crate::storage::Stored, StoreError> {
                Err(StoreError::unavailable("connection refused"))
            }
            async fn put(
                &self,
                _: &str,
                _: Bytes,
                _: Precondition,
            ) -> Result<crate::storage::Version, StoreError> {
                Err(StoreError::unavailable("connection refused"))
            }
            async fn delete(&self, _: &str) -> Result<(), StoreError> {
                Err(StoreError::unavailable("connection refused"))
            }
            async fn list(&self, _: &str) -> Result<Vec<HeapMeta>, StoreError> {
                Err(StoreError::unavailable("connection refused"))
            }
        }
        let rt = Runtime::new(Arc::new(Down), Executor::InProcess, Limits::default());
        let error = rt
            .run_on_heap("1".into(), Some("h".into()), CallLimits::default())
            .await
            .result
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "storage error (unavailable) for heap 'h': connection refused"
        );
        // Stateless runs do not need the store.
        assert_eq!(
            rt.run_stateless("1 + 1".into(), CallLimits::default())
                .await
                .result
                .unwrap()
                .output,
            "2"
        );
    }
}
