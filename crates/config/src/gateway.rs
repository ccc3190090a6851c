//! The gateway config (`baton.toml` or `baton.yaml`) as baton uses it, after loading and
//! checking.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_core::expr_bound::Limits;
use baton_core::{Expr, HumanDuration, Kinds, SecretRef, StageDefaults};
use indexmap::IndexMap;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// The top-level keys of a gateway config, in the order the docs list them.
pub const TOP_LEVEL_KEYS: [&str; 10] = [
    "workflows",
    "server",
    "store",
    "api",
    "sources",
    "relays",
    "adapters",
    "engine",
    "expressions",
    "ui",
];

/// The whole gateway config.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// `workflows = ["workflows/*.yaml"]`: globs, relative to the config file's directory,
    /// that find the workflow files.
    pub workflows: Vec<String>,
    /// `[server]`: the HTTP listener.
    pub server: ServerConfig,
    /// `[store]`: where runs and deliveries are kept.
    pub store: StoreConfig,
    /// `[api]`: tokens for the REST API.
    pub api: ApiConfig,
    /// `[sources.<name>]`: inbound webhook sources, each at `POST /hooks/<name>`.
    pub sources: IndexMap<String, SourceConfig>,
    /// `[relays.<name>]`: deliveries of some sources forwarded to other HTTP endpoints.
    pub relays: IndexMap<String, RelayConfig>,
    /// `[adapters.<name>]`: adapter instances that workflow stages name in `uses:`.
    pub adapters: IndexMap<String, AdapterInstance>,
    /// `[engine]`: scheduling defaults and bounds.
    pub engine: EngineConfig,
    /// `[expressions]`: bounds on every jq evaluation.
    pub expressions: ExpressionsConfig,
    /// `[ui]`: what the web UI may do beyond reading and acting on runs.
    pub ui: UiConfig,
    /// The directory relative paths are resolved against: the config file's directory, or the
    /// current directory when there is no config file. Always absolute after a load.
    pub base_dir: PathBuf,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            workflows: Vec::new(),
            server: ServerConfig::default(),
            store: StoreConfig::default(),
            api: ApiConfig::default(),
            sources: IndexMap::new(),
            relays: IndexMap::new(),
            adapters: IndexMap::new(),
            engine: EngineConfig::default(),
            expressions: ExpressionsConfig::default(),
            ui: UiConfig::default(),
            base_dir: PathBuf::from("."),
        }
    }
}

impl GatewayConfig {
    /// The store URL with a relative SQLite path made relative to [`Self::base_dir`]
    /// (`sqlite://baton.db` → `sqlite:///etc/baton/baton.db`); other URLs as written.
    pub fn store_url(&self) -> String {
        match sqlite_path(&self.store.url) {
            Some((path, query)) if !path.is_absolute() => {
                format!("sqlite://{}{query}", self.base_dir.join(path).display())
            }
            _ => self.store.url.clone(),
        }
    }

    /// Where the `exec` adapter keeps the state of its child processes: `engine.exec_state_dir`
    /// (relative to [`Self::base_dir`]), else `<db file>.exec` next to a SQLite database, else
    /// `baton.exec` in [`Self::base_dir`].
    pub fn exec_state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.engine.exec_state_dir {
            return self.base_dir.join(dir);
        }
        match sqlite_path(&self.store_url()) {
            Some((path, _)) => {
                let mut name = path.as_os_str().to_owned();
                name.push(".exec");
                PathBuf::from(name)
            }
            None => self.base_dir.join("baton.exec"),
        }
    }

    /// Every adapter instance a stage may name: the `[adapters]` blocks, plus each kind of
    /// `kinds` that is an instance without a block (`exec`), with an empty config unless a
    /// block of that name replaces it.
    pub fn instances(&self, kinds: &Kinds) -> IndexMap<String, AdapterInstance> {
        let mut all = self.adapters.clone();
        for name in kinds.builtin_instances() {
            all.entry(name.to_owned())
                .or_insert_with(|| AdapterInstance {
                    kind: name.to_owned(),
                    config: Value::Object(Map::new()),
                });
        }
        all
    }

    /// The `workflows` globs, to place workflow files by.
    pub fn workflow_globs(&self) -> WorkflowGlobs {
        WorkflowGlobs {
            patterns: self.workflows.clone(),
            base_dir: self.base_dir.clone(),
        }
    }

    /// The instance names whose kind takes decisions: the stages that name them wait for a
    /// person to approve or reject them.
    pub fn decision_instances(&self, kinds: &Kinds) -> BTreeSet<String> {
        self.instances(kinds)
            .into_iter()
            .filter(|(_, instance)| kinds.takes_decisions(&instance.kind))
            .map(|(name, _)| name)
            .collect()
    }

    /// The settings stages inherit (`engine.default_timeout`), and what each adapter
    /// instance's kind declares (the `with:` keys that hold shell scripts).
    pub fn stage_defaults(&self, kinds: &Kinds) -> StageDefaults {
        StageDefaults {
            timeout: self.engine.default_timeout.0,
            script_keys: self
                .instances(kinds)
                .into_iter()
                .map(|(name, instance)| (name, kinds.script_keys(&instance.kind)))
                .filter(|(_, keys)| !keys.is_empty())
                .collect(),
        }
    }
}

