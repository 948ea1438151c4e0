//! `plugins.toml`: which store to use, and the storage plugins to load.
//!
//! ```toml
//! storage = "file"                    # "memory" or the name of a plugin below
//! mcp_config = "mcp.json"             # optional: upstream MCP servers for code mode
//! [plugins.file]
//! path = "target/release/libmcp_v8_file_storage.so"   # relative to this file's folder
//! [plugins.file.config]               # handed to the plugin as-is (as JSON)
//! directory = "/var/lib/mcp-v8/heaps"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The configuration file's name, looked for in the working directory and in
/// `$XDG_CONFIG_HOME/mcp-v8/`.
pub const FILE_NAME: &str = "plugins.toml";

/// A parsed configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from.
    pub source: PathBuf,
    /// `"memory"` or the name of one of `plugins`.
    pub storage: String,
    /// Plugins by name.
    pub plugins: BTreeMap<String, PluginEntry>,
    /// The upstream MCP servers for code mode (an `mcpServers` JSON file), resolved against
    /// the configuration file's folder.
    pub mcp_config: Option<PathBuf>,
}

/// One `[plugins.<name>]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginEntry {
    /// The shared library, resolved against the configuration file's folder.
    pub path: PathBuf,
    /// The plugin's own configuration, as a JSON object.
    pub config: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    storage: String,
    #[serde(default)]
    plugins: BTreeMap<String, RawPlugin>,
    #[serde(default)]
    mcp_config: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    path: PathBuf,
    #[serde(default)]
    config: toml::Table,
}

impl Config {
    /// Reads and checks the configuration at `path`.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read configuration {}: {e}", path.display()))?;
        Self::parse(path, &text)
    }

    /// Parses configuration `text` that was read from `source`.
    pub fn parse(source: &Path, text: &str) -> Result<Config, String> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| format!("{}: {}", source.display(), e.to_string().trim_end()))?;
        let base = source.parent().unwrap_or(Path::new("."));
        let plugins = raw
            .plugins
            .into_iter()
            .map(|(name, p)| {
                let config = serde_json::to_value(&p.config).map_err(|e| {
                    format!(
                        "{}: [plugins.{name}.config] cannot be passed on: {e}",
                        source.display()
                    )
                })?;
                let entry = PluginEntry {
                    path: base.join(p.path),
                    config,
                };
                Ok((name, entry))
            })
            .collect::<Result<BTreeMap<_, _>, String>>()?;
        if raw.storage != "memory" && !plugins.contains_key(&raw.storage) {
            let known: Vec<&str> = plugins.keys().map(String::as_str).collect();
            return Err(format!(
                "{}: storage = \"{}\" names no plugin: use \"memory\" or add [plugins.{}] (defined: {})",
                source.display(),
                raw.storage,
                raw.storage,
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ));
        }
        Ok(Config {
            source: source.to_path_buf(),
            storage: raw.storage,
            plugins,
            mcp_config: raw.mcp_config.map(|path| base.join(path)),
        })
    }

    /// Finds the configuration: `explicit` (which must exist), else `./plugins.toml`, else
    /// `$XDG_CONFIG_HOME/mcp-v8/plugins.toml` (`~/.config` when unset). `None` if there is none.
    pub fn discover(explicit: Option<&Path>) -> Result<Option<Config>, String> {
        if let Some(path) = explicit {
            return Self::load(path).map(Some);
        }
        let xdg = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
        let candidates = std::iter::once(PathBuf::from(FILE_NAME))
            .chain(xdg.map(|dir| dir.join("mcp-v8").join(FILE_NAME)));
        for candidate in candidates {
            if candidate.is_file() {
                return Self::load(&candidate).map(Some);
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/mcp-v8/plugins.toml"), text)
    }

    #[test]
    fn reads_plugins_relative_to_the_file() {
        let config = parse(
            r#"
            storage = "file"
            [plugins.file]
            path = "lib/libfile.so"
            [plugins.file.config]
            directory = "/var/heaps"
            fsync = true
            "#,
        )
        .unwrap();
        assert_eq!(config.storage, "file");
        let file = &config.plugins["file"];
        assert_eq!(file.path, Path::new("/etc/mcp-v8/lib/libfile.so"));
        assert_eq!(
            file.config,
            serde_json::json!({ "directory": "/var/heaps", "fsync": true })
        );
        let absolute = parse("storage = \"x\"\n[plugins.x]\npath = \"/opt/x.so\"\n").unwrap();
        assert_eq!(absolute.plugins["x"].path, Path::new("/opt/x.so"));
        assert_eq!(absolute.plugins["x"].config, serde_json::json!({}));
        assert_eq!(absolute.mcp_config, None);
        let tools = parse("storage = \"memory\"\nmcp_config = \"mcp.json\"\n").unwrap();
        assert_eq!(
            tools.mcp_config.as_deref(),
            Some(Path::new("/etc/mcp-v8/mcp.json"))
        );
    }

    #[test]
    fn unknown_keys_name_file_line_and_key() {
        let err = parse("storage = \"memory\"\n\n[plugins.file]\npath = \"x.so\"\npaht = \"y\"\n")
            .unwrap_err();
        assert!(err.starts_with("/etc/mcp-v8/plugins.toml: "), "{err}");
        assert!(err.contains("line 5"), "{err}");
        assert!(err.contains("unknown field `paht`"), "{err}");
    }

    #[test]
    fn type_errors_name_the_line() {
        let err = parse("storage = 3\n").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        assert!(err.contains("invalid type"), "{err}");
        let err = parse("storage = \"memory\"\n[plugins.file]\npath = 5\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn storage_must_name_a_plugin() {
        let err = parse("storage = \"s3\"\n[plugins.file]\npath = \"f.so\"\n").unwrap_err();
        assert!(err.contains("storage = \"s3\" names no plugin"), "{err}");
        assert!(err.contains("defined: file"), "{err}");
        assert!(parse("storage = \"memory\"\n").is_ok());
        let err = parse("").unwrap_err();
        assert!(err.contains("missing field `storage`"), "{err}");
    }
}
