//! The official MCP server conformance suite (npm `@modelcontextprotocol/conformance`) against
//! the real binary over Streamable HTTP: every scenario that applies passes with no failure and
//! no warning. Every scenario the suite has is listed here, as applying or with why it does not,
//! so a new version's new scenarios cannot go unnoticed.

use mcp_v8_e2e::clients::NodeTools;
use mcp_v8_e2e::http::HttpServer;

/// The scenarios that test what mcp-v8 offers.
const APPLY: [&str; 8] = [
    "server-initialize",
    "ping",
    "tools-list",
    "resources-list",
    "logging-set-level",
    "completion-complete",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
];

/// The scenarios that test fixtures of the suite's reference server ("everything"), not MCP:
/// tools, resources and prompts with the names they call, or capabilities mcp-v8 does not
/// declare.
const DO_NOT_APPLY: [(&str, &str); 24] = [
    ("tools-call-simple-text", "calls the fixture tool test_simple_text"),
    ("tools-call-image", "calls the fixture tool test_image_content"),
    ("tools-call-audio", "calls the fixture tool test_audio_content"),
    ("tools-call-embedded-resource", "calls the fixture tool test_embedded_resource"),
    ("tools-call-mixed-content", "calls the fixture tool test_multiple_content_types"),
    ("tools-call-with-logging", "calls the fixture tool test_tool_with_logging (run_js's live console is tested in long_runs.rs)"),
    ("tools-call-error", "calls the fixture tool test_error_handling"),
    ("tools-call-with-progress", "calls the fixture tool test_tool_with_progress (run_js's progress is tested in long_runs.rs)"),
    ("tools-call-sampling", "calls the fixture tool test_sampling; mcp-v8 asks clients for no sampling"),
    ("tools-call-elicitation", "calls the fixture tool test_elicitation; mcp-v8 asks clients for no input"),
    ("elicitation-sep1034-defaults", "calls a fixture elicitation tool"),
    ("elicitation-sep1330-enums", "calls a fixture elicitation tool"),
    ("json-schema-2020-12", "calls the fixture tool json_schema_2020_12_tool (the schemas are checked against 2020-12 in schemas.rs)"),
    ("server-sse-polling", "calls the fixture tool test_reconnection, which closes its stream mid-call; resuming with Last-Event-ID is tested in resume.rs"),
    ("resources-read-text", "reads the fixture resource test://static-text"),
    ("resources-read-binary", "reads the fixture resource test://static-binary"),
    ("resources-templates-read", "reads the fixture template test://template/{id}/data"),
    ("resources-subscribe", "mcp-v8 does not offer resource subscriptions"),
    ("resources-unsubscribe", "mcp-v8 does not offer resource subscriptions"),
    ("prompts-list", "mcp-v8 offers no prompts"),
    ("prompts-get-simple", "mcp-v8 offers no prompts"),
    ("prompts-get-with-args", "mcp-v8 offers no prompts"),
    ("prompts-get-embedded-resource", "mcp-v8 offers no prompts"),
    ("prompts-get-with-image", "mcp-v8 offers no prompts"),
];

#[tokio::test]
async fn every_scenario_is_accounted_for() {
    let Some(tools) = NodeTools::find("every_scenario_is_accounted_for") else {
        return;
    };
    accounted_for(tools.conformance(), "", &APPLY, &DO_NOT_APPLY).await;
}

/// The scenarios `command` (a conformance suite's command line) lists whose names start with
/// `prefix` are exactly `apply` and `do_not_apply`.
async fn accounted_for(
    mut command: tokio::process::Command,
    prefix: &str,
    apply: &[&str],
    do_not_apply: &[(&str, &str)],
) {
    let output = command
        .args(["list", "--server"])
        .output()
        .await
        .expect("run the conformance suite");
    assert!(output.status.success());
    let listed = String::from_utf8_lossy(&output.stdout);
    let mut scenarios: Vec<&str> = listed
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .collect();
    scenarios.sort_unstable();
    let mut known: Vec<&str> = apply
        .iter()
        .copied()
        .chain(do_not_apply.iter().map(|(name, _)| *name))
        .collect();
    known.sort_unstable();
    assert_eq!(scenarios, known, "the suite's scenarios changed:\n{listed}");
}

