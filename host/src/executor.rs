//! Where code runs: in worker processes (what the server does), or on blocking threads of
//! this process (tests, benchmarks, embedding).

use std::path::PathBuf;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use std::sync::{mpsc, Arc};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::engine::{
    self, live, HeapIsolate, HostLink, Limits, Outcome, Outside, PlainIsolate, RunError, Waited,
};
use crate::host_call::{HostCall, HostCalls, HostError, HostReply, PauseReports};
use crate::job::{
    HeapRan, Job, LiveBatches, NewState, NotWarm, Ran, Rerun, Saved, Saving, Start, Target, WarmRef,
};
use crate::worker::{WorkerPool, WorkerSettings};

/// Runs jobs.
#[derive(Debug)]
pub enum Executor {
    /// In this process, on tokio's blocking pool, with nothing kept warm between jobs. A V8
    /// abort takes the whole process down.
    InProcess,
    /// In supervised worker processes, one job per worker at a time, which keep heaps warm.
    Workers(WorkerPool),
}

impl Executor {
    /// A pool of up to `size` worker processes running `program worker`.
    pub fn workers(program: PathBuf, size: usize, settings: WorkerSettings) -> Self {
        Executor::Workers(WorkerPool::new(program, size, settings))
    }

    /// Gets ready for the first job (starts a worker process ahead of time).
    pub fn prewarm(&self) {
        if let Executor::Workers(pool) = self {
            pool.prewarm();
        }
    }

    /// Tells the worker holding `warm` to drop `heap`'s isolate: it no longer stands for the
    /// heap (deleted, changed elsewhere, or run on another worker).
    pub fn forget(&self, warm: WarmRef, heap: &str) {
        if let Executor::Workers(pool) = self {
            pool.forget(warm.worker, heap);
        }
    }

    /// Snapshots `heap`'s state that `warm` holds live (a checkpoint), rebuilding it under
    /// `limits` if its isolate is gone. [`NotWarm`] when nothing holds that state (or its
    /// worker is busy): only workers keep states live.
    pub async fn checkpoint(
        &self,
        warm: WarmRef,
        heap: &str,
        limits: Limits,
    ) -> Result<Result<Saved, RunError>, NotWarm> {
        match self {
            Executor::InProcess => Err(NotWarm),
            Executor::Workers(pool) => pool.checkpoint(warm, heap, limits).await,
        }
    }

    /// Runs `job`: the outcome comes back once the code has settled; a successful stateful
    /// run's new state is live in a worker, or its snapshot follows through a [`Saving`]
    /// (always in process, where nothing is kept).
    pub async fn run(&self, job: Job) -> Ran {
        match self {
            Executor::InProcess => run_in_process(job).await,
            Executor::Workers(pool) => pool.run(job).await,
        }
    }

    /// Runs a job without a heap ([`Target::Stateless`]): its outcome.
    pub async fn run_stateless(&self, job: Job) -> Outcome {
        debug_assert!(matches!(job.target, Target::Stateless));
        match self.run(job).await {
            Ok((outcome, _)) => outcome,
            // Only a job for a warm heap can find it gone; a stateless one asks for none.
            Err(NotWarm) => Outcome::failed(RunError::Unavailable(
                "no worker could take the call".into(),
            )),
        }
    }

    /// Runs a job on a heap ([`Target::Heap`]): a success with the state to commit, a
    /// failure, or [`HeapRan::NotWarm`].
    pub async fn run_on_heap(&self, job: Job) -> HeapRan {
        debug_assert!(matches!(job.target, Target::Heap { .. }));
        match self.run(job).await {
            Err(NotWarm) => HeapRan::NotWarm,
            Ok((outcome, state)) => match (outcome.result, state) {
                (Ok(completion), Some(state)) => HeapRan::Succeeded {
                    completion,
                    console: outcome.console,
                    state,
                },
                (Err(error), _) => HeapRan::Failed {
                    error,
                    console: outcome.console,
                },
                // Both executors hand a successful run on a heap its state; one without is
                // a run whose state is lost, and fails as a crash would.
                (Ok(_), None) => HeapRan::Failed {
                    error: RunError::Crashed("the run's new state was lost".into()),
                    console: outcome.console,
                },
            },
        }
    }
}

