//! The conformance suite every [`HeapStore`] must pass: the host's memory store, the bundled
//! file and S3 plugins, and yours.
//!
//! Call [`run`] from a test with a store and a name prefix of your own (so the suite can run
//! against a shared bucket or directory); it panics, naming the check and what went wrong, at
//! the first property the store breaks, and deletes what it wrote when it passes.
//!
//! ```
//! # use mcp_v8_plugin_api::*;
//! # use std::{collections::HashMap, sync::{Mutex, atomic::{AtomicU64, Ordering}}, time::SystemTime};
//! # #[derive(Default)]
//! # struct MyStore { heaps: Mutex<HashMap<String, (bytes::Bytes, u64)>>, next: AtomicU64 }
//! # impl HeapStore for MyStore {
//! #     fn info(&self) -> BackendInfo { BackendInfo::new("mine", "0") }
//! #     fn get(&self, n: &str) -> Result<Snapshot, StoreError> {
//! #         let h = self.heaps.lock().unwrap();
//! #         let (bytes, v) = h.get(n).ok_or_else(|| StoreError::not_found(n))?;
//! #         Ok(Snapshot { bytes: bytes.clone(), version: Version(v.to_string()) })
//! #     }
//! #     fn put(&self, n: &str, b: bytes::Bytes, p: Precondition) -> Result<Version, StoreError> {
//! #         let mut h = self.heaps.lock().unwrap();
//! #         p.check(n, h.get(n).map(|(_, v)| Version(v.to_string())).as_ref())?;
//! #         let v = self.next.fetch_add(1, Ordering::Relaxed) + 1;
//! #         h.insert(n.to_string(), (b, v));
//! #         Ok(Version(v.to_string()))
//! #     }
//! #     fn delete(&self, n: &str) -> Result<(), StoreError> {
//! #         self.heaps.lock().unwrap().remove(n).map(|_| ()).ok_or_else(|| StoreError::not_found(n))
//! #     }
//! #     fn list(&self, p: &str) -> Result<Vec<HeapMeta>, StoreError> {
//! #         Ok(self.heaps.lock().unwrap().iter().filter(|(k, _)| k.starts_with(p)).map(|(k, (b, v))| HeapMeta {
//! #             name: k.clone(), size: b.len() as u64, version: Version(v.to_string()), last_modified: SystemTime::now() }).collect())
//! #     }
//! # }
//! // In your crate's tests, under #[test]:
//! fn my_store_keeps_the_contract() {
//!     mcp_v8_plugin_api::conformance::run(&MyStore::default(), "conformance-");
//! }
//! # my_store_keeps_the_contract();
//! ```

use std::collections::BTreeSet;
use std::sync::Barrier;

use bytes::Bytes;

use crate::{
    journal, validate_heap_name, ErrorKind, HeapStore, Precondition, Record, Version,
    MAX_HEAP_NAME_LEN,
};

/// Size of the large blob the suite stores.
pub const LARGE_BLOB: usize = 32 << 20;
/// Threads the concurrency checks use.
pub const WRITERS: usize = 4;
/// Compare-and-swap increments each writer makes.
pub const INCREMENTS: usize = 25;

/// Runs every check against `store`, on heap names starting with `prefix` (a valid heap name
/// of at most 64 characters; heaps under it are deleted first).
pub fn run<S: HeapStore + ?Sized>(store: &S, prefix: &str) {
    run_sequential(store, prefix);
    concurrent_writers_lose_no_update(store, prefix);
    concurrent_creators_make_one_heap(store, prefix);
    concurrent_appenders_commit_each_record_once(store, prefix);
    clean(store, prefix);
}

/// Every check of [`run`] but the two where writers race. Only for a store whose backend in
/// the test is not the real one and does not make conditional writes atomic under concurrent
/// requests (e.g. an S3 emulator); the real store must pass [`run`].
pub fn run_sequential<S: HeapStore + ?Sized>(store: &S, prefix: &str) {
    assert!(
        prefix.len() <= 64 && validate_heap_name(prefix).is_ok(),
        "conformance: the prefix must be a valid heap name of at most 64 characters"
    );
    clean(store, prefix);
    missing_heaps(store, prefix);
    put_and_get(store, prefix);
    versions_change_and_never_repeat(store, prefix);
    preconditions(store, prefix);
    delete(store, prefix);
    list_by_prefix(store, prefix);
    names_at_the_limits(store, prefix);
    empty_and_large_blobs(store, prefix);
    journals(store, prefix);
    journals_are_per_heap(store, prefix);
    capabilities(store, prefix);
    clean(store, prefix);
}

