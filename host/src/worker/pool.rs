//! The host's side: a bounded pool of worker processes, with affinity: a job for a heap that
//! a worker holds warm goes to that worker when it is free.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::BufReader;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::protocol::{
    decode_console, encode_records, host_call_of, read_frame, write_frame, Answer, Delivery,
    Generation, Request, RequestStart, RequestTarget,
};
use super::WorkerSettings;
use crate::engine::{Completion, Outcome, RunError};
use crate::host_call::{HostError, HostErrorKind, HostReply};
use crate::job::{Job, NewState, NotWarm, Ran, Saved, Saving, Start, Target, WarmRef};

/// How long past its own time limit a worker may take to answer before it is killed.
const GRACE: Duration = Duration::from_secs(5);
/// How long a worker may take to snapshot a heap after its run (V8 needs seconds for heaps
/// of tens of MB).
const SAVE_DEADLINE: Duration = Duration::from_secs(300);

/// Up to `size` worker processes, started on demand and reused. Jobs beyond `size` wait in
/// arrival order. A worker that dies, or whose caller goes away (cancellation), is killed
/// and replaced by a fresh one on a later job.
pub struct WorkerPool {
    program: PathBuf,
    settings: WorkerSettings,
    slots: Arc<Semaphore>,
    idle: Arc<Mutex<Vec<Worker>>>,
    numbers: AtomicU64,
    /// Heaps each worker should drop, by worker number: sent with its next job.
    forget: Mutex<HashMap<u64, Vec<String>>>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool").finish_non_exhaustive()
    }
}

struct Worker {
    number: u64,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl WorkerPool {
    /// A pool running `program worker`, at most `size` at once.
    pub fn new(program: PathBuf, size: usize, settings: WorkerSettings) -> Self {
        Self {
            program,
            settings,
            slots: Arc::new(Semaphore::new(size.max(1))),
            idle: Arc::new(Mutex::new(Vec::new())),
            numbers: AtomicU64::new(0),
            forget: Mutex::default(),
        }
    }

    /// Asks worker `number` to drop `heap`'s warm isolate with its next job.
    pub fn forget(&self, number: u64, heap: &str) {
        let mut forget = self.forget.lock().unwrap_or_else(PoisonError::into_inner);
        let names = forget.entry(number).or_default();
        if !names.iter().any(|name| name == heap) {
            names.push(heap.to_string());
        }
    }

    /// The heaps worker `number` should drop, taken to send with its next request.
    fn forgotten_by(&self, number: u64) -> Vec<String> {
        self.forget
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&number)
            .unwrap_or_default()
    }

