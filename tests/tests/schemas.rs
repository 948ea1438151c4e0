//! The tools as every client sees them: plain JSON Schema (draft 2020-12) that validates
//! against the meta-schema, no `null` unions or non-standard formats in inputs, titles and
//! annotations on every tool, output schemas that the real results satisfy, numeric
//! arguments accepted as strings, and `run_js` stating the server's own limits.

use mcp_v8_e2e::Server;
use serde_json::{json, Value};

/// Formats JSON Schema 2020-12 defines.
const STANDARD_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Every problem a client could trip over in `schema`, with its path.
fn problems(schema: &Value, input: bool, path: &str, found: &mut Vec<String>) {
    match schema {
        Value::Object(object) => {
            if let Some(format) = object.get("format").and_then(Value::as_str) {
                if !STANDARD_FORMATS.contains(&format) {
                    found.push(format!("{path}: non-standard format {format:?}"));
                }
            }
            if input {
                if let Some(Value::Array(types)) = object.get("type") {
                    if types.iter().any(|t| t == "null") {
                        found.push(format!("{path}: a null union in an input"));
                    }
                }
                if object.get("default") == Some(&Value::Null) {
                    found.push(format!("{path}: default null in an input"));
                }
            }
            for (key, value) in object {
                problems(value, input, &format!("{path}/{key}"), found);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                problems(item, input, &format!("{path}/{i}"), found);
            }
        }
        _ => {}
    }
}

async fn tools(server: &Server) -> Vec<Value> {
    let tools = server.client().list_all_tools().await.expect("tools/list");
    tools
        .into_iter()
        .map(|t| serde_json::to_value(t).unwrap())
        .collect()
}

fn check_tool(tool: &Value) {
    let name = tool["name"].as_str().unwrap();
    assert!(
        tool["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{name} has no title"
    );
    assert!(tool["annotations"].is_object(), "{name} has no annotations");
    assert_eq!(tool["annotations"]["openWorldHint"], false, "{name}");
    for (key, input) in [("inputSchema", true), ("outputSchema", false)] {
        let schema = &tool[key];
        assert!(schema.is_object(), "{name} has no {key}");
        assert!(
            jsonschema::draft202012::meta::is_valid(schema),
            "{name}'s {key} is not valid JSON Schema 2020-12: {schema}"
        );
        let mut found = Vec::new();
        problems(schema, input, key, &mut found);
        assert!(found.is_empty(), "{name}: {found:?}");
    }
}

/// Calls `tool` and checks its structured result against the tool's output schema.
async fn valid_result(server: &Server, tools: &[Value], tool: &str, args: Value) -> Value {
    let schema = &tools.iter().find(|t| t["name"] == tool).unwrap()["outputSchema"];
    let validator = jsonschema::draft202012::new(schema).expect("compile the output schema");
    let result = server.reply(tool, args).await.ok();
    let errors: Vec<String> = validator
        .iter_errors(&result)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{tool}'s result breaks its schema: {errors:?}\n{result}"
    );
    result
}

#[tokio::test]
async fn every_tool_has_plain_schemas_titles_annotations_and_valid_results() {
    let server = Server::start(&[
        "--memory",
        "--execution-timeout",
        "7",
        "--heap-memory-max",
        "96",
    ])
    .await;
    let tools = tools(&server).await;
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, mcp_v8_e2e::HEAP_TOOLS, "{names:?}");
    for tool in &tools {
        check_tool(tool);
    }
    let annotation = |tool: &str, hint: &str| {
        tools.iter().find(|t| t["name"] == tool).unwrap()["annotations"][hint].clone()
    };
    assert_eq!(annotation("list_heaps", "readOnlyHint"), true);
    assert_eq!(annotation("storage_stats", "readOnlyHint"), true);
    assert_eq!(annotation("heap_history", "readOnlyHint"), true);
    assert_eq!(annotation("delete_heap", "destructiveHint"), true);
    assert_eq!(annotation("run_js", "readOnlyHint"), false);

    let run_js = tools.iter().find(|t| t["name"] == "run_js").unwrap();
    let description = run_js["description"].as_str().unwrap();
    assert!(
        description.contains("This server's limits: 7 s per call")
            && description.contains("96 MB of JavaScript heap"),
        "{description}"
    );

    // Numbers sent as strings, as some clients do, are read as numbers.
    let result = valid_result(
        &server,
        &tools,
        "run_js",
        json!({ "code": "var x = 1; x", "heap": "h", "timeout_secs": "2.5", "heap_memory_max_mb": "64" }),
    )
    .await;
    assert_eq!(result["output"], "1");
    let err = server
        .reply("run_js", json!({ "code": "1", "timeout_secs": "soon" }))
        .await
        .err();
    assert!(
        err.contains("expected a number, got the string \"soon\""),
        "{err}"
    );
    valid_result(
        &server,
        &tools,
        "copy_heap",
        json!({ "from": "h", "to": "h2" }),
    )
    .await;
    server.output("x += 1", "h").await;
    let history = valid_result(&server, &tools, "heap_history", json!({ "heap": "h" })).await;
    assert_eq!(history["calls"][0]["output"], "2", "{history}");
    // A preview, a console cut to its first and last lines, and a budget sent as a string.
    let preview = valid_result(
        &server,
        &tools,
        "run_js",
        json!({
            "code": "for (let i = 0; i < 5000; i++) console.log('line', i); \
                     Array.from({ length: 5000 }, (_, i) => ({ i }))",
            "heap": "h",
            "max_output_tokens": "1000",
        }),
    )
    .await;
    assert_eq!(preview["output_truncated"], true, "{preview}");
    assert!(preview["logs_left_out"].as_u64().unwrap() > 0, "{preview}");
    assert!(!preview["logs_tail"].as_array().unwrap().is_empty());
    assert!(
        description.contains("answers of about 20,000 tokens at most"),
        "{description}"
    );
    valid_result(&server, &tools, "list_heaps", json!({})).await;
    valid_result(&server, &tools, "storage_stats", json!({})).await;
    valid_result(&server, &tools, "delete_heap", json!({ "heap": "h2" })).await;
    server.stop().await;
}

