//! Host calls: what code in the sandbox asks of the host while it runs — an upstream MCP
//! server's tool (`tools.server.tool(args)`), or the catalogue of those tools
//! (`tools.$search`, `tools.$describe`) — and the host's reply.
//!
//! The engine starts a host call and goes on running the code; the reply settles the call's
//! promise later. Replies are inputs from outside the heap, so they go on the run's tape
//! ([`crate::engine::Tape`]): a replay of the call settles the same promises with the same
//! replies in the same order, and never asks the host again.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// What the code asks the host for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostCall {
    /// Call `tool` of upstream server `server` with `arguments` (a JSON object, as text).
    Tool {
        /// The server's name in the MCP configuration.
        server: String,
        /// The tool's name, as the server lists it.
        tool: String,
        /// The arguments, as JSON text.
        arguments: String,
    },
    /// TypeScript declarations of the upstream tools that match `query` (all for an empty
    /// one).
    Search {
        /// Words to look for in a tool's server, name and description.
        query: String,
    },
    /// The TypeScript declaration of one tool, named `server.tool`.
    Describe {
        /// `server.tool`.
        name: String,
    },
}

impl HostCall {
    /// A number that stands for the call, so that a replay can tell whether its code asked
    /// for the same thing as the call it replays.
    pub fn fingerprint(&self) -> u64 {
        let mut hash = xxhash_rust::xxh3::Xxh3::new();
        let mut part = |bytes: &[u8]| {
            hash.update(&(bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        };
        match self {
            HostCall::Tool {
                server,
                tool,
                arguments,
            } => {
                part(b"tool");
                part(server.as_bytes());
                part(tool.as_bytes());
                part(arguments.as_bytes());
            }
            HostCall::Search { query } => {
                part(b"search");
                part(query.as_bytes());
            }
            HostCall::Describe { name } => {
                part(b"describe");
                part(name.as_bytes());
            }
        }
        hash.digest()
    }
}

/// The host's reply to a [`HostCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostReply {
    /// The answer, as JSON text: a tool's `CallToolResult` (also one that reports an error
    /// with `isError`), or the declarations asked for (a JSON string).
    Answer(String),
    /// The call could not be made or did not finish.
    Failed(HostError),
}

impl HostReply {
    /// Bytes the reply takes on a tape.
    pub fn size(&self) -> usize {
        match self {
            HostReply::Answer(text) => text.len(),
            HostReply::Failed(error) => error.message.len(),
        }
    }
}

/// Why a host call failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostError {
    /// What kind of failure, for code to act on: see [`HostErrorKind`].
    pub kind: HostErrorKind,
    /// What happened, for a person.
    pub message: String,
}

/// What kind of failure a host call met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostErrorKind {
    /// The policy refuses it (a denied or destructive tool, a limit of calls).
    Denied,
    /// No such server or tool.
    NotFound,
    /// The server could not be reached, or its connection broke.
    Unavailable,
    /// It took longer than the per-call timeout.
    Timeout,
    /// Its result is larger than allowed.
    TooLarge,
    /// The server answered the call with a protocol error (bad arguments, say).
    Protocol,
}

impl HostErrorKind {
    /// The kind as the code sees it (`ToolError.kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            HostErrorKind::Denied => "denied",
            HostErrorKind::NotFound => "not_found",
            HostErrorKind::Unavailable => "unavailable",
            HostErrorKind::Timeout => "timeout",
            HostErrorKind::TooLarge => "too_large",
            HostErrorKind::Protocol => "protocol",
        }
    }
}

impl HostError {
    /// A failure of `kind`, saying `message`.
    pub fn new(kind: HostErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// A reply on its way.
pub type PendingReply = Pin<Box<dyn Future<Output = HostReply> + Send>>;

/// Who answers one run's host calls (in the host: the upstream servers under the run's
/// policy). One per run, so it can count the run's calls.
pub trait HostCalls: Send + Sync + std::fmt::Debug {
    /// Makes `call`; the future resolves to its reply. Dropping it abandons the call.
    fn call(&self, call: HostCall) -> PendingReply;
}
