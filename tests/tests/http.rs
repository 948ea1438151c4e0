//! The HTTP transports against the real binary on loopback: Streamable HTTP at `/mcp` and the
//! legacy HTTP+SSE transport, with their access policy, limits and shutdown.

use std::time::Duration;

use futures::future::join_all;
use mcp_v8_e2e::clients::{Sdk, SdkTransport};
use mcp_v8_e2e::http::{http, HttpServer};
use mcp_v8_e2e::{eventually, Client};

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

#[tokio::test]
async fn both_transports_serve_the_same_tools_and_share_heaps() {
    let server = HttpServer::start(&["--memory"]).await;
    let streamable = server.streamable(None).await;
    let sse = server.sse(None).await;
    assert_eq!(streamable.tool_names().await, mcp_v8_e2e::HEAP_TOOLS);
    assert_eq!(sse.tool_names().await, mcp_v8_e2e::HEAP_TOOLS);

    streamable
        .output("var visits = ['streamable']", "shared")
        .await;
    assert_eq!(
        sse.output("visits.push('sse'); visits.join()", "shared")
            .await,
        "streamable,sse"
    );
    assert_eq!(streamable.output("visits.length", "shared").await, "2");
    let resources = sse.client().list_all_resources().await.unwrap();
    assert_eq!(resources[0].uri, "heap://shared");
    streamable.stop().await;
    sse.stop().await;
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn twenty_concurrent_sessions_all_get_their_own_answers() {
    let server = HttpServer::start(&["--memory"]).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(if i % 2 == 0 {
            server.streamable(None).await
        } else {
            server.sse(None).await
        });
    }
    let calls = clients.iter().enumerate().map(|(i, client)| async move {
        let heap = format!("session-{i}");
        client
            .output(&format!("var mine = {i}; mine * 3"), &heap)
            .await;
        client.output("mine * 3", &heap).await
    });
    let outputs = join_all(calls).await;
    for (i, output) in outputs.into_iter().enumerate() {
        assert_eq!(output, (i * 3).to_string());
    }
    for client in clients {
        client.stop().await;
    }
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn two_sessions_incrementing_one_counter_lose_nothing() {
    let server = HttpServer::start(&["--memory"]).await;
    let (a, b) = (server.streamable(None).await, server.sse(None).await);
    a.output("var counter = 0", "counter").await;
    join_all([increment_50_times(&a), increment_50_times(&b)]).await;
    assert_eq!(a.output("counter", "counter").await, "100");
    a.stop().await;
    b.stop().await;
    assert!(server.terminate().await.success());
}

async fn increment_50_times(client: &Client) {
    for _ in 0..50 {
        client.run_js("++counter", Some("counter")).await.ok();
    }
}

#[tokio::test]
async fn a_token_is_required_on_both_transports() {
    let server = HttpServer::start(&["--memory", "--auth-token", "open-sesame"]).await;
    let client = http();
    for token in [None, Some("wrong")] {
        let mut mcp = client
            .post(&server.mcp_url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(INITIALIZE);
        let mut sse = client.get(format!("{}/sse", server.sse_base));
        if let Some(token) = token {
            mcp = mcp.bearer_auth(token);
            sse = sse.bearer_auth(token);
        }
        let mcp = mcp.send().await.unwrap();
        assert_eq!(mcp.status(), 401, "{token:?}");
        assert_eq!(mcp.headers()["www-authenticate"], "Bearer");
        assert_eq!(sse.send().await.unwrap().status(), 401, "{token:?}");
        let post = client
            .post(format!("{}/message?sessionId=x", server.sse_base))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), 401);
    }
    let streamable = server.streamable(Some("open-sesame")).await;
    assert_eq!(streamable.output("'in'", "t").await, "in");
    let sse = server.sse(Some("open-sesame")).await;
    assert_eq!(sse.output("'in too'", "t").await, "in too");
    streamable.stop().await;
    sse.stop().await;
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn foreign_hosts_and_origins_are_refused() {
    let server = HttpServer::start(&["--memory"]).await;
    let client = http();
    let endpoints = [
        client.post(&server.mcp_url).body(INITIALIZE),
        client.get(format!("{}/sse", server.sse_base)),
    ];
    for request in endpoints {
        let host = request
            .try_clone()
            .unwrap()
            .header("host", "evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(host.status(), 403);
        assert!(host
            .text()
            .await
            .unwrap()
            .contains("Host 'evil.example' is not allowed"));
        let origin = request
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(origin.status(), 403);
        assert!(origin
            .text()
            .await
            .unwrap()
            .contains("Origin 'https://evil.example' is not allowed"));
    }
    // A page served from loopback, like the MCP Inspector, is welcome.
    let inspector = client
        .post(&server.mcp_url)
        .header("origin", "http://localhost:6274")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(INITIALIZE)
        .send()
        .await
        .unwrap();
    assert_eq!(inspector.status(), 200);
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn a_10_mb_code_argument_is_accepted_on_both_transports() {
    let server = HttpServer::start(&["--memory"]).await;
    let code = format!("'{}'.length", "x".repeat(10 << 20));
    for client in [server.streamable(None).await, server.sse(None).await] {
        let out = client.run_js(&code, None).await.ok();
        assert_eq!(out["output"], (10u32 << 20).to_string());
        client.stop().await;
    }
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn sigterm_lets_the_call_in_flight_finish_then_stops() {
    let server = HttpServer::start(&["--memory"]).await;
    let client = server.streamable(None).await;
    // A call that takes a while, on a heap nothing else touched, started before the signal.
    let call = client.run_js(
        "const end = Date.now() + 1500; while (Date.now() < end) {} 'done'",
        Some("slow"),
    );
    let (reply, status) = tokio::join!(call, async {
        // Signal only once the call is running.
        server.wait_for_log("running code on heap slow").await;
        server.terminate().await
    });
    assert!(status.success(), "{status:?}");
    assert_eq!(reply.ok()["output"], "done");
}

#[tokio::test]
async fn a_long_call_completes_over_both_transports() {
    let server = HttpServer::start(&["--memory"]).await;
    for client in [server.streamable(None).await, server.sse(None).await] {
        let out = client
            .run_js(
                "const end = Date.now() + 1500; while (Date.now() < end) {} 'done'",
                None,
            )
            .await
            .ok();
        assert_eq!(out["output"], "done");
        client.stop().await;
    }
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn binding_beyond_loopback_without_a_token_warns() {
    let server = HttpServer::start(&["--memory", "--host", "0.0.0.0"]).await;
    server
        .wait_for_log("listening beyond loopback without --auth-token")
        .await;
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn healthz_answers_without_a_token_and_turns_503_while_stopping() {
    let server = HttpServer::start(&["--memory", "--auth-token", "s3cret"]).await;
    let health = server.mcp_url.replace("/mcp", "/healthz");
    let response = http().get(&health).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");
    // Everything else still wants the token.
    let metrics = server.mcp_url.replace("/mcp", "/metrics");
    assert_eq!(http().get(&metrics).send().await.unwrap().status(), 401);

    let client = server.streamable(Some("s3cret")).await;
    let call = client.run_js(
        "const end = Date.now() + 3000; while (Date.now() < end) {} 'done'",
        Some("slow"),
    );
    let probe = async {
        server.wait_for_log("running code on heap slow").await;
        server.signal_term();
        // Shutting down while the call finishes: the probe says so.
        eventually(Duration::from_secs(10), "healthz says 503", || async {
            let response = http().get(&health).send().await.unwrap();
            match response.status() {
                reqwest::StatusCode::SERVICE_UNAVAILABLE => Some(response.text().await.unwrap()),
                _ => None,
            }
        })
        .await
    };
    let (reply, said) = tokio::join!(call, probe);
    assert_eq!(said, "shutting down");
    assert_eq!(reply.ok()["output"], "done");
}

/// What a browser page on an allowed origin needs: its preflight answered (without the token,
/// which browsers do not send with it), and every answer readable by it; other origins 403.
#[tokio::test]
async fn cors_lets_allowed_pages_call_mcp_on_both_transports() {
    let server = HttpServer::start(&["--memory", "--auth-token", "s3cret"]).await;
    let page = "http://127.0.0.1:5173";
    for url in [
        server.mcp_url.clone(),
        format!("{}/message", server.sse_base),
    ] {
        let preflight = http()
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", page)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type, mcp-session-id",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(preflight.status(), 204, "{url}");
        let headers = preflight.headers();
        assert_eq!(headers["access-control-allow-origin"], page);
        let allowed = headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_lowercase();
        for header in [
            "authorization",
            "content-type",
            "mcp-session-id",
            "mcp-protocol-version",
            "last-event-id",
        ] {
            assert!(allowed.contains(header), "{header} not allowed: {allowed}");
        }
        assert!(headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST"));

        let evil = http()
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        assert_eq!(evil.status(), 403);
        assert!(evil.headers().get("access-control-allow-origin").is_none());
    }
    // The real request: answered with the origin named and the session id exposed.
    let response = http()
        .post(&server.mcp_url)
        .header("origin", page)
        .bearer_auth("s3cret")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(INITIALIZE)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], page);
    assert!(headers["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("Mcp-Session-Id"));
    assert!(headers.contains_key("mcp-session-id"));
    // Without the token the page is told why (and may read it).
    let refused = http()
        .post(&server.mcp_url)
        .header("origin", page)
        .body(INITIALIZE)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["access-control-allow-origin"], page);
    assert!(server.terminate().await.success());
}

/// The official SDKs keep one connection alive and wait for each answer before the next call.
/// An answer written in more than one piece on a socket with Nagle's algorithm on waits for the
/// client's delayed ACK (40 ms on Linux) before its last piece leaves: every call would take
/// over 40 ms. With both SDKs, on both transports, the calls must not wait.
#[tokio::test]
async fn kept_alive_calls_from_the_official_sdks_do_not_wait_for_delayed_acks() {
    let test = "kept_alive_calls_from_the_official_sdks_do_not_wait_for_delayed_acks";
    let (Some(typescript), Some(python)) = (Sdk::typescript(test), Sdk::python(test)) else {
        return;
    };
    let server = HttpServer::start(&["--memory"]).await;
    let sse_url = format!("{}/sse", server.sse_base);
    for sdk in [typescript, python] {
        for transport in [
            SdkTransport::StreamableHttp(&server.mcp_url),
            SdkTransport::Sse(&sse_url),
        ] {
            let run = sdk
                .calls(&transport, 20, "kept-alive", "var n = 0", "++n")
                .await;
            assert_eq!(run.ms.len(), 20);
            // With the stall every call (or every other) takes over 40 ms; without it, a few.
            let stalled = run.ms.iter().filter(|ms| **ms >= 40.0).count();
            eprintln!(
                "{} over {transport:?}: median {:.2} ms",
                sdk.name(),
                run.median_ms()
            );
            assert!(
                stalled <= 4,
                "{} over {transport:?}: calls took {:?} ms",
                sdk.name(),
                run.ms
            );
        }
    }
    assert!(server.terminate().await.success());
}