/// The file path and `?query` of a SQLite URL with a file; `None` for other URLs and for
/// in-memory databases.
fn sqlite_path(url: &str) -> Option<(&Path, &str)> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = match rest.find('?') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some((Path::new(path), query))
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Address and port to listen on, `host:port`. Default `127.0.0.1:8080`.
    pub listen: String,
    /// The URL people and external systems reach baton at, used in links baton sends out
    /// (commit status targets, approval links). Default: none (links are left out).
    pub public_url: Option<String>,
    /// The largest request body accepted, in bytes. Default 26214400 (25 MiB, GitHub's cap).
    pub max_body_bytes: u64,
    /// How long a connection may take to send a request's headers, counted from its first
    /// byte (or from the connection's start); a connection still sending them then is
    /// closed. Default `10s`.
    pub header_timeout: HumanDuration,
    /// How long a request's body may take to arrive once its handler waits for it; a body
    /// still arriving then gets 408 and the connection is closed. Default `30s`.
    pub body_timeout: HumanDuration,
    /// How long a keep-alive connection may wait, after an answer, for its next request to
    /// begin before it is closed. Default `60s`.
    pub idle_timeout: HumanDuration,
    /// The most connections open at once. At the cap, the connection that has waited longest
    /// without a request under way (idle, or still sending its headers) is closed to make
    /// room; when every connection has a request under way, no more are accepted until one
    /// closes. Default 1024.
    pub max_connections: usize,
    /// Of `max_connections`, how many webhook requests may never take: at most
    /// `max_connections - reserved_connections` webhook requests are served at once, and
    /// more get 503 with `Retry-After`, so health probes, metrics and the API always find a
    /// connection. Default 32.
    pub reserved_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            public_url: None,
            max_body_bytes: 26_214_400,
            header_timeout: HumanDuration(Duration::from_secs(10)),
            body_timeout: HumanDuration(Duration::from_secs(30)),
            idle_timeout: HumanDuration(Duration::from_secs(60)),
            max_connections: 1024,
            reserved_connections: 32,
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` (a relative path is relative to the config file's directory) or
    /// `postgres://user@host[:port]/db[?sslmode=…]`. Default `sqlite://baton.db`. Use
    /// [`GatewayConfig::store_url`] for the resolved URL.
    pub url: String,
    /// The PostgreSQL password, as a secret reference, when the URL carries none (one or
    /// the other, never both). Default: none (the server's own authentication decides).
    #[serde(deserialize_with = "baton_core::secret::deserialize_optional_reference")]
    pub password: Option<SecretRef>,
    /// How long a replica's claim on a piece of work lasts unless it renews it: after a
    /// replica dies, its work waits this long before another takes it. PostgreSQL only;
    /// default [`StoreConfig::DEFAULT_LEASE`], between [`StoreConfig::MIN_LEASE`] and
    /// [`StoreConfig::MAX_LEASE`].
    pub lease: Option<HumanDuration>,
}

impl StoreConfig {
    /// The claim length on PostgreSQL when `lease` is not set.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
    /// The shortest `lease`: a claim is renewed every third of it, and a shorter one would
    /// be lost to an ordinary pause (a slow query, a busy host).
    pub const MIN_LEASE: Duration = Duration::from_secs(5);
    /// The longest `lease`: the longest a dead replica's work may wait for another.
    pub const MAX_LEASE: Duration = Duration::from_secs(3600);

