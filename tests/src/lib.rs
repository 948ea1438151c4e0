//! Helpers for the end-to-end tests: start the real `mcp-v8` binary and talk MCP to it.

use std::path::PathBuf;
use std::process::Stdio;

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Map, Value};

/// The `mcp-v8` binary under test: `$MCP_V8_BIN`, or the one cargo built next to this test.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MCP_V8_BIN") {
        return PathBuf::from(path);
    }
    // The test runs from target/<profile>/deps/; the binary is in target/<profile>/.
    let exe = std::env::current_exe().expect("current test executable");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("mcp-v8");
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo build --workspace` before the end-to-end tests",
        bin.display()
    );
    bin
}

/// A running `mcp-v8` and an MCP client session with it over stdio.
pub struct Server {
    client: RunningService<RoleClient, ()>,
    pid: u32,
}

/// What a tool call came back with.
#[derive(Debug)]
pub enum Reply {
    /// `isError: false`, with the structured content.
    Ok(Value),
    /// `isError: true`, with the text of the error.
    Err(String),
}

impl Reply {
    /// The structured result; panics with the error text otherwise.
    pub fn ok(self) -> Value {
        match self {
            Reply::Ok(v) => v,
            Reply::Err(e) => panic!("expected success, got error: {e}"),
        }
    }

    /// The error text; panics on success.
    pub fn err(self) -> String {
        match self {
            Reply::Ok(v) => panic!("expected an error, got {v}"),
            Reply::Err(e) => e,
        }
    }
}

impl Server {
    /// Starts `mcp-v8 ARGS` and completes the MCP handshake.
    pub async fn start(args: &[&str]) -> Server {
        let mut command = tokio::process::Command::new(binary());
        command.args(args).env("RUST_LOG", "warn");
        let (transport, _) = TokioChildProcess::builder(command)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mcp-v8");
        let pid = transport.id().expect("mcp-v8 has a pid");
        let client = ().serve(transport).await.expect("MCP handshake with mcp-v8");
        Server { client, pid }
    }

    /// The client session, for calls the helpers do not cover.
    pub fn client(&self) -> &RunningService<RoleClient, ()> {
        &self.client
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Process ids of the server's worker processes.
    pub fn workers(&self) -> Vec<u32> {
        children_of(self.pid)
    }

    /// Calls `tool` with `arguments` (a JSON object).
    pub async fn call(&self, tool: &str, arguments: Value) -> CallToolResult {
        let arguments: Map<String, Value> = match arguments {
            Value::Object(map) => map,
            other => panic!("tool arguments must be an object, not {other}"),
        };
        self.client
            .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(arguments))
            .await
            .unwrap_or_else(|e| panic!("tools/call {tool} failed at the protocol level: {e}"))
    }

    /// Calls `tool` and sorts the answer into [`Reply`].
    pub async fn reply(&self, tool: &str, arguments: Value) -> Reply {
        let result = self.call(tool, arguments).await;
        let text: String = result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect();
        if result.is_error == Some(true) {
            Reply::Err(text)
        } else {
            let structured = result.structured_content.expect("structured content");
            // The text content carries the same JSON for clients without structured output.
            assert_eq!(
                serde_json::from_str::<Value>(&text).ok(),
                Some(structured.clone())
            );
            Reply::Ok(structured)
        }
    }

    /// `run_js` on `heap` (or a new heap for `None`).
    pub async fn run_js(&self, code: &str, heap: Option<&str>) -> Reply {
        let mut args = serde_json::json!({ "code": code });
        if let Some(heap) = heap {
            args["heap"] = Value::from(heap);
        }
        self.reply("run_js", args).await
    }

    /// `run_js` on `heap`, expecting success; returns `output`.
    pub async fn output(&self, code: &str, heap: &str) -> String {
        let result = self.run_js(code, Some(heap)).await.ok();
        assert_eq!(result["heap"], heap);
        result["output"]
            .as_str()
            .expect("output is a string")
            .to_string()
    }

    /// Ends the session and waits for the server to exit.
    pub async fn stop(self) {
        self.client.cancel().await.expect("close the MCP session");
    }
}

/// Direct children of process `parent`, from /proc.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
                    let rest = &stat[stat.rfind(')')? + 2..];
                    rest.split(' ').nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}
