//! The envelope around every stored heap snapshot.
//!
//! ```text
//! magic "MCPV8HP\0" (8) | format u16 LE | V8 version len u8 | V8 version
//! | heap name len u8 | heap name | flags u8 | codec u8 | snapshot len u64 LE
//! | lineage u64 LE | through u64 LE | chain u64 LE
//! | payload len u64 LE | checksum u64 LE | payload
//! ```
//!
//! Lineage, through and chain say where the snapshot stands in its heap's journal
//! ([`Position`]); format 9 added them, and older heaps read as standing before any record.
//! Format 10 added a native function (`WeakRef.prototype.deref`, see [`crate::engine`]);
//! format 11 another (the host call behind `tools`).
//!
//! The payload is the V8 snapshot as the codec stored it: as it is (`0`) or compressed with
//! zstd (`1`). The checksum covers the header and the snapshot V8 will read (after
//! decompression), so what reaches V8 is exactly what was sealed. Flag bit 0 marks a snapshot
//! with its own read-only heap ([`ReadOnly::Own`]). Formats 2 to 4 had neither flags, codec
//! nor snapshot length (the payload was the snapshot) and are still read.
//!
//! The heap's name binds the snapshot to it: bytes copied from one heap to another are
//! refused. Format 2 had no name field; such heaps are still read.
//!
//! Format 4 marked heaps whose snapshot shares the read-only heap every isolate of a process
//! shares: all heaps made since mcp-v8 runs V8 with `--no-extensible-ro-snapshot`. A heap of
//! format 2 or 3 may carry a read-only heap of its own (V8 promoted objects into it when it
//! was saved), and V8 crashes restoring it while any other isolate lives in the process: the
//! runtime runs such heaps alone ([`ReadOnly::Own`]) and keeps that mark (flag bit 0) when it
//! saves them again, since their read-only heap goes with them.
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
pub const FORMAT_VERSION: u16 = 13;

/// Flag bit: the snapshot carries its own read-only heap.
const FLAG_OWN_READ_ONLY: u8 = 1;

/// Largest snapshot a compressed payload may announce (V8 heaps are limited to 16 GiB).
const MAX_SNAPSHOT: u64 = 32 << 30;

/// The zstd level heaps are compressed at. Measured on real snapshots (`--bench envelope`):
/// level 3 packs an 11.6 MB snapshot 14.3× in 23 ms where level 1 packs it 9.8× in 19 ms and
/// level 9 14.8× in 157 ms; decompressing costs the same for all.
pub const ZSTD_LEVEL: i32 = 3;

/// How a snapshot is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// As V8 made it.
    None,
    /// Compressed with zstd at [`ZSTD_LEVEL`].
    Zstd,
}

impl Codec {
    fn id(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Zstd => 1,
        }
    }
}

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

/// A verified heap: its V8 snapshot (sharing the stored blob's memory unless it was
/// compressed) and its kind.
/// Where a snapshot stands in its heap's journal: it holds the effect of every record up to
/// `through`, and no later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Chosen when the heap is made: a heap deleted and made again under the same name is
    /// another lineage, whose records never mix with the old one's.
    pub lineage: u64,
    /// The number of the last journal record the snapshot holds (0: none).
    pub through: u64,
    /// The journal's chain value after that record ([`crate::record`]): the next record
    /// names it.
    pub chain: u64,
}

/// A stored heap opened: its snapshot, checked, and where it stands in its journal.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The raw V8 snapshot.
    pub snapshot: Bytes,
    /// Where it stands in its heap's journal.
    pub position: Position,
    /// Whose read-only heap it holds.
    pub read_only: ReadOnly,
    /// How it was stored.
    pub codec: Codec,
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

/// Wraps the V8 snapshot of heap `heap` for storage, compressed as `codec` says.
pub fn seal(
    snapshot: &[u8],
    heap: &str,
    read_only: ReadOnly,
    codec: Codec,
    position: Position,
) -> Vec<u8> {
    seal_as(
        crate::engine::v8_version(),
        heap,
        snapshot,
        read_only,
        codec,
        position,
    )
}