    /// True when the URL names PostgreSQL, whose store replicas share.
    pub fn is_postgres(&self) -> bool {
        is_postgres_url(&self.url)
    }

    /// The claim length: `lease`, else [`StoreConfig::DEFAULT_LEASE`].
    pub fn lease(&self) -> Duration {
        self.lease.map_or(Self::DEFAULT_LEASE, |l| l.0)
    }
}

/// True for `postgres://…` and `postgresql://…`.
pub(crate) fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://baton.db".to_owned(),
            password: None,
            lease: None,
        }
    }
}

/// `[api]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiConfig {
    /// Bearer tokens for the REST API. Default: none.
    #[serde(default)]
    pub tokens: Vec<ApiToken>,
}

/// One `[api] tokens` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// A name for the token's holder, shown in logs and audit records; unique.
    pub name: String,
    /// The token, as a secret reference.
    #[serde(deserialize_with = "baton_core::secret::deserialize_reference")]
    pub token: SecretRef,
    /// What the holder may do.
    pub role: Role,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read runs, stages, deliveries and logs.
    Viewer,
    /// Also start, cancel, retry and replay.
    Operator,
    /// Also answer approval stages.
    Approver,
}

/// `[sources.<name>]`: an inbound webhook source, at `POST /hooks/<name>`.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    /// `kind = "github"`.
    Github(GithubSource),
    /// `kind = "gitlab"`.
    Gitlab(GitlabSource),
    /// `kind = "generic"`: any sender of JSON.
    Generic(GenericSource),
    /// `kind = "travis"`: Travis CI's webhook notifications.
    Travis(TravisSource),
    /// `kind = "registry"`: an OCI registry's notifications (distribution's envelopes of
    /// events).
    Registry(RegistrySource),
}

impl SourceConfig {
    /// The source kinds, as written in `kind = "…"`.
    pub const KINDS: [&'static str; 5] = ["github", "gitlab", "generic", "travis", "registry"];

    /// This source's kind, as written in `kind = "…"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Github(_) => "github",
            Self::Gitlab(_) => "gitlab",
            Self::Generic(_) => "generic",
            Self::Travis(_) => "travis",
            Self::Registry(_) => "registry",
        }
    }

    /// True when baton can report status to this source (`report:` may name it): a github
    /// source with `token` or a GitHub App, a gitlab source with `api_token`.
    pub fn can_report(&self) -> bool {
        match self {
            Self::Github(github) => github.api_auth.is_some(),
            Self::Gitlab(gitlab) => gitlab.api_token.is_some(),
            Self::Generic(_) | Self::Travis(_) | Self::Registry(_) => false,
        }
    }
}

/// The default `api_url` of a github source.
pub const GITHUB_API_URL: &str = "https://api.github.com";

/// The default `api_url` of a gitlab source.
pub const GITLAB_API_URL: &str = "https://gitlab.com/api/v4";

/// The default `api_url` of a travis source.
pub const TRAVIS_API_URL: &str = "https://api.travis-ci.com";

/// Travis CI's webhook notifications (`notifications.webhooks` in `.travis.yml`): a
/// form-encoded `payload`, signed by Travis with its own RSA key, which baton reads from the
/// API's `/config`. Travis signs every repository's notifications with the same key, so the
/// signature proves Travis sent a delivery, and `repos` decides which repositories' are
/// taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TravisSource {
    /// `repos`: the `owner/name` slugs whose notifications are accepted. At least one.
    pub repos: Vec<String>,
    /// `api_url`: the API root whose `/config` serves the signing key, without a trailing
    /// `/`. Default [`TRAVIS_API_URL`]; Travis CI Enterprise is `https://HOST/api`.
    pub api_url: String,
}

/// An OCI registry's notifications (`notifications.endpoints` in distribution's
/// `config.yml`): envelopes of events, each stored as a delivery of its own. The registry
/// signs nothing; it sends the static headers its endpoint is configured with, and one of
/// them is checked here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySource {
    /// The `Authorization` header the endpoint sends: `token` or `username` + `password`.
    pub auth: RegistryAuth,
}

