//! The V8 engine: runs one piece of JavaScript in an isolate made for it ([`PlainIsolate`]), or on
//! a heap restored from a raw V8 snapshot ([`HeapIsolate`]), drives its promises and timers, and
//! (when stateful) snapshots the heap again afterwards ([`UnsavedIsolate::save`]).
//!
//! Every function here blocks; callers run it on a blocking thread or in a worker process.
//! The engine trusts the snapshots it is given: the runtime verifies stored heaps
//! ([`crate::envelope`]) before V8 sees a byte, since V8 aborts the process on a malformed
//! snapshot. Several isolates, snapshot creators included, may live in one process and run
//! at once: V8's `--no-extensible-ro-snapshot` (set in [`init`]) keeps creators off the
//! read-only heap that all isolates share.

mod allocator;
mod globals;
mod isolates;
mod last;
pub mod live;
mod preview;
mod render;
mod repl;
mod tape;
mod trace;

use std::ffi::c_void;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use globals::RunState;
pub use globals::{Console, Dropped, LogLine};
pub use preview::{console as console_preview, group, json_len, line_size, split, ConsolePreview};
use render::{clip, describe_thrown, render, Unrendered};
pub use trace::{Frame, Origin};

pub use isolates::{answer_first, HeapIsolate, PlainIsolate, SpentIsolate, UnsavedIsolate};
pub use tape::{Replay, Tape, TapedReply, MAX_CLOCK_READINGS, MAX_TAPED_REPLY_BYTES};

use crate::frontend::{self, Goal, Prepared};
use crate::host_call::{HostCall, HostError, HostReply};

/// What a run can reach outside its isolate while it runs: a listener for its console and
/// progress, and the host, which answers the code's host calls (`tools`).
#[derive(Default)]
pub struct Outside {
    /// Hears console lines and progress as they happen.
    pub live: Option<live::Sender>,
    /// Starts host calls and brings their replies.
    pub host: Option<Box<dyn HostLink>>,
}

impl Outside {
    /// Nothing: no listener, and host calls fail (no MCP servers are configured).
    pub fn none() -> Self {
        Self::default()
    }

    /// Only a listener, if any.
    pub fn live(live: Option<live::Sender>) -> Self {
        Self { live, host: None }
    }
}

impl std::fmt::Debug for Outside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outside")
            .field("live", &self.live.is_some())
            .field("host", &self.host.is_some())
            .finish()
    }
}

/// The engine's side of the way to the host, for host calls ([`crate::host_call`]): it
/// starts calls as the code makes them and, when the code has nothing else to do, waits for
/// their replies. Blocking, as the engine is.
pub trait HostLink {
    /// Starts call `id` (numbered from 1 in the run); its reply comes through
    /// [`HostLink::wait`]. An error settles the call at once.
    fn start(&mut self, id: u32, call: &HostCall) -> Result<(), HostError>;
    /// Waits up to `wait` for the reply to one of the calls started.
    fn wait(&mut self, wait: Duration) -> Waited;
    /// Call `id` is no longer wanted (the code aborted it): the host may stop it. Its reply,
    /// if one still comes, is ignored.
    fn cancel(&mut self, _id: u32) {}
    /// How long the host waited for a person ([`crate::approval`]) since this was last
    /// asked: time that does not count against the run's time limit.
    fn paused(&mut self) -> Duration {
        Duration::ZERO
    }
}

/// What a wait for a host reply brought.
#[derive(Debug)]
pub enum Waited {
    /// The reply to call `.0`.
    Reply(u32, HostReply),
    /// No reply in the time.
    Nothing,
    /// The way to the host is gone.
    Lost(String),
}

/// How a run may behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock time after which the isolate is terminated.
    pub timeout: Duration,
    /// Largest JavaScript heap, in bytes.
    pub heap_bytes: usize,
    /// Most bytes of console output kept.
    pub console_bytes: usize,
    /// Most bytes of the rendered result kept.
    pub output_bytes: usize,
    /// Bytes of text an answer may take, result and console together: a result that does
    /// not fit comes with a preview ([`Completion::preview`]).
    #[serde(default = "unbounded")]
    pub answer_bytes: usize,
}

