//! Upstream MCP servers: the agent's other tools, which code on a heap calls as
//! `await tools.server.tool(args)` (code mode).
//!
//! The host holds the client connections ([`Upstreams`]): each server is started (or
//! connected to) when code first needs it, kept for later calls, started again after it dies
//! (at once the first time, then with a growing pause), and shut down with the server.
//! Credentials and environment stay in the host: code sees results, never the configuration.
//!
//! Every run gets its own [`RunTools`], which answers the run's host calls under the
//! [`ToolPolicy`]: which tools are allowed, a limit of calls per run and of calls in flight, a
//! per-call timeout and a cap on a result's size. Replies go on the run's tape, so replaying a
//! committed call never calls a tool again; a failed call rolls the heap back, but not what
//! its tools did.

pub mod config;
pub mod declarations;
pub mod policy;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, ClientConfig, Implementation};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::Value;
use tokio::sync::Semaphore;

pub use config::{ServerConfig, Transport};
use declarations::{declare, score, ToolEntry};
pub use policy::ToolPolicy;
use policy::Verdict;

use crate::approval::{self, Ask, RunApprovals};
use crate::host_call::{HostCall, HostCalls, HostError, HostErrorKind, HostReply, PendingReply};
use crate::metrics::ToolMetrics;

/// How long connecting to a server (starting it, the MCP handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest pause before a dead server is started again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The variables of this process a stdio server gets (besides its entry's `env`), as the MCP
/// SDKs' default environment has them.
const INHERITED_ENV: [&str; 8] = [
    "HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "TMPDIR",
];
/// The largest message read from a server at least (more with a larger result cap).
const MIN_MESSAGE_BYTES: usize = 64 << 20;
/// Most tools one search answers with.
const SEARCH_RESULTS: usize = 20;

type Client = RunningService<RoleClient, Listener>;

/// The client side of a connection: introduces mcp-v8, and hears when the server's tools
/// change, so the catalogue kept for it is read again.
struct Listener {
    info: ClientConfig,
    changed: Arc<std::sync::atomic::AtomicBool>,
}

impl rmcp::ClientHandler for Listener {
    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }

    async fn on_tool_list_changed(&self, _context: rmcp::service::NotificationContext<RoleClient>) {
        self.changed.store(true, Ordering::Release);
    }
}

/// The upstream servers and their connections.
#[derive(Debug)]
pub struct Upstreams {
    servers: BTreeMap<String, Upstream>,
    policy: ToolPolicy,
    metrics: ToolMetrics,
}

struct Upstream {
    config: ServerConfig,
    connection: tokio::sync::Mutex<Connection>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

enum Connection {
    /// Not started yet (or shut down).
    Idle,
    /// Connected; a stdio server's process is killed when this goes.
    Up {
        client: Arc<Client>,
        _process: Option<tokio::process::Child>,
        /// Its tools as last listed, until the server says they changed.
        tools: Option<Arc<Vec<ToolEntry>>>,
        changed: Arc<std::sync::atomic::AtomicBool>,
    },
    /// Failed or died; not tried again before `retry_at`.
    Down {
        failures: u32,
        retry_at: Instant,
        why: String,
    },
}

impl Upstreams {
    /// The servers of `configs` under `policy`; none is started yet.
    pub fn new(configs: Vec<ServerConfig>, policy: ToolPolicy) -> Self {
        let servers = configs
            .into_iter()
            .map(|config| {
                let upstream = Upstream {
                    config,
                    connection: tokio::sync::Mutex::new(Connection::Idle),
                };
                (upstream.config.name.clone(), upstream)
            })
            .collect();
        Self {
            servers,
            policy,
            metrics: ToolMetrics::default(),
        }
    }

    /// The servers' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.servers.keys().map(String::as_str)
    }

    /// What has been counted of the calls to upstream tools.
    pub fn metrics(&self) -> &ToolMetrics {
        &self.metrics
    }

    /// Whether the policy leaves any tool to a person (`--ask-tools`).
    pub fn asks(&self) -> bool {
        !self.policy.ask.is_empty()
    }

