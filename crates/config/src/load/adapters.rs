//! An `[adapters.*]` block: an instance of an adapter kind this baton knows.

use baton_core::{BUILTIN_INSTANCES, Kinds};
use serde_json::Value;

use super::{kind_and_rest, valid_name};
use crate::diagnostic::{Sink, join};
use crate::gateway::*;

/// Returns the instance's kind when this baton knows it, and the instance when it is valid.
pub(super) fn read_adapter(
    name: &str,
    value: &Value,
    kinds: &Kinds,
    sink: &mut Sink,
) -> (Option<String>, Option<AdapterInstance>) {
    let at = format!("adapters.{name}");
    let before = sink.count();
    if !valid_name(name) {
        sink.err(
            &at,
            format!(
                "`{name}` cannot be an adapter name: use lowercase letters, digits, `_` and `-`"
            ),
        );
    }
    let known: Vec<&str> = kinds.names().collect();
    let Some((kind, rest)) = kind_and_rest(value, &at, &known.join(", "), sink) else {
        return (None, None);
    };
    if BUILTIN_INSTANCES.contains(&name) && kind != name {
        sink.err(
            join(&at, "kind"),
            format!(
                "`{name}` is a built-in adapter; an instance named `{name}` must have kind `{name}`"
            ),
        );
        return (None, None);
    }
    let Some(adapter_kind) = kinds.get(&kind) else {
        sink.err(
            join(&at, "kind"),
            format!(
                "unknown adapter kind `{kind}`: this baton knows {}",
                known.join(", ")
            ),
        );
        return (None, None);
    };
    for e in adapter_kind.validate_instance(&rest) {
        sink.err(join(&at, &e.path), e.message);
    }
    let instance = (sink.count() == before).then(|| AdapterInstance {
        kind: kind.clone(),
        config: rest,
    });
    (Some(kind), instance)
}
