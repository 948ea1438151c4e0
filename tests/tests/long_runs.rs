//! Long runs the MCP way: a call's console lines reach the client while the code still runs,
//! progress notifications arrive every second, and a flood of lines is coalesced. Over stdio
//! and Streamable HTTP, with a client that sets a logging level.
#![allow(deprecated)] // MCP logging, deprecated in rmcp by SEP-2577 but what clients use

use mcp_v8_e2e::http::HttpServer;
use mcp_v8_e2e::listen::{Heard, Listener};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, LoggingLevel, NumberOrString, ProgressToken,
    RequestMetaObject, SetLevelRequestParams,
};
use rmcp::service::RunningService;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

type Session = RunningService<RoleClient, Listener>;

async fn over_stdio(args: &[&str]) -> (Session, UnboundedReceiver<Heard>) {
    let mut command = tokio::process::Command::new(mcp_v8_e2e::binary());
    command.args(args).env("RUST_LOG", "warn");
    let transport = TokioChildProcess::new(command).expect("spawn mcp-v8");
    let (listener, heard) = Listener::new();
    (listener.serve(transport).await.expect("handshake"), heard)
}

async fn over_http(server: &HttpServer) -> (Session, UnboundedReceiver<Heard>) {
    let transport = StreamableHttpClientTransport::from_uri(server.mcp_url.clone());
    let (listener, heard) = Listener::new();
    (listener.serve(transport).await.expect("handshake"), heard)
}

fn run_js(code: &str, extra: Value, progress: Option<&str>) -> CallToolRequestParams {
    let mut arguments = json!({ "code": code });
    if let (Value::Object(arguments), Value::Object(extra)) = (&mut arguments, extra) {
        arguments.extend(extra);
    }
    let mut params = CallToolRequestParams::new("run_js")
        .with_arguments(arguments.as_object().cloned().unwrap_or_default());
    if let Some(token) = progress {
        params.meta = Some(RequestMetaObject::with_progress_token(ProgressToken(
            NumberOrString::String(token.to_string().into()),
        )));
    }
    params
}

fn text(heard: &Heard) -> Option<String> {
    match heard {
        Heard::Log(log) => log.data.as_str().map(str::to_string),
        Heard::Progress(_) => None,
    }
}

/// A line logged before an endless loop reaches the client while the loop runs: it arrives
/// before the call can possibly answer (only its time limit ends it), with its level and the
/// heap as the logger. The result then carries the whole console as before.
async fn console_lines_arrive_while_the_code_runs(
    session: Session,
    mut heard: UnboundedReceiver<Heard>,
) {
    session
        .set_level(SetLevelRequestParams::new(LoggingLevel::Info))
        .await
        .expect("logging/setLevel");
    let first = {
        let call = session.call_tool(run_js(
            "console.debug('not asked for'); console.warn('loop starts'); for (;;) {}",
            json!({"heap": "live", "timeout_secs": 20}),
            None,
        ));
        tokio::select! {
            heard = heard.recv() => heard.expect("a log message"),
            answer = call => panic!("the call answered before its console arrived: {answer:?}"),
        }
    };
    let Heard::Log(log) = &first else {
        panic!("{first:?}")
    };
    assert_eq!(log.level, LoggingLevel::Warning);
    assert_eq!(log.logger.as_deref(), Some("live"));
    assert_eq!(log.data, "loop starts");
    // The debug line was below the level asked for.
    assert!(heard.try_recv().is_err());
    session.cancel().await.expect("close the session");
}

