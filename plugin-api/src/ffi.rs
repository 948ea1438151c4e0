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
//! module appear in the vtable. Heap bytes cross in both directions without a copy, as
//! [`FfiBytes`]: a buffer lent by the side that allocated it, released there.
//!
//! ```
//! use mcp_v8_plugin_api::ffi::{FfiHeapStore, ForeignHeapStore};
//! # use mcp_v8_plugin_api::*;
//! # struct Nothing;
//! # impl HeapStore for Nothing {
//! #     fn info(&self) -> BackendInfo { BackendInfo::new("nothing", "0") }
//! #     fn get(&self, n: &str) -> Result<Snapshot, StoreError> { Err(StoreError::not_found(n)) }
//! #     fn put(&self, _: &str, _: bytes::Bytes, _: Precondition) -> Result<Version, StoreError> { Err(StoreError::other("no")) }
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
use abi_stable::std_types::{
    RArc, RBox, RErr, RNone, ROk, ROption, RResult, RSome, RStr, RString, RVec,
};
use abi_stable::{sabi_trait, StableAbi};
use bytes::Bytes;

use crate::{
    BackendInfo, ErrorKind, Gone, GoneCause, HeapMeta, HeapStore, Pins, Precondition, Record,
    Sharing, Snapshot, StoreError, Usage, Version,
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

/// Bytes lent across the boundary by the side that owns them, without a copy.
///
/// The lender keeps its [`Bytes`] alive behind `owner`; the borrower reads `ptr..ptr+len`
/// and, when done, calls `release(owner)`, which drops them with the lender's own code (each
/// side may link its own copy of the `bytes` crate, so the `Bytes` itself never crosses).
/// [`FfiBytes::lend`] and [`FfiBytes::into_bytes`] do both halves.
#[repr(C)]
#[derive(StableAbi)]
pub struct FfiBytes {
    ptr: *const u8,
    len: usize,
    owner: *mut (),
    release: extern "C" fn(*mut ()),
}

// SAFETY: the buffer is immutable and its owner is a `Bytes`, which is Send + Sync.
unsafe impl Send for FfiBytes {}
// SAFETY: as above; nothing is mutated through a shared FfiBytes.
unsafe impl Sync for FfiBytes {}

extern "C" fn release_bytes(owner: *mut ()) {
    // SAFETY: `owner` came from `Box::into_raw` in `FfiBytes::lend` on this side of the
    // boundary, and `release` is called exactly once (by `Lent::drop`).
    drop(unsafe { Box::from_raw(owner.cast::<Bytes>()) });
}

impl FfiBytes {
    /// Lends `bytes` to the other side; they are freed here when it releases them.
    pub fn lend(bytes: Bytes) -> Self {
        let (ptr, len) = (bytes.as_ptr(), bytes.len());
        let owner = Box::into_raw(Box::new(bytes)).cast::<()>();
        Self {
            ptr,
            len,
            owner,
            release: release_bytes,
        }
    }

    /// The lent bytes as [`Bytes`] of this side, still without a copy: dropping the last
    /// clone releases them to the lender.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(Lent(self))
    }
}

impl std::fmt::Debug for FfiBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FfiBytes({} bytes)", self.len)
    }
}

/// Borrowed [`FfiBytes`], released when dropped.
struct Lent(FfiBytes);

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is the lender's live `Bytes`, kept alive until release.
        unsafe { std::slice::from_raw_parts(self.0.ptr, self.0.len) }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        (self.0.release)(self.0.owner);
    }
}

/// [`Snapshot`] across the boundary; the bytes are lent, not copied.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiSnapshot {
    /// The stored bytes.
    pub bytes: FfiBytes,
    /// Their version token.
    pub version: RString,
}

/// A journal [`Record`] across the boundary; the bytes are lent, not copied.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiRecord {
    /// The record's number.
    pub seq: u64,
    /// Its bytes.
    pub bytes: FfiBytes,
}

impl From<Record> for FfiRecord {
    fn from(r: Record) -> Self {
        Self {
            seq: r.seq,
            bytes: FfiBytes::lend(r.bytes),
        }
    }
}

