//! The stable-ABI form of [`HeapStore`], the part of the contract that crosses a
//! dynamic-library boundary.
//!
//! * [`FfiHeapStore`] is made on the side that *provides* a store (a plugin) from any
//!   [`HeapStore`]. It catches panics, so an unwinding panic never crosses the boundary
//!   (that would abort the host); a panic becomes an error of kind [`ErrorKind::Other`].
//! * [`ForeignHeapStore`] is used on the side that *consumes* a store (the host): it
//!   implements [`HeapStore`] on top of an [`FfiHeapStore`] received from a plugin.
//!
//! Only `abi_stable` types (`RString`, `RVec`, ...) and the `#[repr(C)]` types of this
//! module appear in the vtable.
//!
//! ```
//! use mcp_v8_plugin_api::ffi::{FfiHeapStore, ForeignHeapStore};
//! # use mcp_v8_plugin_api::*;
//! # struct Nothing;
//! # impl HeapStore for Nothing {
//! #     fn info(&self) -> BackendInfo { BackendInfo::new("nothing", "0") }
//! #     fn get(&self, n: &str) -> Result<Snapshot, StoreError> { Err(StoreError::not_found(n)) }
//! #     fn put(&self, _: &str, _: &[u8], _: Precondition) -> Result<Version, StoreError> { Err(StoreError::other("no")) }
//! #     fn delete(&self, n: &str) -> Result<(), StoreError> { Err(StoreError::not_found(n)) }
//! #     fn list(&self, _: &str) -> Result<Vec<HeapMeta>, StoreError> { Ok(vec![]) }
//! # }
//! // Plugin side:
//! let exported: FfiHeapStore = FfiHeapStore::new(Nothing);
//! // Host side:
//! let store = ForeignHeapStore::new(exported);
//! assert_eq!(store.get("x").unwrap_err().kind(), ErrorKind::NotFound);
//! ```

// `#[sabi_trait]` generates impls inside a const block, which this lint flags.
#![allow(non_local_definitions)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, UNIX_EPOCH};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RBox, RErr, ROk, RResult, RSlice, RStr, RString, RVec};
use abi_stable::{sabi_trait, StableAbi};

use crate::{
    BackendInfo, ErrorKind, HeapMeta, HeapStore, Precondition, Snapshot, StoreError, Version,
};

/// [`StoreError`] across the boundary. `kind` is a code so that a newer plugin's unknown
/// kinds still load (they read as [`ErrorKind::Other`]).
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiStoreError {
    /// 1 not found, 2 invalid name, 3 conflict, 4 unavailable, 5 corrupt, anything else other.
    pub kind: u8,
    /// The human-readable message.
    pub message: RString,
}

impl From<StoreError> for FfiStoreError {
    fn from(e: StoreError) -> Self {
        let kind = match e.kind() {
            ErrorKind::NotFound => 1,
            ErrorKind::InvalidName => 2,
            ErrorKind::Conflict => 3,
            ErrorKind::Unavailable => 4,
            ErrorKind::Corrupt => 5,
            ErrorKind::Other => 0,
        };
        Self {
            kind,
            message: e.message().into(),
        }
    }
}

impl From<FfiStoreError> for StoreError {
    fn from(e: FfiStoreError) -> Self {
        let kind = match e.kind {
            1 => ErrorKind::NotFound,
            2 => ErrorKind::InvalidName,
            3 => ErrorKind::Conflict,
            4 => ErrorKind::Unavailable,
            5 => ErrorKind::Corrupt,
            _ => ErrorKind::Other,
        };
        StoreError::new(kind, e.message.into_string())
    }
}

/// [`Precondition`] across the boundary.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone)]
pub enum FfiPrecondition {
    /// [`Precondition::Any`].
    Any,
    /// [`Precondition::MustNotExist`].
    MustNotExist,
    /// [`Precondition::MustMatch`].
    MustMatch(RString),
}

impl From<Precondition> for FfiPrecondition {
    fn from(p: Precondition) -> Self {
        match p {
            Precondition::Any => Self::Any,
            Precondition::MustNotExist => Self::MustNotExist,
            Precondition::MustMatch(v) => Self::MustMatch(v.0.into()),
        }
    }
}

