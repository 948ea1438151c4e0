//! The V8 engine: runs one piece of JavaScript in a fresh isolate, optionally restored from
//! a heap snapshot, and (when stateful) snapshots the heap again afterwards.
//!
//! Every function here blocks; callers run it on a blocking thread. Snapshot bytes handed
//! to [`run_stateful`] must already have been verified by [`crate::envelope`]: V8 aborts
//! the process on a malformed snapshot.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Once, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::envelope::{self, EnvelopeError};

/// How a run may behave.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock time after which the isolate is terminated.
    pub timeout: Duration,
}

/// A failed run. Nothing is stored after a failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RunError {
    /// The stored heap failed verification; V8 never saw it.
    #[error("{0}")]
    Heap(EnvelopeError),
    /// The code threw (or failed to compile).
    #[error("{0}")]
    Exception(JsException),
    /// The code ran longer than allowed.
    #[error("execution timed out after {} s; the heap was not changed", .0.as_secs_f64())]
    Timeout(Duration),
    /// V8 could not serialise the heap.
    #[error("could not snapshot the heap: {0}")]
    Snapshot(String),
    /// The process running the code died (V8 aborted, or it was killed).
    #[error(
        "the JavaScript engine crashed while running this code ({0}); the heap was not changed"
    )]
    Crashed(String),
}

/// A JavaScript exception, as an agent needs to see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsException {
    /// `error.name` (e.g. `TypeError`), or `"Error"` for thrown non-errors.
    pub name: String,
    /// `error.message`, or the thrown value as a string.
    pub message: String,
    /// 1-based line of the throw, when known.
    pub line: Option<usize>,
    /// 1-based column of the throw, when known.
    pub column: Option<usize>,
}

impl std::fmt::Display for JsException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Uncaught {}: {}", self.name, self.message)?;
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, " (at line {l}, column {c})"),
            (Some(l), None) => write!(f, " (at line {l})"),
            _ => Ok(()),
        }
    }
}

/// The result of a stateful run: the rendered completion value and the new heap, already
/// sealed in an envelope and ready to store.
pub struct StatefulOutcome {
    /// The completion value, rendered as text.
    pub output: String,
    /// The sealed snapshot of the heap after the run.
    pub sealed_heap: Bytes,
}

static INIT: Once = Once::new();
/// V8 shares one read-only heap per process and a snapshot creator rebuilds it, so while one
/// is alive no other isolate may exist (two crash the process with SIGSEGV/SIGABRT). Snapshot
/// creators take this lock exclusively, plain isolates shared.
static ISOLATES: RwLock<()> = RwLock::new(());

/// Initialises V8 once per process. Cheap after the first call.
pub fn init() {
    INIT.call_once(|| {
        let platform = v8::new_default_platform(0, false).make_shared();
        v8::V8::initialize_platform(platform);
        v8::V8::initialize();
    });
}

/// The V8 version this process runs, as recorded in every heap envelope.
pub fn v8_version() -> &'static str {
    v8::V8::get_version()
}

/// Runs `code` in a plain isolate; nothing is kept.
pub fn run_stateless(code: &str, limits: Limits) -> Result<String, RunError> {
    init();
    let _shared = ISOLATES.read().unwrap_or_else(PoisonError::into_inner);
    let isolate = &mut v8::Isolate::new(v8::CreateParams::default());
    let _watchdog = Watchdog::arm(isolate.thread_safe_handle(), limits.timeout);
    let scope = &mut v8::HandleScope::new(isolate);
    let context = v8::Context::new(scope, Default::default());
    let scope = &mut v8::ContextScope::new(scope, context);
    evaluate(scope, code, limits)
}

/// Runs `code` on the heap restored from `sealed` (a stored envelope, verified here before
/// V8 sees a byte of it), or on a fresh heap, and snapshots the heap afterwards.
pub fn run_stateful(
    code: &str,
    sealed: Option<&Bytes>,
    limits: Limits,
) -> Result<StatefulOutcome, RunError> {
    let snapshot = sealed
        .map(envelope::open)
        .transpose()
        .map_err(RunError::Heap)?;
    init();
    let _exclusive = ISOLATES.write().unwrap_or_else(PoisonError::into_inner);
    let mut isolate = match snapshot {
        Some(blob) => v8::Isolate::snapshot_creator_from_existing_snapshot(blob, None, None),
        None => v8::Isolate::snapshot_creator(None, None),
    };
    let output = {
        let _watchdog = Watchdog::arm(isolate.thread_safe_handle(), limits.timeout);
        let scope = &mut v8::HandleScope::new(&mut isolate);
        let context = v8::Context::new(scope, Default::default());
        let output = {
            let scope = &mut v8::ContextScope::new(scope, context);
            evaluate(scope, code, limits)
        };
        scope.set_default_context(context);
        output
    };
    let output = match output {
        Ok(output) => output,
        Err(e) => {
            // A snapshot creator must be finished with create_blob even when its result is
            // thrown away; nothing is stored, so the heap stays as it was.
            isolate.cancel_terminate_execution();
            drop(isolate.create_blob(v8::FunctionCodeHandling::Clear));
            return Err(e);
        }
    };
    let blob = isolate
        .create_blob(v8::FunctionCodeHandling::Keep)
        .ok_or_else(|| RunError::Snapshot("V8 returned no snapshot".into()))?;
    Ok(StatefulOutcome {
        output,
        sealed_heap: Bytes::from(envelope::seal(&blob)),
    })
}

