//! What the MCP tools do, independent of MCP: run code on a heap (load, verify, replay,
//! execute, commit, snapshot), run code statelessly, list, copy and delete heaps.
//!
//! A heap is its stored snapshot plus the journal of calls committed after it
//! ([`crate::record`]). A successful call on a heap is committed by appending its record under
//! the next number, which only one writer can take, and answered once the store has it; the
//! heap's new snapshot is stored after the answer ([`SaveMode::Background`]) and covers the
//! records before it. The heap stays locked until the snapshot is in, so the next call on it,
//! `list_heaps` and `delete_heap` see it. Loading a heap restores its snapshot and replays
//! the records after it; a warm isolate is used only while the store's snapshot is the one it
//! came from, after the records other processes committed meanwhile.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::RwLock;

use crate::engine::{self, Completion, Console, Limits, Replay, Run, RunError};
use crate::envelope::{self, Codec, EnvelopeError, Position, ReadOnly};
use crate::executor::Executor;
use crate::job::{
    Job, Keep, LiveBatches, NewState, NotWarm, Saved, Saving, Start, Target, WarmRef,
};
use crate::metrics::{self, CallMetrics, StorageStats};
use crate::record::{Effect, Record};
use crate::storage::{
    validate_caller_name, ErrorKind, HeapLocks, HeapMeta, Precondition, Sharing, Snapshot, Store,
    StoreError, Version,
};

/// When a heap's snapshot is stored. Either way a call is answered only once its journal
/// record is stored: the answer is durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
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
pub struct Policy {
    /// When states are stored.
    pub save: SaveMode,
    /// How often a call that lost a race with another writer runs again.
    pub conflict_retries: u32,
    /// How snapshots are stored.
    pub compression: Codec,
    /// When live states are checkpointed.
    pub checkpoints: Checkpoints,
}

impl Default for Policy {
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
    Envelope { heap: String, error: EnvelopeError },
    /// The stored heap passed verification, but V8 failed to restore it.
    #[error("heap '{heap}' cannot be loaded: V8 could not restore its snapshot ({reason}); the code did not run (delete_heap removes the heap so the name can start over)")]
    Unrestorable { heap: String, reason: String },
    /// Someone else saved the heap while this call ran on the old state, every time it ran.
    #[error("heap '{heap}' was changed concurrently while this code ran ({attempts} attempts), so its result was not saved; retry the call")]
    Conflict { heap: String, attempts: u32 },
    /// A record of the heap's journal cannot be used.
    #[error("heap '{heap}' cannot be loaded: record {seq} of its journal is damaged ({error}); delete_heap removes the heap so the name can start over")]
    Journal {
        heap: String,
        seq: u64,
        error: String,
    },
    /// The heap was deleted, or deleted and made again, by another client while the code ran.
    #[error("heap '{heap}' was deleted or replaced by another client while this code ran, so its result was not kept")]
    Replaced { heap: String },
    /// A fork or copy would replace a heap without `overwrite`.
    #[error("heap '{heap}' already exists; pass overwrite: true to replace it")]
    Exists { heap: String },
    /// A fork or copy names a source heap that does not exist.
    #[error("heap '{heap}' does not exist")]
    Missing { heap: String },
    /// A copy names a record the heap's journal does not hold after its snapshot.
    #[error("heap '{heap}' cannot be copied at record {record}: its journal holds records {first} to {last} after its snapshot (heap_history lists them)")]
    NoSuchRecord {
        heap: String,
        record: u64,
        first: u64,
        last: u64,
    },
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
    /// When live states are checkpointed.
    checkpoints: Checkpoints,
    /// The server's limits, for rebuilding a state to checkpoint.
    limits: Limits,
    /// Heap locks, shared with the runtime: a checkpoint holds its heap's.
    locks: HeapLocks,
    /// Set once the runtime stops: no more checkpoints while idle.
    stopping: std::sync::atomic::AtomicBool,
    /// Heaps a worker holds warm, and where in the store that state stands.
    warm: Mutex<HashMap<String, WarmHeap>>,
    /// Records this runtime committed or replayed and has not trimmed, with when it learned
    /// of them, by heap: a shared store's records are trimmed only once they are old.
    learned: Mutex<HashMap<String, VecDeque<(u64, Instant)>>>,
    /// Snapshot sizes before compression, by heap and stored version, as this runtime sealed
    /// or opened them.
    raw_sizes: Mutex<HashMap<String, (Version, u64)>>,
}

/// How long a record of a store that others share stays after a snapshot covers it: a
/// writer that ran on the state before it, and appends after it is gone, would otherwise
/// go unnoticed. Far longer than any call runs.
const RECORDS_KEPT_FOR: Duration = Duration::from_secs(600);

