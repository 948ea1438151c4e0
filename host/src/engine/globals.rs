//! What the engine adds to the JavaScript global scope: `console`, timers,
//! `queueMicrotask`, `mcp.progress`, and a clock (`Date`, `performance`) that moves with the timers, backed by
//! native functions and per-run state; and the changes that keep every heap snapshottable (see
//! [`PRELUDE`]).
//!
//! The functions live in the heap and are saved with it, so V8 must be able to find their
//! native callbacks when it creates and when it restores a snapshot: every callback is listed
//! in [`external_references`], in a fixed order. Changing that list changes the heap format
//! ([`crate::envelope::FORMAT_VERSION`]).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::live::{self, Event, Progress};
use super::render::{describe_thrown, render, Unrendered};
use super::tape::{Deck, Random, Tape};

/// A captured `console` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LogLine {
    /// `log`, `info`, `warn`, `error` or `debug`.
    pub level: String,
    /// The arguments, rendered and joined by spaces.
    pub text: String,
}

/// Everything `console` printed during one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Console {
    /// The lines, in order.
    pub lines: Vec<LogLine>,
    /// Lines dropped from the middle because the output outgrew its size limit: the first
    /// lines and the latest are kept.
    #[serde(default)]
    pub dropped: Option<Dropped>,
}

/// Console lines dropped at the size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// How many of [`Console::lines`] come before them.
    pub after: usize,
    /// How many.
    pub lines: usize,
}

/// What a console line counts against the console limit.
fn console_cost(line: &LogLine) -> usize {
    line.text.len() + line.level.len() + 4
}

/// The latest console lines of a run over its console limit.
struct Tail {
    lines: std::collections::VecDeque<LogLine>,
    /// Their bytes ([`console_cost`]).
    bytes: usize,
    /// The bytes of the lines kept before them.
    head_bytes: usize,
    /// Lines dropped between those and these.
    dropped: usize,
}

struct Timer {
    id: u32,
    callback: v8::Global<v8::Function>,
    args: Vec<v8::Global<v8::Value>>,
    repeat: Option<u64>,
}

/// Per-run state, kept in an isolate slot while the run lasts.
pub(super) struct RunState {
    /// The lines kept: all of them, or once over the limit the first ones.
    console: Console,
    /// Bytes printed in all ([`console_cost`]).
    printed: usize,
    console_limit: usize,
    /// Over the limit: the latest lines, and their bytes and those of the first ones.
    tail: Option<Tail>,
    /// Timers by (due time in virtual ms, sequence number): earliest first, ties in order.
    timers: BTreeMap<(u64, u64), Timer>,
    /// Virtual time in ms: how far timers have moved the clock forward.
    now: u64,
    /// The run's inputs from outside the heap: recorded, or played back.
    deck: Deck,
    /// `Math.random`'s generator, seeded from the deck.
    random: Random,
    sequence: u64,
    next_id: u32,
    /// Rejected promises nobody handled (yet), by identity hash.
    unhandled: Vec<(i32, String)>,
    /// Objects made in this run that V8 cannot snapshot, with what they are.
    unsaveable: Vec<(v8::Weak<v8::Object>, String)>,
    /// Drops the objects the prelude can make again (`forget` in `prelude.js`).
    forget: Option<v8::Global<v8::Function>>,
    /// Where console lines and progress go as they happen, if anyone listens.
    live: Option<live::Sender>,
    /// What the listener had no room for yet.
    live_pending: live::Pending,
}

impl RunState {
    pub(super) fn new(console_limit: usize, live: Option<live::Sender>, deck: Deck) -> Self {
        Self {
            console: Console::default(),
            printed: 0,
            console_limit,
            tail: None,
            timers: BTreeMap::new(),
            now: 0,
            random: Random::new(deck.seed()),
            deck,
            sequence: 0,
            next_id: 1,
            unhandled: Vec::new(),
            unsaveable: Vec::new(),
            forget: None,
            live,
            live_pending: live::Pending::default(),
        }
    }

    /// Ends the run: returns the console, the number of timers that never fired and the
    /// run's tape, and drops those timers (their handles must go before the isolate does).
    pub(super) fn finish(mut self) -> (Console, usize, Tape) {
        for (_, text) in std::mem::take(&mut self.unhandled) {
            self.log("error", format!("Uncaught (in promise) {text}"));
        }
        if let Some(live) = self.live.take() {
            live.finish(std::mem::take(&mut self.live_pending));
        }
        if let Some(tail) = self.tail.take() {
            let after = self.console.lines.len();
            self.console.lines.extend(tail.lines);
            self.console.dropped = (tail.dropped > 0).then_some(Dropped {
                after,
                lines: tail.dropped,
            });
        }
        (self.console, self.timers.len(), self.deck.finish())
    }

