//! The built-in store: heaps in this process's memory, bounded in bytes and in idle time.
//!
//! Heaps are kept in least-recently-used order (the `lru` crate's map); every run, read or
//! write of a heap moves it to the front. Past `--memory-max-bytes` the heaps at the back are
//! evicted, and past `--memory-ttl` of idleness a heap expires. Neither ever happens to a heap
//! that is in use: a call runs on it or its state is being saved (the runtime's heap lock is
//! held, see [`HeapStore::set_pins`]). Expiry is checked on every access, so an expired heap
//! is never served even before [`MemoryStore::sweep`] frees it.
//!
//! Why not `moka`: its size bound is enforced by asynchronous maintenance (the store may hold
//! more than its limit until then), it cannot keep an entry that is in use, and its default
//! admission policy may refuse a new entry outright — a store must not drop a write it
//! acknowledged. The bookkeeping here is a lock and a linked map; `--bench memory_store`
//! measures it.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use lru::LruCache;

use super::{
    BackendInfo, Gone, GoneCause, HeapMeta, HeapStore, Pins, Precondition, Record, Sharing,
    Snapshot, StoreError, Usage, Version,
};

/// How many dropped heap names are remembered to explain a later call on them.
pub(super) const GONE_REMEMBERED: usize = 10_000;

/// The memory store's bounds; the default bounds nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryOptions {
    /// Most stored bytes held (`--memory-max-bytes`).
    pub max_bytes: Option<u64>,
    /// How long an unused heap is kept (`--memory-ttl`).
    pub ttl: Option<Duration>,
}

/// Heaps in memory. Clones share the same heaps. Reads hand out the stored [`Bytes`] without
/// copying them; writes keep the given [`Bytes`] as they are.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

struct Inner {
    options: MemoryOptions,
    state: Mutex<State>,
    /// Versions come from one counter, so a deleted and re-created heap never repeats one.
    generation: AtomicU64,
    /// The runtime's pins: a heap they name is in use.
    in_use: OnceLock<Pins>,
    evictions: AtomicU64,
    expirations: AtomicU64,
    /// Added to the clock, so tests can let time pass without waiting for it.
    #[cfg(test)]
    skew: Mutex<Duration>,
}

struct State {
    /// Front: most recently used.
    heaps: LruCache<String, Stored>,
    bytes: u64,
    raw_bytes: u64,
    /// Heaps evicted or expired lately, and why.
    gone: LruCache<String, Gone>,
    /// Each heap's journal records by number; their bytes count in `bytes`. A heap that is
    /// evicted or expires loses its journal with it.
    journals: HashMap<String, BTreeMap<u64, Bytes>>,
}

struct Stored {
    bytes: Bytes,
    raw_len: u64,
    version: u64,
    modified: SystemTime,
    used: Instant,
    /// For a copy sharing another heap's bytes: the heap its envelope was sealed for.
    sealed_for: Option<String>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_options(MemoryOptions::default())
    }
}

