//! How V8 is to compile a call's code: as a REPL-mode script, or, for code that REPL mode
//! rejects although it is a valid script, as a classic script.
//!
//! REPL mode compiles the top level like the body of an async function, so `await` is a
//! keyword there even in code with no top-level `await`: `var await`, `await: 1` or a
//! reference to a global named `await` are syntax errors in it and valid in a script. Code
//! that uses `await` as a name outside every function ([`Goal::ReplOrScript`]) is still tried
//! in REPL mode first (`await (f)()` is an `await` there, and a call of `await` in a script),
//! and runs as a classic script only when REPL mode cannot compile it. A classic script's
//! completion value is the same; what differs is REPL mode's leniency with `let`/`const`/
//! `class` declared again by a later call, which does not extend to names a classic script
//! declared.

use oxc_ast::ast::{BindingIdentifier, Function, IdentifierReference, LabelIdentifier, Program};
use oxc_ast_visit::{walk, Visit};
use oxc_semantic::ScopeFlags;

/// How V8 compiles a call's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// V8's REPL mode (see [`crate::engine`]): top-level `await`, redeclarable `let`/`const`.
    Repl,
    /// REPL mode, or a classic script when REPL mode cannot compile the code: for code that
    /// uses `await` as a name outside every function.
    ReplOrScript,
}

/// The goal `program` needs.
pub(super) fn of(program: &Program) -> Goal {
    // Only code that spells `await` can use it as a name.
    if !program.source_text.contains("await") {
        return Goal::Repl;
    }
    let mut finder = AwaitAsName::default();
    finder.visit_program(program);
    if finder.found {
        Goal::ReplOrScript
    } else {
        Goal::Repl
    }
}

/// Looks for `await` used as a name where REPL mode makes it a keyword: outside every
/// function but arrow functions, which take `await` from where they stand.
#[derive(Default)]
struct AwaitAsName {
    in_function: usize,
    found: bool,
}

impl AwaitAsName {
    fn name(&mut self, name: &str) {
        if self.in_function == 0 && name == "await" {
            self.found = true;
        }
    }
}

impl<'a> Visit<'a> for AwaitAsName {
    fn visit_function(&mut self, it: &Function<'a>, flags: ScopeFlags) {
        // A function's own name is bound where the function stands.
        if let Some(id) = &it.id {
            self.name(&id.name);
        }
        self.in_function += 1;
        walk::walk_function(self, it, flags);
        self.in_function -= 1;
    }

    fn visit_identifier_reference(&mut self, it: &IdentifierReference<'a>) {
        self.name(&it.name);
    }

    fn visit_binding_identifier(&mut self, it: &BindingIdentifier<'a>) {
        self.name(&it.name);
    }

    fn visit_label_identifier(&mut self, it: &LabelIdentifier<'a>) {
        self.name(&it.name);
    }
}
