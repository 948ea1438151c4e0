//! The layer that owns a heap's storage: its snapshot in the store, sealed in its
//! envelope, and its journal of committed calls. It loads a heap (a warm isolate caught up
//! with the records others wrote, or a snapshot and the records after it), commits a call
//! (appends its record), checkpoints (stores a snapshot and trims the records it covers),
//! copies, recovers from a record that does not replay, and keeps what it learns about
//! heaps — which worker holds one live, what replaying its records would cost — for the
//! [`super::Runtime`] that drives it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{CallError, Checkpoints, Copied, History, HistoryCall, Listed};
use crate::engine::{self, Completion, Console, Limits, Replay};
use crate::envelope::{self, Codec, Position, ReadOnly};
use crate::executor::Executor;
use crate::job::{HeapRan, Job, Keep, NewState, NotWarm, Saved, Saving, Start, Target, WarmRef};
use crate::record::{Effect, Record};
use crate::storage::{
    ErrorKind, HeapLocks, HeapMeta, Precondition, Sharing, Snapshot, Store, Version,
};

/// What the runtime knows about heaps beyond the store, shared with background saves.
pub(super) struct Heaps {
    pub(super) storage: Store,
    /// Told when a warm isolate no longer stands for its heap.
    pub(super) executor: Arc<Executor>,
    /// How snapshots are stored.
    pub(super) codec: Codec,
    /// When live states are checkpointed.
    pub(super) checkpoints: Checkpoints,
    /// The server's limits, for rebuilding a state to checkpoint.
    pub(super) limits: Limits,
    /// Heap locks, shared with the runtime: a checkpoint holds its heap's.
    pub(super) locks: HeapLocks,
    /// Set once the runtime stops: no more checkpoints while idle.
    pub(super) stopping: std::sync::atomic::AtomicBool,
    /// Heaps a worker holds warm, and where in the store that state stands.
    pub(super) warm: Mutex<HashMap<String, WarmHeap>>,
    /// Records this runtime committed or replayed and has not trimmed, with when it learned
    /// of them, by heap: a shared store's records are trimmed only once they are old.
    pub(super) learned: Mutex<HashMap<String, VecDeque<(u64, Instant)>>>,
    /// Snapshot sizes before compression, by heap and stored version, as this runtime sealed
    /// or opened them.
    pub(super) raw_sizes: Mutex<HashMap<String, (Version, u64)>>,
}

/// How long a record of a store that others share stays after a snapshot covers it: a
/// writer that ran on the state before it, and appends after it is gone, would otherwise
/// go unnoticed. Far longer than any call runs.
pub(super) const RECORDS_KEPT_FOR: Duration = Duration::from_secs(600);

/// Where a heap stands in its store: its snapshot's version and position, and the last
/// committed record after it (the snapshot's own position when none follows it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Head {
    /// The stored snapshot's version.
    pub(super) version: Version,
    /// The heap's lineage ([`Position::lineage`]).
    pub(super) lineage: u64,
    /// The last committed record.
    pub(super) seq: u64,
    /// The journal's chain value after it.
    pub(super) chain: u64,
}

/// A heap a worker holds warm.
#[derive(Debug, Clone)]
pub(super) struct WarmHeap {
    /// The worker and its state.
    at: WarmRef,
    /// Where that state stands in the store.
    head: Head,
    /// What replaying the records after the stored snapshot costs.
    debt: Debt,
    /// When it was last run or stored.
    used: Instant,
}

/// The records after a heap's stored snapshot, as what replaying them would cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Debt {
    calls: u32,
    bytes: u64,
    run_time: Duration,
}

impl Debt {
    /// The debt with `records` added.
    pub(super) fn with_records(mut self, records: &[Record]) -> Self {
        for record in records {
            let bytes = match &record.effect {
                Effect::Call { code, .. } => code.len(),
                Effect::State { envelope, .. } => envelope.len(),
            };
            self = self.with_call(bytes, Duration::ZERO);
        }
        self
    }

    /// The debt with one call of `bytes` of code that ran for `run_time` added.
    pub(super) fn with_call(self, bytes: usize, run_time: Duration) -> Self {
        Self {
            calls: self.calls.saturating_add(1),
            bytes: self.bytes.saturating_add(bytes as u64),
            run_time: self.run_time.saturating_add(run_time),
        }
    }

    /// Whether it has reached one of `budget`'s bounds.
    pub(super) fn due(&self, budget: &Checkpoints) -> bool {
        self.calls >= budget.calls || self.bytes >= budget.bytes || self.run_time >= budget.run_time
    }
}

/// A stored heap, verified, with the committed calls its snapshot lacks.
pub(super) struct OpenedHeap {
    snapshot: bytes::Bytes,
    read_only: ReadOnly,
    head: Head,
    replay: Vec<Record>,
}

