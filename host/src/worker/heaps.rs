//! The heaps a worker keeps warm. Each is a state the worker can run the next call on: the
//! snapshot it grew from, the calls run on it since (kept to rebuild it: a failed call's
//! isolate is dropped, and the state is the snapshot with those calls run again), and, most
//! of the time, the isolate itself, live at that state. Within a byte budget, least recently
//! used first out.

use std::collections::HashMap;

use bytes::Bytes;

use crate::engine::{HeapIsolate, Limits, RunError, Tape};
use crate::job::{catch_up, Rerun};

/// A call run on a heap since its snapshot, as the worker keeps it to run it again.
#[derive(Debug, Clone)]
pub(super) struct KeptCall {
    /// The code as the caller sent it.
    pub code: String,
    /// What it read from outside the heap.
    pub tape: Tape,
    /// [`crate::engine::fingerprint`] of what it showed.
    pub fingerprint: u64,
}

/// One heap held warm.
pub(super) struct KeptHeap {
    /// The state, as numbered by this worker.
    pub generation: u64,
    /// The snapshot the state grew from (`None`: a new, empty heap).
    base: Option<Bytes>,
    /// The calls run on `base` since, in order.
    calls: Vec<KeptCall>,
    /// An isolate at the state, if one is live.
    warm: Option<HeapIsolate>,
    /// Bytes counted against the budget.
    size: usize,
    /// When it was last used, on the cache's clock.
    used: u64,
}

impl KeptHeap {
    /// The state `calls` leave `base` in (a new heap for `None`), not restored yet.
    pub(super) fn cold(generation: u64, base: Option<Bytes>, calls: Vec<KeptCall>) -> Self {
        let mut entry = Self {
            generation,
            base,
            calls,
            warm: None,
            size: 0,
            used: 0,
        };
        entry.measure();
        entry
    }

    /// Counts the snapshot, the calls' code and the live isolate.
    fn measure(&mut self) {
        let base = self.base.as_ref().map_or(0, Bytes::len);
        let calls: usize = self.calls.iter().map(|c| c.code.len() + 64).sum();
        let warm = self.warm.as_mut().map_or(0, HeapIsolate::footprint);
        self.size = base + calls + warm;
    }

    /// The state made again under `limits`: the snapshot restored and the calls run again.
    fn rebuild(&self, limits: &Limits) -> Result<HeapIsolate, RunError> {
        let warm = HeapIsolate::new(self.base.clone(), limits)?;
        let calls = self.calls.iter().zip(1..).map(|(call, seq)| {
            Ok(Rerun {
                seq,
                code: &call.code,
                tape: &call.tape,
                fingerprint: call.fingerprint,
            })
        });
        catch_up(warm, calls, limits)
    }

    /// Makes the isolate under `limits` if there is none. Returns whether there is one.
    fn warm_up(&mut self, limits: &Limits) -> bool {
        if self.warm.is_none() {
            match self.rebuild(limits) {
                Ok(warm) => {
                    self.warm = Some(warm);
                    self.measure();
                }
                Err(e) => {
                    tracing::warn!("worker: cannot keep a heap warm: {e}");
                    return false;
                }
            }
        }
        true
    }

    /// An isolate at the state for a run under `limits`: the live one if it was made under
    /// the same heap limit, otherwise one made now. The entry keeps what rebuilds it.
    pub(super) fn isolate(&mut self, limits: &Limits) -> Result<HeapIsolate, RunError> {
        match self.warm.take() {
            Some(warm) if warm.heap_bytes() == limits.heap_bytes => Ok(warm),
            _ => self.rebuild(limits),
        }
    }

    /// The state after `call` ran on it successfully in `warm`, as `generation`.
    pub(super) fn advance(&mut self, generation: u64, call: KeptCall, warm: HeapIsolate) {
        self.generation = generation;
        self.calls.push(call);
        self.warm = Some(warm);
        self.measure();
    }

    /// Calls run since the snapshot.
    #[cfg(test)]
    pub(super) fn calls(&self) -> usize {
        self.calls.len()
    }
}

/// HeapIsolate heaps by name.
pub(super) struct WarmHeaps {
    budget: usize,
    entries: HashMap<String, KeptHeap>,
    clock: u64,
    generations: u64,
}