fn unbounded() -> usize {
    usize::MAX
}

/// Bytes of text per token of a model's context, as the answer budget estimates them: on the
/// safe side of the 3-4 that JSON, code and English average.
pub const BYTES_PER_TOKEN: usize = 3;

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            heap_bytes: 128 << 20,
            console_bytes: 1 << 20,
            output_bytes: 4 << 20,
            answer_bytes: 20_000 * BYTES_PER_TOKEN,
        }
    }
}

/// A failed run. Nothing is stored after a failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RunError {
    /// The code threw (or failed to compile), at the top level, in a promise it returned
    /// or in a timer callback.
    #[error("{0}")]
    Exception(JsException),
    /// The code ran longer than allowed.
    #[error("execution timed out after {} s; the heap was not changed", .0.as_secs_f64())]
    Timeout(Duration),
    /// The code needed more memory than allowed.
    #[error("heap limit exceeded: the code needed more than {} MB of JavaScript heap; the heap was not changed", .0 >> 20)]
    HeapLimit(usize),
    /// The result is a promise that nothing left can settle.
    #[error("the result is a promise that never settles (no timers or callbacks are left to run it); the heap was not changed")]
    Unsettled,
    /// V8 could not serialise the heap.
    #[error("could not snapshot the heap: {0}")]
    Snapshot(String),
    /// The heap holds an object that V8 cannot snapshot.
    #[error("the heap cannot be saved: it still holds an {0} object made in this call, and V8 cannot \
             snapshot those; create it where it is used (inside a function) or drop every reference \
             to it (e.g. set the variable to null) before the call ends; the heap was not changed")]
    Unsaveable(String),
    /// V8 could not restore the stored snapshot (it ended the process trying).
    #[error("V8 could not restore the stored snapshot ({0})")]
    Unrestorable(String),
    /// No engine could be started for the call (e.g. a worker process failed to start).
    #[error("no JavaScript engine is available: {0}; the heap was not changed")]
    Unavailable(String),
    /// A committed call, run again to rebuild the heap, did not reproduce what it did.
    #[error("replaying call {seq} of the heap's journal did not reproduce it ({why})")]
    Diverged {
        /// The call's number in the journal.
        seq: u64,
        /// What went another way.
        why: String,
    },
    /// A committed call, run again to rebuild the heap, ran out of a resource (time, memory)
    /// or lost its engine: the journal is fine, the load failed.
    #[error("the heap could not be brought up to date: replaying call {seq} of its journal failed ({why}); nothing was lost, retry (with the server's full limits if this call set smaller ones)")]
    ReplayFailed {
        /// The call's number in the journal.
        seq: u64,
        /// How it failed.
        why: String,
    },
    /// The process running the code died (V8 aborted, or it was killed).
    #[error(
        "the JavaScript engine crashed while running this code ({0}); the heap was not changed"
    )]
    Crashed(String),
}

/// A JavaScript exception, as an agent needs to see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsException {
    /// `error.name` (e.g. `TypeError`; the class's name for an error whose class only
    /// inherits a built-in's), or empty for a thrown value that is not an error.
    pub name: String,
    /// `error.message`, or the thrown value as it renders.
    pub message: String,
    /// 1-based line of the throw, when known.
    pub line: Option<usize>,
    /// 1-based column of the throw, when known.
    pub column: Option<usize>,
    /// The user's frames, innermost first (empty when V8 recorded none).
    #[serde(default)]
    pub stack: Vec<Frame>,
}

impl JsException {
    /// An exception with no known place; `trace` fills the place in where V8 knows it.
    pub(crate) fn new(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            message: message.into(),
            line: None,
            column: None,
            stack: Vec::new(),
        }
    }

    /// A syntax error the front end found before V8 saw the code.
    fn syntax(error: frontend::CodeError) -> Self {
        Self {
            name: "SyntaxError".into(),
            message: error.message,
            line: Some(error.position.line),
            column: Some(error.position.column),
            stack: Vec::new(),
        }
    }
}

