//! The tools, as thin handlers: each checks its arguments, asks the runtime, and renders what
//! comes back. Both `run_js` tools share one path, [`McpServer::run_code`]. The descriptions
//! are the Markdown files beside this one.

use std::future::Future;
use std::sync::Arc;

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResponse, CallToolResult, ErrorData, Resource};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};
use serde::Serialize;

use super::answer::{run_result, structured, tool_error};
use super::args::*;
use super::{McpServer, PAGE_SIZE};
use crate::engine::{self, Console};
use crate::job::Caller;
use crate::outputs::{self, Outputs};
use crate::report::Reporting;
use crate::runtime::{self, CallError, CallLimits, CallOutcome, Owner, Runtime, SaveTo};
use crate::schema;

impl McpServer {
    /// The one path of both `run_js` tools: the reports the client asked for, who asks its
    /// user about calls from code on `heap`, the call (`run`, given the runtime and what the
    /// caller lends it), and its answer within the budget (`answer`, given the result, the
    /// console, the budget and where whole results are kept).
    async fn run_code<R, T, Call, Ran>(
        &self,
        context: RequestContext<RoleServer>,
        limits: CallLimits,
        heap: Option<&str>,
        run: Call,
        answer: impl FnOnce(R, &Console, usize, &Outputs, &Owner) -> (T, Option<Resource>)
            + Send
            + 'static,
    ) -> Result<CallToolResponse, ErrorData>
    where
        Call: FnOnce(Arc<Runtime>, CallLimits, Caller) -> Ran + Send + 'static,
        Ran: Future<Output = CallOutcome<R>> + Send + 'static,
        R: Send + 'static,
        T: Serialize + Send + 'static,
    {
        let budget = self.answer_budget(&limits);
        let owner = self.owner(&context)?;
        let call = self.calls.enter();
        let reporting = self.reporting(&context, heap.unwrap_or("run_js").to_string());
        let status = reporting.as_ref().map(Reporting::status);
        let (approver, questions) = self.approver(&context, heap);
        let runtime = Arc::clone(&self.runtime);
        let outputs = Arc::clone(&self.outputs);
        let work = async move {
            let live = reporting.as_ref().map(Reporting::batches);
            let reply = run(runtime, limits, Caller { live, approver }).await;
            if let Some(reporting) = reporting {
                reporting.finish().await;
            }
            drop(call);
            let result = reply
                .result
                .map(|ran| answer(ran, &reply.console, budget, &outputs, &owner));
            run_result(result, &reply.console, budget)
        };
        self.respond(&context, work, status, questions).await
    }
}

