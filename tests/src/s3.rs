//! A local S3-compatible server for the tests: moto's `moto_server`, installed by `test.sh`
//! into `target/s3-venv` (or wherever `MOTO_SERVER` points).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::http::http;

/// Credentials moto accepts (any will do); mcp-v8 reads them from the environment.
pub const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
];

/// A running moto server on 127.0.0.1.
#[derive(Debug)]
pub struct Moto {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
}

fn moto_server() -> PathBuf {
    if let Some(path) = std::env::var_os("MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let path = workspace.join("target/s3-venv/bin/moto_server");
    assert!(
        path.exists(),
        "{} does not exist: run ./test.sh, which installs moto, or set MOTO_SERVER",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

impl Moto {
    /// Starts moto on a free port and waits until it serves.
    pub async fn start() -> Moto {
        let mut moto = Moto {
            child: None,
            port: free_port(),
        };
        moto.resume().await;
        moto
    }

    /// (Re)starts the server on its port; moto keeps its data in memory, so a restarted server
    /// is empty.
    pub async fn resume(&mut self) {
        let mut child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start moto_server");
        let stderr = child.stderr.take().expect("stderr pipe");
        let mut lines = BufReader::new(stderr).lines();
        loop {
            let line = lines
                .next_line()
                .await
                .expect("read moto's output")
                .expect("moto_server exited before it served");
            if line.contains("Running on") {
                break;
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }

    /// Stops the server, as an outage would.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("stop moto");
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket.
    pub async fn create_bucket(&self, bucket: &str) {
        let response = http()
            .put(format!("{}/{bucket}", self.endpoint()))
            .send()
            .await
            .expect("create the bucket");
        assert!(
            response.status().is_success(),
            "create bucket: {}",
            response.status()
        );
    }

    /// A `plugins.toml` in `dir` that stores heaps in `bucket`, and its path.
    pub fn config(&self, dir: &Path, bucket: &str) -> String {
        self.config_with(dir, bucket, &self.endpoint(), "")
    }

    /// A `plugins.toml` in `dir` that stores heaps in `bucket` through `endpoint` (moto, or a
    /// proxy in front of it), with `extra` lines in the plugin's configuration.
    pub fn config_with(&self, dir: &Path, bucket: &str, endpoint: &str, extra: &str) -> String {
        let path = dir.join("plugins.toml");
        let text = format!(
            "storage = \"s3\"\n[plugins.s3]\npath = {:?}\n[plugins.s3.config]\nbucket = {bucket:?}\n\
             endpoint_url = {endpoint:?}\nforce_path_style = true\nprefix = \"tests/\"\ntimeout_secs = 5\nmax_attempts = 2\n{extra}",
            crate::library("mcp_v8_s3_storage"),
        );
        std::fs::write(&path, text).expect("write plugins.toml");
        path.to_str().expect("UTF-8 path").to_string()
    }
}

/// `command` with no AWS settings but `vars`: the test's own `AWS_*` variables are removed,
/// `HOME` and the shared config files point into `home`, and the EC2 metadata service is off
/// (there is none here, and looking for it would only take time).
pub fn without_aws_settings(
    command: &mut tokio::process::Command,
    home: &Path,
    vars: &[(&str, &str)],
) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    command
        .env("HOME", home)
        .env("AWS_CONFIG_FILE", home.join(".aws/config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join(".aws/credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(vars.iter().copied());
}
