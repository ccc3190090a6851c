//! Loader tests, with fake adapter kinds and fixture files in a temporary directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_core::secret::check_secret_value;
use baton_core::{
    Adapter, AdapterError, AdapterKind, FieldError, HumanDuration, Kinds, SecretResolver,
};
use serde_json::Value;

use crate::*;

mod relays;
mod store;
mod workflow_check;

/// A fake adapter kind: `jenkins` needs `url` and a `token` reference and a stage `job`;
/// `exec` needs `run` or `command`; `approval` needs `message`. `exec` and `approval` are
/// instances without a block, and `approval` takes decisions.
struct FakeKind(&'static str);

impl AdapterKind for FakeKind {
    fn kind(&self) -> &'static str {
        self.0
    }

    fn builtin_instance(&self) -> bool {
        matches!(self.0, "exec" | "approval")
    }

    fn takes_decisions(&self) -> bool {
        self.0 == "approval"
    }

    fn script_keys(&self) -> &'static [&'static str] {
        if self.0 == "exec" { &["run"] } else { &[] }
    }

    fn validate_instance(&self, config: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.0 == "jenkins" {
            if !config.get("url").is_some_and(Value::is_string) {
                errors.push(FieldError::new("url", "expected the Jenkins URL"));
            }
            if let Some(token) = config.get("token")
                && let Err(message) = check_secret_value(token)
            {
                errors.push(FieldError::new("token", message));
            }
        }
        errors
    }

    fn validate_stage(&self, with: &Value) -> Vec<FieldError> {
        let has = |key: &str| with.get(key).is_some();
        match self.0 {
            "jenkins" => {
                let mut errors = Vec::new();
                if !has("job") {
                    errors.push(FieldError::new("job", "missing the job name"));
                }
                if let Some(Value::Number(_)) = with.pointer("/parameters/SHA") {
                    errors.push(FieldError::new("parameters.SHA", "expected text"));
                }
                errors
            }
            "exec" if !has("run") && !has("command") => {
                vec![FieldError::new("", "expected `run` or `command`")]
            }
            "approval" if !has("message") => vec![FieldError::new("message", "missing")],
            _ => vec![],
        }
    }

    fn build(
        &self,
        _: &str,
        _: &Value,
        _: &dyn SecretResolver,
    ) -> Result<Arc<dyn Adapter>, AdapterError> {
        Err(AdapterError::Invalid("fake".into()))
    }
}

fn kinds() -> Kinds {
    let mut kinds = Kinds::new();
    for name in ["exec", "approval", "jenkins", "buildbot"] {
        kinds.register(Arc::new(FakeKind(name)));
    }
    kinds
}

/// Writes `files` (relative path, content) under a new temporary directory.
fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Loads `config` (relative to `dir`) and the `extra` workflow files.
fn load_in(
    dir: &Path,
    config: Option<&str>,
    extra: &[&str],
    vars: Vec<(String, String)>,
) -> Result<Loaded, Diagnostics> {
    let config = config.map(|c| dir.join(c));
    let extra: Vec<PathBuf> = extra.iter().map(|f| dir.join(f)).collect();
    load(config.as_deref(), &extra, &kinds(), vars)
}

/// The (file relative to `dir`, key path) of every problem.
fn pairs(dir: &Path, diagnostics: &Diagnostics) -> BTreeSet<(String, String)> {
    diagnostics
        .iter()
        .map(|d| {
            let file = d.file.strip_prefix(dir).unwrap_or(&d.file);
            (file.display().to_string(), d.path.clone())
        })
        .collect()
}

fn set(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(f, p)| (f.to_string(), p.to_string()))
        .collect()
}

/// The message of the one problem at `path`.
fn message_at<'a>(diagnostics: &'a Diagnostics, path: &str) -> &'a str {
    let found: Vec<_> = diagnostics.iter().filter(|d| d.path == path).collect();
    assert_eq!(found.len(), 1, "one problem at {path}: {diagnostics}");
    &found[0].message
}

const CONFIG: &str = r#"
workflows = ["workflows/*.yaml"]

[server]
listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"
max_body_bytes = 26214400

[store]
url = "sqlite://baton.db"

[api]
tokens = [ { name = "ops", token = { env = "BATON_OPS_TOKEN" }, role = "operator" } ]

[sources.github]
kind = "github"
secret = { env = "GITHUB_WEBHOOK_SECRET" }
token = { env = "GITHUB_TOKEN" }

[sources.gitlab]
kind = "gitlab"
token = { env = "GITLAB_WEBHOOK_TOKEN" }

[sources.deploy]
kind = "generic"
hmac = { secret = { file = "/run/secrets/deploy" }, header = "X-Signature-256", prefix = "sha256=" }
event = { expr = ".type" }

[adapters.ci]
kind = "jenkins"
url = "https://jenkins.example.com"
user = "baton"
token = { env = "JENKINS_TOKEN" }

[adapters.bb]
kind = "buildbot"
url = "http://127.0.0.1:8010"
"#;

const WORKFLOW: &str = r#"
name: tidb-pr
on:
  - source: github
    event: pull_request
    if: '.action == "opened" or .action == "synchronize"'
  - source: manual
stages:
  unit:
    uses: bb
    with:
      builder: unit-tests
      properties: { sha: '${{ .event.pull_request.head.sha }}' }
    timeout: 45m
  mysql-tests:
    needs: [unit]
    uses: ci
    with:
      job: tidb/mysql-test
      parameters:
        SHA: '${{ .event.pull_request.head.sha }}'
        UNIT_BUILD: '${{ .stages.unit.outputs.build_number }}'
    retry: { attempts: 3, backoff: 30s }
    on_failure: halt
  release:
    needs: [mysql-tests]
    uses: approval
    with: { message: 'Release ${{ .event.pull_request.head.sha }}?', role: approver }
    timeout: 72h
report: [github]
"#;

const LINT: &str = r#"
name = "lint"
on = [{ source = "deploy", event = "push" }]
[stages.lint]
uses = "exec"
with = { run = "./lint.sh" }
"#;