/// How a stored heap starts a run, and how the run's result is committed.
pub(super) struct Loaded {
    pub(super) start: Start,
    /// Committed calls to run again first.
    pub(super) replay: Vec<Record>,
    pub(super) commit: Commit,
    /// What replaying the records after the stored snapshot costs, with `replay` run.
    pub(super) debt: Debt,
    pub(super) read_only: ReadOnly,
    /// Why a heap the caller may expect starts empty.
    pub(super) notice: Option<String>,
}

/// How a successful run is committed.
#[derive(Debug, Clone)]
pub(super) enum Commit {
    /// Append a record to the heap's journal: it stands at this head.
    Append(Head),
    /// Make the heap (a new one, or a fork's target): its first snapshot, stored with this
    /// precondition, before the answer.
    Create(Precondition),
}

/// A successful call's facts, as its record keeps them.
pub(super) struct Call<'a> {
    pub(super) code: &'a str,
    pub(super) limits: &'a Limits,
    pub(super) completion: &'a Completion,
    pub(super) console: &'a Console,
}

/// A committed call whose snapshot is still to be stored: the checkpoint that follows it.
pub(super) struct Pending {
    /// The new state, being snapshotted (or snapshotted already).
    state: PendingState,
    /// Where the heap stands with the call committed.
    head: Head,
    read_only: ReadOnly,
}

pub(super) enum PendingState {
    Saving(Saving),
    Saved(Saved),
}

