//! One execution — the code, what it runs on, its limits — and what comes back: shared by
//! the [`crate::executor`] (which picks where jobs run), the [`crate::worker`] processes
//! (which run them) and the [`crate::runtime`], so none of them depends on another.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::engine::live::Batch;
use crate::engine::{self, Completion, Limits, Replay, Run, RunError, Warm};
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
}

/// The receiving end of a job's live reports ([`crate::engine::live`]).
pub type LiveBatches = tokio::sync::mpsc::UnboundedSender<Batch>;

/// What a job runs on.
#[derive(Debug, Clone)]
pub enum Target {
    /// A fresh isolate; nothing is kept.
    Stateless,
    /// A heap, snapshotted after the run (a stateful run).
    Heap {
        /// The heap's name.
        name: String,
        /// Where its state comes from.
        start: Start,
        /// Committed calls its state lacks, in order: run again first ([`catch_up`]).
        replay: Vec<Record>,
    },
}

/// Runs `calls` — committed calls of the heap, in order — again on `warm` before a job's own
/// code, so that the heap catches up with its journal. Each must reproduce what it showed
/// (its fingerprint) from its tape; the first that does not stops the job with
/// [`RunError::Diverged`]. The isolate is made with the job's heap limit; a call committed
/// under a larger one may need more.
pub fn catch_up(mut warm: Warm, calls: &[Record], limits: &Limits) -> Result<Warm, RunError> {
    for record in calls {
        let diverged = |why: String| RunError::Diverged {
            seq: record.seq,
            why,
        };
        let Effect::Call {
            code,
            tape,
            fingerprint,
            ..
        } = &record.effect
        else {
            return Err(diverged("it holds a state, not a call".into()));
        };
        let code = engine::read_code(code).map_err(|e| diverged(e.to_string()))?;
        let (outcome, left) = engine::answer_first(warm.replay(&code, limits, tape.clone()));
        let completion = outcome.result.map_err(|e| diverged(e.to_string()))?;
        if let Replay::Impossible(why) = &completion.tape.replay {
            return Err(diverged(why.clone()));
        }
        if engine::fingerprint(&completion, &outcome.console) != *fingerprint {
            return Err(diverged("its result or console came out different".into()));
        }
        warm = match left {
            Ok(unsaved) => unsaved.into_warm(),
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

/// How far a job got before it ended, for telling a crash of V8 restoring a heap from a crash
/// of the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// The isolate is ready (a heap restored): the code starts now.
    Started,
}

/// How a run ended, as the caller sees it.
pub type Outcome = Run<Completion>;

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

/// What an executor hands back: the outcome as soon as the code has settled, and for a
/// successful stateful run the save that follows.
pub type Ran = Result<(Outcome, Option<Saving>), NotWarm>;
