//! mcp-v8 storage plugin: one file per heap in a directory.
//!
//! * `<directory>/<heap>.heap` holds the snapshot. Heap names never start with `.`, so the
//!   plugin's own files (`.<heap>.lock`, `.<heap>.<n>.tmp`) can never collide with a heap.
//! * Writes are atomic: a temporary file in the same directory is written and fsynced, renamed
//!   over the heap file, and the directory is fsynced. A crash or `kill -9` at any point
//!   leaves the old snapshot or the new one, never a torn one.
//! * The version token is the file's inode, modification time (ns) and size, so it changes
//!   with every write (each write makes a new file) and costs one `stat` to check.
//! * Conditional puts and deletes hold an exclusive `flock` on `.<heap>.lock`, which excludes
//!   other threads and other processes on the same machine.
//! * A heap's journal is the directory `<directory>/<heap>.journal/`, one file per record named
//!   by its number in 16 hex digits. A record is written and fsynced under a temporary name,
//!   then hard-linked to its final name, which fails if the number is taken: the append is
//!   atomic and conditional across processes, and a crash leaves the record whole or absent.
//!   The directory is fsynced before the append returns.
//!
//! Configuration (`[plugins.file.config]` in `plugins.toml`):
//!
//! ```toml
//! directory = "/var/lib/mcp-v8/heaps"   # created (mode 0700) if missing
//! ```

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use mcp_v8_plugin_api::{
    export_plugin, journal, validate_heap_name, BackendInfo, ErrorKind, HeapMeta, HeapStore,
    Precondition, Record, Sharing, Snapshot, StoreError, Version,
};
use serde::Deserialize;

const SUFFIX: &str = ".heap";
/// A heap's journal directory is its name with this suffix (never a heap file's, which ends
/// in [`SUFFIX`]).
const JOURNAL_SUFFIX: &str = ".journal";
/// Temporary files older than this are left over from a crash and are removed at start.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// The plugin's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the heap files live.
    pub directory: PathBuf,
}

/// Heaps as files in one directory.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    tmp_counter: AtomicU64,
    /// The last modification time given to a heap file, see `unique_mtime`.
    last_mtime: Mutex<SystemTime>,
}

export_plugin!("file", open);

/// The plugin's constructor: parses the configuration and opens the directory.
pub fn open(config: &str) -> Result<FileStore, StoreError> {
    let config: Config = mcp_v8_plugin_api::plugin::parse_config("file", config)?;
    FileStore::open(&config.directory)
}

impl FileStore {
    /// Opens (creating with mode 0700 if needed) the heap directory.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                io_error(
                    &format!("cannot create heap directory {}", dir.display()),
                    e,
                )
            })?;
        let store = Self {
            dir: dir.to_path_buf(),
            tmp_counter: AtomicU64::new(0),
            last_mtime: Mutex::new(SystemTime::UNIX_EPOCH),
        };
        store.remove_stale_temporaries();
        Ok(store)
    }

    fn heap_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{SUFFIX}"))
    }

    fn journal_dir(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{JOURNAL_SUFFIX}"))
    }

    /// The records' numbers and paths in `name`'s journal numbered above `after`, in order.
    fn records(&self, name: &str, after: u64) -> Result<Vec<(u64, PathBuf)>, StoreError> {
        let dir = self.journal_dir(name);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(io_error(
                    &format!("cannot list the journal of heap '{name}'"),
                    e,
                ))
            }
        };
        let mut records = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("cannot list a journal", e))?;
            let file_name = entry.file_name();
            let Some(seq) = file_name.to_str().and_then(record_number) else {
                continue;
            };
            if seq > after {
                records.push((seq, entry.path()));
            }
        }
        records.sort_unstable_by_key(|(seq, _)| *seq);
        Ok(records)
    }

    /// Writes `record` into `dir` under a temporary name, fsynced, and links it to its final
    /// name: `Ok(false)` when that name is taken.
    fn link_record(&self, dir: &Path, record: &Record) -> io::Result<bool> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{}-{n}.tmp", std::process::id()));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&record.bytes)?;
            file.sync_all()?;
            match fs::hard_link(&tmp, dir.join(format!("{:016x}", record.seq))) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        })();
        let _ = fs::remove_file(&tmp);
        let linked = written?;
        if linked {
            File::open(dir)?.sync_all()?;
        }
        Ok(linked)
    }

    fn remove_stale_temporaries(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP);
            if name.starts_with('.') && name.ends_with(".tmp") && old {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Exclusive lock on one heap name, across threads and processes; released on drop.
    fn lock(&self, name: &str) -> Result<File, StoreError> {
        let path = self.dir.join(format!(".{name}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_error(&format!("cannot open lock file {}", path.display()), e))?;
        file.lock()
            .map_err(|e| io_error(&format!("cannot lock {}", path.display()), e))?;
        Ok(file)
    }

    /// The version of the heap file as it is now, or `None` if there is none.
    fn current_version(&self, name: &str) -> Result<Option<Version>, StoreError> {
        match fs::metadata(self.heap_path(name)) {
            Ok(meta) => Ok(Some(version_of(&meta))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(&format!("cannot stat heap '{name}'"), e)),
        }
    }

    /// A modification time later than any this process gave before, to the nanosecond: with
    /// the inode it makes every write's version unique, even when the file system's own clock
    /// ticks coarsely and a deleted heap's inode is reused at once.
    fn unique_mtime(&self) -> SystemTime {
        let mut last = self.last_mtime.lock().unwrap_or_else(|e| e.into_inner());
        let now = SystemTime::now().max(*last + Duration::from_nanos(1));
        *last = now;
        now
    }

    fn write_atomically(&self, name: &str, bytes: &[u8]) -> Result<Version, StoreError> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{name}.{}-{n}.tmp", std::process::id()));
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(bytes)?;
            file.set_modified(self.unique_mtime())?;
            file.sync_all()?;
            let final_path = self.heap_path(name);
            fs::rename(&tmp, &final_path)?;
            File::open(&self.dir)?.sync_all()?;
            fs::metadata(&final_path)
        })();
        match result {
            Ok(meta) => Ok(version_of(&meta)),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(io_error(&format!("cannot write heap '{name}'"), e))
            }
        }
    }
}