    /// A run's way to the tools, counting its calls; `approvals` asks a person about the
    /// calls the policy leaves to one.
    pub fn for_run(self: &Arc<Self>, approvals: Option<RunApprovals>) -> Arc<RunTools> {
        Arc::new(RunTools {
            upstreams: Arc::clone(self),
            calls: AtomicUsize::new(0),
            in_flight: Arc::new(Semaphore::new(self.policy.concurrent_calls.max(1))),
            approvals,
        })
    }

    /// Closes every connection (stdio servers are stopped).
    pub async fn shutdown(&self) {
        for upstream in self.servers.values() {
            let mut connection = upstream.connection.lock().await;
            if let Connection::Up { client, .. } =
                std::mem::replace(&mut *connection, Connection::Idle)
            {
                client.cancellation_token().cancel();
            }
        }
    }

    /// The TypeScript declarations of the tools that match `query` (every word, in a tool's
    /// server, name or description; an exact `server.tool` finds that tool), best first.
    /// Servers that cannot be reached are named at the end.
    pub async fn search(&self, query: &str) -> String {
        let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
        let (entries, unreachable) = self.catalogue().await;
        let mut found: Vec<(usize, &ToolEntry)> = entries
            .iter()
            .filter_map(|e| {
                let exact = format!("{}.{}", e.server, e.name) == query.trim();
                let score = if exact {
                    Some(usize::MAX)
                } else {
                    score(e, &words)
                };
                score.map(|s| (s, e))
            })
            .collect();
        found.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then((&a.1.server, &a.1.name).cmp(&(&b.1.server, &b.1.name)))
        });
        let total = found.len();
        found.truncate(SEARCH_RESULTS);
        // Grouped by server for the declaration, best server first.
        let mut shown: Vec<&ToolEntry> = Vec::new();
        for (_, entry) in &found {
            if !shown.iter().any(|e| e.server == entry.server) {
                shown.extend(
                    found
                        .iter()
                        .map(|(_, e)| *e)
                        .filter(|e| e.server == entry.server),
                );
            }
        }
        let mut text = if shown.is_empty() {
            match query.trim() {
                "" => "// No upstream tools are available.\n".to_string(),
                q => format!("// No upstream tool matches {q:?}.\n"),
            }
        } else {
            declare(&shown)
        };
        if total > shown.len() {
            text.push_str(&format!(
                "// {} more match; narrow the search to see them.\n",
                total - shown.len()
            ));
        }
        for (server, why) in unreachable {
            text.push_str(&format!("// Server {server} is unavailable: {why}\n"));
        }
        text
    }

    /// The declaration of tool `name` (`server.tool`), if there is such a tool code may call.
    pub async fn describe(&self, name: &str) -> Option<String> {
        let (entries, _) = self.catalogue().await;
        let entry = entries
            .iter()
            .find(|e| name.strip_prefix(e.server.as_str()) == Some(&format!(".{}", e.name)))?;
        Some(declare(&[entry]))
    }

    /// Every tool code may call of every server that can be reached, and why the others
    /// cannot be reached. Tools the policy refuses are left out: an agent need not see them.
    async fn catalogue(&self) -> (Vec<ToolEntry>, Vec<(String, String)>) {
        let listed = futures::future::join_all(
            self.servers
                .values()
                .map(|u| async move { (u.config.name.clone(), self.list(u, false).await) }),
        )
        .await;
        let mut entries = Vec::new();
        let mut unreachable = Vec::new();
        for (server, listed) in listed {
            match listed {
                Ok(tools) => entries.extend(
                    tools
                        .iter()
                        .filter(|t| self.policy.check(&t.server, &t.name, t.destructive).is_ok())
                        .cloned(),
                ),
                Err(e) => unreachable.push((server, e.message)),
            }
        }
        (entries, unreachable)
    }

    /// The tools of `upstream`: as listed before on this connection, unless the server said
    /// they changed (or `fresh`).
    async fn list(
        &self,
        upstream: &Upstream,
        fresh: bool,
    ) -> Result<Arc<Vec<ToolEntry>>, HostError> {
        let client = self.client(upstream).await?;
        {
            let connection = upstream.connection.lock().await;
            if let Connection::Up {
                client: kept,
                tools: Some(tools),
                changed,
                ..
            } = &*connection
            {
                if Arc::ptr_eq(kept, &client) && !fresh && !changed.load(Ordering::Acquire) {
                    return Ok(Arc::clone(tools));
                }
            }
        }
        let listed = tokio::time::timeout(CONNECT_TIMEOUT, client.peer().list_all_tools())
            .await
            .map_err(|_| {
                HostError::new(
                    HostErrorKind::Timeout,
                    format!("{} did not list its tools in time", upstream.config.name),
                )
            })?
            .map_err(|e| self.failed(upstream, &client, e))?;
        let tools: Arc<Vec<ToolEntry>> = Arc::new(
            listed
                .into_iter()
                .map(|tool| {
                    let annotations = tool.annotations.as_ref();
                    let read_only = annotations.and_then(|a| a.read_only_hint) == Some(true);
                    let destructive = annotations.and_then(|a| a.destructive_hint) == Some(true);
                    ToolEntry {
                        server: upstream.config.name.clone(),
                        name: tool.name.to_string(),
                        description: tool.description.as_deref().unwrap_or_default().to_string(),
                        input: Value::Object((*tool.input_schema).clone()),
                        output: tool.output_schema.map(|s| Value::Object((*s).clone())),
                        destructive: destructive && !read_only,
                    }
                })
                .collect(),
        );
        let mut connection = upstream.connection.lock().await;
        if let Connection::Up {
            client: kept,
            tools: cached,
            changed,
            ..
        } = &mut *connection
        {
            if Arc::ptr_eq(kept, &client) {
                changed.store(false, Ordering::Release);
                *cached = Some(Arc::clone(&tools));
            }
        }
        Ok(tools)
    }

    /// The connection to `upstream`: the one kept, or a new one.
    async fn client(&self, upstream: &Upstream) -> Result<Arc<Client>, HostError> {
        let mut connection = upstream.connection.lock().await;
        let failures = match &*connection {
            Connection::Up { client, .. } if !client.is_closed() => return Ok(Arc::clone(client)),
            // It died since: start it again at once.
            Connection::Up { .. } => 0,
            Connection::Idle => 0,
            Connection::Down {
                failures,
                retry_at,
                why,
            } => {
                let now = Instant::now();
                if now < *retry_at {
                    return Err(HostError::new(
                        HostErrorKind::Unavailable,
                        format!(
                            "server {} is unavailable ({why}); it is tried again in {:.0} s",
                            upstream.config.name,
                            (*retry_at - now).as_secs_f64().ceil()
                        ),
                    ));
                }
                *failures
            }
        };
        let largest = self
            .policy
            .result_bytes
            .saturating_mul(4)
            .max(MIN_MESSAGE_BYTES);
        match tokio::time::timeout(CONNECT_TIMEOUT, connect(&upstream.config, largest)).await {
            Ok(Ok((client, child, changed))) => {
                tracing::info!("upstream server {} connected", upstream.config.name);
                let client = Arc::new(client);
                *connection = Connection::Up {
                    client: Arc::clone(&client),
                    _process: child,
                    tools: None,
                    changed,
                };
                Ok(client)
            }
            result => {
                let why = match result {
                    Ok(Err(why)) => why,
                    _ => format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                };
                let pause = backoff(failures);
                tracing::warn!(
                    "upstream server {} could not be started: {why}",
                    upstream.config.name
                );
                *connection = Connection::Down {
                    failures: failures + 1,
                    retry_at: Instant::now() + pause,
                    why: why.clone(),
                };
                Err(HostError::new(
                    HostErrorKind::Unavailable,
                    format!(
                        "server {} could not be started: {why}",
                        upstream.config.name
                    ),
                ))
            }
        }
    }

    /// The error for a request to `upstream` that failed; a broken connection is dropped, to
    /// be made again by the next call.
    fn failed(&self, upstream: &Upstream, client: &Arc<Client>, error: ServiceError) -> HostError {
        match error {
            ServiceError::McpError(e) => {
                HostError::new(HostErrorKind::Protocol, e.message.to_string())
            }
            ServiceError::Timeout { .. } => {
                HostError::new(HostErrorKind::Timeout, error.to_string())
            }
            other => {
                tracing::warn!("upstream server {}: {other}", upstream.config.name);
                client.cancellation_token().cancel();
                HostError::new(
                    HostErrorKind::Unavailable,
                    format!(
                        "the connection to server {} broke: {other}",
                        upstream.config.name
                    ),
                )
            }
        }
    }

    /// Calls `tool` of `server` with `arguments` (JSON text) under the policy.
    /// Calls `tool` of `server` with `arguments` under the policy, asking `approvals` first
    /// when the policy says so (with none, such a call is refused).
    async fn call_tool(
        &self,
        server: &str,
        tool: &str,
        arguments: &str,
        approvals: Option<&RunApprovals>,
    ) -> Result<String, HostError> {
        let Some(upstream) = self.servers.get(server) else {
            let known: Vec<&str> = self.names().collect();
            return Err(HostError::new(
                HostErrorKind::NotFound,
                format!(
                    "there is no server named {server:?} (servers: {})",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        let mut tools = self.list(upstream, false).await?;
        if !tools.iter().any(|t| t.name == tool) {
            // Added since it was listed, perhaps without saying so.
            tools = self.list(upstream, true).await?;
        }
        let Some(entry) = tools.iter().find(|t| t.name == tool) else {
            let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
            names.truncate(30);
            return Err(HostError::new(
                HostErrorKind::NotFound,
                format!(
                    "server {server} has no tool {tool:?} (its tools: {})",
                    names.join(", ")
                ),
            ));
        };
        let verdict = self.policy.check(server, tool, entry.destructive)?;
        let text = arguments;
        let arguments = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(HostError::new(
                    HostErrorKind::Protocol,
                    "the arguments must be a JSON object",
                ))
            }
        };
        if verdict == Verdict::Ask {
            let ask = Ask {
                action: format!("call `{server}.{tool}` with {}", approval::shown(text)),
                by: "--ask-tools",
                allow: format!("--allow-tools {server}.{tool}"),
            };
            approval::approve(approvals, &ask).await?;
        }
        let client = self.client(upstream).await?;
        let mut params = CallToolRequestParams::new(tool.to_string());
        params.arguments = Some(arguments);
        let timeout = self.policy.call_timeout;
        let result = match tokio::time::timeout(timeout, client.peer().call_tool(params)).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => return Err(self.failed(upstream, &client, e)),
            Err(_) => {
                return Err(HostError::new(
                    HostErrorKind::Timeout,
                    format!(
                        "no result within {} s (--tool-timeout-secs)",
                        timeout.as_secs_f64()
                    ),
                ))
            }
        };
        let text = serde_json::to_string(&result).map_err(|e| {
            HostError::new(
                HostErrorKind::Protocol,
                format!("the result cannot be read: {e}"),
            )
        })?;
        if text.len() > self.policy.result_bytes {
            return Err(HostError::new(
                HostErrorKind::TooLarge,
                format!(
                    "its result takes {:.1} MB, more than the {:.1} MB a tool result may take \
                     (--tool-result-bytes); ask the tool for less",
                    text.len() as f64 / 1e6,
                    self.policy.result_bytes as f64 / 1e6
                ),
            ));
        }
        Ok(text)
    }
}

