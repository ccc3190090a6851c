//! Loading the gateway config and the workflow files, with every check in one pass.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use baton_core::workflow::{RetrySpec, TriggerSpec};
use baton_core::{Expr, Kinds, StageDefaults, StageSpec, Workflow, WorkflowSpec};
use indexmap::IndexMap;
use serde_json::{Map, Value};

use crate::check::{check_keys, fields_of, type_name, typed};
use crate::diagnostic::{Diagnostic, Diagnostics, Sink, join};
use crate::document::read_document;
use crate::env::{self, Override};
use crate::gateway::*;

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
/// On any problem, returns every problem found, never just the first.
pub fn load(
    config_file: Option<&Path>,
    workflow_files: &[PathBuf],
    kinds: &Kinds,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, Diagnostics> {
    let mut out = Vec::new();
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
            None => return Err(Diagnostics(out)),
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
                return Err(Diagnostics(out));
            }
        }
    }
    let overrides = env::apply(&mut doc, env, &mut Sink::new(&environment, &mut out));

    let config_path = config_file.map_or_else(|| environment.clone(), Path::to_path_buf);
    let first = out.len();
    let (gateway, declared) = read_gateway(
        &doc,
        base_dir,
        kinds,
        &mut Sink::new(&config_path, &mut out),
    );
    annotate_overrides(&mut out[first..], &overrides);

    let files = workflow_paths(
        &gateway,
        workflow_files,
        &mut Sink::new(&config_path, &mut out),
    );
    let context = Context {
        kinds,
        declared,
        defaults: gateway.stage_defaults(),
        has_config: config_file.is_some(),
    };
    let mut workflows = Vec::new();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        let mut sink = Sink::new(&file, &mut out);
        let (name, workflow) = read_workflow(&file, &context, &mut sink);
        if let Some(name) = name {
            if let Some(earlier) = names.get(&name) {
                sink.err(
                    "name",
                    format!(
                        "workflow `{name}` is also defined in {}; names must be unique",
                        earlier.display()
                    ),
                );
            } else {
                names.insert(name, file.clone());
            }
        }
        if let Some(workflow) = workflow {
            workflows.push(LoadedWorkflow { file, workflow });
        }
    }
    if out.is_empty() {
        Ok(Loaded {
            config_file: config_file.map(Path::to_path_buf),
            gateway,
            workflows,
        })
    } else {
        Err(Diagnostics(out))
    }
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
#[derive(Debug, Default)]
struct Declared {
    /// Source names, with the source when it is valid.
    sources: IndexMap<String, Option<SourceConfig>>,
    /// Adapter instance names, with the kind when this baton knows it.
    adapters: IndexMap<String, Option<String>>,
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

fn read_gateway(
    doc: &Map<String, Value>,
    base_dir: PathBuf,
    kinds: &Kinds,
    sink: &mut Sink,
) -> (GatewayConfig, Declared) {
    let mut config = GatewayConfig {
        base_dir,
        ..GatewayConfig::default()
    };
    let mut declared = Declared::default();
    check_keys(doc, "", &TOP_LEVEL_KEYS, sink);

    if let Some(v) = doc.get("workflows")
        && let Some(globs) = typed::<Vec<String>>(v, "workflows", &[], sink)
    {
        config.workflows = globs;
    }
    if let Some(v) = doc.get("server")
        && table(v, "server", sink).is_some()
        && let Some(server) =
            typed::<ServerConfig>(v, "server", &[("", fields_of::<ServerConfig>())], sink)
    {
        check_server(&server, sink);
        config.server = server;
    }
    if let Some(v) = doc.get("store")
        && table(v, "store", sink).is_some()
        && let Some(store) =
            typed::<StoreConfig>(v, "store", &[("", fields_of::<StoreConfig>())], sink)
    {
        let url = store.url.as_str();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            sink.err(
                "store.url",
                format!("`{url}` is not a store URL: expected `sqlite://PATH` or `postgres://user@host/db`"),
            );
        }
        config.store = store;
    }
    if let Some(v) = doc.get("api")
        && let Some(api) = table(v, "api", sink)
    {
        config.api = read_api(api, sink);
    }
    if let Some(v) = doc.get("sources")
        && let Some(sources) = table(v, "sources", sink)
    {
        for (name, v) in sources {
            let source = read_source(name, v, sink);
            declared.sources.insert(name.clone(), source.clone());
            if let Some(source) = source {
                config.sources.insert(name.clone(), source);
            }
        }
    }
    if let Some(v) = doc.get("adapters")
        && let Some(adapters) = table(v, "adapters", sink)
    {
        for (name, v) in adapters {
            let (kind, instance) = read_adapter(name, v, kinds, sink);
            declared.adapters.insert(name.clone(), kind);
            if let Some(instance) = instance {
                config.adapters.insert(name.clone(), instance);
            }
        }
    }
    if let Some(v) = doc.get("engine")
        && table(v, "engine", sink).is_some()
        && let Some(engine) =
            typed::<EngineConfig>(v, "engine", &[("", fields_of::<EngineConfig>())], sink)
    {
        check_engine(&engine, sink);
        config.engine = engine;
    }
    (config, declared)
}