/// What a store says it can do beyond the required methods holds: a copy made inside the store
/// holds the source's bytes, honours its precondition, says whose bytes it holds, and goes
/// its own way after; a raw size is only given for the version asked about; a store that
/// keeps count of its heaps counts the one written here; `gone` says nothing of a heap
/// deleted on purpose. A store that declines a capability passes its check.
pub fn capabilities<S: HeapStore + ?Sized>(store: &S, prefix: &str) {
    let (from, to) = (name(prefix, "cap-from"), name(prefix, "cap-to"));
    store
        .put(&from, blob("original"), Precondition::MustNotExist)
        .expect("capabilities: put");
    if let Some(usage) = store.usage() {
        assert!(usage.heaps >= 1, "capabilities: usage counts no heap");
    }
    if let Some(raw) = store.raw_size(&from, &Version("not-a-version".into())) {
        panic!("capabilities: a raw size ({raw}) for a version the heap is not at");
    }
    match store
        .copy(&from, &to, Precondition::MustNotExist)
        .expect("capabilities: copy")
    {
        None => assert_eq!(
            kind(store.get(&to)),
            ErrorKind::NotFound,
            "capabilities: a store that does not copy made a heap"
        ),
        Some(copied) => {
            let got = store.get(&to).expect("capabilities: get the copy");
            assert_eq!(
                got.bytes,
                blob("original"),
                "capabilities: the copy's bytes"
            );
            assert_eq!(got.version, copied, "capabilities: the copy's version");
            assert_eq!(
                store.copied_from(&to).as_deref(),
                Some(from.as_str()),
                "capabilities: a copy must say whose bytes it holds"
            );
            assert_eq!(
                kind(store.copy(&from, &to, Precondition::MustNotExist)),
                ErrorKind::Conflict,
                "capabilities: a copy onto an existing heap without overwrite"
            );
            assert_eq!(
                kind(store.copy(&name(prefix, "cap-none"), &to, Precondition::Any)),
                ErrorKind::NotFound,
                "capabilities: a copy of a missing heap"
            );
            store
                .put(&to, blob("changed"), Precondition::MustMatch(copied))
                .expect("capabilities: write the copy");
            assert_eq!(
                store.get(&from).expect("capabilities: get").bytes,
                blob("original"),
                "capabilities: writing a copy changed its source"
            );
            store.delete(&to).expect("capabilities: delete the copy");
        }
    }
    store.delete(&from).expect("capabilities: delete");
    assert_eq!(
        store.gone(&from),
        None,
        "capabilities: a heap deleted on purpose is not gone on its own"
    );
}

fn name(prefix: &str, suffix: &str) -> String {
    format!("{prefix}{suffix}")
}

fn blob(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

/// Deletes every heap under `prefix`.
fn clean<S: HeapStore + ?Sized>(store: &S, prefix: &str) {
    let heaps = store
        .list(prefix)
        .unwrap_or_else(|e| panic!("conformance: list({prefix:?}) failed: {e}"));
    for heap in heaps {
        match store.delete(&heap.name) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => panic!("conformance: delete({:?}) failed: {e}", heap.name),
        }
    }
}

fn kind<T: std::fmt::Debug>(result: Result<T, crate::StoreError>) -> ErrorKind {
    match result {
        Ok(value) => panic!("expected an error, got Ok({value:?})"),
        Err(e) => e.kind(),
    }
}

/// A heap that was never written is not found by any operation.
pub fn missing_heaps<S: HeapStore + ?Sized>(store: &S, prefix: &str) {
    let missing = name(prefix, "missing");
    assert_eq!(
        kind(store.get(&missing)),
        ErrorKind::NotFound,
        "conformance: get of a missing heap must be NotFound"
    );
    assert_eq!(
        kind(store.delete(&missing)),
        ErrorKind::NotFound,
        "conformance: delete of a missing heap must be NotFound"
    );
    assert_eq!(
        store.version(&missing).ok(),
        Some(None),
        "conformance: version of a missing heap must be Ok(None)"
    );
    let listed = store.list(prefix).expect("conformance: list");
    assert!(
        listed.iter().all(|m| m.name != missing),
        "conformance: list shows a heap that was never written"
    );
}

