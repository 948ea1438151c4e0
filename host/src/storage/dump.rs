//! The memory store's dump: every heap written to one file on shutdown (and every
//! `--memory-dump-interval`), read back at start.
//!
//! ```text
//! file:   magic "MCPV8DMP" (8) | format u16 LE (2) | V8 version len u8 | V8 version
//!         | record* | end marker "END\0" (4) | record count u64 LE
//! record: "HEAP" (4) | name len u8 | name | sealed-for len u8 | sealed-for
//!         | stored len u64 LE | stored bytes
//!         | checksum u64 LE: XXH3-64 of everything in the record before it
//!       | "JRNL" (4) | heap name len u8 | heap name | number u64 LE
//!         | record len u64 LE | record bytes | checksum u64 LE (as above)
//! ```
//!
//! A "JRNL" record is one record of a heap's journal, exactly as the store held it; they
//! follow the heaps (format 3 and later).
//!
//! The stored bytes are the heap's envelope exactly as the store held it (compressed, with
//! its own checksum over the snapshot). "Sealed-for" is empty, or, for a copy sharing another
//! heap's bytes (`copy_heap`), the name its envelope carries. Format 1 had no sealed-for field
//! and is still read. Records come least recently used first, so reading
//! them back in order restores the store's eviction order.
//!
//! Writing goes to a temporary file next to the dump, which is synced and then renamed over
//! it (and the directory synced): a crash or `kill -9` mid-dump leaves the previous dump as it
//! was. Reading checks each record on its own: a record with a bad checksum, a heap made by
//! another V8 version or sealed for another name is reported and skipped, the rest is loaded;
//! a truncated file loads every record before the cut.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mcp_v8_plugin_api::validate_heap_name;
use tokio_util::sync::CancellationToken;
use xxhash_rust::xxh3::Xxh3;

use super::{HeapStore, MemoryStore, Record};
use crate::envelope;

/// Identifies an mcp-v8 memory dump.
pub const MAGIC: &[u8; 8] = b"MCPV8DMP";
/// The dump format.
pub const FORMAT: u16 = 3;
const RECORD: &[u8; 4] = b"HEAP";
const JOURNAL_RECORD: &[u8; 4] = b"JRNL";
const END: &[u8; 4] = b"END\0";

/// A memory store's dump file.
#[derive(Debug)]
pub struct Dump {
    store: MemoryStore,
    path: PathBuf,
    /// One write at a time (the interval and the shutdown may meet).
    writing: Mutex<()>,
}

/// What reading a dump did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LoadedDump {
    /// Heaps loaded into the store.
    pub heaps: usize,
    /// Journal records loaded.
    pub records: usize,
    /// Bytes loaded.
    pub bytes: u64,
    /// What could not be loaded, one line each (also logged).
    pub problems: Vec<String>,
}

/// What writing a dump did.
#[derive(Debug, PartialEq, Eq)]
pub struct Written {
    /// Heaps written.
    pub heaps: usize,
    /// The file's size.
    pub bytes: u64,
}

impl Dump {
    /// The dump of `store` at `path`.
    pub fn new(store: MemoryStore, path: PathBuf) -> Self {
        Self {
            store,
            path,
            writing: Mutex::new(()),
        }
    }

