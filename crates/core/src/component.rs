//! ContainerOps components' outputs, read the same way by every adapter that runs one (a
//! local command, a container): `[COUT] KEY = value` lines on standard output, a JSON
//! object written to the file named by `$BATON_OUTPUT`, merged in one fixed order; and the
//! parts of a stage's `with:` block such adapters share (`env`, argv lists).

use std::io::BufRead;

use serde_json::{Map, Value};

use crate::adapter::{FieldError, InputMode};
use crate::typed::json_kind;

/// Variables baton sets itself for a component; a stage may not override them, or a
/// component could be told to write its outputs somewhere baton never reads.
pub const RESERVED_ENV: [&str; 5] = [
    "BATON_INPUT",
    "BATON_OUTPUT",
    "BATON_RUN_ID",
    "BATON_STAGE",
    "BATON_ATTEMPT",
];

/// Parses a ContainerOps output line, `[COUT] KEY = value`. The value is JSON when it parses
/// as JSON, text otherwise.
pub fn parse_cout(line: &str) -> Option<(String, Value)> {
    let rest = line.trim_start().strip_prefix("[COUT]")?;
    let (key, value) = rest.split_once('=')?;
    let key = key.trim();
    if key.is_empty() {
        return None;
    }
    let value = value.trim();
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Some((key.to_owned(), value))
}

/// Every `[COUT] KEY = value` line of `stdout`, later lines winning. A read error ends the
/// reading with what was read so far.
pub fn cout_outputs(mut stdout: impl BufRead) -> Map<String, Value> {
    let mut outputs = Map::new();
    // Read by bytes: a command may print anything, and one bad line must not hide the rest.
    let mut line = Vec::new();
    while stdout.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
        if let Some((key, value)) = parse_cout(&String::from_utf8_lossy(&line)) {
            outputs.insert(key, value);
        }
        line.clear();
    }
    outputs
}

/// The object a component wrote to `$BATON_OUTPUT`, from the file's bytes; `None` when it
/// wrote nothing (an empty or blank file). Anything but a JSON object is an error that says
/// what the file holds.
pub fn output_object(bytes: &[u8]) -> Result<Option<Map<String, Value>>, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(other) => Err(format!(
            "$BATON_OUTPUT must hold a JSON object, but it holds {}",
            json_kind(&other)
        )),
        Err(e) => Err(format!("$BATON_OUTPUT does not hold valid JSON: {e}")),
    }
}

/// A component's outputs: the `[COUT]` values, then the `$BATON_OUTPUT` object over them (it
/// is written on purpose, as a whole), then `exit_code` (`null` when none was recorded).
pub fn component_outputs(
    cout: Map<String, Value>,
    output_file: Option<Map<String, Value>>,
    exit_code: Option<i64>,
) -> Map<String, Value> {
    let mut outputs = cout;
    outputs.extend(output_file.unwrap_or_default());
    outputs.insert(
        "exit_code".into(),
        exit_code.map_or(Value::Null, Value::from),
    );
    outputs
}

/// Numbers and booleans are accepted as arguments and values because YAML turns
/// `[sleep, 5]` into one.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The argv list at `key` of a `with:` block (`command`, `entrypoint`): strings, numbers or
/// booleans, the first one not empty. A whole-string template stands for a list not yet
/// known (an empty one is returned). Anything else is a problem at `key` saying `expected`.
pub fn argv_list(
    key: &str,
    value: &Value,
    mode: InputMode,
    expected: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Vec<String>> {
    match value {
        // A whole-string template may render to the argv list.
        Value::String(text) if mode.is_template(text) => Some(Vec::new()),
        Value::Array(items) if items.is_empty() => {
            errors.push(FieldError::new(
                key,
                "the argv list is empty: give at least the program",
            ));
            None
        }
        Value::Array(items) => {
            let mut argv = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let path = format!("{key}[{i}]");
                match scalar_text(item) {
                    Some(arg) if arg.contains('\0') => {
                        errors.push(FieldError::new(path, "an argument contains a NUL byte"));
                    }
                    Some(arg) if i == 0 && arg.is_empty() => {
                        errors.push(FieldError::new(path, "the program name is empty"));
                    }
                    Some(arg) => argv.push(arg),
                    None => errors.push(FieldError::new(
                        path,
                        "expected a string, number or boolean argument",
                    )),
                }
            }
            Some(argv)
        }
        _ => {
            errors.push(FieldError::new(key, expected));
            None
        }
    }
}