    fn log(&mut self, level: &str, text: String) {
        let line = LogLine {
            level: level.to_string(),
            text,
        };
        let cost = console_cost(&line);
        self.printed = self.printed.saturating_add(cost);
        if self.printed <= self.console_limit {
            if let Some(live) = &self.live {
                live.send(Event::Console(line.clone()), &mut self.live_pending);
            }
            self.console.lines.push(line);
            return;
        }
        // Over the limit: the lines in the first half stay, the latest take the rest.
        let limit = self.console_limit;
        let lines = &mut self.console.lines;
        let printed_before = self.printed - cost;
        let tail = self.tail.get_or_insert_with(|| {
            let mut head_bytes = 0;
            let head = lines
                .iter()
                .take_while(|line| {
                    let fits = head_bytes + console_cost(line) <= limit / 2;
                    if fits {
                        head_bytes += console_cost(line);
                    }
                    fits
                })
                .count();
            Tail {
                lines: lines.split_off(head).into(),
                bytes: printed_before - head_bytes,
                head_bytes,
                dropped: 0,
            }
        });
        tail.bytes += cost;
        tail.lines.push_back(line);
        while tail.head_bytes + tail.bytes > limit {
            let Some(first) = tail.lines.pop_front() else {
                break;
            };
            tail.bytes -= console_cost(&first);
            tail.dropped += 1;
        }
    }

    /// Bytes the console so far takes in an answer ([`super::preview::line_size`]).
    fn answer_size(&self) -> usize {
        let tail = self.tail.iter().flat_map(|tail| tail.lines.iter());
        self.console
            .lines
            .iter()
            .chain(tail)
            .map(super::preview::line_size)
            .sum()
    }

    fn progress(&mut self, progress: Progress) {
        if let Some(live) = &self.live {
            live.send(Event::Progress(progress), &mut self.live_pending);
        }
    }

    fn schedule(&mut self, timer: Timer, delay: u64) {
        self.sequence += 1;
        self.timers
            .insert((self.now.saturating_add(delay), self.sequence), timer);
    }

    /// Milliseconds on the call's clock: real time since the run started (from the tape)
    /// plus the time that timers skipped.
    fn elapsed_ms(&mut self) -> f64 {
        self.deck.read_clock() + self.now as f64
    }

    /// The call's clock in ms since the Unix epoch, whole as `Date` has it.
    fn wall_ms(&mut self) -> f64 {
        (self.deck.clock_start_ms() + self.elapsed_ms()).floor()
    }
}

/// The next due timer's callback and arguments, advancing virtual time to it. Intervals are
/// scheduled again before they run, so they may clear themselves.
pub(super) fn next_timer<'s>(
    scope: &mut v8::HandleScope<'s>,
) -> Option<(v8::Local<'s, v8::Function>, Vec<v8::Local<'s, v8::Value>>)> {
    let state = scope.get_slot_mut::<RunState>()?;
    let ((due, _), timer) = state.timers.pop_first()?;
    state.now = due;
    let callback = timer.callback.clone();
    let args = timer.args.clone();
    if let Some(every) = timer.repeat {
        state.schedule(timer, every);
    }
    let callback = v8::Local::new(scope, callback);
    let args = args.iter().map(|a| v8::Local::new(scope, a)).collect();
    Some((callback, args))
}

/// V8's report of promise rejections: the ones still unhandled when the run ends are logged as
/// console errors, as a browser or Node.js would print them.
pub(super) extern "C" fn promise_rejected(message: v8::PromiseRejectMessage) {
    // SAFETY: V8 calls this from inside the isolate, with a context entered, which is what a
    // CallbackScope needs.
    let scope = &mut unsafe { v8::CallbackScope::new(&message) };
    let id = message.get_promise().get_identity_hash().get();
    match message.get_event() {
        v8::PromiseRejectEvent::PromiseRejectWithNoHandler => {
            let text = match message.get_value() {
                Some(value) => {
                    let e = describe_thrown(scope, value);
                    format!("{}: {}", e.name, e.message)
                }
                None => "undefined".into(),
            };
            if let Some(state) = scope.get_slot_mut::<RunState>() {
                state.unhandled.push((id, text));
            }
        }
        v8::PromiseRejectEvent::PromiseHandlerAddedAfterReject => {
            if let Some(state) = scope.get_slot_mut::<RunState>() {
                state.unhandled.retain(|(unhandled, _)| *unhandled != id);
            }
        }
        _ => {}
    }
}

