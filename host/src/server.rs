//! The MCP face of the [`Runtime`]: tools `run_js`, `list_heaps`, `delete_heap`, and heaps
//! as `heap://<name>` resources. Thin: every decision lives in the runtime.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CacheScope, CallToolResult, CompleteRequestParams, CompleteResult, CompletionInfo,
    ContentBlock, ErrorData, Implementation, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ProtocolVersion,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Reference, Resource,
    ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig,
};
use rmcp::model::{
    CallToolResponse, CancelTaskParams, CreateTaskResult, GetTaskParams, GetTaskResult,
    UpdateTaskParams,
};
#[allow(deprecated)] // logging: see `report`
use rmcp::model::{LoggingLevel, SetLevelRequestParams};
use rmcp::service::RequestContext;
use rmcp::task_manager::{TaskExit, TaskManager, TaskOptions};
use rmcp::{tool, tool_handler, tool_router, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::engine::{
    self, line_size, Completion, Console, ConsolePreview, LogLine, BYTES_PER_TOKEN,
};
use crate::metrics::StorageStats;
use crate::outputs::{self, Outputs};
use crate::report::{self, Reporting};
use crate::runtime::{self, CallError, CallLimits, Listed, Runtime, SaveTo};
use crate::schema;

const RESOURCE_SCHEME: &str = "heap://";
/// The resource template of a heap; completions fill in `heap`.
const HEAP_TEMPLATE: &str = "heap://{heap}";
/// Most heaps in one page of `list_heaps` or `resources/list`.
pub const PAGE_SIZE: usize = 1000;

/// Arguments of `run_js` on a stateful server.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunJsArgs {
    /// JavaScript or TypeScript source. The value of its last statement is the result.
    pub code: String,
    /// Heap to run on: 1-128 characters of A-Z a-z 0-9 . _ - (not starting with '.').
    /// Omit it to start a new heap; the result names it.
    #[serde(default)]
    pub heap: Option<String>,
    /// Time limit for this call in seconds, at most the server's.
    #[serde(default, deserialize_with = "schema::lenient")]
    pub timeout_secs: Option<f64>,
    /// JavaScript heap limit for this call in MB, at most the server's.
    #[serde(default, deserialize_with = "schema::lenient")]
    pub heap_memory_max_mb: Option<u64>,
    /// Most tokens this answer may take (result and console), at most the server's.
    #[serde(default, deserialize_with = "schema::lenient")]
    pub max_output_tokens: Option<u64>,
    /// Fork: run on `heap`'s state (an empty heap if `heap` is omitted) and save the result
    /// as this new heap instead; `heap` stays as it was.
    #[serde(default)]
    pub save_as: Option<String>,
    /// With `save_as`: replace that heap if it exists (otherwise that is an error).
    #[serde(default)]
    pub overwrite: Option<bool>,
}

/// Arguments of `copy_heap`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct CopyArgs {
    /// The heap to copy.
    pub from: String,
    /// The new heap.
    pub to: String,
    /// Replace `to` if it exists (otherwise that is an error).
    #[serde(default)]
    pub overwrite: Option<bool>,
    /// Copy `from` as it was right after this record of its history (`heap_history`), not as
    /// it is now.
    #[serde(default, deserialize_with = "schema::lenient")]
    pub at_record: Option<u64>,
}

/// Arguments of `heap_history`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct HistoryArgs {
    /// The heap's name.
    pub heap: String,
    /// Most calls to show, the latest (default 20, at most 1000).
    #[serde(default, deserialize_with = "schema::lenient")]
    pub limit: Option<u64>,
}

/// What `heap_history` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HistoryOutput {
    /// The heap.
    pub heap: String,
    /// The record its stored snapshot stands at; `copy_heap` with `at_record` can start from
    /// it or any later record listed here.
    pub snapshot_record: u64,
    /// Its calls since that snapshot, oldest first.
    pub calls: Vec<HistoryEntry>,
    /// Earlier calls since the snapshot not shown (beyond `limit`).
    pub left_out: usize,
}

/// One committed call in `heap_history`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HistoryEntry {
    /// Its record's number.
    pub record: u64,
    /// When it was committed, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The start of its code.
    pub code: String,
    /// The start of what it returned.
    pub output: String,
    /// Why its state was stored instead of its code, when a replay could not reproduce it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_state: Option<String>,
}

/// What `copy_heap` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CopyOutput {
    /// The heap copied.
    pub from: String,
    /// The new heap, holding the same state.
    pub to: String,
    /// Its stored size in bytes.
    pub size: u64,
    /// Its snapshot's size before compression.
    pub raw_size: u64,
}

/// What `delete_heap` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Deleted {
    /// The heap deleted.
    pub deleted: String,
}

