//! What the front end adds to a call: reading the code with oxc (and, for TypeScript,
//! stripping it; for code with `await` or private names, checking it further) before V8
//! compiles it, for 1 KB and 1 MB of code, next to a whole stateless
//! call of the same 1 KB in-process (engine only: isolate, compile, run, render).
#![allow(missing_docs)] // criterion_main! generates an undocumented `main`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mcp_v8::engine::{self, Limits};
use mcp_v8::frontend;

/// A kilobyte of ordinary agent code: data, a function, a loop, a template, a regex.
const JS_BLOCK: &str = "const rows = [{ id: 1, name: 'ada', tags: ['x', 'y'] }, { id: 2, name: 'bob', tags: [] }];
function summarise(list, prefix = 'row') {
  const out = [];
  for (const { id, name, tags } of list) {
    if (/^[a-z]+$/.test(name) && tags.length >= 0) out.push(`${prefix}-${id}: ${name} (${tags.join(',')})`);
  }
  return out.join('\\n') / 1 || out.length;
}
let total = 0; for (let i = 0; i < 10; i++) { total += i * 2 / 3 }
const byId = Object.fromEntries(rows.map((r) => [r.id, r]));
summarise(rows) + total + Object.keys(byId).length;
";

/// The same with what makes the front end look twice: `await` (is it used as a name?) and a
/// class with private names (early errors).
const JS_CHECKED_BLOCK: &str = "class Store {
  #rows = [{ id: 1, name: 'ada', tags: ['x', 'y'] }, { id: 2, name: 'bob', tags: [] }];
  static #count = 0;
  #label(r) { return `${r.id}: ${r.name} (${r.tags.join(',')})`; }
  has(o) { return #rows in o; }
  async load() { Store.#count++; return this.#rows.map((r) => this.#label(r)); }
}
const store = new Store();
const labels = await store.load();
let total = 0; for (let i = 0; i < 10; i++) { total += i * 2 / 3 }
labels.length + total + store.has(store);
";

const TS_BLOCK: &str = "interface Row { id: number; name: string; tags: string[] }
const rows: Row[] = [{ id: 1, name: 'ada', tags: ['x', 'y'] }, { id: 2, name: 'bob', tags: [] }];
function summarise<T extends Row>(list: T[], prefix: string = 'row'): number {
  const out: string[] = [];
  for (const { id, name, tags } of list) {
    if (/^[a-z]+$/.test(name) && tags.length >= 0) out.push(`${prefix}-${id}: ${name} (${tags.join(',')})`);
  }
  return (out.join('\\n') as unknown as number) / 1 || out.length;
}
enum Kind { A, B }
let total: number = 0; for (let i = 0; i < 10; i++) { total += i * 2 / 3 }
summarise(rows) + total + Kind.B;
";

/// `block` repeated (each copy in its own block scope) to about `size` bytes.
fn code_of(block: &str, size: usize) -> String {
    let mut code = String::with_capacity(size + block.len());
    while code.len() < size {
        code.push_str("{\n");
        code.push_str(block);
        code.push_str("}\n");
    }
    code
}

fn front_end(c: &mut Criterion) {
    let mut group = c.benchmark_group("frontend");
    for (label, size) in [("1KB", 1 << 10), ("1MB", 1 << 20)] {
        for (language, block) in [
            ("js", JS_BLOCK),
            ("js-await-private", JS_CHECKED_BLOCK),
            ("ts", TS_BLOCK),
        ] {
            let code = code_of(block, size);
            group.throughput(Throughput::Bytes(code.len() as u64));
            group.bench_function(
                BenchmarkId::new(format!("prepare-{language}"), label),
                |b| b.iter(|| frontend::prepare(&code).expect("the benchmark code is valid")),
            );
        }
    }
    group.finish();

    let mut group = c.benchmark_group("stateless-call");
    let limits = Limits {
        timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    for ((language, block), (label, size)) in [("js", JS_BLOCK), ("ts", TS_BLOCK)]
        .into_iter()
        .flat_map(|l| [(l, ("1KB", 1 << 10)), (l, ("1MB", 1 << 20))])
    {
        let code = code_of(block, size);
        group.bench_function(BenchmarkId::new(language, label), |b| {
            b.iter(|| {
                engine::run_stateless(&code, limits)
                    .result
                    .expect("the benchmark code runs")
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = front_end
}
criterion_main!(benches);
