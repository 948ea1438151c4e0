//! Approvals (`--ask-tools`, `--ask-net`): a tool that code calls, or a host it fetches from,
//! is reached only once the client's user says yes, asked by MCP elicitation while the run
//! waits. Driven by the official TypeScript and Python SDKs' clients, which answer as a host's
//! user would; the tool is the unruly server's `count`, which counts what reached it in a
//! file, and the host a local site these tests start, which counts its requests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mcp_v8_e2e::clients::{NodeTools, Sdk, SdkTransport};
use mcp_v8_e2e::http::HttpServer;
use mcp_v8_e2e::Server;
use serde_json::{json, Value};

/// An `mcpServers` file with the unruly server, and the file it counts its `count` calls in.
struct Unruly {
    dir: tempfile::TempDir,
    config: PathBuf,
    count: PathBuf,
}

impl Unruly {
    fn new(tools: &NodeTools) -> Unruly {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let unruly = tools.unruly(&dir.path().join("unruly.log"), &count);
        let config = dir.path().join("mcp.json");
        let servers = json!({ "mcpServers": { "unruly": unruly } });
        std::fs::write(&config, servers.to_string()).unwrap();
        Unruly { dir, config, count }
    }

    /// `--mcp-config` with `count` left to the user, and `more` flags.
    fn args<'a>(&'a self, more: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "--mcp-config",
            self.config.to_str().unwrap(),
            "--ask-tools",
            "unruly.count",
        ];
        args.extend(more);
        args
    }

    /// The calls of `count` that reached the server.
    fn counted(&self) -> u32 {
        std::fs::read_to_string(&self.count).map_or(0, |n| n.trim().parse().unwrap())
    }

    /// A directory for heaps that outlive a server.
    fn heaps(&self) -> String {
        self.dir.path().join("heaps").display().to_string()
    }
}

/// Catches what the call throws: `[name, kind, message]`, or `["ok", result]`.
const GUARDED: &str = "n = 1; \
    try { ['ok', await tools.unruly.count({})] } catch (e) { [e.name, e.kind, e.message] }";

/// A `run_js` result's output, as the client printed it.
fn output(printed: &Value) -> String {
    let result = &printed["result"];
    assert_eq!(result["isError"], false, "{result}");
    result["structuredContent"]["output"]
        .as_str()
        .unwrap_or_else(|| panic!("no output in {result}"))
        .to_string()
}

fn both(test: &str) -> Option<(NodeTools, Sdk)> {
    let tools = NodeTools::find(test)?;
    Some((tools, Sdk::typescript(test)?))
}

