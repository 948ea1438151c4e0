//! Worker processes: the same `mcp-v8` binary started as `mcp-v8 worker`, running one job at a
//! time for the host. A V8 abort or a kill ends only the worker.
//!
//! Between jobs a worker keeps isolates ready: a plain one for the next stateless call, and
//! the heaps it ran recently ([`heaps`]), so a call waits for its code and not for V8. A
//! stateful job is answered as soon as its code settles. Its isolate then stays live at the
//! new state for the heap's next call — no snapshot — unless the host asks for one (a
//! checkpoint): then the worker snapshots the heap, sends the snapshot, and restores the next
//! warm isolate from it once idle.

mod heaps;
mod pool;
pub mod protocol;

use std::io::{self, BufReader, BufWriter};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::executor::block_on;
use futures::io::AllowStdIo;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, FuturesAsyncWriteCompatExt};

use heaps::{KeptCall, KeptHeap, WarmHeaps};
pub use pool::WorkerPool;
use protocol::{
    decode_records, encode_console, read_frame, write_frame, Answer, Delivery, Done, Finished,
    Generation, Live, Request, RequestStart, RequestTarget,
};

use crate::engine::{self, live, HeapIsolate, JsException, Limits, PlainIsolate, Replay, RunError};
use crate::engine::{HostLink, Outcome, Outside, Waited};
use crate::frontend::Prepared;
use crate::host_call::{HostCall, HostError};
use crate::job::{Keep, Rerun};
use crate::record::Record;

/// What a worker is told when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSettings {
    /// Most bytes of warm heaps (snapshots and restored isolates) one worker keeps.
    pub warm_bytes: usize,
    /// The server's limits, for the isolates made before a call says its own.
    pub limits: Limits,
}

type Input = Compat<AllowStdIo<BufReader<io::StdinLock<'static>>>>;
/// The host's frames on stdin: read by the main loop between jobs, and by a running job's
/// [`PipeLink`] when its code waits for a host reply.
/// One thread reads it.
#[derive(Clone)]
struct Inbox(std::rc::Rc<std::cell::RefCell<Input>>);

impl Inbox {
    fn lock(&self) -> std::cell::RefMut<'_, Input> {
        self.0.borrow_mut()
    }
}

/// The worker's answers on stdout: shared by the main loop and, while code runs with `live`,
/// the thread that relays its console ([`with_live`]); one frame at a time.
#[derive(Clone)]
struct Output(Arc<Mutex<Compat<AllowStdIo<BufWriter<io::Stdout>>>>>);

/// A worker stops when its host closes its stdin, not on a terminal's Ctrl-C (which goes to
/// the whole process group) nor on a SIGTERM sent to every process of a service: the host
/// lets the calls in flight finish first, then closes the pipe.
fn ignore_stop_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sets the signal's disposition to "ignore" before V8 or any other thread
        // starts; no handler code is installed or run.
        unsafe {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
}

/// The worker's main loop: answer requests on stdin until it closes.
pub fn serve(settings: WorkerSettings) -> ExitCode {
    ignore_stop_signals();
    engine::init();
    // The protocol's codec is async; the worker blocks on its pipes, with nothing else to do.
    let input: Input = AllowStdIo::new(BufReader::new(io::stdin().lock())).compat();
    let input = Inbox(std::rc::Rc::new(std::cell::RefCell::new(input)));
    let output = Output(Arc::new(Mutex::new(
        AllowStdIo::new(BufWriter::new(io::stdout())).compat_write(),
    )));
    let mut worker = Worker {
        heaps: WarmHeaps::new(settings.warm_bytes),
        fresh: None,
        fresh_failed: false,
        limits: settings.limits,
    };
    loop {
        // Work ahead only while no request waits: an isolate nobody asked for yet must not
        // delay a call that is here.
        while !input_pending(&input.lock(), IDLE) && worker.work_ahead() {}
        let frame = block_on(read_frame::<Request>(&mut *input.lock()));
        let (request, sections) = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("worker: unreadable request: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = worker.serve(request, sections, &output, &input) {
            tracing::error!("worker: cannot answer the host: {e}");
            return ExitCode::FAILURE;
        }
    }
}