/// The `Authorization` header a registry source expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    /// `token = { env = "…" }`: `Authorization: Bearer <token>`.
    Bearer(SecretRef),
    /// `username` + `password = { env = "…" }`: `Authorization: Basic <base64(user:password)>`.
    Basic {
        /// The user name (no `:`, as Basic credentials cannot carry one).
        username: String,
        /// The password.
        password: SecretRef,
    },
}

/// A GitHub webhook source: deliveries are checked against `X-Hub-Signature-256`. With API
/// credentials, workflows can also report status back to it (`report:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubSource {
    /// The webhook secrets: `secret`, then every `secrets` entry. A delivery signed with any
    /// of them is accepted, so a secret can be rotated without downtime. At least one.
    pub secrets: Vec<SecretRef>,
    /// `api_url`: the REST API root, without a trailing `/`. Default [`GITHUB_API_URL`];
    /// GitHub Enterprise Server is `https://HOST/api/v3`.
    pub api_url: String,
    /// How baton authenticates to the API to post commit statuses: `token = {…}`, or a
    /// GitHub App (`app_id`, `private_key`, `installation_id`). `None`: webhooks only.
    pub api_auth: Option<GithubAuth>,
}

impl Default for GithubSource {
    /// No secrets, the public API, no credentials.
    fn default() -> Self {
        Self {
            secrets: Vec::new(),
            api_url: GITHUB_API_URL.to_owned(),
            api_auth: None,
        }
    }
}

/// Credentials for the GitHub API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GithubAuth {
    /// `token = { env = "…" }`: a fine-grained or classic access token, or any other bearer
    /// token GitHub accepts.
    Token(SecretRef),
    /// `app_id` + `private_key` (+ `installation_id`): a GitHub App.
    App(GithubApp),
}

/// A GitHub App: baton signs a JWT with the private key and trades it for an installation
/// token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubApp {
    /// `app_id`: the App's id (a number, shown on the App's settings page).
    pub app_id: u64,
    /// `private_key`: the App's private key (PEM), usually `{ file = "app.pem" }`.
    pub private_key: SecretRef,
    /// `installation_id`: the installation to act as. `None`: the installation named in each
    /// event (`.installation.id`, which GitHub sends to an App's webhooks).
    pub installation_id: Option<u64>,
}

/// A GitLab webhook source: deliveries are checked against `X-Gitlab-Token`. With an API
/// token, workflows can also report status back to it (`report:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitlabSource {
    /// The webhook tokens: `token`, then every `tokens` entry; any matches. At least one.
    pub tokens: Vec<SecretRef>,
    /// `api_url`: the REST API root, without a trailing `/`. Default [`GITLAB_API_URL`].
    pub api_url: String,
    /// `api_token`: a token for the API (sent as `PRIVATE-TOKEN`) to post commit statuses;
    /// not the webhook `token`. `None`: webhooks only.
    pub api_token: Option<SecretRef>,
}

impl Default for GitlabSource {
    /// No tokens, GitLab.com's API, no API token.
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            api_url: GITLAB_API_URL.to_owned(),
            api_token: None,
        }
    }
}

/// A generic JSON webhook source.
#[derive(Debug, Clone, PartialEq)]
pub struct GenericSource {
    /// How deliveries prove where they come from: `hmac = {…}` or `bearer = {…}`.
    pub auth: GenericAuth,
    /// Where a delivery's event type comes from. `None`: the event type is empty, so only
    /// `on:` entries without `event:` match.
    pub event: Option<EventSelector>,
    /// Where a delivery's id (for de-duplication) comes from.
    pub delivery_id: DeliveryId,
}

/// How a generic source authenticates deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenericAuth {
    /// `hmac = { secret, header, prefix, algorithm }`: the body's HMAC, in hex, in a header.
    Hmac(HmacAuth),
    /// `bearer = { token }`: `Authorization: Bearer <token>`.
    Bearer(BearerAuth),
}

/// `hmac = { … }` of a generic source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HmacAuth {
    /// The shared secret.
    #[serde(deserialize_with = "baton_core::secret::deserialize_reference")]
    pub secret: SecretRef,
    /// The header that carries the signature (`X-Signature-256`).
    pub header: String,
    /// Text before the hex digest in the header (`sha256=`). Default: empty.
    #[serde(default)]
    pub prefix: String,
    /// The hash. Default `sha256`.
    #[serde(default)]
    pub algorithm: HmacAlgorithm,
}

