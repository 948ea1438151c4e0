//! The contract between `mcp-v8` and the stores that keep its heaps.
//!
//! A heap store keeps opaque snapshot blobs under validated heap names and hands out a
//! *version token* with each one, so that writers can make conditional puts
//! (compare-and-swap) and never silently overwrite each other's update. Beside each snapshot
//! it keeps the heap's [`journal`]: small numbered records, appended only if their number is
//! free, which commit calls between snapshots. Beyond what every store must do, a store may
//! declare *capabilities* (copying inside the store, why a heap is gone, usage, pins for heaps
//! in use): [`HeapStore`] methods whose defaults say "cannot".
//!
//! There are two faces to the contract:
//!
//! * [`HeapStore`], a plain synchronous Rust trait: the one contract every store fulfils —
//!   the host's built-in memory store, the bundled file and S3 plugins, and third-party
//!   plugins. [`conformance::run`] checks a store against it; run it in your plugin's tests.
//! * [`ffi`], the stable-ABI form of the same trait (`abi_stable`), which is what crosses
//!   the boundary between the host and a dynamically loaded plugin. [`ffi::FfiHeapStore`]
//!   wraps a [`HeapStore`] on the plugin side; [`ffi::ForeignHeapStore`] turns the
//!   trait object back into a [`HeapStore`] on the host side. Neither side's Rust types
//!   cross the boundary.
//!
//! ```
//! use bytes::Bytes;
//! use mcp_v8_plugin_api::{BackendInfo, HeapMeta, HeapStore, Precondition, Snapshot, StoreError, Version};
//!
//! /// A store that keeps nothing: every read is "not found", every write is refused.
//! struct Nothing;
//!
//! impl HeapStore for Nothing {
//!     fn info(&self) -> BackendInfo {
//!         BackendInfo::new("nothing", "0.1.0")
//!     }
//!     fn get(&self, name: &str) -> Result<Snapshot, StoreError> {
//!         Err(StoreError::not_found(name))
//!     }
//!     fn put(&self, _: &str, _: Bytes, _: Precondition) -> Result<Version, StoreError> {
//!         Err(StoreError::unavailable("this store is read-only"))
//!     }
//!     fn delete(&self, name: &str) -> Result<(), StoreError> {
//!         Err(StoreError::not_found(name))
//!     }
//!     fn list(&self, _prefix: &str) -> Result<Vec<HeapMeta>, StoreError> {
//!         Ok(Vec::new())
//!     }
//! }
//! # let _ = Nothing.info();
//! ```

#![warn(missing_docs)]

pub mod conformance;
mod error;
pub mod ffi;
pub mod journal;
mod name;
pub mod plugin;
mod store;

pub use error::{ErrorKind, StoreError};
pub use journal::Record;
pub use name::{validate_heap_name, MAX_HEAP_NAME_LEN};
pub use store::{
    BackendInfo, Gone, GoneCause, HeapMeta, HeapStore, Pins, Precondition, Sharing, Snapshot,
    Usage, Version,
};

/// The version of this contract. The host refuses a plugin built against a version with a
/// different major version (or, while it is 0.x, a different minor version).
pub const PLUGIN_API_VERSION: &str = env!("CARGO_PKG_VERSION");
