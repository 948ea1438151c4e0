//! MCP over stdin/stdout, one JSON-RPC message per line, where every request gets an answer.
//!
//! rmcp's own stdio transport drops what it cannot read: a line over its 16 MiB cap, or JSON
//! that does not decode (a lone UTF-16 surrogate in a string, say), and the client waits for
//! an answer that never comes. Here:
//!
//! * lines up to the limit (`--max-body-bytes`, the same as HTTP) are read; a longer line is
//!   answered with an error naming the limit, and is never held in memory whole: its `id` is
//!   read by streaming the line through serde_json;
//! * a line that is not JSON gets a `-32700` parse error; JSON that is not a valid message
//!   gets `-32700` (unreadable text such as a lone surrogate) or `-32600` (wrong shape),
//!   with the request's id when it can be read. Notifications get no answer, as JSON-RPC
//!   says.
//!
//! stdin is read on a thread of its own (blocking reads never occupy the async runtime);
//! messages cross to the MCP service through a channel.

use std::collections::HashSet;
use std::io::{self, BufRead, Read};
use std::sync::Arc;

use rmcp::model::{ClientNotification, ErrorData, JsonRpcMessage, RequestId};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::RoleServer;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Mutex};

/// What the reader thread found on one line.
enum Incoming {
    /// A message for the MCP service.
    Message(Box<RxJsonRpcMessage<RoleServer>>),
    /// An error to answer directly, as JSON (its `id` is `null` when none could be read).
    Reject(Box<serde_json::Value>),
}

/// The stdio transport. Build it with [`transport`].
#[derive(Debug)]
pub struct StdioTransport {
    incoming: mpsc::Receiver<Incoming>,
    stdout: Arc<Mutex<tokio::io::Stdout>>,
    unanswered: Unanswered,
}

/// The requests the transport has passed on and not yet seen answered (or cancelled by the
/// client, which then expects no answer): a server that stops waits for none, so that an
/// answer computed before it stopped is also written.
#[derive(Debug, Clone, Default)]
pub struct Unanswered(Arc<tokio::sync::watch::Sender<HashSet<RequestId>>>);

impl Unanswered {
    /// Returns once every request passed on has been answered.
    pub async fn none(&self) {
        let mut pending = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = pending.wait_for(HashSet::is_empty).await;
    }

    fn passed_on(&self, id: &RequestId) {
        self.0.send_modify(|pending| {
            pending.insert(id.clone());
        });
    }

    fn settled(&self, id: &RequestId) {
        self.0.send_if_modified(|pending| pending.remove(id));
    }

    /// Notes what `message`, received from the client, means for the requests in flight.
    fn received(&self, message: &RxJsonRpcMessage<RoleServer>) {
        match message {
            JsonRpcMessage::Request(request) => self.passed_on(&request.id),
            JsonRpcMessage::Notification(notification) => {
                if let ClientNotification::CancelledNotification(cancelled) =
                    &notification.notification
                {
                    if let Some(id) = &cancelled.params.request_id {
                        self.settled(id);
                    }
                }
            }
            _ => {}
        }
    }

    /// The request `message`, sent to the client, answers, if any.
    fn answered(message: &TxJsonRpcMessage<RoleServer>) -> Option<RequestId> {
        match message {
            JsonRpcMessage::Response(response) => Some(response.id.clone()),
            JsonRpcMessage::Error(error) => error.id.clone(),
            _ => None,
        }
    }
}

/// Serves on this process's stdin and stdout, reading lines of up to `max_line` bytes.
pub fn transport(max_line: usize) -> StdioTransport {
    let (tx, incoming) = mpsc::channel(16);
    let spawned = std::thread::Builder::new()
        .name("mcp-v8-stdin".into())
        .spawn(move || {
            read_messages(&mut io::stdin().lock(), max_line, |incoming| {
                tx.blocking_send(incoming).is_ok()
            })
        });
    if let Err(e) = spawned {
        // Without the reader the channel closes at once: the server ends as on EOF.
        tracing::error!("cannot start the stdin reader: {e}");
    }
    StdioTransport {
        incoming,
        stdout: Arc::new(Mutex::new(tokio::io::stdout())),
        unanswered: Unanswered::default(),
    }
}

impl StdioTransport {
    /// What it has yet to answer.
    pub fn unanswered(&self) -> Unanswered {
        self.unanswered.clone()
    }

