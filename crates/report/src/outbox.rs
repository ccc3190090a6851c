//! Delivery from the store's report outbox (`baton_store::outbox`).
//!
//! The engine writes an outbox row in the same commit as each change a report is wanted
//! for; the row names the run, source and context, never the status. This loop claims due
//! rows, reads the run, works out the context's status now, posts it, and settles the row:
//! removed once posted (unless a newer change came meanwhile, which then goes next), or
//! given its next try time, so a restarted baton picks the schedule up where it was. The
//! engine's events only wake the loop early.
//!
//! In memory it keeps, per commit context, the last status the target took (a status equal
//! to it is not posted again), the run that owns the context (an earlier run does not
//! overwrite a later one's status), and whether a post is under way (one at a time per
//! context, so statuses arrive in order).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use baton_engine::Event;
use baton_store::{Change, DueReport, Millis, ReportKey, RunSnapshot, Store, now_millis};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::status::{Status, status_of};
use crate::target::{Commit, Failure, Posted, Target};
use crate::{Reporter, RetryPolicy};

/// Rows claimed at once.
const BATCH: u32 = 64;

/// The longest the loop sleeps without looking at the store (rows written by another
/// process, a store that failed to answer).
const LOOK_AGAIN: Duration = Duration::from_secs(30);

/// One context on one commit of one source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    source: String,
    commit: Commit,
    context: String,
}

/// What this process knows of one commit context.
#[derive(Default)]
struct Slot {
    /// The latest-created run that reported to it (run ids sort by creation).
    owner: String,
    /// The last status the target took, posted or found already there.
    taken: Option<Status>,
    /// A post is under way.
    busy: bool,
    /// Rows for this context that came while it was busy, dealt with after it.
    queued: Vec<DueReport>,
}

/// Where one run reports to one source: the target and the commit, or nowhere.
type Destination = Option<(Arc<dyn Target>, Commit)>;

/// What a post task ends with.
struct Settled {
    key: Key,
    row: ReportKey,
    /// The status, when the target took it.
    taken: Option<Status>,
}

/// The delivery loop's state.
pub(crate) struct Outbox {
    reporter: Reporter,
    store: Arc<dyn Store>,
    slots: HashMap<Key, Slot>,
    /// Rows claimed and not settled yet.
    held: HashSet<ReportKey>,
    /// Where runs report to, by run and source, worked out once per run.
    destinations: HashMap<String, HashMap<String, Destination>>,
    posts: JoinSet<Settled>,
}

impl Outbox {
    pub(crate) fn new(reporter: Reporter, store: Arc<dyn Store>) -> Self {
        Self {
            reporter,
            store,
            slots: HashMap::new(),
            held: HashSet::new(),
            destinations: HashMap::new(),
            posts: JoinSet::new(),
        }
    }

