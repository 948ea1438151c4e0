//! One execution — the code, what it runs on, its limits — and what comes back: shared by
//! the [`crate::executor`] (which picks where jobs run), the [`crate::worker`] processes
//! (which run them) and the [`crate::runtime`], so none of them depends on another.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::engine::live::Batch;
use crate::engine::{
    self, Completion, Console, HeapIsolate, JsException, Limits, Outcome, Replay, RunError, Tape,
};
use crate::record::{Effect, Record};

/// One execution.
#[derive(Debug, Clone)]
pub struct Job {
    /// The JavaScript source.
    pub code: String,
    /// What the code runs on.
    pub target: Target,
    /// Time, memory and output limits.
    pub limits: Limits,
    /// Where console lines and progress go while the code runs, if anyone listens.
    pub live: Option<LiveBatches>,
    /// Who answers the code's host calls (`tools`); without it they fail.
    pub host: Option<std::sync::Arc<dyn crate::host_call::HostCalls>>,
}

/// The receiving end of a job's live reports ([`crate::engine::live`]).
pub type LiveBatches = tokio::sync::mpsc::UnboundedSender<Batch>;

/// What the calling client lends a call while it runs.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// Where console lines and progress go, if anyone listens.
    pub live: Option<LiveBatches>,
    /// Who asks the client's user about the calls from code that the policy leaves to a
    /// person ([`crate::approval`]); without one, such calls are refused.
    pub approver: Option<std::sync::Arc<dyn crate::approval::Approver>>,
}

/// What a job runs on.
#[derive(Debug, Clone)]
pub enum Target {
    /// A fresh isolate; nothing is kept.
    Stateless,
    /// A heap (a stateful run).
    Heap {
        /// The heap's name.
        name: String,
        /// Where its state comes from.
        start: Start,
        /// Committed calls its state lacks, in order: run again first ([`catch_up`]).
        replay: Vec<Record>,
        /// What becomes of the new state after a successful run.
        keep: Keep,
        /// The error of the heap's last failed call, which the code finds as `_error`.
        last_error: Option<JsException>,
    },
}

/// What becomes of a heap's new state after a successful run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Keep {
    /// Kept live in the isolate that ran it, which moves on call by call; no snapshot. An
    /// executor that cannot keep isolates, a heap that runs alone, or a call that cannot be
    /// replayed snapshots instead.
    Live,
    /// Snapshotted (a checkpoint), after the answer.
    Snapshot,
}

/// A committed call to run again: its number in the journal, its code, its tape, and the
/// fingerprint of what it showed.
#[derive(Debug, Clone, Copy)]
pub struct Rerun<'a> {
    /// Its number (for reporting a divergence).
    pub seq: u64,
    /// The code as the caller sent it.
    pub code: &'a str,
    /// What it read from outside the heap.
    pub tape: &'a Tape,
    /// [`engine::fingerprint`] of what it showed.
    pub fingerprint: u64,
}

impl<'a> Rerun<'a> {
    /// The call `record` holds, or why it holds none.
    pub fn of(record: &'a Record) -> Result<Self, RunError> {
        match &record.effect {
            Effect::Call {
                code,
                tape,
                fingerprint,
                ..
            } => Ok(Rerun {
                seq: record.seq,
                code,
                tape,
                fingerprint: *fingerprint,
            }),
            Effect::State { .. } => Err(RunError::Diverged {
                seq: record.seq,
                why: "it holds a state, not a call".into(),
            }),
        }
    }
}