impl From<FfiPrecondition> for Precondition {
    fn from(p: FfiPrecondition) -> Self {
        match p {
            FfiPrecondition::Any => Self::Any,
            FfiPrecondition::MustNotExist => Self::MustNotExist,
            FfiPrecondition::MustMatch(v) => Self::MustMatch(Version(v.into_string())),
        }
    }
}

/// [`Snapshot`] across the boundary. The bytes move without a copy: an `RVec` remembers
/// which library allocated it and frees it there.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiSnapshot {
    /// The stored bytes.
    pub bytes: RVec<u8>,
    /// Their version token.
    pub version: RString,
}

/// [`HeapMeta`] across the boundary.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiHeapMeta {
    /// The heap name.
    pub name: RString,
    /// Size in bytes.
    pub size: u64,
    /// Version token.
    pub version: RString,
    /// Last write, in milliseconds since the Unix epoch.
    pub last_modified_ms: i64,
}

impl From<HeapMeta> for FfiHeapMeta {
    fn from(m: HeapMeta) -> Self {
        let last_modified_ms = match m.last_modified.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        };
        Self {
            name: m.name.into(),
            size: m.size,
            version: m.version.0.into(),
            last_modified_ms,
        }
    }
}

impl From<FfiHeapMeta> for HeapMeta {
    fn from(m: FfiHeapMeta) -> Self {
        let offset = Duration::from_millis(m.last_modified_ms.unsigned_abs());
        let last_modified = if m.last_modified_ms >= 0 {
            UNIX_EPOCH.checked_add(offset)
        } else {
            UNIX_EPOCH.checked_sub(offset)
        }
        .unwrap_or(UNIX_EPOCH);
        Self {
            name: m.name.into_string(),
            size: m.size,
            version: Version(m.version.into_string()),
            last_modified,
        }
    }
}

/// [`BackendInfo`] across the boundary.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiBackendInfo {
    /// Backend name.
    pub name: RString,
    /// Backend version.
    pub version: RString,
}