/// The run's own result is reported as its error, not as an unhandled rejection.
pub(super) fn handled(scope: &mut v8::HandleScope, promise: v8::Local<v8::Promise>) {
    let id = promise.get_identity_hash().get();
    if let Some(state) = scope.get_slot_mut::<RunState>() {
        state.unhandled.retain(|(unhandled, _)| *unhandled != id);
    }
}

fn console_line(scope: &mut v8::HandleScope, args: &v8::FunctionCallbackArguments, level: &str) {
    let mut parts = Vec::with_capacity(args.length().max(0) as usize);
    for i in 0..args.length() {
        let limit = scope
            .get_slot::<RunState>()
            .map_or(0, |state| state.console_limit);
        let scope = &mut v8::HandleScope::new(scope);
        let value = v8::Local::new(scope, args.get(i));
        match render(scope, value, limit) {
            Ok(text) => parts.push(text.text),
            Err(Unrendered::Threw(_)) => parts.push("[unprintable value]".into()),
            // The run is being stopped: print nothing more.
            Err(Unrendered::Terminated) => return,
        }
    }
    let text = parts.join(" ");
    if let Some(state) = scope.get_slot_mut::<RunState>() {
        state.log(level, text);
    }
}

fn console_log(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    _: v8::ReturnValue,
) {
    console_line(scope, &args, "log");
}
fn console_info(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    _: v8::ReturnValue,
) {
    console_line(scope, &args, "info");
}
fn console_warn(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    _: v8::ReturnValue,
) {
    console_line(scope, &args, "warn");
}
fn console_error(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    _: v8::ReturnValue,
) {
    console_line(scope, &args, "error");
}
fn console_debug(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    _: v8::ReturnValue,
) {
    console_line(scope, &args, "debug");
}

fn throw_type_error(scope: &mut v8::HandleScope, message: &str) {
    if let Some(message) = v8::String::new(scope, message) {
        let error = v8::Exception::type_error(scope, message);
        scope.throw_exception(error);
    }
}

/// The error `require(name)` and `import(name)` give: there are no modules to load.
fn no_modules<'s>(scope: &mut v8::HandleScope<'s>, call: &str) -> Option<v8::Local<'s, v8::Value>> {
    let text = format!("{call} is not available: {}", crate::frontend::NO_MODULES);
    let message = v8::String::new(scope, &text)?;
    Some(v8::Exception::error(scope, message))
}

/// `require`: says why, instead of "require is not defined".
fn require(scope: &mut v8::HandleScope, args: v8::FunctionCallbackArguments, _: v8::ReturnValue) {
    let name = args.get(0).to_rust_string_lossy(scope);
    if let Some(error) = no_modules(scope, &format!("require('{name}')")) {
        scope.throw_exception(error);
    }
}

/// `import(name)`: a promise rejected with the reason.
pub(super) fn import_dynamically<'s>(
    scope: &mut v8::HandleScope<'s>,
    _options: v8::Local<'s, v8::Data>,
    _resource: v8::Local<'s, v8::Value>,
    specifier: v8::Local<'s, v8::String>,
    _attributes: v8::Local<'s, v8::FixedArray>,
) -> Option<v8::Local<'s, v8::Promise>> {
    let resolver = v8::PromiseResolver::new(scope)?;
    let name = specifier.to_rust_string_lossy(scope);
    let error = no_modules(scope, &format!("import('{name}')"))?;
    resolver.reject(scope, error)?;
    Some(resolver.get_promise(scope))
}

fn add_timer(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    mut rv: v8::ReturnValue,
    repeat: bool,
) {
    let Ok(callback) = v8::Local::<v8::Function>::try_from(args.get(0)) else {
        let name = if repeat { "setInterval" } else { "setTimeout" };
        throw_type_error(scope, &format!("{name}: the callback must be a function"));
        return;
    };
    let delay = args.get(1).number_value(scope).unwrap_or(0.0);
    // As in Node.js: below 1 ms (or not a number) means 1 ms; as in browsers, nothing waits
    // longer than 2^31 - 1 ms.
    let delay = if delay.is_finite() && delay >= 1.0 {
        delay.min(MAX_DELAY_MS as f64) as u64
    } else {
        1
    };
    let extra: Vec<v8::Global<v8::Value>> = (2..args.length())
        .map(|i| v8::Global::new(scope, args.get(i)))
        .collect();
    let callback = v8::Global::new(scope, callback);
    let Some(state) = scope.get_slot_mut::<RunState>() else {
        return;
    };
    let id = state.next_id;
    state.next_id = state.next_id.wrapping_add(1).max(1);
    state.schedule(
        Timer {
            id,
            callback,
            args: extra,
            repeat: repeat.then_some(delay),
        },
        delay,
    );
    rv.set_uint32(id);
}