#[cfg(test)]
pub(crate) fn seal_for(v8_version: &str, heap: &str, snapshot: &[u8]) -> Vec<u8> {
    seal_as(
        v8_version,
        heap,
        snapshot,
        ReadOnly::Shared,
        Codec::None,
        Position::default(),
    )
}

fn seal_as(
    v8_version: &str,
    heap: &str,
    snapshot: &[u8],
    read_only: ReadOnly,
    codec: Codec,
    position: Position,
) -> Vec<u8> {
    let compressed = match codec {
        Codec::None => None,
        // Compressing into memory cannot fail short of an allocation failure; should it,
        // the snapshot is stored as it is.
        Codec::Zstd => zstd::bulk::compress(snapshot, ZSTD_LEVEL).ok(),
    };
    let (codec, payload) = match &compressed {
        Some(compressed) => (codec, compressed.as_slice()),
        None => (Codec::None, snapshot),
    };
    // Both fit a length byte: V8 versions are short, heap names at most 128 bytes (validated).
    let version = &v8_version.as_bytes()[..v8_version.len().min(255)];
    let name = &heap.as_bytes()[..heap.len().min(255)];
    let mut out = Vec::with_capacity(8 + 4 + 2 + version.len() + name.len() + 24 + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(version.len() as u8);
    out.extend_from_slice(version);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.push(match read_only {
        ReadOnly::Shared => 0,
        ReadOnly::Own => FLAG_OWN_READ_ONLY,
    });
    out.push(codec.id());
    out.extend_from_slice(&(snapshot.len() as u64).to_le_bytes());
    out.extend_from_slice(&position.lineage.to_le_bytes());
    out.extend_from_slice(&position.through.to_le_bytes());
    out.extend_from_slice(&position.chain.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let checksum = xxh3_64_with_seed(snapshot, xxh3_64(&out));
    out.extend_from_slice(&checksum.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Verifies a blob stored as heap `heap` and returns its V8 payload, sharing `blob`'s memory.
pub fn open(blob: &Bytes, heap: &str) -> Result<Opened, EnvelopeError> {
    open_for(crate::engine::v8_version(), heap, blob)
}

/// What an envelope's header says, read without touching the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The V8 version that made the snapshot.
    pub made_by: String,
    /// The heap it was sealed for (`None` for format 2, which did not record it).
    pub heap: Option<String>,
    /// Whose read-only heap it holds.
    pub read_only: ReadOnly,
    /// How the payload is stored.
    pub codec: Codec,
    /// The size of the V8 snapshot, before compression.
    pub raw_len: u64,
    /// Where the snapshot stands in its heap's journal.
    pub position: Position,
    /// Where the checksummed header ends and the checksum begins.
    checksummed: usize,
    checksum: u64,
    /// Where the payload begins.
    payload_at: usize,
}

/// Reads and checks an envelope's header (magic, format, lengths), not its checksum: cheap
/// enough to run on every stored heap, e.g. for its raw size or to sort out a dump.
pub fn header(blob: &[u8]) -> Result<Header, EnvelopeError> {
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
    let heap = if format >= 3 {
        let [name_len] = header.array()?;
        Some(String::from_utf8_lossy(header.take(usize::from(name_len))?).into_owned())
    } else {
        None
    };
    let (read_only, codec, snapshot_len) = if format >= 5 {
        let [flags, codec] = header.array()?;
        let read_only = if flags & FLAG_OWN_READ_ONLY != 0 {
            ReadOnly::Own
        } else {
            ReadOnly::Shared
        };
        let codec = match codec {
            0 => Codec::None,
            1 => Codec::Zstd,
            other => {
                return Err(EnvelopeError::Incompatible(format!(
                    "its snapshot is stored with codec {other}, which this mcp-v8 does not know"
                )))
            }
        };
        (read_only, codec, Some(u64::from_le_bytes(header.array()?)))
    } else if format == 4 {
        (ReadOnly::Shared, Codec::None, None)
    } else {
        (ReadOnly::Own, Codec::None, None)
    };
    let position = if format >= 9 {
        Position {
            lineage: u64::from_le_bytes(header.array()?),
            through: u64::from_le_bytes(header.array()?),
            chain: u64::from_le_bytes(header.array()?),
        }
    } else {
        Position::default()
    };
    let len = u64::from_le_bytes(header.array()?);
    let checksummed = header.at;
    let checksum = u64::from_le_bytes(header.array()?);
    let stored = blob.len() - header.at;
    if u64::try_from(stored).ok() != Some(len) {
        return Err(EnvelopeError::Corrupt(format!(
            "the header announces {len} bytes of snapshot but {stored} are stored (truncated or padded)"
        )));
    }
    let raw_len = match (codec, snapshot_len) {
        (Codec::Zstd, Some(raw)) if raw > MAX_SNAPSHOT => {
            return Err(corrupt("the header announces an impossibly large snapshot"))
        }
        (Codec::Zstd, Some(raw)) => raw,
        (_, Some(raw)) if raw != len => return Err(corrupt("the snapshot's two lengths disagree")),
        _ => len,
    };
    Ok(Header {
        made_by,
        heap,
        read_only,
        codec,
        raw_len,
        position,
        checksummed,
        checksum,
        payload_at: header.at,
    })
}

fn open_for(v8_version: &str, heap: &str, blob: &Bytes) -> Result<Opened, EnvelopeError> {
    let header = self::header(blob)?;
    let payload = blob.slice(header.payload_at..);
    let snapshot = match header.codec {
        Codec::Zstd => match decompress(&payload, header.raw_len) {
            Some(snapshot) => Bytes::from(snapshot),
            None => return Err(corrupt(ALTERED)),
        },
        Codec::None => payload,
    };
    if xxh3_64_with_seed(&snapshot, xxh3_64(&blob[..header.checksummed])) != header.checksum {
        return Err(corrupt(ALTERED));
    }
    if let Some(owner) = header.heap.filter(|owner| owner != heap) {
        return Err(EnvelopeError::OtherHeap(owner));
    }
    if header.made_by != v8_version {
        return Err(EnvelopeError::Incompatible(format!(
            "it was made by V8 {}, this mcp-v8 runs V8 {v8_version}; start a new heap",
            header.made_by
        )));
    }
    Ok(Opened {
        snapshot,
        position: header.position,
        read_only: header.read_only,
        codec: header.codec,
    })
}

/// The zstd `payload` decompressed, if it decodes to exactly `len` bytes. Memory grows with
/// what actually decodes, never past `len` + 1, whatever the header claims. Altered bytes
/// fail to decode or decode to other bytes, which the checksum then catches.
fn decompress(payload: &[u8], len: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    let decoder = zstd::stream::read::Decoder::new(payload).ok()?;
    let ahead = usize::try_from(len)
        .unwrap_or(usize::MAX)
        .min(payload.len().saturating_mul(4));
    let mut snapshot = Vec::with_capacity(ahead);
    decoder
        .take(len.saturating_add(1))
        .read_to_end(&mut snapshot)
        .ok()?;
    (snapshot.len() as u64 == len).then_some(snapshot)
}

/// What a checksum mismatch says.
const ALTERED: &str = "checksum mismatch, the stored bytes were altered";

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
    fn the_journal_position_round_trips_and_older_heaps_stand_before_any_record() {
        let position = Position {
            lineage: 7,
            through: u64::MAX - 3,
            chain: 0xdead_beef,
        };
        let blob = Bytes::from(seal_as(
            V8,
            "h",
            b"abc",
            ReadOnly::Shared,
            Codec::Zstd,
            position,
        ));
        assert_eq!(open_for(V8, "h", &blob).unwrap().position, position);
        let old = Bytes::from(old_format(4, "h", b"abc"));
        assert_eq!(
            open_for(V8, "h", &old).unwrap().position,
            Position::default()
        );
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
    fn heaps_with_their_own_read_only_heap_keep_their_mark() {
        for codec in [Codec::None, Codec::Zstd] {
            let blob = Bytes::from(seal_as(
                V8,
                "h",
                b"abc",
                ReadOnly::Own,
                codec,
                Position::default(),
            ));
            assert_eq!(open_for(V8, "h", &blob).unwrap().read_only, ReadOnly::Own);
            let blob = Bytes::from(seal_as(
                V8,
                "h",
                b"abc",
                ReadOnly::Shared,
                codec,
                Position::default(),
            ));
            assert_eq!(
                open_for(V8, "h", &blob).unwrap().read_only,
                ReadOnly::Shared
            );
        }
        // Format 3 and 4 heaps (no flags) say it with their format.
        for (format, read_only) in [(3u16, ReadOnly::Own), (4, ReadOnly::Shared)] {
            let blob = Bytes::from(old_format(format, "h", b"abc"));
            assert_eq!(open_for(V8, "h", &blob).unwrap().read_only, read_only);
        }
    }

    /// A heap as formats 3 and 4 sealed it: no flags, codec or snapshot length.
    fn old_format(format: u16, heap: &str, payload: &[u8]) -> Vec<u8> {
        let mut old = Vec::new();
        old.extend_from_slice(MAGIC);
        old.extend_from_slice(&format.to_le_bytes());
        old.push(V8.len() as u8);
        old.extend_from_slice(V8.as_bytes());
        old.push(heap.len() as u8);
        old.extend_from_slice(heap.as_bytes());
        old.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        let checksum = xxh3_64_with_seed(payload, xxh3_64(&old));
        old.extend_from_slice(&checksum.to_le_bytes());
        old.extend_from_slice(payload);
        old
    }

    /// Something like a V8 snapshot: repetitive, with some variety.
    fn snapshot_like(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i * 7) % 251) as u8 ^ ((i >> 9) as u8))
            .collect()
    }

    #[test]
    fn compressed_heaps_round_trip_and_are_smaller() {
        let snapshot = snapshot_like(1 << 20);
        let blob = Bytes::from(seal_as(
            V8,
            "h",
            &snapshot,
            ReadOnly::Shared,
            Codec::Zstd,
            Position::default(),
        ));
        assert!(blob.len() < snapshot.len() / 2, "{}", blob.len());
        let opened = open_for(V8, "h", &blob).unwrap();
        assert_eq!(opened.codec, Codec::Zstd);
        assert_eq!(&opened.snapshot[..], &snapshot[..]);
        // Heaps stored uncompressed read the same.
        let plain = Bytes::from(seal_as(
            V8,
            "h",
            &snapshot,
            ReadOnly::Shared,
            Codec::None,
            Position::default(),
        ));
        let opened = open_for(V8, "h", &plain).unwrap();
        assert_eq!(opened.codec, Codec::None);
        assert_eq!(&opened.snapshot[..], &snapshot[..]);
    }

    #[test]
    fn every_damage_to_a_compressed_heap_is_caught() {
        let snapshot = snapshot_like(64 << 10);
        let blob = seal_as(
            V8,
            "h",
            &snapshot,
            ReadOnly::Shared,
            Codec::Zstd,
            Position::default(),
        );
        for i in (0..blob.len()).step_by(37) {
            let mut bad = blob.clone();
            bad[i] ^= 0x10;
            let result = open_for(V8, "h", &Bytes::from(bad));
            assert!(
                matches!(
                    result,
                    Err(EnvelopeError::Corrupt(_) | EnvelopeError::Incompatible(_))
                ),
                "byte {i}: {result:?}"
            );
        }
        for len in (0..blob.len()).step_by(97) {
            assert!(open_for(V8, "h", &Bytes::from(blob[..len].to_vec())).is_err());
        }
    }

    #[test]
    fn a_header_announcing_a_huge_snapshot_is_refused_without_allocating_it() {
        let snapshot = snapshot_like(4096);
        let mut blob = seal_as(
            V8,
            "h",
            &snapshot,
            ReadOnly::Shared,
            Codec::Zstd,
            Position::default(),
        );
        let at = blob
            .windows(8)
            .position(|w| w == (snapshot.len() as u64).to_le_bytes())
            .unwrap();
        blob[at..at + 8].copy_from_slice(&(16u64 << 30).to_le_bytes());
        let err = open_for(V8, "h", &Bytes::from(blob)).unwrap_err();
        assert!(matches!(err, EnvelopeError::Corrupt(_)), "{err}");
    }
}
