//! How clients reach the server: stdio (one client, the default), Streamable HTTP and the
//! legacy HTTP+SSE transport.

pub mod guard;
pub mod http;
mod sse;

use std::time::Duration;

use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use crate::server::McpServer;

/// Serves one client on stdin/stdout until it disconnects, or until `shutdown` is cancelled
/// and calls in flight have finished (for up to `grace`).
pub async fn serve_stdio(
    server: McpServer,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), String> {
    let calls = server.calls();
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| format!("MCP handshake failed: {e}"))?;
    let stop = async {
        shutdown.cancelled().await;
        if tokio::time::timeout(grace, calls.idle()).await.is_err() {
            tracing::warn!("calls still running after the grace period are cancelled");
        }
    };
    tokio::select! {
        result = running.waiting() => {
            result.map_err(|e| format!("MCP service failed: {e}"))?;
        }
        () = stop => {}
    }
    Ok(())
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            () = terminate => tracing::info!("SIGTERM received"),
        }
        token.cancel();
    });
}