impl MemoryStore {
    /// An empty, unbounded store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store bounded as `options` say.
    pub fn with_options(options: MemoryOptions) -> Self {
        let remembered = NonZeroUsize::new(GONE_REMEMBERED).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: Arc::new(Inner {
                options,
                state: Mutex::new(State {
                    heaps: LruCache::unbounded(),
                    bytes: 0,
                    raw_bytes: 0,
                    gone: LruCache::new(remembered),
                    journals: HashMap::new(),
                }),
                generation: AtomicU64::new(0),
                in_use: OnceLock::new(),
                evictions: AtomicU64::new(0),
                expirations: AtomicU64::new(0),
                #[cfg(test)]
                skew: Mutex::new(Duration::ZERO),
            }),
        }
    }

    /// The bounds this store keeps.
    pub fn options(&self) -> MemoryOptions {
        self.inner.options
    }

    /// Stores `bytes` as `name`, a copy of heap `sealed_for` (from a dump).
    pub fn restore(
        &self,
        name: &str,
        bytes: Bytes,
        sealed_for: Option<String>,
    ) -> Result<Version, StoreError> {
        let now = self.inner.now();
        let mut state = self.inner.state();
        self.write(&mut state, now, name, bytes, sealed_for, Precondition::Any)
    }

    fn put_bounded(
        &self,
        name: &str,
        bytes: Bytes,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        let now = self.inner.now();
        let mut state = self.inner.state();
        self.write(&mut state, now, name, bytes, None, precondition)
    }

    /// Writes `name` under the lock, evicting what the size limit requires.
    fn write(
        &self,
        state: &mut State,
        now: Instant,
        name: &str,
        bytes: Bytes,
        sealed_for: Option<String>,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        let inner = &*self.inner;
        let size = bytes.len() as u64;
        let current = inner
            .touch(state, name, now)
            .map(|e| Version(e.version.to_string()));
        precondition.check(name, current.as_ref())?;
        let replaced = state.heaps.peek(name).map_or(0, |e| e.bytes.len() as u64);
        inner.make_room(state, name, size, replaced)?;
        let version = inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let raw_len = crate::envelope::header(&bytes).map_or(size, |h| h.raw_len);
        if let Some(old) = state.heaps.put(
            name.to_string(),
            Stored {
                bytes,
                raw_len,
                version,
                modified: SystemTime::now(),
                used: now,
                sealed_for,
            },
        ) {
            state.bytes -= old.bytes.len() as u64;
            state.raw_bytes -= old.raw_len;
        }
        state.bytes += size;
        state.raw_bytes += raw_len;
        state.gone.pop(name);
        Ok(Version(version.to_string()))
    }

    /// Frees the heaps whose time is up. Callers never see an expired heap either way; this
    /// gives its memory back.
    pub fn sweep(&self) {
        let inner = &*self.inner;
        let Some(ttl) = inner.options.ttl else { return };
        let now = inner.now();
        let mut state = inner.state();
        // Back to front is oldest use first: stop at the first heap still in its time.
        let expired: Vec<String> = state
            .heaps
            .iter()
            .rev()
            .take_while(|(_, e)| now.saturating_duration_since(e.used) >= ttl)
            .map(|(k, _)| k)
            .filter(|k| !inner.is_in_use(k))
            .cloned()
            .collect();
        for name in expired {
            inner.drop_heap(&mut state, &name, GoneCause::Expired);
        }
    }

    /// Sweeps expired heaps now and then, for as long as the store lives. Needs a tokio
    /// runtime; does nothing without a TTL.
    pub fn spawn_sweeper(&self) {
        let Some(ttl) = self.inner.options.ttl else {
            return;
        };
        let every = (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let store = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match store.upgrade() {
                    Some(inner) => MemoryStore { inner }.sweep(),
                    None => return,
                }
            }
        });
    }

    /// Every heap held, least recently used first (for a dump): name, bytes, and for a copy
    /// the heap its envelope was sealed for.
    pub fn entries(&self) -> Vec<(String, Bytes, Option<String>)> {
        self.sweep();
        let state = self.inner.state();
        state
            .heaps
            .iter()
            .rev()
            .map(|(name, e)| (name.clone(), e.bytes.clone(), e.sealed_for.clone()))
            .collect()
    }

    /// Every journal record held (for a dump), with its heap's name.
    pub fn journal_entries(&self) -> Vec<(String, Record)> {
        let state = self.inner.state();
        state
            .journals
            .iter()
            .flat_map(|(heap, journal)| {
                journal
                    .iter()
                    .map(move |(seq, bytes)| (heap.clone(), Record::new(*seq, bytes.clone())))
            })
            .collect()
    }

    /// Lets `by` pass on the clock.
    #[cfg(test)]
    fn advance(&self, by: Duration) {
        *self.inner.skew.lock().unwrap() += by;
    }
}

