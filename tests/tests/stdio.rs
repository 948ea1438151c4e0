//! `mcp-v8` over stdio, driven as Claude Desktop or Cursor would drive it.

use std::time::Duration;

use futures::future::join_all;
use mcp_v8_e2e::{eventually, RawStdio, Server};
use rmcp::model::{ReadResourceRequestParams, ResourceContents};
use serde_json::{json, Value};

#[tokio::test]
async fn lists_the_heap_tools() {
    let server = Server::start(&["--memory"]).await;
    assert_eq!(server.tool_names().await, mcp_v8_e2e::HEAP_TOOLS);
    server.stop().await;
}

#[tokio::test]
async fn state_persists_across_calls() {
    let server = Server::start(&["--memory"]).await;
    assert_eq!(
        server
            .output("var count = 1; let items = ['a']; function add(x) { items.push(x); return items.length; }; count", "work")
            .await,
        "1"
    );
    assert_eq!(
        server.output("count += 1; add('b'); count", "work").await,
        "2"
    );
    assert_eq!(
        server.output("({ count, items })", "work").await,
        r#"{"count":2,"items":["a","b"]}"#
    );
    server.stop().await;
}

#[tokio::test]
async fn heaps_are_isolated() {
    let server = Server::start(&["--memory"]).await;
    server.output("var who = 'alpha'", "alpha").await;
    server.output("var who = 'beta'", "beta").await;
    assert_eq!(server.output("who", "alpha").await, "alpha");
    assert_eq!(server.output("who", "beta").await, "beta");
    assert_eq!(server.output("typeof who", "gamma").await, "undefined");
    server.stop().await;
}

#[tokio::test]
async fn an_omitted_heap_gets_a_generated_name_that_works() {
    let server = Server::start(&["--memory"]).await;
    let first = server.run_js("var secret = 7; secret * 6", None).await.ok();
    assert_eq!(first["output"], "42");
    let heap = first["heap"].as_str().unwrap().to_string();
    assert!(heap.starts_with("heap-") && heap.len() > 8, "{heap}");
    assert_eq!(server.output("secret", &heap).await, "7");
    let second = server.run_js("typeof secret", None).await.ok();
    assert_ne!(second["heap"], first["heap"]);
    assert_eq!(second["output"], "undefined");
    server.stop().await;
}

#[tokio::test]
async fn bad_heap_names_are_rejected_before_storage() {
    let server = Server::start(&["--memory"]).await;
    let too_long = "x".repeat(129);
    for name in [
        "",
        "../x",
        ".hidden",
        "a/b",
        "sp ace",
        "ünï",
        too_long.as_str(),
    ] {
        let error = server.run_js("1", Some(name)).await.err();
        assert!(error.contains("invalid heap name"), "{name:?}: {error}");
        let error = server
            .reply("delete_heap", json!({ "heap": name }))
            .await
            .err();
        assert!(error.contains("invalid heap name"), "{name:?}: {error}");
    }
    let listed = server.reply("list_heaps", json!({})).await.ok();
    assert_eq!(listed["heaps"], json!([]));
    server.stop().await;
}

#[tokio::test]
async fn an_exception_is_a_tool_error_and_changes_nothing() {
    let server = Server::start(&["--memory"]).await;
    server.output("var n = 1", "h").await;
    let error = server
        .run_js("n = 2;\nundefinedFunction()", Some("h"))
        .await
        .err();
    assert!(error.contains("ReferenceError"), "{error}");
    assert!(
        error.contains("undefinedFunction is not defined"),
        "{error}"
    );
    assert!(error.contains("line 2"), "{error}");
    let error = server.run_js("n = 3; let = ;", Some("h")).await.err();
    assert!(error.contains("SyntaxError"), "{error}");
    assert_eq!(server.output("n", "h").await, "1");
    server.stop().await;
}

#[tokio::test]
async fn concurrent_calls_on_one_heap_lose_no_update() {
    let server = Server::start(&["--memory"]).await;
    server.output("var counter = 0", "shared").await;
    let calls = (0..20).map(|_| server.run_js("++counter", Some("shared")));
    let mut outputs: Vec<u32> = join_all(calls)
        .await
        .into_iter()
        .map(|reply| reply.ok()["output"].as_str().unwrap().parse().unwrap())
        .collect();
    outputs.sort_unstable();
    assert_eq!(outputs, (1..=20).collect::<Vec<_>>());
    assert_eq!(server.output("counter", "shared").await, "20");
    server.stop().await;
}