impl From<FfiRecord> for Record {
    fn from(r: FfiRecord) -> Self {
        Record::new(r.seq, r.bytes.into_bytes())
    }
}

/// [`Sharing`] across the boundary, as a code, so that a newer plugin's unknown answers still
/// load (they read as [`Sharing::Network`], the cautious one).
fn sharing_code(sharing: Sharing) -> u8 {
    match sharing {
        Sharing::Process => 1,
        Sharing::Machine => 2,
        Sharing::Network => 3,
    }
}

fn sharing_from(code: u8) -> Sharing {
    match code {
        1 => Sharing::Process,
        2 => Sharing::Machine,
        _ => Sharing::Network,
    }
}

/// [`Gone`] across the boundary: the cause as a code (1 evicted, anything else expired) and
/// when, in milliseconds since the Unix epoch.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct FfiGone {
    /// 1 evicted, anything else expired.
    pub cause: u8,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl From<Gone> for FfiGone {
    fn from(g: Gone) -> Self {
        let at_ms =
            g.at.duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let cause = match g.cause {
            GoneCause::Evicted => 1,
            GoneCause::Expired => 2,
        };
        Self { cause, at_ms }
    }
}

impl From<FfiGone> for Gone {
    fn from(g: FfiGone) -> Self {
        Gone {
            cause: match g.cause {
                1 => GoneCause::Evicted,
                _ => GoneCause::Expired,
            },
            at: UNIX_EPOCH
                .checked_add(Duration::from_millis(g.at_ms))
                .unwrap_or(UNIX_EPOCH),
        }
    }
}

/// [`Usage`] across the boundary.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct FfiUsage {
    /// [`Usage::heaps`].
    pub heaps: u64,
    /// [`Usage::bytes`].
    pub bytes: u64,
    /// [`Usage::raw_bytes`].
    pub raw_bytes: u64,
    /// [`Usage::max_bytes`].
    pub max_bytes: ROption<u64>,
    /// [`Usage::evictions`].
    pub evictions: u64,
    /// [`Usage::expirations`].
    pub expirations: u64,
}

impl From<Usage> for FfiUsage {
    fn from(u: Usage) -> Self {
        Self {
            heaps: u.heaps,
            bytes: u.bytes,
            raw_bytes: u.raw_bytes,
            max_bytes: u.max_bytes.into(),
            evictions: u.evictions,
            expirations: u.expirations,
        }
    }
}

impl From<FfiUsage> for Usage {
    fn from(u: FfiUsage) -> Self {
        Self {
            heaps: u.heaps,
            bytes: u.bytes,
            raw_bytes: u.raw_bytes,
            max_bytes: u.max_bytes.into_option(),
            evictions: u.evictions,
            expirations: u.expirations,
        }
    }
}

/// The stable-ABI trait behind [`FfiPins`]: the host's [`Pins`], called by a plugin.
#[sabi_trait]
pub trait StablePins: Send + Sync {
    /// [`Pins::pinned`].
    #[sabi(last_prefix_field)]
    fn pinned(&self, name: RStr<'_>) -> bool;
}

/// [`Pins`] as a stable-ABI trait object: what the host hands a plugin.
#[repr(transparent)]
#[derive(StableAbi)]
pub struct FfiPins(pub StablePins_TO<'static, RArc<()>>);

impl std::fmt::Debug for FfiPins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FfiPins").finish_non_exhaustive()
    }
}

/// The host-side adapter from [`Pins`] to [`StablePins`].
struct PinsProvider(Pins);

impl StablePins for PinsProvider {
    fn pinned(&self, name: RStr<'_>) -> bool {
        // A panic must not unwind into the plugin: counted as pinned, the cautious answer.
        catch_unwind(AssertUnwindSafe(|| self.0.pinned(name.as_str()))).unwrap_or(true)
    }
}

impl From<Pins> for FfiPins {
    fn from(pins: Pins) -> Self {
        Self(StablePins_TO::from_ptr(
            RArc::new(PinsProvider(pins)),
            TD_Opaque,
        ))
    }
}

