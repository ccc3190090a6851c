//! baton's core model, with no I/O: workflows and their compiled form, run and stage
//! states, the [`Adapter`](adapter::Adapter) contract and what adapter kinds declare, a
//! person's [`Decision`], jq expressions and templates (and their quoting in shell scripts),
//! secret references and durations, the typed reading of config blocks, the waits and
//! texts HTTP adapters share, and how a ContainerOps component's outputs are read.

pub mod adapter;
pub mod address;
pub mod component;
pub mod context;
pub mod decision;
pub mod duration;
pub mod expr;
pub mod expr_bound;
pub mod graph;
pub mod outage;
pub mod secret;
pub mod shell;
pub mod state;
pub mod typed;
pub mod wire;
pub mod workflow;

pub use adapter::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, FieldError, Kinds, Logs,
    PollOutcome, PollRequest, SourceDelivery, StartRequest, Waker, WebhookRequest,
};
pub use decision::{Decision, Verdict};
pub use duration::HumanDuration;
pub use expr::{Expr, Template, TemplatedValue};
pub use secret::{Secret, SecretRef, SecretResolver};
pub use state::{ExternalState, RunStatus, StageStatus};
pub use typed::{Partial, fields_of, read_config, read_table};
pub use workflow::{OnFailure, Stage, StageDefaults, StageSpec, Workflow, WorkflowSpec};
