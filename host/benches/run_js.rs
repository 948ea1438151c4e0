//! `run_js` latency through the runtime (engine + envelope + memory store), without MCP.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use mcp_v8::engine::Limits;
use mcp_v8::runtime::Runtime;
use mcp_v8::storage::MemoryStore;

fn run_js(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let runtime = Runtime::new(Arc::new(MemoryStore::new()), Limits::default());
    // A heap holding about 1 MB of data.
    rt.block_on(
        runtime.run_on_heap(
            "var data = Array.from({ length: 20000 }, (_, i) => ({ id: i, name: 'item-' + i })); \
         var blob = 'x'.repeat(400000); data.length"
                .into(),
            Some("big".into()),
        ),
    )
    .unwrap();
    rt.block_on(runtime.run_on_heap("var n = 0".into(), Some("small".into())))
        .unwrap();

    let mut group = c.benchmark_group("run_js");
    group.bench_function("stateless", |b| {
        b.to_async(&rt)
            .iter(|| async { runtime.run_stateless("1 + 1".into()).await.unwrap() })
    });
    group.bench_function("stateful, fresh heap", |b| {
        b.to_async(&rt).iter(|| async {
            // A new generated heap each time.
            runtime.run_on_heap("1 + 1".into(), None).await.unwrap()
        })
    });
    group.bench_function("stateful, small heap", |b| {
        b.to_async(&rt).iter(|| async {
            runtime
                .run_on_heap("++n".into(), Some("small".into()))
                .await
                .unwrap()
        })
    });
    group.bench_function("stateful, 1 MB heap", |b| {
        b.to_async(&rt).iter(|| async {
            runtime
                .run_on_heap("data.length".into(), Some("big".into()))
                .await
                .unwrap()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = run_js
}
criterion_main!(benches);
