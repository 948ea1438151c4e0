//! Where an exception happened, in the user's code: the position of the throw and the stack
//! of the user's own frames, mapped back through the front end (TypeScript, split literals)
//! to the code as submitted. The runtime's own frames (its prelude) are left out.

use serde::{Deserialize, Serialize};

use super::JsException;
use crate::frontend::{Origin, Position, Prepared};

/// Most frames V8 records per error, and most frames reported.
pub(super) const MAX_FRAMES: i32 = 16;

/// A frame of the user's code in a stack trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// The function's name; `None` for the top level of a call and anonymous functions.
    pub function: Option<String>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Whether the code is this call's or an earlier call's (positions of an earlier call
    /// are in that call's code).
    pub origin: Origin,
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let earlier = match self.origin {
            Origin::ThisCall => "",
            Origin::EarlierCall => " of an earlier call",
        };
        let at = format!("line {}, column {}{earlier}", self.line, self.column);
        match &self.function {
            Some(name) => write!(f, "at {name} ({at})"),
            None => write!(f, "at {at}"),
        }
    }
}

/// Fills in where `exception` (made from `thrown`) happened: from the stack V8 recorded for
/// it (errors, and anything thrown while V8 records stacks), else from `message` (a syntax
/// error has a place but no stack).
pub(super) fn locate(
    scope: &mut v8::HandleScope,
    exception: &mut JsException,
    thrown: v8::Local<v8::Value>,
    message: Option<v8::Local<v8::Message>>,
    code: &Prepared,
) {
    let trace = v8::Exception::get_stack_trace(scope, thrown)
        .or_else(|| message.and_then(|m| m.get_stack_trace(scope)));
    if let Some(trace) = trace {
        exception.stack = frames(scope, trace, code);
    }
    let here = exception
        .stack
        .iter()
        .find(|f| f.origin == Origin::ThisCall)
        .map(|f| (f.line, f.column));
    let position = here.or_else(|| {
        // V8 gives line 0 when it knows no place; the start column is 0-based.
        let m = message?;
        let line = m.get_line_number(scope).filter(|&l| l > 0)?;
        let column = m.get_start_column().checked_add(1)?;
        let p = code.user_position(Position { line, column });
        Some((p.line, p.column))
    });
    if let Some((line, column)) = position {
        exception.line = Some(line);
        exception.column = Some(column);
    }
}

fn frames(
    scope: &mut v8::HandleScope,
    trace: v8::Local<v8::StackTrace>,
    code: &Prepared,
) -> Vec<Frame> {
    let mut frames = Vec::new();
    for i in 0..trace.get_frame_count() {
        let Some(frame) = trace.get_frame(scope, i) else {
            continue;
        };
        let Some(origin) = frame
            .get_script_name_or_source_url(scope)
            .and_then(|name| code.origin(&name.to_rust_string_lossy(scope)))
        else {
            continue;
        };
        let compiled = Position {
            line: frame.get_line_number(),
            column: frame.get_column(),
        };
        let at = match origin {
            Origin::ThisCall => code.user_position(compiled),
            Origin::EarlierCall => compiled,
        };
        let function = frame
            .get_function_name(scope)
            .map(|name| name.to_rust_string_lossy(scope))
            .filter(|name| !name.is_empty());
        frames.push(Frame {
            function,
            line: at.line,
            column: at.column,
            origin,
        });
    }
    frames
}
