//! What a running call tells its client before it answers: its console lines as
//! `notifications/message` (for a client that set a logging level), `notifications/progress`
//! every second (for a request that carries a progress token), and a status line for a call
//! that runs as a task (`tasks/get` shows it). The engine's batches
//! ([`crate::engine::live`]) arrive here already rate-limited.
// MCP logging is deprecated by SEP-2577 in rmcp, but it is how clients show a server's log
// lines today.
#![allow(deprecated)]

use std::time::{Duration, Instant};

use rmcp::model::{
    LoggingLevel, LoggingMessageNotificationParam, ProgressNotificationParam, ProgressToken,
};
use rmcp::{Peer, RoleServer};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::engine::live::{Batch, Progress, MAX_BYTES, MAX_LINES, WINDOW};
use crate::engine::LogLine;
use crate::job::LiveBatches;

/// How often a progress notification goes out while a call runs.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What the client asked to hear about one call.
#[derive(Debug)]
pub struct Wanted {
    /// Console lines at this level and above, as log messages.
    pub level: Option<LoggingLevel>,
    /// Progress notifications with this token.
    pub progress: Option<ProgressToken>,
    /// The logger name on log messages: the heap's name, or `run_js`.
    pub logger: String,
    /// A status line every second ([`Reporting::status`]), for a call that may become a task.
    pub status: bool,
}

/// Reports for one call, until [`Reporting::finish`].
#[derive(Debug)]
pub struct Reporting {
    batches: LiveBatches,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    status: watch::Receiver<String>,
}

/// Starts reporting to `peer`; `None` when the client asked for nothing.
pub fn start(peer: Peer<RoleServer>, wanted: Wanted) -> Option<Reporting> {
    if wanted.level.is_none() && wanted.progress.is_none() && !wanted.status {
        return None;
    }
    let (batches, received) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel();
    let (status_tx, status) = watch::channel(String::new());
    let task = tokio::spawn(report(peer, wanted, received, stopped, status_tx));
    Some(Reporting {
        batches,
        stop,
        task,
        status,
    })
}

impl Reporting {
    /// Where the run sends its batches.
    pub fn batches(&self) -> LiveBatches {
        self.batches.clone()
    }

    /// The call's status line ("running for 12 s: 340 of 1000 rows"), new every second.
    pub fn status(&self) -> watch::Receiver<String> {
        self.status.clone()
    }

    /// Stops reporting once what the run sent so far is passed on: every batch precedes the
    /// run's answer, so the client hears all of it before the result.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn report(
    peer: Peer<RoleServer>,
    wanted: Wanted,
    mut received: mpsc::UnboundedReceiver<Batch>,
    mut stopped: oneshot::Receiver<()>,
    status: watch::Sender<String>,
) {
    let started = Instant::now();
    let ticking = wanted.progress.is_some() || wanted.status;
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    let mut reported: Option<Progress> = None;
    loop {
        tokio::select! {
            biased;
            batch = received.recv() => match batch {
                Some(batch) => {
                    if batch.progress.is_some() {
                        reported = batch.progress.clone();
                    }
                    log(&peer, &wanted, batch).await;
                }
                None => return,
            },
            _ = ticks.tick(), if ticking => {
                let (seconds, line) = status_line(started.elapsed(), reported.as_ref());
                if wanted.status {
                    status.send_replace(line.clone());
                }
                if let Some(token) = &wanted.progress {
                    let note = ProgressNotificationParam::new(token.clone(), seconds)
                        .with_message(line);
                    let _ = peer.notify_progress(note).await;
                }
            }
            _ = &mut stopped => {
                while let Ok(batch) = received.try_recv() {
                    log(&peer, &wanted, batch).await;
                }
                return;
            }
        }
    }
}

/// Sends a batch's console lines at or above the client's level: one message per run of
/// lines of the same level, and a warning for lines left out.
async fn log(peer: &Peer<RoleServer>, wanted: &Wanted, batch: Batch) {
    let Some(threshold) = wanted.level else {
        return;
    };
    let mut groups: Vec<(LoggingLevel, Vec<&str>)> = Vec::new();
    for LogLine { level, text } in &batch.lines {
        let level = level_of(level);
        match groups.last_mut() {
            Some((last, texts)) if *last == level => texts.push(text),
            _ => groups.push((level, vec![text])),
        }
    }
    for (level, texts) in groups {
        if rank(level) >= rank(threshold) {
            let message = LoggingMessageNotificationParam::new(level, texts.join("\n").into())
                .with_logger(wanted.logger.clone());
            let _ = peer.notify_logging_message(message).await;
        }
    }
    if batch.skipped > 0 && rank(LoggingLevel::Warning) >= rank(threshold) {
        let text = format!(
            "{} console lines not sent live (more than {MAX_LINES} lines or {} KiB in {} ms); \
             the result has them all",
            batch.skipped,
            MAX_BYTES >> 10,
            WINDOW.as_millis()
        );
        let message =
            LoggingMessageNotificationParam::new(LoggingLevel::Warning, Value::from(text))
                .with_logger(wanted.logger.clone());
        let _ = peer.notify_logging_message(message).await;
    }
}

/// What a running call is doing: the seconds it has run (which always grow: the progress
/// value) and a line that says so and adds what the code last reported.
fn status_line(elapsed: Duration, reported: Option<&Progress>) -> (f64, String) {
    let seconds = (elapsed.as_secs_f64() * 10.0).round() / 10.0;
    let mut line = format!("running for {seconds} s");
    if let Some(reported) = reported {
        line.push_str(": ");
        line.push_str(&number(reported.done));
        if let Some(total) = reported.total {
            line.push_str(" of ");
            line.push_str(&number(total));
        }
        if let Some(text) = &reported.message {
            line.push(' ');
            line.push_str(text);
        }
    }
    (seconds, line)
}

fn number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// The MCP level of a console method.
fn level_of(console: &str) -> LoggingLevel {
    match console {
        "debug" => LoggingLevel::Debug,
        "warn" => LoggingLevel::Warning,
        "error" => LoggingLevel::Error,
        _ => LoggingLevel::Info,
    }
}

/// Severity order, lowest first.
fn rank(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_counts_seconds_and_tells_what_the_code_reported() {
        let plain = status_line(Duration::from_millis(2049), None);
        assert_eq!(plain, (2.0, "running for 2 s".to_string()));
        let reported = Progress {
            done: 3.0,
            total: Some(10.0),
            message: Some("rows".into()),
        };
        let told = status_line(Duration::from_millis(3500), Some(&reported));
        assert_eq!(told, (3.5, "running for 3.5 s: 3 of 10 rows".to_string()));
    }

    #[test]
    fn console_methods_map_onto_mcp_levels() {
        assert_eq!(level_of("log"), LoggingLevel::Info);
        assert_eq!(level_of("info"), LoggingLevel::Info);
        assert_eq!(level_of("warn"), LoggingLevel::Warning);
        assert_eq!(level_of("error"), LoggingLevel::Error);
        assert_eq!(level_of("debug"), LoggingLevel::Debug);
        assert!(rank(LoggingLevel::Debug) < rank(LoggingLevel::Emergency));
    }
}
