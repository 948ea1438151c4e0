//! The `mcp-v8` binary: parses the command line, starts logging, the store, the worker pool
//! and the transport, and runs the hidden internal subcommands (`worker`, `check-plugin`).

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use mcp_v8::cli::{Cli, Internal, LogFormat};
use mcp_v8::engine;
use mcp_v8::executor::Executor;
use mcp_v8::runtime::Runtime;
use mcp_v8::server::McpServer;
use mcp_v8::start::StartError;
use mcp_v8::storage;
use mcp_v8::transport;
use mcp_v8::transport::oauth::OAuth;
use mcp_v8::upstream::{self, Upstreams};
use mcp_v8::worker;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.process.log_format;
    match &cli.internal {
        Some(Internal::CheckPlugin { path }) => {
            // The answer goes to stdout, for the server that asked.
            return match storage::loader::check(path) {
                Ok(()) => ExitCode::SUCCESS,
                Err(why) => {
                    println!("{why}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Internal::Worker) => {
            init_logging(log_format);
            return worker::serve(cli.limits.worker_settings());
        }
        None => {}
    }
    if cli.process.list_plugins {
        print!(
            "{}",
            storage::registry::list_plugins(cli.store.plugin_dir.as_deref())
        );
        return ExitCode::SUCCESS;
    }
    init_logging(log_format);
    if log_format == LogFormat::Json {
        // Workers inherit the format through the one variable they get besides RUST_LOG.
        // Set before any other thread exists.
        std::env::set_var("MCP_V8_LOG_FORMAT", "json");
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp-v8: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json_logs = log_format == LogFormat::Json;
    let result = runtime.block_on(run(cli));
    // Dropping the runtime would wait for every blocking task, and a storage plugin that
    // never returns would then keep the server from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The one line a user reads when the server does not start; a log event with JSON.
            if json_logs {
                tracing::error!("{e}");
            } else {
                eprintln!("mcp-v8: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr: stdout belongs to the MCP stdio transport (and to a worker's answers).
fn init_logging(format: LogFormat) {
    // rmcp logs every session at info; only its warnings matter to a user.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rmcp=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

async fn run(cli: Cli) -> Result<(), StartError> {
    let choice = cli.store.choice()?;
    let mcp_config = match (&cli.tools.mcp_config, &choice) {
        (Some(path), _) => Some(path.clone()),
        (None, storage::StorageChoice::Configured(config)) => config.mcp_config.clone(),
        (None, _) => None,
    };
    let upstreams = match mcp_config {
        Some(path) => {
            let servers = upstream::config::load(&path).map_err(StartError::Config)?;
            Some(Arc::new(Upstreams::new(servers, cli.tools.policy()?)))
        }
        None => None,
    };
    let net = cli.net.net()?;
    let http = cli.transport.http_port.is_some() || cli.transport.sse_port.is_some();
    let oauth = cli.tenants.oauth(http)?;
    let storage::registry::Opened { storage, dump } =
        storage::registry::open(&choice, cli.store.timeout(), &cli.memory_store.settings())?;
    let limits = cli.limits.limits();
    let program = std::env::current_exe().map_err(StartError::Executable)?;
    let workers = cli.limits.workers();
    let executor = Executor::workers(program, workers, cli.limits.worker_settings());
    let policy = cli.durability.policy(cli.store.compression);
    let mut runtime = Runtime::with_policy(storage, executor, limits, policy);
    if let Some(upstreams) = &upstreams {
        runtime = runtime.with_tools(Arc::clone(upstreams));
    }
    if let Some(net) = net {
        runtime = runtime.with_net(Arc::new(net));
    }
    let runtime = runtime
        .with_approval_timeout(cli.approvals.timeout())
        .with_quotas(cli.tenants.quotas());
    let runtime = Arc::new(runtime);
    // Listening for SIGINT/SIGTERM before the first worker starts: a stop asked for while the
    // server starts is not lost (a shell's background job even inherits them ignored).
    let shutdown = CancellationToken::new();
    transport::cancel_on_signals(shutdown.clone());
    runtime.prewarm();
    let transport = match (cli.transport.http_port, cli.transport.sse_port) {
        (None, None) => "stdio".to_string(),
        (http, sse) => [("streamable-http", http), ("sse", sse)]
            .iter()
            .filter_map(|(name, port)| port.map(|p| format!("{name} {}:{p}", cli.transport.host)))
            .collect::<Vec<_>>()
            .join(", "),
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        transport,
        stateless = cli.store.stateless,
        workers,
        storage = %runtime.storage().info().name,
        save = ?policy.save,
        timeout_secs = limits.timeout.as_secs_f64(),
        heap_mb = limits.heap_bytes >> 20,
        answer_tokens = cli.limits.max_output_tokens,
        upstream_servers = upstreams.as_ref().map_or(0, |u| u.names().count()),
        v8 = engine::v8_version(),
        "mcp-v8 starting"
    );
    let mut server = McpServer::new(Arc::clone(&runtime), cli.store.mode());
    if cli.conformance_fixtures {
        server = server.with_conformance_fixtures();
    }
    if let (Some(dump), Some(every)) = (&dump, cli.memory_store.memory_dump_interval) {
        Arc::clone(dump).spawn_every(every, shutdown.clone());
    }
    let grace = cli.process.shutdown_grace();
    match cli.transport.http_options(cli.process.log_format) {
        Some(mut options) => {
            if let Some(settings) = oauth {
                options.policy.oauth = Some(Arc::new(OAuth::start(settings).await?));
            }
            let loopback = matches!(options.host.as_str(), "127.0.0.1" | "localhost" | "::1");
            if !loopback && options.policy.token.is_none() && options.policy.oauth.is_none() {
                tracing::warn!(
                    host = %options.host,
                    "listening beyond loopback without --auth-token: anyone who can reach this \
                     port can run code here"
                );
            }
            transport::http::serve(server, options, shutdown, grace).await?;
        }
        None => {
            transport::serve_stdio(server, shutdown, grace, cli.transport.max_body_bytes).await?
        }
    }
    // Every answered call is in its heap's journal; a clean stop also stores the snapshots
    // still being taken, so that the next load has nothing to run again.
    let flushed = runtime.flush(grace).await;
    if let Some(dump) = dump {
        let path = dump.path().display().to_string();
        match tokio::task::spawn_blocking(move || dump.write()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let why = format!("could not write the memory dump {path}: {e}");
                return Err(StartError::Dump(why));
            }
            Err(e) => {
                return Err(StartError::Dump(format!(
                    "the memory dump task failed: {e}"
                )));
            }
        }
    }
    if let Some(upstreams) = &upstreams {
        upstreams.shutdown().await;
    }
    if !flushed {
        return Err(StartError::Unflushed);
    }
    Ok(())
}
