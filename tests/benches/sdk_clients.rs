//! `run_js` as the official SDKs' clients call it — the TypeScript SDK
//! (`@modelcontextprotocol/sdk`, the client most MCP hosts are built on) and the Python SDK
//! (`mcp`) — over a kept-alive Streamable HTTP connection and over stdio, each call waiting for
//! the one before: a small call, and a 1 MiB answer. Per case it prints the median and the
//! 90th percentile of a call as the client saw it.
//!
//! `./test.sh` installs both clients (or see docs/testing.md); then
//! `cargo build --release --workspace && cargo bench -p mcp-v8-e2e --bench sdk_clients`
//! measures the release binary (or `MCP_V8_BIN`) on the memory store; a filter argument picks
//! cases by name. With `MCP_V8_BASELINE=/path/to/another/mcp-v8` each case runs on both, in
//! turn, three times, and the ratios new/baseline of the medians are printed.
#![allow(missing_docs)] // a bench binary's `main`

use std::path::{Path, PathBuf};

use mcp_v8_e2e::clients::{Sdk, SdkCalls, SdkTransport};
use mcp_v8_e2e::http::HttpServer;

/// One kind of call.
struct Size {
    name: &'static str,
    setup: &'static str,
    code: &'static str,
    calls: usize,
    /// The bytes of text each answer carries.
    bytes: usize,
}

const SIZES: [Size; 2] = [
    Size {
        name: "small call",
        setup: "var n = 0",
        code: "++n",
        calls: 200,
        bytes: 0,
    },
    Size {
        name: "1 MiB answer",
        setup: "var big = 'x'.repeat(1 << 20)",
        code: "big",
        calls: 20,
        bytes: 1 << 20,
    },
];

/// Every answer whole: the 1 MiB case is over the default answer budget.
const FLAGS: [&str; 3] = ["--memory", "--max-output-tokens", "0"];

#[derive(Clone, Copy, PartialEq)]
enum Over {
    StreamableHttp,
    Stdio,
}

impl Over {
    fn name(self) -> &'static str {
        match self {
            Over::StreamableHttp => "Streamable HTTP",
            Over::Stdio => "stdio",
        }
    }
}

/// `size`'s calls from `sdk` to `binary` over `over`, on a server of their own.
async fn run(sdk: &Sdk, over: Over, size: &Size, binary: &Path) -> SdkCalls {
    let calls = match over {
        Over::StreamableHttp => {
            let server = HttpServer::start_binary(binary, &FLAGS).await;
            let transport = SdkTransport::StreamableHttp(&server.mcp_url);
            let calls = sdk
                .calls(&transport, size.calls, "h", size.setup, size.code)
                .await;
            assert!(server.terminate().await.success());
            calls
        }
        Over::Stdio => {
            let binary = binary.display().to_string();
            let argv: Vec<&str> = std::iter::once(binary.as_str()).chain(FLAGS).collect();
            let transport = SdkTransport::Stdio(&argv);
            sdk.calls(&transport, size.calls, "h", size.setup, size.code)
                .await
        }
    };
    assert!(
        calls.bytes >= size.bytes,
        "{}: the answer had {} bytes",
        size.name,
        calls.bytes
    );
    calls
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; a filter narrows the cases by name.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let binary = mcp_v8_e2e::binary();
    let baseline = std::env::var_os("MCP_V8_BASELINE").map(PathBuf::from);
    let sdks = [Sdk::typescript("sdk_clients"), Sdk::python("sdk_clients")];
    for sdk in sdks.iter().flatten() {
        for over in [Over::StreamableHttp, Over::Stdio] {
            for size in &SIZES {
                let name = format!("{}, {}, {}", sdk.name(), over.name(), size.name);
                if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
                    continue;
                }
                let Some(baseline) = &baseline else {
                    let calls = run(sdk, over, size, &binary).await;
                    println!(
                        "{name:48} median {:8.2} ms, p90 {:8.2} ms",
                        calls.quantile_ms(0.5),
                        calls.quantile_ms(0.9)
                    );
                    continue;
                };
                let (mut new, mut old) = (Vec::new(), Vec::new());
                for _ in 0..3 {
                    new.push(run(sdk, over, size, &binary).await);
                    old.push(run(sdk, over, size, baseline).await);
                }
                let pick =
                    |runs: &[SdkCalls], q| median(runs.iter().map(|c| c.quantile_ms(q)).collect());
                let (n50, o50) = (pick(&new, 0.5), pick(&old, 0.5));
                let (n90, o90) = (pick(&new, 0.9), pick(&old, 0.9));
                println!(
                    "{name:48} median {n50:8.2} ms vs {o50:8.2} ms ({:.3}x), p90 {n90:8.2} ms vs {o90:8.2} ms ({:.3}x)",
                    n50 / o50,
                    n90 / o90
                );
            }
        }
    }
}
