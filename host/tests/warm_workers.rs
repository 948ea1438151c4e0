//! Worker processes keep heaps warm: a heap's next job runs on the isolate its worker kept,
//! without the snapshot being sent again; a failed job rolls back inside the worker; a job
//! for a state the worker no longer holds is refused with `NotWarm`, never run on stale state.

use std::path::PathBuf;

use mcp_v8::engine::{fingerprint, Limits};
use mcp_v8::executor::Executor;
use mcp_v8::job::{Job, NotWarm, Start, Target, WarmRef};
use mcp_v8::record::{Effect, Record};
use mcp_v8::worker::WorkerSettings;

fn executor(workers: usize, warm_bytes: usize) -> Executor {
    let settings = WorkerSettings {
        warm_bytes,
        limits: Limits::default(),
    };
    Executor::workers(
        PathBuf::from(env!("CARGO_BIN_EXE_mcp-v8")),
        workers,
        settings,
    )
}

fn job(code: &str, start: Start) -> Job {
    Job {
        code: code.into(),
        target: Target::Heap {
            name: "a".into(),
            start,
            replay: Vec::new(),
        },
        limits: Limits::default(),
        live: None,
    }
}

/// Runs a heap job; returns its output (or error text) and, on success, where it is warm.
async fn run(
    executor: &Executor,
    code: &str,
    start: Start,
) -> Result<(String, Option<WarmRef>), NotWarm> {
    let (outcome, saving) = executor.run(job(code, start)).await?;
    let output = match outcome.result {
        Ok(completion) => completion.output,
        Err(e) => return Ok((format!("error: {e}"), None)),
    };
    let saved = saving
        .expect("a successful stateful job saves")
        .finish()
        .await;
    Ok((output, saved.expect("the save").warm))
}

#[tokio::test]
async fn a_heap_runs_again_on_the_isolate_its_worker_kept() {
    let executor = executor(2, 256 << 20);
    let (output, warm) = run(&executor, "var n = 1; n", Start::New).await.unwrap();
    assert_eq!(output, "1");
    let first = warm.expect("kept warm");
    // No snapshot is sent: the state can only come from the worker's warm isolate.
    let (output, warm) = run(&executor, "++n", Start::Warm(first)).await.unwrap();
    assert_eq!(output, "2");
    let second = warm.expect("kept warm");
    assert_eq!(second.worker, first.worker, "the same worker");
    assert_ne!(second.generation, first.generation);
    // A failure rolls back to the last good state, still warm under the same generation.
    let (output, _) = run(
        &executor,
        "n = 100; throw new Error('no')",
        Start::Warm(second),
    )
    .await
    .unwrap();
    assert!(output.starts_with("error: Uncaught Error: no"), "{output}");
    let (output, _) = run(&executor, "n", Start::Warm(second)).await.unwrap();
    assert_eq!(output, "2");
    // The state before is gone: refused, not run on stale state. (The worker then drops
    // what it held: the host asks for an older state only when it knows better.)
    assert_eq!(run(&executor, "n", Start::Warm(first)).await, Err(NotWarm));
    assert_eq!(run(&executor, "n", Start::Warm(second)).await, Err(NotWarm));
}

#[tokio::test]
async fn with_no_budget_nothing_is_kept_warm() {
    let executor = executor(1, 0);
    let (_, warm) = run(&executor, "var n = 1", Start::New).await.unwrap();
    let warm = warm.expect("the worker is named");
    assert_eq!(run(&executor, "n", Start::Warm(warm)).await, Err(NotWarm));
}

#[tokio::test]
async fn a_warm_isolate_in_process_is_never_claimed() {
    let warm = WarmRef {
        worker: 1,
        generation: 1,
    };
    assert_eq!(
        run(&Executor::InProcess, "1", Start::Warm(warm)).await,
        Err(NotWarm)
    );
}

#[tokio::test]
async fn a_forgotten_heap_is_dropped_with_the_workers_next_job() {
    let executor = executor(1, 256 << 20);
    let (_, warm) = run(&executor, "var n = 1", Start::New).await.unwrap();
    let warm = warm.expect("kept warm");
    executor.forget(warm, "a");
    let stateless = Job {
        code: "1".into(),
        target: Target::Stateless,
        limits: Limits::default(),
        live: None,
    };
    let (outcome, _) = executor.run(stateless).await.unwrap();
    assert_eq!(outcome.result.unwrap().output, "1");
    assert_eq!(run(&executor, "n", Start::Warm(warm)).await, Err(NotWarm));
}

/// A worker rebuilds a heap from a snapshot and the committed calls after it: each replays
/// from its tape to what it showed, and the job's code then sees the state they left. A
/// record that does not reproduce its call stops the job, naming it.
#[tokio::test]
async fn a_worker_replays_committed_calls_before_the_code() {
    let executor = executor(1, 256 << 20);
    let (_, saving) = executor
        .run(job("var draws = []; var n = 0", Start::New))
        .await
        .unwrap();
    let base = saving.unwrap().finish().await.unwrap().snapshot;
    let mut records = Vec::new();
    let mut state = base.clone();
    for seq in 1..=3 {
        let code = "n++; draws.push(Math.random()); console.log(Date.now() > 0); n";
        let (outcome, saving) = executor
            .run(job(code, Start::Snapshot(state.clone())))
            .await
            .unwrap();
        let completion = outcome.result.unwrap();
        state = saving.unwrap().finish().await.unwrap().snapshot;
        records.push(Record {
            heap: "a".into(),
            lineage: 1,
            seq,
            prev: 0,
            at_ms: 0,
            effect: Effect::Call {
                code: code.into(),
                heap_bytes: Limits::default().heap_bytes,
                fingerprint: fingerprint(&completion, &outcome.console),
                tape: completion.tape,
            },
        });
    }
    let read = "JSON.stringify([n, draws])";
    let (expected, _) = executor
        .run(job(read, Start::Snapshot(state)))
        .await
        .unwrap();
    let expected = expected.result.unwrap().output;
    let mut rebuild = job(read, Start::Snapshot(base.clone()));
    if let Target::Heap { replay, .. } = &mut rebuild.target {
        *replay = records.clone();
    }
    let (outcome, _) = executor.run(rebuild).await.unwrap();
    assert_eq!(outcome.result.unwrap().output, expected);

    if let Effect::Call { fingerprint, .. } = &mut records[1].effect {
        *fingerprint ^= 1;
    }
    let mut diverging = job(read, Start::Snapshot(base));
    if let Target::Heap { replay, .. } = &mut diverging.target {
        *replay = records;
    }
    let (outcome, saving) = executor.run(diverging).await.unwrap();
    let error = outcome.result.unwrap_err().to_string();
    assert!(
        error.contains("replaying call 2 of the heap's journal did not reproduce it"),
        "{error}"
    );
    assert!(saving.is_none());
}
