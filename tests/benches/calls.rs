//! `run_js` as a client calls it: the real binary over stdio, on the directory store, each
//! call waiting for the one before. Per case it prints the median latency of a call and the
//! CPU the server and its workers spent per call (read from /proc), back to back and spaced
//! as an agent spaces its calls.
//!
//! `cargo build --release --workspace && cargo bench -p mcp-v8-e2e --bench calls` measures
//! the release binary (or `MCP_V8_BIN`); a filter argument picks cases by name;
//! `MCP_V8_BENCH_STORE=memory` runs them on the memory store. With
//! `MCP_V8_BASELINE=/path/to/another/mcp-v8` each case runs on both, in turn, three times, and
//! the ratios new/baseline are printed; `MCP_V8_BASELINE_ARGS` adds flags to the baseline's
//! command line (e.g. `--save sync`). Last, the first call after a restart on a heap with a
//! full journal is timed against one with none, and the first call after start (on a new
//! heap, and in `--stateless` mode) against the baseline's.
#![allow(missing_docs)] // criterion_main! generates an undocumented `main`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mcp_v8_e2e::Server;

/// One way of calling.
struct Case {
    name: &'static str,
    setup: &'static str,
    calls: usize,
    spacing: Duration,
    /// Flags for the binary measured (not the baseline).
    args: &'static [&'static str],
    /// Every this many calls one throws after changing the heap (0: none does), which the
    /// server must undo.
    failing: usize,
    /// What each call runs.
    call: &'static str,
    /// Each call on a heap of its own, new (else all on one).
    new_heaps: bool,
}

const TEN_MB: &str =
    "var data = Array.from({length: 200000}, (_, i) => ({i, s: 'item-' + i})); var n = 0";

const CASES: [Case; 9] = [
    Case {
        name: "a new heap each call",
        setup: "0",
        calls: 50,
        spacing: Duration::ZERO,
        args: &[],
        failing: 0,
        call: "var n = 1; n",
        new_heaps: true,
    },
    Case {
        name: "small heap, back to back",
        setup: "var n = 0",
        // Enough calls for the default checkpoints (every 100 calls) to count.
        calls: 200,
        spacing: Duration::ZERO,
        args: &[],
        failing: 0,
        call: "++n",
        new_heaps: false,
    },
    Case {
        name: "small heap, 100 ms apart",
        setup: "var n = 0",
        calls: 20,
        spacing: Duration::from_millis(100),
        args: &[],
        failing: 0,
        call: "++n",
        new_heaps: false,
    },
    Case {
        name: "~1 MB of data, 500 ms apart",
        setup: "var data = Array.from({length: 20000}, (_, i) => ({i, s: 'item-' + i})); var n = 0",
        calls: 12,
        spacing: Duration::from_millis(500),
        args: &[],
        failing: 0,
        call: "++n",
        new_heaps: false,
    },
    Case {
        name: "~10 MB of data, back to back",
        setup: TEN_MB,
        calls: 10,
        spacing: Duration::ZERO,
        args: &[],
        failing: 0,
        call: "++n",
        new_heaps: false,
    },
    Case {
        // Checkpoints 20 times as often as by default: what they cost, amortised (mean).
        name: "~10 MB, b2b, checkpoint every 5",
        setup: TEN_MB,
        calls: 10,
        spacing: Duration::ZERO,
        args: &["--checkpoint-calls", "5"],
        failing: 0,
        call: "++n",
        new_heaps: false,
    },
    Case {
        // What undoing a failed call costs: the next call waits for the heap to be made again.
        name: "~10 MB, b2b, every 5th call throws",
        setup: TEN_MB,
        calls: 10,
        spacing: Duration::ZERO,
        args: &[],
        failing: 5,
        call: "++n",
        new_heaps: false,
    },
    Case {
        // An agent asking for a big value: 200,000 rows as the result of every call.
        name: "~10 MB, the rows as the result",
        setup: TEN_MB,
        calls: 10,
        spacing: Duration::ZERO,
        args: &[],
        failing: 0,
        call: "++n, data",
        new_heaps: false,
    },
    Case {
        name: "~10 MB of data, 1 s apart",
        setup: TEN_MB,
        calls: 6,
        spacing: Duration::from_secs(1),
        args: &[],
        failing: 0,
        call: "++n",
        new_heaps: false,
    },
];

