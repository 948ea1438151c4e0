//! The legacy HTTP+SSE transport (MCP protocol 2024-11-05), which rmcp no longer ships:
//! `GET /sse` opens an event stream whose first event, `endpoint`, names
//! `POST /message?sessionId=...`; the client posts its JSON-RPC messages there and reads the
//! server's on the stream. Each stream is one MCP session, served by its own rmcp service
//! over a pair of channels.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::channel::mpsc;
use futures::{SinkExt, Stream, StreamExt};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::{RoleServer, ServiceExt};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::runtime::Owner;
use crate::server::McpServer;

/// Messages buffered per direction and session before the sender waits.
const BUFFER: usize = 64;

type ToServer = mpsc::Sender<RxJsonRpcMessage<RoleServer>>;

/// A session's way in, and whose it is: only requests for the same owner may post to it.
type Open = (ToServer, Owner);

struct Sessions {
    server: McpServer,
    open: Mutex<HashMap<String, Open>>,
    shutdown: CancellationToken,
}

/// The `/sse` and `/message` routes.
pub(super) fn router(server: McpServer, shutdown: CancellationToken) -> Router {
    let sessions = Arc::new(Sessions {
        server,
        open: Mutex::new(HashMap::new()),
        shutdown,
    });
    Router::new()
        .route("/sse", get(open_stream))
        .route("/message", post(post_message))
        .with_state(sessions)
}

/// Removes the session when its event stream goes away (client gone, or shutdown), which
/// closes the service's input and ends it.
struct SessionGuard {
    id: String,
    sessions: Arc<Sessions>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut open = self
            .sessions
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.remove(&self.id);
        tracing::debug!(session = %self.id, "SSE session closed");
    }
}

async fn open_stream(
    State(sessions): State<Arc<Sessions>>,
    // Put there by the access layer; without it axum refuses the request (fails closed).
    axum::Extension(owner): axum::Extension<Owner>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (to_server, from_client) = mpsc::channel::<RxJsonRpcMessage<RoleServer>>(BUFFER);
    let (to_client, from_server) = mpsc::channel::<TxJsonRpcMessage<RoleServer>>(BUFFER);
    sessions
        .open
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id.clone(), (to_server, owner));

    let server = sessions.server.for_session();
    let shutdown = sessions.shutdown.clone();
    let session = id.clone();
    tokio::spawn(async move {
        let sink = to_client.sink_map_err(std::io::Error::other);
        match server.serve((sink, from_client)).await {
            Ok(running) => {
                tokio::select! {
                    _ = running.waiting() => {}
                    () = shutdown.cancelled() => {}
                }
            }
            Err(e) => tracing::warn!(%session, "SSE session failed to start: {e}"),
        }
    });

    let guard = SessionGuard {
        id: id.clone(),
        sessions: Arc::clone(&sessions),
    };
    let endpoint = Event::default()
        .event("endpoint")
        .data(format!("/message?sessionId={id}"));
    let messages = from_server.map(move |message| {
        // Keeps the session registered while the stream lives.
        let _ = &guard;
        let data = serde_json::to_string(&message).unwrap_or_else(|e| {
            tracing::error!("cannot encode an MCP message: {e}");
            String::from("{}")
        });
        Ok(Event::default().event("message").data(data))
    });
    // The stream ends when the session's service ends (at shutdown too), after every message
    // it sent has been written.
    let stream = futures::stream::once(async move { Ok(endpoint) }).chain(messages);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[derive(Deserialize)]
struct SessionQuery {
    #[serde(rename = "sessionId")]
    session_id: String,
}

async fn post_message(
    State(sessions): State<Arc<Sessions>>,
    Query(query): Query<SessionQuery>,
    axum::Extension(owner): axum::Extension<Owner>,
    body: Result<Json<RxJsonRpcMessage<RoleServer>>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let mut message = match body {
        Ok(Json(message)) => message,
        Err(rejection) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not an MCP message: {rejection}"),
            )
                .into_response()
        }
    };
    let sender = sessions
        .open
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&query.session_id)
        .cloned();
    // Another owner's session is as good as none: its id reveals nothing.
    let Some(mut sender) = sender.and_then(|(sender, opener)| (opener == owner).then_some(sender))
    else {
        return (
            StatusCode::NOT_FOUND,
            "no such session (open one with GET /sse)",
        )
            .into_response();
    };
    message.insert_extension(owner);
    match sender.send(message).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(_) => (StatusCode::GONE, "the session has ended").into_response(),
    }
}
