//! The contract between the engine and every external system.
//!
//! The engine drives a stage attempt through these calls:
//!
//! 1. Before any run, [`AdapterKind::validate_stage`] checks each stage's `with:` block.
//! 2. The engine records the attempt (status `starting`) in the store, then calls
//!    [`Adapter::start`] with a stable [`AttemptKey`]. The returned [`ExternalRef`] is stored.
//! 3. If the process died between 2's record and storing the reference, the next engine calls
//!    [`Adapter::find`] with the same key; a `Some` is adopted, so the work is never started
//!    twice silently. Adapters must therefore carry the key into the external system.
//! 4. [`Adapter::poll`] reports an [`ExternalState`] and a hint for when to look again. An
//!    unknown status is [`ExternalState::Unknown`], never terminal, never a panic. A poll
//!    may also replace the reference (a Jenkins queue item that became a build).
//! 5. On a terminal state the engine calls [`Adapter::outputs`] once.
//! 6. [`Adapter::cancel`] stops the external work (on a run cancel, a `halt`, or a timeout);
//!    the engine calls it through [`Adapter::cancel_explained`], whose note (an undone
//!    rollout) ends up in the stage's message.
//! 7. [`Adapter::logs`] points to the logs or returns their text.
//! 8. [`Adapter::attach`] hands the adapter a [`Waker`]: when it learns of a completion
//!    early (a child process exiting, a completion webhook), it wakes the engine, which
//!    then polls at once instead of at the next hint. Polling stays the safety net.
//! 9. [`Adapter::source_delivery`] sees every delivery a webhook source stored (GitHub's
//!    `workflow_run`, GitLab's Pipeline Hook) and names the attempts it concerns, which the
//!    engine then polls at once, as for a completion webhook.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::state::ExternalState;

/// Identifies one attempt of one stage of one run: `<run>/<stage>/<attempt>`.
///
/// Stable across restarts and unique per attempt, so an adapter can plant it in the external
/// system and find the work again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AttemptKey(String);

impl AttemptKey {
    /// Builds the key of `attempt` (1-based) of `stage` in `run`.
    pub fn new(run: &str, stage: &str, attempt: u32) -> Self {
        Self(format!("{run}/{stage}/{attempt}"))
    }

    /// Wraps a key read back from an external system; `None` if it has not the key's shape.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('/');
        let (run, stage, attempt) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || run.is_empty()
            || stage.is_empty()
            || attempt.parse::<u32>().is_err()
        {
            return None;
        }
        Some(Self(text.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The run id part.
    pub fn run_id(&self) -> &str {
        self.0.split('/').next().unwrap_or_default()
    }

    /// The stage id part.
    pub fn stage_id(&self) -> &str {
        self.0.split('/').nth(1).unwrap_or_default()
    }

    /// The attempt number part.
    pub fn attempt(&self) -> u32 {
        self.0
            .rsplit('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_default()
    }

    /// A form safe for file names and external systems that reject `/`.
    pub fn slug(&self) -> String {
        self.0.replace('/', "-")
    }
}

impl fmt::Display for AttemptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an adapter returns for work it started: enough to find it again after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalRef {
    /// The system's id for the work (queue item, build id, pipeline id, process id).
    pub id: String,
    /// A link a person can open, when the system has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Whatever else the adapter needs to poll, cancel and read outputs; stored as is.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

impl ExternalRef {
    /// A reference with an id only.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            url: None,
            data: Value::Null,
        }
    }
}

/// Everything an adapter gets to start one attempt.
#[derive(Debug, Clone)]
pub struct StartRequest {
    /// The stable key of this attempt.
    pub key: AttemptKey,
    /// The workflow's name.
    pub workflow: String,
    /// The stage's `with:` block with every template rendered.
    pub input: Value,
    /// How long the stage may take in all; adapters may pass it on to the external system.
    pub timeout: Duration,
}

/// Everything an adapter gets to poll.
#[derive(Debug, Clone)]
pub struct PollRequest<'a> {
    /// The attempt being polled.
    pub key: &'a AttemptKey,
    /// The reference returned by `start`, `find` or an earlier poll.
    pub external: &'a ExternalRef,
    /// The last signal sent to this attempt (a [`Decision`](crate::Decision) for kinds that
    /// take decisions), if any.
    pub signal: Option<&'a Value>,
}

/// The answer to a poll.
#[derive(Debug, Clone, PartialEq)]
pub struct PollOutcome {
    /// The mapped state.
    pub state: ExternalState,
    /// The system's own word for the state, for display and debugging.
    pub raw: Option<String>,
    /// When to poll next if not terminal; the engine clamps it to its own bounds.
    pub next_poll: Option<Duration>,
    /// A replacement reference (the queue item became a build), to be stored.
    pub external: Option<ExternalRef>,
    /// A short explanation for people (a failure reason, what is being waited for).
    pub message: Option<String>,
}

impl PollOutcome {
    /// An outcome with just a state.
    pub fn state(state: ExternalState) -> Self {
        Self {
            state,
            raw: None,
            next_poll: None,
            external: None,
            message: None,
        }
    }