/// Arguments of `run_js` on a stateless server.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct StatelessRunJsArgs {
    /// JavaScript or TypeScript source. The value of its last statement is the result.
    pub code: String,
    /// Time limit for this call in seconds, at most the server's.
    #[serde(default, deserialize_with = "schema::lenient")]
    pub timeout_secs: Option<f64>,
    /// JavaScript heap limit for this call in MB, at most the server's.
    #[serde(default, deserialize_with = "schema::lenient")]
    pub heap_memory_max_mb: Option<u64>,
    /// Most tokens this answer may take (result and console), at most the server's.
    #[serde(default, deserialize_with = "schema::lenient")]
    pub max_output_tokens: Option<u64>,
}

fn call_limits(
    timeout_secs: Option<f64>,
    heap_mb: Option<u64>,
    tokens: Option<u64>,
) -> Result<CallLimits, CallError> {
    let timeout = timeout_secs
        .map(|secs| {
            Duration::try_from_secs_f64(secs).map_err(|_| {
                CallError::InvalidLimit(format!("timeout_secs {secs} is not a duration"))
            })
        })
        .transpose()?;
    let heap_bytes = heap_mb
        .map(|mb| {
            usize::try_from(mb)
                .ok()
                .and_then(|mb| mb.checked_mul(1 << 20))
                .ok_or_else(|| {
                    CallError::InvalidLimit(format!("heap_memory_max_mb {mb} is too large"))
                })
        })
        .transpose()?;
    let answer_tokens = tokens
        .map(|tokens| {
            usize::try_from(tokens).map_err(|_| {
                CallError::InvalidLimit(format!("max_output_tokens {tokens} is too large"))
            })
        })
        .transpose()?;
    Ok(CallLimits {
        timeout,
        heap_bytes,
        answer_tokens,
    })
}

/// Arguments of `list_heaps`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct ListArgs {
    /// `next_cursor` of the previous page, to get the next one.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// Arguments naming one heap.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct HeapArgs {
    /// The heap's name.
    pub heap: String,
}

/// What either `run_js` shows of a run within the answer's budget: the result, or a preview
/// of it when it does not fit, and the console's first and last lines.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunAnswer {
    /// The completion value (for a promise, what it resolved to): strings as they are,
    /// objects as JSON, other values as `String(value)` prints them; a preview when it does
    /// not fit the answer (`output_truncated`).
    pub output: String,
    /// `output` is not the whole result: a preview of it, or (over --max-output-bytes) cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub output_truncated: bool,
    /// With `output_truncated`: how big the whole result is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_size: Option<OutputSize>,
    /// With `output_truncated`: where the rest is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_rest: Option<String>,
    /// With `output_truncated`: the whole result's text, readable for 10 minutes with
    /// `read_output` or as this resource.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_uri: Option<String>,
    /// `console` output, in order (its first lines, when `logs_left_out`).
    pub logs: Vec<LogLine>,
    /// Console lines left out between `logs` and `logs_tail` to fit the answer.
    #[serde(skip_serializing_if = "is_zero_lines")]
    pub logs_left_out: usize,
    /// The last console lines, after those left out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logs_tail: Vec<LogLine>,
    /// Console output went over --console-max-bytes: lines between the first and the latest
    /// were dropped (counted in `logs_left_out`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub logs_truncated: bool,
    /// Timers still pending when the result settled; they were dropped.
    pub pending_timers: usize,
}

/// What a stateful `run_js` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunJsOutput {
    /// The result and console.
    #[serde(flatten)]
    pub answer: RunAnswer,
    /// The heap the code ran on; pass it again to continue.
    pub heap: String,
    /// How often the code ran again because another client or server stored the heap while
    /// it ran (with --save sync); only this last run's output and logs are returned.
    #[serde(skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// Something to know about the heap's past: e.g. that the store evicted or expired it,
    /// so it started empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
    /// With `save_as`: the heap the code ran on, left unchanged (`heap` is the new one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_lines(n: &usize) -> bool {
    *n == 0
}

/// The size of a whole result that an answer shows only part of.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct OutputSize {
    /// Bytes of its text.
    pub bytes: usize,
    /// Tokens, estimated as the budget estimates them (3 bytes each).
    pub tokens: usize,
}

/// What a stateless `run_js` returns: the result and console.
pub type StatelessRunJsOutput = RunAnswer;

/// One heap in `list_heaps`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HeapInfo {
    /// Heap name.
    pub heap: String,
    /// Size of the stored snapshot in bytes (compressed).
    pub size: u64,
    /// Size of the snapshot before compression, in bytes, when known without reading it
    /// (always for the memory store; for plugin stores, heaps this server has used).
    pub raw_size: Option<u64>,
    /// Last write, in milliseconds since the Unix epoch.
    pub last_modified_ms: u64,
}

/// What `list_heaps` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HeapList {
    /// Heaps, by name: up to 1000 per page.
    pub heaps: Vec<HeapInfo>,
    /// Present when there are more heaps: pass it as `cursor` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl From<Listed> for HeapInfo {
    fn from(listed: Listed) -> Self {
        let m = listed.meta;
        let last_modified_ms = m
            .last_modified
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self {
            heap: m.name,
            size: m.size,
            raw_size: listed.raw_size,
            last_modified_ms,
        }
    }
}

