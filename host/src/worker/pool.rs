//! The host's side: a bounded pool of worker processes.

use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::BufReader;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

use super::protocol::{decode_console, read_frame, write_frame, Answer, Request, RequestTarget};
use crate::engine::{Completion, RunError};
use crate::job::{Job, Outcome, Stage, Target};

/// How long past its own time limit a worker may take to answer before it is killed.
const GRACE: Duration = Duration::from_secs(5);

/// Up to `size` worker processes, started on demand and reused. Jobs beyond `size` wait in
/// arrival order. A worker that dies, or whose caller goes away (cancellation), is killed
/// and replaced by a fresh one on a later job.
pub struct WorkerPool {
    program: PathBuf,
    slots: Semaphore,
    idle: Mutex<Vec<Worker>>,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl WorkerPool {
    /// A pool running `program --worker`, at most `size` at once.
    pub fn new(program: PathBuf, size: usize) -> Self {
        Self {
            program,
            slots: Semaphore::new(size.max(1)),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `job` on a free worker.
    pub async fn run(&self, job: Job) -> Outcome {
        let Ok(_slot) = self.slots.acquire().await else {
            return Outcome::failed(RunError::Unavailable("the worker pool is shut down".into()));
        };
        let deadline = job.limits.timeout + GRACE;
        let mut reused = self.take_idle();
        loop {
            let fresh = reused.is_none();
            let mut worker = match reused.take() {
                Some(worker) => worker,
                None => match Worker::spawn(&self.program) {
                    Ok(worker) => worker,
                    Err(e) => return Outcome::failed(e),
                },
            };
            return match tokio::time::timeout(deadline, worker.call(&job)).await {
                Ok(Ok(outcome)) => {
                    self.idle
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(worker);
                    outcome
                }
                // An idle worker that died before it could take the job (killed while
                // waiting, say) says nothing about the job: run it on a fresh one.
                Ok(Err(Failure::BeforeJob(_))) if !fresh => continue,
                // It died while V8 restored the heap: the snapshot is at fault, not the code.
                Ok(Err(Failure::BeforeStart(e))) if restores(&job) => {
                    Outcome::failed(RunError::Unrestorable(worker.death(e).await))
                }
                // The worker died or garbled its answer: report how, and let it go.
                Ok(Err(
                    Failure::BeforeJob(e) | Failure::BeforeStart(e) | Failure::DuringJob(e),
                )) => Outcome::failed(RunError::Crashed(worker.death(e).await)),
                // It did not stop at its own time limit: kill it.
                Err(_) => Outcome::failed(RunError::Timeout(job.limits.timeout)),
            };
        }
        // A worker not put back is dropped here, which kills its process.
    }
}

fn restores(job: &Job) -> bool {
    matches!(
        job.target,
        Target::Heap {
            sealed: Some(_),
            ..
        }
    )
}

/// How a call to a worker went wrong.
enum Failure {
    /// The job could not be handed over: the worker was gone already.
    BeforeJob(std::io::Error),
    /// The worker took the job and failed before its code started (restoring the heap).
    BeforeStart(std::io::Error),
    /// The worker failed while running the code, or answered garbage.
    DuringJob(std::io::Error),
}

impl WorkerPool {
    /// Starts one worker ahead of the first call, so that it pays no start-up (V8 initialises
    /// while the worker waits). A failure here is only logged: the first call will try again.
    pub fn prewarm(&self) {
        match Worker::spawn(&self.program) {
            Ok(worker) => self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(worker),
            Err(e) => tracing::warn!("could not start a worker ahead of time: {e}"),
        }
    }

    /// An idle worker that is still alive, if any.
    fn take_idle(&self) -> Option<Worker> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(mut worker) = idle.pop() {
            if matches!(worker.child.try_wait(), Ok(None)) {
                return Some(worker);
            }
        }
        None
    }
}

impl Worker {
    fn spawn(program: &PathBuf) -> Result<Self, RunError> {
        // Workers get no environment but the logging settings: JavaScript cannot read it, and
        // secrets such as storage credentials or the auth token have no business there.
        let logging = std::env::vars().filter(|(k, _)| k == "RUST_LOG" || k == "RUST_BACKTRACE");
        let mut child = Command::new(program)
            .arg("--worker")
            .env_clear()
            .envs(logging)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                RunError::Unavailable(format!("cannot start worker {}: {e}", program.display()))
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(RunError::Unavailable("worker started without pipes".into()));
        };
        Ok(Self {
            child,
            stdin,
            stdout: BufReader::with_capacity(1 << 16, stdout),
        })
    }

    /// Sends one job and reads the answer. A failure means the worker is unusable.
    async fn call(&mut self, job: &Job) -> Result<Outcome, Failure> {
        let (target, sealed) = match &job.target {
            Target::Stateless => (RequestTarget::Stateless, None),
            Target::Heap { name, sealed } => (
                RequestTarget::Heap {
                    name: name.clone(),
                    restore: sealed.is_some(),
                },
                sealed.as_deref(),
            ),
        };
        let request = Request {
            target,
            limits: job.limits,
        };
        let mut sections: Vec<&[u8]> = vec![job.code.as_bytes()];
        sections.extend(sealed);
        write_frame(&mut self.stdin, &request, &sections)
            .await
            .map_err(Failure::BeforeJob)?;
        let mut started = false;
        loop {
            // A worker that stops talking mid-call has died.
            let frame = read_frame::<Answer>(&mut self.stdout)
                .await
                .and_then(|frame| frame.ok_or_else(|| io::ErrorKind::UnexpectedEof.into()));
            let (answer, sections) = match frame {
                Ok(frame) => frame,
                Err(e) if started => return Err(Failure::DuringJob(e)),
                Err(e) => return Err(Failure::BeforeStart(e)),
            };
            let done = match answer {
                Answer::Stage(Stage::Started) => {
                    started = true;
                    continue;
                }
                Answer::Done(done) => done,
            };
            let mut sections = sections.into_iter();
            let output = sections.next().unwrap_or_default();
            let console = sections.next().unwrap_or_default();
            let heap = sections.next().map(Bytes::from);
            let console =
                decode_console(&console, done.console_truncated).map_err(Failure::DuringJob)?;
            let result = done.result.map(|finished| {
                let completion = Completion {
                    output: String::from_utf8(output)
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                    output_truncated: finished.output_truncated,
                    pending_timers: finished.pending_timers,
                };
                (completion, heap)
            });
            return Ok(Outcome { result, console });
        }
    }

    /// Says why a worker stopped answering.
    async fn death(mut self, io_error: std::io::Error) -> String {
        // The pipe closing usually means the process is exiting; give it a moment to be reaped.
        let status = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
        match status {
            Ok(Ok(status)) => describe_exit(status),
            _ => {
                let _ = self.child.start_kill();
                format!("worker stopped answering: {io_error}")
            }
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(5) => "V8 stopped the worker process on a fatal error (SIGTRAP)".into(),
        Some(6) => "V8 aborted the worker process (SIGABRT)".into(),
        Some(9) => "the worker process was killed (SIGKILL)".into(),
        Some(11) => "the worker process crashed (SIGSEGV)".into(),
        Some(signal) => format!("the worker process died of signal {signal}"),
        None => format!("the worker process exited with {status}"),
    }
}
