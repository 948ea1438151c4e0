//! What code may call upstream: which tools (globs over `server.tool`), which only after a
//! person says yes, whether tools that say they destroy are allowed, and the bounds of one
//! run's calls.

use std::time::Duration;

use crate::host_call::{HostError, HostErrorKind};

/// The tool policy.
#[derive(Debug, Clone)]
pub struct ToolPolicy {
    /// Tools code may call (`server.tool` globs); empty allows none.
    pub allow: Vec<glob::Pattern>,
    /// Tools code may not call, even if allowed.
    pub deny: Vec<glob::Pattern>,
    /// Tools code may call only once a person says yes ([`crate::approval`]): allowed, and
    /// destructive ones too, when approved.
    pub ask: Vec<glob::Pattern>,
    /// Tools annotated `destructiveHint: true` that code may call (otherwise refused).
    pub allow_destructive: Vec<glob::Pattern>,
    /// Most tool calls one run may make.
    pub calls_per_run: usize,
    /// Most tool calls of one run in flight at once (the rest wait their turn).
    pub concurrent_calls: usize,
    /// Longest one tool call may take.
    pub call_timeout: Duration,
    /// Largest result of one tool call, as JSON text.
    pub result_bytes: usize,
}

impl Default for ToolPolicy {
    fn default() -> Self {
        Self {
            allow: vec![glob::Pattern::new("*").expect("a valid glob")],
            deny: Vec::new(),
            ask: Vec::new(),
            allow_destructive: Vec::new(),
            calls_per_run: 100,
            concurrent_calls: 8,
            call_timeout: Duration::from_secs(30),
            result_bytes: 4 << 20,
        }
    }
}

/// Reads globs given on the command line or in a file.
pub fn globs(patterns: &[String]) -> Result<Vec<glob::Pattern>, String> {
    patterns
        .iter()
        .map(|p| glob::Pattern::new(p).map_err(|e| format!("tool pattern {p:?}: {e}")))
        .collect()
}

/// What the policy says of a call it does not refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It may go out.
    Allowed,
    /// It may go out once a person says yes (`--ask-tools`).
    Ask,
}

impl ToolPolicy {
    /// Whether code may call `tool` of `server`, which says of itself that it is
    /// `destructive`: refused, allowed, or allowed once a person says yes.
    pub fn check(&self, server: &str, tool: &str, destructive: bool) -> Result<Verdict, HostError> {
        let name = format!("{server}.{tool}");
        fn matches<'g>(globs: &'g [glob::Pattern], name: &str) -> Option<&'g glob::Pattern> {
            globs.iter().find(|g| g.matches(name))
        }
        if let Some(rule) = matches(&self.deny, &name) {
            return Err(HostError::new(
                HostErrorKind::Denied,
                format!("{name} is denied by the server's policy (--deny-tools {rule})"),
            ));
        }
        // A person's yes stands in for --allow-tools and --allow-destructive-tools.
        if matches(&self.ask, &name).is_some() {
            return Ok(Verdict::Ask);
        }
        if matches(&self.allow, &name).is_none() {
            return Err(HostError::new(
                HostErrorKind::Denied,
                format!("{name} is not among the tools this server allows (--allow-tools)"),
            ));
        }
        if destructive && matches(&self.allow_destructive, &name).is_none() {
            return Err(HostError::new(
                HostErrorKind::Denied,
                format!(
                    "{name} says it may destroy data (destructiveHint), and such tools are off \
                     unless the server allows them (--allow-destructive-tools)"
                ),
            ));
        }
        Ok(Verdict::Allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_wins_and_destructive_tools_need_their_own_allowance() {
        let policy = ToolPolicy {
            allow: globs(&["fs.*".into(), "github.search_*".into()]).unwrap(),
            deny: globs(&["fs.delete_*".into()]).unwrap(),
            allow_destructive: globs(&["fs.write_file".into()]).unwrap(),
            ..ToolPolicy::default()
        };
        assert_eq!(policy.check("fs", "read_file", false), Ok(Verdict::Allowed));
        assert!(policy.check("github", "search_issues", false).is_ok());
        let denied = policy.check("fs", "delete_file", false).unwrap_err();
        assert!(denied.message.contains("fs.delete_*"), "{}", denied.message);
        assert_eq!(denied.kind, HostErrorKind::Denied);
        assert!(policy.check("github", "create_issue", false).is_err());
        assert!(policy.check("fs", "move_file", true).is_err());
        assert!(policy.check("fs", "write_file", true).is_ok());
    }

    #[test]
    fn asked_tools_go_out_once_approved_even_unlisted_or_destructive_but_never_denied() {
        let policy = ToolPolicy {
            allow: globs(&["github.*".into()]).unwrap(),
            deny: globs(&["memory.drop_*".into()]).unwrap(),
            ask: globs(&["memory.*".into(), "github.delete_*".into()]).unwrap(),
            ..ToolPolicy::default()
        };
        assert_eq!(
            policy.check("memory", "delete_entities", true),
            Ok(Verdict::Ask)
        );
        assert_eq!(
            policy.check("github", "delete_repo", false),
            Ok(Verdict::Ask)
        );
        assert_eq!(
            policy.check("github", "search", false),
            Ok(Verdict::Allowed)
        );
        let denied = policy.check("memory", "drop_all", false).unwrap_err();
        assert!(
            denied.message.contains("--deny-tools"),
            "{}",
            denied.message
        );
    }
}
