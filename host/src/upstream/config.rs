//! The upstream servers' configuration: the `mcpServers` JSON that Claude Desktop, Cursor and
//! Claude Code read, so a user can point mcp-v8 at the file they have.
//!
//! ```json
//! { "mcpServers": {
//!     "github": { "command": "npx", "args": ["-y", "@example/github-mcp"],
//!                 "env": { "GITHUB_TOKEN": "${GITHUB_TOKEN}" } },
//!     "docs":   { "url": "https://docs.example.com/mcp",
//!                 "headers": { "Authorization": "Bearer ${DOCS_TOKEN}" } } } }
//! ```
//!
//! `${VAR}` and `${VAR:-default}` in a command, its arguments, environment and folder, a URL
//! and header values are read from the server's own environment when the file is loaded; the
//! code in the sandbox never sees them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Its name: `tools.<name>` in JavaScript.
    pub name: String,
    /// How to reach it.
    pub transport: Transport,
}

/// How an upstream server is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// A process started by mcp-v8, speaking MCP on its stdin and stdout.
    Stdio {
        /// The program.
        command: String,
        /// Its arguments.
        args: Vec<String>,
        /// Variables added to its environment.
        env: BTreeMap<String, String>,
        /// Its working directory, if not mcp-v8's.
        cwd: Option<PathBuf>,
    },
    /// A Streamable HTTP endpoint.
    Http {
        /// The endpoint's URL.
        url: String,
        /// Headers sent with every request.
        headers: BTreeMap<String, String>,
    },
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(rename = "mcpServers")]
    servers: BTreeMap<String, RawServer>,
}

/// An entry as the clients write it; keys mcp-v8 does not use are ignored, as they do.
#[derive(Deserialize)]
struct RawServer {
    #[serde(rename = "type")]
    kind: Option<String>,
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    disabled: bool,
}

/// Reads the servers of the `mcpServers` file at `path`, expanding `${VAR}` from the
/// environment.
pub fn load(path: &Path) -> Result<Vec<ServerConfig>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the MCP configuration {}: {e}", path.display()))?;
    parse(&text, &|name| std::env::var(name).ok()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses an `mcpServers` file, looking variables up with `var`.
pub fn parse(
    text: &str,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<ServerConfig>, String> {
    let raw: RawFile =
        serde_json::from_str(text).map_err(|e| format!("not an mcpServers configuration: {e}"))?;
    let mut servers = Vec::new();
    for (name, entry) in raw.servers {
        if entry.disabled {
            continue;
        }
        if name.is_empty() {
            return Err("a server has an empty name".into());
        }
        let expand = |what: &str, text: &str| {
            expand(text, var).map_err(|e| format!("server \"{name}\", {what}: {e}"))
        };
        let kind = entry.kind.as_deref().map(str::to_ascii_lowercase);
        let transport = match (kind.as_deref(), entry.command, entry.url) {
            (Some("sse"), _, _) => {
                return Err(format!(
                    "server \"{name}\": the legacy HTTP+SSE transport is not supported; use its \
                     Streamable HTTP endpoint (\"type\": \"http\")"
                ))
            }
            (None | Some("stdio"), Some(command), None) => Transport::Stdio {
                command: expand("command", &command)?,
                args: entry
                    .args
                    .iter()
                    .map(|a| expand("args", a))
                    .collect::<Result<_, _>>()?,
                env: entry
                    .env
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), expand(&format!("env.{k}"), v)?)))
                    .collect::<Result<_, String>>()?,
                cwd: match entry.cwd {
                    Some(cwd) => Some(PathBuf::from(expand("cwd", &cwd.to_string_lossy())?)),
                    None => None,
                },
            },
            (None | Some("http" | "streamable-http" | "streamablehttp"), None, Some(url)) => {
                Transport::Http {
                    url: expand("url", &url)?,
                    headers: entry
                        .headers
                        .iter()
                        .map(|(k, v)| Ok((k.clone(), expand(&format!("headers.{k}"), v)?)))
                        .collect::<Result<_, String>>()?,
                }
            }
            (_, Some(_), Some(_)) => {
                return Err(format!(
                    "server \"{name}\" has both a command and a url; give one"
                ))
            }
            (_, None, None) => {
                return Err(format!(
                    "server \"{name}\" has neither a command (a local server) nor a url"
                ))
            }
            (Some(kind), _, _) => {
                return Err(format!(
                    "server \"{name}\": type \"{kind}\" does not fit its entry (stdio takes a \
                     command, http a url)"
                ))
            }
        };
        servers.push(ServerConfig { name, transport });
    }
    Ok(servers)
}

/// `text` with every `${VAR}` and `${VAR:-default}` replaced.
fn expand(text: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed ${{ in {text:?}"));
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("${{{inner}}} is not a variable name"));
        }
        match (var(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "${{{name}}} is not set in mcp-v8's environment (give a default with ${{{name}:-...}})"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "HOME" => Some("/home/me".into()),
            _ => None,
        }
    }

    #[test]
    fn a_desktop_config_reads_with_variables_expanded() {
        let text = r#"{
          "mcpServers": {
            "github": { "command": "npx", "args": ["-y", "gh-mcp", "${HOME}/x"],
                        "env": { "GITHUB_TOKEN": "${TOKEN}", "LEVEL": "${LEVEL:-info}" } },
            "docs": { "type": "http", "url": "https://docs.example/mcp",
                      "headers": { "Authorization": "Bearer ${TOKEN}" } },
            "off": { "command": "nothing", "disabled": true }
          },
          "globalShortcut": "ignored"
        }"#;
        let servers = parse(text, &vars).unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].name, "docs");
        assert_eq!(
            servers[0].transport,
            Transport::Http {
                url: "https://docs.example/mcp".into(),
                headers: [("Authorization".into(), "Bearer s3cret".into())].into(),
            }
        );
        let Transport::Stdio { args, env, .. } = &servers[1].transport else {
            panic!("stdio expected");
        };
        assert_eq!(args, &["-y", "gh-mcp", "/home/me/x"]);
        assert_eq!(env["GITHUB_TOKEN"], "s3cret");
        assert_eq!(env["LEVEL"], "info");
    }

    #[test]
    fn mistakes_are_named() {
        let bad = |text: &str| parse(text, &vars).unwrap_err();
        assert!(
            bad(r#"{"mcpServers":{"a":{"command":"x","env":{"K":"${MISSING}"}}}}"#)
                .contains("${MISSING} is not set")
        );
        assert!(bad(r#"{"mcpServers":{"a":{}}}"#).contains("neither a command"));
        assert!(
            bad(r#"{"mcpServers":{"a":{"command":"x","url":"http://y"}}}"#)
                .contains("both a command and a url")
        );
        assert!(
            bad(r#"{"mcpServers":{"a":{"type":"sse","url":"http://y"}}}"#)
                .contains("Streamable HTTP")
        );
        assert!(bad(r#"{"mcpServers":{"a":{"command":"${x"}}}"#).contains("unclosed"));
        assert!(bad(r#"{"servers":{}}"#).contains("not an mcpServers configuration"));
    }
}