#[test]
fn the_documented_example_loads() {
    let dir = fixture(&[
        ("baton.toml", CONFIG),
        ("workflows/tidb.yaml", WORKFLOW),
        ("extra/lint.toml", LINT),
    ]);
    let loaded = load_in(
        dir.path(),
        Some("baton.toml"),
        &["extra/lint.toml"],
        no_env(),
    )
    .unwrap();
    let g = &loaded.gateway;
    assert_eq!(g.server.listen, "127.0.0.1:8080");
    assert_eq!(g.server.max_body_bytes, 26_214_400);
    assert_eq!(g.api.tokens[0].role, Role::Operator);
    assert_eq!(
        g.api.tokens[0].token,
        baton_core::SecretRef::Env("BATON_OPS_TOKEN".into())
    );
    let SourceConfig::Github(github) = &g.sources["github"] else {
        panic!("github is github")
    };
    assert_eq!(github.secrets.len(), 1);
    assert_eq!(github.api_url, "https://api.github.com");
    assert_eq!(
        github.api_auth,
        Some(GithubAuth::Token(baton_core::SecretRef::Env(
            "GITHUB_TOKEN".into()
        )))
    );
    assert!(g.sources["github"].can_report());
    let SourceConfig::Gitlab(gitlab) = &g.sources["gitlab"] else {
        panic!("gitlab is gitlab")
    };
    assert_eq!(gitlab.tokens.len(), 1);
    assert_eq!(gitlab.api_url, "https://gitlab.com/api/v4");
    assert_eq!(gitlab.api_token, None);
    assert!(!g.sources["gitlab"].can_report());
    let SourceConfig::Generic(deploy) = &g.sources["deploy"] else {
        panic!("deploy is generic")
    };
    let GenericAuth::Hmac(hmac) = &deploy.auth else {
        panic!("hmac")
    };
    assert_eq!(
        (hmac.header.as_str(), hmac.prefix.as_str(), hmac.algorithm),
        ("X-Signature-256", "sha256=", HmacAlgorithm::Sha256)
    );
    assert!(matches!(&deploy.event, Some(EventSelector::Expr(e)) if e.source() == ".type"));
    assert_eq!(deploy.delivery_id, DeliveryId::BodyHash);
    assert_eq!(g.adapters["ci"].kind, "jenkins");
    assert_eq!(
        g.adapters["ci"].config,
        serde_json::json!({"url": "https://jenkins.example.com", "user": "baton", "token": {"env": "JENKINS_TOKEN"}})
    );
    let instances = g.instances(&kinds());
    assert_eq!(
        instances.keys().collect::<Vec<_>>(),
        ["ci", "bb", "approval", "exec"]
    );
    assert_eq!(
        g.decision_instances(&kinds())
            .into_iter()
            .collect::<Vec<_>>(),
        ["approval"]
    );
    assert_eq!(g.engine, EngineConfig::default());
    assert_eq!(g.engine.default_timeout.0, Duration::from_secs(3600));
    let db = dir.path().join("baton.db");
    assert_eq!(g.store_url(), format!("sqlite://{}", db.display()));
    assert_eq!(
        g.exec_state_dir(),
        PathBuf::from(format!("{}.exec", db.display()))
    );

    let names: Vec<&str> = loaded.workflows.iter().map(|w| w.workflow.name()).collect();
    assert_eq!(names, ["tidb-pr", "lint"]);
    let tidb = loaded.workflow("tidb-pr").unwrap();
    assert_eq!(tidb.file, dir.path().join("workflows/tidb.yaml"));
    assert_eq!(
        tidb.workflow.stage("unit").unwrap().timeout,
        Duration::from_secs(45 * 60)
    );
    assert_eq!(
        tidb.workflow.stage("mysql-tests").unwrap().retry.attempts,
        3
    );
    assert_eq!(tidb.workflow.triggers.len(), 2);
    let by_path = dir.path().join("extra/lint.toml");
    assert_eq!(
        loaded
            .workflow(by_path.to_str().unwrap())
            .unwrap()
            .workflow
            .name(),
        "lint"
    );
    assert!(loaded.workflow("nope").is_none());
}

#[test]
fn yaml_config_and_toml_workflow_load_the_same() {
    let config = r#"
workflows: ["wf/*.toml"]
server: { listen: "0.0.0.0:9000" }
sources:
  deploy:
    kind: generic
    bearer: { token: { env: DEPLOY_TOKEN } }
    event: { header: X-Event }
    delivery_id: { header: X-Request-Id }
engine:
  default_timeout: 2h
  poll_min: 1s
  poll_max: 30s
  max_concurrency: 8
  exec_state_dir: state/exec
"#;
    let dir = fixture(&[("conf/baton.yml", config), ("conf/wf/lint.toml", LINT)]);
    let loaded = load_in(dir.path(), Some("conf/baton.yml"), &[], no_env()).unwrap();
    let g = &loaded.gateway;
    assert_eq!(g.server.listen, "0.0.0.0:9000");
    assert_eq!(g.engine.max_concurrency, 8);
    assert_eq!(
        g.stage_defaults(&kinds()).timeout,
        Duration::from_secs(7200)
    );
    assert_eq!(g.exec_state_dir(), dir.path().join("conf/state/exec"));
    let SourceConfig::Generic(deploy) = &g.sources["deploy"] else {
        panic!("generic")
    };
    assert!(matches!(deploy.auth, GenericAuth::Bearer(_)));
    assert_eq!(deploy.event, Some(EventSelector::Header("X-Event".into())));
    assert_eq!(
        deploy.delivery_id,
        DeliveryId::Header("X-Request-Id".into())
    );
    let lint = &loaded.workflows[0].workflow;
    assert_eq!(
        lint.stage("lint").unwrap().timeout,
        Duration::from_secs(7200)
    );
}

#[test]
fn store_urls_resolve_against_the_config_directory() {
    let mut g = GatewayConfig {
        base_dir: PathBuf::from("/etc/baton"),
        ..GatewayConfig::default()
    };
    let mut url = |u: &str| {
        g.store.url = u.to_owned();
        (g.store_url(), g.exec_state_dir())
    };
    assert_eq!(
        url("sqlite://baton.db"),
        (
            "sqlite:///etc/baton/baton.db".into(),
            "/etc/baton/baton.db.exec".into()
        )
    );
    assert_eq!(
        url("sqlite:data/b.db?mode=rwc").0,
        "sqlite:///etc/baton/data/b.db?mode=rwc"
    );
    assert_eq!(url("sqlite:///var/b.db").0, "sqlite:///var/b.db");
    assert_eq!(
        url("sqlite::memory:"),
        ("sqlite::memory:".into(), "/etc/baton/baton.exec".into())
    );
    assert_eq!(
        url("postgres://u@h/db"),
        ("postgres://u@h/db".into(), "/etc/baton/baton.exec".into())
    );
}

#[test]
fn every_unknown_key_is_reported_with_its_path() {
    let config = r#"
workflow = ["x"]
[server]
lisen = "0.0.0.0:1"
port = 3
[sources.gh]
kind = "github"
secret = { env = "S" }
secrt = { env = "S" }
[sources.deploy]
kind = "generic"
hmac = { secret = { env = "S" }, hedaer = "X-Sig", header = "X-Sig" }
[engine]
max_concurency = 3
"#;
    let workflow = r#"
name: w
nmae: oops
on:
  - { source: manual, evnt: push }
stages:
  a:
    uses: exec
    with: { run: "true" }
    timout: 5m
    retry: { attempts: 2, bakoff: 1s }
"#;
    let dir = fixture(&[("baton.toml", config), ("w.yaml", workflow)]);
    let err = load_in(dir.path(), Some("baton.toml"), &["w.yaml"], no_env()).unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[
            ("baton.toml", "workflow"),
            ("baton.toml", "server.lisen"),
            ("baton.toml", "server.port"),
            ("baton.toml", "sources.gh.secrt"),
            ("baton.toml", "sources.deploy.hmac.hedaer"),
            ("baton.toml", "engine.max_concurency"),
            ("w.yaml", "nmae"),
            ("w.yaml", "on[0].evnt"),
            ("w.yaml", "stages.a.timout"),
            ("w.yaml", "stages.a.retry.bakoff"),
        ])
    );
    let m = message_at(&err, "stages.a.timout");
    assert!(m.contains("did you mean `timeout`?"), "{m}");
    assert!(
        m.contains("expected one of: needs, uses, with, if, timeout, retry, on_failure"),
        "{m}"
    );
    assert!(message_at(&err, "workflow").contains("did you mean `workflows`?"));
}

#[test]
fn type_errors_are_reported_with_paths_and_do_not_hide_later_keys() {
    let config = r#"
[server]
max_body_bytes = "big"
listen = 8080
[engine]
poll_min = "5x"
poll_max = "1s"
"#;
    let workflow = r#"
name: w
stages:
  a:
    uses: exec
    timeout: soon
    with: { run: x }
    retry: { attempts: three }
    on_failure: explode
    extra: 1
  b:
    uses: [exec]
    needs: a
"#;
    let dir = fixture(&[("baton.toml", config), ("w.yaml", workflow)]);
    let err = load_in(dir.path(), Some("baton.toml"), &["w.yaml"], no_env()).unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[
            ("baton.toml", "server.max_body_bytes"),
            ("baton.toml", "server.listen"),
            ("baton.toml", "engine.poll_min"),
            ("w.yaml", "stages.a.timeout"),
            ("w.yaml", "stages.a.retry.attempts"),
            ("w.yaml", "stages.a.on_failure"),
            ("w.yaml", "stages.a.extra"),
            ("w.yaml", "stages.b.uses"),
        ])
    );
    assert!(message_at(&err, "engine.poll_min").contains("`5x` is not a duration"));
    assert!(message_at(&err, "stages.a.timeout").contains("`soon` is not a duration"));
    assert!(message_at(&err, "stages.a.on_failure").contains("`halt`"));
    assert!(message_at(&err, "server.listen").contains("expected a string"));
}