/// Counts things in progress (tool calls, responses being written), so that shutdown can
/// wait for them.
#[derive(Debug)]
pub struct Counter(tokio::sync::watch::Sender<usize>);

impl Default for Counter {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(0))
    }
}

impl Counter {
    /// Counts one more until the returned guard is dropped.
    pub fn enter(self: &Arc<Self>) -> CounterGuard {
        self.0.send_modify(|n| *n += 1);
        CounterGuard(Arc::clone(self))
    }

    /// Returns once nothing is in progress.
    pub async fn idle(&self) {
        let mut running = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = running.wait_for(|n| *n == 0).await;
    }
}

/// One thing in progress; see [`Counter::enter`].
pub struct CounterGuard(Arc<Counter>);

impl Drop for CounterGuard {
    fn drop(&mut self) {
        self.0 .0.send_modify(|n| *n -= 1);
    }
}

/// The MCP server. Cheap to clone; clones share the runtime.
#[derive(Clone)]
pub struct McpServer {
    runtime: Arc<Runtime>,
    stateless: bool,
    calls: Arc<Counter>,
    tool_router: ToolRouter<Self>,
    /// The level the client set with `logging/setLevel`: this session's own.
    #[allow(deprecated)] // logging: see `report`
    log_level: Arc<Mutex<Option<LoggingLevel>>>,
    /// Calls running as tasks, shared by every session (a task outlives its request).
    tasks: TaskManager,
    /// Whole results whose answers showed a preview, shared by every session.
    outputs: Arc<Outputs>,
}

impl McpServer {
    /// A server with heaps (`stateless == false`) or without.
    pub fn new(runtime: Arc<Runtime>, stateless: bool) -> Self {
        let mut tool_router = if stateless {
            Self::stateless_tools()
        } else {
            Self::heap_tools()
        };
        tool_router += Self::output_tools();
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
        }
        Self {
            runtime,
            stateless,
            calls: Arc::new(Counter::default()),
            tool_router,
            log_level: Arc::default(),
            tasks: TaskManager::new(),
            outputs: Arc::default(),
        }
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
            status: takes_tasks(context),
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
    pub fn calls(&self) -> Arc<Counter> {
        Arc::clone(&self.calls)
    }
}

fn structured<T: Serialize>(value: &T) -> Result<CallToolResult, ErrorData> {
    serde_json::to_value(value)
        .map(CallToolResult::structured)
        .map_err(|e| ErrorData::internal_error(format!("could not encode the result: {e}"), None))
}

fn tool_error(error: CallError) -> Result<CallToolResult, ErrorData> {
    Ok(CallToolResult::error(vec![ContentBlock::text(
        error.to_string(),
    )]))
}

impl RunAnswer {
    /// What an answer within `budget` bytes shows of a run: the whole result when it fits,
    /// else its preview, with the whole kept in `outputs` and `rest` saying where else it is
    /// (given how to read it from `outputs`); and a link to the kept result.
    fn new(
        completion: Completion,
        console: &Console,
        budget: usize,
        outputs: &Outputs,
        rest: impl FnOnce(&str) -> String,
    ) -> (Self, Option<Resource>) {
        let size = completion.size;
        let (output, output_uri) = match completion.preview {
            Some(preview) => (preview, outputs.keep(completion.output)),
            None => (completion.output, None),
        };
        let output_truncated = output_uri.is_some() || completion.output_truncated;
        let shown = shown_console(console, budget, engine::json_len(&output));
        let link = output_uri.as_ref().map(|uri| {
            Resource::new(uri.clone(), "output")
                .with_description("The whole result of this call, for 10 minutes")
                .with_mime_type("text/plain")
                .with_size(size as u64)
        });
        let read_output = match &output_uri {
            Some(uri) => format!(
                " Its text is readable for 10 minutes with `read_output` (uri '{uri}', offset, \
                 limit) or as that resource."
            ),
            None => String::new(),
        };
        let answer = Self {
            output,
            output_truncated,
            output_size: output_truncated.then(|| OutputSize {
                bytes: size,
                tokens: size.div_ceil(BYTES_PER_TOKEN),
            }),
            output_rest: output_truncated.then(|| rest(&read_output)),
            output_uri,
            logs: shown.head,
            logs_left_out: shown.left_out,
            logs_tail: shown.tail,
            logs_truncated: console.dropped.is_some(),
            pending_timers: completion.pending_timers,
        };
        (answer, link)
    }
}

/// The console within what a result of `result` bytes leaves of `budget`.
fn shown_console(console: &Console, budget: usize, result: usize) -> ConsolePreview {
    let size = console.lines.iter().map(line_size).sum();
    let (_, share) = engine::split(budget, result, size);
    engine::console_preview(console, share)
}

