//! What the MCP tools do, independent of MCP: run code on a heap (load, replay, execute,
//! commit, checkpoint), run code statelessly, list, copy, delete heaps and show their history.
//!
//! A heap is its stored snapshot plus the journal of calls committed after it
//! ([`crate::record`]). A call on a heap is a sequence of named steps: `Heaps::load` (a warm
//! isolate caught up with the records others wrote, or the stored snapshot and the records
//! after it), the run (an [`Executor`] job), the commit (append the call's record under the
//! next number, which only one writer can take — the call is answered once the store has
//! it), and, now and then, a checkpoint (a snapshot stored, covering the records before it).
//! Between checkpoints the new state stays live in the worker that ran it
//! ([`SaveMode::Background`], [`Checkpoints`]); a checkpoint in progress holds the heap's
//! lock, so the next call on it waits for it. The layer that owns the store, the envelope and
//! the journal is `heaps`; this module holds the calls' policy: limits, forks, retries after
//! a lost race, recovery from a record that does not replay.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::RwLock;

mod heaps;

use crate::engine::{Completion, JsException, Limits, Outcome, RunError, BYTES_PER_TOKEN};
use crate::envelope::{Codec, EnvelopeError};
use crate::executor::Executor;
use crate::job::{Job, Keep, LiveBatches, NotWarm, Target};
use crate::metrics::{self, CallMetrics, StorageStats};
use crate::storage::{validate_caller_name, HeapLocks, HeapMeta, Store, StoreError};
use heaps::{checkpoint_idle_heaps, Call, Commit, Heaps};

/// When a heap's snapshot is stored. Either way a call is answered only once its journal
/// record is stored: the answer is durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SaveMode {
    /// Now and then ([`Checkpoints`]), after an answer or while the heap is idle: between
    /// checkpoints a warm heap's isolate stays live and moves on call by call.
    #[default]
    Background,
    /// After every call, before its answer: a later load has no record to run again.
    Sync,
}

/// When a warm heap's live state is checkpointed (snapshotted and stored, which lets the
/// records before it go), with [`SaveMode::Background`]: when replaying the calls since the
/// last checkpoint would cost more than one of these bounds, and when the heap is idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoints {
    /// Calls since the last checkpoint.
    pub calls: u32,
    /// Bytes of code of those calls.
    pub bytes: u64,
    /// Time those calls took to run (about what replaying them takes).
    pub run_time: Duration,
    /// Time since the heap's last call.
    pub idle: Duration,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Self {
            calls: 100,
            bytes: 8 << 20,
            run_time: Duration::from_secs(1),
            idle: Duration::from_secs(30),
        }
    }
}

/// How the runtime stores and retries.
#[derive(Debug, Clone, Copy)]
pub struct StoragePolicy {
    /// When states are stored.
    pub save: SaveMode,
    /// How often a call that lost a race with another writer runs again.
    pub conflict_retries: u32,
    /// How snapshots are stored.
    pub compression: Codec,
    /// When live states are checkpointed.
    pub checkpoints: Checkpoints,
}