/// The `env` table of a `with:` block: variable names to strings, numbers or booleans, as
/// text. A name baton sets itself (`reserved`) is a problem, as is a whole-string template
/// in [`InputMode::Rendered`] (in [`InputMode::Templates`] it stands for a table).
pub fn env_entries(
    env: &Value,
    mode: InputMode,
    reserved: &[&str],
    errors: &mut Vec<FieldError>,
) -> Vec<(String, String)> {
    let map = match env {
        Value::Object(map) => map,
        Value::Null => return Vec::new(),
        Value::String(text) if mode.is_template(text) => return Vec::new(),
        _ => {
            errors.push(FieldError::new(
                "env",
                "expected a table of variable names to strings, numbers or booleans",
            ));
            return Vec::new();
        }
    };
    let mut vars = Vec::with_capacity(map.len());
    for (name, value) in map {
        let path = format!("env.{name}");
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            errors.push(FieldError::new(
                path,
                "not a valid variable name (empty, or holds `=` or NUL)",
            ));
            continue;
        }
        if reserved.contains(&name.as_str()) {
            errors.push(FieldError::new(
                path,
                "this variable is set by baton itself",
            ));
            continue;
        }
        match scalar_text(value) {
            Some(text) if text.contains('\0') => {
                errors.push(FieldError::new(path, "the value contains a NUL byte"));
            }
            Some(text) => vars.push((name.clone(), text)),
            None => errors.push(FieldError::new(
                path,
                "expected a string, number or boolean",
            )),
        }
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cout_lines() {
        assert_eq!(
            parse_cout("[COUT] IMAGE = registry/app:1\n"),
            Some(("IMAGE".into(), json!("registry/app:1")))
        );
        assert_eq!(
            parse_cout("  [COUT]count=3"),
            Some(("count".into(), json!(3)))
        );
        assert_eq!(
            parse_cout("[COUT] obj = {\"a\": [1, 2]}"),
            Some(("obj".into(), json!({"a": [1, 2]})))
        );
        assert_eq!(
            parse_cout("[COUT] url = http://x/?a=b"),
            Some(("url".into(), json!("http://x/?a=b")))
        );
        assert_eq!(
            parse_cout("[COUT] flag = true"),
            Some(("flag".into(), json!(true)))
        );
        assert_eq!(
            parse_cout("[COUT] empty ="),
            Some(("empty".into(), json!("")))
        );
        assert_eq!(parse_cout("[COUT] = 1"), None);
        assert_eq!(parse_cout("[COUT] no equals"), None);
        assert_eq!(parse_cout("echo [COUT] x = 1"), None);
    }

    #[test]
    fn later_cout_lines_win_and_bad_bytes_hide_nothing() {
        let stdout = b"[COUT] a = 1\n\xff\xfe not text\n[COUT] b = x\n[COUT] a = 2";
        assert_eq!(
            cout_outputs(&stdout[..]),
            json!({"a": 2, "b": "x"}).as_object().unwrap().clone()
        );
        assert!(cout_outputs(&b""[..]).is_empty());
    }

    #[test]
    fn output_files() {
        assert_eq!(output_object(b""), Ok(None));
        assert_eq!(output_object(b" \n\t"), Ok(None));
        assert_eq!(
            output_object(br#"{"a": 1}"#),
            Ok(Some(json!({"a": 1}).as_object().unwrap().clone()))
        );
        assert_eq!(
            output_object(b"[1]"),
            Err("$BATON_OUTPUT must hold a JSON object, but it holds an array".into())
        );
        for (text, kind) in [
            ("null", "null"),
            ("true", "a boolean"),
            ("3", "a number"),
            ("\"s\"", "a string"),
        ] {
            let message = output_object(text.as_bytes()).unwrap_err();
            assert!(message.ends_with(kind), "{message}");
        }
        let message = output_object(b"{oops").unwrap_err();
        assert!(message.starts_with("$BATON_OUTPUT does not hold valid JSON: "));
    }

    #[test]
    fn the_file_wins_over_cout_and_exit_code_comes_last() {
        let cout = json!({"a": 1, "b": 2, "exit_code": "mine"});
        let file = json!({"b": 3, "c": 4});
        let merged = component_outputs(
            cout.as_object().unwrap().clone(),
            file.as_object().cloned(),
            Some(0),
        );
        assert_eq!(
            Value::Object(merged),
            json!({"a": 1, "b": 3, "c": 4, "exit_code": 0})
        );
        let none = component_outputs(Map::new(), None, None);
        assert_eq!(Value::Object(none), json!({"exit_code": null}));
    }
}
