//! Warm heaps over MCP: a call is answered once its journal record is stored, before its
//! heap's snapshot, and nothing about state changes for it — later calls and other clients
//! read what was answered, failures roll back, a clean stop stores the snapshots, a store
//! that fails fails the call that caused it.

use mcp_v8_e2e::http::HttpServer;
use mcp_v8_e2e::{hostile_config, RawStdio, Server};
use serde_json::json;

#[tokio::test]
async fn an_answer_comes_before_its_heap_is_stored_and_every_client_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    let config = hostile_config(dir.path(), &format!("hold_puts_until = {release:?}"));
    let server = HttpServer::start(&["--config", &config, "--save", "background"]).await;
    let (first, second) = (server.streamable(None).await, server.streamable(None).await);

    first.output("var answer = 40", "h").await;
    // The store holds every snapshot after a committed call until `release` exists, so this
    // answer cannot have waited for its heap's snapshot.
    assert_eq!(first.output("answer += 1; answer", "h").await, "41");

    // Another client's call on the heap, and a listing, wait for that save and see it.
    let read = tokio::spawn(async move {
        let output = second.output("answer + 1", "h").await;
        let listing = second.settle().await;
        (output, listing, second)
    });
    std::fs::write(&release, "").unwrap();
    let (output, listing, second) = read.await.unwrap();
    assert_eq!(output, "42");
    assert_eq!(listing["heaps"][0]["heap"], "h", "{listing}");
    first.stop().await;
    second.stop().await;
    server.terminate().await;
}

#[tokio::test]
async fn a_failed_call_on_a_warm_heap_rolls_back_to_the_last_success() {
    let server = Server::start(&["--memory", "--execution-timeout", "1"]).await;
    server
        .output("var list = [1]; let label = 'one'", "h")
        .await;
    server.output("list.push(2); label = 'two'", "h").await;
    for failing in [
        "list.push(3); label = 'three'; throw new Error('no')",
        "list.push(3); label = 'three'; while (true) {}",
        "list.push(3); label = 'three'; await Promise.reject(new Error('later'))",
        "list.push(3); label = 'three'; syntax error here",
    ] {
        let error = server.run_js(failing, Some("h")).await.err();
        assert!(!error.is_empty(), "{failing}");
        assert_eq!(
            server.output("JSON.stringify([list, label])", "h").await,
            r#"[[1,2],"two"]"#,
            "after {failing:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn sigterm_right_after_an_answer_still_stores_it() {
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().join("heaps");
    let heaps = heaps.to_str().unwrap();
    let server = HttpServer::start(&["--directory-path", heaps]).await;
    let client = server.streamable(None).await;
    // Megabytes of data make the snapshot slow enough to be in flight at the signal.
    let code = "var data = Array.from({length: 200000}, (_, i) => ({i, s: 'x' + i})); data.length";
    assert_eq!(client.output(code, "big").await, "200000");
    let status = server.terminate().await;
    assert!(status.success(), "{status}");

    let server = Server::start(&["--directory-path", heaps]).await;
    assert_eq!(
        server.output("data.length + data[199999].s", "big").await,
        "200000x199999"
    );
    server.stop().await;
}

/// A checkpoint that cannot finish delays the exit only by the grace period: one in progress
/// after an answer (the call reached the checkpoint budget) makes the exit status say the
/// stop was not clean; one the stop itself tries for a live heap is best effort, since the
/// heap's calls are in its journal.
#[tokio::test]
async fn a_save_that_cannot_finish_delays_the_exit_only_by_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let never = dir.path().join("never-created");
    let config = hostile_config(dir.path(), &format!("hold_puts_until = {never:?}"));
    for (budget, logged, code) in [
        (
            "1",
            "stopping with heap snapshots still in progress after 1 s",
            1,
        ),
        (
            "100",
            "1 of 1 live heaps not checkpointed within the shutdown grace",
            0,
        ),
    ] {
        let args = [
            "--config",
            &config,
            "--checkpoint-calls",
            budget,
            "--shutdown-grace",
            "1",
        ];
        let server = HttpServer::start(&args).await;
        let client = server.streamable(None).await;
        client.output("var n = 1", "stuck").await;
        assert_eq!(client.output("++n", "stuck").await, "2");
        server.signal_term();
        server.wait_for_log(logged).await;
        let status = server.terminate().await;
        assert_eq!(status.code(), Some(code), "{status}");
    }
}

#[tokio::test]
async fn stdin_closing_right_after_an_answer_still_stores_it() {
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().join("heaps");
    let heaps = heaps.to_str().unwrap();
    let mut raw = RawStdio::start(&["--directory-path", heaps]).await;
    let code = "var data = Array.from({length: 200000}, (_, i) => ({i})); data.length";
    let answer = raw.run_js(1, code).await;
    assert_eq!(
        answer["result"]["structuredContent"]["output"], "200000",
        "{answer}"
    );
    let status = raw.close().await;
    assert!(status.success(), "{status}");

    let server = Server::start(&["--directory-path", heaps]).await;
    assert_eq!(server.output("data[199999].i", "raw").await, "199999");
    server.stop().await;
}

#[tokio::test]
async fn a_store_that_fails_fails_the_call_that_caused_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = hostile_config(dir.path(), "fail_puts_on = \"down\"");
    let server = Server::start(&["--config", &config, "--save", "background"]).await;
    server.output("var kept = 1", "fine").await;
    // The heap cannot be stored: the call that made it says so, not a later one.
    let error = server
        .run_js("var lost = 2; lost", Some("down-1"))
        .await
        .err();
    assert!(
        error.contains("storage error (unavailable) for heap 'down-1': the store is down"),
        "{error}"
    );
    let reply = server.run_js("typeof lost", Some("down-1")).await;
    assert!(
        matches!(&reply, mcp_v8_e2e::Reply::Err(e) if !e.contains("previous call")),
        "{reply:?}"
    );
    assert_eq!(server.output("kept", "fine").await, "1");
    server.stop().await;
}

#[tokio::test]
async fn sync_saves_answer_after_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = hostile_config(dir.path(), "fail_puts_on = \"down\"");
    let server = Server::start(&["--config", &config, "--save", "sync"]).await;
    let error = server
        .run_js("var lost = 2; lost", Some("down-1"))
        .await
        .err();
    assert!(
        error.contains("storage error (unavailable) for heap 'down-1': the store is down"),
        "{error}"
    );
    // Nothing was answered that is not stored, so nothing is reported as lost.
    let error = server
        .reply("run_js", json!({"code": "typeof lost", "heap": "down-1"}))
        .await
        .err();
    assert!(!error.contains("previous call"), "{error}");
    assert_eq!(server.output("1 + 1", "fine").await, "2");
    server.stop().await;
}