    /// Runs `job` on a free worker: the one holding its heap warm, if the job asks for that.
    pub async fn run(&self, job: Job) -> Ran {
        let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
            let error = RunError::Unavailable("the worker pool is shut down".into());
            return Ok((Outcome::failed(error), None));
        };
        // Committed calls to replay first get the server's time limit on top.
        let replays = matches!(&job.target, Target::Heap { replay, .. } if !replay.is_empty());
        let replay_time = match replays {
            true => self.settings.limits.timeout,
            false => Duration::ZERO,
        };
        let deadline = job.limits.timeout + GRACE + replay_time;
        let mut reused = match &job.target {
            Target::Heap {
                start: Start::Warm(warm),
                ..
            } => Some(self.take_idle(Some(warm.worker)).ok_or(NotWarm)?),
            _ => self.take_idle(None),
        };
        loop {
            let fresh = reused.is_none();
            let mut worker = match reused.take() {
                Some(worker) => worker,
                None => match self.spawn() {
                    Ok(worker) => worker,
                    Err(e) => return Ok((Outcome::failed(e), None)),
                },
            };
            let forget = self.forgotten_by(worker.number);
            let answered = within(deadline, job.host.as_deref(), worker.call(&job, forget)).await;
            return match answered {
                Ok(Ok(Answered::NotWarm)) => {
                    self.put_back(worker);
                    Err(NotWarm)
                }
                Ok(Ok(Answered::Done(outcome, kept))) => {
                    let outcome = *outcome;
                    let stateful = matches!(job.target, Target::Heap { .. });
                    match kept {
                        _ if !stateful || outcome.result.is_err() => {
                            self.put_back(worker);
                            Ok((outcome, None))
                        }
                        Some(generation) => {
                            let warm = WarmRef {
                                worker: worker.number,
                                generation: generation.0,
                            };
                            self.put_back(worker);
                            Ok((outcome, Some(NewState::Live(warm))))
                        }
                        None => {
                            // The worker snapshots the heap now; it stays taken until then.
                            let saving = self.saving(worker, slot);
                            Ok((outcome, Some(NewState::Saving(saving))))
                        }
                    }
                }
                // A warm isolate that is gone with its worker: run from the stored snapshot.
                Ok(Err(Failure::BeforeJob(_))) if is_warm(&job) => Err(NotWarm),
                // An idle worker that died before it could take the job (killed while
                // waiting, say) says nothing about the job: run it on a fresh one.
                Ok(Err(Failure::BeforeJob(_))) if !fresh => continue,
                // It died while V8 restored the heap: the snapshot is at fault, not the code.
                Ok(Err(Failure::BeforeStart(e))) if restores(&job) => Ok((
                    Outcome::failed(RunError::Unrestorable(worker.death(e).await)),
                    None,
                )),
                // The worker died or garbled its answer: report how, and let it go.
                Ok(Err(
                    Failure::BeforeJob(e) | Failure::BeforeStart(e) | Failure::DuringJob(e),
                )) => Ok((
                    Outcome::failed(RunError::Crashed(worker.death(e).await)),
                    None,
                )),
                // It did not stop at its own time limit: kill it.
                Err(_) => Ok((Outcome::failed(RunError::Timeout(job.limits.timeout)), None)),
            };
        }
        // A worker not put back is dropped here, which kills its process.
    }
}

fn restores(job: &Job) -> bool {
    matches!(
        job.target,
        Target::Heap {
            start: Start::Snapshot(_) | Start::Alone(_),
            ..
        }
    )
}

