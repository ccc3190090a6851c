//! A `[relays.*]` block: the sources whose deliveries it forwards, its condition, and its
//! targets (read in `target`), with what they inherit from the relay filled in.

mod target;

use std::time::Duration;

use baton_core::typed::duration_in_range;
use baton_core::{Expr, HumanDuration};
use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::Value;

use super::{table, valid_name};
use crate::check::{fields_of, type_name, typed_partial};
use crate::diagnostic::{Sink, join};
use crate::gateway::*;

use target::{TargetName, read_target};

/// The most entries a `schedule` may have: more tries than that are a mistake, and each is
/// a row to keep for every message.
const MAX_SCHEDULE_ENTRIES: usize = 30;

/// The longest delay between two tries: a message is not worth sending a week late.
const LONGEST_RETRY_DELAY: Duration = Duration::from_secs(7 * 86_400);

/// The file form of `[relays.<name>]`; `from`, `schedule` and `to` are read by hand, as
/// each takes more than one shape.
#[derive(Debug, Deserialize)]
struct RelayRaw {
    /// A source name, or a list of them.
    #[serde(default)]
    from: Option<Value>,
    /// A jq condition on the payload.
    #[serde(default, rename = "if")]
    condition: Option<String>,
    /// The delays between tries, for every target without its own.
    #[serde(default)]
    schedule: Option<Value>,
    /// The targets.
    #[serde(default)]
    to: Option<Value>,
}

/// Reads `[relays.<name>]`, whose `from` must name a source in `sources` (broken ones
/// included, so that a relay naming one gets no second problem). Returns the relay when
/// nothing in it is wrong.
pub(super) fn read_relay(
    name: &str,
    value: &Value,
    sources: &IndexMap<String, Option<SourceConfig>>,
    sink: &mut Sink,
) -> Option<RelayConfig> {
    let at = format!("relays.{name}");
    let before = sink.count();
    if !valid_name(name) {
        sink.err(
            &at,
            format!("`{name}` cannot be a relay name (the CLI and the API name relays in their URLs): use lowercase letters, digits, `_` and `-`"),
        );
    }
    table(value, &at, sink)?;
    let (raw, _) = typed_partial::<RelayRaw>(value, &at, &[("", fields_of::<RelayRaw>())], sink)?;
    let from = read_from(raw.from.as_ref(), &at, sources, sink);
    let condition = raw
        .condition
        .and_then(|code| compile(&code, &join(&at, "if"), sink));
    let schedule = raw
        .schedule
        .map(|value| read_schedule(&value, &join(&at, "schedule"), sink));
    let to = read_targets(
        raw.to.as_ref(),
        &at,
        schedule.as_deref().unwrap_or(&DEFAULT_RELAY_SCHEDULE),
        sink,
    );
    (sink.count() == before).then_some(RelayConfig {
        from,
        condition,
        to,
    })
}

/// `from`: one source name or a non-empty list of them, each a `[sources.*]` block, each
/// once.
fn read_from(
    value: Option<&Value>,
    at: &str,
    sources: &IndexMap<String, Option<SourceConfig>>,
    sink: &mut Sink,
) -> Vec<String> {
    let key = join(at, "from");
    let named: Vec<(String, &str)> = match value {
        None => {
            sink.err(
                key,
                "missing required key `from`: the source whose deliveries this relay forwards, like `from = \"github\"`, or a list of them",
            );
            return Vec::new();
        }
        Some(Value::String(name)) => vec![(key, name.as_str())],
        Some(Value::Array(items)) if items.is_empty() => {
            sink.err(
                key,
                "expected at least one source name, found an empty list",
            );
            return Vec::new();
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let at = format!("{key}[{i}]");
                match item {
                    Value::String(name) => Some((at, name.as_str())),
                    other => {
                        sink.err(
                            at,
                            format!("expected a source name, found {}", type_name(other)),
                        );
                        None
                    }
                }
            })
            .collect(),
        Some(other) => {
            sink.err(
                key,
                format!(
                    "expected a source name or a list of them, like `from = \"github\"` or `from = [\"github\", \"gitlab\"]`, found {}",
                    type_name(other)
                ),
            );
            return Vec::new();
        }
    };
    let expected = || -> String {
        if sources.is_empty() {
            "the config has no [sources]: declare the webhook source in `[sources.<name>]`"
                .to_owned()
        } else {
            let names: Vec<&str> = sources.keys().map(String::as_str).collect();
            format!("expected a [sources] name: {}", names.join(", "))
        }
    };
    for (i, (path, name)) in named.iter().enumerate() {
        if *name == "manual" {
            sink.err(
                path,
                format!(
                    "`manual` stands for runs started by hand, which have no delivery to relay: {}",
                    expected()
                ),
            );
        } else if !sources.contains_key(*name) {
            sink.err(path, format!("unknown source `{name}`: {}", expected()));
        } else if let Some((first, _)) = named[..i].iter().find(|(_, n)| n == name) {
            sink.err(
                path,
                format!("source `{name}` is already listed at {first}"),
            );
        }
    }
    named.into_iter().map(|(_, name)| name.to_owned()).collect()
}

