//! ECMAScript's conformance suite, test262, run through the engine `run_js` uses.
//!
//! Every eligible test of `test/language/` and `test/built-ins/` runs in two modes:
//!
//! * **stateless**: the harness and the test in one call, as `run_js` without a heap runs code;
//! * **heap**: the harness in one stateful call, the test in a second call on the heap the
//!   first one saved (one harness heap per set of includes); the test's heap is not saved.
//!   By default every fourth test of each directory, the first included ([`HEAP_EVERY`]);
//!   `--heap-all` runs them all.
//!
//! It follows the suite's rules (`INTERPRETING.md`): the includes `assert.js`, `sta.js` and,
//! for `async` tests, `doneprintHandle.js`; every test twice, non-strict and with a
//! `"use strict"` prologue, unless `onlyStrict`, `noStrict` or `raw` say otherwise; `negative`
//! tests must throw the named error; `async` tests must print `Test262:AsyncTestComplete`.
//! Tests of modules, of host hooks this host lacks and of features this V8 lacks are skipped
//! for the reasons `expectations.toml` gives.
//!
//! `expectations.toml` also lists every test that fails, with why; the run fails when a test
//! fails that is not listed *or passes while listed*, so the file stays true.
//!
//! The suite comes from `MCP_V8_TEST262` (a folder holding `harness/` and `test/`; `test.sh`
//! unpacks the pinned copy there). Without it the run is skipped, or fails when
//! `MCP_V8_REQUIRE_TOOLS` is set. Arguments: path prefixes to run only part of the suite
//! (`cargo test --test test262 -- built-ins/Date`), `--shard K/N` to run every Nth test
//! from the Kth, `--mode stateless|heap` for one mode, `--heap-all`, `--threads N`,
//! `--failures FILE` to write every failure with its message, and `--reference` to run each
//! failing test in plain V8 as well (no REPL mode, no front end, none of the engine's globals)
//! and say in that file whether V8 itself fails it: what only the sandbox fails is a bug or a
//! documented choice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mcp_v8::engine::{self, Limits, Outside, RunError};
use serde::Deserialize;
use yaml_rust2::{Yaml, YamlLoader};

/// The host's part of the harness (`INTERPRETING.md`, "Host-Defined Functions"): `$262` with
/// the hooks this host has, and `print`, through which async tests report. An async test's
/// call ends with `$262AsyncDone`, a promise settled by that report, so that the call waits
/// for it (timers included) as `run_js` waits for a promise its code returns.
const HOST: &str = r#"var $262 = {
  global: globalThis,
  detachArrayBuffer: ((transfer, apply) => function detachArrayBuffer(buffer) {
    apply(transfer, buffer, []);
    return null;
  })(ArrayBuffer.prototype.transfer, Reflect.apply),
};
var $262AsyncDone = (() => {
  let settle;
  const done = new Promise((resolve) => { settle = resolve; });
  done.settle = settle;
  return done;
})();
function print(message) {
  message = String(message);
  console.log(message);
  if (message.startsWith('Test262:Async')) $262AsyncDone.settle();
}
"#;

/// What an async test's call ends with (see [`HOST`]).
const ASYNC_END: &str = "\n;$262AsyncDone\n";

/// Heap mode runs every this many tests of each directory (the first of each directory
/// always), unless `--heap-all`: a heap's call costs about three stateless ones (restoring
/// the heap, and V8's snapshot of an empty context to dispose of it), and this keeps the
/// whole run within a few minutes on two cores while covering every directory.
const HEAP_EVERY: usize = 4;

/// The hooks of `$262` that [`HOST`] defines.
const HOOKS: [&str; 2] = ["global", "detachArrayBuffer"];

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(20),
        ..Limits::default()
    }
}

