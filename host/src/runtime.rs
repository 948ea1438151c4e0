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

use tokio::sync::{OwnedMutexGuard, RwLock};

use crate::engine::{Completion, Limits, Run, RunError};
use crate::envelope::{self, Codec, EnvelopeError, Position, ReadOnly};
use crate::executor::Executor;
use crate::job::{Job, LiveBatches, NotWarm, Saving, Start, Target, WarmRef};
use crate::metrics::{self, CallMetrics, StorageStats};
use crate::storage::{
    validate_caller_name, ErrorKind, HeapLocks, HeapMeta, Precondition, Sharing, Snapshot, Store,
    StoreError, Version,
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
    /// The default for a store shared as `sharing` declares: a store only this machine
    /// writes (memory, a directory) saves in the background; one that hosts elsewhere may
    /// write too (S3, and any store that does not say) wants every answer durable and races
    /// retried, so it saves in sync.
    pub fn default_for(sharing: Sharing) -> Self {
        match sharing {
            Sharing::Process | Sharing::Machine => SaveMode::Background,
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
    /// A fork or copy would replace a heap without `overwrite`.
    #[error("heap '{heap}' already exists; pass overwrite: true to replace it")]
    Exists { heap: String },
    /// A fork or copy names a source heap that does not exist.
    #[error("heap '{heap}' does not exist")]
    Missing { heap: String },
    /// A fork or copy names the same heap twice.
    #[error("the new heap must have another name than '{heap}'")]
    SameHeap { heap: String },
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
            CallError::Run(RunError::Diverged { .. }) => "diverged",
            CallError::Envelope { .. } => "corrupt_heap",
            CallError::Conflict { .. } => "conflict",
            CallError::Exists { .. } | CallError::Missing { .. } | CallError::SameHeap { .. } => {
                "invalid_fork"
            }
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
    /// For a fork: the heap whose state the code ran on (left unchanged).
    pub forked_from: Option<String>,
}

/// Where a stateful call's new state goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaveTo {
    /// Back to the heap it ran on.
    Same,
    /// To another heap (a fork): the heap it ran on stays as it was.
    Fork {
        /// The new heap.
        to: String,
        /// Replace `to` if it exists (otherwise that is an error).
        overwrite: bool,
    },
}

/// What `copy_heap` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// The heap copied.
    pub from: String,
    /// The new heap.
    pub to: String,
    /// Its stored size.
    pub size: u64,
    /// Its snapshot's size before compression.
    pub raw_size: u64,
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

/// Runs code on heaps kept in a [`Store`].
pub struct Runtime {
    executor: Arc<Executor>,
    locks: HeapLocks,
    limits: Limits,
    policy: Policy,
    heaps: Arc<Heaps>,
    /// Every save after an answer holds it shared; whoever must see all answered states
    /// (listing, shutting down) takes it exclusively.
    saves: Arc<RwLock<()>>,
    call_metrics: CallMetrics,
}

/// What the runtime knows about heaps beyond the store, shared with background saves.
struct Heaps {
    storage: Store,
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

/// A stored heap, verified: its snapshot, kind and stored version.
struct OpenedHeap {
    snapshot: bytes::Bytes,
    position: Position,
    read_only: ReadOnly,
    version: Version,
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
    pub fn new(storage: Store, executor: Executor, limits: Limits) -> Self {
        Self::with_policy(storage, executor, limits, Policy::default())
    }

    /// A runtime that stores as `policy` says.
    pub fn with_policy(storage: Store, executor: Executor, limits: Limits, policy: Policy) -> Self {
        let executor = Arc::new(executor);
        let locks = HeapLocks::default();
        // A store that drops heaps on its own must know which ones are in use.
        storage.use_locks(&locks);
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
            call_metrics: CallMetrics::default(),
        }
    }

    /// Gets the executor ready for the first call.
    pub fn prewarm(&self) {
        self.executor.prewarm();
    }

    /// The store behind this runtime.
    pub fn storage(&self) -> &Store {
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
        self.heaps.storage.stats()
    }

    /// Everything counted, as Prometheus text.
    pub fn metrics_text(&self) -> String {
        let storage = &self.heaps.storage;
        metrics::render(&storage.stats(), storage.metrics(), &self.call_metrics)
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

    /// Runs `code` without any heap; `live`, if given, hears its console and progress as
    /// they happen.
    pub async fn run_stateless(
        &self,
        code: String,
        call: CallLimits,
        live: Option<LiveBatches>,
    ) -> Reply<Completion> {
        let started = Instant::now();
        let reply = self.stateless(code, call, live).await;
        self.count(started, &reply);
        reply
    }

    async fn stateless(
        &self,
        code: String,
        call: CallLimits,
        live: Option<LiveBatches>,
    ) -> Reply<Completion> {
        let limits = match self.limits_for(call) {
            Ok(limits) => limits,
            Err(e) => return Reply::failed(e),
        };
        let job = Job {
            code,
            target: Target::Stateless,
            limits,
            live,
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
        self.run_saving_to(code, heap, SaveTo::Same, call, None)
            .await
    }

    /// [`Runtime::run_on_heap`], storing the new state where `save_to` says: with
    /// [`SaveTo::Fork`], the code runs on `heap`'s state (an empty heap for `None`) and the
    /// result becomes a new heap, `heap` unchanged. `live`, if given, hears the console and
    /// progress as they happen (again for a run that loses a race and runs again).
    pub async fn run_saving_to(
        &self,
        code: String,
        heap: Option<String>,
        save_to: SaveTo,
        call: CallLimits,
        live: Option<LiveBatches>,
    ) -> Reply<HeapRun> {
        let started = Instant::now();
        let reply = self.on_heap(code, heap, save_to, call, live).await;
        self.count(started, &reply);
        reply
    }

    async fn on_heap(
        &self,
        code: String,
        heap: Option<String>,
        save_to: SaveTo,
        call: CallLimits,
        live: Option<LiveBatches>,
    ) -> Reply<HeapRun> {
        // A fork without a source starts from an empty heap.
        let source = match heap {
            Some(name) => match validate_caller_name(&name) {
                Ok(()) => Some(name),
                Err(e) => return Reply::failed(CallError::InvalidName(e)),
            },
            None => None,
        };
        let (heap, fork) = match &save_to {
            SaveTo::Same => (source.clone().unwrap_or_else(generated_name), None),
            SaveTo::Fork { to, overwrite } => {
                if let Err(e) = validate_caller_name(to) {
                    return Reply::failed(CallError::InvalidName(e));
                }
                if source.as_ref() == Some(to) {
                    return Reply::failed(CallError::SameHeap { heap: to.clone() });
                }
                (to.clone(), Some((source.clone(), *overwrite)))
            }
        };
        let limits = match self.limits_for(call) {
            Ok(limits) => limits,
            Err(e) => return Reply::failed(e),
        };
        // Held until the state is stored, also when that happens after the answer; a fork
        // also holds its source until the code has run, taking the two in name order.
        let (guard, mut source_guard) = match &fork {
            Some((Some(from), _)) if from.as_str() < heap.as_str() => {
                let first = self.locks.lock(from).await;
                (self.locks.lock(&heap).await, Some(first))
            }
            Some((Some(from), _)) => {
                let first = self.locks.lock(&heap).await;
                (first, Some(self.locks.lock(from).await))
            }
            _ => (self.locks.lock(&heap).await, None),
        };
        tracing::debug!("running code on heap {heap}");
        if fork.is_none() {
            if let Some(reason) = self.heaps.take_lost(&heap) {
                return Reply::failed(CallError::Lost { heap, reason });
            }
        }
        let mut retries = 0;
        loop {
            let loaded = match &fork {
                None => self.heaps.load(&heap).await,
                Some((from, overwrite)) => {
                    self.heaps
                        .load_fork(from.as_deref(), &heap, *overwrite)
                        .await
                }
            };
            let loaded = match loaded {
                Ok(loaded) => loaded,
                Err(e) => return Reply::failed(e),
            };
            let job = Job {
                code: code.clone(),
                target: Target::Heap {
                    name: heap.clone(),
                    start: loaded.start,
                    replay: Vec::new(),
                },
                limits,
                live: live.clone(),
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
            // The source of a fork is not written: others may use it again.
            drop(source_guard.take());
            let notice = loaded.notice;
            let forked_from = fork.as_ref().and_then(|(from, _)| from.clone());
            let answer = |outcome: crate::job::Outcome, heap: String, retries| {
                outcome.map_result(|result| {
                    result
                        .map(|completion| HeapRun {
                            completion,
                            heap,
                            retries,
                            notice,
                            forked_from,
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
                    // Made meanwhile by another writer: running again would not help.
                    Err(CallError::Conflict { heap, .. }) if fork.is_some() => {
                        return Run {
                            result: Err(CallError::Exists { heap }),
                            console: outcome.console,
                        };
                    }
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

    /// Up to `limit` heap names that start with `prefix`, sorted, and how many there are in
    /// all. A prefix no heap name can start with matches nothing.
    pub async fn names_starting_with(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<(Vec<String>, usize), CallError> {
        if !prefix.is_empty() && validate_caller_name(prefix).is_err() {
            return Ok((Vec::new(), 0));
        }
        self.settled().await;
        let heaps = self
            .heaps
            .storage
            .list(prefix)
            .await
            .map_err(CallError::Listing)?;
        // The store lists by prefix (and checks a plugin's listing against it).
        let mut names: Vec<String> = heaps.into_iter().map(|m| m.name).collect();
        names.sort();
        let total = names.len();
        names.truncate(limit);
        Ok((names, total))
    }

    /// Metadata of one heap, or `None` when it does not exist.
    pub async fn describe(&self, heap: &str) -> Result<Option<Listed>, CallError> {
        validate_caller_name(heap).map_err(CallError::InvalidName)?;
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

    /// Copies heap `from` to a new heap `to` (replacing it with `overwrite`), waiting for any
    /// call running on either: a named checkpoint.
    pub async fn copy(&self, from: &str, to: &str, overwrite: bool) -> Result<Copied, CallError> {
        validate_caller_name(from).map_err(CallError::InvalidName)?;
        validate_caller_name(to).map_err(CallError::InvalidName)?;
        if from == to {
            return Err(CallError::SameHeap { heap: to.into() });
        }
        let (first, second) = if from < to { (from, to) } else { (to, from) };
        let _first = self.locks.lock(first).await;
        let _second = self.locks.lock(second).await;
        self.heaps.copy(from, to, overwrite).await
    }

    /// Deletes a heap, waiting for any call running on it.
    pub async fn delete(&self, heap: &str) -> Result<(), CallError> {
        validate_caller_name(heap).map_err(CallError::InvalidName)?;
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
                let opened = self.open(heap, stored).await?;
                let start = match opened.read_only {
                    ReadOnly::Shared => Start::Snapshot(opened.snapshot),
                    ReadOnly::Own => Start::Alone(opened.snapshot),
                };
                Ok(Loaded {
                    start,
                    precondition: Precondition::MustMatch(opened.version),
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

    /// Verifies a stored heap and takes out its snapshot (checksums and decompression take
    /// milliseconds on big heaps: off the async threads).
    async fn open(&self, heap: &str, stored: Snapshot) -> Result<OpenedHeap, CallError> {
        // A copy sharing another heap's bytes carries that heap's name, as the store knows.
        let name = self
            .storage
            .sealed_for(heap)
            .unwrap_or_else(|| heap.to_string());
        let bytes = stored.bytes;
        let opened = blocking(move || envelope::open(&bytes, &name))
            .await?
            .map_err(|error| CallError::Envelope {
                heap: heap.into(),
                error,
            })?;
        self.learn_raw_size(heap, &stored.version, opened.snapshot.len() as u64);
        Ok(OpenedHeap {
            snapshot: opened.snapshot,
            position: opened.position,
            read_only: opened.read_only,
            version: stored.version,
        })
    }

    /// Where a fork into `to` starts: `from`'s stored state (an empty heap for `None`),
    /// never a warm isolate, which stands for `from` and stays so.
    async fn load_fork(
        &self,
        from: Option<&str>,
        to: &str,
        overwrite: bool,
    ) -> Result<Loaded, CallError> {
        self.check_free(to, overwrite).await?;
        // A heap being replaced is not kept warm either.
        self.forget(to);
        let (start, read_only) = match from {
            None => (Start::New, ReadOnly::Shared),
            Some(from) => {
                let opened = self.read_existing(from).await?;
                let start = match opened.read_only {
                    ReadOnly::Shared => Start::Snapshot(opened.snapshot),
                    ReadOnly::Own => Start::Alone(opened.snapshot),
                };
                (start, opened.read_only)
            }
        };
        Ok(Loaded {
            start,
            precondition: replacing(overwrite),
            read_only,
            notice: None,
        })
    }

    /// Refuses to write over an existing `heap` unless `overwrite`.
    async fn check_free(&self, heap: &str, overwrite: bool) -> Result<(), CallError> {
        if overwrite {
            return Ok(());
        }
        match self.storage.version(heap).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err(CallError::Exists { heap: heap.into() }),
            Err(e) => Err(CallError::storage(heap)(e)),
        }
    }

    /// A heap that must exist, verified.
    async fn read_existing(&self, heap: &str) -> Result<OpenedHeap, CallError> {
        match self.storage.get(heap).await {
            Ok(stored) => self.open(heap, stored).await,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err(CallError::Missing { heap: heap.into() })
            }
            Err(e) => Err(CallError::storage(heap)(e)),
        }
    }

    /// Copies `from` to `to`: inside the store, sharing the bytes, where it can (the memory
    /// store); otherwise the snapshot is verified and sealed again for its new name (each
    /// heap's bytes are bound to its name).
    async fn copy(&self, from: &str, to: &str, overwrite: bool) -> Result<Copied, CallError> {
        let precondition = replacing(overwrite);
        let copied = match self.storage.copy(from, to, precondition.clone()) {
            Some(Ok((version, size))) => {
                let raw_size = self.storage.raw_size(to, &version).unwrap_or(size);
                Ok((version, size, raw_size))
            }
            Some(Err(e)) if e.kind() == ErrorKind::NotFound => {
                return Err(CallError::Missing { heap: from.into() })
            }
            Some(Err(e)) => Err(e),
            None => {
                // Not worth decompressing and compressing again for a copy that cannot land.
                self.check_free(to, overwrite).await?;
                let opened = self.read_existing(from).await?;
                let (name, codec, read_only) = (to.to_string(), self.codec, opened.read_only);
                let raw_size = opened.snapshot.len() as u64;
                let position = opened.position;
                let sealed = blocking(move || {
                    envelope::seal(&opened.snapshot, &name, read_only, codec, position)
                })
                .await?;
                let size = sealed.len() as u64;
                let version = self.storage.put(to, sealed.into(), precondition).await;
                version.map(|version| (version, size, raw_size))
            }
        };
        let (version, size, raw_size) = match copied {
            Ok(copied) => copied,
            Err(e) if e.kind() == ErrorKind::Conflict => {
                return Err(CallError::Exists { heap: to.into() })
            }
            Err(e) => return Err(CallError::storage(to)(e)),
        };
        // `to` holds other state now: no warm isolate or lost save stands for it.
        self.forget(to);
        self.take_lost(to);
        self.learn_raw_size(to, &version, raw_size);
        Ok(Copied {
            from: from.into(),
            to: to.into(),
            size,
            raw_size,
        })
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
        let sealed = blocking(move || {
            envelope::seal(
                &saved.snapshot,
                &name,
                read_only,
                codec,
                Position::default(),
            )
        })
        .await?;
        match self.storage.put(heap, sealed.into(), precondition).await {
            Ok(version) => {
                self.learn_raw_size(heap, &version, raw_len as u64);
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

    /// Remembers a raw size the store cannot tell (only plugin stores: the memory store knows
    /// every one, and heaps it drops would linger here).
    fn learn_raw_size(&self, heap: &str, version: &Version, raw_len: u64) {
        if self.storage.knows_raw_sizes() {
            return;
        }
        self.raw_sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(heap.to_string(), (version.clone(), raw_len));
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

/// The precondition of a write that creates a heap, or replaces it with `overwrite`.
fn replacing(overwrite: bool) -> Precondition {
    if overwrite {
        Precondition::Any
    } else {
        Precondition::MustNotExist
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
pub fn generated_name() -> String {
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
    use crate::storage::{HeapStore, MemoryStore, Snapshot};
    use bytes::Bytes;

    fn runtime() -> (Runtime, MemoryStore) {
        let store = MemoryStore::new();
        (
            Runtime::new(
                Store::memory(store.clone()),
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
        let stored = store.get(heap).unwrap();
        let bad = Bytes::from(f(stored.bytes.to_vec()));
        store.put(heap, bad.clone(), Precondition::Any).unwrap();
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
            assert_eq!(store.get(heap).unwrap().bytes, bad, "{heap}");
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
        let moved = store.get("h").unwrap().bytes;
        let racing = ScriptedStore::racing(&store, moved);
        let policy = Policy {
            save: SaveMode::Sync,
            conflict_retries: 2,
            ..Policy::default()
        };
        let rt2 = Runtime::with_policy(racing, Executor::InProcess, Limits::default(), policy);
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
        let racing = ScriptedStore::racing(&store, store.get("h").unwrap().bytes);
        let rt2 = Runtime::new(racing, Executor::InProcess, Limits::default());
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
        let gate = Arc::new(Gate::default());
        let held = ScriptedStore::held(&store, &gate);
        let rt = Runtime::new(held, Executor::InProcess, Limits::default());
        let answered = rt
            .run_on_heap(
                "var n = 1; n".into(),
                Some("h".into()),
                CallLimits::default(),
            )
            .await;
        assert_eq!(answered.result.unwrap().completion.output, "1");
        // Answered while the store has not taken the heap yet.
        assert!(store.get("h").is_err());
        gate.open();
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
        assert!(store.get("h").is_ok());
    }

    /// A memory store with a script: someone else writes the heap right after every read
    /// (`sneak_in`), and puts wait until `put_gate` opens.
    struct ScriptedStore {
        inner: MemoryStore,
        sneak_in: Option<Bytes>,
        put_gate: Option<Arc<Gate>>,
    }

    /// A gate puts wait at until it opens.
    #[derive(Default)]
    struct Gate {
        open: std::sync::Mutex<bool>,
        opened: std::sync::Condvar,
    }

    impl Gate {
        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }

        fn pass(&self) {
            let open = self.open.lock().unwrap();
            drop(self.opened.wait_while(open, |open| !*open).unwrap());
        }
    }

    impl ScriptedStore {
        fn racing(inner: &MemoryStore, sneak_in: Bytes) -> Store {
            let (inner, sneak_in) = (inner.clone(), Some(sneak_in));
            let store = Self {
                inner,
                sneak_in,
                put_gate: None,
            };
            Store::blocking(Arc::new(store), Duration::from_secs(30))
        }

        fn held(inner: &MemoryStore, gate: &Arc<Gate>) -> Store {
            let (inner, put_gate) = (inner.clone(), Some(Arc::clone(gate)));
            let store = Self {
                inner,
                sneak_in: None,
                put_gate,
            };
            Store::blocking(Arc::new(store), Duration::from_secs(30))
        }
    }

    impl HeapStore for ScriptedStore {
        fn info(&self) -> crate::storage::BackendInfo {
            self.inner.info()
        }
        fn get(&self, name: &str) -> Result<Snapshot, StoreError> {
            let got = self.inner.get(name);
            if let Some(bytes) = &self.sneak_in {
                self.inner.put(name, bytes.clone(), Precondition::Any)?;
            }
            got
        }
        fn put(&self, name: &str, bytes: Bytes, p: Precondition) -> Result<Version, StoreError> {
            if let Some(gate) = &self.put_gate {
                gate.pass();
            }
            self.inner.put(name, bytes, p)
        }
        fn delete(&self, name: &str) -> Result<(), StoreError> {
            self.inner.delete(name)
        }
        fn list(&self, prefix: &str) -> Result<Vec<HeapMeta>, StoreError> {
            self.inner.list(prefix)
        }
    }

    #[tokio::test]
    async fn a_journal_s_reserved_names_are_no_heap_names() {
        let (rt, _store) = runtime();
        let reserved = mcp_v8_plugin_api::journal::entry_name("h", 1);
        let error = rt
            .run_on_heap("1".into(), Some(reserved.clone()), CallLimits::default())
            .await
            .result
            .unwrap_err();
        assert!(matches!(error, CallError::InvalidName(_)), "{error}");
        assert!(
            error.to_string().contains("reserved for journals"),
            "{error}"
        );
        assert!(matches!(
            rt.delete(&reserved).await,
            Err(CallError::InvalidName(_))
        ));
    }

    #[tokio::test]
    async fn storage_failures_are_reported_with_their_kind() {
        struct Down;
        impl HeapStore for Down {
            fn info(&self) -> crate::storage::BackendInfo {
                crate::storage::BackendInfo::new("down", "0")
            }
            fn get(&self, _: &str) -> Result<Snapshot, StoreError> {
                Err(StoreError::unavailable("connection refused"))
            }
            fn put(&self, _: &str, _: Bytes, _: Precondition) -> Result<Version, StoreError> {
                Err(StoreError::unavailable("connection refused"))
            }
            fn delete(&self, _: &str) -> Result<(), StoreError> {
                Err(StoreError::unavailable("connection refused"))
            }
            fn list(&self, _: &str) -> Result<Vec<HeapMeta>, StoreError> {
                Err(StoreError::unavailable("connection refused"))
            }
        }
        let down = Store::blocking(Arc::new(Down), Duration::from_secs(30));
        let rt = Runtime::new(down, Executor::InProcess, Limits::default());
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
            rt.run_stateless("1 + 1".into(), CallLimits::default(), None)
                .await
                .result
                .unwrap()
                .output,
            "2"
        );
    }
}
