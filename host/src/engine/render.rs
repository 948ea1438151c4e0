//! Turning JavaScript values and exceptions into text for the agent.
//!
//! Rendering runs user code (`toJSON`, `toString`, getters, Proxy traps), so it can throw or
//! be terminated by the time and heap limits like any other code; callers get to know which.

use super::{preview, JsException};

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
        let name = property(tc, "name").unwrap_or_else(|| "Error".into());
        let name = subclass_name(tc, thrown, &name).unwrap_or(name);
        JsException::new(
            clipped(name),
            clipped(property(tc, "message").unwrap_or_default()),
        )
    } else {
        let scope = &mut v8::HandleScope::new(scope);
        let thrown = v8::Local::new(scope, thrown);
        let text = render(scope, thrown, MAX_ERROR_TEXT)
            .map(|text| text.text)
            .unwrap_or_else(|_| "[unprintable value]".into());
        // An instance of a class says which, as Node does (`Test262Error {"message":""}`).
        let class = v8::Local::<v8::Object>::try_from(thrown)
            .ok()
            .filter(|object| !object.is_array() && !object.is_function())
            .map(|object| object.get_constructor_name().to_rust_string_lossy(scope))
            .filter(|class| !class.is_empty() && class != "Object");
        match class {
            Some(class) => JsException::new("", clipped(format!("{class} {text}"))),
            None => JsException::new("", clipped(text)),
        }
    }
}

/// The error names the built-in constructors give.
const BUILT_IN_NAMES: [&str; 9] = [
    "Error",
    "TypeError",
    "RangeError",
    "SyntaxError",
    "ReferenceError",
    "EvalError",
    "URIError",
    "AggregateError",
    "SuppressedError",
];

/// The name of `error`'s class when the error only inherits a built-in's `name`
/// (`class QuotaError extends Error {}`), as Node and browsers show it.
fn subclass_name(
    scope: &mut v8::HandleScope,
    error: v8::Local<v8::Value>,
    name: &str,
) -> Option<String> {
    if !BUILT_IN_NAMES.contains(&name) {
        return None;
    }
    let object = error.to_object(scope)?;
    let key = v8::String::new(scope, "name")?;
    if object.has_own_property(scope, key.into())? {
        return None;
    }
    let constructor = v8::String::new(scope, "constructor")?;
    let constructor = object.get(scope, constructor.into())?;
    let constructor = v8::Local::<v8::Function>::try_from(constructor).ok()?;
    let class = constructor.get_name(scope).to_rust_string_lossy(scope);
    (!class.is_empty() && class != name).then_some(class)
}

/// A typed array, `ArrayBuffer` or `DataView` as `Uint8Array(4) [137, 80, 78, 71]`: its
/// items (an ArrayBuffer's or DataView's bytes), as many as fit in about `max` bytes (then
/// `cut`).
fn binary(scope: &mut v8::HandleScope, value: v8::Local<v8::Value>, max: usize) -> Option<Text> {
    let (class, items): (String, v8::Local<v8::TypedArray>) =
        if let Ok(typed) = v8::Local::<v8::TypedArray>::try_from(value) {
            (
                typed.get_constructor_name().to_rust_string_lossy(scope),
                typed,
            )
        } else if let Ok(buffer) = v8::Local::<v8::ArrayBuffer>::try_from(value) {
            let bytes = v8::Uint8Array::new(scope, buffer, 0, buffer.byte_length())?;
            ("ArrayBuffer".into(), bytes.into())
        } else if let Ok(view) = v8::Local::<v8::DataView>::try_from(value) {
            let buffer = view.buffer(scope)?;
            let bytes = v8::Uint8Array::new(scope, buffer, view.byte_offset(), view.byte_length())?;
            ("DataView".into(), bytes.into())
        } else {
            return None;
        };
    let count = items.length();
    let mut out = format!("{class}({count}) [");
    let mut cut = false;
    for i in 0..count {
        if out.len() > max {
            out.push_str(&format!("… {} more", count - i));
            cut = true;
            break;
        }
        if i > 0 {
            out.push_str(", ");
        }
        let item = items.get_index(scope, u32::try_from(i).ok()?)?;
        out.push_str(&item.to_rust_string_lossy(scope));
        if item.is_big_int() {
            out.push('n');
        }
    }
    out.push(']');
    Some(Text { text: out, cut })
}

/// A value as text.
pub(crate) struct Text {
    pub(crate) text: String,
    /// Not all of the value: JSON could not say it and all of it was longer than asked.
    pub(crate) cut: bool,
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Self { text, cut: false }
    }
}

/// Renders a completion value: strings as they are, objects as JSON when they can be (else
/// as JSON-like text that names what JSON cannot say, [`preview::whole`], in about `max`
/// bytes), everything else as `String(value)` would.
pub(crate) fn render<'s>(
    scope: &mut v8::HandleScope<'s>,
    value: v8::Local<'s, v8::Value>,
    max: usize,
) -> Result<Text, Unrendered> {
    if value.is_string() {
        return Ok(value.to_rust_string_lossy(scope).into());
    }
    if let Ok(symbol) = v8::Local::<v8::Symbol>::try_from(value) {
        let description = symbol.description(scope);
        return Ok(if description.is_undefined() {
            "Symbol()".to_string().into()
        } else {
            format!("Symbol({})", description.to_rust_string_lossy(scope)).into()
        });
    }
    let tc = &mut v8::TryCatch::new(scope);
    if value.is_array_buffer_view() || value.is_array_buffer() {
        if let Some(text) = binary(tc, value, max) {
            return Ok(text);
        }
        if tc.has_terminated() {
            return Err(Unrendered::Terminated);
        }
        tc.reset();
    }
    if value.is_object() && !value.is_function() {
        if let Some(json) = v8::json::stringify(tc, value) {
            let json = json.to_rust_string_lossy(tc);
            // JSON.stringify gives undefined (rendered here as "undefined") for some objects.
            if json != "undefined" {
                return Ok(json.into());
            }
        }
        if tc.has_terminated() {
            return Err(Unrendered::Terminated);
        }
        // Not JSON (a cycle, a BigInt, a throwing getter or toJSON).
        tc.reset();
        match preview::whole(tc, value, max) {
            Ok(Some(whole)) => return Ok(whole),
            Ok(None) => {}
            Err(preview::Stop::Terminated) => return Err(Unrendered::Terminated),
            Err(preview::Stop::Full) => {}
        }
        tc.reset();
    }
    if let Some(text) = value.to_string(tc) {
        return Ok(text.to_rust_string_lossy(tc).into());
    }
    if tc.has_terminated() {
        return Err(Unrendered::Terminated);
    }
    match tc.exception() {
        Some(exception) => Err(Unrendered::Threw(describe_thrown(tc, exception))),
        None => Err(Unrendered::Terminated),
    }
}
