//! The `mcp` global: `mcp.progress(done, total?, message?)`, passed on to a client that asked
//! for progress.

use super::*;

/// Longest progress message passed on, in bytes.
pub(super) const MAX_PROGRESS_MESSAGE: usize = 1024;

/// `mcp.progress(done, total?, message?)`: the code's own progress, passed on to a client
/// that asked for progress while the call runs.
pub(super) fn report_progress(
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
        crate::engine::render::clip(&mut text, MAX_PROGRESS_MESSAGE);
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

/// Adds the `mcp` object (`mcp.progress`) to the global, unless the heap has a global of that
/// name: heaps saved before it existed get it on their next run, and code that declares its
/// own `mcp` keeps it.
pub(in crate::engine) fn install_mcp(scope: &mut v8::HandleScope) -> Option<()> {
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

impl RunState {
    pub(super) fn progress(&mut self, progress: Progress) {
        if let Some(live) = &self.live {
            live.send(Event::Progress(progress), &mut self.live_pending);
        }
    }
}
