//! get/put of heap-sized objects through the S3 plugin, against a plain aws-sdk-s3 client
//! doing the same requests, both on a local moto server (started here; `./test.sh` installs
//! it into target/s3-venv, or set MOTO_SERVER).
#![allow(missing_docs)] // criterion_main! generates an undocumented `main`

use aws_sdk_s3::primitives::ByteStream;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mcp_v8_plugin_api::{HeapStore, Precondition};
use mcp_v8_s3_storage::{AccessKeys, Config, Credentials, S3Store};

#[path = "../tests/support/moto.rs"]
mod moto;
use moto::Moto;

fn s3(c: &mut Criterion) {
    let moto = Moto::start();
    let endpoint = moto.endpoint.clone();
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let client = moto.client();
    moto.create_bucket(&runtime, "bench");
    let config: Config = serde_json::from_value(serde_json::json!({
        "bucket": "bench", "endpoint_url": endpoint, "prefix": "plugin/",
    }))
    .expect("config");
    let keys = AccessKeys {
        id: "b".into(),
        secret: "b".into(),
        session_token: None,
    };
    let store = S3Store::open(config, Credentials::Keys(keys)).expect("open the plugin's store");

    let mut group = c.benchmark_group("s3");
    for size in [1usize << 20, 10 << 20] {
        let label = format!("{} MiB", size >> 20);
        let blob = bytes::Bytes::from(vec![0x3Cu8; size]);
        group.throughput(Throughput::Bytes(size as u64));
        store
            .put("bench", blob.clone(), Precondition::Any)
            .expect("seed");
        runtime
            .block_on(
                client
                    .put_object()
                    .bucket("bench")
                    .key("plain/bench")
                    .body(ByteStream::from(blob.clone()))
                    .send(),
            )
            .expect("seed");

        group.bench_function(BenchmarkId::new("get via plugin", &label), |b| {
            b.iter(|| store.get("bench").expect("get"))
        });
        group.bench_function(BenchmarkId::new("get via aws-sdk-s3", &label), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let object = client
                        .get_object()
                        .bucket("bench")
                        .key("plain/bench")
                        .send()
                        .await;
                    object
                        .expect("get")
                        .body
                        .collect()
                        .await
                        .expect("body")
                        .into_bytes()
                })
            })
        });
        // What the host asks before it runs code on a warm heap: the heap's current version.
        group.bench_function(BenchmarkId::new("version via plugin (HEAD)", &label), |b| {
            b.iter(|| store.version("bench").expect("version").expect("stored"))
        });
        let head = || {
            runtime
                .block_on(
                    client
                        .head_object()
                        .bucket("bench")
                        .key("plain/bench")
                        .send(),
                )
                .expect("head")
        };
        group.bench_function(BenchmarkId::new("head via aws-sdk-s3", &label), |b| {
            b.iter(head)
        });
        // Conditional puts, as the host makes them: each one against the version the previous
        // one returned.
        let mut version = store.get("bench").expect("get").version;
        group.bench_function(BenchmarkId::new("put via plugin (If-Match)", &label), |b| {
            b.iter(|| {
                version = store
                    .put(
                        "bench",
                        blob.clone(),
                        Precondition::MustMatch(version.clone()),
                    )
                    .expect("put");
            })
        });
        let mut etag = head().e_tag().unwrap_or_default().to_string();
        group.bench_function(
            BenchmarkId::new("put via aws-sdk-s3 (If-Match)", &label),
            |b| {
                b.iter(|| {
                    let put = client
                        .put_object()
                        .bucket("bench")
                        .key("plain/bench")
                        .if_match(etag.clone())
                        .body(ByteStream::from(blob.clone()))
                        .send();
                    etag = runtime
                        .block_on(put)
                        .expect("put")
                        .e_tag()
                        .unwrap_or_default()
                        .to_string();
                })
            },
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = s3
}
criterion_main!(benches);