/// The stable-ABI trait behind [`FfiHeapStore`]; see [`HeapStore`] for what each method
/// means. Implemented for you by [`FfiHeapStore::new`]: plugin authors implement
/// [`HeapStore`], not this.
#[sabi_trait]
pub trait StableHeapStore: Send + Sync {
    /// [`HeapStore::info`].
    fn info(&self) -> FfiBackendInfo;
    /// [`HeapStore::get`].
    fn get(&self, name: RStr<'_>) -> RResult<FfiSnapshot, FfiStoreError>;
    /// [`HeapStore::put`].
    fn put(
        &self,
        name: RStr<'_>,
        bytes: RSlice<'_, u8>,
        precondition: FfiPrecondition,
    ) -> RResult<RString, FfiStoreError>;
    /// [`HeapStore::delete`].
    fn delete(&self, name: RStr<'_>) -> RResult<(), FfiStoreError>;
    /// [`HeapStore::list`]. Methods added in later minor versions go below this one.
    #[sabi(last_prefix_field)]
    fn list(&self, prefix: RStr<'_>) -> RResult<RVec<FfiHeapMeta>, FfiStoreError>;
}

/// A heap store as a stable-ABI trait object: what a plugin hands to the host.
#[repr(transparent)]
#[derive(StableAbi)]
pub struct FfiHeapStore(pub StableHeapStore_TO<'static, RBox<()>>);

impl FfiHeapStore {
    /// Wraps `store` for export across the boundary, catching its panics.
    pub fn new<S: HeapStore>(store: S) -> Self {
        Self(StableHeapStore_TO::from_value(Provider(store), TD_Opaque))
    }
}

/// The provider-side adapter from [`HeapStore`] to [`StableHeapStore`].
struct Provider<S>(S);

/// Runs `f`, turning a panic into an error so that it never unwinds across the boundary.
fn guarded<T, U>(op: &str, f: impl FnOnce() -> Result<T, StoreError>) -> RResult<U, FfiStoreError>
where
    U: From<T>,
{
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => ROk(value.into()),
        Ok(Err(e)) => RErr(e.into()),
        Err(payload) => {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_string());
            RErr(StoreError::other(format!("storage plugin panicked in {op}: {detail}")).into())
        }
    }
}

impl<S: HeapStore> StableHeapStore for Provider<S> {
    fn info(&self) -> FfiBackendInfo {
        let info = catch_unwind(AssertUnwindSafe(|| self.0.info()))
            .unwrap_or_else(|_| BackendInfo::new("unknown (info panicked)", "unknown"));
        FfiBackendInfo {
            name: info.name.into(),
            version: info.version.into(),
        }
    }

    fn get(&self, name: RStr<'_>) -> RResult<FfiSnapshot, FfiStoreError> {
        guarded("get", || self.0.get(name.as_str()))
    }

    fn put(
        &self,
        name: RStr<'_>,
        bytes: RSlice<'_, u8>,
        precondition: FfiPrecondition,
    ) -> RResult<RString, FfiStoreError> {
        guarded("put", || {
            self.0
                .put(name.as_str(), bytes.as_slice(), precondition.into())
                .map(|v| v.0)
        })
    }

    fn delete(&self, name: RStr<'_>) -> RResult<(), FfiStoreError> {
        guarded("delete", || self.0.delete(name.as_str()))
    }

    fn list(&self, prefix: RStr<'_>) -> RResult<RVec<FfiHeapMeta>, FfiStoreError> {
        guarded("list", || {
            self.0.list(prefix.as_str()).map(|items| {
                items
                    .into_iter()
                    .map(FfiHeapMeta::from)
                    .collect::<RVec<_>>()
            })
        })
    }
}

impl From<Snapshot> for FfiSnapshot {
    fn from(s: Snapshot) -> Self {
        Self {
            bytes: s.bytes.into(),
            version: s.version.0.into(),
        }
    }
}

/// A store received from across the boundary, usable as a [`HeapStore`].
///
/// [`ForeignHeapStore::get_raw`] returns the bytes still owned by the plugin's allocator,
/// which avoids a copy when the caller can keep an `RVec`.
pub struct ForeignHeapStore(FfiHeapStore);

impl ForeignHeapStore {
    /// Wraps a store a plugin exported.
    pub fn new(store: FfiHeapStore) -> Self {
        Self(store)
    }

    /// Like [`HeapStore::get`], but hands back the plugin's `RVec` without copying it.
    pub fn get_raw(&self, name: &str) -> Result<(RVec<u8>, Version), StoreError> {
        match self.0 .0.get(name.into()) {
            ROk(s) => Ok((s.bytes, Version(s.version.into_string()))),
            RErr(e) => Err(e.into()),
        }
    }

    /// Like [`HeapStore::list`], but converts entries one at a time as they are taken, so
    /// a consumer that keeps only some of a huge listing never holds two copies of it.
    pub fn list_each(&self, prefix: &str) -> Result<impl Iterator<Item = HeapMeta>, StoreError> {
        match self.0 .0.list(prefix.into()) {
            ROk(items) => Ok(items.into_iter().map(HeapMeta::from)),
            RErr(e) => Err(e.into()),
        }
    }
}

impl HeapStore for ForeignHeapStore {
    fn info(&self) -> BackendInfo {
        let info = self.0 .0.info();
        BackendInfo::new(info.name.into_string(), info.version.into_string())
    }

    fn get(&self, name: &str) -> Result<Snapshot, StoreError> {
        self.get_raw(name).map(|(bytes, version)| Snapshot {
            bytes: bytes.into_vec(),
            version,
        })
    }

    fn put(
        &self,
        name: &str,
        bytes: &[u8],
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        match self
            .0
             .0
            .put(name.into(), bytes.into(), precondition.into())
        {
            ROk(v) => Ok(Version(v.into_string())),
            RErr(e) => Err(e.into()),
        }
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.0
             .0
            .delete(name.into())
            .into_result()
            .map_err(Into::into)
    }

    fn list(&self, prefix: &str) -> Result<Vec<HeapMeta>, StoreError> {
        self.list_each(prefix).map(Iterator::collect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A tiny store for exercising the boundary; panics on a name of "boom".
    #[derive(Default)]
    struct Toy(Mutex<HashMap<String, (Vec<u8>, u64)>>);

    impl HeapStore for Toy {
        fn info(&self) -> BackendInfo {
            BackendInfo::new("toy", "1")
        }
        fn get(&self, name: &str) -> Result<Snapshot, StoreError> {
            let map = self.0.lock().unwrap();
            let (bytes, gen) = map.get(name).ok_or_else(|| StoreError::not_found(name))?;
            Ok(Snapshot {
                bytes: bytes.clone(),
                version: Version(gen.to_string()),
            })
        }
        fn put(&self, name: &str, bytes: &[u8], p: Precondition) -> Result<Version, StoreError> {
            if name == "boom" {
                panic!("kaboom");
            }
            let mut map = self.0.lock().unwrap();
            let current = map.get(name).map(|(_, g)| *g);
            p.check(name, current.map(|g| Version(g.to_string())).as_ref())?;
            let gen = current.unwrap_or(0) + 1;
            map.insert(name.to_string(), (bytes.to_vec(), gen));
            Ok(Version(gen.to_string()))
        }
        fn delete(&self, name: &str) -> Result<(), StoreError> {
            self.0
                .lock()
                .unwrap()
                .remove(name)
                .map(|_| ())
                .ok_or_else(|| StoreError::not_found(name))
        }
        fn list(&self, prefix: &str) -> Result<Vec<HeapMeta>, StoreError> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, (b, g))| HeapMeta {
                    name: k.clone(),
                    size: b.len() as u64,
                    version: Version(g.to_string()),
                    last_modified: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
                })
                .collect())
        }
    }

