//! TypeScript: types are stripped with oxc's transformer (enums, namespaces and parameter
//! properties become the JavaScript TypeScript itself would emit); nothing is type-checked.
//! The JavaScript comes with a source map back to the TypeScript as written.

use std::path::Path;

use oxc_allocator::Allocator;
use oxc_ast::ast::Program;
use oxc_codegen::{Codegen, CodegenOptions};
use oxc_semantic::SemanticBuilder;
use oxc_sourcemap::SourceMap;
use oxc_transformer::{TransformOptions, Transformer};

use super::positions::{offset_of, position_of, Position};

/// The name the source map gives the TypeScript; it never leaves this module.
const NAME: &str = "run_js.ts";

/// JavaScript made from TypeScript, and how to find the TypeScript behind it.
#[derive(Debug)]
pub(super) struct Stripped {
    pub(super) code: String,
    map: SourceMap<'static>,
}

/// Strips the types from `program` (parsed from TypeScript). An error names what could not
/// be turned into JavaScript, and where.
pub(super) fn strip<'a>(
    allocator: &'a Allocator,
    mut program: Program<'a>,
) -> Result<Stripped, (String, usize)> {
    let scoping = SemanticBuilder::new()
        .with_enum_eval(true)
        .build(&program)
        .semantic
        .into_scoping();
    let transformed = Transformer::new(allocator, Path::new(NAME), &TransformOptions::default())
        .build_with_scoping(scoping, &mut program);
    if let Some(error) = transformed.diagnostics.into_iter().next() {
        let at = error
            .labels
            .first()
            .map_or(0, |label| label.offset() as usize);
        return Err((error.message.to_string(), at));
    }
    let output = Codegen::new()
        .with_options(CodegenOptions {
            source_map_path: Some(NAME.into()),
            ..CodegenOptions::default()
        })
        .build(&program);
    let map = output
        .map
        .map(SourceMap::into_owned)
        .ok_or_else(|| ("the TypeScript compiler made no source map".to_string(), 0))?;
    Ok(Stripped {
        code: output.code,
        map,
    })
}

impl Stripped {
    /// The position in `typescript` (the code stripped) that JavaScript position `at` was
    /// made from.
    pub(super) fn to_typescript(&self, typescript: &str, at: Position) -> Option<Position> {
        let table = self.map.generate_lookup_table();
        let line = u32::try_from(at.line.checked_sub(1)?).ok()?;
        let column = u32::try_from(at.column.checked_sub(1)?).ok()?;
        let token = self
            .map
            .lookup_token(&table, line, column)
            // Before a line's first token (its indentation): that token.
            .or_else(|| table.get(line as usize)?.first().copied())?;
        let start = Position {
            line: token.get_src_line() as usize + 1,
            column: token.get_src_col() as usize + 1,
        };
        // Tokens mark where expressions start; between one and `at` the printer mostly
        // wrote what the user did (`a.b.c`), and when it did, the offset carries over.
        let token_at = Position {
            line: at.line,
            column: token.get_dst_col() as usize + 1,
        };
        let stretch = &self.code[offset_of(&self.code, token_at)..offset_of(&self.code, at)];
        let from = offset_of(typescript, start);
        Some(if typescript[from..].starts_with(stretch) {
            position_of(typescript, from + stretch.len())
        } else {
            start
        })
    }
}