    async fn write(
        stdout: &Mutex<tokio::io::Stdout>,
        message: &impl serde::Serialize,
    ) -> io::Result<()> {
        let mut line = serde_json::to_vec(message).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut stdout = stdout.lock().await;
        stdout.write_all(&line).await?;
        stdout.flush().await
    }
}

impl Transport<RoleServer> for StdioTransport {
    type Error = io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        let stdout = Arc::clone(&self.stdout);
        let answers = Unanswered::answered(&item);
        let unanswered = self.unanswered.clone();
        async move {
            let written = Self::write(&stdout, &item).await;
            if let Some(id) = answers {
                unanswered.settled(&id);
            }
            written
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            match self.incoming.recv().await? {
                Incoming::Message(message) => {
                    self.unanswered.received(&message);
                    return Some(*message);
                }
                Incoming::Reject(error) => {
                    if let Err(e) = Self::write(&self.stdout, &error).await {
                        tracing::warn!("cannot answer an unreadable message: {e}");
                        return None;
                    }
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.incoming.close();
        Ok(())
    }
}

/// Reads every line of `input` as the reader thread does, for the fuzz targets: how many
/// messages and answers it made.
#[cfg(fuzzing)]
pub fn read_all(input: &[u8], max_line: usize) -> usize {
    let mut made = 0;
    read_messages(
        &mut io::BufReader::with_capacity(64, input),
        max_line,
        |_| {
            made += 1;
            true
        },
    );
    made
}

/// The reader thread: lines from `input`, each handed to `deliver`, until EOF or until
/// `deliver` says the service is gone.
fn read_messages(
    input: &mut impl BufRead,
    max_line: usize,
    mut deliver: impl FnMut(Incoming) -> bool,
) {
    let mut line = Vec::new();
    loop {
        line.clear();
        let incoming = match read_line(input, &mut line, max_line) {
            Ok(Line::Complete) => match decode(&line) {
                Some(incoming) => incoming,
                None => continue,
            },
            Ok(Line::TooLong) => too_long(input, &line, max_line),
            Ok(Line::End) => return,
            Err(e) => {
                tracing::error!("cannot read stdin: {e}");
                return;
            }
        };
        if !deliver(incoming) {
            return;
        }
    }
}

enum Line {
    /// `buf` holds one line, without its end.
    Complete,
    /// The line is longer than allowed: `buf` holds its first bytes; the rest is unread.
    TooLong,
    /// End of input.
    End,
}

/// Reads one line into `buf` without letting it grow past `max` bytes.
fn read_line(input: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Line> {
    loop {
        let available = match input.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            // A last line without its newline still counts.
            return Ok(if buf.is_empty() {
                Line::End
            } else {
                Line::Complete
            });
        }
        let newline = available.iter().position(|&b| b == b'\n');
        let take = newline.unwrap_or(available.len());
        if buf.len() + take > max {
            let room = max - buf.len();
            buf.extend_from_slice(&available[..room]);
            input.consume(room);
            return Ok(Line::TooLong);
        }
        buf.extend_from_slice(&available[..take]);
        input.consume(take + usize::from(newline.is_some()));
        if newline.is_some() {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Line::Complete);
        }
    }
}

/// The part of a message that can be read from almost anything that is JSON: serde_json
/// skips the other fields without decoding their strings (so lone surrogates pass) and
/// without keeping them (so a huge line streams through).
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    id: Option<RequestId>,
}

/// A line's message, the error that answers it, or `None` for nothing to do.
fn decode(line: &[u8]) -> Option<Incoming> {
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let error = match serde_json::from_slice::<RxJsonRpcMessage<RoleServer>>(line) {
        Ok(message) => return Some(Incoming::Message(Box::new(message))),
        Err(error) => error,
    };
    let Ok(probe) = serde_json::from_slice::<Probe>(line) else {
        tracing::debug!("answering a line that is not JSON: {error}");
        return Some(reject(
            ErrorData::parse_error(format!("the message is not valid JSON: {error}"), None),
            None,
        ));
    };
    // A notification is never answered, and may be one that this server does not know.
    let id = probe.id?;
    let answer = match error.classify() {
        serde_json::error::Category::Data => {
            ErrorData::invalid_request(format!("the message is not a valid MCP request: {error}"), None)
        }
        _ => ErrorData::parse_error(
            format!("the message cannot be decoded: {error} (strings must be valid Unicode: no lone UTF-16 surrogates)"),
            None,
        ),
    };
    Some(reject(answer, Some(id)))
}

