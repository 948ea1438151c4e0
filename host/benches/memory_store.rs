//! The built-in memory store: get must not copy, put must cost at most one memcpy.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mcp_v8::storage::{MemoryStore, Precondition};

fn memory_store(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory_store");
    for size in [1usize << 20, 10 << 20] {
        let label = format!("{} MiB", size >> 20);
        let blob = Bytes::from(vec![0xA5u8; size]);
        let store = MemoryStore::new();
        store
            .put_now("bench", blob.clone(), Precondition::Any)
            .unwrap();
        group.throughput(Throughput::Bytes(size as u64));

        group.bench_with_input(BenchmarkId::new("get", &label), &store, |b, store| {
            b.iter(|| black_box(store.get_now("bench").unwrap()))
        });
        // A put of bytes the caller already owns, as the host does with a sealed snapshot.
        group.bench_with_input(BenchmarkId::new("put", &label), &store, |b, store| {
            b.iter(|| {
                store
                    .put_now("bench", blob.clone(), Precondition::Any)
                    .unwrap()
            })
        });
        // The yardstick: one copy of the blob.
        group.bench_with_input(BenchmarkId::new("memcpy", &label), &blob, |b, blob| {
            b.iter(|| black_box(blob.to_vec()))
        });
    }
    group.finish();
}

criterion_group!(benches, memory_store);
criterion_main!(benches);
