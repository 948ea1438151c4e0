//! How clients reach the server: stdio (one client, the default), Streamable HTTP and the
//! legacy HTTP+SSE transport.

pub mod access;
pub mod events;
pub mod http;
pub mod oauth;
mod sse;
pub mod stdio;

use std::time::Duration;

use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use crate::server::McpServer;
use crate::start::StartError;

/// Serves one client on stdin/stdout until it disconnects, or until `shutdown` is cancelled
/// and calls in flight have finished (for up to `grace`). Messages may be up to `max_message`
/// bytes long.
pub async fn serve_stdio(
    server: McpServer,
    shutdown: CancellationToken,
    grace: Duration,
    max_message: usize,
) -> Result<(), StartError> {
    let calls = server.calls();
    let transport = stdio::transport(max_message);
    let unanswered = transport.unanswered();
    // A signal before the client's handshake stops the server too.
    let running = tokio::select! {
        running = server.serve(transport) => {
            running.map_err(|e| StartError::Serve(format!("MCP handshake failed: {e}")))?
        }
        () = shutdown.cancelled() => return Ok(()),
    };
    let stop = async {
        shutdown.cancelled().await;
        // The calls finish, and then their answers are written.
        let drained = async {
            calls.idle().await;
            unanswered.none().await;
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!("calls still running after the grace period are cancelled");
        }
    };
    tokio::select! {
        result = running.waiting() => {
            result.map_err(|e| StartError::Serve(format!("MCP service failed: {e}")))?;
        }
        () = stop => {}
    }
    Ok(())
}

/// Cancels `token` on SIGINT or SIGTERM. The handlers are installed before this returns, so a
/// signal that arrives right after start-up is not fatal.
pub fn cancel_on_signals(token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (interrupt, terminate) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("cannot listen for SIGINT/SIGTERM: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        let (mut interrupt, mut terminate) = (interrupt, terminate);
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
        token.cancel();
    });
}
