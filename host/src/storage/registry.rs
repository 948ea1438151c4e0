//! Chooses and opens the heap store from the command line and `plugins.toml`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{loader, HeapStorage, MemoryStore};
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

/// Opens the chosen store; plugin calls time out after `storage_timeout`. Plugins are first
/// checked by a child process of this executable ([`loader::load_checked`]). Errors are one
/// line, meant for stderr at start-up.
pub fn open(
    choice: &StorageChoice,
    storage_timeout: Duration,
) -> Result<Arc<dyn HeapStorage>, String> {
    let (name, library, config) = match choice {
        StorageChoice::Memory { warn } => {
            if *warn {
                tracing::warn!(
                    "no storage configured: heaps are kept in memory and will not survive a restart"
                );
            }
            return Ok(Arc::new(MemoryStore::new()));
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
                return Ok(Arc::new(MemoryStore::new()));
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
    let store = loader::load_checked(&program, name, &library, &config)?;
    Ok(Arc::new(store.with_timeout(storage_timeout)))
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
