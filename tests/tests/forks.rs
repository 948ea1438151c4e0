//! Forks and checkpoints over MCP: `run_js` with `save_as` runs on one heap's state and saves
//! the result as another, `copy_heap` makes a named checkpoint; the source never changes, and
//! nothing is overwritten without `overwrite`. On the memory store and the file plugin.

use mcp_v8_e2e::Server;
use serde_json::{json, Value};

async fn with_each_store(test: impl AsyncFn(&Server)) {
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().join("heaps");
    for args in [
        vec!["--memory"],
        vec!["--directory-path", heaps.to_str().unwrap()],
    ] {
        let server = Server::start(&args).await;
        test(&server).await;
        server.stop().await;
    }
}

async fn fork(server: &Server, args: Value) -> Value {
    server.reply("run_js", args).await.ok()
}

#[tokio::test]
async fn a_fork_runs_on_a_heap_and_saves_elsewhere_leaving_the_source_alone() {
    with_each_store(async |server: &Server| {
        server.output("var steps = ['start']", "main").await;
        let forked = fork(
            server,
            json!({ "code": "steps.push('try'); steps.join()", "heap": "main", "save_as": "experiment" }),
        )
        .await;
        assert_eq!(forked["output"], "start,try", "{forked}");
        assert_eq!(forked["heap"], "experiment", "{forked}");
        assert_eq!(forked["forked_from"], "main", "{forked}");
        assert_eq!(server.output("steps.join()", "main").await, "start");
        assert_eq!(server.output("steps.push('more'); steps.join()", "experiment").await, "start,try,more");
        assert_eq!(server.output("steps.join()", "main").await, "start");

        // An existing heap is not replaced without overwrite, and stays as it was.
        let err = server
            .reply("run_js", json!({ "code": "steps = []", "heap": "main", "save_as": "experiment" }))
            .await
            .err();
        assert!(err.contains("heap 'experiment' already exists; pass overwrite: true"), "{err}");
        assert_eq!(server.output("steps.join()", "experiment").await, "start,try,more");
        let replaced = fork(
            server,
            json!({ "code": "steps.join()", "heap": "main", "save_as": "experiment", "overwrite": true }),
        )
        .await;
        assert_eq!(replaced["output"], "start");
        assert_eq!(server.output("steps.join()", "experiment").await, "start");

        // A fork of a heap that does not exist is refused; without a source it starts empty.
        let err = server
            .reply("run_js", json!({ "code": "1", "heap": "nothing", "save_as": "x" }))
            .await
            .err();
        assert!(err.contains("heap 'nothing' does not exist"), "{err}");
        let fresh = fork(server, json!({ "code": "typeof steps", "save_as": "fresh" })).await;
        assert_eq!(fresh["output"], "undefined");
        assert_eq!(fresh["heap"], "fresh");
        let err = server
            .reply("run_js", json!({ "code": "1", "heap": "main", "save_as": "main" }))
            .await
            .err();
        assert!(err.contains("another name"), "{err}");

        // A fork that fails saves nothing.
        let err = server
            .reply("run_js", json!({ "code": "throw new Error('no')", "heap": "main", "save_as": "failed" }))
            .await
            .err();
        assert!(err.contains("no"), "{err}");
        let listing = server.settle().await;
        let names = mcp_v8_e2e::heap_names(&listing);
        assert_eq!(names, ["experiment", "fresh", "main"], "{listing}");
        for heap in names {
            server.reply("delete_heap", json!({ "heap": heap })).await.ok();
        }
    })
    .await;
}

#[tokio::test]
async fn copy_heap_makes_an_independent_checkpoint() {
    with_each_store(async |server: &Server| {
        server.output("var doc = { version: 1 }", "work").await;
        let copied = server
            .reply("copy_heap", json!({ "from": "work", "to": "work.v1" }))
            .await
            .ok();
        assert_eq!(
            (copied["from"].as_str(), copied["to"].as_str()),
            (Some("work"), Some("work.v1"))
        );
        assert!(
            copied["raw_size"].as_u64().unwrap() > copied["size"].as_u64().unwrap(),
            "{copied}"
        );
        server.output("doc.version = 2", "work").await;
        assert_eq!(server.output("doc.version", "work.v1").await, "1");
        assert_eq!(server.output("doc.version", "work").await, "2");

        let err = server
            .reply("copy_heap", json!({ "from": "work", "to": "work.v1" }))
            .await
            .err();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(server.output("doc.version", "work.v1").await, "1");
        server
            .reply(
                "copy_heap",
                json!({ "from": "work", "to": "work.v1", "overwrite": true }),
            )
            .await
            .ok();
        assert_eq!(server.output("doc.version", "work.v1").await, "2");
        let err = server
            .reply("copy_heap", json!({ "from": "missing", "to": "other" }))
            .await
            .err();
        assert!(err.contains("heap 'missing' does not exist"), "{err}");
        let err = server
            .reply("copy_heap", json!({ "from": "work", "to": "../x" }))
            .await
            .err();
        assert!(err.contains("invalid heap name"), "{err}");
        for heap in ["work", "work.v1"] {
            server
                .reply("delete_heap", json!({ "heap": heap }))
                .await
                .ok();
        }
    })
    .await;
}

/// `heap_history` lists a heap's calls since its snapshot; `copy_heap` with `at_record`
/// branches from any of them, or from the snapshot itself, and refuses a record it does not
/// hold with a clear error.
#[tokio::test]
async fn history_lists_the_calls_and_a_copy_branches_from_any_of_them() {
    let server = Server::start(&["--memory"]).await;
    server.output("var log = []", "work").await;
    for step in ["a", "b", "c"] {
        let code = format!("log.push('{step}'); log.join('')");
        server.output(&code, "work").await;
    }
    let history = server
        .reply("heap_history", json!({ "heap": "work" }))
        .await
        .ok();
    let calls = history["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 3, "{history}");
    assert_eq!(calls[1]["code"], "log.push('b'); log.join('')");
    assert_eq!(calls[1]["output"], "ab");
    assert!(calls[2]["at_ms"].as_u64().unwrap() > 1_700_000_000_000);
    let record = |i: usize| calls[i]["record"].as_u64().unwrap();
    assert_eq!((record(0) + 1, record(1) + 1), (record(1), record(2)));
    let snapshot = history["snapshot_record"].as_u64().unwrap();
    assert_eq!(snapshot + 1, record(0));
    let latest = server
        .reply("heap_history", json!({ "heap": "work", "limit": 1 }))
        .await
        .ok();
    assert_eq!(latest["calls"][0]["output"], "abc", "{latest}");
    assert_eq!(latest["left_out"], 2, "{latest}");

    let copy = |to: &str, at: u64| json!({ "from": "work", "to": to, "at_record": at });
    server
        .reply("copy_heap", copy("after-b", record(1)))
        .await
        .ok();
    server
        .reply("copy_heap", copy("before", snapshot))
        .await
        .ok();
    assert_eq!(server.output("log.join('')", "after-b").await, "ab");
    assert_eq!(server.output("log.join('')", "before").await, "");
    assert_eq!(server.output("log.join('')", "work").await, "abc");
    let error = server
        .reply("copy_heap", copy("nowhere", snapshot - 1))
        .await
        .err();
    assert!(
        error.contains("cannot be copied at record") && error.contains("heap_history lists them"),
        "{error}"
    );
    server.stop().await;
}