    /// Where the dump lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads every valid heap of the dump into the store; a missing file loads nothing.
    /// Errors only when the file exists but is not a dump (or cannot be read at all): then
    /// the server should not start, or it would overwrite that file on exit.
    pub fn load(&self) -> Result<LoadedDump, String> {
        let started = Instant::now();
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LoadedDump::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let len = reader
            .get_ref()
            .metadata()
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?
            .len();
        let loaded = read(
            &mut reader,
            len,
            crate::engine::v8_version(),
            |name, bytes, sealed_for| {
                self.store
                    .restore(name, bytes, sealed_for)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
            |heap, record| self.store.append(heap, record).map_err(|e| e.to_string()),
        )
        .map_err(|e| format!("{}: {e}", self.path.display()))?;
        for problem in &loaded.problems {
            tracing::warn!(dump = %self.path.display(), "{problem}");
        }
        if !loaded.problems.is_empty() {
            // Keep the damaged dump for inspection: the next dump replaces it.
            let aside = self.path.with_extension("corrupt");
            match fs::copy(&self.path, &aside) {
                Ok(_) => {
                    tracing::warn!(copy = %aside.display(), "the damaged dump was copied aside")
                }
                Err(e) => tracing::warn!("could not copy the damaged dump aside: {e}"),
            }
        }
        tracing::info!(
            dump = %self.path.display(),
            heaps = loaded.heaps,
            records = loaded.records,
            bytes = loaded.bytes,
            skipped = loaded.problems.len(),
            ms = started.elapsed().as_millis() as u64,
            "memory store loaded from its dump"
        );
        Ok(loaded)
    }

    /// Writes every heap to the dump, atomically.
    pub fn write(&self) -> io::Result<Written> {
        let _one = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let started = Instant::now();
        let entries = self.store.entries();
        let records = self.store.journal_entries();
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "dump".into());
        let temp = self
            .path
            .with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
        let written = (|| {
            let file = File::create(&temp)?;
            let mut out = BufWriter::with_capacity(1 << 20, file);
            let bytes = write(&mut out, crate::engine::v8_version(), &entries, &records)?;
            let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
            file.sync_all()?;
            fs::rename(&temp, &self.path)?;
            sync_dir(&self.path);
            Ok(Written {
                heaps: entries.len(),
                bytes,
            })
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        if let Ok(w) = &written {
            tracing::info!(
                dump = %self.path.display(),
                heaps = w.heaps,
                bytes = w.bytes,
                ms = started.elapsed().as_millis() as u64,
                "memory store dumped"
            );
        }
        written
    }

    /// Writes the dump every `every` until `stop`, off the async threads.
    pub fn spawn_every(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = stop.cancelled() => return,
                }
                let dump = Arc::clone(&self);
                match tokio::task::spawn_blocking(move || dump.write()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(dump = %self.path.display(), "dump failed: {e}"),
                    Err(e) => tracing::error!("dump task failed: {e}"),
                }
            }
        });
    }
}

/// Syncs the directory holding `path`, so a rename into it survives a power cut.
fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
}

/// A heap in a dump: name, stored bytes, and the heap its envelope was sealed for if that is
/// another one.
pub type Entry = (String, Bytes, Option<String>);

/// A journal record in a dump, and the heap it belongs to.
pub type JournalEntry = (String, Record);

/// Writes a dump of `entries` (least recently used first) and journal `records` made with V8
/// `v8_version`; returns the bytes written.
pub fn write(
    out: &mut impl Write,
    v8_version: &str,
    entries: &[Entry],
    records: &[JournalEntry],
) -> io::Result<u64> {
    let version = &v8_version.as_bytes()[..v8_version.len().min(255)];
    let mut written = 0u64;
    let mut put = |out: &mut dyn Write, bytes: &[u8]| -> io::Result<()> {
        out.write_all(bytes)?;
        written += bytes.len() as u64;
        Ok(())
    };
    put(out, MAGIC)?;
    put(out, &FORMAT.to_le_bytes())?;
    put(out, &[version.len() as u8])?;
    put(out, version)?;
    for (name, bytes, sealed_for) in entries {
        let name = &name.as_bytes()[..name.len().min(255)];
        let sealed_for = sealed_for.as_deref().unwrap_or_default().as_bytes();
        let sealed_for = &sealed_for[..sealed_for.len().min(255)];
        let mut hash = Xxh3::new();
        let mut field = |out: &mut dyn Write, bytes: &[u8]| -> io::Result<()> {
            hash.update(bytes);
            put(out, bytes)
        };
        field(out, RECORD)?;
        field(out, &[name.len() as u8])?;
        field(out, name)?;
        field(out, &[sealed_for.len() as u8])?;
        field(out, sealed_for)?;
        field(out, &(bytes.len() as u64).to_le_bytes())?;
        field(out, bytes)?;
        let checksum = hash.digest();
        put(out, &checksum.to_le_bytes())?;
    }
    for (heap, record) in records {
        let name = &heap.as_bytes()[..heap.len().min(255)];
        let mut hash = Xxh3::new();
        let mut field = |out: &mut dyn Write, bytes: &[u8]| -> io::Result<()> {
            hash.update(bytes);
            put(out, bytes)
        };
        field(out, JOURNAL_RECORD)?;
        field(out, &[name.len() as u8])?;
        field(out, name)?;
        field(out, &record.seq.to_le_bytes())?;
        field(out, &(record.bytes.len() as u64).to_le_bytes())?;
        field(out, &record.bytes)?;
        let checksum = hash.digest();
        put(out, &checksum.to_le_bytes())?;
    }
    put(out, END)?;
    put(out, &((entries.len() + records.len()) as u64).to_le_bytes())?;
    out.flush()?;
    Ok(written)
}

