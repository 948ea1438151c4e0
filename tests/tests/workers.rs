//! Executions run in worker processes: parallel across heaps, and a crash or a kill costs
//! only the call it hit.

use futures::future::join_all;
use mcp_v8_e2e::Server;

#[tokio::test]
async fn parallel_stateful_calls_on_distinct_heaps_all_succeed() {
    let server = Server::start(&["--memory", "--max-concurrent-executions", "4"]).await;
    let heaps: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    for (i, heap) in heaps.iter().enumerate() {
        server
            .output(&format!("var id = {i}; var n = 0"), heap)
            .await;
    }
    for round in 1..=5 {
        let calls = heaps
            .iter()
            .map(|heap| server.run_js("++n; id * 1000 + n", Some(heap)));
        let replies = join_all(calls).await;
        for (i, reply) in replies.into_iter().enumerate() {
            let out = reply.ok();
            assert_eq!(
                out["output"],
                (i * 1000 + round).to_string(),
                "heap p{i} round {round}"
            );
        }
    }
    assert!(server.workers().len() <= 4, "{:?}", server.workers());
    server.stop().await;
}

#[tokio::test]
async fn a_v8_abort_fails_only_its_call_and_keeps_the_heap() {
    let server = Server::start(&["--memory"]).await;
    server.output("var kept = 'yes'", "crash").await;
    // V8 treats this as a fatal out-of-memory ("invalid table size") and aborts the process.
    let error = server
        .run_js(
            "kept = 'no'; new Array(2**27).fill(0).length",
            Some("crash"),
        )
        .await
        .err();
    assert!(error.contains("JavaScript engine crashed"), "{error}");
    assert!(error.contains("heap was not changed"), "{error}");
    assert_eq!(server.output("kept", "crash").await, "yes");
    assert_eq!(server.output("6 * 7", "other").await, "42");
    server.stop().await;
}

/// JavaScript that makes V8 abort, or that would exhaust memory outside the JavaScript heap:
/// each call fails on its own, and the server and the heap carry on.
#[tokio::test]
async fn the_crash_list_fails_cleanly() {
    let server = Server::start(&["--memory", "--heap-memory-max", "64"]).await;
    server.output("var kept = 'yes'", "crashy").await;
    let cases = [
        (
            "new Array(2**27).fill(0).length",
            "JavaScript engine crashed",
        ),
        (
            "const m = new Map(); for (let i = 0;; i++) m.set(i, {i})",
            "heap limit exceeded",
        ),
        (
            "const s = new Set(); for (let i = 0;; i++) s.add('k' + i)",
            "heap limit exceeded",
        ),
        (
            "const b = []; for (;;) b.push(new ArrayBuffer(1 << 24))",
            "Array buffer allocation failed",
        ),
        ("new ArrayBuffer(2 ** 40)", "RangeError"),
        ("let s = 'x'; for (;;) s += s", "Invalid string length"),
        ("JSON.parse('['.repeat(1e6))", "Error"),
    ];
    for (code, expected) in cases {
        let error = server
            .run_js(&format!("kept = 'no'; {code}"), Some("crashy"))
            .await
            .err();
        assert!(error.contains(expected), "{code}: {error}");
        assert_eq!(server.output("kept", "crashy").await, "yes", "after {code}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_killed_worker_fails_only_its_call() {
    let server = Server::start(&["--memory", "--max-concurrent-executions", "1"]).await;
    server.output("var state = 1", "victim").await;
    // The worker snapshots the heap after the answer, and then works ahead a little.
    server.settle().await;
    let workers = server.workers();
    assert_eq!(workers.len(), 1, "one warm worker: {workers:?}");
    let idle_cpu = cpu_ticks(workers[0]);
    let (reply, ()) = tokio::join!(
        server.run_js("state = 2; for (;;) {}", Some("victim")),
        async {
            // Kill it only once it is busy with the loop: its CPU time grows by 100 ms, more
            // than the few ms of isolates it may still make ahead.
            while cpu_ticks(workers[0]) < idle_cpu + 10 {
                tokio::task::yield_now().await;
            }
            let status = std::process::Command::new("kill")
                .args(["-9", &workers[0].to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
    );
    let error = reply.err();
    assert!(error.contains("killed (SIGKILL)"), "{error}");
    // A fresh worker replaces it; the heap is as it was.
    assert_eq!(server.output("state", "victim").await, "1");
    let replacement = server.workers();
    assert_eq!(replacement.len(), 1);
    assert_ne!(replacement, workers);
    server.stop().await;
}

#[tokio::test]
async fn a_worker_killed_while_idle_costs_no_call() {
    let server = Server::start(&["--memory", "--max-concurrent-executions", "1"]).await;
    server.output("var state = 'kept'", "idle").await;
    // Idle means done saving, too.
    server.settle().await;
    let workers = server.workers();
    assert_eq!(workers.len(), 1);
    let status = std::process::Command::new("kill")
        .args(["-9", &workers[0].to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // At once: the worker may be gone, or still dying (its pipes open, the job written into
    // them never read). Either way the next call runs on a fresh worker instead of failing.
    assert_eq!(server.output("state", "idle").await, "kept");
    server.stop().await;
}

/// User plus system CPU time of a process, in clock ticks, from /proc.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name: state is the 1st, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}