impl Default for StoragePolicy {
    fn default() -> Self {
        Self {
            save: SaveMode::Background,
            conflict_retries: 3,
            compression: Codec::Zstd,
            checkpoints: Checkpoints::default(),
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
    Envelope {
        /// The heap's name.
        heap: String,
        /// What went wrong.
        error: EnvelopeError,
    },
    /// The stored heap passed verification, but V8 failed to restore it.
    #[error("heap '{heap}' cannot be loaded: V8 could not restore its snapshot ({reason}); the code did not run (delete_heap removes the heap so the name can start over)")]
    Unrestorable {
        /// The heap's name.
        heap: String,
        /// V8's reason.
        reason: String,
    },
    /// Someone else saved the heap while this call ran on the old state, every time it ran.
    #[error("heap '{heap}' was changed concurrently while this code ran ({attempts} attempts), so its result was not saved; retry the call")]
    Conflict {
        /// The heap's name.
        heap: String,
        /// How many times the code ran.
        attempts: u32,
    },
    /// A record of the heap's journal cannot be used.
    #[error("heap '{heap}' cannot be loaded: record {seq} of its journal is damaged ({error}); delete_heap removes the heap so the name can start over")]
    Journal {
        /// The heap's name.
        heap: String,
        /// The record's number.
        seq: u64,
        /// What went wrong.
        error: String,
    },
    /// The heap was deleted, or deleted and made again, by another client while the code ran.
    #[error("heap '{heap}' was deleted or replaced by another client while this code ran, so its result was not kept")]
    Replaced {
        /// The heap's name.
        heap: String,
    },
    /// A fork or copy would replace a heap without `overwrite`.
    #[error("heap '{heap}' already exists; pass overwrite: true to replace it")]
    Exists {
        /// The heap's name.
        heap: String,
    },
    /// A fork or copy names a source heap that does not exist.
    #[error("heap '{heap}' does not exist")]
    Missing {
        /// The heap's name.
        heap: String,
    },
    /// A copy names a record the heap's journal does not hold after its snapshot.
    #[error("heap '{heap}' cannot be copied at record {record}: its journal holds records {first} to {last} after its snapshot (heap_history lists them)")]
    NoSuchRecord {
        /// The heap's name.
        heap: String,
        /// The record asked for.
        record: u64,
        /// The first record after the snapshot.
        first: u64,
        /// The last record.
        last: u64,
    },
    /// A fork or copy names the same heap twice.
    #[error("the new heap must have another name than '{heap}'")]
    SameHeap {
        /// The heap's name.
        heap: String,
    },
    /// The heap store failed.
    #[error("storage error ({kind}) for heap '{heap}': {error}", kind = error.kind())]
    Storage {
        /// The heap's name.
        heap: String,
        /// What went wrong.
        error: StoreError,
    },
    /// The heap store failed to list heaps.
    #[error("storage error ({kind}) while listing heaps: {0}", kind = .0.kind())]
    Listing(StoreError),
    /// `read_output` names a result that is no longer kept (or never was).
    #[error("no result kept as '{uri}': results are kept for 10 minutes after their call (and the oldest go first past 64 MiB); run the code again")]
    OutputGone {
        /// The `output_uri` asked for.
        uri: String,
    },
    /// The client cancelled the call before it ended.
    #[error("cancelled by the client; the heap was not changed")]
    Cancelled,
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
            CallError::Run(RunError::ReplayFailed { .. }) => "replay_failed",
            CallError::Envelope { .. } => "corrupt_heap",
            CallError::Conflict { .. } => "conflict",
            CallError::Exists { .. }
            | CallError::Missing { .. }
            | CallError::SameHeap { .. }
            | CallError::NoSuchRecord { .. } => "invalid_fork",
            CallError::Journal { .. } => "corrupt_heap",
            CallError::Replaced { .. } => "replaced",
            CallError::Storage { .. } | CallError::Listing(_) => "storage",
            CallError::OutputGone { .. } => "output_gone",
            CallError::Cancelled => "cancelled",
            CallError::Internal(_) => "internal",
        }
    }

    /// Whether the same call may succeed if made again as it is: another writer won the
    /// race, or the store or the engine was briefly unavailable.
    pub fn retryable(&self) -> bool {
        match self {
            CallError::Conflict { .. }
            | CallError::Replaced { .. }
            | CallError::Run(RunError::Unavailable(_)) => true,
            CallError::Storage { error, .. } | CallError::Listing(error) => {
                error.kind() == mcp_v8_plugin_api::ErrorKind::Unavailable
            }
            _ => false,
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
pub type CallOutcome<T> = Outcome<T, CallError>;

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

/// A heap's calls since its stored snapshot, as its journal holds them: what `heap_history`
/// shows, and what `copy_heap` can fork from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The record the stored snapshot stands at: forks can start from it or any later one.
    pub snapshot_record: u64,
    /// The calls after it, oldest first.
    pub calls: Vec<HistoryCall>,
    /// Calls left out (the oldest), beyond the limit asked for.
    pub left_out: usize,
}

/// One committed call in a heap's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryCall {
    /// Its record's number.
    pub record: u64,
    /// When it was committed, in ms since the Unix epoch.
    pub at_ms: u64,
    /// The start of its code.
    pub code: String,
    /// The start of what it returned.
    pub output: String,
    /// Stored as the state it left rather than replayed (why a replay could not reproduce
    /// it), if so.
    pub stored_state: Option<String>,
}

/// Per-call limits; each may only tighten the server's.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallLimits {
    /// Time limit for this call.
    pub timeout: Option<Duration>,
    /// Heap limit for this call, in bytes.
    pub heap_bytes: Option<usize>,
    /// Tokens an answer to this call may take.
    pub answer_tokens: Option<usize>,
}