    /// Delivers until `events` closes (the engine is gone), then gives posts under way up
    /// to the request timeout. Rows still waiting stay in the store for the next start.
    pub(crate) async fn follow(mut self, mut events: broadcast::Receiver<Event>) {
        tracing::info!(sources = ?self.reporter.sources(), "reporting run status to commits");
        // This process owns the store: claims left by a killed one end now.
        if let Err(e) = self.store.release_report_leases().await {
            tracing::warn!(error = %e, "cannot clear the outbox's old claims; their reports wait for them to end");
        }
        let mut prune = tokio::time::interval(LOOK_AGAIN);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake_at = self.deliver_due().await;
            tokio::select! {
                received = events.recv() => {
                    if matches!(received, Err(RecvError::Closed)) || drain(&mut events) {
                        break;
                    }
                }
                Some(joined) = self.posts.join_next() => match joined {
                    Ok(settled) => self.settled(settled).await,
                    Err(e) => tracing::error!(error = %e, "a commit status post panicked; its report is tried again when its claim ends"),
                },
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = prune.tick() => self.prune(),
            }
        }
        tracing::debug!("the engine is gone; finishing the reports under way");
        let grace = self.reporter.policy.request_timeout;
        let _ = tokio::time::timeout(grace, async {
            while self.posts.join_next().await.is_some() {}
        })
        .await;
    }

    /// Claims and takes every due row; answers when to look next.
    async fn deliver_due(&mut self) -> Instant {
        let policy = self.reporter.policy;
        // A claim lasts a post and its settling; it only matters if this process dies
        // holding it and another takes the store over without clearing claims.
        let lease = policy.request_timeout.saturating_mul(2) + Duration::from_secs(30);
        loop {
            let now = now_millis();
            let next = match self.store.next_report_due(now).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the report outbox; trying again");
                    return Instant::now() + policy.first_retry;
                }
            };
            match next {
                Some(due) if due <= now => {}
                Some(due) => {
                    let wait = Duration::from_millis((due - now).max(0) as u64);
                    return Instant::now() + wait.min(LOOK_AGAIN);
                }
                None => return Instant::now() + LOOK_AGAIN,
            }
            let rows = match self
                .store
                .claim_reports(now, BATCH, now + millis(lease))
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim reports from the outbox; trying again");
                    return Instant::now() + policy.first_retry;
                }
            };
            self.take(rows).await;
        }
    }

    /// Deals with claimed rows: each is posted, queued behind a post of its context, or
    /// settled at once (nothing to post).
    async fn take(&mut self, mut rows: Vec<DueReport>) {
        // A row this process holds already was claimed again only because its claim ran
        // out; the claim is renewed, the row stays where it is.
        rows.retain(|row| self.held.insert(row.key.clone()));
        // Later runs first: an earlier run's row for a context a later run owns is dropped
        // rather than posted and overwritten.
        rows.sort_by(|a, b| b.key.cmp(&a.key));
        let mut settled = Vec::new();
        let mut run: Option<RunSnapshot> = None;
        for row in rows {
            if run.as_ref().is_none_or(|r| r.header.id != row.key.run_id) {
                run = match self.store.load_run(&row.key.run_id).await {
                    Ok(found) => found,
                    Err(e) => {
                        // Left claimed: it is taken again when the claim ends.
                        self.held.remove(&row.key);
                        tracing::warn!(run = %row.key.run_id, error = %e, "cannot read the run to report its status; trying again later");
                        continue;
                    }
                };
            }
            if let Some(done) = self.take_row(row, run.as_ref()) {
                settled.push(done);
            }
        }
        self.settle_now(settled).await;
    }

    /// Posts a row, or queues it; answers the row when there is nothing to post.
    fn take_row(&mut self, row: DueReport, run: Option<&RunSnapshot>) -> Option<DueReport> {
        let Some(run) = run else {
            return Some(row);
        };
        let destination = self
            .destinations
            .entry(row.key.run_id.clone())
            .or_default()
            .entry(row.key.source.clone())
            .or_insert_with(|| self.reporter.destination(run, &row.key.source));
        let Some((target, commit)) = destination.clone() else {
            return Some(row);
        };
        let Some(status) = status_of(run, &row.key.stage_id, self.reporter.public_url.as_deref())
        else {
            return Some(row);
        };
        let key = Key {
            source: row.key.source.clone(),
            commit,
            context: status.context.clone(),
        };
        let slot = self.slots.entry(key.clone()).or_default();
        if row.key.run_id < slot.owner {
            tracing::debug!(run = %row.key.run_id, owner = %slot.owner, context = %key.context, commit = %key.commit,
                "a later run reports to this commit and context; not posting this run's status");
            return Some(row);
        }
        if slot.owner != row.key.run_id {
            slot.owner = row.key.run_id.clone();
        }
        if slot.busy {
            slot.queued.push(row);
            return None;
        }
        if !target.needs_post(slot.taken.as_ref(), &status) {
            return Some(row);
        }
        slot.busy = true;
        self.posts.spawn(post(
            self.store.clone(),
            target,
            key,
            status,
            row,
            self.reporter.policy,
        ));
        None
    }

    /// Removes rows there is nothing to post for (unless a newer change came for them).
    async fn settle_now(&mut self, rows: Vec<DueReport>) {
        if rows.is_empty() {
            return;
        }
        let changes = rows
            .iter()
            .map(|row| Change::ReportDone {
                key: row.key.clone(),
                version: row.version,
            })
            .collect();
        if let Err(e) = self.store.commit(changes).await {
            tracing::warn!(error = %e, "cannot settle reports in the outbox; they are looked at again when their claims end");
        }
        for row in rows {
            self.held.remove(&row.key);
        }
    }

    /// A post ended: the context is free for the rows that queued behind it.
    async fn settled(&mut self, settled: Settled) {
        self.held.remove(&settled.row);
        let Some(slot) = self.slots.get_mut(&settled.key) else {
            return;
        };
        slot.busy = false;
        if settled.taken.is_some() {
            slot.taken = settled.taken;
        }
        let queued = std::mem::take(&mut slot.queued);
        for row in &queued {
            self.held.remove(&row.key);
        }
        // Read again: the run may have changed while they waited.
        self.take(queued).await;
    }

    /// Forgets contexts that are idle with a final status, and runs with no row held.
    fn prune(&mut self) {
        self.slots.retain(|_, slot| {
            slot.busy
                || !slot.queued.is_empty()
                || !slot.taken.as_ref().is_some_and(|s| s.phase.is_terminal())
        });
        let held: HashSet<&str> = self.held.iter().map(|k| k.run_id.as_str()).collect();
        self.destinations
            .retain(|run_id, _| held.contains(run_id.as_str()));
    }
}