#[tokio::test]
async fn list_delete_and_resources() {
    let server = Server::start(&["--memory"]).await;
    server.output("var big = 'x'.repeat(1000)", "b-heap").await;
    server.output("1", "a-heap").await;
    let listed = server.reply("list_heaps", json!({})).await.ok();
    let heaps = listed["heaps"].as_array().unwrap();
    let names: Vec<&str> = heaps.iter().map(|h| h["heap"].as_str().unwrap()).collect();
    assert_eq!(names, ["a-heap", "b-heap"]);
    assert!(heaps.iter().all(|h| h["size"].as_u64().unwrap() > 0));
    assert!(heaps
        .iter()
        .all(|h| h["last_modified_ms"].as_u64().unwrap() > 1_600_000_000_000));

    let templates = server.client().list_all_resource_templates().await.unwrap();
    let templates: Vec<&str> = templates.iter().map(|t| t.uri_template.as_str()).collect();
    assert_eq!(templates, ["heap://{heap}"]);
    let resources = server.client().list_all_resources().await.unwrap();
    let uris: Vec<&str> = resources.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(uris, ["heap://a-heap", "heap://b-heap"]);
    // The heap's sizes are in what a read returns, not a `size` that would claim the read
    // returns the snapshot.
    assert!(resources.iter().all(|r| r.size.is_none()));
    let read = server
        .client()
        .read_resource(ReadResourceRequestParams::new("heap://b-heap"))
        .await
        .unwrap();
    let ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else {
        panic!("expected text contents");
    };
    let meta: Value = serde_json::from_str(text).unwrap();
    assert_eq!(meta["heap"], "b-heap");
    assert_eq!(meta["storage"], "memory");
    assert_eq!(meta["size"], heaps[1]["size"]);
    assert_eq!(meta["raw_size"], heaps[1]["raw_size"]);
    assert!(server
        .client()
        .read_resource(ReadResourceRequestParams::new("heap://missing"))
        .await
        .is_err());

    let deleted = server
        .reply("delete_heap", json!({ "heap": "b-heap" }))
        .await
        .ok();
    assert_eq!(deleted["deleted"], "b-heap");
    let error = server
        .reply("delete_heap", json!({ "heap": "b-heap" }))
        .await
        .err();
    assert!(error.contains("not found"), "{error}");
    assert_eq!(server.output("typeof big", "b-heap").await, "undefined");
    server.stop().await;
}

#[tokio::test]
async fn an_infinite_loop_times_out_and_the_heap_is_unchanged() {
    let server = Server::start(&["--memory", "--execution-timeout", "1"]).await;
    server.output("var n = 1", "loop").await;
    let started = std::time::Instant::now();
    let error = server
        .run_js("n = 2; while (true) {}", Some("loop"))
        .await
        .err();
    assert!(error.contains("timed out after 1 s"), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(server.output("n", "loop").await, "1");
    server.stop().await;
}

#[tokio::test]
async fn stateless_mode_keeps_nothing() {
    let server = Server::start(&["--stateless"]).await;
    let tools = server.client().list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, ["read_output", "run_js"]);
    let first = server
        .reply("run_js", json!({ "code": "var x = 5; x * 2" }))
        .await
        .ok();
    assert_eq!(
        first,
        json!({ "output": "10", "logs": [], "pending_timers": 0 })
    );
    let second = server
        .reply("run_js", json!({ "code": "typeof x" }))
        .await
        .ok();
    assert_eq!(second["output"], "undefined");
    server.stop().await;
}

/// Sends `signal` (e.g. "-INT") to `target` (a pid, or "-PGID" for a process group).
fn kill(signal: &str, target: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, "--", target])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {target}");
}