    /// Sets the explanation.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Sets the next-poll hint.
    pub fn next_poll(mut self, after: Duration) -> Self {
        self.next_poll = Some(after);
        self
    }
}

/// A place logs can be read from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLink {
    /// What the log is (a step name, `stdout`).
    pub name: String,
    /// Where to read it.
    pub url: String,
}

/// An attempt's logs: links, and text when the adapter can read it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Logs {
    /// Places to read logs.
    pub links: Vec<LogLink>,
    /// The log text (possibly only its tail).
    pub text: Option<String>,
}

/// When a stage's `with:` block is checked, which tells whether a `${{ … }}` template may
/// stand where another type is expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputMode {
    /// At load time: a template may render to any type.
    Templates,
    /// At start: the input is rendered and must have its final shape.
    Rendered,
}

impl InputMode {
    /// True when `text` is a template that stands for a value not yet known.
    pub fn is_template(self, text: &str) -> bool {
        self == Self::Templates && text.contains("${{")
    }
}

/// A problem in an adapter's instance config or a stage's `with:` block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Key path inside the checked block (`parameters.SHA`); empty for the block itself.
    pub path: String,
    /// What was expected.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl FieldError {
    /// The key paths of `errors`, in order (for tests and summaries).
    pub fn paths(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.path.as_str()).collect()
    }

    /// Every error on one line, `path: message; path: message`, for an error message.
    pub fn join(errors: &[FieldError]) -> String {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// A field error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Why an adapter call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdapterError {
    /// The input or config is wrong; retrying the same call cannot help.
    #[error("{0}")]
    Invalid(String),
    /// The system refused the credentials or the permission; says what to fix.
    #[error("{0}")]
    Auth(String),
    /// The thing named does not exist (a job, a builder, a reference).
    #[error("{0}")]
    NotFound(String),
    /// A passing problem (a timeout, 429, 5xx, a refused connection); the engine tries again
    /// later, within the stage's timeout.
    #[error("{0}")]
    Transient(String),
    /// The system answered something the adapter cannot read.
    #[error("{0}")]
    Protocol(String),
    /// The system refuses more work of this kind until a quota frees (Travis CI's limit on
    /// API requests per repository and hour): nothing was done, and trying again before
    /// `retry_after` is pointless. Transient: the engine tries again once that time has
    /// passed (and never sooner than its shortest poll wait), within the stage's timeout.
    #[error("{message}")]
    Throttled {
        /// What is spent, how much the system allows, and when it frees.
        message: String,
        /// How long until the quota frees, as the adapter worked it out.
        retry_after: Duration,
    },
}

impl AdapterError {
    /// True when the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_) | Self::Throttled { .. })
    }

    /// How long to wait before trying the same call again, when the system said so
    /// ([`AdapterError::Throttled`]); `None` for every other error.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// Lets an adapter ask the engine to poll an attempt now.
#[derive(Clone)]
pub struct Waker(Arc<dyn Fn(&AttemptKey) + Send + Sync>);

