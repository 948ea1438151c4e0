//! What a run reports while it is still running: its console lines and the progress the code
//! reports with `mcp.progress(done, total, message)`. The engine hands each [`Event`] to the
//! run's [`Sender`] without waiting; [`relay`] gathers them into [`Batch`]es, one per
//! [`WINDOW`] at most, so code that floods the console costs its listener a few messages a
//! second, not one per line. The whole console still comes back with the result.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::LogLine;

/// How often a batch goes out while events come in.
pub const WINDOW: Duration = Duration::from_millis(100);
/// Most console lines in one batch; the rest of the window's lines are counted as skipped.
pub const MAX_LINES: usize = 50;
/// Most bytes of console text in one batch.
pub const MAX_BYTES: usize = 16 << 10;
/// Events a run may have in flight before it counts the rest as skipped instead of waiting.
const QUEUE: usize = 1024;

/// One thing a run reports as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A console line.
    Console(LogLine),
    /// `mcp.progress(done, total, message)`.
    Progress(Progress),
    /// Console lines that did not fit the queue.
    Skipped(u64),
}

/// The progress the code reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// How much is done.
    pub done: f64,
    /// Out of how much, if known.
    pub total: Option<f64>,
    /// What it is doing.
    pub message: Option<String>,
}

/// What one window of a run reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Console lines, in order.
    pub lines: Vec<LogLine>,
    /// Console lines left out to keep to the limits.
    pub skipped: u64,
    /// The latest progress reported in the window.
    pub progress: Option<Progress>,
}

impl Batch {
    /// Whether there is nothing to pass on.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.skipped == 0 && self.progress.is_none()
    }
}

/// Where a run sends its events. Never blocks the run: when the queue is full, lines are
/// counted as skipped.
#[derive(Debug, Clone)]
pub struct Sender {
    events: SyncSender<Event>,
}

/// A sender and the receiver [`relay`] reads.
pub fn channel() -> (Sender, Receiver<Event>) {
    let (events, receiver) = std::sync::mpsc::sync_channel(QUEUE);
    (Sender { events }, receiver)
}

/// What a run could not pass on yet because the listener was behind.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Console lines dropped.
    skipped: u64,
    /// The latest progress, not sent yet.
    progress: Option<Progress>,
}

impl Sender {
    /// Passes `event` on without waiting. When the listener is behind, a console line is
    /// counted as skipped and a progress report kept until there is room (the latest wins).
    pub(super) fn send(&self, event: Event, pending: &mut Pending) {
        if !self.flush(pending) {
            pending.keep(event);
            return;
        }
        if let Err(TrySendError::Full(event)) = self.events.try_send(event) {
            pending.keep(event);
        }
    }

    /// Passes on what is pending, waiting for room if need be: the run is over.
    pub(super) fn finish(&self, mut pending: Pending) {
        if pending.skipped > 0 {
            let _ = self.events.send(Event::Skipped(pending.skipped));
        }
        if let Some(progress) = pending.progress.take() {
            let _ = self.events.send(Event::Progress(progress));
        }
    }