/// What one run of a case measured.
#[derive(Clone, Copy)]
struct Measured {
    median_ms: f64,
    mean_ms: f64,
    cpu_ms_per_call: f64,
}

/// CPU seconds the process `pid` and its children have used so far.
fn cpu_of(pid: u32, children: &[u32]) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    std::iter::once(pid)
        .chain(children.iter().copied())
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / ticks)
        })
        .sum()
}

/// Whether the cases run on the memory store (`MCP_V8_BENCH_STORE=memory`) rather than the
/// directory store.
fn on_memory() -> bool {
    std::env::var("MCP_V8_BENCH_STORE").is_ok_and(|store| store == "memory")
}

/// The binary on the directory store in `dir` (or the memory store), with `extra` flags.
async fn start(binary: &PathBuf, extra: &[String], dir: &std::path::Path) -> Server {
    let mut command = tokio::process::Command::new(binary);
    match on_memory() {
        true => command.arg("--memory"),
        false => command.arg("--directory-path").arg(dir.join("heaps")),
    };
    command.args(extra).env("RUST_LOG", "warn");
    Server::start_command(command).await
}

async fn run(binary: &PathBuf, extra: &[String], case: &Case) -> Measured {
    let dir = tempfile::tempdir().expect("a directory for the heaps");
    let server = start(binary, extra, dir.path()).await;
    server.output(case.setup, "h").await;
    // Let the setup's snapshot land and the worker warm the heap up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let workers = server.workers();
    let cpu_before = cpu_of(server.pid(), &workers);
    let mut latencies = Vec::with_capacity(case.calls);
    for call in 1..=case.calls {
        let started = Instant::now();
        if case.failing > 0 && call % case.failing == 0 {
            let failed = server
                .run_js("n = -1; throw new Error('no')", Some("h"))
                .await;
            assert!(
                matches!(failed, mcp_v8_e2e::Reply::Err(_)),
                "the call should fail"
            );
        } else if case.new_heaps {
            server.output(case.call, &format!("new-{call}")).await;
        } else {
            server.output(case.call, "h").await;
        }
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(case.spacing).await;
    }
    // What the last call left to do after its answer counts too.
    tokio::time::sleep(case.spacing.max(Duration::from_millis(500))).await;
    let cpu = cpu_of(server.pid(), &server.workers()) - cpu_before;
    server.stop().await;
    let mean_ms = latencies.iter().sum::<f64>() / latencies.len() as f64;
    latencies.sort_by(f64::total_cmp);
    Measured {
        median_ms: latencies[latencies.len() / 2],
        mean_ms,
        cpu_ms_per_call: cpu * 1000.0 / case.calls as f64,
    }
}

/// The first call after a restart on a heap of ~10 MB of data: with `records` calls in its
/// journal after the snapshot (killed before a checkpoint), and with none (stopped
/// cleanly, which checkpoints). Milliseconds, median of three.
async fn cold_load(binary: &PathBuf, records: usize) -> (f64, f64) {
    let mut replayed = Vec::new();
    let mut restored = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().expect("a directory for the heaps");
        let server = start(binary, &[], dir.path()).await;
        server.output(TEN_MB, "h").await;
        for _ in 0..records {
            server.output("++n", "h").await;
        }
        server.kill().await;
        let server = start(binary, &[], dir.path()).await;
        let started = Instant::now();
        server.output("n", "h").await;
        replayed.push(started.elapsed().as_secs_f64() * 1000.0);
        server.stop().await;
        let server = start(binary, &[], dir.path()).await;
        let started = Instant::now();
        server.output("n", "h").await;
        restored.push(started.elapsed().as_secs_f64() * 1000.0);
        server.stop().await;
    }
    (median(&mut replayed), median(&mut restored))
}

