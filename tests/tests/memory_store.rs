//! The memory store over MCP: a size limit with LRU eviction, a TTL, calls told what happened
//! to their heap, `storage_stats`, `/metrics`, and the dump that carries heaps over a restart.

use std::time::Duration;

use mcp_v8_e2e::http::{http, HttpServer};
use mcp_v8_e2e::{eventually, Client, RawStdio, Server};
use serde_json::{json, Value};

async fn stats(client: &Client) -> Value {
    client.reply("storage_stats", json!({})).await.ok()
}

/// `run_js` on `heap`, expecting success; the whole result.
async fn run(client: &Client, code: &str, heap: &str) -> Value {
    client.run_js(code, Some(heap)).await.ok()
}

#[tokio::test]
async fn the_least_recently_used_heap_is_evicted_and_its_next_call_says_so() {
    // An empty heap is stored in ~80 KB: two fit, a third does not.
    let server = Server::start(&["--memory", "--memory-max-bytes", "200KB"]).await;
    for heap in ["a", "b"] {
        run(&server, &format!("var name = '{heap}'"), heap).await;
        server.settle().await;
    }
    // Using `a` again makes `b` the least recently used.
    run(&server, "name", "a").await;
    run(&server, "var name = 'c'", "c").await;
    let listing = server.settle().await;
    let names = mcp_v8_e2e::heap_names(&listing);
    assert_eq!(names, ["a", "c"], "{listing}");
    let result = run(&server, "typeof name", "b").await;
    assert_eq!(result["output"], "undefined", "{result}");
    let notice = result["notice"].as_str().unwrap_or_default();
    assert!(
        notice.starts_with("heap 'b' was evicted from memory (size limit")
            && notice.ends_with("ago; it starts empty"),
        "{result}"
    );
    // Told once: the heap has started over.
    server.settle().await;
    let again = run(&server, "1", "b").await;
    assert_eq!(again.get("notice"), None, "{again}");

    let stats = stats(&server).await;
    assert_eq!(stats["store"], "memory");
    assert_eq!(stats["max_bytes"], 200_000);
    assert!(stats["bytes"].as_u64().unwrap() <= 200_000, "{stats}");
    assert!(stats["evictions"].as_u64().unwrap() >= 2, "{stats}");
    server.stop().await;
}

#[tokio::test]
async fn a_heap_bigger_than_the_whole_limit_is_refused_and_nothing_is_evicted() {
    let server =
        Server::start(&["--memory", "--memory-max-bytes", "150KB", "--save", "sync"]).await;
    run(&server, "var small = 1", "small").await;
    let err = server
        .run_js(
            "var big = Array.from({length: 200000}, (_, i) => Math.random() + ' ' + i); big.length",
            Some("big"),
        )
        .await
        .err();
    assert!(
        err.contains("more than the memory store's whole limit"),
        "{err}"
    );
    assert_eq!(server.output("small", "small").await, "1");
    assert_eq!(stats(&server).await["evictions"], 0);
    server.stop().await;
}

#[tokio::test]
async fn an_unused_heap_expires_after_the_ttl_and_says_so() {
    let server = Server::start(&["--memory", "--memory-ttl", "1s"]).await;
    run(&server, "var kept = 'yes'", "h").await;
    server.settle().await;
    // The TTL itself is what this test waits for.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let result = run(&server, "typeof kept", "h").await;
    assert_eq!(result["output"], "undefined", "{result}");
    let notice = result["notice"].as_str().unwrap_or_default();
    assert!(notice.contains("heap 'h' expired from memory"), "{result}");
    assert!(stats(&server).await["expirations"].as_u64().unwrap() >= 1);
    server.stop().await;
}

