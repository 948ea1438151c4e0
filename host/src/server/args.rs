//! What the tools take and return: their arguments and structured results, with the JSON
//! Schemas clients see (`schemars`).

use std::time::{Duration, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::engine::LogLine;
use crate::metrics::StorageStats;
use crate::runtime::{CallError, CallLimits, Listed, TenantStats};
use crate::schema;

/// Arguments of `run_js` on a stateful server.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunJsArgs {
    /// JavaScript or TypeScript source. The value of its last statement is the result.
    pub code: String,
    /// Heap to run on: 1-128 characters of A-Z a-z 0-9 . _ - (not starting with '.').
    /// Omit it to start a new heap; the result names it.
    #[serde(default)]
    pub heap: Option<String>,
    /// Time limit for this call in seconds, at most the server's.
    #[serde(default, deserialize_with = "schema::lenient")]
    pub timeout_secs: Option<f64>,
    /// JavaScript heap limit for this call in MB, at most the server's.
    #[serde(default, deserialize_with = "schema::lenient")]
    pub heap_memory_max_mb: Option<u64>,
    /// Most tokens this answer may take (result and console), at most the server's.
    #[serde(default, deserialize_with = "schema::lenient")]
    pub max_output_tokens: Option<u64>,
    /// Fork: run on `heap`'s state (an empty heap if `heap` is omitted) and save the result
    /// as this new heap instead; `heap` stays as it was.
    #[serde(default)]
    pub save_as: Option<String>,
    /// With `save_as`: replace that heap if it exists (otherwise that is an error).
    #[serde(default)]
    pub overwrite: Option<bool>,
}

/// Arguments of `copy_heap`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct CopyArgs {
    /// The heap to copy.
    pub from: String,
    /// The new heap.
    pub to: String,
    /// Replace `to` if it exists (otherwise that is an error).
    #[serde(default)]
    pub overwrite: Option<bool>,
    /// Copy `from` as it was right after this record of its history (`heap_history`), not as
    /// it is now.
    #[serde(default, deserialize_with = "schema::lenient")]
    pub at_record: Option<u64>,
}

/// Arguments of `heap_history`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct HistoryArgs {
    /// The heap's name.
    pub heap: String,
    /// Most calls to show, the latest (default 20, at most 1000).
    #[serde(default, deserialize_with = "schema::lenient")]
    pub limit: Option<u64>,
}

/// What `heap_history` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HistoryOutput {
    /// The heap.
    pub heap: String,
    /// The record its stored snapshot stands at; `copy_heap` with `at_record` can start from
    /// it or any later record listed here.
    pub snapshot_record: u64,
    /// Its calls since that snapshot, oldest first.
    pub calls: Vec<HistoryEntry>,
    /// Earlier calls since the snapshot not shown (beyond `limit`).
    pub left_out: usize,
}

/// One committed call in `heap_history`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HistoryEntry {
    /// Its record's number.
    pub record: u64,
    /// When it was committed, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The start of its code.
    pub code: String,
    /// The start of what it returned.
    pub output: String,
    /// Why its state was stored instead of its code, when a replay could not reproduce it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_state: Option<String>,
}

/// What `copy_heap` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CopyOutput {
    /// The heap copied.
    pub from: String,
    /// The new heap, holding the same state.
    pub to: String,
    /// Its stored size in bytes.
    pub size: u64,
    /// Its snapshot's size before compression.
    pub raw_size: u64,
}

/// What `delete_heap` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Deleted {
    /// The heap deleted.
    pub deleted: String,
}

/// What `storage_stats` returns: the store's figures to the server's own callers, a tenant's
/// own figures (`tenant`) to a tenant, who sees nothing of the store's other heaps.
#[derive(Debug, Serialize, JsonSchema)]
pub struct StatsOutput {
    /// The store's figures.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub store: Option<StorageStats>,
    /// The calling tenant's figures, with OAuth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantStats>,
}

/// Arguments of `search_tools`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SearchToolsArgs {
    /// Words to look for (all must match), or `server.tool`; empty or omitted for every tool.
    #[serde(default)]
    pub query: Option<String>,
}

/// What `search_tools` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SearchToolsOutput {
    /// TypeScript declarations of the tools found, as `tools` has them.
    pub declarations: String,
}

/// Arguments of `run_js` on a stateless server.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct StatelessRunJsArgs {
    /// JavaScript or TypeScript source. The value of its last statement is the result.
    pub code: String,
    /// Time limit for this call in seconds, at most the server's.
    #[serde(default, deserialize_with = "schema::lenient")]
    pub timeout_secs: Option<f64>,
    /// JavaScript heap limit for this call in MB, at most the server's.
    #[serde(default, deserialize_with = "schema::lenient")]
    pub heap_memory_max_mb: Option<u64>,
    /// Most tokens this answer may take (result and console), at most the server's.
    #[serde(default, deserialize_with = "schema::lenient")]
    pub max_output_tokens: Option<u64>,
}

/// Arguments of `list_heaps`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct ListArgs {
    /// `next_cursor` of the previous page, to get the next one.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// Arguments naming one heap.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct HeapArgs {
    /// The heap's name.
    pub heap: String,
}

