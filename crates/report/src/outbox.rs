//! Delivery: one task per commit and context posts the latest wanted status, retrying with
//! backoff, and drops a status that a newer one for the same context replaces.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::RetryPolicy;
use crate::status::Status;
use crate::target::{Commit, Failure, Posted, Target};

/// One context on one commit of one source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    source: String,
    commit: Commit,
    context: String,
}

/// A status to post, numbered so the outbox can tell when it was dealt with.
#[derive(Debug, Clone)]
struct Wanted {
    version: u64,
    status: Status,
}

/// The delivery task of one [`Key`] and what the outbox knows of it.
struct Slot {
    /// The run whose status this is: a run created earlier (run ids sort by creation) cannot
    /// overwrite a later run's status on the same commit and context.
    owner: String,
    version: u64,
    tx: watch::Sender<Wanted>,
    /// The last version the task finished with (posted, found already there, or gave up).
    done: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Slot {
    /// Idle with a final status: nothing more will come for it.
    fn finished(&self) -> bool {
        self.task.is_finished()
            || (self.tx.borrow().status.phase.is_terminal()
                && self.done.load(Ordering::Acquire) == self.version)
    }
}

/// The delivery tasks, by commit and context.
pub(crate) struct Outbox {
    slots: HashMap<Key, Slot>,
    policy: RetryPolicy,
}

impl Outbox {
    pub(crate) fn new(policy: RetryPolicy) -> Self {
        Self {
            slots: HashMap::new(),
            policy,
        }
    }

    /// Wants `status` on `commit` through `target`, for run `run_id`. Does nothing when it is
    /// the status already wanted, or when a later run owns that context on that commit.
    pub(crate) fn put(
        &mut self,
        target: &Arc<dyn Target>,
        commit: &Commit,
        run_id: &str,
        status: Status,
    ) {
        let key = Key {
            source: target.name().to_owned(),
            commit: commit.clone(),
            context: status.context.clone(),
        };
        if let Some(slot) = self.slots.get_mut(&key)
            && !slot.task.is_finished()
        {
            if run_id < slot.owner.as_str() {
                tracing::debug!(run = run_id, owner = %slot.owner, context = %key.context, commit = %key.commit,
                    "a later run reports to this commit and context; not posting this run's status");
                return;
            }
            if slot.owner != run_id {
                slot.owner = run_id.to_owned();
            }
            if slot.tx.borrow().status == status {
                return;
            }
            slot.version += 1;
            slot.tx.send_replace(Wanted {
                version: slot.version,
                status,
            });
            return;
        }
        let (tx, rx) = watch::channel(Wanted { version: 1, status });
        let done = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(deliver(
            target.clone(),
            commit.clone(),
            rx,
            done.clone(),
            self.policy,
        ));
        self.slots.insert(
            key,
            Slot {
                owner: run_id.to_owned(),
                version: 1,
                tx,
                done,
                task,
            },
        );
    }

    /// Ends the tasks that have delivered a final status and have nothing more to do.
    pub(crate) fn prune(&mut self) {
        self.slots.retain(|_, slot| {
            let keep = !slot.finished();
            if !keep {
                slot.task.abort();
            }
            keep
        });
    }