/// Waits until none of `pids` is alive (the workers leave once their host has gone).
async fn gone(pids: &[u32]) {
    let alive = |pid: &u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    let what = format!("workers {pids:?} outlived the server");
    eventually(Duration::from_secs(10), &what, || async {
        (!pids.iter().any(alive)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn sigint_stops_a_server_whose_stdin_is_open_even_before_the_handshake() {
    let mut raw = RawStdio::spawn(&["--memory"]);
    // The server is up once its workers are: it starts them before it reads a message.
    let pid = raw.pid();
    let workers = eventually(Duration::from_secs(20), "a worker started", || async move {
        Some(mcp_v8_e2e::children_of(pid)).filter(|workers| !workers.is_empty())
    })
    .await;
    kill("-INT", &raw.pid().to_string());
    let status = raw.exit_within(std::time::Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    gone(&workers).await;
}

#[tokio::test]
async fn ctrl_c_lets_the_call_in_flight_finish_then_stops_server_and_workers() {
    let mut raw = RawStdio::start(&["--memory"]).await;
    let workers = mcp_v8_e2e::children_of(raw.pid());
    assert!(!workers.is_empty());
    // A call that is still running when the terminal's Ctrl-C reaches the whole group.
    let code = "const end = Date.now() + 1500; while (Date.now() < end) {} 'finished'";
    raw.send_tool_call(7, "run_js", json!({ "code": code, "heap": "h" }))
        .await;
    // Signal only once the call is running.
    raw.wait_for_log("running code on heap h").await;
    kill("-INT", &format!("-{}", raw.pid()));
    let answer = raw.next().await;
    assert_eq!(answer["id"], 7, "{answer}");
    assert_eq!(
        answer["result"]["structuredContent"]["output"], "finished",
        "{answer}"
    );
    let status = raw.exit_within(std::time::Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    gone(&workers).await;
}

#[test]
fn boolean_variables_take_the_usual_spellings() {
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().join("heaps");
    let args = ["--directory-path", heaps.to_str().unwrap()];
    // MCP_V8_MEMORY=1 is read as true: it then conflicts with --directory-path.
    for on in ["1", "true", "yes", "on"] {
        let (code, stderr) = mcp_v8_e2e::start_up_failure_with_env(&args, &[("MCP_V8_MEMORY", on)]);
        assert_eq!(code, 1, "MCP_V8_MEMORY={on}: {stderr}");
        assert!(
            stderr.contains("--memory and --directory-path cannot be used together"),
            "MCP_V8_MEMORY={on}: {stderr}"
        );
    }
    // ...and 0 as false: the directory store opens and the server waits for a client (whose
    // stdin is closed here, so it ends there).
    let (_, stderr) = mcp_v8_e2e::start_up_failure_with_env(&args, &[("MCP_V8_MEMORY", "0")]);
    assert!(
        stderr.contains("MCP handshake failed") && !stderr.contains("cannot be used"),
        "{stderr}"
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_a_start_line_that_says_it_all() {
    let mut raw = RawStdio::spawn_with_log(
        &[
            "--memory",
            "--log-format",
            "json",
            "--execution-timeout",
            "9",
        ],
        "info,mcp_v8::runtime=debug",
    );
    let start = raw.wait_for_log("mcp-v8 starting").await;
    let start: Value = serde_json::from_str(&start).expect("the start line is JSON");
    let fields = &start["fields"];
    let version = std::process::Command::new(mcp_v8_e2e::binary())
        .arg("--version")
        .output()
        .expect("mcp-v8 --version");
    let version = String::from_utf8_lossy(&version.stdout)
        .trim()
        .replace("mcp-v8 ", "");
    assert_eq!(fields["version"], version.as_str(), "{start}");
    assert_eq!(fields["transport"], "stdio", "{start}");
    assert_eq!(fields["storage"], "memory", "{start}");
    assert_eq!(fields["timeout_secs"], 9.0, "{start}");
    assert_eq!(start["level"], "INFO");
    raw.send_line(
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#,
    )
    .await;
    raw.next().await;
    raw.send_line(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
        .await;
    raw.send_tool_call(1, "run_js", json!({ "code": "1", "heap": "h" }))
        .await;
    raw.next().await;
    let running = raw.wait_for_log("running code on heap h").await;
    let mut lines = raw.logged();
    lines.push(running);
    for line in lines {
        serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    assert!(raw.close().await.success());
}

/// `completion/complete` fills in `heap://{heap}` with the heap names that start with what
/// was typed, from the store, at most 100 at a time with the total.
#[tokio::test]
async fn heap_names_complete_by_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--directory-path", dir.path().to_str().unwrap()]).await;
    for heap in ["project-a", "project-b", "scratch"] {
        server.output("1", heap).await;
    }
    let complete = |value: &'static str| {
        server
            .client()
            .complete_resource_argument("heap://{heap}", "heap", value, None)
    };
    let found = complete("proj").await.unwrap();
    assert_eq!(found.values, ["project-a", "project-b"]);
    assert_eq!((found.total, found.has_more), (Some(2), Some(false)));
    assert_eq!(complete("").await.unwrap().values.len(), 3);
    assert!(complete("nothing").await.unwrap().values.is_empty());
    // A prefix no heap name can have, and an argument that is not a heap: nothing.
    assert!(complete("../").await.unwrap().values.is_empty());
    let other = server
        .client()
        .complete_resource_argument("heap://{heap}", "other", "p", None)
        .await
        .unwrap();
    assert!(other.values.is_empty());

    // More than fit in one answer.
    for i in 0..105 {
        server.output("1", &format!("many-{i:03}")).await;
    }
    let many = complete("many-").await.unwrap();
    assert_eq!(many.values.len(), 100);
    assert_eq!(many.values[0], "many-000");
    assert_eq!((many.total, many.has_more), (Some(105), Some(true)));
    server.stop().await;
}