/// Compiles and runs `code`, drains microtasks, and renders the completion value.
fn evaluate(scope: &mut v8::HandleScope, code: &str, limits: Limits) -> Result<String, RunError> {
    let tc = &mut v8::TryCatch::new(scope);
    let Some(source) = v8::String::new(tc, code) else {
        return Err(RunError::Exception(JsException {
            name: "RangeError".into(),
            message: "the code is too long for a JavaScript string".into(),
            line: None,
            column: None,
        }));
    };
    let name = v8::String::new(tc, "run_js").map(Into::into);
    let origin = name.map(|name| {
        v8::ScriptOrigin::new(tc, name, 0, 0, false, 0, None, false, false, false, None)
    });
    let completion = v8::Script::compile(tc, source, origin.as_ref()).and_then(|s| s.run(tc));
    let Some(value) = completion else {
        return Err(failure(tc, limits));
    };
    tc.perform_microtask_checkpoint();
    if tc.has_terminated() {
        return Err(RunError::Timeout(limits.timeout));
    }
    let value = match v8::Local::<v8::Promise>::try_from(value) {
        Ok(promise) => match promise.state() {
            v8::PromiseState::Fulfilled => promise.result(tc),
            v8::PromiseState::Rejected => {
                let reason = promise.result(tc);
                // The error's own stack knows where it was made.
                let message = v8::Exception::create_message(tc, reason);
                return Err(RunError::Exception(describe_thrown(
                    tc,
                    reason,
                    Some(message),
                )));
            }
            v8::PromiseState::Pending => value,
        },
        Err(_) => value,
    };
    Ok(render(tc, value))
}

/// Turns the pending exception or termination of `tc` into a [`RunError`].
fn failure(tc: &mut v8::TryCatch<v8::HandleScope>, limits: Limits) -> RunError {
    if tc.has_terminated() {
        return RunError::Timeout(limits.timeout);
    }
    let message = tc.message();
    match tc.exception() {
        Some(exception) => RunError::Exception(describe_thrown(tc, exception, message)),
        None => RunError::Exception(JsException {
            name: "Error".into(),
            message: "execution failed without an exception".into(),
            line: None,
            column: None,
        }),
    }
}

