//! Serving MCP over HTTP: Streamable HTTP at `/mcp` and the legacy SSE transport, each on its
//! own port, behind the access policy, with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::serve::ListenerExt;
use axum::Router;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::access::{self, AccessPolicy};
use super::events::{MemoryEventStore, Retention};
use super::sse;
use crate::in_flight::InFlight;
use crate::runtime::Runtime;
use crate::server::{McpServer, Owners};
use crate::start::StartError;

/// What to serve where.
#[derive(Debug)]
pub struct HttpOptions {
    /// Address to bind.
    pub host: String,
    /// Streamable HTTP port.
    pub http_port: Option<u16>,
    /// Legacy SSE port.
    pub sse_port: Option<u16>,
    /// Who may connect.
    pub policy: AccessPolicy,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Logs are JSON: the "listening" line is a log event too, not plain text.
    pub json_logs: bool,
    /// How long and how much of the sent events are kept for clients that reconnect.
    pub events: Retention,
}

/// The Streamable HTTP router: `/mcp`. Cancelling `sessions` ends every session.
pub fn streamable_router(
    server: McpServer,
    options: &HttpOptions,
    sessions: CancellationToken,
) -> Router {
    // Host and Origin are checked by our own layer, the same way for both transports.
    let config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .disable_allowed_origins()
        .with_max_request_body_bytes(options.max_body_bytes)
        .with_cancellation_token(sessions.clone());
    // Every event sent is kept a while: a client whose stream dropped resumes with
    // Last-Event-ID, with a session (2025-11-25) or without (2026-07-28).
    let events = MemoryEventStore::new(options.events, sessions);
    let sessions = LocalSessionManager::default().with_event_store(Arc::new(events));
    let service =
        StreamableHttpService::new(move || Ok(server.for_session()), Arc::new(sessions), config);
    Router::new().nest_service("/mcp", service)
}

/// `GET /metrics`: every counter as Prometheus text (format 0.0.4).
pub fn metrics_router(runtime: Arc<Runtime>) -> Router {
    let metrics = move || {
        let runtime = Arc::clone(&runtime);
        async move {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                runtime.metrics_text(),
            )
        }
    };
    Router::new().route("/metrics", axum::routing::get(metrics))
}

/// `GET /healthz`: `ok`, or 503 once shutdown has begun. Outside the access checks: load
/// balancers and orchestrators probe it without a token, and it reveals nothing.
pub fn health_router(draining: CancellationToken) -> Router {
    let health = move || {
        let draining = draining.clone();
        async move {
            if draining.is_cancelled() {
                (axum::http::StatusCode::SERVICE_UNAVAILABLE, "shutting down")
            } else {
                (axum::http::StatusCode::OK, "ok")
            }
        }
    };
    Router::new().route("/healthz", axum::routing::get(health))
}

/// The Protected Resource Metadata (RFC 9728), when tokens are OAuth's: public, so that a
/// client refused with 401 can find the authorisation server; readable from any page.
fn metadata_router(options: &HttpOptions) -> Router {
    let Some(oauth) = &options.policy.oauth else {
        return Router::new();
    };
    use axum::http::header;
    let document = oauth.metadata();
    let mut router = Router::new();
    for path in oauth.metadata_paths() {
        let document = document.clone();
        let get = axum::routing::get(move || async move {
            (
                [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
                axum::Json(document),
            )
        });
        // Clients in pages send MCP-Protocol-Version with it, which takes a preflight.
        let preflight = get.options(|| async {
            (
                axum::http::StatusCode::NO_CONTENT,
                [
                    (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
                    (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, OPTIONS"),
                    (header::ACCESS_CONTROL_ALLOW_HEADERS, "*"),
                    (header::ACCESS_CONTROL_MAX_AGE, "600"),
                ],
            )
        });
        router = router.route(&path, preflight);
    }
    router
}

/// `router` and `/metrics` behind the Host/Origin/token checks, the body limit and the
/// shutdown gate; `/healthz` and the resource metadata outside them.
fn guarded(
    router: Router,
    runtime: Arc<Runtime>,
    options: &HttpOptions,
    draining: CancellationToken,
    posts: Arc<InFlight>,
) -> Router {
    router
        .merge(metrics_router(runtime))
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(options.policy.clone()),
            access::check,
        ))
        .layer(axum::middleware::from_fn_with_state(posts, track_posts))
        .layer(axum::middleware::from_fn_with_state(
            draining.clone(),
            refuse_when_draining,
        ))
        .merge(health_router(draining))
        .merge(metadata_router(options))
}

/// Counts POST responses still being written: a Streamable HTTP tool result travels in the
/// body of the POST that asked for it, so shutdown waits for those bodies to end.
async fn track_posts(
    axum::extract::State(posts): axum::extract::State<Arc<InFlight>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use futures::StreamExt;
    if request.method() != axum::http::Method::POST {
        return next.run(request).await;
    }
    let guard = posts.enter();
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        // Lives as long as the body, so the count drops when the body is done or dropped.
        let _ = &guard;
        chunk
    });
    axum::response::Response::from_parts(parts, axum::body::Body::from_stream(body))
}