/// The pause before the next try after `failures` failures in a row: none after the first
/// death, then 1 s, 2 s, 4 s ... up to [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    match failures {
        0 => Duration::from_secs(1),
        n => Duration::from_secs(1u64 << n.min(5)).min(MAX_BACKOFF),
    }
}

/// Starts or connects to a server and does the MCP handshake; messages up to `largest` bytes
/// are read (a larger result then fails as too large, not as a message dropped unseen).
/// A stdio server's process comes back too: it is killed when dropped.
async fn connect(
    config: &ServerConfig,
    largest: usize,
) -> Result<
    (
        Client,
        Option<tokio::process::Child>,
        Arc<std::sync::atomic::AtomicBool>,
    ),
    String,
> {
    let changed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let info = Listener {
        info: ClientConfig::new(
            Default::default(),
            Implementation::new("mcp-v8", env!("CARGO_PKG_VERSION")),
        ),
        changed: Arc::clone(&changed),
    };
    match &config.transport {
        Transport::Stdio {
            command,
            args,
            env,
            cwd,
        } => {
            let mut cmd = tokio::process::Command::new(command);
            // As the MCP SDKs start servers: a few harmless variables of this process and the
            // entry's own, never the rest (the store's credentials, say).
            cmd.env_clear();
            for name in INHERITED_ENV {
                if let Some(value) = std::env::var_os(name) {
                    cmd.env(name, value);
                }
            }
            cmd.args(args)
                .envs(env)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            if let Some(cwd) = cwd {
                cmd.current_dir(cwd);
            }
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("cannot start {command}: {e}"))?;
            let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
                return Err(format!("{command} has no pipes"));
            };
            let transport =
                AsyncRwTransport::new_client(stdout, stdin).with_max_line_length(largest);
            let client = info.serve(transport).await.map_err(|e| e.to_string())?;
            Ok((client, Some(child), changed))
        }
        Transport::Http { url, headers } => {
            let mut custom = std::collections::HashMap::new();
            for (name, value) in headers {
                let name = axum::http::HeaderName::try_from(name.as_str())
                    .map_err(|e| format!("header {name:?}: {e}"))?;
                let value = axum::http::HeaderValue::try_from(value.as_str())
                    .map_err(|_| format!("header {name}: the value is not valid"))?;
                custom.insert(name, value);
            }
            let mut config =
                StreamableHttpClientTransportConfig::with_uri(url.as_str()).custom_headers(custom);
            config.max_json_response_size = largest;
            config.max_sse_event_size = largest;
            let transport = StreamableHttpClientTransport::from_config(config);
            let client = info.serve(transport).await.map_err(|e| e.to_string())?;
            Ok((client, None, changed))
        }
    }
}

