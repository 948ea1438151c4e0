//! Frames between the host and a worker process, over the worker's stdin and stdout.
//!
//! ```text
//! frame   = u32 LE header length | header (JSON) | u32 LE section count | section*
//! section = u64 LE length | bytes
//! ```
//!
//! Code, output, console and snapshots travel as raw sections, never inside JSON, so a 10 MB
//! snapshot costs one write and one read and no size of output can outgrow the header. The
//! header carries only fixed-size facts and error texts, which the engine keeps short.
//!
//! A request with `live` set may get [`Answer::Live`] frames while its code runs (console
//! lines and progress, at most one per [`crate::engine::live::WINDOW`]), always before its
//! [`Answer::Done`].
//!
//! A worker answers a request that restores a stored snapshot with one [`Answer::Started`]
//! frame once V8 has restored it and the code starts, then one [`Answer::Done`] frame as
//! soon as the code has settled. After a successful stateful run the worker either keeps the
//! new state live (the `Done` frame names its generation) or sends one [`Answer::Saved`]
//! frame once V8 has snapshotted the heap — the host answers its caller between the two. A
//! checkpoint request gets one `Saved` frame. A request for a warm heap the worker no longer
//! holds gets one [`Answer::NotWarm`] frame instead.
//!
//! Code that makes host calls (`tools`, [`crate::host_call`]) adds frames to a job: the worker
//! sends [`Answer::HostCall`] as the code makes a call and goes on running it; when the code
//! has nothing else to do it sends [`Answer::Await`], and the host answers with one
//! [`Delivery`]: a reply that has come in, or none after the time asked. The host writes to a
//! running job only then, when the worker is waiting to read.
//!
//! One codec serves both sides: [`write_frame`] and [`read_frame`] are async; the worker,
//! which has nothing else to do while it waits, drives them over its blocking pipes with
//! `block_on`.

use std::io;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::engine::live::{Batch, Progress};
use crate::engine::{Console, Dropped, JsException, Limits, LogLine, RunError, Tape};
use crate::host_call::{FetchResponse, HostCall, HostError, HostReply};
use crate::job::Keep;
use crate::record::Record;

/// Largest header accepted, to fail fast on a garbled stream.
const MAX_HEADER: u32 = 4 << 20;
/// Most sections in one frame.
const MAX_SECTIONS: u32 = 4;
/// Largest section accepted (a snapshot of the largest heap allowed fits).
const MAX_SECTION: u64 = 32 << 30;

/// What the host asks a worker to do. Sections: the code, then the raw snapshot to restore
/// for [`RequestStart::Snapshot`] and [`RequestStart::Alone`], then the calls to replay first
/// when there are any ([`encode_records`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// What the code runs on.
    pub target: RequestTarget,
    /// Time, memory and output limits.
    pub limits: Limits,
    /// Heaps whose warm isolates no longer stand for them: drop them first.
    #[serde(default)]
    pub forget: Vec<String>,
    /// Send console lines and progress while the code runs ([`Answer::Live`]).
    #[serde(default)]
    pub live: bool,
    /// The host answers host calls ([`Answer::HostCall`]); without, they fail in the worker.
    #[serde(default)]
    pub host_calls: bool,
}

/// [`crate::job::Target`] without its bytes.
#[derive(Debug, Serialize, Deserialize)]
pub enum RequestTarget {
    /// A fresh isolate.
    Stateless,
    /// A heap.
    Heap {
        /// The heap's name.
        name: String,
        /// Where its state comes from.
        start: RequestStart,
        /// How many committed calls to run again before the code (a section of records).
        #[serde(default)]
        replay: usize,
        /// What becomes of the new state after a successful run.
        keep: Keep,
        /// The error of the heap's last failed call, which the code finds as `_error`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_error: Option<JsException>,
    },
    /// Snapshot the heap the worker keeps live at this generation (a checkpoint): answered
    /// with [`Answer::Saved`], or [`Answer::NotWarm`]. No sections.
    Checkpoint {
        /// The heap's name.
        name: String,
        /// The state the host expects the worker to hold.
        generation: u64,
    },
}

