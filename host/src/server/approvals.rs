//! Asking the client's user about calls from code (`--ask-tools`, `--ask-net`): the server's
//! [`Approver`]. A client on a session (protocol 2025-11-25 and before) is sent an
//! `elicitation/create` request while its `run_js` call runs. A client on protocol 2026-07-28,
//! which takes no requests from servers, gets an input-required result instead (SEP-2322): the
//! call is parked — its run goes on waiting for the answer in this process — and the
//! question goes back with a `requestState` signed with this process's key; the client's retry
//! of `run_js` with the answer in `inputResponses` delivers it and waits for what follows (the
//! result, or the next question). A retry that reaches another process, or comes after the
//! run gave up waiting (`--approval-timeout-secs`), is told to call again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ElicitRequest, ElicitRequestParams,
    ElicitResult, ElicitationAction, ElicitationSchema, ErrorData, InputRequest,
    InputRequiredResult, ProtocolVersion,
};
use rmcp::service::{Peer, RequestContext};
use rmcp::RoleServer;
use tokio::sync::{mpsc, oneshot};

use super::McpServer;
use crate::approval::{Approver, Decision, PendingDecision};
use crate::runtime::Owner;

/// The key of the one question an input-required result asks.
const APPROVAL: &str = "approval";

/// A question for a client that is answered through a retry of its call.
#[derive(Debug)]
pub(super) struct Question {
    message: String,
    decide: oneshot::Sender<Decision>,
}

impl Question {
    /// Asks this question as `task`'s input request under `key`, answering it with the
    /// client's `tasks/update`.
    pub(super) fn ask_in(self, task: &rmcp::task_manager::TaskContext, key: String) {
        let task = task.clone();
        let ask = InputRequest::Elicitation(ElicitRequest::new(yes_or_no(self.message)));
        tokio::spawn(async move {
            let decision = match task.request_input(key, ask).await {
                Ok(answer) => serde_json::from_value::<ElicitResult>(answer)
                    .map_or(Decision::Cancelled, |answer| decision(answer.action)),
                Err(_) => Decision::Cancelled,
            };
            let _ = self.decide.send(decision);
        });
    }
}

/// A yes-or-no question: nothing to fill in.
pub(super) fn yes_or_no(message: String) -> ElicitRequestParams {
    ElicitRequestParams::FormElicitationParams {
        meta: None,
        message,
        requested_schema: ElicitationSchema::new(BTreeMap::new()),
    }
}

/// Where a call's questions go, for the handler that answers the call.
pub(super) type Questions = mpsc::UnboundedReceiver<Question>;

/// A call's work: its tool result, when it ends.
pub(super) type Work =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<CallToolResult, ErrorData>> + Send>>;

/// Calls parked on a question, until their client answers it.
pub(super) struct Parked {
    key: ring::hmac::Key,
    calls: Mutex<HashMap<uuid::Uuid, ParkedCall>>,
}

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parked").finish_non_exhaustive()
    }
}

/// A call waiting for its client's answer; its run goes on in a task of its own.
struct ParkedCall {
    owner: Owner,
    decide: oneshot::Sender<Decision>,
    done: oneshot::Receiver<Result<CallToolResult, ErrorData>>,
    questions: Option<Questions>,
}

impl Parked {
    pub(super) fn new() -> Self {
        let random = ring::rand::SystemRandom::new();
        let key =
            ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &random).unwrap_or_else(|_| {
                ring::hmac::Key::new(ring::hmac::HMAC_SHA256, uuid::Uuid::new_v4().as_bytes())
            });
        Self {
            key,
            calls: Mutex::default(),
        }
    }

    /// `id` with its signature, as a `requestState`.
    fn sign(&self, id: uuid::Uuid) -> String {
        let tag = ring::hmac::sign(&self.key, id.as_bytes());
        let mut bytes = id.as_bytes().to_vec();
        bytes.extend_from_slice(tag.as_ref());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The id a `requestState` this process signed names.
    fn verify(&self, state: &str) -> Option<uuid::Uuid> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(state)
            .ok()?;
        let (id, tag) = bytes.split_at_checked(16)?;
        ring::hmac::verify(&self.key, id, tag).ok()?;
        uuid::Uuid::from_slice(id).ok()
    }
}

/// Asks through one request's client.
#[derive(Debug)]
enum Elicitation {
    /// Sends `elicitation/create` to the client.
    Request {
        peer: Peer<RoleServer>,
        heap: Option<String>,
    },
    /// Hands the question to the call's handler, which answers input-required.
    Retry {
        questions: mpsc::UnboundedSender<Question>,
        heap: Option<String>,
    },
    /// The client offers no elicitation.
    No,
}

fn message(heap: Option<&str>, action: &str) -> String {
    match heap {
        Some(heap) => format!("Code on heap `{heap}` wants to {action}. Allow?"),
        None => format!("Code run by run_js wants to {action}. Allow?"),
    }
}

