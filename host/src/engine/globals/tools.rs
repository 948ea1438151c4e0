//! The `tools` global — one object per upstream MCP server, one async function per tool —
//! and `ToolError` (made by [`TOOLS`]), backed by one native function that starts a host call
//! ([`crate::host_call`]); and the part of the event loop that waits for host replies and
//! settles the calls' promises with them ([`next_event`]).

use std::time::{Duration, Instant};

use super::*;
use crate::engine::tape::TapedReply;
use crate::engine::{HostLink, Waited};
use crate::host_call::{FetchRequest, HostCall, HostError, HostErrorKind, HostReply};

/// Largest arguments of one tool call, as JSON text: a call is an instruction, not a
/// transfer (and its frame to the host stays small).
pub(in crate::engine) const MAX_ARGUMENT_BYTES: usize = 512 << 10;

/// Largest body of one request `fetch` sends.
pub(in crate::engine) const MAX_REQUEST_BODY_BYTES: usize = 8 << 20;

/// See the file: it makes `tools` and `ToolError` from the native host call.
const TOOLS: &str = include_str!("../tools.js");

/// A host call the code made that has no reply yet.
pub(super) struct Pending {
    resolver: v8::Global<v8::PromiseResolver>,
    asked: u64,
}

/// The run's host calls: the link to the host (a live run that has one), the calls waiting
/// for their replies, and what the event loop needs to interleave replies with timers.
#[derive(Default)]
pub(super) struct HostCallState {
    link: Option<Box<dyn HostLink>>,
    pending: BTreeMap<u32, Pending>,
    next_call: u32,
    /// Timers fired so far in the run: where a reply came in.
    fired: u64,
    /// Real time the earliest timer has waited for replies.
    timer_waited: Duration,
    /// Real time the run spent waiting for replies.
    pub(super) waited: Duration,
    /// When the run's time is up.
    deadline: Option<Instant>,
    /// Parked while the run waits for replies, armed with the deadline after.
    pub(super) watchdog: Option<crate::engine::WatchdogHandle>,
}

impl HostCallState {
    pub(super) fn new(link: Option<Box<dyn HostLink>>, deadline: Instant) -> Self {
        Self {
            link,
            deadline: Some(deadline),
            ..Self::default()
        }
    }
}

impl std::fmt::Debug for HostCallState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCallState")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// Adds `tools` and `ToolError` to the global, unless it has a `tools` already: heaps saved
/// before it existed get it on their next run, and code that declares its own keeps it.
pub(in crate::engine) fn install_tools(scope: &mut v8::HandleScope) -> Option<()> {
    let global = scope.get_current_context().global(scope);
    let key = v8::String::new(scope, "tools")?;
    if global.has(scope, key.into())? {
        return Some(());
    }
    let ask = named_function(scope, "ask", 4, host_call)?;
    let tc = &mut v8::TryCatch::new(scope);
    let source = v8::String::new(tc, TOOLS)?;
    let setup = v8::Script::compile(tc, source, None)?.run(tc)?;
    let setup = v8::Local::<v8::Function>::try_from(setup).ok()?;
    let undefined = v8::undefined(tc).into();
    setup.call(tc, undefined, &[global.into(), ask.into()])?;
    Some(())
}

