//! Worker processes: the same `mcp-v8` binary started with `--worker`, running one job at a
//! time for the host. A V8 abort or a kill ends only the worker, and several workers run
//! snapshot creators in parallel, which one process cannot.

mod pool;
mod protocol;

use std::io::{self, BufReader, BufWriter};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;

pub use pool::WorkerPool;
use protocol::{read_frame, write_frame, Request, Response};

use crate::engine::{self, Limits, RunError};
use crate::executor::{run_here, Job};

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
        let result = match code {
            Some(Ok(code)) => run_here(Job {
                code,
                stateful: request.stateful,
                heap,
                limits: Limits {
                    timeout: Duration::from_millis(request.timeout_ms),
                },
            }),
            Some(Err(e)) => Err(RunError::Crashed(e.into())),
            None => Err(RunError::Crashed("request without code".into())),
        };
        let written = match &result {
            Ok(outcome) => {
                let mut sections: Vec<&[u8]> = vec![outcome.output.as_bytes()];
                sections.extend(outcome.sealed_heap.as_deref());
                write_frame(&mut output, &Response::Ok, &sections)
            }
            Err(e) => write_frame(&mut output, &Response::Err(e.clone()), &[]),
        };
        if let Err(e) = written {
            tracing::error!("worker: cannot answer the host: {e}");
            return ExitCode::FAILURE;
        }
    }
}