/// Held by every in-process job while its isolates live: shared, or exclusively by a heap
/// with its own read-only heap ([`Start::Alone`]).
static ISOLATES: RwLock<()> = RwLock::new(());

#[allow(dead_code)] // held for its lifetime only
enum Isolates<'a> {
    Shared(RwLockReadGuard<'a, ()>),
    Alone(RwLockWriteGuard<'a, ()>),
}

/// Calls `run` with what the job's code reaches outside: a live sender whose batches go to
/// `listener`, if there is one (they all precede the answer), and a link to `host`.
fn with_outside<T>(
    listener: Option<LiveBatches>,
    host: Option<Arc<dyn HostCalls>>,
    run: impl FnOnce(Outside) -> T,
) -> T {
    let link = host.map(|host| Box::new(InProcessLink::new(host)) as Box<dyn HostLink>);
    match listener {
        Some(listener) => live::relayed(
            move |batch| {
                let _ = listener.send(batch);
            },
            |live| run(Outside { live, host: link }),
        ),
        None => run(Outside {
            live: None,
            host: link,
        }),
    }
}

/// The way to the host of a job run in this process: each call is a task on the runtime,
/// whose reply comes back over a channel. The calls still going when the run ends are
/// dropped with it.
struct InProcessLink {
    host: Arc<dyn HostCalls>,
    runtime: Option<tokio::runtime::Handle>,
    send: mpsc::Sender<(u32, HostReply)>,
    replies: mpsc::Receiver<(u32, HostReply)>,
    calls: Vec<(u32, tokio::task::AbortHandle)>,
    /// The host's time waiting for a person, as last taken.
    reported: PauseReports,
}

impl InProcessLink {
    fn new(host: Arc<dyn HostCalls>) -> Self {
        let (send, replies) = mpsc::channel();
        Self {
            host,
            runtime: tokio::runtime::Handle::try_current().ok(),
            send,
            replies,
            calls: Vec::new(),
            reported: PauseReports::default(),
        }
    }
}

impl HostLink for InProcessLink {
    fn start(&mut self, id: u32, call: &HostCall) -> Result<(), HostError> {
        let Some(runtime) = &self.runtime else {
            return Err(HostError::new(
                crate::host_call::HostErrorKind::Unavailable,
                "no async runtime to make host calls on",
            ));
        };
        let reply = self.host.call(call.clone());
        let send = self.send.clone();
        let task = runtime.spawn(async move {
            let _ = send.send((id, reply.await));
        });
        self.calls.push((id, task.abort_handle()));
        Ok(())
    }

    fn cancel(&mut self, id: u32) {
        for (_, call) in self.calls.iter().filter(|(call, _)| *call == id) {
            call.abort();
        }
    }

    fn paused(&mut self) -> Duration {
        self.reported.newly(Some(self.host.as_ref()))
    }

    fn wait(&mut self, wait: Duration) -> Waited {
        match self.replies.recv_timeout(wait) {
            Ok((id, reply)) => Waited::Reply(id, reply),
            Err(mpsc::RecvTimeoutError::Timeout) => Waited::Nothing,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Waited::Lost("the replies' channel closed".into())
            }
        }
    }
}

impl Drop for InProcessLink {
    fn drop(&mut self) {
        for (_, call) in &self.calls {
            call.abort();
        }
    }
}

