//! What the MCP tools do, independent of MCP: run code on a heap (load, verify, execute,
//! snapshot, conditionally store), run code statelessly, list and delete heaps.

use std::sync::Arc;
use std::time::Duration;

use mcp_v8_plugin_api::validate_heap_name;

use crate::engine::{self, Limits, RunError};
use crate::envelope::{self, EnvelopeError};
use crate::storage::{ErrorKind, HeapLocks, HeapMeta, HeapStorage, Precondition, StoreError};

/// Why a tool call failed. Every variant leaves the stored heap as it was.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The heap name was rejected before any store saw it.
    #[error("{0}")]
    InvalidName(StoreError),
    /// The code failed (exception, timeout, snapshot failure).
    #[error("{0}")]
    Run(#[from] RunError),
    /// The stored heap cannot be restored.
    #[error("heap '{heap}' cannot be loaded: {error}")]
    Envelope { heap: String, error: EnvelopeError },
    /// Someone else saved the heap while this call ran on the old state.
    #[error("heap '{heap}' was changed concurrently while this code ran, so its result was not saved; retry the call")]
    Conflict { heap: String },
    /// The heap store failed.
    #[error("storage error ({kind}) for heap '{heap}': {error}", kind = error.kind())]
    Storage { heap: String, error: StoreError },
    /// The execution thread failed unexpectedly.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The result of a stateful run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeapRun {
    /// The rendered completion value.
    pub output: String,
    /// The heap the code ran on (generated when the caller gave none).
    pub heap: String,
}

/// Runs code on heaps kept in a [`HeapStorage`].
pub struct Runtime {
    storage: Arc<dyn HeapStorage>,
    locks: HeapLocks,
    limits: Limits,
}

impl Runtime {
    /// A runtime storing heaps in `storage`, running code under `limits`.
    pub fn new(storage: Arc<dyn HeapStorage>, limits: Limits) -> Self {
        Self {
            storage,
            locks: HeapLocks::default(),
            limits,
        }
    }

    /// The store behind this runtime.
    pub fn storage(&self) -> &Arc<dyn HeapStorage> {
        &self.storage
    }

    /// Runs `code` without any heap.
    pub async fn run_stateless(&self, code: String) -> Result<String, CallError> {
        let limits = self.limits;
        let output = tokio::task::spawn_blocking(move || engine::run_stateless(&code, limits))
            .await
            .map_err(|e| CallError::Internal(e.to_string()))??;
        Ok(output)
    }

    /// Runs `code` on heap `heap` (a new heap with a generated name when `None`) and saves
    /// the heap afterwards, unless the code failed.
    pub async fn run_on_heap(
        &self,
        code: String,
        heap: Option<String>,
    ) -> Result<HeapRun, CallError> {
        let heap = match heap {
            Some(name) => {
                validate_heap_name(&name).map_err(CallError::InvalidName)?;
                name
            }
            None => generated_name(),
        };
        let _guard = self.locks.lock(&heap).await;

        let (snapshot, precondition) = match self.storage.get(&heap).await {
            Ok(stored) => {
                let payload =
                    envelope::open(&stored.bytes).map_err(|error| CallError::Envelope {
                        heap: heap.clone(),
                        error,
                    })?;
                (Some(payload), Precondition::MustMatch(stored.version))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => (None, Precondition::MustNotExist),
            Err(error) => return Err(CallError::Storage { heap, error }),
        };

        let limits = self.limits;
        let outcome =
            tokio::task::spawn_blocking(move || engine::run_stateful(&code, snapshot, limits))
                .await
                .map_err(|e| CallError::Internal(e.to_string()))??;

        match self
            .storage
            .put(&heap, outcome.sealed_heap, precondition)
            .await
        {
            Ok(_) => Ok(HeapRun {
                output: outcome.output,
                heap,
            }),
            Err(e) if e.kind() == ErrorKind::Conflict => Err(CallError::Conflict { heap }),
            Err(error) => Err(CallError::Storage { heap, error }),
        }
    }

    /// All heaps, sorted by name.
    pub async fn list(&self) -> Result<Vec<HeapMeta>, CallError> {
        let mut heaps = self
            .storage
            .list("")
            .await
            .map_err(|error| CallError::Storage {
                heap: "*".into(),
                error,
            })?;
        heaps.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(heaps)
    }

    /// Metadata of one heap, or `None` when it does not exist.
    pub async fn describe(&self, heap: &str) -> Result<Option<HeapMeta>, CallError> {
        validate_heap_name(heap).map_err(CallError::InvalidName)?;
        let heaps = self
            .storage
            .list(heap)
            .await
            .map_err(|error| CallError::Storage {
                heap: heap.into(),
                error,
            })?;
        Ok(heaps.into_iter().find(|m| m.name == heap))
    }

    /// Deletes a heap, waiting for any call running on it.
    pub async fn delete(&self, heap: &str) -> Result<(), CallError> {
        validate_heap_name(heap).map_err(CallError::InvalidName)?;
        let _guard = self.locks.lock(heap).await;
        self.storage
            .delete(heap)
            .await
            .map_err(|error| CallError::Storage {
                heap: heap.into(),
                error,
            })
    }
}

/// A fresh heap name such as `heap-3f9c2a1b7d4e`.
fn generated_name() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("heap-{}", &id[..12])
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
        }
    }
}
