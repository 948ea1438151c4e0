//! Every call keeps its contract whatever the code or the client sends: an error is an error,
//! nothing is saved after one, and every request gets an answer. Over stdio and Streamable
//! HTTP, against the real binary.

use mcp_v8_e2e::http::{http, HttpServer};
use mcp_v8_e2e::{Client, RawStdio, Server};
use serde_json::{json, Value};

/// Big results and consoles, each with what it must come back as.
async fn sizes_travel_safely(client: &Client, heap: &str) {
    let out = client
        .run_js("'x'.repeat(1100 * 1000)", Some(heap))
        .await
        .ok();
    assert_eq!(out["output"].as_str().unwrap().len(), 1_100_000);
    assert!(out.get("output_truncated").is_none());

    let out = client
        .run_js(
            "for (let i = 0; i < 50000; i++) console.log('line ' + i); 'done'",
            Some(heap),
        )
        .await
        .ok();
    assert_eq!(out["output"], "done");
    assert_eq!(out["logs"].as_array().unwrap().len(), 50_000);
    assert_eq!(out["logs"][49_999]["text"], "line 49999");

    let control: String = (0..300_000u32)
        .map(|i| char::from((i % 32) as u8))
        .collect();
    let out = client
        .run_js(
            "let s = ''; for (let i = 0; i < 300000; i++) s += String.fromCharCode(i % 32); \
             console.log(s); s",
            Some(heap),
        )
        .await
        .ok();
    assert_eq!(out["output"].as_str().unwrap(), control);
    assert_eq!(out["logs"][0]["text"].as_str().unwrap(), control);

    let error = client
        .run_js("while (true) console.log('x')", Some(heap))
        .await
        .err();
    assert!(error.contains("execution timed out"), "{error}");
    assert!(error.contains("lines left out] …"), "{error}");

    let out = client.run_js("'é'.repeat(3 << 20)", Some(heap)).await.ok();
    assert_eq!(out["output_truncated"], true);
    let output = out["output"].as_str().unwrap();
    assert!(
        output.ends_with("[output truncated at 4194304 bytes]"),
        "{}",
        &output[output.len() - 60..]
    );
    assert!(output.len() < (4 << 20) + 100);
}

#[tokio::test]
async fn results_and_logs_of_any_size_travel_safely_over_stdio_and_http() {
    // No answer budget: all of it travels.
    let args = [
        "--memory",
        "--execution-timeout",
        "3",
        "--max-output-tokens",
        "0",
    ];
    let server = Server::start(&args).await;
    sizes_travel_safely(&server, "stdio").await;
    server.stop().await;

    let http = HttpServer::start(&args).await;
    let client = http.streamable(None).await;
    sizes_travel_safely(&client, "http").await;
    client.stop().await;
    assert!(http.terminate().await.success());
}

#[tokio::test]
async fn a_timeout_while_rendering_the_result_fails_the_call_and_saves_nothing() {
    let server = Server::start(&["--memory", "--execution-timeout", "2"]).await;
    server.output("var keep = 'kept'", "render").await;
    for code in [
        "keep = 'lost'; ({ toJSON() { while (true) {} } })",
        "keep = 'lost'; const f = function () {}; f.toString = () => { for (;;) {} }; f",
    ] {
        let error = server.run_js(code, Some("render")).await.err();
        assert!(
            error.contains("execution timed out after 2 s"),
            "{code}: {error}"
        );
    }
    let error = server
        .run_js(
            "keep = 'lost'; const g = () => 1; g.toString = () => { throw new Error('no') }; g",
            Some("render"),
        )
        .await
        .err();
    assert!(
        error.contains("the result could not be rendered"),
        "{error}"
    );
    assert_eq!(server.output("keep", "render").await, "kept");
    server.stop().await;
}

