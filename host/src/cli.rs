//! The command line. Every flag can also be set with an `MCP_V8_*` environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::engine::{Limits, BYTES_PER_TOKEN};
use crate::envelope::Codec;
use crate::runtime::{Checkpoints, Quotas, SaveMode, StoragePolicy};
use crate::server::Mode;
use crate::start::StartError;
use crate::storage::{MemoryOptions, MemorySettings, StorageChoice};
use crate::transport::access::AccessPolicy;
use crate::transport::events::Retention;
use crate::transport::http::HttpOptions;
use crate::transport::oauth::OAuthSettings;
use crate::worker::WorkerSettings;

/// A JavaScript runtime with memory for AI agents, served over MCP (stdio, or HTTP with
/// --http-port / --sse-port).
///
/// Each `run_js` call runs on a named heap and keeps what the code left there, so the next call
/// continues where this one ended.
///
/// Storage: --memory, --directory-path DIR, or a plugins.toml (--config); with none of them,
/// heaps are kept in memory.
#[derive(Debug, Parser)]
#[command(name = "mcp-v8", version, about, long_about = None)]
pub struct Cli {
    #[allow(missing_docs)] // clap shows a flattened group's doc comment nowhere
    #[command(flatten)]
    pub store: StoreArgs,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub memory_store: MemoryStoreArgs,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub durability: DurabilityArgs,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub limits: LimitsArgs,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub tools: ToolsArgs,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub net: NetArgs,

    #[allow(missing_docs)]
    #[command(flatten)]
    pub approvals: ApprovalArgs,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub transport: TransportArgs,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub tenants: TenantArgs,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub process: ProcessArgs,
    /// Offer the official conformance suite's fixture tools for the tasks extension (greet,
    /// slow_compute, failing_job, protocol_error_job) beside the real ones: for the suite's
    /// `tasks-*` scenarios only, hence hidden.
    #[arg(long, hide = true)]
    pub conformance_fixtures: bool,
    /// What this process is for, when it is not a server.
    #[command(subcommand)]
    pub internal: Option<Internal>,
}

/// The modes the server starts its own binary in; hidden from `--help`.
#[derive(Debug, Subcommand)]
pub enum Internal {
    /// Serve executions for a host over stdin/stdout.
    #[command(hide = true)]
    Worker,
    /// Check that PATH is a loadable storage plugin; print the reason if not.
    #[command(hide = true)]
    CheckPlugin {
        /// The plugin library.
        path: PathBuf,
    },
}

/// Where heaps live.
#[derive(Debug, Args)]
#[command(next_help_heading = "Storage")]
pub struct StoreArgs {
    /// Keep heaps in this process's memory (lost when it exits). Needs no setup and ignores
    /// any configuration file.
    #[arg(long, env = "MCP_V8_MEMORY",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub memory: bool,

    /// Keep no heaps at all: every call starts from a fresh isolate.
    #[arg(long, env = "MCP_V8_STATELESS",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub stateless: bool,

    /// Keep heaps as files in DIR, with the file storage plugin (found next to this binary
    /// or in --plugin-dir). Ignores any configuration file.
    #[arg(long, env = "MCP_V8_DIRECTORY_PATH", value_name = "DIR")]
    pub directory_path: Option<PathBuf>,

    /// Keep heaps in this S3 bucket, with the S3 storage plugin (found next to this binary or
    /// in --plugin-dir). Credentials and region come from the AWS provider chain (AWS_*
    /// variables, AWS_PROFILE and ~/.aws, SSO, web identity, ECS/EC2 roles); a custom endpoint
    /// from AWS_ENDPOINT_URL.
    #[arg(
        long,
        env = "MCP_V8_S3_BUCKET",
        value_name = "BUCKET",
        conflicts_with = "directory_path"
    )]
    pub s3_bucket: Option<String>,

    /// Where to find the bundled storage plugins for --directory-path and --s3-bucket
    /// [default: next to this binary, then PREFIX/lib/mcp-v8/plugins for PREFIX/bin/mcp-v8,
    /// then $XDG_DATA_HOME/mcp-v8/plugins, then /usr/local/lib/mcp-v8/plugins].
    #[arg(long, env = "MCP_V8_PLUGIN_DIR", value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,

    /// Storage configuration file [default: ./plugins.toml, else
    /// $XDG_CONFIG_HOME/mcp-v8/plugins.toml].
    #[arg(long, env = "MCP_V8_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// How heap snapshots are stored in every store: `zstd` compresses them in this process
    /// before any store sees them, `none` stores them as V8 made them. Heaps stored either
    /// way are read either way.
    #[arg(
        long,
        env = "MCP_V8_COMPRESSION",
        value_name = "CODEC",
        default_value = "zstd",
        value_parser = PossibleValuesParser::new(["zstd", "none"]).map(|s| match s.as_str() {
            "none" => Codec::None,
            _ => Codec::Zstd,
        })
    )]
    pub compression: Codec,

    /// Longest a storage plugin may take for one operation, in seconds; a call whose store
    /// does not answer in time fails with "storage did not answer".
    #[arg(long, env = "MCP_V8_STORAGE_TIMEOUT", value_name = "SECS",
          default_value_t = crate::storage::PLUGIN_TIMEOUT.as_secs_f64(),
          value_parser = parse_seconds)]
    pub storage_timeout: f64,
}

