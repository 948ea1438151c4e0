//! The front end's corpus (`corpus.txt`, format in its header), run through the real engine.

use std::time::Duration;

use bytes::Bytes;
use mcp_v8::engine::{self, Limits, RunError};

struct Step {
    code: String,
    expected: Expected,
}

enum Expected {
    Output(String),
    Exception {
        text: String,
        at: Option<(usize, usize)>,
    },
    Failure(String),
}

struct Case {
    title: String,
    steps: Vec<Step>,
}

/// `LONG_STRING_N` stands for N characters of `a`, `LONG_ESCAPED_N` for N characters spelled
/// with escapes: cases about long literals stay readable.
fn expand(code: &str) -> String {
    let mut out = code.to_owned();
    for (marker, unit, unit_len) in [("LONG_STRING_", "a", 1), ("LONG_ESCAPED_", "a\\\"b\\n", 4)] {
        while let Some(at) = out.find(marker) {
            let digits: String = out[at + marker.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            let n: usize = digits.parse().expect("a length after the marker");
            let text = unit.repeat(n / unit_len);
            out.replace_range(at..at + marker.len() + digits.len(), &text);
        }
    }
    out
}

fn parse_expected(line: &str) -> Expected {
    if let Some(text) = line.strip_prefix("!! ") {
        return Expected::Failure(text.to_owned());
    }
    let Some(text) = line.strip_prefix("! ").or(line.strip_prefix("!")) else {
        return Expected::Output(line.to_owned());
    };
    match text
        .rsplit_once(" @ ")
        .or(text.strip_prefix("@ ").map(|p| ("", p)))
    {
        Some((text, place)) => {
            let (line, column) = place.split_once(':').expect("L:C after @");
            Expected::Exception {
                text: text.to_owned(),
                at: Some((
                    line.parse().expect("a line"),
                    column.parse().expect("a column"),
                )),
            }
        }
        None => Expected::Exception {
            text: text.to_owned(),
            at: None,
        },
    }
}

fn corpus() -> Vec<Case> {
    let text = include_str!("corpus.txt");
    let mut cases: Vec<Case> = Vec::new();
    let mut code: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("=== ") {
            assert!(
                code.iter().all(|l| l.trim().is_empty()),
                "code without a result before {title}"
            );
            code.clear();
            cases.push(Case {
                title: title.to_owned(),
                steps: Vec::new(),
            });
        } else if let Some(expected) = line.strip_prefix("-->") {
            let case = cases.last_mut().expect("a case");
            case.steps.push(Step {
                code: expand(&code.join("\n")),
                expected: parse_expected(expected.trim_start()),
            });
            code.clear();
        } else if !cases.is_empty() {
            code.push(line);
        }
    }
    cases
}

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(10),
        ..Limits::default()
    }
}

/// What went wrong with `result`, if it is not what `expected` says.
fn check(result: &Result<String, RunError>, expected: &Expected) -> Option<String> {
    match (expected, result) {
        (Expected::Output(want), Ok(got)) if want == got => None,
        (Expected::Exception { text, at }, Err(RunError::Exception(e))) => {
            // As the error reads after "Uncaught " (a thrown non-Error has no name).
            let got = match e.name.as_str() {
                "" => e.message.clone(),
                name => format!("{name}: {}", e.message),
            };
            let place = e.line.zip(e.column);
            (!got.starts_with(text.as_str()) || at.is_some_and(|at| Some(at) != place))
                .then(|| format!("threw {got} at {place:?}"))
        }
        (Expected::Failure(text), Err(e)) if e.to_string().starts_with(text.as_str()) => None,
        (_, Ok(got)) => Some(format!("gave {got:?}")),
        (_, Err(e)) => Some(format!("failed: {e}")),
    }
}

#[test]
fn the_corpus_gives_what_a_repl_user_expects() {
    let cases = corpus();
    assert!(cases.len() >= 150, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let mut heap: Option<Bytes> = None;
        for (i, step) in case.steps.iter().enumerate() {
            let run = engine::run_stateful(&step.code, heap.clone(), limits());
            let result = run.result.map(|(completion, next)| {
                heap = Some(next);
                completion.output
            });
            if let Some(problem) = check(&result, &step.expected) {
                failures.push(format!("{} (call {}): {problem}", case.title, i + 1));
            }
        }
        if let [step] = case.steps.as_slice() {
            let result = engine::run_stateless(&step.code, limits())
                .result
                .map(|c| c.output);
            if let Some(problem) = check(&result, &step.expected) {
                failures.push(format!("{} (stateless): {problem}", case.title));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