impl WarmHeaps {
    /// An empty cache holding at most `budget` bytes (snapshots plus isolates' heaps).
    pub(super) fn new(budget: usize) -> Self {
        Self {
            budget,
            entries: HashMap::new(),
            clock: 0,
            generations: 0,
        }
    }

    /// A number for a new save, never given before by this worker.
    pub(super) fn next_generation(&mut self) -> u64 {
        self.generations += 1;
        self.generations
    }

    /// Takes `heap`'s entry out if it holds `generation`; an entry at another generation is
    /// stale (the heap moved on elsewhere) and is dropped.
    pub(super) fn take(&mut self, heap: &str, generation: u64) -> Option<KeptHeap> {
        let entry = self.entries.remove(heap)?;
        (entry.generation == generation).then_some(entry)
    }

    /// Drops `heap`'s entry, if any.
    pub(super) fn forget(&mut self, heap: &str) {
        self.entries.remove(heap);
    }

    /// Drops every entry.
    pub(super) fn clear(&mut self) {
        self.entries.clear();
    }

    /// Whether `entry` fits the budget at all (others may be evicted for it).
    pub(super) fn can_hold(&self, entry: &KeptHeap) -> bool {
        entry.size <= self.budget
    }

    /// Keeps `entry` as `heap`'s, the most recently used, within the budget.
    pub(super) fn insert(&mut self, heap: String, mut entry: KeptHeap) {
        self.clock += 1;
        entry.used = self.clock;
        self.entries.insert(heap.clone(), entry);
        self.fit(&heap);
    }

    /// Makes the isolate of the most recently used heap that has none, under `limits`.
    /// Returns whether there was one to make.
    pub(super) fn warm_up_next(&mut self, limits: &Limits) -> bool {
        let Some((name, entry)) = self
            .entries
            .iter_mut()
            .filter(|(_, e)| e.warm.is_none())
            .max_by_key(|(_, e)| e.used)
        else {
            return false;
        };
        let name = name.clone();
        if !entry.warm_up(limits) {
            // It cannot be made: drop it, and the host loads the heap from the store.
            self.entries.remove(&name);
        } else {
            self.fit(&name);
        }
        true
    }