impl Waker {
    /// Wraps a wake function.
    pub fn new(wake: impl Fn(&AttemptKey) + Send + Sync + 'static) -> Self {
        Self(Arc::new(wake))
    }

    /// A waker that does nothing (for tests and tools that only poll).
    pub fn noop() -> Self {
        Self::new(|_| {})
    }

    /// Asks for `key` to be polled now.
    pub fn wake(&self, key: &AttemptKey) {
        (self.0)(key);
    }
}

impl fmt::Debug for Waker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Waker")
    }
}

/// One external system (or a built-in such as `exec`) behind the engine.
///
/// See the module documentation for the order of calls. Every call must be bounded in time:
/// an adapter that talks over the network sets its own request timeouts.
#[async_trait]
pub trait Adapter: Send + Sync + 'static {
    /// The kind, as written in `kind = "…"` (`exec`, `jenkins`).
    fn kind(&self) -> &'static str;

    /// Starts the work of one attempt and returns its reference.
    async fn start(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError>;

    /// Finds work already started for `key`, if the system has any.
    async fn find(
        &self,
        key: &AttemptKey,
        input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError>;

    /// Reads the state of the work.
    async fn poll(&self, request: &PollRequest<'_>) -> Result<PollOutcome, AdapterError>;

    /// Reads the outputs of finished work as a JSON object.
    async fn outputs(
        &self,
        key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError>;

    /// Stops the work. Stopping work that already finished is not an error.
    async fn cancel(&self, key: &AttemptKey, external: &ExternalRef) -> Result<(), AdapterError>;

    /// Stops the work as [`Adapter::cancel`] does and says what stopping it did beyond that,
    /// when that is worth a person's knowing (`rolled back deployment "web" to revision 3`):
    /// the engine adds the note to the stage's `timed out after …` or `cancelled` message.
    /// Default: `cancel`, and no note.
    async fn cancel_explained(
        &self,
        key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<Option<String>, AdapterError> {
        self.cancel(key, external).await.map(|()| None)
    }

    /// Points to or reads the logs.
    async fn logs(&self, key: &AttemptKey, external: &ExternalRef) -> Result<Logs, AdapterError>;

    /// Receives the engine's waker; adapters that learn of completions early keep it.
    fn attach(&self, waker: Waker) {
        let _ = waker;
    }

    /// Reads a completion webhook the system sent to `POST /hooks/adapters/<instance>`
    /// (the Jenkins Notification plugin, Buildbot's HTTP status push) and returns the
    /// attempts it concerns; the engine then polls them at once. A webhook is only a hint:
    /// the state is always read back through `poll`. Adapters without one return `Ok(vec![])`.
    fn completion_webhook(
        &self,
        request: &WebhookRequest<'_>,
    ) -> Result<Vec<AttemptKey>, AdapterError> {
        let _ = request;
        Ok(Vec::new())
    }

    /// Reads a delivery a webhook source stored (`POST /hooks/<source>`, its signature
    /// already checked) and returns the attempts it concerns; the engine then polls them at
    /// once. GitHub's `workflow_run` names a run a `github-actions` stage follows, GitLab's
    /// Pipeline Hook a pipeline. Only a hint, as a completion webhook is.
    ///
    /// Called for every stored delivery, so it must be cheap for those it does not care
    /// about: look at [`SourceDelivery::kind`] and [`SourceDelivery::event`] before parsing
    /// the body. Default: none.
    fn source_delivery(&self, delivery: &SourceDelivery<'_>) -> Vec<AttemptKey> {
        let _ = delivery;
        Vec::new()
    }
}

/// A delivery a webhook source stored, as offered to adapters by
/// [`Adapter::source_delivery`].
#[derive(Debug, Clone, Copy)]
pub struct SourceDelivery<'a> {
    /// The source's name, as in `[sources.<name>]`.
    pub source: &'a str,
    /// The source's kind: `github`, `gitlab`, `generic`, `travis` or `registry`.
    pub kind: &'a str,
    /// The event type as stored (`workflow_run`, `Pipeline Hook`).
    pub event: &'a str,
    /// The body: JSON text, as received.
    pub body: &'a str,
}

/// A webhook as received, before any parsing.
#[derive(Debug, Clone, Copy)]
pub struct WebhookRequest<'a> {
    /// Header names (lowercase) and values.
    pub headers: &'a [(String, String)],
    /// The raw body.
    pub body: &'a [u8],
}

impl WebhookRequest<'_> {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Builds adapter instances of one kind from `[adapters.<name>]` blocks, and declares what
/// the kind is, so that the engine, the server and the CLI never need to know it by name.
pub trait AdapterKind: Send + Sync + 'static {
    /// The kind, as written in `kind = "…"`.
    fn kind(&self) -> &'static str;

    /// What the kind drives, in one line (`baton adapters` lists it). Default: empty.
    fn summary(&self) -> &'static str {
        ""
    }

    /// Where the kind is documented: a path from the repository root, with an anchor where
    /// the kind shares a page (`docs/adapters/jenkins.md`, `docs/adapters.md#exec`).
    /// Default: empty.
    fn docs(&self) -> &'static str {
        ""
    }

    /// Whether `uses: <kind>` works with no `[adapters.<kind>]` block: the instance of the
    /// kind's own name then exists with an empty config, and a block of that name must be of
    /// this kind. Default: false.
    fn builtin_instance(&self) -> bool {
        false
    }

    /// Whether the kind's stages wait for a person's [`Decision`](crate::Decision), sent as
    /// the attempt's signal; only such stages may be approved or rejected. Default: false.
    fn takes_decisions(&self) -> bool {
        false
    }

    /// The top-level `with:` keys whose strings are shell scripts (`run` for `exec`): a
    /// template in them is written as literal text, one single-quoted word where it stands
    /// outside quotes, so that event data never becomes shell syntax
    /// ([`Template::parse_script`](crate::Template::parse_script)). Default: none.
    fn script_keys(&self) -> &'static [&'static str] {
        &[]
    }

    /// Checks an instance block (without the `kind` key) and returns every problem.
    fn validate_instance(&self, config: &Value) -> Vec<FieldError>;

    /// Checks a stage's `with:` block before any run. Template strings (`${{ … }}`) stand
    /// where the rendered value will be; a kind accepts a string wherever a template may
    /// render to the expected type.
    fn validate_stage(&self, with: &Value) -> Vec<FieldError>;

    /// Builds the adapter; `secrets` resolves `{ env }` / `{ file }` references.
    fn build(
        &self,
        name: &str,
        config: &Value,
        secrets: &dyn crate::secret::SecretResolver,
    ) -> Result<Arc<dyn Adapter>, AdapterError>;
}