/// Once shutdown has begun, new sessions get 503 while the open ones finish their calls
/// (their follow-up requests, such as stream resumption, still get through).
async fn refuse_when_draining(
    axum::extract::State(draining): axum::extract::State<CancellationToken>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let in_session =
        request.headers().contains_key("mcp-session-id") || request.uri().path() == "/message";
    if draining.is_cancelled() && !in_session {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "mcp-v8 is shutting down",
        )
            .into_response();
    }
    next.run(request).await
}

/// Binds the configured ports and serves until `shutdown` is cancelled; then stops accepting,
/// lets tool calls in flight finish for up to `grace`, and closes every session.
pub async fn serve(
    server: McpServer,
    options: HttpOptions,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), StartError> {
    // The access layer names every request's owner (a tenant's, or the server's).
    let server = server.with_owners(Owners::PerRequest);
    let mut tasks = tokio::task::JoinSet::new();
    let mut listeners = Vec::new();
    let sessions = CancellationToken::new();
    let calls = server.calls();
    let posts = Arc::new(InFlight::default());
    if let Some(port) = options.http_port {
        let router = guarded(
            streamable_router(server.clone(), &options, sessions.clone()),
            server.runtime(),
            &options,
            shutdown.clone(),
            Arc::clone(&posts),
        );
        listeners.push(("Streamable HTTP", port, "/mcp", router));
    }
    if let Some(port) = options.sse_port {
        let router = guarded(
            sse::router(server.clone(), sessions.clone()),
            server.runtime(),
            &options,
            shutdown.clone(),
            Arc::clone(&posts),
        );
        listeners.push(("HTTP+SSE", port, "/sse", router));
    }
    for (name, port, path, router) in listeners {
        let listener = TcpListener::bind((options.host.as_str(), port))
            .await
            .map_err(|source| StartError::Listen {
                address: format!("{}:{port}", options.host),
                transport: name,
                source,
            })?;
        let local: SocketAddr = listener
            .local_addr()
            .map_err(|e| StartError::Serve(e.to_string()))?;
        // An answer leaves in more than one write; with Nagle's algorithm on, the last waits
        // for the client's delayed ACK (40 ms on Linux) on every kept-alive connection.
        let listener = listener.tap_io(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!("TCP_NODELAY not set on an accepted connection: {e}");
            }
        });
        // One line, also without logs: tests and scripts read it to learn the port (useful
        // with port 0). With JSON logs it is one of them, so every line parses.
        if options.json_logs {
            tracing::info!(transport = name, url = %format!("http://{local}{path}"), "listening");
        } else {
            eprintln!("mcp-v8: {name} listening on http://{local}{path}");
        }
        let stop = sessions.clone();
        tasks.spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
    }
    shutdown.cancelled().await;
    tracing::info!(
        "shutting down: refusing new requests; waiting up to {} s for calls in flight",
        grace.as_secs_f64()
    );
    let finished = async {
        calls.idle().await;
        posts.idle().await;
    };
    if tokio::time::timeout(grace, finished).await.is_err() {
        tracing::warn!("calls still running after the grace period are cancelled");
    }
    // Ending the sessions closes their streams and stops the servers, which then drain.
    sessions.cancel();
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(result) = tasks.join_next().await {
            if let Ok(Err(e)) = result {
                tracing::warn!("HTTP server ended with an error: {e}");
            }
        }
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
    }
    Ok(())
}