/// The hash of an HMAC signature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HmacAlgorithm {
    /// HMAC-SHA-256.
    #[default]
    Sha256,
    /// HMAC-SHA-512.
    Sha512,
}

/// `bearer = { … }` of a generic source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BearerAuth {
    /// The expected bearer token.
    #[serde(deserialize_with = "baton_core::secret::deserialize_reference")]
    pub token: SecretRef,
}

/// Where a generic delivery's event type comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum EventSelector {
    /// `event = { header = "X-Event" }`: a request header.
    Header(String),
    /// `event = { expr = ".type" }`: a jq expression on the JSON body.
    Expr(Expr),
}

/// Where a generic delivery's id comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeliveryId {
    /// No `delivery_id`: a hash of the body, so identical bodies are one delivery.
    #[default]
    BodyHash,
    /// `delivery_id = { header = "X-Request-Id" }`: a request header.
    Header(String),
}

/// The delays between a relay message's tries when neither the relay nor the target sets
/// `schedule`: the first try is at once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h
/// later (eight tries over about 28 hours, so a receiver down for a day still gets it).
pub const DEFAULT_RELAY_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// `[relays.<name>]`: every delivery of the `from` sources that passes `if` is forwarded to
/// each `to` target, at least once, on the target's retry schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayConfig {
    /// `from`: the `[sources.*]` names whose deliveries this relay forwards (a name or a
    /// list; at least one).
    pub from: Vec<String>,
    /// `if`: a jq condition on the payload, which also sees the request's headers at
    /// `.headers` (lower-case names; secrets removed). `None`: every delivery.
    pub condition: Option<Expr>,
    /// `to`: the targets, at least one, each with a name unique in the relay.
    pub to: Vec<RelayTarget>,
}

/// One `[[relays.<name>.to]]` target, with the relay's settings it inherits filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayTarget {
    /// `name`: what the CLI, the API and the metrics call the target; unique in its relay.
    /// Default: the URL's host, with its port when the URL gives one.
    pub name: String,
    /// `url`: where messages are POSTed; `http` or `https` only.
    pub url: String,
    /// `sign`: how messages are signed.
    pub sign: RelaySign,
    /// `headers`: extra request headers, by name, as written; values may be secret
    /// references. They replace a passed-on header of the same name.
    pub headers: Vec<(String, RelayHeaderValue)>,
    /// `transform`: a jq expression on the payload whose first output is the body sent.
    /// `None`: the delivery's body is sent byte for byte.
    pub transform: Option<Expr>,
    /// `timeout`: how long one try may take, from connecting to the end of the answer.
    /// Default `15s`.
    pub timeout: Duration,
    /// `concurrency`: the most tries in flight to this target at once. Default 8.
    pub concurrency: usize,
    /// `rate`: the most tries started per period (`"50/s"`, `"600/min"`). Default: none.
    pub rate: Option<RelayRate>,
    /// `schedule`: the delays between tries after the first, which is immediate; after the
    /// last the message is dead. The target's own, else the relay's, else
    /// [`DEFAULT_RELAY_SCHEDULE`].
    pub schedule: Vec<Duration>,
    /// `ordered`: send this target's messages one at a time in the order of their
    /// deliveries; the next waits until the one before is delivered or dead. Default false.
    pub ordered: bool,
    /// `allow_private`: let the URL's host be (or resolve to) a loopback, private,
    /// link-local or other non-public address. Default false.
    pub allow_private: bool,
}

/// `sign = { scheme, secret }`: how a relay target's messages are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelaySign {
    /// `scheme = "none"`: unsigned.
    None,
    /// `scheme = "github"`: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`, as
    /// GitHub signs its own webhooks.
    Github(SecretRef),
    /// `scheme = "standard-webhooks"`: `webhook-id`, `webhook-timestamp` and
    /// `webhook-signature` (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`), as the
    /// Standard Webhooks specification says. The secret is `whsec_<base64 key>`.
    StandardWebhooks(SecretRef),
}

/// A relay target's extra header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayHeaderValue {
    /// Written in the config.
    Plain(String),
    /// `{ env = "…" }` or `{ file = "…" }`: read when the relay starts, never logged.
    Secret(SecretRef),
}

/// `rate = "N/period"`: at most `count` tries started per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayRate {
    /// How many tries.
    pub count: u32,
    /// Per how long (`s`, `min` or `h`).
    pub per: Duration,
}

