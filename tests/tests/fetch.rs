//! `fetch` from code under the egress policy, against HTTP servers these tests start on this
//! machine (nothing here leaves it): allowed and refused hosts, redirects, names that resolve
//! to loopback, huge and slow responses, secrets, cancellation and replay from the journal.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get};
use mcp_v8_e2e::http::HttpServer;
use mcp_v8_e2e::{eventually, Server};
use rmcp::service::ServiceError;
use serde_json::{json, Value};

/// What the test site saw.
#[derive(Default)]
struct Seen {
    /// Every `authorization` header that reached it.
    authorizations: Mutex<Vec<String>>,
    /// Requests to /count.
    counted: AtomicUsize,
    /// Requests to /slow that started, and that ended because the client went away.
    slow_started: AtomicUsize,
    slow_dropped: AtomicUsize,
    /// Requests to /gauge in flight now, in all, and at most at once.
    in_flight: AtomicUsize,
    gauged: AtomicUsize,
    most_at_once: AtomicUsize,
}

/// A local site: `/json`, `/echo` (the request as JSON), `/count`, `/big` (2 MiB), `/gauge`
/// (counts requests at once),
/// `/slow` (never answers), `/to-json` (a redirect to /json), `/to-other` (to `other`),
/// `/to-metadata` (to the cloud metadata address).
struct Site {
    addr: std::net::SocketAddr,
    seen: Arc<Seen>,
}

#[derive(Clone)]
struct SiteState {
    seen: Arc<Seen>,
    other: String,
}

/// Counts a /slow request that the client dropped before it was answered.
struct DropGuard(Arc<Seen>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.slow_dropped.fetch_add(1, Ordering::SeqCst);
    }
}

