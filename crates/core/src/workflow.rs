//! Workflows: the file form ([`WorkflowSpec`]) and the compiled form ([`Workflow`]).
//!
//! Compiling checks everything that needs no other file: ids, `needs` (existing, acyclic),
//! jq syntax, templates that read stages which are not upstream, durations and retry bounds.
//! Every problem is collected; nothing stops at the first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use indexmap::IndexMap;
use petgraph::graphmap::DiGraphMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::duration::HumanDuration;
use crate::expr::{Expr, TemplatedValue};

/// A workflow as written in a file.
///
/// Unknown keys are collected by the loader (see `baton-config`) rather than rejected by
/// serde one at a time, so that a user sees every problem in one pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowSpec {
    /// Unique across the config; used in the CLI, the API and commit status contexts.
    pub name: String,
    /// Events that start a run; any entry that matches starts one.
    #[serde(default)]
    pub on: Vec<TriggerSpec>,
    /// The stages, by id. Order in the file does not matter; `needs` gives the order.
    pub stages: IndexMap<String, StageSpec>,
    /// Sources to report run and stage status back to (commit statuses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub report: Vec<String>,
}

/// One `on:` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerSpec {
    /// A `[sources.*]` name, or `manual` for the CLI, API and UI.
    pub source: String,
    /// The event type (`X-GitHub-Event`, `X-Gitlab-Event`, a generic source's type); absent
    /// means any event of the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// A jq condition on the delivery's payload.
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

/// One stage as written in a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSpec {
    /// Stage ids this stage waits for.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "one_or_many"
    )]
    pub needs: Vec<String>,
    /// An `[adapters.*]` instance name, or the built-in `exec` / `approval`.
    pub uses: String,
    /// The adapter's input; strings may hold `${{ jq }}` templates.
    #[serde(default = "empty_object", skip_serializing_if = "is_empty_object")]
    pub with: Value,
    /// A jq condition on the run context; false skips the stage.
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Bounds each attempt, queueing included; the config's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// New attempts after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// What a failure of this stage does to the run.
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// `retry: { attempts, backoff }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetrySpec {
    /// How many attempts in all, the first included (`attempts: 3` is two retries).
    pub attempts: u32,
    /// The wait before the first retry; each later retry waits twice the one before.
    #[serde(default = "default_backoff")]
    pub backoff: HumanDuration,
}

/// What a stage failure does to the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Cancel the running stages and fail the run.
    #[default]
    Halt,
    /// Let other branches go on; the run fails at the end.
    Continue,
    /// Keep the `failed` status but count as succeeded for `needs` and for the run.
    Ignore,
}

fn default_backoff() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

fn is_empty_object(v: &Value) -> bool {
    v.as_object().is_some_and(|m| m.is_empty())
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// A problem found while compiling a workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowError {
    /// Key path inside the workflow file (`stages.deploy.needs[1]`).
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl WorkflowError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Settings that stages inherit when they do not set their own, and what the adapter
/// instances they name declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageDefaults {
    /// The timeout of a stage without `timeout:`.
    pub timeout: Duration,
    /// By adapter instance name, the `with:` keys that hold shell scripts (the
    /// [`AdapterKind::script_keys`](crate::AdapterKind::script_keys) of the instance's kind):
    /// their templates are quoted as literal text. Default: none.
    pub script_keys: BTreeMap<String, &'static [&'static str]>,
}

impl Default for StageDefaults {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(3600),
            script_keys: BTreeMap::new(),
        }
    }
}

/// A compiled trigger.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// The source name.
    pub source: String,
    /// The event type, or any.
    pub event: Option<String>,
    /// The compiled condition on the payload.
    pub condition: Option<Expr>,
}

impl Trigger {
    /// True when this entry names `source` and `event` (its `if` aside).
    pub fn names(&self, source: &str, event: &str) -> bool {
        self.source == source && self.event.as_deref().is_none_or(|e| e == event)
    }

    /// True when a delivery of `source`/`event` with `payload` (parsed with
    /// [`parse_val`](crate::expr::parse_val)) starts a run.
    pub fn matches(
        &self,
        source: &str,
        event: &str,
        payload: &jaq_json::Val,
    ) -> Result<bool, crate::expr::EvalError> {
        if !self.names(source, event) {
            return Ok(false);
        }
        self.holds(payload)
    }

    /// True when this entry's `if` holds for `payload` (or it has none): [`Trigger::matches`]
    /// for a caller that checked [`Trigger::names`] already.
    pub fn holds(&self, payload: &jaq_json::Val) -> Result<bool, crate::expr::EvalError> {
        match &self.condition {
            Some(condition) => condition.is_true_val(payload.clone()),
            None => Ok(true),
        }
    }
}

