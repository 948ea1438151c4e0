//! The upstream tools as TypeScript declarations, from their input and output schemas: what an
//! agent reads to call them from code, a few lines per tool instead of a JSON schema.
//!
//! ```ts
//! declare const tools: {
//!   github: {
//!     /** Search issues. */
//!     search_issues(args: { q: string; limit?: number }): Promise<unknown>;
//!   };
//! };
//! ```

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// One tool as the catalogue knows it.
#[derive(Debug, Clone)]
pub struct ToolEntry {
    /// Its server's name.
    pub server: String,
    /// Its name.
    pub name: String,
    /// What it says of itself.
    pub description: String,
    /// Its input schema.
    pub input: Value,
    /// Its output schema, if it has one (its result is then `structuredContent`).
    pub output: Option<Value>,
    /// It says it may destroy data (`destructiveHint`, and not `readOnlyHint`).
    pub destructive: bool,
}

/// How deep nested schemas are spelled out before they become `unknown`.
const MAX_DEPTH: usize = 6;

/// `tools`' declaration with `entries` (grouped by server, in order).
pub fn declare(entries: &[&ToolEntry]) -> String {
    let mut out = String::from("declare const tools: {\n");
    let mut server: Option<&str> = None;
    for entry in entries {
        if server != Some(entry.server.as_str()) {
            if server.is_some() {
                out.push_str("  };\n");
            }
            let _ = writeln!(out, "  {}: {{", key(&entry.server));
            server = Some(&entry.server);
        }
        doc(&mut out, "    ", &entry.description, entry.destructive);
        let output = match &entry.output {
            Some(schema) => type_of(schema, 2, MAX_DEPTH),
            None => "unknown".into(),
        };
        let _ = writeln!(
            out,
            "    {}(args: {}): Promise<{output}>;",
            key(&entry.name),
            type_of(&entry.input, 2, MAX_DEPTH)
        );
    }
    if server.is_some() {
        out.push_str("  };\n");
    }
    out.push_str("};\n");
    out
}

fn doc(out: &mut String, indent: &str, text: &str, destructive: bool) {
    let mut text = text.trim().replace("*/", "* /");
    if destructive {
        text.push_str(if text.is_empty() { "" } else { " " });
        text.push_str("(May destroy data.)");
    }
    if text.is_empty() {
        return;
    }
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() == 1 {
        let _ = writeln!(out, "{indent}/** {} */", lines[0]);
    } else {
        let _ = writeln!(out, "{indent}/**");
        for line in lines {
            let _ = writeln!(out, "{indent} * {}", line.trim_end());
        }
        let _ = writeln!(out, "{indent} */");
    }
}

/// A property name as TypeScript needs it: bare when it is an identifier, quoted otherwise.
fn key(name: &str) -> String {
    let mut chars = name.chars();
    let identifier = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if identifier {
        name.to_string()
    } else {
        Value::String(name.to_string()).to_string()
    }
}

