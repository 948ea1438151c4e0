//! The envelope around every stored heap snapshot.
//!
//! ```text
//! magic "MCPV8HP\0" (8) | format u16 LE | V8 version len u8 | V8 version
//! | heap name len u8 | heap name | payload len u64 LE | checksum u64 LE | payload
//! ```
//!
//! The heap's name binds the snapshot to it: bytes copied from one heap to another are
//! refused. Format 2 had no name field; such heaps are still read.
//!
//! Format 4 marks heaps whose snapshot shares the read-only heap every isolate of a process
//! shares: all heaps made since mcp-v8 runs V8 with `--no-extensible-ro-snapshot`. A heap of
//! format 2 or 3 may carry a read-only heap of its own (V8 promoted objects into it when it
//! was saved), and V8 crashes restoring it while any other isolate lives in the process: the
//! runtime runs such heaps alone ([`ReadOnly::Own`]) and keeps their format when it saves
//! them again, since their read-only heap goes with them.
//!
//! The checksum is XXH3-64 of the payload, seeded with XXH3-64 of every header byte before
//! it, so a flipped bit anywhere is caught. [`open`] checks everything before returning the
//! payload, because V8 aborts the whole process on a snapshot it cannot read.

use bytes::Bytes;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Identifies an mcp-v8 heap.
pub const MAGIC: &[u8; 8] = b"MCPV8HP\0";

/// The envelope format. Bump it whenever a snapshot made by an older build could not be
/// restored by a newer one with the same V8 (e.g. when the set of native functions
/// registered as external references changes).
pub const FORMAT_VERSION: u16 = 4;

/// The format of heaps that carry their own read-only heap, written again when they are saved.
const OWN_READ_ONLY_FORMAT: u16 = 3;

/// The oldest format still read: format 2 lacks the heap name, and its external references
/// are a prefix of format 3's.
const OLDEST_READABLE: u16 = 2;

/// Whose read-only heap a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOnly {
    /// V8's own, shared by every isolate of the process: the snapshot may be restored next
    /// to other isolates.
    Shared,
    /// Its own (a heap from before format 4): it must be restored with no other isolate alive
    /// in the process.
    Own,
}

/// A verified heap: its V8 snapshot, sharing the stored blob's memory, and its kind.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The raw V8 snapshot.
    pub snapshot: Bytes,
    /// Whose read-only heap it holds.
    pub read_only: ReadOnly,
}

/// Why stored bytes cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum EnvelopeError {
    /// Too short, bad magic, bad length or bad checksum.
    #[error("corrupt heap: {0}")]
    Corrupt(String),
    /// A well-formed heap that this build cannot restore.
    #[error("incompatible heap: {0}")]
    Incompatible(String),
    /// The snapshot was made for another heap and stored under this name by hand.
    #[error("the stored snapshot belongs to heap '{0}', not to this one (copied or renamed outside mcp-v8)")]
    OtherHeap(String),
}

/// Wraps the V8 snapshot of heap `heap` for storage: one allocation, one copy of the payload.
pub fn seal(payload: &[u8], heap: &str, read_only: ReadOnly) -> Vec<u8> {
    let format = match read_only {
        ReadOnly::Shared => FORMAT_VERSION,
        ReadOnly::Own => OWN_READ_ONLY_FORMAT,
    };
    seal_as(format, crate::engine::v8_version(), heap, payload)
}

#[cfg(test)]
pub(crate) fn seal_for(v8_version: &str, heap: &str, payload: &[u8]) -> Vec<u8> {
    seal_as(FORMAT_VERSION, v8_version, heap, payload)
}