/// The longest timer delay, in ms (about 24.8 days), as browsers and Node.js clamp it.
const MAX_DELAY_MS: u64 = (1 << 31) - 1;

fn set_timeout(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    rv: v8::ReturnValue,
) {
    add_timer(scope, args, rv, false);
}

fn set_interval(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    rv: v8::ReturnValue,
) {
    add_timer(scope, args, rv, true);
}

fn clear_timer(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    _: v8::ReturnValue,
) {
    let Some(id) = args.get(0).uint32_value(scope) else {
        return;
    };
    if let Some(state) = scope.get_slot_mut::<RunState>() {
        state.timers.retain(|_, timer| timer.id != id);
    }
}

fn queue_microtask(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    _: v8::ReturnValue,
) {
    match v8::Local::<v8::Function>::try_from(args.get(0)) {
        Ok(callback) => scope.enqueue_microtask(callback),
        Err(_) => throw_type_error(scope, "queueMicrotask: the callback must be a function"),
    }
}

/// Longest progress message passed on, in bytes.
const MAX_PROGRESS_MESSAGE: usize = 1024;

/// `mcp.progress(done, total?, message?)`: the code's own progress, passed on to a client
/// that asked for progress while the call runs.
fn report_progress(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    _: v8::ReturnValue,
) {
    fn number(scope: &mut v8::HandleScope, value: v8::Local<v8::Value>) -> Option<f64> {
        value
            .is_number()
            .then(|| value.number_value(scope))
            .flatten()
            .filter(|n| n.is_finite())
    }
    let Some(done) = number(scope, args.get(0)) else {
        return throw_type_error(
            scope,
            "mcp.progress(done, total, message): done must be a number",
        );
    };
    let total = args.get(1);
    let total = if total.is_null_or_undefined() {
        None
    } else {
        match number(scope, total) {
            Some(total) => Some(total),
            None => {
                return throw_type_error(
                    scope,
                    "mcp.progress(done, total, message): total must be a number",
                )
            }
        }
    };
    let message = args.get(2);
    let message = if message.is_null_or_undefined() {
        None
    } else {
        let mut text = message.to_rust_string_lossy(scope);
        super::render::clip(&mut text, MAX_PROGRESS_MESSAGE);
        Some(text)
    };
    if let Some(state) = scope.get_slot_mut::<RunState>() {
        state.progress(Progress {
            done,
            total,
            message,
        });
    }
}

/// `track(object, kind, forget?)`, called by [`PRELUDE`] for every object V8 cannot
/// snapshot; `forget`, if given, drops the ones the prelude can make again.
fn track_unsaveable(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    mut rv: v8::ReturnValue,
) {
    let value = args.get(0);
    rv.set(value);
    let Ok(object) = v8::Local::<v8::Object>::try_from(value) else {
        return;
    };
    let kind = args.get(1).to_rust_string_lossy(scope);
    let weak = v8::Weak::new(scope, object);
    let forget = v8::Local::<v8::Function>::try_from(args.get(2))
        .ok()
        .map(|f| v8::Global::new(scope, f));
    if let Some(state) = scope.get_slot_mut::<RunState>() {
        state.unsaveable.push((weak, kind));
        if state.forget.is_none() {
            state.forget = forget;
        }
    }
}

/// Bytes the console so far takes in an answer ([`super::preview::line_size`]).
pub(super) fn console_size(scope: &mut v8::HandleScope) -> usize {
    scope
        .get_slot::<RunState>()
        .map_or(0, RunState::answer_size)
}

/// What keeps the heap from being saved: the first object made in this run that V8 cannot
/// snapshot and that is still alive after a full garbage collection. Costs nothing unless the
/// run made such objects.
pub(super) fn unsaveable(scope: &mut v8::HandleScope) -> Option<String> {
    let state = scope.get_slot::<RunState>()?;
    if state.unsaveable.is_empty() {
        return None;
    }
    if let Some(forget) = state.forget.clone() {
        let forget = v8::Local::new(scope, forget);
        let undefined = v8::undefined(scope).into();
        let tc = &mut v8::TryCatch::new(scope);
        // It cannot throw; should it, the check below still tells what is left.
        let _ = forget.call(tc, undefined, &[]);
    }
    scope.low_memory_notification();
    let state = scope.get_slot::<RunState>()?;
    state
        .unsaveable
        .iter()
        .find(|(weak, _)| !weak.is_empty())
        .map(|(_, kind)| kind.clone())
}