/// `[adapters.<name>]`: one adapter instance.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInstance {
    /// The adapter kind (`jenkins`, `buildbot`, `exec`).
    pub kind: String,
    /// The rest of the block (everything but `kind`), as the kind checked it.
    pub config: Value,
}

/// `[engine]`: baton's own scheduling settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// The timeout of a stage without `timeout:`. Default `1h`.
    pub default_timeout: HumanDuration,
    /// The shortest wait between two polls of one external job, whatever the adapter hints.
    /// Default `2s`.
    pub poll_min: HumanDuration,
    /// The longest wait between two polls of one external job. Default `60s`.
    pub poll_max: HumanDuration,
    /// How many stage attempts may be in flight at once, across all runs. Default 256.
    pub max_concurrency: usize,
    /// Where the `exec` adapter keeps its child processes' state, relative to the config
    /// file's directory. Default: `<db>.exec` next to a SQLite database (see
    /// [`GatewayConfig::exec_state_dir`]).
    pub exec_state_dir: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            default_timeout: HumanDuration(Duration::from_secs(3600)),
            poll_min: HumanDuration(Duration::from_secs(2)),
            poll_max: HumanDuration(Duration::from_secs(60)),
            max_concurrency: 256,
            exec_state_dir: None,
        }
    }
}

/// The `workflows` globs and the folder they are relative to: which files a load finds,
/// and where a new workflow file goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowGlobs {
    /// The globs, as written.
    pub patterns: Vec<String>,
    /// The config file's directory.
    pub base_dir: PathBuf,
}

impl WorkflowGlobs {
    /// A glob as an absolute pattern: a relative one under [`Self::base_dir`].
    pub(crate) fn absolute(&self, pattern: &str) -> String {
        if Path::new(pattern).is_absolute() {
            pattern.to_owned()
        } else {
            let dir = glob::Pattern::escape(&self.base_dir.to_string_lossy());
            format!("{}/{pattern}", dir.trim_end_matches('/'))
        }
    }

    /// Whether a glob matches `file`, so that a load finds it.
    pub fn finds(&self, file: &Path) -> bool {
        self.patterns.iter().any(|pattern| {
            glob::Pattern::new(&self.absolute(pattern)).is_ok_and(|p| p.matches_path(file))
        })
    }

    /// Where a new workflow named `name` goes: `<name>.yaml` (or `.yml`) in the folder of
    /// the first glob (its part before the first wildcard), as long as the globs find that
    /// file. `None` when there is no glob or they would not find it.
    pub fn new_file(&self, name: &str) -> Option<PathBuf> {
        let first = self.patterns.first()?;
        let mut folder = PathBuf::new();
        for part in Path::new(first)
            .parent()
            .into_iter()
            .flat_map(Path::components)
        {
            if part
                .as_os_str()
                .to_string_lossy()
                .contains(['*', '?', '[', ']'])
            {
                break;
            }
            folder.push(part);
        }
        let folder = self.base_dir.join(folder);
        ["yaml", "yml"]
            .into_iter()
            .map(|extension| folder.join(format!("{name}.{extension}")))
            .find(|file| self.finds(file))
    }
}

/// `[ui]`: the web UI's settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    /// Whether an operator may save a workflow from the editor into the workflow files:
    /// back to the file it came from, or a new file beside those the first `workflows`
    /// glob matches. Default false: the editor only downloads.
    pub save_workflows: bool,
}

/// `[expressions]`: bounds on every jq evaluation (trigger and stage `if`, `with`
/// templates, generic sources' `event` expressions). An evaluation that passes one stops
/// with an error naming the key: its stage fails with reason `expression`, or its
/// delivery's match is skipped with the problem recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExpressionsConfig {
    /// Steps one evaluation may take: a step is one jq operation or filter call, or one
    /// value a built-in makes or walks. Default 1000000; at least 1, at most 10000000
    /// ([`Limits::MAX_STEPS_CEILING`]).
    pub max_steps: u64,
    /// Wall-clock time one evaluation may take. Default `1s`; longer than 0s.
    pub max_time: HumanDuration,
    /// Bytes one evaluation may hold allocated beyond what it started with. Default
    /// 67108864 (64 MiB); at least 1048576 (1 MiB).
    pub max_memory: u64,
}

