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
mod owner;
mod quotas;

pub use owner::{Owner, Tenant, TENANT_PREFIX};
pub use quotas::{Quota, QuotaExceeded, QuotaLimits, Quotas, TenantStats};

use crate::approval::RunApprovals;
use crate::engine::{Completion, JsException, Limits, Outcome, RunError, BYTES_PER_TOKEN};
use crate::envelope::{Codec, EnvelopeError};
use crate::executor::Executor;
use crate::host_call::HostCalls;
use crate::host_call::{HostCall, HostError, HostErrorKind, HostReply, PendingReply};
use crate::job::{Caller, HeapRan, Job, Keep, Target};
use crate::metrics::{self, CallMetrics, StorageStats};
use crate::net::{Net, RunNet};
use crate::storage::{HeapLocks, HeapMeta, Store, StoreError};
use crate::upstream::Upstreams;
use heaps::{checkpoint_idle_heaps, Call, Commit, Heaps};
use quotas::Tenants;

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
    /// A tenant's quota refused the call before it ran.
    #[error("{0}")]
    Quota(#[from] QuotaExceeded),
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
            CallError::Quota(_) => "quota",
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
            CallError::Quota(exceeded) => exceeded.quota.passes(),
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
    /// The upstream servers whose tools code may call, if any.
    tools: Option<Arc<Upstreams>>,
    /// The network code may reach with `fetch`, if any.
    net: Option<Arc<Net>>,
    /// Longest a person may take to answer whether a call from code may go out.
    approval_timeout: Duration,
    /// Tenants' quotas and usage.
    tenants: Tenants,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// Heaps whose last error is remembered, at most (the least recently failed go first).
const LAST_ERRORS: usize = 10_000;

/// Longest a person may take to answer, unless told otherwise (`--approval-timeout-secs`).
const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(300);

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
            tools: None,
            net: None,
            approval_timeout: DEFAULT_APPROVAL_TIMEOUT,
            tenants: Tenants::default(),
        }
    }

    /// The same runtime, with `quotas` for every tenant.
    pub fn with_quotas(mut self, quotas: Quotas) -> Self {
        self.tenants = Tenants::new(quotas);
        self
    }

    /// The same runtime, with `upstreams`' tools for code to call (code mode).
    pub fn with_tools(mut self, upstreams: Arc<Upstreams>) -> Self {
        self.tools = Some(upstreams);
        self
    }

    /// The upstream servers whose tools code may call, if any.
    pub fn tools(&self) -> Option<&Arc<Upstreams>> {
        self.tools.as_ref()
    }

    /// The same runtime, with `fetch` under `net`'s egress policy.
    pub fn with_net(mut self, net: Arc<Net>) -> Self {
        self.net = Some(net);
        self
    }

    /// The network code may reach, if any.
    pub fn net(&self) -> Option<&Arc<Net>> {
        self.net.as_ref()
    }

    /// The same runtime, where a person has `timeout` to answer whether a call from code may
    /// go out (`--approval-timeout-secs`).
    pub fn with_approval_timeout(mut self, timeout: Duration) -> Self {
        self.approval_timeout = timeout;
        self
    }

    /// Longest a person may take to answer whether a call from code may go out.
    pub fn approval_timeout(&self) -> Duration {
        self.approval_timeout
    }

    /// Whether the policy leaves any call from code to a person (`--ask-tools`, `--ask-net`).
    pub fn asks(&self) -> bool {
        self.tools.as_ref().is_some_and(|tools| tools.asks())
            || self.net.as_ref().is_some_and(|net| net.asks())
    }

    /// Who answers one run's host calls: its tools and its network, counted per run, with
    /// `caller`'s approver asking about the calls the policy leaves to a person.
    fn host_calls(&self, caller: &Caller) -> Option<Arc<dyn HostCalls>> {
        if self.tools.is_none() && self.net.is_none() {
            return None;
        }
        let approvals = caller
            .approver
            .clone()
            .map(|approver| RunApprovals::new(approver, self.approval_timeout));
        Some(Arc::new(RunHost {
            tools: self
                .tools
                .as_ref()
                .map(|tools| tools.for_run(approvals.clone())),
            net: self.net.as_ref().map(|net| net.for_run(approvals.clone())),
            approvals,
        }))
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

    /// A tenant's own figures: its heaps and stored bytes as the store lists them now, its
    /// calls and its quotas.
    pub async fn tenant_stats(&self, tenant: &Tenant) -> Result<TenantStats, CallError> {
        let listing = self.list_tenant(tenant).await?;
        let bytes = listing
            .values()
            .fold(0u64, |sum, size| sum.saturating_add(*size));
        Ok(self.tenants.stats(tenant, listing.len() as u64, bytes))
    }

    /// A tenant's heaps as the store lists them now (stored key and size), kept for the
    /// storage quotas.
    async fn list_tenant(&self, tenant: &Tenant) -> Result<quotas::Listing, CallError> {
        let owner = Owner::Tenant(tenant.clone());
        let listed = self
            .heaps
            .storage
            .list(&owner.list_prefix(""))
            .await
            .map_err(CallError::Listing)?;
        let listing: quotas::Listing = Arc::new(
            listed
                .into_iter()
                .filter(|m| owner.name_of(&m.name).is_some())
                .map(|m| (m.name, m.size))
                .collect(),
        );
        self.tenants.listed(tenant, Arc::clone(&listing));
        Ok(listing)
    }

    /// Whether a tenant may write heap `key` (new when the store does not hold it) under its
    /// storage quotas. The server's own heaps have none.
    async fn may_store(&self, owner: &Owner, key: &str) -> Result<(), CallError> {
        let Some(tenant) = owner.tenant() else {
            return Ok(());
        };
        let quotas = self.tenants.quotas();
        if quotas.heaps.is_none() && quotas.stored_bytes.is_none() {
            return Ok(());
        }
        let listing = match self.tenants.listing(tenant) {
            Some(listing) => listing,
            None => self.list_tenant(tenant).await?,
        };
        let bytes = listing
            .values()
            .fold(0u64, |sum, size| sum.saturating_add(*size));
        let exists = listing.contains_key(key);
        self.tenants
            .may_store(tenant, listing.len() as u64, bytes, !exists)?;
        if !exists {
            self.tenants.forget_listing(tenant);
        }
        Ok(())
    }

    /// Everything counted, as Prometheus text.
    pub fn metrics_text(&self) -> String {
        let storage = &self.heaps.storage;
        let mut text = metrics::render(&storage.stats(), storage.metrics(), &self.call_metrics);
        if let Some(tools) = &self.tools {
            text.push_str(&tools.metrics().render());
        }
        if let Some(net) = &self.net {
            text.push_str(&net.metrics().render());
        }
        text.push_str(&self.tenants.render());
        text
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

    /// Runs `code` without any heap; `caller`'s listener, if any, hears its console and
    /// progress as they happen.
    pub async fn run_stateless(
        &self,
        owner: &Owner,
        code: String,
        call: CallLimits,
        caller: Caller,
    ) -> CallOutcome<Completion> {
        let started = Instant::now();
        let reply = match self.tenants.admit(owner.tenant()) {
            Ok(_admitted) => self.stateless(code, call, caller).await,
            Err(e) => CallOutcome::failed(e.into()),
        };
        self.count(started, &reply);
        reply
    }

    async fn stateless(
        &self,
        code: String,
        call: CallLimits,
        caller: Caller,
    ) -> CallOutcome<Completion> {
        let limits = match self.limits_for(call) {
            Ok(limits) => limits,
            Err(e) => return CallOutcome::failed(e),
        };
        let job = Job {
            code,
            target: Target::Stateless,
            limits,
            host: self.host_calls(&caller),
            live: caller.live,
        };
        let outcome = self.executor.run_stateless(job).await;
        outcome.map_result(|result| result.map_err(CallError::from))
    }

    /// Runs `code` on heap `heap` (a new heap with a generated name when `None`) and stores
    /// the heap's new state, unless the code failed: after the answer, or before it with
    /// [`SaveMode::Sync`].
    pub async fn run_on_heap(
        &self,
        owner: &Owner,
        code: String,
        heap: Option<String>,
        call: CallLimits,
    ) -> CallOutcome<HeapRun> {
        self.run_saving_to(owner, code, heap, SaveTo::Same, call, Caller::default())
            .await
    }

    /// [`Runtime::run_on_heap`], storing the new state where `save_to` says: with
    /// [`SaveTo::Fork`], the code runs on `heap`'s state (an empty heap for `None`) and the
    /// result becomes a new heap, `heap` unchanged. `caller`'s listener, if any, hears the
    /// console and progress as they happen (again for a run that loses a race and runs
    /// again).
    pub async fn run_saving_to(
        &self,
        owner: &Owner,
        code: String,
        heap: Option<String>,
        save_to: SaveTo,
        call: CallLimits,
        caller: Caller,
    ) -> CallOutcome<HeapRun> {
        let started = Instant::now();
        let reply = match self.tenants.admit(owner.tenant()) {
            Ok(_admitted) => self.on_heap(owner, code, heap, save_to, call, caller).await,
            Err(e) => CallOutcome::failed(e.into()),
        };
        self.count(started, &reply);
        // The caller knows its heaps by name; the store, by key.
        reply.map_result(|result| match result {
            Ok(run) => Ok(HeapRun {
                heap: owner.name_of(&run.heap).unwrap_or_default().to_string(),
                forked_from: run
                    .forked_from
                    .and_then(|key| owner.name_of(&key).map(str::to_string)),
                notice: run.notice.map(|notice| owner.unkey(&notice)),
                ..run
            }),
            Err(e) => Err(owner.unkey_error(e)),
        })
    }

    async fn on_heap(
        &self,
        owner: &Owner,
        code: String,
        heap: Option<String>,
        save_to: SaveTo,
        call: CallLimits,
        caller: Caller,
    ) -> CallOutcome<HeapRun> {
        // A fork without a source starts from an empty heap.
        let source = match heap.as_deref().map(|name| owner.key(name)).transpose() {
            Ok(source) => source,
            Err(e) => return CallOutcome::failed(e),
        };
        let (heap, fork) = match &save_to {
            SaveTo::Same => match source
                .clone()
                .map_or_else(|| owner.key(&generated_name()), Ok)
            {
                Ok(heap) => (heap, None),
                Err(e) => return CallOutcome::failed(e),
            },
            SaveTo::Fork { to, overwrite } => {
                let to = match owner.key(to) {
                    Ok(to) => to,
                    Err(e) => return CallOutcome::failed(e),
                };
                if source.as_ref() == Some(&to) {
                    return CallOutcome::failed(CallError::SameHeap { heap: to });
                }
                (to, Some((source.clone(), *overwrite)))
            }
        };
        let limits = match self.limits_for(call) {
            Ok(limits) => limits,
            Err(e) => return CallOutcome::failed(e),
        };
        if let Err(e) = self.may_store(owner, &heap).await {
            return CallOutcome::failed(e);
        }
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
                live: caller.live.clone(),
                host: self.host_calls(&caller),
            };
            let ran_at = Instant::now();
            let ran = self.executor.run_on_heap(job).await;
            let debt = loaded.debt.with_call(code.len(), ran_at.elapsed());
            let (completion, console, new_state) = match ran {
                HeapRan::Succeeded {
                    completion,
                    console,
                    state,
                } => (completion, console, state),
                // Evicted, or its worker busy or gone: load it from the store.
                HeapRan::NotWarm => {
                    self.heaps.forget(&heap);
                    continue;
                }
                // A committed call did not replay: the heap goes back to the call before it
                // (once), and this call runs on that state, saying what was lost.
                HeapRan::Failed {
                    error: RunError::Diverged { seq, why },
                    console,
                } if fork.is_none() && lost.is_none() => {
                    match self.heaps.recover(&heap, seq, &why).await {
                        Ok(notice) => {
                            lost = Some(notice);
                            continue;
                        }
                        Err(e) => {
                            return Outcome {
                                result: Err(e),
                                console,
                            }
                        }
                    }
                }
                HeapRan::Failed { error, console } => {
                    if let (RunError::Exception(exception), None) = (&error, &fork) {
                        self.last_errors().put(heap.clone(), exception.clone());
                    }
                    let error = match error {
                        RunError::Unrestorable(reason) => CallError::Unrestorable { heap, reason },
                        e => e.into(),
                    };
                    return Outcome {
                        result: Err(error),
                        console,
                    };
                }
            };
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
            // Running it again would call its tools again.
            let called_tools = !completion.tape.replies.is_empty();
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
                Err(CallError::Conflict { .. })
                    if retries < self.policy.conflict_retries && !called_tools =>
                {
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

    /// All of `owner`'s heaps, sorted by name, including every state answered so far.
    pub async fn list(&self, owner: &Owner) -> Result<Vec<Listed>, CallError> {
        self.settled().await;
        let heaps = self
            .heaps
            .storage
            .list(&owner.list_prefix(""))
            .await
            .map_err(|e| owner.unkey_error(CallError::Listing(e)))?;
        let mut listed: Vec<Listed> = heaps
            .into_iter()
            .filter_map(|meta| {
                let name = owner.name_of(&meta.name)?.to_string();
                let listed = self.heaps.listed(meta);
                Some(Listed {
                    meta: HeapMeta {
                        name,
                        ..listed.meta
                    },
                    ..listed
                })
            })
            .collect();
        listed.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        if let Some(tenant) = owner.tenant() {
            let bytes = listed.iter().map(|l| l.meta.size).sum();
            self.tenants.measured(tenant, listed.len() as u64, bytes);
        }
        Ok(listed)
    }

    /// Up to `limit` heaps whose names sort after `after`, by name, and the cursor (the last
    /// name) to pass as `after` for the next page, if there is one.
    pub async fn list_page(
        &self,
        owner: &Owner,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Listed>, Option<String>), CallError> {
        let limit = limit.max(1);
        let mut heaps = self.list(owner).await?;
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
        owner: &Owner,
        prefix: &str,
        limit: usize,
    ) -> Result<(Vec<String>, usize), CallError> {
        if !prefix.is_empty() && owner.key(prefix).is_err() {
            return Ok((Vec::new(), 0));
        }
        self.settled().await;
        let heaps = self
            .heaps
            .storage
            .list(&owner.list_prefix(prefix))
            .await
            .map_err(|e| owner.unkey_error(CallError::Listing(e)))?;
        // The store lists by prefix (and checks a plugin's listing against it).
        let mut names: Vec<String> = heaps
            .iter()
            .filter_map(|m| owner.name_of(&m.name).map(str::to_string))
            .collect();
        names.sort();
        let total = names.len();
        names.truncate(limit);
        Ok((names, total))
    }

    /// Metadata of one heap, or `None` when it does not exist.
    pub async fn describe(&self, owner: &Owner, heap: &str) -> Result<Option<Listed>, CallError> {
        let key = owner.key(heap)?;
        self.settled().await;
        let heaps = self
            .heaps
            .storage
            .list(&key)
            .await
            .map_err(|e| owner.unkey_error(CallError::storage(&key)(e)))?;
        Ok(heaps.into_iter().find(|m| m.name == key).map(|m| {
            let listed = self.heaps.listed(m);
            Listed {
                meta: HeapMeta {
                    name: heap.to_string(),
                    ..listed.meta
                },
                ..listed
            }
        }))
    }

    /// Copies heap `from` to a new heap `to` (replacing it with `overwrite`), waiting for any
    /// call running on either: a named checkpoint. With `at`, the copy is `from` as it was
    /// right after that record of its journal ([`Runtime::history`]).
    pub async fn copy(
        &self,
        owner: &Owner,
        from: &str,
        to: &str,
        overwrite: bool,
        at: Option<u64>,
    ) -> Result<Copied, CallError> {
        let copied = async {
            let (from_key, to_key) = (owner.key(from)?, owner.key(to)?);
            if from == to {
                return Err(CallError::SameHeap { heap: to.into() });
            }
            self.may_store(owner, &to_key).await?;
            let (first, second) = if from_key < to_key {
                (&from_key, &to_key)
            } else {
                (&to_key, &from_key)
            };
            let _first = self.locks.lock(first).await;
            let _second = self.locks.lock(second).await;
            self.heaps
                .copy(&self.executor, &from_key, &to_key, overwrite, at)
                .await
        };
        match copied.await {
            Ok(copied) => Ok(Copied {
                from: from.to_string(),
                to: to.to_string(),
                ..copied
            }),
            Err(e) => Err(owner.unkey_error(e)),
        }
    }

    /// `heap`'s calls since its stored snapshot, the latest `limit` of them.
    pub async fn history(
        &self,
        owner: &Owner,
        heap: &str,
        limit: usize,
    ) -> Result<History, CallError> {
        let key = owner.key(heap)?;
        let _guard = self.locks.lock(&key).await;
        self.heaps
            .history(&key, limit)
            .await
            .map_err(|e| owner.unkey_error(e))
    }

    /// Deletes a heap, waiting for any call running on it: its snapshot, then its journal.
    pub async fn delete(&self, owner: &Owner, heap: &str) -> Result<(), CallError> {
        let key = owner.key(heap)?;
        let _guard = self.locks.lock(&key).await;
        if let Some(tenant) = owner.tenant() {
            self.tenants.forget_listing(tenant);
        }
        self.last_errors().pop(&key);
        self.heaps
            .delete(&key)
            .await
            .map_err(|e| owner.unkey_error(e))
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
mod tests;

/// One run's host calls: tool calls go to the upstream servers, requests to the network.
#[derive(Debug)]
struct RunHost {
    tools: Option<Arc<crate::upstream::RunTools>>,
    net: Option<RunNet>,
    /// The run's questions to a person, shared by its tools and its network.
    approvals: Option<RunApprovals>,
}

impl HostCalls for RunHost {
    fn paused(&self) -> Duration {
        self.approvals
            .as_ref()
            .map_or(Duration::ZERO, RunApprovals::paused)
    }

    fn call(&self, call: HostCall) -> PendingReply {
        let refuse = |kind, message: &'static str| -> PendingReply {
            Box::pin(async move { HostReply::Failed(HostError::new(kind, message)) })
        };
        match call {
            HostCall::Fetch(request) => match &self.net {
                Some(net) => net.fetch(request),
                None => refuse(
                    HostErrorKind::Denied,
                    "network access is off: this server allows no hosts (see --allow-net)",
                ),
            },
            call => match &self.tools {
                Some(tools) => tools.call(call),
                None => refuse(
                    HostErrorKind::Unavailable,
                    "no MCP servers are configured for this server (see --mcp-config)",
                ),
            },
        }
    }
}