fn main() {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("test262: {message}");
            std::process::exit(2);
        }
    };
    let Some(root) = std::env::var_os("MCP_V8_TEST262").map(PathBuf::from) else {
        let why = "MCP_V8_TEST262 is not set (./test.sh unpacks ../shared/test262 and sets it)";
        if std::env::var_os("MCP_V8_REQUIRE_TOOLS").is_some() {
            eprintln!("test262: {why}, and MCP_V8_REQUIRE_TOOLS is set");
            std::process::exit(1);
        }
        println!("test262: skipped: {why}");
        return;
    };
    let expectations = match Expectations::load() {
        Ok(expectations) => expectations,
        Err(message) => {
            eprintln!("test262: expectations.toml: {message}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let suite = match Suite::read(&root, &options, &expectations) {
        Ok(suite) => suite,
        Err(message) => {
            eprintln!("test262: {message}");
            std::process::exit(2);
        }
    };
    println!(
        "test262: {} tests ({} skipped), {} threads",
        suite.tests.len(),
        suite.skipped,
        options.threads
    );
    let results = suite.run(options.threads, options.mode);
    let report = Report::new(&suite, &results, &expectations);
    report.print(started.elapsed());
    if let Some(path) = &options.failures {
        let text = report.failures_text(&suite, &results, options.reference);
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("test262: cannot write {}: {e}", path.display());
        }
    }
    if !report.is_clean() {
        std::process::exit(1);
    }
}

/// The command line.
struct Options {
    prefixes: Vec<String>,
    shard: Option<(usize, usize)>,
    failures: Option<PathBuf>,
    threads: usize,
    /// Only this mode, when given.
    mode: Option<Mode>,
    /// Every how many tests of a directory run in heap mode.
    heap_every: usize,
    /// Run each failing test in plain V8 too, and say in the failures file whether it
    /// fails there.
    reference: bool,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut options = Options {
            prefixes: Vec::new(),
            shard: None,
            failures: None,
            mode: None,
            heap_every: HEAP_EVERY,
            reference: false,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        };
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--shard" => {
                    let value = args.next().ok_or("--shard needs K/N")?;
                    let (k, n) = value.split_once('/').ok_or("--shard needs K/N")?;
                    let (k, n) = (
                        k.parse::<usize>().map_err(|e| format!("--shard: {e}"))?,
                        n.parse::<usize>().map_err(|e| format!("--shard: {e}"))?,
                    );
                    if n == 0 || k >= n {
                        return Err("--shard K/N needs K < N".into());
                    }
                    options.shard = Some((k, n));
                }
                "--failures" => {
                    options.failures = Some(args.next().ok_or("--failures needs a file")?.into());
                }
                "--mode" => {
                    options.mode = match args.next().as_deref() {
                        Some("stateless") => Some(Mode::Stateless),
                        Some("heap") => Some(Mode::Heap),
                        _ => return Err("--mode takes stateless or heap".into()),
                    };
                }
                "--heap-all" => options.heap_every = 1,
                "--reference" => options.reference = true,
                "--threads" => {
                    let value = args.next().ok_or("--threads needs a number")?;
                    options.threads = value.parse().map_err(|e| format!("--threads: {e}"))?;
                }
                // What cargo's test runner passes to every test binary.
                flag if flag.starts_with("--") => {}
                prefix => options.prefixes.push(prefix.to_owned()),
            }
        }
        Ok(options)
    }

    fn selects(&self, path: &str, index: usize) -> bool {
        (self.prefixes.is_empty() || self.prefixes.iter().any(|p| path.starts_with(p.as_str())))
            && self.shard.is_none_or(|(k, n)| index % n == k)
    }
}

/// `expectations.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectations {
    skip: Skips,
    #[serde(default)]
    fail: Vec<Failing>,
}

/// Tests not run, by what they need, each with why.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Skips {
    features: BTreeMap<String, String>,
    /// Features a heap does not have: tests of them run stateless only.
    heap_features: BTreeMap<String, String>,
    hooks: BTreeMap<String, String>,
    flags: BTreeMap<String, String>,
}

/// Tests that fail, and why.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Failing {
    reason: String,
    /// Where they fail; both modes when left out.
    mode: Option<Mode>,
    tests: Vec<String>,
}