/// `ask(kind, a, b, c)`: starts a host call and returns its promise (see `tools.js`).
pub(super) fn host_call(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    mut rv: v8::ReturnValue,
) {
    let Some(resolver) = v8::PromiseResolver::new(scope) else {
        return;
    };
    rv.set(resolver.get_promise(scope).into());
    let text = |scope: &mut v8::HandleScope, i| args.get(i).to_rust_string_lossy(scope);
    let mut refused = None;
    let call = match args.get(0).int32_value(scope) {
        Some(0) => HostCall::Tool {
            server: text(scope, 1),
            tool: text(scope, 2),
            arguments: text(scope, 3),
        },
        Some(1) => HostCall::Search {
            query: text(scope, 1),
        },
        Some(3) => {
            let head = text(scope, 1);
            let body = bytes_of(args.get(2));
            match serde_json::from_str::<FetchHead>(&head) {
                Ok(head) => HostCall::Fetch(FetchRequest {
                    method: head.method,
                    url: head.url,
                    headers: head.headers,
                    redirect: head.redirect,
                    body,
                }),
                Err(e) => {
                    // Made by `web.js`, so never seen unless that script is wrong.
                    let error = HostError::new(HostErrorKind::Invalid, format!("bad request: {e}"));
                    settle(scope, resolver, HostReply::Failed(error));
                    return;
                }
            }
        }
        _ => HostCall::Describe {
            name: text(scope, 1),
        },
    };
    match &call {
        HostCall::Tool { arguments, .. } if arguments.len() > MAX_ARGUMENT_BYTES => {
            refused = Some(HostError::new(
                HostErrorKind::TooLarge,
                format!(
                    "its arguments take {} KiB, more than the {} KiB a tool call may send",
                    arguments.len() >> 10,
                    MAX_ARGUMENT_BYTES >> 10
                ),
            ))
        }
        HostCall::Fetch(request) if request.body.len() > MAX_REQUEST_BODY_BYTES => {
            refused = Some(HostError::new(
                HostErrorKind::TooLarge,
                format!(
                    "its body takes {} KiB, more than the {} MiB a request may send",
                    request.body.len() >> 10,
                    MAX_REQUEST_BODY_BYTES >> 20
                ),
            ))
        }
        _ => {}
    }
    let resolver_global = v8::Global::new(scope, resolver);
    let Some(state) = scope.get_slot_mut::<RunState>() else {
        let error = HostError::new(
            HostErrorKind::Unavailable,
            "tools are only available while code runs",
        );
        settle(scope, resolver, HostReply::Failed(error));
        return;
    };
    if let Some(error) = refused {
        // Refused here: the same on a replay, so nothing goes on the tape.
        settle(scope, resolver, HostReply::Failed(error));
        return;
    }
    let host = &mut state.host;
    host.next_call += 1;
    let id = host.next_call;
    let asked = call.fingerprint();
    host.pending.insert(
        id,
        Pending {
            resolver: resolver_global,
            asked,
        },
    );
    if !state.deck.is_recording() {
        // A replay: the reply comes from the tape, here if the call's came at once.
        if let Some(taped) = state.deck.reply_at_call(id) {
            state.host.pending.remove(&id);
            if taped.asked != asked {
                state
                    .deck
                    .cannot_replay("the replay's tool calls differ from the call's");
            }
            settle(scope, resolver, taped.reply);
        }
        return;
    }
    let started = match &mut state.host.link {
        Some(link) => link.start(id, &call),
        None => Err(match call {
            HostCall::Fetch(_) => HostError::new(
                HostErrorKind::Denied,
                "network access is off: this server allows no hosts (see --allow-net)",
            ),
            _ => HostError::new(
                HostErrorKind::Unavailable,
                "no MCP servers are configured for this server (see --mcp-config)",
            ),
        }),
    };
    if let Err(error) = started {
        // Taped like any reply: a replay settles the call the same way.
        let reply = HostReply::Failed(error);
        if let Some(state) = scope.get_slot_mut::<RunState>() {
            state.host.pending.remove(&id);
            let fired = state.host.fired;
            state.deck.record_reply(TapedReply {
                call: id,
                asked,
                after_timers: fired,
                at_call: true,
                reply: reply.clone(),
            });
        }
        settle(scope, resolver, reply);
    }
}

/// Settles a host call's promise with `reply`: its answer as JSON text, or `{kind, message}`.
fn settle(scope: &mut v8::HandleScope, resolver: v8::Local<v8::PromiseResolver>, reply: HostReply) {
    match reply {
        HostReply::Answer(text) => {
            if let Some(text) = v8::String::new(scope, &text) {
                resolver.resolve(scope, text.into());
            } else {
                let error = HostError::new(HostErrorKind::TooLarge, "the reply is too long for V8");
                settle(scope, resolver, HostReply::Failed(error));
            }
        }
        HostReply::Response(response) => match response_object(scope, response) {
            Some(object) => {
                resolver.resolve(scope, object.into());
            }
            None => {
                let error =
                    HostError::new(HostErrorKind::TooLarge, "the response is too large for V8");
                settle(scope, resolver, HostReply::Failed(error));
            }
        },
        HostReply::Failed(error) => {
            let failure = v8::Object::new(scope);
            let kind = v8::String::new(scope, error.kind.as_str());
            let message = v8::String::new(scope, &error.message);
            let (Some(kind), Some(message)) = (kind, message) else {
                return;
            };
            let _ = property_set(scope, failure, "kind", kind.into());
            let _ = property_set(scope, failure, "message", message.into());
            resolver.reject(scope, failure.into());
        }
    }
}

