//! A result too long for an agent's answer, shown as a preview that keeps its structure.
//!
//! Objects and arrays are previewed as JSON that parses: the first items of an array and its
//! length, the first keys of an object, long strings cut with their length, nesting below a
//! depth named instead of shown. What JSON cannot say is said in marker strings: Maps, Sets
//! and typed arrays as `{"Map(3)": [[key, value], ...]}`, cycles as `"[Circular]"`, a getter or
//! `toJSON` that throws as `"[threw TypeError: ...]"`. Text (a string result, or what a value
//! that is no object rendered as) keeps its head and tail. The preview gets smaller step by
//! step ([`LADDER`]) until it fits; every step stops writing once it is over the size.

use super::render::{clip, Text};
use super::{Console, LogLine};

/// How much of a value one preview shows.
#[derive(Clone, Copy)]
struct Detail {
    /// Items of an array (Map, Set, typed array) and keys of an object.
    items: usize,
    /// Characters of a string.
    chars: usize,
    /// Levels of nesting shown; deeper values are named.
    depth: usize,
}

/// Each step shows less, until the preview fits.
const LADDER: [Detail; 7] = [
    Detail {
        items: 100,
        chars: 1000,
        depth: 6,
    },
    Detail {
        items: 50,
        chars: 400,
        depth: 5,
    },
    Detail {
        items: 20,
        chars: 200,
        depth: 4,
    },
    Detail {
        items: 10,
        chars: 100,
        depth: 3,
    },
    Detail {
        items: 5,
        chars: 60,
        depth: 2,
    },
    Detail {
        items: 3,
        chars: 40,
        depth: 1,
    },
    Detail {
        items: 1,
        chars: 20,
        depth: 0,
    },
];

/// Why a preview stopped.
pub(super) enum Stop {
    /// It grew past its size: a smaller step may fit.
    Full,
    /// Execution was terminated (the run's time or heap limit).
    Terminated,
}

/// All of a value JSON cannot render, as far as a cycle or a bounded depth: nothing left out.
const WHOLE: Detail = Detail {
    items: usize::MAX,
    chars: usize::MAX,
    depth: 64,
};

/// A preview of `value` in at most `max` bytes, or `None` when it is no object (its text is
/// previewed with [`text`]) or not even the smallest step fits.
pub(super) fn object<'s>(
    scope: &mut v8::HandleScope<'s>,
    value: v8::Local<'s, v8::Value>,
    max: usize,
) -> Result<Option<String>, Stop> {
    walk(scope, value, max, &LADDER)
}

/// An object JSON cannot render (a cycle, a BigInt, a getter that throws) as JSON that names
/// what JSON cannot say: all of it when it fits in `max` bytes, else a preview.
pub(super) fn whole<'s>(
    scope: &mut v8::HandleScope<'s>,
    value: v8::Local<'s, v8::Value>,
    max: usize,
) -> Result<Option<Text>, Stop> {
    if let Some(text) = walk(scope, value, max, &[WHOLE])? {
        return Ok(Some(text.into()));
    }
    Ok(walk(scope, value, max, &LADDER)?.map(|text| Text { text, cut: true }))
}

fn walk<'s>(
    scope: &mut v8::HandleScope<'s>,
    value: v8::Local<'s, v8::Value>,
    max: usize,
    ladder: &[Detail],
) -> Result<Option<String>, Stop> {
    if !value.is_object() || value.is_function() {
        return Ok(None);
    }
    for &detail in ladder {
        let mut writer = Writer {
            out: String::new(),
            used: 0,
            max,
            detail,
            ancestors: Vec::new(),
        };
        match writer.value(scope, value, 0) {
            Ok(true) => return Ok(Some(writer.out)),
            // Nothing JSON would show (e.g. a toJSON returning undefined).
            Ok(false) => return Ok(None),
            Err(Stop::Full) => continue,
            Err(Stop::Terminated) => return Err(Stop::Terminated),
        }
    }
    Ok(None)
}

/// Bytes `text` takes inside a JSON string, as an answer carries it: quotes, backslashes
/// and control characters are escaped.
pub fn json_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