#[tokio::test]
async fn the_stateless_tool_is_as_plain() {
    let server = Server::start(&["--stateless"]).await;
    let tools = tools(&server).await;
    assert_eq!(tools.len(), 2);
    for tool in &tools {
        check_tool(tool);
        assert_eq!(tool["annotations"]["readOnlyHint"], true);
    }
    let result = valid_result(
        &server,
        &tools,
        "run_js",
        json!({ "code": "6 * 7", "timeout_secs": "3" }),
    )
    .await;
    assert_eq!(result["output"], "42");
    let big = valid_result(
        &server,
        &tools,
        "run_js",
        json!({ "code": "'x'.repeat(100000)", "max_output_tokens": 100 }),
    )
    .await;
    let part = valid_result(
        &server,
        &tools,
        "read_output",
        json!({ "uri": big["output_uri"], "offset": "10", "limit": "20" }),
    )
    .await;
    assert_eq!(part["text"], "x".repeat(20));
    server.stop().await;
}

/// Protocol 2026-07-28's caching hints: what never changes while the server runs may be kept
/// by anyone for an hour, heaps and their metadata by nobody. Requests name the revision in
/// their `_meta`, as that revision's clients do.
#[tokio::test]
async fn list_and_read_results_carry_caching_hints() {
    use rmcp::model::{
        CacheScope, ClientCapabilities, Implementation, PaginatedRequestParams, ProtocolVersion,
        ReadResourceRequestParams, RequestMetaObject,
    };
    let server = Server::start(&["--memory"]).await;
    server.output("1", "cached").await;
    let client = server.client();
    let mut meta = RequestMetaObject::new();
    meta.set_protocol_version(ProtocolVersion::V_2026_07_28);
    meta.set_client_info(Implementation::new("caching-test", "1"));
    meta.set_client_capabilities(ClientCapabilities::default());
    let page = || {
        let mut params = PaginatedRequestParams::default();
        params.meta = Some(meta.clone());
        Some(params)
    };
    let tools = client.list_tools(page()).await.unwrap();
    assert_eq!(
        (tools.ttl_ms, tools.cache_scope),
        (Some(3_600_000), Some(CacheScope::Public))
    );
    let names: Vec<&str> = tools.tools.iter().map(|t| t.name.as_ref()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "tools/list in a stable order");
    let templates = client.list_resource_templates(page()).await.unwrap();
    assert_eq!(
        (templates.ttl_ms, templates.cache_scope),
        (Some(3_600_000), Some(CacheScope::Public))
    );
    let heaps = client.list_resources(page()).await.unwrap();
    assert_eq!(
        (heaps.ttl_ms, heaps.cache_scope),
        (Some(0), Some(CacheScope::Private))
    );
    let mut read = ReadResourceRequestParams::new("heap://cached");
    read.meta = Some(meta.clone());
    let read = client.read_resource(read).await.unwrap();
    assert_eq!(
        (read.ttl_ms, read.cache_scope),
        (Some(0), Some(CacheScope::Private))
    );
    // rmcp's client keeps the tools for their TTL: asked again, it answers them itself.
    let again = client.list_tools(None).await.unwrap();
    assert!(
        again.ttl_ms.is_some_and(|ttl| ttl <= 3_600_000),
        "{:?}",
        again.ttl_ms
    );
    server.stop().await;
}