/// Progress notifications at least every second while a call runs, counting its seconds and
/// telling what the code reported with `mcp.progress`; console lines come before the result.
async fn progress_arrives_every_second(session: Session, mut heard: UnboundedReceiver<Heard>) {
    session
        .set_level(SetLevelRequestParams::new(LoggingLevel::Debug))
        .await
        .expect("logging/setLevel");
    let result: CallToolResult = session
        .call_tool(run_js(
            "console.log('begin'); mcp.progress(1, 4, 'rows'); \
             const end = Date.now() + 2600; while (Date.now() < end) {} \
             console.log('end'); 'done'",
            json!({"heap": "progress"}),
            Some("p-1"),
        ))
        .await
        .expect("run_js");
    assert_eq!(
        result.structured_content.as_ref().unwrap()["output"],
        "done"
    );
    let mut heard_all = Vec::new();
    while let Ok(h) = heard.try_recv() {
        heard_all.push(h);
    }
    let progress: Vec<_> = heard_all
        .iter()
        .filter_map(|h| match h {
            Heard::Progress(p) => Some(p.clone()),
            Heard::Log(_) => None,
        })
        .collect();
    assert!(progress.len() >= 2, "{heard_all:?}");
    assert!(
        progress.windows(2).all(|w| w[0].progress < w[1].progress),
        "{progress:?}"
    );
    // rmcp's client puts a token of its own on the request; the server answers with it.
    assert!(progress
        .iter()
        .all(|p| p.progress_token == progress[0].progress_token));
    let message = progress[0].message.clone().unwrap_or_default();
    assert!(message.contains("1 of 4 rows"), "{message}");
    let lines: Vec<String> = heard_all.iter().filter_map(text).collect();
    assert_eq!(lines, ["begin", "end"]);
    session.cancel().await.expect("close the session");
}

/// Ten thousand lines in a burst become a few messages and a count; the result keeps them.
async fn a_flood_is_coalesced(session: Session, mut heard: UnboundedReceiver<Heard>) {
    session
        .set_level(SetLevelRequestParams::new(LoggingLevel::Info))
        .await
        .expect("logging/setLevel");
    let result = session
        .call_tool(run_js(
            "for (let i = 0; i < 10000; i++) console.log('line ' + i); 'flooded'",
            json!({}),
            None,
        ))
        .await
        .expect("run_js");
    // The result keeps the console, its first and last lines within the answer's budget.
    let out = result.structured_content.as_ref().unwrap();
    let (head, tail) = (
        out["logs"].as_array().unwrap(),
        out["logs_tail"].as_array().unwrap(),
    );
    assert_eq!(head[0]["text"], "line 0");
    assert_eq!(tail.last().unwrap()["text"], "line 9999");
    let left_out = out["logs_left_out"].as_u64().unwrap() as usize;
    assert_eq!(head.len() + left_out + tail.len(), 10_000);
    let mut messages = Vec::new();
    while let Ok(h) = heard.try_recv() {
        messages.extend(text(&h));
    }
    assert!((2..=40).contains(&messages.len()), "{}", messages.len());
    // The first line goes out at once; the next ones wait for their window and come together.
    assert_eq!(messages[0], "line 0");
    assert!(
        messages[1].starts_with("line 1\nline 2\n"),
        "{}",
        messages[1]
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("console lines not sent live")),
        "{messages:?}"
    );
    session.cancel().await.expect("close the session");
}

#[tokio::test]
async fn console_lines_arrive_while_the_code_runs_over_stdio() {
    let (session, heard) = over_stdio(&["--memory"]).await;
    console_lines_arrive_while_the_code_runs(session, heard).await;
}

#[tokio::test]
async fn console_lines_arrive_while_the_code_runs_over_streamable_http() {
    let server = HttpServer::start(&["--memory"]).await;
    let (session, heard) = over_http(&server).await;
    console_lines_arrive_while_the_code_runs(session, heard).await;
}

#[tokio::test]
async fn progress_arrives_every_second_over_stdio() {
    let (session, heard) = over_stdio(&["--memory"]).await;
    progress_arrives_every_second(session, heard).await;
}

#[tokio::test]
async fn progress_arrives_every_second_over_streamable_http() {
    let server = HttpServer::start(&["--memory"]).await;
    let (session, heard) = over_http(&server).await;
    progress_arrives_every_second(session, heard).await;
}

#[tokio::test]
async fn a_flood_is_coalesced_over_stdio() {
    let (session, heard) = over_stdio(&["--memory"]).await;
    a_flood_is_coalesced(session, heard).await;
}

#[tokio::test]
async fn stateless_calls_report_too() {
    let (session, heard) = over_stdio(&["--stateless"]).await;
    a_flood_is_coalesced(session, heard).await;
}