/// The memory store's bounds and dump.
#[derive(Debug, Args)]
#[command(next_help_heading = "Memory store")]
pub struct MemoryStoreArgs {
    /// Most bytes the memory store holds (as stored, i.e. compressed), e.g. `512MiB`, `2GB`
    /// or plain bytes; past it the least recently used heaps are evicted (never one in use),
    /// and a call on an evicted heap says so [default: unlimited].
    #[arg(long, env = "MCP_V8_MEMORY_MAX_BYTES", value_name = "SIZE", value_parser = parse_size)]
    pub memory_max_bytes: Option<u64>,

    /// How long the memory store keeps a heap nobody runs, reads or writes, e.g. `90s`,
    /// `30m`, `2h`; a call on an expired heap says so [default: forever].
    #[arg(long, env = "MCP_V8_MEMORY_TTL", value_name = "DURATION", value_parser = parse_duration)]
    pub memory_ttl: Option<Duration>,

    /// Load the memory store's heaps from this file at start, and write them all to it on
    /// SIGINT, SIGTERM and end of input (atomically: a crash mid-write keeps the previous
    /// dump).
    #[arg(long, env = "MCP_V8_MEMORY_DUMP", value_name = "PATH")]
    pub memory_dump: Option<PathBuf>,

    /// Also write the memory dump this often while running, e.g. `5m`.
    #[arg(long, env = "MCP_V8_MEMORY_DUMP_INTERVAL", value_name = "DURATION",
          value_parser = parse_duration, requires = "memory_dump")]
    pub memory_dump_interval: Option<Duration>,
}

/// When snapshots are stored, and how writers that race are settled.
#[derive(Debug, Args)]
#[command(next_help_heading = "Durability")]
pub struct DurabilityArgs {
    /// When a heap's snapshot is stored. Every call is answered only once its journal record
    /// is stored; `background` keeps a warm heap live and stores a snapshot (a checkpoint)
    /// now and then, as the --checkpoint-* flags say; `sync` stores one after every call,
    /// before its answer.
    #[arg(
        long,
        env = "MCP_V8_SAVE",
        value_name = "WHEN",
        default_value = "background",
        value_parser = PossibleValuesParser::new(["background", "sync"]).map(|s| match s.as_str() {
            "sync" => SaveMode::Sync,
            _ => SaveMode::Background,
        })
    )]
    pub save: SaveMode,

    /// Checkpoint a live heap after this many calls since its last snapshot.
    #[arg(long, env = "MCP_V8_CHECKPOINT_CALLS", value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub checkpoint_calls: u32,

    /// Checkpoint a live heap once the code of the calls since its last snapshot adds up to
    /// this much, e.g. `8MiB`.
    #[arg(long, env = "MCP_V8_CHECKPOINT_BYTES", value_name = "SIZE", default_value = "8MiB",
          value_parser = parse_size)]
    pub checkpoint_bytes: u64,

    /// Checkpoint a live heap once the calls since its last snapshot took this many seconds
    /// to run (about what replaying them after a restart would take).
    #[arg(long, env = "MCP_V8_CHECKPOINT_RUN_SECS", value_name = "SECS", default_value = "1",
          value_parser = parse_seconds)]
    pub checkpoint_run_secs: f64,

    /// Checkpoint a live heap with calls since its last snapshot once it has had no call for
    /// this many seconds.
    #[arg(long, env = "MCP_V8_CHECKPOINT_IDLE_SECS", value_name = "SECS", default_value = "30",
          value_parser = parse_seconds)]
    pub checkpoint_idle_secs: f64,

    /// How often a call whose heap another writer changed while it ran (another server on
    /// the same directory or bucket) runs again on the newer state before the conflict is
    /// returned.
    #[arg(long, env = "MCP_V8_CONFLICT_RETRIES", value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub conflict_retries: u32,
}

