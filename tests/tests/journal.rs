//! Durable before the answer, in the default mode: a call on a heap is answered once its
//! journal record is stored, and the heap is its snapshot plus the records after it. A
//! `kill -9` loses no acknowledged call, servers sharing one directory lose no update and
//! read each other's writes, and a store that cannot write fails the call that caused it.

use std::time::Duration;

use futures::future::join_all;
use mcp_v8_e2e::{eventually, Client, Reply, Server};

/// Increments `counter` on heap `shared` `times` times; returns how many calls failed.
async fn increment(client: &Client, times: usize) -> usize {
    let mut failed = 0;
    for _ in 0..times {
        if let Reply::Err(e) = client.run_js("++counter", Some("shared")).await {
            eprintln!("increment failed: {e}");
            failed += 1;
        }
    }
    failed
}

#[tokio::test]
async fn kill_9_right_after_acknowledged_calls_loses_none_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().join("heaps");
    let heaps = heaps.to_str().unwrap();
    let mut acknowledged = [0u64; 3];
    for _round in 0..3 {
        let server = Server::start(&["--directory-path", heaps]).await;
        // A burst on three heaps at once, each call acknowledged before the next.
        let bursts = (0..3).map(|i| {
            let server = &server;
            async move {
                let heap = format!("c{i}");
                let mut last = 0;
                for _ in 0..8 {
                    let n = server
                        .output("globalThis.n = (globalThis.n || 0) + 1; n", &heap)
                        .await;
                    last = n.parse::<u64>().unwrap();
                }
                last
            }
        });
        let last = join_all(bursts).await;
        acknowledged.copy_from_slice(&last);
        // No time for a snapshot: the process dies right after the last answer.
        server.kill().await;
        let server = Server::start(&["--directory-path", heaps]).await;
        for (i, told) in acknowledged.iter().enumerate() {
            let n: u64 = server.output("n", &format!("c{i}")).await.parse().unwrap();
            assert_eq!(n, *told, "heap c{i} came back at {n}, acknowledged {told}");
        }
        server.kill().await;
    }
}

#[tokio::test]
async fn two_servers_on_one_directory_lose_no_update_and_read_each_others_writes() {
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().join("heaps");
    let heaps = heaps.to_str().unwrap();
    let args = ["--directory-path", heaps, "--conflict-retries", "100"];
    let first = Server::start(&args).await;
    let second = Server::start(&args).await;
    first.output("var counter = 0", "shared").await;
    // A read right after the other server's acknowledged write sees it, every time.
    for round in 1..=5 {
        let writer = if round % 2 == 0 { &first } else { &second };
        let reader = if round % 2 == 0 { &second } else { &first };
        assert_eq!(
            writer.output("++counter", "shared").await,
            round.to_string()
        );
        assert_eq!(reader.output("counter", "shared").await, round.to_string());
    }
    // Four clients, two per server, incrementing at once.
    let third = Server::start(&args).await;
    let fourth = Server::start(&args).await;
    let failed = join_all(
        [&first, &second, &third, &fourth]
            .into_iter()
            .map(|server| increment(server, 10)),
    )
    .await;
    assert_eq!(failed, [0, 0, 0, 0], "calls failed at the clients");
    assert_eq!(first.output("counter", "shared").await, "45");
    assert_eq!(fourth.output("counter", "shared").await, "45");
    for server in [first, second, third, fourth] {
        server.stop().await;
    }
}

