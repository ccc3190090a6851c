//! Loading the gateway config and the workflow files, with every check in one pass.
//!
//! [`load`] (here) reads the config file and the environment, then hands each part to its
//! module: `sections` reads and checks the gateway config's sections, `sources` its
//! `[sources.*]` blocks, `relays` its `[relays.*]` blocks and `adapters` its `[adapters.*]`
//! blocks; `workflows` finds, reads, compiles and checks the workflow files against what the
//! config declares. The helpers here are shared by them.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use baton_core::{Kinds, SecretRef, SecretResolver, Workflow};
use indexmap::IndexMap;
use serde_json::{Map, Value};

use crate::check::type_name;
use crate::diagnostic::{Diagnostic, Diagnostics, Sink, join};
use crate::document::read_document;
use crate::env::{self, Override};
use crate::gateway::*;
use crate::secrets::{EnvFileResolver, SecretUse, find_references};

mod adapters;
mod relays;
mod sections;
mod sources;
mod workflows;

use sections::read_gateway;
pub(crate) use workflows::{Context, check_workflow};
use workflows::{read_workflow, workflow_paths};

/// The `file` of problems with `BATON_*` variables (and of config problems when there is no
/// config file, so every setting came from the environment).
pub const ENVIRONMENT: &str = "(environment)";

/// Everything a load produced: the checked gateway config and the compiled workflows.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The gateway config file, when one was given.
    pub config_file: Option<PathBuf>,
    /// The gateway config (defaults when there is no file), with overrides applied.
    pub gateway: GatewayConfig,
    /// The workflows: those the `workflows` globs found, in glob order, then the files given
    /// directly; each file once.
    pub workflows: Vec<LoadedWorkflow>,
    /// Every secret reference in the gateway config, in file order.
    pub secrets: Vec<SecretUse>,
}

/// One compiled workflow and the file it came from.
#[derive(Debug, Clone)]
pub struct LoadedWorkflow {
    /// The file, as the glob found it or as it was given.
    pub file: PathBuf,
    /// The compiled workflow.
    pub workflow: Workflow,
}

impl Loaded {
    /// The environment variables the gateway config reads secrets from (`{ env = "NAME" }`
    /// anywhere in it): commands never see them.
    pub fn secret_env_names(&self) -> BTreeSet<String> {
        self.secrets
            .iter()
            .filter_map(|s| match &s.reference {
                SecretRef::Env(name) => Some(name.clone()),
                SecretRef::File(_) => None,
            })
            .collect()
    }

    /// The workflow named `name_or_path`, or else the one loaded from that file.
    pub fn workflow(&self, name_or_path: &str) -> Option<&LoadedWorkflow> {
        if let Some(found) = self
            .workflows
            .iter()
            .find(|w| w.workflow.name() == name_or_path)
        {
            return Some(found);
        }
        let path = Path::new(name_or_path);
        let canonical = path.canonicalize().ok();
        self.workflows.iter().find(|w| {
            w.file == path || (canonical.is_some() && w.file.canonicalize().ok() == canonical)
        })
    }
}

/// Loads and checks the gateway config `config_file` (if any), the workflow files its
/// `workflows` globs find, and `workflow_files`; `env` holds the environment, of which only
/// `BATON_<TOP-LEVEL KEY>…` variables are read.
///
/// Without a config file the gateway config is all defaults (plus overrides), so only the
/// built-in `exec` and `approval` adapters and the `manual` source exist.
///
/// On any problem, returns every problem found, never just the first. Secrets are not read:
/// [`load_reading_secrets`] reads them too.
pub fn load(
    config_file: Option<&Path>,
    workflow_files: &[PathBuf],
    kinds: &Kinds,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, Diagnostics> {
    load_with(config_file, workflow_files, kinds, env, None).loaded
}

/// Where the secrets a config references are read: decides what [`load_reading_secrets`]
/// makes of one that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretsFrom {
    /// This machine, which runs baton with this config: every secret must be readable.
    Here,
    /// Another machine: an unset variable or a missing file is a warning, since only that
    /// machine can tell; a secret that is there but unusable is still a problem.
    Elsewhere,
}

