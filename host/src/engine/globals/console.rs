//! `console`: the lines a run prints, kept within the console limit (the first lines and the
//! latest), and sent live to a client that listens.

use super::*;

/// A captured `console` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LogLine {
    /// `log`, `info`, `warn`, `error` or `debug`.
    pub level: String,
    /// The arguments, rendered and joined by spaces.
    pub text: String,
}

/// Everything `console` printed during one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Console {
    /// The lines, in order.
    pub lines: Vec<LogLine>,
    /// Lines dropped from the middle because the output outgrew its size limit: the first
    /// lines and the latest are kept.
    #[serde(default)]
    pub dropped: Option<Dropped>,
}

/// Console lines dropped at the size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// How many of [`Console::lines`] come before them.
    pub after: usize,
    /// How many.
    pub lines: usize,
}

/// What a console line counts against the console limit.
pub(super) fn console_cost(line: &LogLine) -> usize {
    line.text.len() + line.level.len() + 4
}

/// The latest console lines of a run over its console limit.
pub(super) struct Tail {
    pub(super) lines: std::collections::VecDeque<LogLine>,
    /// Their bytes ([`console_cost`]).
    pub(super) bytes: usize,
    /// The bytes of the lines kept before them.
    pub(super) head_bytes: usize,
    /// Lines dropped between those and these.
    pub(super) dropped: usize,
}

pub(super) fn console_line(
    scope: &mut v8::HandleScope,
    args: &v8::FunctionCallbackArguments,
    level: &str,
) {
    let mut parts = Vec::with_capacity(args.length().max(0) as usize);
    for i in 0..args.length() {
        let limit = scope
            .get_slot::<RunState>()
            .map_or(0, |state| state.console_limit);
        let scope = &mut v8::HandleScope::new(scope);
        let value = v8::Local::new(scope, args.get(i));
        match render(scope, value, limit) {
            Ok(text) => parts.push(text.text),
            Err(Unrendered::Threw(_)) => parts.push("[unprintable value]".into()),
            // The run is being stopped: print nothing more.
            Err(Unrendered::Terminated) => return,
        }
    }
    let text = parts.join(" ");
    if let Some(state) = scope.get_slot_mut::<RunState>() {
        state.log(level, text);
    }
}

pub(super) fn console_log(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    _: v8::ReturnValue,
) {
    console_line(scope, &args, "log");
}

pub(super) fn console_info(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    _: v8::ReturnValue,
) {
    console_line(scope, &args, "info");
}

pub(super) fn console_warn(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    _: v8::ReturnValue,
) {
    console_line(scope, &args, "warn");
}

pub(super) fn console_error(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    _: v8::ReturnValue,
) {
    console_line(scope, &args, "error");
}

pub(super) fn console_debug(
    scope: &mut v8::HandleScope,
    args: v8::FunctionCallbackArguments,
    _: v8::ReturnValue,
) {
    console_line(scope, &args, "debug");
}

/// Bytes the console so far takes in an answer ([`crate::engine::preview::line_size`]).
pub(in crate::engine) fn console_size(scope: &mut v8::HandleScope) -> usize {
    scope
        .get_slot::<RunState>()
        .map_or(0, RunState::answer_size)
}

impl RunState {
    pub(super) fn log(&mut self, level: &str, text: String) {
        let line = LogLine {
            level: level.to_string(),
            text,
        };
        let cost = console_cost(&line);
        self.printed = self.printed.saturating_add(cost);
        if self.printed <= self.console_limit {
            if let Some(live) = &self.live {
                live.send(Event::Console(line.clone()), &mut self.live_pending);
            }
            self.console.lines.push(line);
            return;
        }
        // Over the limit: the lines in the first half stay, the latest take the rest.
        let limit = self.console_limit;
        let lines = &mut self.console.lines;
        let printed_before = self.printed - cost;
        let tail = self.tail.get_or_insert_with(|| {
            let mut head_bytes = 0;
            let head = lines
                .iter()
                .take_while(|line| {
                    let fits = head_bytes + console_cost(line) <= limit / 2;
                    if fits {
                        head_bytes += console_cost(line);
                    }
                    fits
                })
                .count();
            Tail {
                lines: lines.split_off(head).into(),
                bytes: printed_before - head_bytes,
                head_bytes,
                dropped: 0,
            }
        });
        tail.bytes += cost;
        tail.lines.push_back(line);
        while tail.head_bytes + tail.bytes > limit {
            let Some(first) = tail.lines.pop_front() else {
                break;
            };
            tail.bytes -= console_cost(&first);
            tail.dropped += 1;
        }
    }

    /// Bytes the console so far takes in an answer ([`crate::engine::preview::line_size`]).
    pub(super) fn answer_size(&self) -> usize {
        let tail = self.tail.iter().flat_map(|tail| tail.lines.iter());
        self.console
            .lines
            .iter()
            .chain(tail)
            .map(crate::engine::preview::line_size)
            .sum()
    }
}
