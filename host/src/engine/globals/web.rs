//! The web platform's globals that `fetch` needs and code expects beside it — `fetch`,
//! `Headers`, `Request`, `Response`, `URL`, `URLSearchParams`, `AbortController`,
//! `AbortSignal`, `DOMException`, `Event`, `EventTarget`, `TextEncoder`, `TextDecoder` — made
//! on first use by `web.js` ([`WEB`])
//! over one native function ([`web`]) for what must not be written twice: the WHATWG URL
//! parser and its setters and `application/x-www-form-urlencoded` (the `url` crate), and
//! UTF-8. A request itself is a host call (`crate::host_call::HostCall::Fetch`).

use super::*;

/// See the file: it defines the globals from [`web`] and the native host call.
const WEB: &str = include_str!("../web.js");

/// The globals `web.js` defines.
const NAMES: [&str; 13] = [
    "fetch",
    "Headers",
    "Request",
    "Response",
    "URL",
    "URLSearchParams",
    "AbortController",
    "AbortSignal",
    "DOMException",
    "Event",
    "EventTarget",
    "TextEncoder",
    "TextDecoder",
];

/// Stands in for each global of a group a heap lacks until code first reads one: then the
/// group's script runs (`native(op)`: `web(6)`, `platform(2)`) and defines them all. So a heap
/// that never uses them does not carry them (they would add to every snapshot), and code that
/// assigns one first keeps its own.
const LAZY: &str = r#"(global, native, names, op) => {
  'use strict';
  const { defineProperty, getOwnPropertyDescriptor } = Object;
  const has = Object.prototype.hasOwnProperty;
  const getters = new Set();
  const install = () => {
    for (const name of names) {
      const d = getOwnPropertyDescriptor(global, name);
      if (d !== undefined && getters.has(d.get)) delete global[name];
    }
    native(op);
  };
  for (const name of names) {
    if (Reflect.apply(has, global, [name])) continue;
    const get = { [name]() { install(); return global[name]; } }[name];
    getters.add(get);
    const set = (value) => defineProperty(global, name, { value, writable: true, configurable: true });
    defineProperty(global, name, { get, set, configurable: true });
  }
}"#;

/// Adds the web globals a heap lacks, once per heap (a mark on the global says it was done),
/// as stand-ins that define them on first use ([`LAZY`]); heaps saved before they existed get
/// them on their next run, and code that replaced or deleted one keeps its choice.
pub(in crate::engine) fn install_web(scope: &mut v8::HandleScope) -> Option<()> {
    install_lazily(scope, "mcp-v8 web", &NAMES, ("web", web), 6)
}

/// Adds stand-ins for `names` that the heap lacks, once per heap (`mark`, a private key of
/// the global, says it was done): the first read of one calls `native(op)` — the native
/// function named and made by `callback` — which defines them all ([`LAZY`]).
pub(super) fn install_lazily(
    scope: &mut v8::HandleScope,
    mark: &str,
    names: &[&str],
    (name, callback): (&str, impl v8::MapFnTo<v8::FunctionCallback>),
    op: i32,
) -> Option<()> {
    let global = scope.get_current_context().global(scope);
    let mark = v8::String::new(scope, mark)?;
    let mark = v8::Private::for_api(scope, Some(mark));
    if global.get_private(scope, mark)?.is_true() {
        return Some(());
    }
    let native = named_function(scope, name, 3, callback)?;
    let mut keys = Vec::with_capacity(names.len());
    for name in names {
        keys.push(v8::String::new(scope, name)?.into());
    }
    let keys = v8::Array::new_with_elements(scope, &keys);
    let op = v8::Integer::new(scope, op);
    run_setup(
        scope,
        LAZY,
        &[global.into(), native.into(), keys.into(), op.into()],
    );
    let done = v8::Boolean::new(scope, true);
    global.set_private(scope, mark, done.into())?;
    Some(())
}

