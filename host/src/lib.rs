//! mcp-v8: a JavaScript runtime with memory, served over MCP.
//!
//! * [`frontend`] reads a call's code (JavaScript or TypeScript) before V8 compiles it;
//! * [`engine`] runs code in V8 and snapshots heaps;
//! * [`job`] is one execution and how it ended; [`executor`] decides where jobs run:
//!   [`worker`] processes or this process;
//! * [`envelope`] wraps and verifies stored snapshots;
//! * [`storage`] is where heaps live (built-in memory store, plugins);
//! * [`runtime`] ties them together for one call;
//! * [`host_call`] is what code asks of the host while it runs, and [`upstream`] answers it
//!   with the tools of other MCP servers (code mode); [`approval`] asks a person first when
//!   the policy says so;
//! * [`server`] exposes the runtime as MCP tools and resources, [`transport`] serves it;
//! * [`cli`] parses the command line, [`config`] reads `plugins.toml`.

pub mod approval;
pub mod cli;
pub mod config;
pub mod engine;
pub mod envelope;
pub mod executor;
pub mod frontend;
#[cfg(fuzzing)]
pub mod fuzz;
pub mod host_call;
pub mod in_flight;
pub mod job;
pub mod metrics;
pub mod net;
pub mod outputs;
pub mod record;
pub mod report;
pub mod runtime;
pub mod schema;
pub mod server;
pub mod start;
pub mod storage;
pub mod transport;
pub mod upstream;
pub mod worker;