/// A console as text: its lines, and where lines were left out, a line saying so.
fn console_text(console: &ConsolePreview) -> String {
    let line = |l: &LogLine| format!("[{}] {}\n", l.level, l.text);
    let mut text: String = console.head.iter().map(line).collect();
    if console.left_out > 0 {
        text.push_str(&format!(
            "… [{} lines left out] …\n",
            engine::group(console.left_out)
        ));
    }
    text.extend(console.tail.iter().map(line));
    text
}

/// A run's result as JSON (structured and as text, the console in it) and a link to the
/// whole result when only a preview is shown; a failure as an error text followed by the
/// console (within `budget`).
fn run_result<T: Serialize>(
    result: Result<(T, Option<Resource>), CallError>,
    console: &Console,
    budget: usize,
) -> Result<CallToolResult, ErrorData> {
    let printed = !console.lines.is_empty();
    match result {
        Ok((value, link)) => {
            let mut result = structured(&value)?;
            result.content.extend(link.map(ContentBlock::resource_link));
            Ok(result)
        }
        Err(error) => {
            let mut text = error.to_string();
            if printed {
                let shown = shown_console(console, budget, text.len());
                text.push_str("\n\nconsole output before the failure:\n");
                text.push_str(&console_text(&shown));
            }
            Ok(CallToolResult::error(vec![ContentBlock::text(text)]))
        }
    }
}

/// How long a call from a client that takes tasks may run before it becomes one: shorter
/// calls answer directly, without a round of polling.
pub const TASK_AFTER: Duration = Duration::from_secs(1);
/// How long a task's result stays retrievable after it ends (at least; longer when the
/// server's time limit is longer).
pub const TASK_TTL: Duration = Duration::from_secs(10 * 60);
/// The polling interval suggested to clients.
const TASK_POLL: Duration = Duration::from_millis(500);

impl McpServer {
    /// Answers a call with what `work` returns, or cancelled when the client cancels first.
    /// For a client that declared the tasks extension, a call still running after
    /// [`TASK_AFTER`] becomes a task: the client gets its id, and polls, waits for or cancels
    /// it with `tasks/get` and `tasks/cancel`.
    async fn respond(
        &self,
        context: &RequestContext<RoleServer>,
        work: impl std::future::Future<Output = Result<CallToolResult, ErrorData>> + Send + 'static,
        status: Option<watch::Receiver<String>>,
    ) -> Result<CallToolResponse, ErrorData> {
        let mut work = Box::pin(work);
        if !takes_tasks(context) {
            return match cancellable(context.ct.clone(), work).await {
                Some(result) => result.map(Into::into),
                None => cancelled().map(Into::into),
            };
        }
        tokio::select! {
            result = &mut work => return result.map(Into::into),
            () = context.ct.cancelled() => return cancelled().map(Into::into),
            () = tokio::time::sleep(TASK_AFTER) => {}
        }
        // A task may not outlive its TTL while it runs: give it room for the longest call.
        let ttl = TASK_TTL.max(self.runtime.limits().timeout * 2);
        let options = TaskOptions::new()
            .with_ttl_ms(u64::try_from(ttl.as_millis()).ok())
            .with_poll_interval_ms(u64::try_from(TASK_POLL.as_millis()).unwrap_or(500))
            .with_status_message("running");
        let task = self.tasks.spawn(options, move |task| {
            Box::pin(async move {
                let mut status = status;
                loop {
                    // Dropping the work on a cancel kills the worker running it; nothing is
                    // saved.
                    tokio::select! {
                        result = &mut work => return result.map_err(TaskExit::Error),
                        () = task.cancelled() => return Err(TaskExit::Cancelled),
                        line = next_status(&mut status) => match line {
                            Some(line) => task.set_status_message(line),
                            None => status = None,
                        },
                    }
                }
            })
        });
        Ok(CallToolResponse::Task(CreateTaskResult::new(task)))
    }
}

/// Whether the client declared the tasks extension.
fn takes_tasks(context: &RequestContext<RoleServer>) -> bool {
    context
        .client_capabilities()
        .is_some_and(|caps| caps.supports_tasks())
}