impl Expectations {
    fn load() -> Result<Self, String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/test262/expectations.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        let expectations: Expectations = toml::from_str(&text).map_err(|e| e.to_string())?;
        let mut seen = BTreeSet::new();
        for failing in &expectations.fail {
            for test in &failing.tests {
                for mode in failing.modes() {
                    if !seen.insert((test.as_str(), mode)) {
                        return Err(format!("{test} ({mode}) is listed twice"));
                    }
                }
            }
        }
        Ok(expectations)
    }

    /// The reason `path` is expected to fail in `mode`, if it is.
    fn failing(&self, path: &str, mode: Mode) -> Option<&str> {
        self.fail
            .iter()
            .find(|f| f.modes().contains(&mode) && f.tests.iter().any(|t| t == path))
            .map(|f| f.reason.as_str())
    }
}

impl Failing {
    fn modes(&self) -> Vec<Mode> {
        match self.mode {
            Some(mode) => vec![mode],
            None => Mode::ALL.to_vec(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Stateless,
    Heap,
}

impl Mode {
    const ALL: [Mode; 2] = [Mode::Stateless, Mode::Heap];
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Stateless => "stateless",
            Mode::Heap => "heap",
        })
    }
}

/// How a test's source is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Variant {
    /// Non-strict, after the harness.
    Sloppy,
    /// With a `"use strict"` prologue, after the harness.
    Strict,
    /// As written, without the harness (`raw`).
    Raw,
}

/// What a test expects.
#[derive(Debug, Clone)]
enum Expect {
    /// To finish without an exception.
    Success,
    /// To print `Test262:AsyncTestComplete`.
    AsyncSuccess,
    /// To throw an error of this name.
    Throws(String),
}

/// A test's result in each of [`Mode::ALL`]: `None` where it is not run, else `Ok` or what
/// went wrong.
type Outcome = [Option<Result<(), String>>; 2];

struct Test {
    /// Relative to `test/`, with `/` separators.
    path: String,
    /// The modes it runs in.
    modes: &'static [Mode],
    source: String,
    includes: Vec<String>,
    variants: Vec<Variant>,
    expect: Expect,
}

/// Heaps holding a harness, by variant and includes, each made by the first test that needs it.
type HarnessHeaps = HashMap<(Variant, Vec<String>), Arc<OnceLock<Result<Bytes, String>>>>;

struct Suite {
    tests: Vec<Test>,
    skipped: usize,
    harness: HashMap<String, String>,
    /// Heaps holding the harness, by variant and includes.
    heaps: Mutex<HarnessHeaps>,
}

