//! The web-platform-tests for the WinterTC Minimum Common API (`../shared/wpt`), run through
//! the engine `run_js` uses, as test262 is for the language.
//!
//! Each test file (and each of its variants) runs in two modes:
//!
//! * **stateless**: everything in one call, as `run_js` without a heap runs code;
//! * **heap**: the same call on a heap a first call saved, so that the globals are those a
//!   restored heap has (the web globals' stand-ins, made anew on first use). The harness
//!   is not split over two calls: its pending timers would not outlive the first.
//!
//! A file runs as WPT's worker wrapper runs it (`harness.js`: `GLOBAL`, `location`,
//! `META_TITLE`, then `testharness.js`, the `META: script=` helpers, the test and `done()`,
//! each file's text in turn in one call),
//! with `fetch` answered from the unpacked tree by the runner's host ([`Files`]).
//!
//! `expectations.toml` lists every subtest that fails, under a reason that covers its path;
//! the run fails when a subtest fails that is not listed, or passes while listed, so the file
//! stays true. `[harness]` stands for a file that did not run to its end (a top-level
//! exception, a helper that failed, no completion within the time limit).
//!
//! The suite comes from `MCP_V8_WPT` (the unpacked archive; `test.sh` sets it). Without it
//! the run is skipped, or fails when `MCP_V8_REQUIRE_TOOLS` is set. Arguments: path prefixes
//! to run only part of the suite, `--mode stateless|heap`, `--threads N`, `--failures FILE`
//! to write every failure as an `expectations.toml` would list it, `--all` to print every
//! difference from it (not only the first 200), and `--node NODE` to run
//! every file under Node.js instead (`node.cjs`, the same wrapper), for the comparison table
//! in docs/testing.md.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcp_v8::engine::{self, HostLink, Limits, Outside, Waited};
use mcp_v8::host_call::{FetchResponse, HostCall, HostError, HostErrorKind, HostReply};
use serde::Deserialize;

/// See the file: what the worker wrapper gives a test.
const HARNESS: &str = include_str!("harness.js");

/// Where the tests are served from, as far as the tests can tell.
const ORIGIN: &str = "http://web-platform.test";

/// The pseudo-subtest of a file that did not run to its end.
const HARNESS_FAILED: &str = "[harness]";

fn limits(long: bool) -> Limits {
    Limits {
        timeout: Duration::from_secs(if long { 60 } else { 20 }),
        output_bytes: 64 << 20,
        console_bytes: 1 << 20,
        ..Limits::default()
    }
}

