//! A small HTTP reverse proxy for the tests: it forwards each request to one of its upstreams
//! and records what it forwarded, like a load balancer in front of several hosts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;

use crate::http::http;

/// How the proxy picks an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// The next upstream for every request, whatever it carries.
    RoundRobin,
    /// Round robin, except that a request carrying an `Mcp-Session-Id` goes to the upstream
    /// that issued that session (as HAProxy's `stick store-response` does).
    SessionAffinity,
}

/// One forwarded request.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// Its method.
    pub method: Method,
    /// Its path and query.
    pub path: String,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: bytes::Bytes,
    /// The upstream it went to (an index into the proxy's upstreams).
    pub upstream: usize,
    /// The upstream's answer.
    pub status: StatusCode,
}

struct Shared {
    upstreams: Vec<String>,
    balance: Balance,
    next: AtomicUsize,
    sessions: Mutex<HashMap<String, usize>>,
    log: Mutex<Vec<Forwarded>>,
}

/// A running proxy on 127.0.0.1.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

const SESSION: HeaderName = HeaderName::from_static("mcp-session-id");

impl Proxy {
    /// Starts a proxy to `upstreams` (base URLs such as `http://127.0.0.1:9000`).
    pub async fn start(upstreams: Vec<String>, balance: Balance) -> Proxy {
        assert!(!upstreams.is_empty(), "a proxy needs an upstream");
        let shared = Arc::new(Shared {
            upstreams,
            balance,
            next: AtomicUsize::new(0),
            sessions: Mutex::default(),
            log: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve the proxy");
        });
        Proxy { url, shared, task }
    }

    /// Every request forwarded so far, in order.
    pub fn forwarded(&self) -> Vec<Forwarded> {
        self.shared.log.lock().expect("proxy log").clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let session = parts
        .headers
        .get(&SESSION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let sticky = match (shared.balance, &session) {
        (Balance::SessionAffinity, Some(id)) => {
            shared.sessions.lock().expect("sessions").get(id).copied()
        }
        _ => None,
    };
    let upstream = sticky
        .unwrap_or_else(|| shared.next.fetch_add(1, Ordering::Relaxed) % shared.upstreams.len());
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut headers = parts.headers.clone();
    for hop in ["host", "connection", "content-length", "transfer-encoding"] {
        headers.remove(hop);
    }
    let answer = http()
        .request(
            parts.method.clone(),
            format!("{}{path}", shared.upstreams[upstream]),
        )
        .headers(headers)
        .body(body.clone())
        .send()
        .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = answer.status();
    if let Some(id) = answer.headers().get(&SESSION).and_then(|v| v.to_str().ok()) {
        let mut sessions = shared.sessions.lock().expect("sessions");
        sessions.insert(id.to_string(), upstream);
    }
    shared.log.lock().expect("proxy log").push(Forwarded {
        method: parts.method,
        path,
        headers: parts.headers,
        body,
        upstream,
        status,
    });
    let mut response = Response::builder().status(status);
    for (name, value) in answer.headers() {
        if !matches!(
            name.as_str(),
            "connection" | "content-length" | "transfer-encoding"
        ) {
            response = response.header(name, value);
        }
    }
    // Streamed, so server-sent events pass through as they come.
    let stream = answer.bytes_stream().map_err(std::io::Error::other);
    response
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| (StatusCode::BAD_GATEWAY, e.to_string()).into_response())
}
