//! `GET /ui/events[?run=<id>|?deliveries]`: server-sent events that tell an open page to
//! fetch its fragment again. Each event is `change` with the run id as data (`*` when it
//! is not one run's).
//!
//! A change made by this process's engine is sent the moment its commit is stored; with
//! `deliveries`, so is each pass of this process's delivery matcher (a delivery that starts
//! no run changes no run). On a
//! store other processes share (PostgreSQL replicas), a run's page also compares the run's
//! version every [`SHARED_RUN_CHECK`] and a list is told to look again every
//! [`SHARED_LIST_CHECK`], since another replica's steps publish nothing here.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use baton_engine::Event as EngineEvent;
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use crate::AppState;

use super::session::Session;

/// How often a run page on a shared store compares the run's version.
const SHARED_RUN_CHECK: Duration = Duration::from_secs(2);
/// How often a list on a shared store is told to look again.
const SHARED_LIST_CHECK: Duration = Duration::from_secs(5);

/// `?run=` or `?deliveries`.
#[derive(Deserialize)]
pub(crate) struct Scope {
    /// Only changes of this run.
    run: Option<String>,
    /// Present for a deliveries page: matched deliveries count as changes too.
    deliveries: Option<String>,
}

struct Watch {
    state: Arc<AppState>,
    events: tokio::sync::broadcast::Receiver<EngineEvent>,
    run: Option<String>,
    check: Option<tokio::time::Interval>,
    version: Option<i64>,
    closing: tokio::sync::watch::Receiver<bool>,
    matched: Option<tokio::sync::watch::Receiver<u64>>,
}

/// `GET /ui/events`.
pub(crate) async fn events(
    State(state): State<Arc<AppState>>,
    _session: Session,
    Query(scope): Query<Scope>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let shared = state.engine.store().shared();
    let check = shared.then(|| {
        let every = if scope.run.is_some() {
            SHARED_RUN_CHECK
        } else {
            SHARED_LIST_CHECK
        };
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    let watch = Watch {
        events: state.engine.subscribe(),
        closing: state.closing.subscribe(),
        matched: scope
            .deliveries
            .is_some()
            .then(|| state.deliveries_matched.subscribe()),
        state,
        run: scope.run,
        check,
        version: None,
    };
    let stream = futures::stream::unfold(watch, |mut watch| async move {
        let changed = watch.next_change().await?;
        Some((Ok(Event::default().event("change").data(changed)), watch))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

impl Watch {
    /// Waits for the next change that concerns this page: the run id, or `*` when a lagging
    /// receiver cannot tell which. `None` ends the stream: the server is shutting down.
    async fn next_change(&mut self) -> Option<String> {
        loop {
            let tick = async {
                match self.check.as_mut() {
                    Some(interval) => interval.tick().await,
                    None => std::future::pending().await,
                }
            };
            let matched = async {
                let Some(passes) = self.matched.as_mut() else {
                    return std::future::pending().await;
                };
                if passes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = async { drop(self.closing.wait_for(|closing| *closing).await) } => return None,
                () = matched => return Some("*".to_owned()),
                received = self.events.recv() => match received {
                    Ok(event) => {
                        let id = run_of(&event);
                        if self.run.as_deref().is_none_or(|run| run == id) {
                            return Some(id.to_owned());
                        }
                    }
                    Err(RecvError::Lagged(_)) => return Some("*".to_owned()),
                    Err(RecvError::Closed) => return None,
                },
                _ = tick => {
                    let Some(run) = self.run.clone() else {
                        return Some("*".to_owned());
                    };
                    let version = self
                        .state
                        .engine
                        .store()
                        .load_run(&run)
                        .await
                        .ok()
                        .flatten()
                        .map(|snapshot| snapshot.version);
                    if version.is_some() && version != self.version {
                        let first = self.version.is_none();
                        self.version = version;
                        if !first {
                            return Some(run);
                        }
                    }
                }
            }
        }
    }
}

fn run_of(event: &EngineEvent) -> &str {
    match event {
        EngineEvent::Stage { run_id, .. } | EngineEvent::Run { run_id, .. } => run_id,
    }
}
