//! The claims of the tasks whose steps are under way in this process: renewed while the
//! work goes on (on a shared store), told apart when a commit is fenced (taken over by
//! another process, or only superseded by a later step of this one), and dropped when lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use baton_store::{Change, Task, TaskKind, TaskLease, now_millis};

use crate::Inner;
use crate::commit::millis;

/// One claimed task whose step this process runs (or waits to run, or retries).
pub(crate) struct Flight {
    pub(crate) id: i64,
    pub(crate) version: i64,
    pub(crate) token: i64,
    stage_id: String,
    kind: TaskKind,
    /// The step failed on the store and waits to run again.
    pub(crate) retrying: bool,
    /// A later commit of this process rescheduled, unscheduled or finished the task: a fence
    /// on this claim is then this process's own doing, not another's.
    superseded: bool,
    /// The store said another process holds the task now; already logged and counted.
    pub(crate) lost: bool,
    /// Fired when the claim is found lost, so an adapter call still under way (a `start`
    /// that has not sent yet) is dropped instead of doing work another replica now owns.
    pub(crate) abort: Arc<tokio::sync::Notify>,
}

/// The flights of this process, by run.
pub(crate) type Flights = HashMap<String, Vec<Flight>>;

/// A task of the run a commit reschedules, unschedules or finishes.
pub(crate) enum Target {
    /// By its stage and kind (`Schedule`, `Unschedule`).
    Key(String, TaskKind),
    /// By its row (`Done`).
    Id(i64),
}

impl Target {
    /// The tasks `changes` (all of one run) reschedule, unschedule or finish.
    pub(crate) fn of(changes: &[Change]) -> Vec<Target> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::Schedule(t) => Some(Target::Key(t.stage_id.clone(), t.kind)),
                Change::Unschedule { stage_id, kind, .. } => {
                    Some(Target::Key(stage_id.clone(), *kind))
                }
                Change::Done { id, .. } => Some(Target::Id(*id)),
                _ => None,
            })
            .collect()
    }
}

/// What became of a step whose commit was fenced and whose claim is no longer held.
pub(crate) enum Gone {
    /// Taken over by another process: logged and counted.
    Lost,
    /// Superseded by this process's own later commit.
    Superseded,
}

impl Inner {
    /// Records that `task`'s step is dispatched. Answers false when a step of this process
    /// already retries the same task (it was claimed again because its lease ran out): that
    /// step takes over the new claim and goes on.
    pub(crate) fn take_off(&self, task: &Task) -> bool {
        let mut flights = self.flights.lock().unwrap();
        let run = flights.entry(task.run_id.clone()).or_default();
        if let Some(f) = run
            .iter_mut()
            .find(|f| f.id == task.id && f.version == task.version && f.retrying)
        {
            f.token = task.lease;
            f.superseded = false;
            return false;
        }
        run.push(Flight {
            id: task.id,
            version: task.version,
            token: task.lease,
            stage_id: task.stage_id.clone(),
            kind: task.kind,
            retrying: false,
            superseded: false,
            lost: false,
            abort: Arc::default(),
        });
        true
    }

    /// Forgets `task`'s flight (its step ended).
    pub(crate) fn land(&self, task: &Task) {
        let mut flights = self.flights.lock().unwrap();
        if let Some(run) = flights.get_mut(&task.run_id) {
            // A retrying step's claim may have been renewed by a claim since it last looked.
            run.retain(|f| {
                (f.id, f.token) != (task.id, task.lease)
                    && !(f.retrying && (f.id, f.version) == (task.id, task.version))
            });
            if run.is_empty() {
                flights.remove(&task.run_id);
            }
        }
    }

    /// Runs `f` on `task`'s flight, if this process still has it.
    pub(crate) fn with_flight<R>(
        &self,
        task: &Task,
        f: impl FnOnce(&mut Flight) -> R,
    ) -> Option<R> {
        let mut flights = self.flights.lock().unwrap();
        flights
            .get_mut(&task.run_id)?
            .iter_mut()
            .find(|f| (f.id, f.token) == (task.id, task.lease))
            .map(f)
    }

    /// True when the store said the claim `lease` of a step of `run_id` was lost.
    pub(crate) fn is_lost(&self, run_id: &str, lease: TaskLease) -> bool {
        let flights = self.flights.lock().unwrap();
        flights.get(run_id).is_some_and(|run| {
            run.iter()
                .any(|f| (f.id, f.token) == (lease.id, lease.token) && f.lost)
        })
    }

