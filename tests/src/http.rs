//! `mcp-v8` serving HTTP, and clients for its two transports: rmcp's Streamable HTTP client,
//! and a small legacy HTTP+SSE client (rmcp no longer has one) built on reqwest.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::{binary, Client};

/// A running `mcp-v8 --http-port 0 --sse-port 0 ARGS`.
#[derive(Debug)]
pub struct HttpServer {
    child: Child,
    logs: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>,
    /// `http://127.0.0.1:PORT/mcp`.
    pub mcp_url: String,
    /// `http://127.0.0.1:PORT` of the SSE transport.
    pub sse_base: String,
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

/// A plain HTTP client that never goes through a proxy.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("build an HTTP client")
}

impl HttpServer {
    /// Starts the server on two free ports and waits until both listen.
    pub async fn start(args: &[&str]) -> HttpServer {
        Self::start_with_env(args, &[]).await
    }

    /// [`HttpServer::start`] with extra environment variables.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> HttpServer {
        Self::spawn(&["--http-port", "0", "--sse-port", "0"], args, env).await
    }

    /// [`HttpServer::start`] with Streamable HTTP on `port`, for a server whose URL must be
    /// known before it starts (`--oauth-resource`). [`free_port`] finds one.
    pub async fn start_on_port(port: u16, args: &[&str]) -> HttpServer {
        let port = port.to_string();
        Self::spawn(&["--http-port", &port, "--sse-port", "0"], args, &[]).await
    }

    /// [`HttpServer::start`] with a given build of the binary, logging warnings only: for
    /// benchmarks, which measure one build against another.
    pub async fn start_binary(binary: &Path, args: &[&str]) -> HttpServer {
        let ports = ["--http-port", "0", "--sse-port", "0"];
        Self::spawn_binary(binary, &ports, args, &[("RUST_LOG", "warn")]).await
    }

    async fn spawn(ports: &[&str], args: &[&str], env: &[(&str, &str)]) -> HttpServer {
        Self::spawn_binary(&binary(), ports, args, env).await
    }

    async fn spawn_binary(
        binary: &Path,
        ports: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> HttpServer {
        let mut child = Command::new(binary)
            .args(ports)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("MCP_V8_TEST_LOG")
                    .unwrap_or_else(|_| "warn,mcp_v8::runtime=debug".into()),
            )
            // The caller's own RUST_LOG, if any, wins.
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mcp-v8");
        let stderr = child.stderr.take().expect("stderr pipe");
        let mut lines = BufReader::new(stderr).lines();
        let (log_tx, log_rx) = tokio::sync::mpsc::unbounded_channel();
        let (mut mcp_url, mut sse_base) = (None, None);
        while mcp_url.is_none() || sse_base.is_none() {
            let line = lines
                .next_line()
                .await
                .expect("read mcp-v8's stderr")
                .expect("mcp-v8 exited before it listened");
            eprintln!("{line}");
            let _ = log_tx.send(line.clone());
            if let Some(url) = line.strip_prefix("mcp-v8: Streamable HTTP listening on ") {
                mcp_url = Some(url.to_string());
            }
            if let Some(url) = line.strip_prefix("mcp-v8: HTTP+SSE listening on ") {
                sse_base = url.strip_suffix("/sse").map(str::to_string);
            }
        }
        // Keep forwarding the server's log so failures can be read, and tests can wait for it.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{line}");
                let _ = log_tx.send(line);
            }
        });
        HttpServer {
            child,
            logs: tokio::sync::Mutex::new(log_rx),
            mcp_url: mcp_url.unwrap_or_default(),
            sse_base: sse_base.unwrap_or_default(),
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would, and waits for it to go.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill mcp-v8");
    }

    /// Sends SIGTERM without waiting for the exit.
    pub fn signal_term(&self) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// The lines the server has logged since the last look.
    pub async fn logged(&self) -> Vec<String> {
        let mut logs = self.logs.lock().await;
        let mut lines = Vec::new();
        while let Ok(line) = logs.try_recv() {
            lines.push(line);
        }
        lines
    }

    /// Waits until the server logs a line containing `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        let mut logs = self.logs.lock().await;
        while let Some(line) = logs.recv().await {
            if line.contains(needle) {
                return;
            }
        }
        panic!("mcp-v8 exited without logging {needle:?}");
    }

    /// `GET /metrics` on the Streamable HTTP port, with `token` if given: the Prometheus text
    /// (a failed request or status fails the test).
    pub async fn metrics(&self, token: Option<&str>) -> String {
        let mut request = http().get(self.mcp_url.replace("/mcp", "/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("GET /metrics");
        assert_eq!(response.status(), 200, "GET /metrics");
        response.text().await.expect("the metrics' text")
    }

    /// A client session over Streamable HTTP.
    pub async fn streamable(&self, token: Option<&str>) -> Client {
        let mut config = StreamableHttpClientTransportConfig::with_uri(self.mcp_url.clone());
        if let Some(token) = token {
            config = config.auth_header(token);
        }
        let transport = StreamableHttpClientTransport::from_config(config);
        Client::new(
            ().serve(transport)
                .await
                .expect("MCP handshake over Streamable HTTP"),
        )
    }

    /// A client session over the legacy HTTP+SSE transport.
    pub async fn sse(&self, token: Option<&str>) -> Client {
        let (sink, stream) = sse_transport(&self.sse_base, token).await;
        Client::new(
            ().serve((sink, stream))
                .await
                .expect("MCP handshake over HTTP+SSE"),
        )
    }

    /// Sends SIGTERM and returns the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        self.signal_term();
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("mcp-v8 stops within 30 s of SIGTERM")
            .expect("wait for mcp-v8")
    }
}

