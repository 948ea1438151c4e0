//! Top-level `await`: code that uses it cannot run as a classic script, so it is rewritten to
//! run inside an async function, the way a REPL does:
//!
//! * the last statement, if it is an expression, is returned, so it is still the result;
//! * top-level `var`/`let`/`const NAME = ...`, `function NAME` and `class NAME` become
//!   `globalThis` properties, so they persist in the heap like script globals do.
//!
//! The scan is lexical (strings, template literals, comments, regular expressions, bracket
//! depth), not a full parser: declarations it does not recognise (destructuring, several
//! names without initialisers) stay local to the call.
//!
//! Long string literals: V8 interns string literals, and an interned string too large for a
//! regular heap page (128 KB) makes V8's snapshot serialiser abort. [`split_long_literals`]
//! rewrites such a literal into an array of shorter literals joined at run time, which gives
//! the same string without interning it.

/// Longest string literal left as it is, in bytes of source.
pub const LONG_LITERAL: usize = 32 * 1024;

/// Rewrites every quoted string literal longer than [`LONG_LITERAL`] as
/// `(['part', 'part', ...].join(''))`. `None` when there is none.
pub fn split_long_literals(code: &str) -> Option<String> {
    if code.len() <= LONG_LITERAL {
        return None;
    }
    let mut out = String::new();
    let mut copied = 0;
    for token in Lexer::new(code) {
        let Token::Str { quote, start, end } = token else {
            continue;
        };
        // Only closed literals: an unterminated one is left for V8 to report.
        if end - start > LONG_LITERAL && code.as_bytes()[end - 1] == quote {
            out.push_str(&code[copied..start]);
            out.push_str(&split_literal(&code[start + 1..end - 1], quote as char));
            copied = end;
        }
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&code[copied..]);
    Some(out)
}

/// `body` (the text between the quotes) as joined parts, cut only between escape sequences.
fn split_literal(body: &str, quote: char) -> String {
    let bytes = body.as_bytes();
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if i - start >= LONG_LITERAL / 2 && body.is_char_boundary(i) {
            parts.push(&body[start..i]);
            start = i;
        }
        i += if bytes[i] == b'\\' {
            escape_len(bytes, i)
        } else {
            1
        };
    }
    parts.push(&body[start..]);
    let parts: Vec<String> = parts.iter().map(|p| format!("{quote}{p}{quote}")).collect();
    format!("([{}].join(''))", parts.join(","))
}

/// Length of the escape sequence starting with the backslash at `at`.
fn escape_len(bytes: &[u8], at: usize) -> usize {
    let rest = &bytes[at + 1..];
    let len = match rest.first() {
        None => 0,
        Some(b'x') => 3,
        Some(b'u') if rest.get(1) == Some(&b'{') => rest
            .iter()
            .position(|&b| b == b'}')
            .map_or(rest.len(), |p| p + 1),
        Some(b'u') => 5,
        Some(b'0'..=b'7') => {
            1 + rest[1..]
                .iter()
                .take(2)
                .take_while(|b| (b'0'..=b'7').contains(b))
                .count()
        }
        Some(b'\r') if rest.get(1) == Some(&b'\n') => 2,
        // Any other escaped character, which may be several bytes long in UTF-8.
        Some(&b) => match b {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            _ => 4,
        },
    };
    (1 + len).min(bytes.len() - at)
}

/// The error V8 reports for `await` in a classic script.
pub fn is_top_level_await_error(message: &str) -> bool {
    message.contains("await is only valid")
}

/// Rewrites `code` to run inside an async function (see the module docs).
pub fn wrap_async(code: &str) -> String {
    let statements = top_level_statements(code);
    let mut out = String::with_capacity(code.len() + 64);
    out.push_str("(async () => {\n");
    let last = statements.len().saturating_sub(1);
    let mut copied = 0;
    for (i, range) in statements.iter().enumerate() {
        out.push_str(&code[copied..range.start]);
        let statement = &code[range.clone()];
        if i == last && is_expression_statement(statement) {
            let expression = statement.trim_end().trim_end_matches(';');
            out.push_str("return (");
            out.push_str(expression);
            out.push_str("\n);");
            out.push_str(&statement[expression.len()..].replacen(';', "", 1));
        } else {
            out.push_str(&globalize(statement));
        }
        copied = range.end;
    }
    out.push_str(&code[copied..]);
    out.push_str("\n})()");
    out
}

