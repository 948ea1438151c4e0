//! What a tenant's call costs over Streamable HTTP: `run_js` back to back with the static token
//! (no OAuth), with an OAuth access token (ES256, keys from a `--jwks` file), and with the
//! token and all four quotas set (each call then lists the tenant's heaps). Prints the median
//! and mean latency per call of each, over three alternating rounds.
//!
//! `cargo build --release --workspace && cargo bench -p mcp-v8-e2e --bench tenants` measures the
//! release binary (or `MCP_V8_BIN`); with `MCP_V8_BASELINE=/path/to/another/mcp-v8` the static
//! token case also runs on that build, and the ratio is printed.
#![allow(missing_docs)]

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mcp_v8_e2e::http::HttpServer;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

const CALLS: usize = 300;
const ISSUER: &str = "https://issuer.bench";
const RESOURCE: &str = "https://mcp.bench/mcp";

struct Case {
    name: &'static str,
    oauth: bool,
    quotas: bool,
    baseline: bool,
}

/// Milliseconds per call: the median and the mean.
async fn measure(server: &HttpServer, token: &str) -> (f64, f64) {
    let client = server.streamable(Some(token)).await;
    client.run_js("var n = 0", Some("bench")).await.ok();
    for _ in 0..20 {
        client.run_js("++n", Some("bench")).await.ok();
    }
    let mut times = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let started = Instant::now();
        client.run_js("++n", Some("bench")).await.ok();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    client.stop().await;
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], mean)
}

fn main() {
    let tokio = tokio::runtime::Runtime::new().expect("a tokio runtime");
    tokio.block_on(async {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        let set = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "alg": "ES256",
                          "x": b64(&point[1..33]), "y": b64(&point[33..65])}]});
        std::fs::write(&jwks, set.to_string()).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k".into());
        let claims = json!({"iss": ISSUER, "aud": RESOURCE, "sub": "bench",
                            "scope": "heaps:read heaps:write", "exp": now + 7200});
        let token =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_der(pkcs8.as_ref()))
                .unwrap();

        let baseline = std::env::var_os("MCP_V8_BASELINE");
        let measured = std::env::var_os("MCP_V8_BIN");
        let mut cases = vec![
            Case {
                name: "static token",
                oauth: false,
                quotas: false,
                baseline: false,
            },
            Case {
                name: "OAuth token",
                oauth: true,
                quotas: false,
                baseline: false,
            },
            Case {
                name: "OAuth token, 4 quotas",
                oauth: true,
                quotas: true,
                baseline: false,
            },
        ];
        if baseline.is_some() {
            cases.push(Case {
                name: "static token (baseline)",
                oauth: false,
                quotas: false,
                baseline: true,
            });
        }
        let mut results: Vec<Vec<(f64, f64)>> = cases.iter().map(|_| Vec::new()).collect();
        for _round in 0..3 {
            for (case, results) in cases.iter().zip(results.iter_mut()) {
                // The case's binary: `HttpServer` starts `MCP_V8_BIN`.
                match (&case.baseline, &baseline, &measured) {
                    (true, Some(path), _) => std::env::set_var("MCP_V8_BIN", path),
                    (_, _, Some(path)) => std::env::set_var("MCP_V8_BIN", path),
                    _ => std::env::remove_var("MCP_V8_BIN"),
                }
                let mut args = vec!["--memory", "--auth-token", "static"];
                let jwks = jwks.to_str().unwrap();
                if case.oauth {
                    args.extend(["--oauth-issuer", ISSUER, "--oauth-resource", RESOURCE]);
                    args.extend(["--jwks", jwks]);
                }
                if case.quotas {
                    args.extend([
                        "--tenant-max-heaps",
                        "100",
                        "--tenant-max-stored-bytes",
                        "1GiB",
                    ]);
                    args.extend(["--tenant-max-concurrent-calls", "4"]);
                    args.extend(["--tenant-calls-per-minute", "100000"]);
                }
                let server = HttpServer::start(&args).await;
                let bearer = if case.oauth { token.as_str() } else { "static" };
                results.push(measure(&server, bearer).await);
                server.terminate().await;
            }
        }
        let median = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
            let mut xs: Vec<f64> = v.iter().map(f).collect();
            xs.sort_by(f64::total_cmp);
            xs[xs.len() / 2]
        };
        println!("{CALLS} run_js calls back to back over Streamable HTTP, median of 3 rounds:");
        let base = median(&results[0], |r| r.0);
        for (case, results) in cases.iter().zip(&results) {
            let (p50, mean) = (median(results, |r| r.0), median(results, |r| r.1));
            println!(
                "  {:<28} median {p50:.3} ms  mean {mean:.3} ms  ({:.2}x static token)",
                case.name,
                p50 / base
            );
        }
    });
}