fn check_server(server: &ServerConfig, sink: &mut Sink) {
    let listen_ok = server
        .listen
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !listen_ok {
        sink.err(
            "server.listen",
            format!(
                "`{}` is not an address to listen on: expected `host:port`, like `127.0.0.1:8080` or `0.0.0.0:8080`",
                server.listen
            ),
        );
    }
    if let Some(url) = &server.public_url
        && !is_http_url(url)
    {
        sink.err(
            "server.public_url",
            format!("`{url}` is not a URL: expected `http://host[:port][/path]` or `https://…`"),
        );
    }
    if server.max_body_bytes == 0 {
        sink.err("server.max_body_bytes", "expected at least 1 byte");
    }
}

fn check_engine(engine: &EngineConfig, sink: &mut Sink) {
    if engine.default_timeout.0.is_zero() {
        sink.err("engine.default_timeout", "a timeout must be longer than 0s");
    }
    if engine.poll_min.0.is_zero() {
        sink.err("engine.poll_min", "expected a duration longer than 0s");
    }
    if engine.poll_max < engine.poll_min {
        sink.err(
            "engine.poll_max",
            format!(
                "`{}` is shorter than `poll_min` ({})",
                engine.poll_max, engine.poll_min
            ),
        );
    }
    if engine.max_concurrency == 0 {
        sink.err("engine.max_concurrency", "expected at least 1");
    }
}

fn read_api(api: &Map<String, Value>, sink: &mut Sink) -> ApiConfig {
    check_keys(api, "api", fields_of::<ApiConfig>(), sink);
    let mut config = ApiConfig::default();
    let Some(tokens) = api.get("tokens") else {
        return config;
    };
    let Value::Array(items) = tokens else {
        sink.err(
            "api.tokens",
            format!(
                "expected a list of tokens, like `[{{ name = \"ops\", token = {{ env = \"OPS_TOKEN\" }}, role = \"operator\" }}]`, found {}",
                type_name(tokens)
            ),
        );
        return config;
    };
    let mut names = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("api.tokens[{i}]");
        if table(item, &at, sink).is_none() {
            continue;
        }
        if let Some(token) = typed::<ApiToken>(item, &at, &[("", fields_of::<ApiToken>())], sink) {
            if !names.insert(token.name.clone()) {
                sink.err(
                    format!("{at}.name"),
                    format!("another token is already named `{}`", token.name),
                );
            }
            config.tokens.push(token);
        }
    }
    config
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