/// The TypeScript type a JSON schema describes, as far as it can be said in a line or a few.
fn type_of(schema: &Value, indent: usize, depth: usize) -> String {
    let Some(schema) = schema.as_object() else {
        return "unknown".into();
    };
    if depth == 0 {
        return "unknown".into();
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return union(values.iter().map(Value::to_string));
    }
    if let Some(value) = schema.get("const") {
        return value.to_string();
    }
    for combinator in ["anyOf", "oneOf"] {
        if let Some(options) = schema.get(combinator).and_then(Value::as_array) {
            return union(options.iter().map(|o| type_of(o, indent, depth - 1)));
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        let parts: Vec<String> = all.iter().map(|o| type_of(o, indent, depth - 1)).collect();
        return parts.join(" & ");
    }
    match schema.get("type") {
        Some(Value::Array(types)) => union(types.iter().map(|t| {
            let mut one = schema.clone();
            one.insert("type".into(), t.clone());
            type_of(&Value::Object(one), indent, depth)
        })),
        Some(Value::String(t)) => match t.as_str() {
            "string" => "string".into(),
            "number" | "integer" => "number".into(),
            "boolean" => "boolean".into(),
            "null" => "null".into(),
            "array" => match schema.get("items") {
                Some(items) => {
                    let item = type_of(items, indent, depth - 1);
                    if item.contains(' ') && !item.starts_with('{') {
                        format!("({item})[]")
                    } else {
                        format!("{item}[]")
                    }
                }
                None => "unknown[]".into(),
            },
            "object" => object(schema, indent, depth),
            _ => "unknown".into(),
        },
        _ if schema.contains_key("properties") => object(schema, indent, depth),
        _ => "unknown".into(),
    }
}

fn object(schema: &Map<String, Value>, indent: usize, depth: usize) -> String {
    let properties = schema.get("properties").and_then(Value::as_object);
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let extra = match schema.get("additionalProperties") {
        Some(Value::Object(_)) => Some(type_of(&schema["additionalProperties"], indent, depth - 1)),
        _ => None,
    };
    let Some(properties) = properties.filter(|p| !p.is_empty()) else {
        return match extra {
            Some(value) => format!("Record<string, {value}>"),
            None => "Record<string, unknown>".into(),
        };
    };
    let pad = "  ".repeat(indent + 1);
    let mut out = String::from("{\n");
    for (name, property) in properties {
        if let Some(text) = property.get("description").and_then(Value::as_str) {
            doc(&mut out, &pad, text, false);
        }
        let optional = if required.contains(&name.as_str()) {
            ""
        } else {
            "?"
        };
        let _ = writeln!(
            out,
            "{pad}{}{optional}: {};",
            key(name),
            type_of(property, indent + 1, depth - 1)
        );
    }
    if let Some(value) = extra {
        let _ = writeln!(out, "{pad}[key: string]: {value};");
    }
    let _ = write!(out, "{}}}", "  ".repeat(indent));
    out
}

fn union(parts: impl Iterator<Item = String>) -> String {
    let mut parts: Vec<String> = parts.collect();
    parts.dedup();
    match parts.len() {
        0 => "never".into(),
        _ => parts.join(" | "),
    }
}

/// How well `entry` matches the words of `query` (lowercase): `None` when a word is missing.
/// Words in the name count more than words in the description.
pub fn score(entry: &ToolEntry, words: &[String]) -> Option<usize> {
    let name = format!("{}.{}", entry.server, entry.name).to_lowercase();
    let description = entry.description.to_lowercase();
    let mut score = 0;
    for word in words {
        if name.contains(word.as_str()) {
            score += 3;
        } else if description.contains(word.as_str()) {
            score += 1;
        } else {
            return None;
        }
    }
    Some(score)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schemas_become_readable_declarations() {
        let entry = ToolEntry {
            server: "my-server".into(),
            name: "search_issues".into(),
            description: "Search issues.".into(),
            input: json!({
                "type": "object",
                "properties": {
                    "q": { "type": "string", "description": "The query." },
                    "state": { "enum": ["open", "closed"] },
                    "labels": { "type": "array", "items": { "type": "string" } },
                    "limit": { "type": ["integer", "null"] }
                },
                "required": ["q"]
            }),
            output: Some(json!({
                "type": "object",
                "properties": { "total": { "type": "integer" } },
                "required": ["total"]
            })),
            destructive: false,
        };
        let text = declare(&[&entry]);
        assert!(text.contains("  \"my-server\": {\n"), "{text}");
        assert!(text.contains("    /** Search issues. */\n"), "{text}");
        assert!(
            text.contains("      /** The query. */\n      q: string;"),
            "{text}"
        );
        assert!(text.contains("state?: \"open\" | \"closed\";"), "{text}");
        assert!(text.contains("labels?: string[];"), "{text}");
        assert!(text.contains("limit?: number | null;"), "{text}");
        assert!(
            text.contains("): Promise<{\n      total: number;\n    }>;"),
            "{text}"
        );
    }

    #[test]
    fn search_needs_every_word_and_ranks_names_first() {
        let tool = |name: &str, description: &str| ToolEntry {
            server: "gh".into(),
            name: name.into(),
            description: description.into(),
            input: json!({}),
            output: None,
            destructive: false,
        };
        let words = |q: &str| {
            q.split_whitespace()
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
        };
        let search = tool("search_issues", "Find issues by query");
        let create = tool("create_issue", "Open an issue; search first");
        assert!(score(&search, &words("issue search")) > score(&create, &words("issue search")));
        assert_eq!(score(&search, &words("delete")), None);
        assert!(score(&search, &words("GH.SEARCH")).is_some());
    }
}
