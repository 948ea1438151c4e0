//! Storage plugins loaded by the real binary: the file plugin (via `plugins.toml` and via
//! `--directory-path`), the third-party example plugin, and every way loading can fail.

use std::path::Path;

use futures::future::join_all;
use mcp_v8_e2e::{
    example_plugin_built_against_api, library, some_system_library, start_up_failure, Server,
};
use serde_json::json;

/// Writes a `plugins.toml` in `dir` and returns its path.
fn config(dir: &Path, text: &str) -> String {
    let path = dir.join("plugins.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn file_plugin_config(dir: &Path) -> String {
    config(
        dir,
        &format!(
            "storage = \"file\"\n[plugins.file]\npath = {:?}\n[plugins.file.config]\ndirectory = {:?}\n",
            library("mcp_v8_file_storage"),
            dir.join("heaps"),
        ),
    )
}

#[tokio::test]
async fn file_plugin_via_config_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = file_plugin_config(dir.path());
    let server = Server::start(&["--config", &config]).await;
    server
        .output(
            "var notes = ['first']; function count() { return notes.length; }",
            "notes",
        )
        .await;
    server.output("notes.push('second')", "notes").await;
    server.stop().await;
    assert!(dir.path().join("heaps/notes.heap").is_file());

    let server = Server::start(&["--config", &config]).await;
    assert_eq!(
        server
            .output("count() + ':' + notes.join(',')", "notes")
            .await,
        "2:first,second"
    );
    let listed = server.reply("list_heaps", json!({})).await.ok();
    assert_eq!(listed["heaps"][0]["heap"], "notes");
    server.stop().await;
}

#[tokio::test]
async fn file_plugin_via_directory_path_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().join("heaps");
    let heaps = heaps.to_str().unwrap();
    let server = Server::start(&["--directory-path", heaps]).await;
    server.output("var n = 41", "counter").await;
    server.stop().await;
    let server = Server::start(&["--directory-path", heaps]).await;
    assert_eq!(server.output("++n", "counter").await, "42");
    server
        .reply("delete_heap", json!({ "heap": "counter" }))
        .await
        .ok();
    assert!(!dir.path().join("heaps/counter.heap").exists());
    server.stop().await;
}

#[tokio::test]
async fn heap_names_never_reach_the_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().join("heaps");
    let server = Server::start(&["--directory-path", heaps.to_str().unwrap()]).await;
    for name in ["../x", "../../etc/passwd", ".x", "a/../../x"] {
        let error = server.run_js("1", Some(name)).await.err();
        assert!(error.contains("invalid heap name"), "{name}: {error}");
    }
    server.stop().await;
    let outside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, ["heaps"], "something escaped the heap directory");
    assert_eq!(std::fs::read_dir(&heaps).unwrap().count(), 0);
}

