//! The MCP Inspector's command line (`@modelcontextprotocol/inspector --cli`), a client
//! nobody here wrote, drives every tool over stdio and over Streamable HTTP, passes the
//! optional numeric arguments as it does for every user, and finds nothing to warn about in
//! the tool schemas.

use mcp_v8_e2e::clients::NodeTools;
use mcp_v8_e2e::http::HttpServer;
use serde_json::Value;

/// One Inspector run: `mcp-inspector --cli TARGET... ARGS...`; its exit success, its answer
/// (stdout as JSON) and its stderr.
async fn inspect(tools: &NodeTools, target: &[&str], args: &[&str]) -> (bool, Value, String) {
    let output = tools
        .inspector()
        .args(target)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run the Inspector");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let answer = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("the Inspector printed no JSON ({e}): {stdout}\n{stderr}"));
    (output.status.success(), answer, stderr)
}

/// `tools/call TOOL` with `key=value` arguments; the structured result, or the error text.
async fn call(
    tools: &NodeTools,
    target: &[&str],
    tool: &str,
    arguments: &[&str],
) -> Result<Value, String> {
    let mut args = vec!["--method", "tools/call", "--tool-name", tool];
    if !arguments.is_empty() {
        args.push("--tool-arg");
        args.extend_from_slice(arguments);
    }
    let (_, answer, stderr) = inspect(tools, target, &args).await;
    if answer["isError"] == true {
        return Err(answer["content"][0]["text"].as_str().unwrap_or("").into());
    }
    answer
        .get("structuredContent")
        .cloned()
        .ok_or_else(|| panic!("no structured result from {tool}: {answer}\n{stderr}"))
}

/// Every tool, as a user of the Inspector would call them, against `target`.
async fn drive_every_tool(tools: &NodeTools, target: &[&str]) {
    let listed = call(tools, target, "list_heaps", &[]).await.unwrap();
    assert_eq!(listed["heaps"], Value::Array(vec![]), "{listed}");

    // The optional numbers go as the Inspector sends them; the server takes them.
    let ran = call(
        tools,
        target,
        "run_js",
        &[
            "code=var x = 40; x + 2",
            "heap=inspected",
            "timeout_secs=2",
            "heap_memory_max_mb=64",
        ],
    )
    .await
    .unwrap();
    assert_eq!(ran["output"], "42", "{ran}");
    let again = call(tools, target, "run_js", &["code=x", "heap=inspected"])
        .await
        .unwrap();
    assert_eq!(again["output"], "40", "the heap kept its state: {again}");

    // And they take effect.
    let slow = call(
        tools,
        target,
        "run_js",
        &["code=while (true) {}", "heap=inspected", "timeout_secs=0.5"],
    )
    .await
    .unwrap_err();
    assert!(slow.contains("timed out after 0.5 s"), "{slow}");
    let bomb = call(
        tools,
        target,
        "run_js",
        &[
            "code=const a = []; while (true) a.push(new Array(1e5).fill(1))",
            "heap=inspected",
            "heap_memory_max_mb=16",
        ],
    )
    .await
    .unwrap_err();
    assert!(bomb.contains("more than 16 MB"), "{bomb}");

    let copied = call(tools, target, "copy_heap", &["from=inspected", "to=copied"])
        .await
        .unwrap();
    assert_eq!(copied["to"], "copied", "{copied}");
    let stats = call(tools, target, "storage_stats", &[]).await.unwrap();
    assert!(stats["puts"].as_u64().is_some(), "{stats}");
    let deleted = call(tools, target, "delete_heap", &["heap=copied"])
        .await
        .unwrap();
    assert_eq!(deleted["deleted"], "copied", "{deleted}");
    let listed = call(tools, target, "list_heaps", &[]).await.unwrap();
    let names = mcp_v8_e2e::heap_names(&listed);
    assert_eq!(names, ["inspected"], "{listed}");
}

#[tokio::test]
async fn the_inspector_cli_drives_every_tool_over_stdio() {
    let Some(tools) = NodeTools::find("the_inspector_cli_drives_every_tool_over_stdio") else {
        return;
    };
    let heaps = tempfile::tempdir().unwrap();
    let dir = format!("MCP_V8_DIRECTORY_PATH={}", heaps.path().display());
    let binary = mcp_v8_e2e::binary();
    // Each Inspector run starts its own server; the heaps outlive them in the directory.
    let target = ["-e", &dir, binary.to_str().unwrap()];

    let (ok, listed, stderr) =
        inspect(&tools, &target, &["--method", "tools/list", "--strict"]).await;
    assert!(ok, "the Inspector's strict schema check failed:\n{stderr}");
    assert!(
        !stderr.contains("warning") && !stderr.contains("error"),
        "the Inspector found portability problems in the schemas:\n{stderr}"
    );
    let mut names: Vec<&str> = listed["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, mcp_v8_e2e::HEAP_TOOLS);

    drive_every_tool(&tools, &target).await;
}

#[tokio::test]
async fn the_inspector_cli_drives_every_tool_over_streamable_http() {
    let Some(tools) = NodeTools::find("the_inspector_cli_drives_every_tool_over_streamable_http")
    else {
        return;
    };
    let server = HttpServer::start(&["--memory"]).await;
    drive_every_tool(&tools, &[server.mcp_url.as_str()]).await;
}
