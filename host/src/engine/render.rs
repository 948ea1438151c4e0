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
        JsException::new(
            clipped(property(tc, "name").unwrap_or_else(|| "Error".into())),
            clipped(property(tc, "message").unwrap_or_default()),
        )
    } else {
        let scope = &mut v8::HandleScope::new(scope);
        let thrown = v8::Local::new(scope, thrown);
        let text = render(scope, thrown, MAX_ERROR_TEXT)
            .map(|text| text.text)
            .unwrap_or_else(|_| "[unprintable value]".into());
        JsException::new("Error", clipped(format!("thrown value: {text}")))
    }
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
