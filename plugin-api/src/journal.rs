//! A heap's journal: small records appended after its snapshot, one per committed call.
//!
//! The host commits a call on a heap by appending one [`Record`] numbered one above the last,
//! and answers only once the append returns: the record is the call's durable effect. Now and
//! then it stores a new snapshot that covers the records so far (a checkpoint) and trims
//! them. What a record holds is the host's business; to a store it is opaque bytes under a
//! sequence number.
//!
//! Appending is the journal's compare-and-swap: [`crate::HeapStore::append`] writes a record
//! only if the journal holds none with that number, so of two writers that ran on the same
//! state exactly one commits. A journal lives beside its heap's snapshot, not inside it:
//! [`crate::HeapStore::delete`] does not touch it, and [`crate::HeapStore::list`] does not show
//! it (except that `list` shows the default journal's entries, under [`RESERVED_PREFIX`],
//! which the host skips).
//!
//! A store that does not implement the journal methods gets them from the contract's
//! defaults, which keep each record as an ordinary entry under a reserved name
//! ([`entry_name`]) using the store's `put`, `get`, `list` and `delete`. Native
//! implementations are faster (the bundled stores have them), but the defaults keep the
//! contract: append is a `put` with [`crate::Precondition::MustNotExist`].

use bytes::Bytes;

use crate::{ErrorKind, HeapStore, Precondition, StoreError};

/// One record of a heap's journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its number: records of one heap are numbered upwards, and one number is written once.
    pub seq: u64,
    /// The bytes exactly as appended.
    pub bytes: Bytes,
}

impl Record {
    /// Record `seq` holding `bytes`.
    pub fn new(seq: u64, bytes: impl Into<Bytes>) -> Self {
        Self {
            seq,
            bytes: bytes.into(),
        }
    }
}

/// The start of every entry name the default journal methods use. No heap may be named so
/// (the host refuses it), so [`crate::HeapStore::list`] results that start with it are
/// journal entries, not heaps.
pub const RESERVED_PREFIX: &str = "_mcp-v8-journal.";

/// Whether `name` is an entry of a default journal rather than a heap.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// The entry under which the default journal keeps record `seq` of heap `heap`:
/// `_mcp-v8-journal.<hash of the heap name>.<seq>`, both in 16 hex digits, so that it is a
/// valid heap name of fixed length whatever the heap's name, and a heap's records list by
/// prefix in order. The record's bytes identify their heap, should two names ever share a
/// hash: the host puts the heap name in every record.
pub fn entry_name(heap: &str, seq: u64) -> String {
    format!("{}{seq:016x}", entry_prefix(heap))
}

/// The prefix of every default journal entry of `heap`.
fn entry_prefix(heap: &str) -> String {
    format!("{RESERVED_PREFIX}{:016x}.", fnv1a(heap.as_bytes()))
}

/// FNV-1a, 64 bits: fixed by its definition, so every build of every host and plugin names a
/// heap's records alike (std's hashers may change between Rust releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The sequence number in a default journal entry of `heap`, if `name` is one.
fn seq_of(heap_prefix: &str, name: &str) -> Option<u64> {
    let digits = name.strip_prefix(heap_prefix)?;
    if digits.len() != 16 {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// [`crate::HeapStore::append`] on ordinary entries.
pub(crate) fn append<S: HeapStore + ?Sized>(
    store: &S,
    heap: &str,
    record: Record,
) -> Result<(), StoreError> {
    let entry = entry_name(heap, record.seq);
    match store.put(&entry, record.bytes, Precondition::MustNotExist) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::Conflict => Err(taken(heap, record.seq)),
        Err(e) => Err(e),
    }
}

/// [`crate::HeapStore::read_journal`] on ordinary entries.
pub(crate) fn read<S: HeapStore + ?Sized>(
    store: &S,
    heap: &str,
    after: u64,
) -> Result<Vec<Record>, StoreError> {
    let prefix = entry_prefix(heap);
    let mut seqs: Vec<u64> = store
        .list(&prefix)?
        .iter()
        .filter_map(|meta| seq_of(&prefix, &meta.name))
        .filter(|seq| *seq > after)
        .collect();
    seqs.sort_unstable();
    let mut records = Vec::with_capacity(seqs.len());
    for seq in seqs {
        match store.get(&entry_name(heap, seq)) {
            Ok(stored) => records.push(Record::new(seq, stored.bytes)),
            // Trimmed since the listing: a checkpoint covers it now, and the records after it
            // are still read, so the caller sees the gap and reads the checkpoint again.
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(records)
}

/// [`crate::HeapStore::trim_journal`] on ordinary entries.
pub(crate) fn trim<S: HeapStore + ?Sized>(
    store: &S,
    heap: &str,
    through: u64,
) -> Result<(), StoreError> {
    let prefix = entry_prefix(heap);
    for meta in store.list(&prefix)? {
        if seq_of(&prefix, &meta.name).is_some_and(|seq| seq <= through) {
            match store.delete(&meta.name) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// The error of an append whose number is taken: another writer committed first.
pub fn taken(heap: &str, seq: u64) -> StoreError {
    StoreError::conflict(format!(
        "heap '{heap}' already has journal record {seq}: another writer committed first"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate_heap_name;

    #[test]
    fn entry_names_are_valid_fixed_length_and_sort_by_number() {
        let long = "h".repeat(crate::MAX_HEAP_NAME_LEN);
        for heap in ["a", "A", long.as_str()] {
            let names: Vec<String> = [0, 1, 255, u64::MAX]
                .iter()
                .map(|seq| entry_name(heap, *seq))
                .collect();
            for name in &names {
                validate_heap_name(name).unwrap();
                assert!(is_reserved(name));
                assert_eq!(name.len(), RESERVED_PREFIX.len() + 33);
            }
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(sorted, names);
            assert_eq!(seq_of(&entry_prefix(heap), &names[2]), Some(255));
        }
        assert_ne!(entry_name("a", 1), entry_name("A", 1));
        // The hash is FNV-1a's published value, so it never changes between builds.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(seq_of(&entry_prefix("a"), &entry_name("b", 1)), None);
    }
}
