//! Code mode: JavaScript on a heap calls other MCP servers' tools (`tools.server.tool(args)`)
//! and keeps their results. The upstream servers are ones nobody here wrote, from npm
//! (`server-everything`, `server-memory`), a server built on the official SDK that misbehaves
//! on request (`tests/npm/unruly-server.cjs`), and another mcp-v8 over Streamable HTTP.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mcp_v8_e2e::clients::NodeTools;
use mcp_v8_e2e::http::HttpServer;
use mcp_v8_e2e::{eventually, Server};
use rmcp::service::ServiceError;
use serde_json::{json, Value};

/// An `mcpServers` file with server-everything, server-memory and the unruly server (plus
/// `more`), and the files the unruly server writes.
struct Upstreams {
    _dir: tempfile::TempDir,
    config: PathBuf,
    log: PathBuf,
    count: PathBuf,
}

impl Upstreams {
    fn new(tools: &NodeTools, more: Value) -> Upstreams {
        let dir = tempfile::tempdir().unwrap();
        let (log, count) = (dir.path().join("unruly.log"), dir.path().join("count"));
        let mut servers = json!({
            "everything": tools.server_everything(),
            "memory": tools.server_memory(&dir.path().join("memory.jsonl")),
            "unruly": tools.unruly(&log, &count),
        });
        if let Value::Object(more) = more {
            servers.as_object_mut().unwrap().extend(more);
        }
        let config = dir.path().join("mcp.json");
        std::fs::write(&config, json!({ "mcpServers": servers }).to_string()).unwrap();
        Upstreams {
            _dir: dir,
            config,
            log,
            count,
        }
    }

