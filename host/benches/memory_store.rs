//! The built-in memory store: get must not copy, put must cost at most one memcpy, and the
//! size limit and TTL must not make either slow; plus the eviction policy on a working set
//! twice the limit, against a plain LRU of the same capacity.
#![allow(missing_docs)] // criterion_main! generates an undocumented `main`

use std::num::NonZeroUsize;
use std::time::Duration;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mcp_v8::storage::{HeapStore, MemoryOptions, MemoryStore, Precondition};

fn memory_store(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory_store");
    let bounded = MemoryOptions {
        max_bytes: Some(1 << 30),
        ttl: Some(Duration::from_secs(3600)),
    };
    for size in [1usize << 20, 10 << 20] {
        let label = format!("{} MiB", size >> 20);
        let blob = Bytes::from(vec![0xA5u8; size]);
        group.throughput(Throughput::Bytes(size as u64));
        for (kind, options) in [("", MemoryOptions::default()), (" bounded", bounded)] {
            let store = MemoryStore::with_options(options);
            store.put("bench", blob.clone(), Precondition::Any).unwrap();
            group.bench_with_input(
                BenchmarkId::new(format!("get{kind}"), &label),
                &store,
                |b, store| b.iter(|| black_box(store.get("bench").unwrap())),
            );
            // A put of bytes the caller already owns, as the host does with a sealed snapshot.
            group.bench_with_input(
                BenchmarkId::new(format!("put{kind}"), &label),
                &store,
                |b, store| b.iter(|| store.put("bench", blob.clone(), Precondition::Any).unwrap()),
            );
        }
        // The yardstick: one copy of the blob.
        group.bench_with_input(BenchmarkId::new("memcpy", &label), &blob, |b, blob| {
            b.iter(|| black_box(blob.to_vec()))
        });
    }
    group.finish();
}

/// Heaps in the working set, each [`HEAP`] bytes; the store holds half of them.
const WORKING_SET: usize = 128;
const HEAP: usize = 64 << 10;
const OPERATIONS: usize = 10_000;

/// A reproducible access sequence over the working set: uniform, or Zipf-skewed (`s` = 0.9).
fn trace(skewed: bool) -> Vec<usize> {
    let weights: Vec<f64> = (1..=WORKING_SET)
        .map(|rank| {
            if skewed {
                1.0 / (rank as f64).powf(0.9)
            } else {
                1.0
            }
        })
        .collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(WORKING_SET);
    let mut acc = 0.0;
    for w in weights {
        acc += w / total;
        cdf.push(acc);
    }
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..OPERATIONS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            cdf.partition_point(|p| *p < u).min(WORKING_SET - 1)
        })
        .collect()
}

/// Runs `trace` as the runtime would (read; on a miss, write the heap): returns the hits.
fn replay_store(store: &MemoryStore, trace: &[usize], blob: &Bytes) -> usize {
    let mut hits = 0;
    for &i in trace {
        let name = format!("heap-{i}");
        if store.get(&name).is_ok() {
            hits += 1;
        } else {
            store.put(&name, blob.clone(), Precondition::Any).unwrap();
        }
    }
    hits
}

fn replay_plain_lru(trace: &[usize]) -> usize {
    let capacity = NonZeroUsize::new(WORKING_SET / 2).unwrap();
    let mut lru = lru::LruCache::new(capacity);
    let mut hits = 0;
    for &i in trace {
        if lru.get(&i).is_some() {
            hits += 1;
        } else {
            lru.put(i, ());
        }
    }
    hits
}

fn eviction(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory_store_eviction");
    let blob = Bytes::from(vec![7u8; HEAP]);
    let options = MemoryOptions {
        max_bytes: Some((WORKING_SET / 2 * HEAP) as u64),
        ttl: Some(Duration::from_secs(3600)),
    };
    group.throughput(criterion::Throughput::Elements(OPERATIONS as u64));
    for (label, skewed) in [("uniform", false), ("zipf 0.9", true)] {
        let trace = trace(skewed);
        let ours = replay_store(&MemoryStore::with_options(options), &trace, &blob);
        let plain = replay_plain_lru(&trace);
        eprintln!(
            "eviction, {label}: hit ratio {:.3} (plain LRU {:.3}) over {OPERATIONS} operations, \
             working set {WORKING_SET} heaps = 2x the limit",
            ours as f64 / OPERATIONS as f64,
            plain as f64 / OPERATIONS as f64
        );
        group.bench_function(BenchmarkId::new("10k operations", label), |b| {
            b.iter(|| {
                let store = MemoryStore::with_options(options);
                black_box(replay_store(&store, &trace, &blob))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, memory_store, eviction);
criterion_main!(benches);
