//! Counters and latency histograms for the store and for `run_js`, read by the
//! `storage_stats` tool and rendered as Prometheus text at `GET /metrics`.
//!
//! Everything is a relaxed atomic: recording costs a few nanoseconds and never blocks a call.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mcp_v8_plugin_api::{ErrorKind, Usage};
use serde::Serialize;

/// Upper bounds of the latency buckets, in seconds: 1 µs to 60 s in 1-2.5-5 steps.
pub const BUCKETS: [f64; 24] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A latency histogram with [`BUCKETS`] (and one for everything slower).
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn record(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = BUCKETS.partition_point(|bound| *bound < secs);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn counts(&self) -> [u64; BUCKETS.len() + 1] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts().iter().sum()
    }

    /// The `q` quantile (0 to 1) in milliseconds, interpolated within its bucket; `None`
    /// before any observation.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let counts = self.counts();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let target = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut below = 0u64;
        for (i, &n) in counts.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= target {
                let Some(&upper) = BUCKETS.get(i) else {
                    // Slower than the last bound: that bound is all we can say.
                    return Some(BUCKETS[BUCKETS.len() - 1] * 1e3);
                };
                let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
                let within = (target - below as f64) / n as f64;
                return Some((lower + (upper - lower) * within) * 1e3);
            }
            below += n;
        }
        None
    }

    /// p50, p90 and p99, for `storage_stats`.
    pub fn summary(&self) -> Latency {
        let round = |ms: Option<f64>| ms.map(|ms| (ms * 1e4).round() / 1e4);
        Latency {
            count: self.count(),
            p50_ms: round(self.quantile_ms(0.5)),
            p90_ms: round(self.quantile_ms(0.9)),
            p99_ms: round(self.quantile_ms(0.99)),
        }
    }

    /// Appends this histogram as Prometheus `_bucket`, `_sum` and `_count` lines.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let counts = self.counts();
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, n) in counts.iter().enumerate() {
            cumulative += n;
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

/// Latency percentiles of one operation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Latency {
    /// Operations measured.
    pub count: u64,
    /// Median, in milliseconds (estimated from the histogram's buckets).
    pub p50_ms: Option<f64>,
    /// 90th percentile, in milliseconds.
    pub p90_ms: Option<f64>,
    /// 99th percentile, in milliseconds.
    pub p99_ms: Option<f64>,
}

/// The store operations the host measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read a heap.
    Get,
    /// Write a heap.
    Put,
    /// Remove a heap.
    Delete,
    /// List heaps.
    List,
    /// Ask a heap's version.
    Version,
    /// Append a journal record.
    Append,
    /// Read a heap's journal.
    ReadJournal,
    /// Remove journal records a checkpoint covers.
    TrimJournal,
}

/// How many kinds of [`Op`] there are.
const OPS: usize = 8;

impl Op {
    const ALL: [Op; OPS] = [
        Op::Get,
        Op::Put,
        Op::Delete,
        Op::List,
        Op::Version,
        Op::Append,
        Op::ReadJournal,
        Op::TrimJournal,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::List => "list",
            Op::Version => "version",
            Op::Append => "append",
            Op::ReadJournal => "read_journal",
            Op::TrimJournal => "trim_journal",
        }
    }
}

/// Error kinds a store reports, in a fixed order for counting.
const KINDS: [ErrorKind; 6] = [
    ErrorKind::NotFound,
    ErrorKind::InvalidName,
    ErrorKind::Conflict,
    ErrorKind::Unavailable,
    ErrorKind::Corrupt,
    ErrorKind::Other,
];

fn kind_index(kind: ErrorKind) -> usize {
    KINDS
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(KINDS.len() - 1)
}

/// What the host counts about its store, whatever the store is.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    latency: [Histogram; OPS],
    calls: [AtomicU64; OPS],
    errors: [[AtomicU64; KINDS.len()]; OPS],
    hits: AtomicU64,
    misses: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

