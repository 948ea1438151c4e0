//! The front end: reads the code of a call once, before V8 sees it, and says what V8 is to
//! compile and how to find the user's positions again.
//!
//! * JavaScript is compiled as written. REPL semantics (the value of the last statement,
//!   top-level `await`, declaring a `let`/`const` again in a later call) come from V8's own
//!   REPL mode, which the engine runs it in — no rewriting, so V8's positions are the user's.
//!   Code that uses `await` as a name, which REPL mode rejects, runs as a classic script
//!   ([`Goal`]).
//! * Code that uses a private name (`#x`) is checked for the early errors REPL mode lets
//!   through (a private name outside a class that declares it), with oxc's semantic checks.
//! * TypeScript (code that oxc parses as TypeScript but not as JavaScript) has its types
//!   stripped ([`typescript`]); positions go back through a source map.
//! * String and template literals too long to keep in a snapshot are split ([`literals`]).
//! * `import`/`export` are refused with a clear error: `run_js` runs scripts, not modules.
//!
//! Code that oxc cannot parse either way goes to V8 as written, and V8 reports the error,
//! unless it parses further as TypeScript, which then names the error.

mod goal;
mod literals;
mod positions;
mod typescript;

use oxc_allocator::Allocator;
use oxc_ast::ast::{Program, Statement};
use oxc_parser::Parser;
use oxc_span::SourceType;

pub use goal::Goal;
pub use positions::Position;
use positions::{offset_of, position_of, Edits};
use typescript::Stripped;

/// Why `import`, `export` and `require` fail, for every error that says so.
pub const NO_MODULES: &str = "run_js runs scripts, not modules, and has no module loader (no \
    import, export or require); define what you need in the code, or keep it in the heap from an \
    earlier call";

/// The name (V8's `sourceURL`) of every call's script. One name for all: V8 keeps every
/// distinct script name in the heap for good.
const NAME: &str = "run_js";

/// Code that cannot run, and where the problem is in the code as submitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CodeError {
    /// What is wrong.
    pub message: String,
    /// Where, in the code as submitted.
    pub position: Position,
}

/// A call's code, ready for V8.
#[derive(Debug)]
pub struct Prepared {
    /// What V8 compiles: the body, then a line naming the script.
    code: String,
    /// Length of the body, before the naming line.
    body: usize,
    source: Source,
    goal: Goal,
}

/// How the body relates to the code as submitted.
#[derive(Debug)]
enum Source {
    /// The body is the code as submitted.
    AsWritten,
    /// The body is the JavaScript as submitted with long literals split.
    Split { user: String, edits: Edits },
    /// The body is JavaScript made from TypeScript (with long literals split).
    TypeScript {
        user: String,
        stripped: Box<Stripped>,
        edits: Edits,
    },
}

/// Reads `code` (see the module docs).
pub fn prepare(code: &str) -> Result<Prepared, CodeError> {
    let js_error = match with_arena(|arena| as_javascript(arena, code)) {
        Reading::Read(prepared) => return prepared,
        Reading::Unparsed(error) => error,
    };
    let ts_error = match with_arena(|arena| as_typescript(arena, code)) {
        Reading::Read(prepared) => return prepared,
        Reading::Unparsed(error) => error,
    };
    if ts_error.1 > js_error.1 {
        return Err(error_at(code, ts_error.0, ts_error.1));
    }
    Ok(Prepared::new(code.to_owned(), Source::AsWritten))
}

/// How reading the code as one language went.
enum Reading {
    /// It parsed: the code to run, or why it cannot run.
    Read(Result<Prepared, CodeError>),
    /// It did not parse.
    Unparsed(ParseError),
}

fn as_javascript(arena: &Allocator, code: &str) -> Reading {
    let program = match parse(arena, code, SourceType::unambiguous()) {
        Ok(program) => program,
        Err(error) => return Reading::Unparsed(error),
    };
    if let Some((message, at)) = early_error(&program) {
        return Reading::Read(Err(error_at(code, message, at)));
    }
    Reading::Read(refuse_modules(&program, code).map(|()| {
        let (body, edits) = Edits::apply(code, literals::split(&program));
        let source = if edits.is_empty() {
            Source::AsWritten
        } else {
            Source::Split {
                user: code.to_owned(),
                edits,
            }
        };
        Prepared::new(body, source).with_goal(goal::of(&program))
    }))
}

/// The first early error REPL mode does not raise: a private name used outside a class that
/// declares it. oxc's semantic checks find it (and the other early errors, which V8 raises
/// too); only code that spells a private name pays for them.
fn early_error(program: &Program) -> Option<ParseError> {
    if !program.source_text.contains('#') {
        return None;
    }
    let checked = oxc_semantic::SemanticBuilder::new()
        .with_check_syntax_error(true)
        .build(program);
    let error = checked.diagnostics.into_iter().next()?;
    let at = error
        .labels
        .first()
        .map_or(0, |label| label.offset() as usize);
    Some((error.message.to_string(), at))
}