#[test]
fn references_between_files_are_checked() {
    let config = r#"
[sources.gh]
kind = "github"
secret = { env = "S" }
token = { env = "GH" }
[sources.hook]
kind = "generic"
bearer = { token = { env = "T" } }
[adapters.ci]
kind = "jenkins"
url = "http://ci"
"#;
    let workflow = r#"
name: w
on:
  - source: gh
  - source: gitlub
  - source: manual
stages:
  a: { uses: ci, with: { parameters: { SHA: 5 } } }
  b: { uses: cii, with: { job: x } }
  c: { uses: exec, with: { nothing: 1 } }
  d: { uses: approval, with: { message: ok } }
report: [gh, hook, nope]
"#;
    let dir = fixture(&[("baton.toml", config), ("w.yaml", workflow)]);
    let err = load_in(dir.path(), Some("baton.toml"), &["w.yaml"], no_env()).unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[
            ("w.yaml", "on[1].source"),
            ("w.yaml", "stages.a.with.job"),
            ("w.yaml", "stages.a.with.parameters.SHA"),
            ("w.yaml", "stages.b.uses"),
            ("w.yaml", "stages.c.with"),
            ("w.yaml", "report[1]"),
            ("w.yaml", "report[2]"),
        ])
    );
    let m = message_at(&err, "stages.b.uses");
    assert!(
        m.contains("unknown adapter `cii`") && m.contains("(ci)") && m.contains("(approval, exec)"),
        "{m}"
    );
    assert!(message_at(&err, "on[1].source").contains("`manual` or a [sources] name: gh, hook"));
    assert!(message_at(&err, "report[1]").contains("generic"));
}

#[test]
fn compile_errors_come_through_with_paths() {
    let workflow = r#"
name: w
on: [{ source: manual, if: ".a |" }]
stages:
  a: { uses: exec, with: { run: x } }
  b:
    uses: exec
    with: { run: '${{ .stages.a.outputs.x }}' }
    if: '((('
  c: { uses: exec, with: { run: x }, needs: [zz], timeout: 0s }
"#;
    let dir = fixture(&[("w.yaml", workflow)]);
    let err = load_in(dir.path(), None, &["w.yaml"], no_env()).unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[
            ("w.yaml", "on[0].if"),
            ("w.yaml", "stages.b.with"),
            ("w.yaml", "stages.b.if"),
            ("w.yaml", "stages.c.needs[0]"),
            ("w.yaml", "stages.c.timeout"),
        ])
    );
    assert!(message_at(&err, "stages.b.with").contains("not upstream"));
}

#[test]
fn a_broken_stage_does_not_hide_or_fake_problems_elsewhere() {
    let workflow = r#"
name: w
stages:
  a: { uses: exec, timeout: never, with: { run: '${{ ][ }}' } }
  b: { uses: exec, needs: [a], with: { run: '${{ .stages.a.outputs.v }}' } }
  c: { uses: 5, needs: 7, with: { run: '${{ .stages.a.outputs.v }}' } }
  d: { uses: exec, with: {} }
"#;
    let dir = fixture(&[("w.yaml", workflow)]);
    let err = load_in(dir.path(), None, &["w.yaml"], no_env()).unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[
            ("w.yaml", "stages.a.timeout"),
            ("w.yaml", "stages.a.with.run"),
            ("w.yaml", "stages.c.uses"),
            ("w.yaml", "stages.c.needs"),
            ("w.yaml", "stages.d.with"),
        ])
    );
}

#[test]
fn workflow_names_are_unique_across_files() {
    let wf = |name: &str| {
        format!("name: {name}\nstages: {{ a: {{ uses: exec, with: {{ run: x }} }} }}\n")
    };
    let dir = fixture(&[
        ("baton.toml", "workflows = [\"wf/*.yaml\"]"),
        ("wf/1.yaml", &wf("same")),
        ("wf/2.yaml", &wf("same")),
        ("wf/3.yaml", &wf("other")),
    ]);
    let err = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap_err();
    assert_eq!(pairs(dir.path(), &err), set(&[("wf/2.yaml", "name")]));
    let m = message_at(&err, "name");
    assert!(m.contains("`same`") && m.contains("1.yaml"), "{m}");
}

#[test]
fn literal_secrets_are_refused_with_the_reference_hint() {
    let config = r#"
[api]
tokens = [{ name = "ops", token = "abc", role = "operator" }, { name = "ops", token = { env = "X" }, role = "admin" }]
[sources.gh]
kind = "github"
secrets = [{ env = "OLD" }, "hunter2"]
[sources.gl]
kind = "gitlab"
token = "glpat"
[sources.hook]
kind = "generic"
hmac = { secret = "s", header = "X-Sig" }
[adapters.ci]
kind = "jenkins"
url = "http://ci"
token = "t0k3n"
"#;
    let dir = fixture(&[("baton.toml", config)]);
    let err = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[
            ("baton.toml", "api.tokens[0].token"),
            ("baton.toml", "api.tokens[1].role"),
            ("baton.toml", "sources.gh.secrets[1]"),
            ("baton.toml", "sources.gl.token"),
            ("baton.toml", "sources.hook.hmac.secret"),
            ("baton.toml", "adapters.ci.token"),
        ])
    );
    for path in [
        "api.tokens[0].token",
        "sources.gh.secrets[1]",
        "sources.gl.token",
        "sources.hook.hmac.secret",
        "adapters.ci.token",
    ] {
        let m = message_at(&err, path);
        assert!(
            m.contains("literal secret") && m.contains("{ env = \"NAME\" }"),
            "{path}: {m}"
        );
    }
}

#[test]
fn sources_are_checked() {
    let config = r#"
[sources.manual]
kind = "github"
secret = { env = "S" }
[sources."Bad.Name"]
kind = "gitlab"
token = { env = "T" }
[sources.nosecret]
kind = "github"
[sources.both]
kind = "generic"
hmac = { secret = { env = "S" }, header = "X Sig" }
bearer = { token = { env = "T" } }
[sources.neither]
kind = "generic"
event = { header = "X-Event", expr = ".type" }
[sources.badjq]
kind = "generic"
bearer = { token = { env = "T" } }
event = { expr = ".a |" }
[sources.what]
kind = "bitbucket"
[sources.nokind]
secret = { env = "S" }
[sources.algo]
kind = "generic"
hmac = { secret = { env = "S" }, header = "X-Sig", algorithm = "md5" }
"#;
    let dir = fixture(&[("baton.toml", config)]);
    let err = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[
            ("baton.toml", "sources.manual"),
            ("baton.toml", "sources.Bad.Name"),
            ("baton.toml", "sources.nosecret.secret"),
            ("baton.toml", "sources.both"),
            ("baton.toml", "sources.both.hmac.header"),
            ("baton.toml", "sources.neither"),
            ("baton.toml", "sources.neither.event"),
            ("baton.toml", "sources.badjq.event.expr"),
            ("baton.toml", "sources.what.kind"),
            ("baton.toml", "sources.nokind.kind"),
            ("baton.toml", "sources.algo.hmac.algorithm"),
        ])
    );
    assert!(message_at(&err, "sources.manual").contains("reserved"));
    assert!(message_at(&err, "sources.what.kind").contains("github, gitlab, generic, travis"));
    assert!(message_at(&err, "sources.badjq.event.expr").contains("invalid jq expression"));
}