/// Defines the web globals now ([`WEB`]), where the heap has none of that name.
fn define_web(scope: &mut v8::HandleScope) -> Option<()> {
    let global = scope.get_current_context().global(scope);
    let native = named_function(scope, "web", 3, web)?;
    let ask = named_function(scope, "ask", 4, host_call)?;
    run_setup(scope, WEB, &[global.into(), native.into(), ask.into()]);
    Some(())
}

/// Runs `source`, a function expression, with `args`; an exception stays in it.
pub(super) fn run_setup(scope: &mut v8::HandleScope, source: &str, args: &[v8::Local<v8::Value>]) {
    let tc = &mut v8::TryCatch::new(scope);
    let Some(source) = v8::String::new(tc, source) else {
        return;
    };
    let setup = v8::Script::compile(tc, source, None).and_then(|s| s.run(tc));
    if let Some(setup) = setup.and_then(|f| v8::Local::<v8::Function>::try_from(f).ok()) {
        let undefined = v8::undefined(tc).into();
        let _ = setup.call(tc, undefined, args);
    }
}

/// `web(op, a, b)`, for `web.js` only:
///
/// * 0 — `parse(input, base)`: the URL's parts ([`url_parts`]), or `null` if it is not one.
/// * 1 — `set(href, part, value)`: the parts after URL setter `part` ran, or `null`.
/// * 2 — `formParse(text)`: `[[name, value], ...]`.
/// * 3 — `formSerialize([[name, value], ...])`: the text.
/// * 4 — `encode(text)`: a `Uint8Array` of UTF-8.
/// * 5 — `decode(view, flags)`: `[text, bytes held back]`; flags: 1 fatal (`null` on bad
///   UTF-8), 2 stream (an unfinished sequence at the end is held back), 4 ignore the BOM.
/// * 6 — `install()`: defines the web globals ([`define_web`]; for [`LAZY`]).
/// * 7 — `cancel(promise)`: gives up on the host call behind `promise` (an aborted `fetch`).
pub(super) fn web(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    mut rv: v8::ReturnValue,
) {
    let text = |scope: &mut v8::HandleScope, i| args.get(i).to_rust_string_lossy(scope);
    let result: Option<v8::Local<v8::Value>> = match args.get(0).int32_value(scope) {
        Some(0) => {
            let input = text(scope, 1);
            let base = args.get(2);
            let parsed = if base.is_undefined() {
                url::Url::parse(&input)
            } else {
                let base = base.to_rust_string_lossy(scope);
                url::Url::parse(&base).and_then(|base| base.join(&input))
            };
            match parsed {
                Ok(url) => url_parts(scope, &url),
                Err(_) => Some(v8::null(scope).into()),
            }
        }
        Some(1) => {
            let href = text(scope, 1);
            let part = text(scope, 2);
            let value = text(scope, 3);
            match url::Url::parse(&href) {
                Ok(mut url) => {
                    use url::quirks;
                    let _ = match part.as_str() {
                        "protocol" => quirks::set_protocol(&mut url, &value),
                        "username" => quirks::set_username(&mut url, &value),
                        "password" => quirks::set_password(&mut url, &value),
                        "host" => quirks::set_host(&mut url, &value),
                        "hostname" => quirks::set_hostname(&mut url, &value),
                        "port" => quirks::set_port(&mut url, &value),
                        "pathname" => {
                            quirks::set_pathname(&mut url, &value);
                            Ok(())
                        }
                        "search" => {
                            quirks::set_search(&mut url, &value);
                            Ok(())
                        }
                        "hash" => {
                            quirks::set_hash(&mut url, &value);
                            Ok(())
                        }
                        _ => Err(()),
                    };
                    url_parts(scope, &url)
                }
                Err(_) => Some(v8::null(scope).into()),
            }
        }
        Some(2) => {
            let input = text(scope, 1);
            let pairs: Vec<v8::Local<v8::Value>> = form_urlencoded::parse(input.as_bytes())
                .filter_map(|(name, value)| {
                    let name = v8::String::new(scope, &name)?;
                    let value = v8::String::new(scope, &value)?;
                    Some(v8::Array::new_with_elements(scope, &[name.into(), value.into()]).into())
                })
                .collect();
            Some(v8::Array::new_with_elements(scope, &pairs).into())
        }
        Some(3) => {
            let mut out = form_urlencoded::Serializer::new(String::new());
            if let Ok(pairs) = v8::Local::<v8::Array>::try_from(args.get(1)) {
                for i in 0..pairs.length() {
                    let Some(pair) = pairs.get_index(scope, i) else {
                        continue;
                    };
                    let Ok(pair) = v8::Local::<v8::Array>::try_from(pair) else {
                        continue;
                    };
                    let name = pair
                        .get_index(scope, 0)
                        .map(|v| v.to_rust_string_lossy(scope));
                    let value = pair
                        .get_index(scope, 1)
                        .map(|v| v.to_rust_string_lossy(scope));
                    out.append_pair(&name.unwrap_or_default(), &value.unwrap_or_default());
                }
            }
            v8::String::new(scope, &out.finish()).map(Into::into)
        }
        Some(4) => {
            let bytes = text(scope, 1).into_bytes();
            let buffer = array_buffer_of(scope, &bytes);
            v8::Uint8Array::new(scope, buffer, 0, bytes.len()).map(Into::into)
        }
        Some(5) => {
            let Ok(view) = v8::Local::<v8::ArrayBufferView>::try_from(args.get(1)) else {
                return throw_type_error(scope, "The provided value is not an ArrayBuffer view");
            };
            let flags = args.get(2).int32_value(scope).unwrap_or(0);
            let mut bytes = vec![0; view.byte_length()];
            let copied = view.copy_contents(&mut bytes);
            bytes.truncate(copied);
            decode_utf8(scope, &bytes, flags)
        }
        Some(6) => {
            define_web(scope);
            None
        }
        Some(7) => {
            cancel_call(scope, args.get(1));
            None
        }
        _ => None,
    };
    if let Some(result) = result {
        rv.set(result);
    }
}