impl Heaps {
    /// `heap`'s calls since its stored snapshot, the latest `limit` of them (the caller holds
    /// the heap's lock).
    pub(super) async fn history(&self, heap: &str, limit: usize) -> Result<History, CallError> {
        let stored = match self.storage.get(heap).await {
            Ok(stored) => stored,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(CallError::Missing { heap: heap.into() })
            }
            Err(e) => return Err(CallError::storage(heap)(e)),
        };
        let header = envelope::header(&stored.bytes).map_err(|error| CallError::Envelope {
            heap: heap.into(),
            error,
        })?;
        let head = Head::at(stored.version, header.position);
        let (_, records) = self.read_records(heap, head).await?;
        let left_out = records.len().saturating_sub(limit);
        let calls = records
            .into_iter()
            .skip(left_out)
            .map(|record| {
                let (code, stored_state) = match record.effect {
                    Effect::Call { code, .. } => (excerpt(&code), None),
                    Effect::State { why, .. } => (String::new(), Some(why)),
                };
                HistoryCall {
                    record: record.seq,
                    at_ms: record.at_ms,
                    code,
                    output: record.output,
                    stored_state,
                }
            })
            .collect();
        Ok(History {
            snapshot_record: header.position.through,
            calls,
            left_out,
        })
    }

    /// Deletes `heap` (the caller holds its lock): its snapshot, then its journal, and what
    /// this runtime knew of it.
    pub(super) async fn delete(&self, heap: &str) -> Result<(), CallError> {
        self.forget(heap);
        self.raw_sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(heap);
        self.learned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(heap);
        self.storage
            .delete(heap)
            .await
            .map_err(CallError::storage(heap))?;
        // Gone with the snapshot: a record left behind (if this fails) belongs to a lineage no
        // later heap of this name has.
        if let Err(e) = self.storage.trim_journal(heap, u64::MAX).await {
            tracing::warn!(heap, "the deleted heap's journal stays: {e}");
        }
        Ok(())
    }

    /// Where `heap`'s next run starts: its warm isolate if nothing changed in the store since
    /// (with the records others committed meanwhile to run again first), otherwise its
    /// stored snapshot (verified here, before V8 sees a byte) and the records after it, or a
    /// new heap.
    pub(super) async fn load(&self, heap: &str) -> Result<Loaded, CallError> {
        let warm = self.warm().get(heap).cloned();
        if let Some(warm) = warm {
            let caught_up = self.catch_up(heap, warm.head).await?;
            if let Some((head, replay)) = caught_up {
                return Ok(Loaded {
                    start: Start::Warm(warm.at),
                    debt: warm.debt.with_records(&replay),
                    replay,
                    commit: Commit::Append(head),
                    read_only: ReadOnly::Shared,
                    notice: None,
                });
            }
            tracing::debug!(
                heap,
                "heap changed in the store: its warm isolate is dropped"
            );
            self.forget(heap);
        }
        match self.storage.get(heap).await {
            Ok(stored) => {
                let opened = self.open(heap, stored).await?;
                let start = match opened.read_only {
                    ReadOnly::Shared => Start::Snapshot(opened.snapshot),
                    ReadOnly::Own => Start::Alone(opened.snapshot),
                };
                Ok(Loaded {
                    start,
                    debt: Debt::default().with_records(&opened.replay),
                    replay: opened.replay,
                    commit: Commit::Append(opened.head),
                    read_only: opened.read_only,
                    notice: None,
                })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Loaded {
                start: Start::New,
                debt: Debt::default(),
                replay: Vec::new(),
                commit: Commit::Create(Precondition::MustNotExist),
                read_only: ReadOnly::Shared,
                notice: self
                    .storage
                    .gone(heap)
                    .map(|gone| crate::storage::explain_gone(&gone, heap)),
            }),
            Err(error) => Err(CallError::storage(heap)(error)),
        }
    }

    /// Whether a warm isolate at `head` still stands for `heap`: the stored snapshot is the
    /// same (a cheap question; the memory store may have dropped the heap on its own), and
    /// the records committed after `head` by other processes are what it must run again.
    /// `None` when the snapshot changed.
    pub(super) async fn catch_up(
        &self,
        heap: &str,
        head: Head,
    ) -> Result<Option<(Head, Vec<Record>)>, CallError> {
        let current = self
            .storage
            .version(heap)
            .await
            .map_err(CallError::storage(heap))?;
        if current.as_ref() != Some(&head.version) {
            return Ok(None);
        }
        if self.storage.sharing() == Sharing::Process {
            // Only this runtime appends, under the heap's lock: nothing follows `head`.
            return Ok(Some((head, Vec::new())));
        }
        self.records_after(heap, head).await.map(Some)
    }

    /// The committed records of `heap` that follow `head`, and where the heap stands after
    /// them. Records of another lineage (a heap deleted and made again under this name) are
    /// passed over; a record of this lineage that does not follow the chain is damage.
    pub(super) async fn records_after(
        &self,
        heap: &str,
        head: Head,
    ) -> Result<(Head, Vec<Record>), CallError> {
        let (head, records) = self.read_records(heap, head).await?;
        self.learn(heap, records.iter().map(|r| r.seq));
        Ok((head, records))
    }

    /// [`Heaps::records_after`], without noting the records as learned (for trimming).
    pub(super) async fn read_records(
        &self,
        heap: &str,
        head: Head,
    ) -> Result<(Head, Vec<Record>), CallError> {
        let stored = self
            .storage
            .read_journal(heap, head.seq)
            .await
            .map_err(CallError::storage(heap))?;
        let mut head = head;
        let mut records = Vec::new();
        for stored in stored {
            let record = match crate::record::Record::decode(&stored.bytes) {
                Ok(record) => record,
                Err(error) => {
                    return Err(CallError::Journal {
                        heap: heap.into(),
                        seq: stored.seq,
                        error: error.to_string(),
                    })
                }
            };
            if record.lineage != head.lineage || record.heap != heap {
                continue;
            }
            if stored.seq != head.seq + 1 || record.seq != stored.seq {
                // A gap: what follows cannot be applied (trimmed meanwhile, or a writer that
                // failed); the heap stands where the chain ends.
                break;
            }
            if record.prev != head.chain {
                return Err(CallError::Journal {
                    heap: heap.into(),
                    seq: stored.seq,
                    error: "it does not follow the record before it".into(),
                });
            }
            head.seq = stored.seq;
            head.chain = Record::chain(record.prev, &stored.bytes);
            records.push(record);
        }
        Ok((head, records))
    }

    /// Verifies a stored heap, takes out its snapshot (checksums and decompression take
    /// milliseconds on big heaps: off the async threads) and reads the records after it. A
    /// record that holds a whole state replaces the snapshot.
    pub(super) async fn open(&self, heap: &str, stored: Snapshot) -> Result<OpenedHeap, CallError> {
        // A copy sharing another heap's bytes carries that heap's name, as the store knows.
        let name = self
            .storage
            .sealed_for(heap)
            .unwrap_or_else(|| heap.to_string());
        let bytes = stored.bytes;
        let opened = blocking(move || envelope::open(&bytes, &name))
            .await?
            .map_err(|error| CallError::Envelope {
                heap: heap.into(),
                error,
            })?;
        self.learn_raw_size(heap, &stored.version, opened.snapshot.len() as u64);
        let head = Head {
            version: stored.version,
            lineage: opened.position.lineage,
            seq: opened.position.through,
            chain: opened.position.chain,
        };
        let (head, mut replay) = self.records_after(heap, head).await?;
        let (mut snapshot, mut read_only) = (opened.snapshot, opened.read_only);
        // From the last record that holds a state on, only the calls after it run again.
        if let Some(at) = replay
            .iter()
            .rposition(|r| matches!(r.effect, Effect::State { .. }))
        {
            let later = replay.split_off(at + 1);
            let Some(Record {
                effect: Effect::State { envelope, .. },
                ..
            }) = replay.pop()
            else {
                return Err(CallError::Internal("a state record went missing".into()));
            };
            let name = heap.to_string();
            let state = blocking(move || envelope::open(&envelope, &name))
                .await?
                .map_err(|error| CallError::Envelope {
                    heap: heap.into(),
                    error,
                })?;
            (snapshot, read_only) = (state.snapshot, state.read_only);
            replay = later;
        }
        Ok(OpenedHeap {
            snapshot,
            read_only,
            head,
            replay,
        })
    }

    /// Recovers `heap` from a record, `seq`, that did not reproduce its call (`why`): stores
    /// the state the records before it leave as the heap's snapshot, standing after every
    /// record so far, so that the heap loads without the lost calls. Returns what to tell the
    /// caller.
    pub(super) async fn recover(
        &self,
        heap: &str,
        seq: u64,
        why: &str,
    ) -> Result<String, CallError> {
        self.forget(heap);
        let mut opened = self.read_existing(heap).await?;
        let head = opened.head.clone();
        opened.replay.retain(|record| record.seq < seq);
        let read_only = opened.read_only;
        let snapshot = current_state(&self.executor, heap, opened).await?;
        let position = Position {
            lineage: head.lineage,
            through: head.seq,
            chain: head.chain,
        };
        let saved = Saved {
            snapshot,
            warm: None,
        };
        let precondition = Precondition::MustMatch(head.version.clone());
        self.put_snapshot(heap, saved, read_only, position, precondition)
            .await?;
        let calls = match head.seq.saturating_sub(seq) {
            0 => format!("1 committed call was lost (journal record {seq})"),
            n => format!(
                "{} committed calls were lost (journal records {seq} to {})",
                n + 1,
                seq + n
            ),
        };
        tracing::warn!(heap, seq, why, "a committed call did not replay: {calls}");
        Ok(format!(
            "heap '{heap}' lost work: {calls} because replaying record {seq} did not reproduce \
             its call ({why}); the heap is as the call before it left it"
        ))
    }

    /// Where a fork into `to` starts: `from`'s stored state (an empty heap for `None`),
    /// never a warm isolate, which stands for `from` and stays so.
    pub(super) async fn load_fork(
        &self,
        from: Option<&str>,
        to: &str,
        overwrite: bool,
    ) -> Result<Loaded, CallError> {
        self.check_free(to, overwrite).await?;
        // A heap being replaced is not kept warm either.
        self.forget(to);
        let (start, replay, read_only) = match from {
            None => (Start::New, Vec::new(), ReadOnly::Shared),
            Some(from) => {
                let opened = self.read_existing(from).await?;
                let start = match opened.read_only {
                    ReadOnly::Shared => Start::Snapshot(opened.snapshot),
                    ReadOnly::Own => Start::Alone(opened.snapshot),
                };
                (start, opened.replay, opened.read_only)
            }
        };
        Ok(Loaded {
            start,
            replay,
            debt: Debt::default(),
            commit: Commit::Create(replacing(overwrite)),
            read_only,
            notice: None,
        })
    }

    /// Refuses to write over an existing `heap` unless `overwrite`.
    pub(super) async fn check_free(&self, heap: &str, overwrite: bool) -> Result<(), CallError> {
        if overwrite {
            return Ok(());
        }
        match self.storage.version(heap).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err(CallError::Exists { heap: heap.into() }),
            Err(e) => Err(CallError::storage(heap)(e)),
        }
    }

    /// A heap that must exist, verified, with the records after its snapshot.
    pub(super) async fn read_existing(&self, heap: &str) -> Result<OpenedHeap, CallError> {
        match self.storage.get(heap).await {
            Ok(stored) => self.open(heap, stored).await,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err(CallError::Missing { heap: heap.into() })
            }
            Err(e) => Err(CallError::storage(heap)(e)),
        }
    }

    /// Copies `from` to `to`: inside the store, sharing the bytes, where it can (the memory
    /// store) and no record follows the snapshot; otherwise the state is verified (brought up
    /// to date by running its records again, in a job) and sealed for its new name (each
    /// heap's bytes are bound to its name), as a new lineage.
    pub(super) async fn copy(
        &self,
        executor: &Executor,
        from: &str,
        to: &str,
        overwrite: bool,
        at: Option<u64>,
    ) -> Result<Copied, CallError> {
        let precondition = replacing(overwrite);
        let mut opened = self.read_existing(from).await?;
        if let Some(at) = at {
            let first = opened
                .replay
                .first()
                .map_or(opened.head.seq, |r| r.seq.saturating_sub(1));
            if at < first || at > opened.head.seq {
                return Err(CallError::NoSuchRecord {
                    heap: from.into(),
                    record: at,
                    first,
                    last: opened.head.seq,
                });
            }
            opened.replay.retain(|record| record.seq <= at);
        }
        let shared = match opened.replay.is_empty() {
            true => self.storage.copy(from, to, precondition.clone()).await,
            false => Ok(None),
        };
        let copied = match shared {
            Ok(Some(version)) => {
                let size = self
                    .storage
                    .list(to)
                    .await
                    .ok()
                    .and_then(|heaps| heaps.into_iter().find(|m| m.name == to))
                    .map_or(0, |meta| meta.size);
                let raw_size = self
                    .storage
                    .raw_size(to, &version)
                    .unwrap_or(opened.snapshot.len() as u64);
                Ok((version, size, raw_size))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(CallError::Missing { heap: from.into() })
            }
            Err(e) => Err(e),
            Ok(None) => {
                // Not worth decompressing and compressing again for a copy that cannot land.
                self.check_free(to, overwrite).await?;
                let snapshot = if opened.replay.is_empty() {
                    opened.snapshot
                } else {
                    current_state(executor, from, opened).await?
                };
                let (name, codec, read_only) = (to.to_string(), self.codec, ReadOnly::Shared);
                let raw_size = snapshot.len() as u64;
                let position = new_lineage();
                let sealed =
                    blocking(move || envelope::seal(&snapshot, &name, read_only, codec, position))
                        .await?;
                let size = sealed.len() as u64;
                let version = self.storage.put(to, sealed.into(), precondition).await;
                version.map(|version| (version, size, raw_size))
            }
        };
        let (version, size, raw_size) = match copied {
            Ok(copied) => copied,
            Err(e) if e.kind() == ErrorKind::Conflict => {
                return Err(CallError::Exists { heap: to.into() })
            }
            Err(e) => return Err(CallError::storage(to)(e)),
        };
        // `to` holds other state now: no warm isolate stands for it.
        self.forget(to);
        self.learn_raw_size(to, &version, raw_size);
        Ok(Copied {
            from: from.into(),
            to: to.into(),
            size,
            raw_size,
        })
    }

    /// Makes `heap` from a run's new state: its first snapshot, a new lineage, stored if
    /// `precondition` holds, before the run is answered.
    pub(super) async fn create(
        &self,
        heap: &str,
        new_state: NewState,
        precondition: Precondition,
        read_only: ReadOnly,
    ) -> Result<(), CallError> {
        self.forget(heap);
        let saving = match new_state {
            NewState::Saving(saving) => saving,
            NewState::Live(warm) => {
                self.executor.forget(warm, heap);
                return Err(CallError::Internal("a new heap came back unsaved".into()));
            }
        };
        let saved = saving.finish().await?;
        let position = new_lineage();
        let (version, warm) = self
            .put_snapshot(heap, saved, read_only, position, precondition)
            .await?;
        let head = Head::at(version, position);
        self.keep_warm(heap, warm, read_only, head, Debt::default());
        Ok(())
    }

    /// Commits a run on `heap`, which stood at `head`, by appending its record: the call is
    /// durable when this returns. A call whose inputs cannot be replayed is committed with
    /// the state it left. Returns the snapshot still to store (the checkpoint), if the new
    /// state is not live in a worker, which then stands for the heap with `debt`.
    pub(super) async fn append(
        &self,
        heap: &str,
        head: &Head,
        call: Call<'_>,
        new_state: NewState,
        read_only: ReadOnly,
        debt: Debt,
    ) -> Result<Option<Pending>, CallError> {
        // Until the call is committed, no warm isolate stands for the heap.
        self.warm().remove(heap);
        let (saving, live) = match new_state {
            NewState::Saving(saving) => (Some(saving), None),
            NewState::Live(warm) => (None, Some(warm)),
        };
        let seq = head.seq + 1;
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let (effect, state) = match (&call.completion.tape.replay, saving) {
            (Replay::Exact, saving) => (
                Effect::Call {
                    code: call.code.to_string(),
                    heap_bytes: call.limits.heap_bytes,
                    tape: call.completion.tape.clone(),
                    fingerprint: engine::fingerprint(call.completion, call.console),
                },
                saving.map(PendingState::Saving),
            ),
            (Replay::Impossible(_), None) => {
                if let Some(warm) = live {
                    self.executor.forget(warm, heap);
                }
                return Err(CallError::Internal(
                    "a call that cannot be replayed came back without its state".into(),
                ));
            }
            (Replay::Impossible(why), Some(saving)) => {
                let saved = saving.finish().await?;
                let (name, codec) = (heap.to_string(), self.codec);
                let snapshot = saved.snapshot.clone();
                let envelope = blocking(move || {
                    envelope::seal(&snapshot, &name, read_only, codec, Position::default())
                })
                .await?;
                let effect = Effect::State {
                    why: why.clone(),
                    envelope: envelope.into(),
                };
                (effect, Some(PendingState::Saved(saved)))
            }
        };
        let record = Record {
            heap: heap.to_string(),
            lineage: head.lineage,
            seq,
            prev: head.chain,
            at_ms,
            output: excerpt(&call.completion.output),
            effect,
        };
        let bytes = bytes::Bytes::from(record.encode());
        let chain = Record::chain(head.chain, &bytes);
        let discard = |state: Option<PendingState>| {
            // The worker keeps its process only once its snapshot is read.
            if let Some(PendingState::Saving(saving)) = state {
                tokio::spawn(saving.finish());
            }
            // A live state that was not committed stands for nothing.
            if let Some(warm) = live {
                self.executor.forget(warm, heap);
            }
        };
        match self
            .storage
            .append(heap, crate::storage::Record::new(seq, bytes))
            .await
        {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Conflict => {
                discard(state);
                return Err(CallError::Conflict {
                    heap: heap.into(),
                    attempts: 1,
                });
            }
            Err(error) => {
                discard(state);
                return Err(CallError::storage(heap)(error));
            }
        }
        self.learn(heap, [seq]);
        if self.storage.sharing() != Sharing::Process {
            if let Err(e) = self.still_there(heap, head).await {
                discard(state);
                return Err(e);
            }
        }
        let head = Head {
            seq,
            chain,
            ..head.clone()
        };
        match (state, live) {
            (Some(state), _) => Ok(Some(Pending {
                state,
                head,
                read_only,
            })),
            (None, live) => {
                self.keep_warm(heap, live, read_only, head, debt);
                Ok(None)
            }
        }
    }

    /// After an append to a store others share: the heap the record went to is still the
    /// one the call ran on, not deleted or made again meanwhile (the record would be lost
    /// with the old one).
    pub(super) async fn still_there(&self, heap: &str, head: &Head) -> Result<(), CallError> {
        let replaced = || CallError::Replaced { heap: heap.into() };
        let current = self
            .storage
            .version(heap)
            .await
            .map_err(CallError::storage(heap))?;
        match current {
            None => Err(replaced()),
            Some(version) if version == head.version => Ok(()),
            Some(_) => {
                // Another process stored a snapshot: of this lineage, or of a new heap.
                let stored = match self.storage.get(heap).await {
                    Ok(stored) => stored,
                    Err(e) if e.kind() == ErrorKind::NotFound => return Err(replaced()),
                    Err(e) => return Err(CallError::storage(heap)(e)),
                };
                match envelope::header(&stored.bytes) {
                    Ok(header) if header.position.lineage == head.lineage => Ok(()),
                    _ => Err(replaced()),
                }
            }
        }
    }

    /// Stores the snapshot of a committed call (a checkpoint) if the heap's snapshot is still
    /// the one it followed, keeps the state warm, and trims the records it covers. A failure
    /// loses nothing: the records stay, and the heap's next load runs them again.
    pub(super) async fn checkpoint(&self, heap: &str, pending: Pending) {
        let Pending {
            state,
            head,
            read_only,
        } = pending;
        let saved = match state {
            PendingState::Saved(saved) => saved,
            PendingState::Saving(saving) => match saving.finish().await {
                Ok(saved) => saved,
                Err(e) => {
                    tracing::warn!(
                        heap,
                        "a committed call's snapshot failed: {e}; its record stays"
                    );
                    return;
                }
            },
        };
        let position = Position {
            lineage: head.lineage,
            through: head.seq,
            chain: head.chain,
        };
        let precondition = Precondition::MustMatch(head.version.clone());
        match self
            .put_snapshot(heap, saved, read_only, position, precondition)
            .await
        {
            Ok((version, warm)) => {
                let head = Head::at(version, position);
                self.keep_warm(heap, warm, read_only, head, Debt::default());
                self.trim(heap, position.through).await;
            }
            Err(e) => {
                self.forget(heap);
                tracing::debug!(
                    heap,
                    "no checkpoint after a committed call: {e}; its record stays"
                );
            }
        }
    }

    /// Seals `saved` at `position` and stores it as `heap`'s snapshot if `precondition`
    /// holds: its version, and where it is warm.
    pub(super) async fn put_snapshot(
        &self,
        heap: &str,
        saved: Saved,
        read_only: ReadOnly,
        position: Position,
        precondition: Precondition,
    ) -> Result<(Version, Option<WarmRef>), CallError> {
        let (name, codec) = (heap.to_string(), self.codec);
        let raw_len = saved.snapshot.len();
        let snapshot = saved.snapshot;
        let sealed =
            blocking(move || envelope::seal(&snapshot, &name, read_only, codec, position)).await?;
        match self.storage.put(heap, sealed.into(), precondition).await {
            Ok(version) => {
                self.learn_raw_size(heap, &version, raw_len as u64);
                Ok((version, saved.warm))
            }
            Err(e) if e.kind() == ErrorKind::Conflict => Err(CallError::Conflict {
                heap: heap.into(),
                attempts: 1,
            }),
            Err(error) => Err(CallError::storage(heap)(error)),
        }
    }

    /// Remembers that `warm` holds `heap` at `head`, `debt` after its stored snapshot (heaps
    /// with their own read-only heap are never kept warm).
    pub(super) fn keep_warm(
        &self,
        heap: &str,
        warm: Option<WarmRef>,
        read_only: ReadOnly,
        head: Head,
        debt: Debt,
    ) {
        if let (Some(at), ReadOnly::Shared) = (warm, read_only) {
            let warm = WarmHeap {
                at,
                head,
                debt,
                used: Instant::now(),
            };
            self.warm().insert(heap.to_string(), warm);
        }
    }

    /// Stores a snapshot of `heap`'s live state if calls ran on it since its stored one (the
    /// caller holds the heap's lock). Nothing is lost if this fails: the calls are in the
    /// journal.
    pub(super) async fn checkpoint_live(&self, heap: &str) {
        let Some(warm) = self.warm().get(heap).cloned() else {
            return;
        };
        if warm.debt.calls == 0 {
            return;
        }
        let saved = match self.executor.checkpoint(warm.at, heap, self.limits).await {
            Ok(Ok(saved)) => saved,
            Ok(Err(e)) => {
                tracing::warn!(heap, "no checkpoint: {e}; the calls stay in the journal");
                self.forget(heap);
                return;
            }
            // Its worker is busy (try again later) or no longer holds it (the next call
            // loads the heap from the store).
            Err(NotWarm) => {
                if let Some(warm) = self.warm().get_mut(heap) {
                    warm.used = Instant::now();
                }
                return;
            }
        };
        let position = Position {
            lineage: warm.head.lineage,
            through: warm.head.seq,
            chain: warm.head.chain,
        };
        let now_at = saved.warm;
        let precondition = Precondition::MustMatch(warm.head.version.clone());
        let stored = self
            .put_snapshot(heap, saved, ReadOnly::Shared, position, precondition)
            .await;
        match stored {
            Ok((version, at)) => {
                let head = Head::at(version, position);
                self.keep_warm(heap, at, ReadOnly::Shared, head, Debt::default());
                self.trim(heap, position.through).await;
            }
            // Another writer stored a snapshot first: this one is not needed.
            Err(CallError::Conflict { .. }) => self.forget(heap),
            Err(e) => {
                tracing::warn!(heap, "no checkpoint: {e}; the calls stay in the journal");
                // The worker holds the same state under its new number.
                self.keep_warm(heap, now_at, ReadOnly::Shared, warm.head, warm.debt);
            }
        }
    }

    /// Notes records of `heap` this runtime learned of just now.
    pub(super) fn learn(&self, heap: &str, seqs: impl IntoIterator<Item = u64>) {
        let now = Instant::now();
        let mut learned = self.learned.lock().unwrap_or_else(PoisonError::into_inner);
        let known = learned.entry(heap.to_string()).or_default();
        known.extend(seqs.into_iter().map(|seq| (seq, now)));
    }

    /// Removes the records of `heap` a checkpoint through `through` covers: at once from a
    /// store only this process writes; from a shared one, those older than
    /// [`RECORDS_KEPT_FOR`], and never the newest.
    pub(super) async fn trim(&self, heap: &str, through: u64) {
        let alone = self.storage.sharing() == Sharing::Process;
        let bound = {
            let mut learned = self.learned.lock().unwrap_or_else(PoisonError::into_inner);
            let known = learned.entry(heap.to_string()).or_default();
            let mut bound = None;
            while let Some(&(seq, at)) = known.front() {
                let covered = if alone { seq <= through } else { seq < through };
                if !covered || !(alone || at.elapsed() >= RECORDS_KEPT_FOR) {
                    break;
                }
                bound = Some(seq);
                known.pop_front();
            }
            bound
        };
        if let Some(bound) = bound {
            if let Err(e) = self.storage.trim_journal(heap, bound).await {
                tracing::warn!(heap, "could not trim the journal: {e}");
            }
        }
    }

    pub(super) fn warm(&self) -> std::sync::MutexGuard<'_, HashMap<String, WarmHeap>> {
        self.warm.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// No warm isolate stands for `heap` any more: the worker holding one drops it with its
    /// next job.
    pub(super) fn forget(&self, heap: &str) {
        let dropped = self.warm().remove(heap);
        if let Some(warm) = dropped {
            self.executor.forget(warm.at, heap);
        }
    }

    /// Remembers a raw size the store cannot tell (a store that knows them, such as the
    /// memory store, keeps them: heaps it drops would linger here).
    pub(super) fn learn_raw_size(&self, heap: &str, version: &Version, raw_len: u64) {
        if self.storage.raw_size(heap, version).is_some() {
            return;
        }
        self.raw_sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(heap.to_string(), (version.clone(), raw_len));
    }

    /// `meta` with its raw size: from the store if it knows, else as this runtime last saw
    /// that version.
    pub(super) fn listed(&self, meta: HeapMeta) -> Listed {
        let raw_size = self
            .storage
            .raw_size(&meta.name, &meta.version)
            .or_else(|| {
                let known = self
                    .raw_sizes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                known
                    .get(&meta.name)
                    .filter(|(version, _)| *version == meta.version)
                    .map(|(_, raw)| *raw)
            });
        Listed { meta, raw_size }
    }
}