impl Inner {
    /// Evicts the least recently used heaps other than `name` and those in use until `size`
    /// more bytes (replacing `replaced`) fit within the size limit.
    fn make_room(
        &self,
        state: &mut State,
        name: &str,
        size: u64,
        replaced: u64,
    ) -> Result<(), StoreError> {
        let Some(max) = self.options.max_bytes else {
            return Ok(());
        };
        if size > max {
            return Err(StoreError::other(format!(
                "heap '{name}' takes {} stored, more than the memory store's whole limit of \
                 {} (--memory-max-bytes); it was not saved",
                human_bytes(size),
                human_bytes(max)
            )));
        }
        while state.bytes - replaced + size > max {
            let victim = state
                .heaps
                .iter()
                .rev()
                .map(|(k, _)| k)
                .find(|k| k.as_str() != name && !self.is_in_use(k))
                .cloned();
            let Some(victim) = victim else {
                return Err(StoreError::unavailable(format!(
                    "the memory store is full: heap '{name}' needs {} and the heaps in use \
                     hold the rest of its {} (--memory-max-bytes); it was not saved",
                    human_bytes(size),
                    human_bytes(max)
                )));
            };
            self.drop_heap(state, &victim, GoneCause::Evicted);
        }
        Ok(())
    }

    /// Removes records of `name`'s journal numbered `through` or below.
    fn trim(state: &mut State, name: &str, through: u64) {
        let Some(journal) = state.journals.get_mut(name) else {
            return;
        };
        let kept = match through.checked_add(1) {
            Some(first_kept) => journal.split_off(&first_kept),
            None => BTreeMap::new(),
        };
        let removed = std::mem::replace(journal, kept);
        state.bytes -= removed.values().map(|b| b.len() as u64).sum::<u64>();
        if journal.is_empty() {
            state.journals.remove(name);
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> Instant {
        #[cfg(test)]
        return Instant::now() + *self.skew.lock().unwrap_or_else(PoisonError::into_inner);
        #[cfg(not(test))]
        Instant::now()
    }

    fn is_in_use(&self, name: &str) -> bool {
        self.in_use.get().is_some_and(|pins| pins.pinned(name))
    }

    /// The live entry of `name`, marked as used now; an expired one is dropped instead.
    fn touch<'a>(&self, state: &'a mut State, name: &str, now: Instant) -> Option<&'a Stored> {
        let expired = match (state.heaps.peek(name), self.options.ttl) {
            (None, _) => return None,
            (Some(e), Some(ttl)) => {
                now.saturating_duration_since(e.used) >= ttl && !self.is_in_use(name)
            }
            (Some(_), None) => false,
        };
        if expired {
            self.drop_heap(state, name, GoneCause::Expired);
            return None;
        }
        let entry = state.heaps.get_mut(name)?;
        entry.used = now;
        Some(entry)
    }

    /// Removes `name` for `cause`, remembering when and why.
    fn drop_heap(&self, state: &mut State, name: &str, cause: GoneCause) {
        let Some(entry) = state.heaps.pop(name) else {
            return;
        };
        state.bytes -= entry.bytes.len() as u64;
        state.raw_bytes -= entry.raw_len;
        Inner::trim(state, name, u64::MAX);
        let counter = match cause {
            GoneCause::Evicted => &self.evictions,
            GoneCause::Expired => &self.expirations,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            heap = name,
            bytes = entry.bytes.len(),
            idle_secs = self.now().saturating_duration_since(entry.used).as_secs(),
            "heap {} from memory",
            match cause {
                GoneCause::Evicted => "evicted (size limit)",
                GoneCause::Expired => "expired (TTL)",
            }
        );
        state.gone.put(
            name.to_string(),
            Gone {
                cause,
                at: SystemTime::now(),
            },
        );
    }
}

impl HeapStore for MemoryStore {
    fn info(&self) -> BackendInfo {
        BackendInfo::new("memory", env!("CARGO_PKG_VERSION"))
    }

