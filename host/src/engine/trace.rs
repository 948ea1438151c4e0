//! Where an exception happened, in the user's code: the position of the throw and the stack
//! of the user's own frames, mapped back through the front end (TypeScript, split literals)
//! to the code as submitted. The runtime's own frames (its prelude) are left out.

use serde::{Deserialize, Serialize};

use super::JsException;
use crate::frontend::{Position, Prepared};

/// Most frames V8 records per error, and most frames reported.
pub(super) const MAX_FRAMES: i32 = 16;

/// Which call a stack frame's code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// The code of this call.
    ThisCall,
    /// A function an earlier call on the same heap defined.
    EarlierCall,
}

/// The scripts of this call: every script has an id, and ids only grow, also across a
/// snapshot; this call's code has ids from `first` on.
#[derive(Debug, Clone, Copy)]
pub(super) struct ThisCall<'a> {
    pub(super) code: &'a Prepared,
    pub(super) first: i32,
}

impl ThisCall<'_> {
    /// The id the next script compiled in `scope` will have; it compiles an empty function
    /// to learn it.
    pub(super) fn first_script_id(scope: &mut v8::HandleScope) -> Option<i32> {
        let source = v8::String::new(scope, "(function () {})")?;
        let marker = v8::Script::compile(scope, source, None)?.run(scope)?;
        let marker = v8::Local::<v8::Function>::try_from(marker).ok()?;
        Some(marker.script_id() + 1)
    }
}

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
    call: ThisCall,
) {
    let trace = v8::Exception::get_stack_trace(scope, thrown)
        .or_else(|| message.and_then(|m| m.get_stack_trace(scope)));
    if let Some(trace) = trace {
        exception.stack = frames(scope, trace, call);
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
        let p = call.code.user_position(Position { line, column });
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
    call: ThisCall,
) -> Vec<Frame> {
    let mut frames = Vec::new();
    for i in 0..trace.get_frame_count() {
        let Some(frame) = trace.get_frame(scope, i) else {
            continue;
        };
        let is_user = frame
            .get_script_name_or_source_url(scope)
            .is_some_and(|name| Prepared::is_user_script(&name.to_rust_string_lossy(scope)));
        if !is_user {
            continue;
        }
        let origin = if frame.get_script_id() >= call.first as usize {
            Origin::ThisCall
        } else {
            Origin::EarlierCall
        };
        let compiled = Position {
            line: frame.get_line_number(),
            column: frame.get_column(),
        };
        let at = match origin {
            Origin::ThisCall => call.code.user_position(compiled),
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