/// What one call may use, and how many run at once.
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitsArgs {
    /// Longest a single call may run, in seconds.
    #[arg(
        long,
        env = "MCP_V8_EXECUTION_TIMEOUT",
        value_name = "SECS",
        default_value_t = 30.0,
        value_parser = parse_seconds
    )]
    pub execution_timeout: f64,

    /// Largest JavaScript heap of one call, in MB; more ends the call with "heap limit
    /// exceeded".
    #[arg(long, env = "MCP_V8_HEAP_MEMORY_MAX", value_name = "MB", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(8..=16384))]
    pub heap_memory_max: u32,

    /// Most console output kept per call, in bytes; the rest is dropped with a marker.
    #[arg(long, env = "MCP_V8_CONSOLE_MAX_BYTES", value_name = "BYTES", default_value_t = 1 << 20)]
    pub console_max_bytes: usize,

    /// Most of a model's context one answer may take, in tokens (estimated as 3 bytes of
    /// text each), result and console together: a longer result comes as a preview that
    /// keeps its structure, a longer console as its first and last lines. 0: no budget.
    #[arg(
        long,
        env = "MCP_V8_MAX_OUTPUT_TOKENS",
        value_name = "TOKENS",
        default_value_t = 20_000
    )]
    pub max_output_tokens: usize,

    /// Most bytes of a call's result (`output`) kept; the rest is cut with a marker and
    /// `output_truncated` is set.
    #[arg(long, env = "MCP_V8_MAX_OUTPUT_BYTES", value_name = "BYTES", default_value_t = 4 << 20)]
    pub max_output_bytes: usize,

    /// How many executions may run at once, each in its own worker process [default: CPUs].
    #[arg(long, env = "MCP_V8_MAX_CONCURRENT_EXECUTIONS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_concurrent_executions: Option<u16>,

    /// Most memory each worker spends keeping recently used heaps warm (restored and
    /// ready, with their last snapshot), e.g. `256MiB`, `1GB` or plain bytes; the least
    /// recently used go first. 0 keeps none warm.
    #[arg(long, env = "MCP_V8_WARM_HEAPS_MAX_BYTES", value_name = "SIZE",
          default_value = "256MiB", value_parser = parse_size)]
    pub warm_heaps_max_bytes: u64,
}

/// Code mode: other MCP servers whose tools code calls as `tools.server.tool(args)`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Tools (code mode)")]
pub struct ToolsArgs {
    /// MCP servers whose tools code may call, in the `mcpServers` JSON format of Claude
    /// Desktop, Cursor and Claude Code (stdio and HTTP entries; `${VAR}` is read from this
    /// process's environment) [default: `mcp_config` in plugins.toml, else none].
    #[arg(long, env = "MCP_V8_MCP_CONFIG", value_name = "PATH")]
    pub mcp_config: Option<PathBuf>,

    /// Tools code may call, as `server.tool` patterns (`*` matches anything), comma-separated.
    #[arg(
        long,
        env = "MCP_V8_ALLOW_TOOLS",
        value_name = "PATTERNS",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub allow_tools: Vec<String>,

    /// Tools code may not call even if allowed, as `server.tool` patterns, comma-separated.
    #[arg(
        long,
        env = "MCP_V8_DENY_TOOLS",
        value_name = "PATTERNS",
        value_delimiter = ','
    )]
    pub deny_tools: Vec<String>,

    /// Tools that say they may destroy data (`destructiveHint`) that code may call anyway, as
    /// `server.tool` patterns; such tools are refused otherwise.
    #[arg(
        long,
        env = "MCP_V8_ALLOW_DESTRUCTIVE_TOOLS",
        value_name = "PATTERNS",
        value_delimiter = ','
    )]
    pub allow_destructive_tools: Vec<String>,

    /// Tools code may call only once the client's user says yes, as `server.tool` patterns,
    /// comma-separated: the run waits while the user is asked (MCP elicitation), a no is a
    /// ToolError of kind `declined`, and a client that cannot be asked gets a ToolError naming
    /// the flag that would allow the call. Allowed when approved, even if not in
    /// --allow-tools or destructive; --deny-tools still wins.
    #[arg(
        long,
        env = "MCP_V8_ASK_TOOLS",
        value_name = "PATTERNS",
        value_delimiter = ','
    )]
    pub ask_tools: Vec<String>,

    /// Most tool calls one run may make.
    #[arg(
        long,
        env = "MCP_V8_TOOL_CALLS_PER_RUN",
        value_name = "N",
        default_value_t = 100
    )]
    pub tool_calls_per_run: usize,

    /// Most tool calls of one run in flight at once; the others wait their turn.
    #[arg(long, env = "MCP_V8_TOOL_CONCURRENCY", value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub tool_concurrency: u16,

    /// Longest one tool call may take, in seconds (the run's own time limit still holds).
    #[arg(long, env = "MCP_V8_TOOL_TIMEOUT_SECS", value_name = "SECS", default_value_t = 30.0,
          value_parser = parse_seconds)]
    pub tool_timeout_secs: f64,

    /// Largest result of one tool call (as JSON), e.g. `4MiB`; a larger one fails the call
    /// with a ToolError.
    #[arg(long, env = "MCP_V8_TOOL_RESULT_BYTES", value_name = "SIZE", default_value = "4MiB",
          value_parser = parse_size)]
    pub tool_result_bytes: u64,
}

