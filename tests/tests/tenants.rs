//! Many users on one server: the real binary as an OAuth resource server, in front of an
//! authorisation server the test starts (its metadata and JWK set served on loopback, its
//! tokens signed with keys the test makes), over both HTTP transports.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::get;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mcp_v8_e2e::clients::NodeTools;
use mcp_v8_e2e::http::{free_port, http, sse_events, HttpServer};
use mcp_v8_e2e::{eventually, heap_names, start_up_failure};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

/// The audience every good token names.
const RESOURCE: &str = "https://mcp-v8.test/mcp";

/// An ES256 key the test made.
#[derive(Clone)]
struct Key {
    kid: String,
    pkcs8: Vec<u8>,
    public: Value,
}

impl Key {
    fn new(kid: &str) -> Key {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("make a P-256 key")
            .as_ref()
            .to_vec();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .expect("read the key back");
        // An uncompressed point: 0x04, x, y.
        let point = pair.public_key().as_ref();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let public = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        });
        Key {
            kid: kid.into(),
            pkcs8,
            public,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.pkcs8))
            .expect("sign a token")
    }
}

/// The test's authorisation server: RFC 8414 metadata, a JWK set that can be changed, and a
/// token endpoint for the client-credentials grant (client `ID` with secret `ID-secret`; the
/// token's subject is the client, its audience the `resource` asked for), signing with the
/// first key.
struct Issuer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    /// The `resource` of every token request.
    asked_for: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct IssuerState {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    signer: Option<Key>,
    asked_for: Arc<Mutex<Vec<String>>>,
}

/// `POST /token`: client credentials, checked with HTTP Basic.
async fn token(
    State(state): State<IssuerState>,
    headers: axum::http::HeaderMap,
    axum::Form(form): axum::Form<std::collections::HashMap<String, String>>,
) -> (axum::http::StatusCode, String) {
    let unauthorised = (
        axum::http::StatusCode::UNAUTHORIZED,
        json!({"error": "invalid_client"}).to_string(),
    );
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok()?.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let Some((id, secret)) = basic.as_deref().and_then(|b| b.split_once(':')) else {
        return unauthorised;
    };
    if secret != format!("{id}-secret")
        || form.get("grant_type").map(String::as_str) != Some("client_credentials")
    {
        return unauthorised;
    }
    let resource = form.get("resource").cloned().unwrap_or_default();
    state.asked_for.lock().unwrap().push(resource.clone());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": state.url, "aud": resource, "sub": id,
        "scope": form.get("scope").cloned().unwrap_or_default(),
        "iat": now, "exp": now + 3600,
    });
    let Some(signer) = &state.signer else {
        return unauthorised;
    };
    let body = json!({
        "access_token": signer.sign(&claims), "token_type": "Bearer", "expires_in": 3600,
    });
    (axum::http::StatusCode::OK, body.to_string())
}

impl Issuer {
    async fn start(keys: &[&Key]) -> Issuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let published = Arc::new(Mutex::new(keys.iter().map(|k| k.public.clone()).collect()));
        let metadata = json!({
            "issuer": url,
            "jwks_uri": format!("{url}/jwks"),
            "token_endpoint": format!("{url}/token"),
            "authorization_endpoint": format!("{url}/authorize"),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "response_types_supported": ["code"],
            "scopes_supported": ["heaps:read", "heaps:write"],
        });
        let state = IssuerState {
            url: url.clone(),
            keys: Arc::clone(&published),
            signer: keys.first().map(|k| (*k).clone()),
            asked_for: Arc::default(),
        };
        let asked_for = Arc::clone(&state.asked_for);
        let json_body = |body: String| ([("content-type", "application/json")], body);
        let app = axum::Router::new()
            .route(
                "/.well-known/oauth-authorization-server",
                get(move || async move { json_body(metadata.to_string()) }),
            )
            .route(
                "/jwks",
                get(move |State(state): State<IssuerState>| async move {
                    json_body(json!({ "keys": *state.keys.lock().unwrap() }).to_string())
                }),
            )
            .route("/token", axum::routing::post(token))
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Issuer {
            url,
            keys: published,
            asked_for,
        }
    }

    /// Publishes `keys` instead of the keys there were (a rotation).
    fn publish(&self, keys: &[&Key]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.public.clone()).collect();
    }

    /// Claims of a good token for `sub` with `scope`, valid for an hour.
    fn claims(&self, sub: &str, scope: &str) -> Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        json!({
            "iss": self.url, "aud": RESOURCE, "sub": sub, "scope": scope,
            "iat": now, "nbf": now, "exp": now + 3600,
        })
    }

    fn token(&self, key: &Key, sub: &str) -> String {
        key.sign(&self.claims(sub, "heaps:read heaps:write"))
    }
}

