//! Whole results kept for a while after an answer showed a preview of them, so that a client
//! can read the rest (`read_output`, or `resources/read` of the answer's `resource_link`)
//! without running the code again: the way for stateless calls, where there is no `_`.
//!
//! Bounded in bytes (the oldest go first) and in time; ids are random, and a result is readable
//! only by the owner whose call made it (a tenant's, or the server's).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::runtime::Owner;

/// The scheme of a kept result's resource.
pub const SCHEME: &str = "output://";

/// How long a result stays readable.
pub const RETENTION: Duration = Duration::from_secs(10 * 60);

/// Most bytes of results kept at once.
pub const MAX_BYTES: usize = 64 << 20;

struct Kept {
    id: String,
    owner: Owner,
    text: Arc<str>,
    at: Instant,
}

/// The results kept, oldest first.
#[derive(Default)]
pub struct Outputs {
    kept: Mutex<VecDeque<Kept>>,
}

impl std::fmt::Debug for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outputs").finish_non_exhaustive()
    }
}

impl Outputs {
    /// Keeps `text`; returns its resource URI. A text longer than [`MAX_BYTES`] is not kept.
    pub fn keep(&self, owner: &Owner, text: String) -> Option<String> {
        if text.len() > MAX_BYTES {
            return None;
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        expire(&mut kept);
        let mut bytes: usize = kept.iter().map(|k| k.text.len()).sum::<usize>() + text.len();
        while bytes > MAX_BYTES {
            match kept.pop_front() {
                Some(old) => bytes -= old.text.len(),
                None => break,
            }
        }
        kept.push_back(Kept {
            id: id.clone(),
            owner: owner.clone(),
            text: text.into(),
            at: Instant::now(),
        });
        Some(format!("{SCHEME}{id}"))
    }

    /// The result `owner` kept as `uri`, if it still is.
    pub fn get(&self, owner: &Owner, uri: &str) -> Option<Arc<str>> {
        let id = uri.strip_prefix(SCHEME)?;
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        expire(&mut kept);
        kept.iter()
            .find(|k| k.id == id && k.owner == *owner)
            .map(|k| Arc::clone(&k.text))
    }
}

fn expire(kept: &mut VecDeque<Kept>) {
    while kept.front().is_some_and(|k| k.at.elapsed() > RETENTION) {
        kept.pop_front();
    }
}

/// A part of `text`: from byte `offset` (moved back to a character boundary), at most
/// `limit` bytes (cut at a character boundary). Returns the part and where it starts.
pub fn slice(text: &str, offset: usize, limit: usize) -> (&str, usize) {
    let mut start = offset.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = start.saturating_add(limit).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[start..end], start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_result_is_read_back_by_its_uri_only() {
        let outputs = Outputs::default();
        let server = Owner::Server;
        let uri = outputs.keep(&server, "whole".into()).unwrap();
        assert!(uri.starts_with(SCHEME));
        assert_eq!(outputs.get(&server, &uri).as_deref(), Some("whole"));
        assert_eq!(outputs.get(&server, "output://0"), None);
        assert_eq!(outputs.get(&server, "heap://x"), None);
        // Another owner's, even with its id, is not there.
        let tenant = Owner::Tenant(crate::runtime::Tenant::new("t"));
        assert_eq!(outputs.get(&tenant, &uri), None);
    }

    #[test]
    fn the_oldest_go_first_past_the_byte_limit() {
        let outputs = Outputs::default();
        let o = Owner::Server;
        let big = "x".repeat(MAX_BYTES / 2 + 1);
        let first = outputs.keep(&o, big.clone()).unwrap();
        let second = outputs.keep(&o, big).unwrap();
        assert!(outputs.get(&o, &first).is_none());
        assert!(outputs.get(&o, &second).is_some());
        assert!(outputs.keep(&o, "y".repeat(MAX_BYTES + 1)).is_none());
    }

    #[test]
    fn slices_keep_characters_whole() {
        let text = "aé€b";
        assert_eq!(slice(text, 0, 2), ("a", 0));
        assert_eq!(slice(text, 2, 3), ("é", 1));
        assert_eq!(slice(text, 3, 100), ("€b", 3));
        assert_eq!(slice(text, 100, 5), ("", 7));
    }
}
