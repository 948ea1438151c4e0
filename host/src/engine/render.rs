//! Turning JavaScript values and exceptions into text for the agent.
//!
//! Rendering runs user code (`toJSON`, `toString`, getters, Proxy traps), so it can throw or
//! be terminated by the time and heap limits like any other code; callers get to know which.

use super::JsException;

/// Longest exception name or message kept, in bytes: they travel in the worker's answer
/// header, and an agent needs the start of a long message, not all of it.
const MAX_ERROR_TEXT: usize = 16 * 1024;

/// Why a value could not be rendered.
pub(crate) enum Unrendered {
    /// Execution was terminated meanwhile (time or heap limit).
    Terminated,
    /// Rendering threw this exception.
    Threw(JsException),
}

/// Cuts `text` to at most `max` bytes on a character boundary; true if anything was cut.
pub(crate) fn clip(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    true
}

fn clipped(mut text: String) -> String {
    if clip(&mut text, MAX_ERROR_TEXT) {
        text.push_str("… [truncated]");
    }
    text
}

/// The name and message of a thrown value; where it was thrown is `trace`'s business.
pub(super) fn describe_thrown(
    scope: &mut v8::HandleScope,
    thrown: v8::Local<v8::Value>,
) -> JsException {
    let property = |scope: &mut v8::HandleScope, key: &str| -> Option<String> {
        let object = thrown.to_object(scope)?;
        let key = v8::String::new(scope, key)?;
        let value = object.get(scope, key.into())?;
        (!value.is_undefined()).then(|| value.to_rust_string_lossy(scope))
    };
    if thrown.is_native_error() {
        let tc = &mut v8::TryCatch::new(scope);
        JsException::new(
            clipped(property(tc, "name").unwrap_or_else(|| "Error".into())),
            clipped(property(tc, "message").unwrap_or_default()),
        )
    } else {
        let text = render(scope, thrown).unwrap_or_else(|_| "[unprintable value]".into());
        JsException::new("Error", clipped(format!("thrown value: {text}")))
    }
}

/// Renders a completion value: strings as they are, objects as JSON when they can be,
/// everything else as `String(value)` would.
pub(crate) fn render(
    scope: &mut v8::HandleScope,
    value: v8::Local<v8::Value>,
) -> Result<String, Unrendered> {
    if value.is_string() {
        return Ok(value.to_rust_string_lossy(scope));
    }
    if let Ok(symbol) = v8::Local::<v8::Symbol>::try_from(value) {
        let description = symbol.description(scope);
        return Ok(if description.is_undefined() {
            "Symbol()".into()
        } else {
            format!("Symbol({})", description.to_rust_string_lossy(scope))
        });
    }
    let tc = &mut v8::TryCatch::new(scope);
    if value.is_object() && !value.is_function() {
        if let Some(json) = v8::json::stringify(tc, value) {
            let json = json.to_rust_string_lossy(tc);
            // JSON.stringify gives undefined (rendered here as "undefined") for some objects.
            if json != "undefined" {
                return Ok(json);
            }
        }
        if tc.has_terminated() {
            return Err(Unrendered::Terminated);
        }
        // Not JSON (a cycle, a BigInt, a throwing toJSON): String(value) instead.
        tc.reset();
    }
    if let Some(text) = value.to_string(tc) {
        return Ok(text.to_rust_string_lossy(tc));
    }
    if tc.has_terminated() {
        return Err(Unrendered::Terminated);
    }
    match tc.exception() {
        Some(exception) => Err(Unrendered::Threw(describe_thrown(tc, exception))),
        None => Err(Unrendered::Terminated),
    }
}