fn read_source(name: &str, value: &Value, sink: &mut Sink) -> Option<SourceConfig> {
    let at = format!("sources.{name}");
    let before = sink.count();
    if name == "manual" {
        sink.err(
            &at,
            "`manual` is reserved for runs started by hand (CLI, API, UI): choose another name",
        );
    } else if !valid_name(name) {
        sink.err(
            &at,
            format!("`{name}` cannot be a source name (it is part of the URL /hooks/<name>): use lowercase letters, digits, `_` and `-`"),
        );
    }
    let kinds = SourceConfig::KINDS.join(", ");
    let (kind, rest) = kind_and_rest(value, &at, &kinds, sink)?;
    let source = match kind.as_str() {
        "github" => {
            let raw: GithubRaw = typed(&rest, &at, &[("", fields_of::<GithubRaw>())], sink)?;
            let secrets: Vec<_> = raw
                .secret
                .into_iter()
                .chain(raw.secrets)
                .map(|s| s.0)
                .collect();
            if secrets.is_empty() {
                sink.err(
                    join(&at, "secret"),
                    "missing required key `secret`: a github source needs the webhook secret, `secret = { env = \"NAME\" }` (or `secrets = [...]` to rotate)",
                );
            }
            let api_url = read_api_url(raw.api_url, GITHUB_API_URL, &at, sink);
            let api_auth = read_github_auth(
                raw.token.map(|s| s.0),
                raw.app_id,
                raw.private_key.map(|s| s.0),
                raw.installation_id,
                &at,
                sink,
            );
            SourceConfig::Github(GithubSource {
                secrets,
                api_url,
                api_auth,
            })
        }
        "gitlab" => {
            let raw: GitlabRaw = typed(&rest, &at, &[("", fields_of::<GitlabRaw>())], sink)?;
            let tokens: Vec<_> = raw
                .token
                .into_iter()
                .chain(raw.tokens)
                .map(|s| s.0)
                .collect();
            if tokens.is_empty() {
                sink.err(
                    join(&at, "token"),
                    "missing required key `token`: a gitlab source needs the webhook token, `token = { env = \"NAME\" }` (or `tokens = [...]` to rotate)",
                );
            }
            SourceConfig::Gitlab(GitlabSource {
                tokens,
                api_url: read_api_url(raw.api_url, GITLAB_API_URL, &at, sink),
                api_token: raw.api_token.map(|s| s.0),
            })
        }
        "generic" => SourceConfig::Generic(read_generic(&rest, &at, sink)?),
        other => {
            sink.err(
                join(&at, "kind"),
                format!("unknown source kind `{other}`: expected one of {kinds}"),
            );
            return None;
        }
    };
    (sink.count() == before).then_some(source)
}

/// True for `http://host…` and `https://host…`.
fn is_http_url(url: &str) -> bool {
    url.strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
}

/// A source's `api_url`, checked, without a trailing `/`; `default` when absent.
fn read_api_url(url: Option<String>, default: &str, at: &str, sink: &mut Sink) -> String {
    let Some(url) = url else {
        return default.to_owned();
    };
    if !is_http_url(&url) {
        sink.err(
            join(at, "api_url"),
            format!("`{url}` is not a URL: expected the API root, like `{default}`"),
        );
    }
    url.trim_end_matches('/').to_owned()
}

/// A github source's API credentials: `token`, or `app_id` + `private_key` (+
/// `installation_id`), or none.
fn read_github_auth(
    token: Option<baton_core::SecretRef>,
    app_id: Option<u64>,
    private_key: Option<baton_core::SecretRef>,
    installation_id: Option<u64>,
    at: &str,
    sink: &mut Sink,
) -> Option<GithubAuth> {
    let app_keys = app_id.is_some() || private_key.is_some() || installation_id.is_some();
    if token.is_some() && app_keys {
        sink.err(
            at,
            "set either `token` (an access token) or `app_id` and `private_key` (a GitHub App) for the API, not both",
        );
        return None;
    }
    if let Some(token) = token {
        return Some(GithubAuth::Token(token));
    }
    if !app_keys {
        return None;
    }
    let before = sink.count();
    if app_id == Some(0) {
        sink.err(
            join(at, "app_id"),
            "expected the GitHub App's id, a number above 0",
        );
    }
    if installation_id == Some(0) {
        sink.err(
            join(at, "installation_id"),
            "expected an installation id, a number above 0",
        );
    }
    match (app_id, private_key) {
        (Some(app_id), Some(private_key)) => {
            (sink.count() == before).then_some(GithubAuth::App(GithubApp {
                app_id,
                private_key,
                installation_id,
            }))
        }
        (Some(_), None) => {
            sink.err(
                join(at, "private_key"),
                "missing required key `private_key`: a GitHub App needs its private key (PEM), `private_key = { file = \"app.pem\" }`",
            );
            None
        }
        (None, _) => {
            sink.err(
                join(at, "app_id"),
                "missing required key `app_id`: a GitHub App (`private_key`, `installation_id`) needs its id, `app_id = 123456`",
            );
            None
        }
    }
}