fn as_typescript(arena: &Allocator, code: &str) -> Reading {
    let program = match parse(arena, code, SourceType::ts().with_unambiguous(true)) {
        Ok(program) => program,
        Err(error) => return Reading::Unparsed(error),
    };
    let stripped = refuse_modules(&program, code).and_then(|()| {
        typescript::strip(arena, program).map_err(|(message, at)| error_at(code, message, at))
    });
    Reading::Read(stripped.map(|stripped| {
        // Parsing the JavaScript again is only worth it when a literal can be long.
        let js_arena = Allocator::default();
        let replacements = if stripped.code.len() > literals::LONG_LITERAL {
            parse(&js_arena, &stripped.code, SourceType::unambiguous())
                .map(|program| literals::split(&program))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let (body, edits) = Edits::apply(&stripped.code, replacements);
        Prepared::new(
            body,
            Source::TypeScript {
                user: code.to_owned(),
                stripped: Box::new(stripped),
                edits,
            },
        )
    }))
}

/// Largest arena kept for the next call, in bytes; a bigger one (after a huge call) is freed.
const ARENA_KEPT: usize = 64 << 20;

/// Runs `f` with this thread's parse arena, reset afterwards: a call's syntax tree is tens of
/// bytes per byte of code, and fresh memory for it costs more than the parse itself.
fn with_arena<R>(f: impl FnOnce(&Allocator) -> R) -> R {
    thread_local! {
        static ARENA: std::cell::RefCell<Allocator> = std::cell::RefCell::new(Allocator::default());
    }
    ARENA.with(|cell| match cell.try_borrow_mut() {
        Ok(mut arena) => {
            let result = f(&arena);
            if arena.capacity() > ARENA_KEPT {
                *arena = Allocator::default();
            } else {
                arena.reset();
            }
            result
        }
        Err(_) => f(&Allocator::default()),
    })
}

/// The first error of a parse: its message and byte offset.
type ParseError = (String, usize);

fn parse<'a>(
    allocator: &'a Allocator,
    code: &'a str,
    source_type: SourceType,
) -> Result<Program<'a>, ParseError> {
    let parsed = Parser::new(allocator, code, source_type).parse();
    match parsed.diagnostics.into_iter().next() {
        None if !parsed.panicked => Ok(parsed.program),
        None => Err(("the code could not be parsed".into(), 0)),
        Some(error) => {
            let at = error
                .labels
                .first()
                .map_or(0, |label| label.offset() as usize);
            Err((error.message.to_string(), at))
        }
    }
}

fn error_at(code: &str, message: String, at: usize) -> CodeError {
    CodeError {
        message,
        position: position_of(code, at),
    }
}

/// `run_js` has no module loader: a module declaration is an error at its position.
fn refuse_modules(program: &Program, code: &str) -> Result<(), CodeError> {
    for statement in &program.body {
        let span = match statement {
            Statement::TSImportEqualsDeclaration(d) => d.span,
            s => match s.as_module_declaration() {
                Some(d) => oxc_span::GetSpan::span(d),
                None => continue,
            },
        };
        let keyword = if code[span.start as usize..].starts_with("export") {
            "export"
        } else {
            "import"
        };
        return Err(error_at(
            code,
            format!("`{keyword}` is not available: {NO_MODULES}"),
            span.start as usize,
        ));
    }
    Ok(())
}

impl Prepared {
    fn new(mut code: String, source: Source) -> Self {
        let body = code.len();
        // A comment on a line of its own changes neither positions nor completion values.
        code.push_str("\n//# sourceURL=");
        code.push_str(NAME);
        Self {
            code,
            body,
            source,
            goal: Goal::Repl,
        }
    }

    fn with_goal(self, goal: Goal) -> Self {
        Self { goal, ..self }
    }

    /// How V8 is to compile [`Self::code`].
    pub fn goal(&self) -> Goal {
        self.goal
    }

    /// The code V8 compiles.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// Whether the script named `name` (a stack frame's script name or `sourceURL`) is a
    /// call's code, this call's or an earlier one's, rather than the runtime's own.
    pub fn is_user_script(name: &str) -> bool {
        name.starts_with(NAME)
    }