/// `text` in at most about `max` bytes of an answer ([`json_len`]): its head, a line saying
/// how much was left out, and its tail.
pub(super) fn text(text: &str, max: usize) -> String {
    if json_len(text) <= max {
        return text.to_string();
    }
    // Room for the marker line, whatever its numbers.
    let room = max.saturating_sub(80);
    let fits = |room: usize, chars: &mut dyn Iterator<Item = (usize, char)>| {
        let mut used = 0;
        let mut last = None;
        for (at, c) in chars {
            used += json_len(c.encode_utf8(&mut [0; 4]));
            if used > room {
                break;
            }
            last = Some(at);
        }
        last
    };
    let head_end = fits(room * 2 / 3, &mut text.char_indices()).map_or(0, |at| {
        at + text[at..].chars().next().map_or(0, char::len_utf8)
    });
    let head_used = json_len(&text[..head_end]);
    let tail_start = fits(room - head_used, &mut text.char_indices().rev())
        .unwrap_or(text.len())
        .max(head_end);
    format!(
        "{}\n… [{} of {} characters left out] …\n{}",
        &text[..head_end],
        group(text[head_end..tail_start].chars().count()),
        group(text.chars().count()),
        &text[tail_start..]
    )
}

/// `n` with thousands separated by commas, as people read counts.
pub fn group(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

struct Writer<'s> {
    out: String,
    /// Bytes `out` takes in an answer, inside a JSON string ([`json_len`]).
    used: usize,
    max: usize,
    detail: Detail,
    /// The objects being written, outermost first: a value among them is a cycle.
    ancestors: Vec<v8::Local<'s, v8::Object>>,
}

impl<'s> Writer<'s> {
    fn push(&mut self, text: &str) -> Result<(), Stop> {
        let size = json_len(text);
        if self.used + size > self.max {
            return Err(Stop::Full);
        }
        self.used += size;
        self.out.push_str(text);
        Ok(())
    }

    fn string(&mut self, text: &str) -> Result<(), Stop> {
        let chars = text.chars().count();
        if chars <= self.detail.chars {
            return self.json(text);
        }
        let head: String = text.chars().take(self.detail.chars).collect();
        self.json(&format!("{head}… [{} characters]", group(chars)))
    }

    /// Writes `text` as a JSON string.
    fn json(&mut self, text: &str) -> Result<(), Stop> {
        // A str always serialises.
        let quoted = serde_json::to_string(text).unwrap_or_default();
        self.push(&quoted)
    }

    /// Writes `value` as JSON would (true), or nothing where JSON leaves it out (false):
    /// `undefined`, functions and symbols.
    fn value(
        &mut self,
        scope: &mut v8::HandleScope<'s>,
        value: v8::Local<'s, v8::Value>,
        depth: usize,
    ) -> Result<bool, Stop> {
        if value.is_undefined() || value.is_function() || value.is_symbol() {
            return Ok(false);
        }
        if value.is_null() {
            self.push("null")?;
        } else if value.is_boolean() {
            self.push(if value.is_true() { "true" } else { "false" })?;
        } else if value.is_number() {
            let number = value.number_value(scope).unwrap_or(f64::NAN);
            if number.is_finite() {
                let text = value
                    .to_string(scope)
                    .ok_or(Stop::Terminated)?
                    .to_rust_string_lossy(scope);
                self.push(&text)?;
            } else {
                self.push("null")?;
            }
        } else if value.is_big_int() {
            let text = value
                .to_string(scope)
                .ok_or(Stop::Terminated)?
                .to_rust_string_lossy(scope);
            self.json(&format!("{text}n"))?;
        } else if value.is_string() {
            let text = value.to_rust_string_lossy(scope);
            self.string(&text)?;
        } else if let Ok(object) = v8::Local::<v8::Object>::try_from(value) {
            return self.object(scope, object, depth);
        } else {
            let text = value
                .to_string(scope)
                .ok_or(Stop::Terminated)?
                .to_rust_string_lossy(scope);
            self.json(&text)?;
        }
        Ok(true)
    }