/// A JSON-RPC `tools/call` POSTed to `/mcp` with `token`: the status, `WWW-Authenticate`
/// and the body.
async fn post_call(server: &HttpServer, token: Option<&str>, tool: &str) -> (u16, String, String) {
    let mut request = http()
        .post(&server.mcp_url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .json(&json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": { "name": tool, "arguments": {} },
        }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("POST /mcp");
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, challenge, response.text().await.unwrap_or_default())
}

/// Whether the access layer let a request through (what comes after, a 400 for a request
/// outside a session, is the MCP service's).
fn let_through(status: u16) -> bool {
    !matches!(status, 401 | 403)
}

async fn start(issuer: &Issuer, more: &[&str]) -> HttpServer {
    let mut args = vec![
        "--memory",
        "--oauth-issuer",
        &issuer.url,
        "--oauth-resource",
        RESOURCE,
        "--auth-token",
        "operator-token",
    ];
    args.extend_from_slice(more);
    HttpServer::start(&args).await
}

#[tokio::test]
async fn tokens_are_checked_as_a_resource_server_checks_them() {
    let (key, stranger) = (Key::new("k1"), Key::new("stranger"));
    let issuer = Issuer::start(&[&key]).await;
    let server = start(&issuer, &[]).await;
    let base = server.mcp_url.trim_end_matches("/mcp").to_string();

    // No token: 401, pointing at the metadata, which names the issuer.
    let (status, challenge, _) = post_call(&server, None, "list_heaps").await;
    assert_eq!(status, 401);
    let metadata_url = "https://mcp-v8.test/.well-known/oauth-protected-resource/mcp";
    assert!(
        challenge.contains(&format!("resource_metadata=\"{metadata_url}\"")),
        "{challenge}"
    );
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let metadata: Value = http()
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(metadata["resource"], RESOURCE, "{path}");
        assert_eq!(
            metadata["authorization_servers"],
            json!([issuer.url]),
            "{path}"
        );
        assert_eq!(
            metadata["scopes_supported"],
            json!(["heaps:read", "heaps:write"])
        );
    }

    // A page's client can do the same: the metadata takes a preflight, and the 401's challenge
    // is exposed to the page.
    let preflight = http()
        .request(
            reqwest::Method::OPTIONS,
            format!("{base}/.well-known/oauth-protected-resource/mcp"),
        )
        .header("origin", "http://localhost:6274")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "mcp-protocol-version")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    let from_page = http()
        .post(&server.mcp_url)
        .header("origin", "http://localhost:6274")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(from_page.status(), 401);
    let exposed = from_page.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("WWW-Authenticate"), "{exposed}");

    // Tokens that are not good for this server: 401 invalid_token, saying why.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = issuer.claims("alice", "heaps:read heaps:write");
    let with = |field: &str, value: Value| {
        let mut claims = good.clone();
        claims[field] = value;
        claims
    };
    let bad = [
        (key.sign(&with("exp", json!(now - 3600))), "expired"),
        (
            key.sign(&with("aud", json!("https://other.test/mcp"))),
            "not for this resource",
        ),
        (
            key.sign(&with("iss", json!("https://other-issuer.test"))),
            "another issuer",
        ),
        (key.sign(&with("nbf", json!(now + 3600))), "not valid yet"),
        (
            stranger.sign(&good),
            "'stranger' is not among the issuer's keys",
        ),
        ("not-a-jwt".to_string(), "not a JWT"),
    ];
    for (token, why) in &bad {
        let (status, challenge, body) = post_call(&server, Some(token), "list_heaps").await;
        assert_eq!(status, 401, "{why}: {body}");
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{why}: {challenge}"
        );
        assert!(body.contains(why), "{why}: {body}");
    }
    // Within the leeway, an expired token still passes.
    let lately = key.sign(&with("exp", json!(now - 10)));
    assert!(let_through(
        post_call(&server, Some(&lately), "list_heaps").await.0
    ));

    // A token with heaps:read may read, not run code: 403 insufficient_scope.
    let reader = key.sign(&issuer.claims("alice", "heaps:read"));
    assert!(let_through(
        post_call(&server, Some(&reader), "list_heaps").await.0
    ));
    for tool in ["run_js", "delete_heap", "copy_heap"] {
        let (status, challenge, _) = post_call(&server, Some(&reader), tool).await;
        assert_eq!(status, 403, "{tool}");
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{challenge}"
        );
    }
    let nobody = key.sign(&issuer.claims("alice", "openid"));
    assert_eq!(post_call(&server, Some(&nobody), "list_heaps").await.0, 403);

    // The issuer rotates its key: tokens of the new key are taken (the set is read again),
    // tokens of the old one no longer are.
    let rotated = Key::new("k2");
    let old = issuer.token(&key, "alice");
    assert!(let_through(
        post_call(&server, Some(&old), "list_heaps").await.0
    ));
    issuer.publish(&[&rotated]);
    let new = issuer.token(&rotated, "alice");
    eventually(
        Duration::from_secs(10),
        "a token of the new key is accepted",
        || async {
            let_through(post_call(&server, Some(&new), "list_heaps").await.0).then_some(())
        },
    )
    .await;
    assert_eq!(post_call(&server, Some(&old), "list_heaps").await.0, 401);

    // /metrics is the operator's.
    let metrics = |token: &str| {
        http()
            .get(format!("{base}/metrics"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(metrics(&new).await.unwrap().status(), 403);
    assert_eq!(metrics("operator-token").await.unwrap().status(), 200);
    server.terminate().await;
}

#[tokio::test]
async fn tenants_see_only_their_own_heaps_over_both_transports() {
    let key = Key::new("k1");
    let issuer = Issuer::start(&[&key]).await;
    let server = start(&issuer, &[]).await;
    let (alice_token, bob_token) = (issuer.token(&key, "alice"), issuer.token(&key, "bob"));
    let alice = server.streamable(Some(&alice_token)).await;
    let bob = server.sse(Some(&bob_token)).await;
    let operator = server.streamable(Some("operator-token")).await;

    // The same name in two tenants is two heaps.
    alice
        .run_js("globalThis.who = 'alice'", Some("notes"))
        .await
        .ok();
    bob.run_js("globalThis.who = 'bob'", Some("notes"))
        .await
        .ok();
    assert_eq!(alice.output("who", "notes").await, "alice");
    assert_eq!(bob.output("who", "notes").await, "bob");
    alice.run_js("1", Some("alice-private")).await.ok();
    alice
        .reply("copy_heap", json!({"from": "notes", "to": "alice-copy"}))
        .await
        .ok();

    // Each lists its own, by the names it gave; the operator's listing has none of them.
    assert_eq!(
        heap_names(&alice.settle().await),
        ["alice-copy", "alice-private", "notes"]
    );
    assert_eq!(heap_names(&bob.settle().await), ["notes"]);
    operator.run_js("1", Some("ops")).await.ok();
    assert_eq!(heap_names(&operator.settle().await), ["ops"]);

    // Nothing of another tenant's can be named: not run on, read, copied, completed, deleted.
    let e = bob
        .reply(
            "copy_heap",
            json!({"from": "alice-private", "to": "stolen"}),
        )
        .await
        .err();
    assert!(e.contains("'alice-private' does not exist"), "{e}");
    assert!(!e.contains("_mcp-v8-tenant"), "{e}");
    match bob
        .reply("heap_history", json!({"heap": "alice-private"}))
        .await
    {
        mcp_v8_e2e::Reply::Ok(history) => assert_eq!(history["calls"], json!([]), "{history}"),
        mcp_v8_e2e::Reply::Err(e) => assert!(!e.contains("_mcp-v8-tenant"), "{e}"),
    }
    assert!(bob
        .client()
        .read_resource(rmcp::model::ReadResourceRequestParams::new(
            "heap://alice-private"
        ))
        .await
        .is_err());
    let complete = |prefix: &str| {
        rmcp::model::CompleteRequestParams::new(
            rmcp::model::Reference::for_resource("heap://{heap}"),
            rmcp::model::ArgumentInfo::new("heap", prefix),
        )
    };
    let completed = bob.client().complete(complete("alice")).await.unwrap();
    assert!(completed.completion.values.is_empty(), "{completed:?}");
    let completed = alice.client().complete(complete("alice")).await.unwrap();
    assert_eq!(completed.completion.values, ["alice-copy", "alice-private"]);
    let resources = bob.client().list_all_resources().await.unwrap();
    let uris: Vec<&str> = resources.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(uris, ["heap://notes"]);
    bob.reply("delete_heap", json!({"heap": "alice-private"}))
        .await;
    assert_eq!(alice.output("1 + 1", "alice-private").await, "2");
    let e = bob.run_js("1", Some("_mcp-v8-tenant.x.notes")).await.err();
    assert!(e.contains("reserved"), "{e}");

    // A whole result kept for read_output is its tenant's, even to one holding its URI.
    let big = alice
        .reply(
            "run_js",
            json!({"code": "Array.from({length: 5000}, (_, i) => i)", "heap": "notes",
                   "max_output_tokens": 100}),
        )
        .await
        .ok();
    let uri = big["output_uri"]
        .as_str()
        .expect("a preview, with the whole kept");
    let e = bob.reply("read_output", json!({"uri": uri})).await.err();
    assert!(e.contains("no result kept"), "{e}");
    alice.reply("read_output", json!({"uri": uri})).await.ok();

    // A tenant sees its own figures; the operator sees each tenant's in /metrics.
    let stats = alice.reply("storage_stats", json!({})).await.ok();
    assert_eq!(stats["tenant"]["id"], "alice");
    assert_eq!(stats["tenant"]["heaps"], 3);
    assert!(
        stats["tenant"]["stored_bytes"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert!(
        stats.get("puts").is_none(),
        "the store's own figures are not a tenant's: {stats}"
    );
    let tools = alice.client().list_all_tools().await.unwrap();
    let tool = tools.iter().find(|t| t.name == "storage_stats").unwrap();
    let schema = serde_json::to_value(tool.output_schema.as_deref().unwrap()).unwrap();
    let validator = jsonschema::draft202012::new(&schema).expect("compile the output schema");
    assert!(
        validator.is_valid(&stats),
        "a tenant's figures break the schema: {stats}"
    );
    let stats = operator.reply("storage_stats", json!({})).await.ok();
    assert!(
        stats["puts"].as_u64().unwrap() > 0 && stats.get("tenant").is_none(),
        "{stats}"
    );
    let metrics = server.metrics(Some("operator-token")).await;
    assert!(
        metrics.contains("mcp_v8_tenant_calls_total{tenant=\"alice\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mcp_v8_tenant_calls_total{tenant=\"bob\"} 3"),
        "{metrics}"
    );

    // An SSE session is its opener's: another tenant cannot post into it.
    let sse = http()
        .get(format!("{}/sse", server.sse_base))
        .bearer_auth(&bob_token)
        .send()
        .await
        .unwrap();
    let mut events = sse_events(sse);
    let endpoint = futures::StreamExt::next(&mut events).await.unwrap().data;
    let post = |token: String| {
        http()
            .post(format!("{}{endpoint}", server.sse_base))
            .bearer_auth(token)
            .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .send()
    };
    assert_eq!(post(alice_token.clone()).await.unwrap().status(), 404);
    assert_eq!(post(bob_token.clone()).await.unwrap().status(), 202);

    // So is a Streamable HTTP session (protocol 2025-11-25): its id is no good with another
    // tenant's token.
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    });
    let opened = http()
        .post(&server.mcp_url)
        .header("accept", "application/json, text/event-stream")
        .bearer_auth(&alice_token)
        .json(&initialize)
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), 200);
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let in_session = |token: String| {
        http()
            .post(&server.mcp_url)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-11-25")
            .bearer_auth(token)
            .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .send()
    };
    assert_eq!(in_session(bob_token.clone()).await.unwrap().status(), 404);
    assert_eq!(in_session(alice_token.clone()).await.unwrap().status(), 202);
    alice.stop().await;
    bob.stop().await;
    operator.stop().await;
    server.terminate().await;
}

