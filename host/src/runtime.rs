//! What the MCP tools do, independent of MCP: run code on a heap (load, verify, execute,
//! snapshot, conditionally store), run code statelessly, list and delete heaps.
//!
//! A heap's state is stored after its call has been answered ([`SaveMode::Background`]):
//! the heap stays locked until the save is in, so the next call on it, `list_heaps` and
//! `delete_heap` see it (read your writes); a save that fails is reported by the heap's next
//! call. The runtime checks the stored version before using a warm isolate, so a heap changed
//! by another process is never served stale.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mcp_v8_plugin_api::validate_heap_name;
use tokio::sync::{OwnedMutexGuard, RwLock};

use crate::engine::{Completion, Limits, Run, RunError};
use crate::envelope::{self, Codec, EnvelopeError, ReadOnly};
use crate::executor::Executor;
use crate::job::{Job, NotWarm, Saving, Start, Target, WarmRef};
use crate::metrics::{self, CallMetrics, Metered, StorageStats, StoreMetrics};
use crate::storage::{
    ErrorKind, HeapLocks, HeapMeta, HeapStorage, Precondition, StoreError, Version,
};

/// When a stateful call's new state is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SaveMode {
    /// After the answer: the caller waits for its code, not for V8's snapshot or the store.
    Background,
    /// Before the answer: every answer is durable first, and a call that loses a race with
    /// another writer runs again on the newer state.
    Sync,
}

impl SaveMode {
    /// The default for a store called `store`: stores one host owns (memory, a directory)
    /// save in the background; any other (S3, a third-party plugin) may be shared by several
    /// hosts, which want every answer durable and races retried, so they save in sync.
    pub fn default_for(store: &str) -> Self {
        match store {
            "memory" | "file" => SaveMode::Background,
            _ => SaveMode::Sync,
        }
    }
}

/// How the runtime stores and retries.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// When states are stored.
    pub save: SaveMode,
    /// How often a call whose store lost a race runs again (sync saves only).
    pub conflict_retries: u32,
    /// How snapshots are stored.
    pub compression: Codec,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            save: SaveMode::Background,
            conflict_retries: 3,
            compression: Codec::Zstd,
        }
    }
}

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
    /// Someone else saved the heap while this call ran on the old state, every time it ran.
    #[error("heap '{heap}' was changed concurrently while this code ran ({attempts} attempts), so its result was not saved; retry the call")]
    Conflict { heap: String, attempts: u32 },
    /// The previous call's state, already answered, could not be stored.
    #[error("the previous call on heap '{heap}' succeeded, but its changes could not be saved: {reason}. Those changes are lost and the heap goes on from its last saved state; this call's code did not run, so run it again")]
    Lost { heap: String, reason: String },
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

impl CallError {
    /// A short label for the kind of failure, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::InvalidName(_) => "invalid_name",
            CallError::InvalidLimit(_) => "invalid_limit",
            CallError::Run(RunError::Exception(_)) => "exception",
            CallError::Run(RunError::Timeout(_)) => "timeout",
            CallError::Run(RunError::HeapLimit(_)) => "heap_limit",
            CallError::Run(RunError::Unsettled) => "unsettled",
            CallError::Run(RunError::Snapshot(_) | RunError::Unsaveable(_)) => "unsaveable",
            CallError::Run(RunError::Unrestorable(_)) | CallError::Unrestorable { .. } => {
                "unrestorable"
            }
            CallError::Run(RunError::Unavailable(_)) => "engine_unavailable",
            CallError::Run(RunError::Crashed(_)) => "crashed",
            CallError::Envelope { .. } => "corrupt_heap",
            CallError::Conflict { .. } => "conflict",
            CallError::Lost { .. } => "lost",
            CallError::Storage { .. } | CallError::Listing(_) => "storage",
            CallError::Internal(_) => "internal",
        }
    }

    /// Wraps a store's error about `heap`.
    fn storage(heap: &str) -> impl FnOnce(StoreError) -> CallError + '_ {
        move |error| CallError::Storage {
            heap: heap.into(),
            error,
        }
    }
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
    /// How often the code ran again because another writer stored the heap first.
    pub retries: u32,
    /// What the caller should know about the heap's past, e.g. that the store evicted it and
    /// it started empty.
    pub notice: Option<String>,
}