    fn object(
        &mut self,
        scope: &mut v8::HandleScope<'s>,
        object: v8::Local<'s, v8::Object>,
        depth: usize,
    ) -> Result<bool, Stop> {
        if self
            .ancestors
            .iter()
            .any(|a| a.strict_equals(object.into()))
        {
            self.json("[Circular]")?;
            return Ok(true);
        }
        // What JSON.stringify would write instead (a Date's ISO string, say).
        if let Some(replaced) = self.replacement(scope, object)? {
            return match replaced {
                Replaced::Value(value) if value.is_object() => {
                    // One toJSON per value, as JSON.stringify does.
                    let object =
                        v8::Local::<v8::Object>::try_from(value).map_err(|_| Stop::Terminated)?;
                    self.structure(scope, object, depth)
                }
                Replaced::Value(value) => self.value(scope, value, depth),
                Replaced::Threw(why) => self.json(&why).map(|()| true),
            };
        }
        self.structure(scope, object, depth)
    }

    fn structure(
        &mut self,
        scope: &mut v8::HandleScope<'s>,
        object: v8::Local<'s, v8::Object>,
        depth: usize,
    ) -> Result<bool, Stop> {
        if object.is_native_error() {
            let tc = &mut v8::TryCatch::new(scope);
            let text = object.to_string(tc).map(|t| t.to_rust_string_lossy(tc));
            if tc.has_terminated() {
                return Err(Stop::Terminated);
            }
            let text = text.unwrap_or_else(|| "Error".into());
            self.json(&format!("[{text}]"))?;
            return Ok(true);
        }
        if object.is_array_buffer() || object.is_shared_array_buffer() {
            let bytes = v8::Local::<v8::ArrayBuffer>::try_from(object)
                .map(|b| b.byte_length())
                .unwrap_or(0);
            self.json(&format!("[ArrayBuffer: {} bytes]", group(bytes)))?;
            return Ok(true);
        }
        let collection = if let Ok(map) = v8::Local::<v8::Map>::try_from(object) {
            let count = map.size();
            Some((
                format!("Map({})", group(count)),
                map.as_array(scope),
                2,
                count,
            ))
        } else if let Ok(set) = v8::Local::<v8::Set>::try_from(object) {
            let count = set.size();
            Some((
                format!("Set({})", group(count)),
                set.as_array(scope),
                1,
                count,
            ))
        } else if let Ok(typed) = v8::Local::<v8::TypedArray>::try_from(object) {
            let kind = constructor_name(scope, object);
            let count = typed.length();
            Some((
                format!("{kind}({})", group(count)),
                // Each item shown takes two bytes at least: no more can fit.
                typed_items(scope, typed, self.detail.items.min(self.max / 2 + 1))?,
                1,
                count,
            ))
        } else {
            None
        };
        if let Some((label, items, stride, count)) = collection {
            if depth >= self.detail.depth {
                self.json(&format!("[{label}]"))?;
                return Ok(true);
            }
            self.push("{")?;
            self.json(&label)?;
            self.push(":")?;
            self.ancestors.push(object);
            self.items(scope, items, stride, count, depth)?;
            self.ancestors.pop();
            self.push("}")?;
            return Ok(true);
        }
        if let Ok(array) = v8::Local::<v8::Array>::try_from(object) {
            if depth >= self.detail.depth {
                self.json(&format!("[Array({})]", group(array.length() as usize)))?;
                return Ok(true);
            }
            self.ancestors.push(object);
            self.items(scope, array, 1, array.length() as usize, depth)?;
            self.ancestors.pop();
            return Ok(true);
        }
        self.plain(scope, object, depth)?;
        Ok(true)
    }

