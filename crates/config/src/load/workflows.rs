//! The workflow files: found through the config's globs, read, compiled, and checked
//! against what the config declares.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use baton_core::workflow::{RetrySpec, TriggerSpec};
use baton_core::{Kinds, StageDefaults, StageSpec, Workflow, WorkflowSpec};
use indexmap::IndexMap;
use serde_json::{Map, Value};

use super::{Declared, table};
use crate::check::{check_keys, fields_of, type_name, typed};
use crate::diagnostic::{Sink, join};
use crate::document::read_document;
use crate::gateway::*;

/// Finds the workflow files: the globs' matches, then `extra`; each file once.
pub(super) fn workflow_paths(
    config: &GatewayConfig,
    extra: &[PathBuf],
    sink: &mut Sink,
) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let globs = config.workflow_globs();
    for (i, pattern) in config.workflows.iter().enumerate() {
        let at = format!("workflows[{i}]");
        let full = globs.absolute(pattern);
        let paths = match glob::glob(&full) {
            Ok(paths) => paths,
            Err(e) => {
                sink.err(at, format!("`{pattern}` is not a valid glob: {}", e.msg));
                continue;
            }
        };
        let mut found = 0;
        for entry in paths {
            match entry {
                Ok(path) if path.is_file() => {
                    files.push(path);
                    found += 1;
                }
                Ok(_) => {}
                Err(e) => sink.err(
                    &at,
                    format!("cannot read {}: {}", e.path().display(), e.error()),
                ),
            }
        }
        if found == 0 {
            sink.err(
                at,
                format!(
                    "`{pattern}` matches no file (looked in {})",
                    config.base_dir.display()
                ),
            );
        }
    }
    files.extend(extra.iter().cloned());
    let mut seen = BTreeSet::new();
    files.retain(|f| seen.insert(f.canonicalize().unwrap_or_else(|_| f.clone())));
    files
}

/// What a workflow is checked against: the adapter kinds and what the gateway config
/// declares.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) kinds: Kinds,
    pub(crate) declared: Declared,
    pub(crate) defaults: StageDefaults,
    pub(crate) has_config: bool,
}

/// Reads, checks and compiles one workflow file. Returns its name when it could be read (for
/// the uniqueness check) and the workflow when the file has no problem.
pub(super) fn read_workflow(
    file: &Path,
    context: &Context,
    sink: &mut Sink,
) -> (Option<String>, Option<Workflow>) {
    match read_document(file, sink) {
        None => (None, None),
        Some(document) => check_workflow(&document, context, sink),
    }
}

