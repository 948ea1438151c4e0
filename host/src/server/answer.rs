//! A call's outcome as a tool result: the structured answer within the budget, or an error
//! text with the console, and the error's kind for clients that act on it.

use rmcp::model::{CallToolResult, ContentBlock, ErrorData, JsonObject, MetaObject, Resource};
use serde::Serialize;

use super::args::{OutputSize, RunAnswer};
use crate::engine::{
    self, line_size, Completion, Console, ConsolePreview, LogLine, BYTES_PER_TOKEN,
};
use crate::outputs::Outputs;
use crate::runtime::CallError;
use crate::runtime::Owner;

pub(super) fn structured<T: Serialize>(value: &T) -> Result<CallToolResult, ErrorData> {
    serde_json::to_value(value)
        .map(CallToolResult::structured)
        .map_err(|e| ErrorData::internal_error(format!("could not encode the result: {e}"), None))
}

/// The `_meta` key of a failed call's machine-readable kind.
pub(super) const ERROR_META: &str = "mcp-v8/error";

pub(super) fn tool_error(error: CallError) -> Result<CallToolResult, ErrorData> {
    let text = error.to_string();
    Ok(failure(&error, text))
}

/// A failed call as a tool result: `text` for the model, and under `_meta` the error's kind
/// and whether the same call may succeed again, for the client.
pub(super) fn failure(error: &CallError, text: String) -> CallToolResult {
    let mut result = CallToolResult::error(vec![ContentBlock::text(text)]);
    let kind = serde_json::json!({ "kind": error.kind(), "retryable": error.retryable() });
    result.meta = Some(MetaObject(JsonObject::from_iter([(
        ERROR_META.to_string(),
        kind,
    )])));
    result
}

impl RunAnswer {
    /// What an answer within `budget` bytes shows of a run: the whole result when it fits,
    /// else its preview, with the whole kept in `outputs` and `rest` saying where else it is
    /// (given how to read it from `outputs`); and a link to the kept result.
    pub(super) fn new(
        completion: Completion,
        console: &Console,
        budget: usize,
        outputs: &Outputs,
        owner: &Owner,
        rest: impl FnOnce(&str) -> String,
    ) -> (Self, Option<Resource>) {
        let size = completion.size;
        let (output, output_uri) = match completion.preview {
            Some(preview) => (preview, outputs.keep(owner, completion.output)),
            None => (completion.output, None),
        };
        let output_truncated = output_uri.is_some() || completion.output_truncated;
        let shown = shown_console(console, budget, engine::json_len(&output));
        let link = output_uri.as_ref().map(|uri| {
            Resource::new(uri.clone(), "output")
                .with_description("The whole result of this call, for 10 minutes")
                .with_mime_type("text/plain")
                .with_size(size as u64)
        });
        let read_output = match &output_uri {
            Some(uri) => format!(
                " Its text is readable for 10 minutes with `read_output` (uri '{uri}', offset, \
                 limit) or as that resource."
            ),
            None => String::new(),
        };
        let answer = Self {
            output,
            output_truncated,
            output_size: output_truncated.then(|| OutputSize {
                bytes: size,
                tokens: size.div_ceil(BYTES_PER_TOKEN),
            }),
            output_rest: output_truncated.then(|| rest(&read_output)),
            output_uri,
            logs: shown.head,
            logs_left_out: shown.left_out,
            logs_tail: shown.tail,
            logs_truncated: console.dropped.is_some(),
            pending_timers: completion.pending_timers,
        };
        (answer, link)
    }
}

/// The console within what a result of `result` bytes leaves of `budget`.
fn shown_console(console: &Console, budget: usize, result: usize) -> ConsolePreview {
    let size = console.lines.iter().map(line_size).sum();
    let (_, share) = engine::split(budget, result, size);
    engine::console_preview(console, share)
}

/// A console as text: its lines, and where lines were left out, a line saying so.
fn console_text(console: &ConsolePreview) -> String {
    let line = |l: &LogLine| format!("[{}] {}\n", l.level, l.text);
    let mut text: String = console.head.iter().map(line).collect();
    if console.left_out > 0 {
        text.push_str(&format!(
            "… [{} lines left out] …\n",
            engine::group(console.left_out)
        ));
    }
    text.extend(console.tail.iter().map(line));
    text
}

/// A run's result as JSON (structured and as text, the console in it) and a link to the
/// whole result when only a preview is shown; a failure as an error text followed by the
/// console (within `budget`).
pub(super) fn run_result<T: Serialize>(
    result: Result<(T, Option<Resource>), CallError>,
    console: &Console,
    budget: usize,
) -> Result<CallToolResult, ErrorData> {
    let printed = !console.lines.is_empty();
    match result {
        Ok((value, link)) => {
            let mut result = structured(&value)?;
            result.content.extend(link.map(ContentBlock::resource_link));
            Ok(result)
        }
        Err(error) => {
            let mut text = error.to_string();
            if printed {
                let shown = shown_console(console, budget, text.len());
                text.push_str("\n\nconsole output before the failure:\n");
                text.push_str(&console_text(&shown));
            }
            Ok(failure(&error, text))
        }
    }
}