#[tokio::test]
async fn the_call_goes_out_once_accepted_and_its_replay_never_asks_again() {
    let Some((tools, typescript)) = both("accepted") else {
        return;
    };
    let unruly = Unruly::new(&tools);
    let heaps = unruly.heaps();
    // Kept in the journal, not yet in a snapshot: a restart replays the call.
    let store = ["--directory-path", &heaps, "--checkpoint-idle-secs", "3600"];
    let server = HttpServer::start(&unruly.args(&store)).await;
    let codes = [
        "var n = 0; n",
        "n = 1; var got = await tools.unruly.count({}); got",
    ];
    let url = SdkTransport::StreamableHttp(&server.mcp_url);
    let mut client = typescript.approving("accept", 0, "ops", &url, &codes);
    assert_eq!(output(&client.next().await), "0");
    let asked = client.next().await;
    assert_eq!(
        asked["asked"],
        "Code on heap `ops` wants to call `unruly.count` with {}. Allow?"
    );
    let got = output(&client.next().await);
    assert!(got.contains('1'), "{got}");
    assert!(client.finish().await);
    assert_eq!(unruly.counted(), 1);

    server.kill().await;
    let server = HttpServer::start(&unruly.args(&store)).await;
    // A client that cannot be asked: the replay asks nobody and calls nothing.
    let client = server.streamable(None).await;
    assert_eq!(client.output("n", "ops").await, "1");
    assert_eq!(unruly.counted(), 1);
    client.stop().await;
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn a_declined_or_dismissed_call_is_a_declined_tool_error_and_nothing_is_sent() {
    let Some((tools, typescript)) = both("declined") else {
        return;
    };
    let unruly = Unruly::new(&tools);
    let binary = mcp_v8_e2e::binary().display().to_string();
    let mut argv = vec![binary.as_str(), "--memory"];
    argv.extend(unruly.args(&[]));
    for answer in ["decline", "cancel"] {
        let stdio = SdkTransport::Stdio(&argv);
        let mut client = typescript.approving(answer, 0, "ops", &stdio, &["var n = 0; n", GUARDED]);
        assert_eq!(output(&client.next().await), "0");
        assert!(client.next().await["asked"].is_string());
        let thrown: Value = serde_json::from_str(&output(&client.next().await)).unwrap();
        assert_eq!(thrown[0], "ToolError", "{thrown}");
        assert_eq!(thrown[1], "declined", "{thrown}");
        let message = thrown[2].as_str().unwrap();
        assert!(message.contains("call `unruly.count` with {}"), "{message}");
        assert!(client.finish().await);
    }
    assert_eq!(unruly.counted(), 0);
}

#[tokio::test]
async fn a_client_that_cannot_be_asked_is_told_which_flag_would_allow_the_call() {
    let Some(tools) = NodeTools::find("cannot_be_asked") else {
        return;
    };
    let unruly = Unruly::new(&tools);
    let mut args = vec!["--memory"];
    args.extend(unruly.args(&[]));
    // rmcp's client, which does not offer elicitation.
    let server = Server::start(&args).await;
    let listed = server.client().list_all_tools().await.unwrap();
    let run_js = listed.iter().find(|t| t.name == "run_js").unwrap();
    let description = run_js.description.as_deref().unwrap_or_default();
    assert!(
        description.contains("wait for the user to approve"),
        "{description}"
    );
    server.output("var n = 0", "ops").await;
    let thrown: Value = serde_json::from_str(&server.output(GUARDED, "ops").await).unwrap();
    assert_eq!(thrown[0], "ToolError", "{thrown}");
    assert_eq!(thrown[1], "denied", "{thrown}");
    let message = thrown[2].as_str().unwrap();
    assert!(message.contains("--ask-tools"), "{message}");
    assert!(
        message.contains("--allow-tools unruly.count would allow it"),
        "{message}"
    );
    assert_eq!(unruly.counted(), 0);
    server.stop().await;
}

/// The wait for an answer does not count against the run's time limit (1 s here), and has a
/// limit of its own (3 s here): an answer after it is a no, and nothing is sent.
#[tokio::test]
async fn waiting_for_a_person_has_its_own_time_limit() {
    let Some((tools, typescript)) = both("approval_time") else {
        return;
    };
    let unruly = Unruly::new(&tools);
    let limits = [
        "--memory",
        "--execution-timeout",
        "1",
        "--approval-timeout-secs",
        "3",
    ];
    let server = HttpServer::start(&unruly.args(&limits)).await;
    let url = SdkTransport::StreamableHttp(&server.mcp_url);

    let mut slow = typescript.approving("accept", 2000, "ops", &url, &["var n = 0; n", GUARDED]);
    assert_eq!(output(&slow.next().await), "0");
    assert!(slow.next().await["asked"].is_string());
    let done: Value = serde_json::from_str(&output(&slow.next().await)).unwrap();
    assert_eq!(done[0], "ok", "{done}");
    assert!(slow.finish().await);
    assert_eq!(unruly.counted(), 1);

    let mut late = typescript.approving("accept", 5000, "ops", &url, &[GUARDED]);
    assert!(late.next().await["asked"].is_string());
    let thrown: Value = serde_json::from_str(&output(&late.next().await)).unwrap();
    assert_eq!(thrown[1], "declined", "{thrown}");
    let message = thrown[2].as_str().unwrap();
    assert!(message.contains("nobody answered within 3 s"), "{message}");
    assert!(message.contains("--approval-timeout-secs"), "{message}");
    assert!(late.finish().await);
    assert_eq!(unruly.counted(), 1);
    assert!(server.terminate().await.success());
}

/// A server killed while its user is being asked never answered the call: nothing of it is
/// stored, and nothing was sent.
#[tokio::test]
async fn a_crash_while_waiting_for_an_answer_records_nothing_and_sends_nothing() {
    let Some((tools, typescript)) = both("crash_while_asking") else {
        return;
    };
    let unruly = Unruly::new(&tools);
    let heaps = unruly.heaps();
    let server = HttpServer::start(&unruly.args(&["--directory-path", &heaps])).await;
    let url = SdkTransport::StreamableHttp(&server.mcp_url);
    let mut client = typescript.approving("never", 0, "ops", &url, &["var n = 0; n", GUARDED]);
    assert_eq!(output(&client.next().await), "0");
    assert!(client.next().await["asked"].is_string());
    server.kill().await;
    drop(client);

    let server = HttpServer::start(&unruly.args(&["--directory-path", &heaps])).await;
    let client = server.streamable(None).await;
    assert_eq!(client.output("n", "ops").await, "0");
    assert_eq!(unruly.counted(), 0);
    client.stop().await;
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn the_python_sdk_is_asked_too() {
    let test = "the_python_sdk_is_asked_too";
    let (Some(tools), Some(python)) = (NodeTools::find(test), Sdk::python(test)) else {
        return;
    };
    let unruly = Unruly::new(&tools);
    let server = HttpServer::start(&unruly.args(&["--memory"])).await;
    let url = SdkTransport::StreamableHttp(&server.mcp_url);
    let mut client = python.approving("accept", 0, "ops", &url, &["var n = 0; n", GUARDED]);
    assert_eq!(output(&client.next().await), "0");
    let asked = client.next().await;
    assert_eq!(
        asked["asked"], "Code on heap `ops` wants to call `unruly.count` with {}. Allow?",
        "{asked}"
    );
    let done: Value = serde_json::from_str(&output(&client.next().await)).unwrap();
    assert_eq!(done[0], "ok", "{done}");
    assert!(client.finish().await);
    assert_eq!(unruly.counted(), 1);
    assert!(server.terminate().await.success());
}

/// A local site: `/count` counts the requests that reached it; `/to?URL` redirects to URL.
struct Site {
    addr: std::net::SocketAddr,
    counted: Arc<AtomicUsize>,
}

impl Site {
    async fn start() -> Site {
        use axum::extract::{RawQuery, State};
        let counted = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .route(
                "/count",
                axum::routing::get(|State(n): State<Arc<AtomicUsize>>| async move {
                    (n.fetch_add(1, Ordering::SeqCst) + 1).to_string()
                }),
            )
            .route(
                "/to",
                axum::routing::get(|RawQuery(to): RawQuery| async move {
                    axum::response::Redirect::to(&to.unwrap_or_default())
                }),
            )
            .with_state(Arc::clone(&counted));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Site { addr, counted }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn counted(&self) -> usize {
        self.counted.load(Ordering::SeqCst)
    }
}

/// Code that fetches `url` `times` times in one run: the bodies, or
/// `[name, cause.kind, message]` of the first failure.
fn fetches(url: &str, times: usize) -> String {
    format!(
        "var got = []; try {{ for (let i = 0; i < {times}; i++) \
         got.push(await (await fetch('{url}')).text()); got.join() }} \
         catch (e) {{ JSON.stringify([e.name, e.cause && e.cause.kind, e.message]) }}"
    )
}

/// A request to a host left to the user goes out once they say yes; the yes holds for the
/// rest of that run (three requests, one question) and for no other run; the user's 1.5 s
/// count against neither the request's time limit nor the run's (1 s each here); a restart
/// replays the call from its journal without asking or fetching.
#[tokio::test]
async fn a_host_left_to_the_user_is_reached_once_per_yes_and_replays_never_ask() {
    let Some(typescript) = Sdk::typescript("ask_net_accepted") else {
        return;
    };
    let site = Site::start().await;
    let dir = tempfile::tempdir().unwrap();
    let heaps = dir.path().display().to_string();
    let host = site.host();
    let args = [
        "--directory-path",
        &heaps,
        "--checkpoint-idle-secs",
        "3600",
        "--ask-net",
        &host,
        "--fetch-timeout-secs",
        "1",
        "--execution-timeout",
        "1",
    ];
    let server = HttpServer::start(&args).await;
    let url = SdkTransport::StreamableHttp(&server.mcp_url);
    let count = site.url("/count");
    let (three, one) = (fetches(&count, 3), fetches(&count, 1));
    let mut client = typescript.approving("accept", 1500, "web", &url, &[&three, &one]);
    let asked = client.next().await;
    assert_eq!(
        asked["asked"],
        format!(
            "Code on heap `web` wants to fetch `GET {count}` (a yes lets this run reach \
             {host}). Allow?"
        )
    );
    assert_eq!(output(&client.next().await), "1,2,3");
    assert!(
        client.next().await["asked"].is_string(),
        "a new run asks again"
    );
    assert_eq!(output(&client.next().await), "4");
    assert!(client.finish().await);
    assert_eq!(site.counted(), 4);

    server.kill().await;
    let server = HttpServer::start(&args).await;
    // A client that cannot be asked: the replay asks nobody and fetches nothing.
    let client = server.streamable(None).await;
    assert_eq!(client.output("got.join()", "web").await, "4");
    assert_eq!(site.counted(), 4);
    client.stop().await;
    assert!(server.terminate().await.success());
}

/// A no reaches nothing and holds for the rest of the run; a redirect from an allowed host to
/// a host left to the user is asked about, so it cannot get there unasked; a client that
/// cannot be asked is told which flag would allow the request.
#[tokio::test]
async fn a_declined_host_is_never_reached_not_even_through_a_redirect() {
    let Some(typescript) = Sdk::typescript("ask_net_declined") else {
        return;
    };
    let (allowed, asked) = (Site::start().await, Site::start().await);
    let binary = mcp_v8_e2e::binary().display().to_string();
    let (allowed_host, asked_host) = (allowed.host(), asked.host());
    let flags = [
        "--memory",
        "--allow-net",
        &allowed_host,
        "--ask-net",
        &asked_host,
    ];
    let mut argv = vec![binary.as_str()];
    argv.extend(flags);
    let count = asked.url("/count");
    let redirected = allowed.url(&format!("/to?{count}"));
    // Each request's failure caught: one question for both.
    let twice = format!(
        "var out = []; for (let i = 0; i < 2; i++) {{ try {{ await fetch('{count}') }} \
         catch (e) {{ out.push([e.name, e.cause.kind, e.message]) }} }} JSON.stringify(out)"
    );
    let via = fetches(&redirected, 1);
    let stdio = SdkTransport::Stdio(&argv);
    let mut client = typescript.approving("decline", 0, "web", &stdio, &[&twice, &via]);
    assert!(client.next().await["asked"].is_string());
    let thrown: Value = serde_json::from_str(&output(&client.next().await)).unwrap();
    assert_eq!(thrown[0][0], "TypeError", "{thrown}");
    assert_eq!(thrown[0][1], "declined", "{thrown}");
    assert_eq!(thrown[1][1], "declined", "{thrown}");
    let again = thrown[1][2].as_str().unwrap();
    assert!(again.contains("asked earlier in this run"), "{again}");
    let asked_redirect = client.next().await;
    let message = asked_redirect["asked"].as_str().unwrap();
    assert!(
        message.contains(&format!("follow a redirect to `GET {count}`")),
        "{message}"
    );
    let thrown: Value = serde_json::from_str(&output(&client.next().await)).unwrap();
    assert_eq!(thrown[1], "declined", "{thrown}");
    assert!(client.finish().await);
    assert_eq!(asked.counted(), 0);

    // rmcp's client, which does not offer elicitation.
    let server = Server::start(&flags).await;
    let description = server.client().list_all_tools().await.unwrap();
    let run_js = description.iter().find(|t| t.name == "run_js").unwrap();
    let description = run_js.description.as_deref().unwrap_or_default();
    assert!(
        description.contains(&format!("{asked_host}, each once the user approves")),
        "{description}"
    );
    let once = fetches(&count, 1);
    let thrown: Value = serde_json::from_str(&server.output(&once, "web").await).unwrap();
    assert_eq!(thrown[1], "denied", "{thrown}");
    let message = thrown[2].as_str().unwrap();
    assert!(message.contains("--ask-net"), "{message}");
    assert!(
        message.contains(&format!("--allow-net {asked_host} would allow it")),
        "{message}"
    );
    assert_eq!(asked.counted(), 0);
    server.stop().await;
}
