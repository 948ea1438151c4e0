//! Chooses and opens the heap store from the command line and `plugins.toml`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{loader, Dump, MemoryOptions, MemoryStore, Store};
use crate::config::Config;
use crate::start::StartError;

/// The file plugin's library name on this platform.
pub const FILE_PLUGIN_LIBRARY: &str = "libmcp_v8_file_storage.so";
/// The S3 plugin's library name on this platform.
pub const S3_PLUGIN_LIBRARY: &str = "libmcp_v8_s3_storage.so";

/// Where heaps should live.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageChoice {
    /// The built-in memory store; `warn` when nobody asked for it explicitly.
    Memory {
        /// Nobody asked for it explicitly: say that heaps will not survive a restart.
        warn: bool,
    },
    /// The file plugin, on a directory, from a library found by [`find_plugin`].
    Directory {
        /// Where the heaps are kept.
        directory: PathBuf,
        /// Where to find the plugin library (`--plugin-dir`).
        plugin_dir: Option<PathBuf>,
    },
    /// The S3 plugin, on a bucket (the rest from the standard AWS environment variables).
    S3Bucket {
        /// The bucket.
        bucket: String,
        /// Where to find the plugin library (`--plugin-dir`).
        plugin_dir: Option<PathBuf>,
    },
    /// What a configuration file says.
    Configured(Config),
}

/// How the memory store is bounded and where it dumps, when it is the store chosen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemorySettings {
    /// Size limit and TTL.
    pub options: MemoryOptions,
    /// The dump file (`--memory-dump`).
    pub dump: Option<PathBuf>,
}

/// An opened store, and its dump when it is a memory store that has one.
#[derive(Debug)]
pub struct Opened {
    /// The store.
    pub storage: Store,
    /// The memory store's dump, already loaded.
    pub dump: Option<Arc<Dump>>,
}

/// Opens a memory store as `memory` says: loads its dump and starts its sweeper.
fn open_memory(memory: &MemorySettings) -> Result<Opened, StartError> {
    let store = MemoryStore::with_options(memory.options);
    store.spawn_sweeper();
    let dump = match &memory.dump {
        Some(path) => {
            let dump = Dump::new(store.clone(), path.clone());
            dump.load().map_err(StartError::Dump)?;
            Some(Arc::new(dump))
        }
        None => None,
    };
    Ok(Opened {
        storage: Store::memory(store),
        dump,
    })
}

/// Opens the chosen store; plugin calls time out after `storage_timeout`. Plugins are first
/// checked by a child process of this executable ([`loader::load_checked`]). Errors are one
/// line, meant for stderr at start-up. Needs a tokio runtime (the memory store's sweeper).
pub fn open(
    choice: &StorageChoice,
    storage_timeout: Duration,
    memory: &MemorySettings,
) -> Result<Opened, StartError> {
    let (name, library, config) = match choice {
        StorageChoice::Memory { warn } => {
            if *warn && memory.dump.is_none() {
                tracing::warn!(
                    "no storage configured: heaps are kept in memory and will not survive a restart"
                );
            }
            return open_memory(memory);
        }
        StorageChoice::Directory {
            directory,
            plugin_dir,
        } => (
            "file",
            find_plugin(FILE_PLUGIN_LIBRARY, plugin_dir.as_deref())?,
            serde_json::json!({ "directory": directory }),
        ),
        StorageChoice::S3Bucket { bucket, plugin_dir } => (
            "s3",
            find_plugin(S3_PLUGIN_LIBRARY, plugin_dir.as_deref())?,
            serde_json::json!({ "bucket": bucket }),
        ),
        StorageChoice::Configured(config) => {
            if config.storage == "memory" {
                return open_memory(memory);
            }
            let entry = config.plugins.get(&config.storage).ok_or_else(|| {
                StartError::Config(format!(
                    "{}: no plugin named '{}'",
                    config.source.display(),
                    config.storage
                ))
            })?;
            (
                config.storage.as_str(),
                entry.path.clone(),
                entry.config.clone(),
            )
        }
    };
    let program = std::env::current_exe().map_err(StartError::Executable)?;
    if *memory != MemorySettings::default() {
        return Err(StartError::Config(format!(
            "--memory-max-bytes, --memory-ttl and --memory-dump apply to the memory store, not \
             to the {name} store chosen here"
        )));
    }
    let store = loader::load_checked(&program, name, &library, &config)?;
    Ok(Opened {
        storage: Store::blocking(Arc::new(store), storage_timeout),
        dump: None,
    })
}

/// The folders searched for the bundled plugins, in order: `plugin_dir` alone when given;
/// otherwise next to the running binary, the `lib/mcp-v8/plugins` folder of the prefix it is
/// installed in (`PREFIX/bin/mcp-v8` finds `PREFIX/lib/mcp-v8/plugins`),
/// `$XDG_DATA_HOME/mcp-v8/plugins` (`~/.local/share/mcp-v8/plugins`), and
/// `/usr/local/lib/mcp-v8/plugins`.
pub fn plugin_dirs(plugin_dir: Option<&Path>) -> Vec<PathBuf> {
    if let Some(dir) = plugin_dir {
        return vec![dir.to_path_buf()];
    }
    let mut dirs = Vec::new();
    if let Some(bin) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        dirs.push(bin.clone());
        if let Some(prefix) = bin.parent() {
            dirs.push(prefix.join("lib/mcp-v8/plugins"));
        }
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")));
    if let Some(data) = data {
        dirs.push(data.join("mcp-v8/plugins"));
    }
    dirs.push(PathBuf::from("/usr/local/lib/mcp-v8/plugins"));
    dirs
}

/// A bundled plugin library, from the first of [`plugin_dirs`] that has it.
pub fn find_plugin(library: &str, plugin_dir: Option<&Path>) -> Result<PathBuf, StartError> {
    let dirs = plugin_dirs(plugin_dir);
    if let Some(found) = dirs
        .iter()
        .map(|dir| dir.join(library))
        .find(|p| p.is_file())
    {
        return Ok(found);
    }
    match (plugin_dir, dirs.as_slice()) {
        (Some(_), [dir]) => Err(StartError::PluginNotFound(format!(
            "the storage plugin {} does not exist: build it (cargo build --release) or pass \
             another --plugin-dir",
            dir.join(library).display()
        ))),
        _ => Err(StartError::PluginNotFound(format!(
            "the storage plugin {library} is in none of {}: install it (./install.sh) or pass \
             --plugin-dir (mcp-v8 --list-plugins shows what is where)",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// What `mcp-v8 --list-plugins` prints: every folder searched, and the bundled plugins found
/// there with the name and version each declares (or why it cannot be loaded).
pub fn list_plugins(plugin_dir: Option<&Path>) -> String {
    let program = std::env::current_exe().ok();
    let mut out = String::from("Bundled storage plugins are looked for in, in order:\n");
    for dir in plugin_dirs(plugin_dir) {
        out.push_str(&format!("  {}\n", dir.display()));
        for library in [FILE_PLUGIN_LIBRARY, S3_PLUGIN_LIBRARY] {
            let path = dir.join(library);
            if !path.is_file() {
                continue;
            }
            let found = match &program {
                Some(program) => match loader::identify(program, &path) {
                    Ok((name, version)) => format!("{name} {version}"),
                    Err(why) => format!("cannot be loaded: {why}"),
                },
                None => "cannot be checked: the mcp-v8 executable is not found".into(),
            };
            out.push_str(&format!("    {library}: {found}\n"));
        }
    }
    out
}