impl From<FfiPins> for Pins {
    fn from(pins: FfiPins) -> Self {
        Pins::new(move |name| pins.0.pinned(name.into()))
    }
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
        bytes: FfiBytes,
        precondition: FfiPrecondition,
    ) -> RResult<RString, FfiStoreError>;
    /// [`HeapStore::delete`].
    fn delete(&self, name: RStr<'_>) -> RResult<(), FfiStoreError>;
    /// [`HeapStore::list`].
    fn list(&self, prefix: RStr<'_>) -> RResult<RVec<FfiHeapMeta>, FfiStoreError>;
    /// [`HeapStore::version`].
    fn version(&self, name: RStr<'_>) -> RResult<ROption<RString>, FfiStoreError>;
    /// [`HeapStore::append`].
    fn append(&self, name: RStr<'_>, record: FfiRecord) -> RResult<(), FfiStoreError>;
    /// [`HeapStore::read_journal`].
    fn read_journal(&self, name: RStr<'_>, after: u64) -> RResult<RVec<FfiRecord>, FfiStoreError>;
    /// [`HeapStore::trim_journal`].
    fn trim_journal(&self, name: RStr<'_>, through: u64) -> RResult<(), FfiStoreError>;
    /// [`HeapStore::sharing`], as a code (1 process, 2 machine, anything else network).
    fn sharing(&self) -> u8;
    /// [`HeapStore::copy`].
    fn copy(
        &self,
        from: RStr<'_>,
        to: RStr<'_>,
        precondition: FfiPrecondition,
    ) -> RResult<ROption<RString>, FfiStoreError>;
    /// [`HeapStore::copied_from`].
    fn copied_from(&self, name: RStr<'_>) -> ROption<RString>;
    /// [`HeapStore::gone`].
    fn gone(&self, name: RStr<'_>) -> ROption<FfiGone>;
    /// [`HeapStore::raw_size`].
    fn raw_size(&self, name: RStr<'_>, version: RStr<'_>) -> ROption<u64>;
    /// [`HeapStore::usage`].
    fn usage(&self) -> ROption<FfiUsage>;
    /// [`HeapStore::set_pins`].
    /// Methods added in later minor versions go below this one.
    #[sabi(last_prefix_field)]
    fn set_pins(&self, pins: FfiPins);
}

/// A heap store as a stable-ABI trait object: what a plugin hands to the host.
#[repr(transparent)]
#[derive(StableAbi)]
pub struct FfiHeapStore(pub StableHeapStore_TO<'static, RBox<()>>);

impl std::fmt::Debug for FfiHeapStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FfiHeapStore").finish_non_exhaustive()
    }
}

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
        bytes: FfiBytes,
        precondition: FfiPrecondition,
    ) -> RResult<RString, FfiStoreError> {
        guarded("put", || {
            self.0
                .put(name.as_str(), bytes.into_bytes(), precondition.into())
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

    fn version(&self, name: RStr<'_>) -> RResult<ROption<RString>, FfiStoreError> {
        guarded("version", || {
            self.0
                .version(name.as_str())
                .map(|v| v.map(|v| RString::from(v.0)))
        })
    }

    fn append(&self, name: RStr<'_>, record: FfiRecord) -> RResult<(), FfiStoreError> {
        guarded("append", || self.0.append(name.as_str(), record.into()))
    }

    fn read_journal(&self, name: RStr<'_>, after: u64) -> RResult<RVec<FfiRecord>, FfiStoreError> {
        guarded("read_journal", || {
            self.0.read_journal(name.as_str(), after).map(|records| {
                records
                    .into_iter()
                    .map(FfiRecord::from)
                    .collect::<RVec<_>>()
            })
        })
    }

    fn trim_journal(&self, name: RStr<'_>, through: u64) -> RResult<(), FfiStoreError> {
        guarded("trim_journal", || {
            self.0.trim_journal(name.as_str(), through)
        })
    }

    fn sharing(&self) -> u8 {
        catch_unwind(AssertUnwindSafe(|| self.0.sharing()))
            .map_or(sharing_code(Sharing::Network), sharing_code)
    }

    fn copy(
        &self,
        from: RStr<'_>,
        to: RStr<'_>,
        precondition: FfiPrecondition,
    ) -> RResult<ROption<RString>, FfiStoreError> {
        guarded("copy", || {
            self.0
                .copy(from.as_str(), to.as_str(), precondition.into())
                .map(|v| ROption::from(v.map(|v| RString::from(v.0))))
        })
    }

    fn copied_from(&self, name: RStr<'_>) -> ROption<RString> {
        match catch_unwind(AssertUnwindSafe(|| self.0.copied_from(name.as_str()))) {
            Ok(Some(from)) => RSome(from.into()),
            _ => RNone,
        }
    }

    fn gone(&self, name: RStr<'_>) -> ROption<FfiGone> {
        match catch_unwind(AssertUnwindSafe(|| self.0.gone(name.as_str()))) {
            Ok(Some(gone)) => RSome(gone.into()),
            _ => RNone,
        }
    }

    fn raw_size(&self, name: RStr<'_>, version: RStr<'_>) -> ROption<u64> {
        let version = Version(version.as_str().to_string());
        catch_unwind(AssertUnwindSafe(|| {
            self.0.raw_size(name.as_str(), &version)
        }))
        .ok()
        .flatten()
        .into()
    }

    fn usage(&self) -> ROption<FfiUsage> {
        match catch_unwind(AssertUnwindSafe(|| self.0.usage())) {
            Ok(Some(usage)) => RSome(usage.into()),
            _ => RNone,
        }
    }

    fn set_pins(&self, pins: FfiPins) {
        let _ = catch_unwind(AssertUnwindSafe(|| self.0.set_pins(pins.into())));
    }
}

impl From<Snapshot> for FfiSnapshot {
    fn from(s: Snapshot) -> Self {
        Self {
            bytes: FfiBytes::lend(s.bytes),
            version: s.version.0.into(),
        }
    }
}

/// A store received from across the boundary, usable as a [`HeapStore`]. Bytes go both
/// ways without a copy.
#[derive(Debug)]
pub struct ForeignHeapStore(FfiHeapStore);

impl ForeignHeapStore {
    /// Wraps a store a plugin exported.
    pub fn new(store: FfiHeapStore) -> Self {
        Self(store)
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
        match self.0 .0.get(name.into()) {
            ROk(s) => Ok(Snapshot {
                bytes: s.bytes.into_bytes(),
                version: Version(s.version.into_string()),
            }),
            RErr(e) => Err(e.into()),
        }
    }

    fn put(
        &self,
        name: &str,
        bytes: Bytes,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        match self
            .0
             .0
            .put(name.into(), FfiBytes::lend(bytes), precondition.into())
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

    fn version(&self, name: &str) -> Result<Option<Version>, StoreError> {
        match self.0 .0.version(name.into()) {
            ROk(v) => Ok(v.into_option().map(|v| Version(v.into_string()))),
            RErr(e) => Err(e.into()),
        }
    }

    fn append(&self, name: &str, record: Record) -> Result<(), StoreError> {
        self.0
             .0
            .append(name.into(), record.into())
            .into_result()
            .map_err(Into::into)
    }

    fn read_journal(&self, name: &str, after: u64) -> Result<Vec<Record>, StoreError> {
        match self.0 .0.read_journal(name.into(), after) {
            ROk(records) => Ok(records.into_iter().map(Record::from).collect()),
            RErr(e) => Err(e.into()),
        }
    }

    fn trim_journal(&self, name: &str, through: u64) -> Result<(), StoreError> {
        self.0
             .0
            .trim_journal(name.into(), through)
            .into_result()
            .map_err(Into::into)
    }

    fn sharing(&self) -> Sharing {
        sharing_from(self.0 .0.sharing())
    }

    fn copy(
        &self,
        from: &str,
        to: &str,
        precondition: Precondition,
    ) -> Result<Option<Version>, StoreError> {
        match self.0 .0.copy(from.into(), to.into(), precondition.into()) {
            ROk(v) => Ok(v.into_option().map(|v| Version(v.into_string()))),
            RErr(e) => Err(e.into()),
        }
    }

    fn copied_from(&self, name: &str) -> Option<String> {
        self.0
             .0
            .copied_from(name.into())
            .into_option()
            .map(RString::into_string)
    }

    fn gone(&self, name: &str) -> Option<Gone> {
        self.0 .0.gone(name.into()).into_option().map(Gone::from)
    }

    fn raw_size(&self, name: &str, version: &Version) -> Option<u64> {
        self.0
             .0
            .raw_size(name.into(), version.as_str().into())
            .into_option()
    }

    fn usage(&self) -> Option<Usage> {
        self.0 .0.usage().into_option().map(Usage::from)
    }

    fn set_pins(&self, pins: Pins) {
        self.0 .0.set_pins(pins.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A tiny store for exercising the boundary; panics on a name of "boom".
    #[derive(Default)]
    struct Toy(
        Mutex<HashMap<String, (Bytes, u64)>>,
        std::sync::atomic::AtomicU64,
    );

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
        fn put(&self, name: &str, bytes: Bytes, p: Precondition) -> Result<Version, StoreError> {
            if name == "boom" {
                panic!("kaboom");
            }
            let mut map = self.0.lock().unwrap();
            let current = map.get(name).map(|(_, g)| *g);
            p.check(name, current.map(|g| Version(g.to_string())).as_ref())?;
            let gen = self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            map.insert(name.to_string(), (bytes, gen));
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

    /// [`Toy`] with every capability.
    #[derive(Default)]
    struct Capable {
        toy: Toy,
        copies: Mutex<HashMap<String, String>>,
        pins: Mutex<Option<Pins>>,
    }

    impl HeapStore for Capable {
        fn info(&self) -> BackendInfo {
            self.toy.info()
        }
        fn get(&self, name: &str) -> Result<Snapshot, StoreError> {
            self.toy.get(name)
        }
        fn put(&self, name: &str, bytes: Bytes, p: Precondition) -> Result<Version, StoreError> {
            self.toy.put(name, bytes, p)
        }
        fn delete(&self, name: &str) -> Result<(), StoreError> {
            self.toy.delete(name)
        }
        fn list(&self, prefix: &str) -> Result<Vec<HeapMeta>, StoreError> {
            self.toy.list(prefix)
        }
        fn copy(
            &self,
            from: &str,
            to: &str,
            p: Precondition,
        ) -> Result<Option<Version>, StoreError> {
            let bytes = self.toy.get(from)?.bytes;
            let version = self.toy.put(to, bytes, p)?;
            self.copies.lock().unwrap().insert(to.into(), from.into());
            Ok(Some(version))
        }
        fn copied_from(&self, name: &str) -> Option<String> {
            self.copies.lock().unwrap().get(name).cloned()
        }
        fn gone(&self, name: &str) -> Option<Gone> {
            (name == "evicted").then(|| Gone {
                cause: GoneCause::Evicted,
                at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
            })
        }
        fn raw_size(&self, name: &str, version: &Version) -> Option<u64> {
            (name == "a" && version.as_str() == "1").then_some(42)
        }
        fn usage(&self) -> Option<Usage> {
            // A pinned heap is counted as an eviction avoided, to show the pins work.
            let pinned = self.pins.lock().unwrap().as_ref().map(|p| p.pinned("held"));
            Some(Usage {
                heaps: self.toy.0.lock().unwrap().len() as u64,
                max_bytes: Some(7),
                evictions: u64::from(pinned == Some(true)),
                ..Usage::default()
            })
        }
        fn set_pins(&self, pins: Pins) {
            *self.pins.lock().unwrap() = Some(pins);
        }
    }

    #[test]
    fn capabilities_cross_the_boundary() {
        let store = ForeignHeapStore::new(FfiHeapStore::new(Capable::default()));
        let v1 = store
            .put("a", Bytes::from_static(b"one"), Precondition::MustNotExist)
            .unwrap();
        let copied = store.copy("a", "b", Precondition::MustNotExist).unwrap();
        assert_eq!(store.get("b").unwrap().version, copied.unwrap());
        assert_eq!(store.copied_from("b").as_deref(), Some("a"));
        assert_eq!(store.copied_from("a"), None);
        let conflict = store
            .copy("a", "b", Precondition::MustNotExist)
            .unwrap_err();
        assert_eq!(conflict.kind(), ErrorKind::Conflict);
        assert_eq!(
            store.gone("evicted"),
            Some(Gone {
                cause: GoneCause::Evicted,
                at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000)
            })
        );
        assert_eq!(store.gone("a"), None);
        assert_eq!(store.raw_size("a", &v1), Some(42));
        assert_eq!(store.raw_size("a", &Version("2".into())), None);
        assert_eq!(store.usage().unwrap().evictions, 0, "no pins yet");
        store.set_pins(Pins::new(|name| name == "held"));
        let usage = store.usage().unwrap();
        assert_eq!((usage.heaps, usage.max_bytes), (2, Some(7)));
        assert_eq!(usage.evictions, 1, "the plugin asked the host's pins");
        crate::conformance::run(&store, "capable-");

        // A store with none says "cannot" for each.
        let plain = through_boundary();
        plain
            .put("a", Bytes::from_static(b"one"), Precondition::Any)
            .unwrap();
        assert_eq!(plain.copy("a", "b", Precondition::Any).unwrap(), None);
        assert_eq!(plain.get("b").unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!((plain.gone("a"), plain.usage()), (None, None));
    }

    fn through_boundary() -> ForeignHeapStore {
        ForeignHeapStore::new(FfiHeapStore::new(Toy::default()))
    }

    #[test]
    fn round_trips_every_method() {
        let store = through_boundary();
        assert_eq!(store.info(), BackendInfo::new("toy", "1"));
        let v1 = store
            .put("a", Bytes::from_static(b"one"), Precondition::MustNotExist)
            .unwrap();
        let got = store.get("a").unwrap();
        assert_eq!(got.bytes, &b"one"[..]);
        assert_eq!(got.version, v1);
        let v2 = store
            .put(
                "a",
                Bytes::from_static(b"two"),
                Precondition::MustMatch(v1.clone()),
            )
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
        let v1 = store
            .put("a", Bytes::from_static(b"x"), Precondition::Any)
            .unwrap();
        store
            .put("a", Bytes::from_static(b"y"), Precondition::Any)
            .unwrap();
        let stale = store
            .put("a", Bytes::from_static(b"z"), Precondition::MustMatch(v1))
            .unwrap_err();
        assert_eq!(stale.kind(), ErrorKind::Conflict);
        assert_eq!(stale.message(), "heap 'a' is no longer at version 1");
        let exists = store
            .put("a", Bytes::from_static(b"z"), Precondition::MustNotExist)
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
        let err = store
            .put("boom", Bytes::from_static(b"x"), Precondition::Any)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Other);
        assert!(err.message().contains("panicked in put: kaboom"), "{err}");
        // The store still works afterwards.
        store
            .put("fine", Bytes::from_static(b"x"), Precondition::Any)
            .unwrap();
    }

    #[test]
    fn the_boundary_keeps_the_contract() {
        crate::conformance::run(&through_boundary(), "ffi-");
    }

    #[test]
    fn bytes_cross_both_ways_without_a_copy() {
        let store = through_boundary();
        let blob = Bytes::from(vec![9u8; 1 << 20]);
        store.put("big", blob.clone(), Precondition::Any).unwrap();
        let got = store.get("big").unwrap();
        assert_eq!(
            got.bytes.as_ptr(),
            blob.as_ptr(),
            "a copy crossed the boundary"
        );
        assert_eq!(store.version("big").unwrap(), Some(got.version.clone()));
        assert_eq!(store.version("none").unwrap(), None);
        // Released on both sides: the store's entry and our clone are the only owners left.
        drop(got);
        store.delete("big").unwrap();
        assert!(blob.is_unique(), "a lent buffer was never released");
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