fn error_of(answer: &Value) -> (i64, String) {
    (
        answer["error"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("no error in {answer}")),
        answer["error"]["message"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn every_stdio_request_gets_an_answer_and_the_server_goes_on() {
    let mut raw = RawStdio::start(&["--memory"]).await;
    // 10 MB of code works, as on HTTP.
    let code = format!("'{}'.length", "x".repeat(10 << 20));
    let answer = raw.run_js(1, &code).await;
    assert_eq!(answer["result"]["structuredContent"]["output"], "10485760");

    // A line over the limit (64 MiB by default) is answered, naming the limit.
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"run_js","arguments":{{"code":"'{}'"}}}}}}"#,
        "y".repeat(70 << 20)
    );
    raw.send_line(&huge).await;
    let answer = raw.next().await;
    assert_eq!(answer["id"], 2);
    let (code, message) = error_of(&answer);
    assert_eq!(code, -32600);
    assert!(message.contains("67108864 bytes"), "{message}");
    assert!(message.contains("--max-body-bytes"), "{message}");

    // Lone surrogates in the code or the heap name.
    for (id, field) in [(3, "code"), (4, "heap")] {
        let line = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"run_js","arguments":{{"code":"1","heap":"h","{field}":"\ud800"}}}}}}"#
        );
        raw.send_line(&line).await;
        let answer = raw.next().await;
        assert_eq!(answer["id"], id);
        let (code, message) = error_of(&answer);
        assert_eq!(code, -32700, "{message}");
        assert!(message.contains("surrogate"), "{message}");
    }

    // Not JSON at all.
    raw.send_line("this is not json").await;
    let (code, _) = error_of(&raw.next().await);
    assert_eq!(code, -32700);

    // And the server goes on serving.
    let answer = raw.run_js(5, "6 * 7").await;
    assert_eq!(answer["id"], 5);
    assert_eq!(answer["result"]["structuredContent"]["output"], "42");
    assert!(raw.close().await.success());
}

#[tokio::test]
async fn finalization_registries_and_intl_objects_never_crash_a_save() {
    let server = Server::start(&["--memory"]).await;
    server
        .output(
            "var registry = new FinalizationRegistry(() => {}); var token = {}; \
             registry.register({}, 'held', token); registry.register({}, 'gone'); 1",
            "weak",
        )
        .await;
    assert_eq!(
        server.output("registry.unregister(token)", "weak").await,
        "true"
    );
    // An Intl formatter kept in the heap works in later calls.
    server
        .output(
            "var nf = new Intl.NumberFormat('de-DE'); nf.format(1)",
            "weak",
        )
        .await;
    assert_eq!(server.output("nf.format(1234.5)", "weak").await, "1.234,5");
    // Segments cannot be made again: keeping them is a clear error, and nothing is saved.
    let error = server
        .run_js(
            "var parts = new Intl.Segmenter('en').segment('a b'); 1",
            Some("weak"),
        )
        .await
        .err();
    assert!(
        error
            .contains("the heap cannot be saved: it still holds an Intl.Segmenter segments object"),
        "{error}"
    );
    assert_eq!(server.output("typeof parts", "weak").await, "undefined");
    server.stop().await;
}

#[tokio::test]
async fn a_snapshot_copied_to_another_heap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().join("heaps");
    let args = ["--directory-path", heaps.to_str().unwrap()];
    let server = Server::start(&args).await;
    server.output("var who = 'A'", "alpha").await;
    server.output("var who = 'B'", "beta").await;
    // Answers come before their heaps are stored; tamper with the files once they are.
    server.settle().await;
    std::fs::copy(heaps.join("alpha.heap"), heaps.join("beta.heap")).unwrap();
    let error = server.run_js("who", Some("beta")).await.err();
    assert!(
        error.contains("heap 'beta' cannot be loaded") && error.contains("belongs to heap 'alpha'"),
        "{error}"
    );
    assert_eq!(server.output("who", "alpha").await, "A");
    server.stop().await;
}

#[tokio::test]
async fn a_request_with_two_host_headers_is_refused() {
    let server = HttpServer::start(&["--memory"]).await;
    let port = server
        .mcp_url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let response = http()
        .post(&server.mcp_url)
        .header("host", format!("127.0.0.1:{port}"))
        .header("host", "evil.example")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("more than one host header"));
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn the_clock_moves_with_the_timers_and_absurd_delays_are_clamped() {
    let server = Server::start(&["--memory"]).await;
    let out = server
        .output(
            "const t0 = Date.now();\nawait new Promise((done) => setTimeout(done, 5000));\n\
             const waited = Date.now() - t0;\nwaited >= 5000 && waited < 6000",
            "clock",
        )
        .await;
    assert_eq!(out, "true");
    let out = server
        .output(
            "await new Promise((done) => setTimeout(() => done('late'), 2 ** 64))",
            "clock",
        )
        .await;
    assert_eq!(out, "late");
    server.stop().await;
}

/// Bytes of text an answer puts into the agent's context.
fn answer_bytes(result: &rmcp::model::CallToolResult) -> usize {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.len()))
        .sum()
}

/// The default budget: 20,000 tokens of 3 bytes; what is not output or console (heap name,
/// hints) is a little more.
const BUDGET: usize = 60_000 + 1_000;