/// Reads a dump of `len` bytes, handing every valid heap to `keep` and every journal record
/// to `keep_record`; problems are collected record by record. Errors only when `input` is not
/// a dump at all.
pub fn read(
    input: &mut impl Read,
    len: u64,
    v8_version: &str,
    mut keep: impl FnMut(&str, Bytes, Option<String>) -> Result<(), String>,
    mut keep_record: impl FnMut(&str, Record) -> Result<(), String>,
) -> Result<LoadedDump, String> {
    let input = &mut Counted {
        inner: input,
        left: len,
    };
    let mut loaded = LoadedDump::default();
    let mut magic = [0u8; 8];
    if input.read_exact(&mut magic).is_err() || &magic != MAGIC {
        return Err(
            "this file is not an mcp-v8 memory dump; move it away or choose another \
                    --memory-dump path"
                .into(),
        );
    }
    let mut format = [0u8; 2];
    let mut len = [0u8; 1];
    if input.read_exact(&mut format).is_err() || input.read_exact(&mut len).is_err() {
        loaded
            .problems
            .push("the dump is truncated in its header: nothing loaded".into());
        return Ok(loaded);
    }
    let format = u16::from_le_bytes(format);
    if !(1..=FORMAT).contains(&format) {
        return Err(format!(
            "the dump has format {format}, this mcp-v8 reads formats 1 to {FORMAT}; move it away"
        ));
    }
    let mut made_by = vec![0u8; usize::from(len[0])];
    if input.read_exact(&mut made_by).is_err() {
        loaded
            .problems
            .push("the dump is truncated in its header: nothing loaded".into());
        return Ok(loaded);
    }
    let mut index = 0usize;
    loop {
        index += 1;
        let mut tag = [0u8; 4];
        if input.read_exact(&mut tag).is_err() {
            loaded.problems.push(format!(
                "the dump is truncated after {} heaps (no end marker): the rest is lost",
                index - 1
            ));
            return Ok(loaded);
        }
        if &tag == END {
            let mut count = [0u8; 8];
            let expected = input
                .read_exact(&mut count)
                .ok()
                .map(|_| u64::from_le_bytes(count));
            if expected != Some((index - 1) as u64) {
                loaded.problems.push(format!(
                    "the dump's end marker does not match its {} records",
                    index - 1
                ));
            }
            return Ok(loaded);
        }
        if &tag == JOURNAL_RECORD && format >= 3 {
            let mut hash = Xxh3::new();
            hash.update(JOURNAL_RECORD);
            let Some((heap, record, checksum)) = read_journal_record(input, &mut hash) else {
                loaded.problems.push(format!(
                    "the dump is truncated in record {index}: it and the rest are lost"
                ));
                return Ok(loaded);
            };
            let label = match validate_heap_name(&heap) {
                Ok(()) => format!("journal record {} of heap '{heap}'", record.seq),
                Err(_) => format!("record {index}"),
            };
            if hash.digest() != checksum {
                loaded
                    .problems
                    .push(format!("{label}: checksum mismatch in the dump, skipped"));
                continue;
            }
            if let Err(e) = validate_heap_name(&heap) {
                loaded.problems.push(format!("{label}: {e}, skipped"));
                continue;
            }
            let size = record.bytes.len() as u64;
            match keep_record(&heap, record) {
                Ok(()) => {
                    loaded.records += 1;
                    loaded.bytes += size;
                }
                Err(e) => loaded.problems.push(format!("{label}: {e}, skipped")),
            }
            continue;
        }
        if &tag != RECORD {
            loaded.problems.push(format!(
                "record {index} of the dump is damaged (no record marker): it and the rest are lost"
            ));
            return Ok(loaded);
        }
        let mut hash = Xxh3::new();
        hash.update(RECORD);
        let record = read_record(input, &mut hash, format >= 2);
        let (name, sealed_for, bytes, checksum) = match record {
            Some(record) => record,
            None => {
                loaded.problems.push(format!(
                    "the dump is truncated in record {index}: it and the rest are lost"
                ));
                return Ok(loaded);
            }
        };
        let label = if validate_heap_name(&name).is_ok() {
            format!("heap '{name}'")
        } else {
            format!("record {index}")
        };
        if hash.digest() != checksum {
            loaded
                .problems
                .push(format!("{label}: checksum mismatch in the dump, skipped"));
            continue;
        }
        if let Err(e) = validate_heap_name(&name) {
            loaded.problems.push(format!("{label}: {e}, skipped"));
            continue;
        }
        match envelope::header(&bytes) {
            Err(e) => {
                loaded.problems.push(format!("{label}: {e}, skipped"));
                continue;
            }
            Ok(header) if header.made_by != v8_version => {
                loaded.problems.push(format!(
                    "{label}: made by V8 {}, this mcp-v8 runs V8 {v8_version}, skipped",
                    header.made_by
                ));
                continue;
            }
            Ok(header)
                if header
                    .heap
                    .as_deref()
                    .is_some_and(|h| h != sealed_for.as_deref().unwrap_or(&name)) =>
            {
                loaded.problems.push(format!(
                    "{label}: its snapshot belongs to heap '{}', skipped",
                    header.heap.unwrap_or_default()
                ));
                continue;
            }
            Ok(_) => {}
        }
        let size = bytes.len() as u64;
        match keep(&name, bytes, sealed_for) {
            Ok(()) => {
                loaded.heaps += 1;
                loaded.bytes += size;
            }
            Err(e) => loaded.problems.push(format!("{label}: {e}, skipped")),
        }
    }
}