/// How long a worker waits for the next request before it works ahead. Under load the host
/// sends the next request within a fraction of this after the previous answer.
const IDLE: Duration = Duration::from_millis(2);

/// Whether a request is waiting on stdin, after up to `wait`.
fn input_pending(input: &Input, wait: Duration) -> bool {
    if !input.get_ref().get_ref().buffer().is_empty() {
        return true;
    }
    let mut fd = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    };
    let wait = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid `pollfd` for stdin, which lives on this stack frame for the call.
    let ready = unsafe { libc::poll(&mut fd, 1, wait) };
    // An error or a hang-up counts as pending: the read reports it.
    ready != 0
}

struct Worker {
    heaps: WarmHeaps,
    /// A plain isolate for the next stateless call.
    fresh: Option<PlainIsolate>,
    /// Making one failed: do not try again ahead of a call.
    fresh_failed: bool,
    /// The server's limits: isolates made ahead are made for them (a call with a tighter
    /// heap limit gets an isolate of its own).
    limits: Limits,
}

impl Worker {
    /// Does one piece of work ahead of the next call: the plain isolate for a stateless call,
    /// then the warm isolates of recently used heaps. Returns whether there was any.
    fn work_ahead(&mut self) -> bool {
        if self.fresh.is_none() && !self.fresh_failed {
            match PlainIsolate::new(&self.limits) {
                Ok(fresh) => self.fresh = Some(fresh),
                Err(e) => {
                    tracing::warn!("worker: cannot make an isolate ahead: {e}");
                    self.fresh_failed = true;
                }
            }
            return true;
        }
        self.heaps.warm_up_next(&self.limits)
    }

    /// Answers one request.
    fn serve(
        &mut self,
        request: Request,
        mut sections: Vec<Vec<u8>>,
        out: &Output,
        input: &Inbox,
    ) -> io::Result<()> {
        for heap in &request.forget {
            self.heaps.forget(heap);
        }
        if let RequestTarget::Checkpoint { name, generation } = &request.target {
            return self.checkpoint(name, *generation, &request.limits, out);
        }
        // Sections come code first; the optional ones are taken from the end.
        let replay = match &request.target {
            RequestTarget::Heap { replay, .. } if *replay > 0 => {
                let section = sections.pop().unwrap_or_default();
                match decode_records(&section, *replay) {
                    Ok(records) => records,
                    Err(e) => {
                        let e = RunError::Crashed(format!("the calls to replay are garbled: {e}"));
                        return done(out, Outcome::failed(e), None);
                    }
                }
            }
            _ => Vec::new(),
        };
        let snapshot = match &request.target {
            RequestTarget::Heap {
                start: RequestStart::Snapshot | RequestStart::Alone,
                ..
            } => sections.pop().map(Bytes::from),
            _ => None,
        };
        // A syntax error touches no isolate: a warm one stays as it is.
        let source = match sections.into_iter().next().map(String::from_utf8) {
            Some(Ok(source)) => source,
            Some(Err(_)) => {
                let e = RunError::Crashed("code is not UTF-8".into());
                return done(out, Outcome::failed(e), None);
            }
            None => {
                let e = RunError::Crashed("request without code".into());
                return done(out, Outcome::failed(e), None);
            }
        };
        let code = match engine::read_code(&source) {
            Ok(code) => code,
            Err(e) => return done(out, Outcome::failed(e), None),
        };
        let run = CodeToRun {
            source,
            code: &code,
            limits: &request.limits,
            live: request.live,
            host: request.host_calls.then(|| PipeLink {
                out: out.clone(),
                input: input.clone(),
                paused: Duration::ZERO,
            }),
        };
        match request.target {
            RequestTarget::Stateless => self.run_stateless(run, out),
            RequestTarget::Heap {
                name,
                start,
                keep,
                last_error,
                ..
            } => {
                let from = From {
                    start,
                    snapshot,
                    replay,
                };
                self.run_on_heap(run, name, from, keep, last_error, out)
            }
            RequestTarget::Checkpoint { .. } => Ok(()),
        }
    }

