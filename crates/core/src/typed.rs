//! Typed reading of config blocks: a block is declared as a `#[derive(Deserialize)]` struct
//! and read so that every unknown key and as many type errors as can be reached come out at
//! once, each with its key path, instead of only the first.
//!
//! [`read_partial`] is the engine: it reports the unknown keys of the objects it is told
//! about, then reads the value again and again, dropping each key that fails to read, so
//! that one bad key does not hide the next. The gateway config reads its sections through
//! it. [`read_table`] and [`read_config`] apply it to a whole block, such as an adapter's
//! `[adapters.<name>]` instance block: a missing block is an empty one, and the keys are
//! checked against the struct's own field list ([`fields_of`]). [`Partial::check`] then adds
//! the checks serde cannot make (URL shapes, ranges, keys that exclude each other) and
//! gives every problem in the order the keys stand in the block.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde_json::Value;

use crate::adapter::{AdapterError, FieldError};
use crate::duration::HumanDuration;
use crate::secret::{Secret, SecretRef, SecretResolver};

/// The longest poll hint (`poll_initial`, `poll_max`) an adapter accepts: the engine caps
/// hints at an hour.
pub const LONGEST_POLL: Duration = Duration::from_secs(3600);
/// The longest `request_timeout` an adapter accepts: the engine bounds a whole adapter call
/// at 60 s by default, so a longer request could never finish anyway.
pub const LONGEST_REQUEST: Duration = Duration::from_secs(300);