/// Runs `calls` — committed calls of the heap, in order — again on `warm` before a job's own
/// code, so that the heap catches up with its journal. Each must reproduce what it showed
/// (its fingerprint) from its tape; the first that does not stops the job with
/// [`RunError::Diverged`]; one that runs out of time or memory stops it with
/// [`RunError::ReplayFailed`], which loses nothing. The isolate is made with the job's heap
/// limit (a call committed under a larger one may need more); give `limits` the server's time
/// limit, not a call's tighter one.
pub fn catch_up<'a>(
    mut warm: HeapIsolate,
    calls: impl IntoIterator<Item = Result<Rerun<'a>, RunError>>,
    limits: &Limits,
) -> Result<HeapIsolate, RunError> {
    for call in calls {
        let call = call?;
        let diverged = |why: String| RunError::Diverged { seq: call.seq, why };
        let code = engine::read_code(call.code).map_err(|e| diverged(e.to_string()))?;
        let (outcome, left) = engine::answer_first(warm.replay(&code, limits, call.tape.clone()));
        let completion = match outcome.result {
            Ok(completion) => completion,
            // Out of time or memory, or the engine gone: nothing says the record is wrong.
            Err(
                e @ (RunError::Timeout(_)
                | RunError::HeapLimit(_)
                | RunError::Crashed(_)
                | RunError::Unavailable(_)
                | RunError::Snapshot(_)),
            ) => {
                return Err(RunError::ReplayFailed {
                    seq: call.seq,
                    why: e.to_string(),
                })
            }
            Err(e) => return Err(diverged(e.to_string())),
        };
        if let Replay::Impossible(why) = &completion.tape.replay {
            return Err(diverged(why.clone()));
        }
        if engine::fingerprint(&completion, &outcome.console) != call.fingerprint {
            return Err(diverged("its result or console came out different".into()));
        }
        warm = match left {
            Ok(unsaved) => unsaved.into_heap_isolate(),
            Err(_) => return Err(diverged("its isolate was lost".into())),
        };
    }
    Ok(warm)
}

/// Where a heap's state comes from.
#[derive(Debug, Clone)]
pub enum Start {
    /// A new, empty heap.
    New,
    /// A raw V8 snapshot, verified by the runtime (V8 ends the process on anything else).
    Snapshot(Bytes),
    /// A verified snapshot that carries its own read-only heap (a heap from before format 4
    /// of [`crate::envelope`]): V8 crashes restoring it while any other isolate lives in the
    /// process, so it runs alone and is not kept warm.
    Alone(Bytes),
    /// The isolate a worker keeps warm from an earlier run.
    Warm(WarmRef),
}

/// A warm isolate: which worker holds it, and which of its saves it was restored from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmRef {
    /// The worker's number in its pool.
    pub worker: u64,
    /// The save it holds, as numbered by that worker.
    pub generation: u64,
}

/// The warm isolate a job asked for is gone (evicted, its worker busy or dead): run the job
/// again from the stored snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotWarm;

/// A successful stateful run's new state.
#[derive(Debug)]
pub struct Saved {
    /// The raw V8 snapshot (the runtime seals it for the store).
    pub snapshot: Bytes,
    /// Where the state is now warm, if anywhere.
    pub warm: Option<WarmRef>,
}

/// The snapshot of a successful stateful run, being taken after its answer went out.
pub struct Saving(Pin<Box<dyn Future<Output = Result<Saved, RunError>> + Send>>);

impl std::fmt::Debug for Saving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saving").finish_non_exhaustive()
    }
}

impl Saving {
    /// A save that `future` completes.
    pub fn new(future: impl Future<Output = Result<Saved, RunError>> + Send + 'static) -> Self {
        Self(Box::pin(future))
    }

    /// Waits for the snapshot.
    pub async fn finish(self) -> Result<Saved, RunError> {
        self.0.await
    }
}

/// A successful stateful run's new state: being snapshotted, or live in a worker.
#[derive(Debug)]
pub enum NewState {
    /// Its snapshot, being taken after the answer.
    Saving(Saving),
    /// Kept live in the worker's isolate ([`Keep::Live`]): nothing to store but the record.
    Live(WarmRef),
}

/// What an executor hands back: the outcome as soon as the code has settled, and for a
/// successful stateful run its new state. The runtime takes it typed by the job's target:
/// [`crate::executor::Executor::run_stateless`] and [`HeapRan`].
pub type Ran = Result<(Outcome, Option<NewState>), NotWarm>;

/// How a job on a heap ended, as the runtime takes it: every variant is something that
/// happens, and only a success carries the state to commit.
#[derive(Debug)]
pub enum HeapRan {
    /// The code succeeded: what it returned and printed, and the heap's new state.
    Succeeded {
        /// The result.
        completion: Completion,
        /// What the code printed.
        console: Console,
        /// The heap's new state, to commit.
        state: NewState,
    },
    /// The code failed, or the heap could not be brought up: nothing to keep.
    Failed {
        /// Why.
        error: RunError,
        /// What the code printed before it failed.
        console: Console,
    },
    /// The job asked for a heap warm in a worker that no longer holds it: load it from the
    /// store.
    NotWarm,
}