impl std::fmt::Display for JsException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name.as_str() {
            "" => write!(f, "Uncaught {}", self.message)?,
            name => write!(f, "Uncaught {name}: {}", self.message)?,
        }
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, " (at line {l}, column {c})")?,
            (Some(l), None) => write!(f, " (at line {l})")?,
            _ => {}
        }
        // One frame is the position already given.
        if self.stack.len() > 1 {
            for frame in &self.stack {
                write!(f, "\n    {frame}")?;
            }
        }
        Ok(())
    }
}

/// What a successful run produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// The completion value (or the value its promise resolved to), rendered as text.
    pub output: String,
    /// The output was longer than [`Limits::output_bytes`] and was cut there.
    pub output_truncated: bool,
    /// Bytes of the whole rendered result, before any cut.
    #[serde(default)]
    pub size: usize,
    /// What to show instead of `output` when it does not fit the answer
    /// ([`Limits::answer_bytes`]): a preview that keeps its structure ([`preview`]).
    #[serde(default)]
    pub preview: Option<String>,
    /// Timers still pending when the result settled; they were dropped.
    pub pending_timers: usize,
    /// What the run read from outside its heap, for a replay.
    pub tape: Tape,
}

/// A number that stands for what a successful run showed — its result and its console — so
/// that a replay can tell whether it reproduced the call.
pub fn fingerprint(completion: &Completion, console: &Console) -> u64 {
    let mut hash = xxhash_rust::xxh3::Xxh3::new();
    hash.update(completion.output.as_bytes());
    hash.update(&[u8::from(completion.output_truncated)]);
    for line in &console.lines {
        hash.update(&(line.level.len() as u64).to_le_bytes());
        hash.update(line.level.as_bytes());
        hash.update(&(line.text.len() as u64).to_le_bytes());
        hash.update(line.text.as_bytes());
    }
    if let Some(dropped) = console.dropped {
        hash.update(&(dropped.after as u64).to_le_bytes());
        hash.update(&(dropped.lines as u64).to_le_bytes());
    }
    hash.digest()
}

/// A result and whatever the code printed along the way (also when it failed): what every
/// layer returns for a run — the engine, a job ([`Outcome`]`<Completion>`) and a call
/// ([`crate::runtime::CallOutcome`]), each with its own error type.
#[derive(Debug)]
pub struct Outcome<T = Completion, E = RunError> {
    /// The result.
    pub result: Result<T, E>,
    /// `console` output, in order.
    pub console: Console,
}

impl<T, E> Outcome<T, E> {
    /// A run that failed before any code ran: nothing was printed.
    pub fn failed(error: E) -> Self {
        Self {
            result: Err(error),
            console: Console::default(),
        }
    }

    /// The same run with its result turned by `f`; the console stays.
    pub fn map_result<U, F>(self, f: impl FnOnce(Result<T, E>) -> Result<U, F>) -> Outcome<U, F> {
        Outcome {
            result: f(self.result),
            console: self.console,
        }
    }
}

static INIT: Once = Once::new();

/// Initialises V8 once per process. Cheap after the first call.
pub fn init() {
    INIT.call_once(|| {
        // Without ICU data, Intl and toLocaleString abort the process.
        if let Err(code) = v8::icu::set_common_data_74(deno_core_icudata::ICU_DATA) {
            tracing::error!("could not load ICU data (error {code}): Intl will not work");
        }
        // One locale on every host (ICU would take the host's from LANG): formatting in a
        // heap reads alike wherever it runs. The time zone is UTC the same way (workers
        // start with TZ=UTC).
        v8::icu::set_default_locale("en-US");
        // No read-only promotion when snapshotting: snapshot creators no longer rebuild the
        // read-only heap every isolate of the process shares, so several may live and run at
        // once (without the flag two crash the process); `create_blob` gets cheaper (a 1 MB
        // heap's stateful call 72 -> 62 ms); blobs load with and without the flag, so heaps
        // saved before it still load.
        v8::V8::set_flags_from_string("--no-extensible-ro-snapshot");
        let platform = v8::new_default_platform(0, false).make_shared();
        v8::V8::initialize_platform(platform);
        v8::V8::initialize();
        // The first isolate fills tables every isolate of the process shares (the builtins'
        // dispatch entries); two threads making the first ones at once crash V8. One made
        // here, before any caller can race, leaves them filled.
        drop(v8::Isolate::new(v8::CreateParams::default()));
    });
}

