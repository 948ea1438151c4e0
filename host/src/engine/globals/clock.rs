//! The inputs a replay reads from the tape: `Date` and `performance` on the call's clock,
//! `Math.random` on the call's seed, and `WeakRef.prototype.deref`, which marks a call a replay
//! cannot reproduce.

use super::*;

/// `Date.now()` on the call's clock.
pub(super) fn wall_now(
    scope: &mut v8::HandleScope,
    _: v8::FunctionCallbackArguments,
    mut rv: v8::ReturnValue,
) {
    rv.set_double(clock_now(scope));
}

/// `performance.now()`: milliseconds on the call's clock since the call started.
pub(super) fn elapsed(
    scope: &mut v8::HandleScope,
    _: v8::FunctionCallbackArguments,
    mut rv: v8::ReturnValue,
) {
    rv.set_double(
        scope
            .get_slot_mut::<RunState>()
            .map_or(0.0, RunState::elapsed_ms),
    );
}

/// `Math.random()`: from the run's seed, so that a replay draws the same numbers.
pub(super) fn random(
    scope: &mut v8::HandleScope,
    _: v8::FunctionCallbackArguments,
    mut rv: v8::ReturnValue,
) {
    let value = match scope.get_slot_mut::<RunState>() {
        Some(state) => state.random.next_f64(),
        // Only between runs (code run while a heap is set up), where nothing is recorded.
        None => Random::new(Tape::starting_now().seed).next_f64(),
    };
    rv.set_double(value);
}

/// What a replay of a call that read a `WeakRef` cannot know.
pub(super) const GARBAGE_COLLECTED: &str =
    "it read a WeakRef, whose target the garbage collector decides";

/// Puts `WeakRef.prototype.deref` behind a native function that marks the run as one a
/// replay cannot reproduce (when a target is collected is up to V8's garbage collector), once
/// per heap as [`install_random`] does.
pub(in crate::engine) fn install_weak_ref_deref(scope: &mut v8::HandleScope) -> Option<()> {
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

pub(super) fn real_deref_key<'s>(
    scope: &mut v8::HandleScope<'s>,
) -> Option<v8::Local<'s, v8::Private>> {
    let name = v8::String::new(scope, "mcp-v8 WeakRef.prototype.deref")?;
    Some(v8::Private::for_api(scope, Some(name)))
}

/// `WeakRef.prototype.deref`: the built-in's answer, and a run a replay cannot reproduce.
pub(super) fn weak_ref_deref(
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
pub(in crate::engine) fn install_random(scope: &mut v8::HandleScope) -> Option<()> {
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

/// Puts `Date` and `performance` on the call's clock: `Date.now()`, `new Date()`, `Date()`
/// and `performance.now()` read real time since the call started plus the time timers skipped.
/// Done with V8's API rather than a script, which would have to be compiled for every
/// stateless call.
pub(super) fn install_clock(scope: &mut v8::HandleScope) -> Option<()> {
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

/// The `Date` constructor code sees: V8's own (its function data), except that without
/// arguments it reads the call's clock.
pub(super) fn virtual_date(
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

pub(super) fn real_date_key<'s>(
    scope: &mut v8::HandleScope<'s>,
) -> Option<v8::Local<'s, v8::Private>> {
    let name = v8::String::new(scope, "mcp-v8 Date")?;
    Some(v8::Private::for_api(scope, Some(name)))
}

/// The call's clock in ms since the Unix epoch.
pub(super) fn clock_now(scope: &mut v8::HandleScope) -> f64 {
    match scope.get_slot_mut::<RunState>() {
        Some(state) => state.wall_ms(),
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_millis() as f64),
    }
}

impl RunState {
    /// Milliseconds on the call's clock: real time since the run started (from the tape)
    /// plus the time that timers skipped.
    pub(super) fn elapsed_ms(&mut self) -> f64 {
        self.deck.read_clock() + self.now as f64
    }

    /// The call's clock in ms since the Unix epoch, whole as `Date` has it.
    pub(super) fn wall_ms(&mut self) -> f64 {
        (self.deck.clock_start_ms() + self.elapsed_ms()).floor()
    }
}