/// Takes every event already queued; true when the sender is gone.
fn drain(events: &mut broadcast::Receiver<Event>) -> bool {
    loop {
        match events.try_recv() {
            Ok(_) | Err(TryRecvError::Lagged(_)) => {}
            Err(TryRecvError::Empty) => return false,
            Err(TryRecvError::Closed) => return true,
        }
    }
}

fn millis(d: Duration) -> Millis {
    d.as_millis().min(i64::MAX as u128) as Millis
}

/// When to try a failed post again: `(due_at, first_try_at)`, or `None` to give up.
///
/// The wait doubles from `first_retry` with each failed try of the row (`tries` before this
/// one), up to `max_backoff`; a longer wait the server asked for is honoured up to that cap.
/// A status not posted `give_up_after` its first try is given up.
pub(crate) fn next_try(
    policy: &RetryPolicy,
    tries: u32,
    first_try_at: Millis,
    failure: &Failure,
    now: Millis,
) -> Option<(Millis, Millis)> {
    if !failure.retry {
        return None;
    }
    let backoff = policy
        .first_retry
        .saturating_mul(2u32.saturating_pow(tries))
        .min(policy.max_backoff);
    let wait = failure
        .retry_after
        .unwrap_or_default()
        .max(backoff)
        .min(policy.max_backoff);
    let elapsed = Duration::from_millis((now - first_try_at).max(0) as u64);
    if elapsed + wait > policy.give_up_after {
        return None;
    }
    Some((now + millis(wait), first_try_at))
}

/// Posts one row's status and settles the row in the store.
async fn post(
    store: Arc<dyn Store>,
    target: Arc<dyn Target>,
    key: Key,
    status: Status,
    row: DueReport,
    policy: RetryPolicy,
) -> Settled {
    let (source, commit, context) = (target.name(), &key.commit, &key.context);
    let started = now_millis();
    let outcome =
        match tokio::time::timeout(policy.request_timeout, target.post(commit, &status)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::transient(format!(
                "no answer within {}s",
                policy.request_timeout.as_secs_f32()
            ))),
        };
    let attempt = row.tries + 1;
    let done = Change::ReportDone {
        key: row.key.clone(),
        version: row.version,
    };
    let (change, taken) = match outcome {
        Ok(posted_as) => {
            metrics::counter!("baton_reports_total", "result" => "ok").increment(1);
            match posted_as {
                Posted::Done => tracing::debug!(%source, %commit, %context,
                    state = ?status.phase, "commit status posted"),
                Posted::AlreadyThere(why) => tracing::debug!(%source, %commit, %context,
                    state = ?status.phase, %why, "commit status already there"),
            }
            (done, Some(status))
        }
        Err(failure) => {
            let first_try_at = row.first_try_at.unwrap_or(started);
            match next_try(&policy, row.tries, first_try_at, &failure, now_millis()) {
                Some((due_at, first_try_at)) => {
                    metrics::counter!("baton_reports_total", "result" => "retry").increment(1);
                    tracing::warn!(%source, %commit, %context, attempt, reason = %failure.reason,
                        retry_in = ?Duration::from_millis((due_at - now_millis()).max(0) as u64),
                        "could not report a commit status; will try again");
                    let retry = Change::ReportRetry {
                        key: row.key.clone(),
                        version: row.version,
                        due_at,
                        tries: attempt,
                        first_try_at,
                    };
                    (retry, None)
                }
                None => {
                    metrics::counter!("baton_reports_total", "result" => "dropped").increment(1);
                    tracing::warn!(%source, %commit, %context, attempt, reason = %failure.reason,
                        "could not report a commit status; giving up on it (the run is not affected)");
                    (done, None)
                }
            }
        }
    };
    if let Err(e) = store.commit(vec![change]).await {
        tracing::warn!(%source, %commit, %context, error = %e,
            "cannot settle the report in the outbox; it is looked at again when its claim ends");
    }
    Settled {
        key,
        row: row.key,
        taken,
    }
}
