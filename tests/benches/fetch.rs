//! `fetch` as an agent uses it: what a request from JavaScript adds to the same request made
//! directly, and what the web globals cost a heap.
//!
//! `cargo build --release --workspace && cargo bench -p mcp-v8-e2e --bench fetch` measures the
//! release binary (or `MCP_V8_BIN`) against an HTTP site the bench starts on this machine:
//!
//! 1. `GET /json` (1 KiB) made directly by an HTTP client (hyper, through reqwest, kept
//!    alive), one after another: the median per request;
//! 2. the same requests from JavaScript in one `run_js` (`await (await fetch(url)).text()` in a
//!    loop), timed inside the run: the median per request, and the difference;
//! 3. a 1 MiB JSON download kept in a heap and queried: the bytes an agent receives;
//! 4. the first use of the web globals on a new heap (`typeof URL`) against a call that uses
//!    none (`1`), each on a new heap: what making them on first use costs.
#![allow(missing_docs)] // a bench's `main`

use std::time::Instant;

use axum::routing::get;
use mcp_v8_e2e::Server;
use serde_json::json;

const REQUESTS: usize = 300;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let small = format!("{{\"rows\":\"{}\"}}", "x".repeat(1012));
    let rows: Vec<_> = (0..10_000)
        .map(|i| json!({ "id": i, "team": format!("team-{}", i % 17), "p99_ms": (i * 7) % 900 }))
        .collect();
    let big = serde_json::to_string(&rows).unwrap();
    let big_len = big.len();
    let app = axum::Router::new()
        .route("/json", get(move || async move { small }))
        .route("/data", get(move || async move { big }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}/json");

    // 1. Directly.
    let client = mcp_v8_e2e::http::http();
    for _ in 0..20 {
        client.get(&url).send().await.unwrap().text().await.unwrap();
    }
    let mut times = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let started = Instant::now();
        client.get(&url).send().await.unwrap().text().await.unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let direct_ms = median(&mut times);

    // 2. From JavaScript, timed inside the run (a stateless server: nothing is journaled).
    let host = addr.to_string();
    let server = Server::start(&[
        "--stateless",
        "--allow-net",
        &host,
        "--fetch-requests-per-run",
        "1000",
    ])
    .await;
    let code = format!(
        "const times = []; \
         for (let i = 0; i < 20; i++) await (await fetch('{url}')).text(); \
         for (let i = 0; i < {REQUESTS}; i++) {{ \
           const t = performance.now(); await (await fetch('{url}')).text(); \
           times.push(performance.now() - t); }} \
         times.sort((a, b) => a - b)[times.length >> 1]"
    );
    let mut medians = Vec::new();
    for _ in 0..3 {
        let answer = server.reply("run_js", json!({ "code": code })).await.ok();
        medians.push(answer["output"].as_str().unwrap().parse::<f64>().unwrap());
    }
    let from_code_ms = median(&mut medians);
    println!(
        "GET of 1 KiB from a local site: direct {direct_ms:.3} ms, from JavaScript \
         {from_code_ms:.3} ms: mcp-v8 adds {:.3} ms ({:.2}x)",
        from_code_ms - direct_ms,
        from_code_ms / direct_ms
    );
    server.stop().await;

    // 3 and 4. On heaps.
    let server = Server::start(&["--memory", "--allow-net", &host]).await;
    let query = "rows.filter((r) => r.team === 'team-3' && r.p99_ms > 800).map((r) => r.id)";
    let kept = server
        .call(
            "run_js",
            json!({ "heap": "data", "code": format!(
                "var rows = await (await fetch('http://{addr}/data')).json(); {query}") }),
        )
        .await;
    let kept = serde_json::to_string(&kept).unwrap().len();
    println!(
        "a {big_len}-byte JSON download kept in a heap and queried: {kept} bytes to the agent \
         ({:.0}x fewer); later queries read `rows` without fetching again",
        big_len as f64 / kept as f64
    );
    let mut first_use = Vec::new();
    let mut none = Vec::new();
    for i in 0..40 {
        for (code, into) in [("typeof URL", &mut first_use), ("1", &mut none)] {
            let started = Instant::now();
            server
                .reply(
                    "run_js",
                    json!({ "code": code, "heap": format!("h{i}{}", code.len()) }),
                )
                .await
                .ok();
            into.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let (first_use, none) = (median(&mut first_use), median(&mut none));
    println!(
        "a new heap's call: {none:.3} ms without the web globals, {first_use:.3} ms making them \
         on first use (+{:.3} ms, once per heap)",
        first_use - none
    );
    server.stop().await;
}