/// A heap of 200,000 rows, as an agent meets it: the answer fits its context, shows what the
/// rows look like and how many there are, and the next calls page through `_`.
async fn big_values_come_as_previews_and_page_through_underscore(client: &Client, heap: &str) {
    let code = "var rows = Array.from({ length: 200000 }, (_, i) => \
        ({ id: i, name: 'row ' + i, tags: ['a', 'b'], score: i / 7 })); rows";
    let result = client
        .call("run_js", json!({ "code": code, "heap": heap }))
        .await;
    assert!(answer_bytes(&result) <= BUDGET, "{}", answer_bytes(&result));
    let out = result.structured_content.unwrap();
    assert_eq!(out["output_truncated"], true);
    let size = out["output_size"]["bytes"].as_u64().unwrap();
    assert!(size > 10_000_000, "{size}");
    assert_eq!(
        out["output_size"]["tokens"].as_u64().unwrap(),
        size.div_ceil(3)
    );
    assert!(
        out["output_rest"].as_str().unwrap().contains("`_`"),
        "{out}"
    );
    let preview: Value = serde_json::from_str(out["output"].as_str().unwrap()).unwrap();
    let items = preview.as_array().unwrap();
    assert_eq!(items[1]["name"], "row 1");
    assert_eq!(
        items.last().unwrap().as_str().unwrap(),
        format!(
            "… {} more items (200,000 in all)",
            group(200_000 - (items.len() - 1))
        )
    );

    // A filter's result is `_` in turn; the agent pages through it.
    let out = client
        .run_js("rows.filter(r => r.id % 2 === 0)", Some(heap))
        .await
        .ok();
    assert_eq!(out["output_truncated"], true);
    let page = client
        .run_js("_.slice(100, 103).map(r => r.id)", Some(heap))
        .await
        .ok();
    assert_eq!(page["output"], "[200,202,204]");
    assert!(page.get("output_truncated").is_none());
    assert_eq!(client.output("_.length", heap).await, "3");

    // A smaller budget for one call.
    let result = client
        .call(
            "run_js",
            json!({ "code": "rows", "heap": heap, "max_output_tokens": 200 }),
        )
        .await;
    let out = result.structured_content.clone().unwrap();
    assert!(out["output"].as_str().unwrap().len() <= 600, "{out}");
    serde_json::from_str::<Value>(out["output"].as_str().unwrap()).unwrap();
    let error = client
        .reply(
            "run_js",
            json!({ "code": "1", "heap": heap, "max_output_tokens": 1_000_000 }),
        )
        .await
        .err();
    assert!(error.contains("max_output_tokens"), "{error}");

    // Long strings keep their head and tail.
    let out = client
        .run_js("'<' + 'x'.repeat(1e6) + '>'", Some(heap))
        .await
        .ok();
    let output = out["output"].as_str().unwrap();
    assert!(output.starts_with("<xxx") && output.ends_with("xxx>"));
    assert!(output.contains("characters left out"), "{output}");

    // A console flood: its first and last lines, the middle counted, within the budget.
    let result = client
        .call(
            "run_js",
            json!({
                "code": "for (let i = 0; i < 100000; i++) console.log('line ' + i); rows.length",
                "heap": heap,
            }),
        )
        .await;
    assert!(answer_bytes(&result) <= BUDGET, "{}", answer_bytes(&result));
    let out = result.structured_content.unwrap();
    assert_eq!(out["output"], "200000");
    assert_eq!(out["logs"][0]["text"], "line 0");
    assert_eq!(
        out["logs_tail"].as_array().unwrap().last().unwrap()["text"],
        "line 99999"
    );
    let shown = out["logs"].as_array().unwrap().len() + out["logs_tail"].as_array().unwrap().len();
    assert_eq!(
        shown as u64 + out["logs_left_out"].as_u64().unwrap(),
        100_000
    );
    // Over --console-max-bytes too: the latest lines are the ones kept.
    assert_eq!(out["logs_truncated"], true);

    // What JSON cannot say is named, in a preview and in a whole result alike.
    let out = client
        .run_js(
            "const c = { map: new Map([[1, 'one']]), set: new Set(['s']), \
               bytes: new Float64Array(3), big: 2n ** 70n, \
               get bad() { throw new Error('getter') } }; c.self = c; c",
            Some(heap),
        )
        .await
        .ok();
    let whole: Value = serde_json::from_str(out["output"].as_str().unwrap()).unwrap();
    assert_eq!(
        whole,
        json!({
            "map": { "Map(1)": [[1, "one"]] }, "set": { "Set(1)": ["s"] },
            "bytes": { "Float64Array(3)": [0, 0, 0] }, "big": "1180591620717411303424n",
            "bad": "[threw Error: getter]", "self": "[Circular]",
        })
    );
}