/// One heap as listed: what the store says, and its snapshot's size before compression when
/// that is known without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The store's metadata.
    pub meta: HeapMeta,
    /// The snapshot's size before compression.
    pub raw_size: Option<u64>,
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
    executor: Arc<Executor>,
    locks: HeapLocks,
    limits: Limits,
    policy: Policy,
    heaps: Arc<Heaps>,
    /// Every save after an answer holds it shared; whoever must see all answered states
    /// (listing, shutting down) takes it exclusively.
    saves: Arc<RwLock<()>>,
    store_metrics: Arc<StoreMetrics>,
    call_metrics: CallMetrics,
}

/// What the runtime knows about heaps beyond the store, shared with background saves.
struct Heaps {
    storage: Arc<dyn HeapStorage>,
    /// Told when a warm isolate no longer stands for its heap.
    executor: Arc<Executor>,
    /// How snapshots are stored.
    codec: Codec,
    /// Heaps a worker holds warm, and the stored version that state is.
    warm: Mutex<HashMap<String, (WarmRef, Version)>>,
    /// Heaps whose last answered state could not be stored, and why.
    lost: Mutex<HashMap<String, String>>,
    /// Snapshot sizes before compression, by heap and stored version, as this runtime sealed
    /// or opened them.
    raw_sizes: Mutex<HashMap<String, (Version, u64)>>,
}

/// How a stored heap starts a run, and what its next store must know.
struct Loaded {
    start: Start,
    precondition: Precondition,
    read_only: ReadOnly,
    /// Why a heap the caller may expect starts empty.
    notice: Option<String>,
}

impl Runtime {
    /// A runtime storing heaps in `storage` and running code with `executor` under `limits`,
    /// saving in the background.
    pub fn new(storage: Arc<dyn HeapStorage>, executor: Executor, limits: Limits) -> Self {
        Self::with_policy(storage, executor, limits, Policy::default())
    }

    /// A runtime that stores as `policy` says.
    pub fn with_policy(
        storage: Arc<dyn HeapStorage>,
        executor: Executor,
        limits: Limits,
        policy: Policy,
    ) -> Self {
        let executor = Arc::new(executor);
        let locks = HeapLocks::default();
        // A store that drops heaps on its own must know which ones are in use.
        storage.use_locks(&locks);
        let store_metrics = Arc::new(StoreMetrics::default());
        let storage = Arc::new(Metered::new(storage, Arc::clone(&store_metrics)));
        Self {
            executor: Arc::clone(&executor),
            locks,
            limits,
            policy,
            heaps: Arc::new(Heaps {
                storage,
                executor,
                codec: policy.compression,
                warm: Mutex::default(),
                lost: Mutex::default(),
                raw_sizes: Mutex::default(),
            }),
            saves: Arc::new(RwLock::new(())),
            store_metrics,
            call_metrics: CallMetrics::default(),
        }
    }

    /// Gets the executor ready for the first call.
    pub fn prewarm(&self) {
        self.executor.prewarm();
    }

    /// The store behind this runtime.
    pub fn storage(&self) -> &Arc<dyn HeapStorage> {
        &self.heaps.storage
    }

    /// The server's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// How this runtime stores.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// What the store holds and how it has been doing, as `storage_stats` reports it.
    pub fn storage_stats(&self) -> StorageStats {
        let storage = &self.heaps.storage;
        self.store_metrics
            .stats(&storage.info().name, storage.usage())
    }

    /// Everything counted, as Prometheus text.
    pub fn metrics_text(&self) -> String {
        metrics::render(
            &self.storage_stats(),
            &self.store_metrics,
            &self.call_metrics,
        )
    }

    /// Counts a `run_js` call that took from `started` to now.
    fn count<T>(&self, started: Instant, reply: &Reply<T>) {
        let outcome = match &reply.result {
            Ok(_) => metrics::Outcome::Ok,
            Err(e) => metrics::Outcome::Failed(e.kind()),
        };
        self.call_metrics.record(started.elapsed(), outcome);
    }

    /// Waits, at most `grace`, for every answered state to be stored. Returns whether all were.
    pub async fn flush(&self, grace: Duration) -> bool {
        match tokio::time::timeout(grace, self.saves.write()).await {
            Ok(_) => true,
            Err(_) => {
                tracing::error!(
                    "stopping with heap saves still in progress after {} s: their calls' changes are lost",
                    grace.as_secs_f64()
                );
                false
            }
        }
    }