/// `Date.now()` on the call's clock.
fn wall_now(
    scope: &mut v8::HandleScope,
    _: v8::FunctionCallbackArguments,
    mut rv: v8::ReturnValue,
) {
    rv.set_double(clock_now(scope));
}

/// `performance.now()`: milliseconds on the call's clock since the call started.
fn elapsed(scope: &mut v8::HandleScope, _: v8::FunctionCallbackArguments, mut rv: v8::ReturnValue) {
    rv.set_double(
        scope
            .get_slot_mut::<RunState>()
            .map_or(0.0, RunState::elapsed_ms),
    );
}

/// `Math.random()`: from the run's seed, so that a replay draws the same numbers.
fn random(scope: &mut v8::HandleScope, _: v8::FunctionCallbackArguments, mut rv: v8::ReturnValue) {
    let value = match scope.get_slot_mut::<RunState>() {
        Some(state) => state.random.next_f64(),
        // Only between runs (code run while a heap is set up), where nothing is recorded.
        None => Random::new(Tape::starting_now().seed).next_f64(),
    };
    rv.set_double(value);
}

fn reference(callback: impl v8::MapFnTo<v8::FunctionCallback>) -> v8::ExternalReference<'static> {
    v8::ExternalReference {
        function: callback.map_fn_to(),
    }
}

/// Every native callback, in a fixed order, for snapshot creation and restoration.
pub(super) fn external_references() -> &'static v8::ExternalReferences {
    static REFS: OnceLock<v8::ExternalReferences> = OnceLock::new();
    REFS.get_or_init(|| {
        v8::ExternalReferences::new(&[
            reference(console_log),
            reference(console_info),
            reference(console_warn),
            reference(console_error),
            reference(console_debug),
            reference(set_timeout),
            reference(set_interval),
            reference(clear_timer),
            reference(queue_microtask),
            // Heap format 3. Append only: older heaps refer to the entries above by index.
            reference(track_unsaveable),
            reference(wall_now),
            reference(elapsed),
            reference(virtual_date),
            reference(require),
            // Heap format 6.
            reference(report_progress),
            // Heap format 7.
            reference(is_error),
            // Heap format 8.
            reference(random),
            // Heap format 10.
            reference(weak_ref_deref),
        ])
    })
}

fn define(
    scope: &mut v8::HandleScope,
    target: v8::Local<v8::Object>,
    name: &str,
    callback: impl v8::MapFnTo<v8::FunctionCallback>,
) -> Option<()> {
    let function = v8::Function::new(scope, callback)?;
    let key = v8::String::new(scope, name)?;
    target.set(scope, key.into(), function.into())?;
    Some(())
}

/// Adds `console`, the timer functions and `queueMicrotask` to a fresh context's global.
pub(super) fn install(scope: &mut v8::HandleScope) -> Option<()> {
    let context = scope.get_current_context();
    let global = context.global(scope);
    let console = v8::Object::new(scope);
    define(scope, console, "log", console_log)?;
    define(scope, console, "info", console_info)?;
    define(scope, console, "warn", console_warn)?;
    define(scope, console, "error", console_error)?;
    define(scope, console, "debug", console_debug)?;
    let key = v8::String::new(scope, "console")?;
    global.set(scope, key.into(), console.into())?;
    define(scope, global, "setTimeout", set_timeout)?;
    define(scope, global, "setInterval", set_interval)?;
    define(scope, global, "clearTimeout", clear_timer)?;
    define(scope, global, "clearInterval", clear_timer)?;
    define(scope, global, "queueMicrotask", queue_microtask)?;
    define(scope, global, "require", require)?;
    install_mcp(scope)?;
    install_clock(scope)?;
    install_random(scope)?;
    install_weak_ref_deref(scope)
}

/// What a replay of a call that read a `WeakRef` cannot know.
const GARBAGE_COLLECTED: &str = "it read a WeakRef, whose target the garbage collector decides";