    /// Tries to pass on what is pending; whether all of it went.
    fn flush(&self, pending: &mut Pending) -> bool {
        if pending.skipped > 0 {
            match self.events.try_send(Event::Skipped(pending.skipped)) {
                Ok(()) => pending.skipped = 0,
                Err(TrySendError::Full(_)) => return false,
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        if let Some(progress) = pending.progress.take() {
            if let Err(TrySendError::Full(Event::Progress(progress))) =
                self.events.try_send(Event::Progress(progress))
            {
                pending.progress = Some(progress);
                return false;
            }
        }
        true
    }
}

impl Pending {
    /// Keeps what could not be sent: a line as a count, a progress report as the latest.
    fn keep(&mut self, event: Event) {
        match event {
            Event::Console(_) => self.skipped += 1,
            Event::Skipped(n) => self.skipped += n,
            Event::Progress(progress) => self.progress = Some(progress),
        }
    }
}

/// Gathers `events` into batches and hands each to `deliver`, at most one per [`WINDOW`],
/// until every sender is gone; then delivers what is left and returns. A batch keeps at most
/// [`MAX_LINES`] lines and [`MAX_BYTES`] of text; the window's other lines are counted.
pub fn relay(events: Receiver<Event>, mut deliver: impl FnMut(Batch)) {
    let mut batch = Batch::default();
    let mut bytes = 0;
    let mut due: Option<Instant> = None;
    loop {
        let event = match due {
            Some(due) => events.recv_timeout(due.saturating_duration_since(Instant::now())),
            None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match event {
            Ok(event) => {
                // The first event of a quiet spell goes out at once; later ones wait for
                // the window to close, checked on every event too, so that a flood that
                // never lets the queue run empty is still delivered every window.
                let now = Instant::now();
                let window = *due.get_or_insert(now);
                add(&mut batch, &mut bytes, event);
                if now < window {
                    continue;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if !batch.is_empty() {
                    deliver(batch);
                }
                return;
            }
        }
        if batch.is_empty() {
            due = None;
        } else {
            deliver(std::mem::take(&mut batch));
            bytes = 0;
            due = Some(Instant::now() + WINDOW);
        }
    }
}

/// Calls `run` with a sender whose batches [`relay`] hands to `deliver` from a thread of its
/// own while `run` runs; returns once the last batch is delivered, so that every batch comes
/// before whatever the caller does next (answer the call). The sender goes into the run's
/// state and is dropped with it.
pub fn relayed<T>(
    deliver: impl FnMut(Batch) + Send + 'static,
    run: impl FnOnce(Option<Sender>) -> T,
) -> T {
    let (sender, events) = channel();
    let relay = std::thread::Builder::new()
        .name("mcp-v8-live".into())
        .spawn(move || relay(events, deliver));
    let result = run(Some(sender));
    if let Ok(relay) = relay {
        let _ = relay.join();
    }
    result
}

fn add(batch: &mut Batch, bytes: &mut usize, event: Event) {
    match event {
        Event::Console(line) => {
            if batch.lines.len() < MAX_LINES && *bytes + line.text.len() <= MAX_BYTES {
                *bytes += line.text.len();
                batch.lines.push(line);
            } else {
                batch.skipped += 1;
            }
        }
        Event::Progress(progress) => batch.progress = Some(progress),
        Event::Skipped(n) => batch.skipped += n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Event {
        Event::Console(LogLine {
            level: "log".into(),
            text: text.into(),
        })
    }

    #[test]
    fn a_flood_becomes_a_few_batches_and_a_count() {
        let (sender, events) = channel();
        let flood = std::thread::spawn(move || {
            let mut pending = Pending::default();
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed() < Duration::from_millis(350) {
                sender.send(line("spam"), &mut pending);
                sent += 1;
            }
            sender.send(
                Event::Progress(Progress {
                    done: 1.0,
                    total: Some(2.0),
                    message: None,
                }),
                &mut pending,
            );
            sender.finish(pending);
            sent
        });
        let mut batches = Vec::new();
        relay(events, |batch| batches.push(batch));
        let sent = flood.join().unwrap();
        // 350 ms of flooding: the first batch at once, then one per window at most.
        assert!((1..=6).contains(&batches.len()), "{}", batches.len());
        assert!(batches.iter().all(|b| b.lines.len() <= MAX_LINES));
        // Every line is either passed on or counted.
        let lines: u64 = batches
            .iter()
            .map(|b| b.lines.len() as u64 + b.skipped)
            .sum();
        assert_eq!(lines, sent);
        let last = batches.last().unwrap();
        assert_eq!(last.progress.as_ref().map(|p| p.done), Some(1.0));
    }

    #[test]
    fn a_quiet_line_goes_out_at_once_and_the_rest_is_delivered_at_the_end() {
        let (sender, events) = channel();
        let (seen, delivered) = std::sync::mpsc::channel();
        let relay = std::thread::spawn(move || relay(events, |batch| seen.send(batch).unwrap()));
        let mut pending = Pending::default();
        sender.send(line("first"), &mut pending);
        // Delivered while the sender is still alive: no waiting for the run to end.
        let first = delivered.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(first.lines[0].text, "first");
        sender.send(line("last"), &mut pending);
        drop(sender);
        relay.join().unwrap();
        let rest: Vec<Batch> = delivered.try_iter().collect();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].lines[0].text, "last");
    }
}
