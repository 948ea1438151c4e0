//! Worker processes: the same `mcp-v8` binary started with `--worker`, running one job at a
//! time for the host. A V8 abort or a kill ends only the worker, and several workers run
//! snapshot creators in parallel, which one process cannot.

mod pool;
mod protocol;

use bytes::Bytes;
use futures::executor::block_on;
use futures::io::AllowStdIo;
use std::io::{self, BufReader, BufWriter};
use std::process::ExitCode;
use tokio_util::compat::{FuturesAsyncReadCompatExt, FuturesAsyncWriteCompatExt};

pub use pool::WorkerPool;
use protocol::{
    encode_console, read_frame, write_frame, Answer, Done, Finished, Request, RequestTarget,
};

use crate::engine::{self, RunError};
use crate::job::{run_here, Job, Outcome, Target};

/// The worker's main loop: answer requests on stdin until it closes.
pub fn serve() -> ExitCode {
    engine::init();
    // The protocol's codec is async; the worker blocks on its pipes, with nothing else to do.
    let mut input = AllowStdIo::new(BufReader::new(io::stdin().lock())).compat();
    let mut output = AllowStdIo::new(BufWriter::new(io::stdout().lock())).compat_write();
    loop {
        let (request, mut sections) = match block_on(read_frame::<Request>(&mut input)) {
            Ok(Some(frame)) => frame,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("worker: unreadable request: {e}");
                return ExitCode::FAILURE;
            }
        };
        let target = match request.target {
            RequestTarget::Stateless => Target::Stateless,
            RequestTarget::Heap { name, restore } => Target::Heap {
                name,
                sealed: if restore {
                    sections.pop().map(Bytes::from)
                } else {
                    None
                },
            },
        };
        let code = sections
            .into_iter()
            .next()
            .map(|bytes| String::from_utf8(bytes).map_err(|_| "code is not UTF-8"));
        let mut answered = Ok(());
        let outcome = match code {
            Some(Ok(code)) => {
                let job = Job {
                    code,
                    target,
                    limits: request.limits,
                };
                run_here(job, |stage| {
                    // The host learns that V8 has restored the heap: a crash from here on is
                    // the code's, not the snapshot's.
                    answered = block_on(write_frame(&mut output, &Answer::Stage(stage), &[]));
                })
            }
            Some(Err(e)) => Outcome::failed(RunError::Crashed(e.into())),
            None => Outcome::failed(RunError::Crashed("request without code".into())),
        };
        let (result, output_text, heap) = match outcome.result {
            Ok((completion, heap)) => (
                Ok(Finished {
                    output_truncated: completion.output_truncated,
                    pending_timers: completion.pending_timers,
                }),
                completion.output,
                heap,
            ),
            Err(e) => (Err(e), String::new(), None),
        };
        let done = Answer::Done(Done {
            result,
            console_truncated: outcome.console.truncated,
        });
        let console = encode_console(&outcome.console);
        let mut sections: Vec<&[u8]> = vec![output_text.as_bytes(), &console];
        sections.extend(heap.as_deref());
        let written = answered.and_then(|()| block_on(write_frame(&mut output, &done, &sections)));
        if let Err(e) = written {
            tracing::error!("worker: cannot answer the host: {e}");
            return ExitCode::FAILURE;
        }
    }
}