    /// Shares the stored bytes (no copy of the blob). The copy's envelope still names the
    /// heap it was sealed for, which [`HeapStore::copied_from`] tells whoever verifies it.
    fn copy(
        &self,
        from: &str,
        to: &str,
        precondition: Precondition,
    ) -> Result<Option<Version>, StoreError> {
        let now = self.inner.now();
        let mut state = self.inner.state();
        let source = self.inner.touch(&mut state, from, now);
        let source = source.ok_or_else(|| StoreError::not_found(from))?;
        let sealed_for = source.sealed_for.clone().or_else(|| Some(from.to_string()));
        let bytes = source.bytes.clone();
        self.write(&mut state, now, to, bytes, sealed_for, precondition)
            .map(Some)
    }

    fn copied_from(&self, name: &str) -> Option<String> {
        self.inner.state().heaps.peek(name)?.sealed_for.clone()
    }

    fn gone(&self, name: &str) -> Option<Gone> {
        self.inner.state().gone.peek(name).copied()
    }

    fn raw_size(&self, name: &str, version: &Version) -> Option<u64> {
        let state = self.inner.state();
        let entry = state.heaps.peek(name)?;
        (entry.version.to_string() == version.as_str()).then_some(entry.raw_len)
    }

    fn usage(&self) -> Option<Usage> {
        let state = self.inner.state();
        Some(Usage {
            heaps: state.heaps.len() as u64,
            bytes: state.bytes,
            raw_bytes: state.raw_bytes,
            max_bytes: self.inner.options.max_bytes,
            evictions: self.inner.evictions.load(Ordering::Relaxed),
            expirations: self.inner.expirations.load(Ordering::Relaxed),
        })
    }

    /// A heap the pins name (a call runs on it, or its state is being stored) is neither
    /// evicted nor expired. A store serves one runtime: later pins are ignored.
    fn set_pins(&self, pins: Pins) {
        let _ = self.inner.in_use.set(pins);
    }

    fn get(&self, name: &str) -> Result<Snapshot, StoreError> {
        let now = self.inner.now();
        let mut state = self.inner.state();
        let entry = self.inner.touch(&mut state, name, now);
        let entry = entry.ok_or_else(|| StoreError::not_found(name))?;
        Ok(Snapshot {
            bytes: entry.bytes.clone(),
            version: Version(entry.version.to_string()),
        })
    }

    fn put(
        &self,
        name: &str,
        bytes: Bytes,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        self.put_bounded(name, bytes, precondition)
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        let now = self.inner.now();
        let mut state = self.inner.state();
        let live = self.inner.touch(&mut state, name, now).is_some();
        // Deleted on purpose: a later call has nothing to be told.
        state.gone.pop(name);
        if !live {
            return Err(StoreError::not_found(name));
        }
        if let Some(entry) = state.heaps.pop(name) {
            state.bytes -= entry.bytes.len() as u64;
            state.raw_bytes -= entry.raw_len;
        }
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<HeapMeta>, StoreError> {
        self.sweep();
        let state = self.inner.state();
        Ok(state
            .heaps
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, e)| HeapMeta {
                name: name.clone(),
                size: e.bytes.len() as u64,
                version: Version(e.version.to_string()),
                last_modified: e.modified,
            })
            .collect())
    }

    fn version(&self, name: &str) -> Result<Option<Version>, StoreError> {
        let now = self.inner.now();
        let mut state = self.inner.state();
        let entry = self.inner.touch(&mut state, name, now);
        Ok(entry.map(|e| Version(e.version.to_string())))
    }

    fn append(&self, name: &str, record: Record) -> Result<(), StoreError> {
        let now = self.inner.now();
        let mut state = self.inner.state();
        // Appending uses the heap: it moves to the front, and an expired one goes first.
        self.inner.touch(&mut state, name, now);
        let taken = state
            .journals
            .get(name)
            .is_some_and(|journal| journal.contains_key(&record.seq));
        if taken {
            return Err(mcp_v8_plugin_api::journal::taken(name, record.seq));
        }
        let size = record.bytes.len() as u64;
        self.inner.make_room(&mut state, name, size, 0)?;
        state.bytes += size;
        state
            .journals
            .entry(name.to_string())
            .or_default()
            .insert(record.seq, record.bytes);
        Ok(())
    }

    fn read_journal(&self, name: &str, after: u64) -> Result<Vec<Record>, StoreError> {
        let state = self.inner.state();
        let Some(journal) = state.journals.get(name) else {
            return Ok(Vec::new());
        };
        let above = match after.checked_add(1) {
            Some(first) => journal.range(first..),
            None => return Ok(Vec::new()),
        };
        Ok(above
            .map(|(seq, bytes)| Record::new(*seq, bytes.clone()))
            .collect())
    }

    fn trim_journal(&self, name: &str, through: u64) -> Result<(), StoreError> {
        Inner::trim(&mut self.inner.state(), name, through);
        Ok(())
    }

    fn sharing(&self) -> Sharing {
        Sharing::Process
    }
}

