//! Isolates named for what they are for, made before their call comes: a [`PlainIsolate`] for
//! stateless code, a [`HeapIsolate`] (a snapshot creator) for a heap, new or restored from its
//! snapshot; after a run, a [`SpentIsolate`] to drop or an [`UnsavedIsolate`] to snapshot. Either waits *parked* — created, its context set up,
//! but not entered on its thread — so that one thread can hold several and use them in any
//! order. rusty_v8 enters an isolate when it creates it and expects it entered when it is
//! dropped or snapshotted; [`Parked`] keeps that balance: it exits right after creation and
//! enters around every use.

use std::sync::Arc;

use bytes::Bytes;

use super::globals::{self, RunState};
use super::tape::{Deck, Tape};
use super::{
    create_params, evaluate, finish, init, last, watch, Completion, JsException, LastResult,
    Limits, Outcome, Outside, RunError, Terminator,
};
use crate::frontend::Prepared;

/// A plain isolate and context with the engine's globals, for one stateless run.
#[derive(Debug)]
pub struct PlainIsolate(Parked);

/// A heap's isolate (a snapshot creator), new or restored, ready for one run; its snapshot
/// is taken after the run ([`UnsavedIsolate::save`]).
#[derive(Debug)]
pub struct HeapIsolate(Parked);

