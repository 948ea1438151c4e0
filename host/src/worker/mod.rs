//! Worker processes: the same `mcp-v8` binary started with `--worker`, running one job at a
//! time for the host. A V8 abort or a kill ends only the worker, and several workers run
//! snapshot creators in parallel, which one process cannot.

mod pool;
mod protocol;

use bytes::Bytes;
use std::io::{self, BufReader, BufWriter};
use std::process::ExitCode;

pub use pool::WorkerPool;
use protocol::{read_frame, write_frame, Request, Response};

use crate::engine::{self, RunError};
use crate::executor::{run_here, Job, Outcome};

/// The worker's main loop: answer requests on stdin until it closes.
pub fn serve() -> ExitCode {
    engine::init();
    let mut input = BufReader::new(io::stdin().lock());
    let mut output = BufWriter::new(io::stdout().lock());
    loop {
        let (request, mut sections) = match read_frame::<Request>(&mut input) {
            Ok(Some(frame)) => frame,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("worker: unreadable request: {e}");
                return ExitCode::FAILURE;
            }
        };
        let heap = if request.heap {
            sections.pop().map(Bytes::from)
        } else {
            None
        };
        let code = sections
            .into_iter()
            .next()
            .map(|bytes| String::from_utf8(bytes).map_err(|_| "code is not UTF-8"));
        let outcome = match code {
            Some(Ok(code)) => run_here(Job {
                code,
                stateful: request.stateful,
                heap,
                limits: request.limits,
            }),
            Some(Err(e)) => Outcome::failed(RunError::Crashed(e.into())),
            None => Outcome::failed(RunError::Crashed("request without code".into())),
        };
        let (result, heap) = match outcome.result {
            Ok((completion, heap)) => (Ok(completion), heap),
            Err(e) => (Err(e), None),
        };
        let response = Response {
            result,
            console: outcome.console,
        };
        let sections: Vec<&[u8]> = heap.as_deref().into_iter().collect();
        let written = write_frame(&mut output, &response, &sections);
        if let Err(e) = written {
            tracing::error!("worker: cannot answer the host: {e}");
            return ExitCode::FAILURE;
        }
    }
}