#[tokio::test]
async fn storage_stats_count_what_happened() {
    let server = Server::start(&["--memory"]).await;
    let before = stats(&server).await;
    assert_eq!(
        (before["heaps"].as_u64(), before["puts"].as_u64()),
        (Some(0), Some(0))
    );
    run(&server, "var x = 1", "h").await;
    run(&server, "x += 1", "h").await;
    server.settle().await;
    let after = stats(&server).await;
    assert_eq!(after["heaps"], 1, "{after}");
    assert_eq!(after["misses"], 1, "the new heap is one miss: {after}");
    assert!(after["hits"].as_u64().unwrap() >= 1, "{after}");
    // The new heap's snapshot; the second call is a journal record, and the heap stays live
    // until a checkpoint is due.
    assert_eq!(after["puts"], 1, "{after}");
    assert_eq!(after["conflicts"], 0, "{after}");
    let (bytes, raw) = (
        after["bytes"].as_u64().unwrap(),
        after["raw_bytes"].as_u64().unwrap(),
    );
    assert!(
        bytes > 0 && bytes * 2 <= raw,
        "compressed {bytes} of {raw}: {after}"
    );
    assert_eq!(after["put_latency"]["count"], 1, "{after}");
    assert!(after["put_latency"]["p50_ms"].as_f64().is_some(), "{after}");
    // list_heaps shows both sizes of the snapshot; the store's bytes count the journal's
    // record of the second call too.
    let listing = server.settle().await;
    let size = listing["heaps"][0]["size"].as_u64().unwrap();
    assert!(size < bytes, "{listing}");
    assert_eq!(listing["heaps"][0]["raw_size"], raw, "{listing}");
    server
        .reply("delete_heap", json!({ "heap": "h" }))
        .await
        .ok();
    let deleted = stats(&server).await;
    assert_eq!(
        (deleted["deletes"].as_u64(), deleted["heaps"].as_u64()),
        (Some(1), Some(0))
    );
    server.stop().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text_behind_the_token() {
    let server = HttpServer::start(&["--memory", "--auth-token", "s3cret"]).await;
    let client = server.streamable(Some("s3cret")).await;
    client.output("var x = 40; x + 2", "h").await;
    let err = client
        .run_js("throw new Error('no')", Some("h"))
        .await
        .err();
    assert!(err.contains("no"), "{err}");
    client.settle().await;

    let url = server.mcp_url.replace("/mcp", "/metrics");
    let refused = http().get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let response = http().get(&url).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    let value = |name: &str, label: (&str, &str)| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(
        value("mcp_v8_run_js_calls_total", ("outcome", "ok")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("mcp_v8_run_js_calls_total", ("outcome", "exception")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("mcp_v8_store_puts_total", ("store", "memory")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("mcp_v8_store_heaps", ("store", "memory")),
        Some(1.0),
        "{text}"
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "mcp_v8_run_js_seconds"
                && matches!(&s.value, prometheus_parse::Value::Histogram(h) if !h.is_empty())),
        "{text}"
    );
    client.stop().await;
    server.terminate().await;
}

#[tokio::test]
async fn heaps_survive_a_restart_through_the_dump() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("heaps.dump");
    let dump_arg = dump.to_str().unwrap();

    // SIGTERM writes the dump.
    let server = HttpServer::start(&["--memory", "--memory-dump", dump_arg]).await;
    let client = server.streamable(None).await;
    client
        .output("var counter = 41; const list = [1, 2]", "a")
        .await;
    client
        .output(
            "class Point { constructor(x) { this.x = x } }; let p = new Point(7)",
            "b",
        )
        .await;
    // A copy shares its source's bytes in memory, and survives the restart as well.
    client
        .reply("copy_heap", json!({ "from": "a", "to": "a.copy" }))
        .await
        .ok();
    client.stop().await;
    assert!(server.terminate().await.success());
    assert!(dump.is_file(), "no dump was written on SIGTERM");

    // The next server starts with both heaps, state intact; end of input writes the dump.
    let mut stdio = RawStdio::start(&["--memory", "--memory-dump", dump_arg]).await;
    let code = "counter += 1; JSON.stringify([counter, list])";
    stdio
        .send_tool_call(2, "run_js", json!({ "code": code, "heap": "a" }))
        .await;
    let result = stdio.next().await;
    let output = &result["result"]["structuredContent"]["output"];
    assert_eq!(output, "[42,[1,2]]", "{result}");
    assert!(stdio.close().await.success());

    let server = Server::start(&["--memory", "--memory-dump", dump_arg]).await;
    assert_eq!(server.output("counter", "a").await, "42");
    assert_eq!(server.output("p instanceof Point && p.x", "b").await, "7");
    assert_eq!(server.output("counter", "a.copy").await, "41");
    server.stop().await;
}

#[tokio::test]
async fn a_damaged_dump_is_reported_heap_by_heap_and_the_rest_loads() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("heaps.dump");
    let dump_arg = dump.to_str().unwrap();
    let server = HttpServer::start(&["--memory", "--memory-dump", dump_arg]).await;
    let client = server.streamable(None).await;
    for heap in ["first", "second", "third"] {
        client.output(&format!("var me = '{heap}'"), heap).await;
    }
    client.stop().await;
    assert!(server.terminate().await.success());

    // Damage the second heap's record.
    let mut bytes = std::fs::read(&dump).unwrap();
    let record = bytes
        .windows(11)
        .position(|w| w == b"HEAP\x06second")
        .expect("the second heap's record");
    bytes[record + 100] ^= 0xff;
    std::fs::write(&dump, &bytes).unwrap();

    let server = HttpServer::start(&["--memory", "--memory-dump", dump_arg]).await;
    let client = server.streamable(None).await;
    server
        .wait_for_log("heap 'second': checksum mismatch in the dump, skipped")
        .await;
    assert_eq!(client.output("me", "first").await, "first");
    assert_eq!(client.output("me", "third").await, "third");
    assert_eq!(client.output("typeof me", "second").await, "undefined");
    assert!(
        dir.path().join("heaps.corrupt").is_file(),
        "the damaged dump was not kept"
    );
    client.stop().await;
    server.terminate().await;
}

#[tokio::test]
async fn a_file_that_is_not_a_dump_stops_the_start_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("notes.txt");
    std::fs::write(&precious, "my notes").unwrap();
    let (code, stderr) =
        mcp_v8_e2e::start_up_failure(&["--memory", "--memory-dump", precious.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("not an mcp-v8 memory dump"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "my notes");
}

#[tokio::test]
async fn a_plugin_store_reports_what_the_host_counts() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--directory-path", dir.path().to_str().unwrap()]).await;
    run(&server, "var x = 1", "h").await;
    run(&server, "x", "h").await;
    server.settle().await;
    let stats = stats(&server).await;
    assert_eq!(stats["store"], "file", "{stats}");
    assert_eq!(
        (stats["puts"].as_u64(), stats["misses"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    assert!(stats["bytes_written"].as_u64().unwrap() > 0, "{stats}");
    for unknown in [
        "heaps",
        "bytes",
        "raw_bytes",
        "max_bytes",
        "evictions",
        "expirations",
    ] {
        assert_eq!(stats[unknown], Value::Null, "{unknown}: {stats}");
    }
    // The raw size of a heap this server wrote is known.
    let listing = server.settle().await;
    assert!(
        listing["heaps"][0]["raw_size"].as_u64().unwrap()
            > listing["heaps"][0]["size"].as_u64().unwrap()
    );
    server.stop().await;
    let (code, stderr) = mcp_v8_e2e::start_up_failure(&[
        "--directory-path",
        dir.path().to_str().unwrap(),
        "--memory-max-bytes",
        "1GB",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("apply to the memory store"), "{stderr}");
}

#[tokio::test]
async fn the_dump_interval_keeps_heaps_through_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("heaps.dump");
    let dump_arg = dump.to_str().unwrap();
    let args = [
        "--memory",
        "--memory-dump",
        dump_arg,
        "--memory-dump-interval",
        "200ms",
    ];
    let server = Server::start(&args).await;
    server.output("var survived = 'yes'", "interval").await;
    // Wait for a periodic dump that holds the heap (it is the condition, not a delay).
    let holds_heap = || {
        std::fs::read(&dump)
            .map(|bytes| bytes.windows(13).any(|w| w == b"HEAP\x08interval"))
            .unwrap_or(false)
    };
    eventually(
        Duration::from_secs(20),
        "a periodic dump that holds the heap",
        || async { holds_heap().then_some(()) },
    )
    .await;
    // A crash writes nothing more; the last periodic dump is whole.
    server.kill().await;
    let server = Server::start(&args).await;
    assert_eq!(server.output("survived", "interval").await, "yes");
    server.stop().await;
}
