//! Heaps saved before mcp-v8 ran V8 with `--no-extensible-ro-snapshot` carry a read-only
//! heap of their own, and V8 crashes restoring one while another isolate lives in the
//! process. They still load and run, next to warm heaps and concurrent calls, and keep their
//! format when saved again. (Its own test binary: the engine's unit tests run isolates on
//! many threads without the runtime's care.)

use std::path::PathBuf;

use bytes::Bytes;
use mcp_v8::engine::Limits;
use mcp_v8::envelope::{self, ReadOnly};
use mcp_v8::executor::Executor;
use mcp_v8::runtime::{CallLimits, Owner, Runtime};
use mcp_v8::storage::{HeapStore, MemoryStore, Precondition, Store};
use mcp_v8::worker::WorkerSettings;

/// Heap `fixture`, saved by this V8 without the flag. After a V8 upgrade the envelope refuses
/// it: make it again then.
const FIXTURE: &[u8] = include_bytes!("fixtures/heap-without-ro-flag.bin");

fn format_of(store: &MemoryStore, heap: &str) -> u16 {
    let bytes = store.get(heap).unwrap().bytes;
    u16::from_le_bytes([bytes[8], bytes[9]])
}

fn read_only_of(store: &MemoryStore, heap: &str) -> ReadOnly {
    let bytes = store.get(heap).unwrap().bytes;
    envelope::open(&bytes, heap).unwrap().read_only
}

async fn output(rt: &Runtime, code: &str, heap: &str) -> String {
    let run = rt
        .run_on_heap(
            &Owner::Server,
            code.into(),
            Some(heap.into()),
            CallLimits::default(),
        )
        .await;
    let output = run.result.unwrap().completion.output;
    assert!(rt.flush(std::time::Duration::from_secs(30)).await);
    output
}

async fn exercise(rt: &Runtime, store: &MemoryStore) {
    store
        .put("fixture", Bytes::from_static(FIXTURE), Precondition::Any)
        .unwrap();
    assert_eq!(format_of(store, "fixture"), 3);
    // A heap of today's format, warm in the worker when the old one comes.
    assert_eq!(output(rt, "var n = 1; n", "today").await, "1");
    assert_eq!(output(rt, "++n", "today").await, "2");
    assert_eq!(
        output(rt, "[count(), new Keeper().twice, later, fixed]", "fixture").await,
        r#"[3,6,"let",7]"#
    );
    assert_eq!(format_of(store, "fixture"), envelope::FORMAT_VERSION);
    assert_eq!(
        read_only_of(store, "fixture"),
        ReadOnly::Own,
        "its own read-only heap goes with it"
    );
    assert_eq!(output(rt, "++n", "today").await, "3");
    assert_eq!(output(rt, "kept.a.push(4); count()", "fixture").await, "4");
    // A heap from before `mcp.progress` gets it on its next run.
    assert_eq!(
        output(rt, "typeof mcp.progress", "fixture").await,
        "function"
    );
    // And the built-ins V8 leaves out of snapshot creators' contexts (heap format 7).
    assert_eq!(
        output(
            rt,
            "[typeof Promise.try, typeof Error.isError, RegExp.escape('a'), typeof Atomics.pause]",
            "fixture"
        )
        .await,
        r#"["function","function","\\x61","function"]"#
    );
    assert_eq!(read_only_of(store, "today"), ReadOnly::Shared);
    // Concurrent calls on both kinds.
    let calls = (0..6).map(|i| {
        let heap = if i % 2 == 0 { "fixture" } else { "today" };
        rt.run_on_heap(
            &Owner::Server,
            "1 + 1".into(),
            Some(heap.into()),
            CallLimits::default(),
        )
    });
    for run in futures::future::join_all(calls).await {
        assert_eq!(run.result.unwrap().completion.output, "2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_heaps_run_alone_in_process() {
    let store = MemoryStore::new();
    let rt = Runtime::new(
        Store::memory(store.clone()),
        Executor::InProcess,
        Limits::default(),
    );
    exercise(&rt, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_heaps_run_alone_in_a_worker_that_keeps_others_warm() {
    let store = MemoryStore::new();
    let settings = WorkerSettings {
        warm_bytes: 256 << 20,
        limits: Limits::default(),
    };
    let program = PathBuf::from(env!("CARGO_BIN_EXE_mcp-v8"));
    let rt = Runtime::new(
        Store::memory(store.clone()),
        Executor::workers(program, 1, settings),
        Limits::default(),
    );
    exercise(&rt, &store).await;
}