/// Where a heap stands in its store: its snapshot's version and position, and the last
/// committed record after it (the snapshot's own position when none follows it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    /// The stored snapshot's version.
    version: Version,
    /// The heap's lineage ([`Position::lineage`]).
    lineage: u64,
    /// The last committed record.
    seq: u64,
    /// The journal's chain value after it.
    chain: u64,
}

/// A heap a worker holds warm.
#[derive(Debug, Clone)]
struct WarmHeap {
    /// The worker and its state.
    at: WarmRef,
    /// Where that state stands in the store.
    head: Head,
    /// What replaying the records after the stored snapshot costs.
    debt: Debt,
    /// When it was last run or stored.
    used: Instant,
}

/// The records after a heap's stored snapshot, as what replaying them would cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Debt {
    calls: u32,
    bytes: u64,
    run_time: Duration,
}

impl Debt {
    /// The debt with `records` added.
    fn with_records(mut self, records: &[Record]) -> Self {
        for record in records {
            let bytes = match &record.effect {
                Effect::Call { code, .. } => code.len(),
                Effect::State { envelope, .. } => envelope.len(),
            };
            self = self.with_call(bytes, Duration::ZERO);
        }
        self
    }

    /// The debt with one call of `bytes` of code that ran for `run_time` added.
    fn with_call(self, bytes: usize, run_time: Duration) -> Self {
        Self {
            calls: self.calls.saturating_add(1),
            bytes: self.bytes.saturating_add(bytes as u64),
            run_time: self.run_time.saturating_add(run_time),
        }
    }

    /// Whether it has reached one of `budget`'s bounds.
    fn due(&self, budget: &Checkpoints) -> bool {
        self.calls >= budget.calls || self.bytes >= budget.bytes || self.run_time >= budget.run_time
    }
}

/// A stored heap, verified, with the committed calls its snapshot lacks.
struct OpenedHeap {
    snapshot: bytes::Bytes,
    read_only: ReadOnly,
    head: Head,
    replay: Vec<Record>,
}

/// How a stored heap starts a run, and how the run's result is committed.
struct Loaded {
    start: Start,
    /// Committed calls to run again first.
    replay: Vec<Record>,
    commit: Commit,
    /// What replaying the records after the stored snapshot costs, with `replay` run.
    debt: Debt,
    read_only: ReadOnly,
    /// Why a heap the caller may expect starts empty.
    notice: Option<String>,
}

/// How a successful run is committed.
#[derive(Debug, Clone)]
enum Commit {
    /// Append a record to the heap's journal: it stands at this head.
    Append(Head),
    /// Make the heap (a new one, or a fork's target): its first snapshot, stored with this
    /// precondition, before the answer.
    Create(Precondition),
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

