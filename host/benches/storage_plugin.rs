//! The file storage plugin through the host → plugin boundary (dlopen'd library, FFI, blocking
//! pool), against `std::fs` doing the same I/O directly.
//!
//! Needs the release build of the plugin: `cargo build --release --workspace` first.
#![allow(missing_docs)] // criterion_main! generates an undocumented `main`

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mcp_v8::storage::{loader, Precondition, Store};

fn plugin_library() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_mcp-v8"));
    let library = dir.with_file_name("libmcp_v8_file_storage.so");
    assert!(
        library.exists(),
        "{} is missing: run `cargo build --release --workspace` first",
        library.display()
    );
    library
}

fn storage_plugin(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().join("heaps");
    let plugin = loader::load(
        "file",
        &plugin_library(),
        &serde_json::json!({ "directory": heaps }),
    )
    .unwrap();
    let store = Store::blocking(Arc::new(plugin), Duration::from_secs(30));
    let mut group = c.benchmark_group("file storage");
    for size in [1usize << 20, 10 << 20] {
        let label = format!("{} MiB", size >> 20);
        let blob = Bytes::from(vec![0x5Au8; size]);
        group.throughput(Throughput::Bytes(size as u64));
        rt.block_on(store.put("bench", blob.clone(), Precondition::Any))
            .unwrap();
        let direct = dir.path().join(format!("direct-{size}"));
        std::fs::write(&direct, &blob).unwrap();

        group.bench_function(BenchmarkId::new("get via plugin", &label), |b| {
            b.to_async(&rt)
                .iter(|| async { store.get("bench").await.unwrap() })
        });
        group.bench_function(BenchmarkId::new("get via std::fs::read", &label), |b| {
            b.iter(|| std::fs::read(&direct).unwrap())
        });
        group.bench_function(
            BenchmarkId::new("put via plugin (atomic, fsynced)", &label),
            |b| {
                b.to_async(&rt).iter(|| async {
                    store
                        .put("bench", blob.clone(), Precondition::Any)
                        .await
                        .unwrap()
                })
            },
        );
        group.bench_function(
            BenchmarkId::new("put via std::fs (write + fsync)", &label),
            |b| {
                b.iter(|| {
                    let mut file = std::fs::File::create(&direct).unwrap();
                    file.write_all(&blob).unwrap();
                    file.sync_all().unwrap();
                })
            },
        );
        group.bench_function(
            BenchmarkId::new("put via std::fs::write (no fsync)", &label),
            |b| b.iter(|| std::fs::write(&direct, &blob).unwrap()),
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = storage_plugin
}
criterion_main!(benches);