#[tokio::test]
async fn quotas_refuse_a_tenant_by_name_and_leave_others_alone() {
    let key = Key::new("k1");
    let issuer = Issuer::start(&[&key]).await;
    let server = start(
        &issuer,
        &[
            "--tenant-max-heaps",
            "2",
            "--tenant-calls-per-minute",
            "8",
            "--tenant-max-concurrent-calls",
            "1",
        ],
    )
    .await;
    let alice = server.streamable(Some(&issuer.token(&key, "alice"))).await;
    let bob = server.streamable(Some(&issuer.token(&key, "bob"))).await;

    // Heaps: two, then a third is refused; the two can still be run on.
    alice.run_js("1", Some("a")).await.ok();
    alice.run_js("1", Some("b")).await.ok();
    let e = alice.run_js("1", Some("c")).await.err();
    assert!(e.contains("--tenant-max-heaps is 2"), "{e}");
    let e = alice
        .reply("copy_heap", json!({"from": "a", "to": "c"}))
        .await
        .err();
    assert!(e.contains("--tenant-max-heaps"), "{e}");
    assert_eq!(alice.output("2 + 2", "a").await, "4");
    bob.run_js("1", Some("c")).await.ok();

    // Calls at once: one; a second while it runs is refused, and the first still answers.
    let long = alice.run_js_giving_up_after(
        json!({"code": "let i = 0; while (i < 4e9) i++; i", "heap": "a", "timeout_secs": 4}),
        Duration::from_secs(30),
    );
    let second = async {
        eventually(
            Duration::from_secs(10),
            "alice's long call runs",
            || async {
                let metrics = server.metrics(Some("operator-token")).await;
                metrics
                    .contains("mcp_v8_tenant_calls_in_flight{tenant=\"alice\"} 1")
                    .then_some(())
            },
        )
        .await;
        let e = alice.run_js("1", Some("b")).await.err();
        assert!(e.contains("--tenant-max-concurrent-calls is 1"), "{e}");
        // Another tenant's call is not held back.
        bob.run_js("1", Some("c")).await.ok();
    };
    let (first, ()) = tokio::join!(long, second);
    assert!(first.is_ok(), "{first:?}");

    // Calls per minute: five started so far (a, b, c, 2 + 2, the long one; the one refused
    // for running at once is not counted), three more, then the ninth is refused.
    for _ in 0..3 {
        alice.run_js("1", Some("a")).await.ok();
    }
    let e = alice.run_js("1", Some("a")).await.err();
    assert!(e.contains("--tenant-calls-per-minute is 8"), "{e}");
    bob.run_js("1", Some("c")).await.ok();
    let stats = alice.reply("storage_stats", json!({})).await.ok();
    assert_eq!(stats["tenant"]["calls_last_minute"], 8);
    assert_eq!(stats["tenant"]["quotas"]["heaps"], 2);
    alice.stop().await;
    bob.stop().await;
    server.terminate().await;
}

