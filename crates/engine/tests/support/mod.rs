//! What the engine's test binaries share.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use baton_core::context::TriggerInfo;
use baton_core::{StageDefaults, Workflow, WorkflowSpec};
use baton_store::{
    Change, DeliveryFilter, DeliveryRecord, DeliverySummary, DueReport, Intake, Millis,
    NewDelivery, PendingDelivery, RunFilter, RunListing, RunSnapshot, SqliteStore, Store,
    StoreError, Task, TaskLease,
};
use serde_json::{Value, json};

/// A workflow named `t` with these `stages`.
pub(crate) fn workflow(stages: Value) -> Arc<Workflow> {
    let spec: WorkflowSpec =
        serde_json::from_value(json!({"name": "t", "stages": stages})).unwrap();
    Arc::new(Workflow::compile(spec, StageDefaults::default()).unwrap())
}

/// A run started by hand.
pub(crate) fn manual() -> TriggerInfo {
    TriggerInfo {
        source: "manual".into(),
        event: "manual".into(),
        delivery_id: None,
    }
}

/// A store that can be made to fail every commit, as if the process died at that instant.
/// It keeps the changes of every commit it passed on. With `shared` it says other processes
/// use it too (as PostgreSQL does), and counts the releases of its task leases.
pub(crate) struct DyingStore {
    inner: Arc<SqliteStore>,
    pub(crate) dead: AtomicBool,
    pub(crate) commits_left: Mutex<Option<u32>>,
    pub(crate) committed: Mutex<Vec<Vec<Change>>>,
    shared: bool,
    pub(crate) releases: AtomicU32,
}

impl DyingStore {
    /// Over `inner`, dying after `commits_left` commits.
    pub(crate) fn over(inner: Arc<SqliteStore>, commits_left: Option<u32>) -> Self {
        Self {
            inner,
            dead: AtomicBool::new(false),
            commits_left: Mutex::new(commits_left),
            committed: Mutex::default(),
            shared: false,
            releases: AtomicU32::new(0),
        }
    }

    /// Over `inner`, never dying, and saying it is shared.
    pub(crate) fn shared(inner: Arc<SqliteStore>) -> Self {
        Self {
            shared: true,
            ..Self::over(inner, None)
        }
    }
}

#[async_trait]
impl Store for DyingStore {
    async fn commit(&self, changes: Vec<Change>) -> Result<Vec<Task>, StoreError> {
        {
            let mut left = self.commits_left.lock().unwrap();
            if let Some(n) = left.as_mut() {
                if *n == 0 {
                    self.dead.store(true, Ordering::SeqCst);
                } else {
                    *n -= 1;
                }
            }
        }
        if self.dead.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        self.committed.lock().unwrap().push(changes.clone());
        self.inner.commit(changes).await
    }
    async fn claim_due(
        &self,
        now: Millis,
        limit: u32,
        lease_until: Millis,
    ) -> Result<Vec<Task>, StoreError> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        self.inner.claim_due(now, limit, lease_until).await
    }
    async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        self.inner.next_due().await
    }
    async fn release_leases(&self) -> Result<(), StoreError> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        self.inner.release_leases().await
    }
    async fn load_run(&self, run_id: &str) -> Result<Option<RunSnapshot>, StoreError> {
        self.inner.load_run(run_id).await
    }
    async fn unfinished_runs(&self) -> Result<Vec<String>, StoreError> {
        self.inner.unfinished_runs().await
    }
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunListing>, StoreError> {
        self.inner.list_runs(filter).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn insert_delivery(&self, delivery: NewDelivery) -> Result<Intake, StoreError> {
        self.inner.insert_delivery(delivery).await
    }
    async fn insert_deliveries(
        &self,
        deliveries: Vec<NewDelivery>,
    ) -> Result<Vec<Intake>, StoreError> {
        self.inner.insert_deliveries(deliveries).await
    }
    async fn pending_deliveries(&self, limit: u32) -> Result<Vec<PendingDelivery>, StoreError> {
        self.inner.pending_deliveries(limit).await
    }
    async fn load_delivery(&self, id: i64) -> Result<Option<DeliveryRecord>, StoreError> {
        self.inner.load_delivery(id).await
    }
    async fn list_deliveries(
        &self,
        filter: &DeliveryFilter,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.inner.list_deliveries(filter).await
    }
    async fn list_delivery_summaries(
        &self,
        filter: &DeliveryFilter,
    ) -> Result<Vec<DeliverySummary>, StoreError> {
        self.inner.list_delivery_summaries(filter).await
    }
    async fn claim_reports(
        &self,
        now: Millis,
        limit: u32,
        lease_until: Millis,
    ) -> Result<Vec<DueReport>, StoreError> {
        self.inner.claim_reports(now, limit, lease_until).await
    }
    async fn next_report_due(&self, now: Millis) -> Result<Option<Millis>, StoreError> {
        self.inner.next_report_due(now).await
    }
    async fn release_report_leases(&self) -> Result<(), StoreError> {
        self.inner.release_report_leases().await
    }
    async fn report_ref(&self, run_id: &str, source: &str) -> Result<Option<String>, StoreError> {
        self.inner.report_ref(run_id, source).await
    }
    fn shared(&self) -> bool {
        self.shared
    }
    async fn holds(&self, task: &Task) -> Result<bool, StoreError> {
        self.inner.holds(task).await
    }
    async fn renew(&self, leases: &[TaskLease], until: Millis) -> Result<Vec<i64>, StoreError> {
        self.inner.renew(leases, until).await
    }
}