fn main() {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("wpt: {message}");
            std::process::exit(2);
        }
    };
    let Some(root) = std::env::var_os("MCP_V8_WPT").map(PathBuf::from) else {
        let why = "MCP_V8_WPT is not set (./test.sh unpacks ../shared/wpt and sets it)";
        if std::env::var_os("MCP_V8_REQUIRE_TOOLS").is_some() {
            eprintln!("wpt: {why}, and MCP_V8_REQUIRE_TOOLS is set");
            std::process::exit(1);
        }
        println!("wpt: skipped: {why}");
        return;
    };
    let expectations = match Expectations::load() {
        Ok(expectations) => expectations,
        Err(message) => {
            eprintln!("wpt: expectations.toml: {message}");
            std::process::exit(2);
        }
    };
    let jobs = match Job::all(&root, &options.prefixes) {
        Ok(jobs) => jobs,
        Err(message) => {
            eprintln!("wpt: {message}");
            std::process::exit(2);
        }
    };
    let modes: Vec<Mode> = match (&options.node, options.mode) {
        (Some(_), _) => vec![Mode::Node],
        (None, Some(mode)) => vec![mode],
        (None, None) => vec![Mode::Stateless, Mode::Heap],
    };
    println!(
        "wpt: {} files, {} runs per mode, {} threads",
        jobs.iter().map(|j| &j.path).collect::<BTreeSet<_>>().len(),
        jobs.len(),
        options.threads
    );
    let started = Instant::now();
    let mut unexpected = Vec::new();
    let mut table: BTreeMap<String, BTreeMap<Mode, (usize, usize)>> = BTreeMap::new();
    // Each run's failing subtests, by mode.
    let mut failures: BTreeMap<String, BTreeMap<String, BTreeSet<Mode>>> = BTreeMap::new();
    for mode in modes {
        let results = run_all(&root, &jobs, mode, &options);
        for (job, result) in jobs.iter().zip(&results) {
            let counts = table
                .entry(job.folder())
                .or_default()
                .entry(mode)
                .or_default();
            for (name, outcome) in result {
                counts.1 += 1;
                counts.0 += usize::from(outcome.is_ok());
                if outcome.is_ok() {
                    continue;
                }
                failures
                    .entry(job.id())
                    .or_default()
                    .entry(name.clone())
                    .or_default()
                    .insert(mode);
            }
            if mode != Mode::Node {
                unexpected.extend(expectations.check(job, mode, result));
            }
        }
    }
    // Subtests passed of those reported: a file that stops early reports fewer.
    println!("\n| folder | stateless | heap | Node.js |\n| --- | ---: | ---: | ---: |");
    for (folder, counts) in &table {
        let cell = |mode| {
            counts
                .get(&mode)
                .map_or("".into(), |(pass, all)| format!("{pass} / {all}"))
        };
        println!(
            "| `{folder}` | {} | {} | {} |",
            cell(Mode::Stateless),
            cell(Mode::Heap),
            cell(Mode::Node)
        );
    }
    if let Some(path) = &options.failures {
        let mut text = String::new();
        for (id, names) in &failures {
            text.push_str(&format!("[failing.{}]\n", toml_string(id)));
            for (key, modes) in [
                ("subtests", &[Mode::Stateless, Mode::Heap][..]),
                ("stateless", &[Mode::Stateless][..]),
                ("heap", &[Mode::Heap][..]),
                ("subtests", &[Mode::Node][..]),
            ] {
                let listed: Vec<&String> = names
                    .iter()
                    .filter(|(_, m)| m.iter().copied().eq(modes.iter().copied()))
                    .map(|(name, _)| name)
                    .collect();
                if listed.is_empty() {
                    continue;
                }
                text.push_str(&format!("{key} = [\n"));
                for name in listed {
                    text.push_str(&format!("  {},\n", toml_string(name)));
                }
                text.push_str("]\n");
            }
            text.push('\n');
        }
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("wpt: cannot write {}: {e}", path.display());
        }
    }
    println!("\nwpt: done in {:.1} s", started.elapsed().as_secs_f64());
    if options.node.is_none() {
        let whole = options.prefixes.is_empty() && options.mode.is_none();
        unexpected.extend(expectations.unreasoned(whole));
        if !unexpected.is_empty() {
            let shown = if options.all { usize::MAX } else { 200 };
            for line in unexpected.iter().take(shown) {
                println!("wpt: {line}");
            }
            println!(
                "wpt: {} results differ from expectations.toml",
                unexpected.len()
            );
            std::process::exit(1);
        }
    }
}

/// The command line.
struct Options {
    prefixes: Vec<String>,
    mode: Option<Mode>,
    threads: usize,
    failures: Option<PathBuf>,
    node: Option<PathBuf>,
    all: bool,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut options = Options {
            prefixes: Vec::new(),
            mode: None,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            failures: None,
            node: None,
            all: false,
        };
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "--mode" => {
                    options.mode = Some(match value("--mode")?.as_str() {
                        "stateless" => Mode::Stateless,
                        "heap" => Mode::Heap,
                        other => return Err(format!("--mode {other}: stateless or heap")),
                    })
                }
                "--threads" => {
                    options.threads = value("--threads")?
                        .parse()
                        .map_err(|e| format!("--threads: {e}"))?
                }
                "--failures" => options.failures = Some(value("--failures")?.into()),
                "--node" => options.node = Some(value("--node")?.into()),
                "--all" => options.all = true,
                // What cargo's test runner passes on.
                "--nocapture" | "--quiet" | "-q" | "--show-output" => {}
                _ if arg.starts_with("--") => return Err(format!("unknown option {arg}")),
                _ => options.prefixes.push(arg),
            }
        }
        Ok(options)
    }
}

/// How a file runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Stateless,
    Heap,
    Node,
}

/// One run of a test file: the file with one of its variants.
struct Job {
    path: String,
    variant: String,
    long: bool,
    title: Option<String>,
    /// The `META: script=` helpers, as paths from the root.
    scripts: Vec<String>,
}

