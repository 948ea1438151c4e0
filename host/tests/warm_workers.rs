//! Worker processes keep heaps warm: a heap's next job runs on the isolate its worker kept,
//! without the snapshot being sent again — snapshotted after each job, or kept live call by
//! call and snapshotted only when asked (a checkpoint); a failed job rolls back inside the
//! worker; a job for a state the worker no longer holds is refused with `NotWarm`, never run
//! on stale state.

use std::path::PathBuf;

use mcp_v8::engine::{fingerprint, Limits};
use mcp_v8::executor::Executor;
use mcp_v8::job::{Job, Keep, NewState, NotWarm, Start, Target, WarmRef};
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
    job_keeping(code, start, Keep::Snapshot)
}

fn job_keeping(code: &str, start: Start, keep: Keep) -> Job {
    Job {
        code: code.into(),
        target: Target::Heap {
            name: "a".into(),
            start,
            replay: Vec::new(),
            keep,
            last_error: None,
        },
        limits: Limits::default(),
        live: None,
        host: None,
    }
}

/// The snapshot a job left.
async fn snapshot_of(new_state: Option<NewState>) -> bytes::Bytes {
    match new_state {
        Some(NewState::Saving(saving)) => saving.finish().await.unwrap().snapshot,
        _ => panic!("no snapshot"),
    }
}

/// Runs a heap job; returns its output (or error text) and, on success, where it is warm.
async fn run(
    executor: &Executor,
    code: &str,
    start: Start,
) -> Result<(String, Option<WarmRef>), NotWarm> {
    run_keeping(executor, code, start, Keep::Snapshot).await
}

async fn run_keeping(
    executor: &Executor,
    code: &str,
    start: Start,
    keep: Keep,
) -> Result<(String, Option<WarmRef>), NotWarm> {
    let (outcome, new_state) = executor.run(job_keeping(code, start, keep)).await?;
    let output = match outcome.result {
        Ok(completion) => completion.output,
        Err(e) => return Ok((format!("error: {e}"), None)),
    };
    let warm = match new_state.expect("a successful stateful job has a new state") {
        NewState::Saving(saving) => saving.finish().await.expect("the save").warm,
        NewState::Live(warm) => Some(warm),
    };
    Ok((output, warm))
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
    let (_, saving) = executor.run(job("var n = 1", Start::New)).await.unwrap();
    let snapshot = snapshot_of(saving).await;
    // A state the worker cannot keep is snapshotted even when the host would keep it live.
    let (outcome, new_state) = executor
        .run(job_keeping("++n", Start::Snapshot(snapshot), Keep::Live))
        .await
        .unwrap();
    assert_eq!(outcome.result.unwrap().output, "2");
    let Some(NewState::Saving(saving)) = new_state else {
        panic!("kept live with no room for it")
    };
    let warm = saving
        .finish()
        .await
        .unwrap()
        .warm
        .expect("the worker is named");
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
        host: None,
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
    let base = snapshot_of(saving).await;
    let mut records = Vec::new();
    let mut state = base.clone();
    for seq in 1..=3 {
        let code = "n++; draws.push(Math.random()); console.log(Date.now() > 0); n";
        let (outcome, saving) = executor
            .run(job(code, Start::Snapshot(state.clone())))
            .await
            .unwrap();
        let completion = outcome.result.unwrap();
        state = snapshot_of(saving).await;
        records.push(Record {
            heap: "a".into(),
            lineage: 1,
            seq,
            prev: 0,
            at_ms: 0,
            output: String::new(),
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

/// A state kept live moves on call by call with no snapshot; a failed call rolls back to it
/// (the worker rebuilds it from its snapshot and the calls since); a checkpoint snapshots
/// it, and that snapshot restored elsewhere is the same state.
#[tokio::test]
async fn a_live_state_moves_on_rolls_back_and_checkpoints() {
    let executor = executor(1, 256 << 20);
    let (_, warm) = run(&executor, "var n = 0; var seen = []", Start::New)
        .await
        .unwrap();
    let mut at = warm.expect("kept warm");
    for expected in 1..=3 {
        let code = "n++; seen.push(Math.random()); n";
        let (output, warm) = run_keeping(&executor, code, Start::Warm(at), Keep::Live)
            .await
            .unwrap();
        assert_eq!(output, expected.to_string());
        let next = warm.expect("kept live");
        assert_ne!(
            next.generation, at.generation,
            "each state has its own number"
        );
        at = next;
    }
    let read = "JSON.stringify([n, seen])";
    let (before, warm) = run_keeping(&executor, read, Start::Warm(at), Keep::Live)
        .await
        .unwrap();
    at = warm.expect("a read is a call too: the state moved on");
    let failing = "n = 100; seen = null; throw 1";
    let (failed, warm) = run_keeping(&executor, failing, Start::Warm(at), Keep::Live)
        .await
        .unwrap();
    assert!(failed.starts_with("error:"), "{failed}");
    assert!(warm.is_none());
    // Rolled back: rebuilt from the first snapshot and the four calls since, the same
    // random draws included.
    let (after, warm) = run_keeping(&executor, read, Start::Warm(at), Keep::Live)
        .await
        .unwrap();
    assert_eq!(after, before);
    at = warm.unwrap();

    let saved = executor
        .checkpoint(at, "a", Limits::default())
        .await
        .expect("held")
        .expect("snapshotted");
    let moved = saved.warm.expect("still held");
    assert_ne!(moved.generation, at.generation);
    let (elsewhere, _) = run(&executor, read, Start::Snapshot(saved.snapshot))
        .await
        .unwrap();
    assert_eq!(elsewhere, before, "the checkpoint is the live state");
    // That job ran the heap from the snapshot, so the worker holds that state now.
    assert!(matches!(
        executor.checkpoint(moved, "a", Limits::default()).await,
        Err(NotWarm)
    ));
}

/// A committed call that runs out of time when it is replayed fails the load without calling
/// the journal wrong: nothing is lost, and the error says so.
#[tokio::test]
async fn a_replay_out_of_time_fails_the_load_and_blames_no_record() {
    let limits = Limits {
        timeout: std::time::Duration::from_millis(500),
        ..Limits::default()
    };
    let settings = WorkerSettings {
        warm_bytes: 256 << 20,
        limits,
    };
    let executor = Executor::workers(PathBuf::from(env!("CARGO_BIN_EXE_mcp-v8")), 1, settings);
    let (_, saving) = executor.run(job("var n = 0", Start::New)).await.unwrap();
    let base = snapshot_of(saving).await;
    // A record of a call that, replayed, never ends (as one that ran close to a limit might
    // not end in time on another machine).
    let record = Record {
        heap: "a".into(),
        lineage: 1,
        seq: 7,
        prev: 0,
        at_ms: 0,
        output: String::new(),
        effect: Effect::Call {
            code: "while (true) {}".into(),
            heap_bytes: limits.heap_bytes,
            fingerprint: 0,
            tape: mcp_v8::engine::Tape::starting_now(),
        },
    };
    let mut load = job("n", Start::Snapshot(base));
    load.limits = limits;
    if let Target::Heap { replay, .. } = &mut load.target {
        *replay = vec![record];
    }
    let (outcome, _) = executor.run(load).await.unwrap();
    let error = outcome.result.unwrap_err();
    assert!(
        matches!(error, mcp_v8::engine::RunError::ReplayFailed { seq: 7, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("nothing was lost"), "{error}");
}