fn is_warm(job: &Job) -> bool {
    matches!(
        job.target,
        Target::Heap {
            start: Start::Warm(_),
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

/// What a worker answered: the outcome, and the generation it keeps the new state live as.
enum Answered {
    Done(Box<Outcome>, Option<Generation>),
    NotWarm,
}

impl WorkerPool {
    /// Starts one worker ahead of the first call, so that it pays no start-up (V8 initialises
    /// while the worker waits). A failure here is only logged: the first call will try again.
    pub fn prewarm(&self) {
        match self.spawn() {
            Ok(worker) => self.put_back(worker),
            Err(e) => tracing::warn!("could not start a worker ahead of time: {e}"),
        }
    }

    /// An idle worker that is still alive: worker `number` if given (or none if it is busy
    /// or gone), otherwise the one that went idle last.
    fn take_idle(&self, number: Option<u64>) -> Option<Worker> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain_mut(|worker| matches!(worker.child.try_wait(), Ok(None)));
        let index = match number {
            Some(number) => idle.iter().position(|w| w.number == number)?,
            None => idle.len().checked_sub(1)?,
        };
        Some(idle.remove(index))
    }

    fn put_back(&self, worker: Worker) {
        put_back(&self.idle, worker);
    }

    fn spawn(&self) -> Result<Worker, RunError> {
        let number = self.numbers.fetch_add(1, Ordering::Relaxed) + 1;
        Worker::spawn(&self.program, number, &self.settings)
    }

    /// Asks the worker holding `warm` for a snapshot of `heap`'s live state (a checkpoint),
    /// `limits` for rebuilding it if its isolate is gone. [`NotWarm`] when that worker is busy,
    /// gone, or no longer holds that state.
    pub async fn checkpoint(
        &self,
        warm: WarmRef,
        heap: &str,
        limits: crate::engine::Limits,
    ) -> Result<Result<Saved, RunError>, NotWarm> {
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| NotWarm)?;
        let mut worker = self.take_idle(Some(warm.worker)).ok_or(NotWarm)?;
        let forget = self.forgotten_by(worker.number);
        let request = Request {
            target: RequestTarget::Checkpoint {
                name: heap.to_string(),
                generation: warm.generation,
            },
            limits,
            forget,
            live: false,
            host_calls: false,
        };
        if write_frame(&mut worker.stdin, &request, &[]).await.is_err() {
            // Gone with its worker: nothing to snapshot.
            return Err(NotWarm);
        }
        let _slot = slot;
        match read_save(worker, &self.idle).await {
            Ok(None) => Err(NotWarm),
            Ok(Some(saved)) => Ok(Ok(saved)),
            Err(e) => Ok(Err(e)),
        }
    }

    /// The save that follows a successful stateful run on `worker`, which goes back to the
    /// pool (and `slot` with it) once the snapshot is in.
    fn saving(&self, worker: Worker, slot: OwnedSemaphorePermit) -> Saving {
        let idle = Arc::clone(&self.idle);
        Saving::new(async move {
            let _slot = slot;
            match read_save(worker, &idle).await {
                Ok(Some(saved)) => Ok(saved),
                Ok(None) => Err(RunError::Snapshot(
                    "the worker no longer held the heap it had just run".into(),
                )),
                Err(e) => Err(e),
            }
        })
    }
}

/// Reads the snapshot `worker` sends (`None`: it does not hold the heap asked for) and puts
/// the worker back into `idle`, unless it failed.
async fn read_save(
    mut worker: Worker,
    idle: &Mutex<Vec<Worker>>,
) -> Result<Option<Saved>, RunError> {
    let saved = match tokio::time::timeout(SAVE_DEADLINE, worker.saved()).await {
        Ok(Ok(saved)) => saved,
        Ok(Err(e)) => {
            let death = worker.death(e).await;
            return Err(RunError::Snapshot(format!("{death} while V8 saved it")));
        }
        Err(_) => {
            return Err(RunError::Snapshot(format!(
                "the worker took more than {} s",
                SAVE_DEADLINE.as_secs()
            )))
        }
    };
    let number = worker.number;
    put_back(idle, worker);
    let Some(saved) = saved else {
        return Ok(None);
    };
    saved.map(|(generation, snapshot)| {
        Some(Saved {
            snapshot,
            warm: Some(WarmRef {
                worker: number,
                generation: generation.0,
            }),
        })
    })
}

fn put_back(idle: &Mutex<Vec<Worker>>, worker: Worker) {
    idle.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(worker);
}

impl Worker {
    fn spawn(program: &PathBuf, number: u64, settings: &WorkerSettings) -> Result<Self, RunError> {
        // Workers get no environment but the logging settings: JavaScript cannot read it, and
        // secrets such as storage credentials or the auth token have no business there.
        let logging = std::env::vars().filter(|(k, _)| {
            matches!(
                k.as_str(),
                "RUST_LOG" | "RUST_BACKTRACE" | "MCP_V8_LOG_FORMAT"
            )
        });
        let mut child = Command::new(program)
            .arg(format!("--warm-heaps-max-bytes={}", settings.warm_bytes))
            .arg(format!(
                "--heap-memory-max={}",
                settings.limits.heap_bytes >> 20
            ))
            // Committed calls replay under the server's time limit.
            .arg(format!(
                "--execution-timeout={}",
                settings.limits.timeout.as_secs_f64()
            ))
            .arg("worker")
            .env_clear()
            .envs(logging)
            // The sandbox's time zone is the same on every host, so a heap's dates (and a
            // call replayed elsewhere) read alike; ICU takes it from here.
            .env("TZ", "UTC")
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
            number,
            child,
            stdin,
            stdout: BufReader::with_capacity(1 << 16, stdout),
        })
    }

    /// Sends one job and reads the answer. A failure means the worker is unusable.
    async fn call(&mut self, job: &Job, forget: Vec<String>) -> Result<Answered, Failure> {
        let (target, snapshot, replay) = match &job.target {
            Target::Stateless => (RequestTarget::Stateless, None, None),
            Target::Heap {
                name,
                start,
                replay,
                keep,
                last_error,
            } => {
                let (start, snapshot) = match start {
                    Start::New => (RequestStart::New, None),
                    Start::Snapshot(bytes) => (RequestStart::Snapshot, Some(&bytes[..])),
                    Start::Alone(bytes) => (RequestStart::Alone, Some(&bytes[..])),
                    Start::Warm(warm) => (
                        RequestStart::Warm {
                            generation: warm.generation,
                        },
                        None,
                    ),
                };
                let name = name.clone();
                let target = RequestTarget::Heap {
                    name,
                    start,
                    replay: replay.len(),
                    keep: *keep,
                    last_error: last_error.clone(),
                };
                let replay = (!replay.is_empty()).then(|| encode_records(replay));
                (target, snapshot, replay)
            }
        };
        let request = Request {
            target,
            limits: job.limits,
            forget,
            live: job.live.is_some(),
            host_calls: job.host.is_some(),
        };
        let mut sections: Vec<&[u8]> = vec![job.code.as_bytes()];
        sections.extend(snapshot);
        sections.extend(replay.as_deref());
        write_frame(&mut self.stdin, &request, &sections)
            .await
            .map_err(Failure::BeforeJob)?;
        let mut started = false;
        // The job's host calls in flight (dropped, and so abandoned, with the job), and the
        // replies that came in before the worker asked for one.
        let mut host_calls = tokio::task::JoinSet::new();
        let mut cancellable = std::collections::HashMap::new();
        let mut replies = std::collections::VecDeque::new();
        // What the worker has been told the host waited for a person.
        let mut reported = crate::host_call::PauseReports::default();
        loop {
            // A worker that stops talking mid-call has died.
            let (answer, sections) = match self.read().await {
                Ok(frame) => frame,
                Err(e) if started => return Err(Failure::DuringJob(e)),
                // A worker that was dying already when the job was written never read it:
                // the job is still in the pipe, and says nothing about the code or the heap.
                Err(e) if unread(&self.stdin) > 0 => return Err(Failure::BeforeJob(e)),
                Err(e) => return Err(Failure::BeforeStart(e)),
            };
            let done = match answer {
                Answer::Started => {
                    started = true;
                    continue;
                }
                Answer::Live(live) => {
                    let lines = sections.first().map_or(&[][..], Vec::as_slice);
                    let batch = live.decode(lines).map_err(Failure::DuringJob)?;
                    if let Some(listener) = &job.live {
                        // A listener that is gone (its caller left) is no reason to fail.
                        let _ = listener.send(batch);
                    }
                    continue;
                }
                Answer::HostCall { call, ask } => {
                    // The code runs: the job must not be taken for one never read (it may
                    // have called tools, which a second run would call again).
                    started = true;
                    let ask = host_call_of(ask, sections.into_iter().next())
                        .map_err(Failure::DuringJob)?;
                    match &job.host {
                        Some(host) => {
                            let reply = host.call(ask);
                            let task = host_calls.spawn(async move { (call, reply.await) });
                            cancellable.insert(call, task);
                        }
                        None => replies.push_back((call, no_host())),
                    }
                    continue;
                }
                Answer::CancelCall { call } => {
                    // Dropping the call's future drops its request (or tool call).
                    if let Some(task) = cancellable.remove(&call) {
                        task.abort();
                    }
                    continue;
                }
                Answer::Await { wait_us } => {
                    let reply = match replies.pop_front() {
                        Some(reply) => Some(reply),
                        None => next_reply(&mut host_calls, Duration::from_micros(wait_us)).await,
                    };
                    // Time spent asking a person moves the worker's deadline.
                    let newly = reported.newly(job.host.as_deref());
                    let (header, section) = match reply {
                        Some((call, reply)) => Delivery::reply(call, reply, newly),
                        None => (Delivery::nothing(newly), Vec::new()),
                    };
                    write_frame(&mut self.stdin, &header, &[&section])
                        .await
                        .map_err(Failure::DuringJob)?;
                    continue;
                }
                Answer::NotWarm => return Ok(Answered::NotWarm),
                Answer::Done(done) => done,
                Answer::Saved(_) => {
                    return Err(Failure::DuringJob(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a snapshot came before the outcome",
                    )))
                }
            };
            let mut sections = sections.into_iter();
            let output = sections.next().unwrap_or_default();
            let console = sections.next().unwrap_or_default();
            let preview = sections.next().unwrap_or_default();
            let console =
                decode_console(&console, done.console_dropped).map_err(Failure::DuringJob)?;
            let text = |bytes: Vec<u8>| {
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
            };
            let result = done.result.map(|finished| Completion {
                output: text(output),
                output_truncated: finished.output_truncated,
                size: finished.size,
                preview: finished.previewed.then(|| text(preview)),
                pending_timers: finished.pending_timers,
                tape: finished.tape,
            });
            return Ok(Answered::Done(
                Box::new(Outcome { result, console }),
                done.kept,
            ));
        }
    }

    /// Reads the snapshot that follows a successful stateful run or a checkpoint request
    /// (`None`: the worker does not hold the heap). The outer error means the worker is
    /// unusable; the inner one that V8 could not snapshot the heap.
    #[allow(clippy::type_complexity)]
    async fn saved(&mut self) -> io::Result<Option<Result<(Generation, Bytes), RunError>>> {
        let (answer, sections) = self.read().await?;
        match answer {
            Answer::NotWarm => Ok(None),
            Answer::Saved(Ok(generation)) => match sections.into_iter().next() {
                Some(snapshot) => Ok(Some(Ok((generation, Bytes::from(snapshot))))),
                None => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a save without its snapshot",
                )),
            },
            Answer::Saved(Err(e)) => Ok(Some(Err(e))),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "expected a snapshot",
            )),
        }
    }

    async fn read(&mut self) -> io::Result<(Answer, Vec<Vec<u8>>)> {
        read_frame::<Answer>(&mut self.stdout)
            .await
            .and_then(|frame| frame.ok_or_else(|| io::ErrorKind::UnexpectedEof.into()))
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

/// The reply to a host call when the job has nobody to answer it.
fn no_host() -> HostReply {
    HostReply::Failed(HostError::new(
        HostErrorKind::Unavailable,
        "this server answers no host calls: it has no MCP servers (--mcp-config) and allows \
         no hosts (--allow-net)",
    ))
}

/// `call`'s result, if it comes within `deadline` plus the time `host` spends waiting for a
/// person meanwhile ([`crate::approval`]).
async fn within<T>(
    deadline: Duration,
    host: Option<&dyn crate::host_call::HostCalls>,
    call: impl std::future::Future<Output = T>,
) -> Result<T, tokio::time::error::Elapsed> {
    let started = tokio::time::Instant::now();
    let mut call = std::pin::pin!(call);
    let mut allowed = deadline;
    loop {
        match tokio::time::timeout_at(started + allowed, &mut call).await {
            Ok(done) => return Ok(done),
            Err(elapsed) => {
                let paused = host.map_or(Duration::ZERO, |h| h.paused());
                if deadline + paused <= allowed {
                    return Err(elapsed);
                }
                allowed = deadline + paused;
            }
        }
    }
}

/// The next reply of `calls` to come in within `wait`, if any.
async fn next_reply(
    calls: &mut tokio::task::JoinSet<(u32, HostReply)>,
    wait: Duration,
) -> Option<(u32, HostReply)> {
    let wait = wait.min(Duration::from_secs(24 * 3600));
    let next = async {
        loop {
            match calls.join_next().await {
                Some(Ok(reply)) => return Some(reply),
                // Cancelled by the code: nobody waits for it.
                Some(Err(e)) if e.is_cancelled() => {}
                // A call's task that panicked: its promise stays unsettled (the run times
                // out), which the log explains.
                Some(Err(e)) => tracing::error!("a host call failed: {e}"),
                None => return None,
            }
        }
    };
    match tokio::time::timeout(wait, next).await {
        Ok(Some(reply)) => Some(reply),
        // Nothing in flight: the worker waits for nothing; let its time pass.
        Ok(None) => {
            tokio::time::sleep(wait).await;
            None
        }
        Err(_) => None,
    }
}

/// Bytes written to a worker's stdin that it has not read.
fn unread(stdin: &ChildStdin) -> usize {
    use std::os::fd::AsRawFd;
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD on an open pipe descriptor (the write end works too) stores the number
    // of unread bytes in the c_int it is given, which lives on this stack frame.
    let status = unsafe { libc::ioctl(stdin.as_raw_fd(), libc::FIONREAD, &mut unread) };
    if status == 0 {
        usize::try_from(unread).unwrap_or(0)
    } else {
        0
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