/// The V8 version this process runs, as recorded in every heap envelope.
pub fn v8_version() -> &'static str {
    v8::V8::get_version()
}

/// Why execution was terminated from outside JavaScript.
const NOT_TERMINATED: u8 = 0;
const TIMED_OUT: u8 = 1;
const OUT_OF_HEAP: u8 = 2;

/// Shared between a run, its watchdog thread and V8's near-heap-limit callback.
struct Terminator {
    isolate: v8::IsolateHandle,
    reason: AtomicU8,
}

impl Terminator {
    fn terminate(&self, reason: u8) {
        // The first reason wins: a timeout during the heap-limit unwinding stays a heap error.
        let _ = self.reason.compare_exchange(
            NOT_TERMINATED,
            reason,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.isolate.terminate_execution();
    }

    fn error(&self, limits: &Limits) -> Option<RunError> {
        match self.reason.load(Ordering::SeqCst) {
            TIMED_OUT => Some(RunError::Timeout(limits.timeout)),
            OUT_OF_HEAP => Some(RunError::HeapLimit(limits.heap_bytes)),
            _ => None,
        }
    }
}

extern "C" fn near_heap_limit(data: *mut c_void, current: usize, _initial: usize) -> usize {
    // SAFETY: `data` is the `Terminator` registered in `prepare_isolate()`; the session that owns the
    // isolate holds an Arc of it and disposes of the isolate before dropping that Arc.
    let terminator = unsafe { &*(data as *const Terminator) };
    terminator.terminate(OUT_OF_HEAP);
    // Head-room so that V8 can unwind the terminated script instead of aborting.
    current.saturating_mul(2)
}

/// Readies a new isolate: promise-rejection reports, dynamic imports, heap limit. Returns
/// the terminator the watchdog stops it with.
fn prepare_isolate(isolate: &mut v8::Isolate) -> Arc<Terminator> {
    isolate.set_promise_reject_callback(globals::promise_rejected);
    isolate.set_host_import_module_dynamically_callback(globals::import_dynamically);
    // Errors record where they were made, so positions survive the promise a REPL-mode
    // script turns every throw into.
    isolate.set_capture_stack_trace_for_uncaught_exceptions(true, trace::MAX_FRAMES);
    let terminator = Arc::new(Terminator {
        isolate: isolate.thread_safe_handle(),
        reason: AtomicU8::new(NOT_TERMINATED),
    });
    isolate.add_near_heap_limit_callback(near_heap_limit, Arc::as_ptr(&terminator) as *mut c_void);
    terminator
}

fn create_params(limits: &Limits) -> v8::CreateParams {
    v8::CreateParams::default()
        .heap_limits(0, limits.heap_bytes)
        // ArrayBuffers live outside the heap: they get a budget of the same size.
        .array_buffer_allocator(allocator::with_budget(limits.heap_bytes))
        .external_references(&**globals::external_references())
}

/// Reads `code` with the front end ([`frontend::prepare`]): what V8 will compile, or the
/// syntax error that stops it before any isolate is used.
pub fn read_code(code: &str) -> Result<Prepared, RunError> {
    frontend::prepare(code).map_err(|e| RunError::Exception(JsException::syntax(e)))
}

/// Runs `code` in a new plain isolate; nothing is kept.
pub fn run_stateless(code: &str, limits: Limits) -> Outcome<Completion> {
    let code = match read_code(code) {
        Ok(code) => code,
        Err(e) => return Outcome::failed(e),
    };
    match PlainIsolate::new(&limits) {
        Ok(fresh) => fresh.run(&code, &limits, Outside::none()).0,
        Err(e) => Outcome::failed(e),
    }
}

/// Runs `code` on a heap restored from `snapshot` (raw V8 bytes this V8 made; verified by the
/// caller) or on a new heap, and snapshots the heap afterwards. On success the result carries
/// the new snapshot.
pub fn run_stateful(
    code: &str,
    snapshot: Option<Bytes>,
    limits: Limits,
) -> Outcome<(Completion, Bytes)> {
    let code = match read_code(code) {
        Ok(code) => code,
        Err(e) => return Outcome::failed(e),
    };
    let warm = match HeapIsolate::new(snapshot, &limits) {
        Ok(warm) => warm,
        Err(e) => return Outcome::failed(e),
    };
    warm.run(&code, &limits, Outside::none())
        .map_result(|result| match result {
            Ok((completion, unsaved)) => Ok((completion, unsaved.save()?)),
            Err((e, _used)) => Err(e),
        })
}

/// Why a call that took more than half its time limit is stored as its state.
const NEAR_TIME_LIMIT: &str =
    "it ran for more than half its time limit, which a replay might not fit";

/// Pairs the console of the run in `isolate` with `result`, and ends the run's state; a live
/// run that started at `started` and took too long for a replay is marked so.
fn finish(
    isolate: &mut v8::Isolate,
    result: Result<Rendered, RunError>,
    limits: &Limits,
    started: Option<std::time::Instant>,
) -> Outcome<Completion> {
    let globals::Left {
        console,
        pending_timers,
        mut tape,
        waited,
    } = match isolate.remove_slot::<RunState>() {
        Some(state) => state.finish(),
        None => globals::Left {
            console: Console::default(),
            pending_timers: 0,
            tape: Tape {
                replay: Replay::Impossible("the run kept no record of its inputs".into()),
                ..Tape::starting_now()
            },
            waited: Duration::ZERO,
        },
    };
    // A replay (under the server's limit, on another machine perhaps) might not fit; it
    // waits for no host replies, so that time does not count.
    let ran = started.map(|started| started.elapsed().saturating_sub(waited));
    if tape.replay == Replay::Exact && ran.is_some_and(|ran| ran > limits.timeout / 2) {
        tape.replay = Replay::Impossible(NEAR_TIME_LIMIT.into());
    }
    Outcome {
        result: result.map(|rendered| {
            let Rendered {
                mut output,
                cut,
                preview,
            } = rendered;
            let size = output.len();
            let clipped = clip(&mut output, limits.output_bytes);
            if clipped {
                output.push_str(&format!(
                    "\n[output truncated at {} bytes]",
                    limits.output_bytes
                ));
            }
            let output_truncated = clipped || cut;
            Completion {
                output,
                output_truncated,
                size,
                preview,
                pending_timers,
                tape,
            }
        }),
        console,
    }
}

/// Runs `code` as a REPL-mode script ([`repl`]), then drives microtasks and timers until
/// its result settles.
fn evaluate(
    scope: &mut v8::HandleScope,
    code: &Prepared,
    terminator: &Terminator,
    limits: &Limits,
    last: LastResult,
) -> Result<Rendered, RunError> {
    let tc = &mut v8::TryCatch::new(scope);
    let Some(source) = v8::String::new(tc, code.code()) else {
        return Err(RunError::Exception(JsException::new(
            "RangeError",
            "the code is too long for V8",
        )));
    };
    // Without the marker (it cannot fail short of termination), every user frame counts as
    // this call's.
    let first = trace::ThisCall::first_script_id(tc).unwrap_or(0);
    let call = trace::ThisCall { code, first };
    let started = match (repl::evaluate(tc, source), code.goal()) {
        // REPL mode could not compile it, and it may be a script that uses `await` as a name.
        (None, Goal::ReplOrScript) if !tc.has_terminated() => {
            tc.reset();
            repl::evaluate_script(tc, source)
        }
        (started, _) => started,
    };
    let Some(mut promise) = started else {
        return Err(failure(tc, terminator, limits, call));
    };
    // The script's promise resolves to a wrapper around its completion value; when that
    // value is itself a promise, the run's result is what it settles to.
    let mut unwrapped = false;
    loop {
        tc.perform_microtask_checkpoint();
        if tc.has_terminated() {
            return Err(failure(tc, terminator, limits, call));
        }
        match promise.state() {
            v8::PromiseState::Fulfilled => {
                let mut value = promise.result(tc);
                if !unwrapped {
                    unwrapped = true;
                    value = repl::completion(tc, value)
                        .ok_or_else(|| failure(tc, terminator, limits, call))?;
                    if let Ok(inner) = v8::Local::<v8::Promise>::try_from(value) {
                        promise = inner;
                        continue;
                    }
                }
                if last == LastResult::Keep {
                    last::keep(tc, value);
                }
                return render_result(tc, value, terminator, limits);
            }
            v8::PromiseState::Rejected => {
                globals::handled(tc, promise);
                let reason = promise.result(tc);
                // The error's own stack knows where it was made.
                let message = v8::Exception::create_message(tc, reason);
                let mut exception = describe_thrown(tc, reason);
                trace::locate(tc, &mut exception, reason, Some(message), call);
                return Err(RunError::Exception(exception));
            }
            v8::PromiseState::Pending => {}
        }
        match globals::next_event(tc) {
            globals::Next::Timer(callback, args) => {
                let undefined = v8::undefined(tc).into();
                if callback.call(tc, undefined, &args).is_none() {
                    return Err(failure(tc, terminator, limits, call));
                }
            }
            globals::Next::Settled => {}
            // V8's own work for the isolate (an async `WebAssembly.compile`, say) may settle
            // the promise yet: run what it posted, or wait for it while it is in progress.
            globals::Next::Idle if platform_work(tc) => {}
            globals::Next::Idle => return Err(RunError::Unsettled),
            globals::Next::TimedOut => {
                return Err(terminator
                    .error(limits)
                    .unwrap_or(RunError::Timeout(limits.timeout)))
            }
            globals::Next::Lost(why) => {
                return Err(RunError::Crashed(format!("the host went away: {why}")))
            }
        }
    }
}

/// Runs the tasks V8 posted for the isolate (the foreground half of its background work,
/// such as compiling WebAssembly); true if one ran or background work for it is still going,
/// after a short wait for it.
fn platform_work(isolate: &mut v8::Isolate) -> bool {
    let platform = v8::V8::get_current_platform();
    let mut ran = false;
    while v8::Platform::pump_message_loop(&platform, isolate, false) {
        ran = true;
    }
    if ran {
        return true;
    }
    if isolate.has_pending_background_tasks() {
        std::thread::sleep(Duration::from_millis(1));
        return true;
    }
    false
}

/// Whether a run keeps its result in its heap as `_` ([`last`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LastResult {
    /// A heap's run: the next call finds the result as `_`.
    Keep,
    /// Nothing is kept.
    Drop,
}

