//! Long literals. V8 interns the strings a script spells out, and an interned string too big
//! for a regular heap page makes V8's snapshot serialiser abort the process. So every string
//! or template-literal part longer than [`LONG_LITERAL`] is rewritten as parts joined at run
//! time — `(["…","…"].join(""))` — which builds the same string without interning it.

use std::ops::Range;

use oxc_ast::ast::{PropertyKey, StringLiteral, TaggedTemplateExpression, TemplateLiteral};
use oxc_ast_visit::{walk, Visit};

/// Longest literal left as it is, in bytes of its value.
pub(super) const LONG_LITERAL: usize = 32 * 1024;

/// The replacements (byte range of the source, new text) that split the long literals of
/// `program`, in source order.
pub(super) fn split(program: &oxc_ast::ast::Program) -> Vec<(Range<usize>, String)> {
    if program.source_text.len() <= LONG_LITERAL {
        return Vec::new();
    }
    let mut finder = Finder::default();
    finder.visit_program(program);
    finder.replacements.sort_by_key(|(range, _)| range.start);
    finder.replacements
}

#[derive(Default)]
struct Finder {
    replacements: Vec<(Range<usize>, String)>,
}

fn range(span: oxc_span::Span) -> Range<usize> {
    span.start as usize..span.end as usize
}

impl<'a> Visit<'a> for Finder {
    fn visit_string_literal(&mut self, it: &StringLiteral<'a>) {
        if it.value.len() > LONG_LITERAL {
            self.replacements
                .push((range(it.span), joined(&it.value, it.lone_surrogates)));
        }
    }

    fn visit_property_key(&mut self, it: &PropertyKey<'a>) {
        match it {
            // A key cannot be an expression unless it is computed.
            PropertyKey::StringLiteral(s) if s.value.len() > LONG_LITERAL => {
                let text = format!("[{}]", joined(&s.value, s.lone_surrogates));
                self.replacements.push((range(s.span), text));
            }
            _ => walk::walk_property_key(self, it),
        }
    }

    fn visit_template_literal(&mut self, it: &TemplateLiteral<'a>) {
        for quasi in &it.quasis {
            if let Some(cooked) = &quasi.value.cooked {
                if cooked.len() > LONG_LITERAL {
                    let text = format!("${{{}}}", joined(cooked, quasi.lone_surrogates));
                    self.replacements.push((range(quasi.span), text));
                }
            }
        }
        for expression in &it.expressions {
            self.visit_expression(expression);
        }
    }

    fn visit_tagged_template_expression(&mut self, it: &TaggedTemplateExpression<'a>) {
        // A tag receives the parts themselves (and their raw text): they stay as written.
        self.visit_expression(&it.tag);
        for expression in &it.quasi.expressions {
            self.visit_expression(expression);
        }
    }
}

/// `value` as an expression joining string literals of at most `LONG_LITERAL / 2` bytes.
/// With `lone_surrogates`, oxc spells a lone surrogate as U+FFFD and four hex digits.
fn joined(value: &str, lone_surrogates: bool) -> String {
    let mut parts = Vec::new();
    let mut part = String::from('"');
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if part.len() >= LONG_LITERAL / 2 {
            part.push('"');
            parts.push(std::mem::replace(&mut part, String::from('"')));
        }
        match c {
            '\u{FFFD}' if lone_surrogates => {
                let unit: String = chars.by_ref().take(4).collect();
                part.push_str("\\u");
                part.push_str(&unit);
            }
            '"' => part.push_str("\\\""),
            '\\' => part.push_str("\\\\"),
            '\n' => part.push_str("\\n"),
            '\r' => part.push_str("\\r"),
            c if (c as u32) < 0x20 => part.push_str(&format!("\\u{:04x}", c as u32)),
            c => part.push(c),
        }
    }
    part.push('"');
    parts.push(part);
    format!("([{}].join(\"\"))", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_short_and_escaped() {
        let value = format!("{}\"\\\n\u{1}é", "x".repeat(LONG_LITERAL));
        let text = joined(&value, false);
        assert!(text.starts_with("([\"xxx"));
        assert!(
            text.ends_with(r#"xx\"\\\n\u0001é"].join(""))"#),
            "{}",
            &text[text.len() - 40..]
        );
        assert_eq!(text.matches("\",\"").count(), 2);
        assert_eq!(joined("a\u{FFFD}d800b", true), r#"(["a\ud800b"].join(""))"#);
    }
}
