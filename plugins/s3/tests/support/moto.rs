//! A local moto server (`moto_server`, which `./test.sh` installs into target/s3-venv, or
//! wherever `MOTO_SERVER` points), for the plugin's own tests and benchmark.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A running moto server on 127.0.0.1; stopped when dropped.
pub(crate) struct Moto {
    child: std::process::Child,
    /// Its URL, `http://127.0.0.1:PORT`.
    pub(crate) endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts moto on a free port and waits until it serves.
    pub(crate) fn start() -> Moto {
        let server = std::env::var_os("MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../../target/s3-venv/bin/moto_server")
            });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e} (run ./test.sh first)", server.display()));
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        for line in lines.by_ref() {
            if line.expect("moto output").contains("Running on") {
                break;
            }
        }
        // Keep draining its log so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A plain aws-sdk-s3 client of this server, with any credentials.
    pub(crate) fn client(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .credentials_provider(aws_credential_types::Credentials::new(
                    "testing", "testing", None, None, "moto",
                ))
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .endpoint_url(&self.endpoint)
                .force_path_style(true)
                .http_client(
                    aws_smithy_http_client::Builder::new()
                        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                        ))
                        .build_https(),
                )
                .build(),
        )
    }

    /// Makes bucket `name`, with `runtime` to drive the client.
    pub(crate) fn create_bucket(&self, runtime: &tokio::runtime::Runtime, name: &str) {
        runtime
            .block_on(self.client().create_bucket().bucket(name).send())
            .expect("create the bucket");
    }
}