    /// The first of `count` items (a Map's `[key, value]` pairs when `stride` is 2) of
    /// `items` as a JSON array.
    fn items(
        &mut self,
        scope: &mut v8::HandleScope<'s>,
        items: v8::Local<'s, v8::Array>,
        stride: u32,
        count: usize,
        depth: usize,
    ) -> Result<(), Stop> {
        self.push("[")?;
        let shown = count.min(self.detail.items);
        for i in 0..shown {
            if i > 0 {
                self.push(",")?;
            }
            if stride == 2 {
                self.push("[")?;
                for part in 0..2 {
                    if part > 0 {
                        self.push(",")?;
                    }
                    let item = self.element(scope, items, i as u32 * 2 + part)?;
                    if !self.value(scope, item, depth + 1)? {
                        self.push("null")?;
                    }
                }
                self.push("]")?;
            } else {
                let item = self.element(scope, items, i as u32)?;
                if !self.value(scope, item, depth + 1)? {
                    self.push("null")?;
                }
            }
        }
        if count > shown {
            if shown > 0 {
                self.push(",")?;
            }
            self.json(&format!(
                "… {} more items ({} in all)",
                group(count - shown),
                group(count)
            ))?;
        }
        self.push("]")
    }

    /// An array element, read as JavaScript would (holes and getters included).
    fn element(
        &mut self,
        scope: &mut v8::HandleScope<'s>,
        items: v8::Local<'s, v8::Array>,
        index: u32,
    ) -> Result<v8::Local<'s, v8::Value>, Stop> {
        let tc = &mut v8::TryCatch::new(scope);
        match items.get_index(tc, index) {
            Some(value) => Ok(value),
            None if tc.has_terminated() => Err(Stop::Terminated),
            None => {
                let why = threw(tc);
                let text = v8::String::new(tc, &why).ok_or(Stop::Terminated)?;
                Ok(text.into())
            }
        }
    }

    /// An object's own enumerable string keys and their values, as JSON.stringify sees them.
    fn plain(
        &mut self,
        scope: &mut v8::HandleScope<'s>,
        object: v8::Local<'s, v8::Object>,
        depth: usize,
    ) -> Result<(), Stop> {
        let keys = {
            let tc = &mut v8::TryCatch::new(scope);
            let args = v8::GetPropertyNamesArgs {
                mode: v8::KeyCollectionMode::OwnOnly,
                property_filter: v8::PropertyFilter::ONLY_ENUMERABLE
                    | v8::PropertyFilter::SKIP_SYMBOLS,
                index_filter: v8::IndexFilter::IncludeIndices,
                key_conversion: v8::KeyConversionMode::ConvertToString,
            };
            match object.get_own_property_names(tc, args) {
                Some(keys) => Some(keys),
                None if tc.has_terminated() => return Err(Stop::Terminated),
                // A Proxy whose ownKeys trap threw.
                None => None,
            }
        };
        let Some(keys) = keys else {
            return self.json("[keys threw]");
        };
        let count = keys.length() as usize;
        if depth >= self.detail.depth && count > 0 {
            return self.json(&format!("[Object: {} keys]", group(count)));
        }
        self.push("{")?;
        self.ancestors.push(object);
        let mut written = 0;
        let mut seen = 0;
        for i in 0..count {
            if written == self.detail.items {
                break;
            }
            seen = i + 1;
            let Some(key) = keys.get_index(scope, i as u32) else {
                return Err(Stop::Terminated);
            };
            let value = {
                let tc = &mut v8::TryCatch::new(scope);
                match object.get(tc, key) {
                    Some(value) => value,
                    None if tc.has_terminated() => return Err(Stop::Terminated),
                    None => {
                        let why = threw(tc);
                        let text = v8::String::new(tc, &why).ok_or(Stop::Terminated)?;
                        text.into()
                    }
                }
            };
            if value.is_undefined() || value.is_function() || value.is_symbol() {
                continue;
            }
            if written > 0 {
                self.push(",")?;
            }
            let key = key.to_rust_string_lossy(scope);
            self.string(&key)?;
            self.push(":")?;
            self.value(scope, value, depth + 1)?;
            written += 1;
        }
        self.ancestors.pop();
        if count > seen {
            if written > 0 {
                self.push(",")?;
            }
            self.json("…")?;
            self.push(":")?;
            self.json(&format!("{} more keys", group(count - seen)))?;
        }
        self.push("}")
    }

    /// What `object.toJSON()` returns, when it has one.
    fn replacement(
        &mut self,
        scope: &mut v8::HandleScope<'s>,
        object: v8::Local<'s, v8::Object>,
    ) -> Result<Option<Replaced<'s>>, Stop> {
        let tc = &mut v8::TryCatch::new(scope);
        let key = v8::String::new(tc, "toJSON").ok_or(Stop::Terminated)?;
        let method = match object.get(tc, key.into()) {
            Some(method) => method,
            None if tc.has_terminated() => return Err(Stop::Terminated),
            None => return Ok(Some(Replaced::Threw(threw(tc)))),
        };
        let Ok(method) = v8::Local::<v8::Function>::try_from(method) else {
            return Ok(None);
        };
        let key = v8::String::new(tc, "").ok_or(Stop::Terminated)?;
        match method.call(tc, object.into(), &[key.into()]) {
            Some(value) => Ok(Some(Replaced::Value(value))),
            None if tc.has_terminated() => Err(Stop::Terminated),
            None => Ok(Some(Replaced::Threw(threw(tc)))),
        }
    }
}