#[tokio::test]
async fn kill_9_during_writes_never_leaves_an_unreadable_heap() {
    let dir = tempfile::tempdir().unwrap();
    let config = file_plugin_config(dir.path());
    let mut acknowledged = 0u64;
    for _round in 0..3 {
        // Every answer is durable (its journal record is stored first), so a kill -9 right
        // after one loses nothing acknowledged.
        let server = Server::start(&["--config", &config]).await;
        // Two heaps written concurrently, with enough data that writes take a while.
        for heap in ["w1", "w2"] {
            let n: u64 = server
                .output(
                    "var n = (globalThis.n || 0); var pad = 'p'.repeat(200000) + n; n",
                    heap,
                )
                .await
                .parse()
                .unwrap();
            assert!(
                n >= acknowledged,
                "{heap} went back from {acknowledged} to {n}"
            );
        }
        for _ in 0..5 {
            let writes = ["w1", "w2"]
                .map(|heap| server.run_js("++n; pad = 'p'.repeat(200000) + n; n", Some(heap)));
            for reply in join_all(writes).await {
                acknowledged =
                    acknowledged.max(reply.ok()["output"].as_str().unwrap().parse().unwrap());
            }
        }
        // Kill it while two more writes are in flight.
        let in_flight = ["w1", "w2"].map(|heap| {
            server.client().call_tool(
                rmcp::model::CallToolRequestParams::new("run_js").with_arguments(
                    json!({ "code": "++n; pad = 'q'.repeat(300000); n", "heap": heap })
                        .as_object()
                        .unwrap()
                        .clone(),
                ),
            )
        });
        let (_, ()) = tokio::join!(join_all(in_flight), async {
            let status = std::process::Command::new("kill")
                .args(["-9", &server.pid().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        });
        drop(server);
    }
    // Every heap file left behind restores.
    let server = Server::start(&["--config", &config]).await;
    for heap in ["w1", "w2"] {
        let n: u64 = server.output("n", heap).await.parse().unwrap();
        assert!(n >= 5, "{heap}: {n}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_third_party_plugin_works_end_to_end_and_its_panics_are_contained() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &format!(
            "storage = \"example\"\n[plugins.example]\npath = {:?}\n[plugins.example.config]\npanic_on_heap = \"boom\"\nmax_heaps = 3\n",
            library("mcp_v8_example_storage"),
        ),
    );
    let server = Server::start(&["--config", &config]).await;
    server.output("var greeting = 'hello'", "hello").await;
    assert_eq!(
        server.output("greeting + ' again'", "hello").await,
        "hello again"
    );

    let error = server.run_js("1", Some("boom")).await.err();
    assert!(error.contains("storage plugin panicked in put"), "{error}");
    assert!(error.contains("asked to panic on heap 'boom'"), "{error}");
    // The server lives on.
    assert_eq!(server.output("greeting", "hello").await, "hello");
    server.output("1", "two").await;
    server.output("1", "three").await;
    let error = server.run_js("1", Some("four")).await.err();
    assert!(error.contains("storage error (unavailable)"), "{error}");
    assert!(error.contains("the example store is full"), "{error}");
    server.stop().await;
}

#[test]
fn each_loader_failure_is_one_clear_line_and_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_library = dir.path().join("notes.so");
    std::fs::write(&not_a_library, "just text").unwrap();
    let file_plugin = library("mcp_v8_file_storage");
    let cases = [
        (
            "storage = \"x\"\n[plugins.x]\npath = \"missing.so\"\n".to_string(),
            "the library file does not exist",
        ),
        (
            format!("storage = \"x\"\n[plugins.x]\npath = {not_a_library:?}\n"),
            "not a loadable shared library",
        ),
        (
            format!("storage = \"x\"\n[plugins.x]\npath = {:?}\n", some_system_library()),
            "not an mcp-v8 storage plugin: it exports no plugin root module",
        ),
        (
            format!("storage = \"x\"\n[plugins.x]\npath = {file_plugin:?}\n[plugins.x.config]\ndirectory = 5\n"),
            "the plugin refused to open its store: invalid file storage configuration: invalid type: integer `5`",
        ),
        (
            format!("storage = \"x\"\n[plugins.x]\npath = {file_plugin:?}\n[plugins.x.config]\ndirectory = \"/tmp\"\nfsync = false\n"),
            "unknown field `fsync`",
        ),
        (
            "storage = \"x\"\n[plugins.x]\npaht = \"x.so\"\n".to_string(),
            "unknown field `paht`",
        ),
        ("storage = \"s3\"\n".to_string(), "storage = \"s3\" names no plugin"),
    ];
    for (text, expected) in cases {
        let path = config(dir.path(), &text);
        let (code, stderr) = start_up_failure(&["--config", &path]);
        assert_eq!(code, 1, "{text}\n{stderr}");
        assert!(
            stderr.contains(expected),
            "{text}\nexpected {expected:?} in:\n{stderr}"
        );
        assert!(stderr.starts_with("mcp-v8: "), "{stderr}");
    }
    let (code, stderr) = start_up_failure(&["--config", "/nonexistent/plugins.toml"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot read configuration /nonexistent/plugins.toml"),
        "{stderr}"
    );
    let (code, stderr) =
        start_up_failure(&["--directory-path", "/tmp/x", "--plugin-dir", "/nonexistent"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("the storage plugin /nonexistent/libmcp_v8_file_storage.so does not exist"),
        "{stderr}"
    );
}

#[test]
fn a_plugin_built_against_another_plugin_api_is_refused_with_both_versions() {
    // The next breaking version of the contract (its minor version, while it is 0.x).
    let ours = mcp_v8_plugin_api::PLUGIN_API_VERSION;
    let minor: u32 = ours.split('.').nth(1).unwrap().parse().unwrap();
    let theirs = format!("0.{}.0", minor + 1);
    let library = example_plugin_built_against_api(&theirs);
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        &format!("storage = \"example\"\n[plugins.example]\npath = {library:?}\n"),
    );
    let (code, stderr) = start_up_failure(&["--config", &path]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "built against mcp-v8-plugin-api {theirs}, but this mcp-v8 uses mcp-v8-plugin-api {ours}"
        )),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// The install script puts the binary and the bundled plugins under a prefix, and the
/// installed binary finds its plugins there: `--list-plugins` shows them, and
/// `--directory-path` works without `--plugin-dir`.
#[tokio::test]
async fn an_installed_binary_finds_its_plugins() {
    let prefix = tempfile::tempdir().unwrap();
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let installed = std::process::Command::new(workspace.join("install.sh"))
        .arg(prefix.path())
        .env("MCP_V8_INSTALL_FROM", mcp_v8_e2e::build_dir())
        .output()
        .expect("run install.sh");
    let stdout = String::from_utf8_lossy(&installed.stdout);
    assert!(
        installed.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&installed.stderr)
    );
    let plugins = prefix.path().join("lib/mcp-v8/plugins");
    assert!(
        stdout.contains(&format!("  {}\n", plugins.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("libmcp_v8_file_storage.so: file "),
        "{stdout}"
    );
    assert!(stdout.contains("libmcp_v8_s3_storage.so: s3 "), "{stdout}");

    let binary = prefix.path().join("bin/mcp-v8");
    let heaps = prefix.path().join("heaps");
    let mut command = tokio::process::Command::new(&binary);
    command
        .args(["--directory-path", heaps.to_str().unwrap()])
        .env("RUST_LOG", "warn");
    let server = Server::start_command(command).await;
    assert_eq!(server.output("var n = 6; n * 7", "installed").await, "42");
    server.stop().await;
    assert!(heaps.join("installed.heap").is_file());
}