impl Suite {
    fn read(root: &Path, options: &Options, expectations: &Expectations) -> Result<Self, String> {
        let mut harness = HashMap::new();
        let dir = root.join("harness");
        for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let entry = entry.map_err(|e| e.to_string())?;
            if entry.path().is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(entry.path()).map_err(|e| format!("{name}: {e}"))?;
            harness.insert(name, text);
        }
        let mut files = Vec::new();
        for dir in ["language", "built-ins"] {
            collect(&root.join("test"), &root.join("test").join(dir), &mut files)?;
        }
        files.sort();
        let mut tests = Vec::new();
        let mut skipped = 0;
        let mut directory = ("", 0usize);
        for (index, path) in files.iter().enumerate() {
            let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
            if dir != directory.0 {
                directory = (dir, 0);
            }
            let in_directory = directory.1;
            directory.1 += 1;
            if !options.selects(path, index) {
                continue;
            }
            let file = root.join("test").join(path);
            let source = std::fs::read_to_string(&file).map_err(|e| format!("{path}: {e}"))?;
            match Test::read(path, source, &harness, expectations)? {
                Some(mut test) => {
                    if !in_directory.is_multiple_of(options.heap_every) {
                        test.modes = &[Mode::Stateless];
                    }
                    tests.push(test)
                }
                None => skipped += 1,
            }
        }
        Ok(Suite {
            tests,
            skipped,
            harness,
            heaps: Mutex::new(HashMap::new()),
        })
    }

    /// Runs every test in its modes on `threads` threads.
    fn run(&self, threads: usize, only: Option<Mode>) -> Vec<Outcome> {
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Outcome>>> =
            self.tests.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..threads.max(1) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(test) = self.tests.get(i) else { break };
                    let outcome = Mode::ALL.map(|mode| {
                        (test.modes.contains(&mode) && only.is_none_or(|m| m == mode))
                            .then(|| self.run_test(test, mode))
                    });
                    *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_multiple_of(5000) {
                        println!("test262: {n} of {} tests run", self.tests.len());
                    }
                });
            }
        });
        results
            .into_iter()
            .map(|r| {
                r.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or_else(|| [Some(Err("not run".into())), Some(Err("not run".into()))])
            })
            .collect()
    }

    fn run_test(&self, test: &Test, mode: Mode) -> Result<(), String> {
        for &variant in &test.variants {
            let body = test.body(variant);
            let run = match mode {
                Mode::Stateless => {
                    let code = format!("{}{body}", self.prelude(test, variant));
                    engine::run_stateless(&code, limits())
                }
                Mode::Heap => {
                    let heap = self.harness_heap(test, variant)?;
                    on_heap(&body, heap)
                }
            };
            test.check(run).map_err(|e| match variant {
                Variant::Strict => format!("strict: {e}"),
                _ => e,
            })?;
        }
        Ok(())
    }

    /// Runs `test` as a plain V8 host would: every variant as one classic script (harness and
    /// test) in a new isolate and context without anything of the engine's, then its
    /// microtasks. What a test fails here is V8's own failure, not the sandbox's.
    fn run_in_plain_v8(&self, test: &Test) -> Result<(), String> {
        for &variant in &test.variants {
            let code = format!(
                "{PLAIN_HOST}{}{}",
                self.prelude(test, variant),
                test.body(variant)
            );
            plain_v8(&code, &test.expect)?;
        }
        Ok(())
    }

    /// What runs before a test: a prologue, the host's definitions and the harness files.
    fn prelude(&self, test: &Test, variant: Variant) -> String {
        let mut code = String::new();
        match variant {
            Variant::Raw => return code,
            Variant::Strict => code.push_str("\"use strict\";\n"),
            Variant::Sloppy => {}
        }
        code.push_str(HOST);
        for name in &test.includes {
            // Names were checked when the test was read.
            if let Some(text) = self.harness.get(name) {
                code.push_str(text);
                code.push('\n');
            }
        }
        code
    }

    /// A heap holding the harness of `test` in `variant`, made by a first call.
    fn harness_heap(&self, test: &Test, variant: Variant) -> Result<Bytes, String> {
        let includes = match variant {
            Variant::Raw => Vec::new(),
            _ => test.includes.clone(),
        };
        let cell = {
            let mut heaps = self.heaps.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(heaps.entry((variant, includes)).or_default())
        };
        cell.get_or_init(|| {
            let code = format!("{}undefined", self.prelude(test, variant));
            engine::run_stateful(&code, None, limits())
                .result
                .map(|(_, heap)| heap)
                .map_err(|e| format!("the harness call failed: {e}"))
        })
        .clone()
    }
}

/// Runs `code` on `heap` as a stateful call does, but drops the heap afterwards instead of
/// saving it: what a test checks is the run, and the save is most of a call's time.
fn on_heap(code: &str, heap: Bytes) -> engine::Outcome {
    let code = match engine::read_code(code) {
        Ok(code) => code,
        Err(e) => return engine::Outcome::failed(e),
    };
    match engine::HeapIsolate::new(Some(heap), &limits()) {
        Ok(warm) => warm
            .run(&code, &limits(), Outside::none())
            .map_result(|r| r.map(|(c, _)| c).map_err(|(e, _)| e)),
        Err(e) => engine::Outcome::failed(e),
    }
}