/// [`crate::job::Start`] without its bytes.
#[derive(Debug, Serialize, Deserialize)]
pub enum RequestStart {
    /// A new heap.
    New,
    /// A snapshot section follows the code.
    Snapshot,
    /// A snapshot section with its own read-only heap follows the code: run it with no other
    /// isolate alive.
    Alone,
    /// The worker's warm isolate of this heap, at this generation.
    Warm {
        /// The save the host expects the worker to hold.
        generation: u64,
    },
}

/// What a worker says.
#[derive(Debug, Serialize, Deserialize)]
pub enum Answer {
    /// The stored heap is restored and the code starts now: a crash from here on is the
    /// code's, not the snapshot's. No sections.
    Started,
    /// What the running code reported lately. Sections: its console lines
    /// ([`encode_console`]).
    Live(Live),
    /// The worker does not hold the heap warm at the generation asked for (it evicted it):
    /// the job did not run. No sections.
    NotWarm,
    /// The code has settled. Sections: the output, then the console ([`encode_console`]).
    /// A successful stateful run's [`Answer::Saved`] follows unless [`Done::kept`] says the
    /// worker keeps the state live.
    Done(Done),
    /// The snapshot after a successful stateful run or a checkpoint, or why there is none.
    /// Sections: the raw snapshot, on success.
    Saved(Result<Generation, RunError>),
    /// The code made host call `call` (numbered in the run). A tool's arguments come as a
    /// section, not in the header. No reply is expected until [`Answer::Await`].
    HostCall {
        /// The call's number in the run.
        call: u32,
        /// What it asks; a tool call's `arguments` are empty here (see the section).
        ask: HostCall,
    },
    /// The code no longer wants host call `call`'s reply (it aborted it): the host stops the
    /// call if it still can. No reply is expected.
    CancelCall {
        /// The call's number in the run.
        call: u32,
    },
    /// The code waits for a host reply: send one [`Delivery`] within `wait_us` µs.
    Await {
        /// How long the worker waits, in µs.
        wait_us: u64,
    },
}

impl Answer {
    /// A host call as a frame's header and section: a tool's arguments or a request's body go
    /// in the section.
    pub fn host_call(call: u32, ask: &HostCall) -> (Answer, Vec<u8>) {
        let mut ask = ask.clone();
        let section = match &mut ask {
            HostCall::Tool { arguments, .. } => std::mem::take(arguments).into_bytes(),
            HostCall::Fetch(request) => std::mem::take(&mut request.body),
            _ => Vec::new(),
        };
        (Answer::HostCall { call, ask }, section)
    }
}

/// A host call with its arguments or body from the frame's section.
pub fn host_call_of(mut ask: HostCall, section: Option<Vec<u8>>) -> io::Result<HostCall> {
    match &mut ask {
        HostCall::Tool { arguments, .. } => {
            let bytes = section.unwrap_or_default();
            *arguments = String::from_utf8(bytes).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "arguments are not UTF-8")
            })?;
        }
        HostCall::Fetch(request) => request.body = section.unwrap_or_default(),
        _ => {}
    }
    Ok(ask)
}

/// The host's answer to [`Answer::Await`]. Each says how long the host waited for a person
/// ([`crate::approval`]) since the last one: the worker moves the run's deadline by that much.
#[derive(Debug, Serialize, Deserialize)]
pub enum Delivery {
    /// The reply to call `call`; its text or body is the frame's section.
    Reply {
        /// The call's number in the run.
        call: u32,
        /// The reply without its text or body.
        head: ReplyHead,
        /// µs spent waiting for a person since the last delivery.
        #[serde(default)]
        paused_us: u64,
    },
    /// No reply came in the time asked.
    Nothing {
        /// µs spent waiting for a person since the last delivery.
        #[serde(default)]
        paused_us: u64,
    },
}

