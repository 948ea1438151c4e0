//! The JavaScript runtime over stdio: promises, top-level await, console, timers, limits,
//! cancellation, and concurrency on one heap.

use std::time::{Duration, Instant};

use futures::future::join_all;
use mcp_v8_e2e::Server;
use rmcp::ServiceError;
use serde_json::json;

#[tokio::test]
async fn async_results_rejections_and_top_level_await() {
    let server = Server::start(&["--memory"]).await;
    let out = server
        .run_js(
            "(async () => { await null; return { ok: true }; })()",
            Some("a"),
        )
        .await
        .ok();
    assert_eq!(out["output"], r#"{"ok":true}"#);

    let error = server
        .run_js("Promise.reject(new RangeError('no way'))", Some("a"))
        .await
        .err();
    assert!(error.contains("Uncaught RangeError: no way"), "{error}");

    let out = server
        .run_js(
            "const answer = await Promise.resolve(42);\nanswer",
            Some("tla"),
        )
        .await
        .ok();
    assert_eq!(out["output"], "42");
    // Top-level declarations made with await persist like any other global.
    assert_eq!(server.output("answer + 1", "tla").await, "43");
    server.stop().await;
}

#[tokio::test]
async fn console_lines_come_back_in_order() {
    let server = Server::start(&["--memory"]).await;
    let result = server
        .call(
            "run_js",
            json!({ "code": "console.log('one', {n: 1}); console.warn('two'); console.error('three'); 3", "heap": "c" }),
        )
        .await;
    let structured = result.structured_content.clone().unwrap();
    assert_eq!(
        structured["logs"],
        json!([
            { "level": "log", "text": "one {\"n\":1}" },
            { "level": "warn", "text": "two" },
            { "level": "error", "text": "three" },
        ])
    );
    assert_eq!(structured["output"], "3");
    // Once: the text an agent reads is the same JSON.
    assert_eq!(result.content.len(), 1);

    let error = server
        .run_js("console.log('got here'); missing()", Some("c"))
        .await
        .err();
    assert!(error.contains("ReferenceError"), "{error}");
    assert!(
        error.contains("console output before the failure:\n[log] got here"),
        "{error}"
    );
    server.stop().await;
}

#[tokio::test]
async fn timers_fire_in_order_and_pending_ones_are_reported() {
    let server = Server::start(&["--memory"]).await;
    let out = server
        .run_js(
            "const seen = [];
             setTimeout(() => seen.push('late'), 50);
             setTimeout(() => seen.push('early'), 5);
             await new Promise((resolve) => setTimeout(resolve, 100));
             seen",
            Some("t"),
        )
        .await
        .ok();
    assert_eq!(out["output"], r#"["early","late"]"#);
    assert_eq!(out["pending_timers"], 0);
    let out = server
        .run_js("setInterval(() => {}, 1000); 'left running'", Some("t"))
        .await
        .ok();
    assert_eq!(
        (out["output"].as_str(), out["pending_timers"].as_u64()),
        (Some("left running"), Some(1))
    );
    server.stop().await;
}

#[tokio::test]
async fn an_infinite_loop_times_out_within_a_second_of_its_limit() {
    let server = Server::start(&["--memory", "--execution-timeout", "2"]).await;
    server.output("var state = 'before'", "spin").await;
    let started = Instant::now();
    let error = server
        .run_js("state = 'during'; for (;;) {}", Some("spin"))
        .await
        .err();
    let took = started.elapsed();
    assert!(error.contains("timed out after 2 s"), "{error}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(server.output("state", "spin").await, "before");
    // A tighter per-call limit; a looser one is refused.
    let error = server
        .reply(
            "run_js",
            json!({ "code": "for (;;) {}", "heap": "spin", "timeout_secs": 0.5 }),
        )
        .await
        .err();
    assert!(error.contains("timed out after 0.5 s"), "{error}");
    let error = server
        .reply("run_js", json!({ "code": "1", "timeout_secs": 60 }))
        .await
        .err();
    assert!(error.contains("at most the server's 2 s"), "{error}");
    server.stop().await;
}

#[tokio::test]
async fn a_memory_bomb_is_a_heap_limit_error_and_the_server_answers_the_next_call() {
    let server = Server::start(&["--memory", "--heap-memory-max", "64"]).await;
    server.output("var kept = 'intact'", "bomb").await;
    let error = server
        .run_js(
            "kept = 'gone'; const a = []; for (;;) a.push(new Array(1e6))",
            Some("bomb"),
        )
        .await
        .err();
    assert!(error.contains("heap limit exceeded"), "{error}");
    assert!(error.contains("64 MB"), "{error}");
    assert_eq!(server.output("kept", "bomb").await, "intact");
    let error = server
        .reply("run_js", json!({ "code": "const b = []; for (;;) b.push('x'.repeat(1000) + b.length)", "heap_memory_max_mb": 16 }))
        .await
        .err();
    assert!(error.contains("16 MB"), "{error}");
    server.stop().await;
}

#[tokio::test]
async fn stack_overflow_is_a_range_error() {
    let server = Server::start(&["--memory"]).await;
    let error = server
        .run_js("function f() { f(); } f()", Some("s"))
        .await
        .err();
    assert!(
        error.contains("RangeError: Maximum call stack size exceeded"),
        "{error}"
    );
    assert_eq!(server.output("1 + 1", "s").await, "2");
    server.stop().await;
}

#[tokio::test]
async fn cancellation_stops_a_long_run_and_changes_nothing() {
    // One worker and a long execution timeout: if cancelling did not stop the loop, the next
    // call would wait for the loop's 60 s limit.
    let server = Server::start(&[
        "--memory",
        "--max-concurrent-executions",
        "1",
        "--execution-timeout",
        "60",
    ])
    .await;
    server.output("var state = 'before'", "long").await;
    let workers = server.workers();
    // The client gives up after a second and sends notifications/cancelled.
    let started = Instant::now();
    let response = server
        .run_js_giving_up_after(
            json!({ "code": "state = 'during'; for (;;) {}", "heap": "long" }),
            Duration::from_secs(1),
        )
        .await;
    assert!(
        matches!(response, Err(ServiceError::Timeout { .. })),
        "{response:?}"
    );
    // The worker running the loop is killed and replaced; the heap is as it was.
    assert_eq!(server.output("state", "long").await, "before");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_ne!(server.workers(), workers);
    server.stop().await;
}

#[tokio::test]
async fn two_servers_incrementing_one_counter_with_sync_saves_see_no_conflict() {
    // Two servers, as two clients would each start one, on one heap directory, storing
    // before they answer: a call whose store loses the race runs again on the newer state.
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().join("heaps");
    let heaps = heaps.to_str().unwrap();
    let args = [
        "--directory-path",
        heaps,
        "--save",
        "sync",
        "--conflict-retries",
        "100",
    ];
    let first = Server::start(&args).await;
    let second = Server::start(&args).await;
    first.output("var counter = 0", "shared").await;
    let conflicts = join_all([increment(&first), increment(&second)]).await;
    assert_eq!(conflicts, [0, 0], "conflicts reached the clients");
    assert_eq!(first.output("counter", "shared").await, "100");
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_heap_changed_by_another_server_is_never_served_stale() {
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().join("heaps");
    let heaps = heaps.to_str().unwrap();
    let first = Server::start(&["--directory-path", heaps]).await;
    let second = Server::start(&["--directory-path", heaps]).await;
    for round in 1..=5 {
        // The first server holds the heap warm after each of its calls.
        assert_eq!(
            first
                .output("globalThis.n = (globalThis.n || 0) + 1; n", "h")
                .await,
            (2 * round - 1).to_string()
        );
        first.settle().await;
        assert_eq!(second.output("++n", "h").await, (2 * round).to_string());
        second.settle().await;
    }
    assert_eq!(first.output("n", "h").await, "10");
    first.stop().await;
    second.stop().await;
}

/// Increments the shared counter 50 times, retrying on conflicts; returns the conflicts.
async fn increment(server: &Server) -> u32 {
    let mut done = 0;
    let mut conflicts = 0;
    while done < 50 {
        match server.run_js("++counter", Some("shared")).await {
            mcp_v8_e2e::Reply::Ok(_) => done += 1,
            mcp_v8_e2e::Reply::Err(e) => {
                assert!(e.contains("changed concurrently"), "{e}");
                conflicts += 1;
            }
        }
    }
    conflicts
}

/// Time zone and locale are the sandbox's, not the host's: a server started with another
/// zone and language formats dates and numbers in UTC and en-US, on a named heap and a new one.
#[tokio::test]
async fn the_sandbox_has_one_time_zone_and_locale_whatever_the_host_has() {
    let server = Server::start_with_env(
        &["--memory"],
        &[
            ("TZ", "America/New_York"),
            ("LANG", "de_DE.UTF-8"),
            ("LC_ALL", "de_DE.UTF-8"),
        ],
    )
    .await;
    let code = "[new Date(0).getHours(), new Date(0).toString(), \
                Intl.DateTimeFormat().resolvedOptions().timeZone, \
                (1234.5).toLocaleString(), new Date(0).toLocaleString()].join(' | ')";
    let expected = "0 | Thu Jan 01 1970 00:00:00 GMT+0000 (Coordinated Universal Time) | UTC \
                    | 1,234.5 | 1/1/1970, 12:00:00 AM";
    assert_eq!(server.output(code, "zone").await, expected);
    let new_heap = server
        .call("run_js", json!({ "code": code }))
        .await
        .structured_content
        .unwrap();
    assert_eq!(new_heap["output"], expected);
    server.stop().await;
}

/// The WinterTC globals that stand alone (`crypto`, `atob`/`btoa`, `structuredClone`, `self`,
/// `navigator`), on a heap and stateless. After a `kill -9` the heap is rebuilt from its
/// journal: a replay draws the same random bytes, so the IDs it kept are the ones answered.
#[tokio::test]
async fn the_standalone_web_globals_work_on_heaps_after_a_crash_and_stateless() {
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().display().to_string();
    // Kept in the journal, not in a snapshot: a restart replays the call.
    let args = ["--directory-path", &heaps, "--checkpoint-idle-secs", "3600"];
    let server = Server::start(&args).await;
    let made = server
        .output(
            "var id = crypto.randomUUID(); var bytes = crypto.getRandomValues(new Uint8Array(4)); \
             var copy = structuredClone({ when: new Date(0), tags: new Set(['a']) }); \
             [id, bytes.join('.'), btoa('hi'), atob('aGk='), self === globalThis].join()",
            "web",
        )
        .await;
    server.kill().await;
    let server = Server::start(&args).await;
    let again = server
        .output(
            "[id, bytes.join('.'), btoa('hi'), atob('aGk='), self === globalThis].join() + \
             ` ${copy.when.getTime()} ${copy.tags.has('a')}`",
            "web",
        )
        .await;
    assert_eq!(again, format!("{made} 0 true"));
    server.stop().await;

    let stateless = Server::start(&["--stateless"]).await;
    let out = stateless
        .run_js(
            "[crypto.randomUUID().length, typeof structuredClone, navigator.userAgent.split('/')[0]].join()",
            None,
        )
        .await
        .ok();
    assert_eq!(out["output"], "36,function,mcp-v8");
    stateless.stop().await;
}
