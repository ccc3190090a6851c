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
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use crate::target::{Commit, Failure, Posted, Report, Target};
use crate::{Reporter, RetryPolicy};

/// Rows claimed at once.
const BATCH: u32 = 64;

/// The longest the loop sleeps without looking at the store (rows written by another
/// process, a store that failed to answer).
const LOOK_AGAIN: Duration = Duration::from_secs(30);

/// The longest wait between two tries of a store write or read that failed (a full disk):
/// once the store answers again, reports go on within this, not when their claims end.
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

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
    /// The last report the target took, posted or found already there.
    taken: Option<Report>,
    /// A post is under way.
    busy: bool,
    /// Rows for this context that came while it was busy, dealt with after it.
    queued: Vec<DueReport>,
    /// The server asked to wait until then (`Retry-After`, a rate limit's reset): rows for
    /// this context wait too, rather than asking again at once.
    hold_until: Option<Millis>,
}

/// Where one run reports to one source: the target and the commit, or nowhere.
type Destination = Option<(Arc<dyn Target>, Commit)>;

/// What a post task ends with.
struct Settled {
    /// What to do with the row in the store.
    change: Change,
    /// The report, when the target took it.
    taken: Option<Report>,
    /// When the server asked to be asked again, if it did.
    hold_until: Option<Millis>,
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
    /// The context and row of each post task.
    running: HashMap<tokio::task::Id, (Key, ReportKey)>,
    /// What the store failed to take or give, tried again after a short wait rather than
    /// when the rows' claims end (their rows stay held meanwhile).
    failed: StoreRetry,
}

/// Settlements the store did not write and rows whose run it did not read.
#[derive(Default)]
struct StoreRetry {
    /// Settlements to write again.
    unsettled: Vec<Change>,
    /// Claimed rows to take again.
    untaken: Vec<DueReport>,
    /// When to try again; `None` while nothing waits.
    at: Option<Instant>,
    /// The wait after the next failure.
    wait: Duration,
}

