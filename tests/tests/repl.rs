//! The JavaScript front end over MCP: REPL semantics on a stateful heap, TypeScript, the
//! user's positions in errors, modules refused — against the real binary, over stdio and
//! Streamable HTTP.

use mcp_v8_e2e::http::HttpServer;
use mcp_v8_e2e::{Client, Server};

/// What a call must give: its output, or an error whose text contains this.
enum Want {
    Output(&'static str),
    Error(&'static str),
}

/// The table of the front-end issue, each row as a REPL user expects it, then TypeScript and
/// modules.
const ROWS: &[(&str, Want)] = &[
    (
        "const v = await Promise.resolve(1)\nif (v) 'a'\nelse 'b'",
        Want::Output("a"),
    ),
    ("await (async () => 42)()", Want::Output("42")),
    (
        "await null\nmain()\nfunction main(){ return 5 }",
        Want::Output("5"),
    ),
    ("await null; var i = 1\ni++\ni", Want::Output("2")),
    (
        "var n = 4; await null; n++ / 2; const t = \"it's\"; t",
        Want::Output("it's"),
    ),
    ("const x = 1", Want::Output("undefined")),
    ("const x = 2; x", Want::Output("2")),
    ("let y = 1", Want::Output("undefined")),
    ("let y = 2; y", Want::Output("2")),
    (
        "await null\nthrow new Error('e')",
        Want::Error("Uncaught Error: e (at line 2, column 7)"),
    ),
    (
        "Promise.reject(new Error('nope'))",
        Want::Error("Uncaught Error: nope (at line 1, column 16)"),
    ),
    (
        "interface P { x: number }\nconst p: P = { x: 2 }\nenum E { A = 21 }\np.x * E.A",
        Want::Output("42"),
    ),
    // The same error in JavaScript and in TypeScript is at the same place.
    (
        "function g(n) {\n  return n.toFixed(1).missing.call()\n}\ng(1)",
        Want::Error("(at line 2, column 30)"),
    ),
    (
        "function f(n: number): number {\n  return n.toFixed(1).missing.call()\n}\nf(1)",
        Want::Error("(at line 2, column 30)"),
    ),
    (
        "import fs from 'fs'",
        Want::Error("`import` is not available"),
    ),
    ("x + y", Want::Output("4")),
];

async fn rows_give_what_a_repl_user_expects(client: &Client, heap: &str) {
    for (code, want) in ROWS {
        let reply = client.run_js(code, Some(heap)).await;
        match want {
            Want::Output(output) => assert_eq!(reply.ok()["output"], *output, "{code}"),
            Want::Error(text) => {
                let error = reply.err();
                assert!(error.contains(text), "{code}: {error}");
            }
        }
    }
}

#[tokio::test]
async fn repl_semantics_typescript_and_positions_over_stdio_and_http() {
    let server = Server::start(&["--memory"]).await;
    rows_give_what_a_repl_user_expects(&server, "repl-stdio").await;
    server.stop().await;

    let http = HttpServer::start(&["--memory"]).await;
    let client = http.streamable(None).await;
    rows_give_what_a_repl_user_expects(&client, "repl-http").await;
    client.stop().await;
    assert!(http.terminate().await.success());
}

#[tokio::test]
async fn stateless_calls_read_typescript_and_await_too() {
    let server = Server::start(&["--stateless"]).await;
    let reply = server
        .reply(
            "run_js",
            serde_json::json!({ "code": "const xs: number[] = await Promise.all([1, 2])\nfor (const x of xs) x * 10" }),
        )
        .await;
    assert_eq!(reply.ok()["output"], "20");
    let error = server
        .reply(
            "run_js",
            serde_json::json!({ "code": "let a: number = 1;\nlet b: string = ;" }),
        )
        .await
        .err();
    assert!(error.contains("SyntaxError"), "{error}");
    assert!(error.contains("(at line 2, column 17)"), "{error}");
    server.stop().await;
}
