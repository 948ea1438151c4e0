//! Approvals: calls from code that the policy leaves to a person (`--ask-tools`, and requests
//! to `--ask-net` hosts). When code makes such a call, the run waits while the client's user is asked (MCP elicitation, by the
//! server layer's [`Approver`]); only an acceptance lets the call go out. The decision becomes
//! the call's reply on the run's tape — the tool's answer, or a `declined` failure — so a
//! replay of the call never asks again, and a call that is never answered (its server killed
//! while it waits) is never recorded, and nothing was sent.
//!
//! Waiting for a person does not count against the run's time limit: a run's [`RunApprovals`]
//! keeps how long it has waited ([`crate::host_call::HostCalls::paused`]), and the worker's
//! deadlines move by that much. It has a limit of its own (`--approval-timeout-secs`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::host_call::{HostError, HostErrorKind};

/// Most characters of a call's arguments a question shows.
pub const SHOWN_ARGUMENT_CHARS: usize = 400;

/// What a person decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Accepted,
    /// No.
    Declined,
    /// The question was dismissed without an answer.
    Cancelled,
    /// Nobody can be asked: the client does not offer elicitation (why, for the code).
    CannotAsk(String),
}

/// A decision on its way.
pub type PendingDecision = Pin<Box<dyn Future<Output = Decision> + Send>>;

/// Who asks the client's user about a call (the server layer, through the request's client).
pub trait Approver: Send + Sync + fmt::Debug {
    /// Asks whether code may do what `action` says ("call `memory.delete_entities` with
    /// {…}"). Dropping the future withdraws the question.
    fn ask(&self, action: String) -> PendingDecision;
}

/// What a person is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// What code wants to do: "call `memory.delete_entities` with {…}".
    pub action: String,
    /// The flag that leaves it to a person (`--ask-tools`).
    pub by: &'static str,
    /// The flag, as the user would write it, that would allow it without asking.
    pub allow: String,
}

/// One run's approvals: who asks, how long a question may wait, and how long the run has
/// waited for answers so far.
#[derive(Debug, Clone)]
pub struct RunApprovals {
    approver: Arc<dyn Approver>,
    timeout: Duration,
    clock: Arc<Mutex<PauseClock>>,
}

/// Time spent waiting for people: the questions answered, and since when the ones open now
/// have waited.
#[derive(Debug, Default)]
struct PauseClock {
    closed: Duration,
    open: usize,
    since: Option<Instant>,
}

impl PauseClock {
    fn total(&self) -> Duration {
        self.closed + self.since.map_or(Duration::ZERO, |since| since.elapsed())
    }

    fn open(&mut self) {
        if self.open == 0 {
            self.since = Some(Instant::now());
        }
        self.open += 1;
    }

    fn close(&mut self) {
        self.open = self.open.saturating_sub(1);
        if self.open == 0 {
            if let Some(since) = self.since.take() {
                self.closed += since.elapsed();
            }
        }
    }
}

/// Closes its question on the clock when dropped (answered, timed out or withdrawn).
struct Open<'c>(&'c Mutex<PauseClock>);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .close();
    }
}

impl RunApprovals {
    /// Approvals asked through `approver`, each waiting `timeout` at most.
    pub fn new(approver: Arc<dyn Approver>, timeout: Duration) -> Self {
        Self {
            approver,
            timeout,
            clock: Arc::default(),
        }
    }

    /// How long the run has waited for people so far (questions still open included).
    pub fn paused(&self) -> Duration {
        self.clock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total()
    }

    /// Asks whether code may do what `ask` says. `Ok` lets the call go out; otherwise the
    /// failure is the call's reply.
    pub async fn approve(&self, ask: &Ask) -> Result<(), HostError> {
        self.clock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open();
        let _open = Open(&self.clock);
        let action = &ask.action;
        let answer = tokio::time::timeout(self.timeout, self.approver.ask(action.clone())).await;
        match answer {
            Ok(Decision::Accepted) => Ok(()),
            Ok(Decision::Declined) => Err(declined(format!("the user declined to {action}"))),
            Ok(Decision::Cancelled) => Err(declined(format!(
                "the user dismissed the question whether to {action}"
            ))),
            Ok(Decision::CannotAsk(why)) => Err(unasked(ask, &why)),
            Err(_) => Err(declined(format!(
                "nobody answered within {} s whether to {action} (--approval-timeout-secs)",
                self.timeout.as_secs_f64()
            ))),
        }
    }
}