const STATEMENT_KEYWORDS: &[&str] = &[
    "var", "let", "const", "function", "async", "class", "if", "for", "while", "do", "try",
    "switch", "return", "throw", "break", "continue", "import", "export", "debugger",
];

fn first_word(statement: &str) -> &str {
    let s = statement.trim_start();
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(s.len());
    &s[..end]
}

fn is_expression_statement(statement: &str) -> bool {
    let s = statement.trim_start();
    if s.is_empty() || s.starts_with('{') || s.starts_with(';') {
        return false;
    }
    let word = first_word(s);
    // `async (...) =>` and `async x =>` are expressions; `async function` is not.
    if word == "async" {
        return !s["async".len()..].trim_start().starts_with("function");
    }
    !STATEMENT_KEYWORDS.contains(&word)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// Turns a recognisable top-level declaration into a `globalThis` assignment.
fn globalize(statement: &str) -> String {
    let lead = statement.len() - statement.trim_start().len();
    let (prefix, s) = statement.split_at(lead);
    let word = first_word(s);
    let after_word = &s[word.len()..];
    match word {
        "var" | "let" | "const" => {
            let rest = after_word.trim_start();
            let name = first_word(rest);
            let tail = rest[name.len()..].trim_start();
            if !is_identifier(name) {
                return statement.to_string();
            }
            if tail.starts_with('=') && !tail.starts_with("==") {
                format!("{prefix}globalThis.{name} {tail}")
            } else if tail.is_empty() || tail.starts_with(';') {
                format!("{prefix}globalThis.{name} = undefined{tail}")
            } else {
                statement.to_string()
            }
        }
        "function" | "class" => {
            let rest = after_word.trim_start().trim_start_matches('*').trim_start();
            let name = first_word(rest);
            if is_identifier(name) {
                format!("{prefix}globalThis.{name} = {s};")
            } else {
                statement.to_string()
            }
        }
        "async" if after_word.trim_start().starts_with("function") => {
            let rest = after_word.trim_start()["function".len()..].trim_start();
            let name = first_word(rest.trim_start_matches('*').trim_start());
            if is_identifier(name) {
                format!("{prefix}globalThis.{name} = {s};")
            } else {
                statement.to_string()
            }
        }
        _ => statement.to_string(),
    }
}

/// Byte ranges of the top-level statements of `code`, leading white space and comments
/// excluded.
fn top_level_statements(code: &str) -> Vec<std::ops::Range<usize>> {
    let bytes = code.as_bytes();
    let mut statements = Vec::new();
    let mut start: Option<usize> = None;
    // A statement that began with a block-bodied keyword ends at its closing brace.
    let mut block_statement = false;
    let mut lexer = Lexer::new(code);
    while let Some(token) = lexer.next() {
        let at = token.start();
        if let Token::Newline(_) = token {
            let next = next_significant(bytes, at + 1);
            if lexer.depth == 0 && start.is_some() && ends_here(lexer.before_newline, next) {
                statements.extend(start.take().map(|s| s..at));
            }
            continue;
        }
        if start.is_none() {
            if matches!(token, Token::Punct(b';', _)) {
                continue;
            }
            start = Some(at);
            block_statement = token == Token::Punct(b'{', at)
                || matches!(
                    first_word(&code[at..]),
                    "function" | "class" | "if" | "for" | "while" | "try" | "switch" | "async"
                );
        }
        let end = match token {
            Token::Punct(b';', _) if lexer.depth == 0 => at + 1,
            Token::Punct(b'}', _)
                if lexer.depth == 0 && block_statement && !continues_after_block(bytes, at + 1) =>
            {
                at + 1
            }
            _ => continue,
        };
        statements.extend(start.take().map(|s| s..end));
        block_statement = false;
    }
    statements.extend(start.map(|s| s..bytes.len()));
    statements
}

/// A lexical token: just enough of JavaScript to find statements and string literals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// A quoted string literal `start..end`, quotes included.
    Str { quote: u8, start: usize, end: usize },
    /// A piece of template literal text starting at the offset.
    Template(usize),
    /// A regular expression literal starting at the offset.
    Regex(usize),
    /// A name, keyword or number starting at the offset.
    Word(usize),
    /// A line break at the offset.
    Newline(usize),
    /// Any other character at the offset.
    Punct(u8, usize),
}