    /// Snapshots `name`'s state at `generation` for the host to store; the worker keeps the
    /// snapshot as the state's new start, restored again once it is idle.
    fn checkpoint(
        &mut self,
        name: &str,
        generation: u64,
        limits: &Limits,
        out: &Output,
    ) -> io::Result<()> {
        let Some(mut entry) = self.heaps.take(name, generation) else {
            return write_frame_now(out, &Answer::NotWarm, &[]);
        };
        let saved = entry.isolate(limits).and_then(HeapIsolate::save);
        match saved {
            Ok(snapshot) => {
                let generation = self.heaps.next_generation();
                let saved = Answer::Saved(Ok(Generation(generation)));
                write_frame_now(out, &saved, &[&snapshot])?;
                let entry = KeptHeap::cold(generation, Some(snapshot), Vec::new());
                self.heaps.insert(name.to_string(), entry);
            }
            Err(e) => {
                write_frame_now(out, &Answer::Saved(Err(e)), &[])?;
                // What rebuilds the state is still there.
                self.heaps.insert(name.to_string(), entry);
            }
        }
        Ok(())
    }

    fn run_stateless(&mut self, run: CodeToRun, out: &Output) -> io::Result<()> {
        let limits = run.limits;
        let fresh = match self.fresh.take() {
            Some(fresh) if fresh.heap_bytes() == limits.heap_bytes => Ok(fresh),
            _ => PlainIsolate::new(limits),
        };
        let fresh = match fresh {
            Ok(fresh) => fresh,
            Err(e) => return done(out, Outcome::failed(e), None),
        };
        let (ran, used) = with_outside(run.live, run.host, out, |outside| {
            fresh.run(run.code, limits, outside)
        });
        done(out, ran, None)?;
        // Disposed of after the answer.
        drop(used);
        Ok(())
    }

