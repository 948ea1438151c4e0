//! What the engine adds to the JavaScript global scope, backed by native functions and
//! per-run state ([`RunState`]): `console` (`console`), timers and `queueMicrotask`
//! (`timers`), a clock (`Date`, `performance`) that moves with the timers, `Math.random` on the
//! call's seed and a marked `WeakRef.prototype.deref` (`clock`), `mcp.progress` (`mcp`), the
//! upstream servers' tools as `tools` (`tools`), `fetch` and the web globals around it
//! (`web`), the web globals that stand alone — `crypto`, `atob`, `structuredClone`, ...
//! (`platform`); and here, the changes that keep every heap snapshottable (see [`PRELUDE`]),
//! modules refused, and the list of native callbacks.
//!
//! The functions live in the heap and are saved with it, so V8 must be able to find their
//! native callbacks when it creates and when it restores a snapshot: every callback is
//! declared once, in `natives!`, in a fixed order with the heap format that added it
//! ([`external_references`]); the list only grows at its end, with the heap format
//! ([`crate::envelope::FORMAT_VERSION`]), and a test pins it.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::live::{self, Event, Progress};
use super::render::{describe_thrown, render, Unrendered};
use super::tape::{fresh_key, Deck, Random, SecureRandom, Tape};

mod clock;
mod console;
mod mcp;
mod platform;
mod timers;
mod tools;
mod web;

use clock::*;
pub(super) use clock::{install_random, install_weak_ref_deref};
pub(super) use console::console_size;
use console::*;
pub use console::{Console, Dropped, LogLine};
pub(super) use mcp::install_mcp;
use mcp::*;
pub(super) use platform::install_platform;
use platform::*;
pub(super) use timers::next_timer;
use timers::*;
use tools::*;
pub(super) use tools::{install_tools, next_event, Next};
pub(super) use web::install_web;
use web::*;

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
    /// `crypto.getRandomValues`' generator, made from the deck's key on first use.
    secure: Option<SecureRandom>,
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
    /// The code's host calls (`tools`).
    host: HostCallState,
}

/// What a run left besides its result.
pub(super) struct Left {
    /// What the code printed.
    pub(super) console: Console,
    /// Timers that never fired.
    pub(super) pending_timers: usize,
    /// What the run read from outside its heap.
    pub(super) tape: Tape,
    /// Real time spent waiting for host replies.
    pub(super) waited: std::time::Duration,
}

impl RunState {
    pub(super) fn new(
        console_limit: usize,
        outside: super::Outside,
        deck: Deck,
        deadline: std::time::Instant,
    ) -> Self {
        let super::Outside { live, host } = outside;
        Self {
            console: Console::default(),
            printed: 0,
            console_limit,
            tail: None,
            timers: BTreeMap::new(),
            now: 0,
            random: Random::new(deck.seed()),
            secure: None,
            deck,
            sequence: 0,
            next_id: 1,
            unhandled: Vec::new(),
            unsaveable: Vec::new(),
            forget: None,
            live,
            live_pending: live::Pending::default(),
            host: HostCallState::new(host, deadline),
        }
    }

    /// The same state, with the run's watchdog parked while it waits for host replies.
    pub(in crate::engine) fn watched_by(mut self, watchdog: crate::engine::WatchdogHandle) -> Self {
        self.host.watchdog = Some(watchdog);
        self
    }

    /// Ends the run: returns what it left, and drops its timers and unsettled host calls
    /// (their handles must go before the isolate does).
    pub(super) fn finish(mut self) -> Left {
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
        Left {
            console: self.console,
            pending_timers: self.timers.len(),
            tape: self.deck.finish(),
            waited: self.host.waited,
        }
    }
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

fn reference(callback: impl v8::MapFnTo<v8::FunctionCallback>) -> v8::ExternalReference<'static> {
    v8::ExternalReference {
        function: callback.map_fn_to(),
    }
}

/// Declares every native callback a heap may hold, in the order of [`external_references`],
/// each with the heap format that added it; [`NATIVES`] names them in that order.
macro_rules! natives {
    ($($format:literal $callback:ident),* $(,)?) => {
        /// Every native callback, in a fixed order, for snapshot creation and restoration.
        pub(super) fn external_references() -> &'static v8::ExternalReferences {
            static REFS: OnceLock<v8::ExternalReferences> = OnceLock::new();
            REFS.get_or_init(|| v8::ExternalReferences::new(&[$(reference($callback)),*]))
        }

        /// The callbacks of [`external_references`], in order, with the heap format that added
        /// each.
        #[cfg_attr(not(test), allow(dead_code))]
        pub(super) const NATIVES: &[(u16, &str)] = &[$(($format, stringify!($callback))),*];
    };
}

// Append only, with the heap format that adds the entry (bump
// [`crate::envelope::FORMAT_VERSION`]): older heaps refer to the entries by index. The list is
// pinned by `the_native_callbacks_are_only_ever_appended`.
natives! {
    2 console_log,
    2 console_info,
    2 console_warn,
    2 console_error,
    2 console_debug,
    2 set_timeout,
    2 set_interval,
    2 clear_timer,
    2 queue_microtask,
    3 track_unsaveable,
    3 wall_now,
    3 elapsed,
    3 virtual_date,
    3 require,
    6 report_progress,
    7 is_error,
    8 random,
    10 weak_ref_deref,
    11 host_call,
    12 web,
    13 platform,
}

/// A new ArrayBuffer holding a copy of `bytes`, made through the isolate's allocator, which
/// keeps the ArrayBuffer budget.
fn array_buffer_of<'s>(
    scope: &mut v8::HandleScope<'s>,
    bytes: &[u8],
) -> v8::Local<'s, v8::ArrayBuffer> {
    let buffer = v8::ArrayBuffer::new(scope, bytes.len());
    if let Some(data) = buffer.data().filter(|_| !bytes.is_empty()) {
        // SAFETY: `buffer` was just made with exactly `bytes.len()` bytes, which nothing else
        // refers to yet.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), data.as_ptr().cast::<u8>(), bytes.len())
        };
    }
    buffer
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
    install_tools(scope)?;
    install_web(scope)?;
    install_clock(scope)?;
    install_random(scope)?;
    install_weak_ref_deref(scope)
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
const BUILT_INS: &str = include_str!("../built_ins.js");

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
const PRELUDE: &str = include_str!("../prelude.js");

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
