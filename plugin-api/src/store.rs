use std::time::SystemTime;

use bytes::Bytes;

use crate::journal::{self, Record};
use crate::StoreError;

/// An opaque version token for one stored revision of a heap (an e-tag, a generation, a
/// content hash...). Two reads return equal tokens only if nothing was written between
/// them. Only the store that issued a token can interpret it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(pub String);

impl Version {
    /// The token as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The condition under which a [`HeapStore::put`] may write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// Write unconditionally.
    Any,
    /// Write only if no heap of that name exists (create).
    MustNotExist,
    /// Write only if the stored heap is still at this version (compare-and-swap).
    MustMatch(Version),
}

impl Precondition {
    /// Checks the precondition against the version stored now (`None`: no such heap) and
    /// returns the contract's [`crate::ErrorKind::Conflict`] error when it does not hold.
    /// A store calls this while it holds whatever lock makes check-then-write atomic.
    ///
    /// ```
    /// use mcp_v8_plugin_api::{ErrorKind, Precondition, Version};
    /// let v1 = Version("1".into());
    /// assert!(Precondition::MustMatch(v1.clone()).check("h", Some(&v1)).is_ok());
    /// let err = Precondition::MustNotExist.check("h", Some(&v1)).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::Conflict);
    /// ```
    pub fn check(&self, name: &str, current: Option<&Version>) -> Result<(), StoreError> {
        match (self, current) {
            (Precondition::Any, _) | (Precondition::MustNotExist, None) => Ok(()),
            (Precondition::MustNotExist, Some(_)) => Err(StoreError::conflict(format!(
                "heap '{name}' already exists"
            ))),
            (Precondition::MustMatch(expected), current) if current == Some(expected) => Ok(()),
            (Precondition::MustMatch(expected), _) => Err(StoreError::conflict(format!(
                "heap '{name}' is no longer at version {expected}"
            ))),
        }
    }
}

/// A stored heap as read back: its bytes and the version they are at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The bytes exactly as they were put. [`Bytes`] lets a store hand out what it holds
    /// (or what its client library returned) without a copy.
    pub bytes: Bytes,
    /// The version of these bytes, for a later conditional put.
    pub version: Version,
}

/// What [`HeapStore::list`] says about one heap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeapMeta {
    /// The heap name.
    pub name: String,
    /// Size of the stored bytes.
    pub size: u64,
    /// Current version.
    pub version: Version,
    /// When it was last written.
    pub last_modified: SystemTime,
}

/// The name and version of a storage backend, for logs and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    /// A short name, e.g. `"file"` or `"s3"`.
    pub name: String,
    /// The backend's own version.
    pub version: String,
}

impl BackendInfo {
    /// A backend called `name` at `version`.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
        }
    }
}

/// Who besides this process may write the heaps a store holds: how much the host may trust
/// what it holds in memory without asking the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Sharing {
    /// Only this process (the host's memory store).
    Process,
    /// Processes on this machine (a local directory).
    Machine,
    /// Processes anywhere (a bucket, a database): the default.
    Network,
}

/// Why a store no longer holds a heap it held, having dropped it on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneCause {
    /// Dropped to stay within the store's size limit.
    Evicted,
    /// Unused for longer than the store keeps heaps.
    Expired,
}

/// A heap a store dropped on its own, and when ([`HeapStore::gone`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone {
    /// Why.
    pub cause: GoneCause,
    /// When.
    pub at: std::time::SystemTime,
}

/// What a store holds, for its statistics ([`HeapStore::usage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Heaps held.
    pub heaps: u64,
    /// Stored bytes held (journals included).
    pub bytes: u64,
    /// The same heaps' snapshots before the host compressed them.
    pub raw_bytes: u64,
    /// The store's limit, if it has one.
    pub max_bytes: Option<u64>,
    /// Heaps dropped for the size limit so far.
    pub evictions: u64,
    /// Heaps dropped for being unused so far.
    pub expirations: u64,
}

/// The host's answer to "is this heap in use?" (a call runs on it or its state is being
/// stored), for a store that drops heaps on its own ([`HeapStore::set_pins`]).
#[derive(Clone)]
pub struct Pins(std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl Pins {
    /// Pins that answer with `pinned`.
    pub fn new(pinned: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(pinned))
    }

    /// Whether heap `name` is in use.
    pub fn pinned(&self, name: &str) -> bool {
        (self.0)(name)
    }
}

impl std::fmt::Debug for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pins")
    }
}