#[test]
fn adapters_are_checked_by_their_kind() {
    let config = r#"
[adapters.ci]
kind = "jenkins"
[adapters.x]
kind = "gitea"
[adapters.exec]
kind = "jenkins"
url = "http://ci"
[adapters.ok]
kind = "buildbot"
"#;
    let workflow = "name: w\nstages: { a: { uses: ci, with: { nojob: 1 } }, b: { uses: x }, c: { uses: ok } }\n";
    let dir = fixture(&[("baton.toml", config), ("w.yaml", workflow)]);
    let err = load_in(dir.path(), Some("baton.toml"), &["w.yaml"], no_env()).unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[
            ("baton.toml", "adapters.ci.url"),
            ("baton.toml", "adapters.x.kind"),
            ("baton.toml", "adapters.exec.kind"),
            // The kind of `ci` is known, so its stages are still checked; `x` is already
            // reported, so `b` gets no second problem.
            ("w.yaml", "stages.a.with.job"),
        ])
    );
    assert!(message_at(&err, "adapters.x.kind").contains("approval, buildbot, exec, jenkins"));
}

#[test]
fn environment_overrides_set_keys_and_ignore_child_variables() {
    let dir = fixture(&[
        ("baton.toml", "[server]\nlisten = \"127.0.0.1:1\"\n"),
        (
            "wf/a.yaml",
            "name: a\nstages: { a: { uses: exec, with: { run: x } } }\n",
        ),
    ]);
    let vars = env(&[
        ("BATON_SERVER__LISTEN", "0.0.0.0:8080"),
        ("BATON_SERVER__MAX_BODY_BYTES", "1024"),
        ("BATON_ENGINE__DEFAULT_TIMEOUT", "10m"),
        ("BATON_WORKFLOWS", r#"["wf/*.yaml"]"#),
        ("BATON_SOURCES__GH__KIND", "github"),
        ("BATON_SOURCES__GH__SECRET", r#"{"env": "GH_SECRET"}"#),
        ("BATON_INPUT", "/tmp/in.json"),
        ("BATON_OUTPUT", "/tmp/out.json"),
        ("BATON_RUN_ID", "r1"),
        ("BATON_STAGE", "build"),
        ("BATON_ATTEMPT", "1"),
        ("HOME", "/root"),
    ]);
    let loaded = load_in(dir.path(), Some("baton.toml"), &[], vars).unwrap();
    let g = &loaded.gateway;
    assert_eq!(g.server.listen, "0.0.0.0:8080");
    assert_eq!(g.server.max_body_bytes, 1024);
    assert_eq!(g.engine.default_timeout.0, Duration::from_secs(600));
    assert!(matches!(&g.sources["gh"], SourceConfig::Github(_)));
    assert_eq!(loaded.workflows.len(), 1);
}

#[test]
fn bad_environment_overrides_are_reported() {
    let dir = fixture(&[("baton.toml", "workflows = []\nstore = \"x\"\n")]);
    let vars = env(&[
        ("BATON_SERVER__MAX_BODY_BYTES", "lots"),
        ("BATON_API__TOKENS", "[not json"),
        ("BATON_STORE__URL", "sqlite://x.db"),
        ("BATON_ENGINE____POLL_MIN", "1s"),
        ("BATON_INPUT", "[not json either"),
    ]);
    let err = load_in(dir.path(), Some("baton.toml"), &[], vars).unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[
            ("(environment)", "BATON_API__TOKENS"),
            ("(environment)", "BATON_STORE__URL"),
            ("(environment)", "BATON_ENGINE____POLL_MIN"),
            ("baton.toml", "server.max_body_bytes"),
            ("baton.toml", "store"),
        ])
    );
    assert!(
        message_at(&err, "server.max_body_bytes")
            .ends_with("(set by BATON_SERVER__MAX_BODY_BYTES)")
    );
    assert!(message_at(&err, "BATON_STORE__URL").contains("`store` is not a table"));
}

#[test]
fn globs_are_relative_to_the_config_file_and_checked() {
    let wf = "name: NAME\nstages: { a: { uses: exec, with: { run: x } } }\n";
    let dir = fixture(&[
        (
            "etc/baton/baton.toml",
            "workflows = [\"flows/*.yaml\", \"flows/**/*.yml\"]",
        ),
        ("etc/baton/flows/a.yaml", &wf.replace("NAME", "a")),
        ("etc/baton/flows/deep/b.yml", &wf.replace("NAME", "b")),
        ("etc/baton/flows/deep/c.yaml", &wf.replace("NAME", "c")),
        ("flows/not-me.yaml", &wf.replace("NAME", "x")),
    ]);
    // The same file through a glob and directly is loaded once.
    let loaded = load_in(
        dir.path(),
        Some("etc/baton/baton.toml"),
        &["etc/baton/flows/a.yaml", "etc/baton/flows/deep/c.yaml"],
        no_env(),
    )
    .unwrap();
    let names: Vec<&str> = loaded.workflows.iter().map(|w| w.workflow.name()).collect();
    assert_eq!(names, ["a", "b", "c"]);

    let bad = fixture(&[(
        "baton.toml",
        "workflows = [\"nothing/*.yaml\", \"[\", \"x/***/y\"]",
    )]);
    let err = load_in(bad.path(), Some("baton.toml"), &[], no_env()).unwrap_err();
    assert_eq!(
        pairs(bad.path(), &err),
        set(&[
            ("baton.toml", "workflows[0]"),
            ("baton.toml", "workflows[1]"),
            ("baton.toml", "workflows[2]"),
        ])
    );
    assert!(message_at(&err, "workflows[0]").contains("matches no file"));
    assert!(message_at(&err, "workflows[1]").contains("not a valid glob"));
}

#[test]
fn a_lone_workflow_file_needs_no_config() {
    let ok = "name: solo\non: [{ source: manual }]\nstages:\n  a: { uses: exec, with: { run: x } }\n  b: { uses: approval, needs: a, with: { message: go? } }\n";
    let dir = fixture(&[
        ("solo.yaml", ok),
        (
            "needs-config.yaml",
            "name: nc\non: [{ source: github }]\nstages: { a: { uses: ci, with: { job: j } } }\n",
        ),
    ]);
    let loaded = load_in(dir.path(), None, &["solo.yaml"], no_env()).unwrap();
    assert!(loaded.config_file.is_none());
    assert_eq!(loaded.workflows[0].workflow.name(), "solo");
    assert!(loaded.gateway.sources.is_empty());
    assert_eq!(loaded.gateway.instances(&kinds()).len(), 2);

    let err = load_in(dir.path(), None, &["needs-config.yaml"], no_env()).unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[
            ("needs-config.yaml", "on[0].source"),
            ("needs-config.yaml", "stages.a.uses"),
        ])
    );
    assert!(message_at(&err, "on[0].source").contains("no gateway config"));

    // Without the kinds registered, `exec` is no instance: `uses: exec` cannot work.
    let err = load(
        None,
        &[dir.path().join("solo.yaml")],
        &Kinds::new(),
        no_env(),
    )
    .unwrap_err();
    assert!(message_at(&err, "stages.a.uses").contains("unknown adapter `exec`"));
}