    /// Waits for the saves of every call answered so far.
    async fn settled(&self) {
        drop(self.saves.write().await);
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
        let started = Instant::now();
        let reply = self.stateless(code, call).await;
        self.count(started, &reply);
        reply
    }

    async fn stateless(&self, code: String, call: CallLimits) -> Reply<Completion> {
        let limits = match self.limits_for(call) {
            Ok(limits) => limits,
            Err(e) => return Reply::failed(e),
        };
        let job = Job {
            code,
            target: Target::Stateless,
            limits,
        };
        match self.executor.run(job).await {
            Ok((outcome, _)) => outcome.map_result(|result| result.map_err(CallError::from)),
            Err(NotWarm) => Reply::failed(CallError::Internal(
                "a stateless job asked for a warm heap".into(),
            )),
        }
    }

    /// Runs `code` on heap `heap` (a new heap with a generated name when `None`) and stores
    /// the heap's new state, unless the code failed: after the answer, or before it with
    /// [`SaveMode::Sync`].
    pub async fn run_on_heap(
        &self,
        code: String,
        heap: Option<String>,
        call: CallLimits,
    ) -> Reply<HeapRun> {
        let started = Instant::now();
        let reply = self.on_heap(code, heap, call).await;
        self.count(started, &reply);
        reply
    }

    async fn on_heap(
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
        // Held until the state is stored, also when that happens after the answer.
        let guard = self.locks.lock(&heap).await;
        tracing::debug!("running code on heap {heap}");
        if let Some(reason) = self.heaps.take_lost(&heap) {
            return Reply::failed(CallError::Lost { heap, reason });
        }
        let mut retries = 0;
        loop {
            let loaded = match self.heaps.load(&heap).await {
                Ok(loaded) => loaded,
                Err(e) => return Reply::failed(e),
            };
            let job = Job {
                code: code.clone(),
                target: Target::Heap {
                    name: heap.clone(),
                    start: loaded.start,
                },
                limits,
            };
            let (outcome, saving) = match self.executor.run(job).await {
                Ok(ran) => ran,
                // Evicted, or its worker busy or gone: load it from the store.
                Err(NotWarm) => {
                    self.heaps.forget(&heap);
                    continue;
                }
            };
            let saving = match (outcome.result.is_ok(), saving) {
                (true, Some(saving)) => saving,
                (true, None) => {
                    return Reply::failed(CallError::Internal(
                        "a stateful run returned no heap".into(),
                    ))
                }
                (false, _) => {
                    return outcome.map_result(|result| match result {
                        Ok(_) => Err(CallError::Internal("unreachable".into())),
                        Err(RunError::Unrestorable(reason)) => {
                            Err(CallError::Unrestorable { heap, reason })
                        }
                        Err(e) => Err(e.into()),
                    })
                }
            };
            let notice = loaded.notice;
            let answer = |outcome: crate::job::Outcome, heap: String, retries| {
                outcome.map_result(|result| {
                    result
                        .map(|completion| HeapRun {
                            completion,
                            heap,
                            retries,
                            notice,
                        })
                        .map_err(CallError::from)
                })
            };
            match self.policy.save {
                SaveMode::Background => {
                    let gate = Arc::clone(&self.saves).read_owned().await;
                    let heaps = Arc::clone(&self.heaps);
                    let name = heap.clone();
                    tokio::spawn(async move {
                        let _gate = gate;
                        heaps
                            .store_after_answer(
                                &name,
                                saving,
                                loaded.precondition,
                                loaded.read_only,
                                guard,
                            )
                            .await;
                    });
                    return answer(outcome, heap, retries);
                }
                SaveMode::Sync => match self
                    .heaps
                    .store(&heap, saving, loaded.precondition, loaded.read_only)
                    .await
                {
                    Ok(()) => return answer(outcome, heap, retries),
                    Err(CallError::Conflict { .. }) if retries < self.policy.conflict_retries => {
                        retries += 1;
                        tracing::debug!(heap, retries, "heap changed concurrently: running again");
                        tokio::time::sleep(jitter(retries)).await;
                    }
                    Err(CallError::Conflict { heap, .. }) => {
                        let attempts = retries + 1;
                        return Run {
                            result: Err(CallError::Conflict { heap, attempts }),
                            console: outcome.console,
                        };
                    }
                    Err(e) => {
                        return Run {
                            result: Err(e),
                            console: outcome.console,
                        }
                    }
                },
            }
        }
    }