/// Puts `WeakRef.prototype.deref` behind a native function that marks the run as one a
/// replay cannot reproduce (when a target is collected is up to V8's garbage collector), once
/// per heap as [`install_random`] does.
pub(super) fn install_weak_ref_deref(scope: &mut v8::HandleScope) -> Option<()> {
    let global = scope.get_current_context().global(scope);
    let name = v8::String::new(scope, "mcp-v8 WeakRef")?;
    let mark = v8::Private::for_api(scope, Some(name));
    if global.get_private(scope, mark)?.is_true() {
        return Some(());
    }
    let weak_ref = property(scope, global, "WeakRef")?;
    if let Ok(weak_ref) = v8::Local::<v8::Object>::try_from(weak_ref) {
        let prototype = property(scope, weak_ref, "prototype")?;
        if let Ok(prototype) = v8::Local::<v8::Object>::try_from(prototype) {
            let real = property(scope, prototype, "deref")?;
            if real.is_function() {
                let key = real_deref_key(scope)?;
                global.set_private(scope, key, real)?;
                let function = named_function(scope, "deref", 0, weak_ref_deref)?;
                hide(scope, prototype, "deref", function.into())?;
            }
        }
    }
    let done = v8::Boolean::new(scope, true);
    global.set_private(scope, mark, done.into())?;
    Some(())
}

fn real_deref_key<'s>(scope: &mut v8::HandleScope<'s>) -> Option<v8::Local<'s, v8::Private>> {
    let name = v8::String::new(scope, "mcp-v8 WeakRef.prototype.deref")?;
    Some(v8::Private::for_api(scope, Some(name)))
}

/// `WeakRef.prototype.deref`: the built-in's answer, and a run a replay cannot reproduce.
fn weak_ref_deref(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    mut rv: v8::ReturnValue,
) {
    if let Some(state) = scope.get_slot_mut::<RunState>() {
        state.deck.cannot_replay(GARBAGE_COLLECTED);
    }
    let global = scope.get_current_context().global(scope);
    let real = real_deref_key(scope)
        .and_then(|key| global.get_private(scope, key))
        .and_then(|real| v8::Local::<v8::Function>::try_from(real).ok());
    // An exception (a receiver that is no WeakRef) propagates as the built-in's would.
    if let Some(value) = real.and_then(|real| real.call(scope, args.this().into(), &[])) {
        rv.set(value);
    }
}

/// Puts `Math.random` on the run's seed ([`super::tape`]), once per heap: a fresh context
/// gets it from [`install`], a heap saved before it existed on its next run (a mark on the
/// global says it is done, so that code that replaced `Math.random` keeps its own).
pub(super) fn install_random(scope: &mut v8::HandleScope) -> Option<()> {
    let global = scope.get_current_context().global(scope);
    let name = v8::String::new(scope, "mcp-v8 random")?;
    let mark = v8::Private::for_api(scope, Some(name));
    if global.get_private(scope, mark)?.is_true() {
        return Some(());
    }
    let math = property(scope, global, "Math")?;
    if let Ok(math) = v8::Local::<v8::Object>::try_from(math) {
        let function = named_function(scope, "random", 0, random)?;
        hide(scope, math, "random", function.into())?;
    }
    let done = v8::Boolean::new(scope, true);
    global.set_private(scope, mark, done.into())?;
    Some(())
}

/// Adds the `mcp` object (`mcp.progress`) to the global, unless the heap has a global of that
/// name: heaps saved before it existed get it on their next run, and code that declares its
/// own `mcp` keeps it.
pub(super) fn install_mcp(scope: &mut v8::HandleScope) -> Option<()> {
    let global = scope.get_current_context().global(scope);
    let key = v8::String::new(scope, "mcp")?;
    if global.has(scope, key.into())? {
        return Some(());
    }
    let mcp = v8::Object::new(scope);
    define(scope, mcp, "progress", report_progress)?;
    global.define_own_property(
        scope,
        key.into(),
        mcp.into(),
        v8::PropertyAttribute::DONT_ENUM,
    )?;
    Some(())
}

