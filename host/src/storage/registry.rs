//! Chooses and opens the heap store from the command line and `plugins.toml`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{loader, Dump, MemoryOptions, MemoryStore, Store};
use crate::config::Config;

/// The file plugin's library name on this platform.
pub const FILE_PLUGIN_LIBRARY: &str = "libmcp_v8_file_storage.so";
/// The S3 plugin's library name on this platform.
pub const S3_PLUGIN_LIBRARY: &str = "libmcp_v8_s3_storage.so";

/// Where heaps should live.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageChoice {
    /// The built-in memory store; `warn` when nobody asked for it explicitly.
    Memory { warn: bool },
    /// The file plugin, on a directory, from a library found by [`find_plugin`].
    Directory {
        directory: PathBuf,
        plugin_dir: Option<PathBuf>,
    },
    /// The S3 plugin, on a bucket (the rest from the standard AWS environment variables).
    S3Bucket {
        bucket: String,
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
pub struct Opened {
    /// The store.
    pub storage: Store,
    /// The memory store's dump, already loaded.
    pub dump: Option<Arc<Dump>>,
}

/// Opens a memory store as `memory` says: loads its dump and starts its sweeper.
fn open_memory(memory: &MemorySettings) -> Result<Opened, String> {
    let store = MemoryStore::with_options(memory.options);
    store.spawn_sweeper();
    let dump = match &memory.dump {
        Some(path) => {
            let dump = Dump::new(store.clone(), path.clone());
            dump.load()?;
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
) -> Result<Opened, String> {
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
                format!(
                    "{}: no plugin named '{}'",
                    config.source.display(),
                    config.storage
                )
            })?;
            (
                config.storage.as_str(),
                entry.path.clone(),
                entry.config.clone(),
            )
        }
    };
    let program =
        std::env::current_exe().map_err(|e| format!("cannot find the mcp-v8 executable: {e}"))?;
    if *memory != MemorySettings::default() {
        return Err(format!(
            "--memory-max-bytes, --memory-ttl and --memory-dump apply to the memory store, not \
             to the {name} store chosen here"
        ));
    }
    let store = loader::load_checked(&program, name, &library, &config)?;
    Ok(Opened {
        storage: Store::blocking(Arc::new(store), storage_timeout),
        dump: None,
    })
}

/// A bundled plugin library: in `plugin_dir` when given, else next to the running binary.
pub fn find_plugin(library: &str, plugin_dir: Option<&Path>) -> Result<PathBuf, String> {
    let dir = match plugin_dir {
        Some(dir) => dir.to_path_buf(),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .ok_or("cannot tell where the mcp-v8 binary is; pass --plugin-dir")?,
    };
    let path = dir.join(library);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "the storage plugin {} does not exist: build it (cargo build --release) or pass \
             --plugin-dir",
            path.display()
        ))
    }
}