impl ToolsArgs {
    /// The tool policy these flags set.
    pub fn policy(&self) -> Result<crate::upstream::ToolPolicy, StartError> {
        use crate::upstream::policy::globs;
        Ok(crate::upstream::ToolPolicy {
            allow: globs(&self.allow_tools).map_err(StartError::Config)?,
            deny: globs(&self.deny_tools).map_err(StartError::Config)?,
            ask: globs(&self.ask_tools).map_err(StartError::Config)?,
            allow_destructive: globs(&self.allow_destructive_tools).map_err(StartError::Config)?,
            calls_per_run: self.tool_calls_per_run,
            concurrent_calls: usize::from(self.tool_concurrency),
            call_timeout: Duration::from_secs_f64(self.tool_timeout_secs),
            result_bytes: usize::try_from(self.tool_result_bytes).unwrap_or(usize::MAX),
        })
    }
}

/// Calls from code left to a person (`--ask-tools`, `--ask-net`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Approvals")]
pub struct ApprovalArgs {
    /// Longest the user may take to answer whether a call or request from code may go out,
    /// in seconds; no answer in time is a no. The wait does not count against the run's time
    /// limit.
    #[arg(long, env = "MCP_V8_APPROVAL_TIMEOUT_SECS", value_name = "SECS",
          default_value_t = 300.0, value_parser = parse_seconds)]
    pub approval_timeout_secs: f64,
}

impl ApprovalArgs {
    /// Longest a person may take to answer.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.approval_timeout_secs)
    }
}

/// `fetch` from code: the hosts it may reach, its limits, and the secrets it may send.
#[derive(Debug, Args)]
#[command(next_help_heading = "Network (fetch)")]
pub struct NetArgs {
    /// Hosts code may fetch from, comma-separated: `api.example.com`, `*.example.com` (names
    /// under it), `*` (any name), or an IP address; `:port` for one port only. None by
    /// default: without this flag `fetch` reaches nothing.
    #[arg(
        long,
        env = "MCP_V8_ALLOW_NET",
        value_name = "HOSTS",
        value_delimiter = ','
    )]
    pub allow_net: Vec<String>,

    /// Hosts code may fetch from once the client's user says yes, in the patterns of
    /// --allow-net: the run waits while the user is asked (MCP elicitation); a yes lets the
    /// run reach that host until it ends, a no fails the request with a TypeError whose
    /// `cause.kind` is `declined`. Redirects to such a host are asked about too.
    #[arg(
        long,
        env = "MCP_V8_ASK_NET",
        value_name = "HOSTS",
        value_delimiter = ','
    )]
    pub ask_net: Vec<String>,

    /// Addresses outside the public internet (loopback, private, link-local, ...) that an
    /// allowed name may resolve to, as CIDR ranges, comma-separated; refused otherwise.
    #[arg(
        long,
        env = "MCP_V8_ALLOW_NET_ADDRESSES",
        value_name = "CIDRS",
        value_delimiter = ','
    )]
    pub allow_net_addresses: Vec<String>,

    /// A secret code may send without seeing it, as `NAME=env:VAR@host[,host...]`: code writes
    /// `mcp-v8-secret:NAME` in a header, and the server puts $VAR's value there on requests
    /// to those hosts only. Repeat for more secrets.
    #[arg(long = "secret", value_name = "NAME=env:VAR@HOSTS")]
    pub secrets: Vec<String>,

    /// Most requests one run may make.
    #[arg(
        long,
        env = "MCP_V8_FETCH_REQUESTS_PER_RUN",
        value_name = "N",
        default_value_t = 50
    )]
    pub fetch_requests_per_run: usize,

    /// Most requests of one run in flight at once; the others wait their turn.
    #[arg(long, env = "MCP_V8_FETCH_CONCURRENCY", value_name = "N", default_value_t = 6,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub fetch_concurrency: u16,

    /// Longest one request may take, redirects and body included, in seconds (the run's own
    /// time limit still holds).
    #[arg(long, env = "MCP_V8_FETCH_TIMEOUT_SECS", value_name = "SECS", default_value_t = 30.0,
          value_parser = parse_seconds)]
    pub fetch_timeout_secs: f64,

    /// Largest response body one request may read, e.g. `10MiB`; a larger one fails the
    /// request.
    #[arg(long, env = "MCP_V8_FETCH_RESPONSE_BYTES", value_name = "SIZE", default_value = "10MiB",
          value_parser = parse_size)]
    pub fetch_response_bytes: u64,
}

