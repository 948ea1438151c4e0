//! Where code runs: in worker processes (what the server does), or on a blocking thread of
//! this process (tests, benchmarks, embedding).

use std::path::PathBuf;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::engine::{self, Completion, Console, Limits, RunError};
use crate::worker::WorkerPool;

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

/// How an execution ended.
#[derive(Debug)]
pub struct Outcome {
    /// The completion, and for stateful runs the sealed heap afterwards.
    pub result: Result<(Completion, Option<Bytes>), RunError>,
    /// What the code printed, also when it failed.
    pub console: Console,
}

impl Outcome {
    /// An execution that failed before any code ran.
    pub fn failed(error: RunError) -> Self {
        Self {
            result: Err(error),
            console: Console::default(),
        }
    }
}

/// Runs jobs.
pub enum Executor {
    /// In this process, on tokio's blocking pool. V8 cannot overlap a snapshot creator with
    /// any other isolate in one process, so stateful runs here go one at a time, and a V8
    /// abort takes the whole process down.
    InProcess,
    /// In supervised worker processes, one job per worker at a time.
    Workers(WorkerPool),
}

impl Executor {
    /// A pool of up to `size` worker processes running `program --worker`.
    pub fn workers(program: PathBuf, size: usize) -> Self {
        Executor::Workers(WorkerPool::new(program, size))
    }

    /// Gets ready for the first job (starts a worker process ahead of time).
    pub fn prewarm(&self) {
        if let Executor::Workers(pool) = self {
            pool.prewarm();
        }
    }

    /// Runs `job` to completion.
    pub async fn run(&self, job: Job) -> Outcome {
        match self {
            Executor::InProcess => tokio::task::spawn_blocking(move || run_here(job, |_| {}))
                .await
                .unwrap_or_else(|e| {
                    Outcome::failed(RunError::Crashed(format!("execution thread failed: {e}")))
                }),
            Executor::Workers(pool) => pool.run(job).await,
        }
    }
}

/// Runs a job on the current thread, reporting its stages to `stage` as it reaches them.
pub fn run_here(job: Job, mut stage: impl FnMut(Stage)) -> Outcome {
    let started = || stage(Stage::Started);
    match job.target {
        Target::Heap { name, sealed } => {
            let run = engine::run_stateful(&job.code, &name, sealed.as_ref(), job.limits, started);
            Outcome {
                result: run
                    .result
                    .map(|(completion, heap)| (completion, Some(heap))),
                console: run.console,
            }
        }
        Target::Stateless => {
            let run = engine::run_stateless(&job.code, job.limits, started);
            Outcome {
                result: run.result.map(|completion| (completion, None)),
                console: run.console,
            }
        }
    }
}