/// What either `run_js` shows of a run within the answer's budget: the result, or a preview
/// of it when it does not fit, and the console's first and last lines.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunAnswer {
    /// The completion value (for a promise, what it resolved to): strings as they are,
    /// objects as JSON, other values as `String(value)` prints them; a preview when it does
    /// not fit the answer (`output_truncated`).
    pub output: String,
    /// `output` is not the whole result: a preview of it, or (over --max-output-bytes) cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub output_truncated: bool,
    /// With `output_truncated`: how big the whole result is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_size: Option<OutputSize>,
    /// With `output_truncated`: where the rest is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_rest: Option<String>,
    /// With `output_truncated`: the whole result's text, readable for 10 minutes with
    /// `read_output` or as this resource.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_uri: Option<String>,
    /// `console` output, in order (its first lines, when `logs_left_out`).
    pub logs: Vec<LogLine>,
    /// Console lines left out between `logs` and `logs_tail` to fit the answer.
    #[serde(skip_serializing_if = "is_zero_lines")]
    pub logs_left_out: usize,
    /// The last console lines, after those left out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logs_tail: Vec<LogLine>,
    /// Console output went over --console-max-bytes: lines between the first and the latest
    /// were dropped (counted in `logs_left_out`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub logs_truncated: bool,
    /// Timers still pending when the result settled; they were dropped.
    pub pending_timers: usize,
}

/// What a stateful `run_js` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunJsOutput {
    /// The result and console.
    #[serde(flatten)]
    pub answer: RunAnswer,
    /// The heap the code ran on; pass it again to continue.
    pub heap: String,
    /// How often the code ran again because another client or server stored the heap while
    /// it ran (with --save sync); only this last run's output and logs are returned.
    #[serde(skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// Something to know about the heap's past: e.g. that the store evicted or expired it,
    /// so it started empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
    /// With `save_as`: the heap the code ran on, left unchanged (`heap` is the new one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<String>,
}

pub(super) fn is_zero(n: &u32) -> bool {
    *n == 0
}

pub(super) fn is_zero_lines(n: &usize) -> bool {
    *n == 0
}

/// The size of a whole result that an answer shows only part of.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct OutputSize {
    /// Bytes of its text.
    pub bytes: usize,
    /// Tokens, estimated as the budget estimates them (3 bytes each).
    pub tokens: usize,
}

/// What a stateless `run_js` returns: the result and console.
pub type StatelessRunJsOutput = RunAnswer;

/// One heap in `list_heaps`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HeapInfo {
    /// Heap name.
    pub heap: String,
    /// Size of the stored snapshot in bytes (compressed).
    pub size: u64,
    /// Size of the snapshot before compression, in bytes, when known without reading it
    /// (always for the memory store; for plugin stores, heaps this server has used).
    pub raw_size: Option<u64>,
    /// Last write, in milliseconds since the Unix epoch.
    pub last_modified_ms: u64,
}

/// What `list_heaps` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HeapList {
    /// Heaps, by name: up to 1000 per page.
    pub heaps: Vec<HeapInfo>,
    /// Present when there are more heaps: pass it as `cursor` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl From<Listed> for HeapInfo {
    fn from(listed: Listed) -> Self {
        let m = listed.meta;
        let last_modified_ms = m
            .last_modified
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self {
            heap: m.name,
            size: m.size,
            raw_size: listed.raw_size,
            last_modified_ms,
        }
    }
}

/// Arguments of `read_output`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReadOutputArgs {
    /// `output_uri` of the answer that showed a preview.
    pub uri: String,
    /// Byte to start at (moved back to a character boundary; default 0).
    #[serde(default, deserialize_with = "schema::lenient")]
    pub offset: Option<u64>,
    /// Most bytes to return (default and at most what fits this server's answer budget).
    #[serde(default, deserialize_with = "schema::lenient")]
    pub limit: Option<u64>,
}

/// What `read_output` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ReadOutputOutput {
    /// The text from `offset` on.
    pub text: String,
    /// The byte it starts at.
    pub offset: usize,
    /// Where the next part starts, when there is more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
    /// Bytes of the whole text.
    pub total_bytes: usize,
}

/// A call's own limits, checked.
pub(super) fn call_limits(
    timeout_secs: Option<f64>,
    heap_mb: Option<u64>,
    tokens: Option<u64>,
) -> Result<CallLimits, CallError> {
    let timeout = timeout_secs
        .map(|secs| {
            Duration::try_from_secs_f64(secs).map_err(|_| {
                CallError::InvalidLimit(format!("timeout_secs {secs} is not a duration"))
            })
        })
        .transpose()?;
    let heap_bytes = heap_mb
        .map(|mb| {
            usize::try_from(mb)
                .ok()
                .and_then(|mb| mb.checked_mul(1 << 20))
                .ok_or_else(|| {
                    CallError::InvalidLimit(format!("heap_memory_max_mb {mb} is too large"))
                })
        })
        .transpose()?;
    let answer_tokens = tokens
        .map(|tokens| {
            usize::try_from(tokens).map_err(|_| {
                CallError::InvalidLimit(format!("max_output_tokens {tokens} is too large"))
            })
        })
        .transpose()?;
    Ok(CallLimits {
        timeout,
        heap_bytes,
        answer_tokens,
    })
}