/// A reader that knows how many bytes are left.
struct Counted<'a, R> {
    inner: &'a mut R,
    left: u64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.saturating_sub(n as u64);
        Ok(n)
    }
}

/// Reads one record after its marker: name, bytes and the stored checksum; `None` if the
/// input ends first.
fn read_record<R: Read>(
    input: &mut Counted<'_, R>,
    hash: &mut Xxh3,
    with_sealed_for: bool,
) -> Option<(String, Option<String>, Bytes, u64)> {
    let name = short_field(input, hash)?;
    let sealed_for = if with_sealed_for {
        Some(short_field(input, hash)?).filter(|s| !s.is_empty())
    } else {
        None
    };
    let bytes = long_field(input, hash)?;
    let checksum = stored_checksum(input)?;
    Some((name, sealed_for, Bytes::from(bytes), checksum))
}

/// Reads one journal record after its marker: heap name, record and the stored checksum;
/// `None` if the input ends first.
fn read_journal_record<R: Read>(
    input: &mut Counted<'_, R>,
    hash: &mut Xxh3,
) -> Option<(String, Record, u64)> {
    let heap = short_field(input, hash)?;
    let mut seq = [0u8; 8];
    input.read_exact(&mut seq).ok()?;
    hash.update(&seq);
    let bytes = long_field(input, hash)?;
    let record = Record::new(u64::from_le_bytes(seq), bytes);
    Some((heap, record, stored_checksum(input)?))
}

/// Bytes after their u64 length, hashed as read. A length announcing more than is left is a
/// truncation, caught before anything is allocated for it.
fn long_field<R: Read>(input: &mut Counted<'_, R>, hash: &mut Xxh3) -> Option<Vec<u8>> {
    let mut size = [0u8; 8];
    input.read_exact(&mut size).ok()?;
    hash.update(&size);
    let size = u64::from_le_bytes(size);
    if size > input.left {
        return None;
    }
    // Zeroed lazily by the allocator, then written once.
    let mut bytes = vec![0u8; usize::try_from(size).ok()?];
    input.read_exact(&mut bytes).ok()?;
    hash.update(&bytes);
    Some(bytes)
}

