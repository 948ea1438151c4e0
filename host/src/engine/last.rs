//! The last result kept in the heap as `_`, and the last error as `_error`, as Node's REPL
//! keeps them, so that the next call can page through a value too long to show
//! (`_.slice(100, 200)`) or look at what went wrong.
//!
//! Code that makes `_` (or `_error`) its own (`var _ = …`, `_ = 5`) keeps it: the engine
//! remembers, under a private key of the global object, the value it set last, and leaves the
//! name alone when it holds anything else. A replay sets both as the call did (the error comes
//! from the call's tape), so heaps stay deterministic.

use super::JsException;

/// A global the engine keeps up to date: its name, and the private key of what it set last.
#[derive(Clone, Copy)]
struct Kept {
    name: &'static str,
    key: &'static str,
}

const RESULT: Kept = Kept {
    name: "_",
    key: "mcp-v8#last",
};

const ERROR: Kept = Kept {
    name: "_error",
    key: "mcp-v8#error",
};

/// Makes `value` the heap's `_`, unless the code has made `_` its own. Returns whether it did.
pub(super) fn keep(scope: &mut v8::HandleScope, value: v8::Local<v8::Value>) -> bool {
    set(scope, RESULT, value).unwrap_or(false)
}

/// Sets `_` back to `undefined` after [`keep`], for a value the heap cannot be saved with.
pub(super) fn forget(scope: &mut v8::HandleScope) {
    let undefined = v8::undefined(scope).into();
    let _ = set(scope, RESULT, undefined);
}

/// Makes an `Error` like `error` (its name, message and stack) the heap's `_error`, unless the
/// code has made `_error` its own.
pub(super) fn keep_error(scope: &mut v8::HandleScope, error: &JsException) {
    let scope = &mut v8::HandleScope::new(scope);
    let Some(message) = v8::String::new(scope, &error.message) else {
        return;
    };
    let value = v8::Exception::error(scope, message);
    let name = match error.name.as_str() {
        "" => "Error",
        name => name,
    };
    let mut stack = format!("{name}: {}", error.message);
    for frame in &error.stack {
        stack.push_str(&format!("\n    at {frame}"));
    }
    if let Ok(object) = v8::Local::<v8::Object>::try_from(value) {
        for (key, text) in [("name", name), ("stack", stack.as_str())] {
            let (Some(key), Some(text)) =
                (v8::String::new(scope, key), v8::String::new(scope, text))
            else {
                return;
            };
            object.set(scope, key.into(), text.into());
        }
    }
    let _ = set(scope, ERROR, value);
}

fn set(scope: &mut v8::HandleScope, kept: Kept, value: v8::Local<v8::Value>) -> Option<bool> {
    // Its handles (the descriptor holds the old value) go when it returns.
    let scope = &mut v8::HandleScope::new(scope);
    let value = v8::Local::new(scope, value);
    let tc = &mut v8::TryCatch::new(scope);
    let global = tc.get_current_context().global(tc);
    let name = v8::String::new(tc, kept.name)?;
    let key_name = v8::String::new(tc, kept.key)?;
    let private = v8::Private::for_api(tc, Some(key_name));
    if global.has_own_property(tc, name.into())? {
        let ours = global.get_private(tc, private)?;
        // Only a data property can hold what was set; a getter is the code's own.
        let descriptor = global.get_own_property_descriptor(tc, name.into())?;
        let descriptor = v8::Local::<v8::Object>::try_from(descriptor).ok()?;
        let value_key = v8::String::new(tc, "value")?;
        let writable_key = v8::String::new(tc, "writable")?;
        if !descriptor.has_own_property(tc, value_key.into())? {
            return Some(false);
        }
        let current = descriptor.get(tc, value_key.into())?;
        let marked = global.has_private(tc, private)?;
        if !marked || !current.strict_equals(ours) {
            return Some(false);
        }
        if !descriptor.get(tc, writable_key.into())?.is_true() {
            return Some(false);
        }
    }
    global.create_data_property(tc, name.into(), value)?;
    global.set_private(tc, private, value)?;
    Some(true)
}
