//! Reading a TOML or YAML file into JSON, refusing what cannot be a config.

use std::io::Read;
use std::path::Path;

use serde_json::{Map, Number, Value};

use crate::diagnostic::{Sink, join};

/// Files larger than this are refused before parsing.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// The deepest nesting of lists and maps a YAML file may have: the YAML reader's own limit,
/// which [`parse_document`] also checks before parsing for flow nesting (`[` and `{`), whose
/// scanning takes time quadratic in the depth.
pub const MAX_YAML_DEPTH: usize = 128;

/// The formats a config or workflow file may have, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Toml,
    Yaml,
}

fn format_of(path: &Path) -> Option<Format> {
    match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "toml" => Some(Format::Toml),
        "yaml" | "yml" => Some(Format::Yaml),
        _ => None,
    }
}

/// Reads and parses `path`; every problem is reported on `sink` with an empty key path.
/// An empty YAML file reads as `null`.
pub(crate) fn read_document(path: &Path, sink: &mut Sink) -> Option<Value> {
    let Some(format) = format_of(path) else {
        sink.err(
            "",
            "unknown file type: expected a `.toml`, `.yaml` or `.yml` file",
        );
        return None;
    };
    let text = read_text(path, sink)?;
    parse_document(&text, format == Format::Toml, sink)
}

fn read_text(path: &Path, sink: &mut Sink) -> Option<String> {
    let file = std::fs::File::open(path).and_then(|f| {
        if f.metadata()?.is_dir() {
            Err(std::io::Error::other("is a directory, not a file"))
        } else {
            Ok(f)
        }
    });
    let mut bytes = Vec::new();
    if let Err(e) = file.and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)) {
        sink.err("", format!("cannot read the file: {e}"));
        return None;
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        too_large(sink);
        return None;
    }
    match String::from_utf8(bytes) {
        Ok(text) => Some(match text.strip_prefix('\u{feff}') {
            Some(rest) => rest.to_owned(),
            None => text,
        }),
        Err(e) => {
            sink.err(
                "",
                format!(
                    "not UTF-8 text (invalid byte at offset {}): a config must be a text file",
                    e.utf8_error().valid_up_to()
                ),
            );
            None
        }
    }
}

fn too_large(sink: &mut Sink) {
    sink.err(
        "",
        format!(
            "the file is larger than {} MiB; baton refuses to read it",
            MAX_FILE_BYTES >> 20
        ),
    );
}

/// Parses YAML text that did not come from a file (the editor's, an API request's) with
/// the bounds a file has; every problem is reported on `sink` with an empty key path.
pub(crate) fn parse_yaml(text: &str, sink: &mut Sink) -> Option<Value> {
    if text.len() as u64 > MAX_FILE_BYTES {
        too_large(sink);
        return None;
    }
    parse_document(text.strip_prefix('\u{feff}').unwrap_or(text), false, sink)
}

/// Parses TOML or YAML text into JSON.
fn parse_document(text: &str, toml: bool, sink: &mut Sink) -> Option<Value> {
    if toml {
        match toml::from_str::<toml::Table>(text) {
            Ok(table) => {
                let before = sink.count();
                let value = toml_to_json(toml::Value::Table(table), "", sink);
                (sink.count() == before).then_some(value)
            }
            Err(e) => {
                let at = e
                    .span()
                    .map(|span| {
                        let (line, column) = line_column(text, span.start);
                        format!(" at line {line}, column {column}")
                    })
                    .unwrap_or_default();
                sink.err("", format!("invalid TOML{at}: {}", e.message().trim_end()));
                None
            }
        }
    } else {
        // libyaml's scanner takes time quadratic in the nesting of `[` and `{`; the reader
        // refuses more than MAX_YAML_DEPTH levels anyway, but only after that time.
        let depth = flow_depth(text);
        if depth > MAX_YAML_DEPTH {
            sink.err(
                "",
                format!(
                    "invalid YAML: lists and maps nested {depth} levels deep (`[` and `{{`); at most {MAX_YAML_DEPTH} levels are allowed"
                ),
            );
            return None;
        }
        let mut value = match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) {
            Ok(value) => value,
            Err(e) if e.to_string().starts_with("recursion limit exceeded") => {
                let at = e
                    .location()
                    .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
                    .unwrap_or_default();
                sink.err(
                    "",
                    format!(
                        "invalid YAML: lists and maps nested more than {MAX_YAML_DEPTH} levels deep{at}; at most {MAX_YAML_DEPTH} levels are allowed"
                    ),
                );
                return None;
            }
            Err(e) => {
                sink.err("", format!("invalid YAML: {e}"));
                return None;
            }
        };
        if let Err(e) = value.apply_merge() {
            sink.err("", format!("invalid YAML merge key (`<<`): {e}"));
            return None;
        }
        let before = sink.count();
        let value = yaml_to_json(value, "", sink);
        (sink.count() == before).then_some(value)
    }
}

/// An upper bound of the nesting of `[` and `{` in YAML text. Brackets inside quotes and
/// comments count too, so it never underestimates (a quote cannot hide a bracket).
fn flow_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn float(f: f64, path: &str, sink: &mut Sink) -> Value {
    match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None => {
            sink.err(path, "infinite and NaN numbers are not allowed");
            Value::Null
        }
    }
}

fn toml_to_json(value: toml::Value, path: &str, sink: &mut Sink) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => float(f, path, sink),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| toml_to_json(v, &join(path, &format!("[{i}]")), sink))
                .collect(),
        ),
        toml::Value::Table(table) => Value::Object(
            table
                .into_iter()
                .map(|(k, v)| {
                    let v = toml_to_json(v, &join(path, &k), sink);
                    (k, v)
                })
                .collect(),
        ),
    }
}

fn yaml_to_json(value: serde_yaml_ng::Value, path: &str, sink: &mut Sink) -> Value {
    use serde_yaml_ng::Value as Y;
    match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                float(n.as_f64().unwrap_or(f64::NAN), path, sink)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| yaml_to_json(v, &join(path, &format!("[{i}]")), sink))
                .collect(),
        ),
        Y::Mapping(mapping) => {
            let mut map = Map::new();
            for (k, v) in mapping {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => {
                        let what = match other {
                            Y::Null => "empty",
                            Y::Sequence(_) => "a list",
                            Y::Mapping(_) => "a map",
                            _ => "tagged",
                        };
                        sink.err(path, format!("a key is {what}; keys must be text"));
                        continue;
                    }
                };
                let v = yaml_to_json(v, &join(path, &key), sink);
                if map.insert(key.clone(), v).is_some() {
                    sink.err(join(path, &key), "this key appears twice");
                }
            }
            Value::Object(map)
        }
        Y::Tagged(tagged) => {
            sink.err(
                path,
                format!(
                    "YAML tags such as `{}` are not supported: write the plain value",
                    tagged.tag
                ),
            );
            Value::Null
        }
    }
}