/// The request `web.js` sends to the host, less its body.
#[derive(serde::Deserialize)]
struct FetchHead {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    redirect: crate::host_call::Redirect,
}

/// The bytes of an `ArrayBuffer` view (none for anything else).
fn bytes_of(value: v8::Local<v8::Value>) -> Vec<u8> {
    let Ok(view) = v8::Local::<v8::ArrayBufferView>::try_from(value) else {
        return Vec::new();
    };
    let mut bytes = vec![0; view.byte_length()];
    let copied = view.copy_contents(&mut bytes);
    bytes.truncate(copied);
    bytes
}

/// `{status, statusText, url, redirected, headers: [[name, value]], body: ArrayBuffer}` for
/// `web.js` to make a `Response` of. The body is copied into V8's own memory, where the
/// heap's limit counts it.
fn response_object<'s>(
    scope: &mut v8::HandleScope<'s>,
    response: crate::host_call::FetchResponse,
) -> Option<v8::Local<'s, v8::Object>> {
    let object = v8::Object::new(scope);
    let status = v8::Integer::new(scope, i32::from(response.status));
    property_set(scope, object, "status", status.into())?;
    let text = v8::String::new(scope, &response.status_text)?;
    property_set(scope, object, "statusText", text.into())?;
    let url = v8::String::new(scope, &response.url)?;
    property_set(scope, object, "url", url.into())?;
    let redirected = v8::Boolean::new(scope, response.redirected);
    property_set(scope, object, "redirected", redirected.into())?;
    let mut pairs = Vec::with_capacity(response.headers.len());
    for (name, value) in &response.headers {
        let name = v8::String::new(scope, name)?;
        let value = v8::String::new(scope, value)?;
        pairs.push(v8::Array::new_with_elements(scope, &[name.into(), value.into()]).into());
    }
    let headers = v8::Array::new_with_elements(scope, &pairs);
    property_set(scope, object, "headers", headers.into())?;
    let buffer = array_buffer_of(scope, &response.body);
    property_set(scope, object, "body", buffer.into())?;
    Some(object)
}

fn property_set(
    scope: &mut v8::HandleScope,
    target: v8::Local<v8::Object>,
    name: &str,
    value: v8::Local<v8::Value>,
) -> Option<bool> {
    let key = v8::String::new(scope, name)?;
    target.set(scope, key.into(), value)
}

/// Gives up on the host call whose promise is `promise` (`fetch` aborted): its reply, if one
/// still comes, is ignored, and a live run tells the host so it can stop the call. A replay
/// gives up at the same point, so no reply to it was taped or is looked for.
pub(super) fn cancel_call(scope: &mut v8::HandleScope, promise: v8::Local<v8::Value>) {
    let Some(state) = scope.get_slot::<RunState>() else {
        return;
    };
    let ids: Vec<(u32, v8::Global<v8::PromiseResolver>)> = state
        .host
        .pending
        .iter()
        .map(|(id, pending)| (*id, pending.resolver.clone()))
        .collect();
    let found = ids.into_iter().find_map(|(id, resolver)| {
        let resolver = v8::Local::new(scope, &resolver);
        resolver
            .get_promise(scope)
            .strict_equals(promise)
            .then_some(id)
    });
    let Some(id) = found else {
        return;
    };
    if let Some(state) = scope.get_slot_mut::<RunState>() {
        state.host.pending.remove(&id);
        if state.deck.is_recording() {
            if let Some(link) = state.host.link.as_mut() {
                link.cancel(id);
            }
        }
    }
}