    fn run_on_heap(
        &mut self,
        run: CodeToRun,
        name: String,
        from: From,
        keep: Keep,
        last_error: Option<JsException>,
        out: &Output,
    ) -> io::Result<()> {
        let limits = run.limits;
        let From {
            start,
            snapshot,
            replay,
        } = from;
        let alone = matches!(start, RequestStart::Alone);
        // Only a stored snapshot can be at fault for a crash before the code starts: the host
        // hears when V8 has restored one (every other isolate is V8's own).
        let restores_stored = matches!(start, RequestStart::Snapshot | RequestStart::Alone);
        let was_warm = matches!(start, RequestStart::Warm { .. });
        // Committed calls replay under the server's time limit, not this call's tighter one
        // (the isolate has this call's heap limit).
        let replay_limits = Limits {
            timeout: limits.timeout.max(self.limits.timeout),
            ..*limits
        };
        // What rebuilds the state the code runs on (kept if the run fails and the state was
        // warm here), and the isolate to run on.
        let (state, warm) = match start {
            RequestStart::Warm { generation } => {
                let Some(mut entry) = self.heaps.take(&name, generation) else {
                    return write_frame_now(out, &Answer::NotWarm, &[]);
                };
                let warm = entry.isolate(&replay_limits);
                (entry, warm)
            }
            RequestStart::Snapshot | RequestStart::Alone => {
                self.heaps.forget(&name);
                if alone {
                    // Its read-only heap is its own: no other isolate may live.
                    self.fresh = None;
                    self.heaps.clear();
                }
                let warm = match &snapshot {
                    Some(snapshot) => HeapIsolate::new(Some(snapshot.clone()), limits),
                    None => Err(RunError::Crashed("no snapshot sent".into())),
                };
                (KeptHeap::cold(0, snapshot, kept_calls(&replay)), warm)
            }
            RequestStart::New => {
                self.heaps.forget(&name);
                (
                    KeptHeap::cold(0, None, Vec::new()),
                    HeapIsolate::new(None, limits),
                )
            }
        };
        // Failures never change state: a warm state stays, to be rebuilt once idle.
        let roll_back = |heaps: &mut WarmHeaps, state: KeptHeap| {
            if was_warm {
                heaps.insert(name.clone(), state);
            }
        };
        let calls = replay.iter().map(Rerun::of);
        let warm = warm.and_then(|warm| crate::job::catch_up(warm, calls, &replay_limits));
        let warm = match warm {
            Ok(warm) => warm,
            Err(e) => {
                done(out, Outcome::failed(e), None)?;
                roll_back(&mut self.heaps, state);
                return Ok(());
            }
        };
        if restores_stored {
            say_started(out)?;
        }
        let ran = with_outside(run.live, run.host, out, |outside| {
            warm.run_after(run.code, limits, outside, last_error)
        });
        let (outcome, left) = engine::answer_first(ran);
        let unsaved = match left {
            Ok(unsaved) => unsaved,
            Err(used) => {
                done(out, outcome, None)?;
                drop(used);
                roll_back(&mut self.heaps, state);
                return Ok(());
            }
        };
        // Kept live unless the host asks for a snapshot, or the heap must run alone, or a
        // replay could not reproduce the call (its state must be stored as it is).
        let kept = match &outcome.result {
            Ok(completion) if keep == Keep::Live && !alone => match completion.tape.replay {
                Replay::Exact => Some(KeptCall {
                    code: run.source.clone(),
                    tape: completion.tape.clone(),
                    fingerprint: engine::fingerprint(completion, &outcome.console),
                }),
                Replay::Impossible(_) => None,
            },
            _ => None,
        };
        let saved = match kept {
            Some(call) => {
                let generation = self.heaps.next_generation();
                let mut state = state;
                state.advance(generation, call, unsaved.into_heap_isolate());
                if self.heaps.can_hold(&state) {
                    done(out, outcome, Some(Generation(generation)))?;
                    self.heaps.insert(name, state);
                    return Ok(());
                }
                // Too big for this worker's budget: a state it cannot keep is snapshotted,
                // or every later call would replay its way there from the store.
                done(out, outcome, None)?;
                state.isolate(limits).and_then(HeapIsolate::save)
            }
            None => {
                done(out, outcome, None)?;
                unsaved.save()
            }
        };
        match saved {
            Ok(snapshot) => {
                let generation = self.heaps.next_generation();
                let saved = Answer::Saved(Ok(Generation(generation)));
                write_frame_now(out, &saved, &[&snapshot])?;
                if !alone {
                    let entry = KeptHeap::cold(generation, Some(snapshot), Vec::new());
                    self.heaps.insert(name, entry);
                }
            }
            Err(e) => write_frame_now(out, &Answer::Saved(Err(e)), &[])?,
        }
        Ok(())
    }
}

/// The calls of `records`, as a worker keeps them to rebuild a state (a record that holds a
/// state is never sent to replay).
fn kept_calls(records: &[Record]) -> Vec<KeptCall> {
    records
        .iter()
        .filter_map(|record| Rerun::of(record).ok())
        .map(|call| KeptCall {
            code: call.code.to_string(),
            tape: call.tape.clone(),
            fingerprint: call.fingerprint,
        })
        .collect()
}

/// Where a heap's state comes from, with the bytes the request carried.
struct From {
    start: RequestStart,
    snapshot: Option<Bytes>,
    replay: Vec<Record>,
}

/// Code to run, with what it runs under.
struct CodeToRun<'a> {
    /// The code as the caller sent it (kept to run it again).
    source: String,
    code: &'a Prepared,
    limits: &'a Limits,
    /// Relay console lines and progress while it runs.
    live: bool,
    /// The way to the host for its host calls, if the host answers them.
    host: Option<PipeLink>,
}

/// A running job's way to the host over the worker's pipes ([`Answer::HostCall`],
/// [`Answer::Await`], [`Delivery`]).
struct PipeLink {
    out: Output,
    input: Inbox,
    /// What the last delivery said the host waited for a person, not yet taken.
    paused: Duration,
}