#[test]
fn unreadable_and_odd_files_are_problems_not_panics() {
    let dir = fixture(&[
        ("empty.yaml", ""),
        ("empty.toml", ""),
        ("list.yaml", "- a\n- b\n"),
        ("text.yaml", "just text"),
        ("wf.json", "{}"),
        ("tagged.yaml", "name: !Secret w\nstages: {}\n"),
        (
            "keys.yaml",
            "name: w\n? [a]\n: 1\nstages: { 1: { uses: exec, with: { run: x } } }\n",
        ),
        (
            "nan.yaml",
            "name: w\nstages: { a: { uses: exec, with: { n: .nan } } }\n",
        ),
        ("bad.toml", "name = \"w\"\n[stages\n"),
        ("dup.yaml", "name: a\nname: b\n"),
    ]);
    std::fs::write(
        dir.path().join("binary.yaml"),
        [0x6e, 0x3a, 0xff, 0xfe, 0x00],
    )
    .unwrap();
    let huge = "# padding\n".repeat((MAX_FILE_BYTES as usize / 10) + 1);
    std::fs::write(dir.path().join("huge.yaml"), huge).unwrap();
    std::fs::create_dir(dir.path().join("dir.yaml")).unwrap();

    let expect = |file: &str, path: &str, fragment: &str| {
        let err = load_in(dir.path(), None, &[file], no_env()).unwrap_err();
        let found = err
            .iter()
            .any(|d| d.path == path && d.message.contains(fragment));
        assert!(
            found,
            "{file}: expected `{fragment}` at `{path}`, got:\n{err}"
        );
    };
    expect("empty.yaml", "", "the file is empty");
    expect("empty.toml", "name", "missing required key `name`");
    expect("empty.toml", "stages", "missing required key `stages`");
    expect("list.yaml", "", "found a list");
    expect("text.yaml", "", "found a string");
    expect("wf.json", "", "expected a `.toml`, `.yaml` or `.yml` file");
    expect("tagged.yaml", "name", "YAML tags");
    expect("keys.yaml", "", "keys must be text");
    expect("nan.yaml", "stages.a.with.n", "NaN");
    expect("bad.toml", "", "invalid TOML at line 2");
    expect("dup.yaml", "", "duplicate");
    expect("binary.yaml", "", "not UTF-8 text");
    expect("huge.yaml", "", "larger than 8 MiB");
    expect("dir.yaml", "", "cannot read");
    expect("missing.yaml", "", "cannot read");

    // An empty config file is all defaults; a config that is a list is a problem.
    let loaded = load_in(dir.path(), Some("empty.toml"), &[], no_env()).unwrap();
    assert_eq!(loaded.gateway.server.listen, "127.0.0.1:8080");
    let err = load_in(dir.path(), Some("list.yaml"), &[], no_env()).unwrap_err();
    assert!(err.to_string().contains("expected a map of settings"));
}

#[test]
fn deep_nesting_and_alias_bombs_are_refused() {
    let bomb = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n";
    let deep_yaml = format!("name: {}{}", "[".repeat(50_000), "]".repeat(50_000));
    let deep_block: String = (0..300)
        .map(|i| format!("{}a{i}:\n", " ".repeat(i)))
        .collect();
    let deep_toml = format!("name = {}{}", "[".repeat(50_000), "]".repeat(50_000));
    let deep_table = format!("[{}]\nx = 1", vec!["a"; 5_000].join("."));
    let deep_jq = format!(
        "name: w\nstages: {{ a: {{ uses: exec, if: '{}.{}', with: {{ run: x }} }} }}\n",
        "(".repeat(5_000),
        ")".repeat(5_000)
    );
    let dir = fixture(&[
        ("bomb.yaml", bomb),
        ("deep.yaml", &deep_yaml),
        ("deep-block.yaml", &deep_block),
        ("deep.toml", &deep_toml),
        ("table.toml", &deep_table),
        ("jq.yaml", &deep_jq),
    ]);
    for (file, fragment) in [
        ("bomb.yaml", "repetition limit"),
        ("deep.yaml", "nested 50000 levels deep"),
        ("deep-block.yaml", "nested more than 128 levels deep"),
        ("deep.toml", "invalid TOML"),
        ("table.toml", "invalid TOML"),
        ("jq.yaml", "too complex"),
    ] {
        let err = load_in(dir.path(), None, &[file], no_env()).unwrap_err();
        assert!(err.to_string().contains(fragment), "{file}: {err}");
    }
}

#[test]
fn yaml_nesting_has_one_limit_and_every_message_states_it() {
    let flow = |depth: usize| format!("x: {}{}\n", "[".repeat(depth), "]".repeat(depth));
    let block = |depth: usize| -> String {
        (0..depth)
            .map(|i| format!("{}a{i}:\n", " ".repeat(i)))
            .collect()
    };
    let dir = fixture(&[
        ("flow-200.yaml", &flow(200)),
        ("flow-600.yaml", &flow(600)),
        ("block-200.yaml", &block(200)),
        ("flow-127.yaml", &flow(127)),
    ]);
    let limit = format!("at most {MAX_YAML_DEPTH} levels are allowed");
    assert_eq!(MAX_YAML_DEPTH, 128);
    for file in ["flow-200.yaml", "flow-600.yaml", "block-200.yaml"] {
        let err = load_in(dir.path(), None, &[file], no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&limit), "{file}: {err}");
        assert!(err.contains("nested"), "{file}: {err}");
    }
    // 127 brackets under the top-level map: 128 levels, read (and then found not a workflow).
    let err = load_in(dir.path(), None, &["flow-127.yaml"], no_env())
        .unwrap_err()
        .to_string();
    assert!(!err.contains("nested"), "{err}");
}

#[test]
fn secrets_are_read_with_the_load_when_asked_and_reported_at_their_paths() {
    let config = r#"
workflows = ["wf/*.yaml"]

[api]
tokens = [{ name = "ops", token = { env = "OPS_TOKEN" }, role = "operator" }]

[sources.gh]
kind = "github"
secret = { file = "secrets/missing" }
secrets = [{ file = "secrets" }, { env = "GH_OLD" }]

[adapters.ci]
kind = "jenkins"
url = "http://ci"
token = { env = "JENKINS_TOKEN" }
"#;
    let dir = fixture(&[
        ("baton.toml", config),
        ("secrets/ok", "fine\n"),
        (
            "wf/a.yaml",
            "name: a\nstages: { s: { uses: exec, with: { run: x } } }\n",
        ),
    ]);
    let file = dir.path().join("baton.toml");
    let vars = env(&[("GH_OLD", "old")]);
    let read = |from| load_reading_secrets(Some(&file), &[], &kinds(), vars.clone(), from);

    // A plain load reads no secret: `serve` would refuse this config, but only later.
    let loaded = load(Some(&file), &[], &kinds(), vars.clone()).unwrap();
    assert_eq!(
        loaded.secret_env_names(),
        ["GH_OLD", "JENKINS_TOKEN", "OPS_TOKEN"]
            .map(String::from)
            .into_iter()
            .collect()
    );

    let checked = read(SecretsFrom::Here);
    assert!(checked.warnings.is_empty());
    let problems = checked.loaded.unwrap_err();
    assert_eq!(
        pairs(dir.path(), &problems),
        set(&[
            ("baton.toml", "api.tokens[0].token"),
            ("baton.toml", "sources.gh.secret"),
            ("baton.toml", "sources.gh.secrets[0]"),
            ("baton.toml", "adapters.ci.token"),
        ])
    );
    assert!(message_at(&problems, "api.tokens[0].token").contains("`OPS_TOKEN` is not set"));
    assert!(message_at(&problems, "sources.gh.secret").contains("does not exist"));
    assert!(message_at(&problems, "sources.gh.secrets[0]").contains("directory"));

    // For another machine, what is only absent here is a warning; a directory stays wrong.
    let checked = read(SecretsFrom::Elsewhere);
    assert_eq!(
        pairs(dir.path(), &checked.loaded.unwrap_err()),
        set(&[("baton.toml", "sources.gh.secrets[0]")])
    );
    assert_eq!(checked.warnings.len(), 3);
    std::fs::remove_dir_all(dir.path().join("secrets")).unwrap();
    let checked = read(SecretsFrom::Elsewhere);
    assert!(checked.loaded.is_ok());
    let paths: Vec<&str> = checked.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "api.tokens[0].token",
            "sources.gh.secret",
            "sources.gh.secrets[0]",
            "adapters.ci.token"
        ]
    );
}

#[test]
fn templates_in_exec_scripts_load_quoted() {
    let dir = fixture(&[(
        "wf.yaml",
        "name: w\nstages:\n  s:\n    uses: exec\n    with: { run: 'echo \"${{ .event.ref }}\"', env: { R: '${{ .event.ref }}' } }\n",
    )]);
    let loaded = load_in(dir.path(), None, &["wf.yaml"], no_env()).unwrap();
    let stage = &loaded.workflows[0].workflow.stages[0];
    let context = baton_core::expr::to_val(&serde_json::json!({"event": {"ref": "$(id)"}}));
    let with = stage.with.render(&context).unwrap();
    assert_eq!(with["run"], "echo \"\"'$(id)'\"\"");
    assert_eq!(with["env"]["R"], "$(id)");

    let dir = fixture(&[(
        "wf.yaml",
        "name: w\nstages:\n  s:\n    uses: exec\n    with: { run: 'echo `${{ .event.ref }}`' }\n",
    )]);
    let problems = load_in(dir.path(), None, &["wf.yaml"], no_env()).unwrap_err();
    assert!(
        message_at(&problems, "stages.s.with.run").contains("backquotes"),
        "{problems}"
    );
}