impl Job {
    /// Every run `TESTS.tsv` lists under `prefixes` (all without).
    fn all(root: &Path, prefixes: &[String]) -> Result<Vec<Job>, String> {
        let list = std::fs::read_to_string(root.join("TESTS.tsv"))
            .map_err(|e| format!("{}: {e}", root.join("TESTS.tsv").display()))?;
        let mut jobs = Vec::new();
        for line in list
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let columns: Vec<&str> = line.split('\t').collect();
            let (path, variants, timeout) = (columns[0], columns.get(2), columns.get(3));
            if !prefixes.is_empty() && !prefixes.iter().any(|p| path.starts_with(p.as_str())) {
                continue;
            }
            let source =
                std::fs::read_to_string(root.join(path)).map_err(|e| format!("{path}: {e}"))?;
            let (mut title, mut scripts) = (None, Vec::new());
            for meta in source.lines().map_while(|l| l.strip_prefix("// META:")) {
                let Some((key, value)) = meta.trim().split_once('=') else {
                    continue;
                };
                match key.trim() {
                    "title" => title = Some(value.trim().to_string()),
                    "script" => scripts.push(resolve(path, value.trim())),
                    _ => {}
                }
            }
            let long = timeout.is_some_and(|t| t.contains("long"));
            let variants: Vec<String> = match variants.map(|v| v.trim()).filter(|v| !v.is_empty()) {
                Some(list) => list.split(' ').map(str::to_string).collect(),
                None => vec![String::new()],
            };
            for variant in variants {
                jobs.push(Job {
                    path: path.to_string(),
                    variant,
                    long,
                    title: title.clone(),
                    scripts: scripts.clone(),
                });
            }
        }
        Ok(jobs)
    }

    /// The file and variant, as expectations name them.
    fn id(&self) -> String {
        format!("{}{}", self.path, self.variant)
    }

    /// The folder the table counts it under (`url`, `html/webappapis/atob`, ...).
    fn folder(&self) -> String {
        let parts: Vec<&str> = self.path.split('/').collect();
        let depth = match parts[0] {
            "html" | "wasm" | "dom" | "fetch" | "xhr" => 2,
            _ => 1,
        };
        let depth = if parts[0] == "html" { 3 } else { depth };
        parts[..depth.min(parts.len() - 1)].join("/")
    }

    /// The call that sets the file up: the wrapper, `testharness.js`, the helpers.
    fn setup(&self, root: &Path) -> Result<String, String> {
        let config = serde_json::json!({
            "href": format!("{ORIGIN}/{}", self.path),
            "search": self.variant,
            "title": self.title,
        });
        let mut code = format!("var __wpt = ({})({config});\n", HARNESS.trim_end());
        // Each file as the script it is (not through `eval`, whose `let` and `class` would
        // not be global), one after another in the call; what one throws at its top level
        // ends the call, and the file counts as not run to its end.
        let load = |code: &mut String, name: &str| -> Result<(), String> {
            let source = std::fs::read_to_string(root.join(name.trim_start_matches('/')))
                .map_err(|e| format!("{name}: {e}"))?;
            code.push_str(&source);
            code.push_str("\n;\n");
            Ok(())
        };
        load(&mut code, "/resources/testharness.js")?;
        code.push_str("__wpt.hook();\n");
        for script in &self.scripts {
            if load(&mut code, script).is_err() {
                code.push_str(&format!(
                    "__wpt.errors.push({});\n",
                    serde_json::Value::from(format!("{script}: not found"))
                ));
            }
        }
        Ok(code)
    }

    /// The end of the call: the test, then `done()` and the wait for the harness.
    fn test(&self, root: &Path) -> Result<String, String> {
        let source = std::fs::read_to_string(root.join(&self.path))
            .map_err(|e| format!("{}: {e}", self.path))?;
        Ok(format!("{source}\n;\nawait __wpt.end()\n"))
    }
}

