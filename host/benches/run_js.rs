//! `run_js` through the runtime (engine + envelope + memory store), without MCP: latency of
//! single calls in worker processes and in-process; latency of calls spaced as an agent
//! spaces them (the model thinks between calls: warm isolates and saves after the answer
//! pay off there); throughput of concurrent clients; and what a call costs per MB of heap.
#![allow(missing_docs)] // criterion_main! generates an undocumented `main`

use std::path::PathBuf;
use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use futures::future::join_all;
use mcp_v8::engine::{Completion, Limits};
use mcp_v8::executor::Executor;
use mcp_v8::job::Caller;
use mcp_v8::runtime::{CallLimits, HeapRun, Owner, Runtime, SaveTo};
use mcp_v8::storage::{MemoryStore, Store};
use mcp_v8::worker::WorkerSettings;
use tokio::runtime::Runtime as Tokio;

const BIG_HEAP: &str =
    "var data = Array.from({ length: 20000 }, (_, i) => ({ id: i, name: 'item-' + i })); \
                        var blob = 'x'.repeat(400000); data.length";

fn tokio() -> Tokio {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn workers(size: usize) -> Executor {
    let settings = WorkerSettings {
        warm_bytes: 256 << 20,
        limits: Limits::default(),
    };
    Executor::workers(PathBuf::from(env!("CARGO_BIN_EXE_mcp-v8")), size, settings)
}

async fn on_heap(runtime: &Runtime, code: &str, heap: Option<&str>) -> HeapRun {
    let reply = runtime
        .run_on_heap(
            &Owner::Server,
            code.into(),
            heap.map(Into::into),
            CallLimits::default(),
        )
        .await;
    reply.result.expect("the benchmark code runs")
}

async fn stateless(runtime: &Runtime, code: &str) -> Completion {
    let reply = runtime
        .run_stateless(
            &Owner::Server,
            code.into(),
            CallLimits::default(),
            Caller::default(),
        )
        .await;
    reply.result.expect("the benchmark code runs")
}

fn runtime(rt: &Tokio, executor: Executor) -> Runtime {
    let runtime = Runtime::new(
        Store::memory(MemoryStore::new()),
        executor,
        Limits::default(),
    );
    rt.block_on(async {
        on_heap(&runtime, BIG_HEAP, Some("big")).await;
        on_heap(&runtime, "var n = 0", Some("small")).await;
    });
    runtime
}

fn latency(c: &mut Criterion) {
    let rt = tokio();
    let mut group = c.benchmark_group("run_js");
    for (label, executor) in [("workers", workers(1)), ("in-process", Executor::InProcess)] {
        let runtime = runtime(&rt, executor);
        group.bench_function(BenchmarkId::new("stateless", label), |b| {
            b.to_async(&rt).iter(|| stateless(&runtime, "1 + 1"))
        });
        group.bench_function(BenchmarkId::new("stateful fresh heap", label), |b| {
            b.to_async(&rt).iter(|| async {
                let run = on_heap(&runtime, "1 + 1", None).await;
                runtime.delete(&Owner::Server, &run.heap).await.unwrap();
            })
        });
        group.bench_function(BenchmarkId::new("stateful small heap", label), |b| {
            b.to_async(&rt)
                .iter(|| on_heap(&runtime, "++n", Some("small")))
        });
        group.bench_function(BenchmarkId::new("stateful 1 MB heap", label), |b| {
            b.to_async(&rt)
                .iter(|| on_heap(&runtime, "data.length", Some("big")))
        });
    }
    group.finish();
}

/// What listening to a call costs: the same logging call on a small heap, with nobody
/// listening and with its console relayed live (a relay thread in the worker, a frame per
/// batch, a channel to the listener).
fn live(c: &mut Criterion) {
    let rt = tokio();
    let mut group = c.benchmark_group("run_js live");
    let runtime = runtime(&rt, workers(1));
    let code = "console.log('n is', n); ++n";
    group.bench_function("not listening", |b| {
        b.to_async(&rt)
            .iter(|| on_heap(&runtime, code, Some("small")))
    });
    group.bench_function("console relayed live", |b| {
        b.to_async(&rt).iter(|| async {
            let (listener, mut heard) = tokio::sync::mpsc::unbounded_channel();
            let reply = runtime
                .run_saving_to(
                    &Owner::Server,
                    code.into(),
                    Some("small".into()),
                    SaveTo::Same,
                    CallLimits::default(),
                    Caller {
                        live: Some(listener),
                        ..Caller::default()
                    },
                )
                .await;
            reply.result.expect("the benchmark code runs");
            assert!(heard.recv().await.is_some(), "a live batch");
        })
    });
    group.finish();
}

/// Calls spaced `gap` apart (the gap is not measured): what an agent sees.
fn spaced(c: &mut Criterion) {
    let rt = tokio();
    let mut group = c.benchmark_group("run_js spaced");
    // One call per sample: the gaps, not the calls, take the time.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1));
    let runtime = runtime(&rt, workers(1));
    let cases: [(&str, Option<&str>, &str, u64); 3] = [
        ("stateless 1+1, 100 ms apart", None, "1 + 1", 100),
        ("small heap, 100 ms apart", Some("small"), "++n", 100),
        ("1 MB heap, 500 ms apart", Some("big"), "data.length", 500),
    ];
    for (label, heap, code, gap) in cases {
        group.bench_function(label, |b| {
            b.to_async(&rt).iter_custom(|iterations| {
                let runtime = &runtime;
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        tokio::time::sleep(Duration::from_millis(gap)).await;
                        let started = std::time::Instant::now();
                        match heap {
                            Some(heap) => drop(on_heap(runtime, code, Some(heap)).await),
                            None => drop(stateless(runtime, code).await),
                        }
                        total += started.elapsed();
                    }
                    total
                }
            })
        });
    }
    group.finish();
}

