//! What a storage plugin library exports: its root module.
//!
//! A plugin is a `cdylib` crate that implements [`crate::HeapStore`] and exports it with
//! [`crate::export_plugin!`]:
//!
//! ```
//! use mcp_v8_plugin_api::{
//!     export_plugin, BackendInfo, HeapMeta, HeapStore, Precondition, Snapshot, StoreError, Version,
//! };
//!
//! struct MyStore;
//!
//! impl HeapStore for MyStore {
//!     fn info(&self) -> BackendInfo {
//!         BackendInfo::new("my-store", "0.1.0")
//!     }
//!     fn get(&self, name: &str) -> Result<Snapshot, StoreError> {
//!         Err(StoreError::not_found(name))
//!     }
//!     fn put(&self, _: &str, _: bytes::Bytes, _: Precondition) -> Result<Version, StoreError> {
//!         Err(StoreError::unavailable("read-only"))
//!     }
//!     fn delete(&self, name: &str) -> Result<(), StoreError> {
//!         Err(StoreError::not_found(name))
//!     }
//!     fn list(&self, _: &str) -> Result<Vec<HeapMeta>, StoreError> {
//!         Ok(Vec::new())
//!     }
//! }
//!
//! /// Builds the store from the plugin's `[plugins.<name>.config]` table, given as JSON.
//! fn open(_config: &str) -> Result<MyStore, StoreError> {
//!     Ok(MyStore)
//! }
//!
//! export_plugin!("my-store", open);
//! # fn main() {}
//! ```
//!
//! The host loads the library, checks that it was built against a compatible version of this
//! crate (same major version, or same minor version while it is 0.x) and that every type in
//! the contract has the same layout, then calls `open` with the configuration.

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RResult, RStr};
use abi_stable::{declare_root_module_statics, package_version_strings, StableAbi};

use crate::ffi::{FfiHeapStore, FfiStoreError};

/// The root module of a storage plugin. Build it with [`crate::export_plugin!`].
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// The plugin's name, e.g. `"file"`.
    pub name: extern "C" fn() -> RStr<'static>,
    /// The plugin's own version.
    pub version: extern "C" fn() -> RStr<'static>,
    /// Opens a store from the plugin's configuration, a JSON object. Fields added in later
    /// minor versions go below this one.
    #[sabi(last_prefix_field)]
    pub open: extern "C" fn(config: RStr<'_>) -> RResult<FfiHeapStore, FfiStoreError>,
}

impl std::fmt::Debug for PluginModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginModule").finish_non_exhaustive()
    }
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "mcp_v8_storage_plugin";
    const NAME: &'static str = "mcp-v8 storage plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Parses a plugin's configuration (the JSON object the host hands to `open`) into the
/// plugin's own type. Errors name the plugin and the offending field, e.g. "invalid file
/// storage configuration: unknown field `dir`"; use `#[serde(deny_unknown_fields)]` so that
/// typos are caught at start-up.
///
/// ```
/// #[derive(Debug, serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Config { directory: String }
///
/// let config: Config = mcp_v8_plugin_api::plugin::parse_config("file", r#"{"directory": "/x"}"#).unwrap();
/// assert_eq!(config.directory, "/x");
/// let err = mcp_v8_plugin_api::plugin::parse_config::<Config>("file", r#"{"dir": "/x"}"#).unwrap_err();
/// assert!(err.message().contains("unknown field `dir`"));
/// ```
pub fn parse_config<T: serde::de::DeserializeOwned>(
    plugin: &str,
    config: &str,
) -> Result<T, crate::StoreError> {
    // Via a Value, so errors name the field rather than a position in generated JSON.
    serde_json::from_str(config)
        .and_then(serde_json::from_value)
        .map_err(|e| {
            crate::StoreError::other(format!("invalid {plugin} storage configuration: {e}"))
        })
}

/// Runs a plugin's constructor, turning a panic into an error. Used by
/// [`crate::export_plugin!`]; not meant to be called directly.
#[doc(hidden)]
pub fn open_guarded<S, F>(open: F, config: RStr<'_>) -> RResult<FfiHeapStore, FfiStoreError>
where
    S: crate::HeapStore,
    F: FnOnce(&str) -> Result<S, crate::StoreError>,
{
    let config = config.as_str();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| open(config))) {
        Ok(Ok(store)) => RResult::ROk(FfiHeapStore::new(store)),
        Ok(Err(e)) => RResult::RErr(e.into()),
        Err(_) => RResult::RErr(
            crate::StoreError::other("the plugin panicked while opening its store").into(),
        ),
    }
}

/// Exports a storage plugin: `export_plugin!(name, open)` where `open` is a
/// `fn(&str) -> Result<impl HeapStore, StoreError>` taking the plugin's configuration as a
/// JSON object. The plugin's version is its crate version.
///
/// The plugin crate must be a `cdylib` and depend on `abi_stable` (0.11) directly, because
/// the export attribute refers to it by its crate name.
#[macro_export]
macro_rules! export_plugin {
    ($name:expr, $open:path) => {
        /// Opens the plugin's store for the host (generated by `export_plugin!`).
        #[doc(hidden)]
        extern "C" fn __mcp_v8_open(
            config: ::abi_stable::std_types::RStr<'_>,
        ) -> ::abi_stable::std_types::RResult<$crate::ffi::FfiHeapStore, $crate::ffi::FfiStoreError>
        {
            $crate::plugin::open_guarded($open, config)
        }

        /// The plugin's root module, which the host loads (generated by `export_plugin!`).
        #[doc(hidden)]
        #[allow(missing_docs)] // the export attribute adds a static of its own
        pub mod __mcp_v8_plugin {
            #[::abi_stable::export_root_module]
            pub fn __mcp_v8_storage_plugin_root() -> $crate::plugin::PluginModuleRef {
                extern "C" fn __mcp_v8_name() -> ::abi_stable::std_types::RStr<'static> {
                    ::abi_stable::std_types::RStr::from_str($name)
                }
                extern "C" fn __mcp_v8_version() -> ::abi_stable::std_types::RStr<'static> {
                    ::abi_stable::std_types::RStr::from_str(env!("CARGO_PKG_VERSION"))
                }
                <$crate::plugin::PluginModule as ::abi_stable::prefix_type::PrefixTypeTrait>::leak_into_prefix(
                    $crate::plugin::PluginModule {
                        name: __mcp_v8_name,
                        version: __mcp_v8_version,
                        open: super::__mcp_v8_open,
                    },
                )
            }
        }
    };
}
