//! Code mode as an agent uses it: what a tool call from JavaScript adds to the same call made
//! directly by an MCP client, and the bytes an agent receives either way.
//!
//! `cargo build --release --workspace && cargo bench -p mcp-v8-e2e --bench code_mode` measures
//! the release binary (or `MCP_V8_BIN`) with `@modelcontextprotocol/server-everything` and
//! `server-memory` from `target/npm-tools` (`./test.sh` installs them):
//!
//! 1. a tool call (`echo`) made directly by an MCP client over stdio, one after another: the
//!    median per call;
//! 2. the same calls from JavaScript in one `run_js` (`await tools.everything.echo(...)` in a
//!    loop), timed inside the run: the median per call, and the difference (what mcp-v8 adds);
//! 3. a knowledge graph of 500 entities in `server-memory`: the bytes of `read_graph` as a
//!    client receives it, against the bytes of one `run_js` answer that filters it in code.
#![allow(missing_docs)] // a bench's `main`

use std::time::Instant;

use mcp_v8_e2e::clients::NodeTools;
use mcp_v8_e2e::Server;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::TokioChildProcess;
use rmcp::ServiceExt;
use serde_json::{json, Value};

const CALLS: usize = 300;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// An upstream entry as a command: its program, arguments and environment.
fn command(entry: &Value) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(entry["command"].as_str().unwrap());
    for arg in entry["args"].as_array().unwrap() {
        command.arg(arg.as_str().unwrap());
    }
    for (k, v) in entry["env"].as_object().unwrap() {
        command.env(k, v.as_str().unwrap());
    }
    command
}

#[tokio::main]
async fn main() {
    let Some(tools) = NodeTools::find("code_mode bench") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let everything = tools.server_everything();
    let memory = tools.server_memory(&dir.path().join("memory.jsonl"));
    let config = dir.path().join("mcp.json");
    let servers = json!({ "mcpServers": { "everything": everything, "memory": memory } });
    std::fs::write(&config, servers.to_string()).unwrap();

    // 1. Directly, as an MCP client calls it.
    let direct = ().serve(TokioChildProcess::new(command(&everything)).unwrap()).await.unwrap();
    let echo = || {
        let mut args = serde_json::Map::new();
        args.insert("message".into(), json!("x"));
        CallToolRequestParams::new("echo").with_arguments(args)
    };
    for _ in 0..20 {
        direct.call_tool(echo()).await.unwrap();
    }
    let mut times = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let started = Instant::now();
        direct.call_tool(echo()).await.unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let direct_ms = median(&mut times);
    direct.cancel().await.unwrap();

    // 2. From JavaScript, timed inside the run (a stateless server: nothing is journaled).
    let server = Server::start(&[
        "--stateless",
        "--mcp-config",
        config.to_str().unwrap(),
        "--tool-calls-per-run",
        "1000",
    ])
    .await;
    let code = format!(
        "const times = []; \
         for (let i = 0; i < 20; i++) await tools.everything.echo({{ message: 'x' }}); \
         for (let i = 0; i < {CALLS}; i++) {{ \
           const t = performance.now(); await tools.everything.echo({{ message: 'x' }}); \
           times.push(performance.now() - t); }} \
         times.sort((a, b) => a - b)[times.length >> 1]"
    );
    let mut medians = Vec::new();
    for _ in 0..3 {
        let answer = server.reply("run_js", json!({ "code": code })).await.ok();
        medians.push(answer["output"].as_str().unwrap().parse::<f64>().unwrap());
    }
    let from_code_ms = median(&mut medians);
    println!(
        "tool call (server-everything echo, stdio): direct {direct_ms:.3} ms, from JavaScript \
         {from_code_ms:.3} ms: mcp-v8 adds {:.3} ms ({:.2}x)",
        from_code_ms - direct_ms,
        from_code_ms / direct_ms
    );
    server.stop().await;

    // 3. Bytes an agent receives.
    let server = Server::start(&["--memory", "--mcp-config", config.to_str().unwrap()]).await;
    let fill = "const languages = ['rust', 'go', 'python', 'typescript', 'java']; \
        await tools.memory.create_entities({ entities: Array.from({ length: 500 }, (_, i) => ({ \
          name: `service-${i}`, entityType: 'service', \
          observations: [`written in ${languages[i % 5]}`, `owned by team ${i % 17}`, \
                         `p99 latency ${(i * 7) % 900} ms`, `deployed ${1 + (i % 28)} days ago`] })) }); 'filled'";
    server.output(fill, "graph").await;
    let graph = server.call_upstream_json("memory", "read_graph").await;
    let filtered = server
        .call(
            "run_js",
            json!({ "heap": "graph", "code":
                "var graph = await tools.memory.read_graph({}); \
                 graph.entities.filter((e) => e.observations.includes('written in rust') && \
                   e.observations.some((o) => /p99 latency (\\d+)/.exec(o)?.[1] > 800)).map((e) => e.name)" }),
        )
        .await;
    let filtered = serde_json::to_string(&filtered).unwrap();
    let direct_bytes = direct_read_graph(&memory_command(&tools, dir.path())).await;
    println!(
        "read_graph of 500 entities: {} bytes to the agent directly, {} bytes through run_js \
         filtering in code ({:.1}x fewer); the graph stays in the heap ({} bytes as JSON)",
        direct_bytes,
        filtered.len(),
        direct_bytes as f64 / filtered.len() as f64,
        graph
    );
    server.stop().await;
}

/// `server-memory` on the same graph file, as a client would start it.
fn memory_command(tools: &NodeTools, dir: &std::path::Path) -> tokio::process::Command {
    command(&tools.server_memory(&dir.join("memory.jsonl")))
}

/// The bytes of `read_graph`'s result as a client receives it.
async fn direct_read_graph(command: &tokio::process::Command) -> usize {
    let mut fresh = tokio::process::Command::new(command.as_std().get_program());
    fresh.args(command.as_std().get_args());
    for (k, v) in command.as_std().get_envs() {
        if let Some(v) = v {
            fresh.env(k, v);
        }
    }
    let client = ().serve(TokioChildProcess::new(fresh).unwrap()).await.unwrap();
    let result = client
        .call_tool(CallToolRequestParams::new("read_graph"))
        .await
        .unwrap();
    let bytes = serde_json::to_string(&result).unwrap().len();
    client.cancel().await.unwrap();
    bytes
}

trait UpstreamJson {
    async fn call_upstream_json(&self, server: &str, tool: &str) -> usize;
}

impl UpstreamJson for Server {
    /// Bytes of a tool's result as JSON, measured inside the heap.
    async fn call_upstream_json(&self, server: &str, tool: &str) -> usize {
        let code = format!("JSON.stringify(await tools.{server}.{tool}({{}})).length");
        self.output(&code, "graph").await.parse().unwrap()
    }
}