/// `1.5 MiB`-style sizes for messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{ErrorKind, HeapLocks};

    #[test]
    fn the_memory_store_keeps_the_contract() {
        mcp_v8_plugin_api::conformance::run(&MemoryStore::new(), "conformance-");
        let bounded = bounded(Some(1 << 30), Some(Duration::from_secs(3600)));
        mcp_v8_plugin_api::conformance::run(&bounded, "conformance-");
    }

    #[test]
    fn get_shares_the_stored_bytes() {
        let store = MemoryStore::new();
        let blob = Bytes::from(vec![7u8; 1 << 20]);
        store.put("a", blob.clone(), Precondition::Any).unwrap();
        let got = store.get("a").unwrap();
        assert_eq!(got.bytes.as_ptr(), blob.as_ptr(), "get copied the blob");
    }

    #[test]
    fn conditional_puts_are_compare_and_swap() {
        let store = MemoryStore::new();
        let v1 = store
            .put("a", Bytes::from_static(b"1"), Precondition::MustNotExist)
            .unwrap();
        let again = store
            .put("a", Bytes::from_static(b"x"), Precondition::MustNotExist)
            .unwrap_err();
        assert_eq!(again.kind(), ErrorKind::Conflict);
        let v2 = store
            .put(
                "a",
                Bytes::from_static(b"2"),
                Precondition::MustMatch(v1.clone()),
            )
            .unwrap();
        let stale = store
            .put("a", Bytes::from_static(b"x"), Precondition::MustMatch(v1))
            .unwrap_err();
        assert_eq!(stale.kind(), ErrorKind::Conflict);
        let got = store.get("a").unwrap();
        assert_eq!((&got.bytes[..], got.version), (&b"2"[..], v2));
        let missing = store
            .put(
                "b",
                Bytes::from_static(b"x"),
                Precondition::MustMatch(Version("1".into())),
            )
            .unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::Conflict);
    }

    #[test]
    fn versions_never_repeat_after_delete() {
        let store = MemoryStore::new();
        let v1 = store.put("a", Bytes::new(), Precondition::Any).unwrap();
        store.delete("a").unwrap();
        let v2 = store.put("a", Bytes::new(), Precondition::Any).unwrap();
        assert_ne!(v1, v2);
    }

    #[test]
    fn list_filters_by_prefix_and_delete_reports_missing() {
        let store = MemoryStore::new();
        for name in ["app-1", "app-2", "other"] {
            store
                .put(name, Bytes::from_static(b"abc"), Precondition::Any)
                .unwrap();
        }
        let mut names: Vec<_> = store
            .list("app-")
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        names.sort();
        assert_eq!(names, ["app-1", "app-2"]);
        assert_eq!(store.list("").unwrap().len(), 3);
        assert_eq!(store.list("other").unwrap()[0].size, 3);
        store.delete("other").unwrap();
        assert_eq!(
            store.delete("other").unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(store.get("other").unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(store.usage().unwrap().bytes, 6);
    }

    #[test]
    fn concurrent_writers_with_cas_lose_no_update() {
        let store = MemoryStore::new();
        store
            .put("n", Bytes::from_static(b"0"), Precondition::MustNotExist)
            .unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut done = 0;
                    while done < 100 {
                        let cur = store.get("n").unwrap();
                        let n: u64 = std::str::from_utf8(&cur.bytes).unwrap().parse().unwrap();
                        let next = Bytes::from((n + 1).to_string());
                        if store
                            .put("n", next, Precondition::MustMatch(cur.version))
                            .is_ok()
                        {
                            done += 1;
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(&store.get("n").unwrap().bytes[..], b"400");
    }

    fn bounded(max_bytes: Option<u64>, ttl: Option<Duration>) -> MemoryStore {
        MemoryStore::with_options(MemoryOptions { max_bytes, ttl })
    }

    fn blob(len: usize) -> Bytes {
        Bytes::from(vec![1u8; len])
    }

    #[test]
    fn the_least_recently_used_heaps_go_first_and_say_so() {
        let store = bounded(Some(300), None);
        for name in ["a", "b", "c"] {
            store.put(name, blob(100), Precondition::Any).unwrap();
        }
        // Reading `a` makes `b` the least recently used.
        store.get("a").unwrap();
        store.put("d", blob(100), Precondition::Any).unwrap();
        assert_eq!(store.get("b").unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(store.gone("b").map(|g| g.cause), Some(GoneCause::Evicted));
        for name in ["a", "c", "d"] {
            assert!(store.get(name).is_ok(), "{name} was evicted");
        }
        let usage = store.usage().unwrap();
        assert_eq!((usage.heaps, usage.bytes, usage.evictions), (3, 300, 1));
        // Writing `b` again starts it over: nothing to explain any more.
        store.put("b", blob(50), Precondition::Any).unwrap();
        assert_eq!(store.gone("b"), None);
    }

    #[test]
    fn journals_count_against_the_limit_and_go_with_their_heap() {
        let store = bounded(Some(300), None);
        store.put("a", blob(100), Precondition::Any).unwrap();
        store.put("b", blob(100), Precondition::Any).unwrap();
        store.append("a", Record::new(1, blob(50))).unwrap();
        assert_eq!(store.usage().unwrap().bytes, 250);
        // Appending uses `a`, so `b` is the least recently used when room is needed.
        store.append("a", Record::new(2, blob(100))).unwrap();
        assert_eq!(store.get("b").unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(store.usage().unwrap().bytes, 250);
        // An evicted heap takes its journal with it.
        store.put("c", blob(200), Precondition::Any).unwrap();
        assert_eq!(store.gone("a").map(|g| g.cause), Some(GoneCause::Evicted));
        assert!(store.read_journal("a", 0).unwrap().is_empty());
        assert_eq!(store.usage().unwrap().bytes, 200);
        store.append("c", Record::new(1, blob(60))).unwrap();
        store.trim_journal("c", 1).unwrap();
        assert_eq!(store.usage().unwrap().bytes, 200);
    }

    #[test]
    fn heaps_in_use_are_never_evicted() {
        let store = bounded(Some(200), None);
        let locks = HeapLocks::default();
        store.set_pins(locks.pins());
        store.put("old", blob(100), Precondition::Any).unwrap();
        store.put("new", blob(100), Precondition::Any).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let held = rt.block_on(locks.lock("old"));
        // `old` is the least recently used but in use, so `new` goes.
        store.put("third", blob(100), Precondition::Any).unwrap();
        assert!(store.get("old").is_ok());
        assert_eq!(store.gone("new").map(|g| g.cause), Some(GoneCause::Evicted));
        // With every other heap in use, a write that does not fit is refused, nothing lost.
        let _third = rt.block_on(locks.lock("third"));
        let full = store
            .put("fourth", blob(150), Precondition::Any)
            .unwrap_err();
        assert_eq!(full.kind(), ErrorKind::Unavailable);
        assert!(full.message().contains("full"), "{}", full.message());
        assert_eq!(store.usage().unwrap().heaps, 2);
        drop(held);
        store.put("fourth", blob(100), Precondition::Any).unwrap();
        assert_eq!(store.gone("old").map(|g| g.cause), Some(GoneCause::Evicted));
    }

    #[test]
    fn a_heap_bigger_than_the_limit_is_refused_and_evicts_nothing() {
        let store = bounded(Some(100), None);
        store.put("small", blob(60), Precondition::Any).unwrap();
        let err = store.put("big", blob(101), Precondition::Any).unwrap_err();
        assert!(
            err.message()
                .contains("more than the memory store's whole limit"),
            "{}",
            err.message()
        );
        assert!(store.get("small").is_ok());
        assert_eq!(store.usage().unwrap().evictions, 0);
        // Replacing a heap counts its new size only.
        store.put("small", blob(100), Precondition::Any).unwrap();
        assert_eq!(store.usage().unwrap().bytes, 100);
    }

    #[test]
    fn an_idle_heap_expires_exactly_even_before_a_sweep() {
        let store = bounded(None, Some(Duration::from_secs(60)));
        store.put("idle", blob(10), Precondition::Any).unwrap();
        store.put("busy", blob(10), Precondition::Any).unwrap();
        store.advance(Duration::from_secs(59));
        // Any use restarts the clock: a read, a version check.
        store.get("busy").unwrap();
        store.advance(Duration::from_secs(2));
        assert!(store.get("idle").is_err(), "an expired heap was served");
        assert_eq!(
            store.gone("idle").map(|g| g.cause),
            Some(GoneCause::Expired)
        );
        assert!(store.get("busy").is_ok());
        store.advance(Duration::from_secs(61));
        store.sweep();
        let usage = store.usage().unwrap();
        assert_eq!((usage.heaps, usage.bytes, usage.expirations), (0, 0, 2));
    }

    #[test]
    fn a_heap_in_use_does_not_expire() {
        let store = bounded(None, Some(Duration::from_secs(1)));
        let locks = HeapLocks::default();
        store.set_pins(locks.pins());
        let v = store.put("long", blob(10), Precondition::Any).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let held = rt.block_on(locks.lock("long"));
        store.advance(Duration::from_secs(5));
        store.sweep();
        // The call that held it stores its result on the version it read.
        store
            .put("long", blob(10), Precondition::MustMatch(v))
            .unwrap();
        drop(held);
        assert!(store.get("long").is_ok());
    }

    #[test]
    fn a_copy_shares_the_bytes_until_it_is_written() {
        let store = MemoryStore::new();
        let blob = Bytes::from(vec![5u8; 1 << 20]);
        store.put("a", blob.clone(), Precondition::Any).unwrap();
        store.copy("a", "b", Precondition::MustNotExist).unwrap();
        let copy = store.get("b").unwrap();
        assert_eq!(
            copy.bytes.as_ptr(),
            blob.as_ptr(),
            "the copy copied the blob"
        );
        assert_eq!(store.copied_from("b").as_deref(), Some("a"));
        // A copy of a copy names the heap the bytes were sealed for.
        store.copy("b", "c", Precondition::MustNotExist).unwrap();
        assert_eq!(store.copied_from("c").as_deref(), Some("a"));
        let exists = store
            .copy("a", "b", Precondition::MustNotExist)
            .unwrap_err();
        assert_eq!(exists.kind(), ErrorKind::Conflict);
        let missing = store.copy("none", "d", Precondition::Any).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        store
            .put("b", Bytes::from_static(b"own"), Precondition::Any)
            .unwrap();
        assert_eq!(store.copied_from("b"), None);
        assert_eq!(store.copied_from("a"), None);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
