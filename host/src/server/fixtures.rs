//! The official conformance suite's fixture tools for the tasks extension (SEP-2663), offered
//! only with the hidden `--conformance-fixtures` flag: the suite's `tasks-*` scenarios call
//! tools by these names. They change no heap; the task-supporting ones answer through the same
//! [`McpServer::respond_after`] as `run_js` (becoming tasks at once, as the suite expects of
//! them), and `confirm_delete` and `multi_input` ask their questions as a task's input
//! requests, so the scenarios check this server's own task path and task methods.

use std::time::Duration;

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResponse, CallToolResult, ClientCapabilities, ContentBlock, ElicitRequest, ErrorData,
    InputRequest,
};
use rmcp::service::RequestContext;
use rmcp::task_manager::TaskExit;
use rmcp::{tool, tool_router, RoleServer};
use schemars::JsonSchema;
use serde::Deserialize;

use super::approvals::yes_or_no;
use super::tasks::takes_tasks;
use super::McpServer;

/// How long `failing_job` and `protocol_error_job` run before they fail.
const FAIL_AFTER: Duration = Duration::from_secs(1);

/// `greet`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct GreetArgs {
    /// Who to greet.
    name: String,
}

/// `slow_compute`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct SlowComputeArgs {
    /// How long to take, in seconds (0: answer at once).
    seconds: f64,
    /// A label the result repeats.
    #[serde(default)]
    label: Option<String>,
}

/// `confirm_delete`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct ConfirmDeleteArgs {
    /// The file to pretend to delete.
    filename: String,
}

/// No arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct NoArgs {}

#[tool_router(router = conformance_fixtures, vis = "pub(crate)")]
impl McpServer {
    /// Sync only: never a task.
    #[tool(description = "Conformance fixture: answers 'Hello, NAME!' at once, never as a task.")]
    async fn greet(&self, Parameters(args): Parameters<GreetArgs>) -> CallToolResult {
        CallToolResult::success(vec![ContentBlock::text(format!("Hello, {}!", args.name))])
    }

    #[tool(
        description = "Conformance fixture: takes `seconds`, as a task for a client that takes them."
    )]
    async fn slow_compute(
        &self,
        context: RequestContext<RoleServer>,
        Parameters(args): Parameters<SlowComputeArgs>,
    ) -> Result<CallToolResponse, ErrorData> {
        let took = Duration::try_from_secs_f64(args.seconds)
            .map_err(|e| ErrorData::invalid_params(format!("seconds: {e}"), None))?;
        let work = async move {
            tokio::time::sleep(took).await;
            let label = args.label.unwrap_or_default();
            Ok(CallToolResult::success(vec![ContentBlock::text(format!(
                "computed {label} in {} s",
                took.as_secs_f64()
            ))]))
        };
        self.respond_after(Duration::ZERO, &context, work, None, None)
            .await
    }

    /// Task support required: a client without the tasks extension is refused.
    #[tool(description = "Conformance fixture: a tool error after a second; needs tasks.")]
    async fn failing_job(
        &self,
        context: RequestContext<RoleServer>,
        Parameters(_): Parameters<NoArgs>,
    ) -> Result<CallToolResponse, ErrorData> {
        needs_tasks(&context)?;
        let work = async {
            tokio::time::sleep(FAIL_AFTER).await;
            Ok(CallToolResult::error(vec![ContentBlock::text(
                "the job failed",
            )]))
        };
        self.respond_after(Duration::ZERO, &context, work, None, None)
            .await
    }

    #[tool(description = "Conformance fixture: a protocol error after a second.")]
    async fn protocol_error_job(
        &self,
        context: RequestContext<RoleServer>,
        Parameters(_): Parameters<NoArgs>,
    ) -> Result<CallToolResponse, ErrorData> {
        let work = async {
            tokio::time::sleep(FAIL_AFTER).await;
            Err(ErrorData::internal_error("the job broke", None))
        };
        self.respond_after(Duration::ZERO, &context, work, None, None)
            .await
    }

    /// Task support required: parks as `input_required` until the client answers the
    /// confirmation through `tasks/update`.
    #[tool(description = "Conformance fixture: asks the client to confirm, as a task's input.")]
    async fn confirm_delete(
        &self,
        context: RequestContext<RoleServer>,
        Parameters(args): Parameters<ConfirmDeleteArgs>,
    ) -> Result<CallToolResponse, ErrorData> {
        needs_tasks(&context)?;
        let question = confirmation(&format!("Delete {}?", args.filename));
        let filename = args.filename;
        self.spawn_task(&context, move |task| {
            Box::pin(async move {
                let answer = tokio::select! {
                    answer = task.request_input("confirm", question) => answer?,
                    () = task.cancelled() => return Err(TaskExit::Cancelled),
                };
                let confirmed = answer["action"] == "accept";
                let text = match confirmed {
                    true => format!("deleted {filename}"),
                    false => format!("kept {filename}"),
                };
                Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
            })
        })
    }

    /// Task support required: asks two questions at once, and ends when both are answered.
    #[tool(description = "Conformance fixture: asks the client two questions at once, as a task.")]
    async fn multi_input(
        &self,
        context: RequestContext<RoleServer>,
        Parameters(_): Parameters<NoArgs>,
    ) -> Result<CallToolResponse, ErrorData> {
        needs_tasks(&context)?;
        let (first, second) = (confirmation("First?"), confirmation("Second?"));
        self.spawn_task(&context, move |task| {
            Box::pin(async move {
                let both = futures::future::try_join(
                    task.request_input("first", first),
                    task.request_input("second", second),
                );
                let (first, second) = tokio::select! {
                    answers = both => answers?,
                    () = task.cancelled() => return Err(TaskExit::Cancelled),
                };
                let text = format!("first: {}, second: {}", first["action"], second["action"]);
                Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
            })
        })
    }
}

/// Refuses a client without the tasks extension, as a tool that requires tasks does.
fn needs_tasks(context: &RequestContext<RoleServer>) -> Result<(), ErrorData> {
    if takes_tasks(context) {
        return Ok(());
    }
    let tasks = ClientCapabilities::builder().enable_tasks().build();
    Err(ErrorData::missing_required_client_capability(tasks))
}

/// A yes-or-no question for the client's user, as a task's input request.
fn confirmation(message: &str) -> InputRequest {
    InputRequest::Elicitation(ElicitRequest::new(yes_or_no(message.to_string())))
}
