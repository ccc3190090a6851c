//! `BATON_*` environment overrides.

use serde_json::{Map, Value};

use crate::diagnostic::Sink;
use crate::gateway::TOP_LEVEL_KEYS;

/// One override that was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Override {
    /// The variable (`BATON_SERVER__LISTEN`).
    pub(crate) var: String,
    /// The key path it set (`server.listen`).
    pub(crate) path: String,
}

/// The key path a variable overrides, or `None` when it is not an override (not `BATON_`,
/// or its first segment is not a top-level key, like `BATON_INPUT`).
fn key_segments(var: &str) -> Option<Vec<String>> {
    let rest = var.strip_prefix("BATON_")?;
    let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    TOP_LEVEL_KEYS
        .contains(&segments[0].as_str())
        .then_some(segments)
}

/// Reads a variable's value: `true`/`false`, an integer, JSON for `[…` or `{…`, else text.
fn parse_value(text: &str) -> Result<Value, String> {
    match text {
        "true" => return Ok(Value::Bool(true)),
        "false" => return Ok(Value::Bool(false)),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Ok(Value::from(i));
    }
    if let Ok(u) = text.parse::<u64>() {
        return Ok(Value::from(u));
    }
    if text.starts_with('[') || text.starts_with('{') {
        return serde_json::from_str(text)
            .map_err(|e| format!("the value starts like JSON but is not: {e}"));
    }
    Ok(Value::String(text.to_owned()))
}

/// Applies every override in `env` to `doc`, in the variables' name order (so a table set
/// whole comes before its keys). Problems are reported on `sink` at the variable's name.
pub(crate) fn apply(
    doc: &mut Map<String, Value>,
    env: impl IntoIterator<Item = (String, String)>,
    sink: &mut Sink,
) -> Vec<Override> {
    let mut vars: Vec<(String, Vec<String>, String)> = env
        .into_iter()
        .filter_map(|(var, value)| key_segments(&var).map(|segments| (var, segments, value)))
        .collect();
    vars.sort();
    let mut applied = Vec::new();
    for (var, segments, text) in vars {
        if segments.iter().any(String::is_empty) {
            sink.err(
                &var,
                "empty key segment: separate keys with `__`, like `BATON_SERVER__LISTEN`",
            );
            continue;
        }
        let value = match parse_value(&text) {
            Ok(value) => value,
            Err(message) => {
                sink.err(&var, message);
                continue;
            }
        };
        let path = segments.join(".");
        let parents = &segments[..segments.len() - 1];
        // The first key on the way that holds something other than a table, if any.
        let mut probe = Some(&*doc);
        let mut blocked = None;
        for (i, key) in parents.iter().enumerate() {
            match probe.and_then(|t| t.get(key)) {
                None => probe = None,
                Some(Value::Object(inner)) => probe = Some(inner),
                Some(_) => {
                    blocked = Some(parents[..=i].join("."));
                    break;
                }
            }
        }
        if let Some(at) = blocked {
            sink.err(
                &var,
                format!("cannot set `{path}`: `{at}` is not a table in the config"),
            );
            continue;
        }
        set(doc, &segments, value);
        applied.push(Override { var, path });
    }
    applied
}

/// Sets the value at `keys`, making the tables on the way.
fn set(table: &mut Map<String, Value>, keys: &[String], value: Value) {
    match keys {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            if let Value::Object(inner) = table
                .entry(first.clone())
                .or_insert_with(|| Value::Object(Map::new()))
            {
                set(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_segments() {
        assert_eq!(parse_value("true"), Ok(Value::Bool(true)));
        assert_eq!(parse_value("42"), Ok(Value::from(42)));
        assert_eq!(parse_value("[1, \"a\"]"), Ok(serde_json::json!([1, "a"])));
        assert_eq!(parse_value("0.0.0.0:80"), Ok(Value::from("0.0.0.0:80")));
        assert!(parse_value("[oops").is_err());
        assert_eq!(
            key_segments("BATON_SERVER__MAX_BODY_BYTES"),
            Some(vec!["server".to_owned(), "max_body_bytes".to_owned()])
        );
        for ignored in [
            "BATON_INPUT",
            "BATON_OUTPUT",
            "BATON_RUN_ID",
            "BATON_STAGE",
            "BATON_ATTEMPT",
            "PATH",
            "baton_server__listen",
        ] {
            assert_eq!(key_segments(ignored), None, "{ignored}");
        }
    }
}