    /// How many commit contexts have a task.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Stops taking statuses and gives requests under way up to `grace` to finish; statuses
    /// waiting for a retry are dropped.
    pub(crate) async fn close(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let tasks: Vec<JoinHandle<()>> = self.slots.into_values().map(|s| s.task).collect();
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

/// Posts the latest status wanted for one commit context until the outbox lets go of it.
async fn deliver(
    target: Arc<dyn Target>,
    commit: Commit,
    mut rx: watch::Receiver<Wanted>,
    done: Arc<AtomicU64>,
    policy: RetryPolicy,
) {
    let source = target.name().to_owned();
    let mut posted: Option<Status> = None;
    'wanted: loop {
        let wanted = rx.borrow_and_update().clone();
        let status = &wanted.status;
        if target.needs_post(posted.as_ref(), status) {
            let started = Instant::now();
            let mut backoff = policy.first_retry;
            let mut attempt = 1u32;
            loop {
                let outcome = match tokio::time::timeout(
                    policy.request_timeout,
                    target.post(&commit, status),
                )
                .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => Err(Failure::transient(format!(
                        "no answer within {}s",
                        policy.request_timeout.as_secs_f32()
                    ))),
                };
                match outcome {
                    Ok(posted_as) => {
                        metrics::counter!("baton_reports_total", "result" => "ok").increment(1);
                        match posted_as {
                            Posted::Done => {
                                tracing::debug!(%source, %commit, context = %status.context,
                                state = ?status.phase, "commit status posted")
                            }
                            Posted::AlreadyThere(why) => {
                                tracing::debug!(%source, %commit, context = %status.context,
                                state = ?status.phase, %why, "commit status already there")
                            }
                        }
                        posted = Some(status.clone());
                        break;
                    }
                    Err(failure) => {
                        let wait = failure
                            .retry_after
                            .unwrap_or_default()
                            .max(backoff)
                            .min(policy.max_backoff);
                        if !failure.retry || started.elapsed() + wait > policy.give_up_after {
                            metrics::counter!("baton_reports_total", "result" => "dropped")
                                .increment(1);
                            tracing::warn!(%source, %commit, context = %status.context, attempt,
                                reason = %failure.reason,
                                "could not report a commit status; giving up on it (the run is not affected)");
                            break;
                        }
                        metrics::counter!("baton_reports_total", "result" => "retry").increment(1);
                        tracing::warn!(%source, %commit, context = %status.context, attempt,
                            reason = %failure.reason, retry_in = ?wait,
                            "could not report a commit status; will try again");
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            changed = rx.changed() => {
                                if changed.is_err() {
                                    return; // the reporter stopped
                                }
                                continue 'wanted; // a newer status replaces this one
                            }
                        }
                        backoff = backoff.saturating_mul(2).min(policy.max_backoff);
                        attempt += 1;
                    }
                }
            }
        }
        done.store(wanted.version, Ordering::Release);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::commit::GithubCommit;
    use crate::status::Phase;

    /// Records posts; fails the first `failures` of them with `failure`.
    struct Fake {
        posts: Mutex<Vec<(String, Phase)>>,
        failures: Mutex<u32>,
        failure: Failure,
    }

    impl Fake {
        fn new(failures: u32, failure: Failure) -> Arc<Self> {
            Arc::new(Self {
                posts: Mutex::default(),
                failures: Mutex::new(failures),
                failure,
            })
        }
        fn posts(&self) -> Vec<(String, Phase)> {
            self.posts.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Target for Fake {
        fn name(&self) -> &str {
            "fake"
        }
        async fn post(&self, _: &Commit, status: &Status) -> Result<Posted, Failure> {
            self.posts
                .lock()
                .unwrap()
                .push((status.context.clone(), status.phase));
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err(self.failure.clone());
            }
            Ok(Posted::Done)
        }
    }

    fn commit() -> Commit {
        Commit::Github(GithubCommit {
            owner: "o".into(),
            repo: "r".into(),
            sha: "a".repeat(40),
            installation: None,
        })
    }

