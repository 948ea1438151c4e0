//! What compressing heaps costs and saves, on real snapshots: an empty heap, ~1 MB and ~20 MB
//! of data. Sealing runs after the answer (in the background save), opening when a heap is
//! loaded cold. Sizes and ratios are printed to stderr.
#![allow(missing_docs)] // criterion_main! generates an undocumented `main`

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mcp_v8::engine::{self, Limits};
use mcp_v8::envelope::{self, Codec, Position, ReadOnly};

fn snapshot(code: &str) -> Bytes {
    let limits = Limits {
        timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let run = engine::run_stateful(code, None, limits);
    run.result.expect("the benchmark heap is made").1
}

fn heaps() -> Vec<(&'static str, Bytes)> {
    let rows = |n: usize| {
        format!("var rows = Array.from({{ length: {n} }}, (_, i) => ({{ i, s: 'row-' + i, t: i % 7 ? 'a' : 'b' }})); rows.length")
    };
    vec![
        ("empty heap", snapshot("1")),
        ("~1 MB of data", snapshot(&rows(12_000))),
        ("~20 MB of data", snapshot(&rows(240_000))),
    ]
}

fn envelope(c: &mut Criterion) {
    let heaps = heaps();
    let mut group = c.benchmark_group("envelope");
    for (label, snapshot) in &heaps {
        for level in [1, 3, 9] {
            let packed = zstd::bulk::compress(snapshot, level).expect("compress");
            eprintln!(
                "{label}: snapshot {} bytes, zstd level {level}: {} bytes ({:.1}x)",
                snapshot.len(),
                packed.len(),
                snapshot.len() as f64 / packed.len() as f64
            );
        }
        group.throughput(Throughput::Bytes(snapshot.len() as u64));
        for (codec, name) in [(Codec::None, "none"), (Codec::Zstd, "zstd")] {
            group.bench_function(BenchmarkId::new(format!("seal {name}"), label), |b| {
                b.iter(|| {
                    envelope::seal(
                        snapshot,
                        "bench",
                        ReadOnly::Shared,
                        codec,
                        Position::default(),
                    )
                })
            });
            let sealed = Bytes::from(envelope::seal(
                snapshot,
                "bench",
                ReadOnly::Shared,
                codec,
                Position::default(),
            ));
            group.bench_function(BenchmarkId::new(format!("open {name}"), label), |b| {
                b.iter(|| envelope::open(&sealed, "bench").expect("open"))
            });
        }
        for level in [3, 9] {
            group.bench_function(
                BenchmarkId::new(format!("zstd level {level}"), label),
                |b| b.iter(|| zstd::bulk::compress(snapshot, level).expect("compress")),
            );
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = envelope
}
criterion_main!(benches);
