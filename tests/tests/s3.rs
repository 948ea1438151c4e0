//! The S3 plugin, through the real binary and the real cdylib, against moto on 127.0.0.1.

use futures::future::join_all;
use mcp_v8_e2e::s3::{Moto, AWS_ENV};
use mcp_v8_e2e::{start_up_failure_with_env, Server};
use serde_json::json;

async fn server(config: &str) -> Server {
    Server::start_with_env(&["--config", config], &AWS_ENV).await
}

#[tokio::test]
async fn heaps_live_in_the_bucket_and_survive_a_restart() {
    let moto = Moto::start().await;
    moto.create_bucket("heaps").await;
    let dir = tempfile::tempdir().unwrap();
    let config = moto.config(dir.path(), "heaps");

    let host = server(&config).await;
    host.output("var notes = ['kept in S3']", "notes").await;
    host.output("notes.push('twice'); notes.length", "notes")
        .await;
    host.output("1", "scratch").await;
    let listed = host.reply("list_heaps", json!({})).await.ok();
    let names = mcp_v8_e2e::heap_names(&listed);
    assert_eq!(names, ["notes", "scratch"]);
    assert!(listed["heaps"][0]["size"].as_u64().unwrap() > 1000);
    host.reply("delete_heap", json!({ "heap": "scratch" }))
        .await
        .ok();
    let error = host
        .reply("delete_heap", json!({ "heap": "scratch" }))
        .await
        .err();
    assert!(error.contains("not found"), "{error}");
    host.stop().await;

    let host = server(&config).await;
    assert_eq!(
        host.output("notes.join(' / ')", "notes").await,
        "kept in S3 / twice"
    );
    assert_eq!(host.output("typeof notes", "scratch").await, "undefined");
    host.stop().await;
}

#[tokio::test]
async fn two_hosts_on_one_bucket_lose_no_update_and_show_no_conflict() {
    let moto = Moto::start().await;
    moto.create_bucket("shared").await;
    let dir = tempfile::tempdir().unwrap();
    let config = moto.config(dir.path(), "shared");
    // S3 saves in sync by default: a call that loses a race runs again on the newer state.
    let args = ["--config", config.as_str(), "--conflict-retries", "50"];
    let (a, b) = (
        Server::start_with_env(&args, &AWS_ENV).await,
        Server::start_with_env(&args, &AWS_ENV).await,
    );
    a.output("var counter = 0", "counter").await;

    let retries = join_all([increment_25_times(&a), increment_25_times(&b)]).await;
    assert_eq!(
        a.output("counter", "counter").await,
        "50",
        "retries: {retries:?}"
    );
    a.stop().await;
    b.stop().await;
}

/// A small call on a heap uploads its journal record, not the heap: at most 2 KB plus its
/// code (until a checkpoint is due).
#[tokio::test]
async fn a_small_call_uploads_its_record_not_the_heap() {
    let moto = Moto::start().await;
    moto.create_bucket("heaps").await;
    let dir = tempfile::tempdir().unwrap();
    let config = moto.config(dir.path(), "heaps");
    let host = server(&config).await;
    host.output("var n = 0", "h").await;
    let (written, puts) = written_and_puts(&host).await;
    let code = "++n";
    for expected in 1..=5 {
        assert_eq!(host.output(code, "h").await, expected.to_string());
    }
    let (written_after, puts_after) = written_and_puts(&host).await;
    assert_eq!(puts_after, puts, "no snapshot uploaded");
    let per_call = (written_after - written) / 5;
    assert!(
        per_call > 0 && per_call <= 2048 + code.len() as u64,
        "{per_call} bytes per call"
    );
    host.stop().await;
}

/// Bytes the store wrote and snapshots it stored so far.
async fn written_and_puts(host: &Server) -> (u64, u64) {
    let stats = host.reply("storage_stats", json!({})).await.ok();
    let count = |key: &str| stats[key].as_u64().unwrap();
    (count("bytes_written"), count("puts"))
}

/// 25 increments, each of which must succeed. Returns how often they ran again.
async fn increment_25_times(host: &Server) -> u64 {
    let mut retries = 0;
    for _ in 0..25 {
        let result = host.run_js("++counter", Some("counter")).await.ok();
        retries += result["retries"].as_u64().unwrap_or(0);
    }
    retries
}