/// A run's result as text, and a preview of it when it does not fit the answer.
struct Rendered {
    output: String,
    /// `output` is not all of the result (see [`render::Text::cut`]).
    cut: bool,
    preview: Option<String>,
}

/// Renders the run's result, and a preview of it when it is longer than its share of the
/// answer, under the run's limits: a timeout, heap limit or exception while rendering fails
/// the run.
fn render_result<'s>(
    tc: &mut v8::TryCatch<v8::HandleScope<'s>>,
    value: v8::Local<'s, v8::Value>,
    terminator: &Terminator,
    limits: &Limits,
) -> Result<Rendered, RunError> {
    let terminated = |terminator: &Terminator| {
        terminator
            .error(limits)
            .unwrap_or(RunError::Timeout(limits.timeout))
    };
    let (output, cut) = match render(tc, value, limits.output_bytes) {
        Ok(text) => match terminator.error(limits) {
            Some(error) => return Err(error),
            None => (text.text, text.cut),
        },
        Err(Unrendered::Terminated) => return Err(terminated(terminator)),
        Err(Unrendered::Threw(mut e)) => {
            e.message = format!("the result could not be rendered: {}", e.message);
            return Err(RunError::Exception(e));
        }
    };
    let console = globals::console_size(tc);
    let size = preview::json_len(&output);
    let (share, _) = split(limits.answer_bytes, size, console);
    if size <= share {
        return Ok(Rendered {
            output,
            cut,
            preview: None,
        });
    }
    let preview = match preview::object(tc, value, share) {
        Ok(Some(preview)) => preview,
        Ok(None) => preview::text(&output, share),
        Err(preview::Stop::Full) => preview::text(&output, share),
        Err(preview::Stop::Terminated) => return Err(terminated(terminator)),
    };
    if tc.has_terminated() {
        return Err(terminated(terminator));
    }
    tc.reset();
    Ok(Rendered {
        output,
        cut,
        preview: Some(preview),
    })
}