/// Puts `Date` and `performance` on the call's clock: `Date.now()`, `new Date()`, `Date()`
/// and `performance.now()` read real time since the call started plus the time timers skipped.
/// Done with V8's API rather than a script, which would have to be compiled for every
/// stateless call.
fn install_clock(scope: &mut v8::HandleScope) -> Option<()> {
    let global = scope.get_current_context().global(scope);
    let real = property(scope, global, "Date")?;
    let real_date = v8::Local::<v8::Function>::try_from(real).ok()?;
    // The real constructor is kept under a private key of the global object: as the
    // function's data, V8's snapshot serialiser crashed on it (with typed arrays in the heap).
    let private = real_date_key(scope)?;
    global.set_private(scope, private, real)?;
    let date = v8::Function::builder(virtual_date).length(7).build(scope)?;
    date.set_name(v8::String::new(scope, "Date")?);
    // The built-in's descriptors: `prototype` fixed, the rest writable and configurable.
    let prototype = property(scope, real_date.into(), "prototype")?;
    let key = v8::String::new(scope, "prototype")?;
    date.define_own_property(
        scope,
        key.into(),
        prototype,
        v8::PropertyAttribute::READ_ONLY
            | v8::PropertyAttribute::DONT_ENUM
            | v8::PropertyAttribute::DONT_DELETE,
    )?;
    let prototype = prototype.to_object(scope)?;
    hide(scope, prototype, "constructor", date.into())?;
    for name in ["parse", "UTC"] {
        let value = property(scope, real_date.into(), name)?;
        hide(scope, date.into(), name, value)?;
    }
    let now = named_function(scope, "now", 0, wall_now)?;
    hide(scope, date.into(), "now", now.into())?;
    hide(scope, global, "Date", date.into())?;

    let performance = v8::Object::new(scope);
    let now = named_function(scope, "now", 0, elapsed)?;
    hide(scope, performance, "now", now.into())?;
    let tag = v8::String::new(scope, "Performance")?;
    let to_string_tag = v8::Symbol::get_to_string_tag(scope);
    performance.define_own_property(
        scope,
        to_string_tag.into(),
        tag.into(),
        v8::PropertyAttribute::DONT_ENUM,
    )?;
    hide(scope, global, "performance", performance.into())
}

fn property<'s>(
    scope: &mut v8::HandleScope<'s>,
    target: v8::Local<v8::Object>,
    name: &str,
) -> Option<v8::Local<'s, v8::Value>> {
    let key = v8::String::new(scope, name)?;
    target.get(scope, key.into())
}

/// Defines `target[name] = value`, not enumerable, as built-ins are.
fn hide(
    scope: &mut v8::HandleScope,
    target: v8::Local<v8::Object>,
    name: &str,
    value: v8::Local<v8::Value>,
) -> Option<()> {
    let key = v8::String::new(scope, name)?;
    target.define_own_property(scope, key.into(), value, v8::PropertyAttribute::DONT_ENUM)?;
    Some(())
}

/// A function as built-in methods are: named, with its `length`, and not a constructor.
fn named_function<'s>(
    scope: &mut v8::HandleScope<'s>,
    name: &str,
    length: i32,
    callback: impl v8::MapFnTo<v8::FunctionCallback>,
) -> Option<v8::Local<'s, v8::Function>> {
    let function = v8::Function::builder(callback)
        .length(length)
        .constructor_behavior(v8::ConstructorBehavior::Throw)
        .build(scope)?;
    let name = v8::String::new(scope, name)?;
    function.set_name(name);
    Some(function)
}

/// The `Date` constructor code sees: V8's own (its function data), except that without
/// arguments it reads the call's clock.
fn virtual_date(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    mut rv: v8::ReturnValue,
) {
    let global = scope.get_current_context().global(scope);
    let real = real_date_key(scope)
        .and_then(|key| global.get_private(scope, key))
        .and_then(|real| v8::Local::<v8::Function>::try_from(real).ok());
    let Some(real) = real else {
        return;
    };
    let now = clock_now(scope);
    let now = v8::Number::new(scope, now).into();
    let new_target = args.new_target();
    if new_target.is_undefined() {
        // `Date()` called as a function: the current time as a string.
        if let Some(text) = real
            .new_instance(scope, &[now])
            .and_then(|d| d.to_string(scope))
        {
            rv.set(text.into());
        }
        return;
    }
    let argv: Vec<v8::Local<v8::Value>> = if args.length() == 0 {
        vec![now]
    } else {
        (0..args.length()).map(|i| args.get(i)).collect()
    };
    let Some(date) = real.new_instance(scope, &argv) else {
        return;
    };
    // A subclass (`class Day extends Date`) gets its own prototype, when it has one that is
    // an object (GetPrototypeFromConstructor).
    if let Ok(target) = v8::Local::<v8::Object>::try_from(new_target) {
        let Some(prototype) = property(scope, target, "prototype") else {
            return;
        };
        if prototype.is_object() {
            date.set_prototype(scope, prototype);
        }
    }
    rv.set(date.into());
}

fn real_date_key<'s>(scope: &mut v8::HandleScope<'s>) -> Option<v8::Local<'s, v8::Private>> {
    let name = v8::String::new(scope, "mcp-v8 Date")?;
    Some(v8::Private::for_api(scope, Some(name)))
}