/// The adapter kinds a build of baton knows, by `kind` name.
#[derive(Clone, Default)]
pub struct Kinds {
    kinds: std::collections::BTreeMap<&'static str, Arc<dyn AdapterKind>>,
}

impl Kinds {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a kind (replacing one of the same name).
    pub fn register(&mut self, kind: Arc<dyn AdapterKind>) -> &mut Self {
        self.kinds.insert(kind.kind(), kind);
        self
    }

    /// The kind named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn AdapterKind>> {
        self.kinds.get(name)
    }

    /// Every kind name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }

    /// Every kind, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn AdapterKind>> + '_ {
        self.kinds.values()
    }

    /// The names that are instances without a config block (see
    /// [`AdapterKind::builtin_instance`]), sorted.
    pub fn builtin_instances(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.iter()
            .filter(|k| k.builtin_instance())
            .map(|k| k.kind())
    }

    /// Whether `name` is an instance without a config block.
    pub fn is_builtin_instance(&self, name: &str) -> bool {
        self.get(name).is_some_and(|k| k.builtin_instance())
    }

    /// Whether stages of kind `kind` wait for a person's decision; false for an unknown kind.
    pub fn takes_decisions(&self, kind: &str) -> bool {
        self.get(kind).is_some_and(|k| k.takes_decisions())
    }

    /// The `with:` keys of kind `kind` that hold shell scripts; none for an unknown kind.
    pub fn script_keys(&self, kind: &str) -> &'static [&'static str] {
        self.get(kind).map_or(&[], |k| k.script_keys())
    }
}