#[tokio::test]
async fn a_missing_bucket_stops_start_up() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = moto.config(dir.path(), "no-such-bucket");
    let (code, stderr) = start_up_failure_with_env(&["--config", &config], &AWS_ENV);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("bucket 'no-such-bucket' at http://127.0.0.1:"),
        "{stderr}"
    );
    assert!(stderr.contains("does not exist"), "{stderr}");
    let (code, stderr) = start_up_failure_with_env(&["--config", &config], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no S3 credentials"), "{stderr}");
}

#[tokio::test]
async fn an_s3_outage_is_a_tool_error_and_the_server_recovers() {
    let mut moto = Moto::start().await;
    moto.create_bucket("flaky").await;
    let dir = tempfile::tempdir().unwrap();
    let config = moto.config(dir.path(), "flaky");
    let host = server(&config).await;
    host.output("var before = 1", "h").await;

    moto.stop().await;
    let error = host.run_js("before", Some("h")).await.err();
    assert!(error.contains("storage error (unavailable)"), "{error}");
    assert!(error.contains("cannot reach S3"), "{error}");
    let error = host.reply("list_heaps", json!({})).await.err();
    assert!(error.contains("unavailable"), "{error}");
    // The server itself keeps serving.
    assert_eq!(
        host.client().list_all_tools().await.unwrap().len(),
        mcp_v8_e2e::HEAP_TOOLS.len()
    );

    moto.resume().await;
    moto.create_bucket("flaky").await;
    assert_eq!(host.output("var after = 2; after", "h2").await, "2");
    host.stop().await;
}

#[tokio::test]
async fn the_s3_bucket_shortcut_reads_the_aws_environment() {
    let moto = Moto::start().await;
    moto.create_bucket("quick").await;
    let endpoint = moto.endpoint();
    let mut env = AWS_ENV.to_vec();
    env.push(("AWS_ENDPOINT_URL", &endpoint));
    let host = Server::start_with_env(&["--s3-bucket", "quick"], &env).await;
    assert_eq!(
        host.output("var q = 'in the bucket'; q", "q").await,
        "in the bucket"
    );
    host.stop().await;
    let host = Server::start_with_env(&["--s3-bucket", "quick"], &env).await;
    assert_eq!(host.output("q", "q").await, "in the bucket");
    host.stop().await;
}

