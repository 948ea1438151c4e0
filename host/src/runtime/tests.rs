use super::*;
use crate::envelope;
use crate::record::{Effect, Record};
use crate::storage::{HeapStore, MemoryStore, Precondition, Snapshot, Version};
use bytes::Bytes;

#[test]
fn a_failure_is_retryable_when_the_same_call_may_succeed() {
    let heap = || "h".to_string();
    assert!(CallError::Conflict {
        heap: heap(),
        attempts: 3
    }
    .retryable());
    assert!(CallError::Replaced { heap: heap() }.retryable());
    let down = StoreError::unavailable("the bucket did not answer");
    assert!(CallError::Storage {
        heap: heap(),
        error: down
    }
    .retryable());
    let full = StoreError::new(mcp_v8_plugin_api::ErrorKind::Other, "disk full");
    assert!(!CallError::Storage {
        heap: heap(),
        error: full
    }
    .retryable());
    assert!(!CallError::Exists { heap: heap() }.retryable());
    assert!(!CallError::Cancelled.retryable());
    assert_eq!(CallError::Cancelled.kind(), "cancelled");
}

fn runtime() -> (Runtime, MemoryStore) {
    let store = MemoryStore::new();
    (
        Runtime::new(
            Store::memory(store.clone()),
            Executor::InProcess,
            Limits::default(),
        ),
        store,
    )
}

/// Runs `code` on `heap` and waits until its state is stored.
async fn output(rt: &Runtime, code: &str, heap: &str) -> String {
    let output = rt
        .run_on_heap(
            &Owner::Server,
            code.into(),
            Some(heap.into()),
            CallLimits::default(),
        )
        .await
        .result
        .unwrap()
        .completion
        .output;
    assert!(rt.flush(Duration::from_secs(10)).await);
    output
}