/// Runs one scenario with `command` (a conformance suite's command line) against `url` and
/// checks that it passed with no failure and no warning; returns its report.
async fn passes(mut command: tokio::process::Command, url: &str, scenario: &[&str]) -> String {
    let output = command
        .args(["server", "--url", url, "--scenario"])
        .args(scenario)
        .output()
        .await
        .expect("run the conformance suite");
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let summary = report
        .lines()
        .find(|line| line.starts_with("Passed:"))
        .unwrap_or_else(|| panic!("{scenario:?}: no summary in\n{report}"));
    assert!(
        output.status.success() && summary.ends_with(", 0 failed, 0 warnings"),
        "{scenario:?}: {summary}\n{report}"
    );
    report
}

#[tokio::test]
async fn the_scenarios_that_apply_pass_without_a_warning() {
    let Some(tools) = NodeTools::find("the_scenarios_that_apply_pass_without_a_warning") else {
        return;
    };
    let server = HttpServer::start(&["--memory"]).await;
    for scenario in APPLY {
        passes(tools.conformance(), &server.mcp_url, &[scenario]).await;
    }
}

/// Protocol 2026-07-28's caching hints (SEP-2549), as the suite's alpha for that revision
/// checks them on a server with a heap to read: tools, prompts, resources, templates.
#[tokio::test]
async fn the_2026_07_28_caching_scenario_passes_without_a_warning() {
    let Some(tools) = NodeTools::find("the_2026_07_28_caching_scenario_passes_without_a_warning")
    else {
        return;
    };
    let server = HttpServer::start(&["--memory"]).await;
    let client = server.streamable(None).await;
    client.output("1", "cached").await;
    let scenario = ["caching", "--spec-version", "2026-07-28"];
    let report = passes(tools.conformance_2026_07_28(), &server.mcp_url, &scenario).await;
    assert!(!report.contains("SKIPPED"), "{report}");
    client.stop().await;
    assert!(server.terminate().await.success());
}

/// The tasks extension's scenarios (SEP-2663) that apply, in the suite's alpha for protocol
/// 2026-07-28. They are the extension's, so the suite runs them only when forced.
const TASKS_APPLY: [&str; 8] = [
    "tasks-lifecycle",
    "tasks-capability-negotiation",
    "tasks-wire-fields",
    "tasks-request-state-removal",
    "tasks-mrtr-input",
    "tasks-request-headers",
    "tasks-dispatch-and-envelope",
    "tasks-required-task-error",
];

/// The tasks extension's scenarios that do not apply yet, and why.
const TASKS_DO_NOT_APPLY: [(&str, &str); 2] = [
    (
        "tasks-status-notifications",
        "the suite skips it itself (its harness awaits subscriptions/listen)",
    ),
    (
        "tasks-mrtr-composition",
        "needs input-required results (SEP-2322) before a task, which mcp-v8 does not send yet",
    ),
];

/// Every tasks scenario of the alpha is accounted for, so a new one cannot go unnoticed.
#[tokio::test]
async fn every_tasks_scenario_is_accounted_for() {
    let Some(tools) = NodeTools::find("every_tasks_scenario_is_accounted_for") else {
        return;
    };
    let alpha = tools.conformance_2026_07_28();
    accounted_for(alpha, "tasks-", &TASKS_APPLY, &TASKS_DO_NOT_APPLY).await;
}

/// The tasks extension as the suite checks it: wire fields, lifecycle, negotiation (a client
/// without the extension gets plain results; `_meta` opts one request in), dispatch and
/// envelope, routing headers, required tasks, input requests. The scenarios call the suite's
/// fixture tools by name, which `--conformance-fixtures` adds; the ones that become tasks run
/// through the same task path as `run_js`.
#[tokio::test]
async fn the_tasks_extension_scenarios_pass_without_a_warning() {
    let Some(tools) = NodeTools::find("the_tasks_extension_scenarios_pass_without_a_warning")
    else {
        return;
    };
    let server = HttpServer::start(&["--memory", "--conformance-fixtures"]).await;
    for scenario in TASKS_APPLY {
        let report = passes(
            tools.conformance_2026_07_28(),
            &server.mcp_url,
            &[scenario, "--force"],
        )
        .await;
        assert!(!report.contains("SKIPPED"), "{scenario}: {report}");
    }
    assert!(server.terminate().await.success());
}
