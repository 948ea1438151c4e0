//! Where code runs: in worker processes (what the server does), or on a blocking thread of
//! this process (tests, benchmarks, embedding).

use std::path::PathBuf;

use bytes::Bytes;

use crate::engine::{self, Limits, RunError};
use crate::worker::WorkerPool;

/// One execution.
#[derive(Debug, Clone)]
pub struct Job {
    /// The JavaScript source.
    pub code: String,
    /// Snapshot the heap afterwards (a stateful run).
    pub stateful: bool,
    /// The sealed heap to restore, for a stateful run on an existing heap. It is verified
    /// right before V8 would see it.
    pub heap: Option<Bytes>,
    /// Time limit.
    pub limits: Limits,
}

/// A successful execution.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The rendered completion value.
    pub output: String,
    /// The sealed heap after the run (stateful runs only).
    pub sealed_heap: Option<Bytes>,
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

    /// Runs `job` to completion.
    pub async fn run(&self, job: Job) -> Result<Outcome, RunError> {
        match self {
            Executor::InProcess => tokio::task::spawn_blocking(move || run_here(job))
                .await
                .map_err(|e| RunError::Crashed(format!("execution thread failed: {e}")))?,
            Executor::Workers(pool) => pool.run(job).await,
        }
    }
}

/// Runs a job on the current thread.
pub fn run_here(job: Job) -> Result<Outcome, RunError> {
    if job.stateful {
        let outcome = engine::run_stateful(&job.code, job.heap.as_ref(), job.limits)?;
        Ok(Outcome {
            output: outcome.output,
            sealed_heap: Some(outcome.sealed_heap),
        })
    } else {
        Ok(Outcome {
            output: engine::run_stateless(&job.code, job.limits)?,
            sealed_heap: None,
        })
    }
}