/// The number a journal file's name stands for: exactly 16 lower-case hex digits.
fn record_number(file_name: &str) -> Option<u64> {
    let hex = file_name.len() == 16
        && file_name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    hex.then(|| u64::from_str_radix(file_name, 16).ok())
        .flatten()
}

fn version_of(meta: &fs::Metadata) -> Version {
    let mtime_ns = (meta.mtime() as i128) * 1_000_000_000 + meta.mtime_nsec() as i128;
    Version(format!("{:x}.{:x}.{:x}", meta.ino(), mtime_ns, meta.size()))
}

fn io_error(context: &str, e: io::Error) -> StoreError {
    let kind = match e.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::StorageFull | io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => {
            ErrorKind::Unavailable
        }
        _ => ErrorKind::Other,
    };
    StoreError::new(kind, format!("{context}: {e}"))
}

impl HeapStore for FileStore {
    fn info(&self) -> BackendInfo {
        BackendInfo::new("file", env!("CARGO_PKG_VERSION"))
    }

    fn get(&self, name: &str) -> Result<Snapshot, StoreError> {
        validate_heap_name(name)?;
        let mut file = match File::open(self.heap_path(name)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::not_found(name))
            }
            Err(e) => return Err(io_error(&format!("cannot open heap '{name}'"), e)),
        };
        // Version and bytes come from the same open file, so they always match.
        let meta = file
            .metadata()
            .map_err(|e| io_error(&format!("cannot stat heap '{name}'"), e))?;
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut bytes)
            .map_err(|e| io_error(&format!("cannot read heap '{name}'"), e))?;
        Ok(Snapshot {
            bytes: Bytes::from(bytes),
            version: version_of(&meta),
        })
    }

    fn put(
        &self,
        name: &str,
        bytes: Bytes,
        precondition: Precondition,
    ) -> Result<Version, StoreError> {
        validate_heap_name(name)?;
        let _lock = self.lock(name)?;
        precondition.check(name, self.current_version(name)?.as_ref())?;
        self.write_atomically(name, &bytes)
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        validate_heap_name(name)?;
        let _lock = self.lock(name)?;
        match fs::remove_file(self.heap_path(name)) {
            Ok(()) => File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error("cannot sync the heap directory", e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::not_found(name)),
            Err(e) => Err(io_error(&format!("cannot delete heap '{name}'"), e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<HeapMeta>, StoreError> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| io_error(&format!("cannot list {}", self.dir.display()), e))?;
        let mut heaps = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("cannot list the heap directory", e))?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
                continue;
            };
            if !name.starts_with(prefix) || validate_heap_name(name).is_err() {
                continue;
            }
            // A heap deleted while listing is simply not listed.
            let Ok(meta) = entry.metadata() else { continue };
            heaps.push(HeapMeta {
                name: name.to_string(),
                size: meta.len(),
                version: version_of(&meta),
                last_modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        Ok(heaps)
    }

    fn version(&self, name: &str) -> Result<Option<Version>, StoreError> {
        validate_heap_name(name)?;
        self.current_version(name)
    }

    fn append(&self, name: &str, record: Record) -> Result<(), StoreError> {
        validate_heap_name(name)?;
        let dir = self.journal_dir(name);
        let fail = |e| io_error(&format!("cannot append to the journal of heap '{name}'"), e);
        let linked = match self.link_record(&dir, &record) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The heap's first record (or its journal was removed meanwhile): the
                // directory is made, and made durable, before the record goes in.
                DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .or_else(|e| {
                        if e.kind() == io::ErrorKind::AlreadyExists {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(fail)?;
                File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(fail)?;
                self.link_record(&dir, &record)
            }
            linked => linked,
        }
        .map_err(fail)?;
        if linked {
            Ok(())
        } else {
            Err(journal::taken(name, record.seq))
        }
    }

    fn read_journal(&self, name: &str, after: u64) -> Result<Vec<Record>, StoreError> {
        validate_heap_name(name)?;
        let mut records = Vec::new();
        for (seq, path) in self.records(name, after)? {
            match fs::read(&path) {
                Ok(bytes) => records.push(Record::new(seq, bytes)),
                // Trimmed since the listing: the caller sees the gap.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io_error(
                        &format!("cannot read journal record {seq} of heap '{name}'"),
                        e,
                    ))
                }
            }
        }
        Ok(records)
    }

    fn trim_journal(&self, name: &str, through: u64) -> Result<(), StoreError> {
        validate_heap_name(name)?;
        let fail = |e| io_error(&format!("cannot trim the journal of heap '{name}'"), e);
        let records = self.records(name, 0)?;
        let mut removed = false;
        for (seq, path) in records.iter().filter(|(seq, _)| *seq <= through) {
            match fs::remove_file(path) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io_error(
                        &format!("cannot remove journal record {seq} of heap '{name}'"),
                        e,
                    ))
                }
            }
        }
        let dir = self.journal_dir(name);
        if through == u64::MAX {
            // Fails harmlessly if a record was appended meanwhile.
            if fs::remove_dir(&dir).is_ok() {
                File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(fail)?;
            }
        } else if removed {
            File::open(&dir).and_then(|d| d.sync_all()).map_err(fail)?;
        }
        Ok(())
    }

    fn sharing(&self) -> Sharing {
        Sharing::Machine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(&dir.path().join("heaps")).unwrap();
        (dir, store)
    }

    #[test]
    fn creates_its_directory_private() {
        let (dir, _store) = store();
        let mode = fs::metadata(dir.path().join("heaps")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn the_file_store_keeps_the_contract() {
        let (_dir, store) = store();
        mcp_v8_plugin_api::conformance::run(&store, "conformance-");
    }

    #[test]
    fn names_cannot_escape_the_directory() {
        let (dir, store) = store();
        for name in ["../x", "..", "a/b", ".lock", "/etc/passwd", ""] {
            assert_eq!(
                store
                    .put(name, Bytes::from_static(b"x"), Precondition::Any)
                    .unwrap_err()
                    .kind(),
                ErrorKind::InvalidName,
                "{name}"
            );
            assert_eq!(
                store.get(name).unwrap_err().kind(),
                ErrorKind::InvalidName,
                "{name}"
            );
            assert_eq!(
                store.delete(name).unwrap_err().kind(),
                ErrorKind::InvalidName,
                "{name}"
            );
        }
        assert!(!dir.path().join("x.heap").exists());
    }

    #[test]
    fn configuration_errors_are_clear() {
        let err = open(r#"{"dir": "/tmp/x"}"#).err().unwrap();
        assert!(err.message().contains("unknown field `dir`"), "{err}");
        let err = open("{}").err().unwrap();
        assert!(err.message().contains("missing field `directory`"), "{err}");
    }

    #[test]
    fn stale_temporaries_are_cleaned_and_fresh_ones_kept() {
        let (dir, store) = store();
        let heaps = dir.path().join("heaps");
        let stale = heaps.join(".a.1-1.tmp");
        let fresh = heaps.join(".a.1-2.tmp");
        fs::write(&stale, b"torn").unwrap();
        fs::write(&fresh, b"in flight").unwrap();
        let old = SystemTime::now() - Duration::from_secs(7200);
        File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        drop(store);
        let _store = FileStore::open(&heaps).unwrap();
        assert!(!stale.exists());
        assert!(fresh.exists());
    }
}