/// What [`load_reading_secrets`] found.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The load, or every problem (the secrets' among them).
    pub loaded: Result<Loaded, Diagnostics>,
    /// The secrets that cannot be read here, with [`SecretsFrom::Elsewhere`].
    pub warnings: Vec<Diagnostic>,
}

/// [`load`], and reads every secret the gateway config references as `baton serve` would
/// (`env` holds the environment), so that what `serve` would refuse is reported with the
/// rest, each at its file and key path.
pub fn load_reading_secrets(
    config_file: Option<&Path>,
    workflow_files: &[PathBuf],
    kinds: &Kinds,
    env: impl IntoIterator<Item = (String, String)>,
    from: SecretsFrom,
) -> Checked {
    load_with(config_file, workflow_files, kinds, env, Some(from))
}

fn load_with(
    config_file: Option<&Path>,
    workflow_files: &[PathBuf],
    kinds: &Kinds,
    env: impl IntoIterator<Item = (String, String)>,
    read_secrets: Option<SecretsFrom>,
) -> Checked {
    let env: Vec<(String, String)> = env.into_iter().collect();
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    let environment = PathBuf::from(ENVIRONMENT);
    let base_dir = match config_file {
        Some(file) => {
            let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
            std::path::absolute(dir.unwrap_or(Path::new(".")))
                .unwrap_or_else(|_| PathBuf::from("."))
        }
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
    };
    let mut doc = Map::new();
    if let Some(file) = config_file {
        let mut sink = Sink::new(file, &mut out);
        match read_document(file, &mut sink) {
            None => {
                return Checked {
                    loaded: Err(Diagnostics(out)),
                    warnings,
                };
            }
            Some(Value::Null) => {}
            Some(Value::Object(map)) => doc = map,
            Some(other) => {
                sink.err(
                    "",
                    format!(
                        "expected a map of settings at the top of the file, found {}",
                        type_name(&other)
                    ),
                );
                return Checked {
                    loaded: Err(Diagnostics(out)),
                    warnings,
                };
            }
        }
    }
    let overrides = env::apply(
        &mut doc,
        env.iter().cloned(),
        &mut Sink::new(&environment, &mut out),
    );
    let mut secrets = Vec::new();
    for (key, value) in &doc {
        find_references(value, key, &mut secrets);
    }

    let config_path = config_file.map_or_else(|| environment.clone(), Path::to_path_buf);
    let first = out.len();
    let resolver = read_secrets.map(|_| EnvFileResolver::with_vars(&base_dir, env));
    let (gateway, declared) = read_gateway(
        &doc,
        base_dir,
        kinds,
        &mut Sink::new(&config_path, &mut out),
    );
    if let (Some(from), Some(resolver)) = (read_secrets, &resolver) {
        for secret in &secrets {
            if let Err(e) = resolver.resolve(&secret.reference) {
                let problem = Diagnostic::new(&config_path, &secret.path, e.to_string());
                if from == SecretsFrom::Elsewhere && e.is_absent() {
                    warnings.push(problem);
                } else {
                    out.push(problem);
                }
            }
        }
    }
    annotate_overrides(&mut out[first..], &overrides);
    annotate_overrides(&mut warnings, &overrides);

    let files = workflow_paths(
        &gateway,
        workflow_files,
        &mut Sink::new(&config_path, &mut out),
    );
    let context = Context {
        kinds: kinds.clone(),
        declared,
        defaults: gateway.stage_defaults(kinds),
        has_config: config_file.is_some(),
    };
    let mut workflows = Vec::new();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        let mut sink = Sink::new(&file, &mut out);
        let (name, workflow) = read_workflow(&file, &context, &mut sink);
        if let Some(name) = name {
            if let Some(earlier) = names.get(&name) {
                sink.err("name", duplicate_name(&name, earlier));
            } else {
                names.insert(name, file.clone());
            }
        }
        if let Some(workflow) = workflow {
            workflows.push(LoadedWorkflow { file, workflow });
        }
    }
    let loaded = if out.is_empty() {
        Ok(Loaded {
            config_file: config_file.map(Path::to_path_buf),
            gateway,
            workflows,
            secrets,
        })
    } else {
        Err(Diagnostics(out))
    };
    Checked { loaded, warnings }
}