fn describe_thrown(
    scope: &mut v8::HandleScope,
    thrown: v8::Local<v8::Value>,
    message: Option<v8::Local<v8::Message>>,
) -> JsException {
    let (line, column) = match message {
        Some(m) => (m.get_line_number(scope), Some(m.get_start_column() + 1)),
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

/// Terminates the isolate if the run outlives its time limit.
struct Watchdog {
    done: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn arm(handle: v8::IsolateHandle, timeout: Duration) -> Self {
        let (done, wait) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mcp-v8-watchdog".into())
            .spawn(move || {
                if let Err(RecvTimeoutError::Timeout) = wait.recv_timeout(timeout) {
                    handle.terminate_execution();
                }
            })
            .ok();
        Self {
            done: Some(done),
            thread,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            timeout: Duration::from_secs(10),
        }
    }

    fn step(code: &str, heap: Option<Bytes>) -> Result<(String, Bytes), RunError> {
        run_stateful(code, heap.as_ref(), limits()).map(|o| (o.output, o.sealed_heap))
    }

    fn stateless(code: &str) -> Result<String, RunError> {
        run_stateless(code, limits())
    }

    fn exception(result: Result<String, RunError>) -> JsException {
        match result {
            Err(RunError::Exception(e)) => e,
            other => panic!("expected an exception, got {other:?}"),
        }
    }

    #[test]
    fn globals_of_every_kind_survive_a_snapshot() {
        let (_, heap) = step(
            "var v = 1; let l = 2; const c = 3; function f() { return v + l + c; } \
             globalThis.g = { list: [1, 2], nested: { m: new Map([[1, 'a']]) } }; class K { get x() { return 7; } }; \
             var k = new K(); undefined",
            None,
        )
        .unwrap();
        let (out, heap) = step(
            "[f(), g.list.length, g.nested.m.get(1), k.x, typeof K]",
            Some(heap),
        )
        .unwrap();
        assert_eq!(out, r#"[6,2,"a",7,"function"]"#);
        let (out, _) = step("l += 10; l", Some(heap)).unwrap();
        assert_eq!(out, "12");
    }

    #[test]
    fn values_render_as_documented() {
        let cases = [
            ("'text'", "text"),
            ("42", "42"),
            ("1.5", "1.5"),
            ("true", "true"),
            ("null", "null"),
            ("undefined", "undefined"),
            ("10n ** 20n", "100000000000000000000"),
            ("Symbol('s')", "Symbol(s)"),
            ("({a: 1, b: [true, null]})", r#"{"a":1,"b":[true,null]}"#),
            ("[1, 'two']", r#"[1,"two"]"#),
            (
                "(function add(a, b) { return a + b; })",
                "function add(a, b) { return a + b; }",
            ),
            ("const o = {}; o.self = o; o", "[object Object]"),
            ("({ toJSON() { return undefined; } })", "[object Object]"),
            ("Object.create(null)", "{}"),
            ("new Date(0)", r#""1970-01-01T00:00:00.000Z""#),
            ("Promise.resolve(5)", "5"),
        ];
        for (code, expected) in cases {
            assert_eq!(stateless(code).unwrap(), expected, "{code}");
        }
    }

    #[test]
    fn exceptions_carry_name_message_and_position() {
        let e = exception(stateless("let a = 1;\n  null.boom"));
        assert_eq!(e.name, "TypeError");
        assert!(e.message.contains("null"), "{}", e.message);
        assert_eq!((e.line, e.column), (Some(2), Some(8)));
        let e = exception(stateless("let = ;"));
        assert_eq!(e.name, "SyntaxError");
        assert_eq!(e.line, Some(1));
        let e = exception(stateless("throw 'plain'"));
        assert_eq!(
            (e.name.as_str(), e.message.as_str()),
            ("Error", "thrown value: plain")
        );
        let e = exception(stateless("Promise.reject(new RangeError('nope'))"));
        assert_eq!(
            (e.name.as_str(), e.message.as_str()),
            ("RangeError", "nope")
        );
        assert_eq!(
            e.to_string(),
            "Uncaught RangeError: nope (at line 1, column 16)"
        );
        let e = exception(stateless("class MyError extends Error { constructor() { super('m'); this.name = 'MyError'; } }\nthrow new MyError()"));
        assert_eq!((e.name.as_str(), e.line), ("MyError", Some(2)));
    }

    #[test]
    fn an_infinite_loop_times_out_and_keeps_nothing() {
        let (_, heap) = step("var n = 1", None).unwrap();
        let short = Limits {
            timeout: Duration::from_millis(200),
        };
        let err = run_stateful("n = 2; for (;;) {}", Some(&heap), short)
            .err()
            .unwrap();
        assert_eq!(err, RunError::Timeout(Duration::from_millis(200)));
        assert!(err.to_string().contains("timed out after 0.2 s"), "{err}");
        let err = run_stateless("while (true) {}", short).unwrap_err();
        assert_eq!(err, RunError::Timeout(Duration::from_millis(200)));
        // The stored heap is whatever the caller had: the failed run produced none.
        assert_eq!(step("n", Some(heap)).unwrap().0, "1");
    }

    #[test]
    fn stack_overflow_is_a_range_error() {
        let e = exception(stateless("function f() { return f(); } f()"));
        assert_eq!(e.name, "RangeError");
        assert!(e.message.contains("call stack"), "{}", e.message);
    }

    #[test]
    fn concurrent_runs_do_not_crash_the_process() {
        let threads: Vec<_> = (0..8)
            .map(|t| {
                std::thread::spawn(move || {
                    let (_, mut heap) = step(&format!("var n = {t}; n"), None).unwrap();
                    for i in 0..10 {
                        let (out, next) = step("++n", Some(heap)).unwrap();
                        assert_eq!(out, (t + i + 1).to_string());
                        heap = next;
                    }
                })
            })
            .collect();
        let stateless: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..20 {
                        let out = run_stateless(&format!("{t} * {i}"), limits()).unwrap();
                        assert_eq!(out, (t * i).to_string());
                    }
                })
            })
            .collect();
        for t in threads.into_iter().chain(stateless) {
            t.join().unwrap();
        }
    }
}
