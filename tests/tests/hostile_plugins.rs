//! Storage plugins that misbehave, loaded by the real binary: the host stays in charge.
//! The misbehaving store is `tests/hostile-plugin`; libraries that only pretend to be
//! plugins are built here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::join_all;
use mcp_v8_e2e::{
    example_plugin_built_against, fake_library, hostile_config, start_up_failure, RawStdio, Server,
};
use serde_json::json;

#[tokio::test]
async fn a_store_that_never_answers_fails_the_call_and_releases_the_heap() {
    let dir = tempfile::tempdir().unwrap();
    let config = hostile_config(dir.path(), "hang_on_get = \"stuck\"");
    let server = Server::start(&["--config", &config, "--storage-timeout", "1"]).await;
    let error = server.run_js("1", Some("stuck")).await.err();
    assert!(
        error.contains("storage did not answer in 1 s (get of heap 'stuck')"),
        "{error}"
    );
    // The next call on that heap is refused at once while the plugin is still stuck on it.
    let error = server.run_js("1", Some("stuck")).await.err();
    assert!(
        error.contains("storage has not answered an earlier get of heap 'stuck'"),
        "{error}"
    );
    // Twenty more heaps stuck at once: other heaps still work.
    let stuck =
        (0..20).map(|i| server.run_js("1", Some(Box::leak(format!("stuck-{i}").into_boxed_str()))));
    for reply in join_all(stuck).await {
        assert!(reply.err().contains("storage did not answer"));
    }
    assert_eq!(server.output("'fine'", "healthy").await, "fine");
    server.stop().await;
}