    fn status(context: &str, phase: Phase) -> Status {
        Status {
            context: context.into(),
            phase,
            description: format!("{phase:?}"),
            target_url: None,
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            first_retry: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            give_up_after: Duration::from_secs(1800),
            request_timeout: Duration::from_secs(30),
        }
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_backoff_and_only_the_latest_status_counts() {
        let fake = Fake::new(3, Failure::transient("HTTP 502"));
        let target: Arc<dyn Target> = fake.clone();
        let mut outbox = Outbox::new(policy());
        outbox.put(&target, &commit(), "r1", status("baton/w", Phase::Pending));
        settle().await;
        assert_eq!(fake.posts(), [("baton/w".into(), Phase::Pending)]);
        // While the first post waits for its retry, the run moves on twice: only the last
        // status is posted, at once, and the pending one is never tried again.
        outbox.put(&target, &commit(), "r1", status("baton/w", Phase::Running));
        settle().await;
        outbox.put(
            &target,
            &commit(),
            "r1",
            status("baton/w", Phase::Succeeded),
        );
        settle().await;
        assert_eq!(fake.posts().len(), 3, "{:?}", fake.posts());
        // Its post failed too: the retry comes 1 s later (the backoff starts again for each
        // new status).
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(fake.posts().len(), 3);
        tokio::time::sleep(Duration::from_millis(200)).await;
        settle().await;
        let posts = fake.posts();
        assert_eq!(posts.len(), 4, "{posts:?}");
        assert_eq!(posts[3], ("baton/w".into(), Phase::Succeeded));
        // Delivered and final: the task goes away.
        outbox.prune();
        assert_eq!(outbox.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_the_cap_then_gives_up() {
        let fake = Fake::new(u32::MAX, Failure::transient("HTTP 500"));
        let target: Arc<dyn Target> = fake.clone();
        let mut outbox = Outbox::new(RetryPolicy {
            first_retry: Duration::from_secs(1),
            max_backoff: Duration::from_secs(4),
            give_up_after: Duration::from_secs(20),
            request_timeout: Duration::from_secs(30),
        });
        outbox.put(&target, &commit(), "r1", status("baton/w", Phase::Failed));
        let start = Instant::now();
        let mut times = Vec::new();
        let mut seen = 0;
        while start.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let n = fake.posts().len();
            if n > seen {
                times.push(start.elapsed().as_secs());
                seen = n;
            }
        }
        // Tries at 0, 1, 3, 7, 11, 15, 19 s; the next (23 s) would pass 20 s.
        assert_eq!(times, [0, 1, 3, 7, 11, 15, 19]);
        outbox.prune();
        assert_eq!(
            outbox.len(),
            0,
            "gave up on a final status: nothing left to do"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_are_not_retried_and_later_statuses_still_go() {
        let fake = Fake::new(1, Failure::permanent("HTTP 422: Validation Failed"));
        let target: Arc<dyn Target> = fake.clone();
        let mut outbox = Outbox::new(policy());
        outbox.put(&target, &commit(), "r1", status("baton/w", Phase::Running));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(fake.posts().len(), 1);
        outbox.put(
            &target,
            &commit(),
            "r1",
            status("baton/w", Phase::Succeeded),
        );
        settle().await;
        assert_eq!(fake.posts().len(), 2);
        // The same status again is not posted again.
        outbox.put(
            &target,
            &commit(),
            "r1",
            status("baton/w", Phase::Succeeded),
        );
        settle().await;
        assert_eq!(fake.posts().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_run_does_not_overwrite_a_later_one() {
        let fake = Fake::new(0, Failure::transient("x"));
        let target: Arc<dyn Target> = fake.clone();
        let mut outbox = Outbox::new(policy());
        outbox.put(
            &target,
            &commit(),
            "0002",
            status("baton/w", Phase::Running),
        );
        settle().await;
        outbox.put(&target, &commit(), "0001", status("baton/w", Phase::Failed));
        settle().await;
        outbox.put(
            &target,
            &commit(),
            "0002",
            status("baton/w", Phase::Succeeded),
        );
        settle().await;
        assert_eq!(
            fake.posts(),
            [
                ("baton/w".into(), Phase::Running),
                ("baton/w".into(), Phase::Succeeded)
            ]
        );
        // Contexts are independent.
        outbox.put(
            &target,
            &commit(),
            "0001",
            status("baton/w/a", Phase::Failed),
        );
        settle().await;
        assert_eq!(fake.posts().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn close_drops_statuses_waiting_for_a_retry() {
        let fake = Fake::new(u32::MAX, Failure::transient("HTTP 503"));
        let target: Arc<dyn Target> = fake.clone();
        let mut outbox = Outbox::new(policy());
        outbox.put(&target, &commit(), "r1", status("baton/w", Phase::Running));
        settle().await;
        tokio::time::timeout(
            Duration::from_secs(1),
            outbox.close(Duration::from_secs(30)),
        )
        .await
        .expect("close does not wait for retries");
        assert_eq!(fake.posts().len(), 1);
    }
}