/// What is put is read back exactly, with the version the put returned.
pub fn put_and_get<S: HeapStore + ?Sized>(store: &S, prefix: &str) {
    let heap = name(prefix, "round-trip");
    let bytes = blob("some snapshot bytes");
    let version = store
        .put(&heap, bytes.clone(), Precondition::Any)
        .expect("conformance: put");
    let got = store.get(&heap).expect("conformance: get after put");
    assert_eq!(got.bytes, bytes, "conformance: get returned other bytes");
    assert_eq!(
        got.version, version,
        "conformance: get's version differs from put's"
    );
    assert_eq!(
        store.version(&heap).expect("conformance: version"),
        Some(version.clone()),
        "conformance: version() differs from put's"
    );
    let listed = store.list(&heap).expect("conformance: list");
    let meta = listed
        .iter()
        .find(|m| m.name == heap)
        .expect("conformance: list does not show a heap just put");
    assert_eq!(meta.size, bytes.len() as u64, "conformance: list's size");
    assert_eq!(meta.version, version, "conformance: list's version");
    store.delete(&heap).expect("conformance: delete");
}

/// Every put of other bytes makes a new version, also for a heap deleted and created again: a
/// writer holding an old version must not overwrite a different heap. (A version may come
/// back with the very same bytes, as S3's content-hash e-tags do; overwriting identical bytes
/// loses nothing.)
pub fn versions_change_and_never_repeat<S: HeapStore + ?Sized>(store: &S, prefix: &str) {
    let heap = name(prefix, "versions");
    let v1 = store.put(&heap, blob("1"), Precondition::Any).expect("put");
    let v2 = store.put(&heap, blob("2"), Precondition::Any).expect("put");
    assert_ne!(v1, v2, "conformance: two puts returned the same version");
    store.delete(&heap).expect("delete");
    let v3 = store.put(&heap, blob("3"), Precondition::Any).expect("put");
    assert!(
        v3 != v1 && v3 != v2,
        "conformance: a heap re-created with other bytes got an old version back"
    );
    let stale = store.put(&heap, blob("x"), Precondition::MustMatch(v1));
    assert_eq!(
        kind(stale),
        ErrorKind::Conflict,
        "conformance: a version from before the delete was accepted"
    );
    store.delete(&heap).expect("delete");
}

/// Conditional puts are compare-and-swap; a failed one is a Conflict and writes nothing.
pub fn preconditions<S: HeapStore + ?Sized>(store: &S, prefix: &str) {
    let heap = name(prefix, "cas");
    let v1 = store
        .put(&heap, blob("first"), Precondition::MustNotExist)
        .expect("conformance: create with MustNotExist");
    let again = store.put(&heap, blob("again"), Precondition::MustNotExist);
    assert_eq!(
        kind(again),
        ErrorKind::Conflict,
        "conformance: MustNotExist on an existing heap"
    );
    let v2 = store
        .put(&heap, blob("second"), Precondition::MustMatch(v1.clone()))
        .expect("conformance: MustMatch with the current version");
    let stale = store.put(&heap, blob("stale"), Precondition::MustMatch(v1));
    assert_eq!(
        kind(stale),
        ErrorKind::Conflict,
        "conformance: MustMatch with an old version"
    );
    let got = store.get(&heap).expect("get");
    assert_eq!(
        (got.bytes, got.version),
        (blob("second"), v2.clone()),
        "conformance: a failed conditional put changed the heap"
    );
    let elsewhere = name(prefix, "cas-missing");
    let missing = store.put(&elsewhere, blob("x"), Precondition::MustMatch(v2));
    assert_eq!(
        kind(missing),
        ErrorKind::Conflict,
        "conformance: MustMatch on a missing heap"
    );
    assert_eq!(
        kind(store.get(&elsewhere)),
        ErrorKind::NotFound,
        "conformance: a failed MustMatch created the heap"
    );
    store.delete(&heap).expect("delete");
}

/// Delete removes a heap; a second delete is NotFound.
pub fn delete<S: HeapStore + ?Sized>(store: &S, prefix: &str) {
    let heap = name(prefix, "deleted");
    store.put(&heap, blob("x"), Precondition::Any).expect("put");
    store.delete(&heap).expect("conformance: delete");
    assert_eq!(kind(store.get(&heap)), ErrorKind::NotFound);
    assert_eq!(store.version(&heap).ok(), Some(None));
    assert_eq!(
        kind(store.delete(&heap)),
        ErrorKind::NotFound,
        "conformance: deleting twice"
    );
}