    fn through_boundary() -> ForeignHeapStore {
        ForeignHeapStore::new(FfiHeapStore::new(Toy::default()))
    }

    #[test]
    fn round_trips_every_method() {
        let store = through_boundary();
        assert_eq!(store.info(), BackendInfo::new("toy", "1"));
        let v1 = store.put("a", b"one", Precondition::MustNotExist).unwrap();
        let got = store.get("a").unwrap();
        assert_eq!(got.bytes, b"one");
        assert_eq!(got.version, v1);
        let v2 = store
            .put("a", b"two", Precondition::MustMatch(v1.clone()))
            .unwrap();
        assert_ne!(v1, v2);
        let listed = store.list("").unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "a");
        assert_eq!(listed[0].size, 3);
        assert_eq!(listed[0].version, v2);
        assert_eq!(
            listed[0].last_modified,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
        );
        store.delete("a").unwrap();
        assert_eq!(store.get("a").unwrap_err().kind(), ErrorKind::NotFound);
    }

    #[test]
    fn error_kinds_survive_the_boundary() {
        let store = through_boundary();
        let v1 = store.put("a", b"x", Precondition::Any).unwrap();
        store.put("a", b"y", Precondition::Any).unwrap();
        let stale = store
            .put("a", b"z", Precondition::MustMatch(v1))
            .unwrap_err();
        assert_eq!(stale.kind(), ErrorKind::Conflict);
        assert_eq!(stale.message(), "heap 'a' is no longer at version 1");
        let exists = store
            .put("a", b"z", Precondition::MustNotExist)
            .unwrap_err();
        assert_eq!(exists.kind(), ErrorKind::Conflict);
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::InvalidName,
            ErrorKind::Conflict,
            ErrorKind::Unavailable,
            ErrorKind::Corrupt,
            ErrorKind::Other,
        ] {
            let back: StoreError = FfiStoreError::from(StoreError::new(kind, "m")).into();
            assert_eq!(back.kind(), kind);
        }
        let unknown: StoreError = FfiStoreError {
            kind: 200,
            message: "new".into(),
        }
        .into();
        assert_eq!(unknown.kind(), ErrorKind::Other);
    }

    #[test]
    fn a_panic_becomes_an_error() {
        let store = through_boundary();
        let err = store.put("boom", b"x", Precondition::Any).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Other);
        assert!(err.message().contains("panicked in put: kaboom"), "{err}");
        // The store still works afterwards.
        store.put("fine", b"x", Precondition::Any).unwrap();
    }

    #[test]
    fn times_before_the_epoch_round_trip() {
        let meta = HeapMeta {
            name: "a".into(),
            size: 0,
            version: Version("v".into()),
            last_modified: UNIX_EPOCH - Duration::from_millis(5),
        };
        assert_eq!(HeapMeta::from(FfiHeapMeta::from(meta.clone())), meta);
    }
}