/// Expected keys of the objects inside a value: `(relative path, keys)`, `""` for the value
/// itself and `"retry"` for the object under its `retry` key.
pub type Shapes<'a> = &'a [(&'a str, &'static [&'static str])];

/// The keys serde reads for the struct `T` (as written in files, renames applied); empty
/// when `T` is not a struct with named fields.
pub fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
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

/// What kind of JSON value `value` is, for messages: "an array", "an object", "null", …
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The message for an unknown key: what was expected, and the likely intended key.
pub fn unknown_key(key: &str, expected: &[&str]) -> String {
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

/// Joins a key path and a relative one: `a` + `b` → `a.b`, `a` + `[0]` → `a[0]`.
pub fn join_path(base: &str, rel: &str) -> String {
    if base.is_empty() {
        rel.to_owned()
    } else if rel.is_empty() {
        base.to_owned()
    } else if rel.starts_with('[') {
        format!("{base}{rel}")
    } else {
        format!("{base}.{rel}")
    }
}

/// A value read as far as it could be, and every problem met on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Partial<T> {
    /// The value, read with every key that failed dropped (so its default stands in);
    /// `None` when even that was impossible (a required key is missing, the value has the
    /// wrong type as a whole).
    pub value: Option<T>,
    /// Every problem, its path relative to the value read.
    pub problems: Vec<FieldError>,
}

impl<T> Partial<T> {
    /// The value when nothing was wrong, else every problem.
    pub fn into_result(self) -> Result<T, Vec<FieldError>> {
        match self.value {
            Some(value) if self.problems.is_empty() => Ok(value),
            _ => Err(self.problems),
        }
    }

    /// Runs the checks serde cannot make on the value read (when there is one), which add
    /// their problems to the list they are given, and returns their result when no problem
    /// was found anywhere. Problems come in the order their keys stand in `block`, the
    /// block that was read; those about keys it lacks come last.
    pub fn check<U>(
        self,
        block: &Value,
        check: impl FnOnce(T, &mut Vec<FieldError>) -> Option<U>,
    ) -> Result<U, Vec<FieldError>> {
        let Partial {
            value,
            mut problems,
        } = self;
        let checked = value.and_then(|value| check(value, &mut problems));
        let position = |problem: &FieldError| {
            let key = problem.path.split(['.', '[']).next().unwrap_or_default();
            match block {
                Value::Object(map) => map.keys().position(|k| k == key).unwrap_or(map.len()),
                _ => 0,
            }
        };
        problems.sort_by_key(position);
        match checked {
            Some(checked) if problems.is_empty() => Ok(checked),
            _ => Err(problems),
        }
    }
}

/// True when a problem was already reported at `key` (a key that failed to read was
/// dropped, so the checks after serde's count it as given without its value).
pub fn reported(problems: &[FieldError], key: &str) -> bool {
    problems.iter().any(|p| p.path == key)
}

/// The value of a check of `key`, or its message as a problem at `key` and `None`.
pub fn checked<T>(
    key: &str,
    result: Result<T, String>,
    problems: &mut Vec<FieldError>,
) -> Option<T> {
    result
        .map_err(|message| problems.push(FieldError::new(key, message)))
        .ok()
}

/// The entries of the table at `key` whose values an external system takes as text (job
/// parameters, pipeline variables, workflow inputs), in the order written: a string as
/// is, a number or boolean as written. A name `name_problem` objects to, or any other value
/// (the problem then says `not_text`), is a problem at `<key>.<name>` and left out.
pub fn text_entries(
    key: &str,
    table: &serde_json::Map<String, Value>,
    name_problem: impl Fn(&str) -> Option<&'static str>,
    not_text: &str,
    problems: &mut Vec<FieldError>,
) -> Vec<(String, String)> {
    let mut entries = Vec::new();
    for (name, value) in table {
        let path = format!("{key}.{name}");
        if let Some(message) = name_problem(name) {
            problems.push(FieldError::new(path, message));
            continue;
        }
        match value {
            Value::String(text) => entries.push((name.clone(), text.clone())),
            Value::Bool(b) => entries.push((name.clone(), b.to_string())),
            Value::Number(n) => entries.push((name.clone(), n.to_string())),
            Value::Null | Value::Array(_) | Value::Object(_) => {
                problems.push(FieldError::new(path, not_text));
            }
        }
    }
    entries
}

/// True when `path` names a file below some root (an artifact in a build's archive): not
/// empty, not absolute, and no level empty, `.` or `..`.
pub fn is_relative_file_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
}

/// A problem at each key of a stage's `with:` table that is not one of `keys` (written as
/// `a, b, c`): `` unknown key: a `kind` stage takes a, b, c ``.
pub fn unknown_stage_keys(
    kind: &str,
    keys: &str,
    with: &serde_json::Map<String, Value>,
    problems: &mut Vec<FieldError>,
) {
    for key in with.keys() {
        if !keys.split(", ").any(|k| k == key) {
            problems.push(FieldError::new(
                key,
                format!("unknown key: a {kind} stage takes {keys}"),
            ));
        }
    }
}

/// A stage's `with:` block as rendered for a call, or its problems as one
/// [`AdapterError::Invalid`] (`` the stage's `with`: … ``): the stage fails, as no retry
/// can mend its input.
pub fn stage_with<T>(parsed: Result<T, Vec<FieldError>>) -> Result<T, AdapterError> {
    parsed.map_err(|errors| {
        AdapterError::Invalid(format!("the stage's `with`: {}", FieldError::join(&errors)))
    })
}

/// What an adapter kind's `build` makes of an instance block: the checked config and its
/// secrets, every failure an [`AdapterError::Invalid`] that names the adapter
/// (`` adapter `deploy`: token: … ``) so that a broken instance is found in the file at once.
#[derive(Clone, Copy)]
pub struct InstanceBuild<'a> {
    name: &'a str,
    secrets: &'a dyn SecretResolver,
}

impl<'a> InstanceBuild<'a> {
    /// Building the adapter instance `name`, with secrets read through `secrets`.
    pub fn new(name: &'a str, secrets: &'a dyn SecretResolver) -> Self {
        Self { name, secrets }
    }

    /// The checked config, or all its problems in one error.
    pub fn config<T>(&self, parsed: Result<T, Vec<FieldError>>) -> Result<T, AdapterError> {
        parsed.map_err(|errors| self.invalid(FieldError::join(&errors)))
    }

    /// The secret `reference` points at.
    pub fn secret(&self, reference: &SecretRef) -> Result<Secret, AdapterError> {
        self.secrets.resolve(reference).map_err(|e| self.invalid(e))
    }

    /// The secret `reference` (given at `key`) points at; the error names the key.
    pub fn secret_at(&self, key: &str, reference: &SecretRef) -> Result<Secret, AdapterError> {
        self.secrets
            .resolve(reference)
            .map_err(|e| self.invalid(format!("{key}: {e}")))
    }

    fn invalid(&self, message: impl std::fmt::Display) -> AdapterError {
        AdapterError::Invalid(format!("adapter `{}`: {message}", self.name))
    }
}

impl std::fmt::Debug for InstanceBuild<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceBuild")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The duration given at `key` (or `default` when none was) when it is longer than zero
/// and at most `longest`; else a problem at `key` and `None`. The range check most duration
/// keys of a block need.
pub fn duration_in_range(
    key: &str,
    value: Option<HumanDuration>,
    default: Duration,
    longest: Duration,
    problems: &mut Vec<FieldError>,
) -> Option<Duration> {
    let value = value.map_or(default, |d| d.0);
    if value.is_zero() {
        problems.push(FieldError::new(key, "must be longer than 0s"));
        None
    } else if value > longest {
        problems.push(FieldError::new(
            key,
            format!("must be at most {}", HumanDuration(longest)),
        ));
        None
    } else {
        Some(value)
    }
}

/// [`duration_in_range`], with `default` standing in for a value that is not valid (its
/// problem is reported all the same), so that later checks can go on.
pub fn duration_or_default(
    key: &str,
    value: Option<HumanDuration>,
    default: Duration,
    longest: Duration,
    problems: &mut Vec<FieldError>,
) -> Duration {
    duration_in_range(key, value, default, longest, problems).unwrap_or(default)
}

/// `poll_initial` and `poll_max` as adapters take them: each over 0 s and at most
/// `longest`, `defaults` where not given (or not valid), and `poll_max` not shorter than
/// `poll_initial`; every problem at its key.
pub fn poll_range(
    initial: Option<HumanDuration>,
    max: Option<HumanDuration>,
    defaults: (Duration, Duration),
    longest: Duration,
    problems: &mut Vec<FieldError>,
) -> (Duration, Duration) {
    let initial = duration_or_default("poll_initial", initial, defaults.0, longest, problems);
    let max = duration_or_default("poll_max", max, defaults.1, longest, problems);
    if max < initial {
        problems.push(FieldError::new(
            "poll_max",
            format!(
                "must not be shorter than `poll_initial` ({})",
                HumanDuration(initial)
            ),
        ));
    }
    (initial, max)
}

/// The timing keys every HTTP adapter takes, `poll_initial`, `poll_max` (see
/// [`poll_range`], at most [`LONGEST_POLL`]) and `request_timeout` (at most
/// [`LONGEST_REQUEST`]), each `defaults` where not given or not valid; every problem at its
/// key.
pub fn http_timing(
    given: [Option<HumanDuration>; 3],
    defaults: [Duration; 3],
    problems: &mut Vec<FieldError>,
) -> [Duration; 3] {
    let [initial, max, request] = given;
    let (initial, max) = poll_range(
        initial,
        max,
        (defaults[0], defaults[1]),
        LONGEST_POLL,
        problems,
    );
    let request = duration_or_default(
        "request_timeout",
        request,
        defaults[2],
        LONGEST_REQUEST,
        problems,
    );
    [initial, max, request]
}

/// Reads a whole config block (an adapter's instance block) as the struct `T`, a struct
/// with named fields: a missing block (`null`) is an empty table, anything but a table is
/// one problem, and every key `T` does not declare is reported with the keys it does.
pub fn read_table<T: DeserializeOwned>(block: &Value) -> Partial<T> {
    let fields = fields_of::<T>();
    let empty = Value::Object(serde_json::Map::new());
    let block = match block {
        Value::Null => &empty,
        Value::Object(map) if fields.is_empty() && !map.is_empty() => {
            return Partial {
                value: None,
                problems: map
                    .keys()
                    .map(|key| {
                        FieldError::new(key, format!("unknown key `{key}`: {}", expects(fields)))
                    })
                    .collect(),
            };
        }
        Value::Object(_) => block,
        _ => {
            return Partial {
                value: None,
                problems: vec![FieldError::new("", expects(fields))],
            };
        }
    };
    read_partial(block, &[("", fields)])
}

/// What a block of `fields` should look like, for messages.
fn expects(fields: &[&str]) -> String {
    if fields.is_empty() {
        "this block takes no keys".to_owned()
    } else {
        format!("expected a table with the keys {}", fields.join(", "))
    }
}

/// [`read_table`] for a block that needs no further checks: the value, or every problem.
pub fn read_config<T: DeserializeOwned>(block: &Value) -> Result<T, Vec<FieldError>> {
    read_table(block).into_result()
}

/// Reads `value` as a `T`, reporting every unknown key (in the objects `shapes` names, and
/// any other serde ignores) and every type error it can reach: after an error the offending
/// key is dropped and the value read again.
pub fn read_partial<T: DeserializeOwned>(value: &Value, shapes: Shapes) -> Partial<T> {
    let mut problems = Vec::new();
    let mut unknown: BTreeSet<String> = BTreeSet::new();
    for (rel, expected) in shapes {
        if let Some(Value::Object(map)) = lookup(value, rel) {
            for key in map.keys() {
                if !expected.contains(&key.as_str()) {
                    let path = join_path(rel, key);
                    problems.push(FieldError::new(path.clone(), unknown_key(key, expected)));
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
                problems.push(FieldError::new(path, unknown_key(&key, &[])));
            }
        }
        match result {
            Ok(v) => {
                return Partial {
                    value: Some(v),
                    problems,
                };
            }
            Err(e) => {
                let segments: Vec<Seg> = e.path().iter().map(Seg::from).collect();
                let path = segments_path(&segments);
                let message = e.inner().to_string();
                if let Some(field) = message
                    .strip_prefix("missing field `")
                    .and_then(|rest| rest.strip_suffix('`'))
                {
                    let missing = join_path(&path, field);
                    if !removed.contains(&missing) {
                        problems.push(FieldError::new(
                            missing,
                            format!("missing required key `{field}`"),
                        ));
                        break;
                    }
                    // A required key we removed ourselves was already reported: drop the
                    // object that needs it too, and read on.
                    if segments.is_empty() || !remove(&mut value, &segments) {
                        break;
                    }
                    removed.push(path);
                    continue;
                }
                // A key the shapes named as unknown was reported already.
                if !unknown.contains(&path) {
                    problems.push(FieldError::new(path.clone(), message));
                }
                if segments.is_empty() || !remove(&mut value, &segments) {
                    break;
                }
                removed.push(path);
            }
        }
    }
    Partial {
        value: None,
        problems,
    }
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
            Seg::Key(key) => path = join_path(&path, key),
            Seg::Index(i) => path = join_path(&path, &format!("[{i}]")),
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
        (Seg::Key(k), Value::Object(m)) => m.shift_remove(k).is_some(),
        _ => false,
    }
}

fn ignored_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => join_path(&ignored_path(parent), &format!("[{index}]")),
        Path::Map { parent, key } => join_path(&ignored_path(parent), key),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    /// A block as an adapter would declare it.
    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Block {
        url: String,
        #[serde(default)]
        retries: u32,
        #[serde(default)]
        wait: Option<HumanDuration>,
    }

    fn paths(problems: &[FieldError]) -> Vec<&str> {
        problems.iter().map(|p| p.path.as_str()).collect()
    }

    #[test]
    fn the_field_list_is_what_serde_reads() {
        assert_eq!(fields_of::<Block>(), ["url", "retries", "wait"]);
        assert!(fields_of::<String>().is_empty());
    }

    #[test]
    fn every_unknown_key_and_type_error_comes_out_at_once() {
        let problems = read_config::<Block>(&json!({
            "url": "http://x", "retires": 3, "retries": "three", "wait": 5, "colour": 1
        }))
        .unwrap_err();
        assert_eq!(paths(&problems), ["retires", "colour", "retries", "wait"]);
        assert!(
            problems[0].message.contains("did you mean `retries`?")
                && problems[0]
                    .message
                    .contains("expected one of: url, retries, wait"),
            "{problems:?}"
        );
        assert!(problems[2].message.contains("expected u32"), "{problems:?}");
    }

    #[test]
    fn a_missing_block_is_an_empty_one_and_a_non_table_one_problem() {
        let missing = read_config::<Block>(&Value::Null).unwrap_err();
        assert_eq!(
            missing,
            [FieldError::new("url", "missing required key `url`")]
        );
        let list = read_config::<Block>(&json!([1])).unwrap_err();
        assert_eq!(
            list,
            [FieldError::new(
                "",
                "expected a table with the keys url, retries, wait"
            )]
        );
        assert_eq!(
            read_config::<Block>(&json!({"url": "u"})),
            Ok(Block {
                url: "u".into(),
                retries: 0,
                wait: None
            })
        );
    }

    #[test]
    fn a_block_without_keys_names_each_key_given() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Nothing {}
        assert!(read_config::<Nothing>(&Value::Null).is_ok());
        let problems = read_config::<Nothing>(&json!({"a": 1, "b": 2})).unwrap_err();
        assert_eq!(paths(&problems), ["a", "b"]);
        assert!(
            problems[0].message.contains("takes no keys"),
            "{problems:?}"
        );
    }

    #[test]
    fn checks_see_the_value_read_without_its_bad_keys_and_problems_follow_the_block() {
        let block = json!({"wait": "soon", "retries": 11, "url": "ftp://x"});
        let result = read_table::<Block>(&block).check(&block, |b, problems| {
            assert_eq!(b.wait, None, "the bad key is dropped before the checks");
            if !b.url.starts_with("http") {
                problems.push(FieldError::new("url", "not http"));
            }
            if b.retries > 10 {
                problems.push(FieldError::new("retries", "at most 10"));
            }
            problems.push(FieldError::new("absent", "about a key the block lacks"));
            Some(b.retries)
        });
        assert_eq!(
            paths(&result.unwrap_err()),
            ["wait", "retries", "url", "absent"]
        );
        let good = json!({"url": "http://x", "retries": 2});
        assert_eq!(
            read_table::<Block>(&good).check(&good, |b, _| Some(b.retries)),
            Ok(2)
        );
    }

    #[test]
    fn durations_are_checked_against_their_range() {
        let mut problems = Vec::new();
        let hour = Duration::from_secs(3600);
        let second = Duration::from_secs(1);
        let read = |text: &str| Some(HumanDuration::parse(text).unwrap());
        assert_eq!(
            duration_in_range("a", None, second, hour, &mut problems),
            Some(second)
        );
        assert_eq!(
            duration_in_range("b", read("5m"), second, hour, &mut problems),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            duration_in_range("c", read("0s"), second, hour, &mut problems),
            None
        );
        assert_eq!(
            duration_in_range("d", read("2h"), second, hour, &mut problems),
            None
        );
        assert_eq!(paths(&problems), ["c", "d"]);
        assert_eq!(problems[1].message, "must be at most 1h");
        assert!(reported(&problems, "c") && !reported(&problems, "a"));
    }

    #[test]
    fn http_timing_checks_the_three_keys_and_keeps_defaults_for_bad_ones() {
        let d = |s: &str| Some(HumanDuration::parse(s).unwrap());
        let defaults = [
            Duration::from_secs(5),
            Duration::from_secs(30),
            Duration::from_secs(30),
        ];
        let mut problems = Vec::new();
        assert_eq!(
            http_timing([None, None, None], defaults, &mut problems),
            defaults
        );
        assert_eq!(
            http_timing([d("1s"), d("2s"), d("3s")], defaults, &mut problems),
            [1, 2, 3].map(Duration::from_secs)
        );
        assert!(problems.is_empty());
        let timing = http_timing([d("0s"), d("2h"), d("6m")], defaults, &mut problems);
        assert_eq!(timing, defaults);
        assert_eq!(
            FieldError::paths(&problems),
            ["poll_initial", "poll_max", "request_timeout"]
        );
    }

    #[test]
    fn text_entries_turn_scalars_into_text_and_name_every_other_value() {
        let table = json!({"a": "x", "b": 2, "c": true, "d": [1], "BAD": "y", "e": null});
        let Value::Object(table) = table else {
            unreachable!()
        };
        let mut problems = Vec::new();
        let entries = text_entries(
            "vars",
            &table,
            |name| (name == "BAD").then_some("not this one"),
            "expected text",
            &mut problems,
        );
        let pairs: Vec<(&str, &str)> = entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(pairs, [("a", "x"), ("b", "2"), ("c", "true")]);
        let mut said: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.path.as_str(), p.message.as_str()))
            .collect();
        said.sort();
        assert_eq!(
            said,
            [
                ("vars.BAD", "not this one"),
                ("vars.d", "expected text"),
                ("vars.e", "expected text")
            ]
        );
    }

    #[test]
    fn relative_file_paths_stay_below_their_root() {
        for good in ["a.env", "out/vars.env", "a/.hidden"] {
            assert!(is_relative_file_path(good), "{good}");
        }
        for bad in ["", "/etc/passwd", "a//b", "../up", "a/./b", "a/", "."] {
            assert!(!is_relative_file_path(bad), "{bad}");
        }
    }

    #[test]
    fn an_instance_build_names_the_adapter_and_never_the_secret() {
        struct Env;
        impl SecretResolver for Env {
            fn resolve(&self, reference: &SecretRef) -> Result<Secret, crate::secret::SecretError> {
                match reference {
                    SecretRef::Env(name) if name == "SET" => Ok(Secret::new("hunter2")),
                    SecretRef::Env(name) => {
                        Err(crate::secret::SecretError::MissingEnv(name.clone()))
                    }
                    SecretRef::File(path) => {
                        Err(crate::secret::SecretError::MissingFile(path.clone()))
                    }
                }
            }
        }
        let build = InstanceBuild::new("deploy", &Env);
        let set = build.secret(&SecretRef::Env("SET".into())).unwrap();
        assert_eq!(set.expose(), "hunter2");
        let missing = build.secret(&SecretRef::Env("UNSET".into())).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "adapter `deploy`: secret environment variable `UNSET` is not set"
        );
        let at = build
            .secret_at("password", &SecretRef::Env("UNSET".into()))
            .unwrap_err();
        assert!(
            matches!(&at, AdapterError::Invalid(m) if m.starts_with("adapter `deploy`: password: secret"))
        );
        let bad: Result<(), _> = build.config(Err(vec![
            FieldError::new("url", "has no host"),
            FieldError::new("token", "missing"),
        ]));
        let AdapterError::Invalid(message) = bad.unwrap_err() else {
            panic!("a bad block is invalid config")
        };
        assert!(message.starts_with("adapter `deploy`: url"), "{message}");
        assert!(message.contains("; token"), "{message}");
        assert!(!format!("{build:?}").contains("hunter2"));
    }

    #[test]
    fn stray_stage_keys_are_named_with_the_keys_a_stage_takes() {
        let Value::Object(with) = json!({"job": "a", "jobs": "b", "unstable": "x"}) else {
            unreachable!()
        };
        let mut problems = Vec::new();
        unknown_stage_keys("jenkins", "job, unstable", &with, &mut problems);
        assert_eq!(paths(&problems), ["jobs"]);
        assert_eq!(
            problems[0].message,
            "unknown key: a jenkins stage takes job, unstable"
        );
    }

    #[test]
    fn a_bad_stage_input_fails_the_stage_with_every_problem() {
        assert_eq!(stage_with::<u8>(Ok(3)), Ok(3));
        let bad = stage_with::<u8>(Err(vec![
            FieldError::new("job", "missing"),
            FieldError::new("parameters.X", "expected text"),
        ]));
        let Err(AdapterError::Invalid(message)) = bad else {
            panic!("a bad `with` is invalid input")
        };
        assert!(message.starts_with("the stage's `with`: job"), "{message}");
        assert!(message.contains("; parameters.X"), "{message}");
    }
}