impl NetArgs {
    /// The network these flags allow, if they allow any host.
    pub fn net(&self) -> Result<Option<crate::net::Net>, StartError> {
        use crate::net::{HostPattern, Net, NetLimits, NetPolicy, Secret, Secrets};
        let patterns = |flag: &str, hosts: &[String]| {
            hosts
                .iter()
                .filter(|h| !h.trim().is_empty())
                .map(|h| {
                    HostPattern::parse(h).map_err(|e| StartError::Config(format!("{flag}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let allow = patterns("--allow-net", &self.allow_net)?;
        let ask = patterns("--ask-net", &self.ask_net)?;
        let addresses = self
            .allow_net_addresses
            .iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| {
                let a = a.trim();
                a.parse::<ipnet::IpNet>()
                    .or_else(|_| a.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        StartError::Config(format!(
                            "--allow-net-addresses: {a:?} is not a CIDR range or an address"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let secrets = self
            .secrets
            .iter()
            .map(|s| Secret::parse(s, |var| std::env::var(var).ok()).map_err(StartError::Config))
            .collect::<Result<Vec<_>, _>>()?;
        if allow.is_empty() && ask.is_empty() {
            if !secrets.is_empty() || !addresses.is_empty() {
                return Err(StartError::Config(
                    "--secret and --allow-net-addresses need --allow-net or --ask-net: no host \
                     is allowed"
                        .into(),
                ));
            }
            return Ok(None);
        }
        let limits = NetLimits {
            requests_per_run: self.fetch_requests_per_run,
            concurrent_requests: usize::from(self.fetch_concurrency),
            timeout: Duration::from_secs_f64(self.fetch_timeout_secs),
            response_bytes: usize::try_from(self.fetch_response_bytes).unwrap_or(usize::MAX),
        };
        Ok(Some(Net::new(
            NetPolicy {
                allow,
                ask,
                addresses,
            },
            Secrets::new(secrets),
            limits,
        )))
    }
}

/// How clients reach the server: stdio, or the HTTP transports and their access rules.
#[derive(Debug, Args)]
#[command(next_help_heading = "Transports")]
pub struct TransportArgs {
    /// Serve MCP over Streamable HTTP on this port, at /mcp (instead of stdio).
    #[arg(long, env = "MCP_V8_HTTP_PORT", value_name = "PORT")]
    pub http_port: Option<u16>,

    /// Serve the legacy HTTP+SSE transport on this port: GET /sse, POST /message.
    #[arg(long, env = "MCP_V8_SSE_PORT", value_name = "PORT")]
    pub sse_port: Option<u16>,

    /// Address the HTTP transports bind. Anything but loopback exposes code execution to
    /// the network: set --auth-token.
    #[arg(
        long,
        env = "MCP_V8_HOST",
        value_name = "ADDR",
        default_value = "127.0.0.1"
    )]
    pub host: String,

    /// Host header values accepted, comma-separated (`name` for any port, or `name:port`)
    /// [default: localhost, 127.0.0.1, [::1] and --host].
    #[arg(
        long,
        env = "MCP_V8_ALLOWED_HOSTS",
        value_name = "HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Option<Vec<String>>,

    /// Browser origins accepted, comma-separated (`scheme://host:port`, or `:*` for any port)
    /// [default: http(s)://localhost, 127.0.0.1 and [::1] on any port]. Requests without an
    /// Origin header (non-browser clients) are not affected.
    #[arg(
        long,
        env = "MCP_V8_ALLOWED_ORIGINS",
        value_name = "ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Option<Vec<String>>,

    /// Require `Authorization: Bearer TOKEN` on every HTTP request.
    #[arg(
        long,
        env = "MCP_V8_AUTH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub auth_token: Option<String>,

    /// Largest request, in bytes: an HTTP request body, or one message (line) on stdio.
    #[arg(long, env = "MCP_V8_MAX_BODY_BYTES", value_name = "BYTES", default_value_t = 64 << 20)]
    pub max_body_bytes: usize,

    /// How long Streamable HTTP keeps the events it sent, so that a client whose stream
    /// dropped can reconnect with Last-Event-ID and get what it missed, e.g. `10m`.
    #[arg(long, env = "MCP_V8_EVENT_RETENTION", value_name = "DURATION", default_value = "10m",
          value_parser = parse_duration)]
    pub event_retention: Duration,

    /// Most bytes of such events kept (the oldest go first), e.g. `64MiB`.
    #[arg(long, env = "MCP_V8_EVENT_MAX_BYTES", value_name = "SIZE", default_value = "64MiB",
          value_parser = parse_size)]
    pub event_max_bytes: u64,
}

/// Many users on one server: OAuth access tokens, heaps per tenant, quotas.
#[derive(Debug, Args)]
#[command(next_help_heading = "Tenants (OAuth)")]
pub struct TenantArgs {
    /// Accept OAuth 2.1 access tokens (JWTs) from this authorisation server, e.g.
    /// `https://id.example.com/realms/mcp`: its keys are found through its metadata, and each
    /// token's tenant gets heaps of its own. HTTP transports only.
    #[arg(long, env = "MCP_V8_OAUTH_ISSUER", value_name = "URL")]
    pub oauth_issuer: Option<String>,

    /// This server's URL as clients reach it, e.g. `https://mcp.example.com/mcp`: tokens must
    /// name it as their audience. Needed with --oauth-issuer.
    #[arg(long, env = "MCP_V8_OAUTH_RESOURCE", value_name = "URL")]
    pub oauth_resource: Option<String>,

    /// Read the issuer's signing keys from this JWK set file instead of discovering them
    /// (read again when a token names a key it does not hold).
    #[arg(long, env = "MCP_V8_JWKS", value_name = "PATH")]
    pub jwks: Option<PathBuf>,

    /// The token claim that names the tenant: `sub` (each user their own heaps), or e.g. a
    /// claim holding an organisation id (its users share heaps).
    #[arg(
        long,
        env = "MCP_V8_OAUTH_TENANT_CLAIM",
        value_name = "CLAIM",
        default_value = "sub"
    )]
    pub oauth_tenant_claim: String,

    /// Clock skew allowed on a token's expiry and not-before, in seconds.
    #[arg(
        long,
        env = "MCP_V8_OAUTH_LEEWAY_SECS",
        value_name = "SECS",
        default_value_t = 60
    )]
    pub oauth_leeway_secs: u64,