/// A small fixed-seed generator (xorshift64*), so the fuzz test is repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_and_truncated_files_never_panic() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let seeds: [(&str, &str); 4] = [
        ("toml", CONFIG),
        ("yaml", WORKFLOW),
        ("toml", LINT),
        (
            "yaml",
            "workflows: [\"*.yaml\"]\nsources: { g: { kind: github, secret: { env: S } } }\n",
        ),
    ];
    let alphabet = b"{}[]:,-\"'\n #&*!|>.=$()abc0123456789";
    let mut loads = 0;
    for round in 0..240 {
        let (ext, seed) = seeds[round % seeds.len()];
        let bytes: Vec<u8> = match round % 3 {
            // A truncated valid file.
            0 => seed.as_bytes()[..rng.below(seed.len() + 1)].to_vec(),
            // A valid file with a few bytes replaced by syntax characters.
            1 => {
                let mut b = seed.as_bytes().to_vec();
                for _ in 0..1 + rng.below(6) {
                    let at = rng.below(b.len());
                    b[at] = alphabet[rng.below(alphabet.len())];
                }
                b
            }
            // Random bytes, sometimes only syntax characters.
            _ => (0..rng.below(300))
                .map(|_| {
                    if round % 2 == 0 {
                        rng.next() as u8
                    } else {
                        alphabet[rng.below(alphabet.len())]
                    }
                })
                .collect(),
        };
        let file = dir.path().join(format!("f{round}.{ext}"));
        std::fs::write(&file, &bytes).unwrap();
        // As a config file and as a workflow file.
        let _ = load(Some(&file), &[], &kinds(), no_env());
        let _ = load(None, std::slice::from_ref(&file), &kinds(), no_env());
        std::fs::remove_file(&file).unwrap();
        loads += 2;
    }
    assert_eq!(loads, 480);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn diagnostics_print_one_per_line_and_a_count() {
    let d = Diagnostics(vec![
        Diagnostic::new("baton.toml", "sources.gh.secret", "expected a reference"),
        Diagnostic::new("w.yaml", "", "not UTF-8 text"),
    ]);
    assert_eq!(
        d.to_string(),
        "baton.toml: sources.gh.secret: expected a reference\nw.yaml: not UTF-8 text\n2 problems"
    );
    let one = Diagnostics(vec![Diagnostic::new("a", "b", "c")]);
    assert_eq!(one.to_string(), "a: b: c\n1 problem");
}

#[test]
fn server_store_and_engine_values_are_checked() {
    let config = r#"
[server]
listen = "localhost"
public_url = "ftp://x"
max_body_bytes = 0
[store]
url = "mysql://db"
[engine]
default_timeout = "0s"
poll_min = "10s"
poll_max = "5s"
max_concurrency = 0
"#;
    let dir = fixture(&[("baton.toml", config)]);
    let err = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[
            ("baton.toml", "server.listen"),
            ("baton.toml", "server.public_url"),
            ("baton.toml", "server.max_body_bytes"),
            ("baton.toml", "store.url"),
            ("baton.toml", "engine.default_timeout"),
            ("baton.toml", "engine.poll_max"),
            ("baton.toml", "engine.max_concurrency"),
        ])
    );
}

#[test]
fn reporting_credentials_are_read() {
    let config = r#"
[sources.token]
kind = "github"
secret = { env = "S" }
api_url = "https://ghe.example.com/api/v3/"
token = { env = "GH_TOKEN" }
[sources.app]
kind = "github"
secret = { env = "S" }
app_id = 12345
private_key = { file = "app.pem" }
[sources.pinned]
kind = "github"
secret = { env = "S" }
app_id = 7
private_key = { env = "APP_KEY" }
installation_id = 99
[sources.gl]
kind = "gitlab"
token = { env = "T" }
api_url = "https://gitlab.example.com/api/v4"
api_token = { env = "GL_API" }
"#;
    let workflow = "name: w\nstages: { a: { uses: exec, with: { run: x } } }\nreport: [token, app, pinned, gl]\n";
    let dir = fixture(&[("baton.toml", config), ("w.yaml", workflow)]);
    let loaded = load_in(dir.path(), Some("baton.toml"), &["w.yaml"], no_env()).unwrap();
    let sources = &loaded.gateway.sources;
    let SourceConfig::Github(token) = &sources["token"] else {
        panic!("github")
    };
    assert_eq!(token.api_url, "https://ghe.example.com/api/v3");
    assert_eq!(
        token.api_auth,
        Some(GithubAuth::Token(baton_core::SecretRef::Env(
            "GH_TOKEN".into()
        )))
    );
    let SourceConfig::Github(app) = &sources["app"] else {
        panic!("github")
    };
    assert_eq!(app.api_url, GITHUB_API_URL);
    assert_eq!(
        app.api_auth,
        Some(GithubAuth::App(GithubApp {
            app_id: 12345,
            private_key: baton_core::SecretRef::File("app.pem".into()),
            installation_id: None,
        }))
    );
    let SourceConfig::Github(pinned) = &sources["pinned"] else {
        panic!("github")
    };
    assert!(matches!(
        &pinned.api_auth,
        Some(GithubAuth::App(GithubApp {
            app_id: 7,
            installation_id: Some(99),
            ..
        }))
    ));
    let SourceConfig::Gitlab(gl) = &sources["gl"] else {
        panic!("gitlab")
    };
    assert_eq!(gl.api_url, "https://gitlab.example.com/api/v4");
    assert_eq!(
        gl.api_token,
        Some(baton_core::SecretRef::Env("GL_API".into()))
    );
    assert!(sources.values().all(SourceConfig::can_report));
    assert_eq!(
        loaded.workflows[0].workflow.spec.report,
        ["token", "app", "pinned", "gl"]
    );

    // Credentials can come from the environment too.
    let dir = fixture(&[
        (
            "baton.toml",
            "[sources.gh]\nkind = \"github\"\nsecret = { env = \"S\" }\n",
        ),
        (
            "w.yaml",
            "name: w\nstages: { a: { uses: exec, with: { run: x } } }\nreport: [gh]\n",
        ),
    ]);
    let vars = env(&[
        ("BATON_SOURCES__GH__APP_ID", "42"),
        ("BATON_SOURCES__GH__PRIVATE_KEY", r#"{"file":"k.pem"}"#),
    ]);
    let loaded = load_in(dir.path(), Some("baton.toml"), &["w.yaml"], vars).unwrap();
    assert!(matches!(
        &loaded.gateway.sources["gh"],
        SourceConfig::Github(GithubSource {
            api_auth: Some(GithubAuth::App(GithubApp { app_id: 42, .. })),
            ..
        })
    ));
}

#[test]
fn reporting_credentials_are_checked() {
    let config = r#"
[sources.both]
kind = "github"
secret = { env = "S" }
token = { env = "T" }
app_id = 1
private_key = { file = "k.pem" }
[sources.nokey]
kind = "github"
secret = { env = "S" }
app_id = 1
[sources.noid]
kind = "github"
secret = { env = "S" }
private_key = { file = "k.pem" }
installation_id = 5
[sources.zero]
kind = "github"
secret = { env = "S" }
app_id = 0
private_key = { file = "k.pem" }
installation_id = 0
[sources.negative]
kind = "github"
secret = { env = "S" }
app_id = -3
private_key = { file = "k.pem" }
[sources.literal]
kind = "github"
secret = { env = "S" }
token = "ghp_abc"
[sources.url]
kind = "github"
secret = { env = "S" }
api_url = "api.github.com"
token = { env = "T" }
[sources.gl]
kind = "gitlab"
token = { env = "T" }
api_token = "glpat-abc"
private_token = { env = "X" }
[sources.glurl]
kind = "gitlab"
token = { env = "T" }
api_url = "ftp://gitlab"
"#;
    let dir = fixture(&[("baton.toml", config)]);
    let err = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[
            ("baton.toml", "sources.both"),
            ("baton.toml", "sources.nokey.private_key"),
            ("baton.toml", "sources.noid.app_id"),
            ("baton.toml", "sources.zero.app_id"),
            ("baton.toml", "sources.zero.installation_id"),
            ("baton.toml", "sources.negative.app_id"),
            ("baton.toml", "sources.literal.token"),
            ("baton.toml", "sources.url.api_url"),
            ("baton.toml", "sources.gl.api_token"),
            ("baton.toml", "sources.glurl.api_url"),
            ("baton.toml", "sources.gl.private_token"),
        ])
    );
    assert!(message_at(&err, "sources.both").contains("not both"));
    assert!(message_at(&err, "sources.nokey.private_key").contains("private_key = { file"));
    assert!(message_at(&err, "sources.noid.app_id").contains("app_id = "));
    assert!(message_at(&err, "sources.literal.token").contains("literal secret"));
    assert!(message_at(&err, "sources.gl.api_token").contains("literal secret"));
    assert!(message_at(&err, "sources.url.api_url").contains("https://api.github.com"));
    assert!(message_at(&err, "sources.glurl.api_url").contains("https://gitlab.com/api/v4"));
    assert!(message_at(&err, "sources.gl.private_token").contains("api_token"));
}

