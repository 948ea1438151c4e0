//! The tools' JSON Schemas, in the plain form every MCP client handles, and the lenient
//! argument readers that go with them.
//!
//! schemars describes `Option<f64>` as `"type": ["number", "null"]` with `"format": "double"`.
//! Some clients (the Inspector CLI) then send optional numbers as strings, and the TypeScript
//! SDK warns about every format it does not know. So input schemas say `"type": "number"` and
//! leave optional fields out of `required`, no schema carries a non-standard `format`, and
//! numeric arguments are read from a number or from a string holding one.

use std::sync::Arc;

use rmcp::handler::server::common::{schema_for_output, schema_for_type};
use rmcp::model::JsonObject;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Formats JSON Schema 2020-12 defines; any other is dropped.
const STANDARD_FORMATS: [&str; 19] = [
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// The input schema of a tool whose arguments are `T`.
pub fn input<T: JsonSchema + 'static>() -> Arc<JsonObject> {
    let mut schema = Value::Object((*schema_for_type::<T>()).clone());
    plain(&mut schema, true);
    Arc::new(into_object(schema))
}

/// The output schema of a tool whose structured result is `T`.
pub fn output<T: JsonSchema + 'static>() -> Arc<JsonObject> {
    let mut schema = Value::Object((*schema_for_output::<T>()).clone());
    plain(&mut schema, false);
    Arc::new(into_object(schema))
}

fn into_object(value: Value) -> JsonObject {
    match value {
        Value::Object(object) => object,
        _ => JsonObject::new(),
    }
}

/// Drops non-standard formats everywhere; for inputs also turns `["X", "null"]` into `"X"`
/// and drops `"default": null` (an optional argument is one left out of `required`); for
/// outputs turns `["X", "null"]` into `anyOf` branches with one type each.
fn plain(schema: &mut Value, input: bool) {
    match schema {
        Value::Object(object) => {
            let nonstandard = object
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| !STANDARD_FORMATS.contains(&f));
            if nonstandard {
                object.remove("format");
            }
            if input {
                if object.get("default") == Some(&Value::Null) {
                    object.remove("default");
                }
                if let Some(Value::Array(types)) = object.get("type") {
                    let rest: Vec<Value> = types
                        .iter()
                        .filter(|t| t.as_str() != Some("null"))
                        .cloned()
                        .collect();
                    if rest.len() == 1 {
                        object.insert("type".into(), rest[0].clone());
                    }
                }
            } else if let Some(Value::Array(types)) = object.get("type") {
                // A nullable result field: one `type` per branch, the form clients that map
                // schemas onto a single-type dialect (OpenAPI, Gemini) accept.
                if !object.contains_key("anyOf") {
                    let branches: Vec<Value> = types
                        .iter()
                        .map(|t| serde_json::json!({ "type": t }))
                        .collect();
                    object.remove("type");
                    object.insert("anyOf".into(), Value::Array(branches));
                }
            }
            for value in object.values_mut() {
                plain(value, input);
            }
        }
        Value::Array(items) => {
            for item in items {
                plain(item, input);
            }
        }
        _ => {}
    }
}

/// Reads an optional number given as a number or as a string holding one (`"1"`, `" 2.5 "`).
pub fn lenient<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrText<T> {
        Number(T),
        Text(String),
    }
    match Option::<NumberOrText<T>>::deserialize(deserializer)? {
        None => Ok(None),
        Some(NumberOrText::Number(n)) => Ok(Some(n)),
        Some(NumberOrText::Text(text)) => text.trim().parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("expected a number, got the string {text:?}"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(JsonSchema, Deserialize, serde::Serialize)]
    #[allow(dead_code)]
    struct Args {
        /// Required.
        code: String,
        /// Optional number.
        #[serde(default, deserialize_with = "lenient")]
        timeout_secs: Option<f64>,
        /// Optional count.
        #[serde(default, deserialize_with = "lenient")]
        limit_mb: Option<u64>,
    }

    #[test]
    fn optional_numbers_are_plain_and_left_out_of_required() {
        let schema = Value::Object((*input::<Args>()).clone());
        let props = &schema["properties"];
        assert_eq!(props["timeout_secs"]["type"], "number");
        assert_eq!(props["limit_mb"]["type"], "integer");
        assert_eq!(props["timeout_secs"].get("format"), None);
        assert_eq!(props["limit_mb"].get("format"), None);
        assert_eq!(props["timeout_secs"].get("default"), None);
        assert_eq!(schema["required"], json!(["code"]));
    }

    #[test]
    fn outputs_keep_nulls_as_branches_but_lose_nonstandard_formats() {
        let schema = Value::Object((*output::<Args>()).clone());
        let timeout = &schema["properties"]["timeout_secs"];
        assert_eq!(timeout.get("type"), None);
        assert_eq!(
            timeout["anyOf"],
            json!([{"type": "number"}, {"type": "null"}])
        );
        assert_eq!(schema["properties"]["limit_mb"].get("format"), None);
    }

    #[test]
    fn numbers_may_come_as_strings() {
        let args: Args =
            serde_json::from_value(json!({"code": "1", "timeout_secs": "1.5", "limit_mb": " 8 "}))
                .unwrap();
        assert_eq!((args.timeout_secs, args.limit_mb), (Some(1.5), Some(8)));
        let args: Args =
            serde_json::from_value(json!({"code": "1", "timeout_secs": 2, "limit_mb": null}))
                .unwrap();
        assert_eq!((args.timeout_secs, args.limit_mb), (Some(2.0), None));
        let err = serde_json::from_value::<Args>(json!({"code": "1", "limit_mb": "many"}))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("expected a number, got the string \"many\""),
            "{err}"
        );
    }
}