/// The first call after start, on a new heap and in `--stateless` mode: milliseconds from
/// the call's request to its answer, median of five starts each.
async fn first_calls(binary: &PathBuf, extra: &[String]) -> (f64, f64) {
    let (mut heap, mut stateless) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let dir = tempfile::tempdir().expect("a directory for the heaps");
        let server = start(binary, extra, dir.path()).await;
        let started = Instant::now();
        server.output("1 + 1", "first").await;
        heap.push(started.elapsed().as_secs_f64() * 1000.0);
        server.stop().await;
        let mut command = tokio::process::Command::new(binary);
        command
            .arg("--stateless")
            .args(extra)
            .env("RUST_LOG", "warn");
        let server = Server::start_command(command).await;
        let started = Instant::now();
        let answer = server.run_js("1 + 1", None).await.ok();
        assert_eq!(answer["output"], "2");
        stateless.push(started.elapsed().as_secs_f64() * 1000.0);
        server.stop().await;
    }
    (median(&mut heap), median(&mut stateless))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; a filter narrows the cases by name.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let binary = mcp_v8_e2e::binary();
    let baseline = std::env::var_os("MCP_V8_BASELINE").map(PathBuf::from);
    let baseline_args: Vec<String> = std::env::var("MCP_V8_BASELINE_ARGS")
        .map(|a| a.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    for case in CASES
        .iter()
        .filter(|c| filter.as_ref().is_none_or(|f| c.name.contains(f.as_str())))
    {
        let args: Vec<String> = case.args.iter().map(|a| a.to_string()).collect();
        let Some(baseline) = &baseline else {
            let m = run(&binary, &args, case).await;
            println!(
                "{:32} {:9.2} ms per call (mean {:9.2}), {:7.1} ms CPU per call",
                case.name, m.median_ms, m.mean_ms, m.cpu_ms_per_call
            );
            continue;
        };
        // The case's own flags go to both builds.
        let old_args: Vec<String> = baseline_args.iter().chain(&args).cloned().collect();
        let (mut new, mut old) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            new.push(run(&binary, &args, case).await);
            old.push(run(baseline, &old_args, case).await);
        }
        let pick = |runs: &[Measured], f: fn(&Measured) -> f64| {
            median(&mut runs.iter().map(f).collect::<Vec<_>>())
        };
        let (nl, ol) = (pick(&new, |m| m.median_ms), pick(&old, |m| m.median_ms));
        let (nm, om) = (pick(&new, |m| m.mean_ms), pick(&old, |m| m.mean_ms));
        let (nc, oc) = (
            pick(&new, |m| m.cpu_ms_per_call),
            pick(&old, |m| m.cpu_ms_per_call),
        );
        println!(
            "{:32} latency {:8.2} / {:8.2} ms = {:5.2}x   mean {:8.2} / {:8.2} ms = {:5.2}x   \
             CPU per call {:7.1} / {:7.1} ms = {:5.2}x",
            case.name,
            nl,
            ol,
            nl / ol,
            nm,
            om,
            nm / om,
            nc,
            oc,
            nc / oc
        );
    }
    if filter
        .as_ref()
        .is_none_or(|f| "first call after start".contains(f.as_str()))
    {
        let (heap, stateless) = first_calls(&binary, &[]).await;
        match &baseline {
            None => println!(
                "{:32} {heap:8.2} ms on a new heap, {stateless:8.2} ms stateless",
                "first call after start"
            ),
            Some(baseline) => {
                let (old_heap, old_stateless) = first_calls(baseline, &baseline_args).await;
                println!(
                    "{:32} new heap {heap:8.2} / {old_heap:8.2} ms = {:5.2}x   stateless \
                     {stateless:8.2} / {old_stateless:8.2} ms = {:5.2}x",
                    "first call after start",
                    heap / old_heap,
                    stateless / old_stateless
                );
            }
        }
    }
    let wants_cold_load = filter
        .as_ref()
        .is_none_or(|f| "cold load".contains(f.as_str()));
    if wants_cold_load && !on_memory() {
        let (replayed, restored) = cold_load(&binary, 99).await;
        println!(
            "{:32} {replayed:8.2} ms with 99 calls to replay, {restored:8.2} ms restored alone \
             = {:5.2}x",
            "cold load, ~10 MB of data",
            replayed / restored
        );
    }
}