#[test]
fn report_needs_a_source_with_credentials() {
    let config = r#"
[sources.gh]
kind = "github"
secret = { env = "S" }
[sources.gl]
kind = "gitlab"
token = { env = "T" }
[sources.ok]
kind = "github"
secret = { env = "S" }
token = { env = "GH" }
[sources.broken]
kind = "gitlab"
token = { env = "T" }
api_token = "literal"
"#;
    let workflow = "name: w\nstages: { a: { uses: exec, with: { run: x } } }\nreport: [gh, gl, ok, ok, broken]\n";
    let dir = fixture(&[("baton.toml", config), ("w.yaml", workflow)]);
    let err = load_in(dir.path(), Some("baton.toml"), &["w.yaml"], no_env()).unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[
            ("baton.toml", "sources.broken.api_token"),
            // `broken` is already reported in the config: no second problem here.
            ("w.yaml", "report[0]"),
            ("w.yaml", "report[1]"),
            ("w.yaml", "report[3]"),
        ])
    );
    let m = message_at(&err, "report[0]");
    assert!(
        m.contains("`gh` has no API credentials")
            && m.contains("token = { env = \"GITHUB_TOKEN\" }")
            && m.contains("app_id")
            && m.contains("[sources.gh]"),
        "{m}"
    );
    let m = message_at(&err, "report[1]");
    assert!(
        m.contains("api_token = { env = \"GITLAB_API_TOKEN\" }") && m.contains("[sources.gl]"),
        "{m}"
    );
    assert!(message_at(&err, "report[3]").contains("already listed at report[2]"));
}

/// The example of `baton validate` output in docs/config.md.
#[test]
fn the_documented_validate_output() {
    let config = r#"
workflows = ["workflows/*.yaml"]
[server]
listen = "0.0.0.0:8080"
[sources.github]
kind = "github"
secret = "hunter2"
[adapters.ci]
kind = "jenkins"
url = "https://jenkins.example.com"
"#;
    let wf = r#"
name: tidb-pr
on:
  - source: gitlab
stages:
  unit:
    uses: exec
    with: { run: make test }
    timout: 45m
  mysql-tests:
    uses: ci
    with:
      parameters: { SHA: '${{ .stages.unit.outputs.sha }}' }
    retry: { attempts: 3, backoff: 30 }
"#;
    let dir = fixture(&[("baton.toml", config), ("workflows/tidb.yaml", wf)]);
    let err = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap_err();
    let text = err
        .to_string()
        .replace(&dir.path().display().to_string(), ".");
    assert_eq!(
        text,
        r#"./baton.toml: sources.github.secret: a literal secret is not allowed here: write a reference, `{ env = "NAME" }` or `{ file = "/path" }`
./workflows/tidb.yaml: stages.unit.timout: unknown key `timout` (did you mean `timeout`?); expected one of: needs, uses, with, if, timeout, retry, on_failure
./workflows/tidb.yaml: stages.mysql-tests.retry.backoff: invalid type: integer `30`, expected a string
./workflows/tidb.yaml: on[0].source: unknown source `gitlab`: expected `manual` or a [sources] name: github
./workflows/tidb.yaml: stages.mysql-tests.with.job: missing the job name
./workflows/tidb.yaml: stages.mysql-tests.with: `.stages.unit.outputs.sha` reads stage `unit`, which is not upstream of `mysql-tests`: add `unit` to `needs` (directly or through a stage it needs)
6 problems"#
    );
}

/// Loads `text` as the gateway config: its `[server]`, or the problem keys and messages.
fn server_section(text: &str) -> Result<ServerConfig, Vec<(String, String)>> {
    let dir = fixture(&[("baton.toml", text)]);
    match load_in(dir.path(), Some("baton.toml"), &[], no_env()) {
        Ok(loaded) => Ok(loaded.gateway.server),
        Err(err) => Err(err
            .iter()
            .map(|d| (d.path.clone(), d.message.clone()))
            .collect()),
    }
}

#[test]
fn connection_limits_are_read_with_defaults_and_checked() {
    let secs = |n| HumanDuration(Duration::from_secs(n));
    assert_eq!(
        server_section("[server]\n").unwrap(),
        ServerConfig {
            header_timeout: secs(10),
            body_timeout: secs(30),
            idle_timeout: secs(60),
            max_connections: 1024,
            reserved_connections: 32,
            ..ServerConfig::default()
        }
    );
    let set_all = r#"
[server]
header_timeout = "2s"
body_timeout = "1m"
idle_timeout = "500ms"
max_connections = 200
reserved_connections = 20
"#;
    assert_eq!(
        server_section(set_all).unwrap(),
        ServerConfig {
            header_timeout: secs(2),
            body_timeout: secs(60),
            idle_timeout: HumanDuration(Duration::from_millis(500)),
            max_connections: 200,
            reserved_connections: 20,
            ..ServerConfig::default()
        }
    );

    // Every problem at once, each at its key.
    let bad = r#"
[server]
header_timeout = "0s"
max_body_bytes = 0
body_timeout = "0ms"
idle_timeout = "0s"
max_connections = 8
reserved_connections = 8
"#;
    let zero = "expected a duration longer than 0s";
    assert_eq!(
        server_section(bad).unwrap_err(),
        [
            ("server.max_body_bytes", "expected at least 1 byte"),
            ("server.header_timeout", zero),
            ("server.body_timeout", zero),
            ("server.idle_timeout", zero),
            (
                "server.reserved_connections",
                "8 leaves no connection for webhooks: expected fewer than `max_connections` (8)"
            ),
        ]
        .map(|(k, m)| (k.to_owned(), m.to_owned()))
    );
    let mut problems =
        server_section("[server]\nmax_connections = -1\nidle_timeout = \"soon\"\n").unwrap_err();
    problems.sort();
    let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["server.idle_timeout", "server.max_connections"],
        "{problems:?}"
    );
    assert!(
        problems[0].1.contains("`soon` is not a duration"),
        "{problems:?}"
    );
    assert_eq!(
        server_section("[server]\nmax_connections = 0\n").unwrap_err(),
        [(
            "server.max_connections".to_owned(),
            "expected at least 1".to_owned()
        )]
    );
}