    fn config(&self) -> &str {
        self.config.to_str().unwrap()
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test]
async fn tool_results_kept_in_the_heap_serve_later_calls() {
    let Some(tools) = NodeTools::find("tool_results_kept_in_the_heap_serve_later_calls") else {
        return;
    };
    let upstreams = Upstreams::new(&tools, json!({}));
    let server = Server::start(&["--memory", "--mcp-config", upstreams.config()]).await;
    let listed = server.client().list_all_tools().await.unwrap();
    assert!(listed.iter().any(|t| t.name == "search_tools"));
    let run_js = listed.iter().find(|t| t.name == "run_js").unwrap();
    let description = run_js.description.as_deref().unwrap_or_default();
    assert!(
        description.contains("servers: everything, memory, unruly"),
        "{description}"
    );

    // Discovery: a few declarations, not every schema.
    let found = server
        .call("search_tools", json!({ "query": "structured" }))
        .await;
    // The declarations as text a model reads, and as structured content.
    let text = found.content[0].as_text().unwrap().text.clone();
    let structured = found.structured_content.unwrap();
    let declarations = structured["declarations"].as_str().unwrap();
    assert_eq!(declarations, text);
    assert!(
        declarations.contains("\"get-structured-content\"(args: {"),
        "{declarations}"
    );
    assert!(
        declarations.contains("location: \"New York\" | \"Chicago\" | \"Los Angeles\";"),
        "{declarations}"
    );
    assert!(
        declarations.contains("temperature: number;"),
        "{declarations}"
    );
    assert!(!declarations.contains("get-sum"), "{declarations}");

    // A result kept in the heap, used by later calls without calling the tool again.
    let weather = server
        .output(
            "var weather = await tools.everything['get-structured-content']({ location: 'Chicago' }); \
             weather.conditions",
            "h",
        )
        .await;
    assert_eq!(weather, "Light rain / drizzle");
    assert_eq!(server.output("weather.temperature", "h").await, "36");

    // Calls at once, in order; text results as they are.
    let sums = server
        .output(
            "(await Promise.all([1, 2, 3, 4, 5].map((n) => \
               tools.everything['get-sum']({ a: n, b: n })))).join(' ')",
            "h",
        )
        .await;
    assert_eq!(
        sums,
        "The sum of 1 and 1 is 2. The sum of 2 and 2 is 4. The sum of 3 and 3 is 6. \
         The sum of 4 and 4 is 8. The sum of 5 and 5 is 10."
    );

    // Mixed content (text and an image) whole with `.raw`; a long operation (with progress
    // upstream) ends; arguments the tool refuses are a ToolError.
    let image = server
        .output(
            "var tiny = await tools.everything['get-tiny-image'].raw({}); \
             tiny.content.filter((c) => c.type === 'image').map((c) => c.mimeType).join()",
            "h",
        )
        .await;
    assert_eq!(image, "image/png");
    let long = server
        .output(
            "await tools.everything['trigger-long-running-operation']({ duration: 1, steps: 2 })",
            "h",
        )
        .await;
    assert!(
        long.starts_with("Long running operation completed."),
        "{long}"
    );
    let refused = server
        .output(
            "try { await tools.everything['get-sum']({ a: 'one' }) } \
             catch (e) { `${e.name}: ${e.kind}` }",
            "h",
        )
        .await;
    assert!(
        refused == "ToolError: tool" || refused == "ToolError: protocol",
        "{refused}"
    );

    // Another server's structured results, and its state outside the heap.
    let graph = server
        .output(
            "await tools.memory.create_entities({ entities: [{ name: 'mcp-v8', entityType: 'project', \
               observations: ['keeps heaps'] }] }); \
             var graph = await tools.memory.read_graph({}); \
             graph.entities.map((e) => e.name + ': ' + e.observations).join()",
            "h",
        )
        .await;
    assert_eq!(graph, "mcp-v8: keeps heaps");

    // The same catalogue from code; a missing tool says what there is.
    let searched = server.output("await tools.$search('sum')", "h").await;
    assert!(searched.contains("\"get-sum\"(args: {"), "{searched}");
    let described = server
        .output("await tools.$describe('everything.get-sum')", "h")
        .await;
    assert!(described.contains("\"get-sum\"(args: {"), "{described}");
    assert!(!described.contains("echo"), "{described}");
    let missing = server
        .output(
            "try { await tools.everything.nope({}) } catch (e) { `${e.name} ${e.kind} ${e.message}` }",
            "h",
        )
        .await;
    assert!(
        missing.starts_with(
            "ToolError not_found everything.nope: server everything has no tool \"nope\""
        ),
        "{missing}"
    );
    assert!(missing.contains("get-sum"), "{missing}");
    server.stop().await;
}

#[tokio::test]
async fn the_policy_refuses_tools_with_clear_errors_and_code_never_sees_the_hosts_secrets() {
    let Some(tools) = NodeTools::find("the_policy_refuses_tools") else {
        return;
    };
    let upstreams = Upstreams::new(&tools, json!({}));
    let server = Server::start_with_env(
        &[
            "--stateless",
            "--mcp-config",
            upstreams.config(),
            "--deny-tools",
            "everything.echo,memory.delete_*",
            "--tool-calls-per-run",
            "3",
        ],
        &[("MCP_V8_TEST_SECRET", "hunter2")],
    )
    .await;
    let run = |code: &'static str| {
        let server = &server;
        async move {
            server.reply("run_js", json!({ "code": code })).await.ok()["output"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let denied = run("try { await tools.everything.echo({ message: 'hi' }) } catch (e) { e.kind + ': ' + e.message }").await;
    assert_eq!(
        denied,
        "denied: everything.echo: everything.echo is denied by the server's policy (--deny-tools everything.echo)"
    );
    let destructive =
        run("try { await tools.unruly.wipe({}) } catch (e) { e.kind + ': ' + e.message }").await;
    assert!(
        destructive.starts_with("denied:") && destructive.contains("destructiveHint"),
        "{destructive}"
    );
    let listed = server
        .call("search_tools", json!({ "query": "" }))
        .await
        .structured_content
        .unwrap();
    let listed = listed["declarations"].as_str().unwrap();
    assert!(listed.contains("\"get-sum\""), "{listed}");
    assert!(
        !listed.contains("echo(") && !listed.contains("wipe("),
        "{listed}"
    );
    let limited = run(
        "(await Promise.allSettled([1, 2, 3, 4].map((n) => tools.everything['get-sum']({ a: n, b: 0 })))) \
           .map((r) => r.status === 'fulfilled' ? 'ok' : r.reason.kind).join()",
    )
    .await;
    assert_eq!(limited, "ok,ok,ok,denied");
    // A stdio server gets a few harmless variables, not the host's environment.
    let env = run("JSON.stringify(await tools.everything['get-env']({}))").await;
    assert!(env.contains("PATH"), "{env}");
    assert!(!env.contains("hunter2"), "{env}");
    server.stop().await;
}

#[tokio::test]
async fn upstream_failures_are_tool_errors_and_the_heap_and_server_carry_on() {
    let Some(tools) = NodeTools::find("upstream_failures_are_tool_errors") else {
        return;
    };
    let upstreams = Upstreams::new(&tools, json!({}));
    let server = Server::start(&[
        "--memory",
        "--mcp-config",
        upstreams.config(),
        "--tool-timeout-secs",
        "5",
    ])
    .await;
    server.output("var kept = 'still here'", "h").await;
    let kind = |tool: &'static str, args: &'static str| {
        let server = &server;
        async move {
            let code = format!(
                "try {{ await tools.unruly.{tool}({args}); 'answered' }} \
                 catch (e) {{ e.kind + ': ' + e.message }}"
            );
            server.output(&code, "h").await
        }
    };
    // Dies in the middle of the call: the call fails, the next one starts it again.
    let crashed = kind("crash", "{}").await;
    assert!(crashed.starts_with("unavailable: "), "{crashed}");
    assert_eq!(
        server.output("await tools.unruly.count({})", "h").await,
        "1"
    );
    // Never answers: the per-call timeout.
    let hung = kind("hang", "{}").await;
    assert_eq!(
        hung,
        "timeout: unruly.hang: no result within 5 s (--tool-timeout-secs)"
    );
    // 20 MB: over the result cap, and never in the heap.
    let big = kind("big", "{ mb: 20 }").await;
    assert!(big.starts_with("too_large: "), "{big}");
    assert!(big.contains("--tool-result-bytes"), "{big}");
    // A call that throws after a tool did its work: the heap rolls back, the world does not.
    let failed = server
        .run_js(
            "kept = 'changed'; await tools.unruly.count({}); throw new Error('after the tool')",
            Some("h"),
        )
        .await
        .err();
    assert!(failed.contains("after the tool"), "{failed}");
    assert_eq!(server.output("kept", "h").await, "still here");
    assert_eq!(read(&upstreams.count), "2");
    server.stop().await;
}

#[tokio::test]
async fn a_call_cancelled_mid_tool_call_cancels_the_upstream_call() {
    let Some(tools) = NodeTools::find("a_call_cancelled_mid_tool_call") else {
        return;
    };
    let upstreams = Upstreams::new(&tools, json!({}));
    let server = Server::start(&["--memory", "--mcp-config", upstreams.config()]).await;
    server.output("var n = 1", "h").await;
    let response = server
        .run_js_giving_up_after(
            json!({ "code": "n = 2; await tools.unruly.hang({})", "heap": "h" }),
            Duration::from_secs(2),
        )
        .await;
    assert!(
        matches!(response, Err(ServiceError::Timeout { .. })),
        "{response:?}"
    );
    assert!(read(&upstreams.log).contains("started"));
    eventually(
        Duration::from_secs(10),
        "the upstream call is cancelled",
        || async { read(&upstreams.log).contains("cancelled").then_some(()) },
    )
    .await;
    assert_eq!(server.output("n", "h").await, "1");
    server.stop().await;
}

#[tokio::test]
async fn a_heap_whose_calls_used_tools_is_rebuilt_from_its_journal_without_calling_them() {
    let Some(tools) = NodeTools::find("a_heap_whose_calls_used_tools_is_rebuilt") else {
        return;
    };
    let upstreams = Upstreams::new(&tools, json!({}));
    let heaps = tempfile::tempdir().unwrap();
    let args = [
        "--directory-path",
        heaps.path().to_str().unwrap(),
        "--mcp-config",
        upstreams.config(),
    ];
    let server = Server::start(&args).await;
    server.output("var counts = []", "h").await;
    let counted = server
        .output(
            "counts.push(await tools.unruly.count({}), await tools.unruly.count({})); counts.join()",
            "h",
        )
        .await;
    assert_eq!(counted, "1,2");
    // The call is a journal record, not a snapshot.
    let history = server
        .reply("heap_history", json!({ "heap": "h" }))
        .await
        .ok();
    let last = history["calls"].as_array().unwrap().last().unwrap().clone();
    assert!(last["stored_state"].is_null(), "{history}");
    server.kill().await;

    // A new server loads the heap: its last snapshot and the journal, replayed from the
    // record's tape, so the tool is not called again.
    let server = Server::start(&args).await;
    assert_eq!(server.output("counts.join()", "h").await, "1,2");
    assert_eq!(read(&upstreams.count), "2");
    server.stop().await;
}

#[tokio::test]
async fn an_http_upstream_with_a_token_from_the_environment() {
    let Some(tools) = NodeTools::find("an_http_upstream") else {
        return;
    };
    let inner = HttpServer::start(&["--memory", "--auth-token", "s3cret-token"]).await;
    let upstreams = Upstreams::new(
        &tools,
        json!({ "inner": {
            "type": "http",
            "url": inner.mcp_url,
            "headers": { "Authorization": "Bearer ${INNER_TOKEN}" }
        } }),
    );
    let server = Server::start_with_env(
        &["--memory", "--mcp-config", upstreams.config()],
        &[("INNER_TOKEN", "s3cret-token")],
    )
    .await;
    let started = Instant::now();
    let answer = server
        .output(
            "var inner = await tools.inner.run_js({ code: '6 * 7', heap: 'deep' }); inner.output",
            "h",
        )
        .await;
    assert_eq!(answer, "42");
    assert_eq!(server.output("inner.heap", "h").await, "deep");
    assert!(started.elapsed() < Duration::from_secs(30));
    server.stop().await;

    // The same from a client of mcp-v8 over Streamable HTTP.
    let outer = HttpServer::start_with_env(
        &["--memory", "--mcp-config", upstreams.config()],
        &[("INNER_TOKEN", "s3cret-token")],
    )
    .await;
    let client = outer.streamable(None).await;
    let answer = client
        .output("(await tools.inner.run_js({ code: '6 * 7' })).output", "h")
        .await;
    assert_eq!(answer, "42");
    // Each upstream call is counted, by server, tool and outcome.
    let text = outer.metrics(None).await;
    assert!(
        text.contains("mcp_v8_tool_calls_total{server=\"inner\",tool=\"run_js\",outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("mcp_v8_tool_call_seconds_count{server=\"inner\"} 1"),
        "{text}"
    );
    client.stop().await;
    outer.terminate().await;
    inner.terminate().await;
}