    /// Waits, at most `grace`, for the snapshots being taken to be stored, then checkpoints
    /// the heaps that are live with calls since their last snapshot, so that the next start
    /// has little to replay. Returns whether all were stored; every answered call is in its
    /// heap's journal either way.
    pub async fn flush(&self, grace: Duration) -> bool {
        self.heaps
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let all = async {
            drop(self.saves.write().await);
            let live: Vec<String> = self.heaps.warm().keys().cloned().collect();
            for heap in live {
                let _guard = self.locks.lock(&heap).await;
                self.heaps.checkpoint_live(&heap).await;
            }
        };
        match tokio::time::timeout(grace, all).await {
            Ok(()) => true,
            Err(_) => {
                tracing::error!(
                    "stopping with heap snapshots still in progress after {} s: their calls are in \
                     their heaps' journals and run again when the heaps are next loaded",
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
                Err(e) => return Reply::failed(e),
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
                    return Reply::failed(CallError::Internal(
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
                            return Run {
                                result: Err(e),
                                console: outcome.console,
                            }
                        }
                    }
                }
                (Err(e), _) => {
                    let error = match e {
                        RunError::Unrestorable(reason) => CallError::Unrestorable { heap, reason },
                        e => e.into(),
                    };
                    return Run {
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
            let answer = |retries| Run {
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
                    return answer(retries);
                }
                Ok(None) => return answer(retries),
                // Made meanwhile by another writer: running again would not help.
                Err(CallError::Conflict { heap, .. }) if fork.is_some() => {
                    return Run {
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
                    return Run {
                        result: Err(CallError::Conflict { heap, attempts }),
                        console: answer(retries).console,
                    };
                }
                Err(e) => {
                    return Run {
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
        let stored = match self.heaps.storage.get(heap).await {
            Ok(stored) => stored,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(CallError::Missing { heap: heap.into() })
            }
            Err(e) => return Err(CallError::storage(heap)(e)),
        };
        let header = envelope::header(&stored.bytes).map_err(|error| CallError::Envelope {
            heap: heap.into(),
            error,
        })?;
        let head = Head::at(stored.version, header.position);
        let (_, records) = self.heaps.read_records(heap, head).await?;
        let left_out = records.len().saturating_sub(limit);
        let calls = records
            .into_iter()
            .skip(left_out)
            .map(|record| {
                let (code, stored_state) = match record.effect {
                    Effect::Call { code, .. } => (excerpt(&code), None),
                    Effect::State { why, .. } => (String::new(), Some(why)),
                };
                HistoryCall {
                    record: record.seq,
                    at_ms: record.at_ms,
                    code,
                    output: record.output,
                    stored_state,
                }
            })
            .collect();
        Ok(History {
            snapshot_record: header.position.through,
            calls,
            left_out,
        })
    }

    /// Deletes a heap, waiting for any call running on it: its snapshot, then its journal.
    pub async fn delete(&self, heap: &str) -> Result<(), CallError> {
        validate_caller_name(heap).map_err(CallError::InvalidName)?;
        let _guard = self.locks.lock(heap).await;
        self.heaps.forget(heap);
        self.heaps
            .raw_sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(heap);
        self.heaps
            .learned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(heap);
        self.heaps
            .storage
            .delete(heap)
            .await
            .map_err(CallError::storage(heap))?;
        // Gone with the snapshot: a record left behind (if this fails) belongs to a lineage no
        // later heap of this name has.
        if let Err(e) = self.heaps.storage.trim_journal(heap, u64::MAX).await {
            tracing::warn!(heap, "the deleted heap's journal stays: {e}");
        }
        Ok(())
    }
}

/// A successful call's facts, as its record keeps them.
struct Call<'a> {
    code: &'a str,
    limits: &'a Limits,
    completion: &'a Completion,
    console: &'a Console,
}

/// A committed call whose snapshot is still to be stored: the checkpoint that follows it.
struct Pending {
    /// The new state, being snapshotted (or snapshotted already).
    state: PendingState,
    /// Where the heap stands with the call committed.
    head: Head,
    read_only: ReadOnly,
}

enum PendingState {
    Saving(Saving),
    Saved(Saved),
}

impl Heaps {
    /// Where `heap`'s next run starts: its warm isolate if nothing changed in the store since
    /// (with the records others committed meanwhile to run again first), otherwise its
    /// stored snapshot (verified here, before V8 sees a byte) and the records after it, or a
    /// new heap.
    async fn load(&self, heap: &str) -> Result<Loaded, CallError> {
        let warm = self.warm().get(heap).cloned();
        if let Some(warm) = warm {
            let caught_up = self.catch_up(heap, warm.head).await?;
            if let Some((head, replay)) = caught_up {
                return Ok(Loaded {
                    start: Start::Warm(warm.at),
                    debt: warm.debt.with_records(&replay),
                    replay,
                    commit: Commit::Append(head),
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
                    debt: Debt::default().with_records(&opened.replay),
                    replay: opened.replay,
                    commit: Commit::Append(opened.head),
                    read_only: opened.read_only,
                    notice: None,
                })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Loaded {
                start: Start::New,
                debt: Debt::default(),
                replay: Vec::new(),
                commit: Commit::Create(Precondition::MustNotExist),
                read_only: ReadOnly::Shared,
                notice: self
                    .storage
                    .gone(heap)
                    .map(|gone| crate::storage::explain_gone(&gone, heap)),
            }),
            Err(error) => Err(CallError::storage(heap)(error)),
        }
    }

    /// Whether a warm isolate at `head` still stands for `heap`: the stored snapshot is the
    /// same (a cheap question; the memory store may have dropped the heap on its own), and
    /// the records committed after `head` by other processes are what it must run again.
    /// `None` when the snapshot changed.
    async fn catch_up(
        &self,
        heap: &str,
        head: Head,
    ) -> Result<Option<(Head, Vec<Record>)>, CallError> {
        let current = self
            .storage
            .version(heap)
            .await
            .map_err(CallError::storage(heap))?;
        if current.as_ref() != Some(&head.version) {
            return Ok(None);
        }
        if self.storage.sharing() == Sharing::Process {
            // Only this runtime appends, under the heap's lock: nothing follows `head`.
            return Ok(Some((head, Vec::new())));
        }
        self.records_after(heap, head).await.map(Some)
    }

    /// The committed records of `heap` that follow `head`, and where the heap stands after
    /// them. Records of another lineage (a heap deleted and made again under this name) are
    /// passed over; a record of this lineage that does not follow the chain is damage.
    async fn records_after(
        &self,
        heap: &str,
        head: Head,
    ) -> Result<(Head, Vec<Record>), CallError> {
        let (head, records) = self.read_records(heap, head).await?;
        self.learn(heap, records.iter().map(|r| r.seq));
        Ok((head, records))
    }

    /// [`Heaps::records_after`], without noting the records as learned (for trimming).
    async fn read_records(&self, heap: &str, head: Head) -> Result<(Head, Vec<Record>), CallError> {
        let stored = self
            .storage
            .read_journal(heap, head.seq)
            .await
            .map_err(CallError::storage(heap))?;
        let mut head = head;
        let mut records = Vec::new();
        for stored in stored {
            let record = match crate::record::Record::decode(&stored.bytes) {
                Ok(record) => record,
                Err(error) => {
                    return Err(CallError::Journal {
                        heap: heap.into(),
                        seq: stored.seq,
                        error: error.to_string(),
                    })
                }
            };
            if record.lineage != head.lineage || record.heap != heap {
                continue;
            }
            if stored.seq != head.seq + 1 || record.seq != stored.seq {
                // A gap: what follows cannot be applied (trimmed meanwhile, or a writer that
                // failed); the heap stands where the chain ends.
                break;
            }
            if record.prev != head.chain {
                return Err(CallError::Journal {
                    heap: heap.into(),
                    seq: stored.seq,
                    error: "it does not follow the record before it".into(),
                });
            }
            head.seq = stored.seq;
            head.chain = Record::chain(record.prev, &stored.bytes);
            records.push(record);
        }
        Ok((head, records))
    }

    /// Verifies a stored heap, takes out its snapshot (checksums and decompression take
    /// milliseconds on big heaps: off the async threads) and reads the records after it. A
    /// record that holds a whole state replaces the snapshot.
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
        let head = Head {
            version: stored.version,
            lineage: opened.position.lineage,
            seq: opened.position.through,
            chain: opened.position.chain,
        };
        let (head, mut replay) = self.records_after(heap, head).await?;
        let (mut snapshot, mut read_only) = (opened.snapshot, opened.read_only);
        // From the last record that holds a state on, only the calls after it run again.
        if let Some(at) = replay
            .iter()
            .rposition(|r| matches!(r.effect, Effect::State { .. }))
        {
            let later = replay.split_off(at + 1);
            let Some(Record {
                effect: Effect::State { envelope, .. },
                ..
            }) = replay.pop()
            else {
                return Err(CallError::Internal("a state record went missing".into()));
            };
            let name = heap.to_string();
            let state = blocking(move || envelope::open(&envelope, &name))
                .await?
                .map_err(|error| CallError::Envelope {
                    heap: heap.into(),
                    error,
                })?;
            (snapshot, read_only) = (state.snapshot, state.read_only);
            replay = later;
        }
        Ok(OpenedHeap {
            snapshot,
            read_only,
            head,
            replay,
        })
    }

    /// Recovers `heap` from a record, `seq`, that did not reproduce its call (`why`): stores
    /// the state the records before it leave as the heap's snapshot, standing after every
    /// record so far, so that the heap loads without the lost calls. Returns what to tell the
    /// caller.
    async fn recover(&self, heap: &str, seq: u64, why: &str) -> Result<String, CallError> {
        self.forget(heap);
        let mut opened = self.read_existing(heap).await?;
        let head = opened.head.clone();
        opened.replay.retain(|record| record.seq < seq);
        let read_only = opened.read_only;
        let snapshot = current_state(&self.executor, heap, opened).await?;
        let position = Position {
            lineage: head.lineage,
            through: head.seq,
            chain: head.chain,
        };
        let saved = Saved {
            snapshot,
            warm: None,
        };
        let precondition = Precondition::MustMatch(head.version.clone());
        self.put_snapshot(heap, saved, read_only, position, precondition)
            .await?;
        let calls = match head.seq.saturating_sub(seq) {
            0 => format!("1 committed call was lost (journal record {seq})"),
            n => format!(
                "{} committed calls were lost (journal records {seq} to {})",
                n + 1,
                seq + n
            ),
        };
        tracing::warn!(heap, seq, why, "a committed call did not replay: {calls}");
        Ok(format!(
            "heap '{heap}' lost work: {calls} because replaying record {seq} did not reproduce \
             its call ({why}); the heap is as the call before it left it"
        ))
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
        let (start, replay, read_only) = match from {
            None => (Start::New, Vec::new(), ReadOnly::Shared),
            Some(from) => {
                let opened = self.read_existing(from).await?;
                let start = match opened.read_only {
                    ReadOnly::Shared => Start::Snapshot(opened.snapshot),
                    ReadOnly::Own => Start::Alone(opened.snapshot),
                };
                (start, opened.replay, opened.read_only)
            }
        };
        Ok(Loaded {
            start,
            replay,
            debt: Debt::default(),
            commit: Commit::Create(replacing(overwrite)),
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

    /// A heap that must exist, verified, with the records after its snapshot.
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
    /// store) and no record follows the snapshot; otherwise the state is verified (brought up
    /// to date by running its records again, in a job) and sealed for its new name (each
    /// heap's bytes are bound to its name), as a new lineage.
    async fn copy(
        &self,
        executor: &Executor,
        from: &str,
        to: &str,
        overwrite: bool,
        at: Option<u64>,
    ) -> Result<Copied, CallError> {
        let precondition = replacing(overwrite);
        let mut opened = self.read_existing(from).await?;
        if let Some(at) = at {
            let first = opened
                .replay
                .first()
                .map_or(opened.head.seq, |r| r.seq.saturating_sub(1));
            if at < first || at > opened.head.seq {
                return Err(CallError::NoSuchRecord {
                    heap: from.into(),
                    record: at,
                    first,
                    last: opened.head.seq,
                });
            }
            opened.replay.retain(|record| record.seq <= at);
        }
        let shared = match opened.replay.is_empty() {
            true => self.storage.copy(from, to, precondition.clone()).await,
            false => Ok(None),
        };
        let copied = match shared {
            Ok(Some(version)) => {
                let size = self
                    .storage
                    .list(to)
                    .await
                    .ok()
                    .and_then(|heaps| heaps.into_iter().find(|m| m.name == to))
                    .map_or(0, |meta| meta.size);
                let raw_size = self
                    .storage
                    .raw_size(to, &version)
                    .unwrap_or(opened.snapshot.len() as u64);
                Ok((version, size, raw_size))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(CallError::Missing { heap: from.into() })
            }
            Err(e) => Err(e),
            Ok(None) => {
                // Not worth decompressing and compressing again for a copy that cannot land.
                self.check_free(to, overwrite).await?;
                let snapshot = if opened.replay.is_empty() {
                    opened.snapshot
                } else {
                    current_state(executor, from, opened).await?
                };
                let (name, codec, read_only) = (to.to_string(), self.codec, ReadOnly::Shared);
                let raw_size = snapshot.len() as u64;
                let position = new_lineage();
                let sealed =
                    blocking(move || envelope::seal(&snapshot, &name, read_only, codec, position))
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
        // `to` holds other state now: no warm isolate stands for it.
        self.forget(to);
        self.learn_raw_size(to, &version, raw_size);
        Ok(Copied {
            from: from.into(),
            to: to.into(),
            size,
            raw_size,
        })
    }

    /// Makes `heap` from a run's new state: its first snapshot, a new lineage, stored if
    /// `precondition` holds, before the run is answered.
    async fn create(
        &self,
        heap: &str,
        new_state: NewState,
        precondition: Precondition,
        read_only: ReadOnly,
    ) -> Result<(), CallError> {
        self.forget(heap);
        let saving = match new_state {
            NewState::Saving(saving) => saving,
            NewState::Live(warm) => {
                self.executor.forget(warm, heap);
                return Err(CallError::Internal("a new heap came back unsaved".into()));
            }
        };
        let saved = saving.finish().await?;
        let position = new_lineage();
        let (version, warm) = self
            .put_snapshot(heap, saved, read_only, position, precondition)
            .await?;
        let head = Head::at(version, position);
        self.keep_warm(heap, warm, read_only, head, Debt::default());
        Ok(())
    }

    /// Commits a run on `heap`, which stood at `head`, by appending its record: the call is
    /// durable when this returns. A call whose inputs cannot be replayed is committed with
    /// the state it left. Returns the snapshot still to store (the checkpoint), if the new
    /// state is not live in a worker, which then stands for the heap with `debt`.
    async fn append(
        &self,
        heap: &str,
        head: &Head,
        call: Call<'_>,
        new_state: NewState,
        read_only: ReadOnly,
        debt: Debt,
    ) -> Result<Option<Pending>, CallError> {
        // Until the call is committed, no warm isolate stands for the heap.
        self.warm().remove(heap);
        let (saving, live) = match new_state {
            NewState::Saving(saving) => (Some(saving), None),
            NewState::Live(warm) => (None, Some(warm)),
        };
        let seq = head.seq + 1;
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let (effect, state) = match (&call.completion.tape.replay, saving) {
            (Replay::Exact, saving) => (
                Effect::Call {
                    code: call.code.to_string(),
                    heap_bytes: call.limits.heap_bytes,
                    tape: call.completion.tape.clone(),
                    fingerprint: engine::fingerprint(call.completion, call.console),
                },
                saving.map(PendingState::Saving),
            ),
            (Replay::Impossible(_), None) => {
                if let Some(warm) = live {
                    self.executor.forget(warm, heap);
                }
                return Err(CallError::Internal(
                    "a call that cannot be replayed came back without its state".into(),
                ));
            }
            (Replay::Impossible(why), Some(saving)) => {
                let saved = saving.finish().await?;
                let (name, codec) = (heap.to_string(), self.codec);
                let snapshot = saved.snapshot.clone();
                let envelope = blocking(move || {
                    envelope::seal(&snapshot, &name, read_only, codec, Position::default())
                })
                .await?;
                let effect = Effect::State {
                    why: why.clone(),
                    envelope: envelope.into(),
                };
                (effect, Some(PendingState::Saved(saved)))
            }
        };
        let record = Record {
            heap: heap.to_string(),
            lineage: head.lineage,
            seq,
            prev: head.chain,
            at_ms,
            output: excerpt(&call.completion.output),
            effect,
        };
        let bytes = bytes::Bytes::from(record.encode());
        let chain = Record::chain(head.chain, &bytes);
        let discard = |state: Option<PendingState>| {
            // The worker keeps its process only once its snapshot is read.
            if let Some(PendingState::Saving(saving)) = state {
                tokio::spawn(saving.finish());
            }
            // A live state that was not committed stands for nothing.
            if let Some(warm) = live {
                self.executor.forget(warm, heap);
            }
        };
        match self
            .storage
            .append(heap, crate::storage::Record::new(seq, bytes))
            .await
        {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Conflict => {
                discard(state);
                return Err(CallError::Conflict {
                    heap: heap.into(),
                    attempts: 1,
                });
            }
            Err(error) => {
                discard(state);
                return Err(CallError::storage(heap)(error));
            }
        }
        self.learn(heap, [seq]);
        if self.storage.sharing() != Sharing::Process {
            if let Err(e) = self.still_there(heap, head).await {
                discard(state);
                return Err(e);
            }
        }
        let head = Head {
            seq,
            chain,
            ..head.clone()
        };
        match (state, live) {
            (Some(state), _) => Ok(Some(Pending {
                state,
                head,
                read_only,
            })),
            (None, live) => {
                self.keep_warm(heap, live, read_only, head, debt);
                Ok(None)
            }
        }
    }

    /// After an append to a store others share: the heap the record went to is still the
    /// one the call ran on, not deleted or made again meanwhile (the record would be lost
    /// with the old one).
    async fn still_there(&self, heap: &str, head: &Head) -> Result<(), CallError> {
        let replaced = || CallError::Replaced { heap: heap.into() };
        let current = self
            .storage
            .version(heap)
            .await
            .map_err(CallError::storage(heap))?;
        match current {
            None => Err(replaced()),
            Some(version) if version == head.version => Ok(()),
            Some(_) => {
                // Another process stored a snapshot: of this lineage, or of a new heap.
                let stored = match self.storage.get(heap).await {
                    Ok(stored) => stored,
                    Err(e) if e.kind() == ErrorKind::NotFound => return Err(replaced()),
                    Err(e) => return Err(CallError::storage(heap)(e)),
                };
                match envelope::header(&stored.bytes) {
                    Ok(header) if header.position.lineage == head.lineage => Ok(()),
                    _ => Err(replaced()),
                }
            }
        }
    }

    /// Stores the snapshot of a committed call (a checkpoint) if the heap's snapshot is still
    /// the one it followed, keeps the state warm, and trims the records it covers. A failure
    /// loses nothing: the records stay, and the heap's next load runs them again.
    async fn checkpoint(&self, heap: &str, pending: Pending) {
        let Pending {
            state,
            head,
            read_only,
        } = pending;
        let saved = match state {
            PendingState::Saved(saved) => saved,
            PendingState::Saving(saving) => match saving.finish().await {
                Ok(saved) => saved,
                Err(e) => {
                    tracing::warn!(
                        heap,
                        "a committed call's snapshot failed: {e}; its record stays"
                    );
                    return;
                }
            },
        };
        let position = Position {
            lineage: head.lineage,
            through: head.seq,
            chain: head.chain,
        };
        let precondition = Precondition::MustMatch(head.version.clone());
        match self
            .put_snapshot(heap, saved, read_only, position, precondition)
            .await
        {
            Ok((version, warm)) => {
                let head = Head::at(version, position);
                self.keep_warm(heap, warm, read_only, head, Debt::default());
                self.trim(heap, position.through).await;
            }
            Err(e) => {
                self.forget(heap);
                tracing::debug!(
                    heap,
                    "no checkpoint after a committed call: {e}; its record stays"
                );
            }
        }
    }

    /// Seals `saved` at `position` and stores it as `heap`'s snapshot if `precondition`
    /// holds: its version, and where it is warm.
    async fn put_snapshot(
        &self,
        heap: &str,
        saved: Saved,
        read_only: ReadOnly,
        position: Position,
        precondition: Precondition,
    ) -> Result<(Version, Option<WarmRef>), CallError> {
        let (name, codec) = (heap.to_string(), self.codec);
        let raw_len = saved.snapshot.len();
        let snapshot = saved.snapshot;
        let sealed =
            blocking(move || envelope::seal(&snapshot, &name, read_only, codec, position)).await?;
        match self.storage.put(heap, sealed.into(), precondition).await {
            Ok(version) => {
                self.learn_raw_size(heap, &version, raw_len as u64);
                Ok((version, saved.warm))
            }
            Err(e) if e.kind() == ErrorKind::Conflict => Err(CallError::Conflict {
                heap: heap.into(),
                attempts: 1,
            }),
            Err(error) => Err(CallError::storage(heap)(error)),
        }
    }

    /// Remembers that `warm` holds `heap` at `head`, `debt` after its stored snapshot (heaps
    /// with their own read-only heap are never kept warm).
    fn keep_warm(
        &self,
        heap: &str,
        warm: Option<WarmRef>,
        read_only: ReadOnly,
        head: Head,
        debt: Debt,
    ) {
        if let (Some(at), ReadOnly::Shared) = (warm, read_only) {
            let warm = WarmHeap {
                at,
                head,
                debt,
                used: Instant::now(),
            };
            self.warm().insert(heap.to_string(), warm);
        }
    }

    /// Stores a snapshot of `heap`'s live state if calls ran on it since its stored one (the
    /// caller holds the heap's lock). Nothing is lost if this fails: the calls are in the
    /// journal.
    async fn checkpoint_live(&self, heap: &str) {
        let Some(warm) = self.warm().get(heap).cloned() else {
            return;
        };
        if warm.debt.calls == 0 {
            return;
        }
        let saved = match self.executor.checkpoint(warm.at, heap, self.limits).await {
            Ok(Ok(saved)) => saved,
            Ok(Err(e)) => {
                tracing::warn!(heap, "no checkpoint: {e}; the calls stay in the journal");
                self.forget(heap);
                return;
            }
            // Its worker is busy (try again later) or no longer holds it (the next call
            // loads the heap from the store).
            Err(NotWarm) => {
                if let Some(warm) = self.warm().get_mut(heap) {
                    warm.used = Instant::now();
                }
                return;
            }
        };
        let position = Position {
            lineage: warm.head.lineage,
            through: warm.head.seq,
            chain: warm.head.chain,
        };
        let now_at = saved.warm;
        let precondition = Precondition::MustMatch(warm.head.version.clone());
        let stored = self
            .put_snapshot(heap, saved, ReadOnly::Shared, position, precondition)
            .await;
        match stored {
            Ok((version, at)) => {
                let head = Head::at(version, position);
                self.keep_warm(heap, at, ReadOnly::Shared, head, Debt::default());
                self.trim(heap, position.through).await;
            }
            // Another writer stored a snapshot first: this one is not needed.
            Err(CallError::Conflict { .. }) => self.forget(heap),
            Err(e) => {
                tracing::warn!(heap, "no checkpoint: {e}; the calls stay in the journal");
                // The worker holds the same state under its new number.
                self.keep_warm(heap, now_at, ReadOnly::Shared, warm.head, warm.debt);
            }
        }
    }

    /// Notes records of `heap` this runtime learned of just now.
    fn learn(&self, heap: &str, seqs: impl IntoIterator<Item = u64>) {
        let now = Instant::now();
        let mut learned = self.learned.lock().unwrap_or_else(PoisonError::into_inner);
        let known = learned.entry(heap.to_string()).or_default();
        known.extend(seqs.into_iter().map(|seq| (seq, now)));
    }

    /// Removes the records of `heap` a checkpoint through `through` covers: at once from a
    /// store only this process writes; from a shared one, those older than
    /// [`RECORDS_KEPT_FOR`], and never the newest.
    async fn trim(&self, heap: &str, through: u64) {
        let alone = self.storage.sharing() == Sharing::Process;
        let bound = {
            let mut learned = self.learned.lock().unwrap_or_else(PoisonError::into_inner);
            let known = learned.entry(heap.to_string()).or_default();
            let mut bound = None;
            while let Some(&(seq, at)) = known.front() {
                let covered = if alone { seq <= through } else { seq < through };
                if !covered || !(alone || at.elapsed() >= RECORDS_KEPT_FOR) {
                    break;
                }
                bound = Some(seq);
                known.pop_front();
            }
            bound
        };
        if let Some(bound) = bound {
            if let Err(e) = self.storage.trim_journal(heap, bound).await {
                tracing::warn!(heap, "could not trim the journal: {e}");
            }
        }
    }

    fn warm(&self) -> std::sync::MutexGuard<'_, HashMap<String, WarmHeap>> {
        self.warm.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// No warm isolate stands for `heap` any more: the worker holding one drops it with its
    /// next job.
    fn forget(&self, heap: &str) {
        let dropped = self.warm().remove(heap);
        if let Some(warm) = dropped {
            self.executor.forget(warm.at, heap);
        }
    }

    /// Remembers a raw size the store cannot tell (a store that knows them, such as the
    /// memory store, keeps them: heaps it drops would linger here).
    fn learn_raw_size(&self, heap: &str, version: &Version, raw_len: u64) {
        if self.storage.raw_size(heap, version).is_some() {
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
}

impl Head {
    /// A heap whose snapshot, at `version`, stands at `position` with no record after it.
    fn at(version: Version, position: Position) -> Self {
        Self {
            version,
            lineage: position.lineage,
            seq: position.through,
            chain: position.chain,
        }
    }
}

/// Where a new heap's first snapshot stands: a new lineage, whose records are numbered from
/// a point of their own, so that a record left by an earlier heap of the same name is never
/// taken for one of this heap's.
fn new_lineage() -> Position {
    let random = uuid::Uuid::new_v4().as_u64_pair();
    Position {
        lineage: random.0 | 1,
        through: (random.1 >> 24) << 8,
        chain: random.0 ^ random.1,
    }
}

/// The state of `heap` as `opened` and its records leave it, as a raw snapshot: the records
/// run again in a job that changes nothing else.
async fn current_state(
    executor: &Executor,
    heap: &str,
    opened: OpenedHeap,
) -> Result<bytes::Bytes, CallError> {
    let start = match opened.read_only {
        ReadOnly::Shared => Start::Snapshot(opened.snapshot),
        ReadOnly::Own => Start::Alone(opened.snapshot),
    };
    let job = Job {
        code: "undefined".into(),
        target: Target::Heap {
            name: heap.to_string(),
            start,
            replay: opened.replay,
            keep: Keep::Snapshot,
        },
        limits: Limits::default(),
        live: None,
    };
    match executor.run(job).await {
        Ok((outcome, Some(NewState::Saving(saving)))) if outcome.result.is_ok() => {
            Ok(saving.finish().await?.snapshot)
        }
        Ok((outcome, _)) => Err(match outcome.result {
            Err(e) => CallError::Run(e),
            Ok(_) => CallError::Internal("a stateful run returned no heap".into()),
        }),
        Err(NotWarm) => Err(CallError::Internal(
            "a cold job asked for a warm heap".into(),
        )),
    }
}

/// Checkpoints the live heaps that have been idle for their budget's while, until the
/// runtime stops or is dropped. A heap in use is left for later.
async fn checkpoint_idle_heaps(heaps: std::sync::Weak<Heaps>) {
    let tick = match heaps.upgrade() {
        Some(heaps) => {
            (heaps.checkpoints.idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(5))
        }
        None => return,
    };
    loop {
        tokio::time::sleep(tick).await;
        let Some(heaps) = heaps.upgrade() else {
            return;
        };
        if heaps.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let idle = heaps.checkpoints.idle;
        let due: Vec<String> = heaps
            .warm()
            .iter()
            .filter(|(_, warm)| warm.debt.calls > 0 && warm.used.elapsed() >= idle)
            .map(|(name, _)| name.clone())
            .collect();
        for heap in due {
            if heaps.locks.is_held(&heap) {
                continue;
            }
            let _guard = heaps.locks.lock(&heap).await;
            heaps.checkpoint_live(&heap).await;
        }
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

/// Most characters of code or output a record or a history entry keeps as an excerpt.
const EXCERPT_CHARS: usize = 200;

/// The first [`EXCERPT_CHARS`] characters of `text`, marked when cut.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
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
    async fn a_lost_race_runs_again_and_conflicts_only_when_it_always_loses() {
        let (rt, store) = runtime();
        output(&rt, "var n = 1", "h").await;
        // Another host commits the heap's next record first, on every attempt.
        let racing = ScriptedStore::appends_lost(&store);
        let policy = Policy {
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
