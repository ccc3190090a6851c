//! Output values a Jenkins job computed: an archived `.json` or `.properties` file (the
//! "property file" of Spinnaker's Jenkins stage), parsed into a JSON object.

use baton_core::typed::json_kind;
use serde_json::{Map, Value};

/// The largest property file read.
pub(crate) const MAX_PROPERTIES_BYTES: usize = 1024 * 1024;

/// Parses an artifact named `path`: `*.json` must hold a JSON object; anything else is
/// read as a Java `.properties` file, whose values are strings.
pub(crate) fn parse_artifact(path: &str, bytes: &[u8]) -> Result<Map<String, Value>, String> {
    if path.to_ascii_lowercase().ends_with(".json") {
        return match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(other) => Err(format!(
                "`{path}` holds JSON but not an object (it starts with {}): write an object of output values",
                json_kind(&other)
            )),
            Err(e) => Err(format!("`{path}` is not valid JSON: {e}")),
        };
    }
    // `Properties.load` reads ISO-8859-1, but files written today are mostly UTF-8 (and
    // Java 9+ reads property resource bundles as UTF-8): take UTF-8 when it is valid.
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => bytes.iter().map(|&b| b as char).collect(),
    };
    Ok(parse_properties(&text)
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect())
}

/// Parses the `.properties` format: `key=value`, `key: value` or `key value`; `#` and `!`
/// comment lines; a trailing odd backslash continues a line; `\t \n \r \f \uXXXX` escapes,
/// and `\x` for any other `x`. A later key replaces an earlier one, keeping its place.
pub(crate) fn parse_properties(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in logical_lines(text) {
        let (key, value) = split_entry(&line);
        let key = unescape(&key);
        let value = unescape(&value);
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => out.push((key, value)),
        }
    }
    out
}

/// Joins continued lines and drops blank and comment lines. Escapes stay in place.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current: Option<String> = None;
    let text = text.replace("\r\n", "\n");
    for raw in text.split(['\n', '\r']) {
        let trimmed = raw.trim_start_matches([' ', '\t', '\x0c']);
        let piece = match current.as_mut() {
            Some(acc) => {
                acc.push_str(trimmed);
                acc.clone()
            }
            None => {
                if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('!') {
                    continue;
                }
                trimmed.to_owned()
            }
        };
        let trailing = piece.chars().rev().take_while(|&c| c == '\\').count();
        if trailing % 2 == 1 {
            let mut cut = piece;
            cut.pop();
            current = Some(cut);
        } else {
            current = None;
            lines.push(piece);
        }
    }
    if let Some(rest) = current {
        lines.push(rest);
    }
    lines
}

/// Splits at the first unescaped `=`, `:` or whitespace; whitespace around the separator
/// is dropped.
fn split_entry(line: &str) -> (String, String) {
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    let mut key_end = chars.len();
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '=' | ':' | ' ' | '\t' | '\x0c' => {
                key_end = i;
                break;
            }
            _ => i += 1,
        }
    }
    let key: String = chars[..key_end.min(chars.len())].iter().collect();
    let mut j = key_end;
    while j < chars.len() && matches!(chars[j], ' ' | '\t' | '\x0c') {
        j += 1;
    }
    if j < chars.len() && matches!(chars[j], '=' | ':') {
        j += 1;
        while j < chars.len() && matches!(chars[j], ' ' | '\t' | '\x0c') {
            j += 1;
        }
    }
    let value: String = chars[j.min(chars.len())..].iter().collect();
    (key, value)
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\x0c'),
            Some('u') => {
                let hex: String = (0..4).filter_map(|_| chars.next()).collect();
                match u32::from_str_radix(&hex, 16).ok() {
                    Some(high @ 0xD800..=0xDBFF) => {
                        // A surrogate pair written as two escapes.
                        let mut ahead = chars.clone();
                        let low = (ahead.next() == Some('\\') && ahead.next() == Some('u'))
                            .then(|| (0..4).filter_map(|_| ahead.next()).collect::<String>())
                            .and_then(|h| u32::from_str_radix(&h, 16).ok())
                            .filter(|l| (0xDC00..=0xDFFF).contains(l));
                        match low {
                            Some(low) => {
                                chars = ahead;
                                let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                                out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
                            }
                            None => out.push('\u{FFFD}'),
                        }
                    }
                    Some(code) => out.push(char::from_u32(code).unwrap_or('\u{FFFD}')),
                    None => out.push('\u{FFFD}'),
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn properties_format() {
        let text = "# a comment\n! another\n\nversion=1.2.3\nimage : reg/app@sha256:ab\n  spaced   value with spaces  \nempty=\nlonely\npath=C:\\\\tmp\\\\x\nmulti=one, \\\r\n    two, \\\n    three\nesc\\=key=v\\tx\\u00e9\\uD83D\\uDE00\nversion=1.2.4\r\nwin=crlf\r\n";
        let parsed = parse_properties(text);
        assert_eq!(
            parsed,
            [
                ("version".into(), "1.2.4".into()),
                ("image".into(), "reg/app@sha256:ab".into()),
                ("spaced".into(), "value with spaces  ".into()),
                ("empty".into(), String::new()),
                ("lonely".into(), String::new()),
                ("path".into(), "C:\\tmp\\x".into()),
                ("multi".into(), "one, two, three".into()),
                ("esc=key".into(), "v\txé😀".into()),
                ("win".into(), "crlf".into()),
            ]
        );
    }

    #[test]
    fn artifacts_by_extension() {
        assert_eq!(
            parse_artifact("out/result.JSON", br#"{"a": 1, "b": [true]}"#).unwrap(),
            json!({"a": 1, "b": [true]}).as_object().unwrap().clone()
        );
        assert!(
            parse_artifact("r.json", b"[1]")
                .unwrap_err()
                .contains("not an object")
        );
        assert!(
            parse_artifact("r.json", b"{")
                .unwrap_err()
                .contains("not valid JSON")
        );
        let latin1 = parse_artifact("build.properties", b"name=caf\xe9").unwrap();
        assert_eq!(latin1["name"], "café");
        // Garbage never panics.
        let _ = parse_properties("\\\\\\u12\\uZZZZ\\uD800=\\");
    }
}