    /// All heaps, sorted by name, including every state answered so far.
    pub async fn list(&self) -> Result<Vec<Listed>, CallError> {
        self.settled().await;
        let mut heaps = self
            .heaps
            .storage
            .list("")
            .await
            .map_err(CallError::Listing)?;
        heaps.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(heaps.into_iter().map(|m| self.heaps.listed(m)).collect())
    }

    /// Up to `limit` heaps whose names sort after `after`, by name, and the cursor (the last
    /// name) to pass as `after` for the next page, if there is one.
    pub async fn list_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Listed>, Option<String>), CallError> {
        let limit = limit.max(1);
        let mut heaps = self.list().await?;
        if let Some(after) = after {
            heaps.retain(|h| h.meta.name.as_str() > after);
        }
        let next = (heaps.len() > limit).then(|| heaps[limit - 1].meta.name.clone());
        heaps.truncate(limit);
        Ok((heaps, next))
    }

    /// Metadata of one heap, or `None` when it does not exist.
    pub async fn describe(&self, heap: &str) -> Result<Option<Listed>, CallError> {
        validate_heap_name(heap).map_err(CallError::InvalidName)?;
        self.settled().await;
        let heaps = self
            .heaps
            .storage
            .list(heap)
            .await
            .map_err(CallError::storage(heap))?;
        Ok(heaps
            .into_iter()
            .find(|m| m.name == heap)
            .map(|m| self.heaps.listed(m)))
    }

    /// Deletes a heap, waiting for any call running on it.
    pub async fn delete(&self, heap: &str) -> Result<(), CallError> {
        validate_heap_name(heap).map_err(CallError::InvalidName)?;
        let _guard = self.locks.lock(heap).await;
        self.heaps.forget(heap);
        self.heaps.take_lost(heap);
        self.heaps
            .raw_sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(heap);
        self.heaps
            .storage
            .delete(heap)
            .await
            .map_err(CallError::storage(heap))
    }
}

impl Heaps {
    /// Where `heap`'s next run starts: its warm isolate if the store still holds the state it
    /// came from, otherwise the stored snapshot (verified here, before V8 sees a byte), or a
    /// new heap.
    async fn load(&self, heap: &str) -> Result<Loaded, CallError> {
        let warm = self.warm().get(heap).cloned();
        if let Some((warm, version)) = warm {
            // One cheap question to the store: has anyone else changed the heap since?
            let current = self
                .storage
                .version(heap)
                .await
                .map_err(CallError::storage(heap))?;
            if current.as_ref() == Some(&version) {
                return Ok(Loaded {
                    start: Start::Warm(warm),
                    precondition: Precondition::MustMatch(version),
                    read_only: ReadOnly::Shared,
                    notice: None,
                });
            }
            tracing::debug!(
                heap,
                "heap changed in the store: its warm isolate is dropped"
            );
            self.forget(heap);
        }
        match self.storage.get(heap).await {
            Ok(stored) => {
                // Checksums and decompression take milliseconds on big heaps: off the runtime.
                let name = heap.to_string();
                let opened = blocking(move || envelope::open(&stored.bytes, &name))
                    .await?
                    .map_err(|error| CallError::Envelope {
                        heap: heap.into(),
                        error,
                    })?;
                self.learn_raw_size(heap, &stored.version, opened.snapshot.len());
                let start = match opened.read_only {
                    ReadOnly::Shared => Start::Snapshot(opened.snapshot),
                    ReadOnly::Own => Start::Alone(opened.snapshot),
                };
                Ok(Loaded {
                    start,
                    precondition: Precondition::MustMatch(stored.version),
                    read_only: opened.read_only,
                    notice: None,
                })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Loaded {
                start: Start::New,
                precondition: Precondition::MustNotExist,
                read_only: ReadOnly::Shared,
                notice: self.storage.gone(heap).map(|gone| gone.explain(heap)),
            }),
            Err(error) => Err(CallError::storage(heap)(error)),
        }
    }

