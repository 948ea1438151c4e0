//! The end-to-end tests: the real `mcp-v8` binary and the real plugins, driven as an MCP client
//! would drive them. One binary, a module per subject; `cargo test -p mcp-v8-e2e --test e2e
//! MODULE::` runs one subject.

mod approvals;
mod browser;
mod code_mode;
mod compression;
mod conformance;
mod contract;
mod docs;
mod fetch;
mod forks;
mod hostile_plugins;
mod http;
mod inspector;
mod journal;
mod load_balancer;
mod long_runs;
mod memory_store;
mod plugins;
mod repl;
mod resume;
mod runtime;
mod s3;
mod schemas;
mod stdio;
mod tasks;
mod tenants;
mod warm;
mod workers;