impl HostLink for PipeLink {
    fn start(&mut self, id: u32, call: &HostCall) -> Result<(), HostError> {
        let (header, arguments) = Answer::host_call(id, call);
        write_frame_now(&self.out, &header, &[&arguments]).map_err(|e| {
            HostError::new(
                crate::host_call::HostErrorKind::Unavailable,
                format!("the host cannot be told: {e}"),
            )
        })
    }

    fn cancel(&mut self, id: u32) {
        // A host that stopped reading is noticed at the next wait.
        let _ = write_frame_now(&self.out, &Answer::CancelCall { call: id }, &[]);
    }

    fn wait(&mut self, wait: Duration) -> Waited {
        let wait_us = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        if let Err(e) = write_frame_now(&self.out, &Answer::Await { wait_us }, &[]) {
            return Waited::Lost(e.to_string());
        }
        let frame = block_on(read_frame::<Delivery>(&mut *self.input.lock()));
        if let Ok(Some((delivery, _))) = &frame {
            self.paused += delivery.paused();
        }
        match frame {
            Ok(Some((Delivery::Reply { call, head, .. }, sections))) => {
                match head.into_reply(sections.into_iter().next()) {
                    Ok(reply) => Waited::Reply(call, reply),
                    Err(e) => Waited::Lost(e.to_string()),
                }
            }
            Ok(Some((Delivery::Nothing { .. }, _))) => Waited::Nothing,
            Ok(None) => Waited::Lost("the host closed the pipe".into()),
            Err(e) => Waited::Lost(e.to_string()),
        }
    }

    fn paused(&mut self) -> Duration {
        std::mem::take(&mut self.paused)
    }
}

/// Calls `run` with what the code reaches outside: a live sender whose batches go to the host
/// as [`Answer::Live`] frames while it runs, if `live` (they all precede the answer), and
/// `host` for its host calls.
fn with_outside<T>(
    live: bool,
    host: Option<PipeLink>,
    out: &Output,
    run: impl FnOnce(Outside) -> T,
) -> T {
    let host = host.map(|link| Box::new(link) as Box<dyn HostLink>);
    if !live {
        return run(Outside { live: None, host });
    }
    let frames = out.clone();
    let deliver = move |batch| {
        let (header, lines) = Live::encode(batch);
        // A host that stopped reading is noticed by the main loop.
        let _ = write_frame_now(&frames, &Answer::Live(header), &[&lines]);
    };
    live::relayed(deliver, |live| run(Outside { live, host }))
}

/// Tells the host that V8 has restored the stored snapshot and the code starts now: a crash
/// from here on is the code's, not the snapshot's. Each frame costs the host a wake-up, so
/// jobs with no stored snapshot to blame send none.
fn say_started(out: &Output) -> io::Result<()> {
    write_frame_now(out, &Answer::Started, &[])
}

/// Sends a run's outcome, and for a successful stateful run the generation its state is
/// kept live as, unless a snapshot follows.
fn done(out: &Output, run: Outcome, kept: Option<Generation>) -> io::Result<()> {
    let (result, text, preview) = match run.result {
        Ok(completion) => (
            Ok(Finished {
                output_truncated: completion.output_truncated,
                size: completion.size,
                previewed: completion.preview.is_some(),
                pending_timers: completion.pending_timers,
                tape: completion.tape,
            }),
            completion.output,
            completion.preview.unwrap_or_default(),
        ),
        Err(e) => (Err(e), String::new(), String::new()),
    };
    let header = Answer::Done(Done {
        result,
        console_dropped: run.console.dropped,
        kept,
    });
    let console = encode_console(&run.console);
    write_frame_now(
        out,
        &header,
        &[text.as_bytes(), &console, preview.as_bytes()],
    )?;
    // The work after an answer (a snapshot, the next isolate) must not keep the host from
    // reading it: on a machine with few cores the host's thread otherwise waits for this one
    // to finish (a stateless call measured 2.2 ms instead of 0.7).
    std::thread::yield_now();
    Ok(())
}

fn write_frame_now(out: &Output, answer: &Answer, sections: &[&[u8]]) -> io::Result<()> {
    let mut out = out.0.lock().unwrap_or_else(PoisonError::into_inner);
    block_on(write_frame(&mut *out, answer, sections))
}