impl Site {
    async fn start(other: &str) -> Site {
        let seen = Arc::new(Seen::default());
        let state = SiteState {
            seen: Arc::clone(&seen),
            other: other.to_string(),
        };
        let app = axum::Router::new()
            .route(
                "/json",
                get(|| async { ([("content-type", "application/json")], r#"{"rows":[1,2,3]}"#) }),
            )
            .route(
                "/echo",
                any(
                    |State(s): State<SiteState>, method: Method, headers: HeaderMap, body: String| async move {
                        let auth = headers
                            .get("authorization")
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string());
                        if let Some(auth) = &auth {
                            s.seen.authorizations.lock().unwrap().push(auth.clone());
                        }
                        // Echoes the credential back, as careless servers do.
                        let echoed = json!({ "method": method.as_str(), "authorization": auth, "body": body });
                        let mut response = ([("content-type", "application/json")], echoed.to_string()).into_response();
                        if let Some(auth) = auth {
                            response.headers_mut().insert("x-seen-authorization", auth.parse().unwrap());
                        }
                        response
                    },
                ),
            )
            .route(
                "/count",
                get(|State(s): State<SiteState>| async move {
                    (s.seen.counted.fetch_add(1, Ordering::SeqCst) + 1).to_string()
                }),
            )
            .route("/big", get(|| async { vec![b'x'; 2 << 20] }))
            .route(
                "/gauge",
                // Holds each request a while, so that requests allowed at once overlap.
                get(|State(s): State<SiteState>| async move {
                    let now = s.seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    s.seen.most_at_once.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    s.seen.in_flight.fetch_sub(1, Ordering::SeqCst);
                    (s.seen.gauged.fetch_add(1, Ordering::SeqCst) + 1).to_string()
                }),
            )
            .route(
                "/slow",
                get(|State(s): State<SiteState>| async move {
                    s.seen.slow_started.fetch_add(1, Ordering::SeqCst);
                    let _guard = DropGuard(Arc::clone(&s.seen));
                    std::future::pending::<()>().await;
                    "never"
                }),
            )
            .route("/to-json", get(|| async { Redirect::to("/json") }))
            .route(
                "/to-other",
                get(|State(s): State<SiteState>| async move { Redirect::to(&format!("{}/json", s.other)) }),
            )
            .route(
                "/to-metadata",
                get(|| async { Redirect::to("http://169.254.169.254/latest/meta-data/") }),
            )
            .route(
                "/status",
                get(|| async { Response::builder().status(StatusCode::IM_A_TEAPOT).body(axum::body::Body::from("tea")).unwrap() }),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Site { addr, seen }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// What code made of a fetch: `ok:...` with what it read, or `error:KIND:MESSAGE`.
fn attempt(fetch: &str, read: &str) -> String {
    format!(
        "try {{ const r = await {fetch}; 'ok:' + ({read}) }} \
         catch (e) {{ `error:${{e.cause && e.cause.kind}}:${{e.name}}:${{e.message}}` }}"
    )
}

#[tokio::test]
async fn allowed_hosts_answer_and_everything_else_is_refused() {
    let site = Site::start("").await;
    let host = site.host();
    let server = Server::start(&["--memory", "--allow-net", &host]).await;
    let tools = server.client().list_all_tools().await.unwrap();
    let run_js = tools.iter().find(|t| t.name == "run_js").unwrap();
    let description = run_js.description.as_deref().unwrap_or_default();
    assert!(description.contains(&host), "{description}");

    // Kept in the heap and queried by a later call without fetching again.
    let code = format!(
        "const r = await fetch('{}'); var rows = (await r.json()).rows; \
         [r.status, r.ok, r.headers.get('content-type'), rows.length].join()",
        site.url("/json")
    );
    assert_eq!(
        server.output(&code, "h").await,
        "200,true,application/json,3"
    );
    assert_eq!(
        server.output("rows.reduce((a, b) => a + b)", "h").await,
        "6"
    );

    let posted = server
        .output(
            &attempt(
                &format!(
                    "fetch('{}', {{ method: 'POST', body: JSON.stringify({{ a: 1 }}) }})",
                    site.url("/echo")
                ),
                "JSON.stringify(await r.json())",
            ),
            "h",
        )
        .await;
    assert_eq!(
        posted,
        r#"ok:{"authorization":null,"body":"{\"a\":1}","method":"POST"}"#
    );
    let teapot = server
        .output(
            &attempt(
                &format!("fetch('{}')", site.url("/status")),
                "r.status + await r.text()",
            ),
            "h",
        )
        .await;
    assert_eq!(teapot, "ok:418tea");

    for (url, rule) in [
        // Another port of the same address, a name, and what is not http(s).
        ("http://127.0.0.1:1/".to_string(), "--allow-net"),
        ("http://example.com/".to_string(), "--allow-net"),
        ("file:///etc/hosts".to_string(), "only http: and https:"),
        (
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "--allow-net",
        ),
    ] {
        let refused = server
            .output(&attempt(&format!("fetch('{url}')"), "r.status"), "h")
            .await;
        assert!(
            refused.starts_with("error:denied:TypeError:"),
            "{url}: {refused}"
        );
        assert!(refused.contains(rule), "{url}: {refused}");
    }
    server.stop().await;

    // Without --allow-net nothing is reachable, and the error says how to allow it.
    let closed = Server::start(&["--memory"]).await;
    let refused = closed
        .output(
            &attempt(&format!("fetch('{}')", site.url("/json")), "r.status"),
            "h",
        )
        .await;
    assert!(
        refused.starts_with("error:denied:TypeError:") && refused.contains("--allow-net"),
        "{refused}"
    );
    closed.stop().await;
}

#[tokio::test]
async fn every_redirect_is_checked_against_the_policy() {
    let other = Site::start("").await;
    let site = Site::start(&other.url("")).await;
    let server = Server::start(&["--memory", "--allow-net", &site.host()]).await;
    let followed = server
        .output(
            &attempt(
                &format!("fetch('{}')", site.url("/to-json")),
                "[r.redirected, r.url, (await r.json()).rows.length]",
            ),
            "h",
        )
        .await;
    assert_eq!(followed, format!("ok:true,{},3", site.url("/json")));
    for path in ["/to-other", "/to-metadata"] {
        let refused = server
            .output(
                &attempt(&format!("fetch('{}')", site.url(path)), "r.status"),
                "h",
            )
            .await;
        assert!(
            refused.starts_with("error:denied:") && refused.contains("a redirect to"),
            "{path}: {refused}"
        );
    }
    let manual = server
        .output(
            &attempt(
                &format!(
                    "fetch('{}', {{ redirect: 'manual' }})",
                    site.url("/to-other")
                ),
                "[r.status, r.headers.get('location')]",
            ),
            "h",
        )
        .await;
    assert_eq!(manual, format!("ok:303,{}/json", other.url("")));
    let error = server
        .output(
            &attempt(
                &format!("fetch('{}', {{ redirect: 'error' }})", site.url("/to-json")),
                "r.status",
            ),
            "h",
        )
        .await;
    assert!(error.contains("redirect is \"error\""), "{error}");
    server.stop().await;
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_reaches_nothing_unless_its_addresses_are_allowed() {
    let site = Site::start("").await;
    let port = site.addr.port();
    let by_name = format!("localhost:{port}");
    let url = format!("http://localhost:{port}/json");
    let server = Server::start(&["--memory", "--allow-net", &by_name]).await;
    let refused = server
        .output(&attempt(&format!("fetch('{url}')"), "r.status"), "h")
        .await;
    assert!(
        refused.starts_with("error:denied:")
            && refused.contains("resolves to")
            && refused.contains("loopback"),
        "{refused}"
    );
    server.stop().await;

    let server = Server::start(&[
        "--memory",
        "--allow-net",
        &by_name,
        "--allow-net-addresses",
        "127.0.0.0/8,::1",
    ])
    .await;
    let allowed = server
        .output(&attempt(&format!("fetch('{url}')"), "r.status"), "h")
        .await;
    assert_eq!(allowed, "ok:200");
    server.stop().await;
}

#[tokio::test]
async fn huge_slow_and_too_many_requests_fail_with_the_rule_they_broke() {
    let site = Site::start("").await;
    let server = Server::start(&[
        "--memory",
        "--allow-net",
        &site.host(),
        "--fetch-response-bytes",
        "1MiB",
        "--fetch-timeout-secs",
        "1",
        "--fetch-requests-per-run",
        "3",
    ])
    .await;
    let big = server
        .output(
            &attempt(&format!("fetch('{}')", site.url("/big")), "r.status"),
            "h",
        )
        .await;
    assert!(
        big.starts_with("error:too_large:") && big.contains("--fetch-response-bytes"),
        "{big}"
    );
    let slow = server
        .output(
            &attempt(&format!("fetch('{}')", site.url("/slow")), "r.status"),
            "h",
        )
        .await;
    assert!(
        slow.starts_with("error:timeout:") && slow.contains("--fetch-timeout-secs"),
        "{slow}"
    );
    let counted = server
        .output(
            &format!(
                "const out = []; for (let i = 0; i < 4; i++) {{ {} }} out.join()",
                format_args!(
                    "try {{ out.push(await (await fetch('{}')).text()) }} catch (e) {{ out.push(e.cause.kind) }}",
                    site.url("/count")
                )
            ),
            "h",
        )
        .await;
    assert_eq!(counted, "1,2,3,denied");
    server.stop().await;
}

#[tokio::test]
async fn a_secret_goes_only_to_its_host_and_never_reaches_code_or_logs() {
    const VALUE: &str = "tok-9f8e7d6c5b4a";
    let bound = Site::start("").await;
    let unbound = Site::start("").await;
    let hosts = format!("{},{}", bound.host(), unbound.host());
    let secret = format!("API=env:SITE_TOKEN@{}", bound.host());
    let server = HttpServer::start_with_env(
        &["--memory", "--allow-net", &hosts, "--secret", &secret],
        &[("SITE_TOKEN", VALUE), ("RUST_LOG", "debug")],
    )
    .await;
    let client = server.streamable(None).await;
    let description = client
        .client()
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name == "run_js")
        .and_then(|t| t.description.map(|d| d.to_string()))
        .unwrap();
    assert!(description.contains("mcp-v8-secret:API"), "{description}");

    let mut answers = Vec::new();
    let sent = client
        .run_js(
            &format!(
                "const r = await fetch('{}', {{ headers: {{ authorization: 'Bearer mcp-v8-secret:API' }} }}); \
                 const body = await r.text(); console.log(body, r.headers.get('x-seen-authorization')); \
                 var kept = body; body + ' ' + r.headers.get('x-seen-authorization')",
                bound.url("/echo")
            ),
            Some("h"),
        )
        .await
        .ok();
    answers.push(sent.to_string());
    let output = sent["output"].as_str().unwrap();
    // The site got the value; code got the placeholder back where the value came back.
    assert_eq!(
        bound.seen.authorizations.lock().unwrap().as_slice(),
        [format!("Bearer {VALUE}")]
    );
    assert!(output.contains("Bearer mcp-v8-secret:API"), "{output}");

    // To a host it is not bound to: refused, and that site sees nothing.
    let refused = client
        .run_js(
            &attempt(
                &format!(
                    "fetch('{}', {{ headers: {{ 'x-key': 'mcp-v8-secret:API' }} }})",
                    unbound.url("/echo")
                ),
                "r.status",
            ),
            Some("h"),
        )
        .await
        .ok();
    answers.push(refused.to_string());
    assert!(
        refused["output"]
            .as_str()
            .unwrap()
            .contains("may not be sent to"),
        "{refused}"
    );
    assert!(unbound.seen.authorizations.lock().unwrap().is_empty());

    // Nothing the code can reach holds the value: its heap, errors, console, answers.
    let probe = client
        .run_js(
            "JSON.stringify(globalThis) + kept + Object.keys(globalThis).join()",
            Some("h"),
        )
        .await
        .ok();
    answers.push(probe.to_string());
    let failed = client
        .run_js("throw new Error(kept)", Some("h"))
        .await
        .err();
    answers.push(failed);
    for answer in &answers {
        assert!(!answer.contains(VALUE), "the secret leaked: {answer}");
    }
    // Each request is counted by outcome.
    let metrics = server.metrics(None).await;
    for line in [
        "mcp_v8_fetch_requests_total{outcome=\"ok\"} 1",
        "mcp_v8_fetch_requests_total{outcome=\"denied\"} 1",
        "mcp_v8_fetch_seconds_count 2",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let logs = server.logged().await.join("\n");
    assert!(
        logs.contains("fetch GET"),
        "the requests are logged at debug"
    );
    assert!(!logs.contains(VALUE), "the secret is in the log");
}

#[tokio::test]
async fn a_cancelled_call_drops_its_request_and_changes_nothing() {
    let site = Site::start("").await;
    let server = Server::start(&["--memory", "--allow-net", &site.host()]).await;
    server.output("var n = 1", "h").await;
    let response = server
        .run_js_giving_up_after(
            json!({ "code": format!("n = 2; await fetch('{}')", site.url("/slow")), "heap": "h" }),
            Duration::from_secs(2),
        )
        .await;
    assert!(
        matches!(response, Err(ServiceError::Timeout { .. })),
        "{response:?}"
    );
    assert_eq!(site.seen.slow_started.load(Ordering::SeqCst), 1);
    eventually(
        Duration::from_secs(10),
        "the request is dropped",
        || async { (site.seen.slow_dropped.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    assert_eq!(server.output("n", "h").await, "1");
    server.stop().await;
}

#[tokio::test]
async fn a_heap_that_fetched_is_rebuilt_from_its_journal_without_fetching_again() {
    let site = Site::start("").await;
    let heaps = tempfile::tempdir().unwrap();
    let host = site.host();
    let args = [
        "--directory-path",
        heaps.path().to_str().unwrap(),
        "--allow-net",
        &host,
    ];
    let server = Server::start(&args).await;
    server.output("var counts = []", "h").await;
    let code = format!(
        "for (let i = 0; i < 2; i++) counts.push(await (await fetch('{}')).text()); counts.join()",
        site.url("/count")
    );
    assert_eq!(server.output(&code, "h").await, "1,2");
    let history = server
        .reply("heap_history", json!({ "heap": "h" }))
        .await
        .ok();
    let last: Value = history["calls"].as_array().unwrap().last().unwrap().clone();
    assert!(
        last["stored_state"].is_null() && last["code"].as_str().unwrap().contains("fetch"),
        "a journal record of the code, not its state: {history}"
    );
    server.kill().await;

    let server = Server::start(&args).await;
    assert_eq!(server.output("counts.join()", "h").await, "1,2");
    assert_eq!(site.seen.counted.load(Ordering::SeqCst), 2);

    // 2 MiB of responses is more than a record keeps: that call stores its state instead.
    let code = format!(
        "var big = await (await fetch('{}')).text(); big.length",
        site.url("/big")
    );
    assert_eq!(server.output(&code, "h").await, (2 << 20).to_string());
    let history = server
        .reply("heap_history", json!({ "heap": "h" }))
        .await
        .ok();
    // Its state is stored: as a record of the state, or as a new snapshot.
    let calls = history["calls"].as_array().unwrap();
    assert!(
        calls.last().is_none_or(|last| last["stored_state"]
            .as_str()
            .is_some_and(|why| why.contains("host replies"))),
        "{history}"
    );
    server.kill().await;
    let server = Server::start(&args).await;
    assert_eq!(
        server.output("big.length + counts.length", "h").await,
        ((2 << 20) + 2).to_string()
    );
    server.stop().await;
}

/// Runs `openssl ARGS` in `dir`; false if there is no openssl command.
fn openssl(dir: &std::path::Path, args: &[&str]) -> bool {
    match std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            true
        }
        Err(_) => false,
    }
}

#[tokio::test]
async fn https_is_checked_against_the_trusted_roots() {
    // A CA and a certificate for 127.0.0.1 it signed, made now; OpenSSL's own server serves it.
    let dir = tempfile::tempdir().unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let made = openssl(
        dir.path(),
        &[
            &["req", "-x509"],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=mcp-v8 test CA",
                "-days",
                "1",
            ],
        ]
        .concat(),
    );
    if !made {
        mcp_v8_e2e::clients::missing(
            "https_is_checked_against_the_trusted_roots",
            "no openssl command",
        );
        return;
    }
    std::fs::write(
        dir.path().join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir.path(),
        &[
            &["req"],
            &ec[..],
            &[
                "-keyout",
                "leaf.key",
                "-out",
                "leaf.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    openssl(
        dir.path(),
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
        ],
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = tokio::process::Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-cert",
            "leaf.pem",
            "-key",
            "leaf.key",
            "-www",
        ])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("ACCEPT") {
        line.clear();
        assert!(
            tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line)
                .await
                .unwrap()
                > 0,
            "s_server ended"
        );
    }
    tokio::spawn(async move { tokio::io::copy(&mut out, &mut tokio::io::sink()).await });

    let host = format!("127.0.0.1:{port}");
    let url = format!("https://{host}/");
    let ca = dir.path().join("ca.pem");
    let trusting = Server::start_with_env(
        &["--memory", "--allow-net", &host],
        &[("SSL_CERT_FILE", ca.to_str().unwrap())],
    )
    .await;
    let answered = trusting
        .output(
            &attempt(
                &format!("fetch('{url}')"),
                "[r.status, (await r.text()).includes('s_server')]",
            ),
            "h",
        )
        .await;
    assert_eq!(answered, "ok:200,true");
    trusting.stop().await;

    // Without that CA the certificate is not trusted, and the request fails before it is sent.
    let doubting = Server::start(&["--memory", "--allow-net", &host]).await;
    let refused = doubting
        .output(&attempt(&format!("fetch('{url}')"), "r.status"), "h")
        .await;
    assert!(
        refused.starts_with("error:unavailable:") && refused.to_lowercase().contains("certificate"),
        "{refused}"
    );
    doubting.stop().await;
    let _ = server.kill().await;
}

#[tokio::test]
async fn stateless_calls_fetch_too_and_requests_keep_to_the_concurrency_limit() {
    let site = Site::start("").await;
    let server = Server::start(&[
        "--stateless",
        "--allow-net",
        &site.host(),
        "--fetch-concurrency",
        "2",
    ])
    .await;
    let code = format!(
        "const all = await Promise.all([1, 2, 3, 4, 5].map(() => fetch('{}').then((r) => r.text()))); \
         all.map(Number).sort((a, b) => a - b).join()",
        site.url("/gauge")
    );
    let answer = server.run_js(&code, None).await.ok();
    assert_eq!(answer["output"], "1,2,3,4,5");
    assert_eq!(site.seen.most_at_once.load(Ordering::SeqCst), 2);
    server.stop().await;
}

#[tokio::test]
async fn an_aborted_request_is_dropped_and_frees_its_place() {
    let site = Site::start("").await;
    // One request at a time, and a timeout far beyond the call's: only a dropped request
    // lets the second one run.
    let server = Server::start(&[
        "--memory",
        "--allow-net",
        &site.host(),
        "--fetch-concurrency",
        "1",
        "--fetch-timeout-secs",
        "600",
    ])
    .await;
    let code = format!(
        "const c = new AbortController(); const slow = fetch('{}', {{ signal: c.signal }}); \
         setTimeout(() => c.abort(), 100); let why; try {{ await slow }} catch (e) {{ why = e.name }} \
         why + ',' + (await fetch('{}')).status",
        site.url("/slow"),
        site.url("/json")
    );
    let answer = server
        .reply(
            "run_js",
            json!({ "code": code, "heap": "h", "timeout_secs": 10 }),
        )
        .await
        .ok();
    assert_eq!(answer["output"], "AbortError,200");
    eventually(
        Duration::from_secs(10),
        "the aborted request is dropped",
        || async { (site.seen.slow_dropped.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    server.stop().await;
}