/// `list(prefix)` returns exactly the heaps whose names start with it.
pub fn list_by_prefix<S: HeapStore + ?Sized>(store: &S, prefix: &str) {
    let names = ["ls-a", "ls-ab", "ls-b", "ls.a"].map(|s| name(prefix, s));
    for heap in &names {
        store.put(heap, blob(heap), Precondition::Any).expect("put");
    }
    let listed = |p: &str| -> BTreeSet<String> {
        store
            .list(p)
            .expect("conformance: list")
            .into_iter()
            .map(|m| m.name)
            .collect()
    };
    let expect =
        |picks: &[usize]| -> BTreeSet<String> { picks.iter().map(|i| names[*i].clone()).collect() };
    assert_eq!(
        listed(&name(prefix, "ls-a")),
        expect(&[0, 1]),
        "conformance: list by prefix"
    );
    assert_eq!(listed(&name(prefix, "ls")), expect(&[0, 1, 2, 3]));
    assert_eq!(listed(&name(prefix, "ls-ab")), expect(&[1]));
    assert!(listed(&name(prefix, "lz")).is_empty());
    let all = listed("");
    assert!(
        names.iter().all(|n| all.contains(n)),
        "conformance: list(\"\") misses heaps"
    );
    for heap in &names {
        store.delete(heap).expect("delete");
    }
}

/// The longest name, every allowed character, and names differing only in case are
/// separate heaps.
pub fn names_at_the_limits<S: HeapStore + ?Sized>(store: &S, prefix: &str) {
    let longest = format!("{prefix}{}", "x".repeat(MAX_HEAP_NAME_LEN - prefix.len()));
    let names = [
        longest,
        name(prefix, "Az09._-z"),
        name(prefix, "case"),
        name(prefix, "CASE"),
        name(prefix, "dot."),
    ];
    for heap in &names {
        validate_heap_name(heap).expect("the suite's own names are valid");
        store
            .put(heap, blob(heap), Precondition::MustNotExist)
            .unwrap_or_else(|e| panic!("conformance: put of {heap:?} failed: {e}"));
    }
    for heap in &names {
        let got = store
            .get(heap)
            .unwrap_or_else(|e| panic!("conformance: get of {heap:?} failed: {e}"));
        assert_eq!(
            got.bytes,
            blob(heap),
            "conformance: {heap:?} holds another heap's bytes"
        );
        store.delete(heap).expect("delete");
    }
}

/// An empty blob and a large one round-trip intact.
pub fn empty_and_large_blobs<S: HeapStore + ?Sized>(store: &S, prefix: &str) {
    let empty = name(prefix, "empty");
    store
        .put(&empty, Bytes::new(), Precondition::Any)
        .expect("put empty");
    assert!(store.get(&empty).expect("get empty").bytes.is_empty());
    store.delete(&empty).expect("delete");

    let large = name(prefix, "large");
    let bytes: Bytes = (0..LARGE_BLOB)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    store
        .put(&large, bytes.clone(), Precondition::Any)
        .expect("conformance: put of a 32 MiB blob");
    let got = store
        .get(&large)
        .expect("conformance: get of a 32 MiB blob");
    assert!(
        got.bytes == bytes,
        "conformance: a 32 MiB blob came back altered"
    );
    let listed = store.list(&large).expect("list");
    assert_eq!(listed.first().map(|m| m.size), Some(LARGE_BLOB as u64));
    store.delete(&large).expect("delete");
}