    /// Waits for the snapshot `saving` delivers and stores it if `precondition` holds.
    async fn store(
        &self,
        heap: &str,
        saving: Saving,
        precondition: Precondition,
        read_only: ReadOnly,
    ) -> Result<(), CallError> {
        // Until the store confirms, no warm isolate stands for this heap (the worker that ran
        // it holds the new state, which it is told about below or not at all).
        self.warm().remove(heap);
        let saved = saving.finish().await?;
        let (name, codec) = (heap.to_string(), self.codec);
        let raw_len = saved.snapshot.len();
        let sealed =
            blocking(move || envelope::seal(&saved.snapshot, &name, read_only, codec)).await?;
        match self.storage.put(heap, sealed.into(), precondition).await {
            Ok(version) => {
                self.learn_raw_size(heap, &version, raw_len);
                if let (Some(warm), ReadOnly::Shared) = (saved.warm, read_only) {
                    self.warm().insert(heap.to_string(), (warm, version));
                }
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::Conflict => Err(CallError::Conflict {
                heap: heap.into(),
                attempts: 1,
            }),
            Err(error) => Err(CallError::storage(heap)(error)),
        }
    }

    /// [`Heaps::store`] for a call already answered: a failure is logged and kept for the
    /// heap's next call. `lock` (the heap's) is released once it is done.
    async fn store_after_answer(
        &self,
        heap: &str,
        saving: Saving,
        precondition: Precondition,
        read_only: ReadOnly,
        lock: OwnedMutexGuard<()>,
    ) {
        if let Err(e) = self.store(heap, saving, precondition, read_only).await {
            let reason = match e {
                CallError::Conflict { .. } => {
                    "another client or server changed the heap while the code ran".to_string()
                }
                other => other.to_string(),
            };
            tracing::error!(
                heap,
                "the state of an answered call could not be saved: {reason}"
            );
            self.lost
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(heap.to_string(), reason);
        }
        drop(lock);
    }

    fn warm(&self) -> std::sync::MutexGuard<'_, HashMap<String, (WarmRef, Version)>> {
        self.warm.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// No warm isolate stands for `heap` any more: the worker holding one drops it with its
    /// next job.
    fn forget(&self, heap: &str) {
        let dropped = self.warm().remove(heap);
        if let Some((warm, _)) = dropped {
            self.executor.forget(warm, heap);
        }
    }

    fn learn_raw_size(&self, heap: &str, version: &Version, raw_len: usize) {
        self.raw_sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(heap.to_string(), (version.clone(), raw_len as u64));
    }

    /// `meta` with its raw size: from the store if it knows, else as this runtime last saw
    /// that version.
    fn listed(&self, meta: HeapMeta) -> Listed {
        let raw_size = self
            .storage
            .raw_size(&meta.name, &meta.version)
            .or_else(|| {
                let known = self
                    .raw_sizes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                known
                    .get(&meta.name)
                    .filter(|(version, _)| *version == meta.version)
                    .map(|(_, raw)| *raw)
            });
        Listed { meta, raw_size }
    }

    fn take_lost(&self, heap: &str) -> Option<String> {
        self.lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(heap)
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CallError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CallError::Internal(format!("a blocking task failed: {e}")))
}

/// A fresh heap name such as `heap-3f9c2a1b7d4e`.
fn generated_name() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("heap-{}", &id[..12])
}

