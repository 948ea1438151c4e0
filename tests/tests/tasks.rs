//! run_js as an MCP task (the tasks extension, SEP-2663): a client that declares the extension
//! gets short calls answered directly and a task id for a long one, which it polls for the
//! result or cancels. Over stdio and Streamable HTTP.

use std::time::Duration;

use mcp_v8_e2e::http::HttpServer;
use mcp_v8_e2e::taking_tasks;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CancelTaskParams, ClientConfig, GetTaskParams,
    TaskPayload, TaskStatus,
};
use rmcp::service::RunningService;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};

type Session = RunningService<RoleClient, ClientConfig>;

async fn over_stdio() -> Session {
    let mut command = tokio::process::Command::new(mcp_v8_e2e::binary());
    command.args(["--memory"]).env("RUST_LOG", "warn");
    let transport = TokioChildProcess::new(command).expect("spawn mcp-v8");
    taking_tasks().serve(transport).await.expect("handshake")
}

fn run_js(arguments: Value) -> CallToolRequestParams {
    CallToolRequestParams::new("run_js")
        .with_arguments(arguments.as_object().cloned().unwrap_or_default())
}

async fn output(session: &Session, code: &str, heap: &str) -> Value {
    match session
        .call_tool_once(run_js(json!({"code": code, "heap": heap})))
        .await
        .expect("tools/call")
    {
        CallToolResponse::Complete(result) => {
            result.structured_content.expect("a result")["output"].clone()
        }
        other => panic!("a short call is answered directly: {other:?}"),
    }
}

/// Polls the task at the interval the server suggests until it ends; returns how it ended and
/// the status messages seen meanwhile.
async fn settled(session: &Session, task_id: &str) -> (TaskPayload, Vec<String>) {
    let mut statuses = Vec::new();
    loop {
        let task = session
            .get_task(GetTaskParams::new(task_id))
            .await
            .expect("tasks/get")
            .task;
        if task.status().is_terminal() {
            return (task.payload, statuses);
        }
        statuses.extend(task.task.status_message.clone());
        let every = task.task.poll_interval_ms.unwrap_or(500);
        tokio::time::sleep(Duration::from_millis(every)).await;
    }
}

async fn long_calls_become_tasks(session: Session) {
    assert_eq!(
        output(&session, "var kept = 'before'; 1 + 1", "tasked").await,
        "2"
    );

    // Longer than the second a call may take before it becomes a task.
    let created = session
        .call_tool_once(run_js(json!({
            "code": "mcp.progress(1, 4, 'rows'); \
                     const end = Date.now() + 3000; while (Date.now() < end) {} \
                     kept = 'after'; 6 * 7",
            "heap": "tasked"})))
        .await
        .expect("tools/call");
    let CallToolResponse::Task(created) = created else {
        panic!("a long call becomes a task: {created:?}")
    };
    assert_eq!(created.task.status, TaskStatus::Working);
    let (payload, statuses) = settled(&session, &created.task.task_id).await;
    // While it ran, the task said how long it had run and what the code reported.
    assert!(
        statuses
            .iter()
            .any(|s| s.starts_with("running for ") && s.ends_with(": 1 of 4 rows")),
        "{statuses:?}"
    );
    let TaskPayload::Completed { result } = payload else {
        panic!("the task completes: {payload:?}")
    };
    assert_eq!(result["structuredContent"]["output"], "42", "{result:?}");
    // The task's result stays retrievable, and its heap was saved.
    let again = session
        .get_task(GetTaskParams::new(&created.task.task_id))
        .await
        .expect("tasks/get again");
    assert_eq!(again.task.status(), TaskStatus::Completed);
    assert_eq!(output(&session, "kept", "tasked").await, "after");

    // Cancelled: the worker stops, nothing is saved.
    let created = session
        .call_tool_once(run_js(json!({
            "code": "kept = 'lost'; for (;;) {}", "heap": "tasked", "timeout_secs": 25})))
        .await
        .expect("tools/call");
    let CallToolResponse::Task(created) = created else {
        panic!("an endless call becomes a task: {created:?}")
    };
    session
        .cancel_task(CancelTaskParams::new(&created.task.task_id))
        .await
        .expect("tasks/cancel");
    let (payload, _) = settled(&session, &created.task.task_id).await;
    assert!(matches!(payload, TaskPayload::Cancelled), "{payload:?}");
    assert_eq!(output(&session, "kept", "tasked").await, "after");

    let unknown = session.get_task(GetTaskParams::new("no-such-task")).await;
    assert!(unknown.is_err(), "{unknown:?}");
    session.cancel().await.expect("close the session");
}

#[tokio::test]
async fn long_calls_become_tasks_over_stdio() {
    long_calls_become_tasks(over_stdio().await).await;
}

#[tokio::test]
async fn long_calls_become_tasks_over_streamable_http() {
    let server = HttpServer::start(&["--memory"]).await;
    let transport = StreamableHttpClientTransport::from_uri(server.mcp_url.clone());
    let session = taking_tasks().serve(transport).await.expect("handshake");
    long_calls_become_tasks(session).await;
}