/// The problem of a workflow named like one loaded from `earlier`.
pub(crate) fn duplicate_name(name: &str, earlier: &Path) -> String {
    format!(
        "workflow `{name}` is also defined in {}; names must be unique",
        earlier.display()
    )
}

/// Appends the variable to problems with a value an override set.
fn annotate_overrides(diagnostics: &mut [Diagnostic], overrides: &[Override]) {
    for d in diagnostics {
        let by = overrides.iter().rev().find(|o| {
            d.path == o.path
                || d.path.starts_with(&format!("{}.", o.path))
                || d.path.starts_with(&format!("{}[", o.path))
        });
        if let Some(o) = by {
            d.message.push_str(&format!(" (set by {})", o.var));
        }
    }
}

/// True for names that go into URLs and references: `[a-z0-9_-]+`.
fn valid_name(name: &str) -> bool {
    baton_core::workflow::valid_stage_id(name)
}

/// What the config declares, broken entries included, so that workflows naming a broken
/// entry get no second, misleading problem.
#[derive(Debug, Default, Clone)]
pub(crate) struct Declared {
    /// Source names, with the source when it is valid.
    pub(crate) sources: IndexMap<String, Option<SourceConfig>>,
    /// Adapter instance names, with the kind when this baton knows it.
    pub(crate) adapters: IndexMap<String, Option<String>>,
}

impl Declared {
    /// What a config that loaded without a problem declares: each of its entries is valid.
    pub(crate) fn of(gateway: &GatewayConfig) -> Self {
        Self {
            sources: gateway
                .sources
                .iter()
                .map(|(name, source)| (name.clone(), Some(source.clone())))
                .collect(),
            adapters: gateway
                .adapters
                .iter()
                .map(|(name, instance)| (name.clone(), Some(instance.kind.clone())))
                .collect(),
        }
    }
}

/// Returns the map in `value`, or reports that a table was expected.
fn table<'v>(value: &'v Value, at: &str, sink: &mut Sink) -> Option<&'v Map<String, Value>> {
    match value {
        Value::Object(map) => Some(map),
        other => {
            sink.err(
                at,
                format!(
                    "expected a table (a map of settings), found {}",
                    type_name(other)
                ),
            );
            None
        }
    }
}

/// Splits `kind` off a `[sources.*]` or `[adapters.*]` block.
fn kind_and_rest(
    value: &Value,
    at: &str,
    expected: &str,
    sink: &mut Sink,
) -> Option<(String, Value)> {
    let map = table(value, at, sink)?;
    let kind = match map.get("kind") {
        Some(Value::String(kind)) => kind.clone(),
        Some(other) => {
            sink.err(
                join(at, "kind"),
                format!(
                    "expected text, one of {expected}; found {}",
                    type_name(other)
                ),
            );
            return None;
        }
        None => {
            sink.err(
                join(at, "kind"),
                format!("missing required key `kind`: expected one of {expected}"),
            );
            return None;
        }
    };
    let mut rest = map.clone();
    rest.remove("kind");
    Some((kind, Value::Object(rest)))
}

/// True for HTTP header names (RFC 9110 tokens).
fn valid_header(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_header(name: &str, at: &str, sink: &mut Sink) {
    if !valid_header(name) {
        sink.err(
            at,
            format!("`{name}` is not an HTTP header name: use letters, digits and `-`"),
        );
    }
}

/// True for `http://host…` and `https://host…`.
fn is_http_url(url: &str) -> bool {
    url.strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
}