/// An isolate after its run, with nothing to keep: dropping it disposes of it, which callers
/// do after the answer has gone out (for a heap's isolate this is cheap: what the run made is
/// left out).
#[derive(Debug)]
pub struct SpentIsolate(#[allow(dead_code)] Parked);

/// A heap's isolate after a successful run, its new state not saved yet.
#[derive(Debug)]
pub struct UnsavedIsolate(Parked);

impl PlainIsolate {
    /// An isolate and context for code run under `limits` (its heap limit is fixed here).
    pub fn new(limits: &Limits) -> Result<Self, RunError> {
        Parked::new(Kind::Plain, None, limits).map(PlainIsolate)
    }

    /// The heap limit this isolate was made with.
    pub fn heap_bytes(&self) -> usize {
        self.0.heap_bytes
    }

    /// Runs `code` with `outside` to report to and make host calls through; the isolate is used
    /// up.
    pub fn run(
        mut self,
        code: &Prepared,
        limits: &Limits,
        outside: Outside,
    ) -> (Outcome<Completion>, SpentIsolate) {
        let run = self.0.run(code, limits, outside, Deck::record());
        (run, SpentIsolate(self.0))
    }
}

impl HeapIsolate {
    /// A heap's isolate: restored from `snapshot`, or a new heap when `None`.
    ///
    /// `snapshot` must be a snapshot this V8 made (the runtime verifies the stored envelope
    /// before any byte gets here): V8 ends the process on anything else.
    pub fn new(snapshot: Option<Bytes>, limits: &Limits) -> Result<Self, RunError> {
        Parked::new(Kind::Creator, snapshot, limits).map(HeapIsolate)
    }

    /// The heap limit this isolate was made with.
    pub fn heap_bytes(&self) -> usize {
        self.0.heap_bytes
    }

    /// The heap's snapshot as it stands (a checkpoint); the isolate is used up, as after
    /// [`UnsavedIsolate::save`].
    pub fn save(self) -> Result<Bytes, RunError> {
        UnsavedIsolate(self.0).save()
    }

    /// Bytes of JavaScript heap the isolate holds, for a budget of warm isolates.
    pub fn footprint(&mut self) -> usize {
        self.0.with(|isolate| {
            let stats = isolate.get_heap_statistics();
            stats.total_heap_size() + stats.external_memory()
        })
    }

    /// Runs `code` on the heap with `outside` to report to and make host calls through. A
    /// success leaves the new state to save; a failure leaves the heap as it was and an
    /// isolate to drop.
    #[allow(clippy::result_large_err)] // the error carries the isolate, moved once per run
    pub fn run(
        self,
        code: &Prepared,
        limits: &Limits,
        outside: Outside,
    ) -> Outcome<(Completion, UnsavedIsolate), (RunError, SpentIsolate)> {
        self.run_after(code, limits, outside, None)
    }

    /// [`HeapIsolate::run`] after a call that failed with `last_error`: the code finds it as
    /// `_error` (and a replay of this run does too: it is on the run's tape).
    #[allow(clippy::result_large_err)] // as `run`
    pub fn run_after(
        self,
        code: &Prepared,
        limits: &Limits,
        outside: Outside,
        last_error: Option<JsException>,
    ) -> Outcome<(Completion, UnsavedIsolate), (RunError, SpentIsolate)> {
        self.run_from(code, limits, outside, Deck::record_after(last_error))
    }

    /// Runs `code` again as a call that recorded `tape` ran it: the same clock readings and
    /// random numbers. On the state that call ran on, the run reproduces it; whether it did
    /// shows in the completion's tape ([`super::Replay`]) and [`super::fingerprint`].
    #[allow(clippy::result_large_err)] // as `run`
    pub fn replay(
        self,
        code: &Prepared,
        limits: &Limits,
        tape: Tape,
    ) -> Outcome<(Completion, UnsavedIsolate), (RunError, SpentIsolate)> {
        self.run_from(code, limits, Outside::none(), Deck::play(tape))
    }

    #[allow(clippy::result_large_err)] // as `run`
    fn run_from(
        mut self,
        code: &Prepared,
        limits: &Limits,
        outside: Outside,
        deck: Deck,
    ) -> Outcome<(Completion, UnsavedIsolate), (RunError, SpentIsolate)> {
        let run = self.0.run(code, limits, outside, deck);
        let session = self.0;
        run.map_result(|result| match result {
            Ok(completion) => Ok((completion, UnsavedIsolate(session))),
            Err(e) => Err((e, SpentIsolate(session))),
        })
    }
}

/// What a heap's run is for its caller, who answers first: the outcome to send, and what is
/// left of the isolate to save (after a success) or to drop (after a failure).
pub fn answer_first(
    run: Outcome<(Completion, UnsavedIsolate), (RunError, SpentIsolate)>,
) -> (Outcome<Completion>, Result<UnsavedIsolate, SpentIsolate>) {
    let (result, left) = match run.result {
        Ok((completion, unsaved)) => (Ok(completion), Ok(unsaved)),
        Err((e, used)) => (Err(e), Err(used)),
    };
    let outcome = Outcome {
        result,
        console: run.console,
    };
    (outcome, left)
}

impl UnsavedIsolate {
    /// The isolate, to run another call on: its state moves on without a snapshot.
    pub fn into_heap_isolate(self) -> HeapIsolate {
        HeapIsolate(self.0)
    }

    /// The heap's new snapshot: V8's `create_blob`, the slow part of a stateful call, which
    /// callers run after the answer has gone out.
    pub fn save(mut self) -> Result<Bytes, RunError> {
        let context = self.0.context.take();
        let Some(mut isolate) = self.0.isolate.take() else {
            return Err(RunError::Snapshot("the isolate is gone".into()));
        };
        // SAFETY: the session is parked (not entered); `create_blob` exits the isolate once
        // more as it disposes of it, which this enter balances.
        unsafe { isolate.enter() };
        if let Some(context) = context {
            let scope = &mut v8::HandleScope::new(&mut *isolate);
            let context = v8::Local::new(scope, context);
            scope.set_default_context(context);
        }
        // Compiled code is left out: on an 8.6 MB heap `create_blob` took 0.48 s instead of
        // 0.55 and the restore after it 45 ms instead of 65 (V8 recompiles lazily what runs).
        let blob = isolate.create_blob(v8::FunctionCodeHandling::Clear);
        blob.map(|blob| Bytes::from(blob.to_vec()))
            .ok_or_else(|| RunError::Snapshot("V8 returned no snapshot".into()))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `v8::Isolate::new`: nothing is kept.
    Plain,
    /// A snapshot creator: must end with `create_blob`.
    Creator,
}

/// A parked isolate, its context and its terminator.
struct Parked {
    /// `None` once `create_blob` has consumed it.
    isolate: Option<v8::OwnedIsolate>,
    context: Option<v8::Global<v8::Context>>,
    /// V8 holds a pointer to it (the near-heap-limit callback): it must outlive the isolate,
    /// which [`Drop`] disposes of first.
    terminator: Arc<Terminator>,
    kind: Kind,
    heap_bytes: usize,
}

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parked").finish_non_exhaustive()
    }
}

impl Parked {
    fn new(kind: Kind, snapshot: Option<Bytes>, limits: &Limits) -> Result<Self, RunError> {
        init();
        let params = create_params(limits);
        let fresh_heap = snapshot.is_none();
        let mut isolate = match (kind, snapshot) {
            (Kind::Plain, _) => v8::Isolate::new(params),
            (Kind::Creator, Some(blob)) => {
                v8::Isolate::snapshot_creator_from_existing_snapshot(blob, None, Some(params))
            }
            (Kind::Creator, None) => v8::Isolate::snapshot_creator(None, Some(params)),
        };
        let terminator = super::prepare_isolate(&mut isolate);
        let ready = {
            let scope = &mut v8::HandleScope::new(&mut *isolate);
            let context = v8::Context::new(scope, Default::default());
            let scope = &mut v8::ContextScope::new(scope, context);
            let ready = match (kind, fresh_heap) {
                (Kind::Plain, _) => globals::install(scope),
                (Kind::Creator, true) => {
                    globals::install(scope).and_then(|()| globals::make_snapshottable(scope))
                }
                (Kind::Creator, false) => Some(()),
            };
            if kind == Kind::Creator {
                // Best effort: without them only `error.stack` or a built-in is missing, and
                // the code runs.
                let _ = globals::enable_error_stacks(scope);
                let _ = globals::complete_built_ins(scope);
                let _ = globals::install_random(scope);
                let _ = globals::install_weak_ref_deref(scope);
            }
            ready.map(|()| v8::Global::new(scope, context))
        };
        // SAFETY: rusty_v8 entered the isolate when it made it, and nothing else has entered
        // an isolate on this thread since: this exit restores the thread's previous state.
        unsafe { isolate.exit() };
        let session = Parked {
            isolate: Some(isolate),
            context: ready,
            terminator,
            kind,
            heap_bytes: limits.heap_bytes,
        };
        if session.context.is_none() {
            return Err(RunError::Crashed(
                "could not set up the global scope".into(),
            ));
        }
        Ok(session)
    }

