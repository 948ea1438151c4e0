//! One execution — the code, what it runs on, its limits — and how it ended; and running one
//! on the current thread. Shared by the [`crate::executor`] (which picks where jobs run) and
//! the [`crate::worker`] processes (which run them), so neither depends on the other.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::engine::{self, Completion, Limits, Run};

/// One execution.
#[derive(Debug, Clone)]
pub struct Job {
    /// The JavaScript source.
    pub code: String,
    /// What the code runs on.
    pub target: Target,
    /// Time, memory and output limits.
    pub limits: Limits,
}

/// What a job runs on.
#[derive(Debug, Clone)]
pub enum Target {
    /// A fresh isolate; nothing is kept.
    Stateless,
    /// A heap, snapshotted afterwards (a stateful run).
    Heap {
        /// The heap's name, which its snapshot is bound to.
        name: String,
        /// The sealed heap to restore, or `None` for a new heap. It is verified right before
        /// V8 would see it.
        sealed: Option<Bytes>,
    },
}

/// How far a job got before it ended, for telling a crash of V8 restoring a heap from a crash
/// of the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// The isolate is ready (a heap restored): the code starts now.
    Started,
}

/// How an execution ended: the completion, and for stateful runs the sealed heap afterwards.
pub type Outcome = Run<(Completion, Option<Bytes>)>;

/// Runs a job on the current thread, reporting its stages to `stage` as it reaches them.
pub fn run_here(job: Job, mut stage: impl FnMut(Stage)) -> Outcome {
    let started = || stage(Stage::Started);
    match job.target {
        Target::Heap { name, sealed } => {
            engine::run_stateful(&job.code, &name, sealed.as_ref(), job.limits, started)
                .map_result(|result| result.map(|(completion, heap)| (completion, Some(heap))))
        }
        Target::Stateless => engine::run_stateless(&job.code, job.limits, started)
            .map_result(|result| result.map(|completion| (completion, None))),
    }
}