impl Head {
    /// A heap whose snapshot, at `version`, stands at `position` with no record after it.
    pub(super) fn at(version: Version, position: Position) -> Self {
        Self {
            version,
            lineage: position.lineage,
            seq: position.through,
            chain: position.chain,
        }
    }
}

/// Where a new heap's first snapshot stands: a new lineage, whose records are numbered from
/// a point of their own, so that a record left by an earlier heap of the same name is never
/// taken for one of this heap's.
pub(super) fn new_lineage() -> Position {
    let random = uuid::Uuid::new_v4().as_u64_pair();
    Position {
        lineage: random.0 | 1,
        through: (random.1 >> 24) << 8,
        chain: random.0 ^ random.1,
    }
}

/// The state of `heap` as `opened` and its records leave it, as a raw snapshot: the records
/// run again in a job that changes nothing else.
pub(super) async fn current_state(
    executor: &Executor,
    heap: &str,
    opened: OpenedHeap,
) -> Result<bytes::Bytes, CallError> {
    let start = match opened.read_only {
        ReadOnly::Shared => Start::Snapshot(opened.snapshot),
        ReadOnly::Own => Start::Alone(opened.snapshot),
    };
    let job = Job {
        code: "undefined".into(),
        target: Target::Heap {
            name: heap.to_string(),
            start,
            replay: opened.replay,
            keep: Keep::Snapshot,
            last_error: None,
        },
        limits: Limits::default(),
        live: None,
        host: None,
    };
    match executor.run_on_heap(job).await {
        HeapRan::Succeeded {
            state: NewState::Saving(saving),
            ..
        } => Ok(saving.finish().await?.snapshot),
        HeapRan::Failed { error, .. } => Err(CallError::Run(error)),
        // A job that keeps a snapshot never leaves its state live, and one that starts from
        // a stored snapshot never needs a warm heap.
        HeapRan::Succeeded { .. } | HeapRan::NotWarm => Err(CallError::Internal(
            "the state of a heap brought up to date was not snapshotted".into(),
        )),
    }
}