/// `to`: a non-empty list of target tables, with names unique in the relay; `inherited` is
/// the schedule of a target without its own.
fn read_targets(
    value: Option<&Value>,
    at: &str,
    inherited: &[Duration],
    sink: &mut Sink,
) -> Vec<RelayTarget> {
    let key = join(at, "to");
    let example = format!("`[[{key}]]` tables with `url` and `sign`");
    let items = match value {
        None => {
            sink.err(
                key,
                format!("missing required key `to`: the targets to forward to, {example}"),
            );
            return Vec::new();
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            sink.err(
                key,
                format!(
                    "expected a list of targets, {example}, found {}",
                    type_name(other)
                ),
            );
            return Vec::new();
        }
    };
    if items.is_empty() {
        sink.err(
            &key,
            format!("expected at least one target, {example}, found an empty list"),
        );
    }
    let mut targets = Vec::new();
    let mut names: Vec<(usize, TargetName)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{key}[{i}]");
        let (name, target) = read_target(item, &at, inherited, sink);
        if let Some(name) = name {
            match names.iter().find(|(_, earlier)| earlier.text == name.text) {
                Some((first, earlier)) => sink.err(
                    join(&at, "name"),
                    if earlier.defaulted || name.defaulted {
                        format!(
                            "{key}[{first}] is also named `{}` (a target's name defaults to its URL's host, with `-<port>` when the URL gives a port): give each target a `name`",
                            name.text
                        )
                    } else {
                        format!(
                            "{key}[{first}] is already named `{}`: a target's name is unique in its relay",
                            name.text
                        )
                    },
                ),
                None => names.push((i, name)),
            }
        }
        targets.extend(target);
    }
    targets
}

/// Compiles the jq expression at `key`.
fn compile(code: &str, key: &str, sink: &mut Sink) -> Option<Expr> {
    Expr::compile(code)
        .map_err(|e| sink.err(key, e.to_string()))
        .ok()
}

/// A `schedule` (at `key`): a list of at most [`MAX_SCHEDULE_ENTRIES`] delays, each longer
/// than 0s and at most [`LONGEST_RETRY_DELAY`]. An empty list is a single try.
fn read_schedule(value: &Value, key: &str, sink: &mut Sink) -> Vec<Duration> {
    let Value::Array(items) = value else {
        sink.err(
            key,
            format!(
                "expected a list of delays between tries, like `[\"5s\", \"5m\", \"1h\"]`, found {}",
                type_name(value)
            ),
        );
        return Vec::new();
    };
    if items.len() > MAX_SCHEDULE_ENTRIES {
        sink.err(
            key,
            format!(
                "{} delays are too many: expected at most {MAX_SCHEDULE_ENTRIES}",
                items.len()
            ),
        );
    }
    let mut schedule = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{key}[{i}]");
        let delay = match item {
            Value::String(text) => HumanDuration::parse(text)
                .map_err(|e| sink.err(&at, e.to_string()))
                .ok(),
            other => {
                sink.err(
                    &at,
                    format!(
                        "expected a delay, like `5s` or `5m`, found {}",
                        type_name(other)
                    ),
                );
                None
            }
        };
        schedule.extend(delay.and_then(|d| bounded(d.0, LONGEST_RETRY_DELAY, &at, sink)));
    }
    schedule
}

/// `value` when it is longer than 0s and at most `longest`; else a problem at `key`.
fn bounded(value: Duration, longest: Duration, key: &str, sink: &mut Sink) -> Option<Duration> {
    let mut problems = Vec::new();
    let checked = duration_in_range(
        key,
        Some(HumanDuration(value)),
        value,
        longest,
        &mut problems,
    );
    for problem in problems {
        sink.err(problem.path, problem.message);
    }
    checked
}
