//! Turning JavaScript values and exceptions into text for the agent.

use super::JsException;

pub(super) fn describe_thrown(
    scope: &mut v8::HandleScope,
    thrown: v8::Local<v8::Value>,
    message: Option<v8::Local<v8::Message>>,
) -> JsException {
    let (line, column) = match message {
        // V8 reports an unknown column as -1, which arrives here as usize::MAX.
        Some(m) => (
            m.get_line_number(scope),
            m.get_start_column().checked_add(1),
        ),
        None => (None, None),
    };
    let property = |scope: &mut v8::HandleScope, key: &str| -> Option<String> {
        let object = thrown.to_object(scope)?;
        let key = v8::String::new(scope, key)?;
        let value = object.get(scope, key.into())?;
        (!value.is_undefined()).then(|| value.to_rust_string_lossy(scope))
    };
    if thrown.is_native_error() {
        let tc = &mut v8::TryCatch::new(scope);
        JsException {
            name: property(tc, "name").unwrap_or_else(|| "Error".into()),
            message: property(tc, "message").unwrap_or_default(),
            line,
            column,
        }
    } else {
        JsException {
            name: "Error".into(),
            message: format!("thrown value: {}", render(scope, thrown)),
            line,
            column,
        }
    }
}

/// Renders a completion value: strings as they are, objects as JSON when they can be,
/// everything else as `String(value)` would.
pub(crate) fn render(scope: &mut v8::HandleScope, value: v8::Local<v8::Value>) -> String {
    if value.is_string() {
        return value.to_rust_string_lossy(scope);
    }
    if let Ok(symbol) = v8::Local::<v8::Symbol>::try_from(value) {
        let description = symbol.description(scope);
        return if description.is_undefined() {
            "Symbol()".into()
        } else {
            format!("Symbol({})", description.to_rust_string_lossy(scope))
        };
    }
    let tc = &mut v8::TryCatch::new(scope);
    if value.is_object() && !value.is_function() {
        if let Some(json) = v8::json::stringify(tc, value) {
            let json = json.to_rust_string_lossy(tc);
            // JSON.stringify gives undefined (rendered here as "undefined") for some objects.
            if json != "undefined" {
                return json;
            }
        }
        tc.reset();
    }
    if let Some(text) = value.to_string(tc) {
        return text.to_rust_string_lossy(tc);
    }
    tc.reset();
    value
        .to_detail_string(tc)
        .map(|s| s.to_rust_string_lossy(tc))
        .unwrap_or_else(|| "[unprintable value]".into())
}
