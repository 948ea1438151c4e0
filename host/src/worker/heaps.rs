//! The heaps a worker keeps warm: for each, its last good snapshot (what a failed call rolls
//! back to, with no store round trip) and an isolate restored from it ahead of the next call,
//! within a byte budget, least recently used first out.

use std::collections::HashMap;

use bytes::Bytes;

use crate::engine::{Limits, RunError, Warm};

/// One heap held warm.
pub struct Entry {
    /// The save this state came from, as numbered by this worker.
    pub generation: u64,
    /// The last good snapshot.
    pub snapshot: Bytes,
    /// An isolate restored from `snapshot`, if one could be made.
    pub warm: Option<Warm>,
    /// Bytes counted against the budget.
    size: usize,
    /// When it was last used, on the cache's clock.
    used: u64,
}

impl Entry {
    /// The heap's state as `snapshot`, with an isolate restored from it under `limits`.
    pub fn restore(generation: u64, snapshot: Bytes, limits: &Limits) -> Self {
        let mut warm = match Warm::new(Some(snapshot.clone()), limits) {
            Ok(warm) => Some(warm),
            Err(e) => {
                tracing::warn!("worker: cannot keep a heap warm: {e}");
                None
            }
        };
        let size = snapshot.len() + warm.as_mut().map_or(0, Warm::footprint);
        Self {
            generation,
            snapshot,
            warm,
            size,
            used: 0,
        }
    }

    /// An isolate for a run under `limits`: the warm one if it was made under the same heap
    /// limit, otherwise one restored now.
    pub fn isolate(&mut self, limits: &Limits) -> Result<Warm, RunError> {
        match self.warm.take() {
            Some(warm) if warm.heap_bytes() == limits.heap_bytes => Ok(warm),
            _ => Warm::new(Some(self.snapshot.clone()), limits),
        }
    }
}

/// Warm heaps by name.
pub struct WarmHeaps {
    budget: usize,
    entries: HashMap<String, Entry>,
    clock: u64,
    generations: u64,
}

impl WarmHeaps {
    /// An empty cache holding at most `budget` bytes (snapshots plus isolates' heaps).
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            entries: HashMap::new(),
            clock: 0,
            generations: 0,
        }
    }

    /// A number for a new save, never given before by this worker.
    pub fn next_generation(&mut self) -> u64 {
        self.generations += 1;
        self.generations
    }

    /// Takes `heap`'s entry out if it holds `generation`; an entry at another generation is
    /// stale (the heap moved on elsewhere) and is dropped.
    pub fn take(&mut self, heap: &str, generation: u64) -> Option<Entry> {
        let entry = self.entries.remove(heap)?;
        (entry.generation == generation).then_some(entry)
    }

    /// Drops `heap`'s entry, if any.
    pub fn forget(&mut self, heap: &str) {
        self.entries.remove(heap);
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Keeps `entry` as `heap`'s, then evicts the least recently used others until the cache
    /// fits its budget. An entry larger than the whole budget is not kept.
    pub fn insert(&mut self, heap: String, mut entry: Entry) {
        if entry.size > self.budget {
            tracing::debug!(
                heap,
                size = entry.size,
                "worker: heap too large to keep warm"
            );
            self.entries.remove(&heap);
            return;
        }
        self.clock += 1;
        entry.used = self.clock;
        self.entries.insert(heap, entry);
        let mut total: usize = self.entries.values().map(|e| e.size).sum();
        while total > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
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
    pub fn bytes(&self) -> usize {
        self.entries.values().map(|e| e.size).sum()
    }

    /// Names held.
    #[cfg(test)]
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{read_code, run_stateful};

    fn snapshot(code: &str) -> Bytes {
        run_stateful(code, None, Limits::default())
            .result
            .unwrap()
            .1
    }

    #[test]
    fn least_recently_used_heaps_go_first_and_the_budget_holds() {
        let limits = Limits::default();
        let small = snapshot("var x = 1");
        let one = Entry::restore(1, small.clone(), &limits);
        let size = one.size;
        // Room for two entries of this size, not three.
        let mut heaps = WarmHeaps::new(size * 2 + size / 2);
        heaps.insert("a".into(), one);
        heaps.insert("b".into(), Entry::restore(2, small.clone(), &limits));
        // Using "a" makes "b" the oldest.
        let a = heaps.take("a", 1).unwrap();
        heaps.insert("a".into(), a);
        heaps.insert("c".into(), Entry::restore(3, small, &limits));
        assert_eq!(heaps.names(), ["a", "c"]);
        assert!(heaps.bytes() <= size * 2 + size / 2);
    }

    #[test]
    fn a_stale_generation_is_not_served_and_a_warm_isolate_runs() {
        let limits = Limits::default();
        let mut heaps = WarmHeaps::new(1 << 30);
        heaps.insert(
            "h".into(),
            Entry::restore(7, snapshot("var n = 41"), &limits),
        );
        assert!(heaps.take("h", 6).is_none(), "another generation");
        assert!(heaps.take("h", 7).is_none(), "the stale entry was dropped");

        heaps.insert(
            "h".into(),
            Entry::restore(8, snapshot("var n = 41"), &limits),
        );
        let mut entry = heaps.take("h", 8).unwrap();
        let warm = entry.isolate(&limits).unwrap();
        let (run, spent) = warm.run(&read_code("++n").unwrap(), &limits);
        assert_eq!(run.result.unwrap().output, "42");
        let next = spent.save().unwrap();
        let (run, _) = Warm::new(Some(next), &limits)
            .unwrap()
            .run(&read_code("n").unwrap(), &limits);
        assert_eq!(run.result.unwrap().output, "42");
    }

    #[test]
    fn a_heap_larger_than_the_budget_is_not_kept() {
        let limits = Limits::default();
        let mut heaps = WarmHeaps::new(1000);
        heaps.insert("big".into(), Entry::restore(1, snapshot("1"), &limits));
        assert!(heaps.names().is_empty());
    }
}
