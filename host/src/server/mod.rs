//! The MCP face of the [`Runtime`]: its tools, heaps as `heap://<name>` resources, whole
//! results as `output://` resources, completions, tasks and logging levels. Thin: every
//! decision lives in the runtime.
//!
//! * [`args`]: what the tools take and return;
//! * `tools`: the tool handlers (descriptions in `tools/*.md`);
//! * `answer`: an outcome as a tool result;
//! * `approvals`: asking the client's user about calls from code (elicitation);
//! * `tasks`: long calls as tasks, and cancellation;
//! * `fixtures`: the conformance suite's fixture tools, behind a hidden flag;
//! * `resources`: heaps and whole results as resources;
//! * `handler`: the MCP surface that dispatches to them, with completions and logging.

use std::sync::{Arc, Mutex, PoisonError};

use rmcp::handler::server::router::tool::ToolRouter;
#[allow(deprecated)] // logging: see `report`
use rmcp::model::LoggingLevel;
use rmcp::service::RequestContext;
use rmcp::task_manager::TaskManager;
use rmcp::RoleServer;

use crate::engine::{self, BYTES_PER_TOKEN};
use crate::in_flight::InFlight;
use crate::outputs::Outputs;
use crate::report::{self, Reporting};
use crate::runtime::{CallLimits, Owner, Runtime};

mod answer;
mod approvals;
pub mod args;
mod fixtures;
mod handler;
mod resources;
mod tasks;
mod tools;

pub use tasks::{TASK_AFTER, TASK_TTL};

/// The tools that run code or change heaps: a tenant's token needs the `heaps:write` scope
/// to call them (every other request needs `heaps:read`).
pub const WRITE_TOOLS: [&str; 3] = ["run_js", "copy_heap", "delete_heap"];

/// Tasks whose owner is remembered, at most.
const TASK_OWNERS: usize = 100_000;

/// Most heaps in one page of `list_heaps` or `resources/list`.
pub const PAGE_SIZE: usize = 1000;

/// Where a request's owner (whose heaps it sees) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners {
    /// Every request acts for the server (stdio).
    Server,
    /// The HTTP access layer names the owner of each request; one without is refused.
    PerRequest,
}

/// What a server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Named heaps that persist between calls, and the tools to manage them.
    Heaps,
    /// A fresh isolate for every call; no heaps.
    Stateless,
}

/// The MCP server. Cheap to clone; clones share the runtime.
#[derive(Clone)]
pub struct McpServer {
    runtime: Arc<Runtime>,
    mode: Mode,
    calls: Arc<InFlight>,
    tool_router: ToolRouter<Self>,
    /// The level the client set with `logging/setLevel`: this session's own.
    #[allow(deprecated)] // logging: see `report`
    log_level: Arc<Mutex<Option<LoggingLevel>>>,
    /// Calls running as tasks, shared by every session (a task outlives its request).
    tasks: TaskManager,
    /// Whole results whose answers showed a preview, shared by every session.
    outputs: Arc<Outputs>,
    /// Where each request's owner comes from.
    owners: Owners,
    /// Whose each task is (the most recent ones; a task lives minutes).
    task_owners: Arc<Mutex<lru::LruCache<String, Owner>>>,
    /// Calls waiting for their client's answer to a question, shared by every session.
    parked: Arc<approvals::Parked>,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer").finish_non_exhaustive()
    }
}