/// Back-to-back calls on heaps of growing size: the slope is the snapshot's cost per MB.
fn heap_size(c: &mut Criterion) {
    let rt = tokio();
    let mut group = c.benchmark_group("run_js heap size");
    group.sampling_mode(SamplingMode::Flat);
    let runtime = Runtime::new(
        Store::memory(MemoryStore::new()),
        workers(1),
        Limits::default(),
    );
    for mb in [2usize, 8, 16] {
        let heap = format!("mb-{mb}");
        // About `mb` MB of objects and strings.
        let fill = format!(
            "var rows = Array.from({{ length: {} }}, (_, i) => ({{ i, s: 'row-' + i }})); rows.length",
            mb * 12_000
        );
        rt.block_on(on_heap(&runtime, &fill, Some(&heap)));
        group.bench_function(BenchmarkId::new("back-to-back", format!("{mb} MB")), |b| {
            b.to_async(&rt)
                .iter(|| on_heap(&runtime, "rows.length", Some(&heap)))
        });
    }
    group.finish();
}

fn throughput(c: &mut Criterion) {
    let rt = tokio();
    let mut group = c.benchmark_group("run_js concurrent clients");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = Runtime::new(
        Store::memory(MemoryStore::new()),
        workers(cpus),
        Limits::default(),
    );
    for clients in [1usize, 2, 4, 8] {
        group.throughput(Throughput::Elements(clients as u64));
        let heaps: Vec<String> = (0..clients).map(|i| format!("client-{i}")).collect();
        group.bench_with_input(BenchmarkId::new("stateful", clients), &heaps, |b, heaps| {
            b.to_async(&rt).iter(|| {
                join_all(heaps.iter().map(|heap| {
                    on_heap(&runtime, "var n = (globalThis.n || 0) + 1; n", Some(heap))
                }))
            })
        });
        group.bench_with_input(BenchmarkId::new("stateless", clients), &clients, |b, &n| {
            b.to_async(&rt)
                .iter(|| join_all((0..n).map(|_| stateless(&runtime, "1 + 1"))))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = latency, live, spaced, throughput, heap_size
}
criterion_main!(benches);