/// The call's clock in ms since the Unix epoch.
fn clock_now(scope: &mut v8::HandleScope) -> f64 {
    match scope.get_slot_mut::<RunState>() {
        Some(state) => state.wall_ms(),
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_millis() as f64),
    }
}

/// Sets `Error.stackTraceLimit` (to V8's default, 10) where it is missing. V8 leaves it out of
/// the contexts of snapshot creators, and without it `error.stack` is undefined. Heaps saved
/// before this existed get it on their next call; code that replaced `Error` keeps its own.
pub(super) fn enable_error_stacks(scope: &mut v8::HandleScope) -> Option<()> {
    let global = scope.get_current_context().global(scope);
    let error = property(scope, global, "Error")?;
    let error = v8::Local::<v8::Function>::try_from(error).ok()?;
    let limit = v8::String::new(scope, "stackTraceLimit")?;
    if !error.has_own_property(scope, limit.into())? {
        let ten = v8::Integer::new(scope, 10);
        error.set(scope, limit.into(), ten.into())?;
    }
    Some(())
}

/// Built-ins that V8 installs only in contexts it will never snapshot (its "experimental"
/// globals, skipped whenever the isolate is a snapshot creator), so that a heap has the
/// built-ins a stateless call has: `Error.isError`, `Promise.try`, `RegExp.escape` and
/// `Atomics.pause` ([`BUILT_INS`]). Done once per heap, new or saved before this existed (a
/// mark on the global says so), so that code that deleted or replaced one keeps its choice.
/// Two stay out: `WebAssembly` (V8 cannot snapshot its objects) and `SharedArrayBuffer` (V8
/// restores one from a snapshot as a broken object).
pub(super) fn complete_built_ins(scope: &mut v8::HandleScope) -> Option<()> {
    let global = scope.get_current_context().global(scope);
    let name = v8::String::new(scope, "mcp-v8 built-ins")?;
    let mark = v8::Private::for_api(scope, Some(name));
    if global.get_private(scope, mark)?.is_true() {
        return Some(());
    }
    let is_error = named_function(scope, "isError", 1, is_error)?;
    {
        // It defines what it can and skips what a heap's code took away (`Promise` deleted,
        // say); whatever happens, it is not tried again on that heap.
        let tc = &mut v8::TryCatch::new(scope);
        let source = v8::String::new(tc, BUILT_INS)?;
        let setup = v8::Script::compile(tc, source, None).and_then(|s| s.run(tc));
        if let Some(setup) = setup.and_then(|f| v8::Local::<v8::Function>::try_from(f).ok()) {
            let undefined = v8::undefined(tc).into();
            let _ = setup.call(tc, undefined, &[global.into(), is_error.into()]);
        }
    }
    let done = v8::Boolean::new(scope, true);
    global.set_private(scope, mark, done.into())?;
    Some(())
}

/// `Error.isError(value)`: whether `value` has an error's [[ErrorData]].
fn is_error(_: &mut v8::HandleScope, args: v8::FunctionCallbackArguments, mut rv: v8::ReturnValue) {
    rv.set_bool(args.get(0).is_native_error());
}

/// See [`complete_built_ins`].
const BUILT_INS: &str = include_str!("built_ins.js");

/// JavaScript run once in every fresh heap, so that built-ins that V8 cannot snapshot never
/// crash a save:
///
/// * `FinalizationRegistry` keeps no registrations: V8 aborts on a snapshot holding one with
///   an unregister token or a collected target. Its callbacks would never run here anyway
///   (a call lasts milliseconds and the spec does not promise that they run); `register`
///   and `unregister` keep their checks and results.
/// * Intl constructors make stand-ins that make their ICU object when first used and drop it
///   before every save ([`unsaveable`] calls the prelude's `forget`), so a formatter kept in a
///   global survives calls. Segments and segment iterators cannot be made again: they are
///   tracked, and a save that would still include one fails with an error naming it.
const PRELUDE: &str = include_str!("prelude.js");

/// Runs [`PRELUDE`] in a fresh context that will be snapshotted.
pub(super) fn make_snapshottable(scope: &mut v8::HandleScope) -> Option<()> {
    let source = v8::String::new(scope, PRELUDE)?;
    let setup = v8::Script::compile(scope, source, None)?.run(scope)?;
    let setup = v8::Local::<v8::Function>::try_from(setup).ok()?;
    let track = v8::Function::new(scope, track_unsaveable)?;
    let undefined = v8::undefined(scope).into();
    setup.call(scope, undefined, &[track.into()])?;
    Some(())
}