/// A [`HostReply`] without the bytes a frame carries as its section.
#[derive(Debug, Serialize, Deserialize)]
pub enum ReplyHead {
    /// [`HostReply::Answer`]: the section is its text.
    Answer,
    /// [`HostReply::Response`] with an empty body: the section is the body.
    Response(FetchResponse),
    /// [`HostReply::Failed`]; no section.
    Failed(HostError),
}

impl Delivery {
    /// A reply as a frame's header and section, `paused` after the last delivery.
    pub fn reply(call: u32, reply: HostReply, paused: Duration) -> (Delivery, Vec<u8>) {
        let (head, section) = match reply {
            HostReply::Answer(text) => (ReplyHead::Answer, text.into_bytes()),
            HostReply::Response(mut response) => {
                let body = std::mem::take(&mut response.body);
                (ReplyHead::Response(response), body)
            }
            HostReply::Failed(error) => (ReplyHead::Failed(error), Vec::new()),
        };
        let paused_us = micros(paused);
        (
            Delivery::Reply {
                call,
                head,
                paused_us,
            },
            section,
        )
    }

    /// No reply, `paused` after the last delivery.
    pub fn nothing(paused: Duration) -> Delivery {
        Delivery::Nothing {
            paused_us: micros(paused),
        }
    }

    /// How long the host waited for a person since the last delivery.
    pub fn paused(&self) -> Duration {
        match self {
            Delivery::Reply { paused_us, .. } | Delivery::Nothing { paused_us } => {
                Duration::from_micros(*paused_us)
            }
        }
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

impl ReplyHead {
    /// The reply, with its text or body from the frame's section.
    pub fn into_reply(self, section: Option<Vec<u8>>) -> io::Result<HostReply> {
        let bytes = section.unwrap_or_default();
        Ok(match self {
            ReplyHead::Answer => {
                HostReply::Answer(String::from_utf8(bytes).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "a reply is not UTF-8")
                })?)
            }
            ReplyHead::Response(mut response) => {
                response.body = bytes;
                HostReply::Response(response)
            }
            ReplyHead::Failed(error) => HostReply::Failed(error),
        })
    }
}

/// A [`Batch`] without its lines.
#[derive(Debug, Serialize, Deserialize)]
pub struct Live {
    /// Console lines left out.
    pub skipped: u64,
    /// The latest progress the code reported.
    pub progress: Option<Progress>,
}

impl Live {
    /// A batch as a frame's header and section.
    pub fn encode(batch: Batch) -> (Live, Vec<u8>) {
        let lines = encode_console(&Console {
            lines: batch.lines,
            dropped: None,
        });
        let header = Live {
            skipped: batch.skipped,
            progress: batch.progress,
        };
        (header, lines)
    }

    /// The batch a frame carried.
    pub fn decode(self, lines: &[u8]) -> io::Result<Batch> {
        Ok(Batch {
            lines: decode_console(lines, None)?.lines,
            skipped: self.skipped,
            progress: self.progress,
        })
    }
}

/// The number a worker gives a heap's save; a later request names it to use the heap warm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation(pub u64);

/// The header of a finished job.
#[derive(Debug, Serialize, Deserialize)]
pub struct Done {
    /// The completion's facts (its output is a section), or why there is none.
    pub result: Result<Finished, RunError>,
    /// Console lines dropped at the console limit.
    #[serde(default)]
    pub console_dropped: Option<Dropped>,
    /// After a successful stateful run: the worker keeps the new state live, as this
    /// generation, and sends no snapshot.
    #[serde(default)]
    pub kept: Option<Generation>,
}