impl fmt::Debug for Kinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.kinds.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_key_parts() {
        let key = AttemptKey::new("r1", "build", 3);
        assert_eq!(key.as_str(), "r1/build/3");
        assert_eq!(
            (key.run_id(), key.stage_id(), key.attempt()),
            ("r1", "build", 3)
        );
        assert_eq!(AttemptKey::parse("r1/build/3"), Some(key.clone()));
        assert_eq!(key.slug(), "r1-build-3");
        for bad in ["", "r1/build", "r1/build/x", "a/b/1/2", "/b/1"] {
            assert_eq!(AttemptKey::parse(bad), None, "{bad}");
        }
    }

    /// A kind that builds nothing; `builtin` and `decides` set its declarations.
    struct Declared {
        name: &'static str,
        builtin: bool,
        decides: bool,
    }

    impl AdapterKind for Declared {
        fn kind(&self) -> &'static str {
            self.name
        }
        fn builtin_instance(&self) -> bool {
            self.builtin
        }
        fn takes_decisions(&self) -> bool {
            self.decides
        }
        fn validate_instance(&self, _: &Value) -> Vec<FieldError> {
            Vec::new()
        }
        fn validate_stage(&self, _: &Value) -> Vec<FieldError> {
            Vec::new()
        }
        fn build(
            &self,
            name: &str,
            _: &Value,
            _: &dyn crate::secret::SecretResolver,
        ) -> Result<Arc<dyn Adapter>, AdapterError> {
            Err(AdapterError::Invalid(format!("{name}: builds nothing")))
        }
    }

    #[test]
    fn kinds_answer_from_their_declarations() {
        let mut kinds = Kinds::new();
        for (name, builtin, decides) in [
            ("run", true, false),
            ("gate", true, true),
            ("ci", false, false),
        ] {
            kinds.register(Arc::new(Declared {
                name,
                builtin,
                decides,
            }));
        }
        assert_eq!(
            kinds.builtin_instances().collect::<Vec<_>>(),
            ["gate", "run"]
        );
        assert!(kinds.is_builtin_instance("run"));
        assert!(!kinds.is_builtin_instance("ci"));
        assert!(!kinds.is_builtin_instance("missing"));
        assert!(kinds.takes_decisions("gate"));
        assert!(!kinds.takes_decisions("run"));
        assert!(!kinds.takes_decisions("missing"));
        let names: Vec<_> = kinds.iter().map(|k| k.kind()).collect();
        assert_eq!(names, kinds.names().collect::<Vec<_>>());
        // Undeclared, a kind is neither built in nor deciding, and says nothing about itself.
        let plain = kinds.get("ci").unwrap();
        assert_eq!((plain.summary(), plain.docs()), ("", ""));
        assert!(plain.script_keys().is_empty());
        assert!(kinds.script_keys("missing").is_empty());
    }

    #[test]
    fn a_throttled_call_is_transient_and_says_when_to_try_again() {
        let throttled = AdapterError::Throttled {
            message: "10 requests an hour, all spent".into(),
            retry_after: Duration::from_secs(90),
        };
        assert!(throttled.is_transient());
        assert_eq!(throttled.retry_after(), Some(Duration::from_secs(90)));
        assert_eq!(throttled.to_string(), "10 requests an hour, all spent");
        let plain = AdapterError::Transient("503".into());
        assert!(plain.is_transient());
        assert_eq!(plain.retry_after(), None);
        assert!(!AdapterError::Invalid("x".into()).is_transient());
    }

    #[test]
    fn external_ref_round_trips() {
        let ext = ExternalRef {
            id: "42".into(),
            url: Some("http://ci/42".into()),
            data: serde_json::json!({"queue": 7}),
        };
        let text = serde_json::to_string(&ext).unwrap();
        assert_eq!(serde_json::from_str::<ExternalRef>(&text).unwrap(), ext);
    }
}
