//! Two hosts on one S3 bucket behind a load balancer (a small proxy in the test): clients on
//! the current protocol (2026-07-28, no sessions) need nothing from the balancer; clients on
//! the session-based protocol (2025-11-25 and older) need affinity on `Mcp-Session-Id`.

use mcp_v8_e2e::http::HttpServer;
use mcp_v8_e2e::proxy::{Balance, Forwarded, Proxy};
use mcp_v8_e2e::s3::{Moto, AWS_ENV};
use mcp_v8_e2e::Client;
use rmcp::model::{CallToolRequestParams, ClientConfig, ProtocolVersion};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::json;

/// Two hosts on one bucket, and their base URLs.
async fn two_hosts(moto: &Moto, dir: &std::path::Path) -> (Vec<HttpServer>, Vec<String>) {
    moto.create_bucket("balanced").await;
    let config = moto.config(dir, "balanced");
    let mut hosts = Vec::new();
    for _ in 0..2 {
        hosts.push(HttpServer::start_with_env(&["--config", &config], &AWS_ENV).await);
    }
    let bases = hosts
        .iter()
        .map(|h| h.mcp_url.trim_end_matches("/mcp").to_string())
        .collect();
    (hosts, bases)
}

fn transport(proxy: &Proxy) -> StreamableHttpClientTransport<reqwest::Client> {
    StreamableHttpClientTransport::from_uri(format!("{}/mcp", proxy.url))
}

fn upstreams_of(forwarded: &[Forwarded]) -> std::collections::BTreeSet<usize> {
    forwarded.iter().map(|f| f.upstream).collect()
}

#[tokio::test]
async fn current_clients_need_no_affinity_behind_a_round_robin_balancer() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_hosts, bases) = two_hosts(&moto, dir.path()).await;
    let proxy = Proxy::start(bases, Balance::RoundRobin).await;

    let service = ()
        .serve_with_lifecycle(
            transport(&proxy),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("discover through the balancer");
    let client = Client::new(service);
    assert_eq!(client.tool_names().await, mcp_v8_e2e::HEAP_TOOLS);
    client.output("var visits = []", "balanced").await;
    // Every call may land on either host; each continues the heap where the last one ended.
    let mut expected = Vec::new();
    for i in 0..6 {
        expected.push(i.to_string());
        let code = format!("visits.push({i}); visits.join()");
        assert_eq!(client.output(&code, "balanced").await, expected.join(","));
    }

    let forwarded = proxy.forwarded();
    let calls: Vec<&Forwarded> = forwarded.iter().filter(|f| f.method == "POST").collect();
    assert!(calls.len() >= 8, "{forwarded:?}");
    assert!(calls.iter().all(|f| f.status == 200), "{forwarded:?}");
    assert_eq!(upstreams_of(&forwarded).len(), 2, "both hosts served");
    assert!(
        forwarded
            .iter()
            .all(|f| !f.headers.contains_key("mcp-session-id")),
        "no sessions on the current protocol"
    );
}

#[tokio::test]
async fn session_clients_need_affinity_on_the_session_id() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_hosts, bases) = two_hosts(&moto, dir.path()).await;
    let legacy = || {
        let mut info = ClientConfig::default();
        info.protocol_version = ProtocolVersion::V_2025_11_25;
        info
    };
    let call = |code: &str| {
        CallToolRequestParams::new("run_js").with_arguments(
            json!({"code": code, "heap": "sessions"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        )
    };

    // Round robin: the session lives on the host that answered initialize; the next request
    // goes to the other host, which does not know it (404).
    let proxy = Proxy::start(bases.clone(), Balance::RoundRobin).await;
    let failed = match legacy().serve(transport(&proxy)).await {
        Err(_) => true,
        Ok(service) => service.call_tool(call("1")).await.is_err(),
    };
    assert!(failed, "a session-based client fails without affinity");
    let forwarded = proxy.forwarded();
    let lost = forwarded
        .iter()
        .find(|f| f.status == 404)
        .unwrap_or_else(|| panic!("a request for an unknown session: {forwarded:?}"));
    assert!(lost.headers.contains_key("mcp-session-id"), "{lost:?}");
    assert_ne!(lost.upstream, forwarded[0].upstream, "{forwarded:?}");

    // Affinity on Mcp-Session-Id: every request of the session goes to the host that made it.
    let proxy = Proxy::start(bases, Balance::SessionAffinity).await;
    let service = legacy()
        .serve(transport(&proxy))
        .await
        .expect("initialize through the balancer");
    assert_eq!(
        service.peer_info().map(|i| i.protocol_version.clone()),
        Some(ProtocolVersion::V_2025_11_25)
    );
    for code in ["var n = 1", "n += 1", "n * 10"] {
        let result = service.call_tool(call(code)).await.expect("run_js");
        assert_ne!(result.is_error, Some(true), "{result:?}");
    }
    let last = service.call_tool(call("n")).await.expect("run_js");
    assert_eq!(last.structured_content.unwrap()["output"], "2");
    let forwarded = proxy.forwarded();
    assert!(
        forwarded.iter().all(|f| f.status.is_success()),
        "{forwarded:?}"
    );
    assert_eq!(upstreams_of(&forwarded).len(), 1, "{forwarded:?}");
}
