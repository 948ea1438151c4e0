use std::fmt;

/// What kind of failure a store reports: the part of an error a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No heap is stored under that name.
    NotFound,
    /// The heap name is not acceptable (see [`crate::validate_heap_name`]).
    InvalidName,
    /// A conditional put failed: the heap exists when it must not, or its version is
    /// no longer the one the caller read. Re-read and retry.
    Conflict,
    /// The store cannot be reached or is overloaded right now. Retrying may succeed.
    Unavailable,
    /// The stored bytes are damaged or are not a heap snapshot.
    Corrupt,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// A short lower-case label, e.g. `"conflict"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::InvalidName => "invalid name",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Other => "other",
        }
    }

    /// Whether the same call may succeed if it is simply tried again later.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Unavailable)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from a heap store: a [`ErrorKind`] and a message meant for a human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    kind: ErrorKind,
    message: String,
}

impl StoreError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// No heap named `name`.
    pub fn not_found(name: &str) -> Self {
        Self::new(ErrorKind::NotFound, format!("heap '{name}' not found"))
    }

    /// A rejected heap name, with the reason.
    pub fn invalid_name(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidName, message)
    }

    /// A failed precondition on `name`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    /// A transient failure of the backend.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// Damaged or foreign stored bytes.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    /// Any other failure.
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Other, message)
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {}