/// What a plain V8 host lacks for [`HOST`]: `console.log` (collected) and `setTimeout` (as
/// a job, which is all the suite needs of it). Only for [`plain_v8`], in sloppy mode; a
/// strict test's prologue is in the code after it, which then runs as a second script.
const PLAIN_HOST: &str = "var $262Printed = ''; \
    var console = { log(message) { $262Printed += String(message) + '\\n'; } }; \
    var setTimeout = (f, ms, ...args) => { Promise.resolve().then(() => f(...args)); };\n";

/// Runs `code` in a new plain isolate as a classic script, then its microtasks.
fn plain_v8(code: &str, expect: &Expect) -> Result<(), String> {
    engine::init();
    let isolate = &mut v8::Isolate::new(v8::CreateParams::default());
    let scope = &mut v8::HandleScope::new(isolate);
    let context = v8::Context::new(scope, Default::default());
    let scope = &mut v8::ContextScope::new(scope, context);
    let tc = &mut v8::TryCatch::new(scope);
    // The host part first, so that a strict test's prologue stays the first statement.
    let (host, rest) = code.split_at(PLAIN_HOST.len());
    let mut thrown = None;
    for part in [host, rest] {
        let source = v8::String::new(tc, part).ok_or("code too long")?;
        let ran = v8::Script::compile(tc, source, None).and_then(|script| script.run(tc));
        if ran.is_none() {
            thrown = Some(
                tc.exception()
                    .map_or_else(|| "terminated".to_owned(), |e| constructor_name(tc, e)),
            );
            break;
        }
        tc.perform_microtask_checkpoint();
    }
    let printed = v8::String::new(tc, "$262Printed")
        .and_then(|key| context.global(tc).get(tc, key.into()))
        .map(|text| text.to_rust_string_lossy(tc))
        .unwrap_or_default();
    let printed: Vec<&str> = printed.lines().collect();
    match (expect, thrown) {
        (Expect::Success, None) => Ok(()),
        (Expect::AsyncSuccess, None) if printed.contains(&"Test262:AsyncTestComplete") => Ok(()),
        (Expect::Throws(name), Some(got)) if &got == name => Ok(()),
        (_, Some(got)) => Err(format!("threw {got}")),
        (_, None) => Err("did not do what the test expects".into()),
    }
}

/// `value.constructor.name`: what a negative test names.
fn constructor_name(scope: &mut v8::HandleScope, value: v8::Local<v8::Value>) -> String {
    let name = (|| {
        let object = value.to_object(scope)?;
        let key = v8::String::new(scope, "constructor")?;
        let constructor = object.get(scope, key.into())?.to_object(scope)?;
        let key = v8::String::new(scope, "name")?;
        Some(
            constructor
                .get(scope, key.into())?
                .to_rust_string_lossy(scope),
        )
    })();
    name.unwrap_or_else(|| value.to_rust_string_lossy(scope))
}

/// Adds every test file under `dir` to `files`, relative to `base`.
fn collect(base: &Path, dir: &Path, files: &mut Vec<String>) -> Result<(), String> {
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            collect(base, &path, files)?;
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        if !name.ends_with(".js") || name.contains("_FIXTURE") {
            continue;
        }
        let relative = path.strip_prefix(base).map_err(|e| e.to_string())?;
        files.push(relative.to_string_lossy().replace('\\', "/"));
    }
    Ok(())
}