/// The retry policy of a compiled stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// Wait before the first retry.
    pub backoff: Duration,
}

impl Retry {
    /// The wait before attempt `next` (2 is the first retry); doubles each time, capped at a day.
    pub fn delay_before(&self, next: u32) -> Duration {
        let doublings = next.saturating_sub(2).min(16);
        self.backoff
            .saturating_mul(1 << doublings)
            .min(Duration::from_secs(86_400))
    }
}

/// A compiled stage.
#[derive(Debug, Clone)]
pub struct Stage {
    /// The stage id.
    pub id: String,
    /// The adapter instance name.
    pub uses: String,
    /// The compiled `with:` block.
    pub with: TemplatedValue,
    /// The compiled `if:`.
    pub condition: Option<Expr>,
    /// Bounds each attempt.
    pub timeout: Duration,
    /// Retry policy.
    pub retry: Retry,
    /// Failure policy.
    pub on_failure: OnFailure,
    /// Indexes (into [`Workflow::stages`]) of the stages this one needs.
    pub needs: Vec<usize>,
    /// Indexes of the stages that need this one.
    pub dependents: Vec<usize>,
}

/// A compiled, checked workflow: stages in an order where needs come first.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// The file form, kept so a run can store exactly what it runs.
    pub spec: WorkflowSpec,
    /// Compiled triggers.
    pub triggers: Vec<Trigger>,
    /// Stages in topological order.
    pub stages: Vec<Stage>,
    index: HashMap<String, usize>,
}

impl Workflow {
    /// The workflow's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The stage with `id`.
    pub fn stage(&self, id: &str) -> Option<&Stage> {
        self.index.get(id).map(|&i| &self.stages[i])
    }