/// Writers racing with compare-and-swap lose no update; a lost race is a Conflict.
pub fn concurrent_writers_lose_no_update<S: HeapStore + ?Sized>(store: &S, prefix: &str) {
    let heap = name(prefix, "counter");
    store
        .put(&heap, blob("0"), Precondition::MustNotExist)
        .expect("put");
    let start = Barrier::new(WRITERS);
    std::thread::scope(|scope| {
        for _ in 0..WRITERS {
            scope.spawn(|| {
                start.wait();
                let mut done = 0;
                while done < INCREMENTS {
                    let current = store.get(&heap).expect("conformance: get while racing");
                    let n: usize = std::str::from_utf8(&current.bytes)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .expect("conformance: the counter holds another writer's torn bytes");
                    let next = blob(&(n + 1).to_string());
                    match store.put(&heap, next, Precondition::MustMatch(current.version)) {
                        Ok(_) => done += 1,
                        Err(e) if e.kind() == ErrorKind::Conflict => {}
                        Err(e) => panic!("conformance: a racing put failed with {e}"),
                    }
                }
            });
        }
    });
    let total = store.get(&heap).expect("get").bytes;
    assert_eq!(
        total,
        blob(&(WRITERS * INCREMENTS).to_string()),
        "conformance: concurrent compare-and-swap writers lost updates"
    );
    store.delete(&heap).expect("delete");
}

/// Writers racing to create one heap: exactly one succeeds.
pub fn concurrent_creators_make_one_heap<S: HeapStore + ?Sized>(store: &S, prefix: &str) {
    let heap = name(prefix, "created");
    let start = Barrier::new(WRITERS);
    let created: usize = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..WRITERS)
            .map(|i| {
                let (heap, start) = (&heap, &start);
                scope.spawn(move || {
                    start.wait();
                    match store.put(heap, blob(&i.to_string()), Precondition::MustNotExist) {
                        Ok(_) => 1,
                        Err(e) if e.kind() == ErrorKind::Conflict => 0,
                        Err(e) => panic!("conformance: a racing create failed with {e}"),
                    }
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().expect("racer")).sum()
    });
    assert_eq!(
        created, 1,
        "conformance: {created} writers created the same heap"
    );
    store.delete(&heap).expect("delete");
}

/// Reads `heap`'s whole journal as (number, bytes) pairs.
fn journal_of<S: HeapStore + ?Sized>(store: &S, heap: &str, after: u64) -> Vec<(u64, Bytes)> {
    store
        .read_journal(heap, after)
        .unwrap_or_else(|e| panic!("conformance: read_journal({heap:?}, {after}) failed: {e}"))
        .into_iter()
        .map(|r| (r.seq, r.bytes))
        .collect()
}

fn append<S: HeapStore + ?Sized>(store: &S, heap: &str, seq: u64, bytes: Bytes) {
    store
        .append(heap, Record::new(seq, bytes))
        .unwrap_or_else(|e| panic!("conformance: append of record {seq} to {heap:?} failed: {e}"));
}

/// Records read back in order and exactly; a number is written once (a second append of it
/// is a Conflict that changes nothing); trimming removes what it covers; the journal is
/// independent of the heap's entry.
pub fn journals<S: HeapStore + ?Sized>(store: &S, prefix: &str) {
    let heap = name(prefix, "journal");
    store
        .trim_journal(&heap, u64::MAX)
        .expect("conformance: trim_journal of a journal that does not exist");
    assert!(
        journal_of(store, &heap, 0).is_empty(),
        "conformance: a journal never written has records"
    );
    let large: Bytes = (0..(1 << 20))
        .map(|i| (i % 253) as u8)
        .collect::<Vec<_>>()
        .into();
    let written = [
        (1, blob("first")),
        (2, Bytes::new()),
        (3, large),
        (7, blob("after a gap")),
        (u64::MAX - 1, blob("near the end")),
    ];
    for (seq, bytes) in &written {
        append(store, &heap, *seq, bytes.clone());
    }
    assert!(
        journal_of(store, &heap, 0) == written,
        "conformance: read_journal did not return the records in order, exactly"
    );
    assert!(
        journal_of(store, &heap, 2) == written[2..],
        "conformance: read_journal(after) must return only the records numbered above it"
    );
    let again = store.append(&heap, Record::new(2, blob("second writer")));
    assert_eq!(
        kind(again),
        ErrorKind::Conflict,
        "conformance: a record number was written twice"
    );
    assert_eq!(
        journal_of(store, &heap, 1).first(),
        Some(&(2, Bytes::new())),
        "conformance: a refused append changed the record"
    );
    // The heap's entry and its journal are separate.
    assert_eq!(
        store.version(&heap).ok(),
        Some(None),
        "conformance: appending to a journal created the heap"
    );
    assert!(
        store.list(&heap).expect("list").is_empty(),
        "conformance: list shows a journal as a heap"
    );
    store
        .put(&heap, blob("snapshot"), Precondition::MustNotExist)
        .expect("put");
    store.delete(&heap).expect("delete");
    assert_eq!(
        journal_of(store, &heap, 0).len(),
        written.len(),
        "conformance: deleting the heap's entry changed its journal"
    );
    store
        .trim_journal(&heap, 3)
        .expect("conformance: trim_journal");
    assert!(
        journal_of(store, &heap, 0) == written[3..],
        "conformance: trim_journal(3) must remove exactly the records numbered 3 and below"
    );
    store
        .trim_journal(&heap, 3)
        .expect("conformance: trimming again is no error");
    append(store, &heap, 8, blob("after a trim"));
    assert_eq!(
        journal_of(store, &heap, 7),
        [(8, blob("after a trim")), written[4].clone()],
        "conformance: a record appended after a trim is read back in its place"
    );
    store
        .trim_journal(&heap, u64::MAX)
        .expect("conformance: trim_journal(u64::MAX)");
    assert!(
        journal_of(store, &heap, 0).is_empty(),
        "conformance: trim_journal(u64::MAX) left records"
    );
}