/// What a `toJSON` gave.
enum Replaced<'s> {
    Value(v8::Local<'s, v8::Value>),
    /// It threw; the text says what.
    Threw(String),
}

/// `"[threw TypeError: message]"` for the exception `tc` caught.
fn threw(tc: &mut v8::TryCatch<v8::HandleScope>) -> String {
    let text = match tc.exception() {
        Some(exception) if exception.is_native_error() => {
            let described = super::render::describe_thrown(tc, exception);
            format!("{}: {}", described.name, described.message)
        }
        Some(exception) => exception
            .to_string(tc)
            .map_or_else(|| "a value".into(), |text| text.to_rust_string_lossy(tc)),
        None => "an exception".into(),
    };
    tc.reset();
    let mut text = format!("[threw {text}]");
    clip(&mut text, 200);
    text
}

/// The name of `object`'s constructor as V8 knows it (e.g. `Uint8Array`).
fn constructor_name(scope: &mut v8::HandleScope, object: v8::Local<v8::Object>) -> String {
    object.get_constructor_name().to_rust_string_lossy(scope)
}

/// A typed array's first `most` items as a plain array.
fn typed_items<'s>(
    scope: &mut v8::HandleScope<'s>,
    typed: v8::Local<'s, v8::TypedArray>,
    most: usize,
) -> Result<v8::Local<'s, v8::Array>, Stop> {
    let shown = typed.length().min(most);
    let mut items = Vec::with_capacity(shown);
    for i in 0..shown {
        items.push(typed.get_index(scope, i as u32).ok_or(Stop::Terminated)?);
    }
    let array = v8::Array::new_with_elements(scope, &items);
    Ok(array)
}

/// How an answer of `budget` bytes is shared between a result of `result` bytes and a
/// console of `console` bytes: (the result's share, the console's share). The console gets
/// what the result leaves, and at least a quarter of the budget when it needs it.
pub fn split(budget: usize, result: usize, console: usize) -> (usize, usize) {
    let console_share = console.min((budget / 4).max(budget.saturating_sub(result)));
    (budget - console_share, console_share)
}

/// A console cut to its share of an answer: its first lines and its last, the middle counted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConsolePreview {
    /// The first lines.
    pub head: Vec<LogLine>,
    /// How many lines were left out after them.
    pub left_out: usize,
    /// The last lines.
    pub tail: Vec<LogLine>,
}

/// Bytes a console line takes in an answer: `{"level":"log","text":"…"},` in its JSON.
pub fn line_size(line: &LogLine) -> usize {
    json_len(&line.level) + json_len(&line.text) + 23
}