/// Makes `dirs` refuse new files (`chattr +i`, which holds for root too; else the mode), or
/// accept them again.
fn refuse_writes(dirs: &[std::path::PathBuf], refuse: bool) {
    use std::os::unix::fs::PermissionsExt;
    for dir in dirs.iter().filter(|d| d.exists()) {
        let flag = if refuse { "+i" } else { "-i" };
        let immutable = std::process::Command::new("chattr")
            .arg(flag)
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !immutable {
            let mode = if refuse { 0o500 } else { 0o700 };
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
}

#[tokio::test]
async fn a_directory_that_cannot_be_written_fails_the_call_that_caused_it() {
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().join("heaps");
    let server = Server::start(&["--directory-path", heaps.to_str().unwrap()]).await;
    server.output("var n = 1", "h").await;
    assert_eq!(server.output("++n", "h").await, "2");
    server.settle().await;
    // Read-only from now on (a full disk fails the same writes).
    let dirs = [heaps.clone(), heaps.join("h.journal")];
    refuse_writes(&dirs, true);
    let error = server.run_js("++n", Some("h")).await.err();
    refuse_writes(&dirs, false);
    assert!(
        error.contains("storage error") && error.contains("heap 'h'"),
        "{error}"
    );
    // The heap is where the last acknowledged call left it, also after a restart.
    assert_eq!(server.output("n", "h").await, "2");
    server.stop().await;
    let server = Server::start(&["--directory-path", heaps.to_str().unwrap()]).await;
    assert_eq!(server.output("++n", "h").await, "3");
    server.stop().await;
}

/// The directory store's snapshot file of `heap`.
fn snapshot_file(heaps: &std::path::Path, heap: &str) -> Vec<u8> {
    std::fs::read(heaps.join(format!("{heap}.heap"))).unwrap()
}

/// How many records `heap`'s journal holds in the directory store.
fn records(heaps: &std::path::Path, heap: &str) -> usize {
    std::fs::read_dir(heaps.join(format!("{heap}.journal")))
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count()
}

/// Between checkpoints a heap moves on live, call by call, with a record per call and no
/// snapshot; a checkpoint comes when the calls since the last one reach the budget, and on a
/// clean stop; the snapshot then holds every call without the journal.
#[tokio::test]
async fn a_live_heap_is_checkpointed_by_its_budget_and_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().join("heaps");
    let path = heaps.to_str().unwrap();
    let args = [
        "--directory-path",
        path,
        "--checkpoint-calls",
        "4",
        "--checkpoint-idle-secs",
        "3600",
    ];
    let server = Server::start(&args).await;
    server.output("var n = 0", "h").await;
    let created = snapshot_file(&heaps, "h");
    for expected in 1..=3 {
        assert_eq!(server.output("++n", "h").await, expected.to_string());
    }
    assert_eq!(snapshot_file(&heaps, "h"), created, "no snapshot per call");
    assert_eq!(records(&heaps, "h"), 3);
    // The fourth call reaches the budget: its state is snapshotted after the answer, and the
    // next call on the heap waits for that.
    assert_eq!(server.output("++n", "h").await, "4");
    assert_eq!(server.output("n", "h").await, "4");
    let checkpointed = snapshot_file(&heaps, "h");
    assert_ne!(checkpointed, created, "checkpointed at the budget");
    assert_eq!(server.output("++n", "h").await, "5");
    assert_eq!(snapshot_file(&heaps, "h"), checkpointed);
    server.stop().await;
    assert_ne!(
        snapshot_file(&heaps, "h"),
        checkpointed,
        "checkpointed on stop"
    );
    std::fs::remove_dir_all(heaps.join("h.journal")).unwrap();
    let server = Server::start(&args).await;
    assert_eq!(server.output("n", "h").await, "5");
    server.stop().await;
}

/// A live heap with calls since its snapshot is checkpointed once it has been idle for the
/// configured time; the checkpoint holds those calls.
#[tokio::test]
async fn an_idle_live_heap_is_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().join("heaps");
    let path = heaps.to_str().unwrap();
    let server = Server::start(&["--directory-path", path, "--checkpoint-idle-secs", "0.2"]).await;
    server.output("var n = 0", "h").await;
    let created = snapshot_file(&heaps, "h");
    assert_eq!(server.output("++n", "h").await, "1");
    eventually(
        Duration::from_secs(20),
        "a checkpoint while idle",
        || async { (snapshot_file(&heaps, "h") != created).then_some(()) },
    )
    .await;
    server.kill().await;
    std::fs::remove_dir_all(heaps.join("h.journal")).unwrap();
    let server = Server::start(&["--directory-path", path]).await;
    assert_eq!(server.output("n", "h").await, "1");
    server.stop().await;
}

/// The last error is the next call's `_error`, as in Node's REPL; the call that finds it
/// records it, so a replay after `kill -9` finds the same one.
#[tokio::test]
async fn the_last_error_is_the_next_calls_underscore_error_and_replays_alike() {
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().join("heaps");
    let heaps = heaps.to_str().unwrap();
    let server = Server::start(&["--directory-path", heaps]).await;
    server.output("var seen = []", "err").await;
    let error = server
        .run_js("seen.push('lost'); null.boom", Some("err"))
        .await
        .err();
    assert!(error.contains("TypeError"), "{error}");
    let read = "seen.push(_error.name + ': ' + _error.message); \
                [_error instanceof Error, _error.stack.split('\\n')[0], seen.length]";
    let first = server.output(read, "err").await;
    assert!(
        first.starts_with("[true,\"TypeError: Cannot read properties of null"),
        "{first}"
    );
    assert!(first.ends_with(",1]"), "{first}");
    // It stays until another error replaces it; code that owns `_error` keeps it.
    server
        .run_js("throw new RangeError('second')", Some("err"))
        .await
        .err();
    assert_eq!(
        server
            .output("seen.push(_error.message); seen.length", "err")
            .await,
        "2"
    );
    server.output("_error = 'mine'; 0", "err").await;
    server
        .run_js("throw new Error('third')", Some("err"))
        .await
        .err();
    assert_eq!(server.output("_error", "err").await, "mine");
    let before = server.output("JSON.stringify(seen)", "err").await;
    // No snapshot since: the calls replay from the journal, `_error` from their records.
    server.kill().await;
    let server = Server::start(&["--directory-path", heaps]).await;
    assert_eq!(server.output("JSON.stringify(seen)", "err").await, before);
    assert_eq!(server.output("_error", "err").await, "mine");
    server.stop().await;
}