impl Token {
    fn start(self) -> usize {
        match self {
            Token::Str { start, .. } => start,
            Token::Template(at)
            | Token::Regex(at)
            | Token::Word(at)
            | Token::Newline(at)
            | Token::Punct(_, at) => at,
        }
    }
}

/// Splits JavaScript source into [`Token`]s, skipping white space and comments, and tracking
/// bracket depth.
struct Lexer<'a> {
    code: &'a str,
    at: usize,
    /// Bracket depth after the last token.
    depth: i32,
    /// Brace depths at which a template literal's `${` was opened.
    templates: Vec<i32>,
    /// The last significant character (`a` for a word), for ASI and regex decisions.
    before_newline: u8,
    last_word: &'a str,
}

impl<'a> Lexer<'a> {
    fn new(code: &'a str) -> Self {
        Self {
            code,
            at: 0,
            depth: 0,
            templates: Vec::new(),
            before_newline: b';',
            last_word: "",
        }
    }

    fn significant(&mut self, class: u8, token: Token) -> Option<Token> {
        self.before_newline = class;
        if class != b'a' {
            self.last_word = "";
        }
        Some(token)
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let bytes = self.code.as_bytes();
        loop {
            let i = self.at;
            let &c = bytes.get(i)?;
            if c == b'/' && bytes.get(i + 1) == Some(&b'/') {
                self.at = self.code[i..].find('\n').map_or(bytes.len(), |n| i + n);
                continue;
            }
            if c == b'/' && bytes.get(i + 1) == Some(&b'*') {
                self.at = self.code[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |n| i + 2 + n + 2);
                continue;
            }
            if c == b'\n' {
                self.at += 1;
                return Some(Token::Newline(i));
            }
            if c.is_ascii_whitespace() {
                self.at += 1;
                continue;
            }
            match c {
                b'"' | b'\'' => {
                    self.at = skip_string(bytes, i);
                    let token = Token::Str {
                        quote: c,
                        start: i,
                        end: self.at,
                    };
                    return self.significant(c, token);
                }
                b'`' => {
                    self.at = skip_template(bytes, i + 1, &mut self.templates, self.depth);
                    return self.significant(b'`', Token::Template(i));
                }
                b'/' if regex_allowed(self.before_newline, self.last_word) => {
                    self.at = skip_regex(bytes, i);
                    // A regular expression is a value, like a closed bracket.
                    return self.significant(b')', Token::Regex(i));
                }
                b'(' | b'[' | b'{' => self.depth += 1,
                b')' | b']' => self.depth -= 1,
                b'}' if self.templates.last() == Some(&self.depth) => {
                    self.templates.pop();
                    self.at = skip_template(bytes, i + 1, &mut self.templates, self.depth);
                    return self.significant(b'`', Token::Template(i));
                }
                b'}' => self.depth -= 1,
                _ if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' => {
                    self.at = self.code[i..]
                        .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '$'))
                        .map_or(bytes.len(), |n| i + n);
                    self.last_word = &self.code[i..self.at];
                    return self.significant(b'a', Token::Word(i));
                }
                _ => {}
            }
            // Multi-byte UTF-8 characters pass one byte at a time; only ASCII matters here.
            self.at += 1;
            return self.significant(c, Token::Punct(c, i));
        }
    }
}