    /// Evicts the least recently used entries other than `kept` until the cache fits its
    /// budget; `kept` itself goes if it alone is larger than the budget.
    fn fit(&mut self, kept: &str) {
        if self.entries.get(kept).is_some_and(|e| e.size > self.budget) {
            tracing::debug!(heap = kept, "worker: heap too large to keep warm");
            self.entries.remove(kept);
        }
        let mut total: usize = self.entries.values().map(|e| e.size).sum();
        while total > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .filter(|(name, _)| name.as_str() != kept)
                .min_by_key(|(_, e)| e.used)
                .map(|(name, _)| name.clone())
            else {
                break;
            };
            if let Some(evicted) = self.entries.remove(&oldest) {
                tracing::debug!(
                    heap = oldest,
                    size = evicted.size,
                    "worker: evicted a warm heap"
                );
                total -= evicted.size;
            }
        }
    }

    /// Bytes held.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.entries.values().map(|e| e.size).sum()
    }

    /// Names held.
    #[cfg(test)]
    pub(super) fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{answer_first, read_code, run_stateful, Outside};

    fn snapshot(code: &str) -> Bytes {
        run_stateful(code, None, Limits::default())
            .result
            .unwrap()
            .1
    }

    /// Keeps `snapshot` as `heap`'s and restores it, as a worker does once it is idle.
    fn keep_warm(heaps: &mut WarmHeaps, heap: &str, generation: u64, snapshot: &Bytes) {
        heaps.insert(
            heap.into(),
            KeptHeap::cold(generation, Some(snapshot.clone()), Vec::new()),
        );
        while heaps.warm_up_next(&Limits::default()) {}
    }

    #[test]
    fn least_recently_used_heaps_go_first_and_the_budget_holds() {
        let small = snapshot("var x = 1");
        let mut probe = WarmHeaps::new(usize::MAX);
        keep_warm(&mut probe, "a", 1, &small);
        let size = probe.bytes();
        assert!(size > small.len(), "the isolate counts too");
        // Room for two warm entries of this size, not three.
        let mut heaps = WarmHeaps::new(size * 2 + size / 2);
        keep_warm(&mut heaps, "a", 1, &small);
        keep_warm(&mut heaps, "b", 2, &small);
        // Using "a" makes "b" the oldest.
        let a = heaps.take("a", 1).unwrap();
        heaps.insert("a".into(), a);
        keep_warm(&mut heaps, "c", 3, &small);
        assert_eq!(heaps.names(), ["a", "c"]);
        assert!(heaps.bytes() <= size * 2 + size / 2);
    }

    #[test]
    fn a_stale_generation_is_not_served_and_a_warm_isolate_runs() {
        let limits = Limits::default();
        let mut heaps = WarmHeaps::new(1 << 30);
        let state = snapshot("var n = 41");
        keep_warm(&mut heaps, "h", 7, &state);
        assert!(heaps.take("h", 6).is_none(), "another generation");
        assert!(heaps.take("h", 7).is_none(), "the stale entry was dropped");

        keep_warm(&mut heaps, "h", 8, &state);
        let mut entry = heaps.take("h", 8).unwrap();
        assert!(entry.warm.is_some(), "restored ahead");
        let warm = entry.isolate(&limits).unwrap();
        let run = warm.run(&read_code("++n").unwrap(), &limits, Outside::none());
        let Ok((completion, unsaved)) = run.result else {
            panic!("the run failed")
        };
        assert_eq!(completion.output, "42");
        let next = unsaved.save().unwrap();
        let run = HeapIsolate::new(Some(next), &limits).unwrap().run(
            &read_code("n").unwrap(),
            &limits,
            Outside::none(),
        );
        let (outcome, _) = answer_first(run);
        assert_eq!(outcome.result.unwrap().output, "42");
    }

    #[test]
    fn a_cold_entry_restores_on_demand() {
        let limits = Limits::default();
        let mut heaps = WarmHeaps::new(1 << 30);
        heaps.insert(
            "h".into(),
            KeptHeap::cold(1, Some(snapshot("var n = 1")), Vec::new()),
        );
        let mut entry = heaps.take("h", 1).unwrap();
        assert!(entry.warm.is_none());
        let run =
            entry
                .isolate(&limits)
                .unwrap()
                .run(&read_code("n").unwrap(), &limits, Outside::none());
        let (outcome, _) = answer_first(run);
        assert_eq!(outcome.result.unwrap().output, "1");
    }

    /// A state that moved on live is made again from its snapshot and the calls since, with
    /// their random draws, when its isolate is gone (a failed call used it up).
    #[test]
    fn a_live_state_rebuilds_from_its_snapshot_and_calls() {
        let limits = Limits::default();
        let mut heaps = WarmHeaps::new(1 << 30);
        keep_warm(&mut heaps, "h", 1, &snapshot("var seen = []"));
        let mut entry = heaps.take("h", 1).unwrap();
        for generation in 2..=3 {
            let code = "seen.push(Math.random()); seen.length";
            let run = entry.isolate(&limits).unwrap().run(
                &read_code(code).unwrap(),
                &limits,
                Outside::none(),
            );
            let (outcome, left) = answer_first(run);
            let completion = outcome.result.unwrap();
            let call = KeptCall {
                code: code.into(),
                fingerprint: crate::engine::fingerprint(&completion, &outcome.console),
                tape: completion.tape,
            };
            let Ok(unsaved) = left else { panic!() };
            entry.advance(generation, call, unsaved.into_heap_isolate());
        }
        assert_eq!(entry.calls(), 2);
        let read = read_code("JSON.stringify(seen)").unwrap();
        let live = entry.isolate(&limits).unwrap();
        let (outcome, _) = answer_first(live.run(&read, &limits, Outside::none()));
        let expected = outcome.result.unwrap().output;
        assert!(expected.starts_with("[0."), "{expected}");
        // The live isolate went into that run: the next one is rebuilt.
        heaps.insert("h".into(), entry);
        assert!(heaps.warm_up_next(&limits), "rebuilt while idle");
        let mut entry = heaps.take("h", 3).unwrap();
        let rebuilt = entry.isolate(&limits).unwrap();
        let (outcome, _) = answer_first(rebuilt.run(&read, &limits, Outside::none()));
        assert_eq!(outcome.result.unwrap().output, expected);
    }

    #[test]
    fn a_heap_larger_than_the_budget_is_not_kept() {
        let mut heaps = WarmHeaps::new(1000);
        keep_warm(&mut heaps, "big", 1, &snapshot("1"));
        assert!(heaps.names().is_empty());
    }
}