/// Runs code on heaps kept in a [`Store`].
pub struct Runtime {
    executor: Arc<Executor>,
    locks: HeapLocks,
    limits: Limits,
    policy: StoragePolicy,
    heaps: Arc<Heaps>,
    /// Every save after an answer holds it shared; whoever must see all answered states
    /// (listing, shutting down) takes it exclusively.
    saves: Arc<RwLock<()>>,
    call_metrics: CallMetrics,
    /// The error of each heap's last failed call, until a call finds it as `_error`.
    last_errors: Mutex<lru::LruCache<String, JsException>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// Heaps whose last error is remembered, at most (the least recently failed go first).
const LAST_ERRORS: usize = 10_000;

impl Runtime {
    /// A runtime storing heaps in `storage` and running code with `executor` under `limits`,
    /// saving in the background.
    pub fn new(storage: Store, executor: Executor, limits: Limits) -> Self {
        Self::with_policy(storage, executor, limits, StoragePolicy::default())
    }

    /// A runtime that stores as `policy` says.
    pub fn with_policy(
        storage: Store,
        executor: Executor,
        limits: Limits,
        policy: StoragePolicy,
    ) -> Self {
        let executor = Arc::new(executor);
        let locks = HeapLocks::default();
        // A store that drops heaps on its own must know which ones are in use.
        storage.use_locks(&locks);
        let heaps = Arc::new(Heaps {
            storage,
            executor: Arc::clone(&executor),
            codec: policy.compression,
            checkpoints: policy.checkpoints,
            limits,
            locks: locks.clone(),
            stopping: Default::default(),
            warm: Mutex::default(),
            learned: Mutex::default(),
            raw_sizes: Mutex::default(),
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(checkpoint_idle_heaps(Arc::downgrade(&heaps)));
        }
        Self {
            executor,
            locks,
            limits,
            policy,
            heaps,
            saves: Arc::new(RwLock::new(())),
            call_metrics: CallMetrics::default(),
            last_errors: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(LAST_ERRORS).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
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
    pub fn policy(&self) -> StoragePolicy {
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
    fn count<T>(&self, started: Instant, reply: &CallOutcome<T>) {
        let outcome = match &reply.result {
            Ok(_) => metrics::Ended::Ok,
            Err(e) => metrics::Ended::Failed(e.kind()),
        };
        self.call_metrics.record(started.elapsed(), outcome);
    }

    /// Waits, at most `grace`, for the snapshots being taken to be stored (returns whether they
    /// were), then, within what is left of it, checkpoints the heaps that are live with calls
    /// since their last snapshot, so that the next start has little to replay. Every
    /// answered call is in its heap's journal either way.
    pub async fn flush(&self, grace: Duration) -> bool {
        self.heaps
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + grace;
        if tokio::time::timeout_at(deadline, self.saves.write())
            .await
            .is_err()
        {
            tracing::error!(
                "stopping with heap snapshots still in progress after {} s: their calls are in \
                 their heaps' journals and run again when the heaps are next loaded",
                grace.as_secs_f64()
            );
            return false;
        }
        // Best effort within what is left of the grace: a heap not checkpointed loses
        // nothing, its next load replays its records.
        let live: Vec<String> = self.heaps.warm().keys().cloned().collect();
        let total = live.len();
        for (done, heap) in live.into_iter().enumerate() {
            let checkpoint = async {
                let _guard = self.locks.lock(&heap).await;
                self.heaps.checkpoint_live(&heap).await;
            };
            if tokio::time::timeout_at(deadline, checkpoint).await.is_err() {
                tracing::warn!(
                    "{} of {total} live heaps not checkpointed within the shutdown grace: their \
                     calls are in their journals and replay when the heaps are next loaded",
                    total - done
                );
                break;
            }
        }
        true
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
        if let Some(tokens) = call.answer_tokens {
            let bytes = tokens.saturating_mul(BYTES_PER_TOKEN);
            if tokens == 0 || bytes > self.limits.answer_bytes {
                return Err(CallError::InvalidLimit(format!(
                    "max_output_tokens must be at least 1 and at most the server's {}",
                    self.limits.answer_bytes / BYTES_PER_TOKEN
                )));
            }
            limits.answer_bytes = bytes;
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
    ) -> CallOutcome<Completion> {
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
    ) -> CallOutcome<Completion> {
        let limits = match self.limits_for(call) {
            Ok(limits) => limits,
            Err(e) => return CallOutcome::failed(e),
        };
        let job = Job {
            code,
            target: Target::Stateless,
            limits,
            live,
        };
        match self.executor.run(job).await {
            Ok((outcome, _)) => outcome.map_result(|result| result.map_err(CallError::from)),
            Err(NotWarm) => CallOutcome::failed(CallError::Internal(
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
    ) -> CallOutcome<HeapRun> {
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
    ) -> CallOutcome<HeapRun> {
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
    ) -> CallOutcome<HeapRun> {
        // A fork without a source starts from an empty heap.
        let source = match heap {
            Some(name) => match validate_caller_name(&name) {
                Ok(()) => Some(name),
                Err(e) => return CallOutcome::failed(CallError::InvalidName(e)),
            },
            None => None,
        };
        let (heap, fork) = match &save_to {
            SaveTo::Same => (source.clone().unwrap_or_else(generated_name), None),
            SaveTo::Fork { to, overwrite } => {
                if let Err(e) = validate_caller_name(to) {
                    return CallOutcome::failed(CallError::InvalidName(e));
                }
                if source.as_ref() == Some(to) {
                    return CallOutcome::failed(CallError::SameHeap { heap: to.clone() });
                }
                (to.clone(), Some((source.clone(), *overwrite)))
            }
        };
        let limits = match self.limits_for(call) {
            Ok(limits) => limits,
            Err(e) => return CallOutcome::failed(e),
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
        // A fork runs on another heap's state: that heap's error is not its own.
        let last_error = match fork {
            None => self.last_errors().peek(&heap).cloned(),
            Some(_) => None,
        };
        let mut retries = 0;
        // Calls of the journal lost because one did not replay, once the heap was recovered.
        let mut lost: Option<String> = None;
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
                Err(e) => return CallOutcome::failed(e),
            };
            // A new heap needs its first snapshot; otherwise the state stays live in its
            // worker until replaying the calls since the last snapshot would cost too much.
            let checkpoint = match (&loaded.commit, self.policy.save) {
                (Commit::Create(_), _) | (_, SaveMode::Sync) => true,
                (Commit::Append(_), SaveMode::Background) => loaded
                    .debt
                    .with_call(code.len(), Duration::ZERO)
                    .due(&self.policy.checkpoints),
            };
            let job = Job {
                code: code.clone(),
                target: Target::Heap {
                    name: heap.clone(),
                    start: loaded.start,
                    replay: loaded.replay,
                    keep: if checkpoint {
                        Keep::Snapshot
                    } else {
                        Keep::Live
                    },
                    last_error: last_error.clone(),
                },
                limits,
                live: live.clone(),
            };
            let ran_at = Instant::now();
            let (outcome, new_state) = match self.executor.run(job).await {
                Ok(ran) => ran,
                // Evicted, or its worker busy or gone: load it from the store.
                Err(NotWarm) => {
                    self.heaps.forget(&heap);
                    continue;
                }
            };
            let debt = loaded.debt.with_call(code.len(), ran_at.elapsed());
            let (completion, new_state) = match (outcome.result, new_state) {
                (Ok(completion), Some(new_state)) => (completion, new_state),
                (Ok(_), None) => {
                    return CallOutcome::failed(CallError::Internal(
                        "a stateful run returned no heap".into(),
                    ))
                }
                // A committed call did not replay: the heap goes back to the call before it
                // (once), and this call runs on that state, saying what was lost.
                (Err(RunError::Diverged { seq, why }), _) if fork.is_none() && lost.is_none() => {
                    match self.heaps.recover(&heap, seq, &why).await {
                        Ok(notice) => {
                            lost = Some(notice);
                            continue;
                        }
                        Err(e) => {
                            return Outcome {
                                result: Err(e),
                                console: outcome.console,
                            }
                        }
                    }
                }
                (Err(e), _) => {
                    if let (RunError::Exception(exception), None) = (&e, &fork) {
                        self.last_errors().put(heap.clone(), exception.clone());
                    }
                    let error = match e {
                        RunError::Unrestorable(reason) => CallError::Unrestorable { heap, reason },
                        e => e.into(),
                    };
                    return Outcome {
                        result: Err(error),
                        console: outcome.console,
                    };
                }
            };
            let console = outcome.console;
            // The source of a fork is not written: others may use it again.
            drop(source_guard.take());
            let committed = match loaded.commit {
                Commit::Create(precondition) => self
                    .heaps
                    .create(&heap, new_state, precondition, loaded.read_only)
                    .await
                    .map(|()| None),
                Commit::Append(head) => {
                    let call = Call {
                        code: &code,
                        limits: &limits,
                        completion: &completion,
                        console: &console,
                    };
                    self.heaps
                        .append(&heap, &head, call, new_state, loaded.read_only, debt)
                        .await
                }
            };
            let answer = |retries| Outcome {
                result: Ok(HeapRun {
                    completion,
                    heap: heap.clone(),
                    retries,
                    notice: lost.clone().or(loaded.notice),
                    forked_from: fork.as_ref().and_then(|(from, _)| from.clone()),
                }),
                console,
            };
            match committed {
                // Committed: the new state's snapshot follows, after the answer (or before it
                // with `--save sync`), holding the heap until it is stored.
                Ok(Some(pending)) => {
                    match self.policy.save {
                        SaveMode::Sync => self.heaps.checkpoint(&heap, pending).await,
                        SaveMode::Background => {
                            let gate = Arc::clone(&self.saves).read_owned().await;
                            let heaps = Arc::clone(&self.heaps);
                            let name = heap.clone();
                            tokio::spawn(async move {
                                let _gate = gate;
                                heaps.checkpoint(&name, pending).await;
                                drop(guard);
                            });
                        }
                    }
                    self.committed(&heap, fork.is_none());
                    return answer(retries);
                }
                Ok(None) => {
                    self.committed(&heap, fork.is_none());
                    return answer(retries);
                }
                // Made meanwhile by another writer: running again would not help.
                Err(CallError::Conflict { heap, .. }) if fork.is_some() => {
                    return Outcome {
                        result: Err(CallError::Exists { heap }),
                        console: answer(retries).console,
                    };
                }
                Err(CallError::Conflict { .. }) if retries < self.policy.conflict_retries => {
                    retries += 1;
                    self.heaps.forget(&heap);
                    tracing::debug!(heap, retries, "heap changed concurrently: running again");
                    tokio::time::sleep(jitter(retries)).await;
                }
                Err(CallError::Conflict { heap, .. }) => {
                    let attempts = retries + 1;
                    return Outcome {
                        result: Err(CallError::Conflict { heap, attempts }),
                        console: answer(retries).console,
                    };
                }
                Err(e) => {
                    return Outcome {
                        result: Err(e),
                        console: answer(retries).console,
                    }
                }
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
    /// call running on either: a named checkpoint. With `at`, the copy is `from` as it was
    /// right after that record of its journal ([`Runtime::history`]).
    pub async fn copy(
        &self,
        from: &str,
        to: &str,
        overwrite: bool,
        at: Option<u64>,
    ) -> Result<Copied, CallError> {
        validate_caller_name(from).map_err(CallError::InvalidName)?;
        validate_caller_name(to).map_err(CallError::InvalidName)?;
        if from == to {
            return Err(CallError::SameHeap { heap: to.into() });
        }
        let (first, second) = if from < to { (from, to) } else { (to, from) };
        let _first = self.locks.lock(first).await;
        let _second = self.locks.lock(second).await;
        self.heaps
            .copy(&self.executor, from, to, overwrite, at)
            .await
    }

    /// `heap`'s calls since its stored snapshot, the latest `limit` of them.
    pub async fn history(&self, heap: &str, limit: usize) -> Result<History, CallError> {
        validate_caller_name(heap).map_err(CallError::InvalidName)?;
        let _guard = self.locks.lock(heap).await;
        self.heaps.history(heap, limit).await
    }

    /// Deletes a heap, waiting for any call running on it: its snapshot, then its journal.
    pub async fn delete(&self, heap: &str) -> Result<(), CallError> {
        validate_caller_name(heap).map_err(CallError::InvalidName)?;
        let _guard = self.locks.lock(heap).await;
        self.last_errors().pop(heap);
        self.heaps.delete(heap).await
    }

    /// The heaps' remembered last errors.
    fn last_errors(&self) -> std::sync::MutexGuard<'_, lru::LruCache<String, JsException>> {
        self.last_errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A call on `heap` committed: its last error, if the call ran on the heap's own state,
    /// is now in the heap as `_error`.
    fn committed(&self, heap: &str, own_state: bool) {
        if own_state {
            self.last_errors().pop(heap);
        }
    }
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
    use crate::record::{Effect, Record};
    use crate::storage::{HeapStore, MemoryStore, Precondition, Snapshot, Version};
    use bytes::Bytes;

    #[test]
    fn a_failure_is_retryable_when_the_same_call_may_succeed() {
        let heap = || "h".to_string();
        assert!(CallError::Conflict {
            heap: heap(),
            attempts: 3
        }
        .retryable());
        assert!(CallError::Replaced { heap: heap() }.retryable());
        let down = StoreError::unavailable("the bucket did not answer");
        assert!(CallError::Storage {
            heap: heap(),
            error: down
        }
        .retryable());
        let full = StoreError::new(mcp_v8_plugin_api::ErrorKind::Other, "disk full");
        assert!(!CallError::Storage {
            heap: heap(),
            error: full
        }
        .retryable());
        assert!(!CallError::Exists { heap: heap() }.retryable());
        assert!(!CallError::Cancelled.retryable());
        assert_eq!(CallError::Cancelled.kind(), "cancelled");
    }

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
    async fn a_lost_race_runs_again_and_conflicts_only_when_it_always_loses() {
        let (rt, store) = runtime();
        output(&rt, "var n = 1", "h").await;
        // Another host commits the heap's next record first, on every attempt.
        let racing = ScriptedStore::appends_lost(&store);
        let policy = StoragePolicy {
            conflict_retries: 2,
            ..StoragePolicy::default()
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
    async fn a_committed_call_survives_a_snapshot_that_cannot_be_stored() {
        let (rt, store) = runtime();
        output(&rt, "var n = 1", "h").await;
        // Someone else writes the heap's snapshot right after every read, so this runtime's
        // snapshot after the call loses its compare-and-swap: the call's record stands.
        let racing = ScriptedStore::racing(&store, store.get("h").unwrap().bytes);
        let rt2 = Runtime::new(racing, Executor::InProcess, Limits::default());
        let run = rt2
            .run_on_heap("n = 100".into(), Some("h".into()), CallLimits::default())
            .await;
        assert_eq!(run.result.unwrap().completion.output, "100");
        assert!(rt2.flush(Duration::from_secs(10)).await);
        assert_eq!(store.read_journal("h", 0).unwrap().len(), 1);
        // Loaded again, from the old snapshot and the record after it.
        assert_eq!(output(&rt, "n", "h").await, "100");
        assert_eq!(output(&rt2, "n += 1", "h").await, "101");
    }

    #[tokio::test]
    async fn a_call_is_durable_before_its_answer_and_list_waits_for_the_snapshot() {
        let store = MemoryStore::new();
        let (rt0, _) = (
            Runtime::new(
                Store::memory(store.clone()),
                Executor::InProcess,
                Limits::default(),
            ),
            (),
        );
        output(&rt0, "var n = 1", "h").await;
        let before = store.get("h").unwrap().bytes;
        let gate = Arc::new(Gate::default());
        let held = ScriptedStore::held(&store, &gate);
        let rt = Runtime::new(held, Executor::InProcess, Limits::default());
        let answered = rt
            .run_on_heap("++n".into(), Some("h".into()), CallLimits::default())
            .await;
        assert_eq!(answered.result.unwrap().completion.output, "2");
        // Answered while the store has not taken the new snapshot, but has the call's record.
        assert_eq!(store.get("h").unwrap().bytes, before);
        assert_eq!(store.read_journal("h", 0).unwrap().len(), 1);
        // What another runtime loads now has the call.
        assert_eq!(output(&rt0, "n", "h").await, "2");
        gate.open();
        // Listing waits for the snapshot.
        let names: Vec<_> = rt
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.meta.name)
            .collect();
        assert_eq!(names, ["h"]);
        assert_ne!(store.get("h").unwrap().bytes, before);
        assert_eq!(output(&rt, "++n", "h").await, "3");
    }

    /// A memory store with a script: someone else writes the heap right after every read
    /// (`sneak_in`), puts wait until `put_gate` opens, and every append finds its number
    /// taken (`appends_lost`).
    #[derive(Default)]
    struct ScriptedStore {
        inner: MemoryStore,
        sneak_in: Option<Bytes>,
        put_gate: Option<Arc<Gate>>,
        appends_lost: bool,
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
                ..Self::default()
            };
            Store::blocking(Arc::new(store), Duration::from_secs(30))
        }

        fn appends_lost(inner: &MemoryStore) -> Store {
            let store = Self {
                inner: inner.clone(),
                appends_lost: true,
                ..Self::default()
            };
            Store::blocking(Arc::new(store), Duration::from_secs(30))
        }

        fn held(inner: &MemoryStore, gate: &Arc<Gate>) -> Store {
            let (inner, put_gate) = (inner.clone(), Some(Arc::clone(gate)));
            let store = Self {
                inner,
                put_gate,
                ..Self::default()
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
        fn append(&self, name: &str, record: crate::storage::Record) -> Result<(), StoreError> {
            if self.appends_lost {
                return Err(mcp_v8_plugin_api::journal::taken(name, record.seq));
            }
            self.inner.append(name, record)
        }
        fn read_journal(
            &self,
            name: &str,
            after: u64,
        ) -> Result<Vec<crate::storage::Record>, StoreError> {
            self.inner.read_journal(name, after)
        }
        fn trim_journal(&self, name: &str, through: u64) -> Result<(), StoreError> {
            self.inner.trim_journal(name, through)
        }
    }

    #[tokio::test]
    async fn a_record_that_does_not_reproduce_its_call_is_reported_and_the_heap_goes_on() {
        let store = MemoryStore::new();
        let rt0 = Runtime::new(
            Store::memory(store.clone()),
            Executor::InProcess,
            Limits::default(),
        );
        output(&rt0, "var n = 1", "h").await;
        // The snapshot after the next call never lands, so its record is what holds it.
        let gate = Arc::new(Gate::default());
        let rt = Runtime::new(
            ScriptedStore::held(&store, &gate),
            Executor::InProcess,
            Limits::default(),
        );
        let run = rt
            .run_on_heap(
                "n += Math.random() < 2 ? 1 : 0".into(),
                Some("h".into()),
                CallLimits::default(),
            )
            .await;
        assert_eq!(run.result.unwrap().completion.output, "2");
        // Its record, changed as if the call had shown something else.
        let stored = store.read_journal("h", 0).unwrap().remove(0);
        let mut record = Record::decode(&stored.bytes).unwrap();
        if let Effect::Call { fingerprint, .. } = &mut record.effect {
            *fingerprint ^= 1;
        }
        store.trim_journal("h", u64::MAX).unwrap();
        let bytes = Bytes::from(record.encode());
        store
            .append("h", crate::storage::Record::new(stored.seq, bytes))
            .unwrap();
        // The heap loads up to the record before, and the call says what was lost and why.
        let run = rt0
            .run_on_heap("n".into(), Some("h".into()), CallLimits::default())
            .await
            .result
            .unwrap();
        assert_eq!(run.completion.output, "1");
        let notice = run.notice.unwrap_or_default();
        assert!(
            notice.contains("1 committed call was lost")
                && notice.contains(
                    "did not reproduce its call (its result or console came out different)"
                ),
            "{notice}"
        );
        // Recovered for good: the next load has nothing to replay and says nothing.
        let run = rt0
            .run_on_heap("n += 10".into(), Some("h".into()), CallLimits::default())
            .await
            .result
            .unwrap();
        assert_eq!((run.completion.output.as_str(), run.notice), ("11", None));
        gate.open();
        assert!(rt.flush(Duration::from_secs(10)).await);
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