    /// Most heaps one tenant may keep.
    #[arg(long, env = "MCP_V8_TENANT_MAX_HEAPS", value_name = "N")]
    pub tenant_max_heaps: Option<u64>,

    /// Most bytes one tenant's heaps may take in the store, e.g. `1GiB`.
    #[arg(long, env = "MCP_V8_TENANT_MAX_STORED_BYTES", value_name = "SIZE",
          value_parser = parse_size)]
    pub tenant_max_stored_bytes: Option<u64>,

    /// Most `run_js` calls of one tenant running at once.
    #[arg(long, env = "MCP_V8_TENANT_MAX_CONCURRENT_CALLS", value_name = "N")]
    pub tenant_max_concurrent_calls: Option<u64>,

    /// Most `run_js` calls one tenant may start in a minute.
    #[arg(long, env = "MCP_V8_TENANT_CALLS_PER_MINUTE", value_name = "N")]
    pub tenant_calls_per_minute: Option<u64>,
}

impl TenantArgs {
    /// How tokens are checked, or `None` without OAuth; a start error for flags that need
    /// what is not there.
    pub fn oauth(&self, http: bool) -> Result<Option<OAuthSettings>, StartError> {
        let Some(issuer) = self.oauth_issuer.clone().filter(|i| !i.is_empty()) else {
            let quotas = self.quotas() != Quotas::default();
            if self.jwks.is_some() || self.oauth_resource.is_some() || quotas {
                return Err(StartError::Config(
                    "--jwks, --oauth-resource and the --tenant-* quotas need --oauth-issuer".into(),
                ));
            }
            return Ok(None);
        };
        if !http {
            return Err(StartError::Config(
                "--oauth-issuer needs an HTTP transport (--http-port or --sse-port): stdio has                  no tokens"
                    .into(),
            ));
        }
        let resource = self.oauth_resource.clone().ok_or_else(|| {
            StartError::Config(
                "--oauth-issuer needs --oauth-resource, this server's URL as clients reach it                  (tokens must be issued for it)"
                    .into(),
            )
        })?;
        Ok(Some(OAuthSettings {
            issuer,
            resource,
            jwks_file: self.jwks.clone(),
            tenant_claim: self.oauth_tenant_claim.clone(),
            leeway: Duration::from_secs(self.oauth_leeway_secs),
        }))
    }

    /// Every tenant's quotas.
    pub fn quotas(&self) -> Quotas {
        Quotas {
            heaps: self.tenant_max_heaps,
            stored_bytes: self.tenant_max_stored_bytes,
            concurrent_calls: self.tenant_max_concurrent_calls,
            calls_per_minute: self.tenant_calls_per_minute,
        }
    }
}