async fn run_in_process(job: Job) -> Ran {
    let (start, replay, last_error) = match &job.target {
        Target::Stateless => (None, Vec::new(), None),
        Target::Heap {
            start,
            replay,
            last_error,
            ..
        } => (Some(start.clone()), replay.clone(), last_error.clone()),
    };
    let alone = matches!(start, Some(Start::Alone(_)));
    let snapshot = match start {
        Some(Start::Warm(_)) => return Err(NotWarm),
        Some(Start::Snapshot(bytes) | Start::Alone(bytes)) => Some(Some(bytes)),
        Some(Start::New) => Some(None),
        None => None,
    };
    let stateful = snapshot.is_some();
    let (answer, outcome) = oneshot::channel::<Outcome>();
    let (save, saved) = oneshot::channel::<Result<Saved, RunError>>();
    let thread = tokio::task::spawn_blocking(move || {
        let _isolates = if alone {
            Isolates::Alone(ISOLATES.write().unwrap_or_else(PoisonError::into_inner))
        } else {
            Isolates::Shared(ISOLATES.read().unwrap_or_else(PoisonError::into_inner))
        };
        let code = match engine::read_code(&job.code) {
            Ok(code) => code,
            Err(e) => return drop(answer.send(Outcome::failed(e))),
        };
        let Some(snapshot) = snapshot else {
            match PlainIsolate::new(&job.limits) {
                Ok(fresh) => {
                    let run = |outside| fresh.run(&code, &job.limits, outside);
                    let (run, used) = with_outside(job.live.clone(), job.host.clone(), run);
                    let _ = answer.send(run);
                    // Disposed of after the answer.
                    drop(used);
                }
                Err(e) => drop(answer.send(Outcome::failed(e))),
            }
            return;
        };
        let warm = HeapIsolate::new(snapshot, &job.limits)
            .and_then(|warm| crate::job::catch_up(warm, replay.iter().map(Rerun::of), &job.limits));
        let warm = match warm {
            Ok(warm) => warm,
            Err(e) => return drop(answer.send(Outcome::failed(e))),
        };
        let run = with_outside(job.live.clone(), job.host.clone(), |outside| {
            warm.run_after(&code, &job.limits, outside, last_error)
        });
        let (outcome, left) = engine::answer_first(run);
        // The answer goes first; the snapshot follows.
        let _ = answer.send(outcome);
        if let Ok(unsaved) = left {
            let _ = save.send(unsaved.save().map(|snapshot| Saved {
                snapshot,
                warm: None,
            }));
        }
    });
    let outcome = match outcome.await {
        Ok(outcome) => outcome,
        Err(_) => {
            let why = match thread.await {
                Err(e) => format!("execution thread failed: {e}"),
                Ok(()) => "execution thread ended without an answer".into(),
            };
            return Ok((Outcome::failed(RunError::Crashed(why)), None));
        }
    };
    let saving = (stateful && outcome.result.is_ok()).then(|| {
        NewState::Saving(Saving::new(async move {
            saved
                .await
                .unwrap_or_else(|_| Err(RunError::Snapshot("the execution thread ended".into())))
        }))
    });
    Ok((outcome, saving))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_call::PendingReply;

    /// Answers every tool call with its arguments as structured content, after a pause.
    #[derive(Debug)]
    struct Echo;

    impl HostCalls for Echo {
        fn call(&self, call: HostCall) -> PendingReply {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                match call {
                    HostCall::Tool { arguments, .. } => HostReply::Answer(format!(
                        "{{\"content\":[],\"structuredContent\":{arguments}}}"
                    )),
                    _ => HostReply::Answer("\"\"".into()),
                }
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_in_this_process_makes_its_host_calls_on_the_runtime() {
        let job = Job {
            code: "(await Promise.all([1, 2].map((n) => tools.s.t({ n })))).map((r) => r.n).join()"
                .into(),
            target: Target::Stateless,
            limits: Limits::default(),
            live: None,
            host: Some(Arc::new(Echo)),
        };
        let outcome = Executor::InProcess.run_stateless(job).await;
        assert_eq!(outcome.result.unwrap().output, "1,2");
    }
}