impl McpServer {
    /// A server that offers what `mode` says.
    pub fn new(runtime: Arc<Runtime>, mode: Mode) -> Self {
        let mut tool_router = match mode {
            Mode::Heaps => Self::heap_tools(),
            Mode::Stateless => Self::stateless_tools(),
        };
        tool_router += Self::output_tools();
        let upstreams: Option<Vec<String>> = runtime
            .tools()
            .map(|tools| tools.names().map(str::to_string).collect());
        if upstreams.is_some() {
            tool_router += Self::upstream_tools();
        }
        // Descriptions are kept as wrapped Markdown beside the tools; clients get one line.
        for route in tool_router.map.values_mut() {
            if let Some(text) = route.attr.description.take() {
                route.attr.description = Some(text.trim_end().replace('\n', " ").into());
            }
        }
        // The description states this server's own limits, so an agent can plan for them.
        if let Some(route) = tool_router.map.get_mut("run_js") {
            let limits = runtime.limits();
            let general = route.attr.description.clone().unwrap_or_default();
            route.attr.description = Some(
                format!(
                    "{general} This server's limits: {} s per call (timeout_secs may ask for \
                     less), {} MB of JavaScript heap (heap_memory_max_mb may ask for less), {} \
                     of output and {} of console kept; {}.",
                    limits.timeout.as_secs_f64(),
                    limits.heap_bytes >> 20,
                    crate::storage::human_bytes(limits.output_bytes as u64),
                    crate::storage::human_bytes(limits.console_bytes as u64),
                    match limits.answer_bytes {
                        usize::MAX => "answers of any size".to_string(),
                        bytes => format!(
                            "answers of about {} tokens at most (max_output_tokens may ask for \
                             fewer): a longer result comes as a preview (output_truncated), a \
                             longer console as its first and last lines",
                            engine::group(bytes / BYTES_PER_TOKEN)
                        ),
                    }
                )
                .into(),
            );
            // Code reaches other servers' tools: its runs are no longer closed or read-only.
            if let Some(servers) = &upstreams {
                let mut more = include_str!("tools/run_js_tools.md")
                    .trim_end()
                    .replace('\n', " ")
                    .replace("SERVERS", &servers.join(", "));
                if runtime.tools().is_some_and(|tools| tools.asks()) {
                    more.push_str(
                        " Some tools wait for the user to approve each call (the wait does not \
                         count against the time limit); a refusal throws a ToolError of kind \
                         `declined`.",
                    );
                }
                let general = route.attr.description.clone().unwrap_or_default();
                route.attr.description = Some(format!("{general} {more}").into());
                if let Some(annotations) = &mut route.attr.annotations {
                    annotations.open_world_hint = Some(true);
                    annotations.read_only_hint = Some(false);
                }
            }
            // Code reaches the network: its runs are open-world too.
            if let Some(net) = runtime.net() {
                let secrets = net.secret_names();
                let more = include_str!("tools/run_js_fetch.md")
                    .trim_end()
                    .replace('\n', " ")
                    .replace("HOSTS", &reachable(net))
                    .replace(
                        "SECRETS",
                        &if secrets.is_empty() {
                            "none".to_string()
                        } else {
                            secrets
                                .iter()
                                .map(|s| format!("`{}{s}`", crate::net::PLACEHOLDER_PREFIX))
                                .collect::<Vec<_>>()
                                .join(", ")
                        },
                    );
                let general = route.attr.description.clone().unwrap_or_default();
                route.attr.description = Some(format!("{general} {more}").into());
                if let Some(annotations) = &mut route.attr.annotations {
                    annotations.open_world_hint = Some(true);
                }
            }
        }
        Self {
            runtime,
            mode,
            calls: Arc::new(InFlight::default()),
            tool_router,
            log_level: Arc::default(),
            tasks: TaskManager::new(),
            outputs: Arc::default(),
            owners: Owners::Server,
            task_owners: Arc::new(Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(TASK_OWNERS).unwrap_or(std::num::NonZeroUsize::MIN),
            ))),
            parked: Arc::new(approvals::Parked::new()),
        }
    }

    /// The same server, also offering the conformance suite's fixture tools (the hidden
    /// `--conformance-fixtures`): for the suite's `tasks-*` scenarios only.
    pub fn with_conformance_fixtures(mut self) -> Self {
        self.tool_router += Self::conformance_fixtures();
        self
    }

    /// The same server, with each request's owner named by the HTTP access layer.
    pub fn with_owners(self, owners: Owners) -> Self {
        Self { owners, ..self }
    }

    /// Whose heaps a request sees: the owner the access layer put on the HTTP request (the
    /// SSE transport puts it on the message itself), or the server's own on stdio.
    fn owner(&self, context: &RequestContext<RoleServer>) -> Result<Owner, rmcp::ErrorData> {
        if self.owners == Owners::Server {
            return Ok(Owner::Server);
        }
        context
            .extensions
            .get::<Owner>()
            .or_else(|| {
                context
                    .extensions
                    .get::<axum::http::request::Parts>()
                    .and_then(|parts| parts.extensions.get::<Owner>())
            })
            .cloned()
            .ok_or_else(|| {
                tracing::error!("a request reached the tools without an owner; refused");
                rmcp::ErrorData::internal_error("the request carries no authenticated owner", None)
            })
    }

    /// The server for a new client session: the same tools and runtime, a logging level of
    /// its own.
    pub fn for_session(&self) -> Self {
        Self {
            log_level: Arc::default(),
            ..self.clone()
        }
    }

    /// Starts the reports the client asked for on this call: console lines at its logging
    /// level (this request's `_meta` level, else the session's), progress for a token, and
    /// a status line for a client that takes tasks.
    fn reporting(&self, context: &RequestContext<RoleServer>, logger: String) -> Option<Reporting> {
        let session = *self
            .log_level
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let wanted = report::Wanted {
            level: context.meta.log_level().or(session),
            progress: context.meta.get_progress_token(),
            logger,
            status: tasks::takes_tasks(context),
        };
        report::start(context.peer.clone(), wanted)
    }

    /// Bytes an answer to a call with `limits` may take.
    fn answer_budget(&self, limits: &CallLimits) -> usize {
        let server = self.runtime.limits().answer_bytes;
        limits.answer_tokens.map_or(server, |tokens| {
            tokens.saturating_mul(BYTES_PER_TOKEN).min(server)
        })
    }

    /// The runtime behind the tools.
    pub fn runtime(&self) -> Arc<Runtime> {
        Arc::clone(&self.runtime)
    }

    /// The tool calls in progress.
    pub fn calls(&self) -> Arc<InFlight> {
        Arc::clone(&self.calls)
    }
}

/// The hosts `fetch` reaches, as the `run_js` description lists them.
fn reachable(net: &crate::net::Net) -> String {
    let allowed = net.hosts().join(", ");
    let asked = net.asked_hosts().join(", ");
    let asked = format!(
        "{asked}, each once the user approves (asked once per host per call; the wait does \
         not count against the time limit; a no rejects with `cause.kind` `declined`)"
    );
    match (allowed.is_empty(), net.asks()) {
        (_, false) => allowed,
        (true, true) => asked,
        (false, true) => format!("{allowed}; and {asked}"),
    }
}