/// Checks and compiles one workflow read from a file or from the editor: every check
/// `baton validate` makes of a workflow file once it is parsed. Returns the workflow's name
/// when it could be read and the workflow when it has no problem.
pub(crate) fn check_workflow(
    document: &Value,
    context: &Context,
    sink: &mut Sink,
) -> (Option<String>, Option<Workflow>) {
    let before = sink.count();
    let map = match document {
        Value::Object(map) => map,
        Value::Null => {
            sink.err(
                "",
                "the file is empty: a workflow needs `name` and `stages`",
            );
            return (None, None);
        }
        other => {
            sink.err(
                "",
                format!(
                    "expected a workflow (a map with `name`, `on`, `stages`) at the top of the file, found {}",
                    type_name(other)
                ),
            );
            return (None, None);
        }
    };
    check_keys(map, "", fields_of::<WorkflowSpec>(), sink);
    // Paths whose problems were already reported; compile errors under them are noise.
    let mut reported: Vec<String> = Vec::new();

    let name = match map.get("name") {
        None => {
            sink.err(
                "name",
                "missing required key `name`: every workflow needs a unique name",
            );
            None
        }
        Some(v) => typed::<String>(v, "name", &[], sink),
    };
    if name.is_none() {
        reported.push("name".to_owned());
    }

    let mut on = Vec::new();
    let mut good_triggers = Vec::new();
    match map.get("on") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("on[{i}]");
                let trigger = if table(item, &at, sink).is_some() {
                    typed::<TriggerSpec>(item, &at, &[("", fields_of::<TriggerSpec>())], sink)
                } else {
                    None
                };
                if trigger.is_some() {
                    good_triggers.push(i);
                } else {
                    reported.push(at);
                }
                on.push(trigger.unwrap_or(TriggerSpec {
                    source: String::new(),
                    event: None,
                    condition: None,
                }));
            }
        }
        Some(other) => sink.err(
            "on",
            format!(
                "expected a list of triggers, like `- source: manual`; found {}",
                type_name(other)
            ),
        ),
    }

    let mut stages = IndexMap::new();
    let mut checkable_stages = Vec::new();
    match map.get("stages") {
        None => {
            sink.err(
                "stages",
                "missing required key `stages`: a workflow needs at least one stage",
            );
            reported.push("stages".to_owned());
        }
        Some(Value::Object(items)) => {
            for (id, item) in items {
                let at = format!("stages.{id}");
                let stage = if table(item, &at, sink).is_some() {
                    typed::<StageSpec>(
                        item,
                        &at,
                        &[
                            ("", fields_of::<StageSpec>()),
                            ("retry", fields_of::<RetrySpec>()),
                        ],
                        sink,
                    )
                } else {
                    None
                };
                let stage = match stage {
                    Some(stage) => {
                        checkable_stages.push(id.clone());
                        stage
                    }
                    None => {
                        let (stage, needs_ok) = stand_in_stage(item);
                        if !needs_ok {
                            reported.push(format!("{at}.needs"));
                        }
                        // Its `uses` and `with` can still be checked when `uses` is readable.
                        if !stage.uses.is_empty() {
                            checkable_stages.push(id.clone());
                        }
                        stage
                    }
                };
                stages.insert(id.clone(), stage);
            }
        }
        Some(other) => {
            sink.err(
                "stages",
                format!(
                    "expected a map of stage id to stage, like `build: {{ uses: exec, with: {{ run: make }} }}`; found {}",
                    type_name(other)
                ),
            );
            reported.push("stages".to_owned());
        }
    }

    let report = match map.get("report") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => typed::<Vec<String>>(v, "report", &[], sink).unwrap_or_default(),
    };

    let spec = WorkflowSpec {
        name: name.clone().unwrap_or_default(),
        on,
        stages,
        report,
    };
    check_references(&spec, &good_triggers, &checkable_stages, context, sink);
    let compiled = match Workflow::compile(spec, context.defaults.clone()) {
        Ok(workflow) => Some(workflow),
        Err(errors) => {
            for e in errors {
                let noise = reported.iter().any(|r| {
                    e.path == *r
                        || e.path.starts_with(&format!("{r}."))
                        || e.path.starts_with(&format!("{r}["))
                        // A stand-in stage with unreadable `needs` has no upstream.
                        || (r.ends_with(".needs")
                            && e.path.starts_with(r.trim_end_matches("needs"))
                            && e.message.contains("not upstream"))
                });
                if !noise {
                    sink.err(e.path, e.message);
                }
            }
            None
        }
    };
    let workflow = compiled.filter(|_| sink.count() == before);
    (name, workflow)
}

/// A stage that could not be read, rebuilt from its readable parts so that they and the rest
/// of the workflow can still be checked. `uses` is empty when unreadable; the flag is false
/// when `needs` was unreadable.
pub(super) fn stand_in_stage(value: &Value) -> (StageSpec, bool) {
    let (needs, needs_ok) = match value.get("needs") {
        None => (Vec::new(), true),
        Some(Value::String(s)) => (vec![s.clone()], true),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => (
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            true,
        ),
        Some(_) => (Vec::new(), false),
    };
    let stage = StageSpec {
        needs,
        uses: value
            .get("uses")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        with: value
            .get("with")
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new())),
        condition: value.get("if").and_then(Value::as_str).map(str::to_owned),
        timeout: None,
        retry: None,
        on_failure: Default::default(),
    };
    (stage, needs_ok)
}

