//! baton's webhook relays: every stored delivery of a relay's sources that passes its `if`
//! is forwarded to each of its targets, signed, on a retry schedule, at least once.
//!
//! | module | does |
//! |---|---|
//! | [`route`] | which messages a delivery makes (the matcher calls it) |
//! | `dispatch` | one worker per target: claims due messages, sends them, records each try |
//! | `target` | one try of one message: the body, the headers, the signature, the answer |
//! | `sign` | GitHub's and Standard Webhooks' signatures |
//! | `resolve` | the resolver that refuses private addresses unless a target allows them |
//! | `headers` | which of a delivery's headers are passed on |
//! | `schedule` | when the next try is due (jitter, `Retry-After`) |
//! | `circuit` | the breaker that stops sending to a target that fails everything |
//! | `rate` | a target's rate limit |

use std::sync::Arc;
use std::time::Duration;

use baton_config::RelayConfig;
use baton_core::SecretResolver;
use baton_core::expr_bound::Limits;
use baton_store::{Millis, PendingDelivery, Store, Work, now_millis};
use indexmap::IndexMap;

use crate::circuit::CircuitState;
use crate::dispatch::{Disabled, TargetShared};
use crate::route::{Route, add_message};

pub use crate::route::Routed;

mod circuit;
mod dispatch;
mod headers;
mod rate;
mod resolve;
pub mod route;
mod schedule;
mod sign;
mod target;

use baton_core::secret::SecretError;

/// How often the metrics of pending messages and circuits are brought up to date.
const METRICS_EVERY: Duration = Duration::from_secs(5);

/// Every relay of the config, with one worker per target once [`Relays::start`] started
/// them.
pub struct Relays {
    routes: Vec<Route>,
    store: Arc<dyn Store>,
    limits: Limits,
}

/// A relay as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RelayView {
    /// Its name.
    pub name: String,
    /// The sources it forwards.
    pub from: Vec<String>,
    /// Its targets.
    pub targets: Vec<TargetView>,
}

/// A target as the API shows it (no secret: the URL without its query).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TargetView {
    /// Its name.
    pub name: String,
    /// Where it is, without query or fragment.
    pub url: String,
    /// `healthy`, `open` (its circuit is open) or `disabled` (it answered 410).
    pub state: &'static str,
    /// The open circuit: failed tries in a row, and when the next probe goes (wall clock,
    /// ms; `None` while a probe is in flight).
    pub circuit: Option<CircuitView>,
    /// When a 410 disabled it.
    pub disabled_at: Option<Millis>,
    /// Why.
    pub disabled_reason: Option<String>,
}

/// An open circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CircuitView {
    /// Failed tries in a row.
    pub failures: u32,
    /// When the next probe goes, if one is not in flight.
    pub probe_at: Option<Millis>,
}

impl Relays {
    /// Builds every relay of `config`: resolves the targets' secrets and builds their
    /// clients. Which targets a 410 disabled is read from the store by [`Relays::start`].
    pub fn new(
        config: &IndexMap<String, RelayConfig>,
        secrets: &dyn SecretResolver,
        store: Arc<dyn Store>,
        limits: Limits,
    ) -> Result<Self, RelayError> {
        if !config.is_empty() && store.relays().is_none() {
            return Err(RelayError::NoQueue);
        }
        let mut routes = Vec::with_capacity(config.len());
        for (name, relay) in config {
            let mut targets = Vec::with_capacity(relay.to.len());
            for target in &relay.to {
                let built = target::Target::new(name, target, secrets)?;
                targets.push(Arc::new(TargetShared::new(built, url_shown(&target.url))));
            }
            routes.push(Route {
                name: name.clone(),
                from: relay.from.clone(),
                condition: relay.condition.clone(),
                targets,
            });
        }
        Ok(Self {
            routes,
            store,
            limits,
        })
    }

    /// True when the config has no relay.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// True when some relay has an `if`: matching then runs on an evaluation thread.
    pub fn has_conditions(&self) -> bool {
        self.routes.iter().any(|r| r.condition.is_some())
    }

