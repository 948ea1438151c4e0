//! Where code runs: in worker processes (what the server does), or on a blocking thread of
//! this process (tests, benchmarks, embedding).

use std::path::PathBuf;

use crate::engine::RunError;
use crate::job::{run_here, Job, Outcome};
use crate::worker::WorkerPool;

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
