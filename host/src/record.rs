//! A heap's journal records as stored: one per committed call, what replaying it needs.
//!
//! ```text
//! magic "MCPV8RC\0" (8) | format u16 LE | meta len u32 LE | state len u64 LE
//! | checksum u64 LE | meta (JSON) | state
//! ```
//!
//! The meta says which heap, lineage and number the record is, the chain value it follows,
//! and what the call did: for a call that can be replayed ([`Effect::Call`]) its code, its
//! heap limit, its [`Tape`] and the fingerprint of what it showed; for one that cannot
//! ([`Effect::State`]) the state it left, as a sealed envelope in the state section. The
//! checksum is XXH3-64 of everything after it, seeded with XXH3-64 of the header before it.
//!
//! Records form a chain: each names the chain value of the record (or snapshot) it follows,
//! and its own chain value ([`Record::chain`]) covers its bytes and that value, so a record
//! written by a writer that ran on another state never passes for the next one.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::engine::Tape;

/// Identifies a journal record.
pub const MAGIC: &[u8; 8] = b"MCPV8RC\0";
/// The record format.
pub const FORMAT: u16 = 1;
/// The largest meta section a record may have (the code is in it).
pub const MAX_META: usize = 64 << 20;
const HEADER: usize = 8 + 2 + 4 + 8 + 8;

/// One committed call on a heap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The heap.
    pub heap: String,
    /// The heap's lineage ([`crate::envelope::Position::lineage`]).
    pub lineage: u64,
    /// Its number in the heap's journal.
    pub seq: u64,
    /// The chain value of what it follows.
    pub prev: u64,
    /// When it was committed, in ms since the Unix epoch.
    pub at_ms: u64,
    /// The start of what the call returned, for the heap's history.
    #[serde(default)]
    pub output: String,
    /// What the call did.
    pub effect: Effect,
}

/// What a committed call did to its heap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Ran code that a replay reproduces.
    Call {
        /// The code as the caller sent it.
        code: String,
        /// The heap limit it ran under, in bytes.
        heap_bytes: usize,
        /// What it read from outside the heap.
        tape: Tape,
        /// [`crate::engine::fingerprint`] of what it showed.
        fingerprint: u64,
    },
    /// Left this state (a sealed envelope), because a replay would not reproduce the call.
    State {
        /// Why the call cannot be replayed.
        why: String,
        /// The envelope (in the record's state section, not in its meta).
        #[serde(skip)]
        envelope: Bytes,
    },
}

/// Why stored bytes are not a record this build can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Damaged, truncated or not a record.
    #[error("corrupt journal record: {0}")]
    Corrupt(String),
    /// A record format this build does not read.
    #[error("journal record of format {0}, this mcp-v8 reads format {FORMAT}")]
    Incompatible(u16),
}

impl Record {
    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let state: &[u8] = match &self.effect {
            Effect::State { envelope, .. } => envelope,
            Effect::Call { .. } => &[],
        };
        // A record of plain data always serialises.
        let meta = serde_json::to_vec(self).unwrap_or_default();
        let mut out = Vec::with_capacity(HEADER + meta.len() + state.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&(state.len() as u64).to_le_bytes());
        let checksum = {
            let mut hash = xxhash_rust::xxh3::Xxh3::with_seed(xxh3_64(&out));
            hash.update(&meta);
            hash.update(state);
            hash.digest()
        };
        out.extend_from_slice(&checksum.to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(state);
        out
    }

    /// Reads a record, checking everything: framing, lengths, checksum, fields.
    pub fn decode(bytes: &Bytes) -> Result<Self, RecordError> {
        let corrupt = |why: &str| RecordError::Corrupt(why.to_string());
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err(corrupt("not an mcp-v8 journal record"));
        }
        let format = u16::from_le_bytes([bytes[8], bytes[9]]);
        if format != FORMAT {
            return Err(RecordError::Incompatible(format));
        }
        let field = |at: usize, n: usize| &bytes[at..at + n];
        let meta_len = u32::from_le_bytes(field(10, 4).try_into().unwrap_or_default()) as usize;
        let state_len = u64::from_le_bytes(field(14, 8).try_into().unwrap_or_default());
        let checksum = u64::from_le_bytes(field(22, 8).try_into().unwrap_or_default());
        let body = bytes.len() - HEADER;
        if meta_len > MAX_META
            || u64::try_from(body).ok() != (meta_len as u64).checked_add(state_len)
        {
            return Err(corrupt("its lengths do not match its size"));
        }
        let meta = &bytes[HEADER..HEADER + meta_len];
        let state = bytes.slice(HEADER + meta_len..);
        if xxh3_64_with_seed(&bytes[HEADER..], xxh3_64(&bytes[..22])) != checksum {
            return Err(corrupt("checksum mismatch"));
        }
        let mut record: Record =
            serde_json::from_slice(meta).map_err(|e| RecordError::Corrupt(e.to_string()))?;
        match &mut record.effect {
            Effect::State { envelope, .. } if !state.is_empty() => *envelope = state,
            Effect::Call { .. } if state.is_empty() => {}
            _ => return Err(corrupt("its state section does not match its effect")),
        }
        if mcp_v8_plugin_api::validate_heap_name(&record.heap).is_err() {
            return Err(corrupt("it names an invalid heap"));
        }
        Ok(record)
    }

    /// The chain value after this record, given its bytes: what the next record follows.
    pub fn chain(prev: u64, bytes: &[u8]) -> u64 {
        xxh3_64_with_seed(bytes, prev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Replay;

    fn call() -> Record {
        Record {
            heap: "h".into(),
            lineage: 9,
            seq: 4,
            prev: 77,
            at_ms: 1_700_000_000_000,
            output: "5".into(),
            effect: Effect::Call {
                code: "n++".into(),
                heap_bytes: 128 << 20,
                tape: Tape {
                    seed: 1,
                    start_us: 2,
                    clock_us: vec![3, 4],
                    replay: Replay::Exact,
                    last_error: Some(crate::engine::JsException::new("TypeError", "no")),
                    replies: Vec::new(),
                    key: Some(Box::new([6; 32])),
                },
                fingerprint: 5,
            },
        }
    }

    fn state() -> Record {
        Record {
            effect: Effect::State {
                why: "busy clock".into(),
                envelope: Bytes::from_static(b"an envelope"),
            },
            ..call()
        }
    }

    #[test]
    fn records_round_trip() {
        for record in [call(), state()] {
            let bytes = Bytes::from(record.encode());
            assert_eq!(Record::decode(&bytes).unwrap(), record);
        }
    }

    #[test]
    fn every_truncation_and_flipped_byte_is_caught() {
        for record in [call(), state()] {
            let bytes = record.encode();
            for cut in 0..bytes.len() {
                let cut = Bytes::copy_from_slice(&bytes[..cut]);
                assert!(
                    Record::decode(&cut).is_err(),
                    "a cut at {} passed",
                    cut.len()
                );
            }
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 0x10;
                assert!(
                    Record::decode(&Bytes::from(bad)).is_err(),
                    "byte {i} flipped"
                );
            }
        }
    }

    #[test]
    fn the_chain_covers_the_bytes_and_what_they_follow() {
        let bytes = call().encode();
        assert_eq!(Record::chain(1, &bytes), Record::chain(1, &bytes));
        assert_ne!(Record::chain(1, &bytes), Record::chain(2, &bytes));
        assert_ne!(
            Record::chain(1, &bytes),
            Record::chain(1, &state().encode())
        );
    }
}