    /// Runs `f` with the isolate entered.
    fn with<R>(&mut self, f: impl FnOnce(&mut v8::OwnedIsolate) -> R) -> R {
        let isolate = self
            .isolate
            .as_mut()
            .expect("a session keeps its isolate until it is saved or dropped");
        // SAFETY: a session is parked between uses; enter and exit pair up around `f`, which
        // leaves every scope it opens before it returns.
        unsafe { isolate.enter() };
        let result = f(isolate);
        // SAFETY: as above; `isolate` is the current isolate again once `f` has returned.
        unsafe { isolate.exit() };
        result
    }

    fn run(
        &mut self,
        code: &Prepared,
        limits: &Limits,
        outside: Outside,
        deck: Deck,
    ) -> Outcome<Completion> {
        let terminator = Arc::clone(&self.terminator);
        let kind = self.kind;
        let Some(context) = self.context.clone() else {
            return Outcome::failed(RunError::Crashed("the isolate has no context".into()));
        };
        let started = std::time::Instant::now();
        // Only a live run is checked for time a replay might not have.
        let timed = deck.is_recording().then_some(started);
        let last_error = match kind {
            Kind::Creator => deck.last_error().cloned(),
            Kind::Plain => None,
        };
        self.with(|isolate| {
            let deadline = started + limits.timeout;
            let watchdog = watch(&terminator, deadline);
            let run = RunState::new(limits.console_bytes, outside, deck, deadline);
            isolate.set_slot(run.watched_by(watchdog.handle()));
            let result = {
                let _watchdog = watchdog;
                let scope = &mut v8::HandleScope::new(&mut **isolate);
                let context = v8::Local::new(scope, &context);
                let scope = &mut v8::ContextScope::new(scope, context);
                globals::install_mcp(scope);
                globals::install_tools(scope);
                globals::install_web(scope);
                globals::install_platform(scope);
                if let Some(error) = &last_error {
                    last::keep_error(scope, error);
                }
                // The run's handles go before the check below, which must not see them as
                // references.
                let last = match kind {
                    Kind::Creator => LastResult::Keep,
                    Kind::Plain => LastResult::Drop,
                };
                let result = evaluate(
                    &mut v8::HandleScope::new(scope),
                    code,
                    &terminator,
                    limits,
                    last,
                );
                let result = match kind {
                    Kind::Creator => result.and_then(|output| {
                        if globals::unsaveable(scope).is_none() {
                            return Ok(output);
                        }
                        // A result the heap cannot be saved with is not kept as `_`.
                        last::forget(scope);
                        match globals::unsaveable(scope) {
                            Some(kind) => Err(RunError::Unsaveable(kind)),
                            None => Ok(output),
                        }
                    }),
                    Kind::Plain => result,
                };
                if result.is_err() {
                    scope.cancel_terminate_execution();
                }
                result
            };
            // Console and timers go now: their handles must not outlive the isolate.
            finish(isolate, result, limits, timed)
        })
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        let context = self.context.take();
        let Some(mut isolate) = self.isolate.take() else {
            return;
        };
        // SAFETY: the session is parked; both ways of disposing below exit the isolate once,
        // which this enter balances.
        unsafe { isolate.enter() };
        drop(context);
        drop(isolate.remove_slot::<RunState>());
        match self.kind {
            Kind::Plain => drop(isolate),
            Kind::Creator => {
                // A snapshot creator must end with `create_blob`. An empty context takes the
                // place of the used one, so the discarded snapshot is small and quick.
                {
                    let scope = &mut v8::HandleScope::new(&mut *isolate);
                    let empty = v8::Context::new(scope, Default::default());
                    scope.set_default_context(empty);
                }
                drop(isolate.create_blob(v8::FunctionCodeHandling::Clear));
            }
        }
    }
}