/// Asks `approvals` about `ask`; with nobody to ask, the refusal says so.
pub async fn approve(approvals: Option<&RunApprovals>, ask: &Ask) -> Result<(), HostError> {
    match approvals {
        Some(approvals) => approvals.approve(ask).await,
        None => Err(unasked(ask, "nobody can be asked for this call")),
    }
}

/// The refusal of `ask` when nobody could be asked (`why`), naming the flag that would allow
/// it.
fn unasked(ask: &Ask, why: &str) -> HostError {
    HostError::new(
        HostErrorKind::Denied,
        format!(
            "to {} needs a person's approval ({}), and {why}; {} would allow it without asking",
            ask.action, ask.by, ask.allow
        ),
    )
}

fn declined(message: String) -> HostError {
    HostError::new(HostErrorKind::Declined, message)
}

/// `text` cut to [`SHOWN_ARGUMENT_CHARS`] characters, with `…` when cut.
pub fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN_ARGUMENT_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Answers(Decision, Duration);

    impl Approver for Answers {
        fn ask(&self, _action: String) -> PendingDecision {
            let (decision, after) = (self.0.clone(), self.1);
            Box::pin(async move {
                tokio::time::sleep(after).await;
                decision
            })
        }
    }

    fn approvals(decision: Decision, after: Duration, timeout: Duration) -> RunApprovals {
        RunApprovals::new(Arc::new(Answers(decision, after)), timeout)
    }

    fn ask(action: &str) -> Ask {
        Ask {
            action: action.into(),
            by: "--ask-tools",
            allow: "--allow-tools a.b".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_decision_becomes_the_reply_and_the_wait_is_kept() {
        let second = Duration::from_secs(1);
        let run = approvals(Decision::Accepted, second, 10 * second);
        assert_eq!(run.approve(&ask("call `a.b` with {}")).await, Ok(()));
        assert_eq!(run.paused(), second);

        let run = approvals(Decision::Declined, second, 10 * second);
        let no = run.approve(&ask("call `a.b` with {}")).await.unwrap_err();
        assert_eq!(no.kind, HostErrorKind::Declined);
        assert!(
            no.message.contains("declined to call `a.b`"),
            "{}",
            no.message
        );

        let run = approvals(Decision::Accepted, 20 * second, 10 * second);
        let late = run.approve(&ask("call `a.b` with {}")).await.unwrap_err();
        assert_eq!(late.kind, HostErrorKind::Declined);
        assert!(late.message.contains("within 10 s"), "{}", late.message);
        assert_eq!(run.paused(), 10 * second);

        let why = "this client cannot be asked".to_string();
        let run = approvals(Decision::CannotAsk(why), Duration::ZERO, second);
        let refused = run.approve(&ask("call `a.b` with {}")).await;
        let refused = refused.unwrap_err();
        assert_eq!(refused.kind, HostErrorKind::Denied);
        assert!(
            refused.message.contains("--allow-tools a.b"),
            "{}",
            refused.message
        );
    }

    #[tokio::test(start_paused = true)]
    async fn questions_open_at_once_count_once() {
        let second = Duration::from_secs(1);
        let run = approvals(Decision::Accepted, 2 * second, 10 * second);
        let (one, two) = (ask("one"), ask("two"));
        let (a, b) = tokio::join!(run.approve(&one), run.approve(&two));
        assert_eq!((a, b), (Ok(()), Ok(())));
        assert_eq!(run.paused(), 2 * second);
    }

    #[test]
    fn long_arguments_are_cut() {
        let long = "x".repeat(SHOWN_ARGUMENT_CHARS + 5);
        assert_eq!(shown(&long).chars().count(), SHOWN_ARGUMENT_CHARS + 1);
        assert_eq!(shown("{}"), "{}");
    }
}