/// The next status line, or `None` once there will be no more (never, without a status).
async fn next_status(status: &mut Option<watch::Receiver<String>>) -> Option<String> {
    match status {
        Some(status) => match status.changed().await {
            Ok(()) => Some(status.borrow_and_update().clone()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

/// Runs `work` unless the client cancels the request first; dropping the work kills the
/// worker process running it, and nothing is saved.
async fn cancellable<T>(
    ct: CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        result = work => Some(result),
        () = ct.cancelled() => None,
    }
}

fn cancelled() -> Result<CallToolResult, ErrorData> {
    tool_error(CallError::Internal(
        "cancelled by the client; the heap was not changed".into(),
    ))
}

/// Arguments of `read_output`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReadOutputArgs {
    /// `output_uri` of the answer that showed a preview.
    pub uri: String,
    /// Byte to start at (moved back to a character boundary; default 0).
    #[serde(default, deserialize_with = "schema::lenient")]
    pub offset: Option<u64>,
    /// Most bytes to return (default and at most what fits this server's answer budget).
    #[serde(default, deserialize_with = "schema::lenient")]
    pub limit: Option<u64>,
}

/// What `read_output` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ReadOutputOutput {
    /// The text from `offset` on.
    pub text: String,
    /// The byte it starts at.
    pub offset: usize,
    /// Where the next part starts, when there is more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
    /// Bytes of the whole text.
    pub total_bytes: usize,
}

#[tool_router(router = output_tools, vis = "pub(crate)")]
impl McpServer {
    /// `read_output`.
    #[tool(
        description = "Read the whole result of a recent run_js call whose answer showed only a \
preview (`output_truncated`): pass its `output_uri`, and `offset` (a byte) and `limit` to page \
through the text; `next_offset` says where the next part starts. Results are kept for 10 minutes \
(64 MiB in all, the oldest go first), as rendered: up to the server's --max-output-bytes.",
        title = "Read a whole result",
        input_schema = schema::input::<ReadOutputArgs>(),
        output_schema = schema::output::<ReadOutputOutput>(),
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn read_output(
        &self,
        Parameters(args): Parameters<ReadOutputArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let Some(text) = self.outputs.get(&args.uri) else {
            return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "no result kept as '{}': results are kept for 10 minutes after their call \
                 (and the oldest go first past 64 MiB); run the code again",
                args.uri
            ))]));
        };
        let budget = self.runtime.limits().answer_bytes;
        let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let limit = args.limit.map_or(budget, to_usize).min(budget);
        let (part, offset) = outputs::slice(&text, args.offset.map_or(0, to_usize), limit);
        // The budget counts bytes as the answer carries them (escaped in JSON).
        let mut part = part;
        while engine::json_len(part) > limit && !part.is_empty() {
            let (shorter, _) = outputs::slice(part, 0, part.len() - part.len() / 8 - 1);
            part = shorter;
        }
        let end = offset + part.len();
        structured(&ReadOutputOutput {
            text: part.to_string(),
            offset,
            next_offset: (end < text.len()).then_some(end),
            total_bytes: text.len(),
        })
    }
}

