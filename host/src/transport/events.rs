//! The Streamable HTTP transport's event store: every SSE event the server sends is kept for a
//! while, so a client whose stream dropped can reconnect with `Last-Event-ID` and receive what
//! it missed, the result of a long call included.
//!
//! Memory is bounded twice: events older than the retention time go, and so do the oldest
//! events once the kept ones exceed the byte budget. A replay that has caught up with its
//! stream waits for the stream's next events and ends with the answer that closes it (a
//! response or an error), so a client that reconnects in the middle of a call gets the result
//! the moment it exists, without polling.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rmcp::model::ServerJsonRpcMessage;
use rmcp::transport::common::server_side_http::ServerSseMessage;
use rmcp::transport::streamable_http_server::session::{
    EventId, EventStore, EventStoreError, EventStream,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long events are kept, and how many bytes of them at most (`--event-retention`,
/// `--event-max-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Events older than this go.
    pub time: Duration,
    /// The oldest events go once the kept ones are bigger than this (JSON bytes).
    pub bytes: usize,
}

/// SSE events in memory, in the order they were sent.
pub struct MemoryEventStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEventStore").finish_non_exhaustive()
    }
}

struct Shared {
    retention: Retention,
    /// Tells this process's event ids from another's (a restarted server's).
    epoch: String,
    events: Mutex<Events>,
    /// Woken on every new event, for replays that wait.
    appended: Notify,
    /// Ends every waiting replay (server shutdown).
    shutdown: CancellationToken,
}

#[derive(Default)]
struct Events {
    next: u64,
    by_number: BTreeMap<u64, Kept>,
    /// Each stream's event numbers, oldest first.
    streams: HashMap<Arc<str>, VecDeque<u64>>,
    bytes: usize,
}

struct Kept {
    stream: Arc<str>,
    event: ServerSseMessage,
    bytes: usize,
    at: Instant,
    /// A response or error: nothing follows on its stream.
    last: bool,
}

/// What a replay finds of its stream after the events it has sent.
struct Found {
    events: Vec<(u64, ServerSseMessage)>,
    /// The stream's last event is kept (sent before, or among `events`).
    ended: bool,
    /// Nothing of the stream is kept any more.
    gone: bool,
}

impl MemoryEventStore {
    /// An empty store; `shutdown` ends the replays still waiting.
    pub fn new(retention: Retention, shutdown: CancellationToken) -> Self {
        Self {
            shared: Arc::new(Shared {
                retention,
                epoch: format!("{:08x}", uuid::Uuid::new_v4().as_u128() as u32),
                events: Mutex::default(),
                appended: Notify::new(),
                shutdown,
            }),
        }
    }

    /// How many events and bytes are kept.
    pub fn kept(&self) -> (usize, usize) {
        let events = self.shared.lock();
        (events.by_number.len(), events.bytes)
    }
}

impl Shared {
    fn id(&self, number: u64) -> EventId {
        format!("{}-{number}", self.epoch)
    }