    /// The index of the stage with `id`.
    pub fn stage_index(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Compiles `spec`, collecting every problem.
    pub fn compile(
        spec: WorkflowSpec,
        defaults: StageDefaults,
    ) -> Result<Self, Vec<WorkflowError>> {
        let mut errors = Vec::new();
        if !valid_name(&spec.name) {
            errors.push(WorkflowError::new(
                "name",
                format!(
                    "`{}` is not a valid workflow name: use letters, digits, `_`, `-` and `.`",
                    spec.name
                ),
            ));
        }
        if spec.stages.is_empty() {
            errors.push(WorkflowError::new(
                "stages",
                "a workflow needs at least one stage",
            ));
        }

        let triggers = compile_triggers(&spec, &mut errors);
        let order = stage_order(&spec, &mut errors);
        let position: HashMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let upstream = upstream_closures(&spec);

        // Checked in file order, so problems read top to bottom; stored in `order`.
        let mut slots: Vec<Option<Stage>> = vec![None; order.len()];
        for (id, stage) in &spec.stages {
            let path = format!("stages.{id}");
            let script_keys = defaults.script_keys.get(&stage.uses).copied();
            let with = match TemplatedValue::compile_with_scripts(
                &stage.with,
                script_keys.unwrap_or_default(),
            ) {
                Ok(with) => with,
                Err(errs) => {
                    for e in errs {
                        let at = if e.path.is_empty() {
                            format!("{path}.with")
                        } else {
                            format!("{path}.with.{}", e.path)
                        };
                        errors.push(WorkflowError::new(at, e.error.to_string()));
                    }
                    TemplatedValue::Literal(Value::Null)
                }
            };
            let condition = stage
                .condition
                .as_deref()
                .and_then(|code| match Expr::compile(code) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        errors.push(WorkflowError::new(format!("{path}.if"), e.to_string()));
                        None
                    }
                });
            let empty = BTreeSet::new();
            let reachable = upstream.get(id.as_str()).unwrap_or(&empty);
            let sources = with
                .expressions()
                .into_iter()
                .map(|e| ("with", e))
                .chain(condition.iter().map(|e| ("if", e)));
            for (key, expr) in sources {
                for read in stage_references(expr.source()) {
                    if !spec.stages.contains_key(read.as_str()) {
                        errors.push(WorkflowError::new(
                            format!("{path}.{key}"),
                            format!(
                                "`{}` reads `.stages.{read}`, but there is no stage `{read}`",
                                expr.source()
                            ),
                        ));
                    } else if !reachable.contains(read.as_str()) {
                        errors.push(WorkflowError::new(
                            format!("{path}.{key}"),
                            format!(
                                "`{}` reads stage `{read}`, which is not upstream of `{id}`: add `{read}` to `needs` (directly or through a stage it needs)",
                                expr.source()
                            ),
                        ));
                    }
                }
            }
            let timeout = stage.timeout.map(|t| t.0).unwrap_or(defaults.timeout);
            if timeout.is_zero() {
                errors.push(WorkflowError::new(
                    format!("{path}.timeout"),
                    "a timeout must be longer than 0s",
                ));
            }
            let retry = match stage.retry {
                Some(r) if r.attempts == 0 => {
                    errors.push(WorkflowError::new(
                        format!("{path}.retry.attempts"),
                        "expected at least 1 (the first attempt counts)",
                    ));
                    Retry {
                        attempts: 1,
                        backoff: r.backoff.0,
                    }
                }
                Some(r) if r.attempts > 100 => {
                    errors.push(WorkflowError::new(
                        format!("{path}.retry.attempts"),
                        "expected at most 100 attempts",
                    ));
                    Retry {
                        attempts: 100,
                        backoff: r.backoff.0,
                    }
                }
                Some(r) => Retry {
                    attempts: r.attempts,
                    backoff: r.backoff.0,
                },
                None => Retry {
                    attempts: 1,
                    backoff: default_backoff().0,
                },
            };
            slots[position[id.as_str()]] = Some(Stage {
                id: id.clone(),
                uses: stage.uses.clone(),
                with,
                condition,
                timeout,
                retry,
                on_failure: stage.on_failure,
                needs: stage
                    .needs
                    .iter()
                    .filter_map(|n| position.get(n.as_str()).copied())
                    .collect(),
                dependents: Vec::new(),
            });
        }
        let mut stages: Vec<Stage> = slots.into_iter().flatten().collect();
        for i in 0..stages.len() {
            for n in stages[i].needs.clone() {
                stages[n].dependents.push(i);
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let index = stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
        Ok(Self {
            spec,
            triggers,
            stages,
            index,
        })
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// True for stage ids as the format allows them: `[a-z0-9_-]+`.
pub fn valid_stage_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

fn compile_triggers(spec: &WorkflowSpec, errors: &mut Vec<WorkflowError>) -> Vec<Trigger> {
    spec.on
        .iter()
        .enumerate()
        .map(|(i, t)| Trigger {
            source: t.source.clone(),
            event: t.event.clone(),
            condition: t
                .condition
                .as_deref()
                .and_then(|code| match Expr::compile(code) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        errors.push(WorkflowError::new(format!("on[{i}].if"), e.to_string()));
                        None
                    }
                }),
        })
        .collect()
}

/// Checks ids and `needs`, reports every cycle, and returns the stage ids with needs first
/// (file order where the graph is broken, so later checks still run).
fn stage_order(spec: &WorkflowSpec, errors: &mut Vec<WorkflowError>) -> Vec<String> {
    let mut graph: DiGraphMap<&str, ()> = DiGraphMap::new();
    for (id, stage) in &spec.stages {
        graph.add_node(id.as_str());
        if !valid_stage_id(id) {
            errors.push(WorkflowError::new(
                format!("stages.{id}"),
                format!(
                    "`{id}` is not a valid stage id: use lowercase letters, digits, `_` and `-`"
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, need) in stage.needs.iter().enumerate() {
            let path = format!("stages.{id}.needs[{i}]");
            if need == id {
                errors.push(WorkflowError::new(
                    path,
                    format!("stage `{id}` cannot need itself"),
                ));
            } else if !spec.stages.contains_key(need.as_str()) {
                let known: Vec<&str> = spec.stages.keys().map(String::as_str).collect();
                errors.push(WorkflowError::new(
                    path,
                    format!(
                        "no stage `{need}` in this workflow (stages: {})",
                        known.join(", ")
                    ),
                ));
            } else if !seen.insert(need.as_str()) {
                errors.push(WorkflowError::new(
                    path,
                    format!("`{need}` is listed twice"),
                ));
            } else {
                graph.add_edge(need.as_str(), id.as_str(), ());
            }
        }
    }
    match petgraph::algo::toposort(&graph, None) {
        Ok(order) => order.into_iter().map(str::to_owned).collect(),
        Err(_) => {
            for component in petgraph::algo::tarjan_scc(&graph) {
                if component.len() > 1 {
                    let mut names: Vec<&str> = component.clone();
                    names.sort_unstable();
                    let first = names[0];
                    errors.push(WorkflowError::new(
                        format!("stages.{first}.needs"),
                        format!("stages {} need each other in a cycle; `needs` must form a graph without cycles", names.join(", ")),
                    ));
                }
            }
            spec.stages.keys().cloned().collect()
        }
    }
}

/// For each stage, every stage reachable through `needs` (its upstream).
fn upstream_closures(spec: &WorkflowSpec) -> HashMap<&str, BTreeSet<&str>> {
    fn visit<'a>(spec: &'a WorkflowSpec, id: &'a str, out: &mut BTreeSet<&'a str>) {
        if let Some(stage) = spec.stages.get(id) {
            for need in &stage.needs {
                if out.insert(need.as_str()) {
                    visit(spec, need.as_str(), out);
                }
            }
        }
    }
    spec.stages
        .keys()
        .map(|id| {
            let mut set = BTreeSet::new();
            visit(spec, id, &mut set);
            set.remove(id.as_str());
            (id.as_str(), set)
        })
        .collect()
}

/// The stage ids a jq expression reads through `.stages`: `.stages.x`, `.stages."x-y"`,
/// `.stages["x-y"]` and `.stages.["x"]`.
pub fn stage_references(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes = source.as_bytes();
    let mut from = 0;
    while let Some(pos) = source[from..].find(".stages") {
        let start = from + pos;
        let mut i = start + ".stages".len();
        from = i;
        // `.stagesfoo` is another key, not `.stages`.
        if bytes
            .get(i)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            continue;
        }
        // `$x.stages`, `.a.stages` and the like are not the context's stages.
        if start > 0
            && (bytes[start - 1].is_ascii_alphanumeric()
                || matches!(bytes[start - 1], b'_' | b']' | b')' | b'"' | b'$'))
        {
            continue;
        }
        while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if bytes.get(i) == Some(&b'.') {
            i += 1;
        }
        let name = match bytes.get(i) {
            Some(b'"') => quoted(&source[i + 1..]),
            Some(b'[') => {
                let inner = source[i + 1..].trim_start();
                inner.strip_prefix('"').and_then(quoted)
            }
            Some(b) if b.is_ascii_alphabetic() || *b == b'_' => {
                let end = source[i..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(source.len(), |e| i + e);
                Some(source[i..end].to_owned())
            }
            _ => None,
        };
        if let Some(name) = name
            && !found.contains(&name)
        {
            found.push(name);
        }
    }
    found
}

fn quoted(text: &str) -> Option<String> {
    text.find('"').map(|end| text[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: Value) -> WorkflowSpec {
        serde_json::from_value(value).unwrap()
    }

    fn errors(value: Value) -> Vec<WorkflowError> {
        Workflow::compile(spec(value), StageDefaults::default()).unwrap_err()
    }

    #[test]
    fn orders_stages_needs_first() {
        let wf = Workflow::compile(
            spec(json!({"name": "w", "stages": {
                "c": {"uses": "exec", "needs": ["a", "b"]},
                "b": {"uses": "exec", "needs": "a"},
                "a": {"uses": "exec"}
            }})),
            StageDefaults::default(),
        )
        .unwrap();
        let ids: Vec<_> = wf.stages.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let c = wf.stage("c").unwrap();
        assert_eq!(c.needs.len(), 2);
        assert_eq!(wf.stage("a").unwrap().dependents.len(), 2);
    }

    #[test]
    fn reports_unknown_self_and_duplicate_needs_together() {
        let errs = errors(json!({"name": "w", "stages": {
            "a": {"uses": "exec", "needs": ["a", "nope"]},
            "b": {"uses": "exec", "needs": ["a", "a"]}
        }}));
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "stages.a.needs[0]",
                "stages.a.needs[1]",
                "stages.b.needs[1]"
            ]
        );
        assert!(errs[1].message.contains("no stage `nope`"));
    }

    #[test]
    fn reports_cycles() {
        let errs = errors(json!({"name": "w", "stages": {
            "a": {"uses": "exec", "needs": ["c"]},
            "b": {"uses": "exec", "needs": ["a"]},
            "c": {"uses": "exec", "needs": ["b"]},
            "d": {"uses": "exec"}
        }}));
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0]
                .message
                .contains("a, b, c need each other in a cycle"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn reports_reads_of_stages_not_upstream() {
        let errs = errors(json!({"name": "w", "stages": {
            "a": {"uses": "exec"},
            "b": {"uses": "exec", "with": {"x": "${{ .stages.a.outputs.v }}"}},
            "c": {"uses": "exec", "needs": ["b"], "if": ".stages[\"a\"].status == \"succeeded\"",
                  "with": {"y": "${{ .stages.zz.outputs }}", "z": "${{ .stages.b.outputs }}"}}
        }}));
        let got: Vec<_> = errs
            .iter()
            .map(|e| (e.path.as_str(), e.message.contains("not upstream")))
            .collect();
        assert_eq!(
            got,
            [
                ("stages.b.with", true),
                ("stages.c.with", false),
                ("stages.c.if", true)
            ]
        );
        assert!(
            errs[1].message.contains("no stage `zz`"),
            "{}",
            errs[1].message
        );
    }

    #[test]
    fn reports_jq_errors_ids_timeouts_and_retries_at_once() {
        let errs = errors(
            json!({"name": "bad name", "on": [{"source": "gh", "if": ".a |"}], "stages": {
                "Bad": {"uses": "exec", "if": "(((", "timeout": "0s", "retry": {"attempts": 0}},
                "ok": {"uses": "exec", "with": {"a": ["${{ ][ }}"]}}
            }}),
        );
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "name",
                "on[0].if",
                "stages.Bad",
                "stages.Bad.if",
                "stages.Bad.timeout",
                "stages.Bad.retry.attempts",
                "stages.ok.with.a[0]"
            ]
        );
    }

    #[test]
    fn finds_stage_references_in_every_form() {
        assert_eq!(stage_references(".stages.a.outputs"), ["a"]);
        assert_eq!(
            stage_references(".stages.\"my-stage\".outputs"),
            ["my-stage"]
        );
        assert_eq!(
            stage_references(".stages[\"x-y\"] | .stages.[\"z\"]"),
            ["x-y", "z"]
        );
        assert_eq!(
            stage_references(".event.stages.a, $v.stages.b, .stagesx"),
            Vec::<String>::new()
        );
        assert_eq!(stage_references(".stages.a + .stages.a"), ["a"]);
    }

    #[test]
    fn templates_in_the_script_keys_of_the_named_instance_are_quoted() {
        let mut defaults = StageDefaults::default();
        defaults.script_keys.insert("exec".into(), &["run"]);
        let wf = Workflow::compile(
            spec(json!({"name": "w", "stages": {
                "a": {"uses": "exec", "with": {"run": "echo ${{ .x }}", "env": {"X": "${{ .x }}"}}},
                "b": {"uses": "ci", "with": {"run": "echo ${{ .x }}"}}
            }})),
            defaults.clone(),
        )
        .unwrap();
        let ctx = crate::expr::to_val(&json!({"x": "a b;c"}));
        let render = |id: &str| wf.stage(id).unwrap().with.render(&ctx).unwrap();
        assert_eq!(
            render("a"),
            json!({"run": "echo 'a b;c'", "env": {"X": "a b;c"}})
        );
        assert_eq!(render("b"), json!({"run": "echo a b;c"}));

        let errs = Workflow::compile(
            spec(json!({"name": "w", "stages": {
                "a": {"uses": "exec", "with": {"run": "cat <<E\n${{ .x }}\nE"}}
            }})),
            defaults,
        )
        .unwrap_err();
        assert_eq!(errs[0].path, "stages.a.with.run");
        assert!(
            errs[0].message.contains("here-document"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn retry_delay_doubles() {
        let r = Retry {
            attempts: 5,
            backoff: Duration::from_secs(10),
        };
        assert_eq!(r.delay_before(2), Duration::from_secs(10));
        assert_eq!(r.delay_before(3), Duration::from_secs(20));
        assert_eq!(r.delay_before(4), Duration::from_secs(40));
    }

    #[test]
    fn triggers_match_source_event_and_condition() {
        let wf = Workflow::compile(
            spec(json!({"name": "w", "on": [{"source": "gh", "event": "push", "if": ".ref == \"refs/heads/main\""}],
                        "stages": {"a": {"uses": "exec"}}})),
            StageDefaults::default(),
        )
        .unwrap();
        let t = &wf.triggers[0];
        let check = |source: &str, event: &str, body: &str| {
            t.matches(source, event, &crate::expr::parse_val(body).unwrap())
                .unwrap()
        };
        assert!(check("gh", "push", r#"{"ref": "refs/heads/main"}"#));
        assert!(!check("gh", "push", r#"{"ref": "refs/heads/dev"}"#));
        assert!(!check(
            "gh",
            "pull_request",
            r#"{"ref": "refs/heads/main"}"#
        ));
        assert!(!check("gl", "push", r#"{"ref": "refs/heads/main"}"#));
        // No output (`empty`) and `null` are false; an error is an error.
        let only = |code: &str| {
            Expr::compile(code)
                .unwrap()
                .is_true_val(crate::expr::parse_val("{}").unwrap())
        };
        assert!(!only("empty").unwrap());
        assert!(!only(".missing").unwrap());
        assert!(only("1, false").unwrap());
        assert!(only("error(\"no\")").is_err());
    }
}