/// `TextDecoder`'s UTF-8 decode of `bytes` (see [`web`], op 5).
fn decode_utf8<'s>(
    scope: &mut v8::HandleScope<'s>,
    bytes: &[u8],
    flags: i32,
) -> Option<v8::Local<'s, v8::Value>> {
    let (fatal, stream, ignore_bom) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
    let mut bytes = bytes;
    if !ignore_bom {
        bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    }
    // An unfinished sequence at the end waits for the next chunk when streaming.
    let mut held = 0;
    if stream {
        if let Err(e) = std::str::from_utf8(bytes) {
            if e.error_len().is_none() {
                held = bytes.len() - e.valid_up_to();
            }
        }
    }
    let whole = &bytes[..bytes.len() - held];
    let text = if fatal {
        match std::str::from_utf8(whole) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => return Some(v8::null(scope).into()),
        }
    } else {
        String::from_utf8_lossy(whole)
    };
    let text = v8::String::new(scope, &text)?;
    let held = v8::Integer::new(scope, i32::try_from(held).unwrap_or(0));
    Some(v8::Array::new_with_elements(scope, &[text.into(), held.into()]).into())
}

/// `[href, origin, protocol, username, password, host, hostname, port, pathname, search,
/// hash]`, as the URL standard's getters give them.
fn url_parts<'s>(
    scope: &mut v8::HandleScope<'s>,
    url: &url::Url,
) -> Option<v8::Local<'s, v8::Value>> {
    use url::quirks;
    let origin = quirks::origin(url);
    let parts = [
        quirks::href(url),
        origin.as_str(),
        quirks::protocol(url),
        quirks::username(url),
        quirks::password(url),
        quirks::host(url),
        quirks::hostname(url),
        quirks::port(url),
        quirks::pathname(url),
        quirks::search(url),
        quirks::hash(url),
    ];
    let mut values = Vec::with_capacity(parts.len());
    for part in parts {
        values.push(v8::String::new(scope, part)?.into());
    }
    Some(v8::Array::new_with_elements(scope, &values).into())
}