impl Default for ExpressionsConfig {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            max_steps: limits.max_steps,
            max_time: HumanDuration(limits.max_time),
            max_memory: limits.max_memory as u64,
        }
    }
}

impl ExpressionsConfig {
    /// The smallest `max_memory` accepted: below it, ordinary expressions on ordinary
    /// payloads would fail.
    pub const MIN_MEMORY: u64 = 1 << 20;

    /// The bounds, as the evaluator takes them.
    pub fn limits(&self) -> Limits {
        Limits {
            max_steps: self.max_steps,
            max_time: self.max_time.0,
            max_memory: usize::try_from(self.max_memory).unwrap_or(usize::MAX),
        }
    }
}

/// A secret reference inside a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecretField(pub(crate) SecretRef);

impl<'de> Deserialize<'de> for SecretField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        baton_core::secret::deserialize_reference(d).map(Self)
    }
}

/// The file form of `[sources.<name>]` with `kind = "github"`.
#[derive(Debug, Deserialize)]
pub(crate) struct GithubRaw {
    /// One webhook secret.
    #[serde(default)]
    pub(crate) secret: Option<SecretField>,
    /// More webhook secrets, for rotation.
    #[serde(default)]
    pub(crate) secrets: Vec<SecretField>,
    /// The API root.
    #[serde(default)]
    pub(crate) api_url: Option<String>,
    /// An API token, for reports.
    #[serde(default)]
    pub(crate) token: Option<SecretField>,
    /// A GitHub App's id, for reports.
    #[serde(default)]
    pub(crate) app_id: Option<u64>,
    /// The App's private key.
    #[serde(default)]
    pub(crate) private_key: Option<SecretField>,
    /// The App installation to act as.
    #[serde(default)]
    pub(crate) installation_id: Option<u64>,
}

/// The file form of `[sources.<name>]` with `kind = "gitlab"`.
#[derive(Debug, Deserialize)]
pub(crate) struct GitlabRaw {
    /// One webhook token.
    #[serde(default)]
    pub(crate) token: Option<SecretField>,
    /// More webhook tokens, for rotation.
    #[serde(default)]
    pub(crate) tokens: Vec<SecretField>,
    /// The API root.
    #[serde(default)]
    pub(crate) api_url: Option<String>,
    /// An API token, for reports.
    #[serde(default)]
    pub(crate) api_token: Option<SecretField>,
}

/// The file form of `[sources.<name>]` with `kind = "travis"`.
#[derive(Debug, Deserialize)]
pub(crate) struct TravisRaw {
    /// The accepted repositories.
    #[serde(default)]
    pub(crate) repos: Option<Vec<String>>,
    /// The API root.
    #[serde(default)]
    pub(crate) api_url: Option<String>,
}

/// The file form of `[sources.<name>]` with `kind = "registry"`.
#[derive(Debug, Deserialize)]
pub(crate) struct RegistryRaw {
    /// A bearer token.
    #[serde(default)]
    pub(crate) token: Option<SecretField>,
    /// A Basic user name.
    #[serde(default)]
    pub(crate) username: Option<String>,
    /// A Basic password.
    #[serde(default)]
    pub(crate) password: Option<SecretField>,
}

/// The file form of `[sources.<name>]` with `kind = "generic"`.
#[derive(Debug, Deserialize)]
pub(crate) struct GenericRaw {
    /// HMAC authentication.
    #[serde(default)]
    pub(crate) hmac: Option<HmacAuth>,
    /// Bearer authentication.
    #[serde(default)]
    pub(crate) bearer: Option<BearerAuth>,
    /// Event type selector.
    #[serde(default)]
    pub(crate) event: Option<EventRaw>,
    /// Delivery id selector.
    #[serde(default)]
    pub(crate) delivery_id: Option<HeaderRaw>,
}

/// `event = { header }` or `{ expr }`.
#[derive(Debug, Deserialize)]
pub(crate) struct EventRaw {
    /// A header name.
    #[serde(default)]
    pub(crate) header: Option<String>,
    /// A jq expression.
    #[serde(default)]
    pub(crate) expr: Option<String>,
}

/// `{ header = "…" }`.
#[derive(Debug, Deserialize)]
pub(crate) struct HeaderRaw {
    /// A header name.
    pub(crate) header: String,
}
