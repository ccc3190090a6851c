//! Typed reading of one JSON value into a file's problems, through the core's reader
//! ([`baton_core::typed`]), which reports every unknown key and as many type errors as it
//! can instead of stopping at the first.

use baton_core::typed::{Shapes, read_partial, unknown_key};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::diagnostic::{Sink, join};

pub(crate) use baton_core::typed::fields_of;

/// Reports the keys of `map` (at `at`) that are not in `expected`.
pub(crate) fn check_keys(map: &Map<String, Value>, at: &str, expected: &[&str], sink: &mut Sink) {
    for key in map.keys() {
        if !expected.contains(&key.as_str()) {
            sink.err(join(at, key), unknown_key(key, expected));
        }
    }
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
/// the objects `shapes` names, and any other serde ignores) and every type error it can reach.
///
/// Returns `None` when anything was reported.
pub(crate) fn typed<T: DeserializeOwned>(
    value: &Value,
    at: &str,
    shapes: Shapes,
    sink: &mut Sink,
) -> Option<T> {
    let read = read_partial::<T>(value, shapes);
    let clean = read.problems.is_empty();
    for problem in read.problems {
        sink.err(join(at, &problem.path), problem.message);
    }
    read.value.filter(|_| clean)
}

/// Reads `value` (found at key path `at`) as a `T` as far as it reads, reporting on `sink`
/// every problem [`typed`] would. Returns the value with each key that failed dropped (its
/// default standing in), so the checks after serde's can go on, and the key paths (relative
/// to `at`) that failed, so those checks do not report a dropped key a second time; `None`
/// when not even that could be read.
pub(crate) fn typed_partial<T: DeserializeOwned>(
    value: &Value,
    at: &str,
    shapes: Shapes,
    sink: &mut Sink,
) -> Option<(T, Vec<String>)> {
    let read = read_partial::<T>(value, shapes);
    let mut failed = Vec::with_capacity(read.problems.len());
    for problem in read.problems {
        sink.err(join(at, &problem.path), problem.message);
        failed.push(problem.path);
    }
    read.value.map(|value| (value, failed))
}