#[tokio::test]
async fn stored_bytes_are_a_quota_too_and_keys_come_from_a_file() {
    let key = Key::new("k1");
    let issuer = Issuer::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [key.public]}).to_string()).unwrap();
    let server = start(
        &issuer,
        &[
            "--jwks",
            jwks.to_str().unwrap(),
            "--tenant-max-stored-bytes",
            "1",
        ],
    )
    .await;
    let alice = server.streamable(Some(&issuer.token(&key, "alice"))).await;
    alice.run_js("1", Some("a")).await.ok();
    alice.settle().await;
    let e = alice.run_js("2", Some("a")).await.err();
    assert!(e.contains("--tenant-max-stored-bytes is 1"), "{e}");
    alice.reply("delete_heap", json!({"heap": "a"})).await.ok();
    alice.run_js("3", Some("a")).await.ok();
    alice.stop().await;
    server.terminate().await;
}

#[test]
fn oauth_flags_that_cannot_work_stop_the_start() {
    for (args, says) in [
        (
            vec!["--http-port", "0", "--oauth-issuer", "http://127.0.0.1:9"],
            "--oauth-resource",
        ),
        (
            vec![
                "--oauth-issuer",
                "http://127.0.0.1:9",
                "--oauth-resource",
                RESOURCE,
            ],
            "HTTP transport",
        ),
        (
            vec!["--http-port", "0", "--tenant-max-heaps", "3"],
            "need --oauth-issuer",
        ),
        (
            vec![
                "--http-port",
                "0",
                "--oauth-issuer",
                "http://127.0.0.1:9",
                "--oauth-resource",
                RESOURCE,
            ],
            "cannot discover the keys",
        ),
    ] {
        let (code, stderr) = start_up_failure(&args);
        assert_ne!(code, 0, "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn the_official_sdk_client_finds_the_issuer_gets_a_token_and_keeps_its_own_heap() {
    let Some(tools) = NodeTools::find("the_official_sdk_client_finds_the_issuer") else {
        return;
    };
    let key = Key::new("k1");
    let issuer = Issuer::start(&[&key]).await;
    // The metadata must name the URL the client uses, so the port is chosen first.
    let port = free_port();
    let resource = format!("http://127.0.0.1:{port}/mcp");
    let server = HttpServer::start_on_port(
        port,
        &[
            "--memory",
            "--oauth-issuer",
            &issuer.url,
            "--oauth-resource",
            &resource,
        ],
    )
    .await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("npm/oauth-client.cjs");
    let run = |client: &'static str, codes: &'static [&'static str]| {
        let mut command = tools.command(&script);
        command
            .args([
                &resource,
                client,
                &format!("{client}-secret"),
                "heaps:read heaps:write",
            ])
            .args(codes);
        async move {
            let output = command.output().await.expect("run the SDK client");
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(output.status.success(), "{client}: {stderr}");
            let results: Vec<Value> = String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(|line| serde_json::from_str(line).expect("a JSON line"))
                .collect();
            results
                .iter()
                .map(|r| {
                    r["structuredContent"]["output"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect::<Vec<_>>()
        }
    };
    let counting: &[&str] = &["globalThis.n = (globalThis.n ?? 0) + 1", "n"];
    assert_eq!(run("alice-app", counting).await, ["1", "1"]);
    assert_eq!(run("alice-app", counting).await, ["2", "2"]);
    // Another client is another tenant: heap `mine` is its own.
    assert_eq!(run("bob-app", counting).await, ["1", "1"]);
    // The client asked for a token for this server (RFC 8707), as the metadata told it.
    let asked_for = issuer.asked_for.lock().unwrap().clone();
    assert_eq!(asked_for, vec![resource.clone(); 3]);
    server.terminate().await;
}

#[tokio::test]
async fn a_task_is_its_tenants_alone() {
    use rmcp::model::{CallToolRequestParams, CallToolResponse, CancelTaskParams, GetTaskParams};
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::ServiceExt;
    let key = Key::new("k1");
    let issuer = Issuer::start(&[&key]).await;
    let server = start(&issuer, &[]).await;
    let session = |sub: &str| {
        let config = StreamableHttpClientTransportConfig::with_uri(server.mcp_url.clone())
            .auth_header(issuer.token(&key, sub));
        mcp_v8_e2e::taking_tasks().serve(StreamableHttpClientTransport::from_config(config))
    };
    let (alice, bob) = (
        session("alice").await.unwrap(),
        session("bob").await.unwrap(),
    );
    // Longer than the second a call may take before it becomes a task.
    let code = "const end = Date.now() + 2000; while (Date.now() < end) {} 6 * 7";
    let arguments = json!({"code": code, "heap": "slow"});
    let created = alice
        .call_tool_once(
            CallToolRequestParams::new("run_js")
                .with_arguments(arguments.as_object().cloned().unwrap()),
        )
        .await
        .unwrap();
    let CallToolResponse::Task(created) = created else {
        panic!("a long call becomes a task: {created:?}")
    };
    let id = created.task.task_id;
    // To bob, alice's task does not exist: he can neither read nor cancel it.
    let e = bob.get_task(GetTaskParams::new(&id)).await.unwrap_err();
    assert!(e.to_string().contains("unknown task"), "{e}");
    assert!(bob.cancel_task(CancelTaskParams::new(&id)).await.is_err());
    let done = eventually(
        Duration::from_secs(30),
        "alice's task completes",
        || async {
            let task = alice.get_task(GetTaskParams::new(&id)).await.unwrap();
            task.task.status().is_terminal().then_some(task)
        },
    )
    .await;
    assert_eq!(done.task.status(), rmcp::model::TaskStatus::Completed);
    alice.cancel().await.unwrap();
    bob.cancel().await.unwrap();
    server.terminate().await;
}
