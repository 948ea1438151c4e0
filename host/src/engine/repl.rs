//! V8's REPL mode, the evaluation Chrome DevTools' console and Deno's REPL use.
//!
//! A REPL-mode script runs like the body of an async function (so `await` works anywhere a
//! statement can stand), its top-level `let`/`const`/`class` may be declared again by a later
//! script, and it resolves to `{ ".repl_result": <completion value> }` — the value of its last
//! statement whatever kind of statement it is. The code runs exactly as written, so V8's own
//! positions are the user's.
//!
//! Code that REPL mode rejects though it is a valid script runs as a classic script
//! ([`crate::frontend::Goal::ReplOrScript`]), through [`evaluate_script`], which answers the
//! same way.
//!
//! rusty_v8 does not bind REPL mode, so this calls V8's `v8::debug::EvaluateGlobal` directly;
//! it is in the `librusty_v8` archive that the pinned `v8` crate links.

/// `v8::debug::EvaluateGlobalMode::kDefault`.
const EVALUATE_DEFAULT: i32 = 0;

extern "C" {
    /// `v8::MaybeLocal<v8::Value> v8::debug::EvaluateGlobal(v8::Isolate*,
    /// v8::Local<v8::String>, v8::debug::EvaluateGlobalMode, bool repl_mode)`.
    ///
    /// `Local` and `MaybeLocal` are single-pointer, trivially copyable classes, so the
    /// Itanium C++ ABI passes and returns them in registers like a pointer.
    #[link_name = "_ZN2v85debug14EvaluateGlobalEPNS_7IsolateENS_5LocalINS_6StringEEENS0_18EvaluateGlobalModeEb"]
    fn v8_debug_evaluate_global(
        isolate: *mut v8::Isolate,
        source: v8::Local<v8::String>,
        mode: i32,
        repl_mode: bool,
    ) -> *const v8::Value;
}

/// Compiles and starts `source` as a REPL-mode script in the entered context. Returns the
/// script's promise, or `None` with the exception (a syntax error, or termination) pending
/// in `scope`'s try-catch.
pub(super) fn evaluate<'s>(
    scope: &mut v8::HandleScope<'s>,
    source: v8::Local<v8::String>,
) -> Option<v8::Local<'s, v8::Promise>> {
    let isolate: &mut v8::Isolate = scope;
    let isolate: *mut v8::Isolate = isolate;
    // SAFETY: `isolate` is the live, entered isolate of `scope`, whose context is entered;
    // `source` is a handle in an open handle scope. The returned pointer, when not null, is
    // a handle V8 created in the innermost open handle scope (`scope`), valid for its
    // lifetime 's — exactly what a `Local<'s, Value>` is.
    let value = unsafe {
        let result = v8_debug_evaluate_global(isolate, source, EVALUATE_DEFAULT, true);
        std::mem::transmute::<*const v8::Value, Option<v8::Local<'s, v8::Value>>>(result)
    }?;
    v8::Local::<v8::Promise>::try_from(value).ok()
}

/// The completion value inside the object a REPL-mode script resolves to.
pub(super) fn completion<'s>(
    scope: &mut v8::HandleScope<'s>,
    resolved: v8::Local<'s, v8::Value>,
) -> Option<v8::Local<'s, v8::Value>> {
    let object = resolved.to_object(scope)?;
    let key = v8::String::new(scope, ".repl_result")?;
    object.get(scope, key.into())
}

/// Compiles and runs `source` as a classic script in the entered context, and answers as
/// [`evaluate`] does: a promise fulfilled with `{ ".repl_result": <completion value> }`, or
/// `None` with the exception pending in `scope`'s try-catch.
pub(super) fn evaluate_script<'s>(
    scope: &mut v8::HandleScope<'s>,
    source: v8::Local<v8::String>,
) -> Option<v8::Local<'s, v8::Promise>> {
    let value = v8::Script::compile(scope, source, None)?.run(scope)?;
    let wrapper = v8::Object::new(scope);
    let key = v8::String::new(scope, ".repl_result")?;
    wrapper.set(scope, key.into(), value)?;
    let resolver = v8::PromiseResolver::new(scope)?;
    resolver.resolve(scope, wrapper.into())?;
    Some(resolver.get_promise(scope))
}