    /// The position in the code as submitted of `compiled`, a position in [`Self::code`].
    /// Positions past the submitted code (V8 reports an unexpected end of input after the
    /// naming line) are its end.
    pub fn user_position(&self, compiled: Position) -> Position {
        let body = &self.code[..self.body];
        let at = offset_of(body, compiled);
        match &self.source {
            Source::AsWritten => position_of(body, at),
            Source::Split { user, edits } => position_of(user, edits.to_original(at)),
            Source::TypeScript {
                user,
                stripped,
                edits,
            } => {
                let js = position_of(&stripped.code, edits.to_original(at));
                let end = position_of(user, user.len());
                stripped.to_typescript(user, js).map_or(end, |p| p.min(end))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::literals::LONG_LITERAL;
    use super::*;

    fn at(line: usize, column: usize) -> Position {
        Position { line, column }
    }

    #[test]
    fn javascript_is_compiled_as_written() {
        let prepared = prepare("const x = await f()\nif (x) 'a'\nelse 'b'").unwrap();
        assert!(matches!(prepared.source, Source::AsWritten));
        assert!(prepared
            .code()
            .starts_with("const x = await f()\nif (x) 'a'\nelse 'b'\n//# sourceURL=run_js"));
        assert_eq!(prepared.user_position(at(2, 5)), at(2, 5));
        // The naming line is not the user's.
        assert_eq!(prepared.user_position(at(4, 3)), at(3, 9));
        assert!(Prepared::is_user_script("run_js"));
        assert!(!Prepared::is_user_script(""));
    }

    #[test]
    fn typescript_is_stripped_and_positions_map_back() {
        let code = "interface P { x: number }\nconst p: P = { x: 1 } as P;\nfunction f<T>(v: T): T {\n  return v!;\n}\nenum E { A, B }\nthrow new Error(String(f(p.x) + E.B))";
        let prepared = prepare(code).unwrap();
        assert!(matches!(prepared.source, Source::TypeScript { .. }));
        let body = &prepared.code()[..prepared.body];
        assert!(!body.contains("interface"), "{body}");
        assert!(!body.contains(": P"), "{body}");
        let throw = position_of(body, body.find("throw").unwrap());
        assert_eq!(prepared.user_position(throw), at(7, 1));
        let ret = position_of(body, body.find("return").unwrap());
        assert_eq!(prepared.user_position(ret), at(4, 3));
    }

    #[test]
    fn long_literals_are_split_and_positions_map_back() {
        let long = "é".repeat(LONG_LITERAL);
        let code = format!("var o = {{ '{long}': `{long}${{1}}` }};\nnull.x");
        let prepared = prepare(&code).unwrap();
        let body = &prepared.code()[..prepared.body];
        assert!(body.starts_with("var o = { [([\"éé"), "{}", &body[..40]);
        assert!(body.contains("`${([\"éé"));
        let throw = position_of(body, body.find("null.x").unwrap());
        assert_eq!(prepared.user_position(throw), at(2, 1));
        let key = position_of(body, body.find("[([").unwrap() + 3);
        assert_eq!(prepared.user_position(key), at(1, 11));
    }

    #[test]
    fn modules_are_refused_where_they_stand() {
        for (code, keyword, position) in [
            ("const a = 1\nimport fs from 'fs'", "import", at(2, 1)),
            ("export const b = 2", "export", at(1, 1)),
            ("let n: number = 1\nexport { n }", "export", at(2, 1)),
            ("import x = require('x')", "import", at(1, 1)),
        ] {
            let error = prepare(code).unwrap_err();
            assert!(
                error
                    .message
                    .starts_with(&format!("`{keyword}` is not available")),
                "{code}: {error}"
            );
            assert_eq!(error.position, position, "{code}");
        }
    }

    #[test]
    fn await_as_a_name_outside_functions_may_run_as_a_script() {
        for code in [
            "var await = 1",
            "await: for (;;) break await;",
            "function await() {}",
            "const f = (await) => await",
            "await (async () => 1)()",
        ] {
            assert_eq!(prepare(code).unwrap().goal(), Goal::ReplOrScript, "{code}");
        }
        for code in [
            "const x = await f()",
            "function f(await) { return await }",
            "async function g() { await h() }",
            "'await'",
        ] {
            assert_eq!(prepare(code).unwrap().goal(), Goal::Repl, "{code}");
        }
    }

    #[test]
    fn private_names_outside_their_class_are_syntax_errors() {
        for (code, at) in [
            ("this.#x", at(1, 6)),
            ("class C { #x; m() { return this.#y } }", at(1, 33)),
            (
                "class C { #x; }
#x in {}",
                at(2, 1),
            ),
        ] {
            let error = prepare(code).unwrap_err();
            assert!(error.message.contains("#"), "{code}: {error}");
            assert_eq!(error.position, at, "{code}");
        }
        assert!(prepare("class C { #x = 1; static has(o) { return #x in o } }").is_ok());
        assert!(prepare("'#not a name'").is_ok());
    }

    #[test]
    fn syntax_errors_are_left_to_v8_unless_typescript_reads_further() {
        let prepared = prepare("let q = 1; q = ").unwrap();
        assert_eq!(&prepared.code()[..prepared.body], "let q = 1; q = ");
        let error = prepare("let n: number = 1;\nlet m: string = ;").unwrap_err();
        assert_eq!(error.position.line, 2, "{error:?}");
    }
}