fn seal_as(format: u16, v8_version: &str, heap: &str, payload: &[u8]) -> Vec<u8> {
    // Both fit a length byte: V8 versions are short, heap names at most 128 bytes (validated).
    let version = &v8_version.as_bytes()[..v8_version.len().min(255)];
    let name = &heap.as_bytes()[..heap.len().min(255)];
    let mut out = Vec::with_capacity(8 + 2 + 2 + version.len() + name.len() + 16 + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&format.to_le_bytes());
    out.push(version.len() as u8);
    out.extend_from_slice(version);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let checksum = xxh3_64_with_seed(payload, xxh3_64(&out));
    out.extend_from_slice(&checksum.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Verifies a blob stored as heap `heap` and returns its V8 payload, sharing `blob`'s memory.
pub fn open(blob: &Bytes, heap: &str) -> Result<Opened, EnvelopeError> {
    open_for(crate::engine::v8_version(), heap, blob)
}

fn open_for(v8_version: &str, heap: &str, blob: &Bytes) -> Result<Opened, EnvelopeError> {
    let mut header = Reader { blob, at: 0 };
    if header.take(MAGIC.len())? != MAGIC {
        return Err(corrupt("the stored data is not an mcp-v8 heap snapshot"));
    }
    let format = u16::from_le_bytes(header.array()?);
    if !(OLDEST_READABLE..=FORMAT_VERSION).contains(&format) {
        return Err(EnvelopeError::Incompatible(format!(
            "it uses heap format {format}, this mcp-v8 reads formats {OLDEST_READABLE} to \
             {FORMAT_VERSION}"
        )));
    }
    let [version_len] = header.array()?;
    let made_by = String::from_utf8_lossy(header.take(usize::from(version_len))?).into_owned();
    let owner = if format >= 3 {
        let [name_len] = header.array()?;
        Some(header.take(usize::from(name_len))?)
    } else {
        None
    };
    let len = u64::from_le_bytes(header.array()?);
    let checksummed = header.at;
    let checksum = u64::from_le_bytes(header.array()?);
    let payload = blob.slice(header.at..);
    if u64::try_from(payload.len()).ok() != Some(len) {
        return Err(EnvelopeError::Corrupt(format!(
            "the header announces {len} bytes of snapshot but {} are stored (truncated or padded)",
            payload.len()
        )));
    }
    if xxh3_64_with_seed(&payload, xxh3_64(&blob[..checksummed])) != checksum {
        return Err(corrupt("checksum mismatch, the stored bytes were altered"));
    }
    if let Some(owner) = owner.filter(|owner| *owner != heap.as_bytes()) {
        return Err(EnvelopeError::OtherHeap(
            String::from_utf8_lossy(owner).into_owned(),
        ));
    }
    if made_by != v8_version {
        return Err(EnvelopeError::Incompatible(format!(
            "it was made by V8 {made_by}, this mcp-v8 runs V8 {v8_version}; start a new heap"
        )));
    }
    let read_only = if format >= 4 {
        ReadOnly::Shared
    } else {
        ReadOnly::Own
    };
    Ok(Opened {
        snapshot: payload,
        read_only,
    })
}

fn corrupt(why: &str) -> EnvelopeError {
    EnvelopeError::Corrupt(why.to_string())
}

/// Reads header fields front to back; running out of bytes is a truncation.
struct Reader<'a> {
    blob: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EnvelopeError> {
        let field = self
            .blob
            .get(self.at..self.at + n)
            .ok_or_else(|| corrupt("the stored data is truncated"))?;
        self.at += n;
        Ok(field)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EnvelopeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V8: &str = "13.5.212.10";

    fn sealed(payload: &[u8]) -> Bytes {
        Bytes::from(seal_for(V8, "h", payload))
    }

    #[test]
    fn round_trips_without_copying() {
        let blob = sealed(b"snapshot bytes");
        let opened = open_for(V8, "h", &blob).unwrap();
        assert_eq!(opened.read_only, ReadOnly::Shared);
        let payload = opened.snapshot;
        assert_eq!(&payload[..], b"snapshot bytes");
        // The payload is a view into the blob, not a copy.
        assert_eq!(
            payload.as_ptr(),
            blob[blob.len() - payload.len()..].as_ptr()
        );
    }

    #[test]
    fn every_truncation_is_corrupt() {
        let blob = sealed(b"0123456789");
        for len in 0..blob.len() {
            let err = open_for(V8, "h", &blob.slice(..len)).unwrap_err();
            assert!(matches!(err, EnvelopeError::Corrupt(_)), "len {len}: {err}");
        }
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let blob = sealed(b"0123456789");
        for i in 0..blob.len() {
            let mut bad = blob.to_vec();
            bad[i] ^= 0x40;
            let err = open_for(V8, "h", &Bytes::from(bad));
            assert!(err.is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn appended_bytes_are_corrupt() {
        let mut bad = sealed(b"abc").to_vec();
        bad.push(0);
        assert!(matches!(
            open_for(V8, "h", &Bytes::from(bad)),
            Err(EnvelopeError::Corrupt(_))
        ));
    }

    #[test]
    fn foreign_data_is_named_as_such() {
        let err = open_for(V8, "h", &Bytes::from_static(b"{\"not\": \"a heap\"}")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "corrupt heap: the stored data is not an mcp-v8 heap snapshot"
        );
    }

    #[test]
    fn another_v8_version_is_incompatible() {
        let blob = Bytes::from(seal_for("12.0.0.1", "h", b"abc"));
        let err = open_for(V8, "h", &blob).unwrap_err();
        assert!(matches!(err, EnvelopeError::Incompatible(_)));
        assert!(err.to_string().contains("made by V8 12.0.0.1"), "{err}");
    }

    #[test]
    fn another_format_is_incompatible() {
        let mut blob = sealed(b"abc").to_vec();
        blob[8..10].copy_from_slice(&99u16.to_le_bytes());
        let err = open_for(V8, "h", &Bytes::from(blob)).unwrap_err();
        assert!(matches!(err, EnvelopeError::Incompatible(_)), "{err}");
    }

    #[test]
    fn a_snapshot_is_bound_to_its_heap() {
        let blob = sealed(b"abc");
        let err = open_for(V8, "other", &blob).unwrap_err();
        assert_eq!(err, EnvelopeError::OtherHeap("h".into()));
        assert!(err.to_string().contains("belongs to heap 'h'"), "{err}");
    }

    #[test]
    fn format_2_heaps_without_a_name_are_still_read() {
        // Format 2: the same header without the name field.
        let payload = b"old snapshot";
        let mut old = Vec::new();
        old.extend_from_slice(MAGIC);
        old.extend_from_slice(&2u16.to_le_bytes());
        old.push(V8.len() as u8);
        old.extend_from_slice(V8.as_bytes());
        old.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        let checksum = xxh3_64_with_seed(payload, xxh3_64(&old));
        old.extend_from_slice(&checksum.to_le_bytes());
        old.extend_from_slice(payload);
        let opened = open_for(V8, "any-name", &Bytes::from(old)).unwrap();
        assert_eq!(&opened.snapshot[..], payload);
        assert_eq!(opened.read_only, ReadOnly::Own);
    }

    #[test]
    fn heaps_with_their_own_read_only_heap_keep_their_format() {
        let blob = Bytes::from(seal_as(OWN_READ_ONLY_FORMAT, V8, "h", b"abc"));
        assert_eq!(open_for(V8, "h", &blob).unwrap().read_only, ReadOnly::Own);
        let blob = Bytes::from(seal_as(FORMAT_VERSION, V8, "h", b"abc"));
        assert_eq!(
            open_for(V8, "h", &blob).unwrap().read_only,
            ReadOnly::Shared
        );
    }
}
