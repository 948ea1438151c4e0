//! Long calls as MCP tasks, and cancellation: a call from a client that takes tasks becomes
//! one once it has run for [`TASK_AFTER`]; any call ends when its client cancels it.

use std::time::Duration;

use rmcp::model::{CallToolResponse, CallToolResult, CreateTaskResult, ErrorData};
use rmcp::service::RequestContext;
use rmcp::task_manager::{TaskContext, TaskExit, TaskFuture, TaskOptions};
use rmcp::RoleServer;
use tokio::sync::watch;

use super::answer::tool_error;
use super::approvals::{Question, Questions, Work};
use super::McpServer;
use crate::runtime::CallError;

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
    /// it with `tasks/get` and `tasks/cancel`. A question its code asks before then
    /// (`questions`, [`super::approvals`]) parks the call: the client gets the question and
    /// answers it with a retry.
    pub(super) async fn respond(
        &self,
        context: &RequestContext<RoleServer>,
        work: impl std::future::Future<Output = Result<CallToolResult, ErrorData>> + Send + 'static,
        status: Option<watch::Receiver<String>>,
        questions: Option<Questions>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.respond_after(TASK_AFTER, context, work, status, questions)
            .await
    }

    /// [`McpServer::respond`], with the call becoming a task once it has run for `after`.
    pub(super) async fn respond_after(
        &self,
        after: Duration,
        context: &RequestContext<RoleServer>,
        work: impl std::future::Future<Output = Result<CallToolResult, ErrorData>> + Send + 'static,
        status: Option<watch::Receiver<String>>,
        questions: Option<Questions>,
    ) -> Result<CallToolResponse, ErrorData> {
        let mut work: Work = Box::pin(work);
        let mut questions = questions;
        let becomes_task = async {
            match takes_tasks(context) {
                true => tokio::time::sleep(after).await,
                false => std::future::pending().await,
            }
        };
        let asked = tokio::select! {
            result = &mut work => return result.map(Into::into),
            () = context.ct.cancelled() => return cancelled().map(Into::into),
            question = next_question(&mut questions) => Some(question),
            () = becomes_task => None,
        };
        if let Some(question) = asked {
            let owner = self.owner(context)?;
            return Ok(self.park(owner, work, questions, question));
        }
        self.spawn_task(context, move |task| {
            Box::pin(async move {
                let mut status = status;
                let mut asked = 0;
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
                        // A task's questions are its input requests (`tasks/update`).
                        question = next_question(&mut questions) => {
                            asked += 1;
                            question.ask_in(&task, format!("approval-{asked}"));
                        }
                    }
                }
            })
        })
    }

    /// Runs what `make` makes as a task of the request's owner, and answers with its id.
    pub(super) fn spawn_task(
        &self,
        context: &RequestContext<RoleServer>,
        make: impl FnOnce(TaskContext) -> TaskFuture,
    ) -> Result<CallToolResponse, ErrorData> {
        // A task may not outlive its TTL while it runs: give it room for the longest call.
        let ttl = TASK_TTL.max(self.runtime.limits().timeout * 2);
        let options = TaskOptions::new()
            .with_ttl_ms(u64::try_from(ttl.as_millis()).ok())
            .with_poll_interval_ms(u64::try_from(TASK_POLL.as_millis()).unwrap_or(500))
            .with_status_message("running");
        let owner = self.owner(context)?;
        let task = self.tasks.spawn(options, make);
        self.task_owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .put(task.task_id.clone(), owner);
        Ok(CallToolResponse::Task(CreateTaskResult::new(task)))
    }

    /// `task_id`, if it is a task of the request's owner; another owner's task is as unknown
    /// as one that never was.
    pub(super) fn own_task<'t>(
        &self,
        context: &RequestContext<RoleServer>,
        task_id: &'t str,
    ) -> Result<&'t str, ErrorData> {
        let owner = self.owner(context)?;
        let theirs = self
            .task_owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(task_id)
            .is_some_and(|opener| *opener != owner);
        if theirs {
            return Err(ErrorData::invalid_params(
                format!("unknown task: {task_id}"),
                None,
            ));
        }
        Ok(task_id)
    }
}

/// Whether the client declared the tasks extension.
pub(super) fn takes_tasks(context: &RequestContext<RoleServer>) -> bool {
    context
        .client_capabilities()
        .is_some_and(|caps| caps.supports_tasks())
}

/// The next question; never, without questions or once there will be no more.
async fn next_question(questions: &mut Option<Questions>) -> Question {
    if let Some(asked) = questions {
        if let Some(question) = asked.recv().await {
            return question;
        }
        *questions = None;
    }
    std::future::pending().await
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

pub(super) fn cancelled() -> Result<CallToolResult, ErrorData> {
    tool_error(CallError::Cancelled)
}