/// After a block's closing brace: `else`, `catch`, `finally`, or `while` of a do-while, or an
/// operator/call continuing an expression, keep the statement going.
fn continues_after_block(bytes: &[u8], at: usize) -> bool {
    let rest = std::str::from_utf8(&bytes[at..]).unwrap_or("").trim_start();
    ["else", "catch", "finally", "while"]
        .iter()
        .any(|w| first_word(rest) == *w)
        || rest.starts_with([
            '.', '(', '[', ',', '?', ')', '+', '-', '*', '/', '=', '&', '|', '<', '>',
        ])
}

/// The next byte that is neither white space nor inside a comment.
fn next_significant(bytes: &[u8], mut at: usize) -> Option<u8> {
    while at < bytes.len() {
        match (bytes[at], bytes.get(at + 1)) {
            (b'/', Some(b'/')) => {
                while at < bytes.len() && bytes[at] != b'\n' {
                    at += 1;
                }
            }
            (b'/', Some(b'*')) => {
                at += 2;
                while at < bytes.len() && !(bytes[at] == b'*' && bytes.get(at + 1) == Some(&b'/')) {
                    at += 1;
                }
                at += 2;
            }
            (c, _) if c.is_ascii_whitespace() => at += 1,
            (c, _) => return Some(c),
        }
    }
    None
}

/// Whether a newline between `before` and `after` ends a statement (automatic semicolon
/// insertion, as far as a lexical scan can tell).
fn ends_here(before: u8, after: Option<u8>) -> bool {
    let continues_before = b"([{,.=+-*/%&|^!~?:<>".contains(&before);
    let continues_after = match after {
        None => false,
        Some(c) => b".,)]}?:+-*/%=&|^<>([`".contains(&c),
    };
    !continues_before && !continues_after
}

fn regex_allowed(last: u8, last_word: &str) -> bool {
    if last == b'a' {
        return matches!(
            last_word,
            "return"
                | "typeof"
                | "case"
                | "do"
                | "else"
                | "in"
                | "of"
                | "new"
                | "delete"
                | "void"
                | "throw"
                | "await"
                | "yield"
        );
    }
    !matches!(last, b')' | b']' | b'}' | b'`' | b'"' | b'\'')
}

fn skip_string(bytes: &[u8], open: usize) -> usize {
    let quote = bytes[open];
    let mut i = open + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            c if c == quote => return i + 1,
            b'\n' => return i,
            _ => i += 1,
        }
    }
    bytes.len()
}

fn skip_regex(bytes: &[u8], open: usize) -> usize {
    let mut i = open + 1;
    let mut class = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'[' => {
                class = true;
                i += 1;
            }
            b']' => {
                class = false;
                i += 1;
            }
            b'/' if !class => {
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                    i += 1;
                }
                return i;
            }
            b'\n' => return i,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Skips template text from `at` up to the closing backtick, or up to a `${`, in which case