/// Turns the pending exception or termination of `tc` into a [`RunError`].
fn failure(
    tc: &mut v8::TryCatch<v8::HandleScope>,
    terminator: &Terminator,
    limits: &Limits,
    call: trace::ThisCall,
) -> RunError {
    if let Some(error) = terminator.error(limits) {
        return error;
    }
    if tc.has_terminated() {
        return RunError::Timeout(limits.timeout);
    }
    let message = tc.message();
    match tc.exception() {
        Some(thrown) => {
            let mut exception = describe_thrown(tc, thrown);
            trace::locate(tc, &mut exception, thrown, message, call);
            RunError::Exception(exception)
        }
        None => RunError::Exception(JsException::new(
            "Error",
            "execution failed without an exception",
        )),
    }
}

/// Arms a watchdog that terminates `terminator`'s isolate at `deadline`, until dropped.
fn watch(terminator: &Arc<Terminator>, deadline: Instant) -> Watchdog {
    Watchdog::arm(Arc::clone(terminator), deadline)
}

/// Terminates the isolate if the run outlives its time limit. While the run waits for the host
/// it is parked (no code runs then, and the wait keeps the deadline itself); it is armed again
/// with the deadline after the wait, which moved if the host spent the wait asking a person.
struct Watchdog {
    control: mpsc::Sender<Control>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a watchdog is told.
enum Control {
    /// Terminate at this instant, unless told otherwise first.
    Arm(Instant),
    /// Do not terminate until armed again.
    Park,
    /// The run is over.
    Stop,
}

/// A way to park and arm a run's watchdog, for the loop that waits for host replies.
#[derive(Debug, Clone)]
pub(crate) struct WatchdogHandle(mpsc::Sender<Control>);

impl WatchdogHandle {
    /// No code runs until [`WatchdogHandle::arm`].
    pub(crate) fn park(&self) {
        let _ = self.0.send(Control::Park);
    }

    /// Code runs again; its time is up at `deadline`.
    pub(crate) fn arm(&self, deadline: Instant) {
        let _ = self.0.send(Control::Arm(deadline));
    }
}

impl Watchdog {
    fn arm(terminator: Arc<Terminator>, deadline: Instant) -> Self {
        let (control, orders) = mpsc::channel::<Control>();
        let thread = std::thread::Builder::new()
            .name("mcp-v8-watchdog".into())
            .spawn(move || {
                let mut deadline = Some(deadline);
                loop {
                    let order = match deadline {
                        Some(at) => {
                            orders.recv_timeout(at.saturating_duration_since(Instant::now()))
                        }
                        None => orders.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    };
                    match order {
                        Ok(Control::Arm(at)) => deadline = Some(at),
                        Ok(Control::Park) => deadline = None,
                        Ok(Control::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                        Err(RecvTimeoutError::Timeout) => {
                            terminator.terminate(TIMED_OUT);
                            return;
                        }
                    }
                }
            })
            .ok();
        Self { control, thread }
    }

    fn handle(&self) -> WatchdogHandle {
        WatchdogHandle(self.control.clone())
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Handles may outlive the watchdog (in the run's state): say it is over.
        let _ = self.control.send(Control::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests;