fn reject(error: ErrorData, id: Option<RequestId>) -> Incoming {
    let message = TxJsonRpcMessage::<RoleServer>::error(error, id);
    let mut value = serde_json::to_value(message).unwrap_or_default();
    // JSON-RPC: an error whose request id could not be read says `"id": null`.
    if let Some(object) = value.as_object_mut() {
        object.entry("id").or_insert(serde_json::Value::Null);
    }
    Incoming::Reject(Box::new(value))
}

/// Answers a line over the limit: reads its id from the part already read and the rest of the
/// line, streaming, then drops the rest of the line.
fn too_long(input: &mut impl BufRead, start: &[u8], max_line: usize) -> Incoming {
    let mut rest = UntilNewline {
        input,
        done: false,
        read: 0,
    };
    let id = {
        // serde_json reads byte by byte: give it a buffer.
        let reader = io::BufReader::with_capacity(1 << 16, start.chain(&mut rest));
        let mut de = serde_json::Deserializer::from_reader(reader);
        Probe::deserialize(&mut de).ok().and_then(|probe| probe.id)
    };
    // Whatever the probe did not read of the line goes too.
    let _ = io::copy(&mut rest, &mut io::sink());
    let size = start.len() as u64 + rest.read;
    tracing::warn!(size, max_line, "refused a message over the size limit");
    reject(
        ErrorData::invalid_request(
            format!(
                "the message is {size} bytes, more than this server accepts ({max_line} bytes; \
                 see --max-body-bytes)"
            ),
            None,
        ),
        id,
    )
}

/// Reads `input` up to and including the next newline.
struct UntilNewline<'a, R> {
    input: &'a mut R,
    done: bool,
    read: u64,
}

impl<R: BufRead> Read for UntilNewline<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.done || out.is_empty() {
            return Ok(0);
        }
        let available = self.input.fill_buf()?;
        if available.is_empty() {
            self.done = true;
            return Ok(0);
        }
        let available = &available[..available.len().min(out.len())];
        let n = match available.iter().position(|&b| b == b'\n') {
            Some(newline) => {
                self.done = true;
                newline + 1
            }
            None => available.len(),
        };
        out[..n].copy_from_slice(&available[..n]);
        self.input.consume(n);
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(input: &str, max: usize) -> Vec<serde_json::Value> {
        let mut received = Vec::new();
        read_messages(&mut input.as_bytes(), max, |incoming| {
            received.push(incoming);
            true
        });
        let mut out = Vec::new();
        for incoming in received {
            out.push(match incoming {
                Incoming::Message(m) => {
                    serde_json::json!({ "message": serde_json::to_value(*m).unwrap() })
                }
                Incoming::Reject(e) => serde_json::to_value(*e).unwrap(),
            });
        }
        out
    }

    #[test]
    fn every_request_gets_an_answer() {
        let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        let surrogate = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"run_js","arguments":{"code":"'\ud800'"}}}"#;
        let long = format!(
            r#"{{"jsonrpc":"2.0","method":"tools/call","params":{{"code":"{}"}},"id":"late"}}"#,
            "x".repeat(500)
        );
        let input = format!("{ping}\nnot json\n{surrogate}\n{long}\n\n{{\"jsonrpc\":\"2.0\",\"method\":\"x/unknown\"}}\n{ping}");
        let out = answers(&input, 300);
        assert_eq!(out.len(), 6, "{out:#?}");
        assert_eq!(out[0]["message"]["method"], "ping");
        assert_eq!(out[1]["error"]["code"], -32700);
        assert!(out[1]["id"].is_null());
        // Present, as JSON-RPC requires, not left out.
        assert!(out[1].as_object().unwrap().contains_key("id"));
        assert_eq!(out[2]["error"]["code"], -32700);
        assert_eq!(out[2]["id"], 2);
        assert!(out[2]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("surrogate"));
        assert_eq!(out[3]["error"]["code"], -32600);
        assert_eq!(out[3]["id"], "late");
        assert!(out[3]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("300 bytes"));
        // Notifications are the service's to judge (and never answered).
        assert_eq!(out[4]["message"]["method"], "x/unknown");
        assert_eq!(out[5]["message"]["method"], "ping");
    }
}