#[tool_router(router = heap_tools, vis = "pub(crate)")]
impl McpServer {
    /// Stateful `run_js`.
    #[tool(
        name = "run_js",
        description = "Run JavaScript (or TypeScript: types are stripped, not checked) in a \
V8 isolate whose heap persists between calls, with REPL semantics: the value of the last \
statement is the result (`output`), whatever the statement (expression, if/else, try, loop, \
block); strings as they are, objects and arrays as JSON; a promise is awaited, and `await` works \
anywhere at the top level. Everything the code declares at the top level (var, let, const, \
function, class, destructuring) and globalThis properties are saved in the named `heap`: call \
again with the same `heap` to continue where you left off; a later call may declare the same \
let/const/class again. Omit `heap` to start a new one; the result tells you its name. To try \
something without changing a heap, pass `save_as`: the code runs on `heap`'s state and the result \
is saved as that new heap (a fork); `copy_heap` makes a checkpoint. \
console.log output comes back in `logs`; setTimeout and setInterval run on a virtual clock (Date \
follows it) until the result settles. The result stays in the heap as `_`: when it was too long \
to show whole, page through it in the next call (`_.slice(100, 200)`). A call that throws, times out or runs out of memory \
changes nothing; errors give the line and column in your code. Plain ECMAScript scripts: no \
modules (import, export, require), fetch, fs or DOM.",
        title = "Run JavaScript on a heap",
        input_schema = schema::input::<RunJsArgs>(),
        output_schema = schema::output::<RunJsOutput>(),
        annotations(read_only_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    async fn run_js(
        &self,
        context: RequestContext<RoleServer>,
        Parameters(args): Parameters<RunJsArgs>,
    ) -> Result<CallToolResponse, ErrorData> {
        let limits = match call_limits(
            args.timeout_secs,
            args.heap_memory_max_mb,
            args.max_output_tokens,
        ) {
            Ok(limits) => limits,
            Err(e) => return tool_error(e).map(Into::into),
        };
        let budget = self.answer_budget(&limits);
        let call = self.calls.enter();
        // A new heap is named here, so that its reports carry the name.
        let heap = match (&args.save_as, args.heap) {
            (None, None) => Some(runtime::generated_name()),
            (_, heap) => heap,
        };
        let logger = args.save_as.clone().or_else(|| heap.clone());
        let reporting = self.reporting(&context, logger.unwrap_or_else(|| "run_js".into()));
        let status = reporting.as_ref().map(Reporting::status);
        let save_to = match args.save_as {
            Some(to) => SaveTo::Fork {
                to,
                overwrite: args.overwrite.unwrap_or(false),
            },
            None => SaveTo::Same,
        };
        let runtime = Arc::clone(&self.runtime);
        let outputs = Arc::clone(&self.outputs);
        let work = async move {
            let live = reporting.as_ref().map(Reporting::batches);
            let reply = runtime
                .run_saving_to(args.code, heap, save_to, limits, live)
                .await;
            if let Some(reporting) = reporting {
                reporting.finish().await;
            }
            drop(call);
            let result = reply.result.map(|run| {
                let heap = run.heap.clone();
                let rest = |read_output: &str| {
                    format!(
                        "The whole result is `_` in heap '{heap}' (unless the code made `_` its \
                         own): page through it in the next call, e.g. `_.slice(0, 100)`, \
                         `Object.keys(_)`, `_.length`.{read_output}"
                    )
                };
                let (answer, link) =
                    RunAnswer::new(run.completion, &reply.console, budget, &outputs, rest);
                let output = RunJsOutput {
                    answer,
                    heap: run.heap,
                    retries: run.retries,
                    notice: run.notice,
                    forked_from: run.forked_from,
                };
                (output, link)
            });
            run_result(result, &reply.console, budget)
        };
        self.respond(&context, work, status).await
    }

    /// `list_heaps`.
    #[tool(
        description = "List the saved heaps with their snapshot size in bytes and last-modified \
time (milliseconds since the Unix epoch), 1000 per page: when `next_cursor` is present, call \
again with it as `cursor` for more.",
        title = "List heaps",
        input_schema = schema::input::<ListArgs>(),
        output_schema = schema::output::<HeapList>(),
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_heaps(
        &self,
        Parameters(args): Parameters<ListArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        match self
            .runtime
            .list_page(args.cursor.as_deref(), PAGE_SIZE)
            .await
        {
            Ok((heaps, next_cursor)) => structured(&HeapList {
                heaps: heaps.into_iter().map(HeapInfo::from).collect(),
                next_cursor,
            }),
            Err(e) => tool_error(e),
        }
    }

    /// `storage_stats`.
    #[tool(
        description = "Show what the heap store holds and how it has been doing since the server \
started: heaps, stored and raw (uncompressed) bytes, the size limit, hits, misses, puts, deletes, \
evictions, expirations, conflicts, errors and get/put latency percentiles.",
        title = "Heap store statistics",
        output_schema = schema::output::<StorageStats>(),
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn storage_stats(&self) -> Result<CallToolResult, ErrorData> {
        structured(&self.runtime.storage_stats())
    }

    /// `copy_heap`.
    #[tool(
        description = "Copy a heap to a new heap: a named checkpoint to return to or branch \
from. The copy is independent: later calls on either do not change the other. Fails if `to` \
exists, unless `overwrite` is true. With `at_record`, copies the heap as it was right after that \
call of its history (see heap_history).",
        title = "Copy a heap",
        input_schema = schema::input::<CopyArgs>(),
        output_schema = schema::output::<CopyOutput>(),
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn copy_heap(
        &self,
        Parameters(args): Parameters<CopyArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let _call = self.calls.enter();
        let overwrite = args.overwrite.unwrap_or(false);
        let copied = self
            .runtime
            .copy(&args.from, &args.to, overwrite, args.at_record)
            .await;
        match copied {
            Ok(copied) => structured(&CopyOutput {
                from: copied.from,
                to: copied.to,
                size: copied.size,
                raw_size: copied.raw_size,
            }),
            Err(e) => tool_error(e),
        }
    }

    /// `heap_history`.
    #[tool(
        description = "Show a heap's latest calls since its last snapshot, oldest first: record \
number, time, the start of the code and of its result. copy_heap with `at_record` branches from \
any of them (or from `snapshot_record`).",
        title = "Heap history",
        input_schema = schema::input::<HistoryArgs>(),
        output_schema = schema::output::<HistoryOutput>(),
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn heap_history(
        &self,
        Parameters(args): Parameters<HistoryArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let limit = args.limit.unwrap_or(20).clamp(1, 1000) as usize;
        match self.runtime.history(&args.heap, limit).await {
            Ok(history) => structured(&HistoryOutput {
                heap: args.heap,
                snapshot_record: history.snapshot_record,
                calls: history
                    .calls
                    .into_iter()
                    .map(|call| HistoryEntry {
                        record: call.record,
                        at_ms: call.at_ms,
                        code: call.code,
                        output: call.output,
                        stored_state: call.stored_state,
                    })
                    .collect(),
                left_out: history.left_out,
            }),
            Err(e) => tool_error(e),
        }
    }

    /// `delete_heap`.
    #[tool(
        description = "Delete a saved heap and everything in it. This cannot be undone.",
        title = "Delete a heap",
        input_schema = schema::input::<HeapArgs>(),
        output_schema = schema::output::<Deleted>(),
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn delete_heap(
        &self,
        Parameters(args): Parameters<HeapArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let _call = self.calls.enter();
        match self.runtime.delete(&args.heap).await {
            Ok(()) => structured(&Deleted { deleted: args.heap }),
            Err(e) => tool_error(e),
        }
    }
}

#[tool_router(router = stateless_tools, vis = "pub(crate)")]
impl McpServer {
    /// Stateless `run_js`.
    #[tool(
        name = "run_js",
        description = "Run JavaScript (or TypeScript: types are stripped, not checked) in a \
fresh V8 isolate, with REPL semantics: the value of the last statement is the result (`output`), \
whatever the statement (expression, if/else, try, loop, block); strings as they are, objects and \
arrays as JSON; a promise is awaited, and `await` works anywhere at the top level. console.log \
output comes back in `logs`. Nothing is kept between calls; errors give the line and column in \
your code. Plain ECMAScript scripts: no modules (import, export, require), fetch, fs or DOM.",
        title = "Run JavaScript",
        input_schema = schema::input::<StatelessRunJsArgs>(),
        output_schema = schema::output::<StatelessRunJsOutput>(),
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn run_js_stateless(
        &self,
        context: RequestContext<RoleServer>,
        Parameters(args): Parameters<StatelessRunJsArgs>,
    ) -> Result<CallToolResponse, ErrorData> {
        let limits = match call_limits(
            args.timeout_secs,
            args.heap_memory_max_mb,
            args.max_output_tokens,
        ) {
            Ok(limits) => limits,
            Err(e) => return tool_error(e).map(Into::into),
        };
        let budget = self.answer_budget(&limits);
        let call = self.calls.enter();
        let reporting = self.reporting(&context, "run_js".into());
        let status = reporting.as_ref().map(Reporting::status);
        let runtime = Arc::clone(&self.runtime);
        let outputs = Arc::clone(&self.outputs);
        let work = async move {
            let live = reporting.as_ref().map(Reporting::batches);
            let reply = runtime.run_stateless(args.code, limits, live).await;
            if let Some(reporting) = reporting {
                reporting.finish().await;
            }
            drop(call);
            let result = reply.result.map(|completion| {
                let rest = |read_output: &str| {
                    format!(
                        "Nothing is kept between calls: run the code again returning a part of \
                         the result (e.g. `rows.slice(0, 100)`) or a summary of it.{read_output}"
                    )
                };
                RunAnswer::new(completion, &reply.console, budget, &outputs, rest)
            });
            run_result(result, &reply.console, budget)
        };
        self.respond(&context, work, status).await
    }
}

/// How long a client may keep what never changes while the server runs (its tools, the heap
/// template) before asking again: a restart may change the limits the descriptions state.
const STATIC_TTL: Duration = Duration::from_secs(60 * 60);

/// The caching hints of a result, for a client on protocol 2026-07-28 or later (older ones
/// know none): `ttl` and whether any client may be served it (`Public`) or only the one that
/// asked (`Private`: heaps are the caller's data).
fn cache_hints(
    context: &RequestContext<RoleServer>,
    ttl: Duration,
    scope: CacheScope,
) -> (Option<u64>, Option<CacheScope>) {
    let knows = context
        .protocol_version()
        .is_some_and(|version| version >= ProtocolVersion::V_2026_07_28);
    let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    (knows.then_some(ttl), knows.then_some(scope))
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for McpServer {
    /// `tools/list`: the same for every client while the server runs, sorted by name.
    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut result = ListToolsResult::with_all_items(self.tool_router.list_all());
        (result.ttl_ms, result.cache_scope) = cache_hints(&context, STATIC_TTL, CacheScope::Public);
        Ok(result)
    }

    #[allow(deprecated)] // logging: see `report`
    fn get_info(&self) -> ServerConfig {
        let capabilities = if self.stateless {
            // Resources: the whole results that answers link to.
            ServerCapabilities::builder()
                .enable_logging()
                .enable_tools()
                .enable_resources()
                .enable_tasks()
                .build()
        } else {
            ServerCapabilities::builder()
                .enable_logging()
                .enable_completions()
                .enable_tools()
                .enable_resources()
                .enable_tasks()
                .build()
        };
        let instructions = if self.stateless {
            "Runs JavaScript with run_js. Each call starts from a clean slate."
        } else {
            "Runs JavaScript with run_js on named heaps that persist between calls. \
Use one heap per task and pass its name on every call."
        };
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("mcp-v8", env!("CARGO_PKG_VERSION")))
            .with_instructions(instructions)
    }

