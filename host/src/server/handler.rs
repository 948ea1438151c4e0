//! The MCP surface beyond the tools, as rmcp's `ServerHandler`: the server's description,
//! resources (handed to `resources`), completions of heap names, tasks, the session's logging
//! level, and the caching hints every list and read carries.

use std::sync::PoisonError;
use std::time::Duration;

use rmcp::handler::server::tool::ToolCallContext;
#[allow(deprecated)] // logging: see `report`
use rmcp::model::SetLevelRequestParams;
use rmcp::model::{
    CacheScope, CancelTaskParams, CompleteRequestParams, CompleteResult, CompletionInfo, ErrorData,
    GetTaskParams, GetTaskResult, Implementation, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ProtocolVersion,
    ReadResourceRequestParams, ReadResourceResponse, Reference, ServerCapabilities, ServerConfig,
    UpdateTaskParams,
};
use rmcp::model::{CallToolRequestParams, CallToolResponse};
use rmcp::service::RequestContext;
use rmcp::{tool_handler, RoleServer, ServerHandler};

use super::resources::HEAP_TEMPLATE;
use super::{McpServer, Mode};

/// How long a client may keep what never changes while the server runs (its tools, the heap
/// template) before asking again: a restart may change the limits the descriptions state.
pub(super) const STATIC_TTL: Duration = Duration::from_secs(60 * 60);

/// The caching hints of a result, for a client on protocol 2026-07-28 or later (older ones
/// know none): `ttl` and whether any client may be served it (`Public`) or only the one that
/// asked (`Private`: heaps are the caller's data).
pub(super) fn cache_hints(
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
    /// `tools/call`: a retry that answers a parked call's question resumes it; any other
    /// call goes to its tool.
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.request_state.is_some() {
            return self.resume(request, context).await;
        }
        let call = ToolCallContext::new(self, request, context);
        self.tool_router.call(call).await
    }

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
        let capabilities = if self.mode == Mode::Stateless {
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
        let instructions = if self.mode == Mode::Stateless {
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
        self.resources_page(request, context).await
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        self.resource_templates(request, context).await
    }

    /// `tasks/get`: a call running as a task, or its result.
    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        self.tasks
            .get_task(self.own_task(&context, &request.task_id)?)
            .map(GetTaskResult::new)
    }

    /// `tasks/update`: run_js asks the client nothing, so there is nothing to deliver.
    async fn update_task(
        &self,
        request: UpdateTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.tasks.update_task(
            self.own_task(&context, &request.task_id)?,
            request.input_responses,
        )
    }

    /// `tasks/cancel`: stops the call (its worker is killed, nothing is saved).
    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.tasks
            .cancel_task(self.own_task(&context, &request.task_id)?)
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
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let owner = self.owner(&context)?;
        let heaps = matches!(&request.r#ref, Reference::Resource(template)
            if template.uri == HEAP_TEMPLATE && request.argument.name == "heap");
        let (names, total) = if heaps && self.mode == Mode::Heaps {
            self.runtime
                .names_starting_with(&owner, &request.argument.value, CompletionInfo::MAX_VALUES)
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
        self.read(request, context).await
    }
}