impl McpServer {
    /// Who asks `context`'s client about calls from code on `heap`, if the policy leaves any
    /// call to a person; and, for a client answered through retries, where its questions go.
    pub(super) fn approver(
        &self,
        context: &RequestContext<RoleServer>,
        heap: Option<&str>,
    ) -> (Option<Arc<dyn Approver>>, Option<Questions>) {
        if !self.runtime.asks() {
            return (None, None);
        }
        let heap = heap.map(str::to_string);
        let elicits = context
            .client_capabilities()
            .is_some_and(|caps| caps.elicitation.is_some());
        let retries = context
            .protocol_version()
            .is_some_and(|version| version >= ProtocolVersion::V_2026_07_28);
        let (approver, questions) = match (elicits, retries) {
            (false, _) => (Elicitation::No, None),
            (true, false) => {
                let peer = context.peer.clone();
                (Elicitation::Request { peer, heap }, None)
            }
            (true, true) => {
                let (questions, asked) = mpsc::unbounded_channel();
                (Elicitation::Retry { questions, heap }, Some(asked))
            }
        };
        (Some(Arc::new(approver)), questions)
    }

    /// Parks a call on `question`: its work goes on in a task of its own, and the client gets
    /// the question with the state to retry with.
    pub(super) fn park(
        &self,
        owner: Owner,
        work: Work,
        questions: Option<Questions>,
        question: Question,
    ) -> CallToolResponse {
        let (finished, done) = oneshot::channel();
        tokio::spawn(async move {
            let _ = finished.send(work.await);
        });
        let id = uuid::Uuid::new_v4();
        let parked = ParkedCall {
            owner,
            decide: question.decide,
            done,
            questions,
        };
        self.parked
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, parked);
        // A call nobody resumes is let go once its run has stopped waiting for the answer.
        let parked = Arc::clone(&self.parked);
        let wait = self.runtime.approval_timeout() + super::TASK_AFTER;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = parked
                .calls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
        });
        let ask = ElicitRequest::new(yes_or_no(question.message));
        let requests = BTreeMap::from([(APPROVAL.to_string(), InputRequest::Elicitation(ask))]);
        let state = self.parked.sign(id);
        CallToolResponse::InputRequired(InputRequiredResult::new(Some(requests), Some(state)))
    }

    /// A retry of a parked call (`requestState`): delivers the client's answer and waits for
    /// what follows.
    pub(super) async fn resume(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let gone = || {
            ErrorData::invalid_params(
                "this requestState names no call waiting for an answer here (it was not \
                 issued by this server process, or the call stopped waiting): call run_js again",
                None,
            )
        };
        let state = request.request_state.as_deref().unwrap_or_default();
        let id = self.parked.verify(state).ok_or_else(gone)?;
        let answer = request
            .input_responses
            .as_ref()
            .and_then(|responses| responses.get(APPROVAL))
            .ok_or_else(|| {
                ErrorData::invalid_params(format!("inputResponses has no \"{APPROVAL}\""), None)
            })?;
        let answer: ElicitResult = serde_json::from_value(answer.clone()).map_err(|e| {
            ErrorData::invalid_params(format!("inputResponses.{APPROVAL}: {e}"), None)
        })?;
        let owner = self.owner(&context)?;
        let parked = {
            let mut calls = self
                .parked
                .calls
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match calls.get(&id) {
                Some(call) if call.owner == owner => calls.remove(&id),
                _ => None,
            }
        }
        .ok_or_else(gone)?;
        let _ = parked.decide.send(decision(answer.action));
        let done = parked.done;
        let work = async move {
            done.await.unwrap_or_else(|_| {
                Err(ErrorData::internal_error(
                    "the parked call ended without a result",
                    None,
                ))
            })
        };
        self.respond(&context, work, None, parked.questions).await
    }
}

fn decision(action: ElicitationAction) -> Decision {
    match action {
        ElicitationAction::Accept => Decision::Accepted,
        ElicitationAction::Decline => Decision::Declined,
        // Cancel, and whatever a later revision adds: not a yes.
        _ => Decision::Cancelled,
    }
}

impl Approver for Elicitation {
    fn ask(&self, action: String) -> PendingDecision {
        match self {
            Elicitation::No => {
                let why = "this client cannot be asked (it does not offer elicitation)";
                Box::pin(std::future::ready(Decision::CannotAsk(why.into())))
            }
            Elicitation::Retry { questions, heap } => {
                let (decide, decided) = oneshot::channel();
                let question = Question {
                    message: message(heap.as_deref(), &action),
                    decide,
                };
                let sent = questions.send(question).is_ok();
                Box::pin(async move {
                    match sent {
                        true => decided.await.unwrap_or(Decision::Cancelled),
                        false => Decision::CannotAsk("the call's client is gone".into()),
                    }
                })
            }
            Elicitation::Request { peer, heap } => {
                let peer = peer.clone();
                let params = yes_or_no(message(heap.as_deref(), &action));
                Box::pin(async move {
                    match peer.create_elicitation(params).await {
                        Ok(answer) => decision(answer.action),
                        Err(e) => Decision::CannotAsk(format!("asking the client failed ({e})")),
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_state_is_this_process_s_and_untouched() {
        let parked = Parked::new();
        let id = uuid::Uuid::new_v4();
        let state = parked.sign(id);
        assert_eq!(parked.verify(&state), Some(id));
        let mut tampered = state.into_bytes();
        tampered[3] ^= 1;
        assert_eq!(parked.verify(&String::from_utf8_lossy(&tampered)), None);
        assert_eq!(Parked::new().verify(&parked.sign(id)), None);
        assert_eq!(parked.verify("not base64 at all!"), None);
    }
}