/// The S3 plugin finds credentials and region the way the AWS CLI does: a profile named by
/// `AWS_PROFILE` or by the plugin's `profile`, a `credential_process`, web identity (Kubernetes
/// IRSA) through STS; with none of them the start-up error says what to set. A proxy in front
/// of moto shows which credentials and region signed each request.
#[tokio::test]
async fn s3_credentials_come_from_the_aws_provider_chain() {
    use mcp_v8_e2e::proxy::{Balance, Proxy};
    use mcp_v8_e2e::s3::without_aws_settings;

    let moto = Moto::start().await;
    moto.create_bucket("chain").await;
    let proxy = Proxy::start(vec![moto.endpoint()], Balance::RoundRobin).await;
    let home = tempfile::tempdir().unwrap();
    let aws = home.path().join(".aws");
    std::fs::create_dir(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        "[keys]\naws_access_key_id = AKIDFROMPROFILE\naws_secret_access_key = secret\n",
    )
    .unwrap();
    let process = r#"{"Version": 1, "AccessKeyId": "AKIDFROMPROCESS", "SecretAccessKey": "s", "SessionToken": "token-from-process"}"#;
    std::fs::write(
        aws.join("config"),
        format!(
            "[profile keys]\nregion = eu-west-2\n\n[profile process]\nregion = ap-south-1\n\
             credential_process = echo '{process}'\n"
        ),
    )
    .unwrap();
    let token = home.path().join("web-identity-token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJtY3AtdjgifQ.c2ln").unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Runs one call with `vars` and `extra` plugin configuration; returns the requests it made.
    let run = |vars: Vec<(&'static str, String)>, extra: &'static str, heap: &'static str| {
        let config = moto.config_with(dir.path(), "chain", &proxy.url, extra);
        let (home, proxy) = (home.path().to_path_buf(), &proxy);
        async move {
            let before = proxy.forwarded().len();
            let mut command = tokio::process::Command::new(mcp_v8_e2e::binary());
            command.args(["--config", &config]).env("RUST_LOG", "warn");
            let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
            without_aws_settings(&mut command, &home, &vars);
            let host = Server::start_command(command).await;
            assert_eq!(host.output("6 * 7", heap).await, "42");
            host.settle().await;
            drop(host);
            proxy.forwarded().split_off(before)
        }
    };
    let signed_by = |requests: &[mcp_v8_e2e::proxy::Forwarded]| -> Vec<String> {
        let mut scopes: Vec<String> = requests
            .iter()
            .filter(|r| r.path.starts_with("/chain"))
            .map(|r| {
                let auth = r.headers["authorization"].to_str().unwrap();
                let credential = auth.split("Credential=").nth(1).unwrap();
                let (key, scope) = credential.split_once('/').unwrap();
                let (_date, scope) = scope.split_once('/').unwrap();
                format!("{key} {}", scope.split(',').next().unwrap())
            })
            .collect();
        scopes.dedup();
        scopes
    };
    let stored = |requests: &[mcp_v8_e2e::proxy::Forwarded], heap: &str| {
        requests.iter().any(|r| {
            r.method == "PUT" && r.path.contains(&format!("{heap}.heap")) && r.status == 200
        })
    };

    // A profile named by AWS_PROFILE: its keys sign, its region is the region.
    let requests = run(vec![("AWS_PROFILE", "keys".into())], "", "by-profile").await;
    assert_eq!(
        signed_by(&requests),
        ["AKIDFROMPROFILE eu-west-2/s3/aws4_request"]
    );
    assert!(stored(&requests, "by-profile"), "{requests:?}");

    // A profile named in plugins.toml, whose credentials come from a credential_process.
    let requests = run(vec![], "profile = \"process\"\n", "by-process").await;
    assert_eq!(
        signed_by(&requests),
        ["AKIDFROMPROCESS ap-south-1/s3/aws4_request"]
    );
    assert!(requests
        .iter()
        .filter(|r| r.path.starts_with("/chain"))
        .all(|r| r.headers["x-amz-security-token"] == "token-from-process"));
    assert!(stored(&requests, "by-process"));

    // Web identity, as Kubernetes IRSA sets it up: the token is traded for temporary
    // credentials at STS (moto's, through the proxy) before the first S3 request.
    let requests = run(
        vec![
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.display().to_string()),
            (
                "AWS_ROLE_ARN",
                "arn:aws:iam::123456789012:role/mcp-v8".into(),
            ),
            ("AWS_ENDPOINT_URL_STS", proxy.url.clone()),
            ("AWS_REGION", "us-east-2".into()),
        ],
        "",
        "by-web-identity",
    )
    .await;
    let sts = String::from_utf8_lossy(&requests[0].body).into_owned();
    assert!(
        sts.contains("Action=AssumeRoleWithWebIdentity") && sts.contains("mcp-v8"),
        "{sts}"
    );
    let signers = signed_by(&requests);
    assert_eq!(signers.len(), 1, "{signers:?}");
    assert!(
        signers[0].ends_with(" us-east-2/s3/aws4_request"),
        "{signers:?}"
    );
    assert!(requests
        .iter()
        .filter(|r| r.path.starts_with("/chain"))
        .all(|r| r.headers.contains_key("x-amz-security-token")));
    assert!(stored(&requests, "by-web-identity"));

    // No credentials anywhere: a start-up error that says what to set.
    let config = moto.config_with(dir.path(), "chain", &proxy.url, "");
    let mut command = tokio::process::Command::new(mcp_v8_e2e::binary());
    command
        .args(["--config", &config])
        .stdin(std::process::Stdio::null());
    without_aws_settings(&mut command, home.path(), &[("AWS_PROFILE", "missing")]);
    let output = command.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no S3 credentials for bucket 'chain'")
            && stderr.contains("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
            && stderr.contains("AWS_PROFILE"),
        "{stderr}"
    );
}