/// the current depth is remembered and scanning resumes in code.
fn skip_template(bytes: &[u8], mut at: usize, templates: &mut Vec<i32>, depth: i32) -> usize {
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 2,
            b'`' => return at + 1,
            b'$' if bytes.get(at + 1) == Some(&b'{') => {
                templates.push(depth);
                return at + 2;
            }
            _ => at += 1,
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statements(code: &str) -> Vec<&str> {
        top_level_statements(code)
            .into_iter()
            .map(|r| &code[r])
            .collect()
    }

    #[test]
    fn splits_statements_like_asi_would() {
        assert_eq!(statements("a = 1; b = 2\nc"), ["a = 1;", "b = 2", "c"]);
        assert_eq!(
            statements("const x = await f()\nx\n  .map(y => y * 2)\n  .length"),
            ["const x = await f()", "x\n  .map(y => y * 2)\n  .length"]
        );
        assert_eq!(
            statements("if (a) {\n b()\n} else {\n c()\n}\nd"),
            ["if (a) {\n b()\n} else {\n c()\n}", "d"]
        );
        assert_eq!(
            statements("function f() { return 1 }\nf()"),
            ["function f() { return 1 }", "f()"]
        );
        assert_eq!(
            statements("const o = {\n a: 1,\n b: '}'\n}\no.a"),
            ["const o = {\n a: 1,\n b: '}'\n}", "o.a"]
        );
    }

    #[test]
    fn strings_comments_templates_and_regexes_are_opaque() {
        assert_eq!(
            statements("s = 'a;b' // c;d\nt = `x${ {y: 1}.y };z`\n/* ; */ r = /[;}]/g; r"),
            [
                "s = 'a;b' // c;d",
                "t = `x${ {y: 1}.y };z`",
                "r = /[;}]/g;",
                "r"
            ]
        );
        assert_eq!(statements("x = a / b / c; y"), ["x = a / b / c;", "y"]);
    }

    #[test]
    fn wraps_and_returns_the_last_expression() {
        let wrapped = wrap_async("const v = await p;\nv + 1");
        assert_eq!(
            wrapped,
            "(async () => {\nglobalThis.v = await p;\nreturn (v + 1\n);\n})()"
        );
        let wrapped = wrap_async("await p;");
        assert!(wrapped.contains("return (await p\n);"), "{wrapped}");
    }

    #[test]
    fn declarations_become_globals() {
        assert_eq!(globalize("let a = 1"), "globalThis.a = 1");
        assert_eq!(globalize("var b;"), "globalThis.b = undefined;");
        assert_eq!(
            globalize("function f() {}"),
            "globalThis.f = function f() {};"
        );
        assert_eq!(
            globalize("async function g() {}"),
            "globalThis.g = async function g() {};"
        );
        assert_eq!(globalize("class K {}"), "globalThis.K = class K {};");
        // Left alone: destructuring, and comparisons that look like declarations do not exist.
        assert_eq!(globalize("const { a, b } = o"), "const { a, b } = o");
        assert_eq!(globalize("x == 1"), "x == 1");
    }

    #[test]
    fn long_literals_are_split_between_escapes() {
        assert_eq!(split_long_literals("'short'"), None);
        let body = format!(
            "{}\\u00e9{}\\x41\\n{}",
            "a".repeat(20_000),
            "b".repeat(20_000),
            "é".repeat(10_000)
        );
        let code = format!("var s = '{body}'; s.length");
        let rewritten = split_long_literals(&code).unwrap();
        assert!(rewritten.starts_with("var s = (['"), "{}", &rewritten[..20]);
        assert!(rewritten.ends_with("'].join('')); s.length"));
        // Every part is a well-formed literal: no part starts or ends inside an escape.
        for part in rewritten["var s = ([".len()..rewritten.len() - "].join('')); s.length".len()]
            .split("','")
        {
            assert!(!part.ends_with('\\') && part.len() <= LONG_LITERAL / 2 + 8);
        }
        let joined: String = rewritten
            ["var s = (['".len()..rewritten.len() - "'].join('')); s.length".len()]
            .split("','")
            .collect();
        assert_eq!(joined, body);
        // Strings inside comments and other quotes are left alone.
        let big = "z".repeat(LONG_LITERAL + 1);
        assert_eq!(split_long_literals(&format!("// '{big}'\n1")), None);
        assert_eq!(split_long_literals(&format!("`{big}`")), None);
        assert!(split_long_literals(&format!("\"{big}\""))
            .unwrap()
            .starts_with("([\""));
    }

    #[test]
    fn statements_are_not_returned() {
        for code in [
            "let x = await p",
            "for (const a of b) {}",
            "if (x) { await y }",
            "{ a }",
        ] {
            assert!(!wrap_async(code).contains("return ("), "{code}");
        }
        assert!(wrap_async("async () => 1").contains("return ("));
    }
}