impl StoreMetrics {
    /// Records one operation: how long it took, and how it ended. `bytes` moved on success.
    pub fn record(&self, op: Op, took: Duration, result: Result<u64, ErrorKind>) {
        let i = op as usize;
        self.calls[i].fetch_add(1, Ordering::Relaxed);
        self.latency[i].record(took);
        match result {
            Ok(bytes) => {
                let moved = match op {
                    Op::Get => {
                        self.looked_up(true);
                        &self.bytes_read
                    }
                    Op::ReadJournal => &self.bytes_read,
                    Op::Put | Op::Append => &self.bytes_written,
                    _ => return,
                };
                moved.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(kind) => {
                if (op, kind) == (Op::Get, ErrorKind::NotFound) {
                    self.looked_up(false);
                }
                self.errors[i][kind_index(kind)].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts a lookup of a heap (a read, or a version check before a warm run) as a hit
    /// when the heap was there.
    pub fn looked_up(&self, found: bool) {
        let counter = if found { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn errors(&self, op: Op, kind: ErrorKind) -> u64 {
        self.errors[op as usize][kind_index(kind)].load(Ordering::Relaxed)
    }

    fn calls(&self, op: Op) -> u64 {
        self.calls[op as usize].load(Ordering::Relaxed)
    }

    /// Successful puts.
    fn puts(&self) -> u64 {
        let failed: u64 = KINDS.iter().map(|k| self.errors(Op::Put, *k)).sum();
        self.calls(Op::Put) - failed.min(self.calls(Op::Put))
    }

    /// Successful deletes.
    fn deletes(&self) -> u64 {
        let failed: u64 = KINDS.iter().map(|k| self.errors(Op::Delete, *k)).sum();
        self.calls(Op::Delete) - failed.min(self.calls(Op::Delete))
    }

    /// Failed operations other than a read of a missing heap and a lost compare-and-swap,
    /// which are answers rather than failures.
    fn failures(&self) -> u64 {
        Op::ALL
            .iter()
            .flat_map(|op| KINDS.iter().map(move |k| (*op, *k)))
            .filter(|(op, k)| {
                !(*k == ErrorKind::Conflict || (*op == Op::Get && *k == ErrorKind::NotFound))
            })
            .map(|(op, k)| self.errors(op, k))
            .sum()
    }

    /// The `storage_stats` answer for store `store`, with what it says it holds.
    pub fn stats(&self, store: &str, usage: Option<Usage>) -> StorageStats {
        StorageStats {
            store: store.to_string(),
            heaps: usage.map(|u| u.heaps),
            bytes: usage.map(|u| u.bytes),
            raw_bytes: usage.map(|u| u.raw_bytes),
            max_bytes: usage.and_then(|u| u.max_bytes),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            puts: self.puts(),
            deletes: self.deletes(),
            evictions: usage.map(|u| u.evictions),
            expirations: usage.map(|u| u.expirations),
            conflicts: self.errors(Op::Put, ErrorKind::Conflict),
            errors: self.failures(),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            get_latency: self.latency[Op::Get as usize].summary(),
            put_latency: self.latency[Op::Put as usize].summary(),
        }
    }
}

/// What `storage_stats` returns. Counters run from the server's start; `heaps`, `bytes`,
/// `raw_bytes`, `max_bytes`, `evictions` and `expirations` are known for the memory store
/// only (`null` for plugin stores, which the host cannot see into without listing them).
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct StorageStats {
    /// The store: `memory`, or the plugin's name (`file`, `s3`, ...).
    pub store: String,
    /// Heaps held.
    pub heaps: Option<u64>,
    /// Bytes held, as stored (compressed).
    pub bytes: Option<u64>,
    /// The same heaps' snapshots before compression.
    pub raw_bytes: Option<u64>,
    /// The store's size limit (`--memory-max-bytes`), `null` when unbounded.
    pub max_bytes: Option<u64>,
    /// Lookups (reads, and version checks before a run on a warm heap) that found their heap.
    pub hits: u64,
    /// Lookups of a heap that does not exist (new, deleted, evicted or expired).
    pub misses: u64,
    /// Heaps written.
    pub puts: u64,
    /// Heaps deleted.
    pub deletes: u64,
    /// Heaps evicted for the size limit.
    pub evictions: Option<u64>,
    /// Heaps expired for the TTL.
    pub expirations: Option<u64>,
    /// Writes refused because the heap changed since it was read.
    pub conflicts: u64,
    /// Operations that failed (unavailable, corrupt, refused, ...).
    pub errors: u64,
    /// Bytes read from the store.
    pub bytes_read: u64,
    /// Bytes written to the store.
    pub bytes_written: u64,
    /// Latency of reads.
    pub get_latency: Latency,
    /// Latency of writes.
    pub put_latency: Latency,
}

/// How a `run_js` call ended, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It returned a result.
    Ok,
    /// It failed; the label names the kind (`exception`, `timeout`, `heap_limit`, ...).
    Failed(&'static str),
}

/// What the host counts about `run_js` calls.
#[derive(Debug, Default)]
pub struct CallMetrics {
    latency: Histogram,
    outcomes: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl CallMetrics {
    /// Records one call.
    pub fn record(&self, took: Duration, outcome: Ended) {
        self.latency.record(took);
        let label = match outcome {
            Ended::Ok => "ok",
            Ended::Failed(kind) => kind,
        };
        let mut outcomes = self
            .outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *outcomes.entry(label).or_default() += 1;
    }
}

/// What the host counts about calls to upstream tools from code: calls by server, tool and
/// outcome (`ok` or a failure's kind), and their latency by server.
#[derive(Debug, Default)]
pub struct ToolMetrics {
    calls: std::sync::Mutex<std::collections::BTreeMap<(String, String, &'static str), u64>>,
    latency: std::sync::Mutex<std::collections::BTreeMap<String, Histogram>>,
}

impl ToolMetrics {
    /// Records one call.
    pub fn record(&self, server: &str, tool: &str, outcome: &'static str, took: Duration) {
        *self
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((server.to_string(), tool.to_string(), outcome))
            .or_default() += 1;
        self.latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(server.to_string())
            .or_default()
            .record(took);
    }

    /// The Prometheus text of what was counted.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let name = "mcp_v8_tool_calls_total";
        let _ = writeln!(
            out,
            "# HELP {name} Calls to upstream tools from code, by server, tool and outcome."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        let calls = self
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for ((server, tool, outcome), n) in calls {
            let _ = writeln!(
                out,
                "{name}{{server=\"{}\",tool=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(&server),
                escape(&tool)
            );
        }
        let name = "mcp_v8_tool_call_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Latency of calls to upstream tools, by server."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        let latency = self
            .latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (server, histogram) in latency.iter() {
            histogram.render(&mut out, name, &format!("server=\"{}\"", escape(server)));
        }
        out
    }
}

/// What the host counts about requests from code (`fetch`): requests by outcome (`ok` or a
/// failure's kind), and their latency.
#[derive(Debug, Default)]
pub struct FetchMetrics {
    requests: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    latency: Histogram,
}

impl FetchMetrics {
    /// Records one request.
    pub fn record(&self, outcome: &'static str, took: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(outcome)
            .or_default() += 1;
        self.latency.record(took);
    }

    /// The Prometheus text of what was counted.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let name = "mcp_v8_fetch_requests_total";
        let _ = writeln!(out, "# HELP {name} Requests from code (fetch), by outcome.");
        let _ = writeln!(out, "# TYPE {name} counter");
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for (outcome, n) in requests {
            let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {n}");
        }
        let name = "mcp_v8_fetch_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Latency of requests from code, redirects and body included."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        self.latency.render(&mut out, name, "");
        out
    }
}

/// The Prometheus text exposition (format 0.0.4) of everything counted.
pub fn render(stats: &StorageStats, store: &StoreMetrics, calls: &CallMetrics) -> String {
    let mut out = String::new();
    let store_label = format!("store=\"{}\"", escape(&stats.store));
    let counter = |out: &mut String, name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name}{{{store_label}}} {value}");
    };
    counter(
        &mut out,
        "mcp_v8_store_hits_total",
        "Lookups that found their heap.",
        stats.hits,
    );
    counter(
        &mut out,
        "mcp_v8_store_misses_total",
        "Lookups of a heap that does not exist.",
        stats.misses,
    );
    counter(
        &mut out,
        "mcp_v8_store_puts_total",
        "Heaps written.",
        stats.puts,
    );
    counter(
        &mut out,
        "mcp_v8_store_deletes_total",
        "Heaps deleted.",
        stats.deletes,
    );
    counter(
        &mut out,
        "mcp_v8_store_conflicts_total",
        "Writes refused because the heap changed since it was read.",
        stats.conflicts,
    );
    counter(
        &mut out,
        "mcp_v8_store_read_bytes_total",
        "Bytes read from the store.",
        stats.bytes_read,
    );
    counter(
        &mut out,
        "mcp_v8_store_written_bytes_total",
        "Bytes written to the store.",
        stats.bytes_written,
    );
    if let Some(n) = stats.evictions {
        counter(
            &mut out,
            "mcp_v8_store_evictions_total",
            "Heaps evicted for the size limit.",
            n,
        );
    }
    if let Some(n) = stats.expirations {
        counter(
            &mut out,
            "mcp_v8_store_expirations_total",
            "Heaps expired for the TTL.",
            n,
        );
    }
    let gauges = [
        ("mcp_v8_store_heaps", "Heaps held.", stats.heaps),
        ("mcp_v8_store_bytes", "Bytes held, as stored.", stats.bytes),
        (
            "mcp_v8_store_raw_bytes",
            "Bytes held, before compression.",
            stats.raw_bytes,
        ),
        (
            "mcp_v8_store_max_bytes",
            "The store's size limit.",
            stats.max_bytes,
        ),
    ];
    for (name, help, value) in gauges {
        if let Some(value) = value {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name}{{{store_label}}} {value}");
        }
    }
    let name = "mcp_v8_store_errors_total";
    let _ = writeln!(
        out,
        "# HELP {name} Store operations that ended in an error, by operation and kind."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    for op in Op::ALL {
        for kind in KINDS {
            let n = store.errors(op, kind);
            if n > 0 {
                let kind = kind.as_str().replace(' ', "_");
                let _ = writeln!(
                    out,
                    "{name}{{{store_label},op=\"{}\",kind=\"{kind}\"}} {n}",
                    op.as_str()
                );
            }
        }
    }
    let name = "mcp_v8_store_operation_seconds";
    let _ = writeln!(out, "# HELP {name} Latency of store operations.");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for op in Op::ALL {
        let labels = format!("{store_label},op=\"{}\"", op.as_str());
        store.latency[op as usize].render(&mut out, name, &labels);
    }
    let name = "mcp_v8_run_js_calls_total";
    let _ = writeln!(
        out,
        "# HELP {name} run_js calls, by outcome (ok or the error's kind)."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    let outcomes = calls
        .outcomes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    for (outcome, n) in outcomes {
        let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {n}");
    }
    let name = "mcp_v8_run_js_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Latency of run_js calls, as the caller waits for them."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    calls.latency.render(&mut out, name, "");
    out
}

/// A label value as Prometheus text wants it.
pub(crate) fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_right_buckets() {
        let h = Histogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        for _ in 0..90 {
            h.record(Duration::from_micros(700)); // 0.5..1 ms
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(40)); // 25..50 ms
        }
        let p50 = h.quantile_ms(0.5).unwrap();
        assert!((0.5..=1.0).contains(&p50), "p50 {p50}");
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((25.0..=50.0).contains(&p99), "p99 {p99}");
        h.record(Duration::from_secs(600));
        assert_eq!(h.quantile_ms(1.0), Some(60_000.0));
        assert_eq!(h.count(), 101);
    }

    #[test]
    fn store_counters_tell_answers_from_failures() {
        let m = StoreMetrics::default();
        let ms = Duration::from_millis(1);
        m.record(Op::Get, ms, Ok(10));
        m.record(Op::Get, ms, Err(ErrorKind::NotFound));
        m.record(Op::Put, ms, Ok(7));
        m.record(Op::Put, ms, Err(ErrorKind::Conflict));
        m.record(Op::Put, ms, Err(ErrorKind::Unavailable));
        m.record(Op::Delete, ms, Ok(0));
        let s = m.stats("memory", None);
        assert_eq!((s.hits, s.misses, s.puts, s.deletes), (1, 1, 1, 1));
        assert_eq!((s.conflicts, s.errors), (1, 1));
        assert_eq!((s.bytes_read, s.bytes_written), (10, 7));
        assert_eq!(s.get_latency.count, 2);
        assert_eq!(s.heaps, None);
    }

    #[test]
    fn the_exposition_has_a_type_for_every_sample() {
        let m = StoreMetrics::default();
        m.record(Op::Get, Duration::from_micros(3), Err(ErrorKind::Other));
        let calls = CallMetrics::default();
        calls.record(Duration::from_millis(2), Ended::Failed("timeout"));
        let text = render(&m.stats("s\"3", None), &m, &calls);
        assert!(text.contains("store=\"s\\\"3\""), "{text}");
        assert!(text.contains("mcp_v8_run_js_calls_total{outcome=\"timeout\"} 1"));
        assert!(text
            .contains("mcp_v8_store_errors_total{store=\"s\\\"3\",op=\"get\",kind=\"other\"} 1"));
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|f| typed.contains(*f))
                    .unwrap_or(name);
                assert!(typed.contains(family), "no TYPE for {name}");
            }
        }
    }
}