/// Checks what a workflow names in the gateway config: sources, adapter instances, and each
/// stage's `with:` against its adapter kind.
pub(super) fn check_references(
    spec: &WorkflowSpec,
    good_triggers: &[usize],
    checkable_stages: &[String],
    context: &Context,
    sink: &mut Sink,
) {
    let sources = &context.declared.sources;
    let source_list = || -> String {
        if sources.is_empty() {
            if context.has_config {
                "`manual` (the config has no [sources])".to_owned()
            } else {
                "`manual` (no gateway config is loaded, so there are no other sources)".to_owned()
            }
        } else {
            let names: Vec<&str> = sources.keys().map(String::as_str).collect();
            format!("`manual` or a [sources] name: {}", names.join(", "))
        }
    };
    for &i in good_triggers {
        let source = &spec.on[i].source;
        if source != "manual" && !sources.contains_key(source) {
            sink.err(
                format!("on[{i}].source"),
                format!("unknown source `{source}`: expected {}", source_list()),
            );
        }
    }
    for (i, source) in spec.report.iter().enumerate() {
        if let Some(first) = spec.report[..i].iter().position(|s| s == source) {
            sink.err(
                format!("report[{i}]"),
                format!("source `{source}` is already listed at report[{first}]"),
            );
            continue;
        }
        match sources.get(source) {
            Some(Some(
                config @ (SourceConfig::Generic(_)
                | SourceConfig::Travis(_)
                | SourceConfig::Registry(_)),
            )) => sink.err(
                format!("report[{i}]"),
                format!("source `{source}` is {}: only github and gitlab sources can receive status reports", config.kind()),
            ),
            Some(Some(config)) if !config.can_report() => sink.err(
                format!("report[{i}]"),
                match config {
                    SourceConfig::Github(_) => format!(
                        "source `{source}` has no API credentials to report with: add `token = {{ env = \"GITHUB_TOKEN\" }}` (an access token with commit status write access), or `app_id` and `private_key = {{ file = \"app.pem\" }}` (a GitHub App), to [sources.{source}]"
                    ),
                    _ => format!(
                        "source `{source}` has no API credentials to report with: add `api_token = {{ env = \"GITLAB_API_TOKEN\" }}` (a token with the `api` scope; the webhook `token` cannot post statuses) to [sources.{source}]"
                    ),
                },
            ),
            Some(_) => {}
            None => {
                let names: Vec<&str> = sources.keys().map(String::as_str).collect();
                sink.err(
                    format!("report[{i}]"),
                    if names.is_empty() {
                        format!("unknown source `{source}`: the config has no [sources] to report to")
                    } else {
                        format!("unknown source `{source}`: expected a [sources] name: {}", names.join(", "))
                    },
                );
            }
        }
    }
    let adapters = &context.declared.adapters;
    for id in checkable_stages {
        let Some(stage) = spec.stages.get(id) else {
            continue;
        };
        let at = format!("stages.{id}");
        let kind = match adapters.get(&stage.uses) {
            Some(kind) => kind.clone(),
            None if context.kinds.is_builtin_instance(&stage.uses) => Some(stage.uses.clone()),
            None => {
                let mut known: Vec<&str> = adapters.keys().map(String::as_str).collect();
                let builtins = context
                    .kinds
                    .builtin_instances()
                    .collect::<Vec<_>>()
                    .join(", ");
                sink.err(
                    join(&at, "uses"),
                    if known.is_empty() {
                        format!("unknown adapter `{}`: expected a built-in adapter ({builtins}) or an [adapters] name (the config has none)", stage.uses)
                    } else {
                        known.sort_unstable();
                        format!(
                            "unknown adapter `{}`: expected an [adapters] name ({}) or a built-in adapter ({builtins})",
                            stage.uses,
                            known.join(", ")
                        )
                    },
                );
                None
            }
        };
        if let Some(adapter_kind) = kind.as_deref().and_then(|k| context.kinds.get(k)) {
            for e in adapter_kind.validate_stage(&stage.with) {
                sink.err(join(&join(&at, "with"), &e.path), e.message);
            }
        }
    }
}