    /// `prompts/list`: none are offered (nor declared); the empty list is cacheable like the
    /// tools, for clients that ask anyway.
    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let mut result = ListPromptsResult::with_all_items(Vec::new());
        (result.ttl_ms, result.cache_scope) = cache_hints(&context, STATIC_TTL, CacheScope::Public);
        Ok(result)
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        // Every call may add or change a heap.
        let hints = cache_hints(&context, Duration::ZERO, CacheScope::Private);
        if self.stateless {
            let mut none = ListResourcesResult::with_all_items(Vec::new());
            (none.ttl_ms, none.cache_scope) = hints;
            return Ok(none);
        }
        let cursor = request.and_then(|r| r.cursor);
        let (heaps, next_cursor) = self
            .runtime
            .list_page(cursor.as_deref(), PAGE_SIZE)
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let resources = heaps
            .into_iter()
            .map(|listed| {
                let m = listed.meta;
                Resource::new(format!("{RESOURCE_SCHEME}{}", m.name), m.name.clone())
                    .with_description(format!("mcp-v8 heap '{}'", m.name))
                    .with_mime_type("application/json")
            })
            .collect();
        let mut page = ListResourcesResult::with_all_items(resources);
        page.next_cursor = next_cursor;
        (page.ttl_ms, page.cache_scope) = hints;
        Ok(page)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let hints = cache_hints(&context, STATIC_TTL, CacheScope::Public);
        if self.stateless {
            let mut none = ListResourceTemplatesResult::with_all_items(Vec::new());
            (none.ttl_ms, none.cache_scope) = hints;
            return Ok(none);
        }
        let template = ResourceTemplate::new(HEAP_TEMPLATE, "heap")
            .with_title("A heap")
            .with_description(
                "A saved heap's metadata: stored and raw size, version, last write, store",
            )
            .with_mime_type("application/json");
        let mut result = ListResourceTemplatesResult::with_all_items(vec![template]);
        (result.ttl_ms, result.cache_scope) = hints;
        Ok(result)
    }

    /// `tasks/get`: a call running as a task, or its result.
    async fn get_task(
        &self,
        request: GetTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        self.tasks
            .get_task(&request.task_id)
            .map(GetTaskResult::new)
    }

    /// `tasks/update`: run_js asks the client nothing, so there is nothing to deliver.
    async fn update_task(
        &self,
        request: UpdateTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.tasks
            .update_task(&request.task_id, request.input_responses)
    }

    /// `tasks/cancel`: stops the call (its worker is killed, nothing is saved).
    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.tasks.cancel_task(&request.task_id)
    }

    /// Sets the level at and above which console lines of this session's calls are sent as
    /// log messages while the calls run.
    #[allow(deprecated)] // logging: see `report`
    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        *self
            .log_level
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(request.level);
        Ok(())
    }

    /// Completes heap names by prefix for the `heap://{heap}` template; anything else has
    /// no completions.
    async fn complete(
        &self,
        request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let heaps = matches!(&request.r#ref, Reference::Resource(template)
            if template.uri == HEAP_TEMPLATE && request.argument.name == "heap");
        let (names, total) = if heaps && !self.stateless {
            self.runtime
                .names_starting_with(&request.argument.value, CompletionInfo::MAX_VALUES)
                .await
                .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
        } else {
            (Vec::new(), 0)
        };
        let more = total > names.len();
        let total = u32::try_from(total).ok();
        CompletionInfo::with_pagination(names, total, more)
            .map(CompleteResult::new)
            .map_err(|e| ErrorData::internal_error(e, None))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        if uri.starts_with(outputs::SCHEME) {
            let Some(text) = self.outputs.get(&uri) else {
                return Err(ErrorData::resource_not_found(
                    format!("no result kept as {uri} (results are kept for 10 minutes)"),
                    None,
                ));
            };
            let mut result = ReadResourceResult::new(vec![ResourceContents::text(
                text.to_string(),
                uri.clone(),
            )
            .with_mime_type("text/plain")]);
            // What a call returned never changes; it is the caller's.
            (result.ttl_ms, result.cache_scope) =
                cache_hints(&context, outputs::RETENTION, CacheScope::Private);
            return Ok(result.into());
        }
        let Some(name) = uri
            .strip_prefix(RESOURCE_SCHEME)
            .filter(|_| !self.stateless)
        else {
            return Err(ErrorData::resource_not_found(
                format!("no resource {uri}"),
                None,
            ));
        };
        let listed = match self.runtime.describe(name).await {
            Ok(Some(listed)) => listed,
            Ok(None) => {
                return Err(ErrorData::resource_not_found(
                    format!("no heap named '{name}'"),
                    None,
                ))
            }
            Err(CallError::InvalidName(e)) => {
                return Err(ErrorData::invalid_params(e.to_string(), None))
            }
            Err(e) => return Err(ErrorData::internal_error(e.to_string(), None)),
        };
        let backend = self.runtime.storage().info();
        let version = listed.meta.version.to_string();
        let info = HeapInfo::from(listed);
        let body = json!({
            "heap": info.heap,
            "size": info.size,
            "raw_size": info.raw_size,
            "version": version,
            "last_modified_ms": info.last_modified_ms,
            "storage": backend.name,
        });
        let mut result =
            ReadResourceResult::new(vec![ResourceContents::text(body.to_string(), uri.clone())
                .with_mime_type("application/json")]);
        // A heap's metadata changes with every call on it.
        (result.ttl_ms, result.cache_scope) =
            cache_hints(&context, Duration::ZERO, CacheScope::Private);
        Ok(result.into())
    }
}