/// A `META: script=` path from the root: relative to the test's folder unless it starts
/// with `/`; `/resources/WebIDLParser.js` is wptserve's name for webidl2.
fn resolve(test: &str, script: &str) -> String {
    if script == "/resources/WebIDLParser.js" {
        return "/resources/webidl2/lib/webidl2.js".into();
    }
    if script.starts_with('/') {
        return script.to_string();
    }
    let folder = test.rsplit_once('/').map_or("", |(f, _)| f);
    let mut parts: Vec<&str> = folder.split('/').filter(|p| !p.is_empty()).collect();
    for part in script.split('/') {
        match part {
            ".." => {
                parts.pop();
            }
            "." => {}
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Each subtest's name and whether it passed (or why not).
type Results = Vec<(String, Result<(), String>)>;

fn run_all(root: &Path, jobs: &[Job], mode: Mode, options: &Options) -> Vec<Results> {
    let next = Arc::new(Mutex::new(0usize));
    let results = Arc::new(Mutex::new(vec![Vec::new(); jobs.len()]));
    std::thread::scope(|s| {
        for _ in 0..options.threads.max(1) {
            let (next, results) = (Arc::clone(&next), Arc::clone(&results));
            s.spawn(move || loop {
                let i = {
                    let mut next = next.lock().unwrap_or_else(|e| e.into_inner());
                    *next += 1;
                    *next - 1
                };
                let Some(job) = jobs.get(i) else { break };
                let result = match mode {
                    Mode::Node => run_node(root, job, options.node.as_deref()),
                    mode => run_engine(root, job, mode),
                };
                let result = parse(&result);
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = result;
            });
        }
    });
    Arc::try_unwrap(results)
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_default()
}

/// The harness's report (JSON), or why there is none.
fn run_engine(root: &Path, job: &Job, mode: Mode) -> Result<String, String> {
    let (setup, test) = (job.setup(root)?, job.test(root)?);
    let limits = limits(job.long);
    let files = || Outside {
        live: None,
        host: Some(Box::new(Files::new(root))),
    };
    let outcome = match mode {
        Mode::Stateless => {
            let code = engine::read_code(&format!("{setup}{test}")).map_err(|e| e.to_string())?;
            let fresh = engine::PlainIsolate::new(&limits).map_err(|e| e.to_string())?;
            fresh.run(&code, &limits, files()).0
        }
        _ => {
            let code = engine::read_code(&format!("{setup}{test}")).map_err(|e| e.to_string())?;
            engine::HeapIsolate::new(Some(base_heap()?), &limits)
                .map_err(|e| e.to_string())?
                .run(&code, &limits, files())
                .map_result(|r| r.map(|(c, _)| c).map_err(|(e, _)| e))
        }
    };
    outcome.result.map(|c| c.output).map_err(|e| e.to_string())
}

/// A heap as a first call leaves it, saved: what every file runs on in heap mode.
fn base_heap() -> Result<bytes::Bytes, String> {
    static BASE: std::sync::OnceLock<Result<bytes::Bytes, String>> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        engine::run_stateful("var heap = 'new'", None, limits(false))
            .result
            .map(|(_, heap)| heap)
            .map_err(|e| e.to_string())
    })
    .clone()
}

/// The harness's report from Node.js running `node.cjs`, or why there is none.
fn run_node(root: &Path, job: &Job, node: Option<&Path>) -> Result<String, String> {
    let node = node.ok_or("no node")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wpt/node.cjs");
    let mut command = std::process::Command::new(node);
    command
        .arg(&script)
        .arg(root)
        .arg(&job.path)
        .arg(&job.variant)
        .arg(job.title.as_deref().unwrap_or(""))
        .args(&job.scripts);
    let output = command.output().map_err(|e| format!("node: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .last()
        .map(str::to_string)
        .ok_or_else(|| String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The harness's report as each subtest's result, `[harness]` failing when the file did not
/// run to its end.
fn parse(report: &Result<String, String>) -> Results {
    #[derive(Deserialize)]
    struct Report {
        status: Status,
        results: Vec<Subtest>,
        errors: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Status {
        status: u8,
    }
    #[derive(Deserialize)]
    struct Subtest {
        name: String,
        status: u8,
        message: Option<String>,
    }
    let report = match report.as_ref().map(|r| serde_json::from_str::<Report>(r)) {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => return vec![(HARNESS_FAILED.into(), Err(format!("no report: {e}")))],
        Err(e) => return vec![(HARNESS_FAILED.into(), Err(e.clone()))],
    };
    let mut results: Results = report
        .results
        .into_iter()
        .map(|t| {
            let why = format!("status {}: {}", t.status, t.message.unwrap_or_default());
            (t.name, if t.status == 0 { Ok(()) } else { Err(why) })
        })
        .collect();
    let harness = match (report.status.status, report.errors.first()) {
        (0, None) => Ok(()),
        (status, error) => Err(format!(
            "status {status}: {}",
            error.map_or("", |e| e.as_str())
        )),
    };
    results.push((HARNESS_FAILED.into(), harness));
    // A name used twice counts once, as its worst result.
    let mut seen: BTreeMap<String, Result<(), String>> = BTreeMap::new();
    for (name, result) in results {
        let entry = seen.entry(name).or_insert(Ok(()));
        if entry.is_ok() {
            *entry = result;
        }
    }
    seen.into_iter().collect()
}

/// The runner's host: `fetch` reads the unpacked tree (`http://web-platform.test/PATH`).
struct Files {
    root: PathBuf,
    waiting: VecDeque<(u32, HostReply)>,
}

impl Files {
    fn new(root: &Path) -> Self {
        Files {
            root: root.to_path_buf(),
            waiting: VecDeque::new(),
        }
    }

    fn answer(&self, call: &HostCall) -> HostReply {
        let HostCall::Fetch(request) = call else {
            return HostReply::Failed(HostError::new(HostErrorKind::Denied, "no tools here"));
        };
        let Some(path) = request.url.strip_prefix(ORIGIN) else {
            return HostReply::Failed(HostError::new(
                HostErrorKind::Denied,
                format!("{} is not in the test tree", request.url),
            ));
        };
        let path = path.split(['?', '#']).next().unwrap_or("");
        let file = self.root.join(path.trim_start_matches('/'));
        let (status, body) = match std::fs::read(&file) {
            Ok(body) if !path.contains("..") => (200, body),
            _ => (404, b"not found".to_vec()),
        };
        let kind = match path.rsplit_once('.').map(|(_, e)| e) {
            Some("json") => "application/json",
            Some("wasm") => "application/wasm",
            Some("js") => "text/javascript",
            Some("idl") | Some("txt") => "text/plain",
            _ => "application/octet-stream",
        };
        HostReply::Response(FetchResponse {
            status,
            status_text: if status == 200 { "OK" } else { "Not Found" }.into(),
            url: request.url.clone(),
            redirected: false,
            headers: vec![("content-type".into(), kind.into())],
            body,
        })
    }
}

impl HostLink for Files {
    fn start(&mut self, id: u32, call: &HostCall) -> Result<(), HostError> {
        let reply = self.answer(call);
        self.waiting.push_back((id, reply));
        Ok(())
    }

    fn wait(&mut self, wait: Duration) -> Waited {
        match self.waiting.pop_front() {
            Some((id, reply)) => Waited::Reply(id, reply),
            None => {
                std::thread::sleep(wait.min(Duration::from_millis(10)));
                Waited::Nothing
            }
        }
    }
}

/// `expectations.toml`: the reasons, by path prefix, and the subtests expected to fail.
#[derive(Deserialize)]
struct Expectations {
    reasons: BTreeMap<String, String>,
    #[serde(default)]
    failing: BTreeMap<String, Failing>,
    #[serde(skip)]
    seen: Mutex<BTreeSet<(String, String)>>,
}

/// A run's subtests that fail: in both modes, or only in one.
#[derive(Deserialize, Default)]
struct Failing {
    #[serde(default)]
    subtests: BTreeSet<String>,
    #[serde(default)]
    stateless: BTreeSet<String>,
    #[serde(default)]
    heap: BTreeSet<String>,
}

impl Failing {
    fn lists(&self, mode: Mode, name: &str) -> bool {
        self.subtests.contains(name)
            || match mode {
                Mode::Stateless => self.stateless.contains(name),
                Mode::Heap => self.heap.contains(name),
                Mode::Node => false,
            }
    }
}

impl Expectations {
    fn load() -> Result<Self, String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wpt/expectations.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        toml::from_str(&text).map_err(|e| e.to_string())
    }

    /// What in `results` of `job` differs from the expectations.
    fn check(&self, job: &Job, mode: Mode, results: &Results) -> Vec<String> {
        let id = job.id();
        let listed = self.failing.get(&id);
        let mut differ = Vec::new();
        for (name, outcome) in results {
            let expected_to_fail = listed.is_some_and(|l| l.lists(mode, name));
            if listed.is_some_and(|l| {
                l.subtests.contains(name) || l.stateless.contains(name) || l.heap.contains(name)
            }) {
                self.seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((id.clone(), name.clone()));
            }
            match (outcome, expected_to_fail) {
                (Err(why), false) => {
                    let mut why = why.clone();
                    why.truncate(300);
                    differ.push(format!("{mode:?} {id}: FAIL {name:?}: {why}"))
                }
                (Ok(()), true) => {
                    differ.push(format!("{mode:?} {id}: passes, yet listed: {name:?}"))
                }
                _ => {}
            }
        }
        differ
    }

    /// Listed failures without a reason, and (after a whole run) listed subtests no run
    /// reported.
    fn unreasoned(&self, whole: bool) -> Vec<String> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (id, failing) in &self.failing {
            if !self
                .reasons
                .keys()
                .any(|prefix| id.starts_with(prefix.as_str()))
            {
                out.push(format!(
                    "{id}: listed as failing, with no reason covering it"
                ));
            }
            let names = failing
                .subtests
                .iter()
                .chain(&failing.stateless)
                .chain(&failing.heap);
            for name in names.filter(|_| whole) {
                if !seen.contains(&(id.clone(), name.clone())) {
                    out.push(format!("{id}: listed, but not reported: {name:?}"));
                }
            }
        }
        out
    }
}

fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
