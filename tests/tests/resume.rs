//! Resumable Streamable HTTP: a client whose stream drops in the middle of a long call
//! reconnects with `Last-Event-ID` and gets what it missed, the result included, with a session
//! (2025-11-25) and without (2026-07-28).

use futures::StreamExt;
use mcp_v8_e2e::http::{http, sse_events, HttpServer, SseEvent};
use serde_json::{json, Value};

const SLOW: &str = "const end = Date.now() + 1500; while (Date.now() < end) {} 6 * 7";

/// POSTs `body` with `headers`; returns the response.
async fn post(server: &HttpServer, headers: &[(&str, &str)], body: Value) -> reqwest::Response {
    let mut request = http()
        .post(&server.mcp_url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.json(&body).send().await.expect("POST /mcp")
}

/// A 2026-07-28 `tools/call` of run_js (no session; the client's context in `_meta`, with
/// `meta`'s keys added).
async fn sessionless_run_js(
    server: &HttpServer,
    id: i64,
    code: &str,
    heap: &str,
    meta: Value,
) -> reqwest::Response {
    let headers = [
        ("Mcp-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "run_js"),
    ];
    let mut context = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                             "io.modelcontextprotocol/clientCapabilities": {}});
    if let (Value::Object(context), Value::Object(meta)) = (&mut context, meta) {
        context.extend(meta);
    }
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "_meta": context, "name": "run_js", "arguments": {"code": code, "heap": heap}}});
    post(server, &headers, body).await
}

/// Reads events until the answer to request `id`.
async fn answer(events: &mut futures::channel::mpsc::Receiver<SseEvent>, id: i64) -> Value {
    while let Some(event) = events.next().await {
        if let Ok(message) = serde_json::from_str::<Value>(&event.data) {
            if message["id"] == id {
                return message;
            }
        }
    }
    panic!("the stream ended without the answer to request {id}");
}

/// The call's stream up to its first event with an id; then the connection is dropped.
async fn drop_after_first_event(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 200);
    let mut events = sse_events(response);
    let first = events.next().await.expect("a first event");
    first.id.expect("events carry ids")
}

async fn resume(
    server: &HttpServer,
    headers: &[(&str, &str)],
    last_event_id: &str,
) -> futures::channel::mpsc::Receiver<SseEvent> {
    let mut request = http()
        .get(&server.mcp_url)
        .header("Accept", "text/event-stream")
        .header("Last-Event-ID", last_event_id);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("GET /mcp");
    assert_eq!(response.status(), 200);
    sse_events(response)
}

#[tokio::test]
async fn a_session_client_resumes_a_dropped_stream_and_gets_the_result() {
    let server = HttpServer::start(&["--memory"]).await;
    let init = post(
        &server,
        &[],
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "resuming", "version": "1"}}}),
    )
    .await;
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    drop(init);
    let headers = [
        ("Mcp-Session-Id", session.as_str()),
        ("Mcp-Protocol-Version", "2025-11-25"),
    ];
    post(
        &server,
        &headers,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    let call = post(
        &server,
        &headers,
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
               "params": {"name": "run_js", "arguments": {"code": SLOW, "heap": "resumed"}}}),
    )
    .await;
    let last = drop_after_first_event(call).await;

    // Reconnected while the code still runs: the result arrives on the new stream.
    let mut events = resume(&server, &headers, &last).await;
    let result = answer(&mut events, 2).await;
    assert_eq!(
        result["result"]["structuredContent"]["output"], "42",
        "{result}"
    );
    // The stream ends with the answer.
    assert!(events.next().await.is_none());

    // Reconnecting again later still finds it.
    let mut again = resume(&server, &headers, &last).await;
    assert_eq!(answer(&mut again, 2).await, result);
}

#[tokio::test]
async fn a_sessionless_client_resumes_a_dropped_stream_and_gets_the_result() {
    let server = HttpServer::start(&["--memory"]).await;
    // A progress token makes the server open the stream before the result.
    let meta = json!({"progressToken": "p"});
    let call = sessionless_run_js(&server, 7, SLOW, "sessionless", meta).await;
    let last = drop_after_first_event(call).await;
    let mut events = resume(&server, &[("Mcp-Protocol-Version", "2026-07-28")], &last).await;
    let result = answer(&mut events, 7).await;
    assert_eq!(
        result["result"]["structuredContent"]["output"], "42",
        "{result}"
    );
}

#[tokio::test]
async fn events_past_the_budget_are_gone() {
    // A budget smaller than any event: nothing is kept, and a resume gets an empty stream.
    let server = HttpServer::start(&["--memory", "--event-max-bytes", "1"]).await;
    let call = sessionless_run_js(&server, 8, "1", "budget", json!({})).await;
    let last = drop_after_first_event(call).await;
    let mut events = resume(&server, &[("Mcp-Protocol-Version", "2026-07-28")], &last).await;
    assert!(events.next().await.is_none());
}