/// What the event loop does next when the run's result is still pending.
pub(in crate::engine) enum Next<'s> {
    /// Call a timer's callback.
    Timer(v8::Local<'s, v8::Function>, Vec<v8::Local<'s, v8::Value>>),
    /// A reply came in and settled its call's promise: run the microtasks.
    Settled,
    /// Nothing is left that could settle the result.
    Idle,
    /// The run's time is up while it waited for replies.
    TimedOut,
    /// The link to the host broke.
    Lost(String),
}

/// The next thing that can move the run on. Without host calls waiting, the next timer (time
/// skips to it). With some, a live run waits for their replies in real time, but no longer
/// than the earliest timer's delay (so a timer set to give up on a call does), and a replay
/// takes the next taped reply at the point of the run where it came in.
pub(in crate::engine) fn next_event<'s>(scope: &mut v8::HandleScope<'s>) -> Next<'s> {
    loop {
        let Some(state) = scope.get_slot_mut::<RunState>() else {
            return Next::Idle;
        };
        if state.host.pending.is_empty() {
            return timer(scope);
        }
        if !state.deck.is_recording() {
            let fired = state.host.fired;
            let Some(taped) = state.deck.next_reply(fired) else {
                return timer(scope);
            };
            let asked = state.host.pending.get(&taped.call).map(|p| p.asked);
            if asked != Some(taped.asked) {
                state
                    .deck
                    .cannot_replay("the replay's tool calls differ from the call's");
                return Next::Idle;
            }
            deliver(scope, taped.call, taped.reply);
            return Next::Settled;
        }
        // A live run: wait for a reply, at most until the earliest timer is due.
        let now = Instant::now();
        let until_deadline = state
            .host
            .deadline
            .map_or(Duration::MAX, |d| d.saturating_duration_since(now));
        if until_deadline.is_zero() {
            return Next::TimedOut;
        }
        let until_timer = state.timers.first_key_value().map(|((due, _), _)| {
            Duration::from_millis(due.saturating_sub(state.now))
                .saturating_sub(state.host.timer_waited)
        });
        let wait = until_timer.unwrap_or(Duration::MAX).min(until_deadline);
        let Some(link) = state.host.link.as_mut() else {
            return Next::Lost("no link to the host".into());
        };
        if let Some(watchdog) = &state.host.watchdog {
            watchdog.park();
        }
        let waited = link.wait(wait);
        // Time the host spent asking a person is not the run's.
        let paused = link.paused();
        if let Some(deadline) = &mut state.host.deadline {
            *deadline += paused;
            if let Some(watchdog) = &state.host.watchdog {
                watchdog.arm(*deadline);
            }
        }
        let took = now.elapsed();
        state.host.waited += took;
        state.host.timer_waited += took;
        match waited {
            Waited::Reply(call, reply) => {
                let Some(asked) = state.host.pending.get(&call).map(|p| p.asked) else {
                    // Not a call of this run (one answered already): nothing to settle.
                    continue;
                };
                let fired = state.host.fired;
                state.deck.record_reply(TapedReply {
                    call,
                    asked,
                    after_timers: fired,
                    at_call: false,
                    reply: reply.clone(),
                });
                deliver(scope, call, reply);
                return Next::Settled;
            }
            Waited::Nothing => {
                if until_timer.is_some_and(|t| t <= wait) {
                    return timer(scope);
                }
            }
            Waited::Lost(why) => return Next::Lost(why),
        }
    }
}

/// The next timer, or nothing left to do.
fn timer<'s>(scope: &mut v8::HandleScope<'s>) -> Next<'s> {
    if let Some(state) = scope.get_slot_mut::<RunState>() {
        state.host.fired += 1;
        state.host.timer_waited = Duration::ZERO;
    }
    match next_timer(scope) {
        Some((callback, args)) => Next::Timer(callback, args),
        None => Next::Idle,
    }
}

/// Settles call `id`'s promise with `reply`.
fn deliver(scope: &mut v8::HandleScope, id: u32, reply: HostReply) {
    let Some(pending) = scope
        .get_slot_mut::<RunState>()
        .and_then(|state| state.host.pending.remove(&id))
    else {
        return;
    };
    let resolver = v8::Local::new(scope, &pending.resolver);
    settle(scope, resolver, reply);
}