/// A store of heap snapshots and their journals: the one contract every store fulfils — the host's built-in
/// memory store, the bundled file and S3 plugins, and any third-party plugin. Run
/// [`crate::conformance::run`] against yours.
///
/// Methods are synchronous and may block (the host calls a plugin's from a blocking thread
/// pool, under a time limit) and are called concurrently from several threads. Names passed
/// in have been validated by the host with [`crate::validate_heap_name`]; a store that maps
/// names to paths or keys should validate them again.
///
/// Errors should use the most specific [`crate::ErrorKind`]: the host reports
/// [`crate::ErrorKind::Conflict`] as "changed concurrently, retry" and
/// [`crate::ErrorKind::Unavailable`] as retryable.
pub trait HeapStore: Send + Sync + 'static {
    /// The backend's name and version.
    fn info(&self) -> BackendInfo;

    /// Reads a heap. A missing heap is an error of kind [`crate::ErrorKind::NotFound`].
    fn get(&self, name: &str) -> Result<Snapshot, StoreError>;

    /// Writes a heap if `precondition` holds, atomically: a reader sees the old bytes or
    /// the new ones, never a mix. Returns the new version. A failed precondition is an
    /// error of kind [`crate::ErrorKind::Conflict`] and writes nothing. The bytes are the
    /// store's to keep (no copy is needed to hold on to them or hand them to a client).
    fn put(
        &self,
        name: &str,
        bytes: Bytes,
        precondition: Precondition,
    ) -> Result<Version, StoreError>;

    /// Removes a heap. A missing heap is an error of kind [`crate::ErrorKind::NotFound`].
    fn delete(&self, name: &str) -> Result<(), StoreError>;

    /// Lists the heaps whose names start with `prefix` (all of them for `""`), in any order.
    fn list(&self, prefix: &str) -> Result<Vec<HeapMeta>, StoreError>;

    /// The version heap `name` is at now, `None` when it does not exist. The host asks this
    /// before every run on a heap it holds in memory, to never serve a heap another process
    /// changed, so answer it cheaply (a `stat`, a `HEAD` request). The default lists by name.
    fn version(&self, name: &str) -> Result<Option<Version>, StoreError> {
        Ok(self
            .list(name)?
            .into_iter()
            .find(|m| m.name == name)
            .map(|m| m.version))
    }

    /// Appends `record` to heap `name`'s journal ([`crate::journal`]) unless the journal
    /// already holds a record with its number: then an error of kind
    /// [`crate::ErrorKind::Conflict`] (see [`crate::journal::taken`]), and nothing is written.
    /// When it returns the record is as durable as the store's puts, because the host answers
    /// the call the record commits right after. The journal is independent of the heap's
    /// entry: one may exist without the other.
    ///
    /// The default keeps the record as an entry under a reserved name, put with
    /// [`Precondition::MustNotExist`].
    fn append(&self, name: &str, record: Record) -> Result<(), StoreError> {
        journal::append(self, name, record)
    }

    /// The records of heap `name`'s journal numbered above `after`, in ascending order;
    /// empty when there are none. Numbers may have gaps (records trimmed meanwhile, or never
    /// written by a writer that failed); the host tells what they mean.
    fn read_journal(&self, name: &str, after: u64) -> Result<Vec<Record>, StoreError> {
        journal::read(self, name, after)
    }

    /// Removes the records of heap `name`'s journal numbered `through` or below (all of them
    /// for `u64::MAX`): a checkpoint covers them. Records that are not there are no error.
    fn trim_journal(&self, name: &str, through: u64) -> Result<(), StoreError> {
        journal::trim(self, name, through)
    }

    /// Who else may write this store's heaps. The default, [`Sharing::Network`], makes the
    /// host check with the store before every run on a heap it holds in memory; a store that
    /// only this process can reach says [`Sharing::Process`].
    fn sharing(&self) -> Sharing {
        Sharing::Network
    }

    // Capabilities: what some stores can do better than the host can with the methods
    // above. Each default says "cannot", and the host does without. All but `copy` are
    // called on the host's async threads: answer them from memory, at once.

    /// Copies heap `from` to a new heap `to` inside the store (sharing or server-side
    /// copying its bytes) if `precondition` holds for `to`, and returns `to`'s version; a
    /// missing `from` is [`crate::ErrorKind::NotFound`]. The copy's bytes are `from`'s, which
    /// the host bound to `from`'s name: a store that copies must say so through
    /// [`HeapStore::copied_from`]. The default, `Ok(None)`, makes the host copy (read, seal
    /// again for the new name, write).
    fn copy(
        &self,
        from: &str,
        to: &str,
        precondition: Precondition,
    ) -> Result<Option<Version>, StoreError> {
        let _ = (from, to, precondition);
        Ok(None)
    }

    /// For a heap made by [`HeapStore::copy`]: the heap whose bytes it holds. The default
    /// says none.
    fn copied_from(&self, name: &str) -> Option<String> {
        let _ = name;
        None
    }

    /// Why the store dropped heap `name` on its own lately (size limit, time to live), if it
    /// did: the host tells the next call on it why it starts empty. The default says never.
    fn gone(&self, name: &str) -> Option<Gone> {
        let _ = name;
        None
    }

    /// The size of heap `name`'s snapshot before the host compressed it, if the store knows
    /// it without reading the heap and the heap is still at `version` (the host reads it from
    /// the envelope's header otherwise). The default does not know.
    fn raw_size(&self, name: &str, version: &Version) -> Option<u64> {
        let _ = (name, version);
        None
    }

    /// What the store holds, if it keeps count; the default does not.
    fn usage(&self) -> Option<Usage> {
        None
    }

    /// Hands the store the host's pins: a store that drops heaps on its own must never drop
    /// one they name. Called once, before any other method. The default ignores them.
    fn set_pins(&self, pins: Pins) {
        let _ = pins;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn preconditions_hold_or_conflict() {
        let v1 = Version("1".into());
        let v2 = Version("2".into());
        let ok = |p: Precondition, current: Option<&Version>| p.check("h", current).is_ok();
        assert!(ok(Precondition::Any, None) && ok(Precondition::Any, Some(&v1)));
        assert!(ok(Precondition::MustNotExist, None));
        assert!(!ok(Precondition::MustNotExist, Some(&v1)));
        assert!(ok(Precondition::MustMatch(v1.clone()), Some(&v1)));
        assert!(!ok(Precondition::MustMatch(v1.clone()), Some(&v2)));
        assert!(!ok(Precondition::MustMatch(v1.clone()), None));
        let err = Precondition::MustMatch(v1)
            .check("h", Some(&v2))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert_eq!(err.message(), "heap 'h' is no longer at version 1");
    }
}