impl StoreRetry {
    /// Schedules a try after the current wait, which doubles up to [`STORE_RETRY_MAX`].
    fn failed(&mut self, first: Duration) {
        if self.at.is_none() {
            let wait = if self.wait.is_zero() {
                first.min(STORE_RETRY_MAX)
            } else {
                self.wait
            };
            self.at = Some(Instant::now() + wait);
            self.wait = (wait * 2).min(STORE_RETRY_MAX);
        }
    }
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
            running: HashMap::new(),
            failed: StoreRetry::default(),
        }
    }

    /// Delivers until `events` closes (the engine is gone), then gives posts under way up
    /// to the request timeout. Rows still waiting stay in the store for the next start.
    pub(crate) async fn follow(mut self, mut events: broadcast::Receiver<Event>) {
        tracing::info!(sources = ?self.reporter.sources(), "reporting run status to commits");
        // A store this process owns: claims left by a killed one end now. A shared store's
        // claims may be other replicas' reports under way: they end only by expiry.
        if !self.store.shared()
            && let Err(e) = self.store.release_report_leases().await
        {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "cannot clear the outbox's old claims; their reports wait for them to end"
            );
        }
        let mut prune = tokio::time::interval(LOOK_AGAIN);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.retry_failed().await;
            let mut wake_at = self.deliver_due().await;
            if let Some(at) = self.failed.at {
                wake_at = wake_at.min(at);
            }
            tokio::select! {
                received = events.recv() => {
                    if matches!(received, Err(RecvError::Closed)) || drain(&mut events) {
                        break;
                    }
                }
                Some(joined) = self.posts.join_next_with_id() => {
                    let mut ended = vec![joined];
                    while let Some(joined) = self.posts.try_join_next_with_id() {
                        ended.push(joined);
                    }
                    self.settled(ended).await;
                }
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = prune.tick() => self.prune(),
            }
        }
        tracing::debug!("the engine is gone; finishing the reports under way");
        let grace = self.reporter.policy.request_timeout;
        let mut changes = Vec::new();
        let _ = tokio::time::timeout(grace, async {
            while let Some(joined) = self.posts.join_next().await {
                if let Ok(settled) = joined {
                    changes.push(settled.change);
                }
            }
        })
        .await;
        // Recorded, so a status that landed now is not posted again at the next start.
        self.settle(changes).await;
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
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "cannot read the report outbox; trying again"
                    );
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
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "cannot claim reports from the outbox; trying again"
                    );
                    return Instant::now() + policy.first_retry;
                }
            };
            if rows.is_empty() {
                // Claimed meanwhile by someone else: look again shortly rather than at once.
                return Instant::now() + policy.first_retry;
            }
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
                        // Still held: taken again after a short wait.
                        tracing::warn!(run = %row.key.run_id, error = &e as &dyn std::error::Error, "cannot read the run to report its status; trying again shortly");
                        self.failed.untaken.push(row);
                        self.failed.failed(self.reporter.policy.first_retry);
                        continue;
                    }
                };
            }
            if let Some(done) = self.take_row(row, run.as_ref()) {
                settled.push(done);
            }
        }
        self.settle(settled).await;
    }

    /// Posts a row, or queues it; answers what becomes of the row when it is not posted now
    /// (done: nothing to post; or put off while the server asked to wait).
    fn take_row(&mut self, row: DueReport, run: Option<&RunSnapshot>) -> Option<Change> {
        let Some(run) = run else {
            return Some(finished(row));
        };
        let destination = self
            .destinations
            .entry(row.key.run_id.clone())
            .or_default()
            .entry(row.key.source.clone())
            .or_insert_with(|| self.reporter.destination(run, &row.key.source));
        let Some((target, commit)) = destination.clone() else {
            return Some(finished(row));
        };
        let Some(report) =
            target.report(run, &row.key.stage_id, self.reporter.public_url.as_deref())
        else {
            return Some(finished(row));
        };
        let key = Key {
            source: row.key.source.clone(),
            commit,
            context: report.context(),
        };
        let slot = self.slots.entry(key.clone()).or_default();
        if row.key.run_id < slot.owner {
            tracing::debug!(run = %row.key.run_id, owner = %slot.owner, context = %key.context, commit = %key.commit,
                "a later run reports to this commit and context; not posting this run's status");
            return Some(finished(row));
        }
        if slot.owner != row.key.run_id {
            slot.owner = row.key.run_id.clone();
        }
        if slot.busy {
            slot.queued.push(row);
            return None;
        }
        let now = now_millis();
        if let Some(hold) = slot.hold_until.filter(|hold| *hold > now) {
            tracing::debug!(run = %row.key.run_id, context = %key.context, commit = %key.commit,
                "the server asked to wait; the report waits with it");
            return Some(Change::ReportRetry {
                first_try_at: row.first_try_at.unwrap_or(now),
                key: row.key,
                version: row.version,
                due_at: hold,
                tries: row.tries,
            });
        }
        if !target.needs_post(slot.taken.as_ref(), &report) {
            return Some(finished(row));
        }
        slot.busy = true;
        let row_key = row.key.clone();
        let task = self.posts.spawn(post(
            target,
            self.store.clone(),
            key.clone(),
            report,
            row,
            self.reporter.policy,
        ));
        self.running.insert(task.id(), (key, row_key));
        None
    }

    /// Writes what became of held rows, then lets go of them. Only then: a row a settle
    /// releases (superseded while it was posted) may be claimed again at once, and must not
    /// be taken for one this process still holds.
    async fn settle(&mut self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let keys: Vec<ReportKey> = changes
            .iter()
            .filter_map(|change| match change {
                Change::ReportDone { key, .. } | Change::ReportRetry { key, .. } => {
                    Some(key.clone())
                }
                _ => None,
            })
            .collect();
        // Kept until written: a store that refuses them (a full disk) gets them again
        // shortly, while their rows stay held.
        if let Err(e) = self.store.commit(changes.clone()).await {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "cannot settle reports in the outbox; trying again shortly"
            );
            self.failed.unsettled.extend(changes);
            self.failed.failed(self.reporter.policy.first_retry);
            return;
        }
        for key in keys {
            self.held.remove(&key);
        }
    }

    /// Once their wait is over, writes the settlements the store refused and takes again
    /// the rows whose run it could not read. The wait resets once nothing is left.
    async fn retry_failed(&mut self) {
        if self.failed.at.is_none_or(|at| at > Instant::now()) {
            return;
        }
        self.failed.at = None;
        let unsettled = std::mem::take(&mut self.failed.unsettled);
        self.settle(unsettled).await;
        let untaken = std::mem::take(&mut self.failed.untaken);
        for row in &untaken {
            self.held.remove(&row.key);
        }
        self.take(untaken).await;
        if self.failed.at.is_none() {
            self.failed.wait = Duration::ZERO;
        }
    }

    /// Posts ended: their rows are settled, and their contexts are free for the rows that
    /// queued behind them.
    async fn settled(&mut self, ended: Vec<Result<(tokio::task::Id, Settled), JoinError>>) {
        let mut changes = Vec::with_capacity(ended.len());
        let mut queued = Vec::new();
        for joined in ended {
            let (id, settled) = match joined {
                Ok((id, settled)) => (id, Some(settled)),
                Err(e) => {
                    tracing::error!(
                        error = &e as &dyn std::error::Error,
                        "a report's post failed to finish; its report is taken again when its claim ends"
                    );
                    (e.id(), None)
                }
            };
            let Some((key, row)) = self.running.remove(&id) else {
                continue;
            };
            let (taken, hold_until) = match settled {
                Some(settled) => {
                    changes.push(settled.change);
                    (settled.taken, settled.hold_until)
                }
                None => {
                    self.held.remove(&row);
                    (None, None)
                }
            };
            if let Some(slot) = self.slots.get_mut(&key) {
                slot.busy = false;
                if taken.is_some() {
                    slot.taken = taken;
                }
                slot.hold_until = hold_until;
                queued.append(&mut slot.queued);
            }
        }
        self.settle(changes).await;
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
                || !slot.taken.as_ref().is_some_and(Report::is_terminal)
        });
        let held: HashSet<&str> = self.held.iter().map(|k| k.run_id.as_str()).collect();
        self.destinations
            .retain(|run_id, _| held.contains(run_id.as_str()));
    }
}