/// A completion without its output.
#[derive(Debug, Serialize, Deserialize)]
pub struct Finished {
    /// The output was cut at the output limit.
    pub output_truncated: bool,
    /// Bytes of the whole output, before any cut.
    #[serde(default)]
    pub size: usize,
    /// A preview of the output follows the console, as the third section.
    #[serde(default)]
    pub previewed: bool,
    /// Timers dropped when the result settled.
    pub pending_timers: usize,
    /// What the run read from outside its heap.
    pub tape: Tape,
}

/// Journal records as a section: per record, `u64 LE length | record` ([`crate::record`]).
pub fn encode_records(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for record in records {
        let bytes = record.encode();
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// The records of a section made by [`encode_records`], each checked by the record codec.
pub fn decode_records(section: &[u8], count: usize) -> io::Result<Vec<Record>> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let mut records = Vec::with_capacity(count.min(1 << 16));
    let mut rest = section;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| bad("a record's length is cut".into()))?;
        let len = usize::try_from(u64::from_le_bytes(*len)).unwrap_or(usize::MAX);
        if len > tail.len() {
            return Err(bad("a record is cut".into()));
        }
        let (bytes, tail) = tail.split_at(len);
        let record = Record::decode(&bytes::Bytes::copy_from_slice(bytes))
            .map_err(|e| bad(e.to_string()))?;
        records.push(record);
        rest = tail;
    }
    if records.len() != count {
        return Err(bad(format!(
            "{} records sent, {count} announced",
            records.len()
        )));
    }
    Ok(records)
}

/// The console as a section: per line, `u8 level length | level | u32 LE text length | text`.
pub fn encode_console(console: &Console) -> Vec<u8> {
    let size: usize = console
        .lines
        .iter()
        .map(|l| 5 + l.level.len() + l.text.len())
        .sum();
    let mut out = Vec::with_capacity(size);
    for line in &console.lines {
        let level = &line.level.as_bytes()[..line.level.len().min(255)];
        out.push(level.len() as u8);
        out.extend_from_slice(level);
        let text = line.text.as_bytes();
        let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&text[..len as usize]);
    }
    out
}

/// Reads a console section written by [`encode_console`].
pub fn decode_console(mut bytes: &[u8], dropped: Option<Dropped>) -> io::Result<Console> {
    let mut lines = Vec::new();
    while !bytes.is_empty() {
        let (level, rest) = split(bytes, 1)?;
        let (level, rest) = split(rest, usize::from(level[0]))?;
        let (len, rest) = split(rest, 4)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (text, rest) = split(rest, len)?;
        lines.push(LogLine {
            level: String::from_utf8_lossy(level).into_owned(),
            text: String::from_utf8_lossy(text).into_owned(),
        });
        bytes = rest;
    }
    Ok(Console { lines, dropped })
}

fn split(bytes: &[u8], n: usize) -> io::Result<(&[u8], &[u8])> {
    if bytes.len() < n {
        return Err(invalid("console section cut short"));
    }
    Ok(bytes.split_at(n))
}

fn encode_header<H: Serialize>(header: &H) -> io::Result<Vec<u8>> {
    serde_json::to_vec(header).map_err(io::Error::other)
}