/// Checkpoints the live heaps that have been idle for their budget's while, until the
/// runtime stops or is dropped. A heap in use is left for later.
pub(super) async fn checkpoint_idle_heaps(heaps: std::sync::Weak<Heaps>) {
    let tick = match heaps.upgrade() {
        Some(heaps) => {
            (heaps.checkpoints.idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(5))
        }
        None => return,
    };
    loop {
        tokio::time::sleep(tick).await;
        let Some(heaps) = heaps.upgrade() else {
            return;
        };
        if heaps.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let idle = heaps.checkpoints.idle;
        let due: Vec<String> = heaps
            .warm()
            .iter()
            .filter(|(_, warm)| warm.debt.calls > 0 && warm.used.elapsed() >= idle)
            .map(|(name, _)| name.clone())
            .collect();
        for heap in due {
            if heaps.locks.is_held(&heap) {
                continue;
            }
            let _guard = heaps.locks.lock(&heap).await;
            heaps.checkpoint_live(&heap).await;
        }
    }
}

/// The precondition of a write that creates a heap, or replaces it with `overwrite`.
pub(super) fn replacing(overwrite: bool) -> Precondition {
    if overwrite {
        Precondition::Any
    } else {
        Precondition::MustNotExist
    }
}

/// Most characters of code or output a record or a history entry keeps as an excerpt.
pub(super) const EXCERPT_CHARS: usize = 200;

/// The first [`EXCERPT_CHARS`] characters of `text`, marked when cut.
pub(super) fn excerpt(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Runs `f` on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CallError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CallError::Internal(format!("a blocking task failed: {e}")))
}