    /// Marks the flights of `run_id` other than `own` that a commit just made reschedules,
    /// unschedules or finishes (`targets`).
    pub(crate) fn supersede(&self, run_id: &str, own: Option<TaskLease>, targets: &[Target]) {
        let mut flights = self.flights.lock().unwrap();
        let Some(run) = flights.get_mut(run_id) else {
            return;
        };
        for flight in run.iter_mut() {
            if own.is_some_and(|l| (l.id, l.token) == (flight.id, flight.token)) {
                continue;
            }
            flight.superseded |= targets.iter().any(|t| match t {
                Target::Key(stage_id, kind) => *stage_id == flight.stage_id && *kind == flight.kind,
                Target::Id(id) => *id == flight.id,
            });
        }
    }

    /// A fenced step whose claim is no longer held: logged and counted once when another
    /// process took it, quietly dropped when this process superseded it.
    pub(crate) fn gone(&self, task: &Task) -> Gone {
        let (superseded, logged) = self
            .with_flight(task, |f| {
                let logged = f.lost;
                f.lost = !f.superseded;
                (f.superseded, logged)
            })
            .unwrap_or((false, false));
        // A store no other process writes cannot lose a claim to one.
        if superseded || !self.store.shared() {
            tracing::debug!(run = %task.run_id, stage = %task.stage_id, task = task.kind.as_str(),
                "the step's task was scheduled again by this process; dropping the step");
            return Gone::Superseded;
        }
        if !logged {
            lost_lease(task);
        }
        Gone::Lost
    }

    /// Renews the claims of the steps under way every third of a lease, while the engine
    /// runs (shared stores only: on one owned by this process, nobody takes a claim over).
    pub(crate) async fn renew_loop(self: Arc<Self>) {
        let period = (self.config.lease / 3).max(Duration::from_millis(10));
        let mut outage = baton_core::outage::Outage::default();
        while !self.stopping.load(Ordering::SeqCst) {
            tokio::time::sleep(period).await;
            let held: Vec<(String, TaskLease)> = {
                let flights = self.flights.lock().unwrap();
                let mut newest: HashMap<i64, (String, TaskLease)> = HashMap::new();
                // One lease a task: an older claim of the same task is superseded anyway.
                for (run_id, run) in flights.iter() {
                    for f in run.iter().filter(|f| !f.lost && !f.superseded) {
                        let lease = TaskLease {
                            id: f.id,
                            token: f.token,
                        };
                        let slot = newest.entry(f.id).or_insert((run_id.clone(), lease));
                        if slot.1.token < f.token {
                            *slot = (run_id.clone(), lease);
                        }
                    }
                }
                newest.into_values().collect()
            };
            if held.is_empty() {
                continue;
            }
            let leases: Vec<TaskLease> = held.iter().map(|(_, l)| *l).collect();
            let until = now_millis() + millis(self.config.lease);
            let lost = match self.store.renew(&leases, until).await {
                Ok(lost) => lost,
                Err(e) => {
                    if outage.failed() {
                        tracing::error!(
                            error = &e as &dyn std::error::Error,
                            "renewing the leases of steps under way failed; trying again (logged again when it works)"
                        );
                    }
                    continue;
                }
            };
            if let Some((lasted, failures)) = outage.recovered() {
                tracing::warn!(after = ?lasted, failed_tries = failures, "renewing leases works again");
            }
            for id in lost {
                let Some((run_id, lease)) = held.iter().find(|(_, l)| l.id == id) else {
                    continue;
                };
                let mut flights = self.flights.lock().unwrap();
                let Some(flight) = flights.get_mut(run_id).and_then(|run| {
                    run.iter_mut()
                        .find(|f| (f.id, f.token) == (lease.id, lease.token))
                }) else {
                    continue;
                };
                if flight.superseded || flight.lost {
                    continue;
                }
                flight.lost = true;
                flight.abort.notify_one();
                let (stage_id, kind) = (flight.stage_id.clone(), flight.kind);
                drop(flights);
                lost_lease(&Task {
                    id,
                    lease: lease.token,
                    version: 0,
                    run_id: run_id.clone(),
                    stage_id,
                    kind,
                    attempt: 0,
                    due_at: 0,
                });
            }
        }
    }
}

/// Says once that another process took `task` over, and counts it.
fn lost_lease(task: &Task) {
    tracing::warn!(
        run = %task.run_id,
        stage = %task.stage_id,
        task = task.kind.as_str(),
        "lost the lease on {}/{} {} to another process; dropping the step",
        task.run_id,
        task.stage_id,
        task.kind.as_str()
    );
    metrics::counter!("baton_engine_lost_leases_total").increment(1);
}
