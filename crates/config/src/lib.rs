//! baton's configuration: the gateway config (`baton.toml` or `baton.yaml`) and the workflow
//! files, loaded and checked in one pass.
//!
//! [`load()`] reads the config file (TOML or YAML by extension), applies `BATON_*` environment
//! overrides, finds the workflow files through the config's `workflows` globs (plus files
//! given directly), compiles every workflow, and checks everything that can be checked
//! before a run: unknown keys, types, durations, jq expressions, secret references, adapter
//! instance blocks, each stage's `with:` (by its adapter kind), and every name one file uses
//! from another. It never stops at the first problem: a failed load returns
//! [`Diagnostics`], every problem with its file and key path.
//!
//! [`WorkflowCheck`] runs the same checks on one workflow given as text (the web editor's),
//! and [`compose`] writes the editor's [`WorkflowDraft`] into a workflow file, editing an
//! existing file's text in place so that its comments stay.
//!
//! # Environment overrides
//!
//! `BATON_SERVER__LISTEN=0.0.0.0:8080` sets `server.listen`: the name after `BATON_` is split
//! on `__` and lowercased. Only variables whose first segment is a top-level key
//! ([`TOP_LEVEL_KEYS`]) count, so `BATON_INPUT`, `BATON_RUN_ID` and the like are ignored.
//! Values `true`/`false` are booleans, integers are numbers, a value starting with `[` or
//! `{` is JSON, anything else is text.
//!
//! # Secrets
//!
//! A secret is always a reference, `{ env = "NAME" }` or `{ file = "PATH" }`; a literal
//! secret is a load error. [`EnvFileResolver`] reads references; [`load_reading_secrets`]
//! reads every reference of a config as part of the load, as `baton validate` does.

mod check;
mod diagnostic;
mod document;
mod env;
mod gateway;
mod load;
mod secrets;
mod workflow_check;
mod workflow_edit;
mod yaml_lines;

#[cfg(test)]
mod tests;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use document::{MAX_FILE_BYTES, MAX_YAML_DEPTH};
pub use gateway::{
    AdapterInstance, ApiConfig, ApiToken, BearerAuth, DEFAULT_RELAY_SCHEDULE, DeliveryId,
    EngineConfig, EventSelector, ExpressionsConfig, GITHUB_API_URL, GITLAB_API_URL, GatewayConfig,
    GenericAuth, GenericSource, GithubApp, GithubAuth, GithubSource, GitlabSource, HmacAlgorithm,
    HmacAuth, RegistryAuth, RegistrySource, RelayConfig, RelayHeaderValue, RelayRate, RelaySign,
    RelayTarget, Role, ServerConfig, SourceConfig, StoreConfig, TOP_LEVEL_KEYS, TRAVIS_API_URL,
    TravisSource, UiConfig, WorkflowGlobs,
};
pub use load::{
    Checked, ENVIRONMENT, Loaded, LoadedWorkflow, SecretsFrom, load, load_reading_secrets,
};
pub use secrets::{EnvFileResolver, MAX_SECRET_FILE_BYTES, SecretUse};
pub use workflow_check::{Problem, WorkflowCheck};
pub use workflow_edit::{
    Composed, DraftError, DraftStage, DraftTrigger, WorkflowDraft, compose, draft_of,
};