impl Test {
    /// Reads a test's front matter: the test, or `None` when it is skipped.
    fn read(
        path: &str,
        source: String,
        harness: &HashMap<String, String>,
        expectations: &Expectations,
    ) -> Result<Option<Test>, String> {
        let meta = front_matter(&source).ok_or_else(|| format!("{path}: no front matter"))?;
        let meta = YamlLoader::load_from_str(meta)
            .map_err(|e| format!("{path}: front matter: {e}"))?
            .into_iter()
            .next()
            .unwrap_or(Yaml::Null);
        let list = |key: &str| -> Vec<String> {
            meta[key]
                .as_vec()
                .map(|v| {
                    v.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let flags = list("flags");
        let features = list("features");
        let skips = &expectations.skip;
        if flags.iter().any(|f| skips.flags.contains_key(f))
            || features.iter().any(|f| skips.features.contains_key(f))
        {
            return Ok(None);
        }
        let raw = flags.iter().any(|f| f == "raw");
        let asynchronous = flags.iter().any(|f| f == "async");
        let mut includes: Vec<String> = if raw {
            Vec::new()
        } else {
            ["assert.js", "sta.js"].map(String::from).to_vec()
        };
        if asynchronous {
            includes.push("doneprintHandle.js".into());
        }
        for name in list("includes") {
            if !includes.contains(&name) {
                includes.push(name);
            }
        }
        let mut needs = hooks(&source);
        for name in &includes {
            let text = harness
                .get(name)
                .ok_or_else(|| format!("{path}: no harness file {name}"))?;
            needs.extend(hooks(text));
        }
        for hook in needs {
            if HOOKS.contains(&hook) {
                continue;
            }
            if skips.hooks.contains_key(hook) {
                return Ok(None);
            }
            return Err(format!(
                "{path} needs $262.{hook}: define it in the runner or give a reason to skip \
                 it in expectations.toml"
            ));
        }
        let variants = if raw {
            vec![Variant::Raw]
        } else if flags.iter().any(|f| f == "onlyStrict") {
            vec![Variant::Strict]
        } else if flags.iter().any(|f| f == "noStrict") {
            vec![Variant::Sloppy]
        } else {
            vec![Variant::Sloppy, Variant::Strict]
        };
        let expect = match meta["negative"]["type"].as_str() {
            Some(name) => Expect::Throws(name.to_owned()),
            None if asynchronous => Expect::AsyncSuccess,
            None => Expect::Success,
        };
        let modes: &[Mode] = if features.iter().any(|f| skips.heap_features.contains_key(f)) {
            &[Mode::Stateless]
        } else {
            &Mode::ALL
        };
        Ok(Some(Test {
            path: path.to_owned(),
            modes,
            source,
            includes,
            variants,
            expect,
        }))
    }

    /// The test's own call: its source, with a prologue when strict.
    fn body(&self, variant: Variant) -> String {
        let mut code = String::new();
        if variant == Variant::Strict {
            code.push_str("\"use strict\";\n");
        }
        code.push_str(&self.source);
        if matches!(self.expect, Expect::AsyncSuccess) {
            code.push_str(ASYNC_END);
        }
        code
    }

    /// Whether `run` is what the test expects; if not, what happened instead.
    fn check(&self, run: engine::Outcome) -> Result<(), String> {
        match (&self.expect, run.result) {
            (Expect::Success, Ok(_)) => Ok(()),
            (Expect::AsyncSuccess, Ok(_)) => {
                let lines: Vec<&str> = run.console.lines.iter().map(|l| l.text.as_str()).collect();
                if let Some(failure) = lines
                    .iter()
                    .find(|l| l.starts_with("Test262:AsyncTestFailure"))
                {
                    Err(failure.to_string())
                } else if lines.contains(&"Test262:AsyncTestComplete") {
                    Ok(())
                } else {
                    Err("the async test never called $DONE".into())
                }
            }
            (Expect::Throws(name), Err(RunError::Exception(e))) if &e.name == name => Ok(()),
            // A Test262Error is no native error: the engine shows it as its class and what
            // it holds.
            (Expect::Throws(name), Err(RunError::Exception(e)))
                if name == "Test262Error"
                    && e.name.is_empty()
                    && e.message.starts_with("Test262Error {\"message\":") =>
            {
                Ok(())
            }
            (Expect::Throws(name), Ok(_)) => {
                Err(format!("expected {name}, but nothing was thrown"))
            }
            (Expect::Throws(name), Err(e)) => Err(format!("expected {name}, got {}", one_line(&e))),
            (_, Err(e)) => Err(one_line(&e)),
        }
    }
}

fn one_line(error: &RunError) -> String {
    let text = error.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(300).collect()
}

/// The YAML between `/*---` and `---*/`.
fn front_matter(source: &str) -> Option<&str> {
    let start = source.find("/*---")? + 5;
    let end = source[start..].find("---*/")? + start;
    Some(&source[start..end])
}

/// The `$262` hooks `source` uses.
fn hooks(source: &str) -> BTreeSet<&str> {
    source
        .match_indices("$262.")
        .map(|(at, _)| {
            let rest = &source[at + 5..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// The run compared with the expectations.
struct Report {
    passed: [usize; 2],
    /// Failures not in the expectations: (mode, path, what happened).
    new_failures: Vec<(Mode, String, String)>,
    /// Listed failures that passed: (mode, path, the listed reason).
    new_passes: Vec<(Mode, String, String)>,
    expected_failures: usize,
}

impl Report {
    fn new(suite: &Suite, results: &[Outcome], expectations: &Expectations) -> Self {
        let mut report = Report {
            passed: [0, 0],
            new_failures: Vec::new(),
            new_passes: Vec::new(),
            expected_failures: 0,
        };
        for (test, outcome) in suite.tests.iter().zip(results) {
            for (m, mode) in Mode::ALL.into_iter().enumerate() {
                let expected = expectations.failing(&test.path, mode);
                match (&outcome[m], expected) {
                    (None, _) => {}
                    (Some(Ok(())), None) => report.passed[m] += 1,
                    (Some(Ok(())), Some(reason)) => {
                        report
                            .new_passes
                            .push((mode, test.path.clone(), reason.to_owned()))
                    }
                    (Some(Err(_)), Some(_)) => report.expected_failures += 1,
                    (Some(Err(e)), None) => {
                        report
                            .new_failures
                            .push((mode, test.path.clone(), e.clone()))
                    }
                }
            }
        }
        report
    }

    fn is_clean(&self) -> bool {
        self.new_failures.is_empty() && self.new_passes.is_empty()
    }

    fn print(&self, took: Duration) {
        const SHOWN: usize = 100;
        for (mode, path, error) in self.new_failures.iter().take(SHOWN) {
            println!("FAIL ({mode}) {path}: {error}");
        }
        if self.new_failures.len() > SHOWN {
            println!("... and {} more failures", self.new_failures.len() - SHOWN);
        }
        for (mode, path, reason) in self.new_passes.iter().take(SHOWN) {
            println!("PASS ({mode}) {path}, listed in expectations.toml as failing: {reason}");
        }
        if self.new_passes.len() > SHOWN {
            println!("... and {} more passes", self.new_passes.len() - SHOWN);
        }
        println!(
            "test262: stateless {} passed, heap {} passed, {} expected failures, in {:.0} s",
            self.passed[0],
            self.passed[1],
            self.expected_failures,
            took.as_secs_f64()
        );
        if !self.is_clean() {
            println!(
                "test262: {} failures and {} passes that expectations.toml does not list \
                 (host/tests/test262/expectations.toml; --failures FILE writes them all)",
                self.new_failures.len(),
                self.new_passes.len()
            );
        }
        let failed = self.new_failures.len() + self.new_passes.len();
        println!(
            "test262: {} passed, {failed} failed",
            self.passed[0] + self.passed[1] + self.expected_failures
        );
    }

    /// Every failure of the run, a line each: mode, path, what happened and, with
    /// `reference`, whether plain V8 fails the test too (`v8-fails`, `v8-passes`).
    fn failures_text(&self, suite: &Suite, results: &[Outcome], reference: bool) -> String {
        let mut text = String::new();
        for (test, outcome) in suite.tests.iter().zip(results) {
            let mut plain = None;
            for (m, mode) in Mode::ALL.into_iter().enumerate() {
                if let Some(Err(e)) = &outcome[m] {
                    let _ = write!(text, "{mode}\t{}\t{e}", test.path);
                    if reference {
                        let v8 = plain.get_or_insert_with(|| suite.run_in_plain_v8(test));
                        text.push_str(if v8.is_ok() {
                            "\tv8-passes"
                        } else {
                            "\tv8-fails"
                        });
                    }
                    text.push('\n');
                }
            }
        }
        text
    }
}