/// The server process: stopping, logging, plugins.
#[derive(Debug, Args)]
#[command(next_help_heading = "Process")]
pub struct ProcessArgs {
    /// On SIGINT/SIGTERM, how long calls in flight may take to finish, in seconds.
    #[arg(long, env = "MCP_V8_SHUTDOWN_GRACE", value_name = "SECS", default_value_t = 10.0,
          value_parser = parse_seconds)]
    pub shutdown_grace: f64,

    /// How log lines look on stderr: `text` for people, `json` (one object per line) for log
    /// shippers. `RUST_LOG` sets the level.
    #[arg(
        long,
        env = "MCP_V8_LOG_FORMAT",
        value_name = "FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Print where the bundled storage plugins are looked for and what is found there (with
    /// their versions), then exit.
    #[arg(long)]
    pub list_plugins: bool,
}

impl StoreArgs {
    /// Where heaps should live, from the flags and, if they do not say, the configuration.
    pub fn choice(&self) -> Result<StorageChoice, StartError> {
        // Checked here rather than by clap, which would count MCP_V8_MEMORY=0 as given.
        let chosen: Vec<&str> = [
            (self.memory, "--memory"),
            (self.stateless, "--stateless"),
            (self.directory_path.is_some(), "--directory-path"),
            (self.s3_bucket.is_some(), "--s3-bucket"),
        ]
        .into_iter()
        .filter_map(|(given, flag)| given.then_some(flag))
        .collect();
        if chosen.len() > 1 {
            return Err(StartError::Config(format!(
                "{} cannot be used together: choose one store",
                chosen.join(" and ")
            )));
        }
        if self.memory || self.stateless {
            if let Some(config) = &self.config {
                tracing::warn!(
                    config = %config.display(),
                    "--{} given: the configuration file is not used",
                    if self.memory { "memory" } else { "stateless" }
                );
            }
            return Ok(StorageChoice::Memory { warn: false });
        }
        if let Some(bucket) = &self.s3_bucket {
            return Ok(StorageChoice::S3Bucket {
                bucket: bucket.clone(),
                plugin_dir: self.plugin_dir.clone(),
            });
        }
        if let Some(directory) = &self.directory_path {
            return Ok(StorageChoice::Directory {
                directory: directory.clone(),
                plugin_dir: self.plugin_dir.clone(),
            });
        }
        Ok(
            match Config::discover(self.config.as_deref()).map_err(StartError::Config)? {
                Some(config) => StorageChoice::Configured(config),
                None => StorageChoice::Memory { warn: true },
            },
        )
    }

    /// What the server offers: heaps, or a fresh isolate per call.
    pub fn mode(&self) -> Mode {
        if self.stateless {
            Mode::Stateless
        } else {
            Mode::Heaps
        }
    }

    /// The storage plugin time limit.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.storage_timeout)
    }
}

impl MemoryStoreArgs {
    /// The memory store's bounds and dump.
    pub fn settings(&self) -> MemorySettings {
        MemorySettings {
            options: MemoryOptions {
                max_bytes: self.memory_max_bytes,
                ttl: self.memory_ttl,
            },
            dump: self.memory_dump.clone(),
        }
    }
}

impl DurabilityArgs {
    /// How the runtime stores heaps, snapshots compressed with `compression`.
    pub fn policy(&self, compression: Codec) -> StoragePolicy {
        StoragePolicy {
            save: self.save,
            conflict_retries: self.conflict_retries,
            compression,
            checkpoints: Checkpoints {
                calls: self.checkpoint_calls,
                bytes: self.checkpoint_bytes,
                run_time: Duration::from_secs_f64(self.checkpoint_run_secs),
                idle: Duration::from_secs_f64(self.checkpoint_idle_secs),
            },
        }
    }
}

impl LimitsArgs {
    /// The limits every call runs under (calls may tighten them).
    pub fn limits(&self) -> Limits {
        Limits {
            timeout: Duration::from_secs_f64(self.execution_timeout),
            heap_bytes: (self.heap_memory_max as usize) << 20,
            console_bytes: self.console_max_bytes,
            output_bytes: self.max_output_bytes,
            answer_bytes: match self.max_output_tokens {
                0 => usize::MAX,
                tokens => tokens.saturating_mul(BYTES_PER_TOKEN),
            },
        }
    }

    /// What each worker is told: its warm-heap budget and the server's limits.
    pub fn worker_settings(&self) -> WorkerSettings {
        WorkerSettings {
            warm_bytes: usize::try_from(self.warm_heaps_max_bytes).unwrap_or(usize::MAX),
            limits: self.limits(),
        }
    }