    fn number(&self, id: &str) -> Option<u64> {
        let (epoch, number) = id.split_once('-')?;
        (epoch == self.epoch).then(|| number.parse().ok()).flatten()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Events> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Events {
    /// Drops events past their time, then the oldest while over budget.
    fn trim(&mut self, retention: Retention, now: Instant) {
        while let Some(entry) = self.by_number.first_entry() {
            let expired = now.duration_since(entry.get().at) > retention.time;
            if !expired && self.bytes <= retention.bytes {
                break;
            }
            let (number, kept) = entry.remove_entry();
            self.bytes -= kept.bytes;
            if let Some(numbers) = self.streams.get_mut(&kept.stream) {
                if numbers.front() == Some(&number) {
                    numbers.pop_front();
                }
                if numbers.is_empty() {
                    self.streams.remove(&kept.stream);
                }
            }
        }
    }

    fn after(&self, stream: &str, number: u64) -> Found {
        let Some(numbers) = self.streams.get(stream) else {
            return Found {
                events: Vec::new(),
                ended: false,
                gone: true,
            };
        };
        let mut found = Found {
            events: Vec::new(),
            ended: false,
            gone: false,
        };
        for n in numbers.iter().copied() {
            if let Some(kept) = self.by_number.get(&n) {
                found.ended |= kept.last;
                if n > number {
                    found.events.push((n, kept.event.clone()));
                }
            }
        }
        found
    }
}

fn is_last(event: &ServerSseMessage) -> bool {
    matches!(
        event.message.as_deref(),
        Some(ServerJsonRpcMessage::Response(_) | ServerJsonRpcMessage::Error(_))
    )
}

/// An event's size for the budget: its JSON, plus room for the bookkeeping.
fn size(event: &ServerSseMessage) -> usize {
    let json = event
        .message
        .as_deref()
        .and_then(|m| serde_json::to_vec(m).ok())
        .map_or(0, |json| json.len());
    json + 128
}

#[async_trait::async_trait]
impl EventStore for MemoryEventStore {
    async fn store_event(
        &self,
        stream_id: &str,
        event: &ServerSseMessage,
    ) -> Result<EventId, EventStoreError> {
        let shared = &self.shared;
        let now = Instant::now();
        let number = {
            let mut events = shared.lock();
            let number = events.next;
            events.next += 1;
            let stream: Arc<str> = match events.streams.get_key_value(stream_id) {
                Some((stream, _)) => Arc::clone(stream),
                None => Arc::from(stream_id),
            };
            let mut event = event.clone();
            event.event_id = Some(shared.id(number));
            let kept = Kept {
                stream: Arc::clone(&stream),
                bytes: size(&event),
                last: is_last(&event),
                event,
                at: now,
            };
            events.bytes += kept.bytes;
            events.by_number.insert(number, kept);
            events.streams.entry(stream).or_default().push_back(number);
            events.trim(shared.retention, now);
            number
        };
        shared.appended.notify_waiters();
        Ok(shared.id(number))
    }

    async fn replay_events_after(
        &self,
        last_event_id: &str,
    ) -> Result<EventStream, EventStoreError> {
        let shared = Arc::clone(&self.shared);
        let gone = || {
            format!(
                "the events after {last_event_id} are no longer kept (events are kept {} s, \
                 {} MiB at most)",
                shared.retention.time.as_secs(),
                shared.retention.bytes >> 20
            )
        };
        let after = shared.number(last_event_id).ok_or_else(gone)?;
        let stream = {
            let mut events = shared.lock();
            events.trim(shared.retention, Instant::now());
            let kept = events.by_number.get(&after).ok_or_else(gone)?;
            Arc::clone(&kept.stream)
        };
        let replay = Replay {
            shared: Arc::clone(&shared),
            stream,
            after,
            queue: VecDeque::new(),
            ended: false,
        };
        Ok(Box::pin(futures::stream::unfold(replay, Replay::next)))
    }
}

/// A replay of one stream after an event: what is kept, then what comes, until the stream's
/// last event, the stream's events are dropped, or the server shuts down.
struct Replay {
    shared: Arc<Shared>,
    stream: Arc<str>,
    after: u64,
    queue: VecDeque<(u64, ServerSseMessage)>,
    ended: bool,
}

impl Replay {
    async fn next(mut self) -> Option<(ServerSseMessage, Replay)> {
        loop {
            if let Some((number, event)) = self.queue.pop_front() {
                self.after = number;
                return Some((event, self));
            }
            if self.ended {
                return None;
            }
            let shared = Arc::clone(&self.shared);
            // Registered before looking, so that an event stored in between still wakes it.
            let appended = shared.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let found = shared.lock().after(&self.stream, self.after);
            if found.gone {
                return None;
            }
            self.ended = found.ended;
            if !found.events.is_empty() || found.ended {
                self.queue.extend(found.events);
                continue;
            }
            tokio::select! {
                _ = appended => {}
                _ = shared.shutdown.cancelled() => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use rmcp::model::{NumberOrString, RequestId, ServerResult};

    fn response(id: i64) -> ServerSseMessage {
        ServerSseMessage::from_message(ServerJsonRpcMessage::response(
            ServerResult::empty(()),
            RequestId::from(NumberOrString::Number(id)),
        ))
    }

    /// Room for everything a test stores.
    const ROOMY: Retention = Retention {
        time: Duration::from_secs(600),
        bytes: 1 << 20,
    };

    fn priming() -> ServerSseMessage {
        ServerSseMessage::retry(Duration::from_secs(3))
    }

    #[tokio::test]
    async fn a_replay_waits_for_the_answer_that_ends_its_stream() {
        let store = Arc::new(MemoryEventStore::new(ROOMY, CancellationToken::new()));
        let first = store.store_event("a", &priming()).await.unwrap();
        store.store_event("b", &response(9)).await.unwrap();
        let mut replay = store.replay_events_after(&first).await.unwrap();
        let later = Arc::clone(&store);
        let answer = tokio::spawn(async move { later.store_event("a", &response(1)).await });
        let event = replay.next().await.expect("the answer");
        let id = answer.await.unwrap().unwrap();
        assert_eq!(event.event_id.as_deref(), Some(id.as_str()));
        assert!(is_last(&event));
        // The stream is over: the replay ends, and so does a later one from the answer.
        assert!(replay.next().await.is_none());
        let mut again = store.replay_events_after(&id).await.unwrap();
        assert!(again.next().await.is_none());
    }

    #[tokio::test]
    async fn old_events_and_events_over_budget_go() {
        let retention = Retention {
            time: Duration::from_secs(600),
            bytes: 2000,
        };
        let store = MemoryEventStore::new(retention, CancellationToken::new());
        let first = store.store_event("a", &priming()).await.unwrap();
        for i in 0..100 {
            store.store_event("a", &response(i)).await.unwrap();
        }
        let (count, bytes) = store.kept();
        assert!(
            bytes <= 2000 && count < 100,
            "{count} events, {bytes} bytes"
        );
        let err = store.replay_events_after(&first).await.err().unwrap();
        assert!(err.to_string().contains("no longer kept"), "{err}");
        // Ids of another process, or no id at all.
        assert!(store.replay_events_after("0/0").await.is_err());
        assert!(store.replay_events_after("ffffffff-1").await.is_err());

        let expiring = MemoryEventStore::new(
            Retention {
                time: Duration::ZERO,
                bytes: 1 << 20,
            },
            CancellationToken::new(),
        );
        let id = expiring.store_event("a", &priming()).await.unwrap();
        expiring.store_event("b", &priming()).await.unwrap();
        assert!(expiring.replay_events_after(&id).await.is_err());
    }

    #[tokio::test]
    async fn shutdown_ends_waiting_replays() {
        let shutdown = CancellationToken::new();
        let store = MemoryEventStore::new(ROOMY, shutdown.clone());
        let first = store.store_event("a", &priming()).await.unwrap();
        let mut replay = store.replay_events_after(&first).await.unwrap();
        shutdown.cancel();
        assert!(replay.next().await.is_none());
    }
}