/// `console` in about `share` bytes: half for its first lines, the rest for its last; a line
/// longer than its half is cut like a long text ([`text`]). Lines the engine dropped at the
/// console limit count as left out.
pub fn console(console: &Console, share: usize) -> ConsolePreview {
    let lines = &console.lines;
    let (after, dropped) = console
        .dropped
        .map_or((lines.len(), 0), |d| (d.after.min(lines.len()), d.lines));
    if lines.iter().map(line_size).sum::<usize>() <= share {
        return ConsolePreview {
            head: lines[..after].to_vec(),
            left_out: dropped,
            tail: lines[after..].to_vec(),
        };
    }
    let take = |room: &mut usize, line: &LogLine, first: bool| -> Option<LogLine> {
        let size = line_size(line);
        if size <= *room {
            *room -= size;
            return Some(line.clone());
        }
        // A single long line is cut rather than dropped whole.
        if first && *room > line.level.len() + 123 {
            let cut = text(&line.text, *room - line.level.len() - 23);
            *room = 0;
            return Some(LogLine {
                level: line.level.clone(),
                text: cut,
            });
        }
        None
    };
    let mut room = share / 2;
    let mut head = Vec::new();
    for line in &lines[..after] {
        match take(&mut room, line, head.is_empty()) {
            Some(line) => head.push(line),
            None => break,
        }
    }
    let mut room = share.saturating_sub(share / 2) + room;
    let mut tail = Vec::new();
    for line in lines[head.len()..].iter().rev() {
        match take(&mut room, line, tail.is_empty()) {
            Some(line) => tail.push(line),
            None => break,
        }
    }
    tail.reverse();
    ConsolePreview {
        left_out: lines.len() - head.len() - tail.len() + dropped,
        head,
        tail,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use serde_json::Value;

    use super::super::{run_stateful, run_stateless, Completion, Limits, Outside};
    use super::*;

    fn limits(answer_bytes: usize) -> Limits {
        Limits {
            timeout: Duration::from_secs(20),
            answer_bytes,
            ..Limits::default()
        }
    }

    fn run(code: &str, answer_bytes: usize) -> Completion {
        run_stateless(code, limits(answer_bytes)).result.unwrap()
    }

    fn step(code: &str, heap: Option<Bytes>) -> (Completion, Bytes) {
        run_stateful(code, heap, limits(60_000)).result.unwrap()
    }

    /// The preview of `code`'s result in `answer_bytes`, parsed: it must be JSON.
    fn previewed(code: &str, answer_bytes: usize) -> Value {
        let completion = run(code, answer_bytes);
        let preview = completion.preview.expect("a preview");
        assert!(
            preview.len() <= answer_bytes,
            "{} > {answer_bytes}",
            preview.len()
        );
        serde_json::from_str(&preview).unwrap_or_else(|e| panic!("{e}: {preview}"))
    }

    #[test]
    fn a_result_that_fits_has_no_preview() {
        let completion = run("[1, 2, 3]", 100);
        assert_eq!(
            (completion.output.as_str(), completion.preview),
            ("[1,2,3]", None)
        );
        assert_eq!(completion.size, 7);
    }

    #[test]
    fn a_long_array_shows_its_first_items_and_its_length() {
        let code = "Array.from({ length: 200000 }, (_, i) => ({ id: i, name: 'row ' + i }))";
        let completion = run(code, 60_000);
        assert!(completion.size > 5_000_000, "{}", completion.size);
        let preview: Value = serde_json::from_str(completion.preview.as_deref().unwrap()).unwrap();
        let items = preview.as_array().unwrap();
        assert_eq!(items[0], serde_json::json!({ "id": 0, "name": "row 0" }));
        assert_eq!(items[99]["id"], 99);
        assert_eq!(items[100], "… 199,900 more items (200,000 in all)");
        // A small budget shows fewer, still as JSON.
        let small = previewed(code, 300);
        let small = small.as_array().unwrap();
        assert!(small.len() <= 11, "{small:?}");
        assert!(small
            .last()
            .unwrap()
            .as_str()
            .unwrap()
            .ends_with("(200,000 in all)"));
    }

    #[test]
    fn objects_show_their_first_keys_and_nesting_is_named_below_a_depth() {
        let wide = previewed(
            "Object.fromEntries(Array.from({ length: 5000 }, (_, i) => ['key' + i, i]))",
            2_000,
        );
        let wide = wide.as_object().unwrap();
        assert_eq!(wide["key0"], 0);
        assert!(
            wide["…"].as_str().unwrap().ends_with("more keys"),
            "{wide:?}"
        );
        let deep = previewed(
            "let d = { leaf: 'x'.repeat(5000) }; for (let i = 0; i < 50; i++) d = { d }; d",
            1_000,
        );
        let text = deep.to_string();
        assert!(text.contains("[Object: 1 keys]"), "{text}");
        assert!(text.len() < 1_000);
    }

    #[test]
    fn long_strings_are_cut_with_their_length() {
        let inner = previewed("[{ text: 'é'.repeat(100000) }]", 5_000);
        let text = inner[0]["text"].as_str().unwrap();
        assert!(
            text.ends_with("… [100,000 characters]"),
            "{}",
            &text[text.len() - 40..]
        );
        // A string result keeps its head and its tail.
        let completion = run("'a'.repeat(50000) + 'z'.repeat(50000)", 1_000);
        let preview = completion.preview.unwrap();
        assert!(preview.len() <= 1_000);
        assert!(
            preview.starts_with("aaa") && preview.ends_with("zzz"),
            "{preview}"
        );
        assert!(preview.contains("characters left out] …"), "{preview}");
        assert!(preview.contains("of 100,000 characters"), "{preview}");
    }

    #[test]
    fn what_json_cannot_say_is_named() {
        let value = previewed(
            "const o = { name: 'o', map: new Map([['a', 1], ['b', { deep: true }]]), \
               set: new Set([1, 2, 3]), bytes: new Uint8Array(1000).fill(7), \
               big: 10n, when: new Date(0), error: new RangeError('nope'), \
               get broken() { throw new TypeError('getter says no') }, \
               pad: 'x'.repeat(20000) }; \
             o.self = o; o",
            4_000,
        );
        assert_eq!(
            value["map"],
            serde_json::json!({ "Map(2)": [["a", 1], ["b", { "deep": true }]] })
        );
        assert_eq!(value["set"], serde_json::json!({ "Set(3)": [1, 2, 3] }));
        let bytes = &value["bytes"]["Uint8Array(1,000)"];
        assert_eq!(bytes[0], 7);
        assert!(bytes
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .as_str()
            .unwrap()
            .contains("1,000 in all"));
        assert_eq!(value["big"], "10n");
        // Rendered whole (it fits), a typed array is all there.
        let whole = run(
            "const w = { bytes: new Uint8Array(300).fill(1) }; w.self = w; w",
            60_000,
        );
        let whole: Value = serde_json::from_str(&whole.output).unwrap();
        assert_eq!(
            whole["bytes"]["Uint8Array(300)"].as_array().unwrap().len(),
            300
        );
        assert_eq!(value["when"], "1970-01-01T00:00:00.000Z");
        assert_eq!(value["error"], "[RangeError: nope]");
        assert_eq!(value["broken"], "[threw TypeError: getter says no]");
        assert_eq!(value["self"], "[Circular]");
    }

    #[test]
    fn a_preview_runs_under_the_time_limit() {
        let limits = Limits {
            timeout: Duration::from_millis(300),
            answer_bytes: 1_000,
            ..Limits::default()
        };
        let code = "const slow = {}; for (let i = 0; i < 100; i++) \
            Object.defineProperty(slow, 'k' + i, { enumerable: true, get() { for (;;); } }); \
            [slow, 'x'.repeat(5000)]";
        // JSON.stringify, first, runs into the getter: the call times out either way.
        let run = run_stateless(code, limits);
        assert!(
            matches!(run.result, Err(super::super::RunError::Timeout(_))),
            "{:?}",
            run.result
        );
    }

    #[test]
    fn the_last_result_is_kept_as_underscore_unless_the_code_owns_it() {
        let (out, heap) = step("Array.from({ length: 1000 }, (_, i) => i * 2)", None);
        assert!(out.preview.is_none());
        let (out, heap) = step("_.slice(10, 13)", Some(heap));
        assert_eq!(out.output, "[20,22,24]");
        let (out, heap) = step("_.length", Some(heap));
        assert_eq!(out.output, "3");
        // Code that sets `_` keeps it.
        let (_, heap) = step("_ = 'mine'; 1", Some(heap));
        let (out, heap) = step("_", Some(heap));
        assert_eq!(out.output, "mine");
        let (_, fresh) = step("var _ = { lodash: true }; 2", None);
        let (out, _) = step("_.lodash", Some(fresh));
        assert_eq!(out.output, "true");
        // And hands it back by deleting it.
        let (_, heap) = step("delete globalThis._; 7", Some(heap));
        let (out, _) = step("_ * 6", Some(heap));
        assert_eq!(out.output, "42");
        // Nothing is kept without a heap.
        assert_eq!(run("typeof _", 100).output, "undefined");
    }

    #[test]
    fn the_last_error_is_underscore_error_and_a_replay_finds_it_too() {
        use super::super::{answer_first, read_code, HeapIsolate, JsException};
        let (_, heap) = step("var n = 0", None);
        let mut error = JsException::new("TypeError", "x is not a function");
        error.stack = Vec::new();
        let code =
            read_code("n++; [_error.name, _error.message, _error instanceof Error]").unwrap();
        let limits = limits(60_000);
        let warm = HeapIsolate::new(Some(heap.clone()), &limits).unwrap();
        let (run, _) =
            answer_first(warm.run_after(&code, &limits, Outside::none(), Some(error.clone())));
        let completion = run.result.unwrap();
        assert_eq!(
            completion.output,
            r#"["TypeError","x is not a function",true]"#
        );
        assert_eq!(completion.tape.last_error, Some(error));
        // The tape brings it back.
        let warm = HeapIsolate::new(Some(heap), &limits).unwrap();
        let (replayed, _) = answer_first(warm.replay(&code, &limits, completion.tape.clone()));
        assert_eq!(replayed.result.unwrap().output, completion.output);
        // Stateless runs have none.
        assert_eq!(
            run_stateless("typeof _error", limits)
                .result
                .unwrap()
                .output,
            "undefined"
        );
    }

    #[test]
    fn a_result_the_heap_cannot_keep_is_not_kept_as_underscore() {
        let (out, heap) = step("new Intl.Segmenter('en').segment('a b')", None);
        assert_eq!(out.output, "{}");
        let (out, _) = step("typeof _", Some(heap));
        assert_eq!(out.output, "undefined");
    }

    #[test]
    fn a_console_keeps_its_first_and_last_lines() {
        let lines: Vec<LogLine> = (0..10_000)
            .map(|i| LogLine {
                level: "log".into(),
                text: format!("line {i}"),
            })
            .collect();
        let cut = console(
            &Console {
                lines,
                dropped: None,
            },
            1_000,
        );
        assert_eq!(cut.head[0].text, "line 0");
        assert_eq!(cut.tail.last().unwrap().text, "line 9999");
        assert_eq!(cut.head.len() + cut.left_out + cut.tail.len(), 10_000);
        let size: usize = cut.head.iter().chain(&cut.tail).map(line_size).sum();
        assert!(size <= 1_000, "{size}");
        // One huge line is cut, not dropped.
        let huge = [LogLine {
            level: "log".into(),
            text: "y".repeat(100_000),
        }];
        let cut = console(
            &Console {
                lines: huge.to_vec(),
                dropped: None,
            },
            1_000,
        );
        assert_eq!(cut.head.len(), 1);
        assert!(cut.head[0].text.contains("characters left out"));
        assert!(line_size(&cut.head[0]) <= 1_000);
    }

    #[test]
    fn an_answer_is_shared_between_result_and_console() {
        assert_eq!(split(1000, 100, 100), (900, 100));
        // A big result leaves the console a quarter.
        assert_eq!(split(1000, 5000, 800), (750, 250));
        // A big console takes what the result leaves.
        assert_eq!(split(1000, 100, 5000), (100, 900));
        assert_eq!(split(usize::MAX, 10, 10).1, 10);
    }
}