    /// The worker pool size: the flag, or the number of CPUs.
    pub fn workers(&self) -> usize {
        self.max_concurrent_executions
            .map(usize::from)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl TransportArgs {
    /// The HTTP transports' options, or `None` to serve stdio.
    pub fn http_options(&self, log_format: LogFormat) -> Option<HttpOptions> {
        if self.http_port.is_none() && self.sse_port.is_none() {
            return None;
        }
        let (hosts, origins) = AccessPolicy::defaults(&self.host);
        Some(HttpOptions {
            host: self.host.clone(),
            http_port: self.http_port,
            sse_port: self.sse_port,
            policy: AccessPolicy {
                allowed_hosts: self.allowed_hosts.clone().unwrap_or(hosts),
                allowed_origins: self.allowed_origins.clone().unwrap_or(origins),
                token: self.auth_token.clone().filter(|t| !t.is_empty()),
                oauth: None,
                max_body_bytes: self.max_body_bytes,
                sessions: Default::default(),
            },
            max_body_bytes: self.max_body_bytes,
            json_logs: log_format == LogFormat::Json,
            events: Retention {
                time: self.event_retention,
                bytes: usize::try_from(self.event_max_bytes).unwrap_or(usize::MAX),
            },
        })
    }
}

impl ProcessArgs {
    /// The shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_grace)
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// A size in bytes: plain (`1048576`) or with a unit (`512KB`, `512KiB`, `256MiB`, `2GB`,
/// `1GiB`; decimal units are powers of 1000, binary ones of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 512MiB, 2GB or a number of bytes)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "'{other}' is not a size unit (use B, KB, KiB, MB, MiB, GB, GiB)"
            ))
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// A duration: a number with a unit (`500ms`, `90s`, `30m`, `2h`, `1d`), or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 90s, 30m or 2h)"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" => 0.001,
        "" | "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        other => {
            return Err(format!(
                "'{other}' is not a duration unit (use ms, s, m, h or d)"
            ))
        }
    };
    let secs = number * scale;
    if secs > 0.0 && secs <= 3.2e9 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!("'{s}' is out of range: give more than 0"))
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if secs > 0.0 && secs <= 86_400.0 {
        Ok(secs)
    } else {
        Err(format!(
            "{s} is out of range: give more than 0 and at most 86400 seconds"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// docs/cli.md lists every flag, in its `--help` section, with its variable; and nothing else.
    /// A hidden flag is in neither (docs/testing.md has the one there is).
    #[test]
    fn the_command_line_page_matches_the_definition() {
        let mut defined = std::collections::BTreeSet::new();
        for arg in Cli::command()
            .get_arguments()
            .filter(|arg| !arg.is_hide_set())
        {
            let (Some(long), Some(heading)) = (arg.get_long(), arg.get_help_heading()) else {
                continue;
            };
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            defined.insert((heading.to_string(), long.to_string(), env));
        }
        let mut documented = std::collections::BTreeSet::new();
        let mut heading = String::new();
        for line in include_str!("../../docs/cli.md").lines() {
            if let Some(title) = line.strip_prefix("## ") {
                heading = title.to_string();
            }
            // A flag's row: | `--flag VALUE` | `MCP_V8_FLAG` (or more) | default | meaning |
            let Some(row) = line.strip_prefix("| `--") else {
                continue;
            };
            let cells: Vec<&str> = row.split(" | ").collect();
            let flag = cells[0].split([' ', '`']).next().unwrap_or_default();
            let env = cells
                .get(1)
                .and_then(|cell| cell.strip_prefix('`'))
                .and_then(|cell| cell.split(['`', '=']).next())
                .map(str::to_string);
            documented.insert((heading.clone(), flag.to_string(), env));
        }
        assert_eq!(documented, defined);
    }

    #[test]
    fn flags_parse() {
        let cli =
            Cli::try_parse_from(["mcp-v8", "--memory", "--execution-timeout", "2.5"]).unwrap();
        assert!(cli.store.memory);
        assert_eq!(cli.limits.limits().timeout, Duration::from_millis(2500));
        let both = Cli::try_parse_from(["mcp-v8", "--memory", "--stateless"]).unwrap();
        let err = both.store.choice().unwrap_err().to_string();
        assert_eq!(
            err,
            "--memory and --stateless cannot be used together: choose one store"
        );
        assert!(Cli::try_parse_from(["mcp-v8", "--execution-timeout", "0"]).is_err());
    }

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1 gib"), Ok(1 << 30));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999TB").is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3 fortnights").is_err());
        let cli = Cli::try_parse_from(["mcp-v8", "--memory-dump-interval", "5m"]);
        assert!(cli.is_err(), "an interval without a dump was accepted");
    }

    #[test]
    fn snapshots_are_stored_after_the_answer_unless_the_flag_says_before() {
        let cli = Cli::try_parse_from(["mcp-v8", "--memory"]).unwrap();
        assert_eq!(cli.durability.save, SaveMode::Background);
        let cli = Cli::try_parse_from(["mcp-v8", "--memory", "--save", "sync"]).unwrap();
        assert_eq!(cli.durability.save, SaveMode::Sync);
    }
}