#[tokio::test]
async fn hung_calls_are_bounded_and_cannot_take_the_blocking_pool() {
    let dir = tempfile::tempdir().unwrap();
    let config = hostile_config(dir.path(), "hang_on_get = \"stuck\"");
    let server = Server::start(&["--config", &config, "--storage-timeout", "1"]).await;
    let heaps: Vec<String> = (0..64).map(|i| format!("stuck-{i}")).collect();
    let calls = heaps.iter().map(|heap| server.run_js("1", Some(heap)));
    for reply in join_all(calls).await {
        assert!(reply.err().contains("storage did not answer"));
    }
    // 64 calls are stuck: further ones are refused at once instead of taking more threads.
    let error = server.run_js("1", Some("stuck-more")).await.err();
    assert!(
        error.contains("storage has 64 calls that never answered"),
        "{error}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_call_waiting_on_the_store_can_be_cancelled_and_shutdown_is_not_blocked() {
    let dir = tempfile::tempdir().unwrap();
    let config = hostile_config(dir.path(), "hang_on_get = \"stuck\"");
    let mut raw = RawStdio::start(&[
        "--config",
        &config,
        "--storage-timeout",
        "600",
        "--shutdown-grace",
        "1",
    ])
    .await;
    raw.send_tool_call(10, "run_js", json!({ "code": "1", "heap": "stuck" }))
        .await;
    raw.send_line(
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":10}}"#,
    )
    .await;
    // The heap is free again: delete_heap takes its lock and reaches the store.
    raw.send_tool_call(11, "delete_heap", json!({ "heap": "stuck" }))
        .await;
    let answer = loop {
        let message = raw.next().await;
        if message["id"] == 11 {
            break message;
        }
    };
    let text = answer["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("not found"), "{answer}");

    // Another call gets stuck; SIGTERM still stops the server after the grace period.
    raw.send_tool_call(12, "run_js", json!({ "code": "1", "heap": "stuck" }))
        .await;
    let pid = raw.child().id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = tokio::time::timeout(Duration::from_secs(20), raw.child().wait()).await;
    assert!(exited.is_ok(), "the server did not exit after SIGTERM");

    // And end of input does too.
    let mut raw = RawStdio::start(&["--config", &config, "--storage-timeout", "600"]).await;
    raw.send_tool_call(1, "run_js", json!({ "code": "1", "heap": "stuck" }))
        .await;
    let closed = tokio::time::timeout(Duration::from_secs(20), raw.close()).await;
    assert!(
        closed.is_ok(),
        "the server did not exit at the end of input"
    );
}

#[tokio::test]
async fn names_a_plugin_lists_are_checked_and_listings_are_paginated() {
    let dir = tempfile::tempdir().unwrap();
    let config = hostile_config(dir.path(), "list = \"junk\"\nlist_count = 150000");
    let server = Server::start(&["--config", &config]).await;
    server.output("1", "real").await;
    let page = server.reply("list_heaps", json!({})).await.ok();
    let heaps = page["heaps"].as_array().unwrap();
    assert_eq!(heaps.len(), 1000);
    for heap in heaps {
        let name = heap["heap"].as_str().unwrap();
        assert!(name.starts_with("made-up-") || name == "real", "{name}");
    }
    // Follow the cursor to the end: at most 100 000 heaps are passed on, every name valid.
    let (mut seen, mut cursor) = (heaps.len(), page["next_cursor"].clone());
    while let Some(next) = cursor.as_str() {
        let page = server
            .reply("list_heaps", json!({ "cursor": next }))
            .await
            .ok();
        seen += page["heaps"].as_array().unwrap().len();
        cursor = page["next_cursor"].clone();
    }
    assert_eq!(seen, 100_000);
    server.stop().await;
}

/// Where the file store keeps heap `heap` under `dir`.
fn heap_file(dir: &Path, heap: &str) -> PathBuf {
    dir.join(format!("{heap}.heap"))
}

#[tokio::test]
async fn a_snapshot_that_v8_cannot_restore_blames_the_heap_not_the_code() {
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().join("heaps");
    // Stored as V8 made it, so that junk of the same length is a well-formed envelope.
    let args = [
        "--directory-path",
        heaps.to_str().unwrap(),
        "--compression",
        "none",
    ];
    let server = Server::start(&args).await;
    server.output("var x = 1", "bad").await;
    // Re-seal garbage as a valid envelope: the header checks out, the payload is junk.
    let path = heap_file(&heaps, "bad");
    // Answers come before their heaps are stored; tamper with the files once they are.
    server.settle().await;
    let stored = std::fs::read(&path).unwrap();
    let version_len = stored[10] as usize;
    let name_len = stored[11 + version_len] as usize;
    // Magic, format, the two lengths and strings, flags, codec, snapshot length, journal
    // position (lineage, through, chain) and payload length.
    let header_len = 12 + version_len + name_len + 2 + 8 + 24 + 8;
    let payload_len = stored.len() - header_len - 8;
    let mut forged = stored[..header_len].to_vec();
    let garbage = vec![0x5Au8; payload_len];
    let checksum =
        xxhash_rust::xxh3::xxh3_64_with_seed(&garbage, xxhash_rust::xxh3::xxh3_64(&forged));
    forged.extend_from_slice(&checksum.to_le_bytes());
    forged.extend_from_slice(&garbage);
    std::fs::write(&path, forged).unwrap();
    let error = server.run_js("x", Some("bad")).await.err();
    assert!(
        error.contains("heap 'bad' cannot be loaded: V8 could not restore its snapshot"),
        "{error}"
    );
    assert!(
        !error.contains("crashed while running this code"),
        "{error}"
    );
    assert_eq!(server.output("2", "good").await, "2");
    server.stop().await;
}

const ROOT_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

fn header_struct(minor: u32, junk: &str) -> String {
    format!(
        "#[repr(C)] pub struct Root {{ magic: [u8; 32], major: u32, minor: u32, junk: [u64; 64] }}\n\
         #[allow(non_upper_case_globals)]\n#[no_mangle]\n\
         pub static {ROOT_SYMBOL}: Root = Root {{ magic: *b\"abi stable library for Rust     \", \
         major: 0, minor: {minor}, junk: [{junk}; 64] }};\n"
    )
}

fn start_up_error(library: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugins.toml");
    std::fs::write(
        &path,
        format!("storage = \"x\"\n[plugins.x]\npath = {library:?}\n"),
    )
    .unwrap();
    let (code, stderr) = start_up_failure(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn every_malformed_library_gets_a_specific_cause_and_never_crashes_the_host() {
    let old_abi = fake_library("old-abi-stable", &header_struct(10, "0"));
    let stderr = start_up_error(&old_abi);
    assert!(
        stderr.contains("built with abi_stable 0.10, but this mcp-v8 uses abi_stable 0.11"),
        "{stderr}"
    );

    let function = fake_library(
        "root-symbol-is-a-function",
        &format!("#[no_mangle]\npub extern \"C\" fn {ROOT_SYMBOL}() {{}}\n"),
    );
    let stderr = start_up_error(&function);
    assert!(
        stderr.contains("that is not an abi_stable library header"),
        "{stderr}"
    );

    let junk = fake_library(
        "header-then-junk",
        &header_struct(11, "0x4141_4141_4141_4141"),
    );
    let stderr = start_up_error(&junk);
    assert!(
        stderr.contains("reading its root module crashed the checking process (signal"),
        "{stderr}"
    );

    // The same plugin-api version with a type whose layout changed.
    let changed = example_plugin_built_against(
        "plugin-api-changed-layout",
        mcp_v8_plugin_api::PLUGIN_API_VERSION,
        &[
            ("ffi.rs", "pub size: u64,", "pub size: u32,"),
            ("ffi.rs", "size: m.size,", "size: m.size as _,"),
        ],
    );
    let stderr = start_up_error(&changed);
    assert!(
        stderr.contains("does not match this mcp-v8's storage contract"),
        "{stderr}"
    );
    assert!(
        stderr.contains("mismatched type (expected u64, found u32)"),
        "{stderr}"
    );
}