    /// Starts every target's worker, and a task that keeps the metrics up to date; they
    /// run until the returned guard is dropped. Reads which targets a 410 disabled first.
    ///
    /// On a store the process owns alone, leases an earlier process left are released
    /// (their messages are sent again: at least once). Call it before the matcher starts,
    /// so none of the leases released is one of its hand-overs. A shared store's leases may
    /// be other replicas' sends under way: they end only by expiry; and every worker looks
    /// at the store when another replica gives messages back or replays them
    /// ([`Store::wakes`]).
    pub async fn start(self: &Arc<Self>) -> RelayTasks {
        let mut tasks = Vec::new();
        if self.routes.is_empty() {
            return RelayTasks(tasks);
        }
        if let Err(e) = self.refresh().await {
            tracing::error!(
                error = &e as &dyn std::error::Error,
                "reading which relay targets are disabled failed; they are marked again at their next 410"
            );
        }
        if !self.store.shared()
            && let Some(queue) = self.store.relays()
            && let Err(e) = queue.release_relay_leases().await
        {
            tracing::error!(
                error = &e as &dyn std::error::Error,
                "releasing relay leases failed; leased messages are sent once their leases end"
            );
        }
        for route in &self.routes {
            for target in &route.targets {
                tasks.push(tokio::spawn(dispatch::work(
                    target.clone(),
                    self.store.clone(),
                    self.limits,
                )));
            }
        }
        if let Some(mut wakes) = self.store.wakes(Work::Relays) {
            let relays = self.clone();
            tasks.push(tokio::spawn(async move {
                while wakes.changed().await.is_ok() {
                    for target in relays.routes.iter().flat_map(|r| &r.targets) {
                        target.wake_for_store();
                    }
                }
            }));
        }
        let relays = self.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                relays.update_metrics().await;
                tokio::time::sleep(METRICS_EVERY).await;
            }
        }));
        RelayTasks(tasks)
    }

    async fn update_metrics(&self) {
        let Some(queue) = self.store.relays() else {
            return;
        };
        let oldest = match queue.relay_oldest_pending().await {
            Ok(oldest) => oldest,
            Err(e) => {
                tracing::debug!(
                    error = &e as &dyn std::error::Error,
                    "reading the oldest pending relay messages failed"
                );
                return;
            }
        };
        let now = now_millis();
        for route in &self.routes {
            for target in &route.targets {
                let since = oldest
                    .iter()
                    .find(|(r, t, _)| *r == route.name && *t == target.target.name)
                    .map(|(_, _, at)| *at);
                let age = since.map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0);
                target.oldest_pending.set(age);
                let _ = target.condition();
            }
        }
    }

    /// Adds the messages `delivery` makes to `routed`: one per target of every relay that
    /// takes its source and whose `if` holds. A replayed delivery makes none (its messages
    /// were made the first time; `baton relays replay` sends them again). Returns the
    /// problems met (an `if` that failed), for the delivery's record.
    pub fn route(
        &self,
        delivery: &PendingDelivery,
        now: Millis,
        routed: &mut Routed,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        if delivery.replay {
            return problems;
        }
        for route in &self.routes {
            if !route.takes(&delivery.source) {
                continue;
            }
            match route.admits(delivery) {
                Ok(true) => {
                    for target in &route.targets {
                        add_message(routed, &route.name, target, delivery, now);
                    }
                }
                Ok(false) => {}
                Err(problem) => problems.push(problem),
            }
        }
        problems
    }

    /// The commit that wrote `routed`'s messages is done: hands the leased ones to their
    /// workers and wakes the others' workers. (Dropping `routed` instead, when the commit
    /// failed, frees the places its leased messages held.)
    pub fn committed(&self, routed: Routed) {
        let Routed { handoffs, wake, .. } = routed;
        for mut handoff in handoffs {
            // Taken out, the message no longer holds its place in the handoff: the worker
            // frees the place when it takes the message from its queue.
            if let Some(message) = handoff.message.take() {
                handoff.target.hand_over(message);
                handoff.target.wake();
            }
        }
        for target in &wake {
            target.wake_for_store();
        }
    }

    /// The relays and their targets' states, for the API.
    pub fn views(&self) -> Vec<RelayView> {
        let now = std::time::Instant::now();
        let wall = now_millis();
        self.routes
            .iter()
            .map(|route| RelayView {
                name: route.name.clone(),
                from: route.from.clone(),
                targets: route
                    .targets
                    .iter()
                    .map(|t| {
                        let (circuit, disabled) = t.condition();
                        let circuit = match circuit {
                            CircuitState::Closed => None,
                            CircuitState::Open { failures, probe_at } => Some(CircuitView {
                                failures,
                                probe_at: probe_at.map(|at| {
                                    wall + at.saturating_duration_since(now).as_millis() as Millis
                                }),
                            }),
                        };
                        TargetView {
                            name: t.target.name.clone(),
                            url: t.url.clone(),
                            state: match (&disabled, &circuit) {
                                (Some(_), _) => "disabled",
                                (None, Some(_)) => "open",
                                (None, None) => "healthy",
                            },
                            circuit,
                            disabled_at: disabled.as_ref().map(|d| d.at),
                            disabled_reason: disabled.map(|d| d.reason),
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    /// True when `relay` exists and, if given, has `target`.
    pub fn knows(&self, relay: &str, target: Option<&str>) -> bool {
        self.routes.iter().any(|r| {
            r.name == relay
                && target.is_none_or(|name| r.targets.iter().any(|t| t.target.name == name))
        })
    }

    /// Reads the disabled marks again (a replay clears them) and wakes every worker: called
    /// after a replay.
    pub async fn refresh(&self) -> Result<(), baton_store::StoreError> {
        let Some(queue) = self.store.relays() else {
            return Ok(());
        };
        let stats = queue.relay_targets().await?;
        for route in &self.routes {
            for target in &route.targets {
                let mark = stats
                    .iter()
                    .find(|s| s.relay == route.name && s.target == target.target.name)
                    .and_then(|s| {
                        Some(Disabled {
                            at: s.disabled_at?,
                            reason: s.disabled_reason.clone().unwrap_or_default(),
                        })
                    });
                target.set_disabled(mark);
                target.wake_for_store();
            }
        }
        Ok(())
    }
}

/// The relays' tasks: dropped, they stop (tries under way are dropped too, and sent again
/// after a restart).
pub struct RelayTasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for RelayTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A target URL as people may see it: without its query and fragment, which may carry a
/// token.
fn url_shown(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    url[..end].to_owned()
}

/// A relay could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A target's secret (its signing secret, a header value) could not be read.
    #[error("relays.{relay}.to `{target}`: {what} cannot be read")]
    Secret {
        /// The relay.
        relay: String,
        /// The target.
        target: String,
        /// Which secret (`sign.secret`, `headers.Authorization`).
        what: String,
        /// Why.
        #[source]
        source: SecretError,
    },
    /// A Standard Webhooks secret is not `whsec_<base64>`.
    #[error(
        "relays.{relay}.to `{target}`: sign.secret is not a Standard Webhooks secret: {reason}"
    )]
    StandardWebhooksSecret {
        /// The relay.
        relay: String,
        /// The target.
        target: String,
        /// What is wrong with it (never the secret itself).
        reason: String,
    },
    /// A target's URL cannot be sent to.
    #[error("relays.{relay}.to `{target}`: url cannot be used: {reason}")]
    Url {
        /// The relay.
        relay: String,
        /// The target.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A header value from a secret cannot be sent in a header.
    #[error("relays.{relay}.to `{target}`: headers.{name} cannot be sent: {reason}")]
    Header {
        /// The relay.
        relay: String,
        /// The target.
        target: String,
        /// The header.
        name: String,
        /// Why.
        reason: String,
    },
    /// The store has no relay queue.
    #[error("relays are configured, but this store has no relay queue")]
    NoQueue,
    /// The HTTP client could not be built.
    #[error("relays.{relay}.to `{target}`: the HTTP client cannot be built")]
    Client {
        /// The relay.
        relay: String,
        /// The target.
        target: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
}