/// `n` with thousands separated by commas.
fn group(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

#[tokio::test]
async fn answers_fit_an_agents_context_over_stdio_and_http() {
    let server = Server::start(&["--memory"]).await;
    big_values_come_as_previews_and_page_through_underscore(&server, "rows").await;
    server.stop().await;

    let http = HttpServer::start(&["--memory"]).await;
    let client = http.streamable(None).await;
    big_values_come_as_previews_and_page_through_underscore(&client, "rows").await;
    client.stop().await;
    assert!(http.terminate().await.success());
}

#[tokio::test]
async fn a_stateless_answer_fits_too_and_the_whole_result_is_one_call_away() {
    let server = Server::start(&["--stateless"]).await;
    let code = "Array.from({ length: 100000 }, (_, i) => 'item ' + i)";
    let result = server.call("run_js", json!({ "code": code })).await;
    assert!(answer_bytes(&result) <= BUDGET, "{}", answer_bytes(&result));
    let out = result.structured_content.clone().unwrap();
    assert_eq!(out["output_truncated"], true);
    assert!(out["output_rest"]
        .as_str()
        .unwrap()
        .contains("Nothing is kept"));
    let preview: Value = serde_json::from_str(out["output"].as_str().unwrap()).unwrap();
    assert_eq!(preview[0], "item 0");

    // read_output pages through the whole text within the budget; the answer links it as a
    // resource too.
    let uri = out["output_uri"].as_str().unwrap().to_string();
    let link = result
        .content
        .iter()
        .find_map(|c| c.as_resource_link())
        .expect("a resource_link");
    assert_eq!(link.uri, uri);
    let size = out["output_size"]["bytes"].as_u64().unwrap() as usize;
    assert_eq!(link.size, Some(size as u64));
    let mut whole = String::new();
    let mut offset = Some(0);
    let mut pages = 0;
    while let Some(at) = offset {
        let page = server
            .call("read_output", json!({ "uri": uri, "offset": at }))
            .await;
        assert!(answer_bytes(&page) <= BUDGET, "{}", answer_bytes(&page));
        let page = page.structured_content.unwrap();
        assert_eq!(page["total_bytes"].as_u64().unwrap() as usize, size);
        whole.push_str(page["text"].as_str().unwrap());
        offset = page["next_offset"].as_u64();
        pages += 1;
    }
    assert!(pages > 1);
    let items: Vec<String> = serde_json::from_str(&whole).unwrap();
    assert_eq!(items.len(), 100_000);
    assert_eq!(items[99_999], "item 99999");
    let read = server
        .client()
        .read_resource(rmcp::model::ReadResourceRequestParams::new(uri.clone()))
        .await
        .unwrap();
    let rmcp::model::ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else {
        panic!("{read:?}")
    };
    assert_eq!(text.len(), size);
    let gone = server
        .reply("read_output", json!({ "uri": "output://0000" }))
        .await
        .err();
    assert!(gone.contains("no result kept"), "{gone}");
    server.stop().await;
}

/// Every failed call says what kind of failure it was, under `_meta`, next to its text: what a
/// client can act on without reading English.
#[tokio::test]
async fn a_failed_call_names_its_kind() {
    let server = Server::start(&["--memory", "--execution-timeout", "1"]).await;
    let kind_of = |result: rmcp::model::CallToolResult| {
        assert_eq!(result.is_error, Some(true), "{result:?}");
        let meta = result.meta.expect("a failed call has _meta");
        let error = meta.0.get("mcp-v8/error").expect("_meta names the error");
        (
            error["kind"].as_str().expect("a kind").to_string(),
            error["retryable"].as_bool().expect("retryable"),
        )
    };
    let cases = [
        (
            "run_js",
            json!({"code": "throw new TypeError('no')", "heap": "k"}),
            "exception",
        ),
        (
            "run_js",
            json!({"code": "while (true) {}", "heap": "k"}),
            "timeout",
        ),
        (
            "run_js",
            json!({"code": "1", "heap": "no/slash"}),
            "invalid_name",
        ),
        (
            "run_js",
            json!({"code": "1", "timeout_secs": -1}),
            "invalid_limit",
        ),
        (
            "copy_heap",
            json!({"from": "absent", "to": "b"}),
            "invalid_fork",
        ),
        (
            "read_output",
            json!({"uri": "output://gone"}),
            "output_gone",
        ),
    ];
    for (tool, arguments, kind) in cases {
        let result = server.call(tool, arguments.clone()).await;
        assert_eq!(
            kind_of(result),
            (kind.to_string(), false),
            "{tool} {arguments}"
        );
    }
    // A success carries no error kind.
    let ok = server
        .call("run_js", json!({"code": "1", "heap": "k"}))
        .await;
    assert!(ok
        .meta
        .is_none_or(|meta| !meta.0.contains_key("mcp-v8/error")));
    server.stop().await;
}