#[tool_router(router = output_tools, vis = "pub(crate)")]
impl McpServer {
    /// `read_output`.
    #[tool(
        description = include_str!("tools/read_output.md"),
        title = "Read a whole result",
        input_schema = schema::input::<ReadOutputArgs>(),
        output_schema = schema::output::<ReadOutputOutput>(),
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn read_output(
        &self,
        context: RequestContext<RoleServer>,
        Parameters(args): Parameters<ReadOutputArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let Some(text) = self.outputs.get(&self.owner(&context)?, &args.uri) else {
            return tool_error(CallError::OutputGone { uri: args.uri });
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
        description = include_str!("tools/run_js.md"),
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
        // A new heap is named here, so that its reports carry the name.
        let heap = match (&args.save_as, args.heap) {
            (None, None) => Some(runtime::generated_name()),
            (_, heap) => heap,
        };
        let logger = args.save_as.clone().or_else(|| heap.clone());
        let save_to = match args.save_as {
            Some(to) => SaveTo::Fork {
                to,
                overwrite: args.overwrite.unwrap_or(false),
            },
            None => SaveTo::Same,
        };
        let code = args.code;
        let owner = self.owner(&context)?;
        let run = move |runtime: Arc<Runtime>, limits, caller| async move {
            runtime
                .run_saving_to(&owner, code, heap, save_to, limits, caller)
                .await
        };
        let answer =
            |run: runtime::HeapRun, console: &Console, budget, outputs: &Outputs, owner: &Owner| {
                let heap = run.heap.clone();
                let rest = |read_output: &str| {
                    format!(
                        "The whole result is `_` in heap '{heap}' (unless the code made `_` its \
                     own): page through it in the next call, e.g. `_.slice(0, 100)`, \
                     `Object.keys(_)`, `_.length`.{read_output}"
                    )
                };
                let (answer, link) =
                    RunAnswer::new(run.completion, console, budget, outputs, owner, rest);
                let output = RunJsOutput {
                    answer,
                    heap: run.heap,
                    retries: run.retries,
                    notice: run.notice,
                    forked_from: run.forked_from,
                };
                (output, link)
            };
        self.run_code(context, limits, logger.as_deref(), run, answer)
            .await
    }

    /// `list_heaps`.
    #[tool(
        description = include_str!("tools/list_heaps.md"),
        title = "List heaps",
        input_schema = schema::input::<ListArgs>(),
        output_schema = schema::output::<HeapList>(),
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_heaps(
        &self,
        context: RequestContext<RoleServer>,
        Parameters(args): Parameters<ListArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let owner = self.owner(&context)?;
        match self
            .runtime
            .list_page(&owner, args.cursor.as_deref(), PAGE_SIZE)
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
        description = include_str!("tools/storage_stats.md"),
        title = "Heap store statistics",
        output_schema = schema::output::<StatsOutput>(),
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn storage_stats(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        // A tenant sees its own figures, not the store's (which count every tenant).
        match self.owner(&context)? {
            Owner::Server => structured(&StatsOutput {
                store: Some(self.runtime.storage_stats()),
                tenant: None,
            }),
            Owner::Tenant(tenant) => match self.runtime.tenant_stats(&tenant).await {
                Ok(stats) => structured(&StatsOutput {
                    store: None,
                    tenant: Some(stats),
                }),
                Err(e) => tool_error(e),
            },
        }
    }

    /// `copy_heap`.
    #[tool(
        description = include_str!("tools/copy_heap.md"),
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
        context: RequestContext<RoleServer>,
        Parameters(args): Parameters<CopyArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let owner = self.owner(&context)?;
        let _call = self.calls.enter();
        let overwrite = args.overwrite.unwrap_or(false);
        let copied = self
            .runtime
            .copy(&owner, &args.from, &args.to, overwrite, args.at_record)
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
        description = include_str!("tools/heap_history.md"),
        title = "Heap history",
        input_schema = schema::input::<HistoryArgs>(),
        output_schema = schema::output::<HistoryOutput>(),
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn heap_history(
        &self,
        context: RequestContext<RoleServer>,
        Parameters(args): Parameters<HistoryArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let owner = self.owner(&context)?;
        let limit = args.limit.unwrap_or(20).clamp(1, 1000) as usize;
        match self.runtime.history(&owner, &args.heap, limit).await {
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
        description = include_str!("tools/delete_heap.md"),
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
        context: RequestContext<RoleServer>,
        Parameters(args): Parameters<HeapArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let owner = self.owner(&context)?;
        let _call = self.calls.enter();
        match self.runtime.delete(&owner, &args.heap).await {
            Ok(()) => structured(&Deleted { deleted: args.heap }),
            Err(e) => tool_error(e),
        }
    }
}

#[tool_router(router = upstream_tools, vis = "pub(crate)")]
impl McpServer {
    /// `search_tools`: only on a server with upstream servers.
    #[tool(
        description = include_str!("tools/search_tools.md"),
        title = "Find tools for code",
        input_schema = schema::input::<SearchToolsArgs>(),
        output_schema = schema::output::<SearchToolsOutput>(),
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn search_tools(
        &self,
        Parameters(args): Parameters<SearchToolsArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let declarations = match self.runtime.tools() {
            Some(tools) => {
                tools
                    .search(args.query.as_deref().unwrap_or_default())
                    .await
            }
            None => "// No upstream servers are configured (--mcp-config).\n".into(),
        };
        let mut result =
            CallToolResult::success(vec![rmcp::model::ContentBlock::text(declarations.clone())]);
        result.structured_content = serde_json::to_value(SearchToolsOutput { declarations }).ok();
        Ok(result)
    }
}

#[tool_router(router = stateless_tools, vis = "pub(crate)")]
impl McpServer {
    /// Stateless `run_js`.
    #[tool(
        name = "run_js",
        description = include_str!("tools/run_js_stateless.md"),
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
        let code = args.code;
        let owner = self.owner(&context)?;
        let run = move |runtime: Arc<Runtime>, limits, caller| async move {
            runtime.run_stateless(&owner, code, limits, caller).await
        };
        let answer = |completion, console: &Console, budget, outputs: &Outputs, owner: &Owner| {
            let rest = |read_output: &str| {
                format!(
                    "Nothing is kept between calls: run the code again returning a part of \
                     the result (e.g. `rows.slice(0, 100)`) or a summary of it.{read_output}"
                )
            };
            RunAnswer::new(completion, console, budget, outputs, owner, rest)
        };
        self.run_code(context, limits, None, run, answer).await
    }
}
