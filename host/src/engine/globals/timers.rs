//! `setTimeout`, `setInterval`, `clearTimeout`/`clearInterval` and `queueMicrotask`, on the
//! run's virtual clock: timers fire in order of due time, and time skips ahead to each.

use super::*;

pub(super) struct Timer {
    id: u32,
    callback: v8::Global<v8::Function>,
    args: Vec<v8::Global<v8::Value>>,
    repeat: Option<u64>,
}

/// The next due timer's callback and arguments, advancing virtual time to it. Intervals are
/// scheduled again before they run, so they may clear themselves.
pub(in crate::engine) fn next_timer<'s>(
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

pub(super) fn add_timer(
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
pub(super) const MAX_DELAY_MS: u64 = (1 << 31) - 1;

pub(super) fn set_timeout(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    rv: v8::ReturnValue,
) {
    add_timer(scope, args, rv, false);
}

pub(super) fn set_interval(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    rv: v8::ReturnValue,
) {
    add_timer(scope, args, rv, true);
}

pub(super) fn clear_timer(
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

pub(super) fn queue_microtask(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    _: v8::ReturnValue,
) {
    match v8::Local::<v8::Function>::try_from(args.get(0)) {
        Ok(callback) => scope.enqueue_microtask(callback),
        Err(_) => throw_type_error(scope, "queueMicrotask: the callback must be a function"),
    }
}

impl RunState {
    pub(super) fn schedule(&mut self, timer: Timer, delay: u64) {
        self.sequence += 1;
        self.timers
            .insert((self.now.saturating_add(delay), self.sequence), timer);
    }
}