fn decode_header<H: DeserializeOwned>(bytes: &[u8]) -> io::Result<H> {
    serde_json::from_slice(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn section_len(len: u64) -> io::Result<usize> {
    if len > MAX_SECTION {
        return Err(invalid("section too large"));
    }
    usize::try_from(len).map_err(|_| invalid("section too large"))
}

/// Writes one frame.
pub async fn write_frame<H: Serialize>(
    w: &mut (impl AsyncWrite + Unpin),
    header: &H,
    sections: &[&[u8]],
) -> io::Result<()> {
    let header = encode_header(header)?;
    let mut head = Vec::with_capacity(8 + header.len());
    head.extend_from_slice(&(header.len() as u32).to_le_bytes());
    head.extend_from_slice(&header);
    head.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    w.write_all(&head).await?;
    for section in sections {
        w.write_all(&(section.len() as u64).to_le_bytes()).await?;
        w.write_all(section).await?;
    }
    w.flush().await
}

/// Reads one frame. `Ok(None)` when the stream ends where a frame would begin; ending inside
/// one is an error.
pub async fn read_frame<H: DeserializeOwned>(
    r: &mut (impl AsyncRead + Unpin),
) -> io::Result<Option<(H, Vec<Vec<u8>>)>> {
    let mut len = [0u8; 4];
    if r.read(&mut len[..1]).await? == 0 {
        return Ok(None);
    }
    r.read_exact(&mut len[1..]).await?;
    let header_len = u32::from_le_bytes(len);
    if header_len > MAX_HEADER {
        return Err(invalid("frame header too large"));
    }
    let mut header = vec![0u8; header_len as usize];
    r.read_exact(&mut header).await?;
    let count = r.read_u32_le().await?;
    if count > MAX_SECTIONS {
        return Err(invalid("too many sections"));
    }
    let mut sections = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = section_len(r.read_u64_le().await?)?;
        // Grown as bytes arrive past 64 MiB, not allocated as announced: a garbled length
        // must not reserve gigabytes (found by fuzzing).
        let mut section = Vec::with_capacity(len.min(64 << 20));
        (&mut *r).take(len as u64).read_to_end(&mut section).await?;
        if section.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stream ended inside a section",
            ));
        }
        sections.push(section);
    }
    Ok(Some((decode_header(&header)?, sections)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_section_longer_than_the_stream_is_an_error_not_an_allocation() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &Answer::NotWarm, &[b"abc"])
            .await
            .unwrap();
        // The section now announces 30 GiB, and the stream has three bytes of it.
        let at = wire.len() - 3 - 8;
        wire[at..at + 8].copy_from_slice(&(30u64 << 30).to_le_bytes());
        let error = read_frame::<Answer>(&mut &wire[..]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let limits = Limits::default();
        let request = Request {
            target: RequestTarget::Heap {
                name: "h".into(),
                start: RequestStart::Snapshot,
                replay: 0,
                keep: Keep::Live,
                last_error: Some(JsException::new("Error", "before")),
            },
            limits,
            forget: vec!["old".into()],
            live: true,
            host_calls: false,
        };
        let mut wire = Vec::new();
        write_frame(&mut wire, &request, &[b"1 + 1", &[0u8, 1, 2]])
            .await
            .unwrap();
        let (back, sections): (Request, _) =
            read_frame(&mut wire.as_slice()).await.unwrap().unwrap();
        assert!(
            matches!(back.target, RequestTarget::Heap { ref name, start: RequestStart::Snapshot, keep: Keep::Live, ref last_error, .. } if name == "h" && last_error.as_ref().is_some_and(|e| e.message == "before"))
        );
        assert_eq!(back.limits, limits);
        assert_eq!(back.forget, ["old"]);
        assert!(back.live);
        assert_eq!(sections, vec![b"1 + 1".to_vec(), vec![0, 1, 2]]);

        let mut wire = Vec::new();
        let error = Answer::Done(Done {
            result: Err(RunError::Timeout(std::time::Duration::from_secs(2))),
            console_dropped: None,
            kept: None,
        });
        write_frame(&mut wire, &error, &[]).await.unwrap();
        let (back, sections): (Answer, _) =
            read_frame(&mut wire.as_slice()).await.unwrap().unwrap();
        assert!(matches!(
            back,
            Answer::Done(Done { result: Err(RunError::Timeout(d)), .. }) if d.as_secs() == 2
        ));
        assert!(sections.is_empty());
    }

    #[tokio::test]
    async fn host_calls_and_their_replies_round_trip_with_arguments_as_sections() {
        let asks = [
            HostCall::Tool {
                server: "db".into(),
                tool: "query".into(),
                arguments: "{\"q\":\"\\\"quoted\\\"\"}".into(),
            },
            HostCall::Fetch(crate::host_call::FetchRequest {
                method: "POST".into(),
                url: "https://example.com/a?b=c".into(),
                headers: vec![("content-type".into(), "application/octet-stream".into())],
                redirect: crate::host_call::Redirect::Manual,
                body: vec![0, 255, 1, 2],
            }),
        ];
        for ask in asks {
            let (header, section) = Answer::host_call(7, &ask);
            let mut wire = Vec::new();
            write_frame(&mut wire, &header, &[&section]).await.unwrap();
            let (back, sections): (Answer, _) =
                read_frame(&mut wire.as_slice()).await.unwrap().unwrap();
            let Answer::HostCall { call, ask: back } = back else {
                panic!("a host call expected");
            };
            assert_eq!(call, 7);
            assert_eq!(
                host_call_of(back, sections.into_iter().next()).unwrap(),
                ask
            );
        }

        for reply in [
            HostReply::Answer("{\"content\":[]}".into()),
            HostReply::Response(FetchResponse {
                status: 201,
                status_text: "Created".into(),
                url: "https://example.com/".into(),
                redirected: true,
                headers: vec![("x".into(), "y".into())],
                body: vec![0xff, 0, 7],
            }),
            HostReply::Failed(HostError::new(
                crate::host_call::HostErrorKind::Denied,
                "no",
            )),
        ] {
            let paused = Duration::from_millis(1500);
            let (header, section) = Delivery::reply(3, reply.clone(), paused);
            let mut wire = Vec::new();
            write_frame(&mut wire, &header, &[&section]).await.unwrap();
            let (back, sections): (Delivery, _) =
                read_frame(&mut wire.as_slice()).await.unwrap().unwrap();
            assert_eq!(back.paused(), paused);
            let Delivery::Reply { call: 3, head, .. } = back else {
                panic!("a reply to call 3 expected");
            };
            let again = head.into_reply(sections.into_iter().next()).unwrap();
            assert_eq!(again, reply);
        }
    }

    #[tokio::test]
    async fn live_batches_round_trip() {
        let batch = Batch {
            lines: vec![LogLine {
                level: "warn".into(),
                text: "careful\nnow".into(),
            }],
            skipped: 7,
            progress: Some(Progress {
                done: 2.5,
                total: None,
                message: Some("rows".into()),
            }),
        };
        let (header, lines) = Live::encode(batch.clone());
        let mut wire = Vec::new();
        write_frame(&mut wire, &Answer::Live(header), &[&lines])
            .await
            .unwrap();
        let (back, sections): (Answer, _) =
            read_frame(&mut wire.as_slice()).await.unwrap().unwrap();
        let Answer::Live(live) = back else {
            panic!("{back:?}")
        };
        assert_eq!(live.decode(&sections[0]).unwrap(), batch);
    }

    #[test]
    fn console_sections_carry_any_text() {
        let console = Console {
            lines: vec![
                LogLine {
                    level: "log".into(),
                    text: "\u{0}\u{1}\n\"quoted\" ✓".into(),
                },
                LogLine {
                    level: "error".into(),
                    text: String::new(),
                },
            ],
            dropped: Some(Dropped { after: 1, lines: 5 }),
        };
        let bytes = encode_console(&console);
        assert_eq!(decode_console(&bytes, console.dropped).unwrap(), console);
        assert!(decode_console(&bytes[..bytes.len() - 1], None).is_err());
    }

    #[tokio::test]
    async fn end_of_stream_and_garbage() {
        let none = read_frame::<Request>(&mut [].as_slice()).await.unwrap();
        assert!(none.is_none());
        let cut = read_frame::<Request>(&mut [1u8, 0].as_slice()).await;
        assert_eq!(cut.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let garbage = [0xFFu8; 16];
        assert!(read_frame::<Request>(&mut garbage.as_slice())
            .await
            .is_err());
    }
}