/// Replaces the stored bytes of `heap` with `f(bytes)`.
fn tamper(store: &MemoryStore, heap: &str, f: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Bytes {
    let stored = store.get(heap).unwrap();
    let bad = Bytes::from(f(stored.bytes.to_vec()));
    store.put(heap, bad.clone(), Precondition::Any).unwrap();
    bad
}

type Damage = Box<dyn FnOnce(Vec<u8>) -> Vec<u8>>;

#[tokio::test]
async fn damaged_heaps_are_clear_errors_and_are_left_alone() {
    let (rt, store) = runtime();
    let damages: Vec<(&str, Damage, &str)> = vec![
        (
            "truncated",
            Box::new(|b: Vec<u8>| b[..b.len() / 2].to_vec()),
            "corrupt heap",
        ),
        (
            "bitflip",
            Box::new(|mut b: Vec<u8>| {
                let i = b.len() - 100;
                b[i] ^= 1;
                b
            }),
            "checksum mismatch",
        ),
        (
            "foreign",
            Box::new(|_| b"PK\x03\x04 a zip file".to_vec()),
            "not an mcp-v8 heap",
        ),
        ("empty", Box::new(|_| Vec::new()), "truncated"),
        (
            "other-v8",
            Box::new(|b: Vec<u8>| {
                // The same snapshot, sealed as if another V8 had made it.
                let payload = envelope::open(&Bytes::from(b), "other-v8").unwrap();
                envelope::seal_for("12.0.1.0", "other-v8", &payload.snapshot)
            }),
            "made by V8",
        ),
    ];
    for (heap, damage, expected) in damages {
        output(&rt, "var keep = 1", heap).await;
        let bad = tamper(&store, heap, damage);
        let error = rt
            .run_on_heap(
                &Owner::Server,
                "keep".into(),
                Some(heap.into()),
                CallLimits::default(),
            )
            .await
            .result
            .unwrap_err();
        assert!(
            matches!(error, CallError::Envelope { .. }),
            "{heap}: {error}"
        );
        assert!(error.to_string().contains(expected), "{heap}: {error}");
        // The damaged bytes are not overwritten: nothing is lost that could be recovered.
        assert_eq!(store.get(heap).unwrap().bytes, bad, "{heap}");
        // The runtime keeps working, on other heaps and once the heap is deleted.
        assert_eq!(output(&rt, "2 + 2", "healthy").await, "4");
        rt.delete(&Owner::Server, heap).await.unwrap();
        assert_eq!(output(&rt, "typeof keep", heap).await, "undefined");
    }
}

#[tokio::test]
async fn a_lost_race_runs_again_and_conflicts_only_when_it_always_loses() {
    let (rt, store) = runtime();
    output(&rt, "var n = 1", "h").await;
    // Another host commits the heap's next record first, on every attempt.
    let racing = ScriptedStore::appends_lost(&store);
    let policy = StoragePolicy {
        conflict_retries: 2,
        ..StoragePolicy::default()
    };
    let rt2 = Runtime::with_policy(racing, Executor::InProcess, Limits::default(), policy);
    let error = rt2
        .run_on_heap(
            &Owner::Server,
            "n = 100".into(),
            Some("h".into()),
            CallLimits::default(),
        )
        .await
        .result
        .unwrap_err();
    assert!(
        matches!(error, CallError::Conflict { attempts: 3, .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("changed concurrently"),
        "{error}"
    );
    assert_eq!(output(&rt, "n", "h").await, "1");
}

#[tokio::test]
async fn a_committed_call_survives_a_snapshot_that_cannot_be_stored() {
    let (rt, store) = runtime();
    output(&rt, "var n = 1", "h").await;
    // Someone else writes the heap's snapshot right after every read, so this runtime's
    // snapshot after the call loses its compare-and-swap: the call's record stands.
    let racing = ScriptedStore::racing(&store, store.get("h").unwrap().bytes);
    let rt2 = Runtime::new(racing, Executor::InProcess, Limits::default());
    let run = rt2
        .run_on_heap(
            &Owner::Server,
            "n = 100".into(),
            Some("h".into()),
            CallLimits::default(),
        )
        .await;
    assert_eq!(run.result.unwrap().completion.output, "100");
    assert!(rt2.flush(Duration::from_secs(10)).await);
    assert_eq!(store.read_journal("h", 0).unwrap().len(), 1);
    // Loaded again, from the old snapshot and the record after it.
    assert_eq!(output(&rt, "n", "h").await, "100");
    assert_eq!(output(&rt2, "n += 1", "h").await, "101");
}

#[tokio::test]
async fn a_call_is_durable_before_its_answer_and_list_waits_for_the_snapshot() {
    let store = MemoryStore::new();
    let (rt0, _) = (
        Runtime::new(
            Store::memory(store.clone()),
            Executor::InProcess,
            Limits::default(),
        ),
        (),
    );
    output(&rt0, "var n = 1", "h").await;
    let before = store.get("h").unwrap().bytes;
    let gate = Arc::new(Gate::default());
    let held = ScriptedStore::held(&store, &gate);
    let rt = Runtime::new(held, Executor::InProcess, Limits::default());
    let answered = rt
        .run_on_heap(
            &Owner::Server,
            "++n".into(),
            Some("h".into()),
            CallLimits::default(),
        )
        .await;
    assert_eq!(answered.result.unwrap().completion.output, "2");
    // Answered while the store has not taken the new snapshot, but has the call's record.
    assert_eq!(store.get("h").unwrap().bytes, before);
    assert_eq!(store.read_journal("h", 0).unwrap().len(), 1);
    // What another runtime loads now has the call.
    assert_eq!(output(&rt0, "n", "h").await, "2");
    gate.open();
    // Listing waits for the snapshot.
    let names: Vec<_> = rt
        .list(&Owner::Server)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.meta.name)
        .collect();
    assert_eq!(names, ["h"]);
    assert_ne!(store.get("h").unwrap().bytes, before);
    assert_eq!(output(&rt, "++n", "h").await, "3");
}

/// A memory store with a script: someone else writes the heap right after every read
/// (`sneak_in`), puts wait until `put_gate` opens, and every append finds its number
/// taken (`appends_lost`).
#[derive(Default)]
struct ScriptedStore {
    inner: MemoryStore,
    sneak_in: Option<Bytes>,
    put_gate: Option<Arc<Gate>>,
    appends_lost: bool,
}

/// A gate puts wait at until it opens.
#[derive(Default)]
struct Gate {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    fn pass(&self) {
        let open = self.open.lock().unwrap();
        drop(self.opened.wait_while(open, |open| !*open).unwrap());
    }
}

impl ScriptedStore {
    fn racing(inner: &MemoryStore, sneak_in: Bytes) -> Store {
        let (inner, sneak_in) = (inner.clone(), Some(sneak_in));
        let store = Self {
            inner,
            sneak_in,
            ..Self::default()
        };
        Store::blocking(Arc::new(store), Duration::from_secs(30))
    }

    fn appends_lost(inner: &MemoryStore) -> Store {
        let store = Self {
            inner: inner.clone(),
            appends_lost: true,
            ..Self::default()
        };
        Store::blocking(Arc::new(store), Duration::from_secs(30))
    }

    fn held(inner: &MemoryStore, gate: &Arc<Gate>) -> Store {
        let (inner, put_gate) = (inner.clone(), Some(Arc::clone(gate)));
        let store = Self {
            inner,
            put_gate,
            ..Self::default()
        };
        Store::blocking(Arc::new(store), Duration::from_secs(30))
    }
}

impl HeapStore for ScriptedStore {
    fn info(&self) -> crate::storage::BackendInfo {
        self.inner.info()
    }
    fn get(&self, name: &str) -> Result<Snapshot, StoreError> {
        let got = self.inner.get(name);
        if let Some(bytes) = &self.sneak_in {
            self.inner.put(name, bytes.clone(), Precondition::Any)?;
        }
        got
    }
    fn put(&self, name: &str, bytes: Bytes, p: Precondition) -> Result<Version, StoreError> {
        if let Some(gate) = &self.put_gate {
            gate.pass();
        }
        self.inner.put(name, bytes, p)
    }
    fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.inner.delete(name)
    }
    fn list(&self, prefix: &str) -> Result<Vec<HeapMeta>, StoreError> {
        self.inner.list(prefix)
    }
    fn append(&self, name: &str, record: crate::storage::Record) -> Result<(), StoreError> {
        if self.appends_lost {
            return Err(mcp_v8_plugin_api::journal::taken(name, record.seq));
        }
        self.inner.append(name, record)
    }
    fn read_journal(
        &self,
        name: &str,
        after: u64,
    ) -> Result<Vec<crate::storage::Record>, StoreError> {
        self.inner.read_journal(name, after)
    }
    fn trim_journal(&self, name: &str, through: u64) -> Result<(), StoreError> {
        self.inner.trim_journal(name, through)
    }
}

#[tokio::test]
async fn a_record_that_does_not_reproduce_its_call_is_reported_and_the_heap_goes_on() {
    let store = MemoryStore::new();
    let rt0 = Runtime::new(
        Store::memory(store.clone()),
        Executor::InProcess,
        Limits::default(),
    );
    output(&rt0, "var n = 1", "h").await;
    // The snapshot after the next call never lands, so its record is what holds it.
    let gate = Arc::new(Gate::default());
    let rt = Runtime::new(
        ScriptedStore::held(&store, &gate),
        Executor::InProcess,
        Limits::default(),
    );
    let run = rt
        .run_on_heap(
            &Owner::Server,
            "n += Math.random() < 2 ? 1 : 0".into(),
            Some("h".into()),
            CallLimits::default(),
        )
        .await;
    assert_eq!(run.result.unwrap().completion.output, "2");
    // Its record, changed as if the call had shown something else.
    let stored = store.read_journal("h", 0).unwrap().remove(0);
    let mut record = Record::decode(&stored.bytes).unwrap();
    if let Effect::Call { fingerprint, .. } = &mut record.effect {
        *fingerprint ^= 1;
    }
    store.trim_journal("h", u64::MAX).unwrap();
    let bytes = Bytes::from(record.encode());
    store
        .append("h", crate::storage::Record::new(stored.seq, bytes))
        .unwrap();
    // The heap loads up to the record before, and the call says what was lost and why.
    let run = rt0
        .run_on_heap(
            &Owner::Server,
            "n".into(),
            Some("h".into()),
            CallLimits::default(),
        )
        .await
        .result
        .unwrap();
    assert_eq!(run.completion.output, "1");
    let notice = run.notice.unwrap_or_default();
    assert!(
        notice.contains("1 committed call was lost")
            && notice
                .contains("did not reproduce its call (its result or console came out different)"),
        "{notice}"
    );
    // Recovered for good: the next load has nothing to replay and says nothing.
    let run = rt0
        .run_on_heap(
            &Owner::Server,
            "n += 10".into(),
            Some("h".into()),
            CallLimits::default(),
        )
        .await
        .result
        .unwrap();
    assert_eq!((run.completion.output.as_str(), run.notice), ("11", None));
    gate.open();
    assert!(rt.flush(Duration::from_secs(10)).await);
}

#[tokio::test]
async fn a_journal_s_reserved_names_are_no_heap_names() {
    let (rt, _store) = runtime();
    let reserved = mcp_v8_plugin_api::journal::entry_name("h", 1);
    let error = rt
        .run_on_heap(
            &Owner::Server,
            "1".into(),
            Some(reserved.clone()),
            CallLimits::default(),
        )
        .await
        .result
        .unwrap_err();
    assert!(matches!(error, CallError::InvalidName(_)), "{error}");
    assert!(
        error.to_string().contains("reserved for journals"),
        "{error}"
    );
    assert!(matches!(
        rt.delete(&Owner::Server, &reserved).await,
        Err(CallError::InvalidName(_))
    ));
}

#[tokio::test]
async fn storage_failures_are_reported_with_their_kind() {
    struct Down;
    impl HeapStore for Down {
        fn info(&self) -> crate::storage::BackendInfo {
            crate::storage::BackendInfo::new("down", "0")
        }
        fn get(&self, _: &str) -> Result<Snapshot, StoreError> {
            Err(StoreError::unavailable("connection refused"))
        }
        fn put(&self, _: &str, _: Bytes, _: Precondition) -> Result<Version, StoreError> {
            Err(StoreError::unavailable("connection refused"))
        }
        fn delete(&self, _: &str) -> Result<(), StoreError> {
            Err(StoreError::unavailable("connection refused"))
        }
        fn list(&self, _: &str) -> Result<Vec<HeapMeta>, StoreError> {
            Err(StoreError::unavailable("connection refused"))
        }
    }
    let down = Store::blocking(Arc::new(Down), Duration::from_secs(30));
    let rt = Runtime::new(down, Executor::InProcess, Limits::default());
    let error = rt
        .run_on_heap(
            &Owner::Server,
            "1".into(),
            Some("h".into()),
            CallLimits::default(),
        )
        .await
        .result
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "storage error (unavailable) for heap 'h': connection refused"
    );
    // Stateless runs do not need the store.
    assert_eq!(
        rt.run_stateless(
            &Owner::Server,
            "1 + 1".into(),
            CallLimits::default(),
            Default::default()
        )
        .await
        .result
        .unwrap()
        .output,
        "2"
    );
}
