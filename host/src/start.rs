//! Why the server could not start, or could not stop cleanly: one error type for every
//! start-up and shutdown path, each variant printed as the one line a user acts on.

use std::path::PathBuf;

/// What stopped the server from starting (or from stopping cleanly).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The command line or `plugins.toml` asks for something this server cannot do.
    #[error("{0}")]
    Config(String),
    /// A bundled storage plugin is in none of the folders searched.
    #[error("{0}")]
    PluginNotFound(String),
    /// A storage plugin could not be checked, loaded or opened.
    #[error("storage plugin '{name}' ({}): {why}", path.display())]
    Plugin {
        /// The plugin's name in the configuration.
        name: String,
        /// The library.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The memory store's dump could not be read or written.
    #[error("{0}")]
    Dump(String),
    /// This executable cannot be found (workers and plugin checks run it).
    #[error("cannot find the mcp-v8 executable: {0}")]
    Executable(std::io::Error),
    /// A port could not be bound.
    #[error("cannot listen on {address} for {transport}: {source}")]
    Listen {
        /// `host:port`.
        address: String,
        /// Which transport wanted it.
        transport: &'static str,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Serving failed: the stdio handshake, the MCP service, or the async runtime.
    #[error("{0}")]
    Serve(String),
    /// A clean stop could not store every snapshot in time; every answered call is in its
    /// heap's journal all the same.
    #[error("stopped before every snapshot was stored (the calls are in their journals)")]
    Unflushed,
}

impl StartError {
    /// A plugin error about the library at `path`, named `name` in the configuration.
    pub fn plugin(name: &str, path: impl Into<PathBuf>) -> impl FnOnce(String) -> Self {
        let (name, path) = (name.to_string(), path.into());
        move |why| StartError::Plugin { name, path, why }
    }
}