/// Removes a row there is nothing to post for (unless a newer change came for it).
fn finished(row: DueReport) -> Change {
    Change::ReportDone {
        key: row.key,
        version: row.version,
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

/// Posts one row's report; answers what becomes of the row.
async fn post(
    target: Arc<dyn Target>,
    store: Arc<dyn Store>,
    key: Key,
    report: Report,
    row: DueReport,
    policy: RetryPolicy,
) -> Settled {
    let (source, commit, context) = (target.name(), &key.commit, &key.context);
    let what = report.noun();
    let started = now_millis();
    let posting = target.post(commit, &report, store.as_ref());
    let outcome = match tokio::time::timeout(policy.request_timeout, posting).await {
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
    let (change, taken, hold_until) = match outcome {
        Ok(posted_as) => {
            metrics::counter!("baton_reports_total", "result" => "ok").increment(1);
            match posted_as {
                Posted::Done => tracing::debug!(%source, %commit, %context, what, "posted"),
                Posted::AlreadyThere(why) => {
                    tracing::debug!(%source, %commit, %context, what, %why, "already there");
                }
            }
            (done, Some(report), None)
        }
        Err(failure) => {
            let first_try_at = row.first_try_at.unwrap_or(started);
            match next_try(&policy, row.tries, first_try_at, &failure, now_millis()) {
                Some((due_at, first_try_at)) => {
                    metrics::counter!("baton_reports_total", "result" => "retry").increment(1);
                    tracing::warn!(%source, %commit, %context, what, attempt, reason = %failure.reason,
                        retry_in = ?Duration::from_millis((due_at - now_millis()).max(0) as u64),
                        "could not report the run's status; will try again");
                    let retry = Change::ReportRetry {
                        key: row.key.clone(),
                        version: row.version,
                        due_at,
                        tries: attempt,
                        first_try_at,
                    };
                    (retry, None, failure.retry_after.map(|_| due_at))
                }
                None => {
                    metrics::counter!("baton_reports_total", "result" => "dropped").increment(1);
                    tracing::warn!(%source, %commit, %context, what, attempt, reason = %failure.reason,
                        "could not report the run's status; giving up on it (the run is not affected)");
                    (done, None, None)
                }
            }
        }
    };
    Settled {
        change,
        taken,
        hold_until,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use async_trait::async_trait;
    use baton_core::context::TriggerInfo;
    use baton_core::{RunStatus, StageStatus};
    use baton_store::{
        DeliveryFilter, DeliveryRecord, DeliverySummary, Intake, NewDelivery, RunFilter, RunHeader,
        RunListing, RunPayload, SqliteStore, StageRecord, StoreError, Task,
    };
    use serde_json::json;

    use super::*;
    use crate::status::{Phase, Status};
    use crate::{Entry, Kind};

    const SHA: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";

    /// Records posts; fails them with `failure` while it is set; answers after `delay`.
    struct Fake {
        posts: Mutex<Vec<(String, Phase)>>,
        failure: Mutex<Option<Failure>>,
        delay: Duration,
    }

    impl Fake {
        fn new(failure: Option<Failure>) -> Arc<Self> {
            Self::slow(failure, Duration::ZERO)
        }
        fn slow(failure: Option<Failure>, delay: Duration) -> Arc<Self> {
            Arc::new(Self {
                posts: Mutex::default(),
                failure: Mutex::new(failure),
                delay,
            })
        }
        fn posts(&self) -> Vec<(String, Phase)> {
            self.posts.lock().unwrap().clone()
        }
        fn heal(&self) {
            *self.failure.lock().unwrap() = None;
        }
    }

    #[async_trait]
    impl Target for Fake {
        fn name(&self) -> &str {
            "fake"
        }
        async fn post(
            &self,
            _: &Commit,
            report: &Report,
            _: &dyn Store,
        ) -> Result<Posted, Failure> {
            let Report::Status(status) = report else {
                panic!("the fake takes commit statuses only: {report:?}");
            };
            self.posts
                .lock()
                .unwrap()
                .push((status.context.clone(), status.phase));
            tokio::time::sleep(self.delay).await;
            match self.failure.lock().unwrap().clone() {
                Some(failure) => Err(failure),
                None => Ok(Posted::Done),
            }
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            first_retry: Duration::from_millis(300),
            max_backoff: Duration::from_secs(5),
            give_up_after: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
        }
    }

    async fn open(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        let url = format!("sqlite://{}", dir.path().join("runs.db").display());
        Arc::new(SqliteStore::open(&url).await.unwrap())
    }

    fn header(id: &str, status: RunStatus) -> RunHeader {
        RunHeader {
            id: id.into(),
            workflow: "ci".into(),
            status,
            cancel_requested: false,
            message: None,
            created_at: 1,
            started_at: None,
            finished_at: None,
        }
    }

    fn key(run_id: &str, stage_id: &str) -> ReportKey {
        ReportKey {
            run_id: run_id.into(),
            source: "fake".into(),
            stage_id: stage_id.into(),
        }
    }

    /// A run reporting to `fake`, pushed to the same commit as every other, with its run and
    /// `build` rows wanted, as the engine writes them.
    async fn create(store: &Arc<dyn Store>, run_id: &str) {
        create_on(store, run_id, SHA, now_millis()).await;
    }

    /// A run like [`create`]'s, pushed to `sha`, its rows wanted from `due_at`.
    async fn create_on(store: &Arc<dyn Store>, run_id: &str, sha: &str, due_at: Millis) {
        let payload = RunPayload {
            spec: json!({"name": "ci", "stages": {"build": {"uses": "x"}}, "report": ["fake"]}),
            event: json!({"after": sha, "repository": {"full_name": "octo/hello"}}),
            trigger: TriggerInfo {
                source: "github".into(),
                event: "push".into(),
                delivery_id: None,
            },
        };
        store
            .commit(vec![
                Change::InsertRun(header(run_id, RunStatus::Queued), payload),
                Change::PutStage(StageRecord::pending(run_id, "build", 0)),
                Change::Report {
                    key: key(run_id, ""),
                    due_at,
                },
                Change::Report {
                    key: key(run_id, "build"),
                    due_at,
                },
            ])
            .await
            .unwrap();
    }

    fn want(run_id: &str, stage_id: &str) -> Change {
        Change::Report {
            key: key(run_id, stage_id),
            due_at: now_millis(),
        }
    }

    /// The run `run_id` now has `status`, reported.
    async fn move_run(store: &Arc<dyn Store>, run_id: &str, status: RunStatus) {
        store
            .commit(vec![
                Change::PutRun(header(run_id, status)),
                want(run_id, ""),
            ])
            .await
            .unwrap();
    }

    /// A reporter to the fake target, delivering from `store`, woken through the sender.
    fn start(
        store: &Arc<dyn Store>,
        fake: &Arc<Fake>,
    ) -> (broadcast::Sender<Event>, tokio::task::JoinHandle<()>) {
        start_with(store, fake, policy())
    }

    /// [`start`] with another retry policy.
    fn start_with(
        store: &Arc<dyn Store>,
        fake: &Arc<Fake>,
        policy: RetryPolicy,
    ) -> (broadcast::Sender<Event>, tokio::task::JoinHandle<()>) {
        let (wake, events) = broadcast::channel(16);
        let outbox = Outbox::new(reporter(fake, policy), store.clone());
        let task = tokio::spawn(outbox.follow(events));
        (wake, task)
    }

    /// A reporter to the fake target alone.
    fn reporter(fake: &Arc<Fake>, policy: RetryPolicy) -> Reporter {
        let target: Arc<dyn Target> = fake.clone();
        Reporter {
            entries: HashMap::from([(
                "fake".to_owned(),
                Entry {
                    target,
                    kind: Kind::Github,
                    needs_installation: false,
                },
            )]),
            public_url: None,
            policy,
        }
    }

    fn nudge(wake: &broadcast::Sender<Event>) {
        let _ = wake.send(Event::Run {
            run_id: String::new(),
            status: RunStatus::Running,
            message: None,
        });
    }

    async fn until(fake: &Fake, what: &str, done: impl Fn(&[(String, Phase)]) -> bool) {
        for _ in 0..250 {
            if done(&fake.posts()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{what}: not seen in 5 s; posts: {:?}", fake.posts());
    }

    async fn outbox_rows(store: &Arc<dyn Store>) -> Option<Millis> {
        store.release_report_leases().await.unwrap();
        store.next_report_due(0).await.unwrap()
    }

    fn post(context: &str, phase: Phase) -> (String, Phase) {
        (context.to_owned(), phase)
    }

    /// A reporter on a store of its own, and what tests need of them.
    struct Started {
        dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        wake: broadcast::Sender<Event>,
        task: tokio::task::JoinHandle<()>,
    }

    /// A reporter to `fake` on a fresh store, once it has tried `r1`'s two statuses.
    async fn first_tries(fake: &Arc<Fake>) -> Started {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let (wake, task) = start(&store, fake);
        create(&store, "r1").await;
        nudge(&wake);
        until(fake, "the first tries", |p| p.len() == 2).await;
        Started {
            dir,
            store,
            wake,
            task,
        }
    }

    impl Started {
        /// Stops the reporter as the engine's end does; answers its store.
        async fn stop(self) -> (tempfile::TempDir, Arc<dyn Store>) {
            drop(self.wake);
            self.task.await.unwrap();
            (self.dir, self.store)
        }
    }

    #[test]
    fn the_wait_doubles_to_its_cap_honours_retry_after_and_ends_in_a_give_up() {
        let policy = RetryPolicy {
            first_retry: Duration::from_secs(1),
            max_backoff: Duration::from_secs(4),
            give_up_after: Duration::from_secs(20),
            request_timeout: Duration::from_secs(30),
        };
        let failure = Failure::transient("HTTP 502");
        // Failing every time from 0 s: tries at 0, 1, 3, 7, 11, 15, 19 s; the next (23 s)
        // would pass 20 s.
        let (mut now, mut tries, mut times) = (0, 0, vec![0]);
        while let Some((due, first)) = next_try(&policy, tries, 0, &failure, now) {
            assert!(times.len() < 10, "never given up: {times:?}");
            assert_eq!(first, 0);
            now = due;
            tries += 1;
            times.push(now / 1000);
        }
        assert_eq!(times, [0, 1, 3, 7, 11, 15, 19]);
        assert_eq!(next_try(&policy, 0, 0, &failure, 0), Some((1000, 0)));
        // The next try lands exactly on the limit: still made; half a second later: not.
        assert_eq!(next_try(&policy, 0, 0, &failure, 19_000), Some((20_000, 0)));
        assert_eq!(next_try(&policy, 0, 0, &failure, 19_500), None);
        // Counted from the first try, not from the epoch.
        assert_eq!(
            next_try(&policy, 1, 5_000, &failure, 16_000),
            Some((18_000, 5_000))
        );
        assert_eq!(next_try(&policy, 3, 5_000, &failure, 22_000), None);
        // A server's Retry-After is honoured up to the cap, and never shortens the backoff.
        let slow_down = Failure {
            retry_after: Some(Duration::from_secs(3)),
            ..failure.clone()
        };
        assert_eq!(next_try(&policy, 0, 0, &slow_down, 0), Some((3000, 0)));
        assert_eq!(next_try(&policy, 2, 0, &slow_down, 0), Some((4000, 0)));
        let much_later = Failure {
            retry_after: Some(Duration::from_secs(3600)),
            ..failure
        };
        assert_eq!(next_try(&policy, 0, 0, &much_later, 0), Some((4000, 0)));
        // Refused requests are not tried again.
        let refused = Failure::permanent("HTTP 422");
        assert_eq!(next_try(&policy, 0, 0, &refused, 0), None);
    }

    #[tokio::test]
    async fn a_waiting_status_survives_a_restart_and_only_the_latest_is_posted_once() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(Some(Failure::transient("HTTP 502")));
        {
            let store = open(&dir).await;
            let (wake, task) = start(&store, &fake);
            create(&store, "r1").await;
            nudge(&wake);
            until(&fake, "the first tries", |p| p.len() == 2).await;
            // While they wait for their retry, the run moves on twice.
            move_run(&store, "r1", RunStatus::Running).await;
            nudge(&wake);
            until(&fake, "the newer status, at once", |p| {
                p.contains(&post("baton/ci", Phase::Running))
            })
            .await;
            move_run(&store, "r1", RunStatus::Succeeded).await;
            // Stopped (the engine gone), and all that waits is still in the store.
            drop(wake);
            task.await.unwrap();
        }
        let tried = fake.posts().len();
        fake.heal();
        let store = open(&dir).await;
        assert!(outbox_rows(&store).await.is_some());
        let (wake, task) = start(&store, &fake);
        until(&fake, "the statuses after the restart", |p| {
            p[tried..].len() == 2
        })
        .await;
        let mut after: Vec<_> = fake.posts()[tried..].to_vec();
        after.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            after,
            [
                post("baton/ci", Phase::Succeeded),
                post("baton/ci/build", Phase::Pending)
            ]
        );
        // Posted: the rows are gone, and nothing is posted again.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(fake.posts().len(), tried + 2, "{:?}", fake.posts());
        assert_eq!(outbox_rows(&store).await, None);
        drop(wake);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_change_that_shows_nothing_new_is_not_posted_and_a_later_run_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let fake = Fake::new(None);
        let (wake, task) = start(&store, &fake);
        create(&store, "r2").await;
        nudge(&wake);
        until(&fake, "the first statuses", |p| p.len() == 2).await;
        // The stage is written again with the same status (a signal stored, say).
        let mut stage = StageRecord::pending("r2", "build", 0);
        stage.signal = Some(json!({"decision": "approved"}));
        store
            .commit(vec![Change::PutStage(stage), want("r2", "build")])
            .await
            .unwrap();
        // An earlier run on the same commit changes too: the later run owns the contexts.
        create(&store, "r1").await;
        move_run(&store, "r1", RunStatus::Failed).await;
        nudge(&wake);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(outbox_rows(&store).await, None);
        assert_eq!(fake.posts().len(), 2, "{:?}", fake.posts());
        // The later run's own changes still go.
        let mut stage = StageRecord::pending("r2", "build", 0);
        stage.status = StageStatus::Running;
        store
            .commit(vec![Change::PutStage(stage), want("r2", "build")])
            .await
            .unwrap();
        nudge(&wake);
        until(&fake, "the stage running", |p| {
            p.last() == Some(&post("baton/ci/build", Phase::Running))
        })
        .await;
        drop(wake);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_status_is_dropped_and_the_next_one_still_goes() {
        let fake = Fake::new(Some(Failure::permanent("HTTP 422: Validation Failed")));
        let Started {
            dir: _dir,
            store,
            wake,
            task,
        } = first_tries(&fake).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(fake.posts().len(), 2, "not retried");
        assert_eq!(outbox_rows(&store).await, None, "given up");
        fake.heal();
        move_run(&store, "r1", RunStatus::Running).await;
        nudge(&wake);
        until(&fake, "the next status", |p| {
            p.last() == Some(&post("baton/ci", Phase::Running))
        })
        .await;
        drop(wake);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_post_that_lands_while_stopping_is_not_posted_again() {
        let fake = Fake::slow(None, Duration::from_millis(300));
        let (_dir, store) = first_tries(&fake).await.stop().await;
        assert_eq!(outbox_rows(&store).await, None, "settled before stopping");
    }

    #[test]
    fn draining_takes_every_queued_event_and_tells_when_the_engine_is_gone() {
        let (wake, mut events) = broadcast::channel(16);
        nudge(&wake);
        nudge(&wake);
        assert!(!drain(&mut events));
        assert!(matches!(events.try_recv(), Err(TryRecvError::Empty)));
        nudge(&wake);
        drop(wake);
        assert!(drain(&mut events));
    }

    #[tokio::test]
    async fn pruning_forgets_only_idle_finished_contexts_and_runs_with_no_row_held() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::new(reporter(&Fake::new(None), policy()), open(&dir).await);
        let slot = |busy: bool, queued: bool, taken: Option<Phase>| Slot {
            owner: "r1".into(),
            taken: taken.map(|phase| {
                Report::Status(Status {
                    context: "baton/ci".into(),
                    phase,
                    description: String::new(),
                    target_url: None,
                })
            }),
            busy,
            queued: if queued {
                vec![DueReport {
                    key: key("r1", ""),
                    version: 1,
                    tries: 0,
                    first_try_at: None,
                }]
            } else {
                Vec::new()
            },
            hold_until: None,
        };
        let contexts = [
            ("posting", slot(true, false, Some(Phase::Succeeded))),
            ("queued", slot(false, true, Some(Phase::Succeeded))),
            ("running", slot(false, false, Some(Phase::Running))),
            ("unposted", slot(false, false, None)),
            ("finished", slot(false, false, Some(Phase::Failed))),
        ];
        for (context, slot) in contexts {
            let key = Key {
                source: "fake".into(),
                commit: Commit::Github(crate::commit::GithubCommit {
                    owner: "octo".into(),
                    repo: "hello".into(),
                    sha: SHA.into(),
                    installation: None,
                }),
                context: context.into(),
            };
            outbox.slots.insert(key, slot);
        }
        outbox.held.insert(key("r1", ""));
        for run in ["r0", "r1"] {
            outbox.destinations.insert(run.into(), HashMap::new());
        }
        outbox.prune();
        let mut kept: Vec<&str> = outbox.slots.keys().map(|k| k.context.as_str()).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["posting", "queued", "running", "unposted"]);
        let runs: Vec<&str> = outbox.destinations.keys().map(String::as_str).collect();
        assert_eq!(runs, ["r1"]);
    }

    #[tokio::test]
    async fn a_failed_try_is_counted_on_its_row() {
        let fake = Fake::new(Some(Failure::transient("HTTP 502")));
        // Stopping settles the posts under way.
        let (_dir, store) = first_tries(&fake).await.stop().await;
        store.release_report_leases().await.unwrap();
        let later = now_millis() + 3_600_000;
        let rows = store.claim_reports(later, BATCH, later).await.unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        for row in rows {
            assert_eq!(row.tries, 1, "{row:?}");
            assert!(row.first_try_at.is_some(), "{row:?}");
        }
    }

    #[tokio::test]
    async fn rows_of_two_runs_claimed_together_each_show_their_own_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let other_sha = "0000000000000000000000000000000000000001";
        create_on(&store, "r1", other_sha, now_millis()).await;
        move_run(&store, "r1", RunStatus::Failed).await;
        create(&store, "r2").await;
        move_run(&store, "r2", RunStatus::Running).await;
        let fake = Fake::new(None);
        let (wake, task) = start(&store, &fake);
        until(&fake, "both runs' statuses", |p| p.len() == 4).await;
        let mut posts = fake.posts();
        posts.sort_by_key(|(context, phase)| (context.clone(), format!("{phase:?}")));
        assert_eq!(
            posts,
            [
                post("baton/ci", Phase::Failed),
                post("baton/ci", Phase::Running),
                post("baton/ci/build", Phase::Pending),
                post("baton/ci/build", Phase::Pending),
            ]
        );
        drop(wake);
        task.await.unwrap();
    }

    /// A store that counts the outbox's reads, fails reads, claims, reads of runs or
    /// settlements while told to, answers claims with nothing while told to (rows another
    /// process took), and records the `now` and `lease_until` of every claim. With `shared`
    /// it says other processes use it too, and counts releases of the outbox's leases.
    struct Flaky {
        inner: Arc<dyn Store>,
        shared: AtomicBool,
        releases: AtomicUsize,
        reads: AtomicUsize,
        fail_reads: AtomicBool,
        fail_claims: AtomicBool,
        fail_loads: AtomicBool,
        fail_settles: AtomicBool,
        empty_claims: AtomicBool,
        claims: Mutex<Vec<(Millis, Millis)>>,
    }

    impl Flaky {
        fn new(inner: Arc<dyn Store>) -> Arc<Self> {
            Arc::new(Self {
                inner,
                shared: AtomicBool::new(false),
                releases: AtomicUsize::new(0),
                reads: AtomicUsize::new(0),
                fail_reads: AtomicBool::new(false),
                fail_claims: AtomicBool::new(false),
                fail_loads: AtomicBool::new(false),
                fail_settles: AtomicBool::new(false),
                empty_claims: AtomicBool::new(false),
                claims: Mutex::default(),
            })
        }
        /// The reads since the last call.
        fn reads(&self) -> usize {
            self.reads.swap(0, Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Store for Flaky {
        async fn commit(&self, changes: Vec<Change>) -> baton_store::Result<Vec<Task>> {
            let settles = changes
                .iter()
                .all(|c| matches!(c, Change::ReportDone { .. } | Change::ReportRetry { .. }));
            if settles && self.fail_settles.load(Ordering::SeqCst) {
                return Err(full());
            }
            self.inner.commit(changes).await
        }
        async fn claim_due(
            &self,
            now: Millis,
            limit: u32,
            lease_until: Millis,
        ) -> baton_store::Result<Vec<Task>> {
            self.inner.claim_due(now, limit, lease_until).await
        }
        async fn next_due(&self) -> baton_store::Result<Option<Millis>> {
            self.inner.next_due().await
        }
        async fn release_leases(&self) -> baton_store::Result<()> {
            self.inner.release_leases().await
        }
        async fn load_run(&self, run_id: &str) -> baton_store::Result<Option<RunSnapshot>> {
            if self.fail_loads.load(Ordering::SeqCst) {
                return Err(StoreError::Storage {
                    detail: "disk I/O error".into(),
                });
            }
            self.inner.load_run(run_id).await
        }
        async fn unfinished_runs(&self) -> baton_store::Result<Vec<String>> {
            self.inner.unfinished_runs().await
        }
        async fn list_runs(&self, filter: &RunFilter) -> baton_store::Result<Vec<RunListing>> {
            self.inner.list_runs(filter).await
        }
        async fn ping(&self) -> baton_store::Result<()> {
            self.inner.ping().await
        }
        async fn insert_delivery(&self, delivery: NewDelivery) -> baton_store::Result<Intake> {
            self.inner.insert_delivery(delivery).await
        }
        async fn insert_deliveries(
            &self,
            deliveries: Vec<NewDelivery>,
        ) -> baton_store::Result<Vec<Intake>> {
            self.inner.insert_deliveries(deliveries).await
        }
        async fn pending_deliveries(
            &self,
            limit: u32,
        ) -> baton_store::Result<Vec<baton_store::PendingDelivery>> {
            self.inner.pending_deliveries(limit).await
        }
        async fn load_delivery(&self, id: i64) -> baton_store::Result<Option<DeliveryRecord>> {
            self.inner.load_delivery(id).await
        }
        async fn list_deliveries(
            &self,
            filter: &DeliveryFilter,
        ) -> baton_store::Result<Vec<DeliveryRecord>> {
            self.inner.list_deliveries(filter).await
        }
        async fn list_delivery_summaries(
            &self,
            filter: &DeliveryFilter,
        ) -> baton_store::Result<Vec<DeliverySummary>> {
            self.inner.list_delivery_summaries(filter).await
        }
        async fn claim_reports(
            &self,
            now: Millis,
            limit: u32,
            lease_until: Millis,
        ) -> baton_store::Result<Vec<DueReport>> {
            self.claims.lock().unwrap().push((now, lease_until));
            if self.fail_claims.load(Ordering::SeqCst) {
                return Err(StoreError::Closed);
            }
            if self.empty_claims.load(Ordering::SeqCst) {
                return Ok(Vec::new());
            }
            self.inner.claim_reports(now, limit, lease_until).await
        }
        async fn next_report_due(&self, now: Millis) -> baton_store::Result<Option<Millis>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if self.fail_reads.load(Ordering::SeqCst) {
                return Err(StoreError::Closed);
            }
            self.inner.next_report_due(now).await
        }
        async fn release_report_leases(&self) -> baton_store::Result<()> {
            self.releases.fetch_add(1, Ordering::SeqCst);
            self.inner.release_report_leases().await
        }
        fn shared(&self) -> bool {
            self.shared.load(Ordering::SeqCst)
        }
        async fn report_ref(
            &self,
            run_id: &str,
            source: &str,
        ) -> baton_store::Result<Option<String>> {
            self.inner.report_ref(run_id, source).await
        }
    }

    /// What a full disk gives.
    fn full() -> StoreError {
        StoreError::Full {
            detail: "database or disk is full".into(),
        }
    }

    /// Whether every outbox row is gone (settled), claimed or not.
    async fn all_settled(store: &Arc<dyn Store>) -> bool {
        store.next_report_due(Millis::MAX).await.unwrap().is_none()
    }

    /// Reads of an outbox left alone for `how_long` (the count starts afresh).
    async fn reads_during(store: &Flaky, how_long: Duration) -> usize {
        store.reads();
        tokio::time::sleep(how_long).await;
        store.reads()
    }

    #[tokio::test]
    async fn on_a_shared_store_rows_another_process_claimed_stay_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = Flaky::new(open(&dir).await);
        flaky.shared.store(true, Ordering::SeqCst);
        let store: Arc<dyn Store> = flaky.clone();
        create(&store, "r1").await;
        // Another replica claimed both rows and is posting them.
        let now = now_millis();
        let claimed = store
            .claim_reports(now, BATCH, now + 3_600_000)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2);
        let fake = Fake::new(None);
        let (wake, task) = start(&store, &fake);
        nudge(&wake);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(flaky.releases.load(Ordering::SeqCst), 0);
        assert!(fake.posts().is_empty(), "{:?}", fake.posts());
        drop(wake);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_status_not_yet_due_is_posted_at_its_time_and_the_loop_sleeps_until_then() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = Flaky::new(open(&dir).await);
        let store: Arc<dyn Store> = flaky.clone();
        // A first retry far longer than the wait, so a row posted late shows.
        let policy = RetryPolicy {
            first_retry: Duration::from_secs(4),
            ..policy()
        };
        let fake = Fake::new(None);
        let (wake, task) = start_with(&store, &fake, policy);
        // Nothing to do: the loop sleeps rather than asking again and again.
        assert!(reads_during(&flaky, Duration::from_millis(500)).await <= 3);
        let started = Instant::now();
        create_on(&store, "r1", SHA, now_millis() + 800).await;
        nudge(&wake);
        assert!(reads_during(&flaky, Duration::from_millis(400)).await <= 3);
        assert!(fake.posts().is_empty(), "posted early: {:?}", fake.posts());
        until(&fake, "the statuses once due", |p| p.len() == 2).await;
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_millis(2500),
            "posted after {waited:?}"
        );
        drop(wake);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_store_that_fails_is_asked_again_after_the_first_retry_not_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = Flaky::new(open(&dir).await);
        let store: Arc<dyn Store> = flaky.clone();
        let fake = Fake::new(None);
        // First retry 300 ms: in a second, about three more looks.
        let (wake, task) = start(&store, &fake);
        let a_second = Duration::from_secs(1);
        flaky.fail_reads.store(true, Ordering::SeqCst);
        nudge(&wake);
        let reads = reads_during(&flaky, a_second).await;
        assert!((2..=8).contains(&reads), "{reads} reads failing");
        flaky.fail_claims.store(true, Ordering::SeqCst);
        flaky.fail_reads.store(false, Ordering::SeqCst);
        create(&store, "r1").await;
        nudge(&wake);
        let reads = reads_during(&flaky, a_second).await;
        assert!(
            (2..=8).contains(&reads),
            "{reads} reads with claims failing"
        );
        flaky.empty_claims.store(true, Ordering::SeqCst);
        flaky.fail_claims.store(false, Ordering::SeqCst);
        nudge(&wake);
        let reads = reads_during(&flaky, a_second).await;
        assert!(
            (2..=8).contains(&reads),
            "{reads} reads with claims taken by another"
        );
        assert!(fake.posts().is_empty());
        flaky.empty_claims.store(false, Ordering::SeqCst);
        until(&fake, "the statuses once the store answers", |p| {
            p.len() == 2
        })
        .await;
        // Every claim lasts two request timeouts and half a minute past its time.
        let lease = millis(policy().request_timeout * 2 + Duration::from_secs(30));
        let claims = flaky.claims.lock().unwrap().clone();
        assert!(!claims.is_empty());
        for (now, lease_until) in claims {
            assert_eq!(lease_until - now, lease);
        }
        drop(wake);
        task.await.unwrap();
    }

    /// A post lands but the store refuses to record it (a full disk): the row is settled
    /// within seconds once the store writes again, not when its claim ends (40 s here), and
    /// the status is not posted again.
    #[tokio::test]
    async fn a_settlement_the_store_refused_is_written_within_seconds_once_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = Flaky::new(open(&dir).await);
        let store: Arc<dyn Store> = flaky.clone();
        let fake = Fake::new(None);
        let (wake, task) = start(&store, &fake);
        flaky.fail_settles.store(true, Ordering::SeqCst);
        create(&store, "r1").await;
        nudge(&wake);
        until(&fake, "the first posts", |p| p.len() == 2).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(!all_settled(&store).await, "settled on a full disk");
        flaky.fail_settles.store(false, Ordering::SeqCst);
        let freed = Instant::now();
        while !all_settled(&store).await {
            assert!(
                freed.elapsed() < Duration::from_secs(7),
                "the rows were not settled 7 s after the store wrote again"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(fake.posts().len(), 2, "posted again: {:?}", fake.posts());
        drop(wake);
        task.await.unwrap();
    }

    /// The store cannot read the run of a claimed row: the row is taken again within seconds
    /// once it can, not when its claim ends.
    #[tokio::test]
    async fn a_row_whose_run_could_not_be_read_is_taken_again_within_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = Flaky::new(open(&dir).await);
        let store: Arc<dyn Store> = flaky.clone();
        let fake = Fake::new(None);
        let (wake, task) = start(&store, &fake);
        flaky.fail_loads.store(true, Ordering::SeqCst);
        create(&store, "r1").await;
        nudge(&wake);
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(fake.posts().is_empty());
        flaky.fail_loads.store(false, Ordering::SeqCst);
        until(&fake, "the posts once the run can be read", |p| {
            p.len() == 2
        })
        .await;
        drop(wake);
        task.await.unwrap();
    }
}