type SseSink = std::pin::Pin<
    Box<dyn futures::Sink<TxJsonRpcMessage<RoleClient>, Error = std::io::Error> + Send>,
>;

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:`, if any.
    pub id: Option<String>,
    /// `event:` (`message` by default).
    pub event: String,
    /// The `data:` lines, joined (empty for a priming event).
    pub data: String,
}

/// The events of an SSE response body, as they arrive; the channel closes with the body.
pub fn sse_events(response: reqwest::Response) -> mpsc::Receiver<SseEvent> {
    let mut body = response.bytes_stream();
    let (mut events, received) = mpsc::channel::<SseEvent>(64);
    tokio::spawn(async move {
        let mut buffer = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: "message".into(),
                    data: String::new(),
                };
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_string());
                    }
                }
                event.data = data.join("\n");
                // Comments (keep-alives) carry neither data nor an id.
                if (!data.is_empty() || event.id.is_some()) && events.send(event).await.is_err() {
                    return;
                }
            }
        }
    });
    received
}

/// Opens `GET /sse`, waits for the `endpoint` event, and returns a sink that POSTs messages
/// there and a stream of the `message` events.
pub async fn sse_transport(
    base: &str,
    token: Option<&str>,
) -> (SseSink, mpsc::Receiver<RxJsonRpcMessage<RoleClient>>) {
    let client = http();
    let mut request = client.get(format!("{base}/sse"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET /sse");
    assert_eq!(response.status(), 200, "GET /sse");
    let mut events = sse_events(response);
    let endpoint = events.next().await.expect("the endpoint event");
    assert_eq!(endpoint.event, "endpoint");
    let post_url = format!("{base}{}", endpoint.data);
    let messages = events.filter_map(|event| async move {
        (event.event == "message")
            .then(|| serde_json::from_str(&event.data).expect("a JSON-RPC message"))
    });
    let (mut tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut messages = Box::pin(messages);
        while let Some(message) = messages.next().await {
            if tx.send(message).await.is_err() {
                return;
            }
        }
    });
    let token = token.map(str::to_string);
    let sink = futures::sink::unfold(
        (client, post_url, token),
        |(client, url, token), message: TxJsonRpcMessage<RoleClient>| async move {
            let mut request = client.post(&url).json(&message);
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.map_err(std::io::Error::other)?;
            if response.status() != 202 {
                return Err(std::io::Error::other(format!(
                    "POST /message: {}",
                    response.status()
                )));
            }
            Ok((client, url, token))
        },
    );
    (Box::pin(sink), rx)
}
