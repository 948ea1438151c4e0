//! Helpers for the end-to-end tests: start the real `mcp-v8` binary and talk MCP to it.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Map, Value};

/// Where cargo put the workspace's binaries and plugin libraries for this test build, built
/// and up to date: the first call in a test process runs `cargo build --workspace` for this
/// build's profile, so `cargo test` works on a fresh checkout.
pub fn build_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    match BUILT.get_or_init(build_workspace) {
        Ok(dir) => dir.clone(),
        Err(why) => panic!("{why}"),
    }
}

fn build_workspace() -> Result<PathBuf, String> {
    // The test runs from target/<profile>/deps/; the binaries are in target/<profile>/.
    let exe = std::env::current_exe().map_err(|e| format!("the test executable: {e}"))?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or("the test executable lives outside target/<profile>/deps")?
        .to_path_buf();
    let target = dir.parent().ok_or("target/<profile> has no parent")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut build = std::process::Command::new(&cargo);
    build
        .args(["build", "--workspace", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target)
        .stdin(Stdio::null());
    if dir.file_name().is_some_and(|name| name == "release") {
        build.arg("--release");
    }
    let status = build.status().map_err(|e| {
        format!(
            "could not run {} to build the binaries under test ({e}); run `cargo build --workspace` first",
            Path::new(&cargo).display()
        )
    })?;
    if !status.success() {
        return Err(format!(
            "`cargo build --workspace` failed ({status}): the end-to-end tests need the mcp-v8 binary and the plugins"
        ));
    }
    Ok(dir)
}

/// A plugin library of this workspace's build, e.g. `library("mcp_v8_file_storage")`.
pub fn library(crate_name: &str) -> PathBuf {
    build_dir().join(format!("lib{crate_name}.so"))
}

/// The `mcp-v8` binary under test: `$MCP_V8_BIN`, or the one of this workspace's build.
pub fn binary() -> PathBuf {
    match std::env::var_os("MCP_V8_BIN") {
        Some(path) => PathBuf::from(path),
        None => build_dir().join("mcp-v8"),
    }
}

/// Polls `probe` until it answers `Some`, and returns that; fails the test naming `what` if
/// `within` passes first. The condition is the synchronisation, never the time.
pub async fn eventually<T, F, Fut>(within: std::time::Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A client's configuration that declares the tasks extension (SEP-2663): its long calls
/// become tasks.
pub fn taking_tasks() -> rmcp::model::ClientConfig {
    use rmcp::model::{ClientCapabilities, ClientConfig, JsonObject, TASKS_EXTENSION_ID};
    let mut config = ClientConfig::default();
    let mut capabilities = ClientCapabilities::default();
    let tasks = (TASKS_EXTENSION_ID.to_string(), JsonObject::new());
    capabilities.extensions = Some([tasks].into_iter().collect());
    config.capabilities = capabilities;
    config
}

pub mod clients;
pub mod http;
pub mod listen;
pub mod proxy;
pub mod s3;

/// The tools of a server with heaps, sorted.
pub const HEAP_TOOLS: [&str; 7] = [
    "copy_heap",
    "delete_heap",
    "heap_history",
    "list_heaps",
    "read_output",
    "run_js",
    "storage_stats",
];

/// The heap names of a `list_heaps` result, in its order.
pub fn heap_names(listing: &Value) -> Vec<&str> {
    listing["heaps"]
        .as_array()
        .expect("a list of heaps")
        .iter()
        .map(|h| h["heap"].as_str().expect("a heap name"))
        .collect()
}

/// An MCP client session with a running `mcp-v8`, over any transport.
#[derive(Debug)]
pub struct Client {
    service: RunningService<RoleClient, ()>,
}

/// A running `mcp-v8` and an MCP client session with it over stdio.
#[derive(Debug)]
pub struct Server {
    client: Client,
    pid: u32,
}

impl std::ops::Deref for Server {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
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
        Self::start_with_env(args, &[]).await
    }

    /// Starts `mcp-v8 ARGS` with extra environment variables.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = tokio::process::Command::new(binary());
        command.args(args).env("RUST_LOG", "warn");
        command.envs(env.iter().copied());
        Self::start_command(command).await
    }

    /// Starts `command` (an mcp-v8 binary with its arguments) and completes the handshake.
    pub async fn start_command(command: tokio::process::Command) -> Server {
        let (transport, _) = TokioChildProcess::builder(command)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mcp-v8");
        let pid = transport.id().expect("mcp-v8 has a pid");
        let service = ().serve(transport).await.expect("MCP handshake with mcp-v8");
        Server {
            client: Client { service },
            pid,
        }
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub async fn kill(self) {
        let status = std::process::Command::new("kill")
            .args(["-9", &self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        // The client notices the closed pipe; its result does not matter here.
        let _ = self.client.service.cancel().await;
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Process ids of the server's worker processes.
    pub fn workers(&self) -> Vec<u32> {
        children_of(self.pid)
    }

    /// Ends the session and waits for the server to exit.
    pub async fn stop(self) {
        self.client.stop().await;
    }
}

impl Client {
    /// Wraps an established client session.
    pub fn new(service: RunningService<RoleClient, ()>) -> Self {
        Self { service }
    }

    /// The client session, for calls the helpers do not cover.
    pub fn client(&self) -> &RunningService<RoleClient, ()> {
        &self.service
    }

    /// The names of the server's tools, sorted.
    pub async fn tool_names(&self) -> Vec<String> {
        let tools = self.service.list_all_tools().await.expect("tools/list");
        let mut names: Vec<String> = tools.into_iter().map(|t| t.name.to_string()).collect();
        names.sort();
        names
    }

    /// Calls `tool` with `arguments` (a JSON object).
    pub async fn call(&self, tool: &str, arguments: Value) -> CallToolResult {
        let arguments: Map<String, Value> = match arguments {
            Value::Object(map) => map,
            other => panic!("tool arguments must be an object, not {other}"),
        };
        self.service
            .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(arguments))
            .await
            .unwrap_or_else(|e| panic!("tools/call {tool} failed at the protocol level: {e}"))
    }

    /// Calls `tool` and sorts the answer into [`Reply`].
    pub async fn reply(&self, tool: &str, arguments: Value) -> Reply {
        let result = self.call(tool, arguments).await;
        let texts: Vec<String> = result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect();
        if result.is_error == Some(true) {
            Reply::Err(texts.concat())
        } else {
            let structured = result.structured_content.expect("structured content");
            // The first text block carries the same JSON, for clients without structured
            // output; a second one, if any, is the console.
            let first = texts.first().map(String::as_str).unwrap_or_default();
            assert_eq!(
                serde_json::from_str::<Value>(first).ok(),
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

    /// `run_js` with `arguments`, given up after `wait` as a client gives up (rmcp then sends
    /// `notifications/cancelled`); what the client got: a timeout, if the call still ran.
    pub async fn run_js_giving_up_after(
        &self,
        arguments: Value,
        wait: std::time::Duration,
    ) -> Result<rmcp::model::ServerResult, rmcp::service::ServiceError> {
        use rmcp::model::{CallToolRequest, ClientRequest};
        let arguments: Map<String, Value> = match arguments {
            Value::Object(map) => map,
            other => panic!("tool arguments must be an object, not {other}"),
        };
        let params = CallToolRequestParams::new("run_js").with_arguments(arguments);
        let handle = self
            .service
            .peer()
            .send_cancellable_request(
                ClientRequest::CallToolRequest(CallToolRequest::new(params)),
                rmcp::service::PeerRequestOptions::with_timeout(wait),
            )
            .await
            .expect("send tools/call");
        handle.await_response().await
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

    /// Waits until the heaps of all calls answered so far are stored: `list_heaps` waits for
    /// saves still in progress. Returns the listing.
    pub async fn settle(&self) -> Value {
        self.reply("list_heaps", serde_json::json!({})).await.ok()
    }

    /// Ends the session.
    pub async fn stop(self) {
        self.service.cancel().await.expect("close the MCP session");
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

/// Runs `mcp-v8 ARGS` with no client (stdin closed) and returns its exit code and stderr:
/// for start-up failures, which happen before any MCP traffic.
pub fn start_up_failure(args: &[&str]) -> (i32, String) {
    start_up_failure_with_env(args, &[])
}

/// [`start_up_failure`] with extra environment variables.
pub fn start_up_failure_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let output = std::process::Command::new(binary())
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run mcp-v8");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

/// Builds the example plugin against a copy of `plugin-api` whose version is `version`, in
/// its own target directory, and returns the library. This is what a third party whose
/// plugin is built against another plugin-api release hands to the host.
pub fn example_plugin_built_against_api(version: &str) -> PathBuf {
    example_plugin_built_against(&format!("plugin-api-{version}"), version, &[])
}

/// Builds the example plugin against a copy of `plugin-api` with version `version` and the
/// text replacements `patch` (file under `src/`, from, to), in a folder of its own named `tag`.
pub fn example_plugin_built_against(
    tag: &str,
    version: &str,
    patch: &[(&str, &str, &str)],
) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let work = build_dir().join(tag);
    let api = work.join("plugin-api");
    let plugin = work.join("example-plugin");
    for dir in [api.join("src"), plugin.join("src")] {
        std::fs::create_dir_all(dir).expect("create build folders");
    }
    for entry in std::fs::read_dir(workspace.join("plugin-api/src")).expect("plugin-api sources") {
        let entry = entry.expect("source entry");
        let name = entry.file_name();
        let mut text = std::fs::read_to_string(entry.path()).expect("read plugin-api source");
        for (file, from, to) in patch {
            if name.to_str() == Some(*file) {
                assert!(text.contains(from), "{file} has no {from:?}");
                text = text.replace(from, to);
            }
        }
        write_if_changed(&api.join("src").join(name), &text);
    }
    copy_if_changed(
        &workspace.join("tests/example-plugin/src/lib.rs"),
        &plugin.join("src/lib.rs"),
    );
    copy_if_changed(&workspace.join("Cargo.lock"), &plugin.join("Cargo.lock"));
    write_if_changed(
        &api.join("Cargo.toml"),
        &format!(
            "[package]\nname = \"mcp-v8-plugin-api\"\nversion = \"{version}\"\nedition = \"2021\"\n\
             [lib]\nname = \"mcp_v8_plugin_api\"\n\
             [dependencies]\nabi_stable = {{ version = \"0.11.3\", default-features = false }}\n\
             bytes = \"1\"\n\
             serde = {{ version = \"1\", features = [\"derive\"] }}\nserde_json = \"1\"\n"
        ),
    );
    write_if_changed(
        &plugin.join("Cargo.toml"),
        "[package]\nname = \"mcp-v8-example-storage\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\
         [workspace]\n[lib]\ncrate-type = [\"cdylib\"]\n\
         [dependencies]\nmcp-v8-plugin-api = { path = \"../plugin-api\" }\n\
         abi_stable = { version = \"0.11.3\", default-features = false }\n\
         bytes = \"1\"\n\
         serde = { version = \"1\", features = [\"derive\"] }\n",
    );
    cargo_build(&plugin.join("Cargo.toml"), &work.join("target"));
    work.join("target/debug/libmcp_v8_example_storage.so")
}

/// Builds a dependency-free `cdylib` whose `src/lib.rs` is `source`, and returns the library:
/// for libraries that pretend to be plugins.
pub fn fake_library(name: &str, source: &str) -> PathBuf {
    let work = build_dir().join("fake-libraries").join(name);
    std::fs::create_dir_all(work.join("src")).expect("create build folders");
    write_if_changed(
        &work.join("Cargo.toml"),
        &format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\
             [workspace]\n[lib]\ncrate-type = [\"cdylib\"]\n"
        ),
    );
    write_if_changed(&work.join("src/lib.rs"), source);
    cargo_build(&work.join("Cargo.toml"), &work.join("target"));
    work.join(format!("target/debug/lib{}.so", name.replace('-', "_")))
}

fn cargo_build(manifest: &Path, target: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--offline", "--quiet", "--manifest-path"])
        .arg(manifest)
        .env("CARGO_TARGET_DIR", target)
        .status()
        .expect("run cargo");
    assert!(status.success(), "building {} failed", manifest.display());
}

fn copy_if_changed(from: &Path, to: &Path) {
    let bytes = std::fs::read(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    write_if_changed(to, &String::from_utf8(bytes).expect("UTF-8 source"));
}

/// Writes only on change, so cargo's incremental build is not thrown away.
fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// The path of a loaded shared library that is certainly not an mcp-v8 plugin (libc).
pub fn some_system_library() -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.contains("/libc.so"))
        .map(PathBuf::from)
        .expect("libc is mapped into this process")
}

/// `mcp-v8` over stdio driven line by line, for what an MCP client library would never send.
#[derive(Debug)]
pub struct RawStdio {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    /// The server's log lines (also echoed to the test's stderr).
    logs: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl RawStdio {
    /// Starts `mcp-v8 ARGS` and completes the handshake.
    pub async fn start(args: &[&str]) -> RawStdio {
        let mut raw = Self::spawn(args);
        raw.send_line(
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#,
        )
        .await;
        let answer = raw.next().await;
        assert_eq!(answer["id"], 0, "{answer}");
        raw.send_line(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await;
        raw
    }

    /// Starts `mcp-v8 ARGS` without a handshake, in a process group of its own (so a test can
    /// signal the server and its workers as a terminal's Ctrl-C would).
    pub fn spawn(args: &[&str]) -> RawStdio {
        Self::spawn_with_log(args, "warn,mcp_v8::runtime=debug")
    }

    /// [`RawStdio::spawn`] with `RUST_LOG` set to `filter`.
    pub fn spawn_with_log(args: &[&str], filter: &str) -> RawStdio {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(binary())
            .args(args)
            .env("RUST_LOG", filter)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mcp-v8");
        let stdin = child.stdin.take().expect("stdin pipe");
        let stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout pipe")).lines();
        let mut stderr =
            tokio::io::BufReader::new(child.stderr.take().expect("stderr pipe")).lines();
        let (log_tx, logs) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("{line}");
                let _ = log_tx.send(line);
            }
        });
        RawStdio {
            child,
            stdin,
            stdout,
            logs,
        }
    }

    /// Waits until the server logs a line containing `needle`; returns it.
    pub async fn wait_for_log(&mut self, needle: &str) -> String {
        while let Some(line) = self.logs.recv().await {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("mcp-v8 exited without logging {needle:?}");
    }

    /// Every line the server has logged so far that has not been waited for.
    pub fn logged(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = self.logs.try_recv() {
            lines.push(line);
        }
        lines
    }

    /// The server's process id (also its process group's).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Waits for the server to exit, at most `limit`, keeping stdin open.
    pub async fn exit_within(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("mcp-v8 still runs {limit:?} after the signal"))
            .expect("wait for mcp-v8")
    }

    /// Writes one line (a newline is added).
    pub async fn send_line(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt;
        self.stdin.write_all(line.as_bytes()).await.expect("write");
        self.stdin.write_all(b"\n").await.expect("write");
        self.stdin.flush().await.expect("flush");
    }

    /// The next message from the server.
    pub async fn next(&mut self) -> Value {
        let line = self
            .stdout
            .next_line()
            .await
            .expect("read stdout")
            .expect("the server closed stdout");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Calls `run_js` with `code` on heap `raw` as request `id` and returns the response.
    pub async fn run_js(&mut self, id: u64, code: &str) -> Value {
        self.send_tool_call(
            id,
            "run_js",
            serde_json::json!({ "code": code, "heap": "raw" }),
        )
        .await;
        self.next().await
    }

    /// Sends a `tools/call` of `tool` with `arguments` as request `id`, without waiting.
    pub async fn send_tool_call(&mut self, id: u64, tool: &str, arguments: Value) {
        let request = serde_json::json!({
            "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": { "name": tool, "arguments": arguments }
        });
        self.send_line(&request.to_string()).await;
    }

    /// The server process.
    pub fn child(&mut self) -> &mut tokio::process::Child {
        &mut self.child
    }

    /// Closes stdin and waits for the server to exit.
    pub async fn close(self) -> std::process::ExitStatus {
        let RawStdio {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        child.wait().await.expect("wait for mcp-v8")
    }
}

/// Writes a plugins.toml under `dir` that uses the hostile test store with `plugin_config`
/// (its `[plugins.hostile.config]` lines); returns its path.
pub fn hostile_config(dir: &Path, plugin_config: &str) -> String {
    let path = dir.join("plugins.toml");
    let text = format!(
        "storage = \"hostile\"\n[plugins.hostile]\npath = {:?}\n[plugins.hostile.config]\n{plugin_config}\n",
        library("mcp_v8_hostile_storage")
    );
    std::fs::write(&path, text).expect("write plugins.toml");
    path.to_str().expect("a UTF-8 path").to_string()
}
