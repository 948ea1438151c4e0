//! get/put of heap-sized objects through the S3 plugin, against a plain aws-sdk-s3 client
//! doing the same requests, both on a local moto server (started here; `./test.sh` installs
//! it into target/s3-venv, or set MOTO_SERVER).
#![allow(missing_docs)] // criterion_main! generates an undocumented `main`

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use aws_sdk_s3::primitives::ByteStream;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mcp_v8_plugin_api::{HeapStore, Precondition};
use mcp_v8_s3_storage::{AccessKeys, Config, Credentials, S3Store};

struct Moto(std::process::Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> (Moto, String) {
    let server = std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/s3-venv/bin/moto_server")
        });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = Command::new(&server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e} (run ./test.sh first)", server.display()));
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        if line.expect("moto output").contains("Running on") {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    (Moto(child), format!("http://127.0.0.1:{port}"))
}

fn s3(c: &mut Criterion) {
    let (_moto, endpoint) = start_moto();
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .credentials_provider(aws_credential_types::Credentials::new(
                "b", "b", None, None, "bench",
            ))
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&endpoint)
            .force_path_style(true)
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https(),
            )
            .build(),
    );
    runtime
        .block_on(client.create_bucket().bucket("bench").send())
        .expect("create the bucket");
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