/// Each heap has its own journal, also when one name starts with the other or they differ
/// only in case, and journals never show in a listing under a heap prefix.
pub fn journals_are_per_heap<S: HeapStore + ?Sized>(store: &S, prefix: &str) {
    let heaps = ["jp", "jp-2", "JP", "jp.x"].map(|s| name(prefix, s));
    for (i, heap) in heaps.iter().enumerate() {
        store.trim_journal(heap, u64::MAX).expect("trim_journal");
        append(store, heap, 1, blob(heap));
        append(store, heap, 2 + i as u64, blob(heap));
    }
    for (i, heap) in heaps.iter().enumerate() {
        assert_eq!(
            journal_of(store, heap, 0),
            [(1, blob(heap)), (2 + i as u64, blob(heap))],
            "conformance: {heap:?}'s journal holds another heap's records"
        );
    }
    let listed = store.list(prefix).expect("list");
    assert!(
        listed
            .iter()
            .all(|m| !journal::is_reserved(&m.name) && !heaps.contains(&m.name)),
        "conformance: list under a heap prefix shows journal records: {:?}",
        listed.iter().map(|m| &m.name).collect::<Vec<_>>()
    );
    for heap in &heaps {
        store.trim_journal(heap, u64::MAX).expect("trim_journal");
    }
}

/// Writers racing to append the next record of one journal, each reading it again after a
/// lost race: every number is committed exactly once, by the writer that was told so.
pub fn concurrent_appenders_commit_each_record_once<S: HeapStore + ?Sized>(
    store: &S,
    prefix: &str,
) {
    let heap = name(prefix, "appenders");
    store.trim_journal(&heap, u64::MAX).expect("trim_journal");
    let start = Barrier::new(WRITERS);
    let committed: Vec<Vec<u64>> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let (heap, start) = (&heap, &start);
                scope.spawn(move || {
                    start.wait();
                    let (mut last, mut mine) = (0, Vec::new());
                    while mine.len() < INCREMENTS {
                        let next = last + 1;
                        let record = Record::new(next, blob(&writer.to_string()));
                        match store.append(heap, record) {
                            Ok(()) => {
                                mine.push(next);
                                last = next;
                            }
                            Err(e) if e.kind() == ErrorKind::Conflict => {
                                let seen = store
                                    .read_journal(heap, last)
                                    .expect("conformance: read_journal while racing");
                                last = seen.last().map_or(last, |r| r.seq);
                            }
                            Err(e) => panic!("conformance: a racing append failed with {e}"),
                        }
                    }
                    mine
                })
            })
            .collect();
        writers
            .into_iter()
            .map(|w| w.join().expect("writer"))
            .collect()
    });
    let stored = journal_of(store, &heap, 0);
    let total = WRITERS * INCREMENTS;
    assert_eq!(
        stored.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (1..=total as u64).collect::<Vec<_>>(),
        "conformance: racing appenders left gaps or extra records"
    );
    for (writer, seqs) in committed.iter().enumerate() {
        for seq in seqs {
            assert_eq!(
                stored[(*seq - 1) as usize].1,
                blob(&writer.to_string()),
                "conformance: record {seq} holds another writer's bytes than the one told it committed"
            );
        }
    }
    store.trim_journal(&heap, u64::MAX).expect("trim_journal");
}