fn read_generic(rest: &Value, at: &str, sink: &mut Sink) -> Option<GenericSource> {
    let raw: GenericRaw = typed(
        rest,
        at,
        &[
            ("", fields_of::<GenericRaw>()),
            ("hmac", fields_of::<HmacAuth>()),
            ("bearer", fields_of::<BearerAuth>()),
            ("event", fields_of::<EventRaw>()),
            ("delivery_id", fields_of::<HeaderRaw>()),
        ],
        sink,
    )?;
    let before = sink.count();
    if let Some(hmac) = &raw.hmac {
        check_header(&hmac.header, &join(at, "hmac.header"), sink);
    }
    let auth = match (raw.hmac, raw.bearer) {
        (Some(hmac), None) => Some(GenericAuth::Hmac(hmac)),
        (None, Some(bearer)) => Some(GenericAuth::Bearer(bearer)),
        (Some(_), Some(_)) => {
            sink.err(at, "set either `hmac` or `bearer`, not both");
            None
        }
        (None, None) => {
            sink.err(
                at,
                "missing authentication: set `hmac = { secret = { env = \"NAME\" }, header = \"X-Signature\" }` or `bearer = { token = { env = \"NAME\" } }`",
            );
            None
        }
    };
    let event = match raw.event {
        None => None,
        Some(EventRaw {
            header: Some(header),
            expr: None,
        }) => {
            check_header(&header, &join(at, "event.header"), sink);
            Some(EventSelector::Header(header))
        }
        Some(EventRaw {
            header: None,
            expr: Some(expr),
        }) => match Expr::compile(&expr) {
            Ok(expr) => Some(EventSelector::Expr(expr)),
            Err(e) => {
                sink.err(join(at, "event.expr"), e.to_string());
                None
            }
        },
        Some(_) => {
            sink.err(
                join(at, "event"),
                "expected exactly one of `{ header = \"X-Event\" }` or `{ expr = \".type\" }`",
            );
            None
        }
    };
    let delivery_id = match raw.delivery_id {
        None => DeliveryId::BodyHash,
        Some(HeaderRaw { header }) => {
            check_header(&header, &join(at, "delivery_id.header"), sink);
            DeliveryId::Header(header)
        }
    };
    (sink.count() == before).then_some(GenericSource {
        auth: auth?,
        event,
        delivery_id,
    })
}

/// Returns the instance's kind when this baton knows it, and the instance when it is valid.
fn read_adapter(
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
    if kinds.is_builtin_instance(name) && kind != name {
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

/// Finds the workflow files: the globs' matches, then `extra`; each file once.
fn workflow_paths(config: &GatewayConfig, extra: &[PathBuf], sink: &mut Sink) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (i, pattern) in config.workflows.iter().enumerate() {
        let at = format!("workflows[{i}]");
        let full = if Path::new(pattern).is_absolute() {
            pattern.clone()
        } else {
            let dir = glob::Pattern::escape(&config.base_dir.to_string_lossy());
            format!("{}/{pattern}", dir.trim_end_matches('/'))
        };
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

/// What a workflow is checked against.
struct Context<'a> {
    kinds: &'a Kinds,
    declared: Declared,
    defaults: StageDefaults,
    has_config: bool,
}

/// Reads, checks and compiles one workflow file. Returns its name when it could be read (for
/// the uniqueness check) and the workflow when the file has no problem.
fn read_workflow(
    file: &Path,
    context: &Context,
    sink: &mut Sink,
) -> (Option<String>, Option<Workflow>) {
    let before = sink.count();
    let map = match read_document(file, sink) {
        None => return (None, None),
        Some(Value::Object(map)) => map,
        Some(Value::Null) => {
            sink.err(
                "",
                "the file is empty: a workflow needs `name` and `stages`",
            );
            return (None, None);
        }
        Some(other) => {
            sink.err(
                "",
                format!(
                    "expected a workflow (a map with `name`, `on`, `stages`) at the top of the file, found {}",
                    type_name(&other)
                ),
            );
            return (None, None);
        }
    };
    check_keys(&map, "", fields_of::<WorkflowSpec>(), sink);
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
    let compiled = match Workflow::compile(spec, context.defaults) {
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
fn stand_in_stage(value: &Value) -> (StageSpec, bool) {
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
fn check_references(
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
            Some(Some(SourceConfig::Generic(_))) => sink.err(
                format!("report[{i}]"),
                format!("source `{source}` is generic: only github and gitlab sources can receive status reports"),
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
