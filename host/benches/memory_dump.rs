//! Dump and reload of 1 GB of heaps (1000 sealed snapshots of 1 MiB): seconds, and the peak
//! memory each step adds to what the store already holds. Not a criterion bench: one run
//! of each is what a shutdown or a start costs.
//!
//! `cargo bench -p mcp-v8 --bench memory_dump` (needs 1 GB free in the temp directory).
#![allow(missing_docs)] // criterion_main! generates an undocumented `main`

use std::time::Instant;

use bytes::Bytes;
use mcp_v8::envelope::{self, Codec, Position, ReadOnly};
use mcp_v8::storage::{Dump, HeapStore, MemoryStore, Precondition};

const HEAPS: usize = 1000;
const SNAPSHOT: usize = 1 << 20;

/// Resident memory now and at its peak since the last reset, in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Restarts the peak-memory count (Linux: writing 5 to clear_refs resets VmHWM).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--reload") {
        return reload(args[at + 1].clone().into());
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.dump");
    let store = MemoryStore::new();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..HEAPS {
        // Incompressible bytes, as a compressed snapshot is.
        let snapshot: Vec<u8> = (0..SNAPSHOT / 8)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()
            })
            .collect();
        let name = format!("heap-{i}");
        let sealed = envelope::seal(
            &snapshot,
            &name,
            ReadOnly::Shared,
            Codec::None,
            Position::default(),
        );
        store
            .put(&name, Bytes::from(sealed), Precondition::Any)
            .expect("put");
    }
    let dump = Dump::new(store, path.clone());
    reset_peak();
    let (before, _) = memory();
    let started = Instant::now();
    let written = dump.write().expect("write the dump");
    let took = started.elapsed();
    let (_, peak) = memory();
    println!(
        "dump:   {} heaps, {:.0} MiB in {:.2} s ({:.0} MiB/s), peak extra memory {:.1} MiB",
        written.heaps,
        written.bytes as f64 / 1048576.0,
        took.as_secs_f64(),
        written.bytes as f64 / 1048576.0 / took.as_secs_f64(),
        peak - before
    );
    drop(dump);
    // Reload in a fresh process, so memory this one freed does not hide what loading costs.
    let status = std::process::Command::new(std::env::current_exe().expect("this bench"))
        .arg("--reload")
        .arg(&path)
        .status()
        .expect("run the reload");
    assert!(status.success());
}

fn reload(path: std::path::PathBuf) {
    let fresh = MemoryStore::new();
    let reload = Dump::new(fresh.clone(), path);
    reset_peak();
    let (before, _) = memory();
    let started = Instant::now();
    let loaded = reload.load().expect("load the dump");
    let took = started.elapsed();
    let (_, peak) = memory();
    let loaded_mib = loaded.bytes as f64 / 1048576.0;
    println!(
        "reload: {} heaps, {loaded_mib:.0} MiB in {:.2} s ({:.0} MiB/s), peak extra memory \
         {:.1} MiB beyond the heaps themselves",
        loaded.heaps,
        took.as_secs_f64(),
        loaded_mib / took.as_secs_f64(),
        (peak - before - loaded_mib).max(0.0),
    );
}
