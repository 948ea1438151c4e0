//! The last result kept in the heap as `_`, as Node's REPL keeps it, so that the next call can
//! page through a value too long to show (`_.slice(100, 200)`).
//!
//! Code that makes `_` its own (`var _ = …`, `_ = 5`) keeps it: the engine remembers, under a
//! private key of the global object, the value it set last, and leaves `_` alone when it holds
//! anything else. A replay sets `_` as the call did, so heaps stay deterministic.

const NAME: &str = "_";

fn key<'s>(scope: &mut v8::HandleScope<'s>) -> Option<v8::Local<'s, v8::Private>> {
    let name = v8::String::new(scope, "mcp-v8#last")?;
    Some(v8::Private::for_api(scope, Some(name)))
}

/// Makes `value` the heap's `_`, unless the code has made `_` its own. Returns whether it did.
pub(super) fn keep(scope: &mut v8::HandleScope, value: v8::Local<v8::Value>) -> bool {
    set(scope, value).unwrap_or(false)
}

/// Sets `_` back to `undefined` after [`keep`], for a value the heap cannot be saved with.
pub(super) fn forget(scope: &mut v8::HandleScope) {
    let undefined = v8::undefined(scope).into();
    let _ = set(scope, undefined);
}

fn set(scope: &mut v8::HandleScope, value: v8::Local<v8::Value>) -> Option<bool> {
    // Its handles (the descriptor holds the old value) go when it returns.
    let scope = &mut v8::HandleScope::new(scope);
    let value = v8::Local::new(scope, value);
    let tc = &mut v8::TryCatch::new(scope);
    let global = tc.get_current_context().global(tc);
    let name = v8::String::new(tc, NAME)?;
    let private = key(tc)?;
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