/// The checksum that ends a record.
fn stored_checksum<R: Read>(input: &mut Counted<'_, R>) -> Option<u64> {
    let mut checksum = [0u8; 8];
    input.read_exact(&mut checksum).ok()?;
    Some(u64::from_le_bytes(checksum))
}

/// A string of at most 255 bytes after its length byte, hashed as read.
fn short_field<R: Read>(input: &mut Counted<'_, R>, hash: &mut Xxh3) -> Option<String> {
    let mut len = [0u8; 1];
    input.read_exact(&mut len).ok()?;
    let mut text = vec![0u8; usize::from(len[0])];
    input.read_exact(&mut text).ok()?;
    hash.update(&len);
    hash.update(&text);
    Some(String::from_utf8_lossy(&text).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{HeapStore, Precondition};

    const V8: &str = "13.6.233.8";

    /// A heap sealed by V8 `v8`, its snapshot 1000 bytes of `fill` (stored as they are).
    fn heap(name: &str, v8: &str, fill: u8) -> Entry {
        let sealed = envelope::seal_for(v8, name, &[fill; 1000]);
        (name.to_string(), Bytes::from(sealed), None)
    }

    fn dumped(entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out, V8, entries, &[]).unwrap();
        out
    }

    fn reread(bytes: &[u8]) -> (Vec<String>, LoadedDump) {
        let mut names = Vec::new();
        let loaded = read(
            &mut &bytes[..],
            bytes.len() as u64,
            V8,
            |name, _, _| {
                names.push(name.to_string());
                Ok(())
            },
            |_, _| Ok(()),
        )
        .unwrap();
        (names, loaded)
    }

    #[test]
    fn a_dump_round_trips_in_order_with_copies() {
        // A copy shares its source's bytes, so its envelope names the source.
        let (_, shared, _) = heap("a", V8, 1);
        let copy = ("copy-of-a".to_string(), shared, Some("a".to_string()));
        let entries = [heap("a", V8, 1), heap("b", V8, 2), heap("c", V8, 3), copy];
        let bytes = dumped(&entries);
        let mut back = Vec::new();
        let loaded = read(
            &mut &bytes[..],
            bytes.len() as u64,
            V8,
            |name, b, of| {
                back.push((name.to_string(), b, of));
                Ok(())
            },
            |_, _| Ok(()),
        )
        .unwrap();
        assert_eq!(back, entries);
        assert_eq!((loaded.heaps, loaded.problems.len()), (4, 0));
    }

    #[test]
    fn journal_records_round_trip_and_a_damaged_one_is_skipped() {
        let records: Vec<JournalEntry> = (1..=3)
            .map(|seq| ("a".to_string(), Record::new(seq, vec![seq as u8; 100])))
            .collect();
        let mut bytes = Vec::new();
        write(&mut bytes, V8, &[heap("a", V8, 1)], &records).unwrap();
        let read_back = |bytes: &[u8]| {
            let mut back = Vec::new();
            let loaded = read(
                &mut &bytes[..],
                bytes.len() as u64,
                V8,
                |_, _, _| Ok(()),
                |heap, record| {
                    back.push((heap.to_string(), record));
                    Ok(())
                },
            )
            .unwrap();
            (back, loaded)
        };
        let (back, loaded) = read_back(&bytes);
        assert_eq!(back, records);
        assert_eq!((loaded.heaps, loaded.records), (1, 3));
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        let at = bytes.windows(100).position(|w| w.iter().all(|b| *b == 2));
        bytes[at.unwrap() + 50] ^= 0xff;
        let (back, loaded) = read_back(&bytes);
        assert_eq!(back.iter().map(|(_, r)| r.seq).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(
            loaded.problems,
            ["journal record 2 of heap 'a': checksum mismatch in the dump, skipped"]
        );
    }

    #[test]
    fn a_damaged_heap_is_skipped_and_the_rest_loaded() {
        let entries = [heap("a", V8, 1), heap("b", V8, 2), heap("c", V8, 3)];
        let mut bytes = dumped(&entries);
        // Flip a byte inside b's snapshot.
        let at = bytes.windows(1000).position(|w| w.iter().all(|b| *b == 2));
        bytes[at.unwrap() + 500] ^= 0xff;
        let (names, loaded) = reread(&bytes);
        assert_eq!(names, ["a", "c"]);
        assert_eq!(
            loaded.problems,
            ["heap 'b': checksum mismatch in the dump, skipped"]
        );
    }

    #[test]
    fn every_truncation_keeps_the_heaps_before_it() {
        let entries = [heap("a", V8, 1), heap("b", V8, 2)];
        let bytes = dumped(&entries);
        let header = 8 + 2 + 1 + V8.len();
        let record = |i: usize| 4 + 1 + 1 + 1 + 8 + entries[i].1.len() + 8;
        let (first_end, second_end) = (header + record(0), header + record(0) + record(1));
        for cut in 8..bytes.len() {
            let (names, loaded) = reread(&bytes[..cut]);
            assert!(!loaded.problems.is_empty(), "a cut at {cut} went unnoticed");
            let expected: &[&str] = match cut {
                c if c >= second_end => &["a", "b"],
                c if c >= first_end => &["a"],
                _ => &[],
            };
            assert_eq!(names, expected, "cut at {cut}");
        }
    }

    #[test]
    fn heaps_of_another_v8_or_name_are_reported_one_by_one() {
        let mut moved = heap("x", V8, 4);
        moved.0 = "y".into();
        let entries = [heap("old", "12.0.1", 1), heap("ok", V8, 2), moved];
        let (names, loaded) = reread(&dumped(&entries));
        assert_eq!(names, ["ok"]);
        assert_eq!(loaded.problems.len(), 2);
        assert!(
            loaded.problems[0].contains("made by V8 12.0.1"),
            "{:?}",
            loaded.problems
        );
        assert!(
            loaded.problems[1].contains("belongs to heap 'x'"),
            "{:?}",
            loaded.problems
        );
    }

    #[test]
    fn a_file_that_is_not_a_dump_is_refused() {
        let err = read(
            &mut &b"{\"hello\": 1}"[..],
            12,
            V8,
            |_, _, _| Ok(()),
            |_, _| Ok(()),
        )
        .unwrap_err();
        assert!(err.contains("not an mcp-v8 memory dump"), "{err}");
    }

    #[test]
    fn writing_replaces_the_dump_atomically_and_loading_restores_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heaps.dump");
        let store = MemoryStore::new();
        let v8 = crate::engine::v8_version();
        for (name, fill) in [("one", 1u8), ("two", 2)] {
            let (_, bytes, _) = heap(name, v8, fill);
            store.put(name, bytes, Precondition::Any).unwrap();
        }
        // Journals are part of the store's contents: a dump keeps them too.
        for seq in [4, 5] {
            let record = Record::new(seq, format!("record {seq}").into_bytes());
            store.append("two", record).unwrap();
        }
        let dump = Dump::new(store.clone(), path.clone());
        let written = dump.write().unwrap();
        assert_eq!(written.heaps, 2);
        assert_eq!(fs::metadata(&path).unwrap().len(), written.bytes);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "a temporary file was left behind");

        let fresh = MemoryStore::new();
        let loaded = Dump::new(fresh.clone(), path).load().unwrap();
        assert_eq!(
            (loaded.heaps, loaded.records, loaded.problems.len()),
            (2, 2, 0)
        );
        assert_eq!(fresh.read_journal("two", 0), store.read_journal("two", 0));
        assert_eq!(fresh.read_journal("two", 0).unwrap().len(), 2);
        assert_eq!(
            fresh.get("two").unwrap().bytes,
            store.get("two").unwrap().bytes
        );
    }

    #[test]
    fn a_missing_dump_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = Dump::new(MemoryStore::new(), dir.path().join("none")).load();
        assert_eq!(loaded, Ok(LoadedDump::default()));
    }
}
