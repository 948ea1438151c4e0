//! CORS in a real browser: headless Chromium (the system's, driven by playwright-core) loads a
//! page from a loopback origin that calls `/mcp` with `fetch` (initialize, tools/list, run_js)
//! through a bearer token. The same page from an origin the server does not allow is blocked.

use std::path::Path;

use axum::response::Html;
use mcp_v8_e2e::clients::{chromium, NodeTools};
use mcp_v8_e2e::http::HttpServer;
use serde_json::Value;

const PAGE: &str = include_str!("../browser/page.html");

/// Serves the page at `/` on a free loopback port; returns its origin.
async fn serve_page() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/", axum::routing::get(|| async { Html(PAGE) }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    origin
}

#[tokio::test]
async fn a_page_on_an_allowed_origin_calls_mcp_from_a_browser() {
    let test = "a_page_on_an_allowed_origin_calls_mcp_from_a_browser";
    let (Some(tools), Some(chromium)) = (NodeTools::find(test), chromium(test)) else {
        return;
    };
    let (allowed, other) = (serve_page().await, serve_page().await);
    let server = HttpServer::start(&[
        "--memory",
        "--auth-token",
        "page-token",
        "--allowed-origins",
        &allowed,
    ])
    .await;
    let page = |origin: &str| format!("{origin}/?mcp={}&token=page-token", server.mcp_url);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/drive.cjs");
    let output = tools
        .command(&script)
        .arg(&chromium)
        .args([page(&allowed), page(&other)])
        .output()
        .await
        .expect("run the browser");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the browser run failed:\n{stderr}");
    let results: Value = serde_json::from_slice(&output.stdout).expect("the pages' results");

    let from_allowed = &results[0];
    assert_eq!(from_allowed["ok"], true, "{from_allowed}");
    assert_eq!(from_allowed["output"], "2,4,6", "{from_allowed}");
    assert_eq!(from_allowed["protocol"], "2025-11-25", "{from_allowed}");
    assert!(
        from_allowed["tools"]
            .as_array()
            .unwrap()
            .contains(&Value::from("run_js")),
        "{from_allowed}"
    );
    // The page could read the session id only because the server exposes the header.
    assert!(
        from_allowed["session"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{from_allowed}"
    );

    // Another origin: the preflight is refused, so the browser never sends the call.
    let from_other = &results[1];
    assert_eq!(from_other["ok"], false, "{from_other}");
    assert!(
        from_other["error"]
            .as_str()
            .unwrap()
            .contains("Failed to fetch"),
        "{from_other}"
    );
    assert!(
        from_other["console"].to_string().contains("CORS policy"),
        "{from_other}"
    );
}