/// One run's way to the upstream tools ([`HostCalls`]): counts the run's calls and keeps to
/// the policy's limits.
#[derive(Debug)]
pub struct RunTools {
    upstreams: Arc<Upstreams>,
    calls: AtomicUsize,
    in_flight: Arc<Semaphore>,
    /// Who asks a person about the calls the policy leaves to one.
    approvals: Option<RunApprovals>,
}

impl HostCalls for RunTools {
    fn call(&self, call: HostCall) -> PendingReply {
        let upstreams = Arc::clone(&self.upstreams);
        match call {
            HostCall::Search { query } => Box::pin(async move {
                HostReply::Answer(Value::String(upstreams.search(&query).await).to_string())
            }),
            HostCall::Describe { name } => Box::pin(async move {
                match upstreams.describe(&name).await {
                    Some(declaration) => HostReply::Answer(Value::String(declaration).to_string()),
                    None => HostReply::Failed(HostError::new(
                        HostErrorKind::NotFound,
                        format!(
                            "there is no tool {name:?} code may call; name it as \"server.tool\" \
                             (see tools.$search)"
                        ),
                    )),
                }
            }),
            HostCall::Fetch(_) => Box::pin(async {
                HostReply::Failed(HostError::new(
                    HostErrorKind::Invalid,
                    "a request is not a tool call",
                ))
            }),
            HostCall::Tool {
                server,
                tool,
                arguments,
            } => {
                let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
                let limit = upstreams.policy.calls_per_run;
                let in_flight = Arc::clone(&self.in_flight);
                let approvals = self.approvals.clone();
                Box::pin(async move {
                    let started = Instant::now();
                    let result = if n > limit {
                        Err(HostError::new(
                            HostErrorKind::Denied,
                            format!(
                                "this run has made its {limit} tool calls (--tool-calls-per-run)"
                            ),
                        ))
                    } else {
                        match in_flight.acquire_owned().await {
                            Ok(_slot) => {
                                let approvals = approvals.as_ref();
                                upstreams
                                    .call_tool(&server, &tool, &arguments, approvals)
                                    .await
                            }
                            Err(_) => Err(HostError::new(
                                HostErrorKind::Unavailable,
                                "the server is stopping",
                            )),
                        }
                    };
                    let outcome = match &result {
                        Ok(_) => "ok",
                        Err(e) => e.kind.as_str(),
                    };
                    upstreams
                        .metrics
                        .record(&server, &tool, outcome, started.elapsed());
                    match &result {
                        Ok(_) => {
                            tracing::debug!("tool {server}.{tool}: ok in {:?}", started.elapsed())
                        }
                        Err(e) => tracing::info!("tool {server}.{tool}: {}", e.message),
                    }
                    match result {
                        Ok(text) => HostReply::Answer(text),
                        Err(e) => HostReply::Failed(e),
                    }
                })
            }
        }
    }
}