/// A random pause before running again after a lost race, longer with each retry, so that
/// racing hosts fall out of step.
fn jitter(retry: u32) -> Duration {
    let random = (uuid::Uuid::new_v4().as_u128() % 1000) as u64;
    Duration::from_millis(u64::from(retry.min(8)) * (5 + random % 20))
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

    /// Runs `code` on `heap` and waits until its state is stored.
    async fn output(rt: &Runtime, code: &str, heap: &str) -> String {
        let output = rt
            .run_on_heap(code.into(), Some(heap.into()), CallLimits::default())
            .await
            .result
            .unwrap()
            .completion
            .output;
        assert!(rt.flush(Duration::from_secs(10)).await);
        output
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
                    envelope::seal_for("12.0.1.0", "other-v8", &payload.snapshot)
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
    async fn a_lost_race_runs_again_in_sync_mode_and_conflicts_only_when_it_always_loses() {
        let (rt, store) = runtime();
        output(&rt, "var n = 1", "h").await;
        // Another host saves the heap between this host's load and save, on every attempt.
        let moved = store.get_now("h").unwrap().bytes;
        let racing = ScriptedStore::racing(&store, moved);
        let policy = Policy {
            save: SaveMode::Sync,
            conflict_retries: 2,
            ..Policy::default()
        };
        let rt2 = Runtime::with_policy(
            Arc::new(racing),
            Executor::InProcess,
            Limits::default(),
            policy,
        );
        let error = rt2
            .run_on_heap("n = 100".into(), Some("h".into()), CallLimits::default())
            .await
            .result
            .unwrap_err();
        assert!(
            matches!(error, CallError::Conflict { attempts: 3, .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("changed concurrently"),
            "{error}"
        );
        assert_eq!(output(&rt, "n", "h").await, "1");
    }

    #[tokio::test]
    async fn a_background_save_that_fails_is_reported_by_the_next_call() {
        let (rt, store) = runtime();
        output(&rt, "var n = 1", "h").await;
        let racing = ScriptedStore::racing(&store, store.get_now("h").unwrap().bytes);
        let rt2 = Runtime::new(Arc::new(racing), Executor::InProcess, Limits::default());
        // Answered at once; its save then loses the race.
        let run = rt2
            .run_on_heap("n = 100".into(), Some("h".into()), CallLimits::default())
            .await;
        assert_eq!(run.result.unwrap().completion.output, "100");
        let error = rt2
            .run_on_heap("n".into(), Some("h".into()), CallLimits::default())
            .await
            .result
            .unwrap_err();
        assert!(matches!(error, CallError::Lost { .. }), "{error}");
        assert!(error.to_string().contains("could not be saved"), "{error}");
        // Reported once; the heap goes on from its stored state.
        assert_eq!(output(&rt, "n", "h").await, "1");
    }

    #[tokio::test]
    async fn a_call_after_an_answer_sees_its_state_and_list_waits_for_the_save() {
        let store = MemoryStore::new();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let held = ScriptedStore::held(&store, &gate);
        let rt = Runtime::new(Arc::new(held), Executor::InProcess, Limits::default());
        let answered = rt
            .run_on_heap(
                "var n = 1; n".into(),
                Some("h".into()),
                CallLimits::default(),
            )
            .await;
        assert_eq!(answered.result.unwrap().completion.output, "1");
        // Answered while the store has not taken the heap yet.
        assert!(store.get_now("h").is_err());
        gate.add_permits(100);
        // Listing waits for the save: the answered heap is there.
        let names: Vec<_> = rt
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.meta.name)
            .collect();
        assert_eq!(names, ["h"]);
        assert_eq!(output(&rt, "++n", "h").await, "2");
        assert!(rt.flush(Duration::from_secs(5)).await);
        assert!(store.get_now("h").is_ok());
    }

    /// A memory store with a script: someone else writes the heap right after every read
    /// (`sneak_in`), and puts wait for a permit of `put_gate`.
    struct ScriptedStore {
        inner: MemoryStore,
        sneak_in: Option<Bytes>,
        put_gate: Option<Arc<tokio::sync::Semaphore>>,
    }

    impl ScriptedStore {
        fn racing(inner: &MemoryStore, sneak_in: Bytes) -> Self {
            let (inner, sneak_in) = (inner.clone(), Some(sneak_in));
            Self {
                inner,
                sneak_in,
                put_gate: None,
            }
        }

        fn held(inner: &MemoryStore, gate: &Arc<tokio::sync::Semaphore>) -> Self {
            let (inner, put_gate) = (inner.clone(), Some(Arc::clone(gate)));
            Self {
                inner,
                sneak_in: None,
                put_gate,
            }
        }
    }

    #[async_trait::async_trait]
    impl HeapStorage for ScriptedStore {
        fn info(&self) -> crate::storage::BackendInfo {
            self.inner.info()
        }
        async fn get(&self, name: &str) -> Result<crate::storage::Stored, StoreError> {
            let got = self.inner.get(name).await;
            if let Some(bytes) = &self.sneak_in {
                self.inner.put_now(name, bytes.clone(), Precondition::Any)?;
            }
            got
        }
        async fn put(
            &self,
            name: &str,
            bytes: Bytes,
            p: Precondition,
        ) -> Result<crate::storage::Version, StoreError> {
            let _permit = match &self.put_gate {
                Some(gate) => gate.acquire().await.ok(),
                None => None,
            };
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
