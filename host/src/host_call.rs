//! Host calls: what code in the sandbox asks of the host while it runs — an upstream MCP
//! server's tool (`tools.server.tool(args)`), the catalogue of those tools
//! (`tools.$search`, `tools.$describe`), or an HTTP request (`fetch`) — and the host's reply.
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
    /// An HTTP request (`fetch`), made by the host under its egress policy.
    Fetch(FetchRequest),
}

/// An HTTP request as code made it: secrets still as their placeholders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The absolute URL, as the WHATWG URL parser wrote it.
    pub url: String,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// What to do with a redirect.
    pub redirect: Redirect,
    /// The body (the worker protocol carries it as a section, not in the header).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub body: Vec<u8>,
}

/// `RequestInit.redirect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Redirect {
    /// Follow redirects, checking each hop against the policy.
    Follow,
    /// Fail on a redirect.
    Error,
    /// Answer the redirect itself.
    Manual,
}

/// An HTTP response as code sees it: secrets' values replaced by their placeholders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResponse {
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub status_text: String,
    /// The URL of the last hop.
    pub url: String,
    /// Whether a redirect was followed.
    pub redirected: bool,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (base64 on a tape; a section in the worker protocol).
    #[serde(default, with = "base64_bytes")]
    pub body: Vec<u8>,
}

/// Bytes as base64 text in JSON (a tape is JSON; numbers would take four times the room).
mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
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
            HostCall::Fetch(request) => {
                part(b"fetch");
                part(request.method.as_bytes());
                part(request.url.as_bytes());
                for (name, value) in &request.headers {
                    part(name.as_bytes());
                    part(value.as_bytes());
                }
                part(&[request.redirect as u8]);
                part(&request.body);
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
    /// An HTTP response.
    Response(FetchResponse),
    /// The call could not be made or did not finish.
    Failed(HostError),
}

impl HostReply {
    /// Bytes the reply takes on a tape (as JSON, the tape's format).
    pub fn size(&self) -> usize {
        serde_json::to_vec(self).map_or(usize::MAX, |json| json.len())
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
    /// The request is not one that can be made (a bad URL, method or header).
    Invalid,
    /// A person asked about the call said no, dismissed the question, or did not answer in
    /// time ([`crate::approval`]).
    Declined,
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
            HostErrorKind::Invalid => "invalid",
            HostErrorKind::Declined => "declined",
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

/// What a run has been told of the time its host calls waited for a person
/// ([`HostCalls::paused`]), so that it is told only what is new.
#[derive(Debug, Default)]
pub struct PauseReports(std::time::Duration);

impl PauseReports {
    /// The time `host` waited for a person since the last report.
    pub fn newly(&mut self, host: Option<&dyn HostCalls>) -> std::time::Duration {
        let paused = host.map_or(std::time::Duration::ZERO, |host| host.paused());
        let newly = paused.saturating_sub(self.0);
        self.0 = paused;
        newly
    }
}

/// A reply on its way.
pub type PendingReply = Pin<Box<dyn Future<Output = HostReply> + Send>>;

/// Who answers one run's host calls (in the host: the upstream servers under the run's
/// policy). One per run, so it can count the run's calls.
pub trait HostCalls: Send + Sync + std::fmt::Debug {
    /// Makes `call`; the future resolves to its reply. Dropping it abandons the call.
    fn call(&self, call: HostCall) -> PendingReply;

    /// How long the run's calls have waited for a person so far ([`crate::approval`]): time
    /// that does not count against the run's time limit.
    fn paused(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}
