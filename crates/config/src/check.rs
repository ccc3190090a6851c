//! Typed reading of one JSON value that reports every unknown key and as many type errors as
//! it can, instead of stopping at the first.

use std::collections::BTreeSet;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde_json::{Map, Value};

use crate::diagnostic::{Sink, join};

/// Expected keys of the objects inside a value: `(relative path, keys)`, `""` for the value
/// itself and `"retry"` for the object under its `retry` key.
pub(crate) type Shapes<'a> = &'a [(&'a str, &'static [&'static str])];

/// The keys serde reads for the struct `T` (as written in files, renames applied).
pub(crate) fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields = None;
    let _ = T::deserialize(FieldsProbe(&mut fields));
    fields.unwrap_or(&[])
}

/// A deserializer that only records the field list a derived struct asks for.
struct FieldsProbe<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for FieldsProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("probe"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("probe"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Reports the keys of `map` (at `at`) that are not in `expected`.
pub(crate) fn check_keys(map: &Map<String, Value>, at: &str, expected: &[&str], sink: &mut Sink) {
    for key in map.keys() {
        if !expected.contains(&key.as_str()) {
            sink.err(join(at, key), unknown_key(key, expected));
        }
    }
}

/// The message for an unknown key: what was expected, and the likely intended key.
pub(crate) fn unknown_key(key: &str, expected: &[&str]) -> String {
    let mut message = format!("unknown key `{key}`");
    if let Some(close) = expected
        .iter()
        .filter(|e| edit_distance(key, e) <= 2.max(e.len() / 4))
        .min_by_key(|e| edit_distance(key, e))
    {
        message.push_str(&format!(" (did you mean `{close}`?)"));
    }
    if !expected.is_empty() {
        message.push_str(&format!("; expected one of: {}", expected.join(", ")));
    }
    message
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A short name for a value's type, for messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// Reads `value` (found at key path `at`) as a `T`, reporting on `sink` every unknown key (in
/// the objects `shapes` names, and any other serde ignores) and every type error it can reach:
/// after an error the offending key is dropped and the value read again.
///
/// Returns `None` when anything was reported.
pub(crate) fn typed<T: DeserializeOwned>(
    value: &Value,
    at: &str,
    shapes: Shapes,
    sink: &mut Sink,
) -> Option<T> {
    let before = sink.count();
    let mut unknown: BTreeSet<String> = BTreeSet::new();
    for (rel, expected) in shapes {
        if let Some(Value::Object(map)) = lookup(value, rel) {
            for key in map.keys() {
                if !expected.contains(&key.as_str()) {
                    let path = join(rel, key);
                    sink.err(join(at, &path), unknown_key(key, expected));
                    unknown.insert(path);
                }
            }
        }
    }
    let mut value = value.clone();
    let mut removed: Vec<String> = Vec::new();
    // Each round removes one key, so the count of keys bounds the rounds; the cap keeps a
    // pathological file from costing more than a few dozen reads.
    for _ in 0..64 {
        let mut ignored = Vec::new();
        let mut on_ignored = |path: serde_ignored::Path| ignored.push(ignored_path(&path));
        let result: Result<T, _> = serde_path_to_error::deserialize(
            serde_ignored::Deserializer::new(&value, &mut on_ignored),
        );
        for path in ignored {
            if unknown.insert(path.clone()) {
                let key = path.rsplit('.').next().unwrap_or(&path).to_owned();
                sink.err(join(at, &path), unknown_key(&key, &[]));
            }
        }
        match result {
            Ok(v) => return (sink.count() == before).then_some(v),
            Err(e) => {
                let segments: Vec<Seg> = e.path().iter().map(Seg::from).collect();
                let path = segments_path(&segments);
                let message = e.inner().to_string();
                if let Some(field) = message
                    .strip_prefix("missing field `")
                    .and_then(|rest| rest.strip_suffix('`'))
                {
                    if !removed.contains(&join(&path, field)) {
                        sink.err(join(at, &path), format!("missing required key `{field}`"));
                        return None;
                    }
                    // A required key we removed ourselves was already reported: drop the
                    // object that needs it too, and read on.
                    if segments.is_empty() || !remove(&mut value, &segments) {
                        return None;
                    }
                    removed.push(path);
                    continue;
                }
                sink.err(join(at, &path), message);
                if segments.is_empty() || !remove(&mut value, &segments) {
                    return None;
                }
                removed.push(path);
            }
        }
    }
    None
}

/// One step of a serde_path_to_error path.
enum Seg {
    Key(String),
    Index(usize),
    Other,
}

impl From<&serde_path_to_error::Segment> for Seg {
    fn from(segment: &serde_path_to_error::Segment) -> Self {
        match segment {
            serde_path_to_error::Segment::Map { key } => Seg::Key(key.clone()),
            serde_path_to_error::Segment::Seq { index } => Seg::Index(*index),
            _ => Seg::Other,
        }
    }
}

fn segments_path(segments: &[Seg]) -> String {
    let mut path = String::new();
    for segment in segments {
        match segment {
            Seg::Key(key) => path = join(&path, key),
            Seg::Index(i) => path = join(&path, &format!("[{i}]")),
            Seg::Other => {}
        }
    }
    path
}

/// Removes the key the path ends in; false when the path does not end in a removable key.
fn remove(value: &mut Value, segments: &[Seg]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut cur = value;
    for segment in parents {
        cur = match (segment, cur) {
            (Seg::Key(k), Value::Object(m)) => match m.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (Seg::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (Seg::Key(k), Value::Object(m)) => m.remove(k).is_some(),
        _ => false,
    }
}

fn ignored_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => join(&ignored_path(parent), &format!("[{index}]")),
        Path::Map { parent, key } => join(&ignored_path(parent), key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// The value at a dotted path of keys (`""` is the value itself).
fn lookup<'v>(value: &'v Value, rel: &str) -> Option<&'v Value> {
    if rel.is_empty() {
        return Some(value);
    }
    rel.split('.').try_fold(value, |v, key| v.get(key))
}
