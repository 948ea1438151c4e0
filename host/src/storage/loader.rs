//! Loads storage plugins: shared libraries exporting an mcp-v8 root module.
//!
//! Every failure is one line naming the library and the cause.

use std::path::Path;

use abi_stable::library::{
    lib_header_from_path, LibHeader, LibraryError, RootModule, ROOT_MODULE_LOADER_NAME_WITH_NUL,
};
use abi_stable::sabi_types::VersionNumber;
use abi_stable::std_types::{RResult, RStr};
use mcp_v8_plugin_api::ffi::ForeignHeapStore;
use mcp_v8_plugin_api::plugin::PluginModuleRef;
use mcp_v8_plugin_api::StoreError;

use super::PluginStore;

/// Loads the plugin library at `path` and opens its store with `config` (a JSON object).
/// `name` is the plugin's name in the configuration, for messages.
pub fn load(name: &str, path: &Path, config: &serde_json::Value) -> Result<PluginStore, String> {
    let fail = |why: String| format!("storage plugin '{name}' ({}): {why}", path.display());
    if !path.is_file() {
        return Err(fail("the library file does not exist".into()));
    }
    // An absolute path, so that dlopen never searches the system library paths instead.
    let path =
        &std::fs::canonicalize(path).map_err(|e| fail(format!("cannot resolve the path: {e}")))?;
    probe(path).map_err(fail)?;
    let header = lib_header_from_path(path).map_err(|e| fail(describe(e)))?;
    check_identity(header).map_err(fail)?;
    let module = header
        .init_root_module::<PluginModuleRef>()
        .map_err(|e| fail(describe(e)))?;
    let config = config.to_string();
    let store = match (module.open())(RStr::from_str(&config)) {
        RResult::ROk(store) => store,
        RResult::RErr(e) => {
            let e = StoreError::from(e);
            return Err(fail(format!("the plugin refused to open its store: {e}")));
        }
    };
    let store = PluginStore::new(ForeignHeapStore::new(store));
    tracing::info!(
        plugin = name,
        path = %path.display(),
        exports = %(module.name())(),
        version = %(module.version())(),
        "storage plugin loaded"
    );
    Ok(store)
}

/// Checks with `dlopen` that the file is a shared library exporting an abi_stable root
/// module, which gives clearer messages than abi_stable's own checks.
fn probe(path: &Path) -> Result<(), String> {
    // SAFETY: loading a library runs its initialisers; the operator chose this library as a
    // plugin, which is exactly what loading it means. It is unloaded again at the end of scope.
    let library = unsafe { libloading::Library::new(path) }
        .map_err(|e| format!("not a loadable shared library: {e}"))?;
    // SAFETY: only the symbol's presence is checked; the pointer is never dereferenced.
    let symbol = unsafe { library.get::<*const ()>(ROOT_MODULE_LOADER_NAME_WITH_NUL.as_bytes()) };
    symbol
        .map(|_| ())
        .map_err(|_| "not an mcp-v8 storage plugin: it exports no plugin root module".into())
}

/// Checks that the library is a storage plugin and names both plugin-api versions when they
/// cannot work together (abi_stable would only report a layout mismatch for some of them).
fn check_identity(header: &LibHeader) -> Result<(), String> {
    let consts = header.root_mod_consts();
    if consts.base_name().as_str() != PluginModuleRef::BASE_NAME {
        return Err(format!(
            "not an mcp-v8 storage plugin: it is an abi_stable library of another kind ({})",
            consts.name()
        ));
    }
    let theirs = header.version_strings();
    let ours = PluginModuleRef::VERSION_STRINGS;
    let compatible = match (VersionNumber::new(ours), VersionNumber::new(theirs)) {
        (Ok(ours), Ok(theirs)) => ours.is_loosely_compatible(theirs),
        _ => false,
    };
    if compatible {
        Ok(())
    } else {
        Err(incompatible(theirs.version, ours.version))
    }
}

fn incompatible(theirs: impl std::fmt::Display, ours: impl std::fmt::Display) -> String {
    format!(
        "built against mcp-v8-plugin-api {theirs}, but this mcp-v8 uses mcp-v8-plugin-api \
         {ours}; rebuild the plugin against a compatible plugin-api"
    )
}

fn describe(error: LibraryError) -> String {
    match error {
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => incompatible(actual_version, expected_version),
        LibraryError::AbiInstability(detail) => {
            let first = detail.to_string();
            let first = first
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string();
            format!(
                "its root module does not match this mcp-v8's storage contract (not an mcp-v8 \
                 storage plugin, or built against an incompatible mcp-v8-plugin-api): {first}"
            )
        }
        other => other
            .to_string()
            .lines()
            .next()
            .unwrap_or("unknown error")
            .to_string(),
    }
}