#[test]
fn expression_bounds_are_read_with_defaults_and_from_the_environment() {
    let defaults = GatewayConfig::default().expressions;
    assert_eq!(defaults.limits(), baton_core::expr_bound::Limits::default());
    assert_eq!(defaults.max_steps, 1_000_000);
    assert_eq!(defaults.max_time.0, Duration::from_secs(1));
    assert_eq!(defaults.max_memory, 64 << 20);

    let config = "[expressions]\nmax_steps = 5000\nmax_time = \"250ms\"\n";
    let dir = fixture(&[("baton.toml", config)]);
    let vars = env(&[("BATON_EXPRESSIONS__MAX_MEMORY", "2097152")]);
    let loaded = load_in(dir.path(), Some("baton.toml"), &[], vars).unwrap();
    let limits = loaded.gateway.expressions.limits();
    assert_eq!(limits.max_steps, 5000);
    assert_eq!(limits.max_time, Duration::from_millis(250));
    assert_eq!(limits.max_memory, 2 << 20);
}

#[test]
fn expression_bounds_are_checked_all_at_once() {
    let config = r#"
[expressions]
max_steps = 0
max_time = "0s"
max_memory = 1000
"#;
    let dir = fixture(&[("baton.toml", config)]);
    let err = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[
            ("baton.toml", "expressions.max_steps"),
            ("baton.toml", "expressions.max_time"),
            ("baton.toml", "expressions.max_memory"),
        ])
    );
    assert!(message_at(&err, "expressions.max_steps").contains("expected 1 to 10000000"));
    assert!(message_at(&err, "expressions.max_memory").contains("at least 1048576"));

    let config = "[expressions]\nmax_stepz = 1\nmax_time = \"soon\"\n";
    let dir = fixture(&[("baton.toml", config)]);
    let err = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[
            ("baton.toml", "expressions.max_stepz"),
            ("baton.toml", "expressions.max_time"),
        ])
    );
    assert!(message_at(&err, "expressions.max_stepz").contains("max_steps"));
    assert!(message_at(&err, "expressions.max_time").contains("`soon` is not a duration"));
}

#[test]
fn a_travis_source_takes_its_repositories_and_api() {
    let config = r#"
[sources.travis]
kind = "travis"
repos = ["pingcap/tidb", "pingcap/tikv"]
[sources.enterprise]
kind = "travis"
repos = ["team/app"]
api_url = "https://travis.example.com/api/"
"#;
    let dir = fixture(&[("baton.toml", config)]);
    let loaded = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap();
    let sources = &loaded.gateway.sources;
    assert_eq!(
        sources["travis"],
        SourceConfig::Travis(travis_source(
            "https://api.travis-ci.com",
            &["pingcap/tidb", "pingcap/tikv"]
        ))
    );
    assert_eq!(
        sources["enterprise"],
        SourceConfig::Travis(travis_source(
            "https://travis.example.com/api",
            &["team/app"]
        ))
    );
    assert_eq!(sources["travis"].kind(), "travis");
    assert!(!sources["travis"].can_report());
}

fn travis_source(api_url: &str, repos: &[&str]) -> TravisSource {
    TravisSource {
        repos: repos.iter().map(|r| r.to_string()).collect(),
        api_url: api_url.to_owned(),
    }
}

#[test]
fn a_travis_source_without_good_repositories_is_refused_with_every_problem() {
    let config = r#"
[sources.none]
kind = "travis"
[sources.empty]
kind = "travis"
repos = []
[sources.bad]
kind = "travis"
repos = ["tidb", "pingcap/tidb", "a/b/c", "pingcap/tidb", " x/y"]
api_url = "travis"
[sources.extra]
kind = "travis"
repos = ["a/b"]
secret = { env = "S" }
"#;
    let dir = fixture(&[("baton.toml", config)]);
    let err = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[
            ("baton.toml", "sources.none.repos"),
            ("baton.toml", "sources.empty.repos"),
            ("baton.toml", "sources.bad.repos[0]"),
            ("baton.toml", "sources.bad.repos[2]"),
            ("baton.toml", "sources.bad.repos[3]"),
            ("baton.toml", "sources.bad.repos[4]"),
            ("baton.toml", "sources.bad.api_url"),
            ("baton.toml", "sources.extra.secret"),
        ])
    );
    assert!(message_at(&err, "sources.none.repos").contains("repos = [\"owner/name\"]"));
    assert!(message_at(&err, "sources.bad.repos[0]").contains("expected `owner/name`"));
    assert!(
        message_at(&err, "sources.bad.repos[3]").contains("already listed at sources.bad.repos[1]")
    );
}

#[test]
fn travis_and_registry_sources_cannot_receive_reports() {
    for (kind, settings) in [
        ("travis", "repos = [\"a/b\"]"),
        ("registry", "token = { env = \"T\" }"),
    ] {
        let config =
            format!("workflows = [\"w.yaml\"]\n[sources.{kind}]\nkind = \"{kind}\"\n{settings}\n");
        let workflow = format!(
            "name: w\non: [{{ source: {kind} }}]\nreport: [{kind}]\nstages:\n  s: {{ uses: exec, with: {{ run: 'true' }} }}\n"
        );
        let dir = fixture(&[("baton.toml", &config), ("w.yaml", &workflow)]);
        let err = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap_err();
        assert!(
            message_at(&err, "report[0]").contains(&format!("is {kind}: only github and gitlab")),
            "{kind}: {err}"
        );
    }
}

#[test]
fn a_registry_source_takes_a_bearer_token_or_basic_credentials() {
    let config = r#"
[sources.registry]
kind = "registry"
token = { env = "REGISTRY_EVENTS_TOKEN" }
[sources.mirror]
kind = "registry"
username = "notifier"
password = { file = "registry.pass" }
"#;
    let dir = fixture(&[("baton.toml", config)]);
    let loaded = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap();
    let sources = &loaded.gateway.sources;
    assert_eq!(
        sources["registry"],
        SourceConfig::Registry(RegistrySource {
            auth: RegistryAuth::Bearer(baton_core::SecretRef::Env("REGISTRY_EVENTS_TOKEN".into())),
        })
    );
    let SourceConfig::Registry(RegistrySource {
        auth: RegistryAuth::Basic { username, password },
    }) = &sources["mirror"]
    else {
        panic!("{:?}", sources["mirror"])
    };
    assert_eq!(username, "notifier");
    assert!(matches!(password, baton_core::SecretRef::File(p) if p.ends_with("registry.pass")));
    assert_eq!(sources["registry"].kind(), "registry");
    assert!(!sources["registry"].can_report());
}

#[test]
fn a_registry_source_without_exactly_one_header_to_check_is_refused_with_every_problem() {
    let config = r#"
[sources.none]
kind = "registry"
[sources.both]
kind = "registry"
token = { env = "T" }
username = "u"
password = { env = "P" }
[sources.no-password]
kind = "registry"
username = "u"
[sources.no-user]
kind = "registry"
password = { env = "P" }
[sources.colon]
kind = "registry"
username = "a:b"
password = { env = "P" }
[sources.empty-user]
kind = "registry"
username = ""
password = { env = "P" }
[sources.extra]
kind = "registry"
token = { env = "T" }
secret = { env = "S" }
[sources.plain]
kind = "registry"
token = "in the file"
"#;
    let dir = fixture(&[("baton.toml", config)]);
    let err = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[
            ("baton.toml", "sources.none"),
            ("baton.toml", "sources.both"),
            ("baton.toml", "sources.no-password.password"),
            ("baton.toml", "sources.no-user.username"),
            ("baton.toml", "sources.colon.username"),
            ("baton.toml", "sources.empty-user.username"),
            ("baton.toml", "sources.extra.secret"),
            ("baton.toml", "sources.plain.token"),
        ])
    );
    assert!(message_at(&err, "sources.none").contains("Authorization: Bearer <token>"));
    assert!(message_at(&err, "sources.both").contains("not both"));
    assert!(message_at(&err, "sources.colon.username").contains("contains `:`"));
    assert!(message_at(&err, "sources.no-password.password").contains("`password = {"));
}
